//! The revocation follower: the server's revocation feed (`GET /revocations`), followed from a
//! snapshot (`GET /revocations/snapshot`), kept as `identity → (epoch, deleted)` and applied with
//! the server's own rule, [`callsign_core::token::token_in_force`].
//!
//! The loop: load the snapshot page by page (its `cursor` is the feed position before it), then
//! long-poll the feed from that cursor; a `410` (cursor older than the feed's retention) loads
//! the snapshot again; any other failure is retried with exponential backoff, from the same
//! cursor, so no event is lost across a server restart. Events only ever raise an epoch or set
//! `deleted`, so replaying one is harmless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use callsign_api::ErrorResponse;
use callsign_client::ConnectionString;
use callsign_core::IdentityId;
use callsign_core::token::{VerifiedToken, token_in_force};
use reqwest::Url;
use serde::Deserialize;

use crate::VerifyError;

/// The api-version the feed is asked with.
const API_VERSION: &str = "2023-10-01";

/// What a revocation event did to an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    /// Its tokens issued before this epoch were revoked.
    Revoked,
    /// It was deleted.
    Deleted,
}

/// One feed event or snapshot entry: `{"id","kind","epoch"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RevocationEvent {
    /// The identity (`8:acs:…`).
    pub id: String,
    /// Revoked or deleted.
    pub kind: RevocationKind,
    /// The identity's revocation epoch after the event.
    pub epoch: u64,
}

#[derive(Debug, Deserialize)]
struct FeedPage {
    events: Vec<RevocationEvent>,
    cursor: String,
}

#[derive(Debug, Deserialize)]
struct SnapshotPage {
    value: Vec<RevocationEvent>,
    cursor: String,
    #[serde(rename = "nextLink")]
    next_link: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Entry {
    epoch: u64,
    deleted: bool,
}

/// What is known of revoked and deleted identities.
#[derive(Debug, Clone, Default)]
pub struct RevocationTable {
    entries: HashMap<IdentityId, Entry>,
}

impl RevocationTable {
    /// Applies an event: the epoch only rises, `deleted` is never cleared. An id that does not
    /// parse is skipped.
    pub fn apply(&mut self, event: &RevocationEvent) {
        let Ok(id) = IdentityId::parse(&event.id) else {
            tracing::warn!("skipping a revocation event whose id does not parse");
            return;
        };
        let entry = self.entries.entry(id).or_default();
        entry.epoch = entry.epoch.max(event.epoch);
        entry.deleted |= event.kind == RevocationKind::Deleted;
    }

    /// How many identities have an entry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no identity has an entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `Deleted` for a deleted identity, `Revoked` when [`token_in_force`] says the token's
    /// epoch is behind the identity's.
    pub fn check(&self, token: &VerifiedToken) -> Result<(), VerifyError> {
        match self.entries.get(&token.identity) {
            Some(e) if e.deleted => Err(VerifyError::Deleted),
            Some(e) if !token_in_force(token.epoch, e.epoch) => Err(VerifyError::Revoked),
            _ => Ok(()),
        }
    }
}

/// What verification does while the feed is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StalePolicy {
    /// Refuse every token with [`VerifyError::FeedStale`] (the default).
    #[default]
    FailClosed,
    /// Verify without the revocations missed (those already known still apply).
    FailOpen,
}

/// How the follower follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerConfig {
    /// How long the feed may be unreachable before the follower is stale (60 s).
    pub stale_after: Duration,
    /// What verification does then.
    pub policy: StalePolicy,
    /// The long-poll wait asked of the server (25 s; at most 30, and kept below `stale_after`).
    pub wait: Duration,
    /// First and last retry delay after a failure (250 ms, 15 s), doubling in between.
    pub backoff: (Duration, Duration),
}

impl Default for FollowerConfig {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(60),
            policy: StalePolicy::FailClosed,
            wait: Duration::from_secs(25),
            backoff: (Duration::from_millis(250), Duration::from_secs(15)),
        }
    }
}

impl FollowerConfig {
    /// The `wait` sent: at most 30 s and at most half the staleness bound, so a healthy long
    /// poll always answers within the bound.
    fn wait_secs(&self) -> u64 {
        self.wait
            .min(Duration::from_secs(30))
            .min(self.stale_after / 2)
            .as_secs()
    }
}

/// The follower's state, shared by the loop and the verifiers.
#[derive(Debug)]
struct Shared {
    table: RwLock<RevocationTable>,
    cursor: Mutex<Option<String>>,
    /// Last successful answer of the feed or snapshot; `None` until the snapshot is loaded.
    contact: Mutex<Option<Instant>>,
    /// How many times the snapshot was loaded (once at start, again after each 410).
    snapshots: AtomicU64,
    config: FollowerConfig,
}

impl Shared {
    fn touch(&self) {
        *self.contact.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn is_stale(&self, now: Instant) -> bool {
        let contact = *self.contact.lock().unwrap_or_else(|e| e.into_inner());
        contact.is_none_or(|t| now.duration_since(t) > self.config.stale_after)
    }

    fn check(&self, token: &VerifiedToken, now: Instant) -> Result<(), VerifyError> {
        if self.is_stale(now) && self.config.policy == StalePolicy::FailClosed {
            return Err(VerifyError::FeedStale);
        }
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check(token)
    }
}

/// Follows a server's revocation feed in a background task (stopped when dropped).
#[derive(Debug)]
pub struct RevocationFollower {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RevocationFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RevocationFollower {
    /// Starts following the feed of the resource `credentials` names, signing with its key
    /// (the verify-only key is the one meant for this). Must be called inside a tokio runtime.
    pub fn spawn(
        http: reqwest::Client,
        credentials: ConnectionString,
        config: FollowerConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            table: RwLock::default(),
            cursor: Mutex::new(None),
            contact: Mutex::new(None),
            snapshots: AtomicU64::new(0),
            config,
        });
        let feed = Feed { http, credentials };
        let task = tokio::spawn(run(feed, Arc::clone(&shared)));
        Self { shared, task }
    }

    /// `Err(Deleted | Revoked)` for a token of a deleted or revoked identity; `Err(FeedStale)`
    /// when the feed has been out of reach for longer than the bound (or the snapshot is not
    /// loaded yet) and the policy is to fail closed.
    pub fn check(&self, token: &VerifiedToken) -> Result<(), VerifyError> {
        self.shared.check(token, Instant::now())
    }

    /// Whether the feed is stale now.
    pub fn is_stale(&self) -> bool {
        self.shared.is_stale(Instant::now())
    }

    /// The feed position followed from.
    pub fn cursor(&self) -> Option<String> {
        self.shared
            .cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many times the snapshot has been loaded: once at start, and again each time the
    /// cursor had expired (the follower was away longer than the feed keeps events). A restart
    /// of the server alone does not load it again: the follower resumes from its cursor.
    pub fn snapshots_loaded(&self) -> u64 {
        self.shared.snapshots.load(Ordering::Relaxed)
    }

    /// Waits until the snapshot is loaded and the feed answered within the bound, or `timeout`.
    pub async fn wait_until_current(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_stale() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("the cursor is older than the feed keeps")]
    CursorExpired,
    #[error("status {0}")]
    Status(u16),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("unexpected body: {0}")]
    Body(String),
}

struct Feed {
    http: reqwest::Client,
    credentials: ConnectionString,
}

impl Feed {
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, FeedError> {
        let mut url = self
            .credentials
            .endpoint()
            .join(path)
            .map_err(|e| FeedError::Body(e.to_string()))?;
        if url.query().is_none() || !url.query().is_some_and(|q| q.contains("api-version=")) {
            url.query_pairs_mut()
                .append_pair("api-version", API_VERSION);
        }
        for (k, v) in query {
            url.query_pairs_mut().append_pair(k, v);
        }
        Ok(url)
    }

    /// A signed GET; `410` is [`FeedError::CursorExpired`].
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
        timeout: Duration,
    ) -> Result<T, FeedError> {
        let signed =
            callsign_client::signing::sign(&self.credentials, "GET", &url, b"", SystemTime::now());
        let resp = self
            .http
            .get(url)
            .header("x-ms-date", signed.date)
            .header("x-ms-content-sha256", signed.content_hash)
            .header("authorization", signed.authorization)
            .header("accept", "application/json")
            .timeout(timeout)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = crate::body::read_bounded(resp, MAX_BODY)
            .await?
            .ok_or_else(|| FeedError::Body("answer too large".into()))?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| FeedError::Body(e.to_string())),
            410 => {
                let code = serde_json::from_slice::<ErrorResponse>(&body).map(|e| e.error.code);
                if code.as_deref().is_ok_and(|c| c != "CursorExpired") {
                    return Err(FeedError::Status(410));
                }
                Err(FeedError::CursorExpired)
            }
            s => Err(FeedError::Status(s)),
        }
    }

    /// Every page of the snapshot: the table it describes and the cursor before it.
    async fn snapshot(&self) -> Result<(RevocationTable, String), FeedError> {
        let mut table = RevocationTable::default();
        let mut url = self.url("revocations/snapshot", &[])?;
        let mut cursor = None;
        loop {
            let page: SnapshotPage = self.get(url, Duration::from_secs(30)).await?;
            page.value.iter().for_each(|e| table.apply(e));
            // The first page's cursor is the position before the whole snapshot.
            let cursor = cursor.get_or_insert(page.cursor);
            match page.next_link {
                Some(next) => {
                    let endpoint = self.credentials.endpoint();
                    url = endpoint
                        .join(next.trim_start_matches('/'))
                        .map_err(|e| FeedError::Body(e.to_string()))?;
                    // Signed requests go to the endpoint only, whatever a nextLink names.
                    if url.origin() != endpoint.origin() {
                        return Err(FeedError::Body("a nextLink to another origin".into()));
                    }
                }
                None => return Ok((table, std::mem::take(cursor))),
            }
        }
    }

    async fn poll(&self, after: &str, wait: u64) -> Result<FeedPage, FeedError> {
        let wait_text = wait.to_string();
        let url = self.url("revocations", &[("after", after), ("wait", &wait_text)])?;
        self.get(url, Duration::from_secs(wait + 15)).await
    }
}

/// The most a feed or snapshot answer may hold: a page is at most 1,000 events of ~100 bytes.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// How long the follower waits after the node refused its long-poll (all its waiting places
/// taken) and a `wait=0` poll answered instead: the node's `Retry-After`.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// One step of the loop: load the snapshot when there is no cursor, else one long poll. A long
/// poll refused with 503 (the node's waiting places are taken) falls back to a poll that does
/// not wait, which the node never refuses so: the follower keeps in contact, one second behind
/// at most.
async fn step(feed: &Feed, shared: &Shared) -> Result<Step, FeedError> {
    let cursor = shared
        .cursor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let pause = match cursor {
        None => {
            let (table, cursor) = feed.snapshot().await?;
            *shared.table.write().unwrap_or_else(|e| e.into_inner()) = table;
            *shared.cursor.lock().unwrap_or_else(|e| e.into_inner()) = Some(cursor);
            shared.snapshots.fetch_add(1, Ordering::Relaxed);
            Step::Snapshot
        }
        Some(after) => match feed.poll(&after, shared.config.wait_secs()).await {
            Ok(page) => {
                apply_page(shared, &page);
                Step::Polled(Duration::ZERO)
            }
            Err(FeedError::Status(503)) => {
                let page = feed.poll(&after, 0).await?;
                apply_page(shared, &page);
                Step::Polled(REFUSED_PAUSE)
            }
            Err(e) => return Err(e),
        },
    };
    shared.touch();
    Ok(pause)
}

/// What a step did.
enum Step {
    /// Loaded the snapshot.
    Snapshot,
    /// Polled the feed; pause this long before the next poll.
    Polled(Duration),
}

fn apply_page(shared: &Shared, page: &FeedPage) {
    if !page.events.is_empty() {
        let mut table = shared.table.write().unwrap_or_else(|e| e.into_inner());
        page.events.iter().for_each(|e| table.apply(e));
    }
    *shared.cursor.lock().unwrap_or_else(|e| e.into_inner()) = Some(page.cursor.clone());
}

async fn run(feed: Feed, shared: Arc<Shared>) {
    let (first, last) = shared.config.backoff;
    let mut delay = first;
    loop {
        match step(&feed, &shared).await {
            // The backoff is kept across a snapshot: only a poll that answers shows the cursor
            // is good again (a server answering every poll with 410 is reloaded ever slower).
            Ok(Step::Snapshot) => {}
            Ok(Step::Polled(pause)) => {
                delay = first;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            Err(FeedError::CursorExpired) => {
                tracing::warn!("the revocation cursor expired; loading the snapshot again");
                *shared.cursor.lock().unwrap_or_else(|e| e.into_inner()) = None;
                // Backed off too: a server that keeps answering 410 is not reloaded in a loop.
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(last);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "the revocation feed failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_core::token::VerifiedToken;
    use callsign_core::{ResourceId, Scopes};

    fn token(id: &IdentityId, epoch: u64) -> VerifiedToken {
        VerifiedToken {
            identity: *id,
            scopes: Scopes::from_claim("chat").expect("scopes"),
            issued_at: time::OffsetDateTime::UNIX_EPOCH,
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
            epoch,
            jti: Default::default(),
            kid: "k".into(),
        }
    }

    fn event(id: &IdentityId, kind: RevocationKind, epoch: u64) -> RevocationEvent {
        RevocationEvent {
            id: id.to_string(),
            kind,
            epoch,
        }
    }

    fn shared(policy: StalePolicy) -> Shared {
        Shared {
            table: RwLock::default(),
            cursor: Mutex::new(None),
            contact: Mutex::new(None),
            snapshots: AtomicU64::new(0),
            config: FollowerConfig {
                policy,
                ..FollowerConfig::default()
            },
        }
    }

    #[test]
    fn events_apply_the_servers_rule_and_replays_are_harmless() {
        let id = IdentityId::new_random(ResourceId::new_random());
        let other = IdentityId::new_random(id.resource());
        let mut table = RevocationTable::default();
        assert_eq!(table.check(&token(&id, 0)), Ok(()));
        table.apply(&event(&id, RevocationKind::Revoked, 2));
        assert_eq!(table.check(&token(&id, 1)), Err(VerifyError::Revoked));
        assert_eq!(table.check(&token(&id, 2)), Ok(()));
        // A replayed, older event does not lower the epoch.
        table.apply(&event(&id, RevocationKind::Revoked, 1));
        assert_eq!(table.check(&token(&id, 1)), Err(VerifyError::Revoked));
        assert_eq!(table.check(&token(&other, 0)), Ok(()));
        table.apply(&event(&id, RevocationKind::Deleted, 3));
        assert_eq!(table.check(&token(&id, 5)), Err(VerifyError::Deleted));
        table.apply(&event(&id, RevocationKind::Revoked, 9));
        assert_eq!(table.check(&token(&id, 9)), Err(VerifyError::Deleted));
        table.apply(&RevocationEvent {
            id: "not an id".into(),
            kind: RevocationKind::Revoked,
            epoch: 1,
        });
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn wire_bodies_read_as_the_contract_says() {
        let page: FeedPage = serde_json::from_str(
            r#"{"events":[{"id":"8:acs:x","kind":"revoked","epoch":3},{"id":"8:acs:y","kind":"deleted","epoch":1}],"cursor":"c9"}"#,
        )
        .expect("feed page");
        assert_eq!(page.cursor, "c9");
        assert_eq!(page.events[1].kind, RevocationKind::Deleted);
        let snap: SnapshotPage = serde_json::from_str(
            r#"{"value":[],"cursor":"c1","nextLink":"revocations/snapshot?api-version=2023-10-01&after=8:acs:x"}"#,
        )
        .expect("snapshot page");
        assert!(snap.next_link.is_some());
        let last: SnapshotPage =
            serde_json::from_str(r#"{"value":[],"cursor":"c1"}"#).expect("last page");
        assert!(last.next_link.is_none());
    }

    #[test]
    fn a_page_moves_the_cursor_and_an_empty_page_still_counts_as_contact() {
        let s = shared(StalePolicy::FailClosed);
        let id = IdentityId::new_random(ResourceId::new_random());
        apply_page(
            &s,
            &FeedPage {
                events: vec![event(&id, RevocationKind::Revoked, 1)],
                cursor: "c2".into(),
            },
        );
        assert_eq!(s.cursor.lock().expect("lock").as_deref(), Some("c2"));
        apply_page(
            &s,
            &FeedPage {
                events: vec![],
                cursor: "c3".into(),
            },
        );
        assert_eq!(s.cursor.lock().expect("lock").as_deref(), Some("c3"));
        s.touch();
        assert_eq!(
            s.check(&token(&id, 0), Instant::now()),
            Err(VerifyError::Revoked)
        );
    }

    #[test]
    fn staleness_fails_closed_or_open_as_configured() {
        let id = IdentityId::new_random(ResourceId::new_random());
        let closed = shared(StalePolicy::FailClosed);
        let now = Instant::now();
        // Before the snapshot is loaded nothing is known.
        assert_eq!(
            closed.check(&token(&id, 0), now),
            Err(VerifyError::FeedStale)
        );
        closed.touch();
        assert_eq!(closed.check(&token(&id, 0), Instant::now()), Ok(()));
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(
            closed.check(&token(&id, 0), later),
            Err(VerifyError::FeedStale)
        );

        let open = shared(StalePolicy::FailOpen);
        open.table
            .write()
            .expect("lock")
            .apply(&event(&id, RevocationKind::Revoked, 1));
        assert_eq!(open.check(&token(&id, 1), later), Ok(()));
        // What is already known still applies when open.
        assert_eq!(open.check(&token(&id, 0), later), Err(VerifyError::Revoked));
    }

    #[test]
    fn the_long_poll_wait_stays_within_the_bound() {
        let c = FollowerConfig::default();
        assert_eq!(c.wait_secs(), 25);
        let short = FollowerConfig {
            stale_after: Duration::from_secs(20),
            ..c.clone()
        };
        assert_eq!(short.wait_secs(), 10);
        let long = FollowerConfig {
            wait: Duration::from_secs(120),
            stale_after: Duration::from_secs(600),
            ..c
        };
        assert_eq!(long.wait_secs(), 30);
    }
}
