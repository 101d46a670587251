//! [`Txn`]: the only writer. Every mutation runs as one `Txn` under the
//! writer lock and lands as one RocksDB `WriteBatch`; later steps of the
//! same operation read its own writes.

use std::collections::HashMap;

use psync_base::{codec, ContentHash};
use rocksdb::{WriteBatch, WriteOptions};

use crate::counts::{Counted, TreeChange};
use crate::error::{Result, StoreError};
use crate::keys;
use crate::records::*;
use crate::store::Store;

/// Pending writes of one operation plus the inodes it has touched, so that
/// later steps of the same operation read their own writes.
pub(crate) struct Txn<'s> {
    pub(crate) store: &'s Store,
    batch: WriteBatch,
    inodes: HashMap<u64, Option<Inode>>,
    pub(crate) counters: Counters,
    /// The counters as persisted: written back only if they moved.
    counters_before: Counters,
    /// Applying a peer's version: the sync-index entry comes from the peer,
    /// so the local-change hooks stay quiet.
    pub(crate) remote: bool,
    /// Blocks put in this batch (dedup within the batch).
    new_blocks: Vec<ContentHash>,
    /// Directory entries written by this operation (`None`: removed), so
    /// later steps of the same batch see them.
    dirents: HashMap<Vec<u8>, Option<DirEntry>>,
    /// Sync-index entries written by this operation.
    pub(crate) paths: HashMap<Vec<u8>, PathEntry>,
    /// Inodes that lost their last link: deleted at commit, or kept as
    /// orphans if pinned. Decided under the pins lock, atomically with the
    /// write, so a concurrent `lookup_pinned` either keeps them or misses them.
    unlinked: Vec<Inode>,
    /// What each inode this operation read or wrote counted for before it
    /// (`None`: no such inode), for the maintained [`TreeCounts`].
    before: HashMap<u64, Option<Counted>>,
}

impl Store {
    /// Runs `f` under the writer lock and applies its batch atomically.
    pub(crate) fn mutate<T>(&self, durable: bool, f: impl FnOnce(&mut Txn<'_>) -> Result<T>) -> Result<T> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly);
        }
        let mut guard = self.lock_writer();
        let mut txn = Txn {
            store: self,
            batch: WriteBatch::default(),
            inodes: HashMap::new(),
            counters: *guard,
            counters_before: *guard,
            new_blocks: Vec::new(),
            remote: false,
            dirents: HashMap::new(),
            paths: HashMap::new(),
            unlinked: Vec::new(),
            before: HashMap::new(),
        };
        let out = f(&mut txn)?;
        let counters = txn.counters;
        let paths = std::mem::take(&mut txn.paths);
        let change = txn.commit(durable)?;
        // Only a successful write advances the in-memory counters.
        *guard = counters;
        if let Some(counts) = self.tree_counts().as_mut() {
            counts.apply(&change);
        }
        if let Some(named) = self.named_paths().as_mut() {
            for (path, entry) in &paths {
                named.note(path, !entry.deleted);
            }
        }
        Ok(out)
    }
}

impl Txn<'_> {
    /// Writes the batch; returns how the inode counts moved.
    fn commit(mut self, durable: bool) -> Result<TreeChange> {
        let meta = self.store.meta();
        let mut change = TreeChange::default();
        if self.batch.is_empty() && self.inodes.is_empty() {
            return if durable { self.store.sync().map(|()| change) } else { Ok(change) };
        }
        // Held until the batch is written when inodes may be deleted (see `unlinked`).
        let pins = (!self.unlinked.is_empty()).then(|| self.store.pins());
        for node in std::mem::take(&mut self.unlinked) {
            // A node re-linked later in the same operation (exchange) is not gone.
            let still_unlinked = matches!(self.inodes.get(&node.ino), Some(Some(n)) if n.links.is_empty());
            if !still_unlinked {
                continue;
            }
            if pins.as_ref().is_some_and(|p| p.contains_key(&node.ino)) {
                self.put_orphan(node.ino);
            } else {
                self.inodes.insert(node.ino, None);
            }
            if node.kind == NodeKind::File {
                // Its history outlives it: when it went, for views of the past.
                self.put_record(&keys::gone(node.file_id), &node.ctime)?;
            }
        }
        // Only once status has asked for the counts (its first ask counts
        // under the writer lock, which this commit holds: no race).
        let counting = self.store.tree_counts().is_some();
        for (ino, node) in self.inodes.iter().filter(|_| counting) {
            let before = match self.before.get(ino) {
                Some(counted) => *counted,
                None => self.store.get_record::<Inode>(&keys::inode(*ino))?.as_ref().map(Counted::of),
            };
            change.add(before, node.as_ref().map(Counted::of));
        }
        let mut batch = self.batch;
        for (ino, node) in &self.inodes {
            match node {
                Some(node) => batch.put_cf(meta, keys::inode(*ino), codec::encode(node)?),
                None => {
                    batch.delete_cf(meta, keys::inode(*ino));
                    // Its extended attributes go with it.
                    batch.delete_range_cf(meta, keys::xattr_prefix(*ino), keys::xattr_prefix(ino.saturating_add(1)));
                }
            }
        }
        if self.counters != self.counters_before {
            batch.put_cf(meta, keys::COUNTERS, codec::encode(&self.counters)?);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durable);
        let written = self.store.db().write_opt(batch, &wo).map_err(|e| self.store.rocks_err(e));
        drop(pins);
        written.map(|()| change)
    }

    pub(crate) fn inode_opt(&mut self, ino: u64) -> Result<Option<Inode>> {
        if let Some(cached) = self.inodes.get(&ino) {
            return Ok(cached.clone());
        }
        let stored: Option<Inode> = self.store.get_record(&keys::inode(ino))?;
        self.was(ino, stored.as_ref());
        Ok(stored)
    }

    /// Notes what inode `ino` was before this operation, the first time it is seen.
    pub(crate) fn was(&mut self, ino: u64, node: Option<&Inode>) {
        self.before.entry(ino).or_insert_with(|| node.map(Counted::of));
    }

    pub(crate) fn inode(&mut self, ino: u64) -> Result<Inode> {
        self.inode_opt(ino)?.ok_or(StoreError::NotFound)
    }

    pub(crate) fn dir(&mut self, ino: u64) -> Result<Inode> {
        let node = self.inode(ino)?;
        if node.kind != NodeKind::Dir {
            return Err(StoreError::NotDir);
        }
        Ok(node)
    }

    pub(crate) fn file(&mut self, ino: u64) -> Result<Inode> {
        let node = self.inode(ino)?;
        match node.kind {
            NodeKind::File => Ok(node),
            NodeKind::Dir => Err(StoreError::IsDir),
            _ => Err(StoreError::Invalid("not a regular file")),
        }
    }

    pub(crate) fn put_inode(&mut self, node: Inode) {
        self.inodes.insert(node.ino, Some(node));
    }

    pub(crate) fn dirent(&self, parent: u64, name: &[u8]) -> Result<Option<DirEntry>> {
        let key = keys::dirent(parent, name);
        if let Some(written) = self.dirents.get(&key) {
            return Ok(*written);
        }
        self.store.get_record(&key)
    }

    pub(crate) fn put_dirent(&mut self, parent: u64, name: &[u8], entry: DirEntry) {
        let key = keys::dirent(parent, name);
        match codec::encode(&entry) {
            Ok(bytes) => self.batch.put_cf(self.store.meta(), &key, bytes),
            Err(_) => unreachable!("a DirEntry always encodes"),
        }
        self.dirents.insert(key, Some(entry));
    }

    pub(crate) fn delete_dirent(&mut self, parent: u64, name: &[u8]) {
        let key = keys::dirent(parent, name);
        self.batch.delete_cf(self.store.meta(), &key);
        self.dirents.insert(key, None);
    }

    /// Names in `dir`, as this operation sees them (batch included).
    pub(crate) fn dir_names(&self, dir: u64) -> Result<Vec<(Vec<u8>, DirEntry)>> {
        let prefix = keys::dirent_prefix(dir);
        let mut names: std::collections::BTreeMap<Vec<u8>, DirEntry> = std::collections::BTreeMap::new();
        for (k, v) in self.store.scan_prefix(&prefix)? {
            names.insert(k[prefix.len()..].to_vec(), codec::decode(&v)?);
        }
        for (k, v) in &self.dirents {
            if k.starts_with(&prefix) {
                let name = k[prefix.len()..].to_vec();
                match v {
                    Some(e) => names.insert(name, *e),
                    None => names.remove(&name),
                };
            }
        }
        Ok(names.into_iter().collect())
    }

    pub(crate) fn put_block(&mut self, data: &[u8]) -> Result<ContentHash> {
        let hash = ContentHash::of(data);
        if !self.store.has_block(&hash)? {
            self.put_block_bytes(&hash, data);
        }
        Ok(hash)
    }

    pub(crate) fn path_of(&mut self, node: &Inode) -> Result<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut link = node.links.first().cloned();
        let mut depth = 0;
        while let Some(l) = link {
            parts.push(l.name.clone());
            let parent = self.inode(l.parent)?;
            link = parent.links.first().cloned();
            depth += 1;
            if depth > 4096 {
                return Err(StoreError::Corrupt(format!("inode {}: cyclic path", node.ino)));
            }
        }
        parts.reverse();
        Ok(parts.join(&b'/'))
    }

    /// `node` lost its last link: deleted at commit, or kept as an orphan if pinned.
    pub(crate) fn mark_unlinked(&mut self, node: Inode) {
        self.unlinked.push(node);
    }

    pub(crate) fn delete_inode(&mut self, ino: u64) {
        self.inodes.insert(ino, None);
    }

    // ---- typed writes: nothing else touches the batch ---------------------------

    /// Puts any record of the meta CF under `key` (the callers are the typed
    /// writers below and the sync index's, each with its key from `keys`).
    pub(crate) fn put_record<T: serde::Serialize>(&mut self, key: &[u8], value: &T) -> Result<()> {
        let bytes = codec::encode(value)?;
        self.batch.put_cf(self.store.meta(), key, bytes);
        Ok(())
    }

    /// Puts raw bytes under `key` in the meta CF.
    pub(crate) fn put_raw(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.meta(), key, value);
    }

    /// Deletes `key` from the meta CF.
    pub(crate) fn delete(&mut self, key: &[u8]) {
        self.batch.delete_cf(self.store.meta(), key);
    }

    pub(crate) fn put_format(&mut self, format: &FormatRecord) -> Result<()> {
        self.put_record(keys::FORMAT, format)
    }

    pub(crate) fn put_version(&mut self, version: &FileVersion) -> Result<()> {
        self.put_record(&keys::version(version.file_id, version.seq), version)
    }

    pub(crate) fn delete_version(&mut self, file_id: FileId, seq: u64) {
        self.delete(&keys::version(file_id, seq));
    }

    pub(crate) fn put_orphan(&mut self, ino: u64) {
        self.put_raw(&keys::orphan(ino), &[]);
    }

    pub(crate) fn delete_gone(&mut self, file_id: FileId) {
        self.delete(&keys::gone(file_id));
    }

    pub(crate) fn delete_orphan(&mut self, ino: u64) {
        self.delete(&keys::orphan(ino));
    }

    /// Stores a page (content-addressed by its encoding); returns its hash.
    pub(crate) fn put_page(&mut self, page: &Page) -> Result<ContentHash> {
        let bytes = codec::encode(page)?;
        let hash = ContentHash::of(&bytes);
        self.put_raw(&keys::page(&hash), &bytes);
        Ok(hash)
    }

    /// Stores a page's bytes, already checked against `hash` by the caller.
    pub(crate) fn put_page_bytes(&mut self, hash: &ContentHash, bytes: &[u8]) {
        self.put_raw(&keys::page(hash), bytes);
    }

    pub(crate) fn delete_page(&mut self, hash: &ContentHash) {
        self.delete(&keys::page(hash));
    }

    /// Stores a block's bytes, already checked against `hash` by the caller.
    pub(crate) fn put_block_bytes(&mut self, hash: &ContentHash, data: &[u8]) {
        if !self.new_blocks.contains(hash) {
            self.batch.put_cf(self.store.blocks_cf(), hash.as_bytes(), data);
            self.new_blocks.push(*hash);
        }
    }

    pub(crate) fn delete_block(&mut self, hash: &ContentHash) {
        self.batch.delete_cf(self.store.blocks_cf(), hash.as_bytes());
    }

    /// Deletes every key in `[from, to)` of the meta CF (format migrations).
    pub(crate) fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        self.batch.delete_range_cf(self.store.meta(), from, to);
    }

    /// Writes queued so far.
    pub(crate) fn pending_writes(&self) -> usize {
        self.batch.len()
    }

    /// Writes what is queued now and goes on with an empty batch, still under
    /// the writer lock. Only for work whose every prefix is consistent on its
    /// own (GC removing unreferenced data); never after touching an inode.
    pub(crate) fn write_now(&mut self) -> Result<()> {
        debug_assert!(self.inodes.is_empty(), "write_now after an inode change");
        let batch = std::mem::take(&mut self.batch);
        self.store.db().write(batch).map_err(|e| self.store.rocks_err(e))
    }
}
