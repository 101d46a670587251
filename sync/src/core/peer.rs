//! What the core keeps per peer, a version on its way in, and the byte
//! budgets (token buckets).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use psync_base::{ContentHash, DeviceId, VersionVector, BLOCK_SIZE};

use super::Millis;
use crate::holds::Origin;
use crate::path::SyncPath;
use crate::record::FileRecord;

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) hello: bool,
    pub(super) index_id: u64,
    pub(super) their_seq: u64,
    /// Their records up to here were received in this session, contiguously.
    pub(super) received: u64,
    /// Their records up to here are decided here (persisted).
    pub(super) applied: u64,
    /// Our index streamed to them up to here (`None`: they never asked).
    pub(super) sent_upto: Option<u64>,
    /// Streaming to them is due up to here (their request, our announcement).
    pub(super) stream_until: u64,
    pub(super) reply_at: Option<(Millis, u64)>,
    pub(super) last_request_at: Option<Millis>,
    pub(super) last_heard: Millis,
    pub(super) inactive: bool,
    pub(super) tree_sync_after: Millis,
    /// Their sequence numbers whose records wait for blocks here.
    pub(super) pending_seqs: BTreeSet<u64>,
    /// Versions they sent on this connection: ours equal to one of these
    /// need not go back (a record's block list alone is 33 bytes a block).
    pub(super) sent_us: BTreeMap<SyncPath, VersionVector>,
    /// The shell cannot take more bulk frames for them now.
    pub(super) congested: bool,
    /// Their block requests (and the base each may be patched against),
    /// first come first served.
    pub(super) uploads: VecDeque<(ContentHash, Option<ContentHash>)>,
    /// Tree nodes we asked them for and have not had whole.
    pub(super) tree_asked: BTreeSet<Option<SyncPath>>,
    /// A tree walk with them is under way until then: records they push are
    /// expected.
    pub(super) walk_until: Millis,
    /// Replies nobody asked for, and tree requests, this heartbeat interval.
    pub(super) unrequested: usize,
    pub(super) tree_requests: usize,
    /// Tree requests we sent them this heartbeat interval (kept under half
    /// of what a peer answers, so a big walk never looks like a flood).
    pub(super) tree_requests_sent: usize,
}

impl Peer {
    pub(super) fn new(now: Millis) -> Peer {
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

    pub(super) fn has_stream_work(&self) -> bool {
        self.hello && !self.congested && self.sent_upto.is_some_and(|s| s < self.stream_until)
    }
}

/// A peer's version on its way to being installed, and where it came
/// from (its sequence numbers wait, unacknowledged, until it is decided).
#[derive(Debug)]
pub(super) struct Version {
    pub(super) record: FileRecord,
    pub(super) source: DeviceId,
    pub(super) origins: Vec<Origin>,
}

impl Version {
    pub(super) fn new(record: FileRecord, source: DeviceId, seq: Option<u64>) -> Version {
        Version { record, source, origins: seq.map(|s| (source, s)).into_iter().collect() }
    }
}

#[derive(Debug)]
pub(super) struct TokenBucket {
    pub(super) rate: Option<u64>,
    pub(super) tokens: f64,
    pub(super) at: Millis,
}

impl TokenBucket {
    pub(super) fn new(rate: Option<u64>, now: Millis) -> Self {
        Self { rate, tokens: rate.unwrap_or(0) as f64, at: now }
    }

    pub(super) fn refill(&mut self, now: Millis) {
        if let Some(rate) = self.rate {
            let elapsed = now.saturating_sub(self.at) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * rate as f64).min(rate.max(BLOCK_SIZE) as f64);
        }
        self.at = now;
    }

    pub(super) fn take(&mut self, now: Millis, bytes: u64) -> bool {
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
    pub(super) fn ready_at(&self, bytes: u64) -> Option<Millis> {
        let rate = self.rate?;
        let missing = (bytes as f64 - self.tokens).max(0.0);
        Some(self.at + (missing * 1000.0 / rate.max(1) as f64).ceil() as u64)
    }
}
