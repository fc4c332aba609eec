//! The revocation feed on PostgreSQL: events written in each change's transaction, with a
//! `pg_notify` there too; one listening connection per node turns notifications (from any node)
//! into [`FeedSignal`] moves, and while it is down the node polls the feed heads instead.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use callsign_core::{IdentityId, ResourceId};
use deadpool_postgres::{GenericClient, Pool};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::AsyncMessage;

use crate::feed::{FeedSignal, position, revocation_from};
use crate::postgres::{PostgresStore, pg, pool_error};
use crate::{
    FeedEvent, FeedRead, Revocation, RevocationFeed, RevocationKind, StoreError, unix_ms as ms,
};

/// The notification channel every node listens on; the payload is the resource id.
const CHANNEL: &str = "callsign_revocations";
/// How often the heads are polled while the listening connection is down.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How often the listening connection is checked (a dead TCP connection tells nothing).
const LISTEN_CHECK: Duration = Duration::from_secs(15);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Tells every node of `resource`'s feed moving: delivered at the commit, only if it commits.
async fn notify(tx: &impl GenericClient, resource: &str) -> Result<(), StoreError> {
    let notify = tx
        .prepare_cached("SELECT pg_notify($1, $2)")
        .await
        .map_err(pg)?;
    tx.execute(&notify, &[&CHANNEL, &resource])
        .await
        .map_err(pg)?;
    Ok(())
}

/// How many of this node's single-identity revokes and deletes of one resource run at once (see
/// [`FeedGate`]).
const FEED_WRITERS: usize = 4;

/// Admits this node's single-identity revokes and deletes of one resource a few at a time. Each
/// takes the resource's next feed position, one row locked from the change's feed event to its
/// commit; PostgreSQL wakes every transaction waiting for a row lock at each commit, and with
/// many waiters those wake-ups cost more than the changes themselves (16 concurrent revokes of
/// one resource ran at 60 % of the rate of 4, at twice the database CPU each). The others wait
/// here, before they take a connection or lock a row, where waiting costs nothing.
///
/// Waiting at the gate is bounded as waiting for a pooled connection is: past the pool's wait
/// timeout the change is refused as unavailable (503 and `Retry-After`), changing nothing.
#[derive(Debug)]
pub(crate) struct FeedGate {
    gates: std::sync::Mutex<HashMap<ResourceId, Arc<Semaphore>>>,
    wait: Duration,
    waiting: AtomicUsize,
}

impl FeedGate {
    pub(crate) fn new(wait: Duration) -> Self {
        Self {
            gates: std::sync::Mutex::default(),
            wait,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Runs `change` once it has a place among `resource`'s writers (an unavailable error,
    /// nothing run, when none comes within the wait timeout), in a task of its own that holds
    /// the place until the change ends: a caller going away (a client hanging up) cannot hand
    /// its place on while its statement still runs in the database.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        resource: ResourceId,
        change: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let place = self.enter(resource).await?;
        tokio::spawn(async move {
            let _place = place;
            change.await
        })
        .await
        .map_err(|e| StoreError::backend("a store task failed").caused_by(e))?
    }

    /// A place among `resource`'s writers, to hold for the whole change; an unavailable error
    /// when none comes within the wait timeout.
    async fn enter(&self, resource: ResourceId) -> Result<OwnedSemaphorePermit, StoreError> {
        let gate = {
            let mut map = self.gates.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                map.entry(resource)
                    .or_insert_with(|| Arc::new(Semaphore::new(FEED_WRITERS))),
            )
        };
        if let Ok(permit) = Arc::clone(&gate).try_acquire_owned() {
            return Ok(permit);
        }
        let _waiting = Waiting::new(&self.waiting);
        match tokio::time::timeout(self.wait, gate.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(StoreError::unavailable(
                "too many changes of this resource's identities at once",
            )),
        }
    }

    /// Changes waiting for their place now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// Counts one waiter for as long as it lives (a waiter whose caller gives up is counted out).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes the feed event of one identity's change, in the change's transaction, with one
/// statement: it takes the next position of the resource's feed (the counter row stays locked
/// until the commit, so positions follow commit order), writes the event and notifies every node
/// at the commit. Call it last before the commit: the lock is held from here to there, and
/// concurrent changes of the resource wait for it.
pub(crate) async fn write_event(
    tx: &impl GenericClient,
    id: &IdentityId,
    kind: RevocationKind,
    epoch: i64,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "WITH head AS (
               INSERT INTO callsign_revocation_heads AS h (resource_id, seq) VALUES ($1, 1)
               ON CONFLICT (resource_id) DO UPDATE SET seq = h.seq + 1
               RETURNING seq),
             event AS (
               INSERT INTO callsign_revocation_events
                 (resource_id, seq, identity_id, kind, epoch, at_ms)
               SELECT $1, head.seq, $2::TEXT, $3::TEXT, $4::BIGINT, $5::BIGINT FROM head
               RETURNING 1)
             SELECT pg_notify($6::TEXT, $1) FROM event",
        )
        .await
        .map_err(pg)?;
    let notified = tx
        .execute(
            &stmt,
            &[
                &id.resource().to_string(),
                &id.to_string(),
                &kind.as_str(),
                &epoch,
                &ms(OffsetDateTime::now_utc()),
                &CHANNEL,
            ],
        )
        .await
        .map_err(pg)?;
    if notified != 1 {
        return Err(StoreError::backend(format!(
            "writing the feed event of {id} returned {notified} rows"
        )));
    }
    Ok(())
}

/// Runs `change`, a statement over `resource`'s identities (`$1::TEXT` the resource, `$3` the
/// time in ms if it needs one) that returns `id, resource_id, revocation_epoch` of each row it
/// changed, and writes one feed event of `kind` per row, all in one statement: the events are
/// numbered over exactly the rows changed (a separate count would race identities created
/// between two statements). `also` adds CTEs over `changed` (a tombstone insert, say). The
/// statement should lock its rows in id order (`WHERE id IN (SELECT … ORDER BY id FOR UPDATE)`),
/// as the token-time flush does, so the two never deadlock. Returns how many rows changed.
pub(crate) async fn change_with_events(
    tx: &impl GenericClient,
    resource: &str,
    kind: RevocationKind,
    change: &str,
    also: &str,
) -> Result<u64, StoreError> {
    let sql = format!(
        "WITH changed AS ({change}),
         {also}
         n AS (SELECT count(*) AS c FROM changed),
         head AS (
           INSERT INTO callsign_revocation_heads AS h (resource_id, seq)
           SELECT $1::TEXT, c FROM n
           ON CONFLICT (resource_id) DO UPDATE SET seq = h.seq + EXCLUDED.seq
           RETURNING seq - (SELECT c FROM n) AS base),
         events AS (
           INSERT INTO callsign_revocation_events
             (resource_id, seq, identity_id, kind, epoch, at_ms)
           SELECT $1::TEXT, head.base + row_number() OVER (ORDER BY changed.id), changed.id,
                  $2::TEXT, changed.revocation_epoch, $3::BIGINT
           FROM changed CROSS JOIN head
           RETURNING 1)
         SELECT c FROM n"
    );
    let row = tx
        .query_one(
            &sql,
            &[&resource, &kind.as_str(), &ms(OffsetDateTime::now_utc())],
        )
        .await
        .map_err(pg)?;
    let n: i64 = row.try_get(0).map_err(pg)?;
    if n > 0 {
        notify(tx, resource).await?;
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A resource's feed counter row: (latest position, highest position pruned).
async fn feed_head(client: &impl GenericClient, resource: &str) -> Result<(i64, i64), StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT seq, pruned_through FROM callsign_revocation_heads WHERE resource_id = $1",
        )
        .await
        .map_err(pg)?;
    match client.query_opt(&stmt, &[&resource]).await.map_err(pg)? {
        Some(row) => Ok((row.try_get(0).map_err(pg)?, row.try_get(1).map_err(pg)?)),
        None => Ok((0, 0)),
    }
}

/// One snapshot page: revoked identities and recent tombstones of `$1` after `$2` (deleted at
/// or after `$3`), at most `$4`, in id order.
const SNAPSHOT_PAGE: &str = "
SELECT id, kind, epoch FROM (
    (SELECT id, 'revoked' AS kind, revocation_epoch AS epoch FROM callsign_identities
     WHERE resource_id = $1 AND id > $2 AND revocation_epoch > 0 ORDER BY id LIMIT $4)
    UNION ALL
    (SELECT id, 'deleted' AS kind, revocation_epoch AS epoch FROM callsign_identity_tombstones
     WHERE resource_id = $1 AND id > $2 AND deleted_at_ms >= $3 ORDER BY id LIMIT $4)
) AS page ORDER BY id LIMIT $4";

/// Deletes at most `$2` of the oldest events written before `$1` and raises each resource's
/// highest pruned position; answers how many were deleted. Nodes pruning together skip each
/// other's rows.
const PRUNE: &str = "
WITH gone AS (
    DELETE FROM callsign_revocation_events WHERE (resource_id, seq) IN (
        SELECT resource_id, seq FROM callsign_revocation_events WHERE at_ms < $1
        ORDER BY at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING resource_id, seq
), highest AS (
    UPDATE callsign_revocation_heads AS h SET pruned_through = GREATEST(h.pruned_through, g.seq)
    FROM (SELECT resource_id, max(seq) AS seq FROM gone GROUP BY resource_id) AS g
    WHERE h.resource_id = g.resource_id
)
SELECT count(*) FROM gone";

#[async_trait]
impl RevocationFeed for PostgresStore {
    async fn feed_position(&self, resource: ResourceId) -> Result<u64, StoreError> {
        let client = self.pool().get().await.map_err(pool_error)?;
        position(feed_head(&client, &resource.to_string()).await?.0)
    }

    async fn feed_after(
        &self,
        resource: ResourceId,
        after: u64,
        limit: usize,
    ) -> Result<FeedRead, StoreError> {
        let client = self.pool().get().await.map_err(pool_error)?;
        let resource = resource.to_string();
        let after_i = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Events first, the head after: a prune committed in between shows in the head.
        let stmt = client
            .prepare_cached(
                "SELECT seq, identity_id, kind, epoch FROM callsign_revocation_events
                 WHERE resource_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .await
            .map_err(pg)?;
        let rows = client
            .query(&stmt, &[&resource, &after_i, &limit])
            .await
            .map_err(pg)?;
        let (head, pruned) = feed_head(&client, &resource).await?;
        drop(client);
        if after_i > head || after_i < pruned {
            return Ok(FeedRead::Expired);
        }
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(0).map_err(pg)?;
                let (id, kind, epoch): (String, String, i64) = (
                    r.try_get(1).map_err(pg)?,
                    r.try_get(2).map_err(pg)?,
                    r.try_get(3).map_err(pg)?,
                );
                Ok(FeedEvent {
                    seq: position(seq)?,
                    revocation: revocation_from(&id, &kind, epoch)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(FeedRead::Events)
    }

    async fn revocation_snapshot(
        &self,
        resource: ResourceId,
        after: Option<&IdentityId>,
        deleted_since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Revocation>, StoreError> {
        let client = self.pool().get().await.map_err(pool_error)?;
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let stmt = client.prepare_cached(SNAPSHOT_PAGE).await.map_err(pg)?;
        let rows = client
            .query(
                &stmt,
                &[&resource.to_string(), &after, &ms(deleted_since), &limit],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                let (id, kind, epoch): (String, String, i64) = (
                    r.try_get(0).map_err(pg)?,
                    r.try_get(1).map_err(pg)?,
                    r.try_get(2).map_err(pg)?,
                );
                revocation_from(&id, &kind, epoch)
            })
            .collect()
    }

    async fn prune_feed(&self, before: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let client = self.pool().get().await.map_err(pool_error)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let row = client
            .query_one(PRUNE, &[&ms(before), &limit])
            .await
            .map_err(pg)?;
        let n: i64 = row.try_get(0).map_err(pg)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn feed_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signal().subscribe()
    }

    fn feed_version(&self, resource: ResourceId) -> crate::FeedVersion {
        self.signal().version(resource)
    }
}

/// What the listening task needs to open its own connection.
pub(crate) struct ListenTarget {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// Keeps one connection listening for feed notifications, reconnecting with backoff; while it
/// is down, polls the feed heads every [`POLL_EVERY`] so that no event waits for it.
pub(crate) fn spawn_listener(
    target: ListenTarget,
    pool: Pool,
    signal: Arc<FeedSignal>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut warned = false;
        loop {
            let started = tokio::time::Instant::now();
            match listen(&target, &signal).await {
                Ok(()) => {}
                Err(e) if !warned => {
                    tracing::warn!(
                        error = %e.chain(),
                        "the revocation feed's listening connection is down; polling the \
                         store every 250 ms until it is back"
                    );
                    warned = true;
                }
                Err(e) => tracing::debug!(error = %e.chain(), "feed listener reconnect failed"),
            }
            if started.elapsed() > BACKOFF_MAX * 2 {
                // It had been up a while: a fresh outage starts with a short wait.
                backoff = BACKOFF_MIN;
                warned = false;
            }
            poll_heads(&pool, &signal, backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

/// Listens until the connection fails.
async fn listen(target: &ListenTarget, signal: &FeedSignal) -> Result<(), StoreError> {
    let (client, mut connection) = target
        .config
        .connect(target.tls.clone())
        .await
        .map_err(pg)?;
    // The resource a notification names (`None`: it names none that parses, so every
    // resource's waiters look).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<ResourceId>>();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(ResourceId::parse(n.payload()).ok()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(pg)?;
        tracing::debug!("listening for revocation feed notifications");
        // Whatever was committed while not listening.
        signal.bump();
        let mut check = tokio::time::interval(LISTEN_CHECK);
        check.tick().await;
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(Some(resource)) => signal.bump_resource(resource),
                    Some(None) => signal.bump(),
                    None => return Err(StoreError::unavailable("the listening connection closed")),
                },
                _ = check.tick() => {
                    tokio::time::timeout(LISTEN_CHECK, client.simple_query("SELECT 1"))
                        .await
                        .map_err(|_| StoreError::unavailable("the listening connection stalled"))?
                        .map_err(pg)?;
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Polls the sum of the feed heads every [`POLL_EVERY`] for `span`, moving `signal` when it
/// changes.
async fn poll_heads(pool: &Pool, signal: &FeedSignal, span: Duration) {
    let until = tokio::time::Instant::now() + span;
    let mut last = None;
    while tokio::time::Instant::now() < until {
        if let Ok(client) = pool.get().await
            && let Ok(row) = client
                .query_one(
                    "SELECT coalesce(sum(seq), 0)::BIGINT FROM callsign_revocation_heads",
                    &[],
                )
                .await
        {
            let sum: Option<i64> = row.try_get(0).ok();
            if last.is_some() && sum != last {
                signal.bump();
            }
            last = sum;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    signal.bump();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_feed_gate_admits_a_few_per_resource() {
        let gate = FeedGate::new(Duration::from_secs(30));
        let (a, b) = (ResourceId::new_random(), ResourceId::new_random());
        let mut held = Vec::new();
        for _ in 0..FEED_WRITERS {
            held.push(gate.enter(a).await.expect("a place"));
        }
        // One more for `a` waits (and is counted); another resource does not.
        let waiting = gate.enter(a);
        tokio::pin!(waiting);
        assert!(poll_once(&mut waiting).is_none());
        assert_eq!(gate.waiting(), 1);
        let _other = gate.enter(b).await.expect("another resource's place");
        held.pop();
        let admitted = poll_once(&mut waiting).expect("admitted once a place is free");
        assert!(admitted.is_ok());
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test]
    async fn the_feed_gate_refuses_after_the_wait_timeout() {
        let gate = FeedGate::new(Duration::from_millis(100));
        let a = ResourceId::new_random();
        let mut held = Vec::new();
        for _ in 0..FEED_WRITERS {
            held.push(gate.enter(a).await.expect("a place"));
        }
        let started = tokio::time::Instant::now();
        let refused = gate
            .enter(a)
            .await
            .expect_err("no place within the timeout");
        assert!(refused.is_unavailable(), "{refused}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(gate.waiting(), 0);
        // A caller that gives up is counted out too.
        drop(tokio::time::timeout(Duration::from_millis(10), gate.enter(a)).await);
        assert_eq!(gate.waiting(), 0);
    }

    /// Polls a future once.
    fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
