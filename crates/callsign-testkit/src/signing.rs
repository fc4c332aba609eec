//! A client that signs requests as the ACS SDKs do (HMAC-SHA256 over date, host and content
//! hash), and the replies it gets.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use callsign_api::connection_string::ConnectionStringParts;
use callsign_core::{Clock, SystemClock};
use callsign_hmac::{AccessKeyMac, sign_request};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Signs and sends requests to one server.
#[derive(Clone)]
pub struct SigningClient {
    /// The HTTP client (trusting the server's CA when it speaks TLS).
    pub client: reqwest::Client,
    /// The server's endpoint, ending with `/`.
    pub endpoint: String,
    /// The host the requests are signed for: the endpoint's `host:port`.
    pub host: String,
    /// The access key [`SigningClient::send`] signs with.
    pub key: String,
    /// The clock requests are dated with (a server's injected clock keeps them within skew).
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SigningClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl SigningClient {
    /// A client of `endpoint` signing with `key`, dating requests by the system clock.
    pub fn new(client: reqwest::Client, endpoint: &str, key: &str) -> Self {
        Self {
            client,
            host: endpoint
                .split_once("://")
                .expect("endpoint with a scheme")
                .1
                .trim_end_matches('/')
                .to_owned(),
            endpoint: endpoint.to_owned(),
            key: key.to_owned(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Sends a request signed with [`SigningClient::key`] (x-ms-date).
    pub async fn send(&self, method: Method, target: &str, body: Option<&str>) -> Reply {
        self.signed(method, target, body.map(str::as_bytes), &self.key)
            .reply()
            .await
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

    /// Like [`SigningClient::signed`] with a chosen content type and, optionally, an
    /// Authorization value that replaces the real one.
    pub fn signed_with(
        &self,
        method: Method,
        target: &str,
        body: Option<&[u8]>,
        key: &str,
        content_type: &str,
        authorization: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let signed = Signed {
            method,
            target,
            body: body.unwrap_or_default(),
            key,
            date: SystemTime::from(self.clock.now()),
            host: &self.host,
        };
        let req = self.request(&signed, authorization);
        if signed.body.is_empty() {
            req
        } else {
            req.header("content-type", content_type)
        }
        .body(signed.body.to_vec())
    }

    /// Builds a request signed with [`SigningClient::key`] as if the client had named the host
    /// `signed_host` (the endpoint's host is still used to connect).
    pub fn signed_as(
        &self,
        method: Method,
        target: &str,
        body: &[u8],
        signed_host: &str,
    ) -> reqwest::RequestBuilder {
        self.json_request(&Signed {
            method,
            target,
            body,
            key: &self.key,
            date: SystemTime::from(self.clock.now()),
            host: signed_host,
        })
    }

    /// Sends a request signed with [`SigningClient::key`] as if the client had named the host
    /// `signed_host`.
    pub async fn send_signed_as(
        &self,
        method: Method,
        target: &str,
        body: Option<&str>,
        signed_host: &str,
    ) -> Reply {
        let body = body.unwrap_or_default().as_bytes();
        self.signed_as(method, target, body, signed_host)
            .reply()
            .await
    }

    /// Sends a request signed with [`SigningClient::key`] and dated `date` (a client whose
    /// clock differs from the server's).
    pub async fn send_dated(
        &self,
        method: Method,
        target: &str,
        body: Option<&str>,
        date: SystemTime,
    ) -> Reply {
        let signed = Signed {
            method,
            target,
            body: body.unwrap_or_default().as_bytes(),
            key: &self.key,
            date,
            host: &self.host,
        };
        self.json_request(&signed).reply().await
    }

    /// Waits (up to 10 s) until the server accepts this client's key: a resource or key made
    /// in the store takes effect when the server next polls it.
    pub async fn wait_until_accepted(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let reply = self
                .send(
                    Method::POST,
                    "/tokens/:introspect?api-version=2023-10-01",
                    Some(r#"{"token": "x"}"#),
                )
                .await;
            if reply.status != StatusCode::UNAUTHORIZED {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server never accepted the key: {}",
                reply.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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

    /// Issues a token (2023-10-01) to `id` for `scopes`.
    pub async fn issue(&self, id: &str, scopes: &[&str]) -> Reply {
        let body = serde_json::json!({ "scopes": scopes }).to_string();
        self.send(Method::POST, &issue_path(id), Some(&body)).await
    }

    /// The server's introspection of `token` (whether it is in force, and why not).
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

    /// The request with its three signed headers; Authorization replaced when asked.
    fn request(&self, signed: &Signed<'_>, authorization: Option<&str>) -> reqwest::RequestBuilder {
        let key = AccessKeyMac::from_base64(signed.key).expect("a base64 access key");
        let headers = sign_request(
            &key,
            signed.method.as_str(),
            signed.target,
            signed.host,
            signed.body,
            signed.date,
        );
        self.client
            .request(
                signed.method.clone(),
                format!("{}{}", self.endpoint.trim_end_matches('/'), signed.target),
            )
            .header("x-ms-date", headers.date)
            .header("x-ms-content-sha256", headers.content_hash)
            .header(
                "authorization",
                authorization.unwrap_or(&headers.authorization),
            )
    }

    /// The signed request with its body, typed JSON when there is one.
    fn json_request(&self, signed: &Signed<'_>) -> reqwest::RequestBuilder {
        let req = self.request(signed, None);
        if signed.body.is_empty() {
            req
        } else {
            req.header("content-type", "application/json")
        }
        .body(signed.body.to_vec())
    }
}

/// What a signature covers.
struct Signed<'a> {
    method: Method,
    target: &'a str,
    body: &'a [u8],
    key: &'a str,
    date: SystemTime,
    host: &'a str,
}

/// A response, its body parsed as JSON when there is one.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON; `Null` when empty or not JSON.
    pub body: Value,
    /// The body's bytes.
    pub raw: Vec<u8>,
}

impl Reply {
    /// Reads `resp` to its end.
    pub async fn read(resp: reqwest::Response) -> Reply {
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

/// Sends a built request and reads the reply: `req.reply().await`.
pub trait SendExt {
    /// Sends the request (a transport error fails the test) and reads the whole reply.
    fn reply(self) -> impl Future<Output = Reply> + Send;
}

impl SendExt for reqwest::RequestBuilder {
    async fn reply(self) -> Reply {
        Reply::read(self.send().await.expect("request sent")).await
    }
}

/// Percent-encodes `:` as the sync SDKs do.
pub fn enc(id: &str) -> String {
    id.replace(':', "%3A")
}

/// The request-target that issues a token to `id` (2023-10-01).
pub fn issue_path(id: &str) -> String {
    format!(
        "/identities/{}/:issueAccessToken?api-version=2023-10-01",
        enc(id)
    )
}

/// The access key of a connection string (`endpoint=...;accesskey=...`), read by the grammar
/// the server writes it in.
pub fn access_key(connection_string: &str) -> String {
    ConnectionStringParts::split(connection_string)
        .expect("a connection string")
        .access_key
        .expect("an accesskey part")
        .to_owned()
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
