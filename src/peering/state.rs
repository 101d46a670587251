//! Peering's decisions, without I/O: which roster to keep, who is online,
//! whom to dial and when, whose offers to take. Time is passed in. The
//! shell (`mod.rs`) runs the signalling client and the connection tasks and
//! does what this says.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use psync_base::DeviceId;
use psync_signal::{PublicKey, Role, Roster, RosterEntry, RosterRelation};

use crate::net::transport::offers_to;

/// Waits between failed attempts to reach one peer: doubling from the first
/// up to the last.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts to reach one peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Offers one peer may make per [`OFFER_WINDOW`] (count); more are ignored.
pub const MAX_OFFERS_PER_WINDOW: usize = 10;
/// The window [`MAX_OFFERS_PER_WINDOW`] counts in.
pub const OFFER_WINDOW: Duration = Duration::from_secs(60);
/// How often a relayed link tries to become direct (a NAT may have opened,
/// the peer may have moved to this LAN).
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(60);

/// What became of a roster copy from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopted {
    /// It is the roster we have.
    Same,
    /// It extends ours: it is ours now.
    Newer,
    /// Refused, with why (for the log and `psync status`).
    Refused(String),
}

/// Peering's state: the roster, who is online, attempts and offers.
#[derive(Debug)]
pub struct PeeringState {
    me: PublicKey,
    roster: Roster,
    online: HashSet<PublicKey>,
    running: HashSet<PublicKey>,
    failures: HashMap<PublicKey, (u32, Instant)>,
    offers: HashMap<PublicKey, VecDeque<Instant>>,
    /// Peers whose link is relayed, with the last try to go direct.
    relayed: HashMap<PublicKey, Instant>,
}

impl PeeringState {
    /// This device (`me`) with its verified roster copy.
    pub fn new(me: PublicKey, roster: Roster) -> Self {
        Self {
            me,
            roster,
            online: HashSet::new(),
            running: HashSet::new(),
            failures: HashMap::new(),
            offers: HashMap::new(),
            relayed: HashMap::new(),
        }
    }

    /// The roster in force.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// All active devices, and the read-only ones (what the sync core needs).
    pub fn group(&self) -> (Vec<DeviceId>, Vec<DeviceId>) {
        let active = || self.roster.members().filter(|m| !m.removed);
        (
            active().map(|m| m.key.device_id()).collect(),
            active().filter(|m| m.role == Role::ReadOnly).map(|m| m.key.device_id()).collect(),
        )
    }

    /// Group devices the server says are online.
    pub fn online_devices(&self) -> BTreeSet<DeviceId> {
        self.online.iter().map(PublicKey::device_id).collect()
    }

    /// Takes a copy of the roster from the server if it extends ours; a
    /// shorter or forked one is refused (it may hide a change).
    pub fn adopt(&mut self, entries: Vec<RosterEntry>) -> Adopted {
        let fresh = match Roster::from_entries(entries) {
            Ok(fresh) => fresh,
            Err(e) => return Adopted::Refused(format!("the server's roster does not verify; keeping ours: {e}")),
        };
        match self.roster.compare(&fresh) {
            RosterRelation::Same => Adopted::Same,
            RosterRelation::Extends => {
                self.roster = fresh;
                Adopted::Newer
            }
            RosterRelation::Behind => Adopted::Refused(format!(
                "the server's roster lacks entries this device has ({} of {}): keeping ours (it may hide a change)",
                fresh.entries().len(),
                self.roster.entries().len()
            )),
            RosterRelation::Forks { at } => Adopted::Refused(format!(
                "the server's roster forks from ours after entry {at}: refused (a device or the server is misbehaving)"
            )),
            RosterRelation::OtherGroup => Adopted::Refused("the server sent another group's roster: refused".into()),
        }
    }

    /// One new roster entry from the server.
    pub fn append(&mut self, entry: RosterEntry) -> Result<(), String> {
        self.roster.apply(entry).map_err(|e| e.to_string())
    }

    /// Logged in: these are online. Returns whom to dial now.
    pub fn logged_in(&mut self, online: Vec<PublicKey>) -> Vec<PublicKey> {
        self.online = online.iter().copied().filter(|p| *p != self.me).collect();
        online.into_iter().filter_map(|peer| self.came_online(peer)).collect()
    }

    /// `peer` came online: dial it if it is ours to dial, without waiting
    /// out earlier failures (it may have just fixed its network).
    pub fn came_online(&mut self, peer: PublicKey) -> Option<PublicKey> {
        if peer == self.me {
            return None;
        }
        self.online.insert(peer);
        if !self.ours_to_dial(&peer) || self.running.contains(&peer) {
            return None;
        }
        self.failures.remove(&peer);
        self.running.insert(peer);
        Some(peer)
    }

    /// `peer` went offline.
    pub fn went_offline(&mut self, peer: &PublicKey) {
        self.online.remove(peer);
        self.relayed.remove(peer);
    }

    /// Dial `peer` now if it is ours to dial and no attempt is under way
    /// (this device's network changed, or the peer's did and it asked).
    pub fn dial_now(&mut self, peer: PublicKey) -> Option<PublicKey> {
        if peer == self.me || !self.ours_to_dial(&peer) || self.running.contains(&peer) {
            return None;
        }
        self.failures.remove(&peer);
        self.running.insert(peer);
        Some(peer)
    }

    /// A link to `peer` is up, relayed or not.
    pub fn linked(&mut self, peer: PublicKey, relayed: bool, now: Instant) {
        if relayed {
            self.relayed.entry(peer).or_insert(now);
        } else {
            self.relayed.remove(&peer);
        }
    }

    /// Relayed peers, ours to dial, whose last try to go direct is
    /// [`UPGRADE_INTERVAL`] old; each counts as an attempt under way.
    pub fn due_upgrades(&mut self, linked: &BTreeSet<DeviceId>, now: Instant) -> Vec<PublicKey> {
        self.relayed.retain(|peer, _| linked.contains(&peer.device_id()));
        let mut due: Vec<PublicKey> = self
            .relayed
            .iter()
            .filter(|(peer, tried)| {
                now.duration_since(**tried) >= UPGRADE_INTERVAL
                    && self.ours_to_dial(peer)
                    && !self.running.contains(*peer)
            })
            .map(|(peer, _)| *peer)
            .collect();
        due.sort_by_key(PublicKey::device_id);
        for peer in &due {
            self.relayed.insert(*peer, now);
            self.running.insert(*peer);
        }
        due
    }

    /// The signalling connection ended: nobody is known online.
    pub fn disconnected(&mut self) {
        self.online.clear();
    }

    /// Online peers without a link that are ours to dial and whose wait is
    /// over; each returned one counts as an attempt under way.
    pub fn due_redials(&mut self, linked: &BTreeSet<DeviceId>, now: Instant) -> Vec<PublicKey> {
        let mut due: Vec<PublicKey> = self
            .online
            .iter()
            .copied()
            .filter(|peer| {
                !linked.contains(&peer.device_id())
                    && self.ours_to_dial(peer)
                    && !self.running.contains(peer)
                    && self.failures.get(peer).is_none_or(|(_, retry_at)| now >= *retry_at)
            })
            .collect();
        due.sort_by_key(PublicKey::device_id);
        self.running.extend(due.iter().copied());
        due
    }

    /// An attempt to reach `peer` ended.
    pub fn finished(&mut self, peer: PublicKey, ok: bool, now: Instant) {
        self.running.remove(&peer);
        if ok {
            self.failures.remove(&peer);
        } else {
            let count = self.failures.get(&peer).map_or(0, |(n, _)| *n);
            let wait = FIRST_BACKOFF.saturating_mul(1 << count.min(6)).min(MAX_BACKOFF);
            self.failures.insert(peer, (count + 1, now + wait));
        }
    }

    /// Whether `peer` may make another offer now (a bounded rate).
    pub fn offer_allowed(&mut self, peer: PublicKey, now: Instant) -> bool {
        let recent = self.offers.entry(peer).or_default();
        while recent.front().is_some_and(|t| now.duration_since(*t) > OFFER_WINDOW) {
            recent.pop_front();
        }
        if recent.len() >= MAX_OFFERS_PER_WINDOW {
            return false;
        }
        recent.push_back(now);
        true
    }

    fn ours_to_dial(&self, peer: &PublicKey) -> bool {
        self.roster.is_active(peer) && offers_to(&self.me, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use psync_signal::{DeviceKey, RosterOp};

    struct Group {
        keys: Vec<DeviceKey>,
        roster: Roster,
    }

    /// A roster of `n` devices founded by the first.
    fn group(n: usize) -> Group {
        let keys: Vec<DeviceKey> = (0..n).map(|_| DeviceKey::generate()).collect();
        let mut roster = Roster::create(&keys[0], "notes", "d0", "sha-256 00", 1);
        for (i, key) in keys.iter().enumerate().skip(1) {
            let add = RosterOp::Add {
                key: key.public(),
                name: format!("d{i}"),
                role: Role::Full,
                dtls_fingerprint: "sha-256 00".into(),
            };
            let entry = roster.sign_next(&keys[0], add, 1 + i as i64);
            roster.apply(entry).unwrap();
        }
        Group { keys, roster }
    }

    /// The device that dials `other` (the smaller key) and the other one.
    fn dialer_and_dialed(g: &Group) -> (PublicKey, PublicKey) {
        let (a, b) = (g.keys[0].public(), g.keys[1].public());
        if offers_to(&a, &b) {
            (a, b)
        } else {
            (b, a)
        }
    }

    #[test]
    fn exactly_one_side_dials_and_failures_back_off() {
        let g = group(2);
        let (dialer, dialed) = dialer_and_dialed(&g);
        let mut them = PeeringState::new(dialed, g.roster.clone());
        assert!(them.came_online(dialer).is_none(), "the larger key never dials");
        let mut me = PeeringState::new(dialer, g.roster.clone());
        assert_eq!(me.logged_in(vec![dialer, dialed]), vec![dialed]);
        let t0 = Instant::now();
        let linked = BTreeSet::new();
        assert!(me.due_redials(&linked, t0).is_empty(), "one attempt at a time");
        me.finished(dialed, false, t0);
        assert!(me.due_redials(&linked, t0).is_empty(), "waits after a failure");
        assert_eq!(me.due_redials(&linked, t0 + FIRST_BACKOFF), vec![dialed]);
        me.finished(dialed, false, t0 + FIRST_BACKOFF);
        assert!(me.due_redials(&linked, t0 + FIRST_BACKOFF * 2).is_empty(), "the wait doubles");
        assert_eq!(me.due_redials(&linked, t0 + FIRST_BACKOFF * 3), vec![dialed]);
        me.finished(dialed, true, t0);
        let linked: BTreeSet<DeviceId> = [dialed.device_id()].into();
        assert!(me.due_redials(&linked, t0 + MAX_BACKOFF).is_empty(), "a linked peer is not dialled");
        me.went_offline(&dialed);
        assert!(me.due_redials(&BTreeSet::new(), t0 + MAX_BACKOFF).is_empty(), "an offline peer is not dialled");
        assert_eq!(me.came_online(dialed), Some(dialed), "coming online skips the wait");
    }

    #[test]
    fn a_relayed_link_tries_to_go_direct_every_interval_and_a_network_change_dials_at_once() {
        let g = group(2);
        let (dialer, dialed) = dialer_and_dialed(&g);
        let mut me = PeeringState::new(dialer, g.roster.clone());
        let mut them = PeeringState::new(dialed, g.roster.clone());
        let t0 = Instant::now();
        let linked: BTreeSet<DeviceId> = [dialed.device_id()].into();
        me.linked(dialed, true, t0);
        them.linked(dialer, true, t0);
        assert!(me.due_upgrades(&linked, t0 + UPGRADE_INTERVAL / 2).is_empty(), "not before the interval");
        assert_eq!(me.due_upgrades(&linked, t0 + UPGRADE_INTERVAL), vec![dialed]);
        assert!(me.due_upgrades(&linked, t0 + UPGRADE_INTERVAL * 3).is_empty(), "one attempt at a time");
        me.finished(dialed, true, t0 + UPGRADE_INTERVAL);
        assert!(them.due_upgrades(&[dialer.device_id()].into(), t0 + UPGRADE_INTERVAL).is_empty(), "only the dialer");
        me.linked(dialed, false, t0 + UPGRADE_INTERVAL);
        assert!(me.due_upgrades(&linked, t0 + UPGRADE_INTERVAL * 3).is_empty(), "a direct link stays");
        // A network change: the dialer dials at once, the other side cannot.
        assert_eq!(me.dial_now(dialed), Some(dialed));
        assert_eq!(me.dial_now(dialed), None, "already under way");
        assert_eq!(them.dial_now(dialer), None);
    }

    #[test]
    fn offers_are_rate_limited_per_peer() {
        let g = group(3);
        let mut me = PeeringState::new(g.keys[0].public(), g.roster.clone());
        let (noisy, quiet) = (g.keys[1].public(), g.keys[2].public());
        let t0 = Instant::now();
        for _ in 0..MAX_OFFERS_PER_WINDOW {
            assert!(me.offer_allowed(noisy, t0));
        }
        assert!(!me.offer_allowed(noisy, t0), "the next offer in the window is ignored");
        assert!(me.offer_allowed(quiet, t0), "another peer is not affected");
        assert!(me.offer_allowed(noisy, t0 + OFFER_WINDOW + Duration::from_millis(1)), "the window moves on");
    }

    #[test]
    fn only_a_roster_that_extends_ours_is_adopted() {
        let g = group(2);
        let mut longer = g.roster.clone();
        let extra = DeviceKey::generate();
        let add = RosterOp::Add {
            key: extra.public(),
            name: "d2".into(),
            role: Role::ReadOnly,
            dtls_fingerprint: "sha-256 00".into(),
        };
        let entry = longer.sign_next(&g.keys[0], add, 9);
        longer.apply(entry).unwrap();

        let mut me = PeeringState::new(g.keys[1].public(), g.roster.clone());
        assert_eq!(me.adopt(g.roster.entries().to_vec()), Adopted::Same);
        assert_eq!(me.adopt(longer.entries().to_vec()), Adopted::Newer);
        assert_eq!(me.group().1, vec![extra.public().device_id()], "the read-only member is known");
        match me.adopt(g.roster.entries().to_vec()) {
            Adopted::Refused(why) => assert!(why.contains("lacks entries"), "{why}"),
            other => panic!("a shorter roster was not refused: {other:?}"),
        }
        assert_eq!(me.roster().entries().len(), longer.entries().len(), "ours is kept");
        let other_group = group(1);
        assert!(matches!(me.adopt(other_group.roster.entries().to_vec()), Adopted::Refused(_)));
    }

    #[test]
    fn removed_devices_are_never_dialled() {
        let g = group(3);
        // Two members other than the founder, who signs the removal.
        let (a, b) = (g.keys[1].public(), g.keys[2].public());
        let (dialer, dialed) = if offers_to(&a, &b) { (a, b) } else { (b, a) };
        let mut roster = g.roster.clone();
        let entry = roster.sign_next(&g.keys[0], RosterOp::Remove { key: dialed }, 5);
        roster.apply(entry).unwrap();
        let mut me = PeeringState::new(dialer, roster);
        assert!(me.came_online(dialed).is_none());
        assert!(me.due_redials(&BTreeSet::new(), Instant::now()).is_empty());
        assert!(!me.group().0.contains(&dialed.device_id()), "nor synced with");
    }
}
