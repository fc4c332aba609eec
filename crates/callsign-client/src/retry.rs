//! Retries with exponential backoff and jitter, honouring `Retry-After`.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use reqwest::header::HeaderMap;
use time::OffsetDateTime;

/// When and how often a failed request is tried again.
///
/// A request is retried when the service answers 408, 429, 500, 502, 503 or 504, or when the
/// connection could not be made (nothing was sent). The wait before retry `n` (0-based) is
/// `initial_backoff * 2^n`, at most `max_backoff`, with ±20 % jitter; a `Retry-After` header
/// (seconds or an HTTP date; also `retry-after-ms` and `x-ms-retry-after-ms`) replaces it,
/// capped at `max_retry_after`.
///
/// Like the Azure SDKs' pipelines, this retries the non-idempotent `POST` operations too (create
/// user, issue token): after a 5xx or 408 the service may already have carried the request out,
/// so a retried create can create a second identity. Use [`RetryPolicy::none`] where that
/// matters, or create with a custom id, which makes creation idempotent. Timeouts and
/// connections broken after the request was sent are *not* retried, for the same reason.
///
/// ```
/// use std::time::Duration;
/// use callsign_client::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_retries(5)
///     .initial_backoff(Duration::from_millis(100))
///     .max_retry_after(Duration::from_secs(10));
/// assert_eq!(policy.get_max_retries(), 5);
/// assert_eq!(RetryPolicy::none().get_max_retries(), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 3 retries, backoff from 800 ms (as azure-core), at most 60 s; `Retry-After` capped at 60 s.
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(800),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// How many times a request may be retried after its first attempt.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The wait before the first retry; it doubles for each further one.
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }

    /// The longest computed wait between attempts.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// The longest wait a `Retry-After` header can impose.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// The configured number of retries.
    pub fn get_max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The wait before retry number `retry` (0-based) without a `Retry-After`, jitter included.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_backoff);
        // ±20 %, like azure-core.
        let factor = 0.8 + 0.4 * unit_random();
        base.mul_f64(factor).min(self.max_backoff)
    }

    /// The wait a response asks for, capped.
    pub(crate) fn retry_after(&self, headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
        retry_after(headers, now).map(|d| d.min(self.max_retry_after))
    }
}

/// Statuses worth another attempt.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn retry_after(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = header(headers, name).and_then(|v| v.parse::<f64>().ok())
            && ms.is_finite()
            && ms >= 0.0
        {
            return Some(Duration::from_secs_f64((ms / 1000.0).min(1e9)));
        }
    }
    let value = header(headers, "retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = OffsetDateTime::from(httpdate::parse_http_date(value).ok()?);
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// A number in [0, 1) from the standard library's randomly keyed hasher: jitter needs no more.
fn unit_random() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use time::macros::datetime;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    const NOW: OffsetDateTime = datetime!(2024-01-01 00:00 UTC);

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = RetryPolicy::default()
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(500));
        for _ in 0..50 {
            let d0 = p.backoff(0);
            assert!(
                d0 >= Duration::from_millis(80) && d0 <= Duration::from_millis(120),
                "{d0:?}"
            );
            let d2 = p.backoff(2);
            assert!(
                d2 >= Duration::from_millis(320) && d2 <= Duration::from_millis(480),
                "{d2:?}"
            );
            assert!(p.backoff(10) <= Duration::from_millis(500));
            assert!(p.backoff(u32::MAX) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn jitter_varies() {
        let p = RetryPolicy::default();
        let first = p.backoff(0);
        assert!((0..100).any(|_| p.backoff(0) != first));
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds_and_is_capped() {
        let p = RetryPolicy::default().max_retry_after(Duration::from_secs(30));
        assert_eq!(
            p.retry_after(&headers(&[("retry-after", "2")]), NOW),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            p.retry_after(&headers(&[("retry-after", "3600")]), NOW),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p.retry_after(
                &headers(&[("retry-after", "Mon, 01 Jan 2024 00:00:05 GMT")]),
                NOW
            ),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            p.retry_after(
                &headers(&[("retry-after", "Sun, 31 Dec 2023 00:00:05 GMT")]),
                NOW
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(
            p.retry_after(
                &headers(&[("retry-after-ms", "250"), ("retry-after", "9")]),
                NOW
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            p.retry_after(&headers(&[("retry-after", "soon")]), NOW),
            None
        );
        assert_eq!(p.retry_after(&headers(&[]), NOW), None);
    }

    #[test]
    fn only_transient_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(s));
        }
        for s in [200, 201, 204, 400, 401, 403, 404, 409, 501, 505] {
            assert!(!is_retryable_status(s));
        }
    }
}
