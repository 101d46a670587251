//! Relay storage: what devices leave for each other while they are never
//! online together. Devices seal and sign ([`seal`]); the group's content
//! key reaches each member wrapped to its own key ([`wrap`]); the server
//! keeps sealed objects by the rules in [`policy`] and cannot read them.

pub mod dir;
pub mod policy;
pub mod protocol;
pub mod s3;
pub mod seal;
pub mod service;
pub mod store;
pub mod wrap;
