//! Install planning as a pure function: the batch that installs peers'
//! records keeping the tree whole, from the records and a read-only view of
//! what this device holds ([`Holdings`]). No I/O and no state of its own;
//! unit-tested below with a map.

use std::collections::BTreeMap;

use psync_base::{DeviceId, VersionVector};

use crate::path::SyncPath;
use crate::record::{conflict_copy, resolve, FileRecord, RecordKind, Resolution, VersionId};
use crate::storage::{StorageError, SyncStorage};

/// What planning reads of this device's state.
pub(super) trait Holdings {
    /// The record at `path`, live or deleted.
    fn record(&self, path: &SyncPath) -> Result<Option<FileRecord>, StorageError>;
    /// Whether a live record lies below `dir`.
    fn has_live_children(&self, dir: &SyncPath) -> Result<bool, StorageError>;
}

impl<S: SyncStorage> Holdings for S {
    fn record(&self, path: &SyncPath) -> Result<Option<FileRecord>, StorageError> {
        SyncStorage::record(self, path)
    }

    fn has_live_children(&self, dir: &SyncPath) -> Result<bool, StorageError> {
        SyncStorage::has_live_children(self, dir)
    }
}

/// Who makes the versions a plan adds (directories re-created or kept):
/// this device, its next counter, and the time they carry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Planner {
    pub device: DeviceId,
    /// This device's next sequence number.
    pub next_counter: u64,
    /// Wall-clock seconds, for new directories' times.
    pub mtime: i64,
}

impl Planner {
    /// The next version made by this device, over `base`.
    pub(super) fn own_version(&self, base: &VersionVector) -> (VersionVector, VersionId) {
        let mut vv = base.clone();
        let counter = vv.advance(self.device, self.next_counter);
        (vv, VersionId { device: self.device, counter })
    }

    fn dir_record(&self, path: SyncPath, base: &VersionVector, perm: u32) -> FileRecord {
        let (vv, version) = self.own_version(base);
        FileRecord::dir(path, vv, version, perm, self.mtime)
    }
}

/// A conflict copy is a record like any other: it is placed only if it
/// is news at its path (a user may have deleted or edited that copy
/// already, and a late device resolving the same conflict must not
/// bring it back).
pub(super) fn place_copy(copy: FileRecord, holdings: &impl Holdings) -> Result<Option<FileRecord>, StorageError> {
    let existing = holdings.record(&copy.path)?;
    Ok(match resolve(existing.as_ref(), &copy) {
        Resolution::Keep => None,
        Resolution::Take => Some(copy),
        Resolution::Conflict { merged, .. } => Some(*merged),
    })
}

/// The batch that installs `records` keeping the tree whole: a live
/// record's parents are (re)created as directories; a directory is not
/// deleted while it still has live children here (it is re-asserted
/// instead). Parents come first, so the store never sees a child before
/// its directory.
pub(super) fn plan_install(
    records: Vec<FileRecord>,
    holdings: &impl Holdings,
    me: &Planner,
) -> Result<Vec<FileRecord>, StorageError> {
    let mut batch: BTreeMap<SyncPath, FileRecord> = BTreeMap::new();
    for record in records {
        let current = match batch.get(&record.path) {
            Some(r) => Some(r.clone()),
            None => holdings.record(&record.path)?,
        };
        if record.deleted {
            if record.kind == RecordKind::Dir && holdings.has_live_children(&record.path)? {
                let mut base = record.vv.clone();
                if let Some(c) = &current {
                    base.merge(&c.vv);
                }
                let perm = current.as_ref().map_or(0o755, |c| c.perm);
                batch.insert(record.path.clone(), me.dir_record(record.path.clone(), &base, perm));
            } else {
                batch.insert(record.path.clone(), record);
            }
            continue;
        }
        // A file replacing a directory that still has children here:
        // keep the directory, keep the file as a conflict copy.
        if record.kind != RecordKind::Dir
            && current.as_ref().is_some_and(|c| !c.deleted && c.kind == RecordKind::Dir)
            && holdings.has_live_children(&record.path)?
        {
            let current = current.as_ref().map(|c| (c.vv.clone(), c.perm)).unwrap_or_default();
            let mut base = record.vv.clone();
            base.merge(&current.0);
            batch.insert(record.path.clone(), me.dir_record(record.path.clone(), &base, current.1));
            if let Some(copy) = conflict_copy(&record) {
                if let Some(copy) = place_copy(copy, holdings)? {
                    batch.insert(copy.path.clone(), copy);
                }
            }
            continue;
        }
        let mut ancestors = Vec::new();
        let mut up = record.path.parent();
        while let Some(a) = up {
            up = a.parent();
            ancestors.push(a);
        }
        for ancestor in ancestors.into_iter().rev() {
            let existing = match batch.get(&ancestor) {
                Some(r) => Some(r.clone()),
                None => holdings.record(&ancestor)?,
            };
            match existing {
                Some(e) if !e.deleted && e.kind == RecordKind::Dir => {}
                other => {
                    let base = other.as_ref().map(|e| e.vv.clone()).unwrap_or_default();
                    if let Some(moved) = other.as_ref().filter(|e| !e.deleted).and_then(conflict_copy) {
                        if let Some(moved) = place_copy(moved, holdings)? {
                            batch.insert(moved.path.clone(), moved);
                        }
                    }
                    batch.insert(ancestor.clone(), me.dir_record(ancestor, &base, 0o755));
                }
            }
        }
        batch.insert(record.path.clone(), record);
    }
    let mut ordered: Vec<FileRecord> = batch.into_values().collect();
    ordered.sort_by_key(|r| (r.path.depth(), r.path.clone()));
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Blocks;

    /// What a device holds, as a map.
    #[derive(Default)]
    struct Held(BTreeMap<SyncPath, FileRecord>);

    impl Holdings for Held {
        fn record(&self, path: &SyncPath) -> Result<Option<FileRecord>, StorageError> {
            Ok(self.0.get(path).cloned())
        }

        fn has_live_children(&self, dir: &SyncPath) -> Result<bool, StorageError> {
            let prefix = format!("{}/", dir.as_str());
            Ok(self.0.values().any(|r| !r.deleted && r.path.as_str().starts_with(&prefix)))
        }
    }

    fn path(p: &str) -> SyncPath {
        SyncPath::new(p).unwrap()
    }

    fn device(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    /// A record by device `by` at its counter `n`.
    fn record(p: &str, kind: RecordKind, by: u8, n: u64) -> FileRecord {
        let mut vv = VersionVector::new();
        vv.set(device(by), n);
        let mut r = FileRecord::dir(path(p), vv, VersionId { device: device(by), counter: n }, 0o644, 1);
        r.kind = kind;
        r.blocks = Blocks::Listed(Vec::new());
        r
    }

    const ME: Planner = Planner { device: DeviceId([9; 32]), next_counter: 100, mtime: 7 };

    #[test]
    fn missing_parents_come_first_made_by_this_device() {
        let planned = plan_install(vec![record("a/b/c.md", RecordKind::File, 1, 5)], &Held::default(), &ME).unwrap();
        let paths: Vec<&str> = planned.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a/b/c.md"]);
        for dir in &planned[..2] {
            assert_eq!(
                (dir.kind, dir.version.device, dir.version.counter, dir.mtime),
                (RecordKind::Dir, ME.device, 100, 7)
            );
        }
    }

    #[test]
    fn a_folder_with_live_children_here_is_kept_not_deleted() {
        let mut held = Held::default();
        held.0.insert(path("d"), record("d", RecordKind::Dir, 1, 1));
        held.0.insert(path("d/local.md"), record("d/local.md", RecordKind::File, 9, 3));
        let mut gone = record("d", RecordKind::Dir, 1, 2);
        gone.deleted = true;
        let planned = plan_install(vec![gone.clone()], &held, &ME).unwrap();
        let [kept] = &planned[..] else { panic!("{planned:?}") };
        assert!(!kept.deleted && kept.kind == RecordKind::Dir, "{kept:?}");
        assert_eq!(kept.vv.compare(&gone.vv), psync_base::Causality::Dominates, "it supersedes the deletion");

        let empty = Held::default();
        assert_eq!(plan_install(vec![gone.clone()], &empty, &ME).unwrap(), vec![gone], "an empty one goes");
    }

    #[test]
    fn a_file_never_replaces_a_folder_that_still_holds_files() {
        let mut held = Held::default();
        held.0.insert(path("x"), record("x", RecordKind::Dir, 1, 1));
        held.0.insert(path("x/inside.md"), record("x/inside.md", RecordKind::File, 1, 2));
        let file = record("x", RecordKind::File, 2, 3);
        let planned = plan_install(vec![file], &held, &ME).unwrap();
        let kinds: Vec<(&str, RecordKind)> = planned.iter().map(|r| (r.path.as_str(), r.kind)).collect();
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        assert!(kinds.contains(&("x", RecordKind::Dir)), "{kinds:?}");
        assert!(kinds.iter().any(|(p, k)| p.contains("sync-conflict") && *k == RecordKind::File), "{kinds:?}");
    }

    #[test]
    fn a_file_where_a_parent_must_be_moves_to_a_conflict_copy() {
        let mut held = Held::default();
        held.0.insert(path("notes"), record("notes", RecordKind::File, 1, 1));
        let planned = plan_install(vec![record("notes/a.md", RecordKind::File, 2, 4)], &held, &ME).unwrap();
        let paths: Vec<&str> = planned.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths.len(), 3, "{paths:?}");
        assert_eq!((paths[0], planned[0].kind), ("notes", RecordKind::Dir));
        assert!(paths.iter().any(|p| p.starts_with("notes.sync-conflict-")), "{paths:?}");
        assert!(paths.contains(&"notes/a.md"));
    }
}
