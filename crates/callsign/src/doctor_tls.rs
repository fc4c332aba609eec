//! `callsign doctor`'s certificate checks: the certificate `serve` presents (the operator's
//! `--tls-cert`, or the local CA's server certificate) and the local CA itself, read with
//! `x509-parser`.

use std::path::Path;

use callsign_server::{LocalCaPaths, Settings, TlsMode};
use time::OffsetDateTime;

use crate::doctor::{Report, Status};

/// Warn this long before a certificate expires.
const WARN_BEFORE: time::Duration = time::Duration::days(30);

/// The validity of the first certificate in a PEM file.
struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// Reads the first certificate of the PEM file at `path`.
fn read_validity(path: &Path) -> anyhow::Result<Validity> {
    let pem = std::fs::read(path)?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("no PEM certificate in it ({e})"))?;
    let cert = block
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("the certificate does not parse ({e})"))?;
    let at = |t: x509_parser::time::ASN1Time| OffsetDateTime::from_unix_timestamp(t.timestamp());
    Ok(Validity {
        not_before: at(cert.validity().not_before)?,
        not_after: at(cert.validity().not_after)?,
    })
}

/// A date as `2027-01-31`.
fn day(t: OffsetDateTime) -> String {
    t.date().to_string()
}

/// Reports whether the certificate at `path` is valid now and for 30 days more; `renewal` says
/// what renews it (for the warning).
fn check_file(report: &mut Report, check: &str, path: &Path, renewal: &str, now: OffsetDateTime) {
    let shown = path.display();
    let v = match read_validity(path) {
        Ok(v) => v,
        Err(e) => {
            return report.say(Status::Fail, check, format!("cannot read {shown}: {e:#}"));
        }
    };
    let left = v.not_after - now;
    let (status, why) = if left.is_negative() {
        let why = format!("{shown} expired on {}: {renewal}", day(v.not_after));
        (Status::Fail, why)
    } else if v.not_before > now {
        let why = format!(
            "{shown} is not valid before {} (is the clock right?)",
            day(v.not_before)
        );
        (Status::Fail, why)
    } else if left < WARN_BEFORE {
        let why = format!(
            "{shown} expires on {}, in {} day(s): {renewal}",
            day(v.not_after),
            left.whole_days()
        );
        (Status::Warn, why)
    } else {
        let why = format!(
            "{shown} valid until {} ({} days)",
            day(v.not_after),
            left.whole_days()
        );
        (Status::Ok, why)
    };
    report.say(status, check, why);
}

/// The certificate `serve` will present, and the local CA when it is the source.
pub fn check_certificates(report: &mut Report, s: &Settings) {
    let now = OffsetDateTime::now_utc();
    match &s.tls {
        TlsMode::Plain => report.say(
            Status::Ok,
            "TLS certificate",
            "none: plain HTTP (--plain-http), TLS is the proxy's",
        ),
        TlsMode::Files { cert, key } => {
            check_file(report, "TLS certificate", cert, "replace it", now);
            check_key_file(report, key);
            // What serve does with them: parse both and check that the key is the
            // certificate's.
            if let Err(e) = callsign_server::tls::server_config(&s.tls, &s.data_dir, now) {
                report.say(
                    Status::Fail,
                    "TLS certificate and key",
                    format!("serve refuses them: {e:#}"),
                );
            }
        }
        TlsMode::LocalCa { .. } => {
            let paths = LocalCaPaths::new(&s.data_dir);
            if !paths.ca_cert().exists() {
                let why = "no local CA yet: the first serve (or `callsign ca-cert`) makes it";
                return report.say(Status::Warn, "TLS certificate", why);
            }
            check_file(
                report,
                "local CA",
                &paths.ca_cert(),
                "serve makes a new one",
                now,
            );
            if paths.server_cert().exists() {
                let renewal = "the next start of serve issues a new one";
                check_file(
                    report,
                    "TLS certificate",
                    &paths.server_cert(),
                    renewal,
                    now,
                );
            } else {
                let why = "no server certificate yet: serve issues one at start";
                report.say(Status::Warn, "TLS certificate", why);
            }
        }
    }
}

/// `serve` refuses a private key every local user can read.
fn check_key_file(report: &mut Report, key: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = key.display();
    match std::fs::metadata(key) {
        Err(e) => report.say(Status::Fail, "TLS key", format!("cannot read {shown}: {e}")),
        Ok(meta) if meta.permissions().mode() & 0o004 != 0 => report.say(
            Status::Fail,
            "TLS key",
            format!(
                "{shown} is readable by every local user (mode {:04o}): serve refuses it; run \
                 chmod o-r {shown}",
                meta.permissions().mode() & 0o7777
            ),
        ),
        Ok(_) => report.say(
            Status::Ok,
            "TLS key",
            format!("{shown} is not world-readable"),
        ),
    }
}
