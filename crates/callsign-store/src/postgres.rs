//! The PostgreSQL backend, for several stateless callsign nodes over one database (PostgreSQL 13+
//! and what speaks its protocol).
//!
//! * Every operation is one statement (or one short transaction), so there is never a
//!   half-written identity, and nothing is cached between requests: a delete or revoke committed
//!   through one node is what the next request on any other node reads.
//! * Migrations are embedded, versioned and checksummed, applied at start under an advisory lock
//!   so nodes starting together apply them once. A released migration is never edited: the
//!   checksum check refuses to start against a database whose applied migration differs.
//! * Connection trouble (refused, reset, shutting down, statement timeout, pool exhausted) is
//!   [`StoreError::Unavailable`], which the server answers with 503 and `Retry-After`.
//! * `last_token_issued_at` is buffered in memory and written once a second.
//! * Identity creates are grouped: concurrent creates of one process are written by a few batch
//!   tasks, many in one transaction, each answered once its batch committed, with the result it
//!   would have had alone (see `create.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use callsign_core::token::Algorithm;
use callsign_core::{
    AccessAssignment, AccessKey, CustomId, IdentityId, PrincipalType, ResourceId, TeamsAssignment,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{
    AUDIT_COLUMNS, Actor, AuditEvent, AuditLog, AuditOperation, AuditOutcome, AuditQuery,
    AuditRecord, AuditRow, AuditValues, TokenCount,
};
use crate::feed::FeedSignal;
use crate::pg_feed::{FeedGate, ListenTarget, change_with_events, spawn_listener, write_event};
use crate::{
    AssignmentStore, BulkIdentities, Created, IdentityFilter, IdentityPage, IdentityRecord,
    IdentityStore, ImportReport, KeyRotation, NewIdentity, PendingTokenTimes, PoolStatus,
    ResourceRecord, ResourceStore, Rotation, SigningKeyStore, Store, StoreError, StoreHealth,
    StoredSigningKey, Tombstone, TombstoneReport, from_unix_ms as from_ms, scan_rows,
    stored_custom_id, unix_ms as ms,
};
use crate::{
    KeyMaterialStore, KeyProtection, KeyRewrite, KeySlot, MAX_RESOURCES_PER_HOST, ResourceCreated,
    ResourceDeleted, SealStatus, StoredResource, count_sealed, key_replaced_event,
    resource_created_event, resource_deleted_event,
};
use crate::{RevocationKind, pg_tls};
use deadpool_postgres::GenericClient;

mod access;
mod create;

/// Embedded migrations: (version, name, SQL). Append only; never edit a released entry.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial schema",
        r#"
CREATE TABLE callsign_resources (
    id            TEXT PRIMARY KEY,
    is_default    BOOLEAN NOT NULL DEFAULT FALSE,
    primary_key   TEXT NOT NULL,
    secondary_key TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX callsign_resources_one_default ON callsign_resources (is_default) WHERE is_default;

CREATE TABLE callsign_signing_keys (
    kid           TEXT PRIMARY KEY,
    alg           TEXT NOT NULL,
    pkcs8         BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL,
    seq           BIGSERIAL NOT NULL
);

CREATE TABLE callsign_identities (
    id                      TEXT PRIMARY KEY,
    resource_id             TEXT NOT NULL,
    custom_id               TEXT,
    created_at_ms           BIGINT NOT NULL,
    revocation_epoch        BIGINT NOT NULL DEFAULT 0,
    last_token_issued_at_ms BIGINT
);
CREATE UNIQUE INDEX callsign_identities_custom_id ON callsign_identities (resource_id, custom_id)
    WHERE custom_id IS NOT NULL;
"#,
    ),
    (
        2,
        "teams assignments",
        // GUIDs are stored lowercase hyphenated; byte-order collation makes their text order the
        // GUID order whatever the database's default collation. `client_ids` is NULL when the
        // assignment names none, which is not the same as an empty array.
        r#"
CREATE TABLE callsign_teams_assignments (
    resource_id    TEXT COLLATE "C" NOT NULL,
    tenant_id      TEXT COLLATE "C" NOT NULL,
    object_id      TEXT COLLATE "C" NOT NULL,
    principal_type TEXT NOT NULL,
    client_ids     TEXT[] NULL,
    updated_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (resource_id, tenant_id, object_id)
);
"#,
    ),
    (
        3,
        "identity tombstones",
        // What is left of a deleted identity, so that its id is never created or imported again.
        // `id` keeps the default collation of `callsign_identities.id`, which it is joined with.
        r#"
CREATE TABLE callsign_identity_tombstones (
    id            TEXT PRIMARY KEY,
    resource_id   TEXT NOT NULL,
    deleted_at_ms BIGINT NOT NULL
);
"#,
    ),
    (
        4,
        "identities by resource",
        // A resource's identities in id order: a listing page is one range scan. `id` keeps the
        // collation of the primary key, so the scan's order is the order `id > $after` compares.
        r#"
CREATE INDEX callsign_identities_by_resource ON callsign_identities (resource_id, id);
"#,
    ),
    (
        5,
        "several resources",
        // A unique name, the host name that routes to the resource (NULL: the server's own
        // address), a verify-only key; and the counter running nodes poll to see that resources
        // or keys changed.
        r#"
ALTER TABLE callsign_resources ADD COLUMN name TEXT;
ALTER TABLE callsign_resources ADD COLUMN host TEXT;
ALTER TABLE callsign_resources ADD COLUMN verify_key TEXT;
UPDATE callsign_resources SET name = 'default' WHERE is_default;
UPDATE callsign_resources SET name = 'resource-' || substr(id, 1, 8) WHERE name IS NULL;
ALTER TABLE callsign_resources ALTER COLUMN name SET NOT NULL;
CREATE UNIQUE INDEX callsign_resources_by_name ON callsign_resources (name);
CREATE TABLE callsign_config_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO callsign_config_generation (id, generation) VALUES (1, 0);
CREATE TABLE callsign_resource_tombstones (
    id            TEXT PRIMARY KEY,
    deleted_at_ms BIGINT NOT NULL
);
"#,
    ),
    (
        6,
        "audit log and token counts",
        // One record per change, written in the change's transaction; the tokens issued per
        // resource, written by the token-time flush.
        r#"
CREATE TABLE callsign_audit_log (
    seq         BIGSERIAL PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    resource_id TEXT,
    operation   TEXT NOT NULL,
    identity_id TEXT,
    outcome     TEXT NOT NULL,
    credential  TEXT NOT NULL,
    client      TEXT,
    request_id  TEXT,
    detail      TEXT
);
CREATE INDEX callsign_audit_log_at ON callsign_audit_log (at_ms);
CREATE INDEX callsign_audit_log_resource ON callsign_audit_log (resource_id, seq);
CREATE TABLE callsign_token_counts (
    resource_id       TEXT PRIMARY KEY,
    count             BIGINT NOT NULL,
    last_issued_at_ms BIGINT
);
"#,
    ),
    (
        7,
        "signing key rotation",
        // When a key starts signing (keys stored before: when created) and when it may be
        // retired (set when a successor is added).
        r#"
ALTER TABLE callsign_signing_keys ADD COLUMN activates_at_ms BIGINT;
UPDATE callsign_signing_keys SET activates_at_ms = created_at_ms;
ALTER TABLE callsign_signing_keys ALTER COLUMN activates_at_ms SET NOT NULL;
ALTER TABLE callsign_signing_keys ADD COLUMN retire_after_ms BIGINT;
"#,
    ),
    (
        8,
        "revocation feed",
        // Per resource, a counter of feed positions (locked by each change until it commits, so
        // positions follow commit order) and the highest position pruned; the events; the epoch
        // a deleted identity had; indexes for the feed's snapshot.
        r#"
ALTER TABLE callsign_identity_tombstones ADD COLUMN revocation_epoch BIGINT NOT NULL DEFAULT 0;
CREATE INDEX callsign_identity_tombstones_by_resource
    ON callsign_identity_tombstones (resource_id, id);
CREATE INDEX callsign_identities_revoked ON callsign_identities (resource_id, id)
    WHERE revocation_epoch > 0;
CREATE TABLE callsign_revocation_heads (
    resource_id    TEXT PRIMARY KEY,
    seq            BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE callsign_revocation_events (
    resource_id TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    identity_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    PRIMARY KEY (resource_id, seq)
);
CREATE INDEX callsign_revocation_events_at ON callsign_revocation_events (at_ms);
"#,
    ),
    (
        9,
        "access assignments and audit subjects",
        // Access assignments of trusted identity providers' principals, keyed by object id
        // within a resource; byte-order collation makes `ORDER BY object_id` and
        // `object_id > $after` the byte order of the text whatever the database's default.
        // `scopes`: NULL for the trusted issuer's, else their claim form (`chat,voip`). And whose
        // bearer token made a change.
        r#"
CREATE TABLE callsign_access_assignments (
    resource_id    TEXT COLLATE "C" NOT NULL,
    object_id      TEXT COLLATE "C" NOT NULL,
    tenant_id      TEXT NOT NULL,
    principal_type TEXT NOT NULL,
    scopes         TEXT NULL,
    updated_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (resource_id, object_id)
);
ALTER TABLE callsign_audit_log ADD COLUMN subject TEXT;
"#,
    ),
    (
        10,
        "room on identity pages for token times",
        // Every token updates its identity's `last_token_issued_at_ms` (in bulk, once a
        // second). With full pages each such update writes a new row version on another page
        // and an entry in every index of the table; with a fifth of each page free it stays on
        // its page and touches no index (a heap-only update) while the page has room: for every
        // update when a few rows of a page change per flush (large directories), for about a
        // third when all of them do. Existing full pages gain the room as rows move and vacuum
        // frees their old versions.
        r#"
ALTER TABLE callsign_identities SET (fillfactor = 80);
"#,
    ),
];

/// Advisory lock key for migrations and bootstrap ("callsign" in ASCII).
const LOCK_KEY: i64 = 0x6361_6c6c_7369_676e;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections this node holds.
    pub pool_size: usize,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// Server-side limit on any one statement.
    pub statement_timeout: Duration,
    /// How long a request waits for a free connection.
    pub wait_timeout: Duration,
    /// Whether access keys and signing keys are sealed under a master key.
    pub keys: KeyProtection,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(5),
            keys: KeyProtection::plain(),
        }
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    keys: KeyProtection,
    touched: Arc<PendingTokenTimes>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    signal: Arc<FeedSignal>,
    /// Single-identity revokes and deletes run a few per resource at a time.
    feed_gate: FeedGate,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    creates: create::Creates,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// What the server answered: its SQLSTATE and message, without the DETAIL that can quote the
/// values of a row (access keys and signing keys included), so that no chain of causes shows one.
#[derive(Debug)]
struct ServerAnswer {
    code: String,
    message: String,
}

impl std::fmt::Display for ServerAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServerAnswer {}

/// Classifies a database error: connection-level trouble is worth a retry, the rest is not.
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let answer = ServerAnswer {
            code: code.to_owned(),
            message: db.message().to_owned(),
        };
        return if transient(code) {
            StoreError::unavailable("PostgreSQL").caused_by(answer)
        } else {
            StoreError::backend("PostgreSQL").caused_by(answer)
        };
    }
    // No server error: the connection itself failed or was closed.
    StoreError::unavailable("PostgreSQL connection").caused_by(e)
}

/// Whether a SQLSTATE is trouble of the connection or the server, worth a retry.
fn transient(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("57") // operator intervention: shutdown, query canceled (timeout)
        || code.starts_with("53") // insufficient resources (53100: disk full)
        || code == "25006" // read-only transaction (a standby, default_transaction_read_only)
        || code == "58030" // I/O error
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::unavailable("database connection pool").caused_by(other),
    }
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const RESOURCE_COLUMNS: &str =
    "id, name, host, primary_key, secondary_key, verify_key, created_at_ms";
const SELECT_DEFAULT_RESOURCE: &str = "SELECT id, name, host, primary_key, secondary_key, \
     verify_key, created_at_ms FROM callsign_resources WHERE is_default";
const INSERT_SIGNING_KEY: &str = "INSERT INTO callsign_signing_keys
    (kid, alg, pkcs8, created_at_ms, activates_at_ms, retire_after_ms) VALUES ($1, $2, $3, $4, $5, $6)";
const SIGNING_KEY_COLUMNS: &str =
    "kid, alg, pkcs8, created_at_ms, activates_at_ms, retire_after_ms";

/// Deletes the keys past their retirement bound (`$1`: now) that an active newer key of their
/// algorithm succeeds.
const RETIRE_KEYS: &str = "
DELETE FROM callsign_signing_keys
WHERE retire_after_ms IS NOT NULL AND retire_after_ms <= $1
  AND EXISTS (SELECT 1 FROM callsign_signing_keys AS s WHERE s.alg = callsign_signing_keys.alg
              AND s.activates_at_ms > callsign_signing_keys.activates_at_ms
              AND s.activates_at_ms <= $1)
RETURNING kid";

/// Inserts a signing key (in its stored form).
async fn insert_signing_key(
    client: &impl deadpool_postgres::GenericClient,
    key: &StoredSigningKey,
) -> Result<(), StoreError> {
    client
        .execute(
            INSERT_SIGNING_KEY,
            &[
                &key.kid,
                &key.alg.jose_name(),
                &key.pkcs8,
                &ms(key.created_at),
                &ms(key.activates_at),
                &key.retire_after.map(ms),
            ],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

const IDENTITY_COLUMNS: &str =
    "id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms";

/// One listing page: at most `$6` rows of the resource's id index after `$2` are scanned; the
/// first row says how many and the last id among them, with the first of at most `$5` matches
/// of the filters (`$3` custom id prefix, `$4` token time), one a row (none: one row of NULLs).
const LIST_PAGE: &str = "
WITH scanned AS (
    SELECT id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms
    FROM callsign_identities
    WHERE resource_id = $1 AND id > $2 ORDER BY id LIMIT $6
), summary AS (SELECT count(*) AS n, max(id) AS last FROM scanned)
SELECT summary.n, summary.last, m.id, m.custom_id, m.created_at_ms, m.revocation_epoch,
       m.last_token_issued_at_ms
FROM summary LEFT JOIN (
    SELECT * FROM scanned
    WHERE ($3::TEXT IS NULL OR starts_with(custom_id, $3))
      AND ($4::BIGINT IS NULL OR last_token_issued_at_ms IS NULL OR last_token_issued_at_ms < $4)
    ORDER BY id LIMIT $5
) AS m ON TRUE
ORDER BY m.id";

fn identity(row: &tokio_postgres::Row) -> Result<IdentityRecord, StoreError> {
    identity_at(row, 0)
}

/// The identity in the columns from `at` on (`IDENTITY_COLUMNS`' order).
fn identity_at(row: &tokio_postgres::Row, at: usize) -> Result<IdentityRecord, StoreError> {
    let id: String = row.try_get(at).map_err(pg)?;
    let epoch: i64 = row.try_get(at + 3).map_err(pg)?;
    Ok(IdentityRecord {
        id: IdentityId::parse(&id)
            .map_err(|_| StoreError::corrupt(format!("identity id {id:?}")))?,
        custom_id: stored_custom_id(&id, row.try_get(at + 1).map_err(pg)?)?,
        created_at: from_ms(row.try_get(at + 2).map_err(pg)?)?,
        revocation_epoch: u64::try_from(epoch)
            .map_err(|_| StoreError::corrupt(format!("negative revocation epoch for {id}")))?,
        last_token_issued_at: row
            .try_get::<_, Option<i64>>(at + 4)
            .map_err(pg)?
            .map(from_ms)
            .transpose()?,
    })
}

/// A resource row, access keys in their stored form.
fn resource(row: &tokio_postgres::Row) -> Result<StoredResource, StoreError> {
    let id: String = row.try_get(0).map_err(pg)?;
    Ok(StoredResource {
        id: ResourceId::parse(&id).map_err(|_| StoreError::corrupt("resource id"))?,
        name: row.try_get(1).map_err(pg)?,
        host: row.try_get(2).map_err(pg)?,
        primary: row.try_get(3).map_err(pg)?,
        secondary: row.try_get(4).map_err(pg)?,
        verify: row.try_get(5).map_err(pg)?,
        created_at: from_ms(row.try_get(6).map_err(pg)?)?,
    })
}

fn signing_key(row: &tokio_postgres::Row) -> Result<StoredSigningKey, StoreError> {
    let alg: String = row.try_get(1).map_err(pg)?;
    Ok(StoredSigningKey {
        kid: row.try_get(0).map_err(pg)?,
        alg: Algorithm::from_jose_name(&alg)
            .ok_or_else(|| StoreError::corrupt(format!("signing key algorithm {alg:?}")))?,
        pkcs8: row.try_get(2).map_err(pg)?,
        created_at: from_ms(row.try_get(3).map_err(pg)?)?,
        activates_at: from_ms(row.try_get(4).map_err(pg)?)?,
        retire_after: row
            .try_get::<_, Option<i64>>(5)
            .map_err(pg)?
            .map(from_ms)
            .transpose()?,
    })
}

const ASSIGNMENT_COLUMNS: &str = "resource_id, tenant_id, object_id, principal_type, client_ids";

fn assignment(row: &tokio_postgres::Row) -> Result<(ResourceId, TeamsAssignment), StoreError> {
    let resource: String = row.try_get(0).map_err(pg)?;
    let guid = |what: &str, i: usize| -> Result<Uuid, StoreError> {
        let s: String = row.try_get(i).map_err(pg)?;
        callsign_core::parse_guid(&s)
            .ok_or_else(|| StoreError::corrupt(format!("assignment {what} {s:?}")))
    };
    let principal: String = row.try_get(3).map_err(pg)?;
    let clients: Option<Vec<String>> = row.try_get(4).map_err(pg)?;
    let client_ids = clients
        .map(|ids| {
            ids.iter()
                .map(|id| {
                    callsign_core::parse_guid(id)
                        .ok_or_else(|| StoreError::corrupt(format!("assignment client id {id:?}")))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok((
        ResourceId::parse(&resource)
            .map_err(|_| StoreError::corrupt(format!("assignment resource id {resource:?}")))?,
        TeamsAssignment {
            tenant_id: guid("tenant id", 1)?,
            object_id: guid("object id", 2)?,
            principal_type: PrincipalType::parse(&principal).ok_or_else(|| {
                StoreError::corrupt(format!("assignment principal type {principal:?}"))
            })?,
            client_ids,
        },
    ))
}

impl PostgresStore {
    /// Connects, applies pending migrations (under an advisory lock) and starts the background
    /// flusher. Needs a Tokio runtime.
    pub async fn connect(url: &str, options: &PostgresOptions) -> Result<Self, StoreError> {
        // `sslmode`/`sslrootcert` as libpq reads them; errors never show the URL (nor its password).
        let (mut config, tls) = pg_tls::configure(url)?;
        config.connect_timeout(options.connect_timeout);
        let statement_ms = options.statement_timeout.as_millis().max(1);
        config.options(format!("-c statement_timeout={statement_ms}"));
        if config.get_application_name().is_none() {
            config.application_name("callsign");
        }
        let target = ListenTarget {
            config: config.clone(),
            tls: tls.connector(),
        };
        let manager = Manager::from_config(
            config,
            tls.connector(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::backend("cannot build the connection pool").caused_by(e))?;
        // The first connection, so that a TLS failure (untrusted certificate, wrong host name, a
        // server without TLS) is reported as such, not as a passing outage. It stays pooled.
        drop(
            pool.get()
                .await
                .map_err(|e| tls.connect_error(&e).unwrap_or_else(|| pool_error(e)))?,
        );
        let creates = create::Creates::start(&pool, options.wait_timeout);
        let feed_gate = FeedGate::new(options.wait_timeout);
        let store = Self {
            pool,
            keys: options.keys.clone(),
            touched: Arc::default(),
            flusher: Mutex::new(None),
            signal: Arc::default(),
            feed_gate,
            listener: Mutex::new(None),
            creates,
        };
        store.migrate().await?;
        let listener = spawn_listener(target, store.pool.clone(), Arc::clone(&store.signal));
        *store.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
        let pool = store.pool.clone();
        let touched = Arc::clone(&store.touched);
        let flusher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                flush_touched(&pool, &touched).await;
            }
        });
        *store.flusher.lock().unwrap_or_else(|e| e.into_inner()) = Some(flusher);
        Ok(store)
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn signal(&self) -> &FeedSignal {
        &self.signal
    }

    /// Stops the feed listener.
    fn stop_listener(&self) {
        if let Some(l) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            l.abort();
        }
    }

    /// Applies pending migrations. Safe to call from several nodes at once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        let result = apply_migrations(&mut client).await;
        let unlock = client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await;
        result?;
        unlock.map_err(pg)?;
        Ok(())
    }

    /// The schema version this binary knows.
    pub fn latest_migration() -> i32 {
        MIGRATIONS.last().map_or(0, |m| m.0)
    }
}

async fn apply_migrations(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS callsign_schema_migrations (
                version    INTEGER PRIMARY KEY,
                name       TEXT NOT NULL,
                checksum   TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg)?;
    let applied = client
        .query(
            "SELECT version, checksum FROM callsign_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut known = HashMap::new();
    for row in &applied {
        let version: i32 = row.try_get(0).map_err(pg)?;
        let sum: String = row.try_get(1).map_err(pg)?;
        known.insert(version, sum);
    }
    if let Some(newest) = known.keys().max()
        && *newest > PostgresStore::latest_migration()
    {
        return Err(StoreError::backend(format!(
            "the database schema (version {newest}) is newer than this callsign (version {}); upgrade callsign",
            PostgresStore::latest_migration()
        )));
    }
    for (version, name, sql) in MIGRATIONS {
        let sum = checksum(sql);
        match known.get(version) {
            Some(existing) if *existing == sum => continue,
            Some(_) => {
                return Err(StoreError::backend(format!(
                    "migration {version} ({name}) differs from the one applied to this database"
                )));
            }
            None => {}
        }
        let tx = client.transaction().await.map_err(pg)?;
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO callsign_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[version, name, &sum],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        tracing::info!(version, name, "applied PostgreSQL migration");
    }
    Ok(())
}

/// One revoke in its own transaction (see [`IdentityStore::revoke_tokens`]).
async fn revoke_one(
    pool: &Pool,
    id: &IdentityId,
    actor: &Actor,
) -> Result<Option<u64>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let client = client.transaction().await.map_err(pg)?;
    let stmt = client
        .prepare_cached(
            "UPDATE callsign_identities SET revocation_epoch = revocation_epoch + 1 WHERE id = $1 RETURNING revocation_epoch",
        )
        .await
        .map_err(pg)?;
    let row = client
        .query_opt(&stmt, &[&id.to_string()])
        .await
        .map_err(pg)?;
    let epoch = row
        .map(|r| {
            let epoch: i64 = r.try_get(0).map_err(pg)?;
            u64::try_from(epoch).map_err(|_| StoreError::corrupt("negative epoch"))
        })
        .transpose()?;
    let event = match epoch {
        Some(e) => AuditEvent::identity(AuditOperation::RevokeTokens, *id, AuditOutcome::Success)
            .with_detail(format!("epoch {e}")),
        None => AuditEvent::identity(AuditOperation::RevokeTokens, *id, AuditOutcome::NotFound),
    };
    write_audit(&client, actor, &event).await?;
    // Last: the feed's position stays locked from here to the commit.
    if let Some(e) = epoch {
        let e = i64::try_from(e).unwrap_or(i64::MAX);
        write_event(&client, id, RevocationKind::Revoked, e).await?;
    }
    client.commit().await.map_err(pg)?;
    Ok(epoch)
}

/// One delete in its own transaction (see [`IdentityStore::delete_identity`]).
async fn delete_one(pool: &Pool, id: &IdentityId, actor: &Actor) -> Result<bool, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let client = client.transaction().await.map_err(pg)?;
    // One statement: the identity goes and its tombstone comes in one transaction.
    let stmt = client
        .prepare_cached(
            "WITH gone AS (
               DELETE FROM callsign_identities WHERE id = $1
               RETURNING id, resource_id, revocation_epoch
             )
             INSERT INTO callsign_identity_tombstones
               (id, resource_id, deleted_at_ms, revocation_epoch)
             SELECT id, resource_id, $2, revocation_epoch FROM gone
             ON CONFLICT (id) DO UPDATE SET deleted_at_ms = EXCLUDED.deleted_at_ms,
               revocation_epoch = EXCLUDED.revocation_epoch
             RETURNING revocation_epoch",
        )
        .await
        .map_err(pg)?;
    let gone = client
        .query_opt(&stmt, &[&id.to_string(), &ms(OffsetDateTime::now_utc())])
        .await
        .map_err(pg)?;
    let n = u64::from(gone.is_some());
    let outcome = if n > 0 {
        AuditOutcome::Success
    } else {
        AuditOutcome::NotFound
    };
    let event = AuditEvent::identity(AuditOperation::DeleteIdentity, *id, outcome);
    write_audit(&client, actor, &event).await?;
    // Last: the feed's position stays locked from here to the commit.
    if let Some(row) = gone {
        let epoch: i64 = row.try_get(0).map_err(pg)?;
        write_event(&client, id, RevocationKind::Deleted, epoch).await?;
    }
    client.commit().await.map_err(pg)?;
    Ok(n > 0)
}

async fn flush_touched(pool: &Pool, touched: &PendingTokenTimes) {
    flush_counts(pool, touched).await;
    let pending = touched.take();
    if pending.is_empty() {
        return;
    }
    let ids: Vec<String> = pending.iter().map(|(id, _)| id.to_string()).collect();
    let times: Vec<i64> = pending.iter().map(|(_, t)| *t).collect();
    let result = async {
        let client = pool.get().await.map_err(pool_error)?;
        client
            .execute(
                // Rows locked in id order, as the bulk revoke and delete lock them: the two
                // never deadlock.
                "WITH t AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS t(id, at)),
                 locked AS (
                   SELECT i.id FROM callsign_identities AS i JOIN t ON i.id = t.id
                   ORDER BY i.id FOR UPDATE OF i)
                 UPDATE callsign_identities AS i
                 SET last_token_issued_at_ms = GREATEST(COALESCE(i.last_token_issued_at_ms, 0), t.at)
                 FROM t WHERE i.id = t.id AND i.id IN (SELECT id FROM locked)",
                &[&ids, &times],
            )
            .await
            .map_err(pg)
    }
    .await;
    match result {
        Ok(_) => {}
        // The database is away (a restart, a switchover): kept for the next flush, as the
        // embedded store does, so that a blip loses no acknowledged token's time.
        Err(e) if e.is_unavailable() => {
            tracing::debug!(error = %e.chain(), "last-token times kept for the next flush");
            for (id, at) in pending {
                if let Ok(at) = from_ms(at) {
                    touched.keep(&id, at);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e.chain(), "could not record last-token times"),
    }
}

/// Adds the tokens counted since the last flush to each resource's count.
async fn flush_counts(pool: &Pool, touched: &PendingTokenTimes) {
    let counts = touched.take_counts();
    if counts.is_empty() {
        return;
    }
    let resources: Vec<String> = counts.iter().map(|(r, _)| r.to_string()).collect();
    let added: Vec<i64> = counts.iter().map(|(_, c)| c.count).collect();
    let last: Vec<i64> = counts.iter().map(|(_, c)| c.last_ms).collect();
    let result = async {
        let client = pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO callsign_token_counts AS c (resource_id, count, last_issued_at_ms)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                 ON CONFLICT (resource_id) DO UPDATE SET count = c.count + EXCLUDED.count,
                   last_issued_at_ms = GREATEST(c.last_issued_at_ms, EXCLUDED.last_issued_at_ms)",
                &[&resources, &added, &last],
            )
            .await
            .map_err(pg)
    }
    .await;
    match result {
        Ok(_) => {}
        Err(e) if e.is_unavailable() => touched.add_counts(&counts),
        Err(e) => tracing::warn!(error = %e.chain(), "could not record token counts"),
    }
}

/// Writes one audit record through `client`: the transaction of the change it records.
pub(crate) async fn write_audit(
    client: &impl GenericClient,
    actor: &Actor,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    let v = AuditValues::of(actor, event);
    let stmt = client
        .prepare_cached(
            "INSERT INTO callsign_audit_log (at_ms, resource_id, operation, identity_id, outcome,
                                             credential, client, request_id, detail, subject)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await
        .map_err(pg)?;
    client
        .execute(
            &stmt,
            &[
                &v.at_ms,
                &v.resource,
                &v.operation,
                &v.identity,
                &v.outcome,
                &v.credential,
                &v.client,
                &v.request_id,
                &v.detail,
                &v.subject,
            ],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

fn audit_row(row: &tokio_postgres::Row) -> Result<AuditRecord, StoreError> {
    AuditRow {
        seq: row.try_get(0).map_err(pg)?,
        at_ms: row.try_get(1).map_err(pg)?,
        resource: row.try_get(2).map_err(pg)?,
        operation: row.try_get(3).map_err(pg)?,
        identity: row.try_get(4).map_err(pg)?,
        outcome: row.try_get(5).map_err(pg)?,
        credential: row.try_get(6).map_err(pg)?,
        client: row.try_get(7).map_err(pg)?,
        request_id: row.try_get(8).map_err(pg)?,
        detail: row.try_get(9).map_err(pg)?,
        subject: row.try_get(10).map_err(pg)?,
    }
    .record()
}

#[async_trait]
impl AuditLog for PostgresStore {
    async fn record_audit(&self, actor: &Actor, event: AuditEvent) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        write_audit(&client, actor, &event).await
    }

    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let after = query.after.unwrap_or(0);
        let since = query.since.map(ms);
        let resource = query.resource.map(|r| r.to_string());
        let operation = query.operation.map(AuditOperation::as_str);
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM callsign_audit_log
                     WHERE seq > $1 AND ($2::BIGINT IS NULL OR at_ms >= $2)
                       AND ($3::TEXT IS NULL OR resource_id = $3)
                       AND ($5::TEXT IS NULL OR operation = $5)
                     ORDER BY seq LIMIT $4"
                ),
                &[&after, &since, &resource, &limit, &operation],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(audit_row).collect()
    }

    async fn token_counts(&self) -> Result<Vec<TokenCount>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT resource_id, count, last_issued_at_ms FROM callsign_token_counts
                 ORDER BY resource_id",
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let resource: String = row.try_get(0).map_err(pg)?;
                let count: i64 = row.try_get(1).map_err(pg)?;
                Ok(TokenCount {
                    resource: ResourceId::parse(&resource)
                        .map_err(|_| StoreError::corrupt(format!("token count of {resource:?}")))?,
                    count: u64::try_from(count).unwrap_or(0),
                    last_issued_at: row
                        .try_get::<_, Option<i64>>(2)
                        .map_err(pg)?
                        .map(from_ms)
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn prune_audit(&self, before: OffsetDateTime, limit: usize) -> Result<usize, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Nodes pruning together skip each other's rows rather than wait for them.
        let n = client
            .execute(
                "DELETE FROM callsign_audit_log WHERE seq IN (
                   SELECT seq FROM callsign_audit_log WHERE at_ms < $1
                   ORDER BY at_ms LIMIT $2 FOR UPDATE SKIP LOCKED
                 )",
                &[&ms(before), &limit],
            )
            .await
            .map_err(pg)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

#[async_trait]
impl IdentityStore for PostgresStore {
    async fn create_identity(
        &self,
        new: NewIdentity,
        actor: &Actor,
    ) -> Result<Created, StoreError> {
        self.creates.create(new, actor).await
    }

    async fn get_identity(&self, id: &IdentityId) -> Result<Option<IdentityRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {IDENTITY_COLUMNS} FROM callsign_identities WHERE id = $1"
            ))
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(&stmt, &[&id.to_string()])
            .await
            .map_err(pg)?;
        let Some(mut record) = row.as_ref().map(identity).transpose()? else {
            return Ok(None);
        };
        self.touched.overlay(&mut record);
        Ok(Some(record))
    }

    async fn list_page(
        &self,
        resource: ResourceId,
        after: Option<&IdentityId>,
        limit: usize,
        filter: &IdentityFilter,
    ) -> Result<IdentityPage, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client.prepare_cached(LIST_PAGE).await.map_err(pg)?;
        let after = after.map(ToString::to_string).unwrap_or_default();
        let before = filter.last_token_issued_before.map(ms);
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let (fetch, scan) = (
            count(limit.saturating_add(1)),
            count(scan_rows(limit, filter)),
        );
        let listed = client
            .query(
                &stmt,
                &[
                    &resource.to_string(),
                    &after,
                    &filter.custom_id_prefix,
                    &before,
                    &fetch,
                    &scan,
                ],
            )
            .await
            .map_err(pg)?;
        let mut scanned = (0, None);
        let mut rows = Vec::new();
        for row in &listed {
            let n: i64 = row.try_get(0).map_err(pg)?;
            let last: Option<String> = row.try_get(1).map_err(pg)?;
            scanned = (usize::try_from(n).unwrap_or(0), last);
            if row.try_get::<_, Option<String>>(2).map_err(pg)?.is_some() {
                rows.push(identity_at(row, 2)?);
            }
        }
        let last = scanned
            .1
            .as_deref()
            .map(|id| {
                IdentityId::parse(id)
                    .map_err(|_| StoreError::corrupt(format!("identity id {id:?}")))
            })
            .transpose()?;
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
        let (pool, signal, id, actor) = (
            self.pool.clone(),
            Arc::clone(&self.signal),
            *id,
            actor.clone(),
        );
        self.feed_gate
            .run(id.resource(), async move {
                let epoch = revoke_one(&pool, &id, &actor).await?;
                if epoch.is_some() {
                    signal.bump_resource(id.resource());
                }
                Ok(epoch)
            })
            .await
    }

    async fn delete_identity(&self, id: &IdentityId, actor: &Actor) -> Result<bool, StoreError> {
        let touched = Arc::clone(&self.touched);
        let (pool, signal, id, actor) = (
            self.pool.clone(),
            Arc::clone(&self.signal),
            *id,
            actor.clone(),
        );
        self.feed_gate
            .run(id.resource(), async move {
                let deleted = delete_one(&pool, &id, &actor).await?;
                if deleted {
                    // Its buffered last-token time has no row to go to any more.
                    touched.forget(&id);
                    signal.bump_resource(id.resource());
                }
                Ok(deleted)
            })
            .await
    }

    fn record_token_issued(&self, id: &IdentityId, at: OffsetDateTime) {
        self.touched.record(id, at);
    }
}

#[async_trait]
impl ResourceStore for PostgresStore {
    async fn default_resource(&self) -> Result<Option<ResourceRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(SELECT_DEFAULT_RESOURCE, &[])
            .await
            .map_err(pg)?;
        row.as_ref()
            .map(|r| self.keys.open_resource(&resource(r)?))
            .transpose()
    }

    async fn bootstrap_default_resource(
        &self,
        candidate: ResourceRecord,
    ) -> Result<ResourceRecord, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let stored = self.keys.seal_resource(&candidate);
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        let existing = tx
            .query_opt(SELECT_DEFAULT_RESOURCE, &[])
            .await
            .map_err(pg)?;
        let winner = match existing {
            Some(row) => resource(&row)?,
            None => {
                insert_resource(&tx, &stored, true).await?;
                write_audit(&tx, &Actor::node(), &resource_created_event(&stored, true)).await?;
                stored
            }
        };
        tx.commit().await.map_err(pg)?;
        self.keys.open_resource(&winner)
    }

    async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {RESOURCE_COLUMNS} FROM callsign_resources ORDER BY created_at_ms, id"
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| self.keys.open_resource(&resource(r)?))
            .collect()
    }

    async fn create_resource(
        &self,
        candidate: ResourceRecord,
        actor: &Actor,
    ) -> Result<ResourceCreated, StoreError> {
        let stored = self.keys.seal_resource(&candidate);
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        // One resource change at a time across nodes: the name and host checks hold at commit.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM callsign_resources WHERE name = $1),
                        (SELECT count(*) FROM callsign_resources WHERE host IS NOT DISTINCT FROM $2)",
                &[&stored.name, &stored.host],
            )
            .await
            .map_err(pg)?;
        let taken: bool = row.try_get(0).map_err(pg)?;
        let sharing: i64 = row.try_get(1).map_err(pg)?;
        if taken {
            return Ok(ResourceCreated::NameTaken);
        }
        if usize::try_from(sharing).unwrap_or(usize::MAX) >= MAX_RESOURCES_PER_HOST {
            return Ok(ResourceCreated::HostFull);
        }
        insert_resource(&tx, &stored, false).await?;
        write_audit(&tx, actor, &resource_created_event(&stored, false)).await?;
        tx.commit().await.map_err(pg)?;
        Ok(ResourceCreated::Created)
    }

    async fn delete_resource(
        &self,
        resource: ResourceId,
        actor: &Actor,
    ) -> Result<ResourceDeleted, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let id = resource.to_string();
        let is_default: Option<bool> = tx
            .query_opt(
                "SELECT is_default FROM callsign_resources WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg)?;
        match is_default {
            None => return Ok(ResourceDeleted::NotFound),
            Some(true) => return Ok(ResourceDeleted::IsDefault),
            Some(false) => {}
        }
        // The identities, their tombstones and their feed events in one statement: an identity
        // created meanwhile is either in all three or in none.
        let identities = change_with_events(
            &tx,
            &id,
            RevocationKind::Deleted,
            "DELETE FROM callsign_identities WHERE id IN (
               SELECT id FROM callsign_identities WHERE resource_id = $1::TEXT
               ORDER BY id FOR UPDATE)
             RETURNING id, resource_id, revocation_epoch",
            "tombstones AS (
               INSERT INTO callsign_identity_tombstones
                 (id, resource_id, deleted_at_ms, revocation_epoch)
               SELECT id, resource_id, $3::BIGINT, revocation_epoch FROM changed
               ON CONFLICT DO NOTHING RETURNING 1),",
        )
        .await?;
        for sql in [
            "DELETE FROM callsign_teams_assignments WHERE resource_id = $1",
            "DELETE FROM callsign_access_assignments WHERE resource_id = $1",
            "DELETE FROM callsign_resources WHERE id = $1",
        ] {
            tx.execute(sql, &[&id]).await.map_err(pg)?;
        }
        tx.execute(
            "INSERT INTO callsign_resource_tombstones (id, deleted_at_ms) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&id, &ms(OffsetDateTime::now_utc())],
        )
        .await
        .map_err(pg)?;
        bump_generation(&tx).await?;
        write_audit(&tx, actor, &resource_deleted_event(resource, identities)).await?;
        tx.commit().await.map_err(pg)?;
        if identities > 0 {
            self.signal.bump_resource(resource);
        }
        Ok(ResourceDeleted::Deleted { identities })
    }

    async fn replace_access_key(
        &self,
        id: ResourceId,
        slot: KeySlot,
        key: AccessKey,
        revoke_tokens: bool,
        actor: &Actor,
    ) -> Result<Option<u64>, StoreError> {
        let stored = self.keys.seal_access_key(id, slot, &key);
        let resource = id;
        let sql = match slot {
            KeySlot::Primary => "UPDATE callsign_resources SET primary_key = $2 WHERE id = $1",
            KeySlot::Secondary => "UPDATE callsign_resources SET secondary_key = $2 WHERE id = $1",
            KeySlot::VerifyOnly => "UPDATE callsign_resources SET verify_key = $2 WHERE id = $1",
        };
        let id = id.to_string();
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        if tx.execute(sql, &[&id, &stored]).await.map_err(pg)? == 0 {
            return Ok(None);
        }
        let revoked = if revoke_tokens {
            change_with_events(
                &tx,
                &id,
                RevocationKind::Revoked,
                "UPDATE callsign_identities SET revocation_epoch = revocation_epoch + 1
                 WHERE id IN (
                   SELECT id FROM callsign_identities WHERE resource_id = $1::TEXT
                   ORDER BY id FOR UPDATE)
                 RETURNING id, resource_id, revocation_epoch",
                "",
            )
            .await?
        } else {
            0
        };
        bump_generation(&tx).await?;
        let event = key_replaced_event(resource, slot, revoke_tokens, revoked);
        write_audit(&tx, actor, &event).await?;
        tx.commit().await.map_err(pg)?;
        if revoked > 0 {
            self.signal.bump_resource(resource);
        }
        Ok(Some(revoked))
    }

    async fn deleted_resources(&self) -> Result<Vec<ResourceId>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .query(
                "SELECT id FROM callsign_resource_tombstones ORDER BY id",
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| {
                let id: String = r.try_get(0).map_err(pg)?;
                ResourceId::parse(&id).map_err(|_| StoreError::corrupt("resource tombstone"))
            })
            .collect()
    }

    async fn config_generation(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_cached("SELECT generation FROM callsign_config_generation WHERE id = 1")
            .await
            .map_err(pg)?;
        let generation: i64 = client
            .query_one(&stmt, &[])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        u64::try_from(generation).map_err(|_| StoreError::corrupt("negative generation"))
    }
}

/// Inserts a resource (stored form) and moves the configuration generation.
async fn insert_resource(
    tx: &deadpool_postgres::Transaction<'_>,
    r: &StoredResource,
    is_default: bool,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO callsign_resources
             (id, is_default, name, host, primary_key, secondary_key, verify_key, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &r.id.to_string(),
            &is_default,
            &r.name,
            &r.host,
            &r.primary,
            &r.secondary,
            &r.verify,
            &ms(r.created_at),
        ],
    )
    .await
    .map_err(pg)?;
    bump_generation(tx).await
}

/// Moves the configuration generation running nodes poll.
async fn bump_generation(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE callsign_config_generation SET generation = generation + 1 WHERE id = 1",
        &[],
    )
    .await
    .map(drop)
    .map_err(pg)
}

#[async_trait]
impl SigningKeyStore for PostgresStore {
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {SIGNING_KEY_COLUMNS} FROM callsign_signing_keys ORDER BY created_at_ms DESC, seq DESC"
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| self.keys.open_signing_key(&signing_key(r)?))
            .collect()
    }

    async fn add_signing_key(&self, key: StoredSigningKey) -> Result<(), StoreError> {
        let key = self.keys.seal_signing_key(&key);
        let client = self.pool.get().await.map_err(pool_error)?;
        insert_signing_key(&client, &key).await
    }

    async fn bootstrap_signing_key(
        &self,
        candidate: StoredSigningKey,
    ) -> Result<StoredSigningKey, StoreError> {
        let candidate = self.keys.seal_signing_key(&candidate);
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        // Serialize bootstraps of all nodes; released at commit.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        let existing = tx
            .query_opt(
                &format!(
                    "SELECT {SIGNING_KEY_COLUMNS} FROM callsign_signing_keys WHERE alg = $1
                     ORDER BY created_at_ms DESC, seq DESC LIMIT 1"
                ),
                &[&candidate.alg.jose_name()],
            )
            .await
            .map_err(pg)?;
        let key = match existing {
            Some(row) => signing_key(&row)?,
            None => {
                insert_signing_key(&tx, &candidate).await?;
                candidate
            }
        };
        tx.commit().await.map_err(pg)?;
        self.keys.open_signing_key(&key)
    }

    async fn rotate_signing_key(&self, rotation: KeyRotation) -> Result<Rotation, StoreError> {
        let key = self.keys.seal_signing_key(&rotation.key);
        let alg = key.alg.jose_name();
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        // One rotation at a time across nodes (and with bootstrap and re-sealing).
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        let pending = tx
            .query_opt(
                "SELECT kid, activates_at_ms FROM callsign_signing_keys
                 WHERE alg = $1 AND activates_at_ms > $2 ORDER BY activates_at_ms LIMIT 1",
                &[&alg, &ms(rotation.now)],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = pending {
            return Ok(Rotation::AlreadyPending {
                kid: row.try_get(0).map_err(pg)?,
                activates_at: from_ms(row.try_get(1).map_err(pg)?)?,
            });
        }
        insert_signing_key(&tx, &key).await?;
        tx.execute(
            "UPDATE callsign_signing_keys SET retire_after_ms = $3
             WHERE alg = $1 AND kid <> $2 AND retire_after_ms IS NULL",
            &[&alg, &key.kid, &ms(rotation.retire_previous_after)],
        )
        .await
        .map_err(pg)?;
        write_audit(&tx, &rotation.actor, &rotation.event()).await?;
        tx.commit().await.map_err(pg)?;
        Ok(Rotation::Added)
    }

    async fn retire_signing_keys(&self, now: OffsetDateTime) -> Result<Vec<String>, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let kids = tx
            .query(RETIRE_KEYS, &[&ms(now)])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.try_get(0).map_err(pg))
            .collect::<Result<Vec<String>, _>>()?;
        for kid in &kids {
            write_audit(&tx, &Actor::node(), &crate::key_retired_event(kid)).await?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(kids)
    }
}

impl PostgresStore {
    async fn stored_keys(
        &self,
        client: &impl deadpool_postgres::GenericClient,
    ) -> Result<(Vec<StoredResource>, Vec<StoredSigningKey>), StoreError> {
        let resources = client
            .query(
                &format!("SELECT {RESOURCE_COLUMNS} FROM callsign_resources"),
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(resource)
            .collect::<Result<Vec<_>, _>>()?;
        let keys = client
            .query(
                &format!("SELECT {SIGNING_KEY_COLUMNS} FROM callsign_signing_keys"),
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(signing_key)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((resources, keys))
    }
}

#[async_trait]
impl KeyMaterialStore for PostgresStore {
    async fn seal_status(&self) -> Result<SealStatus, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let (resources, keys) = self.stored_keys(&client).await?;
        Ok(count_sealed(&resources, &keys))
    }

    async fn reseal_keys(&self) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        // One re-seal at a time across nodes and with key bootstrap.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        let (resources, keys) = self.stored_keys(&tx).await?;
        let plan = KeyRewrite::plan(&self.keys, resources, keys)?;
        let mut n = 0;
        for (old, new) in &plan.resources {
            let values = 2 + usize::from(old.verify.is_some());
            n += values
                * tx.execute(
                    "UPDATE callsign_resources SET primary_key = $2, secondary_key = $3, verify_key = $4
                     WHERE id = $1",
                    &[&old.id.to_string(), &new.primary, &new.secondary, &new.verify],
                )
                .await
                .map_err(pg)? as usize;
        }
        for (old, new) in &plan.keys {
            n += tx
                .execute(
                    "UPDATE callsign_signing_keys SET pkcs8 = $2 WHERE kid = $1",
                    &[&old.kid, &new.pkcs8],
                )
                .await
                .map_err(pg)? as usize;
        }
        tx.commit().await.map_err(pg)?;
        // Rewrite both tables into new files so the old values' dead rows are gone from the
        // heap (the WAL archive and earlier backups keep what they had).
        client
            .batch_execute("VACUUM FULL callsign_resources, callsign_signing_keys")
            .await
            .map_err(pg)?;
        Ok(n)
    }
}

#[async_trait]
impl AssignmentStore for PostgresStore {
    async fn get_assignment(
        &self,
        resource: ResourceId,
        tenant: Uuid,
        object: Uuid,
    ) -> Result<Option<TeamsAssignment>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ASSIGNMENT_COLUMNS} FROM callsign_teams_assignments
                 WHERE resource_id = $1 AND tenant_id = $2 AND object_id = $3"
            ))
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(
                &stmt,
                &[
                    &resource.to_string(),
                    &tenant.to_string(),
                    &object.to_string(),
                ],
            )
            .await
            .map_err(pg)?;
        row.as_ref()
            .map(|r| assignment(r).map(|(_, a)| a))
            .transpose()
    }

    async fn put_assignment(
        &self,
        resource: ResourceId,
        assignment: TeamsAssignment,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let client = client.transaction().await.map_err(pg)?;
        let clients: Option<Vec<String>> = assignment
            .client_ids
            .as_ref()
            .map(|ids| ids.iter().map(Uuid::to_string).collect());
        // One statement: a concurrent first put either inserts or, having waited for the other
        // insert, updates. `xmax = 0` holds only for a row this statement inserted.
        let stmt = client
            .prepare_cached(
                "INSERT INTO callsign_teams_assignments
                   (resource_id, tenant_id, object_id, principal_type, client_ids, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (resource_id, tenant_id, object_id) DO UPDATE
                   SET principal_type = EXCLUDED.principal_type,
                       client_ids = EXCLUDED.client_ids,
                       updated_at_ms = EXCLUDED.updated_at_ms
                 RETURNING (xmax = 0) AS created",
            )
            .await
            .map_err(pg)?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &resource.to_string(),
                    &assignment.tenant_id.to_string(),
                    &assignment.object_id.to_string(),
                    &assignment.principal_type.as_str(),
                    &clients,
                    &ms(OffsetDateTime::now_utc()),
                ],
            )
            .await
            .map_err(pg)?;
        let created: bool = row.try_get(0).map_err(pg)?;
        let outcome = if created {
            AuditOutcome::Success
        } else {
            AuditOutcome::Replaced
        };
        let detail = crate::sqlite::assignment_detail(
            &assignment.tenant_id.to_string(),
            &assignment.object_id.to_string(),
        );
        let event = AuditEvent::resource(AuditOperation::PutAssignment, resource, outcome)
            .with_detail(detail);
        write_audit(&client, actor, &event).await?;
        client.commit().await.map_err(pg)?;
        Ok(created)
    }

    async fn delete_assignment(
        &self,
        resource: ResourceId,
        tenant: Uuid,
        object: Uuid,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let client = client.transaction().await.map_err(pg)?;
        let stmt = client
            .prepare_cached(
                "DELETE FROM callsign_teams_assignments
                 WHERE resource_id = $1 AND tenant_id = $2 AND object_id = $3",
            )
            .await
            .map_err(pg)?;
        let n = client
            .execute(
                &stmt,
                &[
                    &resource.to_string(),
                    &tenant.to_string(),
                    &object.to_string(),
                ],
            )
            .await
            .map_err(pg)?;
        let outcome = if n > 0 {
            AuditOutcome::Success
        } else {
            AuditOutcome::NotFound
        };
        let detail = crate::sqlite::assignment_detail(&tenant.to_string(), &object.to_string());
        let event = AuditEvent::resource(AuditOperation::DeleteAssignment, resource, outcome)
            .with_detail(detail);
        write_audit(&client, actor, &event).await?;
        client.commit().await.map_err(pg)?;
        Ok(n > 0)
    }
}

#[async_trait]
impl BulkIdentities for PostgresStore {
    async fn list_identities(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &format!(
                    "SELECT {IDENTITY_COLUMNS} FROM callsign_identities WHERE id > $1 ORDER BY id LIMIT $2"
                ),
                &[&after, &limit],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(identity).collect()
    }

    async fn import_identities(
        &self,
        records: Vec<IdentityRecord>,
    ) -> Result<ImportReport, StoreError> {
        if records.is_empty() {
            return Ok(ImportReport::default());
        }
        let columns = ImportColumns::of(&records);
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let row = tx
            .query_one(
                IMPORT_IDENTITIES,
                &[
                    &columns.ids,
                    &columns.resources,
                    &columns.customs,
                    &columns.created,
                    &columns.epochs,
                    &columns.last,
                ],
            )
            .await
            .map_err(pg)?;
        let count = |i: usize| -> Result<usize, StoreError> {
            let n: i64 = row.try_get(i).map_err(pg)?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        let tombstoned = count(0)?;
        let present = count(1)?;
        let mut report = ImportReport {
            epochs_raised: count(2)?,
            ..ImportReport::default()
        };
        let inserted: Vec<String> = row.try_get(3).map_err(pg)?;
        let undone = undo_deleted_inserts(&tx, &inserted).await?;
        tx.commit().await.map_err(pg)?;
        report.inserted = inserted.len().saturating_sub(undone);
        report.skipped_deleted = tombstoned + undone;
        // Neither tombstoned, present nor inserted: another identity holds the custom id.
        report.custom_id_conflicts = columns
            .ids
            .len()
            .saturating_sub(tombstoned)
            .saturating_sub(present)
            .saturating_sub(inserted.len());
        Ok(report)
    }

    async fn list_tombstones(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> Result<Vec<Tombstone>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT id, deleted_at_ms FROM callsign_identity_tombstones WHERE id > $1
                 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(pg)?;
                Ok(Tombstone {
                    id: IdentityId::parse(&id)
                        .map_err(|_| StoreError::corrupt(format!("tombstone id {id:?}")))?,
                    deleted_at: from_ms(row.try_get(1).map_err(pg)?)?,
                })
            })
            .collect()
    }

    async fn import_tombstones(
        &self,
        tombstones: Vec<Tombstone>,
    ) -> Result<TombstoneReport, StoreError> {
        if tombstones.is_empty() {
            return Ok(TombstoneReport::default());
        }
        for t in &tombstones {
            self.touched.forget(&t.id);
        }
        let ids: Vec<String> = tombstones.iter().map(|t| t.id.to_string()).collect();
        let resources: Vec<String> = tombstones
            .iter()
            .map(|t| t.id.resource().to_string())
            .collect();
        let deleted: Vec<i64> = tombstones.iter().map(|t| ms(t.deleted_at)).collect();
        let client = self.pool.get().await.map_err(pool_error)?;
        // One statement: the tombstones and the deletes they imply commit together.
        let row = client
            .query_one(
                "WITH input AS (
                   SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
                     AS t(id, resource_id, deleted_at_ms)
                 ),
                 stored AS (
                   INSERT INTO callsign_identity_tombstones (id, resource_id, deleted_at_ms)
                   SELECT * FROM input ON CONFLICT DO NOTHING RETURNING id
                 ),
                 gone AS (
                   DELETE FROM callsign_identities c USING input i WHERE c.id = i.id RETURNING c.id
                 )
                 SELECT (SELECT count(*) FROM stored), (SELECT count(*) FROM gone)",
                &[&ids, &resources, &deleted],
            )
            .await
            .map_err(pg)?;
        let count = |i: usize| -> Result<usize, StoreError> {
            let n: i64 = row.try_get(i).map_err(pg)?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        Ok(TombstoneReport {
            inserted: count(0)?,
            identities_deleted: count(1)?,
        })
    }

    async fn all_assignments(&self) -> Result<Vec<(ResourceId, TeamsAssignment)>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {ASSIGNMENT_COLUMNS} FROM callsign_teams_assignments
                     ORDER BY resource_id, tenant_id, object_id"
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(assignment).collect()
    }

    async fn all_access_assignments(
        &self,
    ) -> Result<Vec<(ResourceId, AccessAssignment)>, StoreError> {
        access::all(self).await
    }

    async fn import_audit(&self, records: Vec<AuditRecord>) -> Result<usize, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        let text = |f: &dyn Fn(&AuditRecord) -> Option<String>| -> Vec<Option<String>> {
            records.iter().map(f).collect()
        };
        let seqs: Vec<i64> = records.iter().map(|r| r.seq).collect();
        let ats: Vec<i64> = records.iter().map(|r| ms(r.at)).collect();
        let resources = text(&|r| r.resource.map(|x| x.to_string()));
        let operations = text(&|r| Some(r.operation.as_str().to_owned()));
        let identities = text(&|r| r.identity.map(|x| x.to_string()));
        let outcomes = text(&|r| Some(r.outcome.as_str().to_owned()));
        let credentials = text(&|r| Some(r.credential.as_str().to_owned()));
        let clients = text(&|r| r.client.map(|x| x.to_string()));
        let requests = text(&|r| r.request_id.clone());
        let details = text(&|r| r.detail.clone());
        let subjects = text(&|r| r.subject.clone());
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let n = tx
            .execute(
                IMPORT_AUDIT,
                &[
                    &seqs,
                    &ats,
                    &resources,
                    &operations,
                    &identities,
                    &outcomes,
                    &credentials,
                    &clients,
                    &requests,
                    &details,
                    &subjects,
                ],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// Imports audit records in one statement, in the source's order (`$1`, their numbers there),
/// numbered here. A record is the same record when everything but its number is: the target
/// numbers what it imports itself (its own records may have taken the source's numbers).
const IMPORT_AUDIT: &str = "
INSERT INTO callsign_audit_log (at_ms, resource_id, operation, identity_id, outcome, credential,
                                client, request_id, detail, subject)
SELECT x.at_ms, x.resource_id, x.operation, x.identity_id, x.outcome, x.credential, x.client,
       x.request_id, x.detail, x.subject
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
     AS x(seq, at_ms, resource_id, operation, identity_id, outcome, credential, client,
          request_id, detail, subject)
WHERE NOT EXISTS (
  SELECT 1 FROM callsign_audit_log a
  WHERE a.at_ms = x.at_ms AND a.operation = x.operation
    AND a.resource_id IS NOT DISTINCT FROM x.resource_id
    AND a.identity_id IS NOT DISTINCT FROM x.identity_id
    AND a.outcome = x.outcome AND a.credential = x.credential
    AND a.client IS NOT DISTINCT FROM x.client
    AND a.request_id IS NOT DISTINCT FROM x.request_id
    AND a.detail IS NOT DISTINCT FROM x.detail
    AND a.subject IS NOT DISTINCT FROM x.subject)
ORDER BY x.seq";

/// Imports identities in one statement: tombstoned ids are left out; present ones get the
/// higher epoch; the rest is inserted (a custom id held by another identity makes the insert do
/// nothing). Answers the counts of tombstoned, present and raised records and the inserted ids.
const IMPORT_IDENTITIES: &str = "WITH input AS (
   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
     AS t(id, resource_id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms)
 ),
 live AS (
   SELECT * FROM input i
   WHERE NOT EXISTS (SELECT 1 FROM callsign_identity_tombstones t WHERE t.id = i.id)
 ),
 present AS (
   SELECT count(*) AS n FROM live l JOIN callsign_identities c ON c.id = l.id
 ),
 raised AS (
   UPDATE callsign_identities c SET revocation_epoch = l.revocation_epoch
   FROM live l WHERE c.id = l.id AND c.revocation_epoch < l.revocation_epoch
   RETURNING c.id
 ),
 inserted AS (
   INSERT INTO callsign_identities
     (id, resource_id, custom_id, created_at_ms, revocation_epoch, last_token_issued_at_ms)
   SELECT * FROM live
   ON CONFLICT DO NOTHING
   RETURNING id
 )
 SELECT (SELECT count(*) FROM input) - (SELECT count(*) FROM live),
        (SELECT n FROM present),
        (SELECT count(*) FROM raised),
        (SELECT coalesce(array_agg(id), '{}') FROM inserted)";

/// Identity records as the column arrays [`IMPORT_IDENTITIES`] takes.
struct ImportColumns<'a> {
    ids: Vec<String>,
    resources: Vec<String>,
    customs: Vec<Option<&'a str>>,
    created: Vec<i64>,
    epochs: Vec<i64>,
    last: Vec<Option<i64>>,
}

impl<'a> ImportColumns<'a> {
    fn of(records: &'a [IdentityRecord]) -> Self {
        Self {
            ids: records.iter().map(|r| r.id.to_string()).collect(),
            resources: records
                .iter()
                .map(|r| r.id.resource().to_string())
                .collect(),
            customs: records
                .iter()
                .map(|r| r.custom_id.as_ref().map(CustomId::as_str))
                .collect(),
            created: records.iter().map(|r| ms(r.created_at)).collect(),
            epochs: records
                .iter()
                .map(|r| i64::try_from(r.revocation_epoch).unwrap_or(i64::MAX))
                .collect(),
            last: records
                .iter()
                .map(|r| r.last_token_issued_at.map(ms))
                .collect(),
        }
    }
}

/// Deletes again the just inserted identities that have a tombstone by now: a delete that
/// committed while the import ran (its identity gone, its tombstone not visible to the import's
/// statement) must not be undone, and a later statement sees it. Returns how many.
async fn undo_deleted_inserts(
    tx: &deadpool_postgres::Transaction<'_>,
    inserted: &[String],
) -> Result<usize, StoreError> {
    if inserted.is_empty() {
        return Ok(0);
    }
    let undone = tx
        .execute(
            "DELETE FROM callsign_identities c USING callsign_identity_tombstones t
             WHERE c.id = t.id AND c.id = ANY($1)",
            &[&inserted],
        )
        .await
        .map_err(pg)?;
    Ok(usize::try_from(undone).unwrap_or(0))
}

#[async_trait]
impl StoreHealth for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client.execute("SELECT 1", &[]).await.map_err(pg)?;
        Ok(())
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        let status = self.pool.status();
        Some(PoolStatus {
            max: status.max_size,
            open: status.size,
            idle: status.available,
            waiting: status.waiting + self.feed_gate.waiting(),
        })
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn close(&self) {
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(f) = flusher {
            f.abort();
            let _ = f.await;
        }
        self.stop_listener();
        self.creates.close().await;
        flush_touched(&self.pool, &self.touched).await;
        self.pool.close();
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop_listener();
        self.creates.abort();
        if let Some(f) = self
            .flusher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            f.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_error_keeps_its_code_and_message_but_never_the_row_values() {
        let client = callsign_testkit::connect_postgres(&callsign_testkit::admin_url()).await;
        let e = client
            .batch_execute(
                "CREATE TEMPORARY TABLE held (k TEXT PRIMARY KEY);
                 INSERT INTO held VALUES ('s3cret-key'), ('s3cret-key');",
            )
            .await
            .expect_err("a duplicate key");
        let detail = e.as_db_error().and_then(|db| db.detail()).unwrap_or("");
        assert!(
            detail.contains("s3cret-key"),
            "the server quotes the row: {detail}"
        );
        let err = pg(e);
        assert!(err.is_backend(), "{err}");
        let chain = err.detail_chain();
        assert!(chain.contains("23505"), "{chain}");
        assert!(chain.contains("duplicate key"), "{chain}");
        assert!(!chain.contains("s3cret"), "{chain}");
    }
}
