//! The inode counts `psync status` shows, kept current by every commit
//! instead of walked at each ask.

use crate::records::{Inode, NodeKind};

/// What the inodes count: kept in memory, moved by every commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeCounts {
    pub(crate) files: u64,
    pub(crate) dirs: u64,
    pub(crate) symlinks: u64,
    pub(crate) specials: u64,
    pub(crate) logical_bytes: u64,
}

/// What one inode counts for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    kind: NodeKind,
    bytes: u64,
}

impl Counted {
    pub(crate) fn of(node: &Inode) -> Self {
        let bytes = if node.kind == NodeKind::File { node.content.size } else { 0 };
        Counted { kind: node.kind, bytes }
    }
}

/// How one commit moved the counts (signed: inodes come and go).
#[derive(Debug, Default)]
pub(crate) struct TreeChange {
    files: i64,
    dirs: i64,
    symlinks: i64,
    specials: i64,
    logical_bytes: i128,
}

impl TreeChange {
    /// An inode went from `before` to `after` (`None`: absent).
    pub(crate) fn add(&mut self, before: Option<Counted>, after: Option<Counted>) {
        for (counted, sign) in [(before, -1i64), (after, 1)] {
            let Some(c) = counted else { continue };
            match c.kind {
                NodeKind::File => self.files += sign,
                NodeKind::Dir => self.dirs += sign,
                NodeKind::Symlink => self.symlinks += sign,
                _ => self.specials += sign,
            }
            self.logical_bytes += i128::from(sign) * i128::from(c.bytes);
        }
    }
}

impl TreeCounts {
    pub(crate) fn apply(&mut self, change: &TreeChange) {
        let moved = |n: &mut u64, by: i128| *n = u64::try_from(i128::from(*n) + by).unwrap_or(0);
        moved(&mut self.files, change.files.into());
        moved(&mut self.dirs, change.dirs.into());
        moved(&mut self.symlinks, change.symlinks.into());
        moved(&mut self.specials, change.specials.into());
        moved(&mut self.logical_bytes, change.logical_bytes);
    }
}
