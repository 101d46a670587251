//! What devices and the relay say to each other, on a WebSocket of its
//! own (`/relay`: frames as large as an object, one request answered at a
//! time). A device logs in as on the signalling socket, under its own
//! signature domain, and then stores, lists, fetches and acknowledges
//! sealed objects.

use psync_base::ContentHash;
use serde::{Deserialize, Serialize};

use super::policy::{GroupUsage, RelayPut, RelayRefusal, MAX_OBJECT_BYTES};
use super::seal::ObjectName;
use super::wrap::SignedWrap;
use crate::identity::{PublicKey, SignatureBytes};

/// Signature domain of relay logins.
pub const RELAY_LOGIN_DOMAIN: &str = "psync/relay-auth/v1";
/// Protocol version, sent in the challenge.
pub const RELAY_PROTOCOL: u32 = 1;
/// Largest frame either side accepts (bytes): an object and its framing.
pub const MAX_RELAY_FRAME_BYTES: usize = MAX_OBJECT_BYTES + 64 * 1024;
/// Names one listing returns at most (count).
pub const MAX_LISTED_OBJECTS: usize = 1_000;
/// The HTTP path of the relay's WebSocket on the signalling server.
pub const RELAY_PATH: &str = "/relay";

/// From a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayRequest {
    /// Proves membership: a signature over the challenge.
    Login {
        /// The group.
        group: ContentHash,
        /// The device.
        key: PublicKey,
        /// Over [`RELAY_LOGIN_DOMAIN`] and [`relay_login_message`].
        signature: SignatureBytes,
    },
    /// Stores one of this device's objects.
    Put(RelayPut),
    /// Lists objects of other writers this device has not acknowledged.
    Pending,
    /// Fetches one object.
    Get {
        /// Which.
        name: ObjectName,
    },
    /// This device took `writer`'s objects up to `seq`.
    Ack {
        /// Whose.
        writer: psync_base::DeviceId,
        /// Up to here.
        seq: u64,
    },
    /// What the group holds and where this device's sequence is.
    Usage,
    /// Leaves a content key wrapped to a member (after a removal).
    PutWrap(SignedWrap),
    /// The key wraps left for this device.
    Wraps,
}

/// From the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayResponse {
    /// First frame: what to sign.
    Challenge {
        /// [`RELAY_PROTOCOL`].
        protocol: u32,
        /// The server's identity.
        server_id: [u8; 16],
        /// Fresh for this connection.
        nonce: [u8; 32],
    },
    /// Logged in; the same as [`RelayResponse::Usage`].
    LoggedIn(RelayStatus),
    /// Stored.
    Stored {
        /// Its name.
        name: ObjectName,
    },
    /// Objects waiting for this device, oldest first, with their sizes.
    Pending {
        /// Names and sealed sizes (bytes).
        objects: Vec<(ObjectName, u64)>,
    },
    /// An object as its writer stored it.
    Object {
        /// Its name.
        name: ObjectName,
        /// The writer's signature.
        signature: SignatureBytes,
        /// Sealed bytes.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// Acknowledged.
    Acked,
    /// What the group holds.
    Usage(RelayStatus),
    /// The request was refused by the relay's rules.
    Refused(RelayRefusal),
    /// Something else went wrong (the relay's disk, a malformed request).
    Failed(String),
    /// The wrap is kept.
    WrapStored,
    /// Key wraps for this device, oldest epoch first.
    Wraps(Vec<SignedWrap>),
}

/// The group's use of the relay, as one member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Held for the group, against its quota.
    pub usage: GroupUsage,
    /// The last object number this device stored (0: none).
    pub last_seq: u64,
    /// Objects waiting for this device (count).
    pub waiting: u64,
}

/// The bytes a device signs to log in to the relay.
pub fn relay_login_message(server_id: &[u8; 16], nonce: &[u8; 32], group: &ContentHash, key: &PublicKey) -> Vec<u8> {
    [b"relay".as_slice(), server_id.as_slice(), nonce.as_slice(), group.as_bytes().as_slice(), key.0.as_slice()]
        .concat()
}
