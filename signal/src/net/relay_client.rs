//! A device's side of the relay's WebSocket: log in, then one request at
//! a time, each with a deadline.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use psync_base::{codec, ContentHash, DeviceId};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::client::{connect_with, ClientWs};
use super::relay_server::relay_ws_config;
use super::*;
use crate::identity::{DeviceKey, SignatureBytes};
use crate::relay::policy::{RelayPut, RelayRefusal};
use crate::relay::protocol::{
    relay_login_message, RelayRequest, RelayResponse, RelayStatus, RELAY_LOGIN_DOMAIN, RELAY_PATH, RELAY_PROTOCOL,
};
use crate::relay::seal::ObjectName;
use crate::relay::wrap::SignedWrap;

/// How long one relay request may take (an object of 4 MiB on a slow
/// uplink included).
pub const RELAY_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A logged-in relay connection.
#[derive(Debug)]
pub struct RelayClient {
    ws: ClientWs,
    /// As of the login.
    pub status: RelayStatus,
}

/// The relay's address on a signalling server.
pub fn relay_url(server_url: &str) -> String {
    format!("{}{RELAY_PATH}", server_url.trim_end_matches('/'))
}

impl RelayClient {
    /// Connects to the relay of the signalling server at `server_url` and
    /// logs in as `key` in `group`.
    pub async fn connect(server_url: &str, group: ContentHash, key: &DeviceKey) -> Result<RelayClient, NetError> {
        let ws = tokio::time::timeout(RELAY_REQUEST_TIMEOUT, connect_with(&relay_url(server_url), relay_ws_config()))
            .await
            .map_err(|_| NetError::Ws("the relay did not answer in time".into()))?
            .map_err(|e| match e {
                NetError::Ws(why) if why.contains("404") => {
                    NetError::Ws("this signalling server runs no relay (`psync signal --relay DIR` does)".into())
                }
                other => other,
            })?;
        let mut client = RelayClient { ws, status: empty_status() };
        let RelayResponse::Challenge { protocol, server_id, nonce } = client.recv().await? else {
            return Err(NetError::Ws("the relay did not send a challenge".into()));
        };
        if protocol != RELAY_PROTOCOL {
            return Err(NetError::Ws(format!("the relay speaks protocol {protocol}, this device {RELAY_PROTOCOL}")));
        }
        let public = key.public();
        let signature = key.sign(RELAY_LOGIN_DOMAIN, &relay_login_message(&server_id, &nonce, &group, &public));
        match client.call(RelayRequest::Login { group, key: public, signature }).await? {
            RelayResponse::LoggedIn(status) => client.status = status,
            other => return Err(unexpected(other)),
        }
        Ok(client)
    }

    async fn recv(&mut self) -> Result<RelayResponse, NetError> {
        loop {
            let frame = tokio::time::timeout(RELAY_REQUEST_TIMEOUT, self.ws.next())
                .await
                .map_err(|_| NetError::Ws("the relay did not answer in time".into()))?;
            match frame {
                None | Some(Ok(WsMessage::Close(_))) => {
                    return Err(NetError::Ws("the relay closed the connection".into()))
                }
                Some(Err(e)) => return Err(NetError::Ws(e.to_string())),
                Some(Ok(WsMessage::Binary(bytes))) => {
                    return codec::decode(&bytes).map_err(|e| NetError::Ws(format!("malformed relay answer: {e}")))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn call(&mut self, request: RelayRequest) -> Result<RelayResponse, NetError> {
        let bytes = codec::encode(&request).map_err(|e| NetError::Ws(e.to_string()))?;
        tokio::time::timeout(RELAY_REQUEST_TIMEOUT, self.ws.send(WsMessage::Binary(bytes.into())))
            .await
            .map_err(|_| NetError::Ws("the relay did not take the request in time".into()))?
            .map_err(|e| NetError::Ws(e.to_string()))?;
        match self.recv().await? {
            RelayResponse::Refused(why) => Err(NetError::RelayRefused(why)),
            RelayResponse::Failed(why) => Err(NetError::Refused(why)),
            other => Ok(other),
        }
    }

    /// Stores one of this device's objects.
    pub async fn put(&mut self, put: RelayPut) -> Result<(), NetError> {
        match self.call(RelayRequest::Put(put)).await? {
            RelayResponse::Stored { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Objects of other writers waiting for this device (oldest first,
    /// at most [`crate::relay::protocol::MAX_LISTED_OBJECTS`]), with sizes.
    pub async fn pending(&mut self) -> Result<Vec<(ObjectName, u64)>, NetError> {
        match self.call(RelayRequest::Pending).await? {
            RelayResponse::Pending { objects } => Ok(objects),
            other => Err(unexpected(other)),
        }
    }

    /// One object: its writer's signature and sealed bytes.
    pub async fn get(&mut self, name: ObjectName) -> Result<(SignatureBytes, Vec<u8>), NetError> {
        match self.call(RelayRequest::Get { name }).await? {
            RelayResponse::Object { name: got, signature, sealed } if got == name => Ok((signature, sealed)),
            other => Err(unexpected(other)),
        }
    }

    /// This device took `writer`'s objects up to `seq`.
    pub async fn ack(&mut self, writer: DeviceId, seq: u64) -> Result<(), NetError> {
        match self.call(RelayRequest::Ack { writer, seq }).await? {
            RelayResponse::Acked => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Leaves a content key wrapped to a member.
    pub async fn put_wrap(&mut self, wrap: SignedWrap) -> Result<(), NetError> {
        match self.call(RelayRequest::PutWrap(wrap)).await? {
            RelayResponse::WrapStored => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The key wraps left for this device.
    pub async fn wraps(&mut self) -> Result<Vec<SignedWrap>, NetError> {
        match self.call(RelayRequest::Wraps).await? {
            RelayResponse::Wraps(wraps) => Ok(wraps),
            other => Err(unexpected(other)),
        }
    }

    /// What the group holds now.
    pub async fn usage(&mut self) -> Result<RelayStatus, NetError> {
        match self.call(RelayRequest::Usage).await? {
            RelayResponse::Usage(status) => {
                self.status = status;
                Ok(status)
            }
            other => Err(unexpected(other)),
        }
    }
}

fn empty_status() -> RelayStatus {
    RelayStatus {
        usage: crate::relay::policy::GroupUsage { objects: 0, bytes: 0, quota_objects: 0, quota_bytes: 0 },
        last_seq: 0,
        waiting: 0,
    }
}

fn unexpected(response: RelayResponse) -> NetError {
    let kind = match response {
        RelayResponse::Refused(why) => return NetError::RelayRefused(why),
        RelayResponse::Failed(why) => return NetError::Refused(why),
        // Named only: an object's bytes do not belong in a message.
        RelayResponse::Challenge { .. } => "a challenge",
        RelayResponse::LoggedIn(_) => "a login",
        RelayResponse::Stored { .. } => "a stored object",
        RelayResponse::Pending { .. } => "a listing",
        RelayResponse::Object { .. } => "another object",
        RelayResponse::Acked => "an acknowledgement",
        RelayResponse::Usage(_) => "the usage",
        RelayResponse::WrapStored => "a stored wrap",
        RelayResponse::Wraps(_) => "key wraps",
    };
    NetError::Ws(format!("unexpected relay answer: {kind}"))
}

/// Whether an error is the relay saying this device is not a member.
pub fn is_not_member(e: &NetError) -> bool {
    matches!(e, NetError::RelayRefused(RelayRefusal::NotMember))
}
