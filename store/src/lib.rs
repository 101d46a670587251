//! The PSync store: one device's files, directories, history and sync index
//! in RocksDB, with content in BLAKE3-addressed blocks.
//!
//! **Invariant:** the store knows nothing of FUSE, the network or the sync
//! protocol; it takes `now` from its callers and never reads a clock itself
//! (except to stamp a newly created store).
//!
//! Every mutation is one atomic `WriteBatch`. The key layout is in [`keys`]
//! (private; its table is the source of truth for the on-disk format).
#![deny(missing_docs)]

mod content;
mod counts;
mod error;
#[cfg(feature = "fault-injection")]
mod fault;
mod fsck;
mod gc;
mod install;
mod keys;
mod named;
mod nodes;
mod open;
mod ops;
mod past;
mod pins;
mod read;
mod records;
mod stats;
mod store;
mod sync_index;
mod txn;
mod xattr;

pub use error::{Result, StoreError};
pub use fsck::FsckReport;
pub use gc::{GcPolicy, GcReport};
pub use install::InstallResult;
pub use nodes::{NewNode, NodeAttrs, RenameMode, SetAttr};
pub use past::Undeleted;
pub use records::*;
pub use stats::StoreStats;
pub use store::{Store, DB_DIR_NAME};
pub use sync_index::{BlockRefs, LocalOnlyPath, PathVersion, PeerRecord};
pub use xattr::XattrMode;
