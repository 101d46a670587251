//! A full mesh of cores over `MemStorage` that delivers messages in order
//! and runs timers until idle (the simulation covers faults).

use psync_base::DeviceId;
use psync_sync::message::Message;
use psync_sync::{Input, MemStorage, Millis, Output, SyncConfig, SyncCore, SyncPath, SyncStorage};

pub fn dev(n: u8) -> DeviceId {
    DeviceId([n; 32])
}

pub fn path(s: &str) -> SyncPath {
    SyncPath::new(s).unwrap()
}

pub const T0: Millis = 1_900_000_000_000;

/// Decides whether to drop a message (from, to, message).
pub type DropRule = Box<dyn FnMut(usize, usize, &Message) -> bool>;
/// Alters a message in flight.
pub type TamperRule = Box<dyn FnMut(usize, usize, &mut Message)>;
/// Messages a slow link carries: delivered one per interval, in order.
pub type PaceRule = (Millis, Box<dyn FnMut(usize, usize, &Message) -> bool>);

/// Devices connected in a full mesh; `run` delivers until idle, advancing time.
pub struct Mesh {
    pub cores: Vec<SyncCore<MemStorage>>,
    pub now: Millis,
    /// Every message sent: (from, to, message).
    pub log: Vec<(usize, usize, Message)>,
    /// When each logged message was sent.
    pub times: Vec<Millis>,
    /// Messages to drop: a predicate on (from, to, message).
    pub drop_if: Option<DropRule>,
    /// Messages to alter before delivery.
    pub tamper: Option<TamperRule>,
    pub pace: Option<PaceRule>,
    /// Paced messages on their way: (delivery time, from, to, message).
    pub paced: std::collections::VecDeque<(Millis, usize, usize, Message)>,
    pub violations: Vec<(usize, String)>,
    pub connected: Vec<Vec<bool>>,
}

impl Mesh {
    pub fn new(n: usize, configure: impl Fn(&mut SyncConfig)) -> Mesh {
        let ids: Vec<DeviceId> = (0..n).map(|i| dev(i as u8 + 1)).collect();
        let mut config = SyncConfig::new(ids.clone());
        configure(&mut config);
        let cores = ids
            .iter()
            .enumerate()
            .map(|(i, id)| SyncCore::new(MemStorage::new(*id, 100 + i as u64), config.clone(), i as u64 + 7, T0))
            .collect();
        Mesh {
            cores,
            now: T0,
            log: Vec::new(),
            times: Vec::new(),
            drop_if: None,
            tamper: None,
            pace: None,
            paced: std::collections::VecDeque::new(),
            violations: Vec::new(),
            connected: vec![vec![false; n]; n],
        }
    }

    pub fn id(&self, i: usize) -> DeviceId {
        self.cores[i].storage().device()
    }

    pub fn index(&self, id: &DeviceId) -> usize {
        (0..self.cores.len()).find(|&i| self.id(i) == *id).unwrap()
    }

    pub fn connect(&mut self, a: usize, b: usize) {
        self.connected[a][b] = true;
        self.connected[b][a] = true;
        let (ida, idb) = (self.id(a), self.id(b));
        self.cores[a].handle(self.now, Input::Connected(idb)).unwrap();
        self.cores[b].handle(self.now, Input::Connected(ida)).unwrap();
    }

    pub fn disconnect(&mut self, a: usize, b: usize) {
        self.connected[a][b] = false;
        self.connected[b][a] = false;
        let (ida, idb) = (self.id(a), self.id(b));
        self.cores[a].handle(self.now, Input::Disconnected(idb)).unwrap();
        self.cores[b].handle(self.now, Input::Disconnected(ida)).unwrap();
    }

    pub fn connect_all(&mut self) {
        for a in 0..self.cores.len() {
            for b in a + 1..self.cores.len() {
                self.connect(a, b);
            }
        }
    }

    pub fn local_change(&mut self, i: usize) {
        self.cores[i].handle(self.now, Input::LocalChanged).unwrap();
    }

    /// Delivers messages and fires timers until nothing moves, for `ms` of time.
    pub fn run(&mut self, ms: Millis) {
        let end = self.now + ms;
        loop {
            let mut moved = false;
            for i in 0..self.cores.len() {
                while let Some(out) = self.cores[i].poll_output() {
                    moved = true;
                    match out {
                        Output::Send(to, mut message) => {
                            let j = self.index(&to);
                            if !self.connected[i][j] {
                                continue;
                            }
                            if let Some(f) = self.drop_if.as_mut() {
                                if f(i, j, &message) {
                                    continue;
                                }
                            }
                            if let Some(f) = self.tamper.as_mut() {
                                f(i, j, &mut message);
                            }
                            if let Some((every, f)) = self.pace.as_mut() {
                                if f(i, j, &message) {
                                    let after = self.paced.back().map_or(self.now, |(t, ..)| (*t).max(self.now));
                                    self.paced.push_back((after + *every, i, j, message));
                                    continue;
                                }
                            }
                            self.deliver(i, j, message);
                        }
                        Output::Violation(_, what) => self.violations.push((i, what)),
                        Output::Installed(_) | Output::Inactive(_) => {}
                    }
                }
            }
            while self.paced.front().is_some_and(|(t, ..)| *t <= self.now) {
                if let Some((_, i, j, message)) = self.paced.pop_front() {
                    if self.connected[i][j] {
                        self.deliver(i, j, message);
                        moved = true;
                    }
                }
            }
            if moved {
                continue;
            }
            let paced = self.paced.front().map(|(t, ..)| *t);
            let next = self.cores.iter().filter_map(|c| c.poll_timeout()).chain(paced).min().unwrap_or(end);
            if next > end {
                self.now = end;
                return;
            }
            self.now = next.max(self.now);
            for c in &mut self.cores {
                if c.poll_timeout().is_some_and(|t| t <= self.now) {
                    c.handle_timeout(self.now).unwrap();
                }
            }
        }
    }

    pub fn deliver(&mut self, i: usize, j: usize, message: Message) {
        self.log.push((i, j, message.clone()));
        self.times.push(self.now);
        let from = self.id(i);
        self.cores[j].handle(self.now, Input::Message(from, message)).unwrap();
    }

    pub fn storage(&mut self, i: usize) -> &mut MemStorage {
        self.cores[i].storage_mut()
    }

    pub fn content(&self, i: usize, p: &str) -> Option<Vec<u8>> {
        let s = self.cores[i].storage();
        s.live(&path(p)).and_then(|r| s.content(r))
    }

    pub fn sent(&self, pred: impl Fn(&Message) -> bool) -> usize {
        self.log.iter().filter(|(_, _, m)| pred(m)).count()
    }
}
