//! The revocation feed (callsign extension): `GET /revocations` (JSON, long-poll, or a
//! server-sent-event stream) and `GET /revocations/snapshot`, for verifiers that keep their own
//! copy of revocations. Callable with any key of the resource, the verify-only key included.
//!
//! Waiting requests hold no store connection (they wait on the store's change signal and read
//! again when it moves), are capped per node and per client address, each ends by its deadline,
//! and all end at once when the node shuts down.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callsign_core::{IdentityId, ResourceId};
use callsign_store::{FeedEvent, FeedRead, FeedVersion, Revocation, Store};
use serde::Serialize;
use tokio::time::Instant;

use crate::connection::{Activity, ClientAddr};
use crate::error::ApiError;
use crate::http::json;
use crate::state::{AppState, Directory};
use crate::version::ApiVersion;

/// Most events in one answer, and most entries in one snapshot page.
pub(crate) const PAGE: usize = 1000;
/// The longest `wait` a long-poll may ask for, in seconds.
pub(crate) const MAX_WAIT_SECS: u64 = 30;
/// The longest gap between two messages of a stream (a `: keep-alive` comment fills it).
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How much older than the retention a deletion the snapshot still lists may be.
const SNAPSHOT_MARGIN: Duration = Duration::from_secs(600);
/// How long a stream lasts at most; the follower reconnects with its last event id.
const STREAM_FOR: Duration = Duration::from_secs(600);

/// How long events are kept, how often nodes prune them, and how many requests may wait.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Events are kept at least this long (a day: the longest token lifetime).
    pub retention: Duration,
    /// How often each node prunes events past the retention.
    pub prune_every: Duration,
    /// Most long-polls and streams waiting on one node at once (503 beyond).
    pub max_waiting: usize,
    /// Most of them from one client address (503 beyond).
    pub max_waiting_per_address: usize,
    /// Most of them for one resource (503 beyond): one tenant cannot take the whole node's
    /// places from the others' verifiers.
    pub max_waiting_per_resource: usize,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            prune_every: Duration::from_secs(60),
            max_waiting: 1000,
            max_waiting_per_address: 64,
            max_waiting_per_resource: 250,
        }
    }
}

/// The node's waiting feed requests: counted, capped, and told when the node shuts down.
#[derive(Debug)]
pub(crate) struct Waiters {
    settings: FeedSettings,
    counts: Mutex<Counts>,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Waiting requests in all, per client address and per resource.
#[derive(Debug, Default)]
struct Counts {
    all: usize,
    by_address: HashMap<Option<IpAddr>, usize>,
    by_resource: HashMap<ResourceId, usize>,
}

/// Takes one from `key`'s count, forgetting the key at zero.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// One waiting request's place; dropping it frees the place.
pub(crate) struct WaitSlot {
    waiters: Arc<Waiters>,
    address: Option<IpAddr>,
    resource: ResourceId,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut counts = self.waiters.counts();
        counts.all = counts.all.saturating_sub(1);
        release(&mut counts.by_address, &self.address);
        release(&mut counts.by_resource, &self.resource);
    }
}

impl Waiters {
    pub(crate) fn new(settings: FeedSettings) -> Self {
        Self {
            settings,
            counts: Mutex::default(),
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    pub(crate) fn settings(&self) -> &FeedSettings {
        &self.settings
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more waiting request from `address` (IPv6: its /64) for `resource`, or
    /// 503.
    fn admit(
        self: &Arc<Self>,
        address: Option<IpAddr>,
        resource: ResourceId,
    ) -> Result<WaitSlot, ApiError> {
        let address = address.map(crate::throttle::address_key);
        let mut counts = self.counts();
        let from = counts.by_address.get(&address).copied().unwrap_or(0);
        let of = counts.by_resource.get(&resource).copied().unwrap_or(0);
        if counts.all >= self.settings.max_waiting
            || from >= self.settings.max_waiting_per_address
            || of >= self.settings.max_waiting_per_resource
        {
            return Err(ApiError::TooManyWaiting);
        }
        counts.all += 1;
        *counts.by_address.entry(address).or_insert(0) += 1;
        *counts.by_resource.entry(resource).or_insert(0) += 1;
        Ok(WaitSlot {
            waiters: Arc::clone(self),
            address,
            resource,
        })
    }

    /// Ends every wait now and refuses to wait from now on (the node is shutting down).
    pub(crate) fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }
}

/// Completes when the node shuts down.
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// A cursor as sent: opaque to clients, a feed position here.
fn cursor(seq: u64) -> String {
    format!("1-{seq}")
}

/// Reads a cursor; anything else is 400.
fn parse_cursor(raw: &str) -> Result<u64, ApiError> {
    raw.strip_prefix("1-")
        .filter(|d| !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| ApiError::validation("The cursor is not valid.", "after"))
}

/// One event on the wire.
#[derive(Debug, Serialize)]
struct WireEvent {
    id: String,
    kind: &'static str,
    epoch: u64,
}

impl From<&Revocation> for WireEvent {
    fn from(r: &Revocation) -> Self {
        WireEvent {
            id: r.id.to_string(),
            kind: r.kind.as_str(),
            epoch: r.epoch,
        }
    }
}

#[derive(Debug, Serialize)]
struct FeedPage {
    events: Vec<WireEvent>,
    cursor: String,
}

#[derive(Debug, Serialize)]
struct SnapshotPage {
    value: Vec<WireEvent>,
    cursor: String,
    #[serde(rename = "nextLink", skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
}

/// The feed's query parameters (besides `api-version`).
#[derive(Debug, Default)]
struct FeedQuery {
    after: Option<String>,
    wait: Option<String>,
}

/// Reads `after` and `wait` (each at most once) from the query; other parameters are ignored.
fn parse_query(query: Option<&str>) -> Result<FeedQuery, ApiError> {
    let mut q = FeedQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| ApiError::validation("A query parameter is not valid UTF-8.", "query"))?
            .into_owned();
        let (slot, target) = match name {
            "after" => (&mut q.after, "after"),
            "wait" => (&mut q.wait, "wait"),
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(ApiError::validation(
                format!("The {target} parameter is given more than once."),
                target,
            ));
        }
    }
    Ok(q)
}

/// `wait` in seconds, 0 to [`MAX_WAIT_SECS`].
fn parse_wait(raw: Option<&str>) -> Result<Duration, ApiError> {
    let Some(raw) = raw else {
        return Ok(Duration::ZERO);
    };
    raw.parse::<u64>()
        .ok()
        .filter(|s| *s <= MAX_WAIT_SECS && raw.len() <= 2)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::validation(
                format!("wait must be a whole number of seconds from 0 to {MAX_WAIT_SECS}."),
                "wait",
            )
        })
}

/// The events after `after`, or 410 when they were pruned.
async fn read(
    store: &dyn Store,
    dir: &Directory<'_>,
    after: u64,
) -> Result<Vec<FeedEvent>, ApiError> {
    match store.feed_after(dir.resource(), after, PAGE).await? {
        FeedRead::Events(events) => Ok(events),
        FeedRead::Expired => Err(ApiError::CursorExpired),
    }
}

fn page(events: &[FeedEvent], after: u64) -> Response {
    let last = events.last().map_or(after, |e| e.seq);
    json(
        StatusCode::OK,
        &FeedPage {
            events: events
                .iter()
                .map(|e| WireEvent::from(&e.revocation))
                .collect(),
            cursor: cursor(last),
        },
    )
}

fn wants_stream(parts: &axum::http::request::Parts) -> bool {
    parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// `GET /revocations` (HMAC, any key of the resource): the resource's events after `after`
/// (none and the current cursor without it), long-polled up to `wait` seconds; a server-sent
/// event stream with `Accept: text/event-stream`.
pub(crate) async fn revocations(
    state: &AppState,
    dir: &Directory<'_>,
    parts: &axum::http::request::Parts,
) -> Result<Response, ApiError> {
    let q = parse_query(parts.uri.query())?;
    let wait = parse_wait(q.wait.as_deref())?;
    let store = state.store.as_ref();
    let mut after = q.after.as_deref().map(parse_cursor).transpose()?;
    if wants_stream(parts) && after.is_none() {
        after = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(parse_cursor)
            .transpose()?;
    }
    let position = match after {
        Some(after) => after,
        None => store.feed_position(dir.resource()).await?,
    };
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.0);
    if wants_stream(parts) {
        // Admitted before any read; a cursor whose events were pruned is told now, before the
        // stream starts.
        let slot = state.waiters.admit(client, dir.resource())?;
        let seen = store.feed_version(dir.resource());
        let first = read(store, dir, position).await?;
        return Ok(stream(
            state,
            dir,
            (position, seen),
            first,
            slot,
            parts.extensions.get::<Activity>(),
        ));
    }
    if after.is_none() {
        return Ok(page(&[], position));
    }
    let mut changes = store.feed_changes();
    changes.borrow_and_update();
    let mut seen = store.feed_version(dir.resource());
    let events = read(store, dir, position).await?;
    if !events.is_empty() || wait.is_zero() {
        return Ok(page(&events, position));
    }
    let _slot = state.waiters.admit(client, dir.resource())?;
    // Well inside the request deadline, so the watchdog never cuts an honest wait.
    let wait = wait.min(state.limits.request_timeout * 3 / 4);
    let deadline = Instant::now() + wait;
    let stopping = stopped(state.waiters.stopping());
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                // Another resource's event: nothing to read here.
                let now = store.feed_version(dir.resource());
                if now == seen {
                    continue;
                }
                seen = now;
                let events = read(store, dir, position).await?;
                if !events.is_empty() {
                    return Ok(page(&events, position));
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            () = &mut stopping => break,
        }
    }
    Ok(page(&read(store, dir, position).await?, position))
}

/// What a stream carries between messages.
struct StreamState {
    store: Arc<dyn Store>,
    resource: callsign_core::ResourceId,
    position: u64,
    /// The resource's feed version taken before the last read, if that read found nothing
    /// (after one that found events, the next reads again: a page holds at most 1,000).
    seen: Option<FeedVersion>,
    pending: VecDeque<FeedEvent>,
    changes: tokio::sync::watch::Receiver<u64>,
    stopping: tokio::sync::watch::Receiver<bool>,
    until: Instant,
    heartbeat: Duration,
    last_sent: Instant,
    activity: Option<Activity>,
    _slot: WaitSlot,
}

/// The server-sent-event stream from `position`, `first` the events already read after it
/// (`seen` the feed version taken before that read).
fn stream(
    state: &AppState,
    dir: &Directory<'_>,
    (position, seen): (u64, FeedVersion),
    first: Vec<FeedEvent>,
    slot: WaitSlot,
    activity: Option<&Activity>,
) -> Response {
    let mut changes = state.store.feed_changes();
    changes.borrow_and_update();
    let now = Instant::now();
    let st = StreamState {
        store: Arc::clone(&state.store),
        resource: dir.resource(),
        position,
        seen: first.is_empty().then_some(seen),
        pending: first.into(),
        changes,
        stopping: state.waiters.stopping(),
        until: now + STREAM_FOR,
        heartbeat: HEARTBEAT.min(state.limits.idle_timeout / 2),
        last_sent: now,
        activity: activity.cloned(),
        _slot: slot,
    };
    let body = Body::from_stream(futures_util::stream::unfold(st, next_message));
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The stream's next message: an event, a keep-alive comment, or its end (deadline, shutdown,
/// a store failure or pruned events: the follower reconnects and is told).
async fn next_message(
    mut st: StreamState,
) -> Option<(Result<bytes::Bytes, Infallible>, StreamState)> {
    loop {
        if *st.stopping.borrow() {
            return None;
        }
        if let Some(event) = st.pending.pop_front() {
            st.position = event.seq;
            let data = serde_json::to_string(&WireEvent::from(&event.revocation)).ok()?;
            let message = format!(
                "id: {}\nevent: revocation\ndata: {data}\n\n",
                cursor(event.seq)
            );
            return Some((Ok(st.sent(message)), st));
        }
        if Instant::now() >= st.until {
            return None;
        }
        st.changes.borrow_and_update();
        // Read only when this resource's feed may have moved since the last read.
        let now = st.store.feed_version(st.resource);
        if st.seen != Some(now) {
            st.seen = Some(now);
            match st.store.feed_after(st.resource, st.position, PAGE).await {
                Ok(FeedRead::Events(events)) if !events.is_empty() => {
                    st.seen = None;
                    st.pending.extend(events);
                    continue;
                }
                Ok(FeedRead::Events(_)) => {}
                Ok(FeedRead::Expired) | Err(_) => return None,
            }
        }
        let beat = st.last_sent + st.heartbeat;
        let mut stopping = st.stopping.clone();
        tokio::select! {
            changed = st.changes.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            () = tokio::time::sleep_until(beat) => {
                return Some((Ok(st.sent(": keep-alive\n\n".to_owned())), st));
            }
            () = tokio::time::sleep_until(st.until) => return None,
            _ = stopping.wait_for(|s| *s) => return None,
        }
    }
}

impl StreamState {
    /// Notes a message as sent now.
    fn sent(&mut self, message: String) -> bytes::Bytes {
        self.last_sent = Instant::now();
        if let Some(a) = &self.activity {
            a.touch();
        }
        bytes::Bytes::from(message)
    }
}

/// `GET /revocations/snapshot` (HMAC, any key of the resource): one page of the resource's
/// revocation state in id order (every identity with a non-zero epoch, every identity deleted
/// within the retention), with the feed cursor read before it.
pub(crate) async fn snapshot(
    state: &AppState,
    dir: &Directory<'_>,
    version: ApiVersion,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let q = parse_query(query)?;
    let after = q
        .after
        .as_deref()
        .map(|raw| match IdentityId::parse(raw) {
            Ok(id) if dir.owns(&id) => Ok(id),
            _ => Err(ApiError::validation(
                "after must be an identity id of this resource.",
                "after",
            )),
        })
        .transpose()?;
    let store = state.store.as_ref();
    let position = store.feed_position(dir.resource()).await?;
    // Deletions a little older than the retention too: a verifier accepts a token up to its
    // leeway past `exp`, and a token lives at most the retention.
    let since = state.clock.now() - state.waiters.settings().retention - SNAPSHOT_MARGIN;
    let mut value = store
        .revocation_snapshot(dir.resource(), after.as_ref(), since, PAGE + 1)
        .await?;
    let next_link = if value.len() > PAGE {
        value.truncate(PAGE);
        value.last().map(|last| {
            format!(
                "revocations/snapshot?api-version={version}&after={}",
                last.id
            )
        })
    } else {
        None
    };
    Ok(json(
        StatusCode::OK,
        &SnapshotPage {
            value: value.iter().map(WireEvent::from).collect(),
            cursor: cursor(position),
            next_link,
        },
    ))
}

/// Prunes events past the retention every [`FeedSettings::prune_every`], in bounded batches.
pub(crate) fn spawn_pruner(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let settings = state.waiters.settings().clone();
        let mut tick = tokio::time::interval(settings.prune_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let before = state.clock.now() - settings.retention;
            loop {
                match state.store.prune_feed(before, PAGE).await {
                    Ok(n) if n >= PAGE => tokio::time::sleep(Duration::from_millis(20)).await,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e.chain(), "could not prune the revocation feed");
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        assert_eq!(parse_cursor(&cursor(0)).ok(), Some(0));
        assert_eq!(parse_cursor(&cursor(u64::MAX)).ok(), Some(u64::MAX));
        for bad in [
            "",
            "1-",
            "12",
            "1-x",
            "1--1",
            "2-5",
            "1-99999999999999999999999",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wait_is_bounded() {
        assert_eq!(parse_wait(None).ok(), Some(Duration::ZERO));
        assert_eq!(parse_wait(Some("30")).ok(), Some(Duration::from_secs(30)));
        for bad in ["31", "-1", "1.5", "", "0030", "x"] {
            assert!(parse_wait(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn waiters_are_capped_in_all_and_per_address() {
        let waiters = Arc::new(Waiters::new(FeedSettings {
            max_waiting: 3,
            max_waiting_per_address: 2,
            ..FeedSettings::default()
        }));
        let r = ResourceId::new_random();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        let one = waiters.admit(a, r).expect("first");
        let _two = waiters.admit(a, r).expect("second");
        assert!(waiters.admit(a, r).is_err(), "per address");
        let _three = waiters.admit(b, r).expect("other address");
        assert!(waiters.admit(b, r).is_err(), "in all");
        drop(one);
        assert!(waiters.admit(b, r).is_ok(), "a freed place is taken again");
    }

    #[test]
    fn an_ipv6_client_is_one_address_per_64() {
        let waiters = Arc::new(Waiters::new(FeedSettings {
            max_waiting: 10,
            max_waiting_per_address: 2,
            ..FeedSettings::default()
        }));
        let r = ResourceId::new_random();
        let v6 = |host: u16| Some(IpAddr::from([0x2001, 0xdb8, 0, 7, 0, 0, 0, host]));
        let _one = waiters.admit(v6(1), r).expect("first");
        let _two = waiters
            .admit(v6(2), r)
            .expect("second, another host of the /64");
        assert!(
            waiters.admit(v6(3), r).is_err(),
            "a third from the same /64"
        );
        let other = Some(IpAddr::from([0x2001, 0xdb8, 0, 8, 0, 0, 0, 1]));
        assert!(waiters.admit(other, r).is_ok(), "another /64");
    }

    #[test]
    fn one_resource_cannot_take_every_place_on_the_node() {
        let waiters = Arc::new(Waiters::new(FeedSettings {
            max_waiting: 10,
            max_waiting_per_address: 10,
            max_waiting_per_resource: 3,
            ..FeedSettings::default()
        }));
        let (greedy, other) = (ResourceId::new_random(), ResourceId::new_random());
        let held: Vec<_> = (0..3u8)
            .map(|i| {
                let address = Some(IpAddr::from([10, 0, 0, i]));
                waiters.admit(address, greedy).expect("within its share")
            })
            .collect();
        let fresh = Some(IpAddr::from([10, 0, 1, 1]));
        assert!(waiters.admit(fresh, greedy).is_err(), "past its share");
        assert!(
            waiters.admit(fresh, other).is_ok(),
            "another resource still waits"
        );
        drop(held);
        assert!(waiters.admit(fresh, greedy).is_ok(), "places freed");
    }
}
