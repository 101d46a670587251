//! Every bound the core keeps on what one peer can make it hold or do, each
//! with its unit. A peer that goes past a hard bound is dropped with the
//! reason logged; soft bounds (marked so) slow the peer down instead.

/// Records one `IndexUpdate` or `Records` frame carries at most (count).
pub const MAX_RECORDS_PER_FRAME: usize = 256;
/// Encoded bytes of the records in one such frame at most (a single larger
/// record still travels alone, within the frame cap).
pub const RECORD_FRAME_BYTES: usize = 1024 * 1024;
/// Encoded bytes of the entries of one `TreeResponse` part at most.
pub const TREE_FRAME_BYTES: usize = 1024 * 1024;
/// Index frames streamed to one peer before the core turns to other work
/// (the rest follows at once, on the next turn).
pub const INDEX_FRAMES_PER_TURN: usize = 16;

/// Soft: records from one peer waiting for blocks (count). Past it, the
/// peer's further index is not taken (it is asked for again once they drain).
pub const MAX_PENDING_RECORDS_PER_PEER: usize = 50_000;
/// Soft: block hashes those records name (count; about 100 bytes of memory
/// each), i.e. 1,000,000 blocks = 61 GiB of content in flight from one peer.
pub const MAX_PENDING_HASHES_PER_PEER: usize = 1_000_000;
/// Hard: records from one peer held because they cannot be installed
/// (count).
pub const MAX_HELD_PER_PEER: usize = 10_000;
/// Hard: block requests from one peer waiting to be served (count; at most
/// 64 KiB each).
pub const MAX_QUEUED_UPLOADS_PER_PEER: usize = 1_024;
/// Hard: paths one `RecordRequest` may name (count).
pub const MAX_PATHS_PER_RECORD_REQUEST: usize = 1_024;
/// Hard: replies nobody asked for (blocks, tree parts, records outside a
/// tree walk), per heartbeat interval (count).
pub const MAX_UNREQUESTED_PER_HEARTBEAT: usize = 512;
/// Hard: tree requests from one peer per heartbeat interval (count; each
/// answer costs the size of one directory).
pub const MAX_TREE_REQUESTS_PER_HEARTBEAT: usize = 4_096;
/// Tree requests this device has outstanding to one peer (count); a walk
/// goes on as answers arrive.
pub const MAX_TREE_REQUESTS_OUTSTANDING: usize = 1_024;
/// Records remembered per peer so as not to send them back (count; an
/// optimisation only, forgotten past this).
pub const MAX_SENT_US_PER_PEER: usize = 200_000;

/// A request whose peer keeps answering others waits its turn, but at most
/// this many request timeouts (a count): a peer that skips one request
/// while answering the rest must not hold that object forever.
pub const MAX_WAIT_TIMEOUTS: u64 = 12;
/// First wait before asking again for an object every peer said it lacks
/// (milliseconds); doubles per failed round up to [`MAX_REFUSED_BACKOFF_MS`].
pub const FIRST_REFUSED_BACKOFF_MS: u64 = 1_000;
/// Longest such wait (milliseconds).
pub const MAX_REFUSED_BACKOFF_MS: u64 = 60_000;
/// First wait before retrying a held record (milliseconds); doubles per
/// attempt up to [`MAX_HOLD_BACKOFF_MS`].
pub const FIRST_HOLD_BACKOFF_MS: u64 = 2_000;
/// Longest such wait (milliseconds).
pub const MAX_HOLD_BACKOFF_MS: u64 = 60_000;
/// First pause of installs and downloads after the disk filled up
/// (milliseconds); doubles while it stays full, up to [`MAX_DISK_FULL_PAUSE_MS`].
pub const FIRST_DISK_FULL_PAUSE_MS: u64 = 1_000;
/// Longest such pause (milliseconds).
pub const MAX_DISK_FULL_PAUSE_MS: u64 = 30_000;

/// Largest text file merged three-way (bytes, each of the three versions);
/// a larger one keeps both versions as a conflict copy.
pub const MAX_MERGE_BYTES: u64 = 4 * 1024 * 1024;
/// Most lines of a text file merged three-way (count, each version): the
/// line diff costs up to (lines)^2, and it runs inside the sync loop, so
/// this keeps the worst merge near a second. Notes stay far below it.
pub const MAX_MERGE_LINES: usize = 10_000;

/// A peer's acknowledgement counts for collecting tombstones only once it
/// is this old (milliseconds): a record the peer sent before it
/// acknowledged, still on the way, must not arrive after the tombstone that
/// supersedes it is gone (it would come back to life).
pub const ACK_SETTLE_MS: u64 = 10_000;
/// Acknowledgements remembered per peer while they settle (count; past it
/// the oldest counts as settled).
pub const MAX_UNSETTLED_ACKS_PER_PEER: usize = 1_024;

/// `first * 2^attempts`, at most `max`.
pub(crate) fn backoff(first: u64, max: u64, attempts: u32) -> u64 {
    first.saturating_mul(1u64 << attempts.min(20)).min(max)
}
