//! `callsign resource …`, `callsign keys …` and `connection-string --resource` on the store of
//! a running server, as an operator's script uses them: what they print works unchanged with a
//! client on the same machine, and the server follows each change within seconds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{BIN, Server};

/// Runs `callsign ARGS --data-dir DIR`: exit code, stdout, stderr.
fn callsign(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run callsign");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = callsign(dir, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

fn last_line(out: &str) -> String {
    out.lines().last().expect("a line").trim().to_owned()
}

/// `callsign user create --json` with `cs`: the new id, or the error line.
fn create_user(dir: &Path, cs: &str) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(["user", "create", "--json"])
        .env("COMMUNICATION_SERVICES_CONNECTION_STRING", cs)
        .env("SSL_CERT_FILE", dir.join("tls/ca.pem"))
        .output()
        .expect("run callsign user create");
    if out.status.success() {
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        Ok(v["id"].as_str().expect("id").to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until `cs` is accepted (`true`) or refused (`false`), at most 5 s.
#[track_caller]
fn within_5s(dir: &Path, cs: &str, accepted: bool) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let got = create_user(dir, cs);
        if got.is_ok() == accepted {
            return got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "after 5 s: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn resources_and_keys_are_managed_on_the_store_while_the_server_runs() {
    let tmp = tempfile::tempdir().expect("dir");
    let dir = tmp.path();
    let server = Server::start(dir, &[]);
    let default_cs = server.connection_string();

    let created: Value = serde_json::from_str(&ok(
        dir,
        &["resource", "create", "--name", "tenant-b", "--json"],
    ))
    .expect("json");
    let b_cs = created["connectionString"].as_str().expect("cs").to_owned();
    assert_eq!(created["name"], "tenant-b");
    assert!(
        b_cs.starts_with(&format!("endpoint={}", server.endpoint)),
        "{b_cs}"
    );
    let b_id = created["id"].as_str().expect("id").to_owned();
    // The printed string works unchanged, for that resource.
    let user = within_5s(dir, &b_cs, true).expect("created");
    assert!(user.contains(&b_id), "{user}");

    // Without --json the connection string is the last line.
    let named = ok(
        dir,
        &[
            "resource",
            "create",
            "--name",
            "by-name",
            "--host",
            "localhost",
        ],
    );
    let named_cs = last_line(&named);
    assert!(
        named_cs.starts_with("endpoint=https://localhost:"),
        "{named_cs}"
    );
    within_5s(dir, &named_cs, true).expect("reached by its host name");
    let again = last_line(&ok(dir, &["connection-string", "--resource", "by-name"]));
    assert_eq!(
        again, named_cs,
        "connection-string names the resource's host too"
    );
    // An IP address would take the shared address's requests: refused.
    let (code, _, err) = callsign(
        dir,
        &["resource", "create", "--name", "ip", "--host", "127.0.0.1"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("IP address"), "{err}");

    let listed: Value =
        serde_json::from_str(&ok(dir, &["resource", "list", "--json"])).expect("json");
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["default", "tenant-b", "by-name"]);
    assert!(!listed.to_string().contains("accesskey"), "no keys listed");
    let shown: Value =
        serde_json::from_str(&ok(dir, &["resource", "show", "tenant-b", "--json"])).expect("json");
    assert_eq!(shown["id"], b_id.as_str());
    assert_eq!(shown["verifyOnlyKey"], false);

    // Names are unique; refused creates change nothing.
    let (code, _, err) = callsign(dir, &["resource", "create", "--name", "tenant-b"]);
    assert_ne!(code, 0);
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = callsign(dir, &["resource", "create", "--name", "Bad_Name"]);
    assert_ne!(code, 0);
    assert!(err.contains("--name"), "{err}");

    // Regenerating the primary key: the old one is refused within 5 s, the new one and the
    // secondary work.
    let secondary_cs = last_line(&ok(
        dir,
        &["connection-string", "--resource", "tenant-b", "--secondary"],
    ));
    let new_cs = last_line(&ok(
        dir,
        &["keys", "regenerate", "primary", "--resource", "tenant-b"],
    ));
    assert_ne!(new_cs, b_cs);
    let refusal = within_5s(dir, &b_cs, false).expect_err("refused");
    assert!(refusal.contains("Denied"), "{refusal}");
    within_5s(dir, &new_cs, true).expect("new key");
    within_5s(dir, &secondary_cs, true).expect("secondary untouched");
    within_5s(dir, &default_cs, true).expect("other resources untouched");

    // The verify-only key: the same string twice, refused for management.
    let verify_cs = last_line(&ok(dir, &["keys", "verify-only", "--resource", "tenant-b"]));
    assert_eq!(
        last_line(&ok(dir, &["keys", "verify-only", "--resource", "tenant-b"])),
        verify_cs
    );
    // Denied until the server has loaded the new key, then refused as not allowed.
    let started = Instant::now();
    loop {
        let refusal = create_user(dir, &verify_cs).expect_err("refused");
        if refusal.contains("AuthorizationFailed") {
            break;
        }
        assert!(refusal.contains("Denied"), "{refusal}");
        assert!(started.elapsed() < Duration::from_secs(5), "{refusal}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Deleting needs --yes; the default resource is never deleted; a deleted resource's keys
    // are refused.
    let (code, _, err) = callsign(dir, &["resource", "delete", "tenant-b"]);
    assert_ne!(code, 0);
    assert!(err.contains("--yes"), "{err}");
    let (code, _, err) = callsign(dir, &["resource", "delete", "default", "--yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("default resource"), "{err}");
    ok(dir, &["resource", "delete", &b_id, "--yes"]);
    within_5s(dir, &new_cs, false).expect_err("deleted");
    let (code, _, err) = callsign(dir, &["resource", "show", "tenant-b"]);
    assert_ne!(code, 0);
    assert!(err.contains("no resource"), "{err}");
    drop(server);
}

/// A node that cannot load a change of keys (here: sealed under a master key it was not given)
/// fails closed: it refuses requests with 503 and reports not ready, instead of accepting the
/// key that was just regenerated.
#[test]
fn a_node_that_cannot_load_changed_keys_refuses_requests() {
    let tmp = tempfile::tempdir().expect("dir");
    let dir = tmp.path();
    let server = Server::start(dir, &[]);
    let cs = server.connection_string();
    within_5s(dir, &cs, true).expect("served");
    let master = dir.join("master.key");
    let m = master.to_str().expect("utf-8");
    ok(dir, &["seal", "--master-key-file", m]);
    ok(
        dir,
        &["keys", "regenerate", "primary", "--master-key-file", m],
    );
    let started = Instant::now();
    // Until the node polls the store (a second) the old key works; then nothing does.
    let refusal = within_5s(dir, &cs, false).expect_err("refused");
    assert!(refusal.contains("ServiceUnavailable"), "{refusal}");
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    let still = create_user(dir, &cs).expect_err("still refused");
    assert!(still.contains("ServiceUnavailable"), "{still}");
    let http = crate::client(dir);
    let status = crate::runtime().block_on(async {
        let r = http.get(format!("{}ready", server.endpoint)).send().await;
        r.expect("ready").status().as_u16()
    });
    assert_eq!(status, 503, "not ready while it cannot load its keys");
    drop(server);
}
