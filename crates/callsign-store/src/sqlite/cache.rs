//! The identities the issue path reads, kept in memory so that a token costs no database read.
//!
//! Exact for this process: the single writer invalidates after every commit that changes an
//! identity (revoke, delete, a resource's deletion, imports) and before it answers, and a reader
//! that missed stores what it read only if no invalidation happened since it started reading
//! (the generation below), so a record read before a commit can never outlive that commit's
//! answer. A commit by another process sharing the file (a `callsign` command on the data dir)
//! is seen by the writer, which empties the cache when its connection's data version moves:
//! within 250 ms, as every other change made by another process is.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use callsign_core::IdentityId;

use crate::{IdentityRecord, from_unix_ms};

/// Most identities kept; past it the cache starts over (memory stays bounded whatever the
/// directory's size; about 100 bytes an entry).
const CAPACITY: usize = 262_144;

#[derive(Debug, Default)]
pub(super) struct IdentityCache(RwLock<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Moved by every invalidation.
    generation: u64,
    records: HashMap<IdentityId, IdentityRecord>,
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

    pub(super) fn get(&self, id: &IdentityId) -> Option<IdentityRecord> {
        self.read().records.get(id).cloned()
    }

    /// Taken before a read of the database whose result may be kept.
    pub(super) fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Keeps `record`, read after [`generation`](Self::generation) returned `generation`,
    /// unless an invalidation happened since.
    pub(super) fn keep(&self, generation: u64, record: &IdentityRecord) {
        let mut inner = self.write();
        if inner.generation != generation {
            return;
        }
        if inner.records.len() >= CAPACITY {
            inner.records.clear();
        }
        inner.records.insert(record.id, record.clone());
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
            Changed::These(ids) => ids.iter().for_each(|id| drop(inner.records.remove(id))),
            Changed::Any => inner.records.clear(),
        }
    }

    /// Last-token times just written back to the database (milliseconds since the epoch).
    pub(super) fn note_token_times(&self, times: &[(IdentityId, i64)]) {
        let mut inner = self.write();
        for (id, at) in times {
            if let (Some(record), Ok(at)) = (inner.records.get_mut(id), from_unix_ms(*at))
                && record.last_token_issued_at < Some(at)
            {
                record.last_token_issued_at = Some(at);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.read().records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_core::ResourceId;
    use time::OffsetDateTime;

    fn record(epoch: u64) -> IdentityRecord {
        IdentityRecord {
            id: IdentityId::new_random(ResourceId::new_random()),
            custom_id: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            revocation_epoch: epoch,
            last_token_issued_at: None,
        }
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_kept() {
        let cache = IdentityCache::default();
        let stale = record(0);
        let generation = cache.generation();
        cache.invalidate(&Changed::These(vec![stale.id]));
        cache.keep(generation, &stale);
        assert!(cache.get(&stale.id).is_none());
        let generation = cache.generation();
        cache.keep(generation, &stale);
        assert_eq!(cache.get(&stale.id).map(|r| r.revocation_epoch), Some(0));
    }

    #[test]
    fn invalidation_removes_what_it_names_or_everything() {
        let cache = IdentityCache::default();
        let (a, b) = (record(1), record(2));
        for r in [&a, &b] {
            cache.keep(cache.generation(), r);
        }
        cache.invalidate(&Changed::Nothing);
        assert_eq!(cache.len(), 2);
        cache.invalidate(&Changed::These(vec![a.id]));
        assert!(cache.get(&a.id).is_none() && cache.get(&b.id).is_some());
        cache.invalidate(&Changed::Any);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn token_times_only_move_forward() {
        let cache = IdentityCache::default();
        let r = record(0);
        cache.keep(cache.generation(), &r);
        cache.note_token_times(&[(r.id, 2_000)]);
        cache.note_token_times(&[(r.id, 1_000)]);
        let at = cache.get(&r.id).and_then(|r| r.last_token_issued_at);
        assert_eq!(at, from_unix_ms(2_000).ok());
    }
}
