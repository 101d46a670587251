//! [`SyncCore`]: the deterministic replication state machine.
//!
//! Driving rule (as in str0m and quinn-proto): feed an input with
//! [`SyncCore::handle`] or [`SyncCore::handle_timeout`], then drain
//! [`SyncCore::poll_output`] until it returns `None`, then sleep until
//! [`SyncCore::poll_timeout`]. The core performs no I/O and reads no clock;
//! `now` is milliseconds since the Unix epoch, passed in. Its only effects
//! are the outputs and the calls on its [`SyncStorage`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use psync_base::{ContentHash, DeviceId, BLOCK_SIZE};

use crate::merkle::Tree;
use crate::message::{Message, TreeEntry, MAX_RECORDS_PER_UPDATE, PROTOCOL_VERSION};
use crate::path::SyncPath;
use crate::record::{conflict_copy, is_conflict_copy, resolve, FileRecord, RecordKind, Resolution, VersionId};
use crate::storage::{PeerState, StorageError, SyncStorage};

/// Milliseconds since the Unix epoch (simulations may start anywhere).
pub type Millis = u64;

/// Versions remembered per peer so as not to send them back (memory bound).
const MAX_SENT_US_PER_PEER: usize = 200_000;

/// Tunables. Defaults follow the user's design doc.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Every device of the group, this one included (from the group log).
    pub group: Vec<DeviceId>,
    /// Devices whose changes are ignored ("safe mode").
    pub read_only: Vec<DeviceId>,
    /// Local changes within this window go out as one update.
    pub debounce_ms: u64,
    /// How often heartbeats (with the Merkle root) go out.
    pub heartbeat_ms: u64,
    /// A peer silent this long is reported inactive.
    pub peer_timeout_ms: u64,
    /// A block request unanswered this long is asked again, elsewhere if possible.
    pub block_timeout_ms: u64,
    /// Block requests outstanding per peer (bounded memory for any file size).
    pub blocks_in_flight: usize,
    /// Replies to an index request wait a random delay up to this (anti-swarming).
    pub reply_jitter_ms: u64,
    /// Tombstones younger than this are kept even when every device has them.
    pub tombstone_min_age_secs: i64,
    /// How often tombstone garbage collection runs.
    pub gc_interval_ms: u64,
    /// Upload limit in bytes per second (blocks served), `None`: unlimited.
    pub upload_bytes_per_sec: Option<u64>,
    /// Download limit in bytes per second (blocks requested), `None`: unlimited.
    pub download_bytes_per_sec: Option<u64>,
}

impl SyncConfig {
    /// Defaults for a group.
    pub fn new(group: Vec<DeviceId>) -> Self {
        Self {
            group,
            read_only: Vec::new(),
            debounce_ms: 100,
            heartbeat_ms: 2_000,
            peer_timeout_ms: 10_000,
            block_timeout_ms: 5_000,
            blocks_in_flight: 64,
            reply_jitter_ms: 200,
            tombstone_min_age_secs: 3 * 24 * 3600,
            gc_interval_ms: 60_000,
            upload_bytes_per_sec: None,
            download_bytes_per_sec: None,
        }
    }
}

/// What happens to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A connection to a peer is up (authenticated by the shell).
    Connected(DeviceId),
    /// It is down.
    Disconnected(DeviceId),
    /// A message from a connected peer.
    Message(DeviceId, Message),
    /// The local store changed (a commit from the filesystem).
    LocalChanged,
}

/// What the core asks of its shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this to that peer.
    Send(DeviceId, Message),
    /// These paths changed in the store because of peers (for the
    /// filesystem to show, e.g. to raise inotify events).
    Installed(Vec<Change>),
    /// The peer broke the protocol; the shell should drop the connection.
    Violation(DeviceId, String),
    /// The peer has been silent too long.
    Inactive(DeviceId),
}

/// A path that records from peers changed here: what it was before and
/// what it is now (`None`: absent or deleted), so the filesystem can show
/// the change as the matching create, modify or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The path.
    pub path: SyncPath,
    /// Its kind before, if it was live.
    pub before: Option<RecordKind>,
    /// Its kind now, if it is live.
    pub after: Option<RecordKind>,
}

/// One connected peer as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// The peer.
    pub device: DeviceId,
    /// Hellos exchanged: the session is usable.
    pub ready: bool,
    /// The peer's latest sequence number we know of.
    pub their_seq: u64,
    /// Their records decided here, up to this sequence number.
    pub applied: u64,
    /// Their records that wait for blocks here.
    pub waiting_records: usize,
    /// Our sequence number the peer has acknowledged.
    pub acked: u64,
    /// Our latest sequence number.
    pub our_seq: u64,
    /// When we last heard from the peer.
    pub last_heard: Millis,
}

impl PeerProgress {
    /// Both sides have applied everything the other has announced.
    pub fn in_sync(&self) -> bool {
        self.ready && self.applied >= self.their_seq && self.waiting_records == 0 && self.acked >= self.our_seq
    }

    /// Their records not yet decided here.
    pub fn incoming(&self) -> u64 {
        self.their_seq.saturating_sub(self.applied)
    }

    /// Our records they have not acknowledged.
    pub fn outgoing(&self) -> u64 {
        self.our_seq.saturating_sub(self.acked)
    }
}

/// What can stop the core.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The storage failed; nothing was half-applied.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug)]
struct Peer {
    hello: bool,
    index_id: u64,
    their_seq: u64,
    /// Their records up to here were received in this session, contiguously.
    received: u64,
    /// Their records up to here are decided here (persisted).
    applied: u64,
    /// Our index streamed to them up to here (after their first request).
    sent_upto: Option<u64>,
    reply_at: Option<(Millis, u64)>,
    last_request_at: Option<Millis>,
    last_heard: Millis,
    inactive: bool,
    in_flight: usize,
    tree_sync_after: Millis,
    /// Their sequence numbers whose records wait for blocks here.
    pending_seqs: BTreeSet<u64>,
    /// Versions they sent on this connection: ours equal to one of these
    /// need not go back (a record's block list alone is 33 bytes a block).
    sent_us: BTreeMap<SyncPath, psync_base::VersionVector>,
}

#[derive(Debug)]
struct Want {
    /// Peers that announced a record with this block.
    sources: Vec<DeviceId>,
    /// Peers that answered "don't have it" since the last full round.
    refused: BTreeSet<DeviceId>,
    asked: Option<(DeviceId, Millis)>,
}

#[derive(Debug, Clone)]
struct Pending {
    record: FileRecord,
    origin: Option<(DeviceId, u64)>,
}

#[derive(Debug)]
struct TokenBucket {
    rate: Option<u64>,
    tokens: f64,
    at: Millis,
}

impl TokenBucket {
    fn new(rate: Option<u64>, now: Millis) -> Self {
        Self { rate, tokens: rate.unwrap_or(0) as f64, at: now }
    }

    fn refill(&mut self, now: Millis) {
        if let Some(rate) = self.rate {
            let elapsed = now.saturating_sub(self.at) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * rate as f64).min(rate.max(BLOCK_SIZE) as f64);
        }
        self.at = now;
    }

    fn take(&mut self, now: Millis, bytes: u64) -> bool {
        if self.rate.is_none() {
            return true;
        }
        self.refill(now);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// When `bytes` will be available.
    fn ready_at(&self, bytes: u64) -> Option<Millis> {
        let rate = self.rate?;
        let missing = (bytes as f64 - self.tokens).max(0.0);
        Some(self.at + (missing * 1000.0 / rate.max(1) as f64).ceil() as u64)
    }
}

/// The replication state machine of one device.
#[derive(Debug)]
pub struct SyncCore<S: SyncStorage> {
    storage: S,
    config: SyncConfig,
    device: DeviceId,
    rng: u64,
    now: Millis,
    peers: BTreeMap<DeviceId, Peer>,
    pending: BTreeMap<SyncPath, Vec<Pending>>,
    /// Complete records whose file is open for writing here (see `finalize`).
    held: Vec<FileRecord>,
    wants: BTreeMap<ContentHash, Want>,
    /// Deadlines of block requests, oldest first (so `poll_timeout` need
    /// not walk every want); entries whose want moved on are skipped.
    ask_deadlines: VecDeque<(Millis, ContentHash)>,
    outputs: VecDeque<Output>,
    announce_at: Option<Millis>,
    next_heartbeat: Millis,
    next_gc: Millis,
    tree: Option<(u64, Tree)>,
    upload: TokenBucket,
    download: TokenBucket,
    upload_queue: VecDeque<(DeviceId, ContentHash)>,
}

impl<S: SyncStorage> SyncCore<S> {
    /// A core over `storage`; `seed` drives its only randomness (reply
    /// jitter), so a simulation replays exactly.
    pub fn new(storage: S, config: SyncConfig, seed: u64, now: Millis) -> Self {
        let device = storage.device();
        let upload = TokenBucket::new(config.upload_bytes_per_sec, now);
        let download = TokenBucket::new(config.download_bytes_per_sec, now);
        Self {
            next_heartbeat: now + config.heartbeat_ms,
            next_gc: now + config.gc_interval_ms,
            storage,
            config,
            device,
            rng: seed | 1,
            now,
            peers: BTreeMap::new(),
            pending: BTreeMap::new(),
            held: Vec::new(),
            wants: BTreeMap::new(),
            ask_deadlines: VecDeque::new(),
            outputs: VecDeque::new(),
            announce_at: None,
            tree: None,
            upload,
            download,
            upload_queue: VecDeque::new(),
        }
    }

    /// The storage (read access for the shell and tests).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, for local changes made by the shell (then send
    /// [`Input::LocalChanged`]).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back (a "crash" in simulations).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Records waiting for blocks.
    pub fn pending_count(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// A readable account of what is waiting (for diagnostics and `psync status`).
    pub fn waiting(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (path, waiting) in &self.pending {
            for w in waiting {
                let missing: Vec<String> =
                    w.record.needed_blocks().filter(|h| self.wants.contains_key(h)).map(|h| format!("{h:?}")).collect();
                out.push(format!("{path} {:?} from {:?} missing {missing:?}", w.record.vv, w.origin));
            }
        }
        for (hash, want) in &self.wants {
            out.push(format!("want {hash:?} sources {:?} asked {:?}", want.sources, want.asked));
        }
        for (d, p) in &self.peers {
            out.push(format!(
                "peer {d:?}: hello {} index {} their_seq {} received {} applied {} sent_upto {:?} pending_seqs {:?}",
                p.hello, p.index_id, p.their_seq, p.received, p.applied, p.sent_upto, p.pending_seqs
            ));
        }
        out
    }

    /// Connected peers and our sequence number each has acknowledged.
    pub fn peer_acks(&self) -> Vec<(DeviceId, u64)> {
        self.peers.keys().map(|d| (*d, self.storage.peer_state(d).map(|s| s.acked).unwrap_or(0))).collect()
    }

    /// The roster changed: the group's devices (for tombstone collection)
    /// and the read-only ones (whose changes are ignored from now on).
    pub fn set_group(&mut self, devices: Vec<DeviceId>, read_only: Vec<DeviceId>) {
        self.config.group = devices;
        self.config.read_only = read_only;
    }

    /// Where each connected peer stands (for `psync status`).
    pub fn peer_progress(&self) -> Result<Vec<PeerProgress>, SyncError> {
        let our_seq = self.storage.seq();
        let mut out = Vec::with_capacity(self.peers.len());
        for (device, p) in &self.peers {
            out.push(PeerProgress {
                device: *device,
                ready: p.hello,
                their_seq: p.their_seq,
                applied: p.applied,
                waiting_records: p.pending_seqs.len(),
                acked: self.storage.peer_state(device)?.acked,
                our_seq,
                last_heard: p.last_heard,
            });
        }
        Ok(out)
    }

    /// Blocks this device still has to fetch.
    pub fn wanted_blocks(&self) -> usize {
        self.wants.len()
    }

    /// The Merkle root of the live records.
    pub fn root(&mut self) -> Result<ContentHash, SyncError> {
        Ok(self.tree()?.root)
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`SyncCore::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut next = self.next_heartbeat.min(self.next_gc);
        let mut consider = |t: Option<Millis>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        consider(self.announce_at);
        for peer in self.peers.values() {
            consider(peer.reply_at.map(|(t, _)| t));
        }
        consider(self.ask_deadlines.iter().find(|(deadline, hash)| self.asked_until(hash, *deadline)).map(|(d, _)| *d));
        if !self.upload_queue.is_empty() {
            consider(self.upload.ready_at(BLOCK_SIZE));
        }
        if self.wants.values().any(|w| w.asked.is_none()) {
            consider(self.download.ready_at(BLOCK_SIZE));
        }
        Some(next)
    }

    fn random(&mut self, below: u64) -> u64 {
        // xorshift64*: deterministic per seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        if below == 0 {
            0
        } else {
            self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
        }
    }

    fn send(&mut self, peer: DeviceId, message: Message) {
        self.outputs.push_back(Output::Send(peer, message));
    }

    fn tree(&mut self) -> Result<&Tree, SyncError> {
        let seq = self.storage.seq();
        if self.tree.as_ref().is_none_or(|(at, _)| *at != seq) {
            let tree = Tree::build(&self.storage.live_records()?);
            self.tree = Some((seq, tree));
        }
        match &self.tree {
            Some((_, tree)) => Ok(tree),
            None => unreachable!("tree built above"),
        }
    }

    fn schedule_announce(&mut self) {
        if self.announce_at.is_none() {
            self.announce_at = Some(self.now + self.config.debounce_ms);
        }
    }

    // ---- inputs ----------------------------------------------------------------

    /// Feeds one input.
    pub fn handle(&mut self, now: Millis, input: Input) -> Result<(), SyncError> {
        self.now = self.now.max(now);
        match input {
            Input::Connected(peer) if peer != self.device => {
                self.peers.insert(
                    peer,
                    Peer {
                        hello: false,
                        index_id: 0,
                        their_seq: 0,
                        received: 0,
                        applied: 0,
                        sent_upto: None,
                        reply_at: None,
                        last_request_at: None,
                        last_heard: self.now,
                        inactive: false,
                        in_flight: 0,
                        tree_sync_after: self.now,
                        pending_seqs: BTreeSet::new(),
                        sent_us: BTreeMap::new(),
                    },
                );
                let hello = Message::Hello {
                    protocol: PROTOCOL_VERSION,
                    index_id: self.storage.index_id(),
                    seq: self.storage.seq(),
                };
                self.send(peer, hello);
            }
            Input::Connected(_) => {}
            Input::Disconnected(peer) => {
                self.peers.remove(&peer);
                // Its requests go elsewhere; it stays a source for when it is back.
                for want in self.wants.values_mut() {
                    if want.asked.is_some_and(|(p, _)| p == peer) {
                        want.asked = None;
                    }
                }
                self.upload_queue.retain(|(p, _)| *p != peer);
            }
            Input::Message(peer, message) => {
                let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
                p.last_heard = self.now;
                p.inactive = false;
                self.on_message(peer, message)?;
            }
            Input::LocalChanged => {
                self.schedule_announce();
                self.retry_held()?;
            }
        }
        self.pump()
    }

    fn violation(&mut self, peer: DeviceId, what: impl Into<String>) {
        self.outputs.push_back(Output::Violation(peer, what.into()));
    }

    fn on_message(&mut self, peer: DeviceId, message: Message) -> Result<(), SyncError> {
        // Messages about the peer's index need its hello; on a reordering
        // network they may overtake it. They are dropped, and the peer's
        // next heartbeat brings them back (see `on_heartbeat`).
        let hello_done = self.peers.get(&peer).is_some_and(|p| p.hello);
        if !hello_done && matches!(message, Message::IndexUpdate { .. } | Message::Heartbeat { .. }) {
            return Ok(());
        }
        match message {
            Message::Hello { protocol, index_id, seq } => self.on_hello(peer, protocol, index_id, seq)?,
            Message::IndexRequest { index_id, since } => {
                let since = if index_id == self.storage.index_id() { since.min(self.storage.seq()) } else { 0 };
                // Anti-swarming: with several peers asking at once (a device
                // joining a group), replies are spread out; one peer alone
                // need not wait.
                let delay = if self.peers.len() > 1 { self.random(self.config.reply_jitter_ms + 1) } else { 0 };
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.reply_at = Some((self.now + delay, since));
                }
            }
            Message::IndexUpdate { index_id, from, to, records } => {
                self.on_index_update(peer, index_id, from, to, records)?
            }
            Message::Ack { index_id, seq } => {
                if index_id == self.storage.index_id() && seq <= self.storage.seq() {
                    let mut state = self.storage.peer_state(&peer)?;
                    if seq > state.acked {
                        state.acked = seq;
                        self.storage.set_peer_state(&peer, state)?;
                    }
                }
            }
            Message::BlockRequest { hash } => {
                self.upload_queue.push_back((peer, hash));
            }
            Message::BlockResponse { hash, data } => self.on_block(peer, hash, data)?,
            Message::Heartbeat { root, seq } => self.on_heartbeat(peer, root, seq)?,
            Message::TreeRequest { prefix } => {
                let entries = self.tree()?.children(prefix.as_ref());
                self.send(peer, Message::TreeResponse { prefix, entries });
            }
            Message::TreeResponse { prefix, entries } => self.on_tree_response(peer, prefix, entries)?,
            Message::RecordRequest { paths } => {
                let mut records = Vec::new();
                for path in paths.iter().take(4 * MAX_RECORDS_PER_UPDATE) {
                    if let Some(r) = self.storage.record(path)? {
                        records.push(r);
                    }
                }
                for chunk in records.chunks(MAX_RECORDS_PER_UPDATE) {
                    self.send(peer, Message::Records { records: chunk.to_vec() });
                }
            }
            Message::Records { records } => {
                for record in records {
                    if let Err(what) = check_record(&record) {
                        self.violation(peer, what);
                        return Ok(());
                    }
                    self.receive_record(record, peer, None)?;
                }
            }
        }
        Ok(())
    }

    fn on_hello(&mut self, peer: DeviceId, protocol: u32, index_id: u64, seq: u64) -> Result<(), SyncError> {
        if protocol != PROTOCOL_VERSION {
            self.violation(peer, format!("protocol version {protocol}, this device speaks {PROTOCOL_VERSION}"));
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

    fn request_index(&mut self, peer: DeviceId) {
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

    fn on_index_update(
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
            self.violation(peer, "index update out of order or range");
            return Ok(());
        }
        for (_, record) in &records {
            if let Err(what) = check_record(record) {
                self.violation(peer, what);
                return Ok(());
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.sent_us.len() + records.len() > MAX_SENT_US_PER_PEER {
                p.sent_us.clear(); // only an optimisation: forget it rather than grow
            }
            p.sent_us.extend(records.iter().map(|(_, r)| (r.path.clone(), r.vv.clone())));
        }
        for (seq, record) in records {
            self.receive_record(record, peer, Some(seq))?;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.received = to;
            p.their_seq = p.their_seq.max(to);
        }
        self.update_applied(peer)
    }

    /// Advances how far `peer`'s index is decided here, persists it, acks it.
    fn update_applied(&mut self, peer: DeviceId) -> Result<(), SyncError> {
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

    fn ignored_device(&self, record: &FileRecord) -> bool {
        record.vv.iter().any(|(d, _)| *d != self.device && self.config.read_only.contains(d))
    }

    /// Takes a remote record: decides at once, or waits for its blocks.
    fn receive_record(&mut self, record: FileRecord, source: DeviceId, seq: Option<u64>) -> Result<(), SyncError> {
        if self.ignored_device(&record) {
            return Ok(());
        }
        // Versions already waiting for this path.
        if let Some(waiting) = self.pending.get(&record.path) {
            use psync_base::Causality::*;
            if waiting.iter().any(|w| matches!(record.vv.compare(&w.record.vv), Equal | Dominated)) {
                return Ok(());
            }
        }
        let local = self.storage.record(&record.path)?;
        if resolve(local.as_ref(), &record) == Resolution::Keep {
            return Ok(());
        }
        let missing: BTreeSet<ContentHash> = if record.deleted {
            BTreeSet::new()
        } else {
            let mut missing = BTreeSet::new();
            for hash in record.needed_blocks() {
                if !self.storage.has_block(&hash)? {
                    missing.insert(hash);
                }
            }
            missing
        };
        if missing.is_empty() {
            return self.finalize(record);
        }
        // Superseded waiting versions give way.
        let superseded: Vec<Pending> = match self.pending.get_mut(&record.path) {
            Some(waiting) => {
                let (gone, kept): (Vec<Pending>, Vec<Pending>) = waiting
                    .drain(..)
                    .partition(|w| w.record.vv.compare(&record.vv) == psync_base::Causality::Dominated);
                *waiting = kept;
                gone
            }
            None => Vec::new(),
        };
        for gone in superseded {
            self.release_origin(gone.origin)?;
        }
        for hash in &missing {
            let want =
                self.wants.entry(*hash).or_insert(Want { sources: Vec::new(), refused: BTreeSet::new(), asked: None });
            if !want.sources.contains(&source) {
                want.sources.push(source);
            }
        }
        if let (Some(seq), Some(p)) = (seq, self.peers.get_mut(&source)) {
            p.pending_seqs.insert(seq);
        }
        let origin = seq.map(|s| (source, s));
        self.pending.entry(record.path.clone()).or_default().push(Pending { record, origin });
        Ok(())
    }

    fn release_origin(&mut self, origin: Option<(DeviceId, u64)>) -> Result<(), SyncError> {
        if let Some((peer, seq)) = origin {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.pending_seqs.remove(&seq);
            }
            self.update_applied(peer)?;
        }
        Ok(())
    }

    /// All of `record`'s blocks are here: decide against the current local
    /// state (which may have changed since it arrived) and install. A file
    /// open for writing here is not replaced: the record is held and decided
    /// again after the next local change (the close commits what was
    /// written, and the rules then keep both versions if both changed).
    fn finalize(&mut self, record: FileRecord) -> Result<(), SyncError> {
        let local = self.storage.record(&record.path)?;
        let records = match resolve(local.as_ref(), &record) {
            Resolution::Keep => return Ok(()),
            Resolution::Take => vec![record.clone()],
            Resolution::Conflict { merged, copy } => {
                let mut out = vec![*merged];
                if let Some(copy) = copy {
                    out.extend(self.place_copy(*copy)?);
                }
                out
            }
        };
        let decided_on = [(record.path.clone(), local.map(|l| l.vv))];
        if !self.install(records, &decided_on)? && !self.held.iter().any(|h| h.path == record.path && h.vv == record.vv)
        {
            self.held.push(record);
        }
        Ok(())
    }

    /// Decides held records again (a local change or a timer came).
    fn retry_held(&mut self) -> Result<(), SyncError> {
        for record in std::mem::take(&mut self.held) {
            self.finalize(record)?;
        }
        Ok(())
    }

    /// Records held because the file they would replace is open for writing.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// A conflict copy is a record like any other: it is placed only if it
    /// is news at its path (a user may have deleted or edited that copy
    /// already, and a late device resolving the same conflict must not
    /// bring it back).
    fn place_copy(&self, copy: FileRecord) -> Result<Option<FileRecord>, SyncError> {
        let existing = self.storage.record(&copy.path)?;
        Ok(match resolve(existing.as_ref(), &copy) {
            Resolution::Keep => None,
            Resolution::Take => Some(copy),
            Resolution::Conflict { merged, .. } => Some(*merged),
        })
    }

    /// The next version of `path` made by this device, over `base`.
    fn own_version(&self, base: &psync_base::VersionVector) -> (psync_base::VersionVector, VersionId) {
        let mut vv = base.clone();
        let counter = vv.advance(self.device, self.storage.seq() + 1);
        (vv, VersionId { device: self.device, counter })
    }

    fn dir_record(&self, path: SyncPath, base: &psync_base::VersionVector, perm: u32, mtime: i64) -> FileRecord {
        let (vv, version) = self.own_version(base);
        FileRecord::dir(path, vv, version, perm, mtime)
    }

    /// Installs records atomically, keeping the tree whole: a live record's
    /// parents are (re)created as directories; a directory is not deleted
    /// while it still has live children here (it is re-asserted instead).
    /// `false`: a file it would replace is open for writing here, or a path
    /// in `decided_on` changed since the decision; nothing was installed.
    fn install(
        &mut self,
        records: Vec<FileRecord>,
        decided_on: &[(SyncPath, Option<psync_base::VersionVector>)],
    ) -> Result<bool, SyncError> {
        let mut batch: BTreeMap<SyncPath, FileRecord> = BTreeMap::new();
        let mtime = (self.now / 1000) as i64;
        for record in records {
            let current = match batch.get(&record.path) {
                Some(r) => Some(r.clone()),
                None => self.storage.record(&record.path)?,
            };
            if record.deleted {
                if record.kind == RecordKind::Dir && self.storage.has_live_children(&record.path)? {
                    let mut base = record.vv.clone();
                    if let Some(c) = &current {
                        base.merge(&c.vv);
                    }
                    let perm = current.as_ref().map_or(0o755, |c| c.perm);
                    batch.insert(record.path.clone(), self.dir_record(record.path.clone(), &base, perm, mtime));
                } else {
                    batch.insert(record.path.clone(), record);
                }
                continue;
            }
            // A file replacing a directory that still has children here:
            // keep the directory, keep the file as a conflict copy.
            if record.kind != RecordKind::Dir
                && current.as_ref().is_some_and(|c| !c.deleted && c.kind == RecordKind::Dir)
                && self.storage.has_live_children(&record.path)?
            {
                let current = current.as_ref().map(|c| (c.vv.clone(), c.perm)).unwrap_or_default();
                let mut base = record.vv.clone();
                base.merge(&current.0);
                batch.insert(record.path.clone(), self.dir_record(record.path.clone(), &base, current.1, mtime));
                if let Some(copy) = conflict_copy(&record) {
                    if let Some(copy) = self.place_copy(copy)? {
                        batch.insert(copy.path.clone(), copy);
                    }
                }
                continue;
            }
            let mut ancestors = Vec::new();
            let mut up = record.path.parent();
            while let Some(a) = up {
                up = a.parent();
                ancestors.push(a);
            }
            for ancestor in ancestors.into_iter().rev() {
                let existing = match batch.get(&ancestor) {
                    Some(r) => Some(r.clone()),
                    None => self.storage.record(&ancestor)?,
                };
                match existing {
                    Some(e) if !e.deleted && e.kind == RecordKind::Dir => {}
                    other => {
                        let base = other.as_ref().map(|e| e.vv.clone()).unwrap_or_default();
                        if let Some(moved) = other.as_ref().filter(|e| !e.deleted).and_then(conflict_copy) {
                            if let Some(moved) = self.place_copy(moved)? {
                                batch.insert(moved.path.clone(), moved);
                            }
                        }
                        batch.insert(ancestor.clone(), self.dir_record(ancestor, &base, 0o755, mtime));
                    }
                }
            }
            batch.insert(record.path.clone(), record);
        }
        if batch.is_empty() {
            return Ok(true);
        }
        // Parents first, so the store never sees a child before its directory.
        let mut ordered: Vec<FileRecord> = batch.into_values().collect();
        ordered.sort_by_key(|r| (r.path.depth(), r.path.clone()));
        let mut changes = Vec::with_capacity(ordered.len());
        for record in &ordered {
            let before = self.storage.record(&record.path)?.filter(|r| !r.deleted).map(|r| r.kind);
            let after = (!record.deleted).then_some(record.kind);
            changes.push(Change { path: record.path.clone(), before, after });
        }
        let installed: Vec<(SyncPath, psync_base::VersionVector)> =
            ordered.iter().map(|r| (r.path.clone(), r.vv.clone())).collect();
        if !self.storage.install(ordered, decided_on)? {
            return Ok(false);
        }
        // Versions still waiting for blocks that what we installed has seen
        // are obsolete: drop them now, or one could land later, after the
        // record that superseded it was garbage-collected, and come back to life.
        let mut obsolete = Vec::new();
        for (path, vv) in &installed {
            if let Some(waiting) = self.pending.get_mut(path) {
                let (gone, kept): (Vec<Pending>, Vec<Pending>) = waiting.drain(..).partition(|w| {
                    matches!(w.record.vv.compare(vv), psync_base::Causality::Dominated | psync_base::Causality::Equal)
                });
                *waiting = kept;
                obsolete.extend(gone);
                if waiting.is_empty() {
                    self.pending.remove(path);
                }
            }
        }
        for gone in obsolete {
            self.release_origin(gone.origin)?;
        }
        self.outputs.push_back(Output::Installed(changes));
        self.schedule_announce();
        Ok(true)
    }

    fn on_block(&mut self, peer: DeviceId, hash: ContentHash, data: Option<Vec<u8>>) -> Result<(), SyncError> {
        let asked_here = self.wants.get(&hash).is_some_and(|w| w.asked.is_some_and(|(p, _)| p == peer));
        if asked_here {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.in_flight = p.in_flight.saturating_sub(1);
            }
        }
        let Some(want) = self.wants.get_mut(&hash) else { return Ok(()) };
        let good = data.as_ref().filter(|d| d.len() as u64 <= BLOCK_SIZE && ContentHash::of(d) == hash);
        let Some(data) = good.cloned() else {
            // Missing or corrupt: never stored; ask someone else.
            want.refused.insert(peer);
            if want.asked.is_some_and(|(p, _)| p == peer) {
                want.asked = None;
            }
            if data.is_some() {
                self.violation(peer, format!("block {hash} does not match its hash"));
            }
            return Ok(());
        };
        self.storage.put_block(hash, data)?;
        self.wants.remove(&hash);
        self.complete_pending()
    }

    /// Finalizes every pending record whose blocks are all present.
    fn complete_pending(&mut self) -> Result<(), SyncError> {
        let mut ready = Vec::new();
        for (path, waiting) in &self.pending {
            for (i, w) in waiting.iter().enumerate() {
                let mut complete = true;
                for hash in w.record.needed_blocks() {
                    if self.wants.contains_key(&hash) || !self.storage.has_block(&hash)? {
                        complete = false;
                        break;
                    }
                }
                if complete {
                    ready.push((path.clone(), i));
                }
            }
        }
        let mut done = Vec::new();
        for (path, i) in ready.into_iter().rev() {
            if let Some(waiting) = self.pending.get_mut(&path) {
                if i < waiting.len() {
                    done.push(waiting.remove(i));
                }
                if waiting.is_empty() {
                    self.pending.remove(&path);
                }
            }
        }
        for p in done {
            self.finalize(p.record)?;
            self.release_origin(p.origin)?;
        }
        Ok(())
    }

    fn on_heartbeat(&mut self, peer: DeviceId, root: ContentHash, seq: u64) -> Result<(), SyncError> {
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        p.their_seq = p.their_seq.max(seq);
        if seq > p.received {
            // The tail of their index never arrived (lost update): ask again.
            self.request_index(peer);
            return Ok(());
        }
        let caught_up = self.pending.is_empty() && p.sent_upto.is_some_and(|s| s >= self.storage.seq());
        let due = self.now >= p.tree_sync_after;
        if caught_up && due && root != self.root()? {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.tree_sync_after = self.now + 3 * self.config.heartbeat_ms;
            }
            self.send(peer, Message::TreeRequest { prefix: None });
        }
        Ok(())
    }

    fn on_tree_response(
        &mut self,
        peer: DeviceId,
        prefix: Option<SyncPath>,
        theirs: Vec<TreeEntry>,
    ) -> Result<(), SyncError> {
        let ours: BTreeMap<String, TreeEntry> =
            self.tree()?.children(prefix.as_ref()).into_iter().map(|e| (e.name.clone(), e)).collect();
        let theirs: BTreeMap<String, TreeEntry> = theirs.into_iter().map(|e| (e.name.clone(), e)).collect();
        let mut request = Vec::new();
        let mut push = Vec::new();
        let names: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
        for name in names {
            let path = match &prefix {
                None => SyncPath::new(name),
                Some(p) => p.join(name),
            };
            let Ok(path) = path else {
                self.violation(peer, "bad name in tree response");
                return Ok(());
            };
            match (ours.get(name), theirs.get(name)) {
                (Some(a), Some(b)) if a.hash == b.hash => {}
                (Some(a), Some(b)) => {
                    if a.has_children || b.has_children {
                        self.send(peer, Message::TreeRequest { prefix: Some(path.clone()) });
                    }
                    request.push(path.clone());
                    push.extend(self.storage.record(&path)?.filter(|r| !r.deleted));
                }
                (Some(_), None) => {
                    for r in self.storage.live_records()? {
                        if r.path.is_within(&path) {
                            push.push(r);
                        }
                    }
                }
                (None, Some(b)) => {
                    if b.has_children {
                        self.send(peer, Message::TreeRequest { prefix: Some(path.clone()) });
                    }
                    request.push(path);
                }
                (None, None) => {}
            }
        }
        for chunk in request.chunks(MAX_RECORDS_PER_UPDATE) {
            self.send(peer, Message::RecordRequest { paths: chunk.to_vec() });
        }
        for chunk in push.chunks(MAX_RECORDS_PER_UPDATE) {
            self.send(peer, Message::Records { records: chunk.to_vec() });
        }
        Ok(())
    }

    // ---- time ------------------------------------------------------------------

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) -> Result<(), SyncError> {
        self.now = self.now.max(now);
        let due: Vec<(DeviceId, u64)> = self
            .peers
            .iter()
            .filter_map(|(d, p)| p.reply_at.filter(|(t, _)| *t <= self.now).map(|(_, since)| (*d, since)))
            .collect();
        for (peer, since) in due {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.reply_at = None;
            }
            self.stream_index(peer, since)?;
        }
        if self.announce_at.is_some_and(|t| t <= self.now) {
            self.announce_at = None;
            let seq = self.storage.seq();
            let behind: Vec<(DeviceId, u64)> =
                self.peers.iter().filter_map(|(d, p)| p.sent_upto.filter(|s| *s < seq).map(|s| (*d, s))).collect();
            for (peer, from) in behind {
                self.stream_index(peer, from)?;
            }
        }
        if self.next_heartbeat <= self.now {
            self.next_heartbeat = self.now + self.config.heartbeat_ms;
            self.retry_held()?;
            let root = self.root()?;
            let seq = self.storage.seq();
            let timeout = self.config.peer_timeout_ms;
            let now = self.now;
            let mut inactive = Vec::new();
            let mut beat = Vec::new();
            for (d, p) in self.peers.iter_mut() {
                if p.hello {
                    beat.push(*d);
                }
                if !p.inactive && now > p.last_heard + timeout {
                    p.inactive = true;
                    inactive.push(*d);
                }
            }
            for d in beat {
                self.send(d, Message::Heartbeat { root, seq });
            }
            // A peer that never asked for our index has not seen our hello
            // (lost on the way): say it again.
            let unasked: Vec<DeviceId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.sent_upto.is_none() && p.reply_at.is_none())
                .map(|(d, _)| *d)
                .collect();
            let index_id = self.storage.index_id();
            for d in unasked {
                self.send(d, Message::Hello { protocol: PROTOCOL_VERSION, index_id, seq });
            }
            for d in inactive {
                self.outputs.push_back(Output::Inactive(d));
            }
        }
        for want in self.wants.values_mut() {
            if let Some((peer, deadline)) = want.asked {
                if deadline <= self.now {
                    want.asked = None;
                    // Try another source next time, if there is one.
                    if want.sources.len() > 1 {
                        want.sources.retain(|s| *s != peer);
                        want.sources.push(peer);
                    }
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.in_flight = p.in_flight.saturating_sub(1);
                    }
                }
            }
        }
        if self.next_gc <= self.now {
            self.next_gc = self.now + self.config.gc_interval_ms;
            self.collect_tombstones()?;
        }
        self.pump()
    }

    /// Sends our index from `from` to the current sequence number.
    fn stream_index(&mut self, peer: DeviceId, mut from: u64) -> Result<(), SyncError> {
        let seq = self.storage.seq();
        let index_id = self.storage.index_id();
        loop {
            let mut records = self.storage.records_since(from, MAX_RECORDS_PER_UPDATE)?;
            let to = if records.len() < MAX_RECORDS_PER_UPDATE { seq } else { records.last().map_or(seq, |(s, _)| *s) };
            // What the peer sent us itself is left out; the range still
            // covers it, so its accounting of our index is unchanged.
            if let Some(p) = self.peers.get_mut(&peer) {
                records.retain(|(_, r)| p.sent_us.remove(&r.path).is_none_or(|vv| vv != r.vv));
            }
            self.send(peer, Message::IndexUpdate { index_id, from, to, records });
            from = to;
            if from >= seq {
                break;
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.sent_upto = Some(seq);
        }
        Ok(())
    }

    /// Drops tombstones every other device of the group has acknowledged and
    /// that are old enough.
    fn collect_tombstones(&mut self) -> Result<(), SyncError> {
        let now_secs = (self.now / 1000) as i64;
        let others: Vec<DeviceId> = self.config.group.iter().copied().filter(|d| *d != self.device).collect();
        let mut acked = Vec::new();
        for d in &others {
            acked.push(self.storage.peer_state(d)?.acked);
        }
        let min_acked = acked.into_iter().min().unwrap_or(u64::MAX);
        let old_enough = |t: &FileRecord| t.mtime.saturating_add(self.config.tombstone_min_age_secs) <= now_secs;
        let doomed: Vec<SyncPath> = self
            .storage
            .tombstones()?
            .into_iter()
            // A conflict copy is synthesized with a fixed history, so a device
            // resolving the same old conflict late would recreate it exactly:
            // its tombstone (rare, small) is kept so a deleted copy stays deleted.
            .filter(|(seq, t)| *seq <= min_acked && old_enough(t) && !is_conflict_copy(&t.path))
            .map(|(_, t)| t.path)
            .collect();
        if !doomed.is_empty() {
            self.storage.drop_tombstones(&doomed)?;
        }
        Ok(())
    }

    /// Sends what the windows and rate limits allow: block requests and
    /// queued block responses.
    fn pump(&mut self) -> Result<(), SyncError> {
        while let Some((peer, hash)) = self.upload_queue.front().copied() {
            if !self.peers.contains_key(&peer) {
                self.upload_queue.pop_front();
                continue;
            }
            let data = self.storage.block(&hash)?;
            let cost = data.as_ref().map_or(0, |d| d.len() as u64);
            if !self.upload.take(self.now, cost) {
                break;
            }
            self.upload_queue.pop_front();
            self.send(peer, Message::BlockResponse { hash, data });
        }
        let window = self.config.blocks_in_flight;
        let deadline = self.now + self.config.block_timeout_ms;
        let mut requests = Vec::new();
        // Request slots open across peers: once they are used up no other
        // want can be asked, so the walk stops (else every message would
        // walk every wanted block: quadratic in a large file's blocks).
        let mut free: usize = self.peers.values().filter(|p| p.hello).map(|p| window.saturating_sub(p.in_flight)).sum();
        for (hash, want) in self.wants.iter_mut() {
            if free == 0 {
                break;
            }
            if want.asked.is_some() {
                continue;
            }
            // Announced sources first, then any peer; skip peers that said
            // no, until every connected peer has (then start a new round).
            let usable = |s: &&DeviceId, refused: &BTreeSet<DeviceId>| {
                !refused.contains(*s) && self.peers.get(*s).is_some_and(|p| p.hello && p.in_flight < window)
            };
            if self.peers.keys().all(|p| want.refused.contains(p)) {
                want.refused.clear();
            }
            let source = want.sources.iter().chain(self.peers.keys()).find(|s| usable(s, &want.refused)).copied();
            let Some(source) = source else { continue };
            if !self.download.take(self.now, BLOCK_SIZE) {
                break;
            }
            if let Some(p) = self.peers.get_mut(&source) {
                p.in_flight += 1;
            }
            want.asked = Some((source, deadline));
            requests.push((source, *hash));
            free -= 1;
        }
        for (peer, hash) in requests {
            self.ask_deadlines.push_back((deadline, hash));
            self.send(peer, Message::BlockRequest { hash });
        }
        while let Some((deadline, hash)) = self.ask_deadlines.front() {
            if self.asked_until(hash, *deadline) {
                break;
            }
            self.ask_deadlines.pop_front();
        }
        Ok(())
    }

    /// Whether `hash` is still asked for with this deadline.
    fn asked_until(&self, hash: &ContentHash, deadline: Millis) -> bool {
        self.wants.get(hash).and_then(|w| w.asked).is_some_and(|(_, d)| d == deadline)
    }
}

/// Structural checks on a record from a peer.
fn check_record(r: &FileRecord) -> Result<(), String> {
    let expected_blocks = if r.kind == RecordKind::File && !r.deleted { r.size.div_ceil(BLOCK_SIZE) } else { 0 };
    if r.blocks.len() as u64 != expected_blocks {
        return Err(format!("{}: {} blocks for {} bytes", r.path, r.blocks.len(), r.size));
    }
    if r.version.counter > r.vv.get(&r.version.device) {
        return Err(format!("{}: version id not in its history", r.path));
    }
    if r.symlink.len() > 4096 {
        return Err(format!("{}: symlink target too long", r.path));
    }
    Ok(())
}
