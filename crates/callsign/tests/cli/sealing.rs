//! Sealed key material: a store sealed under a master key holds no usable access key or
//! signing key, and a server without that key refuses to start.

use std::path::Path;
use std::process::Command;

use callsign_testkit::{TestDatabase, access_key, connect_postgres};
use reqwest::Method;

use crate::{BIN, Server, client, run, runtime, signed};

/// `serve` that must fail: its exit status and stderr.
fn serve_fails(data: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run serve");
    assert!(
        !out.status.success(),
        "serve started without the master key"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn create_with_token(server: &Server, data: &Path, key: &str) -> String {
    let r = signed(
        &client(data),
        &server.endpoint,
        &server.host(),
        key,
        Method::POST,
        "/identities?api-version=2023-10-01",
        r#"{"createTokenWithScopes":["chat"]}"#,
    )
    .await
    .expect("request");
    assert_eq!(r.status().as_u16(), 201);
    let body: serde_json::Value = r.json().await.expect("json");
    body["accessToken"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

async fn introspect_active(server: &Server, data: &Path, key: &str, token: &str) -> bool {
    let body = serde_json::json!({ "token": token }).to_string();
    let body: &'static str = Box::leak(body.into_boxed_str());
    let r = signed(
        &client(data),
        &server.endpoint,
        &server.host(),
        key,
        Method::POST,
        "/tokens/:introspect?api-version=2023-10-01",
        body,
    )
    .await
    .expect("request");
    let v: serde_json::Value = r.json().await.expect("json");
    v["active"] == true
}

/// Every byte callsign keeps in the data dir's database files.
fn database_bytes(data: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(b) = std::fs::read(data.join(format!("callsign.db{suffix}"))) {
            all.extend(b);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_embedded_store_sealed_from_the_start_holds_no_usable_key() {
    let root = tempfile::tempdir().expect("dir");
    let data = root.path().join("data");
    let master = root.path().join("master.key");
    let m = master.to_str().expect("utf-8");
    // A new deployment sealed from its first start: serve makes the master key file.
    let server = Server::start(&data, &["--master-key-file", m]);
    assert!(master.exists(), "serve created the master key file");
    let cs = server.connection_string();
    let key = access_key(&cs);
    let rt = runtime();
    let token = rt.block_on(create_with_token(&server, &data, &key));
    assert!(server.terminate().success());

    // The raw files hold neither the access key nor a signing key in the clear.
    let raw = database_bytes(&data);
    assert!(
        !contains(&raw, key.as_bytes()),
        "the access key is in the database file"
    );
    let db = rusqlite::Connection::open(data.join("callsign.db")).expect("db");
    let (p, s): (String, String) = db
        .query_row(
            "SELECT primary_key, secondary_key FROM resources",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("resource");
    assert!(
        p.starts_with("sealed:v1:") && s.starts_with("sealed:v1:"),
        "{p}"
    );
    let pkcs8: Vec<u8> = db
        .query_row("SELECT pkcs8 FROM signing_keys", [], |r| r.get(0))
        .expect("key");
    assert!(pkcs8.starts_with(b"sealed:v1:"));
    drop(db);

    // Without the master key, or with another one, the server refuses to start.
    let err = serve_fails(&data, &[]);
    assert!(err.contains("sealed under master key"), "{err}");
    let other = root.path().join("other.key");
    {
        use base64::Engine as _;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            &other,
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        )
        .expect("write");
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let err = serve_fails(
        &data,
        &["--master-key-file", other.to_str().expect("utf-8")],
    );
    assert!(err.contains("sealed under master key"), "{err}");
    // A master key file others can read is refused.
    use std::os::unix::fs::PermissionsExt as _;
    let loose = root.path().join("loose.key");
    std::fs::copy(&master, &loose).expect("copy");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = serve_fails(
        &data,
        &["--master-key-file", loose.to_str().expect("utf-8")],
    );
    assert!(err.contains("readable by other users"), "{err}");

    // With it, the same connection string and the tokens issued before keep working.
    let server = Server::start(&data, &["--master-key-file", m]);
    assert!(rt.block_on(introspect_active(&server, &data, &key, &token)));
    assert!(server.terminate().success());
}

#[test]
fn an_existing_store_is_sealed_losslessly_and_the_master_key_rotates() {
    let root = tempfile::tempdir().expect("dir");
    let data = root.path().join("data");
    let d = data.to_str().expect("utf-8");
    let server = Server::start(&data, &[]);
    let cs = server.connection_string();
    let key = access_key(&cs);
    let rt = runtime();
    let token = rt.block_on(create_with_token(&server, &data, &key));
    assert!(server.terminate().success());
    // A second resource and a verify-only key are sealed like the first keys.
    let (ok, out, err) = run(&["resource", "create", "--name", "second", "--data-dir", d]);
    assert!(ok, "{err}");
    let second_key = access_key(out.lines().last().expect("a line"));
    let (ok, out, err) = run(&[
        "keys",
        "verify-only",
        "--resource",
        "second",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{err}");
    let verify_key = access_key(out.lines().last().expect("a line"));
    for k in [&key, &second_key, &verify_key] {
        assert!(
            contains(&database_bytes(&data), k.as_bytes()),
            "plain before sealing"
        );
    }

    let first = root.path().join("first.key");
    let f = first.to_str().expect("utf-8");
    let (ok, out, err) = run(&["seal", "--data-dir", d, "--master-key-file", f]);
    assert!(ok, "{err}");
    assert!(out.contains("sealed under master key"), "{out}");
    // The plain values are gone from the files, not just superseded (no old page, no WAL frame).
    let raw = database_bytes(&data);
    for k in [&key, &second_key, &verify_key] {
        assert!(
            !contains(&raw, k.as_bytes()),
            "a plain access key lingers on disk"
        );
    }
    // Sealing again is harmless.
    let (ok, _, err) = run(&["seal", "--data-dir", d, "--master-key-file", f]);
    assert!(ok, "{err}");
    let (ok, again, err) = run(&["connection-string", "--data-dir", d, "--master-key-file", f]);
    assert!(ok, "{err}");
    assert_eq!(access_key(&again), key, "the access key survived sealing");
    let (ok, _, err) = run(&["connection-string", "--data-dir", d]);
    assert!(!ok && err.contains("sealed"), "{err}");

    let second = root.path().join("second.key");
    let s = second.to_str().expect("utf-8");
    let (ok, out, err) = run(&[
        "rotate-master-key",
        "--data-dir",
        d,
        "--master-key-file",
        f,
        "--new-master-key-file",
        s,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("sealed under master key"), "{out}");
    let err = serve_fails(&data, &["--master-key-file", f]);
    assert!(err.contains("sealed under master key"), "{err}");
    let server = Server::start(&data, &["--master-key-file", s]);
    assert!(rt.block_on(introspect_active(&server, &data, &key, &token)));
    assert!(server.terminate().success());
    let (ok, out, err) = run(&[
        "keys",
        "verify-only",
        "--resource",
        "second",
        "--data-dir",
        d,
        "--master-key-file",
        s,
    ]);
    assert!(ok, "{err}");
    assert_eq!(access_key(out.lines().last().expect("a line")), verify_key);
}

#[test]
fn a_postgres_store_is_sealed_and_refuses_nodes_without_the_key() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let root = tempfile::tempdir().expect("dir");
    let data = root.path().join("data");
    let server = Server::start(&data, &["--database-url", &url]);
    let key = access_key(&server.connection_string());
    let token = rt.block_on(create_with_token(&server, &data, &key));
    assert!(server.terminate().success());

    let master = root.path().join("master.key");
    let m = master.to_str().expect("utf-8");
    let (ok, _, err) = run(&["seal", "--database-url", &url, "--master-key-file", m]);
    assert!(ok, "{err}");
    let (primary, pkcs8): (String, Vec<u8>) = rt.block_on(async {
        let c = connect_postgres(&url).await;
        let p = c
            .query_one("SELECT primary_key FROM callsign_resources", &[])
            .await
            .expect("resource")
            .get(0);
        let k = c
            .query_one("SELECT pkcs8 FROM callsign_signing_keys", &[])
            .await
            .expect("key")
            .get(0);
        (p, k)
    });
    assert!(primary.starts_with("sealed:v1:") && !primary.contains(&key));
    assert!(pkcs8.starts_with(b"sealed:v1:"));
    let err = serve_fails(&data, &["--database-url", &url]);
    assert!(err.contains("sealed under master key"), "{err}");
    let server = Server::start(&data, &["--database-url", &url, "--master-key-file", m]);
    assert!(rt.block_on(introspect_active(&server, &data, &key, &token)));
    assert!(server.terminate().success());
    drop(db);
}

#[test]
fn copying_with_a_master_key_seals_a_target_that_held_plain_keys() {
    let root = tempfile::tempdir().expect("dir");
    let src = root.path().join("src");
    let tgt = root.path().join("tgt");
    let (s, t) = (src.to_str().expect("utf-8"), tgt.to_str().expect("utf-8"));
    let server = Server::start(&src, &[]);
    let key = access_key(&server.connection_string());
    runtime().block_on(create_with_token(&server, &src, &key));
    assert!(server.terminate().success());
    let (ok, _, err) = run(&["migrate-store", "--from", s, "--to", t]);
    assert!(ok, "{err}");
    assert!(contains(&database_bytes(&tgt), key.as_bytes()));

    let master = root.path().join("master.key");
    let m = master.to_str().expect("utf-8");
    // Without its master key a sealed source is refused before the target is touched.
    let (ok, _, err) = run(&["seal", "--data-dir", s, "--master-key-file", m]);
    assert!(ok, "{err}");
    let fresh = root.path().join("fresh");
    let (ok, _, err) = run(&[
        "migrate-store",
        "--from",
        s,
        "--to",
        fresh.to_str().expect("utf-8"),
    ]);
    assert!(!ok && err.contains("sealed"), "{err}");
    assert!(!fresh.exists(), "a failed copy created its target");

    let (ok, _, err) = run(&[
        "migrate-store",
        "--from",
        s,
        "--to",
        t,
        "--master-key-file",
        m,
    ]);
    assert!(ok, "{err}");
    assert!(
        !contains(&database_bytes(&tgt), key.as_bytes()),
        "the target still holds the plain access key"
    );
    let (ok, cs, err) = run(&["connection-string", "--data-dir", t, "--master-key-file", m]);
    assert!(ok, "{err}");
    assert_eq!(access_key(&cs), key);
}

#[test]
fn sealing_refuses_a_missing_store_and_creates_no_key_for_it() {
    let root = tempfile::tempdir().expect("dir");
    let missing = root.path().join("typo");
    let key = root.path().join("k.key");
    let (ok, _, err) = run(&[
        "seal",
        "--data-dir",
        missing.to_str().expect("utf-8"),
        "--master-key-file",
        key.to_str().expect("utf-8"),
    ]);
    assert!(!ok && err.contains("there is no store"), "{err}");
    assert!(!missing.exists(), "a store was created");
    assert!(!key.exists(), "a key file was created for nothing");
}
