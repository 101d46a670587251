//! The index session with each peer: hello, index requests and updates,
//! streaming our index to them, and what is acknowledged.

use super::*;

impl<S: SyncStorage> SyncCore<S> {
    pub(super) fn forget_peer(&mut self, peer: DeviceId) {
        self.peers.remove(&peer);
        // Its requests go elsewhere; it stays a source for when it is back.
        self.fetch.disconnected(peer);
    }

    /// A reply nobody asked for; past the bound the peer is dropped.
    pub(super) fn unrequested(&mut self, peer: DeviceId, what: &str) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.unrequested += 1;
        if p.unrequested > MAX_UNREQUESTED_PER_HEARTBEAT {
            self.forget_peer(peer);
            self.violation(
                peer,
                format!("more than {MAX_UNREQUESTED_PER_HEARTBEAT} replies nobody asked for ({what})"),
            );
        }
    }

    pub(super) fn on_hello(&mut self, peer: DeviceId, protocol: u32, index_id: u64, seq: u64) -> Result<(), SyncError> {
        if protocol != PROTOCOL_VERSION {
            self.forget_peer(peer);
            self.violation(
                peer,
                format!(
                    "protocol version {protocol}, this device speaks {PROTOCOL_VERSION}: \
                     upgrade psync on the device with the older version"
                ),
            );
            return Ok(());
        }
        let mut state = self.storage.peer_state(&peer)?;
        if state.index_id != index_id {
            // A new or reset index: start over from its beginning.
            state = PeerState { index_id, applied: 0, acked: state.acked };
            self.storage.set_peer_state(&peer, state)?;
        }
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        p.hello = true;
        p.index_id = index_id;
        p.their_seq = seq;
        p.received = state.applied;
        p.applied = state.applied;
        p.last_request_at = Some(self.now);
        self.send(peer, Message::IndexRequest { index_id, since: state.applied });
        Ok(())
    }

    pub(super) fn request_index(&mut self, peer: DeviceId) {
        let now = self.now;
        let retry_ms = self.config.heartbeat_ms;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.last_request_at.is_some_and(|t| now < t + retry_ms) {
            return;
        }
        p.last_request_at = Some(now);
        let message = Message::IndexRequest { index_id: p.index_id, since: p.received };
        self.send(peer, message);
    }

    /// Whether `peer` has as much waiting here as it may: its further index
    /// is not taken until that drains (asked for again then).
    pub(super) fn over_capacity(&self, peer: &DeviceId) -> bool {
        let load = self.fetch.load(peer);
        load.records >= MAX_PENDING_RECORDS_PER_PEER || load.hashes >= MAX_PENDING_HASHES_PER_PEER
    }

    pub(super) fn on_index_update(
        &mut self,
        peer: DeviceId,
        index_id: u64,
        from: u64,
        to: u64,
        records: Vec<(u64, FileRecord)>,
    ) -> Result<(), SyncError> {
        let Some(p) = self.peers.get(&peer) else { return Ok(()) };
        if index_id != p.index_id {
            return Ok(());
        }
        if from != p.received {
            // Lost, reordered or duplicated: ask again from what we have.
            if from > p.received {
                self.request_index(peer);
            }
            return Ok(());
        }
        let ordered = to >= from && records.windows(2).all(|w| w[0].0 < w[1].0);
        let in_range = records.iter().all(|(s, _)| *s > from && *s <= to);
        if !ordered || !in_range {
            self.forget_peer(peer);
            self.violation(peer, "index update out of order or range");
            return Ok(());
        }
        if self.over_capacity(&peer) {
            // As if lost: asked for again once what waits has drained.
            return Ok(());
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.sent_us.len() + records.len() > MAX_SENT_US_PER_PEER {
                p.sent_us.clear(); // only an optimisation: forget it rather than grow
            }
            p.sent_us.extend(records.iter().map(|(_, r)| (r.path.clone(), r.vv.clone())));
        }
        for (seq, record) in records {
            self.take_record(peer, record, Some(seq))?;
            if !self.peers.contains_key(&peer) {
                return Ok(()); // dropped on the way (a bound)
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.received = to;
            p.their_seq = p.their_seq.max(to);
        }
        self.update_applied(peer)
    }

    /// Advances how far `peer`'s index is decided here, persists it, acks it.
    pub(super) fn update_applied(&mut self, peer: DeviceId) -> Result<(), SyncError> {
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        let applied = match p.pending_seqs.first() {
            Some(first) => (first - 1).min(p.received),
            None => p.received,
        };
        if applied <= p.applied {
            return Ok(());
        }
        p.applied = applied;
        let index_id = p.index_id;
        let mut state = self.storage.peer_state(&peer)?;
        state.index_id = index_id;
        state.applied = applied;
        self.storage.set_peer_state(&peer, state)?;
        self.send(peer, Message::Ack { index_id, seq: applied });
        Ok(())
    }

    /// Sends records as `Records` frames bounded by count and bytes.
    pub(super) fn send_records(&mut self, peer: DeviceId, records: Vec<FileRecord>) {
        let mut frame = Vec::new();
        let mut bytes = 0;
        for record in records {
            let size = record.wire_size();
            if !frame.is_empty() && (frame.len() == MAX_RECORDS_PER_FRAME || bytes + size > RECORD_FRAME_BYTES) {
                self.send(peer, Message::Records { records: std::mem::take(&mut frame) });
                bytes = 0;
            }
            bytes += size;
            frame.push(record);
        }
        if !frame.is_empty() {
            self.send(peer, Message::Records { records: frame });
        }
    }

    /// Streams up to [`INDEX_FRAMES_PER_TURN`] frames of our index to
    /// `peer`, each bounded by count and bytes.
    pub(super) fn stream_index(&mut self, peer: DeviceId) -> Result<(), SyncError> {
        let seq = self.storage.seq();
        let index_id = self.storage.index_id();
        for _ in 0..INDEX_FRAMES_PER_TURN {
            let Some(p) = self.peers.get(&peer) else { return Ok(()) };
            let Some(from) = p.sent_upto.filter(|s| *s < p.stream_until && *s < seq) else { break };
            let fetched = self.storage.records_since(from, MAX_RECORDS_PER_FRAME)?;
            let complete = fetched.len() < MAX_RECORDS_PER_FRAME;
            let mut to = from;
            let mut records = Vec::new();
            let mut bytes = 0;
            let mut cut = false;
            let ignore = &self.ignore.rules;
            let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
            for (s, record) in fetched {
                // What the peer sent us itself is left out, and what stays
                // on this device; the range still covers it, so the peer's
                // accounting of our index is unchanged.
                let echo = p.sent_us.get(&record.path).is_some_and(|vv| *vv == record.vv);
                let local_only = ignore.is_ignored(&record.path, record.kind == RecordKind::Dir);
                if echo {
                    p.sent_us.remove(&record.path);
                } else if !local_only {
                    let size = record.wire_size();
                    if !records.is_empty() && bytes + size > RECORD_FRAME_BYTES {
                        cut = true;
                        break;
                    }
                    bytes += size;
                    records.push((s, record));
                }
                to = s;
            }
            if complete && !cut {
                to = seq;
            }
            p.sent_upto = Some(to);
            self.send(peer, Message::IndexUpdate { index_id, from, to, records });
        }
        Ok(())
    }
}
