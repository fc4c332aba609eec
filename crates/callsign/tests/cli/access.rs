//! `callsign assignment …` and `callsign exchange`: workforce access from a shell.
//!
//! What the commands check before any request runs without a server; what they do against the
//! server is `#[ignore]`d until the server has the `/access/entra` endpoints.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::client_commands::Cli;
use crate::{BIN, Server};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// A distinctive token, to look for where it must not be.
const SECRET_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzZWNyZXQiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ";
/// Nothing listens there.
const NOWHERE: &str = "http://127.0.0.1:9/";

/// Runs the CLI with no connection string, token or CA in its environment, `stdin` on its
/// standard input.
fn run_bare(args: &[&str], stdin: &str) -> (i32, String, String) {
    run_with(args, &[], stdin)
}

/// [`run_bare`], with `env` set.
fn run_with(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("COMMUNICATION_SERVICES_CONNECTION_STRING")
        .env_remove("CALLSIGN_EXCHANGE_TOKEN")
        .env_remove("SSL_CERT_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    // The command may exit before reading its input.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_one_error_line(code: i32, err: &str, needle: &str) {
    assert_ne!(code, 0, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "wanted {needle:?}: {err}"
    );
}

#[test]
fn exchange_needs_a_token_and_keeps_it_out_of_its_output() {
    let (code, _, err) = run_bare(&["exchange", "--endpoint", NOWHERE], "");
    assert_one_error_line(code, &err, "--token-file");

    let (code, _, err) = run_bare(
        &["exchange", "--endpoint", NOWHERE, "--token-file", "-"],
        " \n",
    );
    assert_one_error_line(code, &err, "empty");

    let (code, _, err) = run_bare(
        &[
            "exchange",
            "--endpoint",
            NOWHERE,
            "--token-file",
            "/nonexistent/token",
        ],
        "",
    );
    assert_one_error_line(code, &err, "cannot read the token file");

    let (code, _, err) = run_bare(
        &[
            "exchange",
            "--endpoint",
            NOWHERE,
            "--token",
            "a",
            "--token-file",
            "-",
        ],
        "",
    );
    assert_eq!(code, 2, "flags that exclude each other: {err}");

    // On the command line it works, with a warning; the token itself is never printed (here
    // the server is unreachable).
    let (code, _, err) = run_bare(
        &[
            "exchange",
            "--endpoint",
            NOWHERE,
            "--token",
            SECRET_TOKEN,
            "--json",
        ],
        "",
    );
    assert_ne!(code, 0);
    assert!(
        err.starts_with("warning: a token on the command line"),
        "{err}"
    );
    assert!(
        err.contains("--token-file"),
        "says what to use instead: {err}"
    );
    assert!(!err.contains(SECRET_TOKEN), "{err}");
    let (code, _, err) = run_bare(
        &["exchange", "--endpoint", NOWHERE, "--token-file", "-"],
        SECRET_TOKEN,
    );
    assert_ne!(code, 0);
    assert!(!err.contains("warning"), "{err}");
    assert!(!err.contains(SECRET_TOKEN), "{err}");
}

#[test]
fn assignment_commands_check_their_arguments_before_any_request() {
    let (code, _, err) = run_bare(
        &[
            "assignment",
            "put",
            "auth0|abc",
            "--tenant",
            TENANT,
            "--type",
            "User",
        ],
        "",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("teamsResourceAccount"),
        "lists the types: {err}"
    );

    let (code, _, err) = run_bare(
        &[
            "assignment",
            "get",
            "auth0|abc",
            "--api-version",
            "2023-10-01",
        ],
        "",
    );
    assert_one_error_line(code, &err, "2025-03-02-preview");

    let (code, _, err) = run_bare(&["assignment", "list"], "");
    assert_one_error_line(code, &err, "connection string");

    let cs = format!("endpoint={NOWHERE};accesskey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let cases: [(&[&str], &str); 3] = [
        (&["assignment", "delete", ".."], ".."),
        (&["assignment", "get", "."], "."),
        (
            &[
                "assignment",
                "put",
                "",
                "--tenant",
                TENANT,
                "--type",
                "user",
            ],
            "",
        ),
    ];
    for (args, object) in cases {
        let (code, _, err) = run_with(
            args,
            &[("COMMUNICATION_SERVICES_CONNECTION_STRING", &cs)],
            "",
        );
        assert_one_error_line(
            code,
            &err,
            &format!("invalid argument: the object id {object:?} cannot be a path segment"),
        );
    }
}

fn cli_for(server: &Server, dir: &std::path::Path) -> Cli {
    Cli {
        cs: server.connection_string(),
        ca: dir.join("tls/ca.pem").to_string_lossy().into_owned(),
    }
}

#[test]
fn assignments_can_be_managed_from_a_shell() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[]);
    let cli = cli_for(&server, dir.path());

    let put = cli.json(&[
        "assignment",
        "put",
        "auth0|abc",
        "--tenant",
        TENANT,
        "--type",
        "user",
    ]);
    assert_eq!(put["created"], true, "{put}");
    assert_eq!(put["objectId"], "auth0|abc");
    assert_eq!(put["tenantId"], TENANT);
    assert_eq!(put["principalType"], "user");
    assert!(put["scopes"].is_null(), "{put}");

    // Again, with scopes (repeated and comma-separated): replaced.
    let (code, out, err) = cli.run(&[
        "assignment",
        "put",
        "auth0|abc",
        "--tenant",
        TENANT,
        "--type",
        "group",
        "--scope",
        "chat",
        "--scope",
        "voip,chat.join",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().next(), Some("replaced auth0|abc"), "{out}");
    assert!(out.contains("type: group"), "{out}");
    assert!(out.contains("scopes: chat, voip, chat.join"), "{out}");

    let got = cli.json(&["assignment", "get", "auth0|abc"]);
    assert_eq!(got["principalType"], "group");
    assert_eq!(
        got["scopes"],
        serde_json::json!(["chat", "voip", "chat.join"])
    );

    let deleted = cli.json(&["assignment", "delete", "auth0|abc"]);
    assert_eq!(deleted["deleted"], true);
    for args in [
        ["assignment", "get", "auth0|abc"],
        ["assignment", "delete", "auth0|abc"],
    ] {
        let (code, _, err) = cli.run(&args);
        assert_one_error_line(code, &err, "AssignmentNotFound");
        assert!(err.contains("HTTP 404"), "{err}");
    }
    let (code, _, err) = cli.run(&[
        "assignment",
        "put",
        "auth0|f",
        "--tenant",
        "not-a-guid",
        "--type",
        "user",
    ]);
    assert_one_error_line(code, &err, "ValidationError");
    assert!(server.terminate().success());
}

#[test]
fn assignment_list_prints_every_page() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[]);
    let cli = cli_for(&server, dir.path());
    assert_eq!(cli.json(&["assignment", "list"]), serde_json::json!([]));
    let put = cli.json(&[
        "assignment",
        "put",
        "auth0|abc",
        "--tenant",
        TENANT,
        "--type",
        "group",
        "--scope",
        "chat,voip,chat.join",
    ]);
    assert_eq!(put["created"], true, "{put}");

    // 5 assignments, 2 a page: every page is listed, in object id order.
    for object in ["auth0|b", "auth0|c", "auth0|d", "auth0|e"] {
        let (code, out, err) = cli.run(&[
            "assignment",
            "put",
            object,
            "--tenant",
            TENANT,
            "--type",
            "user",
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out.lines().next(),
            Some(format!("created {object}").as_str())
        );
    }
    let listed = cli.json(&["assignment", "list", "--page-size", "2"]);
    let objects: Vec<&str> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|a| a["objectId"].as_str().expect("objectId"))
        .collect();
    assert_eq!(
        objects,
        ["auth0|abc", "auth0|b", "auth0|c", "auth0|d", "auth0|e"]
    );
    let (code, out, err) = cli.run(&["assignment", "list", "--page-size", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    assert_eq!(
        out.lines().next(),
        Some(format!("auth0|abc\t{TENANT}\tgroup\tchat,voip,chat.join").as_str())
    );
    assert!(server.terminate().success());
}

#[test]
fn exchange_reads_the_token_from_standard_input_or_a_file_and_reports_a_refusal() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[]);
    let ca = dir.path().join("tls/ca.pem");
    let ca = ca.to_str().expect("utf-8");
    // No trusted issuer is configured: any token is refused, with the service's error.
    let (code, out, err) = run_bare(
        &[
            "exchange",
            "--endpoint",
            &server.endpoint,
            "--ca-cert",
            ca,
            "--token-file",
            "-",
        ],
        SECRET_TOKEN,
    );
    assert_one_error_line(code, &err, "HTTP 401");
    assert!(out.is_empty(), "{out}");
    assert!(!err.contains(SECRET_TOKEN), "{err}");

    let file = dir.path().join("token");
    std::fs::write(&file, format!("{SECRET_TOKEN}\n")).expect("write");
    let (code, _, err) = run_bare(
        &[
            "exchange",
            "--endpoint",
            &server.endpoint,
            "--ca-cert",
            ca,
            "--token-file",
            file.to_str().expect("utf-8"),
        ],
        "",
    );
    assert_one_error_line(code, &err, "HTTP 401");
    assert!(!err.contains(SECRET_TOKEN), "{err}");
    assert!(server.terminate().success());
}
