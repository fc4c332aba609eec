//! The revocation follower against a real server. These NEED THE SERVER'S REVOCATION FEED
//! (`GET /revocations`, `GET /revocations/snapshot`): until it is merged they fail, which is
//! why they live in their own test binary (`cargo nextest run -p callsign-verify --test follower`).

use std::time::{Duration, Instant};

use callsign_client::ConnectionString;
use callsign_core::ResourceId;
use callsign_testkit::{Backend, TestApp, enc, spawn_app};
use callsign_verify::{FollowerConfig, StalePolicy, Verifier, VerifyError};
use reqwest::Method;

const V: &str = "api-version=2023-10-01";

async fn verifier(app: &TestApp, config: FollowerConfig) -> Verifier {
    let cs = ConnectionString::parse(&app.connection_string).expect("connection string");
    let v = Verifier::builder(
        app.endpoint.parse().expect("endpoint"),
        ResourceId::parse(&app.resource_id).expect("resource"),
    )
    .http_client(app.client.clone())
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
