//! Identity creation on PostgreSQL, grouped: concurrent creates wait in a bounded queue, and a
//! few batch tasks each take what is waiting (at most [`MAX_BATCH`]) and write it in one
//! transaction: one multi-row insert of the identities, one look-up of the existing identities
//! of repeated custom ids, one multi-row insert of their audit records, one commit. A create is
//! answered only after its batch committed.
//!
//! Each create gets exactly what it would get alone:
//! * creates in one batch that share an id or a custom id are written in queue order, in
//!   successive rounds of the transaction (the second of two creates with one custom id gets the
//!   identity the first created, `created: false`, and an `Existing` audit record);
//! * a create that fails on its own (an id in use or tombstoned) writes nothing, not even its
//!   audit record, and does not stop the others;
//! * a batch the server refuses (a row it rejects, a deadlock, a serialization failure, a
//!   deferred constraint at the commit) is rolled back and each of its creates is run alone, in
//!   a transaction of its own; connection trouble fails every create of the batch with that
//!   [`StoreError::Unavailable`], a commit left unanswered included (its outcome unknown).
//!
//! Audit records are written in queue order, a create's after those of the creates queued before
//! it in the same batch. A create whose caller gave up before its batch started is not written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callsign_core::{CustomId, IdentityId};
use deadpool_postgres::{Object, Pool, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{IDENTITY_COLUMNS, identity, pg, pool_error, transient, write_audit};
use crate::audit::{Actor, AuditEvent, AuditOperation, AuditOutcome, AuditValues};
use crate::{Created, IdentityRecord, NewIdentity, StoreError, unix_ms as ms};

/// Most creates written in one transaction.
const MAX_BATCH: usize = 256;

/// Most creates waiting for a batch; a create that finds the queue full waits for room.
const QUEUE: usize = 4 * MAX_BATCH;

/// Batch tasks per store: while one waits for its commit, another writes the next batch.
const WORKERS: usize = 2;

/// How long closing the store waits for the batches under way and the creates queued.
const DRAIN: Duration = Duration::from_secs(10);

/// Inserts the identities of one round (none of which shares an id or a custom id with
/// another). A tombstoned id is never used again (random ids make this a formality).
const INSERT_ROUND: &str = "
INSERT INTO callsign_identities (id, resource_id, custom_id, created_at_ms)
SELECT t.id, t.resource_id, t.custom_id, t.created_at_ms
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
    AS t(id, resource_id, custom_id, created_at_ms)
WHERE NOT EXISTS (SELECT 1 FROM callsign_identity_tombstones AS d WHERE d.id = t.id)
ON CONFLICT DO NOTHING RETURNING id, custom_id, created_at_ms, revocation_epoch,
    last_token_issued_at_ms";

/// The identities that hold the given (resource, custom id) pairs.
const EXISTING: &str = "
SELECT i.id, i.custom_id, i.created_at_ms, i.revocation_epoch, i.last_token_issued_at_ms,
       i.resource_id, t.custom_id
FROM unnest($1::text[], $2::text[]) AS t(resource_id, custom_id)
JOIN callsign_identities AS i ON i.resource_id = t.resource_id AND i.custom_id = t.custom_id
WHERE i.custom_id IS NOT NULL";

/// Inserts audit records in the order given.
const INSERT_AUDIT: &str = "
INSERT INTO callsign_audit_log (at_ms, resource_id, operation, identity_id, outcome, credential,
                                client, request_id, detail, subject)
SELECT at_ms, resource_id, operation, identity_id, outcome, credential, client, request_id,
       detail, subject
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::text[])
    WITH ORDINALITY AS t(at_ms, resource_id, operation, identity_id, outcome, credential, client,
                         request_id, detail, subject, n)
ORDER BY n";

/// One create waiting for its batch.
struct Job {
    new: NewIdentity,
    actor: Actor,
    reply: oneshot::Sender<Result<Created, StoreError>>,
}

/// The queue of creates and the tasks that write them.
pub(super) struct Creates {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    wait: Duration,
}

impl Creates {
    /// Starts the batch tasks on `pool`; a create waits at most `wait` for room in the queue.
    pub(super) fn start(pool: &Pool, wait: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let workers = (0..WORKERS)
            .map(|_| tokio::spawn(work(pool.clone(), Arc::clone(&rx))))
            .collect();
        Self {
            queue: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
            wait,
        }
    }

    /// Queues `new` and waits for its batch's outcome.
    pub(super) async fn create(
        &self,
        new: NewIdentity,
        actor: &Actor,
    ) -> Result<Created, StoreError> {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            new,
            actor: actor.clone(),
            reply,
        };
        match tokio::time::timeout(self.wait, queue.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(closed()),
            Err(_) => {
                return Err(StoreError::unavailable(
                    "too many identity creates are waiting",
                ));
            }
        }
        drop(queue);
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::unavailable(
                "the identity create was abandoned: the store is closing",
            ))
        })
    }

    /// Takes no more creates, lets the batch tasks write those queued (for at most [`DRAIN`])
    /// and stops them.
    pub(super) async fn close(&self) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for w in workers {
                let _ = w.await;
            }
        };
        if tokio::time::timeout(DRAIN, all).await.is_err() {
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }

    /// Stops the batch tasks at once: queued creates are answered with an error.
    pub(super) fn abort(&self) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        for w in self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            w.abort();
        }
    }
}

fn closed() -> StoreError {
    StoreError::unavailable("the store is closed")
}

/// One batch task: takes what is queued, at most [`MAX_BATCH`] creates, and writes it; ends
/// when the queue is closed and empty.
async fn work(pool: Pool, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.lock().await.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        // A caller that gave up before its batch started gets nothing written.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let batch = std::mem::replace(&mut jobs, Vec::with_capacity(MAX_BATCH));
        match pool.get().await {
            Ok(mut client) => run_batch(&mut client, batch).await,
            Err(e) => {
                let e = pool_error(e);
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Writes `batch` through `client` and answers each of its creates.
async fn run_batch(client: &mut Object, batch: Vec<Job>) {
    match write_batch(client, &batch).await {
        Ok(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(Failure::Everyone(e)) => {
            for job in batch {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Err(Failure::Alone(e)) => {
            tracing::debug!(error = %e.chain(), creates = batch.len(),
                "a batch of creates was refused; each is tried alone");
            for job in batch.into_iter().filter(|j| !j.reply.is_closed()) {
                let result = create_alone(client, &job.new, &job.actor).await;
                let _ = job.reply.send(result);
            }
        }
    }
}

/// Why a batch committed nothing (or may not have).
enum Failure {
    /// Rolled back before its commit: each create is tried alone.
    Alone(StoreError),
    /// Connection trouble (a commit left unanswered included): every create gets this error.
    Everyone(StoreError),
}

/// A failure of a statement before the commit: connection trouble fails everyone (a create
/// alone would fail alike); anything else the server refused (deadlocks and serialization
/// failures included) is tried create by create.
fn before_commit(e: tokio_postgres::Error) -> Failure {
    let retry_alone = e.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        code == "40001" || code == "40P01" || !transient(code)
    });
    if retry_alone {
        Failure::Alone(pg(e))
    } else {
        Failure::Everyone(pg(e))
    }
}

/// What one create of a batch came to before the commit.
enum Outcome {
    Created(IdentityRecord),
    Existing(IdentityRecord),
    Failed(StoreError),
}

/// Writes `batch` in one transaction; each create's result, once committed.
async fn write_batch(
    client: &mut Object,
    batch: &[Job],
) -> Result<Vec<Result<Created, StoreError>>, Failure> {
    let tx = client.transaction().await.map_err(before_commit)?;
    let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
    for round in rounds(batch) {
        for (i, outcome) in write_round(&tx, batch, round).await? {
            outcomes[i] = Some(outcome);
        }
    }
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Failed(StoreError::backend("create not written"))))
        .collect();
    write_audits(&tx, batch, &outcomes).await?;
    // A commit the server answered with an error rolled back; one it did not answer may have
    // committed, and is connection trouble: everyone gets the error.
    tx.commit().await.map_err(before_commit)?;
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Created(identity) => Ok(Created {
                identity,
                created: true,
            }),
            Outcome::Existing(identity) => Ok(Created {
                identity,
                created: false,
            }),
            Outcome::Failed(e) => Err(e),
        })
        .collect())
}

/// The batch in rounds, as indexes: a create goes in the round after the last one holding a
/// create queued before it with its id or its custom id, so that creates that touch each other
/// are written in queue order and no round holds two of them. Within a round, creates with a
/// custom id come first, in (resource, custom id) order, then the others in id order: two
/// transactions that insert some of the same keys wait for each other in one order, never in
/// a cycle.
fn rounds(batch: &[Job]) -> Vec<Vec<usize>> {
    let mut last: HashMap<Key<'_>, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        let keys = keys(&job.new);
        let round = keys
            .iter()
            .flatten()
            .filter_map(|k| last.get(k).map(|r| r + 1))
            .max()
            .unwrap_or(0);
        for k in keys.into_iter().flatten() {
            last.insert(k, round);
        }
        if rounds.len() <= round {
            rounds.push(Vec::new());
        }
        rounds[round].push(i);
    }
    for round in &mut rounds {
        round.sort_by_key(|&i| {
            let new = &batch[i].new;
            (
                new.custom_id.is_none(),
                new.id.resource(),
                new.custom_id.as_ref().map(CustomId::as_str),
                new.id,
            )
        });
    }
    rounds
}

/// A key that two creates may share: an id, or a resource's custom id.
#[derive(PartialEq, Eq, Hash)]
enum Key<'a> {
    Id(IdentityId),
    Custom(callsign_core::ResourceId, &'a str),
}

fn keys(new: &NewIdentity) -> [Option<Key<'_>>; 2] {
    [
        Some(Key::Id(new.id)),
        new.custom_id
            .as_ref()
            .map(|c| Key::Custom(new.id.resource(), c.as_str())),
    ]
}

/// Inserts one round; the outcome of each of its creates, by index in the batch.
async fn write_round(
    tx: &Transaction<'_>,
    batch: &[Job],
    round: Vec<usize>,
) -> Result<Vec<(usize, Outcome)>, Failure> {
    let news: Vec<&NewIdentity> = round.iter().map(|&i| &batch[i].new).collect();
    let ids: Vec<String> = news.iter().map(|n| n.id.to_string()).collect();
    let resources: Vec<String> = news.iter().map(|n| n.id.resource().to_string()).collect();
    let customs: Vec<Option<&str>> = news
        .iter()
        .map(|n| n.custom_id.as_ref().map(CustomId::as_str))
        .collect();
    let created: Vec<i64> = news.iter().map(|n| ms(n.created_at)).collect();
    let stmt = tx
        .prepare_cached(INSERT_ROUND)
        .await
        .map_err(before_commit)?;
    let rows = tx
        .query(&stmt, &[&ids, &resources, &customs, &created])
        .await
        .map_err(before_commit)?;
    let mut inserted = HashMap::with_capacity(rows.len());
    for row in &rows {
        let record = identity(row).map_err(Failure::Alone)?;
        inserted.insert(record.id, record);
    }
    // The insert yielded to an existing row; with a custom id that is the identity asked for.
    let mut outcomes = Vec::with_capacity(round.len());
    let mut yielded = Vec::new();
    for (&i, new) in round.iter().zip(&news) {
        match (inserted.remove(&new.id), &new.custom_id) {
            (Some(record), _) => outcomes.push((i, Outcome::Created(record))),
            (None, Some(custom)) => yielded.push((i, new.id.resource().to_string(), custom)),
            (None, None) => outcomes.push((
                i,
                Outcome::Failed(StoreError::backend(format!(
                    "identity id {} already exists",
                    new.id
                ))),
            )),
        }
    }
    if !yielded.is_empty() {
        outcomes.extend(existing(tx, yielded).await?);
    }
    Ok(outcomes)
}

/// The existing identities of the given (index, resource, custom id) creates.
async fn existing(
    tx: &Transaction<'_>,
    yielded: Vec<(usize, String, &CustomId)>,
) -> Result<Vec<(usize, Outcome)>, Failure> {
    let resources: Vec<&str> = yielded.iter().map(|(_, r, _)| r.as_str()).collect();
    let customs: Vec<&str> = yielded.iter().map(|(_, _, c)| c.as_str()).collect();
    let stmt = tx.prepare_cached(EXISTING).await.map_err(before_commit)?;
    let rows = tx
        .query(&stmt, &[&resources, &customs])
        .await
        .map_err(before_commit)?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let resource: String = row.try_get(5).map_err(|e| Failure::Alone(pg(e)))?;
        let custom: String = row.try_get(6).map_err(|e| Failure::Alone(pg(e)))?;
        let record = identity(row).map_err(Failure::Alone)?;
        found.insert((resource, custom), record);
    }
    Ok(yielded
        .into_iter()
        .map(|(i, resource, custom)| {
            let outcome = match found.get(&(resource, custom.as_str().to_owned())) {
                Some(record) => Outcome::Existing(record.clone()),
                None => Outcome::Failed(StoreError::unavailable(
                    "the identity with this custom id was deleted concurrently",
                )),
            };
            (i, outcome)
        })
        .collect())
}

/// The audit records of the creates that succeeded, in queue order, in one insert.
async fn write_audits(
    tx: &Transaction<'_>,
    batch: &[Job],
    outcomes: &[Outcome],
) -> Result<(), Failure> {
    let values: Vec<AuditValues> = batch
        .iter()
        .zip(outcomes)
        .filter_map(|(job, outcome)| {
            let (record, result) = match outcome {
                Outcome::Created(r) => (r, AuditOutcome::Success),
                Outcome::Existing(r) => (r, AuditOutcome::Existing),
                Outcome::Failed(_) => return None,
            };
            let event = AuditEvent::identity(AuditOperation::CreateIdentity, record.id, result);
            Some(AuditValues::of(&job.actor, &event))
        })
        .collect();
    if values.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&AuditValues) -> Option<&str>| -> Vec<Option<&str>> {
        values.iter().map(f).collect()
    };
    let at: Vec<i64> = values.iter().map(|v| v.at_ms).collect();
    let stmt = tx
        .prepare_cached(INSERT_AUDIT)
        .await
        .map_err(before_commit)?;
    tx.execute(
        &stmt,
        &[
            &at,
            &text(|v| v.resource.as_deref()),
            &text(|v| Some(v.operation)),
            &text(|v| v.identity.as_deref()),
            &text(|v| Some(v.outcome)),
            &text(|v| Some(v.credential)),
            &text(|v| v.client.as_deref()),
            &text(|v| v.request_id.as_deref()),
            &text(|v| v.detail.as_deref()),
            &text(|v| v.subject.as_deref()),
        ],
    )
    .await
    .map_err(before_commit)?;
    Ok(())
}

/// One create in a transaction of its own.
pub(super) async fn create_alone(
    client: &mut Object,
    new: &NewIdentity,
    actor: &Actor,
) -> Result<Created, StoreError> {
    let client = client.transaction().await.map_err(pg)?;
    let id = new.id.to_string();
    let resource = new.id.resource().to_string();
    let custom = new.custom_id.as_ref().map(|c| c.as_str().to_owned());
    let created_at = ms(new.created_at);
    // A tombstoned id is never used again (random ids make this a formality).
    let stmt = client
        .prepare_cached(&format!(
            "INSERT INTO callsign_identities (id, resource_id, custom_id, created_at_ms)
             SELECT $1::text, $2::text, $3::text, $4::bigint
             WHERE NOT EXISTS (SELECT 1 FROM callsign_identity_tombstones WHERE id = $1::text)
             ON CONFLICT DO NOTHING RETURNING {IDENTITY_COLUMNS}"
        ))
        .await
        .map_err(pg)?;
    if let Some(row) = client
        .query_opt(&stmt, &[&id, &resource, &custom, &created_at])
        .await
        .map_err(pg)?
    {
        let identity = identity(&row)?;
        let event = AuditEvent::identity(
            AuditOperation::CreateIdentity,
            identity.id,
            AuditOutcome::Success,
        );
        write_audit(&client, actor, &event).await?;
        client.commit().await.map_err(pg)?;
        return Ok(Created {
            identity,
            created: true,
        });
    }
    // The insert yielded to an existing row; with a custom id that is the identity asked for.
    let Some(custom) = custom else {
        return Err(StoreError::backend(format!(
            "identity id {id} already exists"
        )));
    };
    let row = client
        .query_opt(
            &format!(
                "SELECT {IDENTITY_COLUMNS} FROM callsign_identities WHERE resource_id = $1 AND custom_id = $2"
            ),
            &[&resource, &custom],
        )
        .await
        .map_err(pg)?
        .ok_or_else(|| {
            StoreError::unavailable("the identity with this custom id was deleted concurrently")
        })?;
    let existing = identity(&row)?;
    let event = AuditEvent::identity(
        AuditOperation::CreateIdentity,
        existing.id,
        AuditOutcome::Existing,
    );
    write_audit(&client, actor, &event).await?;
    client.commit().await.map_err(pg)?;
    Ok(Created {
        identity: existing,
        created: false,
    })
}

#[cfg(test)]
mod tests {
    use callsign_core::ResourceId;
    use callsign_testkit::{TestDatabase, connect_postgres};
    use time::OffsetDateTime;

    use super::*;
    use crate::audit::{AuditLog, AuditQuery, AuditRecord};
    use crate::{IdentityStore, PostgresOptions, PostgresStore, Store};

    type Answer = oneshot::Receiver<Result<Created, StoreError>>;

    async fn store() -> (PostgresStore, TestDatabase) {
        let db = TestDatabase::create().await;
        let store = PostgresStore::connect(&db.url(), &PostgresOptions::default())
            .await
            .expect("connect");
        (store, db)
    }

    fn new(id: IdentityId, custom: Option<&str>) -> NewIdentity {
        NewIdentity {
            id,
            custom_id: custom.map(|c| CustomId::parse(c).expect("custom id")),
            created_at: OffsetDateTime::now_utc(),
        }
    }

    fn actor(request: &str) -> Actor {
        Actor {
            request_id: Some(request.to_owned()),
            ..Actor::operator()
        }
    }

    /// Runs `creates` as one batch on a connection of the store's pool; their results in order.
    async fn batch(
        store: &PostgresStore,
        creates: Vec<(NewIdentity, Actor)>,
    ) -> Vec<Result<Created, StoreError>> {
        let mut client = store.pool().get().await.expect("connection");
        let (jobs, answers): (Vec<Job>, Vec<Answer>) = creates
            .into_iter()
            .map(|(new, actor)| {
                let (reply, answer) = oneshot::channel();
                (Job { new, actor, reply }, answer)
            })
            .unzip();
        run_batch(&mut client, jobs).await;
        let mut results = Vec::new();
        for a in answers {
            results.push(a.await.expect("answered"));
        }
        results
    }

    /// The audit records after `after`: (request id, identity, outcome).
    async fn audit_after(
        store: &PostgresStore,
        after: i64,
    ) -> Vec<(Option<String>, Option<IdentityId>, AuditOutcome)> {
        let records: Vec<AuditRecord> = store
            .audit_records(&AuditQuery {
                after: Some(after),
                limit: 1000,
                ..AuditQuery::default()
            })
            .await
            .expect("audit");
        records
            .into_iter()
            .map(|r| (r.request_id, r.identity, r.outcome))
            .collect()
    }

    async fn last_seq(store: &PostgresStore) -> i64 {
        let records = store
            .audit_records(&AuditQuery {
                limit: 100_000,
                ..AuditQuery::default()
            })
            .await
            .expect("audit");
        records.last().map_or(0, |r| r.seq)
    }

    fn created(result: &Result<Created, StoreError>) -> (IdentityId, bool) {
        let c = result.as_ref().expect("a create");
        (c.identity.id, c.created)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_batch_gives_each_create_what_it_would_get_alone() {
        let (store, _db) = store().await;
        let (r, elsewhere) = (ResourceId::new_random(), ResourceId::new_random());
        let old = store
            .create_identity(new(IdentityId::new_random(r), Some("old")), &actor("x"))
            .await
            .expect("create");
        let gone = store
            .create_identity(new(IdentityId::new_random(r), Some("gone")), &actor("x"))
            .await
            .expect("create");
        let gone = gone.identity.id;
        assert!(
            store
                .delete_identity(&gone, &actor("x"))
                .await
                .expect("del")
        );
        let after = last_seq(&store).await;
        let plain = IdentityId::new_random(r);
        // The creates of custom id "a" in descending id order: queue order, not id order, decides.
        let mut a_ids: Vec<IdentityId> = (0..3).map(|_| IdentityId::new_random(r)).collect();
        a_ids.sort_by(|x, y| y.cmp(x));
        let results = batch(
            &store,
            vec![
                (new(a_ids[0], Some("a")), actor("j0")),
                (new(a_ids[1], Some("a")), actor("j1")),
                (new(plain, None), actor("j2")),
                (new(IdentityId::new_random(r), Some("old")), actor("j3")),
                (new(gone, None), actor("j4")),
                (new(gone, Some("gone")), actor("j5")),
                (new(plain, None), actor("j6")),
                (
                    new(IdentityId::new_random(elsewhere), Some("a")),
                    actor("j7"),
                ),
                (new(a_ids[2], Some("a")), actor("j8")),
            ],
        )
        .await;
        let a = a_ids[0];
        assert_eq!(created(&results[0]), (a, true));
        assert_eq!(created(&results[1]), (a, false));
        assert_eq!(created(&results[2]), (plain, true));
        assert_eq!(created(&results[3]), (old.identity.id, false));
        assert_eq!(
            results[3].as_ref().ok().map(|c| &c.identity),
            Some(&old.identity)
        );
        // A tombstoned id is refused; with a custom id that nothing holds, as a concurrent delete.
        assert!(results[4].as_ref().is_err_and(StoreError::is_backend));
        assert!(results[5].as_ref().is_err_and(StoreError::is_unavailable));
        // An id in use, without a custom id to fall back on.
        assert!(results[6].as_ref().is_err_and(StoreError::is_backend));
        let (a7, a7_created) = created(&results[7]);
        assert!(a7_created && a7 != a && a7.resource() == elsewhere);
        assert_eq!(created(&results[8]), (a, false));
        assert_eq!(store.get_identity(&gone).await.expect("get"), None);
        // The records of those that succeeded, in queue order, none of those that failed.
        let req = |s: &str| Some(s.to_owned());
        assert_eq!(
            audit_after(&store, after).await,
            vec![
                (req("j0"), Some(a), AuditOutcome::Success),
                (req("j1"), Some(a), AuditOutcome::Existing),
                (req("j2"), Some(plain), AuditOutcome::Success),
                (req("j3"), Some(old.identity.id), AuditOutcome::Existing),
                (req("j7"), Some(a7), AuditOutcome::Success),
                (req("j8"), Some(a), AuditOutcome::Existing),
            ]
        );
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_batch_is_tried_create_by_create() {
        let (store, _db) = store().await;
        let r = ResourceId::new_random();
        let after = last_seq(&store).await;
        // The server refuses a NUL in text: that create's audit record cannot be written.
        let poisoned = Actor {
            subject: Some("issuer#bad\0subject".to_owned()),
            ..actor("j1")
        };
        let ids: Vec<IdentityId> = (0..3).map(|_| IdentityId::new_random(r)).collect();
        let results = batch(
            &store,
            vec![
                (new(ids[0], None), actor("j0")),
                (new(ids[1], Some("p")), poisoned),
                (new(ids[2], Some("p")), actor("j2")),
            ],
        )
        .await;
        assert_eq!(created(&results[0]), (ids[0], true));
        assert!(results[1].as_ref().is_err_and(StoreError::is_backend));
        // Alone, the third create is the first with its custom id.
        assert_eq!(created(&results[2]), (ids[2], true));
        assert_eq!(store.get_identity(&ids[1]).await.expect("get"), None);
        let req = |s: &str| Some(s.to_owned());
        assert_eq!(
            audit_after(&store, after).await,
            vec![
                (req("j0"), Some(ids[0]), AuditOutcome::Success),
                (req("j2"), Some(ids[2]), AuditOutcome::Success),
            ]
        );
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_the_server_refuses_is_tried_create_by_create() {
        let (store, db) = store().await;
        // A deferred check that fails at the commit of a transaction holding custom id "boom".
        connect_postgres(&db.url())
            .await
            .batch_execute(
                "CREATE FUNCTION no_boom() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.custom_id = 'boom' THEN RAISE EXCEPTION 'boom' USING ERRCODE = '23514'; END IF;
                   RETURN NULL;
                 END $$;
                 CREATE CONSTRAINT TRIGGER no_boom AFTER INSERT ON callsign_identities
                   DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION no_boom();",
            )
            .await
            .expect("trigger");
        let r = ResourceId::new_random();
        let ids: Vec<IdentityId> = (0..3).map(|_| IdentityId::new_random(r)).collect();
        let results = batch(
            &store,
            vec![
                (new(ids[0], Some("fine")), actor("j0")),
                (new(ids[1], Some("boom")), actor("j1")),
                (new(ids[2], None), actor("j2")),
            ],
        )
        .await;
        assert_eq!(created(&results[0]), (ids[0], true));
        assert!(results[1].as_ref().is_err_and(StoreError::is_backend));
        assert_eq!(created(&results[2]), (ids[2], true));
        assert_eq!(store.get_identity(&ids[1]).await.expect("get"), None);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_connection_fails_every_create_and_writes_nothing() {
        let (store, db) = store().await;
        let mut client = store.pool().get().await.expect("connection");
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        connect_postgres(&db.url())
            .await
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .expect("terminate");
        let r = ResourceId::new_random();
        let ids: Vec<IdentityId> = (0..3).map(|_| IdentityId::new_random(r)).collect();
        let (jobs, answers): (Vec<Job>, Vec<Answer>) = ids
            .iter()
            .map(|&id| {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    new: new(id, None),
                    actor: actor("j"),
                    reply,
                };
                (job, answer)
            })
            .unzip();
        run_batch(&mut client, jobs).await;
        for a in answers {
            let result = a.await.expect("answered");
            assert!(result.is_err_and(|e| e.is_unavailable()));
        }
        drop(client);
        for id in &ids {
            assert_eq!(store.get_identity(id).await.expect("get"), None);
        }
        store.close().await;
    }

    #[test]
    fn creates_sharing_a_key_go_to_later_rounds_in_queue_order() {
        let (r, (reply, _answer)) = (ResourceId::new_random(), oneshot::channel());
        let mut replies = vec![reply];
        replies.extend((0..5).map(|_| oneshot::channel().0));
        let shared = IdentityId::new_random(r);
        let news = [
            new(IdentityId::new_random(r), Some("b")),
            new(shared, None),
            new(IdentityId::new_random(r), Some("b")),
            new(shared, Some("c")),
            new(IdentityId::new_random(r), Some("a")),
            new(IdentityId::new_random(r), Some("c")),
        ];
        let batch: Vec<Job> = news
            .into_iter()
            .zip(replies)
            .map(|(new, reply)| Job {
                new,
                actor: Actor::operator(),
                reply,
            })
            .collect();
        // Custom ids first, in custom id order; a create waits for the last one sharing a key.
        assert_eq!(rounds(&batch), vec![vec![4, 0, 1], vec![2, 3], vec![5]]);
    }
}
