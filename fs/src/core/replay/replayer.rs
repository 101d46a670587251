//! The daemon's half of the replay: each change the sync core installed is
//! repeated as the matching syscall on the mount, from one thread.
//!
//! **Invariant:** the replay never leaves the mount. Every path is resolved
//! beneath a descriptor of the mount's root without following any symlink
//! ([`crate::beneath`]); a path that no longer resolves so (a peer replaced
//! a folder with a symlink meanwhile) is skipped and the kernel's cache of
//! it dropped, never acted on elsewhere.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{ftruncate, symlinkat, unlinkat, UnlinkatFlags};
use psync_store::{NodeKind, Store, ROOT_INO};

use super::{Replay, Step};
use crate::beneath::{self, dir_beneath, open_beneath};
use crate::core::FsCore;

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

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Replayer {
    fn store(&self) -> &Arc<Store> {
        self.fs.store()
    }

    /// Makes the calling thread the replaying thread (call once, on the
    /// thread that then calls [`Replayer::show`]; never a FUSE worker).
    pub fn become_replayer(&self) {
        self.fs.become_replayer();
    }

    /// Shows one batch of installed changes on the mount.
    pub fn show(&self, batch: &[Step]) {
        if self.fs.replaying_stopped() {
            for step in batch {
                self.forget(&step.path);
            }
            return;
        }
        match self.mount_root() {
            Ok(root) => self.apply(&root, batch),
            Err(e) => {
                tracing::warn!("cannot open the mount to show peers' changes: {e}");
                for step in batch {
                    self.forget(&step.path);
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
    fn apply(&self, root: &OwnedFd, batch: &[Step]) {
        let mut removals: Vec<&Step> = batch.iter().filter(|c| c.before.is_some() && c.before != c.after).collect();
        removals.sort_by_key(|c| std::cmp::Reverse(depth(&c.path)));
        for step in removals {
            if self.stopped_for(&step.path) {
                continue;
            }
            if let Some(kind) = step.before {
                self.vanish(root, &step.path, kind);
            }
        }
        let mut arrivals: Vec<&Step> = batch.iter().filter(|c| c.after.is_some()).collect();
        arrivals.sort_by_key(|c| depth(&c.path));
        for step in arrivals {
            if self.stopped_for(&step.path) {
                continue;
            }
            match (step.before, step.after) {
                (Some(NodeKind::File), Some(NodeKind::File)) => self.edit(root, &step.path),
                (Some(NodeKind::Dir), Some(NodeKind::Dir)) => self.forget(&step.path),
                (_, Some(kind)) => self.appear(root, &step.path, kind),
                (_, None) => {}
            }
        }
    }

    /// An unmount is coming: `path` is not replayed, only forgotten by the kernel.
    fn stopped_for(&self, path: &str) -> bool {
        let stopped = self.fs.replaying_stopped();
        if stopped {
            self.forget(path);
        }
        stopped
    }

    fn parent_ino(&self, path: &str) -> Option<u64> {
        match path.rsplit_once('/') {
            Some((dir, _)) => self.store().resolve(dir.as_bytes()).ok().map(|n| n.ino),
            None => Some(ROOT_INO),
        }
    }

    /// Drops what the kernel caches for `path` (the fallback when a replay
    /// cannot be done safely).
    fn forget(&self, path: &str) {
        if let Ok(node) = self.store().resolve(path.as_bytes()) {
            let _ = self.notifier.inval_inode(fuser::INodeNo(node.ino), 0, 0);
        }
        if let Some(parent) = self.parent_ino(path) {
            let _ = self.notifier.inval_entry(fuser::INodeNo(parent), OsStr::new(name_of(path)));
        }
    }

    /// The directory holding `path` on the mount, and its inode number as
    /// the kernel sees it (what our filesystem is asked about).
    fn parent_dir(&self, root: &OwnedFd, path: &str) -> io::Result<(OwnedFd, u64)> {
        let (parent, _) = beneath::split(path.as_bytes());
        let dir = dir_beneath(root, parent)?;
        let ino = fstat(&dir).map_err(nix_io)?.st_ino;
        Ok((dir, ino))
    }

    fn vanish(&self, root: &OwnedFd, path: &str, kind: NodeKind) {
        let name = OsStr::new(name_of(path));
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

    fn appear(&self, root: &OwnedFd, path: &str, kind: NodeKind) {
        let name = OsStr::new(name_of(path));
        let Ok(node) = self.store().resolve(path.as_bytes()) else { return };
        let result = self.parent_dir(root, path).and_then(|(dir, parent)| {
            // A negative entry the kernel cached would hide the creation.
            let _ = self.notifier.inval_entry(fuser::INodeNo(parent), name);
            self.fs.plan_replay(parent, name.as_encoded_bytes(), Replay::Appear);
            let done = match kind {
                NodeKind::Dir => mkdirat(&dir, name, Mode::from_bits_truncate(0o755)).map_err(nix_io),
                NodeKind::Symlink => symlinkat(node.symlink.as_slice(), &dir, name).map_err(nix_io),
                // Never through an existing name (O_EXCL), never blocking on
                // something that is not a file (O_NONBLOCK).
                _ => openat(
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

    fn edit(&self, root: &OwnedFd, path: &str) {
        let Ok(node) = self.store().resolve(path.as_bytes()) else { return };
        // The kernel's pages and size are of the old content. Open, truncate
        // to the store's size, close: the events of an edit (OPEN, MODIFY,
        // CLOSE_WRITE), and the kernel takes the new size (with the
        // writeback cache it takes none from us otherwise). The filesystem
        // refuses the truncate while a local writer has the file open.
        self.forget(path);
        let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK;
        let result = open_beneath(root, path.as_bytes(), flags).and_then(|file| {
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

/// Components in a `/`-separated path.
fn depth(path: &str) -> usize {
    path.split('/').count()
}

/// The last component of a `/`-separated path.
fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
