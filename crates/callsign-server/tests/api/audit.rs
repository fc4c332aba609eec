//! The audit log through HTTP: every change an authenticated request makes leaves exactly one
//! record naming the resource, operation, identity, outcome, the key that signed the request,
//! the client's address and the request id the response carried; a refused request leaves none.

use std::net::{IpAddr, Ipv4Addr};

use callsign_store::{AuditOperation as Op, AuditOutcome as Out, AuditRecord, Credential};
use callsign_testkit::{Backend, Reply, SendExt, TestApp, enc, spawn_app};
use reqwest::{Method, StatusCode};

const V: &str = "api-version=2025-03-02-preview";

/// Sends a request signed with `key` and returns the reply and its request id (`ms-cv`).
async fn send(
    app: &TestApp,
    method: Method,
    target: &str,
    body: Option<&str>,
    key: &str,
) -> (Reply, String) {
    let reply = app
        .signed(method, target, body.map(str::as_bytes), key)
        .reply()
        .await;
    let id = reply.headers["ms-cv"]
        .to_str()
        .expect("request id")
        .to_owned();
    (reply, id)
}

/// What one record says: operation, identity, outcome, credential, request id.
type Seen = (Op, Option<String>, Out, Credential, Option<String>);

fn seen(records: &[AuditRecord]) -> Vec<Seen> {
    records
        .iter()
        .map(|r| {
            (
                r.operation,
                r.identity.map(|i| i.to_string()),
                r.outcome,
                r.credential,
                r.request_id.clone(),
            )
        })
        .collect()
}

async fn every_change_through_http_leaves_one_record(backend: Backend) {
    let app = spawn_app(backend).await;
    let (primary, secondary) = (app.primary_key.clone(), app.secondary_key.clone());
    let body = r#"{"customId": "ann@contoso.com"}"#;
    let (created, c1) = send(
        &app,
        Method::POST,
        &format!("/identities?{V}"),
        Some(body),
        &primary,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["identity"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (again, c2) = send(
        &app,
        Method::POST,
        &format!("/identities?{V}"),
        Some(body),
        &secondary,
    )
    .await;
    assert_eq!(again.body["identity"]["id"], id.as_str());
    let revoke = format!("/identities/{}/:revokeAccessTokens?{V}", enc(&id));
    let (r, r1) = send(&app, Method::POST, &revoke, None, &secondary).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let legacy = format!("/identities/{}?api-version=2020-07-20-preview2", enc(&id));
    let (r, r2) = send(&app, Method::PATCH, &legacy, Some("{}"), &primary).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let (tenant, object) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let assignment = format!("/access/teamsExtension/tenants/{tenant}/assignments/{object}?{V}");
    let a = r#"{"principalType": "user"}"#;
    let (r, p1) = send(&app, Method::PUT, &assignment, Some(a), &primary).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (r, p2) = send(&app, Method::PUT, &assignment, Some(a), &secondary).await;
    assert_eq!(r.status, StatusCode::OK);
    let (r, d1) = send(&app, Method::DELETE, &assignment, None, &primary).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let delete = format!("/identities/{}?{V}", enc(&id));
    let (r, x1) = send(&app, Method::DELETE, &delete, None, &secondary).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let (r, x2) = send(&app, Method::DELETE, &delete, None, &primary).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let records = app.audit_records().await;
    let s = |op, identity: bool, outcome, credential, req: &str| {
        (
            op,
            identity.then(|| id.clone()),
            outcome,
            credential,
            Some(req.to_owned()),
        )
    };
    use Credential::{Primary, Secondary};
    assert_eq!(
        seen(&records),
        vec![
            s(Op::CreateIdentity, true, Out::Success, Primary, &c1),
            s(Op::CreateIdentity, true, Out::Existing, Secondary, &c2),
            s(Op::RevokeTokens, true, Out::Success, Secondary, &r1),
            s(Op::RevokeTokens, true, Out::Success, Primary, &r2),
            s(Op::PutAssignment, false, Out::Success, Primary, &p1),
            s(Op::PutAssignment, false, Out::Replaced, Secondary, &p2),
            s(Op::DeleteAssignment, false, Out::Success, Primary, &d1),
            s(Op::DeleteIdentity, true, Out::Success, Secondary, &x1),
            s(Op::DeleteIdentity, true, Out::NotFound, Primary, &x2),
        ]
    );
    for r in &records {
        assert_eq!(
            r.resource.map(|x| x.to_string()),
            Some(app.resource_id.clone())
        );
        assert_eq!(r.client, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    assert_eq!(records[2].detail.as_deref(), Some("epoch 1"));
    assert_eq!(records[3].detail.as_deref(), Some("epoch 2"));
    let pair = format!("tenant {tenant} object {object}");
    assert_eq!(records[4].detail.as_deref(), Some(pair.as_str()));
    app.stop().await;
}

async fn refused_requests_leave_no_record(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_user().await;
    let before = app.audit_records().await;
    assert_eq!(before.len(), 1);
    // 401: a key the resource does not have.
    let wrong = callsign_core::AccessKey::generate();
    let (r, _) = send(
        &app,
        Method::POST,
        &format!("/identities?{V}"),
        None,
        wrong.expose(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let revoke = format!("/identities/{}/:revokeAccessTokens?{V}", enc(&id));
    let (r, _) = send(&app, Method::POST, &revoke, None, wrong.expose()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // 400: input that does not parse, a revoke time in the future, an unknown api-version, an
    // id of another resource.
    let key = app.primary_key.clone();
    let (r, _) = send(
        &app,
        Method::POST,
        &format!("/identities?{V}"),
        Some(r#"{"customId": 5}"#),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let legacy = format!("/identities/{}?api-version=2020-07-20-preview2", enc(&id));
    let (r, _) = send(
        &app,
        Method::PATCH,
        &legacy,
        Some(r#"{"tokensValidFrom": "2999-01-01T00:00:00Z"}"#),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let (r, _) = send(
        &app,
        Method::POST,
        &format!(
            "/identities/{}/:revokeAccessTokens?api-version=1999-01-01",
            enc(&id)
        ),
        None,
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let other = callsign_core::IdentityId::new_random(callsign_core::ResourceId::new_random());
    let (r, _) = send(
        &app,
        Method::DELETE,
        &format!("/identities/{}?{V}", enc(&other.to_string())),
        None,
        &key,
    )
    .await;
    assert!(r.status.is_client_error(), "{}", r.status);
    let (tenant, object) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let assignment = format!("/access/teamsExtension/tenants/{tenant}/assignments/{object}?{V}");
    let (r, _) = send(
        &app,
        Method::PUT,
        &assignment,
        Some(r#"{"principalType": "robot"}"#),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Reads and token issue change nothing that is audited one by one.
    let issued = app.issue(&id, &["chat"]).await;
    assert_eq!(issued.status, StatusCode::OK);
    assert_eq!(app.audit_records().await, before);
    app.stop().await;
}

/// A record written `days` ago.
fn aged(seq: i64, days: i64) -> AuditRecord {
    let resource = callsign_core::ResourceId::new_random();
    AuditRecord {
        seq,
        at: time::OffsetDateTime::now_utc() - time::Duration::days(days),
        resource: Some(resource),
        operation: Op::CreateIdentity,
        identity: Some(callsign_core::IdentityId::new_random(resource)),
        outcome: Out::Success,
        credential: Credential::Primary,
        client: None,
        request_id: None,
        subject: None,
        detail: None,
    }
}

async fn a_node_prunes_records_past_the_retention(backend: Backend) {
    let mut builder = TestApp::builder().backend(backend);
    let records: Vec<AuditRecord> = (1..=3).map(|i| aged(i, 40)).chain([aged(4, 10)]).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Box<dyn callsign_store::BulkStore> = match backend {
        Backend::Sqlite => Box::new(callsign_store::open_embedded_store(dir.path()).expect("open")),
        Backend::Postgres => {
            let db = callsign_testkit::TestDatabase::create().await;
            let store = callsign_store::PostgresStore::connect(&db.url(), &Default::default())
                .await
                .expect("connect");
            builder = builder.database(db);
            Box::new(store)
        }
    };
    assert_eq!(
        store.import_audit(records.clone()).await.expect("import"),
        4
    );
    store.close().await;
    drop(store);
    let app = builder
        .data_dir(dir)
        .settings(|s| s.audit_retention = Some(std::time::Duration::from_secs(30 * 86_400)))
        .spawn()
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = app.audit_records().await;
        if left.len() == 1 {
            assert_eq!((left[0].seq, left[0].identity), (4, records[3].identity));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not pruned: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// With `--audit-token-issue`, every token issued (alone or with a create) leaves one record
/// with the scopes; a refused issue leaves none.
async fn tokens_are_audited_one_by_one_when_asked(backend: Backend) {
    let app = TestApp::builder()
        .backend(backend)
        .settings(|s| s.audit_token_issue = true)
        .spawn()
        .await;
    let key = app.secondary_key.clone();
    let (r, created) = send(
        &app,
        Method::POST,
        &format!("/identities?{V}"),
        Some(r#"{"createTokenWithScopes":["chat"]}"#),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["identity"]["id"].as_str().expect("id").to_owned();
    let issue = format!("/identities/{}/:issueAccessToken?{V}", enc(&id));
    let (r, issued) = send(
        &app,
        Method::POST,
        &issue,
        Some(r#"{"scopes":["voip","chat"]}"#),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let (r, _) = send(
        &app,
        Method::POST,
        &issue,
        Some(r#"{"scopes":["nope"]}"#),
        &key,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let records = app.audit_records().await;
    let tokens: Vec<_> = records
        .iter()
        .filter(|r| r.operation == Op::IssueToken)
        .map(|r| {
            assert_eq!(r.identity.map(|i| i.to_string()), Some(id.clone()));
            assert_eq!(r.credential, Credential::Secondary);
            (
                r.request_id.clone().unwrap_or_default(),
                r.detail.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        tokens,
        vec![
            (created, "scopes chat".to_owned()),
            (issued, "scopes voip,chat".to_owned()),
        ]
    );
    app.stop().await;
}

on_every_backend!(
    tokens_are_audited_one_by_one_when_asked,
    every_change_through_http_leaves_one_record,
    refused_requests_leave_no_record,
    a_node_prunes_records_past_the_retention
);
