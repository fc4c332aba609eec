//! The audit log: one record for every change to the directory (identities, revocations,
//! assignments; resources, access keys and signing keys as those operations arrive), written by
//! the backend in the same transaction as the change, so a change that rolls back leaves no
//! record and one that commits leaves exactly one.
//!
//! A write method of a store takes the [`Actor`] that asked for it; the backend turns the actor,
//! the operation and its outcome into one [`AuditRecord`]. Token issue is not recorded one token
//! at a time: per identity the last issue time (`lastTokenIssuedAt`) and per resource a count
//! ([`TokenCount`]) are kept, written by the buffered token-time flush.
//!
//! Nothing secret is ever recorded: no key, token or request body; the detail is a few words.

use std::fmt;
use std::net::IpAddr;

use callsign_core::{IdentityId, ResourceId};
use time::OffsetDateTime;

use crate::StoreError;

/// Which credential a change was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A request signed with the resource's primary access key.
    Primary,
    /// A request signed with the resource's secondary access key.
    Secondary,
    /// A request signed with the resource's verify-only key.
    VerifyOnly,
    /// A command run by an operator directly on the store (`callsign …` subcommands).
    Operator,
    /// Background work of a server node.
    Node,
    /// A request carrying a trusted identity provider's bearer token; the actor's subject
    /// says whose.
    Bearer,
}

impl Credential {
    /// Every credential, in a fixed order.
    pub const ALL: [Credential; 6] = [
        Credential::Primary,
        Credential::Secondary,
        Credential::VerifyOnly,
        Credential::Operator,
        Credential::Node,
        Credential::Bearer,
    ];

    /// The stored and exported name (camelCase).
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Primary => "primary",
            Credential::Secondary => "secondary",
            Credential::VerifyOnly => "verifyOnly",
            Credential::Operator => "operator",
            Credential::Node => "node",
            Credential::Bearer => "bearer",
        }
    }

    /// The credential of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl From<crate::KeySlot> for Credential {
    /// The credential of a request signed with the access key in `slot`.
    fn from(slot: crate::KeySlot) -> Self {
        match slot {
            crate::KeySlot::Primary => Credential::Primary,
            crate::KeySlot::Secondary => Credential::Secondary,
            crate::KeySlot::VerifyOnly => Credential::VerifyOnly,
        }
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asked for a change: the credential, and for a request its client address and the
/// request id the server logged and answered with (`ms-cv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Which credential.
    pub credential: Credential,
    /// The client's address, for a request.
    pub client: Option<IpAddr>,
    /// The request id, for a request.
    pub request_id: Option<String>,
    /// For a bearer token, whose: `<issuer>#<subject>` (at most [`MAX_SUBJECT`] bytes).
    pub subject: Option<String>,
}

/// Longest actor subject stored; a longer one is cut (at a character boundary).
pub const MAX_SUBJECT: usize = 400;

impl Actor {
    /// An operator's command on the store.
    pub fn operator() -> Self {
        Self {
            credential: Credential::Operator,
            client: None,
            request_id: None,
            subject: None,
        }
    }

    /// A server's own background work.
    pub fn node() -> Self {
        Self {
            credential: Credential::Node,
            client: None,
            request_id: None,
            subject: None,
        }
    }
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOperation {
    /// An identity was created (or a repeated custom id returned the existing one).
    CreateIdentity,
    /// An identity was deleted.
    DeleteIdentity,
    /// An identity's tokens were revoked.
    RevokeTokens,
    /// A Teams extension assignment was created or replaced.
    PutAssignment,
    /// A Teams extension assignment was deleted.
    DeleteAssignment,
    /// A resource was created.
    CreateResource,
    /// A resource was deleted.
    DeleteResource,
    /// An access key was regenerated.
    RegenerateKey,
    /// A new token signing key was made the active one.
    RotateSigningKey,
    /// A token signing key was retired.
    RetireSigningKey,
    /// A token issued (only with `serve --audit-token-issue`).
    IssueToken,
    /// An access assignment (`/access/entra/assignments`) was created or replaced.
    PutAccessAssignment,
    /// An access assignment was deleted.
    DeleteAccessAssignment,
    /// A console session was opened (signed in with an access key).
    ConsoleLogin,
    /// A console session was ended by its user.
    ConsoleLogout,
}

impl AuditOperation {
    /// Every operation, in a fixed order.
    pub const ALL: [AuditOperation; 15] = [
        AuditOperation::CreateIdentity,
        AuditOperation::DeleteIdentity,
        AuditOperation::RevokeTokens,
        AuditOperation::PutAssignment,
        AuditOperation::DeleteAssignment,
        AuditOperation::CreateResource,
        AuditOperation::DeleteResource,
        AuditOperation::RegenerateKey,
        AuditOperation::RotateSigningKey,
        AuditOperation::RetireSigningKey,
        AuditOperation::IssueToken,
        AuditOperation::PutAccessAssignment,
        AuditOperation::DeleteAccessAssignment,
        AuditOperation::ConsoleLogin,
        AuditOperation::ConsoleLogout,
    ];

    /// The stored and exported name (camelCase).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOperation::CreateIdentity => "createIdentity",
            AuditOperation::DeleteIdentity => "deleteIdentity",
            AuditOperation::RevokeTokens => "revokeTokens",
            AuditOperation::PutAssignment => "putAssignment",
            AuditOperation::DeleteAssignment => "deleteAssignment",
            AuditOperation::CreateResource => "createResource",
            AuditOperation::DeleteResource => "deleteResource",
            AuditOperation::RegenerateKey => "regenerateKey",
            AuditOperation::RotateSigningKey => "rotateSigningKey",
            AuditOperation::RetireSigningKey => "retireSigningKey",
            AuditOperation::IssueToken => "issueToken",
            AuditOperation::PutAccessAssignment => "putAccessAssignment",
            AuditOperation::DeleteAccessAssignment => "deleteAccessAssignment",
            AuditOperation::ConsoleLogin => "consoleLogin",
            AuditOperation::ConsoleLogout => "consoleLogout",
        }
    }

    /// The operation of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for AuditOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an operation ended. Only operations that reached the store are recorded: a request
/// refused before (authentication, validation) changes nothing and leaves no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// The change was made (a creation, a deletion, a revoke).
    Success,
    /// A create found what it would create: a repeated custom id returned the existing identity.
    Existing,
    /// A put replaced what was there.
    Replaced,
    /// What the operation names does not exist; nothing changed.
    NotFound,
}

impl AuditOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [AuditOutcome; 4] = [
        AuditOutcome::Success,
        AuditOutcome::Existing,
        AuditOutcome::Replaced,
        AuditOutcome::NotFound,
    ];

    /// The stored and exported name (camelCase).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Existing => "existing",
            AuditOutcome::Replaced => "replaced",
            AuditOutcome::NotFound => "notFound",
        }
    }

    /// The outcome of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for AuditOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change to record: what a backend's audit helper writes, with the [`Actor`], in the
/// transaction of the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What was done.
    pub operation: AuditOperation,
    /// The resource it concerns (none for store-wide changes such as signing keys).
    pub resource: Option<ResourceId>,
    /// The identity it concerns, if any.
    pub identity: Option<IdentityId>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// A few words more (an assignment's tenant and object, a key's id, a new epoch); never a
    /// secret.
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event about `identity` (its resource is the identity's).
    pub fn identity(
        operation: AuditOperation,
        identity: IdentityId,
        outcome: AuditOutcome,
    ) -> Self {
        Self {
            operation,
            resource: Some(identity.resource()),
            identity: Some(identity),
            outcome,
            detail: None,
        }
    }

    /// An event about `resource`, with no identity.
    pub fn resource(
        operation: AuditOperation,
        resource: ResourceId,
        outcome: AuditOutcome,
    ) -> Self {
        Self {
            operation,
            resource: Some(resource),
            identity: None,
            outcome,
            detail: None,
        }
    }

    /// This event with `detail`.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Longest detail stored; a longer one is cut (at a character boundary).
pub const MAX_DETAIL: usize = 200;

/// One record of the audit log, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its sequence number: unique, increasing in the order records were written (on
    /// PostgreSQL, transactions that commit together may commit out of this order).
    pub seq: i64,
    /// When (millisecond precision).
    pub at: OffsetDateTime,
    /// The resource.
    pub resource: Option<ResourceId>,
    /// What was done.
    pub operation: AuditOperation,
    /// The identity, if any.
    pub identity: Option<IdentityId>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Which credential.
    pub credential: Credential,
    /// The client's address, for a request.
    pub client: Option<IpAddr>,
    /// The request id, for a request.
    pub request_id: Option<String>,
    /// For a bearer token, whose (`<issuer>#<subject>`).
    pub subject: Option<String>,
    /// A few words more.
    pub detail: Option<String>,
}

/// Which audit records [`AuditLog::audit_records`] returns: those after `after` (by sequence
/// number), at or after `since`, of `resource` and `operation`, at most `limit`, in sequence
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records with a greater sequence number.
    pub after: Option<i64>,
    /// Only records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records of this resource.
    pub resource: Option<ResourceId>,
    /// Only records of this operation.
    pub operation: Option<AuditOperation>,
    /// At most this many.
    pub limit: usize,
}

/// Tokens issued for one resource, as far as the buffered flush has written them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    /// The resource.
    pub resource: ResourceId,
    /// Tokens issued (written once a second; the last second before a crash may be lost).
    pub count: u64,
    /// When the last of them was issued.
    pub last_issued_at: Option<OffsetDateTime>,
}

/// Reading and pruning the audit log; part of every [`crate::Store`].
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync {
    /// Records that match `query`, in sequence order.
    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    /// Tokens issued per resource, in resource order.
    async fn token_counts(&self) -> Result<Vec<TokenCount>, StoreError>;

    /// Deletes at most `limit` of the oldest records made before `before` (one short
    /// transaction); returns how many. Idempotent: nodes pruning together delete each record
    /// once.
    async fn prune_audit(&self, before: OffsetDateTime, limit: usize) -> Result<usize, StoreError>;

    /// Records an event that changes nothing else (a token issued, when every issue is
    /// audited), durably, in a transaction of its own.
    async fn record_audit(&self, actor: &Actor, event: AuditEvent) -> Result<(), StoreError>;
}

/// An [`AuditRecord`]'s columns as both backends store them.
pub(crate) struct AuditRow {
    pub(crate) seq: i64,
    pub(crate) at_ms: i64,
    pub(crate) resource: Option<String>,
    pub(crate) operation: String,
    pub(crate) identity: Option<String>,
    pub(crate) outcome: String,
    pub(crate) credential: String,
    pub(crate) client: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) detail: Option<String>,
    pub(crate) subject: Option<String>,
}

/// The columns in [`AuditRow`]'s order.
pub(crate) const AUDIT_COLUMNS: &str = "seq, at_ms, resource_id, operation, identity_id, outcome, credential, client, request_id, detail, subject";

impl AuditRow {
    /// The record of a stored row; a value that does not parse is corrupt data.
    pub(crate) fn record(self) -> Result<AuditRecord, StoreError> {
        let seq = self.seq;
        let bad =
            |what: &str, v: &str| StoreError::corrupt(format!("audit record {seq}: {what} {v:?}"));
        Ok(AuditRecord {
            seq,
            at: crate::from_unix_ms(self.at_ms)?,
            resource: self
                .resource
                .map(|r| ResourceId::parse(&r).map_err(|_| bad("resource", &r)))
                .transpose()?,
            operation: AuditOperation::parse(&self.operation)
                .ok_or_else(|| bad("operation", &self.operation))?,
            identity: self
                .identity
                .map(|i| IdentityId::parse(&i).map_err(|_| bad("identity", &i)))
                .transpose()?,
            outcome: AuditOutcome::parse(&self.outcome)
                .ok_or_else(|| bad("outcome", &self.outcome))?,
            credential: Credential::parse(&self.credential)
                .ok_or_else(|| bad("credential", &self.credential))?,
            client: self
                .client
                .map(|c| c.parse().map_err(|_| bad("client", &c)))
                .transpose()?,
            request_id: self.request_id,
            subject: self.subject,
            detail: self.detail,
        })
    }
}

/// The values one record stores, for an insert: at, resource, operation, identity, outcome,
/// credential, client, request id, detail, subject.
pub(crate) struct AuditValues {
    pub(crate) at_ms: i64,
    pub(crate) resource: Option<String>,
    pub(crate) operation: &'static str,
    pub(crate) identity: Option<String>,
    pub(crate) outcome: &'static str,
    pub(crate) credential: &'static str,
    pub(crate) client: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) detail: Option<String>,
    pub(crate) subject: Option<String>,
}

impl AuditValues {
    /// What `actor` doing `event` now stores.
    pub(crate) fn of(actor: &Actor, event: &AuditEvent) -> Self {
        Self {
            at_ms: crate::unix_ms(OffsetDateTime::now_utc()),
            resource: event.resource.map(|r| r.to_string()),
            operation: event.operation.as_str(),
            identity: event.identity.map(|i| i.to_string()),
            outcome: event.outcome.as_str(),
            credential: actor.credential.as_str(),
            client: actor.client.map(|c| c.to_string()),
            request_id: actor.request_id.as_deref().map(|r| cut(r, 128)),
            detail: event.detail.as_deref().map(|d| cut(d, MAX_DETAIL)),
            subject: actor.subject.as_deref().map(|s| cut(s, MAX_SUBJECT)),
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Credential::ALL {
            assert_eq!(Credential::parse(c.as_str()), Some(c));
        }
        for o in AuditOperation::ALL {
            assert_eq!(AuditOperation::parse(o.as_str()), Some(o));
        }
        for o in AuditOutcome::ALL {
            assert_eq!(AuditOutcome::parse(o.as_str()), Some(o));
        }
    }

    #[test]
    fn long_subjects_are_cut_at_a_character_boundary() {
        let actor = Actor {
            credential: Credential::Bearer,
            client: None,
            request_id: None,
            subject: Some(format!("https://issuer#{}", "é".repeat(MAX_SUBJECT))),
        };
        let event = AuditEvent::resource(
            AuditOperation::PutAccessAssignment,
            ResourceId::new_random(),
            AuditOutcome::Success,
        );
        let v = AuditValues::of(&actor, &event);
        let subject = v.subject.expect("subject");
        assert!(subject.len() <= MAX_SUBJECT && subject.len() > MAX_SUBJECT - 2);
        assert!(subject.starts_with("https://issuer#é"));
        assert_eq!(v.credential, "bearer");
        assert_eq!(AuditValues::of(&Actor::node(), &event).subject, None);
    }

    #[test]
    fn long_details_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_DETAIL);
        let cut = cut(&long, MAX_DETAIL);
        assert!(cut.len() <= MAX_DETAIL && cut.chars().all(|c| c == 'é'));
    }
}
