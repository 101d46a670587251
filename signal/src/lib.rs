//! Device identity and group membership, the signalling server and its
//! client, and the ICE servers the server hands out.
//!
//! **Invariant:** nothing here trusts the signalling server: group
//! membership is a log signed by members, relayed messages are signed
//! end to end by their sender, and peers pin each other's DTLS certificate
//! fingerprints from the log.
#![deny(missing_docs)]

pub mod dtls;
pub mod envelope;
pub mod ice;
pub mod identity;
pub mod invite;
pub mod net;
pub mod peer_hello;
pub mod relay;
pub mod roster;
pub mod server;

pub use envelope::{Envelope, EnvelopeError, ReplayGuard};
pub use identity::{readable_id, DeviceKey, IdentityError, PublicKey, SignatureBytes};
pub use roster::{Member, Role, Roster, RosterEntry, RosterError, RosterOp, RosterRelation};
