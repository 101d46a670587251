//! ICE servers a signalling server hands to the members of its groups, so
//! devices need no network configuration: STUN URLs as they are, TURN URLs
//! with short-lived credentials in the TURN REST API form coturn checks
//! (`--use-auth-secret`): username `"<expiry unix seconds>:<device id>"`,
//! password base64(HMAC-SHA1(shared secret, username)).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;

/// How long handed-out TURN credentials stay valid by default (seconds).
/// coturn checks them only when a relay is allocated, so a link made
/// before they expire keeps its relay.
pub const DEFAULT_TURN_TTL_SECS: u64 = 12 * 3600;
/// The shortest TTL an operator may set (seconds): clients refresh at half
/// the TTL, and a minute leaves room for a slow round trip.
pub const MIN_TURN_TTL_SECS: u64 = 120;
/// URLs a server may hand out (count), and bytes per URL or credential.
pub const MAX_ICE_URLS: usize = 16;
/// See [`MAX_ICE_URLS`].
pub const MAX_ICE_FIELD_BYTES: usize = 512;

/// One STUN or TURN server as WebRTC takes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:host:port` or `turn:host:port` URLs.
    pub urls: Vec<String>,
    /// For TURN.
    pub username: Option<String>,
    /// For TURN; never logged.
    pub credential: Option<String>,
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "(redacted)"))
            .finish()
    }
}

impl IceServer {
    /// A server without credentials (STUN).
    pub fn open(urls: Vec<String>) -> Self {
        Self { urls, username: None, credential: None }
    }

    /// One the WebRTC stack can use: every URL a STUN/TURN URL, and TURN
    /// with its credentials (without them the whole peer connection fails to
    /// build, so one bad entry from a server would stop every connection).
    pub fn usable(&self) -> bool {
        !self.urls.is_empty()
            && self.urls.iter().all(|url| {
                is_ice_url(url)
                    && !is_unsupported_turn(url)
                    && (!url.starts_with("turn") || (self.username.is_some() && self.credential.is_some()))
            })
    }

    /// Within the limits a client accepts from a server.
    pub fn within_limits(servers: &[IceServer]) -> bool {
        servers.iter().map(|s| s.urls.len()).sum::<usize>() <= MAX_ICE_URLS
            && servers
                .iter()
                .all(|s| s.urls.iter().chain(&s.username).chain(&s.credential).all(|f| f.len() <= MAX_ICE_FIELD_BYTES))
    }
}

/// Whether `url` is one of the kinds PSync uses (`stun:`, `turn:`; `turns:`
/// is a URL too, but see [`is_unsupported_turn`]).
pub fn is_ice_url(url: &str) -> bool {
    ["stun:", "turn:", "turns:"].iter().any(|scheme| url.starts_with(scheme) && url.len() > scheme.len())
}

/// TURN over TLS or TCP: the WebRTC stack the devices use relays over UDP
/// only and would skip it without a word, so it is refused where it is
/// configured.
pub fn is_unsupported_turn(url: &str) -> bool {
    url.starts_with("turns:") || url.contains("transport=tcp")
}

/// What a server operator configured.
#[derive(Clone, Default)]
pub struct IcePolicy {
    /// Handed out as they are.
    pub stun: Vec<String>,
    /// Handed out with fresh credentials.
    pub turn: Vec<String>,
    /// The secret shared with the TURN server (`static-auth-secret`).
    pub turn_secret: Vec<u8>,
    /// How long credentials last (seconds).
    pub ttl_secs: u64,
}

impl std::fmt::Debug for IcePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcePolicy")
            .field("stun", &self.stun)
            .field("turn", &self.turn)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl IcePolicy {
    /// Nothing to hand out.
    pub fn is_empty(&self) -> bool {
        self.stun.is_empty() && self.turn.is_empty()
    }

    /// The list for `device` at `now_ms`, and when its credentials expire
    /// (unix milliseconds).
    pub fn for_device(&self, device: &PublicKey, now_ms: u64) -> (Vec<IceServer>, u64) {
        let expires_secs = now_ms / 1000 + self.ttl_secs;
        let mut servers = Vec::new();
        if !self.stun.is_empty() {
            servers.push(IceServer::open(self.stun.clone()));
        }
        if !self.turn.is_empty() {
            let username = format!("{expires_secs}:{}", device.device_id());
            let credential = turn_rest_password(&self.turn_secret, &username);
            servers.push(IceServer { urls: self.turn.clone(), username: Some(username), credential: Some(credential) });
        }
        (servers, expires_secs * 1000)
    }
}

/// base64(HMAC-SHA1(secret, username)): the password coturn expects.
pub fn turn_rest_password(secret: &[u8], username: &str) -> String {
    use base64::Engine;
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceKey;

    /// The expected value is `echo -n 1433895918506:my_user | openssl dgst -sha1 -hmac
    /// my_secret -binary | base64`.
    #[test]
    fn the_password_is_coturns_hmac() {
        assert_eq!(turn_rest_password(b"my_secret", "1433895918506:my_user"), "S82pSEyjuw15IW7TTt299G5fUko=");
    }

    #[test]
    fn turn_urls_get_credentials_that_expire_after_the_ttl() {
        let policy = IcePolicy {
            stun: vec!["stun:203.0.113.10:3478".into()],
            turn: vec!["turn:203.0.113.10:3478".into()],
            turn_secret: b"s3cret".to_vec(),
            ttl_secs: 600,
        };
        let device = DeviceKey::generate().public();
        let (servers, expires) = policy.for_device(&device, 1_000_000_500);
        assert_eq!(expires, (1_000_000 + 600) * 1000);
        assert_eq!(servers[0], IceServer::open(vec!["stun:203.0.113.10:3478".into()]));
        let turn = &servers[1];
        let username = turn.username.clone().unwrap();
        assert_eq!(username, format!("1000600:{}", device.device_id()));
        assert_eq!(turn.credential.clone().unwrap(), turn_rest_password(b"s3cret", &username));
        assert!(!format!("{turn:?}").contains(turn.credential.as_deref().unwrap()), "never in logs");
        assert!(IceServer::within_limits(&servers));
        assert!(servers.iter().all(IceServer::usable));
        let no_credentials = IceServer::open(vec!["turn:203.0.113.10:3478".into()]);
        assert!(!no_credentials.usable(), "TURN without credentials would fail every connection");
        assert!(!IceServer::open(vec!["http://x".into()]).usable() && !IceServer::open(vec![]).usable());
        assert!(IcePolicy::default().is_empty());
    }

    #[test]
    fn only_ice_urls_pass() {
        assert!(is_ice_url("stun:example.org:3478") && is_ice_url("turn:203.0.113.1"));
        assert!(!is_ice_url("http://x") && !is_ice_url("stun:"));
    }
}
