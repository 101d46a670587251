//! Garbage collection: prune history by policy, then mark and sweep pages and
//! blocks. Nothing referenced by a live inode or a retained version is ever
//! removed, and each delete batch removes only unreferenced data, so a crash
//! mid-GC leaves a consistent store.

use std::collections::{HashMap, HashSet};

use psync_base::{codec, ContentHash};
use rocksdb::{Direction, IteratorMode};

use crate::error::Result;
use crate::keys;
use crate::records::*;
use crate::store::Store;
use crate::sync_index::PeerRecord;
use crate::txn::Txn;

/// Which history to keep.
#[derive(Debug, Clone, Copy)]
pub struct GcPolicy {
    /// Always keep this many most recent versions of every file.
    pub keep_versions: usize,
    /// Also keep every version committed within this many seconds.
    pub keep_for_secs: i64,
    /// Also keep what a three-way merge may need: every version after the
    /// local sequence number all peers acknowledged, and of each file the
    /// newest one at or before it (what a peer's concurrent edit started from).
    pub keep_for_merges: bool,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self { keep_versions: 16, keep_for_secs: 30 * 24 * 3600, keep_for_merges: true }
    }
}

/// What a GC run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// History versions pruned.
    pub versions_removed: u64,
    /// Pages no longer referenced, removed.
    pub pages_removed: u64,
    /// Blocks no longer referenced, removed.
    pub blocks_removed: u64,
    /// Bytes of block data freed.
    pub block_bytes_freed: u64,
}

const DELETES_PER_BATCH: usize = 1024;

impl Store {
    /// Runs one GC pass. Holds the writer lock throughout, so no write can
    /// start referencing a block between mark and sweep.
    pub fn gc(&self, policy: GcPolicy, now: Timestamp) -> Result<GcReport> {
        self.gc_keeping(policy, now, &[])
    }

    /// [`Store::gc`] that also keeps `objects` (blocks, or pages with
    /// their blocks) no file references yet: what a running sync engine
    /// fetched for versions it has not installed.
    pub fn gc_keeping(&self, policy: GcPolicy, now: Timestamp, objects: &[ContentHash]) -> Result<GcReport> {
        if self.is_read_only() {
            return Err(crate::StoreError::ReadOnly);
        }
        self.mutate(false, |txn| self.gc_locked(txn, policy, now, objects))
    }

    fn gc_locked(
        &self,
        txn: &mut Txn<'_>,
        policy: GcPolicy,
        now: Timestamp,
        objects: &[ContentHash],
    ) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut live_contents: Vec<Content> = Vec::new();
        let mut committed: HashSet<(FileId, u64)> = HashSet::new();
        self.for_each_prefix(&[keys::TAG_INODE], |_, v| {
            let node: Inode = codec::decode(v)?;
            committed.insert((node.file_id, node.committed_seq));
            live_contents.push(node.content);
            Ok(true)
        })?;

        // 1. Prune history.
        let mut by_file: HashMap<FileId, Vec<FileVersion>> = HashMap::new();
        self.for_each_prefix(&[keys::TAG_VERSION], |_, v| {
            let version: FileVersion = codec::decode(v)?;
            by_file.entry(version.file_id).or_default().push(version);
            Ok(true)
        })?;
        for versions in by_file.values_mut() {
            versions.sort_by_key(|v| v.seq);
        }
        let cutoff = now.secs.saturating_sub(policy.keep_for_secs);
        self.prune_versions(txn, &by_file, policy, cutoff, &committed, &mut report)?;
        // Marking reads the store: the pruned versions must be gone from it.
        txn.write_now()?;
        // A deletion time whose file has no history left is forgotten.
        let mut forgotten = Vec::new();
        self.for_each_prefix(&[keys::TAG_GONE], |k, _| {
            if let Some(id) = keys::gone_file(k) {
                forgotten.push(id);
            }
            Ok(true)
        })?;
        for id in forgotten {
            if self.scan_prefix(&keys::version_prefix(id))?.is_empty() {
                txn.delete_gone(id);
                flush_if_full(txn)?;
            }
        }

        // 2. Mark.
        let mut pages: HashSet<ContentHash> = HashSet::new();
        let mut blocks: HashSet<ContentHash> = HashSet::new();
        let retained = self.scan_prefix(&[keys::TAG_VERSION])?;
        let mut contents = live_contents;
        for (_, v) in retained {
            let version: FileVersion = codec::decode(&v)?;
            contents.push(version.content);
        }
        for content in &contents {
            for hash in content.pages.iter().flatten() {
                if pages.insert(*hash) {
                    for block in self.page(hash)?.blocks.into_iter().flatten() {
                        blocks.insert(block);
                    }
                }
            }
        }

        for hash in objects {
            blocks.insert(*hash);
            if pages.insert(*hash) {
                // A page here names blocks that must stay with it.
                if let Ok(page) = self.page(hash) {
                    blocks.extend(page.blocks.into_iter().flatten());
                }
            }
        }

        // 3. Sweep.
        let mut garbage_pages = Vec::new();
        self.for_each_prefix(&[keys::TAG_PAGE], |k, _| {
            if let Some(hash) = keys::hash_at(k, 1) {
                if !pages.contains(&hash) {
                    garbage_pages.push(hash);
                }
            }
            Ok(true)
        })?;
        for hash in garbage_pages {
            txn.delete_page(&hash);
            report.pages_removed += 1;
            flush_if_full(txn)?;
        }
        for item in self.db().iterator_cf(self.blocks_cf(), IteratorMode::From(&[], Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.rocks_err(e))?;
            let Some(hash) = keys::hash_at(&k, 0) else { continue };
            if !blocks.contains(&hash) {
                txn.delete_block(&hash);
                report.blocks_removed += 1;
                report.block_bytes_freed += v.len() as u64;
                flush_if_full(txn)?;
            }
        }
        txn.write_now()?;
        Ok(report)
    }

    fn prune_versions(
        &self,
        txn: &mut Txn<'_>,
        by_file: &HashMap<FileId, Vec<FileVersion>>,
        policy: GcPolicy,
        cutoff: i64,
        committed: &HashSet<(FileId, u64)>,
        report: &mut GcReport,
    ) -> Result<()> {
        let acked = if policy.keep_for_merges { self.acked_by_all_peers()? } else { None };
        for versions in by_file.values() {
            let keep_from = versions.len().saturating_sub(policy.keep_versions.max(1));
            let common = acked.and_then(|a| versions.iter().rposition(|v| v.seq <= a));
            for (i, v) in versions.iter().enumerate() {
                let for_merges = acked.is_some_and(|a| v.seq > a) || Some(i) == common;
                let keep = i >= keep_from
                    || v.committed_at.secs >= cutoff
                    || committed.contains(&(v.file_id, v.seq))
                    || for_merges;
                if !keep {
                    txn.delete_version(v.file_id, v.seq);
                    report.versions_removed += 1;
                    flush_if_full(txn)?;
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// The local sequence number every peer this store knows has
    /// acknowledged (`None`: no peer yet).
    fn acked_by_all_peers(&self) -> Result<Option<u64>> {
        let mut least: Option<u64> = None;
        self.for_each_prefix(&[keys::TAG_PEER], |_, v| {
            let peer: PeerRecord = codec::decode(v)?;
            least = Some(least.map_or(peer.acked, |l| l.min(peer.acked)));
            Ok(true)
        })?;
        Ok(least)
    }
}

/// Each batch removes only unreferenced data, so it may land on its own.
fn flush_if_full(txn: &mut Txn<'_>) -> Result<()> {
    if txn.pending_writes() >= DELETES_PER_BATCH {
        txn.write_now()?;
    }
    Ok(())
}
