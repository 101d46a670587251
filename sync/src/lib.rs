//! The sans-I/O replication core (see ARCHITECTURE.md).
//!
//! Not built yet: the sync-engine issue fills this crate. It will know
//! nothing of tokio, WebRTC, RocksDB or FUSE.
