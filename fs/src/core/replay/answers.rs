//! The filesystem's half of the replay: requests from the replaying thread
//! are answered from the store as it already is, and change nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use psync_store::{Content, Inode, NodeKind};

use super::Replay;
use crate::core::{lock, FsCore, Handle};
use crate::error::{FsError, FsResult};

/// Inode numbers from here on are stand-ins for entries already gone from
/// the store; the store allocates from 1 upwards and never gets here.
const STAND_IN_BASE: u64 = 1 << 62;

#[derive(Debug, Default)]
pub(crate) struct ReplayState {
    /// An unmount is coming: replay no more syscalls (they would hold the
    /// mount busy); only drop what the kernel caches.
    stopped: std::sync::atomic::AtomicBool,
    /// Kernel thread id of the replaying thread (0: none yet).
    tid: AtomicU32,
    planned: Mutex<HashMap<(u64, Vec<u8>), Replay>>,
    next_stand_in: AtomicU64,
}

impl FsCore {
    /// An unmount is coming: the replaying thread makes no more syscalls on
    /// the mount (they would keep it busy); it only drops the kernel's caches.
    pub fn stop_replaying(&self) {
        self.replay.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether [`FsCore::stop_replaying`] was called.
    pub fn replaying_stopped(&self) -> bool {
        self.replay.stopped.load(Ordering::Relaxed)
    }

    /// Makes the calling thread the replaying thread.
    pub fn become_replayer(&self) {
        self.replay.tid.store(nix::unistd::gettid().as_raw() as u32, Ordering::Relaxed);
    }

    /// Whether a request comes from the replaying thread (FUSE reports the
    /// calling thread's id).
    pub fn is_replay(&self, pid: u32) -> bool {
        pid != 0 && pid == self.replay.tid.load(Ordering::Relaxed)
    }

    /// Announces what the replaying thread's next syscall on `parent/name`
    /// stands for; [`FsCore::replay_done`] withdraws it.
    pub fn plan_replay(&self, parent: u64, name: &[u8], replay: Replay) {
        lock(&self.replay.planned).insert((parent, name.to_vec()), replay);
    }

    /// The replay of `parent/name` is over (whether or not the kernel asked).
    pub fn replay_done(&self, parent: u64, name: &[u8]) {
        lock(&self.replay.planned).remove(&(parent, name.to_vec()));
    }

    fn planned(&self, parent: u64, name: &[u8]) -> Option<Replay> {
        lock(&self.replay.planned).get(&(parent, name.to_vec())).copied()
    }

    /// `lookup` for the replaying thread: an entry about to appear is not
    /// there yet; one about to vanish is still there (as a stand-in when
    /// the store has dropped its inode).
    pub fn replay_lookup(&self, parent: u64, name: &[u8]) -> FsResult<Inode> {
        match self.planned(parent, name) {
            None => self.lookup(parent, name),
            Some(Replay::Appear) => Err(FsError::posix(libc::ENOENT, "replay: not there yet")),
            Some(Replay::Vanish(kind)) => {
                let mut node = self.store.inode(parent)?;
                node.ino = STAND_IN_BASE + self.replay.next_stand_in.fetch_add(1, Ordering::Relaxed);
                node.kind = kind;
                node.perm = if kind == NodeKind::Dir { 0o755 } else { 0o644 };
                node.links.clear();
                node.subdirs = 0;
                node.content = Content::default();
                Ok(node)
            }
        }
    }

    /// `create`, `mkdir` or `symlink` by the replaying thread: the entry the
    /// store already has, with a handle if `open_flags` is given.
    pub fn replay_appear(&self, parent: u64, name: &[u8], open_flags: Option<i32>) -> FsResult<(Inode, u64)> {
        if self.planned(parent, name) != Some(Replay::Appear) {
            return Err(FsError::posix(libc::EEXIST, "replay: nothing planned to appear"));
        }
        let node = self.lookup(parent, name)?;
        let fh = match open_flags {
            Some(flags) => self.new_handle(Handle {
                ino: node.ino,
                append: false,
                writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
                replay: true,
            }),
            None => 0,
        };
        Ok((node, fh))
    }

    /// `open` by the replaying thread (an edit: open, truncate, close, as an
    /// editor would): a handle that changes nothing and is no local writer.
    pub fn replay_open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let node = self.store.inode(ino)?;
        if node.kind != NodeKind::File {
            return Err(FsError::posix(libc::EISDIR, "replay: open of a non-file"));
        }
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        Ok(self.new_handle(Handle { ino, append: false, writable, replay: true }))
    }

    /// `unlink` or `rmdir` by the replaying thread: already done in the store.
    pub fn replay_vanish(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        match self.planned(parent, name) {
            Some(Replay::Vanish(_)) => Ok(()),
            _ => Err(FsError::posix(libc::ENOENT, "replay: nothing planned to vanish")),
        }
    }

    /// `setattr` by the replaying thread: a truncate to the size the store
    /// already has, so the kernel reports a modification and takes the new
    /// size (with the writeback cache it never takes a size from us
    /// otherwise). Changes nothing in the store. Refused while a local
    /// writer has the file open: the kernel may hold its unwritten pages,
    /// which a truncate must not cut (its close commits them, and the sync
    /// rules then keep both versions).
    pub fn replay_setattr(&self, ino: u64) -> FsResult<Inode> {
        if self.store.has_writer(ino) {
            return Err(FsError::posix(libc::EBUSY, "replay: a local writer has the file open"));
        }
        self.getattr(ino)
    }
}
