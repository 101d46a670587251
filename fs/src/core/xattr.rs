//! Extended attributes: `user.*` kept in the store with the node (a change
//! of a committed node syncs as a new version); other namespaces answer
//! ENOTSUP, which `cp -a` and `rsync -X` take in stride.

use psync_store::{Timestamp, XattrMode};

use super::FsCore;
use crate::core::FsEvent;
use crate::error::{FsError, FsResult};

/// `XATTR_CREATE` / `XATTR_REPLACE` of setxattr(2).
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

impl FsCore {
    /// `setxattr`.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        let mode = match flags {
            0 => XattrMode::Any,
            XATTR_CREATE => XattrMode::Create,
            XATTR_REPLACE => XattrMode::Replace,
            _ => return Err(FsError::posix(libc::EINVAL, "setxattr flags")),
        };
        self.store.setxattr(ino, name, value, mode, Timestamp::now())?;
        self.emit(FsEvent::Changed);
        Ok(())
    }

    /// `getxattr`: the value.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        Ok(self.store.getxattr(ino, name)?)
    }

    /// `listxattr`: the names, each followed by NUL.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.store.inode(ino)?;
        let mut out = Vec::new();
        for (name, _) in self.store.xattrs(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    /// `removexattr`.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.store.removexattr(ino, name, Timestamp::now())?;
        self.emit(FsEvent::Changed);
        Ok(())
    }
}
