//! The relay's WebSocket (`/relay` on the signalling server's port): a
//! login against the group's current roster, then one request answered at
//! a time. Every request looks the roster up again, so a removed device is
//! cut off at its next request, even on an open connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use psync_base::codec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::*;
use crate::relay::policy::RelayRefusal;
use crate::relay::protocol::{
    relay_login_message, RelayRequest, RelayResponse, MAX_RELAY_FRAME_BYTES, RELAY_LOGIN_DOMAIN, RELAY_PROTOCOL,
};
use crate::relay::service::RelayService;
use crate::server::ServerState;

/// A relay connection silent this long is closed (milliseconds).
pub const RELAY_IDLE_TIMEOUT_MS: u64 = 60_000;

pub(crate) fn relay_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_RELAY_FRAME_BYTES))
        .max_frame_size(Some(MAX_RELAY_FRAME_BYTES))
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, response: &RelayResponse) -> Result<(), NetError> {
    let bytes = codec::encode(response).map_err(|e| NetError::Ws(e.to_string()))?;
    ws.send(WsMessage::Binary(bytes.into())).await.map_err(|e| NetError::Ws(e.to_string()))
}

async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Result<Option<RelayRequest>, NetError> {
    let idle = std::time::Duration::from_millis(RELAY_IDLE_TIMEOUT_MS);
    loop {
        let frame = match tokio::time::timeout(idle, ws.next()).await {
            Err(_) => return Err(NetError::Ws("idle too long".into())),
            Ok(None | Some(Ok(WsMessage::Close(_)))) => return Ok(None),
            Ok(Some(Err(e))) => return Err(NetError::Ws(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            WsMessage::Binary(bytes) => {
                return codec::decode(&bytes).map(Some).map_err(|e| NetError::Ws(format!("malformed request: {e}")))
            }
            WsMessage::Text(_) => return Err(NetError::Ws("text frames are not part of the protocol".into())),
            _ => continue,
        }
    }
}

/// Serves one relay connection until it closes.
pub(crate) async fn serve_relay<S>(
    state: &Mutex<ServerState>,
    relay: Arc<Mutex<RelayService>>,
    mut ws: Ws<S>,
    addr: SocketAddr,
) -> Result<(), NetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nonce: [u8; 32] = rand::random();
    let server_id = lock(state).server_id();
    send(&mut ws, &RelayResponse::Challenge { protocol: RELAY_PROTOCOL, server_id, nonce }).await?;
    let Some(RelayRequest::Login { group, key, signature }) = recv(&mut ws).await? else {
        send(&mut ws, &RelayResponse::Failed("log in first".into())).await?;
        return Ok(());
    };
    let signed =
        key.verify(RELAY_LOGIN_DOMAIN, &relay_login_message(&server_id, &nonce, &group, &key), &signature).is_ok();
    let roster = lock(state).roster(&group).cloned();
    // Same answer for an unknown group, a stranger and a bad signature.
    let Some(roster) = roster.filter(|r| signed && r.is_active(&key)) else {
        tracing::info!(%addr, "relay login refused");
        send(&mut ws, &RelayResponse::Refused(RelayRefusal::NotMember)).await?;
        return Ok(());
    };
    let status = lock(&relay).status(&roster, &key);
    send(&mut ws, &RelayResponse::LoggedIn(status)).await?;
    while let Some(request) = recv(&mut ws).await? {
        let Some(roster) = lock(state).roster(&group).cloned() else { break };
        let relay = relay.clone();
        let response = tokio::task::spawn_blocking(move || lock(&relay).handle(&roster, &key, request, now_ms()))
            .await
            .map_err(|e| NetError::Ws(format!("relay task: {e}")))?;
        let refused = matches!(response, RelayResponse::Refused(RelayRefusal::NotMember));
        send(&mut ws, &response).await?;
        if refused {
            break;
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}
