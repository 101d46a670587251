//! Which way a link's packets go, in the words `psync status` uses: over
//! the LAN, directly through NAT, or relayed by a TURN server (named).

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidate, RTCIceCandidateType};

/// How a link reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Both ends on private (or loopback) addresses of their own
    /// interfaces: the same network.
    Lan,
    /// Peer to peer, through NAT (a STUN-learned or peer-reflexive address)
    /// or between public addresses.
    Direct,
    /// Through a TURN relay: works everywhere, costs the relay's bandwidth;
    /// PSync keeps trying to upgrade it.
    Relayed,
}

impl PathKind {
    /// The word people read.
    pub fn word(self) -> &'static str {
        match self {
            PathKind::Lan => "LAN",
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        }
    }
}

/// The candidate pair a link uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPath {
    /// LAN, direct or relayed.
    pub kind: PathKind,
    /// This end: `address:port (type)`.
    pub local: String,
    /// The peer's end as this device sees it.
    pub remote: String,
    /// The TURN server relaying, when relayed (its URL, or the relayed
    /// address when the relay is the peer's).
    pub relay: Option<String>,
}

/// One end of a candidate pair, as the stats show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// host, srflx, prflx or relay.
    pub kind: RTCIceCandidateType,
    /// Its address.
    pub ip: Option<IpAddr>,
    /// Its port.
    pub port: u16,
    /// The STUN/TURN server it came from (local relay candidates).
    pub url: String,
}

impl Candidate {
    fn shown(&self) -> String {
        let ip = self.ip.map_or_else(|| "?".to_string(), |ip| std::net::SocketAddr::new(ip, self.port).to_string());
        format!("{ip} ({})", self.kind)
    }
}

/// Private, unique-local, link-local or loopback: not routed on the internet.
fn private(ip: Option<IpAddr>) -> bool {
    match ip {
        Some(IpAddr::V4(v4)) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        Some(IpAddr::V6(v6)) => {
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
        None => false,
    }
}

/// The path of a pair with these ends.
pub fn classify(local: &Candidate, remote: &Candidate) -> LinkPath {
    use RTCIceCandidateType::{Host, Relay};
    let (kind, relay) = if local.kind == Relay {
        (PathKind::Relayed, Some(if local.url.is_empty() { local.shown() } else { local.url.clone() }))
    } else if remote.kind == Relay {
        (PathKind::Relayed, Some(format!("the peer's relay {}", remote.shown())))
    } else if local.kind == Host && remote.kind == Host && private(local.ip) && private(remote.ip) {
        (PathKind::Lan, None)
    } else {
        (PathKind::Direct, None)
    };
    LinkPath { kind, local: local.shown(), remote: remote.shown(), relay }
}

/// The path of the pair ICE selected, once it has.
pub async fn selected(connection: &Arc<dyn PeerConnection>) -> Option<LinkPath> {
    let sctp = connection.sctp().await?;
    let pair = sctp.transport().ice_transport().get_selected_candidate_pair().await.ok()??;
    let candidate = |c: &RTCIceCandidate| Candidate {
        kind: c.typ,
        ip: c.address.parse().ok(),
        port: c.port,
        url: c.url.clone().unwrap_or_default(),
    };
    Some(classify(&candidate(pair.local()), &candidate(pair.remote())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RTCIceCandidateType::{Host, Prflx, Relay, Srflx};

    fn c(kind: RTCIceCandidateType, ip: &str, url: &str) -> Candidate {
        Candidate { kind, ip: Some(ip.parse().unwrap()), port: 50000, url: url.into() }
    }

    #[test]
    fn paths_read_as_lan_direct_or_relayed_naming_the_relay() {
        let lan = classify(&c(Host, "192.168.1.20", ""), &c(Host, "192.168.1.21", ""));
        assert_eq!(lan.kind, PathKind::Lan);
        assert_eq!(lan.remote, "192.168.1.21:50000 (host)");
        let nat = classify(&c(Host, "192.168.1.20", ""), &c(Srflx, "203.0.113.7", ""));
        assert_eq!(nat.kind, PathKind::Direct);
        let punched = classify(&c(Prflx, "203.0.113.8", ""), &c(Host, "10.0.0.2", ""));
        assert_eq!(punched.kind, PathKind::Direct);
        let public = classify(&c(Host, "198.51.100.1", ""), &c(Host, "203.0.113.7", ""));
        assert_eq!(public.kind, PathKind::Direct, "public to public is not a LAN");
        let mine = classify(&c(Relay, "203.0.113.10", "turn:203.0.113.10:3478"), &c(Srflx, "203.0.113.7", ""));
        assert_eq!((mine.kind, mine.relay.as_deref()), (PathKind::Relayed, Some("turn:203.0.113.10:3478")));
        let theirs = classify(&c(Host, "192.168.1.20", ""), &c(Relay, "203.0.113.10", ""));
        assert_eq!(theirs.kind, PathKind::Relayed);
        assert!(theirs.relay.unwrap().contains("203.0.113.10"));
        assert_eq!(PathKind::Relayed.word(), "relayed");
    }
}
