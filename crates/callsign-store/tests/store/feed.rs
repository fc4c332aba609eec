//! The revocation feed, on both backends: one event per identity changed, written in the
//! change's transaction, in commit order, pruned with a trace.

use std::time::Duration;

use callsign_store::{FeedRead, Revocation, RevocationKind};

use super::*;

async fn events(store: &dyn BulkStore, r: ResourceId, after: u64) -> Vec<(u64, Revocation)> {
    match store.feed_after(r, after, 1000).await.expect("feed") {
        FeedRead::Events(e) => e.into_iter().map(|e| (e.seq, e.revocation)).collect(),
        FeedRead::Expired => panic!("expired at {after}"),
    }
}

fn rev(id: IdentityId, kind: RevocationKind, epoch: u64) -> Revocation {
    Revocation { id, kind, epoch }
}

async fn make(store: &dyn BulkStore, r: ResourceId) -> IdentityId {
    store
        .create_identity(new_identity(r, None), &Actor::node())
        .await
        .expect("create")
        .identity
        .id
}

async fn revokes_and_deletes_write_one_event_each_in_order(store: Arc<dyn BulkStore>) {
    let (r, other) = (ResourceId::new_random(), ResourceId::new_random());
    assert_eq!(store.feed_position(r).await.expect("position"), 0);
    let (a, b, c) = (
        make(store.as_ref(), r).await,
        make(store.as_ref(), r).await,
        make(store.as_ref(), other).await,
    );
    let node = Actor::node();
    store.revoke_tokens(&a, &node).await.expect("revoke");
    store.revoke_tokens(&a, &node).await.expect("revoke");
    store.revoke_tokens(&b, &node).await.expect("revoke");
    assert!(store.delete_identity(&b, &node).await.expect("delete"));
    store.revoke_tokens(&c, &node).await.expect("revoke");
    // Nothing changed, nothing written.
    let missing = IdentityId::new_random(r);
    assert_eq!(store.revoke_tokens(&missing, &node).await.expect("r"), None);
    assert!(!store.delete_identity(&missing, &node).await.expect("d"));
    assert_eq!(
        events(store.as_ref(), r, 0).await,
        vec![
            (1, rev(a, RevocationKind::Revoked, 1)),
            (2, rev(a, RevocationKind::Revoked, 2)),
            (3, rev(b, RevocationKind::Revoked, 1)),
            (4, rev(b, RevocationKind::Deleted, 1)),
        ]
    );
    assert_eq!(store.feed_position(r).await.expect("position"), 4);
    assert_eq!(events(store.as_ref(), r, 3).await.len(), 1);
    assert!(events(store.as_ref(), r, 4).await.is_empty());
    assert_eq!(
        events(store.as_ref(), other, 0).await,
        vec![(1, rev(c, RevocationKind::Revoked, 1))]
    );
    let limited = store.feed_after(r, 0, 2).await.expect("feed");
    assert!(matches!(limited, FeedRead::Events(e) if e.len() == 2));
    // A position never handed out is not silently accepted.
    assert_eq!(
        store.feed_after(r, 5, 10).await.expect("feed"),
        FeedRead::Expired
    );
}

async fn key_regeneration_and_resource_deletion_write_one_event_per_identity(
    store: Arc<dyn BulkStore>,
) {
    let name = ResourceName::parse("feed-resource").expect("name");
    let resource = ResourceRecord::generate(name, None, OffsetDateTime::now_utc());
    let r = resource.id;
    let node = Actor::node();
    assert_eq!(
        store
            .create_resource(resource, &node)
            .await
            .expect("create"),
        ResourceCreated::Created
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(make(store.as_ref(), r).await);
    }
    store.revoke_tokens(&ids[0], &node).await.expect("revoke");
    store
        .replace_access_key(r, KeySlot::Primary, AccessKey::generate(), false, &node)
        .await
        .expect("replace");
    assert_eq!(store.feed_position(r).await.expect("position"), 1);
    store
        .replace_access_key(r, KeySlot::Secondary, AccessKey::generate(), true, &node)
        .await
        .expect("replace");
    let after_keys = events(store.as_ref(), r, 1).await;
    assert_eq!(after_keys.len(), 5);
    for id in &ids {
        let epoch = if *id == ids[0] { 2 } else { 1 };
        assert!(
            after_keys
                .iter()
                .any(|(_, e)| *e == rev(*id, RevocationKind::Revoked, epoch)),
            "{id} epoch {epoch}: {after_keys:?}"
        );
    }
    let seqs: Vec<u64> = after_keys.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (2..=6).collect::<Vec<_>>());
    assert!(matches!(
        store.delete_resource(r, &node).await.expect("delete"),
        ResourceDeleted::Deleted { identities: 5 }
    ));
    let deleted = events(store.as_ref(), r, 6).await;
    assert_eq!(deleted.len(), 5);
    assert!(
        deleted
            .iter()
            .all(|(_, e)| e.kind == RevocationKind::Deleted && ids.contains(&e.id))
    );
}

async fn snapshot_pages_cover_revoked_and_recently_deleted_identities(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let node = Actor::node();
    let mut expected = Vec::new();
    for i in 0..7 {
        let id = make(store.as_ref(), r).await;
        match i % 3 {
            0 => {}
            1 => {
                store.revoke_tokens(&id, &node).await.expect("revoke");
                expected.push(rev(id, RevocationKind::Revoked, 1));
            }
            _ => {
                store.revoke_tokens(&id, &node).await.expect("revoke");
                store.delete_identity(&id, &node).await.expect("delete");
                expected.push(rev(id, RevocationKind::Deleted, 1));
            }
        }
    }
    make(store.as_ref(), ResourceId::new_random()).await;
    expected.sort_by_key(|e| e.id.to_string());
    let since = OffsetDateTime::now_utc() - Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut after: Option<IdentityId> = None;
    loop {
        let page = store
            .revocation_snapshot(r, after.as_ref(), since, 2)
            .await
            .expect("snapshot");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page);
    }
    assert_eq!(seen, expected);
    // Tombstones older than the bound are left out.
    let later = OffsetDateTime::now_utc() + Duration::from_secs(60);
    let page = store
        .revocation_snapshot(r, None, later, 100)
        .await
        .expect("snapshot");
    assert!(page.iter().all(|e| e.kind == RevocationKind::Revoked));
    assert_eq!(page.len(), 2);
}

async fn pruning_is_bounded_and_an_older_position_then_expires(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let node = Actor::node();
    let id = make(store.as_ref(), r).await;
    for _ in 0..5 {
        store.revoke_tokens(&id, &node).await.expect("revoke");
    }
    let before = OffsetDateTime::now_utc() + Duration::from_secs(60);
    assert_eq!(store.prune_feed(before, 3).await.expect("prune"), 3);
    assert_eq!(
        store.feed_after(r, 0, 10).await.expect("feed"),
        FeedRead::Expired
    );
    assert_eq!(
        store.feed_after(r, 2, 10).await.expect("feed"),
        FeedRead::Expired
    );
    assert_eq!(events(store.as_ref(), r, 3).await.len(), 2);
    assert_eq!(store.prune_feed(before, 3).await.expect("prune"), 2);
    assert!(events(store.as_ref(), r, 5).await.is_empty());
    assert_eq!(
        store.feed_after(r, 4, 10).await.expect("feed"),
        FeedRead::Expired
    );
    // Nothing old is left; new events carry on from the last position.
    assert_eq!(store.prune_feed(before, 3).await.expect("prune"), 0);
    store.revoke_tokens(&id, &node).await.expect("revoke");
    assert_eq!(
        events(store.as_ref(), r, 5).await,
        vec![(6, rev(id, RevocationKind::Revoked, 6))]
    );
}

async fn a_committed_revoke_moves_the_change_signal(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let id = make(store.as_ref(), r).await;
    let mut changes = store.feed_changes();
    changes.borrow_and_update();
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        changes.changed().await.expect("signal");
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store
        .revoke_tokens(&id, &Actor::node())
        .await
        .expect("revoke");
    let took = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("moved")
        .expect("task");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

macro_rules! feed_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            feed_suite!(@tests $make;
                revokes_and_deletes_write_one_event_each_in_order,
                key_regeneration_and_resource_deletion_write_one_event_per_identity,
                snapshot_pages_cover_revoked_and_recently_deleted_identities,
                pruning_is_bounded_and_an_older_position_then_expires,
                a_committed_revoke_moves_the_change_signal
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

feed_suite!(sqlite, make_sqlite);
feed_suite!(postgres, make_postgres);

/// A change whose event cannot be written rolls back whole: no epoch raised, no identity
/// deleted, no event; the next change gets the next position.
async fn a_rolled_back_change_leaves_no_event(store: &dyn BulkStore, refused: IdentityId) {
    let r = refused.resource();
    let node = Actor::node();
    let fine = make(store, r).await;
    assert!(store.revoke_tokens(&refused, &node).await.is_err());
    assert!(store.delete_identity(&refused, &node).await.is_err());
    let still = store
        .get_identity(&refused)
        .await
        .expect("get")
        .expect("there");
    assert_eq!(still.revocation_epoch, 0);
    assert_eq!(store.feed_position(r).await.expect("position"), 0);
    store.revoke_tokens(&fine, &node).await.expect("revoke");
    assert_eq!(
        events(store, r, 0).await,
        vec![(1, rev(fine, RevocationKind::Revoked, 1))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_rolled_back_change_leaves_no_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let store = SqliteStore::open(&path).expect("open");
    let refused = make(&store, ResourceId::new_random()).await;
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(&format!(
        "CREATE TRIGGER refuse BEFORE INSERT ON revocation_events
         WHEN NEW.identity_id = '{refused}' BEGIN SELECT RAISE(ABORT, 'refused'); END;"
    ))
    .expect("trigger");
    a_rolled_back_change_leaves_no_event(&store, refused).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_rolled_back_change_leaves_no_event() {
    let (store, db) = postgres_store().await;
    let refused = make(&store, ResourceId::new_random()).await;
    let client = connect_postgres(&db.url()).await;
    client
        .batch_execute(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.identity_id = '{refused}' THEN RAISE EXCEPTION 'refused'; END IF;
             RETURN NEW; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON callsign_revocation_events
             FOR EACH ROW EXECUTE FUNCTION refuse();"
        ))
        .await
        .expect("trigger");
    a_rolled_back_change_leaves_no_event(&store, refused).await;
    store.close().await;
}
