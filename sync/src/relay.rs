//! What a device leaves at the relay for members that are offline: its
//! index after a point, cut into bundles of records and the objects (pages,
//! blocks) they name. A record always travels no later than its objects,
//! so a reader that takes bundles in order finds each object wanted by a
//! version it already holds (objects nobody wants are ignored, as from a
//! peer). Bundles are plain here; sealing and signing is the relay
//! client's work.

use std::collections::{HashSet, VecDeque};

use psync_base::page::decode_page;
use psync_base::{codec, ContentHash};
use serde::{Deserialize, Serialize};

use crate::record::{Blocks, FileRecord};
use crate::storage::{StorageError, SyncStorage};

/// Largest encoded bundle (bytes): what the relay takes per object, less
/// room for sealing.
pub const MAX_BUNDLE_BYTES: usize = (4 << 20) - 4096;
/// Records read from the index per step while cutting bundles (count).
const RECORDS_PER_READ: usize = 256;
/// Object hashes remembered per upload run to send each once (count); past
/// it an object may travel twice, which is harmless.
const MAX_REMEMBERED_OBJECTS: usize = 1_000_000;
/// Bytes counted per object and per record besides their contents.
const ENTRY_OVERHEAD_BYTES: usize = 16;

/// One piece of a device's upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayBundle {
    /// The writer's index position this bundle completes (records up to
    /// it and their objects are all in this or earlier bundles), or 0.
    pub complete_to: u64,
    /// Records, in index order.
    pub records: Vec<FileRecord>,
    /// Pages and blocks, each before what it names.
    pub objects: Vec<serde_bytes::ByteBuf>,
}

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle, or past [`MAX_BUNDLE_BYTES`].
    #[error("not a valid bundle: {0}")]
    Malformed(String),
}

impl RelayBundle {
    /// Encodes within [`MAX_BUNDLE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, BundleError> {
        let bytes = codec::encode(self).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Malformed(format!("{} bytes, over {MAX_BUNDLE_BYTES}", bytes.len())));
        }
        Ok(bytes)
    }

    /// Decodes what a member sealed; anything past [`MAX_BUNDLE_BYTES`] is refused.
    pub fn decode(bytes: &[u8]) -> Result<RelayBundle, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Malformed(format!("{} bytes, over {MAX_BUNDLE_BYTES}", bytes.len())));
        }
        codec::decode(bytes).map_err(|e| BundleError::Malformed(e.to_string()))
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.objects.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
enum ObjectRef {
    Page(ContentHash),
    Block(ContentHash),
}

/// Cuts a device's index after a point into bundles, one at a time (only
/// one bundle and one record's object list are in memory).
#[derive(Debug)]
pub struct BundleCutter {
    /// Records up to here are in bundles already handed out.
    read_to: u64,
    /// The last record handed out whose objects are not all out yet.
    open_record: Option<u64>,
    /// Objects of handed-out records still to go.
    carry: VecDeque<ObjectRef>,
    /// Records read ahead from the index.
    ahead: VecDeque<(u64, FileRecord)>,
    sent: HashSet<ContentHash>,
    max_bytes: usize,
}

impl BundleCutter {
    /// Starts after index position `since`.
    pub fn new(since: u64) -> BundleCutter {
        BundleCutter::with_max_bytes(since, MAX_BUNDLE_BYTES)
    }

    /// With a smaller bundle size (tests).
    pub fn with_max_bytes(since: u64, max_bytes: usize) -> BundleCutter {
        BundleCutter {
            read_to: since,
            open_record: None,
            carry: VecDeque::new(),
            ahead: VecDeque::new(),
            sent: HashSet::new(),
            max_bytes,
        }
    }

    /// The next bundle, `None` once everything up to the index's end is out.
    pub fn next<S: SyncStorage + ?Sized>(&mut self, storage: &S) -> Result<Option<RelayBundle>, StorageError> {
        self.next_where(storage, |_, _| true)
    }

    /// [`BundleCutter::next`] with only the records `keep` says (by index
    /// position and record) travel; the others count as handed out.
    pub fn next_where<S: SyncStorage + ?Sized>(
        &mut self,
        storage: &S,
        keep: impl Fn(u64, &FileRecord) -> bool,
    ) -> Result<Option<RelayBundle>, StorageError> {
        let mut bundle = RelayBundle { complete_to: 0, records: Vec::new(), objects: Vec::new() };
        // Room for the frame around the lists.
        let mut used = 64;
        loop {
            if let Some(object) = self.carry.front().copied() {
                let hash = match object {
                    ObjectRef::Page(h) | ObjectRef::Block(h) => h,
                };
                if self.sent.contains(&hash) {
                    self.carry.pop_front();
                    continue;
                }
                let bytes = match object {
                    ObjectRef::Page(h) => storage.page(&h)?,
                    ObjectRef::Block(h) => storage.block(&h)?,
                };
                let Some(bytes) = bytes else {
                    // Not here (collected meanwhile): the reader asks peers.
                    self.carry.pop_front();
                    continue;
                };
                if used + bytes.len() + ENTRY_OVERHEAD_BYTES > self.max_bytes && !bundle.is_empty() {
                    return Ok(Some(self.finish(bundle)));
                }
                self.carry.pop_front();
                if let ObjectRef::Page(_) = object {
                    let blocks = decode_page(&bytes).map_err(|e| StorageError::Failed(format!("page {hash}: {e}")))?;
                    for block in blocks.into_iter().flatten().rev() {
                        self.carry.push_front(ObjectRef::Block(block));
                    }
                }
                used += bytes.len() + ENTRY_OVERHEAD_BYTES;
                if self.sent.len() >= MAX_REMEMBERED_OBJECTS {
                    self.sent.clear();
                }
                self.sent.insert(hash);
                bundle.objects.push(serde_bytes::ByteBuf::from(bytes));
                continue;
            }
            self.open_record = None;
            if self.ahead.is_empty() {
                let from = self.read_to;
                self.ahead
                    .extend(storage.records_since(from, RECORDS_PER_READ)?.into_iter().filter(|(s, _)| *s > from));
            }
            let Some((seq, record)) = self.ahead.pop_front() else {
                return Ok((!bundle.is_empty()).then(|| self.finish(bundle)));
            };
            if !keep(seq, &record) {
                self.read_to = seq;
                continue;
            }
            let size = codec::encode(&record).map_or(0, |b| b.len()) + ENTRY_OVERHEAD_BYTES;
            if used + size > self.max_bytes && !bundle.is_empty() {
                self.ahead.push_front((seq, record));
                return Ok(Some(self.finish(bundle)));
            }
            used += size;
            self.read_to = seq;
            self.open_record = Some(seq);
            if !record.deleted {
                match &record.blocks {
                    Blocks::Listed(list) => self.carry.extend(list.iter().flatten().map(|h| ObjectRef::Block(*h))),
                    Blocks::Paged(pages) => self.carry.extend(pages.iter().flatten().map(|h| ObjectRef::Page(*h))),
                }
            }
            bundle.records.push(record);
        }
    }

    fn finish(&self, mut bundle: RelayBundle) -> RelayBundle {
        bundle.complete_to = self.complete_to();
        bundle
    }

    /// Index position up to which everything has been handed out.
    pub fn complete_to(&self) -> u64 {
        match self.open_record {
            Some(seq) => seq.saturating_sub(1),
            None => self.read_to,
        }
    }
}
