//! The first exchange on a new data channel, before any sync message.
//!
//! DTLS has proved that each side holds the certificate its SDP named, and
//! that fingerprint was checked against the roster. The hello binds the
//! channel to the device keys themselves: each side signs both DTLS
//! fingerprints, the other side's fresh nonce and its roster head. So a copied
//! DTLS key alone does not make a device, a recorded hello cannot be replayed
//! on another connection, and each side learns whether the other's roster is
//! ahead of its own.
//!
//! Sans-I/O: the caller moves [`Challenge`] and [`Proof`] over the channel.

use psync_base::{codec, ContentHash};
use serde::{Deserialize, Serialize};

use crate::identity::{DeviceKey, PublicKey, SignatureBytes};
use crate::roster::Roster;

/// Signature domain of peer hellos.
pub const HELLO_DOMAIN: &str = "psync/peer-hello/v1";

/// Sent first by both sides: a nonce the other side must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Fresh per connection.
    pub nonce: [u8; 32],
}

/// Sent second by both sides, answering the other's [`Challenge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The sender's device key.
    pub from: PublicKey,
    /// The sender's roster head when it signed.
    pub roster_head: ContentHash,
    /// Signature over the group, both keys, both fingerprints, the nonce and the head.
    pub signature: SignatureBytes,
}

/// Why a peer's hello was refused; the connection is then closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The message does not decode.
    #[error("malformed hello: {0}")]
    Malformed(String),
    /// Signed by another device than the one this connection was opened to.
    #[error("the hello is from another device than the one connected")]
    WrongDevice,
    /// The peer is not (or no longer) an active member.
    #[error("the peer is not a member of the group")]
    NotAMember,
    /// The signature does not cover this connection (other nonce, other
    /// fingerprints, other group) or is forged.
    #[error("the hello's signature does not match this connection")]
    BadSignature,
}

/// One side of the hello on one connection.
#[derive(Debug)]
pub struct Handshake {
    group: ContentHash,
    me: PublicKey,
    peer: PublicKey,
    my_fingerprint: String,
    peer_fingerprint: String,
    my_nonce: [u8; 32],
}

#[allow(clippy::too_many_arguments)]
fn signed_body(
    group: &ContentHash,
    from: &PublicKey,
    to: &PublicKey,
    from_fingerprint: &str,
    to_fingerprint: &str,
    nonce: &[u8; 32],
    roster_head: &ContentHash,
) -> Vec<u8> {
    codec::encode(&(group, from, to, from_fingerprint, to_fingerprint, nonce, roster_head)).unwrap_or_default()
}

impl Handshake {
    /// Starts the hello with `peer` on a connection whose DTLS fingerprints
    /// are `my_fingerprint` (ours) and `peer_fingerprint` (from the peer's
    /// SDP, already checked against the roster). Send the challenge first.
    pub fn start(
        roster: &Roster,
        me: PublicKey,
        peer: PublicKey,
        my_fingerprint: &str,
        peer_fingerprint: &str,
    ) -> (Handshake, Challenge) {
        let my_nonce = rand::random::<[u8; 32]>();
        let handshake = Handshake {
            group: roster.group_id(),
            me,
            peer,
            my_fingerprint: my_fingerprint.to_string(),
            peer_fingerprint: peer_fingerprint.to_string(),
            my_nonce,
        };
        (handshake, Challenge { nonce: my_nonce })
    }

    /// Answers the peer's challenge.
    pub fn prove(&self, key: &DeviceKey, challenge: &Challenge, roster_head: ContentHash) -> Proof {
        let body = signed_body(
            &self.group,
            &self.me,
            &self.peer,
            &self.my_fingerprint,
            &self.peer_fingerprint,
            &challenge.nonce,
            &roster_head,
        );
        Proof { from: self.me, roster_head, signature: key.sign(HELLO_DOMAIN, &body) }
    }

    /// Checks the peer's proof against our challenge; returns its roster head.
    pub fn verify(&self, roster: &Roster, proof: &Proof) -> Result<ContentHash, HelloError> {
        if proof.from != self.peer {
            return Err(HelloError::WrongDevice);
        }
        if !roster.is_active(&proof.from) {
            return Err(HelloError::NotAMember);
        }
        let body = signed_body(
            &self.group,
            &self.peer,
            &self.me,
            &self.peer_fingerprint,
            &self.my_fingerprint,
            &self.my_nonce,
            &proof.roster_head,
        );
        proof.from.verify(HELLO_DOMAIN, &body, &proof.signature).map_err(|_| HelloError::BadSignature)?;
        Ok(proof.roster_head)
    }
}

/// Decodes a challenge received from a peer.
pub fn decode_challenge(bytes: &[u8]) -> Result<Challenge, HelloError> {
    codec::decode(bytes).map_err(|e| HelloError::Malformed(e.to_string()))
}

/// Decodes a proof received from a peer.
pub fn decode_proof(bytes: &[u8]) -> Result<Proof, HelloError> {
    codec::decode(bytes).map_err(|e| HelloError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roster::{Role, RosterOp};

    struct Pair {
        roster: Roster,
        a: DeviceKey,
        b: DeviceKey,
    }

    const FP_A: &str = "sha-256 AA:AA";
    const FP_B: &str = "sha-256 BB:BB";

    fn pair() -> Pair {
        let a = DeviceKey::generate();
        let b = DeviceKey::generate();
        let mut roster = Roster::create(&a, "notes", "laptop", FP_A, 1);
        let add =
            RosterOp::Add { key: b.public(), name: "phone".into(), role: Role::Full, dtls_fingerprint: FP_B.into() };
        let entry = roster.sign_next(&a, add, 2);
        roster.apply(entry).unwrap();
        Pair { roster, a, b }
    }

    #[test]
    fn both_sides_accept_each_other_and_learn_the_roster_head() {
        let p = pair();
        let (ha, ca) = Handshake::start(&p.roster, p.a.public(), p.b.public(), FP_A, FP_B);
        let (hb, cb) = Handshake::start(&p.roster, p.b.public(), p.a.public(), FP_B, FP_A);
        let ca = decode_challenge(&codec::encode(&ca).unwrap()).unwrap();
        let pa = ha.prove(&p.a, &cb, p.roster.head());
        let pb = hb.prove(&p.b, &ca, p.roster.head());
        let pb = decode_proof(&codec::encode(&pb).unwrap()).unwrap();
        assert_eq!(ha.verify(&p.roster, &pb), Ok(p.roster.head()));
        assert_eq!(hb.verify(&p.roster, &pa), Ok(p.roster.head()));
    }

    #[test]
    fn a_proof_for_another_connection_is_refused() {
        let p = pair();
        let (ha, _) = Handshake::start(&p.roster, p.a.public(), p.b.public(), FP_A, FP_B);
        let (hb, cb) = Handshake::start(&p.roster, p.b.public(), p.a.public(), FP_B, FP_A);
        // Replayed: signed for an earlier connection's nonce.
        let (_, old_challenge) = Handshake::start(&p.roster, p.a.public(), p.b.public(), FP_A, FP_B);
        let replayed = hb.prove(&p.b, &old_challenge, p.roster.head());
        assert_eq!(ha.verify(&p.roster, &replayed), Err(HelloError::BadSignature));
        // Relayed through a middle that terminated DTLS with its own certificate.
        let (ha_seen_by_middle, ca) = Handshake::start(&p.roster, p.a.public(), p.b.public(), "sha-256 EE:EE", FP_B);
        let honest = hb.prove(&p.b, &ca, p.roster.head());
        assert_eq!(ha_seen_by_middle.verify(&p.roster, &honest), Err(HelloError::BadSignature));
        // Signed by another member than the one connected to.
        let pa = ha.prove(&p.a, &cb, p.roster.head());
        let (hb_expecting_other, _) =
            Handshake::start(&p.roster, p.b.public(), DeviceKey::generate().public(), FP_B, FP_A);
        assert_eq!(hb_expecting_other.verify(&p.roster, &pa), Err(HelloError::WrongDevice));
        // Garbage on the wire.
        assert!(matches!(decode_proof(&[0xff; 7]), Err(HelloError::Malformed(_))));
    }

    #[test]
    fn a_removed_device_is_refused() {
        let mut p = pair();
        let (ha, ca) = Handshake::start(&p.roster, p.a.public(), p.b.public(), FP_A, FP_B);
        let (hb, _) = Handshake::start(&p.roster, p.b.public(), p.a.public(), FP_B, FP_A);
        let proof = hb.prove(&p.b, &ca, p.roster.head());
        assert!(ha.verify(&p.roster, &proof).is_ok());
        let remove = p.roster.sign_next(&p.a, RosterOp::Remove { key: p.b.public() }, 3);
        p.roster.apply(remove).unwrap();
        assert_eq!(ha.verify(&p.roster, &proof), Err(HelloError::NotAMember));
    }
}
