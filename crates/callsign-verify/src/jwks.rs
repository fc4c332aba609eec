//! The JWKS cache: fetched over HTTP, kept for the endpoint's `max-age` within bounds, refreshed
//! once per cooldown on an unknown `kid`, one fetch in flight, cached keys served while the
//! endpoint is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use callsign_api::Jwks;
use callsign_core::token::VerifyingKey;
use reqwest::Url;

use crate::VerifyError;

/// The largest JWKS read: a key set is a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How the JWKS is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// The shortest time a key set is kept, whatever `max-age` says (30 s).
    pub min_ttl: Duration,
    /// The longest time a key set is kept, whatever `max-age` says (1 h).
    pub max_ttl: Duration,
    /// How long a key set is kept when the answer has no `max-age` (5 min).
    pub default_ttl: Duration,
    /// The least time between two fetches, on an unknown `kid` or after a failure (30 s, as
    /// jose's `cooldownDuration`).
    pub cooldown: Duration,
    /// How long one fetch may take (10 s).
    pub timeout: Duration,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            default_ttl: Duration::from_secs(300),
            cooldown: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

impl JwksConfig {
    /// How long to keep a key set answered with this `Cache-Control` value: its `max-age`
    /// clamped to `[min_ttl, max_ttl]`; `no-cache`/`no-store` count as 0 (so `min_ttl`).
    pub fn ttl(&self, cache_control: Option<&str>) -> Duration {
        let mut ttl = self.default_ttl;
        for directive in cache_control.unwrap_or_default().split(',') {
            let directive = directive.trim();
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                ttl = Duration::ZERO;
                break;
            }
            if let Some(v) = lower.strip_prefix("max-age=")
                && let Ok(secs) = v.trim_matches('"').parse::<u64>()
            {
                ttl = Duration::from_secs(secs);
            }
        }
        ttl.clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
    }
}

#[derive(Debug, Default)]
struct Cached {
    keys: Arc<HashMap<String, VerifyingKey>>,
    /// When the key set must be fetched again; `None` before the first successful fetch.
    expires: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Fetch attempts so far: a waiter that sees it moved knows another fetch answered for it.
    attempts: u64,
}

/// A JWKS fetched from a URL and cached. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct JwksCache {
    http: reqwest::Client,
    url: Url,
    config: JwksConfig,
    state: RwLock<Cached>,
    /// Held while a fetch runs: one fetch in flight, the others wait for its answer.
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl JwksCache {
    /// A cache of the JWKS at `url`, fetched with `http` (configure its trusted CAs there).
    pub fn new(http: reqwest::Client, url: Url, config: JwksConfig) -> Self {
        Self {
            http,
            url,
            config,
            state: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many fetches were attempted (a metric; the tests count refreshes with it).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The key `kid` names. Fetches when the cached set has expired or lacks `kid`, at most once
    /// per cooldown; while the endpoint fails, the keys fetched last are served.
    pub async fn key(&self, kid: &str) -> Result<VerifyingKey, VerifyError> {
        let now = Instant::now();
        let (hit, fresh, may_fetch, attempts) = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            (
                s.keys.get(kid).cloned(),
                s.expires.is_some_and(|e| now < e),
                s.last_attempt
                    .is_none_or(|t| now.duration_since(t) >= self.config.cooldown),
                s.attempts,
            )
        };
        match hit {
            Some(key) if fresh || !may_fetch => return Ok(key),
            _ => {}
        }
        if may_fetch {
            self.refresh_after(attempts).await;
        }
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        match s.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if s.expires.is_none() => Err(VerifyError::KeysUnavailable),
            None => Err(VerifyError::UnknownKid),
        }
    }

    /// Fetches now unless another fetch started after attempt number `seen` (its answer counts
    /// for this caller too).
    async fn refresh_after(&self, seen: u64) {
        let _one_in_flight = self.fetching.lock().await;
        if self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .attempts
            != seen
        {
            return;
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch().await;
        let now = Instant::now();
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.attempts += 1;
        s.last_attempt = Some(now);
        match result {
            Ok((keys, ttl)) => {
                s.keys = Arc::new(keys);
                s.expires = Some(now + ttl);
            }
            Err(e) => tracing::warn!(
                url = %self.url,
                error = %e,
                cached_keys = s.keys.len(),
                "the JWKS could not be fetched; serving the keys fetched last"
            ),
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, VerifyingKey>, Duration), String> {
        let resp = self
            .http
            .get(self.url.clone())
            .timeout(self.config.timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let ttl = self.config.ttl(
            resp.headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        );
        let body = crate::body::read_bounded(resp, MAX_JWKS_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the JWKS is larger than 1 MiB")?;
        let jwks: Jwks = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut keys = HashMap::with_capacity(jwks.keys.len());
        for jwk in &jwks.keys {
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(key.kid().to_owned(), key);
                }
                Err(e) => tracing::warn!(kid = %jwk.kid, error = %e, "skipping a JWK"),
            }
        }
        Ok((keys, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_honoured_within_bounds() {
        let c = JwksConfig::default();
        let s = Duration::from_secs;
        assert_eq!(c.ttl(Some("public, max-age=300")), s(300));
        assert_eq!(c.ttl(Some("max-age=5")), s(30));
        assert_eq!(c.ttl(Some("max-age=86400")), s(3600));
        assert_eq!(c.ttl(Some("no-store")), s(30));
        assert_eq!(c.ttl(Some("public, MAX-AGE=\"120\"")), s(120));
        assert_eq!(c.ttl(Some("max-age=nonsense")), s(300));
        assert_eq!(c.ttl(None), s(300));
    }
}
