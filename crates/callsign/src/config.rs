//! Command-line flags, environment variables and the optional TOML file, resolved into settings.
//!
//! Precedence, highest first: flag, `CALLSIGN_*` environment variable, TOML file
//! (`--config` / `CALLSIGN_CONFIG`), built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use callsign_core::token::Algorithm;
use callsign_server::{Settings, TlsMode};
use callsign_store::{Database, KeyProtection, MasterKey, PostgresOptions, Sealer, StoreLocation};
use serde::Deserialize;

/// `--signing-alg` / `signing_alg`: the algorithm new tokens are signed with. Names in any case
/// (`ES256` too), as JOSE spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256: small tokens, fast to sign.
    #[serde(alias = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(alias = "EdDSA", alias = "EDDSA")]
    Eddsa,
    /// RSA 2048 with SHA-256, as ACS signs its tokens; for verifiers that know nothing else.
    #[serde(alias = "RS256")]
    Rs256,
}

impl From<SigningAlg> for Algorithm {
    fn from(alg: SigningAlg) -> Algorithm {
        match alg {
            SigningAlg::Es256 => Algorithm::Es256,
            SigningAlg::Eddsa => Algorithm::EdDsa,
            SigningAlg::Rs256 => Algorithm::Rs256,
        }
    }
}

/// Self-hosted identity and access-token service, wire-compatible with Azure Communication
/// Services Identity.
#[derive(Debug, clap::Parser)]
#[command(name = "callsign", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print the connection string of a resource (one line; the default resource unless
    /// --resource).
    ConnectionString(ConnectionStringArgs),
    /// Print the local CA certificate (PEM), for REQUESTS_CA_BUNDLE / NODE_EXTRA_CA_CERTS /
    /// SSL_CERT_FILE. Creates the CA (and the data dir, private) if there is none yet.
    CaCert(CaCertArgs),
    /// Apply pending schema migrations without serving.
    Migrate(MigrateArgs),
    /// Seal the access keys and signing keys in the store under a master key (created at
    /// --master-key-file, mode 0600, if it does not exist). Lossless and idempotent.
    Seal(MigrateArgs),
    /// Re-seal every key under a new master key (created if missing); the old one is needed
    /// once, for this command.
    RotateMasterKey(RotateMasterKeyArgs),
    /// Create, list, show and delete resources (tenants with their own keys and identities),
    /// on the store; running servers pick changes up within a second.
    #[command(subcommand)]
    Resource(crate::resource_cmd::ResourceCommand),
    /// Regenerate a resource's access keys, or make its verify-only key, on the store.
    #[command(subcommand)]
    Keys(crate::resource_cmd::KeysCommand),
    /// Create, show and delete identities on a running server.
    #[command(subcommand)]
    User(crate::client_cmd::UserCommand),
    /// Issue and revoke access tokens on a running server.
    #[command(subcommand)]
    Token(crate::client_cmd::TokenCommand),
    /// Create, show, list and delete the access assignments that let a trusted identity
    /// provider's users, groups or tenants exchange their tokens (api-version
    /// 2025-03-02-preview), on a running server.
    #[command(subcommand)]
    Assignment(crate::access_cmd::AssignmentCommand),
    /// Exchange a user's token from a trusted identity provider for their communication identity
    /// and token, on a running server (pass the token with --token-file or
    /// CALLSIGN_EXCHANGE_TOKEN rather than --token).
    Exchange(crate::access_cmd::ExchangeArgs),
    /// Copy a deployment (resource, keys, identities, deletions) from one store to another, e.g.
    /// from the embedded store to PostgreSQL. Repeatable; refuses a target changed since the
    /// last copy unless --force.
    MigrateStore(MigrateStoreArgs),
    /// Drive a running server with signed requests and report throughput, latency and, with
    /// --server-pid, its CPU time per operation.
    Bench(callsign_bench::BenchArgs),
    /// Bulk-insert identities straight into a store (for scale benchmarks).
    Seed(callsign_bench::SeedArgs),
    /// Print the audit log of a store (table, or JSON lines with --json); works while servers
    /// run.
    Audit(crate::audit_cmd::AuditArgs),
    /// Rotate and list the token signing keys of a store (safe while servers run on it).
    #[command(subcommand)]
    SigningKey(crate::signing_key_cmd::SigningKeyCommand),
    /// Print the configuration `serve` would run with (same flags), each value with where it
    /// came from: flag, environment, config file or default. Secrets are masked.
    Config(Box<crate::config_cmd::ConfigArgs>),
    /// Check a deployment (same flags as serve): data dir permissions, the store, clock,
    /// open-file limit, TLS certificate, master key, listen address. Exits 1 on a problem.
    Doctor(Box<ServeArgs>),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(crate::cli_docs::CompletionsArgs),
    /// Print the man page (roff), or write one per command with --out-dir.
    Man(crate::cli_docs::ManArgs),
}

/// Store selection shared by several commands.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Use PostgreSQL at this URL instead of the embedded store.
    #[arg(long, env = "CALLSIGN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Most PostgreSQL connections per node [default: 16].
    #[arg(long, env = "CALLSIGN_DB_POOL_SIZE")]
    pub db_pool_size: Option<usize>,
    /// PostgreSQL connect timeout in milliseconds [default: 5000].
    #[arg(long, env = "CALLSIGN_DB_CONNECT_TIMEOUT_MS")]
    pub db_connect_timeout_ms: Option<u64>,
    /// PostgreSQL statement timeout in milliseconds [default: 5000].
    #[arg(long, env = "CALLSIGN_DB_STATEMENT_TIMEOUT_MS")]
    pub db_statement_timeout_ms: Option<u64>,
    /// Master key (32 random bytes, base64, mode 0600) sealing the access keys and signing keys
    /// in the store; see `callsign seal`.
    #[arg(long, env = "CALLSIGN_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub common: DataDirArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

#[derive(Debug, clap::Args)]
pub struct RotateMasterKeyArgs {
    #[command(flatten)]
    pub store: MigrateArgs,
    /// The new master key file (created, mode 0600, if it does not exist).
    #[arg(long)]
    pub new_master_key_file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct MigrateStoreArgs {
    /// Source: a data dir or a postgres:// URL.
    #[arg(long)]
    pub from: String,
    /// Target: a data dir or a postgres:// URL.
    #[arg(long)]
    pub to: String,
    /// Identities per batch.
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
    /// Copy even if the target has diverged from the source (identities created or deleted on
    /// it since the last copy): those created there are kept, those deleted there stay deleted.
    #[arg(long)]
    pub force: bool,
    /// The master key of a sealed source; the target's keys are sealed under it too.
    #[arg(long, env = "CALLSIGN_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CaCertArgs {
    #[command(flatten)]
    pub common: DataDirArgs,
    /// Print the public dev CA of `serve --dev` (the same on every machine; no data dir).
    #[arg(long)]
    pub dev: bool,
    /// Extra names the CA may certify when it is created here (as `serve --tls-name`; the CA
    /// is name-constrained to them and the defaults localhost, 127.0.0.1, ::1).
    #[arg(long = "tls-name", env = "CALLSIGN_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DataDirArgs {
    /// Data directory [default: ./callsign-data].
    #[arg(long, env = "CALLSIGN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "CALLSIGN_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: DataDirArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Address to listen on [default: 127.0.0.1:8443].
    #[arg(long, env = "CALLSIGN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics: plain HTTP, no authentication, so a
    /// private address only [default: off].
    #[arg(long, env = "CALLSIGN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve this certificate chain (PEM) instead of one from the local CA.
    #[arg(long, env = "CALLSIGN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "CALLSIGN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra DNS name or IP address for the local CA's server certificate (repeatable).
    #[arg(long = "tls-name", env = "CALLSIGN_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,
    /// Speak plain HTTP (only behind a TLS-terminating proxy: the Python SDK always uses HTTPS).
    #[arg(long, env = "CALLSIGN_PLAIN_HTTP", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub plain_http: bool,
    /// Algorithm for new tokens [default: es256].
    #[arg(long, env = "CALLSIGN_SIGNING_ALG", value_enum, ignore_case = true)]
    pub signing_alg: Option<SigningAlg>,
    /// The resourceLocation claim [default: local].
    #[arg(long, env = "CALLSIGN_LOCATION")]
    pub location: Option<String>,
    /// The iss claim of every resource's tokens [default: urn:callsign:<resourceId>, each
    /// token's own resource].
    #[arg(long, env = "CALLSIGN_ISSUER")]
    pub issuer: Option<String>,
    /// A host[:port] clients may sign besides the one they connect to, e.g. a proxy's public
    /// name (repeatable).
    #[arg(
        long = "public-host",
        env = "CALLSIGN_PUBLIC_HOSTS",
        value_delimiter = ','
    )]
    pub public_hosts: Vec<String>,
    /// Largest accepted request body in bytes [default: 65536].
    #[arg(long, env = "CALLSIGN_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "CALLSIGN_LOG_JSON")]
    pub log_json: bool,
    /// How long audit records are kept before they are pruned (90d, 12h, …; 0 or off: for
    /// ever) [default: 90d].
    #[arg(long, env = "CALLSIGN_AUDIT_RETENTION")]
    pub audit_retention: Option<String>,
    /// Record every issued token in the audit log (durably, before the token is returned;
    /// costs a write per token, see BENCHMARKS.md).
    #[arg(long, env = "CALLSIGN_AUDIT_TOKEN_ISSUE")]
    pub audit_token_issue: bool,
    /// Do not serve the admin console at /console/ (served by default).
    #[arg(long, env = "CALLSIGN_NO_CONSOLE")]
    pub no_console: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Scheduled signing-key rotation: a new key once the active one has signed this long, e.g.
    /// 30d or 12h (at least 1h), or off [default: off].
    #[arg(long, env = "CALLSIGN_SIGNING_KEY_ROTATION")]
    pub signing_key_rotation: Option<String>,
    /// Seconds between reloads of the signing keys, 1 to 60 [default: 30].
    #[arg(long, env = "CALLSIGN_KEY_REFRESH_SECS")]
    pub key_refresh_secs: Option<u64>,
    /// Trust this OpenID Connect issuer (its exact iss; https, or http to a loopback address):
    /// its users may exchange their tokens, its tokens with the role callsign.admin or
    /// callsign.tokens may manage identities. More options and issuers: [[oidc_issuer]] tables
    /// in the config file.
    #[arg(long, env = "CALLSIGN_OIDC_ISSUER", requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,
    /// The aud the --oidc-issuer's tokens carry for callsign.
    #[arg(long, env = "CALLSIGN_OIDC_AUDIENCE", requires = "oidc_issuer")]
    pub oidc_audience: Option<String>,
    /// Developer mode: an ephemeral store (in a temporary directory, removed at exit), the
    /// well-known dev resource and access key, and the public dev CA. It protects nothing.
    #[arg(
        long,
        conflicts_with_all = ["data_dir", "database_url", "master_key_file", "tls_names", "tls_cert", "tls_key"]
    )]
    pub dev: bool,
    /// With --dev: identities to create at start, one JSON object per line ({"customId": "…"}).
    #[arg(long, requires = "dev")]
    pub seed: Option<PathBuf>,
    /// With --dev: listen on a non-loopback address too (anyone who can reach it holds the
    /// well-known key).
    #[arg(long, requires = "dev")]
    pub dev_allow_remote: bool,
}

/// Limits against hostile traffic; every one also a `CALLSIGN_*` variable and a TOML key.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitArgs {
    /// Throttling per resource and operation class: off, acs (the published ACS limits) or a
    /// TOML file of rates [default: off].
    #[arg(long, env = "CALLSIGN_THROTTLE")]
    pub throttle: Option<String>,
    /// Failed authentications one client address (IPv6: its /64) may make per minute before
    /// it gets 429; 0 turns the limit off [default: 60].
    #[arg(long, env = "CALLSIGN_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<u32>,
    /// Most open connections [default: 10000, or the open-file limit less 128 if lower].
    #[arg(long, env = "CALLSIGN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open connections from one client address (IPv6: one /64) [default: 256].
    #[arg(long, env = "CALLSIGN_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// Largest request head (request line and headers) in bytes [default: 32768].
    #[arg(long, env = "CALLSIGN_MAX_HEAD_BYTES")]
    pub max_head_bytes: Option<usize>,
    /// Most header fields in one request [default: 64].
    #[arg(long, env = "CALLSIGN_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Seconds a connection may sit with no request and no bytes moving [default: 60].
    #[arg(long, env = "CALLSIGN_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds to receive an HTTP/1 request head [default: 30].
    #[arg(long, env = "CALLSIGN_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds to receive a whole request body [default: 30].
    #[arg(long, env = "CALLSIGN_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: Option<u64>,
    /// Seconds a request in flight may go without bytes moving (handler, response write)
    /// [default: 60].
    #[arg(long, env = "CALLSIGN_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Seconds to complete the TLS handshake [default: 10].
    #[arg(long, env = "CALLSIGN_TLS_HANDSHAKE_TIMEOUT_SECS")]
    pub tls_handshake_timeout_secs: Option<u64>,
    /// HTTP/2 streams one connection may have open at once [default: 100].
    #[arg(long, env = "CALLSIGN_H2_MAX_STREAMS")]
    pub h2_max_streams: Option<u32>,
    /// Revocation-feed long-polls and streams that may wait on this node at once [default: 1000].
    #[arg(long, env = "CALLSIGN_MAX_FEED_WAITING")]
    pub max_feed_waiting: Option<usize>,
    /// Of them, from one client address (IPv6: one /64) [default: 64].
    #[arg(long, env = "CALLSIGN_MAX_FEED_WAITING_PER_ADDRESS")]
    pub max_feed_waiting_per_address: Option<usize>,
    /// Of them, for one resource [default: 250].
    #[arg(long, env = "CALLSIGN_MAX_FEED_WAITING_PER_RESOURCE")]
    pub max_feed_waiting_per_resource: Option<usize>,
}

impl LimitArgs {
    /// Flag or environment first, then the file.
    fn or(self, file: LimitArgs) -> LimitArgs {
        LimitArgs {
            throttle: self.throttle.or(file.throttle),
            auth_failures_per_minute: self
                .auth_failures_per_minute
                .or(file.auth_failures_per_minute),
            max_connections: self.max_connections.or(file.max_connections),
            max_connections_per_address: self
                .max_connections_per_address
                .or(file.max_connections_per_address),
            max_head_bytes: self.max_head_bytes.or(file.max_head_bytes),
            max_headers: self.max_headers.or(file.max_headers),
            idle_timeout_secs: self.idle_timeout_secs.or(file.idle_timeout_secs),
            header_timeout_secs: self.header_timeout_secs.or(file.header_timeout_secs),
            body_timeout_secs: self.body_timeout_secs.or(file.body_timeout_secs),
            request_timeout_secs: self.request_timeout_secs.or(file.request_timeout_secs),
            tls_handshake_timeout_secs: self
                .tls_handshake_timeout_secs
                .or(file.tls_handshake_timeout_secs),
            h2_max_streams: self.h2_max_streams.or(file.h2_max_streams),
            max_feed_waiting: self.max_feed_waiting.or(file.max_feed_waiting),
            max_feed_waiting_per_address: self
                .max_feed_waiting_per_address
                .or(file.max_feed_waiting_per_address),
            max_feed_waiting_per_resource: self
                .max_feed_waiting_per_resource
                .or(file.max_feed_waiting_per_resource),
        }
    }

    fn apply(self, settings: &mut Settings) -> anyhow::Result<()> {
        self.apply_deadlines(&mut settings.limits)?;
        let l = &mut settings.limits;
        if let Some(n) = self.max_head_bytes {
            if !(4096..=1024 * 1024).contains(&n) {
                bail!("--max-head-bytes must be between 4096 and 1048576");
            }
            l.max_head_bytes = n;
        }
        if let Some(n) = self.max_headers {
            if !(16..=1000).contains(&n) {
                bail!("--max-headers must be between 16 and 1000");
            }
            l.max_headers = n;
        }
        if let Some(n) = at_least_one(self.h2_max_streams, "h2-max-streams")? {
            l.h2_max_concurrent_streams = n;
        }
        if let Some(n) = at_least_one(self.max_connections, "max-connections")? {
            l.max_connections = Some(n);
        }
        let per_address = self.max_connections_per_address;
        if let Some(n) = at_least_one(per_address, "max-connections-per-address")? {
            l.max_connections_per_address = n;
        }
        let feed = &mut settings.revocation_feed;
        if let Some(n) = at_least_one(self.max_feed_waiting, "max-feed-waiting")? {
            feed.max_waiting = n;
        }
        let per_address = self.max_feed_waiting_per_address;
        if let Some(n) = at_least_one(per_address, "max-feed-waiting-per-address")? {
            feed.max_waiting_per_address = n;
        }
        let per_resource = self.max_feed_waiting_per_resource;
        if let Some(n) = at_least_one(per_resource, "max-feed-waiting-per-resource")? {
            feed.max_waiting_per_resource = n;
        }
        if let Some(spec) = self.throttle {
            settings.throttle = callsign_server::ThrottleConfig::parse(&spec)?;
        }
        if let Some(n) = self.auth_failures_per_minute {
            settings.auth_failures_per_minute = n;
        }
        Ok(())
    }

    /// The connection and request deadlines, in whole seconds, each at least 1.
    fn apply_deadlines(&self, l: &mut callsign_server::ConnectionLimits) -> anyhow::Result<()> {
        use std::time::Duration;
        let secs = |v: Option<u64>, name: &str, default: Duration| -> anyhow::Result<Duration> {
            Ok(at_least_one(v, name)?.map_or(default, Duration::from_secs))
        };
        l.idle_timeout = secs(self.idle_timeout_secs, "idle-timeout-secs", l.idle_timeout)?;
        l.header_timeout = secs(
            self.header_timeout_secs,
            "header-timeout-secs",
            l.header_timeout,
        )?;
        l.body_timeout = secs(self.body_timeout_secs, "body-timeout-secs", l.body_timeout)?;
        l.request_timeout = secs(
            self.request_timeout_secs,
            "request-timeout-secs",
            l.request_timeout,
        )?;
        l.tls_handshake_timeout = secs(
            self.tls_handshake_timeout_secs,
            "tls-handshake-timeout-secs",
            l.tls_handshake_timeout,
        )?;
        Ok(())
    }
}

/// `value` unless it is 0, which `--name` refuses.
fn at_least_one<T: PartialEq + From<u8>>(
    value: Option<T>,
    name: &str,
) -> anyhow::Result<Option<T>> {
    match value {
        Some(n) if n == T::from(0) => bail!("--{name} must be at least 1"),
        value => Ok(value),
    }
}

#[derive(Debug, clap::Args)]
pub struct ConnectionStringArgs {
    #[command(flatten)]
    pub common: DataDirArgs,
    /// Print the well-known connection string of `serve --dev` (with --endpoint, or the dev
    /// default https://127.0.0.1:8443/); no data dir or store is read.
    #[arg(long)]
    pub dev: bool,
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Endpoint URL to put in the string [default: from --listen and TLS settings].
    #[arg(long, env = "CALLSIGN_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Use the secondary access key.
    #[arg(long)]
    pub secondary: bool,
    /// The resource (id or name) [default: the default resource].
    #[arg(long)]
    pub resource: Option<String>,
}

/// The TOML file: every key optional, names as the long flags with `_`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub db_pool_size: Option<usize>,
    pub db_connect_timeout_ms: Option<u64>,
    pub db_statement_timeout_ms: Option<u64>,
    pub master_key_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_names: Vec<String>,
    #[serde(default)]
    pub plain_http: bool,
    pub signing_alg: Option<SigningAlg>,
    pub location: Option<String>,
    pub issuer: Option<String>,
    #[serde(default)]
    pub public_hosts: Vec<String>,
    pub max_body_bytes: Option<usize>,
    #[serde(default)]
    pub log_json: bool,
    pub endpoint: Option<String>,
    pub audit_retention: Option<String>,
    #[serde(default)]
    pub audit_token_issue: bool,
    #[serde(default)]
    pub no_console: bool,
    #[serde(flatten)]
    pub limits: LimitArgs,
    pub signing_key_rotation: Option<String>,
    pub key_refresh_secs: Option<u64>,
    /// Trusted OpenID Connect issuers (`[[oidc_issuer]]` tables).
    #[serde(default)]
    pub oidc_issuer: Vec<callsign_server::oidc::TrustedIssuerConfig>,
}

/// The trusted issuers: the file's tables, then the one of `--oidc-issuer`; each issuer once.
fn oidc_issuers(
    file: Vec<callsign_server::oidc::TrustedIssuerConfig>,
    issuer: Option<String>,
    audience: Option<String>,
) -> anyhow::Result<Vec<callsign_server::oidc::TrustedIssuer>> {
    use callsign_server::oidc::{Audience, TrustedIssuer, TrustedIssuerConfig};
    let mut configs = file;
    if let (Some(issuer), Some(audience)) = (issuer, audience) {
        configs.push(TrustedIssuerConfig {
            issuer,
            audience: Audience::One(audience),
            ..TrustedIssuerConfig::default()
        });
    }
    let mut seen = std::collections::HashSet::new();
    configs
        .into_iter()
        .map(|c| {
            if !seen.insert(c.issuer.clone()) {
                bail!("the OIDC issuer {} is configured twice", c.issuer);
            }
            let name = c.issuer.clone();
            TrustedIssuer::from_config(c).with_context(|| format!("OIDC issuer {name}"))
        })
        .collect()
}

fn load_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    // The parser's own message quotes the offending line, which may hold a database password:
    // say where and what, never the line.
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let what = e.message().lines().next().unwrap_or("invalid").to_owned();
        match line {
            Some(l) => {
                anyhow::anyhow!("invalid config file {} at line {l}: {what}", path.display())
            }
            None => anyhow::anyhow!("invalid config file {}: {what}", path.display()),
        }
    })?;
    if file
        .database_url
        .as_deref()
        .is_some_and(|u| callsign_store::mask_database_url(u) != u)
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "the config file {} holds a database password and others can read it (mode {:04o}); run chmod 600 on it",
                path.display(),
                mode & 0o7777
            );
        }
    }
    Ok(file)
}

const DEFAULT_DATA_DIR: &str = "./callsign-data";

/// The data dir: flag or environment, then the file, then the default.
fn data_dir(args: &DataDirArgs, file: &FileConfig) -> PathBuf {
    args.data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}
const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// Most `--public-host` values.
const MAX_PUBLIC_HOSTS: usize = 8;

/// Resolved `serve` settings.
pub struct ResolvedServe {
    pub settings: Settings,
    pub log_json: bool,
    /// Where each setting came from (`callsign config`).
    pub sources: crate::sources::Sources,
}

/// What a resolution is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `serve`: creates the master key of a new sealed store, and reads it.
    Serve,
    /// `config` and `doctor`: only look; the master key file is recorded in the sources, never
    /// created or read (its keys stay plain in the settings).
    Inspect,
}

pub fn resolve_serve(args: ServeArgs) -> anyhow::Result<ResolvedServe> {
    resolve_serve_as(args, Purpose::Serve)
}

/// Resolves `serve`'s settings for `purpose`: the values are the same either way.
pub fn resolve_serve_as(mut args: ServeArgs, purpose: Purpose) -> anyhow::Result<ResolvedServe> {
    let mut file = load_file(args.common.config.as_deref())?;
    let sources = crate::sources::record(&args, &file);
    let data_dir = data_dir(&args.common, &file);
    let mut settings = Settings::new(data_dir.clone());
    match purpose {
        Purpose::Serve => create_key_of_new_store(&args.db, &file, &data_dir)?,
        Purpose::Inspect => (args.db.master_key_file, file.master_key_file) = (None, None),
    }
    let location = resolve_store(&args.db, &file, data_dir)?;
    settings.keys = location.keys.clone();
    if let StoreLocation::Postgres(url) = location.location {
        settings.database = Database::Postgres {
            url,
            options: location.options,
        };
    }
    settings.listen = match args.listen.or(file.listen) {
        Some(l) => l,
        None => DEFAULT_LISTEN.parse()?,
    };
    settings.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    let names = if args.tls_names.is_empty() {
        file.tls_names
    } else {
        args.tls_names
    };
    settings.tls = tls_mode(
        args.plain_http || file.plain_http,
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
        names,
    )?;
    if let Some(alg) = args.signing_alg.or(file.signing_alg) {
        settings.signing_alg = alg.into();
    }
    if let Some(location) = args.location.or(file.location) {
        settings.location = location;
    }
    settings.issuer = args.issuer.or(file.issuer);
    settings.public_hosts = if args.public_hosts.is_empty() {
        file.public_hosts
    } else {
        args.public_hosts
    };
    if settings.public_hosts.len() > MAX_PUBLIC_HOSTS {
        // Each is a signature candidate tried for every unauthenticated request.
        bail!("at most {MAX_PUBLIC_HOSTS} --public-host values");
    }
    args.limits.or(file.limits).apply(&mut settings)?;
    settings.audit_token_issue = args.audit_token_issue || file.audit_token_issue;
    settings.console = !(args.no_console || file.no_console);
    if let Some(r) = args.audit_retention.or(file.audit_retention) {
        settings.audit_retention = crate::audit_cmd::parse_retention(&r)?;
    }
    crate::signing_key_cmd::apply_serve_options(
        &mut settings,
        args.signing_key_rotation
            .or(file.signing_key_rotation)
            .as_deref(),
        args.key_refresh_secs.or(file.key_refresh_secs),
    )?;
    settings.ephemeral = args.dev;
    settings.oidc_issuers = oidc_issuers(file.oidc_issuer, args.oidc_issuer, args.oidc_audience)?;
    if let Some(n) = args.max_body_bytes.or(file.max_body_bytes) {
        if n < 1024 {
            bail!("--max-body-bytes must be at least 1024");
        }
        settings.max_body_bytes = n;
    }
    Ok(ResolvedServe {
        settings,
        log_json: args.log_json || file.log_json,
        sources,
    })
}

/// A new embedded deployment sealed from its first start: `serve --master-key-file F` makes F.
fn create_key_of_new_store(
    db: &DatabaseArgs,
    file: &FileConfig,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let Some(key_file) = db.master_key_file.clone().or(file.master_key_file.clone()) else {
        return Ok(());
    };
    let new_store = db.database_url.is_none()
        && file.database_url.is_none()
        && !callsign_store::database_path(data_dir).exists();
    if new_store && !key_file.exists() {
        let key = MasterKey::generate_file(&key_file)?;
        eprintln!(
            "callsign: created the master key {} (id {}); keep a copy apart from the store's backups",
            key_file.display(),
            key.id()
        );
    }
    Ok(())
}

/// Where the server's certificate comes from: none (`plain`), the files given, or the local CA
/// (with `names` besides the default ones).
fn tls_mode(
    plain: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    names: Vec<String>,
) -> anyhow::Result<TlsMode> {
    Ok(match (plain, cert, key) {
        (true, None, None) => TlsMode::Plain,
        (true, _, _) => bail!("--plain-http cannot be combined with --tls-cert/--tls-key"),
        (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
        (false, None, None) => TlsMode::LocalCa { extra_names: names },
        _ => bail!("--tls-cert and --tls-key go together"),
    })
}

/// A store and its PostgreSQL options.
pub struct ResolvedStore {
    pub location: StoreLocation,
    pub options: PostgresOptions,
    pub keys: KeyProtection,
}

impl ResolvedStore {
    /// Opens the store with its key protection.
    pub async fn open(&self) -> anyhow::Result<std::sync::Arc<dyn callsign_store::Store>> {
        let store: std::sync::Arc<dyn callsign_store::Store> =
            self.location.open(&self.options, self.keys.clone()).await?;
        Ok(store)
    }
}

/// The key protection a master key file gives (plain without one).
pub fn key_protection(master_key_file: Option<&Path>) -> anyhow::Result<KeyProtection> {
    match master_key_file {
        None => Ok(KeyProtection::plain()),
        Some(path) => Ok(KeyProtection::sealed(Sealer::new(MasterKey::read_file(
            path,
        )?))),
    }
}

fn resolve_store(
    db: &DatabaseArgs,
    file: &FileConfig,
    data_dir: PathBuf,
) -> anyhow::Result<ResolvedStore> {
    let mut options = PostgresOptions::default();
    if let Some(n) = db.db_pool_size.or(file.db_pool_size) {
        if n == 0 {
            bail!("--db-pool-size must be at least 1");
        }
        options.pool_size = n;
    }
    if let Some(ms) = db.db_connect_timeout_ms.or(file.db_connect_timeout_ms) {
        options.connect_timeout = std::time::Duration::from_millis(ms.max(1));
        options.wait_timeout = options.connect_timeout;
    }
    if let Some(ms) = db.db_statement_timeout_ms.or(file.db_statement_timeout_ms) {
        options.statement_timeout = std::time::Duration::from_millis(ms.max(1));
    }
    let location = match db.database_url.clone().or(file.database_url.clone()) {
        Some(url) => match StoreLocation::parse(&url).context("--database-url")? {
            StoreLocation::Postgres(url) => StoreLocation::Postgres(url),
            StoreLocation::DataDir(_) => bail!("--database-url must be a postgres:// URL"),
        },
        None => StoreLocation::DataDir(data_dir),
    };
    let master_key_file = db.master_key_file.clone().or(file.master_key_file.clone());
    let keys = key_protection(master_key_file.as_deref())?;
    Ok(ResolvedStore {
        location,
        options,
        keys,
    })
}

pub fn resolve_migrate(args: MigrateArgs) -> anyhow::Result<ResolvedStore> {
    let file = load_file(args.common.config.as_deref())?;
    resolve_store(&args.db, &file, data_dir(&args.common, &file))
}

/// The file in which `serve` records the endpoint it listens on.
pub fn endpoint_file(data_dir: &Path) -> PathBuf {
    data_dir.join("endpoint")
}

fn last_endpoint(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(endpoint_file(data_dir)).ok()?;
    let e = text.trim();
    (e.starts_with("https://") || e.starts_with("http://")).then(|| e.to_owned())
}

pub fn resolve_data_dir(args: DataDirArgs) -> anyhow::Result<PathBuf> {
    let file = load_file(args.config.as_deref())?;
    Ok(data_dir(&args, &file))
}

pub struct ResolvedConnectionString {
    pub store: ResolvedStore,
    pub endpoint: String,
    /// Whether `--endpoint` (or `CALLSIGN_ENDPOINT`) named it, rather than the server's address.
    pub explicit_endpoint: bool,
    pub secondary: bool,
    pub resource: Option<String>,
}

pub fn resolve_connection_string(
    args: ConnectionStringArgs,
) -> anyhow::Result<ResolvedConnectionString> {
    let explicit_endpoint = args.endpoint.is_some();
    let (store, endpoint) = resolve_store_command(&args.common, &args.db, args.endpoint)?;
    Ok(ResolvedConnectionString {
        store,
        endpoint,
        explicit_endpoint,
        secondary: args.secondary,
        resource: args.resource,
    })
}

/// The store a store-side command works on, and the endpoint its connection strings name:
/// `--endpoint` (or the file's), else the one the last `serve` on the data dir announced, else
/// the configured listen address.
pub fn resolve_store_command(
    common: &DataDirArgs,
    db: &DatabaseArgs,
    endpoint: Option<String>,
) -> anyhow::Result<(ResolvedStore, String)> {
    let file = load_file(common.config.as_deref())?;
    let data_dir = data_dir(common, &file);
    let endpoint = match endpoint.or(file.endpoint.clone()) {
        Some(e) => {
            let lower = e.to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                bail!("--endpoint must be an http:// or https:// URL");
            }
            if e.ends_with('/') { e } else { format!("{e}/") }
        }
        None => {
            // The endpoint the last `serve` on this data dir announced, else the configured one.
            match last_endpoint(&data_dir) {
                Some(e) => e,
                None => {
                    let listen: SocketAddr = match std::env::var("CALLSIGN_LISTEN").ok() {
                        Some(l) => l.parse().context("CALLSIGN_LISTEN is not an address")?,
                        None => file.listen.unwrap_or(DEFAULT_LISTEN.parse()?),
                    };
                    let plain = file.plain_http
                        || std::env::var("CALLSIGN_PLAIN_HTTP")
                            .is_ok_and(|v| v == "true" || v == "1");
                    callsign_client::api::connection_string::endpoint_for(listen, !plain)
                }
            }
        }
    };
    Ok((resolve_store(db, &file, data_dir)?, endpoint))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser as _;

    /// `callsign serve ARGV…` parsed (shared with the other modules' tests).
    pub(crate) fn serve_args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["callsign", "serve"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).expect("parses").command {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("callsign.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nlocation = \"westeurope\"\nsigning_alg = \"eddsa\"\ntls_names = [\"a.example\"]\n",
        )
        .expect("write");
        let cfg = file.to_str().expect("utf-8");
        let r = resolve_serve(serve_args(&["--config", cfg, "--listen", "127.0.0.1:9001"]))
            .expect("resolves");
        assert_eq!(r.settings.listen.port(), 9001);
        assert_eq!(r.settings.location, "westeurope");
        assert_eq!(r.settings.signing_alg, Algorithm::EdDsa);
        assert_eq!(
            r.settings.tls,
            TlsMode::LocalCa {
                extra_names: vec!["a.example".into()]
            }
        );
        let d = resolve_serve(serve_args(&[])).expect("resolves");
        assert_eq!(
            d.settings.listen,
            DEFAULT_LISTEN.parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(d.settings.signing_alg, Algorithm::Es256);
        let upper = resolve_serve(serve_args(&["--signing-alg", "RS256"])).expect("resolves");
        assert_eq!(upper.settings.signing_alg, Algorithm::Rs256);
    }

    #[test]
    fn metrics_listen_comes_from_the_flag_or_the_file_and_is_off_by_default() {
        let d = resolve_serve(serve_args(&[])).expect("resolves");
        assert_eq!(d.settings.metrics_listen, None);
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("callsign.toml");
        std::fs::write(&file, "metrics_listen = \"127.0.0.1:9100\"\n").expect("write");
        let cfg = file.to_str().expect("utf-8");
        let from_file = resolve_serve(serve_args(&["--config", cfg])).expect("resolves");
        let want: SocketAddr = "127.0.0.1:9100".parse().expect("addr");
        assert_eq!(from_file.settings.metrics_listen, Some(want));
        let args = ["--config", cfg, "--metrics-listen", "[::1]:9101"];
        let flag = resolve_serve(serve_args(&args)).expect("resolves");
        let want: SocketAddr = "[::1]:9101".parse().expect("addr");
        assert_eq!(flag.settings.metrics_listen, Some(want));
        assert!(Cli::try_parse_from(["callsign", "serve", "--metrics-listen", "9100"]).is_err());
    }

    #[test]
    fn audit_retention_comes_from_the_flag_or_the_file_and_defaults_to_90_days() {
        use std::time::Duration;
        let d = resolve_serve(serve_args(&[])).expect("resolves");
        assert_eq!(
            d.settings.audit_retention,
            Some(Duration::from_secs(90 * 86_400))
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("callsign.toml");
        std::fs::write(&file, "audit_retention = \"30d\"\n").expect("write");
        let cfg = file.to_str().expect("utf-8");
        let f = resolve_serve(serve_args(&["--config", cfg])).expect("resolves");
        assert_eq!(
            f.settings.audit_retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        let off = resolve_serve(serve_args(&["--config", cfg, "--audit-retention", "off"]))
            .expect("resolves");
        assert_eq!(off.settings.audit_retention, None);
        assert!(resolve_serve(serve_args(&["--audit-retention", "soon"])).is_err());
    }

    #[test]
    fn an_unknown_signing_algorithm_is_refused_naming_the_choices() {
        let err = Cli::try_parse_from(["callsign", "serve", "--signing-alg", "hs256"])
            .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("es256") && text.contains("eddsa"), "{text}");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("callsign.toml");
        std::fs::write(&file, "signing_alg = \"hs256\"\n").expect("write");
        let cfg = file.to_str().expect("utf-8");
        assert!(resolve_serve(serve_args(&["--config", cfg])).is_err());
    }

    #[test]
    fn bad_configuration_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "lisen = \"x\"\n").expect("write");
        let cfg = file.to_str().expect("utf-8");
        let err = resolve_serve(serve_args(&["--config", cfg]))
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        assert!(
            Cli::try_parse_from([
                "callsign",
                "serve",
                "--plain-http",
                "--tls-cert",
                "a",
                "--tls-key",
                "b"
            ])
            .is_err()
        );
    }
}
