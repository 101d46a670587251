//! The `psync` command. Glue only: parses arguments, opens the store, calls
//! library crates and prints results. No logic that a test would want lives here.

use psync::{beneath, config, daemon, group, status};

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use psync_base::DeviceId;
use psync_store::{GcPolicy, NewNode, NodeAttrs, NodeKind, Store, Timestamp, ROOT_INO};

#[derive(Parser, Debug)]
#[command(
    name = "psync",
    version,
    about = "Peer-to-peer folder sync that is a filesystem",
    after_help = "Getting started (one machine runs the signalling server):
  psync signal --listen 0.0.0.0:7700 --tls-cert cert.pem --tls-key key.pem
  psync init --name desktop --server wss://signal.example.org:7700
  psync invite                              # prints a code; on the new device:
  psync join CODE --name laptop --server wss://signal.example.org:7700
  psync mount ~/Vault                       # on each device; then:
  psync status

Try it locally first: ./scripts/demo.sh in the source tree."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Where this device keeps its store and configuration.
    /// Default: $XDG_DATA_HOME/psync (~/.local/share/psync).
    #[arg(long, global = true, env = "PSYNC_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The config file. Default: DATA_DIR/config.toml, else
    /// $XDG_CONFIG_HOME/psync/config.toml, if either exists.
    #[arg(long, global = true, env = "PSYNC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// What to log: error, warn, info, debug, trace, or a filter like
    /// psync=debug,webrtc=warn. RUST_LOG, when set, wins. Default: the config
    /// file's log_level, else info for the daemon and warn for commands.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = config::parse_log_level)]
    log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the store's integrity; exits non-zero if anything is inconsistent.
    Fsck {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove old history and unreferenced blocks.
    Gc {
        /// Versions to keep per file, however old.
        #[arg(long, default_value_t = GcPolicy::default().keep_versions)]
        keep_versions: usize,
        /// Also keep every version younger than this many days.
        #[arg(long, default_value_t = 30)]
        keep_days: i64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the store holds.
    Stats {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a signalling server: wss:// with --tls-cert and --tls-key; plain ws:// only on loopback.
    Signal {
        /// Address to listen on, e.g. 127.0.0.1:7700.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: String,
        /// TLS certificate chain (PEM); with --tls-key, serves wss://.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Create this device's identity and found a new group on a signalling server.
    Init {
        /// This device's name, shown to the other devices.
        #[arg(long)]
        name: String,
        /// The signalling server, e.g. ws://127.0.0.1:7700.
        #[arg(long)]
        server: String,
        /// The group's name.
        #[arg(long, default_value = "vault")]
        group_name: String,
    },
    /// Add a device: prints a one-time code (alone on the first line), waits
    /// for `psync join`, shows the new device and asks before signing it in.
    Invite {
        /// Add the device without asking (for scripts).
        #[arg(long)]
        yes: bool,
        /// The new device receives everything but its changes are ignored ("safe mode").
        #[arg(long)]
        read_only: bool,
    },
    /// Revoke a device (by name or id prefix); peers and the server refuse it.
    Remove {
        /// The device's name or the start of its id.
        device: String,
    },
    /// Join a group with a code from `psync invite` on a member device.
    Join {
        /// The code, e.g. 1234-apple-river.
        code: String,
        /// This device's name.
        #[arg(long)]
        name: String,
        /// The signalling server, e.g. ws://127.0.0.1:7700.
        #[arg(long)]
        server: String,
    },
    /// List the group's devices (verified against the signed roster).
    Devices {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mount the folder (creating the store on first use); on a device of a group it also syncs.
    /// Settings come from the config file (see --config) and these flags.
    Mount {
        /// An empty directory to mount on.
        mountpoint: PathBuf,
        /// Stay in the foreground (logs to stderr) instead of detaching.
        #[arg(long)]
        foreground: bool,
        #[command(flatten)]
        options: config::MountOptions,
    },
    /// Flush everything and unmount; the daemon exits.
    Unmount {
        /// Where the folder is mounted.
        mountpoint: PathBuf,
        /// Detach at once even if files are open (they keep working until closed).
        #[arg(long)]
        lazy: bool,
    },
    /// Show this device, the daemon, the signalling server and every peer:
    /// online, connected, in sync or what is pending; conflicts; recent errors.
    Status {
        /// Print as JSON (a stable interface for scripts).
        #[arg(long)]
        json: bool,
        /// Refresh every second until interrupted (with --json: one line per refresh).
        #[arg(long)]
        watch: bool,
    },
    /// On a read-only device: take the group's version back for paths
    /// changed here (the group does not take them); the local versions stay
    /// in each file's history.
    Revert {
        /// Paths inside the mount (relative to it).
        paths: Vec<String>,
        /// Every path changed on this device.
        #[arg(long, conflicts_with = "paths")]
        all: bool,
    },
    /// Work with the store directly, without mounting it.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print shell completions, e.g. `psync completions bash > /usr/share/bash-completion/completions/psync`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (`psync man | man -l -`), or write one page per command into a directory.
    Man {
        /// Write psync.1, psync-mount.1, ... here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Copy a directory tree into the store (creating the store if needed).
    /// Files that already exist get a new version when their content differs.
    Import {
        /// Directory to copy from.
        source: PathBuf,
    },
    /// Copy the store's tree out into a directory.
    Export {
        /// Directory to write into (created if missing).
        dest: PathBuf,
    },
    /// List a directory of the store.
    Ls {
        /// Path inside the store.
        #[arg(default_value = "")]
        path: String,
    },
    /// Print a file of the store.
    Cat {
        /// Path inside the store.
        path: String,
    },
    /// Show the committed versions of a file.
    Log {
        /// Path inside the store.
        path: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make an old version the current content of a file (as a new version).
    Restore {
        /// Path inside the store.
        path: String,
        /// Sequence number of the version, from `psync store log`.
        #[arg(long)]
        version: u64,
    },
}

fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(&cli)));
    tracing_subscriber::registry()
        .with(filter)
        // Plain text when it goes to a file (the daemon's log), colours on a terminal.
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr))
        .with(status::RecentErrors)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("psync: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter when `RUST_LOG` is not set: the flag, the config file's
/// (a broken file is reported by the commands that read it), or a default.
fn log_filter(cli: &Cli) -> String {
    if let Some(level) = &cli.global.log_level {
        return level.clone();
    }
    let from_file = data_dir(&cli.global)
        .ok()
        .and_then(|dir| config::locate(cli.global.config.as_deref(), &dir).ok().flatten())
        .and_then(|file| config::load(Some(&file), &config::MountOptions::default()).ok())
        .and_then(|settings| settings.log_level);
    from_file.unwrap_or_else(|| if matches!(cli.command, Command::Mount { .. }) { "info" } else { "warn" }.into())
}

fn data_dir(global: &Global) -> Result<PathBuf> {
    if let Some(dir) = &global.data_dir {
        return Ok(dir.clone());
    }
    let base = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").context("neither --data-dir, PSYNC_DATA_DIR nor HOME is set")?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(base.join("psync"))
}

fn open_existing(global: &Global) -> Result<Store> {
    let dir = data_dir(global)?;
    Ok(Store::open(&dir)?)
}

/// For commands that only look: a read-only snapshot when a daemon has the
/// store open.
fn open_for_reading(global: &Global) -> Result<Store> {
    let dir = data_dir(global)?;
    match Store::open(&dir) {
        Err(psync_store::StoreError::Locked(_)) => {
            eprintln!("(the store is in use by a running daemon: showing a read-only snapshot)");
            Ok(Store::open_read_only(&dir)?)
        }
        other => Ok(other?),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Fsck { json } => {
            let store = open_for_reading(&cli.global)?;
            let report = store.fsck()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for problem in &report.problems {
                    println!("PROBLEM: {problem}");
                }
                println!(
                    "checked {} inodes, {} entries, {} versions, {} tombstones; verified {} blocks ({} bytes)",
                    report.inodes,
                    report.dirents,
                    report.versions,
                    report.tombstones,
                    report.blocks_verified,
                    report.bytes_verified
                );
                if report.unreferenced_blocks + report.unreferenced_pages > 0 {
                    println!(
                        "{} unreferenced blocks and {} pages can be reclaimed with `psync gc`",
                        report.unreferenced_blocks, report.unreferenced_pages
                    );
                }
                println!("{}", if report.is_clean() { "store is consistent" } else { "STORE IS INCONSISTENT" });
            }
            Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Gc { keep_versions, keep_days, json } => {
            let store = open_existing(&cli.global)?;
            let policy = GcPolicy { keep_versions, keep_for_secs: keep_days.saturating_mul(86_400) };
            let report = store.gc(policy, Timestamp::now())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "removed {} old versions, {} pages, {} blocks ({} bytes)",
                    report.versions_removed, report.pages_removed, report.blocks_removed, report.block_bytes_freed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { json } => {
            let store = open_for_reading(&cli.global)?;
            let s = store.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("device:        {}", store.device());
                println!("files:         {} ({} bytes)", s.files, s.logical_bytes);
                println!("directories:   {}", s.dirs);
                println!("symlinks:      {}", s.symlinks);
                println!("blocks:        {} ({} bytes, deduplicated)", s.blocks, s.block_bytes);
                println!("versions:      {}", s.versions);
                println!("tombstones:    {}", s.tombstones);
                println!("sequence:      {}", s.seq);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Signal { listen, tls_cert, tls_key } => {
            group::signal(&data_dir(&cli.global)?, &listen, tls_cert.as_deref().zip(tls_key.as_deref()))
        }
        Command::Init { name, server, group_name } => group::init(&data_dir(&cli.global)?, &name, &server, &group_name),
        Command::Devices { json } => group::devices(&data_dir(&cli.global)?, json),
        Command::Invite { yes, read_only } => group::invite(&data_dir(&cli.global)?, yes, read_only),
        Command::Remove { device } => group::remove(&data_dir(&cli.global)?, &device),
        Command::Join { code, name, server } => group::join(&data_dir(&cli.global)?, &code, &name, &server),
        Command::Mount { mountpoint, foreground, options } => {
            let args = daemon::DaemonArgs {
                config: cli.global.config.clone(),
                log_level: cli.global.log_level.clone(),
                options,
            };
            daemon::mount(&data_dir(&cli.global)?, &mountpoint, foreground, &args)
        }
        Command::Unmount { mountpoint, lazy } => daemon::unmount(&mountpoint, lazy),
        Command::Status { json, watch } => status::command(&data_dir(&cli.global)?, json, watch),
        Command::Revert { paths, all } => status::revert_command(&data_dir(&cli.global)?, paths, all),
        Command::Store(cmd) => run_store(&cli.global, cmd).map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "psync", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: None } => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("wrote man pages into {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_store(global: &Global, cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Import { source } => {
            let dir = data_dir(global)?;
            psync::data_dir::prepare(&dir)?;
            // A device of a group is known by its key; one without a group
            // gets a random id.
            let device = match group::sync_setup(&dir)? {
                Some(setup) => setup.key.public().device_id(),
                None => DeviceId(rand::random()),
            };
            let store = Store::open_or_create(&dir, device)?;
            let mut count = ImportCount::default();
            import_dir(&store, &source, ROOT_INO, &mut count)?;
            store.sync()?;
            println!(
                "imported {} files ({} new versions), {} directories, {} symlinks from {}",
                count.files,
                count.versions,
                count.dirs,
                count.symlinks,
                source.display()
            );
        }
        StoreCommand::Export { dest } => {
            let store = open_for_reading(global)?;
            std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
            let root = beneath::open_root(&dest).with_context(|| format!("cannot open {}", dest.display()))?;
            let n = export_dir(&store, ROOT_INO, &root, &dest)?;
            println!("exported {n} entries to {}", dest.display());
        }
        StoreCommand::Ls { path } => {
            let store = open_for_reading(global)?;
            let dir = store.resolve(path.as_bytes()).with_context(|| format!("{path:?}"))?;
            let mut after: Option<Vec<u8>> = None;
            loop {
                let entries = store.read_dir(dir.ino, after.as_deref(), 256)?;
                let Some((last, _)) = entries.last() else { break };
                after = Some(last.clone());
                for (name, entry) in &entries {
                    let node = store.inode(entry.ino)?;
                    let kind = match node.kind {
                        NodeKind::File => '-',
                        NodeKind::Dir => 'd',
                        NodeKind::Symlink => 'l',
                        NodeKind::Fifo => 'p',
                        NodeKind::Socket => 's',
                        NodeKind::CharDevice => 'c',
                        NodeKind::BlockDevice => 'b',
                    };
                    println!("{kind}{:04o} {:>10} {}", node.perm, node.size(), String::from_utf8_lossy(name));
                }
            }
        }
        StoreCommand::Cat { path } => {
            let store = open_for_reading(global)?;
            let node = store.resolve(path.as_bytes()).with_context(|| format!("{path:?}"))?;
            let mut out = std::io::stdout().lock();
            let mut offset = 0;
            while offset < node.size() {
                let chunk = store.read(node.ino, offset, (1 << 20) as u32)?;
                if chunk.is_empty() {
                    break;
                }
                out.write_all(&chunk)?;
                offset += chunk.len() as u64;
            }
            out.flush()?;
        }
        StoreCommand::Log { path, json } => {
            let store = open_for_reading(global)?;
            let node = store.resolve(path.as_bytes()).with_context(|| format!("{path:?}"))?;
            let versions = store.versions(node.file_id)?;
            if json {
                let rows: Vec<_> = versions
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "version": v.seq,
                            "size": v.content.size,
                            "committed_at": v.committed_at.secs,
                            "path": String::from_utf8_lossy(&v.path),
                            "current": v.seq == node.committed_seq,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:>8}  {:>12}  {:<20}  path", "version", "size", "committed (UTC)");
                for v in &versions {
                    let mark = if v.seq == node.committed_seq { " (current)" } else { "" };
                    println!(
                        "{:>8}  {:>12}  {:<20}  {}{mark}",
                        v.seq,
                        v.content.size,
                        utc(v.committed_at.secs),
                        String::from_utf8_lossy(&v.path)
                    );
                }
            }
        }
        StoreCommand::Restore { path, version } => {
            let store = open_existing(global)?;
            let node = store.resolve(path.as_bytes()).with_context(|| format!("{path:?}"))?;
            let old =
                store.version(node.file_id, version).with_context(|| format!("no version {version} of {path:?}"))?;
            let seq = store.restore(node.ino, old.seq, Timestamp::now())?;
            println!("restored {path:?} to version {version} (now version {})", seq.unwrap_or(node.committed_seq));
        }
    }
    Ok(())
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC), without a date crate.
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[derive(Default)]
struct ImportCount {
    files: u64,
    versions: u64,
    dirs: u64,
    symlinks: u64,
}

fn name_bytes(name: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes().to_vec()
}

fn import_dir(store: &Store, source: &Path, parent: u64, count: &mut ImportCount) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut entries: Vec<_> = std::fs::read_dir(source)
        .with_context(|| format!("cannot read {}", source.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = name_bytes(&entry.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        let perm = meta.permissions().mode() & 0o7777;
        let now = Timestamp::now();
        let existing = match store.lookup(parent, &name) {
            Ok(node) => Some(node),
            Err(psync_store::StoreError::NotFound) => None,
            Err(e) => return Err(e).with_context(|| format!("looking up {}", path.display())),
        };
        let ctx = || format!("importing {}", path.display());
        if meta.is_dir() {
            let dir = match existing {
                Some(node) if node.kind == NodeKind::Dir => node,
                Some(_) => bail!("{}: a non-directory of that name is already in the store", path.display()),
                None => {
                    count.dirs += 1;
                    store
                        .create(parent, &name, NewNode::Dir, NodeAttrs { perm, uid: meta.uid(), gid: meta.gid() }, now)
                        .with_context(ctx)?
                }
            };
            import_dir(store, &path, dir.ino, count)?;
        } else if meta.file_type().is_symlink() {
            if existing.is_none() {
                let target = std::fs::read_link(&path)?;
                store
                    .create(
                        parent,
                        &name,
                        NewNode::Symlink(&name_bytes(target.as_os_str())),
                        NodeAttrs { perm: 0o777, uid: meta.uid(), gid: meta.gid() },
                        now,
                    )
                    .with_context(ctx)?;
                count.symlinks += 1;
            }
        } else if meta.is_file() {
            let node = match existing {
                Some(node) if node.kind == NodeKind::File => node,
                Some(_) => bail!("{}: a non-file of that name is already in the store", path.display()),
                None => store
                    .create(parent, &name, NewNode::File, NodeAttrs { perm, uid: meta.uid(), gid: meta.gid() }, now)
                    .with_context(ctx)?,
            };
            count.files += 1;
            if copy_in(store, node.ino, &path, now).with_context(ctx)? && store.commit(node.ino, now, false)?.is_some()
            {
                count.versions += 1;
            }
        }
    }
    Ok(())
}

/// Copies `path` into file `ino` in 1 MiB pieces (memory stays bounded);
/// returns whether anything changed.
fn copy_in(store: &Store, ino: u64, path: &Path, now: Timestamp) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    // The entry was seen as a regular file: never follow a symlink put in
    // its place since, nor wait on a FIFO.
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    let mut changed = false;
    loop {
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        let current = store.read(ino, offset, n as u32)?;
        if current != buf[..n] {
            store.write(ino, offset, &buf[..n], now)?;
            changed = true;
        }
        offset += n as u64;
    }
    if store.inode(ino)?.content.size != offset {
        store.truncate(ino, offset, now)?;
        changed = true;
    }
    // A new empty file is a change too (its first version).
    Ok(changed || store.inode(ino)?.dirty)
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Writes the tree under `dir` into the directory `dest` (shown as
/// `shown`). Nothing outside `dest` is touched: every entry is made
/// relative to its parent's descriptor and no symlink in `dest` is
/// followed (one where a file goes is replaced, one where a folder goes is
/// an error).
fn export_dir(store: &Store, dir: u64, dest: &std::os::fd::OwnedFd, shown: &Path) -> Result<u64> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fchmod, mkdirat, Mode, SFlag};
    use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
    use std::os::unix::ffi::OsStrExt;
    let mut n = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let entries = store.read_dir(dir, after.as_deref(), 256)?;
        let Some((last, _)) = entries.last() else { break };
        after = Some(last.clone());
        for (name, entry) in entries {
            let name = std::ffi::OsStr::from_bytes(&name);
            let target = shown.join(name);
            let node = store.inode(entry.ino)?;
            let existing = beneath::kind_at(dest, name).with_context(|| format!("{}", target.display()))?;
            let in_the_way = |what: &str| anyhow::anyhow!("{}: {what} is in the way; not replaced", target.display());
            match node.kind {
                NodeKind::Dir => {
                    match existing {
                        None => mkdirat(dest, name, Mode::from_bits_truncate(0o755))
                            .with_context(|| format!("cannot create {}", target.display()))?,
                        Some(SFlag::S_IFDIR) => {}
                        Some(_) => return Err(in_the_way("something other than a folder")),
                    }
                    let child = beneath::child_dir(dest, name).with_context(|| format!("{}", target.display()))?;
                    n += export_dir(store, node.ino, &child, &target)?;
                }
                // Local-only nodes (FIFOs, sockets, devices) are not exported.
                NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDevice | NodeKind::BlockDevice => continue,
                NodeKind::Symlink | NodeKind::File => {
                    match existing {
                        Some(SFlag::S_IFDIR) => return Err(in_the_way("a folder")),
                        // Replaced, never written through.
                        Some(SFlag::S_IFLNK) => unlinkat(dest, name, UnlinkatFlags::NoRemoveDir)
                            .with_context(|| format!("cannot replace {}", target.display()))?,
                        _ => {}
                    }
                    if node.kind == NodeKind::Symlink {
                        if existing.is_some_and(|k| k != SFlag::S_IFLNK) {
                            unlinkat(dest, name, UnlinkatFlags::NoRemoveDir)
                                .with_context(|| format!("cannot replace {}", target.display()))?;
                        }
                        symlinkat(node.symlink.as_slice(), dest, name)
                            .with_context(|| format!("cannot create {}", target.display()))?;
                    } else {
                        let flags = OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_TRUNC
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_NONBLOCK
                            | OFlag::O_CLOEXEC;
                        let fd = openat(dest, name, flags, Mode::from_bits_truncate(0o600))
                            .with_context(|| format!("cannot write {}", target.display()))?;
                        let stat = nix::sys::stat::fstat(&fd)?;
                        if beneath::file_type(&stat) != SFlag::S_IFREG {
                            return Err(in_the_way("something other than a file"));
                        }
                        let mut out = std::fs::File::from(fd);
                        let mut offset = 0;
                        while offset < node.content.size {
                            let chunk = store.read(node.ino, offset, 1 << 20)?;
                            out.write_all(&chunk)?;
                            offset += chunk.len() as u64;
                        }
                        fchmod(&out, Mode::from_bits_truncate(node.perm & 0o7777))?;
                    }
                }
            }
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_620_909), "2026-11-25 15:35:09");
    }
}
