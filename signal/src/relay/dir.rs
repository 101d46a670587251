//! The relay's embedded store: a directory (`psync signal --relay DIR`).
//! One file per object, written to a temporary name, synced, then linked
//! into place, which fails if the name exists: an object is never
//! overwritten and never seen half written. Each group's ledger is
//! replaced atomically (write, sync, rename).
//!
//! Layout: `DIR/GROUP/objects/WRITER/SEQ` (hex ids, 20-digit numbers),
//! holding the writer's signature then the sealed bytes; `DIR/GROUP/ledger`.
//! Nothing in it names a file, a path or a plaintext hash.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use psync_base::{codec, ContentHash, DeviceId};

use super::policy::{GroupLedger, StoredObject};
use super::seal::ObjectName;
use super::wrap::SignedWrap;
use crate::identity::{PublicKey, SignatureBytes};

/// Signature bytes in front of each object file.
const SIGNATURE_BYTES: usize = 64;

/// One group's objects and ledger as found on disk.
pub type FoundGroup = (ContentHash, GroupLedger, Vec<(ObjectName, StoredObject)>);

/// A relay directory.
#[derive(Debug, Clone)]
pub struct RelayDir {
    root: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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

    fn object_path(&self, group: &ContentHash, name: &ObjectName) -> PathBuf {
        self.group_dir(group).join("objects").join(hex(&name.writer.0)).join(format!("{:020}", name.seq))
    }

    /// Stores an object unless its name exists; `Ok(false)`: it did.
    /// `now_ms` becomes its stored time (the file's mtime).
    pub fn put_new(
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

    /// An object's signature and sealed bytes, if stored.
    pub fn get(&self, group: &ContentHash, name: &ObjectName) -> io::Result<Option<(SignatureBytes, Vec<u8>)>> {
        let mut bytes = match fs::read(self.object_path(group, name)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if bytes.len() < SIGNATURE_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "relay object shorter than its signature"));
        }
        let sealed = bytes.split_off(SIGNATURE_BYTES);
        let mut signature = [0; SIGNATURE_BYTES];
        signature.copy_from_slice(&bytes);
        Ok(Some((SignatureBytes(signature), sealed)))
    }

    /// Deletes an object (gone already is fine).
    pub fn delete(&self, group: &ContentHash, name: &ObjectName) -> io::Result<()> {
        match fs::remove_file(self.object_path(group, name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Replaces a group's ledger atomically.
    pub fn save_ledger(&self, group: &ContentHash, ledger: &GroupLedger) -> io::Result<()> {
        let dir = self.group_dir(group);
        fs::create_dir_all(&dir)?;
        let bytes = codec::encode(ledger).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let tmp = dir.join(format!(".ledger.{}", rand::random::<u64>()));
        let written = (|| {
            let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, dir.join("ledger"))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fs::File::open(&dir)?.sync_all()
    }

    fn wraps_dir(&self, group: &ContentHash, to: &PublicKey) -> PathBuf {
        self.group_dir(group).join("wraps").join(hex(&to.0))
    }

    /// Keeps a key wrap (replacing one of the same epoch and maker), and
    /// only the newest `keep` per recipient.
    pub fn put_wrap(&self, group: &ContentHash, wrap: &SignedWrap, keep: usize) -> io::Result<()> {
        let dir = self.wraps_dir(group, &wrap.wrap.to);
        fs::create_dir_all(&dir)?;
        let bytes = codec::encode(wrap).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let name = format!("{:010}-{}", wrap.wrap.epoch, hex(&wrap.by.0));
        let tmp = dir.join(format!(".{name}.{}", rand::random::<u64>()));
        let written = (|| {
            let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, dir.join(&name))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
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

    /// The key wraps kept for `to`, oldest epoch first.
    pub fn wraps(&self, group: &ContentHash, to: &PublicKey) -> io::Result<Vec<SignedWrap>> {
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

    /// Every group's ledger and objects, to rebuild the index at start.
    /// Leftover temporary files (a crash mid-write) are removed.
    pub fn load(&self) -> io::Result<Vec<FoundGroup>> {
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
