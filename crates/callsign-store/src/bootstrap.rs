//! The default resource every deployment starts with.

use callsign_core::{Clock, ResourceName};

use crate::{ResourceRecord, ResourceStore, StoreError};

/// The default resource, created on first use. Returns it and whether it was just created.
///
/// Several nodes starting at once on an empty database agree on one resource: each offers a
/// candidate and the store keeps the first.
pub async fn ensure_default_resource(
    store: &dyn ResourceStore,
    clock: &dyn Clock,
) -> Result<(ResourceRecord, bool), StoreError> {
    let candidate = ResourceRecord::generate(ResourceName::default_name(), None, clock.now());
    ensure_default_resource_as(store, candidate).await
}

/// The default resource, `candidate` if the store has none yet (dev mode's well-known one).
/// Returns it and whether it was just created.
pub async fn ensure_default_resource_as(
    store: &dyn ResourceStore,
    candidate: ResourceRecord,
) -> Result<(ResourceRecord, bool), StoreError> {
    if let Some(r) = store.default_resource().await? {
        return Ok((r, false));
    }
    let winner = store.bootstrap_default_resource(candidate.clone()).await?;
    let created = winner.id == candidate.id;
    Ok((winner, created))
}
