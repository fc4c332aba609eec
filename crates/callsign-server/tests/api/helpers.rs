//! `spawn_app()` and a signing test client.

use std::sync::Arc;
use std::time::SystemTime;

use callsign_core::{Clock, SystemClock};
use callsign_hmac::{AccessKeyMac, content_hash, format_date, string_to_sign};
use callsign_server::{Application, Settings};
use callsign_store::open_embedded_store;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

/// A running server and a client that signs like the SDKs.
pub struct TestApp {
    pub endpoint: String,
    pub host: String,
    pub resource_id: String,
    pub primary_key: String,
    pub secondary_key: String,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
    /// The clock requests are dated with (the server's, so injected time stays within skew).
    pub clock: Arc<dyn Clock>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A response, its body parsed as JSON when there is one.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Reply {
    /// `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    /// Asserts status and error code, and that the body is a proper ACS error.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            self.body
        );
        assert!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json")),
            "error without JSON content type"
        );
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}, Arc::new(SystemClock)).await
}

pub async fn spawn_app_with(
    configure: impl FnOnce(&mut Settings),
    clock: Arc<dyn Clock>,
) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::new(data_dir.path());
    settings.listen = "127.0.0.1:0".parse().expect("addr");
    configure(&mut settings);
    let store = Arc::new(open_embedded_store(data_dir.path()).expect("store"));
    let app = Application::build_with(settings, store, Arc::clone(&clock))
        .await
        .expect("build");
    let endpoint = app.endpoint();
    let cs = app.connection_string();
    let cs2 = app.secondary_connection_string();
    let resource_id = app.resource_id().to_string();
    let tls = app.is_tls();
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(app.serve(async {
        let _ = rx.await;
    }));
    let mut builder = reqwest::Client::builder();
    if tls {
        let ca = std::fs::read(data_dir.path().join("tls/ca.pem")).expect("ca");
        builder = builder.tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")]);
    }
    let key = |cs: &str| cs.split_once(";accesskey=").expect("key").1.to_owned();
    TestApp {
        host: endpoint
            .split_once("://")
            .expect("scheme")
            .1
            .trim_end_matches('/')
            .to_owned(),
        endpoint,
        resource_id,
        primary_key: key(&cs),
        secondary_key: key(&cs2),
        client: builder.build().expect("client"),
        data_dir,
        clock,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// Sends a request signed with the primary key (x-ms-date).
    pub async fn send(&self, method: Method, target: &str, body: Option<&str>) -> Reply {
        let req = self.signed(method, target, body.map(str::as_bytes), &self.primary_key);
        Self::reply(req.send().await.expect("request")).await
    }

    /// Builds a request signed with `key`, for tests that then break something.
    pub fn signed(
        &self,
        method: Method,
        target: &str,
        body: Option<&[u8]>,
        key: &str,
    ) -> reqwest::RequestBuilder {
        self.signed_with(method, target, body, key, "application/json", None)
    }

    /// Like [`TestApp::signed`] with a chosen content type and, optionally, an Authorization
    /// value that replaces the real one.
    pub fn signed_with(
        &self,
        method: Method,
        target: &str,
        body: Option<&[u8]>,
        key: &str,
        content_type: &str,
        authorization: Option<&str>,
    ) -> reqwest::RequestBuilder {
        self.signed_full(
            method,
            target,
            body,
            key,
            content_type,
            authorization,
            &self.host,
        )
    }

    /// Sends a request signed with the primary key as if the client had named the host
    /// `signed_host` (the socket's host is still used to connect).
    pub async fn send_signed_as(
        &self,
        method: Method,
        target: &str,
        body: Option<&str>,
        signed_host: &str,
    ) -> Reply {
        let req = self.signed_full(
            method,
            target,
            body.map(str::as_bytes),
            &self.primary_key,
            "application/json",
            None,
            signed_host,
        );
        Self::reply(req.send().await.expect("request")).await
    }

    /// Sends a request signed with the primary key and dated `date` (a client whose clock
    /// differs from the server's).
    pub async fn send_dated(
        &self,
        method: Method,
        target: &str,
        body: Option<&str>,
        date: SystemTime,
    ) -> Reply {
        let body = body.unwrap_or_default().as_bytes().to_vec();
        let date = format_date(date);
        let hash = content_hash(&body);
        let sts = string_to_sign(method.as_str(), target, &[&date, &self.host, &hash]);
        let sig = AccessKeyMac::from_base64(&self.primary_key)
            .expect("key")
            .sign(&sts);
        let mut req = self
            .client
            .request(
                method,
                format!("{}{}", self.endpoint.trim_end_matches('/'), target),
            )
            .header("x-ms-date", date)
            .header("x-ms-content-sha256", hash)
            .header(
                "authorization",
                format!(
                    "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"
                ),
            );
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        Self::reply(req.body(body).send().await.expect("request")).await
    }

    // Every argument is one thing a client can sign differently.
    #[allow(clippy::too_many_arguments)]
    fn signed_full(
        &self,
        method: Method,
        target: &str,
        body: Option<&[u8]>,
        key: &str,
        content_type: &str,
        authorization: Option<&str>,
        signed_host: &str,
    ) -> reqwest::RequestBuilder {
        let body = body.unwrap_or_default().to_vec();
        let date = format_date(SystemTime::from(self.clock.now()));
        let hash = content_hash(&body);
        let sts = string_to_sign(method.as_str(), target, &[&date, signed_host, &hash]);
        let sig = AccessKeyMac::from_base64(key).expect("key").sign(&sts);
        let mut req = self
            .client
            .request(method, format!("{}{}", self.endpoint.trim_end_matches('/'), target))
            .header("x-ms-date", date)
            .header("x-ms-content-sha256", hash)
            .header(
                "authorization",
                authorization.map_or_else(
                    || format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"),
                    str::to_owned,
                ),
            );
        if !body.is_empty() {
            req = req.header("content-type", content_type);
        }
        req.body(body)
    }

    pub async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let raw = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap_or(Value::Null)
        };
        Reply {
            status,
            headers,
            body,
            raw,
        }
    }

    /// Creates an identity (2023-10-01) and returns its id.
    pub async fn create_user(&self) -> String {
        let r = self
            .send(Method::POST, "/identities?api-version=2023-10-01", None)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["identity"]["id"].as_str().expect("id").to_owned()
    }

    /// Issues a token (2023-10-01).
    pub async fn issue(&self, id: &str, scopes: &[&str]) -> Reply {
        let body = serde_json::json!({ "scopes": scopes }).to_string();
        self.send(
            Method::POST,
            &format!(
                "/identities/{}/:issueAccessToken?api-version=2023-10-01",
                enc(id)
            ),
            Some(&body),
        )
        .await
    }

    /// Whether the server considers `token` in force.
    pub async fn introspect(&self, token: &str) -> Value {
        let body = serde_json::json!({ "token": token }).to_string();
        let r = self
            .send(
                Method::POST,
                "/tokens/:introspect?api-version=2023-10-01",
                Some(&body),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    /// Stops the server as SIGTERM would and checks it ended cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("join").expect("clean shutdown");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// How many identities the server's database holds, read straight from the file.
pub fn identity_count(app: &TestApp) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        app.data_dir.path().join("callsign.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open db");
    conn.query_row("SELECT count(*) FROM identities", [], |r| r.get(0))
        .expect("count")
}

/// Percent-encodes `:` as the sync SDKs do.
pub fn enc(id: &str) -> String {
    id.replace(':', "%3A")
}

/// The payload of a JWT, decoded without verifying anything.
pub fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}
