//! The network around [`ServerState`]: a WebSocket server (tokio-tungstenite,
//! over TLS with rustls when given a certificate) and the client the daemon
//! uses (`ws://` or `wss://`). Thin: frames in and out, persistence,
//! reconnection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use psync_base::{codec, ContentHash};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::envelope::Envelope;
use crate::identity::{DeviceKey, PublicKey};
use crate::roster::{Roster, RosterEntry};
use crate::server::{
    login_message, ClientMsg, ConnId, Origin, ServerMsg, ServerOut, ServerState, LOGIN_DOMAIN, MAX_FRAME_BYTES,
};

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
    /// A stored roster failed verification.
    #[error("stored group {0} is invalid: {1}")]
    BadStoredRoster(String, String),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What the server accepts from clients: small frames, and small buffers
/// (tungstenite's default 128 KiB read buffer per connection made 1,000
/// connections cost 349 MB).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

/// Largest frame a client accepts from the server: a `Welcome` carries the
/// whole roster log (up to `MAX_ROSTER_ENTRIES` entries of about 250 bytes).
pub const MAX_SERVER_FRAME_BYTES: usize = 4 * 1024 * 1024;

fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_SERVER_FRAME_BYTES))
        .max_frame_size(Some(MAX_SERVER_FRAME_BYTES))
}

enum Outgoing {
    Frame(Vec<u8>),
    Close,
}

/// The server's persistent state: one file per group with its roster log.
#[derive(Debug, Clone)]
pub struct ServerDir(PathBuf);

impl ServerDir {
    /// Uses `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<Self, NetError> {
        std::fs::create_dir_all(dir.join("groups")).map_err(|e| NetError::Io(dir.display().to_string(), e))?;
        Ok(Self(dir.to_path_buf()))
    }

    /// This server's identity, made once.
    pub fn server_id(&self) -> Result<[u8; 16], NetError> {
        let path = self.0.join("server-id");
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(id) = bytes.try_into() {
                return Ok(id);
            }
        }
        let id: [u8; 16] = rand::random();
        std::fs::write(&path, id).map_err(|e| NetError::Io(path.display().to_string(), e))?;
        Ok(id)
    }

    /// Every stored group, each verified from its first entry.
    pub fn load_groups(&self) -> Result<Vec<Roster>, NetError> {
        let dir = self.0.join("groups");
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| NetError::Io(dir.display().to_string(), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "roster") {
                continue;
            }
            let name = path.display().to_string();
            let bytes = std::fs::read(&path).map_err(|e| NetError::Io(name.clone(), e))?;
            let log: Vec<RosterEntry> =
                codec::decode(&bytes).map_err(|e| NetError::BadStoredRoster(name.clone(), e.to_string()))?;
            out.push(Roster::from_entries(log).map_err(|e| NetError::BadStoredRoster(name, e.to_string()))?);
        }
        Ok(out)
    }

    /// Writes a group's log atomically (temp file, fsync, rename).
    pub fn store(&self, roster: &Roster) -> Result<(), NetError> {
        let path = self.0.join("groups").join(format!("{}.roster", roster.group_id().to_hex()));
        let tmp = path.with_extension("tmp");
        let bytes = codec::encode(&roster.entries().to_vec()).map_err(|e| NetError::Ws(e.to_string()))?;
        let io = |e| NetError::Io(tmp.display().to_string(), e);
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut file, &bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// A connection's writer: frames queued, counted in bytes.
struct Writer {
    frames: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Ends the connection at once (its writer may be stuck on a client
    /// that does not read).
    kill: Arc<tokio::sync::Notify>,
}

struct Shared {
    state: Mutex<ServerState>,
    conns: Mutex<HashMap<ConnId, Writer>>,
    /// Connections per origin.
    per_ip: Mutex<HashMap<Origin, usize>>,
    /// Per-origin token buckets: (tokens, at ms).
    ip_rate: Mutex<HashMap<Origin, (f64, u64)>>,
    limits: IpLimits,
    dir: ServerDir,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// One message from `origin`: within its rate?
    fn ip_allows(&self, origin: Origin, now: u64) -> bool {
        let mut rates = lock(&self.ip_rate);
        let rate = self.limits.messages_per_second;
        let (tokens, at) = rates.entry(origin).or_insert((rate, now));
        *tokens = (*tokens + now.saturating_sub(*at) as f64 / 1000.0 * rate).min(rate);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    fn dispatch(&self, outs: Vec<ServerOut>) {
        for out in outs {
            match out {
                ServerOut::Send(conn, msg) => {
                    if let (Ok(bytes), Some(writer)) = (codec::encode(&msg), lock(&self.conns).get(&conn)) {
                        let len = bytes.len();
                        let queued = writer.queued.fetch_add(len, std::sync::atomic::Ordering::SeqCst) + len;
                        if queued > MAX_OUTGOING_BYTES {
                            tracing::warn!(conn, "the client does not read ({} MiB waiting); closing", queued >> 20);
                            writer.kill.notify_one();
                        } else {
                            let _ = writer.frames.send(Outgoing::Frame(bytes));
                        }
                    }
                }
                ServerOut::Close(conn, reason) => {
                    tracing::info!(conn, %reason, "closing connection");
                    if let Some(writer) = lock(&self.conns).get(&conn) {
                        let _ = writer.frames.send(Outgoing::Close);
                    }
                }
                ServerOut::Persist(group) => {
                    let roster = lock(&self.state).roster(&group).cloned();
                    if let Some(roster) = roster {
                        if let Err(e) = self.dir.store(&roster) {
                            tracing::error!("cannot persist group {group}: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// Serves signalling on `listener` (plain) until the task is dropped.
pub async fn serve(listener: TcpListener, dir: ServerDir) -> Result<(), NetError> {
    serve_with_limits(listener, dir, IpLimits::default(), None).await
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key.
pub fn tls_acceptor(cert_pem: &Path, key_pem: &Path) -> Result<tokio_rustls::TlsAcceptor, NetError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .and_then(|it| it.collect())
        .map_err(|e| NetError::Ws(format!("cannot read certificates from {}: {e}", cert_pem.display())))?;
    if certs.is_empty() {
        return Err(NetError::Ws(format!("no certificate in {}", cert_pem.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .map_err(|e| NetError::Ws(format!("cannot read the private key from {}: {e}", key_pem.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Ws(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| NetError::Ws(format!("certificate and key do not fit: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// [`serve`] with other per-address limits (load tests, NATed offices) and,
/// with `tls`, over TLS.
pub async fn serve_with_limits(
    listener: TcpListener,
    dir: ServerDir,
    limits: IpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), NetError> {
    let state = ServerState::new(dir.server_id()?, dir.load_groups()?);
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        conns: Mutex::new(HashMap::new()),
        per_ip: Mutex::new(HashMap::new()),
        ip_rate: Mutex::new(HashMap::new()),
        limits,
        dir,
    });
    let ticker = shared.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            let outs = lock(&ticker.state).tick(now_ms());
            ticker.dispatch(outs);
        }
    });
    let mut next_conn: ConnId = 1;
    loop {
        let (stream, addr) = listener.accept().await.map_err(|e| NetError::Io("accept".into(), e))?;
        let conn = next_conn;
        next_conn += 1;
        {
            let mut per_ip = lock(&shared.per_ip);
            let count = per_ip.entry(origin(addr.ip())).or_insert(0);
            if *count >= shared.limits.connections {
                tracing::warn!(%addr, "too many connections from this address");
                continue;
            }
            *count += 1;
        }
        let shared = shared.clone();
        match tls.clone() {
            None => {
                tokio::spawn(handle_connection(shared, stream, addr, conn));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => handle_connection(shared, tls, addr, conn).await,
                        _ => {
                            tracing::debug!(%addr, "TLS handshake failed");
                            if let Some(count) = lock(&shared.per_ip).get_mut(&origin(addr.ip())) {
                                *count = count.saturating_sub(1);
                            }
                        }
                    }
                });
            }
        }
    }
}

async fn handle_connection<S>(shared: Arc<Shared>, stream: S, addr: SocketAddr, conn: ConnId)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let from = origin(addr.ip());
    let result = async {
        // A client that never finishes the upgrade is not kept.
        let ws = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())),
        )
        .await
        .map_err(|_| NetError::Ws("the WebSocket handshake took too long".into()))?
        .map_err(|e| NetError::Ws(e.to_string()))?;
        let (mut sink, mut source) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let kill = Arc::new(tokio::sync::Notify::new());
        lock(&shared.conns).insert(conn, Writer { frames: tx, queued: queued.clone(), kill: kill.clone() });
        let nonce: [u8; 32] = rand::random();
        let outs = lock(&shared.state).connected_from(conn, from, nonce, now_ms());
        shared.dispatch(outs);
        let writer = tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                match out {
                    Outgoing::Frame(bytes) => {
                        let len = bytes.len();
                        if sink.send(WsMessage::Binary(bytes.into())).await.is_err() {
                            break;
                        }
                        queued.fetch_sub(len, std::sync::atomic::Ordering::SeqCst);
                    }
                    Outgoing::Close => {
                        let _ = sink.close().await;
                        break;
                    }
                }
            }
        });
        let mut writer = writer;
        loop {
            let frame = tokio::select! {
                frame = source.next() => frame,
                // Closed by the server, or a client that does not read.
                _ = &mut writer => break,
                _ = kill.notified() => break,
            };
            let bytes = match frame {
                None | Some(Ok(WsMessage::Close(_)) | Err(_)) => break,
                Some(Ok(WsMessage::Binary(bytes))) => bytes.to_vec(),
                // Text frames are not part of the protocol.
                Some(Ok(WsMessage::Text(_))) => vec![0xFF],
                Some(Ok(_)) => continue,
            };
            if !shared.ip_allows(from, now_ms()) {
                tracing::warn!(%addr, "message rate from this address exceeded");
                break;
            }
            let outs = lock(&shared.state).frame(conn, &bytes, now_ms());
            shared.dispatch(outs);
        }
        writer.abort();
        Ok::<(), NetError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%addr, "connection ended: {e}");
    }
    lock(&shared.conns).remove(&conn);
    if let Some(count) = lock(&shared.per_ip).get_mut(&from) {
        *count = count.saturating_sub(1);
    }
    let outs = lock(&shared.state).disconnected(conn);
    shared.dispatch(outs);
}

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

type ClientWs = tokio_tungstenite::WebSocketStream<ClientStream>;

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
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(client_ws_config()))
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
}

/// A logged-in connection to the signalling server that reconnects by itself.
#[derive(Debug)]
pub struct SignalClient {
    tx: mpsc::UnboundedSender<ClientMsg>,
    /// Events, in order.
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
}

impl SignalClient {
    /// Connects to `url` as `key` in `group`, and keeps reconnecting (1 s
    /// doubling to 30 s) until dropped.
    pub fn spawn(url: String, group: ContentHash, key: Arc<DeviceKey>) -> SignalClient {
        let (tx, mut outgoing) = mpsc::unbounded_channel::<ClientMsg>();
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                match session(&url, group, &key, &mut outgoing, &events_tx).await {
                    Ok(()) => return, // the client was dropped
                    Err(reason) => {
                        if events_tx.send(ClientEvent::Disconnected(reason)).is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        SignalClient { tx, events }
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
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            message = outgoing.recv() => {
                let Some(message) = message else { return Ok(()) };
                let bytes = codec::encode(&message).map_err(|e| e.to_string())?;
                sink.send(WsMessage::Binary(bytes.into())).await.map_err(|e| e.to_string())?;
            }
            frame = source.next() => {
                let Some(Ok(frame)) = frame else { return Err("connection lost".into()) };
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
                    ServerMsg::Pong | ServerMsg::Challenge { .. } | ServerMsg::Registered { .. } => continue,
                };
                if events.send(event).is_err() {
                    return Ok(());
                }
            }
            _ = ping.tick() => {
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
