//! The sync index: one entry per path, live or deleted, with its version
//! vector and the change ("dot") that made its content. Peers identify
//! files by path, so a rename is a delete at the old path and a new version
//! at the new one; a rename over a file gives the new version a history that
//! includes the replaced one. Every entry is written in the same batch as
//! the filesystem change it describes.
//!
//! The store keeps this index in its own terms ([`PathVersion`]); the daemon
//! converts to the sync protocol's records. The store knows nothing of the
//! protocol itself.

use psync_base::page::decode_page;
use psync_base::{check_syncable, codec, ContentHash, DeviceId, VersionVector, BLOCK_SIZE};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::keys;
use crate::named::NamedPaths;
use crate::records::*;
use crate::store::Store;
use crate::txn::Txn;

/// Which blocks a file version holds: listed, or as the store's pages of
/// block hashes (what [`Store::path_version`] gives: no page is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRefs {
    /// Every block hash (`None`: a hole).
    Blocks(Vec<Option<ContentHash>>),
    /// The hashes of the pages (`psync_base::page`), trailing holes trimmed.
    Pages(Vec<Option<ContentHash>>),
}

/// A path's current version as the sync layer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathVersion {
    /// `/`-separated path from the root.
    pub path: Vec<u8>,
    /// File, directory or symlink.
    pub kind: NodeKind,
    /// A deletion.
    pub deleted: bool,
    /// History.
    pub vv: VersionVector,
    /// The change that made this content: (device, counter).
    pub dot: (DeviceId, u64),
    /// Size (files).
    pub size: u64,
    /// Its blocks (files).
    pub blocks: BlockRefs,
    /// Target (symlinks).
    pub symlink: Vec<u8>,
    /// Permission bits.
    pub perm: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Extended attributes (`user.*`, sorted by name) of a live file or
    /// folder; `None` from a peer that keeps them local: leave ours.
    pub xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// What this device remembers about a peer (for the sync layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer's index identity.
    pub index_id: u64,
    /// Its sequence number applied here.
    pub applied: u64,
    /// Our sequence number it acknowledged.
    pub acked: u64,
}

/// A local path that does not sync, and why (kept for `psync status`, and
/// so a peer's path that only differs in its Unicode form never becomes a
/// second file beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalOnlyPath {
    /// The path as it is on this device.
    pub path: Vec<u8>,
    /// Why it does not sync.
    pub reason: String,
}

pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

impl Txn<'_> {
    pub(crate) fn path_entry(&self, path: &[u8]) -> Result<Option<PathEntry>> {
        if let Some(e) = self.paths.get(path) {
            return Ok(Some(e.clone()));
        }
        self.store.get_record(&keys::path(path))
    }

    /// Writes `entry` for `path` under a new local sequence number.
    pub(crate) fn put_path_entry(&mut self, path: &[u8], mut entry: PathEntry) -> Result<()> {
        if let Some(old) = self.path_entry(path)? {
            self.delete(&keys::path_seq(old.seq));
        }
        entry.seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        self.put_record(&keys::path(path), &entry)?;
        self.put_raw(&keys::path_seq(entry.seq), path);
        self.paths.insert(path.to_vec(), entry);
        Ok(())
    }

    /// A local change at `path`: a new version made by this device.
    pub(crate) fn path_changed(&mut self, path: &[u8], kind: NodeKind, deleted: bool, mtime: i64) -> Result<()> {
        if self.remote || path.is_empty() || kind.is_special() {
            return Ok(());
        }
        if let Err(why) = check_syncable(path) {
            return self.note_local_only(path, deleted, why.to_string());
        }
        let old = self.path_entry(path)?;
        if deleted && old.as_ref().is_none_or(|e| e.deleted) {
            // Never synced (or already deleted): nothing to tell peers.
            return Ok(());
        }
        let mut vv = old.map(|e| e.vv).unwrap_or_default();
        let counter = vv.advance(self.store.device(), self.counters.next_seq);
        let entry = PathEntry { vv, dot: (self.store.device(), counter), deleted, kind, seq: 0, mtime };
        self.put_path_entry(path, entry)
    }

    /// Remembers (or forgets, once gone) a local path that does not sync.
    fn note_local_only(&mut self, path: &[u8], gone: bool, reason: String) -> Result<()> {
        let key = keys::local_only(path);
        let noted = self.store.get_record::<LocalOnlyPath>(&key)?.is_some_and(|l| l.path == path);
        if gone && noted {
            self.delete(&key);
        } else if !gone && !noted {
            // Said once, when the path appears; not at every save.
            tracing::warn!("{} does not sync: {reason}", String::from_utf8_lossy(path));
            self.put_record(&key, &LocalOnlyPath { path: path.to_vec(), reason })?;
        }
        Ok(())
    }

    /// The path of the link `(parent, name)`.
    pub(crate) fn link_path(&mut self, parent: u64, name: &[u8]) -> Result<Vec<u8>> {
        let dir = self.inode(parent)?;
        let dir_path = self.path_of(&dir)?;
        Ok(join(&dir_path, name))
    }

    /// Whether `node`'s current state is something peers should see.
    pub(crate) fn shareable(node: &Inode) -> bool {
        match node.kind {
            NodeKind::File => node.committed_seq != 0,
            NodeKind::Dir | NodeKind::Symlink => true,
            _ => false,
        }
    }

    /// Every link of `node` has a new version (after a commit or a chmod).
    pub(crate) fn links_changed(&mut self, node: &Inode) -> Result<()> {
        if !Self::shareable(node) {
            return Ok(());
        }
        for link in node.links.clone() {
            let path = self.link_path(link.parent, &link.name)?;
            self.path_changed(&path, node.kind, false, node.mtime.secs)?;
        }
        Ok(())
    }

    /// `node` (and, for a directory, everything below it) moved from
    /// `old` to `new`: deletions at the old paths, new versions at the new.
    pub(crate) fn path_moved(&mut self, node: &Inode, old: &[u8], new: &[u8]) -> Result<()> {
        if self.remote {
            return Ok(());
        }
        let mut moves = vec![(old.to_vec(), new.to_vec(), node.clone())];
        if node.kind == NodeKind::Dir {
            let mut stack = vec![(node.ino, old.to_vec(), new.to_vec())];
            while let Some((dir, from, to)) = stack.pop() {
                for (name, entry) in self.dir_names(dir)? {
                    let child = self.inode(entry.ino)?;
                    let (f, t) = (join(&from, &name), join(&to, &name));
                    if child.kind == NodeKind::Dir {
                        stack.push((child.ino, f.clone(), t.clone()));
                    }
                    moves.push((f, t, child));
                }
            }
        }
        // Children's deletions before their directory's, new directories before children.
        for (from, _, child) in moves.iter().rev() {
            self.path_changed(from, child.kind, true, child.mtime.secs)?;
        }
        for (_, to, child) in &moves {
            if Self::shareable(child) {
                self.path_changed(to, child.kind, false, child.mtime.secs)?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// This index's identity for peers (random, fixed at creation).
    pub fn index_id(&self) -> u64 {
        self.format_index_id()
    }

    fn version_of(&self, path: &[u8], entry: PathEntry) -> Result<PathVersion> {
        let mut v = PathVersion {
            path: path.to_vec(),
            kind: entry.kind,
            deleted: entry.deleted,
            vv: entry.vv,
            dot: entry.dot,
            size: 0,
            blocks: BlockRefs::Blocks(Vec::new()),
            symlink: Vec::new(),
            perm: 0,
            mtime: entry.mtime,
            xattrs: None,
        };
        if entry.deleted {
            return Ok(v);
        }
        let node = self.resolve(path)?;
        v.perm = node.perm;
        if matches!(node.kind, NodeKind::File | NodeKind::Dir) {
            v.xattrs = Some(self.xattrs(node.ino)?);
        }
        match node.kind {
            NodeKind::File => {
                // Peers get the last committed content, never a half-written one.
                let content = if node.dirty && node.committed_seq != 0 {
                    self.version(node.file_id, node.committed_seq)?.content
                } else {
                    node.content.clone()
                };
                v.size = content.size;
                let mut pages = content.pages;
                while pages.last() == Some(&None) {
                    pages.pop();
                }
                v.blocks = BlockRefs::Pages(pages);
            }
            NodeKind::Symlink => v.symlink = node.symlink.clone(),
            _ => {}
        }
        Ok(v)
    }

    /// The sync-index version of `path`, live or deleted.
    pub fn path_version(&self, path: &[u8]) -> Result<Option<PathVersion>> {
        match self.get_record::<PathEntry>(&keys::path(path))? {
            Some(entry) => Ok(Some(self.version_of(path, entry)?)),
            None => Ok(None),
        }
    }

    /// Sync-index versions changed after `since`, ascending, at most `limit`.
    pub fn path_versions_since(&self, since: u64, limit: usize) -> Result<Vec<(u64, PathVersion)>> {
        let mut out = Vec::new();
        let start = keys::path_seq(since.saturating_add(1));
        let mut keys = Vec::new();
        self.for_each_from(&start, keys::TAG_PATH_SEQ, |k, v| {
            keys.push((keys::u64_at(k, 1).unwrap_or(0), v.to_vec()));
            Ok(keys.len() < limit)
        })?;
        for (seq, path) in keys {
            if let Some(v) = self.path_version(&path)? {
                out.push((seq, v));
            }
        }
        Ok(out)
    }

    /// Every entry of the sync index with its sequence number, by path.
    pub fn path_versions(&self, deleted: bool) -> Result<Vec<(u64, PathVersion)>> {
        let mut entries = Vec::new();
        self.for_each_prefix(&[keys::TAG_PATH], |k, v| {
            let entry: PathEntry = codec::decode(v)?;
            if entry.deleted == deleted {
                entries.push((k[1..].to_vec(), entry));
            }
            Ok(true)
        })?;
        entries.into_iter().map(|(path, e)| Ok((e.seq, self.version_of(&path, e)?))).collect()
    }

    /// Whether a live sync-index entry lies below `dir`.
    pub fn has_live_path_below(&self, dir: &[u8]) -> Result<bool> {
        let mut prefix = vec![keys::TAG_PATH];
        prefix.extend_from_slice(dir);
        prefix.push(b'/');
        let mut found = false;
        self.for_each_prefix(&prefix, |_, v| {
            let entry: PathEntry = codec::decode(v)?;
            found = !entry.deleted;
            Ok(!found)
        })?;
        Ok(found)
    }

    /// Forgets deleted entries (every device has them).
    pub fn drop_deleted_paths(&self, paths: &[Vec<u8>]) -> Result<()> {
        self.mutate(false, |txn| {
            for path in paths {
                if let Some(entry) = txn.store.get_record::<PathEntry>(&keys::path(path))? {
                    if entry.deleted {
                        txn.delete(&keys::path(path));
                        txn.delete(&keys::path_seq(entry.seq));
                    }
                }
            }
            Ok(())
        })
    }

    /// Live paths of the sync index whose last component holds `marker`
    /// (conflict copies), in path order. The first ask walks the index under
    /// the writer lock; after that every commit keeps the answer current, so
    /// `psync status` never walks the index.
    pub fn live_paths_named(&self, marker: &[u8]) -> Result<Vec<Vec<u8>>> {
        if let Some(named) = self.named_paths().as_ref().filter(|n| n.marker() == marker) {
            return Ok(named.paths().cloned().collect());
        }
        let _writer = self.lock_writer();
        let named = self.walk_live_paths_named(marker)?;
        let out = named.paths().cloned().collect();
        *self.named_paths() = Some(named);
        Ok(out)
    }

    /// [`Store::live_paths_named`] by a walk of the whole index, as a check
    /// of the kept answer; nothing is kept.
    pub fn live_paths_named_walked(&self, marker: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(self.walk_live_paths_named(marker)?.paths().cloned().collect())
    }

    fn walk_live_paths_named(&self, marker: &[u8]) -> Result<NamedPaths> {
        let mut named = NamedPaths::new(marker);
        self.for_each_prefix(&[keys::TAG_PATH], |k, v| {
            if named.matches(&k[1..]) {
                let entry: PathEntry = codec::decode(v)?;
                named.note(&k[1..], !entry.deleted);
            }
            Ok(true)
        })?;
        Ok(named)
    }

    /// Local paths that do not sync, with why (at most `limit`).
    pub fn local_only_paths(&self, limit: usize) -> Result<Vec<LocalOnlyPath>> {
        let mut out = Vec::new();
        self.for_each_prefix(&[keys::TAG_LOCAL_ONLY], |_, v| {
            out.push(codec::decode(v)?);
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// A page's bytes, if stored (not checked: the reader checks).
    pub fn page_bytes(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>> {
        self.db().get_cf(self.meta(), keys::page(hash)).map_err(|e| self.rocks_err(e))
    }

    /// Stores a page of block hashes after checking its hash and form.
    pub fn put_verified_page(&self, hash: &ContentHash, data: &[u8]) -> Result<()> {
        if ContentHash::of(data) != *hash || decode_page(data).is_err() {
            return Err(StoreError::Corrupt(format!("page {hash} does not match its hash or is not a page")));
        }
        self.mutate(false, |txn| {
            txn.put_page_bytes(hash, data);
            Ok(())
        })
    }

    /// Stores a block after checking it against its hash.
    pub fn put_verified_block(&self, hash: &ContentHash, data: &[u8]) -> Result<()> {
        if ContentHash::of(data) != *hash || data.len() as u64 > BLOCK_SIZE {
            return Err(StoreError::Corrupt(format!("block {hash} does not match its hash")));
        }
        self.mutate(false, |txn| {
            txn.put_block_bytes(hash, data);
            Ok(())
        })
    }

    /// What we remember about a peer.
    pub fn peer_record(&self, device: &DeviceId) -> Result<PeerRecord> {
        Ok(self.get_record(&keys::peer(device))?.unwrap_or_default())
    }

    /// Remembers it.
    pub fn set_peer_record(&self, device: &DeviceId, record: PeerRecord) -> Result<()> {
        self.mutate(false, |txn| txn.put_record(&keys::peer(device), &record))
    }
}

impl Txn<'_> {
    /// Format 2: paths that are not UTF-8 NFC text no longer sync (a name in
    /// NFD and the same name in NFC were two index entries but one path on
    /// the wire). Their index entries go; live ones are noted as local only.
    pub(crate) fn drop_unsyncable_index_entries(&mut self) -> Result<()> {
        for (key, value) in self.store.scan_prefix(&[keys::TAG_PATH])? {
            let path = &key[1..];
            let Err(why) = check_syncable(path) else { continue };
            let entry: PathEntry = codec::decode(&value)?;
            self.delete(&key);
            self.delete(&keys::path_seq(entry.seq));
            if !entry.deleted {
                let note = LocalOnlyPath { path: path.to_vec(), reason: why.to_string() };
                self.put_record(&keys::local_only(path), &note)?;
            }
        }
        Ok(())
    }

    /// Marks `node` at `path` and everything below it live (new versions).
    pub(crate) fn tree_live(&mut self, node: &Inode, path: &[u8]) -> Result<()> {
        let mut stack = vec![(node.clone(), path.to_vec())];
        while let Some((n, p)) = stack.pop() {
            if Self::shareable(&n) {
                self.path_changed(&p, n.kind, false, n.mtime.secs)?;
            }
            if n.kind == NodeKind::Dir {
                for (name, entry) in self.dir_names(n.ino)? {
                    stack.push((self.inode(entry.ino)?, join(&p, &name)));
                }
            }
        }
        Ok(())
    }
}
