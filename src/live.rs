//! What peering and the sync loop share with the control socket while the
//! daemon runs, and the recent warnings `psync status` shows.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use psync_base::DeviceId;
use psync_signal::Roster;
use serde::{Deserialize, Serialize};

use crate::clock::wall_ms;

/// Warnings and errors kept for `psync status`.
const RECENT_ERRORS: usize = 20;

/// The signalling connection as peering last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "why", rename_all = "snake_case")]
pub enum SignallingState {
    /// Not connected yet.
    #[default]
    Connecting,
    /// Logged in.
    Connected,
    /// The connection ended; the client is reconnecting.
    Lost(String),
    /// The server refused this device.
    Refused(String),
}

/// What peering and the sync loop share with the status socket.
#[derive(Debug, Default)]
pub struct Live {
    /// The signalling connection.
    pub signalling: SignallingState,
    /// Group devices the server says are online.
    pub online: BTreeSet<DeviceId>,
    /// Devices with an authenticated link in the sync loop.
    pub linked: BTreeSet<DeviceId>,
    /// The newest verified roster.
    pub roster: Option<Roster>,
    /// A roster from the server or a peer that was refused (shorter than
    /// ours, or forking from it), in words.
    pub roster_warning: Option<String>,
    /// Relay storage, when this device uses it.
    pub relay: Option<RelayLive>,
    /// The daemon's last history pruning, if it ran.
    pub history: Option<HistoryLive>,
}

/// The daemon's last pruning of history (while mounted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLive {
    /// When it ran (ms since the epoch).
    pub pruned_at_ms: u64,
    /// Old versions it removed.
    pub versions_removed: u64,
    /// Bytes of blocks it freed.
    pub bytes_freed: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Relay storage as this device last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLive {
    /// Logged in to the relay now.
    pub reachable: bool,
    /// Why it is not (or the last thing that went wrong).
    pub last_error: Option<String>,
    /// Held for the group (sealed bytes), and the quota.
    pub held_bytes: u64,
    /// Quota (bytes).
    pub quota_bytes: u64,
    /// Held for the group (objects), and the quota.
    pub held_objects: u64,
    /// Quota (objects).
    pub quota_objects: u64,
    /// This device's changes some member has not taken and that are not
    /// on the relay yet (index entries).
    pub to_upload: u64,
    /// Objects this device stored, this run.
    pub uploaded: u64,
    /// Objects of others this device took, this run.
    pub downloaded: u64,
    /// When the last upload round ended with nothing left (ms since the epoch).
    pub flushed_at_ms: Option<u64>,
    /// Objects refused (tampered, unsigned, missing), newest last.
    pub refused: Vec<String>,
}

/// [`Live`] behind a lock that a panic elsewhere does not poison for us.
#[derive(Debug, Clone, Default)]
pub struct SharedLive(Arc<Mutex<Live>>);

impl SharedLive {
    /// Changes it.
    pub fn update<T>(&self, change: impl FnOnce(&mut Live) -> T) -> T {
        change(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads it.
    pub fn read<T>(&self, look: impl FnOnce(&Live) -> T) -> T {
        look(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A `tracing` layer that keeps the latest warnings and errors for `psync status`.
#[derive(Debug)]
pub struct RecentErrors;

static RECENT: Mutex<VecDeque<Warning>> = Mutex::new(VecDeque::new());

/// One warning or error PSync logged, for `psync status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `warn` or `error`.
    pub level: String,
    /// What PSync said.
    pub message: String,
}

impl Warning {
    /// One line for people: local time, level, message.
    pub fn line(&self) -> String {
        format!("{} {} {}", crate::clock::local_time(self.at_ms), self.level, self.message)
    }
}

/// Whether a log event comes from PSync's own code (its crates are `psync`
/// and `psync_*`).
fn is_psync(target: &str) -> bool {
    target.split("::").next().is_some_and(|krate| krate == "psync" || krate.starts_with("psync_"))
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        // PSync's own words only: the libraries' (webrtc's ICE and DTLS
        // chatter, fuser's) stay in the log file.
        if *event.metadata().level() > tracing::Level::WARN || !is_psync(event.metadata().target()) {
            return;
        }
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.insert_str(0, &format!("{value:?} "));
                } else {
                    self.0.push_str(&format!("{}={value:?} ", field.name()));
                }
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let warning = Warning {
            at_ms: wall_ms(),
            level: event.metadata().level().to_string().to_lowercase(),
            message: fields.0.trim_end().to_string(),
        };
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(warning);
    }
}

pub fn recent_errors() -> Vec<Warning> {
    RECENT.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn only_psyncs_own_warnings_are_kept_with_their_time() {
        let subscriber = tracing_subscriber::registry().with(RecentErrors);
        let before = wall_ms();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rtc::peer_connection::handler", "IceHandler.handle_read got error: password is empty");
            tracing::info!(target: "psync::peering", "connected");
            tracing::warn!(target: "psync::peering", peer = "7f34", "could not connect: timed out");
            tracing::error!(target: "psync_store::open", "cannot open");
        });
        let kept: Vec<(String, String)> =
            recent_errors().into_iter().filter(|w| w.at_ms >= before).map(|w| (w.level, w.message)).collect();
        assert_eq!(
            kept,
            vec![
                ("warn".to_string(), "could not connect: timed out peer=\"7f34\"".to_string()),
                ("error".to_string(), "cannot open".to_string()),
            ]
        );
        assert!(is_psync("psync") && is_psync("psync_fs::core") && !is_psync("psyncish") && !is_psync("webrtc"));
    }
}
