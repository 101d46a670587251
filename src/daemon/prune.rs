//! History pruned while mounted: by the `[history]` policy (30 days and 16
//! versions per file by default), keeping what a three-way merge may need
//! (the store's `GcPolicy::keep_for_merges`). The pass runs inside the sync
//! loop, between two steps of the core, so nothing it fetched or is about
//! to install can be swept; the filesystem waits on the store's writer lock.

use std::sync::Arc;
use std::time::Duration;

use psync_store::{GcPolicy, Store, Timestamp};
use tokio::sync::{mpsc, oneshot};

use crate::clock::wall_ms;
use crate::config::Settings;
use crate::driver::inbox::{BetweenSteps, Control};
use crate::live::{HistoryLive, SharedLive};

/// The first pass after mounting waits at most this long (a short session
/// still prunes; the start itself is not slowed).
const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(60);

/// Prunes every `settings.history_prune_every_secs` until the loop stops.
pub async fn run(store: Arc<Store>, control: mpsc::Sender<Control>, live: SharedLive, settings: Settings) {
    let every = Duration::from_secs(settings.history_prune_every_secs.max(1));
    let policy = GcPolicy {
        keep_versions: settings.history_keep_versions,
        keep_for_secs: (settings.history_keep_days as i64).saturating_mul(86_400),
        keep_for_merges: true,
    };
    let mut wait = every.min(FIRST_PRUNE_AFTER);
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        let (done, result) = oneshot::channel();
        let store = store.clone();
        let job = BetweenSteps(Box::new(move |keep| {
            let _ = done.send(store.gc_keeping(policy, Timestamp::now(), &keep));
        }));
        if control.send(Control::BetweenSteps(job)).await.is_err() {
            return; // the loop stopped: unmounting
        }
        let Ok(result) = result.await else { return };
        let shown = match result {
            Ok(report) => {
                tracing::info!(
                    "history pruned: {} old versions, {} blocks ({} bytes) removed",
                    report.versions_removed,
                    report.blocks_removed,
                    report.block_bytes_freed
                );
                HistoryLive {
                    pruned_at_ms: wall_ms(),
                    versions_removed: report.versions_removed,
                    bytes_freed: report.block_bytes_freed,
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!("pruning history failed (tried again later): {e}");
                HistoryLive { pruned_at_ms: wall_ms(), error: Some(e.to_string()), ..HistoryLive::default() }
            }
        };
        live.update(|l| l.history = Some(shown));
    }
}
