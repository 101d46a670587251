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

/// A lone local change waits this long before it goes out, so that a
/// save's close and the rename that often follows it travel together.
pub const LEADING_EDGE_GRACE_MS: Millis = 5;

/// When local changes are announced: the first after a quiet spell at once
/// (after [`LEADING_EDGE_GRACE_MS`]), those that follow within the debounce
/// window together at its end. Typing is one update per window; a lone save
/// does not wait for a window that nothing else would fill.
#[derive(Debug, Default)]
pub(super) struct Debounce {
    last_sent: Option<Millis>,
}

impl Debounce {
    /// When a change made at `now` should go out.
    pub(super) fn due(&self, now: Millis, window: Millis) -> Millis {
        match self.last_sent {
            Some(sent) if now < sent + window => sent + window,
            _ => now + LEADING_EDGE_GRACE_MS.min(window),
        }
    }

    pub(super) fn sent(&mut self, now: Millis) {
        self.last_sent = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_change_goes_at_once_and_a_burst_waits_for_the_window() {
        let mut d = Debounce::default();
        assert_eq!(d.due(1_000, 100), 1_000 + LEADING_EDGE_GRACE_MS, "quiet: the leading edge");
        d.sent(1_005);
        assert_eq!(d.due(1_010, 100), 1_105, "inside the window: its end");
        assert_eq!(d.due(1_104, 100), 1_105);
        assert_eq!(d.due(1_105, 100), 1_105 + LEADING_EDGE_GRACE_MS, "the window is over: quiet again");
        assert_eq!(d.due(5_000, 0), 5_000, "no debounce, no grace");
        assert_eq!(d.due(5_000, 3), 5_003, "the grace never exceeds the window");
    }

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
