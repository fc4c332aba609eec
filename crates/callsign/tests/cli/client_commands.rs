//! `callsign user …` / `callsign token …` against a live server, as a script would use them.

use std::process::Command;

use serde_json::Value;

use crate::{BIN, Server};

/// The CLI with a server's connection string and CA in its environment.
pub(crate) struct Cli {
    pub(crate) cs: String,
    pub(crate) ca: String,
}

impl Cli {
    pub(crate) fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("COMMUNICATION_SERVICES_CONNECTION_STRING", &self.cs)
            .env("SSL_CERT_FILE", &self.ca)
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[track_caller]
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.run(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
    }
}

#[test]
fn identities_and_tokens_can_be_managed_from_a_shell() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[]);
    let cs = server.connection_string();
    let cli = Cli {
        cs,
        ca: dir.path().join("tls/ca.pem").to_string_lossy().into_owned(),
    };

    let created = cli.json(&["user", "create"]);
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("8:acs:"));

    let with_custom = cli.json(&["user", "create", "--custom-id", "carol@example.com"]);
    let again = cli.json(&["user", "create", "--custom-id", "carol@example.com"]);
    assert_eq!(with_custom["id"], again["id"]);

    let both = cli.json(&[
        "user",
        "create",
        "--with-token",
        "--scope",
        "chat,voip",
        "--expires-in",
        "1h",
    ]);
    assert!(
        both["accessToken"]["token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );

    let token = cli.json(&[
        "token",
        "issue",
        &id,
        "--scope",
        "voip.join",
        "--expires-in",
        "90m",
    ]);
    let expires = time::OffsetDateTime::parse(
        token["expiresOn"].as_str().expect("expiresOn"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    let lifetime = expires - time::OffsetDateTime::now_utc();
    assert!(
        lifetime > time::Duration::minutes(88) && lifetime <= time::Duration::minutes(90),
        "{lifetime}"
    );

    let got = cli.json(&["user", "get", &id]);
    assert_eq!(got["id"], id.as_str());
    assert!(got["lastTokenIssuedAt"].as_str().is_some());

    assert_eq!(cli.json(&["token", "revoke", &id])["revoked"], true);
    assert_eq!(cli.json(&["user", "delete", &id])["deleted"], true);

    // Another api-version on request; the default stays 2023-10-01.
    let newest = cli.json(&[
        "user",
        "create",
        "--api-version",
        "2026-09-23",
        "--with-token",
        "--scope",
        "chat.join",
    ]);
    let newest_id = newest["id"].as_str().expect("id").to_owned();
    let token = cli.json(&[
        "token",
        "issue",
        &newest_id,
        "--scope",
        "voip",
        "--api-version",
        "2025-06-30",
    ]);
    assert!(token["token"].as_str().is_some());
    let (code, _, err) = cli.run(&["user", "create", "--api-version", "2019-01-01"]);
    assert_ne!(code, 0);
    assert!(err.contains("2023-10-01"), "lists what is supported: {err}");

    // Human output by default.
    let (code, out, _) = cli.run(&["user", "create"]);
    assert_eq!(code, 0);
    assert!(out.trim().starts_with("8:acs:"));

    // Failures: one line on stderr, non-zero exit.
    for (args, needle) in [
        (vec!["user", "delete", id.as_str()], "IdentityNotFound"),
        (
            vec!["token", "issue", id.as_str(), "--scope", "pstn"],
            "unknown scope",
        ),
        (
            vec![
                "token",
                "issue",
                id.as_str(),
                "--scope",
                "chat",
                "--expires-in",
                "5m",
            ],
            "ValidationError",
        ),
        (vec!["user", "get", "not-an-id"], "ValidationError"),
    ] {
        let (code, out, err) = cli.run(&args);
        assert_ne!(code, 0, "{args:?} succeeded: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    let bad = Cli {
        cs: "nonsense".into(),
        ca: cli.ca.clone(),
    };
    let (code, _, err) = bad.run(&["user", "create"]);
    assert_ne!(code, 0);
    assert!(err.contains("connection string"), "{err}");
    let unreachable = Cli {
        cs: "endpoint=https://127.0.0.1:9/;accesskey=cHc=".into(),
        ca: cli.ca.clone(),
    };
    let (code, _, err) = unreachable.run(&["user", "create"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The transport error once, not once per layer of the HTTP stack.
    assert_eq!(err.matches("error sending request").count(), 1, "{err}");

    // A server whose certificate the client does not trust: say what to do about it.
    let out = std::process::Command::new(crate::BIN)
        .args(["user", "create"])
        .env("COMMUNICATION_SERVICES_CONNECTION_STRING", &cli.cs)
        .env_remove("SSL_CERT_FILE")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("not trusted") && err.contains("callsign ca-cert"),
        "{err}"
    );
    assert!(server.terminate().success());
}

#[test]
fn user_list_prints_every_page_as_one_json_array() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[]);
    let cli = Cli {
        cs: server.connection_string(),
        ca: dir.path().join("tls/ca.pem").to_string_lossy().into_owned(),
    };
    // More than one page of the default size (100), created through the client library.
    let client = callsign_client::CommunicationIdentityClient::builder(
        callsign_client::ConnectionString::parse(&cli.cs).expect("connection string"),
    )
    .add_trusted_ca_pem(std::fs::read(&cli.ca).expect("CA"))
    .build()
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut created: Vec<String> = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..120 {
            let client = client.clone();
            tasks.spawn(async move {
                let user = if i < 3 {
                    client.create_user_with_custom_id(&format!("ops/{i}")).await
                } else {
                    client.create_user().await
                };
                user.expect("create").raw_id().to_owned()
            });
        }
        tasks.join_all().await
    });
    // Its idle connections would hold up the server's graceful shutdown.
    drop(client);
    drop(rt);
    created.sort();
    let token = cli.json(&["token", "issue", &created[0], "--scope", "chat"]);
    assert!(token["token"].is_string());

    let listed = cli.json(&["user", "list"]);
    let listed = listed.as_array().expect("an array");
    let ids: Vec<&str> = listed
        .iter()
        .map(|u| u["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, created.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(listed[0]["lastTokenIssuedAt"].is_string(), "{}", listed[0]);
    assert!(listed.iter().all(|u| u.get("customId").is_some()));

    let ops = cli.json(&["user", "list", "--custom-id-prefix", "ops/"]);
    let mut customs: Vec<&str> = ops
        .as_array()
        .expect("an array")
        .iter()
        .map(|u| u["customId"].as_str().expect("customId"))
        .collect();
    customs.sort_unstable();
    assert_eq!(customs, ["ops/0", "ops/1", "ops/2"]);
    let none = cli.json(&["user", "list", "--custom-id-prefix", "nobody/"]);
    assert_eq!(none, serde_json::json!([]));

    // Human output: a line per identity.
    let (code, out, err) = cli.run(&["user", "list", "--custom-id-prefix", "ops/0"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("\tops/0\t"), "{out}");
    // A version without custom ids has no listing: refused before any request.
    let (code, _, err) = cli.run(&["user", "list", "--api-version", "2023-10-01"]);
    assert_ne!(code, 0);
    assert!(err.contains("user list"), "{err}");
    assert!(server.terminate().success());
}
