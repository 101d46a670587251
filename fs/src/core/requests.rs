//! What the kernel asks, answered by who asks: the replaying thread's
//! requests go to the replay protocol (`replay`), everyone else's to
//! the filesystem. Each FUSE callback makes exactly one of these calls.

use psync_store::Inode;

use super::{Caller, FsCore, Listing, SetAttrRequest};
use crate::error::FsResult;

impl FsCore {
    /// `lookup`.
    pub fn request_lookup(&self, caller: Caller, parent: u64, name: &[u8]) -> FsResult<Inode> {
        if self.is_replay(caller.pid) {
            self.replay_lookup(parent, name)
        } else {
            self.lookup(parent, name)
        }
    }

    /// `setattr`. Only the replay's own truncate is a replay: other requests
    /// its syscalls make the kernel send (writing back a local writer's
    /// times, say) are applied as usual.
    pub fn request_setattr(&self, caller: Caller, ino: u64, req: SetAttrRequest) -> FsResult<Inode> {
        if self.is_replay(caller.pid) && req.size.is_some() {
            self.replay_setattr(ino)
        } else {
            self.setattr(ino, req)
        }
    }

    /// `mkdir`.
    pub fn request_mkdir(&self, caller: Caller, parent: u64, name: &[u8], mode: u32, umask: u32) -> FsResult<Inode> {
        if self.is_replay(caller.pid) {
            self.replay_appear(parent, name, None).map(|(node, _)| node)
        } else {
            self.mkdir(parent, name, mode, umask, caller)
        }
    }

    /// `symlink`.
    pub fn request_symlink(&self, caller: Caller, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Inode> {
        if self.is_replay(caller.pid) {
            self.replay_appear(parent, name, None).map(|(node, _)| node)
        } else {
            self.symlink(parent, name, target, caller)
        }
    }

    /// `create`: the new node and an open handle.
    pub fn request_create(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Inode, u64)> {
        if self.is_replay(caller.pid) {
            self.replay_appear(parent, name, Some(flags))
        } else {
            self.create(parent, name, mode, umask, flags, caller)
        }
    }

    /// `unlink`.
    pub fn request_unlink(&self, caller: Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        if self.is_replay(caller.pid) {
            self.replay_vanish(parent, name)
        } else {
            self.unlink(parent, name)
        }
    }

    /// `rmdir`.
    pub fn request_rmdir(&self, caller: Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        if self.is_replay(caller.pid) {
            self.replay_vanish(parent, name)
        } else {
            self.rmdir(parent, name)
        }
    }

    /// `open`.
    pub fn request_open(&self, caller: Caller, ino: u64, flags: i32) -> FsResult<u64> {
        if self.is_replay(caller.pid) {
            self.replay_open(ino, flags)
        } else {
            self.open(ino, flags)
        }
    }

    /// `readdirplus`: entries from `offset` with their attributes, handed to
    /// `add` until it says the reply is full. Each entry the reply keeps is
    /// one kernel reference (a lookup count), except `.` and `..`; one that
    /// did not fit is not counted; one removed since `opendir` is skipped.
    pub fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &Listing, &Inode) -> bool,
    ) -> FsResult<()> {
        for (i, entry) in self.readdir(fh, offset)?.iter().enumerate() {
            let dots = entry.name == b"." || entry.name == b"..";
            let node = if dots { self.getattr(entry.ino) } else { self.lookup_listed(entry.ino) };
            let Ok(node) = node else { continue };
            let full = add(offset + i as u64 + 1, entry, &node);
            if full {
                if !dots {
                    self.forget(entry.ino, 1);
                }
                break;
            }
        }
        Ok(())
    }
}
