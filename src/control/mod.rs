//! The control socket in the data dir (owner only): `psync status` and
//! `psync revert` ask the running daemon through it.

pub mod client;
pub mod history;
pub mod report;
pub mod schema;
pub mod server;
