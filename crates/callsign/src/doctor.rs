//! `callsign doctor`: checks a deployment as `serve` would run it, changing nothing.
//!
//! Each check prints one line, `ok`, `warn` or `FAIL`, with its reason; any `FAIL` makes the
//! command exit 1. The settings come from the resolution `serve` uses (inspecting: the master
//! key file is neither created nor read there, it is checked here). Nothing is created,
//! tightened or migrated: the embedded database is opened read-only, PostgreSQL is asked three
//! read-only questions, the listen address is bound and released at once.

use std::path::Path;
use std::time::Duration;

use callsign_server::{Settings, TlsMode};
use callsign_store::{Database, PostgresProbe, SchemaVersion};

use crate::config::{Purpose, ServeArgs, resolve_serve_as};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Broken: `serve` would fail, or run unsafely.
    Fail,
}

/// The findings so far, each printed as it is made.
#[derive(Debug, Default)]
pub struct Report {
    failures: usize,
    warnings: usize,
}

impl Report {
    /// Prints one finding: `ok    check: reason`.
    pub fn say(&mut self, status: Status, check: &str, reason: impl std::fmt::Display) {
        let word = match status {
            Status::Ok => "ok",
            Status::Warn => {
                self.warnings += 1;
                "warn"
            }
            Status::Fail => {
                self.failures += 1;
                "FAIL"
            }
        };
        out!("{word:<5} {check}: {reason}");
    }

    /// An error when anything failed (the exit code is then 1).
    fn finish(self) -> anyhow::Result<()> {
        if self.failures > 0 {
            anyhow::bail!(
                "{} check(s) failed, {} warning(s)",
                self.failures,
                self.warnings
            );
        }
        Ok(())
    }
}

/// The earliest time this binary can have been built: the system clock reading earlier is wrong.
const BUILT_NOT_BEFORE: time::OffsetDateTime = time::macros::datetime!(2026-12-01 0:00 UTC);

/// Runs every check; an error (exit code 1) when one failed.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.dev {
        anyhow::bail!(
            "serve --dev keeps nothing to check (a temporary store, the public dev CA); doctor checks a deployment"
        );
    }
    let mut report = Report::default();
    let resolved = match resolve_serve_as(args, Purpose::Inspect) {
        Ok(resolved) => resolved,
        Err(e) => {
            report.say(Status::Fail, "configuration", format!("{e:#}"));
            return report.finish();
        }
    };
    let s = &resolved.settings;
    report.say(
        Status::Ok,
        "configuration",
        "resolves as serve would run it (`callsign config` shows it)",
    );
    check_data_dir(&mut report, s);
    check_store(&mut report, s).await;
    check_clock(&mut report);
    check_open_files(&mut report, s);
    crate::doctor_tls::check_certificates(&mut report, s);
    check_master_key(&mut report, s, resolved.sources.master_key_file.as_deref());
    check_listen(&mut report, s);
    report.finish()
}

/// `mode` in the `0755` form.
fn octal(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// The data dir exists and it and everything in it are the user's own, private and no links,
/// as the store's permission rules require (`callsign_store::files`).
fn check_data_dir(report: &mut Report, s: &Settings) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let dir = &s.data_dir;
    let shown = dir.display();
    let needed =
        matches!(s.database, Database::Embedded) || matches!(s.tls, TlsMode::LocalCa { .. });
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (status, why) = if needed {
                (
                    Status::Fail,
                    "`callsign migrate` or a first `serve` creates it",
                )
            } else {
                (
                    Status::Warn,
                    "`serve` creates it (it records its endpoint there)",
                )
            };
            return report.say(status, "data dir", format!("{shown} does not exist: {why}"));
        }
        Err(e) => {
            return report.say(
                Status::Fail,
                "data dir",
                format!("cannot read {shown}: {e}"),
            );
        }
    };
    if !meta.is_dir() {
        return report.say(
            Status::Fail,
            "data dir",
            format!("{shown} is not a directory"),
        );
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        let why = format!(
            "{shown} belongs to user id {}, not to this user ({me})",
            meta.uid()
        );
        return report.say(Status::Fail, "data dir", why);
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        let why = format!(
            "{shown} has mode {}: group or others can reach the keys in it; run chmod 700 {shown} \
             (serve tightens it at start, with a warning)",
            octal(mode)
        );
        return report.say(Status::Fail, "data dir", why);
    }
    match first_unsafe_entry(dir, me) {
        Ok(None) => report.say(
            Status::Ok,
            "data dir",
            format!("{shown} is private ({}), everything in it too", octal(mode)),
        ),
        Ok(Some(problem)) => report.say(Status::Fail, "data dir", problem),
        Err(e) => report.say(
            Status::Fail,
            "data dir",
            format!("cannot read {shown}: {e}"),
        ),
    }
}

/// The first entry of the data dir (and of its directories, one level down, as the server
/// checks) that is a link, another user's, or open to group or others.
fn first_unsafe_entry(dir: &Path, me: u32) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for inner in std::fs::read_dir(&path)? {
                paths.push(inner?.path());
            }
        }
        paths.push(path);
    }
    for path in paths {
        let meta = std::fs::symlink_metadata(&path)?;
        let shown = path.display();
        if meta.file_type().is_symlink() {
            return Ok(Some(format!(
                "{shown} is a symbolic link: serve refuses links in the data dir"
            )));
        }
        if meta.uid() != me {
            return Ok(Some(format!(
                "{shown} belongs to user id {}, not to this user ({me})",
                meta.uid()
            )));
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 && (meta.is_file() || meta.is_dir()) {
            let want = if meta.is_dir() { "700" } else { "600" };
            return Ok(Some(format!(
                "{shown} has mode {}: group or others can read it; run chmod {want} {shown}",
                octal(mode)
            )));
        }
    }
    Ok(None)
}

/// The store answers (read-only), its schema is current and, for PostgreSQL, how the connection
/// is protected and how far the database's clock is.
async fn check_store(report: &mut Report, s: &Settings) {
    match &s.database {
        Database::Embedded => match callsign_store::probe_embedded(&s.data_dir) {
            Ok(schema) => {
                let path = callsign_store::database_path(&s.data_dir);
                let why = format!("the embedded database {} opens", path.display());
                report.say(Status::Ok, "store", why);
                check_schema(report, schema);
            }
            Err(e) => report.say(
                Status::Fail,
                "store",
                format!("{:#}", anyhow::Error::from(e)),
            ),
        },
        Database::Postgres { url, options } => {
            let timeout = options.connect_timeout.max(Duration::from_secs(1));
            match callsign_store::probe_postgres(url, timeout).await {
                Ok(probe) => {
                    let why = format!(
                        "PostgreSQL at {} answered in {} ms",
                        probe.target,
                        probe.round_trip.as_millis()
                    );
                    report.say(Status::Ok, "store", why);
                    check_store_tls(report, &probe);
                    check_schema(report, probe.schema);
                    check_database_clock(report, &probe);
                }
                Err(e) => {
                    report.say(
                        Status::Fail,
                        "store",
                        format!("{:#}", anyhow::Error::from(e)),
                    );
                    if clear_text_across_network(url) {
                        report.say(
                            Status::Fail,
                            "store TLS",
                            "sslmode=disable to a host that is not a loopback address: keys would \
                             cross the network in clear text; use sslmode=verify-full",
                        );
                    }
                }
            }
        }
    }
}

/// Whether `url` says `sslmode=disable` to a host that is not a loopback address (known without
/// connecting).
fn clear_text_across_network(url: &str) -> bool {
    let (rest, query) = url.split_once('?').unwrap_or((url, ""));
    let disabled = query.split('&').any(|p| p == "sslmode=disable");
    // postgres://[user[:password]@]host[:port][/db]
    let authority = rest.split_once("://").map_or(rest, |(_, a)| a);
    let authority = authority.split('/').next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    let loopback = host.is_empty() || callsign_server::oidc::is_loopback_host(host);
    disabled && !loopback
}

/// Pending migrations are applied by the next `serve`; a newer schema needs a newer binary.
fn check_schema(report: &mut Report, v: SchemaVersion) {
    let (status, why) = if v.applied == v.latest {
        (Status::Ok, format!("version {}, up to date", v.applied))
    } else if v.applied == 0 {
        let why = "no callsign schema yet: the first `serve` or `callsign migrate` creates it";
        (Status::Warn, why.to_owned())
    } else if v.applied < v.latest {
        let why = format!(
            "version {} of {}: `callsign migrate` (or the next serve) applies the rest",
            v.applied, v.latest
        );
        (Status::Warn, why)
    } else {
        let why = format!(
            "version {} is newer than this callsign knows ({}): upgrade callsign",
            v.applied, v.latest
        );
        (Status::Fail, why)
    };
    report.say(status, "schema", why);
}

/// TLS to PostgreSQL: in clear text to another machine is a failure when the URL asks for it.
fn check_store_tls(report: &mut Report, p: &PostgresProbe) {
    let mode = &p.sslmode;
    let (status, why) = match (p.tls, p.certificate_checked, p.local) {
        (true, true, _) => (
            Status::Ok,
            format!("TLS, server certificate checked (sslmode={mode})"),
        ),
        (true, false, true) => (Status::Ok, format!("TLS (sslmode={mode}, loopback)")),
        (true, false, false) => (
            Status::Warn,
            format!(
                "TLS without checking the server certificate (sslmode={mode}): use \
                 sslmode=verify-full across a network"
            ),
        ),
        (false, _, false) if mode == "disable" => (
            Status::Fail,
            format!(
                "sslmode=disable to {}, not a loopback address: signing keys and access keys \
                 cross the network in clear text; use sslmode=verify-full",
                p.target
            ),
        ),
        (false, _, local) => (
            Status::Warn,
            format!(
                "not encrypted (sslmode={mode}{}){}",
                if mode == "disable" {
                    ""
                } else {
                    ", the server offers no TLS"
                },
                if local {
                    "; loopback, so only this machine sees it"
                } else {
                    ""
                }
            ),
        ),
    };
    report.say(status, "store TLS", why);
}

/// The database's clock against ours: HMAC signatures allow 15 minutes of skew.
fn check_database_clock(report: &mut Report, p: &PostgresProbe) {
    let off = p.clock_offset_secs.abs();
    let status = if off < 5.0 {
        Status::Ok
    } else if off <= 600.0 {
        Status::Warn
    } else {
        Status::Fail
    };
    let why = format!(
        "the database's clock is {:.1} s {} ours{}",
        off,
        if p.clock_offset_secs >= 0.0 {
            "ahead of"
        } else {
            "behind"
        },
        if status == Status::Ok {
            ""
        } else {
            ": one of them is wrong (NTP?); request signatures allow 15 minutes"
        }
    );
    report.say(status, "clock (database)", why);
}

/// The system clock is not before this binary was built (nor its file written).
fn check_clock(report: &mut Report) {
    let now = time::OffsetDateTime::now_utc();
    let built = std::env::current_exe()
        .and_then(std::fs::metadata)
        .and_then(|m| m.modified())
        .ok()
        .map(time::OffsetDateTime::from)
        .map_or(BUILT_NOT_BEFORE, |m| m.max(BUILT_NOT_BEFORE));
    let shown = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    };
    if now < built {
        let why = format!(
            "the system clock reads {}, before this binary was made ({}): set the clock (NTP); \
             request signatures and token expiry follow it",
            shown(now),
            shown(built)
        );
        report.say(Status::Fail, "clock", why);
    } else {
        let why = format!("{} (after this binary was made)", shown(now));
        report.say(Status::Ok, "clock", why);
    }
}

/// The open-file limit `serve` will have (it raises the soft limit to the hard one) leaves room
/// for the connection cap.
fn check_open_files(report: &mut Report, s: &Settings) {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        return report.say(Status::Ok, "open files", "no limit");
    };
    let soft = limit
        .current
        .map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let requested = s.limits.max_connections;
    let cap = callsign_server::derive_cap(requested, Some(hard));
    let (status, why) = match requested {
        Some(r) if r > cap => (
            Status::Warn,
            format!(
                "--max-connections {r} is more than the open-file limit ({hard}) leaves room for: \
                 serve caps connections at {cap}; raise the limit (ulimit -n, LimitNOFILE=)"
            ),
        ),
        _ if hard < 4096 => (
            Status::Warn,
            format!(
                "the open-file limit is {hard} (soft {soft}): room for {cap} connections; raise \
                 it to 4096 or more (ulimit -Hn, LimitNOFILE=)"
            ),
        ),
        _ => (
            Status::Ok,
            format!(
                "limit {hard} (soft {soft}, raised to the hard limit at start): up to {cap} \
                 connections"
            ),
        ),
    };
    report.say(status, "open files", why);
}

/// The master key file, if one is configured: the user's own regular file, mode 0600, holding
/// a key (its id is printed, never the key).
fn check_master_key(report: &mut Report, s: &Settings, path: Option<&Path>) {
    let Some(path) = path else {
        let why = "none configured: access and signing keys are protected by file permissions \
                   (embedded) or the database's access control alone";
        return report.say(Status::Ok, "master key", why);
    };
    let new_store = matches!(s.database, Database::Embedded)
        && !callsign_store::database_path(&s.data_dir).exists();
    if new_store && !path.exists() {
        let why = format!(
            "{} does not exist yet: the first serve creates it",
            path.display()
        );
        return report.say(Status::Warn, "master key", why);
    }
    match callsign_store::MasterKey::read_file(path) {
        Ok(key) => {
            let why = format!("{} is private, key id {}", path.display(), key.id());
            report.say(Status::Ok, "master key", why);
        }
        Err(e) => report.say(
            Status::Fail,
            "master key",
            format!("{:#}", anyhow::Error::from(e)),
        ),
    }
}

/// The listen address can be bound (bound and released at once); in use is no failure, the
/// server may be running.
fn check_listen(report: &mut Report, s: &Settings) {
    let addr = s.listen;
    if addr.port() == 0 {
        return report.say(
            Status::Ok,
            "listen",
            format!("{addr}: a free port is picked at start"),
        );
    }
    let (status, why) = match std::net::TcpListener::bind(addr) {
        Ok(listener) => {
            drop(listener);
            (Status::Ok, format!("{addr} can be bound"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => (
            Status::Warn,
            format!("{addr} is in use (a server running?)"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => (
            Status::Fail,
            format!("{addr}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"),
        ),
        Err(e) => (Status::Fail, format!("{addr} cannot be bound: {e}")),
    };
    report.say(status, "listen", why);
}

#[cfg(test)]
mod clear_text_tests {
    #[test]
    fn sslmode_disable_is_judged_from_the_url() {
        use super::clear_text_across_network as f;
        assert!(f("postgres://u:p@db.example.com:5432/x?sslmode=disable"));
        assert!(f("postgres://u:p@10.0.0.5/x?sslmode=disable"));
        assert!(!f("postgres://u:p@127.0.0.1:5432/x?sslmode=disable"));
        assert!(!f("postgres://u:p@[::1]:5432/x?sslmode=disable"));
        assert!(!f("postgres://u:p@db.example.com/x?sslmode=verify-full"));
        assert!(!f("postgres://localhost/x?sslmode=disable"));
    }
}
