//! Building a [`Status`] from its parts: the store, the sync loop's
//! snapshot, the roster and what peering knows live.

use anyhow::Result;
use psync_base::DeviceId;
use psync_signal::{readable_id, Role, Roster};
use psync_store::Store;

use super::schema::*;
use crate::clock::mono_ms;
use crate::net::transport::LinkStats;

pub(super) fn held_status(held: &[psync_sync::HeldVersion]) -> Vec<HeldStatus> {
    use psync_sync::HoldReason::*;
    held.iter()
        .take(MAX_LISTED)
        .map(|h| HeldStatus {
            path: h.path.as_str().to_string(),
            reason: h.reason.to_string(),
            kind: match h.reason {
                OpenForWriting => "open_for_writing",
                ChangedMeanwhile => "changed_meanwhile",
                Blocked(_) => "blocked",
                DiskFull => "disk_full",
                StorageFailed(_) => "storage_failed",
                Refused(_) => "refused",
            }
            .into(),
            from: readable_id(&h.from),
            held_secs: mono_ms().saturating_sub(h.since) / 1000,
            attempts: h.attempts,
        })
        .collect()
}

pub(super) fn local_only_status(store: &Store) -> Result<Vec<LocalOnlyStatus>> {
    Ok(store
        .local_only_paths(MAX_LISTED)?
        .into_iter()
        .map(|l| LocalOnlyStatus { path: String::from_utf8_lossy(&l.path).into_owned(), reason: l.reason })
        .collect())
}

/// Live conflict copies, from the sync index alone (no file is opened).
pub(super) fn conflict_copies(store: &Store) -> Result<Vec<String>> {
    let paths = store.live_paths_named(psync_sync::record::CONFLICT_MARKER.as_bytes())?;
    Ok(paths.into_iter().map(|p| String::from_utf8_lossy(&p).into_owned()).collect())
}

/// How far back the change feed looks (local sequence numbers: each is one
/// change made here or installed from a peer).
const RECENT_CHANGES_SCAN: u64 = 256;
/// Changes the feed lists at most (count).
pub const RECENT_CHANGES_LISTED: usize = 20;

/// The latest changes to files, newest first, each with the device that
/// made it (named from the roster, when there is one).
pub(super) fn recent_changes(store: &Store, roster: Option<&Roster>) -> Result<Vec<ChangeRow>> {
    let since = store.current_seq().saturating_sub(RECENT_CHANGES_SCAN);
    let mut rows: Vec<ChangeRow> = store
        .path_versions_since(since, RECENT_CHANGES_SCAN as usize)?
        .into_iter()
        .filter(|(_, v)| v.kind != psync_store::NodeKind::Dir)
        .map(|(seq, v)| {
            let device = v.dot.0;
            let name = roster
                .and_then(|r| r.members().find(|m| m.key.device_id() == device).map(|m| m.name.clone()))
                .unwrap_or_default();
            ChangeRow {
                seq,
                path: String::from_utf8_lossy(&v.path).into_owned(),
                deleted: v.deleted,
                device: name,
                device_id: readable_id(&device),
                this_device: device == store.device(),
                mtime: v.mtime,
            }
        })
        .collect();
    rows.reverse();
    rows.truncate(RECENT_CHANGES_LISTED);
    Ok(rows)
}

/// What the daemon knows of one peer right now.
#[derive(Debug, Default)]
pub(super) struct PeerLive {
    pub online: bool,
    pub linked: bool,
    pub progress: Option<psync_sync::PeerProgress>,
    pub last_seen_secs_ago: Option<u64>,
    pub link: Option<LinkStats>,
}

/// One row per other active member; `state` says what is known of each.
pub(super) fn peers(roster: &Roster, me: DeviceId, state: impl Fn(DeviceId) -> PeerLive) -> Vec<PeerStatus> {
    let mut rows = Vec::new();
    for member in roster.members().filter(|m| !m.removed) {
        let id = member.key.device_id();
        if id == me {
            continue;
        }
        let PeerLive { online, linked, progress, last_seen_secs_ago, link } = state(id);
        let connected = linked && progress.as_ref().is_some_and(|p| p.ready);
        rows.push(PeerStatus {
            name: member.name.clone(),
            id: readable_id(&id),
            role: match member.role {
                Role::Full => "full",
                Role::ReadOnly => "read_only",
            }
            .into(),
            online,
            connected,
            connection: connected.then(|| "webrtc".to_string()),
            path: link.as_ref().and_then(|l| l.path.clone()),
            last_seen_secs_ago,
            in_sync: connected && progress.as_ref().is_some_and(|p| p.in_sync()),
            incoming_records: progress.as_ref().map_or(0, |p| p.incoming()),
            outgoing_records: progress.as_ref().map_or(0, |p| p.outgoing()),
            acked_seq: progress.as_ref().map_or(0, |p| p.acked),
            rtt_ms: link.as_ref().and_then(|l| l.rtt_ms).map(|ms| (ms * 100.0).round() / 100.0),
            bytes_sent: link.as_ref().map(|l| l.bytes_sent),
            bytes_received: link.as_ref().map(|l| l.bytes_received),
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    rows
}

/// The ignore rules the store's `.psyncignore` and the defaults make (what
/// the sync core reads too).
pub fn ignore_list(store: &std::sync::Arc<psync_store::Store>) -> anyhow::Result<super::schema::IgnoreList> {
    use psync_sync::ignore::RuleSource;
    let storage = crate::driver::storage::StoreSync::new(store.clone());
    let (rules, _) = psync_sync::ignore::rules_in(&storage).map_err(|e| anyhow::anyhow!("reading the store: {e}"))?;
    Ok(super::schema::IgnoreList {
        rules: rules
            .rules()
            .iter()
            .map(|r| super::schema::IgnoreRow {
                pattern: r.pattern.clone(),
                from: match r.source {
                    RuleSource::Default(_) => "built in".into(),
                    RuleSource::File(line) => format!("{}:{line}", psync_sync::ignore::IGNORE_FILE),
                },
                why: match r.source {
                    RuleSource::Default(why) => Some(why.into()),
                    RuleSource::File(_) => None,
                },
            })
            .collect(),
        problems: rules.problems().to_vec(),
    })
}
