//! Access assignments (`/access/entra/assignments`), on both backends: keyed by object id per
//! resource, listed in byte order, patched all or nothing, every change audited with the
//! actor's subject; deleted with their resource, copied between stores, added to an existing
//! database by migration 9.

use std::net::{IpAddr, Ipv4Addr};

use callsign_core::{AccessAssignment, AccessPrincipalType, ObjectId, Scopes};
use callsign_store::{
    AccessAssignmentStore, AuditOperation, AuditOutcome, AuditQuery, AuditRecord, Credential,
    MAX_ACCESS_OBJECTS,
};

use super::*;

fn object(s: &str) -> ObjectId {
    ObjectId::parse(s).expect("object id")
}

fn scopes(claim: &str) -> Scopes {
    Scopes::from_claim(claim).expect("scopes")
}

fn grant(o: &str, principal_type: AccessPrincipalType, scopes: Option<Scopes>) -> AccessAssignment {
    AccessAssignment {
        object_id: object(o),
        tenant_id: Uuid::new_v4(),
        principal_type,
        scopes,
    }
}

fn user(o: &str) -> AccessAssignment {
    grant(o, AccessPrincipalType::User, None)
}

/// A request made with a trusted issuer's bearer token.
fn bearer(subject: &str) -> Actor {
    Actor {
        credential: Credential::Bearer,
        client: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        request_id: Some(format!("req-{subject}")),
        subject: Some(subject.to_owned()),
    }
}

async fn records_of(store: &dyn BulkStore, resource: ResourceId) -> Vec<AuditRecord> {
    store
        .audit_records(&AuditQuery {
            resource: Some(resource),
            limit: 10_000,
            ..AuditQuery::default()
        })
        .await
        .expect("audit records")
}

/// (operation, outcome, detail) of each record.
fn changes(records: &[AuditRecord]) -> Vec<(AuditOperation, AuditOutcome, String)> {
    records
        .iter()
        .map(|r| (r.operation, r.outcome, r.detail.clone().unwrap_or_default()))
        .collect()
}

async fn list_all(store: &dyn BulkStore, r: ResourceId, page: usize) -> Vec<AccessAssignment> {
    let mut all = Vec::new();
    let mut after: Option<ObjectId> = None;
    loop {
        let got = store
            .list_access_assignments(r, after.as_ref(), page)
            .await
            .expect("list");
        assert!(got.len() <= page);
        let Some(last) = got.last() else { break };
        after = Some(last.object_id.clone());
        all.extend(got);
    }
    all
}

async fn access_put_creates_then_replaces(store: Arc<dyn BulkStore>) {
    let (r, other) = (ResourceId::new_random(), ResourceId::new_random());
    let o = object("b27b64b9-39d2-44a3-869d-67700b74e805");
    assert_eq!(store.get_access_assignment(r, &o).await.expect("get"), None);
    let first = grant(o.as_str(), AccessPrincipalType::User, None);
    assert!(
        store
            .put_access_assignment(r, first.clone(), &Actor::operator())
            .await
            .expect("put")
    );
    assert_eq!(
        store.get_access_assignment(r, &o).await.expect("get"),
        Some(first)
    );
    // Everything but the object id is replaced: tenant, type and scopes.
    for s in [Some(scopes("chat,voip.join")), None, Some(scopes("voip"))] {
        let next = grant(o.as_str(), AccessPrincipalType::Group, s);
        assert!(
            !store
                .put_access_assignment(r, next.clone(), &Actor::operator())
                .await
                .expect("put again"),
            "a second put replaces"
        );
        assert_eq!(
            store.get_access_assignment(r, &o).await.expect("get"),
            Some(next)
        );
    }
    // Per resource.
    assert_eq!(
        store.get_access_assignment(other, &o).await.expect("get"),
        None
    );
    let theirs = grant(o.as_str(), AccessPrincipalType::Tenant, None);
    assert!(
        store
            .put_access_assignment(other, theirs.clone(), &Actor::operator())
            .await
            .expect("put elsewhere")
    );
    assert_eq!(
        store.get_access_assignment(other, &o).await.expect("get"),
        Some(theirs)
    );
}

async fn access_delete_removes_it(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let o = object("auth0|5f7c8ec7c33c6c004bbafe82");
    let op = Actor::operator();
    assert!(
        !store
            .delete_access_assignment(r, &o, &op)
            .await
            .expect("delete unknown")
    );
    let a = grant(
        o.as_str(),
        AccessPrincipalType::TeamsResourceAccount,
        Some(scopes("chat")),
    );
    assert!(
        store
            .put_access_assignment(r, a.clone(), &op)
            .await
            .expect("put")
    );
    assert!(
        store
            .delete_access_assignment(r, &o, &op)
            .await
            .expect("delete")
    );
    assert_eq!(store.get_access_assignment(r, &o).await.expect("get"), None);
    assert!(
        !store
            .delete_access_assignment(r, &o, &op)
            .await
            .expect("delete again")
    );
    assert!(
        store
            .put_access_assignment(r, a, &op)
            .await
            .expect("put again"),
        "putting it again is a creation"
    );
}

async fn concurrent_first_access_puts_create_once(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .put_access_assignment(r, user("admins"), &Actor::operator())
                .await
                .expect("put")
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.expect("task"));
    }
    assert_eq!(created, 1);
}

async fn access_listing_pages_in_object_id_byte_order(store: Arc<dyn BulkStore>) {
    let (r, other) = (ResourceId::new_random(), ResourceId::new_random());
    let ids = [
        "zeta",
        "Admins",
        "admins",
        "a@b.c",
        "248289761001",
        "_x",
        "auth0|5f7c8ec7c33c6c004bbafe82",
        "b27b64b9-39d2-44a3-869d-67700b74e805",
        "~",
        "A",
    ];
    let mut expected = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let scopes = (i % 2 == 0).then(|| scopes("chat"));
        let a = grant(id, AccessPrincipalType::ALL[i % 4], scopes);
        assert!(
            store
                .put_access_assignment(r, a.clone(), &Actor::operator())
                .await
                .expect("put")
        );
        expected.push(a);
    }
    store
        .put_access_assignment(other, user("admins2"), &Actor::operator())
        .await
        .expect("put elsewhere");
    expected.sort_by(|a, b| {
        a.object_id
            .as_str()
            .as_bytes()
            .cmp(b.object_id.as_str().as_bytes())
    });
    for page in [1, 3, 4, 100] {
        assert_eq!(list_all(store.as_ref(), r, page).await, expected, "{page}");
    }
    // After an id that has no assignment: the ones greater than it.
    let after = object("M");
    let greater: Vec<_> = expected
        .iter()
        .filter(|a| a.object_id.as_str() > "M")
        .cloned()
        .collect();
    assert_eq!(
        store
            .list_access_assignments(r, Some(&after), 100)
            .await
            .expect("list"),
        greater
    );
    assert!(
        store
            .list_access_assignments(r, None, 0)
            .await
            .expect("list none")
            .is_empty()
    );
}

async fn access_assignments_of_picks_only_existing_ones(store: Arc<dyn BulkStore>) {
    let (r, other) = (ResourceId::new_random(), ResourceId::new_random());
    let (user_a, group, tenant) = (
        user("alice"),
        grant("readers", AccessPrincipalType::Group, Some(scopes("chat"))),
        grant(
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            AccessPrincipalType::Tenant,
            None,
        ),
    );
    for a in [&user_a, &group, &tenant] {
        store
            .put_access_assignment(r, a.clone(), &Actor::operator())
            .await
            .expect("put");
    }
    store
        .put_access_assignment(other, user("writers"), &Actor::operator())
        .await
        .expect("put elsewhere");
    let asked = [
        object("readers"),
        object("writers"),
        object("nobody"),
        object("alice"),
        object("72F988BF-86F1-41AF-91AB-2D7CD011DB47"),
        object("alice"),
    ];
    assert_eq!(
        store
            .access_assignments_of(r, &asked)
            .await
            .expect("lookup"),
        vec![tenant, user_a, group],
        "only this resource's, each once, in object id order"
    );
    assert!(
        store
            .access_assignments_of(r, &[])
            .await
            .expect("none asked")
            .is_empty()
    );
    let many: Vec<ObjectId> = (0..=MAX_ACCESS_OBJECTS)
        .map(|i| object(&format!("g{i}")))
        .collect();
    assert!(
        store
            .access_assignments_of(r, &many[..MAX_ACCESS_OBJECTS])
            .await
            .expect("as many as allowed")
            .is_empty()
    );
    let err = store
        .access_assignments_of(r, &many)
        .await
        .expect_err("too many");
    assert!(err.is_backend() && err.to_string().contains("256"), "{err}");
}

async fn access_changes_are_audited_with_the_bearer_subject(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let who = "https://login.microsoftonline.com/72f988bf/v2.0#alice";
    let o = object("admins");
    let group = grant("admins", AccessPrincipalType::Group, None);
    store
        .put_access_assignment(r, group.clone(), &bearer(who))
        .await
        .expect("put");
    store
        .put_access_assignment(r, group, &Actor::operator())
        .await
        .expect("replace");
    store
        .delete_access_assignment(r, &o, &bearer(who))
        .await
        .expect("delete");
    // A subject longer than allowed is cut at a character boundary.
    let long = format!("https://issuer.example#{}", "é".repeat(300));
    store
        .delete_access_assignment(r, &o, &bearer(&long))
        .await
        .expect("delete again");
    let records = records_of(store.as_ref(), r).await;
    assert_eq!(
        changes(&records),
        vec![
            (
                AuditOperation::PutAccessAssignment,
                AuditOutcome::Success,
                "object admins (group)".to_owned()
            ),
            (
                AuditOperation::PutAccessAssignment,
                AuditOutcome::Replaced,
                "object admins (group)".to_owned()
            ),
            (
                AuditOperation::DeleteAccessAssignment,
                AuditOutcome::Success,
                "object admins (group)".to_owned()
            ),
            (
                AuditOperation::DeleteAccessAssignment,
                AuditOutcome::NotFound,
                "object admins".to_owned()
            ),
        ]
    );
    assert_eq!(records[0].credential, Credential::Bearer);
    assert_eq!(records[0].subject.as_deref(), Some(who));
    assert_eq!(
        records[0].request_id.as_deref(),
        Some(&*format!("req-{who}"))
    );
    assert_eq!(records[0].client, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(
        (records[1].credential, records[1].subject.as_deref()),
        (Credential::Operator, None)
    );
    assert_eq!(records[2].subject.as_deref(), Some(who));
    let cut = records[3].subject.as_deref().expect("subject");
    assert!(cut.len() <= 400 && cut.len() >= 399, "{}", cut.len());
    assert!(long.starts_with(cut));
}

/// A record's subject is part of what makes it the same record: an import that differs only
/// in it adds it; a repeated import adds nothing.
async fn imported_audit_records_keep_their_subject(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let record = |seq: i64, subject: Option<&str>| AuditRecord {
        seq,
        at: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time"),
        resource: Some(r),
        operation: AuditOperation::PutAccessAssignment,
        identity: None,
        outcome: AuditOutcome::Success,
        credential: Credential::Bearer,
        client: None,
        request_id: Some("same".to_owned()),
        subject: subject.map(str::to_owned),
        detail: Some("object admins (group)".to_owned()),
    };
    let records = vec![
        record(1, Some("iss#alice")),
        record(2, Some("iss#bob")),
        record(3, None),
    ];
    assert_eq!(
        store.import_audit(records.clone()).await.expect("import"),
        3
    );
    assert_eq!(store.import_audit(records).await.expect("again"), 0);
    let subjects: Vec<Option<String>> = records_of(store.as_ref(), r)
        .await
        .into_iter()
        .map(|r| r.subject)
        .collect();
    assert_eq!(
        subjects,
        vec![
            Some("iss#alice".to_owned()),
            Some("iss#bob".to_owned()),
            None
        ]
    );
}

async fn a_patch_applies_puts_and_deletes_together(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let who = "iss#admin";
    let replaced = user("b-replaced");
    let deleted = grant("c-deleted", AccessPrincipalType::Group, None);
    for a in [&replaced, &deleted] {
        store
            .put_access_assignment(r, a.clone(), &Actor::operator())
            .await
            .expect("put");
    }
    let before = records_of(store.as_ref(), r).await.len();
    let replacement = grant(
        "b-replaced",
        AccessPrincipalType::TeamsResourceAccount,
        Some(scopes("voip")),
    );
    let created = grant("a-created", AccessPrincipalType::Tenant, None);
    store
        .patch_access_assignments(
            r,
            vec![replacement.clone(), created.clone()],
            vec![object("d-absent"), object("c-deleted")],
            &bearer(who),
        )
        .await
        .expect("patch");
    assert_eq!(
        list_all(store.as_ref(), r, 10).await,
        vec![created, replacement]
    );
    let records = records_of(store.as_ref(), r).await;
    assert_eq!(
        changes(&records[before..]),
        vec![
            (
                AuditOperation::PutAccessAssignment,
                AuditOutcome::Success,
                "object a-created (tenant)".to_owned()
            ),
            (
                AuditOperation::PutAccessAssignment,
                AuditOutcome::Replaced,
                "object b-replaced (teamsResourceAccount)".to_owned()
            ),
            (
                AuditOperation::DeleteAccessAssignment,
                AuditOutcome::Success,
                "object c-deleted (group)".to_owned()
            ),
        ],
        "one record per change, none for an absent delete"
    );
    assert!(
        records[before..]
            .iter()
            .all(|r| r.credential == Credential::Bearer && r.subject.as_deref() == Some(who))
    );
    // An object named twice is refused, and changes nothing.
    let err = store
        .patch_access_assignments(
            r,
            vec![user("e-new"), user("a-created")],
            vec![object("a-created")],
            &bearer(who),
        )
        .await
        .expect_err("repeated object");
    assert!(err.is_backend(), "{err}");
    // An empty patch, or one that only deletes absent ones, changes nothing and records nothing.
    store
        .patch_access_assignments(r, vec![], vec![], &bearer(who))
        .await
        .expect("empty patch");
    store
        .patch_access_assignments(r, vec![], vec![object("zz")], &bearer(who))
        .await
        .expect("absent delete");
    assert_eq!(records_of(store.as_ref(), r).await.len(), records.len());
    assert_eq!(list_all(store.as_ref(), r, 10).await.len(), 2);
}

async fn deleting_a_resource_deletes_its_access_assignments(store: Arc<dyn BulkStore>) {
    let clock = callsign_core::SystemClock;
    let (default, _) = callsign_store::ensure_default_resource(store.as_ref(), &clock)
        .await
        .expect("default");
    let tenant = named("access-tenant", None);
    store
        .create_resource(tenant.clone(), &Actor::operator())
        .await
        .expect("create");
    let kept = user("alice");
    store
        .put_access_assignment(default.id, kept.clone(), &Actor::operator())
        .await
        .expect("put");
    for o in ["alice", "bob"] {
        store
            .put_access_assignment(tenant.id, user(o), &Actor::operator())
            .await
            .expect("put");
    }
    let before = records_of(store.as_ref(), tenant.id).await.len();
    assert_eq!(
        store
            .delete_resource(tenant.id, &Actor::operator())
            .await
            .expect("delete"),
        ResourceDeleted::Deleted { identities: 0 }
    );
    assert_eq!(
        store
            .get_access_assignment(tenant.id, &object("alice"))
            .await
            .expect("get"),
        None
    );
    assert!(list_all(store.as_ref(), tenant.id, 10).await.is_empty());
    assert_eq!(
        store.all_access_assignments().await.expect("all"),
        vec![(default.id, kept)]
    );
    let after = records_of(store.as_ref(), tenant.id).await;
    assert_eq!(
        after.len(),
        before + 1,
        "one record: the resource's deletion"
    );
    assert_eq!(after[before].operation, AuditOperation::DeleteResource);
}

async fn all_access_assignments_lists_every_resource_in_order(store: Arc<dyn BulkStore>) {
    assert!(
        store
            .all_access_assignments()
            .await
            .expect("all")
            .is_empty()
    );
    let mut expected = Vec::new();
    for _ in 0..3 {
        let r = ResourceId::new_random();
        for o in ["b", "a", "C"] {
            let a = user(o);
            store
                .put_access_assignment(r, a.clone(), &Actor::operator())
                .await
                .expect("put");
            expected.push((r, a));
        }
    }
    let gone = expected.pop().expect("one");
    store
        .delete_access_assignment(gone.0, &gone.1.object_id, &Actor::operator())
        .await
        .expect("delete");
    expected.sort_by(|(r, a), (s, b)| {
        (r.to_string(), a.object_id.as_str()).cmp(&(s.to_string(), b.object_id.as_str()))
    });
    assert_eq!(store.all_access_assignments().await.expect("all"), expected);
}

macro_rules! access_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            access_suite!(@tests $make;
                access_put_creates_then_replaces,
                access_delete_removes_it,
                concurrent_first_access_puts_create_once,
                access_listing_pages_in_object_id_byte_order,
                access_assignments_of_picks_only_existing_ones,
                access_changes_are_audited_with_the_bearer_subject,
                imported_audit_records_keep_their_subject,
                a_patch_applies_puts_and_deletes_together,
                deleting_a_resource_deletes_its_access_assignments,
                all_access_assignments_lists_every_resource_in_order
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

access_suite!(sqlite, make_sqlite);
access_suite!(postgres, make_postgres);

/// A patch one of whose writes fails (the database refuses the put of `refused`) changes
/// nothing: the puts and deletes before it are undone, and no record is left.
async fn a_failing_patch_changes_nothing(store: &dyn BulkStore, r: ResourceId) {
    let present = [user("a"), user("c")];
    for a in &present {
        store
            .put_access_assignment(r, a.clone(), &Actor::operator())
            .await
            .expect("put");
    }
    let records = records_of(store, r).await;
    let replacement = grant("a", AccessPrincipalType::Group, Some(scopes("chat")));
    let b = user("b");
    store
        .patch_access_assignments(
            r,
            vec![replacement.clone(), b.clone(), user("refused")],
            vec![object("c")],
            &bearer("iss#x"),
        )
        .await
        .expect_err("the refused put fails the patch");
    assert_eq!(list_all(store, r, 10).await, present.to_vec());
    assert_eq!(records_of(store, r).await, records);
    // Without the refused put it goes through.
    store
        .patch_access_assignments(
            r,
            vec![replacement.clone(), b.clone()],
            vec![object("c")],
            &bearer("iss#x"),
        )
        .await
        .expect("patch");
    assert_eq!(list_all(store, r, 10).await, vec![replacement, b]);
    assert_eq!(records_of(store, r).await.len(), records.len() + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failing_patch_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let store = SqliteStore::open(&path).expect("open");
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON access_assignments
         WHEN NEW.object_id = 'refused' BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .expect("trigger");
    a_failing_patch_changes_nothing(&store, ResourceId::new_random()).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failing_patch_changes_nothing() {
    let (store, db) = postgres_store().await;
    let client = connect_postgres(&db.url()).await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.object_id = 'refused' THEN RAISE EXCEPTION 'refused'; END IF;
             RETURN NEW; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON callsign_access_assignments
             FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .expect("trigger");
    a_failing_patch_changes_nothing(&store, ResourceId::new_random()).await;
    store.close().await;
}

/// Hand-edited access assignment rows: each reads as corrupt data.
const CORRUPTIONS: [&str; 4] = [
    "principal_type = 'User'",
    "tenant_id = 'not-a-guid'",
    "scopes = 'chat,nope'",
    "object_id = 'B27B64B9-39D2-44A3-869D-67700B74E805'",
];

/// Every read of a corrupt row answers [`StoreError::Corrupt`].
async fn assert_corrupt(store: &dyn BulkStore, r: ResourceId, corruption: &str) {
    let o = if corruption.starts_with("object_id") {
        object("b27b64b9-39d2-44a3-869d-67700b74e805")
    } else {
        object("alice")
    };
    let corrupt = |e: StoreError| assert!(e.is_corrupt(), "{corruption}: {e}");
    corrupt(store.all_access_assignments().await.expect_err(corruption));
    corrupt(
        store
            .list_access_assignments(r, None, 10)
            .await
            .expect_err(corruption),
    );
    if !corruption.starts_with("object_id") {
        corrupt(
            store
                .get_access_assignment(r, &o)
                .await
                .expect_err(corruption),
        );
        corrupt(
            store
                .access_assignments_of(r, &[o])
                .await
                .expect_err(corruption),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reports_corrupt_access_assignments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let store = SqliteStore::open(&path).expect("open");
    let r = ResourceId::new_random();
    for corruption in CORRUPTIONS {
        store
            .put_access_assignment(r, user("alice"), &Actor::operator())
            .await
            .expect("put");
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.execute(&format!("UPDATE access_assignments SET {corruption}"), [])
            .expect("corrupt");
        assert_corrupt(&store, r, corruption).await;
        conn.execute("DELETE FROM access_assignments", [])
            .expect("clean");
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reports_corrupt_access_assignments() {
    let (store, db) = postgres_store().await;
    let client = db.connect().await;
    let r = ResourceId::new_random();
    for corruption in CORRUPTIONS {
        store
            .put_access_assignment(r, user("alice"), &Actor::operator())
            .await
            .expect("put");
        client
            .batch_execute(&format!(
                "UPDATE callsign_access_assignments SET {corruption}"
            ))
            .await
            .expect("corrupt");
        assert_corrupt(&store, r, corruption).await;
        client
            .batch_execute("DELETE FROM callsign_access_assignments")
            .await
            .expect("clean");
    }
    drop(client);
    store.close().await;
}

/// A copy adds the source's access assignments the target lacks (one the target has is kept:
/// it may be newer), with the audit records of their changes, subjects included; a repeat
/// adds nothing.
async fn a_copy_carries_access_assignments(from: &dyn BulkStore, to: &dyn BulkStore) {
    let (resource, _) = started_deployment(from, 2).await;
    let mut source = Vec::new();
    for (i, o) in ["readers", "alice", "72f988bf-86f1-41af-91ab-2d7cd011db47"]
        .iter()
        .enumerate()
    {
        let a = grant(o, AccessPrincipalType::ALL[i], Some(scopes("chat,voip")));
        from.put_access_assignment(resource.id, a.clone(), &bearer("iss#admin"))
            .await
            .expect("put");
        source.push(a);
    }
    let newer = grant("alice", AccessPrincipalType::User, None);
    to.put_access_assignment(resource.id, newer.clone(), &Actor::operator())
        .await
        .expect("put on the target");
    let report = callsign_store::copy_store(from, to, &batch_of(50))
        .await
        .expect("copy");
    assert_eq!(report.access_assignments, 2);
    let mut expected: Vec<_> = source
        .into_iter()
        .map(|a| {
            if a.object_id == newer.object_id {
                newer.clone()
            } else {
                a
            }
        })
        .map(|a| (resource.id, a))
        .collect();
    expected.sort_by(|(_, a), (_, b)| a.object_id.cmp(&b.object_id));
    assert_eq!(to.all_access_assignments().await.expect("all"), expected);
    let copied = records_of(to, resource.id).await;
    let by_bearer = copied
        .iter()
        .filter(|r| r.credential == Credential::Bearer && r.subject.as_deref() == Some("iss#admin"))
        .count();
    assert_eq!(by_bearer, 3, "the source's records, subjects included");
    let again = callsign_store::copy_store(from, to, &batch_of(50))
        .await
        .expect("copy again");
    assert_eq!((again.access_assignments, again.audit_records), (0, 0));
    assert_eq!(to.all_access_assignments().await.expect("all"), expected);
}

macro_rules! access_copies {
    ($($name:ident: $make_from:ident -> $make_to:ident),* $(,)?) => {
        mod copies {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (from, from_guard) = $make_from().await;
                    let (to, to_guard) = $make_to().await;
                    a_copy_carries_access_assignments(from.as_ref(), to.as_ref()).await;
                    from.close().await;
                    to.close().await;
                    drop((from_guard, to_guard));
                }
            )*
        }
    };
}

access_copies!(
    sqlite_to_postgres: make_sqlite -> make_postgres,
    postgres_to_sqlite: make_postgres -> make_sqlite,
    sqlite_to_sqlite: make_sqlite -> make_sqlite,
);

/// Data written before migration 9 (a Teams assignment, an identity, audit records without a
/// subject) is there after it, and the new table and column work.
async fn migration_9_keeps_what_was_there(
    store: &dyn BulkStore,
    r: ResourceId,
    id: IdentityId,
    teams: TeamsAssignment,
) {
    assert!(store.get_identity(&id).await.expect("get").is_some());
    assert_eq!(
        store.all_assignments().await.expect("teams"),
        vec![(r, teams)]
    );
    let old = records_of(store, r).await;
    assert_eq!(old.len(), 2);
    assert!(old.iter().all(|rec| rec.subject.is_none()));
    let alice = user("alice");
    assert!(
        store
            .put_access_assignment(r, alice.clone(), &bearer("iss#alice"))
            .await
            .expect("put")
    );
    let records = records_of(store, r).await;
    assert_eq!(records[..2], old[..]);
    assert_eq!(records[2].subject.as_deref(), Some("iss#alice"));
    assert_eq!(
        store.all_access_assignments().await.expect("all"),
        vec![(r, alice)]
    );
}

/// Writes what [`migration_9_keeps_what_was_there`] checks.
async fn before_migration_9(store: &dyn BulkStore) -> (ResourceId, IdentityId, TeamsAssignment) {
    let r = ResourceId::new_random();
    let id = store
        .create_identity(new_identity(r, Some("old")), &Actor::operator())
        .await
        .expect("create")
        .identity
        .id;
    let teams = TeamsAssignment {
        tenant_id: Uuid::new_v4(),
        object_id: Uuid::new_v4(),
        principal_type: PrincipalType::User,
        client_ids: None,
    };
    store
        .put_assignment(r, teams.clone(), &Actor::operator())
        .await
        .expect("put");
    (r, id, teams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migration_9_applies_to_a_version_8_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("callsign.db");
    let store = SqliteStore::open(&path).expect("open");
    let (r, id, teams) = before_migration_9(&store).await;
    store.close().await;
    drop(store);
    // Back to the schema of version 8: what migration 9 adds taken out again.
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.execute_batch(
        "DROP TABLE access_assignments;
         ALTER TABLE audit_log DROP COLUMN subject;
         PRAGMA user_version = 8;",
    )
    .expect("back to version 8");
    drop(conn);
    let store = SqliteStore::open(&path).expect("reopen");
    migration_9_keeps_what_was_there(&store, r, id, teams).await;
    store.close().await;
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("version");
    assert_eq!(version, 9);
    drop(conn);
    // And it survives a reopen.
    let store = SqliteStore::open(&path).expect("reopen again");
    assert_eq!(store.all_access_assignments().await.expect("all").len(), 1);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migration_9_applies_to_a_version_8_database() {
    let (store, db) = postgres_store().await;
    let (r, id, teams) = before_migration_9(&store).await;
    store.close().await;
    drop(store);
    let client = db.connect().await;
    client
        .batch_execute(
            "DROP TABLE callsign_access_assignments;
             ALTER TABLE callsign_audit_log DROP COLUMN subject;
             ALTER TABLE callsign_identities RESET (fillfactor);
             DELETE FROM callsign_schema_migrations WHERE version >= 9;",
        )
        .await
        .expect("back to version 8");
    let store = PostgresStore::connect(&db.url(), &PostgresOptions::default())
        .await
        .expect("reconnect");
    migration_9_keeps_what_was_there(&store, r, id, teams).await;
    let n: i64 = client
        .query_one("SELECT max(version) FROM callsign_schema_migrations", &[])
        .await
        .expect("version")
        .get::<_, i32>(0)
        .into();
    assert_eq!(n, i64::from(PostgresStore::latest_migration()));
    drop(client);
    store.close().await;
}
