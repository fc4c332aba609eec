//! Hostile clients against the real binary: amplification attempts, oversized heads, idle and
//! stalled connections, the connection cap, the failed-authentication limit and a `/health`
//! flood. Every test starts its own server with short deadlines, talks to 127.0.0.1 only (and
//! 127.0.0.2 as a second source address), and bounds its own time and request count.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use callsign_hmac::{AccessKeyMac, content_hash, format_date, string_to_sign};
use callsign_testkit::TestDatabase;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{Server, client, run, runtime, signed};

const CREATE: &str = "/identities?api-version=2023-10-01";
/// 32 zero bytes in base64: a well-formed signature that matches nothing, and a wrong key.
const WRONG: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
/// Upper bound for anything a deadline of 2 s must have closed, on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(15);
/// Lower bound showing that a deadline of 2 s, not something else, closed a connection.
const AT_LEAST: Duration = Duration::from_secs(1);
const KIB_PER_MIB: u64 = 1024;

// ---------------------------------------------------------------------------------------------
// Helpers

fn access_key(dir: &Path) -> String {
    let (ok, cs, err) = run(&[
        "connection-string",
        "--data-dir",
        dir.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    callsign_testkit::access_key(&cs)
}

fn addr(server: &Server) -> SocketAddr {
    server.host().parse().expect("socket address")
}

fn tls(dir: &Path, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("tls/ca.pem")).expect("ca.pem") {
        roots.add(cert.expect("pem")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// TCP connect and a complete TLS handshake.
async fn connect(tls: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::from(addr.ip());
    tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// An HTTP/1.1 request, byte for byte.
fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The host, date, content hash and Authorization headers of a properly signed request.
fn sign(key: &str, method: &str, target: &str, host: &str, body: &[u8]) -> [(String, String); 4] {
    let date = format_date(SystemTime::now());
    let hash = content_hash(body);
    let sts = string_to_sign(method, target, &[&date, host, &hash]);
    let sig = AccessKeyMac::from_base64(key).expect("key").sign(&sts);
    [
        ("host".into(), host.into()),
        ("x-ms-date".into(), date),
        ("x-ms-content-sha256".into(), hash),
        (
            "authorization".into(),
            format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"),
        ),
    ]
}

fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The ACS error code, or "" when the body is not an ACS error.
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (Content-Length framed, else up to EOF).
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Sends a request and reads its response, within 15 s.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
) -> std::io::Result<Response> {
    tokio::time::timeout(BOUND, async {
        s.write_all(req).await?;
        s.flush().await?;
        read_response(s).await
    })
    .await
    .map_err(|_| std::io::Error::other("no response within 15 s"))?
}

/// Reads until the peer closes (EOF, or an error such as a reset) and returns how long after
/// `since` that was and what arrived meanwhile; panics if still open after `limit`.
async fn wait_closed<S: AsyncRead + Unpin>(
    s: &mut S,
    since: Instant,
    limit: Duration,
) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection was still open {:?} after the last byte sent",
                since.elapsed()
            ),
            Ok(Ok(0) | Err(_)) => return (since.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn assert_closed_by_deadline(what: &str, took: Duration) {
    assert!(
        took >= AT_LEAST,
        "{what}: closed after {took:?}, sooner than the deadline"
    );
    assert!(took <= BOUND, "{what}: closed only after {took:?}");
}

fn proc_file(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).expect("procfs")
}

/// utime + stime of the whole process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = proc_file(pid, "stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Nanoseconds on CPU summed over the live threads (`schedstat`), when the kernel has it.
fn cpu_ns_precise(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    proc_file(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("status field")
}

fn assert_denied(r: &Response) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"error": {"code": "Denied", "message": "Denied by the resource provider."}}),
        "{r:?}"
    );
}

fn assert_acs_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.code(), code, "{r:?}");
    assert!(
        r.json()["error"]["message"].is_string(),
        "an ACS error body: {r:?}"
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// 1. Amplification

#[test]
fn amplification_is_refused_and_the_worst_request_costs_about_an_ordinary_401() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Hundreds of failed authentications from one address: the per-address limit is off here.
    let server = Server::start(dir.path(), &["--auth-failures-per-minute", "0"]);
    // The most keys a request to the server's address is tried against: as many resources as
    // may share it, each with a verify-only key.
    let data_dir = dir.path().to_str().expect("utf-8");
    for name in ["second", "third", "fourth"] {
        let (ok, _, err) =
            crate::run(&["resource", "create", "--name", name, "--data-dir", data_dir]);
        assert!(ok, "{err}");
    }
    for name in ["default", "second", "third", "fourth"] {
        let (ok, _, err) = crate::run(&[
            "keys",
            "verify-only",
            "--resource",
            name,
            "--data-dir",
            data_dir,
        ]);
        assert!(ok, "{err}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = server.child.id();
    let host = server.host();
    let addr = addr(&server);
    let tls = tls(dir.path(), b"http/1.1");
    let hwm_before = status_kib(pid, "VmHWM");
    let ticks = clock_ticks_per_sec();
    let tick_ns = 1_000_000_000 / ticks;
    let rt = runtime();
    let date = format_date(SystemTime::now());
    let hash = content_hash(b"");

    // (a) The old attack: one 190 KB unauthenticated request naming a 150 KB header 20,000 times.
    let big = "v".repeat(150 * 1024);
    let names = vec!["a"; 20_000].join(";");
    let auth = format!("HMAC-SHA256 SignedHeaders={names}&Signature={WRONG}");
    let old_attack = request(
        "POST",
        CREATE,
        &[
            ("host", &host),
            ("x-ms-date", &date),
            ("x-ms-content-sha256", &hash),
            ("a", &big),
            ("authorization", &auth),
            ("content-length", "0"),
        ],
        b"",
    );
    assert!(old_attack.len() >= 190_000, "{}", old_attack.len());
    let cpu_a = cpu_ticks(pid);
    let (took_a, outcome_a) = rt.block_on(async {
        let started = Instant::now();
        let mut s = connect(&tls, addr).await;
        let outcome = tokio::time::timeout(BOUND, async {
            // The server may close while this is still being written: that is a refusal too.
            let _ = s.write_all(&old_attack).await;
            let _ = s.flush().await;
            read_response(&mut s).await
        })
        .await
        .expect("the old attack is answered or closed within 15 s");
        (started.elapsed(), outcome)
    });
    let cpu_a = (cpu_ticks(pid) - cpu_a) * tick_ns;
    match &outcome_a {
        Ok(r) => assert_eq!(r.status, 431, "{r:?}"),
        Err(e) => eprintln!("amplification (a): connection closed ({e})"),
    }
    assert!(
        took_a < Duration::from_secs(5),
        "the old attack took {took_a:?}"
    );
    eprintln!(
        "amplification (a): {} bytes -> {} in {took_a:?}, server CPU {} ms (tick resolution {} ms)",
        old_attack.len(),
        outcome_a
            .as_ref()
            .map_or("closed".to_owned(), |r| r.status.to_string()),
        cpu_a / 1_000_000,
        tick_ns / 1_000_000
    );

    // (b) The worst request within the limits: a ~2000-byte target on a known route, ~30 KB of
    // other headers and a 512-byte Authorization signing the three headers, wrongly.
    let prefix = "/identities/8%3Aacs%3A";
    let suffix = "/:issueAccessToken?api-version=2023-10-01";
    let long_target = format!(
        "{prefix}{}{suffix}",
        "a".repeat(2000 - prefix.len() - suffix.len())
    );
    assert_eq!(long_target.len(), 2000);
    let mut auth512 = format!(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={WRONG}&pad="
    );
    auth512.push_str(&"p".repeat(512 - auth512.len()));
    assert_eq!(auth512.len(), 512);
    let mut worst_headers: Vec<(String, String)> = vec![
        ("host".into(), host.clone()),
        ("x-ms-date".into(), date.clone()),
        ("x-ms-content-sha256".into(), hash.clone()),
        ("authorization".into(), auth512),
        ("content-type".into(), "application/json".into()),
        ("content-length".into(), "0".into()),
    ];
    // The head size as the server counts it: target plus name + value + 4 per header.
    let size = |hs: &[(String, String)]| -> usize {
        long_target.len() + hs.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>()
    };
    let fillers = 50;
    let room = 32 * 1024 - 64 - size(&worst_headers);
    for i in 0..fillers {
        let name = format!("x-filler-{i:02}");
        let value = "f".repeat(room / fillers - name.len() - 4);
        worst_headers.push((name, value));
    }
    let worst_size = size(&worst_headers);
    assert!(
        (31_000..=32 * 1024).contains(&worst_size) && worst_headers.len() <= 64,
        "{worst_size} bytes, {} headers",
        worst_headers.len()
    );
    let worst = request("POST", &long_target, &pairs(&worst_headers), b"");
    let short_auth =
        format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={WRONG}");
    let ordinary = request(
        "POST",
        CREATE,
        &[
            ("host", &host),
            ("x-ms-date", &date),
            ("x-ms-content-sha256", &hash),
            ("authorization", &short_auth),
            ("content-length", "0"),
        ],
        b"",
    );
    // (c) SignedHeaders naming host 50 times.
    let hosts = vec!["host"; 50].join(";");
    let many_hosts = request(
        "POST",
        CREATE,
        &[
            ("host", &host),
            ("x-ms-date", &date),
            ("x-ms-content-sha256", &hash),
            (
                "authorization",
                &format!("HMAC-SHA256 SignedHeaders={hosts}&Signature={WRONG}"),
            ),
            ("content-length", "0"),
        ],
        b"",
    );

    const N: u64 = 300;
    let (ticks_ordinary, ticks_worst, ns_ordinary, ns_worst, mut latencies) = rt.block_on(async {
        let mut s = connect(&tls, addr).await;
        let r = exchange(&mut s, &many_hosts).await.expect("(c) answered");
        assert_denied(&r);
        for _ in 0..20 {
            let r = exchange(&mut s, &ordinary).await.expect("warm-up");
            assert_denied(&r);
            let r = exchange(&mut s, &worst).await.expect("warm-up");
            assert_denied(&r);
        }
        let (t0, n0) = (cpu_ticks(pid), cpu_ns_precise(pid));
        for _ in 0..N {
            let r = exchange(&mut s, &ordinary).await.expect("ordinary 401");
            assert_denied(&r);
        }
        let (t1, n1) = (cpu_ticks(pid), cpu_ns_precise(pid));
        let mut latencies = Vec::new();
        for _ in 0..N {
            let started = Instant::now();
            let r = exchange(&mut s, &worst)
                .await
                .expect("every worst request answered");
            latencies.push(started.elapsed());
            assert_denied(&r);
        }
        let (t2, n2) = (cpu_ticks(pid), cpu_ns_precise(pid));
        // Threads that exit take their counts along: no delta then.
        let precise = |a: Option<u64>, b: Option<u64>| a.zip(b).and_then(|(a, b)| b.checked_sub(a));
        (
            t1 - t0,
            t2 - t1,
            precise(n0, n1),
            precise(n1, n2),
            latencies,
        )
    });
    let per = |ticks: u64| ticks * tick_ns / N;
    let extra_ns = per(ticks_worst) as i64 - per(ticks_ordinary) as i64;
    let median_latency = median(&mut latencies);
    let hwm_growth = status_kib(pid, "VmHWM").saturating_sub(hwm_before);
    eprintln!(
        "amplification (b) vs ordinary 401, {N} each, {worst_size}-byte head: \
         utime+stime ordinary {} µs/req, worst {} µs/req, extra {} µs/req \
         (tick {} ms, so ±{} µs/req)",
        per(ticks_ordinary) / 1000,
        per(ticks_worst) / 1000,
        extra_ns / 1000,
        tick_ns / 1_000_000,
        2 * tick_ns / N / 1000
    );
    if let (Some(o), Some(w)) = (ns_ordinary, ns_worst) {
        eprintln!(
            "amplification (b) vs ordinary 401 (schedstat, ns resolution): ordinary {} µs/req, \
             worst {} µs/req, extra {} µs/req",
            o / N / 1000,
            w / N / 1000,
            (w as i64 - o as i64) / N as i64 / 1000
        );
    }
    eprintln!(
        "amplification (b): median latency {median_latency:?}, max {:?}; VmHWM growth {} KiB",
        latencies.last().expect("latencies"),
        hwm_growth
    );
    // Latency is measured in the benchmarks, not asserted here: this only shows no request
    // stalls (the cost bound is the CPU comparison below).
    assert!(
        median_latency < Duration::from_secs(1),
        "median latency {median_latency:?}"
    );
    assert!(
        hwm_growth < 64 * KIB_PER_MIB,
        "peak RSS grew by {hwm_growth} KiB"
    );
    // A regression bound, not the target (< 100 µs; measured ~20 µs in a release build). An
    // unoptimised (debug) build spends ~1 ms more on the worst request, nearly all of it in
    // parsing and storing its 56 header fields and 32 KB head, so its bound is looser. On a
    // machine busy with other work every request's CPU time inflates alike: the bound grows
    // with the ordinary request's cost (an amplification would be many times it).
    let ordinary_ns = per(ticks_ordinary) as i64;
    let bound_ns = if cfg!(debug_assertions) {
        5_000_000
    } else {
        1_000_000
    }
    .max(4 * ordinary_ns);
    assert!(
        extra_ns < bound_ns,
        "the worst request costs {extra_ns} ns more CPU than an ordinary 401 (bound {bound_ns} ns)"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. 431 and 414

#[test]
fn oversized_heads_get_431_and_long_targets_414() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &[]);
    let host = server.host();
    let addr = addr(&server);
    let tls = tls(dir.path(), b"http/1.1");
    let rt = runtime();
    rt.block_on(async {
        let send = |req: Vec<u8>| {
            let tls = tls.clone();
            async move {
                let mut s = connect(&tls, addr).await;
                exchange(&mut s, &req).await.expect("a response")
            }
        };
        let filler = |n: usize, len: usize| -> Vec<(String, String)> {
            (0..n)
                .map(|i| (format!("x-filler-{i:02}"), "f".repeat(len)))
                .collect()
        };
        let with_host = |mut hs: Vec<(String, String)>| {
            hs.insert(0, ("host".into(), host.clone()));
            hs
        };

        // 40 KB of headers, 41 fields: over the byte limit, under hyper's own.
        let hs = with_host(filler(40, 1000));
        let r = send(request("GET", "/health", &pairs(&hs), b"")).await;
        assert_acs_error(&r, 431, "RequestHeaderFieldsTooLarge");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{r:?}"
        );

        // 65 fields: one over the limit, refused by the server with the ACS body.
        let hs = with_host(filler(64, 10));
        let r = send(request("GET", "/health", &pairs(&hs), b"")).await;
        assert_acs_error(&r, 431, "RequestHeaderFieldsTooLarge");

        // 70 fields: 431 (hyper may refuse these itself, with a bare 431).
        let hs = with_host(filler(69, 10));
        let r = send(request("GET", "/health", &pairs(&hs), b"")).await;
        assert_eq!(r.status, 431, "{r:?}");
        if !r.body.is_empty() {
            assert_acs_error(&r, 431, "RequestHeaderFieldsTooLarge");
        }

        // 3000-byte request-target: 414 UriTooLong.
        let head = "/identities/";
        let tail = "?api-version=2023-10-01";
        let target = format!("{head}{}{tail}", "a".repeat(3000 - head.len() - tail.len()));
        assert_eq!(target.len(), 3000);
        let hs = with_host(Vec::new());
        let r = send(request("GET", &target, &pairs(&hs), b"")).await;
        assert_acs_error(&r, 414, "UriTooLong");

        // 2048 bytes is still served.
        let target = format!("/health?pad={}", "p".repeat(2048 - "/health?pad=".len()));
        let r = send(request("GET", &target, &pairs(&hs), b"")).await;
        assert_eq!(r.status, 200, "{r:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Idle TLS connections and stalled handshakes

#[test]
fn an_idle_tls_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &["--idle-timeout-secs", "2"]);
    let addr = addr(&server);
    let tls = tls(dir.path(), b"http/1.1");
    let rt = runtime();
    let (took, got) = rt.block_on(async {
        let mut s = connect(&tls, addr).await;
        let since = Instant::now();
        wait_closed(&mut s, since, BOUND).await
    });
    eprintln!("idle TLS connection closed after {took:?}");
    assert_closed_by_deadline("idle TLS connection", took);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

#[test]
fn a_connection_that_never_starts_tls_is_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &[
            "--tls-handshake-timeout-secs",
            "2",
            "--idle-timeout-secs",
            "60",
        ],
    );
    let addr = addr(&server);
    let rt = runtime();
    let (took, got) = rt.block_on(async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let since = Instant::now();
        wait_closed(&mut s, since, BOUND).await
    });
    eprintln!("silent TCP connection closed after {took:?}");
    assert_closed_by_deadline("TCP connection without a handshake", took);
    assert!(got.is_empty(), "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Idle HTTP/2 connection

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_DATA: u8 = 0x0;
const H2_HEADERS: u8 = 0x1;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;
const H2_ACK: u8 = 0x1;
const H2_END_STREAM: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;
const H2_SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// One HTTP/2 frame, byte for byte.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    assert!(len < 1 << 24, "frame too long");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A received HTTP/2 frame.
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Removes the complete frames at the front of `buf` and returns them.
fn h2_take_frames(buf: &mut Vec<u8>) -> Vec<H2Frame> {
    let mut frames = Vec::new();
    while buf.len() >= 9 {
        let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
        if buf.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
        frames.push(H2Frame {
            kind: buf[3],
            flags: buf[4],
            stream,
            payload: buf[9..9 + len].to_vec(),
        });
        buf.drain(..9 + len);
    }
    frames
}

/// The acknowledgement of a PING from the peer.
fn h2_ping_ack(payload: &[u8]) -> Vec<u8> {
    h2_frame(H2_PING, H2_ACK, 0, payload)
}

#[test]
fn an_idle_http2_connection_gets_goaway_then_is_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &["--idle-timeout-secs", "2"]);
    let addr = addr(&server);
    let tls = tls(dir.path(), b"h2");
    let rt = runtime();
    let (goaway_after, closed_after) = rt.block_on(async {
        let mut s = connect(&tls, addr).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        s.write_all(H2_PREFACE).await.expect("preface");
        s.write_all(&h2_frame(H2_SETTINGS, 0, 0, &[]))
            .await
            .expect("settings");
        s.flush().await.expect("flush");
        let mut since = Instant::now();
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut goaway_after = None;
        loop {
            let left = BOUND.saturating_sub(since.elapsed());
            let n = match tokio::time::timeout(left, s.read(&mut chunk)).await {
                Err(_) => panic!("HTTP/2 connection still open after {:?}", since.elapsed()),
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            for frame in h2_take_frames(&mut buf) {
                match frame.kind {
                    H2_SETTINGS if frame.flags & H2_ACK == 0 => {
                        s.write_all(&h2_frame(H2_SETTINGS, H2_ACK, 0, &[]))
                            .await
                            .expect("settings ack");
                        s.flush().await.expect("flush");
                        if goaway_after.is_none() {
                            since = Instant::now();
                        }
                    }
                    H2_PING if frame.flags & H2_ACK == 0 && goaway_after.is_some() => {
                        // The graceful shutdown's PING: answering it lets the server finish.
                        let _ = s.write_all(&h2_ping_ack(&frame.payload)).await;
                        let _ = s.flush().await;
                    }
                    H2_GOAWAY if goaway_after.is_none() => goaway_after = Some(since.elapsed()),
                    _ => {}
                }
            }
        }
        (goaway_after, since.elapsed())
    });
    eprintln!(
        "idle HTTP/2 connection: GOAWAY after {goaway_after:?}, closed after {closed_after:?}"
    );
    let goaway_after = goaway_after.expect("a GOAWAY frame before the close");
    assert_closed_by_deadline("idle HTTP/2 connection (GOAWAY)", goaway_after);
    assert!(closed_after <= BOUND, "closed after {closed_after:?}");
}

/// A request HEADERS block for `GET path` over https, HPACK by hand: indexed `:method GET` (2)
/// and `:scheme https` (7), then `:path` (4) and `:authority` (1) as literals without indexing,
/// so every block stands alone (no dynamic table).
fn h2_get_headers(path: &str, authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87];
    for (index, value) in [(0x04u8, path), (0x01, authority)] {
        let len = u8::try_from(value.len()).expect("short value");
        assert!(len < 0x7f, "a one-byte HPACK length");
        block.push(index);
        block.push(len);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// A client that opens streams it never lets the server answer (its window is zero) and keeps
/// the connection busy with PINGs: the idle deadline must close it all the same, since only
/// requests starting or finishing count as activity, not bytes moving.
#[test]
fn an_http2_connection_with_stalled_streams_kept_busy_by_pings_is_closed() {
    const STREAMS: u32 = 8;
    const PING_EVERY: Duration = Duration::from_millis(500);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &["--idle-timeout-secs", "2", "--request-timeout-secs", "2"],
    );
    let host = server.host();
    let addr = addr(&server);
    let tls = tls(dir.path(), b"h2");
    let rt = runtime();
    let outcome = rt.block_on(async {
        let mut s = connect(&tls, addr).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut hello = H2_PREFACE.to_vec();
        let mut window_zero = H2_SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
        window_zero.extend_from_slice(&0u32.to_be_bytes());
        hello.extend(h2_frame(H2_SETTINGS, 0, 0, &window_zero));
        let block = h2_get_headers("/health", &host);
        for i in 0..STREAMS {
            hello.extend(h2_frame(
                H2_HEADERS,
                H2_END_STREAM | H2_END_HEADERS,
                2 * i + 1,
                &block,
            ));
        }
        s.write_all(&hello)
            .await
            .expect("preface, settings, requests");
        s.flush().await.expect("flush");
        let since = Instant::now();

        let mut pings = tokio::time::interval(PING_EVERY);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent: u64 = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let mut answered = std::collections::BTreeSet::new();
        let mut data_frames = 0;
        let mut goaway = None;
        let deadline = tokio::time::sleep(BOUND);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => panic!(
                    "HTTP/2 connection with stalled streams still open after {:?} \
                     ({sent} PINGs sent, GOAWAY {goaway:?})",
                    since.elapsed()
                ),
                _ = pings.tick() => {
                    sent += 1;
                    // Once the server is gone a write may fail; the read below sees the end.
                    let _ = s.write_all(&h2_frame(H2_PING, 0, 0, &sent.to_be_bytes())).await;
                    let _ = s.flush().await;
                }
                read = s.read(&mut chunk) => {
                    let n = match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    for frame in h2_take_frames(&mut buf) {
                        let reply = match frame.kind {
                            H2_SETTINGS if frame.flags & H2_ACK == 0 => {
                                Some(h2_frame(H2_SETTINGS, H2_ACK, 0, &[]))
                            }
                            H2_PING if frame.flags & H2_ACK == 0 => {
                                Some(h2_ping_ack(&frame.payload))
                            }
                            H2_HEADERS => {
                                answered.insert(frame.stream);
                                None
                            }
                            H2_DATA => {
                                data_frames += 1;
                                None
                            }
                            H2_GOAWAY => {
                                goaway.get_or_insert((since.elapsed(), sent));
                                None
                            }
                            _ => None,
                        };
                        if let Some(reply) = reply {
                            let _ = s.write_all(&reply).await;
                            let _ = s.flush().await;
                        }
                    }
                }
            }
        }
        (goaway, since.elapsed(), sent, answered, data_frames)
    });
    let (goaway, closed_after, sent, answered, data_frames) = outcome;
    eprintln!(
        "stalled HTTP/2 streams: GOAWAY (after, PINGs sent by then) {goaway:?}, closed after \
         {closed_after:?}, {sent} PINGs sent in all, response heads on streams {answered:?}, \
         {data_frames} DATA frames"
    );
    // The requests reached the handler, and the zero window kept every response body back.
    assert!(!answered.is_empty(), "no response HEADERS at all");
    assert_eq!(
        data_frames, 0,
        "a response body left despite the zero window"
    );
    let (goaway_after, pings_by_then) = goaway.expect("a GOAWAY frame before the close");
    assert!(
        pings_by_then >= 3,
        "only {pings_by_then} PINGs before the GOAWAY: the test did not keep the connection busy"
    );
    assert!(
        (AT_LEAST..=Duration::from_secs(6)).contains(&goaway_after),
        "GOAWAY after {goaway_after:?}, expected about 2 s (the idle deadline)"
    );
    // The GOAWAY, then at most the 5 s grace for streams that cannot finish.
    assert!(
        closed_after <= Duration::from_secs(11),
        "closed only after {closed_after:?}, although the client did nothing but PING"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Half-sent head, slow body

/// A 40-byte JSON body.
fn body40() -> Vec<u8> {
    let mut body = br#"{"createTokenWithScopes":["chat"]}"#.to_vec();
    body.resize(40, b' ');
    body
}

/// The head and first 5 body bytes of a signed create whose 40-byte body never completes.
fn stalled_create(key: &str, host: &str) -> Vec<u8> {
    let body = body40();
    let mut hs = sign(key, "POST", CREATE, host, &body).to_vec();
    hs.push(("content-type".into(), "application/json".into()));
    hs.push(("content-length".into(), body.len().to_string()));
    request("POST", CREATE, &pairs(&hs), &body[..5])
}

#[test]
fn a_half_sent_head_and_a_slow_body_are_cut_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &[
            "--plain-http",
            "--header-timeout-secs",
            "2",
            "--body-timeout-secs",
            "2",
        ],
    );
    assert!(
        server.endpoint.starts_with("http://"),
        "{}",
        server.endpoint
    );
    let key = access_key(dir.path());
    let host = server.host();
    let addr = addr(&server);
    let rt = runtime();
    rt.block_on(async {
        // Half a head, then nothing.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /identities?api-version=2023-10-01 HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let since = Instant::now();
        let (took, got) = wait_closed(&mut s, since, BOUND).await;
        let got = String::from_utf8_lossy(&got);
        eprintln!("half-sent head: closed after {took:?}, received {got:?}");
        assert_closed_by_deadline("half-sent head", took);
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got:?}");

        // A signed head, 5 of 40 body bytes, then nothing.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&stalled_create(&key, &host))
            .await
            .expect("write");
        let since = Instant::now();
        let r = tokio::time::timeout(BOUND, read_response(&mut s))
            .await
            .expect("a response within 15 s")
            .expect("a response");
        let took = since.elapsed();
        eprintln!("slow body: {} after {took:?}", r.status);
        assert_closed_by_deadline("slow body", took);
        assert_acs_error(&r, 408, "RequestTimeout");
    });
}

// ---------------------------------------------------------------------------------------------
// 6. The connection cap

#[test]
fn at_the_cap_idle_connections_make_room_and_busy_ones_refuse_newcomers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &["--max-connections", "8"]);
    let key = access_key(dir.path());
    let host = server.host();
    let addr = addr(&server);
    let tls = tls(dir.path(), b"http/1.1");
    let rt = runtime();
    rt.block_on(async {
        // Eight idle connections fill the cap.
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(connect(&tls, addr).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A well-behaved client still gets in: the longest-idle connection makes room.
        let http = client(dir.path());
        let r = signed(
            &http,
            &server.endpoint,
            &host,
            &key,
            reqwest::Method::POST,
            CREATE,
            "",
        )
        .await
        .expect("create at the cap");
        assert_eq!(r.status(), 201);

        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let mut watchers = Vec::new();
        for mut s in idle {
            let tx = tx.clone();
            watchers.push(tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = tx.send(()).await;
            }));
        }
        let evicted = tokio::time::timeout(Duration::from_secs(8), rx.recv()).await;
        assert!(
            matches!(evicted, Ok(Some(()))),
            "none of the 8 idle connections was closed to admit the new one"
        );
        for w in &watchers {
            w.abort();
        }
        drop(http);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Eight connections each with a request in flight (a body that never completes).
        let mut busy = Vec::new();
        for _ in 0..8 {
            let mut s = connect(&tls, addr).await;
            s.write_all(&stalled_create(&key, &host))
                .await
                .expect("write");
            s.flush().await.expect("flush");
            busy.push(s);
            // Let the server take the head in before the next connection arrives.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // A newcomer is closed at once rather than left hanging.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let since = Instant::now();
        let (took, got) = wait_closed(&mut s, since, Duration::from_secs(2)).await;
        eprintln!("connection cap: newcomer closed after {took:?} with every connection busy");
        assert!(got.is_empty(), "{got:?}");

        // The busy ones were not the ones closed.
        for s in &mut busy {
            let mut buf = [0u8; 64];
            let still_open =
                tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
            assert!(
                still_open.is_err(),
                "a busy connection ended: {still_open:?}"
            );
        }
        drop(busy);

        // Once they are gone, service resumes.
        let http = client(dir.path());
        let mut last = None;
        for _ in 0..20 {
            let r = signed(
                &http,
                &server.endpoint,
                &host,
                &key,
                reqwest::Method::POST,
                CREATE,
                "",
            )
            .await;
            match r {
                Ok(r) if r.status() == 201 => {
                    last = None;
                    break;
                }
                other => last = Some(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            last.is_none(),
            "no service after the busy connections left: {last:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 7. Failed authentications per address

#[test]
fn an_address_that_keeps_failing_authentication_gets_429_and_others_do_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &["--auth-failures-per-minute", "5"]);
    let key = access_key(dir.path());
    let host = server.host();
    let endpoint = server.endpoint.clone();
    let rt = runtime();
    rt.block_on(async {
        let http = client(dir.path());
        let create = |http: reqwest::Client, key: String| {
            let (endpoint, host) = (endpoint.clone(), host.clone());
            async move {
                signed(
                    &http,
                    &endpoint,
                    &host,
                    &key,
                    reqwest::Method::POST,
                    CREATE,
                    "",
                )
                .await
                .expect("response")
            }
        };
        for i in 0..5 {
            let r = create(http.clone(), WRONG.into()).await;
            assert_eq!(r.status(), 401, "bad signature #{}", i + 1);
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["error"]["code"], "Denied");
        }

        // Now even a valid request from this address is refused, before any signature work.
        let r = create(http.clone(), key.clone()).await;
        assert_eq!(r.status(), 429);
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .expect("Retry-After in whole seconds");
        assert!(retry_after >= 1, "Retry-After: {retry_after}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "TooManyRequests", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");

        // Another address is unaffected.
        let ca = std::fs::read(dir.path().join("tls/ca.pem")).expect("ca.pem");
        let other = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
            .timeout(Duration::from_secs(10))
            .local_address(IpAddr::from([127, 0, 0, 2]))
            .build()
            .expect("client");
        let r = create(other, key.clone()).await;
        assert_eq!(r.status(), 201);
    });
}

// ---------------------------------------------------------------------------------------------
// 8. /health flood

#[test]
fn a_health_flood_is_answered_in_bounded_memory() {
    const CONNECTIONS: usize = 50;
    const PER_CONNECTION: usize = 40;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &[]);
    let pid = server.child.id();
    let host = server.host();
    let addr = addr(&server);
    let tls = tls(dir.path(), b"http/1.1");
    let rt = runtime();
    let started = Instant::now();
    let ok = rt.block_on(async {
        let req = request("GET", "/health", &[("host", &host)], b"");
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            let (tls, req) = (tls.clone(), req.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = connect(&tls, addr).await;
                let mut ok = 0;
                for _ in 0..PER_CONNECTION {
                    let r = exchange(&mut s, &req).await.expect("health answered");
                    assert_eq!(r.status, 200, "{r:?}");
                    ok += 1;
                }
                ok
            }));
        }
        tokio::time::timeout(Duration::from_secs(120), async {
            let mut ok = 0;
            for t in tasks {
                ok += t.await.expect("task");
            }
            ok
        })
        .await
        .expect("the flood is answered within 120 s")
    });
    let took = started.elapsed();
    let (rss, hwm) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"));
    eprintln!(
        "health flood: {ok} requests over {CONNECTIONS} connections in {took:?}; \
         server VmRSS {} KiB, VmHWM {} KiB",
        rss, hwm
    );
    assert_eq!(ok, CONNECTIONS * PER_CONNECTION);
    assert!(hwm < 100 * KIB_PER_MIB, "peak RSS {hwm} KiB");
    assert!(rss < 100 * KIB_PER_MIB, "RSS {rss} KiB");
}

// ---------------------------------------------------------------------------------------------
// 9. Readiness probes that give up while the database does not answer

/// A TCP relay to PostgreSQL that can stall. While stalled, the relayed connections stay open
/// and carry nothing, and new ones are accepted and held silent: the database neither answers
/// nor refuses (`Relay::cut` closes everything, so a ping fails at once and never hangs).
/// Restoring closes what was held, as after a network partition, and relays again.
struct StallingRelay {
    port: u16,
    stalled: tokio::sync::watch::Sender<bool>,
}

impl StallingRelay {
    async fn start(target: u16) -> StallingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stalled, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(Self::relay(inbound, target, watch.clone()));
            }
        });
        StallingRelay { port, stalled }
    }

    async fn relay(
        mut inbound: TcpStream,
        target: u16,
        mut stalled: tokio::sync::watch::Receiver<bool>,
    ) {
        if !*stalled.borrow_and_update() {
            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let mut until_stalled = stalled.clone();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                _ = until_stalled.wait_for(|s| *s) => {}
            }
        }
        // Both ends stay open and silent until restored (or the relay is gone), then close.
        let _ = stalled.wait_for(|s| !*s).await;
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    fn restore(&self) {
        self.stalled.send_replace(false);
    }
}

/// The port of a `postgres://` URL.
fn postgres_port(url: &str) -> u16 {
    let config: tokio_postgres::Config = url.parse().expect("database url");
    config.get_ports().first().copied().unwrap_or(5432)
}

/// `GET /ready`: the status, or `None` when the client gave up (its timeout) or failed.
async fn ready_status(http: &reqwest::Client, endpoint: &str) -> Option<u16> {
    match http.get(format!("{endpoint}ready")).send().await {
        Ok(r) => Some(r.status().as_u16()),
        Err(_) => None,
    }
}

/// Polls `/ready` until it answers `want`; panics after `limit`. Returns how long it took.
async fn ready_becomes(
    http: &reqwest::Client,
    endpoint: &str,
    want: u16,
    limit: Duration,
    why: &str,
) -> Duration {
    let since = Instant::now();
    let mut seen = Vec::new();
    loop {
        let got = ready_status(http, endpoint).await;
        if got == Some(want) {
            return since.elapsed();
        }
        seen.push(got);
        assert!(
            since.elapsed() < limit,
            "/ready never answered {want} within {limit:?} {why}; answers: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Readiness pings the store in a task of its own with a deadline: probes that give up while
/// the database does not answer can neither leave the ping marked as running (so that /ready
/// would repeat its last answer for good) nor keep it waiting forever.
#[test]
fn readiness_probes_that_give_up_while_the_database_hangs_do_not_freeze_readiness() {
    let rt = runtime();
    let (db, relay) = rt.block_on(async {
        let db = TestDatabase::create().await;
        let relay = StallingRelay::start(postgres_port(&db.url())).await;
        (db, relay)
    });
    let direct = db.url();
    let url = direct.replacen(
        &format!("@127.0.0.1:{}/", postgres_port(&direct)),
        &format!("@127.0.0.1:{}/", relay.port),
        1,
    );
    assert_ne!(url, direct, "the database url goes through the relay");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &["--database-url", &url]);
    let endpoint = server.endpoint.clone();
    let ca = std::fs::read(dir.path().join("tls/ca.pem")).expect("ca.pem");
    let with_timeout = |timeout: Duration| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
            .timeout(timeout)
            .build()
            .expect("client")
    };
    // A probe that gives up after 100 ms, and one that waits long enough for any answer (the
    // ping's deadline is 2 s).
    let impatient = with_timeout(Duration::from_millis(100));
    let patient = with_timeout(Duration::from_secs(5));

    rt.block_on(async {
        ready_becomes(
            &patient,
            &endpoint,
            200,
            Duration::from_secs(10),
            "at start",
        )
        .await;

        relay.stall();
        let stalled_at = Instant::now();
        // Let the answer cached while healthy expire, so the next probe starts a ping.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let mut gave_up = 0;
        for _ in 0..6 {
            if ready_status(&impatient, &endpoint).await.is_none() {
                gave_up += 1;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(
            gave_up >= 1,
            "no probe was left waiting on a ping: the database did not hang"
        );

        // Past the ping's 2 s deadline: not ready, although every ping so far was abandoned.
        tokio::time::sleep(Duration::from_millis(2100).saturating_sub(stalled_at.elapsed())).await;
        ready_becomes(
            &patient,
            &endpoint,
            503,
            Duration::from_secs(6),
            "while the database hung (readiness stuck on its last answer?)",
        )
        .await;
        let not_ready = stalled_at.elapsed();

        relay.restore();
        let ready_again = ready_becomes(
            &patient,
            &endpoint,
            200,
            Duration::from_secs(10),
            "after the database came back (readiness stuck?)",
        )
        .await;
        eprintln!(
            "readiness: {gave_up} of 6 probes gave up; 503 {not_ready:?} after the stall; \
             ready again {ready_again:?} after the restore"
        );
    });
    assert!(server.terminate().success());
    drop(db);
}

/// A request refused before its body was read leaves that body in the connection: HTTP/1 says
/// `Connection: close`, so a client never sends its next request into a connection the server
/// is closing (the SDKs would see a reset instead of the 401). A refused request without a body
/// keeps its connection.
#[test]
fn a_refusal_that_leaves_a_body_unread_closes_the_connection_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &[]);
    let host = server.host();
    let addr = addr(&server);
    let tls = tls(dir.path(), b"http/1.1");
    let date = format_date(SystemTime::now());
    let auth =
        format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={WRONG}");
    let body = br#"{"createTokenWithScopes":["chat"]}"#;
    let with_body = request(
        "POST",
        CREATE,
        &[
            ("host", &host),
            ("x-ms-date", &date),
            ("x-ms-content-sha256", &content_hash(body)),
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("content-length", &body.len().to_string()),
        ],
        body,
    );
    let without_body = request(
        "POST",
        CREATE,
        &[
            ("host", &host),
            ("x-ms-date", &date),
            ("x-ms-content-sha256", &content_hash(b"")),
            ("authorization", &auth),
            ("content-length", "0"),
        ],
        b"",
    );
    runtime().block_on(async {
        let mut s = connect(&tls, addr).await;
        let r = exchange(&mut s, &without_body).await.expect("answered");
        assert_denied(&r);
        assert_ne!(r.header("connection"), Some("close"));
        // The same connection serves the next one, which carries a body.
        let r = exchange(&mut s, &with_body).await.expect("answered");
        assert_denied(&r);
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// Waiting on the revocation feed

#[test]
fn feed_waiters_are_capped_per_address_and_per_node_as_the_flags_say() {
    let (ok, _, err) = run(&["serve", "--max-feed-waiting", "0"]);
    assert!(!ok);
    assert!(
        err.contains("--max-feed-waiting must be at least 1"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        dir.path(),
        &[
            "--max-feed-waiting",
            "3",
            "--max-feed-waiting-per-address",
            "2",
        ],
    );
    let key = access_key(dir.path());
    let ca = std::fs::read(dir.path().join("tls/ca.pem")).expect("ca.pem");
    let from = |source: [u8; 4]| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
            .local_address(IpAddr::from(source))
            .timeout(Duration::from_secs(40))
            .build()
            .expect("client")
    };
    let (one, two) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let host = server.host();
    runtime().block_on(async {
        let get = |http: &reqwest::Client, target: String| {
            let (http, key, host) = (http.clone(), key.clone(), host.clone());
            let endpoint = server.endpoint.clone();
            async move {
                signed(
                    &http,
                    &endpoint,
                    &host,
                    &key,
                    reqwest::Method::GET,
                    &target,
                    "",
                )
                .await
                .expect("response")
            }
        };
        let now = get(&one, "/revocations?api-version=2023-10-01".into()).await;
        assert_eq!(now.status(), 200);
        let cursor = now.json::<Value>().await.expect("json")["cursor"]
            .as_str()
            .expect("cursor")
            .to_owned();
        let wait = format!("/revocations?api-version=2023-10-01&after={cursor}&wait=20");
        let refused = |resp: reqwest::Response| async move {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "1");
            let body: Value = resp.json().await.expect("json");
            assert_eq!(body["error"]["code"], "ServiceUnavailable");
        };
        // Two long-polls from 127.0.0.1 wait; a third from it is refused at once.
        let waiting = [
            tokio::spawn(get(&one, wait.clone())),
            tokio::spawn(get(&one, wait.clone())),
        ];
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        refused(get(&one, wait.clone()).await).await;
        // Another address may wait, up to the node's cap of three.
        let third = tokio::spawn(get(&two, wait.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        refused(get(&two, wait.clone()).await).await;
        assert!(started.elapsed() < BOUND, "refused, not waited");
        assert!(
            waiting.iter().all(|w| !w.is_finished()) && !third.is_finished(),
            "the three admitted still wait"
        );
        for w in waiting {
            w.abort();
        }
        third.abort();
    });
    drop(server);
}
