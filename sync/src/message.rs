//! Wire messages. Variants are numbered by declaration order: append new
//! ones at the end and never reorder (a test pins the bytes of each kind).

use psync_base::codec::{self, CodecError};
use psync_base::ContentHash;
use serde::{Deserialize, Serialize};

use crate::path::SyncPath;
use crate::record::FileRecord;

/// Bumped on any incompatible change; peers with another version are
/// refused with a clear message. 2: large files' records name pages of
/// block hashes; tree responses come in parts. 3: objects may be asked for
/// and sent as patches of one the receiver has. 4: records carry extended
/// attributes.
pub const PROTOCOL_VERSION: u32 = 4;
/// Largest frame accepted from a peer: a 64 KiB block plus headers, or a
/// batch of records or tree entries (cut by bytes well below this, see
/// [`crate::limits`]).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// One entry of a Merkle tree node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Child name (one path component).
    pub name: String,
    /// Hash of the child's subtree (or of its record, for a leaf).
    pub hash: ContentHash,
    /// Whether the child has children.
    pub has_children: bool,
}

/// Everything two devices say to each other about one folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message on a connection.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        protocol: u32,
        /// The sender's index identity (changes if its index was reset).
        index_id: u64,
        /// The sender's latest local sequence number.
        seq: u64,
    },
    /// "Send me your index changes after `since`."
    IndexRequest {
        /// The index the requester last saw (0: none).
        index_id: u64,
        /// The last sequence number the requester has applied.
        since: u64,
    },
    /// Records of the sender's index with sequence numbers in `(from, to]`.
    IndexUpdate {
        /// The sender's index.
        index_id: u64,
        /// Exclusive lower bound: the receiver must have applied up to here.
        from: u64,
        /// Inclusive upper bound.
        to: u64,
        /// `(sequence, record)`, ascending.
        records: Vec<(u64, FileRecord)>,
    },
    /// "I have applied your index up to `seq`."
    Ack {
        /// Which index.
        index_id: u64,
        /// Applied up to here.
        seq: u64,
    },
    /// "Send me the block with this hash."
    BlockRequest {
        /// The block.
        hash: ContentHash,
    },
    /// A block, or `None` if the sender does not have it.
    BlockResponse {
        /// The block asked for.
        hash: ContentHash,
        /// Its bytes (decoded as one slice, not byte by byte; the same
        /// encoding either way).
        #[serde(with = "serde_bytes")]
        data: Option<Vec<u8>>,
    },
    /// Periodic liveness and anti-entropy: the root of the sender's tree.
    Heartbeat {
        /// Merkle root over live records.
        root: ContentHash,
        /// The sender's latest local sequence number.
        seq: u64,
    },
    /// "Send me the children of this tree node" (`None`: the root).
    TreeRequest {
        /// The node.
        prefix: Option<SyncPath>,
    },
    /// The children of a tree node, in parts: a part covers the names
    /// after `after`, up to its last entry (the last part: to the end).
    TreeResponse {
        /// The node.
        prefix: Option<SyncPath>,
        /// The part starts after this name (`None`: the first part).
        after: Option<String>,
        /// Its children in this part, sorted by name.
        entries: Vec<TreeEntry>,
        /// The last part.
        complete: bool,
    },
    /// "Send me your records for these paths."
    RecordRequest {
        /// Paths whose records differ.
        paths: Vec<SyncPath>,
    },
    /// Records outside the index stream (anti-entropy).
    Records {
        /// The records.
        records: Vec<FileRecord>,
    },
    /// "Send me the block (or page) with this hash; I have `base`, which
    /// it likely differs from in a few bytes." Answered with a
    /// [`Message::BlockPatch`] or, when that would not be much smaller,
    /// a [`Message::BlockResponse`].
    BlockRequestAgainst {
        /// The object.
        hash: ContentHash,
        /// What the requester has in its place.
        base: ContentHash,
    },
    /// The object asked for, as a change of `base` (see [`crate::patch`]).
    BlockPatch {
        /// The object.
        hash: ContentHash,
        /// The object it changes.
        base: ContentHash,
        /// Bytes kept from the start of `base`.
        prefix: u32,
        /// Bytes kept from the end of `base`.
        suffix: u32,
        /// The bytes between them.
        #[serde(with = "serde_bytes")]
        middle: Vec<u8>,
    },
}

/// Encodes one frame.
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, CodecError> {
    let bytes = codec::encode(message)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes one frame from a peer; malformed, oversized or hostile input
/// (including invalid paths) is an error, never a panic.
pub fn decode_frame(bytes: &[u8]) -> Result<Message, CodecError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    codec::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Blocks, RecordKind, VersionId};
    use psync_base::{DeviceId, VersionVector};

    fn record() -> FileRecord {
        let mut vv = VersionVector::new();
        vv.set(DeviceId([1; 32]), 2);
        FileRecord {
            path: SyncPath::new("a.md").unwrap(),
            kind: RecordKind::File,
            deleted: false,
            vv,
            version: VersionId { device: DeviceId([1; 32]), counter: 2 },
            size: 3,
            blocks: Blocks::Listed(vec![Some(ContentHash([9; 32]))]),
            symlink: vec![],
            perm: 0o644,
            mtime: 5,
            xattrs: Some(vec![(b"user.t".to_vec(), b"x".to_vec())]),
        }
    }

    fn hex(m: &Message) -> String {
        encode_frame(m).unwrap().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn pins_the_encoding_of_every_message_kind() {
        let h = ContentHash([7; 32]);
        let h_hex = "20".to_string() + &"07".repeat(32);
        assert_eq!(hex(&Message::Hello { protocol: 1, index_id: 2, seq: 3 }), "00010203");
        assert_eq!(hex(&Message::IndexRequest { index_id: 5, since: 300 }), "0105fb2c01");
        assert_eq!(hex(&Message::Ack { index_id: 1, seq: 2 }), "030102");
        assert_eq!(hex(&Message::BlockRequest { hash: h }), format!("04{h_hex}"));
        assert_eq!(hex(&Message::BlockResponse { hash: h, data: None }), format!("05{h_hex}00"));
        assert_eq!(hex(&Message::BlockResponse { hash: h, data: Some(vec![0xAB]) }), format!("05{h_hex}0101ab"));
        assert_eq!(hex(&Message::Heartbeat { root: h, seq: 1 }), format!("06{h_hex}01"));
        assert_eq!(hex(&Message::TreeRequest { prefix: None }), "0700");
        assert_eq!(hex(&Message::TreeRequest { prefix: Some(SyncPath::new("d").unwrap()) }), "07010164");
        let entry = TreeEntry { name: "x".into(), hash: h, has_children: true };
        assert_eq!(
            hex(&Message::TreeResponse { prefix: None, after: None, entries: vec![entry.clone()], complete: true }),
            format!("08 00 00 01 0178{h_hex}01 01").replace(' ', "")
        );
        assert_eq!(
            hex(&Message::TreeResponse {
                prefix: None,
                after: Some("w".into()),
                entries: vec![entry],
                complete: false
            }),
            format!("08 00 01 0177 01 0178{h_hex}01 00").replace(' ', "")
        );
        assert_eq!(hex(&Message::RecordRequest { paths: vec![SyncPath::new("a").unwrap()] }), "09010161");
        let b = ContentHash([8; 32]);
        let b_hex = "20".to_string() + &"08".repeat(32);
        assert_eq!(hex(&Message::BlockRequestAgainst { hash: h, base: b }), format!("0b{h_hex}{b_hex}"));
        assert_eq!(
            hex(&Message::BlockPatch { hash: h, base: b, prefix: 300, suffix: 2, middle: vec![0xCD] }),
            format!("0c{h_hex}{b_hex} fb2c01 02 01cd").replace(' ', "")
        );
        let r = record();
        // path, kind, deleted, vv, version, size, blocks (0 = listed), symlink, perm, mtime,
        // xattrs (some, one: "user.t" = "x")
        let r_hex = format!(
            "0461 2e6d64 00 00 01 20{} 02 20{} 02 03 00 01 01 20{} 00 fba401 0a 01 01 06 757365722e74 01 78",
            "01".repeat(32),
            "01".repeat(32),
            "09".repeat(32)
        )
        .replace(' ', "");
        assert_eq!(hex(&Message::Records { records: vec![r.clone()] }), format!("0a01{r_hex}"));
        assert_eq!(
            hex(&Message::IndexUpdate { index_id: 1, from: 0, to: 7, records: vec![(7, r)] }),
            format!("0201000701 07{r_hex}").replace(' ', "")
        );
    }

    #[test]
    fn hostile_frames_are_errors() {
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[0xFF, 0x01]).is_err(), "unknown message type");
        assert!(decode_frame(&vec![0u8; MAX_FRAME_BYTES + 1]).is_err(), "oversized");
        // A record whose path tries to escape.
        let mut bytes = encode_frame(&Message::Records { records: vec![record()] }).unwrap();
        let at = bytes.windows(4).position(|w| w == b"a.md").unwrap();
        bytes[at..at + 4].copy_from_slice(b"../x");
        assert!(decode_frame(&bytes).is_err());
        let mut paged = record();
        paged.size = 300 * 65_536;
        paged.blocks = Blocks::Paged(vec![None, Some(ContentHash([3; 32]))]);
        let bytes = encode_frame(&Message::Records { records: vec![paged.clone()] }).unwrap();
        let at = bytes.windows(33).position(|w| w[0] == 0x20 && w[1..] == [3; 32]).unwrap();
        assert_eq!(&bytes[at - 4..at], &[0x01, 0x02, 0x00, 0x01], "paged form: tag 1, two pages, a hole, a page");
        assert!(paged.check().is_ok());
        for m in [Message::Ack { index_id: 1, seq: 2 }, Message::RecordRequest { paths: vec![] }] {
            assert_eq!(decode_frame(&encode_frame(&m).unwrap()).unwrap(), m);
        }
    }
}
