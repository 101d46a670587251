//! What one connection attempt binds and which STUN/TURN servers it asks,
//! resolved fresh for every attempt: a laptop that changed networks binds
//! its new addresses on the next dial, and the signalling server's latest
//! credentials are used.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use psync_signal::ice::IceServer;

use crate::config::IceConfig;

/// Interface name prefixes never bound by default: container and VM
/// bridges and the host ends of veth pairs, which no peer can reach.
const VIRTUAL_INTERFACES: &[&str] = &["docker", "br-", "virbr", "veth", "cni", "flannel", "vmnet"];

/// One attempt's ICE settings.
#[derive(Debug, Clone)]
pub struct IceSetup {
    /// Local UDP addresses to bind (port 0 for any).
    pub bind: Vec<SocketAddr>,
    /// STUN/TURN servers, with credentials for TURN.
    pub servers: Vec<IceServer>,
    /// Only relayed candidates: peers never learn this device's addresses.
    pub relay_only: bool,
}

impl IceSetup {
    /// Loopback only, no servers: the tests and the local demo.
    pub fn loopback() -> Self {
        Self::resolve(&IceConfig::loopback(), &[])
    }

    /// `config` as it applies now, with the servers the signalling server
    /// handed out (used unless the config turned them off).
    pub fn resolve(config: &IceConfig, from_server: &[IceServer]) -> Self {
        let bind = match config.bind.addrs() {
            Some(addrs) => addrs.to_vec(),
            None => auto_bind(&usable_addresses()),
        };
        let mut servers = config.servers.clone();
        if config.use_server_list {
            servers.extend(from_server.iter().cloned());
        }
        Self { bind, servers, relay_only: config.relay_only }
    }
}

/// Port 0 on each address; loopback when there is none (a machine with no
/// network still syncs devices on itself).
pub fn auto_bind(addresses: &BTreeSet<IpAddr>) -> Vec<SocketAddr> {
    if addresses.is_empty() {
        return IceSetup::loopback().bind;
    }
    addresses.iter().map(|ip| SocketAddr::new(*ip, 0)).collect()
}

/// The addresses of the interfaces that are up, other than loopback,
/// link-local and virtual bridges: what a peer might reach. Compared
/// between polls, it also tells that the network changed.
pub fn usable_addresses() -> BTreeSet<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else { return BTreeSet::new() };
    interfaces
        .filter(|i| i.flags.contains(InterfaceFlags::IFF_UP) && !i.flags.contains(InterfaceFlags::IFF_LOOPBACK))
        .filter(|i| !VIRTUAL_INTERFACES.iter().any(|prefix| i.interface_name.starts_with(prefix)))
        .filter_map(|i| {
            let address = i.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| reachable_by_peers(*ip))
        .collect()
}

/// Not loopback, unspecified, multicast or link-local (link-local IPv6
/// needs a scope a peer's SDP cannot carry).
fn reachable_by_peers(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IceBind;

    #[test]
    fn only_addresses_a_peer_could_reach_are_bound_by_default() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for good in ["192.168.1.20", "10.0.0.7", "203.0.113.5", "2001:db8::7", "fd00::1"] {
            assert!(reachable_by_peers(ip(good)), "{good}");
        }
        for bad in ["127.0.0.1", "0.0.0.0", "169.254.1.1", "::1", "::", "fe80::1", "ff02::1"] {
            assert!(!reachable_by_peers(ip(bad)), "{bad}");
        }
        // This machine's own list is whatever it is, but never loopback.
        assert!(usable_addresses().iter().all(|a| !a.is_loopback()));
        assert_eq!(auto_bind(&BTreeSet::new()), IceSetup::loopback().bind);
        let two = BTreeSet::from([ip("192.168.1.20"), ip("2001:db8::7")]);
        assert_eq!(
            auto_bind(&two),
            vec![SocketAddr::from(([192, 168, 1, 20], 0)), "[2001:db8::7]:0".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn server_handed_servers_add_to_the_configured_ones_unless_turned_off() {
        let mine = IceServer::open(vec!["stun:mine.example:3478".into()]);
        let theirs = IceServer {
            urls: vec!["turn:relay.example:3478".into()],
            username: Some("1:x".into()),
            credential: Some("c".into()),
        };
        let mut config = IceConfig {
            bind: IceBind::Addrs(vec!["127.0.0.1:0".parse().unwrap()]),
            servers: vec![mine.clone()],
            use_server_list: true,
            relay_only: true,
        };
        let setup = IceSetup::resolve(&config, std::slice::from_ref(&theirs));
        assert_eq!(setup.servers, vec![mine.clone(), theirs.clone()]);
        assert!(setup.relay_only);
        assert_eq!(Some(setup.bind.as_slice()), config.bind.addrs());
        config.use_server_list = false;
        assert_eq!(IceSetup::resolve(&config, &[theirs]).servers, vec![mine]);
    }
}
