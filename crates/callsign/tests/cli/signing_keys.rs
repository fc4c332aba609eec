//! `callsign signing-key rotate` and `list` against a store that running servers use: the new key
//! is pending, a second rotation is refused, and the servers publish the key within their refresh
//! interval.

use std::path::Path;
use std::time::{Duration, Instant};

use callsign_testkit::TestDatabase;
use serde_json::Value;

use crate::{Server, client, run, runtime};

/// `signing-key list --json` on `store` (e.g. `--data-dir DIR`).
fn list(store: &[&str]) -> Vec<Value> {
    let mut args = vec!["signing-key", "list", "--json"];
    args.extend_from_slice(store);
    let (ok, out, err) = run(&args);
    assert!(ok, "list failed: {err}");
    let v: Value = serde_json::from_str(&out).expect("list --json prints JSON");
    v["keys"].as_array().expect("keys").clone()
}

/// The kids a server publishes.
fn published(server: &Server, data_dir: &Path) -> Vec<String> {
    let rt = runtime();
    rt.block_on(async {
        let set: Value = client(data_dir)
            .get(format!("{}.well-known/jwks.json", server.endpoint))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        set["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    })
}

/// Rotates on `store`, checks what `list` says and that every server publishes the new key
/// within its refresh interval (1 s here), and that a second rotation is refused.
fn rotate_while_serving(servers: &[(&Server, &Path)], store: &[&str]) {
    let before = list(store);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["state"], "active");
    assert_eq!(before[0]["alg"], "ES256");
    assert!(before[0]["retiresAt"].is_null());
    let old = before[0]["kid"].as_str().expect("kid").to_owned();

    let mut args = vec!["signing-key", "rotate"];
    args.extend_from_slice(store);
    let (ok, out, err) = run(&args);
    assert!(ok, "rotate failed: {err}");
    let after = list(store);
    assert_eq!(after.len(), 2, "{after:?}");
    let pending = after
        .iter()
        .find(|k| k["state"] == "pending")
        .expect("a pending key");
    let new = pending["kid"].as_str().expect("kid").to_owned();
    assert!(out.contains(&new), "rotate names the new key: {out}");
    let activates = pending["activatesAt"].as_str().expect("activatesAt");
    assert!(out.contains(activates), "and when it signs: {out}");
    let previous = after
        .iter()
        .find(|k| k["kid"] == old.as_str())
        .expect("old");
    assert_eq!(previous["state"], "active", "the old key signs until then");
    assert!(previous["retiresAt"].is_string());
    for key in [
        "kid",
        "alg",
        "state",
        "createdAt",
        "activatesAt",
        "retiresAt",
    ] {
        assert!(pending.get(key).is_some(), "{key} in {pending}");
    }

    let deadline = Instant::now() + Duration::from_secs(5);
    for (server, data_dir) in servers {
        while !published(server, data_dir).contains(&new) {
            assert!(
                Instant::now() < deadline,
                "the server never published {new}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(published(server, data_dir).contains(&old));
    }

    let (ok, _, err) = run(&args);
    assert!(!ok, "a second rotation while one is pending is refused");
    assert!(
        err.contains("pending already") && err.contains(&new),
        "{err}"
    );
    assert_eq!(list(store).len(), 2);
}

#[test]
fn rotate_and_list_on_the_data_dir_of_a_running_server() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &["--key-refresh-secs", "1"]);
    let data = dir.path().to_str().expect("utf-8");
    rotate_while_serving(&[(&server, dir.path())], &["--data-dir", data]);
    // The table view names the same keys.
    let (ok, out, _) = run(&["signing-key", "list", "--data-dir", data]);
    assert!(ok);
    assert!(out.starts_with("KID") && out.contains("pending") && out.contains("active"));
    server.terminate();
}

#[test]
fn rotate_on_a_sealed_store_needs_its_master_key() {
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("master.key");
    let key = key_file.to_str().expect("utf-8");
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &["--master-key-file", key, "--key-refresh-secs", "1"],
    );
    let data_arg = data.to_str().expect("utf-8");
    let (ok, _, err) = run(&["signing-key", "rotate", "--data-dir", data_arg]);
    assert!(!ok, "rotated without the master key");
    assert!(err.contains("sealed"), "{err}");
    rotate_while_serving(
        &[(&server, &data)],
        &["--data-dir", data_arg, "--master-key-file", key],
    );
    server.terminate();
}

#[test]
fn rotate_and_list_on_a_database_two_nodes_serve() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let extra = ["--database-url", url.as_str(), "--key-refresh-secs", "1"];
    let a = Server::start(dir_a.path(), &extra);
    let b = Server::start(dir_b.path(), &extra);
    rotate_while_serving(
        &[(&a, dir_a.path()), (&b, dir_b.path())],
        &["--database-url", &url],
    );
    a.terminate();
    b.terminate();
}

#[test]
fn rotate_refuses_a_data_dir_without_a_store() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("nothing-here");
    let (ok, _, err) = run(&[
        "signing-key",
        "rotate",
        "--data-dir",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(err.contains("there is no store"), "{err}");
    assert!(!missing.exists(), "nothing was created");
}
