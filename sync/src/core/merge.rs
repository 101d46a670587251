//! Concurrent edits of a note become one merged note: when two devices
//! changed a text file concurrently, it is merged three-way against the
//! last version both had (from this device's history). The merge is a new
//! version made here over both histories, so it wins over either side
//! everywhere; two devices that merge the same pair at once make the same
//! bytes, and their two merges then differ in history only (no conflict
//! copy). Overlapping changes, binary or large files, or no common version
//! here: both versions are kept as today (the conflict copy).

use super::*;
use crate::merge::merge_text;
use crate::record::Blocks;
use crate::storage::{listed_content, PastVersion};

impl<S: SyncStorage> SyncCore<S> {
    /// The merged version of `local` and `incoming` (concurrent, both live
    /// files), or `None` to keep both. `winner` is the total order's pick
    /// with both histories (see [`crate::record::resolve`]).
    pub(super) fn merged_version(
        &mut self,
        local: &FileRecord,
        incoming: &FileRecord,
        winner: &FileRecord,
    ) -> Result<Option<FileRecord>, StorageError> {
        if self.is_read_only() || local.kind != RecordKind::File || incoming.kind != RecordKind::File {
            return Ok(None);
        }
        let Some(base) = self.common_version(&local.path, local, incoming)? else { return Ok(None) };
        let (ours, theirs) = if winner.version == incoming.version { (incoming, local) } else { (local, incoming) };
        let (perm, xattrs) = (ours.perm, ours.xattrs.clone());
        let (Some(base), Some(ours), Some(theirs)) = (
            self.bytes(base.size, &Blocks::Listed(base.blocks))?,
            self.bytes(ours.size, &ours.blocks)?,
            self.bytes(theirs.size, &theirs.blocks)?,
        ) else {
            return Ok(None);
        };
        let Some(text) = merge_text(&base, &ours, &theirs) else { return Ok(None) };
        let mut list = Vec::new();
        for chunk in text.chunks(BLOCK_SIZE as usize) {
            let hash = ContentHash::of(chunk);
            if !self.storage.has_block(&hash)? {
                self.storage.put_block(hash, chunk.to_vec())?;
            }
            list.push(Some(hash));
        }
        let (vv, version) = self.planner().own_version(&winner.vv);
        Ok(Some(FileRecord {
            path: local.path.clone(),
            kind: RecordKind::File,
            deleted: false,
            vv,
            version,
            size: text.len() as u64,
            blocks: Blocks::Listed(list),
            symlink: Vec::new(),
            perm,
            mtime: local.mtime.max(incoming.mtime),
            xattrs,
        }))
    }

    /// The newest earlier content here that both sides have seen.
    fn common_version(
        &self,
        path: &SyncPath,
        local: &FileRecord,
        incoming: &FileRecord,
    ) -> Result<Option<PastVersion>, StorageError> {
        let seen_by = |vv: &VersionVector, side: &FileRecord| {
            matches!(side.vv.compare(vv), Causality::Dominates | Causality::Equal)
        };
        Ok(self.storage.history(path)?.into_iter().rev().find(|v| seen_by(&v.vv, local) && seen_by(&v.vv, incoming)))
    }

    /// A small file's bytes from its listed blocks (`None`: too large, or a
    /// block is not here).
    fn bytes(&self, size: u64, blocks: &Blocks) -> Result<Option<Vec<u8>>, StorageError> {
        let Blocks::Listed(list) = blocks else { return Ok(None) };
        if size > MAX_MERGE_BYTES {
            return Ok(None);
        }
        listed_content(&self.storage, size, list)
    }
}
