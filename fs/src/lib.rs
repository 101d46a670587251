//! The FUSE filesystem over the store (see ARCHITECTURE.md).
//!
//! Not built yet: the FUSE issue fills this crate. It will own the `fuser`
//! `Filesystem` implementation, the inode/handle tables and the single
//! `StoreError` -> errno mapping.
