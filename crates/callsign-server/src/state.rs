//! Per-instance state: the store, the resource, the keys, the clock. No globals.

use std::future::Future;
use std::sync::Arc;

use callsign_core::token::IssuedToken;
use callsign_core::{
    AccessAssignment, Clock, CustomId, ExpiresIn, IdError, IdentityId, ObjectId, ResourceId,
    Scopes, TeamsAssignment,
};
use callsign_store::{
    Actor, AuditEvent, AuditOperation, AuditOutcome, Created, IdentityFilter, IdentityPage,
    IdentityRecord, NewIdentity, Store,
};

use crate::auth::{Authenticated, Authenticator};
use crate::error::ApiError;
use crate::metrics::StoreOp;

/// Everything a request handler needs, built once by `Application::build`.
pub struct AppState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) authenticator: Authenticator,
    pub(crate) resources: crate::resources::Resources,
    pub(crate) keys: crate::keys::Keys,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_body_bytes: usize,
    pub(crate) limits: crate::connection::ConnectionLimits,
    pub(crate) throttle: crate::throttle::Throttle,
    pub(crate) auth_failures: crate::throttle::AuthFailures,
    pub(crate) readiness: crate::meta::Readiness,
    pub(crate) outage_log: OutageLog,
    /// How long audit records are kept (`None`: for ever).
    pub(crate) audit_retention: Option<std::time::Duration>,
    pub(crate) audit_token_issue: bool,
    /// The requests waiting on the revocation feed.
    pub(crate) waiters: Arc<crate::feed::Waiters>,
    /// The trusted OpenID Connect issuers.
    pub(crate) issuers: crate::oidc::Issuers,
    /// What is recorded for `/metrics`; `None` (nothing recorded) without `--metrics-listen`.
    pub(crate) metrics: Option<crate::metrics::Metrics>,
    /// The admin console; `None` with `--no-console`.
    pub(crate) console: Option<crate::console::Console>,
}

/// Rate-limits the warning an unavailable store gives, per request otherwise.
#[derive(Debug, Default)]
pub(crate) struct OutageLog {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl OutageLog {
    /// `Some(requests refused since the last warning)` when a warning is due (every 5 s at
    /// most), else counts this one and returns `None`.
    pub(crate) fn due(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(5)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(std::time::Instant::now());
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl AppState {
    /// The identities of the authenticated resource; what `actor` changes through it is
    /// recorded in the audit log as its doing.
    pub(crate) fn directory<'a>(&'a self, auth: &Authenticated, actor: Actor) -> Directory<'a> {
        Directory {
            state: self,
            resource: auth.resource(),
            actor,
        }
    }
}

/// One resource's view of the identity directory, reachable only with an [`Authenticated`].
pub(crate) struct Directory<'a> {
    state: &'a AppState,
    resource: ResourceId,
    actor: Actor,
}

impl Directory<'_> {
    /// Runs a store call, timed as `op` when metrics are recorded.
    async fn timed<T>(&self, op: StoreOp, call: impl Future<Output = T>) -> T {
        let Some(metrics) = &self.state.metrics else {
            return call.await;
        };
        let started = std::time::Instant::now();
        let out = call.await;
        metrics.store_call(op, started.elapsed());
        out
    }

    /// Records `event` as done by this directory's actor (an action that changes nothing else:
    /// a console sign-in, a token issued from the console).
    pub(crate) async fn record(&self, event: AuditEvent) -> Result<(), ApiError> {
        let recorded = self.state.store.record_audit(&self.actor, event);
        Ok(self.timed(StoreOp::RecordAudit, recorded).await?)
    }

    /// Whether every token issue is recorded in the audit log already (`--audit-token-issue`).
    pub(crate) fn audits_every_issue(&self) -> bool {
        self.state.audit_token_issue
    }

    /// Takes a token of `class` from this resource's throttle, or refuses with 429.
    pub(crate) fn throttle(&self, class: crate::throttle::OperationClass) -> Result<(), ApiError> {
        self.state.throttle.check(self.resource, class)
    }

    /// The resource whose identities these are.
    pub(crate) fn resource(&self) -> ResourceId {
        self.resource
    }

    /// Whether `id` belongs to this resource.
    pub(crate) fn owns(&self, id: &IdentityId) -> bool {
        id.resource() == self.resource
    }

    /// Parses a raw id from a path and checks that it belongs to this resource.
    pub(crate) fn resolve(&self, raw: &str) -> Result<IdentityId, ApiError> {
        match IdentityId::parse(raw) {
            Ok(id) if self.owns(&id) => Ok(id),
            Ok(_) | Err(IdError::OtherCloud) => Err(ApiError::IdentityNotOwned),
            Err(IdError::Malformed) => Err(ApiError::validation(
                "The identifier is not a valid communication user id (8:acs:<resourceId>_<id>).",
                "id",
            )),
        }
    }

    pub(crate) async fn create(&self, custom_id: Option<CustomId>) -> Result<Created, ApiError> {
        let new = NewIdentity {
            id: IdentityId::new_random(self.resource),
            custom_id,
            created_at: self.state.clock.now(),
        };
        let store = &self.state.store;
        let created = store.create_identity(new, &self.actor);
        Ok(self.timed(StoreOp::CreateIdentity, created).await?)
    }

    /// What a token for `id` needs: the identity's current revocation epoch (the issue path's
    /// only read, which the store may answer from memory).
    pub(crate) async fn subject(&self, id: &IdentityId) -> Result<TokenSubject, ApiError> {
        let epoch = self
            .timed(StoreOp::GetIdentity, self.state.store.token_epoch(id))
            .await?
            .ok_or(ApiError::IdentityNotFound)?;
        Ok(TokenSubject {
            id: *id,
            revocation_epoch: epoch,
        })
    }

    pub(crate) async fn get(&self, id: &IdentityId) -> Result<IdentityRecord, ApiError> {
        self.timed(StoreOp::GetIdentity, self.state.store.get_identity(id))
            .await?
            .ok_or(ApiError::IdentityNotFound)
    }

    /// One page of this resource's identities, in id order, after `after`.
    pub(crate) async fn list(
        &self,
        after: Option<&IdentityId>,
        limit: u32,
        filter: &IdentityFilter,
    ) -> Result<IdentityPage, ApiError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let page = self
            .state
            .store
            .list_page(self.resource, after, limit, filter);
        Ok(self.timed(StoreOp::ListIdentities, page).await?)
    }

    pub(crate) async fn revoke(&self, id: &IdentityId) -> Result<u64, ApiError> {
        let revoked = self.state.store.revoke_tokens(id, &self.actor);
        self.timed(StoreOp::RevokeTokens, revoked)
            .await?
            .ok_or(ApiError::IdentityNotFound)
    }

    pub(crate) async fn delete(&self, id: &IdentityId) -> Result<(), ApiError> {
        let deleted = self.state.store.delete_identity(id, &self.actor);
        if self.timed(StoreOp::DeleteIdentity, deleted).await? {
            Ok(())
        } else {
            Err(ApiError::IdentityNotFound)
        }
    }

    /// The Teams extension assignment of `object` in `tenant`.
    pub(crate) async fn assignment(
        &self,
        tenant: uuid::Uuid,
        object: uuid::Uuid,
    ) -> Result<TeamsAssignment, ApiError> {
        self.state
            .store
            .get_assignment(self.resource, tenant, object)
            .await?
            .ok_or(ApiError::AssignmentNotFound)
    }

    /// Creates or replaces an assignment; true when created.
    pub(crate) async fn put_assignment(&self, a: TeamsAssignment) -> Result<bool, ApiError> {
        Ok(self
            .state
            .store
            .put_assignment(self.resource, a, &self.actor)
            .await?)
    }

    pub(crate) async fn delete_assignment(
        &self,
        tenant: uuid::Uuid,
        object: uuid::Uuid,
    ) -> Result<(), ApiError> {
        if self
            .state
            .store
            .delete_assignment(self.resource, tenant, object, &self.actor)
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::AssignmentNotFound)
        }
    }

    /// The access assignment of `object`.
    pub(crate) async fn access_assignment(
        &self,
        object: &ObjectId,
    ) -> Result<AccessAssignment, ApiError> {
        self.state
            .store
            .get_access_assignment(self.resource, object)
            .await?
            .ok_or(ApiError::AssignmentNotFound)
    }

    /// Up to `limit` access assignments after `after`, in object id order.
    pub(crate) async fn access_assignments(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<AccessAssignment>, ApiError> {
        Ok(self
            .state
            .store
            .list_access_assignments(self.resource, after, limit)
            .await?)
    }

    /// The assignments among `objects`.
    pub(crate) async fn access_assignments_of(
        &self,
        objects: &[ObjectId],
    ) -> Result<Vec<AccessAssignment>, ApiError> {
        Ok(self
            .state
            .store
            .access_assignments_of(self.resource, objects)
            .await?)
    }

    /// Creates or replaces an access assignment; true when created.
    pub(crate) async fn put_access_assignment(
        &self,
        a: AccessAssignment,
    ) -> Result<bool, ApiError> {
        Ok(self
            .state
            .store
            .put_access_assignment(self.resource, a, &self.actor)
            .await?)
    }

    /// Removes an access assignment, or 404.
    pub(crate) async fn delete_access_assignment(&self, object: &ObjectId) -> Result<(), ApiError> {
        if self
            .state
            .store
            .delete_access_assignment(self.resource, object, &self.actor)
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::AssignmentNotFound)
        }
    }

    /// Puts and deletes access assignments in one transaction.
    pub(crate) async fn patch_access_assignments(
        &self,
        puts: Vec<AccessAssignment>,
        deletes: Vec<ObjectId>,
    ) -> Result<(), ApiError> {
        Ok(self
            .state
            .store
            .patch_access_assignments(self.resource, puts, deletes, &self.actor)
            .await?)
    }

    /// The identity `id` (a workforce id of this resource), created on first use. A deleted
    /// one stays deleted: 403.
    pub(crate) async fn workforce_identity(
        &self,
        id: IdentityId,
    ) -> Result<IdentityRecord, ApiError> {
        debug_assert!(self.owns(&id));
        let store = &self.state.store;
        if let Some(found) = self
            .timed(StoreOp::GetIdentity, store.get_identity(&id))
            .await?
        {
            return Ok(found);
        }
        let new = NewIdentity {
            id,
            custom_id: None,
            created_at: self.state.clock.now(),
        };
        let created = store.create_identity(new, &self.actor);
        match self.timed(StoreOp::CreateIdentity, created).await {
            Ok(created) => Ok(created.identity),
            Err(e) if e.is_unavailable() => Err(e.into()),
            // A concurrent first exchange created it, or a tombstone keeps the id unused.
            Err(e) => match self.state.store.get_identity(&id).await? {
                Some(found) => Ok(found),
                None => {
                    tracing::debug!(error = %e, "a workforce identity was not created");
                    Err(ApiError::IdentityDeleted)
                }
            },
        }
    }

    /// Issues a token for a stored identity that expires at `expires_at` (an exchange's
    /// token, which never outlives the token it was exchanged for).
    pub(crate) async fn issue_until(
        &self,
        identity: &TokenSubject,
        scopes: &Scopes,
        expires_at: time::OffsetDateTime,
    ) -> Result<IssuedToken, ApiError> {
        let now = self.state.clock.now();
        let token = self
            .state
            .keys
            .with_issuer(|issuer| {
                issuer.issue_until(
                    &identity.id,
                    scopes,
                    expires_at,
                    identity.revocation_epoch,
                    now,
                )
            })
            .map_err(|e| {
                ApiError::internal(anyhow::Error::new(e).context("token signing failed"))
            })?;
        self.after_issue(identity, scopes, now).await?;
        Ok(token)
    }

    /// Issues a token for a stored identity under its current revocation epoch; with
    /// `--audit-token-issue`, the issue is recorded durably before the token is handed out.
    pub(crate) async fn issue(
        &self,
        identity: &TokenSubject,
        scopes: &Scopes,
        expires_in: ExpiresIn,
    ) -> Result<IssuedToken, ApiError> {
        let now = self.state.clock.now();
        let token = self
            .state
            .keys
            .with_issuer(|issuer| {
                issuer.issue(
                    &identity.id,
                    scopes,
                    expires_in,
                    identity.revocation_epoch,
                    now,
                )
            })
            .map_err(|e| {
                ApiError::internal(anyhow::Error::new(e).context("token signing failed"))
            })?;
        self.after_issue(identity, scopes, now).await?;
        Ok(token)
    }

    /// Records an issued token: its time, and with `--audit-token-issue` an audit record
    /// written durably before the token is handed out.
    async fn after_issue(
        &self,
        identity: &TokenSubject,
        scopes: &Scopes,
        now: time::OffsetDateTime,
    ) -> Result<(), ApiError> {
        self.state.store.record_token_issued(&identity.id, now);
        if self.state.audit_token_issue {
            let event = AuditEvent::identity(
                AuditOperation::IssueToken,
                identity.id,
                AuditOutcome::Success,
            )
            .with_detail(format!("scopes {}", scopes.to_claim()));
            let recorded = self.state.store.record_audit(&self.actor, event);
            self.timed(StoreOp::RecordAudit, recorded).await?;
        }
        if let Some(metrics) = &self.state.metrics {
            metrics.token_issued(scopes);
        }
        Ok(())
    }
}

/// The identity a token is issued for, as the token needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenSubject {
    pub(crate) id: IdentityId,
    /// Carried in the token; see `callsign_core::token::token_in_force`.
    pub(crate) revocation_epoch: u64,
}

impl From<&IdentityRecord> for TokenSubject {
    fn from(record: &IdentityRecord) -> Self {
        Self {
            id: record.id,
            revocation_epoch: record.revocation_epoch,
        }
    }
}
