//! Peers' versions that cannot be installed now, each held with its reason
//! and tried again (after the next local change when a local writer is in
//! the way, and on a growing timer), so one path that cannot move never
//! stops the others.

use std::collections::BTreeMap;
use std::fmt;

use psync_base::{Causality, DeviceId, VersionVector};

use crate::limits::{backoff, FIRST_HOLD_BACKOFF_MS, MAX_HOLD_BACKOFF_MS};
use crate::path::SyncPath;
use crate::record::FileRecord;
use crate::Millis;

/// Why a version is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldReason {
    /// The local file is open for writing (or written, not yet closed).
    OpenForWriting,
    /// The local file changed while this was decided: decided again.
    ChangedMeanwhile,
    /// The path cannot take it now (see the text).
    Blocked(String),
    /// The disk is full; installs resume by themselves.
    DiskFull,
    /// The local store failed (see the text).
    StorageFailed(String),
    /// The version is malformed and is never installed (see the text).
    Refused(String),
}

impl fmt::Display for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldReason::OpenForWriting => {
                f.write_str("the file is open for writing here; both versions are kept once it is closed")
            }
            HoldReason::ChangedMeanwhile => f.write_str("the file changed here meanwhile; deciding again"),
            HoldReason::Blocked(why) => f.write_str(why),
            HoldReason::DiskFull => f.write_str("the disk is full; retrying"),
            HoldReason::StorageFailed(why) => write!(f, "the local store failed: {why}"),
            HoldReason::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

impl HoldReason {
    /// Worth trying again after a local change (a writer closed the file).
    fn after_local_change(&self) -> bool {
        matches!(self, HoldReason::OpenForWriting | HoldReason::ChangedMeanwhile | HoldReason::Blocked(_))
    }
}

/// A held version, as `psync status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldVersion {
    /// Where.
    pub path: SyncPath,
    /// Why.
    pub reason: HoldReason,
    /// The peer it came from.
    pub from: DeviceId,
    /// Held since (the core's clock).
    pub since: Millis,
    /// Attempts so far.
    pub attempts: u32,
}

/// Where a version came from in a peer's index: (peer, its sequence
/// number). It stays unacknowledged while the version is held, so the peer
/// never forgets a tombstone this device has not applied yet.
pub(crate) type Origin = (DeviceId, u64);

#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) record: FileRecord,
    pub(crate) source: DeviceId,
    pub(crate) origins: Vec<Origin>,
    reason: HoldReason,
    since: Millis,
    retry_at: Millis,
    attempts: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Holds {
    by_path: BTreeMap<SyncPath, Vec<Held>>,
    per_source: BTreeMap<DeviceId, usize>,
}

impl Holds {
    /// The versions held.
    pub(crate) fn records(&self) -> impl Iterator<Item = &FileRecord> {
        self.by_path.values().flatten().map(|h| &h.record)
    }

    /// Versions held (count).
    pub(crate) fn count(&self) -> usize {
        self.by_path.values().map(Vec::len).sum()
    }

    /// Devices with versions held here.
    pub(crate) fn sources(&self) -> Vec<DeviceId> {
        self.per_source.keys().copied().collect()
    }

    /// Versions held from `peer` (count).
    pub(crate) fn from(&self, peer: &DeviceId) -> usize {
        self.per_source.get(peer).copied().unwrap_or(0)
    }

    /// Holds `record` (or holds it again, with a new reason). Held versions
    /// of the path it has seen are dropped and returned (their origins are
    /// the caller's to release).
    pub(crate) fn hold(
        &mut self,
        record: FileRecord,
        source: DeviceId,
        mut origins: Vec<Origin>,
        reason: HoldReason,
        now: Millis,
    ) -> Vec<Held> {
        let held = self.by_path.entry(record.path.clone()).or_default();
        let previous = held.iter().position(|h| h.record == record);
        let (since, attempts) = match previous {
            Some(i) => {
                let old = held.remove(i);
                decrement(&mut self.per_source, &old.source);
                origins.extend(old.origins);
                (old.since, old.attempts + 1)
            }
            None => (now, 0),
        };
        let (dropped, kept): (Vec<Held>, Vec<Held>) = std::mem::take(held)
            .into_iter()
            .partition(|h| matches!(h.record.vv.compare(&record.vv), Causality::Dominated | Causality::Equal));
        *held = kept;
        for h in &dropped {
            decrement(&mut self.per_source, &h.source);
        }
        let retry_at = match reason {
            HoldReason::Refused(_) => Millis::MAX,
            _ => now + backoff(FIRST_HOLD_BACKOFF_MS, MAX_HOLD_BACKOFF_MS, attempts),
        };
        origins.sort();
        origins.dedup();
        held.push(Held { record, source, origins, reason, since, retry_at, attempts });
        *self.per_source.entry(source).or_default() += 1;
        dropped
    }

    /// A peer sent a version that is held already: its sequence number
    /// waits with it. `false` if no such version is held.
    pub(crate) fn also_from(&mut self, record: &FileRecord, origin: Option<Origin>) -> bool {
        let Some(held) = self.by_path.get_mut(&record.path).and_then(|v| v.iter_mut().find(|h| h.record == *record))
        else {
            return false;
        };
        if let Some(origin) = origin {
            if !held.origins.contains(&origin) {
                held.origins.push(origin);
            }
        }
        true
    }

    /// Takes out what is due: what its timer says, and with
    /// `local_change` everything worth retrying after a local change.
    pub(crate) fn take_due(&mut self, now: Millis, local_change: bool) -> Vec<Held> {
        self.take_where(|h| h.retry_at <= now || (local_change && h.reason.after_local_change()))
    }

    /// Takes out every version held because the disk was full (its pause is over).
    pub(crate) fn take_disk_full(&mut self) -> Vec<Held> {
        self.take_where(|h| h.reason == HoldReason::DiskFull)
    }

    fn take_where(&mut self, is_due: impl Fn(&Held) -> bool) -> Vec<Held> {
        let mut out = Vec::new();
        for held in self.by_path.values_mut().filter(|held| held.iter().any(&is_due)) {
            let (due, kept): (Vec<Held>, Vec<Held>) = std::mem::take(held).into_iter().partition(&is_due);
            *held = kept;
            out.extend(due);
        }
        self.by_path.retain(|_, v| !v.is_empty());
        for h in &out {
            decrement(&mut self.per_source, &h.source);
        }
        out
    }

    /// Drops held versions of `path` that `vv` has seen (installed now,
    /// or a tombstone about to be forgotten) and returns them.
    pub(crate) fn drop_superseded(&mut self, path: &SyncPath, vv: &VersionVector) -> Vec<Held> {
        let Some(held) = self.by_path.get_mut(path) else { return Vec::new() };
        let (dropped, kept): (Vec<Held>, Vec<Held>) = std::mem::take(held)
            .into_iter()
            .partition(|h| matches!(h.record.vv.compare(vv), Causality::Dominated | Causality::Equal));
        *held = kept;
        if held.is_empty() {
            self.by_path.remove(path);
        }
        for h in &dropped {
            decrement(&mut self.per_source, &h.source);
        }
        dropped
    }

    /// Drops everything `peer` sent (it left the group).
    pub(crate) fn drop_source(&mut self, peer: &DeviceId) {
        for held in self.by_path.values_mut() {
            held.retain(|h| h.source != *peer);
        }
        self.by_path.retain(|_, v| !v.is_empty());
        self.per_source.remove(peer);
    }

    /// Everything held, for `psync status`.
    pub(crate) fn list(&self) -> Vec<HeldVersion> {
        self.by_path
            .values()
            .flatten()
            .map(|h| HeldVersion {
                path: h.record.path.clone(),
                reason: h.reason.clone(),
                from: h.source,
                since: h.since,
                attempts: h.attempts,
            })
            .collect()
    }
}

fn decrement(counts: &mut BTreeMap<DeviceId, usize>, key: &DeviceId) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}
