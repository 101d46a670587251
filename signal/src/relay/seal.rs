//! Sealing what a device leaves on the relay: XChaCha20-Poly1305 under the
//! group's content key with a random 192-bit nonce (several devices write
//! under one key, so nonces cannot be counters), bound to the group, the
//! key's epoch and the object's name, then signed by the writer.
//!
//! The relay sees sealed bytes, the writer's device id, a sequence number
//! and a size; never a path, a name, an mtime or a plaintext block hash.
//! Block ids, where a device needs them, are keyed ([`ContentKey::block_id`]),
//! so the relay cannot confirm that a group holds a known file.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use psync_base::{ContentHash, DeviceId};
use zeroize::Zeroize;

use crate::identity::{DeviceKey, PublicKey, SignatureBytes};

/// Domain of the AEAD's associated data.
const SEAL_DOMAIN: &[u8] = b"psync/relay-seal/v1";
/// Signature domain of an object's header.
pub const OBJECT_SIGN_DOMAIN: &str = "psync/relay-object/v1";
/// Key-derivation context of keyed block ids.
const BLOCK_ID_CONTEXT: &str = "psync relay block id v1";
/// Format byte of a sealed object.
const SEALED_FORMAT: u8 = 1;
/// Nonce bytes (192 bits: random nonces never repeat in practice).
pub const NONCE_BYTES: usize = 24;
/// Authentication tag bytes.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a plaintext (format, epoch, nonce, tag).
pub const SEAL_OVERHEAD_BYTES: usize = 1 + 4 + NONCE_BYTES + TAG_BYTES;

/// Why a sealed object was not opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Too short, or an unknown format.
    #[error("not a sealed object")]
    Malformed,
    /// Sealed under another epoch's key than the one offered.
    #[error("sealed under key epoch {sealed}, not {offered}")]
    WrongEpoch {
        /// The object's epoch.
        sealed: u32,
        /// The key's epoch.
        offered: u32,
    },
    /// Wrong key, wrong group or name, or altered bytes.
    #[error("does not open: altered, or sealed under another key, group or name")]
    Forged,
    /// The writer's signature does not hold.
    #[error("the writer's signature does not hold")]
    BadSignature,
    /// Sealed under a key of an epoch this device does not hold.
    #[error("sealed under key epoch {0}, which this device does not hold")]
    UnknownEpoch(u32),
}

/// The group's content key of one epoch. Zeroized on drop; never printed.
pub struct ContentKey {
    epoch: u32,
    key: [u8; 32],
}

impl Drop for ContentKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentKey(epoch {}, secret redacted)", self.epoch)
    }
}

/// Content keys this device holds, of every epoch it has seen (objects
/// sealed before a re-key still open). Two members re-keying at once make
/// two keys of one epoch: every device picks the same one as current (the
/// larger key id), and objects sealed under either still open.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: Vec<ContentKey>,
}

/// Keys a keyring keeps (count): the newest epochs.
pub const MAX_KEYRING_KEYS: usize = 64;

impl Keyring {
    /// A keyring of one key.
    pub fn new(key: ContentKey) -> Keyring {
        Keyring { keys: vec![key] }
    }

    fn rank(key: &ContentKey) -> (u32, [u8; 32]) {
        (key.epoch, *blake3::hash(&key.key).as_bytes())
    }

    /// The key new objects are sealed under (`None`: empty).
    pub fn current(&self) -> Option<&ContentKey> {
        self.keys.iter().max_by_key(|k| Self::rank(k))
    }

    /// Keys of `epoch`.
    pub fn of_epoch(&self, epoch: u32) -> impl Iterator<Item = &ContentKey> {
        self.keys.iter().filter(move |k| k.epoch == epoch)
    }

    /// Every key.
    pub fn keys(&self) -> &[ContentKey] {
        &self.keys
    }

    /// Adds `key`; false if it was there.
    pub fn add(&mut self, key: ContentKey) -> bool {
        if self.keys.iter().any(|k| k.epoch == key.epoch && k.key == key.key) {
            return false;
        }
        self.keys.push(key);
        if self.keys.len() > MAX_KEYRING_KEYS {
            self.keys.sort_by_key(Self::rank);
            self.keys.remove(0);
        }
        true
    }

    /// Makes a new current key, one epoch past the current (after a
    /// device was removed: it never learns the new key).
    pub fn rotate(&mut self) -> &ContentKey {
        let epoch = self.current().map_or(1, |k| k.epoch.saturating_add(1));
        self.keys.push(ContentKey::generate(epoch));
        let at = self.keys.len() - 1;
        &self.keys[at]
    }

    /// Opens `sealed` (object `name` of `group`) with whichever key of its
    /// epoch fits.
    pub fn open(&self, group: &ContentHash, name: &ObjectName, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let epoch = sealed_epoch(sealed)?;
        let mut last = None;
        for key in self.of_epoch(epoch) {
            match key.open(group, name, sealed) {
                Ok(plain) => return Ok(plain),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(SealError::UnknownEpoch(epoch)))
    }
}

/// Where an object lives on the relay: its writer and the writer's
/// sequence number (contiguous from 1, so a withheld object shows as a gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ObjectName {
    /// The device that wrote it.
    pub writer: DeviceId,
    /// Its place in the writer's sequence.
    pub seq: u64,
}

impl ObjectName {
    fn bytes(&self) -> [u8; 40] {
        let mut out = [0; 40];
        out[..32].copy_from_slice(&self.writer.0);
        out[32..].copy_from_slice(&self.seq.to_le_bytes());
        out
    }
}

impl ContentKey {
    /// A new random key for `epoch`.
    pub fn generate(epoch: u32) -> ContentKey {
        ContentKey { epoch, key: rand::random() }
    }

    /// A key from its bytes (read from the data dir or unwrapped).
    pub fn from_bytes(epoch: u32, key: [u8; 32]) -> ContentKey {
        ContentKey { epoch, key }
    }

    /// The key's bytes, to save or wrap.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// Its epoch: 1 at `psync init`, one more at each re-key.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// A block's id as the relay may see it: keyed by the content key, so
    /// it says nothing to anyone without the key.
    pub fn block_id(&self, hash: &ContentHash) -> [u8; 32] {
        let key = blake3::derive_key(BLOCK_ID_CONTEXT, &self.key);
        *blake3::keyed_hash(&key, &hash.0).as_bytes()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.key).into())
    }

    fn aad(&self, group: &ContentHash, name: &ObjectName) -> Vec<u8> {
        [SEAL_DOMAIN, &group.0, &self.epoch.to_le_bytes(), &name.bytes()].concat()
    }

    /// Seals `plaintext` as object `name` of `group`.
    pub fn seal(&self, group: &ContentHash, name: &ObjectName, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let aad = self.aad(group, name);
        let sealed = self.cipher().encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad });
        // Encryption of an in-memory buffer under a 32-byte key cannot fail.
        let sealed = sealed.unwrap_or_default();
        let mut out = Vec::with_capacity(SEAL_OVERHEAD_BYTES + plaintext.len());
        out.push(SEALED_FORMAT);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`ContentKey::seal`] made for the same group and name.
    pub fn open(&self, group: &ContentHash, name: &ObjectName, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let epoch = sealed_epoch(sealed)?;
        if epoch != self.epoch {
            return Err(SealError::WrongEpoch { sealed: epoch, offered: self.epoch });
        }
        let nonce = &sealed[5..5 + NONCE_BYTES];
        let aad = self.aad(group, name);
        self.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: &sealed[5 + NONCE_BYTES..], aad: &aad })
            .map_err(|_| SealError::Forged)
    }
}

/// The epoch a sealed object says it was sealed under (to pick the key).
pub fn sealed_epoch(sealed: &[u8]) -> Result<u32, SealError> {
    if sealed.len() < SEAL_OVERHEAD_BYTES || sealed[0] != SEALED_FORMAT {
        return Err(SealError::Malformed);
    }
    let mut epoch = [0; 4];
    epoch.copy_from_slice(&sealed[1..5]);
    Ok(u32::from_le_bytes(epoch))
}

/// What a writer signs for an object: the relay checks it against the
/// roster before storing, readers before opening, so no member can pass
/// an object off as another's and the relay cannot forge one.
fn signed_header(group: &ContentHash, name: &ObjectName, sealed: &[u8]) -> Vec<u8> {
    [&group.0[..], &name.bytes(), blake3::hash(sealed).as_bytes()].concat()
}

/// Signs a sealed object as its writer.
pub fn sign_object(key: &DeviceKey, group: &ContentHash, name: &ObjectName, sealed: &[u8]) -> SignatureBytes {
    key.sign(OBJECT_SIGN_DOMAIN, &signed_header(group, name, sealed))
}

/// Checks an object's signature by `writer` (whose device id must be the name's).
pub fn verify_object(
    writer: &PublicKey,
    group: &ContentHash,
    name: &ObjectName,
    sealed: &[u8],
    signature: &SignatureBytes,
) -> Result<(), SealError> {
    if writer.device_id() != name.writer {
        return Err(SealError::BadSignature);
    }
    writer
        .verify(OBJECT_SIGN_DOMAIN, &signed_header(group, name, sealed), signature)
        .map_err(|_| SealError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(seq: u64) -> ObjectName {
        ObjectName { writer: DeviceId([7; 32]), seq }
    }

    const GROUP: ContentHash = ContentHash([3; 32]);

    #[test]
    fn sealed_objects_open_only_under_their_key_epoch_group_and_name() {
        let key = ContentKey::generate(4);
        let sealed = key.seal(&GROUP, &name(1), b"a note");
        assert_eq!(key.open(&GROUP, &name(1), &sealed).unwrap(), b"a note");
        assert_eq!(sealed.len(), b"a note".len() + SEAL_OVERHEAD_BYTES);
        assert!(!sealed.windows(6).any(|w| w == b"a note"), "no plaintext in the sealed bytes");

        let other = ContentKey::generate(4);
        assert_eq!(other.open(&GROUP, &name(1), &sealed), Err(SealError::Forged), "wrong key");
        let next_epoch = ContentKey::from_bytes(5, *key.bytes());
        assert_eq!(next_epoch.open(&GROUP, &name(1), &sealed), Err(SealError::WrongEpoch { sealed: 4, offered: 5 }));
        assert_eq!(key.open(&ContentHash([4; 32]), &name(1), &sealed), Err(SealError::Forged), "wrong group");
        assert_eq!(key.open(&GROUP, &name(2), &sealed), Err(SealError::Forged), "moved to another name");
        let other_writer = ObjectName { writer: DeviceId([8; 32]), seq: 1 };
        assert_eq!(key.open(&GROUP, &other_writer, &sealed), Err(SealError::Forged), "passed off as another's");
        for at in [0, 3, 10, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[at] ^= 1;
            assert!(key.open(&GROUP, &name(1), &flipped).is_err(), "a flipped byte at {at} is caught");
        }
        assert_eq!(key.open(&GROUP, &name(1), &sealed[..sealed.len() - 1]), Err(SealError::Forged), "truncated");
        assert_eq!(key.open(&GROUP, &name(1), &sealed[..10]), Err(SealError::Malformed));
    }

    #[test]
    fn the_same_plaintext_seals_differently_each_time() {
        let key = ContentKey::generate(0);
        assert_ne!(key.seal(&GROUP, &name(1), b"same"), key.seal(&GROUP, &name(1), b"same"));
    }

    #[test]
    fn a_keyring_opens_every_epoch_it_holds_and_agrees_on_the_current_key() {
        let group = ContentHash([1; 32]);
        let name = ObjectName { writer: DeviceId([2; 32]), seq: 1 };
        let mut ring = Keyring::new(ContentKey::generate(1));
        let old = ring.current().unwrap().seal(&group, &name, b"before");
        let epoch = ring.rotate().epoch();
        assert_eq!(epoch, 2);
        let new = ring.current().unwrap().seal(&group, &name, b"after");
        assert_eq!(ring.open(&group, &name, &old).unwrap(), b"before");
        assert_eq!(ring.open(&group, &name, &new).unwrap(), b"after");
        let later = ContentKey::generate(3).seal(&group, &name, b"later");
        assert_eq!(ring.open(&group, &name, &later).unwrap_err(), SealError::UnknownEpoch(3));
        // Two re-keys of the same epoch: both open, and both rings pick one.
        let (a, b) = (ContentKey::generate(3), ContentKey::generate(3));
        let (a_bytes, b_bytes) = (*a.bytes(), *b.bytes());
        let sealed_b = b.seal(&group, &name, b"b");
        let mut one = Keyring::new(ContentKey::from_bytes(3, a_bytes));
        one.add(ContentKey::from_bytes(3, b_bytes));
        let mut two = Keyring::new(b);
        two.add(a);
        assert_eq!(one.current().unwrap().bytes(), two.current().unwrap().bytes());
        assert_eq!(one.open(&group, &name, &sealed_b).unwrap(), b"b");
        assert!(!one.add(ContentKey::from_bytes(3, a_bytes)), "a key is kept once");
    }

    #[test]
    fn block_ids_are_keyed() {
        let (a, b) = (ContentKey::generate(0), ContentKey::generate(0));
        let hash = ContentHash::of(b"a well-known file");
        assert_eq!(a.block_id(&hash), a.block_id(&hash));
        assert_ne!(a.block_id(&hash), b.block_id(&hash));
        assert_ne!(a.block_id(&hash), hash.0, "not the plaintext hash");
    }

    #[test]
    fn objects_are_signed_by_their_writer_only() {
        let writer = DeviceKey::generate();
        let name = ObjectName { writer: writer.public().device_id(), seq: 9 };
        let key = ContentKey::generate(0);
        let sealed = key.seal(&GROUP, &name, b"x");
        let sig = sign_object(&writer, &GROUP, &name, &sealed);
        assert_eq!(verify_object(&writer.public(), &GROUP, &name, &sealed, &sig), Ok(()));
        let mallory = DeviceKey::generate();
        let forged = sign_object(&mallory, &GROUP, &name, &sealed);
        assert_eq!(verify_object(&writer.public(), &GROUP, &name, &sealed, &forged), Err(SealError::BadSignature));
        assert_eq!(verify_object(&mallory.public(), &GROUP, &name, &sealed, &forged), Err(SealError::BadSignature));
        let mut altered = sealed.clone();
        altered[6] ^= 1;
        assert_eq!(verify_object(&writer.public(), &GROUP, &name, &altered, &sig), Err(SealError::BadSignature));
    }
}
