//! What every end-to-end test uses: running `psync`, and waiting for a
//! condition with a deadline (never a fixed sleep: the tests must hold on a
//! slow, loaded machine).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a test waits for something that takes a fraction of a second on
/// an idle machine: generous, because CI machines are slow and loaded.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// The `psync` binary, pinned to loopback: the daemons it starts bind
/// 127.0.0.1 only (by default they would bind every interface, and a test
/// never sends a packet off this machine).
pub fn psync_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_psync"));
    command.env("PSYNC_ICE_BIND", "loopback");
    command
}

/// Runs `psync --data-dir DATA ARGS...` and returns what it did.
pub fn psync(data: &Path, args: &[&str]) -> Output {
    psync_command().arg("--data-dir").arg(data).args(args).env("RUST_LOG", "info").output().expect("run psync")
}

/// `psync ... --json`'s output, parsed.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// Waits until `check` holds; fails with `what` after `timeout` (`what` is
/// only formatted then: with [`lazy`] it can show the state at that moment).
pub fn eventually(timeout: Duration, what: impl std::fmt::Display, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// A message made when shown: `lazy(|| format!("..., got {:?}", now()))`.
pub fn lazy<F: Fn() -> String>(make: F) -> Lazy<F> {
    Lazy(make)
}

/// See [`lazy`].
pub struct Lazy<F>(F);

impl<F: Fn() -> String> std::fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// Prints the daemon logs of these data dirs if the test fails while it
/// lives (what the daemons said is the first thing to read).
pub struct LogsOnFailure(pub Vec<PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for dir in &self.0 {
                let log = std::fs::read_to_string(dir.join("psync.log")).unwrap_or_default();
                eprintln!("--- {}/psync.log\n{log}", dir.display());
            }
        }
    }
}
