//! The daemon's side of the control socket: who may ask, and the answers,
//! built from the live state and the sync loop's snapshot.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use psync_base::DeviceId;
use psync_signal::readable_id;
use psync_store::Store;

use super::history::{deleted_rows, restore_version, version_rows};
use super::report::{conflict_copies, held_status, ignore_list, local_only_status, peers, recent_changes, PeerLive};
use super::schema::*;
use crate::clock::mono_ms;
use crate::config_edit::LimitChange;
use crate::data_dir::SOCKET_FILE;
use crate::driver::inbox::{Control, SyncSnapshot};
use crate::live::{recent_errors, SharedLive, SignallingState};

/// Requests are one short line.
const MAX_REQUEST: u64 = 1024;
/// How long the sync loop may take to answer a revert.
const SYNC_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long status waits for the sync loop's figures; a loop busy longer
/// (a large batch on a loaded machine) gets a status without them rather
/// than a status that does not come.
const STATUS_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The filesystem (told when an unmount is coming).
    pub fs: Arc<psync_fs::FsCore>,
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

    /// Restores a file while mounted: one transaction in the store, then
    /// the mount shows it (as a peer's change is shown) and peers are told.
    fn restore(&self, path: &str, version: u64) -> Result<u64> {
        let restored = restore_version(&self.store, path, version)?;
        if let Some((_, control)) = &self.sync {
            let sync_path =
                |p: &str| psync_sync::SyncPath::new(p.trim_matches('/')).map_err(|e| anyhow::anyhow!("{p:?}: {e}"));
            use psync_sync::Change;
            let file = psync_sync::RecordKind::File;
            let mut shown = Vec::new();
            for dir in restored.undeleted.iter().flatten() {
                shown.push(Change { path: sync_path(dir)?, before: None, after: Some(psync_sync::RecordKind::Dir) });
            }
            let before = if restored.undeleted.is_some() { None } else { Some(file) };
            shown.push(Change { path: sync_path(path)?, before, after: Some(file) });
            control.blocking_send(Control::Restored(shown)).context("the sync loop has stopped")?;
        }
        Ok(restored.version)
    }

    /// Saves a change of limits to the config file, then puts it in force
    /// in the running sync loop (nothing is changed if it is refused).
    fn set_limits(&mut self, change: &LimitChange) -> Result<SettingsAnswer> {
        if change.is_empty() {
            return Ok(SettingsAnswer { settings: self.settings.clone(), saved_to: None, applied_live: true });
        }
        let mut next = self.settings.clone();
        change.apply(&mut next)?;
        let file = crate::config_edit::target_file(&next, &self.data_dir);
        crate::config_edit::save(&file, change)?;
        next.config_file = Some(file.clone());
        if let Some((_, control)) = &self.sync {
            let limits = Control::SetLimits {
                debounce_ms: next.debounce_ms,
                upload: next.upload_bytes_per_sec,
                download: next.download_bytes_per_sec,
            };
            control
                .blocking_send(limits)
                .context("the sync loop has stopped (the change is saved for the next mount)")?;
        }
        tracing::info!(
            "settings changed: debounce {} ms, upload {:?} B/s, download {:?} B/s (saved to {})",
            next.debounce_ms,
            next.upload_bytes_per_sec,
            next.download_bytes_per_sec,
            file.display()
        );
        self.settings = next;
        Ok(SettingsAnswer { settings: self.settings.clone(), saved_to: Some(file), applied_live: true })
    }

    fn collect(&self) -> Result<Status> {
        let mut lap = Laps::start();
        let stats = self.store.tree_stats()?;
        lap.mark("store figures");
        let (live, snapshot, busy) = match &self.sync {
            Some((live, control)) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let snapshot = match control.try_send(Control::Status(tx)) {
                    Ok(()) => rx.recv_timeout(STATUS_SNAPSHOT_TIMEOUT).ok(),
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => None,
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                        anyhow::bail!("the sync loop has stopped")
                    }
                };
                let busy = snapshot.is_none();
                lap.mark("sync loop's figures");
                (Some(live), snapshot.unwrap_or_default(), busy)
            }
            None => (None, SyncSnapshot::default(), false),
        };
        let conflicts = conflict_copies(&self.store)?;
        lap.mark("conflict copies");
        let warnings = recent_errors();
        let local_only = local_only_status(&self.store)?;
        lap.mark("local-only paths");
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
                local_only,
                sync_error: if busy {
                    Some(format!(
                        "the sync loop is busy (no answer within {} s): peers' progress is not shown; ask again",
                        STATUS_SNAPSHOT_TIMEOUT.as_secs()
                    ))
                } else {
                    snapshot.last_error.clone()
                },
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
            recent_errors: warnings.iter().map(crate::live::Warning::line).collect(),
            recent_warnings: warnings,
            relay: None,
            history: None,
            recent_changes: Vec::new(),
        };
        let mut roster = None;
        if let (Some(identity), Some(live)) = (&self.identity, live) {
            live.read(|l| {
                roster = l.roster.clone();
                status.relay = l.relay.clone();
                status.history = l.history.clone();
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
                        link: snapshot.links.get(&id).cloned(),
                    });
                }
            });
        }
        lap.mark("peers");
        status.recent_changes = recent_changes(&self.store, roster.as_ref())?;
        lap.mark("recent changes");
        lap.report_if_slow();
        Ok(status)
    }
}

/// A status slower than this is logged with where its time went.
const SLOW_STATUS: Duration = Duration::from_secs(1);

/// Where a status answer spent its time.
struct Laps {
    started: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn start() -> Self {
        let now = Instant::now();
        Laps { started: now, last: now, laps: Vec::new() }
    }

    fn mark(&mut self, what: &'static str) {
        let now = Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }

    fn report_if_slow(&self) {
        let total = self.started.elapsed();
        if total >= SLOW_STATUS {
            let parts: Vec<String> = self.laps.iter().map(|(w, d)| format!("{w} {} ms", d.as_millis())).collect();
            tracing::warn!("status took {} ms: {}", total.as_millis(), parts.join(", "));
        }
    }
}

/// Serves the control socket on its own thread until the process exits.
pub fn serve(mut source: Source) -> Result<()> {
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
            if let Err(e) = answer(&mut source, stream) {
                tracing::debug!("control request failed: {e:#}");
            }
        }
    })?;
    Ok(())
}

fn answer(source: &mut Source, stream: UnixStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(r) if r.request == "status" => match source.collect() {
            Ok(status) => Answer::Status(Box::new(status)),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Ok(r) if r.request == "unmounting" => {
            source.fs.stop_replaying();
            Answer::Done
        }
        Ok(r) if r.request == "revert" => match source.revert(&r.paths) {
            Ok(n) => Answer::Reverted(n),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Ok(r) if r.request == "log" && r.deleted => {
            match deleted_rows(&source.store, r.paths.first().map(String::as_str)) {
                Ok(rows) => Answer::Versions(rows),
                Err(e) => Answer::Error(format!("{e:#}")),
            }
        }
        Ok(r) if r.request == "log" => match r.paths.first().map(|p| version_rows(&source.store, p)) {
            Some(Ok(rows)) => Answer::Versions(rows),
            Some(Err(e)) => Answer::Error(format!("{e:#}")),
            None => Answer::Error("log needs a path".into()),
        },
        Ok(r) if r.request == "ignore" => match ignore_list(&source.store) {
            Ok(list) => Answer::Ignore(list),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Ok(r) if r.request == "settings" => match source.set_limits(&r.limits.unwrap_or_default()) {
            Ok(answer) => Answer::Settings(Box::new(answer)),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Ok(r) if r.request == "restore" => match (r.paths.first(), r.version) {
            (Some(path), Some(version)) => match source.restore(path, version) {
                Ok(now) => Answer::Restored(now),
                Err(e) => Answer::Error(format!("{e:#}")),
            },
            _ => Answer::Error("restore needs a path and a version".into()),
        },
        Ok(r) => Answer::Error(format!("unknown request {:?}", r.request)),
        Err(e) => Answer::Error(format!("malformed request: {e}")),
    };
    let mut stream = stream;
    serde_json::to_writer(&mut stream, &reply)?;
    stream.write_all(b"\n")?;
    Ok(())
}
