//! [`FsCore`]: POSIX semantics over the store, without FUSE. Every method
//! returns `FsResult`; the FUSE adapter only decodes, calls and replies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use psync_store::{Inode, NewNode, NodeAttrs, NodeKind, RenameMode, SetAttr, Store, StoreError, Timestamp, ROOT_INO};

use crate::error::{FsError, FsResult};

pub mod replay;
mod requests;
mod xattr;

/// What the filesystem tells the sync engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsEvent {
    /// A file's content was committed as a new version (on close or fsync).
    Committed {
        /// The file.
        ino: u64,
        /// Sequence number of the new version.
        seq: u64,
    },
    /// The namespace or metadata changed (create, mkdir, rename, delete,
    /// chmod, ...): the store's change log has moved on.
    Changed,
}

/// Who is calling (from the FUSE request header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
}

impl Caller {
    /// Root, for tests and internal work.
    pub const ROOT: Caller = Caller { uid: 0, gid: 0, pid: 0 };
}

/// A time given to `setattr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// `UTIME_NOW`.
    Now,
    /// An explicit time.
    At(Timestamp),
}

/// The attributes a `setattr` call asks to change.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttrRequest {
    /// New mode (permission bits are used).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// The handle, for `ftruncate` and friends.
    pub fh: Option<u64>,
}

/// Filesystem statistics for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Total blocks of `block_size`.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Free blocks available to unprivileged users.
    pub blocks_available: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Block size.
    pub block_size: u32,
    /// Longest name.
    pub name_max: u32,
}

/// One directory entry as listed by `readdir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: NodeKind,
    /// Name (`.` and `..` included).
    pub name: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Handle {
    pub(crate) ino: u64,
    pub(crate) append: bool,
    pub(crate) writable: bool,
    /// Opened by the replaying thread, which never writes data: not a
    /// local writer (see `Store::has_writer`).
    pub(crate) replay: bool,
}

impl Handle {
    fn local_writer(&self) -> bool {
        self.writable && !self.replay
    }
}

/// POSIX filesystem semantics over a [`Store`].
pub struct FsCore {
    pub(crate) store: Arc<Store>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Directory listings taken at `opendir`, so offsets stay stable while
    /// entries are added or removed during a listing.
    dirs: Mutex<HashMap<u64, Vec<Listing>>>,
    next_fh: AtomicU64,
    events: Option<Sender<FsEvent>>,
    /// The kernel caches writes (FUSE writeback cache): offsets it sends are
    /// final, including for O_APPEND, which it resolves itself.
    kernel_writeback: AtomicBool,
    pub(crate) replay: replay::ReplayState,
}

impl std::fmt::Debug for FsCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsCore").field("store", &self.store).finish_non_exhaustive()
    }
}

const O_ACCMODE: i32 = libc::O_ACCMODE;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No invariant spans a panic inside these maps' critical sections.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FsCore {
    /// Wraps `store`. Files left dirty by a daemon that was killed are
    /// committed now, so their content becomes a version that syncs.
    pub fn new(store: Arc<Store>, events: Option<Sender<FsEvent>>) -> FsResult<FsCore> {
        let core = FsCore {
            store,
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            events,
            kernel_writeback: AtomicBool::new(false),
            replay: replay::ReplayState::default(),
        };
        let dirty = core.store.dirty_files()?;
        if !dirty.is_empty() {
            tracing::info!(count = dirty.len(), "committing files left open by the previous run");
        }
        for ino in dirty {
            core.commit(ino, false)?;
        }
        Ok(core)
    }

    /// Records whether the kernel caches writes (negotiated at mount).
    pub fn set_kernel_writeback(&self, enabled: bool) {
        self.kernel_writeback.store(enabled, Ordering::Relaxed);
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn emit(&self, event: FsEvent) {
        if let Some(tx) = &self.events {
            // A listener that went away is not the filesystem's problem.
            let _ = tx.send(event);
        }
    }

    fn commit(&self, ino: u64, durable: bool) -> FsResult<()> {
        if let Some(seq) = self.store.commit(ino, Timestamp::now(), durable)? {
            self.emit(FsEvent::Committed { ino, seq });
        }
        Ok(())
    }

    pub(crate) fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.store.pin(handle.ino, 1);
        if handle.local_writer() {
            self.store.writer_opened(handle.ino);
        }
        lock(&self.handles).insert(fh, handle);
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Handle> {
        lock(&self.handles).get(&fh).copied().ok_or(FsError::posix(libc::EBADF, "unknown file handle"))
    }

    /// Attributes for a new node: mode without umask, owner from the caller,
    /// group and setgid bit inherited from a setgid parent (as ext4 does).
    fn new_attrs(&self, parent: &Inode, mode: u32, umask: u32, caller: Caller, is_dir: bool) -> NodeAttrs {
        let mut perm = mode & !umask & 0o7777;
        let mut gid = caller.gid;
        if parent.perm & libc::S_ISGID != 0 {
            gid = parent.gid;
            if is_dir {
                perm |= libc::S_ISGID;
            }
        }
        NodeAttrs { perm, uid: caller.uid, gid }
    }

    // ---- namespace ---------------------------------------------------------

    /// `lookup`. Like every reply that hands the kernel an entry, it counts
    /// as one kernel reference (see the lookup-count contract in
    /// ARCHITECTURE.md) until [`FsCore::forget`] drops it.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Inode> {
        Ok(self.store.lookup_pinned(parent, name)?)
    }

    /// `forget`: the kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if let Err(e) = self.store.unpin(ino, n) {
            tracing::error!(ino, "forget: {e}");
        }
    }

    /// Counts one kernel reference to an entry handed out in a reply.
    fn referenced(&self, node: Inode) -> Inode {
        self.store.pin(node.ino, 1);
        node
    }

    /// For `readdirplus`: the entry's attributes, counted as a kernel
    /// reference (undo with [`FsCore::forget`] if the entry was not sent).
    pub fn lookup_listed(&self, ino: u64) -> FsResult<Inode> {
        self.store.pin(ino, 1);
        match self.store.inode(ino) {
            Ok(node) => Ok(node),
            Err(e) => {
                self.forget(ino, 1);
                Err(e.into())
            }
        }
    }

    /// `getattr`.
    pub fn getattr(&self, ino: u64) -> FsResult<Inode> {
        Ok(self.store.inode(ino)?)
    }

    /// `setattr`: chmod, chown, truncate/ftruncate, utimens.
    pub fn setattr(&self, ino: u64, req: SetAttrRequest) -> FsResult<Inode> {
        let now = Timestamp::now();
        if let Some(size) = req.size {
            if let Some(fh) = req.fh {
                if !self.handle(fh)?.writable {
                    return Err(FsError::posix(libc::EBADF, "ftruncate on a read-only handle"));
                }
            }
            self.store.truncate(ino, size, now)?;
            // A path truncate has no close to commit on: commit now.
            if req.fh.is_none() {
                self.commit(ino, false)?;
            }
        }
        let resolve = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(t) => t,
        };
        let attr = SetAttr {
            perm: req.mode.map(|m| m & 0o7777),
            uid: req.uid,
            gid: req.gid,
            atime: req.atime.map(resolve),
            mtime: req.mtime.map(resolve),
        };
        let node = self.store.set_attr(ino, &attr, now)?;
        self.emit(FsEvent::Changed);
        Ok(node)
    }

    /// `readlink`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.store.inode(ino)?;
        if node.kind != NodeKind::Symlink {
            return Err(FsError::posix(libc::EINVAL, "readlink of a non-symlink"));
        }
        Ok(node.symlink)
    }

    /// `mknod`: regular files, FIFOs, sockets and device nodes. The special
    /// kinds are local to this device (never synced); the kernel serves them,
    /// and the mount's `nodev` keeps device nodes from being opened.
    pub fn mknod(&self, parent: u64, name: &[u8], mode: u32, umask: u32, rdev: u32, caller: Caller) -> FsResult<Inode> {
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => None,
            libc::S_IFIFO => Some(NodeKind::Fifo),
            libc::S_IFSOCK => Some(NodeKind::Socket),
            libc::S_IFCHR => Some(NodeKind::CharDevice),
            libc::S_IFBLK => Some(NodeKind::BlockDevice),
            _ => return Err(FsError::posix(libc::EINVAL, "unknown file type in mknod")),
        };
        let dir = self.store.inode(parent)?;
        let attrs = self.new_attrs(&dir, mode, umask, caller, false);
        let node = match kind {
            None => {
                let node = self.store.create(parent, name, NewNode::File, attrs, Timestamp::now())?;
                self.commit(node.ino, false)?;
                self.store.inode(node.ino)?
            }
            Some(kind) => {
                let node = self.store.create(parent, name, NewNode::Special(kind, rdev), attrs, Timestamp::now())?;
                self.emit(FsEvent::Changed);
                node
            }
        };
        Ok(self.referenced(node))
    }

    /// `mkdir`.
    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, umask: u32, caller: Caller) -> FsResult<Inode> {
        let dir = self.store.inode(parent)?;
        let attrs = self.new_attrs(&dir, mode, umask, caller, true);
        let node = self.store.create(parent, name, NewNode::Dir, attrs, Timestamp::now())?;
        self.emit(FsEvent::Changed);
        Ok(self.referenced(node))
    }

    /// `symlink`.
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], caller: Caller) -> FsResult<Inode> {
        if target.len() > libc::PATH_MAX as usize {
            return Err(FsError::posix(libc::ENAMETOOLONG, "symlink target too long"));
        }
        let dir = self.store.inode(parent)?;
        let mut attrs = self.new_attrs(&dir, 0o777, 0, caller, false);
        attrs.perm = 0o777;
        let node = self.store.create(parent, name, NewNode::Symlink(target), attrs, Timestamp::now())?;
        self.emit(FsEvent::Changed);
        Ok(self.referenced(node))
    }

    /// `unlink`.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.store.unlink(parent, name, Timestamp::now())?;
        self.emit(FsEvent::Changed);
        Ok(())
    }

    /// `rmdir`.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.store.rmdir(parent, name, Timestamp::now())?;
        self.emit(FsEvent::Changed);
        Ok(())
    }

    /// `rename` with Linux `renameat2` flags.
    pub fn rename(&self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], flags: u32) -> FsResult<()> {
        let mode = match flags {
            0 => RenameMode::Replace,
            f if f == libc::RENAME_NOREPLACE => RenameMode::NoReplace,
            f if f == libc::RENAME_EXCHANGE => RenameMode::Exchange,
            _ => return Err(FsError::posix(libc::EINVAL, "unsupported rename flags")),
        };
        self.store.rename(parent, name, new_parent, new_name, mode, Timestamp::now())?;
        self.emit(FsEvent::Changed);
        Ok(())
    }

    /// `link`.
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> FsResult<Inode> {
        let node = self.store.link(ino, new_parent, new_name, Timestamp::now())?;
        self.emit(FsEvent::Changed);
        Ok(self.referenced(node))
    }

    // ---- files -------------------------------------------------------------

    /// `create`: a new file, opened. Committed on close like any write.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> FsResult<(Inode, u64)> {
        let format = mode & libc::S_IFMT;
        if format != 0 && format != libc::S_IFREG {
            return Err(FsError::posix(libc::EPERM, "only regular files can be created"));
        }
        let dir = self.store.inode(parent)?;
        let attrs = self.new_attrs(&dir, mode, umask, caller, false);
        let node = self.referenced(self.store.create(parent, name, NewNode::File, attrs, Timestamp::now())?);
        let fh = self.new_handle(Handle {
            ino: node.ino,
            append: flags & libc::O_APPEND != 0,
            writable: flags & O_ACCMODE != libc::O_RDONLY,
            replay: false,
        });
        Ok((node, fh))
    }

    /// `open`. Honours `O_TRUNC` and `O_APPEND`.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let node = self.store.inode(ino)?;
        match node.kind {
            NodeKind::File => {}
            NodeKind::Dir => return Err(FsError::posix(libc::EISDIR, "open of a directory")),
            NodeKind::Symlink => return Err(FsError::posix(libc::ELOOP, "open of a symlink")),
            // The kernel serves FIFOs, sockets and devices without asking us.
            _ => return Err(FsError::posix(libc::ENXIO, "open of a special file")),
        }
        let writable = flags & O_ACCMODE != libc::O_RDONLY;
        if writable && flags & libc::O_TRUNC != 0 && node.content.size != 0 {
            self.store.truncate(ino, 0, Timestamp::now())?;
        }
        Ok(self.new_handle(Handle { ino, append: flags & libc::O_APPEND != 0, writable, replay: false }))
    }

    /// `read`: holes and the gap past a block's data read as zeros.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        Ok(self.store.read(ino, offset, size)?)
    }

    /// `write`. Without the kernel's writeback cache, `O_APPEND` data goes at
    /// the current end whatever offset the kernel computed from possibly
    /// stale attributes; with it, the kernel's offsets are authoritative.
    pub fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        if handle.ino != ino {
            return Err(FsError::posix(libc::EBADF, "handle belongs to another inode"));
        }
        if !handle.writable {
            return Err(FsError::posix(libc::EBADF, "write on a read-only handle"));
        }
        let now = Timestamp::now();
        if handle.append && !self.kernel_writeback.load(Ordering::Relaxed) {
            self.store.append(ino, data, now)?;
        } else {
            self.store.write(ino, offset, data, now)?;
        }
        Ok(data.len() as u32)
    }

    /// `flush` (every `close(2)` of a descriptor): nothing to do, writes are
    /// already in the store. Commits happen at `release`, the last close of
    /// the open file, so `dup`ed descriptors don't create empty versions.
    pub fn flush(&self, ino: u64) -> FsResult<()> {
        self.store.inode(ino).map(|_| ()).map_err(FsError::from)
    }

    /// `fsync`: commits and makes everything durable before returning.
    pub fn fsync(&self, ino: u64) -> FsResult<()> {
        self.commit(ino, true)
    }

    /// `fsyncdir`: directory changes are durable on return.
    pub fn fsyncdir(&self) -> FsResult<()> {
        Ok(self.store.sync()?)
    }

    /// `release` (last close of an open file description).
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let Some(handle) = lock(&self.handles).remove(&fh) else {
            return Err(FsError::posix(libc::EBADF, "release of an unknown handle"));
        };
        let committed = self.commit(handle.ino, false);
        if handle.local_writer() {
            self.store.writer_closed(handle.ino);
            // Peers' versions held back while it was open can be decided now.
            self.emit(FsEvent::Changed);
        }
        self.store.unpin(handle.ino, 1)?;
        committed
    }

    /// `fallocate`: mode 0 extends the file; `FALLOC_FL_KEEP_SIZE` is a
    /// no-op (blocks are allocated on write); other modes are not supported.
    pub fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let end = offset.checked_add(length).ok_or(FsError::posix(libc::EFBIG, "fallocate range overflows"))?;
        match mode {
            0 => {
                let node = self.store.inode(ino)?;
                if end > node.content.size {
                    self.store.truncate(ino, end, Timestamp::now())?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(FsError::posix(libc::EOPNOTSUPP, "fallocate mode not supported")),
        }
    }

    // ---- directories -------------------------------------------------------

    /// `opendir`: snapshots the listing.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let dir = self.store.inode(ino)?;
        if dir.kind != NodeKind::Dir {
            return Err(FsError::posix(libc::ENOTDIR, "opendir of a non-directory"));
        }
        let parent = dir.links.first().map_or(ROOT_INO, |l| l.parent);
        let mut listing = vec![
            Listing { ino, kind: NodeKind::Dir, name: b".".to_vec() },
            Listing { ino: parent, kind: NodeKind::Dir, name: b"..".to_vec() },
        ];
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.read_dir(ino, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            listing.extend(page.into_iter().map(|(name, e)| Listing { ino: e.ino, kind: e.kind, name }));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, listing);
        Ok(fh)
    }

    /// Entries of an open directory from index `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<Listing>> {
        let dirs = lock(&self.dirs);
        let listing = dirs.get(&fh).ok_or(FsError::posix(libc::EBADF, "readdir on an unknown handle"))?;
        Ok(listing.iter().skip(offset as usize).cloned().collect())
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    // ---- the rest ----------------------------------------------------------

    /// `statfs`: space is that of the disk holding the data dir.
    pub fn statfs(&self, data_dir: &std::path::Path) -> FsResult<FsStats> {
        let vfs = nix_statvfs(data_dir)?;
        Ok(vfs)
    }

    /// `access`: checks `mask` (R_OK/W_OK/X_OK bits) against the mode the
    /// way the kernel would; F_OK only checks existence.
    pub fn access(&self, ino: u64, mask: i32, caller: Caller) -> FsResult<()> {
        let node = self.store.inode(ino)?;
        if mask == libc::F_OK {
            return Ok(());
        }
        let perm = node.perm;
        let granted = if caller.uid == 0 {
            // Root may read and write anything, and execute if anyone may.
            let x = if node.kind == NodeKind::Dir || perm & 0o111 != 0 { libc::X_OK } else { 0 };
            libc::R_OK | libc::W_OK | x
        } else {
            let bits = if caller.uid == node.uid {
                perm >> 6
            } else if caller.gid == node.gid {
                perm >> 3
            } else {
                perm
            } & 0o7;
            bits as i32
        };
        if mask & !granted & 0o7 != 0 {
            return Err(FsError::posix(libc::EACCES, "access denied"));
        }
        Ok(())
    }

    /// Called at unmount: commits every file still open and syncs.
    pub fn destroy(&self) {
        let open: Vec<u64> = lock(&self.handles).values().map(|h| h.ino).collect();
        for ino in open {
            if let Err(e) = self.commit(ino, false) {
                tracing::error!(ino, "commit at unmount failed: {e}");
            }
        }
        if let Err(e) = self.store.sync().and_then(|()| self.store.flush_memtables()) {
            tracing::error!("sync at unmount failed: {e}");
        }
    }

    /// The data dir, for `statfs`.
    pub fn data_dir(&self) -> PathBuf {
        self.store.data_dir().to_path_buf()
    }
}

fn nix_statvfs(path: &std::path::Path) -> FsResult<FsStats> {
    let vfs = nix::sys::statvfs::statvfs(path)
        .map_err(|e| FsError::Store(StoreError::Io(format!("statvfs {}: {e}", path.display()))))?;
    // Report in 4 KiB units whatever the disk uses.
    let unit = 4096u64;
    let scale = |n: u64| n.saturating_mul(vfs.fragment_size()) / unit;
    Ok(FsStats {
        blocks: scale(vfs.blocks()),
        blocks_free: scale(vfs.blocks_free()),
        blocks_available: scale(vfs.blocks_available()),
        files: vfs.files(),
        files_free: vfs.files_free(),
        block_size: unit as u32,
        name_max: psync_base::NAME_MAX_BYTES as u32,
    })
}
