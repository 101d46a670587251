//! The state the sync core reads and writes, behind a trait: the RocksDB
//! store implements it for real devices, [`MemStorage`] for simulations.

use std::collections::{BTreeMap, HashMap};

use psync_base::page::{decode_page, BLOCKS_PER_PAGE};
use psync_base::{ContentHash, DeviceId, VersionVector, BLOCK_SIZE};

use crate::path::SyncPath;
use crate::record::{Blocks, FileRecord, RecordKind, VersionId};

/// A storage failure. Nothing was half-applied; the core holds what it was
/// doing and tries again later, and keeps syncing everything else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// No space left: the core pauses installs and retries with backoff.
    #[error("no space left on the device")]
    DiskFull,
    /// Anything else (I/O, corruption), in words.
    #[error("storage: {0}")]
    Failed(String),
}

/// What [`SyncStorage::install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallOutcome {
    /// Everything was installed, atomically.
    Installed,
    /// Nothing: a file it would replace is open for writing here, or
    /// written and not yet committed. Decide again after the next local change.
    Busy,
    /// Nothing: a path changed since the decision. Decide again.
    Moved,
    /// Nothing: a path cannot take it here now, for a reason that concerns
    /// that path only (a folder still holding local files that do not
    /// sync, a local special file in the way, a local name that differs only
    /// in its Unicode form). Tried again later.
    Blocked(String),
}

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

/// An earlier content of a file, as its history keeps it: for three-way
/// merges, the version both sides of a conflict started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastVersion {
    /// The history it had.
    pub vv: VersionVector,
    /// Its size in bytes.
    pub size: u64,
    /// Its block hashes (`None`: a hole), files of at most
    /// [`crate::record::LISTED_BLOCKS_MAX`] blocks only.
    pub blocks: Vec<Option<ContentHash>>,
}

/// Earlier versions [`MemStorage`] keeps per path (count).
const MEM_HISTORY_VERSIONS: usize = 32;

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
    /// A block's bytes; `None` if it is not here, or is here but damaged
    /// (a peer then asks elsewhere).
    fn block(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores a block the core has verified against its hash. Blocks stored
    /// for a version not yet installed must survive garbage collection.
    fn put_block(&mut self, hash: ContentHash, data: Vec<u8>) -> Result<(), StorageError>;
    /// The bytes of a page of block hashes (`psync_base::page`), if here.
    fn page(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores a page the core has verified against its hash and format.
    fn put_page(&mut self, hash: ContentHash, data: Vec<u8>) -> Result<(), StorageError>;
    /// Installs records (remote versions, merges, conflict copies,
    /// tombstones) in one atomic step; each gets a new local sequence number.
    /// Every block and page they reference is present. `decided_on`: the
    /// local history each path had when the caller decided (`None`: no
    /// record). Unless it answers [`InstallOutcome::Installed`], nothing was
    /// installed. The checks and the install are one atomic step.
    fn install(
        &mut self,
        records: Vec<FileRecord>,
        decided_on: &[(SyncPath, Option<VersionVector>)],
    ) -> Result<InstallOutcome, StorageError>;
    /// Forgets tombstones (every device has them).
    fn drop_tombstones(&mut self, paths: &[SyncPath]) -> Result<(), StorageError>;
    /// What we remember about `peer`.
    fn peer_state(&self, peer: &DeviceId) -> Result<PeerState, StorageError>;
    /// Remembers it.
    fn set_peer_state(&mut self, peer: &DeviceId, state: PeerState) -> Result<(), StorageError>;
    /// Earlier contents of the file now at `path`, oldest first (its
    /// current content included). Storage that keeps no history has none,
    /// and concurrent edits then keep both versions.
    fn history(&self, _path: &SyncPath) -> Result<Vec<PastVersion>, StorageError> {
        Ok(Vec::new())
    }
}

/// The bytes of a file of `size` bytes listed block by block (`None`: a
/// hole), or `None` when a block is not here: how the core reads the few
/// files it reads itself (`.psyncignore`, notes to merge).
pub(crate) fn listed_content<S: SyncStorage + ?Sized>(
    storage: &S,
    size: u64,
    blocks: &[Option<ContentHash>],
) -> Result<Option<Vec<u8>>, StorageError> {
    let mut out = Vec::with_capacity(size as usize);
    for block in blocks {
        match block {
            Some(hash) => match storage.block(hash)? {
                Some(data) => out.extend_from_slice(&data),
                None => return Ok(None),
            },
            None => out.resize(out.len() + BLOCK_SIZE as usize, 0),
        }
    }
    out.truncate(size as usize);
    Ok(Some(out))
}

/// Records read from storage per step of [`follow_changes`].
const FOLLOW_BATCH_RECORDS: usize = 1024;

/// Hands every record the storage changed after `*at_seq` to `take`, in
/// sequence order, and moves `*at_seq` to the storage's sequence number:
/// how a view kept beside the storage (the anti-entropy tree, a read-only
/// device's own changes) stays up to date at the cost of what changed.
pub(crate) fn follow_changes<S: SyncStorage + ?Sized>(
    storage: &S,
    at_seq: &mut u64,
    mut take: impl FnMut(&FileRecord),
) -> Result<(), StorageError> {
    let target = storage.seq();
    while *at_seq < target {
        let batch = storage.records_since(*at_seq, FOLLOW_BATCH_RECORDS)?;
        for (_, record) in &batch {
            take(record);
        }
        *at_seq = match batch.last() {
            Some((last, _)) if batch.len() == FOLLOW_BATCH_RECORDS => *last,
            _ => target,
        };
    }
    Ok(())
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
    pages: HashMap<ContentHash, Vec<u8>>,
    peers: HashMap<DeviceId, PeerState>,
    /// Earlier contents per path (see [`SyncStorage::history`]).
    history: BTreeMap<SyncPath, Vec<PastVersion>>,
    /// Paths "open for writing" (see [`MemStorage::set_busy`]).
    busy: std::collections::BTreeSet<SyncPath>,
    /// Paths that refuse installs, with why (see [`MemStorage::set_blocked`]).
    blocked: BTreeMap<SyncPath, String>,
    /// Installs fail with "disk full" while set.
    disk_full: bool,
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
            pages: HashMap::new(),
            peers: HashMap::new(),
            history: BTreeMap::new(),
            busy: Default::default(),
            blocked: BTreeMap::new(),
            disk_full: false,
        }
    }

    /// Makes installs touching `path` refuse with `reason` (`None`: accept
    /// again), as a folder holding local-only files does on a real store.
    pub fn set_blocked(&mut self, path: &SyncPath, reason: Option<&str>) {
        match reason {
            Some(r) => self.blocked.insert(path.clone(), r.to_string()),
            None => self.blocked.remove(path),
        };
    }

    /// Makes installs and block writes fail as on a full disk, or not.
    pub fn set_disk_full(&mut self, full: bool) {
        self.disk_full = full;
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
        if let (RecordKind::File, false, Blocks::Listed(list)) = (record.kind, record.deleted, &record.blocks) {
            let past = self.history.entry(record.path.clone()).or_default();
            past.push(PastVersion { vv: record.vv.clone(), size: record.size, blocks: list.clone() });
            if past.len() > MEM_HISTORY_VERSIONS {
                past.remove(0);
            }
        }
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

    /// Splits `data` into blocks (all-zero ones become holes), stores them
    /// (and the pages of a large file) and returns the record's block list.
    pub fn store_content(&mut self, data: &[u8]) -> Blocks {
        let list = data
            .chunks(BLOCK_SIZE as usize)
            .map(|chunk| {
                if chunk.iter().all(|&b| b == 0) {
                    return None;
                }
                let hash = ContentHash::of(chunk);
                self.blocks.insert(hash, chunk.to_vec());
                Some(hash)
            })
            .collect();
        let (blocks, pages) = Blocks::of_file(list);
        self.pages.extend(pages);
        blocks
    }

    /// A file's block list, its pages expanded (None if a page is missing).
    pub fn block_list(&self, record: &FileRecord) -> Option<Vec<Option<ContentHash>>> {
        let count = record.block_count() as usize;
        let mut list = match &record.blocks {
            Blocks::Listed(list) => list.clone(),
            Blocks::Paged(pages) => {
                let mut list = Vec::with_capacity(count);
                for (i, page) in pages.iter().enumerate() {
                    list.resize(i * BLOCKS_PER_PAGE, None);
                    if let Some(hash) = page {
                        list.extend(decode_page(self.pages.get(hash)?).ok()?);
                    }
                }
                list
            }
        };
        list.resize(count, None);
        Some(list)
    }

    /// A file's bytes (None if a block or page is missing).
    pub fn content(&self, record: &FileRecord) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(record.size as usize);
        for block in self.block_list(record)? {
            match block {
                Some(hash) => out.extend_from_slice(self.blocks.get(&hash)?),
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
            xattrs: Some(Vec::new()),
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
        let record = FileRecord {
            vv,
            version,
            deleted: true,
            size: 0,
            blocks: Blocks::default(),
            symlink: Vec::new(),
            mtime,
            xattrs: None,
            ..old
        };
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
        if self.disk_full {
            return Err(StorageError::DiskFull);
        }
        self.blocks.insert(hash, data);
        Ok(())
    }

    fn page(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.pages.get(hash).cloned())
    }

    fn put_page(&mut self, hash: ContentHash, data: Vec<u8>) -> Result<(), StorageError> {
        if self.disk_full {
            return Err(StorageError::DiskFull);
        }
        self.pages.insert(hash, data);
        Ok(())
    }

    fn install(
        &mut self,
        records: Vec<FileRecord>,
        decided_on: &[(SyncPath, Option<VersionVector>)],
    ) -> Result<InstallOutcome, StorageError> {
        if self.disk_full {
            return Err(StorageError::DiskFull);
        }
        if let Some(reason) = records.iter().find_map(|r| self.blocked.get(&r.path)) {
            return Ok(InstallOutcome::Blocked(reason.clone()));
        }
        if records.iter().any(|r| self.busy.contains(&r.path)) {
            return Ok(InstallOutcome::Busy);
        }
        for (path, vv) in decided_on {
            if self.records.get(path).map(|(_, r)| &r.vv) != vv.as_ref() {
                return Ok(InstallOutcome::Moved);
            }
        }
        for record in records {
            self.put(record);
        }
        Ok(InstallOutcome::Installed)
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

    fn history(&self, path: &SyncPath) -> Result<Vec<PastVersion>, StorageError> {
        Ok(self.history.get(path).cloned().unwrap_or_default())
    }
}
