//! The command line, as clap reads it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use psync_store::GcPolicy;

use crate::config;

/// `psync`: the command line.
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

Try it locally first: ./scripts/demo.sh in the source tree.

Exit codes: 0 done; 1 could not run (the message says why); 2 bad usage;
3 fsck found damage; 4 no daemon serves the data dir; 5 the store is in use
by a running daemon."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Debug)]
pub struct Global {
    /// Where this device keeps its store and configuration.
    /// Default: $XDG_DATA_HOME/psync (~/.local/share/psync).
    #[arg(long, global = true, env = "PSYNC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The config file. Default: DATA_DIR/config.toml, else
    /// $XDG_CONFIG_HOME/psync/config.toml, if either exists.
    #[arg(long, global = true, env = "PSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to log: error, warn, info, debug, trace, or a filter like
    /// psync=debug,webrtc=warn. RUST_LOG, when set, wins. Default: the config
    /// file's log_level, else info for the daemon and warn for commands.
    #[arg(long, global = true, value_name = "LEVEL", value_parser = config::parse_log_level)]
    pub log_level: Option<String>,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// STUN server handed to members, e.g. stun:signal.example.org:3478 (repeatable).
        #[arg(long = "stun", value_name = "URL")]
        stun: Vec<String>,
        /// TURN server handed to members with fresh credentials, e.g.
        /// turn:signal.example.org:3478 (repeatable; needs --turn-secret-file).
        #[arg(long = "turn", value_name = "URL", requires = "turn_secret_file")]
        turn: Vec<String>,
        /// The secret shared with the TURN server (coturn's static-auth-secret), first line of F.
        #[arg(long, value_name = "F", requires = "turn")]
        turn_secret_file: Option<PathBuf>,
        /// How long handed-out TURN credentials last; devices refresh them at half.
        #[arg(long, value_name = "SECS", default_value_t = psync_signal::ice::DEFAULT_TURN_TTL_SECS)]
        turn_ttl: u64,
        /// Also keep relay storage: sealed changes members leave for members
        /// that are offline (the relay cannot read them), in a directory or
        /// an S3-compatible bucket, s3://BUCKET/PREFIX (endpoint and keys from
        /// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
        #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
        relay: Option<String>,
        /// What one group may keep on the relay (MiB).
        #[arg(long, value_name = "MIB", default_value_t = psync_signal::relay::policy::DEFAULT_GROUP_QUOTA_BYTES >> 20)]
        relay_quota_mib: u64,
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
        /// One JSON line per step on stdout (code, device, added), for programs.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device (by name or id prefix); peers and the server refuse it.
    Remove {
        /// The device's name or the start of its id.
        device: String,
    },
    /// Make a device read-only (it receives everything; its changes stay on
    /// it) or full again (by name or id prefix).
    Role {
        /// The device's name or the start of its id.
        device: String,
        /// Read-only ("safe mode").
        #[arg(long, conflicts_with = "full", required_unless_present = "full")]
        read_only: bool,
        /// Full: its changes reach the group.
        #[arg(long)]
        full: bool,
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
        /// An empty directory to mount on (with --adopt, a folder to take in).
        mountpoint: PathBuf,
        /// Stay in the foreground (logs to stderr) instead of detaching.
        #[arg(long)]
        foreground: bool,
        /// The directory is an existing folder (a vault): take its files in
        /// (times and modes kept), keep the original beside it as
        /// DIR.before-psync, and mount at the same path.
        #[arg(long, conflicts_with = "at")]
        adopt: bool,
        /// Mount a read-only view of the vault as it was at this time
        /// ("2026-12-01 10:00", "2026-12-01", "3 hours ago"), beside the
        /// live mount, for browsing and copying out.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
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
    /// A file's versions, oldest first (through the daemon while mounted);
    /// with --deleted, the files deleted (below DIR) and their last version.
    Log {
        /// The file, relative to the mount (with --deleted: a folder, optional).
        #[arg(required_unless_present = "deleted")]
        path: Option<String>,
        /// List deleted files instead; bring one back with `psync restore`.
        #[arg(long)]
        deleted: bool,
        /// As JSON (the same fields as `psync store log --json`).
        #[arg(long)]
        json: bool,
    },
    /// Bring a file back to an earlier version, or a deleted file back (see
    /// `psync log --deleted`): one transaction, a new version that syncs like
    /// any change (through the daemon while mounted).
    Restore {
        /// The file, relative to the mount.
        path: String,
        /// The version (see `psync log PATH`).
        #[arg(long)]
        version: u64,
    },
    /// The ignore rules in force: built-in defaults (Obsidian's per-device
    /// workspace, editor swap and backup files, OS junk), then the lines of
    /// `.psyncignore` at the vault's root (gitignore syntax; a later rule
    /// wins, `!pattern` takes a default back). Ignored paths stay on this
    /// device; a change to `.psyncignore` applies at once.
    Ignore {
        /// List the rules (the default).
        #[arg(long)]
        list: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show or change the debounce window and rate limits: a running daemon
    /// takes the change at once (no remount), and it is saved to the config file.
    Settings {
        /// Local changes within this window go out as one update.
        #[arg(long, value_name = "MS")]
        debounce_ms: Option<u64>,
        /// Upload limit per second, e.g. 500KiB or 2MiB; 0 for none.
        #[arg(long, value_name = "RATE", value_parser = config::rate_arg)]
        upload_limit: Option<String>,
        /// Download limit per second; 0 for none.
        #[arg(long, value_name = "RATE", value_parser = config::rate_arg)]
        download_limit: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set up and run PSync from one terminal screen: a first-run wizard
    /// (found or join a group, name this device, pick the folder, mount),
    /// then a dashboard of folders, peers, changes and actions. `q` quits;
    /// the daemons keep running.
    Tui {
        /// The signalling server the wizard offers, e.g. wss://signal.example.org:7700.
        #[arg(long, env = "PSYNC_SERVER", value_name = "URL")]
        server: Option<String>,
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

/// `psync store ...`.
#[derive(Subcommand, Debug)]
pub enum StoreCommand {
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
