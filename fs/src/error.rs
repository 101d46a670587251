use psync_base::NameError;
use psync_store::StoreError;

/// The one error type of the filesystem core. [`FsError::errno`] is the one
/// place where PSync errors become errno values.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A POSIX condition detected by the filesystem layer itself.
    #[error("{what} (errno {errno})")]
    Posix {
        /// The errno value.
        errno: i32,
        /// Why, for logs.
        what: &'static str,
    },
}

/// Shorthand for filesystem results.
pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub(crate) fn posix(errno: i32, what: &'static str) -> Self {
        FsError::Posix { errno, what }
    }

    /// The errno to answer the kernel with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Posix { errno, .. } => *errno,
            FsError::Store(e) => match e {
                StoreError::NotFound => libc::ENOENT,
                StoreError::Exists => libc::EEXIST,
                StoreError::NotDir => libc::ENOTDIR,
                StoreError::IsDir => libc::EISDIR,
                StoreError::NotEmpty => libc::ENOTEMPTY,
                StoreError::Invalid(_) => libc::EINVAL,
                StoreError::NotPermitted(_) => libc::EPERM,
                StoreError::Name(NameError::TooLong(_)) => libc::ENAMETOOLONG,
                StoreError::Name(_) => libc::EINVAL,
                StoreError::FileTooLarge => libc::EFBIG,
                StoreError::DiskFull => libc::ENOSPC,
                StoreError::NoXattr => libc::ENODATA,
                StoreError::XattrUnsupported(_) => libc::ENOTSUP,
                StoreError::XattrTooLarge(_) => libc::E2BIG,
                StoreError::Locked(_) | StoreError::NotAStore(_) | StoreError::NewerFormat { .. } => libc::EIO,
                StoreError::Corrupt(_) | StoreError::Io(_) => libc::EIO,
                _ => libc::EIO,
            },
        }
    }

    /// Errors worth a log line at error level: the user lost an operation
    /// to something other than ordinary POSIX semantics.
    pub fn is_serious(&self) -> bool {
        matches!(self.errno(), libc::EIO | libc::ENOSPC)
    }
}
