//! Shows peers' changes to applications watching the mount: each change the
//! sync core installed in the store is repeated as the matching syscall on
//! the mount (create, mkdir, symlink, a truncate to the new size for an edit,
//! unlink, rmdir) from this one thread, so the kernel raises the inotify
//! events an editor expects and drops what it had cached. The filesystem
//! recognises this thread and answers from the store without changing it
//! (see `psync_fs::Replay`), so nothing is committed twice or echoed back.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use psync_fs::{FsCore, Replay};
use psync_store::{NodeKind, Store, ROOT_INO};
use psync_sync::{Change, RecordKind, SyncPath};

/// Repeats installed changes on the mount.
pub struct Replayer {
    /// Where the store is mounted.
    pub mountpoint: PathBuf,
    /// The filesystem (to plan each replay).
    pub fs: Arc<FsCore>,
    /// The kernel's cache of the mount.
    pub notifier: fuser::Notifier,
}

fn node_kind(kind: RecordKind) -> NodeKind {
    match kind {
        RecordKind::File => NodeKind::File,
        RecordKind::Dir => NodeKind::Dir,
        RecordKind::Symlink => NodeKind::Symlink,
    }
}

impl Replayer {
    fn store(&self) -> &Arc<Store> {
        self.fs.store()
    }

    /// Runs on the calling thread until `changes` closes.
    pub fn run(self, mut changes: tokio::sync::mpsc::UnboundedReceiver<Vec<Change>>) {
        self.fs.become_replayer();
        while let Some(batch) = changes.blocking_recv() {
            self.apply(batch);
        }
    }

    /// Removals deepest first (children before their directory), then
    /// creations and edits shallowest first (directories before children).
    fn apply(&self, batch: Vec<Change>) {
        let mut removals: Vec<&Change> = batch.iter().filter(|c| c.before.is_some() && c.before != c.after).collect();
        removals.sort_by_key(|c| std::cmp::Reverse(c.path.depth()));
        for change in removals {
            if let Some(kind) = change.before {
                self.vanish(&change.path, node_kind(kind));
            }
        }
        let mut arrivals: Vec<&Change> = batch.iter().filter(|c| c.after.is_some()).collect();
        arrivals.sort_by_key(|c| c.path.depth());
        for change in arrivals {
            match (change.before, change.after) {
                (Some(RecordKind::File), Some(RecordKind::File)) => self.edit(&change.path),
                (Some(RecordKind::Dir), Some(RecordKind::Dir)) => self.forget(&change.path),
                (_, Some(kind)) => self.appear(&change.path, kind),
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

    fn on_mount(&self, path: &SyncPath) -> PathBuf {
        self.mountpoint.join(path.as_str())
    }

    /// Drops what the kernel caches for `path` (the fallback when a replay fails).
    fn forget(&self, path: &SyncPath) {
        if let Ok(node) = self.store().resolve(path.as_str().as_bytes()) {
            let _ = self.notifier.inval_inode(fuser::INodeNo(node.ino), 0, 0);
        }
        if let Some(parent) = self.parent_ino(path) {
            let _ = self.notifier.inval_entry(fuser::INodeNo(parent), OsStr::new(path.name()));
        }
    }

    fn vanish(&self, path: &SyncPath, kind: NodeKind) {
        let Some(parent) = self.parent_ino(path) else { return };
        let name = path.name().as_bytes();
        self.fs.plan_replay(parent, name, Replay::Vanish(kind));
        let target = self.on_mount(path);
        let result = if kind == NodeKind::Dir { std::fs::remove_dir(&target) } else { std::fs::remove_file(&target) };
        self.fs.replay_done(parent, name);
        if let Err(e) = result {
            tracing::debug!("replaying the removal of {path}: {e}");
        }
        let _ = self.notifier.inval_entry(fuser::INodeNo(parent), OsStr::from_bytes(name));
    }

    fn appear(&self, path: &SyncPath, kind: RecordKind) {
        let Some(parent) = self.parent_ino(path) else { return };
        let name = path.name().as_bytes();
        let Ok(node) = self.store().resolve(path.as_str().as_bytes()) else { return };
        // A negative entry the kernel cached would hide the creation.
        let _ = self.notifier.inval_entry(fuser::INodeNo(parent), OsStr::from_bytes(name));
        self.fs.plan_replay(parent, name, Replay::Appear);
        let target = self.on_mount(path);
        let result = match kind {
            RecordKind::Dir => std::fs::create_dir(&target),
            RecordKind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(&node.symlink), &target),
            RecordKind::File => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&target)
                .and_then(|file| if node.content.size > 0 { file.set_len(node.content.size) } else { Ok(()) }),
        };
        self.fs.replay_done(parent, name);
        if let Err(e) = result {
            tracing::debug!("replaying the creation of {path}: {e}");
            self.forget(path);
        }
    }

    fn edit(&self, path: &SyncPath) {
        let Ok(node) = self.store().resolve(path.as_str().as_bytes()) else { return };
        // The kernel's pages and size are of the old content. Open, truncate
        // to the store's size, close: the events of an edit (OPEN, MODIFY,
        // CLOSE_WRITE), and the kernel takes the new size (with the
        // writeback cache it takes none from us otherwise). The filesystem
        // refuses the truncate while a local writer has the file open.
        self.forget(path);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .open(self.on_mount(path))
            .and_then(|file| file.set_len(node.content.size));
        if let Err(e) = result {
            tracing::debug!("replaying the edit of {path}: {e}");
            self.forget(path);
        }
    }
}
