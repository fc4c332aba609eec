//! Time as an input.

use std::sync::Mutex;

use time::OffsetDateTime;

/// A source of the current time. Production uses [`SystemClock`]; tests pin or move time with
/// [`FixedClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current instant, UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until told to move.
#[derive(Debug)]
pub struct FixedClock(Mutex<OffsetDateTime>);

impl FixedClock {
    /// A clock showing `t`.
    pub fn new(t: OffsetDateTime) -> Self {
        Self(Mutex::new(t))
    }

    /// Moves the clock by `d`.
    pub fn advance(&self, d: time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += d;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Formats an instant as the real service does in `expiresOn`: ISO 8601 with a `+00:00` offset and
/// up to seven fractional digits, trailing zeros trimmed
/// (`2023-06-28T07:30:11.8919724+00:00`, `2023-06-28T07:30:11+00:00`).
pub fn format_expires_on(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let ticks = t.nanosecond() / 100; // 100 ns ticks, 7 digits
    if ticks > 0 {
        let frac = format!("{ticks:07}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str("+00:00");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn expires_on_keeps_seven_digits_and_trims_zeros() {
        assert_eq!(
            format_expires_on(datetime!(2023-06-28 07:30:11.8919724 UTC)),
            "2023-06-28T07:30:11.8919724+00:00"
        );
        assert_eq!(
            format_expires_on(datetime!(2022-11-16 09:47:55.688402 UTC)),
            "2022-11-16T09:47:55.688402+00:00"
        );
        assert_eq!(
            format_expires_on(datetime!(2022-11-16 09:47:55 UTC)),
            "2022-11-16T09:47:55+00:00"
        );
    }

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let c = FixedClock::new(datetime!(2024-01-01 0:00 UTC));
        assert_eq!(c.now(), datetime!(2024-01-01 0:00 UTC));
        c.advance(time::Duration::seconds(90));
        assert_eq!(c.now(), datetime!(2024-01-01 0:01:30 UTC));
    }
}
