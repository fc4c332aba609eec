//! `callsign migrate-store` as an operator runs it: a mistyped location is refused before
//! anything is created, and a target changed since the last copy is reported, not overwritten.

use std::path::Path;
use std::process::Command;

use callsign_testkit::TestDatabase;

use crate::{BIN, count_identities, run, runtime};

/// Runs `callsign` in `cwd` (where a location taken for a relative data dir would appear).
fn run_in(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run callsign");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_mistyped_scheme_is_refused_and_creates_nothing() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let target = cwd.path().join("target");
    let target = target.to_str().expect("utf-8");
    let (ok, out, err) = run_in(
        cwd.path(),
        &[
            "migrate-store",
            "--from",
            "postgress://callsign:hunter2@db.internal/callsign",
            "--to",
            target,
        ],
    );
    assert!(!ok, "a mistyped scheme must fail: {out}");
    assert!(err.contains("--from"), "{err}");
    assert!(err.contains("unknown scheme 'postgress'"), "{err}");
    assert!(err.contains("postgres://"), "{err}");
    assert!(!err.contains("hunter2"), "the password is echoed: {err}");
    // Neither a `postgress:` directory nor the target was created.
    assert_eq!(entries(cwd.path()), Vec::<String>::new());

    // The target is checked too, before the source is opened.
    let source = cwd.path().join("source");
    let (ok, _, err) = run_in(
        cwd.path(),
        &[
            "migrate-store",
            "--from",
            source.to_str().expect("utf-8"),
            "--to",
            "postgresq1://db.internal/callsign",
        ],
    );
    assert!(!ok);
    assert!(err.contains("--to"), "{err}");
    assert!(err.contains("unknown scheme 'postgresq1'"), "{err}");
    assert_eq!(entries(cwd.path()), Vec::<String>::new());

    // So is --database-url.
    let (ok, _, err) = run_in(
        cwd.path(),
        &[
            "migrate",
            "--data-dir",
            source.to_str().expect("utf-8"),
            "--database-url",
            "mysql://db.internal/callsign",
        ],
    );
    assert!(!ok);
    assert!(err.contains("unknown scheme 'mysql'"), "{err}");
    assert_eq!(entries(cwd.path()), Vec::<String>::new());
}

fn seed(location: &[&str], start: &str, count: &str) {
    let mut args = vec!["seed", "--quiet", "--start", start, "--count", count];
    args.extend_from_slice(location);
    let (ok, _, err) = run(&args);
    assert!(ok, "seed: {err}");
}

#[test]
fn a_diverged_target_is_reported_and_left_alone_unless_forced() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("source");
    let source = source.to_str().expect("utf-8");

    seed(&["--data-dir", source], "0", "20");
    let (ok, out, err) = run(&["migrate-store", "--from", source, "--to", &url]);
    assert!(ok, "first copy: {err}");
    assert!(out.contains("20 of 20 identities"), "{out}");
    assert_eq!(rt.block_on(count_identities(&url)), 20);

    // The target is used after the cut-over (three identities created there), and the old
    // store gets two more.
    seed(&["--database-url", &url], "1000", "3");
    seed(&["--data-dir", source], "20", "2");
    let (ok, out, err) = run(&["migrate-store", "--from", source, "--to", &url]);
    assert!(!ok, "a diverged copy must fail: {out}");
    assert!(err.contains("3 identities created on the target"), "{err}");
    assert!(err.contains("0 identities deleted on the target"), "{err}");
    assert_eq!(
        err.matches("created on the target: 8:acs:").count(),
        3,
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(err.contains("nothing was copied"), "{err}");
    assert_eq!(rt.block_on(count_identities(&url)), 23, "nothing written");

    let (ok, out, err) = run(&["migrate-store", "--from", source, "--to", &url, "--force"]);
    assert!(ok, "forced copy: {err}");
    assert!(out.contains("2 of 22 identities"), "{out}");
    assert!(
        out.contains("kept 3 identities created on the target"),
        "{out}"
    );
    assert_eq!(rt.block_on(count_identities(&url)), 25);
    drop(db);
}
