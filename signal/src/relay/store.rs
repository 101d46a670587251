//! Where the relay keeps sealed objects, ledgers and key wraps: the
//! embedded directory ([`super::dir::RelayDir`]) or an S3-compatible bucket
//! ([`super::s3::S3Store`]). Neither layout names a file, a path or a
//! plaintext hash. The directory's: `GROUP/objects/WRITER/SEQ` (hex ids,
//! 20-digit numbers: the writer's signature, then the sealed bytes),
//! `GROUP/ledger`, `GROUP/wraps/MEMBER/EPOCH-MAKER`; the bucket's is the
//! same with shorter keys (see `s3.rs`).

use std::io;

use psync_base::ContentHash;

use super::policy::{GroupLedger, StoredObject};
use super::seal::ObjectName;
use super::wrap::SignedWrap;
use crate::identity::{PublicKey, SignatureBytes};

/// One group's objects and ledger as found in the store.
pub type FoundGroup = (ContentHash, GroupLedger, Vec<(ObjectName, StoredObject)>);

/// Signature bytes in front of each stored object.
pub const SIGNATURE_BYTES: usize = 64;

/// A relay's storage. Calls block (the server makes them off its async
/// threads).
pub trait RelayStore: Send + std::fmt::Debug {
    /// Stores an object unless its name exists; `Ok(false)`: it did.
    /// `now_ms` becomes its stored time.
    fn put_new(
        &self,
        group: &ContentHash,
        name: &ObjectName,
        signature: &SignatureBytes,
        sealed: &[u8],
        now_ms: u64,
    ) -> io::Result<bool>;
    /// An object's signature and sealed bytes, if stored.
    fn get(&self, group: &ContentHash, name: &ObjectName) -> io::Result<Option<(SignatureBytes, Vec<u8>)>>;
    /// Deletes an object (gone already is fine).
    fn delete(&self, group: &ContentHash, name: &ObjectName) -> io::Result<()>;
    /// Replaces a group's ledger atomically.
    fn save_ledger(&self, group: &ContentHash, ledger: &GroupLedger) -> io::Result<()>;
    /// Every group's ledger and objects, to rebuild the index at start.
    fn load(&self) -> io::Result<Vec<FoundGroup>>;
    /// Keeps a key wrap (replacing one of the same epoch and maker), and
    /// only the newest `keep` per recipient.
    fn put_wrap(&self, group: &ContentHash, wrap: &SignedWrap, keep: usize) -> io::Result<()>;
    /// The key wraps kept for `to`, oldest epoch first.
    fn wraps(&self, group: &ContentHash, to: &PublicKey) -> io::Result<Vec<SignedWrap>>;
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An object's key below the group: `objects/WRITER/SEQ`.
pub(crate) fn object_key(name: &ObjectName) -> String {
    format!("objects/{}/{:020}", hex(&name.writer.0), name.seq)
}

/// A wrap's key below the group: `wraps/MEMBER/EPOCH-MAKER`.
pub(crate) fn wrap_key(wrap: &SignedWrap) -> String {
    format!("wraps/{}/{:010}-{}", hex(&wrap.wrap.to.0), wrap.wrap.epoch, hex(&wrap.by.0))
}

/// Splits a stored object into its signature and sealed bytes.
pub(crate) fn split_object(mut bytes: Vec<u8>) -> io::Result<(SignatureBytes, Vec<u8>)> {
    if bytes.len() < SIGNATURE_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "relay object shorter than its signature"));
    }
    let sealed = bytes.split_off(SIGNATURE_BYTES);
    let mut signature = [0; SIGNATURE_BYTES];
    signature.copy_from_slice(&bytes);
    Ok((SignatureBytes(signature), sealed))
}
