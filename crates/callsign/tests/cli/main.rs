//! The `callsign` binary as scripts and operators use it: its CLI contract, restarts, SIGTERM,
//! durability under `kill -9`, and several nodes over one PostgreSQL database.

mod access;
mod audit;
mod bench;
mod client_commands;
mod copies;
mod dev;
mod failover;
mod faults;
mod hostile;
mod interrupted;
mod nodes;
mod operations;
mod permissions;
mod resources;
mod sealing;
mod secrets;
mod signing_keys;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callsign_testkit::{SigningClient, access_key, connect_postgres};
use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_callsign");

/// A `callsign serve` child process.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) endpoint: String,
    pub(crate) stdout: Vec<String>,
}

impl Server {
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_logging(data_dir, extra, "warn", Stdio::null())
    }

    /// Starts with `RUST_LOG=log_level`, the log going to `stderr`.
    pub(crate) fn start_logging(
        data_dir: &Path,
        extra: &[&str],
        log_level: &str,
        stderr: Stdio,
    ) -> Server {
        Self::start_through(Command::new(BIN), data_dir, extra, log_level, stderr)
    }

    /// Starts `callsign serve` through `command`: the binary itself, or a wrapper that executes
    /// it (`prlimit … callsign`).
    pub(crate) fn start_through(
        mut command: Command,
        data_dir: &Path,
        extra: &[&str],
        log_level: &str,
        stderr: Stdio,
    ) -> Server {
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", log_level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn callsign serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keeps reading after the banner: the server's standard output stays open.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("server printed its banner");
            let done = line.contains("export REQUESTS_CA_BUNDLE") || line.contains("http://");
            lines.push(line);
            if done {
                break;
            }
        }
        let endpoint = lines[0]
            .split_whitespace()
            .find(|w| w.starts_with("http"))
            .expect("endpoint in the first line")
            .to_owned();
        Server {
            child,
            endpoint,
            stdout: lines,
        }
    }

    /// The connection string the server printed in its banner (a first start prints it).
    pub(crate) fn connection_string(&self) -> String {
        self.stdout
            .iter()
            .find(|l| l.trim_start().starts_with("endpoint="))
            .expect("connection string in the banner")
            .trim()
            .to_owned()
    }

    pub(crate) fn host(&self) -> String {
        self.endpoint
            .split_once("://")
            .expect("scheme")
            .1
            .trim_end_matches('/')
            .to_owned()
    }

    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        wait_with_timeout(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run callsign");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the tests run as root (who ignores file permissions, and whom PostgreSQL refuses).
pub(crate) fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// The number of identities stored in the PostgreSQL database at `url`.
pub(crate) async fn count_identities(url: &str) -> i64 {
    connect_postgres(url)
        .await
        .query_one("SELECT count(*) FROM callsign_identities", &[])
        .await
        .expect("count")
        .get(0)
}

pub(crate) fn client(data_dir: &Path) -> reqwest::Client {
    let ca = std::fs::read(data_dir.join("tls/ca.pem")).expect("ca.pem");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Sends a request signed with `key` for `host`, as the SDKs sign.
pub(crate) async fn signed(
    client: &reqwest::Client,
    server_endpoint: &str,
    host: &str,
    key: &str,
    method: reqwest::Method,
    target: &str,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    SigningClient::new(client.clone(), server_endpoint, key)
        .signed_as(method, target, body.as_bytes(), host)
        .send()
        .await
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn first_start_prints_the_connection_string_and_ca_trust_and_restarts_keep_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &[]);
    assert!(server.endpoint.starts_with("https://127.0.0.1:"));
    let printed = server.connection_string();
    assert!(
        server
            .stdout
            .iter()
            .any(|l| l.contains("NODE_EXTRA_CA_CERTS="))
    );

    let (ok, cs, _) = run(&[
        "connection-string",
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "--endpoint",
        &server.endpoint,
    ]);
    assert!(ok);
    assert_eq!(cs.lines().count(), 1);
    assert_eq!(cs.trim(), printed);
    // Without --endpoint it names the endpoint the server announced.
    let (ok, cs, _) = run(&[
        "connection-string",
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(ok);
    assert_eq!(cs.trim(), printed);

    let (ok, pem, _) = run(&["ca-cert", "--data-dir", dir.path().to_str().expect("utf-8")]);
    assert!(ok);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        pem,
        std::fs::read_to_string(dir.path().join("tls/ca.pem")).expect("read")
    );

    let rt = runtime();
    let http = client(dir.path());
    let jwks_before: Value = rt.block_on(async {
        http.get(format!("{}.well-known/jwks.json", server.endpoint))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json")
    });
    let status = server.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status:?}");

    // Second start: no new resource, same keys, same signing key, same CA.
    let server = Server::start(dir.path(), &[]);
    assert!(
        !server.stdout.iter().any(|l| l.contains("accesskey=")),
        "secret printed again"
    );
    let (_, cs2, _) = run(&[
        "connection-string",
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "--endpoint",
        &server.endpoint,
    ]);
    assert_eq!(access_key(&cs2), access_key(&printed));
    let http = client(dir.path());
    let jwks_after: Value = rt.block_on(async {
        http.get(format!("{}.well-known/jwks.json", server.endpoint))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json")
    });
    assert_eq!(jwks_before, jwks_after);
    let host = server.host();
    let r = rt.block_on(signed(
        &http,
        &server.endpoint,
        &host,
        &access_key(&cs2),
        reqwest::Method::POST,
        "/identities?api-version=2023-10-01",
        "",
    ));
    assert_eq!(r.expect("create").status(), 201);
    assert!(server.terminate().success());
}

#[test]
fn bad_flags_and_an_unusable_data_dir_fail_with_one_clear_line() {
    let (ok, _, err) = run(&["serve", "--signing-alg", "none"]);
    assert!(!ok);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("none"));

    let file = tempfile::NamedTempFile::new().expect("file");
    let (ok, _, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        file.path().to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(err.contains("data dir"), "{err}");

    let (ok, _, err) = run(&[
        "connection-string",
        "--endpoint",
        "ftp://x",
        "--data-dir",
        "/nonexistent/x",
    ]);
    assert!(!ok);
    assert!(err.contains("--endpoint"), "{err}");
}

#[test]
fn plain_http_mode_serves_without_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &["--plain-http"]);
    assert!(
        server.endpoint.starts_with("http://127.0.0.1:"),
        "{}",
        server.endpoint
    );
    let rt = runtime();
    let status = rt.block_on(async {
        reqwest::get(format!("{}health", server.endpoint))
            .await
            .expect("health")
            .status()
    });
    assert_eq!(status, 200);
    assert!(server.terminate().success());
}

/// A server whose standard output is closed (its reader went away) serves on: the banner is
/// not worth the service.
#[test]
fn a_closed_standard_output_does_not_stop_the_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--plain-http",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn callsign serve");
    // The endpoint file is written before the banner.
    let endpoint_file = dir.path().join("endpoint");
    let deadline = Instant::now() + Duration::from_secs(30);
    let endpoint = loop {
        if let Ok(e) = std::fs::read_to_string(&endpoint_file) {
            break e;
        }
        assert!(Instant::now() < deadline, "no endpoint file");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the server exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rt = runtime();
    let status = rt.block_on(async {
        // Until it answers: the banner attempt comes after the endpoint file.
        loop {
            match reqwest::get(format!("{endpoint}health")).await {
                Ok(r) => break r.status(),
                Err(e) => {
                    assert!(Instant::now() < deadline, "no answer: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the server exited"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(wait_with_timeout(&mut child, Duration::from_secs(30)).success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(stderr.contains("cannot print the start banner"), "{stderr}");
    assert!(
        !stderr.contains("accesskey="),
        "the connection string leaked: {stderr}"
    );
}

/// Every identity whose create was acknowledged before a `kill -9` is there after a restart.
#[test]
fn acknowledged_creates_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path(), &[]);
    let cs = server.connection_string();
    let key = access_key(&cs);
    let rt = runtime();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let http = client(dir.path());
    let host = server.host();
    let endpoint = server.endpoint.clone();

    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (http, host, endpoint, key, acked) = (
                http.clone(),
                host.clone(),
                endpoint.clone(),
                key.clone(),
                Arc::clone(&acked),
            );
            tasks.push(tokio::spawn(async move {
                // Bounded: at most 2,000 creates per task; the kill ends it much sooner.
                for _ in 0..2_000 {
                    let r = signed(
                        &http,
                        &endpoint,
                        &host,
                        &key,
                        reqwest::Method::POST,
                        "/identities?api-version=2023-10-01",
                        "",
                    )
                    .await;
                    let Ok(r) = r else { break };
                    if r.status() != 201 {
                        break;
                    }
                    let Ok(body) = r.json::<Value>().await else {
                        break;
                    };
                    let id = body["identity"]["id"].as_str().expect("id").to_owned();
                    acked.lock().expect("lock").push(id);
                }
            }));
        }
        // Let the burst run, then pull the plug in the middle of it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().expect("lock").len() < 300 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.child.kill().expect("kill -9");
        for t in tasks {
            let _ = t.await;
        }
    });
    let _ = server.child.wait();
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 300,
        "only {} creates acknowledged",
        acked.len()
    );
    drop(server);

    let server = Server::start(dir.path(), &[]);
    let http = client(dir.path());
    let host = server.host();
    rt.block_on(async {
        let mut missing = Vec::new();
        for id in &acked {
            let target = format!(
                "/identities/{}?api-version=2025-03-02-preview",
                id.replace(':', "%3A")
            );
            let r = signed(
                &http,
                &server.endpoint,
                &host,
                &key,
                reqwest::Method::GET,
                &target,
                "",
            )
            .await
            .expect("get");
            if r.status() != 200 {
                missing.push(id.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged identities lost: {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
    });
    assert!(server.terminate().success());
}
