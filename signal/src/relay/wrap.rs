//! The group's content key wrapped to one member: X25519 between a fresh
//! ephemeral key and the member's device key (its Ed25519 key in Montgomery
//! form), then XChaCha20-Poly1305. A re-key after a removal wraps the new
//! key to each remaining member, so members that are offline pick it up
//! from the relay later without waiting for anyone.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::MontgomeryPoint;
use psync_base::ContentHash;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::seal::{ContentKey, NONCE_BYTES};
use crate::identity::{DeviceKey, PublicKey};

/// Key-derivation context of wrapping keys.
const WRAP_CONTEXT: &str = "psync relay key wrap v1";
/// Domain of a wrap's associated data.
const WRAP_DOMAIN: &[u8] = b"psync/relay-key-wrap/v1";

/// Why a wrap was not made or not opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WrapError {
    /// The recipient's key is not a usable curve point.
    #[error("the member's key cannot receive a wrapped key")]
    BadRecipient,
    /// Not for this device, this group or this epoch, or altered.
    #[error("the wrapped key does not open for this device")]
    DoesNotOpen,
}

/// A content key wrapped to one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyWrap {
    /// The key's epoch.
    pub epoch: u32,
    /// The member it is for.
    pub to: PublicKey,
    /// The sender's ephemeral X25519 point.
    pub ephemeral: [u8; 32],
    /// The random nonce.
    pub nonce: [u8; NONCE_BYTES],
    /// The sealed key (32 bytes and a tag).
    pub sealed: Vec<u8>,
}

fn wrapping_key(shared: &[u8; 32], ephemeral: &[u8; 32], to: &PublicKey, group: &ContentHash, epoch: u32) -> [u8; 32] {
    let material = [&shared[..], ephemeral, &to.0, &group.0, &epoch.to_le_bytes()].concat();
    blake3::derive_key(WRAP_CONTEXT, &material)
}

fn aad(group: &ContentHash, to: &PublicKey, epoch: u32) -> Vec<u8> {
    [WRAP_DOMAIN, &group.0, &to.0, &epoch.to_le_bytes()].concat()
}

/// Wraps `key` to member `to` of `group`.
pub fn wrap(key: &ContentKey, group: &ContentHash, to: &PublicKey) -> Result<KeyWrap, WrapError> {
    let their = to.x25519_point().ok_or(WrapError::BadRecipient)?;
    let mut secret: [u8; 32] = rand::random();
    let ephemeral = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
    let mut shared = MontgomeryPoint(their).mul_clamped(secret).to_bytes();
    secret.zeroize();
    if shared == [0; 32] {
        return Err(WrapError::BadRecipient);
    }
    let mut wrapping = wrapping_key(&shared, &ephemeral, to, group, key.epoch());
    shared.zeroize();
    let nonce: [u8; NONCE_BYTES] = rand::random();
    let aad = aad(group, to, key.epoch());
    let sealed = XChaCha20Poly1305::new((&wrapping).into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: key.bytes(), aad: &aad })
        .map_err(|_| WrapError::BadRecipient);
    wrapping.zeroize();
    Ok(KeyWrap { epoch: key.epoch(), to: *to, ephemeral, nonce, sealed: sealed? })
}

/// Opens a wrap made for this device (`me`) in `group`.
pub fn unwrap(wrap: &KeyWrap, group: &ContentHash, me: &DeviceKey) -> Result<ContentKey, WrapError> {
    if wrap.to != me.public() {
        return Err(WrapError::DoesNotOpen);
    }
    let mut shared = me.x25519(&wrap.ephemeral).ok_or(WrapError::DoesNotOpen)?;
    let mut wrapping = wrapping_key(&shared, &wrap.ephemeral, &wrap.to, group, wrap.epoch);
    shared.zeroize();
    let aad = aad(group, &wrap.to, wrap.epoch);
    let opened = XChaCha20Poly1305::new((&wrapping).into())
        .decrypt(XNonce::from_slice(&wrap.nonce), Payload { msg: &wrap.sealed, aad: &aad });
    wrapping.zeroize();
    let mut bytes = opened.map_err(|_| WrapError::DoesNotOpen)?;
    let key: Result<[u8; 32], _> = bytes.as_slice().try_into();
    bytes.zeroize();
    key.map(|k| ContentKey::from_bytes(wrap.epoch, k)).map_err(|_| WrapError::DoesNotOpen)
}

/// Signature domain of wraps.
pub const WRAP_SIGN_DOMAIN: &str = "psync/relay-key-wrap-sig/v1";

/// A wrap signed by the member that made it: a recipient takes a key only
/// from an active full member of its roster (the relay, which passes wraps
/// on, must not be able to hand a member a key of its own making).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedWrap {
    /// The wrap.
    pub wrap: KeyWrap,
    /// Who made it.
    pub by: PublicKey,
    /// `by`'s signature over the group and the wrap.
    pub signature: crate::identity::SignatureBytes,
}

fn wrap_message(group: &ContentHash, wrap: &KeyWrap) -> Vec<u8> {
    let encoded = psync_base::codec::encode(wrap).unwrap_or_default();
    [&group.0[..], &encoded].concat()
}

impl SignedWrap {
    /// Wraps `key` to `to` and signs it as `by`.
    pub fn make(
        key: &ContentKey,
        group: &ContentHash,
        to: &PublicKey,
        by: &DeviceKey,
    ) -> Result<SignedWrap, WrapError> {
        let wrap = wrap(key, group, to)?;
        let signature = by.sign(WRAP_SIGN_DOMAIN, &wrap_message(group, &wrap));
        Ok(SignedWrap { wrap, by: by.public(), signature })
    }

    /// Opens it for `me` if its maker is an active full member of `roster`
    /// and its signature holds.
    pub fn open(&self, roster: &crate::roster::Roster, me: &DeviceKey) -> Result<ContentKey, WrapError> {
        if roster.role(&self.by) != Some(crate::roster::Role::Full) {
            return Err(WrapError::DoesNotOpen);
        }
        let group = roster.group_id();
        self.by
            .verify(WRAP_SIGN_DOMAIN, &wrap_message(&group, &self.wrap), &self.signature)
            .map_err(|_| WrapError::DoesNotOpen)?;
        unwrap(&self.wrap, &group, me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: ContentHash = ContentHash([5; 32]);

    #[test]
    fn a_wrapped_key_opens_for_its_member_only() {
        let (alice, bob) = (DeviceKey::generate(), DeviceKey::generate());
        let key = ContentKey::generate(3);
        let wrapped = wrap(&key, &GROUP, &alice.public()).unwrap();
        let opened = unwrap(&wrapped, &GROUP, &alice).unwrap();
        assert_eq!(opened.bytes(), key.bytes());
        assert_eq!(opened.epoch(), 3);
        assert!(!wrapped.sealed.windows(32).any(|w| w == key.bytes()), "the key is not in the clear");

        assert_eq!(unwrap(&wrapped, &GROUP, &bob).unwrap_err(), WrapError::DoesNotOpen, "another member");
        let mut readdressed = wrapped.clone();
        readdressed.to = bob.public();
        assert_eq!(unwrap(&readdressed, &GROUP, &bob).unwrap_err(), WrapError::DoesNotOpen, "re-addressed");
        assert_eq!(unwrap(&wrapped, &ContentHash([6; 32]), &alice).unwrap_err(), WrapError::DoesNotOpen, "group");
        let mut other_epoch = wrapped.clone();
        other_epoch.epoch = 4;
        assert_eq!(unwrap(&other_epoch, &GROUP, &alice).unwrap_err(), WrapError::DoesNotOpen, "epoch");
        let mut flipped = wrapped.clone();
        flipped.sealed[0] ^= 1;
        assert_eq!(unwrap(&flipped, &GROUP, &alice).unwrap_err(), WrapError::DoesNotOpen, "altered");
    }

    #[test]
    fn a_wrap_opens_only_if_an_active_full_member_made_it() {
        let (alice, bob, stranger) = (DeviceKey::generate(), DeviceKey::generate(), DeviceKey::generate());
        let mut roster = crate::roster::Roster::create(&alice, "g", "alice", "fp", 1);
        let add = crate::roster::RosterOp::Add {
            key: bob.public(),
            name: "bob".into(),
            role: crate::roster::Role::Full,
            dtls_fingerprint: "fp".into(),
        };
        roster.apply(roster.sign_next(&alice, add, 2)).unwrap();
        let group = roster.group_id();
        let key = ContentKey::generate(2);
        let signed = SignedWrap::make(&key, &group, &bob.public(), &alice).unwrap();
        assert_eq!(signed.open(&roster, &bob).unwrap().bytes(), key.bytes());
        // The relay (or anyone outside the group) cannot hand out a key.
        let forged = SignedWrap::make(&ContentKey::generate(2), &group, &bob.public(), &stranger).unwrap();
        assert_eq!(forged.open(&roster, &bob).unwrap_err(), WrapError::DoesNotOpen);
        let mut resigned = forged.clone();
        resigned.by = alice.public();
        assert_eq!(resigned.open(&roster, &bob).unwrap_err(), WrapError::DoesNotOpen, "a signature that does not hold");
        // A removed member's wraps no longer count.
        roster.apply(roster.sign_next(&bob, crate::roster::RosterOp::Remove { key: alice.public() }, 3)).unwrap();
        assert_eq!(signed.open(&roster, &bob).unwrap_err(), WrapError::DoesNotOpen);
    }

    #[test]
    fn a_low_order_key_gets_no_wrap() {
        let key = ContentKey::generate(0);
        // The identity point: every shared secret with it is zero.
        let mut identity = [0; 32];
        identity[0] = 1;
        assert_eq!(wrap(&key, &GROUP, &PublicKey(identity)).unwrap_err(), WrapError::BadRecipient);
    }
}
