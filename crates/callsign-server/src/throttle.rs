//! Request rates: ACS-style throttling per resource and operation class, and a bucket of failed
//! authentications per client address that answers 429 before any signature work.
//!
//! Both are token buckets held in memory, per node: with several nodes over one database each
//! node enforces its own limits (a shared count would cost a database round trip per request).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use callsign_core::ResourceId;
use serde::Deserialize;

use crate::error::ApiError;

/// What ACS throttles separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationClass {
    /// Create an identity (no token).
    Create,
    /// Issue a token, or create an identity with a token.
    Issue,
    /// Revoke an identity's tokens.
    Revoke,
    /// Delete an identity.
    Delete,
    /// Token exchanges (Teams user, Teams extension).
    Exchange,
    /// Introspection (callsign's own).
    Introspect,
    /// Listing identities (callsign's own; each page is one bounded read).
    List,
}

impl OperationClass {
    const ALL: [OperationClass; 7] = [
        OperationClass::Create,
        OperationClass::Issue,
        OperationClass::Revoke,
        OperationClass::Delete,
        OperationClass::Exchange,
        OperationClass::Introspect,
        OperationClass::List,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// A token bucket's shape: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens refilled per second.
    pub per_second: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Rate {
    /// `limit` requests per `window`, bursting up to `limit` (how ACS publishes its limits).
    pub fn per_window(limit: u32, window: Duration) -> Self {
        Self {
            per_second: f64::from(limit) / window.as_secs_f64().max(0.001),
            burst: f64::from(limit.max(1)),
        }
    }
}

/// The throttling configuration: a rate per class, or none for an unthrottled class.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThrottleConfig {
    rates: [Option<Rate>; 7],
}

/// One class in a throttle file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRate {
    /// Requests per window.
    limit: u32,
    /// Window length in seconds (default 30, as ACS publishes).
    #[serde(default = "default_window")]
    window_seconds: f64,
    /// Bucket size (default: `limit`).
    burst: Option<u32>,
}

fn default_window() -> f64 {
    30.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleFile {
    create: Option<FileRate>,
    issue: Option<FileRate>,
    revoke: Option<FileRate>,
    delete: Option<FileRate>,
    exchange: Option<FileRate>,
    introspect: Option<FileRate>,
    list: Option<FileRate>,
}

impl ThrottleConfig {
    /// No throttling (the default).
    pub fn off() -> Self {
        Self::default()
    }

    /// ACS's published limits per resource: 1,000 creates, issues and create-with-token per
    /// 30 s; 500 revokes, deletes and exchanges per 30 s. Introspection is not throttled. ACS
    /// has no listing; callsign's is held to 500 pages per 30 s.
    pub fn acs() -> Self {
        let w = Duration::from_secs(30);
        let mut c = Self::default();
        c.rates[OperationClass::Create.index()] = Some(Rate::per_window(1000, w));
        c.rates[OperationClass::Issue.index()] = Some(Rate::per_window(1000, w));
        c.rates[OperationClass::Revoke.index()] = Some(Rate::per_window(500, w));
        c.rates[OperationClass::Delete.index()] = Some(Rate::per_window(500, w));
        c.rates[OperationClass::Exchange.index()] = Some(Rate::per_window(500, w));
        c.rates[OperationClass::List.index()] = Some(Rate::per_window(500, w));
        c
    }

    /// `off`, `acs`, or the path of a TOML file with a table per class
    /// (`[issue]\nlimit = 100\nwindow_seconds = 10\nburst = 20`); classes it omits are not
    /// throttled.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        match spec.trim() {
            "off" => Ok(Self::off()),
            "acs" => Ok(Self::acs()),
            path => Self::from_file(Path::new(path)),
        }
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "--throttle must be off, acs or a readable TOML file; cannot read {}",
                path.display()
            )
        })?;
        let file: ThrottleFile = toml::from_str(&text)
            .with_context(|| format!("the throttle file {} is not valid", path.display()))?;
        let mut c = Self::default();
        let entries = [
            (OperationClass::Create, file.create),
            (OperationClass::Issue, file.issue),
            (OperationClass::Revoke, file.revoke),
            (OperationClass::Delete, file.delete),
            (OperationClass::Exchange, file.exchange),
            (OperationClass::Introspect, file.introspect),
            (OperationClass::List, file.list),
        ];
        for (class, entry) in entries {
            let Some(r) = entry else { continue };
            anyhow::ensure!(
                r.window_seconds.is_finite() && r.window_seconds > 0.0,
                "the throttle file {}: window_seconds must be positive ({class:?})",
                path.display()
            );
            anyhow::ensure!(
                r.limit > 0 && r.burst != Some(0),
                "the throttle file {}: limit and burst must be at least 1 ({class:?})",
                path.display()
            );
            c.rates[class.index()] = Some(Rate {
                per_second: f64::from(r.limit) / r.window_seconds,
                burst: f64::from(r.burst.unwrap_or(r.limit)),
            });
        }
        Ok(c)
    }

    /// The rate of `class`, if throttled.
    pub fn rate(&self, class: OperationClass) -> Option<Rate> {
        self.rates[class.index()]
    }

    /// Whether any class is throttled.
    pub fn is_on(&self) -> bool {
        self.rates.iter().any(Option::is_some)
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        if !self.is_on() {
            return "off".into();
        }
        OperationClass::ALL
            .iter()
            .filter_map(|c| {
                self.rate(*c)
                    .map(|r| format!("{c:?}: {:.1}/s burst {}", r.per_second, r.burst))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
    }

    /// Whole seconds until one token is there (at least 1).
    fn retry_after(&self, rate: Rate) -> u64 {
        let missing = (1.0 - self.tokens).max(0.0);
        let secs = if rate.per_second > 0.0 {
            (missing / rate.per_second).ceil()
        } else {
            3600.0
        };
        (secs as u64).clamp(1, 3600)
    }

    /// Takes a token, or says how long to wait.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), u64> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.retry_after(rate))
        }
    }
}

/// Per-resource, per-class buckets.
#[derive(Debug)]
pub(crate) struct Throttle {
    config: ThrottleConfig,
    buckets: Mutex<HashMap<(ResourceId, OperationClass), Bucket>>,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for one request of `class` on `resource`, or refuses with 429.
    pub(crate) fn check(
        &self,
        resource: ResourceId,
        class: OperationClass,
    ) -> Result<(), ApiError> {
        let Some(rate) = self.config.rate(class) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .entry((resource, class))
            .or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
            .map_err(|retry_after| ApiError::TooManyRequests { retry_after })
    }
}

/// Most client addresses whose failures are remembered at once.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Failed authentications per client address (IPv6 by /64): `per_minute` failures, bursting to
/// the same number; past that, requests from the address get 429 before any signature work.
#[derive(Debug)]
pub(crate) struct AuthFailures {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The key failures are counted under: the address, or its /64 for IPv6 (one host usually has
/// a whole /64).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

impl AuthFailures {
    /// `per_minute == 0` turns the limit off.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            rate: (per_minute > 0).then(|| Rate::per_window(per_minute, Duration::from_secs(60))),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// 429 when `ip` has used up its failures; costs a map lookup.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.lock();
        match buckets.get_mut(&address_key(ip)) {
            Some(b) => {
                b.refill(rate, now);
                if b.tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(ApiError::TooManyRequests {
                        retry_after: b.retry_after(rate),
                    })
                }
            }
            None => Ok(()),
        }
    }

    /// Counts one failed authentication from `ip`.
    pub(crate) fn record(&self, ip: IpAddr) {
        let Some(rate) = self.rate else {
            return;
        };
        let now = Instant::now();
        let key = address_key(ip);
        let mut buckets = self.lock();
        if buckets.len() >= MAX_TRACKED_ADDRESSES && !buckets.contains_key(&key) {
            // Forget addresses whose buckets have refilled (they carry no state); if that frees
            // too little, the eighth closest to refilled. Either way a scan frees at least an
            // eighth of the table, so its cost is spread over that many new addresses.
            buckets.retain(|_, b| {
                b.refill(rate, now);
                b.tokens < rate.burst
            });
            let keep = MAX_TRACKED_ADDRESSES - MAX_TRACKED_ADDRESSES / 8;
            if buckets.len() > keep {
                let mut levels: Vec<f64> = buckets.values().map(|b| b.tokens).collect();
                let cut = keep.min(levels.len() - 1);
                let (_, threshold, _) = levels.select_nth_unstable_by(cut, f64::total_cmp);
                let threshold = *threshold;
                let mut to_free = buckets.len() - keep;
                buckets.retain(|_, b| {
                    if to_free > 0 && b.tokens >= threshold {
                        to_free -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        let bucket = buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(rate, now));
        let _ = bucket.take(rate, now);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn a_bucket_refuses_past_its_burst_and_says_when_to_retry() {
        let rate = Rate::per_window(3, Duration::from_secs(30));
        let t0 = Instant::now();
        let mut b = Bucket::full(rate, t0);
        for _ in 0..3 {
            assert!(b.take(rate, t0).is_ok());
        }
        assert_eq!(b.take(rate, t0), Err(10));
        assert!(b.take(rate, t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn the_acs_preset_matches_the_published_limits() {
        let c = ThrottleConfig::acs();
        let issue = c.rate(OperationClass::Issue).expect("throttled");
        assert_eq!(issue.burst, 1000.0);
        assert!((issue.per_second - 1000.0 / 30.0).abs() < 1e-9);
        assert_eq!(c.rate(OperationClass::Revoke).map(|r| r.burst), Some(500.0));
        assert_eq!(c.rate(OperationClass::Introspect), None);
        assert_eq!(c.rate(OperationClass::List).map(|r| r.burst), Some(500.0));
        assert!(!ThrottleConfig::off().is_on());
    }

    #[test]
    fn throttle_files_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[issue]\nlimit = 10\nwindow_seconds = 5\nburst = 2\n[list]\nlimit = 30\n",
        )
        .expect("write");
        let c = ThrottleConfig::parse(path.to_str().expect("utf-8")).expect("valid");
        assert_eq!(
            c.rate(OperationClass::Issue),
            Some(Rate {
                per_second: 2.0,
                burst: 2.0
            })
        );
        assert_eq!(c.rate(OperationClass::List).map(|r| r.burst), Some(30.0));
        assert_eq!(c.rate(OperationClass::Create), None);
        for bad in [
            "[issue]\nlimit = 0\n",
            "[issue]\nlimit = 1\nwindow_seconds = 0\n",
            "[isue]\nlimit = 1\n",
            "[issue]\nlimt = 1\n",
        ] {
            std::fs::write(&path, bad).expect("write");
            assert!(
                ThrottleConfig::parse(path.to_str().expect("utf-8")).is_err(),
                "{bad}"
            );
        }
        assert!(ThrottleConfig::parse("/nonexistent/throttle.toml").is_err());
    }

    #[test]
    fn failures_are_counted_per_address_and_ipv6_per_64() {
        let f = AuthFailures::new(2);
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        f.record(a);
        assert!(f.check(a).is_ok());
        f.record(a);
        assert!(matches!(f.check(a), Err(ApiError::TooManyRequests { .. })));
        assert!(f.check(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))).is_ok());
        let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        f.record(v6(1));
        f.record(v6(2));
        assert!(f.check(v6(3)).is_err(), "one /64 is one client");
        assert!(AuthFailures::new(0).check(a).is_ok());
    }

    #[test]
    fn the_address_table_is_bounded() {
        let f = AuthFailures::new(1);
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 10) {
            f.record(IpAddr::V4(Ipv4Addr::from(i)));
        }
        assert!(f.tracked() <= MAX_TRACKED_ADDRESSES);
    }
}
