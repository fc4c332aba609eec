//! `serve --dev`: the well-known resource and key, the public dev CA, an ephemeral store that
//! leaves nothing behind, and the refusal to listen beyond loopback.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callsign_testkit::SigningClient;
use reqwest::Method;

use crate::{BIN, run, runtime, wait_with_timeout};

const DEV_KEY: &str = "Y2FsbHNpZ24tZGV2LXByaW1hcnkta2V5LXB1YmxpYyE=";
const DEV_RESOURCE: &str = "de7de7de-de7d-4e7d-8e7d-e7de7de7de7d";

/// Starts `serve --dev` in `cwd` and returns the child and its endpoint.
fn start_dev(cwd: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .args(extra)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env_remove("CALLSIGN_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn callsign serve --dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .expect("the banner");
    assert!(first.contains("dev mode"), "{first}");
    assert!(first.contains(DEV_RESOURCE), "{first}");
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .expect("endpoint")
        .to_owned();
    (child, endpoint)
}

fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(wait_with_timeout(&mut child, Duration::from_secs(30)).success());
}

/// A client that trusts nothing but the dev CA, as printed by `callsign ca-cert --dev`.
fn dev_client(endpoint: &str) -> SigningClient {
    let (ok, ca, _) = run(&["ca-cert", "--dev"]);
    assert!(ok);
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).expect("pem")])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    SigningClient::new(client, endpoint, DEV_KEY)
}

/// The dev stores present: in `/dev/shm` or the temporary directory, wherever `--dev` put them.
fn dev_dirs() -> Vec<std::path::PathBuf> {
    [std::path::PathBuf::from("/dev/shm"), std::env::temp_dir()]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("callsign-dev-"))
        .map(|e| e.path())
        .collect()
}

#[test]
fn dev_mode_serves_the_well_known_key_over_the_dev_ca_and_leaves_nothing() {
    let cwd = tempfile::tempdir().expect("cwd");
    let seed = tempfile::NamedTempFile::new().expect("seed");
    std::fs::write(
        seed.path(),
        "{\"customId\": \"alice\"}\n\n{}\n{\"customId\": \"bob\"}\n",
    )
    .expect("write seed");
    let rt = runtime();
    for run_no in 0..2 {
        let (child, endpoint) = start_dev(cwd.path(), &["--seed", &seed.path().to_string_lossy()]);
        let api = dev_client(&endpoint);
        rt.block_on(async {
            let r = api
                .send(Method::POST, "/identities?api-version=2023-10-01", None)
                .await;
            assert_eq!(
                r.status, 201,
                "run {run_no}: the same key every run: {}",
                r.body
            );
            let r = api
                .send(
                    Method::GET,
                    "/identities?api-version=2025-03-02-preview",
                    None,
                )
                .await;
            let custom: Vec<_> = r.body["value"]
                .as_array()
                .expect("value")
                .iter()
                .filter_map(|i| i["customId"].as_str())
                .collect();
            let mut custom = custom;
            custom.sort_unstable();
            assert_eq!(
                custom,
                ["alice", "bob"],
                "seeded; nothing kept from the run before"
            );
            assert_eq!(r.body["value"].as_array().map(Vec::len), Some(4));
        });
        stop(child);
        let left: Vec<_> = std::fs::read_dir(cwd.path()).expect("cwd").collect();
        assert!(left.is_empty(), "nothing written to the working directory");
    }
    // Our own temporary directories are gone (others' may exist: tests run in parallel).
    let (child, _) = start_dev(cwd.path(), &[]);
    let during = dev_dirs();
    stop(child);
    let after = dev_dirs();
    assert!(
        during.iter().any(|d| !after.contains(d)),
        "the dev store is removed at exit"
    );

    // kill -9 leaves the store; the next --dev removes it.
    let before = dev_dirs();
    let (mut killed, _) = start_dev(cwd.path(), &[]);
    let left: Vec<_> = dev_dirs()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    killed.kill().expect("kill -9");
    killed.wait().expect("reaped");
    assert!(
        !left.is_empty() && left.iter().all(|d| d.exists()),
        "kill -9 leaves its store"
    );
    let (child, _) = start_dev(cwd.path(), &[]);
    stop(child);
    assert!(
        left.iter().all(|d| !d.exists()),
        "the next --dev sweeps it: {left:?}"
    );
}

#[test]
fn dev_strings_and_refusals() {
    let (ok, out, _) = run(&["connection-string", "--dev"]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        format!("endpoint=https://127.0.0.1:8443/;accesskey={DEV_KEY}")
    );
    let (ok, out, _) = run(&[
        "connection-string",
        "--dev",
        "--endpoint",
        "https://localhost:9000",
    ]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        format!("endpoint=https://localhost:9000/;accesskey={DEV_KEY}")
    );
    let (ok, a, _) = run(&["ca-cert", "--dev"]);
    let (_, b, _) = run(&["ca-cert", "--dev"]);
    assert!(ok && a == b && a.starts_with("-----BEGIN CERTIFICATE-----"));
    let (ok, _, err) = run(&["serve", "--dev", "--listen", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(err.contains("--dev-allow-remote"), "{err}");
    let (ok, _, err) = run(&["serve", "--dev", "--data-dir", "/tmp/x"]);
    assert!(!ok, "a data dir contradicts --dev: {err}");
}
