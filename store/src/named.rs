//! Live sync-index paths whose last component holds a marker (conflict
//! copies), kept current by every commit instead of walked at each ask.

use std::collections::BTreeSet;

/// The live paths whose name holds `marker`.
#[derive(Debug)]
pub(crate) struct NamedPaths {
    marker: Vec<u8>,
    paths: BTreeSet<Vec<u8>>,
}

impl NamedPaths {
    pub(crate) fn new(marker: &[u8]) -> Self {
        NamedPaths { marker: marker.to_vec(), paths: BTreeSet::new() }
    }

    pub(crate) fn marker(&self) -> &[u8] {
        &self.marker
    }

    /// Whether `path`'s last component holds the marker.
    pub(crate) fn matches(&self, path: &[u8]) -> bool {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        !self.marker.is_empty() && name.windows(self.marker.len()).any(|w| w == self.marker.as_slice())
    }

    /// The sync-index entry of `path` is now live or deleted.
    pub(crate) fn note(&mut self, path: &[u8], live: bool) {
        if !self.matches(path) {
            return;
        }
        if live {
            self.paths.insert(path.to_vec());
        } else {
            self.paths.remove(path);
        }
    }

    pub(crate) fn paths(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.paths.iter()
    }
}
