//! Storage for callsign: capability-split traits and the embedded SQLite implementation.
//!
//! The traits speak domain types only ([`callsign_core`]); no HTTP, no wire format. A backend is
//! one type implementing all of them ([`Store`]); the server holds it as `Arc<dyn Store>` and
//! never asks which backend it is. Each function takes the narrowest of them it uses. Bulk export
//! and import ([`BulkIdentities`]) are not part of [`Store`]: only the copy and seed paths, which
//! open a [`BulkStore`], reach them. [`StoreLocation`] names which store to open (a data dir or a
//! `postgres://` URL; a mistyped scheme is an error) and [`ensure_default_resource`] makes the
//! resource a new store starts with.
//!
//! Invariants every backend keeps:
//! * an acknowledged write is durable (SQLite: WAL with `synchronous=FULL`, group commit);
//! * a custom id maps to at most one identity per resource, even under concurrent creates;
//! * revoking increments the identity's revocation epoch atomically and returns the new value;
//! * deleting removes everything stored for the identity, custom id included, and leaves a
//!   [`Tombstone`] in the same transaction: a deleted id is never created or imported again
//!   (its custom id is free for a new identity);
//! * every revoke and delete writes its revocation-feed event(s) in its own transaction
//!   ([`RevocationFeed`]): a rolled-back change leaves none, a committed one exactly one per
//!   identity it changed.

mod access;
pub mod audit;
mod bootstrap;
mod copy;
mod feed;
pub mod files;
mod location;
mod pg_feed;
mod pg_tls;
mod postgres;
mod probe;
mod seal;
mod sqlite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use callsign_core::token::Algorithm;
use callsign_core::{
    AccessAssignment, AccessKey, CustomId, HostName, IdentityId, ObjectId, ResourceId,
    ResourceName, TeamsAssignment,
};
use time::OffsetDateTime;
use uuid::Uuid;

pub use access::MAX_ACCESS_OBJECTS;
pub use audit::{
    Actor, AuditEvent, AuditLog, AuditOperation, AuditOutcome, AuditQuery, AuditRecord, Credential,
    TokenCount,
};
pub use bootstrap::{ensure_default_resource, ensure_default_resource_as};
pub use copy::{
    CopyError, CopyOptions, CopyProgress, CopyReport, CopyStage, DivergedId, copy_store,
    copy_store_with_progress,
};
pub use feed::{FeedEvent, FeedRead, FeedVersion, Revocation, RevocationFeed, RevocationKind};
pub use files::{DataDirError, restrict_umask, secure_data_dir};
pub use location::{
    Database, OpenError, StoreLocation, UnknownScheme, database_path, open_embedded_store,
    open_embedded_store_with,
};
pub use pg_tls::mask_url as mask_database_url;
pub use postgres::{PostgresOptions, PostgresStore};
pub use probe::{PostgresProbe, SchemaVersion, probe_embedded, probe_postgres};
pub use seal::{
    KeyProtection, MasterKey, MasterKeyError, Sealer, access_key_slot, is_sealed, is_sealed_bytes,
    sealed_by, signing_key_slot,
};
pub use sqlite::SqliteStore;

/// The cause under a [`StoreError`] (a database driver's error, an I/O error), kept for the
/// chain [`std::error::Error::source`] walks. Shared, so that one failure of a group commit can
/// answer every write in it.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in a store. No variant carries HTTP meaning; the server maps them.
///
/// `detail` says what failed in words of the store; the driver's or the system's own error, when
/// there is one, is the [`source`](std::error::Error::source), so a caller printing the chain
/// sees it. Neither ever holds a secret: database URLs are masked ([`mask_database_url`]) and no
/// key material is ever formatted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached right now, or cannot write now (retry later).
    #[error("storage unavailable: {}{detail}", if *.cannot_write { CANNOT_WRITE } else { "" })]
    Unavailable {
        /// What is unavailable.
        detail: String,
        /// Whether this is a [`StoreError::cannot_write`].
        cannot_write: bool,
        /// The underlying error.
        #[source]
        source: Option<Cause>,
    },
    /// Stored data does not parse (a bug or a hand-edited database).
    #[error("stored data is corrupt: {detail}")]
    Corrupt {
        /// What does not parse.
        detail: String,
        /// The underlying error.
        #[source]
        source: Option<Cause>,
    },
    /// Key material is sealed under a master key this process does not have.
    #[error("{detail}")]
    Sealed {
        /// Which key, and under which master key.
        detail: String,
    },
    /// Any other backend failure.
    #[error("storage failure: {detail}")]
    Backend {
        /// What failed.
        detail: String,
        /// The underlying error.
        #[source]
        source: Option<Cause>,
    },
}

/// How the message of a [`StoreError::cannot_write`] goes on after "storage unavailable: ".
const CANNOT_WRITE: &str = "the store cannot write: ";

impl StoreError {
    /// The backend cannot be reached right now.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        StoreError::Unavailable {
            detail: detail.into(),
            cannot_write: false,
            source: None,
        }
    }

    /// The store cannot write now (disk full, read-only file system, I/O error) and reports it
    /// as a state of its own ([`Store::writable`], one log line when it starts and one when it
    /// ends): an [`StoreError::Unavailable`], retried later, that need not be logged per request.
    pub fn cannot_write(detail: impl Into<String>) -> Self {
        StoreError::Unavailable {
            detail: detail.into(),
            cannot_write: true,
            source: None,
        }
    }

    /// Stored data does not parse.
    pub fn corrupt(detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            detail: detail.into(),
            source: None,
        }
    }

    /// Key material is sealed under a master key this process does not have.
    pub fn sealed(detail: impl Into<String>) -> Self {
        StoreError::Sealed {
            detail: detail.into(),
        }
    }

    /// Any other backend failure.
    pub fn backend(detail: impl Into<String>) -> Self {
        StoreError::Backend {
            detail: detail.into(),
            source: None,
        }
    }

    /// This error with `cause` as its source (a [`StoreError::Sealed`] keeps none).
    pub fn caused_by(
        mut self,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        match &mut self {
            StoreError::Unavailable { source, .. }
            | StoreError::Corrupt { source, .. }
            | StoreError::Backend { source, .. } => *source = Some(Arc::from(cause.into())),
            StoreError::Sealed { .. } => {}
        }
        self
    }

    /// Whether this is a [`StoreError::Unavailable`] (a [`StoreError::cannot_write`] included).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// Whether this is a [`StoreError::cannot_write`].
    pub fn is_cannot_write(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable {
                cannot_write: true,
                ..
            }
        )
    }

    /// Whether this is a [`StoreError::Corrupt`].
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }

    /// Whether this is a [`StoreError::Sealed`].
    pub fn is_sealed(&self) -> bool {
        matches!(self, StoreError::Sealed { .. })
    }

    /// Whether this is a [`StoreError::Backend`].
    pub fn is_backend(&self) -> bool {
        matches!(self, StoreError::Backend { .. })
    }

    /// The error, then each cause in turn (`storage failure: detail: cause: cause`): what a log
    /// line shows.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }

    /// What the error says without its category: its detail, then each cause in turn
    /// (`detail: cause: cause`).
    pub fn detail_chain(&self) -> String {
        let detail = match self {
            StoreError::Unavailable { detail, .. }
            | StoreError::Corrupt { detail, .. }
            | StoreError::Sealed { detail }
            | StoreError::Backend { detail, .. } => detail,
        };
        let mut text = detail.clone();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }
}

/// Milliseconds since the epoch, the precision both backends store.
pub(crate) fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`unix_ms`].
pub(crate) fn from_unix_ms(v: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .map_err(|e| StoreError::corrupt(format!("timestamp {v} out of range")).caused_by(e))
}

/// A stored custom id of the identity `id`: one that does not parse is corrupt data.
pub(crate) fn stored_custom_id(
    id: &str,
    raw: Option<String>,
) -> Result<Option<CustomId>, StoreError> {
    raw.map(|c| {
        CustomId::parse(&c)
            .map_err(|e| StoreError::corrupt(format!("custom id of {id}")).caused_by(e))
    })
    .transpose()
}

/// `last_token_issued_at` values not yet written: issuing a token records here, a background
/// flush writes them, reads overlay them. Shared by the backends.
/// Per resource, the tokens issued since the last flush are counted here too.
#[derive(Debug, Default)]
pub(crate) struct PendingTokenTimes(
    Mutex<HashMap<IdentityId, i64>>,
    Mutex<HashMap<ResourceId, PendingCount>>,
);

/// Tokens issued for one resource since the last flush: how many, and the latest time (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PendingCount {
    pub(crate) count: i64,
    pub(crate) last_ms: i64,
}

impl PendingTokenTimes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IdentityId, i64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<ResourceId, PendingCount>> {
        self.1.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the latest time per identity and counts the token for its resource.
    pub(crate) fn record(&self, id: &IdentityId, at: OffsetDateTime) {
        self.keep(id, at);
        self.add_counts(&[(
            id.resource(),
            PendingCount {
                count: 1,
                last_ms: unix_ms(at),
            },
        )]);
    }

    /// Keeps the latest time per identity (a flush that failed puts its times back).
    pub(crate) fn keep(&self, id: &IdentityId, at: OffsetDateTime) {
        let mut map = self.map();
        let v = map.entry(*id).or_insert(0);
        *v = (*v).max(unix_ms(at));
    }

    /// Adds counts (a flush that failed puts its counts back).
    pub(crate) fn add_counts(&self, counts: &[(ResourceId, PendingCount)]) {
        let mut map = self.counts();
        for (resource, c) in counts {
            let v = map.entry(*resource).or_default();
            v.count += c.count;
            v.last_ms = v.last_ms.max(c.last_ms);
        }
    }

    /// Every count waiting, emptying the buffer.
    pub(crate) fn take_counts(&self) -> Vec<(ResourceId, PendingCount)> {
        self.counts().drain().collect()
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
    pub custom_id: Option<CustomId>,
    /// Creation time (millisecond precision).
    pub created_at: OffsetDateTime,
    /// Incremented by every revoke; see `callsign_core::token::token_in_force`.
    pub revocation_epoch: u64,
    /// When the last token was issued (millisecond precision; recorded lazily, may lag by a
    /// second and is not kept across a crash).
    pub last_token_issued_at: Option<OffsetDateTime>,
}

/// Which identities a listing ([`IdentityStore::list_page`]) returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityFilter {
    /// Only identities whose custom id starts with this (so none without a custom id).
    pub custom_id_prefix: Option<String>,
    /// Only identities whose last token was issued before this instant, or that never had one.
    pub last_token_issued_before: Option<OffsetDateTime>,
}

impl IdentityFilter {
    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &IdentityRecord) -> bool {
        let prefix = self.custom_id_prefix.as_deref().is_none_or(|p| {
            record
                .custom_id
                .as_ref()
                .is_some_and(|c| c.as_str().starts_with(p))
        });
        let stale = match (self.last_token_issued_before, record.last_token_issued_at) {
            (Some(before), Some(last)) => last < before,
            _ => true,
        };
        prefix && stale
    }
}

/// How many index rows one page of `limit` reads at most: `limit + 1` without a filter, ten per
/// identity the page holds with one, so a page of a sparse filter ends early (fewer identities,
/// and a continuation) rather than reading the whole resource.
pub(crate) fn scan_rows(limit: usize, filter: &IdentityFilter) -> usize {
    let first = limit.saturating_add(1);
    if *filter == IdentityFilter::default() {
        first
    } else {
        limit.saturating_mul(10).max(first)
    }
}

/// One page of a listing, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPage {
    /// The identities of the page that pass the filter.
    pub records: Vec<IdentityRecord>,
    /// When more identities may follow: the id the next page starts after (the last one this
    /// page covered, which need not be in `records`).
    pub next_after: Option<IdentityId>,
}

impl IdentityPage {
    /// The page of `rows` (the matches of a scan, in id order, at most `limit + 1` of them;
    /// the scan read `scanned` rows of at most [`scan_rows`], the last of them `last_scanned`),
    /// the buffered token times applied and the filter checked again against them.
    pub(crate) fn from_rows(
        mut rows: Vec<IdentityRecord>,
        (scanned, last_scanned): (usize, Option<IdentityId>),
        limit: usize,
        filter: &IdentityFilter,
        touched: &PendingTokenTimes,
    ) -> Self {
        let next_after = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| r.id)
        } else if scanned >= scan_rows(limit, filter) {
            // The scan stopped at its bound before the page filled: the next one goes on.
            last_scanned
        } else {
            None
        };
        for r in &mut rows {
            touched.overlay(r);
        }
        rows.retain(|r| filter.matches(r));
        IdentityPage {
            records: rows,
            next_after,
        }
    }
}

/// What is left of a deleted identity: enough to never create or import its id again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// The deleted identity's id.
    pub id: IdentityId,
    /// When it was deleted (millisecond precision).
    pub deleted_at: OffsetDateTime,
}

/// What a [`BulkIdentities::import_identities`] did with its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// Records stored as new identities.
    pub inserted: usize,
    /// Records of identities present already whose revocation epoch was higher than the
    /// stored one, which was raised to it.
    pub epochs_raised: usize,
    /// Records skipped because their id has a tombstone here (deleted; never brought back).
    pub skipped_deleted: usize,
    /// Records skipped because another identity of their resource holds their custom id here.
    pub custom_id_conflicts: usize,
}

/// What a [`BulkIdentities::import_tombstones`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TombstoneReport {
    /// Tombstones that were not here yet.
    pub inserted: usize,
    /// Identities deleted because a tombstone for their id was imported.
    pub identities_deleted: usize,
}

/// The result of a create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The identity: new, or the existing one for a repeated custom id.
    pub identity: IdentityRecord,
    /// False when a repeated custom id returned an existing identity.
    pub created: bool,
}

/// A communication resource: its GUID, name, routing host and access keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRecord {
    /// The GUID.
    pub id: ResourceId,
    /// Its name, unique in the deployment.
    pub name: ResourceName,
    /// The host name whose requests reach it; `None`: the server's own address, shared by at
    /// most [`MAX_RESOURCES_PER_HOST`] resources that are told apart by their keys.
    pub host: Option<HostName>,
    /// Primary access key.
    pub primary_key: AccessKey,
    /// Secondary access key.
    pub secondary_key: AccessKey,
    /// The verify-only key (introspection and the revocation feed, nothing else), once made.
    pub verify_key: Option<AccessKey>,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

impl ResourceRecord {
    /// A new resource with fresh primary and secondary keys and no verify-only key.
    pub fn generate(name: ResourceName, host: Option<HostName>, now: OffsetDateTime) -> Self {
        Self {
            id: ResourceId::new_random(),
            name,
            host,
            primary_key: AccessKey::generate(),
            secondary_key: AccessKey::generate(),
            verify_key: None,
            // The precision both backends keep, so that what is stored reads back equal.
            created_at: from_unix_ms(unix_ms(now)).unwrap_or(now),
        }
    }

    /// The key in `slot`, if the resource has one there.
    pub fn key(&self, slot: KeySlot) -> Option<&AccessKey> {
        match slot {
            KeySlot::Primary => Some(&self.primary_key),
            KeySlot::Secondary => Some(&self.secondary_key),
            KeySlot::VerifyOnly => self.verify_key.as_ref(),
        }
    }
}

/// The most resources that share one host (or the server's own address): a request to that
/// host is tried against each of their keys, so this bounds the signature work an
/// unauthenticated request can cause, however many resources a deployment holds. More
/// resources need host names of their own.
pub const MAX_RESOURCES_PER_HOST: usize = 4;

/// The audit record of a replaced access key.
pub(crate) fn key_replaced_event(
    resource: ResourceId,
    slot: KeySlot,
    revoke_tokens: bool,
    revoked: u64,
) -> AuditEvent {
    let detail = if revoke_tokens {
        format!(
            "{} key; every token revoked ({revoked} identities)",
            slot.as_str()
        )
    } else {
        format!("{} key", slot.as_str())
    };
    AuditEvent::resource(
        AuditOperation::RegenerateKey,
        resource,
        AuditOutcome::Success,
    )
    .with_detail(detail)
}

/// The audit record of a created resource.
pub(crate) fn resource_created_event(r: &StoredResource, default: bool) -> AuditEvent {
    let mut detail = format!("name {}", r.name);
    if let Some(host) = &r.host {
        detail.push_str(", host ");
        detail.push_str(host);
    }
    if default {
        detail.push_str(", the default resource");
    }
    AuditEvent::resource(AuditOperation::CreateResource, r.id, AuditOutcome::Success)
        .with_detail(detail)
}

/// The audit record of a deleted resource.
pub(crate) fn resource_deleted_event(id: ResourceId, identities: u64) -> AuditEvent {
    AuditEvent::resource(AuditOperation::DeleteResource, id, AuditOutcome::Success)
        .with_detail(format!("with {identities} identities"))
}

/// Which of a resource's access keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySlot {
    /// The primary key: every operation.
    Primary,
    /// The secondary key: every operation.
    Secondary,
    /// The verify-only key: introspection and the revocation feed only.
    VerifyOnly,
}

impl KeySlot {
    /// `primary`, `secondary`, `verify-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlot::Primary => "primary",
            KeySlot::Secondary => "secondary",
            KeySlot::VerifyOnly => "verify-only",
        }
    }
}

/// What [`ResourceStore::create_resource`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceCreated {
    /// Stored.
    Created,
    /// Another resource has that name; nothing stored.
    NameTaken,
    /// [`MAX_RESOURCES_PER_HOST`] resources share that host already; nothing stored.
    HostFull,
}

/// What [`ResourceStore::delete_resource`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceDeleted {
    /// Deleted with its identities (how many), tombstones, Teams assignments and access
    /// assignments.
    Deleted {
        /// Identities deleted with it.
        identities: u64,
    },
    /// No such resource.
    NotFound,
    /// The default resource is never deleted.
    IsDefault,
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
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// When it starts signing: the newest key of its algorithm whose time has come signs, and a
    /// key before its time (pending) is published but does not sign yet. A key bootstrapped on
    /// first start, or stored before rotation existed, activates when it is created.
    pub activates_at: OffsetDateTime,
    /// When it may be deleted (retired), set when a successor is added: by then every token it
    /// signed has expired. `None`: no successor yet, kept.
    pub retire_after: Option<OffsetDateTime>,
}

impl StoredSigningKey {
    /// Whether it is pending at `now`: published, not signing yet.
    pub fn is_pending(&self, now: OffsetDateTime) -> bool {
        self.activates_at > now
    }
}

/// What [`SigningKeyStore::rotate_signing_key`] is asked to do.
#[derive(Debug, Clone)]
pub struct KeyRotation {
    /// The new key, `activates_at` in the future.
    pub key: StoredSigningKey,
    /// The time of the caller: keys of the algorithm activating after it are pending.
    pub now: OffsetDateTime,
    /// The retirement bound given to the keys the new one succeeds.
    pub retire_previous_after: OffsetDateTime,
    /// Who rotates (an operator's command, or a node on its schedule), for the audit log.
    pub actor: Actor,
}

impl KeyRotation {
    /// The audit record of the added key.
    pub(crate) fn event(&self) -> AuditEvent {
        let detail = format!(
            "kid {} ({}), signs from {}",
            self.key.kid,
            self.key.alg.jose_name(),
            self.key
                .activates_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
        AuditEvent {
            operation: AuditOperation::RotateSigningKey,
            resource: None,
            identity: None,
            outcome: AuditOutcome::Success,
            detail: Some(detail),
        }
    }
}

/// The audit record of a retired signing key.
pub(crate) fn key_retired_event(kid: &str) -> AuditEvent {
    AuditEvent {
        operation: AuditOperation::RetireSigningKey,
        resource: None,
        identity: None,
        outcome: AuditOutcome::Success,
        detail: Some(format!("kid {kid}")),
    }
}

/// What a [`SigningKeyStore::rotate_signing_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The key was added, pending until its `activates_at`.
    Added,
    /// Nothing changed: a key of the algorithm is pending already.
    AlreadyPending {
        /// The pending key.
        kid: String,
        /// When it starts signing.
        activates_at: OffsetDateTime,
    },
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
            .field("activates_at", &self.activates_at)
            .field("retire_after", &self.retire_after)
            .finish_non_exhaustive()
    }
}

/// The identity directory.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// Stores `new`, or returns the identity that already has its custom id. Fails for an id
    /// that has a tombstone (ids are random, so this does not happen by chance).
    async fn create_identity(&self, new: NewIdentity, actor: &Actor)
    -> Result<Created, StoreError>;

    /// Looks an identity up.
    async fn get_identity(&self, id: &IdentityId) -> Result<Option<IdentityRecord>, StoreError>;

    /// The revocation epoch a token issued now carries; `None` when there is no such identity.
    /// The issue path's only read: a store may answer it from memory it keeps exact for its
    /// own writes (SQLite does; a change made by another process on the same file is seen
    /// within 250 ms, and a token issued in between is out of force from the start).
    async fn token_epoch(&self, id: &IdentityId) -> Result<Option<u64>, StoreError> {
        Ok(self.get_identity(id).await?.map(|r| r.revocation_epoch))
    }

    /// One page of `resource`'s identities that pass `filter`, in id order, starting after
    /// `after` (exclusive; `None`: from the first): at most `limit` of them, read with one range
    /// scan of the resource's id index that stops at the `limit + 1`st match or after `limit + 1`
    /// rows without a filter, ten per identity of the page with one (so a page of a sparse
    /// filter may hold fewer, even none, and still have a next page). Identities created or
    /// deleted meanwhile do not move the others, so a listing that follows
    /// [`IdentityPage::next_after`] returns every identity that exists throughout exactly once.
    /// Deleted identities are not listed.
    async fn list_page(
        &self,
        resource: ResourceId,
        after: Option<&IdentityId>,
        limit: usize,
        filter: &IdentityFilter,
    ) -> Result<IdentityPage, StoreError>;

    /// Increments the revocation epoch; `None` when the identity does not exist.
    async fn revoke_tokens(
        &self,
        id: &IdentityId,
        actor: &Actor,
    ) -> Result<Option<u64>, StoreError>;

    /// Deletes the identity and everything stored for it, leaving a [`Tombstone`] in the same
    /// transaction; false when it did not exist (then no tombstone is written).
    async fn delete_identity(&self, id: &IdentityId, actor: &Actor) -> Result<bool, StoreError>;

    /// Notes that a token was issued (best effort, not durable, never fails the caller).
    fn record_token_issued(&self, id: &IdentityId, at: OffsetDateTime);
}

/// Resources and their access keys.
///
/// Every change of a resource or key also increments the store's configuration generation
/// ([`ResourceStore::config_generation`]) in the same transaction: running nodes poll it and
/// reload the resources when it moves.
#[async_trait]
pub trait ResourceStore: Send + Sync {
    /// The default resource, if bootstrapped.
    async fn default_resource(&self) -> Result<Option<ResourceRecord>, StoreError>;

    /// Every resource, oldest first.
    async fn resources(&self) -> Result<Vec<ResourceRecord>, StoreError>;

    /// Stores a new resource, unless its name is taken or its host is full (checked atomically
    /// with the insert, also against concurrent creates on other nodes).
    /// Audited as `createResource` when stored (a refusal changes nothing and is not).
    async fn create_resource(
        &self,
        resource: ResourceRecord,
        actor: &Actor,
    ) -> Result<ResourceCreated, StoreError>;

    /// Deletes a resource with its identities, tombstones, Teams assignments and access
    /// assignments, in one transaction. Audited as `deleteResource` when deleted (one record:
    /// the assignments deleted with it have none of their own).
    async fn delete_resource(
        &self,
        id: ResourceId,
        actor: &Actor,
    ) -> Result<ResourceDeleted, StoreError>;

    /// Replaces the key in `slot` (the others keep working); with `revoke_tokens`, every token
    /// issued so far for the resource is revoked in the same transaction (every identity's
    /// revocation epoch is raised). Returns how many identities were revoked, `None` when there
    /// is no such resource. Audited as `regenerateKey` (the detail names the key, and the revoke).
    async fn replace_access_key(
        &self,
        id: ResourceId,
        slot: KeySlot,
        key: AccessKey,
        revoke_tokens: bool,
        actor: &Actor,
    ) -> Result<Option<u64>, StoreError>;

    /// The ids of deleted resources (a deletion leaves one, never removed): a copy between
    /// stores deletes them on the target and never brings them back.
    async fn deleted_resources(&self) -> Result<Vec<ResourceId>, StoreError>;

    /// A number that changes whenever resources or keys change (one cheap read).
    async fn config_generation(&self) -> Result<u64, StoreError>;

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

    /// Adds `rotation.key` as the next key of its algorithm, and gives every other key of that
    /// algorithm without a retirement bound `rotation.retire_previous_after`, in one
    /// transaction; unless a key of the algorithm is pending at `rotation.now` already, which
    /// is returned and nothing changes. Atomic across nodes and processes: of concurrent
    /// rotations of one algorithm exactly one adds its key. An added key is audited
    /// (`rotateSigningKey`, by `rotation.actor`).
    async fn rotate_signing_key(&self, rotation: KeyRotation) -> Result<Rotation, StoreError>;

    /// Deletes, in one transaction, every key whose retirement bound is at or before `now` and
    /// which a newer key of its algorithm, active at `now`, succeeds; returns their kids. Each
    /// retirement is audited (`retireSigningKey`, by the node). Idempotent: any node may run it.
    async fn retire_signing_keys(&self, now: OffsetDateTime) -> Result<Vec<String>, StoreError>;
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
        actor: &Actor,
    ) -> Result<bool, StoreError>;

    /// Removes an assignment; false when there was none.
    async fn delete_assignment(
        &self,
        resource: ResourceId,
        tenant: Uuid,
        object: Uuid,
        actor: &Actor,
    ) -> Result<bool, StoreError>;
}

/// Access assignments of trusted identity providers' principals (`/access/entra/assignments`),
/// per resource, keyed by object id. Every change is audited (`putAccessAssignment`,
/// `deleteAccessAssignment`, detail: the object id and principal type).
#[async_trait]
pub trait AccessAssignmentStore: Send + Sync {
    /// The assignment of `object`, if any.
    async fn get_access_assignment(
        &self,
        resource: ResourceId,
        object: &ObjectId,
    ) -> Result<Option<AccessAssignment>, StoreError>;

    /// The assignments of those of `objects` that have one (at most [`MAX_ACCESS_OBJECTS`] = 256
    /// objects are asked at once: a user, their groups and their tenant; more is a
    /// [`StoreError::Backend`], a caller's bug), in object id order. None asked: none.
    async fn access_assignments_of(
        &self,
        resource: ResourceId,
        objects: &[ObjectId],
    ) -> Result<Vec<AccessAssignment>, StoreError>;

    /// Up to `limit` assignments with object ids greater than `after`, in object id order
    /// (byte order of the stored text).
    async fn list_access_assignments(
        &self,
        resource: ResourceId,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<AccessAssignment>, StoreError>;

    /// Creates or replaces the assignment of its object id; true when it was created. Atomic:
    /// of two concurrent first puts exactly one reports a creation.
    async fn put_access_assignment(
        &self,
        resource: ResourceId,
        assignment: AccessAssignment,
        actor: &Actor,
    ) -> Result<bool, StoreError>;

    /// Removes an assignment; false when there was none (audited with the outcome `notFound`,
    /// as a Teams assignment's delete is).
    async fn delete_access_assignment(
        &self,
        resource: ResourceId,
        object: &ObjectId,
        actor: &Actor,
    ) -> Result<bool, StoreError>;

    /// Puts `puts` and deletes `deletes` (absent ones are no error) in one transaction: all or
    /// nothing. The object ids are distinct (a repeated one is a [`StoreError::Backend`] and
    /// changes nothing). One audit record per change, in object id order, written in the same
    /// transaction; a delete of an absent assignment changes nothing and leaves none.
    async fn patch_access_assignments(
        &self,
        resource: ResourceId,
        puts: Vec<AccessAssignment>,
        deletes: Vec<ObjectId>,
        actor: &Actor,
    ) -> Result<(), StoreError>;
}

/// A resource as stored: its access keys in their stored form (sealed or plain).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StoredResource {
    pub(crate) id: ResourceId,
    pub(crate) name: String,
    pub(crate) host: Option<String>,
    pub(crate) primary: String,
    pub(crate) secondary: String,
    pub(crate) verify: Option<String>,
    pub(crate) created_at: OffsetDateTime,
}

impl std::fmt::Debug for StoredResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredResource")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyProtection {
    /// The stored form of a resource (keys sealed when a master key is set).
    pub(crate) fn seal_resource(&self, r: &ResourceRecord) -> StoredResource {
        let id = r.id.to_string();
        StoredResource {
            id: r.id,
            name: r.name.as_str().to_owned(),
            host: r.host.as_ref().map(|h| h.as_str().to_owned()),
            primary: self.store_text(r.primary_key.expose(), &access_key_slot(&id, "primary")),
            secondary: self
                .store_text(r.secondary_key.expose(), &access_key_slot(&id, "secondary")),
            verify: r
                .verify_key
                .as_ref()
                .map(|k| self.seal_access_key(r.id, KeySlot::VerifyOnly, k)),
            created_at: r.created_at,
        }
    }

    /// The stored form of one access key of resource `id`.
    pub(crate) fn seal_access_key(&self, id: ResourceId, slot: KeySlot, key: &AccessKey) -> String {
        self.store_text(
            key.expose(),
            &access_key_slot(&id.to_string(), slot_label(slot)),
        )
    }

    /// A resource from its stored form.
    pub(crate) fn open_resource(&self, s: &StoredResource) -> Result<ResourceRecord, StoreError> {
        let id = s.id.to_string();
        let key = |stored: &str, which: &str| {
            let text = self.load_text(stored, &access_key_slot(&id, which))?;
            AccessKey::parse(&text).map_err(|_| StoreError::corrupt(format!("{which} access key")))
        };
        Ok(ResourceRecord {
            id: s.id,
            name: ResourceName::parse(&s.name)
                .map_err(|e| StoreError::corrupt(format!("name of resource {id}")).caused_by(e))?,
            host: s
                .host
                .as_deref()
                .map(HostName::parse)
                .transpose()
                .map_err(|e| StoreError::corrupt(format!("host of resource {id}")).caused_by(e))?,
            primary_key: key(&s.primary, "primary")?,
            secondary_key: key(&s.secondary, "secondary")?,
            verify_key: s
                .verify
                .as_deref()
                .map(|v| key(v, slot_label(KeySlot::VerifyOnly)))
                .transpose()?,
            created_at: s.created_at,
        })
    }

    /// The stored form of a signing key (private key sealed when a master key is set).
    pub(crate) fn seal_signing_key(&self, k: &StoredSigningKey) -> StoredSigningKey {
        StoredSigningKey {
            kid: k.kid.clone(),
            alg: k.alg,
            pkcs8: self.store_bytes(&k.pkcs8, &signing_key_slot(&k.kid)),
            created_at: k.created_at,
            activates_at: k.activates_at,
            retire_after: k.retire_after,
        }
    }

    /// A signing key from its stored form.
    pub(crate) fn open_signing_key(
        &self,
        k: &StoredSigningKey,
    ) -> Result<StoredSigningKey, StoreError> {
        Ok(StoredSigningKey {
            kid: k.kid.clone(),
            alg: k.alg,
            pkcs8: self
                .load_bytes(&k.pkcs8, &signing_key_slot(&k.kid))?
                .to_vec(),
            created_at: k.created_at,
            activates_at: k.activates_at,
            retire_after: k.retire_after,
        })
    }
}

/// The label of a key slot in its sealing slot name (`primary` and `secondary` as they have
/// always been, `verify`).
fn slot_label(slot: KeySlot) -> &'static str {
    match slot {
        KeySlot::Primary => "primary",
        KeySlot::Secondary => "secondary",
        KeySlot::VerifyOnly => "verify",
    }
}

/// How many stored keys are sealed, and how many are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealStatus {
    /// Access keys and signing keys stored sealed.
    pub sealed: usize,
    /// Access keys and signing keys stored in plain text.
    pub plain: usize,
}

/// Key material at rest.
#[async_trait]
pub trait KeyMaterialStore: Send + Sync {
    /// Counts sealed and plain keys (no key is opened).
    async fn seal_status(&self) -> Result<SealStatus, StoreError>;

    /// Rewrites every access key and signing key in the store's current protection: seals plain
    /// ones (and re-seals ones sealed under a previous master key) when a master key is set.
    /// Atomic. Returns how many values were rewritten.
    async fn reseal_keys(&self) -> Result<usize, StoreError>;
}

/// The rewrites `reseal_keys` performs: (old stored form, new stored form) per value.
#[derive(Debug, Default)]
pub(crate) struct KeyRewrite {
    pub(crate) resources: Vec<(StoredResource, StoredResource)>,
    pub(crate) keys: Vec<(StoredSigningKey, StoredSigningKey)>,
}

impl KeyRewrite {
    /// The rewrites that bring `resources` and `keys` (stored forms) into `protection`.
    pub(crate) fn plan(
        protection: &KeyProtection,
        resources: Vec<StoredResource>,
        keys: Vec<StoredSigningKey>,
    ) -> Result<Self, StoreError> {
        let mut plan = KeyRewrite::default();
        for stored in resources {
            let fresh = protection.seal_resource(&protection.open_resource(&stored)?);
            plan.resources.push((stored, fresh));
        }
        for stored in keys {
            let fresh = protection.seal_signing_key(&protection.open_signing_key(&stored)?);
            plan.keys.push((stored, fresh));
        }
        Ok(plan)
    }

    pub(crate) fn len(&self) -> usize {
        self.resources
            .iter()
            .map(|(old, _)| 2 + usize::from(old.verify.is_some()))
            .sum::<usize>()
            + self.keys.len()
    }
}

/// Counts sealed and plain values among stored forms.
pub(crate) fn count_sealed(resources: &[StoredResource], keys: &[StoredSigningKey]) -> SealStatus {
    let mut status = SealStatus::default();
    for r in resources {
        for v in [Some(&r.primary), Some(&r.secondary), r.verify.as_ref()]
            .into_iter()
            .flatten()
        {
            if is_sealed(v) {
                status.sealed += 1;
            } else {
                status.plain += 1;
            }
        }
    }
    for k in keys {
        if is_sealed_bytes(&k.pkcs8) {
            status.sealed += 1;
        } else {
            status.plain += 1;
        }
    }
    status
}

/// Whether a backend can serve.
#[async_trait]
pub trait StoreHealth: Send + Sync {
    /// Whether the backend answers (for readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether writes can succeed, as far as the backend knows without writing: the embedded
    /// store answers a [`StoreError::cannot_write`] from the moment a write failed because its
    /// disk is full, read-only or failing until a write (its own check once a second, or a
    /// client's) succeeds again. No I/O; for readiness and metrics. Default: `Ok`.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// How busy the backend's connection pool is, read without I/O (for metrics); `None` for a
    /// backend without one. Default: `None`.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

/// A store's connection pool at one moment (PostgreSQL: the pool; SQLite: the read-only
/// connections, the writer's own connection aside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Most connections the pool keeps.
    pub max: usize,
    /// Connections open now.
    pub open: usize,
    /// Of them, those idle (ready for the next request).
    pub idle: usize,
    /// Requests waiting for a connection.
    pub waiting: usize,
}

/// A complete backend, as a server serves it: everything but [`BulkIdentities`].
#[async_trait]
pub trait Store:
    IdentityStore
    + ResourceStore
    + SigningKeyStore
    + AssignmentStore
    + AccessAssignmentStore
    + KeyMaterialStore
    + StoreHealth
    + AuditLog
    + RevocationFeed
{
    /// Flushes lazily recorded data and stops background work. Idempotent.
    async fn close(&self);
}

/// Bulk export and import of the directory, for moving a deployment between backends
/// ([`copy_store`]) and for seeding; never for serving requests.
#[async_trait]
pub trait BulkIdentities: Send + Sync {
    /// Up to `limit` identities with ids greater than `after`, in id order (export, migration).
    async fn list_identities(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> Result<Vec<IdentityRecord>, StoreError>;

    /// Stores identities as they are (epoch, custom id and times included). A record whose id
    /// has a tombstone here is skipped (a deleted identity is never brought back); one whose id
    /// exists already only raises the stored revocation epoch to its own when that is higher
    /// (so a revoke is never undone); one whose custom id another identity of its resource holds
    /// here is skipped. For migration between backends and bulk seeding, not for serving
    /// requests.
    async fn import_identities(
        &self,
        records: Vec<IdentityRecord>,
    ) -> Result<ImportReport, StoreError>;

    /// Up to `limit` tombstones with ids greater than `after`, in id order (export, migration).
    async fn list_tombstones(
        &self,
        after: Option<&IdentityId>,
        limit: usize,
    ) -> Result<Vec<Tombstone>, StoreError>;

    /// Stores tombstones (keeping one present already) and deletes the identities they name,
    /// in one transaction: a delete made on another store takes effect here. For migration
    /// between backends, not for serving requests.
    async fn import_tombstones(
        &self,
        tombstones: Vec<Tombstone>,
    ) -> Result<TombstoneReport, StoreError>;

    /// Every assignment of every resource, in `(resource, tenant, object)` order (export,
    /// migration).
    async fn all_assignments(&self) -> Result<Vec<(ResourceId, TeamsAssignment)>, StoreError>;

    /// Every access assignment of every resource, in `(resource, object)` order (export,
    /// migration).
    async fn all_access_assignments(
        &self,
    ) -> Result<Vec<(ResourceId, AccessAssignment)>, StoreError>;

    /// Stores audit records in their order, numbered by this store, leaving out a record that is
    /// here already (the same in everything but its number), so a repeated copy adds only what
    /// is new and never drops a record whose number the target had used. Returns how many were
    /// new. For migration between backends ([`copy_store`]), not for serving requests.
    async fn import_audit(&self, records: Vec<AuditRecord>) -> Result<usize, StoreError>;
}

/// A backend with its bulk capability: what the copy and seed paths open. The server holds only
/// the [`Store`] part.
pub trait BulkStore: Store + BulkIdentities {}

impl<T: Store + BulkIdentities + ?Sized> BulkStore for T {}
