//! Secrets never leave: the whole lifecycle at `RUST_LOG=trace` on both backends, then every
//! log line searched for every access key, signing key and token the server handled.

use std::process::Stdio;

use base64::Engine as _;
use callsign_testkit::{TestDatabase, access_key, connect_postgres};
use reqwest::Method;

use crate::{Server, client, run, runtime, signed};

/// The forms a secret could take in a log line.
fn forms(secret: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // Rust's Debug of a byte slice, on the bytes past a DER header that every key shares.
    let tail = &secret[secret.len().saturating_sub(24)..];
    let debug = format!("{tail:?}");
    let debug = debug
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    vec![b64.encode(secret), b64url.encode(secret), hex, debug]
}

/// Runs create, token, revoke, delete, introspection and a bad request against `server`,
/// returning every token issued.
async fn lifecycle(server: &Server, http: &reqwest::Client, key: &str) -> Vec<String> {
    let host = server.host();
    let call = |method: Method, target: String, body: &'static str| {
        let http = http.clone();
        let endpoint = server.endpoint.clone();
        let host = host.clone();
        let key = key.to_owned();
        async move {
            let r = signed(&http, &endpoint, &host, &key, method, &target, body)
                .await
                .expect("request");
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body)
        }
    };
    let mut tokens = Vec::new();
    let (status, body) = call(
        Method::POST,
        "/identities?api-version=2023-10-01".into(),
        r#"{"createTokenWithScopes":["chat","voip"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["identity"]["id"].as_str().expect("id").to_owned();
    tokens.push(
        body["accessToken"]["token"]
            .as_str()
            .expect("token")
            .to_owned(),
    );
    let enc = id.replace(':', "%3A");
    let (status, body) = call(
        Method::POST,
        format!("/identities/{enc}/:issueAccessToken?api-version=2023-10-01"),
        r#"{"scopes":["chat"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    tokens.push(body["token"].as_str().expect("token").to_owned());
    let (status, _) = call(
        Method::POST,
        format!("/identities/{enc}/:revokeAccessTokens?api-version=2023-10-01"),
        "",
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        Method::DELETE,
        format!("/identities/{enc}?api-version=2023-10-01"),
        "",
    )
    .await;
    assert_eq!(status, 204);
    // A bad signature, so the failure path logs too.
    let r = signed(
        http,
        &server.endpoint,
        &host,
        "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkgd3Jvbmc=",
        Method::POST,
        "/identities?api-version=2023-10-01",
        "",
    )
    .await
    .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    tokens
}

fn assert_log_clean(log: &str, secrets: &[(String, Vec<u8>)]) {
    assert!(log.lines().count() > 50, "a trace log was written: {log}");
    for (what, secret) in secrets {
        for form in forms(secret) {
            assert!(
                !log.contains(&form),
                "the log contains {what} (as {form:.20}…)"
            );
        }
    }
}

fn access_keys(data_dir: &std::path::Path, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
    let dir = data_dir.to_str().expect("utf-8");
    let mut out = Vec::new();
    for which in [&[][..], &["--secondary"][..]] {
        let mut args = vec!["connection-string", "--data-dir", dir];
        args.extend_from_slice(extra);
        args.extend_from_slice(which);
        let (ok, cs, err) = run(&args);
        assert!(ok, "{err}");
        let key = access_key(&cs);
        out.push(("an access key".to_owned(), key.clone().into_bytes()));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .expect("base64 key");
        out.push(("decoded access key bytes".to_owned(), raw));
    }
    out
}

#[test]
fn a_trace_log_of_the_embedded_lifecycle_holds_no_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let server = Server::start_logging(&data, &[], "trace", Stdio::from(log));
    let key = access_key(&server.connection_string());
    let rt = runtime();
    let tokens = rt.block_on(lifecycle(&server, &client(&data), &key));
    assert!(server.terminate().success());

    let mut secrets = access_keys(&data, &[]);
    for t in tokens {
        secrets.push(("a token".into(), t.into_bytes()));
    }
    let db = rusqlite::Connection::open(data.join("callsign.db")).expect("db");
    let mut stmt = db.prepare("SELECT pkcs8 FROM signing_keys").expect("query");
    let keys: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect();
    assert!(!keys.is_empty());
    for k in keys {
        secrets.push(("a signing key".into(), k));
    }
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert_log_clean(&log, &secrets);
}

#[test]
fn a_trace_log_of_the_postgres_lifecycle_holds_no_secret() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let server = Server::start_logging(&data, &["--database-url", &url], "trace", Stdio::from(log));
    let key = access_key(&server.connection_string());
    let tokens = rt.block_on(lifecycle(&server, &client(&data), &key));
    assert!(server.terminate().success());

    let mut secrets = access_keys(&data, &["--database-url", &url]);
    for t in tokens {
        secrets.push(("a token".into(), t.into_bytes()));
    }
    let keys: Vec<Vec<u8>> = rt.block_on(async {
        let c = connect_postgres(&url).await;
        c.query("SELECT pkcs8 FROM callsign_signing_keys", &[])
            .await
            .expect("keys")
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    assert!(!keys.is_empty());
    for k in keys {
        secrets.push(("a signing key".into(), k));
    }
    let log = std::fs::read_to_string(&log_path).expect("log");
    drop(db);
    assert_log_clean(&log, &secrets);
}
