//! Moving a deployment from one backend to another, losing nothing.

use std::collections::HashSet;

use crate::{Store, StoreError};

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyReport {
    /// Signing keys added to the target.
    pub signing_keys: usize,
    /// Identities read from the source.
    pub identities_read: usize,
    /// Identities inserted into the target (the rest were there already).
    pub identities_inserted: usize,
    /// Teams assignments inserted into the target (the rest were there already; those are never
    /// overwritten).
    pub assignments: usize,
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
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies the default resource (GUID and both access keys), every signing key, every
/// identity (custom ids, revocation epochs and times included) and every Teams assignment from
/// `from` to `to`.
///
/// Idempotent: running it again copies only what is missing, so it can be repeated after a
/// final stop of the old deployment. Tokens issued before the move stay valid after it, because
/// the keys, ids and epochs are the same.
pub async fn copy_store(
    from: &dyn Store,
    to: &dyn Store,
    batch: usize,
) -> Result<CopyReport, CopyError> {
    let resource = from
        .default_resource()
        .await?
        .ok_or(CopyError::EmptySource)?;
    let winner = to.bootstrap_default_resource(resource.clone()).await?;
    if winner != resource {
        return Err(CopyError::DifferentResource(winner.id.to_string()));
    }
    let mut report = CopyReport::default();
    let present: HashSet<String> = to
        .signing_keys()
        .await?
        .into_iter()
        .map(|k| k.kid.clone())
        .collect();
    // Oldest first, so the target's "newest" order matches the source's.
    for key in from.signing_keys().await?.into_iter().rev() {
        if !present.contains(&key.kid) {
            to.add_signing_key(key).await?;
            report.signing_keys += 1;
        }
    }
    let mut after = None;
    loop {
        let page = from.list_identities(after.as_ref(), batch.max(1)).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        report.identities_read += page.len();
        report.identities_inserted += to.import_identities(page).await?;
    }
    // An assignment the target has already is kept as it is: it may be newer than the source's.
    for (resource, assignment) in from.all_assignments().await? {
        let present = to
            .get_assignment(resource, assignment.tenant_id, assignment.object_id)
            .await?
            .is_some();
        if !present && to.put_assignment(resource, assignment).await? {
            report.assignments += 1;
        }
    }
    Ok(report)
}
