//! The `psync` daemon and its commands as a library. The `psync` binary
//! (`main.rs`) only sets up logging and calls [`cli::run`]; tests of the
//! whole (the hostile member in `tests/e2e`) use the same pieces.
//!
//! Layers, each using only those below it (a test checks there are no
//! module cycles):
//! - [`cli`]: the commands;
//! - [`daemon`]: the mount daemon, wiring everything below;
//! - [`control`]: the control socket (`psync status`, `psync revert`);
//! - [`relay`]: leaving changes at the relay for offline members, taking theirs;
//! - [`peering`]: signalling, roster checks, dialling peers;
//! - [`driver`]: the sync loop around the sans-I/O core, and its store adapter;
//! - [`net`]: WebRTC links and their framing;
//! - [`live`], [`identity`], [`config`], [`config_edit`], [`data_dir`], [`clock`]: shared state,
//!   this device's files and settings, time.

pub mod cli;
pub mod clock;
pub mod config;
pub mod config_edit;
pub mod control;
pub mod daemon;
pub mod data_dir;
pub mod driver;
pub mod identity;
pub mod live;
pub mod net;
pub mod peering;
pub mod relay;
