//! Everything `callsign serve` can be told, with its defaults.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use callsign_core::token::Algorithm;
use callsign_store::{Database, KeyProtection};

use crate::connection::ConnectionLimits;
use crate::throttle::ThrottleConfig;
use crate::tls::TlsMode;

/// How long audit records are kept by default: 90 days.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Everything `callsign serve` can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address of the metrics listener (`GET /metrics`, plain HTTP, no authentication: keep it
    /// off the public network); `None`, the default, serves and records no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Whether the admin console is served at `/console/` (on by default; it also turns on the
    /// recording of metrics, which its rates page reads).
    pub console: bool,
    /// Where the embedded database and TLS material live.
    pub data_dir: PathBuf,
    /// The store.
    pub database: Database,
    /// TLS source.
    pub tls: TlsMode,
    /// Algorithm of new tokens.
    pub signing_alg: Algorithm,
    /// The `resourceLocation` claim.
    pub location: String,
    /// The `iss` claim of every resource's tokens; by default `urn:callsign:<resourceId>` of
    /// each token's own resource.
    pub issuer: Option<String>,
    /// Extra `host[:port]` values clients may sign (a proxy's public name).
    pub public_hosts: Vec<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Connection deadlines and caps.
    pub limits: ConnectionLimits,
    /// Whether access keys and signing keys are sealed under a master key.
    pub keys: KeyProtection,
    /// Throttling per resource and operation class (off by default).
    pub throttle: ThrottleConfig,
    /// Failed authentications one client address may make per minute before it gets 429
    /// (0: no limit).
    pub auth_failures_per_minute: u32,
    /// How often the store's configuration generation is read, so that resources and access
    /// keys created, deleted or replaced by any node or command take effect here.
    pub resource_poll: Duration,
    /// How long audit records are kept before every node prunes them (`None`: for ever).
    pub audit_retention: Option<Duration>,
    /// Whether every issued token is audited (`issueToken`, written durably before the token is
    /// returned); off by default: token issue is the hot path (BENCHMARKS.md has the cost).
    pub audit_token_issue: bool,
    /// How often the node reloads its signing keys (and retires, and rotates when scheduled).
    /// Keep it at most a minute: [`ACTIVATION_LEAD`](crate::ACTIVATION_LEAD) counts on it.
    pub key_refresh: Duration,
    /// Scheduled signing-key rotation: a new key once the active one has signed this long
    /// (`--signing-key-rotation`; off by default).
    pub signing_key_rotation: Option<Duration>,
    /// The revocation feed: retention, pruning, how many requests may wait on it.
    pub revocation_feed: crate::feed::FeedSettings,
    /// Trusted OpenID Connect issuers, whose users may exchange their tokens and whose
    /// role-bearing tokens may manage identities (none by default).
    pub oidc_issuers: Vec<crate::oidc::TrustedIssuer>,
    /// The default resource an empty store starts with (dev mode's well-known one); `None`: one
    /// with a random id and fresh keys.
    pub default_resource: Option<callsign_store::ResourceRecord>,
    /// The store is thrown away at exit (dev mode): no advice about sealing its keys.
    pub ephemeral: bool,
}

impl Settings {
    /// The defaults, with the data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8443)),
            metrics_listen: None,
            console: true,
            data_dir: data_dir.into(),
            database: Database::Embedded,
            tls: TlsMode::LocalCa {
                extra_names: Vec::new(),
            },
            signing_alg: Algorithm::Es256,
            location: "local".into(),
            issuer: None,
            public_hosts: Vec::new(),
            max_body_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            limits: ConnectionLimits::default(),
            keys: KeyProtection::plain(),
            throttle: ThrottleConfig::off(),
            auth_failures_per_minute: 60,
            resource_poll: Duration::from_secs(1),
            audit_retention: Some(DEFAULT_AUDIT_RETENTION),
            audit_token_issue: false,
            key_refresh: crate::keys::DEFAULT_KEY_REFRESH,
            signing_key_rotation: None,
            revocation_feed: crate::feed::FeedSettings::default(),
            oidc_issuers: Vec::new(),
            default_resource: None,
            ephemeral: false,
        }
    }
}
