//! Clock steps (NTP corrections) on the server. The ±15 minute signing window and token expiry
//! follow the wall clock, read afresh on every request, as ACS does; revocation follows epochs,
//! not time, so no step can bring a revoked token back.

use std::sync::Arc;
use std::time::SystemTime;

use callsign_core::{Clock, FixedClock};
use callsign_testkit::{Backend, TestApp, enc, issue_path};
use reqwest::{Method, StatusCode};
use time::Duration;

const CREATE: &str = "/identities?api-version=2023-10-01";

async fn issue_60(app: &TestApp, id: &str) -> (String, time::OffsetDateTime) {
    let r = app
        .send(
            Method::POST,
            &issue_path(id),
            Some(r#"{"scopes": ["chat"], "expiresInMinutes": 60}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let exp = time::OffsetDateTime::parse(
        r.body["expiresOn"].as_str().expect("expiresOn"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("date");
    (r.body["token"].as_str().expect("token").to_owned(), exp)
}

async fn a_backward_step_keeps_tokens_exactly_as_valid_as_their_exp_says(backend: Backend) {
    let start = time::OffsetDateTime::now_utc();
    let clock = Arc::new(FixedClock::new(start));
    let app = TestApp::builder()
        .backend(backend)
        .clock(clock.clone())
        .spawn()
        .await;
    let id = app.create_user().await;
    let (token, exp) = issue_60(&app, &id).await;

    // The server's clock was 20 minutes fast; NTP steps it back.
    clock.advance(Duration::minutes(-20));
    let now = SystemTime::from(clock.now());
    // Clients in step with the corrected clock are served at once...
    let r = app.send_dated(Method::POST, CREATE, None, now).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // ...a request dated by the old, fast clock is now outside the window...
    let r = app
        .send_dated(
            Method::POST,
            CREATE,
            None,
            now + std::time::Duration::from_secs(20 * 60),
        )
        .await;
    r.assert_error(401, "Denied");
    // ...and the token issued before the step is exactly as valid as its exp says: no
    // not-before to trip over, valid until exp by the wall clock.
    assert_eq!(app.introspect(&token).await["active"], true);
    clock.advance(exp - clock.now() - Duration::seconds(1));
    assert_eq!(app.introspect(&token).await["active"], true);
    clock.advance(Duration::seconds(1));
    assert_eq!(app.introspect(&token).await["reason"], "expired");
    app.stop().await;
}

async fn a_forward_step_expires_tokens_by_their_exp_and_dates_new_ones_from_the_new_time(
    backend: Backend,
) {
    let start = time::OffsetDateTime::now_utc();
    let clock = Arc::new(FixedClock::new(start));
    let app = TestApp::builder()
        .backend(backend)
        .clock(clock.clone())
        .spawn()
        .await;
    let id = app.create_user().await;
    let (old, _) = issue_60(&app, &id).await;

    // A slow clock stepped 90 minutes forward: the 60-minute token is past its exp.
    clock.advance(Duration::minutes(90));
    assert_eq!(app.introspect(&old).await["reason"], "expired");
    let r = app
        .send_dated(Method::POST, CREATE, None, SystemTime::from(clock.now()))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (new, exp) = issue_60(&app, &id).await;
    let lifetime = exp - clock.now();
    assert!(
        (Duration::minutes(59)..=Duration::minutes(60)).contains(&lifetime),
        "{lifetime}"
    );
    assert_eq!(app.introspect(&new).await["active"], true);
    app.stop().await;
}

async fn no_step_brings_a_revoked_token_back_or_revokes_a_later_one(backend: Backend) {
    let clock = Arc::new(FixedClock::new(time::OffsetDateTime::now_utc()));
    let app = TestApp::builder()
        .backend(backend)
        .clock(clock.clone())
        .spawn()
        .await;
    let id = app.create_user().await;
    let (before, _) = issue_60(&app, &id).await;
    let r = app
        .send(
            Method::POST,
            &format!(
                "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
                enc(&id)
            ),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The clock steps back past the revocation: a token issued now carries an earlier iat than
    // the revocation, yet it is in force (epochs, not times), and the old one stays revoked.
    clock.advance(Duration::minutes(-10));
    let (after, _) = issue_60(&app, &id).await;
    assert_eq!(app.introspect(&after).await["active"], true);
    assert_eq!(app.introspect(&before).await["reason"], "revoked");
    clock.advance(Duration::minutes(30));
    assert_eq!(app.introspect(&after).await["active"], true);
    assert_eq!(app.introspect(&before).await["reason"], "revoked");
    app.stop().await;
}

on_every_backend!(
    a_backward_step_keeps_tokens_exactly_as_valid_as_their_exp_says,
    a_forward_step_expires_tokens_by_their_exp_and_dates_new_ones_from_the_new_time,
    no_step_brings_a_revoked_token_back_or_revokes_a_later_one,
);
