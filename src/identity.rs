//! This device's identity and its copy of the group's roster, as files in
//! the data dir (written by `psync init`/`join`, read by the daemon).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use psync_base::{codec, ContentHash};
use psync_signal::dtls::DtlsCertificate;
use psync_signal::{DeviceKey, Roster, RosterEntry};
use serde::{Deserialize, Serialize};

use psync_signal::relay::seal::{ContentKey, Keyring};

use crate::data_dir::{GROUP_KEY_FILE, IDENTITY_FILE, KEY_FILE, ROSTER_FILE};

/// What `psync init` (and later `psync join`) records about this device.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub name: String,
    pub server: String,
    pub group: String,
}

/// Writes a new device's key, DTLS certificate, the group's roster and its identity record.
pub(crate) fn save_identity(
    data_dir: &Path,
    key: &DeviceKey,
    dtls: &DtlsCertificate,
    roster: &Roster,
    name: &str,
    server: &str,
) -> Result<()> {
    key.save(&data_dir.join(KEY_FILE))?;
    dtls.save(data_dir)?;
    save_roster(data_dir, roster.entries())?;
    let identity = Identity { name: name.to_string(), server: server.to_string(), group: roster.group_id().to_hex() };
    // Written last, whole or not at all: the identity exists once this file does.
    crate::data_dir::replace_file(&data_dir.join(IDENTITY_FILE), &serde_json::to_vec_pretty(&identity)?)
}

/// What an `init` or `join` interrupted before its identity file was
/// written leaves in a data dir (keys included): moved aside, never
/// deleted, so that a new attempt can start. Returns where, if anything was there.
pub(crate) fn set_aside_unfinished(data_dir: &Path) -> Result<Option<PathBuf>> {
    let files = [KEY_FILE, psync_signal::dtls::DTLS_FILE, ROSTER_FILE, GROUP_KEY_FILE];
    let present: Vec<&str> = files.iter().copied().filter(|f| data_dir.join(f).exists()).collect();
    if present.is_empty() || data_dir.join(IDENTITY_FILE).exists() {
        return Ok(None);
    }
    let aside = data_dir.join(format!("unfinished-identity-{}", psync_store::Timestamp::now().secs));
    std::fs::create_dir_all(&aside).with_context(|| format!("cannot create {}", aside.display()))?;
    for file in present {
        std::fs::rename(data_dir.join(file), aside.join(file))
            .with_context(|| format!("cannot move {file} aside into {}", aside.display()))?;
    }
    Ok(Some(aside))
}

/// Replaces the local roster copy (atomically: a crash leaves the old or the new).
pub fn save_roster(data_dir: &Path, entries: &[RosterEntry]) -> Result<()> {
    crate::data_dir::replace_file(&data_dir.join(ROSTER_FILE), &codec::encode(&entries.to_vec())?)
}

/// Key entries in the keyring file: epoch (u32 LE) then the key.
const KEY_ENTRY_BYTES: usize = 36;

/// Writes the group's keyring: its keys one after another, owner only,
/// atomically.
fn save_keyring(data_dir: &Path, ring: &Keyring) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = data_dir.join(format!("{GROUP_KEY_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(ring.keys().len() * KEY_ENTRY_BYTES));
    for key in ring.keys() {
        bytes.extend_from_slice(&key.epoch().to_le_bytes());
        bytes.extend_from_slice(key.bytes());
    }
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(GROUP_KEY_FILE))?;
    Ok(())
}

/// The group's keyring, if this device has one (groups made before the
/// relay existed have none: the relay stays off for them).
pub fn load_keyring(data_dir: &Path) -> Result<Option<Keyring>> {
    let path = data_dir.join(GROUP_KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => zeroize::Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if bytes.is_empty() || bytes.len() % KEY_ENTRY_BYTES != 0 {
        bail!("{} is damaged", path.display());
    }
    let mut ring = Keyring::default();
    for entry in bytes.chunks_exact(KEY_ENTRY_BYTES) {
        let (epoch, key) = entry.split_at(4);
        let epoch = u32::from_le_bytes(epoch.try_into()?);
        ring.add(ContentKey::from_bytes(epoch, key.try_into()?));
    }
    Ok(Some(ring))
}

/// Changes the keyring under a lock (the daemon adds keys others wrapped
/// for it while `psync remove` re-keys): the file is read, changed and
/// written while no one else does. `change` returns whether it changed.
pub fn update_keyring<T>(data_dir: &Path, change: impl FnOnce(&mut Keyring) -> T) -> Result<T> {
    let lock_path = data_dir.join(format!("{GROUP_KEY_FILE}.lock"));
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", lock_path.display()))?;
    let mut ring = load_keyring(data_dir)?.unwrap_or_default();
    let out = change(&mut ring);
    save_keyring(data_dir, &ring)?;
    Ok(out)
}

pub(crate) fn load_roster(data_dir: &Path) -> Result<Vec<RosterEntry>> {
    let bytes = std::fs::read(data_dir.join(ROSTER_FILE)).context("no local roster copy")?;
    Ok(codec::decode(&bytes)?)
}

pub(crate) fn load_identity(data_dir: &Path) -> Result<(Identity, DeviceKey, ContentHash)> {
    let text = std::fs::read(data_dir.join(IDENTITY_FILE)).with_context(|| {
        format!("{} has no device identity; run `psync init` (or `psync join`) first", data_dir.display())
    })?;
    let identity: Identity = serde_json::from_slice(&text).context("identity.json is damaged")?;
    let key = DeviceKey::load(&data_dir.join(KEY_FILE))?;
    let group = ContentHash::from_hex(&identity.group).context("identity.json has a bad group id")?;
    Ok((identity, key, group))
}

/// What the mount daemon needs to sync: present once the device has an
/// identity (`psync init` or `psync join`).
#[derive(Debug)]
pub struct SyncSetup {
    /// This device's name in the group.
    pub name: String,
    /// Signalling server URL.
    pub server: String,
    /// The group id.
    pub group: ContentHash,
    /// This device's key.
    pub key: Arc<DeviceKey>,
    /// Its DTLS certificate.
    pub certificate: Arc<DtlsCertificate>,
    /// The local, verified roster copy (the server's replaces it if longer).
    pub roster: Roster,
    /// The group's content keys (none: the group predates the relay).
    pub keyring: Option<Keyring>,
}

/// `None` when the data dir has no identity yet (the mount then runs
/// without sync); an error when it has one that does not load.
pub fn sync_setup(data_dir: &Path) -> Result<Option<SyncSetup>> {
    if !data_dir.join(IDENTITY_FILE).exists() {
        return Ok(None);
    }
    let (identity, key, group) = load_identity(data_dir)?;
    let certificate = DtlsCertificate::load(data_dir)?;
    let roster = Roster::from_entries(load_roster(data_dir)?).context("the local roster copy does not verify")?;
    if roster.group_id() != group {
        bail!("the local roster copy is for another group than identity.json");
    }
    Ok(Some(SyncSetup {
        name: identity.name,
        server: identity.server,
        group,
        key: Arc::new(key),
        certificate: Arc::new(certificate),
        roster,
        keyring: load_keyring(data_dir)?,
    }))
}
