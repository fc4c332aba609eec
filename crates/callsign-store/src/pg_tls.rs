//! TLS to PostgreSQL over rustls, with libpq's `sslmode` and `sslrootcert`, and masking of the
//! password in database URLs.
//!
//! `tokio_postgres` knows only `sslmode=disable|prefer|require` and rejects unknown parameters,
//! so [`configure`] takes `sslmode` and `sslrootcert` out of the URL (or key=value string) itself,
//! hands the rest to `tokio_postgres` unchanged, and builds the rustls configuration:
//!
//! | `sslmode`     | TLS                        | certificate checked                                  |
//! |---------------|----------------------------|------------------------------------------------------|
//! | `disable`     | never                      | —                                                    |
//! | `prefer`      | if the server accepts it   | no (plain text when the server refuses TLS)          |
//! | `require`     | always                     | no; chain as `verify-ca` when a root file is present |
//! | `verify-ca`   | always                     | chain against the root certificate                   |
//! | `verify-full` | always                     | chain and host name (or IP address)                  |
//!
//! The root certificate is `sslrootcert` (a PEM file, one or more certificates) or, as in libpq,
//! `~/.postgresql/root.crt`. The default is `prefer`. Handshake signatures are always verified,
//! whatever the mode. Unlike libpq, a `sslrootcert` that does not exist is an error with
//! `require` too (not a silent downgrade), `prefer` never checks the certificate (libpq would
//! fall back to plain text after a failed check, `tokio_postgres` cannot), and `allow` and
//! `sslrootcert=system` are refused. As in libpq, `sslmode` does not apply to Unix-domain
//! sockets.

use std::error::Error as _;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;

/// libpq's `sslmode` values this store supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(invalid(
                    "sslmode=allow is not supported; use sslmode=disable or sslmode=prefer",
                ));
            }
            other => {
                return Err(invalid(&format!(
                    "unknown sslmode {other:?}; use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn invalid(message: &str) -> StoreError {
    StoreError::backend(format!("invalid database URL: {message}"))
}

/// How the server certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verification {
    /// Not at all (the handshake signatures still are).
    None,
    /// The chain, against this root file.
    Chain(PathBuf),
    /// The chain against this root file, and the host name.
    ChainAndName(PathBuf),
}

/// The TLS side of a PostgreSQL connection: the connector for `tokio_postgres` and what is needed
/// to explain its failures.
#[derive(Clone)]
pub(crate) struct PgTls {
    mode: SslMode,
    verification: Verification,
    /// `host:port`, for messages (never the URL: it may hold a password).
    target: String,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("verification", &self.verification)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Parses a database URL (or key=value string) with libpq's `sslmode`/`sslrootcert`: the
/// `tokio_postgres` configuration (its `ssl_mode` set) and the TLS connector to use with it.
pub(crate) fn configure(url: &str) -> Result<(tokio_postgres::Config, PgTls), StoreError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    configure_with_home(url, home.as_deref())
}

fn configure_with_home(
    url: &str,
    home: Option<&Path>,
) -> Result<(tokio_postgres::Config, PgTls), StoreError> {
    let stripped = strip_tls_params(url)?;
    // tokio_postgres' parse errors name the option, never the URL or the password.
    let mut config = stripped
        .rest
        .parse::<tokio_postgres::Config>()
        .map_err(|e| invalid(&with_causes(&e)))?;
    let mode = match &stripped.sslmode {
        Some(value) => SslMode::parse(value)?,
        None => SslMode::Prefer,
    };
    set_transport_mode(&mut config, mode);
    let verification = verification(mode, stripped.sslrootcert, home)?;
    let tls = client_config(mode, &verification)?;
    let target = describe_hosts(&config);
    Ok((
        config,
        PgTls {
            mode,
            verification,
            target,
            connector: MakeRustlsConnect::new(tls),
        },
    ))
}

/// Tells `tokio_postgres` whether to try TLS: as libpq, `sslmode` does not apply to
/// Unix-domain sockets (PostgreSQL has no TLS there).
fn set_transport_mode(config: &mut tokio_postgres::Config, mode: SslMode) {
    let only_sockets = config.get_hostaddrs().is_empty()
        && !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, Host::Tcp(_)));
    config.ssl_mode(match mode {
        _ if only_sockets => tokio_postgres::config::SslMode::Disable,
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
}

/// How `mode` checks the server certificate, given the `sslrootcert` of the URL and the home
/// directory holding libpq's default `~/.postgresql/root.crt`.
fn verification(
    mode: SslMode,
    sslrootcert: Option<String>,
    home: Option<&Path>,
) -> Result<Verification, StoreError> {
    if sslrootcert.as_deref() == Some("system") {
        return Err(invalid(
            "sslrootcert=system is not supported; give the path of a PEM file of root certificates",
        ));
    }
    let explicit_root = sslrootcert.map(PathBuf::from);
    let default_root = home.map(|h| h.join(".postgresql").join("root.crt"));
    Ok(match mode {
        SslMode::Disable | SslMode::Prefer => Verification::None,
        // libpq: with a root certificate file, `require` behaves as `verify-ca`.
        SslMode::Require => match explicit_root {
            Some(root) => Verification::Chain(root),
            None => match default_root {
                Some(root) if root.is_file() => Verification::Chain(root),
                _ => Verification::None,
            },
        },
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = match explicit_root {
                Some(root) => root,
                None => match default_root {
                    Some(root) if root.is_file() => root,
                    Some(root) => {
                        return Err(invalid(&format!(
                            "sslmode={mode} needs the root certificate of the server's CA: give \
                             sslrootcert=/path/to/ca.pem (the default {} does not exist)",
                            root.display()
                        )));
                    }
                    None => {
                        return Err(invalid(&format!(
                            "sslmode={mode} needs the root certificate of the server's CA: give \
                             sslrootcert=/path/to/ca.pem"
                        )));
                    }
                },
            };
            if mode == SslMode::VerifyFull {
                Verification::ChainAndName(root)
            } else {
                Verification::Chain(root)
            }
        }
    })
}

/// The rustls client configuration that checks the server as `verification` says.
fn client_config(mode: SslMode, verification: &Verification) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(AnyCertificate(Arc::clone(&provider))),
        Verification::Chain(root) => Arc::new(ChainOnly(webpki_verifier(
            mode,
            root,
            Arc::clone(&provider),
        )?)),
        Verification::ChainAndName(root) => webpki_verifier(mode, root, Arc::clone(&provider))?,
    };
    let mut tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::backend("cannot set up TLS").caused_by(e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What PostgreSQL 17 expects with `sslnegotiation=direct`; earlier servers ignore it.
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tls)
}

fn webpki_verifier(
    mode: SslMode,
    root: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, StoreError> {
    let unusable = || {
        StoreError::backend(format!(
            "cannot use sslrootcert {} for sslmode={mode}",
            root.display()
        ))
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(root).map_err(|e| unusable().caused_by(e))?;
    for cert in certs {
        let cert = cert.map_err(|e| unusable().caused_by(e))?;
        roots.add(cert).map_err(|e| unusable().caused_by(e))?;
    }
    if roots.is_empty() {
        return Err(StoreError::backend(format!(
            "cannot use sslrootcert {} for sslmode={mode}: the file holds no PEM certificate",
            root.display()
        )));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| unusable().caused_by(e))
}

/// `host:port[,host:port…]` of a configuration.
fn describe_hosts(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
                Host::Tcp(h) => format!("{h}:{port}"),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl PgTls {
    /// The connector to give `tokio_postgres` (or a pool).
    pub(crate) fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// The `sslmode` in force (`prefer` when the URL names none).
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// Whether the server certificate is checked (chain, and name with `verify-full`).
    pub(crate) fn checks_certificate(&self) -> bool {
        self.verification != Verification::None
    }

    /// `host:port` of the server, for messages.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// A clear message for a connection failure caused by TLS (certificate, handshake, a server
    /// without TLS), or `None` for any other failure.
    pub(crate) fn explain(&self, e: &tokio_postgres::Error) -> Option<String> {
        let text = with_causes(e);
        let why = match find_rustls_error(e) {
            Some(tls) => self.explain_rustls(tls),
            None if text.contains("server does not support TLS") => {
                "the server does not accept TLS connections (its `ssl` setting is off); turn it on, \
                 or use sslmode=prefer or sslmode=disable to connect without TLS"
                    .to_owned()
            }
            None => return None,
        };
        Some(format!(
            "cannot connect to PostgreSQL at {} with sslmode={}: {why}",
            self.target, self.mode
        ))
    }

    /// The error of a first connection through a pool: TLS failures explained (not worth a
    /// retry), unreachable servers and timeouts with the address and cause (worth one); `None`
    /// for what the server answered (authentication, unknown database…), left to the caller.
    pub(crate) fn connect_error(&self, e: &deadpool_postgres::PoolError) -> Option<StoreError> {
        match e {
            deadpool_postgres::PoolError::Backend(e) => match self.explain(e) {
                Some(message) => Some(StoreError::backend(message)),
                None if e.as_db_error().is_some() => None,
                None => {
                    let cause = with_causes(e);
                    // A handshake cut short (no rustls error): name the mode, it may be the cause.
                    let mode = if cause.starts_with("error performing TLS handshake") {
                        format!(" with sslmode={}", self.mode)
                    } else {
                        String::new()
                    };
                    Some(StoreError::unavailable(format!(
                        "cannot connect to PostgreSQL at {}{mode}: {cause}",
                        self.target
                    )))
                }
            },
            deadpool_postgres::PoolError::Timeout(_) => Some(StoreError::unavailable(format!(
                "cannot connect to PostgreSQL at {}: no connection within the connect timeout",
                self.target
            ))),
            _ => None,
        }
    }

    fn explain_rustls(&self, e: &rustls::Error) -> String {
        let root = match &self.verification {
            Verification::None => None,
            Verification::Chain(root) | Verification::ChainAndName(root) => Some(root),
        };
        match (e, root) {
            (
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ),
                _,
            ) => format!(
                "the server certificate is not valid for the host name it was reached by; connect \
                 by a name the certificate holds, or use sslmode=verify-ca to check the chain only \
                 ({e})"
            ),
            (
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                    | CertificateError::BadSignature
                    | CertificateError::UnhandledCriticalExtension
                    | CertificateError::InvalidPurpose
                    | CertificateError::InvalidPurposeContext { .. }
                    | CertificateError::Other(_),
                ),
                Some(root),
            ) => format!(
                "the server certificate is not trusted by sslrootcert {} ({e})",
                root.display()
            ),
            (rustls::Error::InvalidCertificate(_), _) => {
                format!("the server certificate is not acceptable ({e})")
            }
            _ => format!("the TLS handshake failed ({e})"),
        }
    }
}

/// An error and its causes, outermost first (`std::io::Error` hides its inner error from
/// `source()`, so it is unwrapped by hand).
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |&err| match err.downcast_ref::<std::io::Error>() {
        Some(io) => match io.get_ref() {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => io.source(),
        },
        None => err.source(),
    })
}

/// The rustls error behind a `tokio_postgres` error, if any.
fn find_rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    causes(e).find_map(|err| err.downcast_ref::<rustls::Error>())
}

/// `error: cause: cause…` (`tokio_postgres` shows only the outermost).
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in causes(e) {
        let text = err.to_string();
        // An io::Error around another error displays as that error.
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// `require` without a root certificate: any certificate, but the handshake signatures are
/// checked (the server holds the key of the certificate it sent).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full WebPKI check, except that the host name may differ. rustls checks the
/// chain (and validity, purpose) before the name, so a name error means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A connection string without its `sslmode`/`sslrootcert`, and their (decoded) values.
#[derive(Debug, PartialEq, Eq)]
struct Stripped {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

const URL_PREFIXES: [&str; 2] = ["postgres://", "postgresql://"];

/// The length of the scheme of a PostgreSQL URL, `None` for a key=value string.
fn url_prefix_len(url: &str) -> Option<usize> {
    URL_PREFIXES
        .iter()
        .find(|p| url.starts_with(**p))
        .map(|p| p.len())
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query (percent-decoded) or a key=value
/// string, keeping everything else byte for byte. The last occurrence wins, as in
/// `tokio_postgres`.
fn strip_tls_params(url: &str) -> Result<Stripped, StoreError> {
    let mut stripped = Stripped {
        rest: String::new(),
        sslmode: None,
        sslrootcert: None,
    };
    let Some(prefix) = url_prefix_len(url) else {
        return strip_key_values(url);
    };
    let Some(query) = url_query_start(url, prefix) else {
        stripped.rest = url.to_owned();
        return Ok(stripped);
    };
    let mut kept = Vec::new();
    for segment in url[query + 1..].split('&') {
        let Some((key, value)) = segment.split_once('=') else {
            kept.push(segment);
            continue;
        };
        let key = percent_decode_str(key).decode_utf8_lossy();
        let slot = match key.as_ref() {
            "sslmode" => &mut stripped.sslmode,
            "sslrootcert" => &mut stripped.sslrootcert,
            _ => {
                kept.push(segment);
                continue;
            }
        };
        let value = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| invalid(&format!("{key} is not UTF-8 once percent-decoded")))?;
        *slot = Some(value.into_owned());
    }
    stripped.rest = if kept.is_empty() {
        url[..query].to_owned()
    } else {
        format!("{}?{}", &url[..query], kept.join("&"))
    };
    Ok(stripped)
}

/// Where the `?` of a URL's query is, reading the URL as `tokio_postgres` does (the credentials
/// end at the first `@`).
fn url_query_start(url: &str, prefix: usize) -> Option<usize> {
    let after_credentials = url[prefix..].find('@').map_or(prefix, |at| prefix + at + 1);
    url[after_credentials..]
        .find('?')
        .map(|q| after_credentials + q)
}

fn strip_key_values(s: &str) -> Result<Stripped, StoreError> {
    let mut stripped = Stripped {
        rest: String::new(),
        sslmode: None,
        sslrootcert: None,
    };
    // A string that does not tokenize goes to tokio_postgres as it is, for its error.
    let Some(pairs) = key_value_pairs(s) else {
        stripped.rest = s.to_owned();
        return Ok(stripped);
    };
    let mut rest = String::with_capacity(s.len());
    let mut copied = 0;
    for pair in pairs {
        let slot = match pair.key {
            "sslmode" => &mut stripped.sslmode,
            "sslrootcert" => &mut stripped.sslrootcert,
            _ => continue,
        };
        *slot = Some(pair.value);
        rest.push_str(&s[copied..pair.start]);
        copied = pair.end;
    }
    rest.push_str(&s[copied..]);
    stripped.rest = rest;
    Ok(stripped)
}

/// One `key = value` of a key=value connection string, with its byte span.
#[derive(Debug)]
struct KeyValue<'a> {
    key: &'a str,
    value: String,
    /// Where the key starts.
    start: usize,
    /// Where the value (quotes included) starts.
    value_start: usize,
    /// Just past the value.
    end: usize,
}

/// Tokenizes a key=value connection string the way `tokio_postgres` does (values plain or
/// single-quoted, backslash escapes); `None` when it is malformed.
fn key_value_pairs(s: &str) -> Option<Vec<KeyValue<'_>>> {
    let mut it = s.char_indices().peekable();
    let mut pairs = Vec::new();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Some(pairs);
        };
        while it
            .next_if(|(_, c)| !c.is_whitespace() && *c != '=')
            .is_some()
        {}
        let key_end = it.peek().map_or(s.len(), |(i, _)| *i);
        if key_end == start {
            return None;
        }
        skip_ws(&mut it);
        it.next_if(|(_, c)| *c == '=')?;
        skip_ws(&mut it);
        let value_start = it.peek().map_or(s.len(), |(i, _)| *i);
        let mut value = String::new();
        let quoted = it.next_if(|(_, c)| *c == '\'').is_some();
        loop {
            match it.peek().copied() {
                None if quoted => return None,
                None => break,
                Some((_, '\'')) if quoted => {
                    it.next();
                    break;
                }
                Some((_, c)) if !quoted && c.is_whitespace() => break,
                Some((_, '\\')) => {
                    it.next();
                    if let Some((_, escaped)) = it.next() {
                        value.push(escaped);
                    }
                }
                Some((_, c)) => {
                    it.next();
                    value.push(c);
                }
            }
        }
        let end = it.peek().map_or(s.len(), |(i, _)| *i);
        if !quoted && value.is_empty() {
            return None;
        }
        pairs.push(KeyValue {
            key: &s[start..key_end],
            value,
            start,
            value_start,
            end,
        });
    }
}

/// Keys whose values are secrets.
fn is_secret_key(key: &str) -> bool {
    matches!(key, "password" | "sslpassword")
}

const MASK: &str = "***";

/// A database URL (`postgres://user:password@host/db?…`) or key=value string
/// (`host=… password=…`) fit to show: every password replaced by `***`. When in doubt it hides
/// more, never less; anything else is returned as it is.
pub fn mask_url(url: &str) -> String {
    let Some(prefix) = url_prefix_len(url) else {
        return mask_key_values(url);
    };
    let rest = &url[prefix..];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..prefix]);
    let tail = match rest.find('@') {
        Some(first_at) => {
            // An unencoded `@` in the password: hide up to the last `@` before the host ends.
            let host_end = rest[first_at + 1..]
                .find(['/', '?'])
                .map_or(rest.len(), |i| first_at + 1 + i);
            let last_at = rest[..host_end].rfind('@').unwrap_or(first_at);
            let credentials = &rest[..last_at];
            match credentials.find(':') {
                Some(colon) => {
                    out.push_str(&credentials[..=colon]);
                    out.push_str(MASK);
                }
                None => out.push_str(credentials),
            }
            &rest[last_at..]
        }
        None => rest,
    };
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let segments: Vec<String> = tail[q + 1..]
                .split('&')
                .map(|segment| match segment.split_once('=') {
                    Some((key, _))
                        if is_secret_key(&percent_decode_str(key).decode_utf8_lossy()) =>
                    {
                        format!("{key}={MASK}")
                    }
                    _ => segment.to_owned(),
                })
                .collect();
            out.push_str(&segments.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

fn mask_key_values(s: &str) -> String {
    let Some(pairs) = key_value_pairs(s) else {
        // Malformed: hide everything from the first secret key on.
        return match ["sslpassword", "password"]
            .iter()
            .filter_map(|k| s.find(k))
            .min()
        {
            Some(at) => format!("{}{MASK}", &s[..at]),
            None => s.to_owned(),
        };
    };
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    for pair in pairs.iter().filter(|p| is_secret_key(p.key)) {
        out.push_str(&s[copied..pair.value_start]);
        out.push_str(MASK);
        copied = pair.end;
    }
    out.push_str(&s[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(url: &str) -> Stripped {
        strip_tls_params(url).expect("strip")
    }

    #[test]
    fn strips_tls_parameters_from_a_url_keeping_the_rest_byte_exact() {
        let s = strip(
            "postgres://u:p%40ss@h:5433/db?application_name=a%20b&sslmode=verify-full&sslrootcert=%2Ftmp%2Fmy%20ca.pem&connect_timeout=3",
        );
        assert_eq!(
            s.rest,
            "postgres://u:p%40ss@h:5433/db?application_name=a%20b&connect_timeout=3"
        );
        assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/tmp/my ca.pem"));

        let s = strip("postgresql://h/db?sslmode=require");
        assert_eq!(s.rest, "postgresql://h/db");
        assert_eq!(s.sslmode.as_deref(), Some("require"));
        assert_eq!(s.sslrootcert, None);

        // A `?` in the password is not the query; an encoded key is still recognised.
        let s = strip("postgres://u:a?b@h/db?ssl%6Dode=disable&sslmode=prefer");
        assert_eq!(s.rest, "postgres://u:a?b@h/db");
        assert_eq!(s.sslmode.as_deref(), Some("prefer"));

        let s = strip("postgres://h/db");
        assert_eq!(s.rest, "postgres://h/db");
        assert_eq!(s.sslmode, None);
    }

    #[test]
    fn strips_tls_parameters_from_a_key_value_string() {
        let s = strip(
            "host=h sslmode = 'verify-ca' dbname=db sslrootcert=/tmp/my\\ ca.pem password='a b'",
        );
        assert_eq!(s.rest, "host=h  dbname=db  password='a b'");
        assert_eq!(s.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/tmp/my ca.pem"));
        let (config, tls) =
            configure_with_home("host=h dbname=db sslmode=require password='a b'", None)
                .expect("configure");
        assert_eq!(config.get_dbname(), Some("db"));
        assert_eq!(config.get_password(), Some(&b"a b"[..]));
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.verification, Verification::None);
    }

    #[test]
    fn modes_map_to_tokio_postgres_and_verification() {
        use tokio_postgres::config::SslMode as Pg;
        let (config, tls) = configure_with_home("postgres://h/db", None).expect("default");
        assert_eq!(config.get_ssl_mode(), Pg::Prefer);
        assert_eq!(tls.verification, Verification::None);
        let (config, _) =
            configure_with_home("postgres://h/db?sslmode=disable", None).expect("disable");
        assert_eq!(config.get_ssl_mode(), Pg::Disable);
        let (config, tls) =
            configure_with_home("postgres://h/db?sslmode=require", None).expect("require");
        assert_eq!(config.get_ssl_mode(), Pg::Require);
        assert_eq!(tls.verification, Verification::None);
        assert_eq!(tls.target, "h:5432");
        let (config, _) = configure_with_home(
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db?sslmode=require",
            None,
        )
        .expect("socket");
        assert_eq!(config.get_ssl_mode(), Pg::Disable);
    }

    #[test]
    fn verification_without_a_root_certificate_is_a_clear_error() {
        let home = tempfile::tempdir().expect("temp dir");
        let home = home.path();
        for mode in ["verify-ca", "verify-full"] {
            let err = configure_with_home(
                &format!("postgres://u:s3cret@h/db?sslmode={mode}"),
                Some(home),
            )
            .expect_err("no root");
            let text = err.to_string();
            assert!(text.contains(&format!("sslmode={mode}")), "{text}");
            assert!(text.contains("sslrootcert"), "{text}");
            assert!(text.contains("root.crt"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        let err = configure_with_home(
            "postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            None,
        )
        .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        // `require` with a root file that is not there is refused too, not silently unverified.
        configure_with_home(
            "postgres://h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem",
            None,
        )
        .expect_err("missing file with require");
    }

    #[test]
    fn unknown_parameters_and_modes_are_refused() {
        for (url, needle) in [
            (
                "postgres://u:s3cret@h/db?sslmode=verify_full",
                "verify_full",
            ),
            ("postgres://u:s3cret@h/db?sslmode=allow", "allow"),
            ("postgres://u:s3cret@h/db?sslrootcert=system", "system"),
            ("postgres://u:s3cret@h/db?bogus=1", "bogus"),
        ] {
            let text = configure_with_home(url, None).expect_err(url).to_string();
            assert!(text.contains(needle), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn masks_key_value_strings() {
        assert_eq!(
            mask_url("host=h password=s3cret user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            mask_url("host=h password = 'a b\\' c' user=u"),
            "host=h password = *** user=u"
        );
        assert_eq!(mask_url("host=h password='unterminated"), "host=h ***");
        assert_eq!(mask_url("/var/lib/callsign"), "/var/lib/callsign");
    }
}
