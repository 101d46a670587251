//! [`SyncCore`]: the deterministic replication state machine.
//!
//! Driving rule (as in str0m and quinn-proto): feed an input with
//! [`SyncCore::handle`] or [`SyncCore::handle_timeout`], then drain
//! [`SyncCore::poll_output`] until it returns `None`, then sleep until
//! [`SyncCore::poll_timeout`]. The core performs no I/O and reads no clock;
//! `now` is a monotonic millisecond count, passed in (the wall clock, for
//! tombstone ages and new directories' times, is derived from it; see
//! [`SyncCore::set_wall_clock`]). Its only effects are the outputs and the
//! calls on its [`SyncStorage`].
//!
//! The parts: the per-peer index session (here), fetching ([`crate::fetch`]),
//! held versions ([`crate::holds`]), the anti-entropy tree ([`crate::tree`]),
//! the rules ([`crate::record`]), the bounds ([`crate::limits`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use psync_base::{ContentHash, DeviceId, VersionVector, BLOCK_SIZE};

use crate::fetch::{Added, Arrival, Fetch, Slots};
use crate::holds::{HeldVersion, HoldReason, Holds, Origin};
use crate::limits::*;
use crate::message::{Message, TreeEntry, PROTOCOL_VERSION};
use crate::path::SyncPath;
use crate::readonly::OwnChanges;
use crate::record::{conflict_copy, is_conflict_copy, resolve, FileRecord, RecordKind, Resolution, VersionId};
use crate::storage::{InstallOutcome, PeerState, StorageError, SyncStorage};
use crate::tree::LiveTree;

/// Milliseconds (monotonic in the daemon; simulations may start anywhere).
pub type Millis = u64;

/// Tunables. Defaults follow the user's design doc.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Every device of the group, this one included (from the group log).
    /// Others are refused.
    pub group: Vec<DeviceId>,
    /// Devices whose changes are ignored ("safe mode"), by the role of the
    /// device that sends them.
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
    /// The shell's queue of frames to this peer is full (`true`) or has
    /// room again (`false`): bulk sending to it (blocks, index) waits.
    Congested(DeviceId, bool),
}

/// What the core asks of its shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this to that peer.
    Send(DeviceId, Message),
    /// These paths changed in the store because of peers (for the
    /// filesystem to show, e.g. to raise inotify events).
    Installed(Vec<Change>),
    /// Drop the connection to this peer, for this reason (it broke the
    /// protocol, went past a bound, or is no longer in the group).
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

/// What can go wrong in the core: the storage failed on something that is
/// not one path's business (reading its sequence number, a peer's state).
/// Nothing was half-applied; the shell logs it and goes on.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The storage failed.
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
    /// Our index streamed to them up to here (`None`: they never asked).
    sent_upto: Option<u64>,
    /// Streaming to them is due up to here (their request, our announcement).
    stream_until: u64,
    reply_at: Option<(Millis, u64)>,
    last_request_at: Option<Millis>,
    last_heard: Millis,
    inactive: bool,
    tree_sync_after: Millis,
    /// Their sequence numbers whose records wait for blocks here.
    pending_seqs: BTreeSet<u64>,
    /// Versions they sent on this connection: ours equal to one of these
    /// need not go back (a record's block list alone is 33 bytes a block).
    sent_us: BTreeMap<SyncPath, VersionVector>,
    /// The shell cannot take more bulk frames for them now.
    congested: bool,
    /// Their block requests, first come first served.
    uploads: VecDeque<ContentHash>,
    /// Tree nodes we asked them for and have not had whole.
    tree_asked: BTreeSet<Option<SyncPath>>,
    /// A tree walk with them is under way until then: records they push are
    /// expected.
    walk_until: Millis,
    /// Replies nobody asked for, and tree requests, this heartbeat interval.
    unrequested: usize,
    tree_requests: usize,
    /// Tree requests we sent them this heartbeat interval (kept under half
    /// of what a peer answers, so a big walk never looks like a flood).
    tree_requests_sent: usize,
}

impl Peer {
    fn new(now: Millis) -> Peer {
        Peer {
            hello: false,
            index_id: 0,
            their_seq: 0,
            received: 0,
            applied: 0,
            sent_upto: None,
            stream_until: 0,
            reply_at: None,
            last_request_at: None,
            last_heard: now,
            inactive: false,
            tree_sync_after: now,
            pending_seqs: BTreeSet::new(),
            sent_us: BTreeMap::new(),
            congested: false,
            uploads: VecDeque::new(),
            tree_asked: BTreeSet::new(),
            walk_until: 0,
            unrequested: 0,
            tree_requests: 0,
            tree_requests_sent: 0,
        }
    }

    fn has_stream_work(&self) -> bool {
        self.hello && !self.congested && self.sent_upto.is_some_and(|s| s < self.stream_until)
    }
}

/// A peer's version on its way to being installed, and where it came
/// from (its sequence numbers wait, unacknowledged, until it is decided).
#[derive(Debug)]
struct Version {
    record: FileRecord,
    source: DeviceId,
    origins: Vec<Origin>,
}

impl Version {
    fn new(record: FileRecord, source: DeviceId, seq: Option<u64>) -> Version {
        Version { record, source, origins: seq.map(|s| (source, s)).into_iter().collect() }
    }
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
    /// Wall-clock milliseconds minus `now`.
    wall_offset: i64,
    peers: BTreeMap<DeviceId, Peer>,
    fetch: Fetch,
    holds: Holds,
    tree: LiveTree,
    /// On a read-only device, its own changes the group does not take.
    own: OwnChanges,
    outputs: VecDeque<Output>,
    announce_at: Option<Millis>,
    next_heartbeat: Millis,
    next_gc: Millis,
    upload: TokenBucket,
    download: TokenBucket,
    /// Where the next round of uploads starts (fairness between peers).
    upload_turn: Option<DeviceId>,
    /// Installs and downloads wait until then: the disk was full.
    paused_until: Option<Millis>,
    disk_full_pauses: u32,
}

impl<S: SyncStorage> SyncCore<S> {
    /// A core over `storage`; `seed` drives its only randomness (reply
    /// jitter), so a simulation replays exactly. `now` is also taken as the
    /// wall clock until [`SyncCore::set_wall_clock`] says otherwise.
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
            wall_offset: 0,
            peers: BTreeMap::new(),
            fetch: Fetch::default(),
            holds: Holds::default(),
            tree: LiveTree::default(),
            own: OwnChanges::default(),
            outputs: VecDeque::new(),
            announce_at: None,
            upload,
            download,
            upload_turn: None,
            paused_until: None,
            disk_full_pauses: 0,
        }
    }

    /// Tells the core the wall clock (milliseconds since the Unix epoch).
    /// Only forward steps are taken (a suspended machine wakes later): a
    /// clock set back never makes the core's sense of time run backwards.
    pub fn set_wall_clock(&mut self, wall_ms: Millis) {
        let offset = wall_ms as i64 - self.now as i64;
        if offset > self.wall_offset || self.wall_offset == 0 {
            self.wall_offset = offset;
        }
    }

    fn wall_secs(&self) -> i64 {
        (self.now as i64 + self.wall_offset) / 1000
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
        self.fetch.pending_count()
    }

    /// A readable account of what is waiting (for diagnostics).
    pub fn waiting(&self) -> Vec<String> {
        let mut out = self.fetch.describe();
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

    /// The roster changed: the group's devices and the read-only ones.
    /// Links to devices no longer in the group are dropped at once, and
    /// what they (or devices now read-only) sent and is not installed yet
    /// is forgotten.
    pub fn set_group(&mut self, devices: Vec<DeviceId>, read_only: Vec<DeviceId>) {
        self.config.group = devices;
        self.config.read_only = read_only;
        let gone: Vec<DeviceId> = self.peers.keys().copied().filter(|d| !self.config.group.contains(d)).collect();
        for peer in gone {
            self.forget_peer(peer);
            self.violation(peer, "the device is no longer in the group");
        }
        let untrusted: Vec<DeviceId> = self
            .fetch_sources()
            .into_iter()
            .filter(|d| !self.config.group.contains(d) || self.config.read_only.contains(d))
            .collect();
        for peer in untrusted {
            self.fetch.drop_source(peer);
            self.holds.drop_source(&peer);
        }
    }

    /// Every device something here came from (pending or held versions).
    fn fetch_sources(&self) -> Vec<DeviceId> {
        let mut out = self.fetch.sources();
        out.extend(self.holds.sources());
        out.sort();
        out.dedup();
        out
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

    /// Blocks (and pages) this device still has to fetch.
    pub fn wanted_blocks(&self) -> usize {
        self.fetch.wanted()
    }

    /// Versions held because they cannot be installed now.
    pub fn held_count(&self) -> usize {
        self.holds.count()
    }

    /// The held versions, each with its reason.
    pub fn held(&self) -> Vec<HeldVersion> {
        self.holds.list()
    }

    /// Whether this device is read-only in its group (its own changes stay here).
    pub fn is_read_only(&self) -> bool {
        self.config.read_only.contains(&self.device)
    }

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
                let (vv, version) = self.own_version(&local.vv);
                let gone = FileRecord {
                    deleted: true,
                    vv,
                    version,
                    size: 0,
                    blocks: Default::default(),
                    symlink: Vec::new(),
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
    fn take_reverted(&mut self, record: FileRecord) -> Result<(), SyncError> {
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

    /// Whether installs are paused because the disk was full.
    pub fn disk_full(&self) -> bool {
        self.paused_until.is_some()
    }

    /// The Merkle root of the live records.
    pub fn root(&mut self) -> Result<ContentHash, SyncError> {
        self.tree.refresh(&self.storage)?;
        Ok(self.tree.root())
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
        consider(self.paused_until);
        consider(self.fetch.next_deadline());
        for peer in self.peers.values() {
            consider(peer.reply_at.map(|(t, _)| t));
            if peer.has_stream_work() {
                consider(Some(self.now));
            }
            if !peer.uploads.is_empty() && !peer.congested {
                consider(self.upload.ready_at(BLOCK_SIZE));
            }
        }
        if self.fetch.has_wants() && self.paused_until.is_none() {
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

    fn violation(&mut self, peer: DeviceId, what: impl Into<String>) {
        self.outputs.push_back(Output::Violation(peer, what.into()));
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
            Input::Connected(peer) if peer == self.device => {}
            Input::Connected(peer) if !self.config.group.contains(&peer) => {
                self.violation(peer, "not a member of the group");
            }
            Input::Connected(peer) => {
                self.peers.insert(peer, Peer::new(self.now));
                let hello = Message::Hello {
                    protocol: PROTOCOL_VERSION,
                    index_id: self.storage.index_id(),
                    seq: self.storage.seq(),
                };
                self.send(peer, hello);
            }
            Input::Disconnected(peer) => self.forget_peer(peer),
            Input::Message(peer, message) => {
                let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
                p.last_heard = self.now;
                p.inactive = false;
                self.on_message(peer, message)?;
            }
            Input::LocalChanged => {
                self.schedule_announce();
                self.retry_holds(true)?;
            }
            Input::Congested(peer, congested) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.congested = congested;
                }
            }
        }
        self.pump()
    }

    fn forget_peer(&mut self, peer: DeviceId) {
        self.peers.remove(&peer);
        // Its requests go elsewhere; it stays a source for when it is back.
        self.fetch.disconnected(peer);
    }

    /// A reply nobody asked for; past the bound the peer is dropped.
    fn unrequested(&mut self, peer: DeviceId, what: &str) {
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
                let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
                p.uploads.push_back(hash);
                if p.uploads.len() > MAX_QUEUED_UPLOADS_PER_PEER {
                    self.forget_peer(peer);
                    self.violation(peer, format!("more than {MAX_QUEUED_UPLOADS_PER_PEER} block requests queued"));
                }
            }
            Message::BlockResponse { hash, data } => self.on_object(peer, hash, data)?,
            Message::Heartbeat { root, seq } => self.on_heartbeat(peer, root, seq)?,
            Message::TreeRequest { prefix } => self.answer_tree(peer, prefix)?,
            Message::TreeResponse { prefix, after, entries, complete } => {
                let asked = self.peers.get(&peer).is_some_and(|p| p.tree_asked.contains(&prefix));
                if !asked {
                    self.unrequested(peer, "tree");
                    return Ok(());
                }
                if complete {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.tree_asked.remove(&prefix);
                    }
                }
                self.on_tree_response(peer, prefix, after, entries, complete)?;
            }
            Message::RecordRequest { paths } => {
                if paths.len() > MAX_PATHS_PER_RECORD_REQUEST {
                    self.forget_peer(peer);
                    self.violation(
                        peer,
                        format!("a record request for more than {MAX_PATHS_PER_RECORD_REQUEST} paths"),
                    );
                    return Ok(());
                }
                let mut records = Vec::new();
                for path in &paths {
                    // A path we cannot read now is simply not answered.
                    if let Ok(Some(r)) = self.storage.record(path) {
                        records.push(r);
                    }
                }
                self.send_records(peer, records);
                self.walking_with(peer);
            }
            Message::Records { records } => {
                let expected = self.peers.get(&peer).is_some_and(|p| p.walk_until >= self.now);
                if !expected {
                    self.unrequested(peer, "records");
                    return Ok(());
                }
                if self.over_capacity(&peer) {
                    // Taken again at a later walk, once what waits has drained.
                    return Ok(());
                }
                let from_full = !self.config.read_only.contains(&peer);
                for record in records {
                    if from_full && self.own.reverting.contains(&record.path) && record.check().is_ok() {
                        self.take_reverted(record)?;
                    } else {
                        self.take_record(peer, record, None)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_hello(&mut self, peer: DeviceId, protocol: u32, index_id: u64, seq: u64) -> Result<(), SyncError> {
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

    /// Whether `peer` has as much waiting here as it may: its further index
    /// is not taken until that drains (asked for again then).
    fn over_capacity(&self, peer: &DeviceId) -> bool {
        let load = self.fetch.load(peer);
        load.records >= MAX_PENDING_RECORDS_PER_PEER || load.hashes >= MAX_PENDING_HASHES_PER_PEER
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

    /// One record from `peer`: checked, then taken unless the peer is
    /// read-only. A malformed record is refused on its own (held with the
    /// reason); the peer's other records still count.
    fn take_record(&mut self, peer: DeviceId, record: FileRecord, seq: Option<u64>) -> Result<(), SyncError> {
        if self.config.read_only.contains(&peer) {
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
    fn hold(&mut self, version: Version, reason: HoldReason) -> Result<(), SyncError> {
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
    fn receive_record(&mut self, record: FileRecord, source: DeviceId, seq: Option<u64>) -> Result<(), SyncError> {
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
    fn storage_failed(&mut self, version: Version, error: StorageError) -> Result<(), SyncError> {
        let reason = match error {
            StorageError::DiskFull => {
                self.pause_for_full_disk();
                HoldReason::DiskFull
            }
            StorageError::Failed(why) => HoldReason::StorageFailed(why),
        };
        self.hold(version, reason)
    }

    fn pause_for_full_disk(&mut self) {
        let pause = backoff(FIRST_DISK_FULL_PAUSE_MS, MAX_DISK_FULL_PAUSE_MS, self.disk_full_pauses);
        self.disk_full_pauses = self.disk_full_pauses.saturating_add(1);
        self.paused_until = Some(self.now + pause);
    }

    fn release_origin(&mut self, source: DeviceId, origin: Option<u64>) -> Result<(), SyncError> {
        match origin {
            Some(seq) => self.release_origins(vec![(source, seq)]),
            None => Ok(()),
        }
    }

    /// These versions are decided here: their peers may count them applied.
    fn release_origins(&mut self, origins: Vec<Origin>) -> Result<(), SyncError> {
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
    fn finalize(&mut self, version: Version) -> Result<(), SyncError> {
        if self.paused_until.is_some() {
            return self.hold(version, HoldReason::DiskFull);
        }
        let record = &version.record;
        let local = match self.storage.record(&record.path) {
            Ok(local) => local,
            Err(e) => return self.storage_failed(version, e),
        };
        let records = match self.decide(local.as_ref(), record) {
            Resolution::Keep => return self.release_origins(version.origins),
            Resolution::Take => vec![record.clone()],
            Resolution::Conflict { merged, copy } => {
                let mut out = vec![*merged];
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
    fn retry_holds(&mut self, local_change: bool) -> Result<(), SyncError> {
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
    fn decide(&self, local: Option<&FileRecord>, incoming: &FileRecord) -> Resolution {
        match local {
            Some(local) if self.is_read_only() && local.vv == incoming.vv && local != incoming => Resolution::Take,
            _ => resolve(local, incoming),
        }
    }

    /// A conflict copy is a record like any other: it is placed only if it
    /// is news at its path (a user may have deleted or edited that copy
    /// already, and a late device resolving the same conflict must not
    /// bring it back).
    fn place_copy(&self, copy: FileRecord) -> Result<Option<FileRecord>, StorageError> {
        let existing = self.storage.record(&copy.path)?;
        Ok(match resolve(existing.as_ref(), &copy) {
            Resolution::Keep => None,
            Resolution::Take => Some(copy),
            Resolution::Conflict { merged, .. } => Some(*merged),
        })
    }

    /// The next version of `path` made by this device, over `base`.
    fn own_version(&self, base: &VersionVector) -> (VersionVector, VersionId) {
        let mut vv = base.clone();
        let counter = vv.advance(self.device, self.storage.seq() + 1);
        (vv, VersionId { device: self.device, counter })
    }

    fn dir_record(&self, path: SyncPath, base: &VersionVector, perm: u32, mtime: i64) -> FileRecord {
        let (vv, version) = self.own_version(base);
        FileRecord::dir(path, vv, version, perm, mtime)
    }

    /// The batch that installs `records` keeping the tree whole: a live
    /// record's parents are (re)created as directories; a directory is not
    /// deleted while it still has live children here (it is re-asserted
    /// instead). Parents come first, so the store never sees a child before
    /// its directory.
    fn plan_install(&self, records: Vec<FileRecord>) -> Result<Vec<FileRecord>, StorageError> {
        let mut batch: BTreeMap<SyncPath, FileRecord> = BTreeMap::new();
        let mtime = self.wall_secs();
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
        let mut ordered: Vec<FileRecord> = batch.into_values().collect();
        ordered.sort_by_key(|r| (r.path.depth(), r.path.clone()));
        Ok(ordered)
    }

    /// Installs a planned batch in one atomic step of the storage; then what
    /// it supersedes goes, and the change is announced and shown.
    fn apply_install(
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
        self.outputs.push_back(Output::Installed(changes));
        self.schedule_announce();
        Ok(InstallOutcome::Installed)
    }

    fn on_object(&mut self, peer: DeviceId, hash: ContentHash, data: Option<Vec<u8>>) -> Result<(), SyncError> {
        let had_data = data.is_some();
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
            Ok(Arrival::Stored(done)) => {
                for pending in done {
                    let version = Version::new(pending.record, pending.source, pending.origin);
                    match pending.invalid {
                        Some(why) => self.hold(version, HoldReason::Refused(why))?,
                        None => self.finalize(version)?,
                    }
                }
            }
            Err(StorageError::DiskFull) => {
                self.pause_for_full_disk();
                self.fetch.unask(&hash);
            }
            Err(StorageError::Failed(_)) => self.fetch.unask(&hash),
        }
        Ok(())
    }

    fn on_heartbeat(&mut self, peer: DeviceId, root: ContentHash, seq: u64) -> Result<(), SyncError> {
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

    fn walking_with(&mut self, peer: DeviceId) {
        let until = self.now + 3 * self.config.heartbeat_ms;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.walk_until = p.walk_until.max(until);
        }
    }

    fn ask_tree(&mut self, peer: DeviceId, prefix: Option<SyncPath>) {
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
    fn answer_tree(&mut self, peer: DeviceId, prefix: Option<SyncPath>) -> Result<(), SyncError> {
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
        p.tree_requests += 1;
        if p.tree_requests > MAX_TREE_REQUESTS_PER_HEARTBEAT {
            self.forget_peer(peer);
            self.violation(peer, format!("more than {MAX_TREE_REQUESTS_PER_HEARTBEAT} tree requests"));
            return Ok(());
        }
        self.tree.refresh(&self.storage)?;
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

    fn on_tree_response(
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
        self.tree.refresh(&self.storage)?;
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

    /// Sends records as `Records` frames bounded by count and bytes.
    fn send_records(&mut self, peer: DeviceId, records: Vec<FileRecord>) {
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

    // ---- time ------------------------------------------------------------------

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) -> Result<(), SyncError> {
        self.now = self.now.max(now);
        let seq = self.storage.seq();
        let now = self.now;
        for p in self.peers.values_mut() {
            if let Some((at, since)) = p.reply_at {
                if at <= now {
                    p.reply_at = None;
                    p.sent_upto = Some(since);
                    p.stream_until = p.stream_until.max(seq).max(since);
                }
            }
        }
        if self.announce_at.is_some_and(|t| t <= self.now) {
            self.announce_at = None;
            for p in self.peers.values_mut() {
                if p.sent_upto.is_some() {
                    p.stream_until = p.stream_until.max(seq);
                }
            }
        }
        if self.paused_until.is_some_and(|t| t <= self.now) {
            // The pause is over: what it held is tried at once (if the disk
            // is still full, the first failure pauses again and the rest is
            // held again as it comes).
            self.paused_until = None;
            for held in self.holds.take_disk_full() {
                self.finalize(Version { record: held.record, source: held.source, origins: held.origins })?;
            }
        }
        if self.next_heartbeat <= self.now {
            self.next_heartbeat = self.now + self.config.heartbeat_ms;
            self.heartbeat()?;
        }
        self.fetch.expire(self.now);
        if self.next_gc <= self.now {
            self.next_gc = self.now + self.config.gc_interval_ms;
            self.collect_tombstones()?;
        }
        self.pump()
    }

    fn heartbeat(&mut self) -> Result<(), SyncError> {
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

    /// Streams up to [`INDEX_FRAMES_PER_TURN`] frames of our index to
    /// `peer`, each bounded by count and bytes.
    fn stream_index(&mut self, peer: DeviceId) -> Result<(), SyncError> {
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
            let Some(p) = self.peers.get_mut(&peer) else { return Ok(()) };
            for (s, record) in fetched {
                // What the peer sent us itself is left out; the range still
                // covers it, so its accounting of our index is unchanged.
                let echo = p.sent_us.get(&record.path).is_some_and(|vv| *vv == record.vv);
                if echo {
                    p.sent_us.remove(&record.path);
                } else {
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

    /// Drops tombstones every other device of the group has acknowledged and
    /// that are old enough.
    fn collect_tombstones(&mut self) -> Result<(), SyncError> {
        let now_secs = self.wall_secs();
        let others: Vec<DeviceId> = self.config.group.iter().copied().filter(|d| *d != self.device).collect();
        let mut acked = Vec::new();
        for d in &others {
            acked.push(self.storage.peer_state(d)?.acked);
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
            self.tree.refresh(&self.storage)?;
            self.storage.drop_tombstones(&doomed)?;
        }
        Ok(())
    }

    /// Sends what the windows, rate limits and congestion allow: queued
    /// block responses (peers in turn), block requests, index frames.
    fn pump(&mut self) -> Result<(), SyncError> {
        self.pump_uploads();
        if self.paused_until.is_none() {
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
            for (peer, hash) in requests {
                self.send(peer, Message::BlockRequest { hash });
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
    fn pump_uploads(&mut self) {
        loop {
            let ready: Vec<DeviceId> =
                self.peers.iter().filter(|(_, p)| !p.uploads.is_empty() && !p.congested).map(|(d, _)| *d).collect();
            if ready.is_empty() {
                return;
            }
            let start = self.upload_turn.and_then(|t| ready.iter().position(|d| *d > t)).unwrap_or(0);
            let mut served = false;
            for peer in ready[start..].iter().chain(&ready[..start]).copied().collect::<Vec<_>>() {
                let Some(hash) = self.peers.get(&peer).and_then(|p| p.uploads.front().copied()) else { continue };
                let data = match self.storage.block(&hash) {
                    Ok(Some(data)) => Some(data),
                    Ok(None) => self.storage.page(&hash).ok().flatten(),
                    Err(_) => None,
                };
                let cost = data.as_ref().map_or(0, |d| d.len() as u64);
                if !self.upload.take(self.now, cost) {
                    return;
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.uploads.pop_front();
                }
                self.upload_turn = Some(peer);
                self.send(peer, Message::BlockResponse { hash, data });
                served = true;
            }
            if !served {
                return;
            }
        }
    }
}
