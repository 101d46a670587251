//! Extended attributes as PSync keeps and syncs them: `user.*` names only,
//! bounded in count and bytes. One definition for the store and the wire.

/// A node's attributes: (name, value), sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The one namespace kept.
pub const XATTR_NAMESPACE: &[u8] = b"user.";
/// Longest name, in bytes (Linux's `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME_BYTES: usize = 255;
/// Largest value, in bytes (Linux's `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE_BYTES: usize = 64 * 1024;
/// Names and values of one node together, in bytes.
pub const MAX_XATTR_BYTES_PER_NODE: usize = 64 * 1024;
/// Attributes of one node (count).
pub const MAX_XATTRS_PER_NODE: usize = 128;

/// Whether `list` (sorted by name) is a set of attributes PSync keeps and syncs.
pub fn check_xattrs(list: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<(), &'static str> {
    if list.len() > MAX_XATTRS_PER_NODE {
        return Err("more attributes than a node may have");
    }
    let mut total = 0;
    for (i, (name, value)) in list.iter().enumerate() {
        if !name.starts_with(XATTR_NAMESPACE) || name.len() == XATTR_NAMESPACE.len() || name.contains(&0) {
            return Err("a name outside user.*");
        }
        if name.len() > MAX_XATTR_NAME_BYTES || value.len() > MAX_XATTR_VALUE_BYTES {
            return Err("a name or value over the limit");
        }
        if i > 0 && list[i - 1].0 >= *name {
            return Err("names not sorted and unique");
        }
        total += name.len() + value.len();
    }
    if total > MAX_XATTR_BYTES_PER_NODE {
        return Err("more bytes than a node may have");
    }
    Ok(())
}
