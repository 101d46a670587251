//! Fetching what peers' versions need: a large file's pages of block hashes
//! first, then blocks, from peers that announced them and then from any
//! peer; a bounded window per peer, timeouts, refusals remembered per round
//! and a growing wait once every peer has said no. A reverse index from
//! each wanted object to the versions waiting for it makes an arrival cost
//! what waits for it, never a walk of everything pending.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use psync_base::page::{decode_page, BLOCKS_PER_PAGE, MAX_PAGE_BYTES};
use psync_base::{Causality, ContentHash, DeviceId, VersionVector, BLOCK_SIZE};

use crate::limits::{backoff, FIRST_REFUSED_BACKOFF_MS, MAX_REFUSED_BACKOFF_MS, MAX_WAIT_TIMEOUTS};
use crate::path::SyncPath;
use crate::record::{Blocks, FileRecord};
use crate::storage::{StorageError, SyncStorage};
use crate::Millis;

type PendingId = u64;

#[derive(Debug)]
struct Want {
    /// Needed as a block (its bytes are content) and/or as a page (its
    /// bytes list blocks); the same hash could, in theory, be both.
    as_block: bool,
    as_page: bool,
    /// Peers that announced a version naming it.
    sources: Vec<DeviceId>,
    /// Peers that answered "don't have it" in this round.
    refused: BTreeSet<DeviceId>,
    asked: Option<(DeviceId, Millis)>,
    /// When the current request was sent: however busy its peer, it is
    /// asked elsewhere after [`MAX_WAIT_TIMEOUTS`] timeouts.
    asked_at: Millis,
    /// Not asked again before this (every peer said no).
    not_before: Millis,
    failed_rounds: u32,
    waiters: Vec<PendingId>,
    /// An object here that it likely differs from in a few bytes (what
    /// the local version has in its place): asked for as a patch of it.
    base: Option<ContentHash>,
}

/// A peer's version waiting for its objects.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) record: FileRecord,
    /// The peer it came from, and its sequence number there (index updates).
    pub(crate) source: DeviceId,
    pub(crate) origin: Option<u64>,
    missing: BTreeSet<ContentHash>,
    /// Hashes this version names (pages and blocks), for the source's load.
    hashes: usize,
    /// Why it can never be installed (a page that does not fit the file).
    pub(crate) invalid: Option<String>,
}

/// What [`Fetch::add`] made of a version.
#[derive(Debug)]
pub(crate) enum Added {
    /// Everything is here: decide now.
    Ready(FileRecord),
    /// It waits for objects.
    Waiting,
    /// Its pages do not fit it: it can never be installed.
    Invalid(FileRecord, String),
}

/// What one peer's pending versions weigh.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Load {
    /// Versions (count).
    pub(crate) records: usize,
    /// Hashes they name (count).
    pub(crate) hashes: usize,
}

/// What became of an object a peer sent.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// Nobody here wants it (late, duplicate, or never asked).
    Unwanted,
    /// The peer does not have it.
    Refused,
    /// It does not match its hash (or is not a page): never stored.
    Corrupt,
    /// Stored; these versions now have everything.
    Stored(Vec<Pending>),
}

/// Peers that may be asked now, with their free request slots.
pub(crate) type Slots = BTreeMap<DeviceId, usize>;

#[derive(Debug, Default)]
pub(crate) struct Fetch {
    pending: BTreeMap<PendingId, Pending>,
    by_path: BTreeMap<SyncPath, Vec<PendingId>>,
    wants: BTreeMap<ContentHash, Want>,
    /// Deadlines of requests, oldest first; entries whose want moved on are skipped.
    deadlines: VecDeque<(Millis, ContentHash)>,
    /// Requests outstanding per peer.
    in_flight: BTreeMap<DeviceId, usize>,
    /// When each peer last answered a request (an object or "don't have").
    answered: BTreeMap<DeviceId, Millis>,
    load: BTreeMap<DeviceId, Load>,
    next_id: PendingId,
    /// Earliest end of a refusal wait, if any want is waiting.
    backoff_ends: Option<Millis>,
}

impl Fetch {
    /// The versions waiting for objects.
    pub(crate) fn records(&self) -> impl Iterator<Item = &FileRecord> {
        self.pending.values().map(|p| &p.record)
    }

    /// Versions waiting, all peers.
    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Objects still to fetch.
    pub(crate) fn wanted(&self) -> usize {
        self.wants.len()
    }

    /// What `peer`'s pending versions weigh.
    pub(crate) fn load(&self, peer: &DeviceId) -> Load {
        self.load.get(peer).copied().unwrap_or_default()
    }

    /// Devices with versions waiting here.
    pub(crate) fn sources(&self) -> Vec<DeviceId> {
        self.load.iter().filter(|(_, l)| l.records > 0).map(|(d, _)| *d).collect()
    }

    /// Requests outstanding to `peer`.
    pub(crate) fn in_flight(&self, peer: &DeviceId) -> usize {
        self.in_flight.get(peer).copied().unwrap_or(0)
    }

    /// Whether a version at `path` equal to or newer than `vv` is waiting.
    pub(crate) fn has_newer(&self, path: &SyncPath, vv: &VersionVector) -> bool {
        self.by_path.get(path).is_some_and(|ids| {
            ids.iter()
                .filter_map(|id| self.pending.get(id))
                .any(|p| matches!(vv.compare(&p.record.vv), Causality::Equal | Causality::Dominated))
        })
    }

    /// A readable account of what waits (diagnostics).
    pub(crate) fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .pending
            .values()
            .map(|p| {
                format!(
                    "{} {:?} from {:?} seq {:?} missing {:?}",
                    p.record.path, p.record.vv, p.source, p.origin, p.missing
                )
            })
            .collect();
        out.push(format!("in flight {:?} backoff ends {:?}", self.in_flight, self.backoff_ends));
        for (hash, want) in &self.wants {
            out.push(format!(
                "want {hash:?} sources {:?} asked {:?} refused {:?} not before {} rounds {}",
                want.sources, want.asked, want.refused, want.not_before, want.failed_rounds
            ));
        }
        out
    }

    /// Takes a version whose content may be missing here.
    pub(crate) fn add<S: SyncStorage>(
        &mut self,
        storage: &S,
        record: FileRecord,
        source: DeviceId,
        origin: Option<u64>,
    ) -> Result<Added, StorageError> {
        // Each missing object, with what the local version has in its place.
        let mut missing = BTreeMap::new();
        let mut as_page = BTreeSet::new();
        if !record.deleted {
            let path = record.path.clone();
            let mut local = LocalBlocks::of(&path);
            match &record.blocks {
                Blocks::Listed(list) => {
                    for (index, hash) in list.iter().enumerate() {
                        let Some(hash) = hash else { continue };
                        if !storage.has_block(hash)? {
                            missing.insert(*hash, local.block(storage, index)?);
                        }
                    }
                }
                Blocks::Paged(pages) => {
                    for (index, hash) in pages.iter().enumerate() {
                        let Some(hash) = hash else { continue };
                        match storage.page(hash)?.and_then(|bytes| decode_page(&bytes).ok()) {
                            Some(blocks) => {
                                if let Err(why) = page_fits(&record, index, &blocks) {
                                    return Ok(Added::Invalid(record, why));
                                }
                                let first = index * BLOCKS_PER_PAGE;
                                for (at, block) in page_blocks(&record, index, &blocks).enumerate() {
                                    let Some(block) = block else { continue };
                                    if !storage.has_block(&block)? {
                                        missing.insert(block, local.block(storage, first + at)?);
                                    }
                                }
                            }
                            None => {
                                missing.insert(*hash, local.page(storage, index)?);
                                as_page.insert(*hash);
                            }
                        }
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(Added::Ready(record));
        }
        let id = self.next_id;
        self.next_id += 1;
        for (hash, base) in &missing {
            let want = self.want(*hash, !as_page.contains(hash), as_page.contains(hash));
            if !want.sources.contains(&source) {
                want.sources.push(source);
            }
            want.waiters.push(id);
            want.suggest_base(*hash, *base);
        }
        let missing: BTreeSet<ContentHash> = missing.into_keys().collect();
        let hashes = record.blocks.len();
        let load = self.load.entry(source).or_default();
        load.records += 1;
        load.hashes += hashes;
        self.by_path.entry(record.path.clone()).or_default().push(id);
        self.pending.insert(id, Pending { record, source, origin, missing, hashes, invalid: None });
        Ok(Added::Waiting)
    }

    fn want(&mut self, hash: ContentHash, as_block: bool, as_page: bool) -> &mut Want {
        let want = self.wants.entry(hash).or_insert(Want {
            as_block: false,
            as_page: false,
            sources: Vec::new(),
            refused: BTreeSet::new(),
            asked: None,
            asked_at: 0,
            not_before: 0,
            failed_rounds: 0,
            waiters: Vec::new(),
            base: None,
        });
        want.as_block |= as_block;
        want.as_page |= as_page;
        want
    }

    /// Removes a pending version and whatever only it wanted.
    fn remove(&mut self, id: PendingId) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        if let Some(ids) = self.by_path.get_mut(&pending.record.path) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_path.remove(&pending.record.path);
            }
        }
        for hash in &pending.missing {
            let Some(want) = self.wants.get_mut(hash) else { continue };
            want.waiters.retain(|w| *w != id);
            if want.waiters.is_empty() {
                if let Some((peer, _)) = want.asked {
                    self.release_slot(peer);
                }
                self.wants.remove(hash);
            }
        }
        if let Some(load) = self.load.get_mut(&pending.source) {
            load.records = load.records.saturating_sub(1);
            load.hashes = load.hashes.saturating_sub(pending.hashes);
        }
        Some(pending)
    }

    fn release_slot(&mut self, peer: DeviceId) {
        if let Some(n) = self.in_flight.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
    }

    /// Drops waiting versions of `path` that `vv` has seen (an installed
    /// version supersedes them).
    pub(crate) fn drop_superseded(&mut self, path: &SyncPath, vv: &VersionVector) -> Vec<Pending> {
        let ids: Vec<PendingId> = self
            .by_path
            .get(path)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| {
                self.pending
                    .get(id)
                    .is_some_and(|p| matches!(p.record.vv.compare(vv), Causality::Dominated | Causality::Equal))
            })
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Drops every version `peer` sent (it left the group).
    pub(crate) fn drop_source(&mut self, peer: DeviceId) -> Vec<Pending> {
        let ids: Vec<PendingId> = self.pending.iter().filter(|(_, p)| p.source == peer).map(|(id, _)| *id).collect();
        for want in self.wants.values_mut() {
            want.sources.retain(|s| *s != peer);
        }
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// An object (or "don't have it") from `peer`.
    pub(crate) fn arrived<S: SyncStorage>(
        &mut self,
        storage: &mut S,
        peer: DeviceId,
        hash: ContentHash,
        data: Option<Vec<u8>>,
    ) -> Result<Arrival, StorageError> {
        let Some(want) = self.wants.get_mut(&hash) else { return Ok(Arrival::Unwanted) };
        if want.asked.is_some_and(|(p, _)| p == peer) {
            want.asked = None;
            if let Some(n) = self.in_flight.get_mut(&peer) {
                *n = n.saturating_sub(1);
            }
        }
        let Some(data) = data else {
            want.refused.insert(peer);
            return Ok(Arrival::Refused);
        };
        let (as_block, as_page) = (want.as_block, want.as_page);
        let max = if as_block { BLOCK_SIZE as usize } else { MAX_PAGE_BYTES };
        let page = if as_page { decode_page(&data).ok() } else { None };
        if data.len() > max || ContentHash::of(&data) != hash || (as_page && !as_block && page.is_none()) {
            want.refused.insert(peer);
            return Ok(Arrival::Corrupt);
        }
        if as_page && page.is_some() {
            storage.put_page(hash, data.clone())?;
        }
        if as_block {
            storage.put_block(hash, data)?;
        }
        let Some(want) = self.wants.remove(&hash) else { return Ok(Arrival::Unwanted) };
        if let Some((asked, _)) = want.asked {
            // Another peer's request for it is moot now; its late answer
            // will be unwanted, so its slot is freed here.
            self.release_slot(asked);
        }
        let mut done = Vec::new();
        for id in want.waiters {
            let Some(pending) = self.pending.get_mut(&id) else { continue };
            pending.missing.remove(&hash);
            if let Some(blocks) = &page {
                let misfit = match &pending.record.blocks {
                    Blocks::Paged(pages) => pages
                        .iter()
                        .enumerate()
                        .filter(|(_, h)| **h == Some(hash))
                        .find_map(|(i, _)| page_fits(&pending.record, i, blocks).err()),
                    Blocks::Listed(_) => None,
                };
                if let Some(why) = misfit {
                    if let Some(mut gone) = self.remove(id) {
                        gone.invalid = Some(why);
                        done.push(gone);
                    }
                    continue;
                }
                // The page names blocks: those not here are wanted next.
                let indices: Vec<usize> = match &pending.record.blocks {
                    Blocks::Paged(pages) => {
                        pages.iter().enumerate().filter(|(_, h)| **h == Some(hash)).map(|(i, _)| i).collect()
                    }
                    Blocks::Listed(_) => Vec::new(),
                };
                let mut new = Vec::new();
                let path = pending.record.path.clone();
                let mut local = LocalBlocks::of(&path);
                for index in indices {
                    let first = index * BLOCKS_PER_PAGE;
                    for (at, block) in page_blocks(&pending.record, index, blocks).enumerate() {
                        let Some(block) = block else { continue };
                        if !storage.has_block(&block)? && pending.missing.insert(block) {
                            new.push((block, local.block(storage, first + at)?));
                        }
                    }
                }
                let source = pending.source;
                for (block, base) in new {
                    let want = self.want(block, true, false);
                    for s in [source, peer] {
                        if !want.sources.contains(&s) {
                            want.sources.push(s);
                        }
                    }
                    want.waiters.push(id);
                    want.suggest_base(block, base);
                }
            }
            if self.pending.get(&id).is_some_and(|p| p.missing.is_empty()) {
                done.extend(self.remove(id));
            }
        }
        Ok(Arrival::Stored(done))
    }

    /// A patch for `hash` from `peer` could not be applied here (its base
    /// is gone): it is asked for again, whole. False if nobody wants it.
    pub(crate) fn patch_failed(&mut self, peer: DeviceId, hash: &ContentHash) -> bool {
        let Some(want) = self.wants.get_mut(hash) else { return false };
        want.base = None;
        if want.asked.is_some_and(|(p, _)| p == peer) {
            want.asked = None;
            self.release_slot(peer);
        }
        true
    }

    /// A write failed (disk full): the object will be asked for again.
    pub(crate) fn unask(&mut self, hash: &ContentHash) {
        if let Some(want) = self.wants.get_mut(hash) {
            want.asked = None;
        }
    }

    /// `peer` answered a request at `now`: its queue is moving.
    pub(crate) fn heard_from(&mut self, peer: DeviceId, now: Millis) {
        self.answered.insert(peer, now);
    }

    /// Requests that time out are asked again, elsewhere if possible. A
    /// request times out once its peer has answered nothing for `timeout`
    /// since it was asked: a peer still answering serves its requests in
    /// order, and asking it again would only send everything twice (on a
    /// slow link that doubling fed on itself until the sender's queue
    /// overflowed). A peer that answers others but never this one is
    /// given up on after [`MAX_WAIT_TIMEOUTS`] timeouts all the same.
    pub(crate) fn expire(&mut self, now: Millis, timeout: Millis) {
        while let Some((deadline, hash)) = self.deadlines.front().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(want) = self.wants.get_mut(&hash) else { continue };
            let Some((peer, at)) = want.asked else { continue };
            if at != deadline {
                continue;
            }
            let quiet_until = self.answered.get(&peer).map_or(0, |t| t.saturating_add(timeout));
            let give_up_at = want.asked_at.saturating_add(timeout.saturating_mul(MAX_WAIT_TIMEOUTS));
            let wait_until = quiet_until.min(give_up_at);
            if wait_until > now {
                want.asked = Some((peer, wait_until));
                let at = self.deadlines.partition_point(|(d, _)| *d <= wait_until);
                self.deadlines.insert(at, (wait_until, hash));
                continue;
            }
            if quiet_until > now {
                // It answers everything but this: count it as a refusal, so
                // the next ask goes to someone else.
                want.refused.insert(peer);
            }
            want.asked = None;
            if want.sources.len() > 1 {
                want.sources.retain(|s| *s != peer);
                want.sources.push(peer);
            }
            self.release_slot(peer);
        }
    }

    /// `peer` is gone: what it was asked goes elsewhere (it stays a source
    /// for when it is back).
    pub(crate) fn disconnected(&mut self, peer: DeviceId) {
        for want in self.wants.values_mut() {
            if want.asked.is_some_and(|(p, _)| p == peer) {
                want.asked = None;
            }
        }
        self.in_flight.remove(&peer);
        self.answered.remove(&peer);
    }

    /// When a request times out or a refusal wait ends next.
    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        let asked = self.deadlines.iter().find(|(d, h)| self.asked_until(h, *d)).map(|(d, _)| *d);
        [asked, self.backoff_ends].into_iter().flatten().min()
    }

    fn asked_until(&self, hash: &ContentHash, deadline: Millis) -> bool {
        self.wants.get(hash).and_then(|w| w.asked).is_some_and(|(_, d)| d == deadline)
    }

    /// Chooses requests for the free slots: announced sources first, then
    /// any peer; peers that said no are skipped until all have, then the
    /// round starts over after a growing wait. `budget` says whether the
    /// download rate allows one more request.
    pub(crate) fn requests(
        &mut self,
        now: Millis,
        deadline: Millis,
        slots: &mut Slots,
        mut budget: impl FnMut() -> bool,
    ) -> Vec<(DeviceId, ContentHash, Option<ContentHash>)> {
        let mut out = Vec::new();
        if self.backoff_ends.is_some_and(|t| t <= now) {
            self.backoff_ends = None;
        }
        let mut free: usize = slots.values().sum();
        let mut backoff_ends = self.backoff_ends;
        for (hash, want) in self.wants.iter_mut() {
            if free == 0 {
                break;
            }
            if want.asked.is_some() {
                continue;
            }
            if want.not_before > now {
                continue;
            }
            if !slots.is_empty() && slots.keys().all(|p| want.refused.contains(p)) {
                // A full round of refusals: wait, longer each time.
                want.refused.clear();
                want.not_before = now + backoff(FIRST_REFUSED_BACKOFF_MS, MAX_REFUSED_BACKOFF_MS, want.failed_rounds);
                want.failed_rounds += 1;
                backoff_ends = Some(backoff_ends.map_or(want.not_before, |t| t.min(want.not_before)));
                continue;
            }
            let usable = |s: &&DeviceId| !want.refused.contains(*s) && slots.get(*s).is_some_and(|n| *n > 0);
            let Some(source) = want.sources.iter().chain(slots.keys()).find(usable).copied() else { continue };
            if !budget() {
                break;
            }
            if let Some(n) = slots.get_mut(&source) {
                *n -= 1;
            }
            *self.in_flight.entry(source).or_default() += 1;
            want.asked = Some((source, deadline));
            want.asked_at = now;
            out.push((source, *hash, want.base));
            free -= 1;
        }
        self.backoff_ends = backoff_ends;
        for (_, hash, _) in &out {
            self.deadlines.push_back((deadline, *hash));
        }
        while let Some((d, h)) = self.deadlines.front() {
            if self.asked_until(h, *d) {
                break;
            }
            self.deadlines.pop_front();
        }
        out
    }

    /// Whether some object could be asked for now (for the rate limiter's wake-up).
    pub(crate) fn has_wants(&self) -> bool {
        !self.wants.is_empty()
    }
}

impl Want {
    /// Takes `base` as the object to ask a patch against, unless it has one.
    fn suggest_base(&mut self, hash: ContentHash, base: Option<ContentHash>) {
        if self.base.is_none() && base != Some(hash) {
            self.base = base;
        }
    }
}

/// The local version of a path, as the objects a peer's version of it
/// likely differs from in a few bytes: block `i` (and page `i`) of each.
/// Read from storage on first use (most versions miss nothing).
struct LocalBlocks<'a> {
    path: &'a SyncPath,
    blocks: Option<Option<Blocks>>,
    /// The last page read, by index (blocks are asked for in order).
    page: Option<(usize, Vec<Option<ContentHash>>)>,
}

impl<'a> LocalBlocks<'a> {
    fn of(path: &'a SyncPath) -> Self {
        LocalBlocks { path, blocks: None, page: None }
    }

    fn blocks<S: SyncStorage>(&mut self, storage: &S) -> Result<Option<&Blocks>, StorageError> {
        if self.blocks.is_none() {
            self.blocks = Some(storage.record(self.path)?.filter(|r| !r.deleted).map(|r| r.blocks));
        }
        Ok(self.blocks.as_ref().and_then(Option::as_ref))
    }

    fn page<S: SyncStorage>(&mut self, storage: &S, index: usize) -> Result<Option<ContentHash>, StorageError> {
        Ok(match self.blocks(storage)? {
            Some(Blocks::Paged(pages)) => pages.get(index).copied().flatten(),
            _ => None,
        })
    }

    fn block<S: SyncStorage>(&mut self, storage: &S, index: usize) -> Result<Option<ContentHash>, StorageError> {
        let page_index = index / BLOCKS_PER_PAGE;
        let page_hash = match self.blocks(storage)? {
            None => return Ok(None),
            Some(Blocks::Listed(list)) => return Ok(list.get(index).copied().flatten()),
            Some(Blocks::Paged(pages)) => pages.get(page_index).copied().flatten(),
        };
        if self.page.as_ref().map(|(i, _)| *i) != Some(page_index) {
            let entries = match page_hash {
                Some(hash) => storage.page(&hash)?.and_then(|b| decode_page(&b).ok()).unwrap_or_default(),
                None => Vec::new(),
            };
            self.page = Some((page_index, entries));
        }
        Ok(self.page.as_ref().and_then(|(_, e)| e.get(index % BLOCKS_PER_PAGE).copied().flatten()))
    }
}

/// Whether page `index` of `record` (its `entries`) fits the file: no more
/// entries than the file has blocks from there.
fn page_fits(record: &FileRecord, index: usize, entries: &[Option<ContentHash>]) -> Result<(), String> {
    let first = index * BLOCKS_PER_PAGE;
    let in_page = (record.block_count() as usize).saturating_sub(first).min(BLOCKS_PER_PAGE);
    if entries.len() > in_page {
        return Err(format!("{}: page {index} lists more blocks than the file has", record.path));
    }
    Ok(())
}

/// The block hashes page `index` of `record` stands for: its entries (the
/// rest of the page is holes).
fn page_blocks<'a>(
    record: &FileRecord,
    index: usize,
    entries: &'a [Option<ContentHash>],
) -> impl Iterator<Item = Option<ContentHash>> + 'a {
    let first = index * BLOCKS_PER_PAGE;
    let in_page = (record.block_count() as usize).saturating_sub(first).min(BLOCKS_PER_PAGE);
    entries.iter().take(in_page).copied()
}
