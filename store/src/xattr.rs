//! Extended attributes (`user.*` only) of files and folders: kept with the
//! node, changed in one transaction each, and a change of a committed node
//! is a new version for sync (like a chmod). Other namespaces (`security.*`,
//! `trusted.*`, `system.*`) are answered "not supported".

use psync_base::xattr::{check_xattrs, XATTR_NAMESPACE};

use crate::error::{Result, StoreError};
use crate::keys;
use crate::records::*;
use crate::store::Store;
use crate::txn::Txn;

/// How `setxattr` treats an existing attribute (`XATTR_CREATE`, `XATTR_REPLACE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// Fail if it exists.
    Create,
    /// Fail if it does not.
    Replace,
}

impl Store {
    /// Every attribute of `ino`, sorted by name.
    pub fn xattrs(&self, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = keys::xattr_prefix(ino);
        Ok(self.scan_prefix(&prefix)?.into_iter().map(|(k, v)| (k[prefix.len()..].to_vec(), v.to_vec())).collect())
    }

    /// One attribute's value.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        self.inode(ino)?;
        if !name.starts_with(XATTR_NAMESPACE) {
            return Err(StoreError::NoXattr);
        }
        let key = keys::xattr(ino, name);
        match self.db().get_pinned_cf(self.meta(), &key).map_err(|e| self.rocks_err(e))? {
            Some(value) => Ok(value.to_vec()),
            None => Err(StoreError::NoXattr),
        }
    }

    /// Sets one attribute (one transaction).
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], mode: XattrMode, now: Timestamp) -> Result<()> {
        if !name.starts_with(XATTR_NAMESPACE) {
            return Err(StoreError::XattrUnsupported("only user.* attributes are kept"));
        }
        self.mutate(false, |txn| {
            let node = txn.inode(ino)?;
            if !matches!(node.kind, NodeKind::File | NodeKind::Dir) {
                return Err(StoreError::NotPermitted("user.* attributes are for files and folders"));
            }
            let mut list = txn.store.xattrs(ino)?;
            let at = list.binary_search_by(|(n, _)| n.as_slice().cmp(name));
            match (at, mode) {
                (Ok(_), XattrMode::Create) => return Err(StoreError::Exists),
                (Err(_), XattrMode::Replace) => return Err(StoreError::NoXattr),
                (Ok(i), _) => list[i].1 = value.to_vec(),
                (Err(i), _) => list.insert(i, (name.to_vec(), value.to_vec())),
            }
            check_xattrs(&list).map_err(StoreError::XattrTooLarge)?;
            txn.put_raw(&keys::xattr(ino, name), value);
            txn.xattrs_changed(node, now)
        })
    }

    /// Removes one attribute (one transaction).
    pub fn removexattr(&self, ino: u64, name: &[u8], now: Timestamp) -> Result<()> {
        self.mutate(false, |txn| {
            let node = txn.inode(ino)?;
            let key = keys::xattr(ino, name);
            if txn.store.db().get_pinned_cf(txn.store.meta(), &key).map_err(|e| txn.store.rocks_err(e))?.is_none() {
                return Err(StoreError::NoXattr);
            }
            txn.delete(&key);
            txn.xattrs_changed(node, now)
        })
    }
}

impl Txn<'_> {
    /// An attribute of `node` changed: of a committed node, a new version.
    fn xattrs_changed(&mut self, mut node: Inode, now: Timestamp) -> Result<()> {
        node.ctime = now;
        if !node.dirty && node.ino != ROOT_INO && !node.links.is_empty() {
            self.record_change(&mut node);
            self.links_changed(&node)?;
        }
        self.put_inode(node);
        Ok(())
    }

    /// Makes `list` the attributes of `ino` (a peer's version).
    pub(crate) fn replace_xattrs(&mut self, ino: u64, list: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        for (name, _) in self.store.xattrs(ino)? {
            self.delete(&keys::xattr(ino, &name));
        }
        for (name, value) in list {
            self.put_raw(&keys::xattr(ino, name), value);
        }
        Ok(())
    }
}
