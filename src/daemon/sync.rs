//! Starts sync inside `psync mount`: the signalling client, peering and the
//! sync loop on their own tokio runtime thread, fed by the filesystem's
//! commit events. The mount works the same whether or not any of it can
//! reach the network (offline first).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use psync_fs::FsEvent;
use psync_signal::net::SignalClient;
use psync_signal::Roster;
use psync_store::NodeKind;
use psync_store::Store;
use psync_sync::{Change, RecordKind, SyncConfig, SyncCore};
use tokio::sync::mpsc;

use crate::clock::mono_ms;
use crate::config::Settings;
use crate::driver::inbox::Control;
use crate::driver::storage::StoreSync;
use crate::driver::sync_loop;
use crate::identity::SyncSetup;
use crate::live::SharedLive;
use crate::peering::{self, Me};
use crate::relay::sleep::SleepWatch;
use crate::relay::{FlushRequest, RelayTask};
use psync_fs::{Replayer, Step};

/// The running sync thread, as the daemon and `psync status` see it.
#[derive(Debug)]
pub struct Running {
    /// Shared with `psync status`.
    pub live: SharedLive,
    /// The sync loop's control channel.
    pub control: mpsc::Sender<Control>,
    /// Asks the relay task to upload what is left (none: no relay use).
    pub relay_flush: Option<mpsc::Sender<FlushRequest>>,
    /// Flushes before the machine sleeps (its helpers end with it).
    sleep_watch: Option<SleepWatch>,
}

impl Running {
    /// Stops watching for sleep (its helper processes end).
    pub fn stop_watching_sleep(&mut self) {
        self.sleep_watch = None;
    }

    /// Uploads what offline members still need to the relay, waiting at
    /// most `timeout` (before the daemon exits).
    pub fn flush_relay(&self, timeout: std::time::Duration) {
        let Some(flush) = &self.relay_flush else { return };
        if !crate::relay::flush_blocking(flush, timeout) {
            tracing::warn!(
                "relay: upload not finished within {} s; the rest goes at the next mount",
                timeout.as_secs()
            );
        }
    }
}

/// Spawns the sync thread; returns once it is running, with what
/// `psync status` reads: the shared live state and the loop's control channel.
/// `replayer` shows what peers changed to applications watching the mount.
pub fn start(
    data_dir: &Path,
    store: Arc<Store>,
    mut setup: SyncSetup,
    fs_events: std::sync::mpsc::Receiver<FsEvent>,
    replayer: Replayer,
    settings: &Settings,
) -> Result<Running> {
    let ice = settings.ice();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("psync-sync")
        .enable_all()
        .build()
        .context("cannot start the sync runtime")?;
    let group: Vec<_> = setup.roster.members().filter(|m| !m.removed).map(|m| m.key.device_id()).collect();
    let config = SyncConfig {
        debounce_ms: settings.debounce_ms,
        upload_bytes_per_sec: settings.upload_bytes_per_sec,
        download_bytes_per_sec: settings.download_bytes_per_sec,
        ..SyncConfig::new(group)
    };
    let storage = StoreSync::with_xattrs(store.clone(), settings.xattrs_sync);
    let core = SyncCore::new(storage.clone(), config, rand::random(), mono_ms());
    let (control, control_rx) = mpsc::channel::<Control>(64);
    let live = SharedLive::default();
    let prune = super::prune::run(store, control.clone(), live.clone(), settings.clone());
    let (relay_flush, relay_task) = match setup.keyring.take() {
        Some(_) => {
            let (flush, flush_rx) = mpsc::channel::<FlushRequest>(4);
            let task = RelayTask {
                server: setup.server.clone(),
                group: setup.group,
                key: setup.key.clone(),
                data_dir: data_dir.to_path_buf(),
                storage,
                control: control.clone(),
                live: live.clone(),
                roster: setup.roster.clone(),
                upload_delay: std::time::Duration::from_millis(settings.relay_upload_delay_ms),
            };
            (Some(flush), Some((task, flush_rx)))
        }
        None => {
            tracing::info!("relay storage is off: this group has no content key (it predates the relay)");
            (None, None)
        }
    };
    let sleep_watch = relay_flush.clone().and_then(SleepWatch::start);
    let handles = Running { live: live.clone(), control: control.clone(), relay_flush, sleep_watch };
    let roster_dir = data_dir.to_path_buf();
    let save_roster = move |roster: &Roster| {
        if let Err(e) = crate::identity::save_roster(&roster_dir, roster.entries()) {
            tracing::warn!("cannot save the newer roster: {e:#}");
        }
    };

    // Commits from the filesystem, coalesced: one pending LocalChanged is enough.
    let local = control.clone();
    std::thread::Builder::new().name("psync-fs-events".into()).spawn(move || {
        while fs_events.recv().is_ok() {
            while fs_events.try_recv().is_ok() {}
            if local.blocking_send(Control::LocalChanged).is_err() {
                return;
            }
        }
    })?;

    std::thread::Builder::new().name("psync-sync".into()).spawn(move || {
        runtime.block_on(async move {
            let client = SignalClient::spawn(setup.server.clone(), setup.group, setup.key.clone());
            let me = Me::new(setup.key, setup.certificate, ice);
            tokio::spawn(peering::run(me, setup.roster, client, control, live.clone(), Box::new(save_roster)));
            if let Some((task, flush_rx)) = relay_task {
                tokio::spawn(task.run(flush_rx));
            }
            tokio::spawn(prune);
            // Not a runtime thread: replaying blocks in syscalls on the mount.
            let (installed, installed_rx) = mpsc::unbounded_channel::<Vec<Change>>();
            let replay =
                std::thread::Builder::new().name("psync-replay".into()).spawn(move || show(replayer, installed_rx));
            if let Err(e) = replay {
                tracing::error!("cannot start the replay thread: {e}");
                return;
            }
            sync_loop::run(core, control_rx, installed, live).await;
            tracing::info!("sync stopped (unmounting)");
        })
    })?;
    Ok(handles)
}

/// The replay thread: shows each batch the sync loop installed on the mount.
fn show(replayer: Replayer, mut installed: mpsc::UnboundedReceiver<Vec<Change>>) {
    replayer.become_replayer();
    while let Some(batch) = installed.blocking_recv() {
        let steps: Vec<Step> = batch
            .into_iter()
            .map(|c| Step {
                path: c.path.as_str().to_string(),
                before: c.before.map(node_kind),
                after: c.after.map(node_kind),
            })
            .collect();
        replayer.show(&steps);
    }
}

fn node_kind(kind: RecordKind) -> NodeKind {
    match kind {
        RecordKind::File => NodeKind::File,
        RecordKind::Dir => NodeKind::Dir,
        RecordKind::Symlink => NodeKind::Symlink,
    }
}
