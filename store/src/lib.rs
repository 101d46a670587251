//! The PSync store: one device's files, directories, history and change log
//! in RocksDB, with content in BLAKE3-addressed blocks.
//!
//! **Invariant:** the store knows nothing of FUSE, the network or the sync
//! protocol; it takes `now` from its callers and never reads a clock itself
//! (except to stamp a newly created store).
//!
//! Every mutation is one atomic `WriteBatch`. The key layout is in [`keys`]
//! (private; its table is the source of truth for the on-disk format).
#![deny(missing_docs)]

mod error;
#[cfg(feature = "fault-injection")]
mod fault;
mod fsck;
mod gc;
mod keys;
mod records;
mod stats;
mod store;
mod sync_index;

pub use error::{Result, StoreError};
pub use fsck::FsckReport;
pub use gc::{GcPolicy, GcReport};
pub use records::*;
pub use stats::StoreStats;
pub use store::{Change, NewNode, NodeAttrs, RenameMode, SetAttr, Store, DB_DIR_NAME};
pub use sync_index::{BlockRefs, InstallResult, LocalOnlyPath, PathVersion, PeerRecord};
