//! The client the daemon uses: connects (`ws://` or `wss://`), logs in,
//! reconnects, and turns frames into [`ClientEvent`]s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use psync_base::{codec, ContentHash};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::*;
use crate::envelope::Envelope;
use crate::ice::IceServer;
use crate::identity::{DeviceKey, PublicKey};
use crate::roster::{Roster, RosterEntry};
use crate::server::{login_message, ClientMsg, ServerMsg, LOGIN_DOMAIN};

/// A client connection: plain TCP or TLS.
#[derive(Debug)]
pub enum ClientStream {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://`
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub(crate) type ClientWs = tokio_tungstenite::WebSocketStream<ClientStream>;

static EXTRA_ROOTS: std::sync::OnceLock<Mutex<Vec<rustls_pki_types::CertificateDer<'static>>>> =
    std::sync::OnceLock::new();

fn extra_roots() -> &'static Mutex<Vec<rustls_pki_types::CertificateDer<'static>>> {
    EXTRA_ROOTS.get_or_init(|| {
        use rustls_pki_types::pem::PemObject;
        // A self-hosted server's own CA, e.g. PSYNC_SIGNAL_CA=/etc/psync/ca.pem.
        let roots = std::env::var_os("PSYNC_SIGNAL_CA")
            .and_then(|path| rustls_pki_types::CertificateDer::pem_file_iter(path).ok())
            .map(|it| it.flatten().collect())
            .unwrap_or_default();
        Mutex::new(roots)
    })
}

/// Trusts `pem` (a CA or self-signed certificate) for `wss://` connections,
/// besides the public web roots.
pub fn trust_ca_pem(pem: &[u8]) -> Result<(), NetError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| NetError::Ws(format!("not a PEM certificate: {e}")))?;
    lock(extra_roots()).extend(certs);
    Ok(())
}

/// Connects to `ws://` or `wss://` and performs the WebSocket handshake.
async fn connect(url: &str) -> Result<ClientWs, NetError> {
    connect_with(url, client_ws_config()).await
}

/// [`connect`] with other WebSocket limits (the relay's larger frames).
pub(crate) async fn connect_with(
    url: &str,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
) -> Result<ClientWs, NetError> {
    let request = url.into_client_request().map_err(|e| NetError::Ws(format!("bad server URL {url:?}: {e}")))?;
    let uri = request.uri().clone();
    let host =
        uri.host().ok_or_else(|| NetError::Ws(format!("no host in {url:?}")))?.trim_matches(['[', ']']).to_string();
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(NetError::Ws(format!("{url:?}: use ws:// or wss://"))),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| NetError::Io(format!("{host}:{port}"), e))?;
    let _ = tcp.set_nodelay(true);
    let stream = if tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in lock(extra_roots()).iter() {
            let _ = roots.add(cert.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NetError::Ws(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name =
            rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| NetError::Ws(format!("{host}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| NetError::Ws(format!("TLS with {host}: {e}")))?;
        ClientStream::Tls(Box::new(tls))
    } else {
        ClientStream::Plain(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| NetError::Ws(format!("cannot connect to {url}: {e}")))?;
    Ok(ws)
}

/// What the client tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Logged in: the group's roster log and who is online.
    LoggedIn {
        /// The roster log.
        roster: Vec<RosterEntry>,
        /// Members online.
        online: Vec<PublicKey>,
    },
    /// A member came online.
    Online(PublicKey),
    /// A member went offline.
    Offline(PublicKey),
    /// A relayed envelope (check it with [`Envelope::open`]).
    Relayed(Envelope),
    /// The roster grew.
    RosterAppended(RosterEntry),
    /// The whole roster log, as asked with [`SignalClient::refresh_roster`].
    Roster(Vec<RosterEntry>),
    /// The connection dropped; the client reconnects with backoff.
    Disconnected(String),
    /// The server refused something.
    Refused(String),
    /// An invite mailbox was opened.
    InviteOpened(u32),
    /// A message from the joining device.
    InviteMsg {
        /// The mailbox.
        mailbox: u32,
        /// Its bytes.
        payload: Vec<u8>,
    },
    /// STUN/TURN servers from the server's operator, with credentials for
    /// this device; the client asks again at half their lifetime.
    IceServers {
        /// The servers.
        servers: Vec<IceServer>,
        /// When the credentials expire (unix milliseconds).
        expires_ms: u64,
    },
}

/// A server silent this long (no pong to three pings) is taken for gone and
/// the client reconnects: after a network change a TCP connection can hang
/// for many minutes without an error.
pub const SERVER_SILENCE_TIMEOUT: Duration = Duration::from_secs(45);
/// How often the client pings.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// The soonest the client asks for fresh ICE credentials again.
const MIN_ICE_REFRESH: Duration = Duration::from_secs(30);

/// A logged-in connection to the signalling server that reconnects by itself.
#[derive(Debug)]
pub struct SignalClient {
    tx: mpsc::UnboundedSender<ClientMsg>,
    reconnect: Arc<tokio::sync::Notify>,
    /// Events, in order.
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
}

impl SignalClient {
    /// Connects to `url` as `key` in `group`, and keeps reconnecting (1 s
    /// doubling to 30 s) until dropped.
    pub fn spawn(url: String, group: ContentHash, key: Arc<DeviceKey>) -> SignalClient {
        let (tx, mut outgoing) = mpsc::unbounded_channel::<ClientMsg>();
        let (events_tx, events) = mpsc::unbounded_channel();
        let reconnect = Arc::new(tokio::sync::Notify::new());
        let asked = reconnect.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let started = tokio::time::Instant::now();
                match session(&url, group, &key, &mut outgoing, &events_tx, &asked).await {
                    Ok(()) => return, // the client was dropped
                    Err(reason) => {
                        if events_tx.send(ClientEvent::Disconnected(reason)).is_err() {
                            return;
                        }
                    }
                }
                // A session that lived a while starts the backoff afresh.
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = asked.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        SignalClient { tx, reconnect, events }
    }

    /// Drops the connection and connects again at once (the network changed:
    /// the old TCP connection may hang rather than fail).
    pub fn reconnect(&self) {
        self.reconnect.notify_one();
    }

    /// Relays a sealed envelope.
    pub fn relay(&self, envelope: Envelope) {
        let _ = self.tx.send(ClientMsg::Relay { envelope });
    }

    /// Appends a signed roster entry.
    pub fn append(&self, entry: RosterEntry) {
        let _ = self.tx.send(ClientMsg::Append { entry });
    }

    /// Asks for the group's roster again (answered by [`ClientEvent::Roster`]).
    pub fn refresh_roster(&self) {
        let _ = self.tx.send(ClientMsg::GetRoster);
    }

    /// Opens an invite mailbox (answered by [`ClientEvent::InviteOpened`]).
    pub fn open_invite(&self) {
        let _ = self.tx.send(ClientMsg::OpenInvite);
    }

    /// Sends bytes to the joining device.
    pub fn invite_msg(&self, mailbox: u32, payload: Vec<u8>) {
        let _ = self.tx.send(ClientMsg::InviteMsg { mailbox, payload });
    }

    /// Closes (burns) an invite mailbox.
    pub fn close_invite(&self, mailbox: u32) {
        let _ = self.tx.send(ClientMsg::CloseInvite { mailbox });
    }
}

/// The joining device's side of an invite mailbox (not logged in).
#[derive(Debug)]
pub struct JoinChannel {
    mailbox: u32,
    sink: futures_util::stream::SplitSink<ClientWs, WsMessage>,
    source: futures_util::stream::SplitStream<ClientWs>,
}

impl JoinChannel {
    /// Enters mailbox `mailbox` on `url` with a first message.
    pub async fn open(url: &str, mailbox: u32, first: Vec<u8>) -> Result<JoinChannel, NetError> {
        let ws = connect(url).await?;
        let (sink, source) = ws.split();
        let mut channel = JoinChannel { mailbox, sink, source };
        channel.send_msg(&ClientMsg::JoinInvite { mailbox, payload: first }).await?;
        Ok(channel)
    }

    async fn send_msg(&mut self, msg: &ClientMsg) -> Result<(), NetError> {
        let bytes = codec::encode(msg).map_err(|e| NetError::Ws(e.to_string()))?;
        self.sink.send(WsMessage::Binary(bytes.into())).await.map_err(|e| NetError::Ws(e.to_string()))
    }

    /// Sends bytes to the inviter.
    pub async fn send(&mut self, payload: Vec<u8>) -> Result<(), NetError> {
        let msg = ClientMsg::InviteMsg { mailbox: self.mailbox, payload };
        self.send_msg(&msg).await
    }

    /// The inviter's next message.
    pub async fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        while let Some(frame) = self.source.next().await {
            let Ok(WsMessage::Binary(b)) = frame else { continue };
            match codec::decode::<ServerMsg>(&b) {
                Ok(ServerMsg::InviteMsg { payload, .. }) => return Ok(payload),
                Ok(ServerMsg::Error { message, .. }) => return Err(NetError::Refused(message)),
                _ => {}
            }
        }
        Err(NetError::Refused("the invite ended (wrong code, or the inviter stopped)".into()))
    }
}

async fn session(
    url: &str,
    group: ContentHash,
    key: &DeviceKey,
    outgoing: &mut mpsc::UnboundedReceiver<ClientMsg>,
    events: &mpsc::UnboundedSender<ClientEvent>,
    reconnect: &tokio::sync::Notify,
) -> Result<(), String> {
    let ws = connect(url).await.map_err(|e| e.to_string())?;
    let (mut sink, mut source) = ws.split();
    let decode = |m: WsMessage| -> Option<ServerMsg> {
        match m {
            WsMessage::Binary(b) => codec::decode(&b).ok(),
            _ => None,
        }
    };
    let challenge = loop {
        match source.next().await {
            Some(Ok(m)) => {
                if let Some(msg) = decode(m) {
                    break msg;
                }
            }
            _ => return Err("connection closed before the challenge".into()),
        }
    };
    let ServerMsg::Challenge { server_id, nonce, .. } = challenge else {
        return Err("the server did not send a challenge".into());
    };
    let signature = key.sign(LOGIN_DOMAIN, &login_message(&server_id, &nonce, &group, &key.public()));
    let login = codec::encode(&ClientMsg::Login { group, key: key.public(), signature }).map_err(|e| e.to_string())?;
    sink.send(WsMessage::Binary(login.into())).await.map_err(|e| e.to_string())?;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut heard = tokio::time::Instant::now();
    let far = Duration::from_secs(365 * 24 * 3600);
    let refresh_ice = tokio::time::sleep(far);
    tokio::pin!(refresh_ice);
    loop {
        tokio::select! {
            _ = reconnect.notified() => return Err("reconnecting (the network changed)".into()),
            _ = &mut refresh_ice => {
                refresh_ice.as_mut().reset(tokio::time::Instant::now() + far);
                let bytes = codec::encode(&ClientMsg::GetIceServers).map_err(|e| e.to_string())?;
                sink.send(WsMessage::Binary(bytes.into())).await.map_err(|e| e.to_string())?;
            }
            message = outgoing.recv() => {
                let Some(message) = message else { return Ok(()) };
                let bytes = codec::encode(&message).map_err(|e| e.to_string())?;
                sink.send(WsMessage::Binary(bytes.into())).await.map_err(|e| e.to_string())?;
            }
            frame = source.next() => {
                let Some(Ok(frame)) = frame else { return Err("connection lost".into()) };
                heard = tokio::time::Instant::now();
                let Some(msg) = decode(frame) else { continue };
                let event = match msg {
                    ServerMsg::Welcome { roster, online } => ClientEvent::LoggedIn { roster, online },
                    ServerMsg::Online(k) => ClientEvent::Online(k),
                    ServerMsg::Offline(k) => ClientEvent::Offline(k),
                    ServerMsg::Relayed(e) => ClientEvent::Relayed(e),
                    ServerMsg::RosterAppended(e) => ClientEvent::RosterAppended(e),
                    ServerMsg::Roster { roster } => ClientEvent::Roster(roster),
                    ServerMsg::Error { message, .. } => ClientEvent::Refused(message),
                    ServerMsg::InviteOpened { mailbox } => ClientEvent::InviteOpened(mailbox),
                    ServerMsg::InviteMsg { mailbox, payload } => ClientEvent::InviteMsg { mailbox, payload },
                    ServerMsg::IceServers { mut servers, expires_ms } => {
                        if !IceServer::within_limits(&servers) {
                            tracing::warn!("the signalling server sent ICE servers over the limits; ignored");
                            continue;
                        }
                        let handed = servers.len();
                        servers.retain(IceServer::usable);
                        if servers.len() < handed {
                            tracing::warn!("the signalling server sent {} unusable ICE server(s); ignored", handed - servers.len());
                        }
                        let left = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
                        refresh_ice.as_mut().reset(tokio::time::Instant::now() + (left / 2).max(MIN_ICE_REFRESH));
                        ClientEvent::IceServers { servers, expires_ms }
                    }
                    ServerMsg::Pong | ServerMsg::Challenge { .. } | ServerMsg::Registered { .. } => continue,
                };
                if events.send(event).is_err() {
                    return Ok(());
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > SERVER_SILENCE_TIMEOUT {
                    return Err(format!("the server was silent for {} s", SERVER_SILENCE_TIMEOUT.as_secs()));
                }
                let bytes = codec::encode(&ClientMsg::Ping).map_err(|e| e.to_string())?;
                sink.send(WsMessage::Binary(bytes.into())).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// Registers a new group's roster with the server (what `psync init` does).
pub async fn register(url: &str, roster: &Roster) -> Result<ContentHash, NetError> {
    let ws = connect(url).await?;
    let (mut sink, mut source) = ws.split();
    let bytes = codec::encode(&ClientMsg::Register { entries: roster.entries().to_vec() })
        .map_err(|e| NetError::Ws(e.to_string()))?;
    sink.send(WsMessage::Binary(bytes.into())).await.map_err(|e| NetError::Ws(e.to_string()))?;
    while let Some(frame) = source.next().await {
        let Ok(WsMessage::Binary(b)) = frame else { continue };
        match codec::decode::<ServerMsg>(&b) {
            Ok(ServerMsg::Registered { group }) => return Ok(group),
            Ok(ServerMsg::Error { message, .. }) => return Err(NetError::Refused(message)),
            _ => {}
        }
    }
    Err(NetError::Ws("connection closed before the server answered".into()))
}
