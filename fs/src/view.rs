//! A read-only view of the vault as it was at a point in time
//! (`psync mount --at TIME DIR`): the files of the store's history then,
//! served by a small read-only `fuser` filesystem for browsing and copying
//! out with ordinary tools. Nothing in it can be changed; the store is
//! opened read-only, beside a running daemon.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use psync_store::{Content, FileVersion, Store, Timestamp};

use crate::error::{FsError, FsResult};
use crate::fuse::system_time;
use crate::mount::MountError;

/// The mount type of a view (`fuse.psync-view`), told apart from a live mount.
pub const VIEW_SUBTYPE: &str = "psync-view";
/// Nothing in a view ever changes: the kernel may cache it for long.
const TTL: Duration = Duration::from_secs(3600);

#[derive(Debug)]
enum Kind {
    Dir(BTreeMap<Vec<u8>, u64>),
    File(Content),
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    perm: u32,
    mtime: Timestamp,
}

/// The tree of a view: inode `n` is `nodes[n - 1]`; 1 is the root.
#[derive(Debug)]
pub struct View {
    store: Arc<Store>,
    nodes: Vec<Node>,
    /// The owner shown for everything (the mount's).
    owner: (u32, u32),
}

impl View {
    /// The tree of `files` (the store's `tree_at`), folders made from their
    /// paths. A path under a name that is a file there is left out.
    pub fn new(store: Arc<Store>, files: Vec<FileVersion>, at: Timestamp) -> View {
        let owner = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        let mut view =
            View { store, nodes: vec![Node { kind: Kind::Dir(BTreeMap::new()), perm: 0o555, mtime: at }], owner };
        for file in files {
            let parts: Vec<&[u8]> = file.path.split(|b| *b == b'/').filter(|p| !p.is_empty()).collect();
            let Some((name, dirs)) = parts.split_last() else { continue };
            let mut parent = 1;
            let mut placed = true;
            for dir in dirs {
                match view.child(parent, dir) {
                    Some(ino) if matches!(view.nodes[ino as usize - 1].kind, Kind::Dir(_)) => parent = ino,
                    Some(_) => {
                        placed = false;
                        break;
                    }
                    None => {
                        parent =
                            view.add(parent, dir, Node { kind: Kind::Dir(BTreeMap::new()), perm: 0o555, mtime: at })
                    }
                }
            }
            if placed && view.child(parent, name).is_none() {
                let node = Node { kind: Kind::File(file.content), perm: file.perm & 0o555, mtime: file.mtime };
                view.add(parent, name, node);
            }
        }
        view
    }

    fn child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        match &self.nodes.get(parent as usize - 1)?.kind {
            Kind::Dir(children) => children.get(name).copied(),
            Kind::File(_) => None,
        }
    }

    fn add(&mut self, parent: u64, name: &[u8], node: Node) -> u64 {
        self.nodes.push(node);
        let ino = self.nodes.len() as u64;
        if let Some(Node { kind: Kind::Dir(children), .. }) = self.nodes.get_mut(parent as usize - 1) {
            children.insert(name.to_vec(), ino);
        }
        ino
    }

    fn node(&self, ino: u64) -> FsResult<&Node> {
        (ino as usize)
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .ok_or(FsError::posix(libc::ENOENT, "no such node"))
    }

    fn attr(&self, ino: u64) -> FsResult<FileAttr> {
        let node = self.node(ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::Dir(_) => (FileType::Directory, 0, 2),
            Kind::File(content) => (FileType::RegularFile, content.size, 1),
        };
        let time = system_time(node.mtime);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm: node.perm as u16,
            nlink,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 64 * 1024,
            flags: 0,
        })
    }

    fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        match &self.node(ino)?.kind {
            Kind::File(content) => Ok(self.store.read_content(content, offset, size)?),
            Kind::Dir(_) => Err(FsError::posix(libc::EISDIR, "a folder")),
        }
    }

    /// Files in the view (for messages).
    pub fn file_count(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n.kind, Kind::File(_))).count()
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

impl Filesystem for View {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent.0, name.as_bytes()).ok_or(FsError::posix(libc::ENOENT, "no such name")) {
            Ok(ino) => match self.attr(ino) {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::from_i32(libc::EROFS));
        }
        match self.node(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Ok(Node { kind: Kind::Dir(children), .. }) = self.node(ino.0) else {
            return reply.error(Errno::from_i32(libc::ENOTDIR));
        };
        let dots = [(ino.0, b".".as_slice(), FileType::Directory), (ino.0, b"..".as_slice(), FileType::Directory)];
        let entries = dots.into_iter().chain(children.iter().map(|(name, child)| {
            let kind = match self.nodes[*child as usize - 1].kind {
                Kind::Dir(_) => FileType::Directory,
                Kind::File(_) => FileType::RegularFile,
            };
            (*child, name.as_slice(), kind)
        }));
        for (i, (child, name, kind)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }
}

/// Mounts `view` read-only at `mountpoint` (already prepared) until unmounted.
pub fn mount_view(view: View, mountpoint: &Path, source: &str) -> Result<BackgroundSession, MountError> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(source.to_string()),
        MountOption::Subtype(VIEW_SUBTYPE.to_string()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::DefaultPermissions,
    ];
    if crate::mount::may_allow_other() {
        // Unmounted by the kernel if this process dies (and mounted through
        // fusermount3, which keeps the subtype `psync unmount` looks for).
        config.acl = fuser::SessionACL::RootAndOwner;
        config.mount_options.push(MountOption::AutoUnmount);
    }
    config.n_threads = Some(2);
    crate::mount::serve(view, mountpoint, &config)
}
