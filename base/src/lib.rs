//! Foundation types shared by every PSync crate: device ids, content hashes,
//! version vectors, file-name validation, and the one binary codec.
//!
//! **Invariant:** this crate does no I/O and knows nothing of RocksDB, FUSE,
//! tokio or WebRTC. It cannot fail except on malformed input.
#![deny(missing_docs)]

pub mod codec;
mod hash;
mod name;
pub mod page;
mod syncable;
mod version;
pub mod xattr;

pub use hash::{ContentHash, HashParseError};
pub use name::{validate_name, NameError, NAME_MAX_BYTES};
pub use syncable::{check_syncable, nfc_key, LocalOnly, MAX_SYNC_PATH_BYTES};
pub use version::{Causality, DeviceId, VersionVector};

/// Bytes per content block, shared by the store and the sync protocol.
/// Fixed-size chunking: see ARCHITECTURE.md for why.
pub const BLOCK_SIZE: u64 = 64 * 1024;
