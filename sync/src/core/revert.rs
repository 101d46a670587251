//! A read-only device's own changes, and reverting them to the group's.

use super::*;

impl<S: SyncStorage> SyncCore<S> {
    /// On a read-only device, the paths whose current version is a change
    /// of its own that the group does not take (empty on a full device).
    pub fn own_changes(&mut self) -> Result<Vec<SyncPath>, SyncError> {
        if !self.is_read_only() {
            return Ok(Vec::new());
        }
        self.own.refresh(&self.storage, self.device)?;
        Ok(self.own.paths().iter().cloned().collect())
    }

    /// On a read-only device, takes the group's version back for `paths`
    /// (all of its own changes if empty): asked from the connected full
    /// peers and installed over the local one when it comes; a path the
    /// group never had is removed here (its versions stay in the local
    /// history). Returns how many paths are reverted or asked for.
    pub fn revert(&mut self, now: Millis, paths: Vec<SyncPath>) -> Result<usize, SyncError> {
        self.now = self.now.max(now);
        let own = self.own_changes()?;
        let chosen: Vec<SyncPath> =
            if paths.is_empty() { own } else { paths.into_iter().filter(|p| own.contains(p)).collect() };
        let mut ask = Vec::new();
        for path in &chosen {
            let Some(local) = self.storage.record(path)? else { continue };
            if local.vv.iter().any(|(d, _)| *d != self.device) {
                self.own.reverting.insert(path.clone());
                ask.push(path.clone());
            } else if !local.deleted {
                // Only ever here: the group's version is "nothing".
                let (vv, version) = self.planner().own_version(&local.vv);
                let gone = FileRecord {
                    deleted: true,
                    vv,
                    version,
                    size: 0,
                    blocks: Default::default(),
                    symlink: Vec::new(),
                    xattrs: None,
                    ..local.clone()
                };
                let decided_on = [(path.clone(), Some(local.vv))];
                let batch = self.plan_install(vec![gone])?;
                self.apply_install(batch, &decided_on)?;
            }
        }
        let full: Vec<DeviceId> =
            self.peers.iter().filter(|(d, p)| p.hello && !self.config.read_only.contains(d)).map(|(d, _)| *d).collect();
        for peer in full {
            for chunk in ask.chunks(MAX_PATHS_PER_RECORD_REQUEST) {
                self.send(peer, Message::RecordRequest { paths: chunk.to_vec() });
            }
            self.walking_with(peer);
        }
        self.pump()?;
        Ok(chosen.len())
    }

    /// The group's version of a path being reverted: installed over ours.
    pub(super) fn take_reverted(&mut self, record: FileRecord) -> Result<(), SyncError> {
        let local = self.storage.record(&record.path)?;
        let decided_on = [(record.path.clone(), local.map(|l| l.vv))];
        let path = record.path.clone();
        let outcome = match self.plan_install(vec![record]) {
            Ok(batch) => self.apply_install(batch, &decided_on)?,
            Err(e) => return Err(e.into()),
        };
        if outcome == InstallOutcome::Installed {
            self.own.reverting.remove(&path);
        }
        Ok(())
    }
}
