//! Several `callsign serve` nodes over one PostgreSQL database, and what they do when the
//! database goes away.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use callsign_testkit::{Relay, TestDatabase, access_key, issue_path};
use reqwest::Method;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::{Server, client, count_identities, run, runtime, signed};

/// How many identities `db` holds.
/// A signed request helper bound to one node.
struct Node<'a> {
    server: &'a Server,
    http: reqwest::Client,
    key: String,
}

impl Node<'_> {
    fn new<'a>(server: &'a Server, data_dir: &Path, key: &str) -> Node<'a> {
        Node {
            server,
            http: client(data_dir),
            key: key.to_owned(),
        }
    }

    async fn call(
        &self,
        method: Method,
        target: &str,
        body: &str,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = signed(
            &self.http,
            &self.server.endpoint,
            &self.server.host(),
            &self.key,
            method,
            target,
            body,
        )
        .await
        .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    async fn create(&self, body: &str, version: &str) -> (u16, Value) {
        let (s, b, _) = self
            .call(
                Method::POST,
                &format!("/identities?api-version={version}"),
                body,
            )
            .await;
        (s, b)
    }

    async fn issue(&self, id: &str) -> (u16, Value) {
        let (s, b, _) = self
            .call(Method::POST, &issue_path(id), r#"{"scopes": ["chat"]}"#)
            .await;
        (s, b)
    }

    async fn active(&self, token: &str) -> Value {
        let body = serde_json::json!({ "token": token }).to_string();
        let (s, b, _) = self
            .call(
                Method::POST,
                "/tokens/:introspect?api-version=2023-10-01",
                &body,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b
    }
}

#[test]
fn two_nodes_on_one_database_act_as_one_service() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let url = db.url();
    let a = Server::start(dir_a.path(), &["--database-url", &url]);
    let b = Server::start(dir_b.path(), &["--database-url", &url]);

    // Both nodes serve the one resource: the connection string printed by `callsign
    // connection-string --database-url` works on either.
    let (ok, cs, err) = run(&[
        "connection-string",
        "--database-url",
        &url,
        "--endpoint",
        &a.endpoint,
    ]);
    assert!(ok, "{err}");
    let key = access_key(&cs);
    let na = Node::new(&a, dir_a.path(), &key);
    let nb = Node::new(&b, dir_b.path(), &key);

    rt.block_on(async {
        // Create on A, token on B.
        let (s, created) = na.create("", "2023-10-01").await;
        assert_eq!(s, 201);
        let id = created["identity"]["id"].as_str().expect("id").to_owned();
        let (s, from_b) = nb.issue(&id).await;
        assert_eq!(s, 200, "{from_b}");

        // One JWKS: a token from B is active on A.
        let jwks_a: Value = na
            .http
            .get(format!("{}.well-known/jwks.json", a.endpoint))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        let jwks_b: Value = nb
            .http
            .get(format!("{}.well-known/jwks.json", b.endpoint))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        assert_eq!(jwks_a, jwks_b);
        let t_b = from_b["token"].as_str().expect("token").to_owned();
        assert_eq!(na.active(&t_b).await["active"], true);

        // Revoke on B takes A's tokens at once.
        let (_, from_a) = na.issue(&id).await;
        let t_a = from_a["token"].as_str().expect("token").to_owned();
        let (s, _, _) = nb
            .call(
                Method::POST,
                &format!(
                    "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
                    id.replace(':', "%3A")
                ),
                "",
            )
            .await;
        assert_eq!(s, 204);
        assert_eq!(na.active(&t_a).await["reason"], "revoked");
        assert_eq!(nb.active(&t_a).await["reason"], "revoked");

        // Delete on A: the very next token request on B is refused.
        let (s, _, _) = na
            .call(
                Method::DELETE,
                &format!(
                    "/identities/{}?api-version=2023-10-01",
                    id.replace(':', "%3A")
                ),
                "",
            )
            .await;
        assert_eq!(s, 204);
        let (s, body) = nb.issue(&id).await;
        assert_eq!(s, 404, "{body}");
        assert_eq!(body["error"]["code"], "IdentityNotFound");

        // Concurrent creates with one customId across both nodes yield one identity.
        let mut tasks = JoinSet::new();
        for i in 0..40 {
            let node_http = if i % 2 == 0 {
                na.http.clone()
            } else {
                nb.http.clone()
            };
            let server = if i % 2 == 0 {
                (a.endpoint.clone(), a.host())
            } else {
                (b.endpoint.clone(), b.host())
            };
            let key = key.clone();
            tasks.spawn(async move {
                let r = signed(
                    &node_http,
                    &server.0,
                    &server.1,
                    &key,
                    Method::POST,
                    "/identities?api-version=2025-03-02-preview",
                    r#"{"customId": "shared@example.com"}"#,
                )
                .await
                .expect("request");
                assert_eq!(r.status(), 201);
                r.json::<Value>().await.expect("json")["identity"]["id"]
                    .as_str()
                    .expect("id")
                    .to_owned()
            });
        }
        let mut ids = std::collections::HashSet::new();
        while let Some(id) = tasks.join_next().await {
            ids.insert(id.expect("task"));
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
    });
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    drop(db);
}

#[test]
fn losing_the_database_gives_503s_loses_nothing_and_recovers_by_itself() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let mut relay = rt.block_on(Relay::start(db.port()));
    let dir = tempfile::tempdir().expect("dir");
    let url = db.url_via("127.0.0.1", relay.port);
    let node = Server::start(
        dir.path(),
        &[
            "--database-url",
            &url,
            "--db-connect-timeout-ms",
            "500",
            "--db-statement-timeout-ms",
            "2000",
        ],
    );
    let cs = node.connection_string();
    let n = Node::new(&node, dir.path(), &access_key(&cs));

    rt.block_on(async {
        let acked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let unavailable = Arc::new(AtomicUsize::new(0));
        let other = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = JoinSet::new();
        for _ in 0..4 {
            let (http, endpoint, host, key) = (
                n.http.clone(),
                node.endpoint.clone(),
                node.host(),
                n.key.clone(),
            );
            let (acked, unavailable, other, stop) = (
                acked.clone(),
                unavailable.clone(),
                other.clone(),
                stop.clone(),
            );
            load.spawn(async move {
                // Bounded: stops when told, and after 5,000 requests at most.
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = signed(
                        &http,
                        &endpoint,
                        &host,
                        &key,
                        Method::POST,
                        "/identities?api-version=2023-10-01",
                        "",
                    )
                    .await
                    .expect("the node itself stays reachable");
                    let status = r.status().as_u16();
                    let retry_after = r.headers().get("retry-after").is_some();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    match status {
                        201 => acked
                            .lock()
                            .expect("lock")
                            .push(body["identity"]["id"].as_str().expect("id").to_owned()),
                        503 => {
                            assert_eq!(body["error"]["code"], "ServiceUnavailable", "{body}");
                            assert!(retry_after, "503 without Retry-After");
                            unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        s => other.lock().expect("lock").push(format!("{s}: {body}")),
                    }
                }
            });
        }
        let wait_for = |n: usize| {
            let acked = acked.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while acked.lock().expect("lock").len() < n {
                    assert!(Instant::now() < deadline, "no progress");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        wait_for(100).await;
        relay.cut();
        // While the database is away: 503s, and health says so.
        let deadline = Instant::now() + Duration::from_secs(20);
        while unavailable.load(Ordering::Relaxed) < 20 {
            assert!(
                Instant::now() < deadline,
                "no 503 while the database was cut"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Not ready (the store is away), but alive: liveness touches no store.
        let ready = n
            .http
            .get(format!("{}ready", node.endpoint))
            .send()
            .await
            .expect("ready");
        assert_eq!(ready.status(), 503);
        let health = n
            .http
            .get(format!("{}health", node.endpoint))
            .send()
            .await
            .expect("health");
        assert_eq!(health.status(), 200);
        let before_restore = acked.lock().expect("lock").len();
        relay.restore().await;
        // It recovers by itself.
        wait_for(before_restore + 100).await;
        stop.store(true, Ordering::Relaxed);
        while load.join_next().await.is_some() {}
        // Ready again once the readiness answer (reused for at most a second) is renewed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ready = n
                .http
                .get(format!("{}ready", node.endpoint))
                .send()
                .await
                .expect("ready");
            if ready.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "not ready after recovery");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let other = other.lock().expect("lock").clone();
        assert!(
            other.is_empty(),
            "answers other than 201/503: {:?}",
            &other[..other.len().min(5)]
        );
        let acked = acked.lock().expect("lock").clone();
        // Nothing acknowledged is lost, and nothing half-written exists: every row is a whole
        // identity (the schema has no partial state), and at least every acknowledged one is there.
        let stored = count_identities(&db.url()).await;
        assert!(
            stored >= acked.len() as i64,
            "{stored} stored < {} acknowledged",
            acked.len()
        );
        for id in acked.iter().step_by(7) {
            let (s, _, _) = n
                .call(
                    Method::GET,
                    &format!(
                        "/identities/{}?api-version=2025-03-02-preview",
                        id.replace(':', "%3A")
                    ),
                    "",
                )
                .await;
            assert_eq!(s, 200, "acknowledged identity {id} lost");
        }
    });
    assert!(node.terminate().success());
    drop(db);
}

/// `callsign keys regenerate` on the database while two nodes serve it under load signed with
/// the secondary key: no such request fails, and both nodes refuse the old primary within 5 s.
#[test]
fn a_regenerated_key_is_refused_by_every_node_within_five_seconds() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let url = db.url();
    let a = Server::start(dir_a.path(), &["--database-url", &url]);
    let b = Server::start(dir_b.path(), &["--database-url", &url]);
    let cs_of = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--database-url", url.as_str(), "--endpoint", &a.endpoint]);
        let (ok, out, err) = run(&all);
        assert!(ok, "{args:?}: {err}");
        access_key(out.lines().last().expect("a line"))
    };
    let primary = cs_of(&["connection-string"]);
    let secondary = cs_of(&["connection-string", "--secondary"]);
    let old = [
        Node::new(&a, dir_a.path(), &primary),
        Node::new(&b, dir_b.path(), &primary),
    ];
    let survivors = [
        Arc::new(Node::new(&a, dir_a.path(), &secondary)),
        Arc::new(Node::new(&b, dir_b.path(), &secondary)),
    ];
    rt.block_on(async {
        let (s, created) = old[0].create("", "2023-10-01").await;
        assert_eq!(s, 201);
        let id = created["identity"]["id"].as_str().expect("id").to_owned();
        let failed = AtomicUsize::new(0);
        let done = std::sync::atomic::AtomicBool::new(false);
        let load = async {
            let mut n = 0usize;
            while !done.load(Ordering::Relaxed) {
                let (s, body) = survivors[n % 2].issue(&id).await;
                if s != 200 {
                    eprintln!("secondary-key request failed: {s} {body}");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            n
        };
        let regenerate = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let new_primary = tokio::task::spawn_blocking({
                let (url, endpoint) = (url.clone(), a.endpoint.clone());
                move || {
                    let (ok, out, err) = run(&[
                        "keys",
                        "regenerate",
                        "primary",
                        "--database-url",
                        &url,
                        "--endpoint",
                        &endpoint,
                    ]);
                    assert!(ok, "{err}");
                    access_key(out.lines().last().expect("a line"))
                }
            })
            .await
            .expect("regenerate");
            let started = Instant::now();
            for node in &old {
                loop {
                    let (s, body) = node.create("", "2023-10-01").await;
                    if s == 401 {
                        assert_eq!(body["error"]["code"], "Denied");
                        break;
                    }
                    assert_eq!(s, 201, "{body}");
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "a node still accepts the old key after 5 s"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.store(true, Ordering::Relaxed);
            new_primary
        };
        let (issued, new_primary) = tokio::join!(load, regenerate);
        assert_eq!(failed.load(Ordering::Relaxed), 0);
        assert!(issued > 10, "the load ran ({issued} requests)");
        for (server, dir) in [(&a, dir_a.path()), (&b, dir_b.path())] {
            let node = Node::new(server, dir, &new_primary);
            assert_eq!(node.create("", "2023-10-01").await.0, 201);
        }
    });
}

/// `GET /revocations` on `node` after `cursor`, waiting up to `wait` seconds.
async fn feed_after(node: &Node<'_>, cursor: &str, wait: u32) -> Value {
    let (s, body, _) = node
        .call(
            Method::GET,
            &format!("/revocations?api-version=2023-10-01&after={cursor}&wait={wait}"),
            "",
        )
        .await;
    assert_eq!(s, 200, "{body}");
    body
}

#[test]
fn a_follower_on_one_node_sees_a_revoke_made_on_another_at_once_and_resumes_after_a_restart() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let url = db.url();
    let a = Server::start(dir_a.path(), &["--database-url", &url]);
    let b = Server::start(dir_b.path(), &["--database-url", &url]);
    let (ok, cs, err) = run(&[
        "connection-string",
        "--database-url",
        &url,
        "--endpoint",
        &a.endpoint,
    ]);
    assert!(ok, "{err}");
    let key = access_key(&cs);
    let na = Node::new(&a, dir_a.path(), &key);
    let (id, cursor) = {
        let nb = Node::new(&b, dir_b.path(), &key);
        rt.block_on(async {
            let (s, created) = na.create("", "2023-10-01").await;
            assert_eq!(s, 201);
            let id = created["identity"]["id"].as_str().expect("id").to_owned();
            let (s, start, _) = nb
                .call(Method::GET, "/revocations?api-version=2023-10-01", "")
                .await;
            assert_eq!(s, 200, "{start}");
            let start = start["cursor"].as_str().expect("cursor").to_owned();
            // A follower long-polling on B; the revoke is made on A.
            let (woke, revoked_at) = tokio::join!(feed_after(&nb, &start, 20), async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let (s, body, _) = na
                    .call(
                        Method::POST,
                        &format!(
                            "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
                            callsign_testkit::enc(&id)
                        ),
                        "",
                    )
                    .await;
                assert_eq!(s, 204, "{body}");
                Instant::now()
            });
            let took = revoked_at.elapsed();
            // Woken by the event, not by the 20 s wait (latency is a benchmark, not a test).
            assert!(
                took < Duration::from_secs(5),
                "B's follower woke {took:?} late"
            );
            assert_eq!(woke["events"][0]["id"], id.as_str());
            assert_eq!(woke["events"][0]["kind"], "revoked");
            assert_eq!(woke["events"][0]["epoch"], 1);
            (id, woke["cursor"].as_str().expect("cursor").to_owned())
        })
    };
    // B stops with a long-poll open: it answers it and exits 0 promptly.
    let http = client(dir_b.path());
    let waiting = {
        let nb = Node::new(&b, dir_b.path(), &key);
        let target = format!("/revocations?api-version=2023-10-01&after={cursor}&wait=30");
        let (endpoint, host) = (b.endpoint.clone(), b.host());
        let key = nb.key.clone();
        rt.spawn(async move {
            signed(&http, &endpoint, &host, &key, Method::GET, &target, "")
                .await
                .map(|r| r.status().as_u16())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    let status = b.terminate();
    assert!(status.success(), "{status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(rt.block_on(waiting).expect("join").expect("answered"), 200);
    // Revokes while B is down; B comes back and its follower resumes from its old cursor.
    rt.block_on(async {
        for _ in 0..2 {
            let (s, body, _) = na
                .call(
                    Method::POST,
                    &format!(
                        "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
                        callsign_testkit::enc(&id)
                    ),
                    "",
                )
                .await;
            assert_eq!(s, 204, "{body}");
        }
    });
    let b = Server::start(dir_b.path(), &["--database-url", &url]);
    let nb = Node::new(&b, dir_b.path(), &key);
    let resumed = rt.block_on(feed_after(&nb, &cursor, 0));
    let epochs: Vec<&Value> = resumed["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["epoch"])
        .collect();
    assert_eq!(epochs, [2, 3], "{resumed}");
}
