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
use psync_base::{check_syncable, codec, nfc_key, ContentHash, DeviceId, VersionVector, BLOCK_SIZE};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::keys;
use crate::records::*;
use crate::store::{NewNode, NodeAttrs, Store, Txn};

/// A path's entry in the sync index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PathEntry {
    pub vv: VersionVector,
    pub dot: (DeviceId, u64),
    pub deleted: bool,
    pub kind: NodeKind,
    /// Local sequence number of this entry (the `q` key).
    pub seq: u64,
    pub mtime: i64,
}

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

pub(crate) const TAG_PATH: u8 = b'x';
pub(crate) const TAG_PATH_SEQ: u8 = b'q';
pub(crate) const TAG_PEER: u8 = b'r';
pub(crate) const TAG_LOCAL_ONLY: u8 = b'n';

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

/// What [`Store::install_versions`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallResult {
    /// All of it, in one batch.
    Installed,
    /// Nothing: these files are open for writing or hold uncommitted writes.
    Busy(Vec<Vec<u8>>),
    /// Nothing: these paths changed since the caller decided.
    Moved(Vec<Vec<u8>>),
    /// Nothing: a path cannot take its version here now (the reason says
    /// why: local files that do not sync in the way).
    Blocked {
        /// The path.
        path: Vec<u8>,
        /// Why, for the user.
        reason: String,
    },
}

fn local_only_key(path: &[u8]) -> Vec<u8> {
    let mut key = vec![TAG_LOCAL_ONLY];
    key.extend_from_slice(&nfc_key(path));
    key
}

fn path_key(path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + path.len());
    key.push(TAG_PATH);
    key.extend_from_slice(path);
    key
}

pub(crate) fn seq_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = TAG_PATH_SEQ;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn peer_key(device: &DeviceId) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = TAG_PEER;
    key[1..].copy_from_slice(&device.0);
    key
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

impl Txn<'_> {
    fn path_entry(&self, path: &[u8]) -> Result<Option<PathEntry>> {
        if let Some(e) = self.paths.get(path) {
            return Ok(Some(e.clone()));
        }
        self.store.get_record(&path_key(path))
    }

    /// Writes `entry` for `path` under a new local sequence number.
    fn put_path_entry(&mut self, path: &[u8], mut entry: PathEntry) -> Result<()> {
        let meta = self.store.meta();
        if let Some(old) = self.path_entry(path)? {
            self.batch.delete_cf(meta, seq_key(old.seq));
        }
        entry.seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        self.batch.put_cf(meta, path_key(path), codec::encode(&entry)?);
        self.batch.put_cf(meta, seq_key(entry.seq), path);
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
        let meta = self.store.meta();
        let key = local_only_key(path);
        let noted = self.store.get_record::<LocalOnlyPath>(&key)?.is_some_and(|l| l.path == path);
        if gone && noted {
            self.batch.delete_cf(meta, key);
        } else if !gone && !noted {
            // Said once, when the path appears; not at every save.
            tracing::warn!("{} does not sync: {reason}", String::from_utf8_lossy(path));
            self.batch.put_cf(meta, key, codec::encode(&LocalOnlyPath { path: path.to_vec(), reason })?);
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
    fn shareable(node: &Inode) -> bool {
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

    /// Resolves a path to (parent inode, name, existing entry).
    fn locate(&mut self, path: &[u8]) -> Result<(u64, Vec<u8>, Option<DirEntry>)> {
        let mut parent = ROOT_INO;
        let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let (last, dirs) = parts.split_last().ok_or(StoreError::Invalid("empty path"))?;
        for part in dirs {
            let entry = self.dirent(parent, part)?.ok_or(StoreError::NotFound)?;
            if entry.kind != NodeKind::Dir {
                return Err(StoreError::NotDir);
            }
            parent = entry.ino;
        }
        let existing = self.dirent(parent, last)?;
        Ok((parent, last.to_vec(), existing))
    }

    /// Removes whatever is at `(parent, name)` (a directory must be empty:
    /// what is left in it here does not sync, and is never removed for a peer).
    fn remove_existing(&mut self, parent: u64, name: &[u8], entry: DirEntry, now: Timestamp) -> Result<()> {
        if entry.kind == NodeKind::Dir {
            let left = self.dir_names(entry.ino)?;
            if !left.is_empty() {
                let names: Vec<String> =
                    left.iter().take(5).map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect();
                let more = if left.len() > 5 { format!(" and {} more", left.len() - 5) } else { String::new() };
                return Err(StoreError::Blocked(format!(
                    "the folder still holds files that do not sync from here: {}{more}; they are kept, \
                     and the folder with them",
                    names.join(", ")
                )));
            }
            self.remove_link(parent, name, entry.ino, now)?;
            self.touch_dir(parent, now, -1)
        } else {
            self.remove_link(parent, name, entry.ino, now)?;
            self.touch_dir(parent, now, 0)
        }
    }

    /// Builds a content value from the hashes of its pages (pages and
    /// blocks must be stored, and fit the size).
    fn content_from_pages(&mut self, size: u64, pages: &[Option<ContentHash>]) -> Result<Content> {
        let blocks = size.div_ceil(BLOCK_SIZE);
        if pages.len() as u64 > blocks.div_ceil(BLOCKS_PER_PAGE) || pages.last() == Some(&None) {
            return Err(StoreError::Invalid("page list does not match the size"));
        }
        for (index, hash) in pages.iter().enumerate() {
            let Some(hash) = hash else { continue };
            let bytes = self
                .store
                .page_bytes(hash)?
                .ok_or_else(|| StoreError::Corrupt(format!("installing a version whose page {hash} is missing")))?;
            let entries = decode_page(&bytes).map_err(|e| StoreError::Corrupt(format!("page {hash}: {e}")))?;
            let in_page = blocks.saturating_sub(index as u64 * BLOCKS_PER_PAGE).min(BLOCKS_PER_PAGE);
            if entries.len() as u64 > in_page {
                return Err(StoreError::Invalid("a page lists blocks past the end of the file"));
            }
            for block in entries.iter().flatten() {
                if !self.store.has_block(block)? {
                    return Err(StoreError::Corrupt(format!("installing a version whose block {block} is missing")));
                }
            }
        }
        Ok(Content { size, pages: pages.to_vec() })
    }

    /// Builds a content value from a block list (blocks must be stored).
    fn content_from_blocks(&mut self, size: u64, blocks: &[Option<ContentHash>]) -> Result<Content> {
        if blocks.len() as u64 != size.div_ceil(BLOCK_SIZE) {
            return Err(StoreError::Invalid("block list does not match the size"));
        }
        let mut pages = Vec::new();
        for chunk in blocks.chunks(BLOCKS_PER_PAGE as usize) {
            let mut page = Page { blocks: chunk.to_vec() };
            while page.blocks.last() == Some(&None) {
                page.blocks.pop();
            }
            if page.blocks.is_empty() {
                pages.push(None);
                continue;
            }
            for hash in page.blocks.iter().flatten() {
                if !self.store.has_block(hash)? {
                    return Err(StoreError::Corrupt(format!("installing a version whose block {hash} is missing")));
                }
            }
            let bytes = codec::encode(&page)?;
            let hash = ContentHash::of(&bytes);
            self.batch.put_cf(self.store.meta(), keys::page(&hash), bytes);
            pages.push(Some(hash));
        }
        while pages.last() == Some(&None) {
            pages.pop();
        }
        Ok(Content { size, pages })
    }

    /// Whether the node at `path` is one peers know: a live index entry of
    /// its kind. Anything else there (a FIFO, a file never committed) is
    /// local and is never replaced or removed for a peer.
    fn known_to_peers(&self, path: &[u8], entry: &DirEntry) -> Result<bool> {
        if entry.kind.is_special() {
            return Ok(false);
        }
        Ok(self.path_entry(path)?.is_some_and(|e| !e.deleted && e.kind == entry.kind))
    }

    /// Applies a peer's version at its path (structure first, then the entry).
    fn install_version(&mut self, v: &PathVersion, now: Timestamp) -> Result<()> {
        if let Some(local) = self.store.get_record::<LocalOnlyPath>(&local_only_key(&v.path))? {
            return Err(StoreError::Blocked(format!(
                "a local file that does not sync has this name in another form ({}): {}",
                String::from_utf8_lossy(&local.path),
                local.reason
            )));
        }
        let (parent, name, existing) = match self.locate(&v.path) {
            Ok(found) => found,
            Err(StoreError::NotDir) => {
                return Err(StoreError::Blocked(
                    "a local file that does not sync stands where one of its folders should be".into(),
                ))
            }
            Err(e) => return Err(e),
        };
        let mtime = Timestamp { secs: v.mtime, nanos: 0 };
        if let Some(entry) = &existing {
            if !self.known_to_peers(&v.path, entry)? && !v.deleted {
                return Err(StoreError::Blocked(format!(
                    "a local {} that does not sync is in the way",
                    entry.kind.describe()
                )));
            }
        }
        if v.deleted {
            if let Some(entry) = existing {
                // Only what peers know is removed for them.
                if self.known_to_peers(&v.path, &entry)? {
                    self.remove_existing(parent, &name, entry, now)?;
                }
            }
        } else {
            // Replace a node of another kind.
            let existing = match existing {
                Some(e) if e.kind != v.kind => {
                    self.remove_existing(parent, &name, e, now)?;
                    None
                }
                other => other,
            };
            let attrs = NodeAttrs { perm: v.perm, uid: 0, gid: 0 };
            let mut node = match existing {
                Some(e) => self.inode(e.ino)?,
                None => {
                    let new = match v.kind {
                        NodeKind::Dir => NewNode::Dir,
                        NodeKind::Symlink => NewNode::Symlink(&v.symlink),
                        _ => NewNode::File,
                    };
                    // New nodes belong to the mount's owner: the parent's.
                    let dir = self.inode(parent)?;
                    self.create_node(parent, &name, new, NodeAttrs { uid: dir.uid, gid: dir.gid, ..attrs }, now)?
                }
            };
            node.perm = v.perm & 0o7777;
            node.mtime = mtime;
            node.ctime = now;
            node.vv = v.vv.clone();
            match v.kind {
                NodeKind::File => {
                    node.content = match &v.blocks {
                        BlockRefs::Blocks(list) => self.content_from_blocks(v.size, list)?,
                        BlockRefs::Pages(pages) => self.content_from_pages(v.size, pages)?,
                    };
                    node.dirty = false;
                    let seq = self.counters.next_seq;
                    self.counters.next_seq += 1;
                    let path = v.path.clone();
                    let version = FileVersion {
                        file_id: node.file_id,
                        seq,
                        vv: v.vv.clone(),
                        content: node.content.clone(),
                        mtime,
                        perm: node.perm,
                        path,
                        committed_at: now,
                    };
                    self.batch.put_cf(self.store.meta(), keys::version(node.file_id, seq), codec::encode(&version)?);
                    node.committed_seq = seq;
                }
                NodeKind::Symlink => node.symlink = v.symlink.clone(),
                _ => {}
            }
            self.put_inode(node);
        }
        let entry =
            PathEntry { vv: v.vv.clone(), dot: v.dot, deleted: v.deleted, kind: v.kind, seq: 0, mtime: v.mtime };
        self.put_path_entry(&v.path, entry)
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
        };
        if entry.deleted {
            return Ok(v);
        }
        let node = self.resolve(path)?;
        v.perm = node.perm;
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
        match self.get_record::<PathEntry>(&path_key(path))? {
            Some(entry) => Ok(Some(self.version_of(path, entry)?)),
            None => Ok(None),
        }
    }

    /// Sync-index versions changed after `since`, ascending, at most `limit`.
    pub fn path_versions_since(&self, since: u64, limit: usize) -> Result<Vec<(u64, PathVersion)>> {
        let mut out = Vec::new();
        let start = seq_key(since.saturating_add(1));
        let mut keys = Vec::new();
        self.for_each_from(&start, TAG_PATH_SEQ, |k, v| {
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
        self.for_each_prefix(&[TAG_PATH], |k, v| {
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
        let mut prefix = vec![TAG_PATH];
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

    /// Applies peers' versions in one atomic batch. Parents come before
    /// children; every referenced block and page is already stored.
    ///
    /// `decided_on`: the local version (its history; `None`: no entry) each
    /// path had when the caller decided to install. Nothing is installed if
    /// a file it would replace has local changes the store may not have yet
    /// (open for writing, or written and not committed), if a path changed
    /// since that decision (a writer's close committed in between), or if a
    /// path cannot take its version (local files that do not sync in the
    /// way): a peer's version never replaces them; decide again later.
    pub fn install_versions(
        &self,
        versions: &[PathVersion],
        decided_on: &[(Vec<u8>, Option<VersionVector>)],
        now: Timestamp,
    ) -> Result<InstallResult> {
        let mut blocked_at = Vec::new();
        let result = self.mutate(false, |txn| {
            // Under the writer lock: no commit can slip in after this check.
            let mut moved = Vec::new();
            for (path, vv) in decided_on {
                let current = txn.store.get_record::<PathEntry>(&path_key(path))?.map(|e| e.vv);
                if current.as_ref() != vv.as_ref() {
                    moved.push(path.clone());
                }
            }
            if !moved.is_empty() {
                return Ok(InstallResult::Moved(moved));
            }
            let mut busy = Vec::new();
            for v in versions {
                // A path under directories that do not exist yet holds no file.
                if let Ok((_, _, Some(entry))) = txn.locate(&v.path) {
                    if entry.kind == NodeKind::File && (txn.store.has_writer(entry.ino) || txn.inode(entry.ino)?.dirty)
                    {
                        busy.push(v.path.clone());
                    }
                }
            }
            if !busy.is_empty() {
                return Ok(InstallResult::Busy(busy));
            }
            txn.remote = true;
            for v in versions {
                if let Err(e) = txn.install_version(v, now) {
                    // The whole batch is dropped: nothing was written.
                    blocked_at = v.path.clone();
                    return Err(e);
                }
            }
            Ok(InstallResult::Installed)
        });
        match result {
            Err(StoreError::Blocked(reason)) => Ok(InstallResult::Blocked { path: blocked_at, reason }),
            other => other,
        }
    }

    /// Forgets deleted entries (every device has them).
    pub fn drop_deleted_paths(&self, paths: &[Vec<u8>]) -> Result<()> {
        self.mutate(false, |txn| {
            for path in paths {
                if let Some(entry) = txn.store.get_record::<PathEntry>(&path_key(path))? {
                    if entry.deleted {
                        txn.batch.delete_cf(txn.store.meta(), path_key(path));
                        txn.batch.delete_cf(txn.store.meta(), seq_key(entry.seq));
                    }
                }
            }
            Ok(())
        })
    }

    /// Live paths of the sync index whose bytes match `wanted` (read from
    /// the index alone: nothing is resolved or opened).
    pub fn live_paths_where(&self, wanted: impl Fn(&[u8]) -> bool) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.for_each_prefix(&[TAG_PATH], |k, v| {
            if wanted(&k[1..]) {
                let entry: PathEntry = codec::decode(v)?;
                if !entry.deleted {
                    out.push(k[1..].to_vec());
                }
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Local paths that do not sync, with why (at most `limit`).
    pub fn local_only_paths(&self, limit: usize) -> Result<Vec<LocalOnlyPath>> {
        let mut out = Vec::new();
        self.for_each_prefix(&[TAG_LOCAL_ONLY], |_, v| {
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
        self.with_writer_locked(|| self.db().put_cf(self.meta(), keys::page(hash), data).map_err(|e| self.rocks_err(e)))
    }

    /// Stores a block after checking it against its hash.
    pub fn put_verified_block(&self, hash: &ContentHash, data: &[u8]) -> Result<()> {
        if ContentHash::of(data) != *hash || data.len() as u64 > BLOCK_SIZE {
            return Err(StoreError::Corrupt(format!("block {hash} does not match its hash")));
        }
        self.db().put_cf(self.blocks_cf(), hash.as_bytes(), data).map_err(|e| self.rocks_err(e))
    }

    /// What we remember about a peer.
    pub fn peer_record(&self, device: &DeviceId) -> Result<PeerRecord> {
        Ok(self.get_record(&peer_key(device))?.unwrap_or_default())
    }

    /// Remembers it.
    pub fn set_peer_record(&self, device: &DeviceId, record: PeerRecord) -> Result<()> {
        let bytes = codec::encode(&record)?;
        self.db().put_cf(self.meta(), peer_key(device), bytes).map_err(|e| self.rocks_err(e))
    }
}

impl Txn<'_> {
    /// Format 2: paths that are not UTF-8 NFC text no longer sync (a name in
    /// NFD and the same name in NFC were two index entries but one path on
    /// the wire). Their index entries go; live ones are noted as local only.
    pub(crate) fn drop_unsyncable_index_entries(&mut self) -> Result<()> {
        let meta = self.store.meta();
        for (key, value) in self.store.scan_prefix(&[TAG_PATH])? {
            let path = &key[1..];
            let Err(why) = check_syncable(path) else { continue };
            let entry: PathEntry = codec::decode(&value)?;
            self.batch.delete_cf(meta, &key);
            self.batch.delete_cf(meta, seq_key(entry.seq));
            if !entry.deleted {
                let note = LocalOnlyPath { path: path.to_vec(), reason: why.to_string() };
                self.batch.put_cf(meta, local_only_key(path), codec::encode(&note)?);
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
