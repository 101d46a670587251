//! The group roster: a hash-chained log of entries, each signed by a device
//! that is a full member at that point. The signalling server stores the
//! log and accepts appends to its head, but cannot forge an entry: it can
//! never bring a stranger into the group. The group id is the hash of the
//! first entry.

use std::collections::BTreeMap;

use psync_base::{codec, ContentHash};
use serde::{Deserialize, Serialize};

use crate::identity::{DeviceKey, PublicKey, SignatureBytes};

/// Signature domain of roster entries.
pub const ROSTER_DOMAIN: &str = "psync/roster/v1";

/// What a member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Full two-way sync; may change the roster.
    Full,
    /// Receives everything; its changes are ignored ("safe mode").
    ReadOnly,
}

/// A change to the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RosterOp {
    /// The first entry: the signer founds the group as its first full member.
    Create {
        /// The group's name.
        group_name: String,
        /// The founding device's name.
        name: String,
        /// Its pinned DTLS certificate fingerprint.
        dtls_fingerprint: String,
    },
    /// A new device.
    Add {
        /// Its public key.
        key: PublicKey,
        /// Its name.
        name: String,
        /// Its role.
        role: Role,
        /// Its pinned DTLS certificate fingerprint.
        dtls_fingerprint: String,
    },
    /// A device revoked.
    Remove {
        /// Which.
        key: PublicKey,
    },
    /// A device's role changed.
    SetRole {
        /// Which.
        key: PublicKey,
        /// The new role.
        role: Role,
    },
}

/// One signed entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// Hash of the previous entry (zero for the first).
    pub prev: ContentHash,
    /// Position in the log, from 0.
    pub seq: u64,
    /// When it was signed (seconds; informational).
    pub at: i64,
    /// The change.
    pub op: RosterOp,
    /// Who signed it.
    pub signer: PublicKey,
    /// Signature over everything above.
    pub signature: SignatureBytes,
}

impl RosterEntry {
    fn signed_body(prev: &ContentHash, seq: u64, at: i64, op: &RosterOp, signer: &PublicKey) -> Vec<u8> {
        codec::encode(&(prev, seq, at, op, signer)).unwrap_or_default()
    }

    /// This entry's hash (what the next entry's `prev` must be).
    pub fn hash(&self) -> ContentHash {
        ContentHash::of(&codec::encode(self).unwrap_or_default())
    }
}

/// A member as the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Public key.
    pub key: PublicKey,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Who added it (itself for the founder).
    pub added_by: PublicKey,
    /// When (seconds).
    pub added_at: i64,
    /// Pinned DTLS fingerprint.
    pub dtls_fingerprint: String,
    /// Revoked.
    pub removed: bool,
}

/// How another copy of a group's log relates to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosterRelation {
    /// The very same log.
    Same,
    /// Ours and more after it: take it.
    Extends,
    /// A prefix of ours (it lacks our newest entries).
    Behind,
    /// It and ours part ways after `at` common entries: never taken.
    Forks {
        /// Entries both share.
        at: usize,
    },
    /// Not this group's log at all.
    OtherGroup,
}

/// Why an entry or a log was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// No entries.
    #[error("empty roster")]
    Empty,
    /// The first entry is not a valid, self-signed creation.
    #[error("the first entry is not a valid group creation")]
    BadGenesis,
    /// `prev` or `seq` do not continue the log.
    #[error("entry {0} does not continue the log")]
    BrokenChain(u64),
    /// The signature does not verify.
    #[error("entry {0} has a bad signature")]
    BadSignature(u64),
    /// The signer may not make this change.
    #[error("entry {0}: {1}")]
    NotAuthorized(u64, &'static str),
}

/// The verified state of a group.
#[derive(Debug, Clone)]
pub struct Roster {
    group_id: ContentHash,
    group_name: String,
    entries: Vec<RosterEntry>,
    members: BTreeMap<PublicKey, Member>,
}

impl Roster {
    /// Founds a group with `key`'s device as its first full member.
    pub fn create(key: &DeviceKey, group_name: &str, name: &str, dtls_fingerprint: &str, at: i64) -> Roster {
        let op = RosterOp::Create {
            group_name: group_name.to_string(),
            name: name.to_string(),
            dtls_fingerprint: dtls_fingerprint.to_string(),
        };
        let genesis = sign_entry(key, ContentHash([0; 32]), 0, at, op);
        match Roster::from_entries(vec![genesis]) {
            Ok(roster) => roster,
            Err(_) => unreachable!("a freshly signed genesis entry verifies"),
        }
    }

    /// Verifies a whole log.
    pub fn from_entries(entries: Vec<RosterEntry>) -> Result<Roster, RosterError> {
        let mut it = entries.into_iter();
        let genesis = it.next().ok_or(RosterError::Empty)?;
        let RosterOp::Create { group_name, name, dtls_fingerprint } = genesis.op.clone() else {
            return Err(RosterError::BadGenesis);
        };
        if genesis.seq != 0 || genesis.prev != ContentHash([0; 32]) || !verify(&genesis) {
            return Err(RosterError::BadGenesis);
        }
        let mut members = BTreeMap::new();
        members.insert(
            genesis.signer,
            Member {
                key: genesis.signer,
                name,
                role: Role::Full,
                added_by: genesis.signer,
                added_at: genesis.at,
                dtls_fingerprint,
                removed: false,
            },
        );
        let mut roster = Roster { group_id: genesis.hash(), group_name, entries: vec![genesis], members };
        for entry in it {
            roster.apply(entry)?;
        }
        Ok(roster)
    }

    /// Verifies and appends one entry.
    pub fn apply(&mut self, entry: RosterEntry) -> Result<(), RosterError> {
        let seq = self.entries.len() as u64;
        if entry.seq != seq || entry.prev != self.head() {
            return Err(RosterError::BrokenChain(entry.seq));
        }
        if !verify(&entry) {
            return Err(RosterError::BadSignature(seq));
        }
        if self.role(&entry.signer) != Some(Role::Full) {
            return Err(RosterError::NotAuthorized(seq, "only an active full member may change the roster"));
        }
        let full_after = |members: &BTreeMap<PublicKey, Member>, changed: &PublicKey, role: Option<Role>| {
            members
                .values()
                .filter(|m| {
                    !m.removed && if m.key == *changed { role == Some(Role::Full) } else { m.role == Role::Full }
                })
                .count()
        };
        match &entry.op {
            RosterOp::Create { .. } => return Err(RosterError::NotAuthorized(seq, "a group is created only once")),
            RosterOp::Add { key, name, role, dtls_fingerprint } => {
                if self.is_active(key) {
                    return Err(RosterError::NotAuthorized(seq, "already a member"));
                }
                self.members.insert(
                    *key,
                    Member {
                        key: *key,
                        name: name.clone(),
                        role: *role,
                        added_by: entry.signer,
                        added_at: entry.at,
                        dtls_fingerprint: dtls_fingerprint.clone(),
                        removed: false,
                    },
                );
            }
            RosterOp::Remove { key } => {
                if !self.is_active(key) {
                    return Err(RosterError::NotAuthorized(seq, "not a member"));
                }
                if full_after(&self.members, key, None) == 0 {
                    return Err(RosterError::NotAuthorized(seq, "would leave the group without a full member"));
                }
                if let Some(m) = self.members.get_mut(key) {
                    m.removed = true;
                }
            }
            RosterOp::SetRole { key, role } => {
                if !self.is_active(key) {
                    return Err(RosterError::NotAuthorized(seq, "not a member"));
                }
                if full_after(&self.members, key, Some(*role)) == 0 {
                    return Err(RosterError::NotAuthorized(seq, "would leave the group without a full member"));
                }
                if let Some(m) = self.members.get_mut(key) {
                    m.role = *role;
                }
            }
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Signs the next entry (the caller applies it, or sends it to be applied).
    pub fn sign_next(&self, key: &DeviceKey, op: RosterOp, at: i64) -> RosterEntry {
        sign_entry(key, self.head(), self.entries.len() as u64, at, op)
    }

    /// The group's id: the hash of its first entry.
    pub fn group_id(&self) -> ContentHash {
        self.group_id
    }

    /// The group's name.
    pub fn group_name(&self) -> &str {
        &self.group_name
    }

    /// The hash of the latest entry (peers compare heads to catch a server
    /// that hides an entry).
    pub fn head(&self) -> ContentHash {
        self.entries.last().map_or(ContentHash([0; 32]), RosterEntry::hash)
    }

    /// The log.
    pub fn entries(&self) -> &[RosterEntry] {
        &self.entries
    }

    /// How `other` (another copy of this group's log, from the server or a
    /// peer) relates to this one.
    pub fn compare(&self, other: &Roster) -> RosterRelation {
        let common = self.entries.iter().zip(&other.entries).take_while(|(a, b)| a == b).count();
        if other.group_id != self.group_id {
            RosterRelation::OtherGroup
        } else if common == self.entries.len() && common == other.entries.len() {
            RosterRelation::Same
        } else if common == self.entries.len() {
            RosterRelation::Extends
        } else if common == other.entries.len() {
            RosterRelation::Behind
        } else {
            RosterRelation::Forks { at: common }
        }
    }

    /// Whether `head` is the hash of one of this log's entries (a peer
    /// whose head is one of ours is behind, not forked).
    pub fn has_entry(&self, head: &ContentHash) -> bool {
        self.entries.iter().any(|e| e.hash() == *head)
    }

    /// Every device ever added, revoked ones included.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Whether `key` is a current member.
    pub fn is_active(&self, key: &PublicKey) -> bool {
        self.members.get(key).is_some_and(|m| !m.removed)
    }

    /// A current member's role.
    pub fn role(&self, key: &PublicKey) -> Option<Role> {
        self.members.get(key).filter(|m| !m.removed).map(|m| m.role)
    }

    /// A current member's pinned DTLS fingerprint.
    pub fn fingerprint(&self, key: &PublicKey) -> Option<&str> {
        self.members.get(key).filter(|m| !m.removed).map(|m| m.dtls_fingerprint.as_str())
    }
}

fn sign_entry(key: &DeviceKey, prev: ContentHash, seq: u64, at: i64, op: RosterOp) -> RosterEntry {
    let signer = key.public();
    let signature = key.sign(ROSTER_DOMAIN, &RosterEntry::signed_body(&prev, seq, at, &op, &signer));
    RosterEntry { prev, seq, at, op, signer, signature }
}

fn verify(entry: &RosterEntry) -> bool {
    let body = RosterEntry::signed_body(&entry.prev, entry.seq, entry.at, &entry.op, &entry.signer);
    entry.signer.verify(ROSTER_DOMAIN, &body, &entry.signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn add(key: &PublicKey, role: Role) -> RosterOp {
        RosterOp::Add { key: *key, name: "laptop".into(), role, dtls_fingerprint: "sha-256 AA".into() }
    }

    #[test]
    fn members_add_and_revoke_devices() {
        let founder = DeviceKey::generate();
        let laptop = DeviceKey::generate();
        let phone = DeviceKey::generate();
        let mut roster = Roster::create(&founder, "notes", "desktop", "sha-256 00", 1);
        roster.apply(roster.sign_next(&founder, add(&laptop.public(), Role::Full), 2)).unwrap();
        roster.apply(roster.sign_next(&laptop, add(&phone.public(), Role::ReadOnly), 3)).unwrap();
        assert_eq!(roster.role(&phone.public()), Some(Role::ReadOnly));
        assert_eq!(roster.members().find(|m| m.key == phone.public()).unwrap().added_by, laptop.public());
        roster.apply(roster.sign_next(&founder, RosterOp::Remove { key: laptop.public() }, 4)).unwrap();
        assert!(!roster.is_active(&laptop.public()));
        // The whole log verifies from scratch and names the same group.
        let again = Roster::from_entries(roster.entries().to_vec()).unwrap();
        assert_eq!((again.group_id(), again.head()), (roster.group_id(), roster.head()));
    }

    /// Another copy of the log is taken only when it extends ours; one
    /// that lacks our newest entries, or parts ways with ours, is told apart.
    #[test]
    fn copies_of_a_log_are_compared_entry_by_entry() {
        let founder = DeviceKey::generate();
        let (laptop, phone) = (DeviceKey::generate(), DeviceKey::generate());
        let base = Roster::create(&founder, "notes", "desktop", "fp", 1);
        let mut longer = base.clone();
        longer.apply(longer.sign_next(&founder, add(&laptop.public(), Role::Full), 2)).unwrap();
        let mut fork = base.clone();
        fork.apply(fork.sign_next(&founder, add(&phone.public(), Role::Full), 2)).unwrap();
        assert_eq!(base.compare(&base), RosterRelation::Same);
        assert_eq!(base.compare(&longer), RosterRelation::Extends);
        assert_eq!(longer.compare(&base), RosterRelation::Behind);
        assert_eq!(longer.compare(&fork), RosterRelation::Forks { at: 1 });
        let other = Roster::create(&founder, "other", "desktop", "fp", 1);
        assert_eq!(base.compare(&other), RosterRelation::OtherGroup);
        assert!(longer.has_entry(&base.head()) && !longer.has_entry(&fork.head()));
    }

    #[test]
    fn nobody_outside_the_group_can_change_it() {
        let founder = DeviceKey::generate();
        let stranger = DeviceKey::generate();
        let phone = DeviceKey::generate();
        let mut roster = Roster::create(&founder, "notes", "desktop", "fp", 1);
        let forged = roster.sign_next(&stranger, add(&stranger.public(), Role::Full), 2);
        assert!(matches!(roster.apply(forged), Err(RosterError::NotAuthorized(1, _))));
        // A valid entry with its signature swapped, or its content altered.
        let mut tampered = roster.sign_next(&founder, add(&phone.public(), Role::ReadOnly), 2);
        tampered.op = add(&stranger.public(), Role::Full);
        assert_eq!(roster.apply(tampered), Err(RosterError::BadSignature(1)));
        let mut unsigned = roster.sign_next(&founder, add(&stranger.public(), Role::Full), 2);
        unsigned.signature = SignatureBytes([0; 64]);
        assert_eq!(roster.apply(unsigned), Err(RosterError::BadSignature(1)));
        // Read-only and revoked devices may not sign.
        roster.apply(roster.sign_next(&founder, add(&phone.public(), Role::ReadOnly), 2)).unwrap();
        let by_phone = roster.sign_next(&phone, add(&stranger.public(), Role::Full), 3);
        assert!(matches!(roster.apply(by_phone), Err(RosterError::NotAuthorized(2, _))));
    }

    #[test]
    fn the_chain_cannot_be_forked_replayed_or_emptied_of_full_members() {
        let founder = DeviceKey::generate();
        let laptop = DeviceKey::generate();
        let mut roster = Roster::create(&founder, "notes", "desktop", "fp", 1);
        let entry = roster.sign_next(&founder, add(&laptop.public(), Role::Full), 2);
        roster.apply(entry.clone()).unwrap();
        assert_eq!(roster.apply(entry), Err(RosterError::BrokenChain(1)), "a replayed entry");
        let stale = Roster::create(&founder, "notes", "desktop", "fp", 1).sign_next(
            &founder,
            RosterOp::Remove { key: laptop.public() },
            3,
        );
        assert!(matches!(roster.apply(stale), Err(RosterError::BrokenChain(_))), "an entry for another head");
        let demote_all = roster.sign_next(&founder, RosterOp::Remove { key: laptop.public() }, 3);
        roster.apply(demote_all).unwrap();
        let last = roster.sign_next(&founder, RosterOp::SetRole { key: founder.public(), role: Role::ReadOnly }, 4);
        assert!(matches!(roster.apply(last), Err(RosterError::NotAuthorized(..))));
        let mut bad_genesis = roster.entries().to_vec();
        bad_genesis.remove(0);
        assert!(Roster::from_entries(bad_genesis).is_err());
        assert_eq!(Roster::from_entries(vec![]).unwrap_err(), RosterError::Empty);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(entries) = codec::decode::<Vec<RosterEntry>>(&bytes) {
                let _ = Roster::from_entries(entries);
            }
        }
    }
}
