//! On a read-only device: the paths whose current version is a change of
//! its own, which the group does not take, kept up to date from the
//! storage's sequence numbers (cost: what changed); and the reverts asked
//! for, which take the group's version back.

use std::collections::BTreeSet;

use psync_base::DeviceId;

use crate::path::SyncPath;
use crate::record::FileRecord;
use crate::storage::{StorageError, SyncStorage};

/// Records read from storage per step of a refresh.
const REFRESH_BATCH_RECORDS: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct OwnChanges {
    at_seq: u64,
    paths: BTreeSet<SyncPath>,
    /// Paths whose group version was asked for, to replace ours.
    pub(crate) reverting: BTreeSet<SyncPath>,
}

/// Whether `record` is this device's own change the group would not have:
/// content it made, or its deletion of something the group had.
pub(crate) fn is_own_change(record: &FileRecord, me: DeviceId) -> bool {
    record.version.device == me && (!record.deleted || record.vv.iter().any(|(d, _)| *d != me))
}

impl OwnChanges {
    pub(crate) fn refresh<S: SyncStorage>(&mut self, storage: &S, me: DeviceId) -> Result<(), StorageError> {
        let target = storage.seq();
        while self.at_seq < target {
            let batch = storage.records_since(self.at_seq, REFRESH_BATCH_RECORDS)?;
            for (_, record) in &batch {
                if is_own_change(record, me) {
                    self.paths.insert(record.path.clone());
                } else {
                    self.paths.remove(&record.path);
                }
            }
            self.at_seq = match batch.last() {
                Some((last, _)) if batch.len() == REFRESH_BATCH_RECORDS => *last,
                _ => target,
            };
        }
        Ok(())
    }

    pub(crate) fn paths(&self) -> &BTreeSet<SyncPath> {
        &self.paths
    }

    /// A tombstone is forgotten: it is nobody's change any more.
    pub(crate) fn forget(&mut self, path: &SyncPath) {
        self.paths.remove(path);
    }
}
