//! A real OpenID Connect provider on loopback (`compat/oidc/provider.mjs`, node-oidc-provider
//! from npm), started per test: it mints user access tokens for any subject and claims, rotates
//! its keys and goes down and up on request.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// A running provider; dropping it stops it.
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    /// The issuer (`iss`), `http://127.0.0.1:<port>[/path]`.
    pub issuer: String,
    /// The JWKS URL.
    pub jwks_uri: String,
    /// The control URL.
    pub control: String,
    http: reqwest::Client,
}

/// The provider's script: `CALLSIGN_OIDC_PROVIDER`, else `compat/oidc/provider.mjs` of this
/// workspace.
fn script() -> PathBuf {
    std::env::var_os("CALLSIGN_OIDC_PROVIDER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../compat/oidc/provider.mjs")
        })
}

impl OidcProvider {
    /// Starts a provider with these extra arguments (`--algs`, `--issuer-path`, …). Fails the
    /// test, never skips it, when Node or the provider's packages are missing.
    pub async fn start(args: &[&str]) -> OidcProvider {
        let script = script();
        let modules = script.with_file_name("node_modules");
        assert!(
            modules.is_dir(),
            "{} is missing: run `bash compat/run.sh --install-only` (npm ci in compat/oidc)",
            modules.display()
        );
        let mut child = Command::new("node")
            .arg(&script)
            .args(["--watch-stdin", "--max-lifetime", "600"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts (Node 20 or later is needed)");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), line)
            .await
            .expect("the provider is ready within 60 s")
            .expect("reader")
            .expect("the ready line");
        let ready: Value = serde_json::from_str(&line).expect("the ready line is JSON");
        let text = |k: &str| ready[k].as_str().expect("ready field").to_owned();
        OidcProvider {
            issuer: text("issuer"),
            jwks_uri: text("jwks_uri"),
            control: text("control"),
            http: reqwest::Client::new(),
            child,
        }
    }

    /// A control call; its JSON answer (a refusal fails the test).
    pub async fn control(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.control))
            .json(&body)
            .send()
            .await
            .expect("control reachable");
        let status = resp.status();
        let answer: Value = resp.json().await.expect("control answers JSON");
        assert!(status.is_success(), "control {path}: {status} {answer}");
        answer
    }

    /// Mints a user access token (`POST /token`; see `compat/oidc/README.md` for the fields).
    pub async fn mint(&self, request: Value) -> String {
        self.control("/token", request).await["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// A token for `sub` with these extra claims, signed with `alg`.
    pub async fn token(&self, sub: &str, alg: &str, claims: Value) -> String {
        self.mint(json!({"sub": sub, "alg": alg, "claims": claims}))
            .await
    }

    /// How many JWKS fetches reached the provider since it started.
    pub async fn jwks_fetches(&self) -> u64 {
        let status: Value = self
            .http
            .get(format!("{}/status", self.control))
            .send()
            .await
            .expect("control reachable")
            .json()
            .await
            .expect("status JSON");
        status["requests"]["jwks"].as_u64().expect("jwks count")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
