//! Anti-entropy: heartbeats carry the tree root; when roots differ, a
//! walk of the incremental tree finds what differs.

use super::*;

impl<S: SyncStorage> SyncCore<S> {
    /// The Merkle root of the live records.
    pub fn root(&mut self) -> Result<ContentHash, SyncError> {
        self.refresh_tree()?;
        Ok(self.tree.root())
    }

    pub(super) fn on_heartbeat(&mut self, peer: DeviceId, root: ContentHash, seq: u64) -> Result<(), SyncError> {
        let over = self.over_capacity(&peer);
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        p.their_seq = p.their_seq.max(seq);
        if seq > p.received {
            // The tail of their index never arrived (lost, or not taken
            // while too much of theirs waited here): ask again.
            if !over {
                self.request_index(peer);
            }
            return Ok(());
        }
        let caught_up = self.fetch.load(&peer).records == 0 && p.sent_upto.is_some_and(|s| s >= self.storage.seq());
        if self.now >= p.tree_sync_after {
            // A walk this old is over; an answer lost on the way must not
            // keep the next one from starting.
            p.tree_asked.clear();
        }
        let due = self.now >= p.tree_sync_after;
        if caught_up && due && root != self.root()? {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.tree_sync_after = self.now + 3 * self.config.heartbeat_ms;
            }
            self.ask_tree(peer, None);
        }
        Ok(())
    }

    pub(super) fn walking_with(&mut self, peer: DeviceId) {
        let until = self.now + 3 * self.config.heartbeat_ms;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.walk_until = p.walk_until.max(until);
        }
    }

    pub(super) fn ask_tree(&mut self, peer: DeviceId, prefix: Option<SyncPath>) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.tree_asked.len() >= MAX_TREE_REQUESTS_OUTSTANDING
            || p.tree_requests_sent >= MAX_TREE_REQUESTS_PER_HEARTBEAT / 2
            || !p.tree_asked.insert(prefix.clone())
        {
            return; // the next walk goes on from there
        }
        p.tree_requests_sent += 1;
        self.send(peer, Message::TreeRequest { prefix });
        self.walking_with(peer);
    }

    /// A tree node's children, in parts bounded by bytes.
    pub(super) fn answer_tree(&mut self, peer: DeviceId, prefix: Option<SyncPath>) -> Result<(), SyncError> {
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        p.tree_requests += 1;
        if p.tree_requests > MAX_TREE_REQUESTS_PER_HEARTBEAT {
            self.forget_peer(peer);
            self.violation(peer, format!("more than {MAX_TREE_REQUESTS_PER_HEARTBEAT} tree requests"));
            return Ok(());
        }
        self.refresh_tree()?;
        let entries = self.tree.children(prefix.as_ref());
        let mut after: Option<String> = None;
        let mut part: Vec<TreeEntry> = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            let size = entry.name.len() + 40;
            if !part.is_empty() && bytes + size > TREE_FRAME_BYTES {
                let next_after = part.last().map(|e| e.name.clone());
                let entries = std::mem::take(&mut part);
                self.send(peer, Message::TreeResponse { prefix: prefix.clone(), after, entries, complete: false });
                after = next_after;
                bytes = 0;
            }
            bytes += size;
            part.push(entry);
        }
        self.send(peer, Message::TreeResponse { prefix, after, entries: part, complete: true });
        self.walking_with(peer);
        Ok(())
    }

    pub(super) fn on_tree_response(
        &mut self,
        peer: DeviceId,
        prefix: Option<SyncPath>,
        after: Option<String>,
        theirs: Vec<TreeEntry>,
        complete: bool,
    ) -> Result<(), SyncError> {
        // This part covers the names after `after`, up to its last entry
        // (or to the end, for the last part).
        let upto = if complete { None } else { theirs.last().map(|e| e.name.clone()) };
        let covered =
            |name: &String| after.as_ref().is_none_or(|a| name > a) && upto.as_ref().is_none_or(|u| name <= u);
        self.refresh_tree()?;
        let ours: BTreeMap<String, TreeEntry> = self
            .tree
            .children(prefix.as_ref())
            .into_iter()
            .filter(|e| covered(&e.name))
            .map(|e| (e.name.clone(), e))
            .collect();
        let mut theirs_by_name = BTreeMap::new();
        for entry in theirs {
            if !covered(&entry.name) {
                self.forget_peer(peer);
                self.violation(peer, "a tree response part out of its range");
                return Ok(());
            }
            theirs_by_name.insert(entry.name.clone(), entry);
        }
        let mut request = Vec::new();
        let mut push = Vec::new();
        let names: BTreeSet<&String> = ours.keys().chain(theirs_by_name.keys()).collect();
        for name in names {
            let path = match &prefix {
                None => SyncPath::new(name),
                Some(p) => p.join(name),
            };
            let Ok(path) = path else {
                self.forget_peer(peer);
                self.violation(peer, "bad name in tree response");
                return Ok(());
            };
            match (ours.get(name), theirs_by_name.get(name)) {
                (Some(a), Some(b)) if a.hash == b.hash => {}
                (Some(a), Some(b)) => {
                    if a.has_children || b.has_children {
                        self.ask_tree(peer, Some(path.clone()));
                    }
                    request.push(path.clone());
                    push.push(path);
                }
                (Some(_), None) => push.extend(self.tree.live_within(&path)),
                (None, Some(b)) => {
                    if b.has_children {
                        self.ask_tree(peer, Some(path.clone()));
                    }
                    request.push(path);
                }
                (None, None) => {}
            }
        }
        for chunk in request.chunks(MAX_PATHS_PER_RECORD_REQUEST) {
            self.send(peer, Message::RecordRequest { paths: chunk.to_vec() });
        }
        let mut records = Vec::new();
        for path in push {
            if let Ok(Some(r)) = self.storage.record(&path) {
                if !r.deleted {
                    records.push(r);
                }
            }
        }
        self.send_records(peer, records);
        self.walking_with(peer);
        Ok(())
    }

    pub(super) fn heartbeat(&mut self) -> Result<(), SyncError> {
        self.retry_holds(false)?;
        let root = self.root()?;
        let seq = self.storage.seq();
        let timeout = self.config.peer_timeout_ms;
        let now = self.now;
        let mut inactive = Vec::new();
        let mut beat = Vec::new();
        let mut unasked = Vec::new();
        for (d, p) in self.peers.iter_mut() {
            p.unrequested = 0;
            p.tree_requests = 0;
            p.tree_requests_sent = 0;
            if p.hello {
                beat.push(*d);
            }
            if !p.inactive && now > p.last_heard + timeout {
                p.inactive = true;
                inactive.push(*d);
            }
            // A peer that never asked for our index has not seen our hello
            // (lost on the way): say it again.
            if p.sent_upto.is_none() && p.reply_at.is_none() {
                unasked.push(*d);
            }
        }
        for d in beat {
            self.send(d, Message::Heartbeat { root, seq });
        }
        let index_id = self.storage.index_id();
        for d in unasked {
            self.send(d, Message::Hello { protocol: PROTOCOL_VERSION, index_id, seq });
        }
        for d in inactive {
            self.outputs.push_back(Output::Inactive(d));
        }
        Ok(())
    }
}
