//! Node-level steps of an operation, inside one [`Txn`]: creating nodes,
//! writing content, moving and removing links, numbering changes.

use psync_base::{validate_name, VersionVector, BLOCK_SIZE};

use crate::content::ContentEditor;
use crate::error::{Result, StoreError};
use crate::records::*;
use crate::txn::Txn;

/// Permission bits and ownership of a new node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAttrs {
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl NodeAttrs {
    /// Root-owned with the given permission bits.
    pub fn perm(perm: u32) -> Self {
        Self { perm, uid: 0, gid: 0 }
    }
}

/// Attributes to change in [`Store::set_attr`]; `None` leaves one as is.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub perm: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New access time.
    pub atime: Option<Timestamp>,
    /// New modification time.
    pub mtime: Option<Timestamp>,
}

/// What [`Store::create`] makes.
#[derive(Debug, Clone)]
pub enum NewNode<'a> {
    /// An empty regular file.
    File,
    /// An empty directory.
    Dir,
    /// A symlink to the given target.
    Symlink(&'a [u8]),
    /// A FIFO, socket or device node (`kind.is_special()`), with its device number.
    Special(NodeKind, u32),
}

/// How [`Store::rename`] treats an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenameMode {
    /// Atomically replace the target (POSIX `rename`).
    #[default]
    Replace,
    /// Fail with [`StoreError::Exists`] if the target exists.
    NoReplace,
    /// Atomically swap source and target; both must exist.
    Exchange,
}

/// One entry of "what changed since N".
impl Txn<'_> {
    /// Creates `name` in `parent` (see [`Store::create`]).
    pub(crate) fn create_node(
        &mut self,
        parent: u64,
        name: &[u8],
        node: NewNode<'_>,
        attrs: NodeAttrs,
        now: Timestamp,
    ) -> Result<Inode> {
        // Every creation passes here, local or from a peer: validate here.
        validate_name(name)?;
        if let NewNode::Symlink(target) = node {
            if target.is_empty() || target.len() > 4096 || target.contains(&0) {
                return Err(StoreError::Invalid("symlink target must be 1..=4096 bytes without NUL"));
            }
        }
        let txn = self;
        let mut dir = txn.dir(parent)?;
        if txn.dirent(parent, name)?.is_some() {
            return Err(StoreError::Exists);
        }
        let ino = txn.counters.next_ino;
        txn.counters.next_ino += 1;
        txn.was(ino, None);
        let (kind, symlink, rdev) = match node {
            NewNode::File => (NodeKind::File, Vec::new(), 0),
            NewNode::Dir => (NodeKind::Dir, Vec::new(), 0),
            NewNode::Symlink(target) => (NodeKind::Symlink, target.to_vec(), 0),
            NewNode::Special(kind, rdev) if kind.is_special() => (kind, Vec::new(), rdev),
            NewNode::Special(..) => return Err(StoreError::Invalid("not a special file kind")),
        };
        let mut inode = Inode {
            ino,
            kind,
            perm: attrs.perm & 0o7777,
            uid: attrs.uid,
            gid: attrs.gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: vec![Link { parent, name: name.to_vec() }],
            subdirs: 0,
            content: Content::default(),
            symlink,
            rdev,
            file_id: FileId(rand::random::<u128>()),
            vv: VersionVector::new(),
            seq: 0,
            committed_seq: 0,
            dirty: kind == NodeKind::File,
        };
        if kind != NodeKind::File {
            txn.record_change(&mut inode);
        }
        txn.put_dirent(parent, name, DirEntry { ino, kind });
        if kind == NodeKind::Dir {
            dir.subdirs += 1;
        }
        dir.mtime = now;
        dir.ctime = now;
        txn.put_inode(dir);
        txn.put_inode(inode.clone());
        if kind != NodeKind::File {
            let path = txn.link_path(parent, name)?;
            txn.path_changed(&path, kind, false, now.secs)?;
        }
        Ok(inode)
    }
    /// Writes `data` at `offset` (at the end if `None`); returns (offset, new size).
    pub(crate) fn write_file(
        &mut self,
        ino: u64,
        offset: Option<u64>,
        data: &[u8],
        now: Timestamp,
    ) -> Result<(u64, u64)> {
        let mut node = self.file(ino)?;
        let offset = offset.unwrap_or(node.content.size);
        let end = offset.checked_add(data.len() as u64).ok_or(StoreError::FileTooLarge)?;
        if end > MAX_FILE_SIZE {
            return Err(StoreError::FileTooLarge);
        }
        if !data.is_empty() {
            let mut editor = ContentEditor::new(node.content.clone());
            let mut pos = offset;
            let mut rest = data;
            while !rest.is_empty() {
                let index = pos / BLOCK_SIZE;
                let within = (pos % BLOCK_SIZE) as usize;
                let take = rest.len().min(BLOCK_SIZE as usize - within);
                let mut block = if within == 0 && take == BLOCK_SIZE as usize {
                    Vec::with_capacity(take)
                } else {
                    match editor.block_hash(self.store, index)? {
                        Some(hash) => self.store.block(&hash)?,
                        None => Vec::new(),
                    }
                };
                if block.len() < within + take {
                    block.resize(within + take, 0);
                }
                block[within..within + take].copy_from_slice(&rest[..take]);
                let hash = self.put_block(&block)?;
                editor.set_block(self.store, index, Some(hash))?;
                pos += take as u64;
                rest = &rest[take..];
            }
            node.content = editor.finish(self)?;
            node.content.size = node.content.size.max(end);
        }
        node.mtime = now;
        node.ctime = now;
        node.dirty = true;
        let size = node.content.size;
        self.put_inode(node);
        Ok((offset, size))
    }

    /// Commits `node`'s content as a new version if it changed (version
    /// vector bump, new sequence number, history entry, sync index).
    pub(crate) fn commit_node(&mut self, mut node: Inode, now: Timestamp) -> Result<Option<u64>> {
        if !node.dirty || node.links.is_empty() {
            return Ok(None);
        }
        self.record_change(&mut node);
        let path = self.path_of(&node)?;
        let version = FileVersion {
            file_id: node.file_id,
            seq: node.seq,
            vv: node.vv.clone(),
            content: node.content.clone(),
            mtime: node.mtime,
            perm: node.perm,
            path,
            committed_at: now,
        };
        self.put_version(&version)?;
        node.committed_seq = node.seq;
        node.dirty = false;
        self.links_changed(&node)?;
        let seq = node.seq;
        self.put_inode(node);
        Ok(Some(seq))
    }

    /// Assigns the next sequence number to `node` as its latest change (its
    /// history's version vector; the sync index records the change itself).
    pub(crate) fn record_change(&mut self, node: &mut Inode) {
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        node.seq = seq;
        node.vv.advance(self.store.device(), seq);
    }

    /// Updates a directory's times and subdirectory count.
    pub(crate) fn touch_dir(&mut self, dir: u64, now: Timestamp, subdir_delta: i32) -> Result<()> {
        let mut node = self.dir(dir)?;
        node.subdirs = node.subdirs.saturating_add_signed(subdir_delta);
        node.mtime = now;
        node.ctime = now;
        self.put_inode(node);
        Ok(())
    }

    /// Fails if `dir` is `target` or one of its ancestors (a directory cannot
    /// be moved into itself).
    pub(crate) fn check_not_ancestor(&mut self, dir: u64, target: u64) -> Result<()> {
        let mut current = target;
        for _ in 0..4096 {
            if current == dir {
                return Err(StoreError::Invalid("cannot move a directory into itself"));
            }
            match self.inode(current)?.links.first() {
                Some(link) => current = link.parent,
                None => return Ok(()),
            }
        }
        Err(StoreError::Corrupt("directory tree deeper than 4096 or cyclic".into()))
    }

    /// Re-points the link `(from_parent, from_name)` of `entry.ino` to
    /// `(to_parent, to_name)`, updating times and subdirectory counts.
    /// The caller writes the dirents.
    pub(crate) fn move_link(
        &mut self,
        entry: DirEntry,
        from_parent: u64,
        from_name: &[u8],
        to_parent: u64,
        to_name: &[u8],
        now: Timestamp,
    ) -> Result<()> {
        let old_path = self.link_path(from_parent, from_name)?;
        let mut node = self.inode(entry.ino)?;
        let link = node
            .links
            .iter_mut()
            .find(|l| l.parent == from_parent && l.name == from_name)
            .ok_or_else(|| StoreError::Corrupt(format!("inode {} lacks the link being renamed", entry.ino)))?;
        link.parent = to_parent;
        link.name = to_name.to_vec();
        node.ctime = now;
        if !node.dirty {
            self.record_change(&mut node);
        }
        self.put_inode(node.clone());
        let new_path = self.link_path(to_parent, to_name)?;
        self.path_moved(&node, &old_path, &new_path)?;
        let moved_dir = i32::from(entry.kind == NodeKind::Dir);
        if from_parent == to_parent {
            self.touch_dir(from_parent, now, 0)
        } else {
            self.touch_dir(from_parent, now, -moved_dir)?;
            self.touch_dir(to_parent, now, moved_dir)
        }
    }

    /// Removes the link `(parent, name)` of `ino` and its dirent. With its
    /// last link the inode is deleted or kept as an orphan
    /// while open.
    pub(crate) fn remove_link(&mut self, parent: u64, name: &[u8], ino: u64, now: Timestamp) -> Result<()> {
        let removed_path = self.link_path(parent, name)?;
        let mut node = self.inode(ino)?;
        self.path_changed(&removed_path, node.kind, true, now.secs)?;
        node.links.retain(|l| !(l.parent == parent && l.name == name));
        node.ctime = now;
        self.delete_dirent(parent, name);
        if !node.links.is_empty() {
            self.put_inode(node);
            return Ok(());
        }
        node.seq = 0;
        self.put_inode(node.clone());
        self.mark_unlinked(node);
        Ok(())
    }
}
