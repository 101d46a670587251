//! This device's identity and its copy of the group's roster, as files in
//! the data dir (written by `psync init`/`join`, read by the daemon).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use psync_base::{codec, ContentHash};
use psync_signal::dtls::DtlsCertificate;
use psync_signal::{DeviceKey, Roster, RosterEntry};
use serde::{Deserialize, Serialize};

use psync_signal::relay::seal::ContentKey;

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
    std::fs::write(data_dir.join(IDENTITY_FILE), serde_json::to_vec_pretty(&identity)?)?;
    Ok(())
}

/// Replaces the local roster copy (atomically: a crash leaves the old or the new).
pub fn save_roster(data_dir: &Path, entries: &[RosterEntry]) -> Result<()> {
    let tmp: PathBuf = data_dir.join(format!("{ROSTER_FILE}.tmp"));
    std::fs::write(&tmp, codec::encode(&entries.to_vec())?)?;
    std::fs::rename(&tmp, data_dir.join(ROSTER_FILE))?;
    Ok(())
}

/// Writes the group's content key: epoch (u32 LE) then the key, owner
/// only, atomically.
pub(crate) fn save_group_key(data_dir: &Path, key: &ContentKey) -> Result<()> {
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
    let mut bytes = zeroize::Zeroizing::new(key.epoch().to_le_bytes().to_vec());
    bytes.extend_from_slice(key.bytes());
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(GROUP_KEY_FILE))?;
    Ok(())
}

/// The group's content key, if this device has one (groups made before
/// the relay existed have none: the relay stays off for them).
pub(crate) fn load_group_key(data_dir: &Path) -> Result<Option<ContentKey>> {
    let path = data_dir.join(GROUP_KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => zeroize::Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (Some(epoch), Some(key)) = (bytes.get(..4), bytes.get(4..)) else { bail!("{} is damaged", path.display()) };
    let epoch = u32::from_le_bytes(epoch.try_into()?);
    let key: [u8; 32] = key.try_into().with_context(|| format!("{} is damaged", path.display()))?;
    Ok(Some(ContentKey::from_bytes(epoch, key)))
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
    /// The group's content key (none: the group predates the relay).
    pub content_key: Option<ContentKey>,
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
        content_key: load_group_key(data_dir)?,
    }))
}
