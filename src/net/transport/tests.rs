//! The transport over real loopback WebRTC connections.

use super::*;
use crate::net::frames::{MORE_FOLLOWS, PIECE_BYTES};
use psync_sync::message::MAX_FRAME_BYTES;

/// Every candidate either side offers is on loopback: the tests never send
/// a packet anywhere else.
fn assert_loopback_only(sdp: &str) {
    let candidates: Vec<&str> = sdp.lines().filter(|l| l.starts_with("a=candidate:")).collect();
    assert!(!candidates.is_empty(), "no candidates in {sdp}");
    for line in candidates {
        let address = line.split_whitespace().nth(4).unwrap();
        assert!(address == "127.0.0.1" || address == "::1", "non-loopback candidate: {line}");
    }
}

/// A real signalling server on loopback; returns its data dir and URL.
pub(crate) async fn signal_server() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let server_dir = psync_signal::net::ServerDir::new(dir.path()).unwrap();
    tokio::spawn(async move { psync_signal::net::serve(listener, server_dir).await });
    (dir, url)
}

pub(crate) async fn pair() -> (Link, Link) {
    let (a_cert, b_cert) = (DtlsCertificate::generate().unwrap(), DtlsCertificate::generate().unwrap());
    let mut a = Negotiation::new(&a_cert, &IceSetup::loopback()).await.unwrap();
    let mut b = Negotiation::new(&b_cert, &IceSetup::loopback()).await.unwrap();
    let offer = a.offer().await.unwrap();
    assert_loopback_only(&offer);
    let answer = b.answer(&offer, &a_cert.fingerprint()).await.unwrap();
    assert_loopback_only(&answer);
    a.accept(&answer, &b_cert.fingerprint()).await.unwrap();
    let limit = Duration::from_secs(30);
    let (a, b) = tokio::join!(a.connect(limit), b.connect(limit));
    (a.unwrap(), b.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_a_loopback_connection_in_order_both_ways() {
    let (a, mut b) = pair().await;
    // Small frames, an empty one and one at the sync core's frame limit (many pieces).
    let frames: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            if i == 100 {
                vec![7u8; MAX_FRAME_BYTES]
            } else if i == 101 {
                Vec::new()
            } else {
                i.to_le_bytes().repeat(i as usize % 50 + 1)
            }
        })
        .collect();
    let sender = {
        let frames = frames.clone();
        async move {
            for frame in &frames {
                a.send(frame).await.unwrap();
            }
            a
        }
    };
    let receiver = async {
        let mut got = Vec::new();
        while got.len() < frames.len() {
            got.push(b.recv().await.expect("the link stays up"));
        }
        got
    };
    let (mut a, got) = tokio::join!(sender, receiver);
    assert_eq!(got, frames);
    b.send(b"reply").await.unwrap();
    assert_eq!(a.recv().await.unwrap(), b"reply");
    // The wire carried at least the payload (plus DTLS and SCTP framing).
    let payload: u64 = frames.iter().map(|f| f.len() as u64).sum();
    let (sa, sb) = (a.probe().stats().await, b.probe().stats().await);
    assert!(sa.bytes_sent >= payload && sa.bytes_sent < payload * 2, "{sa:?} for {payload} bytes");
    assert!(sb.bytes_received >= payload, "{sb:?} for {payload} bytes");
    assert!(sa.rtt_ms.is_some_and(|ms| (0.0..1000.0).contains(&ms)), "{sa:?}");
    // Loopback host candidates on both ends: the same machine reads as LAN.
    let path = sa.path.expect("a selected pair");
    assert_eq!(path.kind, crate::net::path::PathKind::Lan, "{path:?}");
    assert!(path.local.starts_with("127.0.0.1:") && path.local.ends_with("(host)"), "{path:?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_by_the_sender_and_ends_the_link_at_the_receiver() {
    let (a, mut b) = pair().await;
    let refused = a.send(&vec![0u8; MAX_FRAME_BYTES + 1]).await.unwrap_err();
    assert!(refused.to_string().contains("over the"), "{refused}");
    a.send(b"still fine").await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"still fine");
    // A hostile sender that never ends its frame: the receiver gives up at the limit.
    for _ in 0..=MAX_FRAME_BYTES / PIECE_BYTES {
        a.send_piece(MORE_FOLLOWS, &[1u8; PIECE_BYTES]).await.unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), b.recv()).await.unwrap();
    assert_eq!(ended, None, "the receiver closes instead of buffering without bound");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_hello_passes_between_members_and_fails_for_a_stranger() {
    use psync_signal::{Role, RosterOp};
    let (a_key, b_key) = (DeviceKey::generate(), DeviceKey::generate());
    let mut roster = Roster::create(&a_key, "notes", "laptop", "sha-256 AA", 1);
    let add = RosterOp::Add {
        key: b_key.public(),
        name: "phone".into(),
        role: Role::Full,
        dtls_fingerprint: "sha-256 BB".into(),
    };
    let entry = roster.sign_next(&a_key, add, 2);
    roster.apply(entry).unwrap();
    let fingerprints = ("sha-256 AA", "sha-256 BB");
    let swapped = (fingerprints.1, fingerprints.0);

    let (mut a, mut b) = pair().await;
    let (heard_by_a, heard_by_b) = tokio::join!(
        a.hello(&a_key, b_key.public(), &roster, fingerprints),
        b.hello(&b_key, a_key.public(), &roster, swapped)
    );
    assert_eq!(heard_by_a.unwrap(), roster.head());
    assert_eq!(heard_by_b.unwrap(), roster.head());
    a.send(b"first sync frame").await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"first sync frame");
    a.close().await;
    b.close().await;

    // A device outside the roster, on an otherwise fine connection.
    let stranger = DeviceKey::generate();
    let (mut a, mut s) = pair().await;
    let (heard_by_a, _) = tokio::join!(
        a.hello(&a_key, b_key.public(), &roster, fingerprints),
        s.hello(&stranger, a_key.public(), &roster, swapped)
    );
    let refused = heard_by_a.unwrap_err().to_string();
    assert!(refused.contains("another device"), "{refused}");
    a.close().await;
    s.close().await;
}

/// The whole path a daemon takes: a real signalling server on loopback
/// relays the signed offer and answer, each side checks the envelope and
/// the fingerprint the roster pins, DTLS connects, and the hello passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_connect_through_the_signalling_server() {
    use psync_signal::net::{register, ClientEvent, SignalClient};
    use psync_signal::{Envelope, ReplayGuard, Role, RosterOp};

    let (_dir, url) = signal_server().await;

    let (x, y) = (Arc::new(DeviceKey::generate()), Arc::new(DeviceKey::generate()));
    let (offerer, answerer) = if offers_to(&x.public(), &y.public()) { (x, y) } else { (y, x) };
    assert!(!offers_to(&answerer.public(), &offerer.public()), "exactly one side offers");
    let (o_cert, a_cert) = (DtlsCertificate::generate().unwrap(), DtlsCertificate::generate().unwrap());
    let mut roster = Roster::create(&offerer, "notes", "laptop", &o_cert.fingerprint(), 1);
    let add = RosterOp::Add {
        key: answerer.public(),
        name: "desktop".into(),
        role: Role::Full,
        dtls_fingerprint: a_cert.fingerprint(),
    };
    let entry = roster.sign_next(&offerer, add, 2);
    roster.apply(entry).unwrap();
    let group = register(&url, &roster).await.unwrap();
    let mut o_client = SignalClient::spawn(url.clone(), group, offerer.clone());
    let mut a_client = SignalClient::spawn(url, group, answerer.clone());
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;

    async fn relayed(client: &mut SignalClient) -> Envelope {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), client.events.recv()).await.unwrap().unwrap() {
                ClientEvent::Relayed(envelope) => return envelope,
                ClientEvent::Refused(why) => panic!("server refused: {why}"),
                _ => {}
            }
        }
    }
    // Wait until the answerer is online so the offer is not dropped.
    loop {
        match tokio::time::timeout(Duration::from_secs(20), o_client.events.recv()).await.unwrap().unwrap() {
            ClientEvent::LoggedIn { online, .. } if online.contains(&answerer.public()) => break,
            ClientEvent::Online(who) if who == answerer.public() => break,
            _ => {}
        }
    }

    let answerer_side = async {
        let mut negotiation = Negotiation::new(&a_cert, &IceSetup::loopback()).await.unwrap();
        let envelope = relayed(&mut a_client).await;
        let payload = envelope.open(&roster, &answerer.public(), now(), &mut ReplayGuard::default()).unwrap();
        let PeerSignal::Offer(offer) = PeerSignal::decode(payload).unwrap() else { panic!("expected an offer") };
        let pinned = roster.fingerprint(&envelope.from).unwrap();
        let answer = negotiation.answer(&offer, pinned).await.unwrap();
        let payload = PeerSignal::Answer(answer).encode().unwrap();
        a_client.relay(Envelope::seal(&answerer, group, envelope.from, 7, 1, now(), payload));
        let mut link = negotiation.connect(Duration::from_secs(30)).await.unwrap();
        let fingerprints = (a_cert.fingerprint(), pinned.to_string());
        link.hello(&answerer, envelope.from, &roster, (&fingerprints.0, &fingerprints.1)).await.unwrap();
        link
    };
    let offerer_side = async {
        let mut negotiation = Negotiation::new(&o_cert, &IceSetup::loopback()).await.unwrap();
        let offer = negotiation.offer().await.unwrap();
        let payload = PeerSignal::Offer(offer).encode().unwrap();
        o_client.relay(Envelope::seal(&offerer, group, answerer.public(), 3, 1, now(), payload));
        let envelope = relayed(&mut o_client).await;
        let payload = envelope.open(&roster, &offerer.public(), now(), &mut ReplayGuard::default()).unwrap();
        let PeerSignal::Answer(answer) = PeerSignal::decode(payload).unwrap() else { panic!("expected an answer") };
        let pinned = roster.fingerprint(&envelope.from).unwrap();
        negotiation.accept(&answer, pinned).await.unwrap();
        let mut link = negotiation.connect(Duration::from_secs(30)).await.unwrap();
        let fingerprints = (o_cert.fingerprint(), pinned.to_string());
        link.hello(&offerer, envelope.from, &roster, (&fingerprints.0, &fingerprints.1)).await.unwrap();
        link
    };
    let (mut a_link, o_link) = tokio::join!(answerer_side, offerer_side);
    o_link.send(b"index update").await.unwrap();
    assert_eq!(a_link.recv().await.unwrap(), b"index update");
    assert!(PeerSignal::decode(&[9, 9, 9]).is_err(), "garbage payload is an error, not a panic");
    o_link.close().await;
    a_link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fingerprint_other_than_the_pinned_one_is_refused() {
    let (a_cert, b_cert) = (DtlsCertificate::generate().unwrap(), DtlsCertificate::generate().unwrap());
    let impostor = DtlsCertificate::generate().unwrap();
    let mut a = Negotiation::new(&a_cert, &IceSetup::loopback()).await.unwrap();
    let mut b = Negotiation::new(&b_cert, &IceSetup::loopback()).await.unwrap();
    let offer = a.offer().await.unwrap();
    let refused = b.answer(&offer, &impostor.fingerprint()).await.unwrap_err();
    assert!(refused.to_string().contains("not the one pinned"), "{refused}");
    let answer = b.answer(&offer, &a_cert.fingerprint()).await.unwrap();
    let refused = a.accept(&answer, &impostor.fingerprint()).await.unwrap_err();
    assert!(refused.to_string().contains("not the one pinned"), "{refused}");
}
