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

use psync_base::{Causality, ContentHash, DeviceId, VersionVector, BLOCK_SIZE};

use crate::fetch::{Added, Arrival, Fetch, Slots};
use crate::holds::{HeldVersion, HoldReason, Holds, Origin};
use crate::limits::*;
use crate::message::{Message, TreeEntry, PROTOCOL_VERSION};
use crate::patch::Patch;
use crate::path::SyncPath;
use crate::readonly::OwnChanges;
use crate::record::{is_conflict_copy, resolve, FileRecord, RecordKind, Resolution};
use crate::storage::{InstallOutcome, PeerState, StorageError, SyncStorage};
use crate::tree::LiveTree;
use peer::{Peer, TokenBucket, Version};
use timers::{Debounce, Timer, Timers};

mod antientropy;
mod gc;
mod ignored;
mod install;
mod merge;
mod peer;
mod plan;
mod relayed;
mod revert;
mod session;
mod timers;
mod transfer;

pub use crate::Millis;

/// Tunables. Defaults follow the user's design doc.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Every device of the group, this one included (from the group log).
    /// Others are refused.
    pub group: Vec<DeviceId>,
    /// Devices whose changes are ignored ("safe mode"), by the role of the
    /// device that sends them.
    pub read_only: Vec<DeviceId>,
    /// After an update goes out, further local changes within this window
    /// go out as one update at its end (a lone change goes at once).
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
    /// A bundle this member left at the relay (signature and seal checked
    /// by the shell), taken in the writer's order.
    Relayed(DeviceId, crate::relay::RelayBundle),
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
    ignore: ignored::IgnoreState,
    /// On a read-only device, its own changes the group does not take.
    own: OwnChanges,
    outputs: VecDeque<Output>,
    timers: Timers,
    debounce: Debounce,
    upload: TokenBucket,
    download: TokenBucket,
    /// Where the next round of uploads starts (fairness between peers).
    upload_turn: Option<DeviceId>,
    disk_full_pauses: u32,
    /// Acknowledgements not yet [`ACK_SETTLE_MS`] old, per peer:
    /// (acknowledged before, acknowledged now, when), oldest first.
    unsettled_acks: BTreeMap<DeviceId, VecDeque<(u64, u64, Millis)>>,
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
            timers: {
                let mut timers = Timers::default();
                timers.set(Timer::Heartbeat, now + config.heartbeat_ms);
                timers.set(Timer::Gc, now + config.gc_interval_ms);
                timers
            },
            debounce: Debounce::default(),
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
            ignore: ignored::IgnoreState { stale: true, ..Default::default() },
            own: OwnChanges::default(),
            outputs: VecDeque::new(),
            upload,
            download,
            upload_turn: None,
            disk_full_pauses: 0,
            unsettled_acks: BTreeMap::new(),
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

    /// New debounce window and rate limits (`None`: unlimited), in force
    /// from `now` on, without a restart; the buckets start full.
    pub fn set_limits(&mut self, now: Millis, debounce_ms: u64, upload: Option<u64>, download: Option<u64>) {
        self.config.debounce_ms = debounce_ms;
        self.config.upload_bytes_per_sec = upload;
        self.config.download_bytes_per_sec = download;
        self.upload = TokenBucket::new(upload, now);
        self.download = TokenBucket::new(download, now);
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

    /// The objects (blocks, pages) that versions waiting or held here name:
    /// what garbage collection must keep though no file references them yet.
    pub fn objects_in_waiting(&self) -> Vec<ContentHash> {
        let mut out: Vec<ContentHash> =
            self.fetch.records().chain(self.holds.records()).flat_map(|r| r.named_objects()).collect();
        out.sort();
        out.dedup();
        out
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

    /// Whether installs are paused because the disk was full.
    pub fn disk_full(&self) -> bool {
        self.timers.is_armed(Timer::DiskFullPause)
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`SyncCore::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut next = self.timers.earliest();
        let mut consider = |t: Option<Millis>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
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
        if self.fetch.has_wants() && !self.timers.is_armed(Timer::DiskFullPause) {
            consider(self.download.ready_at(BLOCK_SIZE));
        }
        next
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
        let at = self.debounce.due(self.now, self.config.debounce_ms);
        self.timers.arm(Timer::Announce, at);
    }

    // ---- inputs ----------------------------------------------------------------

    /// Feeds one input.
    pub fn handle(&mut self, now: Millis, input: Input) -> Result<(), SyncError> {
        self.now = self.now.max(now);
        self.reload_ignore()?;
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
                self.ignore.stale = true;
                self.reload_ignore()?;
                self.schedule_announce();
                self.retry_holds(true)?;
            }
            Input::Congested(peer, congested) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.congested = congested;
                }
            }
            Input::Relayed(writer, bundle) => self.on_relayed(writer, bundle)?,
        }
        self.pump()
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
                        let pending = self.unsettled_acks.entry(peer).or_default();
                        pending.push_back((state.acked, seq, self.now));
                        if pending.len() > MAX_UNSETTLED_ACKS_PER_PEER {
                            pending.pop_front();
                        }
                        state.acked = seq;
                        self.storage.set_peer_state(&peer, state)?;
                    }
                }
            }
            Message::BlockRequest { hash } => self.queue_upload(peer, hash, None),
            Message::BlockRequestAgainst { hash, base } => self.queue_upload(peer, hash, Some(base)),
            Message::BlockResponse { hash, data } => self.on_object(peer, hash, data)?,
            Message::BlockPatch { hash, base, prefix, suffix, middle } => {
                self.on_patch(peer, hash, base, Patch { prefix, suffix, middle })?
            }
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
                        if self.ignored(&r) {
                            continue;
                        }
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

    // ---- time ------------------------------------------------------------------

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) -> Result<(), SyncError> {
        self.now = self.now.max(now);
        self.reload_ignore()?;
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
        if self.timers.take_due(Timer::Announce, self.now) {
            self.debounce.sent(self.now);
            for p in self.peers.values_mut() {
                if p.sent_upto.is_some() {
                    p.stream_until = p.stream_until.max(seq);
                }
            }
        }
        if self.timers.take_due(Timer::DiskFullPause, self.now) {
            // The pause is over: what it held is tried at once (if the disk
            // is still full, the first failure pauses again and the rest is
            // held again as it comes).
            for held in self.holds.take_disk_full() {
                self.finalize(Version { record: held.record, source: held.source, origins: held.origins })?;
            }
        }
        if self.timers.take_due(Timer::Heartbeat, self.now) {
            self.timers.set(Timer::Heartbeat, self.now + self.config.heartbeat_ms);
            self.heartbeat()?;
        }
        self.fetch.expire(self.now, self.config.block_timeout_ms);
        if self.timers.take_due(Timer::Gc, self.now) {
            self.timers.set(Timer::Gc, self.now + self.config.gc_interval_ms);
            self.collect_tombstones()?;
        }
        self.pump()
    }
}
