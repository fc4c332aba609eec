//! `callsign audit`: the audit log read from the store while servers run, as JSON lines and as a
//! table, filtered by time and resource; and across `kill -9`, exactly one record for every
//! acknowledged change, and every record's change in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callsign_testkit::{TestDatabase, access_key};
use reqwest::Method;
use serde_json::Value;

use crate::{Server, client, run, runtime, signed};

/// `callsign audit` with `args` after the store flags; its standard output, one line a string.
fn audit(store: &[&str], args: &[&str]) -> Vec<String> {
    let mut all = vec!["audit"];
    all.extend_from_slice(store);
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run(&all);
    assert!(ok, "callsign {all:?} failed: {stderr}");
    stdout.lines().map(str::to_owned).collect()
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A request's status and request id (`ms-cv`).
async fn send(
    server: &Server,
    http: &reqwest::Client,
    key: &str,
    method: Method,
    target: &str,
    body: &str,
) -> (u16, String, Value) {
    let r = signed(
        http,
        &server.endpoint,
        &server.host(),
        key,
        method,
        target,
        body,
    )
    .await
    .expect("request");
    let status = r.status().as_u16();
    let id = r.headers()["ms-cv"].to_str().expect("ms-cv").to_owned();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, id, body)
}

fn audit_exports_what_a_running_server_changed(data_dir: &Path, extra: &[&str], store: &[&str]) {
    let server = Server::start(data_dir, extra);
    let cs = server.connection_string();
    let key = access_key(&cs);
    let (ok, secondary, _) = run(&[
        &["connection-string", "--secondary", "--data-dir"][..],
        &[data_dir.to_str().expect("utf-8")],
        extra,
    ]
    .concat());
    assert!(ok);
    let secondary = access_key(secondary.trim());
    let http = client(data_dir);
    let v = "api-version=2023-10-01";
    let (id, requests) = runtime().block_on(async {
        let (s, c1, body) = send(
            &server,
            &http,
            &key,
            Method::POST,
            &format!("/identities?{v}"),
            "",
        )
        .await;
        assert_eq!(s, 201);
        let id = body["identity"]["id"].as_str().expect("id").to_owned();
        let enc = id.replace(':', "%3A");
        let (s, r1, _) = send(
            &server,
            &http,
            &secondary,
            Method::POST,
            &format!("/identities/{enc}/:revokeAccessTokens?{v}"),
            "",
        )
        .await;
        assert_eq!(s, 204);
        let (s, _, _) = send(
            &server,
            &http,
            &key,
            Method::POST,
            &format!("/identities/{enc}/:issueAccessToken?{v}"),
            r#"{"scopes":["chat"]}"#,
        )
        .await;
        assert_eq!(s, 200);
        let (s, x1, _) = send(
            &server,
            &http,
            &key,
            Method::DELETE,
            &format!("/identities/{enc}?{v}"),
            "",
        )
        .await;
        assert_eq!(s, 204);
        (id, vec![c1, r1, x1])
    });
    let resource = id[6..42].to_owned();

    // While the server runs. The first record is the deployment's beginning: its first node
    // created the default resource.
    let mut records = json_lines(&audit(store, &["--json"]));
    assert_eq!(records.len(), 4, "{records:?}");
    let beginning = records.remove(0);
    assert_eq!(beginning["operation"], "createResource");
    assert_eq!(beginning["credential"], "node");
    assert_eq!(beginning["resourceId"], resource.as_str());
    let expected = [
        ("createIdentity", "primary", &requests[0], Value::Null),
        (
            "revokeTokens",
            "secondary",
            &requests[1],
            Value::from("epoch 1"),
        ),
        ("deleteIdentity", "primary", &requests[2], Value::Null),
    ];
    let mut seq = 0;
    for (r, (op, credential, request, detail)) in records.iter().zip(expected) {
        let keys: BTreeSet<&str> = r
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "seq",
                "time",
                "resourceId",
                "operation",
                "identityId",
                "outcome",
                "credential",
                "clientAddress",
                "requestId",
                "subject",
                "detail"
            ])
        );
        assert!(r["seq"].as_i64().expect("seq") > seq);
        seq = r["seq"].as_i64().expect("seq");
        assert_eq!(r["operation"], op);
        assert_eq!(r["credential"], credential);
        assert_eq!(r["requestId"], request.as_str());
        assert_eq!(r["detail"], detail);
        assert_eq!(r["outcome"], "success");
        assert_eq!(r["identityId"], id.as_str());
        assert_eq!(r["resourceId"], resource.as_str());
        assert_eq!(r["clientAddress"], "127.0.0.1");
        assert!(r["subject"].is_null(), "{r}");
        let time = r["time"].as_str().expect("time");
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
    }
    let with_beginning: Vec<Value> = std::iter::once(beginning).chain(records).collect();
    assert_eq!(
        json_lines(&audit(store, &["--json", "--since", "1h"])),
        with_beginning
    );
    assert_eq!(
        json_lines(&audit(store, &["--json", "--resource", &resource])),
        with_beginning
    );
    let other = "00000000-0000-4000-8000-000000000000";
    assert!(audit(store, &["--json", "--resource", other]).is_empty());
    assert!(audit(store, &["--json", "--since", "2999-01-01T00:00:00Z"]).is_empty());
    let table = audit(store, &[]);
    assert_eq!(table.len(), 5, "{table:?}");
    assert!(table[0].contains("OPERATION") && table[0].contains("REQUEST"));
    assert!(table[3].contains("revokeTokens") && table[3].contains(&requests[1]));
    // A bad filter is one clear line.
    let (ok, _, err) = run(&[&["audit"][..], store, &["--since", "yesterday"]].concat());
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("--since"),
        "{err}"
    );

    // The token count is written within a second or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = json_lines(&audit(store, &["--token-counts", "--json"]));
        if counts.len() == 1 && counts[0]["tokensIssued"] == 1 {
            assert_eq!(counts[0]["resourceId"], resource.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "{counts:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(server.terminate().success());
}

#[test]
fn audit_exports_json_lines_and_a_table_filtered_while_the_server_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8").to_owned();
    audit_exports_what_a_running_server_changed(dir.path(), &[], &["--data-dir", &d]);
}

#[test]
fn audit_reads_a_postgresql_store_while_the_server_runs() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let dir = tempfile::tempdir().expect("temp dir");
    audit_exports_what_a_running_server_changed(
        dir.path(),
        &["--database-url", &url],
        &["--database-url", &url],
    );
    drop(db);
}

/// An acknowledged change: operation, identity, request id.
type Acked = (&'static str, String, String);

/// Where a burst goes: endpoint, host, key.
type Target = (String, String, String);

/// Creates, then revokes or deletes, one after the other until the burst is cut off.
async fn burst(target: Target, http: reqwest::Client, acked: Arc<Mutex<Vec<Acked>>>) {
    let (endpoint, host, key) = target;
    let (http, key) = (&http, key.as_str());
    let v = "api-version=2023-10-01";
    for i in 0..2_000 {
        let Ok(r) = signed(
            http,
            &endpoint,
            &host,
            key,
            Method::POST,
            &format!("/identities?{v}"),
            "",
        )
        .await
        else {
            return;
        };
        if r.status() != 201 {
            return;
        }
        let req = r.headers()["ms-cv"].to_str().expect("ms-cv").to_owned();
        let Ok(body) = r.json::<Value>().await else {
            return;
        };
        let id = body["identity"]["id"].as_str().expect("id").to_owned();
        acked
            .lock()
            .expect("lock")
            .push(("createIdentity", id.clone(), req));
        let enc = id.replace(':', "%3A");
        let (op, method, target) = if i % 2 == 0 {
            (
                "revokeTokens",
                Method::POST,
                format!("/identities/{enc}/:revokeAccessTokens?{v}"),
            )
        } else {
            (
                "deleteIdentity",
                Method::DELETE,
                format!("/identities/{enc}?{v}"),
            )
        };
        let Ok(r) = signed(http, &endpoint, &host, key, method, &target, "").await else {
            return;
        };
        if r.status() != 204 {
            return;
        }
        let req = r.headers()["ms-cv"].to_str().expect("ms-cv").to_owned();
        acked.lock().expect("lock").push((op, id, req));
    }
}

/// The store's identities (id → epoch) and tombstones, read with SQL from a copy of the file.
fn stored(data_dir: &Path) -> (BTreeMap<String, i64>, BTreeSet<String>) {
    let db = rusqlite::Connection::open_with_flags(
        data_dir.join("callsign.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open");
    let mut ids = BTreeMap::new();
    let mut stmt = db
        .prepare("SELECT id, revocation_epoch FROM identities")
        .expect("sql");
    for row in stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
    {
        let (id, epoch) = row.expect("row");
        ids.insert(id, epoch);
    }
    let mut gone = BTreeSet::new();
    let mut stmt = db
        .prepare("SELECT id FROM identity_tombstones")
        .expect("sql");
    for row in stmt.query_map([], |r| r.get(0)).expect("rows") {
        gone.insert(row.expect("row"));
    }
    (ids, gone)
}

/// Every change acknowledged before a `kill -9` has exactly one audit record, and every record
/// names a change that is in the store.
#[test]
fn every_acknowledged_change_has_one_record_across_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path(), &[]);
    let key = access_key(&server.connection_string());
    let http = client(dir.path());
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let rt = runtime();
    let target = (server.endpoint.clone(), server.host(), key);
    rt.block_on(async {
        let tasks: Vec<_> = (0..6)
            .map(|_| tokio::spawn(burst(target.clone(), http.clone(), Arc::clone(&acked))))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().expect("lock").len() < 400 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Mid-burst: requests are in flight on every connection.
        server.child.kill().expect("kill -9");
        for t in tasks {
            let _ = t.await;
        }
    });
    let _ = server.child.wait();
    drop(server);
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 400,
        "only {} changes acknowledged",
        acked.len()
    );

    let d = dir.path().to_str().expect("utf-8");
    let mut records = json_lines(&audit(&["--data-dir", d], &["--json"]));
    // The deployment's beginning: the first node created the default resource.
    assert_eq!(records.remove(0)["operation"], "createResource");
    let mut by_request: BTreeMap<String, &Value> = BTreeMap::new();
    for r in &records {
        let req = r["requestId"].as_str().expect("request id").to_owned();
        assert!(
            by_request.insert(req, r).is_none(),
            "two records of one request"
        );
    }
    for (op, id, req) in &acked {
        let r = by_request
            .get(req)
            .unwrap_or_else(|| panic!("no record of {op} {id}"));
        assert_eq!(
            (r["operation"].as_str(), r["identityId"].as_str()),
            (Some(*op), Some(id.as_str()))
        );
        assert_eq!(r["outcome"], "success");
    }
    // Every record's change is in the store (records of changes whose answer the kill cut off
    // included).
    let (ids, gone) = stored(dir.path());
    let deleted: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["operation"] == "deleteIdentity")
        .filter_map(|r| r["identityId"].as_str())
        .collect();
    for r in &records {
        let id = r["identityId"].as_str().expect("identity");
        match r["operation"].as_str().expect("operation") {
            "createIdentity" if deleted.contains(id) => assert!(gone.contains(id), "{id}"),
            "createIdentity" => assert!(ids.contains_key(id), "created {id} is missing"),
            "deleteIdentity" => assert!(gone.contains(id) && !ids.contains_key(id), "{id}"),
            "revokeTokens" => {
                let epoch: i64 = r["detail"].as_str().expect("detail")["epoch ".len()..]
                    .parse()
                    .expect("epoch");
                assert!(
                    ids.get(id).is_some_and(|e| *e >= epoch) || gone.contains(id),
                    "{id}"
                );
            }
            other => panic!("unexpected operation {other}"),
        }
    }
    // And the store it reads is the server's: a restart serves on.
    let server = Server::start(dir.path(), &[]);
    assert!(server.terminate().success());
}
