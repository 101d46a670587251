//! PSync's replication core: a deterministic, sans-I/O state machine that
//! decides what every device ends up with.
//!
//! **Invariant:** this crate knows nothing of tokio, WebRTC, RocksDB or FUSE
//! (`tests/tests/architecture.rs` checks its dependency tree; clippy checks
//! it reads no clock). Messages and time come in, messages
//! and storage calls go out.
//!
//! Goals: every device converges to the same tree; nothing a device
//! committed is lost (concurrent versions are kept as conflict copies whose
//! names every device derives alike); a deleted file is never resurrected.
#![deny(missing_docs)]

mod core;
mod fetch;
mod holds;
pub mod ignore;
pub mod limits;
pub mod merge;
pub mod merkle;
pub mod message;
pub mod patch;
pub mod path;
mod readonly;
pub mod record;
pub mod relay;
pub mod storage;
mod tree;

pub use crate::core::{Change, Input, Output, PeerProgress, SyncConfig, SyncCore, SyncError};

/// Milliseconds (monotonic in the daemon; simulations may start anywhere).
pub type Millis = u64;
pub use holds::{HeldVersion, HoldReason};
pub use message::Message;
pub use path::SyncPath;
pub use record::{Blocks, FileRecord, RecordKind, VersionId};
pub use storage::{InstallOutcome, MemStorage, PastVersion, PeerState, StorageError, SyncStorage};
