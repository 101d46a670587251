use std::path::PathBuf;

use psync_base::codec::CodecError;
use psync_base::NameError;

/// Everything that can go wrong in the store. The FUSE layer maps this one
/// type to errno in one place; the CLI prints it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such inode or directory entry.
    #[error("no such file or directory")]
    NotFound,
    /// The target name exists already.
    #[error("file exists")]
    Exists,
    /// A directory was required.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was required.
    #[error("is a directory")]
    IsDir,
    /// A directory to remove or replace still has entries.
    #[error("directory not empty")]
    NotEmpty,
    /// The operation makes no sense for this object (e.g. moving a
    /// directory into itself, hard-linking a directory).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The operation is not permitted on this kind of object (hard-linking a directory).
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// A name that the kernel would not accept either.
    #[error("invalid file name: {0}")]
    Name(#[from] NameError),
    /// Offset or size beyond what the store supports.
    #[error("file too large (limit {} bytes)", crate::MAX_FILE_SIZE)]
    FileTooLarge,
    /// The data dir exists but does not hold a PSync store.
    #[error("{0} is not a PSync data directory (no store found in it); choose another --data-dir")]
    NotAStore(PathBuf),
    /// Written by a newer PSync.
    #[error("the store in {path} has format version {found}, this psync understands up to {supported}; upgrade psync")]
    NewerFormat {
        /// Data dir.
        path: PathBuf,
        /// Version on disk.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// Another process (a running daemon) has the store open.
    #[error("the store in {0} is in use by another psync process (is a mount running? try `psync unmount`)")]
    Locked(PathBuf),
    /// The disk is full; the failed mutation was not applied.
    #[error("no space left on device; the last change was not saved, earlier ones are intact")]
    DiskFull,
    /// A peer's version cannot be installed at its path now (local files
    /// that do not sync are in the way); nothing was changed.
    #[error("{0}")]
    Blocked(String),
    /// No extended attribute of that name.
    #[error("no such extended attribute")]
    NoXattr,
    /// Only `user.*` extended attributes are kept, on files and folders.
    #[error("extended attribute not supported: {0}")]
    XattrUnsupported(&'static str),
    /// An extended attribute (or a node's together) past the limits.
    #[error("extended attribute too large: {0}")]
    XattrTooLarge(&'static str),
    /// The store was opened read-only (a snapshot beside a running daemon).
    #[error("the store is open read-only (a daemon is using it); unmount it to change it")]
    ReadOnly,
    /// Stored data does not match its hash or does not decode.
    #[error("store corruption: {0} (run `psync fsck`)")]
    Corrupt(String),
    /// Any other RocksDB or file-system failure.
    #[error("storage I/O error: {0}")]
    Io(String),
}

/// Shorthand used throughout the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<CodecError> for StoreError {
    fn from(e: CodecError) -> Self {
        StoreError::Corrupt(format!("undecodable record: {e}"))
    }
}

impl StoreError {
    pub(crate) fn from_rocks(e: rocksdb::Error, dir: &std::path::Path) -> Self {
        let text = e.into_string();
        if text.contains("No space left") {
            StoreError::DiskFull
        } else if text.contains("lock hold by current process")
            || (text.contains("LOCK") && text.contains("unavailable"))
        {
            StoreError::Locked(dir.to_path_buf())
        } else if text.contains("Corruption") {
            StoreError::Corrupt(text)
        } else {
            StoreError::Io(text)
        }
    }
}
