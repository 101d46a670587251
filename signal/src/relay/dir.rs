//! The relay's embedded store: a directory (`psync signal --relay DIR`).
//! One file per object, written to a temporary name, synced, then linked
//! into place, which fails if the name exists: an object is never
//! overwritten and never seen half written. Each group's ledger is
//! replaced atomically (write, sync, rename).
//!
//! Layout: see [`super::store`].

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use psync_base::{codec, ContentHash, DeviceId};

use super::policy::{GroupLedger, StoredObject};
use super::seal::ObjectName;
use super::store::{hex, object_key, split_object, unhex32, wrap_key, FoundGroup, RelayStore, SIGNATURE_BYTES};
use super::wrap::SignedWrap;
use crate::identity::{PublicKey, SignatureBytes};

/// A relay directory.
#[derive(Debug, Clone)]
pub struct RelayDir {
    root: PathBuf,
}

/// Writes `bytes` as `path` (its directory made if missing): a temporary
/// file, synced, renamed over it, the directory synced; a crash leaves the
/// old file or the new one (and at worst a dot-file nothing reads).
fn replace_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    let name = path.file_name().ok_or_else(|| io::Error::other("no file name"))?.to_string_lossy();
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}", rand::random::<u64>()));
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(dir)?.sync_all()
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl RelayDir {
    /// Opens (creating) the relay directory, private to its owner.
    pub fn open(root: &Path) -> io::Result<RelayDir> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root)?;
        Ok(RelayDir { root: root.to_path_buf() })
    }

    fn group_dir(&self, group: &ContentHash) -> PathBuf {
        self.root.join(hex(&group.0))
    }

    fn wraps_dir(&self, group: &ContentHash, to: &PublicKey) -> PathBuf {
        self.group_dir(group).join("wraps").join(hex(&to.0))
    }

    fn object_path(&self, group: &ContentHash, name: &ObjectName) -> PathBuf {
        self.group_dir(group).join(object_key(name))
    }
}

impl RelayStore for RelayDir {
    fn put_new(
        &self,
        group: &ContentHash,
        name: &ObjectName,
        signature: &SignatureBytes,
        sealed: &[u8],
        now_ms: u64,
    ) -> io::Result<bool> {
        let path = self.object_path(group, name);
        let dir = path.parent().ok_or_else(|| io::Error::other("object path has no parent"))?;
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{:020}.{}", name.seq, rand::random::<u64>()));
        let written = (|| {
            let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(&signature.0)?;
            file.write_all(sealed)?;
            file.set_modified(UNIX_EPOCH + Duration::from_millis(now_ms))?;
            file.sync_all()
        })();
        let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fs::File::open(dir)?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn get(&self, group: &ContentHash, name: &ObjectName) -> io::Result<Option<(SignatureBytes, Vec<u8>)>> {
        match fs::read(self.object_path(group, name)) {
            Ok(bytes) => split_object(bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, group: &ContentHash, name: &ObjectName) -> io::Result<()> {
        match fs::remove_file(self.object_path(group, name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn save_ledger(&self, group: &ContentHash, ledger: &GroupLedger) -> io::Result<()> {
        let bytes = codec::encode(ledger).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        replace_atomically(&self.group_dir(group).join("ledger"), &bytes)
    }

    fn put_wrap(&self, group: &ContentHash, wrap: &SignedWrap, keep: usize) -> io::Result<()> {
        let bytes = codec::encode(wrap).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        replace_atomically(&self.group_dir(group).join(wrap_key(wrap)), &bytes)?;
        let dir = self.wraps_dir(group, &wrap.wrap.to);
        let mut names: Vec<String> = fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let excess = names.len().saturating_sub(keep);
        for old in &names[..excess] {
            let _ = fs::remove_file(dir.join(old));
        }
        Ok(())
    }

    fn wraps(&self, group: &ContentHash, to: &PublicKey) -> io::Result<Vec<SignedWrap>> {
        let dir = self.wraps_dir(group, to);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.')))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for path in names {
            // A damaged file is skipped: the member asks a peer instead.
            if let Ok(wrap) = codec::decode::<SignedWrap>(&fs::read(&path)?) {
                out.push(wrap);
            }
        }
        Ok(out)
    }

    /// Leftover temporary files (a crash mid-write) are removed.
    fn load(&self) -> io::Result<Vec<FoundGroup>> {
        let mut groups = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let Some(group) = entry.file_name().to_str().and_then(unhex32).map(ContentHash) else { continue };
            let dir = entry.path();
            let ledger = match fs::read(dir.join("ledger")) {
                Ok(bytes) => codec::decode(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", dir.display())))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => GroupLedger::default(),
                Err(e) => return Err(e),
            };
            let mut objects = Vec::new();
            let objects_dir = dir.join("objects");
            if objects_dir.is_dir() {
                for writer in fs::read_dir(&objects_dir)? {
                    let writer = writer?;
                    let Some(id) = writer.file_name().to_str().and_then(unhex32).map(DeviceId) else { continue };
                    for object in fs::read_dir(writer.path())? {
                        let object = object?;
                        let file_name = object.file_name();
                        let Some(text) = file_name.to_str() else { continue };
                        if text.starts_with('.') {
                            let _ = fs::remove_file(object.path());
                            continue;
                        }
                        let Ok(seq) = text.parse::<u64>() else { continue };
                        let meta = object.metadata()?;
                        let stored = StoredObject {
                            bytes: meta.len().saturating_sub(SIGNATURE_BYTES as u64),
                            stored_at: meta.modified().map(millis).unwrap_or(0),
                        };
                        objects.push((ObjectName { writer: id, seq }, stored));
                    }
                }
            }
            groups.push((group, ledger, objects));
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_never_overwritten_and_survive_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RelayDir::open(tmp.path()).unwrap();
        let group = ContentHash([1; 32]);
        let name = ObjectName { writer: DeviceId([2; 32]), seq: 1 };
        let sig = SignatureBytes([9; 64]);
        assert!(dir.put_new(&group, &name, &sig, b"sealed", 5_000).unwrap());
        assert!(!dir.put_new(&group, &name, &sig, b"other", 6_000).unwrap(), "the name is taken");
        assert_eq!(dir.get(&group, &name).unwrap(), Some((sig, b"sealed".to_vec())));
        let mut ledger = GroupLedger::default();
        ledger.last_seq.insert(name.writer, 1);
        dir.save_ledger(&group, &ledger).unwrap();
        // A crash mid-write leaves a temporary file: cleared at start.
        let leftover =
            tmp.path().join(hex(&group.0)).join("objects").join(hex(&name.writer.0)).join(".00000000000000000002.7");
        fs::write(&leftover, b"half").unwrap();
        let found = RelayDir::open(tmp.path()).unwrap().load().unwrap();
        assert_eq!(found.len(), 1);
        let (g, l, objects) = &found[0];
        assert_eq!((g, l), (&group, &ledger));
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].0, name);
        assert_eq!(objects[0].1, StoredObject { bytes: 6, stored_at: 5_000 });
        assert!(!leftover.exists());
        dir.delete(&group, &name).unwrap();
        dir.delete(&group, &name).unwrap();
        assert_eq!(dir.get(&group, &name).unwrap(), None);
    }
}
