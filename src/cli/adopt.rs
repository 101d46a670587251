//! `psync mount DIR --adopt`: an existing folder (an Obsidian vault) becomes
//! a PSync mount at the same path, which is how Obsidian knows the vault.
//! Its files go into the store with their modification times and modes,
//! the original folder is kept beside it (`DIR.before-psync`) until the
//! user deletes it, and the mount takes the path. If the mount fails, the
//! original goes back where it was.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A folder taken in, waiting for its mount.
#[derive(Debug)]
pub struct Adopted {
    /// Where the folder was, now an empty directory to mount on.
    pub folder: PathBuf,
    /// Where the original is kept.
    pub kept: PathBuf,
    /// Files brought in.
    pub files: u64,
}

/// The first free `FOLDER.before-psync[-N]` beside `folder`.
fn aside(folder: &Path) -> Result<PathBuf> {
    let name = folder.file_name().context("the folder has no name")?.to_string_lossy().into_owned();
    for n in 1..1000 {
        let candidate = folder.with_file_name(if n == 1 {
            format!("{name}.before-psync")
        } else {
            format!("{name}.before-psync-{n}")
        });
        if std::fs::symlink_metadata(&candidate).is_err() {
            return Ok(candidate);
        }
    }
    bail!("no free name beside {} to keep the original in", folder.display())
}

/// Imports `folder` into the data dir's (empty) store and moves it aside,
/// leaving an empty directory of the same mode at its path.
pub fn prepare(data_dir: &Path, folder: &Path) -> Result<Adopted> {
    let meta = std::fs::symlink_metadata(folder).with_context(|| format!("cannot adopt {}", folder.display()))?;
    if !meta.is_dir() {
        bail!("cannot adopt {}: not a directory", folder.display());
    }
    let parent = folder.parent().context("cannot adopt the root directory")?;
    if std::fs::metadata(parent)?.dev() != meta.dev() {
        bail!("cannot adopt {}: it is a mount point (unmount it first)", folder.display());
    }
    let folder = folder.canonicalize()?;
    if data_dir.canonicalize().is_ok_and(|d| d.starts_with(&folder)) {
        bail!("cannot adopt {}: the data dir is inside it", folder.display());
    }
    let count = super::store::import_into(data_dir, &folder, true)?;
    let kept = aside(&folder)?;
    std::fs::rename(&folder, &kept)
        .with_context(|| format!("cannot move {} aside to {}", folder.display(), kept.display()))?;
    let made = std::fs::DirBuilder::new().mode(meta.permissions().mode() & 0o7777).create(&folder);
    if let Err(e) = made {
        let _ = std::fs::rename(&kept, &folder);
        return Err(e).with_context(|| format!("cannot make the mount point {}", folder.display()));
    }
    Ok(Adopted { folder, kept, files: count.files })
}

/// The mount failed: the original goes back to its path.
pub fn undo(adopted: &Adopted) {
    if std::fs::remove_dir(&adopted.folder).is_ok() {
        let _ = std::fs::rename(&adopted.kept, &adopted.folder);
    }
}
