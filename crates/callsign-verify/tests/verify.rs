//! The verifier against real servers (through the test kit): every algorithm, the forged-token
//! matrix, time with leeway, the JWKS cache (on a local JWKS endpoint that counts its fetches)
//! and the middleware through a real axum app.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use callsign_core::token::{Algorithm, VerifiedToken};
use callsign_core::{FixedClock, ResourceId};
use callsign_testkit::{Backend, TestApp, spawn_app};
use callsign_verify::middleware::ChatScope;
use callsign_verify::{
    JwksConfig, Scope, Token, Verifier, VerifierBuilder, VerifyError, VerifyLayer,
};
use hmac::{Hmac, Mac};
use reqwest::Url;
use serde_json::Value;

async fn server(alg: Algorithm) -> TestApp {
    TestApp::builder()
        .settings(move |s| s.signing_alg = alg)
        .spawn()
        .await
}

fn resource(app: &TestApp) -> ResourceId {
    ResourceId::parse(&app.resource_id).expect("resource id")
}

fn verifier_for(app: &TestApp) -> VerifierBuilder {
    Verifier::builder(app.endpoint.parse().expect("endpoint"), resource(app))
        .http_client(app.client.clone())
}

/// A new identity of `app` and a token for it with `scopes`.
async fn token(app: &TestApp, scopes: &[&str]) -> (String, String) {
    let id = app.create_user().await;
    let reply = app.issue(&id, scopes).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let token = reply.body["token"].as_str().expect("token").to_owned();
    (id, token)
}

fn header_and_payload(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next = || -> Value {
        serde_json::from_slice(&B64URL.decode(parts.next().expect("part")).expect("b64"))
            .expect("json")
    };
    (next(), next())
}

fn encode(v: &Value) -> String {
    B64URL.encode(serde_json::to_vec(v).expect("json"))
}

#[tokio::test]
async fn tokens_of_every_algorithm_verify_into_typed_claims() {
    for alg in [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256] {
        let app = server(alg).await;
        let verifier = verifier_for(&app).build().expect("verifier");
        let (id, token) = token(&app, &["chat", "voip"]).await;
        let claims = verifier
            .verify_scopes(&token, &[Scope::Chat, Scope::Voip])
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims.identity.to_string(), id, "{alg}");
        assert_eq!(claims.identity.resource(), resource(&app));
        assert!(claims.scopes.contains(Scope::Chat));
        assert_eq!(claims.epoch, 0);
        assert!(claims.expires_at > time::OffsetDateTime::now_utc());
        assert_eq!(header_and_payload(&token).0["alg"], alg.jose_name());
    }
}

#[tokio::test]
async fn forged_tokens_are_refused_each_with_its_own_error() {
    let app = spawn_app(Backend::Sqlite).await;
    let verifier = verifier_for(&app).build().expect("verifier");
    let (_, token) = token(&app, &["voip"]).await;
    let (header, payload) = header_and_payload(&token);
    let kid = header["kid"].as_str().expect("kid").to_owned();
    let sig = token.rsplit('.').next().expect("sig");
    let signed = &token[..token.len() - sig.len() - 1];
    assert!(verifier.verify(&token).await.is_ok());

    let unsigned = format!(
        "{}.{}.",
        encode(&serde_json::json!({"alg": "none", "kid": kid, "typ": "JWT"})),
        encode(&payload)
    );
    // HS256 with the published public key as the shared secret (the key-confusion attack).
    let jwks: Value = app
        .client
        .get(format!("{}.well-known/jwks.json", app.endpoint))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    let secret = serde_json::to_vec(&jwks["keys"][0]).expect("jwk bytes");
    let hs_input = format!(
        "{}.{}",
        encode(&serde_json::json!({"alg": "HS256", "kid": kid, "typ": "JWT"})),
        encode(&payload)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).expect("hmac");
    mac.update(hs_input.as_bytes());
    let hs256 = format!("{hs_input}.{}", B64URL.encode(mac.finalize().into_bytes()));
    let with_header = |h: Value| format!("{}.{}.{sig}", encode(&h), encode(&payload));
    let unknown_kid =
        with_header(serde_json::json!({"alg": "ES256", "kid": "nobody", "typ": "JWT"}));
    let wrong_alg = with_header(serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"}));
    let mut sig_bytes = B64URL.decode(sig).expect("sig");
    sig_bytes[10] ^= 1;
    let bad_signature = format!("{signed}.{}", B64URL.encode(&sig_bytes));
    let mut more = payload.clone();
    more["acsScope"] = "chat,voip".into();
    let tampered = format!(
        "{}.{}.{sig}",
        signed.split('.').next().expect("h"),
        encode(&more)
    );

    let cases = [
        ("alg none", unsigned, VerifyError::AlgNone),
        (
            "HS256 with the public key",
            hs256,
            VerifyError::SymmetricAlgorithm,
        ),
        ("unknown kid", unknown_kid, VerifyError::UnknownKid),
        (
            "header alg not the key's",
            wrong_alg,
            VerifyError::AlgorithmMismatch,
        ),
        ("bad signature", bad_signature, VerifyError::BadSignature),
        ("tampered payload", tampered, VerifyError::BadSignature),
        ("not a JWS", "a.b".to_owned(), VerifyError::Malformed),
    ];
    for (what, forged, expected) in cases {
        assert_eq!(verifier.verify(&forged).await, Err(expected), "{what}");
    }
    assert_eq!(
        verifier.verify_scopes(&token, &[Scope::Chat]).await,
        Err(VerifyError::MissingScope(Scope::Chat))
    );
    let other_issuer = verifier_for(&app)
        .issuer("urn:callsign:someone-else")
        .build()
        .expect("v");
    assert_eq!(
        other_issuer.verify(&token).await,
        Err(VerifyError::WrongIssuer)
    );
    let other_resource =
        Verifier::builder(app.endpoint.parse().expect("url"), ResourceId::new_random())
            .http_client(app.client.clone())
            .issuer(payload["iss"].as_str().expect("iss"))
            .build()
            .expect("v");
    assert_eq!(
        other_resource.verify(&token).await,
        Err(VerifyError::WrongResource)
    );
}

#[tokio::test]
async fn expiry_and_not_before_are_judged_with_the_leeway() {
    let now = time::OffsetDateTime::now_utc();
    // The server issues 24-hour tokens by its clock: 30 s ago by ours they expired.
    let clock = Arc::new(FixedClock::new(
        now - time::Duration::hours(24) - time::Duration::seconds(30),
    ));
    let app = TestApp::builder().clock(clock.clone()).spawn().await;
    let (_, expired) = token(&app, &["chat"]).await;
    clock.advance(time::Duration::hours(24) + time::Duration::seconds(60));
    let (_, early) = token(&app, &["chat"]).await;
    let strict = verifier_for(&app)
        .leeway(Duration::ZERO)
        .build()
        .expect("v");
    assert_eq!(strict.verify(&expired).await, Err(VerifyError::Expired));
    assert_eq!(strict.verify(&early).await, Err(VerifyError::NotYetValid));
    let lenient = verifier_for(&app)
        .leeway(Duration::from_secs(60))
        .build()
        .expect("v");
    assert!(lenient.verify(&expired).await.is_ok());
    assert!(lenient.verify(&early).await.is_ok());
    // The verifier's own clock can be injected too.
    let future = verifier_for(&app)
        .leeway(Duration::ZERO)
        .clock(Arc::new(FixedClock::new(now + time::Duration::days(2))))
        .build()
        .expect("v");
    assert_eq!(future.verify(&early).await, Err(VerifyError::Expired));
}

/// A JWKS endpoint of our own: serves a document with a Cache-Control value, or a status, and
/// counts the fetches.
struct LocalJwks {
    url: Url,
    doc: Arc<Mutex<String>>,
    cache_control: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicU64>,
}

async fn local_jwks(doc: String) -> LocalJwks {
    let doc = Arc::new(Mutex::new(doc));
    let cache_control = Arc::new(Mutex::new("public, max-age=300".to_owned()));
    let status = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicU64::new(0));
    let (d, c, s, h) = (
        doc.clone(),
        cache_control.clone(),
        status.clone(),
        hits.clone(),
    );
    let router = axum::Router::new().route(
        "/jwks",
        get(move || {
            let (d, c, s, h) = (d.clone(), c.clone(), s.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                // Slow enough that concurrent verifiers overlap with the fetch.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let status =
                    axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).expect("status");
                let cc = c.lock().expect("lock").clone();
                let body = d.lock().expect("lock").clone();
                (status, [(axum::http::header::CACHE_CONTROL, cc)], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/jwks", listener.local_addr().expect("addr"))
        .parse()
        .expect("url");
    tokio::spawn(async move { axum::serve(listener, router).await });
    LocalJwks {
        url,
        doc,
        cache_control,
        status,
        hits,
    }
}

async fn jwks_text(app: &TestApp) -> String {
    app.client
        .get(format!("{}.well-known/jwks.json", app.endpoint))
        .send()
        .await
        .expect("jwks")
        .text()
        .await
        .expect("text")
}

fn with_kid(token: &str, kid: &str) -> String {
    let (mut header, _) = header_and_payload(token);
    header["kid"] = kid.into();
    let rest = token.split_once('.').expect("dot").1;
    format!("{}.{rest}", encode(&header))
}

#[tokio::test]
async fn an_unknown_kid_refreshes_at_most_once_per_cooldown_with_one_fetch_in_flight() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token) = token(&app, &["chat"]).await;
    let jwks = local_jwks(r#"{"keys":[]}"#.to_owned()).await;
    let config = JwksConfig {
        cooldown: Duration::from_millis(500),
        ..JwksConfig::default()
    };
    let verifier = Arc::new(
        verifier_for(&app)
            .jwks_url(jwks.url.clone())
            .jwks_config(config)
            .build()
            .expect("v"),
    );
    // The key is not published yet (a node that has not rotated it in, say).
    assert_eq!(verifier.verify(&token).await, Err(VerifyError::UnknownKid));
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1);
    *jwks.doc.lock().expect("lock") = jwks_text(&app).await;
    for _ in 0..5 {
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::UnknownKid));
    }
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        1,
        "no refresh within the cooldown"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Twenty at once after the cooldown: one fetch, every one of them served by it.
    let all = futures_util_join(verifier.clone(), &token, 20).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2);
    // A kid nobody publishes: refused, at most one more fetch per cooldown.
    let stranger = with_kid(&token, "nobody");
    for _ in 0..5 {
        assert_eq!(
            verifier.verify(&stranger).await,
            Err(VerifyError::UnknownKid)
        );
    }
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let all = futures_util_join(verifier.clone(), &stranger, 10).await;
    assert!(all.iter().all(|r| *r == Err(VerifyError::UnknownKid)));
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 3);
    assert_eq!(verifier.jwks().fetch_count(), 3);
}

async fn futures_util_join(
    verifier: Arc<Verifier>,
    token: &str,
    n: usize,
) -> Vec<Result<VerifiedToken, VerifyError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (v, t) = (verifier.clone(), token.to_owned());
            tokio::spawn(async move { v.verify(&t).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn the_jwks_is_kept_for_its_max_age_and_served_while_the_endpoint_is_down() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, token) = token(&app, &["chat"]).await;
    let jwks = local_jwks(jwks_text(&app).await).await;
    *jwks.cache_control.lock().expect("lock") = "public, max-age=1".to_owned();
    let config = JwksConfig {
        min_ttl: Duration::ZERO,
        cooldown: Duration::ZERO,
        ..JwksConfig::default()
    };
    let verifier = verifier_for(&app)
        .jwks_url(jwks.url.clone())
        .jwks_config(config)
        .build()
        .expect("v");
    for _ in 0..5 {
        assert!(verifier.verify(&token).await.is_ok());
    }
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1, "kept for max-age");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(
        jwks.hits.load(Ordering::SeqCst),
        2,
        "fetched again after max-age"
    );
    // The endpoint fails: the keys fetched last keep verifying.
    jwks.status.store(503, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 3, "it tried");
    assert!(verifier.verify(&token).await.is_ok());
    // With nothing ever fetched, a verifier says it has no keys (503), not that the key is
    // unknown.
    let empty = verifier_for(&app)
        .jwks_url(jwks.url.clone())
        .build()
        .expect("v");
    assert_eq!(
        empty.verify(&token).await,
        Err(VerifyError::KeysUnavailable)
    );
}

#[tokio::test]
async fn the_layer_and_the_extractor_answer_401_403_or_hand_over_the_claims() {
    let app = spawn_app(Backend::Sqlite).await;
    let verifier = Arc::new(verifier_for(&app).build().expect("v"));
    let layered = axum::Router::new()
        .route(
            "/layer",
            get(|Extension(t): Extension<VerifiedToken>| async move { t.identity.to_string() }),
        )
        .layer(VerifyLayer::new(verifier.clone(), &[Scope::Chat]));
    let extracted = axum::Router::new()
        .route(
            "/extract",
            get(|t: Token<ChatScope>| async move { t.identity.to_string() }),
        )
        .layer(Extension(verifier));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, layered.merge(extracted)).await });

    let (chat_id, chat) = token(&app, &["chat"]).await;
    let (_, voip) = token(&app, &["voip"]).await;
    let http = reqwest::Client::new();
    for path in ["/layer", "/extract"] {
        let call = |auth: Option<String>| {
            let mut req = http.get(format!("{base}{path}"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            req.send()
        };
        let none = call(None).await.expect("send");
        assert_eq!(none.status(), 401, "{path}");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let body: Value = none.json().await.expect("json");
        assert_eq!(body["error"]["code"], "MissingToken");

        let bad = call(Some("Bearer e30.e30.AA".into())).await.expect("send");
        assert_eq!(bad.status(), 401, "{path}");
        let body: Value = bad.json().await.expect("json");
        assert_eq!(body["error"]["code"], "MalformedToken", "{path}");

        let unsigned = format!("{}.e30.", encode(&serde_json::json!({"alg": "none"})));
        let r = call(Some(format!("Bearer {unsigned}")))
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "UnsignedToken");

        let forbidden = call(Some(format!("Bearer {voip}"))).await.expect("send");
        assert_eq!(forbidden.status(), 403, "{path}");
        assert!(
            forbidden.headers()["www-authenticate"]
                .to_str()
                .expect("ascii")
                .contains("insufficient_scope")
        );
        let body: Value = forbidden.json().await.expect("json");
        assert_eq!(body["error"]["code"], "InsufficientScope");

        let ok = call(Some(format!("Bearer {chat}"))).await.expect("send");
        assert_eq!(ok.status(), 200, "{path}");
        assert_eq!(ok.text().await.expect("text"), chat_id);
    }
}

#[tokio::test]
async fn each_resource_signs_with_its_own_issuer_which_its_verifier_expects() {
    let app = spawn_app(Backend::Sqlite).await;
    let (second, client) = app.add_resource("second", None).await;
    let id = client.create_user().await;
    let reply = client.issue(&id, &["chat"]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let theirs = reply.body["token"].as_str().expect("token").to_owned();
    let (_, payload) = header_and_payload(&theirs);
    assert_eq!(payload["iss"], format!("urn:callsign:{}", second.id));
    // The second resource's verifier with its defaults accepts it...
    let own = Verifier::builder(app.endpoint.parse().expect("url"), second.id)
        .http_client(app.client.clone())
        .build()
        .expect("v");
    let claims = own.verify(&theirs).await.expect("verifies");
    assert_eq!(claims.identity.to_string(), id);
    // ...the default resource's refuses it by its issuer.
    assert_eq!(
        verifier_for(&app).build().expect("v").verify(&theirs).await,
        Err(VerifyError::WrongIssuer)
    );
    // And the default resource's tokens keep their own issuer.
    let (_, mine) = token(&app, &["chat"]).await;
    assert_eq!(
        header_and_payload(&mine).1["iss"],
        format!("urn:callsign:{}", app.resource_id)
    );
}
