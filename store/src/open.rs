//! Opening a store: atomic creation, format checks and migrations, the
//! RocksDB options, and the clean-up an interrupted run leaves.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use psync_base::{codec, DeviceId, VersionVector};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::error::{Result, StoreError};
use crate::keys;
use crate::records::*;
use crate::store::{Store, DB_DIR_NAME};

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
            tree_counts: Mutex::new(None),
            named_paths: Mutex::new(None),
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
            tree_counts: Mutex::new(None),
            named_paths: Mutex::new(None),
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
            if format.format_version < 3 {
                let (from, to) = keys::LEGACY_CHANGE_LOG;
                txn.delete_range(from, to);
            }
            format.format_version = FORMAT_VERSION;
            txn.put_format(&format)
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

        // Blocks are not compressed: most are already (PDFs, images) and
        // LZ4 trying on every flush and compaction was half the daemon's CPU
        // under 4 KiB random writes (docs/benchmarks.md). Stores written
        // before keep their compressed files readable.
        let mut blocks = Options::default();
        blocks.set_block_based_table_factory(&table);
        blocks.set_compression_type(DBCompressionType::None);
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
                txn.delete_orphan(*ino);
                txn.delete_inode(*ino);
            }
            Ok(())
        })
    }
}
