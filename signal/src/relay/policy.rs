//! The relay's rules, without sockets or disks: who may store, read and
//! acknowledge what, how much a group may hold, and what can be deleted.
//! The shell (the signalling server) stores and deletes what these rules
//! admit; [`RelayIndex`] is what it knows about the objects it holds.
//!
//! The rules: only an active full member stores, and only objects it wrote
//! and signed, under the next number of its own sequence, never over an
//! existing one; any active member reads and acknowledges; an object goes
//! once every other active member has acknowledged it, or when it is older
//! than the retention. A removed device's acknowledgements stop counting,
//! and what it asks is refused.

use std::collections::BTreeMap;

use psync_base::{ContentHash, DeviceId};
use serde::{Deserialize, Serialize};

use super::seal::{verify_object, ObjectName};
use crate::identity::{PublicKey, SignatureBytes};
use crate::roster::{Role, Roster};

/// Largest sealed object (bytes).
pub const MAX_OBJECT_BYTES: usize = 4 << 20;
/// What one group may hold by default (bytes).
pub const DEFAULT_GROUP_QUOTA_BYTES: u64 = 1 << 30;
/// What one group may hold by default (count of objects).
pub const DEFAULT_GROUP_QUOTA_OBJECTS: u64 = 100_000;
/// How long an object is kept by default when not every member has
/// acknowledged it (milliseconds: 30 days).
pub const DEFAULT_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;
/// What one device may store per second by default (bytes; bursts of
/// [`MAX_OBJECT_BYTES`] pass).
pub const DEFAULT_DEVICE_BYTES_PER_SECOND: u64 = 16 << 20;

/// A relay's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Largest object (bytes).
    pub object_bytes: usize,
    /// Per group (bytes).
    pub group_bytes: u64,
    /// Per group (count).
    pub group_objects: u64,
    /// Age past which an object goes even unacknowledged (milliseconds).
    pub retention_ms: u64,
    /// Stored per device per second (bytes).
    pub device_bytes_per_second: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            object_bytes: MAX_OBJECT_BYTES,
            group_bytes: DEFAULT_GROUP_QUOTA_BYTES,
            group_objects: DEFAULT_GROUP_QUOTA_OBJECTS,
            retention_ms: DEFAULT_RETENTION_MS,
            device_bytes_per_second: DEFAULT_DEVICE_BYTES_PER_SECOND,
        }
    }
}

/// Why the relay refused a request (sent to the device as is).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayRefusal {
    /// Not an active member of the group.
    #[error("not an active member of this group")]
    NotMember,
    /// A read-only member stores nothing (its edits stay local).
    #[error("a read-only device stores nothing on the relay")]
    ReadOnly,
    /// A device stores only objects it wrote.
    #[error("a device may only store its own objects")]
    NotYours,
    /// The writer's signature does not hold.
    #[error("the object's signature does not hold")]
    BadSignature,
    /// That name is taken, now or before: nothing is overwritten.
    #[error("object {seq} of this device exists or existed: nothing is overwritten")]
    Exists {
        /// The refused number.
        seq: u64,
    },
    /// Not the next number of the writer's sequence.
    #[error("object {seq} is not next: this device's last is {last}")]
    OutOfOrder {
        /// The refused number.
        seq: u64,
        /// The writer's last stored number.
        last: u64,
    },
    /// Larger than an object may be.
    #[error("object of {bytes} bytes is larger than the relay's {max}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The group's quota is used up.
    #[error("the group's relay quota is full ({held_bytes} of {quota_bytes} bytes, {held_objects} of {quota_objects} objects)")]
    QuotaFull {
        /// Held now (bytes).
        held_bytes: u64,
        /// Quota (bytes).
        quota_bytes: u64,
        /// Held now (count).
        held_objects: u64,
        /// Quota (count).
        quota_objects: u64,
    },
    /// Past this device's rate: try again after the wait.
    #[error("storing too fast: try again in {retry_ms} ms")]
    TooFast {
        /// Wait (milliseconds).
        retry_ms: u64,
    },
    /// No such object (never stored, or deleted).
    #[error("no such object")]
    NotFound,
    /// A key wrap for a device that is not an active member.
    #[error("a key wrap for a device that is not an active member")]
    NotForAMember,
}

/// Key wraps kept per member (count): the newest epochs.
pub const MAX_WRAPS_PER_MEMBER: usize = 16;
/// Largest encoded key wrap (bytes).
pub const MAX_WRAP_BYTES: usize = 1024;

/// Checks a key wrap `from` asks to leave: made and signed by itself, an
/// active full member, for an active member.
pub fn admit_wrap(roster: &Roster, from: &PublicKey, wrap: &super::wrap::SignedWrap) -> Result<(), RelayRefusal> {
    if !roster.is_active(from) {
        return Err(RelayRefusal::NotMember);
    }
    if roster.role(from) != Some(Role::Full) {
        return Err(RelayRefusal::ReadOnly);
    }
    if wrap.by != *from {
        return Err(RelayRefusal::NotYours);
    }
    if !roster.is_active(&wrap.wrap.to) {
        return Err(RelayRefusal::NotForAMember);
    }
    let bytes = psync_base::codec::encode(wrap).map_or(usize::MAX, |b| b.len());
    if bytes > MAX_WRAP_BYTES {
        return Err(RelayRefusal::TooLarge { bytes, max: MAX_WRAP_BYTES });
    }
    Ok(())
}

/// What the relay knows of one stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Sealed size (bytes).
    pub bytes: u64,
    /// When it was stored (milliseconds, the server's clock).
    pub stored_at: u64,
}

/// The relay's state of one group that is not in the objects themselves:
/// what each writer stored last (so a number is never reused, even once
/// its object is gone) and what each reader acknowledged. Persisted by the
/// shell after every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLedger {
    /// Per writer, the last number it stored.
    pub last_seq: BTreeMap<DeviceId, u64>,
    /// Per reader, per writer: everything up to this number is taken.
    pub acks: BTreeMap<DeviceId, BTreeMap<DeviceId, u64>>,
}

#[derive(Debug, Default)]
struct GroupObjects {
    objects: BTreeMap<ObjectName, StoredObject>,
    ledger: GroupLedger,
    held_bytes: u64,
}

/// A device's storing rate: a token bucket in bytes.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: u64,
}

/// An object a member asks to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPut {
    /// Its name (the writer is the sender).
    pub name: ObjectName,
    /// Sealed bytes.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    /// The writer's signature ([`super::seal::sign_object`]).
    pub signature: SignatureBytes,
}

/// What this group holds, as `psync status` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupUsage {
    /// Objects held (count).
    pub objects: u64,
    /// Held (bytes).
    pub bytes: u64,
    /// Quota (count).
    pub quota_objects: u64,
    /// Quota (bytes).
    pub quota_bytes: u64,
}

/// What the relay holds, group by group, and its rules.
#[derive(Debug, Default)]
pub struct RelayIndex {
    limits: RelayLimits,
    groups: BTreeMap<ContentHash, GroupObjects>,
    rates: BTreeMap<DeviceId, Bucket>,
}

impl RelayIndex {
    /// An empty relay with `limits`.
    pub fn new(limits: RelayLimits) -> RelayIndex {
        RelayIndex { limits, ..RelayIndex::default() }
    }

    /// What the shell found stored at start: a group's ledger and objects.
    pub fn restore(&mut self, group: ContentHash, ledger: GroupLedger, objects: Vec<(ObjectName, StoredObject)>) {
        let g = self.groups.entry(group).or_default();
        g.ledger = ledger;
        for (name, stored) in objects {
            let last = g.ledger.last_seq.entry(name.writer).or_default();
            *last = (*last).max(name.seq);
            g.held_bytes += stored.bytes;
            g.objects.insert(name, stored);
        }
    }

    fn member(roster: &Roster, from: &PublicKey) -> Result<(), RelayRefusal> {
        if roster.is_active(from) {
            Ok(())
        } else {
            Err(RelayRefusal::NotMember)
        }
    }

    /// Checks a put by `from`; if it is admitted the shell stores it and
    /// then calls [`RelayIndex::stored`]. Nothing is counted before that.
    pub fn admit(&mut self, roster: &Roster, from: &PublicKey, put: &RelayPut, now: u64) -> Result<(), RelayRefusal> {
        Self::member(roster, from)?;
        if roster.role(from) == Some(Role::ReadOnly) {
            return Err(RelayRefusal::ReadOnly);
        }
        if put.name.writer != from.device_id() {
            return Err(RelayRefusal::NotYours);
        }
        let bytes = put.sealed.len();
        if bytes > self.limits.object_bytes {
            return Err(RelayRefusal::TooLarge { bytes, max: self.limits.object_bytes });
        }
        let group = roster.group_id();
        verify_object(from, &group, &put.name, &put.sealed, &put.signature).map_err(|_| RelayRefusal::BadSignature)?;
        let limits = self.limits;
        let g = self.groups.entry(group).or_default();
        let last = g.ledger.last_seq.get(&put.name.writer).copied().unwrap_or(0);
        if put.name.seq <= last {
            return Err(RelayRefusal::Exists { seq: put.name.seq });
        }
        if put.name.seq != last + 1 {
            return Err(RelayRefusal::OutOfOrder { seq: put.name.seq, last });
        }
        let held_objects = g.objects.len() as u64;
        if g.held_bytes + bytes as u64 > limits.group_bytes || held_objects + 1 > limits.group_objects {
            return Err(RelayRefusal::QuotaFull {
                held_bytes: g.held_bytes,
                quota_bytes: limits.group_bytes,
                held_objects,
                quota_objects: limits.group_objects,
            });
        }
        let rate = limits.device_bytes_per_second as f64;
        let burst = rate.max(limits.object_bytes as f64);
        let bucket = self.rates.entry(put.name.writer).or_insert(Bucket { tokens: burst, at: now });
        bucket.tokens = (bucket.tokens + rate * now.saturating_sub(bucket.at) as f64 / 1000.0).min(burst);
        bucket.at = now;
        if bucket.tokens < bytes as f64 {
            let retry_ms = ((bytes as f64 - bucket.tokens) / rate.max(1.0) * 1000.0).ceil() as u64;
            return Err(RelayRefusal::TooFast { retry_ms });
        }
        bucket.tokens -= bytes as f64;
        Ok(())
    }

    /// The shell stored an admitted object.
    pub fn stored(&mut self, group: ContentHash, name: ObjectName, bytes: u64, now: u64) {
        let g = self.groups.entry(group).or_default();
        let last = g.ledger.last_seq.entry(name.writer).or_default();
        *last = (*last).max(name.seq);
        if g.objects.insert(name, StoredObject { bytes, stored_at: now }).is_none() {
            g.held_bytes += bytes;
        }
    }

    /// The objects `from` may fetch: those of other writers past what it
    /// acknowledged, oldest first (at most `limit`).
    pub fn pending_for(
        &self,
        roster: &Roster,
        from: &PublicKey,
        limit: usize,
    ) -> Result<Vec<(ObjectName, StoredObject)>, RelayRefusal> {
        Self::member(roster, from)?;
        let Some(g) = self.groups.get(&roster.group_id()) else { return Ok(Vec::new()) };
        let me = from.device_id();
        let acked = g.ledger.acks.get(&me);
        Ok(g.objects
            .iter()
            .filter(|(name, _)| name.writer != me)
            .filter(|(name, _)| acked.and_then(|a| a.get(&name.writer)).is_none_or(|s| name.seq > *s))
            .take(limit)
            .map(|(name, stored)| (*name, *stored))
            .collect())
    }

    /// Whether `from` may read object `name` (it exists and `from` is an
    /// active member).
    pub fn may_read(&self, roster: &Roster, from: &PublicKey, name: &ObjectName) -> Result<(), RelayRefusal> {
        Self::member(roster, from)?;
        let found = self.groups.get(&roster.group_id()).is_some_and(|g| g.objects.contains_key(name));
        if found {
            Ok(())
        } else {
            Err(RelayRefusal::NotFound)
        }
    }

    /// `from` took everything of `writer` up to `seq`; returns what can
    /// now be deleted (see [`RelayIndex::collect`]).
    pub fn ack(
        &mut self,
        roster: &Roster,
        from: &PublicKey,
        writer: DeviceId,
        seq: u64,
        now: u64,
    ) -> Result<Vec<ObjectName>, RelayRefusal> {
        Self::member(roster, from)?;
        let g = self.groups.entry(roster.group_id()).or_default();
        let acked = g.ledger.acks.entry(from.device_id()).or_default().entry(writer).or_default();
        *acked = (*acked).max(seq);
        Ok(self.collect(roster, now))
    }

    /// Objects every other active member has acknowledged, or older than
    /// the retention: removed from the index here; the shell deletes them.
    pub fn collect(&mut self, roster: &Roster, now: u64) -> Vec<ObjectName> {
        let retention = self.limits.retention_ms;
        let Some(g) = self.groups.get_mut(&roster.group_id()) else { return Vec::new() };
        let readers: Vec<DeviceId> = roster.members().filter(|m| !m.removed).map(|m| m.key.device_id()).collect();
        let acks = &g.ledger.acks;
        let taken_by_all = |name: &ObjectName| {
            readers
                .iter()
                .filter(|r| **r != name.writer)
                .all(|r| acks.get(r).and_then(|a| a.get(&name.writer)).is_some_and(|s| *s >= name.seq))
        };
        let gone: Vec<ObjectName> = g
            .objects
            .iter()
            .filter(|(name, stored)| taken_by_all(name) || now.saturating_sub(stored.stored_at) >= retention)
            .map(|(name, _)| *name)
            .collect();
        for name in &gone {
            if let Some(stored) = g.objects.remove(name) {
                g.held_bytes = g.held_bytes.saturating_sub(stored.bytes);
            }
        }
        // A removed device's acknowledgements no longer count: forget them.
        g.ledger.acks.retain(|reader, _| readers.contains(reader));
        gone
    }

    /// The ledger to persist for `group`.
    pub fn ledger(&self, group: &ContentHash) -> Option<&GroupLedger> {
        self.groups.get(group).map(|g| &g.ledger)
    }

    /// What `group` holds against its quota.
    pub fn usage(&self, group: &ContentHash) -> GroupUsage {
        let (objects, bytes) = self.groups.get(group).map_or((0, 0), |g| (g.objects.len() as u64, g.held_bytes));
        GroupUsage { objects, bytes, quota_objects: self.limits.group_objects, quota_bytes: self.limits.group_bytes }
    }

    /// The last number `writer` stored in `group` (0: none), so a device
    /// that lost track (a crash after storing) goes on from there.
    pub fn last_seq(&self, group: &ContentHash, writer: &DeviceId) -> u64 {
        self.groups.get(group).and_then(|g| g.ledger.last_seq.get(writer)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceKey;
    use crate::relay::seal::{sign_object, ContentKey};
    use crate::roster::RosterOp;

    struct Group {
        roster: Roster,
        key: ContentKey,
        desktop: DeviceKey,
        laptop: DeviceKey,
        phone: DeviceKey,
    }

    fn group() -> Group {
        let (desktop, laptop, phone) = (DeviceKey::generate(), DeviceKey::generate(), DeviceKey::generate());
        let mut roster = Roster::create(&desktop, "notes", "desktop", "sha-256 00", 1);
        for (k, role) in [(&laptop, Role::Full), (&phone, Role::ReadOnly)] {
            let op = RosterOp::Add { key: k.public(), name: "x".into(), role, dtls_fingerprint: "sha-256 AA".into() };
            roster.apply(roster.sign_next(&desktop, op, 2)).unwrap();
        }
        Group { roster, key: ContentKey::generate(0), desktop, laptop, phone }
    }

    fn put(g: &Group, writer: &DeviceKey, seq: u64, bytes: usize) -> RelayPut {
        let name = ObjectName { writer: writer.public().device_id(), seq };
        let sealed = g.key.seal(&g.roster.group_id(), &name, &vec![7; bytes]);
        RelayPut { name, signature: sign_object(writer, &g.roster.group_id(), &name, &sealed), sealed }
    }

    fn store(relay: &mut RelayIndex, g: &Group, writer: &DeviceKey, seq: u64, bytes: usize, now: u64) {
        let p = put(g, writer, seq, bytes);
        relay.admit(&g.roster, &writer.public(), &p, now).unwrap();
        relay.stored(g.roster.group_id(), p.name, p.sealed.len() as u64, now);
    }

    #[test]
    fn only_active_full_members_store_and_only_their_own_signed_objects() {
        let g = group();
        let mut relay = RelayIndex::new(RelayLimits::default());
        let stranger = DeviceKey::generate();
        let p = put(&g, &stranger, 1, 10);
        assert_eq!(relay.admit(&g.roster, &stranger.public(), &p, 0), Err(RelayRefusal::NotMember));
        assert_eq!(relay.pending_for(&g.roster, &stranger.public(), 10), Err(RelayRefusal::NotMember));
        let p = put(&g, &g.phone, 1, 10);
        assert_eq!(relay.admit(&g.roster, &g.phone.public(), &p, 0), Err(RelayRefusal::ReadOnly));
        // The laptop passes off an object as the desktop's.
        let p = put(&g, &g.desktop, 1, 10);
        assert_eq!(relay.admit(&g.roster, &g.laptop.public(), &p, 0), Err(RelayRefusal::NotYours));
        // Signed by someone else, or altered after signing.
        let mut p = put(&g, &g.laptop, 1, 10);
        p.signature = sign_object(&g.desktop, &g.roster.group_id(), &p.name, &p.sealed);
        assert_eq!(relay.admit(&g.roster, &g.laptop.public(), &p, 0), Err(RelayRefusal::BadSignature));
        let mut p = put(&g, &g.laptop, 1, 10);
        p.sealed[8] ^= 1;
        assert_eq!(relay.admit(&g.roster, &g.laptop.public(), &p, 0), Err(RelayRefusal::BadSignature));
        store(&mut relay, &g, &g.laptop, 1, 10, 0);
        assert_eq!(relay.usage(&g.roster.group_id()).objects, 1);
    }

    #[test]
    fn nothing_is_overwritten_and_numbers_are_never_reused() {
        let g = group();
        let group_id = g.roster.group_id();
        let mut relay = RelayIndex::new(RelayLimits::default());
        store(&mut relay, &g, &g.laptop, 1, 10, 0);
        let again = put(&g, &g.laptop, 1, 20);
        assert_eq!(relay.admit(&g.roster, &g.laptop.public(), &again, 0), Err(RelayRefusal::Exists { seq: 1 }));
        let skip = put(&g, &g.laptop, 3, 20);
        assert_eq!(
            relay.admit(&g.roster, &g.laptop.public(), &skip, 0),
            Err(RelayRefusal::OutOfOrder { seq: 3, last: 1 })
        );
        // Once every other member took it, it goes; its number stays used.
        for reader in [&g.desktop, &g.phone] {
            relay.ack(&g.roster, &reader.public(), g.laptop.public().device_id(), 1, 0).unwrap();
        }
        assert_eq!(relay.usage(&group_id).objects, 0);
        assert_eq!(relay.admit(&g.roster, &g.laptop.public(), &again, 0), Err(RelayRefusal::Exists { seq: 1 }));
        assert_eq!(relay.last_seq(&group_id, &g.laptop.public().device_id()), 1);
        // And after a restart from the persisted ledger.
        let mut restarted = RelayIndex::new(RelayLimits::default());
        restarted.restore(group_id, relay.ledger(&group_id).unwrap().clone(), Vec::new());
        assert_eq!(restarted.admit(&g.roster, &g.laptop.public(), &again, 0), Err(RelayRefusal::Exists { seq: 1 }));
    }

    #[test]
    fn objects_go_once_every_other_active_member_took_them() {
        let mut g = group();
        let group_id = g.roster.group_id();
        let mut relay = RelayIndex::new(RelayLimits::default());
        let laptop = g.laptop.public().device_id();
        for seq in 1..=3 {
            store(&mut relay, &g, &g.laptop, seq, 100, 0);
        }
        // The desktop sees the laptop's objects; the laptop sees none of its own.
        assert_eq!(relay.pending_for(&g.roster, &g.desktop.public(), 10).unwrap().len(), 3);
        assert!(relay.pending_for(&g.roster, &g.laptop.public(), 10).unwrap().is_empty());
        assert!(relay.ack(&g.roster, &g.desktop.public(), laptop, 2, 0).unwrap().is_empty(), "the phone has not");
        assert_eq!(relay.pending_for(&g.roster, &g.desktop.public(), 10).unwrap().len(), 1, "past its ack");
        let gone = relay.ack(&g.roster, &g.phone.public(), laptop, 3, 0).unwrap();
        assert_eq!(gone.iter().map(|n| n.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(relay.usage(&group_id).objects, 1);
        // The phone is removed before it would ever ack again: its acks
        // stop counting, and the desktop's is all that is left to wait for.
        store(&mut relay, &g, &g.laptop, 4, 100, 0);
        let remove = g.roster.sign_next(&g.desktop, RosterOp::Remove { key: g.phone.public() }, 5);
        g.roster.apply(remove).unwrap();
        assert_eq!(relay.pending_for(&g.roster, &g.phone.public(), 10), Err(RelayRefusal::NotMember));
        assert_eq!(
            relay.ack(&g.roster, &g.phone.public(), laptop, 4, 0),
            Err(RelayRefusal::NotMember),
            "a removed device's ack is refused"
        );
        let gone = relay.ack(&g.roster, &g.desktop.public(), laptop, 4, 0).unwrap();
        assert_eq!(gone.iter().map(|n| n.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert!(relay.ledger(&group_id).unwrap().acks.keys().all(|d| *d != g.phone.public().device_id()));
    }

    #[test]
    fn a_new_devices_data_is_kept_until_the_others_take_it() {
        let mut g = group();
        let mut relay = RelayIndex::new(RelayLimits::default());
        let tablet = DeviceKey::generate();
        let op = RosterOp::Add {
            key: tablet.public(),
            name: "tablet".into(),
            role: Role::Full,
            dtls_fingerprint: "sha-256 BB".into(),
        };
        g.roster.apply(g.roster.sign_next(&g.desktop, op, 9)).unwrap();
        store(&mut relay, &g, &tablet, 1, 100, 0);
        let tablet_id = tablet.public().device_id();
        assert!(relay.ack(&g.roster, &g.desktop.public(), tablet_id, 1, 0).unwrap().is_empty());
        assert!(relay.ack(&g.roster, &g.laptop.public(), tablet_id, 1, 0).unwrap().is_empty());
        assert_eq!(relay.ack(&g.roster, &g.phone.public(), tablet_id, 1, 0).unwrap().len(), 1);
    }

    #[test]
    fn quota_rate_size_and_retention_are_kept() {
        let g = group();
        let group_id = g.roster.group_id();
        let limits = RelayLimits {
            object_bytes: 1_000,
            group_bytes: 2_500,
            group_objects: 10,
            retention_ms: 60_000,
            device_bytes_per_second: 1_000,
        };
        let mut relay = RelayIndex::new(limits);
        let big = put(&g, &g.laptop, 1, 2_000);
        assert!(matches!(relay.admit(&g.roster, &g.laptop.public(), &big, 0), Err(RelayRefusal::TooLarge { .. })));
        store(&mut relay, &g, &g.laptop, 1, 900, 0);
        // The bucket holds one object's worth: the next must wait.
        let next = put(&g, &g.laptop, 2, 900);
        let Err(RelayRefusal::TooFast { retry_ms }) = relay.admit(&g.roster, &g.laptop.public(), &next, 0) else {
            panic!("the rate holds")
        };
        assert!(retry_ms > 0 && retry_ms <= 1_000, "{retry_ms}");
        store(&mut relay, &g, &g.laptop, 2, 900, 1_000);
        let third = put(&g, &g.laptop, 3, 900);
        assert!(matches!(
            relay.admit(&g.roster, &g.laptop.public(), &third, 5_000),
            Err(RelayRefusal::QuotaFull { .. })
        ));
        // Unacknowledged objects go at the retention, and make room.
        assert!(relay.collect(&g.roster, 59_999).is_empty());
        assert_eq!(relay.collect(&g.roster, 60_000).len(), 1);
        assert_eq!(relay.usage(&group_id).objects, 1);
        relay.admit(&g.roster, &g.laptop.public(), &third, 60_000).unwrap();
    }
}
