//! What the control socket speaks: one JSON request line in, one JSON
//! document out. `Status` is what `psync status --json` prints; fields are
//! only ever added.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::live::SignallingState;
use crate::net::path::LinkPath;

/// What `psync status --json` prints. Fields are only ever added.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// This device.
    pub device: DeviceStatus,
    /// The running daemon, if any.
    pub daemon: Option<DaemonStatus>,
    /// The signalling server, if this device belongs to a group.
    pub signalling: Option<SignallingStatus>,
    /// Every other device of the group.
    pub peers: Vec<PeerStatus>,
    /// What this device holds.
    pub local: LocalStatus,
    /// Conflict copies present (paths).
    pub conflicts: Vec<String>,
    /// The daemon's latest warnings and errors, as lines with the local
    /// time first (PSync's own; the libraries' stay in the log file).
    pub recent_errors: Vec<String>,
    /// The same, as records: when (ms since the epoch), level, message.
    #[serde(default)]
    pub recent_warnings: Vec<crate::live::Warning>,
    /// Relay storage, if this device uses it.
    #[serde(default)]
    pub relay: Option<crate::live::RelayLive>,
    /// The daemon's last pruning of history, if it ran.
    #[serde(default)]
    pub history: Option<crate::live::HistoryLive>,
    /// The latest changes to files, newest first: which device changed what.
    #[serde(default)]
    pub recent_changes: Vec<ChangeRow>,
}

/// One change in the feed of `psync status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRow {
    /// The local sequence number it has here.
    pub seq: u64,
    /// The path.
    pub path: String,
    /// A deletion.
    pub deleted: bool,
    /// The name of the device that made it (empty when unknown).
    pub device: String,
    /// Its id.
    pub device_id: String,
    /// Made on this device.
    pub this_device: bool,
    /// The file's modification time (seconds since the epoch).
    pub mtime: i64,
}

impl ChangeRow {
    /// Who made it, for people: the device's name, else the start of its id.
    pub fn who(&self) -> &str {
        if self.device.is_empty() {
            self.device_id.split('-').next().unwrap_or(&self.device_id)
        } else {
            &self.device
        }
    }

    /// `changed` or `deleted`.
    pub fn what(&self) -> &'static str {
        if self.deleted {
            "deleted"
        } else {
            "changed"
        }
    }
}

/// This device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Its name in the group (empty without an identity).
    pub name: String,
    /// Its id.
    pub id: String,
    /// The data dir.
    pub data_dir: PathBuf,
    /// Where it is mounted, if it is.
    pub mountpoint: Option<PathBuf>,
}

/// The daemon serving the mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Its process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Whether sync runs (it does not for a device without a group).
    pub syncing: bool,
    /// The settings in force (config file, flags).
    pub settings: crate::config::Settings,
}

/// The signalling server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignallingStatus {
    /// Its URL.
    pub server: String,
    /// Whether this device is logged in.
    pub connected: bool,
    /// Details of the connection state.
    pub state: SignallingState,
    /// A roster copy refused because it did not extend ours (a server or a
    /// device misbehaving), if any.
    #[serde(default)]
    pub roster_warning: Option<String>,
}

/// One other device of the group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: String,
    /// `full` or `read_only`.
    pub role: String,
    /// Online at the signalling server.
    pub online: bool,
    /// Whether this device has a sync link to it.
    pub connected: bool,
    /// How: `webrtc` when connected.
    pub connection: Option<String>,
    /// Which way: LAN, direct through NAT, or relayed (naming the relay),
    /// with the addresses at both ends.
    #[serde(default)]
    pub path: Option<LinkPath>,
    /// Seconds since it was last heard from over a link (this daemon run).
    pub last_seen_secs_ago: Option<u64>,
    /// Connected, and each side has applied everything the other announced.
    pub in_sync: bool,
    /// Its changes not yet applied here (records).
    pub incoming_records: u64,
    /// Our changes it has not acknowledged (records).
    pub outgoing_records: u64,
    /// Our latest sequence number it has acknowledged.
    pub acked_seq: u64,
    /// Round-trip time of the connection's ICE checks.
    pub rtt_ms: Option<f64>,
    /// Bytes sent to it over the current connection (UDP payload on the wire).
    pub bytes_sent: Option<u64>,
    /// Bytes received from it over the current connection.
    pub bytes_received: Option<u64>,
}

/// What this device holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LocalStatus {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Sum of file sizes.
    pub bytes: u64,
    /// The latest local sequence number.
    pub seq: u64,
    /// Records from peers waiting for blocks.
    pub waiting_records: usize,
    /// Blocks still to fetch.
    pub wanted_blocks: usize,
    /// Peers' versions that cannot be installed now (count).
    pub held_records: usize,
    /// Each held version with its reason (the first [`MAX_LISTED`]).
    #[serde(default)]
    pub held: Vec<HeldStatus>,
    /// Installs are paused because the disk filled up (they resume by themselves).
    #[serde(default)]
    pub disk_full: bool,
    /// Local paths that do not sync, with why (the first [`MAX_LISTED`]).
    #[serde(default)]
    pub local_only: Vec<LocalOnlyStatus>,
    /// The latest error sync reported and went on from.
    #[serde(default)]
    pub sync_error: Option<String>,
    /// This device is read-only in its group: its own changes stay here.
    #[serde(default)]
    pub read_only: bool,
    /// On a read-only device, paths holding its own changes (count);
    /// `psync revert` takes the group's version back.
    #[serde(default)]
    pub own_changes: usize,
    /// The first [`MAX_LISTED`] of them.
    #[serde(default)]
    pub own_changes_listed: Vec<String>,
}

/// Paths listed at most in each list of `psync status`.
pub const MAX_LISTED: usize = 100;

/// A peer's version held back here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldStatus {
    /// The path.
    pub path: String,
    /// Why it is held, in words.
    pub reason: String,
    /// `open_for_writing`, `changed_meanwhile`, `blocked`, `disk_full`, `storage_failed` or `refused`.
    pub kind: String,
    /// The device it came from.
    pub from: String,
    /// Seconds since it was first held.
    pub held_secs: u64,
    /// Attempts so far.
    pub attempts: u32,
}

/// A local path that does not sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalOnlyStatus {
    /// The path (not UTF-8 bytes are shown escaped).
    pub path: String,
    /// Why it does not sync.
    pub reason: String,
}

/// One request on the control socket.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Request {
    pub request: String,
    /// For `revert`: the paths (none: all); for `log` and `restore`: one.
    #[serde(default)]
    pub paths: Vec<String>,
    /// For `restore`: the version to bring back.
    #[serde(default)]
    pub version: Option<u64>,
    /// For `log`: deleted files (below the path, if one is given).
    #[serde(default)]
    pub deleted: bool,
    /// For `settings`: what to change (nothing: only answer).
    #[serde(default)]
    pub limits: Option<crate::config_edit::LimitChange>,
}

/// What `psync settings --json` prints: the settings in force, and the
/// config file a change was saved to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingsAnswer {
    /// The settings now in force.
    pub settings: crate::config::Settings,
    /// Where the change was saved (none when nothing changed).
    pub saved_to: Option<PathBuf>,
    /// Whether a running daemon took the change (else it applies at the next mount).
    pub applied_live: bool,
}

/// One version of a file, as `psync log --json` and `psync store log
/// --json` print it (fields are only ever added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRow {
    /// The version's number (give it to `restore --version`).
    pub version: u64,
    /// Its size (bytes).
    pub size: u64,
    /// When it was committed (seconds since the epoch, UTC).
    pub committed_at: i64,
    /// Its path then.
    pub path: String,
    /// Whether it is the file's current version.
    pub current: bool,
}

/// The ignore rules in force, as `psync ignore --list --json` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoreList {
    /// Defaults first, then `.psyncignore`'s lines; a later rule wins.
    pub rules: Vec<IgnoreRow>,
    /// Lines left out, or why the file could not be read.
    pub problems: Vec<String>,
}

/// One ignore rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoreRow {
    /// The pattern (gitignore syntax).
    pub pattern: String,
    /// `built in` or `.psyncignore:LINE`.
    pub from: String,
    /// Why a built-in rule is there.
    pub why: Option<String>,
}

/// The answer to one request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
    Status(Box<Status>),
    Reverted(usize),
    /// A file's versions, oldest first.
    Versions(Vec<VersionRow>),
    /// Restored: the file's new version.
    Restored(u64),
    /// The ignore rules in force.
    Ignore(IgnoreList),
    /// The settings after a change.
    Settings(Box<SettingsAnswer>),
    /// The request was carried out.
    Done,
    Error(String),
}
