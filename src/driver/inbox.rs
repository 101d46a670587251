//! What the rest of the daemon tells the sync loop, and what it answers.

use std::collections::HashMap;

use psync_base::DeviceId;
use psync_sync::{HeldVersion, Millis, PeerProgress, SyncPath};

use crate::net::transport::{Link, LinkStats};

/// What the rest of the daemon tells the loop.
#[derive(Debug)]
pub enum Control {
    /// A link to this device passed the hello; it replaces any earlier one.
    Connected(DeviceId, Link),
    /// The filesystem committed a change.
    LocalChanged,
    /// The roster changed: the group's devices and the read-only ones.
    /// Links to devices no longer in it are dropped at once.
    Group { devices: Vec<DeviceId>, read_only: Vec<DeviceId> },
    /// `psync status` asks where sync stands.
    Status(std::sync::mpsc::Sender<SyncSnapshot>),
    /// A bundle a member left at the relay (checked and opened): taken as
    /// from that member; the answer says whether the core took it.
    Relayed(DeviceId, Box<psync_sync::relay::RelayBundle>, tokio::sync::oneshot::Sender<Result<(), String>>),
    /// `psync restore` changed these paths in the store while mounted (a
    /// file, and the folders an undelete made again): the mount shows them
    /// as it shows a peer's change, and peers are told.
    Restored(Vec<psync_sync::Change>),
    /// `psync revert`: on a read-only device, take the group's version of
    /// these paths (all of its own changes if empty); answers how many.
    Revert(Vec<SyncPath>, std::sync::mpsc::Sender<Result<usize, String>>),
    /// `psync settings`: a new debounce window and rate limits (bytes per
    /// second, `None`: unlimited), in force at once.
    SetLimits { debounce_ms: u64, upload: Option<u64>, download: Option<u64> },
    /// Run this (history pruning) between two steps of the core, given the
    /// objects its waiting and held versions name (garbage collection
    /// must keep them; no install or merge runs meanwhile).
    BetweenSteps(BetweenSteps),
}

/// Work the loop runs between two steps of the core (see [`Control::BetweenSteps`]).
pub struct BetweenSteps(pub Box<dyn FnOnce(Vec<psync_base::ContentHash>) + Send + Sync>);

impl std::fmt::Debug for BetweenSteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BetweenSteps")
    }
}

/// Where sync stands, for `psync status`.
#[derive(Debug, Clone, Default)]
pub struct SyncSnapshot {
    /// Every peer with a link, and how far each side is.
    pub peers: Vec<PeerProgress>,
    /// When each peer was last heard from, connected or not (this run; [`crate::clock::mono_ms`]).
    pub last_seen: HashMap<DeviceId, Millis>,
    /// Records waiting for blocks, from all peers.
    pub waiting_records: usize,
    /// Blocks still to fetch.
    pub wanted_blocks: usize,
    /// Peers' versions that cannot be installed now, each with its reason.
    pub held: Vec<HeldVersion>,
    /// Installs are paused because the disk filled up.
    pub disk_full: bool,
    /// Each current link's counters.
    pub links: HashMap<DeviceId, LinkStats>,
    /// The latest error the core reported, if any (sync went on).
    pub last_error: Option<String>,
    /// This device is read-only in its group.
    pub read_only: bool,
    /// On a read-only device, the paths holding its own changes, which the
    /// group does not take.
    pub own_changes: Vec<SyncPath>,
}
