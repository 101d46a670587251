//! Counts for `psync stats` and `statfs`.

use psync_base::codec;
use rocksdb::{Direction, IteratorMode};

use crate::error::Result;
use crate::keys;
use crate::records::*;
use crate::store::Store;

/// What the store holds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStats {
    /// Regular files.
    pub files: u64,
    /// Directories (including the root).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes (local, never synced).
    pub specials: u64,
    /// Sum of the sizes of live files.
    pub logical_bytes: u64,
    /// Distinct blocks stored.
    pub blocks: u64,
    /// Bytes of distinct block data (before RocksDB's compression).
    pub block_bytes: u64,
    /// Committed versions in history.
    pub versions: u64,
    /// Deleted paths the sync index remembers for peers.
    pub tombstones: u64,
    /// Highest local sequence number.
    pub seq: u64,
}

/// What the inodes count: kept in memory, moved by every commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeCounts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    specials: u64,
    logical_bytes: u64,
}

/// What one inode counts for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    kind: NodeKind,
    bytes: u64,
}

impl Counted {
    pub(crate) fn of(node: &Inode) -> Self {
        let bytes = if node.kind == NodeKind::File { node.content.size } else { 0 };
        Counted { kind: node.kind, bytes }
    }
}

/// How one commit moved the counts (signed: inodes come and go).
#[derive(Debug, Default)]
pub(crate) struct TreeChange {
    files: i64,
    dirs: i64,
    symlinks: i64,
    specials: i64,
    logical_bytes: i128,
}

impl TreeChange {
    /// An inode went from `before` to `after` (`None`: absent).
    pub(crate) fn add(&mut self, before: Option<Counted>, after: Option<Counted>) {
        for (counted, sign) in [(before, -1i64), (after, 1)] {
            let Some(c) = counted else { continue };
            match c.kind {
                NodeKind::File => self.files += sign,
                NodeKind::Dir => self.dirs += sign,
                NodeKind::Symlink => self.symlinks += sign,
                _ => self.specials += sign,
            }
            self.logical_bytes += i128::from(sign) * i128::from(c.bytes);
        }
    }
}

impl TreeCounts {
    pub(crate) fn apply(&mut self, change: &TreeChange) {
        let moved = |n: &mut u64, by: i128| *n = u64::try_from(i128::from(*n) + by).unwrap_or(0);
        moved(&mut self.files, change.files.into());
        moved(&mut self.dirs, change.dirs.into());
        moved(&mut self.symlinks, change.symlinks.into());
        moved(&mut self.specials, change.specials.into());
        moved(&mut self.logical_bytes, change.logical_bytes);
    }

    fn fill(&self, s: &mut StoreStats) {
        s.files = self.files;
        s.dirs = self.dirs;
        s.symlinks = self.symlinks;
        s.specials = self.specials;
        s.logical_bytes = self.logical_bytes;
    }
}

impl Store {
    /// Counts files, directories, symlinks and live bytes from the inodes
    /// alone (no block is read): what `psync status` shows. The first call
    /// walks the inodes; later ones read counts every commit keeps current.
    pub fn tree_stats(&self) -> Result<StoreStats> {
        let mut s = StoreStats { seq: self.current_seq(), ..Default::default() };
        if let Some(counts) = *self.tree_counts() {
            counts.fill(&mut s);
            return Ok(s);
        }
        // Under the writer lock: no commit moves the inodes while they are counted.
        let _writer = self.lock_writer();
        let counts = self.count_inodes()?;
        *self.tree_counts() = Some(counts);
        counts.fill(&mut s);
        Ok(s)
    }

    pub(crate) fn tree_counts(&self) -> std::sync::MutexGuard<'_, Option<TreeCounts>> {
        self.tree_counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_inodes(&self) -> Result<TreeCounts> {
        let mut change = TreeChange::default();
        self.for_each_prefix(&[keys::TAG_INODE], |_, v| {
            let node: Inode = codec::decode(v)?;
            change.add(None, Some(Counted::of(&node)));
            Ok(true)
        })?;
        let mut counts = TreeCounts::default();
        counts.apply(&change);
        Ok(counts)
    }

    /// Walks the whole store, blocks included, and counts. Cost is
    /// proportional to the store's size in bytes.
    pub fn stats(&self) -> Result<StoreStats> {
        let mut s = StoreStats { seq: self.current_seq(), ..Default::default() };
        self.count_inodes()?.fill(&mut s);
        self.for_each_prefix(&[keys::TAG_VERSION], |_, _| {
            s.versions += 1;
            Ok(true)
        })?;
        self.for_each_prefix(&[keys::TAG_PATH], |_, v| {
            let entry: PathEntry = codec::decode(v)?;
            s.tombstones += u64::from(entry.deleted);
            Ok(true)
        })?;
        for item in self.db().iterator_cf(self.blocks_cf(), IteratorMode::From(&[], Direction::Forward)) {
            let (_, v) = item.map_err(|e| self.rocks_err(e))?;
            s.blocks += 1;
            s.block_bytes += v.len() as u64;
        }
        Ok(s)
    }
}
