//! The bad-input matrix: every refusal has its status and error code, and changes nothing.

use std::time::{Duration, SystemTime};

use callsign_hmac::{AccessKeyMac, content_hash, format_date, string_to_sign};
use callsign_testkit::{Backend, SendExt, TestApp, enc, issue_path, spawn_app};
use reqwest::{Method, StatusCode};

use callsign_api::ApiVersion;

const CREATE: &str = "/identities?api-version=2023-10-01";

/// The versions the body and id matrices run on: the SDKs' default and every later one.
fn matrix_versions() -> impl Iterator<Item = ApiVersion> {
    ApiVersion::ALL
        .into_iter()
        .filter(|v| *v >= ApiVersion::V2023_10_01)
}

/// Signs `signed_body` at `when` but sends `sent_body` with `sent_hash`.
fn forged(
    app: &TestApp,
    target: &str,
    signed_body: &[u8],
    sent_body: &[u8],
    sent_hash: &str,
    when: SystemTime,
    key: &str,
) -> reqwest::RequestBuilder {
    let date = format_date(when);
    let sts = string_to_sign(
        "POST",
        target,
        &[&date, &app.host, &content_hash(signed_body)],
    );
    let sig = AccessKeyMac::from_base64(key).expect("key").sign(&sts);
    app.client
        .post(format!("{}{}", app.endpoint.trim_end_matches('/'), target))
        .header("x-ms-date", date)
        .header("x-ms-content-sha256", sent_hash)
        .header("content-type", "application/json")
        .header(
            "authorization",
            format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"),
        )
        .body(sent_body.to_vec())
}

async fn authentication_failures_are_401_denied_and_write_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let base = app.endpoint.trim_end_matches('/').to_owned();
    let body = br#"{"createTokenWithScopes": ["chat"]}"#;
    let now = SystemTime::now();
    let wrong_key = "d3JvbmcgYWNjZXNzIGtleSBvZiBzdWZmaWNpZW50IGxlbmd0aCBmb3IgdGhlIHRlc3Q=";
    let tampered = br#"{"createTokenWithScopes": ["voip"]}"#;
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "missing Authorization",
            app.client.post(format!("{base}{CREATE}")),
        ),
        (
            "garbled Authorization",
            app.signed_with(
                Method::POST,
                CREATE,
                Some(body),
                &app.primary_key,
                "application/json",
                Some("HMAC-SHA256 garbage"),
            ),
        ),
        (
            "bearer token",
            app.signed_with(
                Method::POST,
                CREATE,
                Some(body),
                &app.primary_key,
                "application/json",
                Some("Bearer eyJ0eXAiOiJKV1QifQ.e30.x"),
            ),
        ),
        (
            "wrong key",
            app.signed(Method::POST, CREATE, Some(body), wrong_key),
        ),
        (
            "stale date",
            forged(
                &app,
                CREATE,
                body,
                body,
                &content_hash(body),
                now - Duration::from_secs(20 * 60),
                &app.primary_key,
            ),
        ),
        (
            "date in the future",
            forged(
                &app,
                CREATE,
                body,
                body,
                &content_hash(body),
                now + Duration::from_secs(20 * 60),
                &app.primary_key,
            ),
        ),
        (
            "tampered body",
            forged(
                &app,
                CREATE,
                body,
                tampered,
                &content_hash(tampered),
                now,
                &app.primary_key,
            ),
        ),
        (
            "wrong content hash",
            forged(
                &app,
                CREATE,
                body,
                body,
                &content_hash(b"other"),
                now,
                &app.primary_key,
            ),
        ),
    ];
    for (name, req) in cases {
        let r = req.reply().await;
        r.assert_error(401, "Denied");
        assert_eq!(r.headers["www-authenticate"], "HMAC-SHA256", "{name}");
        let text = String::from_utf8_lossy(&r.raw);
        assert!(!text.contains(&app.primary_key), "{name}: key echoed");
    }
    assert_eq!(
        app.identity_count().await,
        0,
        "a refused request created an identity"
    );

    // A refused revoke or delete leaves the identity and its tokens alone.
    let id = app.create_user().await;
    let token = app.issue(&id, &["chat"]).await.body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    for target in [format!(
        "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
        enc(&id)
    )] {
        let r = app
            .signed(Method::POST, &target, None, wrong_key)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = app
        .signed(
            Method::DELETE,
            &format!("/identities/{}?api-version=2023-10-01", enc(&id)),
            None,
            wrong_key,
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.introspect(&token).await["active"], true);
    assert_eq!(app.identity_count().await, 1);
    app.stop().await;
}

async fn invalid_bodies_are_400_validation_errors_and_write_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases: [(&str, &str, Option<&str>); 9] = [
        ("malformed JSON", "{\"createTokenWithScopes\": [", None),
        ("not an object", "[1, 2]", None),
        (
            "scopes of the wrong type",
            r#"{"createTokenWithScopes": "chat"}"#,
            None,
        ),
        (
            "expiry of the wrong type",
            r#"{"createTokenWithScopes": ["chat"], "expiresInMinutes": "60"}"#,
            None,
        ),
        (
            "fractional expiry",
            r#"{"createTokenWithScopes": ["chat"], "expiresInMinutes": 60.5}"#,
            None,
        ),
        (
            "unknown scope",
            r#"{"createTokenWithScopes": ["chat", "pstn"]}"#,
            Some("scopes"),
        ),
        (
            "expiry too short",
            r#"{"createTokenWithScopes": ["chat"], "expiresInMinutes": 59}"#,
            Some("ExpiresInMinutes"),
        ),
        (
            "expiry too long",
            r#"{"createTokenWithScopes": ["chat"], "expiresInMinutes": 1441}"#,
            Some("ExpiresInMinutes"),
        ),
        (
            "expiry out of range of any integer",
            r#"{"createTokenWithScopes": ["chat"], "expiresInMinutes": 99999999999999999999}"#,
            None,
        ),
    ];
    for v in matrix_versions() {
        for (name, body, target) in cases {
            let r = app
                .send(
                    Method::POST,
                    &format!("/identities?api-version={v}"),
                    Some(body),
                )
                .await;
            r.assert_error(400, "ValidationError");
            if let Some(t) = target {
                assert_eq!(r.body["error"]["target"], t, "{v}: {name}");
            }
        }
        if let Some(field) = v.custom_id_field() {
            let long_custom = format!(
                r#"{{"{field}": "{}"}}"#,
                "x".repeat(257),
                field = field.as_str()
            );
            let r = app
                .send(
                    Method::POST,
                    &format!("/identities?api-version={v}"),
                    Some(&long_custom),
                )
                .await;
            r.assert_error(400, "ValidationError");
            assert_eq!(r.body["error"]["target"], field.as_str(), "{v}");
        }
    }
    assert_eq!(app.identity_count().await, 0);
    app.stop().await;
}

async fn token_requests_validate_scopes_and_expiry_with_the_service_messages(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_user().await;
    let path = issue_path(&id);
    let r = app.send(Method::POST, &path, Some("{}")).await;
    r.assert_error(400, "ValidationError");
    assert_eq!(
        r.body["error"]["message"],
        "Scopes: The Scopes field is required."
    );
    let r = app
        .send(Method::POST, &path, Some(r#"{"scopes": null}"#))
        .await;
    r.assert_error(400, "ValidationError");
    let r = app
        .send(Method::POST, &path, Some(r#"{"scopes": []}"#))
        .await;
    r.assert_error(400, "ValidationError");
    assert_eq!(
        r.body["error"]["message"],
        "Invalid scopes - Scopes field is required."
    );
    let r = app
        .send(Method::POST, &path, Some(r#"{"scopes": ["admin"]}"#))
        .await;
    r.assert_error(400, "ValidationError");
    assert_eq!(r.body["error"]["target"], "scopes");
    for minutes in [59, 1441, 0, -60] {
        let body = format!(r#"{{"scopes": ["chat"], "expiresInMinutes": {minutes}}}"#);
        let r = app.send(Method::POST, &path, Some(&body)).await;
        r.assert_error(400, "ValidationError");
        assert_eq!(
            r.body["error"]["message"],
            format!(
                "ExpiresInMinutes value {minutes} is invalid. Value must be within the [60, 1440] interval."
            )
        );
    }
    // The identity is untouched by all that: no token was recorded.
    let got = app
        .send(
            Method::GET,
            &format!("/identities/{}?api-version=2025-03-02-preview", enc(&id)),
            None,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.get("lastTokenIssuedAt").is_none(), "{}", got.body);
    app.stop().await;
}

async fn ids_are_checked_for_shape_ownership_and_existence(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_user().await;
    let foreign = "8:acs:00000000-0000-0000-0000-000000000000_00000000-0000-0000-0000-000000000000";
    let unknown = format!(
        "8:acs:{}_{}",
        app.resource_id, "00000005-14a2-493b-8a72-5a3a0d000081"
    );
    for (raw, status, code) in [
        ("garbage", 400, "ValidationError"),
        ("8:acs:", 400, "ValidationError"),
        ("8:acs:a_b_c", 400, "ValidationError"),
        ("%FF%FE", 400, "ValidationError"),
        (foreign, 401, "IdentityNotOwned"),
        (
            "8:gcch-acs:00000000-0000-0000-0000-000000000000_00000000-0000-0000-0000-000000000000",
            401,
            "IdentityNotOwned",
        ),
        (unknown.as_str(), 404, "IdentityNotFound"),
    ] {
        for v in matrix_versions() {
            let target = |verb: &str| format!("/identities/{}{verb}?api-version={v}", enc(raw));
            let r = app
                .send(
                    Method::POST,
                    &target("/:issueAccessToken"),
                    Some(r#"{"scopes": ["chat"]}"#),
                )
                .await;
            r.assert_error(status, code);
            let r = app
                .send(Method::POST, &target("/:revokeAccessTokens"), None)
                .await;
            r.assert_error(status, code);
            let r = app.send(Method::DELETE, &target(""), None).await;
            r.assert_error(status, code);
        }
    }
    // The real identity was not affected by any of it.
    assert_eq!(app.issue(&id, &["chat"]).await.status, StatusCode::OK);
    app.stop().await;
}

async fn protocol_errors_have_their_own_status(backend: Backend) {
    let app = spawn_app(backend).await;
    let base = app.endpoint.trim_end_matches('/').to_owned();

    let r = app
        .send(Method::POST, "/identities?api-version=2019-01-01", None)
        .await;
    r.assert_error(400, "UnsupportedApiVersion");
    let r = app.send(Method::POST, "/identities", None).await;
    r.assert_error(400, "MissingApiVersionParameter");

    let r = app.send(Method::PUT, CREATE, None).await;
    r.assert_error(405, "MethodNotAllowed");
    assert_eq!(r.headers["allow"], "GET, POST");
    // GET lists identities, an operation 2023-10-01 does not offer.
    let r = app.send(Method::GET, CREATE, None).await;
    r.assert_error(400, "UnsupportedApiVersion");
    let r = app
        .client
        .put(format!("{base}/identities/x?api-version=2023-10-01"))
        .reply()
        .await;
    r.assert_error(405, "MethodNotAllowed");

    let r = app.client.get(format!("{base}/nowhere")).reply().await;
    r.assert_error(404, "NotFound");

    let big = format!(
        r#"{{"createTokenWithScopes": ["chat"], "pad": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = app.send(Method::POST, CREATE, Some(&big)).await;
    r.assert_error(413, "RequestEntityTooLarge");

    let r = app
        .signed_with(
            Method::POST,
            CREATE,
            Some(b"createTokenWithScopes=chat"),
            &app.primary_key,
            "application/x-www-form-urlencoded",
            None,
        )
        .reply()
        .await;
    r.assert_error(415, "UnsupportedMediaType");
    assert_eq!(app.identity_count().await, 0);
    app.stop().await;
}

on_every_backend!(
    authentication_failures_are_401_denied_and_write_nothing,
    invalid_bodies_are_400_validation_errors_and_write_nothing,
    token_requests_validate_scopes_and_expiry_with_the_service_messages,
    ids_are_checked_for_shape_ownership_and_existence,
    protocol_errors_have_their_own_status,
);
