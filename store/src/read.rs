//! Reads: lookups, directory listings, paths, content, blocks, pages and
//! history. Lock-free: they see the last committed batch.

use psync_base::{codec, validate_name, ContentHash};
use rocksdb::{Direction, IteratorMode};

use crate::content::PageCache;
use crate::error::{Result, StoreError};
use crate::keys;
use crate::records::*;
use crate::store::Store;

impl Store {
    /// The inode `ino`.
    pub fn inode(&self, ino: u64) -> Result<Inode> {
        self.get_record(&keys::inode(ino))?.ok_or(StoreError::NotFound)
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        validate_name(name)?;
        let dir = self.inode(parent)?;
        if dir.kind != NodeKind::Dir {
            return Err(StoreError::NotDir);
        }
        let entry: DirEntry = self.get_record(&keys::dirent(parent, name))?.ok_or(StoreError::NotFound)?;
        self.inode(entry.ino)
    }

    /// [`Store::lookup`], and pins the inode found (the FUSE lookup count).
    /// The pin is taken before the inode is read back, so an unlink racing
    /// with this lookup either keeps the inode alive as an orphan or is seen
    /// as done (and the lookup retries): the caller never gets an inode that
    /// is deleted under its pin.
    pub fn lookup_pinned(&self, parent: u64, name: &[u8]) -> Result<Inode> {
        validate_name(name)?;
        for _ in 0..64 {
            let dir = self.inode(parent)?;
            if dir.kind != NodeKind::Dir {
                return Err(StoreError::NotDir);
            }
            let entry: DirEntry = self.get_record(&keys::dirent(parent, name))?.ok_or(StoreError::NotFound)?;
            self.pin(entry.ino, 1);
            match self.inode(entry.ino) {
                Ok(node) => return Ok(node),
                Err(StoreError::NotFound) => self.unpin(entry.ino, 1)?,
                Err(e) => {
                    self.unpin(entry.ino, 1)?;
                    return Err(e);
                }
            }
        }
        Err(StoreError::Io(format!("lookup of {:?} kept racing with deletes", String::from_utf8_lossy(name))))
    }

    /// Entries of directory `dir` with names after `after` (exclusive), at most `limit`.
    pub fn read_dir(&self, dir: u64, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, DirEntry)>> {
        let node = self.inode(dir)?;
        if node.kind != NodeKind::Dir {
            return Err(StoreError::NotDir);
        }
        let prefix = keys::dirent_prefix(dir);
        let start = match after {
            Some(name) => keys::dirent(dir, name),
            None => prefix.to_vec(),
        };
        let mut out = Vec::new();
        for item in self.db().iterator_cf(self.meta(), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let name = &k[prefix.len()..];
            if after == Some(name) {
                continue;
            }
            out.push((name.to_vec(), codec::decode(&v)?));
        }
        Ok(out)
    }

    /// Resolves a `/`-separated path relative to the root (no symlinks followed).
    pub fn resolve(&self, path: &[u8]) -> Result<Inode> {
        let mut node = self.inode(ROOT_INO)?;
        for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            node = self.lookup(node.ino, part)?;
        }
        Ok(node)
    }

    /// The path of `ino` from the root via its first link, `/`-separated.
    pub fn path_of(&self, ino: u64) -> Result<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut current = self.inode(ino)?;
        // Bounded walk: a cycle would be corruption, never an infinite loop.
        for _ in 0..4096 {
            match current.links.first() {
                None => break,
                Some(link) => {
                    parts.push(link.name.clone());
                    current = self.inode(link.parent)?;
                }
            }
        }
        if !current.links.is_empty() {
            return Err(StoreError::Corrupt(format!("inode {ino}: path deeper than 4096 or cyclic")));
        }
        parts.reverse();
        Ok(parts.join(&b'/'))
    }

    /// Reads up to `len` bytes at `offset` of file `ino`.
    pub fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        let node = self.inode(ino)?;
        match node.kind {
            NodeKind::File => self.read_content(&node.content, offset, len),
            NodeKind::Dir => Err(StoreError::IsDir),
            NodeKind::Symlink => Err(StoreError::Invalid("read of a symlink")),
            _ => Err(StoreError::Invalid("read of a special file")),
        }
    }

    /// Reads from a content value (a live file or a historical version).
    pub fn read_content(&self, content: &Content, offset: u64, len: u32) -> Result<Vec<u8>> {
        if offset >= content.size {
            return Ok(Vec::new());
        }
        let end = content.size.min(offset.saturating_add(len as u64));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pages = PageCache::default();
        let mut pos = offset;
        while pos < end {
            let index = pos / BLOCK_SIZE;
            let block_start = index * BLOCK_SIZE;
            let within = (pos - block_start) as usize;
            let take = ((block_start + BLOCK_SIZE).min(end) - pos) as usize;
            match pages.block_hash(self, content, index)? {
                None => out.resize(out.len() + take, 0),
                Some(hash) => {
                    let data = self.block(&hash)?;
                    let available = data.len().saturating_sub(within).min(take);
                    if available > 0 {
                        out.extend_from_slice(&data[within..within + available]);
                    }
                    out.resize(out.len() + (take - available), 0);
                }
            }
            pos += take as u64;
        }
        Ok(out)
    }

    /// A block's bytes, verified against its hash.
    pub fn block(&self, hash: &ContentHash) -> Result<Vec<u8>> {
        let data = self
            .db()
            .get_cf(self.blocks_cf(), hash.as_bytes())
            .map_err(|e| self.rocks_err(e))?
            .ok_or_else(|| StoreError::Corrupt(format!("block {hash} is missing")))?;
        if ContentHash::of(&data) != *hash {
            return Err(StoreError::Corrupt(format!("block {hash} does not match its hash")));
        }
        Ok(data)
    }

    /// Whether the block is stored (for sync: fetch only what is missing).
    /// The bloom filter answers most "no"s without a read; a "maybe" is
    /// settled by a pinned read, which copies nothing.
    pub fn has_block(&self, hash: &ContentHash) -> Result<bool> {
        if !self.db().key_may_exist_cf(self.blocks_cf(), hash.as_bytes()) {
            return Ok(false);
        }
        Ok(self.db().get_pinned_cf(self.blocks_cf(), hash.as_bytes()).map_err(|e| self.rocks_err(e))?.is_some())
    }

    /// A page of block hashes, verified against its hash.
    pub fn page(&self, hash: &ContentHash) -> Result<Page> {
        let bytes = self
            .db()
            .get_pinned_cf(self.meta(), keys::page(hash))
            .map_err(|e| self.rocks_err(e))?
            .ok_or_else(|| StoreError::Corrupt(format!("page {hash} is missing")))?;
        if ContentHash::of(&bytes) != *hash {
            return Err(StoreError::Corrupt(format!("page {hash} does not match its hash")));
        }
        Ok(codec::decode(&bytes)?)
    }

    /// The block hashes of a content value, in order (`None` for holes).
    pub fn block_list(&self, content: &Content) -> Result<Vec<Option<ContentHash>>> {
        let count = content.size.div_ceil(BLOCK_SIZE);
        let mut pages = PageCache::default();
        (0..count).map(|i| pages.block_hash(self, content, i)).collect()
    }

    /// Committed versions of a file, oldest first.
    pub fn versions(&self, file_id: FileId) -> Result<Vec<FileVersion>> {
        self.scan_prefix(&keys::version_prefix(file_id))?.into_iter().map(|(_, v)| Ok(codec::decode(&v)?)).collect()
    }

    /// One committed version.
    pub fn version(&self, file_id: FileId, seq: u64) -> Result<FileVersion> {
        self.get_record(&keys::version(file_id, seq))?.ok_or(StoreError::NotFound)
    }

    /// The highest sequence number assigned so far (0 before any change).
    pub fn current_seq(&self) -> u64 {
        self.lock_writer().next_seq - 1
    }

    pub(crate) fn dir_has_entries(&self, dir: u64) -> Result<bool> {
        let mut any = false;
        self.for_each_prefix(&keys::dirent_prefix(dir), |_, _| {
            any = true;
            Ok(false)
        })?;
        Ok(any)
    }
}
