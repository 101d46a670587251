//! Which local names take part in sync. Peers exchange paths as UTF-8 text
//! in Unicode NFC form; a local name that is not (bytes that are not UTF-8,
//! a name in another normal form such as macOS's NFD, a path too long for
//! the protocol) stays on this device and is reported, rather than being
//! changed on the way: two local names that differ only in their Unicode
//! form must never become one path on the wire, nor one path two files.

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Longest path that syncs, in bytes.
pub const MAX_SYNC_PATH_BYTES: usize = 4096;

/// Why a local path does not sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalOnly {
    /// A name that is not UTF-8.
    #[error("its name is not UTF-8 text")]
    NotUtf8,
    /// A name not in Unicode NFC form (NFD, as macOS writes names).
    #[error("its name is not in Unicode NFC form (as macOS writes names); rename it to sync it")]
    NotNfc,
    /// Longer than [`MAX_SYNC_PATH_BYTES`].
    #[error("its path is longer than {MAX_SYNC_PATH_BYTES} bytes")]
    TooLong,
}

/// Whether the `/`-separated local path `path` (names already valid
/// directory entries) can be a path on the wire exactly as it is.
pub fn check_syncable(path: &[u8]) -> Result<(), LocalOnly> {
    if path.len() > MAX_SYNC_PATH_BYTES {
        return Err(LocalOnly::TooLong);
    }
    let text = std::str::from_utf8(path).map_err(|_| LocalOnly::NotUtf8)?;
    if !is_nfc(text) {
        return Err(LocalOnly::NotNfc);
    }
    Ok(())
}

/// The NFC form of a path (bytes that are not UTF-8 are left as they are),
/// under which a local-only name would collide with a peer's path.
pub fn nfc_key(path: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(path) {
        Ok(text) if !is_nfc(text) => text.nfc().collect::<String>().into_bytes(),
        _ => path.to_vec(),
    }
}

fn is_nfc(text: &str) -> bool {
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => true,
        IsNormalized::No => false,
        IsNormalized::Maybe => text.nfc().eq(text.chars()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfc_names_sync_and_others_stay_local() {
        assert_eq!(check_syncable("notes/résumé.md".as_bytes()), Ok(()));
        let nfd = "notes/re\u{301}sume\u{301}.md";
        assert_eq!(check_syncable(nfd.as_bytes()), Err(LocalOnly::NotNfc));
        assert_eq!(nfc_key(nfd.as_bytes()), "notes/résumé.md".as_bytes());
        assert_eq!(check_syncable(b"bad\xff.md"), Err(LocalOnly::NotUtf8));
        assert_eq!(nfc_key(b"bad\xff.md"), b"bad\xff.md");
        assert_eq!(check_syncable(&vec![b'a'; 5000]), Err(LocalOnly::TooLong));
        // A name whose NFC form is longer than the name (U+0958 does not
        // recompose): not NFC, so local, never a name that could not exist.
        let grows = "\u{958}".repeat(85);
        assert!(grows.len() <= 255 && nfc_key(grows.as_bytes()).len() > 255);
        assert_eq!(check_syncable(grows.as_bytes()), Err(LocalOnly::NotNfc));
    }
}
