//! The sync driver: the tokio loop around the sans-I/O [`psync_sync::SyncCore`]
//! (links and timers in, frames and installs out), what the rest of the
//! daemon tells it, and the adapter that lets the core use the store.

pub mod inbox;
pub mod storage;
pub mod sync_loop;
