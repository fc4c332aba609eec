//! The store conformance suite: the same checks for every backend.
//!
//! Each backend gets a `make()` that returns a fresh, empty store; [`conformance_suite!`] expands
//! every check into a test for it.

use std::sync::Arc;

use callsign_core::token::Algorithm;
use callsign_core::{AccessKey, CustomId, IdentityId, PrincipalType, ResourceId, TeamsAssignment};
use callsign_store::{
    AssignmentStore, IdentityRecord, IdentityStore, NewIdentity, PostgresOptions, PostgresStore,
    ResourceRecord, SqliteStore, Store, StoreError, StoredSigningKey,
};
use time::OffsetDateTime;
use uuid::Uuid;

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

async fn signing_key_bootstrap_agrees_on_one_key_per_algorithm(store: Arc<dyn Store>) {
    let key = |kid: &str, alg| StoredSigningKey {
        kid: kid.into(),
        alg,
        pkcs8: vec![9],
        created_at: OffsetDateTime::now_utc(),
    };
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .bootstrap_signing_key(key(&format!("k{i}"), Algorithm::Es256))
                .await
                .expect("bootstrap")
                .kid
        }));
    }
    let mut kids = std::collections::HashSet::new();
    for t in tasks {
        kids.insert(t.await.expect("task"));
    }
    assert_eq!(kids.len(), 1, "nodes disagree on the signing key: {kids:?}");
    let rsa = store
        .bootstrap_signing_key(key("r1", Algorithm::Rs256))
        .await
        .expect("bootstrap");
    assert_eq!(rsa.kid, "r1");
    assert_eq!(store.signing_keys().await.expect("read").len(), 2);
}

async fn identities_export_and_import_losslessly(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let mut originals = Vec::new();
    for i in 0..25 {
        let custom = (i % 2 == 0).then(|| format!("user-{i}"));
        let c = store
            .create_identity(new_identity(r, custom.as_deref()))
            .await
            .expect("create");
        originals.push(c.identity.id);
    }
    store.revoke_tokens(&originals[3]).await.expect("revoke");
    // Page through in id order.
    let mut all: Vec<IdentityRecord> = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_identities(after.as_ref(), 10)
            .await
            .expect("list");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|p| p.id);
        all.extend(page);
    }
    assert_eq!(all.len(), 25);
    assert!(
        all.windows(2)
            .all(|w| w[0].id.to_string() < w[1].id.to_string())
    );
    // Re-importing what exists changes nothing; importing into a fresh identity space works.
    assert_eq!(
        store.import_identities(all.clone()).await.expect("import"),
        0
    );
    let moved: Vec<IdentityRecord> = all
        .iter()
        .map(|rec| IdentityRecord {
            id: IdentityId::new_random(ResourceId::new_random()),
            ..rec.clone()
        })
        .collect();
    assert_eq!(
        store
            .import_identities(moved.clone())
            .await
            .expect("import"),
        25
    );
    for rec in &moved {
        let got = store
            .get_identity(&rec.id)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(&got, rec);
    }
}

fn assignment(
    tenant: Uuid,
    object: Uuid,
    principal_type: PrincipalType,
    client_ids: Option<Vec<Uuid>>,
) -> TeamsAssignment {
    TeamsAssignment {
        tenant_id: tenant,
        object_id: object,
        principal_type,
        client_ids,
    }
}

async fn assignment_put_creates_then_replaces(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let (tenant, object) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        store
            .get_assignment(r, tenant, object)
            .await
            .expect("get unknown"),
        None
    );
    let first = assignment(tenant, object, PrincipalType::User, None);
    assert!(store.put_assignment(r, first.clone()).await.expect("put"));
    assert_eq!(
        store.get_assignment(r, tenant, object).await.expect("get"),
        Some(first)
    );
    let second = assignment(
        tenant,
        object,
        PrincipalType::ResourceAccount,
        Some(vec![Uuid::new_v4()]),
    );
    assert!(
        !store
            .put_assignment(r, second.clone())
            .await
            .expect("put again"),
        "a second put replaces"
    );
    assert_eq!(
        store.get_assignment(r, tenant, object).await.expect("get"),
        Some(second)
    );
    // Same tenant, another object: unknown.
    assert_eq!(
        store
            .get_assignment(r, tenant, Uuid::new_v4())
            .await
            .expect("get other object"),
        None
    );
}

async fn assignment_delete_removes_it(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let (tenant, object) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(
        !store
            .delete_assignment(r, tenant, object)
            .await
            .expect("delete unknown")
    );
    let a = assignment(tenant, object, PrincipalType::User, Some(vec![]));
    assert!(store.put_assignment(r, a.clone()).await.expect("put"));
    assert!(
        store
            .delete_assignment(r, tenant, object)
            .await
            .expect("delete")
    );
    assert_eq!(
        store.get_assignment(r, tenant, object).await.expect("get"),
        None
    );
    assert!(
        !store
            .delete_assignment(r, tenant, object)
            .await
            .expect("delete again")
    );
    // Putting it again is a creation.
    assert!(store.put_assignment(r, a).await.expect("put again"));
}

async fn assignments_are_per_resource(store: Arc<dyn Store>) {
    let (mine, theirs) = (ResourceId::new_random(), ResourceId::new_random());
    let (tenant, object) = (Uuid::new_v4(), Uuid::new_v4());
    let a = assignment(tenant, object, PrincipalType::User, None);
    assert!(store.put_assignment(mine, a.clone()).await.expect("put"));
    assert_eq!(
        store
            .get_assignment(theirs, tenant, object)
            .await
            .expect("get elsewhere"),
        None
    );
    assert!(
        !store
            .delete_assignment(theirs, tenant, object)
            .await
            .expect("delete elsewhere")
    );
    // The other resource's own assignment of the same principal is a separate creation.
    let b = assignment(
        tenant,
        object,
        PrincipalType::ResourceAccount,
        Some(vec![Uuid::new_v4()]),
    );
    assert!(
        store
            .put_assignment(theirs, b.clone())
            .await
            .expect("put elsewhere")
    );
    assert_eq!(
        store
            .get_assignment(mine, tenant, object)
            .await
            .expect("get"),
        Some(a)
    );
    assert_eq!(
        store
            .get_assignment(theirs, tenant, object)
            .await
            .expect("get"),
        Some(b)
    );
}

async fn assignment_client_ids_round_trip_exactly(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let tenant = Uuid::new_v4();
    // Absent, empty, one and two ids (order and separators) are four different answers.
    let cases = [
        None,
        Some(vec![]),
        Some(vec![Uuid::new_v4()]),
        Some(vec![Uuid::new_v4(), Uuid::new_v4()]),
    ];
    for (i, clients) in cases.into_iter().enumerate() {
        let object = Uuid::new_v4();
        let a = assignment(tenant, object, PrincipalType::User, clients);
        assert!(store.put_assignment(r, a.clone()).await.expect("put"));
        assert_eq!(
            store.get_assignment(r, tenant, object).await.expect("get"),
            Some(a),
            "case {i}"
        );
    }
    // Replacing flips between the three shapes without residue.
    let object = Uuid::new_v4();
    let two = Some(vec![Uuid::new_v4(), Uuid::new_v4()]);
    for clients in [two.clone(), Some(vec![]), None, two] {
        let a = assignment(tenant, object, PrincipalType::ResourceAccount, clients);
        store.put_assignment(r, a.clone()).await.expect("put");
        assert_eq!(
            store.get_assignment(r, tenant, object).await.expect("get"),
            Some(a)
        );
    }
}

async fn concurrent_first_puts_of_one_assignment_create_once(store: Arc<dyn Store>) {
    let r = ResourceId::new_random();
    let (tenant, object) = (Uuid::new_v4(), Uuid::new_v4());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = Arc::clone(&store);
        let a = assignment(
            tenant,
            object,
            PrincipalType::User,
            Some(vec![Uuid::from_u128(i)]),
        );
        tasks.push(tokio::spawn(async move {
            store.put_assignment(r, a).await.expect("put")
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.expect("task"));
    }
    assert_eq!(created, 1);
    let got = store
        .get_assignment(r, tenant, object)
        .await
        .expect("get")
        .expect("present");
    let clients = got.client_ids.expect("client ids");
    assert_eq!(clients.len(), 1);
    assert!(
        clients[0].as_u128() < 20,
        "one of the puts won: {clients:?}"
    );
}

async fn all_assignments_lists_every_resource_in_order(store: Arc<dyn Store>) {
    assert!(store.all_assignments().await.expect("list").is_empty());
    let mut expected = Vec::new();
    for _ in 0..3 {
        let r = ResourceId::new_random();
        for k in 0..4 {
            let clients = (k % 2 == 0).then(|| vec![Uuid::new_v4()]);
            let a = assignment(Uuid::new_v4(), Uuid::new_v4(), PrincipalType::User, clients);
            assert!(store.put_assignment(r, a.clone()).await.expect("put"));
            expected.push((r, a));
        }
    }
    let deleted = expected.pop().expect("one");
    assert!(
        store
            .delete_assignment(deleted.0, deleted.1.tenant_id, deleted.1.object_id)
            .await
            .expect("delete")
    );
    expected.sort_by_key(|(r, a)| (*r, a.tenant_id, a.object_id));
    assert_eq!(store.all_assignments().await.expect("list"), expected);
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
                signing_keys_come_back_newest_first,
                signing_key_bootstrap_agrees_on_one_key_per_algorithm,
                identities_export_and_import_losslessly,
                assignment_put_creates_then_replaces,
                assignment_delete_removes_it,
                assignments_are_per_resource,
                assignment_client_ids_round_trip_exactly,
                concurrent_first_puts_of_one_assignment_create_once,
                all_assignments_lists_every_resource_in_order
            );
        }
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, guard) = $make().await;
                super::$name(Arc::clone(&store)).await;
                store.close().await;
                guard.cleanup().await;
            }
        )*
    };
}

/// What a test leaves behind: a temp dir, or a database to drop.
enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database { admin_url: String, name: String },
}

impl Guard {
    async fn cleanup(self) {
        if let Guard::Database { admin_url, name } = self {
            let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                .await
                .expect("admin connection");
            tokio::spawn(conn);
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .expect("drop test database");
        }
    }
}

async fn make_sqlite() -> (Arc<dyn Store>, Guard) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("callsign.db")).expect("open");
    (Arc::new(store), Guard::Dir(dir))
}

/// The server to create test databases on: `CALLSIGN_TEST_DATABASE_URL`, or the local default.
fn admin_url() -> String {
    std::env::var("CALLSIGN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database on the test server.
async fn make_postgres() -> (Arc<dyn Store>, Guard) {
    let admin_url = admin_url();
    let name = format!("callsign_test_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running for the conformance suite (see scripts/test.sh)");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test database");
    let mut config: tokio_postgres::Config = admin_url.parse().expect("url");
    config.dbname(&name);
    let url = pg_url(&config, &name);
    let store = PostgresStore::connect(&url, &PostgresOptions::default())
        .await
        .expect("connect");
    (Arc::new(store), Guard::Database { admin_url, name })
}

/// Rebuilds a URL for `config` pointing at database `name`.
fn pg_url(config: &tokio_postgres::Config, name: &str) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    match config.get_password() {
        Some(p) => format!(
            "postgres://{user}:{}@{host}:{port}/{name}",
            String::from_utf8_lossy(p)
        ),
        None => format!("postgres://{user}@{host}:{port}/{name}"),
    }
}

conformance_suite!(sqlite, make_sqlite);
conformance_suite!(postgres, make_postgres);

#[tokio::test]
async fn postgres_migrations_are_applied_once_by_nodes_starting_together() {
    let (_, guard) = make_postgres().await;
    let Guard::Database { admin_url, name } = &guard else {
        unreachable!()
    };
    let mut config: tokio_postgres::Config = admin_url.parse().expect("url");
    config.dbname(name);
    let url = pg_url(&config, name);
    let mut nodes = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        nodes.push(tokio::spawn(async move {
            PostgresStore::connect(&url, &PostgresOptions::default()).await
        }));
    }
    for n in nodes {
        let store = n.await.expect("task").expect("connect");
        store.close().await;
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM callsign_schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, i64::from(PostgresStore::latest_migration()));
    // An edited migration is refused.
    client
        .execute(
            "UPDATE callsign_schema_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await
        .expect("tamper");
    let err = PostgresStore::connect(&url, &PostgresOptions::default())
        .await
        .expect_err("edited migration must be refused");
    assert!(err.to_string().contains("differs"), "{err}");
    drop(client);
    guard.cleanup().await;
}

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
    let resource = ResourceId::new_random();
    let kept = assignment(
        Uuid::new_v4(),
        Uuid::new_v4(),
        PrincipalType::ResourceAccount,
        Some(vec![Uuid::new_v4(), Uuid::new_v4()]),
    );
    let removed = assignment(Uuid::new_v4(), Uuid::new_v4(), PrincipalType::User, None);
    store
        .put_assignment(resource, kept.clone())
        .await
        .expect("put");
    store
        .put_assignment(resource, removed.clone())
        .await
        .expect("put");
    assert!(
        store
            .delete_assignment(resource, removed.tenant_id, removed.object_id)
            .await
            .expect("delete")
    );
    store.close().await;
    drop(store);
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(
        store.all_assignments().await.expect("list"),
        vec![(resource, kept)]
    );
    let got = store
        .get_identity(&c.identity.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.revocation_epoch, 1);
    assert_eq!(got.custom_id.as_deref(), Some("dave"));
    store.close().await;
}

/// Hand-edited assignment rows: a bad principal type, a bad GUID, a bad client id.
const CORRUPTIONS: [&str; 3] = [
    "principal_type = 'group'",
    "object_id = 'not-a-guid'",
    "client_ids = 'c70d068c2f32484d945573070cd5aadd'",
];

#[tokio::test]
async fn sqlite_reports_corrupt_assignments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let r = ResourceId::new_random();
    let a = assignment(Uuid::new_v4(), Uuid::new_v4(), PrincipalType::User, None);
    for corruption in CORRUPTIONS {
        let store = SqliteStore::open(&path).expect("open");
        store.put_assignment(r, a.clone()).await.expect("put");
        store.close().await;
        drop(store);
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.execute(&format!("UPDATE teams_assignments SET {corruption}"), [])
            .expect("corrupt");
        drop(conn);
        let store = SqliteStore::open(&path).expect("reopen");
        let err = store.all_assignments().await.expect_err(corruption);
        assert!(matches!(err, StoreError::Corrupt(_)), "{corruption}: {err}");
        if !corruption.starts_with("object_id") {
            let err = store
                .get_assignment(r, a.tenant_id, a.object_id)
                .await
                .expect_err(corruption);
            assert!(matches!(err, StoreError::Corrupt(_)), "{corruption}: {err}");
        }
        store.close().await;
        drop(store);
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.execute("DELETE FROM teams_assignments", [])
            .expect("clean");
    }
}

#[tokio::test]
async fn postgres_reports_corrupt_assignments() {
    let (store, guard) = make_postgres().await;
    let Guard::Database { admin_url, name } = &guard else {
        unreachable!()
    };
    let mut config: tokio_postgres::Config = admin_url.parse().expect("url");
    config.dbname(name);
    let (client, conn) = tokio_postgres::connect(&pg_url(&config, name), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let r = ResourceId::new_random();
    let a = assignment(Uuid::new_v4(), Uuid::new_v4(), PrincipalType::User, None);
    for corruption in CORRUPTIONS {
        store.put_assignment(r, a.clone()).await.expect("put");
        let corruption_pg = corruption
            .replace("client_ids = '", "client_ids = '{")
            .replace("aadd'", "aadd}'");
        client
            .batch_execute(&format!(
                "UPDATE callsign_teams_assignments SET {corruption_pg}"
            ))
            .await
            .expect("corrupt");
        let err = store.all_assignments().await.expect_err(corruption);
        assert!(matches!(err, StoreError::Corrupt(_)), "{corruption}: {err}");
        if !corruption.starts_with("object_id") {
            let err = store
                .get_assignment(r, a.tenant_id, a.object_id)
                .await
                .expect_err(corruption);
            assert!(matches!(err, StoreError::Corrupt(_)), "{corruption}: {err}");
        }
        client
            .batch_execute("DELETE FROM callsign_teams_assignments")
            .await
            .expect("clean");
    }
    drop(client);
    store.close().await;
    guard.cleanup().await;
}

#[tokio::test]
async fn an_embedded_deployment_moves_to_postgres_losing_nothing() {
    let (sqlite, dir) = make_sqlite().await;
    let (pg, db) = make_postgres().await;
    let resource = ResourceRecord {
        id: ResourceId::new_random(),
        primary_key: AccessKey::generate(),
        secondary_key: AccessKey::generate(),
        created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
    };
    sqlite
        .bootstrap_default_resource(resource.clone())
        .await
        .expect("bootstrap");
    sqlite
        .add_signing_key(StoredSigningKey {
            kid: "k1".into(),
            alg: Algorithm::Es256,
            pkcs8: vec![1, 2, 3],
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
        })
        .await
        .expect("key");
    let mut ids = Vec::new();
    for i in 0..120 {
        let custom = (i % 3 == 0).then(|| format!("c{i}"));
        let c = sqlite
            .create_identity(new_identity(resource.id, custom.as_deref()))
            .await
            .expect("create");
        ids.push(c.identity.id);
    }
    sqlite.revoke_tokens(&ids[7]).await.expect("revoke");
    let mut assignments = Vec::new();
    for i in 0..5u128 {
        let clients = match i {
            0 => None,
            1 => Some(vec![]),
            _ => Some(vec![Uuid::from_u128(i), Uuid::new_v4()]),
        };
        let a = assignment(Uuid::new_v4(), Uuid::new_v4(), PrincipalType::User, clients);
        assert!(
            sqlite
                .put_assignment(resource.id, a.clone())
                .await
                .expect("put")
        );
        assignments.push((resource.id, a));
    }
    // One the target has already (newer there): kept, not overwritten.
    let newer = TeamsAssignment {
        principal_type: PrincipalType::ResourceAccount,
        ..assignments[4].1.clone()
    };
    assert!(
        pg.put_assignment(resource.id, newer.clone())
            .await
            .expect("put")
    );
    let report = callsign_store::copy_store(sqlite.as_ref(), pg.as_ref(), 50)
        .await
        .expect("copy");
    assert_eq!(report.identities_read, 120);
    assert_eq!(report.identities_inserted, 120);
    assert_eq!(report.signing_keys, 1);
    assert_eq!(report.assignments, 4);
    let mut expected = assignments.clone();
    expected[4].1 = newer;
    expected.sort_by_key(|(r, a)| (*r, a.tenant_id, a.object_id));
    assert_eq!(pg.all_assignments().await.expect("list"), expected);
    assert_eq!(
        pg.default_resource().await.expect("read"),
        Some(resource.clone())
    );
    for id in &ids {
        assert_eq!(
            pg.get_identity(id).await.expect("get"),
            sqlite.get_identity(id).await.expect("get")
        );
    }
    // Running it again copies nothing new.
    let again = callsign_store::copy_store(sqlite.as_ref(), pg.as_ref(), 50)
        .await
        .expect("copy again");
    assert_eq!(again.identities_inserted, 0);
    assert_eq!(again.signing_keys, 0);
    assert_eq!(again.assignments, 0);
    assert_eq!(pg.all_assignments().await.expect("list"), expected);
    // A target of another resource is refused.
    let (other, other_dir) = make_sqlite().await;
    other
        .bootstrap_default_resource(ResourceRecord {
            id: ResourceId::new_random(),
            ..resource.clone()
        })
        .await
        .expect("bootstrap other");
    let err = callsign_store::copy_store(sqlite.as_ref(), other.as_ref(), 50)
        .await
        .expect_err("mixing resources is refused");
    assert!(matches!(
        err,
        callsign_store::CopyError::DifferentResource(_)
    ));
    for s in [sqlite, pg, other] {
        s.close().await;
    }
    for g in [dir, db, other_dir] {
        g.cleanup().await;
    }
}
