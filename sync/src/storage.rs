//! The state the sync core reads and writes, behind a trait: the RocksDB
//! store implements it for real devices, [`MemStorage`] for simulations.

use std::collections::{BTreeMap, HashMap};

use psync_base::{ContentHash, DeviceId, VersionVector, BLOCK_SIZE};

use crate::path::SyncPath;
use crate::record::{FileRecord, RecordKind, VersionId};

/// A storage failure (disk full, corruption, ...); the core stops the
/// operation and reports it, it never half-applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

/// What this device remembers about a peer across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerState {
    /// The peer's index identity these numbers refer to.
    pub index_id: u64,
    /// The peer's sequence number up to which every record is applied here.
    pub applied: u64,
    /// Our sequence number up to which the peer has acknowledged.
    pub acked: u64,
}

/// Storage as the sync core sees it. Every method is atomic.
pub trait SyncStorage {
    /// This device.
    fn device(&self) -> DeviceId;
    /// This index's identity (random; a new one means the index was reset).
    fn index_id(&self) -> u64;
    /// The latest local sequence number.
    fn seq(&self) -> u64;
    /// The record at `path` (live or tombstone).
    fn record(&self, path: &SyncPath) -> Result<Option<FileRecord>, StorageError>;
    /// Records with local sequence numbers above `since`, ascending, at most
    /// `limit`; each path once, at its latest sequence number.
    fn records_since(&self, since: u64, limit: usize) -> Result<Vec<(u64, FileRecord)>, StorageError>;
    /// All live records, sorted by path.
    fn live_records(&self) -> Result<Vec<FileRecord>, StorageError>;
    /// Whether any live record lies strictly below `dir`.
    fn has_live_children(&self, dir: &SyncPath) -> Result<bool, StorageError>;
    /// Tombstones with their local sequence numbers.
    fn tombstones(&self) -> Result<Vec<(u64, FileRecord)>, StorageError>;
    /// Whether the block is stored.
    fn has_block(&self, hash: &ContentHash) -> Result<bool, StorageError>;
    /// A block's bytes.
    fn block(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores a block the core has verified against its hash. Blocks stored
    /// for a version not yet installed must survive garbage collection.
    fn put_block(&mut self, hash: ContentHash, data: Vec<u8>) -> Result<(), StorageError>;
    /// Installs records (remote versions, merges, conflict copies,
    /// tombstones) in one atomic step; each gets a new local sequence number.
    /// Every block they reference is present. `decided_on`: the local
    /// history each path had when the caller decided (`None`: no record).
    /// `false`: a file they would replace has local changes not recorded
    /// yet (open for writing), or a path changed since that decision, so
    /// nothing was installed, and the caller decides again later. The check
    /// and the install are one atomic step.
    fn install(
        &mut self,
        records: Vec<FileRecord>,
        decided_on: &[(SyncPath, Option<VersionVector>)],
    ) -> Result<bool, StorageError>;
    /// Forgets tombstones (every device has them).
    fn drop_tombstones(&mut self, paths: &[SyncPath]) -> Result<(), StorageError>;
    /// What we remember about `peer`.
    fn peer_state(&self, peer: &DeviceId) -> Result<PeerState, StorageError>;
    /// Remembers it.
    fn set_peer_state(&mut self, peer: &DeviceId, state: PeerState) -> Result<(), StorageError>;
}

/// An in-memory [`SyncStorage`] with local edit operations that behave like
/// the filesystem's commits: for tests and simulations.
#[derive(Debug, Clone)]
pub struct MemStorage {
    device: DeviceId,
    index_id: u64,
    seq: u64,
    records: BTreeMap<SyncPath, (u64, FileRecord)>,
    by_seq: BTreeMap<u64, SyncPath>,
    blocks: HashMap<ContentHash, Vec<u8>>,
    peers: HashMap<DeviceId, PeerState>,
    /// Paths "open for writing" (see [`MemStorage::set_busy`]).
    busy: std::collections::BTreeSet<SyncPath>,
}

impl MemStorage {
    /// An empty store for `device`.
    pub fn new(device: DeviceId, index_id: u64) -> Self {
        Self {
            device,
            index_id,
            seq: 0,
            records: BTreeMap::new(),
            by_seq: BTreeMap::new(),
            blocks: HashMap::new(),
            peers: HashMap::new(),
            busy: Default::default(),
        }
    }

    /// Marks `path` as open for writing (installs refuse it) or not.
    pub fn set_busy(&mut self, path: &SyncPath, busy: bool) {
        if busy {
            self.busy.insert(path.clone());
        } else {
            self.busy.remove(path);
        }
    }

    fn put(&mut self, record: FileRecord) {
        self.seq += 1;
        if let Some((old_seq, _)) = self.records.get(&record.path) {
            self.by_seq.remove(old_seq);
        }
        self.by_seq.insert(self.seq, record.path.clone());
        self.records.insert(record.path.clone(), (self.seq, record));
    }

    /// The next version of `path` made here: (vector, version id).
    fn next_version(&self, path: &SyncPath) -> (VersionVector, VersionId) {
        let mut vv = self.records.get(path).map(|(_, r)| r.vv.clone()).unwrap_or_default();
        let counter = vv.advance(self.device, self.seq + 1);
        (vv, VersionId { device: self.device, counter })
    }

    /// Splits `data` into blocks, stores them and returns the block list.
    pub fn store_content(&mut self, data: &[u8]) -> Vec<Option<ContentHash>> {
        data.chunks(BLOCK_SIZE as usize)
            .map(|chunk| {
                let hash = ContentHash::of(chunk);
                self.blocks.insert(hash, chunk.to_vec());
                Some(hash)
            })
            .collect()
    }

    /// A file's bytes (None if a block is missing).
    pub fn content(&self, record: &FileRecord) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(record.size as usize);
        for block in &record.blocks {
            match block {
                Some(hash) => out.extend_from_slice(self.blocks.get(hash)?),
                None => out.resize(out.len() + BLOCK_SIZE as usize, 0),
            }
        }
        out.truncate(record.size as usize);
        Some(out)
    }

    /// Local write (a committed file), as the filesystem would record it.
    pub fn local_write(&mut self, path: &SyncPath, data: &[u8], mtime: i64) -> FileRecord {
        let (vv, version) = self.next_version(path);
        let blocks = self.store_content(data);
        let record = FileRecord {
            path: path.clone(),
            kind: RecordKind::File,
            deleted: false,
            vv,
            version,
            size: data.len() as u64,
            blocks,
            symlink: Vec::new(),
            perm: 0o644,
            mtime,
        };
        self.put(record.clone());
        record
    }

    /// Local mkdir.
    pub fn local_mkdir(&mut self, path: &SyncPath, mtime: i64) -> FileRecord {
        let (vv, version) = self.next_version(path);
        let record = FileRecord::dir(path.clone(), vv, version, 0o755, mtime);
        self.put(record.clone());
        record
    }

    /// Local delete of one path (a tombstone).
    pub fn local_delete(&mut self, path: &SyncPath, mtime: i64) -> Option<FileRecord> {
        let (_, old) = self.records.get(path)?.clone();
        if old.deleted {
            return None;
        }
        let (vv, version) = self.next_version(path);
        let record = FileRecord { vv, version, deleted: true, size: 0, blocks: Vec::new(), mtime, ..old };
        self.put(record.clone());
        Some(record)
    }

    /// The live record at `path`.
    pub fn live(&self, path: &SyncPath) -> Option<&FileRecord> {
        self.records.get(path).map(|(_, r)| r).filter(|r| !r.deleted)
    }

    /// All records (live and tombstones).
    pub fn all(&self) -> impl Iterator<Item = &FileRecord> {
        self.records.values().map(|(_, r)| r)
    }
}

impl SyncStorage for MemStorage {
    fn device(&self) -> DeviceId {
        self.device
    }

    fn index_id(&self) -> u64 {
        self.index_id
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn record(&self, path: &SyncPath) -> Result<Option<FileRecord>, StorageError> {
        Ok(self.records.get(path).map(|(_, r)| r.clone()))
    }

    fn records_since(&self, since: u64, limit: usize) -> Result<Vec<(u64, FileRecord)>, StorageError> {
        Ok(self
            .by_seq
            .range(since + 1..)
            .take(limit)
            .filter_map(|(seq, path)| self.records.get(path).map(|(_, r)| (*seq, r.clone())))
            .collect())
    }

    fn live_records(&self) -> Result<Vec<FileRecord>, StorageError> {
        Ok(self.records.values().filter(|(_, r)| !r.deleted).map(|(_, r)| r.clone()).collect())
    }

    fn has_live_children(&self, dir: &SyncPath) -> Result<bool, StorageError> {
        Ok(self.records.values().any(|(_, r)| !r.deleted && r.path != *dir && r.path.is_within(dir)))
    }

    fn tombstones(&self) -> Result<Vec<(u64, FileRecord)>, StorageError> {
        Ok(self.records.values().filter(|(_, r)| r.deleted).cloned().collect())
    }

    fn has_block(&self, hash: &ContentHash) -> Result<bool, StorageError> {
        Ok(self.blocks.contains_key(hash))
    }

    fn block(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.blocks.get(hash).cloned())
    }

    fn put_block(&mut self, hash: ContentHash, data: Vec<u8>) -> Result<(), StorageError> {
        self.blocks.insert(hash, data);
        Ok(())
    }

    fn install(
        &mut self,
        records: Vec<FileRecord>,
        decided_on: &[(SyncPath, Option<VersionVector>)],
    ) -> Result<bool, StorageError> {
        if records.iter().any(|r| self.busy.contains(&r.path)) {
            return Ok(false);
        }
        for (path, vv) in decided_on {
            if self.records.get(path).map(|(_, r)| &r.vv) != vv.as_ref() {
                return Ok(false);
            }
        }
        for record in records {
            self.put(record);
        }
        Ok(true)
    }

    fn drop_tombstones(&mut self, paths: &[SyncPath]) -> Result<(), StorageError> {
        for path in paths {
            if let Some((seq, r)) = self.records.get(path) {
                if r.deleted {
                    self.by_seq.remove(seq);
                    self.records.remove(path);
                }
            }
        }
        Ok(())
    }

    fn peer_state(&self, peer: &DeviceId) -> Result<PeerState, StorageError> {
        Ok(self.peers.get(peer).copied().unwrap_or_default())
    }

    fn set_peer_state(&mut self, peer: &DeviceId, state: PeerState) -> Result<(), StorageError> {
        self.peers.insert(*peer, state);
        Ok(())
    }
}
