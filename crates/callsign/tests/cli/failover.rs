//! A PostgreSQL primary switch under load: a fast restart of the cluster, a crash (immediate)
//! restart, and a standby behind the same address that is then promoted. The nodes answer 503
//! with `Retry-After` while it happens, recover without a restart, and lose nothing they
//! acknowledged.
//!
//! The shared test cluster is never touched: the test runs its own private cluster (`initdb`
//! into a temp dir, on a free port), stopped and removed whatever happens.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::Value;
use tokio::task::JoinSet;

use callsign_testkit::{access_key, connect_postgres, issue_path};

use crate::{Server, is_root, run, runtime, signed};

/// A private PostgreSQL cluster in a temp dir, stopped (immediately) and removed on drop.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// PostgreSQL refuses to run as root: as root, its tools run as the `postgres` user.
fn pg_command(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

/// The newest installed PostgreSQL's `bin` directory.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (see scripts/test.sh)")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("an initdb under /usr/lib/postgresql").1
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster dir to postgres");
        }
        let bin = postgres_bin();
        let out = pg_command(&bin, "initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port may be taken between the probe and the start: try a few.
        let mut cluster = Cluster { dir, bin, port: 0 };
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.pg_ctl(&["start"]) {
                return cluster;
            }
        }
        panic!(
            "the private PostgreSQL cluster did not start; log:\n{}",
            std::fs::read_to_string(cluster.dir.path().join("log")).unwrap_or_default()
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `pg_ctl ACTION` (waiting for it to finish) with this cluster's port and socket dir.
    fn pg_ctl(&mut self, action: &[&str]) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let status = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "-o", &options])
            .args(action)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl");
        status.success()
    }

    fn must(&mut self, action: &[&str]) {
        assert!(
            self.pg_ctl(action),
            "pg_ctl {action:?} failed; log:\n{}",
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    async fn admin(&self, db: &str) -> tokio_postgres::Client {
        connect_postgres(&self.url(db)).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
    }
}

/// Longest any one request may take, outage or not: the pool's wait and connect timeouts (5 s
/// each by default) bound it well below this.
const REQUEST_BOUND: Duration = Duration::from_secs(15);

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Ids of acknowledged (201) creates.
    acked: Mutex<Vec<String>>,
    /// 503s with `Retry-After` and the `ServiceUnavailable` body.
    unavailable: AtomicUsize,
    /// Everything else: other statuses, malformed 503s, transport errors, slow answers.
    wrong: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Seen {
    /// How many wrong answers, and the first few.
    fn wrong_summary(&self) -> String {
        let wrong = self.wrong.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "{} wrong answers, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        )
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Waits until `n` more creates than now are acknowledged: the nodes write again.
    async fn progress(&self, n: usize, what: &str) -> Duration {
        let start = Instant::now();
        let target = self.acked() + n;
        while self.acked() < target {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no recovery within 30 s after {what}; {}",
                self.wrong_summary()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.elapsed()
    }

    /// Waits until `n` more 503s than `since` were answered.
    async fn unavailable_since(&self, since: usize, n: usize, what: &str) {
        let start = Instant::now();
        while self.unavailable.load(Ordering::Relaxed) < since + n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no 503 during {what}; {}",
                self.wrong_summary()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One node as the load sees it.
#[derive(Clone)]
struct Target {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    key: String,
}

impl Target {
    fn new(server: &Server, data_dir: &Path, key: &str) -> Target {
        let ca = std::fs::read(data_dir.join("tls/ca.pem")).expect("ca.pem");
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")])
            // Far beyond the bound, so that a hung request is reported, not waited for.
            .timeout(REQUEST_BOUND * 2)
            .build()
            .expect("client");
        Target {
            http,
            endpoint: server.endpoint.clone(),
            host: server.host(),
            key: key.to_owned(),
        }
    }

    /// Creates identities until told to stop (at most 20,000), recording every answer.
    async fn load(self, seen: Arc<Seen>) {
        for _ in 0..20_000 {
            if seen.stop.load(Ordering::Relaxed) {
                break;
            }
            let started = Instant::now();
            let r = signed(
                &self.http,
                &self.endpoint,
                &self.host,
                &self.key,
                Method::POST,
                "/identities?api-version=2023-10-01",
                "",
            )
            .await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    seen.wrong.lock().expect("lock").push(format!(
                        "transport error after {:?}: {e}",
                        started.elapsed()
                    ));
                    continue;
                }
            };
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let took = started.elapsed();
            if took > REQUEST_BOUND {
                seen.wrong
                    .lock()
                    .expect("lock")
                    .push(format!("{status} after {took:?}"));
            }
            match status {
                201 => {
                    let id = body["identity"]["id"].as_str().expect("id").to_owned();
                    seen.acked.lock().expect("lock").push(id);
                }
                503 if retry_after.is_some()
                    && body["error"]["code"] == "ServiceUnavailable"
                    && body["error"]["message"].is_string() =>
                {
                    seen.unavailable.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    seen.wrong.lock().expect("lock").push(format!(
                        "{status} (Retry-After {retry_after:?}) after {took:?}: {body}"
                    ));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

impl Target {
    /// Creates one identity (retrying 503s for a while): its id.
    async fn create_one(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = signed(
                &self.http,
                &self.endpoint,
                &self.host,
                &self.key,
                Method::POST,
                "/identities?api-version=2023-10-01",
                "",
            )
            .await
            .expect("create");
            if r.status() == 201 {
                let body: Value = r.json().await.expect("json");
                return body["identity"]["id"].as_str().expect("id").to_owned();
            }
            assert!(Instant::now() < deadline, "no create succeeded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Issues tokens for `id` until one is refused (at most 10,000 or 30 s): the time (ms since
    /// the epoch) just before the last acknowledged issue was sent.
    async fn issue_until_refused(self, id: String) -> Option<i64> {
        let target = issue_path(&id);
        let started = Instant::now();
        let mut last = None;
        for _ in 0..10_000 {
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
            let sent = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis();
            let r = signed(
                &self.http,
                &self.endpoint,
                &self.host,
                &self.key,
                Method::POST,
                &target,
                r#"{"scopes": ["chat"]}"#,
            )
            .await;
            match r {
                Ok(r) if r.status() == 200 => last = Some(i64::try_from(sent).expect("ms")),
                _ => break,
            }
        }
        last
    }
}

async fn ready(target: &Target) -> u16 {
    target
        .http
        .get(format!("{}ready", target.endpoint))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[test]
fn a_primary_switch_under_load_gives_503s_loses_nothing_and_recovers_without_restarts() {
    let mut cluster = Cluster::start();
    let rt = runtime();
    rt.block_on(async {
        cluster
            .admin("postgres")
            .await
            .batch_execute("CREATE DATABASE callsign")
            .await
            .expect("create database");
    });
    let url = cluster.url("callsign");
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    // One node with the default pool settings, one with short timeouts.
    let a = Server::start(dir_a.path(), &["--database-url", &url]);
    let b = Server::start(
        dir_b.path(),
        &[
            "--database-url",
            &url,
            "--db-pool-size",
            "4",
            "--db-connect-timeout-ms",
            "500",
            "--db-statement-timeout-ms",
            "2000",
        ],
    );
    let (ok, cs, err) = run(&["connection-string", "--database-url", &url]);
    assert!(ok, "{err}");
    let key = access_key(&cs);
    let (ta, tb) = (
        Target::new(&a, dir_a.path(), &key),
        Target::new(&b, dir_b.path(), &key),
    );

    let seen = Arc::new(Seen::default());
    rt.block_on(async {
        let mut load = JoinSet::new();
        for i in 0..8 {
            let target = if i % 2 == 0 { ta.clone() } else { tb.clone() };
            load.spawn(target.load(Arc::clone(&seen)));
        }
        seen.progress(100, "the start").await;

        // 1. A fast restart: every session is ended (57P01), the server checkpoints and comes
        //    back on the same address.
        tokio::task::block_in_place(|| cluster.must(&["restart", "-m", "fast"]));
        seen.progress(100, "a fast restart").await;

        // 2. A crash: the server dies at once and is down for a second; it recovers from its
        //    WAL when started again. Tokens are being issued for one identity as it happens:
        //    the last-token time of those acknowledged (buffered for a second by the node) must
        //    reach the database once it is back.
        let issued_to = ta.create_one().await;
        seen.acked.lock().expect("lock").push(issued_to.clone());
        let issuing = tokio::spawn(ta.clone().issue_until_refused(issued_to.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| cluster.must(&["stop", "-m", "immediate"]));
        let last_issued = issuing
            .await
            .expect("issuing task")
            .expect("a token issued before the crash");
        let before = seen.unavailable.load(Ordering::Relaxed);
        seen.unavailable_since(before, 8, "the crash").await;
        assert_eq!(ready(&ta).await, 503, "ready while the database is down");
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| cluster.must(&["start"]));
        seen.progress(100, "a crash restart").await;
        let pg = cluster.admin("callsign").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stored: Option<i64> = pg
                .query_one(
                    "SELECT last_token_issued_at_ms FROM callsign_identities WHERE id = $1",
                    &[&issued_to],
                )
                .await
                .expect("select")
                .get(0);
            if stored.is_some_and(|t| t >= last_issued) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the last-token time of a token issued before the crash was lost: {stored:?} < \
                 {last_issued}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(pg);

        // 3. A standby behind the same address, then promoted: while it is read-only, writes
        //    are refused with 503 (not 500), and once it is promoted they succeed again.
        tokio::task::block_in_place(|| cluster.must(&["stop", "-m", "fast"]));
        std::fs::write(cluster.data().join("standby.signal"), b"").expect("standby.signal");
        tokio::task::block_in_place(|| cluster.must(&["start"]));
        let before = seen.unavailable.load(Ordering::Relaxed);
        seen.unavailable_since(before, 8, "the standby").await;
        tokio::task::block_in_place(|| cluster.must(&["promote"]));
        seen.progress(100, "the promotion").await;

        seen.stop.store(true, Ordering::Relaxed);
        while let Some(r) = load.join_next().await {
            r.expect("load task");
        }

        // Ready again (the readiness answer is reused for at most a second).
        for target in [&ta, &tb] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while ready(target).await != 200 {
                assert!(Instant::now() < deadline, "not ready after recovery");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    assert!(
        seen.wrong.lock().expect("lock").is_empty(),
        "answers other than 201 or a well-formed 503: {}",
        seen.wrong_summary()
    );
    let acked = seen.acked.lock().expect("lock").clone();
    let unavailable = seen.unavailable.load(Ordering::Relaxed);
    assert!(unavailable > 0);
    // Nothing acknowledged is lost.
    let stored: HashSet<String> = rt.block_on(async {
        cluster
            .admin("callsign")
            .await
            .query("SELECT id FROM callsign_identities", &[])
            .await
            .expect("select")
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged identities lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        acked.iter().collect::<HashSet<_>>().len(),
        acked.len(),
        "an id acknowledged twice"
    );
    eprintln!(
        "{} creates acknowledged, {unavailable} answered 503, {} rows stored",
        acked.len(),
        stored.len()
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
