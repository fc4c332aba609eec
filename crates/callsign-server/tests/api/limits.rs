//! Limits an attacker meets in the request pipeline: the head's size, the Authorization shape,
//! failed authentications per address, ACS-style throttling. Connection-level deadlines and
//! the cap are tested against the binary (`crates/callsign/tests/cli/hostile.rs`).

use std::time::Duration;

use callsign_server::ThrottleConfig;
use callsign_testkit::{Backend, Reply, SendExt, TestApp, enc, issue_path, spawn_app};
use reqwest::{Method, StatusCode};

const CREATE: &str = "/identities?api-version=2023-10-01";

async fn with_auth(app: &TestApp, authorization: &str) -> Reply {
    app.signed_with(
        Method::POST,
        CREATE,
        None,
        &app.primary_key,
        "application/json",
        Some(authorization),
    )
    .reply()
    .await
}

async fn denials_say_only_what_acs_says(backend: Backend) {
    let app = spawn_app(backend).await;
    let sig = "A".repeat(43) + "=";
    for auth in [
        format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"),
        // Anything but exactly the three signed headers is refused before any hashing.
        format!(
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256;user-agent&Signature={sig}"
        ),
        format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;host&Signature={sig}"),
        format!(
            "HMAC-SHA256 SignedHeaders={}x-ms-content-sha256&Signature={sig}",
            "host;".repeat(50)
        ),
        format!(
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={}",
            "A".repeat(600)
        ),
        "Bearer abc".to_owned(),
    ] {
        let r = with_auth(&app, &auth).await;
        r.assert_error(401, "Denied");
        assert_eq!(
            r.body["error"]["message"], "Denied by the resource provider.",
            "no reason for an attacker to tune against: {auth}"
        );
    }
    assert_eq!(app.identity_count().await, 0);
    app.stop().await;
}

async fn a_duplicated_authentication_header_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app
        .signed(Method::POST, CREATE, None, &app.primary_key)
        .header("x-ms-date", "Mon, 01 Jan 2024 00:00:00 GMT")
        .reply()
        .await;
    r.assert_error(401, "Denied");
    assert_eq!(app.identity_count().await, 0);
    app.stop().await;
}

async fn oversized_heads_and_targets_are_refused_with_the_error_body(backend: Backend) {
    let app = spawn_app(backend).await;
    // 40 KB of headers: over the 32 KiB limit, within what hyper buffers.
    let mut req = app.signed(Method::POST, CREATE, None, &app.primary_key);
    for i in 0..40 {
        req = req.header(format!("x-pad-{i}"), "p".repeat(1000));
    }
    let r = req.reply().await;
    r.assert_error(431, "RequestHeaderFieldsTooLarge");
    // Too many header fields.
    let mut req = app.signed(Method::POST, CREATE, None, &app.primary_key);
    for i in 0..70 {
        req = req.header(format!("x-n-{i}"), "1");
    }
    let r = req.reply().await;
    r.assert_error(431, "RequestHeaderFieldsTooLarge");
    // A request-target longer than any ACS path.
    let long = issue_path(&"8:acs:x_".repeat(300));
    let r = app
        .send(Method::POST, &long, Some(r#"{"scopes":["chat"]}"#))
        .await;
    r.assert_error(414, "UriTooLong");
    assert_eq!(app.identity_count().await, 0);
    app.stop().await;
}

async fn failed_authentications_per_address_are_limited_before_any_signature_work(
    backend: Backend,
) {
    let app = TestApp::builder()
        .backend(backend)
        .settings(|s| s.auth_failures_per_minute = 3)
        .spawn()
        .await;
    let bad = format!(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={}=",
        "A".repeat(43)
    );
    for _ in 0..3 {
        with_auth(&app, &bad).await.assert_error(401, "Denied");
    }
    // Now even a correctly signed request from this address is turned away, without HMAC work.
    let r = app.send(Method::POST, CREATE, None).await;
    r.assert_error(429, "TooManyRequests");
    let retry: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(app.identity_count().await, 0);
    // Unauthenticated endpoints are not affected.
    let base = app.endpoint.trim_end_matches('/').to_owned();
    let health = app
        .client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    app.stop().await;
}

async fn throttled_requests_get_429_with_retry_after_and_change_nothing(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("throttle.toml");
    std::fs::write(
        &file,
        "[issue]\nlimit = 2\nwindow_seconds = 2\n[revoke]\nlimit = 1\nwindow_seconds = 60\n",
    )
    .expect("write");
    let config = ThrottleConfig::parse(file.to_str().expect("utf-8")).expect("valid");
    let app = TestApp::builder()
        .backend(backend)
        .settings(move |s| s.throttle = config)
        .spawn()
        .await;

    // Plain creates are another class: not throttled here.
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_user().await);
    }
    // Issue and create-with-token share the issue bucket (2 at once, 1 per second after).
    assert_eq!(app.issue(&ids[0], &["chat"]).await.status, StatusCode::OK);
    let r = app
        .send(
            Method::POST,
            CREATE,
            Some(r#"{"createTokenWithScopes": ["chat"]}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = app.identity_count().await;
    let r = app
        .send(
            Method::POST,
            CREATE,
            Some(r#"{"createTokenWithScopes": ["chat"]}"#),
        )
        .await;
    r.assert_error(429, "TooManyRequests");
    assert_eq!(
        app.identity_count().await,
        before,
        "a throttled create writes nothing"
    );
    let r = app.issue(&ids[1], &["chat"]).await;
    r.assert_error(429, "TooManyRequests");
    let retry: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    // Served again once the stated time has passed.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(app.issue(&ids[1], &["chat"]).await.status, StatusCode::OK);

    // Revoke: one per minute; the second is refused and its token stays in force.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = app.issue(&ids[2], &["chat"]).await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.body);
    let revoke = |id: &str| {
        format!(
            "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
            enc(id)
        )
    };
    let r = app.send(Method::POST, &revoke(&ids[3]), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.send(Method::POST, &revoke(&ids[2]), None).await;
    r.assert_error(429, "TooManyRequests");
    let t = token.body["token"].as_str().expect("token");
    assert_eq!(app.introspect(t).await["active"], true);
    app.stop().await;
}

async fn a_body_announced_under_the_empty_body_hash_is_refused_unread(backend: Backend) {
    let app = spawn_app(backend).await;
    // A correctly signed request for no body, replayed with a body announced: the signature
    // does not cover the length, so this is what a replayer could send.
    let r = app
        .signed(Method::POST, CREATE, None, &app.primary_key)
        .header("content-type", "application/json")
        .body(r#"{"createTokenWithScopes": ["chat"]}"#)
        .reply()
        .await;
    r.assert_error(401, "Denied");
    assert_eq!(app.identity_count().await, 0);
    app.stop().await;
}

on_every_backend!(
    denials_say_only_what_acs_says,
    a_duplicated_authentication_header_is_refused,
    oversized_heads_and_targets_are_refused_with_the_error_body,
    failed_authentications_per_address_are_limited_before_any_signature_work,
    throttled_requests_get_429_with_retry_after_and_change_nothing,
    a_body_announced_under_the_empty_body_hash_is_refused_unread,
);
