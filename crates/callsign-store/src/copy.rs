//! Moving a deployment from one backend to another, losing nothing and bringing nothing back.

use std::collections::HashSet;
use std::fmt;

use callsign_core::IdentityId;

use crate::{
    AccessAssignmentStore, Actor, AssignmentStore, AuditQuery, BulkIdentities, BulkStore, KeySlot,
    ResourceCreated, ResourceDeleted, ResourceRecord, ResourceStore, SigningKeyStore, StoreError,
};

/// How many ids of each kind of divergence a [`CopyError::Diverged`] names.
const EXAMPLES: usize = 5;

/// How to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOptions {
    /// Identities (and tombstones) per read and write.
    pub batch: usize,
    /// Copy onto a target that has diverged from the source (see [`copy_store`]).
    pub force: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            batch: 5000,
            force: false,
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyReport {
    /// Resources created on the target or given the source's access keys.
    pub resources: usize,
    /// Signing keys added to the target.
    pub signing_keys: usize,
    /// Tombstones read from the source.
    pub tombstones_read: usize,
    /// Tombstones the target did not have yet.
    pub tombstones_inserted: usize,
    /// Identities deleted from the target because they were deleted on the source.
    pub identities_deleted: usize,
    /// Identities read from the source.
    pub identities_read: usize,
    /// Identities inserted into the target.
    pub identities_inserted: usize,
    /// Identities of the target whose revocation epoch was raised to the source's.
    pub epochs_raised: usize,
    /// Source identities not copied because they are deleted on the target (only with `force`).
    pub skipped_deleted: usize,
    /// Source identities not copied because another identity of the target holds their custom
    /// id (only with `force`: that identity was created on the target).
    pub custom_id_conflicts: usize,
    /// Identities created on the target since the last copy, kept (only with `force`).
    pub created_on_target: usize,
    /// Identities deleted on the target since the last copy, kept deleted (only with `force`).
    pub deleted_on_target: usize,
    /// Teams assignments inserted into the target (the rest were there already; those are never
    /// overwritten).
    pub assignments: usize,
    /// Access assignments inserted into the target (the rest were there already; those are
    /// never overwritten).
    pub access_assignments: usize,
    /// Audit records the target did not have yet (a record keeps its sequence number).
    pub audit_records: usize,
}

/// One identity on which the target has diverged from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DivergedId {
    /// Alive on the target, unknown to the source (neither alive nor deleted there).
    CreatedOnTarget(IdentityId),
    /// Deleted on the target, alive on the source.
    DeletedOnTarget(IdentityId),
}

impl fmt::Display for DivergedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DivergedId::CreatedOnTarget(id) => write!(f, "created on the target: {id}"),
            DivergedId::DeletedOnTarget(id) => write!(f, "deleted on the target: {id}"),
        }
    }
}

/// Why a copy was refused.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source has never been started.
    #[error("the source store has no resource (start callsign on it once first)")]
    EmptySource,
    /// The target serves another resource; merging two resources is not supported.
    #[error("the target store already holds another resource ({0}); refusing to mix resources")]
    DifferentResource(String),
    /// The target has changed since the last copy in ways the source does not know of;
    /// nothing was written.
    #[error(
        "the target store has diverged from the source: {created_on_target} identities created \
         and {deleted_on_target} deleted on the target since the last copy (e.g. {}); nothing \
         was copied",
        examples.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Diverged {
        /// Identities alive on the target that the source neither has nor deleted.
        created_on_target: usize,
        /// Identities deleted on the target that are alive on the source.
        deleted_on_target: usize,
        /// A few of them (up to five of each kind).
        examples: Vec<DivergedId>,
    },
    /// The target refused a resource of the source (its name or host is in use there).
    #[error("the target refused resource {0}: {reason}", reason = refusal(*.1))]
    ResourceRefused(String, ResourceCreated),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies the default resource (GUID and both access keys), every signing key, every tombstone,
/// every identity (custom ids, revocation epochs and times included), every Teams assignment and
/// every access assignment from `from` to `to`.
///
/// Repeatable, and a repeat never undoes a delete or a revoke:
/// * tombstones are copied first, and delete the target's identities they name: an identity
///   deleted on the source after an earlier copy is deleted on the target too;
/// * an identity with a tombstone on the target is never inserted again;
/// * for an identity on both sides the target keeps the higher revocation epoch;
/// * before writing anything the target is compared with the source: identities alive on the
///   target that the source neither has nor deleted ("created on the target"), and tombstones
///   on the target for identities alive on the source ("deleted on the target"), mean the
///   target has been in use since. Without `force` that is [`CopyError::Diverged`] and nothing
///   is written; with `force` the copy goes ahead, keeping the target's identities and its
///   deletions (a deleted id stays deleted).
///
/// Tokens issued before the move stay valid after it (same keys, ids and epochs) unless revoked
/// or deleted on either side. The comparison holds the target's ids in memory (about 33 bytes
/// each). Run it with the source stopped: what the source changes during a copy may be missed.
pub async fn copy_store(
    from: &dyn BulkStore,
    to: &dyn BulkStore,
    options: &CopyOptions,
) -> Result<CopyReport, CopyError> {
    copy_store_with_progress(from, to, options, &NoProgress).await
}

/// The stages of a copy, in order, as [`CopyProgress`] hears of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyStage {
    /// Reading both stores' identities and deletions to compare them.
    Compare,
    /// Copying the audit log.
    AuditLog,
    /// Resources, access keys and signing keys.
    Keys,
    /// Copying deletions (tombstones).
    Deletions,
    /// Copying identities.
    Identities,
    /// Teams and access assignments.
    Assignments,
}

impl CopyStage {
    /// What the stage does, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            CopyStage::Compare => "comparing",
            CopyStage::AuditLog => "audit log",
            CopyStage::Keys => "resources and keys",
            CopyStage::Deletions => "deletions",
            CopyStage::Identities => "identities",
            CopyStage::Assignments => "assignments",
        }
    }
}

/// What a copy tells as it goes ([`copy_store_with_progress`]), e.g. to draw a progress bar.
/// Both methods do nothing by default.
pub trait CopyProgress: Send + Sync {
    /// `stage` begins.
    fn stage(&self, stage: CopyStage) {
        let _ = stage;
    }
    /// `records` more records of the current stage were read from the source.
    fn advance(&self, records: usize) {
        let _ = records;
    }
}

/// Tells nothing.
struct NoProgress;

impl CopyProgress for NoProgress {}

/// [`copy_store`], telling `progress` each stage and every batch read.
pub async fn copy_store_with_progress(
    from: &dyn BulkStore,
    to: &dyn BulkStore,
    options: &CopyOptions,
    progress: &dyn CopyProgress,
) -> Result<CopyReport, CopyError> {
    let batch = options.batch.max(1);
    let resource = source_resource(from, to).await?;
    let mut report = CopyReport::default();
    progress.stage(CopyStage::Compare);
    let divergence = compare(from, to, batch).await?;
    if divergence.created + divergence.deleted > 0 {
        if !options.force {
            return Err(CopyError::Diverged {
                created_on_target: divergence.created,
                deleted_on_target: divergence.deleted,
                examples: divergence.examples,
            });
        }
        report.created_on_target = divergence.created;
        report.deleted_on_target = divergence.deleted;
    }
    // The audit log first, keeping its sequence numbers: what the copy itself records on the
    // target is numbered after it.
    progress.stage(CopyStage::AuditLog);
    report.audit_records = copy_audit(from, to, batch, progress).await?;
    progress.stage(CopyStage::Keys);
    let winner = to.bootstrap_default_resource(resource.clone()).await?;
    if winner.id != resource.id {
        return Err(CopyError::DifferentResource(winner.id.to_string()));
    }
    report.resources = copy_resources(from, to).await?;
    report.signing_keys = copy_signing_keys(from, to).await?;
    // Deletes first: they take identities out of the target before identities are copied.
    progress.stage(CopyStage::Deletions);
    copy_tombstones(from, to, batch, &mut report, progress).await?;
    progress.stage(CopyStage::Identities);
    copy_identities(from, to, batch, &mut report, progress).await?;
    progress.stage(CopyStage::Assignments);
    report.assignments = copy_assignments(from, to).await?;
    report.access_assignments = copy_access_assignments(from, to).await?;
    Ok(report)
}

/// Brings every resource of the source to the target: a resource deleted on the source is
/// deleted on the target first (with its identities), one deleted on either side is never
/// created again, a missing one is created, one present (by id) gets the source's access keys.
/// Returns how many were created, changed or deleted.
async fn copy_resources(
    from: &dyn ResourceStore,
    to: &dyn ResourceStore,
) -> Result<usize, CopyError> {
    let mut changed = 0;
    for id in from.deleted_resources().await? {
        if let ResourceDeleted::Deleted { .. } = to.delete_resource(id, &Actor::operator()).await? {
            changed += 1;
        }
    }
    let deleted_on_target = to.deleted_resources().await?;
    let present = to.resources().await?;
    for source in from.resources().await? {
        if deleted_on_target.contains(&source.id) {
            continue;
        }
        let Some(target) = present.iter().find(|r| r.id == source.id) else {
            match to
                .create_resource(source.clone(), &Actor::operator())
                .await?
            {
                ResourceCreated::Created => {}
                refused => {
                    return Err(CopyError::ResourceRefused(source.name.to_string(), refused));
                }
            }
            changed += 1;
            continue;
        };
        let mut differs = false;
        for slot in [KeySlot::Primary, KeySlot::Secondary, KeySlot::VerifyOnly] {
            if let Some(key) = source.key(slot)
                && target.key(slot) != Some(key)
            {
                to.replace_access_key(source.id, slot, key.clone(), false, &Actor::operator())
                    .await?;
                differs = true;
            }
        }
        changed += usize::from(differs);
    }
    Ok(changed)
}

/// Copies every audit record the target lacks; returns how many.
async fn copy_audit(
    from: &dyn BulkStore,
    to: &dyn BulkStore,
    batch: usize,
    progress: &dyn CopyProgress,
) -> Result<usize, StoreError> {
    let mut query = AuditQuery {
        limit: batch,
        ..AuditQuery::default()
    };
    let mut added = 0;
    loop {
        let page = from.audit_records(&query).await?;
        let Some(last) = page.last() else { break };
        query.after = Some(last.seq);
        progress.advance(page.len());
        added += to.import_audit(page).await?;
    }
    Ok(added)
}

/// Why a target refused a resource, in words.
fn refusal(outcome: ResourceCreated) -> &'static str {
    match outcome {
        ResourceCreated::NameTaken => "another resource of the target has its name",
        ResourceCreated::HostFull => {
            "its host is shared by as many resources as allowed on the target"
        }
        ResourceCreated::Created => "created",
    }
}

/// The source's default resource, checked against the target's (if it has one yet).
async fn source_resource(
    from: &dyn ResourceStore,
    to: &dyn ResourceStore,
) -> Result<ResourceRecord, CopyError> {
    let resource = from
        .default_resource()
        .await?
        .ok_or(CopyError::EmptySource)?;
    match to.default_resource().await? {
        Some(existing) if existing.id != resource.id => {
            Err(CopyError::DifferentResource(existing.id.to_string()))
        }
        _ => Ok(resource),
    }
}

/// Adds the source's signing keys the target lacks; returns how many.
async fn copy_signing_keys(
    from: &dyn SigningKeyStore,
    to: &dyn SigningKeyStore,
) -> Result<usize, StoreError> {
    let present: HashSet<String> = to
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| k.kid.clone())
        .collect();
    let mut added = 0;
    // Oldest first, so the target's "newest" order matches the source's.
    for key in from.signing_keys().await?.into_iter().rev() {
        if !present.contains(&key.kid) {
            to.add_signing_key(key).await?;
            added += 1;
        }
    }
    Ok(added)
}

/// Copies every tombstone, deleting the target's identities they name.
async fn copy_tombstones(
    from: &dyn BulkIdentities,
    to: &dyn BulkIdentities,
    batch: usize,
    report: &mut CopyReport,
    progress: &dyn CopyProgress,
) -> Result<(), StoreError> {
    let mut after = None;
    loop {
        let page = from.list_tombstones(after.as_ref(), batch).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        report.tombstones_read += page.len();
        progress.advance(page.len());
        let done = to.import_tombstones(page).await?;
        report.tombstones_inserted += done.inserted;
        report.identities_deleted += done.identities_deleted;
    }
    Ok(())
}

/// Copies every identity (see [`BulkIdentities::import_identities`]).
async fn copy_identities(
    from: &dyn BulkIdentities,
    to: &dyn BulkIdentities,
    batch: usize,
    report: &mut CopyReport,
    progress: &dyn CopyProgress,
) -> Result<(), StoreError> {
    let mut after = None;
    loop {
        let page = from.list_identities(after.as_ref(), batch).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        report.identities_read += page.len();
        progress.advance(page.len());
        let done = to.import_identities(page).await?;
        report.identities_inserted += done.inserted;
        report.epochs_raised += done.epochs_raised;
        report.skipped_deleted += done.skipped_deleted;
        report.custom_id_conflicts += done.custom_id_conflicts;
    }
    Ok(())
}

/// Adds the source's Teams assignments the target lacks; returns how many. An assignment the
/// target has already is kept as it is: it may be newer than the source's.
async fn copy_assignments(
    from: &dyn BulkIdentities,
    to: &dyn AssignmentStore,
) -> Result<usize, StoreError> {
    let mut added = 0;
    for (resource, assignment) in from.all_assignments().await? {
        let present = to
            .get_assignment(resource, assignment.tenant_id, assignment.object_id)
            .await?
            .is_some();
        if !present
            && to
                .put_assignment(resource, assignment, &Actor::operator())
                .await?
        {
            added += 1;
        }
    }
    Ok(added)
}

/// Adds the source's access assignments the target lacks; returns how many. An assignment the
/// target has already is kept as it is: it may be newer than the source's.
async fn copy_access_assignments(
    from: &dyn BulkIdentities,
    to: &dyn AccessAssignmentStore,
) -> Result<usize, StoreError> {
    let mut added = 0;
    for (resource, assignment) in from.all_access_assignments().await? {
        let present = to
            .get_access_assignment(resource, &assignment.object_id)
            .await?
            .is_some();
        if !present
            && to
                .put_access_assignment(resource, assignment, &Actor::operator())
                .await?
        {
            added += 1;
        }
    }
    Ok(added)
}

/// How the target differs from the source in ways a copy cannot reconcile by itself.
#[derive(Debug, Default)]
struct Divergence {
    created: usize,
    deleted: usize,
    examples: Vec<DivergedId>,
}

/// Ids in sorted order, for membership tests (the backends' list orders need not agree, so
/// both sides cannot simply be merged).
struct IdSet(Vec<IdentityId>);

impl IdSet {
    fn position(&self, id: &IdentityId) -> Option<usize> {
        self.0.binary_search(id).ok()
    }
}

/// Reads both stores (writing nothing) and finds the target's identities the source does not
/// know of and the target's tombstones for identities alive on the source.
async fn compare(
    from: &dyn BulkIdentities,
    to: &dyn BulkIdentities,
    batch: usize,
) -> Result<Divergence, StoreError> {
    let mut alive = Vec::new();
    let mut after = None;
    loop {
        let page = to.list_identities(after.as_ref(), batch).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        alive.extend(page.into_iter().map(|r| r.id));
    }
    let mut dead = Vec::new();
    let mut after = None;
    loop {
        let page = to.list_tombstones(after.as_ref(), batch).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        dead.extend(page.into_iter().map(|t| t.id));
    }
    let mut divergence = Divergence::default();
    if alive.is_empty() && dead.is_empty() {
        // A first copy: nothing to compare.
        return Ok(divergence);
    }
    alive.sort_unstable();
    dead.sort_unstable();
    let (alive, dead) = (IdSet(alive), IdSet(dead));
    let mut known = vec![false; alive.0.len()];
    let mut deleted_examples = Vec::new();
    let mut after = None;
    loop {
        let page = from.list_identities(after.as_ref(), batch).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for record in &page {
            if let Some(i) = alive.position(&record.id) {
                known[i] = true;
            } else if dead.position(&record.id).is_some() {
                divergence.deleted += 1;
                if deleted_examples.len() < EXAMPLES {
                    deleted_examples.push(DivergedId::DeletedOnTarget(record.id));
                }
            }
        }
    }
    if !alive.0.is_empty() {
        // An identity deleted on the source is known to it: the copy deletes it on the target.
        let mut after = None;
        loop {
            let page = from.list_tombstones(after.as_ref(), batch).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for tombstone in &page {
                if let Some(i) = alive.position(&tombstone.id) {
                    known[i] = true;
                }
            }
        }
    }
    for (id, known) in alive.0.iter().zip(&known) {
        if !known {
            divergence.created += 1;
            if divergence.examples.len() < EXAMPLES {
                divergence.examples.push(DivergedId::CreatedOnTarget(*id));
            }
        }
    }
    divergence.examples.extend(deleted_examples);
    Ok(divergence)
}
