//! Counts for `psync stats` and `statfs`.

use psync_base::codec;
use rocksdb::{Direction, IteratorMode};

use crate::counts::{Counted, TreeChange, TreeCounts};
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

impl Store {
    /// Counts files, directories, symlinks and live bytes from the inodes
    /// alone (no block is read): what `psync status` shows. The first call
    /// walks the inodes; later ones read counts every commit keeps current.
    pub fn tree_stats(&self) -> Result<StoreStats> {
        let mut s = StoreStats { seq: self.current_seq(), ..Default::default() };
        if let Some(counts) = *self.tree_counts() {
            fill(&counts, &mut s);
            return Ok(s);
        }
        // Under the writer lock: no commit moves the inodes while they are counted.
        let _writer = self.lock_writer();
        let counts = self.count_inodes()?;
        *self.tree_counts() = Some(counts);
        fill(&counts, &mut s);
        Ok(s)
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
        fill(&self.count_inodes()?, &mut s);
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

fn fill(counts: &TreeCounts, s: &mut StoreStats) {
    s.files = counts.files;
    s.dirs = counts.dirs;
    s.symlinks = counts.symlinks;
    s.specials = counts.specials;
    s.logical_bytes = counts.logical_bytes;
}
