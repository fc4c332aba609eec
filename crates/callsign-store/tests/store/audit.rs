//! The audit log, on both backends: one record per write, in the write's transaction.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use callsign_store::{Actor, AuditOperation, AuditOutcome, AuditQuery, AuditRecord, Credential};

use super::*;

fn actor(request: &str) -> Actor {
    Actor {
        credential: Credential::Secondary,
        client: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        request_id: Some(request.to_owned()),
        subject: None,
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

async fn all_records(store: &dyn BulkStore) -> Vec<AuditRecord> {
    store
        .audit_records(&AuditQuery {
            limit: 100_000,
            ..AuditQuery::default()
        })
        .await
        .expect("audit records")
}

/// (operation, identity, outcome, request id, detail) of each record.
type Summary = (
    AuditOperation,
    Option<IdentityId>,
    AuditOutcome,
    Option<String>,
    Option<String>,
);

fn summary(records: &[AuditRecord]) -> Vec<Summary> {
    records
        .iter()
        .map(|r| {
            (
                r.operation,
                r.identity,
                r.outcome,
                r.request_id.clone(),
                r.detail.clone(),
            )
        })
        .collect()
}

async fn each_write_leaves_one_record_with_its_fields(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let before = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let created = store
        .create_identity(new_identity(r, Some("ann")), &actor("c1"))
        .await
        .expect("create");
    let id = created.identity.id;
    let again = store
        .create_identity(new_identity(r, Some("ann")), &actor("c2"))
        .await
        .expect("create again");
    assert!(!again.created);
    assert_eq!(
        store
            .revoke_tokens(&id, &actor("r1"))
            .await
            .expect("revoke"),
        Some(1)
    );
    let unknown = IdentityId::new_random(r);
    assert_eq!(
        store
            .revoke_tokens(&unknown, &actor("r2"))
            .await
            .expect("revoke"),
        None
    );
    let (tenant, object) = (Uuid::new_v4(), Uuid::new_v4());
    let a = assignment(tenant, object, PrincipalType::User, None);
    assert!(
        store
            .put_assignment(r, a.clone(), &actor("p1"))
            .await
            .expect("put")
    );
    assert!(!store.put_assignment(r, a, &actor("p2")).await.expect("put"));
    assert!(
        store
            .delete_assignment(r, tenant, object, &actor("d1"))
            .await
            .expect("delete")
    );
    assert!(
        store
            .delete_identity(&id, &actor("x1"))
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_identity(&id, &actor("x2"))
            .await
            .expect("delete")
    );
    // Another resource's write is not among this one's records.
    store
        .create_identity(new_identity(ResourceId::new_random(), None), &actor("o1"))
        .await
        .expect("create elsewhere");

    let records = records_of(store.as_ref(), r).await;
    let pair = format!("tenant {tenant} object {object}");
    let s = |op, identity, outcome, req: &str, detail: Option<&str>| {
        (
            op,
            identity,
            outcome,
            Some(req.to_owned()),
            detail.map(str::to_owned),
        )
    };
    use AuditOperation as Op;
    use AuditOutcome as Out;
    assert_eq!(
        summary(&records),
        vec![
            s(Op::CreateIdentity, Some(id), Out::Success, "c1", None),
            s(Op::CreateIdentity, Some(id), Out::Existing, "c2", None),
            s(
                Op::RevokeTokens,
                Some(id),
                Out::Success,
                "r1",
                Some("epoch 1")
            ),
            s(Op::RevokeTokens, Some(unknown), Out::NotFound, "r2", None),
            s(Op::PutAssignment, None, Out::Success, "p1", Some(&pair)),
            s(Op::PutAssignment, None, Out::Replaced, "p2", Some(&pair)),
            s(Op::DeleteAssignment, None, Out::Success, "d1", Some(&pair)),
            s(Op::DeleteIdentity, Some(id), Out::Success, "x1", None),
            s(Op::DeleteIdentity, Some(id), Out::NotFound, "x2", None),
        ]
    );
    let after = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    for pair in records.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "sequence order");
    }
    for rec in &records {
        assert_eq!(rec.resource, Some(r));
        assert_eq!(rec.credential, Credential::Secondary);
        assert_eq!(rec.client, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(rec.at > before && rec.at < after, "{:?}", rec.at);
    }
    // Paging by sequence number and the time filter.
    let rest = store
        .audit_records(&AuditQuery {
            after: Some(records[6].seq),
            resource: Some(r),
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .expect("page");
    assert_eq!(rest, vec![records[7].clone()]);
    let none = store
        .audit_records(&AuditQuery {
            since: Some(after),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .expect("since");
    assert!(none.is_empty());
}

async fn a_failed_write_leaves_no_record(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let created = store
        .create_identity(new_identity(r, None), &actor("c1"))
        .await
        .expect("create");
    let id = created.identity.id;
    assert!(
        store
            .delete_identity(&id, &actor("x1"))
            .await
            .expect("delete")
    );
    let count = records_of(store.as_ref(), r).await.len();
    // A tombstoned id is refused: the change rolls back, and its record with it.
    let reuse = NewIdentity {
        id,
        custom_id: None,
        created_at: OffsetDateTime::now_utc(),
    };
    assert!(store.create_identity(reuse, &actor("bad")).await.is_err());
    // So is an id that exists (without a custom id to fall back on).
    let live = store
        .create_identity(new_identity(r, None), &actor("c2"))
        .await
        .expect("create");
    let dup = NewIdentity {
        id: live.identity.id,
        custom_id: None,
        created_at: OffsetDateTime::now_utc(),
    };
    assert!(store.create_identity(dup, &actor("bad")).await.is_err());
    let records = records_of(store.as_ref(), r).await;
    assert_eq!(records.len(), count + 1);
    assert!(
        records
            .iter()
            .all(|rec| rec.request_id.as_deref() != Some("bad"))
    );
}

async fn concurrent_writes_are_each_recorded_once(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let c = store
                .create_identity(new_identity(r, None), &actor(&format!("c{i}")))
                .await
                .expect("create");
            store
                .revoke_tokens(&c.identity.id, &actor(&format!("r{i}")))
                .await
                .expect("revoke");
            c.identity.id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    let records = records_of(store.as_ref(), r).await;
    assert_eq!(records.len(), 80);
    for (i, id) in ids.iter().enumerate() {
        for (op, req) in [
            (AuditOperation::CreateIdentity, format!("c{i}")),
            (AuditOperation::RevokeTokens, format!("r{i}")),
        ] {
            let found: Vec<_> = records
                .iter()
                .filter(|rec| rec.request_id.as_deref() == Some(req.as_str()))
                .collect();
            assert_eq!(found.len(), 1, "{req}");
            assert_eq!((found[0].operation, found[0].identity), (op, Some(*id)));
        }
    }
    let mut seqs: Vec<i64> = records.iter().map(|r| r.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 80);
}

/// A record as it would have been written `days` ago.
fn old_record(seq: i64, resource: ResourceId, days: i64) -> AuditRecord {
    AuditRecord {
        seq,
        at: OffsetDateTime::from_unix_timestamp(
            OffsetDateTime::now_utc().unix_timestamp() - days * 86_400,
        )
        .expect("time"),
        resource: Some(resource),
        operation: AuditOperation::CreateIdentity,
        identity: Some(IdentityId::new_random(resource)),
        outcome: AuditOutcome::Success,
        credential: Credential::Primary,
        client: None,
        request_id: None,
        subject: None,
        detail: None,
    }
}

async fn prune_removes_only_old_records_in_bounded_batches(store: Arc<dyn BulkStore>) {
    let r = ResourceId::new_random();
    let old: Vec<AuditRecord> = (1..=5).map(|i| old_record(i, r, 100)).collect();
    assert_eq!(store.import_audit(old.clone()).await.expect("import"), 5);
    // Importing again adds nothing.
    assert_eq!(store.import_audit(old).await.expect("import"), 0);
    store
        .create_identity(new_identity(r, None), &actor("new"))
        .await
        .expect("create");
    let fresh = records_of(store.as_ref(), r).await;
    assert_eq!(fresh.len(), 6);
    assert!(fresh[5].seq > 5, "numbered after the imported records");
    let cut = OffsetDateTime::now_utc() - time::Duration::days(90);
    assert_eq!(store.prune_audit(cut, 2).await.expect("prune"), 2);
    assert_eq!(store.prune_audit(cut, 2).await.expect("prune"), 2);
    assert_eq!(store.prune_audit(cut, 2).await.expect("prune"), 1);
    assert_eq!(store.prune_audit(cut, 2).await.expect("prune"), 0);
    let left = records_of(store.as_ref(), r).await;
    assert_eq!(summary(&left), summary(&fresh[5..]));
}

async fn token_counts_are_kept_per_resource(store: Arc<dyn BulkStore>) {
    let (r, other) = (ResourceId::new_random(), ResourceId::new_random());
    let id = store
        .create_identity(new_identity(r, None), &actor("c"))
        .await
        .expect("create")
        .identity
        .id;
    let at = OffsetDateTime::now_utc();
    for _ in 0..3 {
        store.record_token_issued(&id, at);
    }
    store.record_token_issued(&IdentityId::new_random(other), at);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counts = store.token_counts().await.expect("counts");
        let of = |res| counts.iter().find(|c| c.resource == res).map(|c| c.count);
        if of(r) == Some(3) && of(other) == Some(1) {
            let mine = counts.iter().find(|c| c.resource == r).expect("mine");
            assert_eq!(
                mine.last_issued_at.map(|t| t.unix_timestamp()),
                Some(at.unix_timestamp())
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Counting goes on across flushes.
    store.record_token_issued(&id, at);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store
        .token_counts()
        .await
        .expect("counts")
        .iter()
        .all(|c| c.resource != r || c.count != 4)
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

macro_rules! audit_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            audit_suite!(@tests $make;
                each_write_leaves_one_record_with_its_fields,
                a_failed_write_leaves_no_record,
                concurrent_writes_are_each_recorded_once,
                prune_removes_only_old_records_in_bounded_batches,
                token_counts_are_kept_per_resource,
                resource_and_key_changes_leave_one_record_each,
                signing_key_rotation_and_retirement_are_recorded
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

audit_suite!(sqlite, make_sqlite);
audit_suite!(postgres, make_postgres);

/// A copy carries the audit log as it is, sequence numbers included; a repeat adds nothing, and
/// what the target records afterwards is numbered after it.
async fn a_copy_carries_the_audit_log(from: &dyn BulkStore, to: &dyn BulkStore) {
    let (resource, ids) = started_deployment(from, 6).await;
    from.revoke_tokens(&ids[0], &actor("r"))
        .await
        .expect("revoke");
    from.delete_identity(&ids[1], &actor("x"))
        .await
        .expect("delete");
    let source = all_records(from).await;
    assert!(source.len() >= 2);
    let report = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy");
    assert_eq!(report.audit_records, source.len());
    let copied = all_records(to).await;
    assert_eq!(copied[..source.len()], source[..]);
    let again = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy again");
    assert_eq!(again.audit_records, 0);
    let max = copied.iter().map(|r| r.seq).max().expect("some");
    to.revoke_tokens(&ids[2], &actor("after"))
        .await
        .expect("revoke");
    let last = records_of(to, resource.id).await.pop().expect("a record");
    assert_eq!(last.request_id.as_deref(), Some("after"));
    assert!(last.seq > max);
    // The source writes on after the first copy (a last write before the cut-over): the next
    // copy adds exactly that record, although the target's own record took its number.
    from.revoke_tokens(&ids[3], &actor("later"))
        .await
        .expect("revoke");
    let third = callsign_store::copy_store(from, to, &batch_of(4))
        .await
        .expect("copy a third time");
    assert_eq!(third.audit_records, 1);
    let on_target = all_records(to).await;
    for wanted in ["r", "x", "after", "later"] {
        let n = on_target
            .iter()
            .filter(|r| r.request_id.as_deref() == Some(wanted))
            .count();
        assert_eq!(n, 1, "{wanted}");
    }
}

macro_rules! audit_copies {
    ($($name:ident: $make_from:ident -> $make_to:ident),* $(,)?) => {
        mod copies {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (from, from_guard) = $make_from().await;
                    let (to, to_guard) = $make_to().await;
                    a_copy_carries_the_audit_log(from.as_ref(), to.as_ref()).await;
                    from.close().await;
                    to.close().await;
                    drop((from_guard, to_guard));
                }
            )*
        }
    };
}

audit_copies!(
    sqlite_to_postgres: make_sqlite -> make_postgres,
    postgres_to_sqlite: make_postgres -> make_sqlite,
);

/// Resource and key changes are recorded like identity changes; refusals are not.
async fn resource_and_key_changes_leave_one_record_each(store: Arc<dyn BulkStore>) {
    let clock = callsign_core::SystemClock;
    let (default, _) = callsign_store::ensure_default_resource(store.as_ref(), &clock)
        .await
        .expect("default");
    let tenant = named("audited", Some("audited.example"));
    let who = actor("op-1");
    store
        .create_resource(tenant.clone(), &who)
        .await
        .expect("create");
    assert_eq!(
        store
            .create_resource(named("audited", None), &who)
            .await
            .expect("create"),
        ResourceCreated::NameTaken
    );
    store
        .replace_access_key(
            tenant.id,
            KeySlot::Primary,
            AccessKey::generate(),
            false,
            &who,
        )
        .await
        .expect("replace");
    store
        .create_identity(new_identity(tenant.id, None), &who)
        .await
        .expect("create");
    store
        .replace_access_key(
            tenant.id,
            KeySlot::Secondary,
            AccessKey::generate(),
            true,
            &who,
        )
        .await
        .expect("replace");
    store
        .delete_resource(tenant.id, &who)
        .await
        .expect("delete");

    let ops: Vec<_> = records_of(store.as_ref(), tenant.id)
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.credential, Credential::Secondary);
            assert_eq!(r.request_id.as_deref(), Some("op-1"));
            (r.operation, r.outcome, r.detail.unwrap_or_default())
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            (
                AuditOperation::CreateResource,
                AuditOutcome::Success,
                "name audited, host audited.example".to_owned()
            ),
            (
                AuditOperation::RegenerateKey,
                AuditOutcome::Success,
                "primary key".to_owned()
            ),
            (
                AuditOperation::CreateIdentity,
                AuditOutcome::Success,
                String::new()
            ),
            (
                AuditOperation::RegenerateKey,
                AuditOutcome::Success,
                "secondary key; every token revoked (1 identities)".to_owned()
            ),
            (
                AuditOperation::DeleteResource,
                AuditOutcome::Success,
                "with 1 identities".to_owned()
            ),
        ]
    );
    let first = records_of(store.as_ref(), default.id).await;
    assert_eq!(first.len(), 1, "the default resource's creation");
    assert_eq!(first[0].operation, AuditOperation::CreateResource);
    assert_eq!(first[0].credential, Credential::Node);
}

/// A rotation that adds a key is recorded with who asked; one refused while a key is pending is
/// not; each retirement is recorded as the node's.
async fn signing_key_rotation_and_retirement_are_recorded(store: Arc<dyn BulkStore>) {
    store
        .bootstrap_signing_key(timed_key("a", callsign_core::token::Algorithm::Es256, 0, 0))
        .await
        .expect("bootstrap");
    let alg = callsign_core::token::Algorithm::Es256;
    store
        .rotate_signing_key(rotation("b", alg, 10))
        .await
        .expect("rotate");
    store
        .rotate_signing_key(rotation("c", alg, 20))
        .await
        .expect("rotate while pending");
    assert_eq!(
        store.retire_signing_keys(t(2000)).await.expect("retire"),
        vec!["a".to_owned()]
    );
    let records: Vec<_> = all_records(store.as_ref())
        .await
        .into_iter()
        .map(|r| {
            (
                r.operation,
                r.credential,
                r.resource,
                r.detail.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].0, AuditOperation::RotateSigningKey);
    assert_eq!(records[0].1, Credential::Operator);
    assert_eq!(records[0].2, None);
    assert!(
        records[0].3.starts_with("kid b (ES256), signs from "),
        "{}",
        records[0].3
    );
    assert_eq!(
        records[1],
        (
            AuditOperation::RetireSigningKey,
            Credential::Node,
            None,
            "kid a".to_owned()
        )
    );
}
