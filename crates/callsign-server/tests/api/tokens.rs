//! Issued tokens: their claims, their verification by an independent JWT library through the
//! JWKS, the Python SDK's base64 quirk, and exact revocation.

use std::sync::Arc;

use base64::Engine as _;
use callsign_core::token::Algorithm;
use callsign_testkit::{Backend, TestApp, claims, enc, issue_path, spawn_app};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use reqwest::{Method, StatusCode};
use serde_json::Value;

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

fn verify(token: &str, set: &JwkSet) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("header");
    let kid = header.kid.expect("kid in header");
    let jwk = set.find(&kid).expect("kid published in the JWKS");
    let key = DecodingKey::from_jwk(jwk).expect("usable JWK");
    let mut validation = Validation::new(header.alg);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("token verifies against the JWKS")
        .claims
}

async fn tokens_of_every_algorithm_verify_against_the_jwks(backend: Backend) {
    for (alg, name) in [
        (Algorithm::Es256, "ES256"),
        (Algorithm::EdDsa, "EdDSA"),
        (Algorithm::Rs256, "RS256"),
    ] {
        let app = TestApp::builder()
            .backend(backend)
            .settings(move |s| {
                s.signing_alg = alg;
                s.location = "westeurope".into();
            })
            .spawn()
            .await;
        let id = app.create_user().await;
        let r = app.issue(&id, &["chat", "voip"]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let token = r.body["token"].as_str().expect("token");
        let header = jsonwebtoken::decode_header(token).expect("header");
        assert_eq!(format!("{:?}", header.alg), name);
        let set = jwks(&app).await;
        let c = verify(token, &set);
        assert_eq!(c["sub"], id.as_str());
        assert_eq!(c["skypeid"], id.trim_start_matches("8:"));
        assert_eq!(c["resourceId"], app.resource_id.as_str());
        assert_eq!(c["resourceLocation"], "westeurope");
        assert_eq!(c["acsScope"], "chat,voip");
        assert_eq!(c["scp"], 1792);
        assert_eq!(c["csi"], c["iat"].to_string().as_str());
        assert_eq!(
            c["iss"],
            format!("urn:callsign:{}", app.resource_id).as_str()
        );
        assert!(c["jti"].as_str().is_some_and(|j| j.len() == 36));
        assert_eq!(c["epoch"], 0);
        app.stop().await;
    }
}

async fn a_forged_token_does_not_verify_and_is_not_active(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_user().await;
    let r = app.issue(&id, &["chat"]).await;
    let token = r.body["token"].as_str().expect("token");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = claims(token);
    claims["acsScope"] = "chat,voip".into();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = parts.join(".");
    let i = app.introspect(&forged).await;
    assert_eq!(i["active"], false);
    assert_eq!(i["reason"], "signature");
    assert_eq!(app.introspect("not a token").await["reason"], "malformed");
    app.stop().await;
}

/// Python's SDK decodes the payload with `base64.b64decode(parts[1] + "==")`, which drops `-`
/// and `_`: no payload may contain them.
async fn payloads_never_contain_characters_python_drops(backend: Backend) {
    let app = spawn_app(backend).await;
    let scope_sets: [&[&str]; 4] = [
        &["chat"],
        &["voip", "chat"],
        &["chat.join.limited"],
        &["voip.join", "chat.join"],
    ];
    for i in 0..200 {
        let id = app.create_user().await;
        let r = app.issue(&id, scope_sets[i % scope_sets.len()]).await;
        let token = r.body["token"].as_str().expect("token");
        let payload = token.split('.').nth(1).expect("payload");
        assert!(!payload.contains(['-', '_']), "{payload}");
        let padded = format!("{payload}==");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&padded[..padded.len() - padded.len() % 4])
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(payload))
            .expect("standard base64");
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        assert!(v["exp"].is_i64());
        assert!(bytes.is_ascii());
    }
    app.stop().await;
}

async fn revocation_is_exact_within_the_same_second(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_user().await;
    let before: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let r = app.issue(&id, &["chat"]).await;
            v.push(r.body["token"].as_str().expect("token").to_owned());
        }
        v
    };
    let revoke = app
        .send(
            Method::POST,
            &format!(
                "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
                enc(&id)
            ),
            None,
        )
        .await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT);
    let after = app.issue(&id, &["chat"]).await;
    let after = after.body["token"].as_str().expect("token").to_owned();
    let iat = |t: &str| claims(t)["iat"].clone();
    // Whether or not the clock ticked, the decision is the same.
    let same_second = iat(&before[2]) == iat(&after);
    for t in &before {
        let i = app.introspect(t).await;
        assert_eq!(i["active"], false, "same second: {same_second}");
        assert_eq!(i["reason"], "revoked");
    }
    let i = app.introspect(&after).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["id"], id.as_str());
    assert_eq!(i["scopes"], serde_json::json!(["chat"]));

    // Delete takes the rest.
    let del = app
        .send(
            Method::DELETE,
            &format!("/identities/{}?api-version=2023-10-01", enc(&id)),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let i = app.introspect(&after).await;
    assert_eq!(i["active"], false);
    assert_eq!(i["reason"], "identityNotFound");
    app.stop().await;
}

async fn tokens_expire_on_the_injected_clock(backend: Backend) {
    let clock = Arc::new(callsign_core::FixedClock::new(
        time::OffsetDateTime::now_utc(),
    ));
    let app = TestApp::builder()
        .backend(backend)
        .clock(clock.clone())
        .spawn()
        .await;
    let id = app.create_user().await;
    let body = r#"{"scopes": ["chat"], "expiresInMinutes": 60}"#;
    let r = app.send(Method::POST, &issue_path(&id), Some(body)).await;
    let token = r.body["token"].as_str().expect("token").to_owned();
    assert_eq!(app.introspect(&token).await["active"], true);
    clock.advance(time::Duration::minutes(59));
    assert_eq!(app.introspect(&token).await["active"], true);
    clock.advance(time::Duration::minutes(1));
    let i = app.introspect(&token).await;
    assert_eq!(i["reason"], "expired", "{i}");
    app.stop().await;
}

on_every_backend!(
    tokens_of_every_algorithm_verify_against_the_jwks,
    a_forged_token_does_not_verify_and_is_not_active,
    payloads_never_contain_characters_python_drops,
    revocation_is_exact_within_the_same_second,
    tokens_expire_on_the_injected_clock,
);
