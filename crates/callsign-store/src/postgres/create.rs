//! Identity creation on PostgreSQL, grouped: concurrent creates wait in a bounded queue, and a
//! few batch tasks each take what is waiting (at most [`MAX_BATCH`]) and write it in rounds,
//! usually one: each round is one statement in its own transaction, a multi-row insert of the
//! identities (in the order given, so that batches of two nodes lock rows in the same order)
//! with the audit records of those it created. Creates whose custom id is held already take a second statement that reads
//! those identities and records each create as `Existing`. A create is answered only after the
//! statement that wrote it committed (the server acknowledges an implicit transaction's commit
//! only once it is durable).
//!
//! Each create gets exactly what it would get alone:
//! * creates in one batch that share an id or a custom id are written in queue order, in
//!   successive rounds (the second of two creates with one custom id gets the identity the
//!   first created, `created: false`, and an `Existing` audit record);
//! * a create that fails on its own (an id in use or tombstoned) writes nothing, not even its
//!   audit record, and does not stop the others;
//! * a statement the server refuses (a row it rejects, a deadlock, a serialization failure)
//!   writes nothing, and each create it held is run alone, in a transaction of its own;
//!   connection trouble fails every create not yet written with that
//!   [`StoreError::Unavailable`], a statement left unanswered included (its outcome unknown).
//!
//! Audit records of one round are written in queue order: first those of the identities it
//! created, then those of the creates that found an existing identity. A create whose caller
//! gave up before its batch started is not written; one whose caller gives up later may be
//! written without being acknowledged (as a create whose answer is lost on the network). All of
//! a batch's callers are answered when its last round is done: a batch with many creates of one
//! custom id (one round each) or run one by one after a refused statement answers late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callsign_core::{CustomId, IdentityId};
use deadpool_postgres::{Object, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;

use super::{IDENTITY_COLUMNS, identity, pg, pool_error, transient, write_audit};
use crate::audit::{Actor, AuditEvent, AuditOperation, AuditOutcome, AuditValues};
use crate::{Created, NewIdentity, StoreError, unix_ms as ms};

/// Most creates written together.
const MAX_BATCH: usize = 256;

/// Most creates waiting for a batch; a create that finds the queue full waits for room.
const QUEUE: usize = 4 * MAX_BATCH;

/// Batch tasks per store. They take turns: creates that arrive while a batch is written wait
/// for it and go together in the next, fewer statements for the same creates. A batch that
/// takes longer than [`STALL`] (waiting for a lock another transaction holds) lets the next
/// start alongside it.
const WORKERS: usize = 2;

/// How long a batch task waits for the batch in flight before it starts the next one anyway.
const STALL: Duration = Duration::from_millis(20);

/// How long closing the store waits for the batches under way and the creates queued.
const DRAIN: Duration = Duration::from_secs(10);

/// Inserts the identities of one round (`$1`-`$4`; none shares an id or a custom id with
/// another) and the audit records (`$5`-`$14`, in the order to write them) of those inserted.
/// A tombstoned id is never used again (random ids make this a formality).
const INSERT_ROUND: &str = "
WITH inserted AS (
    INSERT INTO callsign_identities (id, resource_id, custom_id, created_at_ms)
    SELECT t.id, t.resource_id, t.custom_id, t.created_at_ms
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
        WITH ORDINALITY AS t(id, resource_id, custom_id, created_at_ms, n)
    WHERE NOT EXISTS (SELECT 1 FROM callsign_identity_tombstones AS d WHERE d.id = t.id)
    ORDER BY t.n
    ON CONFLICT DO NOTHING
    RETURNING id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms
), audited AS (
    INSERT INTO callsign_audit_log (at_ms, resource_id, operation, identity_id, outcome,
                                    credential, client, request_id, detail, subject)
    SELECT a.at_ms, a.resource_id, a.operation, a.identity_id, a.outcome, a.credential,
           a.client, a.request_id, a.detail, a.subject
    FROM unnest($5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                $11::text[], $12::text[], $13::text[], $14::text[])
        WITH ORDINALITY AS a(at_ms, resource_id, operation, identity_id, outcome, credential,
                             client, request_id, detail, subject, n)
    WHERE a.identity_id IN (SELECT id FROM inserted)
    ORDER BY a.n
)
SELECT id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms FROM inserted";

/// Reads the identities holding the (resource `$1`, custom id `$2`) pairs and writes, in the
/// pairs' order, the audit records (`$3`-`$12`) of those found, naming the identity found.
/// The row of each pair found comes with its position (from 1).
const EXISTING: &str = "
WITH found AS (
    SELECT t.n, i.id, i.custom_id, i.created_at_ms, i.revocation_epoch,
           i.last_token_issued_at_ms
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(resource_id, custom_id, n)
    JOIN callsign_identities AS i
        ON i.resource_id = t.resource_id AND i.custom_id = t.custom_id
    WHERE i.custom_id IS NOT NULL
), audited AS (
    INSERT INTO callsign_audit_log (at_ms, resource_id, operation, identity_id, outcome,
                                    credential, client, request_id, detail, subject)
    SELECT a.at_ms, a.resource_id, a.operation, found.id, a.outcome, a.credential, a.client,
           a.request_id, a.detail, a.subject
    FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::text[], $10::text[], $11::text[], $12::text[])
        WITH ORDINALITY AS a(at_ms, resource_id, operation, identity_id, outcome, credential,
                             client, request_id, detail, subject, n)
    JOIN found ON found.n = a.n
    ORDER BY a.n
)
SELECT id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms, n FROM found";

/// One create waiting for its batch.
struct Job {
    new: NewIdentity,
    actor: Actor,
    reply: oneshot::Sender<Result<Created, StoreError>>,
}

/// A create's result.
type Answer = Result<Created, StoreError>;

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
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        let workers = (0..WORKERS)
            .map(|_| {
                let (rx, turn) = (Arc::clone(&rx), Arc::clone(&turn));
                tokio::spawn(work(pool.clone(), rx, turn))
            })
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

/// One batch task: waits for its turn (at most [`STALL`]), takes what is queued, at most
/// [`MAX_BATCH`] creates, and writes it; ends when the queue is closed and empty.
async fn work(
    pool: Pool,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    turn: Arc<tokio::sync::Mutex<()>>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        let _turn = tokio::time::timeout(STALL, turn.lock()).await.ok();
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
            Ok(mut client) => {
                // A connection that met trouble is not handed to the next batch.
                if run_batch(&mut client, batch).await {
                    drop(Object::take(client));
                }
            }
            Err(e) => {
                let e = pool_error(e);
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Writes `batch` through `client` and answers each of its creates; true when it met connection
/// trouble.
async fn run_batch(client: &mut Object, batch: Vec<Job>) -> bool {
    let mut answers: Vec<Option<Answer>> = batch.iter().map(|_| None).collect();
    // Creates run alone, in queue order, once a statement was refused.
    let mut alone: Vec<usize> = Vec::new();
    let mut trouble: Option<StoreError> = None;
    for round in rounds(&batch) {
        if let Some(e) = &trouble {
            round
                .iter()
                .for_each(|&i| answers[i] = Some(Err(e.clone())));
            continue;
        }
        if !alone.is_empty() {
            alone.extend(round);
            continue;
        }
        let refused = match write_round(client, &batch, &round, &mut answers).await {
            Ok(()) => continue,
            Err(Failure::Alone(e)) => e,
            Err(Failure::Everyone(e)) => {
                for &i in &round {
                    answers[i].get_or_insert_with(|| Err(e.clone()));
                }
                trouble = Some(e);
                continue;
            }
        };
        tracing::debug!(error = %refused.chain(), "batched creates refused; each is tried alone");
        alone.extend(round.into_iter().filter(|&i| answers[i].is_none()));
    }
    alone.sort_unstable();
    for i in alone {
        if !batch[i].reply.is_closed() {
            answers[i] = Some(create_alone(client, &batch[i].new, &batch[i].actor).await);
        }
    }
    for (job, answer) in batch.into_iter().zip(answers) {
        if let Some(answer) = answer {
            let _ = job.reply.send(answer);
        }
    }
    trouble.is_some()
}

/// Why a statement wrote nothing (or may have written what it was asked).
enum Failure {
    /// The server refused it, and it wrote nothing: each of its creates is tried alone.
    Alone(StoreError),
    /// Connection trouble (a statement left unanswered included): every create not yet
    /// written gets this error.
    Everyone(StoreError),
}

/// A failed statement: connection trouble fails everyone (a create alone would fail alike);
/// anything else the server refused (deadlocks and serialization failures included) is tried
/// create by create.
fn failure(e: tokio_postgres::Error) -> Failure {
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

/// The batch in rounds, as indexes: a create goes in the round after the last one holding a
/// create queued before it with its id or its custom id, so that creates that touch each other
/// are written in queue order and no round holds two of them. Within a round, creates with a
/// custom id come first, in (resource, custom id) order, then the others in id order: two
/// statements that insert some of the same keys wait for each other in one order, never in
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

/// Writes one round: its identities with their records, then the records of those whose custom
/// id was held already. Sets the answer of each create written or failed on its own.
async fn write_round(
    client: &Object,
    batch: &[Job],
    round: &[usize],
    answers: &mut [Option<Answer>],
) -> Result<(), Failure> {
    let news: Vec<&NewIdentity> = round.iter().map(|&i| &batch[i].new).collect();
    let ids: Vec<String> = news.iter().map(|n| n.id.to_string()).collect();
    let resources: Vec<String> = news.iter().map(|n| n.id.resource().to_string()).collect();
    let customs: Vec<Option<&str>> = news
        .iter()
        .map(|n| n.custom_id.as_ref().map(CustomId::as_str))
        .collect();
    let created: Vec<i64> = news.iter().map(|n| ms(n.created_at)).collect();
    // The records, in queue order, as they are if the create inserts its identity.
    let mut queued = round.to_vec();
    queued.sort_unstable();
    let records = audit_values(batch, &queued, AuditOutcome::Success);
    let columns = AuditColumns::of(&records);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids, &resources, &customs, &created];
    params.extend(columns.params());
    let stmt = client.prepare_cached(INSERT_ROUND).await.map_err(failure)?;
    let rows = client.query(&stmt, &params).await.map_err(failure)?;
    // Written already: a row that does not read is its create's failure.
    let mut inserted = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: String = row
            .try_get(0)
            .map_err(|e| Failure::Everyone(StoreError::corrupt("identity id").caused_by(e)))?;
        inserted.insert(id, identity(row));
    }
    let mut yielded = Vec::new();
    for (&i, id) in round.iter().zip(&ids) {
        answers[i] = match (inserted.remove(id), &batch[i].new.custom_id) {
            (Some(record), _) => Some(record.map(|identity| Created {
                identity,
                created: true,
            })),
            // The insert yielded to an existing row; with a custom id that is the identity
            // asked for.
            (None, Some(_)) => {
                yielded.push(i);
                None
            }
            (None, None) => Some(Err(StoreError::backend(format!(
                "identity id {id} already exists"
            )))),
        };
    }
    if !yielded.is_empty() {
        yielded.sort_unstable();
        existing(client, batch, &yielded, answers).await?;
    }
    Ok(())
}

/// Reads the identities holding the custom ids of the `yielded` creates (in queue order) and
/// records each of those found as `Existing`; sets their answers.
async fn existing(
    client: &Object,
    batch: &[Job],
    yielded: &[usize],
    answers: &mut [Option<Answer>],
) -> Result<(), Failure> {
    let resources: Vec<String> = yielded
        .iter()
        .map(|&i| batch[i].new.id.resource().to_string())
        .collect();
    let customs: Vec<Option<&str>> = yielded
        .iter()
        .map(|&i| batch[i].new.custom_id.as_ref().map(CustomId::as_str))
        .collect();
    let records = audit_values(batch, yielded, AuditOutcome::Existing);
    let columns = AuditColumns::of(&records);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&resources, &customs];
    params.extend(columns.params());
    let stmt = client.prepare_cached(EXISTING).await.map_err(failure)?;
    let rows = client.query(&stmt, &params).await.map_err(failure)?;
    for &i in yielded {
        answers[i] = Some(Err(deleted_concurrently()));
    }
    for row in &rows {
        let n: i64 = row
            .try_get(5)
            .map_err(|e| Failure::Everyone(StoreError::corrupt("position").caused_by(e)))?;
        let Some(&i) = usize::try_from(n - 1).ok().and_then(|k| yielded.get(k)) else {
            continue;
        };
        answers[i] = Some(identity(row).map(|identity| Created {
            identity,
            created: false,
        }));
    }
    Ok(())
}

/// The audit records of the creates at `indexes`, as written when each ends with `outcome`
/// (an `Existing` record's identity is set by the statement to the identity found).
fn audit_values(batch: &[Job], indexes: &[usize], outcome: AuditOutcome) -> Vec<AuditValues> {
    indexes
        .iter()
        .map(|&i| {
            let event =
                AuditEvent::identity(AuditOperation::CreateIdentity, batch[i].new.id, outcome);
            AuditValues::of(&batch[i].actor, &event)
        })
        .collect()
}

/// Audit records as the ten array parameters of a multi-row insert.
struct AuditColumns<'a> {
    at: Vec<i64>,
    text: [Vec<Option<&'a str>>; 9],
}

impl<'a> AuditColumns<'a> {
    fn of(values: &'a [AuditValues]) -> Self {
        let text = |f: fn(&'a AuditValues) -> Option<&'a str>| values.iter().map(f).collect();
        Self {
            at: values.iter().map(|v| v.at_ms).collect(),
            text: [
                text(|v| v.resource.as_deref()),
                text(|v| Some(v.operation)),
                text(|v| v.identity.as_deref()),
                text(|v| Some(v.outcome)),
                text(|v| Some(v.credential)),
                text(|v| v.client.as_deref()),
                text(|v| v.request_id.as_deref()),
                text(|v| v.detail.as_deref()),
                text(|v| v.subject.as_deref()),
            ],
        }
    }

    fn params(&self) -> impl Iterator<Item = &(dyn ToSql + Sync)> {
        std::iter::once(&self.at as &(dyn ToSql + Sync))
            .chain(self.text.iter().map(|c| c as &(dyn ToSql + Sync)))
    }
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
    let inserted = client
        .query_opt(&stmt, &[&id, &resource, &custom, &created_at])
        .await
        .map_err(pg)?;
    let (row, created) = match (inserted, custom) {
        (Some(row), _) => (row, true),
        // The insert yielded to an existing row; with a custom id that is the identity asked
        // for.
        (None, Some(custom)) => {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {IDENTITY_COLUMNS} FROM callsign_identities WHERE resource_id = $1 AND custom_id = $2"
                    ),
                    &[&resource, &custom],
                )
                .await
                .map_err(pg)?
                .ok_or_else(deleted_concurrently)?;
            (row, false)
        }
        (None, None) => {
            return Err(StoreError::backend(format!(
                "identity id {id} already exists"
            )));
        }
    };
    let identity = identity(&row)?;
    let outcome = if created {
        AuditOutcome::Success
    } else {
        AuditOutcome::Existing
    };
    let event = AuditEvent::identity(AuditOperation::CreateIdentity, identity.id, outcome);
    write_audit(&client, actor, &event).await?;
    client.commit().await.map_err(pg)?;
    Ok(Created { identity, created })
}

/// A create that yielded to an identity with its custom id, which was gone when read.
fn deleted_concurrently() -> StoreError {
    StoreError::unavailable("the identity with this custom id was deleted concurrently")
}

#[cfg(test)]
mod tests {
    use callsign_core::ResourceId;
    use callsign_testkit::{TestDatabase, connect_postgres};
    use time::OffsetDateTime;

    use super::*;
    use crate::audit::{AuditLog, AuditQuery, AuditRecord};
    use crate::{IdentityStore, PostgresOptions, PostgresStore, Store};

    type Pending = oneshot::Receiver<Answer>;

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
        let (jobs, answers): (Vec<Job>, Vec<Pending>) = creates
            .into_iter()
            .map(|(new, actor)| {
                let (reply, answer) = oneshot::channel();
                (Job { new, actor, reply }, answer)
            })
            .unzip();
        assert!(!run_batch(&mut client, jobs).await, "no connection trouble");
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
        // The records of those that succeeded, none of those that failed: round by round, in
        // queue order those that created, then those that found an identity.
        let req = |s: &str| Some(s.to_owned());
        assert_eq!(
            audit_after(&store, after).await,
            vec![
                (req("j0"), Some(a), AuditOutcome::Success),
                (req("j2"), Some(plain), AuditOutcome::Success),
                (req("j7"), Some(a7), AuditOutcome::Success),
                (req("j3"), Some(old.identity.id), AuditOutcome::Existing),
                (req("j1"), Some(a), AuditOutcome::Existing),
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
            .execute("SELECT pg_terminate_backend($1, 5000)", &[&pid])
            .await
            .expect("terminate");
        let r = ResourceId::new_random();
        let ids: Vec<IdentityId> = (0..3).map(|_| IdentityId::new_random(r)).collect();
        let (jobs, answers): (Vec<Job>, Vec<Pending>) = ids
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
        assert!(run_batch(&mut client, jobs).await, "connection trouble");
        for a in answers {
            let result = a.await.expect("answered");
            assert!(result.is_err_and(|e| e.is_unavailable()));
        }
        // Out of the pool: a later request must not meet the closed connection.
        drop(Object::take(client));
        for id in &ids {
            assert_eq!(store.get_identity(id).await.expect("get"), None);
        }
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_waiting_for_a_lock_does_not_hold_up_the_next() {
        let (store, db) = store().await;
        let store = Arc::new(store);
        let r = ResourceId::new_random();
        // Another node's transaction inserts custom id "held" and keeps it open.
        let mut other = connect_postgres(&db.url()).await;
        let tx = other.transaction().await.expect("begin");
        let theirs = IdentityId::new_random(r);
        tx.execute(
            "INSERT INTO callsign_identities (id, resource_id, custom_id, created_at_ms)
             VALUES ($1, $2, 'held', 0)",
            &[&theirs.to_string(), &r.to_string()],
        )
        .await
        .expect("insert");
        let waiting = tokio::spawn({
            let store = Arc::clone(&store);
            async move {
                store
                    .create_identity(new(IdentityId::new_random(r), Some("held")), &actor("w"))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "the insert waits for the other transaction"
        );
        let o = actor("o");
        let other_create = store.create_identity(new(IdentityId::new_random(r), None), &o);
        let done = tokio::time::timeout(Duration::from_secs(2), other_create).await;
        assert!(done.expect("not held up").expect("create").created);
        assert!(!waiting.is_finished());
        tx.commit().await.expect("commit");
        let found = waiting.await.expect("task").expect("create");
        assert_eq!((found.identity.id, found.created), (theirs, false));
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
