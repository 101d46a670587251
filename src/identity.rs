//! This device's identity and its copy of the group's roster, as files in
//! the data dir (written by `psync init`/`join`, read by the daemon).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use psync_base::{codec, ContentHash};
use psync_signal::dtls::DtlsCertificate;
use psync_signal::{DeviceKey, Roster, RosterEntry};
use serde::{Deserialize, Serialize};

use crate::data_dir::{IDENTITY_FILE, KEY_FILE, ROSTER_FILE};

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
    }))
}
