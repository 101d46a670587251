//! The past: deleted files (their history outlives them until pruned, so
//! they can be listed and brought back) and the tree as it was at a point
//! in time.

use std::collections::{HashMap, HashSet};

use psync_base::codec;

use crate::error::{Result, StoreError};
use crate::keys;
use crate::nodes::{NewNode, NodeAttrs};
use crate::records::*;
use crate::store::Store;

/// A file brought back by [`Store::undelete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undeleted {
    /// Its inode now.
    pub ino: u64,
    /// Its new version (sequence number).
    pub seq: u64,
    /// Folders made again on the way (paths, outermost first).
    pub made_dirs: Vec<Vec<u8>>,
}

impl Store {
    /// The last version of every file no inode holds any more (deleted, or
    /// replaced by another file of the same name), oldest first.
    pub fn deleted_files(&self) -> Result<Vec<FileVersion>> {
        let mut live: HashSet<FileId> = HashSet::new();
        self.for_each_prefix(&[keys::TAG_INODE], |_, v| {
            let node: Inode = codec::decode(v)?;
            live.insert(node.file_id);
            Ok(true)
        })?;
        let mut last: HashMap<FileId, FileVersion> = HashMap::new();
        self.for_each_prefix(&[keys::TAG_VERSION], |_, v| {
            let version: FileVersion = codec::decode(v)?;
            if !live.contains(&version.file_id) {
                // Keys are ordered by (file, sequence): the last one wins.
                last.insert(version.file_id, version);
            }
            Ok(true)
        })?;
        let mut out: Vec<FileVersion> = last.into_values().collect();
        out.sort_by_key(|v| v.seq);
        Ok(out)
    }

    /// Every version of the file now at `path` and of the files that stood
    /// there before it and were replaced (an editor that saves by writing a
    /// new file and renaming it over the old one starts a new file each
    /// time), ordered by sequence number. Scans the history of deleted
    /// files: for the rare case of a merge, not for every request.
    pub fn versions_at_path(&self, path: &[u8]) -> Result<Vec<FileVersion>> {
        let mut out = Vec::new();
        for gone in self.deleted_files()? {
            if gone.path == path {
                out.extend(self.versions(gone.file_id)?);
            }
        }
        match self.resolve(path) {
            Ok(node) if node.kind == NodeKind::File => out.extend(self.versions(node.file_id)?),
            Ok(_) | Err(StoreError::NotFound) | Err(StoreError::NotDir) => {}
            Err(e) => return Err(e),
        }
        out.sort_by_key(|v| v.seq);
        Ok(out)
    }

    /// The files as they were at `secs` (seconds since the epoch): of each
    /// file, the newest version committed by then, unless it was gone by
    /// then, at the path it was saved under; one per path (the newest).
    /// Sorted by path. What was pruned from history is not there.
    pub fn tree_at(&self, secs: i64) -> Result<Vec<FileVersion>> {
        let mut gone: HashMap<FileId, i64> = HashMap::new();
        self.for_each_prefix(&[keys::TAG_GONE], |k, v| {
            if let Some(id) = keys::gone_file(k) {
                let at: Timestamp = codec::decode(v)?;
                gone.insert(id, at.secs);
            }
            Ok(true)
        })?;
        let mut at: HashMap<FileId, FileVersion> = HashMap::new();
        self.for_each_prefix(&[keys::TAG_VERSION], |_, v| {
            let version: FileVersion = codec::decode(v)?;
            if version.committed_at.secs <= secs && gone.get(&version.file_id).is_none_or(|g| *g > secs) {
                at.insert(version.file_id, version);
            }
            Ok(true)
        })?;
        let mut by_path: HashMap<Vec<u8>, FileVersion> = HashMap::new();
        for version in at.into_values() {
            match by_path.get(&version.path) {
                Some(other) if (other.committed_at, other.seq) >= (version.committed_at, version.seq) => {}
                _ => {
                    by_path.insert(version.path.clone(), version);
                }
            }
        }
        let mut out: Vec<FileVersion> = by_path.into_values().collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Brings back version `seq` of the deleted file `file_id` at `path`, in
    /// one transaction: its folders are made again if they are gone, and
    /// the file continues its history (a new version, synced like any
    /// change). Refused if something is at `path`, or the file is not deleted.
    pub fn undelete(&self, file_id: FileId, seq: u64, path: &[u8], now: Timestamp) -> Result<Undeleted> {
        if !self.deleted_files()?.iter().any(|v| v.file_id == file_id) {
            return Err(StoreError::Exists);
        }
        self.mutate(true, |txn| {
            let old = txn.store.version(file_id, seq)?;
            let parts: Vec<&[u8]> = path.split(|b| *b == b'/').filter(|p| !p.is_empty()).collect();
            let (name, dirs) = parts.split_last().ok_or(StoreError::NotFound)?;
            let mut parent = ROOT_INO;
            let mut made_dirs = Vec::new();
            for (depth, dir) in dirs.iter().enumerate() {
                parent = match txn.dirent(parent, dir)? {
                    Some(entry) if entry.kind == NodeKind::Dir => entry.ino,
                    Some(_) => return Err(StoreError::NotDir),
                    None => {
                        let up = txn.inode(parent)?;
                        let attrs = NodeAttrs { perm: 0o755, uid: up.uid, gid: up.gid };
                        made_dirs.push(dirs[..=depth].join(&b'/'));
                        txn.create_node(parent, dir, NewNode::Dir, attrs, now)?.ino
                    }
                };
            }
            if txn.dirent(parent, name)?.is_some() {
                return Err(StoreError::Exists);
            }
            let up = txn.inode(parent)?;
            let attrs = NodeAttrs { perm: old.perm, uid: up.uid, gid: up.gid };
            let mut node = txn.create_node(parent, name, NewNode::File, attrs, now)?;
            node.file_id = file_id;
            txn.delete_gone(file_id);
            node.content = old.content;
            node.mtime = now;
            node.ctime = now;
            node.dirty = true;
            let ino = node.ino;
            let seq = txn.commit_node(node, now)?.ok_or(StoreError::Invalid("nothing to bring back"))?;
            Ok(Undeleted { ino, seq, made_dirs })
        })
    }
}
