//! The everyday operator commands: `config` (the effective configuration and where each value
//! came from), `doctor` (a deployment's health, exit 1 on a problem), `completions`, `man`, and
//! progress output that never reaches a pipe.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use callsign_testkit::TestDatabase;
use serde_json::Value;

use crate::{BIN, Server, run, runtime};

/// Runs callsign with extra environment variables (and no inherited `CALLSIGN_*` settings).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLSIGN_") {
            command.env_remove(key);
        }
    }
    let out = command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run callsign");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// The line of `out` for `key` (`key = …`).
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {key} line in:\n{out}"))
}

#[test]
fn config_shows_each_value_with_its_source_and_masks_the_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("callsign.toml");
    std::fs::write(&file, "location = \"westeurope\"\nmax_headers = 100\n").expect("write");
    let data = dir.path().join("data");
    let args = [
        "config",
        "--config",
        utf8(&file),
        "--data-dir",
        utf8(&data),
        "--listen",
        "127.0.0.1:9001",
    ];
    let env = [
        ("CALLSIGN_SIGNING_ALG", "eddsa"),
        (
            "CALLSIGN_DATABASE_URL",
            "postgres://callsign:secret@db.example/callsign?sslmode=verify-full",
        ),
    ];
    let (code, out, err) = run_env(&args, &env);
    assert_eq!(code, 0, "{err}");
    let shown = format!("{out}{err}");
    assert!(!shown.contains("secret"), "the password leaked:\n{shown}");
    assert_eq!(
        line(&out, "listen"),
        "listen = 127.0.0.1:9001  (flag --listen)"
    );
    assert_eq!(
        line(&out, "signing_alg"),
        "signing_alg = EdDSA  (env CALLSIGN_SIGNING_ALG)"
    );
    assert_eq!(
        line(&out, "location"),
        format!("location = westeurope  (file {})", file.display())
    );
    assert_eq!(
        line(&out, "max_body_bytes"),
        "max_body_bytes = 65536  (default)"
    );
    assert!(
        line(&out, "database_url").contains("postgres://callsign:***@db.example/callsign"),
        "{out}"
    );
    assert!(!data.exists(), "config must create nothing");

    // The same as JSON, and a password given as a flag is masked too.
    let mut json_args = args.to_vec();
    json_args.extend([
        "--json",
        "--database-url",
        "postgres://callsign:secret@db.example/callsign",
    ]);
    let (code, out, err) = run_env(&json_args, &env[..1]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("secret"), "the password leaked:\n{out}");
    assert!(err.contains("visible to every local user"), "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let s = &v["settings"];
    assert_eq!(s["listen"]["source"], "flag");
    assert_eq!(s["signing_alg"]["source"], "env");
    assert_eq!(s["signing_alg"]["via"], "CALLSIGN_SIGNING_ALG");
    assert_eq!(s["max_headers"]["value"], 100);
    assert_eq!(s["max_headers"]["source"], "file");
    assert_eq!(s["max_body_bytes"]["source"], "default");
    assert_eq!(s["database_url"]["source"], "flag");
    assert_eq!(v["oidc_issuers"], Value::Array(Vec::new()));
}

#[test]
fn config_summarizes_the_trusted_oidc_issuers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("callsign.toml");
    std::fs::write(
        &file,
        "[[oidc_issuer]]\nissuer = \"https://sso.example.com/realms/chat\"\naudience = \"callsign\"\n\n\
         [[oidc_issuer]]\nissuer = \"https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0\"\n\
         audience = [\"api://callsign\", \"callsign\"]\nprofile = \"entra\"\n",
    )
    .expect("write");
    let (code, out, err) = run_env(&["config", "--config", utf8(&file)], &[]);
    assert_eq!(code, 0, "{err}");
    let issuers: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("oidc_issuer = "))
        .collect();
    assert_eq!(issuers.len(), 2, "{out}");
    assert!(
        issuers[0].contains(
            "https://sso.example.com/realms/chat  audience callsign, profile generic  (file"
        ),
        "{out}"
    );
    assert!(
        issuers[1].contains("audience api://callsign, callsign, profile entra"),
        "{out}"
    );
}

/// Every `FAIL` line of a doctor's output.
fn failures(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("FAIL")).collect()
}

#[test]
fn doctor_passes_a_good_deployment_and_names_what_is_broken() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    // A deployment as a short first start leaves it: store, local CA, server certificate.
    let server = Server::start(&data, &[]);
    assert!(server.terminate().success());
    let d = utf8(&data);
    let (code, out, err) = run_env(&["doctor", "--data-dir", d, "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(failures(&out).is_empty(), "{out}");
    for check in [
        "data dir",
        "store",
        "schema",
        "clock",
        "local CA",
        "TLS certificate",
        "listen",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("ok    {check}: "))),
            "no ok {check}:\n{out}"
        );
    }

    // The listen address taken (a server running?) is worth a warning, not a failure.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, out, _) = run_env(&["doctor", "--data-dir", d, "--listen", &addr], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "warn  listen: {addr} is in use (a server running?)"
        )),
        "{out}"
    );
    drop(taken);

    // Group and others can get into the data dir.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (code, out, err) = run_env(&["doctor", "--data-dir", d, "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        failures(&out),
        [format!(
            "FAIL  data dir: {d} has mode 0755: group or others can reach the keys in it; run chmod 700 {d} (serve tightens it at start, with a warning)"
        )],
        "{out}"
    );
    assert!(err.contains("1 check(s) failed"), "{err}");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

#[test]
fn doctor_fails_on_an_unreachable_database() {
    let root = tempfile::tempdir().expect("temp dir");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("postgres://callsign:secret@127.0.0.1:{port}/callsign");
    // With PostgreSQL and no local CA the data dir only receives the endpoint file.
    let data = root.path().join("data");
    let args = [
        "doctor",
        "--data-dir",
        utf8(&data),
        "--plain-http",
        "--listen",
        "127.0.0.1:0",
        "--db-connect-timeout-ms",
        "2000",
    ];
    let (code, out, err) = run_env(&args, &[("CALLSIGN_DATABASE_URL", &url)]);
    assert_eq!(code, 1, "{out}{err}");
    let failed = failures(&out);
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0].starts_with(&format!(
            "FAIL  store: storage unavailable: cannot connect to PostgreSQL at 127.0.0.1:{port}"
        )),
        "{out}"
    );
    assert!(!out.contains("secret") && !err.contains("secret"));
}

#[test]
fn doctor_checks_a_postgresql_deployment() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let root = tempfile::tempdir().expect("temp dir");
    let (ok, _, err) = run(&["migrate", "--database-url", &url]);
    assert!(ok, "{err}");
    // With PostgreSQL and no local CA the data dir only receives the endpoint file.
    let data = root.path().join("data");
    let args = [
        "doctor",
        "--data-dir",
        utf8(&data),
        "--plain-http",
        "--listen",
        "127.0.0.1:0",
    ];
    let (code, out, err) = run_env(&args, &[("CALLSIGN_DATABASE_URL", &url)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok    store: PostgreSQL at "), "{out}");
    assert!(out.contains("ok    schema: version "), "{out}");
    assert!(out.contains("store TLS: "), "{out}");
    assert!(out.contains("clock (database): "), "{out}");
}

/// A certificate and key (PEM) valid from `not_before` to `not_after`, written to `dir`.
fn certificate(
    dir: &Path,
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (utf8(&cert_path).to_owned(), utf8(&key_path).to_owned())
}

#[test]
fn doctor_fails_on_an_expired_certificate_and_warns_before_expiry() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let (ok, _, err) = run(&["migrate", "--data-dir", utf8(&data)]);
    assert!(ok, "{err}");
    let (cert, key) = certificate(root.path(), (2020, 1, 1), (2021, 1, 1));
    let args = |cert: &str, key: &str| {
        let d = utf8(&data).to_owned();
        let listen = "127.0.0.1:0".to_owned();
        run_env(
            &[
                "doctor",
                "--data-dir",
                &d,
                "--listen",
                &listen,
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ],
            &[],
        )
    };
    let (code, out, _) = args(&cert, &key);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        failures(&out),
        [format!(
            "FAIL  TLS certificate: {cert} expired on 2021-01-01: replace it"
        )],
        "{out}"
    );

    // Ten days left: a warning.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let (cert, key) = certificate(
        root.path(),
        (2020, 1, 1),
        (soon.year(), soon.month() as u8, soon.day()),
    );
    let (code, out, _) = args(&cert, &key);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("warn  TLS certificate: {cert} expires on ")),
        "{out}"
    );

    // A key that is not the certificate's: serve refuses the pair, so doctor fails it.
    let other = root.path().join("other");
    std::fs::create_dir(&other).expect("dir");
    let (_, other_key) = certificate(&other, (2020, 1, 1), (2099, 1, 1));
    let (code, out, _) = args(&cert, &other_key);
    assert_eq!(code, 1, "{out}");
    let failed = failures(&out);
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0].starts_with("FAIL  TLS certificate and key: serve refuses them"),
        "{out}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_definition() {
    let (ok, out, err) = run(&["completions", "bash"]);
    assert!(ok, "{err}");
    assert!(out.contains("callsign") && out.contains("doctor") && out.contains("--data-dir"));
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let (ok, out, err) = run(&["completions", shell]);
        assert!(ok && out.contains("callsign"), "{shell}: {err}");
    }
    let (ok, _, err) = run(&["completions", "tcsh"]);
    assert!(!ok && err.contains("bash"), "{err}");

    let (ok, page, err) = run(&["man"]);
    assert!(ok, "{err}");
    assert!(page.starts_with('.'), "not roff: {page}");
    assert!(
        page.lines().any(|l| l.starts_with(".TH callsign 1")),
        "{page}"
    );
    assert!(page.contains("doctor"), "{page}");

    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().join("man1");
    let (ok, listed, err) = run(&["man", "--out-dir", utf8(&out_dir)]);
    assert!(ok, "{err}");
    for name in [
        "callsign.1",
        "callsign-serve.1",
        "callsign-doctor.1",
        "callsign-resource-create.1",
    ] {
        let path = out_dir.join(name);
        assert!(listed.contains(utf8(&path)), "{name} not listed: {listed}");
        let mode = std::fs::metadata(&path).expect(name).permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{name}");
    }
    let serve = std::fs::read_to_string(out_dir.join("callsign-serve.1")).expect("read");
    assert!(serve.contains("max\\-connections"), "{serve}");
}

#[test]
fn seed_writes_no_progress_escape_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    // stdout and stderr are pipes here: no bar, whatever the command's length.
    let (code, out, err) = run_env(
        &[
            "seed",
            "--count",
            "3000",
            "--batch",
            "100",
            "--data-dir",
            utf8(dir.path()),
            "--json",
        ],
        &[("TERM", "xterm-256color")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains('\u{1b}') && !out.contains('\u{1b}'),
        "escape codes: {err:?}"
    );
    let report: Value = serde_json::from_str(&out).expect("only JSON on stdout");
    assert_eq!(report["inserted"], 3000);
}
