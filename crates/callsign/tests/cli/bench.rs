//! `callsign bench` and `callsign seed` as the benchmark script runs them: every workload briefly
//! against a real server, JSON out, and a seeded directory that the server then serves. These
//! prove the tools work; they assert no speed.

use serde_json::Value;

use crate::{Server, run};

/// The connection string as `scripts/bench.sh` gets it: from `callsign connection-string`, not
/// from the banner.
fn connection_string_from_cli(server: &Server, dir: &std::path::Path) -> String {
    let (ok, out, err) = run(&[
        "connection-string",
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--endpoint",
        &server.endpoint,
    ]);
    assert!(ok, "{err}");
    out.trim().to_owned()
}

fn bench(server: &Server, dir: &std::path::Path, extra: &[&str]) -> Value {
    let pid = server.child.id().to_string();
    let cs = connection_string_from_cli(server, dir);
    let mut args = vec![
        "bench",
        "--connection-string",
        &cs,
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--server-pid",
        &pid,
        "--connections",
        "2",
        "--requests",
        "100",
        "--duration",
        "15",
        "--warmup",
        "0",
        "--no-baseline",
        "--json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = run(&args);
    assert!(ok, "callsign bench {extra:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench JSON: {e}: {out}"))
}

#[test]
fn bench_runs_every_workload_and_seed_fills_the_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path(), &[]);
    for workload in ["create", "create-token", "issue", "revoke", "delete", "mix"] {
        let pool = if workload == "delete" { "120" } else { "30" };
        let report = bench(
            &server,
            dir.path(),
            &["--workload", workload, "--pool", pool],
        );
        assert_eq!(report["workload"], workload);
        assert_eq!(report["ops"], 100, "{workload}: {report}");
        assert_eq!(report["error_total"], 0, "{workload}: {report}");
        assert!(report["latency_us"]["p99"].as_u64().is_some_and(|v| v > 0));
        assert!(report["server"]["rss_kib"].as_u64().is_some_and(|v| v > 0));
    }
    // Loopback only unless told otherwise.
    let (ok, _, err) = run(&[
        "bench",
        "--connection-string",
        "endpoint=https://192.0.2.1/;accesskey=YWJj",
        "--requests",
        "1",
    ]);
    assert!(!ok);
    assert!(err.contains("--allow-remote"), "{err}");
    drop(server);

    // Seeding writes straight into the store; the server then issues to random seeded ids.
    let seeded = tempfile::tempdir().expect("temp dir");
    let (ok, out, err) = run(&[
        "seed",
        "--count",
        "1000",
        "--batch",
        "400",
        "--data-dir",
        seeded.path().to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).expect("seed JSON");
    assert_eq!(report["inserted"], 1000);
    let server = Server::start(seeded.path(), &[]);
    let report = bench(
        &server,
        seeded.path(),
        &["--workload", "issue", "--seeded", "1000"],
    );
    assert_eq!(report["identities"], 1000);
    assert_eq!(report["ops"], 100);
    assert_eq!(report["error_total"], 0, "{report}");
    assert!(server.terminate().success());
}
