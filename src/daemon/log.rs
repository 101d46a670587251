//! The detached daemon's log (`DATA_DIR/psync.log`, its standard error)
//! stays bounded: once it passes [`MAX_LOG_BYTES`] it is renamed to
//! `psync.log.1` (replacing an older one) and a fresh file takes its place
//! as standard error, so at most twice that is kept.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

/// Size of the log past which it is rotated.
pub const MAX_LOG_BYTES: u64 = 16 << 20;
/// How often its size is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Watches the log at `path` (this process's standard error) from a
/// thread of its own, rotating it when it grows past [`MAX_LOG_BYTES`].
pub fn keep_bounded(path: PathBuf) {
    let spawned = std::thread::Builder::new().name("psync-log".into()).spawn(move || loop {
        std::thread::sleep(CHECK_EVERY);
        if let Err(e) = rotate_if_large(&path, MAX_LOG_BYTES) {
            tracing::warn!("cannot rotate the log {}: {e}", path.display());
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch the log's size: {e}");
    }
}

/// Rotates the log at `path` if standard error (which writes it) is past `max` bytes.
pub fn rotate_if_large(path: &std::path::Path, max: u64) -> std::io::Result<bool> {
    let size = nix::sys::stat::fstat(std::io::stderr().as_fd()).map_err(std::io::Error::from)?.st_size as u64;
    if size <= max {
        return Ok(false);
    }
    let old = path.with_extension("log.1");
    std::fs::rename(path, &old)?;
    let fresh = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    nix::unistd::dup2_stderr(&fresh).map_err(std::io::Error::from)?;
    tracing::info!("log rotated: the previous part is {}", old.display());
    Ok(true)
}
