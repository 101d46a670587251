//! [`Store`]: one device's RocksDB database, its handles and its generic
//! record access. Opening and creating live in `open.rs`, writing in
//! `txn.rs` (the only writer), reads in `read.rs`, file operations in
//! `ops.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use psync_base::{codec, DeviceId};
use rocksdb::{ColumnFamily, Direction, IteratorMode, DB};
use serde::de::DeserializeOwned;

use crate::counts::TreeCounts;
use crate::error::{Result, StoreError};
use crate::keys;
use crate::named::NamedPaths;
use crate::records::*;

/// Name of the RocksDB directory inside a data dir.
pub const DB_DIR_NAME: &str = "db";

/// The store of one device. All mutations go through one writer lock and
/// are each applied as a single RocksDB `WriteBatch`, so a crash leaves either
/// all or nothing of any operation. Reads are lock-free.
pub struct Store {
    pub(crate) db: DB,
    pub(crate) data_dir: PathBuf,
    pub(crate) device: DeviceId,
    pub(crate) index_id: u64,
    pub(crate) writer: Mutex<Counters>,
    /// Opened as a read-only snapshot: every mutation fails with `ReadOnly`.
    pub(crate) read_only: bool,
    /// Pins per inode: open handles plus the kernel's lookup references.
    /// An unlinked inode that is pinned becomes an orphan and lives until
    /// its last pin goes (as ext4 keeps an inode the kernel still uses).
    pub(crate) pins: Mutex<HashMap<u64, u64>>,
    /// Open handles that may write, per inode: content the kernel may
    /// still hold or send, so a peer's version must not replace it.
    pub(crate) writers: Mutex<HashMap<u64, u64>>,
    /// What the inodes count, kept up to date by every commit once a first
    /// [`Store::tree_stats`] has counted them (status must not walk the
    /// store each time it is asked). Locked after `writer`, never before.
    pub(crate) tree_counts: Mutex<Option<TreeCounts>>,
    /// Live paths whose name holds a marker (conflict copies), kept like
    /// `tree_counts` once [`Store::live_paths_named`] has walked them once.
    /// Locked after `writer`, never before.
    pub(crate) named_paths: Mutex<Option<NamedPaths>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("data_dir", &self.data_dir).field("device", &self.device).finish()
    }
}

/// A raw key and value from RocksDB.
pub(crate) type KeyValue = (Box<[u8]>, Box<[u8]>);

impl Store {
    /// The device this store belongs to.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    pub(crate) fn format_index_id(&self) -> u64 {
        self.index_id
    }

    /// Visits (key, value) from `start` while keys carry `tag`, until `f` says stop.
    pub(crate) fn for_each_from(
        &self,
        start: &[u8],
        tag: u8,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        for item in self.db.iterator_cf(self.meta(), IteratorMode::From(start, Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            if k.first() != Some(&tag) || !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn meta(&self) -> &ColumnFamily {
        // Both handles are checked at open; a missing one is unreachable.
        self.db.cf_handle(keys::CF_META).unwrap_or_else(|| unreachable!("meta CF checked at open"))
    }

    pub(crate) fn blocks_cf(&self) -> &ColumnFamily {
        self.db.cf_handle(keys::CF_BLOCKS).unwrap_or_else(|| unreachable!("blocks CF checked at open"))
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn rocks_err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::from_rocks(e, &self.data_dir)
    }
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Counters> {
        // A panic while holding the lock cannot leave a half-applied batch, so the
        // counters it guards are still the persisted ones: recover them.
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- generic record access -------------------------------------------------

    pub(crate) fn get_record<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.meta(), key).map_err(|e| self.rocks_err(e))? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// All (key, value) pairs of the meta CF whose key starts with `prefix`.
    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.meta(), IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k, v));
        }
        Ok(out)
    }

    /// Visits each (key, value) of the meta CF starting with `prefix` until `f` says stop.
    pub(crate) fn for_each_prefix(&self, prefix: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>) -> Result<()> {
        for item in self.db.iterator_cf(self.meta(), IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            if !k.starts_with(prefix) || !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn tree_counts(&self) -> MutexGuard<'_, Option<TreeCounts>> {
        self.tree_counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn named_paths(&self) -> MutexGuard<'_, Option<NamedPaths>> {
        self.named_paths.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn pins(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }
}
