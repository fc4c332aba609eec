//! The embedded backend: one SQLite file in WAL mode.
//!
//! * **Writes** go to one writer thread that owns the only read-write connection. It drains
//!   whatever requests are waiting into one transaction (group commit), commits with
//!   `synchronous=FULL` (the WAL is fsync'd), and only then answers each request. Each request runs
//!   inside its own savepoint so one failing request cannot undo another.
//! * **Reads** use a small pool of read-only connections and run inline on the calling task:
//!   they are primary-key lookups that WAL readers perform without waiting on the writer.
//! * `last_token_issued_at` is kept in memory and written by the writer thread once a second, so
//!   issuing a token costs no write.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use callsign_core::token::Algorithm;
use callsign_core::{IdentityId, PrincipalType, ResourceId, TeamsAssignment};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{
    AssignmentStore, Created, IdentityRecord, IdentityStore, ImportReport, NewIdentity,
    PendingTokenTimes, ResourceRecord, ResourceStore, SigningKeyStore, Store, StoreError,
    StoredSigningKey, Tombstone, TombstoneReport, from_unix_ms as from_ms, unix_ms as ms,
};
use crate::{
    KeyMaterialStore, KeyProtection, KeyRewrite, SealStatus, StoredResource, count_sealed,
};

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE resources (
    id            TEXT PRIMARY KEY,
    is_default    INTEGER NOT NULL DEFAULT 0,
    primary_key   TEXT NOT NULL,
    secondary_key TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX resources_one_default ON resources(is_default) WHERE is_default = 1;

CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    alg           TEXT NOT NULL,
    pkcs8         BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE identities (
    id                      TEXT PRIMARY KEY,
    resource_id             TEXT NOT NULL,
    custom_id               TEXT,
    created_at_ms           INTEGER NOT NULL,
    revocation_epoch        INTEGER NOT NULL DEFAULT 0,
    last_token_issued_at_ms INTEGER
) WITHOUT ROWID;
CREATE UNIQUE INDEX identities_custom_id ON identities(resource_id, custom_id)
    WHERE custom_id IS NOT NULL;
"#,
    // Teams extension access assignments. `client_ids`: NULL when the assignment names none,
    // else the GUIDs comma-separated ('' for an empty list).
    r#"
CREATE TABLE teams_assignments (
    resource_id    TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    object_id      TEXT NOT NULL,
    principal_type TEXT NOT NULL,
    client_ids     TEXT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (resource_id, tenant_id, object_id)
) WITHOUT ROWID;
"#,
    // What is left of a deleted identity, so that its id is never created or imported again.
    r#"
CREATE TABLE identity_tombstones (
    id            TEXT PRIMARY KEY,
    resource_id   TEXT NOT NULL,
    deleted_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#,
];

const READERS: usize = 4;
const MAX_BATCH: usize = 512;
const TOUCH_FLUSH: Duration = Duration::from_secs(1);

/// The embedded SQLite store. Cheap to clone handles are not offered: share it in an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<std_mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    touched: Arc<PendingTokenTimes>,
    keys: KeyProtection,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Create(NewIdentity, Reply<Created>),
    Revoke(IdentityId, Reply<Option<u64>>),
    Delete(IdentityId, Reply<bool>),
    Bootstrap(StoredResource, Reply<StoredResource>),
    RewriteKeys(KeyRewrite, Reply<usize>),
    AddKey(StoredSigningKey, Reply<()>),
    BootstrapKey(StoredSigningKey, Reply<StoredSigningKey>),
    Import(Vec<IdentityRecord>, Reply<ImportReport>),
    ImportTombstones(Vec<Tombstone>, Reply<TombstoneReport>),
    PutAssignment(ResourceId, TeamsAssignment, Reply<bool>),
    DeleteAssignment(AssignmentKey, Reply<bool>),
    Flush(Reply<()>),
}

/// An assignment's primary key as stored: resource, tenant, object (lowercase hyphenated).
type AssignmentKey = (String, String, String);

fn assignment_key(resource: ResourceId, tenant: Uuid, object: Uuid) -> AssignmentKey {
    (resource.to_string(), tenant.to_string(), object.to_string())
}

fn backend(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations and starts the
    /// writer thread, with key material in plain text. Call from within a Tokio runtime or not;
    /// the store needs none to open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, KeyProtection::plain())
    }

    /// [`SqliteStore::open`] with access keys and signing keys sealed as `keys` says.
    pub fn open_with(path: impl AsRef<Path>, keys: KeyProtection) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path).map_err(backend)?;
        configure(&conn, false)?;
        migrate(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(&path)?);
        }
        let touched = Arc::new(PendingTokenTimes::default());
        let (tx, rx) = std_mpsc::channel();
        let thread_touched = Arc::clone(&touched);
        let thread = std::thread::Builder::new()
            .name("callsign-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, thread_touched))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            path,
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            readers: Mutex::new(readers),
            touched,
            keys,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let sender = guard
                .as_ref()
                .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
            sender
                .send(make(tx))
                .map_err(|_| StoreError::Unavailable("the writer thread has stopped".into()))?;
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer thread has stopped".into()))?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        result
    }
}

fn configure(conn: &Connection, read_only: bool) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
    if !read_only {
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "could not switch the database to WAL mode (got {mode})"
            )));
        }
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(backend)?;
    if read_only {
        // 8 MiB of page cache per reader (default 2 MiB): fewer page reads on large directories.
        conn.execute_batch("PRAGMA cache_size=-8192;")
            .map_err(backend)?;
    }
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(backend)?;
    configure(&conn, true)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database schema (version {applied}) is newer than this callsign (version {}); upgrade callsign",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        tracing::info!(version = i + 1, "applied SQLite migration");
    }
    Ok(())
}

const IDENTITY_COLUMNS: &str =
    "id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms";

/// An identity row as read: id, custom id, created, epoch, last token.
type IdentityRow = (String, Option<String>, i64, i64, Option<i64>);

fn identity_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdentityRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn identity_record(row: IdentityRow) -> Result<IdentityRecord, StoreError> {
    let (id, custom_id, created, epoch, last) = row;
    Ok(IdentityRecord {
        id: IdentityId::parse(&id)
            .map_err(|_| StoreError::Corrupt(format!("identity id {id:?}")))?,
        custom_id,
        created_at: from_ms(created)?,
        revocation_epoch: u64::try_from(epoch)
            .map_err(|_| StoreError::Corrupt(format!("negative revocation epoch for {id}")))?,
        last_token_issued_at: last.map(from_ms).transpose()?,
    })
}

fn writer_loop(mut conn: Connection, rx: std_mpsc::Receiver<Job>, touched: Arc<PendingTokenTimes>) {
    let mut last_flush = std::time::Instant::now();
    loop {
        let first = match rx.recv_timeout(TOUCH_FLUSH) {
            Ok(job) => Some(job),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                flush_touched(&mut conn, &touched);
                return;
            }
        };
        let mut batch = Vec::new();
        if let Some(job) = first {
            batch.push(job);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        run_batch(&mut conn, batch, &touched);
        // Token times are written at most once a second, whatever the write load.
        if last_flush.elapsed() >= TOUCH_FLUSH {
            flush_touched(&mut conn, &touched);
            last_flush = std::time::Instant::now();
        }
    }
}

fn flush_touched(conn: &mut Connection, touched: &PendingTokenTimes) {
    let pending = touched.take();
    if pending.is_empty() {
        return;
    }
    // Best-effort data: committed without an fsync of its own (WAL, synchronous=NORMAL); the
    // next durable commit syncs it along. Acknowledged writes keep synchronous=FULL.
    let result = (|| -> rusqlite::Result<()> {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE identities SET last_token_issued_at_ms = max(coalesce(last_token_issued_at_ms, 0), ?2) WHERE id = ?1",
            )?;
            for (id, at) in &pending {
                stmt.execute(params![id.to_string(), at])?;
            }
        }
        tx.commit()
    })();
    if let Err(e) = conn.pragma_update(None, "synchronous", "FULL") {
        tracing::error!(error = %e, "could not restore synchronous=FULL");
    }
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record last-token times");
    }
}

/// One group commit: every job in its own savepoint, one fsync for all.
fn run_batch(conn: &mut Connection, batch: Vec<Job>, touched: &PendingTokenTimes) {
    if batch.is_empty() {
        return;
    }
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for job in batch {
                fail(job, StoreError::Unavailable(msg.clone()));
            }
            return;
        }
    };
    let mut done: Vec<Box<dyn FnOnce(Option<StoreError>)>> = Vec::with_capacity(batch.len());
    for job in batch {
        done.push(run_job(&tx, job, touched));
    }
    match tx.commit() {
        Ok(()) => done.into_iter().for_each(|f| f(None)),
        Err(e) => {
            tracing::error!(error = %e, "commit failed");
            let msg = e.to_string();
            done.into_iter()
                .for_each(|f| f(Some(StoreError::Backend(msg.clone()))));
        }
    }
}

fn fail(job: Job, e: StoreError) {
    match job {
        Job::Create(_, r) => drop(r.send(Err(e))),
        Job::Revoke(_, r) => drop(r.send(Err(e))),
        Job::Delete(_, r) => drop(r.send(Err(e))),
        Job::Bootstrap(_, r) => drop(r.send(Err(e))),
        Job::RewriteKeys(_, r) => drop(r.send(Err(e))),
        Job::AddKey(_, r) => drop(r.send(Err(e))),
        Job::BootstrapKey(_, r) => drop(r.send(Err(e))),
        Job::Import(_, r) => drop(r.send(Err(e))),
        Job::ImportTombstones(_, r) => drop(r.send(Err(e))),
        Job::PutAssignment(_, _, r) => drop(r.send(Err(e))),
        Job::DeleteAssignment(_, r) => drop(r.send(Err(e))),
        Job::Flush(r) => drop(r.send(Err(e))),
    }
}

/// Runs one job in a savepoint and returns the function that answers it once the batch's fate
/// is known (a commit failure turns every success into that failure).
fn run_job(
    tx: &rusqlite::Transaction<'_>,
    job: Job,
    touched: &PendingTokenTimes,
) -> Box<dyn FnOnce(Option<StoreError>)> {
    fn in_savepoint<T>(
        tx: &rusqlite::Transaction<'_>,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        tx.execute_batch("SAVEPOINT job").map_err(backend)?;
        match f(tx) {
            Ok(v) => {
                tx.execute_batch("RELEASE job").map_err(backend)?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.execute_batch("ROLLBACK TO job; RELEASE job");
                Err(e)
            }
        }
    }
    fn answer<T: Send + 'static>(
        reply: Reply<T>,
        result: Result<T, StoreError>,
    ) -> Box<dyn FnOnce(Option<StoreError>)> {
        Box::new(move |commit_error| {
            let _ = reply.send(match commit_error {
                Some(e) => Err(e),
                None => result,
            });
        })
    }
    match job {
        Job::Create(new, reply) => answer(reply, in_savepoint(tx, |tx| create(tx, &new))),
        Job::Revoke(id, reply) => answer(
            reply,
            in_savepoint(tx, |tx| {
                tx.prepare_cached(
                    "UPDATE identities SET revocation_epoch = revocation_epoch + 1 WHERE id = ?1 RETURNING revocation_epoch",
                )
                .and_then(|mut s| s.query_row([id.to_string()], |r| r.get::<_, i64>(0)).optional())
                .map_err(backend)?
                .map(|e| u64::try_from(e).map_err(|_| StoreError::Corrupt("negative epoch".into())))
                .transpose()
            }),
        ),
        Job::Delete(id, reply) => {
            touched.forget(&id);
            answer(reply, in_savepoint(tx, |tx| delete(tx, &id)))
        }
        Job::Bootstrap(candidate, reply) => {
            answer(reply, in_savepoint(tx, |tx| bootstrap(tx, candidate)))
        }
        Job::RewriteKeys(plan, reply) => {
            answer(reply, in_savepoint(tx, |tx| rewrite_keys(tx, &plan)))
        }
        Job::AddKey(key, reply) => answer(reply, in_savepoint(tx, |tx| insert_key(tx, &key))),
        Job::BootstrapKey(candidate, reply) => answer(
            reply,
            in_savepoint(tx, |tx| {
                let existing = read_signing_keys(tx)?
                    .into_iter()
                    .find(|k| k.alg == candidate.alg);
                match existing {
                    Some(k) => Ok(k),
                    None => insert_key(tx, &candidate).map(|()| candidate),
                }
            }),
        ),
        Job::Import(records, reply) => answer(reply, in_savepoint(tx, |tx| import(tx, &records))),
        Job::ImportTombstones(tombstones, reply) => {
            for t in &tombstones {
                touched.forget(&t.id);
            }
            answer(
                reply,
                in_savepoint(tx, |tx| import_tombstones(tx, &tombstones)),
            )
        }
        Job::PutAssignment(resource, assignment, reply) => answer(
            reply,
            in_savepoint(tx, |tx| put_assignment(tx, resource, &assignment)),
        ),
        Job::DeleteAssignment((resource, tenant, object), reply) => answer(
            reply,
            in_savepoint(tx, |tx| {
                tx.prepare_cached(
                    "DELETE FROM teams_assignments WHERE resource_id = ?1 AND tenant_id = ?2 AND object_id = ?3",
                )
                .and_then(|mut s| s.execute(params![resource, tenant, object]))
                .map(|n| n > 0)
                .map_err(backend)
            }),
        ),
        Job::Flush(reply) => answer(reply, Ok(())),
    }
}

/// Encodes client ids for the `client_ids` column: `None` stays NULL, a list is its GUIDs
/// comma-separated (an empty list is the empty string).
fn encode_client_ids(ids: Option<&[Uuid]>) -> Option<String> {
    ids.map(|ids| {
        ids.iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The inverse of [`encode_client_ids`].
fn decode_client_ids(raw: Option<String>) -> Result<Option<Vec<Uuid>>, StoreError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.is_empty() {
        return Ok(Some(Vec::new()));
    }
    raw.split(',')
        .map(|id| {
            callsign_core::parse_guid(id)
                .ok_or_else(|| StoreError::Corrupt(format!("assignment client id {id:?}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Creates or replaces an assignment; true when it was created. The writer thread runs one job
/// at a time, so the insert-then-update pair cannot interleave with another put.
fn put_assignment(
    tx: &rusqlite::Transaction<'_>,
    resource: ResourceId,
    assignment: &TeamsAssignment,
) -> Result<bool, StoreError> {
    let (resource, tenant, object) =
        assignment_key(resource, assignment.tenant_id, assignment.object_id);
    let principal = assignment.principal_type.as_str();
    let clients = encode_client_ids(assignment.client_ids.as_deref());
    let now = ms(OffsetDateTime::now_utc());
    let inserted = tx
        .prepare_cached(
            "INSERT INTO teams_assignments (resource_id, tenant_id, object_id, principal_type, client_ids, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![resource, tenant, object, principal, clients, now]))
        .map_err(backend)?;
    if inserted == 1 {
        return Ok(true);
    }
    tx.prepare_cached(
        "UPDATE teams_assignments SET principal_type = ?4, client_ids = ?5, updated_at_ms = ?6
         WHERE resource_id = ?1 AND tenant_id = ?2 AND object_id = ?3",
    )
    .and_then(|mut s| s.execute(params![resource, tenant, object, principal, clients, now]))
    .map_err(backend)?;
    Ok(false)
}

const ASSIGNMENT_COLUMNS: &str = "resource_id, tenant_id, object_id, principal_type, client_ids";

/// An assignment row as read: resource, tenant, object, principal type, client ids.
type AssignmentRow = (String, String, String, String, Option<String>);

fn assignment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AssignmentRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn assignment_record(row: AssignmentRow) -> Result<(ResourceId, TeamsAssignment), StoreError> {
    let (resource, tenant, object, principal, clients) = row;
    let guid = |what: &str, s: &str| {
        callsign_core::parse_guid(s)
            .ok_or_else(|| StoreError::Corrupt(format!("assignment {what} {s:?}")))
    };
    Ok((
        ResourceId::parse(&resource)
            .map_err(|_| StoreError::Corrupt(format!("assignment resource id {resource:?}")))?,
        TeamsAssignment {
            tenant_id: guid("tenant id", &tenant)?,
            object_id: guid("object id", &object)?,
            principal_type: PrincipalType::parse(&principal).ok_or_else(|| {
                StoreError::Corrupt(format!("assignment principal type {principal:?}"))
            })?,
            client_ids: decode_client_ids(clients)?,
        },
    ))
}

fn insert_key(tx: &rusqlite::Transaction<'_>, key: &StoredSigningKey) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO signing_keys (kid, alg, pkcs8, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![key.kid, key.alg.jose_name(), key.pkcs8, ms(key.created_at)],
    )
    .map(|_| ())
    .map_err(backend)
}

fn read_signing_keys(c: &Connection) -> Result<Vec<StoredSigningKey>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT kid, alg, pkcs8, created_at_ms FROM signing_keys ORDER BY created_at_ms DESC, rowid DESC",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(backend)?;
    let mut keys = Vec::new();
    for row in rows {
        let (kid, alg, pkcs8, created) = row.map_err(backend)?;
        keys.push(StoredSigningKey {
            alg: Algorithm::from_jose_name(&alg)
                .ok_or_else(|| StoreError::Corrupt(format!("signing key algorithm {alg:?}")))?,
            kid,
            pkcs8,
            created_at: from_ms(created)?,
        });
    }
    Ok(keys)
}

fn create(tx: &rusqlite::Transaction<'_>, new: &NewIdentity) -> Result<Created, StoreError> {
    let resource = new.id.resource().to_string();
    let custom = new.custom_id.as_ref().map(|c| c.as_str().to_owned());
    // A tombstoned id is never used again (random ids make this a formality).
    let inserted = tx
        .prepare_cached(
            "INSERT INTO identities (id, resource_id, custom_id, created_at_ms)
             SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS (SELECT 1 FROM identity_tombstones WHERE id = ?1)
             ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![new.id.to_string(), resource, custom, ms(new.created_at)]))
        .map_err(backend)?;
    if inserted == 1 {
        return Ok(Created {
            identity: IdentityRecord {
                id: new.id,
                custom_id: custom,
                created_at: from_ms(ms(new.created_at))?,
                revocation_epoch: 0,
                last_token_issued_at: None,
            },
            created: true,
        });
    }
    let Some(custom) = custom else {
        return Err(StoreError::Backend(format!(
            "identity id {} already exists",
            new.id
        )));
    };
    let row = tx
        .prepare_cached(&format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities WHERE resource_id = ?1 AND custom_id = ?2"
        ))
        .and_then(|mut s| {
            s.query_row(params![resource, custom], identity_from_row)
                .optional()
        })
        .map_err(backend)?
        .ok_or_else(|| StoreError::Backend(format!("identity id {} already exists", new.id)))?;
    Ok(Created {
        identity: identity_record(row)?,
        created: false,
    })
}

/// Deletes an identity and leaves its tombstone; false when it did not exist.
fn delete(tx: &rusqlite::Transaction<'_>, id: &IdentityId) -> Result<bool, StoreError> {
    let deleted = tx
        .prepare_cached("DELETE FROM identities WHERE id = ?1 RETURNING resource_id")
        .and_then(|mut s| {
            s.query_row([id.to_string()], |r| r.get::<_, String>(0))
                .optional()
        })
        .map_err(backend)?;
    let Some(resource) = deleted else {
        return Ok(false);
    };
    tx.prepare_cached(
        "INSERT INTO identity_tombstones (id, resource_id, deleted_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET deleted_at_ms = excluded.deleted_at_ms",
    )
    .and_then(|mut s| {
        s.execute(params![
            id.to_string(),
            resource,
            ms(OffsetDateTime::now_utc())
        ])
    })
    .map_err(backend)?;
    Ok(true)
}

/// Imports identities: a tombstoned id is skipped, an existing one only gets the higher epoch.
fn import(
    tx: &rusqlite::Transaction<'_>,
    records: &[IdentityRecord],
) -> Result<ImportReport, StoreError> {
    let mut tombstoned = tx
        .prepare_cached("SELECT 1 FROM identity_tombstones WHERE id = ?1")
        .map_err(backend)?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO identities (id, resource_id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .map_err(backend)?;
    let mut raise = tx
        .prepare_cached(
            "UPDATE identities SET revocation_epoch = ?2 WHERE id = ?1 AND revocation_epoch < ?2",
        )
        .map_err(backend)?;
    let mut exists = tx
        .prepare_cached("SELECT 1 FROM identities WHERE id = ?1")
        .map_err(backend)?;
    let mut report = ImportReport::default();
    for r in records {
        let id = r.id.to_string();
        let epoch = i64::try_from(r.revocation_epoch).unwrap_or(i64::MAX);
        if tombstoned.exists([&id]).map_err(backend)? {
            report.skipped_deleted += 1;
            continue;
        }
        let inserted = insert
            .execute(params![
                id,
                r.id.resource().to_string(),
                r.custom_id,
                ms(r.created_at),
                epoch,
                r.last_token_issued_at.map(ms),
            ])
            .map_err(backend)?;
        if inserted == 1 {
            report.inserted += 1;
        } else if raise.execute(params![id, epoch]).map_err(backend)? == 1 {
            report.epochs_raised += 1;
        } else if !exists.exists([&id]).map_err(backend)? {
            // Not inserted and not there: the custom id belongs to another identity.
            report.custom_id_conflicts += 1;
        }
    }
    Ok(report)
}

/// Stores tombstones and deletes the identities they name.
fn import_tombstones(
    tx: &rusqlite::Transaction<'_>,
    tombstones: &[Tombstone],
) -> Result<TombstoneReport, StoreError> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO identity_tombstones (id, resource_id, deleted_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )
        .map_err(backend)?;
    let mut delete = tx
        .prepare_cached("DELETE FROM identities WHERE id = ?1")
        .map_err(backend)?;
    let mut report = TombstoneReport::default();
    for t in tombstones {
        let id = t.id.to_string();
        report.inserted += insert
            .execute(params![id, t.id.resource().to_string(), ms(t.deleted_at)])
            .map_err(backend)?;
        report.identities_deleted += delete.execute([&id]).map_err(backend)?;
    }
    Ok(report)
}

fn bootstrap(
    tx: &rusqlite::Transaction<'_>,
    candidate: StoredResource,
) -> Result<StoredResource, StoreError> {
    if let Some(existing) = read_default_resource(tx)? {
        return Ok(existing);
    }
    tx.execute(
        "INSERT INTO resources (id, is_default, primary_key, secondary_key, created_at_ms) VALUES (?1, 1, ?2, ?3, ?4)",
        params![
            candidate.id.to_string(),
            candidate.primary,
            candidate.secondary,
            ms(candidate.created_at)
        ],
    )
    .map_err(backend)?;
    read_default_resource(tx)?
        .ok_or_else(|| StoreError::Backend("the default resource vanished".into()))
}

/// Every resource, access keys in their stored form.
fn read_resources(
    conn: &Connection,
    only_default: bool,
) -> Result<Vec<StoredResource>, StoreError> {
    let sql = if only_default {
        "SELECT id, primary_key, secondary_key, created_at_ms FROM resources WHERE is_default = 1"
    } else {
        "SELECT id, primary_key, secondary_key, created_at_ms FROM resources"
    };
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, primary, secondary, created) = row.map_err(backend)?;
        out.push(StoredResource {
            id: ResourceId::parse(&id).map_err(|_| StoreError::Corrupt("resource id".into()))?,
            primary,
            secondary,
            created_at: from_ms(created)?,
        });
    }
    Ok(out)
}

fn read_default_resource(conn: &Connection) -> Result<Option<StoredResource>, StoreError> {
    Ok(read_resources(conn, true)?.into_iter().next())
}

/// Replaces each stored value that still holds its old form (atomic with the batch).
fn rewrite_keys(tx: &rusqlite::Transaction<'_>, plan: &KeyRewrite) -> Result<usize, StoreError> {
    let mut n = 0;
    for (old, new) in &plan.resources {
        n += 2 * tx
            .execute(
                "UPDATE resources SET primary_key = ?2, secondary_key = ?3 WHERE id = ?1 AND primary_key = ?4 AND secondary_key = ?5",
                params![old.id.to_string(), new.primary, new.secondary, old.primary, old.secondary],
            )
            .map_err(backend)?;
    }
    for (old, new) in &plan.keys {
        n += tx
            .execute(
                "UPDATE signing_keys SET pkcs8 = ?2 WHERE kid = ?1 AND pkcs8 = ?3",
                params![old.kid, new.pkcs8, old.pkcs8],
            )
            .map_err(backend)?;
    }
    if n != plan.len() {
        return Err(StoreError::Backend(
            "keys changed while being re-sealed; run the command again".into(),
        ));
    }
    Ok(n)
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn create_identity(&self, new: NewIdentity) -> Result<Created, StoreError> {
        self.submit(|r| Job::Create(new, r)).await
    }

    async fn get_identity(&self, id: &IdentityId) -> Result<Option<IdentityRecord>, StoreError> {
        let key = id.to_string();
        let record = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {IDENTITY_COLUMNS} FROM identities WHERE id = ?1"
            ))
            .and_then(|mut s| s.query_row([&key], identity_from_row).optional())
            .map_err(backend)?
            .map(identity_record)
            .transpose()
        })?;
        Ok(record.map(|mut r| {
            self.touched.overlay(&mut r);
            r
        }))
    }

    async fn revoke_tokens(&self, id: &IdentityId) -> Result<Option<u64>, StoreError> {
        let id = *id;
        self.submit(|r| Job::Revoke(id, r)).await
    }

    async fn delete_identity(&self, id: &IdentityId) -> Result<bool, StoreError> {
        let id = *id;
        self.submit(|r| Job::Delete(id, r)).await
    }

    fn record_token_issued(&self, id: &IdentityId, at: OffsetDateTime) {
        self.touched.record(id, at);
    }

    async fn list_identities(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {IDENTITY_COLUMNS} FROM identities WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![after, limit], identity_from_row)
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(identity_record(row.map_err(backend)?)?);
            }
            Ok(out)
        })
    }

    async fn import_identities(
        &self,
        records: Vec<IdentityRecord>,
    ) -> Result<ImportReport, StoreError> {
        self.submit(|r| Job::Import(records, r)).await
    }

    async fn list_tombstones(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> Result<Vec<Tombstone>, StoreError> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, deleted_at_ms FROM identity_tombstones WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![after, limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, deleted) = row.map_err(backend)?;
                out.push(Tombstone {
                    id: IdentityId::parse(&id)
                        .map_err(|_| StoreError::Corrupt(format!("tombstone id {id:?}")))?,
                    deleted_at: from_ms(deleted)?,
                });
            }
            Ok(out)
        })
    }

    async fn import_tombstones(
        &self,
        tombstones: Vec<Tombstone>,
    ) -> Result<TombstoneReport, StoreError> {
        self.submit(|r| Job::ImportTombstones(tombstones, r)).await
    }
}

#[async_trait]
impl ResourceStore for SqliteStore {
    async fn default_resource(&self) -> Result<Option<ResourceRecord>, StoreError> {
        self.read(read_default_resource)?
            .map(|s| self.keys.open_resource(&s))
            .transpose()
    }

    async fn bootstrap_default_resource(
        &self,
        candidate: ResourceRecord,
    ) -> Result<ResourceRecord, StoreError> {
        let stored = self.keys.seal_resource(&candidate);
        let winner = self.submit(|r| Job::Bootstrap(stored, r)).await?;
        self.keys.open_resource(&winner)
    }
}

#[async_trait]
impl SigningKeyStore for SqliteStore {
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        self.read(read_signing_keys)?
            .iter()
            .map(|k| self.keys.open_signing_key(k))
            .collect()
    }

    async fn bootstrap_signing_key(
        &self,
        candidate: StoredSigningKey,
    ) -> Result<StoredSigningKey, StoreError> {
        let stored = self.keys.seal_signing_key(&candidate);
        let winner = self.submit(|r| Job::BootstrapKey(stored, r)).await?;
        self.keys.open_signing_key(&winner)
    }

    async fn add_signing_key(&self, key: StoredSigningKey) -> Result<(), StoreError> {
        let stored = self.keys.seal_signing_key(&key);
        self.submit(|r| Job::AddKey(stored, r)).await
    }
}

#[async_trait]
impl KeyMaterialStore for SqliteStore {
    async fn seal_status(&self) -> Result<SealStatus, StoreError> {
        let resources = self.read(|c| read_resources(c, false))?;
        let keys = self.read(read_signing_keys)?;
        Ok(count_sealed(&resources, &keys))
    }

    async fn reseal_keys(&self) -> Result<usize, StoreError> {
        let resources = self.read(|c| read_resources(c, false))?;
        let keys = self.read(read_signing_keys)?;
        let plan = KeyRewrite::plan(&self.keys, resources, keys)?;
        self.submit(|r| Job::RewriteKeys(plan, r)).await
    }
}

#[async_trait]
impl AssignmentStore for SqliteStore {
    async fn get_assignment(
        &self,
        resource: ResourceId,
        tenant: Uuid,
        object: Uuid,
    ) -> Result<Option<TeamsAssignment>, StoreError> {
        let (resource, tenant, object) = assignment_key(resource, tenant, object);
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {ASSIGNMENT_COLUMNS} FROM teams_assignments
                 WHERE resource_id = ?1 AND tenant_id = ?2 AND object_id = ?3"
            ))
            .and_then(|mut s| {
                s.query_row(params![resource, tenant, object], assignment_from_row)
                    .optional()
            })
            .map_err(backend)?
            .map(|row| assignment_record(row).map(|(_, a)| a))
            .transpose()
        })
    }

    async fn put_assignment(
        &self,
        resource: ResourceId,
        assignment: TeamsAssignment,
    ) -> Result<bool, StoreError> {
        self.submit(|r| Job::PutAssignment(resource, assignment, r))
            .await
    }

    async fn delete_assignment(
        &self,
        resource: ResourceId,
        tenant: Uuid,
        object: Uuid,
    ) -> Result<bool, StoreError> {
        let key = assignment_key(resource, tenant, object);
        self.submit(|r| Job::DeleteAssignment(key, r)).await
    }

    async fn all_assignments(&self) -> Result<Vec<(ResourceId, TeamsAssignment)>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ASSIGNMENT_COLUMNS} FROM teams_assignments
                     ORDER BY resource_id, tenant_id, object_id"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map([], assignment_from_row).map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(assignment_record(row.map_err(backend)?)?);
            }
            Ok(out)
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
    }

    async fn close(&self) {
        if self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            let _ = self.submit(Job::Flush).await;
        }
        // Dropping the sender lets the writer drain, flush and exit.
        drop(self.writer.lock().unwrap_or_else(|e| e.into_inner()).take());
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        drop(self.writer.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}
