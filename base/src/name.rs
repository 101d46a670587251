/// Longest file name, in bytes, as on Linux (`NAME_MAX`).
pub const NAME_MAX_BYTES: usize = 255;

/// Why a single path component is not an acceptable file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("empty file name")]
    Empty,
    /// `.` or `..`.
    #[error("'.' and '..' are not file names")]
    Dot,
    /// Contains `/`.
    #[error("file name contains '/'")]
    Slash,
    /// Contains a NUL byte.
    #[error("file name contains a NUL byte")]
    Nul,
    /// Longer than [`NAME_MAX_BYTES`].
    #[error("file name is {0} bytes, longer than {NAME_MAX_BYTES}")]
    TooLong(usize),
}

/// Checks one path component the way the Linux kernel would accept it as a
/// directory entry name. Every name that enters the store passes here.
pub fn validate_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dot);
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name.contains(&b'/') {
        return Err(NameError::Slash);
    }
    if name.contains(&0) {
        return Err(NameError::Nul);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_rejected() {
        assert_eq!(validate_name(b""), Err(NameError::Empty));
        assert_eq!(validate_name(b".."), Err(NameError::Dot));
        assert_eq!(validate_name(b"."), Err(NameError::Dot));
        assert_eq!(validate_name(b"a/b"), Err(NameError::Slash));
        assert_eq!(validate_name(b"a\0b"), Err(NameError::Nul));
        assert_eq!(validate_name(&[b'x'; 256]), Err(NameError::TooLong(256)));
        assert_eq!(validate_name(&[b'x'; 255]), Ok(()));
        assert_eq!(validate_name("näme...".as_bytes()), Ok(()));
    }
}
