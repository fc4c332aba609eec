//! Whatever command creates the data dir first, it and everything in it are private.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::{Server, run};

/// Every directory under `dir` (itself included) and every file, with its mode.
fn modes(dir: &Path) -> Vec<(String, bool, u32)> {
    let mut out = vec![(
        dir.display().to_string(),
        true,
        std::fs::metadata(dir).expect("stat").permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("stat");
        if meta.is_dir() {
            out.extend(modes(&entry.path()));
        } else {
            out.push((
                entry.path().display().to_string(),
                false,
                meta.permissions().mode() & 0o777,
            ));
        }
    }
    out
}

#[track_caller]
fn assert_private(dir: &Path, must_have: &[&str]) {
    let all = modes(dir);
    for (path, is_dir, mode) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{path} has mode {mode:o}");
    }
    for name in must_have {
        assert!(
            all.iter().any(|(p, _, _)| p.ends_with(name)),
            "{name} missing from {all:?}"
        );
    }
}

#[test]
fn ca_cert_first_then_serve_leaves_everything_private() {
    let root = tempfile::tempdir().expect("dir");
    let data = root.path().join("data");
    let (ok, pem, err) = run(&["ca-cert", "--data-dir", data.to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_private(&data, &["tls/ca-key.pem", "tls/ca.pem"]);
    let server = Server::start(&data, &[]);
    assert_private(
        &data,
        &[
            "callsign.db",
            "callsign.db-wal",
            "callsign.db-shm",
            "tls/server-key.pem",
        ],
    );
    assert!(server.terminate().success());
    assert_private(&data, &["callsign.db", "endpoint"]);
}

#[test]
fn serve_first_and_a_readable_existing_dir_is_tightened() {
    let root = tempfile::tempdir().expect("dir");
    let data = root.path().join("data");
    let server = Server::start(&data, &[]);
    assert_private(&data, &["callsign.db", "callsign.db-wal", "tls/ca-key.pem"]);
    assert!(server.terminate().success());

    // An operator (or an older version) left things readable: the next start tightens them.
    for (p, m) in [
        (data.clone(), 0o755),
        (data.join("tls"), 0o755),
        (data.join("callsign.db"), 0o644),
        (data.join("tls/ca-key.pem"), 0o644),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
    }
    let server = Server::start(&data, &[]);
    assert_private(&data, &["callsign.db", "tls/ca-key.pem"]);
    assert!(server.terminate().success());
}

#[test]
fn links_and_other_users_files_in_the_data_dir_are_refused() {
    let root = tempfile::tempdir().expect("dir");
    let data = root.path().join("data");
    let d = data.to_str().expect("utf-8");
    let (ok, _, err) = run(&["ca-cert", "--data-dir", d]);
    assert!(ok, "{err}");
    // A link planted where callsign writes would redirect the write elsewhere.
    let victim = root.path().join("victim");
    std::fs::write(&victim, b"keep me").expect("write");
    std::os::unix::fs::symlink(&victim, data.join("endpoint")).expect("link");
    let out = std::process::Command::new(crate::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", d])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).expect("read"), b"keep me");
    std::fs::remove_file(data.join("endpoint")).expect("rm");

    // Files of another user (only root can make them).
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
        == Some(0)
    {
        std::os::unix::fs::chown(data.join("tls/ca.pem"), Some(65534), None).expect("chown");
        let (ok, _, err) = run(&["ca-cert", "--data-dir", d]);
        assert!(!ok && err.contains("belongs to user id 65534"), "{err}");
    }
}

#[test]
fn mistakes_do_not_create_stores_or_show_passwords() {
    let root = tempfile::tempdir().expect("dir");
    let missing = root.path().join("typo");
    let m = missing.to_str().expect("utf-8");
    let (ok, _, err) = run(&["connection-string", "--data-dir", m]);
    assert!(!ok && err.contains("there is no store"), "{err}");
    let (ok, _, err) = run(&[
        "migrate-store",
        "--from",
        m,
        "--to",
        root.path().join("t").to_str().expect("utf-8"),
    ]);
    assert!(!ok && err.contains("no store"), "{err}");
    assert!(!missing.exists() && !root.path().join("t").exists());

    // A config file with a password: refused when others can read it, and a parse error
    // never quotes the line.
    let cfg = root.path().join("callsign.toml");
    std::fs::write(
        &cfg,
        "database_url = \"postgres://u:Sup3rSecret@127.0.0.1:1/db\"\nbogus_key = 1\n",
    )
    .expect("write");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let c = cfg.to_str().expect("utf-8");
    let (ok, _, err) = run(&["migrate", "--config", c]);
    assert!(!ok && err.contains("bogus_key"), "{err}");
    assert!(!err.contains("Sup3rSecret"), "{err}");
    std::fs::write(
        &cfg,
        "database_url = \"postgres://u:Sup3rSecret@127.0.0.1:1/db\"\n",
    )
    .expect("write");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (ok, _, err) = run(&["migrate", "--config", c]);
    assert!(!ok && err.contains("others can read it"), "{err}");
    assert!(!err.contains("Sup3rSecret"), "{err}");

    // A password on the command line is visible to every local user: a warning says so.
    let (ok, _, err) = run(&[
        "migrate",
        "--database-url",
        "postgres://u:Sup3rSecret@127.0.0.1:1/db",
    ]);
    assert!(!ok);
    assert!(err.contains("visible to every local user"), "{err}");
    assert!(!err.contains("Sup3rSecret"), "{err}");
}
