//! Seeded simulation of devices that are never online together: each takes
//! a turn alone (takes what the relay holds for it, edits, leaves its
//! changes there). With a faithful relay they converge through the relay
//! alone; with a relay that drops, reorders, withholds or corrupts objects
//! no device ever installs anything wrong, and once the devices meet
//! directly they converge.
//!
//! `PSYNC_SIM_SEEDS=1-500` picks the seeds (default: a few dozen).

// Test code: a failed setup step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::Rng;
use std::collections::{BTreeMap, BTreeSet};

use psync_base::{ContentHash, DeviceId};
use psync_sync::relay::{BundleCutter, RelayBundle};
use psync_sync::{
    FileRecord, Input, MemStorage, Millis, Output, RecordKind, SyncConfig, SyncCore, SyncPath, VersionId,
};

const DEVICES: usize = 3;
const T0: Millis = 1_900_000_000_000;
/// The key devices "seal" with in this model (the relay does not know it).
const GROUP_KEY: [u8; 32] = [7; 32];

/// What a hostile relay does, per object (probabilities).
#[derive(Clone, Copy, Debug, Default)]
struct Hostility {
    drop: f64,
    withhold: f64,
    corrupt: f64,
    forge: f64,
    reorder: bool,
}

/// An object at the relay: the writer's bundle bytes and its seal (a keyed
/// hash standing in for the AEAD tag and signature).
struct Stored {
    bytes: Vec<u8>,
    seal: [u8; 32],
}

struct Device {
    core: SyncCore<MemStorage>,
    uploaded_to: u64,
    next_seq: u64,
    taken: BTreeMap<DeviceId, u64>,
}

struct Sim {
    rng: Rng,
    now: Millis,
    devices: Vec<Device>,
    relay: BTreeMap<(DeviceId, u64), Stored>,
    hostility: Hostility,
    /// Every version a user wrote: its content's hash.
    written: BTreeMap<VersionId, ContentHash>,
    log: Vec<String>,
    seed: u64,
    /// Objects taken, refused by their seal, dropped by the relay.
    counts: Counts,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    taken: u64,
    refused: u64,
    dropped: u64,
    /// Files the devices held at the end (summed).
    files: u64,
}

fn id(i: usize) -> DeviceId {
    DeviceId([i as u8 + 1; 32])
}

fn seal(writer: DeviceId, seq: u64, bytes: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&GROUP_KEY);
    h.update(&writer.0).update(&seq.to_le_bytes()).update(bytes);
    *h.finalize().as_bytes()
}

impl Sim {
    fn new(seed: u64, hostility: Hostility) -> Sim {
        let group: Vec<DeviceId> = (0..DEVICES).map(id).collect();
        let devices = (0..DEVICES)
            .map(|i| Device {
                core: SyncCore::new(
                    MemStorage::new(id(i), 1000 + i as u64),
                    SyncConfig::new(group.clone()),
                    seed ^ i as u64,
                    T0,
                ),
                uploaded_to: 0,
                next_seq: 1,
                taken: BTreeMap::new(),
            })
            .collect();
        Sim {
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            now: T0,
            devices,
            relay: BTreeMap::new(),
            hostility,
            written: BTreeMap::new(),
            log: Vec::new(),
            seed,
            counts: Counts::default(),
        }
    }

    fn fail(&self, why: &str) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(40).collect();
        panic!("seed {}: {why}\nlast events (newest first):\n{tail:#?}", self.seed);
    }

    fn feed(&mut self, i: usize, input: Input) {
        if let Err(e) = self.devices[i].core.handle(self.now, input) {
            self.fail(&format!("device {i}: {e}"));
        }
        self.drain(i);
    }

    /// Outputs of a device alone: nothing to send to (nobody is online).
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.devices[i].core.poll_output() {
            if let Output::Violation(from, why) = out {
                self.log.push(format!("device {i} refused {from:?}: {why}"));
            }
        }
    }

    fn content(&mut self) -> Vec<u8> {
        let len = match self.rng.below(10) {
            0 => 0,
            1..=6 => self.rng.below(2_000) as usize,
            _ => self.rng.below(200_000) as usize,
        };
        let mut state = self.rng.next() | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn live_files(&self, i: usize) -> Vec<SyncPath> {
        let s = self.devices[i].core.storage();
        s.all().filter(|r| !r.deleted && r.kind == RecordKind::File).map(|r| r.path.clone()).collect()
    }

    fn user_op(&mut self, i: usize) {
        let names = ["a.md", "b.md", "notes/c.md", "notes/d.pdf"];
        let target = SyncPath::new(names[self.rng.below(names.len() as u64) as usize]).unwrap();
        let mtime = (self.now / 1000) as i64;
        let files = self.live_files(i);
        match self.rng.below(10) {
            0..=5 => {
                if let Some(parent) = target.parent() {
                    if self.devices[i].core.storage().live(&parent).is_none() {
                        self.devices[i].core.storage_mut().local_mkdir(&parent, mtime);
                    }
                }
                let data = self.content();
                let record = self.devices[i].core.storage_mut().local_write(&target, &data, mtime);
                self.written.insert(record.version, ContentHash::of(&data));
                self.log.push(format!("device {i}: write {target} ({} bytes)", data.len()));
            }
            6..=7 => {
                let Some(p) = files.get(self.rng.below(files.len() as u64) as usize).cloned() else { return };
                self.devices[i].core.storage_mut().local_delete(&p, mtime);
                self.log.push(format!("device {i}: delete {p}"));
            }
            _ => {
                let Some(from) = files.get(self.rng.below(files.len() as u64) as usize).cloned() else { return };
                let to = SyncPath::new(&format!("{}.renamed", from.as_str().replace('/', "-"))).unwrap();
                let s = self.devices[i].core.storage();
                let data = s.live(&from).and_then(|r| s.content(r)).unwrap();
                let record = self.devices[i].core.storage_mut().local_write(&to, &data, mtime);
                self.written.insert(record.version, ContentHash::of(&data));
                self.devices[i].core.storage_mut().local_delete(&from, mtime);
                self.log.push(format!("device {i}: rename {from} -> {to}"));
            }
        }
        self.feed(i, Input::LocalChanged);
    }

    /// Device `i` takes what the relay lists for it.
    fn download(&mut self, i: usize) {
        let me = id(i);
        let mut listed: Vec<(DeviceId, u64)> = self
            .relay
            .keys()
            .filter(|(w, seq)| *w != me && *seq > self.devices[i].taken.get(w).copied().unwrap_or(0))
            .copied()
            .collect();
        if self.hostility.withhold > 0.0 {
            let p = self.hostility.withhold;
            listed.retain(|_| !self.rng.chance(p));
        }
        if self.hostility.reorder {
            for k in (1..listed.len()).rev() {
                let j = self.rng.below(k as u64 + 1) as usize;
                listed.swap(k, j);
            }
        }
        for (writer, seq) in listed {
            let stored = &self.relay[&(writer, seq)];
            let (mut bytes, mut tag) = (stored.bytes.clone(), stored.seal);
            if self.rng.chance(self.hostility.corrupt) && !bytes.is_empty() {
                let at = self.rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << self.rng.below(8);
            }
            if self.rng.chance(self.hostility.forge) {
                // The relay makes up a bundle; it cannot make the seal.
                let forged = RelayBundle { complete_to: 0, records: Vec::new(), objects: vec![vec![1, 2, 3].into()] };
                bytes = forged.encode().unwrap();
                tag = [0; 32];
            }
            let taken = self.devices[i].taken.entry(writer).or_default();
            *taken = (*taken).max(seq);
            if seal(writer, seq, &bytes) != tag {
                self.log.push(format!("device {i}: refused object {seq} of {writer:?} (seal)"));
                self.counts.refused += 1;
                continue;
            }
            let bundle = match RelayBundle::decode(&bytes) {
                Ok(b) => b,
                Err(e) => self.fail(&format!("a sealed bundle does not decode: {e}")),
            };
            self.log.push(format!("device {i}: took object {seq} of {writer:?} ({} records)", bundle.records.len()));
            self.counts.taken += 1;
            self.feed(i, Input::Relayed(writer, bundle));
        }
    }

    /// Device `i` leaves its changes (not sent back to their authors).
    fn upload(&mut self, i: usize) {
        let me = id(i);
        let mut cutter = BundleCutter::with_max_bytes(self.devices[i].uploaded_to, 256 << 10);
        loop {
            let keep = |_: u64, r: &FileRecord| (0..DEVICES).map(id).any(|d| d != me && d != r.version.device);
            let next = cutter.next_where(self.devices[i].core.storage(), keep);
            let Some(bundle) = next.unwrap() else { break };
            let seq = self.devices[i].next_seq;
            self.devices[i].next_seq += 1;
            let bytes = bundle.encode().unwrap();
            if self.rng.chance(self.hostility.drop) {
                self.log.push(format!("relay dropped object {seq} of device {i}"));
                self.counts.dropped += 1;
                continue;
            }
            self.log.push(format!("device {i}: stored object {seq} ({} records)", bundle.records.len()));
            let tag = seal(me, seq, &bytes);
            self.relay.insert((me, seq), Stored { bytes, seal: tag });
        }
        self.devices[i].uploaded_to = cutter.complete_to();
    }

    /// One device's turn alone.
    fn window(&mut self, i: usize, edits: u64) {
        self.now += 60_000;
        self.download(i);
        for _ in 0..edits {
            self.user_op(i);
            self.now += 1_000;
        }
        // Its timers (debounce, holds) run while it is online.
        for _ in 0..20 {
            let Some(at) = self.devices[i].core.poll_timeout() else { break };
            self.now = self.now.max(at);
            if self.devices[i].core.handle_timeout(self.now).is_err() {
                self.fail("a timer failed");
            }
            self.drain(i);
        }
        self.check_nothing_wrong();
        self.upload(i);
    }

    /// Every live file everywhere holds exactly what some user wrote for
    /// that version.
    fn check_nothing_wrong(&self) {
        for (i, d) in self.devices.iter().enumerate() {
            let s = d.core.storage();
            for r in s.all().filter(|r| !r.deleted && r.kind == RecordKind::File) {
                let Some(data) = s.content(r) else { self.fail(&format!("device {i}: {} has no content", r.path)) };
                match self.written.get(&r.version) {
                    Some(h) if *h == ContentHash::of(&data) => {}
                    _ => self.fail(&format!("device {i}: {} holds content nobody wrote for it", r.path)),
                }
            }
        }
    }

    fn view(&self, i: usize) -> BTreeSet<(String, bool, Option<ContentHash>)> {
        let s = self.devices[i].core.storage();
        s.all()
            .filter(|r| !r.deleted)
            .map(|r| (r.path.to_string(), r.kind == RecordKind::Dir, s.content(r).map(|c| ContentHash::of(&c))))
            .collect()
    }

    fn converged(&self) -> bool {
        (1..DEVICES).all(|i| self.view(i) == self.view(0))
    }

    /// Turns with no edits until nothing moves (or `rounds` run out).
    fn settle_through_relay(&mut self, rounds: usize) -> bool {
        for _ in 0..rounds {
            for i in 0..DEVICES {
                self.window(i, 0);
            }
            if self.converged() {
                return true;
            }
        }
        false
    }

    /// The devices finally meet directly (full mesh, messages in order).
    fn meet(&mut self) {
        for a in 0..DEVICES {
            for b in 0..DEVICES {
                if a != b {
                    self.feed(a, Input::Connected(id(b)));
                }
            }
        }
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..DEVICES {
                while let Some(out) = self.devices[i].core.poll_output() {
                    if let Output::Send(to, message) = out {
                        moved = true;
                        let j = (0..DEVICES).find(|&j| id(j) == to).unwrap();
                        if self.devices[j].core.handle(self.now, Input::Message(id(i), message)).is_err() {
                            self.fail("a message failed");
                        }
                    }
                }
            }
            if !moved {
                if self.converged() {
                    return;
                }
                self.now += 1_000;
                for i in 0..DEVICES {
                    if self.devices[i].core.poll_timeout().is_some_and(|t| t <= self.now) {
                        let _ = self.devices[i].core.handle_timeout(self.now);
                    }
                }
            }
        }
    }
}

#[allow(clippy::disallowed_methods)] // the seeds come from the environment, as in sim.rs
fn seeds() -> Vec<u64> {
    match std::env::var("PSYNC_SIM_SEEDS") {
        Ok(spec) => {
            let (a, b) = spec.split_once('-').unwrap_or((&spec, &spec));
            (a.parse().unwrap()..=b.parse().unwrap()).collect()
        }
        Err(_) => (1..=40).collect(),
    }
}

#[test]
fn devices_never_online_together_converge_through_a_faithful_relay() {
    let mut total = Counts::default();
    for seed in seeds() {
        let mut sim = Sim::new(seed, Hostility::default());
        for turn in 0..12 {
            let i = (turn + sim.rng.below(2) as usize) % DEVICES;
            let edits = 1 + sim.rng.below(6);
            sim.window(i, edits);
        }
        if !sim.settle_through_relay(6) {
            let views: Vec<_> = (0..DEVICES).map(|i| sim.view(i)).collect();
            sim.fail(&format!("no convergence through the relay: {views:#?}"));
        }
        sim.check_nothing_wrong();
        total.taken += sim.counts.taken;
        total.files += sim.view(0).len() as u64;
    }
    // Not vacuous: bundles travelled and the devices ended up with files.
    assert!(total.taken > 0 && total.files > 0, "{total:?}");
}

#[test]
fn a_hostile_relay_never_makes_a_device_install_anything_wrong() {
    let mut total = Counts::default();
    for seed in seeds() {
        let hostility = Hostility { drop: 0.15, withhold: 0.15, corrupt: 0.2, forge: 0.1, reorder: true };
        let mut sim = Sim::new(seed, hostility);
        for turn in 0..12 {
            let i = (turn + sim.rng.below(2) as usize) % DEVICES;
            let edits = 1 + sim.rng.below(6);
            sim.window(i, edits);
        }
        sim.settle_through_relay(3);
        sim.check_nothing_wrong();
        // Nothing was lost for good: meeting directly, they converge.
        sim.meet();
        if !sim.converged() {
            let views: Vec<_> = (0..DEVICES).map(|i| sim.view(i)).collect();
            sim.fail(&format!("no convergence after meeting: {views:#?}"));
        }
        sim.check_nothing_wrong();
        total.taken += sim.counts.taken;
        total.refused += sim.counts.refused;
        total.dropped += sim.counts.dropped;
    }
    assert!(total.taken > 0 && total.refused > 0 && total.dropped > 0, "every fault happened: {total:?}");
}
