//! The admin console over HTTPS as a browser sends it (forms, cookies, no redirects followed):
//! sign-in and its limits, the session cookie's flags, the form token and origin checks, what
//! each action changes (seen through the API and the audit log), and what bad input leaves
//! unchanged. The real-browser suite (compat/python/console) drives the same pages in Chromium.

use callsign_store::{AuditOperation, Credential};
use callsign_testkit::{Backend, TestApp, spawn_app};
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A browser without JavaScript: keeps the console's cookies, follows no redirect.
struct Browser {
    client: reqwest::Client,
    endpoint: String,
    origin: String,
    session: Option<String>,
    login: Option<String>,
    oidc: Option<String>,
}

/// An answer: status, headers, body text.
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `value` of the hidden `csrf` input.
    fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=\"csrf\" value=\"")
            .expect("a form token")
            + 19;
        self.text[at..].split('"').next().expect("value").to_owned()
    }

    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        let mut client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if app.endpoint.starts_with("https://") {
            client = client
                .tls_certs_only([reqwest::Certificate::from_pem(&app.ca_pem()).expect("pem")]);
        }
        let client = client.build().expect("client");
        let endpoint = app.endpoint.trim_end_matches('/').to_owned();
        Self {
            client,
            origin: endpoint.clone(),
            endpoint,
            session: None,
            login: None,
            oidc: None,
        }
    }

    fn cookies(&self) -> String {
        [
            ("callsign_session", &self.session),
            ("callsign_login", &self.login),
            ("callsign_oidc", &self.oidc),
        ]
        .iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n}={v}")))
        .collect::<Vec<_>>()
        .join("; ")
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookies = self.cookies();
        let request = if cookies.is_empty() {
            request
        } else {
            request.header("cookie", cookies)
        };
        let r = request.send().await.expect("the console answers");
        let page = Page {
            status: r.status(),
            headers: r.headers().clone(),
            text: String::new(),
        };
        let text = r.text().await.expect("body");
        let page = Page { text, ..page };
        for (name, slot) in [
            ("callsign_session", &mut self.session),
            ("callsign_login", &mut self.login),
            ("callsign_oidc", &mut self.oidc),
        ] {
            if let Some(c) = page.set_cookie(name) {
                let value = c[name.len() + 1..].split(';').next().unwrap_or("");
                *slot = (!value.is_empty()).then(|| value.to_owned());
            }
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.endpoint));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let request = self
            .client
            .post(format!("{}{path}", self.endpoint))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", &self.origin)
            .body(body);
        self.send(request).await
    }

    /// Posts a form of `page`'s session with its form token.
    async fn submit(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let token = self.get("/console/").await.csrf();
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }

    /// Sends the regeneration form of `slot` as the confirmation page shows it, with `fields`.
    async fn regenerate(&mut self, slot: &str, fields: &[(&str, &str)]) -> Page {
        let path = format!("/console/keys/{slot}/regenerate");
        let page = self.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let at = page
            .text
            .find("name=\"current\" value=\"")
            .expect("the key's mark")
            + 22;
        let current = page.text[at..].split('"').next().expect("value").to_owned();
        let mut all: Vec<(&str, String)> = vec![("csrf", page.csrf()), ("current", current)];
        all.extend(fields.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let borrowed: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.post(&path, &borrowed).await
    }

    async fn sign_in(&mut self, key: &str) -> Page {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.text);
        let token = form.csrf();
        self.post("/console/login", &[("csrf", &token), ("key", key)])
            .await
    }
}

fn enc(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

async fn create(app: &TestApp, custom: &str) -> String {
    let body = json!({ "customId": custom }).to_string();
    let r = app
        .send(
            Method::POST,
            "/identities?api-version=2025-03-02-preview",
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["identity"]["id"].as_str().expect("id").to_owned()
}

async fn api_get(app: &TestApp, id: &str) -> StatusCode {
    let path = format!("/identities/{}?api-version=2025-03-02-preview", enc(id));
    app.send(Method::GET, &path, None).await.status
}

async fn signing_in_opens_a_strict_session_and_records_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut b = Browser::new(&app);
    let first = b.get("/console/").await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    assert_eq!(first.location(), "/console/login");

    let wrong = b.sign_in("bm90LXRoZS1rZXk=").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.text.contains("id=\"error\""), "{}", wrong.text);
    assert!(b.session.is_none());

    let ok = b.sign_in(&app.connection_string).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.text);
    assert_eq!(ok.location(), "/console/");
    let cookie = ok.set_cookie("callsign_session").expect("a session cookie");
    for flag in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=",
    ] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
    let overview = b.get("/console/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(
        overview.text.contains(&app.resource_id),
        "{}",
        overview.text
    );
    for header in [
        "content-security-policy",
        "x-frame-options",
        "cache-control",
    ] {
        assert!(overview.headers.contains_key(header), "{header}");
    }
    let csp = overview.headers["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(overview.headers["cache-control"], "no-store");

    let logins: Vec<_> = app
        .audit_records()
        .await
        .into_iter()
        .filter(|r| r.operation == AuditOperation::ConsoleLogin)
        .collect();
    assert_eq!(
        logins.len(),
        1,
        "one successful sign-in, no record of the failed one"
    );
    assert_eq!(logins[0].credential, Credential::Primary);
    assert!(
        logins[0]
            .subject
            .as_deref()
            .is_some_and(|s| s.starts_with("console#"))
    );
    app.stop().await;
}

#[tokio::test]
async fn wrong_keys_count_against_the_address_and_verify_only_keys_cannot_sign_in() {
    let app = TestApp::builder()
        .settings(|s| s.auth_failures_per_minute = 3)
        .spawn()
        .await;
    let mut b = Browser::new(&app);
    let verify_key = callsign_core::AccessKey::generate();
    app.store
        .replace_access_key(
            callsign_core::ResourceId::parse(&app.resource_id).expect("guid"),
            callsign_store::KeySlot::VerifyOnly,
            verify_key.clone(),
            false,
            &callsign_store::Actor::operator(),
        )
        .await
        .expect("a verify-only key");
    // The node reloads resources by polling the store.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let verify_only = b.sign_in(verify_key.expose()).await;
    assert_eq!(verify_only.status, StatusCode::UNAUTHORIZED);
    assert!(
        verify_only.text.contains("verify-only"),
        "{}",
        verify_only.text
    );
    assert_eq!(b.sign_in("d3Jvbmc=").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(b.sign_in("").await.status, StatusCode::UNAUTHORIZED);
    let limited = b.sign_in(&app.primary_key).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text
    );
    assert!(limited.headers.contains_key("retry-after"));
    assert!(
        b.session.is_none(),
        "not even the right key while the address is over its limit"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_sign_in_form_needs_its_own_token_and_a_small_body() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut b = Browser::new(&app);
    // No login cookie (a form posted from elsewhere): refused before any key is compared.
    let forged = b
        .post(
            "/console/login",
            &[
                ("csrf", "0123456789abcdef0123456789abcdef"),
                ("key", &app.primary_key),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.text);
    assert!(b.session.is_none());
    let _ = b.get("/console/login").await;
    let huge = "k".repeat(64 * 1024);
    let token = b.login.clone().expect("login cookie");
    let too_big = b
        .post("/console/login", &[("csrf", &token), ("key", &huge)])
        .await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let request = b
        .client
        .post(format!("{}/console/login", b.endpoint))
        .header("content-type", "application/json")
        .body("{}");
    assert_eq!(
        b.send(request).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    app.stop().await;
}

async fn forms_need_the_session_token_and_this_origin(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = create(&app, "csrf-target").await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.primary_key).await;
    let action = format!("/console/identities/{}/delete", enc(&id));
    let no_token = b.post(&action, &[("confirm", "yes")]).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    assert!(no_token.text.contains("id=\"error\""));
    let wrong = b
        .post(&action, &[("csrf", "AAAA"), ("confirm", "yes")])
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    b.origin = "null".into();
    let withheld = b.submit(&action, &[("confirm", "yes")]).await;
    assert_eq!(
        withheld.status,
        StatusCode::FORBIDDEN,
        "a null origin alone proves nothing"
    );
    b.origin = "https://evil.example".into();
    let foreign = b.submit(&action, &[("confirm", "yes")]).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api_get(&app, &id).await,
        StatusCode::OK,
        "nothing was deleted"
    );

    // Another session's token does not fit this one.
    let mut other = Browser::new(&app);
    other.sign_in(&app.primary_key).await;
    let theirs = other.get("/console/").await.csrf();
    let mixed = b
        .post(&action, &[("csrf", &theirs), ("confirm", "yes")])
        .await;
    assert_eq!(mixed.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api_get(&app, &id).await,
        StatusCode::OK,
        "nothing was deleted"
    );

    b.origin = b.endpoint.clone();
    let done = b.submit(&action, &[("confirm", "yes")]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    assert_eq!(api_get(&app, &id).await, StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn an_identity_is_found_issued_revoked_and_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = create(&app, "console-alice").await;
    let _other = create(&app, "someone-else").await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.primary_key).await;

    let found = b.get("/console/identities?q=console-&stale=").await;
    assert_eq!(found.status, StatusCode::OK);
    assert!(found.text.contains(&id), "{}", found.text);
    assert!(!found.text.contains("someone-else"), "the prefix filters");
    let jump = b.get(&format!("/console/identities?q={}", enc(&id))).await;
    assert_eq!(jump.status, StatusCode::SEE_OTHER);
    let page = b.get(jump.location()).await;
    assert!(page.text.contains("console-alice"));

    let href = format!("/console/identities/{}", enc(&id));
    let issued = b
        .submit(
            &format!("{href}/issue"),
            &[("scope", "chat"), ("scope", "voip"), ("minutes", "60")],
        )
        .await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.text);
    let at = issued.text.find("id=\"token\"").expect("the token");
    let token = issued.text[at..]
        .split('>')
        .nth(1)
        .expect("text")
        .split('<')
        .next()
        .expect("jwt")
        .to_owned();
    let active = app.introspect(&token).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["scopes"], json!(["chat", "voip"]), "{active}");

    let revoked = b.submit(&format!("{href}/revoke"), &[]).await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    assert_eq!(app.introspect(&token).await["active"], false);
    let after = b.get(revoked.location()).await;
    assert!(
        after.text.contains("id=\"revocation-epoch\">1<"),
        "{}",
        after.text
    );

    let unconfirmed = b.submit(&format!("{href}/delete"), &[]).await;
    assert_eq!(unconfirmed.status, StatusCode::BAD_REQUEST);
    assert_eq!(api_get(&app, &id).await, StatusCode::OK);
    let deleted = b
        .submit(&format!("{href}/delete"), &[("confirm", "yes")])
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    assert_eq!(api_get(&app, &id).await, StatusCode::NOT_FOUND);

    let records = app.audit_records().await;
    let by_console = |op| {
        records.iter().any(|r| {
            r.operation == op
                && r.identity.map(|i| i.to_string()) == Some(id.clone())
                && r.subject
                    .as_deref()
                    .is_some_and(|s| s.starts_with("console#"))
        })
    };
    for op in [
        AuditOperation::IssueToken,
        AuditOperation::RevokeTokens,
        AuditOperation::DeleteIdentity,
    ] {
        assert!(by_console(op), "{op:?} by the console session");
    }
    let audit = b
        .get("/console/audit?since=&operation=deleteIdentity")
        .await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(
        audit.text.contains(&id) && audit.text.contains("console#"),
        "{}",
        audit.text
    );
    assert!(
        !audit.text.contains("createIdentity</td>"),
        "filtered by operation"
    );
    app.stop().await;
}

async fn a_regenerated_key_is_refused_at_once_and_the_session_goes_on(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.primary_key).await;
    let old_session = b.session.clone();

    let unconfirmed = b.regenerate("primary", &[]).await;
    assert_eq!(unconfirmed.status, StatusCode::BAD_REQUEST);
    let still = app
        .send(Method::POST, "/identities?api-version=2023-10-01", None)
        .await;
    assert_eq!(still.status, StatusCode::CREATED, "the key is unchanged");

    let form = b.get("/console/keys/primary/regenerate").await;
    let done = b.regenerate("primary", &[("confirm", "yes")]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    // The same form sent again (a reload) replaces nothing.
    let at = form.text.find("name=\"current\" value=\"").expect("mark") + 22;
    let stale = form.text[at..].split('"').next().expect("value").to_owned();
    let token = b.get("/console/").await.csrf();
    let again = b
        .post(
            "/console/keys/primary/regenerate",
            &[("csrf", &token), ("current", &stale), ("confirm", "yes")],
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.text);
    let at = done.text.find("accesskey=").expect("new connection string") + 10;
    let new_key = done.text[at..].split('<').next().expect("key").to_owned();
    assert_ne!(new_key, app.primary_key);

    let old = app
        .send(Method::POST, "/identities?api-version=2023-10-01", None)
        .await;
    assert_eq!(
        old.status,
        StatusCode::UNAUTHORIZED,
        "the old key is refused at once"
    );
    let new = app.client_with(&app.endpoint, &new_key);
    let r = new
        .send(Method::POST, "/identities?api-version=2023-10-01", None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    assert_eq!(
        b.get("/console/").await.status,
        StatusCode::OK,
        "the session goes on"
    );
    b.session = old_session;
    assert_eq!(
        b.get("/console/").await.status,
        StatusCode::SEE_OTHER,
        "the old cookie is void"
    );
    assert!(app.audit_records().await.iter().any(|r| {
        r.operation == AuditOperation::RegenerateKey
            && r.subject
                .as_deref()
                .is_some_and(|s| s.starts_with("console#"))
    }));
    app.stop().await;
}

on_every_backend!(
    signing_in_opens_a_strict_session_and_records_it,
    forms_need_the_session_token_and_this_origin,
    an_identity_is_found_issued_revoked_and_deleted,
    a_regenerated_key_is_refused_at_once_and_the_session_goes_on,
);

#[tokio::test]
async fn logging_out_ends_the_session_for_good() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.secondary_key).await;
    let cookie = b.session.clone();
    let out = b.submit("/console/logout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/console/login?notice=signed-out");
    assert!(b.session.is_none(), "the cookie is cleared");
    b.session = cookie;
    let replay = b.get("/console/identities").await;
    assert_eq!(
        replay.status,
        StatusCode::SEE_OTHER,
        "a logged-out cookie opens nothing"
    );
    let records = app.audit_records().await;
    let out = records
        .iter()
        .find(|r| r.operation == AuditOperation::ConsoleLogout)
        .expect("the logout is recorded");
    assert_eq!(out.credential, Credential::Secondary);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let id = create(&app, "bad-input").await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.primary_key).await;
    let href = format!("/console/identities/{}", enc(&id));
    let before = app.identity_count().await;
    for fields in [
        vec![("minutes", "60")],
        vec![("scope", "chat"), ("minutes", "5")],
        vec![("scope", "chat"), ("minutes", "soon")],
        vec![("scope", "bogus"), ("minutes", "60")],
    ] {
        let r = b.submit(&format!("{href}/issue"), &fields).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{fields:?}");
        assert!(r.text.contains("id=\"error\""), "{}", r.text);
        assert!(!r.text.contains("id=\"token\""));
    }
    let long = "x".repeat(1000);
    let r = b
        .submit("/console/identities", &[("custom_id", &long)])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = b
        .submit("/console/identities", &[("custom_id", &"y".repeat(20_000))])
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        app.identity_count().await,
        before,
        "no identity was created"
    );

    let foreign = "8:acs:00000000-0000-0000-0000-000000000000_00000000-0000-0000-0000-000000000000";
    let r = b
        .get(&format!("/console/identities/{}", enc(foreign)))
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "another resource's identity"
    );
    assert_eq!(
        b.get("/console/identities?stale=12").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        b.get("/console/audit?operation=nope").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        b.get("/console/audit?since=yesterday").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        b.get("/console/nowhere").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.get("/console/keys/tertiary/regenerate").await.status,
        StatusCode::NOT_FOUND
    );

    // What a user typed is shown escaped, never as markup.
    let r = b
        .submit(
            "/console/identities",
            &[("custom_id", "<script>alert(1)</script>")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let page = b.get(r.location()).await;
    assert!(
        page.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.text
    );
    assert!(!page.text.contains("<script>alert"));
    app.stop().await;
}

#[tokio::test]
async fn rates_need_a_session_and_count_the_node_requests() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut b = Browser::new(&app);
    let anonymous = b.get("/console/rates.json").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = serde_json::from_str(&anonymous.text).expect("ACS error body");
    assert_eq!(body["error"]["code"], "Denied", "{body}");
    b.sign_in(&app.primary_key).await;
    let id = create(&app, "rates").await;
    for _ in 0..3 {
        assert_eq!(app.issue(&id, &["chat"]).await.status, StatusCode::OK);
    }
    let reading = b.get("/console/rates.json").await;
    assert_eq!(reading.status, StatusCode::OK, "{}", reading.text);
    let r: serde_json::Value = serde_json::from_str(&reading.text).expect("json");
    assert!(r["routes"]["issue"]["requests"].as_u64() >= Some(3), "{r}");
    assert!(r["tokens"].as_u64() >= Some(3), "{r}");
    assert!(
        r["latency"].as_array().is_some_and(|l| !l.is_empty()),
        "{r}"
    );
    assert_eq!(b.get("/console/rates").await.status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn without_the_console_its_paths_are_unknown() {
    let app = TestApp::builder()
        .settings(|s| s.console = false)
        .spawn()
        .await;
    let mut b = Browser::new(&app);
    for path in ["/console/", "/console/login", "/console/assets/console.js"] {
        assert_eq!(b.get(path).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn only_the_default_resource_sees_every_resource_and_rotates_signing_keys() {
    let app = spawn_app(Backend::Sqlite).await;
    let (other, _) = app.add_resource("tenant-b", None).await;
    let mut admin = Browser::new(&app);
    admin.sign_in(&app.primary_key).await;
    assert!(admin.get("/console/").await.text.contains("tenant-b"));
    let mut tenant = Browser::new(&app);
    tenant.sign_in(other.primary_key.expose()).await;
    let overview = tenant.get("/console/").await;
    assert!(overview.text.contains(&other.id.to_string()));
    assert!(
        !overview.text.contains(&app.resource_id),
        "no other resource is shown"
    );

    let keys_before = app.store.signing_keys().await.expect("keys").len();
    let refused = tenant
        .submit("/console/signing-keys/rotate", &[("confirm", "yes")])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.store.signing_keys().await.expect("keys").len(),
        keys_before
    );
    let rotated = admin
        .submit("/console/signing-keys/rotate", &[("confirm", "yes")])
        .await;
    assert_eq!(rotated.status, StatusCode::SEE_OTHER, "{}", rotated.text);
    assert_eq!(
        app.store.signing_keys().await.expect("keys").len(),
        keys_before + 1
    );
    let page = admin.get("/console/signing-keys").await;
    assert_eq!(page.text.matches("data-kid=").count(), keys_before + 1);

    // A tenant's audit page shows its own records only, whatever it asks for.
    let audit = tenant
        .get(&format!(
            "/console/audit?since=&resource={}",
            app.resource_id
        ))
        .await;
    assert!(
        !audit.text.contains("rotateSigningKey</td>"),
        "{}",
        audit.text
    );
    assert!(audit.text.contains("consoleLogin</td>"));
    app.stop().await;
}

#[tokio::test]
async fn a_logout_outlives_a_restart_of_the_node() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.primary_key).await;
    let cookie = b.session.clone();
    assert_eq!(
        b.submit("/console/logout", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    let app = app.stop_keeping_data().await.spawn().await;
    let mut again = Browser::new(&app);
    again.session = cookie;
    // The restarted node reads the logouts of the last hours from the audit log.
    let mut replay = again.get("/console/").await;
    for _ in 0..20 {
        if replay.status == StatusCode::SEE_OTHER {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        replay = again.get("/console/").await;
    }
    assert_eq!(
        replay.status,
        StatusCode::SEE_OTHER,
        "a logged-out session stays out"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_logout_on_one_node_ends_the_session_on_another() {
    let app = spawn_app(Backend::Postgres).await;
    let other = app.another_node().spawn().await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.primary_key).await;
    let mut there = Browser::new(&other);
    there.session = b.session.clone();
    assert_eq!(
        there.get("/console/").await.status,
        StatusCode::OK,
        "any node checks it"
    );
    assert_eq!(
        b.submit("/console/logout", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = there.get("/console/").await.status;
        if status == StatusCode::SEE_OTHER {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still signed in on the other node"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    other.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn background_polls_do_not_keep_an_idle_session_alive() {
    let clock = std::sync::Arc::new(callsign_core::FixedClock::new(
        time::OffsetDateTime::now_utc(),
    ));
    let app = TestApp::builder().clock(clock.clone()).spawn().await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.primary_key).await;
    clock.advance(time::Duration::minutes(20));
    let poll = b.get("/console/rates.json").await;
    assert_eq!(poll.status, StatusCode::OK);
    assert!(
        poll.set_cookie("callsign_session").is_none(),
        "a poll renews nothing"
    );
    clock.advance(time::Duration::minutes(11));
    assert_eq!(
        b.get("/console/rates.json").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        b.get("/console/").await.status,
        StatusCode::SEE_OTHER,
        "idle for 31 minutes"
    );

    b.sign_in(&app.primary_key).await;
    clock.advance(time::Duration::minutes(20));
    let page = b.get("/console/").await;
    assert!(
        page.set_cookie("callsign_session").is_some(),
        "a page renews the session"
    );
    clock.advance(time::Duration::minutes(20));
    assert_eq!(
        b.get("/console/").await.status,
        StatusCode::OK,
        "40 minutes, never idle 30"
    );
    app.stop().await;
}

#[tokio::test]
async fn odd_requests_get_a_clear_answer() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut b = Browser::new(&app);
    b.sign_in(&app.primary_key).await;
    let before = app.identity_count().await;
    let token = b.get("/console/").await.csrf();
    let (client, endpoint, origin) = (b.client.clone(), b.endpoint.clone(), b.origin.clone());
    let raw = |body: &'static str, content_type: &'static str| {
        client
            .post(format!("{endpoint}/console/identities"))
            .header("content-type", content_type)
            .header("origin", origin.clone())
            .body(format!("csrf={}&{body}", enc(&token)))
    };
    let latin1 = raw("custom_id=%FF%FEab", "application/x-www-form-urlencoded");
    assert_eq!(b.send(latin1).await.status, StatusCode::BAD_REQUEST);
    let utf16 = raw(
        "custom_id=ab",
        "application/x-www-form-urlencoded; charset=utf-16",
    );
    assert_eq!(
        b.send(utf16).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(app.identity_count().await, before, "nothing stored altered");

    assert_eq!(
        b.get("/console/identities?q=a%00b").await.status,
        StatusCode::BAD_REQUEST
    );
    let put = b.client.put(format!("{}/console/identities", b.endpoint));
    let put = b.send(put).await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.headers["allow"], "GET, POST");
    let head = b.client.head(format!("{}/console/", b.endpoint));
    assert_eq!(b.send(head).await.status, StatusCode::OK);
    let long = format!("/console/identities?q={}", "x".repeat(3000));
    let too_long = b.get(&long).await;
    assert_eq!(too_long.status, StatusCode::URI_TOO_LONG);
    assert!(too_long.text.contains("id=\"error\""), "an HTML page");
    assert!(too_long.headers.contains_key("content-security-policy"));
    let odd_host = b
        .client
        .get(format!("{}/console/", b.endpoint))
        .header("host", "evil.example;accesskey=AAAA");
    assert_eq!(b.send(odd_host).await.status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn behind_a_tls_terminating_proxy_the_console_speaks_https() {
    let app = TestApp::builder()
        .settings(|s| s.tls = callsign_server::TlsMode::Plain)
        .spawn()
        .await;
    let mut b = Browser::new(&app);
    assert!(b.endpoint.starts_with("http://"), "{}", b.endpoint);
    // Straight to the node: plain http, no Secure cookie.
    let direct = b.sign_in(&app.primary_key).await;
    assert_eq!(direct.status, StatusCode::SEE_OTHER, "{}", direct.text);
    assert!(
        !direct
            .set_cookie("callsign_session")
            .expect("cookie")
            .contains("Secure")
    );
    // Through a proxy: the browser's origin is https, and the proxy says so.
    let mut proxied = Browser::new(&app);
    proxied.origin = b.endpoint.replacen("http://", "https://", 1);
    let form = proxied
        .send(
            proxied
                .client
                .get(format!("{}/console/login", proxied.endpoint))
                .header("x-forwarded-proto", "https"),
        )
        .await;
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("csrf", form.csrf()), ("key", app.primary_key.clone())])
        .finish();
    let request = proxied
        .client
        .post(format!("{}/console/login", proxied.endpoint))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", proxied.origin.clone())
        .header("x-forwarded-proto", "https")
        .body(body);
    let signed = proxied.send(request).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.text);
    assert!(
        signed
            .set_cookie("callsign_session")
            .expect("cookie")
            .contains("Secure")
    );
    app.stop().await;
}

/// A node trusting `provider`, whose users may sign in to the console.
async fn app_with_console_issuer(provider: &callsign_testkit::OidcProvider) -> TestApp {
    let config = callsign_server::oidc::TrustedIssuerConfig {
        issuer: provider.issuer.clone(),
        audience: callsign_server::oidc::Audience::One("api://callsign".into()),
        jwks_cooldown_secs: Some(1),
        console_client_id: Some("callsign-console".into()),
        ..Default::default()
    };
    let issuer = callsign_server::oidc::TrustedIssuer::from_config(config).expect("an issuer");
    TestApp::builder()
        .settings(move |s| s.oidc_issuers = vec![issuer])
        .spawn()
        .await
}

/// Follows the sign-in through the provider (its cookies kept apart, as a browser keeps them)
/// back to the console's callback; returns the callback's answer.
async fn through_the_issuer(b: &mut Browser) -> Page {
    let start = b.get("/console/login/oidc/0").await;
    assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.text);
    assert!(b.oidc.is_some(), "the flow cookie");
    let provider = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut jar = std::collections::BTreeMap::new();
    let mut url = start.location().to_owned();
    for _ in 0..6 {
        if url.starts_with(&b.endpoint) {
            break;
        }
        let cookies: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let r = provider
            .get(&url)
            .header("cookie", cookies.join("; "))
            .send()
            .await
            .expect("the provider answers");
        for c in r.headers().get_all(SET_COOKIE) {
            let pair = c.to_str().expect("ascii").split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                jar.insert(k.to_owned(), v.to_owned());
            }
        }
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{url}");
        url = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
    }
    let path = url
        .strip_prefix(&b.endpoint)
        .expect("back at the console")
        .to_owned();
    b.get(&path).await
}

#[tokio::test]
async fn a_trusted_issuers_admin_signs_in_with_the_code_flow_and_is_audited() {
    let provider = callsign_testkit::OidcProvider::start(&[]).await;
    let app = app_with_console_issuer(&provider).await;
    let endpoint = app.endpoint.trim_end_matches('/').to_owned();
    let callback = format!("{endpoint}/console/login/oidc/0/callback");
    provider
        .control("/console-client", json!({ "redirect_uris": [callback] }))
        .await;
    let mut b = Browser::new(&app);
    let login = b.get("/console/login").await;
    assert!(
        login.text.contains("href=\"/console/login/oidc/0\""),
        "{}",
        login.text
    );

    // A user without the admin role is told so and gets no session.
    provider
        .control(
            "/login-as",
            json!({ "sub": "bob", "claims": { "roles": ["callsign.tokens"] } }),
        )
        .await;
    let bob = through_the_issuer(&mut b).await;
    assert_eq!(bob.status, StatusCode::FORBIDDEN, "{}", bob.text);
    assert!(bob.text.contains("callsign.admin"), "{}", bob.text);
    assert!(b.session.is_none());

    // The provider refuses: a clear page, no session.
    provider.control("/login-as", json!({ "deny": true })).await;
    let denied = through_the_issuer(&mut b).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{}", denied.text);
    assert!(denied.text.contains("access_denied"), "{}", denied.text);
    assert!(b.session.is_none());

    // An admin signs in; what the session does is audited as the issuer's user.
    provider
        .control(
            "/login-as",
            json!({ "sub": "alice", "claims": { "roles": ["callsign.admin"] } }),
        )
        .await;
    let alice = through_the_issuer(&mut b).await;
    assert_eq!(alice.status, StatusCode::SEE_OTHER, "{}", alice.text);
    assert_eq!(alice.location(), "/console/");
    let cookie = alice.set_cookie("callsign_session").expect("a session");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let overview = b.get("/console/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.text.contains("#alice"), "{}", overview.text);
    let created = b
        .submit("/console/identities", &[("custom_id", "by-alice")])
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.text);
    let records = app.audit_records().await;
    let record = records
        .iter()
        .find(|r| r.operation == AuditOperation::CreateIdentity)
        .expect("the create is recorded");
    assert_eq!(record.credential, Credential::Bearer);
    let subject = record.subject.as_deref().unwrap_or_default();
    assert!(subject.starts_with("console#"), "{subject}");
    assert!(
        subject.ends_with(&format!("{}#alice", provider.issuer)),
        "{subject}"
    );

    // The callback cannot be replayed: its state went with the flow cookie.
    let replay = b
        .get(&format!(
            "/console/login/oidc/0/callback?code=x&state={}",
            "0".repeat(32)
        ))
        .await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        b.get("/console/login/oidc/7").await.status,
        StatusCode::NOT_FOUND
    );

    // The session is the server's own: regenerating the primary key keeps it, and a holder of
    // that key cannot make one up.
    let regenerated = b.regenerate("primary", &[("confirm", "yes")]).await;
    assert_eq!(regenerated.status, StatusCode::OK);
    assert_eq!(b.get("/console/").await.status, StatusCode::OK);
    let at = regenerated.text.find("accesskey=").expect("new key") + 10;
    let new_key = regenerated.text[at..]
        .split('<')
        .next()
        .expect("key")
        .to_owned();
    let cookie = b.session.clone().expect("a session");
    let payload = cookie.rsplit_once('.').expect("signed").0.to_owned();
    let forged_sig = callsign_hmac::AccessKeyMac::from_base64(&new_key)
        .expect("key")
        .after(&["callsign console session v1\n"])
        .sign(&payload);
    let mut forger = Browser::new(&app);
    forger.session = Some(format!("{payload}.{forged_sig}"));
    assert_eq!(
        forger.get("/console/").await.status,
        StatusCode::SEE_OTHER,
        "forged"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_callback_naming_another_issuer_is_refused() {
    let provider = callsign_testkit::OidcProvider::start(&[]).await;
    let app = app_with_console_issuer(&provider).await;
    let mut b = Browser::new(&app);
    let start = b.get("/console/login/oidc/0").await;
    assert_eq!(start.status, StatusCode::SEE_OTHER);
    assert!(
        start.location().contains("code_challenge_method=S256"),
        "{}",
        start.location()
    );
    let flow = b.oidc.clone().expect("flow cookie");
    let state = flow.split('.').nth(1).expect("state").to_owned();
    // An answer of another issuer (a mix-up): refused before any code is redeemed.
    let mixed = b
        .get(&format!(
            "/console/login/oidc/0/callback?code=x&state={state}&iss={}",
            enc("https://evil.example")
        ))
        .await;
    assert_eq!(mixed.status, StatusCode::BAD_REQUEST, "{}", mixed.text);
    assert!(
        mixed.text.contains("another identity provider"),
        "{}",
        mixed.text
    );
    // Another issuer's callback path with this flow: refused as well.
    b.oidc = Some(flow);
    let elsewhere = b
        .get(&format!(
            "/console/login/oidc/1/callback?code=x&state={state}"
        ))
        .await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST);
    assert!(b.session.is_none());
    app.stop().await;
}
