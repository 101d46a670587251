//! [`Store`]: the RocksDB-backed source of truth of one device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use psync_base::{codec, validate_name, ContentHash, DeviceId, VersionVector};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::de::DeserializeOwned;

use crate::error::{Result, StoreError};
use crate::keys;
use crate::records::*;

/// Name of the RocksDB directory inside a data dir.
pub const DB_DIR_NAME: &str = "db";

/// The store of one device. All mutations go through one writer lock and
/// are each applied as a single RocksDB `WriteBatch`, so a crash leaves either
/// all or nothing of any operation. Reads are lock-free.
pub struct Store {
    db: DB,
    data_dir: PathBuf,
    device: DeviceId,
    index_id: u64,
    writer: Mutex<Counters>,
    /// Opened as a read-only snapshot: every mutation fails with `ReadOnly`.
    read_only: bool,
    /// Pins per inode: open handles plus the kernel's lookup references.
    /// An unlinked inode that is pinned becomes an orphan and lives until
    /// its last pin goes (as ext4 keeps an inode the kernel still uses).
    pins: Mutex<HashMap<u64, u64>>,
    /// Open handles that may write, per inode: content the kernel may
    /// still hold or send, so a peer's version must not replace it.
    writers: Mutex<HashMap<u64, u64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("data_dir", &self.data_dir).field("device", &self.device).finish()
    }
}

/// A raw key and value from RocksDB.
pub(crate) type KeyValue = (Box<[u8]>, Box<[u8]>);

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
#[derive(Debug, Clone)]
pub enum Change {
    /// A live object and its current state.
    Live(Box<Inode>),
    /// A deletion.
    Deleted(Tombstone),
}

/// Pending writes of one operation plus the inodes it has touched, so that
/// later steps of the same operation read their own writes.
pub(crate) struct Txn<'s> {
    pub(crate) store: &'s Store,
    pub(crate) batch: WriteBatch,
    inodes: HashMap<u64, Option<Inode>>,
    pub(crate) counters: Counters,
    /// Applying a peer's version: the sync-index entry comes from the peer,
    /// so the local-change hooks stay quiet.
    pub(crate) remote: bool,
    /// Blocks put in this batch (dedup within the batch).
    new_blocks: Vec<ContentHash>,
    /// Directory entries written by this operation (`None`: removed), so
    /// later steps of the same batch see them.
    dirents: HashMap<Vec<u8>, Option<DirEntry>>,
    /// Sync-index entries written by this operation.
    pub(crate) paths: HashMap<Vec<u8>, crate::sync_index::PathEntry>,
    /// Inodes that lost their last link: deleted at commit, or kept as
    /// orphans if pinned. Decided under the pins lock, atomically with the
    /// write, so a concurrent `lookup_pinned` either keeps them or misses them.
    unlinked: Vec<Inode>,
}

fn rocks(dir: &Path) -> impl Fn(rocksdb::Error) -> StoreError + '_ {
    move |e| StoreError::from_rocks(e, dir)
}

/// Prefix of the directory a store is built in before it becomes `db`.
const CREATING_PREFIX: &str = "db.creating-";

fn io_err(what: &Path, e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(28) => StoreError::DiskFull, // ENOSPC
        _ => StoreError::Io(format!("{}: {e}", what.display())),
    }
}

/// Makes a new store in `data_dir/db` so that a kill at any moment leaves
/// either no store or a complete one: the store is built and synced in a
/// directory of its own, then renamed into place (an atomic step). What an
/// interrupted creation leaves is cleared first: build directories of dead
/// processes, and a `db` without `CURRENT` that holds only the files
/// RocksDB writes while creating (an older psync built in place).
fn create_atomically(data_dir: &Path, device: DeviceId) -> Result<()> {
    let db_dir = data_dir.join(DB_DIR_NAME);
    clear_interrupted_creations(data_dir)?;
    if db_dir.exists() {
        let only_rocksdb_files = std::fs::read_dir(&db_dir)
            .map_err(|e| io_err(&db_dir, e))?
            .all(|entry| entry.is_ok_and(|e| is_rocksdb_creation_file(&e.file_name().to_string_lossy())));
        if !only_rocksdb_files {
            return Err(StoreError::NotAStore(data_dir.to_path_buf()));
        }
        std::fs::remove_dir_all(&db_dir).map_err(|e| io_err(&db_dir, e))?;
    }
    let building = data_dir.join(format!("{CREATING_PREFIX}{}-{:016x}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(&building).map_err(|e| io_err(&building, e))?;
    let built = (|| {
        let (opts, cfs) = Store::rocks_options(false, true);
        let db = DB::open_cf_descriptors(&opts, &building, cfs).map_err(rocks(data_dir))?;
        Store::initialise(&db, data_dir, device)?;
        db.flush_wal(true).map_err(rocks(data_dir))?;
        drop(db);
        sync_dir(&building)?;
        if db_dir.join("CURRENT").exists() {
            // Another process finished first: its store is the one.
            return Ok(false);
        }
        std::fs::rename(&building, &db_dir).map_err(|e| io_err(&db_dir, e))?;
        sync_dir(data_dir)?;
        Ok(true)
    })();
    if !matches!(built, Ok(true)) {
        let _ = std::fs::remove_dir_all(&building);
    }
    built.map(|_| ())
}

/// Removes build directories left by processes that no longer run.
fn clear_interrupted_creations(data_dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(data_dir, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(CREATING_PREFIX) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| io_err(&path, e))?;
        }
    }
    Ok(())
}

/// Files RocksDB writes while it creates a database, before `CURRENT`.
fn is_rocksdb_creation_file(name: &str) -> bool {
    name == "LOCK"
        || name == "IDENTITY"
        || name.starts_with("LOG")
        || name.starts_with("OPTIONS-")
        || name.starts_with("MANIFEST-")
        || name.ends_with(".log")
        || name.ends_with(".dbtmp")
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

impl Store {
    /// Opens the store in `data_dir`, creating it (for `device`) if the data dir
    /// has none yet. Fails clearly if it is locked, foreign or from a newer psync.
    pub fn open_or_create(data_dir: &Path, device: DeviceId) -> Result<Store> {
        Self::open_inner(data_dir, Some(device))
    }

    /// Opens an existing store; [`StoreError::NotAStore`] if there is none.
    pub fn open(data_dir: &Path) -> Result<Store> {
        Self::open_inner(data_dir, None)
    }

    /// Opens a read-only snapshot of an existing store, which works while a
    /// daemon has it open (RocksDB takes no lock for read-only instances and
    /// replays the write-ahead log into memory). Mutations fail with
    /// [`StoreError::ReadOnly`].
    pub fn open_read_only(data_dir: &Path) -> Result<Store> {
        let db_dir = data_dir.join(DB_DIR_NAME);
        if !db_dir.join("CURRENT").exists() {
            return Err(StoreError::NotAStore(data_dir.to_path_buf()));
        }
        let (opts, cfs) = Self::rocks_options(true, false);
        let db = DB::open_cf_descriptors_read_only(&opts, &db_dir, cfs, false)
            .map_err(|e| StoreError::from_rocks(e, data_dir))?;
        let meta = db.cf_handle(keys::CF_META).ok_or_else(|| StoreError::NotAStore(data_dir.to_path_buf()))?;
        let format: FormatRecord = match db.get_cf(meta, keys::FORMAT).map_err(rocks(data_dir))? {
            Some(bytes) => codec::decode(&bytes)?,
            None => return Err(StoreError::NotAStore(data_dir.to_path_buf())),
        };
        let counters = Self::check_format_and_load_counters(&db, meta, data_dir, &format)?;
        Ok(Store {
            db,
            data_dir: data_dir.to_path_buf(),
            device: format.device,
            index_id: format.index_id,
            writer: Mutex::new(counters),
            read_only: true,
            pins: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this is a read-only snapshot.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether `data_dir` holds a store (complete: creation is atomic).
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(DB_DIR_NAME).join("CURRENT").exists()
    }

    fn open_inner(data_dir: &Path, create_for: Option<DeviceId>) -> Result<Store> {
        let db_dir = data_dir.join(DB_DIR_NAME);
        let exists = db_dir.join("CURRENT").exists();
        if !exists {
            let Some(device) = create_for else { return Err(StoreError::NotAStore(data_dir.to_path_buf())) };
            create_atomically(data_dir, device)?;
        }
        let (opts, cfs) = Self::rocks_options(true, create_for.is_some());
        let db = DB::open_cf_descriptors(&opts, &db_dir, cfs).map_err(|e| {
            let err = StoreError::from_rocks(e, data_dir);
            match err {
                StoreError::Io(text) if text.contains("Column family not found") => {
                    StoreError::NotAStore(data_dir.to_path_buf())
                }
                other => other,
            }
        })?;
        let meta = db.cf_handle(keys::CF_META).ok_or_else(|| StoreError::NotAStore(data_dir.to_path_buf()))?;
        let format: Option<FormatRecord> = match db.get_cf(meta, keys::FORMAT).map_err(rocks(data_dir))? {
            Some(bytes) => Some(codec::decode(&bytes)?),
            None => None,
        };
        let mut migrate_from = None;
        let (device, index_id, counters) = match (format, create_for) {
            (Some(format), _) => {
                let counters = Self::check_format_and_load_counters(&db, meta, data_dir, &format)?;
                if format.format_version < FORMAT_VERSION {
                    migrate_from = Some(format.clone());
                }
                (format.device, format.index_id, counters)
            }
            // A store made by a psync whose creation was not atomic yet and
            // was interrupted before its first batch (the meta CF is empty).
            (None, Some(device)) if Self::is_empty(&db, meta, data_dir)? => {
                let (counters, index_id) = Self::initialise(&db, data_dir, device)?;
                (device, index_id, counters)
            }
            (None, _) => return Err(StoreError::NotAStore(data_dir.to_path_buf())),
        };
        let store = Store {
            db,
            data_dir: data_dir.to_path_buf(),
            device,
            index_id,
            writer: Mutex::new(counters),
            read_only: false,
            pins: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
        };
        if let Some(format) = migrate_from {
            store.migrate(format)?;
        }
        store.reap_orphans()?;
        Ok(store)
    }

    /// Brings a store of an older format up to [`FORMAT_VERSION`], in one batch.
    fn migrate(&self, mut format: FormatRecord) -> Result<()> {
        tracing::info!(from = format.format_version, to = FORMAT_VERSION, "upgrading the store's format");
        self.mutate(true, |txn| {
            if format.format_version < 2 {
                txn.drop_unsyncable_index_entries()?;
            }
            format.format_version = FORMAT_VERSION;
            txn.batch.put_cf(self.meta(), keys::FORMAT, codec::encode(&format)?);
            Ok(())
        })
    }

    /// RocksDB tuning: bloom filters (so "do we have this block?" is cheap for
    /// new content) and one shared block cache. BlobDB for the blocks was
    /// measured: reads 3x slower, writes no faster (docs/benchmarks.md).
    fn rocks_options(exists: bool, create: bool) -> (Options, Vec<ColumnFamilyDescriptor>) {
        let cache = rocksdb::Cache::new_lru_cache(32 << 20);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);

        let mut opts = Options::default();
        opts.create_if_missing(!exists);
        opts.create_missing_column_families(create);
        opts.set_paranoid_checks(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        // Both CFs flush together, so a crash never leaves a record whose block is missing.
        opts.set_atomic_flush(true);
        opts.set_max_open_files(256);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(16 << 20);

        let mut blocks = Options::default();
        blocks.set_block_based_table_factory(&table);
        blocks.set_compression_type(DBCompressionType::Lz4);
        blocks.set_write_buffer_size(32 << 20);
        let cfs = vec![
            ColumnFamilyDescriptor::new(keys::CF_META, opts.clone()),
            ColumnFamilyDescriptor::new(keys::CF_BLOCKS, blocks),
        ];
        (opts, cfs)
    }

    /// Refuses a store from a newer psync; loads the allocation counters.
    fn check_format_and_load_counters(
        db: &DB,
        meta: &ColumnFamily,
        data_dir: &Path,
        format: &FormatRecord,
    ) -> Result<Counters> {
        if format.format_version > FORMAT_VERSION {
            return Err(StoreError::NewerFormat {
                path: data_dir.to_path_buf(),
                found: format.format_version,
                supported: FORMAT_VERSION,
            });
        }
        match db.get_cf(meta, keys::COUNTERS).map_err(rocks(data_dir))? {
            Some(bytes) => Ok(codec::decode(&bytes)?),
            None => Err(StoreError::Corrupt("counters record missing".into())),
        }
    }

    fn is_empty(db: &DB, meta: &ColumnFamily, data_dir: &Path) -> Result<bool> {
        match db.iterator_cf(meta, IteratorMode::Start).next() {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(e)) => Err(StoreError::from_rocks(e, data_dir)),
        }
    }

    /// Writes the format record, counters and root directory in one synced batch.
    fn initialise(db: &DB, data_dir: &Path, device: DeviceId) -> Result<(Counters, u64)> {
        let meta = db.cf_handle(keys::CF_META).ok_or_else(|| StoreError::NotAStore(data_dir.to_path_buf()))?;
        let now = Timestamp::now();
        let counters = Counters { next_ino: ROOT_INO + 1, next_seq: 1 };
        let root = Inode {
            ino: ROOT_INO,
            kind: NodeKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            atime: now,
            mtime: now,
            ctime: now,
            links: Vec::new(),
            subdirs: 0,
            content: Content::default(),
            symlink: Vec::new(),
            rdev: 0,
            file_id: FileId(0),
            vv: VersionVector::new(),
            seq: 0,
            committed_seq: 0,
            dirty: false,
        };
        let mut batch = WriteBatch::default();
        let format = FormatRecord { format_version: FORMAT_VERSION, device, created_at: now, index_id: rand::random() };
        batch.put_cf(meta, keys::FORMAT, codec::encode(&format)?);
        batch.put_cf(meta, keys::COUNTERS, codec::encode(&counters)?);
        batch.put_cf(meta, keys::inode(ROOT_INO), codec::encode(&root)?);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo).map_err(rocks(data_dir))?;
        Ok((counters, format.index_id))
    }

    /// Removes inodes that were unlinked while open before the last shutdown.
    fn reap_orphans(&self) -> Result<()> {
        let orphans: Vec<u64> =
            self.scan_prefix(&[keys::TAG_ORPHAN])?.into_iter().filter_map(|(k, _)| keys::u64_at(&k, 1)).collect();
        if orphans.is_empty() {
            return Ok(());
        }
        tracing::info!(count = orphans.len(), "removing files that were deleted while open");
        self.mutate(false, |txn| {
            for ino in &orphans {
                txn.batch.delete_cf(self.meta(), keys::orphan(*ino));
                txn.delete_inode(*ino);
            }
            Ok(())
        })
    }

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

    fn lock_writer(&self) -> MutexGuard<'_, Counters> {
        // A panic while holding the lock cannot leave a half-applied batch, so the
        // counters it guards are still the persisted ones: recover them.
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` under the writer lock and applies its batch atomically.
    pub(crate) fn mutate<T>(&self, durable: bool, f: impl FnOnce(&mut Txn<'_>) -> Result<T>) -> Result<T> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let mut guard = self.lock_writer();
        let mut txn = Txn {
            store: self,
            batch: WriteBatch::default(),
            inodes: HashMap::new(),
            counters: *guard,
            new_blocks: Vec::new(),
            remote: false,
            dirents: HashMap::new(),
            paths: HashMap::new(),
            unlinked: Vec::new(),
        };
        let out = f(&mut txn)?;
        let counters = txn.counters;
        txn.commit(durable)?;
        // Only a successful write advances the in-memory counters.
        *guard = counters;
        Ok(out)
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

    // ---- reads -----------------------------------------------------------------

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
        for item in self.db.iterator_cf(self.meta(), IteratorMode::From(&start, Direction::Forward)) {
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
            .db
            .get_cf(self.blocks_cf(), hash.as_bytes())
            .map_err(|e| self.rocks_err(e))?
            .ok_or_else(|| StoreError::Corrupt(format!("block {hash} is missing")))?;
        if ContentHash::of(&data) != *hash {
            return Err(StoreError::Corrupt(format!("block {hash} does not match its hash")));
        }
        Ok(data)
    }

    /// Whether the block is stored (for sync: fetch only what is missing).
    pub fn has_block(&self, hash: &ContentHash) -> Result<bool> {
        Ok(self.db.get_pinned_cf(self.blocks_cf(), hash.as_bytes()).map_err(|e| self.rocks_err(e))?.is_some())
    }

    /// A page of block hashes, verified against its hash.
    pub fn page(&self, hash: &ContentHash) -> Result<Page> {
        let bytes = self
            .db
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

    /// The tombstone of a deleted object.
    pub fn tombstone(&self, file_id: FileId) -> Result<Option<Tombstone>> {
        self.get_record(&keys::tombstone(file_id))
    }

    /// The highest sequence number assigned so far (0 before any change).
    pub fn current_seq(&self) -> u64 {
        self.lock_writer().next_seq - 1
    }

    /// Changes with sequence number greater than `since`, in order, at most `limit`.
    /// Each object appears once, at its latest change.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<(u64, Change)>> {
        let start = keys::change(since.saturating_add(1));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.meta(), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            if k.first() != Some(&keys::TAG_CHANGE) || out.len() >= limit {
                break;
            }
            let seq = keys::u64_at(&k, 1).ok_or_else(|| StoreError::Corrupt("short change key".into()))?;
            let change = match codec::decode::<ChangeRef>(&v)? {
                ChangeRef::Live(ino) => Change::Live(Box::new(self.inode(ino)?)),
                ChangeRef::Deleted(id) => Change::Deleted(
                    self.tombstone(id)?
                        .ok_or_else(|| StoreError::Corrupt(format!("change {seq}: tombstone missing")))?,
                ),
            };
            out.push((seq, change));
        }
        Ok(out)
    }

    // ---- pins (open handles, kernel references) --------------------------------

    /// A handle that may write `ino` was opened.
    pub fn writer_opened(&self, ino: u64) {
        *self.writers.lock().unwrap_or_else(|p| p.into_inner()).entry(ino).or_insert(0) += 1;
    }

    /// That handle was closed (after its content was committed).
    pub fn writer_closed(&self, ino: u64) {
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = writers.get_mut(&ino) {
            *count -= 1;
            if *count == 0 {
                writers.remove(&ino);
            }
        }
    }

    /// Whether `ino` is open for writing.
    pub fn has_writer(&self, ino: u64) -> bool {
        self.writers.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&ino)
    }

    fn pins(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `ino` `n` times (an open handle, or a lookup the kernel counts).
    pub fn pin(&self, ino: u64, n: u64) {
        let mut pins = self.pins();
        let count = pins.entry(ino).or_insert(0);
        *count = count.saturating_add(n);
    }

    /// Drops `n` pins of `ino`; an unlinked inode is deleted with its last pin.
    pub fn unpin(&self, ino: u64, n: u64) -> Result<()> {
        let last = {
            let mut pins = self.pins();
            match pins.get_mut(&ino) {
                Some(count) if *count > n => {
                    *count -= n;
                    false
                }
                Some(_) => {
                    pins.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if !last {
            return Ok(());
        }
        self.mutate(false, |txn| {
            // Re-check under the writer lock: a new pin may have arrived.
            if txn.store.is_pinned(ino) {
                return Ok(());
            }
            if let Some(node) = txn.inode_opt(ino)? {
                if node.links.is_empty() && node.ino != ROOT_INO {
                    txn.batch.delete_cf(self.meta(), keys::orphan(ino));
                    txn.delete_inode(ino);
                }
            }
            Ok(())
        })
    }

    fn is_pinned(&self, ino: u64) -> bool {
        self.pins().contains_key(&ino)
    }

    // ---- mutations -------------------------------------------------------------

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
        let seq = self.mutate(durable, |txn| {
            let Some(mut node) = txn.inode_opt(ino)? else { return Ok(None) };
            if !node.dirty || node.links.is_empty() {
                return Ok(None);
            }
            txn.record_change(&mut node);
            let path = txn.path_of(&node)?;
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
            txn.batch.put_cf(txn.store.meta(), keys::version(node.file_id, node.seq), codec::encode(&version)?);
            node.committed_seq = node.seq;
            node.dirty = false;
            txn.links_changed(&node)?;
            let seq = node.seq;
            txn.put_inode(node);
            Ok(Some(seq))
        })?;
        Ok(seq)
    }

    /// Writes all memtables to SST files (both column families atomically).
    /// Not needed for durability (the WAL gives that); used before measuring
    /// disk usage and before a clean shutdown to shorten the next open.
    pub fn flush_memtables(&self) -> Result<()> {
        let opts = rocksdb::FlushOptions::default();
        self.db.flush_cfs_opt(&[self.meta(), self.blocks_cf()], &opts).map_err(|e| self.rocks_err(e))
    }

    /// Makes every write so far durable (syncs the write-ahead log).
    pub fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.db.flush_wal(true).map_err(|e| self.rocks_err(e))
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

    /// Removes the tombstone of `file_id` (sync calls this once every device
    /// has acknowledged the delete).
    pub fn remove_tombstone(&self, file_id: FileId) -> Result<()> {
        self.mutate(false, |txn| {
            if let Some(t) = txn.store.tombstone(file_id)? {
                txn.batch.delete_cf(txn.store.meta(), keys::tombstone(file_id));
                txn.batch.delete_cf(txn.store.meta(), keys::change(t.seq));
            }
            Ok(())
        })
    }

    pub(crate) fn dir_has_entries(&self, dir: u64) -> Result<bool> {
        let mut any = false;
        self.for_each_prefix(&keys::dirent_prefix(dir), |_, _| {
            any = true;
            Ok(false)
        })?;
        Ok(any)
    }

    /// Runs `f` with the writer lock held (GC uses this so no write races a sweep).
    pub(crate) fn with_writer_locked<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _guard = self.lock_writer();
        f()
    }
}

impl Txn<'_> {
    fn commit(mut self, durable: bool) -> Result<()> {
        let meta = self.store.meta();
        if self.batch.is_empty() && self.inodes.is_empty() {
            return if durable { self.store.sync() } else { Ok(()) };
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
                self.batch.put_cf(meta, keys::orphan(node.ino), []);
            } else {
                self.inodes.insert(node.ino, None);
            }
        }
        let mut batch = self.batch;
        for (ino, node) in &self.inodes {
            match node {
                Some(node) => batch.put_cf(meta, keys::inode(*ino), codec::encode(node)?),
                None => batch.delete_cf(meta, keys::inode(*ino)),
            }
        }
        batch.put_cf(meta, keys::COUNTERS, codec::encode(&self.counters)?);
        let mut wo = WriteOptions::default();
        wo.set_sync(durable);
        let written = self.store.db.write_opt(batch, &wo).map_err(|e| self.store.rocks_err(e));
        drop(pins);
        written
    }

    pub(crate) fn inode_opt(&mut self, ino: u64) -> Result<Option<Inode>> {
        if let Some(cached) = self.inodes.get(&ino) {
            return Ok(cached.clone());
        }
        self.store.get_record(&keys::inode(ino))
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
        if !self.new_blocks.contains(&hash) && !self.store.has_block(&hash)? {
            self.batch.put_cf(self.store.blocks_cf(), hash.as_bytes(), data);
            self.new_blocks.push(hash);
        }
        Ok(hash)
    }

    /// Writes `data` at `offset` (at the end if `None`); returns (offset, new size).
    fn write_file(&mut self, ino: u64, offset: Option<u64>, data: &[u8], now: Timestamp) -> Result<(u64, u64)> {
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

    /// Assigns the next sequence number to `node` as its latest change.
    pub(crate) fn record_change(&mut self, node: &mut Inode) {
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        let meta = self.store.meta();
        if node.seq != 0 {
            self.batch.delete_cf(meta, keys::change(node.seq));
        }
        node.seq = seq;
        node.vv.advance(self.store.device, seq);
        match codec::encode(&ChangeRef::Live(node.ino)) {
            Ok(bytes) => self.batch.put_cf(meta, keys::change(seq), bytes),
            Err(_) => unreachable!("a ChangeRef always encodes"),
        }
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
    fn move_link(
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
    /// last link the inode is tombstoned, then deleted or kept as an orphan
    /// while open.
    pub(crate) fn remove_link(&mut self, parent: u64, name: &[u8], ino: u64, now: Timestamp) -> Result<()> {
        let meta = self.store.meta();
        let removed_path = self.link_path(parent, name)?;
        let mut node = self.inode(ino)?;
        self.path_changed(&removed_path, node.kind, true, now.secs)?;
        let path = self.path_of(&node)?;
        node.links.retain(|l| !(l.parent == parent && l.name == name));
        node.ctime = now;
        self.delete_dirent(parent, name);
        if !node.links.is_empty() {
            self.put_inode(node);
            return Ok(());
        }
        // Last link: record the delete for sync.
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        if node.seq != 0 {
            self.batch.delete_cf(meta, keys::change(node.seq));
        }
        let mut vv = node.vv.clone();
        vv.advance(self.store.device, seq);
        let tombstone = Tombstone {
            file_id: node.file_id,
            kind: node.kind,
            path,
            vv,
            deleted_at: now,
            deleted_by: self.store.device,
            seq,
        };
        self.batch.put_cf(meta, keys::tombstone(node.file_id), codec::encode(&tombstone)?);
        self.batch.put_cf(meta, keys::change(seq), codec::encode(&ChangeRef::Deleted(node.file_id))?);
        node.seq = 0;
        self.put_inode(node.clone());
        self.unlinked.push(node);
        Ok(())
    }

    pub(crate) fn delete_inode(&mut self, ino: u64) {
        self.inodes.insert(ino, None);
    }
}

/// Loads pages lazily and remembers them for the duration of one read.
#[derive(Default)]
struct PageCache {
    pages: HashMap<u64, Page>,
}

impl PageCache {
    fn block_hash(&mut self, store: &Store, content: &Content, index: u64) -> Result<Option<ContentHash>> {
        let page_index = index / BLOCKS_PER_PAGE;
        let Some(Some(page_hash)) = content.pages.get(page_index as usize) else { return Ok(None) };
        let page = match self.pages.entry(page_index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(store.page(page_hash)?),
        };
        Ok(page.blocks.get((index % BLOCKS_PER_PAGE) as usize).copied().flatten())
    }
}

/// Edits a content value block by block, then writes only the pages it changed.
struct ContentEditor {
    content: Content,
    dirty_pages: HashMap<u64, Page>,
    cache: PageCache,
}

impl ContentEditor {
    fn new(content: Content) -> Self {
        Self { content, dirty_pages: HashMap::new(), cache: PageCache::default() }
    }

    fn block_hash(&mut self, store: &Store, index: u64) -> Result<Option<ContentHash>> {
        let page_index = index / BLOCKS_PER_PAGE;
        if let Some(page) = self.dirty_pages.get(&page_index) {
            return Ok(page.blocks.get((index % BLOCKS_PER_PAGE) as usize).copied().flatten());
        }
        self.cache.block_hash(store, &self.content, index)
    }

    fn page_mut(&mut self, store: &Store, page_index: u64) -> Result<&mut Page> {
        if !self.dirty_pages.contains_key(&page_index) {
            let page = match self.content.pages.get(page_index as usize) {
                Some(Some(hash)) => store.page(hash)?,
                _ => Page::default(),
            };
            self.dirty_pages.insert(page_index, page);
        }
        Ok(self.dirty_pages.entry(page_index).or_default())
    }

    fn set_block(&mut self, store: &Store, index: u64, hash: Option<ContentHash>) -> Result<()> {
        let slot = (index % BLOCKS_PER_PAGE) as usize;
        let page = self.page_mut(store, index / BLOCKS_PER_PAGE)?;
        if page.blocks.len() <= slot {
            page.blocks.resize(slot + 1, None);
        }
        page.blocks[slot] = hash;
        Ok(())
    }

    /// Drops every block at `index` and beyond.
    fn drop_blocks_from(&mut self, store: &Store, index: u64) -> Result<()> {
        let first_page = index / BLOCKS_PER_PAGE;
        let keep_pages = index.div_ceil(BLOCKS_PER_PAGE) as usize;
        self.content.pages.truncate(keep_pages);
        self.dirty_pages.retain(|&p, _| p < keep_pages as u64);
        let slot = (index % BLOCKS_PER_PAGE) as usize;
        if slot != 0 {
            let page = self.page_mut(store, first_page)?;
            page.blocks.truncate(slot);
        }
        Ok(())
    }

    /// Stores the changed pages and returns the new content (size unchanged).
    fn finish(mut self, txn: &mut Txn<'_>) -> Result<Content> {
        let mut indices: Vec<u64> = self.dirty_pages.keys().copied().collect();
        indices.sort_unstable();
        for page_index in indices {
            let Some(mut page) = self.dirty_pages.remove(&page_index) else { continue };
            while page.blocks.last() == Some(&None) {
                page.blocks.pop();
            }
            let slot = page_index as usize;
            if self.content.pages.len() <= slot {
                self.content.pages.resize(slot + 1, None);
            }
            if page.blocks.is_empty() {
                self.content.pages[slot] = None;
                continue;
            }
            let bytes = codec::encode(&page)?;
            let hash = ContentHash::of(&bytes);
            txn.batch.put_cf(txn.store.meta(), keys::page(&hash), bytes);
            self.content.pages[slot] = Some(hash);
        }
        while self.content.pages.last() == Some(&None) {
            self.content.pages.pop();
        }
        Ok(self.content)
    }
}
