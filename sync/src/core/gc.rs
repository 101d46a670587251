//! Tombstone collection: a deleted path is forgotten once every device
//! of the group has acknowledged it.

use super::*;

impl<S: SyncStorage> SyncCore<S> {
    /// What `peer` has acknowledged for at least [`ACK_SETTLE_MS`]
    /// (`stored`: its acknowledgement now); forgets what has settled.
    fn settled_ack(&mut self, peer: &DeviceId, stored: u64) -> u64 {
        let settled_by = self.now.saturating_sub(ACK_SETTLE_MS);
        let Some(pending) = self.unsettled_acks.get_mut(peer) else { return stored };
        while pending.front().is_some_and(|(_, _, at)| *at <= settled_by) {
            pending.pop_front();
        }
        match pending.front() {
            Some((before, _, _)) => (*before).min(stored),
            None => {
                self.unsettled_acks.remove(peer);
                stored
            }
        }
    }

    /// Drops tombstones every other device of the group has acknowledged and
    /// that are old enough.
    pub(super) fn collect_tombstones(&mut self) -> Result<(), SyncError> {
        let now_secs = self.wall_secs();
        let others: Vec<DeviceId> = self.config.group.iter().copied().filter(|d| *d != self.device).collect();
        let mut acked = Vec::new();
        for d in &others {
            let stored = self.storage.peer_state(d)?.acked;
            acked.push(self.settled_ack(d, stored));
        }
        let min_acked = acked.into_iter().min().unwrap_or(u64::MAX);
        let old_enough = |t: &FileRecord| t.mtime.saturating_add(self.config.tombstone_min_age_secs) <= now_secs;
        let doomed: Vec<FileRecord> = self
            .storage
            .tombstones()?
            .into_iter()
            // A conflict copy is synthesized with a fixed history, so a device
            // resolving the same old conflict late would recreate it exactly:
            // its tombstone (rare, small) is kept so a deleted copy stays deleted.
            .filter(|(seq, t)| *seq <= min_acked && old_enough(t) && !is_conflict_copy(&t.path))
            .map(|(_, t)| t)
            .collect();
        // Versions held or waiting here that a tombstone has seen must go
        // with it: once it is forgotten, nothing would stop them from
        // bringing the file back.
        for t in &doomed {
            for held in self.holds.drop_superseded(&t.path, &t.vv) {
                self.release_origins(held.origins)?;
            }
            for gone in self.fetch.drop_superseded(&t.path, &t.vv) {
                self.release_origin(gone.source, gone.origin)?;
            }
        }
        for t in &doomed {
            self.own.forget(&t.path);
        }
        let doomed: Vec<SyncPath> = doomed.into_iter().map(|t| t.path).collect();
        if !doomed.is_empty() {
            // The tree takes in every change before the tombstones that record
            // them go (it follows sequence numbers, not a scan).
            self.refresh_tree()?;
            self.storage.drop_tombstones(&doomed)?;
        }
        Ok(())
    }
}
