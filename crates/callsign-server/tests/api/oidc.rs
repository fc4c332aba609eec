//! Trusted OpenID Connect issuers, against a real provider on loopback (node-oidc-provider):
//! the token exchange and its assignments, every refusal, key rotation and provider outages,
//! bearer-token management, and the Teams exchanges of an Entra-shaped issuer.

use callsign_server::oidc::{Audience, Profile, TrustedIssuer, TrustedIssuerConfig};
use callsign_store::{AuditOperation, Credential};
use callsign_testkit::{Backend, OidcProvider, Reply, SendExt, TestApp, claims};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const PREVIEW: &str = "api-version=2025-03-02-preview";

async fn app_trusting(
    backend: Backend,
    provider: &OidcProvider,
    configure: impl FnOnce(&mut TrustedIssuerConfig),
) -> TestApp {
    let mut config = TrustedIssuerConfig {
        issuer: provider.issuer.clone(),
        audience: Audience::One("api://callsign".into()),
        jwks_cooldown_secs: Some(1),
        ..TrustedIssuerConfig::default()
    };
    configure(&mut config);
    let issuer = TrustedIssuer::from_config(config).expect("a valid issuer");
    TestApp::builder()
        .backend(backend)
        .settings(move |s| s.oidc_issuers = vec![issuer])
        .spawn()
        .await
}

/// A request carrying `token` as its bearer.
async fn bearer(app: &TestApp, method: Method, target: &str, token: &str, body: &str) -> Reply {
    app.client
        .request(
            method,
            format!("{}{}", app.endpoint.trim_end_matches('/'), target),
        )
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .reply()
        .await
}

async fn exchange(app: &TestApp, token: &str) -> Reply {
    let target = format!("/access/entra/:exchangeAccessToken?{PREVIEW}");
    bearer(app, Method::POST, &target, token, "{}").await
}

async fn assign(app: &TestApp, object: &str, tenant: Uuid, kind: &str, extra: Value) -> Reply {
    let mut body = json!({"tenantId": tenant.to_string(), "principalType": kind});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let target = format!("/access/entra/assignments/{object}?{PREVIEW}");
    app.send(Method::PUT, &target, Some(&body.to_string()))
        .await
}

/// Asserts a 401 `InvalidAccessToken` whose message names `why`.
#[track_caller]
fn refused(r: &Reply, why: &str) {
    r.assert_error(401, "InvalidAccessToken");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(why), "{message:?} should say {why:?}");
}

async fn exchange_needs_an_assignment_and_gives_a_stable_identity(backend: Backend) {
    let provider = OidcProvider::start(&["--issuer-path", "/realms/test"]).await;
    let app = app_trusting(backend, &provider, |_| {}).await;
    let tenant = TrustedIssuer::tenant_of_issuer(&provider.issuer);
    let alice = provider.token("alice", "ES256", json!({})).await;
    exchange(&app, &alice)
        .await
        .assert_error(403, "AuthorizationFailed");
    assert_eq!(
        app.identity_count().await,
        0,
        "a refused exchange creates nothing"
    );

    assert_eq!(
        assign(&app, "alice", tenant, "user", json!({}))
            .await
            .status,
        201
    );
    let first = exchange(&app, &alice).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let id = first.body["identity"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let object = Uuid::new_v5(&tenant, b"alice");
    assert_eq!(
        id,
        format!("8:acs:{}_wf_{tenant}_{object}", app.resource_id)
    );
    let token = first.body["accessToken"]["token"].as_str().expect("token");
    let (ours, theirs) = (claims(token), claims(&alice));
    assert_eq!(ours["skypeid"], id[2..]);
    assert_eq!(ours["acsScope"], "chat,voip", "the issuer's default scopes");
    assert!(
        ours["exp"].as_i64() <= theirs["exp"].as_i64(),
        "never outlives the bearer"
    );
    assert_eq!(
        ours["exp"], theirs["exp"],
        "a 10-minute bearer gives a 10-minute token"
    );

    // RS256 as well; the same principal keeps the same identity.
    let again = provider.token("alice", "RS256", json!({})).await;
    let second = exchange(&app, &again).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.body["identity"]["id"], id.as_str());
    assert_eq!(app.identity_count().await, 1);

    // Groups and tenants; an assignment's scopes win over the issuer's.
    let bob = provider
        .token("bob", "ES256", json!({"groups": ["team-a"]}))
        .await;
    exchange(&app, &bob)
        .await
        .assert_error(403, "AuthorizationFailed");
    assign(&app, "team-a", tenant, "group", json!({"scopes": ["chat"]})).await;
    let r = exchange(&app, &bob).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        claims(r.body["accessToken"]["token"].as_str().expect("token"))["acsScope"],
        "chat"
    );
    let carol = provider.token("carol", "ES256", json!({})).await;
    exchange(&app, &carol)
        .await
        .assert_error(403, "AuthorizationFailed");
    let other_tenant = Uuid::new_v4();
    let r = assign(
        &app,
        &other_tenant.to_string(),
        other_tenant,
        "tenant",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 201);
    exchange(&app, &carol)
        .await
        .assert_error(403, "AuthorizationFailed");
    assign(&app, &tenant.to_string(), tenant, "tenant", json!({})).await;
    assert_eq!(exchange(&app, &carol).await.status, 200);

    // Removing the assignments that cover her (her own, her tenant's) ends the exchanges.
    for object in ["alice".to_owned(), tenant.to_string()] {
        let target = format!("/access/entra/assignments/{object}?{PREVIEW}");
        assert_eq!(app.send(Method::DELETE, &target, None).await.status, 204);
    }
    exchange(&app, &alice)
        .await
        .assert_error(403, "AuthorizationFailed");

    // A deleted workforce identity is never created again (its old tokens stay refused).
    let target = format!(
        "/identities/{}?api-version=2023-10-01",
        callsign_testkit::enc(&id)
    );
    assert_eq!(app.send(Method::DELETE, &target, None).await.status, 204);
    assign(&app, "alice", tenant, "user", json!({})).await;
    exchange(&app, &alice)
        .await
        .assert_error(403, "AuthorizationFailed");

    let created: Vec<_> = app
        .audit_records()
        .await
        .into_iter()
        .filter(|r| r.operation == AuditOperation::CreateIdentity)
        .collect();
    assert_eq!(created.len(), 3, "alice, bob and carol");
    assert!(created.iter().all(|r| r.credential == Credential::Bearer));
    let who = format!("{}#alice", provider.issuer);
    assert!(
        created
            .iter()
            .any(|r| r.subject.as_deref() == Some(who.as_str()))
    );
    app.stop().await;
}

async fn bearer_management_needs_the_role(backend: Backend) {
    let provider = OidcProvider::start(&[]).await;
    let app = app_trusting(backend, &provider, |_| {}).await;
    let create = "/identities?api-version=2023-10-01";
    let body = r#"{"createTokenWithScopes": ["chat"]}"#;
    let admin = provider
        .token("ops", "RS256", json!({"roles": ["callsign.admin"]}))
        .await;
    let minter = provider
        .token("backend", "ES256", json!({"roles": ["callsign.tokens"]}))
        .await;
    let nobody = provider
        .token("eve", "ES256", json!({"roles": ["reader"]}))
        .await;

    let r = bearer(&app, Method::POST, create, &nobody, body).await;
    r.assert_error(403, "AuthorizationFailed");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("callsign.tokens")
    );
    assert_eq!(app.identity_count().await, 0);

    let r = bearer(&app, Method::POST, create, &minter, body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["identity"]["id"].as_str().expect("id").to_owned();
    let issue = callsign_testkit::issue_path(&id);
    let r = bearer(
        &app,
        Method::POST,
        &issue,
        &minter,
        r#"{"scopes": ["voip"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let delete = format!(
        "/identities/{}?api-version=2023-10-01",
        callsign_testkit::enc(&id)
    );
    bearer(&app, Method::DELETE, &delete, &minter, "")
        .await
        .assert_error(403, "AuthorizationFailed");
    assert_eq!(
        app.identity_count().await,
        1,
        "a refused delete deletes nothing"
    );
    let r = bearer(&app, Method::DELETE, &delete, &admin, "").await;
    assert_eq!(r.status, 204, "{}", r.body);

    // An admin manages assignments; HMAC keeps working beside bearers.
    let target = format!("/access/entra/assignments/someone?{PREVIEW}");
    let put = json!({"tenantId": Uuid::new_v4().to_string(), "principalType": "user"});
    let r = bearer(&app, Method::PUT, &target, &admin, &put.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.send(Method::POST, create, Some(body)).await;
    assert_eq!(r.status, 201, "HMAC still works: {}", r.body);

    // A refused bearer is a refused credential: the ACS error body, no work done.
    let forged = format!("{}x", &admin[..admin.len() - 1]);
    refused(
        &bearer(&app, Method::POST, create, &forged, body).await,
        "signature",
    );
    assert_eq!(app.identity_count().await, 1);

    let bearers: Vec<_> = app
        .audit_records()
        .await
        .into_iter()
        .filter(|r| r.credential == Credential::Bearer)
        .collect();
    let ops: Vec<_> = bearers.iter().map(|r| r.operation).collect();
    assert_eq!(
        ops,
        [
            AuditOperation::CreateIdentity,
            AuditOperation::DeleteIdentity,
            AuditOperation::PutAccessAssignment
        ]
    );
    assert_eq!(
        bearers[0].subject.as_deref(),
        Some(format!("{}#backend", provider.issuer).as_str())
    );
    assert_eq!(
        bearers[1].subject.as_deref(),
        Some(format!("{}#ops", provider.issuer).as_str())
    );
    app.stop().await;
}

on_every_backend!(
    exchange_needs_an_assignment_and_gives_a_stable_identity,
    bearer_management_needs_the_role,
    assignments_are_validated_paged_and_patched,
);

#[tokio::test]
async fn every_refusal_says_why() {
    let provider = OidcProvider::start(&[]).await;
    let app = app_trusting(Backend::Sqlite, &provider, |_| {}).await;
    let tenant = TrustedIssuer::tenant_of_issuer(&provider.issuer);
    assign(&app, "alice", tenant, "user", json!({})).await;
    let mint = |extra: Value| {
        let mut request = json!({"sub": "alice", "alg": "ES256"});
        if let (Some(r), Some(e)) = (request.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        provider.mint(request)
    };
    let good = mint(json!({})).await;
    assert_eq!(exchange(&app, &good).await.status, 200);

    let other_issuer = mint(json!({"override": {"iss": "https://evil.example.com"}})).await;
    refused(
        &exchange(&app, &other_issuer).await,
        "issuer is not trusted",
    );
    let other_audience = mint(json!({"aud": "api://someone-else"})).await;
    refused(&exchange(&app, &other_audience).await, "another audience");
    let expired = mint(json!({"ttl": 600, "backdate": 3600})).await;
    refused(&exchange(&app, &expired).await, "expired");
    // Expired 30 s ago: within the leeway, but an exchanged token would be born expired.
    let just_expired = mint(json!({"ttl": 30, "backdate": 60})).await;
    refused(&exchange(&app, &just_expired).await, "expired");
    let spaced_aud = mint(json!({"override": {"aud": "other api://callsign"}})).await;
    refused(&exchange(&app, &spaced_aud).await, "another audience");
    let early = mint(json!({"nbf": 3600})).await;
    refused(&exchange(&app, &early).await, "not valid yet");
    let no_exp = mint(json!({"override": {"exp": null}})).await;
    refused(&exchange(&app, &no_exp).await, "expired");
    let unknown_kid = mint(json!({"header": {"kid": "not-published"}})).await;
    refused(&exchange(&app, &unknown_kid).await, "kid");

    // A changed payload (another subject) under the original signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut payload = claims(&good);
    payload["sub"] = json!("mallory");
    parts[1] = b64(&payload);
    refused(&exchange(&app, &parts.join(".")).await, "signature");
    // Unsigned, and signed with the public key as an HMAC secret.
    let header = json!({"alg": "none", "kid": claims_header(&good)["kid"]});
    let unsigned = format!(
        "{}.{}.",
        b64(&header),
        good.split('.').nth(1).expect("payload")
    );
    refused(&exchange(&app, &unsigned).await, "algorithm");
    let hs = json!({"alg": "HS256", "kid": claims_header(&good)["kid"]});
    let symmetric = format!(
        "{}.{}.AAAA",
        b64(&hs),
        good.split('.').nth(1).expect("payload")
    );
    refused(&exchange(&app, &symmetric).await, "algorithm");
    refused(&exchange(&app, "not-a-jwt").await, "signed JWT");
    refused(&exchange(&app, &"a".repeat(20_000)).await, "signed JWT");

    // Wrong version, and an exchange without a bearer.
    let old = bearer(
        &app,
        Method::POST,
        "/access/entra/:exchangeAccessToken?api-version=2025-06-30",
        &good,
        "{}",
    )
    .await;
    old.assert_error(400, "UnsupportedApiVersion");
    let target = format!("/access/entra/:exchangeAccessToken?{PREVIEW}");
    app.send(Method::POST, &target, Some("{}"))
        .await
        .assert_error(401, "InvalidAccessToken");
    assert_eq!(
        app.identity_count().await,
        1,
        "only the good exchange created one"
    );
    app.stop().await;
}

fn b64(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims_header(token: &str) -> Value {
    use base64::Engine as _;
    let h = token.split('.').next().expect("header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

#[tokio::test]
async fn rotated_keys_are_fetched_and_cached_keys_outlive_an_outage() {
    let provider = OidcProvider::start(&["--omit-jwk-alg"]).await;
    let app = app_trusting(Backend::Sqlite, &provider, |_| {}).await;
    // Never fetched and the provider down: the keys are unavailable, 503, not a refusal.
    provider.control("/down", json!({"mode": "refuse"})).await;
    let alice = provider.token("alice", "RS256", json!({})).await;
    let r = exchange(&app, &alice).await;
    r.assert_error(503, "ServiceUnavailable");
    provider.control("/up", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let tenant = TrustedIssuer::tenant_of_issuer(&provider.issuer);
    assign(&app, "alice", tenant, "user", json!({})).await;
    let r = exchange(&app, &alice).await;
    assert_eq!(r.status, 200, "RSA keys published without alg: {}", r.body);
    let fetched = provider.jwks_fetches().await;

    // The provider rotates: a token of the new key makes one refresh (after the cooldown).
    provider
        .control("/rotate", json!({"alg": "ES256", "keep_old": true}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rotated = provider.token("alice", "ES256", json!({})).await;
    assert_eq!(exchange(&app, &rotated).await.status, 200);
    assert_eq!(provider.jwks_fetches().await, fetched + 1);
    // Known keys need no fetch.
    assert_eq!(exchange(&app, &alice).await.status, 200);
    assert_eq!(provider.jwks_fetches().await, fetched + 1);

    // Down: cached keys still verify; a key the cache lacks is refused, clearly.
    provider.control("/down", json!({"mode": "refuse"})).await;
    assert_eq!(exchange(&app, &rotated).await.status, 200);
    provider
        .control("/rotate", json!({"alg": "ES256", "keep_old": true}))
        .await;
    let newest = provider.token("alice", "ES256", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    refused(&exchange(&app, &newest).await, "kid");
    assert_eq!(
        exchange(&app, &alice).await.status,
        200,
        "old keys still cached"
    );
    // Up again: the next unknown kid after the cooldown fetches it.
    provider.control("/up", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(exchange(&app, &newest).await.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn an_entra_issuer_vouches_for_teams_users() {
    let provider = OidcProvider::start(&[]).await;
    let (tenant, user, appid) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let app = app_trusting(Backend::Sqlite, &provider, |c| {
        c.profile = Profile::Entra;
        c.teams = true;
        c.tenants = Some(vec![tenant.to_string()]);
    })
    .await;
    // Only its own tenant: a token naming another tenant is refused.
    let foreign = json!({"tid": Uuid::new_v4().to_string(), "oid": user.to_string()});
    let foreign = provider.token(&user.to_string(), "RS256", foreign).await;
    refused(&exchange(&app, &foreign).await, "tenant");
    let entra =
        json!({"tid": tenant.to_string(), "oid": user.to_string(), "appid": appid.to_string()});
    let token = provider
        .token(&user.to_string(), "RS256", entra.clone())
        .await;

    // The Entra exchange: the spec's id form.
    assign(&app, &user.to_string(), tenant, "user", json!({})).await;
    let r = exchange(&app, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = format!("8:acs:{}_wf_{tenant}_{user}", app.resource_id);
    assert_eq!(r.body["identity"]["id"], id.as_str());

    // The Teams user exchange, verified as ACS does.
    let teams = "/teamsUser/:exchangeAccessToken?api-version=2023-10-01";
    let body = |app_id: &str, user_id: &str, token: &str| {
        json!({"token": token, "appId": app_id, "userId": user_id}).to_string()
    };
    let r = app
        .send(
            Method::POST,
            teams,
            Some(&body(&appid.to_string(), &user.to_string(), &token)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        claims(r.body["token"].as_str().expect("token"))["skypeid"],
        id[2..]
    );
    let wrong_app = body(&Uuid::new_v4().to_string(), &user.to_string(), &token);
    let r = app.send(Method::POST, teams, Some(&wrong_app)).await;
    r.assert_error(400, "ValidationError");
    assert_eq!(r.body["error"]["target"], "appId");
    let wrong_user = body(&appid.to_string(), &Uuid::new_v4().to_string(), &token);
    let r = app.send(Method::POST, teams, Some(&wrong_user)).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["error"]["target"]),
        (400, &json!("userId"))
    );
    let r = app
        .send(
            Method::POST,
            teams,
            Some(&body("", &user.to_string(), &token)),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["error"]["target"]),
        (400, &json!("AppId"))
    );
    let r = app
        .send(
            Method::POST,
            teams,
            Some(&body(&appid.to_string(), "invalid", &token)),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["error"]["target"]),
        (400, &json!("userId"))
    );
    let expired = provider
        .mint(json!({"sub": user.to_string(), "claims": entra, "ttl": 60, "backdate": 3600}))
        .await;
    let r = app
        .send(
            Method::POST,
            teams,
            Some(&body(&appid.to_string(), &user.to_string(), &expired)),
        )
        .await;
    refused(&r, "expired");

    // The Teams extension exchange: needs its own assignment, naming the application.
    let ext = "/access/teamsExtension/:exchangeAccessToken?api-version=2025-06-30";
    bearer(&app, Method::POST, ext, &token, "{}")
        .await
        .assert_error(403, "AuthorizationFailed");
    let assignment = format!(
        "/access/teamsExtension/tenants/{tenant}/assignments/{user}?api-version=2025-06-30"
    );
    let put = json!({"principalType": "user", "clientIds": [Uuid::new_v4().to_string()]});
    app.send(Method::PUT, &assignment, Some(&put.to_string()))
        .await;
    bearer(&app, Method::POST, ext, &token, "{}")
        .await
        .assert_error(403, "AuthorizationFailed");
    let put = json!({"principalType": "user", "clientIds": [appid.to_string()]});
    assert_eq!(
        app.send(Method::PUT, &assignment, Some(&put.to_string()))
            .await
            .status,
        200
    );
    let r = bearer(&app, Method::POST, ext, &token, "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["identity"]["id"], id.as_str());
    app.stop().await;
}

#[tokio::test]
async fn without_a_teams_issuer_teams_exchanges_stay_refused() {
    let provider = OidcProvider::start(&[]).await;
    let app = app_trusting(Backend::Sqlite, &provider, |_| {}).await;
    let token = provider.token("alice", "ES256", json!({})).await;
    let ext = "/access/teamsExtension/:exchangeAccessToken?api-version=2025-06-30";
    refused(
        &bearer(&app, Method::POST, ext, &token, "{}").await,
        "Teams",
    );
    let teams = "/teamsUser/:exchangeAccessToken?api-version=2023-10-01";
    let body = json!({"token": token, "appId": Uuid::new_v4().to_string(), "userId": Uuid::new_v4().to_string()});
    app.send(Method::POST, teams, Some(&body.to_string()))
        .await
        .assert_error(401, "InvalidAccessToken");
    app.stop().await;
}

/// `PATCH /access/entra/assignments` with a merge patch, HMAC-signed.
async fn merge_patch(app: &TestApp, body: &[u8]) -> Reply {
    let target = format!("/access/entra/assignments?{PREVIEW}");
    app.signed_with(
        Method::PATCH,
        &target,
        Some(body),
        &app.key,
        "application/merge-patch+json",
        None,
    )
    .reply()
    .await
}

async fn assignments_are_validated_paged_and_patched(backend: Backend) {
    let app = TestApp::builder().backend(backend).spawn().await;
    let tenant = Uuid::new_v4();
    let at = |object: &str| format!("/access/entra/assignments/{object}?{PREVIEW}");
    let bad = [
        ("a", json!({"principalType": "user"}), "tenantId"),
        (
            "a",
            json!({"tenantId": "nope", "principalType": "user"}),
            "tenantId",
        ),
        (
            "a",
            json!({"tenantId": tenant.to_string()}),
            "principalType",
        ),
        (
            "a",
            json!({"tenantId": tenant.to_string(), "principalType": "User"}),
            "principalType",
        ),
        (
            "a",
            json!({"tenantId": tenant.to_string(), "principalType": "tenant"}),
            "objectId",
        ),
        (
            "a%20b",
            json!({"tenantId": tenant.to_string(), "principalType": "user"}),
            "objectId",
        ),
        (
            "a",
            json!({"tenantId": tenant.to_string(), "principalType": "user", "scopes": ["admin"]}),
            "scopes",
        ),
    ];
    for (object, body, target) in bad {
        let r = app
            .send(Method::PUT, &at(object), Some(&body.to_string()))
            .await;
        r.assert_error(400, "ValidationError");
        assert_eq!(r.body["error"]["target"], target, "{body}");
    }
    let r = app.send(Method::GET, &at("a"), None).await;
    r.assert_error(404, "AssignmentNotFound");
    app.send(Method::DELETE, &at("a"), None)
        .await
        .assert_error(404, "AssignmentNotFound");

    let user = json!({"tenantId": tenant.to_string(), "principalType": "user"});
    for object in ["e", "d", "auth0|c", "b", "a"] {
        let r = app
            .send(
                Method::PUT,
                &at(&callsign_testkit::enc(object).replace('|', "%7C")),
                Some(&user.to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let group =
        json!({"tenantId": tenant.to_string(), "principalType": "group", "scopes": ["voip"]});
    let r = app
        .send(Method::PUT, &at("b"), Some(&group.to_string()))
        .await;
    assert_eq!(r.status, 200, "replaced");
    assert_eq!(
        r.body,
        json!({"objectId": "b", "tenantId": tenant.to_string(), "principalType": "group", "scopes": ["voip"]})
    );
    let r = app.send(Method::GET, &at("auth0%7Cc"), None).await;
    assert_eq!(r.body["objectId"], "auth0|c");

    // Pages of two, in object id order, to the end.
    let mut seen = Vec::new();
    let mut next = Some(format!("access/entra/assignments?{PREVIEW}&maxpagesize=2"));
    while let Some(link) = next {
        let r = app.send(Method::GET, &format!("/{link}"), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.body["value"].as_array().expect("value");
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|a| a["objectId"].as_str().expect("id").to_owned()),
        );
        next = r.body["nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ["a", "auth0|c", "b", "d", "e"]);

    // A merge patch: puts and deletes together, or nothing when one member is bad.
    let patch = json!({"f": user, "a": null, "d": null});
    let bad_patch = json!({"g": user, "e": null, "h": {"principalType": "user"}});
    let r = merge_patch(&app, bad_patch.to_string().as_bytes()).await;
    r.assert_error(400, "ValidationError");
    assert_eq!(
        app.send(Method::GET, &at("e"), None).await.status,
        200,
        "nothing applied"
    );
    assert_eq!(app.send(Method::GET, &at("g"), None).await.status, 404);
    let twice = format!(r#"{{"e": {user}, "e": null}}"#);
    let r = merge_patch(&app, twice.as_bytes()).await;
    r.assert_error(400, "ValidationError");
    let e = app.send(Method::GET, &at("e"), None).await;
    assert_eq!(e.status, 200, "a key given twice changes nothing");
    let r = merge_patch(&app, patch.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["f"]["principalType"], "user");
    assert_eq!(r.body.as_object().map(|o| o.len()), Some(1));
    assert_eq!(app.send(Method::GET, &at("a"), None).await.status, 404);
    assert_eq!(app.send(Method::GET, &at("f"), None).await.status, 200);
    assert_eq!(app.send(Method::DELETE, &at("f"), None).await.status, 204);

    // Only in the preview that defines them.
    let r = app
        .send(
            Method::GET,
            "/access/entra/assignments?api-version=2025-06-30",
            None,
        )
        .await;
    r.assert_error(400, "UnsupportedApiVersion");
    let audited = app
        .audit_records()
        .await
        .into_iter()
        .filter(|r| r.operation == AuditOperation::PutAccessAssignment)
        .count();
    assert_eq!(
        audited,
        5 + 1 + 1,
        "five puts, one replace, one patched put"
    );
    app.stop().await;
}
