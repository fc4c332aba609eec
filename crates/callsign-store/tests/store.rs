//! The store conformance suite: the same checks for every backend.
//!
//! Each backend gets a `make()` that returns a fresh, empty store; [`conformance_suite!`] expands
//! every check into a test for it.

use std::sync::Arc;

use callsign_core::token::Algorithm;
use callsign_core::{AccessKey, CustomId, IdentityId, ResourceId};
use callsign_store::{
    IdentityStore, NewIdentity, ResourceRecord, SqliteStore, Store, StoredSigningKey,
};
use time::OffsetDateTime;

fn new_identity(resource: ResourceId, custom: Option<&str>) -> NewIdentity {
    NewIdentity {
        id: IdentityId::new_random(resource),
        custom_id: custom.map(|c| CustomId::parse(c).expect("valid custom id")),
        created_at: OffsetDateTime::now_utc(),
    }
}

async fn create_then_get_returns_the_identity(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let new = new_identity(r, None);
    let created = store.create_identity(new.clone()).await.expect("create");
    assert!(created.created);
    assert_eq!(created.identity.id, new.id);
    assert_eq!(created.identity.revocation_epoch, 0);
    let got = store
        .get_identity(&new.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got, created.identity);
    let other = IdentityId::new_random(r);
    assert_eq!(store.get_identity(&other).await.expect("get"), None);
}

async fn custom_id_is_idempotent_per_resource(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let first = store
        .create_identity(new_identity(r, Some("alice@example.com")))
        .await
        .expect("create");
    let again = store
        .create_identity(new_identity(r, Some("alice@example.com")))
        .await
        .expect("create again");
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(again.identity.id, first.identity.id);
    assert_eq!(
        again.identity.custom_id.as_deref(),
        Some("alice@example.com")
    );
    // Another resource may use the same custom id for its own identity.
    let elsewhere = store
        .create_identity(new_identity(
            ResourceId::new_random(),
            Some("alice@example.com"),
        ))
        .await
        .expect("create elsewhere");
    assert!(elsewhere.created);
    assert_ne!(elsewhere.identity.id, first.identity.id);
}

async fn concurrent_creates_with_one_custom_id_yield_one_identity(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .create_identity(new_identity(r, Some("bob")))
                .await
                .expect("create")
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for t in tasks {
        let c = t.await.expect("task");
        created += usize::from(c.created);
        ids.insert(c.identity.id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
}

async fn revoke_increments_the_epoch(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let c = store
        .create_identity(new_identity(r, None))
        .await
        .expect("create");
    let id = c.identity.id;
    assert_eq!(store.revoke_tokens(&id).await.expect("revoke"), Some(1));
    assert_eq!(store.revoke_tokens(&id).await.expect("revoke"), Some(2));
    let got = store
        .get_identity(&id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.revocation_epoch, 2);
    let unknown = IdentityId::new_random(r);
    assert_eq!(store.revoke_tokens(&unknown).await.expect("revoke"), None);
}

async fn concurrent_revokes_are_all_counted(store: Arc<dyn Store>) {
    let c = store
        .create_identity(new_identity(ResourceId::new_random(), None))
        .await
        .expect("create");
    let id = c.identity.id;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { store.revoke_tokens(&id).await }));
    }
    let mut epochs = Vec::new();
    for t in tasks {
        epochs.push(t.await.expect("task").expect("revoke").expect("exists"));
    }
    epochs.sort_unstable();
    assert_eq!(epochs, (1..=50).collect::<Vec<u64>>());
}

async fn delete_removes_everything(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let c = store
        .create_identity(new_identity(r, Some("carol")))
        .await
        .expect("create");
    let id = c.identity.id;
    store.record_token_issued(&id, OffsetDateTime::now_utc());
    assert!(store.delete_identity(&id).await.expect("delete"));
    assert_eq!(store.get_identity(&id).await.expect("get"), None);
    assert!(!store.delete_identity(&id).await.expect("delete again"));
    assert_eq!(store.revoke_tokens(&id).await.expect("revoke"), None);
    // The custom id is free again and yields a new identity.
    let again = store
        .create_identity(new_identity(r, Some("carol")))
        .await
        .expect("create");
    assert!(again.created);
    assert_ne!(again.identity.id, id);
}

async fn last_token_time_is_visible(store: Arc<dyn Store>) {
    let c = store
        .create_identity(new_identity(ResourceId::new_random(), None))
        .await
        .expect("create");
    let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    store.record_token_issued(&c.identity.id, at);
    let got = store
        .get_identity(&c.identity.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.last_token_issued_at, Some(at));
}

async fn default_resource_is_bootstrapped_once(store: Arc<dyn Store>) {
    assert_eq!(store.default_resource().await.expect("read"), None);
    let candidate = |id| ResourceRecord {
        id,
        primary_key: AccessKey::generate(),
        secondary_key: AccessKey::generate(),
        created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
    };
    let first = candidate(ResourceId::new_random());
    let won = store
        .bootstrap_default_resource(first.clone())
        .await
        .expect("bootstrap");
    assert_eq!(won, first);
    let lost = store
        .bootstrap_default_resource(candidate(ResourceId::new_random()))
        .await
        .expect("bootstrap again");
    assert_eq!(lost, first);
    assert_eq!(store.default_resource().await.expect("read"), Some(first));
}

async fn signing_keys_come_back_newest_first(store: Arc<dyn Store>) {
    assert!(store.signing_keys().await.expect("read").is_empty());
    let key = |kid: &str, secs| StoredSigningKey {
        kid: kid.into(),
        alg: Algorithm::Es256,
        pkcs8: vec![1, 2, 3],
        created_at: OffsetDateTime::from_unix_timestamp(secs).expect("time"),
    };
    store
        .add_signing_key(key("old", 1_600_000_000))
        .await
        .expect("add");
    store
        .add_signing_key(key("new", 1_700_000_000))
        .await
        .expect("add");
    let keys = store.signing_keys().await.expect("read");
    assert_eq!(
        keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        ["new", "old"]
    );
    assert!(
        store.add_signing_key(key("new", 1)).await.is_err(),
        "kids are unique"
    );
}

macro_rules! conformance_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            conformance_suite!(@tests $make;
                create_then_get_returns_the_identity,
                custom_id_is_idempotent_per_resource,
                concurrent_creates_with_one_custom_id_yield_one_identity,
                revoke_increments_the_epoch,
                concurrent_revokes_are_all_counted,
                delete_removes_everything,
                last_token_time_is_visible,
                default_resource_is_bootstrapped_once,
                signing_keys_come_back_newest_first
            );
        }
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $make().await;
                super::$name(Arc::clone(&store)).await;
                store.close().await;
            }
        )*
    };
}

async fn make_sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("callsign.db")).expect("open");
    (Arc::new(store), dir)
}

conformance_suite!(sqlite, make_sqlite);

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let store = SqliteStore::open(&path).expect("open");
    let c = store
        .create_identity(new_identity(ResourceId::new_random(), Some("dave")))
        .await
        .expect("create");
    store.revoke_tokens(&c.identity.id).await.expect("revoke");
    store.close().await;
    drop(store);
    let store = SqliteStore::open(&path).expect("reopen");
    let got = store
        .get_identity(&c.identity.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.revocation_epoch, 1);
    assert_eq!(got.custom_id.as_deref(), Some("dave"));
    store.close().await;
}
