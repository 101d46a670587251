//! On a read-only device: the paths whose current version is a change of
//! its own, which the group does not take, kept up to date from the
//! storage's sequence numbers (cost: what changed); and the reverts asked
//! for, which take the group's version back.

use std::collections::BTreeSet;

use psync_base::DeviceId;

use crate::path::SyncPath;
use crate::record::FileRecord;
use crate::storage::{follow_changes, StorageError, SyncStorage};

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
        let paths = &mut self.paths;
        follow_changes(storage, &mut self.at_seq, |record| {
            if is_own_change(record, me) {
                paths.insert(record.path.clone());
            } else {
                paths.remove(&record.path);
            }
        })
    }

    pub(crate) fn paths(&self) -> &BTreeSet<SyncPath> {
        &self.paths
    }

    /// A tombstone is forgotten: it is nobody's change any more.
    pub(crate) fn forget(&mut self, path: &SyncPath) {
        self.paths.remove(path);
    }
}
