//! The signalling server and client over real WebSockets on 127.0.0.1.

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use psync_signal::net::{register, serve, ClientEvent, ServerDir, SignalClient};
use psync_signal::{DeviceKey, Envelope, ReplayGuard, Role, Roster, RosterOp};
use tokio::runtime::Runtime;

fn start_server(dir: &std::path::Path, addr: Option<SocketAddr>) -> (Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(async {
        let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        // The old runtime's socket may linger briefly after a restart.
        for _ in 0..50 {
            if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot bind {addr}");
    });
    let addr = listener.local_addr().unwrap();
    let dir = ServerDir::new(dir).unwrap();
    rt.spawn(async move { serve(listener, dir).await });
    (rt, addr)
}

async fn next_event(client: &mut SignalClient, want: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, client.events.recv())
            .await
            .expect("event in time")
            .expect("client alive");
        if want(&event) {
            return event;
        }
    }
}

#[test]
fn devices_meet_relay_and_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server_rt, addr) = start_server(dir.path(), None);
    let url = format!("ws://{addr}");
    let a = Arc::new(DeviceKey::generate());
    let b = Arc::new(DeviceKey::generate());
    let mut roster = Roster::create(&a, "notes", "desktop", "sha-256 AA", 1);
    let op = RosterOp::Add {
        key: b.public(),
        name: "laptop".into(),
        role: Role::Full,
        dtls_fingerprint: "sha-256 BB".into(),
    };
    roster.apply(roster.sign_next(&a, op, 2)).unwrap();
    let group = roster.group_id();

    let client_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (mut ca, mut cb) = client_rt.block_on(async {
        assert_eq!(register(&url, &roster).await.unwrap(), group);
        assert!(register(&url, &roster).await.is_err(), "a group is registered once");
        let mut ca = SignalClient::spawn(url.clone(), group, a.clone());
        let ClientEvent::LoggedIn { roster: log, online } =
            next_event(&mut ca, |e| matches!(e, ClientEvent::LoggedIn { .. })).await
        else {
            unreachable!()
        };
        assert_eq!(log.len(), 2);
        assert!(online.is_empty());
        let mut cb = SignalClient::spawn(url.clone(), group, b.clone());
        next_event(&mut cb, |e| matches!(e, ClientEvent::LoggedIn { .. })).await;
        assert_eq!(next_event(&mut ca, |e| matches!(e, ClientEvent::Online(_))).await, ClientEvent::Online(b.public()));

        // A signed offer from a to b, checked by b against its own roster.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        ca.relay(Envelope::seal(&a, group, b.public(), 1, 1, now, b"v=0 offer".to_vec()));
        let ClientEvent::Relayed(envelope) = next_event(&mut cb, |e| matches!(e, ClientEvent::Relayed(_))).await else {
            unreachable!()
        };
        assert_eq!(envelope.open(&roster, &b.public(), now, &mut ReplayGuard::default()).unwrap(), b"v=0 offer");

        // A stranger gets nothing.
        let mut cs = SignalClient::spawn(url.clone(), group, Arc::new(DeviceKey::generate()));
        let event = next_event(&mut cs, |e| !matches!(e, ClientEvent::Online(_) | ClientEvent::Offline(_))).await;
        assert!(matches!(event, ClientEvent::Refused(_) | ClientEvent::Disconnected(_)), "{event:?}");
        (ca, cb)
    });

    // The server restarts: the group survives and both clients come back by themselves.
    server_rt.shutdown_background();
    let (_server_rt, _) = start_server(dir.path(), Some(addr));
    client_rt.block_on(async {
        for client in [&mut ca, &mut cb] {
            next_event(client, |e| matches!(e, ClientEvent::Disconnected(_))).await;
            let ClientEvent::LoggedIn { roster: log, .. } =
                next_event(client, |e| matches!(e, ClientEvent::LoggedIn { .. })).await
            else {
                unreachable!()
            };
            assert_eq!(log.len(), 2, "the group's roster was persisted");
        }
    });
}

#[test]
fn an_address_flooding_through_many_connections_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (_server_rt, addr) = start_server(dir.path(), None);
    let url = format!("ws://{addr}");
    let keys: Vec<Arc<DeviceKey>> = (0..15).map(|_| Arc::new(DeviceKey::generate())).collect();
    let mut roster = Roster::create(&keys[0], "notes", "d0", "", 1);
    for k in &keys[1..] {
        let op = RosterOp::Add { key: k.public(), name: "d".into(), role: Role::Full, dtls_fingerprint: String::new() };
        roster.apply(roster.sign_next(&keys[0], op, 2)).unwrap();
    }
    let group = roster.group_id();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        register(&url, &roster).await.unwrap();
        let mut clients = Vec::new();
        for k in &keys {
            let mut c = SignalClient::spawn(url.clone(), group, k.clone());
            next_event(&mut c, |e| matches!(e, ClientEvent::LoggedIn { .. })).await;
            clients.push(c);
        }
        // Each connection stays under its own 50-message burst; together
        // they send 675 messages at once, over the 500/s per address.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        // Sign first, then send in one burst: the burst must not depend on
        // how fast this machine signs.
        let sealed: Vec<Vec<Envelope>> = (0..clients.len())
            .map(|i| {
                (0..45)
                    .map(|seq| Envelope::seal(&keys[i], group, keys[0].public(), i as u64, seq, now, vec![0; 16]))
                    .collect()
            })
            .collect();
        for (c, envelopes) in clients.iter().zip(sealed) {
            for e in envelopes {
                c.relay(e);
            }
        }
        // The last senders find the address's budget spent.
        let mut cut = false;
        for c in clients.iter_mut().rev() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while let Ok(Some(event)) = tokio::time::timeout_at(deadline, c.events.recv()).await {
                if matches!(event, ClientEvent::Disconnected(_)) {
                    cut = true;
                    break;
                }
            }
            if cut {
                break;
            }
        }
        assert!(cut, "the per-address message rate cut nobody off");
    });
}

#[test]
fn devices_meet_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let acceptor = psync_signal::net::tls_acceptor(&cert_pem, &key_pem).unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server_dir = ServerDir::new(&dir.path().join("server")).unwrap();
    rt.spawn(psync_signal::net::serve_with(
        listener,
        server_dir,
        psync_signal::net::ServeOptions { tls: Some(acceptor), ..Default::default() },
    ));
    let url = format!("wss://localhost:{port}");
    let a = Arc::new(DeviceKey::generate());
    let roster = Roster::create(&a, "notes", "desktop", "", 1);
    rt.block_on(async {
        // Not trusted yet: the handshake fails.
        assert!(register(&url, &roster).await.is_err(), "an unknown certificate is refused");
        psync_signal::net::trust_ca_pem(cert.cert.pem().as_bytes()).unwrap();
        assert_eq!(register(&url, &roster).await.unwrap(), roster.group_id());
        let mut client = SignalClient::spawn(url.clone(), roster.group_id(), a.clone());
        next_event(&mut client, |e| matches!(e, ClientEvent::LoggedIn { .. })).await;
    });
}

/// A connection that never finishes its WebSocket handshake is let go, and
/// a member that stops reading is closed before the server holds more than
/// `MAX_OUTGOING_BYTES` for it.
#[test]
fn silent_and_non_reading_clients_are_let_go() {
    use futures_util::{SinkExt, StreamExt};
    use psync_base::codec;
    use psync_signal::net::{HANDSHAKE_TIMEOUT, MAX_OUTGOING_BYTES};
    use psync_signal::server::{login_message, ClientMsg, ServerMsg, LOGIN_DOMAIN};
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::Message as Ws;

    let dir = tempfile::tempdir().unwrap();
    let (_server_rt, addr) = start_server(dir.path(), None);
    let url = format!("ws://{addr}");
    let (a, b) = (Arc::new(DeviceKey::generate()), Arc::new(DeviceKey::generate()));
    let mut roster = Roster::create(&a, "notes", "desktop", "", 1);
    let op =
        RosterOp::Add { key: b.public(), name: "laptop".into(), role: Role::Full, dtls_fingerprint: String::new() };
    roster.apply(roster.sign_next(&a, op, 2)).unwrap();
    let group = roster.group_id();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Connects and sends nothing: closed within the handshake deadline.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent connection is closed: {read:?}");

        // b logs in by hand, then stops reading; a relays to b until b's
        // connection is closed.
        register(&url, &roster).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let challenge = match ws.next().await.unwrap().unwrap() {
            Ws::Binary(bytes) => codec::decode::<ServerMsg>(&bytes).unwrap(),
            other => panic!("{other:?}"),
        };
        let ServerMsg::Challenge { server_id, nonce, .. } = challenge else { panic!("no challenge") };
        let signature = b.sign(LOGIN_DOMAIN, &login_message(&server_id, &nonce, &group, &b.public()));
        let login = ClientMsg::Login { group, key: b.public(), signature };
        ws.send(Ws::Binary(codec::encode(&login).unwrap().into())).await.unwrap();
        let mut ca = SignalClient::spawn(url.clone(), group, a.clone());
        next_event(&mut ca, |e| matches!(e, ClientEvent::LoggedIn { .. })).await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let payload = vec![7u8; 60_000];
        let envelopes = 3 * MAX_OUTGOING_BYTES / payload.len();
        let mut refused = false;
        for seq in 0..envelopes as u64 {
            ca.relay(Envelope::seal(&a, group, b.public(), 1, seq, now, payload.clone()));
            // Within the per-connection message rate.
            tokio::time::sleep(Duration::from_millis(25)).await;
            while let Ok(event) = ca.events.try_recv() {
                if matches!(event, ClientEvent::Refused(ref why) if why.contains("not online")) {
                    refused = true;
                }
            }
            if refused {
                break;
            }
        }
        assert!(refused, "the server still holds everything for a member that does not read");
        // b's connection was closed: reading now ends before all arrived.
        let mut received = 0;
        while let Ok(Some(Ok(Ws::Binary(_)))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            received += 1;
        }
        assert!(received < envelopes, "{received} of {envelopes} envelopes were kept for it");
    });
}
