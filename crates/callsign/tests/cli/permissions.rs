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
