//! Replaying peers' changes through the mount, both halves in one place.
//!
//! A peer's change goes into the store directly, and Linux raises inotify
//! events only for operations that pass through the VFS, so editors
//! watching the mount would never hear of it; the kernel would also keep
//! serving what it cached. So the daemon repeats each installed change as
//! the matching syscall on its own mount (create, mkdir, symlink, a
//! truncate to the new size for an edit, unlink, rmdir) from one dedicated
//! thread ([`Replayer`], never a FUSE worker: that would deadlock). Before
//! each syscall it announces what it stands for ([`Replay`]); the
//! filesystem recognises that thread's requests by thread id and answers
//! them from the store as it already is (`answers.rs`): they change
//! nothing, so nothing is committed twice or synced back.

mod answers;
mod replayer;

pub(crate) use answers::ReplayState;
pub use replayer::Replayer;

use psync_store::NodeKind;

/// What the replaying thread is about to do to one directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The entry is in the store already; the kernel must see it created.
    Appear,
    /// The entry is gone from the store already; the kernel must see it removed.
    Vanish(NodeKind),
}

/// One installed change to show: what was at `path` before and what is now
/// (`None`: nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `/`-separated, relative to the mount's root (a validated sync path).
    pub path: String,
    /// What was there.
    pub before: Option<NodeKind>,
    /// What is there now.
    pub after: Option<NodeKind>,
}
