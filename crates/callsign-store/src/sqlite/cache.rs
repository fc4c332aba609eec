//! The revocation epochs the issue path reads, kept in memory so that a token costs no
//! database read (`IdentityStore::token_epoch`; every other read goes to the database).
//!
//! Exact for this process: the single writer invalidates after every commit that changes an
//! identity (revoke, delete, a resource's deletion, a key replaced with revoke-all, imports) and
//! before it answers, and a reader that missed keeps what it read only if no invalidation
//! happened since it started reading (the generation below), so an epoch read before a commit
//! can never outlive that commit's answer. A commit by another process sharing the file (a
//! `callsign` command on the data dir) is seen by the writer, which empties the cache when its
//! connection's data version moves: within 250 ms. Until then a token may be issued under the
//! epoch before that change; such a token is out of force from the start (introspection and
//! verifiers compare it with the current epoch, or find no identity), so the window fails
//! closed.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use callsign_core::IdentityId;

/// Most epochs kept: a hash table of 2^18 slots of 40 bytes (about 10 MiB). Past it the cache
/// starts over with a new, empty table (memory stays bounded whatever the directory's size).
const CAPACITY: usize = 229_376;

#[derive(Debug, Default)]
pub(super) struct IdentityCache(RwLock<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Moved by every invalidation.
    generation: u64,
    epochs: HashMap<IdentityId, u64>,
}

/// What a batch of writes changed among the identities.
#[derive(Debug, Default)]
pub(super) enum Changed {
    #[default]
    Nothing,
    These(Vec<IdentityId>),
    Any,
}

impl Changed {
    pub(super) fn one(&mut self, id: IdentityId) {
        match self {
            Changed::Nothing => *self = Changed::These(vec![id]),
            Changed::These(ids) => ids.push(id),
            Changed::Any => {}
        }
    }
}

impl IdentityCache {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, id: &IdentityId) -> Option<u64> {
        self.read().epochs.get(id).copied()
    }

    /// Taken before a read of the database whose result may be kept.
    pub(super) fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Keeps `epoch`, read after [`generation`](Self::generation) returned `generation`,
    /// unless an invalidation happened since.
    pub(super) fn keep(&self, generation: u64, id: IdentityId, epoch: u64) {
        let mut inner = self.write();
        if inner.generation != generation {
            return;
        }
        if inner.epochs.len() >= CAPACITY {
            inner.epochs = HashMap::new();
        }
        inner.epochs.insert(id, epoch);
    }

    /// Called by the writer after a commit (or a failed one) and before answering.
    pub(super) fn invalidate(&self, changed: &Changed) {
        if matches!(changed, Changed::Nothing) {
            return;
        }
        let mut inner = self.write();
        inner.generation += 1;
        match changed {
            Changed::Nothing => {}
            Changed::These(ids) => {
                for id in ids {
                    inner.epochs.remove(id);
                }
            }
            Changed::Any => inner.epochs = HashMap::new(),
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.read().epochs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_core::ResourceId;

    fn id() -> IdentityId {
        IdentityId::new_random(ResourceId::new_random())
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_kept() {
        let cache = IdentityCache::default();
        let stale = id();
        let generation = cache.generation();
        cache.invalidate(&Changed::These(vec![stale]));
        cache.keep(generation, stale, 0);
        assert_eq!(cache.get(&stale), None);
        cache.keep(cache.generation(), stale, 1);
        assert_eq!(cache.get(&stale), Some(1));
    }

    #[test]
    fn invalidation_removes_what_it_names_or_everything() {
        let cache = IdentityCache::default();
        let (a, b) = (id(), id());
        cache.keep(cache.generation(), a, 1);
        cache.keep(cache.generation(), b, 2);
        cache.invalidate(&Changed::Nothing);
        assert_eq!(cache.len(), 2);
        cache.invalidate(&Changed::These(vec![a]));
        assert_eq!((cache.get(&a), cache.get(&b)), (None, Some(2)));
        cache.invalidate(&Changed::Any);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = IdentityCache::default();
        for _ in 0..CAPACITY {
            cache.keep(cache.generation(), id(), 0);
        }
        assert_eq!(cache.len(), CAPACITY);
        cache.keep(cache.generation(), id(), 0);
        assert_eq!(cache.len(), 1);
    }
}
