//! The values stored under the keys in [`crate::keys`].

use std::fmt;

use psync_base::{ContentHash, DeviceId, VersionVector};
use serde::{Deserialize, Serialize};

pub use psync_base::BLOCK_SIZE;
/// Block hashes per page; one page covers 16 MiB of a file.
pub const BLOCKS_PER_PAGE: u64 = psync_base::page::BLOCKS_PER_PAGE as u64;
/// Largest file the store accepts (1 PiB; far beyond any vault).
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// The on-disk format version this build writes and reads. 2: names that
/// are not UTF-8 NFC stay local (`n` keys). 3: the inode-level change log
/// (`s`, `t` keys) is gone; the sync index is the one change log.
pub const FORMAT_VERSION: u32 = 3;
/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// The store's identity record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormatRecord {
    /// On-disk format version.
    pub format_version: u32,
    /// The device this store belongs to; it signs its own changes with it.
    pub device: DeviceId,
    /// When the store was created.
    pub created_at: Timestamp,
    /// This store's identity as an index for peers (random).
    pub index_id: u64,
}

/// Persisted allocation counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub next_ino: u64,
    pub next_seq: u64,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds.
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// The wall clock now. Only edges call this; the store takes `now` as input.
    pub fn now() -> Self {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Self { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(_) => Self::default(),
        }
    }
}

/// A file's identity for sync: stable across renames and devices.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileId(pub u128);

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file:{:032x}", self.0)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe. Local to this device: never synced.
    Fifo,
    /// Unix domain socket. Local to this device: never synced.
    Socket,
    /// Character device (`rdev` names it). Local; the mount is `nodev`.
    CharDevice,
    /// Block device (`rdev` names it). Local; the mount is `nodev`.
    BlockDevice,
}

impl NodeKind {
    /// FIFOs, sockets and device nodes: they have no content and stay local.
    pub fn is_special(self) -> bool {
        matches!(self, NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDevice | NodeKind::BlockDevice)
    }

    /// In words, for messages ("a local FIFO").
    pub fn describe(self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "folder",
            NodeKind::Symlink => "symlink",
            NodeKind::Fifo => "FIFO",
            NodeKind::Socket => "socket",
            NodeKind::CharDevice => "character device",
            NodeKind::BlockDevice => "block device",
        }
    }
}

/// A file's bytes: its size and the pages of block hashes covering it.
/// `None` marks a hole (reads as zeros). Blocks never hold bytes past `size`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Logical size in bytes.
    pub size: u64,
    /// `pages[i]` covers blocks `i * BLOCKS_PER_PAGE ..`; missing tail = holes.
    pub pages: Vec<Option<ContentHash>>,
}

/// Up to [`BLOCKS_PER_PAGE`] block hashes; `None` is a hole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Block hashes in file order.
    pub blocks: Vec<Option<ContentHash>>,
}

/// One hard link of an inode: the directory entry `(parent, name)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Parent directory's inode.
    pub parent: u64,
    /// Entry name (validated).
    pub name: Vec<u8>,
}

/// A file, directory or symlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Local inode number, stable across renames and restarts.
    pub ino: u64,
    /// File, directory or symlink.
    pub kind: NodeKind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last inode change.
    pub ctime: Timestamp,
    /// Directory entries naming this inode (one for directories, none for the root).
    pub links: Vec<Link>,
    /// Number of subdirectories (directories only; for `nlink`).
    pub subdirs: u32,
    /// File content (files only).
    pub content: Content,
    /// Link target (symlinks only).
    pub symlink: Vec<u8>,
    /// Device number (device nodes only).
    pub rdev: u32,
    /// Identity for sync.
    pub file_id: FileId,
    /// Causal history of this object.
    pub vv: VersionVector,
    /// Local sequence number of the latest recorded change (0: none yet).
    pub seq: u64,
    /// Sequence number of the latest committed content version (0: none).
    pub committed_seq: u64,
    /// Content changed since the last commit.
    pub dirty: bool,
}

impl Inode {
    /// POSIX link count.
    pub fn nlink(&self) -> u32 {
        match self.kind {
            NodeKind::Dir => 2 + self.subdirs,
            _ => self.links.len() as u32,
        }
    }

    /// Size reported to `stat`.
    pub fn size(&self) -> u64 {
        match self.kind {
            NodeKind::File => self.content.size,
            NodeKind::Symlink => self.symlink.len() as u64,
            NodeKind::Dir => 0,
            _ => 0,
        }
    }
}

/// A directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Child inode.
    pub ino: u64,
    /// Child kind (for readdir without loading the child).
    pub kind: NodeKind,
}

/// A committed version of a file's content, kept as history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// Which file.
    pub file_id: FileId,
    /// Local sequence number of this commit.
    pub seq: u64,
    /// Version vector at this commit.
    pub vv: VersionVector,
    /// The bytes.
    pub content: Content,
    /// Modification time at commit.
    pub mtime: Timestamp,
    /// Permission bits at commit.
    pub perm: u32,
    /// Path at commit, `/`-separated, relative to the root.
    pub path: Vec<u8>,
    /// When the commit happened.
    pub committed_at: Timestamp,
}

/// A path's entry in the sync index (the one change log: its `q` keys
/// order the entries by local sequence number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PathEntry {
    pub vv: VersionVector,
    pub dot: (DeviceId, u64),
    pub deleted: bool,
    pub kind: NodeKind,
    /// Local sequence number of this entry (the `q` key).
    pub seq: u64,
    pub mtime: i64,
}
