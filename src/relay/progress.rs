//! How far this device is with the relay, kept across restarts in the data
//! dir: what of its index is uploaded, its next object number, and what of
//! each writer it has taken.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The file, in the data dir.
pub const PROGRESS_FILE: &str = "relay.json";

/// Progress with the relay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The index the numbers below are of (a reset index starts over).
    pub index_id: u64,
    /// Index entries up to here are on the relay (or with every member).
    pub uploaded_to: u64,
    /// The next object number to store.
    pub next_seq: u64,
    /// Per writer (hex id): objects taken up to here.
    pub taken: BTreeMap<String, u64>,
    /// The newest key epoch this device has wrapped to the other members.
    #[serde(default)]
    pub wrapped_epoch: u32,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(PROGRESS_FILE)
}

impl Progress {
    /// Loads it (a missing or damaged file starts over: at worst changes
    /// travel twice, which is harmless).
    pub fn load(data_dir: &Path) -> Progress {
        let loaded = std::fs::read(path(data_dir)).ok().and_then(|b| serde_json::from_slice::<Progress>(&b).ok());
        let mut progress = loaded.unwrap_or_default();
        progress.next_seq = progress.next_seq.max(1);
        progress
    }

    /// Saves it atomically.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        crate::data_dir::replace_file(&path(data_dir), &serde_json::to_vec_pretty(self)?)
    }

    /// Objects of `writer` taken up to here.
    pub fn taken(&self, writer: &psync_base::DeviceId) -> u64 {
        self.taken.get(&hex(writer)).copied().unwrap_or(0)
    }

    /// Took `writer`'s objects up to `seq`.
    pub fn took(&mut self, writer: &psync_base::DeviceId, seq: u64) {
        let taken = self.taken.entry(hex(writer)).or_default();
        *taken = (*taken).max(seq);
    }
}

fn hex(id: &psync_base::DeviceId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_a_restart_and_a_damaged_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut progress = Progress::load(dir.path());
        assert_eq!(progress.next_seq, 1);
        progress.uploaded_to = 7;
        progress.took(&psync_base::DeviceId([3; 32]), 4);
        progress.took(&psync_base::DeviceId([3; 32]), 2);
        progress.save(dir.path()).unwrap();
        let loaded = Progress::load(dir.path());
        assert_eq!(loaded, progress);
        assert_eq!(loaded.taken(&psync_base::DeviceId([3; 32])), 4);
        std::fs::write(dir.path().join(PROGRESS_FILE), b"{").unwrap();
        assert_eq!(Progress::load(dir.path()).uploaded_to, 0);
    }
}
