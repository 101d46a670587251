//! The PSync filesystem: POSIX semantics over the store ([`FsCore`]), the
//! `fuser` adapter ([`PsyncFs`]) and mounting ([`mount`]).
//!
//! **Invariant:** FUSE callbacks hold no logic: decode, call one `FsCore`
//! method, reply. `FsError::errno` is the only errno mapping.
//!
//! **Invariant:** `fs` knows nothing of the network or the sync protocol; it
//! reports commits and changes as [`FsEvent`]s to whoever listens.
#![deny(missing_docs)]

mod core;
mod error;
mod fuse;
pub mod mount;

pub use crate::core::{Caller, FsCore, FsEvent, FsStats, Listing, Replay, SetAttrRequest, TimeSet};
pub use error::{FsError, FsResult};
pub use fuse::PsyncFs;
