//! A live callsign server (from the test kit) and a canned HTTP/1.1 server, both on 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callsign_client::{CommunicationIdentityClient, ConnectionString, RetryPolicy};
use callsign_testkit::{Backend, TestApp, spawn_app};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A valid access key that belongs to no server.
pub const OTHER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// An id of another resource (the one the JS SDK's tests use).
pub const FOREIGN_ID: &str =
    "8:acs:00000000-0000-0000-0000-000000000000_00000000-0000-0000-0000-000000000000";

/// A running server with a fresh database, and the SDK's client for it.
pub struct TestServer {
    pub connection_string: String,
    pub endpoint: String,
    pub ca_path: PathBuf,
    pub ca_pem: Vec<u8>,
    _app: TestApp,
}

/// A server on SQLite: what the client does does not depend on the backend (the server's
/// black-box suite runs on both).
pub async fn spawn_server() -> TestServer {
    server_of(spawn_app(Backend::Sqlite).await)
}

/// A server on SQLite trusting the OIDC `issuer` for the audience `api://callsign`.
pub async fn spawn_server_trusting(issuer: &str) -> TestServer {
    use callsign_server::oidc::{Audience, TrustedIssuer, TrustedIssuerConfig};
    let issuer = TrustedIssuer::from_config(TrustedIssuerConfig {
        issuer: issuer.to_owned(),
        audience: Audience::One("api://callsign".into()),
        ..TrustedIssuerConfig::default()
    })
    .expect("a valid issuer");
    let app = callsign_testkit::TestApp::builder()
        .settings(move |s| s.oidc_issuers = vec![issuer])
        .spawn()
        .await;
    server_of(app)
}

fn server_of(app: TestApp) -> TestServer {
    assert!(
        app.endpoint.starts_with("https://"),
        "the default server speaks TLS with its local CA"
    );
    TestServer {
        connection_string: app.connection_string.clone(),
        endpoint: app.endpoint.clone(),
        ca_path: app.ca_path(),
        ca_pem: app.ca_pem(),
        _app: app,
    }
}

impl TestServer {
    /// A client trusting the server's CA, without retries (errors show at once).
    pub fn client(&self) -> CommunicationIdentityClient {
        self.client_for(&self.connection_string)
    }

    /// A client of this server's endpoint signing with `key`.
    pub fn client_with_key(&self, key: &str) -> CommunicationIdentityClient {
        self.client_for(&format!("endpoint={};accesskey={key}", self.endpoint))
    }

    fn client_for(&self, cs: &str) -> CommunicationIdentityClient {
        CommunicationIdentityClient::builder(
            ConnectionString::parse(cs).expect("connection string"),
        )
        .add_trusted_ca_pem(self.ca_pem.clone())
        .retry_policy(RetryPolicy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
    }
}

/// One request as the canned server received it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    /// The request-target exactly as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the canned server does with the n-th request.
#[derive(Debug, Clone)]
pub enum Canned {
    /// Answers with these bytes and closes the connection.
    Respond(String),
    /// Never answers.
    Hang,
}

/// An HTTP/1.1 response with `Connection: close`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Canned {
    let mut s = format!("HTTP/1.1 {status} Canned\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        s.push_str("content-type: application/json; charset=utf-8\r\n");
    }
    s.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    Canned::Respond(s)
}

/// The 201 of a create.
pub fn created(id: &str) -> Canned {
    response(201, &[], &format!(r#"{{"identity":{{"id":"{id}"}}}}"#))
}

/// A server on 127.0.0.1 answering the n-th request with the n-th canned reply (the last one
/// for every request after that), recording what it got.
pub struct CannedServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CannedServer {
    pub async fn start(replies: Vec<Canned>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, replies)
    }

    pub fn serve(listener: TcpListener, replies: Vec<Canned>) -> Self {
        assert!(!replies.is_empty());
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let replies = Arc::new(replies);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = Arc::clone(&recorded);
                let replies = Arc::clone(&replies);
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    let _ = answer(stream, &recorded, &replies, &next).await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// A client of this server with a fast retry policy.
    pub fn client(&self, retry: RetryPolicy, timeout: Duration) -> CommunicationIdentityClient {
        CommunicationIdentityClient::builder(
            ConnectionString::from_parts(&self.endpoint(), OTHER_KEY).expect("connection string"),
        )
        .retry_policy(retry)
        .timeout(timeout)
        .build()
        .expect("client")
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut stream: TcpStream,
    recorded: &Mutex<Vec<Captured>>,
    replies: &[Canned],
    next: &AtomicUsize,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    recorded.lock().expect("lock").push(Captured {
        method,
        target,
        headers,
        body,
    });
    let i = next.fetch_add(1, Ordering::SeqCst).min(replies.len() - 1);
    match &replies[i] {
        Canned::Respond(bytes) => {
            stream.write_all(bytes.as_bytes()).await?;
            stream.shutdown().await?;
        }
        Canned::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    Ok(())
}
