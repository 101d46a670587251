//! `psync status`: what the daemon knows, served on a control socket in the
//! data dir (owner only; one request line in, one JSON document out), and
//! the command that reads it, or explains that no daemon runs and shows what
//! the data dir alone can tell.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use psync_base::DeviceId;
use psync_signal::{readable_id, Role, Roster};
use psync_store::Store;
use serde::{Deserialize, Serialize};

use crate::sync_loop::{mono_ms, wall_ms, Control, SyncSnapshot};

/// The control socket, in the data dir.
pub const SOCKET_FILE: &str = "control.sock";
/// Requests are one short line.
const MAX_REQUEST: u64 = 1024;
/// How long the sync loop may take to answer.
const SYNC_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Warnings and errors kept for `psync status`.
const RECENT_ERRORS: usize = 20;

/// The signalling connection as peering last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "why", rename_all = "snake_case")]
pub enum SignallingState {
    /// Not connected yet.
    #[default]
    Connecting,
    /// Logged in.
    Connected,
    /// The connection ended; the client is reconnecting.
    Lost(String),
    /// The server refused this device.
    Refused(String),
}

/// What peering and the sync loop share with the status socket.
#[derive(Debug, Default)]
pub struct Live {
    /// The signalling connection.
    pub signalling: SignallingState,
    /// Group devices the server says are online.
    pub online: BTreeSet<DeviceId>,
    /// Devices with an authenticated link in the sync loop.
    pub linked: BTreeSet<DeviceId>,
    /// The newest verified roster.
    pub roster: Option<Roster>,
    /// A roster from the server or a peer that was refused (shorter than
    /// ours, or forking from it), in words.
    pub roster_warning: Option<String>,
}

/// [`Live`] behind a lock that a panic elsewhere does not poison for us.
#[derive(Debug, Clone, Default)]
pub struct SharedLive(Arc<Mutex<Live>>);

impl SharedLive {
    /// Changes it.
    pub fn update<T>(&self, change: impl FnOnce(&mut Live) -> T) -> T {
        change(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads it.
    pub fn read<T>(&self, look: impl FnOnce(&Live) -> T) -> T {
        look(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A `tracing` layer that keeps the latest warnings and errors for `psync status`.
#[derive(Debug)]
pub struct RecentErrors;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.insert_str(0, &format!("{value:?} "));
                } else {
                    self.0.push_str(&format!("{}={value:?} ", field.name()));
                }
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let line = format!("{} {}", wall_ms() / 1000, fields.0.trim_end());
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(line);
    }
}

fn recent_errors() -> Vec<String> {
    RECENT.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
}

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
    /// The daemon's latest warnings and errors (seconds since the epoch first).
    pub recent_errors: Vec<String>,
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

fn held_status(held: &[psync_sync::HeldVersion]) -> Vec<HeldStatus> {
    use psync_sync::HoldReason::*;
    held.iter()
        .take(MAX_LISTED)
        .map(|h| HeldStatus {
            path: h.path.as_str().to_string(),
            reason: h.reason.to_string(),
            kind: match h.reason {
                OpenForWriting => "open_for_writing",
                ChangedMeanwhile => "changed_meanwhile",
                Blocked(_) => "blocked",
                DiskFull => "disk_full",
                StorageFailed(_) => "storage_failed",
                Refused(_) => "refused",
            }
            .into(),
            from: readable_id(&h.from),
            held_secs: mono_ms().saturating_sub(h.since) / 1000,
            attempts: h.attempts,
        })
        .collect()
}

fn local_only_status(store: &Store) -> Result<Vec<LocalOnlyStatus>> {
    Ok(store
        .local_only_paths(MAX_LISTED)?
        .into_iter()
        .map(|l| LocalOnlyStatus { path: String::from_utf8_lossy(&l.path).into_owned(), reason: l.reason })
        .collect())
}

/// Live conflict copies, from the sync index alone (no file is opened).
fn conflict_copies(store: &Store) -> Result<Vec<String>> {
    let marker = psync_sync::record::CONFLICT_MARKER.as_bytes();
    let paths = store.live_paths_where(|path| {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        name.windows(marker.len()).any(|w| w == marker)
    })?;
    Ok(paths.into_iter().map(|p| String::from_utf8_lossy(&p).into_owned()).collect())
}

/// Who this device is in its group.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: DeviceId,
    /// The signalling server.
    pub server: String,
}

/// What the daemon answers from.
#[derive(Debug)]
pub struct Source {
    /// The data dir.
    pub data_dir: PathBuf,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The open store.
    pub store: Arc<Store>,
    /// Present when the device belongs to a group.
    pub identity: Option<Identity>,
    /// Sync, when it runs.
    pub sync: Option<(SharedLive, tokio::sync::mpsc::Sender<Control>)>,
    /// When the daemon started.
    pub started: Instant,
    /// The settings it runs with.
    pub settings: crate::config::Settings,
}

impl Source {
    fn revert(&self, paths: &[String]) -> Result<usize> {
        let Some((_, control)) = &self.sync else {
            anyhow::bail!("this device does not sync (it belongs to no group)")
        };
        let paths = paths
            .iter()
            .map(|p| psync_sync::SyncPath::new(p.trim_matches('/')).map_err(|e| anyhow::anyhow!("{p:?}: {e}")))
            .collect::<Result<Vec<_>>>()?;
        let (tx, rx) = std::sync::mpsc::channel();
        control.blocking_send(Control::Revert(paths, tx)).context("the sync loop has stopped")?;
        rx.recv_timeout(SYNC_ANSWER_TIMEOUT).context("the sync loop did not answer")?.map_err(anyhow::Error::msg)
    }

    fn collect(&self) -> Result<Status> {
        let stats = self.store.tree_stats()?;
        let (live, snapshot) = match &self.sync {
            Some((live, control)) => {
                let (tx, rx) = std::sync::mpsc::channel();
                control.blocking_send(Control::Status(tx)).context("the sync loop has stopped")?;
                let snapshot = rx.recv_timeout(SYNC_ANSWER_TIMEOUT).context("the sync loop did not answer")?;
                (Some(live), snapshot)
            }
            None => (None, SyncSnapshot::default()),
        };
        let conflicts = conflict_copies(&self.store)?;
        let mut status = Status {
            device: DeviceStatus {
                name: self.identity.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
                id: readable_id(&self.store.device()),
                data_dir: self.data_dir.clone(),
                mountpoint: Some(self.mountpoint.clone()),
            },
            daemon: Some(DaemonStatus {
                pid: std::process::id(),
                uptime_secs: self.started.elapsed().as_secs(),
                syncing: self.sync.is_some(),
                settings: self.settings.clone(),
            }),
            signalling: None,
            peers: Vec::new(),
            local: LocalStatus {
                files: stats.files,
                dirs: stats.dirs,
                bytes: stats.logical_bytes,
                seq: stats.seq,
                waiting_records: snapshot.waiting_records,
                wanted_blocks: snapshot.wanted_blocks,
                held_records: snapshot.held.len(),
                held: held_status(&snapshot.held),
                disk_full: snapshot.disk_full,
                local_only: local_only_status(&self.store)?,
                sync_error: snapshot.last_error.clone(),
                read_only: snapshot.read_only,
                own_changes: snapshot.own_changes.len(),
                own_changes_listed: snapshot
                    .own_changes
                    .iter()
                    .take(MAX_LISTED)
                    .map(|p| p.as_str().to_string())
                    .collect(),
            },
            conflicts,
            recent_errors: recent_errors(),
        };
        if let (Some(identity), Some(live)) = (&self.identity, live) {
            live.read(|l| {
                status.signalling = Some(SignallingStatus {
                    server: identity.server.clone(),
                    connected: l.signalling == SignallingState::Connected,
                    state: l.signalling.clone(),
                    roster_warning: l.roster_warning.clone(),
                });
                if let Some(roster) = &l.roster {
                    status.peers = peers(roster, identity.id, |id| PeerLive {
                        online: l.online.contains(&id),
                        linked: l.linked.contains(&id),
                        // A held version is not applied yet: not in sync.
                        progress: snapshot.peers.iter().find(|p| p.device == id).cloned().map(|mut p| {
                            p.waiting_records += snapshot.held.iter().filter(|h| h.from == id).count();
                            p
                        }),
                        last_seen_secs_ago: snapshot.last_seen.get(&id).map(|t| mono_ms().saturating_sub(*t) / 1000),
                        link: snapshot.links.get(&id).copied(),
                    });
                }
            });
        }
        Ok(status)
    }
}

/// What the daemon knows of one peer right now.
#[derive(Debug, Default)]
struct PeerLive {
    online: bool,
    linked: bool,
    progress: Option<psync_sync::PeerProgress>,
    last_seen_secs_ago: Option<u64>,
    link: Option<crate::transport::LinkStats>,
}

/// One row per other active member; `state` says what is known of each.
fn peers(roster: &Roster, me: DeviceId, state: impl Fn(DeviceId) -> PeerLive) -> Vec<PeerStatus> {
    let mut rows = Vec::new();
    for member in roster.members().filter(|m| !m.removed) {
        let id = member.key.device_id();
        if id == me {
            continue;
        }
        let PeerLive { online, linked, progress, last_seen_secs_ago, link } = state(id);
        let connected = linked && progress.as_ref().is_some_and(|p| p.ready);
        rows.push(PeerStatus {
            name: member.name.clone(),
            id: readable_id(&id),
            role: match member.role {
                Role::Full => "full",
                Role::ReadOnly => "read_only",
            }
            .into(),
            online,
            connected,
            connection: connected.then(|| "webrtc".to_string()),
            last_seen_secs_ago,
            in_sync: connected && progress.as_ref().is_some_and(|p| p.in_sync()),
            incoming_records: progress.as_ref().map_or(0, |p| p.incoming()),
            outgoing_records: progress.as_ref().map_or(0, |p| p.outgoing()),
            acked_seq: progress.as_ref().map_or(0, |p| p.acked),
            rtt_ms: link.and_then(|l| l.rtt_ms).map(|ms| (ms * 100.0).round() / 100.0),
            bytes_sent: link.map(|l| l.bytes_sent),
            bytes_received: link.map(|l| l.bytes_received),
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    rows
}

/// Serves the control socket on its own thread until the process exits.
pub fn serve(source: Source) -> Result<()> {
    let path = source.data_dir.join(SOCKET_FILE);
    // A socket left by a killed daemon: nobody answers on it any more.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let uid = nix::unistd::getuid();
    std::thread::Builder::new().name("psync-control".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let allowed = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .is_ok_and(|cred| cred.uid() == uid.as_raw() || cred.uid() == 0);
            if !allowed {
                tracing::warn!("refused a control connection from another user");
                continue;
            }
            if let Err(e) = answer(&source, stream) {
                tracing::debug!("control request failed: {e:#}");
            }
        }
    })?;
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    request: String,
    /// For `revert`: the paths (none: all).
    #[serde(default)]
    paths: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Status(Box<Status>),
    Reverted(usize),
    Error(String),
}

fn answer(source: &Source, stream: UnixStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(r) if r.request == "status" => match source.collect() {
            Ok(status) => Answer::Status(Box::new(status)),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Ok(r) if r.request == "revert" => match source.revert(&r.paths) {
            Ok(n) => Answer::Reverted(n),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Ok(r) => Answer::Error(format!("unknown request {:?}", r.request)),
        Err(e) => Answer::Error(format!("malformed request: {e}")),
    };
    let mut stream = stream;
    serde_json::to_writer(&mut stream, &reply)?;
    stream.write_all(b"\n")?;
    Ok(())
}

/// Sends one request to the daemon serving `data_dir`; `None` when no daemon answers.
fn ask(data_dir: &Path, request: Request) -> Result<Option<Answer>> {
    let path = data_dir.join(SOCKET_FILE);
    let Ok(mut stream) = UnixStream::connect(&path) else { return Ok(None) };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    serde_json::to_writer(&mut stream, &request)?;
    stream.write_all(b"\n")?;
    let mut text = String::new();
    stream.take(64 << 20).read_to_string(&mut text).context("no answer from the daemon's control socket")?;
    match serde_json::from_str::<Answer>(&text).context("the daemon's answer is malformed")? {
        Answer::Error(e) => anyhow::bail!("the daemon could not answer: {e}"),
        answer => Ok(Some(answer)),
    }
}

/// Asks the daemon serving `data_dir` for its status; `None` when no daemon answers.
fn ask_daemon(data_dir: &Path) -> Result<Option<Status>> {
    match ask(data_dir, Request { request: "status".into(), paths: Vec::new() })? {
        Some(Answer::Status(status)) => Ok(Some(*status)),
        Some(_) => anyhow::bail!("the daemon answered something else than its status"),
        None => Ok(None),
    }
}

/// `psync revert [--all | PATH...]`: on a read-only device, takes the
/// group's version of its own changes back.
pub fn revert_command(data_dir: &Path, paths: Vec<String>, all: bool) -> Result<std::process::ExitCode> {
    if paths.is_empty() && !all {
        anyhow::bail!("name the paths to revert, or --all for every change made on this device");
    }
    let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    match ask(&data_dir, Request { request: "revert".into(), paths })? {
        Some(Answer::Reverted(n)) => {
            println!("taking the group's version of {n} paths back (their local versions stay in the history)");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Some(_) => anyhow::bail!("the daemon answered something else"),
        None => anyhow::bail!("no daemon serves {}: mount it first (`psync mount DIR`)", data_dir.display()),
    }
}

/// What the data dir alone says, with no daemon running.
fn offline_status(data_dir: &Path) -> Result<Status> {
    let store = if Store::exists(data_dir) {
        Some(Arc::new(match Store::open(data_dir) {
            // A daemon that holds the store but does not answer (starting, or stuck).
            Err(psync_store::StoreError::Locked(_)) => Store::open_read_only(data_dir)?,
            other => other?,
        }))
    } else {
        None
    };
    let local = match &store {
        Some(store) => {
            let s = store.tree_stats()?;
            LocalStatus {
                files: s.files,
                dirs: s.dirs,
                bytes: s.logical_bytes,
                seq: s.seq,
                local_only: local_only_status(store)?,
                ..LocalStatus::default()
            }
        }
        None => LocalStatus::default(),
    };
    let conflicts = match &store {
        Some(store) => conflict_copies(store)?,
        None => Vec::new(),
    };
    let setup = crate::group::sync_setup(data_dir)?;
    let device_id = match (&setup, &store) {
        (Some(s), _) => readable_id(&s.key.public().device_id()),
        (None, Some(store)) => readable_id(&store.device()),
        (None, None) => String::new(),
    };
    let mut status = Status {
        device: DeviceStatus {
            name: setup.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            id: device_id,
            data_dir: data_dir.to_path_buf(),
            mountpoint: None,
        },
        daemon: None,
        signalling: None,
        peers: Vec::new(),
        local,
        conflicts,
        recent_errors: Vec::new(),
    };
    if let Some(setup) = setup {
        status.signalling = Some(SignallingStatus {
            server: setup.server.clone(),
            connected: false,
            state: SignallingState::Lost("no daemon is running".into()),
            roster_warning: None,
        });
        status.peers = peers(&setup.roster, setup.key.public().device_id(), |_| PeerLive::default());
    }
    Ok(status)
}

/// `psync status [--json] [--watch]`.
pub fn command(data_dir: &Path, json: bool, watch: bool) -> Result<std::process::ExitCode> {
    let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    // The most blocks wanted since the current transfer began: the bar's 100%.
    let mut peak_wanted = 0usize;
    loop {
        let status = match ask_daemon(&data_dir)? {
            Some(status) => status,
            None => offline_status(&data_dir)?,
        };
        if json {
            println!(
                "{}",
                if watch { serde_json::to_string(&status)? } else { serde_json::to_string_pretty(&status)? }
            );
        } else {
            if watch {
                // Clear the screen and go home: a live view.
                print!("\x1b[2J\x1b[H");
            }
            peak_wanted = if status.local.wanted_blocks == 0 { 0 } else { peak_wanted.max(status.local.wanted_blocks) };
            print!("{}", render(&status, peak_wanted));
        }
        std::io::stdout().flush()?;
        if !watch {
            return Ok(std::process::ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A text bar for `done` of `total`.
fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 20;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!("[{}{}]", "#".repeat(filled as usize), "-".repeat((WIDTH - filled) as usize))
}

/// The first part of a readable device id.
fn short_id(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

fn render(s: &Status, peak_wanted: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let name = if s.device.name.is_empty() { "(no group)" } else { &s.device.name };
    let _ = writeln!(out, "device      {name}  {}", s.device.id);
    let _ = writeln!(out, "data dir    {}", s.device.data_dir.display());
    match (&s.daemon, &s.device.mountpoint) {
        (Some(d), Some(m)) => {
            let sync = if d.syncing { "syncing" } else { "not syncing: this device belongs to no group" };
            let _ = writeln!(out, "mounted at  {} (daemon pid {}, up {} s, {sync})", m.display(), d.pid, d.uptime_secs);
        }
        _ => {
            let _ = writeln!(
                out,
                "not running no daemon serves this data dir: nothing is mounted and nothing syncs \
                 (start with `psync mount DIR`)"
            );
        }
    }
    if let Some(sig) = &s.signalling {
        let state = match &sig.state {
            SignallingState::Connected => "connected".to_string(),
            SignallingState::Connecting => "connecting".to_string(),
            SignallingState::Lost(why) => format!("not connected ({why})"),
            SignallingState::Refused(why) => format!("REFUSED: {why}"),
        };
        let _ = writeln!(out, "signalling  {}  {state}", sig.server);
        if let Some(warning) = &sig.roster_warning {
            let _ = writeln!(out, "ROSTER      {warning}");
        }
    }
    let l = &s.local;
    let _ = writeln!(out, "local       {} files, {} dirs, {}  (sequence {})", l.files, l.dirs, bytes(l.bytes), l.seq);
    if l.waiting_records > 0 || l.wanted_blocks > 0 {
        let peak = peak_wanted.max(l.wanted_blocks) as u64;
        let _ = writeln!(
            out,
            "receiving   {} {} changes waiting for {} blocks (up to {} to go)",
            bar(peak - l.wanted_blocks as u64, peak),
            l.waiting_records,
            l.wanted_blocks,
            bytes(l.wanted_blocks as u64 * psync_store::BLOCK_SIZE)
        );
    }
    if l.disk_full {
        let _ =
            writeln!(out, "DISK FULL   installs from peers are paused; they resume by themselves once there is space");
    }
    if l.held_records > 0 {
        let _ = writeln!(
            out,
            "held        {} peer versions cannot be installed now (retried; nothing is lost):",
            l.held_records
        );
        for h in &l.held {
            let _ = writeln!(out, "  {}  {} (from {}, {} s)", h.path, h.reason, short_id(&h.from), h.held_secs);
        }
        if l.held.len() < l.held_records {
            let _ = writeln!(
                out,
                "  ... and {} more (psync status --json lists {MAX_LISTED})",
                l.held_records - l.held.len()
            );
        }
    }
    if !l.local_only.is_empty() {
        let _ = writeln!(out, "local only  {} paths here do not sync:", l.local_only.len());
        for p in &l.local_only {
            let _ = writeln!(out, "  {}  {}", p.path, p.reason);
        }
    }
    if l.read_only {
        let _ = writeln!(
            out,
            "read-only   this device's changes stay here; the group does not take them ({} paths changed here{})",
            l.own_changes,
            if l.own_changes > 0 {
                "; `psync revert --all` or `psync revert PATH` takes the group's version back"
            } else {
                ""
            }
        );
        for p in &l.own_changes_listed {
            let _ = writeln!(out, "  {p}");
        }
    }
    if let Some(e) = &l.sync_error {
        let _ = writeln!(out, "sync error  {e} (sync goes on)");
    }
    if !s.peers.is_empty() {
        let _ = writeln!(out, "peers");
    }
    for p in &s.peers {
        let presence = if p.online { "online" } else { "offline" };
        let link = if p.connected { "connected (WebRTC)" } else { "not connected" };
        let sync = if p.in_sync {
            "in sync".to_string()
        } else if p.connected {
            format!("syncing: {} changes to receive, {} to send", p.incoming_records, p.outgoing_records)
        } else {
            "-".to_string()
        };
        let seen = p.last_seen_secs_ago.map(|s| format!(", heard {s} s ago")).unwrap_or_default();
        let rtt = p.rtt_ms.map(|ms| format!(", rtt {ms:.1} ms")).unwrap_or_default();
        let read_only = if p.role == "read_only" { " [read-only]" } else { "" };
        let _ = writeln!(out, "  {:<14} {}  {presence:<7} {link:<18} {sync}{seen}{rtt}{read_only}", p.name, p.id);
    }
    if s.conflicts.is_empty() {
        let _ = writeln!(out, "conflicts   none");
    } else {
        let _ = writeln!(out, "conflicts   {} (both versions kept):", s.conflicts.len());
        for c in &s.conflicts {
            let _ = writeln!(out, "  {c}");
        }
    }
    if !s.recent_errors.is_empty() {
        let _ = writeln!(out, "recent warnings and errors (newest last):");
        for e in &s.recent_errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}
