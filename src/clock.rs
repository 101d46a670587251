//! The daemon's clocks, and times for people.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use psync_sync::Millis;

/// Milliseconds of a clock that never goes back (the core's time).
pub fn mono_ms() -> Millis {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as Millis + 1
}

/// Wall-clock milliseconds since the Unix epoch (signed envelopes, times shown).
pub fn wall_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC), without a date crate.
pub fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `ms` since the epoch as a local date and time, `YYYY-MM-DD HH:MM:SS`
/// (the system time zone; UTC if it cannot be read).
pub fn local_time(ms: u64) -> String {
    time_in(ms, &jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC))
}

fn time_in(ms: u64, zone: &jiff::tz::TimeZone) -> String {
    match jiff::Timestamp::from_millisecond(ms as i64) {
        Ok(t) => t.to_zoned(zone.clone()).strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => utc((ms / 1000) as i64),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_local_times_in_the_given_zone() {
        let ms = 1_795_620_909_123;
        assert_eq!(super::time_in(ms, &jiff::tz::TimeZone::UTC), "2026-11-25 15:35:09");
        let paris = jiff::tz::TimeZone::fixed(jiff::tz::offset(1));
        assert_eq!(super::time_in(ms, &paris), "2026-11-25 16:35:09");
    }

    #[test]
    fn formats_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_620_909), "2026-11-25 15:35:09");
    }
}
