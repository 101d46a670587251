//! Messages relayed by the signalling server (WebRTC offers, answers and
//! candidates), signed end to end by the sender so the server can neither
//! forge, alter, redirect nor replay them; and the check that an SDP carries
//! the sender's pinned DTLS fingerprint, so the server cannot sit in the
//! middle of the peer connection either.

use std::collections::{BTreeMap, VecDeque};

use psync_base::{codec, ContentHash};
use serde::{Deserialize, Serialize};

use crate::identity::{DeviceKey, PublicKey, SignatureBytes};
use crate::roster::Roster;

/// Signature domain of relayed envelopes.
pub const ENVELOPE_DOMAIN: &str = "psync/relay/v1";
/// How far a sender's clock may be from ours.
pub const MAX_SKEW_MS: u64 = 120_000;
/// Largest payload (an SDP is a few KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// A signed message from one member to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The group (roster id).
    pub group: ContentHash,
    /// Sender.
    pub from: PublicKey,
    /// Recipient.
    pub to: PublicKey,
    /// The sender's connection attempt.
    pub session: u64,
    /// Increases with every envelope of a session.
    pub seq: u64,
    /// Sender's clock, milliseconds since the epoch.
    pub sent_at_ms: u64,
    /// The content (an SDP or a candidate).
    pub payload: Vec<u8>,
    /// Signature over all of the above.
    pub signature: SignatureBytes,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// For another group.
    #[error("envelope for another group")]
    WrongGroup,
    /// For another device.
    #[error("envelope addressed to another device")]
    WrongRecipient,
    /// The sender is not (or no longer) a member.
    #[error("sender is not a member of the group")]
    NotAMember,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Too old or from the future.
    #[error("envelope time outside the accepted window")]
    Stale,
    /// Seen before.
    #[error("replayed envelope")]
    Replayed,
    /// Payload too large.
    #[error("payload too large")]
    TooLarge,
}

fn body(e: &Envelope) -> Vec<u8> {
    codec::encode(&(&e.group, &e.from, &e.to, e.session, e.seq, e.sent_at_ms, &e.payload)).unwrap_or_default()
}

impl Envelope {
    /// Signs `payload` from `key` to `to`.
    pub fn seal(
        key: &DeviceKey,
        group: ContentHash,
        to: PublicKey,
        session: u64,
        seq: u64,
        sent_at_ms: u64,
        payload: Vec<u8>,
    ) -> Envelope {
        let mut e = Envelope {
            group,
            from: key.public(),
            to,
            session,
            seq,
            sent_at_ms,
            payload,
            signature: SignatureBytes([0; 64]),
        };
        e.signature = key.sign(ENVELOPE_DOMAIN, &body(&e));
        e
    }

    /// Checks everything and returns the payload: group, recipient,
    /// membership (from the roster, not the server), signature, time window
    /// and replay.
    pub fn open<'a>(
        &'a self,
        roster: &Roster,
        me: &PublicKey,
        now_ms: u64,
        replay: &mut ReplayGuard,
    ) -> Result<&'a [u8], EnvelopeError> {
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(EnvelopeError::TooLarge);
        }
        if self.group != roster.group_id() {
            return Err(EnvelopeError::WrongGroup);
        }
        if self.to != *me {
            return Err(EnvelopeError::WrongRecipient);
        }
        if !roster.is_active(&self.from) {
            return Err(EnvelopeError::NotAMember);
        }
        self.from.verify(ENVELOPE_DOMAIN, &body(self), &self.signature).map_err(|_| EnvelopeError::BadSignature)?;
        if now_ms.abs_diff(self.sent_at_ms) > MAX_SKEW_MS {
            return Err(EnvelopeError::Stale);
        }
        replay.check(&self.from, self.session, self.seq)?;
        Ok(&self.payload)
    }
}

/// Remembers the highest sequence number seen per (sender, session), for a
/// bounded number of sessions.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: BTreeMap<(PublicKey, u64), u64>,
    order: VecDeque<(PublicKey, u64)>,
}

/// Sessions remembered by a [`ReplayGuard`].
pub const REPLAY_SESSIONS: usize = 4096;

impl ReplayGuard {
    fn check(&mut self, from: &PublicKey, session: u64, seq: u64) -> Result<(), EnvelopeError> {
        let key = (*from, session);
        match self.seen.get_mut(&key) {
            Some(highest) if seq <= *highest => return Err(EnvelopeError::Replayed),
            Some(highest) => *highest = seq,
            None => {
                if self.order.len() >= REPLAY_SESSIONS {
                    if let Some(old) = self.order.pop_front() {
                        self.seen.remove(&old);
                    }
                }
                self.seen.insert(key, seq);
                self.order.push_back(key);
            }
        }
        Ok(())
    }
}

/// The DTLS fingerprints an SDP announces (`a=fingerprint:`), normalised.
pub fn sdp_fingerprints(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|line| line.trim().strip_prefix("a=fingerprint:"))
        .map(|fp| fp.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase())
        .collect()
}

/// Whether `sdp` uses exactly the sender's pinned fingerprint (and at least once).
pub fn sdp_matches_fingerprint(sdp: &str, pinned: &str) -> bool {
    let pinned = pinned.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase();
    let found = sdp_fingerprints(sdp);
    !found.is_empty() && found.iter().all(|f| *f == pinned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roster::{Role, RosterOp};

    struct Group {
        roster: Roster,
        a: DeviceKey,
        b: DeviceKey,
    }

    fn group() -> Group {
        let a = DeviceKey::generate();
        let b = DeviceKey::generate();
        let mut roster = Roster::create(&a, "g", "a", "sha-256 AA:BB", 1);
        let op = RosterOp::Add {
            key: b.public(),
            name: "b".into(),
            role: Role::Full,
            dtls_fingerprint: "sha-256 CC:DD".into(),
        };
        roster.apply(roster.sign_next(&a, op, 2)).unwrap();
        Group { roster, a, b }
    }

    const NOW: u64 = 1_900_000_000_000;

    #[test]
    fn a_member_to_member_envelope_opens_once() {
        let g = group();
        let e = Envelope::seal(&g.a, g.roster.group_id(), g.b.public(), 7, 1, NOW, b"offer".to_vec());
        let mut guard = ReplayGuard::default();
        assert_eq!(e.open(&g.roster, &g.b.public(), NOW + 10, &mut guard).unwrap(), b"offer");
        assert_eq!(e.open(&g.roster, &g.b.public(), NOW + 20, &mut guard), Err(EnvelopeError::Replayed));
        let next = Envelope::seal(&g.a, g.roster.group_id(), g.b.public(), 7, 2, NOW, b"candidate".to_vec());
        assert!(next.open(&g.roster, &g.b.public(), NOW, &mut guard).is_ok());
    }

    #[test]
    fn the_relay_cannot_forge_alter_redirect_or_delay() {
        let g = group();
        let stranger = DeviceKey::generate();
        let mut guard = ReplayGuard::default();
        let e = Envelope::seal(&g.a, g.roster.group_id(), g.b.public(), 1, 1, NOW, b"offer".to_vec());
        let mut altered = e.clone();
        altered.payload = b"evil offer".to_vec();
        assert_eq!(altered.open(&g.roster, &g.b.public(), NOW, &mut guard), Err(EnvelopeError::BadSignature));
        assert_eq!(e.open(&g.roster, &g.a.public(), NOW, &mut guard), Err(EnvelopeError::WrongRecipient));
        let forged = Envelope::seal(&stranger, g.roster.group_id(), g.b.public(), 1, 1, NOW, b"offer".to_vec());
        assert_eq!(forged.open(&g.roster, &g.b.public(), NOW, &mut guard), Err(EnvelopeError::NotAMember));
        let old = Envelope::seal(&g.a, g.roster.group_id(), g.b.public(), 2, 1, NOW - 3_600_000, b"offer".to_vec());
        assert_eq!(old.open(&g.roster, &g.b.public(), NOW, &mut guard), Err(EnvelopeError::Stale));
        let other_group = Envelope::seal(&g.a, ContentHash([1; 32]), g.b.public(), 3, 1, NOW, vec![]);
        assert_eq!(other_group.open(&g.roster, &g.b.public(), NOW, &mut guard), Err(EnvelopeError::WrongGroup));
    }

    #[test]
    fn a_revoked_sender_is_refused() {
        let mut g = group();
        g.roster.apply(g.roster.sign_next(&g.a, RosterOp::Remove { key: g.b.public() }, 3)).unwrap();
        let e = Envelope::seal(&g.b, g.roster.group_id(), g.a.public(), 1, 1, NOW, b"offer".to_vec());
        assert_eq!(e.open(&g.roster, &g.a.public(), NOW, &mut ReplayGuard::default()), Err(EnvelopeError::NotAMember));
    }

    #[test]
    fn an_altered_fingerprint_in_an_sdp_is_caught() {
        let g = group();
        let pinned = g.roster.fingerprint(&g.a.public()).unwrap();
        let sdp = "v=0\r\na=group:BUNDLE 0\r\na=fingerprint:sha-256 aa:bb\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(sdp_matches_fingerprint(sdp, pinned));
        let swapped = sdp.replace("aa:bb", "ee:ff");
        assert!(!sdp_matches_fingerprint(&swapped, pinned));
        let two = format!("{sdp}a=fingerprint:sha-256 EE:FF\r\n");
        assert!(!sdp_matches_fingerprint(&two, pinned), "a second, different fingerprint is refused");
        assert!(!sdp_matches_fingerprint("v=0\r\n", pinned), "no fingerprint at all is refused");
    }
}
