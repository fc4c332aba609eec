//! The revocation follower against a real server (`GET /revocations`, `GET
//! /revocations/snapshot`): revocations within the bound, from the snapshot, across a server
//! restart, after an absence longer than the feed keeps events, through another PostgreSQL node,
//! and what staleness does.

use std::time::{Duration, Instant};

use callsign_client::ConnectionString;
use callsign_core::ResourceId;
use callsign_testkit::{Backend, Relay, TestApp, enc, spawn_app};
use callsign_verify::{FollowerConfig, StalePolicy, Verifier, VerifyError};
use reqwest::Method;

const V: &str = "api-version=2023-10-01";

async fn verifier(app: &TestApp, config: FollowerConfig) -> Verifier {
    verifier_at(app, &app.endpoint, &app.client, config).await
}

/// A verifier of `app`'s resource that reaches the server at `endpoint` (a relay, another node)
/// with `http` (trusting that server's CA).
async fn verifier_at(
    app: &TestApp,
    endpoint: &str,
    http: &reqwest::Client,
    config: FollowerConfig,
) -> Verifier {
    let cs = ConnectionString::parse(&format!(
        "endpoint={endpoint};accesskey={}",
        app.primary_key
    ))
    .expect("connection string");
    let v = Verifier::builder(
        endpoint.parse().expect("endpoint"),
        ResourceId::parse(&app.resource_id).expect("resource"),
    )
    .http_client(http.clone())
    .follow_revocations(cs, config)
    .build()
    .expect("verifier");
    assert!(
        v.revocations()
            .expect("follower")
            .wait_until_current(Duration::from_secs(10))
            .await,
        "the follower loads the snapshot"
    );
    v
}

async fn token(app: &TestApp) -> (String, String) {
    let id = app.create_user().await;
    let reply = app.issue(&id, &["chat"]).await;
    (id, reply.body["token"].as_str().expect("token").to_owned())
}

/// Verifies `token` until it gives `expected` or `within` passes.
async fn eventually(v: &Verifier, token: &str, expected: VerifyError, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = v.verify(token).await;
        if got == Err(expected.clone()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_revoked_or_deleted_identitys_token_is_refused_within_the_bound() {
    let app = spawn_app(Backend::Sqlite).await;
    let v = verifier(&app, FollowerConfig::default()).await;
    let (id, before) = token(&app).await;
    assert!(v.verify(&before).await.is_ok());
    let revoke = format!("/identities/{}/:revokeAccessTokens?{V}", enc(&id));
    assert_eq!(app.send(Method::POST, &revoke, None).await.status, 204);
    eventually(&v, &before, VerifyError::Revoked, Duration::from_secs(5)).await;
    // A token issued after the revoke is in force (the server's rule, token_in_force).
    let after = app.issue(&id, &["chat"]).await.body["token"]
        .as_str()
        .expect("t")
        .to_owned();
    assert!(v.verify(&after).await.is_ok());
    let delete = format!("/identities/{}?{V}", enc(&id));
    assert_eq!(app.send(Method::DELETE, &delete, None).await.status, 204);
    eventually(&v, &after, VerifyError::Deleted, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn revocations_made_before_the_follower_started_come_from_the_snapshot() {
    let app = spawn_app(Backend::Postgres).await;
    let (id, token) = token(&app).await;
    let revoke = format!("/identities/{}/:revokeAccessTokens?{V}", enc(&id));
    assert_eq!(app.send(Method::POST, &revoke, None).await.status, 204);
    let v = verifier(&app, FollowerConfig::default()).await;
    assert_eq!(v.verify(&token).await, Err(VerifyError::Revoked));
}

#[tokio::test]
async fn a_server_gone_longer_than_the_bound_fails_closed_or_open() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token) = token(&app).await;
    let config = |policy| FollowerConfig {
        stale_after: Duration::from_secs(2),
        policy,
        ..FollowerConfig::default()
    };
    let closed = verifier(&app, config(StalePolicy::FailClosed)).await;
    let open = verifier(&app, config(StalePolicy::FailOpen)).await;
    assert!(closed.verify(&token).await.is_ok());
    assert!(open.verify(&token).await.is_ok());
    // The keys are cached; the server goes away.
    app.stop().await;
    eventually(
        &closed,
        &token,
        VerifyError::FeedStale,
        Duration::from_secs(10),
    )
    .await;
    let got = open.verify(&token).await;
    assert!(got.is_ok(), "{got:?}");
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("endpoint with a port")
}

/// Retries quickly so that the tests do not wait on the production backoff.
fn quick() -> FollowerConfig {
    FollowerConfig {
        backoff: (Duration::from_millis(50), Duration::from_millis(200)),
        ..FollowerConfig::default()
    }
}

async fn revoke(app: &TestApp, id: &str) {
    let revoke = format!("/identities/{}/:revokeAccessTokens?{V}", enc(id));
    assert_eq!(app.send(Method::POST, &revoke, None).await.status, 204);
}

/// A relay to `app` and a verifier following `app`'s feed through it (quick retries), so the
/// test can cut the verifier off or point it at a restarted server.
async fn followed_through_relay(app: &TestApp) -> (Relay, Verifier) {
    let relay = Relay::start(port_of(&app.endpoint)).await;
    let endpoint = format!("https://127.0.0.1:{}/", relay.port);
    let v = verifier_at(app, &endpoint, &app.client, quick()).await;
    (relay, v)
}

#[tokio::test]
async fn the_follower_resumes_from_its_cursor_across_a_server_restart_and_loses_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut relay, v) = followed_through_relay(&app).await;
    let follower = v.revocations().expect("follower");
    let (a, token_a) = token(&app).await;
    let (b, token_b) = token(&app).await;
    let (c, token_c) = token(&app).await;
    revoke(&app, &a).await;
    eventually(&v, &token_a, VerifyError::Revoked, Duration::from_secs(5)).await;
    let before = follower.cursor().expect("a cursor");

    // The verifier loses the server; a revoke lands while it is away; the server restarts (same
    // store, a new port); another revoke lands on the new process.
    relay.cut();
    revoke(&app, &b).await;
    let app = app.stop_keeping_data().await.spawn().await;
    relay.retarget(port_of(&app.endpoint));
    relay.restore().await;
    revoke(&app, &c).await;

    eventually(&v, &token_b, VerifyError::Revoked, Duration::from_secs(10)).await;
    eventually(&v, &token_c, VerifyError::Revoked, Duration::from_secs(10)).await;
    assert_eq!(v.verify(&token_a).await, Err(VerifyError::Revoked));
    assert_eq!(
        follower.snapshots_loaded(),
        1,
        "the follower resumed from its cursor, no resynchronisation"
    );
    assert_ne!(follower.cursor().expect("a cursor"), before);
    // A token issued after the revokes is still in force: nothing was over-applied.
    let fresh = app.issue(&c, &["chat"]).await.body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(v.verify(&fresh).await.is_ok());
}

#[tokio::test]
async fn a_follower_away_longer_than_the_feed_keeps_events_resynchronises_from_the_snapshot() {
    let app = TestApp::builder()
        .settings(|s| {
            s.revocation_feed.retention = Duration::from_secs(1);
            s.revocation_feed.prune_every = Duration::from_millis(100);
        })
        .spawn()
        .await;
    let (mut relay, v) = followed_through_relay(&app).await;
    let follower = v.revocations().expect("follower");
    let (a, token_a) = token(&app).await;
    let (b, token_b) = token(&app).await;
    let (c, token_c) = token(&app).await;
    revoke(&app, &a).await;
    eventually(&v, &token_a, VerifyError::Revoked, Duration::from_secs(5)).await;
    assert_eq!(follower.snapshots_loaded(), 1);

    // Away; a revoke lands and the feed prunes past the follower's cursor.
    relay.cut();
    revoke(&app, &b).await;
    let after = follower.cursor().expect("a cursor");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = format!("/revocations?{V}&after={after}");
        let reply = app.send(Method::GET, &path, None).await;
        if reply.status == 410 {
            reply.assert_error(410, "CursorExpired");
            break;
        }
        assert_eq!(reply.status, 200);
        assert!(Instant::now() < deadline, "the feed never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.restore().await;

    // Back: told 410, the follower loads the snapshot again, which holds both revokes.
    eventually(&v, &token_b, VerifyError::Revoked, Duration::from_secs(10)).await;
    assert_eq!(v.verify(&token_a).await, Err(VerifyError::Revoked));
    assert_eq!(follower.snapshots_loaded(), 2);
    // And it follows the feed again from the snapshot's cursor.
    let delete = format!("/identities/{}?{V}", enc(&c));
    assert_eq!(app.send(Method::DELETE, &delete, None).await.status, 204);
    eventually(&v, &token_c, VerifyError::Deleted, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_follower_of_one_postgresql_node_sees_a_revoke_made_on_another() {
    let a = spawn_app(Backend::Postgres).await;
    let b = a.another_node().spawn().await;
    let v = verifier_at(&a, &b.endpoint, &b.client, FollowerConfig::default()).await;
    let (id, token_a) = token(&a).await;
    assert!(v.verify(&token_a).await.is_ok());
    revoke(&a, &id).await;
    eventually(&v, &token_a, VerifyError::Revoked, Duration::from_secs(5)).await;
    let delete = format!("/identities/{}?{V}", enc(&id));
    let issued_after = a.issue(&id, &["chat"]).await.body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(v.verify(&issued_after).await.is_ok());
    assert_eq!(a.send(Method::DELETE, &delete, None).await.status, 204);
    eventually(
        &v,
        &issued_after,
        VerifyError::Deleted,
        Duration::from_secs(5),
    )
    .await;
    b.stop().await;
    a.stop().await;
}

/// A hostile or broken endpoint: a snapshot whose `nextLink` names another origin, and answers
/// larger than any real page. The follower never sends a signed request elsewhere and never
/// reads an unbounded answer; it stays stale (fails closed) instead.
#[tokio::test]
async fn a_follower_does_not_follow_a_next_link_elsewhere_nor_read_a_huge_answer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let elsewhere_port = elsewhere.local_addr().expect("addr").port();
    let visits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&visits);
    tokio::spawn(async move {
        while elsewhere.accept().await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let next = format!(
        "http://127.0.0.1:{elsewhere_port}/revocations/snapshot?api-version=2023-10-01&after=x"
    );
    // Well-formed (an unknown field is ignored): only its size may refuse it.
    let huge = format!(
        r#"{{"value":[],"cursor":"1-0","padding":"{}"}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    let app = axum::Router::new()
        .route(
            "/revocations/snapshot",
            axum::routing::get(move || async move {
                axum::Json(serde_json::json!({"value": [], "cursor": "1-0", "nextLink": next}))
            }),
        )
        .route(
            "/huge/revocations/snapshot",
            axum::routing::get(move || async move { huge }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    for path in ["", "huge/"] {
        let cs = ConnectionString::parse(&format!(
            "endpoint=http://127.0.0.1:{port}/{path};accesskey={key}"
        ))
        .expect("connection string");
        let follower = callsign_verify::follower::RevocationFollower::spawn(
            reqwest::Client::new(),
            cs,
            quick(),
        );
        assert!(
            !follower.wait_until_current(Duration::from_secs(2)).await,
            "{path}: a bad snapshot is never taken as current"
        );
        assert_eq!(follower.snapshots_loaded(), 0);
    }
    assert_eq!(visits.load(Ordering::SeqCst), 0, "nothing sent elsewhere");
}

/// Another client holds every waiting place the resource has on the node: the follower's
/// long-polls are refused (503), it falls back to polls that do not wait and stays in contact,
/// so it never turns stale and still sees a revoke.
#[tokio::test]
async fn a_follower_refused_a_waiting_place_keeps_in_contact_without_waiting() {
    let app = TestApp::builder()
        .settings(|s| s.revocation_feed.max_waiting_per_resource = 1)
        .spawn()
        .await;
    let (id, token) = token(&app).await;
    let hog = app.client_with(&app.endpoint, &app.primary_key);
    let position = app
        .send(Method::GET, &format!("/revocations?{V}"), None)
        .await;
    let cursor = position.body["cursor"].as_str().expect("cursor").to_owned();
    let holding = tokio::spawn(async move {
        loop {
            let path = format!("/revocations?{V}&after={cursor}&wait=30");
            hog.send(Method::GET, &path, None).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = app
        .send(
            Method::GET,
            &format!(
                "/revocations?{V}&after={}&wait=5",
                position.body["cursor"].as_str().expect("c")
            ),
            None,
        )
        .await;
    refused.assert_error(503, "ServiceUnavailable");

    let config = FollowerConfig {
        stale_after: Duration::from_secs(3),
        ..quick()
    };
    let v = verifier(&app, config).await;
    // Well past the staleness bound, with every long-poll refused.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!v.revocations().expect("follower").is_stale());
    assert!(v.verify(&token).await.is_ok());
    revoke(&app, &id).await;
    eventually(&v, &token, VerifyError::Revoked, Duration::from_secs(5)).await;
    holding.abort();
}
