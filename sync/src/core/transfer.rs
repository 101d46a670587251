//! Moving blocks: fetching what installs wait for, serving peers' requests
//! within the byte budgets.

use super::*;
use crate::patch;

impl<S: SyncStorage> SyncCore<S> {
    pub(super) fn on_object(
        &mut self,
        peer: DeviceId,
        hash: ContentHash,
        data: Option<Vec<u8>>,
    ) -> Result<(), SyncError> {
        let had_data = data.is_some();
        self.fetch.heard_from(peer, self.now);
        match self.fetch.arrived(&mut self.storage, peer, hash, data) {
            Ok(Arrival::Unwanted) => {
                if had_data {
                    self.unrequested(peer, "blocks");
                }
            }
            Ok(Arrival::Refused) => {}
            Ok(Arrival::Corrupt) => {
                self.forget_peer(peer);
                self.violation(peer, format!("block {hash} does not match its hash"));
            }
            Ok(Arrival::Stored(done)) => self.settle(done)?,
            Err(StorageError::DiskFull) => {
                self.pause_for_full_disk();
                self.fetch.unask(&hash);
            }
            Err(StorageError::Failed(_)) => self.fetch.unask(&hash),
        }
        Ok(())
    }

    /// Versions whose last object just arrived: installed, or held if
    /// they can never be.
    pub(super) fn settle(&mut self, done: Vec<crate::fetch::Pending>) -> Result<(), SyncError> {
        for pending in done {
            let version = Version::new(pending.record, pending.source, pending.origin);
            match pending.invalid {
                Some(why) => self.hold(version, HoldReason::Refused(why))?,
                None => self.finalize(version)?,
            }
        }
        Ok(())
    }

    /// A block request from `peer`, served in turn by [`Self::pump_uploads`].
    pub(super) fn queue_upload(&mut self, peer: DeviceId, hash: ContentHash, base: Option<ContentHash>) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.uploads.push_back((hash, base));
        if p.uploads.len() > MAX_QUEUED_UPLOADS_PER_PEER {
            self.forget_peer(peer);
            self.violation(peer, format!("more than {MAX_QUEUED_UPLOADS_PER_PEER} block requests queued"));
        }
    }

    /// An object sent as a patch: rebuilt from its base here, then taken
    /// as if sent whole (checked against its hash). A patch that does not
    /// fit its base is a violation; a base no longer here (collected
    /// meanwhile) makes the object be asked for again, whole.
    pub(super) fn on_patch(
        &mut self,
        peer: DeviceId,
        hash: ContentHash,
        base: ContentHash,
        patch: Patch,
    ) -> Result<(), SyncError> {
        self.fetch.heard_from(peer, self.now);
        let Some(base_bytes) = self.object(&base) else {
            if !self.fetch.patch_failed(peer, &hash) {
                self.unrequested(peer, "blocks");
            }
            return Ok(());
        };
        match patch::apply(&base_bytes, &patch, BLOCK_SIZE as usize) {
            Ok(data) => self.on_object(peer, hash, Some(data)),
            Err(e) => {
                self.forget_peer(peer);
                self.violation(peer, format!("patch for {hash}: {e}"));
                Ok(())
            }
        }
    }

    /// A block or page by hash; one we cannot read (missing, damaged, a
    /// failing disk) is `None`.
    fn object(&self, hash: &ContentHash) -> Option<Vec<u8>> {
        match self.storage.block(hash) {
            Ok(Some(data)) => Some(data),
            Ok(None) => self.storage.page(hash).ok().flatten(),
            Err(_) => None,
        }
    }

    /// Sends what the windows, rate limits and congestion allow: queued
    /// block responses (peers in turn), block requests, index frames.
    pub(super) fn pump(&mut self) -> Result<(), SyncError> {
        self.pump_uploads();
        if !self.timers.is_armed(Timer::DiskFullPause) {
            let window = self.config.blocks_in_flight;
            let mut slots: Slots = self
                .peers
                .iter()
                .filter(|(_, p)| p.hello && !p.congested)
                .map(|(d, _)| (*d, window.saturating_sub(self.fetch.in_flight(d))))
                .collect();
            let deadline = self.now + self.config.block_timeout_ms;
            let (now, download) = (self.now, &mut self.download);
            let requests = self.fetch.requests(now, deadline, &mut slots, || download.take(now, BLOCK_SIZE));
            for (peer, hash, base) in requests {
                self.send(
                    peer,
                    match base {
                        Some(base) => Message::BlockRequestAgainst { hash, base },
                        None => Message::BlockRequest { hash },
                    },
                );
            }
        }
        let streaming: Vec<DeviceId> =
            self.peers.iter().filter(|(_, p)| p.has_stream_work()).map(|(d, _)| *d).collect();
        for peer in streaming {
            self.stream_index(peer)?;
        }
        Ok(())
    }

    /// Serves queued block requests, one per peer in turn, while the upload
    /// rate allows. A block or page we cannot read (missing, damaged, a
    /// failing disk) is answered "don't have", so the peer asks elsewhere.
    pub(super) fn pump_uploads(&mut self) {
        loop {
            let ready: Vec<DeviceId> =
                self.peers.iter().filter(|(_, p)| !p.uploads.is_empty() && !p.congested).map(|(d, _)| *d).collect();
            if ready.is_empty() {
                return;
            }
            let start = self.upload_turn.and_then(|t| ready.iter().position(|d| *d > t)).unwrap_or(0);
            let mut served = false;
            for peer in ready[start..].iter().chain(&ready[..start]).copied().collect::<Vec<_>>() {
                let Some((hash, base)) = self.peers.get(&peer).and_then(|p| p.uploads.front().copied()) else {
                    continue;
                };
                let data = self.object(&hash);
                let patch = match (&data, base) {
                    (Some(data), Some(base)) => self.object(&base).and_then(|b| patch::diff(&b, data)),
                    _ => None,
                };
                let cost = match &patch {
                    Some(p) => p.middle.len() as u64,
                    None => data.as_ref().map_or(0, |d| d.len() as u64),
                };
                if !self.upload.take(self.now, cost) {
                    return;
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.uploads.pop_front();
                }
                self.upload_turn = Some(peer);
                self.send(
                    peer,
                    match (patch, base) {
                        (Some(Patch { prefix, suffix, middle }), Some(base)) => {
                            Message::BlockPatch { hash, base, prefix, suffix, middle }
                        }
                        _ => Message::BlockResponse { hash, data },
                    },
                );
                served = true;
            }
            if !served {
                return;
            }
        }
    }
}
