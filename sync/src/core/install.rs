//! From a peer's record to an installed version: deciding (the rules in
//! `record`), holding what cannot be installed now, conflict copies, and
//! applying a decision through storage.

use super::*;

impl<S: SyncStorage> SyncCore<S> {
    /// One record from `peer`: checked, then taken unless the peer is
    /// read-only. A malformed record is refused on its own (held with the
    /// reason); the peer's other records still count.
    pub(super) fn take_record(
        &mut self,
        peer: DeviceId,
        record: FileRecord,
        seq: Option<u64>,
    ) -> Result<(), SyncError> {
        if self.config.read_only.contains(&peer) || self.ignored(&record) {
            return Ok(());
        }
        if let Err(why) = record.check() {
            // Refused for good: acknowledged, and listed with the reason.
            return self.hold(Version::new(record, peer, seq), HoldReason::Refused(why));
        }
        self.receive_record(record, peer, seq)
    }

    /// Holds a version with its reason; its origins stay unacknowledged
    /// until it is installed or superseded (a refused one is acknowledged:
    /// it never will be). Past the bound on what one peer may have held,
    /// the peer is dropped.
    pub(super) fn hold(&mut self, version: Version, reason: HoldReason) -> Result<(), SyncError> {
        let Version { record, source, mut origins } = version;
        let kept = if matches!(reason, HoldReason::Refused(_)) { Vec::new() } else { std::mem::take(&mut origins) };
        for (peer, seq) in &kept {
            if let Some(p) = self.peers.get_mut(peer) {
                p.pending_seqs.insert(*seq);
            }
        }
        let dropped = self.holds.hold(record, source, kept, reason, self.now);
        origins.extend(dropped.into_iter().flat_map(|h| h.origins));
        self.release_origins(origins)?;
        if self.holds.from(&source) > MAX_HELD_PER_PEER && self.peers.contains_key(&source) {
            self.forget_peer(source);
            self.violation(source, format!("more than {MAX_HELD_PER_PEER} of its versions cannot be installed"));
        }
        Ok(())
    }

    /// Takes a remote record: decides at once, or waits for its blocks.
    pub(super) fn receive_record(
        &mut self,
        record: FileRecord,
        source: DeviceId,
        seq: Option<u64>,
    ) -> Result<(), SyncError> {
        if self.fetch.has_newer(&record.path, &record.vv) {
            return Ok(());
        }
        if self.holds.also_from(&record, seq.map(|s| (source, s))) {
            // Decided when the held copy is; its sequence number waits too.
            if let (Some(seq), Some(p)) = (seq, self.peers.get_mut(&source)) {
                p.pending_seqs.insert(seq);
            }
            return Ok(());
        }
        let local = match self.storage.record(&record.path) {
            Ok(local) => local,
            Err(e) => return self.storage_failed(Version::new(record, source, seq), e),
        };
        if self.decide(local.as_ref(), &record) == Resolution::Keep {
            return Ok(());
        }
        // Waiting versions it has seen give way.
        for gone in self.fetch.drop_superseded(&record.path, &record.vv) {
            self.release_origin(gone.source, gone.origin)?;
        }
        match self.fetch.add(&self.storage, record.clone(), source, seq) {
            Ok(Added::Ready(record)) => self.finalize(Version::new(record, source, seq)),
            Ok(Added::Waiting) => {
                if let (Some(seq), Some(p)) = (seq, self.peers.get_mut(&source)) {
                    p.pending_seqs.insert(seq);
                }
                Ok(())
            }
            Ok(Added::Invalid(record, why)) => self.hold(Version::new(record, source, seq), HoldReason::Refused(why)),
            Err(e) => self.storage_failed(Version::new(record, source, seq), e),
        }
    }

    /// The storage failed on one version: held, retried later; a full disk
    /// pauses installs and downloads for a while.
    pub(super) fn storage_failed(&mut self, version: Version, error: StorageError) -> Result<(), SyncError> {
        let reason = match error {
            StorageError::DiskFull => {
                self.pause_for_full_disk();
                HoldReason::DiskFull
            }
            StorageError::Failed(why) => HoldReason::StorageFailed(why),
        };
        self.hold(version, reason)
    }

    pub(super) fn pause_for_full_disk(&mut self) {
        let pause = backoff(FIRST_DISK_FULL_PAUSE_MS, MAX_DISK_FULL_PAUSE_MS, self.disk_full_pauses);
        self.disk_full_pauses = self.disk_full_pauses.saturating_add(1);
        self.timers.set(Timer::DiskFullPause, self.now + pause);
    }

    pub(super) fn release_origin(&mut self, source: DeviceId, origin: Option<u64>) -> Result<(), SyncError> {
        match origin {
            Some(seq) => self.release_origins(vec![(source, seq)]),
            None => Ok(()),
        }
    }

    /// These versions are decided here: their peers may count them applied.
    pub(super) fn release_origins(&mut self, origins: Vec<Origin>) -> Result<(), SyncError> {
        let mut peers = Vec::new();
        for (peer, seq) in origins {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.pending_seqs.remove(&seq);
                peers.push(peer);
            }
        }
        peers.sort();
        peers.dedup();
        for peer in peers {
            self.update_applied(peer)?;
        }
        Ok(())
    }

    /// All of a version's blocks are here: decide against the current local
    /// state (which may have changed since it arrived) and install. What
    /// cannot be installed now is held with the reason and tried again.
    pub(super) fn finalize(&mut self, version: Version) -> Result<(), SyncError> {
        if self.timers.is_armed(Timer::DiskFullPause) {
            return self.hold(version, HoldReason::DiskFull);
        }
        let record = &version.record;
        if self.ignored(record) {
            // The rules changed while it waited: it stays as it is here.
            return self.release_origins(version.origins);
        }
        let local = match self.storage.record(&record.path) {
            Ok(local) => local,
            Err(e) => return self.storage_failed(version, e),
        };
        let records = match self.decide(local.as_ref(), record) {
            Resolution::Keep => return self.release_origins(version.origins),
            Resolution::Take => vec![record.clone()],
            Resolution::Conflict { merged, copy } => {
                // Two contents: a note merges three-way when it can.
                let note = match (&copy, local.as_ref()) {
                    (Some(_), Some(local)) => match self.merged_version(local, record, &merged) {
                        Ok(note) => note,
                        Err(e) => return self.storage_failed(version, e),
                    },
                    _ => None,
                };
                let copy = if note.is_some() { None } else { copy };
                let mut out = vec![note.unwrap_or(*merged)];
                if let Some(copy) = copy {
                    match self.place_copy(*copy) {
                        Ok(copy) => out.extend(copy),
                        Err(e) => return self.storage_failed(version, e),
                    }
                }
                out
            }
        };
        let decided_on = [(record.path.clone(), local.map(|l| l.vv))];
        let outcome = match self.plan_install(records) {
            Ok(batch) => self.apply_install(batch, &decided_on),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(InstallOutcome::Installed) => self.release_origins(version.origins),
            Ok(InstallOutcome::Busy) => self.hold(version, HoldReason::OpenForWriting),
            Ok(InstallOutcome::Moved) => self.hold(version, HoldReason::ChangedMeanwhile),
            Ok(InstallOutcome::Blocked(why)) => self.hold(version, HoldReason::Blocked(why)),
            Err(e) => self.storage_failed(version, e),
        }
    }

    /// Decides held versions again: after a local change those a local
    /// writer held up; on the timer those whose wait is over.
    pub(super) fn retry_holds(&mut self, local_change: bool) -> Result<(), SyncError> {
        for held in self.holds.take_due(self.now, local_change) {
            self.finalize(Version { record: held.record, source: held.source, origins: held.origins })?;
        }
        Ok(())
    }

    /// The rules, and one more on a read-only device: what it made of two
    /// of the group's versions (a merge) never reaches the group, so where
    /// the group holds another content under the very same history, the
    /// group's is taken (elsewhere the total order would settle it when
    /// the merge came back; here it never comes back).
    pub(super) fn decide(&self, local: Option<&FileRecord>, incoming: &FileRecord) -> Resolution {
        match local {
            Some(local) if self.is_read_only() && local.vv == incoming.vv && local != incoming => Resolution::Take,
            _ => resolve(local, incoming),
        }
    }

    /// The batch that installs `records` keeping the tree whole (see
    /// [`plan::plan_install`]: a pure function of the records and what this
    /// device holds).
    pub(super) fn plan_install(&self, records: Vec<FileRecord>) -> Result<Vec<FileRecord>, StorageError> {
        plan::plan_install(records, &self.storage, &self.planner())
    }

    /// A conflict copy placed only if it is news at its path.
    pub(super) fn place_copy(&self, copy: FileRecord) -> Result<Option<FileRecord>, StorageError> {
        plan::place_copy(copy, &self.storage)
    }

    /// Who makes new versions now: this device, its next counter, the time.
    pub(super) fn planner(&self) -> plan::Planner {
        plan::Planner { device: self.device, next_counter: self.storage.seq() + 1, mtime: self.wall_secs() }
    }

    /// Installs a planned batch in one atomic step of the storage; then what
    /// it supersedes goes, and the change is announced and shown.
    pub(super) fn apply_install(
        &mut self,
        ordered: Vec<FileRecord>,
        decided_on: &[(SyncPath, Option<VersionVector>)],
    ) -> Result<InstallOutcome, StorageError> {
        if ordered.is_empty() {
            return Ok(InstallOutcome::Installed);
        }
        let mut changes = Vec::with_capacity(ordered.len());
        for record in &ordered {
            let before = self.storage.record(&record.path)?.filter(|r| !r.deleted).map(|r| r.kind);
            let after = (!record.deleted).then_some(record.kind);
            changes.push(Change { path: record.path.clone(), before, after });
        }
        let installed: Vec<(SyncPath, VersionVector)> =
            ordered.iter().map(|r| (r.path.clone(), r.vv.clone())).collect();
        let outcome = self.storage.install(ordered, decided_on)?;
        if outcome != InstallOutcome::Installed {
            return Ok(outcome);
        }
        self.disk_full_pauses = 0;
        // Versions still waiting for blocks (or held) that what we installed
        // has seen are obsolete: drop them now, or one could land later, after
        // the record that superseded it was garbage-collected, and come back
        // to life.
        for (path, vv) in &installed {
            let held = self.holds.drop_superseded(path, vv);
            let waiting = self.fetch.drop_superseded(path, vv);
            let origins = held
                .into_iter()
                .flat_map(|h| h.origins)
                .chain(waiting.into_iter().filter_map(|w| w.origin.map(|seq| (w.source, seq))))
                .collect();
            self.release_origins(origins).map_err(|SyncError::Storage(e)| e)?;
        }
        if changes.iter().any(|c| c.path.as_str() == crate::ignore::IGNORE_FILE) {
            self.ignore.stale = true;
        }
        self.outputs.push_back(Output::Installed(changes));
        self.schedule_announce();
        Ok(InstallOutcome::Installed)
    }
}
