//! Every operation on every api-version, with the status codes, bodies and headers the SDKs need.

use callsign_api::ApiVersion;
use callsign_testkit::{Backend, claims, enc, issue_path, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Every version with the `:issueAccessToken`/`:revokeAccessTokens` paths (all but the first).
fn modern() -> impl Iterator<Item = ApiVersion> {
    ApiVersion::ALL.into_iter().filter(|v| !v.is_legacy())
}

fn assert_expires_on(v: &Value) {
    let s = v.as_str().expect("expiresOn is a string");
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .expect("expiresOn is ISO 8601");
    assert!(s.ends_with("+00:00"), "{s}");
    assert!(t > time::OffsetDateTime::now_utc());
}

async fn the_2020_preview_lifecycle_matches_the_seed_package(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = "api-version=2020-07-20-preview2";
    let created = app
        .send(Method::POST, &format!("/identities?{v}"), None)
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert!(
        created.headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/json")
    );
    let id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.body.as_object().map(|o| o.len()), Some(1));

    let issued = app
        .send(
            Method::POST,
            &format!("/identities/{}/token?{v}", enc(&id)),
            Some(r#"{"scopes": ["chat", "voip"]}"#),
        )
        .await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);
    assert_eq!(issued.body["id"], id.as_str());
    assert_expires_on(&issued.body["expiresOn"]);
    let token = issued.body["token"].as_str().expect("token").to_owned();
    assert_eq!(claims(&token)["acsScope"], "chat,voip");

    // Python sends {} (meaning now), JS sends an explicit time.
    let patch = app
        .send(
            Method::PATCH,
            &format!("/identities/{}?{v}", enc(&id)),
            Some("{}"),
        )
        .await;
    assert_eq!(patch.status, StatusCode::NO_CONTENT);
    assert!(patch.raw.is_empty());
    assert_eq!(app.introspect(&token).await["reason"], "revoked");
    let patch = app
        .send(
            Method::PATCH,
            &format!("/identities/{}?{v}", enc(&id)),
            Some(r#"{"tokensValidFrom": "2020-09-01T12:00:00.000Z"}"#),
        )
        .await;
    assert_eq!(patch.status, StatusCode::NO_CONTENT);
    // A time beyond clock skew in the future cannot be honoured exactly: refused, nothing revoked.
    let fresh = app
        .send(
            Method::POST,
            &format!("/identities/{}/token?{v}", enc(&id)),
            Some(r#"{"scopes": ["chat"]}"#),
        )
        .await;
    let fresh = fresh.body["token"].as_str().expect("token").to_owned();
    let future = (time::OffsetDateTime::now_utc() + time::Duration::minutes(5))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let patch = app
        .send(
            Method::PATCH,
            &format!("/identities/{}?{v}", enc(&id)),
            Some(&format!(r#"{{"tokensValidFrom": "{future}"}}"#)),
        )
        .await;
    patch.assert_error(400, "ValidationError");
    assert_eq!(app.introspect(&fresh).await["active"], true);

    let deleted = app
        .send(
            Method::DELETE,
            &format!("/identities/{}?{v}", enc(&id)),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let again = app
        .send(
            Method::POST,
            &format!("/identities/{}/token?{v}", enc(&id)),
            Some(r#"{"scopes": ["chat"]}"#),
        )
        .await;
    again.assert_error(404, "IdentityNotFound");
    // The newer routes do not exist in this version.
    let r = app
        .send(
            Method::POST,
            &format!("/identities/{}/:issueAccessToken?{v}", enc(&id)),
            Some(r#"{"scopes": ["chat"]}"#),
        )
        .await;
    r.assert_error(400, "UnsupportedApiVersion");
    app.stop().await;
}

async fn every_modern_version_creates_issues_revokes_and_deletes(backend: Backend) {
    let app = spawn_app(backend).await;
    for v in modern() {
        // Empty body (Python 1.3+, JS) and {} (Python 1.0-1.2).
        for body in [None, Some("{}")] {
            let r = app
                .send(Method::POST, &format!("/identities?api-version={v}"), body)
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{v}: {}", r.body);
            assert!(r.body["identity"]["id"].as_str().is_some());
            assert!(r.body.get("accessToken").is_none(), "{v}: {}", r.body);
        }
        let r = app
            .send(
                Method::POST,
                &format!("/identities?api-version={v}"),
                Some(r#"{"createTokenWithScopes": ["chat"]}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{v}: {}", r.body);
        assert_expires_on(&r.body["accessToken"]["expiresOn"]);
        let id = r.body["identity"]["id"].as_str().expect("id").to_owned();
        let first = r.body["accessToken"]["token"]
            .as_str()
            .expect("token")
            .to_owned();
        assert_eq!(claims(&first)["sub"], id.as_str());

        let issued = app
            .send(
                Method::POST,
                &format!("/identities/{}/:issueAccessToken?api-version={v}", enc(&id)),
                Some(r#"{"scopes": ["voip", "chat"]}"#),
            )
            .await;
        assert_eq!(issued.status, StatusCode::OK, "{v}: {}", issued.body);
        assert_expires_on(&issued.body["expiresOn"]);
        let obj = issued.body.as_object().expect("object");
        assert_eq!(obj.len(), 2, "{v}: only token and expiresOn");

        let revoked = app
            .send(
                Method::POST,
                &format!(
                    "/identities/{}/:revokeAccessTokens?api-version={v}",
                    enc(&id)
                ),
                None,
            )
            .await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{v}");
        assert!(revoked.raw.is_empty());
        assert_eq!(app.introspect(&first).await["active"], false);

        let deleted = app
            .send(
                Method::DELETE,
                &format!("/identities/{}?api-version={v}", enc(&id)),
                None,
            )
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{v}");
        let after = app
            .send(
                Method::POST,
                &format!("/identities/{}/:issueAccessToken?api-version={v}", enc(&id)),
                Some(r#"{"scopes": ["chat"]}"#),
            )
            .await;
        after.assert_error(404, "IdentityNotFound");
        let delete_again = app
            .send(
                Method::DELETE,
                &format!("/identities/{}?api-version={v}", enc(&id)),
                None,
            )
            .await;
        delete_again.assert_error(404, "IdentityNotFound");
    }
    app.stop().await;
}

async fn expiry_is_honoured_from_2022_10_01_and_ignored_before(backend: Backend) {
    let app = spawn_app(backend).await;
    for (v, minutes, want) in [
        ("2022-06-01", 60, 86_400),
        ("2022-10-01", 60, 3_600),
        ("2023-10-01", 90, 5_400),
        ("2023-10-01", 1440, 86_400),
    ] {
        let body =
            json!({"createTokenWithScopes": ["chat"], "expiresInMinutes": minutes}).to_string();
        let r = app
            .send(
                Method::POST,
                &format!("/identities?api-version={v}"),
                Some(&body),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{v}: {}", r.body);
        let c = claims(r.body["accessToken"]["token"].as_str().expect("token"));
        assert_eq!(
            c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
            want,
            "{v}"
        );
    }
    app.stop().await;
}

async fn nulls_sent_by_python_1_3_mean_absent(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = "api-version=2022-10-01";
    let r = app
        .send(
            Method::POST,
            &format!("/identities?{v}"),
            Some(r#"{"createTokenWithScopes": ["chat"], "expiresInMinutes": null}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let c = claims(r.body["accessToken"]["token"].as_str().expect("token"));
    assert_eq!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
        86_400
    );
    let r = app
        .send(
            Method::POST,
            &format!("/identities?{v}"),
            Some(r#"{"createTokenWithScopes": null, "expiresInMinutes": null}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.body.get("accessToken").is_none());
    let id = r.body["identity"]["id"].as_str().expect("id");
    let r = app
        .send(
            Method::POST,
            &format!("/identities/{}/:issueAccessToken?{v}", enc(id)),
            Some(r#"{"scopes": ["voip"], "expiresInMinutes": null}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.stop().await;
}

async fn join_scopes_exist_from_2023_10_01(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_user().await;
    for scopes in [
        json!(["chat"]),
        json!(["voip"]),
        json!(["chat.join"]),
        json!(["chat.join.limited"]),
        json!(["voip.join"]),
        json!(["voip", "chat"]),
        json!(["chat", "chat.join", "chat.join.limited"]),
        json!(["voip", "voip.join"]),
        json!(["chat.join", "voip.join"]),
    ] {
        let body = json!({ "scopes": scopes }).to_string();
        let r = app.send(Method::POST, &issue_path(&id), Some(&body)).await;
        assert_eq!(r.status, StatusCode::OK, "{scopes}: {}", r.body);
        let want: Vec<&str> = scopes
            .as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("str"))
            .collect();
        assert_eq!(
            claims(r.body["token"].as_str().expect("token"))["acsScope"],
            want.join(",")
        );
    }
    let r = app
        .send(
            Method::POST,
            &format!(
                "/identities/{}/:issueAccessToken?api-version=2022-10-01",
                enc(&id)
            ),
            Some(r#"{"scopes": ["chat.join"]}"#),
        )
        .await;
    r.assert_error(400, "ValidationError");
    app.stop().await;
}

async fn custom_ids_are_idempotent_and_identities_can_be_read_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = "api-version=2025-03-02-preview";
    let body = r#"{"customId": "sally@contoso.com", "createTokenWithScopes": ["chat"]}"#;
    let a = app
        .send(Method::POST, &format!("/identities?{v}"), Some(body))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["identity"]["customId"], "sally@contoso.com");
    let b = app
        .send(Method::POST, &format!("/identities?{v}"), Some(body))
        .await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert_eq!(a.body["identity"]["id"], b.body["identity"]["id"]);
    let id = a.body["identity"]["id"].as_str().expect("id").to_owned();

    let got = app
        .send(Method::GET, &format!("/identities/{}?{v}", enc(&id)), None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["id"], id.as_str());
    assert_eq!(got.body["customId"], "sally@contoso.com");
    assert!(
        got.body["lastTokenIssuedAt"].as_str().is_some(),
        "{}",
        got.body
    );

    // A customId in an older version is not part of that version's contract and is ignored.
    let old = app
        .send(
            Method::POST,
            "/identities?api-version=2023-10-01",
            Some(r#"{"customId": "sally@contoso.com"}"#),
        )
        .await;
    assert_eq!(old.status, StatusCode::CREATED);
    assert_ne!(old.body["identity"]["id"], id.as_str());
    assert!(old.body["identity"].get("customId").is_none());

    // GET is a 2025-03-02-preview operation.
    let r = app
        .send(
            Method::GET,
            &format!("/identities/{}?api-version=2023-10-01", enc(&id)),
            None,
        )
        .await;
    r.assert_error(400, "UnsupportedApiVersion");

    // After delete the custom id names a new identity.
    let del = app
        .send(
            Method::DELETE,
            &format!("/identities/{}?{v}", enc(&id)),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let got = app
        .send(Method::GET, &format!("/identities/{}?{v}", enc(&id)), None)
        .await;
    got.assert_error(404, "IdentityNotFound");
    let c = app
        .send(Method::POST, &format!("/identities?{v}"), Some(body))
        .await;
    assert_ne!(c.body["identity"]["id"], id.as_str());
    app.stop().await;
}

async fn teams_exchange_answers_invalid_access_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = r#"{"token": "x", "appId": "a", "userId": "u"}"#;
    let r = app
        .send(
            Method::POST,
            "/teamsUser/:exchangeAccessToken?api-version=2023-10-01",
            Some(body),
        )
        .await;
    r.assert_error(401, "InvalidAccessToken");
    let r = app
        .send(
            Method::POST,
            "/teamsUser/:exchangeAccessToken?api-version=2021-03-07",
            Some(body),
        )
        .await;
    r.assert_error(400, "UnsupportedApiVersion");
    app.stop().await;
}

async fn health_jwks_and_openapi_need_no_signature(backend: Backend) {
    let app = spawn_app(backend).await;
    let base = app.endpoint.trim_end_matches('/');
    let h = app
        .client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(h.status(), StatusCode::OK);
    let j = app
        .client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks");
    assert_eq!(j.status(), StatusCode::OK);
    let jwks: Value = j.json().await.expect("json");
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    // The OpenAPI document, as checked in, with the headers every response carries.
    let o = app
        .client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(o.status(), StatusCode::OK);
    assert_eq!(o.headers()["content-type"], "application/json");
    assert_eq!(o.headers()["cache-control"], "public, max-age=300");
    assert!(o.headers().contains_key("api-supported-versions"));
    let text = o.text().await.expect("body");
    assert_eq!(text, callsign_server::OPENAPI_DOCUMENT);
    let doc: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    // Another method is refused as on every path.
    let r = app
        .client
        .post(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "GET");
    // Everything else does need one.
    let r = app
        .client
        .post(format!("{base}/identities?api-version=2023-10-01"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn client_request_id_is_echoed_and_both_keys_work(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app
        .signed(
            Method::POST,
            "/identities?api-version=2023-10-01",
            None,
            &app.secondary_key,
        )
        .header("x-ms-client-request-id", "3f9e0c1a-test")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-ms-client-request-id"], "3f9e0c1a-test");
    assert!(r.headers().get("ms-cv").is_some());
    app.stop().await;
}

async fn old_sdks_signing_date_and_async_python_sending_raw_ids_are_accepted(backend: Backend) {
    use callsign_hmac::{AccessKeyMac, content_hash, format_date, string_to_sign};
    let app = spawn_app(backend).await;
    let id = app.create_user().await;
    // aiohttp sends the id unencoded and signs it that way.
    let target = format!("/identities/{id}/:issueAccessToken?api-version=2021-03-07");
    let body = br#"{"scopes": ["chat"]}"#;
    let date = format_date(std::time::SystemTime::now());
    let hash = content_hash(body);
    let sts = string_to_sign("POST", &target, &[&date, &app.host, &hash]);
    let sig = AccessKeyMac::from_base64(&app.primary_key)
        .expect("key")
        .sign(&sts);
    let r = app
        .client
        .post(format!("{}{}", app.endpoint.trim_end_matches('/'), target))
        .header("date", &date)
        .header("x-ms-content-sha256", &hash)
        .header("content-type", "application/json")
        .header(
            "authorization",
            format!("HMAC-SHA256 SignedHeaders=date;host;x-ms-content-sha256&Signature={sig}"),
        )
        .body(body.to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}

on_every_backend!(
    the_2020_preview_lifecycle_matches_the_seed_package,
    every_modern_version_creates_issues_revokes_and_deletes,
    expiry_is_honoured_from_2022_10_01_and_ignored_before,
    nulls_sent_by_python_1_3_mean_absent,
    join_scopes_exist_from_2023_10_01,
    custom_ids_are_idempotent_and_identities_can_be_read_back,
    teams_exchange_answers_invalid_access_token,
    health_jwks_and_openapi_need_no_signature,
    client_request_id_is_echoed_and_both_keys_work,
    old_sdks_signing_date_and_async_python_sending_raw_ids_are_accepted,
);
