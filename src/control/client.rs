//! The commands' side of the control socket: ask the daemon, or, with no
//! daemon running, tell what the data dir alone can.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use psync_signal::readable_id;
use psync_store::Store;

use super::report::{conflict_copies, local_only_status, peers, recent_changes, PeerLive};
use super::schema::*;
use crate::data_dir::SOCKET_FILE;
use crate::live::SignallingState;

/// A command that needs the running daemon found none.
#[derive(Debug, thiserror::Error)]
#[error("no daemon serves {0}: mount it first (`psync mount DIR`)")]
pub struct NoDaemon(pub std::path::PathBuf);

/// How long a command waits for the daemon's answer: status answers within
/// seconds even when its sync loop is busy, but a machine under load may be
/// slow to schedule the daemon at all.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to the daemon serving `data_dir`; `None` when no daemon answers.
fn ask(data_dir: &Path, request: Request) -> Result<Option<Answer>> {
    let path = data_dir.join(SOCKET_FILE);
    let Ok(mut stream) = UnixStream::connect(&path) else { return Ok(None) };
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
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
    match ask(data_dir, Request { request: "status".into(), ..Request::default() })? {
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
    match ask(&data_dir, Request { request: "revert".into(), paths, ..Request::default() })? {
        Some(Answer::Reverted(n)) => {
            println!("taking the group's version of {n} paths back (their local versions stay in the history)");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Some(_) => anyhow::bail!("the daemon answered something else"),
        None => Err(NoDaemon(data_dir).into()),
    }
}

/// What the data dir alone says, with no daemon running.
fn offline_status(data_dir: &Path) -> Result<Status> {
    let store = if Store::exists(data_dir) {
        // Read-only, so that looking never holds the store's lock: a mount
        // starting meanwhile (or a daemon that does not answer yet) is not
        // refused because `psync status` (or the TUI's poll) had it open.
        Some(Arc::new(match Store::open_read_only(data_dir) {
            Ok(store) => store,
            Err(e @ psync_store::StoreError::NotAStore(_)) => return Err(e.into()),
            // Anything else: the read-write open says why (or opens what a
            // read-only instance cannot).
            Err(_) => Store::open(data_dir)?,
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
    let setup = crate::identity::sync_setup(data_dir)?;
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
        recent_warnings: Vec::new(),
        relay: None,
        history: None,
        recent_changes: Vec::new(),
    };
    if let Some(store) = &store {
        status.recent_changes = recent_changes(store, setup.as_ref().map(|s| &s.roster))?;
    }
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

/// The daemon's status, or what the data dir alone says when none runs.
pub fn status(data_dir: &Path) -> Result<Status> {
    match ask_daemon(data_dir)? {
        Some(status) => Ok(status),
        None => offline_status(data_dir),
    }
}

/// Tells the daemon serving `data_dir` that its mount is about to be
/// unmounted, so it stops replaying peers' changes on it (its own open
/// descriptors would keep the mount busy). Best effort: no daemon, no harm.
pub fn prepare_unmount(data_dir: &Path) {
    if let Err(e) = ask(data_dir, Request { request: "unmounting".into(), ..Request::default() }) {
        tracing::debug!("telling the daemon an unmount is coming: {e:#}");
    }
}

/// A file's versions from the daemon serving `data_dir`; `None` when no
/// daemon answers (the caller reads the store itself).
pub fn versions(data_dir: &Path, path: &str) -> Result<Option<Vec<VersionRow>>> {
    rows(data_dir, Request { request: "log".into(), paths: vec![path.to_string()], ..Request::default() })
}

/// Deleted files at or below `dir` from the daemon serving `data_dir`;
/// `None` when no daemon answers.
pub fn deleted(data_dir: &Path, dir: Option<&str>) -> Result<Option<Vec<VersionRow>>> {
    let paths = dir.map(|d| vec![d.to_string()]).unwrap_or_default();
    rows(data_dir, Request { request: "log".into(), paths, deleted: true, ..Request::default() })
}

fn rows(data_dir: &Path, request: Request) -> Result<Option<Vec<VersionRow>>> {
    match ask(data_dir, request)? {
        Some(Answer::Versions(rows)) => Ok(Some(rows)),
        Some(_) => anyhow::bail!("the daemon answered something else"),
        None => Ok(None),
    }
}

/// The ignore rules from the daemon serving `data_dir`; `None` when no
/// daemon answers (the caller reads the store itself).
pub fn ignore_list(data_dir: &Path) -> Result<Option<super::schema::IgnoreList>> {
    match ask(data_dir, Request { request: "ignore".into(), ..Request::default() })? {
        Some(Answer::Ignore(list)) => Ok(Some(list)),
        Some(_) => anyhow::bail!("the daemon answered something else"),
        None => Ok(None),
    }
}

/// Restores a file to `version` through the daemon serving `data_dir`
/// (the mount shows it and peers get it); `None` when no daemon answers.
pub fn restore(data_dir: &Path, path: &str, version: u64) -> Result<Option<u64>> {
    let request = Request {
        request: "restore".into(),
        paths: vec![path.to_string()],
        version: Some(version),
        ..Request::default()
    };
    match ask(data_dir, request)? {
        Some(Answer::Restored(now)) => Ok(Some(now)),
        Some(_) => anyhow::bail!("the daemon answered something else"),
        None => Ok(None),
    }
}

/// Changes limits through the daemon serving `data_dir` (in force at once,
/// and saved to its config file); `None` when no daemon answers.
pub fn settings(data_dir: &Path, change: &crate::config_edit::LimitChange) -> Result<Option<SettingsAnswer>> {
    let request = Request { request: "settings".into(), limits: Some(change.clone()), ..Request::default() };
    match ask(data_dir, request)? {
        Some(Answer::Settings(answer)) => Ok(Some(*answer)),
        Some(_) => anyhow::bail!("the daemon answered something else"),
        None => Ok(None),
    }
}
