//! The signalling server's network side: WebSocket connections, per-origin
//! limits, outgoing byte caps, and the groups persisted on disk.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use psync_base::codec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::prefixed::read_path;
use super::relay_server::{relay_ws_config, serve_relay};
use super::*;
use crate::ice::IcePolicy;
use crate::relay::policy::RelayLimits;
use crate::relay::protocol::RELAY_PATH;
use crate::relay::service::{RelayLocation, RelayService};
use crate::roster::{Roster, RosterEntry};
use crate::server::{ConnId, Origin, ServerOut, ServerState};

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
    /// Relay storage, when the server runs it.
    relay: Option<Arc<Mutex<RelayService>>>,
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
    serve_with(listener, dir, ServeOptions::default()).await
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

/// How a server runs besides its defaults.
#[derive(Default, Clone)]
#[allow(missing_debug_implementations)] // the TLS acceptor has no Debug
pub struct ServeOptions {
    /// Per-address limits (load tests and NATed offices need others).
    pub limits: IpLimits,
    /// Serve `wss://` with this.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// STUN/TURN servers handed to logged-in members.
    pub ice: IcePolicy,
    /// Run relay storage there, with these limits.
    pub relay: Option<(RelayLocation, RelayLimits)>,
}

/// [`serve`] with [`ServeOptions`].
pub async fn serve_with(listener: TcpListener, dir: ServerDir, options: ServeOptions) -> Result<(), NetError> {
    let ServeOptions { limits, tls, ice, relay } = options;
    let state = ServerState::new(dir.server_id()?, dir.load_groups()?).with_ice(ice);
    let relay = match relay {
        Some((location, limits)) => {
            let opened = tokio::task::spawn_blocking(move || {
                location
                    .open()
                    .and_then(|store| RelayService::open(store, limits))
                    .map_err(|e| NetError::Io(format!("relay storage {location}"), e))
            })
            .await
            .map_err(|e| NetError::Ws(format!("opening the relay storage: {e}")))??;
            Some(Arc::new(Mutex::new(opened)))
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        conns: Mutex::new(HashMap::new()),
        per_ip: Mutex::new(HashMap::new()),
        ip_rate: Mutex::new(HashMap::new()),
        limits,
        dir,
        relay,
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
        // Offers and answers are small frames relayed at once: Nagle's
        // algorithm would hold each behind the peer's delayed ACK (~40 ms).
        let _ = stream.set_nodelay(true);
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
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_path(stream)).await {
        Ok(Ok((Some(path), stream))) if path == RELAY_PATH => match shared.relay.clone() {
            Some(relay) => {
                let result = async {
                    let ws = tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        tokio_tungstenite::accept_async_with_config(stream, Some(relay_ws_config())),
                    )
                    .await
                    .map_err(|_| NetError::Ws("the WebSocket handshake took too long".into()))?
                    .map_err(|e| NetError::Ws(e.to_string()))?;
                    serve_relay(&shared.state, relay, ws, addr).await
                }
                .await;
                if let Err(e) = result {
                    tracing::debug!(%addr, "relay connection ended: {e}");
                }
            }
            None => {
                tracing::debug!(%addr, "relay asked for, but this server runs none");
                let mut stream = stream;
                let _ = tokio::io::AsyncWriteExt::write_all(
                    &mut stream,
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            }
        },
        Ok(Ok((_, stream))) => handle_signalling(&shared, stream, addr, conn).await,
        Ok(Err(e)) => tracing::debug!(%addr, "connection ended: {e}"),
        Err(_) => tracing::debug!(%addr, "no request within the handshake timeout"),
    }
    if let Some(count) = lock(&shared.per_ip).get_mut(&from) {
        *count = count.saturating_sub(1);
    }
}

async fn handle_signalling<S>(shared: &Arc<Shared>, stream: S, addr: SocketAddr, conn: ConnId)
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
    let outs = lock(&shared.state).disconnected(conn);
    shared.dispatch(outs);
}
