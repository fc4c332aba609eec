//! Signing-key rotation on a running server, on the injected clock: a new key is published
//! before it signs, signs once its time has come, and the key it replaces verifies (through the
//! JWKS, with an independent JWT library, and by introspection) until its tokens have expired,
//! then is retired.

use std::sync::Arc;
use std::time::Duration;

use callsign_core::token::Algorithm;
use callsign_core::{Clock as _, FixedClock};
use callsign_server::{ACTIVATION_LEAD, MAX_TOKEN_LIFETIME, RETIRE_MARGIN, rotate_signing_key};
use callsign_store::{KeyProtection, PostgresOptions, PostgresStore, Store};
use callsign_testkit::{Backend, TestApp};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use reqwest::StatusCode;

/// The refresh interval of these servers.
const REFRESH: Duration = Duration::from_millis(100);

async fn spawn(backend: Backend, clock: Arc<FixedClock>, rotation: Option<Duration>) -> TestApp {
    TestApp::builder()
        .backend(backend)
        .clock(clock)
        .settings(move |s| {
            s.key_refresh = REFRESH;
            s.signing_key_rotation = rotation;
        })
        .spawn()
        .await
}

/// A second handle on the server's store, as another node or `callsign signing-key` has.
async fn store_of(app: &TestApp) -> Arc<dyn Store> {
    match &app.database {
        None => Arc::new(
            callsign_store::open_embedded_store_with(app.data_dir.path(), KeyProtection::plain())
                .expect("open the data dir's store"),
        ),
        Some(db) => Arc::new(
            PostgresStore::connect(&db.url(), &PostgresOptions::default())
                .await
                .expect("connect"),
        ),
    }
}

async fn jwks(app: &TestApp) -> JwkSet {
    app.client
        .get(format!("{}.well-known/jwks.json", app.endpoint))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json")
}

async fn published(app: &TestApp) -> Vec<String> {
    jwks(app)
        .await
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect()
}

/// Waits (up to a few refresh intervals) until the published kids satisfy `ok`.
async fn until_published(app: &TestApp, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    for _ in 0..50 {
        let kids = published(app).await;
        if ok(&kids) {
            return kids;
        }
        tokio::time::sleep(REFRESH).await;
    }
    panic!("the JWKS never matched: {:?}", published(app).await);
}

async fn issue(app: &TestApp, id: &str) -> String {
    let r = app.issue(id, &["chat"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["token"].as_str().expect("token").to_owned()
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

/// Verifies `token` with `jsonwebtoken` against the server's JWKS.
async fn verifies(app: &TestApp, token: &str) -> bool {
    let set = jwks(app).await;
    let header = jsonwebtoken::decode_header(token).expect("header");
    let Some(jwk) = header.kid.as_deref().and_then(|k| set.find(k)) else {
        return false;
    };
    let key = DecodingKey::from_jwk(jwk).expect("usable JWK");
    let mut validation = Validation::new(header.alg);
    validation.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).is_ok()
}

fn span(d: Duration) -> time::Duration {
    time::Duration::try_from(d).expect("duration")
}

async fn a_rotated_key_is_published_before_it_signs_and_the_old_one_until_its_tokens_expire(
    backend: Backend,
) {
    let clock = Arc::new(FixedClock::new(time::OffsetDateTime::now_utc()));
    let app = spawn(backend, Arc::clone(&clock), None).await;
    let id = app.create_user().await;
    let old_token = issue(&app, &id).await;
    let old = kid(&old_token);

    let store = store_of(&app).await;
    let new = rotate_signing_key(
        store.as_ref(),
        Algorithm::Es256,
        clock.now(),
        callsign_store::Actor::operator(),
    )
    .await
    .expect("rotate");
    assert!(new.added);
    until_published(&app, |kids| kids.contains(&new.kid) && kids.contains(&old)).await;
    assert_eq!(
        kid(&issue(&app, &id).await),
        old,
        "a pending key does not sign"
    );

    clock.advance(span(ACTIVATION_LEAD));
    let mut new_token = issue(&app, &id).await;
    for _ in 0..50 {
        if kid(&new_token) == new.kid {
            break;
        }
        tokio::time::sleep(REFRESH).await;
        new_token = issue(&app, &id).await;
    }
    assert_eq!(kid(&new_token), new.kid, "the node switched to the new key");
    assert!(verifies(&app, &new_token).await);
    assert!(
        verifies(&app, &old_token).await,
        "the old key still verifies"
    );
    assert_eq!(app.introspect(&old_token).await["active"], true);

    // Until the retirement bound the previous key stays published (its tokens have expired).
    let bound = span(MAX_TOKEN_LIFETIME + RETIRE_MARGIN);
    clock.advance(bound - time::Duration::seconds(1));
    assert_eq!(app.introspect(&old_token).await["reason"], "expired");
    tokio::time::sleep(REFRESH * 3).await;
    assert!(published(&app).await.contains(&old));
    clock.advance(time::Duration::seconds(1));
    let kids = until_published(&app, |kids| !kids.contains(&old)).await;
    assert_eq!(kids, std::slice::from_ref(&new.kid));
    // Unpublished at its bound; deleted by the same refresh, which may finish a moment later.
    let mut gone = false;
    for _ in 0..50 {
        let stored = store.signing_keys().await.expect("read");
        if stored.iter().all(|k| k.kid != old) {
            gone = true;
            break;
        }
        tokio::time::sleep(REFRESH).await;
    }
    assert!(gone, "a retired key is gone from the store");
    assert_eq!(kid(&issue(&app, &id).await), new.kid);
    store.close().await;
    app.stop().await;
}

async fn a_second_rotation_while_one_is_pending_changes_nothing(backend: Backend) {
    let clock = Arc::new(FixedClock::new(time::OffsetDateTime::now_utc()));
    let app = spawn(backend, Arc::clone(&clock), None).await;
    let store = store_of(&app).await;
    let first = rotate_signing_key(
        store.as_ref(),
        Algorithm::Es256,
        clock.now(),
        callsign_store::Actor::operator(),
    )
    .await
    .expect("rotate");
    let second = rotate_signing_key(
        store.as_ref(),
        Algorithm::Es256,
        clock.now(),
        callsign_store::Actor::operator(),
    )
    .await
    .expect("rotate again");
    assert!(first.added && !second.added);
    assert_eq!(
        (second.kid, second.activates_at),
        (first.kid, first.activates_at)
    );
    assert_eq!(store.signing_keys().await.expect("read").len(), 2);
    store.close().await;
    app.stop().await;
}

async fn scheduled_rotation_adds_a_key_once_the_active_one_has_signed_for_the_period(
    backend: Backend,
) {
    let clock = Arc::new(FixedClock::new(time::OffsetDateTime::now_utc()));
    let period = Duration::from_secs(7 * 24 * 3600);
    let app = spawn(backend, Arc::clone(&clock), Some(period)).await;
    let id = app.create_user().await;
    let first = until_published(&app, |kids| kids.len() == 1).await;
    tokio::time::sleep(REFRESH * 3).await;
    assert_eq!(published(&app).await, first, "not due yet");

    clock.advance(span(period));
    let kids = until_published(&app, |kids| kids.len() == 2).await;
    let next = kids
        .iter()
        .find(|k| **k != first[0])
        .expect("a new key")
        .clone();
    assert_eq!(
        kid(&issue(&app, &id).await),
        first[0],
        "pending, not signing"
    );
    tokio::time::sleep(REFRESH * 3).await;
    assert_eq!(published(&app).await.len(), 2, "one pending key at a time");

    clock.advance(span(ACTIVATION_LEAD));
    for _ in 0..50 {
        if kid(&issue(&app, &id).await) == next {
            break;
        }
        tokio::time::sleep(REFRESH).await;
    }
    assert_eq!(kid(&issue(&app, &id).await), next);
    clock.advance(span(MAX_TOKEN_LIFETIME + RETIRE_MARGIN));
    let kids = until_published(&app, |kids| !kids.contains(&first[0])).await;
    assert_eq!(kids, [next]);
    app.stop().await;
}

on_every_backend!(
    a_rotated_key_is_published_before_it_signs_and_the_old_one_until_its_tokens_expire,
    a_second_rotation_while_one_is_pending_changes_nothing,
    scheduled_rotation_adds_a_key_once_the_active_one_has_signed_for_the_period,
);
