//! End-to-end tests of the `psync` binary: real processes, real stores.
//! One integration-test binary for the root package (it needs
//! `CARGO_BIN_EXE_psync`); helpers come from the `psync-tests` crate.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod conformance;
mod delay_line;
mod demo;
mod group;
mod history;
mod hostile;
mod mount;
mod networks;
mod relay;
mod safety;
mod support;
mod three;
mod tui;
mod vault;
