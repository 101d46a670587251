//! The RocksDB store seen through the sync core's storage trait: converts
//! the store's path versions to the protocol's records and back. Glue only;
//! the index itself is kept by the store, in the same batches as the
//! filesystem's changes.

use std::sync::Arc;

use psync_base::{ContentHash, DeviceId, VersionVector};
use psync_store::{BlockRefs, Content, InstallResult, NodeKind, PathVersion, PeerRecord, Store, StoreError, Timestamp};
use psync_sync::limits::MAX_MERGE_BYTES;
use psync_sync::record::LISTED_BLOCKS_MAX;
use psync_sync::{
    Blocks, FileRecord, InstallOutcome, PastVersion, PeerState, RecordKind, StorageError, SyncPath, SyncStorage,
    VersionId,
};

/// A store as sync storage.
#[derive(Debug, Clone)]
pub struct StoreSync {
    store: Arc<Store>,
    /// Extended attributes travel (`[xattrs] sync`); off: records carry
    /// none and peers' leave ours alone.
    sync_xattrs: bool,
}

impl StoreSync {
    /// Wraps `store`; extended attributes sync.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, sync_xattrs: true }
    }

    /// Wraps `store`, extended attributes kept local unless `sync_xattrs`.
    pub fn with_xattrs(store: Arc<Store>, sync_xattrs: bool) -> Self {
        Self { store, sync_xattrs }
    }

    fn to_record(&self, v: PathVersion) -> Result<FileRecord, StorageError> {
        let text = String::from_utf8(v.path).map_err(|_| failed("a non-UTF-8 path in the sync index"))?;
        let kind = match v.kind {
            NodeKind::File => RecordKind::File,
            NodeKind::Dir => RecordKind::Dir,
            NodeKind::Symlink => RecordKind::Symlink,
            other => return Err(failed(format!("{other:?} in the sync index"))),
        };
        let path = SyncPath::new(&text).map_err(failed)?;
        if path.as_str() != text {
            // The store indexes only NFC paths; anything else is a bug, and
            // must not become another path on the wire.
            return Err(failed(format!("{text:?} is not in NFC form")));
        }
        let blocks = match v.blocks {
            BlockRefs::Pages(pages) if v.size.div_ceil(psync_base::BLOCK_SIZE) as usize <= LISTED_BLOCKS_MAX => {
                let list = self.store.block_list(&Content { size: v.size, pages }).map_err(err)?;
                Blocks::Listed(list)
            }
            BlockRefs::Pages(pages) => Blocks::Paged(pages),
            BlockRefs::Blocks(list) => Blocks::of_file(list).0,
        };
        Ok(FileRecord {
            path,
            kind,
            deleted: v.deleted,
            vv: v.vv,
            version: VersionId { device: v.dot.0, counter: v.dot.1 },
            size: v.size,
            blocks,
            symlink: v.symlink,
            perm: v.perm,
            mtime: v.mtime,
            xattrs: v.xattrs.filter(|_| self.sync_xattrs),
        })
    }

    /// Converts index entries, leaving out (and logging) any that cannot
    /// travel, so one odd entry never stops the rest.
    fn to_records<T>(&self, versions: Vec<(T, PathVersion)>) -> Vec<(T, FileRecord)> {
        versions
            .into_iter()
            .filter_map(|(key, v)| {
                let shown = String::from_utf8_lossy(&v.path).into_owned();
                match self.to_record(v) {
                    Ok(record) => Some((key, record)),
                    Err(e) => {
                        tracing::warn!("{shown} is left out of sync: {e}");
                        None
                    }
                }
            })
            .collect()
    }
}

fn failed(e: impl std::fmt::Display) -> StorageError {
    StorageError::Failed(e.to_string())
}

fn err(e: StoreError) -> StorageError {
    match e {
        StoreError::DiskFull => StorageError::DiskFull,
        other => StorageError::Failed(other.to_string()),
    }
}

fn from_record(r: FileRecord, sync_xattrs: bool) -> PathVersion {
    PathVersion {
        path: r.path.as_str().as_bytes().to_vec(),
        kind: match r.kind {
            RecordKind::File => NodeKind::File,
            RecordKind::Dir => NodeKind::Dir,
            RecordKind::Symlink => NodeKind::Symlink,
        },
        deleted: r.deleted,
        vv: r.vv,
        dot: (r.version.device, r.version.counter),
        size: r.size,
        blocks: match r.blocks {
            Blocks::Listed(list) => BlockRefs::Blocks(list),
            Blocks::Paged(pages) => BlockRefs::Pages(pages),
        },
        symlink: r.symlink,
        perm: r.perm,
        mtime: r.mtime,
        xattrs: r.xattrs.filter(|_| sync_xattrs),
    }
}

impl SyncStorage for StoreSync {
    fn device(&self) -> DeviceId {
        self.store.device()
    }

    fn index_id(&self) -> u64 {
        self.store.index_id()
    }

    fn seq(&self) -> u64 {
        self.store.current_seq()
    }

    fn record(&self, path: &SyncPath) -> Result<Option<FileRecord>, StorageError> {
        self.store.path_version(path.as_str().as_bytes()).map_err(err)?.map(|v| self.to_record(v)).transpose()
    }

    fn records_since(&self, since: u64, limit: usize) -> Result<Vec<(u64, FileRecord)>, StorageError> {
        Ok(self.to_records(self.store.path_versions_since(since, limit).map_err(err)?))
    }

    fn live_records(&self) -> Result<Vec<FileRecord>, StorageError> {
        let versions = self.store.path_versions(false).map_err(err)?;
        Ok(self.to_records(versions).into_iter().map(|(_, r)| r).collect())
    }

    fn has_live_children(&self, dir: &SyncPath) -> Result<bool, StorageError> {
        self.store.has_live_path_below(dir.as_str().as_bytes()).map_err(err)
    }

    fn tombstones(&self) -> Result<Vec<(u64, FileRecord)>, StorageError> {
        Ok(self.to_records(self.store.path_versions(true).map_err(err)?))
    }

    fn has_block(&self, hash: &ContentHash) -> Result<bool, StorageError> {
        self.store.has_block(hash).map_err(err)
    }

    fn block(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StorageError> {
        match self.store.block(hash) {
            Ok(data) => Ok(Some(data)),
            // Missing or damaged here: the peer asks elsewhere.
            Err(StoreError::Corrupt(why)) => {
                if self.store.has_block(hash).map_err(err)? {
                    tracing::error!("a peer asked for block {hash}, which is damaged here: {why}");
                }
                Ok(None)
            }
            Err(e) => Err(err(e)),
        }
    }

    fn put_block(&mut self, hash: ContentHash, data: Vec<u8>) -> Result<(), StorageError> {
        self.store.put_verified_block(&hash, &data).map_err(err)
    }

    fn page(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StorageError> {
        let bytes = self.store.page_bytes(hash).map_err(err)?;
        Ok(bytes.filter(|b| ContentHash::of(b) == *hash))
    }

    fn put_page(&mut self, hash: ContentHash, data: Vec<u8>) -> Result<(), StorageError> {
        self.store.put_verified_page(&hash, &data).map_err(err)
    }

    fn install(
        &mut self,
        records: Vec<FileRecord>,
        decided_on: &[(SyncPath, Option<VersionVector>)],
    ) -> Result<InstallOutcome, StorageError> {
        let versions: Vec<PathVersion> = records.into_iter().map(|r| from_record(r, self.sync_xattrs)).collect();
        let decided_on: Vec<(Vec<u8>, Option<VersionVector>)> =
            decided_on.iter().map(|(p, vv)| (p.as_str().as_bytes().to_vec(), vv.clone())).collect();
        Ok(match self.store.install_versions(&versions, &decided_on, Timestamp::now()).map_err(err)? {
            InstallResult::Installed => InstallOutcome::Installed,
            InstallResult::Busy(_) => InstallOutcome::Busy,
            InstallResult::Moved(_) => InstallOutcome::Moved,
            InstallResult::Blocked { path, reason } => {
                InstallOutcome::Blocked(format!("{}: {reason}", String::from_utf8_lossy(&path)))
            }
        })
    }

    fn drop_tombstones(&mut self, paths: &[SyncPath]) -> Result<(), StorageError> {
        let paths: Vec<Vec<u8>> = paths.iter().map(|p| p.as_str().as_bytes().to_vec()).collect();
        self.store.drop_deleted_paths(&paths).map_err(err)
    }

    fn peer_state(&self, peer: &DeviceId) -> Result<PeerState, StorageError> {
        let r = self.store.peer_record(peer).map_err(err)?;
        Ok(PeerState { index_id: r.index_id, applied: r.applied, acked: r.acked })
    }

    fn set_peer_state(&mut self, peer: &DeviceId, state: PeerState) -> Result<(), StorageError> {
        let record = PeerRecord { index_id: state.index_id, applied: state.applied, acked: state.acked };
        self.store.set_peer_record(peer, record).map_err(err)
    }

    fn history(&self, path: &SyncPath) -> Result<Vec<PastVersion>, StorageError> {
        let mut out = Vec::new();
        for version in self.store.versions_at_path(path.as_str().as_bytes()).map_err(err)? {
            // Only what a merge could use: small files listed block by block.
            if version.content.size > MAX_MERGE_BYTES {
                continue;
            }
            let blocks = self.store.block_list(&version.content).map_err(err)?;
            out.push(PastVersion { vv: version.vv, size: version.content.size, blocks });
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use psync_store::{NewNode, NodeAttrs, RenameMode, ROOT_INO};
    use psync_sync::{Input, Output, SyncConfig, SyncCore};

    /// `[xattrs] sync = false`: records carry no attributes, and a peer's
    /// record leaves this device's attributes alone.
    #[test]
    fn extended_attributes_can_stay_local() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_or_create(dir.path(), DeviceId([1; 32])).unwrap());
        let node = store.create(ROOT_INO, b"n.md", NewNode::File, NodeAttrs::perm(0o644), Timestamp::now()).unwrap();
        store.commit(node.ino, Timestamp::now(), false).unwrap();
        store.setxattr(node.ino, b"user.tag", b"mine", psync_store::XattrMode::Any, Timestamp::now()).unwrap();
        let path = SyncPath::new("n.md").unwrap();
        let shared = StoreSync::new(store.clone()).record(&path).unwrap().unwrap();
        assert_eq!(shared.xattrs, Some(vec![(b"user.tag".to_vec(), b"mine".to_vec())]));
        let mut local = StoreSync::with_xattrs(store.clone(), false);
        let mut theirs = local.record(&path).unwrap().unwrap();
        assert_eq!(theirs.xattrs, None);
        // A peer's newer version with other attributes: content taken, ours kept.
        theirs.vv.advance(DeviceId([2; 32]), 50);
        theirs.version = VersionId { device: DeviceId([2; 32]), counter: 50 };
        theirs.xattrs = Some(vec![(b"user.tag".to_vec(), b"theirs".to_vec())]);
        let decided_on = [(path.clone(), Some(shared.vv.clone()))];
        assert_eq!(local.install(vec![theirs], &decided_on).unwrap(), InstallOutcome::Installed);
        assert_eq!(store.getxattr(node.ino, b"user.tag").unwrap(), b"mine");
    }

    pub(crate) struct Device {
        pub(crate) _dir: tempfile::TempDir,
        pub(crate) store: Arc<Store>,
        pub(crate) core: SyncCore<StoreSync>,
    }

    pub(crate) fn devices(n: u8) -> Vec<Device> {
        let ids: Vec<DeviceId> = (1..=n).map(|i| DeviceId([i; 32])).collect();
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let dir = tempfile::tempdir().unwrap();
                let store = Arc::new(Store::open_or_create(dir.path(), *id).unwrap());
                // The sync loop's clock: these cores also run under it.
                let now = crate::clock::mono_ms();
                let core = SyncCore::new(StoreSync::new(store.clone()), SyncConfig::new(ids.clone()), i as u64, now);
                Device { _dir: dir, store, core }
            })
            .collect()
    }

    /// Connects everyone and delivers messages in order until quiet.
    fn run(devs: &mut [Device], now: &mut u64, connect: bool) {
        let ids: Vec<DeviceId> = devs.iter().map(|d| d.store.device()).collect();
        if connect {
            for (a, dev) in devs.iter_mut().enumerate() {
                for (b, id) in ids.iter().enumerate() {
                    if a != b {
                        dev.core.handle(*now, Input::Connected(*id)).unwrap();
                    }
                }
            }
        }
        for _ in 0..2000 {
            let mut moved = false;
            for i in 0..devs.len() {
                while let Some(out) = devs[i].core.poll_output() {
                    if let Output::Send(to, msg) = out {
                        moved = true;
                        let j = ids.iter().position(|d| *d == to).unwrap();
                        devs[j].core.handle(*now, Input::Message(ids[i], msg)).unwrap();
                    }
                }
            }
            if !moved {
                *now += 50;
                for d in devs.iter_mut() {
                    d.core.handle_timeout(*now).unwrap();
                }
            }
        }
    }

    pub(crate) fn write(d: &Store, parent: u64, name: &str, data: &[u8]) -> u64 {
        let now = Timestamp::now();
        let node = match d.lookup(parent, name.as_bytes()) {
            Ok(n) => n,
            Err(_) => d.create(parent, name.as_bytes(), NewNode::File, NodeAttrs::perm(0o644), now).unwrap(),
        };
        d.truncate(node.ino, 0, now).unwrap();
        d.write(node.ino, 0, data, now).unwrap();
        d.commit(node.ino, now, false).unwrap();
        node.ino
    }

    pub(crate) fn read(d: &Store, path: &str) -> Option<Vec<u8>> {
        let node = d.resolve(path.as_bytes()).ok()?;
        Some(d.read(node.ino, 0, u32::MAX).unwrap())
    }

    #[test]
    fn two_rocksdb_stores_converge_through_the_sync_core() {
        let mut devs = devices(2);
        let mut now = 1_000_000;
        let notes =
            devs[0].store.create(ROOT_INO, b"notes", NewNode::Dir, NodeAttrs::perm(0o755), Timestamp::now()).unwrap();
        write(&devs[0].store, notes.ino, "a.md", b"# A");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        write(&devs[0].store, ROOT_INO, "paper.pdf", &big);
        devs[0].core.handle(now, Input::LocalChanged).unwrap();
        run(&mut devs, &mut now, true);
        assert_eq!(read(&devs[1].store, "notes/a.md").unwrap(), b"# A");
        assert_eq!(read(&devs[1].store, "paper.pdf").unwrap(), big);

        // A rename on 1 arrives on 0 without data being re-sent.
        let now_ts = Timestamp::now();
        devs[1].store.rename(ROOT_INO, b"paper.pdf", ROOT_INO, b"renamed.pdf", RenameMode::Replace, now_ts).unwrap();
        devs[1].core.handle(now, Input::LocalChanged).unwrap();
        run(&mut devs, &mut now, false);
        assert_eq!(read(&devs[0].store, "renamed.pdf").unwrap(), big);
        assert!(read(&devs[0].store, "paper.pdf").is_none());

        // Concurrent edits: both kept, the same way on both devices.
        write(&devs[0].store, notes.ino, "a.md", b"edit on 0");
        let notes1 = devs[1].store.resolve(b"notes").unwrap().ino;
        write(&devs[1].store, notes1, "a.md", b"edit on 1");
        for d in devs.iter_mut() {
            d.core.handle(now, Input::LocalChanged).unwrap();
        }
        run(&mut devs, &mut now, false);
        let listing = |d: &Device| {
            let notes = d.store.resolve(b"notes").unwrap();
            let mut names: Vec<(Vec<u8>, Vec<u8>)> = d
                .store
                .read_dir(notes.ino, None, 100)
                .unwrap()
                .into_iter()
                .map(|(name, e)| (name, d.store.read(e.ino, 0, 1000).unwrap()))
                .collect();
            names.sort();
            names
        };
        let (l0, l1) = (listing(&devs[0]), listing(&devs[1]));
        assert_eq!(l0, l1);
        assert_eq!(l0.len(), 2, "{l0:?}");
        let contents: Vec<&[u8]> = l0.iter().map(|(_, c)| c.as_slice()).collect();
        assert!(contents.contains(&&b"edit on 0"[..]) && contents.contains(&&b"edit on 1"[..]));

        // A delete propagates.
        devs[0].store.unlink(ROOT_INO, b"renamed.pdf", Timestamp::now()).unwrap();
        devs[0].core.handle(now, Input::LocalChanged).unwrap();
        run(&mut devs, &mut now, false);
        assert!(read(&devs[1].store, "renamed.pdf").is_none());
        for d in &devs {
            let report = d.store.fsck().unwrap();
            assert!(report.is_clean(), "{:?}", report.problems);
        }
        let (r0, r1) = (devs[0].core.root().unwrap(), devs[1].core.root().unwrap());
        assert_eq!(r0, r1, "identical trees");
    }

    /// A block a peer asks for that is damaged (or missing) here is
    /// answered "don't have" (the peer asks elsewhere), never an error
    /// that would stop sync.
    #[test]
    fn a_damaged_block_is_not_served() {
        let devs = devices(1);
        let store = &devs[0].store;
        write(store, ROOT_INO, "a.md", b"some text");
        let node = store.resolve(b"a.md").unwrap();
        let hash = store.block_list(&node.content).unwrap()[0].unwrap();
        let storage = StoreSync::new(store.clone());
        assert_eq!(storage.block(&hash).unwrap().as_deref(), Some(&b"some text"[..]));
        store.debug_overwrite_block(&hash, b"bit rot").unwrap();
        assert_eq!(storage.block(&hash).unwrap(), None);
        assert_eq!(storage.block(&ContentHash([9; 32])).unwrap(), None);
    }
}
