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

pub use super::ice::IceSetup;

use super::frames::{pieces, Reassembler};
use super::path::LinkPath;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCCertificate, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngineBuilder, StatsSelector,
};

/// The one data channel's label.
const CHANNEL_LABEL: &str = "psync";
/// Bytes a sender may queue in the SCTP stack before `send` waits: a 1 GiB
/// transfer never buffers more than this per peer.
const SEND_BUFFER_LIMIT: usize = 4 << 20;
/// Frames received but not yet taken by the sync loop; when full, the channel
/// stops reading and SCTP's window pushes back on the sender.
const RECEIVE_QUEUE: usize = 256;
/// The wake channel: negotiated out of band on a stream nothing else uses
/// (the in-band sync channel takes 0 or 1), never sent on, so a peer never
/// sees it; see [`Negotiation::wake_driver`].
const WAKE_STREAM: u16 = 1000;
const WAKE_LABEL: &str = "psync-wake";
/// How long the signed hello may take once the channel is open.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long gathering may take before the offer or answer goes out with
/// the candidates found so far: host candidates take milliseconds, a STUN
/// or TURN round trip well under a second, an unreachable server ~10 s.
const GATHER_DEADLINE: Duration = Duration::from_secs(3);
/// ...or this long, when nothing at all was gathered by then.
const GATHER_DEADLINE_EMPTY: Duration = Duration::from_secs(15);
/// How often the WebRTC driver is woken while the data channel opens...
const CONNECT_NUDGE: Duration = Duration::from_millis(2);
/// ...for at most this long (a connection that takes longer is over a slow
/// path, where the driver's own ticks matter less).
const CONNECT_NUDGE_WINDOW: Duration = Duration::from_secs(2);
/// A link whose path went silent this long is "disconnected" (ICE keeps
/// checking); this long more and it has failed: the link ends and peering
/// dials again (webrtc's default of 25 s left a laptop that changed
/// networks without sync for half a minute).
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(5);
/// See [`ICE_DISCONNECTED_AFTER`].
const ICE_FAILED_AFTER: Duration = Duration::from_secs(15);
/// How often an idle path is checked.
const ICE_KEEPALIVE: Duration = Duration::from_secs(2);
/// How often ICE sends the next connectivity check (RFC 8445's pacing, Ta,
/// is 50 ms; webrtc's default of 200 ms put ~0.2 s on every connection).
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per candidate pair before it counts as failed: 2 s of trying,
/// longer than webrtc's default 1.4 s, for paths through a TURN server.
const ICE_CHECKS_PER_PAIR: u16 = 40;
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
    /// An offer to replace a relayed link with a direct one: if this
    /// connection comes out relayed too, both sides drop it and keep the
    /// link they have.
    Upgrade(String),
    /// "Offer to me again": the answering side's network changed and only
    /// the offering side dials.
    Redial,
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
    secured: mpsc::Sender<()>,
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
        if state == RTCPeerConnectionState::Connected {
            let _ = self.secured.try_send(());
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
    /// DTLS is up (the peer connection is "connected").
    secured: mpsc::Receiver<()>,
    /// See [`WAKE_STREAM`].
    wake: Arc<dyn DataChannel>,
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
    pub async fn new(certificate: &DtlsCertificate, ice: &IceSetup) -> Result<Self> {
        let (gathered_tx, gathered) = mpsc::channel(1);
        let (remote_tx, remote_channel) = mpsc::channel(1);
        let (failed_tx, failed) = mpsc::channel(1);
        let (secured_tx, secured) = mpsc::channel(1);
        let mut settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_network_types(vec![NetworkType::Udp4, NetworkType::Udp6])
            .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), Some(ICE_KEEPALIVE))
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_CHECKS_PER_PAIR))
            .with_receive_mtu(RECEIVE_MTU);
        if ice.bind.iter().all(|a| a.ip().is_loopback()) {
            settings = settings.with_sctp_mtu(LOOPBACK_SCTP_MTU);
        }
        let settings = settings.build();
        let servers = ice
            .servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let policy = if ice.relay_only { RTCIceTransportPolicy::Relay } else { RTCIceTransportPolicy::All };
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(servers)
            .with_ice_transport_policy(policy)
            .with_certificates(vec![rtc_certificate(certificate)?])
            .build();
        let connection = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Events {
                gathered: gathered_tx,
                remote_channel: remote_tx,
                failed: failed_tx,
                secured: secured_tx,
            }))
            .with_udp_addrs(ice.bind.clone())
            .with_data_channel_send_buffer_limit(SEND_BUFFER_LIMIT)
            .with_runtime(super::udp_runtime::LargeUdpBuffers::shared())
            .build()
            .await
            .map_err(|e| anyhow!("cannot create a WebRTC peer connection: {e}"))?;
        let wake = connection
            .create_data_channel(
                WAKE_LABEL,
                Some(RTCDataChannelInit { negotiated: Some(WAKE_STREAM), ..Default::default() }),
            )
            .await
            .map_err(|e| anyhow!("cannot create the wake channel: {e}"))?;
        Ok(Self {
            connection: Arc::new(connection),
            gathered,
            remote_channel,
            failed,
            secured,
            wake,
            local_channel: None,
        })
    }

    /// The local SDP once gathering completes, or at [`GATHER_DEADLINE`]
    /// with what was gathered by then: one unreachable STUN/TURN server
    /// must not fail the connection.
    ///
    /// A description without a single candidate is never sent: on a machine
    /// too loaded to gather within the deadline, gathering gets up to
    /// [`GATHER_DEADLINE_EMPTY`] (such an offer could only fail, and the
    /// next attempt would come after a growing wait).
    async fn local_sdp(&mut self) -> Result<String> {
        let started = tokio::time::Instant::now();
        let mut deadline = GATHER_DEADLINE;
        let description = loop {
            let complete = tokio::time::timeout_at(started + deadline, self.gathered.recv()).await.is_ok();
            let description =
                self.connection.local_description().await.ok_or_else(|| anyhow!("no local description"))?;
            let has_candidates = description.sdp.lines().any(|l| l.starts_with("a=candidate:"));
            if complete || has_candidates || deadline >= GATHER_DEADLINE_EMPTY {
                if !complete {
                    tracing::debug!("ICE gathering not complete after {deadline:?}; sending what was gathered");
                }
                break description;
            }
            deadline = GATHER_DEADLINE_EMPTY;
        };
        let candidates: Vec<&str> = description
            .sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a=candidate:"))
            .filter_map(|c| c.split_whitespace().nth(7))
            .collect();
        tracing::debug!(?candidates, "local candidates");
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

    /// Makes webrtc's driver run its loop now. Once DTLS is up the SCTP
    /// INIT is queued, but the driver sends it only at its next wake-up, the
    /// ICE agent's 200 ms tick (rtc-ice's floor once connected): ~0.2 s on
    /// every connection. Touching the wake channel wakes the driver at once.
    async fn wake_driver(&self) {
        let _ = self.wake.set_buffered_amount_low_threshold(0).await;
    }

    /// Waits until the data channel is open. For the first
    /// [`CONNECT_NUDGE_WINDOW`] the driver is woken every [`CONNECT_NUDGE`]:
    /// each step of the DTLS, SCTP and data-channel setup otherwise waits
    /// for the driver's next timer tick.
    pub async fn connect(mut self, timeout: Duration) -> Result<Link> {
        let mut nudge = tokio::time::interval(CONNECT_NUDGE);
        let nudge_until = tokio::time::Instant::now() + CONNECT_NUDGE_WINDOW;
        let wait = async {
            let channel = match self.local_channel.take() {
                Some(channel) => channel,
                None => loop {
                    tokio::select! {
                        Some(()) = self.secured.recv() => self.wake_driver().await,
                        _ = nudge.tick(), if tokio::time::Instant::now() < nudge_until => self.wake_driver().await,
                        channel = self.remote_channel.recv() => break channel.ok_or_else(|| anyhow!("connection dropped"))?,
                        state = self.failed.recv() => bail!("connection {}", state.map(|s| s.to_string()).unwrap_or_default()),
                    }
                },
            };
            loop {
                tokio::select! {
                    Some(()) = self.secured.recv() => self.wake_driver().await,
                    _ = nudge.tick(), if tokio::time::Instant::now() < nudge_until => self.wake_driver().await,
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
        let reader = tokio::spawn(read_frames(self.connection.clone(), channel.clone(), frames_tx, self.failed));
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
    mut failed: mpsc::Receiver<RTCPeerConnectionState>,
) {
    let mut reassembler = Reassembler::default();
    loop {
        let event = tokio::select! {
            event = channel.poll() => event,
            Some(state) = failed.recv() => {
                if state == RTCPeerConnectionState::Failed {
                    tracing::info!("the connection failed (its path went silent); ending the link");
                }
                break;
            }
        };
        let Some(event) = event else { break };
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStats {
    /// Bytes sent over this connection.
    pub bytes_sent: u64,
    /// Bytes received over this connection.
    pub bytes_received: u64,
    /// Round-trip time of the pair in use, once measured.
    pub rtt_ms: Option<f64>,
    /// LAN, direct or relayed, once a pair is selected.
    pub path: Option<LinkPath>,
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
        stats.path = super::path::selected(&self.0).await;
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
pub(crate) mod tests;
