//! The network around [`ServerState`]: a WebSocket server (tokio-tungstenite,
//! over TLS with rustls when given a certificate, in `server.rs`) and the
//! client the daemon uses (`ws://` or `wss://`, in `client.rs`). Thin:
//! frames in and out, persistence, reconnection. Shared here: the errors,
//! the WebSocket limits, what counts as one origin.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::server::{Origin, MAX_FRAME_BYTES};

/// Locks, taking over a lock a panic poisoned (the data stays consistent:
/// every critical section here is a single update).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod client;
mod prefixed;
mod relay_client;
mod relay_server;
mod server;

pub use client::*;
pub use relay_client::*;
pub use server::*;

/// Bytes waiting to be written to one connection past which it is closed
/// (a client that does not read must not grow the server's memory).
pub const MAX_OUTGOING_BYTES: usize = 8 << 20;
/// How long a new connection may take to finish its TLS and WebSocket
/// handshakes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `ip` counts for the per-origin limits: an IPv4 address, or the
/// /64 an IPv6 address is in (one subscriber gets a whole /64).
pub fn origin(ip: IpAddr) -> Origin {
    match ip {
        IpAddr::V4(v4) => Origin(u128::from(u32::from(v4))),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Origin(u128::from(u32::from(v4))),
            None => Origin(u128::from(v6) & !((1u128 << 64) - 1)),
        },
    }
}

/// Per-address limits of a server.
#[derive(Debug, Clone, Copy)]
pub struct IpLimits {
    /// Connections one IP address may hold.
    pub connections: usize,
    /// Messages per second one IP address may send, over all its connections.
    pub messages_per_second: f64,
}

impl Default for IpLimits {
    fn default() -> Self {
        Self { connections: 64, messages_per_second: 500.0 }
    }
}

/// Why the server or the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// File or socket trouble.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// WebSocket trouble.
    #[error("websocket: {0}")]
    Ws(String),
    /// The server said no.
    #[error("server refused: {0}")]
    Refused(String),
    /// The relay refused a request by its rules.
    #[error("relay refused: {0}")]
    RelayRefused(crate::relay::policy::RelayRefusal),
    /// A stored roster failed verification.
    #[error("stored group {0} is invalid: {1}")]
    BadStoredRoster(String, String),
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What the server accepts from clients: small frames, and small buffers
/// (tungstenite's default 128 KiB read buffer per connection made 1,000
/// connections cost 349 MB).
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

/// Largest frame a client accepts from the server: a `Welcome` carries the
/// whole roster log (up to `MAX_ROSTER_ENTRIES` entries of about 250 bytes).
pub const MAX_SERVER_FRAME_BYTES: usize = 4 * 1024 * 1024;

pub(crate) fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_SERVER_FRAME_BYTES))
        .max_frame_size(Some(MAX_SERVER_FRAME_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 subscriber gets a whole /64: it counts as one origin; an
    /// IPv4 address mapped into IPv6 counts as that address.
    #[test]
    fn origins_are_ipv4_addresses_and_ipv6_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(origin(ip("2001:db8:1:2::1")), origin(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(origin(ip("2001:db8:1:2::1")), origin(ip("2001:db8:1:3::1")));
        assert_eq!(origin(ip("::ffff:192.0.2.7")), origin(ip("192.0.2.7")));
        assert_ne!(origin(ip("192.0.2.7")), origin(ip("192.0.2.8")));
    }
}
