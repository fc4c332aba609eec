//! Retries, backoff, `Retry-After` and timeouts, against canned HTTP/1.1 servers on 127.0.0.1.

use std::time::{Duration, Instant};

use callsign_client::{CommunicationUserIdentifier, Error, RetryPolicy};
use tokio::net::TcpListener;

use crate::helpers::{Canned, CannedServer, created, response};

const ID: &str = "8:acs:11111111-1111-1111-1111-111111111111_22222222-2222-2222-2222-222222222222";

fn fast() -> RetryPolicy {
    RetryPolicy::default()
        .max_retries(3)
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(100))
        .max_retry_after(Duration::from_secs(5))
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn unavailable() -> Canned {
    response(
        503,
        &[],
        r#"{"error":{"code":"ServiceUnavailable","message":"Try later."}}"#,
    )
}

#[tokio::test]
async fn a_503_then_201_is_retried_and_succeeds() {
    let server = CannedServer::start(vec![unavailable(), created(ID)]).await;
    let client = server.client(fast(), TIMEOUT);
    let user = client.create_user().await.expect("second attempt succeeds");
    assert_eq!(user.raw_id(), ID);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/identities?api-version=2023-10-01");
        assert!(
            r.header("authorization")
                .is_some_and(|a| a.starts_with("HMAC-SHA256 "))
        );
        assert!(r.header("x-ms-date").is_some());
    }
}

#[tokio::test]
async fn a_retried_request_resends_the_same_body() {
    let server = CannedServer::start(vec![
        unavailable(),
        response(502, &[], ""),
        response(
            200,
            &[],
            r#"{"token":"a.b.c","expiresOn":"2030-01-01T00:00:00+00:00"}"#,
        ),
    ])
    .await;
    let client = server.client(fast(), TIMEOUT);
    let token = client
        .get_token(
            &CommunicationUserIdentifier::new(ID),
            &[callsign_client::CommunicationTokenScope::Chat],
            None,
        )
        .await
        .expect("third attempt succeeds");
    assert_eq!(token.token, "a.b.c");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(r.body, br#"{"scopes":["chat"]}"#);
        assert_eq!(
            r.header("x-ms-content-sha256"),
            requests[0].header("x-ms-content-sha256")
        );
    }
}

#[tokio::test]
async fn a_429_with_retry_after_waits_that_long() {
    let server = CannedServer::start(vec![
        response(429, &[("retry-after", "1")], ""),
        created(ID),
    ])
    .await;
    let client = server.client(fast(), TIMEOUT);
    let started = Instant::now();
    client.create_user().await.expect("succeeds after the wait");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn retry_after_is_capped() {
    let server = CannedServer::start(vec![
        response(429, &[("retry-after", "3600")], ""),
        created(ID),
    ])
    .await;
    let client = server.client(fast().max_retry_after(Duration::from_millis(50)), TIMEOUT);
    let started = Instant::now();
    client.create_user().await.expect("succeeds");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retries_stop_after_the_limit_and_report_the_last_error() {
    let server = CannedServer::start(vec![unavailable()]).await;
    let client = server.client(fast(), TIMEOUT);
    let e = client.create_user().await.expect_err("always 503");
    assert_eq!(e.status(), Some(503));
    assert_eq!(e.code(), Some("ServiceUnavailable"));
    assert_eq!(e.service_message(), Some("Try later."));
    assert_eq!(server.requests().len(), 4, "1 attempt + 3 retries");
}

#[tokio::test]
async fn no_retries_with_the_none_policy() {
    let server = CannedServer::start(vec![unavailable(), created(ID)]).await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    let e = client.create_user().await.expect_err("not retried");
    assert_eq!(e.status(), Some(503));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    for status in [400u16, 401, 404, 409] {
        let server = CannedServer::start(vec![
            response(status, &[], r#"{"error":{"code":"X","message":"no"}}"#),
            created(ID),
        ])
        .await;
        let e = server
            .client(fast(), TIMEOUT)
            .create_user()
            .await
            .expect_err("not retried");
        assert_eq!(e.status(), Some(status));
        assert_eq!(server.requests().len(), 1, "status {status}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    // Find a free port, leave it closed for the first attempt, then serve on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let client = callsign_client::CommunicationIdentityClient::builder(
        callsign_client::ConnectionString::from_parts(
            &format!("http://127.0.0.1:{port}/"),
            crate::helpers::OTHER_KEY,
        )
        .expect("cs"),
    )
    .retry_policy(
        RetryPolicy::default()
            .max_retries(3)
            .initial_backoff(Duration::from_millis(300))
            .max_backoff(Duration::from_millis(300)),
    )
    .build()
    .expect("client");
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("rebind");
        CannedServer::serve(listener, vec![created(ID)])
    });
    let user = client
        .create_user()
        .await
        .expect("a later attempt connects");
    assert_eq!(user.raw_id(), ID);
    let server = opener.await.expect("join");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn an_attempt_that_takes_too_long_times_out_and_is_not_retried() {
    let server = CannedServer::start(vec![Canned::Hang, created(ID)]).await;
    let client = server.client(fast(), Duration::from_millis(300));
    let started = Instant::now();
    let e = client.create_user().await.expect_err("times out");
    assert!(
        matches!(e, Error::Timeout(d) if d == Duration::from_millis(300)),
        "{e:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn an_unexpected_success_status_or_body_is_reported() {
    // The SDKs refuse a create answered with 200.
    let server = CannedServer::start(vec![response(200, &[], r#"{"identity":{"id":"x"}}"#)]).await;
    let e = server
        .client(fast(), TIMEOUT)
        .create_user()
        .await
        .expect_err("200");
    assert!(
        matches!(e, Error::UnexpectedResponse { status: 200, .. }),
        "{e:?}"
    );

    let server = CannedServer::start(vec![response(201, &[], r#"{"nope":1}"#)]).await;
    let e = server
        .client(fast(), TIMEOUT)
        .create_user()
        .await
        .expect_err("bad body");
    assert!(
        matches!(e, Error::UnexpectedResponse { status: 201, .. }),
        "{e:?}"
    );

    let server = CannedServer::start(vec![response(500, &[], "")]).await;
    let e = server
        .client(RetryPolicy::none(), TIMEOUT)
        .create_user()
        .await
        .expect_err("500");
    assert!(
        matches!(e, Error::UnexpectedResponse { status: 500, .. }),
        "{e:?}"
    );
}
