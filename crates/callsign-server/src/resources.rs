//! Which resource a request is for, and the keys that may sign it.
//!
//! A request reaches its resource by the host it names: a resource created with a host name
//! (as ACS gives every resource its own) gets the requests whose `Host` is that name; the
//! resources without one share the server's own address (and any other name), and there the
//! key that verifies tells them apart. The store keeps at most
//! [`MAX_RESOURCES_PER_HOST`](callsign_store::MAX_RESOURCES_PER_HOST) resources per host, and
//! this table enforces the same bound again, so the signature work one request can cause is a
//! constant however many resources exist.
//!
//! The table is rebuilt when the store's configuration generation moves (polled every
//! [`Settings::resource_poll`](crate::Settings::resource_poll)): a new, deleted or re-keyed
//! resource takes effect on every node within that interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use callsign_core::{HostName, ResourceId};
use callsign_hmac::AccessKeyMac;
use callsign_store::{KeySlot, MAX_RESOURCES_PER_HOST, ResourceRecord, ResourceStore, StoreError};

/// One resource's keys, as the authenticator tries them.
pub(crate) struct ResourceKeys {
    pub(crate) id: ResourceId,
    pub(crate) keys: Vec<(KeySlot, AccessKeyMac)>,
}

/// The resources by the host that reaches them.
#[derive(Default)]
pub(crate) struct Routing {
    shared: Vec<ResourceKeys>,
    by_host: HashMap<HostName, Vec<ResourceKeys>>,
}

impl Routing {
    /// The table for `resources` (oldest first). A group over the bound keeps its oldest
    /// members, and the others are logged: they cannot be reached until the group shrinks.
    fn build(resources: &[ResourceRecord]) -> Self {
        let mut routing = Routing::default();
        for r in resources {
            let keys = [KeySlot::Primary, KeySlot::Secondary, KeySlot::VerifyOnly]
                .into_iter()
                .filter_map(|slot| {
                    let key = r.key(slot)?;
                    match AccessKeyMac::from_base64(key.expose()) {
                        Ok(mac) => Some((slot, mac)),
                        Err(_) => {
                            tracing::error!(resource = %r.id, key = slot.as_str(), "a stored access key is not base64");
                            None
                        }
                    }
                })
                .collect();
            let group = match &r.host {
                None => &mut routing.shared,
                Some(host) => routing.by_host.entry(host.clone()).or_default(),
            };
            if group.len() >= MAX_RESOURCES_PER_HOST {
                tracing::error!(resource = %r.id, name = %r.name, "more resources share this host than the bound; this one is not served");
                continue;
            }
            group.push(ResourceKeys { id: r.id, keys });
        }
        routing
    }

    /// A table of resources sharing the server's address (tests).
    #[cfg(test)]
    pub(crate) fn shared(shared: Vec<ResourceKeys>) -> Self {
        Self {
            shared,
            by_host: HashMap::new(),
        }
    }

    /// The resources a request naming `host` (its `Host` value) may be for.
    pub(crate) fn candidates(&self, host: &str) -> &[ResourceKeys] {
        if !self.by_host.is_empty()
            && let Some(name) = HostName::of_request(host)
            && let Some(group) = self.by_host.get(&name)
        {
            return group;
        }
        &self.shared
    }
}

/// The routing table in force, reloaded when the store says resources changed.
///
/// Fails closed: when the store says resources or keys changed but they cannot be loaded (keys
/// sealed under a master key this node lacks, say), the table is *stale* and the node refuses
/// every authenticated request with 503 and reports not ready until a reload succeeds, rather
/// than go on accepting keys that may have been revoked.
pub(crate) struct Resources {
    current: RwLock<Arc<Routing>>,
    generation: AtomicU64,
    stale: AtomicBool,
}

impl Resources {
    /// Loads the table.
    pub(crate) async fn load(store: &dyn ResourceStore) -> Result<Self, StoreError> {
        let generation = store.config_generation().await?;
        let resources = store.resources().await?;
        Ok(Self {
            current: RwLock::new(Arc::new(Routing::build(&resources))),
            generation: AtomicU64::new(generation),
            stale: AtomicBool::new(false),
        })
    }

    /// The table in force.
    pub(crate) fn get(&self) -> Arc<Routing> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether resources changed in the store and could not be loaded (see [`Resources`]).
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Reloads the table if the store's generation moved; true when it did. A store that cannot
    /// be read keeps the table (every request needs the store anyway); a change that cannot be
    /// loaded makes it stale, logged once, until a reload succeeds.
    pub(crate) async fn refresh(&self, store: &dyn ResourceStore) -> Result<bool, StoreError> {
        let generation = store.config_generation().await?;
        if generation == self.generation.load(Ordering::Acquire) {
            return Ok(false);
        }
        let resources = match store.resources().await {
            Ok(r) => r,
            Err(e) => {
                if !self.stale.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e.chain(), "resources or keys changed in the store and cannot be loaded: refusing requests (503) until they can");
                }
                return Err(e);
            }
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Routing::build(&resources));
        self.generation.store(generation, Ordering::Release);
        if self.stale.swap(false, Ordering::AcqRel) {
            tracing::warn!("resources loaded again: serving requests");
        }
        tracing::info!(resources = resources.len(), "resources reloaded");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use callsign_core::ResourceName;

    use super::*;

    fn resource(i: usize, host: Option<&str>) -> ResourceRecord {
        let mut r = ResourceRecord::generate(
            ResourceName::parse(&format!("r-{i}")).expect("name"),
            host.map(|h| HostName::parse(h).expect("host")),
            time::OffsetDateTime::now_utc(),
        );
        r.verify_key = Some(callsign_core::AccessKey::generate());
        r
    }

    /// However many resources a (hand-edited) store holds, a request is tried against the
    /// keys of at most `MAX_RESOURCES_PER_HOST` of them, the oldest of its host's.
    #[test]
    fn a_request_meets_a_bounded_number_of_keys() {
        let mut all: Vec<ResourceRecord> = (0..50).map(|i| resource(i, None)).collect();
        all.extend((50..100).map(|i| resource(i, Some("chat.example"))));
        let routing = Routing::build(&all);
        for host in [
            "127.0.0.1:8443",
            "chat.example",
            "CHAT.example.:443",
            "[::1]:1",
            "",
        ] {
            let candidates = routing.candidates(host);
            assert_eq!(candidates.len(), MAX_RESOURCES_PER_HOST, "{host}");
            assert!(candidates.iter().all(|c| c.keys.len() == 3));
        }
        assert_eq!(routing.candidates("chat.example:8443")[0].id, all[50].id);
        assert_eq!(routing.candidates("other.example")[0].id, all[0].id);
    }
}
