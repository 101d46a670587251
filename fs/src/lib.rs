//! The PSync filesystem: POSIX semantics over the store ([`FsCore`]), the
//! `fuser` adapter ([`PsyncFs`]) and mounting ([`mount`]).
//!
//! **Invariant:** FUSE callbacks hold no logic: decode, call one `FsCore`
//! method, reply (requests that the replaying thread may make go through
//! `FsCore::request_*`, which choose). `FsError::errno` is the only errno
//! mapping.
//!
//! The replay of peers' changes on the mount, both halves (the daemon's
//! syscalls and the filesystem's answers), is in `core/replay/`; acting
//! beneath a directory without following symlinks is [`beneath`].
//!
//! **Invariant:** `fs` knows nothing of the network or the sync protocol; it
//! reports commits and changes as [`FsEvent`]s to whoever listens.
#![deny(missing_docs)]

pub mod beneath;
mod core;
mod error;
mod fuse;
pub mod mount;
pub mod view;

pub use crate::core::replay::{Replay, Replayer, Step};
pub use crate::core::{Caller, FsCore, FsEvent, FsStats, Listing, SetAttrRequest, TimeSet};
pub use error::{FsError, FsResult};
pub use fuse::PsyncFs;
