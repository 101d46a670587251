//! Shows peers' changes to applications watching the mount: each change the
//! sync core installed in the store is repeated as the matching syscall on
//! the mount (create, mkdir, symlink, a truncate to the new size for an edit,
//! unlink, rmdir) from this one thread, so the kernel raises the inotify
//! events an editor expects and drops what it had cached. The filesystem
//! recognises this thread and answers from the store without changing it
//! (see `psync_fs::Replay`), so nothing is committed twice or echoed back.
//!
//! **Invariant:** the replay never leaves the mount. Every path is resolved
//! beneath a descriptor of the mount's root without following any symlink
//! ([`beneath`]); a path that no longer resolves so (a peer replaced a
//! folder with a symlink meanwhile) is skipped and the kernel's cache of it
//! dropped, never acted on elsewhere.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{ftruncate, symlinkat, unlinkat, UnlinkatFlags};
use psync_fs::{FsCore, Replay};
use psync_store::{NodeKind, Store, ROOT_INO};
use psync_sync::{Change, RecordKind, SyncPath};

pub mod beneath;

use beneath::{dir_beneath, open_beneath};

/// Repeats installed changes on the mount.
pub struct Replayer {
    /// Where the store is mounted.
    pub mountpoint: PathBuf,
    /// The filesystem (to plan each replay).
    pub fs: Arc<FsCore>,
    /// The kernel's cache of the mount.
    pub notifier: fuser::Notifier,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer").field("mountpoint", &self.mountpoint).finish()
    }
}

fn node_kind(kind: RecordKind) -> NodeKind {
    match kind {
        RecordKind::File => NodeKind::File,
        RecordKind::Dir => NodeKind::Dir,
        RecordKind::Symlink => NodeKind::Symlink,
    }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Replayer {
    fn store(&self) -> &Arc<Store> {
        self.fs.store()
    }

    /// Runs on the calling thread until `changes` closes.
    pub fn run(self, mut changes: tokio::sync::mpsc::UnboundedReceiver<Vec<Change>>) {
        self.fs.become_replayer();
        while let Some(batch) = changes.blocking_recv() {
            match self.mount_root() {
                Ok(root) => self.apply(&root, batch),
                Err(e) => {
                    tracing::warn!("cannot open the mount to show peers' changes: {e}");
                    for change in &batch {
                        self.forget(&change.path);
                    }
                }
            }
        }
    }

    /// A descriptor of the mount's root, checked to be the root of this
    /// filesystem (opened per batch: a descriptor held open would keep
    /// `psync unmount` from unmounting).
    fn mount_root(&self) -> io::Result<OwnedFd> {
        let root = beneath::open_root(&self.mountpoint)?;
        let stat = fstat(&root).map_err(nix_io)?;
        if stat.st_ino != ROOT_INO {
            return Err(io::Error::other(format!("{} is not the root of the mount", self.mountpoint.display())));
        }
        Ok(root)
    }

    /// Removals deepest first (children before their directory), then
    /// creations and edits shallowest first (directories before children).
    fn apply(&self, root: &OwnedFd, batch: Vec<Change>) {
        let mut removals: Vec<&Change> = batch.iter().filter(|c| c.before.is_some() && c.before != c.after).collect();
        removals.sort_by_key(|c| std::cmp::Reverse(c.path.depth()));
        for change in removals {
            if let Some(kind) = change.before {
                self.vanish(root, &change.path, node_kind(kind));
            }
        }
        let mut arrivals: Vec<&Change> = batch.iter().filter(|c| c.after.is_some()).collect();
        arrivals.sort_by_key(|c| c.path.depth());
        for change in arrivals {
            match (change.before, change.after) {
                (Some(RecordKind::File), Some(RecordKind::File)) => self.edit(root, &change.path),
                (Some(RecordKind::Dir), Some(RecordKind::Dir)) => self.forget(&change.path),
                (_, Some(kind)) => self.appear(root, &change.path, kind),
                (_, None) => {}
            }
        }
    }

    fn parent_ino(&self, path: &SyncPath) -> Option<u64> {
        match path.parent() {
            Some(dir) => self.store().resolve(dir.as_str().as_bytes()).ok().map(|n| n.ino),
            None => Some(ROOT_INO),
        }
    }

    /// Drops what the kernel caches for `path` (the fallback when a replay
    /// cannot be done safely).
    fn forget(&self, path: &SyncPath) {
        if let Ok(node) = self.store().resolve(path.as_str().as_bytes()) {
            let _ = self.notifier.inval_inode(fuser::INodeNo(node.ino), 0, 0);
        }
        if let Some(parent) = self.parent_ino(path) {
            let _ = self.notifier.inval_entry(fuser::INodeNo(parent), OsStr::new(path.name()));
        }
    }

    /// The directory holding `path` on the mount, and its inode number as
    /// the kernel sees it (what our filesystem is asked about).
    fn parent_dir(&self, root: &OwnedFd, path: &SyncPath) -> io::Result<(OwnedFd, u64)> {
        let (parent, _) = beneath::split(path.as_str().as_bytes());
        let dir = dir_beneath(root, parent)?;
        let ino = fstat(&dir).map_err(nix_io)?.st_ino;
        Ok((dir, ino))
    }

    fn vanish(&self, root: &OwnedFd, path: &SyncPath, kind: NodeKind) {
        let name = OsStr::new(path.name());
        let result = self.parent_dir(root, path).and_then(|(dir, parent)| {
            self.fs.plan_replay(parent, name.as_encoded_bytes(), Replay::Vanish(kind));
            let flag = if kind == NodeKind::Dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
            let done = unlinkat(&dir, name, flag).map_err(nix_io);
            self.fs.replay_done(parent, name.as_encoded_bytes());
            let _ = self.notifier.inval_entry(fuser::INodeNo(parent), name);
            done
        });
        if let Err(e) = result {
            tracing::debug!("replaying the removal of {path}: {e}");
            self.forget(path);
        }
    }

    fn appear(&self, root: &OwnedFd, path: &SyncPath, kind: RecordKind) {
        let name = OsStr::new(path.name());
        let Ok(node) = self.store().resolve(path.as_str().as_bytes()) else { return };
        let result = self.parent_dir(root, path).and_then(|(dir, parent)| {
            // A negative entry the kernel cached would hide the creation.
            let _ = self.notifier.inval_entry(fuser::INodeNo(parent), name);
            self.fs.plan_replay(parent, name.as_encoded_bytes(), Replay::Appear);
            let done = match kind {
                RecordKind::Dir => mkdirat(&dir, name, Mode::from_bits_truncate(0o755)).map_err(nix_io),
                RecordKind::Symlink => symlinkat(node.symlink.as_slice(), &dir, name).map_err(nix_io),
                // Never through an existing name (O_EXCL), never blocking on
                // something that is not a file (O_NONBLOCK).
                RecordKind::File => openat(
                    &dir,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_NONBLOCK
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .map_err(nix_io)
                .and_then(|file| {
                    if node.content.size > 0 {
                        ftruncate(&file, node.content.size as i64).map_err(nix_io)
                    } else {
                        Ok(())
                    }
                }),
            };
            self.fs.replay_done(parent, name.as_encoded_bytes());
            done
        });
        if let Err(e) = result {
            tracing::debug!("replaying the creation of {path}: {e}");
            self.forget(path);
        }
    }

    fn edit(&self, root: &OwnedFd, path: &SyncPath) {
        let Ok(node) = self.store().resolve(path.as_str().as_bytes()) else { return };
        // The kernel's pages and size are of the old content. Open, truncate
        // to the store's size, close: the events of an edit (OPEN, MODIFY,
        // CLOSE_WRITE), and the kernel takes the new size (with the
        // writeback cache it takes none from us otherwise). The filesystem
        // refuses the truncate while a local writer has the file open.
        self.forget(path);
        let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK;
        let result = open_beneath(root, path.as_str().as_bytes(), flags).and_then(|file| {
            let stat = fstat(&file).map_err(nix_io)?;
            if beneath::file_type(&stat) != SFlag::S_IFREG {
                return Err(io::Error::other("not a regular file on the mount"));
            }
            ftruncate(&file, node.content.size as i64).map_err(nix_io)
        });
        if let Err(e) = result {
            tracing::debug!("replaying the edit of {path}: {e}");
            self.forget(path);
        }
    }
}
