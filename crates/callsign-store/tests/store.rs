//! The store conformance suite: the same checks for every backend.
//!
//! Each backend gets a `make()` that returns a fresh, empty store; [`conformance_suite!`] expands
//! every check into a test for it.

use std::sync::Arc;

use callsign_core::token::Algorithm;
use callsign_core::{
    AccessKey, CustomId, HostName, IdentityId, PrincipalType, ResourceId, ResourceName,
    TeamsAssignment,
};
use callsign_store::{
    Actor, AssignmentStore, AuditOperation, AuditOutcome, AuditQuery, BulkIdentities, BulkStore,
    CopyError, CopyOptions, DivergedId, IdentityFilter, IdentityRecord, IdentityStore,
    ImportReport, KeyProtection, KeyRotation, KeySlot, MAX_RESOURCES_PER_HOST, MasterKey,
    NewIdentity, PostgresOptions, PostgresStore, ResourceCreated, ResourceDeleted, ResourceRecord,
    ResourceStore, Rotation, Sealer, SqliteStore, Store, StoreError, StoredSigningKey, Tombstone,
    TombstoneReport,
};
use callsign_testkit::{TestDatabase, connect_postgres};
use time::OffsetDateTime;
use uuid::Uuid;

fn new_identity(resource: ResourceId, custom: Option<&str>) -> NewIdentity {
    NewIdentity {
        id: IdentityId::new_random(resource),
        custom_id: custom.map(|c| CustomId::parse(c).expect("valid custom id")),
        created_at: OffsetDateTime::now_utc(),
    }
}

async fn create_then_get_returns_the_identity(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let new = new_identity(r, None);
    let created = store
        .create_identity(new.clone(), &Actor::operator())
        .await
        .expect("create");
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

async fn custom_id_is_idempotent_per_resource(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let first = store
        .create_identity(
            new_identity(r, Some("alice@example.com")),
            &Actor::operator(),
        )
        .await
        .expect("create");
    let again = store
        .create_identity(
            new_identity(r, Some("alice@example.com")),
            &Actor::operator(),
        )
        .await
        .expect("create again");
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(again.identity.id, first.identity.id);
    assert_eq!(
        again.identity.custom_id.as_ref().map(CustomId::as_str),
        Some("alice@example.com")
    );
    // Another resource may use the same custom id for its own identity.
    let elsewhere = store
        .create_identity(
            new_identity(ResourceId::new_random(), Some("alice@example.com")),
            &Actor::operator(),
        )
        .await
        .expect("create elsewhere");
    assert!(elsewhere.created);
    assert_ne!(elsewhere.identity.id, first.identity.id);
}

async fn concurrent_creates_with_one_custom_id_yield_one_identity(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .create_identity(new_identity(r, Some("bob")), &Actor::operator())
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

/// An actor whose records carry `request`.
fn requester(request: String) -> Actor {
    Actor {
        request_id: Some(request),
        ..Actor::operator()
    }
}

/// The create records of `resource`: request id to (identity, outcome), each request once.
async fn create_records(
    store: &dyn BulkStore,
    resource: ResourceId,
) -> std::collections::HashMap<String, (IdentityId, AuditOutcome)> {
    let records = store
        .audit_records(&AuditQuery {
            resource: Some(resource),
            operation: Some(AuditOperation::CreateIdentity),
            limit: 100_000,
            ..AuditQuery::default()
        })
        .await
        .expect("audit records");
    let mut by_request = std::collections::HashMap::new();
    for r in records {
        let request = r.request_id.expect("a request id");
        let identity = r.identity.expect("an identity");
        assert!(
            by_request
                .insert(request.clone(), (identity, r.outcome))
                .is_none(),
            "{request} recorded twice"
        );
    }
    by_request
}

async fn concurrent_creates_are_each_stored_and_recorded_once(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in (t..500).step_by(32) {
                let new = new_identity(r, None);
                let c = store
                    .create_identity(new.clone(), &requester(format!("c{i}")))
                    .await
                    .expect("create");
                assert!(c.created);
                assert_eq!(c.identity.id, new.id);
                mine.push((format!("c{i}"), c.identity));
            }
            mine
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        created.extend(t.await.expect("task"));
    }
    assert_eq!(created.len(), 500);
    let ids: std::collections::HashSet<IdentityId> = created.iter().map(|(_, c)| c.id).collect();
    assert_eq!(ids.len(), 500);
    let records = create_records(store.as_ref(), r).await;
    assert_eq!(records.len(), 500);
    for (request, identity) in &created {
        assert_eq!(
            records.get(request),
            Some(&(identity.id, AuditOutcome::Success)),
            "{request}"
        );
        let got = store.get_identity(&identity.id).await.expect("get");
        assert_eq!(got.as_ref(), Some(identity));
    }
}

async fn a_custom_id_racing_with_other_creates_is_created_once(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let mut tasks = Vec::new();
    // Every fourth create asks for one custom id, the others for none or one of their own.
    for i in 0..256 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let custom = match i % 4 {
                0 => Some("shared".to_owned()),
                1 => Some(format!("own-{i}")),
                _ => None,
            };
            let c = store
                .create_identity(
                    new_identity(r, custom.as_deref()),
                    &requester(format!("c{i}")),
                )
                .await
                .expect("create");
            (i, custom, c)
        }));
    }
    let mut shared = std::collections::HashSet::new();
    let mut shared_created = 0;
    let mut answers = Vec::new();
    for t in tasks {
        let (i, custom, c) = t.await.expect("task");
        assert_eq!(
            c.identity.custom_id.as_ref().map(CustomId::as_str),
            custom.as_deref()
        );
        if custom.as_deref() == Some("shared") {
            shared.insert(c.identity.id);
            shared_created += usize::from(c.created);
        } else {
            assert!(c.created, "c{i}");
        }
        answers.push((format!("c{i}"), c));
    }
    assert_eq!(shared.len(), 1);
    assert_eq!(shared_created, 1);
    let records = create_records(store.as_ref(), r).await;
    assert_eq!(records.len(), 256);
    for (request, c) in &answers {
        let outcome = if c.created {
            AuditOutcome::Success
        } else {
            AuditOutcome::Existing
        };
        assert_eq!(
            records.get(request),
            Some(&(c.identity.id, outcome)),
            "{request}"
        );
    }
}

async fn revoke_increments_the_epoch(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let c = store
        .create_identity(new_identity(r, None), &Actor::operator())
        .await
        .expect("create");
    let id = c.identity.id;
    assert_eq!(
        store
            .revoke_tokens(&id, &Actor::operator())
            .await
            .expect("revoke"),
        Some(1)
    );
    assert_eq!(
        store
            .revoke_tokens(&id, &Actor::operator())
            .await
            .expect("revoke"),
        Some(2)
    );
    let got = store
        .get_identity(&id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.revocation_epoch, 2);
    let unknown = IdentityId::new_random(r);
    assert_eq!(
        store
            .revoke_tokens(&unknown, &Actor::operator())
            .await
            .expect("revoke"),
        None
    );
}

async fn concurrent_revokes_are_all_counted(store: Arc<dyn BulkStore>) {
    let c = store
        .create_identity(
            new_identity(ResourceId::new_random(), None),
            &Actor::operator(),
        )
        .await
        .expect("create");
    let id = c.identity.id;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.revoke_tokens(&id, &Actor::operator()).await
        }));
    }
    let mut epochs = Vec::new();
    for t in tasks {
        epochs.push(t.await.expect("task").expect("revoke").expect("exists"));
    }
    epochs.sort_unstable();
    assert_eq!(epochs, (1..=50).collect::<Vec<u64>>());
}

/// Many revokes and deletes of one resource at once: the feed numbers them 1..=n in commit order
/// with no gap or repeat, one event per change with the epoch the change left.
async fn concurrent_revokes_and_deletes_number_the_feed_without_gaps(store: Arc<dyn BulkStore>) {
    use callsign_store::{FeedRead, RevocationKind};

    let resource = ResourceId::new_random();
    let mut ids = Vec::new();
    for _ in 0..30 {
        let c = store
            .create_identity(new_identity(resource, None), &Actor::operator())
            .await
            .expect("create");
        ids.push(c.identity.id);
    }
    let (revoked, deleted) = ids.split_at(20);
    let mut tasks = tokio::task::JoinSet::new();
    // Each of the first 20 revoked twice, the other 10 deleted, all 50 at once.
    for id in revoked.iter().chain(revoked).copied() {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let epoch = store.revoke_tokens(&id, &Actor::operator()).await;
            (
                id,
                RevocationKind::Revoked,
                epoch.expect("revoke").expect("exists"),
            )
        });
    }
    for id in deleted.iter().copied() {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let gone = store.delete_identity(&id, &Actor::operator()).await;
            assert!(gone.expect("delete"));
            // A deleted identity's event carries the epoch it had: it was never revoked.
            (id, RevocationKind::Deleted, 0)
        });
    }
    let mut expected: Vec<(IdentityId, RevocationKind, u64)> = tasks.join_all().await;
    expected.sort_unstable_by_key(|(id, kind, epoch)| (id.to_string(), kind.as_str(), *epoch));
    let head = store.feed_position(resource).await.expect("position");
    assert_eq!(head, 50);
    let FeedRead::Events(events) = store.feed_after(resource, 0, 1000).await.expect("read") else {
        panic!("expired");
    };
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
    let mut got: Vec<(IdentityId, RevocationKind, u64)> = events
        .iter()
        .map(|e| (e.revocation.id, e.revocation.kind, e.revocation.epoch))
        .collect();
    got.sort_unstable_by_key(|(id, kind, epoch)| (id.to_string(), kind.as_str(), *epoch));
    assert_eq!(got, expected);
    // Each revoked identity's events are in epoch order along the feed.
    for id in revoked {
        let epochs: Vec<u64> = events
            .iter()
            .filter(|e| e.revocation.id == *id)
            .map(|e| e.revocation.epoch)
            .collect();
        assert_eq!(epochs, vec![1, 2], "{id}");
    }
}

async fn delete_removes_everything(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let c = store
        .create_identity(new_identity(r, Some("carol")), &Actor::operator())
        .await
        .expect("create");
    let id = c.identity.id;
    store.record_token_issued(&id, OffsetDateTime::now_utc());
    assert!(
        store
            .delete_identity(&id, &Actor::operator())
            .await
            .expect("delete")
    );
    assert_eq!(store.get_identity(&id).await.expect("get"), None);
    assert!(
        !store
            .delete_identity(&id, &Actor::operator())
            .await
            .expect("delete again")
    );
    assert_eq!(
        store
            .revoke_tokens(&id, &Actor::operator())
            .await
            .expect("revoke"),
        None
    );
    // The custom id is free again and yields a new identity.
    let again = store
        .create_identity(new_identity(r, Some("carol")), &Actor::operator())
        .await
        .expect("create");
    assert!(again.created);
    assert_ne!(again.identity.id, id);
}

async fn last_token_time_is_visible(store: Arc<dyn BulkStore>) {
    let c = store
        .create_identity(
            new_identity(ResourceId::new_random(), None),
            &Actor::operator(),
        )
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

/// Every page of `resource`'s listing, following `next_after`: the ids in order.
async fn list_all(
    store: &dyn BulkStore,
    resource: ResourceId,
    limit: usize,
    filter: &IdentityFilter,
) -> Vec<IdentityRecord> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_page(resource, after.as_ref(), limit, filter)
            .await
            .expect("list");
        assert!(page.records.len() <= limit);
        all.extend(page.records);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

async fn listing_pages_through_a_resource_in_id_order_without_others(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let elsewhere = ResourceId::new_random();
    let mut ids = Vec::new();
    for i in 0..23 {
        let custom = format!("user-{i}");
        let c = store
            .create_identity(new_identity(r, Some(&custom)), &Actor::operator())
            .await
            .expect("create");
        ids.push(c.identity.id);
        store
            .create_identity(new_identity(elsewhere, Some(&custom)), &Actor::operator())
            .await
            .expect("create elsewhere");
    }
    let gone = ids.remove(5);
    assert!(
        store
            .delete_identity(&gone, &Actor::operator())
            .await
            .expect("delete")
    );
    ids.sort_by_key(ToString::to_string);
    for limit in [1, 4, 22, 23, 100] {
        let listed = list_all(store.as_ref(), r, limit, &IdentityFilter::default()).await;
        let listed: Vec<IdentityId> = listed.iter().map(|i| i.id).collect();
        assert_eq!(listed, ids, "page size {limit}");
    }
    // Exactly a full page: no next page is announced.
    let page = store
        .list_page(r, None, 22, &IdentityFilter::default())
        .await
        .expect("list");
    assert_eq!((page.records.len(), page.next_after), (22, None));
    let empty = store
        .list_page(
            ResourceId::new_random(),
            None,
            10,
            &IdentityFilter::default(),
        )
        .await
        .expect("list");
    assert_eq!((empty.records.len(), empty.next_after), (0, None));
}

async fn listing_filters_by_custom_id_prefix_and_token_time(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let create = |custom: Option<&'static str>| {
        let store = Arc::clone(&store);
        async move {
            store
                .create_identity(new_identity(r, custom), &Actor::operator())
                .await
                .expect("create")
                .identity
                .id
        }
    };
    let alice = create(Some("team-a/alice")).await;
    let bob = create(Some("team-a/bob")).await;
    let carol = create(Some("team-b/carol")).await;
    let anonymous = create(None).await;
    // A prefix with LIKE wildcards matches them literally.
    let percent = create(Some("50%_off")).await;
    let t = |s: i64| OffsetDateTime::from_unix_timestamp(1_700_000_000 + s).expect("time");
    store.record_token_issued(&alice, t(0));
    store.record_token_issued(&carol, t(100));
    let ids = |records: Vec<IdentityRecord>| {
        let mut v: Vec<IdentityId> = records.iter().map(|r| r.id).collect();
        v.sort_by_key(ToString::to_string);
        v
    };
    let sorted = |mut v: Vec<IdentityId>| {
        v.sort_by_key(ToString::to_string);
        v
    };
    let prefix = |p: &str| IdentityFilter {
        custom_id_prefix: Some(p.to_owned()),
        ..IdentityFilter::default()
    };
    let listed = list_all(store.as_ref(), r, 1, &prefix("team-a/")).await;
    assert_eq!(ids(listed), sorted(vec![alice, bob]));
    let listed = list_all(store.as_ref(), r, 2, &prefix("50%")).await;
    assert_eq!(ids(listed), vec![percent]);
    assert!(
        list_all(store.as_ref(), r, 2, &prefix("5_"))
            .await
            .is_empty()
    );
    assert!(
        list_all(store.as_ref(), r, 2, &prefix("team-a/alice2"))
            .await
            .is_empty()
    );
    // Never had a token, or had the last one before the cut: stale.
    let stale = IdentityFilter {
        last_token_issued_before: Some(t(50)),
        ..IdentityFilter::default()
    };
    let listed = list_all(store.as_ref(), r, 2, &stale).await;
    assert_eq!(ids(listed), sorted(vec![alice, bob, anonymous, percent]));
    // A token issued since counts at once, though its time is still buffered.
    store.record_token_issued(&alice, t(60));
    let listed = list_all(store.as_ref(), r, 2, &stale).await;
    assert_eq!(ids(listed), sorted(vec![bob, anonymous, percent]));
    let both = IdentityFilter {
        custom_id_prefix: Some("team-".into()),
        last_token_issued_before: Some(t(100)),
    };
    // Strictly before: carol's token at the cut is not stale.
    let listed = list_all(store.as_ref(), r, 1, &both).await;
    assert_eq!(ids(listed), sorted(vec![alice, bob]));
    let carol_record = store
        .get_identity(&carol)
        .await
        .expect("get")
        .expect("present");
    let listed = list_all(store.as_ref(), r, 10, &prefix("team-b")).await;
    assert_eq!(listed, vec![carol_record]);
}

async fn a_sparse_filter_reads_a_bounded_run_of_rows_per_page(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let mut needles = Vec::new();
    for i in 0..60 {
        let custom = if i % 25 == 7 { "needle" } else { "hay" };
        let custom = format!("{custom}-{i}");
        let c = store
            .create_identity(new_identity(r, Some(&custom)), &Actor::operator())
            .await
            .expect("create");
        if custom.starts_with("needle") {
            needles.push(c.identity.id);
        }
    }
    needles.sort_by_key(ToString::to_string);
    let filter = IdentityFilter {
        custom_id_prefix: Some("needle".into()),
        ..IdentityFilter::default()
    };
    // A page of 1 reads at most 10 rows: the first page stops there, empty or not, and says
    // where to go on.
    let first = store.list_page(r, None, 1, &filter).await.expect("list");
    assert!(first.records.len() <= 1);
    assert!(
        first.next_after.is_some(),
        "60 rows are more than one page reads"
    );
    let listed = list_all(store.as_ref(), r, 1, &filter).await;
    let listed: Vec<IdentityId> = listed.iter().map(|i| i.id).collect();
    assert_eq!(listed, needles);
    // Without a filter a page reads one row more than it holds, so a full last page ends it.
    let page = store
        .list_page(r, None, 60, &IdentityFilter::default())
        .await
        .expect("list");
    assert_eq!((page.records.len(), page.next_after), (60, None));
}

async fn listing_under_concurrent_creates_and_deletes_skips_and_repeats_nothing(
    store: Arc<dyn BulkStore>,
) {
    let r = ResourceId::new_random();
    let mut stable = Vec::new();
    for _ in 0..300 {
        let c = store
            .create_identity(new_identity(r, None), &Actor::operator())
            .await
            .expect("create");
        stable.push(c.identity.id);
    }
    let mut doomed = Vec::new();
    for _ in 0..150 {
        let c = store
            .create_identity(new_identity(r, None), &Actor::operator())
            .await
            .expect("create");
        doomed.push(c.identity.id);
    }
    let churn = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for id in doomed {
                store
                    .create_identity(new_identity(r, None), &Actor::operator())
                    .await
                    .expect("create");
                assert!(
                    store
                        .delete_identity(&id, &Actor::operator())
                        .await
                        .expect("delete")
                );
            }
        })
    };
    let listed = list_all(store.as_ref(), r, 7, &IdentityFilter::default()).await;
    churn.await.expect("churn");
    let listed: Vec<String> = listed.iter().map(|i| i.id.to_string()).collect();
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "in order, no repeats"
    );
    let listed: std::collections::HashSet<&String> = listed.iter().collect();
    for id in &stable {
        assert!(listed.contains(&id.to_string()), "{id} skipped");
    }
}

async fn default_resource_is_bootstrapped_once(store: Arc<dyn BulkStore>) {
    assert_eq!(store.default_resource().await.expect("read"), None);
    let candidate = |id| ResourceRecord {
        id,
        name: ResourceName::default_name(),
        host: None,
        verify_key: None,
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

async fn signing_keys_come_back_newest_first(store: Arc<dyn BulkStore>) {
    assert!(store.signing_keys().await.expect("read").is_empty());
    let key = |kid: &str, secs| StoredSigningKey {
        kid: kid.into(),
        alg: Algorithm::Es256,
        pkcs8: vec![1, 2, 3],
        created_at: OffsetDateTime::from_unix_timestamp(secs).expect("time"),
        activates_at: OffsetDateTime::from_unix_timestamp(secs).expect("time"),
        retire_after: None,
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

async fn signing_key_bootstrap_agrees_on_one_key_per_algorithm(store: Arc<dyn BulkStore>) {
    let key = |kid: &str, alg| StoredSigningKey {
        kid: kid.into(),
        alg,
        pkcs8: vec![9],
        created_at: OffsetDateTime::now_utc(),
        activates_at: OffsetDateTime::now_utc(),
        retire_after: None,
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
                .clone()
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

/// An instant `secs` after a fixed start.
fn t(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_700_000_000 + secs).expect("time")
}

/// A key of `alg` created at `created`, activating at `activates`.
fn timed_key(kid: &str, alg: Algorithm, created: i64, activates: i64) -> StoredSigningKey {
    StoredSigningKey {
        kid: kid.into(),
        alg,
        pkcs8: kid.as_bytes().to_vec(),
        created_at: t(created),
        activates_at: t(activates),
        retire_after: None,
    }
}

/// Rotating to `kid` at `now`: active 600 s later, the keys it succeeds retired 1000 s after that.
fn rotation(kid: &str, alg: Algorithm, now: i64) -> KeyRotation {
    KeyRotation {
        key: timed_key(kid, alg, now, now + 600),
        now: t(now),
        retire_previous_after: t(now + 1600),
        actor: Actor::operator(),
    }
}

async fn rotation_adds_one_pending_key_and_refuses_another_while_it_is_pending(
    store: Arc<dyn BulkStore>,
) {
    store
        .bootstrap_signing_key(timed_key("a", Algorithm::Es256, 0, 0))
        .await
        .expect("bootstrap");
    let added = store.rotate_signing_key(rotation("b", Algorithm::Es256, 10));
    assert_eq!(added.await.expect("rotate"), Rotation::Added);
    let again = store.rotate_signing_key(rotation("c", Algorithm::Es256, 20));
    assert_eq!(
        again.await.expect("rotate again"),
        Rotation::AlreadyPending {
            kid: "b".into(),
            activates_at: t(610)
        }
    );
    let keys = store.signing_keys().await.expect("read");
    let view: Vec<_> = keys
        .iter()
        .map(|k| (k.kid.as_str(), k.activates_at, k.retire_after))
        .collect();
    assert_eq!(view, [("b", t(610), None), ("a", t(0), Some(t(1610)))]);
    assert_eq!(keys[0].pkcs8, b"b", "the private key round-trips");
    // Another algorithm rotates on its own.
    let rsa = store.rotate_signing_key(rotation("r", Algorithm::Rs256, 20));
    assert_eq!(rsa.await.expect("rotate rsa"), Rotation::Added);
    // Once `b` signs, the next rotation gives it a bound and leaves `a`'s as it was.
    let next = store.rotate_signing_key(rotation("d", Algorithm::Es256, 700));
    assert_eq!(next.await.expect("rotate"), Rotation::Added);
    let keys = store.signing_keys().await.expect("read");
    let bound = |kid: &str| keys.iter().find(|k| k.kid == kid).expect(kid).retire_after;
    assert_eq!(bound("a"), Some(t(1610)));
    assert_eq!(bound("b"), Some(t(2300)));
    assert_eq!(bound("d"), None);
    assert_eq!(bound("r"), None);
}

async fn concurrent_rotations_add_exactly_one_key(store: Arc<dyn BulkStore>) {
    store
        .bootstrap_signing_key(timed_key("a", Algorithm::Es256, 0, 0))
        .await
        .expect("bootstrap");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .rotate_signing_key(rotation(&format!("k{i}"), Algorithm::Es256, 10))
                .await
                .expect("rotate")
        }));
    }
    let mut added = 0;
    let mut pending = std::collections::HashSet::new();
    for task in tasks {
        match task.await.expect("task") {
            Rotation::Added => added += 1,
            Rotation::AlreadyPending { kid, .. } => {
                pending.insert(kid);
            }
        }
    }
    assert_eq!(added, 1, "exactly one rotation adds its key");
    assert!(
        pending.len() <= 1,
        "the others name one pending key: {pending:?}"
    );
    assert_eq!(store.signing_keys().await.expect("read").len(), 2);
}

async fn retirement_removes_only_keys_past_their_bound_with_an_active_successor(
    store: Arc<dyn BulkStore>,
) {
    store
        .bootstrap_signing_key(timed_key("a", Algorithm::Es256, 0, 0))
        .await
        .expect("bootstrap");
    store
        .rotate_signing_key(rotation("b", Algorithm::Es256, 10))
        .await
        .expect("rotate");
    // A bound without an active newer key of its algorithm never retires a key.
    let mut lone = timed_key("lone", Algorithm::Rs256, 0, 0);
    lone.retire_after = Some(t(5));
    store.add_signing_key(lone).await.expect("add");
    let retire = |now| {
        let store = Arc::clone(&store);
        async move { store.retire_signing_keys(t(now)).await.expect("retire") }
    };
    assert!(retire(1609).await.is_empty(), "before the bound");
    assert_eq!(retire(1610).await, ["a"]);
    assert!(retire(1610).await.is_empty(), "idempotent");
    let kids: Vec<_> = store
        .signing_keys()
        .await
        .expect("read")
        .iter()
        .map(|k| k.kid.clone())
        .collect();
    assert_eq!(kids, ["b", "lone"]);
}

/// A rotated key on a sealed store is stored sealed and opens as it was.
async fn a_rotated_key_is_sealed_at_rest(store: Arc<dyn BulkStore>) {
    store
        .bootstrap_signing_key(timed_key("a", Algorithm::Es256, 0, 0))
        .await
        .expect("bootstrap");
    store
        .rotate_signing_key(rotation("b", Algorithm::Es256, 10))
        .await
        .expect("rotate");
    let status = store.seal_status().await.expect("status");
    assert_eq!((status.sealed, status.plain), (2, 0));
    let keys = store.signing_keys().await.expect("read");
    assert_eq!(keys[0].pkcs8, b"b");
    assert_eq!(store.reseal_keys().await.expect("reseal"), 2);
    let keys = store.signing_keys().await.expect("read");
    assert_eq!(
        (keys[0].pkcs8.as_slice(), keys[1].retire_after),
        (b"b".as_slice(), Some(t(1610)))
    );
}

fn sealed() -> KeyProtection {
    KeyProtection::sealed(Sealer::new(MasterKey::from_bytes(&[7; 32])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_seals_a_rotated_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open_with(dir.path().join("callsign.db"), sealed()).expect("open");
    let store: Arc<dyn BulkStore> = Arc::new(store);
    a_rotated_key_is_sealed_at_rest(Arc::clone(&store)).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_seals_a_rotated_key() {
    let db = TestDatabase::create().await;
    let options = PostgresOptions {
        keys: sealed(),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect(&db.url(), &options)
        .await
        .expect("connect");
    let store: Arc<dyn BulkStore> = Arc::new(store);
    a_rotated_key_is_sealed_at_rest(Arc::clone(&store)).await;
    store.close().await;
}

async fn identities_export_and_import_losslessly(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let mut originals = Vec::new();
    for i in 0..25 {
        let custom = (i % 2 == 0).then(|| format!("user-{i}"));
        let c = store
            .create_identity(new_identity(r, custom.as_deref()), &Actor::operator())
            .await
            .expect("create");
        originals.push(c.identity.id);
    }
    store
        .revoke_tokens(&originals[3], &Actor::operator())
        .await
        .expect("revoke");
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
        ImportReport::default()
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
            .expect("import")
            .inserted,
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

async fn delete_leaves_a_tombstone_that_import_respects(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let c = store
        .create_identity(new_identity(r, Some("erin")), &Actor::operator())
        .await
        .expect("create");
    let record = c.identity;
    store
        .revoke_tokens(&record.id, &Actor::operator())
        .await
        .expect("revoke");
    let before = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    assert!(
        store
            .delete_identity(&record.id, &Actor::operator())
            .await
            .expect("delete")
    );
    let tombstones = store.list_tombstones(None, 100).await.expect("list");
    assert_eq!(tombstones.len(), 1);
    assert_eq!(tombstones[0].id, record.id);
    assert!(tombstones[0].deleted_at >= before);
    // Deleting what is gone writes no second tombstone.
    assert!(
        !store
            .delete_identity(&record.id, &Actor::operator())
            .await
            .expect("delete again")
    );
    assert_eq!(
        store.list_tombstones(None, 100).await.expect("list").len(),
        1
    );
    // An import of the deleted identity (a repeated copy) does not bring it back, whatever its
    // epoch.
    let stale = IdentityRecord {
        revocation_epoch: 7,
        ..record.clone()
    };
    let report = store
        .import_identities(vec![record.clone(), stale])
        .await
        .expect("import");
    assert_eq!(
        report,
        ImportReport {
            skipped_deleted: 2,
            ..ImportReport::default()
        }
    );
    assert_eq!(store.get_identity(&record.id).await.expect("get"), None);
    // The custom id is free: a new identity takes it, and it imports alongside.
    let again = store
        .create_identity(new_identity(r, Some("erin")), &Actor::operator())
        .await
        .expect("create again");
    assert!(again.created);
    assert_ne!(again.identity.id, record.id);
    // A create with the tombstoned id itself is refused.
    let reuse = NewIdentity {
        id: record.id,
        custom_id: None,
        created_at: OffsetDateTime::now_utc(),
    };
    assert!(
        store
            .create_identity(reuse, &Actor::operator())
            .await
            .is_err()
    );
    assert_eq!(store.get_identity(&record.id).await.expect("get"), None);
}

async fn reimport_keeps_the_higher_epoch(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let c = store
        .create_identity(new_identity(r, None), &Actor::operator())
        .await
        .expect("create");
    let id = c.identity.id;
    let revoked = IdentityRecord {
        revocation_epoch: 3,
        ..c.identity.clone()
    };
    let report = store
        .import_identities(vec![revoked.clone()])
        .await
        .expect("import");
    assert_eq!(
        report,
        ImportReport {
            epochs_raised: 1,
            ..ImportReport::default()
        }
    );
    let got = store
        .get_identity(&id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.revocation_epoch, 3);
    // A token of epoch 2 is no longer in force.
    assert!(!callsign_core::token::token_in_force(
        2,
        got.revocation_epoch
    ));
    // A lower epoch never lowers the stored one.
    let report = store
        .import_identities(vec![c.identity.clone()])
        .await
        .expect("import");
    assert_eq!(report, ImportReport::default());
    assert_eq!(
        store
            .revoke_tokens(&id, &Actor::operator())
            .await
            .expect("revoke"),
        Some(4),
        "the epoch counts on from the raised value"
    );
    // A new identity whose custom id another identity of the resource holds is left out.
    let taken = store
        .create_identity(new_identity(r, Some("frank")), &Actor::operator())
        .await
        .expect("create");
    let clash = IdentityRecord {
        id: IdentityId::new_random(r),
        ..taken.identity.clone()
    };
    let fresh = IdentityRecord {
        id: IdentityId::new_random(r),
        custom_id: None,
        ..taken.identity.clone()
    };
    let report = store
        .import_identities(vec![clash.clone(), fresh.clone()])
        .await
        .expect("import");
    assert_eq!(
        report,
        ImportReport {
            inserted: 1,
            custom_id_conflicts: 1,
            ..ImportReport::default()
        }
    );
    assert_eq!(store.get_identity(&clash.id).await.expect("get"), None);
    assert_eq!(
        store.get_identity(&fresh.id).await.expect("get"),
        Some(fresh)
    );
}

async fn imported_tombstones_delete_and_list_in_pages(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let mut alive = Vec::new();
    for i in 0..5 {
        let custom = format!("t{i}");
        let c = store
            .create_identity(new_identity(r, Some(&custom)), &Actor::operator())
            .await
            .expect("create");
        alive.push(c.identity.id);
    }
    let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    // Three of them deleted elsewhere, plus twenty never seen here.
    let mut tombstones: Vec<Tombstone> = alive[..3]
        .iter()
        .map(|id| Tombstone {
            id: *id,
            deleted_at: at,
        })
        .collect();
    tombstones.extend((0..20).map(|_| Tombstone {
        id: IdentityId::new_random(r),
        deleted_at: at,
    }));
    let report = store
        .import_tombstones(tombstones.clone())
        .await
        .expect("import");
    assert_eq!(
        report,
        TombstoneReport {
            inserted: 23,
            identities_deleted: 3,
        }
    );
    for id in &alive[..3] {
        assert_eq!(store.get_identity(id).await.expect("get"), None);
    }
    for id in &alive[3..] {
        assert!(store.get_identity(id).await.expect("get").is_some());
    }
    // Again: nothing new.
    assert_eq!(
        store
            .import_tombstones(tombstones.clone())
            .await
            .expect("import"),
        TombstoneReport::default()
    );
    // The custom id of an identity deleted that way is free again.
    assert!(
        store
            .create_identity(new_identity(r, Some("t0")), &Actor::operator())
            .await
            .expect("create")
            .created
    );
    let mut listed: Vec<Tombstone> = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_tombstones(after.as_ref(), 7)
            .await
            .expect("list");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().map(|t| t.id);
        listed.extend(page);
    }
    assert_eq!(listed.len(), 23);
    let mut expected = tombstones;
    expected.sort_by_key(|t| t.id);
    listed.sort_by_key(|t| t.id);
    assert_eq!(listed, expected);
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

async fn assignment_put_creates_then_replaces(store: Arc<dyn BulkStore>) {
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
    assert!(
        store
            .put_assignment(r, first.clone(), &Actor::operator())
            .await
            .expect("put")
    );
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
            .put_assignment(r, second.clone(), &Actor::operator())
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

async fn assignment_delete_removes_it(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let (tenant, object) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(
        !store
            .delete_assignment(r, tenant, object, &Actor::operator())
            .await
            .expect("delete unknown")
    );
    let a = assignment(tenant, object, PrincipalType::User, Some(vec![]));
    assert!(
        store
            .put_assignment(r, a.clone(), &Actor::operator())
            .await
            .expect("put")
    );
    assert!(
        store
            .delete_assignment(r, tenant, object, &Actor::operator())
            .await
            .expect("delete")
    );
    assert_eq!(
        store.get_assignment(r, tenant, object).await.expect("get"),
        None
    );
    assert!(
        !store
            .delete_assignment(r, tenant, object, &Actor::operator())
            .await
            .expect("delete again")
    );
    // Putting it again is a creation.
    assert!(
        store
            .put_assignment(r, a, &Actor::operator())
            .await
            .expect("put again")
    );
}

async fn assignments_are_per_resource(store: Arc<dyn BulkStore>) {
    let (mine, theirs) = (ResourceId::new_random(), ResourceId::new_random());
    let (tenant, object) = (Uuid::new_v4(), Uuid::new_v4());
    let a = assignment(tenant, object, PrincipalType::User, None);
    assert!(
        store
            .put_assignment(mine, a.clone(), &Actor::operator())
            .await
            .expect("put")
    );
    assert_eq!(
        store
            .get_assignment(theirs, tenant, object)
            .await
            .expect("get elsewhere"),
        None
    );
    assert!(
        !store
            .delete_assignment(theirs, tenant, object, &Actor::operator())
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
            .put_assignment(theirs, b.clone(), &Actor::operator())
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

async fn assignment_client_ids_round_trip_exactly(store: Arc<dyn BulkStore>) {
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
        assert!(
            store
                .put_assignment(r, a.clone(), &Actor::operator())
                .await
                .expect("put")
        );
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
        store
            .put_assignment(r, a.clone(), &Actor::operator())
            .await
            .expect("put");
        assert_eq!(
            store.get_assignment(r, tenant, object).await.expect("get"),
            Some(a)
        );
    }
}

async fn concurrent_first_puts_of_one_assignment_create_once(store: Arc<dyn BulkStore>) {
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
            store
                .put_assignment(r, a, &Actor::operator())
                .await
                .expect("put")
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

async fn all_assignments_lists_every_resource_in_order(store: Arc<dyn BulkStore>) {
    assert!(store.all_assignments().await.expect("list").is_empty());
    let mut expected = Vec::new();
    for _ in 0..3 {
        let r = ResourceId::new_random();
        for k in 0..4 {
            let clients = (k % 2 == 0).then(|| vec![Uuid::new_v4()]);
            let a = assignment(Uuid::new_v4(), Uuid::new_v4(), PrincipalType::User, clients);
            assert!(
                store
                    .put_assignment(r, a.clone(), &Actor::operator())
                    .await
                    .expect("put")
            );
            expected.push((r, a));
        }
    }
    let deleted = expected.pop().expect("one");
    assert!(
        store
            .delete_assignment(
                deleted.0,
                deleted.1.tenant_id,
                deleted.1.object_id,
                &Actor::operator()
            )
            .await
            .expect("delete")
    );
    expected.sort_by_key(|(r, a)| (*r, a.tenant_id, a.object_id));
    assert_eq!(store.all_assignments().await.expect("list"), expected);
}

fn named(name: &str, host: Option<&str>) -> ResourceRecord {
    ResourceRecord::generate(
        ResourceName::parse(name).expect("name"),
        host.map(|h| HostName::parse(h).expect("host")),
        OffsetDateTime::now_utc(),
    )
}

async fn resources_are_created_listed_and_deleted_with_what_they_hold(store: Arc<dyn BulkStore>) {
    let clock = callsign_core::SystemClock;
    let (default, _) = callsign_store::ensure_default_resource(store.as_ref(), &clock)
        .await
        .expect("default");
    let g0 = store.config_generation().await.expect("generation");
    let tenant = named("tenant-a", Some("A.Example.com"));
    assert_eq!(
        store
            .create_resource(tenant.clone(), &Actor::operator())
            .await
            .expect("create"),
        ResourceCreated::Created
    );
    let g1 = store.config_generation().await.expect("generation");
    assert!(g1 > g0, "a new resource moves the generation");
    let listed = store.resources().await.expect("list");
    assert_eq!(listed, vec![default.clone(), tenant.clone()]);
    assert_eq!(
        listed[1].host.as_ref().map(HostName::as_str),
        Some("a.example.com")
    );

    // A name is unique; nothing is stored for a refused create.
    assert_eq!(
        store
            .create_resource(named("tenant-a", None), &Actor::operator())
            .await
            .expect("create"),
        ResourceCreated::NameTaken
    );
    assert_eq!(store.resources().await.expect("list").len(), 2);
    assert_eq!(store.config_generation().await.expect("generation"), g1);

    let kept = store
        .create_identity(new_identity(default.id, Some("same")), &Actor::operator())
        .await
        .expect("create");
    let gone = store
        .create_identity(new_identity(tenant.id, Some("same")), &Actor::operator())
        .await
        .expect("create");
    let a = Uuid::new_v4();
    let assignment = TeamsAssignment {
        tenant_id: a,
        object_id: a,
        principal_type: PrincipalType::User,
        client_ids: None,
    };
    store
        .put_assignment(tenant.id, assignment, &Actor::operator())
        .await
        .expect("put");

    assert_eq!(
        store
            .delete_resource(default.id, &Actor::operator())
            .await
            .expect("delete"),
        ResourceDeleted::IsDefault
    );
    assert_eq!(
        store
            .delete_resource(tenant.id, &Actor::operator())
            .await
            .expect("delete"),
        ResourceDeleted::Deleted { identities: 1 }
    );
    assert_eq!(
        store
            .delete_resource(tenant.id, &Actor::operator())
            .await
            .expect("delete"),
        ResourceDeleted::NotFound
    );
    assert!(store.config_generation().await.expect("generation") > g1);
    assert_eq!(
        store.resources().await.expect("list"),
        vec![default.clone()]
    );
    assert_eq!(
        store.get_identity(&gone.identity.id).await.expect("get"),
        None
    );
    assert!(
        store
            .get_identity(&kept.identity.id)
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(
        store.get_assignment(tenant.id, a, a).await.expect("get"),
        None
    );
    let tombstones = store.list_tombstones(None, 10).await.expect("tombstones");
    assert_eq!(
        tombstones.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![gone.identity.id],
        "the deleted resource's identities are never created again"
    );
}

async fn a_host_holds_a_bounded_number_of_resources(store: Arc<dyn BulkStore>) {
    let clock = callsign_core::SystemClock;
    callsign_store::ensure_default_resource(store.as_ref(), &clock)
        .await
        .expect("default");
    // Concurrent creates on the server's own address: the default resource and at most
    // three more, whoever races.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .create_resource(named(&format!("local-{i}"), None), &Actor::operator())
                .await
                .expect("create")
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.expect("task") {
            ResourceCreated::Created => created += 1,
            other => assert_eq!(other, ResourceCreated::HostFull),
        }
    }
    assert_eq!(created, MAX_RESOURCES_PER_HOST - 1);
    // Another host has room of its own.
    for i in 0..MAX_RESOURCES_PER_HOST {
        assert_eq!(
            store
                .create_resource(
                    named(&format!("far-{i}"), Some("far.example")),
                    &Actor::operator()
                )
                .await
                .expect("create"),
            ResourceCreated::Created
        );
    }
    assert_eq!(
        store
            .create_resource(named("far-x", Some("FAR.example.")), &Actor::operator())
            .await
            .expect("create"),
        ResourceCreated::HostFull
    );
    assert_eq!(
        store.resources().await.expect("list").len(),
        2 * MAX_RESOURCES_PER_HOST
    );
}

async fn replacing_a_key_keeps_the_others_and_may_revoke_every_token(store: Arc<dyn BulkStore>) {
    let tenant = named("tenant-k", None);
    store
        .create_resource(tenant.clone(), &Actor::operator())
        .await
        .expect("create");
    let other = named("tenant-other", None);
    store
        .create_resource(other.clone(), &Actor::operator())
        .await
        .expect("create");
    let mine = store
        .create_identity(new_identity(tenant.id, None), &Actor::operator())
        .await
        .expect("create");
    let theirs = store
        .create_identity(new_identity(other.id, None), &Actor::operator())
        .await
        .expect("create");
    let g0 = store.config_generation().await.expect("generation");

    let fresh = AccessKey::generate();
    assert_eq!(
        store
            .replace_access_key(
                tenant.id,
                KeySlot::Primary,
                fresh.clone(),
                false,
                &Actor::operator()
            )
            .await
            .expect("replace"),
        Some(0)
    );
    let now = find(&store, tenant.id).await;
    assert_eq!(now.primary_key, fresh);
    assert_eq!(
        now.secondary_key, tenant.secondary_key,
        "secondary untouched"
    );
    assert_eq!(now.verify_key, None);
    assert!(store.config_generation().await.expect("generation") > g0);
    assert_eq!(epoch(&store, &mine.identity.id).await, 0, "no revoke asked");

    let verify = AccessKey::generate();
    store
        .replace_access_key(
            tenant.id,
            KeySlot::VerifyOnly,
            verify.clone(),
            false,
            &Actor::operator(),
        )
        .await
        .expect("verify-only key");
    assert_eq!(find(&store, tenant.id).await.verify_key, Some(verify));

    assert_eq!(
        store
            .replace_access_key(
                tenant.id,
                KeySlot::Secondary,
                AccessKey::generate(),
                true,
                &Actor::operator()
            )
            .await
            .expect("replace"),
        Some(1)
    );
    assert_eq!(
        epoch(&store, &mine.identity.id).await,
        1,
        "every token revoked"
    );
    assert_eq!(
        epoch(&store, &theirs.identity.id).await,
        0,
        "other resources untouched"
    );
    assert_eq!(find(&store, tenant.id).await.primary_key, fresh);

    assert_eq!(
        store
            .replace_access_key(
                ResourceId::new_random(),
                KeySlot::Primary,
                AccessKey::generate(),
                true,
                &Actor::operator()
            )
            .await
            .expect("replace"),
        None
    );
}

/// Bulk revokes (a key replaced with `--revoke-tokens`) and a resource's deletion while
/// identities are being created: every event is numbered, the feed stays contiguous (positions
/// 1..=head, none past it) and single revokes keep working afterwards.
async fn bulk_feed_events_stay_contiguous_under_concurrent_creates(store: Arc<dyn BulkStore>) {
    use callsign_store::FeedRead;
    use std::sync::atomic::{AtomicBool, Ordering};

    let tenant = named("tenant-bulk", None);
    store
        .create_resource(tenant.clone(), &Actor::operator())
        .await
        .expect("create");
    let mut seed = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        seed.spawn(async move {
            for _ in 0..250 {
                store
                    .create_identity(new_identity(tenant.id, None), &Actor::operator())
                    .await
                    .expect("create");
            }
        });
    }
    seed.join_all().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        creators.spawn(async move {
            let mut last = None;
            while !stop.load(Ordering::SeqCst) {
                // Refused once the resource is gone: nothing else may fail.
                match store
                    .create_identity(new_identity(tenant.id, None), &Actor::operator())
                    .await
                {
                    Ok(created) => last = Some(created.identity.id),
                    Err(e) => {
                        assert!(stop.load(Ordering::SeqCst), "{e}");
                        break;
                    }
                }
            }
            last
        });
    }
    for _ in 0..3 {
        let revoked = store
            .replace_access_key(
                tenant.id,
                KeySlot::Secondary,
                AccessKey::generate(),
                true,
                &Actor::operator(),
            )
            .await
            .expect("replace");
        assert!(revoked.is_some_and(|n| n >= 2000), "{revoked:?}");
    }
    // A single revoke still takes the next position.
    let some = IdentityId::new_random(tenant.id);
    let created = store
        .create_identity(
            NewIdentity {
                id: some,
                custom_id: None,
                created_at: OffsetDateTime::now_utc(),
            },
            &Actor::operator(),
        )
        .await
        .expect("create");
    assert!(
        store
            .revoke_tokens(&created.identity.id, &Actor::operator())
            .await
            .expect("a single revoke after the bulk ones")
            .is_some()
    );
    let check = |label: &'static str| {
        let store = Arc::clone(&store);
        async move {
            let head = store.feed_position(tenant.id).await.expect("position");
            let mut seqs = Vec::new();
            let mut after = 0;
            loop {
                match store
                    .feed_after(tenant.id, after, 1000)
                    .await
                    .expect("read")
                {
                    FeedRead::Events(events) if events.is_empty() => break,
                    FeedRead::Events(events) => {
                        after = events.last().expect("one").seq;
                        seqs.extend(events.iter().map(|e| e.seq));
                    }
                    FeedRead::Expired => panic!("{label}: expired"),
                }
            }
            let expected: Vec<u64> = (1..=head).collect();
            assert_eq!(seqs.len(), expected.len(), "{label}: events vs head {head}");
            assert!(seqs == expected, "{label}: positions 1..={head} in order");
            head
        }
    };
    let before = check("after the key replacements").await;
    let deleted = store
        .delete_resource(tenant.id, &Actor::operator())
        .await
        .expect("delete");
    stop.store(true, Ordering::SeqCst);
    creators.join_all().await;
    let ResourceDeleted::Deleted { identities } = deleted else {
        panic!("{deleted:?}");
    };
    let after = check("after the resource's deletion").await;
    assert_eq!(after - before, identities, "one event per deleted identity");
}

async fn find(store: &Arc<dyn BulkStore>, id: ResourceId) -> ResourceRecord {
    store
        .resources()
        .await
        .expect("list")
        .into_iter()
        .find(|r| r.id == id)
        .expect("present")
}

async fn epoch(store: &Arc<dyn BulkStore>, id: &IdentityId) -> u64 {
    store
        .get_identity(id)
        .await
        .expect("get")
        .expect("present")
        .revocation_epoch
}

macro_rules! conformance_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            conformance_suite!(@tests $make;
                create_then_get_returns_the_identity,
                custom_id_is_idempotent_per_resource,
                concurrent_creates_with_one_custom_id_yield_one_identity,
                concurrent_creates_are_each_stored_and_recorded_once,
                a_custom_id_racing_with_other_creates_is_created_once,
                revoke_increments_the_epoch,
                concurrent_revokes_are_all_counted,
                concurrent_revokes_and_deletes_number_the_feed_without_gaps,
                delete_removes_everything,
                last_token_time_is_visible,
                listing_pages_through_a_resource_in_id_order_without_others,
                listing_filters_by_custom_id_prefix_and_token_time,
                a_sparse_filter_reads_a_bounded_run_of_rows_per_page,
                listing_under_concurrent_creates_and_deletes_skips_and_repeats_nothing,
                default_resource_is_bootstrapped_once,
                resources_are_created_listed_and_deleted_with_what_they_hold,
                a_host_holds_a_bounded_number_of_resources,
                replacing_a_key_keeps_the_others_and_may_revoke_every_token,
                bulk_feed_events_stay_contiguous_under_concurrent_creates,
                signing_keys_come_back_newest_first,
                signing_key_bootstrap_agrees_on_one_key_per_algorithm,
                rotation_adds_one_pending_key_and_refuses_another_while_it_is_pending,
                concurrent_rotations_add_exactly_one_key,
                retirement_removes_only_keys_past_their_bound_with_an_active_successor,
                identities_export_and_import_losslessly,
                delete_leaves_a_tombstone_that_import_respects,
                reimport_keeps_the_higher_epoch,
                imported_tombstones_delete_and_list_in_pages,
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
                drop(guard);
            }
        )*
    };
}

/// What a test leaves behind: a temp dir, or a database; removed when dropped.
enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database(#[allow(dead_code)] TestDatabase),
}

async fn make_sqlite() -> (Arc<dyn BulkStore>, Guard) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("callsign.db")).expect("open");
    (Arc::new(store), Guard::Dir(dir))
}

/// A store on a fresh, empty database on the test server.
async fn make_postgres() -> (Arc<dyn BulkStore>, Guard) {
    let (store, db) = postgres_store().await;
    (Arc::new(store), Guard::Database(db))
}

/// A PostgreSQL store on a fresh, empty database, and that database (for checks in SQL).
async fn postgres_store() -> (PostgresStore, TestDatabase) {
    let db = TestDatabase::create().await;
    let store = PostgresStore::connect(&db.url(), &PostgresOptions::default())
        .await
        .expect("connect");
    (store, db)
}

conformance_suite!(sqlite, make_sqlite);
conformance_suite!(postgres, make_postgres);

#[tokio::test]
async fn postgres_migrations_are_applied_once_by_nodes_starting_together() {
    let db = TestDatabase::create().await;
    let url = db.url();
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
    let client = connect_postgres(&url).await;
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
}

/// Sessions of the client's database waiting for a lock now.
async fn lock_waiters(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

#[tokio::test]
async fn postgres_revokes_whose_callers_give_up_still_wait_their_turn() {
    let (store, db) = postgres_store().await;
    let store = Arc::new(store);
    let c = store
        .create_identity(
            new_identity(ResourceId::new_random(), None),
            &Actor::operator(),
        )
        .await
        .expect("create");
    let id = c.identity.id;
    store
        .revoke_tokens(&id, &Actor::operator())
        .await
        .expect("first revoke");
    // Another session holds the resource's feed position.
    let mut holder = connect_postgres(&db.url()).await;
    let tx = holder.transaction().await.expect("begin");
    tx.execute(
        "SELECT seq FROM callsign_revocation_heads WHERE resource_id = $1 FOR UPDATE",
        &[&id.resource().to_string()],
    )
    .await
    .expect("lock the feed row");
    // Twelve revokes whose callers hang up after 200 ms, in two waves.
    for _ in 0..2 {
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let store = Arc::clone(&store);
            callers.spawn(async move {
                tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    store.revoke_tokens(&id, &Actor::operator()),
                )
                .await
                .is_err()
            });
        }
        assert!(callers.join_all().await.into_iter().all(|gave_up| gave_up));
    }
    let observer = connect_postgres(&db.url()).await;
    // The admitted ones reach the row lock; the given-up ones must not be replaced by more.
    let mut waiting = 0;
    for _ in 0..50 {
        waiting = lock_waiters(&observer).await;
        if waiting >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let waiting_later = lock_waiters(&observer).await;
    assert!(
        waiting <= 4 && waiting_later <= 4,
        "{waiting} then {waiting_later} waiting on the lock"
    );
    tx.rollback().await.expect("release");
    // The four admitted in the first wave run to their commit although their callers gave up
    // (their places were held meanwhile, so the rest, all given up while waiting, never ran).
    let mut settled = 0;
    for _ in 0..100 {
        settled = store
            .get_identity(&id)
            .await
            .expect("get")
            .expect("exists")
            .revocation_epoch;
        if settled >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(settled, 5, "the first revoke and the four admitted ones");
    let epoch = store
        .revoke_tokens(&id, &Actor::operator())
        .await
        .expect("revoke after the release")
        .expect("exists");
    assert_eq!(epoch, 6);
    assert_eq!(
        callsign_store::RevocationFeed::feed_position(store.as_ref(), id.resource())
            .await
            .expect("position"),
        epoch
    );
}

/// The heap page (block number) of each identity's current row version.
async fn identity_blocks(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT id, (ctid::text::point)[0]::bigint::text FROM callsign_identities ORDER BY id",
            &[],
        )
        .await
        .expect("blocks")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn postgres_token_times_are_written_on_the_identity_s_own_page() {
    let (store, db) = postgres_store().await;
    let client = connect_postgres(&db.url()).await;
    let options: Option<Vec<String>> = client
        .query_one(
            "SELECT reloptions FROM pg_class WHERE relname = 'callsign_identities'",
            &[],
        )
        .await
        .expect("reloptions")
        .get(0);
    assert_eq!(options, Some(vec!["fillfactor=80".to_owned()]));
    // Enough identities to fill several pages, created one after another.
    let resource = ResourceId::new_random();
    let mut ids = Vec::new();
    for _ in 0..400 {
        let c = store
            .create_identity(new_identity(resource, None), &Actor::operator())
            .await
            .expect("create");
        ids.push(c.identity.id);
    }
    let before = identity_blocks(&client).await;
    assert!(
        before
            .iter()
            .map(|(_, b)| b)
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 4,
        "the identities span several pages"
    );
    // Tokens for every eighth identity (as a large directory sees them: a few rows per page).
    let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    for id in ids.iter().step_by(8) {
        store.record_token_issued(id, at);
    }
    // Closing flushes the pending token times.
    store.close().await;
    let written: i64 = client
        .query_one(
            "SELECT count(*) FROM callsign_identities WHERE last_token_issued_at_ms = 1700000000000",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(written, 50);
    // Every new row version stayed on its page: a heap-only update, no index entry written.
    let after = identity_blocks(&client).await;
    assert_eq!(after.len(), before.len());
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(moved, 0, "rows moved to another page");
}

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let store = SqliteStore::open(&path).expect("open");
    let c = store
        .create_identity(
            new_identity(ResourceId::new_random(), Some("dave")),
            &Actor::operator(),
        )
        .await
        .expect("create");
    store
        .revoke_tokens(&c.identity.id, &Actor::operator())
        .await
        .expect("revoke");
    let resource = ResourceId::new_random();
    let kept = assignment(
        Uuid::new_v4(),
        Uuid::new_v4(),
        PrincipalType::ResourceAccount,
        Some(vec![Uuid::new_v4(), Uuid::new_v4()]),
    );
    let removed = assignment(Uuid::new_v4(), Uuid::new_v4(), PrincipalType::User, None);
    store
        .put_assignment(resource, kept.clone(), &Actor::operator())
        .await
        .expect("put");
    store
        .put_assignment(resource, removed.clone(), &Actor::operator())
        .await
        .expect("put");
    assert!(
        store
            .delete_assignment(
                resource,
                removed.tenant_id,
                removed.object_id,
                &Actor::operator()
            )
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
    assert_eq!(got.custom_id.as_ref().map(CustomId::as_str), Some("dave"));
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
        store
            .put_assignment(r, a.clone(), &Actor::operator())
            .await
            .expect("put");
        store.close().await;
        drop(store);
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.execute(&format!("UPDATE teams_assignments SET {corruption}"), [])
            .expect("corrupt");
        drop(conn);
        let store = SqliteStore::open(&path).expect("reopen");
        let err = store.all_assignments().await.expect_err(corruption);
        assert!(
            matches!(err, StoreError::Corrupt { .. }),
            "{corruption}: {err}"
        );
        if !corruption.starts_with("object_id") {
            let err = store
                .get_assignment(r, a.tenant_id, a.object_id)
                .await
                .expect_err(corruption);
            assert!(
                matches!(err, StoreError::Corrupt { .. }),
                "{corruption}: {err}"
            );
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
    let (store, db) = postgres_store().await;
    let client = db.connect().await;
    let r = ResourceId::new_random();
    let a = assignment(Uuid::new_v4(), Uuid::new_v4(), PrincipalType::User, None);
    for corruption in CORRUPTIONS {
        store
            .put_assignment(r, a.clone(), &Actor::operator())
            .await
            .expect("put");
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
        assert!(
            matches!(err, StoreError::Corrupt { .. }),
            "{corruption}: {err}"
        );
        if !corruption.starts_with("object_id") {
            let err = store
                .get_assignment(r, a.tenant_id, a.object_id)
                .await
                .expect_err(corruption);
            assert!(
                matches!(err, StoreError::Corrupt { .. }),
                "{corruption}: {err}"
            );
        }
        client
            .batch_execute("DELETE FROM callsign_teams_assignments")
            .await
            .expect("clean");
    }
    drop(client);
    store.close().await;
}

/// A hand-edited custom id that breaks the rules (a control character) reads as corrupt data,
/// its cause in the error's source chain.
fn assert_corrupt_custom_id(err: StoreError) {
    assert!(err.is_corrupt(), "{err}");
    let cause = std::error::Error::source(&err).expect("a cause");
    assert!(cause.to_string().contains("control"), "{cause}");
}

#[tokio::test]
async fn sqlite_reports_a_corrupt_custom_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let store = SqliteStore::open(&path).expect("open");
    let created = store
        .create_identity(
            new_identity(ResourceId::new_random(), Some("erin")),
            &Actor::operator(),
        )
        .await
        .expect("create")
        .identity;
    store.close().await;
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.execute(
        "UPDATE identities SET custom_id = 'er' || char(10) || 'in'",
        [],
    )
    .expect("corrupt");
    drop(conn);
    let store = SqliteStore::open(&path).expect("reopen");
    assert_corrupt_custom_id(store.get_identity(&created.id).await.expect_err("corrupt"));
    assert_corrupt_custom_id(store.list_identities(None, 10).await.expect_err("corrupt"));
    store.close().await;
}

#[tokio::test]
async fn postgres_reports_a_corrupt_custom_id() {
    let (store, db) = postgres_store().await;
    let created = store
        .create_identity(
            new_identity(ResourceId::new_random(), Some("erin")),
            &Actor::operator(),
        )
        .await
        .expect("create")
        .identity;
    let client = db.connect().await;
    client
        .batch_execute("UPDATE callsign_identities SET custom_id = 'er' || chr(10) || 'in'")
        .await
        .expect("corrupt");
    assert_corrupt_custom_id(store.get_identity(&created.id).await.expect_err("corrupt"));
    assert_corrupt_custom_id(store.list_identities(None, 10).await.expect_err("corrupt"));
    drop(client);
    store.close().await;
}

#[tokio::test]
async fn an_embedded_deployment_moves_to_postgres_losing_nothing() {
    let (sqlite, dir) = make_sqlite().await;
    let (pg, db) = make_postgres().await;
    let (resource, ids) = started_deployment(sqlite.as_ref(), 120).await;
    sqlite
        .revoke_tokens(&ids[7], &Actor::operator())
        .await
        .expect("revoke");
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
                .put_assignment(resource.id, a.clone(), &Actor::operator())
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
        pg.put_assignment(resource.id, newer.clone(), &Actor::operator())
            .await
            .expect("put")
    );
    let report = callsign_store::copy_store(sqlite.as_ref(), pg.as_ref(), &batch_of(50))
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
    let again = callsign_store::copy_store(sqlite.as_ref(), pg.as_ref(), &batch_of(50))
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
    let err = callsign_store::copy_store(sqlite.as_ref(), other.as_ref(), &batch_of(50))
        .await
        .expect_err("mixing resources is refused");
    assert!(matches!(
        err,
        callsign_store::CopyError::DifferentResource(_)
    ));
    for s in [sqlite, pg, other] {
        s.close().await;
    }
    drop((dir, db, other_dir));
}

fn batch_of(batch: usize) -> CopyOptions {
    CopyOptions {
        batch,
        force: false,
    }
}

const FORCE: CopyOptions = CopyOptions {
    batch: 7,
    force: true,
};

/// A started deployment: its resource, a signing key and `n` identities (every third with a
/// custom id `c<i>`), in creation order.
async fn started_deployment(store: &dyn BulkStore, n: usize) -> (ResourceRecord, Vec<IdentityId>) {
    let resource = ResourceRecord {
        id: ResourceId::new_random(),
        name: ResourceName::default_name(),
        host: None,
        verify_key: None,
        primary_key: AccessKey::generate(),
        secondary_key: AccessKey::generate(),
        created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
    };
    store
        .bootstrap_default_resource(resource.clone())
        .await
        .expect("bootstrap");
    store
        .add_signing_key(StoredSigningKey {
            kid: "k1".into(),
            alg: Algorithm::Es256,
            pkcs8: vec![1, 2, 3],
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
            activates_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
            retire_after: None,
        })
        .await
        .expect("key");
    let mut ids = Vec::new();
    for i in 0..n {
        let custom = (i % 3 == 0).then(|| format!("c{i}"));
        let c = store
            .create_identity(
                new_identity(resource.id, custom.as_deref()),
                &Actor::operator(),
            )
            .await
            .expect("create");
        ids.push(c.identity.id);
    }
    (resource, ids)
}

/// Every tombstone id of a store, sorted.
async fn tombstone_ids(store: &dyn BulkStore) -> Vec<IdentityId> {
    let mut ids: Vec<IdentityId> = store
        .list_tombstones(None, usize::MAX)
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Delete on the source after a first copy, copy again (and again): the identity is deleted on
/// the target and stays deleted.
async fn a_repeated_copy_never_brings_back_a_deleted_identity(
    from: &dyn BulkStore,
    to: &dyn BulkStore,
) {
    let (resource, ids) = started_deployment(from, 30).await;
    let first = callsign_store::copy_store(from, to, &batch_of(7))
        .await
        .expect("copy");
    assert_eq!(first.identities_inserted, 30);
    assert_eq!(first.tombstones_read, 0);
    // After the cut-over the old store is still written to by mistake (or copied from before
    // the last writes): a delete there, and the freed custom id taken by a new identity.
    assert!(
        from.delete_identity(&ids[0], &Actor::operator())
            .await
            .expect("delete")
    );
    assert!(
        from.delete_identity(&ids[1], &Actor::operator())
            .await
            .expect("delete")
    );
    let reborn = from
        .create_identity(new_identity(resource.id, Some("c0")), &Actor::operator())
        .await
        .expect("create")
        .identity;
    let second = callsign_store::copy_store(from, to, &batch_of(7))
        .await
        .expect("copy again");
    assert_eq!(second.tombstones_read, 2);
    assert_eq!(second.tombstones_inserted, 2);
    assert_eq!(second.identities_deleted, 2);
    assert_eq!(second.identities_read, 29);
    assert_eq!(second.identities_inserted, 1);
    assert_eq!(second.created_on_target + second.deleted_on_target, 0);
    for id in &ids[..2] {
        assert_eq!(to.get_identity(id).await.expect("get"), None, "resurrected");
    }
    assert_eq!(
        to.get_identity(&reborn.id).await.expect("get"),
        Some(reborn.clone())
    );
    let third = callsign_store::copy_store(from, to, &batch_of(7))
        .await
        .expect("copy a third time");
    assert_eq!(
        (
            third.tombstones_inserted,
            third.identities_deleted,
            third.identities_inserted,
            third.epochs_raised,
            third.signing_keys,
        ),
        (0, 0, 0, 0, 0)
    );
    for id in &ids[..2] {
        assert_eq!(to.get_identity(id).await.expect("get"), None, "resurrected");
    }
    assert_eq!(tombstone_ids(to).await, tombstone_ids(from).await);
}

/// Revoke on the source after a first copy: the next copy raises the target's epoch, so tokens
/// issued before the revoke are refused on the target too; a higher epoch on the target stays.
async fn every_resource_and_its_current_keys_are_copied(from: &dyn BulkStore, to: &dyn BulkStore) {
    let (default, _) = started_deployment(from, 2).await;
    let tenant = named("copied-tenant", Some("copied.example"));
    from.create_resource(tenant.clone(), &Actor::operator())
        .await
        .expect("create");
    let verify = AccessKey::generate();
    from.replace_access_key(
        tenant.id,
        KeySlot::VerifyOnly,
        verify,
        false,
        &Actor::operator(),
    )
    .await
    .expect("verify-only key");
    let theirs = from
        .create_identity(new_identity(tenant.id, Some("t")), &Actor::operator())
        .await
        .expect("create")
        .identity;
    let report = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy");
    assert_eq!(report.resources, 1);
    assert_eq!(
        to.resources().await.expect("list"),
        from.resources().await.expect("list")
    );
    assert!(to.get_identity(&theirs.id).await.expect("get").is_some());

    // A key regenerated on the source since replaces the target's on the next copy.
    from.replace_access_key(
        default.id,
        KeySlot::Secondary,
        AccessKey::generate(),
        false,
        &Actor::operator(),
    )
    .await
    .expect("regenerate");
    let again = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy again");
    assert_eq!(again.resources, 1);
    assert_eq!(
        to.resources().await.expect("list"),
        from.resources().await.expect("list")
    );
    let third = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy a third time");
    assert_eq!(third.resources, 0);

    // A resource deleted on the source (a tenant whose keys leaked, say) is deleted on the
    // target with its identities, and a later copy never brings it back.
    from.delete_resource(tenant.id, &Actor::operator())
        .await
        .expect("delete");
    let fourth = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy after a delete");
    assert_eq!(fourth.resources, 1);
    assert!(
        to.resources()
            .await
            .expect("list")
            .iter()
            .all(|r| r.id != tenant.id)
    );
    assert_eq!(to.get_identity(&theirs.id).await.expect("get"), None);
    assert_eq!(
        to.deleted_resources().await.expect("tombstones"),
        vec![tenant.id]
    );
    callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy again");
    assert!(
        to.resources()
            .await
            .expect("list")
            .iter()
            .all(|r| r.id != tenant.id)
    );
}

async fn a_repeated_copy_carries_a_revoke(from: &dyn BulkStore, to: &dyn BulkStore) {
    let (_, ids) = started_deployment(from, 10).await;
    callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy");
    let token_epoch = to
        .get_identity(&ids[5])
        .await
        .expect("get")
        .expect("copied")
        .revocation_epoch;
    assert_eq!(
        from.revoke_tokens(&ids[5], &Actor::operator())
            .await
            .expect("revoke"),
        Some(1)
    );
    // Revoked twice on the target since the cut-over: the target is ahead and stays so.
    to.revoke_tokens(&ids[6], &Actor::operator())
        .await
        .expect("revoke");
    to.revoke_tokens(&ids[6], &Actor::operator())
        .await
        .expect("revoke");
    from.revoke_tokens(&ids[6], &Actor::operator())
        .await
        .expect("revoke");
    let again = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy again");
    assert_eq!(again.epochs_raised, 1);
    assert_eq!(again.identities_inserted, 0);
    let on_target = to
        .get_identity(&ids[5])
        .await
        .expect("get")
        .expect("present");
    assert_eq!(on_target.revocation_epoch, 1);
    assert!(!callsign_core::token::token_in_force(
        token_epoch,
        on_target.revocation_epoch
    ));
    let ahead = to
        .get_identity(&ids[6])
        .await
        .expect("get")
        .expect("present");
    assert_eq!(ahead.revocation_epoch, 2);
    let third = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy a third time");
    assert_eq!(third.epochs_raised, 0);
}

/// Identities created and deleted on the target since the last copy: reported, nothing written;
/// with `force` the copy goes ahead and the target's changes are kept.
async fn a_diverged_target_is_refused_unless_forced(from: &dyn BulkStore, to: &dyn BulkStore) {
    let (resource, ids) = started_deployment(from, 12).await;
    callsign_store::copy_store(from, to, &batch_of(5))
        .await
        .expect("copy");
    // On the target since: one identity created (holding a custom id the source will use
    // too), one deleted.
    let created = to
        .create_identity(
            new_identity(resource.id, Some("shared")),
            &Actor::operator(),
        )
        .await
        .expect("create")
        .identity;
    assert!(
        to.delete_identity(&ids[2], &Actor::operator())
            .await
            .expect("delete")
    );
    // On the source since: a delete, a create, a create clashing on the custom id, a revoke.
    assert!(
        from.delete_identity(&ids[3], &Actor::operator())
            .await
            .expect("delete")
    );
    let newer = from
        .create_identity(new_identity(resource.id, None), &Actor::operator())
        .await
        .expect("create")
        .identity;
    let clashing = from
        .create_identity(
            new_identity(resource.id, Some("shared")),
            &Actor::operator(),
        )
        .await
        .expect("create")
        .identity;
    from.revoke_tokens(&ids[4], &Actor::operator())
        .await
        .expect("revoke");

    let err = callsign_store::copy_store(from, to, &batch_of(5))
        .await
        .expect_err("a diverged target is refused");
    let CopyError::Diverged {
        created_on_target,
        deleted_on_target,
        examples,
    } = &err
    else {
        panic!("expected a divergence, got {err}");
    };
    assert_eq!((*created_on_target, *deleted_on_target), (1, 1));
    assert_eq!(
        examples,
        &[
            DivergedId::CreatedOnTarget(created.id),
            DivergedId::DeletedOnTarget(ids[2]),
        ]
    );
    let message = err.to_string();
    assert!(message.contains(&created.id.to_string()), "{message}");
    assert!(message.contains("nothing was copied"), "{message}");
    // Nothing was written.
    assert!(to.get_identity(&ids[3]).await.expect("get").is_some());
    assert_eq!(to.get_identity(&newer.id).await.expect("get"), None);
    assert_eq!(
        to.get_identity(&ids[4])
            .await
            .expect("get")
            .expect("present")
            .revocation_epoch,
        0
    );
    assert_eq!(tombstone_ids(to).await, vec![ids[2]]);

    let forced = callsign_store::copy_store(from, to, &FORCE)
        .await
        .expect("forced copy");
    assert_eq!(forced.created_on_target, 1);
    assert_eq!(forced.deleted_on_target, 1);
    assert_eq!(forced.identities_deleted, 1);
    assert_eq!(forced.identities_inserted, 1);
    assert_eq!(forced.epochs_raised, 1);
    assert_eq!(forced.skipped_deleted, 1);
    assert_eq!(forced.custom_id_conflicts, 1);
    // The target's changes are kept: its identity stays, its delete stands.
    assert_eq!(
        to.get_identity(&created.id).await.expect("get"),
        Some(created)
    );
    assert_eq!(to.get_identity(&ids[2]).await.expect("get"), None);
    assert_eq!(to.get_identity(&clashing.id).await.expect("get"), None);
    // The source's are applied.
    assert_eq!(to.get_identity(&ids[3]).await.expect("get"), None);
    assert_eq!(to.get_identity(&newer.id).await.expect("get"), Some(newer));
    assert_eq!(
        to.get_identity(&ids[4])
            .await
            .expect("get")
            .expect("present")
            .revocation_epoch,
        1
    );
    // The divergence remains (it is the target's history), so an unforced copy is still
    // refused.
    assert!(matches!(
        callsign_store::copy_store(from, to, &batch_of(5)).await,
        Err(CopyError::Diverged { .. })
    ));
}

macro_rules! copy_pairs {
    ($($name:ident: $make_from:ident -> $make_to:ident),* $(,)?) => {
        mod copies {
            use super::*;
            $(
                mod $name {
                    use super::*;
                    copy_pairs!(@tests $make_from, $make_to;
                        a_repeated_copy_never_brings_back_a_deleted_identity,
                        a_repeated_copy_carries_a_revoke,
                        a_diverged_target_is_refused_unless_forced,
                        every_resource_and_its_current_keys_are_copied
                    );
                }
            )*
        }
    };
    (@tests $make_from:ident, $make_to:ident; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let (from, from_guard) = $make_from().await;
                let (to, to_guard) = $make_to().await;
                super::super::$test(from.as_ref(), to.as_ref()).await;
                from.close().await;
                to.close().await;
                drop((from_guard, to_guard));
            }
        )*
    };
}

copy_pairs!(
    sqlite_to_postgres: make_sqlite -> make_postgres,
    postgres_to_sqlite: make_postgres -> make_sqlite,
    sqlite_to_sqlite: make_sqlite -> make_sqlite,
);
#[path = "store/access.rs"]
mod access;
#[path = "store/audit.rs"]
mod audit;
#[path = "store/feed.rs"]
mod feed;

/// The SQLite store answers the issue path's epoch lookups from memory: every change made
/// through it shows at once (revoke, a key replaced with revoke-all, delete), and a change made
/// by another process on the same file within 250 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lookups_see_every_change_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let store = SqliteStore::open(&path).expect("open");
    let op = Actor::operator();
    let (resource, ids) = started_deployment(&store, 1).await;
    let id = ids[0];
    async fn epoch_of(store: &SqliteStore, id: &IdentityId) -> Option<u64> {
        let epoch = store.token_epoch(id).await.expect("token epoch");
        let stored = store.get_identity(id).await.expect("get");
        assert_eq!(
            epoch,
            stored.map(|r| r.revocation_epoch),
            "memory and database differ"
        );
        epoch
    }
    let epoch = |store| epoch_of(store, &id);
    for _ in 0..3 {
        assert_eq!(epoch(&store).await, Some(0));
    }
    assert_eq!(
        store.revoke_tokens(&id, &op).await.expect("revoke"),
        Some(1)
    );
    assert_eq!(epoch(&store).await, Some(1));
    store
        .replace_access_key(
            resource.id,
            KeySlot::Primary,
            AccessKey::generate(),
            true,
            &op,
        )
        .await
        .expect("replace with revoke");
    assert_eq!(epoch(&store).await, Some(2));

    // Another process (here another store on the same file) revokes: seen within 250 ms (the
    // database at once).
    let other = SqliteStore::open(&path).expect("open again");
    other
        .revoke_tokens(&id, &op)
        .await
        .expect("revoke elsewhere");
    let stored = store
        .get_identity(&id)
        .await
        .expect("get")
        .map(|r| r.revocation_epoch);
    assert_eq!(stored, Some(3));
    let started = std::time::Instant::now();
    while store.token_epoch(&id).await.expect("token epoch") != Some(3) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "another process's revoke not seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    other.close().await;

    assert!(store.delete_identity(&id, &op).await.expect("delete"));
    assert_eq!(epoch(&store).await, None);
    store.close().await;
}

/// Lookups racing revokes: once a revoke is acknowledged, no lookup returns an older epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_lookups_racing_revokes_never_go_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteStore::open(dir.path().join("callsign.db")).expect("open"));
    let op = Actor::operator();
    let id = store
        .create_identity(new_identity(ResourceId::new_random(), None), &op)
        .await
        .expect("create")
        .identity
        .id;
    let acknowledged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, acknowledged, stop) = (store.clone(), acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let floor = acknowledged.load(std::sync::atomic::Ordering::Acquire);
                    let got = store
                        .token_epoch(&id)
                        .await
                        .expect("epoch")
                        .expect("present");
                    assert!(
                        got >= floor,
                        "epoch {got} after revoke {floor} was acknowledged"
                    );
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    for _ in 0..200 {
        let now = store
            .revoke_tokens(&id, &op)
            .await
            .expect("revoke")
            .expect("exists");
        acknowledged.store(now, std::sync::atomic::Ordering::Release);
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for r in readers {
        assert!(r.await.expect("reader") > 0);
    }
    store.close().await;
}
