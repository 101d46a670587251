//! The filesystem operations a mount makes, each one atomic batch.

use psync_base::{codec, validate_name};

use crate::content::ContentEditor;
use crate::error::{Result, StoreError};
use crate::keys;
use crate::nodes::{NewNode, NodeAttrs, RenameMode, SetAttr};
use crate::records::*;
use crate::store::Store;

impl Store {
    /// Creates `name` in `parent`. Files start dirty (committed on close);
    /// directories and symlinks are committed at once.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        node: NewNode<'_>,
        attrs: NodeAttrs,
        now: Timestamp,
    ) -> Result<Inode> {
        self.mutate(false, |txn| txn.create_node(parent, name, node, attrs, now))
    }

    /// Writes `data` at `offset` into file `ino`; returns the new size.
    /// Costs work proportional to `data.len()`, not to the file size.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8], now: Timestamp) -> Result<u64> {
        self.mutate(false, |txn| txn.write_file(ino, Some(offset), data, now)).map(|(_, size)| size)
    }

    /// Appends `data` at the end of file `ino`, atomically with respect to
    /// other writers (`O_APPEND`); returns the offset written at.
    pub fn append(&self, ino: u64, data: &[u8], now: Timestamp) -> Result<u64> {
        self.mutate(false, |txn| txn.write_file(ino, None, data, now)).map(|(offset, _)| offset)
    }

    /// Sets the size of file `ino` (truncate or extend with a hole).
    pub fn truncate(&self, ino: u64, size: u64, now: Timestamp) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(StoreError::FileTooLarge);
        }
        self.mutate(false, |txn| {
            let mut node = txn.file(ino)?;
            let old = node.content.size;
            if size < old {
                let mut editor = ContentEditor::new(node.content.clone());
                let keep_blocks = size.div_ceil(BLOCK_SIZE);
                editor.drop_blocks_from(txn.store, keep_blocks)?;
                let tail = (size % BLOCK_SIZE) as usize;
                if tail != 0 {
                    let index = size / BLOCK_SIZE;
                    if let Some(hash) = editor.block_hash(txn.store, index)? {
                        let mut block = txn.store.block(&hash)?;
                        if block.len() > tail {
                            block.truncate(tail);
                            let new_hash = txn.put_block(&block)?;
                            editor.set_block(txn.store, index, Some(new_hash))?;
                        }
                    }
                }
                node.content = editor.finish(txn)?;
            }
            node.content.size = size;
            if size != old {
                node.mtime = now;
                node.dirty = true;
            }
            node.ctime = now;
            txn.put_inode(node);
            Ok(())
        })
    }

    /// Changes attributes. Permission and mtime changes of a committed object
    /// are recorded as a change for sync; of a dirty file, they ride along
    /// with its next commit.
    pub fn set_attr(&self, ino: u64, attr: &SetAttr, now: Timestamp) -> Result<Inode> {
        self.mutate(false, |txn| {
            let mut node = txn.inode(ino)?;
            let mut synced_change = false;
            if let Some(perm) = attr.perm {
                synced_change |= node.perm != perm & 0o7777;
                node.perm = perm & 0o7777;
            }
            if let Some(uid) = attr.uid {
                node.uid = uid;
            }
            if let Some(gid) = attr.gid {
                node.gid = gid;
            }
            if let Some(atime) = attr.atime {
                node.atime = atime;
            }
            if let Some(mtime) = attr.mtime {
                synced_change |= node.mtime != mtime;
                node.mtime = mtime;
            }
            node.ctime = now;
            // Unlinked (open) files are already tombstoned: no further changes.
            if synced_change && !node.dirty && node.ino != ROOT_INO && !node.links.is_empty() {
                txn.record_change(&mut node);
                txn.links_changed(&node)?;
            }
            txn.put_inode(node.clone());
            Ok(node)
        })
    }

    /// Commits the content of file `ino` as a new version if it changed
    /// (version vector bump, new sequence number, history entry). With
    /// `durable`, everything written so far is on stable storage on return.
    /// Returns the new version's sequence number, if one was made.
    pub fn commit(&self, ino: u64, now: Timestamp, durable: bool) -> Result<Option<u64>> {
        self.mutate(durable, |txn| match txn.inode_opt(ino)? {
            Some(node) => txn.commit_node(node, now),
            None => Ok(None),
        })
    }

    /// Makes version `seq` of file `ino` its content again, as a new version
    /// (one transaction: the old pages are reused, nothing is copied, and a
    /// crash leaves either the old state or the restored one). Returns the
    /// new version's sequence number (`None`: it already had that content).
    pub fn restore(&self, ino: u64, seq: u64, now: Timestamp) -> Result<Option<u64>> {
        self.mutate(true, |txn| {
            let mut node = txn.file(ino)?;
            if node.links.is_empty() {
                return Err(StoreError::NotFound);
            }
            let old = txn.store.version(node.file_id, seq)?;
            if node.content == old.content && !node.dirty {
                return Ok(None);
            }
            node.content = old.content;
            node.mtime = now;
            node.ctime = now;
            node.dirty = true;
            txn.commit_node(node, now)
        })
    }

    /// Writes all memtables to SST files (both column families atomically).
    /// Not needed for durability (the WAL gives that); used before measuring
    /// disk usage and before a clean shutdown to shorten the next open.
    pub fn flush_memtables(&self) -> Result<()> {
        let opts = rocksdb::FlushOptions::default();
        self.db().flush_cfs_opt(&[self.meta(), self.blocks_cf()], &opts).map_err(|e| self.rocks_err(e))
    }

    /// Makes every write so far durable (syncs the write-ahead log).
    pub fn sync(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        self.db().flush_wal(true).map_err(|e| self.rocks_err(e))
    }

    /// Removes the non-directory `name` from `parent`. The inode goes away
    /// with its last link, or with its last open handle if it is open.
    pub fn unlink(&self, parent: u64, name: &[u8], now: Timestamp) -> Result<()> {
        validate_name(name)?;
        self.mutate(false, |txn| {
            let entry = txn.dirent(parent, name)?.ok_or(StoreError::NotFound)?;
            if entry.kind == NodeKind::Dir {
                return Err(StoreError::IsDir);
            }
            txn.remove_link(parent, name, entry.ino, now)?;
            txn.touch_dir(parent, now, 0)
        })
    }

    /// Removes the empty directory `name` from `parent`.
    pub fn rmdir(&self, parent: u64, name: &[u8], now: Timestamp) -> Result<()> {
        validate_name(name)?;
        self.mutate(false, |txn| {
            let entry = txn.dirent(parent, name)?.ok_or(StoreError::NotFound)?;
            if entry.kind != NodeKind::Dir {
                return Err(StoreError::NotDir);
            }
            if txn.store.dir_has_entries(entry.ino)? {
                return Err(StoreError::NotEmpty);
            }
            txn.remove_link(parent, name, entry.ino, now)?;
            txn.touch_dir(parent, now, -1)
        })
    }

    /// Adds a hard link to the non-directory `ino` as `name` in `parent`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8], now: Timestamp) -> Result<Inode> {
        validate_name(name)?;
        self.mutate(false, |txn| {
            let mut node = txn.inode(ino)?;
            if node.kind == NodeKind::Dir {
                return Err(StoreError::NotPermitted("hard link to a directory"));
            }
            if node.links.is_empty() {
                return Err(StoreError::NotFound);
            }
            txn.dir(parent)?;
            if txn.dirent(parent, name)?.is_some() {
                return Err(StoreError::Exists);
            }
            node.links.push(Link { parent, name: name.to_vec() });
            node.ctime = now;
            txn.put_dirent(parent, name, DirEntry { ino, kind: node.kind });
            txn.put_inode(node.clone());
            if node.kind != NodeKind::File || node.committed_seq != 0 {
                let path = txn.link_path(parent, name)?;
                txn.path_changed(&path, node.kind, false, now.secs)?;
            }
            txn.touch_dir(parent, now, 0)?;
            Ok(node)
        })
    }

    /// Renames `parent/name` to `new_parent/new_name`, atomically.
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
        now: Timestamp,
    ) -> Result<()> {
        validate_name(name)?;
        validate_name(new_name)?;
        self.mutate(false, |txn| {
            txn.dir(parent)?;
            txn.dir(new_parent)?;
            let src = txn.dirent(parent, name)?.ok_or(StoreError::NotFound)?;
            let dst = txn.dirent(new_parent, new_name)?;
            if src.kind == NodeKind::Dir {
                txn.check_not_ancestor(src.ino, new_parent)?;
            }
            match (mode, dst) {
                (RenameMode::NoReplace, Some(_)) => return Err(StoreError::Exists),
                (RenameMode::Exchange, None) => return Err(StoreError::NotFound),
                (RenameMode::Exchange, Some(dst)) => {
                    if dst.kind == NodeKind::Dir {
                        txn.check_not_ancestor(dst.ino, parent)?;
                    }
                    if dst.ino == src.ino {
                        return Ok(());
                    }
                    txn.move_link(src, parent, name, new_parent, new_name, now)?;
                    txn.move_link(dst, new_parent, new_name, parent, name, now)?;
                    txn.put_dirent(new_parent, new_name, src);
                    txn.put_dirent(parent, name, dst);
                    // Each path was both a source and a target: both hold live versions.
                    let (a, b) = (txn.inode(src.ino)?, txn.inode(dst.ino)?);
                    let (pa, pb) = (txn.link_path(new_parent, new_name)?, txn.link_path(parent, name)?);
                    txn.tree_live(&a, &pa)?;
                    txn.tree_live(&b, &pb)?;
                    return Ok(());
                }
                (_, Some(dst)) if dst.ino == src.ino => return Ok(()),
                (_, Some(dst)) => {
                    match (src.kind == NodeKind::Dir, dst.kind == NodeKind::Dir) {
                        (true, false) => return Err(StoreError::NotDir),
                        (false, true) => return Err(StoreError::IsDir),
                        (true, true) if txn.store.dir_has_entries(dst.ino)? => return Err(StoreError::NotEmpty),
                        _ => {}
                    }
                    txn.remove_link(new_parent, new_name, dst.ino, now)?;
                    if dst.kind == NodeKind::Dir {
                        txn.touch_dir(new_parent, now, -1)?;
                    }
                }
                (_, None) => {}
            }
            txn.delete_dirent(parent, name);
            txn.move_link(src, parent, name, new_parent, new_name, now)?;
            txn.put_dirent(new_parent, new_name, src);
            Ok(())
        })
    }

    /// Files whose content changed but was never committed (e.g. open when
    /// the previous daemon was killed). Walks all inodes: call once at mount.
    pub fn dirty_files(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        self.for_each_prefix(&[keys::TAG_INODE], |_, v| {
            let node: Inode = codec::decode(v)?;
            if node.dirty && !node.links.is_empty() {
                out.push(node.ino);
            }
            Ok(true)
        })?;
        Ok(out)
    }
}
