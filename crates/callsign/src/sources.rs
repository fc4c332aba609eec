//! Where each `serve` setting came from, recorded by the resolution
//! ([`crate::config::resolve_serve`]) for `callsign config`.
//!
//! The resolution sees a flag and its `CALLSIGN_*` variable as one value (clap merges them), so
//! it records [`Layer::Arguments`]; `callsign config` tells the two apart with clap's
//! `ArgMatches::value_source`. Keys are the TOML keys, which are also the flags' argument ids.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{FileConfig, ServeArgs};

/// The layer a value came from (precedence: arguments, file, default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// A flag or its environment variable.
    Arguments,
    /// The TOML file.
    File,
    /// Neither: the built-in default.
    Default,
}

/// Where each setting came from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The config file read (`--config` / `CALLSIGN_CONFIG`), if any.
    pub file: Option<PathBuf>,
    /// The master key file named by a flag, the environment or the file (an inspecting
    /// resolution neither creates nor reads it).
    pub master_key_file: Option<PathBuf>,
    /// How many trusted OIDC issuers come from `[[oidc_issuer]]` tables (listed first; the one
    /// of `--oidc-issuer`, if any, follows).
    pub oidc_issuers_in_file: usize,
    layers: BTreeMap<&'static str, Layer>,
}

impl Sources {
    /// The layer `key` came from ([`Layer::Default`] for a key never recorded).
    pub fn layer(&self, key: &str) -> Layer {
        self.layers.get(key).copied().unwrap_or(Layer::Default)
    }

    /// Every key recorded.
    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.layers.keys().copied()
    }

    fn put(&mut self, key: &'static str, in_arguments: bool, in_file: bool) {
        let layer = if in_arguments {
            Layer::Arguments
        } else if in_file {
            Layer::File
        } else {
            Layer::Default
        };
        self.layers.insert(key, layer);
    }
}

/// `sources.put("key", args.key.is_some(), file.key.is_some())` for each optional key.
macro_rules! optional {
    ($sources:ident, $args:expr, $file:expr, $($key:ident),+ $(,)?) => {
        $( $sources.put(stringify!($key), $args.$key.is_some(), $file.$key.is_some()); )+
    };
}

/// Records, for every key `serve` takes, which layer its value comes from.
pub(crate) fn record(args: &ServeArgs, file: &FileConfig) -> Sources {
    let mut s = Sources {
        file: args.common.config.clone(),
        master_key_file: args
            .db
            .master_key_file
            .clone()
            .or(file.master_key_file.clone()),
        oidc_issuers_in_file: file.oidc_issuer.len(),
        layers: BTreeMap::new(),
    };
    s.put("config", args.common.config.is_some(), false);
    optional!(s, args.common, file, data_dir);
    optional!(
        s,
        args.db,
        file,
        database_url,
        db_pool_size,
        db_connect_timeout_ms,
        db_statement_timeout_ms,
        master_key_file,
    );
    optional!(
        s,
        args,
        file,
        listen,
        tls_cert,
        tls_key,
        signing_alg,
        location,
        issuer,
        max_body_bytes,
        audit_retention,
        signing_key_rotation,
        key_refresh_secs,
        metrics_listen,
    );
    s.put("plain_http", args.plain_http, file.plain_http);
    s.put("log_json", args.log_json, file.log_json);
    s.put("no_console", args.no_console, file.no_console);
    s.put(
        "audit_token_issue",
        args.audit_token_issue,
        file.audit_token_issue,
    );
    s.put(
        "tls_names",
        !args.tls_names.is_empty(),
        !file.tls_names.is_empty(),
    );
    let public_hosts = (!args.public_hosts.is_empty(), !file.public_hosts.is_empty());
    s.put("public_hosts", public_hosts.0, public_hosts.1);
    s.put(
        "oidc_issuer",
        args.oidc_issuer.is_some(),
        !file.oidc_issuer.is_empty(),
    );
    s.put("oidc_audience", args.oidc_audience.is_some(), false);
    // Dev mode is chosen on the command line only.
    s.put("dev", args.dev, false);
    s.put("seed", args.seed.is_some(), false);
    s.put("dev_allow_remote", args.dev_allow_remote, false);
    record_limits(&mut s, args, file);
    s
}

/// The limits' sources (`LimitArgs`, flattened into the flags and the file).
fn record_limits(s: &mut Sources, args: &ServeArgs, file: &FileConfig) {
    optional!(
        s,
        args.limits,
        file.limits,
        throttle,
        auth_failures_per_minute,
        max_connections,
        max_connections_per_address,
        max_head_bytes,
        max_headers,
        idle_timeout_secs,
        header_timeout_secs,
        body_timeout_secs,
        request_timeout_secs,
        tls_handshake_timeout_secs,
        h2_max_streams,
        max_feed_waiting,
        max_feed_waiting_per_address,
        max_feed_waiting_per_resource,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use crate::config::tests::serve_args;
    use clap::CommandFactory as _;

    /// A flag added to `serve` must be shown by `callsign config` too.
    #[test]
    fn every_serve_flag_has_a_recorded_source() {
        let sources = record(&serve_args(&[]), &FileConfig::default());
        let recorded: Vec<&str> = sources.keys().collect();
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            assert!(
                recorded.contains(&id),
                "serve's --{id} is not recorded in sources.rs: add it there and to config_cmd.rs"
            );
        }
    }

    #[test]
    fn arguments_beat_the_file_and_the_file_beats_the_default() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\nlocation = \"westeurope\"\n")
                .expect("toml");
        let s = record(&serve_args(&["--listen", "127.0.0.1:9001"]), &file);
        assert_eq!(s.layer("listen"), Layer::Arguments);
        assert_eq!(s.layer("location"), Layer::File);
        assert_eq!(s.layer("signing_alg"), Layer::Default);
        assert_eq!(s.layer("no_such_key"), Layer::Default);
    }
}
