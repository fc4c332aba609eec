//! Storage for callsign: capability-split traits and the embedded SQLite implementation.
//!
//! The traits speak domain types only ([`callsign_core`]); no HTTP, no wire format. A backend is
//! one type implementing all of them ([`Store`]); the server holds it as `Arc<dyn Store>` and
//! never asks which backend it is.
//!
//! Invariants every backend keeps:
//! * an acknowledged write is durable (SQLite: WAL with `synchronous=FULL`, group commit);
//! * a custom id maps to at most one identity per resource, even under concurrent creates;
//! * revoking increments the identity's revocation epoch atomically and returns the new value;
//! * deleting removes everything stored for the identity, custom id included.

mod copy;
mod pg_tls;
mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use callsign_core::token::Algorithm;
use callsign_core::{AccessKey, CustomId, IdentityId, ResourceId, TeamsAssignment};
use time::OffsetDateTime;
use uuid::Uuid;

pub use copy::{CopyError, CopyReport, copy_store};
pub use pg_tls::mask_url as mask_database_url;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;

/// What can go wrong in a store. No variant carries HTTP meaning; the server maps them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached right now (retry later).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data does not parse (a bug or a hand-edited database).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Any other backend failure.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// Milliseconds since the epoch, the precision both backends store.
pub(crate) fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`unix_ms`].
pub(crate) fn from_unix_ms(v: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .map_err(|_| StoreError::Corrupt(format!("timestamp {v} out of range")))
}

/// `last_token_issued_at` values not yet written: issuing a token records here, a background
/// flush writes them, reads overlay them. Shared by the backends.
#[derive(Debug, Default)]
pub(crate) struct PendingTokenTimes(Mutex<HashMap<IdentityId, i64>>);

impl PendingTokenTimes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IdentityId, i64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the latest time per identity.
    pub(crate) fn record(&self, id: &IdentityId, at: OffsetDateTime) {
        let mut map = self.map();
        let v = map.entry(*id).or_insert(0);
        *v = (*v).max(unix_ms(at));
    }

    /// Forgets an identity (it was deleted).
    pub(crate) fn forget(&self, id: &IdentityId) {
        self.map().remove(id);
    }

    /// Everything waiting, emptying the buffer.
    pub(crate) fn take(&self) -> Vec<(IdentityId, i64)> {
        self.map().drain().collect()
    }

    /// Applies a pending time newer than the stored one.
    pub(crate) fn overlay(&self, record: &mut IdentityRecord) {
        let pending = self
            .map()
            .get(&record.id)
            .and_then(|at| from_unix_ms(*at).ok());
        if pending > record.last_token_issued_at {
            record.last_token_issued_at = pending;
        }
    }
}

/// A new identity to store.
#[derive(Debug, Clone)]
pub struct NewIdentity {
    /// The freshly generated id.
    pub id: IdentityId,
    /// The caller's key for it, if any.
    pub custom_id: Option<CustomId>,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// An identity as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// Its id.
    pub id: IdentityId,
    /// Its custom id, if created with one.
    pub custom_id: Option<String>,
    /// Creation time (millisecond precision).
    pub created_at: OffsetDateTime,
    /// Incremented by every revoke; see `callsign_core::token::token_in_force`.
    pub revocation_epoch: u64,
    /// When the last token was issued (millisecond precision; recorded lazily, may lag by a
    /// second and is not kept across a crash).
    pub last_token_issued_at: Option<OffsetDateTime>,
}

/// The result of a create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The identity: new, or the existing one for a repeated custom id.
    pub identity: IdentityRecord,
    /// False when a repeated custom id returned an existing identity.
    pub created: bool,
}

/// A communication resource: its GUID and its two access keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRecord {
    /// The GUID.
    pub id: ResourceId,
    /// Primary access key.
    pub primary_key: AccessKey,
    /// Secondary access key.
    pub secondary_key: AccessKey,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// A token signing key as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSigningKey {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: Algorithm,
    /// Private key, PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// Creation time; the newest key signs.
    pub created_at: OffsetDateTime,
}

impl Drop for StoredSigningKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pkcs8);
    }
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The identity directory.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Stores `new`, or returns the identity that already has its custom id.
    async fn create_identity(&self, new: NewIdentity) -> Result<Created, StoreError>;

    /// Looks an identity up.
    async fn get_identity(&self, id: &IdentityId) -> Result<Option<IdentityRecord>, StoreError>;

    /// Increments the revocation epoch; `None` when the identity does not exist.
    async fn revoke_tokens(&self, id: &IdentityId) -> Result<Option<u64>, StoreError>;

    /// Deletes the identity and everything stored for it; false when it did not exist.
    async fn delete_identity(&self, id: &IdentityId) -> Result<bool, StoreError>;

    /// Notes that a token was issued (best effort, not durable, never fails the caller).
    fn record_token_issued(&self, id: &IdentityId, at: OffsetDateTime);

    /// Up to `limit` identities with ids greater than `after`, in id order (export, migration).
    async fn list_identities(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> Result<Vec<IdentityRecord>, StoreError>;

    /// Stores identities as they are (epoch, custom id and times included), skipping ids that
    /// exist already; returns how many were inserted. For migration between backends and bulk
    /// seeding, not for serving requests.
    async fn import_identities(&self, records: Vec<IdentityRecord>) -> Result<usize, StoreError>;
}

/// Resources and their access keys.
#[async_trait]
pub trait ResourceStore: Send + Sync {
    /// The default resource, if bootstrapped.
    async fn default_resource(&self) -> Result<Option<ResourceRecord>, StoreError>;

    /// Makes `candidate` the default resource unless one exists; returns the one in force.
    async fn bootstrap_default_resource(
        &self,
        candidate: ResourceRecord,
    ) -> Result<ResourceRecord, StoreError>;
}

/// Token signing keys.
#[async_trait]
pub trait SigningKeyStore: Send + Sync {
    /// Every stored key, newest first.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StoreError>;

    /// Adds a key (it becomes the newest).
    async fn add_signing_key(&self, key: StoredSigningKey) -> Result<(), StoreError>;

    /// Returns the newest stored key of `candidate.alg`, or stores `candidate` if there is none.
    /// Atomic: nodes starting together on one database agree on one key.
    async fn bootstrap_signing_key(
        &self,
        candidate: StoredSigningKey,
    ) -> Result<StoredSigningKey, StoreError>;
}

/// Teams extension access assignments, per resource, keyed by `(tenant, object)`.
#[async_trait]
pub trait AssignmentStore: Send + Sync {
    /// The assignment of `object` in `tenant`, if any.
    async fn get_assignment(
        &self,
        resource: ResourceId,
        tenant: Uuid,
        object: Uuid,
    ) -> Result<Option<TeamsAssignment>, StoreError>;

    /// Creates or replaces the assignment of its `(tenant, object)`; true when it was created.
    /// Atomic: of two concurrent first puts exactly one reports a creation.
    async fn put_assignment(
        &self,
        resource: ResourceId,
        assignment: TeamsAssignment,
    ) -> Result<bool, StoreError>;

    /// Removes an assignment; false when there was none.
    async fn delete_assignment(
        &self,
        resource: ResourceId,
        tenant: Uuid,
        object: Uuid,
    ) -> Result<bool, StoreError>;

    /// Every assignment of every resource, in `(resource, tenant, object)` order (export,
    /// migration).
    async fn all_assignments(&self) -> Result<Vec<(ResourceId, TeamsAssignment)>, StoreError>;
}

/// A complete backend.
#[async_trait]
pub trait Store: IdentityStore + ResourceStore + SigningKeyStore + AssignmentStore {
    /// Whether the backend answers (for readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes lazily recorded data and stops background work. Idempotent.
    async fn close(&self);
}
