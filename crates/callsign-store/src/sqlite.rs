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
//! * **Faults**: a write that fails because the disk is full, the file system read-only or the
//!   disk failing (`SQLITE_FULL`, `SQLITE_READONLY*`, `SQLITE_IOERR*`, `SQLITE_CANTOPEN`) is
//!   [`StoreError::cannot_write`] and puts the store in a *cannot write* state ([`WriteHealth`]:
//!   one log line when it starts, one when it ends, [`Store::writable`] meanwhile). Reads go on.
//!   While in it, the writer thread tries a tiny durable write once a second when no client
//!   write has failed in that second, so the store recovers by itself once the cause clears.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use callsign_core::token::Algorithm;
use callsign_core::{
    AccessAssignment, AccessKey, CustomId, IdentityId, PrincipalType, ResourceId, TeamsAssignment,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::audit::{
    AUDIT_COLUMNS, Actor, AuditEvent, AuditLog, AuditOperation, AuditOutcome, AuditQuery,
    AuditRecord, AuditRow, AuditValues, TokenCount,
};
use crate::feed::{FeedSignal, position, revocation_from};
use crate::{
    AssignmentStore, BulkIdentities, Created, IdentityFilter, IdentityPage, IdentityRecord,
    IdentityStore, ImportReport, KeyRotation, NewIdentity, PendingTokenTimes, PoolStatus,
    ResourceRecord, ResourceStore, Rotation, SigningKeyStore, Store, StoreError, StoreHealth,
    StoredSigningKey, Tombstone, TombstoneReport, from_unix_ms as from_ms, scan_rows,
    stored_custom_id, unix_ms as ms,
};
use crate::{FeedEvent, FeedRead, Revocation, RevocationFeed, RevocationKind};
use crate::{
    KeyMaterialStore, KeyProtection, KeyRewrite, KeySlot, MAX_RESOURCES_PER_HOST, ResourceCreated,
    ResourceDeleted, SealStatus, StoredResource, count_sealed, key_replaced_event,
    resource_created_event, resource_deleted_event,
};

mod access;
mod cache;

use cache::{Changed, IdentityCache};

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
    // A resource's identities in id order: a listing page is one range scan.
    r#"
CREATE INDEX identities_by_resource ON identities(resource_id, id);
"#,
    // Several resources: a unique name, the host name that routes to it (NULL: the server's
    // own address), a verify-only key; and the counter running nodes poll to see that
    // resources or keys changed.
    r#"
ALTER TABLE resources ADD COLUMN name TEXT;
ALTER TABLE resources ADD COLUMN host TEXT;
ALTER TABLE resources ADD COLUMN verify_key TEXT;
UPDATE resources SET name = 'default' WHERE is_default = 1;
UPDATE resources SET name = 'resource-' || substr(id, 1, 8) WHERE name IS NULL;
CREATE UNIQUE INDEX resources_by_name ON resources(name);
CREATE TABLE config_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO config_generation (id, generation) VALUES (1, 0);
CREATE TABLE resource_tombstones (
    id            TEXT PRIMARY KEY,
    deleted_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // The audit log (one record per change, written in the change's transaction) and the
    // tokens issued per resource (written by the token-time flush).
    r#"
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    resource_id TEXT,
    operation   TEXT NOT NULL,
    identity_id TEXT,
    outcome     TEXT NOT NULL,
    credential  TEXT NOT NULL,
    client      TEXT,
    request_id  TEXT,
    detail      TEXT
);
CREATE INDEX audit_log_at ON audit_log(at_ms);
CREATE INDEX audit_log_resource ON audit_log(resource_id, seq);
CREATE TABLE token_counts (
    resource_id       TEXT PRIMARY KEY,
    count             INTEGER NOT NULL,
    last_issued_at_ms INTEGER
) WITHOUT ROWID;
"#,
    // Signing-key rotation: when a key starts signing (keys stored before: when created) and
    // when it may be retired (set when a successor is added).
    r#"
ALTER TABLE signing_keys ADD COLUMN activates_at_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE signing_keys ADD COLUMN retire_after_ms INTEGER;
UPDATE signing_keys SET activates_at_ms = created_at_ms;
"#,
    // The revocation feed: per resource, a counter of positions (locked by each change until
    // it commits, so positions follow commit order) and the highest position pruned; the
    // events; the epoch a deleted identity had; indexes for the feed's snapshot.
    r#"
ALTER TABLE identity_tombstones ADD COLUMN revocation_epoch INTEGER NOT NULL DEFAULT 0;
CREATE INDEX identity_tombstones_by_resource ON identity_tombstones(resource_id, id);
CREATE INDEX identities_revoked ON identities(resource_id, id) WHERE revocation_epoch > 0;
CREATE TABLE revocation_heads (
    resource_id    TEXT PRIMARY KEY,
    seq            INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE revocation_events (
    resource_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    identity_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    PRIMARY KEY (resource_id, seq)
) WITHOUT ROWID;
CREATE INDEX revocation_events_at ON revocation_events(at_ms);
"#,
    // Access assignments of trusted identity providers' principals, keyed by object id within
    // a resource (text in byte order, SQLite's own); `scopes`: NULL for the trusted issuer's,
    // else their claim form (`chat,voip`). And whose bearer token made a change.
    r#"
CREATE TABLE access_assignments (
    resource_id    TEXT NOT NULL,
    object_id      TEXT NOT NULL,
    tenant_id      TEXT NOT NULL,
    principal_type TEXT NOT NULL,
    scopes         TEXT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (resource_id, object_id)
) WITHOUT ROWID;
ALTER TABLE audit_log ADD COLUMN subject TEXT;
"#,
];

const READERS: usize = 4;
const MAX_BATCH: usize = 512;
const TOUCH_FLUSH: Duration = Duration::from_secs(1);
/// How often a store that cannot write checks, by itself, whether it can again.
const WRITE_CHECK: Duration = Duration::from_secs(1);

/// The embedded SQLite store. Cheap to clone handles are not offered: share it in an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<std_mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    touched: Arc<PendingTokenTimes>,
    /// The revocation epochs recently read, for the issue path; see [`cache`].
    cache: Arc<IdentityCache>,
    keys: KeyProtection,
    health: Arc<WriteHealth>,
    /// Moved after every commit with feed events, by this process or (seen by the watcher
    /// thread) another one sharing the file.
    signal: Arc<FeedSignal>,
    /// Cleared to stop the feed watcher thread.
    watching: Arc<AtomicBool>,
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
    Create(NewIdentity, Actor, Reply<Created>),
    Revoke(IdentityId, Actor, Reply<Option<u64>>),
    Delete(IdentityId, Actor, Reply<bool>),
    Bootstrap(StoredResource, Reply<StoredResource>),
    CreateResource(StoredResource, Actor, Reply<ResourceCreated>),
    DeleteResource(ResourceId, Actor, Reply<ResourceDeleted>),
    ReplaceKey(KeyReplacement, Actor, Reply<Option<u64>>),
    RewriteKeys(KeyRewrite, Reply<usize>),
    AddKey(StoredSigningKey, Reply<()>),
    BootstrapKey(StoredSigningKey, Reply<StoredSigningKey>),
    RotateKey(KeyRotation, Reply<Rotation>),
    RetireKeys(i64, Reply<Vec<String>>),
    Import(Vec<IdentityRecord>, Reply<ImportReport>),
    ImportTombstones(Vec<Tombstone>, Reply<TombstoneReport>),
    PutAssignment(ResourceId, TeamsAssignment, Actor, Reply<bool>),
    DeleteAssignment(ResourceId, Uuid, Uuid, Actor, Reply<bool>),
    Access(access::AccessJob),
    ImportAudit(Vec<AuditRecord>, Reply<usize>),
    RecordAudit(Actor, AuditEvent, Reply<()>),
    PruneAudit(i64, usize, Reply<usize>),
    PruneFeed(i64, usize, Reply<usize>),
    Flush(Reply<()>),
    /// Runs SQL on the writer's connection, inside the batch (tests only).
    #[cfg(test)]
    Exec(&'static str, Reply<()>),
}

impl Job {
    /// Notes the identities the job may change, for the cache.
    /// Every job is named here (no catch-all), so that a new one must say what it changes.
    fn changes(&self, changed: &mut Changed) {
        match self {
            Job::Revoke(id, ..) | Job::Delete(id, ..) => changed.one(*id),
            // A key replaced with --revoke-tokens moves every epoch of its resource.
            Job::DeleteResource(..)
            | Job::ReplaceKey(..)
            | Job::Import(..)
            | Job::ImportTombstones(..) => *changed = Changed::Any,
            #[cfg(test)]
            Job::Exec(..) => *changed = Changed::Any,
            // A new identity was in no one's cache (a miss is never kept).
            Job::Create(..)
            | Job::Bootstrap(..)
            | Job::CreateResource(..)
            | Job::RewriteKeys(..)
            | Job::AddKey(..)
            | Job::BootstrapKey(..)
            | Job::RotateKey(..)
            | Job::RetireKeys(..)
            | Job::PutAssignment(..)
            | Job::DeleteAssignment(..)
            | Job::Access(..)
            | Job::ImportAudit(..)
            | Job::RecordAudit(..)
            | Job::PruneAudit(..)
            | Job::PruneFeed(..)
            | Job::Flush(..) => {}
        }
    }

    /// The resource whose revocation feed the job may write events to.
    fn feed_resource(&self) -> Option<ResourceId> {
        match self {
            Job::Revoke(id, ..) | Job::Delete(id, ..) => Some(id.resource()),
            Job::DeleteResource(resource, ..) => Some(*resource),
            Job::ReplaceKey(replacement, ..) => Some(replacement.resource),
            _ => None,
        }
    }
}

/// How often the feed watcher looks for commits of other processes sharing the file.
const FEED_WATCH: Duration = Duration::from_millis(250);

/// Starts the thread that moves `signal` when another process (a `callsign keys` command, say)
/// commits feed events to the file: it reads `PRAGMA data_version` (which moves on any other
/// connection's commit) every [`FEED_WATCH`], and the feed heads when it moved.
fn spawn_feed_watcher(
    path: &Path,
    signal: Arc<FeedSignal>,
    watching: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    let conn = open_reader(path)?;
    std::thread::Builder::new()
        .name("callsign-sqlite-feed".into())
        .spawn(move || {
            let mut version = 0i64;
            let mut heads: Option<HashMap<String, i64>> = None;
            while watching.load(Ordering::Acquire) {
                std::thread::sleep(FEED_WATCH);
                let now: i64 = conn
                    .query_row("PRAGMA data_version", [], |r| r.get(0))
                    .unwrap_or(version);
                if now == version {
                    continue;
                }
                version = now;
                let Some(current) = feed_heads(&conn) else {
                    continue;
                };
                // Each resource whose head moved: only its waiters read again.
                let moved = heads.iter().flat_map(|before| {
                    current
                        .iter()
                        .filter(move |(r, seq)| before.get(*r) != Some(*seq))
                        .map(|(r, _)| r)
                });
                for resource in moved {
                    match ResourceId::parse(resource) {
                        Ok(id) => signal.bump_resource(id),
                        Err(_) => signal.bump(),
                    }
                }
                heads = Some(current);
            }
        })
        .map(drop)
        .map_err(|e| StoreError::backend("cannot start the feed watcher thread").caused_by(e))
}

/// Every resource's feed head, or `None` when they cannot be read now.
fn feed_heads(conn: &Connection) -> Option<HashMap<String, i64>> {
    let mut stmt = conn
        .prepare_cached("SELECT resource_id, seq FROM revocation_heads")
        .ok()?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .ok()?;
    rows.collect::<Result<_, _>>().ok()
}

/// A new access key for a resource's slot, in its stored form, and whether to revoke every token
/// of the resource with it.
struct KeyReplacement {
    resource: ResourceId,
    slot: KeySlot,
    stored: String,
    revoke_tokens: bool,
}

/// An assignment's primary key as stored: resource, tenant, object (lowercase hyphenated).
type AssignmentKey = (String, String, String);

fn assignment_key(resource: ResourceId, tenant: Uuid, object: Uuid) -> AssignmentKey {
    (resource.to_string(), tenant.to_string(), object.to_string())
}

const DISK_FULL: &str = "disk full";

/// What keeps SQLite from writing, for errors that say the store cannot write now (and may
/// later): the disk is full, the file or file system is read-only, the disk fails, a file
/// cannot be opened (or created). Corruption, constraint violations and the like are not.
fn write_failure(e: &rusqlite::Error) -> Option<&'static str> {
    let rusqlite::Error::SqliteFailure(f, _) = e else {
        return None;
    };
    match f.code {
        rusqlite::ErrorCode::DiskFull => Some(DISK_FULL),
        rusqlite::ErrorCode::ReadOnly => Some("read-only"),
        rusqlite::ErrorCode::SystemIoFailure => Some("I/O error"),
        rusqlite::ErrorCode::CannotOpen => Some("cannot open its files"),
        _ => None,
    }
}

/// Busy and locked: unavailable; cannot write (see [`write_failure`]): unavailable too, as
/// [`StoreError::cannot_write`]; anything else: a backend failure. The SQLite error is the
/// source.
fn backend(e: rusqlite::Error) -> StoreError {
    if let Some(reason) = write_failure(&e) {
        return StoreError::cannot_write(reason).caused_by(e);
    }
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::unavailable("SQLite").caused_by(e)
        }
        _ => StoreError::backend("SQLite").caused_by(e),
    }
}

/// A read that failed for a reason [`backend`] calls "cannot write" (an I/O error, say) is
/// plainly unavailable: only the writer, which reports the state, answers `cannot_write`.
fn read_error(e: StoreError) -> StoreError {
    match e {
        StoreError::Unavailable { detail, source, .. } => StoreError::Unavailable {
            detail,
            cannot_write: false,
            source,
        },
        other => other,
    }
}

/// Why a database cannot be opened for writing, in words an operator can act on: the path, and
/// whether its directory is read-only or not writable by this user.
fn open_error(path: &Path, e: StoreError) -> StoreError {
    let StoreError::Unavailable {
        detail,
        cannot_write: true,
        source,
    } = e
    else {
        return e;
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Ask the file system itself: its answer names the cause (read-only, permission denied).
    let check = dir.join(format!(".callsign-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&check)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&check);
            StoreError::Backend {
                detail: format!("cannot write the database {}: {detail}", path.display()),
                source,
            }
        }
        Err(io) => StoreError::backend(format!(
            "cannot write the database {}: the directory {} is not writable; callsign writes \
             the database and its -wal and -shm files there",
            path.display(),
            dir.display()
        ))
        .caused_by(io),
    }
}

/// Whether the writer can write. Set by the writer thread from what its writes (and checks)
/// meet; read by [`Store::writable`]. Entering the state, and leaving it, each log one line.
#[derive(Debug)]
struct WriteHealth {
    path: PathBuf,
    failing: AtomicBool,
    /// What keeps it from writing, while it cannot.
    cause: Mutex<Option<String>>,
    /// When a write last failed: near a full disk some writes still fit, and the state must not
    /// flap (nor the log fill) with each of them.
    last_failure: Mutex<Option<std::time::Instant>>,
}

/// A failing store counts as writing again only after this long without a failed write, so
/// the state (and its two log lines) changes at most about once per this period.
const RECOVERY_QUIET: Duration = Duration::from_secs(2);

impl WriteHealth {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            failing: AtomicBool::new(false),
            cause: Mutex::new(None),
            last_failure: Mutex::new(None),
        }
    }

    fn cause(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.cause.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<(), StoreError> {
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.cause().as_deref() {
            Some(cause) => Err(StoreError::cannot_write(format!(
                "{cause} at {}",
                self.path.display()
            ))),
            None => Ok(()),
        }
    }

    /// A write failed with a [`StoreError::cannot_write`] (its detail: `cause`).
    fn failed(&self, cause: &str) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
        let mut current = self.cause();
        if current.as_deref() != Some(cause) {
            {
                tracing::warn!(
                    path = %self.path.display(),
                    "the store cannot write: {cause} at {}; writes are refused as unavailable \
                     until it can (checked every second), reads go on",
                    self.path.display()
                );
            }
            *current = Some(cause.to_owned());
        }
        self.failing.store(true, Ordering::Release);
    }

    /// A write reached the disk.
    fn wrote(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let recent = self
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < RECOVERY_QUIET);
        if recent {
            // One write that still fitted near a full disk is not a recovery.
            return;
        }
        let mut current = self.cause();
        if current.take().is_some() {
            {
                tracing::info!(
                    path = %self.path.display(),
                    "the store can write again at {}",
                    self.path.display()
                );
            }
        }
        self.failing.store(false, Ordering::Release);
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Applies what a batch, a flush or a check met; true when it met a failure to write.
    fn note(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Idle => false,
            Outcome::Wrote => {
                self.wrote();
                false
            }
            Outcome::CannotWrite(cause) => {
                self.failed(&cause);
                true
            }
        }
    }
}

/// What a writer-thread transaction tells about the store's ability to write.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Nothing was written (nothing to do, or only reads and no-ops).
    Idle,
    /// Something was committed.
    Wrote,
    /// A write failed with a [`StoreError::cannot_write`] of this detail.
    CannotWrite(String),
}

impl Outcome {
    /// The outcome of a failure: `CannotWrite` for a [`StoreError::cannot_write`], its detail
    /// followed by its cause, if any, in parentheses ("disk full (database or disk is full)").
    fn of(e: &StoreError) -> Option<Outcome> {
        let StoreError::Unavailable {
            detail,
            cannot_write: true,
            source,
        } = e
        else {
            return None;
        };
        Some(Outcome::CannotWrite(match source {
            Some(cause) => format!("{detail} ({cause})"),
            None => detail.clone(),
        }))
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
    /// A database that cannot be written (a read-only file or file system, a directory this user
    /// cannot create the `-wal` and `-shm` files in) is refused with an error naming the path.
    pub fn open_with(path: impl AsRef<Path>, keys: KeyProtection) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path)
            .map_err(backend)
            .map_err(|e| open_error(&path, e))?;
        // SQLite opens a file it may not write read-only, silently: refuse it here rather than
        // fail every write later.
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(backend)
            .map_err(|e| open_error(&path, e))?
        {
            return Err(StoreError::backend(format!(
                "cannot write the database {}: it opens read-only (no write permission for this \
                 user, or a read-only file system)",
                path.display()
            )));
        }
        configure(&conn, false).map_err(|e| open_error(&path, e))?;
        migrate(&mut conn).map_err(|e| open_error(&path, e))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(&path).map_err(|e| open_error(&path, e))?);
        }
        // A write at every start: SQLite opens a database whose directory (or existing -wal
        // file) is read-only without complaint, and only its first write would tell. Such a
        // start is refused; one on a full disk is not (reads can be served): the store starts
        // in its cannot-write state.
        let health = Arc::new(WriteHealth::new(&path));
        match check_writable(&mut conn) {
            Outcome::CannotWrite(cause) if cause.starts_with(DISK_FULL) => health.failed(&cause),
            Outcome::CannotWrite(cause) => {
                return Err(open_error(&path, StoreError::cannot_write(cause)));
            }
            Outcome::Wrote | Outcome::Idle => {}
        }
        let touched = Arc::new(PendingTokenTimes::default());
        let cache = Arc::new(IdentityCache::default());
        let (tx, rx) = std_mpsc::channel();
        let thread_touched = Arc::clone(&touched);
        let thread_cache = Arc::clone(&cache);
        let thread_health = Arc::clone(&health);
        let signal = Arc::new(FeedSignal::default());
        let thread_signal = Arc::clone(&signal);
        let watching = Arc::new(AtomicBool::new(true));
        spawn_feed_watcher(&path, Arc::clone(&signal), Arc::clone(&watching))?;
        let memory = Memory {
            touched: thread_touched,
            cache: thread_cache,
        };
        let thread = std::thread::Builder::new()
            .name("callsign-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, memory, thread_health, thread_signal))
            .map_err(|e| StoreError::backend("cannot start the writer thread").caused_by(e))?;
        Ok(Self {
            path,
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            readers: Mutex::new(readers),
            touched,
            cache,
            keys,
            health,
            signal,
            watching,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version this binary knows (`PRAGMA user_version` once every migration ran).
    pub fn latest_migration() -> i64 {
        MIGRATIONS.len() as i64
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let sender = guard
                .as_ref()
                .ok_or_else(|| StoreError::unavailable("the store is closed"))?;
            sender
                .send(make(tx))
                .map_err(|_| StoreError::unavailable("the writer thread has stopped"))?;
        }
        rx.await
            .map_err(|_| StoreError::unavailable("the writer thread has stopped"))?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path).map_err(read_error)?,
        };
        let result = f(&conn).map_err(read_error);
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
            return Err(StoreError::backend(format!(
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
        return Err(StoreError::backend(format!(
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

/// One listing page: at most `?6` rows of the resource's id index after `?2` are scanned; the
/// first row says how many and the last id among them, with the first of at most `?5` matches
/// of the filters (`?3` custom id prefix, `?4` token time), one a row (none: one row of NULLs).
const LIST_PAGE: &str = "
WITH scanned AS (
    SELECT id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms
    FROM identities INDEXED BY identities_by_resource
    WHERE resource_id = ?1 AND id > ?2 ORDER BY id LIMIT ?6
), summary AS (SELECT count(*) AS n, max(id) AS last FROM scanned)
SELECT summary.n, summary.last, m.id, m.custom_id, m.created_at_ms, m.revocation_epoch,
       m.last_token_issued_at_ms
FROM summary LEFT JOIN (
    SELECT * FROM scanned
    WHERE (?3 IS NULL OR substr(custom_id, 1, length(?3)) = ?3)
      AND (?4 IS NULL OR last_token_issued_at_ms IS NULL OR last_token_issued_at_ms < ?4)
    ORDER BY id LIMIT ?5
) AS m ON 1 = 1
ORDER BY m.id";

/// A row of [`LIST_PAGE`]: rows scanned, the last id scanned, and a match if any.
type ListedRow = (i64, Option<String>, Option<IdentityRow>);

fn listed_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListedRow> {
    let matched = match r.get::<_, Option<String>>(2)? {
        Some(id) => Some((id, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        None => None,
    };
    Ok((r.get(0)?, r.get(1)?, matched))
}

/// A stored identity id; one that does not parse is corrupt data.
fn parse_identity_id(id: &str) -> Result<IdentityId, StoreError> {
    IdentityId::parse(id).map_err(|_| StoreError::corrupt(format!("identity id {id:?}")))
}

/// An identity row as read: id, custom id, created, epoch, last token.
type IdentityRow = (String, Option<String>, i64, i64, Option<i64>);

fn identity_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdentityRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn identity_record(row: IdentityRow) -> Result<IdentityRecord, StoreError> {
    let (id, custom_id, created, epoch, last) = row;
    Ok(IdentityRecord {
        id: IdentityId::parse(&id)
            .map_err(|_| StoreError::corrupt(format!("identity id {id:?}")))?,
        custom_id: stored_custom_id(&id, custom_id)?,
        created_at: from_ms(created)?,
        revocation_epoch: u64::try_from(epoch)
            .map_err(|_| StoreError::corrupt(format!("negative revocation epoch for {id}")))?,
        last_token_issued_at: last.map(from_ms).transpose()?,
    })
}

/// What the writer keeps up to date in memory besides the database.
struct Memory {
    touched: Arc<PendingTokenTimes>,
    cache: Arc<IdentityCache>,
}

fn writer_loop(
    mut conn: Connection,
    rx: std_mpsc::Receiver<Job>,
    memory: Memory,
    health: Arc<WriteHealth>,
    signal: Arc<FeedSignal>,
) {
    let mut last_flush = Instant::now();
    // When a write last failed or the store last checked whether it can write.
    let mut last_check = Instant::now();
    let mut others = OtherWriters::new(&conn);
    loop {
        let first = match rx.recv_timeout(FEED_WATCH) {
            Ok(job) => Some(job),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                health.note(flush_touched(&mut conn, &memory.touched));
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
        let feeds: Vec<ResourceId> = batch.iter().filter_map(Job::feed_resource).collect();
        if run_batch(&mut conn, batch, &memory, &health) {
            last_check = Instant::now();
        }
        // Committed or not, those resources' waiters read again: a spurious wake costs a read.
        for resource in feeds {
            signal.bump_resource(resource);
        }
        // Token times are written at most once a second, whatever the write load.
        if last_flush.elapsed() >= TOUCH_FLUSH {
            if health.note(flush_touched(&mut conn, &memory.touched)) {
                last_check = Instant::now();
            }
            last_flush = Instant::now();
        }
        others.check(&conn, &memory.cache);
        // A store that cannot write checks by itself, once a second, unless a write has just
        // failed (then that write was the check).
        if health.is_failing() && last_check.elapsed() >= WRITE_CHECK {
            health.note(check_writable(&mut conn));
            last_check = Instant::now();
        }
    }
}

/// Commits by other connections to the file, seen from the writer's own connection: its
/// `PRAGMA data_version` moves only for those (in this process only the writer writes, so they
/// are another process's, a `callsign` command on the data dir, say), which may have changed
/// identities the cache holds.
struct OtherWriters {
    version: Option<i64>,
    checked: Instant,
}

impl OtherWriters {
    fn new(conn: &Connection) -> Self {
        Self {
            version: Self::read(conn),
            checked: Instant::now(),
        }
    }

    fn read(conn: &Connection) -> Option<i64> {
        conn.query_row("PRAGMA data_version", [], |r| r.get(0)).ok()
    }

    /// Empties the cache when another connection committed since the last check (at most
    /// every [`FEED_WATCH`]; a version that cannot be read counts as moved).
    fn check(&mut self, conn: &Connection, cache: &IdentityCache) {
        if self.checked.elapsed() < FEED_WATCH {
            return;
        }
        self.checked = Instant::now();
        let now = Self::read(conn);
        if now.is_none() || now != self.version {
            cache.invalidate(&Changed::Any);
        }
        self.version = now;
    }
}

/// A tiny durable write (the schema version written again as it is), then a passive
/// checkpoint: whether the database takes a commit and its WAL can be copied back into it.
fn check_writable(conn: &mut Connection) -> Outcome {
    let result = (|| -> rusqlite::Result<()> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    })();
    match result {
        Ok(()) => Outcome::Wrote,
        Err(e) => Outcome::of(&backend(e)).unwrap_or(Outcome::Idle),
    }
}

/// Makes sure commits are fsync'd (`synchronous=FULL`, value 2), setting it back if needed.
fn ensure_full_sync(conn: &Connection) -> rusqlite::Result<()> {
    let level: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    if level != 2 {
        conn.pragma_update(None, "synchronous", "FULL")?;
        let level: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
        if level != 2 {
            return Err(rusqlite::Error::InvalidQuery);
        }
    }
    Ok(())
}

fn flush_touched(conn: &mut Connection, touched: &PendingTokenTimes) -> Outcome {
    let pending = touched.take();
    let counts = touched.take_counts();
    if pending.is_empty() && counts.is_empty() {
        return Outcome::Idle;
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
            let mut stmt = tx.prepare_cached(
                "INSERT INTO token_counts (resource_id, count, last_issued_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (resource_id) DO UPDATE SET count = count + excluded.count,
                   last_issued_at_ms = max(coalesce(last_issued_at_ms, 0), excluded.last_issued_at_ms)",
            )?;
            for (resource, c) in &counts {
                stmt.execute(params![resource.to_string(), c.count, c.last_ms])?;
            }
        }
        tx.commit()
    })();
    if let Err(e) = conn.pragma_update(None, "synchronous", "FULL") {
        // The next batch checks again and refuses to acknowledge anything until it holds.
        tracing::error!(error = %e, "could not restore synchronous=FULL");
    }
    match result {
        Ok(()) => Outcome::Wrote,
        Err(e) => {
            let e = backend(e);
            match Outcome::of(&e) {
                // Kept for the next flush; the store logs its state once, not every second.
                Some(outcome) => {
                    touched.add_counts(&counts);
                    for (id, at) in pending {
                        if let Ok(at) = from_ms(at) {
                            touched.keep(&id, at);
                        }
                    }
                    outcome
                }
                None => {
                    tracing::warn!(error = %e.chain(), "could not record last-token times");
                    Outcome::Idle
                }
            }
        }
    }
}

/// One group commit: every job in its own savepoint, one fsync for all. What the batch tells
/// about the store's ability to write is noted in `health` before any job is answered (a client
/// told "cannot write" finds the store in that state); true when it met a failure to write.
fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    memory: &Memory,
    health: &WriteHealth,
) -> bool {
    if batch.is_empty() {
        return false;
    }
    // Durability fails closed: nothing is acknowledged unless commits are fsync'd
    // (`synchronous=FULL`; the token-time flush lowers it for itself and restores it).
    if let Err(e) = ensure_full_sync(conn) {
        tracing::error!(error = %e, "synchronous=FULL cannot be restored; writes are refused");
        let err = StoreError::unavailable("durable commits are not possible").caused_by(e);
        for job in batch {
            fail(job, err.clone());
        }
        return false;
    }
    let changes_before = conn.total_changes();
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let err = match backend(e) {
                StoreError::Backend { detail, source } => StoreError::Unavailable {
                    detail,
                    cannot_write: false,
                    source,
                },
                other => other,
            };
            let failed = health.note(Outcome::of(&err).unwrap_or(Outcome::Idle));
            for job in batch {
                fail(job, err.clone());
            }
            return failed;
        }
    };
    let mut done: Vec<Answer> = Vec::with_capacity(batch.len());
    let mut failure = None;
    let mut succeeded = false;
    let mut changed = Changed::Nothing;
    for job in batch {
        job.changes(&mut changed);
        let (answer, outcome) = run_job(&tx, job, &memory.touched);
        done.push(answer);
        match outcome {
            Ok(()) => succeeded = true,
            Err(Some(cannot_write)) => failure = Some(cannot_write),
            Err(None) => {}
        }
    }
    let committed = tx.commit();
    // Committed or not, before anyone is answered (see `cache`).
    memory.cache.invalidate(&changed);
    match committed {
        Ok(()) => {
            let failed = health.note(match failure {
                Some(cause) => Outcome::CannotWrite(cause),
                None if succeeded && conn.total_changes() > changes_before => Outcome::Wrote,
                None => Outcome::Idle,
            });
            done.into_iter().for_each(|f| f(None));
            failed
        }
        Err(e) => {
            let mut err = backend(e);
            if let (Some(cause), false) = (&failure, err.is_cannot_write()) {
                // A job could not write and took the transaction with it ("no transaction is
                // active"): the batch failed for that.
                err = StoreError::cannot_write(cause);
            }
            let outcome = Outcome::of(&err);
            if outcome.is_none() {
                tracing::error!(error = %err.chain(), "commit failed");
            }
            let failed = health.note(outcome.unwrap_or(Outcome::Idle));
            done.into_iter().for_each(|f| f(Some(err.clone())));
            failed
        }
    }
}

fn fail(job: Job, e: StoreError) {
    match job {
        Job::Create(_, _, r) => drop(r.send(Err(e))),
        Job::Revoke(_, _, r) => drop(r.send(Err(e))),
        Job::Delete(_, _, r) => drop(r.send(Err(e))),
        Job::Bootstrap(_, r) => drop(r.send(Err(e))),
        Job::CreateResource(_, _, r) => drop(r.send(Err(e))),
        Job::DeleteResource(_, _, r) => drop(r.send(Err(e))),
        Job::ReplaceKey(_, _, r) => drop(r.send(Err(e))),
        Job::RewriteKeys(_, r) => drop(r.send(Err(e))),
        Job::AddKey(_, r) => drop(r.send(Err(e))),
        Job::BootstrapKey(_, r) => drop(r.send(Err(e))),
        Job::RotateKey(_, r) => drop(r.send(Err(e))),
        Job::RetireKeys(_, r) => drop(r.send(Err(e))),
        Job::Import(_, r) => drop(r.send(Err(e))),
        Job::ImportTombstones(_, r) => drop(r.send(Err(e))),
        Job::PutAssignment(_, _, _, r) => drop(r.send(Err(e))),
        Job::DeleteAssignment(_, _, _, _, r) => drop(r.send(Err(e))),
        Job::Access(job) => job.fail(e),
        Job::ImportAudit(_, r) => drop(r.send(Err(e))),
        Job::RecordAudit(_, _, r) => drop(r.send(Err(e))),
        Job::PruneAudit(_, _, r) => drop(r.send(Err(e))),
        Job::PruneFeed(_, _, r) => drop(r.send(Err(e))),
        Job::Flush(r) => drop(r.send(Err(e))),
        #[cfg(test)]
        Job::Exec(_, r) => drop(r.send(Err(e))),
    }
}

/// What one job met: success, or a failure (with the detail of a
/// [`StoreError::cannot_write`]).
type JobOutcome = Result<(), Option<String>>;

/// Answers a job once its batch's fate is known (`Some`: the commit failed).
type Answer = Box<dyn FnOnce(Option<StoreError>)>;

/// Runs `f` in a savepoint of `tx`: a failing job leaves nothing of itself in the batch.
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

/// The function that answers a job with `result` once its batch's fate is known, and what the
/// job met.
fn answer<T: Send + 'static>(
    reply: Reply<T>,
    result: Result<T, StoreError>,
) -> (Answer, JobOutcome) {
    let outcome = match &result {
        Ok(_) => Ok(()),
        Err(e) => Err(match Outcome::of(e) {
            Some(Outcome::CannotWrite(cause)) => Some(cause),
            _ => None,
        }),
    };
    let answer = Box::new(move |commit_error| {
        let _ = reply.send(match commit_error {
            Some(e) => Err(e),
            None => result,
        });
    });
    (answer, outcome)
}

/// Runs one job in a savepoint and returns the function that answers it once the batch's fate
/// is known (a commit failure turns every success into that failure), and what it met.
fn run_job(
    tx: &rusqlite::Transaction<'_>,
    job: Job,
    touched: &PendingTokenTimes,
) -> (Answer, JobOutcome) {
    match job {
        Job::Create(new, actor, reply) => {
            answer(reply, in_savepoint(tx, |tx| create(tx, &new, &actor)))
        }
        Job::Revoke(id, actor, reply) => {
            answer(reply, in_savepoint(tx, |tx| revoke(tx, &id, &actor)))
        }
        Job::Delete(id, actor, reply) => {
            touched.forget(&id);
            answer(reply, in_savepoint(tx, |tx| delete(tx, &id, &actor)))
        }
        Job::Bootstrap(candidate, reply) => {
            answer(reply, in_savepoint(tx, |tx| bootstrap(tx, candidate)))
        }
        Job::CreateResource(resource, actor, reply) => answer(
            reply,
            in_savepoint(tx, |tx| create_resource(tx, &resource, &actor)),
        ),
        Job::DeleteResource(id, actor, reply) => answer(
            reply,
            in_savepoint(tx, |tx| delete_resource(tx, id, &actor)),
        ),
        Job::ReplaceKey(replacement, actor, reply) => answer(
            reply,
            in_savepoint(tx, |tx| replace_key(tx, &replacement, &actor)),
        ),
        Job::RewriteKeys(plan, reply) => {
            answer(reply, in_savepoint(tx, |tx| rewrite_keys(tx, &plan)))
        }
        Job::AddKey(key, reply) => answer(reply, in_savepoint(tx, |tx| insert_key(tx, &key))),
        Job::BootstrapKey(candidate, reply) => {
            answer(reply, in_savepoint(tx, |tx| bootstrap_key(tx, candidate)))
        }
        Job::RotateKey(rotation, reply) => {
            answer(reply, in_savepoint(tx, |tx| rotate_key(tx, &rotation)))
        }
        Job::RetireKeys(now, reply) => answer(reply, in_savepoint(tx, |tx| retire_keys(tx, now))),
        Job::Import(records, reply) => answer(reply, in_savepoint(tx, |tx| import(tx, &records))),
        Job::ImportTombstones(tombstones, reply) => {
            tombstones.iter().for_each(|t| touched.forget(&t.id));
            answer(
                reply,
                in_savepoint(tx, |tx| import_tombstones(tx, &tombstones)),
            )
        }
        Job::PutAssignment(resource, assignment, actor, reply) => answer(
            reply,
            in_savepoint(tx, |tx| put_assignment(tx, resource, &assignment, &actor)),
        ),
        Job::DeleteAssignment(resource, tenant, object, actor, reply) => answer(
            reply,
            in_savepoint(tx, |tx| {
                delete_assignment(tx, (resource, tenant, object), &actor)
            }),
        ),
        Job::Access(job) => job.run(tx),
        Job::ImportAudit(records, reply) => {
            answer(reply, in_savepoint(tx, |tx| import_audit(tx, &records)))
        }
        Job::RecordAudit(actor, event, reply) => answer(
            reply,
            in_savepoint(tx, |tx| write_audit(tx, &actor, &event)),
        ),
        Job::PruneAudit(before, limit, reply) => {
            answer(reply, in_savepoint(tx, |tx| prune_audit(tx, before, limit)))
        }
        Job::PruneFeed(before, limit, reply) => {
            answer(reply, in_savepoint(tx, |tx| prune_feed(tx, before, limit)))
        }
        Job::Flush(reply) => answer(reply, Ok(())),
        #[cfg(test)]
        Job::Exec(sql, reply) => answer(reply, tx.execute_batch(sql).map_err(backend)),
    }
}

/// The stored key of `candidate`'s algorithm, or `candidate` stored now.
fn bootstrap_key(
    tx: &rusqlite::Transaction<'_>,
    candidate: StoredSigningKey,
) -> Result<StoredSigningKey, StoreError> {
    let existing = read_signing_keys(tx)?
        .into_iter()
        .find(|k| k.alg == candidate.alg);
    match existing {
        Some(k) => Ok(k),
        None => insert_key(tx, &candidate).map(|()| candidate),
    }
}

/// Deletes the keys past their retirement bound (see [`RETIRE_KEYS`]), each audited.
fn retire_keys(tx: &rusqlite::Transaction<'_>, now: i64) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.prepare_cached(RETIRE_KEYS).map_err(backend)?;
    let kids = stmt
        .query_map([now], |r| r.get::<_, String>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    for kid in &kids {
        write_audit(tx, &Actor::node(), &crate::key_retired_event(kid))?;
    }
    Ok(kids)
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
                .ok_or_else(|| StoreError::corrupt(format!("assignment client id {id:?}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Creates or replaces an assignment; true when it was created. The writer thread runs one job
/// at a time, so the insert-then-update pair cannot interleave with another put.
fn put_assignment(
    tx: &rusqlite::Transaction<'_>,
    resource_id: ResourceId,
    assignment: &TeamsAssignment,
    actor: &Actor,
) -> Result<bool, StoreError> {
    let (resource, tenant, object) =
        assignment_key(resource_id, assignment.tenant_id, assignment.object_id);
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
    let event = |outcome| {
        AuditEvent::resource(AuditOperation::PutAssignment, resource_id, outcome)
            .with_detail(assignment_detail(&tenant, &object))
    };
    if inserted == 1 {
        write_audit(tx, actor, &event(AuditOutcome::Success))?;
        return Ok(true);
    }
    tx.prepare_cached(
        "UPDATE teams_assignments SET principal_type = ?4, client_ids = ?5, updated_at_ms = ?6
         WHERE resource_id = ?1 AND tenant_id = ?2 AND object_id = ?3",
    )
    .and_then(|mut s| s.execute(params![resource, tenant, object, principal, clients, now]))
    .map_err(backend)?;
    write_audit(tx, actor, &event(AuditOutcome::Replaced))?;
    Ok(false)
}

/// The detail of an assignment's audit record: which tenant and object.
pub(crate) fn assignment_detail(tenant: &str, object: &str) -> String {
    format!("tenant {tenant} object {object}")
}

/// Removes an assignment; false when there was none.
fn delete_assignment(
    tx: &rusqlite::Transaction<'_>,
    (resource_id, tenant, object): (ResourceId, Uuid, Uuid),
    actor: &Actor,
) -> Result<bool, StoreError> {
    let (resource, tenant, object) = assignment_key(resource_id, tenant, object);
    let deleted = tx
        .prepare_cached(
            "DELETE FROM teams_assignments WHERE resource_id = ?1 AND tenant_id = ?2 AND object_id = ?3",
        )
        .and_then(|mut s| s.execute(params![resource, tenant, object]))
        .map_err(backend)?
        > 0;
    let outcome = if deleted {
        AuditOutcome::Success
    } else {
        AuditOutcome::NotFound
    };
    let event = AuditEvent::resource(AuditOperation::DeleteAssignment, resource_id, outcome)
        .with_detail(assignment_detail(&tenant, &object));
    write_audit(tx, actor, &event)?;
    Ok(deleted)
}

/// Writes one audit record in `tx`: the transaction (savepoint) of the change it records.
pub(crate) fn write_audit(
    tx: &rusqlite::Transaction<'_>,
    actor: &Actor,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    let v = AuditValues::of(actor, event);
    tx.prepare_cached(
        "INSERT INTO audit_log (at_ms, resource_id, operation, identity_id, outcome, credential,
                                client, request_id, detail, subject)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            v.at_ms,
            v.resource,
            v.operation,
            v.identity,
            v.outcome,
            v.credential,
            v.client,
            v.request_id,
            v.detail,
            v.subject
        ])
    })
    .map(|_| ())
    .map_err(backend)
}

/// Stores audit records as they are; a sequence number present already is kept. SQLite's
/// AUTOINCREMENT counter follows the largest number inserted, so later records come after.
fn import_audit(
    tx: &rusqlite::Transaction<'_>,
    records: &[AuditRecord],
) -> Result<usize, StoreError> {
    // A record is the same record when everything but its number is: the target numbers what
    // it imports itself (its own records may have taken the source's numbers).
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO audit_log (at_ms, resource_id, operation, identity_id, outcome, credential,
                                    client, request_id, detail, subject)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 WHERE NOT EXISTS (
               SELECT 1 FROM audit_log WHERE at_ms = ?1 AND resource_id IS ?2 AND operation = ?3
                 AND identity_id IS ?4 AND outcome = ?5 AND credential = ?6 AND client IS ?7
                 AND request_id IS ?8 AND detail IS ?9 AND subject IS ?10)",
        )
        .map_err(backend)?;
    let mut n = 0;
    for r in records {
        n += insert
            .execute(params![
                ms(r.at),
                r.resource.map(|x| x.to_string()),
                r.operation.as_str(),
                r.identity.map(|x| x.to_string()),
                r.outcome.as_str(),
                r.credential.as_str(),
                r.client.map(|x| x.to_string()),
                r.request_id,
                r.detail,
                r.subject,
            ])
            .map_err(backend)?;
    }
    Ok(n)
}

/// Deletes at most `limit` of the oldest records made before `before` (ms).
fn prune_audit(
    tx: &rusqlite::Transaction<'_>,
    before: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "DELETE FROM audit_log WHERE seq IN
           (SELECT seq FROM audit_log WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
    )
    .and_then(|mut s| s.execute(params![before, limit]))
    .map_err(backend)
}

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get(0)?,
        at_ms: r.get(1)?,
        resource: r.get(2)?,
        operation: r.get(3)?,
        identity: r.get(4)?,
        outcome: r.get(5)?,
        credential: r.get(6)?,
        client: r.get(7)?,
        request_id: r.get(8)?,
        detail: r.get(9)?,
        subject: r.get(10)?,
    })
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
            .ok_or_else(|| StoreError::corrupt(format!("assignment {what} {s:?}")))
    };
    Ok((
        ResourceId::parse(&resource)
            .map_err(|_| StoreError::corrupt(format!("assignment resource id {resource:?}")))?,
        TeamsAssignment {
            tenant_id: guid("tenant id", &tenant)?,
            object_id: guid("object id", &object)?,
            principal_type: PrincipalType::parse(&principal).ok_or_else(|| {
                StoreError::corrupt(format!("assignment principal type {principal:?}"))
            })?,
            client_ids: decode_client_ids(clients)?,
        },
    ))
}

fn insert_key(tx: &rusqlite::Transaction<'_>, key: &StoredSigningKey) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO signing_keys (kid, alg, pkcs8, created_at_ms, activates_at_ms, retire_after_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            key.kid,
            key.alg.jose_name(),
            key.pkcs8,
            ms(key.created_at),
            ms(key.activates_at),
            key.retire_after.map(ms)
        ],
    )
    .map(|_| ())
    .map_err(backend)
}

/// Deletes the keys past their retirement bound (`?1`: now) that an active newer key of their
/// algorithm succeeds.
const RETIRE_KEYS: &str = "
DELETE FROM signing_keys
WHERE retire_after_ms IS NOT NULL AND retire_after_ms <= ?1
  AND EXISTS (SELECT 1 FROM signing_keys AS s WHERE s.alg = signing_keys.alg
              AND s.activates_at_ms > signing_keys.activates_at_ms AND s.activates_at_ms <= ?1)
RETURNING kid";

/// Adds the rotation's key unless one of its algorithm is pending (one transaction, so that
/// processes sharing the file agree: SQLite has one writer at a time).
fn rotate_key(
    tx: &rusqlite::Transaction<'_>,
    rotation: &KeyRotation,
) -> Result<Rotation, StoreError> {
    let key = &rotation.key;
    let alg = key.alg.jose_name();
    let pending = tx
        .query_row(
            "SELECT kid, activates_at_ms FROM signing_keys WHERE alg = ?1 AND activates_at_ms > ?2
             ORDER BY activates_at_ms LIMIT 1",
            params![alg, ms(rotation.now)],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()
        .map_err(backend)?;
    if let Some((kid, at)) = pending {
        return Ok(Rotation::AlreadyPending {
            kid,
            activates_at: from_ms(at)?,
        });
    }
    insert_key(tx, key)?;
    tx.execute(
        "UPDATE signing_keys SET retire_after_ms = ?3
         WHERE alg = ?1 AND kid <> ?2 AND retire_after_ms IS NULL",
        params![alg, key.kid, ms(rotation.retire_previous_after)],
    )
    .map_err(backend)?;
    write_audit(tx, &rotation.actor, &rotation.event())?;
    Ok(Rotation::Added)
}

fn read_signing_keys(c: &Connection) -> Result<Vec<StoredSigningKey>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT kid, alg, pkcs8, created_at_ms, activates_at_ms, retire_after_ms
             FROM signing_keys ORDER BY created_at_ms DESC, rowid DESC",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                r.get::<_, Vec<u8>>(2)?,
                (
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ),
            ))
        })
        .map_err(backend)?;
    let mut keys = Vec::new();
    for row in rows {
        let ((kid, alg), pkcs8, (created, activates, retire)) = row.map_err(backend)?;
        keys.push(StoredSigningKey {
            alg: Algorithm::from_jose_name(&alg)
                .ok_or_else(|| StoreError::corrupt(format!("signing key algorithm {alg:?}")))?,
            kid,
            pkcs8,
            created_at: from_ms(created)?,
            activates_at: from_ms(activates)?,
            retire_after: retire.map(from_ms).transpose()?,
        });
    }
    Ok(keys)
}

fn create(
    tx: &rusqlite::Transaction<'_>,
    new: &NewIdentity,
    actor: &Actor,
) -> Result<Created, StoreError> {
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
        let event = AuditEvent::identity(
            AuditOperation::CreateIdentity,
            new.id,
            AuditOutcome::Success,
        );
        write_audit(tx, actor, &event)?;
        return Ok(Created {
            identity: IdentityRecord {
                id: new.id,
                custom_id: new.custom_id.clone(),
                created_at: from_ms(ms(new.created_at))?,
                revocation_epoch: 0,
                last_token_issued_at: None,
            },
            created: true,
        });
    }
    let Some(custom) = custom else {
        return Err(StoreError::backend(format!(
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
        .ok_or_else(|| StoreError::backend(format!("identity id {} already exists", new.id)))?;
    let existing = identity_record(row)?;
    let event = AuditEvent::identity(
        AuditOperation::CreateIdentity,
        existing.id,
        AuditOutcome::Existing,
    );
    write_audit(tx, actor, &event)?;
    Ok(Created {
        identity: existing,
        created: false,
    })
}

/// Deletes an identity and leaves its tombstone; false when it did not exist.
fn delete(
    tx: &rusqlite::Transaction<'_>,
    id: &IdentityId,
    actor: &Actor,
) -> Result<bool, StoreError> {
    let deleted = tx
        .prepare_cached(
            "DELETE FROM identities WHERE id = ?1 RETURNING resource_id, revocation_epoch",
        )
        .and_then(|mut s| {
            s.query_row([id.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
        })
        .map_err(backend)?;
    let outcome = if deleted.is_some() {
        AuditOutcome::Success
    } else {
        AuditOutcome::NotFound
    };
    write_audit(
        tx,
        actor,
        &AuditEvent::identity(AuditOperation::DeleteIdentity, *id, outcome),
    )?;
    let Some((resource, epoch)) = deleted else {
        return Ok(false);
    };
    tx.prepare_cached(
        "INSERT INTO identity_tombstones (id, resource_id, deleted_at_ms, revocation_epoch)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET deleted_at_ms = excluded.deleted_at_ms",
    )
    .and_then(|mut s| {
        s.execute(params![
            id.to_string(),
            resource,
            ms(OffsetDateTime::now_utc()),
            epoch
        ])
    })
    .map_err(backend)?;
    write_event(tx, id, RevocationKind::Deleted, epoch)?;
    Ok(true)
}

/// Increments an identity's revocation epoch; `None` when it does not exist.
fn revoke(
    tx: &rusqlite::Transaction<'_>,
    id: &IdentityId,
    actor: &Actor,
) -> Result<Option<u64>, StoreError> {
    let epoch = tx
        .prepare_cached(
            "UPDATE identities SET revocation_epoch = revocation_epoch + 1 WHERE id = ?1 RETURNING revocation_epoch",
        )
        .and_then(|mut s| s.query_row([id.to_string()], |r| r.get::<_, i64>(0)).optional())
        .map_err(backend)?
        .map(|e| u64::try_from(e).map_err(|_| StoreError::corrupt("negative epoch")))
        .transpose()?;
    let event = match epoch {
        Some(e) => AuditEvent::identity(AuditOperation::RevokeTokens, *id, AuditOutcome::Success)
            .with_detail(format!("epoch {e}")),
        None => AuditEvent::identity(AuditOperation::RevokeTokens, *id, AuditOutcome::NotFound),
    };
    write_audit(tx, actor, &event)?;
    if let Some(e) = epoch {
        write_event(
            tx,
            id,
            RevocationKind::Revoked,
            i64::try_from(e).unwrap_or(i64::MAX),
        )?;
    }
    Ok(epoch)
}

/// Takes `n` positions of `resource`'s feed (the counter row stays locked until the commit);
/// returns the first.
fn take_positions(
    tx: &rusqlite::Transaction<'_>,
    resource: &str,
    n: i64,
) -> Result<i64, StoreError> {
    let end: i64 = tx
        .prepare_cached(
            "INSERT INTO revocation_heads (resource_id, seq) VALUES (?1, ?2)
             ON CONFLICT (resource_id) DO UPDATE SET seq = seq + excluded.seq RETURNING seq",
        )
        .and_then(|mut s| s.query_row(params![resource, n], |r| r.get(0)))
        .map_err(backend)?;
    Ok(end - n + 1)
}

/// Writes the feed event of one identity's change, in the change's transaction.
fn write_event(
    tx: &rusqlite::Transaction<'_>,
    id: &IdentityId,
    kind: RevocationKind,
    epoch: i64,
) -> Result<(), StoreError> {
    let resource = id.resource().to_string();
    let seq = take_positions(tx, &resource, 1)?;
    tx.prepare_cached(
        "INSERT INTO revocation_events (resource_id, seq, identity_id, kind, epoch, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            resource,
            seq,
            id.to_string(),
            kind.as_str(),
            epoch,
            ms(OffsetDateTime::now_utc())
        ])
    })
    .map(drop)
    .map_err(backend)
}

/// Writes one feed event for each of the `n` identities of `resource` (all of them), with
/// their current epochs, in the change's transaction.
fn write_resource_events(
    tx: &rusqlite::Transaction<'_>,
    resource: &str,
    kind: RevocationKind,
    n: usize,
) -> Result<(), StoreError> {
    if n == 0 {
        return Ok(());
    }
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let first = take_positions(tx, resource, n)?;
    tx.execute(
        "INSERT INTO revocation_events (resource_id, seq, identity_id, kind, epoch, at_ms)
         SELECT resource_id, ?2 - 1 + row_number() OVER (ORDER BY id), id, ?3,
                revocation_epoch, ?4
         FROM identities WHERE resource_id = ?1",
        params![
            resource,
            first,
            kind.as_str(),
            ms(OffsetDateTime::now_utc())
        ],
    )
    .map(drop)
    .map_err(backend)
}

/// Deletes at most `limit` of the oldest feed events written before `before` (ms), and
/// remembers, per resource, the highest position deleted.
fn prune_feed(
    tx: &rusqlite::Transaction<'_>,
    before: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let gone = tx
        .prepare_cached(
            "DELETE FROM revocation_events WHERE (resource_id, seq) IN
               (SELECT resource_id, seq FROM revocation_events WHERE at_ms < ?1
                ORDER BY at_ms LIMIT ?2)
             RETURNING resource_id, seq",
        )
        .and_then(|mut s| {
            s.query_map(params![before, limit], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(backend)?;
    let mut highest: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for (resource, seq) in &gone {
        let v = highest.entry(resource.as_str()).or_insert(0);
        *v = (*v).max(*seq);
    }
    let mut update = tx
        .prepare_cached(
            "UPDATE revocation_heads SET pruned_through = max(pruned_through, ?2)
             WHERE resource_id = ?1",
        )
        .map_err(backend)?;
    for (resource, seq) in highest {
        update.execute(params![resource, seq]).map_err(backend)?;
    }
    Ok(gone.len())
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
                r.custom_id.as_ref().map(CustomId::as_str),
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
    insert_resource(tx, &candidate, true)?;
    write_audit(
        tx,
        &Actor::node(),
        &resource_created_event(&candidate, true),
    )?;
    read_default_resource(tx)?.ok_or_else(|| StoreError::backend("the default resource vanished"))
}

fn insert_resource(
    tx: &rusqlite::Transaction<'_>,
    r: &StoredResource,
    is_default: bool,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO resources (id, is_default, name, host, primary_key, secondary_key, verify_key, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            r.id.to_string(),
            is_default,
            r.name,
            r.host,
            r.primary,
            r.secondary,
            r.verify,
            ms(r.created_at)
        ],
    )
    .map_err(backend)?;
    bump_generation(tx)
}

/// Moves the configuration generation running nodes poll.
fn bump_generation(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE config_generation SET generation = generation + 1 WHERE id = 1",
        [],
    )
    .map(drop)
    .map_err(backend)
}

fn create_resource(
    tx: &rusqlite::Transaction<'_>,
    r: &StoredResource,
    actor: &Actor,
) -> Result<ResourceCreated, StoreError> {
    let taken: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM resources WHERE name = ?1)",
            [&r.name],
            |row| row.get(0),
        )
        .map_err(backend)?;
    if taken {
        return Ok(ResourceCreated::NameTaken);
    }
    let sharing: i64 = tx
        .query_row(
            "SELECT count(*) FROM resources WHERE host IS ?1",
            [&r.host],
            |row| row.get(0),
        )
        .map_err(backend)?;
    if usize::try_from(sharing).unwrap_or(usize::MAX) >= MAX_RESOURCES_PER_HOST {
        return Ok(ResourceCreated::HostFull);
    }
    insert_resource(tx, r, false)?;
    write_audit(tx, actor, &resource_created_event(r, false))?;
    Ok(ResourceCreated::Created)
}

/// Deletes a resource and what it holds; its identities leave tombstones, as a delete does.
fn delete_resource(
    tx: &rusqlite::Transaction<'_>,
    resource: ResourceId,
    actor: &Actor,
) -> Result<ResourceDeleted, StoreError> {
    let id = resource.to_string();
    let is_default: Option<bool> = tx
        .query_row(
            "SELECT is_default FROM resources WHERE id = ?1",
            [&id],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    match is_default {
        None => return Ok(ResourceDeleted::NotFound),
        Some(true) => return Ok(ResourceDeleted::IsDefault),
        Some(false) => {}
    }
    let now = ms(OffsetDateTime::now_utc());
    tx.execute(
        "INSERT OR IGNORE INTO identity_tombstones (id, resource_id, deleted_at_ms, revocation_epoch)
         SELECT id, resource_id, ?2, revocation_epoch FROM identities WHERE resource_id = ?1",
        params![id, now],
    )
    .map_err(backend)?;
    let count: i64 = tx
        .query_row(
            "SELECT count(*) FROM identities WHERE resource_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .map_err(backend)?;
    write_resource_events(
        tx,
        &id,
        RevocationKind::Deleted,
        usize::try_from(count).unwrap_or(0),
    )?;
    let identities = tx
        .execute("DELETE FROM identities WHERE resource_id = ?1", [&id])
        .map_err(backend)?;
    for sql in [
        "DELETE FROM teams_assignments WHERE resource_id = ?1",
        "DELETE FROM access_assignments WHERE resource_id = ?1",
    ] {
        tx.execute(sql, [&id]).map_err(backend)?;
    }
    tx.execute("DELETE FROM resources WHERE id = ?1", [&id])
        .map_err(backend)?;
    tx.execute(
        "INSERT OR IGNORE INTO resource_tombstones (id, deleted_at_ms) VALUES (?1, ?2)",
        params![id, now],
    )
    .map_err(backend)?;
    bump_generation(tx)?;
    write_audit(
        tx,
        actor,
        &resource_deleted_event(resource, identities as u64),
    )?;
    Ok(ResourceDeleted::Deleted {
        identities: identities as u64,
    })
}

fn replace_key(
    tx: &rusqlite::Transaction<'_>,
    k: &KeyReplacement,
    actor: &Actor,
) -> Result<Option<u64>, StoreError> {
    let sql = match k.slot {
        KeySlot::Primary => "UPDATE resources SET primary_key = ?2 WHERE id = ?1",
        KeySlot::Secondary => "UPDATE resources SET secondary_key = ?2 WHERE id = ?1",
        KeySlot::VerifyOnly => "UPDATE resources SET verify_key = ?2 WHERE id = ?1",
    };
    let id = k.resource.to_string();
    if tx.execute(sql, params![id, k.stored]).map_err(backend)? == 0 {
        return Ok(None);
    }
    let revoked = if k.revoke_tokens {
        tx.execute(
            "UPDATE identities SET revocation_epoch = revocation_epoch + 1 WHERE resource_id = ?1",
            [&id],
        )
        .map_err(backend)?
    } else {
        0
    };
    write_resource_events(tx, &id, RevocationKind::Revoked, revoked)?;
    bump_generation(tx)?;
    let event = key_replaced_event(k.resource, k.slot, k.revoke_tokens, revoked as u64);
    write_audit(tx, actor, &event)?;
    Ok(Some(revoked as u64))
}

/// Every resource, access keys in their stored form.
fn read_resources(
    conn: &Connection,
    only_default: bool,
) -> Result<Vec<StoredResource>, StoreError> {
    let sql = if only_default {
        "SELECT id, name, host, primary_key, secondary_key, verify_key, created_at_ms FROM resources
         WHERE is_default = 1"
    } else {
        "SELECT id, name, host, primary_key, secondary_key, verify_key, created_at_ms FROM resources
         ORDER BY created_at_ms, id"
    };
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                StoredResource {
                    id: ResourceId::new_random(),
                    name: r.get(1)?,
                    host: r.get(2)?,
                    primary: r.get(3)?,
                    secondary: r.get(4)?,
                    verify: r.get(5)?,
                    created_at: OffsetDateTime::UNIX_EPOCH,
                },
                r.get::<_, i64>(6)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, mut stored, created) = row.map_err(backend)?;
        stored.id = ResourceId::parse(&id).map_err(|_| StoreError::corrupt("resource id"))?;
        stored.created_at = from_ms(created)?;
        out.push(stored);
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
        let values = 2 + usize::from(old.verify.is_some());
        n += values
            * tx.execute(
                "UPDATE resources SET primary_key = ?2, secondary_key = ?3, verify_key = ?6
                 WHERE id = ?1 AND primary_key = ?4 AND secondary_key = ?5 AND verify_key IS ?7",
                params![
                    old.id.to_string(),
                    new.primary,
                    new.secondary,
                    old.primary,
                    old.secondary,
                    new.verify,
                    old.verify
                ],
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
        return Err(StoreError::backend(
            "keys changed while being re-sealed; run the command again",
        ));
    }
    Ok(n)
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn create_identity(
        &self,
        new: NewIdentity,
        actor: &Actor,
    ) -> Result<Created, StoreError> {
        let actor = actor.clone();
        self.submit(|r| Job::Create(new, actor, r)).await
    }

    async fn token_epoch(&self, id: &IdentityId) -> Result<Option<u64>, StoreError> {
        if let Some(epoch) = self.cache.get(id) {
            return Ok(Some(epoch));
        }
        let generation = self.cache.generation();
        let key = id.to_string();
        let epoch = self.read(|c| {
            c.prepare_cached("SELECT revocation_epoch FROM identities WHERE id = ?1")
                .and_then(|mut s| s.query_row([&key], |r| r.get::<_, i64>(0)).optional())
                .map_err(backend)
        })?;
        let epoch = epoch
            .map(|e| {
                u64::try_from(e)
                    .map_err(|_| StoreError::corrupt(format!("negative revocation epoch for {id}")))
            })
            .transpose()?;
        if let Some(epoch) = epoch {
            self.cache.keep(generation, *id, epoch);
        }
        Ok(epoch)
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

    async fn list_page(
        &self,
        resource: ResourceId,
        after: Option<&IdentityId>,
        limit: usize,
        filter: &IdentityFilter,
    ) -> Result<IdentityPage, StoreError> {
        let after = after.map(ToString::to_string).unwrap_or_default();
        let before = filter.last_token_issued_before.map(ms);
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let (fetch, scan) = (
            count(limit.saturating_add(1)),
            count(scan_rows(limit, filter)),
        );
        let listed = self.read(|c| {
            c.prepare_cached(LIST_PAGE)
                .and_then(|mut s| {
                    let args = params![
                        resource.to_string(),
                        after,
                        filter.custom_id_prefix,
                        before,
                        fetch,
                        scan
                    ];
                    s.query_map(args, listed_from_row)?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)
        })?;
        let mut scanned = (0, None);
        let mut rows = Vec::new();
        for (n, last, matched) in listed {
            scanned = (usize::try_from(n).unwrap_or(0), last);
            if let Some(row) = matched {
                rows.push(identity_record(row)?);
            }
        }
        let last = scanned.1.as_deref().map(parse_identity_id).transpose()?;
        Ok(IdentityPage::from_rows(
            rows,
            (scanned.0, last),
            limit,
            filter,
            &self.touched,
        ))
    }

    async fn revoke_tokens(
        &self,
        id: &IdentityId,
        actor: &Actor,
    ) -> Result<Option<u64>, StoreError> {
        let (id, actor) = (*id, actor.clone());
        self.submit(|r| Job::Revoke(id, actor, r)).await
    }

    async fn delete_identity(&self, id: &IdentityId, actor: &Actor) -> Result<bool, StoreError> {
        let (id, actor) = (*id, actor.clone());
        self.submit(|r| Job::Delete(id, actor, r)).await
    }

    fn record_token_issued(&self, id: &IdentityId, at: OffsetDateTime) {
        self.touched.record(id, at);
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

    async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        self.read(|c| read_resources(c, false))?
            .iter()
            .map(|s| self.keys.open_resource(s))
            .collect()
    }

    async fn create_resource(
        &self,
        resource: ResourceRecord,
        actor: &Actor,
    ) -> Result<ResourceCreated, StoreError> {
        let stored = self.keys.seal_resource(&resource);
        let actor = actor.clone();
        self.submit(|r| Job::CreateResource(stored, actor, r)).await
    }

    async fn delete_resource(
        &self,
        id: ResourceId,
        actor: &Actor,
    ) -> Result<ResourceDeleted, StoreError> {
        let actor = actor.clone();
        self.submit(|r| Job::DeleteResource(id, actor, r)).await
    }

    async fn replace_access_key(
        &self,
        id: ResourceId,
        slot: KeySlot,
        key: AccessKey,
        revoke_tokens: bool,
        actor: &Actor,
    ) -> Result<Option<u64>, StoreError> {
        let actor = actor.clone();
        let replacement = KeyReplacement {
            resource: id,
            slot,
            stored: self.keys.seal_access_key(id, slot, &key),
            revoke_tokens,
        };
        self.submit(|r| Job::ReplaceKey(replacement, actor, r))
            .await
    }

    async fn deleted_resources(&self) -> Result<Vec<ResourceId>, StoreError> {
        let ids: Vec<String> = self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT id FROM resource_tombstones ORDER BY id")
                .map_err(backend)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })?;
        ids.iter()
            .map(|id| ResourceId::parse(id).map_err(|_| StoreError::corrupt("resource tombstone")))
            .collect()
    }

    async fn config_generation(&self) -> Result<u64, StoreError> {
        let generation: i64 = self.read(|c| {
            c.prepare_cached("SELECT generation FROM config_generation WHERE id = 1")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(backend)
        })?;
        u64::try_from(generation).map_err(|_| StoreError::corrupt("negative generation"))
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

    async fn rotate_signing_key(&self, rotation: KeyRotation) -> Result<Rotation, StoreError> {
        let rotation = KeyRotation {
            key: self.keys.seal_signing_key(&rotation.key),
            ..rotation
        };
        self.submit(|r| Job::RotateKey(rotation, r)).await
    }

    async fn retire_signing_keys(&self, now: OffsetDateTime) -> Result<Vec<String>, StoreError> {
        self.submit(|r| Job::RetireKeys(ms(now), r)).await
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
        let n = self.submit(|r| Job::RewriteKeys(plan, r)).await?;
        // The old values must not linger: rebuild the file from live rows only, then empty the
        // WAL that still holds the old pages.
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path).map_err(backend)?;
            conn.busy_timeout(Duration::from_secs(30))
                .map_err(backend)?;
            conn.execute_batch("PRAGMA secure_delete=ON; VACUUM;")
                .map_err(backend)?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(backend)
        })
        .await
        .map_err(|e| StoreError::backend("compaction task failed").caused_by(e))??;
        Ok(n)
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
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let actor = actor.clone();
        self.submit(|r| Job::PutAssignment(resource, assignment, actor, r))
            .await
    }

    async fn delete_assignment(
        &self,
        resource: ResourceId,
        tenant: Uuid,
        object: Uuid,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let actor = actor.clone();
        self.submit(|r| Job::DeleteAssignment(resource, tenant, object, actor, r))
            .await
    }
}

#[async_trait]
impl BulkIdentities for SqliteStore {
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
                        .map_err(|_| StoreError::corrupt(format!("tombstone id {id:?}")))?,
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

    async fn all_access_assignments(
        &self,
    ) -> Result<Vec<(ResourceId, AccessAssignment)>, StoreError> {
        self.read(access::all)
    }

    async fn import_audit(&self, records: Vec<AuditRecord>) -> Result<usize, StoreError> {
        self.submit(|r| Job::ImportAudit(records, r)).await
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn record_audit(&self, actor: &Actor, event: AuditEvent) -> Result<(), StoreError> {
        let actor = actor.clone();
        self.submit(|r| Job::RecordAudit(actor, event, r)).await
    }

    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let after = query.after.unwrap_or(0);
        let since = query.since.map(ms);
        let resource = query.resource.map(|r| r.to_string());
        let operation = query.operation.map(AuditOperation::as_str);
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log
                 WHERE seq > ?1 AND (?2 IS NULL OR at_ms >= ?2) AND (?3 IS NULL OR resource_id = ?3)
                   AND (?5 IS NULL OR operation = ?5)
                 ORDER BY seq LIMIT ?4"
            ))
            .and_then(|mut s| {
                s.query_map(
                    params![after, since, resource, limit, operation],
                    audit_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
        })?;
        rows.into_iter().map(AuditRow::record).collect()
    }

    async fn token_counts(&self) -> Result<Vec<TokenCount>, StoreError> {
        let rows = self.read(|c| {
            c.prepare_cached(
                "SELECT resource_id, count, last_issued_at_ms FROM token_counts ORDER BY resource_id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(backend)
        })?;
        rows.into_iter()
            .map(|(resource, count, last)| {
                Ok(TokenCount {
                    resource: ResourceId::parse(&resource)
                        .map_err(|_| StoreError::corrupt(format!("token count of {resource:?}")))?,
                    count: u64::try_from(count).unwrap_or(0),
                    last_issued_at: last.map(from_ms).transpose()?,
                })
            })
            .collect()
    }

    async fn prune_audit(&self, before: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let before = ms(before);
        self.submit(|r| Job::PruneAudit(before, limit, r)).await
    }
}

#[async_trait]
impl StoreHealth for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
    }

    fn writable(&self) -> Result<(), StoreError> {
        self.health.check()
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        // A read finding no pooled reader opens one of its own rather than wait, so nothing
        // waits and the pool's size is the most it keeps.
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).len();
        Some(PoolStatus {
            max: READERS,
            open: READERS.max(idle),
            idle,
            waiting: 0,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        self.watching.store(false, Ordering::Release);
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
        self.watching.store(false, Ordering::Release);
        drop(self.writer.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// A resource's feed counter row: (latest position, highest position pruned).
fn feed_head(conn: &Connection, resource: &str) -> Result<(i64, i64), StoreError> {
    conn.prepare_cached("SELECT seq, pruned_through FROM revocation_heads WHERE resource_id = ?1")
        .and_then(|mut s| {
            s.query_row([resource], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map(Option::unwrap_or_default)
        .map_err(backend)
}

/// One snapshot page: revoked identities and recent tombstones of `?1` after `?2` (deleted at
/// or after `?3`), at most `?4`, in id order.
const SNAPSHOT_PAGE: &str = "
SELECT id, kind, epoch FROM (
    SELECT * FROM (
        SELECT id, 'revoked' AS kind, revocation_epoch AS epoch FROM identities
        WHERE resource_id = ?1 AND id > ?2 AND revocation_epoch > 0 ORDER BY id LIMIT ?4)
    UNION ALL
    SELECT * FROM (
        SELECT id, 'deleted' AS kind, revocation_epoch AS epoch FROM identity_tombstones
        WHERE resource_id = ?1 AND id > ?2 AND deleted_at_ms >= ?3 ORDER BY id LIMIT ?4)
) ORDER BY id LIMIT ?4";

#[async_trait]
impl RevocationFeed for SqliteStore {
    async fn feed_position(&self, resource: ResourceId) -> Result<u64, StoreError> {
        let (seq, _) = self.read(|c| feed_head(c, &resource.to_string()))?;
        position(seq)
    }

    async fn feed_after(
        &self,
        resource: ResourceId,
        after: u64,
        limit: usize,
    ) -> Result<FeedRead, StoreError> {
        let resource = resource.to_string();
        let after_i = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (rows, (head, pruned)) = self.read(|c| {
            // Events first, the head after: a prune committed in between shows in the head.
            let rows = c
                .prepare_cached(
                    "SELECT seq, identity_id, kind, epoch FROM revocation_events
                     WHERE resource_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .and_then(|mut s| {
                    s.query_map(params![resource, after_i, limit], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            Ok((rows, feed_head(c, &resource)?))
        })?;
        if after_i > head || after_i < pruned {
            return Ok(FeedRead::Expired);
        }
        rows.into_iter()
            .map(|(seq, id, kind, epoch)| {
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
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(|c| {
            c.prepare_cached(SNAPSHOT_PAGE)
                .and_then(|mut s| {
                    s.query_map(
                        params![resource.to_string(), after, ms(deleted_since), limit],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, i64>(2)?,
                            ))
                        },
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)
        })?;
        rows.iter()
            .map(|(id, kind, epoch)| revocation_from(id, kind, *epoch))
            .collect()
    }

    async fn prune_feed(&self, before: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let before = ms(before);
        self.submit(|r| Job::PruneFeed(before, limit, r)).await
    }

    fn feed_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signal.subscribe()
    }

    fn feed_version(&self, resource: ResourceId) -> crate::FeedVersion {
        self.signal.version(resource)
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;

    #[test]
    fn a_connection_left_at_normal_sync_is_put_back_before_a_batch() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = Connection::open(dir.path().join("x.db")).expect("open");
        conn.pragma_update(None, "synchronous", "NORMAL")
            .expect("normal");
        ensure_full_sync(&conn).expect("restored");
        let level: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("level");
        assert_eq!(level, 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_core::CustomId;

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    fn new_identity(resource: ResourceId) -> NewIdentity {
        NewIdentity {
            id: IdentityId::new_random(resource),
            custom_id: None,
            created_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn a_full_read_only_or_failing_disk_is_cannot_write_and_corruption_is_not() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_FULL,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_READONLY_DBMOVED,
            ffi::SQLITE_READONLY_DIRECTORY,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_SHMMAP,
            ffi::SQLITE_CANTOPEN,
        ] {
            let e = backend(failure(code));
            assert!(e.is_cannot_write(), "{code}: {e}");
            assert!(matches!(e, StoreError::Unavailable { .. }), "{code}: {e}");
            // A read meeting the same error is plainly unavailable (only the writer reports
            // the state).
            let read = read_error(backend(failure(code)));
            assert!(matches!(read, StoreError::Unavailable { .. }) && !read.is_cannot_write());
        }
        for code in [ffi::SQLITE_BUSY, ffi::SQLITE_LOCKED] {
            let e = backend(failure(code));
            assert!(matches!(e, StoreError::Unavailable { .. }) && !e.is_cannot_write());
        }
        for code in [
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOTADB,
            ffi::SQLITE_CONSTRAINT,
            ffi::SQLITE_ERROR,
        ] {
            assert!(
                matches!(backend(failure(code)), StoreError::Backend { .. }),
                "{code}"
            );
        }
        assert!(matches!(
            Outcome::of(&backend(failure(ffi::SQLITE_FULL))),
            Some(Outcome::CannotWrite(cause)) if cause.starts_with("disk full (")
        ));
        assert_eq!(Outcome::of(&backend(failure(ffi::SQLITE_BUSY))), None);
        // SQLite's own error stays the source, for whoever prints the chain.
        let e = backend(failure(ffi::SQLITE_CORRUPT));
        let cause = std::error::Error::source(&e).expect("a source");
        assert!(e.detail_chain().ends_with(&cause.to_string()), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_database_refuses_writes_serves_reads_and_recovers_by_itself() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path().join("callsign.db")).expect("open");
        let resource = ResourceId::new_random();
        let kept = store
            .create_identity(new_identity(resource), &Actor::operator())
            .await
            .expect("create")
            .identity;
        assert!(store.writable().is_ok());

        // SQLite's own "database or disk is full", from the writer's real path: the database
        // may not grow by a page.
        store
            .submit(|r| {
                Job::Exec(
                    "PRAGMA max_page_count = 1; SELECT 1 FROM pragma_max_page_count",
                    r,
                )
            })
            .await
            .expect("limit");
        let mut err = None;
        for _ in 0..2_000 {
            // Long custom ids fill pages quickly.
            let mut new = new_identity(resource);
            new.custom_id = Some(
                CustomId::parse(&format!("{}{}", "x".repeat(150), new.id)).expect("custom id"),
            );
            if let Err(e) = store.create_identity(new, &Actor::operator()).await {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("the database filled up");
        assert!(err.is_cannot_write(), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        let state = store.writable().expect_err("not writable");
        assert!(state.is_cannot_write(), "{state}");
        assert!(state.to_string().contains("callsign.db"), "{state}");

        // Reads, token times and the ping go on.
        assert_eq!(
            store
                .get_identity(&kept.id)
                .await
                .expect("read")
                .map(|r| r.id),
            Some(kept.id)
        );
        store.record_token_issued(&kept.id, OffsetDateTime::now_utc());
        store.ping().await.expect("ping");
        assert!(
            store
                .get_identity(&kept.id)
                .await
                .expect("read")
                .expect("there")
                .last_token_issued_at
                .is_some()
        );

        // Room again: the store finds out by itself, without a client write. (Its check, a
        // one-page rewrite, would pass under this limit anyway; that it keeps failing while a
        // real disk is full is what crates/callsign/tests/cli/faults.rs shows.)
        store
            .submit(|r| Job::Exec("PRAGMA max_page_count = 1073741823", r))
            .await
            .expect("room");
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.writable().is_err() {
            assert!(Instant::now() < deadline, "the store did not recover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store
            .create_identity(new_identity(resource), &Actor::operator())
            .await
            .expect("writes work again");
        assert_eq!(
            store
                .revoke_tokens(&kept.id, &Actor::operator())
                .await
                .expect("revoke"),
            Some(1)
        );
        store.close().await;
    }

    #[test]
    fn a_database_that_opens_read_only_or_cannot_be_created_is_refused_naming_the_path() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("callsign.db");
        drop(SqliteStore::open(&path).expect("create"));
        // A file SQLite may only read (as a file without write permission opens).
        let uri = format!("file:{}?mode=ro", path.display());
        let err = SqliteStore::open(&uri).expect_err("read-only").to_string();
        assert!(err.contains("read-only"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");

        let missing = dir.path().join("gone/callsign.db");
        let err = SqliteStore::open(&missing).expect_err("no dir").to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("directory {}", dir.path().join("gone").display())),
            "{err}"
        );
    }
}
