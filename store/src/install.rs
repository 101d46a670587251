//! Installing peers' versions: each batch of them in one transaction,
//! structure first, never over a local change or a local file that does
//! not sync.

use psync_base::page::decode_page;
use psync_base::{ContentHash, VersionVector, BLOCK_SIZE};

use crate::error::{Result, StoreError};
use crate::keys;
use crate::nodes::{NewNode, NodeAttrs};
use crate::records::*;
use crate::store::Store;
use crate::sync_index::{BlockRefs, LocalOnlyPath, PathVersion};
use crate::txn::Txn;

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

impl Txn<'_> {
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
            pages.push(Some(self.put_page(&page)?));
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
        let (parent, name, existing) = self.place_for(v)?;
        if v.deleted {
            if let Some(entry) = existing {
                // Only what peers know is removed for them.
                if self.known_to_peers(&v.path, &entry)? {
                    self.remove_existing(parent, &name, entry, now)?;
                }
            }
        } else {
            self.write_version(v, parent, &name, existing, now)?;
        }
        let entry =
            PathEntry { vv: v.vv.clone(), dot: v.dot, deleted: v.deleted, kind: v.kind, seq: 0, mtime: v.mtime };
        self.put_path_entry(&v.path, entry)
    }

    /// Where `v` goes: (parent inode, name, what is there now), or why it
    /// cannot go there now (local files that do not sync in the way).
    fn place_for(&mut self, v: &PathVersion) -> Result<(u64, Vec<u8>, Option<DirEntry>)> {
        if let Some(local) = self.store.get_record::<LocalOnlyPath>(&keys::local_only(&v.path))? {
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
        if let Some(entry) = &existing {
            if !self.known_to_peers(&v.path, entry)? && !v.deleted {
                return Err(StoreError::Blocked(format!(
                    "a local {} that does not sync is in the way",
                    entry.kind.describe()
                )));
            }
        }
        Ok((parent, name, existing))
    }

    /// Makes the live version `v` the node at `(parent, name)`: a node of
    /// another kind there is replaced; a file's content becomes a version in
    /// its history.
    fn write_version(
        &mut self,
        v: &PathVersion,
        parent: u64,
        name: &[u8],
        existing: Option<DirEntry>,
        now: Timestamp,
    ) -> Result<()> {
        let existing = match existing {
            Some(e) if e.kind != v.kind => {
                self.remove_existing(parent, name, e, now)?;
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
                self.create_node(parent, name, new, NodeAttrs { uid: dir.uid, gid: dir.gid, ..attrs }, now)?
            }
        };
        let mtime = Timestamp { secs: v.mtime, nanos: 0 };
        node.perm = v.perm & 0o7777;
        node.mtime = mtime;
        node.ctime = now;
        node.vv = v.vv.clone();
        if let (Some(list), NodeKind::File | NodeKind::Dir) = (&v.xattrs, v.kind) {
            // Only what this store keeps (the sync layer checked the record).
            if psync_base::xattr::check_xattrs(list).is_ok() {
                self.replace_xattrs(node.ino, list)?;
            }
        }
        match v.kind {
            NodeKind::File => {
                node.content = match &v.blocks {
                    BlockRefs::Blocks(list) => self.content_from_blocks(v.size, list)?,
                    BlockRefs::Pages(pages) => self.content_from_pages(v.size, pages)?,
                };
                node.dirty = false;
                let seq = self.counters.next_seq;
                self.counters.next_seq += 1;
                let version = FileVersion {
                    file_id: node.file_id,
                    seq,
                    vv: v.vv.clone(),
                    content: node.content.clone(),
                    mtime,
                    perm: node.perm,
                    path: v.path.clone(),
                    committed_at: now,
                };
                self.put_version(&version)?;
                node.committed_seq = seq;
            }
            NodeKind::Symlink => node.symlink = v.symlink.clone(),
            _ => {}
        }
        self.put_inode(node);
        Ok(())
    }
}

impl Store {
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
                let current = txn.store.get_record::<PathEntry>(&keys::path(path))?.map(|e| e.vv);
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
}
