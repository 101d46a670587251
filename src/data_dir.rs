//! The data dir: where one device keeps its store, identity, logs and
//! control socket. It is private to its owner.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

// Every file of a data dir, named here (the store's `db/` is psync-store's).

/// This device's signing key.
pub const KEY_FILE: &str = "device.key";
/// Name, signalling server and group of this device.
pub const IDENTITY_FILE: &str = "identity.json";
/// The group's content key (sealing what the relay keeps), mode 0600.
pub const GROUP_KEY_FILE: &str = "group.key";
/// The local copy of the group's signed roster.
pub const ROSTER_FILE: &str = "roster.bin";
/// The optional config file.
pub const CONFIG_FILE: &str = "config.toml";
/// The running daemon's pid and mount point.
pub const DAEMON_FILE: &str = "daemon.json";
/// The daemon's log (rotated to `psync.log.1`).
pub const LOG_FILE: &str = "psync.log";
/// The control socket `psync status` asks.
pub const SOCKET_FILE: &str = "control.sock";
/// A signalling server's own state (`psync signal`).
pub const SIGNAL_DIR: &str = "signal";
/// The store (RocksDB).
pub const STORE_DIR: &str = psync_store::DB_DIR_NAME;

/// Permissions of a data dir: its owner only.
pub const MODE: u32 = 0o700;

/// Replaces `path` with `bytes` as one step: written beside it and renamed
/// over it, so a crash leaves the old file or the new one, never half.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().context("no file name")?.to_os_string();
    name.push(".new");
    let temporary = path.with_file_name(name);
    std::fs::write(&temporary, bytes).with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Creates `dir` (and its parents) if needed and makes it private to its
/// owner: nobody else may list it or read the store, keys and logs in it.
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if meta.permissions().mode() & 0o777 != MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(MODE))
            .with_context(|| format!("cannot make data dir {} private (mode 700)", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dirs_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, MODE);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, MODE, "tightened");
    }
}
