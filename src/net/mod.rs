//! Links between devices: WebRTC data channels (ICE, DTLS, SCTP) with the
//! peer hello, framing over SCTP messages, and the UDP runtime under them.
//! Nothing here knows the sync protocol: a link carries frames.

pub mod frames;
pub mod ice;
pub mod path;
pub mod transport;
pub mod udp_runtime;
