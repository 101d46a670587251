//! The core's own timers, in one table. Per-peer deadlines (reply jitter,
//! tree walks) live with each peer, request deadlines with fetching; all of
//! them meet in [`super::SyncCore::poll_timeout`].

use super::Millis;

/// One timer of the core (its discriminant is its slot in [`Timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Local changes are announced to peers (the debounce ends).
    Announce = 0,
    /// Heartbeat: tree roots to peers, holds retried, liveness checked.
    Heartbeat = 1,
    /// Tombstone collection.
    Gc = 2,
    /// The disk was full: installs and downloads wait until then.
    DiskFullPause = 3,
}

const TIMERS: usize = Timer::DiskFullPause as usize + 1;

/// When each [`Timer`] fires (`None`: not armed).
#[derive(Debug, Default)]
pub(super) struct Timers {
    at: [Option<Millis>; TIMERS],
}

impl Timers {
    pub(super) fn set(&mut self, timer: Timer, at: Millis) {
        self.at[timer as usize] = Some(at);
    }

    /// Arms `timer` unless it is armed already (a debounce keeps its first deadline).
    pub(super) fn arm(&mut self, timer: Timer, at: Millis) {
        self.at[timer as usize].get_or_insert(at);
    }

    pub(super) fn is_armed(&self, timer: Timer) -> bool {
        self.at[timer as usize].is_some()
    }

    /// Whether `timer` is due at `now`; a due timer is disarmed.
    pub(super) fn take_due(&mut self, timer: Timer, now: Millis) -> bool {
        let slot = &mut self.at[timer as usize];
        let due = slot.is_some_and(|t| t <= now);
        if due {
            *slot = None;
        }
        due
    }

    /// The earliest armed deadline.
    pub(super) fn earliest(&self) -> Option<Millis> {
        self.at.iter().flatten().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_timer_fires_once_and_arm_keeps_the_first_deadline() {
        let mut t = Timers::default();
        assert_eq!(t.earliest(), None);
        t.arm(Timer::Announce, 100);
        t.arm(Timer::Announce, 50);
        t.set(Timer::Heartbeat, 300);
        assert_eq!(t.earliest(), Some(100));
        assert!(!t.take_due(Timer::Announce, 99));
        assert!(t.take_due(Timer::Announce, 100));
        assert!(!t.take_due(Timer::Announce, 200));
        assert!(!t.is_armed(Timer::Announce));
        assert_eq!(t.earliest(), Some(300));
    }
}
