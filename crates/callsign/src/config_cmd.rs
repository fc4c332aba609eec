//! `callsign config`: the configuration `serve` would run with, each value with its source.
//!
//! The values come from the very resolution `serve` uses
//! ([`resolve_serve_as`](crate::config::resolve_serve_as), inspecting: no master key is created
//! or read) and its record of layers ([`crate::sources`]); clap's `value_source` tells a flag
//! from its environment variable. Secrets are never printed: a database URL's password is
//! masked, the master key file is named but not read, access keys are not part of the
//! configuration at all.

use std::time::Duration;

use callsign_server::{Settings, TlsMode};
use callsign_store::Database;
use clap::CommandFactory as _;
use clap::parser::ValueSource;
use serde_json::{Value, json};

use crate::config::{Cli, Purpose, ServeArgs, resolve_serve_as};
use crate::sources::{Layer, Sources};

/// `callsign config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Print one JSON object: {"settings": {KEY: {"value", "source", "via"}}, "oidc_issuers":
    /// [...]}.
    #[arg(long)]
    pub json: bool,
}

/// Where one value came from, as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A flag (`--listen`).
    Flag(String),
    /// An environment variable (`CALLSIGN_LISTEN`).
    Env(String),
    /// The config file.
    File(String),
    /// The built-in default.
    Default,
}

impl Source {
    /// `flag`, `env`, `file` or `default`.
    fn kind(&self) -> &'static str {
        match self {
            Source::Flag(_) => "flag",
            Source::Env(_) => "env",
            Source::File(_) => "file",
            Source::Default => "default",
        }
    }

    /// The flag, variable or file, if any.
    fn via(&self) -> Option<&str> {
        match self {
            Source::Flag(v) | Source::Env(v) | Source::File(v) => Some(v),
            Source::Default => None,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.via() {
            Some(via) => write!(f, "{} {via}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// Tells where each key's value came from.
struct Origins<'a> {
    sources: &'a Sources,
    matches: Option<&'a clap::ArgMatches>,
    command: clap::Command,
}

impl Origins<'_> {
    fn of(&self, key: &str) -> Source {
        let arg = self.command.get_arguments().find(|a| a.get_id() == key);
        let flag = || {
            Source::Flag(
                arg.and_then(|a| a.get_long())
                    .map_or_else(|| "(flag or environment)".to_owned(), |l| format!("--{l}")),
            )
        };
        let env = || {
            let name = arg.and_then(|a| a.get_env()).map(|e| e.to_string_lossy());
            Source::Env(name.map_or_else(String::new, |n| n.into_owned()))
        };
        let given = self.matches.and_then(|m| m.value_source(key));
        match (self.sources.layer(key), given) {
            (Layer::File, _) => Source::File(
                self.sources
                    .file
                    .as_ref()
                    .map_or_else(String::new, |f| f.display().to_string()),
            ),
            (_, Some(ValueSource::CommandLine)) => flag(),
            (_, Some(ValueSource::EnvVariable)) => env(),
            (Layer::Arguments, _) => flag(),
            _ => Source::Default,
        }
    }
}

/// Runs `callsign config`; `matches` are the subcommand's, to tell flags from variables.
pub fn run(args: ConfigArgs, matches: Option<&clap::ArgMatches>) -> anyhow::Result<()> {
    let json = args.json;
    let resolved = resolve_serve_as(args.serve, Purpose::Inspect)?;
    let cli = Cli::command();
    let command = cli
        .find_subcommand("config")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("config"));
    let origins = Origins {
        sources: &resolved.sources,
        matches,
        command,
    };
    let mut settings = entries(&resolved.settings, &resolved.sources);
    let after_body = settings
        .iter()
        .position(|(key, _)| *key == "max_body_bytes")
        .map_or(settings.len(), |i| i + 1);
    settings.insert(after_body, ("log_json", json!(resolved.log_json)));
    let issuers = issuers(&resolved.settings, &resolved.sources, &origins);
    if json {
        let mut map = serde_json::Map::new();
        for (key, value) in settings {
            let source = origins.of(key);
            map.insert(
                key.to_owned(),
                json!({"value": value, "source": source.kind(), "via": source.via()}),
            );
        }
        out!(
            "{}",
            serde_json::to_string_pretty(&json!({"settings": map, "oidc_issuers": issuers}))?
        );
        return Ok(());
    }
    for (key, value) in settings {
        out!("{key} = {}  ({})", text(key, &value), origins.of(key));
    }
    if issuers.is_empty() {
        out!("oidc_issuer = none  ({})", origins.of("oidc_issuer"));
    }
    for i in &issuers {
        out!(
            "oidc_issuer = {}  audience {}, profile {}  ({}{})",
            i["issuer"].as_str().unwrap_or_default(),
            i["audience"].as_array().map_or_else(String::new, |a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")),
            i["profile"].as_str().unwrap_or_default(),
            i["source"].as_str().unwrap_or_default(),
            i["via"]
                .as_str()
                .map_or_else(String::new, |v| format!(" {v}")),
        );
    }
    Ok(())
}

/// A value as text: strings bare, lists joined, `null` as what its absence means.
fn text(key: &str, value: &Value) -> String {
    match value {
        Value::Null => match key {
            "config" => "none",
            "database_url" => "none (the embedded store in the data dir)",
            "master_key_file" => "none (keys not sealed)",
            "issuer" => "per resource (urn:callsign:<resourceId>)",
            "max_connections" => "auto (10000, or the open-file limit less 128 if lower)",
            "audit_retention" => "off (kept for ever)",
            "signing_key_rotation" => "off",
            _ => "none",
        }
        .to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Array(items) => items
            .iter()
            .map(|v| text(key, v))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn secs(d: Duration) -> Value {
    json!(d.as_secs())
}

/// A span as the flags take it: `90d`, `12h`, `30m` or `45s` (`null`: off).
fn human(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        let s = d.as_secs();
        json!(match s {
            0 => "0s".to_owned(),
            s if s % 86_400 == 0 => format!("{}d", s / 86_400),
            s if s % 3_600 == 0 => format!("{}h", s / 3_600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        })
    })
}

/// The settings, in the order printed (the OIDC issuers apart).
fn entries(s: &Settings, sources: &Sources) -> Vec<(&'static str, Value)> {
    let path =
        |p: Option<&std::path::PathBuf>| p.map_or(Value::Null, |p| json!(p.display().to_string()));
    let mut v = vec![
        ("config", path(sources.file.as_ref())),
        ("data_dir", json!(s.data_dir.display().to_string())),
    ];
    v.extend(store_entries(s));
    v.push(("master_key_file", path(sources.master_key_file.as_ref())));
    let (plain, cert, key, names) = match &s.tls {
        TlsMode::Plain => (true, None, None, Vec::new()),
        TlsMode::Files { cert, key } => (false, Some(cert), Some(key), Vec::new()),
        TlsMode::LocalCa { extra_names } => (false, None, None, extra_names.clone()),
    };
    v.extend([
        ("dev", json!(s.ephemeral)),
        ("listen", json!(s.listen.to_string())),
        (
            "metrics_listen",
            json!(s.metrics_listen.map(|a| a.to_string())),
        ),
        ("plain_http", json!(plain)),
        ("tls_cert", path(cert)),
        ("tls_key", path(key)),
        ("tls_names", json!(names)),
        ("signing_alg", json!(s.signing_alg.to_string())),
        ("issuer", json!(s.issuer)),
        ("location", json!(s.location)),
        ("public_hosts", json!(s.public_hosts)),
        ("max_body_bytes", json!(s.max_body_bytes)),
        ("audit_retention", human(s.audit_retention)),
        ("audit_token_issue", json!(s.audit_token_issue)),
        ("no_console", json!(!s.console)),
        ("signing_key_rotation", human(s.signing_key_rotation)),
        ("key_refresh_secs", secs(s.key_refresh)),
    ]);
    v.extend(limit_entries(s));
    v
}

/// The database URL (password masked) and the PostgreSQL options.
fn store_entries(s: &Settings) -> Vec<(&'static str, Value)> {
    match &s.database {
        Database::Embedded => {
            let unused = json!("unused (embedded store)");
            vec![
                ("database_url", Value::Null),
                ("db_pool_size", unused.clone()),
                ("db_connect_timeout_ms", unused.clone()),
                ("db_statement_timeout_ms", unused),
            ]
        }
        Database::Postgres { url, options } => vec![
            (
                "database_url",
                json!(callsign_store::mask_database_url(url)),
            ),
            ("db_pool_size", json!(options.pool_size)),
            (
                "db_connect_timeout_ms",
                json!(options.connect_timeout.as_millis() as u64),
            ),
            (
                "db_statement_timeout_ms",
                json!(options.statement_timeout.as_millis() as u64),
            ),
        ],
    }
}

/// Throttling and the limits against hostile traffic.
fn limit_entries(s: &Settings) -> Vec<(&'static str, Value)> {
    let l = &s.limits;
    let feed = &s.revocation_feed;
    vec![
        ("throttle", json!(s.throttle.describe())),
        (
            "auth_failures_per_minute",
            json!(s.auth_failures_per_minute),
        ),
        ("max_connections", json!(l.max_connections)),
        (
            "max_connections_per_address",
            json!(l.max_connections_per_address),
        ),
        ("max_head_bytes", json!(l.max_head_bytes)),
        ("max_headers", json!(l.max_headers)),
        ("idle_timeout_secs", secs(l.idle_timeout)),
        ("header_timeout_secs", secs(l.header_timeout)),
        ("body_timeout_secs", secs(l.body_timeout)),
        ("request_timeout_secs", secs(l.request_timeout)),
        ("tls_handshake_timeout_secs", secs(l.tls_handshake_timeout)),
        ("h2_max_streams", json!(l.h2_max_concurrent_streams)),
        ("max_feed_waiting", json!(feed.max_waiting)),
        (
            "max_feed_waiting_per_address",
            json!(feed.max_waiting_per_address),
        ),
        (
            "max_feed_waiting_per_resource",
            json!(feed.max_waiting_per_resource),
        ),
    ]
}

/// The trusted OIDC issuers, summarized: issuer, audiences, profile and source.
fn issuers(s: &Settings, sources: &Sources, origins: &Origins<'_>) -> Vec<Value> {
    s.oidc_issuers
        .iter()
        .enumerate()
        .map(|(i, issuer)| {
            let source = if i < sources.oidc_issuers_in_file {
                Source::File(
                    sources
                        .file
                        .as_ref()
                        .map_or_else(String::new, |f| f.display().to_string()),
                )
            } else {
                origins.of("oidc_issuer")
            };
            let profile = match issuer.profile {
                callsign_server::oidc::Profile::Generic => "generic",
                callsign_server::oidc::Profile::Entra => "entra",
            };
            json!({
                "issuer": issuer.issuer,
                "audience": issuer.audiences,
                "profile": profile,
                "source": source.kind(),
                "via": source.via(),
            })
        })
        .collect()
}
