//! A file's history and deleted files, for `psync log` and `psync
//! restore`, read from the store (by the daemon while mounted, or by the
//! command itself).

use anyhow::{Context, Result};
use psync_store::{Store, StoreError, Timestamp};

use super::schema::VersionRow;

/// A file's versions, oldest first.
pub fn version_rows(store: &Store, path: &str) -> Result<Vec<VersionRow>> {
    let node = store.resolve(path.as_bytes()).with_context(|| format!("{path:?}"))?;
    Ok(store
        .versions(node.file_id)?
        .iter()
        .map(|v| VersionRow {
            version: v.seq,
            size: v.content.size,
            committed_at: v.committed_at.secs,
            path: String::from_utf8_lossy(&v.path).into_owned(),
            current: v.seq == node.committed_seq,
        })
        .collect())
}

/// Files deleted at or below `dir` (everything: `None`), each with its
/// last version, oldest first. A file replaced by another of the same name
/// is not listed (its name is there).
pub fn deleted_rows(store: &Store, dir: Option<&str>) -> Result<Vec<VersionRow>> {
    let dir = dir.map(|d| d.trim_matches('/')).filter(|d| !d.is_empty());
    let within = |path: &[u8]| match dir {
        None => true,
        Some(d) => path.starts_with(d.as_bytes()) && path.get(d.len()) == Some(&b'/'),
    };
    let mut rows = Vec::new();
    for v in store.deleted_files()? {
        if !within(&v.path) || store.resolve(&v.path).is_ok() {
            continue;
        }
        rows.push(VersionRow {
            version: v.seq,
            size: v.content.size,
            committed_at: v.committed_at.secs,
            path: String::from_utf8_lossy(&v.path).into_owned(),
            current: false,
        });
    }
    Ok(rows)
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The file's version now.
    pub version: u64,
    /// It was deleted and is back (with these folders made again).
    pub undeleted: Option<Vec<String>>,
}

/// Brings `path` back to `version` in one transaction: a new version with
/// the old content; a deleted file comes back at its path.
pub fn restore_version(store: &Store, path: &str, version: u64) -> Result<Restored> {
    let path = path.trim_matches('/');
    match store.resolve(path.as_bytes()) {
        Ok(node) => {
            let old =
                store.version(node.file_id, version).with_context(|| format!("no version {version} of {path:?}"))?;
            let now = store.restore(node.ino, old.seq, Timestamp::now())?;
            Ok(Restored { version: now.unwrap_or(node.committed_seq), undeleted: None })
        }
        Err(StoreError::NotFound) => {
            // The newest deleted file last seen at this path.
            let deleted = store.deleted_files()?;
            let file = deleted.iter().rev().find(|v| v.path == path.as_bytes()).with_context(|| {
                format!("{path:?} is neither here nor among the deleted files (psync log --deleted)")
            })?;
            store
                .version(file.file_id, version)
                .with_context(|| format!("no version {version} of the deleted {path:?}"))?;
            let back = store.undelete(file.file_id, version, path.as_bytes(), Timestamp::now())?;
            let made = back.made_dirs.iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect();
            Ok(Restored { version: back.seq, undeleted: Some(made) })
        }
        Err(e) => Err(e).with_context(|| format!("{path:?}")),
    }
}
