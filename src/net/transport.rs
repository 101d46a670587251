//! The WebRTC shell: one peer connection and one reliable, ordered data channel
//! per pair of devices, carrying opaque frames. It knows nothing of the sync
//! protocol; it only refuses a peer whose SDP does not carry the DTLS
//! fingerprint pinned in the roster (DTLS then checks the certificate against
//! that fingerprint, so a signalling server in the middle cannot stand in).
//!
//! Offers and answers are exchanged whole (non-trickle): gathering host
//! candidates on explicit bind addresses takes a few milliseconds, and one
//! signed envelope per direction is simpler to authenticate than a stream of
//! candidates.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use psync_base::{codec, ContentHash};
use psync_signal::dtls::DtlsCertificate;
use psync_signal::envelope::sdp_matches_fingerprint;
use psync_signal::peer_hello::{decode_challenge, decode_proof, Handshake};
use psync_signal::{DeviceKey, PublicKey, Roster};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use tokio::sync::mpsc;

pub use crate::config::IceConfig;

use super::frames::{pieces, Reassembler};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCCertificate, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
    StatsSelector,
};

/// The one data channel's label.
const CHANNEL_LABEL: &str = "psync";
/// Bytes a sender may queue in the SCTP stack before `send` waits: a 1 GiB
/// transfer never buffers more than this per peer.
const SEND_BUFFER_LIMIT: usize = 4 << 20;
/// Frames received but not yet taken by the sync loop; when full, the channel
/// stops reading and SCTP's window pushes back on the sender.
const RECEIVE_QUEUE: usize = 256;
/// How long the signed hello may take once the channel is open.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long host-candidate gathering may take.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// SCTP packet size when every address we bind is loopback (whose MTU is
/// 64 KiB): fewer, larger DTLS records; elsewhere webrtc's default (1191
/// bytes, safe through TURN and IPv6) stays.
const LOOPBACK_SCTP_MTU: u32 = 8000;
/// UDP datagrams up to this size are received whole (a loopback peer's
/// SCTP packets plus DTLS overhead).
const RECEIVE_MTU: usize = 9000;

/// What devices relay to each other through the signalling server, inside
/// signed envelopes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PeerSignal {
    /// A complete SDP offer (candidates included).
    Offer(String),
    /// A complete SDP answer.
    Answer(String),
}

impl PeerSignal {
    /// Encoded for an envelope's payload.
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(codec::encode(self)?)
    }

    /// Decoded from an opened envelope's payload.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        codec::decode(payload).context("malformed signal payload from a peer")
    }
}

/// Which of two devices makes the offer: the one with the smaller key. Both
/// sides agree without a message, so two devices never offer at once.
pub fn offers_to(me: &PublicKey, peer: &PublicKey) -> bool {
    me < peer
}

/// Connection events the handler forwards to the owning task.
struct Events {
    gathered: mpsc::Sender<()>,
    remote_channel: mpsc::Sender<Arc<dyn DataChannel>>,
    failed: mpsc::Sender<RTCPeerConnectionState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        if matches!(state, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) {
            let _ = self.failed.try_send(state);
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.remote_channel.try_send(channel);
    }
}

/// A connection being negotiated.
pub struct Negotiation {
    connection: Arc<dyn PeerConnection>,
    gathered: mpsc::Receiver<()>,
    remote_channel: mpsc::Receiver<Arc<dyn DataChannel>>,
    failed: mpsc::Receiver<RTCPeerConnectionState>,
    local_channel: Option<Arc<dyn DataChannel>>,
}

impl std::fmt::Debug for Negotiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Negotiation")
    }
}

/// The device's certificate in the form the WebRTC stack takes.
fn rtc_certificate(certificate: &DtlsCertificate) -> Result<RTCCertificate> {
    let crypto =
        webrtc::peer_connection::crypto::default_provider().map_err(|e| anyhow!("no WebRTC crypto provider: {e}"))?;
    // The stack's PEM names the PKCS#8 block `PRIVATE_KEY`; the body is the same.
    let key = certificate.key_pem().replace("PRIVATE KEY-----", "PRIVATE_KEY-----");
    let pem = format!("{key}\n{}", certificate.cert_pem);
    let dtls = rtc::dtls::crypto::Certificate::from_pem(&pem, crypto.crypto())
        .map_err(|e| anyhow!("the DTLS certificate does not load: {e}"))?;
    // The fingerprint, not the expiry, is what peers pin.
    let expires = SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
    Ok(RTCCertificate::from_existing(dtls, expires))
}

impl Negotiation {
    /// A new, unconnected peer connection presenting `certificate`.
    pub async fn new(certificate: &DtlsCertificate, ice: &IceConfig) -> Result<Self> {
        let (gathered_tx, gathered) = mpsc::channel(1);
        let (remote_tx, remote_channel) = mpsc::channel(1);
        let (failed_tx, failed) = mpsc::channel(1);
        let mut settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_network_types(vec![NetworkType::Udp4, NetworkType::Udp6])
            .with_include_loopback_candidate(true)
            .with_receive_mtu(RECEIVE_MTU);
        if ice.bind.iter().all(|a| a.ip().is_loopback()) {
            settings = settings.with_sctp_mtu(LOOPBACK_SCTP_MTU);
        }
        let settings = settings.build();
        let servers = if ice.servers.is_empty() {
            Vec::new()
        } else {
            vec![RTCIceServer { urls: ice.servers.clone(), ..Default::default() }]
        };
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(servers)
            .with_certificates(vec![rtc_certificate(certificate)?])
            .build();
        let connection = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Events { gathered: gathered_tx, remote_channel: remote_tx, failed: failed_tx }))
            .with_udp_addrs(ice.bind.clone())
            .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT)
            .with_runtime(super::udp_runtime::LargeUdpBuffers::shared())
            .build()
            .await
            .map_err(|e| anyhow!("cannot create a WebRTC peer connection: {e}"))?;
        Ok(Self { connection: Arc::new(connection), gathered, remote_channel, failed, local_channel: None })
    }

    async fn local_sdp(&mut self) -> Result<String> {
        tokio::time::timeout(GATHER_TIMEOUT, self.gathered.recv()).await.context("ICE gathering did not finish")?;
        let description = self.connection.local_description().await.ok_or_else(|| anyhow!("no local description"))?;
        Ok(description.sdp)
    }

    /// The offering side: opens the channel and returns the SDP offer.
    pub async fn offer(&mut self) -> Result<String> {
        let channel = self
            .connection
            .create_data_channel(CHANNEL_LABEL, None)
            .await
            .map_err(|e| anyhow!("cannot create the data channel: {e}"))?;
        self.local_channel = Some(channel);
        let offer = self.connection.create_offer(None).await.map_err(|e| anyhow!("cannot create an offer: {e}"))?;
        self.connection.set_local_description(offer).await.map_err(|e| anyhow!("local offer refused: {e}"))?;
        self.local_sdp().await
    }

    /// The answering side: checks the offer's fingerprint against the one the
    /// roster pins for its sender, then returns the SDP answer.
    pub async fn answer(&mut self, offer_sdp: &str, pinned_fingerprint: &str) -> Result<String> {
        if !sdp_matches_fingerprint(offer_sdp, pinned_fingerprint) {
            bail!("the offer's DTLS fingerprint is not the one pinned for its sender");
        }
        let offer = RTCSessionDescription::offer(offer_sdp.to_string()).map_err(|e| anyhow!("bad offer: {e}"))?;
        self.connection.set_remote_description(offer).await.map_err(|e| anyhow!("offer refused: {e}"))?;
        let answer = self.connection.create_answer(None).await.map_err(|e| anyhow!("cannot create an answer: {e}"))?;
        self.connection.set_local_description(answer).await.map_err(|e| anyhow!("local answer refused: {e}"))?;
        self.local_sdp().await
    }

    /// The offering side, once the answer arrives.
    pub async fn accept(&mut self, answer_sdp: &str, pinned_fingerprint: &str) -> Result<()> {
        if !sdp_matches_fingerprint(answer_sdp, pinned_fingerprint) {
            bail!("the answer's DTLS fingerprint is not the one pinned for its sender");
        }
        let answer = RTCSessionDescription::answer(answer_sdp.to_string()).map_err(|e| anyhow!("bad answer: {e}"))?;
        self.connection.set_remote_description(answer).await.map_err(|e| anyhow!("answer refused: {e}"))
    }

    /// Waits until the data channel is open.
    pub async fn connect(mut self, timeout: Duration) -> Result<Link> {
        let wait = async {
            let channel = match self.local_channel.take() {
                Some(channel) => channel,
                None => tokio::select! {
                    channel = self.remote_channel.recv() => channel.ok_or_else(|| anyhow!("connection dropped"))?,
                    state = self.failed.recv() => bail!("connection {}", state.map(|s| s.to_string()).unwrap_or_default()),
                },
            };
            loop {
                tokio::select! {
                    event = channel.poll() => match event {
                        Some(DataChannelEvent::OnOpen) => return Ok(channel),
                        Some(DataChannelEvent::OnClose) | None => bail!("the data channel closed before opening"),
                        Some(_) => {}
                    },
                    state = self.failed.recv() => bail!("connection {}", state.map(|s| s.to_string()).unwrap_or_default()),
                }
            }
        };
        let channel = tokio::time::timeout(timeout, wait).await.context("the peer did not connect in time")??;
        let (frames_tx, frames) = mpsc::channel(RECEIVE_QUEUE);
        let reader = tokio::spawn(read_frames(self.connection.clone(), channel.clone(), frames_tx));
        let sender = LinkSender { connection: self.connection, channel };
        Ok(Link { sender, receiver: LinkReceiver { frames, reader } })
    }
}

/// Reassembles frames from pieces and forwards them until the channel closes,
/// the link is dropped, or the peer misbehaves (a frame over the sync core's
/// limit, an unknown marker): then the connection is closed.
async fn read_frames(
    connection: Arc<dyn PeerConnection>,
    channel: Arc<dyn DataChannel>,
    frames: mpsc::Sender<Vec<u8>>,
) {
    let mut reassembler = Reassembler::default();
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnMessage(message) => match reassembler.push(&message.data) {
                Ok(None) => {}
                Ok(Some(frame)) => {
                    if frames.send(frame).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}; closing the connection");
                    break;
                }
            },
            DataChannelEvent::OnClose => return,
            _ => {}
        }
    }
    let _ = channel.close().await;
    let _ = connection.close().await;
}

async fn send_frame(channel: &Arc<dyn DataChannel>, frame: &[u8]) -> Result<()> {
    for (marker, piece) in pieces(frame)? {
        send_piece(channel, marker, piece).await?;
    }
    Ok(())
}

async fn send_piece(channel: &Arc<dyn DataChannel>, marker: u8, piece: &[u8]) -> Result<()> {
    let mut message = BytesMut::with_capacity(piece.len() + 1);
    message.extend_from_slice(&[marker]);
    message.extend_from_slice(piece);
    channel.send(message).await.map_err(|e| anyhow!("send to peer failed: {e}"))
}

/// An open connection to one peer.
pub struct Link {
    sender: LinkSender,
    receiver: LinkReceiver,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

/// What a connection's ICE layer counted: UDP payload as sent on the wire
/// (DTLS and SCTP framing included), and the round-trip time of its checks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkStats {
    /// Bytes sent over this connection.
    pub bytes_sent: u64,
    /// Bytes received over this connection.
    pub bytes_received: u64,
    /// Round-trip time of the pair in use, once measured.
    pub rtt_ms: Option<f64>,
}

/// Reads a link's [`LinkStats`] while its halves are busy elsewhere.
#[derive(Clone)]
pub struct LinkProbe(Arc<dyn PeerConnection>);

impl std::fmt::Debug for LinkProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkProbe")
    }
}

impl LinkProbe {
    /// The connection's counters now.
    pub async fn stats(&self) -> LinkStats {
        let report = self.0.get_stats(Instant::now(), StatsSelector::None).await;
        let mut stats = LinkStats::default();
        let mut busiest = 0;
        for pair in report.candidate_pairs() {
            stats.bytes_sent += pair.bytes_sent;
            stats.bytes_received += pair.bytes_received;
            let traffic = pair.bytes_sent + pair.bytes_received;
            if traffic >= busiest && pair.current_round_trip_time > 0.0 {
                busiest = traffic;
                stats.rtt_ms = Some(pair.current_round_trip_time * 1000.0);
            }
        }
        stats
    }
}

impl Link {
    /// A handle for reading this link's counters.
    pub fn probe(&self) -> LinkProbe {
        LinkProbe(self.sender.connection.clone())
    }

    /// Sends one frame (at most the sync core's frame limit); waits while the
    /// send buffer is full.
    pub async fn send(&self, frame: &[u8]) -> Result<()> {
        self.sender.send(frame).await
    }

    #[cfg(test)]
    async fn send_piece(&self, marker: u8, piece: &[u8]) -> Result<()> {
        send_piece(&self.sender.channel, marker, piece).await
    }

    /// The next frame, or `None` once the peer is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.receiver.recv().await
    }

    /// Runs the signed hello (see `psync_signal::peer_hello`) before any sync
    /// frame; returns the peer's roster head. Any failure means: close the link.
    pub async fn hello(
        &mut self,
        me: &DeviceKey,
        peer: PublicKey,
        roster: &Roster,
        fingerprints: (&str, &str),
    ) -> Result<ContentHash> {
        let (mine, theirs) = fingerprints;
        let (handshake, challenge) = Handshake::start(roster, me.public(), peer, mine, theirs);
        let exchange = async {
            self.send(&codec::encode(&challenge)?).await?;
            let their_challenge =
                decode_challenge(&self.recv().await.ok_or_else(|| anyhow!("peer left during hello"))?)?;
            self.send(&codec::encode(&handshake.prove(me, &their_challenge, roster.head()))?).await?;
            let proof = decode_proof(&self.recv().await.ok_or_else(|| anyhow!("peer left during hello"))?)?;
            Ok::<_, anyhow::Error>(handshake.verify(roster, &proof)?)
        };
        tokio::time::timeout(HELLO_TIMEOUT, exchange).await.context("the peer did not complete the hello in time")?
    }

    /// Separates the sending half (for a writer task) from the receiving one.
    pub fn split(self) -> (LinkSender, LinkReceiver) {
        (self.sender, self.receiver)
    }

    /// Closes the channel and the connection (the reader ends with it).
    pub async fn close(self) {
        self.sender.close().await;
    }
}

/// The sending half of a [`Link`]; dropping it does not close the link,
/// [`LinkSender::close`] does.
pub struct LinkSender {
    connection: Arc<dyn PeerConnection>,
    channel: Arc<dyn DataChannel>,
}

impl std::fmt::Debug for LinkSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSender")
    }
}

impl LinkSender {
    /// Like [`Link::send`].
    pub async fn send(&self, frame: &[u8]) -> Result<()> {
        send_frame(&self.channel, frame).await
    }

    /// Closes the channel and the connection (the receiving half then ends).
    pub async fn close(self) {
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}

/// The receiving half of a [`Link`].
pub struct LinkReceiver {
    frames: mpsc::Receiver<Vec<u8>>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LinkReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkReceiver")
    }
}

impl LinkReceiver {
    /// Like [`Link::recv`].
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.frames.recv().await
    }
}

impl Drop for LinkReceiver {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
        let mut a = Negotiation::new(&a_cert, &IceConfig::loopback()).await.unwrap();
        let mut b = Negotiation::new(&b_cert, &IceConfig::loopback()).await.unwrap();
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
            let mut negotiation = Negotiation::new(&a_cert, &IceConfig::loopback()).await.unwrap();
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
            let mut negotiation = Negotiation::new(&o_cert, &IceConfig::loopback()).await.unwrap();
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
        let mut a = Negotiation::new(&a_cert, &IceConfig::loopback()).await.unwrap();
        let mut b = Negotiation::new(&b_cert, &IceConfig::loopback()).await.unwrap();
        let offer = a.offer().await.unwrap();
        let refused = b.answer(&offer, &impostor.fingerprint()).await.unwrap_err();
        assert!(refused.to_string().contains("not the one pinned"), "{refused}");
        let answer = b.answer(&offer, &a_cert.fingerprint()).await.unwrap();
        let refused = a.accept(&answer, &impostor.fingerprint()).await.unwrap_err();
        assert!(refused.to_string().contains("not the one pinned"), "{refused}");
    }
}
