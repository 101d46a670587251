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

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::WARN {
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
        let line = format!("{} {}", wall_ms() / 1000, fields.0.trim_end());
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(line);
    }
}

pub fn recent_errors() -> Vec<String> {
    RECENT.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
}
