//! The signalling server and its client (see ARCHITECTURE.md).
//!
//! Not built yet: the signalling issue fills this crate.
