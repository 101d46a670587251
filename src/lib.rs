//! The `psync` daemon and its commands as a library: the WebRTC shell and
//! peering, the sync loop and its store adapter, the replay on the mount,
//! the control socket and `psync status`, configuration and identity. The
//! `psync` binary (`main.rs`) parses arguments and calls in here; tests of
//! the whole (the hostile member in `tests/e2e`) use the same pieces.

pub mod beneath;
pub mod config;
pub mod daemon;
pub mod daemon_log;
pub mod data_dir;
pub mod group;
pub mod peering;
pub mod replay;
pub mod status;
pub mod sync_daemon;
pub mod sync_loop;
pub mod sync_storage;
pub mod transport;
pub mod udp_runtime;
