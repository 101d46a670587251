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
/// Requests one relay connection may make per second (burst of the same
/// size); past it the connection is closed. Stored bytes have their own
/// rate per device ([`crate::relay::policy::RelayLimits`]).
pub const RELAY_REQUESTS_PER_SECOND: f64 = 100.0;

/// A token bucket of [`RELAY_REQUESTS_PER_SECOND`].
struct RequestRate {
    tokens: f64,
    at: u64,
}

impl RequestRate {
    fn new(now: u64) -> RequestRate {
        RequestRate { tokens: RELAY_REQUESTS_PER_SECOND, at: now }
    }

    /// One more request at `now` (ms): within the rate?
    fn allow(&mut self, now: u64) -> bool {
        let refill = now.saturating_sub(self.at) as f64 / 1000.0 * RELAY_REQUESTS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(RELAY_REQUESTS_PER_SECOND);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

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
    let mut rate = RequestRate::new(now_ms());
    while let Some(request) = recv(&mut ws).await? {
        if !rate.allow(now_ms()) {
            tracing::warn!(%addr, "relay requests too fast; closing");
            send(&mut ws, &RelayResponse::Failed("too many requests".into())).await?;
            break;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_past_the_rate_are_refused_and_the_rate_refills() {
        let mut rate = RequestRate::new(0);
        let burst = (0..1_000).take_while(|_| rate.allow(0)).count();
        assert_eq!(burst, RELAY_REQUESTS_PER_SECOND as usize);
        assert!(!rate.allow(5), "half a request's worth of time is not enough");
        assert!(rate.allow(20));
        let after_a_second = (0..1_000).take_while(|_| rate.allow(1_020)).count();
        assert_eq!(after_a_second, RELAY_REQUESTS_PER_SECOND as usize, "never more than the burst");
    }
}
