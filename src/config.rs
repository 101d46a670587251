//! The daemon's settings: defaults, then a TOML config file, then the
//! `PSYNC_ICE_BIND` environment variable, then command-line flags (each
//! later source wins). The file is the first that exists of `--config FILE`,
//! `DATA_DIR/config.toml` (one per device, so several devices can live on
//! one machine) and `$XDG_CONFIG_HOME/psync/config.toml`.
//!
//! ```toml
//! debounce_ms = 100          # a lone change goes at once; more within this window after it go together
//! upload_limit = "2MiB"      # per second; "0" or absent: unlimited
//! download_limit = "10MiB"
//! log_level = "info"         # or a RUST_LOG-style filter; RUST_LOG wins
//!
//! [ice]
//! bind = "auto"              # every usable interface (default), "loopback", or ["192.168.1.20:0"]
//! # Added to what the signalling server hands out; TURN needs credentials.
//! servers = ["stun:stun.example.org:3478",
//!            { urls = ["turn:turn.example.org:3478"], username = "me", credential = "secret" }]
//! from_signalling_server = true  # false: only the servers above
//! relay_only = false         # true: always through TURN; peers never see this device's address
//!
//! [relay]
//! upload_delay_ms = 5000     # how long a change waits for every member to take it directly
//!                            # before it goes to the relay (a sleep or an unmount sends at once)
//!
//! [history]                  # pruned by the daemon while mounted (and by `psync gc`)
//! keep_days = 30             # every version younger than this is kept
//! keep_versions = 16         # and at least this many of each file
//! prune_every_secs = 21600   # how often the daemon prunes
//!
//! [xattrs]
//! sync = true                # user.* extended attributes travel with files; false: they stay on this device
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use psync_signal::ice::{is_ice_url, is_unsupported_turn, IceServer};
use serde::{Deserialize, Serialize};

/// The config file's name in the data dir and the XDG config dir.
pub use crate::data_dir::CONFIG_FILE;
/// Where WebRTC binds, overriding the file: `auto`, `loopback`, or
/// comma-separated addresses.
pub const ICE_BIND_ENV: &str = "PSYNC_ICE_BIND";
/// Larger than any sane debounce: a typo like `debounce_ms = 100000000` is refused.
pub const DEBOUNCE_MS_MAX: u64 = 60_000;
/// How long a change waits for every member before it goes to the relay,
/// by default (milliseconds).
pub const RELAY_UPLOAD_DELAY_MS: u64 = 5_000;
/// The longest such wait a config may ask for (milliseconds: one hour).
const RELAY_UPLOAD_DELAY_MS_MAX: u64 = 3_600_000;
/// Versions younger than this are kept, by default (days).
pub const HISTORY_KEEP_DAYS: u64 = 30;
/// At least this many versions of each file are kept, by default (count).
pub const HISTORY_KEEP_VERSIONS: usize = 16;
/// How often the daemon prunes history while mounted, by default (seconds: six hours).
pub const HISTORY_PRUNE_EVERY_SECS: u64 = 6 * 3600;
/// The longest history a config may ask for (days: a hundred years; beyond, overflow).
const HISTORY_KEEP_DAYS_MAX: u64 = 36_500;

/// Where WebRTC binds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IceBind {
    /// Every usable interface, looked up again for each connection (so a
    /// new network is used at once).
    Auto,
    /// These addresses (port 0 for any); loopback pins tests and the demo.
    Addrs(Vec<SocketAddr>),
}

impl IceBind {
    /// 127.0.0.1, any port: what tests and the local demo pin.
    pub fn loopback() -> Self {
        IceBind::Addrs(vec![SocketAddr::from(([127, 0, 0, 1], 0))])
    }

    /// The addresses, or `None` for `Auto`.
    pub fn addrs(&self) -> Option<&[SocketAddr]> {
        match self {
            IceBind::Auto => None,
            IceBind::Addrs(addrs) => Some(addrs),
        }
    }
}

/// Where the transport binds and which servers help it through NATs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceConfig {
    /// Where to bind.
    pub bind: IceBind,
    /// STUN/TURN servers of the config file.
    pub servers: Vec<IceServer>,
    /// Also use the servers the signalling server hands out.
    pub use_server_list: bool,
    /// Only relayed connections (hides this device's addresses from peers).
    pub relay_only: bool,
}

impl IceConfig {
    /// Every interface, the signalling server's STUN/TURN servers: what
    /// two machines need to find each other.
    pub fn defaults() -> Self {
        Self { bind: IceBind::Auto, servers: Vec::new(), use_server_list: true, relay_only: false }
    }

    /// Loopback only, no servers: the tests and the local demo.
    pub fn loopback() -> Self {
        Self { bind: IceBind::loopback(), servers: Vec::new(), use_server_list: false, relay_only: false }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    debounce_ms: Option<u64>,
    upload_limit: Option<String>,
    download_limit: Option<String>,
    log_level: Option<String>,
    allow_other: Option<bool>,
    #[serde(default)]
    ice: IceSection,
    #[serde(default)]
    relay: RelaySection,
    #[serde(default)]
    history: HistorySection,
    #[serde(default)]
    xattrs: XattrSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct XattrSection {
    sync: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistorySection {
    keep_days: Option<u64>,
    keep_versions: Option<usize>,
    prune_every_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySection {
    upload_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IceSection {
    bind: Option<BindSetting>,
    servers: Option<Vec<ServerSetting>>,
    from_signalling_server: Option<bool>,
    relay_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BindSetting {
    Word(String),
    Addrs(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServerSetting {
    Url(String),
    WithCredentials { urls: Vec<String>, username: Option<String>, credential: Option<String> },
}

/// What `psync mount` takes on its command line (each overrides the file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MountOptions {
    /// Local changes within this window go out as one update [default: 100].
    #[arg(long, value_name = "MS")]
    pub debounce_ms: Option<u64>,
    /// Upload limit per second, e.g. 500KiB or 2MiB; 0 for none [default: none].
    #[arg(long, value_name = "RATE", value_parser = rate_arg)]
    pub upload_limit: Option<String>,
    /// Download limit per second, e.g. 500KiB or 2MiB; 0 for none [default: none].
    #[arg(long, value_name = "RATE", value_parser = rate_arg)]
    pub download_limit: Option<String>,
    /// Let other users use the mount (as its permissions allow); by default
    /// only its owner (and root) may [needs root or user_allow_other in /etc/fuse.conf].
    #[arg(long)]
    pub allow_other: bool,
}

impl MountOptions {
    /// The same options as arguments, for the detached daemon.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(ms) = self.debounce_ms {
            args.extend(["--debounce-ms".to_string(), ms.to_string()]);
        }
        if let Some(rate) = &self.upload_limit {
            args.extend(["--upload-limit".to_string(), rate.clone()]);
        }
        if let Some(rate) = &self.download_limit {
            args.extend(["--download-limit".to_string(), rate.clone()]);
        }
        if self.allow_other {
            args.push("--allow-other".to_string());
        }
        args
    }
}

/// The settings in force, as `psync status` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
    /// Local changes within this window go out as one update.
    pub debounce_ms: u64,
    /// Bytes per second served to peers; `None`: unlimited.
    pub upload_bytes_per_sec: Option<u64>,
    /// Bytes per second fetched from peers; `None`: unlimited.
    pub download_bytes_per_sec: Option<u64>,
    /// The log filter when `RUST_LOG` is not set.
    pub log_level: Option<String>,
    /// Where WebRTC binds.
    pub ice_bind: IceBind,
    /// The config file's STUN/TURN URLs (credentials are not shown).
    pub ice_servers: Vec<String>,
    /// The signalling server's STUN/TURN servers are used too.
    #[serde(default)]
    pub ice_from_signalling_server: bool,
    /// Only relayed connections.
    #[serde(default)]
    pub ice_relay_only: bool,
    /// The config file's servers with their credentials (never shown).
    #[serde(skip)]
    pub ice_server_credentials: Vec<IceServer>,
    /// Other users may use the mount (`allow_other`); off unless asked for.
    #[serde(default)]
    pub allow_other: bool,
    /// How long a change waits for every member to take it directly before
    /// it goes to the relay (milliseconds).
    #[serde(default)]
    pub relay_upload_delay_ms: u64,
    /// History kept: versions younger than this many days.
    #[serde(default)]
    pub history_keep_days: u64,
    /// History kept: at least this many versions of each file.
    #[serde(default)]
    pub history_keep_versions: usize,
    /// How often the daemon prunes history while mounted (seconds).
    #[serde(default)]
    pub history_prune_every_secs: u64,
    /// `user.*` extended attributes travel with files (`[xattrs] sync`).
    #[serde(default)]
    pub xattrs_sync: bool,
}

impl Settings {
    /// For the transport.
    pub fn ice(&self) -> IceConfig {
        IceConfig {
            bind: self.ice_bind.clone(),
            servers: self.ice_server_credentials.clone(),
            use_server_list: self.ice_from_signalling_server,
            relay_only: self.ice_relay_only,
        }
    }
}

/// Which config file applies: `explicit` must exist; the others are used if present.
pub fn locate(explicit: Option<&Path>, data_dir: &Path) -> Result<Option<PathBuf>> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("config file {} does not exist", path.display());
        }
        return Ok(Some(path.to_path_buf()));
    }
    let in_data_dir = data_dir.join(CONFIG_FILE);
    if in_data_dir.is_file() {
        return Ok(Some(in_data_dir));
    }
    let xdg = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")),
    };
    Ok(xdg.map(|dir| dir.join("psync").join(CONFIG_FILE)).filter(|p| p.is_file()))
}

/// The settings the next mount of `data_dir` would read (its config file,
/// with no flags): what is in force when no daemon says otherwise.
pub fn saved(explicit: Option<&Path>, data_dir: &Path) -> Result<Settings> {
    load(locate(explicit, data_dir)?.as_deref(), &MountOptions::default())
}

/// Reads the settings: the file (if any), the environment, then `flags`.
pub fn load(file: Option<&Path>, flags: &MountOptions) -> Result<Settings> {
    let parsed = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<ConfigFile>(&text).with_context(|| format!("config file {}", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let in_file = |what: &str| match file {
        Some(path) => format!("{what} in {}", path.display()),
        None => what.to_string(),
    };
    let mut ice = IceConfig::defaults();
    if let Some(bind) = &parsed.ice.bind {
        ice.bind = match bind {
            BindSetting::Word(word) => parse_bind(word.split(',')),
            BindSetting::Addrs(list) => parse_bind(list.iter().map(String::as_str)),
        }
        .with_context(|| in_file("[ice] bind"))?;
    }
    if let Some(servers) = parsed.ice.servers {
        ice.servers =
            servers.into_iter().map(ice_server).collect::<Result<_>>().with_context(|| in_file("[ice] servers"))?;
    }
    ice.use_server_list = parsed.ice.from_signalling_server.unwrap_or(true);
    ice.relay_only = parsed.ice.relay_only.unwrap_or(false);
    if let Ok(list) = std::env::var(ICE_BIND_ENV) {
        ice.bind = parse_bind(list.split(',')).with_context(|| format!("environment variable {ICE_BIND_ENV}"))?;
    }
    let (debounce_ms, debounce_from) = match (flags.debounce_ms, parsed.debounce_ms) {
        (Some(ms), _) => (ms, "--debounce-ms".to_string()),
        (None, Some(ms)) => (ms, in_file("debounce_ms")),
        (None, None) => (100, String::new()),
    };
    if debounce_ms > DEBOUNCE_MS_MAX {
        bail!("{debounce_from}: {debounce_ms} ms is more than the maximum of {DEBOUNCE_MS_MAX} ms");
    }
    let rate = |flag: &Option<String>, in_config: &Option<String>, name: &str| -> Result<Option<u64>> {
        match (flag, in_config) {
            (Some(text), _) => parse_rate(text).with_context(|| format!("--{}", name.replace('_', "-"))),
            (None, Some(text)) => parse_rate(text).with_context(|| in_file(name)),
            (None, None) => Ok(None),
        }
    };
    let relay_upload_delay_ms = parsed.relay.upload_delay_ms.unwrap_or(RELAY_UPLOAD_DELAY_MS);
    if relay_upload_delay_ms > RELAY_UPLOAD_DELAY_MS_MAX {
        bail!(
            "{}: {relay_upload_delay_ms} ms is more than the maximum of {RELAY_UPLOAD_DELAY_MS_MAX} ms",
            in_file("[relay] upload_delay_ms")
        );
    }
    let history_keep_days = parsed.history.keep_days.unwrap_or(HISTORY_KEEP_DAYS);
    if history_keep_days > HISTORY_KEEP_DAYS_MAX {
        bail!("{}: more than the maximum of {HISTORY_KEEP_DAYS_MAX} days", in_file("[history] keep_days"));
    }
    let history_prune_every_secs = parsed.history.prune_every_secs.unwrap_or(HISTORY_PRUNE_EVERY_SECS);
    if history_prune_every_secs == 0 {
        bail!("{}: must be at least 1", in_file("[history] prune_every_secs"));
    }
    if let Some(level) = &parsed.log_level {
        parse_log_level(level).map_err(anyhow::Error::msg).with_context(|| in_file("log_level"))?;
    }
    Ok(Settings {
        config_file: file.map(Path::to_path_buf),
        debounce_ms,
        upload_bytes_per_sec: rate(&flags.upload_limit, &parsed.upload_limit, "upload_limit")?,
        download_bytes_per_sec: rate(&flags.download_limit, &parsed.download_limit, "download_limit")?,
        log_level: parsed.log_level,
        ice_bind: ice.bind,
        ice_servers: ice.servers.iter().flat_map(|s| s.urls.iter().cloned()).collect(),
        ice_from_signalling_server: ice.use_server_list,
        ice_relay_only: ice.relay_only,
        ice_server_credentials: ice.servers,
        allow_other: flags.allow_other || parsed.allow_other.unwrap_or(false),
        relay_upload_delay_ms,
        history_keep_days,
        history_keep_versions: parsed.history.keep_versions.unwrap_or(HISTORY_KEEP_VERSIONS).max(1),
        history_prune_every_secs,
        xattrs_sync: parsed.xattrs.sync.unwrap_or(true),
    })
}

/// A rate flag is checked as it is parsed (and kept as written, for the daemon).
pub(crate) fn rate_arg(text: &str) -> Result<String, String> {
    parse_rate(text).map(|_| text.to_string()).map_err(|e| format!("{e:#}"))
}

/// A level name, or a filter with `target=level` directives.
pub fn parse_log_level(text: &str) -> Result<String, String> {
    let plain = ["off", "error", "warn", "info", "debug", "trace"];
    if plain.contains(&text.to_ascii_lowercase().as_str()) || text.contains('=') {
        tracing_subscriber::EnvFilter::try_new(text).map(|_| text.to_string()).map_err(|e| e.to_string())
    } else {
        Err(format!("{text:?}: want one of {} or a filter like psync=debug", plain.join(", ")))
    }
}

/// `auto`, `loopback`, or addresses.
fn parse_bind<'a>(mut list: impl Iterator<Item = &'a str>) -> Result<IceBind> {
    let addrs: Vec<&str> = list.by_ref().map(str::trim).filter(|a| !a.is_empty()).collect();
    match addrs.as_slice() {
        ["auto"] => Ok(IceBind::Auto),
        ["loopback"] => Ok(IceBind::loopback()),
        [] => bail!("no address to bind (want \"auto\", \"loopback\" or IP:PORT addresses)"),
        _ => addrs
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>().with_context(|| format!("bad address {a:?} (want IP:PORT, auto or loopback)"))
            })
            .collect::<Result<_>>()
            .map(IceBind::Addrs),
    }
}

/// One `[ice] servers` entry: a URL, or a table with credentials (TURN
/// needs them: the WebRTC stack refuses a TURN server without).
fn ice_server(setting: ServerSetting) -> Result<IceServer> {
    let server = match setting {
        ServerSetting::Url(url) => IceServer::open(vec![url]),
        ServerSetting::WithCredentials { urls, username, credential } => IceServer { urls, username, credential },
    };
    for url in &server.urls {
        if !is_ice_url(url) {
            bail!("{url:?} is not a stun: or turn: URL");
        }
        if is_unsupported_turn(url) {
            bail!("{url:?}: PSync relays over UDP only (its WebRTC stack skips TLS and TCP TURN); use a turn: URL");
        }
        if url.starts_with("turn") && (server.username.is_none() || server.credential.is_none()) {
            bail!("{url:?} needs a username and credential: {{ urls = [{url:?}], username = \"...\", credential = \"...\" }}");
        }
    }
    if server.urls.is_empty() {
        bail!("an entry has no urls");
    }
    Ok(server)
}

/// `"2MiB"`, `"500KiB"`, `"1.5MB"`, `"300000"` (bytes) per second; `"0"`: unlimited.
pub fn parse_rate(text: &str) -> Result<Option<u64>> {
    let text = text.trim().trim_end_matches("/s");
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let Ok(number) = number.parse::<f64>() else { bail!("{text:?} is not a rate like 500KiB or 2MiB") };
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown unit {other:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB or GB)"),
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        bail!("{text:?} is too large");
    }
    Ok(match bytes as u64 {
        0 => None,
        // Below one block a second, a transfer would never make progress.
        b if b < psync_store::BLOCK_SIZE => bail!("{text:?} is below the minimum of 64KiB per second"),
        b => Some(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn rates_take_common_units_and_zero_means_unlimited() {
        assert_eq!(parse_rate("2MiB").unwrap(), Some(2 << 20));
        assert_eq!(parse_rate("500 KiB/s").unwrap(), Some(500 * 1024));
        assert_eq!(parse_rate("1.5MB").unwrap(), Some(1_500_000));
        assert_eq!(parse_rate("100000").unwrap(), Some(100_000));
        assert_eq!(parse_rate("0").unwrap(), None);
        for bad in ["", "fast", "10 parsecs", "-1MiB", "1KiB", "1e30GiB"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_without_a_file_bind_every_interface_and_are_unlimited() {
        let s = load(None, &MountOptions::default()).unwrap();
        assert_eq!(s.debounce_ms, 100);
        assert_eq!((s.upload_bytes_per_sec, s.download_bytes_per_sec), (None, None));
        if std::env::var_os(ICE_BIND_ENV).is_none() {
            assert_eq!(s.ice_bind, IceBind::Auto);
        }
        assert!(s.ice_servers.is_empty());
        assert!(s.ice_from_signalling_server && !s.ice_relay_only);
    }

    #[test]
    fn ice_servers_take_credentials_and_a_turn_url_without_them_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "[ice]\nbind = \"loopback\"\nrelay_only = true\nfrom_signalling_server = false\n\
             servers = [\"stun:a.example:3478\", { urls = [\"turn:b.example:3478\"], username = \"u\", credential = \"p\" }]\n",
        );
        let s = load(Some(&path), &MountOptions::default()).unwrap();
        assert!(s.ice_relay_only && !s.ice_from_signalling_server);
        assert_eq!(s.ice_servers, ["stun:a.example:3478", "turn:b.example:3478"]);
        let ice = s.ice();
        assert_eq!(ice.servers[1].credential.as_deref(), Some("p"));
        assert_eq!(ice.bind, IceBind::Addrs(vec!["127.0.0.1:0".parse().unwrap()]));
        let shown = serde_json::to_string(&s).unwrap();
        assert!(!shown.contains("\"p\""), "credentials never reach status: {shown}");
        let path = write(dir.path(), "[ice]\nservers = [\"turn:b.example:3478\"]\n");
        let err = format!("{:#}", load(Some(&path), &MountOptions::default()).unwrap_err());
        assert!(err.contains("needs a username and credential"), "{err}");
    }

    #[test]
    fn the_file_sets_values_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "debounce_ms = 250\nupload_limit = \"1MiB\"\nlog_level = \"debug\"\n\
             [ice]\nbind = [\"127.0.0.2:0\", \"[::1]:0\"]\nservers = [\"stun:stun.example.org:3478\"]\n",
        );
        assert_eq!(locate(None, dir.path()).unwrap(), Some(path.clone()));
        let s = load(Some(&path), &MountOptions::default()).unwrap();
        assert_eq!(s.debounce_ms, 250);
        assert_eq!(s.upload_bytes_per_sec, Some(1 << 20));
        assert_eq!(s.log_level.as_deref(), Some("debug"));
        assert!(matches!(&s.ice_bind, IceBind::Addrs(a) if a.len() == 2), "{:?}", s.ice_bind);
        assert_eq!(s.ice_servers, vec!["stun:stun.example.org:3478"]);

        let flags = MountOptions {
            debounce_ms: Some(0),
            upload_limit: Some("0".into()),
            download_limit: Some("3MiB".into()),
            allow_other: false,
        };
        let s = load(Some(&path), &flags).unwrap();
        assert_eq!((s.debounce_ms, s.upload_bytes_per_sec, s.download_bytes_per_sec), (0, None, Some(3 << 20)));
        // The detached daemon gets the same flags back.
        assert_eq!(flags.to_args(), ["--debounce-ms", "0", "--upload-limit", "0", "--download-limit", "3MiB"]);
    }

    #[test]
    fn mistakes_in_the_file_are_clear_errors_that_name_it() {
        let dir = tempfile::tempdir().unwrap();
        for (text, says) in [
            ("debounce = 5\n", "unknown field `debounce`"),
            ("debounce_ms = \"fast\"\n", "debounce_ms"),
            ("upload_limit = \"lots\"\n", "upload_limit"),
            ("[ice]\nbind = [\"localhost\"]\n", "localhost"),
            ("[ice]\nbind = []\n", "no address"),
            ("[ice]\nservers = [\"http://x\"]\n", "not a stun:"),
            (
                "[ice]\nservers = [{ urls = [\"turns:t.example:5349\"], username = \"u\", credential = \"c\" }]\n",
                "over UDP only",
            ),
            ("debounce_ms = 99999999\n", "maximum"),
            ("log_level = \"loud\"\n", "log_level"),
            ("this is not toml", "config file"),
        ] {
            let path = write(dir.path(), text);
            let err = format!("{:#}", load(Some(&path), &MountOptions::default()).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.contains(&path.display().to_string()), "{text:?}: {err}");
        }
        assert!(locate(Some(&dir.path().join("missing.toml")), dir.path()).is_err());
    }
}
