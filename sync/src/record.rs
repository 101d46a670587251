//! What devices exchange about each path: a versioned record, and the
//! deterministic rules that pick a winner and name conflict copies.

use std::cmp::Ordering;

use psync_base::page::{encode_page, paginate, BLOCKS_PER_PAGE};
use psync_base::xattr::{check_xattrs, Xattrs};
use psync_base::{Causality, ContentHash, DeviceId, VersionVector, BLOCK_SIZE};
use serde::{Deserialize, Serialize};

use crate::path::SyncPath;

/// Block hashes a record lists itself (files up to 16 MiB); a larger file's
/// record lists the hashes of its pages of block hashes instead, fetched
/// like blocks, so a record stays small whatever the file's size.
pub const LISTED_BLOCKS_MAX: usize = BLOCKS_PER_PAGE;

/// Longest symlink target accepted, in bytes (`PATH_MAX`).
pub const MAX_SYMLINK_BYTES: usize = 4096;

/// A file's content as a record names it. The form follows from the size
/// alone, so equal contents are equal records on every device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Blocks {
    /// The block hashes (`None`: a hole), for files of at most
    /// [`LISTED_BLOCKS_MAX`] blocks (and for everything that is not a file:
    /// empty).
    Listed(Vec<Option<ContentHash>>),
    /// Hashes of the pages of block hashes (`None`: a page of holes; no
    /// trailing `None`), for larger files. See `psync_base::page`.
    Paged(Vec<Option<ContentHash>>),
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks::Listed(Vec::new())
    }
}

impl Blocks {
    /// The canonical form of a file's block list, with the bytes of each
    /// page it names (for the caller to store, so it can serve them).
    pub fn of_file(blocks: Vec<Option<ContentHash>>) -> (Blocks, Vec<(ContentHash, Vec<u8>)>) {
        if blocks.len() <= LISTED_BLOCKS_MAX {
            return (Blocks::Listed(blocks), Vec::new());
        }
        let mut stored = Vec::new();
        let mut hashes = Vec::new();
        for page in paginate(&blocks) {
            match page {
                Some(entries) => {
                    // A page is at most MAX_PAGE_BYTES: always encodable.
                    let bytes = encode_page(&entries).unwrap_or_default();
                    let hash = ContentHash::of(&bytes);
                    hashes.push(Some(hash));
                    stored.push((hash, bytes));
                }
                None => hashes.push(None),
            }
        }
        (Blocks::Paged(hashes), stored)
    }

    /// Number of hashes the record itself carries.
    pub fn len(&self) -> usize {
        match self {
            Blocks::Listed(v) | Blocks::Paged(v) => v.len(),
        }
    }

    /// Whether it carries none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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
    /// The content (files): its blocks, or for a large file its pages.
    pub blocks: Blocks,
    /// Link target (symlinks).
    pub symlink: Vec<u8>,
    /// Permission bits.
    pub perm: u32,
    /// Modification time (seconds), informational: never used to decide.
    pub mtime: i64,
    /// Extended attributes (`user.*`, sorted by name) of a live file or
    /// folder; `None` from a device that keeps them local (the receiver
    /// keeps its own).
    pub xattrs: Option<Xattrs>,
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
            blocks: Blocks::default(),
            symlink: Vec::new(),
            perm,
            mtime,
            // A folder made or kept here for its children: its attributes
            // (if any) stay as they are.
            xattrs: None,
        }
    }

    /// Blocks of the file (`ceil(size / BLOCK_SIZE)`, 0 for anything else).
    pub fn block_count(&self) -> u64 {
        if self.kind == RecordKind::File && !self.deleted {
            self.size.div_ceil(BLOCK_SIZE)
        } else {
            0
        }
    }

    /// Structural checks on a record from a peer: a block list that fits
    /// the size in its canonical form, a version id within its history, a
    /// symlink target a symlink can have. A record that fails them is
    /// refused on its own; the peer's other records still count.
    pub fn check(&self) -> Result<(), String> {
        let blocks = self.block_count();
        let ok = match &self.blocks {
            Blocks::Listed(list) => list.len() as u64 == blocks && blocks as usize <= LISTED_BLOCKS_MAX,
            Blocks::Paged(pages) => {
                blocks as usize > LISTED_BLOCKS_MAX
                    && pages.len() as u64 <= blocks.div_ceil(BLOCKS_PER_PAGE as u64)
                    && pages.last() != Some(&None)
            }
        };
        if !ok {
            return Err(format!("{}: a block list that does not fit {} bytes", self.path, self.size));
        }
        if self.version.counter > self.vv.get(&self.version.device) {
            return Err(format!("{}: version id not in its history", self.path));
        }
        if self.kind == RecordKind::Symlink && !self.deleted {
            if self.symlink.is_empty() || self.symlink.len() > MAX_SYMLINK_BYTES || self.symlink.contains(&0) {
                return Err(format!(
                    "{}: not a symlink target (empty, over {MAX_SYMLINK_BYTES} bytes, or NUL)",
                    self.path
                ));
            }
        } else if !self.symlink.is_empty() {
            return Err(format!("{}: a symlink target on something else", self.path));
        }
        if let Some(list) = &self.xattrs {
            if self.deleted || self.kind == RecordKind::Symlink {
                return Err(format!("{}: extended attributes on a deletion or a symlink", self.path));
            }
            check_xattrs(list).map_err(|why| format!("{}: extended attributes: {why}", self.path))?;
        }
        Ok(())
    }

    /// An upper bound of the record's encoded size, in bytes (to cut
    /// frames by size without encoding twice).
    pub fn wire_size(&self) -> usize {
        let xattrs: usize = self.xattrs.iter().flatten().map(|(n, v)| n.len() + v.len() + 10).sum();
        64 + self.path.as_str().len()
            + self.vv.iter().count() * 48
            + self.blocks.len() * 34
            + self.symlink.len()
            + xattrs
    }

    /// Whether two records hold the same thing (ignoring history).
    pub fn same_content(&self, other: &FileRecord) -> bool {
        self.kind == other.kind
            && self.deleted == other.deleted
            && (self.deleted
                || (self.size == other.size
                    && self.blocks == other.blocks
                    && self.symlink == other.symlink
                    && self.perm == other.perm
                    && self.xattrs == other.xattrs))
    }

    /// The objects this record names directly (holes excluded): its blocks,
    /// or for a large file its pages (which name the blocks).
    pub fn named_objects(&self) -> impl Iterator<Item = ContentHash> + '_ {
        let list = match &self.blocks {
            Blocks::Listed(v) | Blocks::Paged(v) => v,
        };
        list.iter().flatten().copied()
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
