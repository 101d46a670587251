//! The user's synced folders, as the TUI lists them: each one device of
//! one group, with its own data dir and mount point, kept in
//! `$XDG_CONFIG_HOME/psync/folders.toml` (`~/.config/psync/folders.toml`).
//!
//! ```toml
//! [[folder]]
//! name = "PSync"
//! data_dir = "/home/me/.local/share/psync"
//! mountpoint = "/home/me/PSync"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The list file's name.
pub const FOLDERS_FILE: &str = "folders.toml";
/// Folders a list may hold (count): each is a daemon and a status poll.
pub const MAX_FOLDERS: usize = 16;
/// The largest list file read (bytes).
const MAX_FOLDERS_FILE_BYTES: u64 = 64 << 10;

/// One synced folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folder {
    /// What the TUI calls it.
    pub name: String,
    /// Its device's data dir.
    pub data_dir: PathBuf,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FolderFile {
    #[serde(default, rename = "folder")]
    folders: Vec<Folder>,
}

/// Where the list lives.
pub fn list_file() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            PathBuf::from(std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?).join(".config")
        }
    };
    Ok(base.join("psync").join(FOLDERS_FILE))
}

/// The folders listed in `file` (none if it does not exist).
pub fn load(file: &Path) -> Result<Vec<Folder>> {
    let text = match std::fs::metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        Ok(meta) if meta.len() > MAX_FOLDERS_FILE_BYTES => {
            anyhow::bail!("{} is larger than {} KiB", file.display(), MAX_FOLDERS_FILE_BYTES >> 10)
        }
        Ok(_) => std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?,
    };
    let parsed: FolderFile = toml::from_str(&text).with_context(|| format!("folder list {}", file.display()))?;
    let mut folders = parsed.folders;
    folders.truncate(MAX_FOLDERS);
    Ok(folders)
}

/// Writes the list (atomically: a temporary file renamed over it).
pub fn save(file: &Path, folders: &[Folder]) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(&FolderFile { folders: folders.to_vec() }).context("cannot write the folder list")?;
    crate::data_dir::replace_file(file, text.as_bytes())
}

/// A data dir for a further folder named `name`, beside the first one.
pub fn data_dir_for(first: &Path, name: &str) -> PathBuf {
    let slug: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    let base = first.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "psync".into());
    first.with_file_name(format!("{base}-{slug}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_round_trips_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("psync").join(FOLDERS_FILE);
        assert!(load(&file).unwrap().is_empty());
        let folders = vec![
            Folder { name: "PSync".into(), data_dir: "/d/psync".into(), mountpoint: "/h/PSync".into() },
            Folder { name: "work notes".into(), data_dir: "/d/psync-work".into(), mountpoint: "/h/Work".into() },
        ];
        save(&file, &folders).unwrap();
        assert_eq!(load(&file).unwrap(), folders);
        std::fs::write(&file, "[[folder]]\nname = 3\n").unwrap();
        assert!(format!("{:#}", load(&file).unwrap_err()).contains("folder list"));
        assert_eq!(data_dir_for(Path::new("/d/psync"), "work notes"), PathBuf::from("/d/psync-work-notes"));
    }
}
