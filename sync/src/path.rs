//! Paths as they travel between devices.

use std::fmt;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Longest path accepted from a peer, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// A relative, `/`-separated, NFC-normalised path with no empty, `.` or
/// `..` components, no NUL and no component over 255 bytes. The only way to
/// build one is [`SyncPath::new`], so every path from a peer is checked
/// before it touches anything.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SyncPath(String);

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty path (the root itself is not synced as a record).
    #[error("empty path")]
    Empty,
    /// Starts with `/`.
    #[error("absolute path")]
    Absolute,
    /// A bad component (`..`, `.`, empty, NUL, too long).
    #[error("bad path component {0:?}: {1}")]
    Component(String, psync_base::NameError),
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
}

impl SyncPath {
    /// Validates and NFC-normalises `raw`.
    pub fn new(raw: &str) -> Result<SyncPath, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        let normalised: String = raw.nfc().collect();
        for part in normalised.split('/') {
            psync_base::validate_name(part.as_bytes()).map_err(|e| PathError::Component(part.to_string(), e))?;
        }
        Ok(SyncPath(normalised))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory, or `None` at the top level.
    pub fn parent(&self) -> Option<SyncPath> {
        self.0.rsplit_once('/').map(|(p, _)| SyncPath(p.to_string()))
    }

    /// The last component.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// `self/child`, validated.
    pub fn join(&self, child: &str) -> Result<SyncPath, PathError> {
        SyncPath::new(&format!("{}/{child}", self.0))
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &SyncPath) -> bool {
        self.0 == other.0 || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// The path with its leading `prefix/` replaced by `new/`.
    pub fn rebase(&self, prefix: &SyncPath, new: &SyncPath) -> Option<SyncPath> {
        if self == prefix {
            return Some(new.clone());
        }
        self.is_within(prefix).then(|| SyncPath(format!("{}{}", new.0, &self.0[prefix.0.len()..])))
    }
}

impl<'de> Deserialize<'de> for SyncPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        // Paths from the wire are validated on decode, never trusted.
        SyncPath::new(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for SyncPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for SyncPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "a/./b", "a//b", "a/", "a\0b"] {
            assert!(SyncPath::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SyncPath::new(&"x".repeat(256)).is_err());
        assert!(SyncPath::new(&"a/".repeat(3000)).is_err());
        assert_eq!(SyncPath::new("notes/a.md").unwrap().as_str(), "notes/a.md");
    }

    #[test]
    fn unicode_is_normalised() {
        let decomposed = SyncPath::new("cafe\u{301}.md").unwrap();
        let composed = SyncPath::new("caf\u{e9}.md").unwrap();
        assert_eq!(decomposed, composed);
    }

    #[test]
    fn structure() {
        let p = SyncPath::new("a/b/c.md").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.name(), "c.md");
        assert_eq!(p.depth(), 3);
        let a = SyncPath::new("a").unwrap();
        assert!(p.is_within(&a));
        assert!(!SyncPath::new("ab/c").unwrap().is_within(&a));
        assert_eq!(p.rebase(&a, &SyncPath::new("z").unwrap()).unwrap().as_str(), "z/b/c.md");
    }

    #[test]
    fn decoding_validates() {
        let bytes = psync_base::codec::encode(&"../escape").unwrap();
        assert!(psync_base::codec::decode::<SyncPath>(&bytes).is_err());
    }
}
