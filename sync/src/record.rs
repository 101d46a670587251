//! What devices exchange about each path: a versioned record, and the
//! deterministic rules that pick a winner and name conflict copies.

use std::cmp::Ordering;

use psync_base::{Causality, ContentHash, DeviceId, VersionVector};
use serde::{Deserialize, Serialize};

use crate::path::SyncPath;

/// What a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordKind {
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Directory.
    Dir,
}

/// Which change produced a version: the device that made it and that
/// device's counter at the time (a "dot"). Kept when conflicting versions
/// are merged, so it names content, not a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionId {
    /// The device that made the change.
    pub device: DeviceId,
    /// Its counter in the version vector after the change.
    pub counter: u64,
}

/// One path's state as devices exchange it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Where.
    pub path: SyncPath,
    /// What.
    pub kind: RecordKind,
    /// A tombstone.
    pub deleted: bool,
    /// Causal history.
    pub vv: VersionVector,
    /// The change that produced this content.
    pub version: VersionId,
    /// Size in bytes (files).
    pub size: u64,
    /// Block hashes (files); `None` is a hole.
    pub blocks: Vec<Option<ContentHash>>,
    /// Link target (symlinks).
    pub symlink: Vec<u8>,
    /// Permission bits.
    pub perm: u32,
    /// Modification time (seconds), informational: never used to decide.
    pub mtime: i64,
}

impl FileRecord {
    /// A live directory record.
    pub fn dir(path: SyncPath, vv: VersionVector, version: VersionId, perm: u32, mtime: i64) -> FileRecord {
        FileRecord {
            path,
            kind: RecordKind::Dir,
            deleted: false,
            vv,
            version,
            size: 0,
            blocks: Vec::new(),
            symlink: Vec::new(),
            perm,
            mtime,
        }
    }

    /// Whether two records hold the same thing (ignoring history).
    pub fn same_content(&self, other: &FileRecord) -> bool {
        self.kind == other.kind
            && self.deleted == other.deleted
            && (self.deleted
                || (self.size == other.size
                    && self.blocks == other.blocks
                    && self.symlink == other.symlink
                    && self.perm == other.perm))
    }

    /// The blocks this record needs (holes excluded).
    pub fn needed_blocks(&self) -> impl Iterator<Item = ContentHash> + '_ {
        self.blocks.iter().flatten().copied()
    }

    /// A stable digest for anti-entropy: equal records, equal digests.
    pub fn digest(&self) -> ContentHash {
        match psync_base::codec::encode(self) {
            Ok(bytes) => ContentHash::of(&bytes),
            Err(_) => ContentHash::of(self.path.as_str().as_bytes()),
        }
    }
}

/// The deterministic total order that picks a winner between concurrent
/// versions, the same on every device: a live version beats a deletion
/// (an edit survives a delete), a directory beats a file (its children
/// depend on it), then the higher version id (device id, then counter), and
/// finally the encoded record, so that the order is total.
pub fn winner_order(a: &FileRecord, b: &FileRecord) -> Ordering {
    let rank = |r: &FileRecord| (!r.deleted, r.kind == RecordKind::Dir, r.version);
    rank(a).cmp(&rank(b)).then_with(|| {
        let enc = |r: &FileRecord| psync_base::codec::encode(r).unwrap_or_default();
        enc(a).cmp(&enc(b))
    })
}

/// How an incoming record relates to the local one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Nothing to do (same or older).
    Keep,
    /// Take the incoming record as it is.
    Take,
    /// Concurrent: store `merged` at the path, and `copy` (the loser's
    /// content under a conflict name) if the loser had content to keep.
    Conflict {
        /// The winner's content with both histories.
        merged: Box<FileRecord>,
        /// The loser, renamed.
        copy: Option<Box<FileRecord>>,
    },
}

/// Whether `a`'s history contains the change that produced `b`'s content.
fn has_seen(a: &FileRecord, b: &FileRecord) -> bool {
    a.vv.get(&b.version.device) >= b.version.counter
}

/// Decides what to do with `incoming` given `local` (both at the same path).
///
/// Concurrent histories are compared by content ("dots", as in dotted
/// version vectors): if one side's history contains the change that made the
/// other side's content, it is an edit of that content and wins with no
/// conflict copy, even though merges elsewhere made the vectors concurrent.
/// Only truly concurrent contents go to [`winner_order`], and the loser's
/// content is kept as a conflict copy.
pub fn resolve(local: Option<&FileRecord>, incoming: &FileRecord) -> Resolution {
    let Some(local) = local else { return Resolution::Take };
    match incoming.vv.compare(&local.vv) {
        Causality::Dominated => Resolution::Keep,
        Causality::Equal if incoming == local => Resolution::Keep,
        Causality::Dominates => Resolution::Take,
        Causality::Equal | Causality::Concurrent => {
            let (winner, loser, copy_loser) = match (has_seen(incoming, local), has_seen(local, incoming)) {
                (true, false) => (incoming, local, false),
                (false, true) => (local, incoming, false),
                // Equal histories holding different records, or truly
                // concurrent contents: the total order decides, and the
                // loser's content is kept.
                _ => match winner_order(incoming, local) {
                    Ordering::Less => (local, incoming, true),
                    _ => (incoming, local, true),
                },
            };
            let mut merged = winner.clone();
            merged.vv.merge(&loser.vv);
            let keep_loser =
                copy_loser && !loser.deleted && loser.kind != RecordKind::Dir && !loser.same_content(winner);
            let copy = keep_loser.then(|| conflict_copy(loser)).flatten().map(Box::new);
            if merged == *local {
                return Resolution::Keep;
            }
            Resolution::Conflict { merged: Box::new(merged), copy }
        }
    }
}

/// The conflict copy of `loser`: same directory, a name derived only from
/// data every device shares (the loser's version id), and a history of just
/// that version, so every device that resolves the same conflict creates an
/// identical record and they converge.
pub fn conflict_copy(loser: &FileRecord) -> Option<FileRecord> {
    let name = conflict_name(loser.path.name(), &loser.version);
    let path = match loser.path.parent() {
        Some(parent) => parent.join(&name).ok()?,
        None => SyncPath::new(&name).ok()?,
    };
    let mut vv = VersionVector::new();
    vv.set(loser.version.device, loser.version.counter);
    Some(FileRecord { path, vv, deleted: false, ..loser.clone() })
}

/// The marker in every conflict copy's name.
pub const CONFLICT_MARKER: &str = ".sync-conflict-";

/// Whether `path` names a conflict copy.
pub fn is_conflict_copy(path: &SyncPath) -> bool {
    path.name().contains(CONFLICT_MARKER)
}

/// `note.md` -> `note.sync-conflict-1a2b3c4d-7.md`; no extension -> suffix.
pub fn conflict_name(name: &str, version: &VersionId) -> String {
    let tag = format!("{CONFLICT_MARKER}{}-{}", &version.device.short()[..8], version.counter);
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    // Stay within NAME_MAX by shortening the stem (on a char boundary).
    let budget = psync_base::NAME_MAX_BYTES.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(budget);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{tag}{ext}", &stem[..cut])
}
