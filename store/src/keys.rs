//! The whole on-disk key layout, in one place.
//!
//! Two RocksDB column families. Integers are big-endian so that keys sort
//! numerically; names are raw bytes (already validated, never containing
//! `/` or NUL).
//!
//! | CF       | key                                   | value (codec)        | meaning                                   |
//! |----------|---------------------------------------|----------------------|-------------------------------------------|
//! | `meta`   | `F`                                   | `FormatRecord`       | format version, this device's id          |
//! | `meta`   | `C`                                   | `Counters`           | next inode number, next sequence number   |
//! | `meta`   | `i` ino:u64                           | `Inode`              | one file, directory or symlink            |
//! | `meta`   | `d` parent:u64 name:bytes             | `DirEntry`           | directory entry -> child inode            |
//! | `meta`   | `p` hash:32                           | `Page`               | up to 256 block hashes (content-addressed)|
//! | `meta`   | `h` file_id:16 seq:u64                | `FileVersion`        | committed version of a file (history)     |
//! | `meta`   | `o` ino:u64                           | empty                | unlinked while open; removed on next open |
//! | `meta`   | `x` path:bytes                        | `PathEntry`          | sync index: version of a path (or deleted)|
//! | `meta`   | `q` seq:u64                           | path bytes           | sync index in sequence order              |
//! | `meta`   | `r` device:32                         | `PeerRecord`         | what this device knows of a peer          |
//! | `meta`   | `n` path in NFC:bytes                 | `LocalOnlyPath`      | a local path that does not sync, and why  |
//! | `meta`   | `g` file_id:16                        | `Timestamp`          | when a file lost its last name (history)  |
//! | `meta`   | `a` ino:u64 name:bytes                | raw bytes            | an extended attribute (`user.*`) of a node|
//! | `blocks` | hash:32                               | raw bytes (<=64 KiB) | block content, BLAKE3(value) == key       |
//!
//! Invariants (checked by fsck): every `d` entry names an existing inode
//! that lists the same (parent, name) link; every inode is reachable from the
//! root or marked `o`; every page and block referenced by an inode or a
//! version exists and matches its hash; each `x` entry has the `q` key of its
//! sequence number and each `q` key names an `x` entry with that number; a
//! live `x` entry names an existing node of its kind; no `g` key names a file
//! a live inode holds; every `a` key names an existing inode. No `s` or `t` key
//! exists (format 3 removed the old inode-level change log).

use psync_base::{nfc_key, ContentHash, DeviceId};

use crate::records::FileId;

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_BLOCKS: &str = "blocks";

pub(crate) const FORMAT: &[u8] = b"F";
pub(crate) const COUNTERS: &[u8] = b"C";

pub(crate) const TAG_INODE: u8 = b'i';
pub(crate) const TAG_DIRENT: u8 = b'd';
pub(crate) const TAG_PAGE: u8 = b'p';
pub(crate) const TAG_VERSION: u8 = b'h';
pub(crate) const TAG_ORPHAN: u8 = b'o';
pub(crate) const TAG_PATH: u8 = b'x';
pub(crate) const TAG_PATH_SEQ: u8 = b'q';
pub(crate) const TAG_PEER: u8 = b'r';
pub(crate) const TAG_LOCAL_ONLY: u8 = b'n';
pub(crate) const TAG_GONE: u8 = b'g';
pub(crate) const TAG_XATTR: u8 = b'a';

/// Formats 1-2 wrote an inode-level change log under `s` (seq) and `t`
/// (file id) that nothing read; format 3 deletes the range `[s, u)`.
pub(crate) const LEGACY_CHANGE_LOG: (&[u8], &[u8]) = (b"s", b"u");

fn tagged_u64(tag: u8, n: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = tag;
    key[1..].copy_from_slice(&n.to_be_bytes());
    key
}

pub(crate) fn inode(ino: u64) -> [u8; 9] {
    tagged_u64(TAG_INODE, ino)
}

pub(crate) fn dirent_prefix(parent: u64) -> [u8; 9] {
    tagged_u64(TAG_DIRENT, parent)
}

pub(crate) fn dirent(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + name.len());
    key.extend_from_slice(&dirent_prefix(parent));
    key.extend_from_slice(name);
    key
}

pub(crate) fn page(hash: &ContentHash) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = TAG_PAGE;
    key[1..].copy_from_slice(hash.as_bytes());
    key
}

pub(crate) fn version_prefix(file_id: FileId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = TAG_VERSION;
    key[1..].copy_from_slice(&file_id.0.to_be_bytes());
    key
}

pub(crate) fn version(file_id: FileId, seq: u64) -> [u8; 25] {
    let mut key = [0u8; 25];
    key[..17].copy_from_slice(&version_prefix(file_id));
    key[17..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn gone(file_id: FileId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = TAG_GONE;
    key[1..].copy_from_slice(&file_id.0.to_be_bytes());
    key
}

/// The file id of a `g` key.
pub(crate) fn gone_file(key: &[u8]) -> Option<FileId> {
    Some(FileId(u128::from_be_bytes(key.get(1..17)?.try_into().ok()?)))
}

pub(crate) fn xattr_prefix(ino: u64) -> [u8; 9] {
    tagged_u64(TAG_XATTR, ino)
}

pub(crate) fn xattr(ino: u64, name: &[u8]) -> Vec<u8> {
    let mut key = xattr_prefix(ino).to_vec();
    key.extend_from_slice(name);
    key
}

pub(crate) fn orphan(ino: u64) -> [u8; 9] {
    tagged_u64(TAG_ORPHAN, ino)
}

pub(crate) fn path(path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + path.len());
    key.push(TAG_PATH);
    key.extend_from_slice(path);
    key
}

pub(crate) fn path_seq(seq: u64) -> [u8; 9] {
    tagged_u64(TAG_PATH_SEQ, seq)
}

pub(crate) fn peer(device: &DeviceId) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = TAG_PEER;
    key[1..].copy_from_slice(&device.0);
    key
}

/// Keyed by the path's NFC form, so a peer's twin of a local-only name finds it.
pub(crate) fn local_only(path: &[u8]) -> Vec<u8> {
    let mut key = vec![TAG_LOCAL_ONLY];
    key.extend_from_slice(&nfc_key(path));
    key
}

/// Reads the big-endian u64 at `key[at..at + 8]`.
pub(crate) fn u64_at(key: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = key.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Reads the big-endian u128 at `key[at..at + 16]`.
pub(crate) fn u128_at(key: &[u8], at: usize) -> Option<u128> {
    let bytes: [u8; 16] = key.get(at..at + 16)?.try_into().ok()?;
    Some(u128::from_be_bytes(bytes))
}

/// Reads the 32-byte hash at `key[at..at + 32]`.
pub(crate) fn hash_at(key: &[u8], at: usize) -> Option<ContentHash> {
    let bytes: [u8; 32] = key.get(at..at + 32)?.try_into().ok()?;
    Some(ContentHash(bytes))
}
