//! Where the client reads the time: request dates and token expiry decisions.

use time::OffsetDateTime;

/// A source of the current time, injectable so token refresh (and request dating) can be
/// tested without waiting.
///
/// Any `Fn() -> OffsetDateTime` closure is a clock.
///
/// ```
/// use callsign_client::{Clock, SystemClock};
/// use time::macros::datetime;
///
/// let fixed = || datetime!(2024-01-01 00:00 UTC);
/// assert_eq!(fixed.now(), datetime!(2024-01-01 00:00 UTC));
/// assert!(SystemClock.now().year() >= 2024);
/// ```
pub trait Clock: Send + Sync {
    /// The current instant.
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

impl<F> Clock for F
where
    F: Fn() -> OffsetDateTime + Send + Sync,
{
    fn now(&self) -> OffsetDateTime {
        self()
    }
}
