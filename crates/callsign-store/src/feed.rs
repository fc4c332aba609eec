//! The revocation feed: what a verifier that keeps its own copy of revocations follows.
//!
//! Every revoke and delete (one identity, or every identity of a resource when its key is
//! regenerated with `--revoke-tokens` or it is deleted) writes one event per identity **in the
//! transaction of the change**, numbered per resource by a counter row that the change locks
//! until it commits: numbers are handed out in commit order, so a reader that has seen event
//! `n` has seen every event before it. Events are pruned after the retention; the highest
//! number pruned is kept, so a reader whose position is older is told it has lost events
//! ([`FeedRead::Expired`]) rather than given a gap.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use callsign_core::{IdentityId, ResourceId};
use time::OffsetDateTime;

use crate::StoreError;

/// What happened to an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// Its tokens were revoked: the epoch was raised.
    Revoked,
    /// It was deleted: none of its tokens is in force.
    Deleted,
}

impl RevocationKind {
    /// `revoked`, `deleted`: the wire and stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Revoked => "revoked",
            RevocationKind::Deleted => "deleted",
        }
    }

    /// The inverse of [`RevocationKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoked" => Some(RevocationKind::Revoked),
            "deleted" => Some(RevocationKind::Deleted),
            _ => None,
        }
    }
}

/// An identity's revocation state: what it is, and its epoch after the change (for a deleted
/// identity, the epoch it had).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// The identity.
    pub id: IdentityId,
    /// What happened.
    pub kind: RevocationKind,
    /// Its revocation epoch after the change.
    pub epoch: u64,
}

/// One event of a resource's feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedEvent {
    /// Its position in the resource's feed (1, 2, …, in commit order).
    pub seq: u64,
    /// What it says.
    pub revocation: Revocation,
}

/// What reading a feed after a position gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRead {
    /// The events after the position, in order (possibly none).
    Events(Vec<FeedEvent>),
    /// Events after the position were pruned (or the position was never handed out by this
    /// store): the reader must resynchronise from a snapshot.
    Expired,
}

/// Reading and pruning the revocation feed. Writing is part of each change
/// ([`crate::IdentityStore::revoke_tokens`], [`crate::IdentityStore::delete_identity`],
/// [`crate::ResourceStore::replace_access_key`], [`crate::ResourceStore::delete_resource`]).
#[async_trait]
pub trait RevocationFeed: Send + Sync {
    /// The position of `resource`'s latest event (0: none yet).
    async fn feed_position(&self, resource: ResourceId) -> Result<u64, StoreError>;

    /// At most `limit` events of `resource` after position `after`, in order; or
    /// [`FeedRead::Expired`] when some were pruned or `after` is beyond the latest position.
    async fn feed_after(
        &self,
        resource: ResourceId,
        after: u64,
        limit: usize,
    ) -> Result<FeedRead, StoreError>;

    /// One page of `resource`'s revocation state in id order after `after`: every identity with
    /// a non-zero epoch (`Revoked`) and every identity deleted at or after `deleted_since`
    /// (`Deleted`), at most `limit`.
    async fn revocation_snapshot(
        &self,
        resource: ResourceId,
        after: Option<&IdentityId>,
        deleted_since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Revocation>, StoreError>;

    /// Deletes at most `limit` of the oldest events written before `before`; returns how many.
    async fn prune_feed(&self, before: OffsetDateTime, limit: usize) -> Result<usize, StoreError>;

    /// A value that changes (soon, well within a second) after any event of any resource is
    /// committed, through any node or process sharing the store: waiters look again when it
    /// does. It may change without an event too.
    fn feed_changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Which of `resource`'s feed changes this node knows of: taken before a read, a waiter
    /// need not read again while it stays the same (another resource's event moved
    /// [`Self::feed_changes`]). It moves after each event of the resource, and after any change
    /// whose resource the node cannot tell (another process's commit, a notification missed).
    fn feed_version(&self, resource: ResourceId) -> FeedVersion;
}

/// See [`RevocationFeed::feed_version`]: (changes of unknown resource, changes of this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedVersion(u64, u64);

/// The sender behind [`RevocationFeed::feed_changes`] and [`RevocationFeed::feed_version`].
#[derive(Debug)]
pub(crate) struct FeedSignal {
    changes: tokio::sync::watch::Sender<u64>,
    /// Changes whose resource is not known.
    unknown: AtomicU64,
    /// Changes per resource (a resource's entry lives as long as the node: resources are few).
    resources: Mutex<HashMap<ResourceId, u64>>,
}

impl Default for FeedSignal {
    fn default() -> Self {
        Self {
            changes: tokio::sync::watch::channel(0).0,
            unknown: AtomicU64::new(0),
            resources: Mutex::default(),
        }
    }
}

impl FeedSignal {
    /// Tells every waiter that some feed may have moved (which, unknown).
    pub(crate) fn bump(&self) {
        self.unknown.fetch_add(1, Ordering::AcqRel);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Tells the waiters that `resource`'s feed may have moved.
    pub(crate) fn bump_resource(&self, resource: ResourceId) {
        {
            let mut map = self.resources.lock().unwrap_or_else(|e| e.into_inner());
            let v = map.entry(resource).or_insert(0);
            *v = v.wrapping_add(1);
        }
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn version(&self, resource: ResourceId) -> FeedVersion {
        let own = self
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&resource)
            .copied()
            .unwrap_or(0);
        FeedVersion(self.unknown.load(Ordering::Acquire), own)
    }
}

/// A stored event or snapshot row: identity id, kind, epoch.
pub(crate) fn revocation_from(id: &str, kind: &str, epoch: i64) -> Result<Revocation, StoreError> {
    Ok(Revocation {
        id: IdentityId::parse(id)
            .map_err(|_| StoreError::corrupt(format!("identity id {id:?} in the feed")))?,
        kind: RevocationKind::parse(kind)
            .ok_or_else(|| StoreError::corrupt(format!("revocation kind {kind:?}")))?,
        epoch: u64::try_from(epoch)
            .map_err(|_| StoreError::corrupt(format!("negative epoch for {id} in the feed")))?,
    })
}

/// A stored position as a `u64`.
pub(crate) fn position(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::corrupt("negative feed position"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resources_version_moves_with_its_own_changes_and_unknown_ones_only() {
        let signal = FeedSignal::default();
        let (a, b) = (ResourceId::new_random(), ResourceId::new_random());
        let mut changes = signal.subscribe();
        changes.borrow_and_update();
        let (a0, b0) = (signal.version(a), signal.version(b));
        signal.bump_resource(b);
        assert!(
            changes.has_changed().expect("open"),
            "every waiter is woken"
        );
        assert_eq!(signal.version(a), a0, "a's waiters need not read");
        assert_ne!(signal.version(b), b0);
        let a1 = signal.version(a);
        signal.bump();
        assert_ne!(
            signal.version(a),
            a1,
            "a change of unknown resource counts for all"
        );
    }
}
