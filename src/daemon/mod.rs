//! `psync mount` and `psync unmount`: process management around the
//! filesystem. Glue: the filesystem itself is in `psync-fs`.

mod log;
mod prune;
mod sync;
pub mod view;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use psync_base::DeviceId;
use psync_fs::mount;
use psync_fs::FsCore;
use psync_store::{Store, StoreError};

use crate::config::{MountOptions, Settings};
use psync_fs::Replayer;
use serde::{Deserialize, Serialize};

/// Written to the data dir while a daemon serves it.
#[derive(Debug, Serialize, Deserialize)]
struct DaemonInfo {
    pid: u32,
    mountpoint: PathBuf,
}

use crate::data_dir::{DAEMON_FILE, LOG_FILE, SOCKET_FILE};
/// Set for the detached child: it reports readiness on stdout.
const NOTIFY_ENV: &str = "PSYNC_NOTIFY_READY";
const READY: &str = "READY";
/// How long an exiting daemon waits for its last upload to the relay
/// (`psync unmount` waits 60 s for the daemon to exit).
const RELAY_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

fn read_daemon_info(data_dir: &Path) -> Option<DaemonInfo> {
    let text = std::fs::read_to_string(data_dir.join(DAEMON_FILE)).ok()?;
    let info: DaemonInfo = serde_json::from_str(&text).ok()?;
    // A file left by a daemon that died is not an answer.
    process_alive(info.pid).then_some(info)
}

/// Whether `pid` is a running (not zombie) process.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}

/// How the daemon is asked to run: its config file, log filter and flags.
#[derive(Debug, Clone)]
pub struct DaemonArgs {
    /// `--config`, if given.
    pub config: Option<PathBuf>,
    /// `--log-level`, if given.
    pub log_level: Option<String>,
    /// `psync mount`'s own flags.
    pub options: MountOptions,
}

/// `psync mount`.
pub fn mount(data_dir: &Path, mountpoint: &Path, foreground: bool, args: &DaemonArgs) -> Result<ExitCode> {
    crate::data_dir::prepare(data_dir)?;
    let data_dir = data_dir.canonicalize()?;
    // Read before detaching, so a mistake in the file or a flag shows here.
    let config_file = crate::config::locate(args.config.as_deref(), &data_dir)?;
    let settings = crate::config::load(config_file.as_deref(), &args.options)?;
    if let Some(info) = read_daemon_info(&data_dir) {
        bail!(
            "data dir {} is already mounted at {} (daemon pid {}); run `psync unmount {}` first",
            data_dir.display(),
            info.mountpoint.display(),
            info.pid,
            info.mountpoint.display()
        );
    }
    let mountpoint = mount::prepare_mountpoint(mountpoint)?;
    if !data_dir.join(crate::data_dir::IDENTITY_FILE).exists() {
        eprintln!(
            "note: {} belongs to no group, so this mount does not sync \
             (`psync init` or `psync join` first makes it sync)",
            data_dir.display()
        );
    }
    if foreground {
        serve(&data_dir, &mountpoint, settings)
    } else {
        detach_and_wait(&data_dir, &mountpoint, &settings, args)
    }
}

/// Starts `psync mount --foreground` as a detached child with its output in
/// the log, and returns once it says the mount is ready (or has failed).
fn detach_and_wait(data_dir: &Path, mountpoint: &Path, settings: &Settings, args: &DaemonArgs) -> Result<ExitCode> {
    let (log, log_path) = open_log(data_dir)?;
    let start_of_log = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("--data-dir").arg(data_dir);
    // The same file, even if the daemon's environment would find another.
    if let Some(file) = &settings.config_file {
        command.arg("--config").arg(file);
    }
    if let Some(level) = &args.log_level {
        command.arg("--log-level").arg(level);
    }
    command.arg("mount").arg(mountpoint).arg("--foreground").args(args.options.to_args());
    let mut child = spawn_detached(command, log).context("cannot start the psync daemon")?;
    if wait_ready(&mut child)? {
        println!(
            "mounted {} at {} (daemon pid {}; log: {})",
            data_dir.display(),
            mountpoint.display(),
            child.id(),
            log_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    let log_text = std::fs::read(&log_path).unwrap_or_default();
    let tail = String::from_utf8_lossy(log_text.get(start_of_log as usize..).unwrap_or(&[]));
    eprint!("{tail}");
    bail!("the psync daemon exited ({status}) before the mount was ready");
}

/// The data dir's log, for a detached child's output (appended).
fn open_log(data_dir: &Path) -> Result<(std::fs::File, PathBuf)> {
    let log_path = data_dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open log {}", log_path.display()))?;
    Ok((log, log_path))
}

/// Starts `command` (a `--foreground` psync) as a detached child told to
/// report readiness, its stderr into `log`.
fn spawn_detached(mut command: Command, log: std::fs::File) -> std::io::Result<std::process::Child> {
    command.env(NOTIFY_ENV, "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log).spawn()
}

/// Whether the child printed [`READY`] (false: it ended before).
fn wait_ready(child: &mut std::process::Child) -> Result<bool> {
    let stdout = child.stdout.take().context("the child's stdout")?;
    Ok(BufReader::new(stdout).lines().any(|line| line.is_ok_and(|l| l.trim() == READY)))
}

/// Runs the filesystem in this process until it is unmounted or a signal
/// (SIGINT, SIGTERM, SIGHUP) asks for a clean unmount.
fn serve(data_dir: &Path, mountpoint: &Path, settings: Settings) -> Result<ExitCode> {
    let notify = std::env::var_os(NOTIFY_ENV).is_some();
    let signals = become_daemon(data_dir, notify)?;
    let sync_setup = crate::identity::sync_setup(data_dir)?;
    // A device with an identity is known to its group by its key.
    let device = sync_setup.as_ref().map_or_else(|| DeviceId(rand::random()), |s| s.key.public().device_id());
    let store = open_store(data_dir, device)?;
    if sync_setup.is_some() && store.device() != device {
        // Never a mount that silently does not sync.
        bail!(
            "this data dir's store was made before the device joined a group, so a mount would not sync: \
             move {} aside, mount again and copy the files in",
            data_dir.join(crate::data_dir::STORE_DIR).display()
        );
    }
    let (fs_events, fs_events_rx) = std::sync::mpsc::channel();
    let core = Arc::new(FsCore::new(store.clone(), sync_setup.is_some().then_some(fs_events))?);
    let session = mount::mount(core.clone(), mountpoint, &data_dir.display().to_string(), settings.allow_other)?;
    let mut status = crate::control::server::Source {
        data_dir: data_dir.to_path_buf(),
        mountpoint: mountpoint.to_path_buf(),
        store: store.clone(),
        identity: None,
        sync: None,
        started: Instant::now(),
        settings: settings.clone(),
        fs: core.clone(),
    };
    let mut running = None;
    if let Some(setup) = sync_setup {
        status.identity = Some(crate::control::server::Identity {
            name: setup.name.clone(),
            id: store.device(),
            server: setup.server.clone(),
        });
        let replayer = Replayer { mountpoint: mountpoint.to_path_buf(), fs: core, notifier: session.notifier() };
        let started = sync::start(data_dir, store.clone(), setup, fs_events_rx, replayer, &settings)?;
        status.sync = Some((started.live.clone(), started.control.clone()));
        running = Some(started);
    }
    crate::control::server::serve(status)?;
    let info = DaemonInfo { pid: std::process::id(), mountpoint: mountpoint.to_path_buf() };
    std::fs::write(data_dir.join(DAEMON_FILE), serde_json::to_vec_pretty(&info)?)?;
    tracing::info!("serving {} at {}", data_dir.display(), mountpoint.display());
    announce_ready(notify, data_dir, mountpoint)?;
    let result = wait_for_unmount(signals, session, mountpoint)?;
    // Everything is committed now: what offline members need goes to the
    // relay before this device goes offline too.
    if let Some(running) = &mut running {
        running.stop_watching_sleep();
        running.flush_relay(RELAY_FLUSH_TIMEOUT);
    }
    let _ = std::fs::remove_file(data_dir.join(DAEMON_FILE));
    let _ = std::fs::remove_file(data_dir.join(SOCKET_FILE));
    result.context("filesystem session ended with an error")?;
    tracing::info!("unmounted {}", mountpoint.display());
    Ok(ExitCode::SUCCESS)
}

/// Leaves the terminal's session (when detached), makes what the daemon
/// writes its owner's alone, bounds the log, and blocks the signals that
/// mean "unmount" in every thread (this one takes them with `sigwait`).
fn become_daemon(data_dir: &Path, detached: bool) -> Result<SigSet> {
    if detached {
        // Leave the terminal's session so its hangup does not reach us.
        let _ = nix::unistd::setsid();
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    if detached {
        log::keep_bounded(data_dir.join(LOG_FILE));
    }
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGUSR1] {
        signals.add(s);
    }
    signals.thread_block()?;
    Ok(signals)
}

fn open_store(data_dir: &Path, device: DeviceId) -> Result<Arc<Store>> {
    match Store::open_or_create(data_dir, device) {
        Ok(store) => Ok(Arc::new(store)),
        Err(StoreError::Locked(_)) => bail!(
            "data dir {} is in use by another psync process (mounted elsewhere? see `psync status` or {})",
            data_dir.display(),
            data_dir.join(DAEMON_FILE).display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// Tells the waiting parent (or the terminal) that the mount is ready.
fn announce_ready(detached: bool, data_dir: &Path, mountpoint: &Path) -> Result<()> {
    if detached {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY}")?;
        out.flush()?;
        // The parent stops reading after READY: send later output nowhere.
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        nix::unistd::dup2_stdout(&null)?;
    } else {
        println!("mounted {} at {}; press Ctrl-C to unmount", data_dir.display(), mountpoint.display());
    }
    Ok(())
}

/// Serves until unmounted: a signal asks for a clean unmount; the session
/// thread ending (by `psync unmount`, umount or fusermount -u) means done.
fn wait_for_unmount(
    signals: SigSet,
    session: fuser::BackgroundSession,
    mountpoint: &Path,
) -> Result<std::io::Result<()>> {
    let main_pid = nix::unistd::getpid();
    let joiner = std::thread::spawn(move || {
        let result = session.join();
        let _ = nix::sys::signal::kill(main_pid, Signal::SIGUSR1);
        result
    });
    loop {
        match signals.wait()? {
            Signal::SIGUSR1 => break,
            signal => {
                tracing::info!("{signal}: unmounting {}", mountpoint.display());
                if let Err(e) = mount::unmount(mountpoint) {
                    tracing::warn!("clean unmount failed ({e}); detaching instead");
                    mount::detach(mountpoint)?;
                }
            }
        }
    }
    joiner.join().map_err(|_| anyhow::anyhow!("filesystem thread panicked"))
}

/// How long `psync unmount` retries a busy mount: the daemon's own replay
/// may hold a descriptor for a moment after it was told to stop.
const UNMOUNT_BUSY_GRACE: Duration = Duration::from_secs(5);

/// Unmounts, after telling the daemon (whose data dir is `data_dir`) to stop
/// replaying; retries while busy for [`UNMOUNT_BUSY_GRACE`].
fn unmount_when_idle(path: &Path, data_dir: &Path) -> std::io::Result<()> {
    crate::control::client::prepare_unmount(data_dir);
    let deadline = Instant::now() + UNMOUNT_BUSY_GRACE;
    loop {
        match mount::unmount(path) {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn is_busy(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBUSY) || e.to_string().contains("busy")
}

/// `psync unmount`: flushes (the daemon commits and syncs on unmount),
/// unmounts and waits for the daemon to exit.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<ExitCode> {
    let path = match mountpoint.canonicalize() {
        Ok(p) => p,
        // A dead daemon's mount cannot be stat'ed; its path is still in mountinfo.
        Err(_) => std::path::absolute(mountpoint)?,
    };
    let Some(entry) = mount::mount_at(&path)? else {
        bail!("{} is not mounted", path.display());
    };
    if entry.fstype == format!("fuse.{}", psync_fs::view::VIEW_SUBTYPE) {
        // A view of the past: no daemon, nothing to flush.
        mount::unmount(&path).with_context(|| format!("cannot unmount {}", path.display()))?;
        println!("unmounted {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    if entry.fstype != format!("fuse.{}", mount::SUBTYPE) {
        bail!("{} is a {} mount, not a PSync mount", path.display(), entry.fstype);
    }
    let daemon = read_daemon_info(Path::new(&entry.source));
    let result = if lazy { mount::detach(&path) } else { unmount_when_idle(&path, Path::new(&entry.source)) };
    if let Err(e) = result {
        if is_busy(&e) {
            bail!(
                "{} is busy: files in it are still open (see `fuser -m {}`); close them, or use --lazy",
                path.display(),
                path.display()
            );
        }
        return Err(e).with_context(|| format!("cannot unmount {}", path.display()));
    }
    if let Some(info) = daemon {
        let deadline = Instant::now() + Duration::from_secs(60);
        while process_alive(info.pid) {
            if Instant::now() > deadline {
                bail!("unmounted, but daemon pid {} has not exited after 60 s", info.pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("unmounted {}", path.display());
    Ok(ExitCode::SUCCESS)
}
