use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ContentHash;

/// A device's identity: the BLAKE3 hash of its long-term public key.
/// Ordered, so that conflict resolution can order devices deterministically.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub [u8; 32]);

crate::bytes32_serde!(DeviceId);

impl DeviceId {
    /// A fresh random id, for a store created before the device has keys.
    pub fn from_key_bytes(public_key: &[u8]) -> Self {
        Self(*ContentHash::of(public_key).as_bytes())
    }

    /// A short printable form (first 8 bytes as hex).
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev:{}", self.short())
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// How two version vectors relate causally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Same history.
    Equal,
    /// `self` has seen everything `other` has, and more.
    Dominates,
    /// `other` has seen everything `self` has, and more.
    Dominated,
    /// Each has changes the other has not seen: a conflict.
    Concurrent,
}

/// A per-file version vector: device -> number of changes by that device.
/// Absent entries are zero; zero entries are never stored.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// The empty vector (no changes yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for `device`.
    pub fn get(&self, device: &DeviceId) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }

    /// Records one more change by `device`; returns the new counter.
    pub fn increment(&mut self, device: DeviceId) -> u64 {
        let counter = self.0.entry(device).or_insert(0);
        *counter = counter.saturating_add(1);
        *counter
    }

    /// Records one more change by `device` with a counter of at least
    /// `at_least`; returns the new counter. Devices pass their local
    /// sequence number, so a device's counters never repeat, even for a
    /// path whose history was garbage-collected (a restarted counter would
    /// be "older" than a tombstone that outlived it elsewhere).
    pub fn advance(&mut self, device: DeviceId, at_least: u64) -> u64 {
        let counter = self.0.entry(device).or_insert(0);
        *counter = counter.saturating_add(1).max(at_least);
        *counter
    }

    /// Sets the counter for `device` (zero removes the entry).
    pub fn set(&mut self, device: DeviceId, counter: u64) {
        if counter == 0 {
            self.0.remove(&device);
        } else {
            self.0.insert(device, counter);
        }
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VersionVector) {
        for (device, &count) in &other.0 {
            let entry = self.0.entry(*device).or_insert(0);
            *entry = (*entry).max(count);
        }
    }

    /// Compares two histories.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut greater = false;
        let mut less = false;
        for device in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.get(device), other.get(device));
            greater |= a > b;
            less |= a < b;
        }
        match (greater, less) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::Dominated,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Iterates over (device, counter), ordered by device.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, &u64)> {
        self.0.iter()
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(d, c)| (d.short(), c))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[test]
    fn compares_histories() {
        let mut a = VersionVector::new();
        let mut b = VersionVector::new();
        assert_eq!(a.compare(&b), Causality::Equal);
        a.increment(dev(1));
        assert_eq!(a.compare(&b), Causality::Dominates);
        assert_eq!(b.compare(&a), Causality::Dominated);
        b.increment(dev(2));
        assert_eq!(a.compare(&b), Causality::Concurrent);
        a.merge(&b);
        assert_eq!(a.compare(&b), Causality::Dominates);
    }

    fn vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map(0u8..4, 1u64..4, 0..4)
            .prop_map(|m| VersionVector(m.into_iter().map(|(d, c)| (dev(d), c)).collect()))
    }

    proptest! {
        #[test]
        fn merge_dominates_both(a in vv(), b in vv()) {
            let mut m = a.clone();
            m.merge(&b);
            prop_assert!(matches!(m.compare(&a), Causality::Dominates | Causality::Equal));
            prop_assert!(matches!(m.compare(&b), Causality::Dominates | Causality::Equal));
        }

        #[test]
        fn compare_is_antisymmetric(a in vv(), b in vv()) {
            let flipped = match a.compare(&b) {
                Causality::Dominates => Causality::Dominated,
                Causality::Dominated => Causality::Dominates,
                same => same,
            };
            prop_assert_eq!(b.compare(&a), flipped);
        }
    }
}
