//! TLS: the local certificate authority callsign creates on first start, or the operator's own
//! certificate, turned into a rustls server configuration.
//!
//! Layout under `<data-dir>/tls/` (every file 0600, the directory 0700): `ca.pem`, `ca-key.pem`,
//! `ca.names` (the names the CA may certify), `server.pem`, `server-key.pem` and `server.names`
//! (the names the server certificate covers).
//!
//! The CA is **name-constrained** to the server's names (X.509 name constraints, enforced by
//! rustls/webpki, OpenSSL and Node): a stolen CA key cannot mint a certificate another domain's
//! clients would accept, even on a machine that trusts the CA. It is made once and kept while
//! the requested names stay within its constraints; asking for a name outside them (a new
//! `--tls-name`) makes a new CA, which clients must trust anew (logged). The server certificate
//! is re-issued when the names change or it is within 30 days of expiry.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// Names every generated server certificate covers.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
const SERVER_VALIDITY: Duration = Duration::days(397);
const RENEW_BEFORE: Duration = Duration::days(30);
const CA_VALIDITY: Duration = Duration::days(3650);

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// The local CA in the data dir issues a certificate for the default names plus these.
    LocalCa {
        /// Extra DNS names or IP addresses.
        extra_names: Vec<String>,
    },
    /// The operator's own PEM files.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// No TLS (behind a TLS-terminating proxy).
    Plain,
}

/// Paths of the local CA material.
#[derive(Debug, Clone)]
pub struct LocalCaPaths {
    dir: PathBuf,
}

impl LocalCaPaths {
    /// The TLS folder inside `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("tls"),
        }
    }

    /// The CA certificate (what clients trust).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    fn ca_names(&self) -> PathBuf {
        self.dir.join("ca.names")
    }

    /// Installs a given CA (PEM certificate and key) for the default names, as if this data
    /// dir had made it: the next start certifies its names with it (dev mode's public CA).
    pub fn install_ca(&self, ca_pem: &str, ca_key_pem: &str) -> anyhow::Result<()> {
        callsign_store::files::create_private_dir(&self.dir)?;
        write_atomically(&self.ca_key(), ca_key_pem, PRIVATE)?;
        write_atomically(&self.ca_cert(), ca_pem, PUBLIC)?;
        write_atomically(&self.ca_names(), &DEFAULT_NAMES.join("\n"), PUBLIC)
    }

    /// Whether the existing CA may certify every one of `names` (false if there is none).
    pub fn ca_covers(&self, names: &[String]) -> bool {
        std::fs::read_to_string(self.ca_names()).is_ok_and(|t| {
            let known: Vec<&str> = t.lines().collect();
            names.iter().all(|n| known.contains(&n.as_str()))
        })
    }
    /// The server certificate the local CA issued (what `serve` presents).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    fn server_names(&self) -> PathBuf {
        self.dir.join("server.names")
    }
}

/// Builds the rustls configuration for `mode`; `None` for plain HTTP.
pub fn server_config(
    mode: &TlsMode,
    data_dir: &Path,
    now: OffsetDateTime,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (certs, key) = match mode {
        TlsMode::Plain => return Ok(None),
        TlsMode::Files { cert, key } => {
            refuse_world_readable(key)?;
            (read_certs(cert)?, read_key(key)?)
        }
        TlsMode::LocalCa { extra_names } => {
            // Whichever command makes the CA first (`serve` or `ca-cert`) makes it private.
            callsign_store::files::secure_data_dir(data_dir)?;
            let paths = LocalCaPaths::new(data_dir);
            ensure_local_ca(&paths, extra_names, now)?;
            (
                read_certs(&paths.server_cert())?,
                read_key(&paths.server_key())?,
            )
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match or are unsupported")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// An operator's private key that every local user can read is refused (group-readable keys,
/// as Debian's `ssl-cert` group uses, are accepted).
fn refuse_world_readable(key: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        bail!(
            "the TLS private key {} is readable by every local user (mode {:04o}); run chmod o-r on it",
            key.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a private key from {}", path.display()))
}

/// Writes through a temporary file, fsync'd, then renamed into place, so a crash leaves either
/// the old file or the new one. `mode` applies to the new file (private keys: 0600).
fn write_atomically(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    // A leftover temporary file would keep its old permissions.
    let _ = std::fs::remove_file(&tmp);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

const PRIVATE: u32 = 0o600;
/// Certificates too: the data dir is private (the CA certificate is printed by `ca-cert`).
const PUBLIC: u32 = 0o600;

/// The name constraints for `names`: each DNS name (and its subdomains), each IP address alone.
fn name_constraints(names: &[String]) -> NameConstraints {
    let permitted_subtrees = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                GeneralSubtree::IpAddress(CidrSubnet::V4(ip.octets(), [255; 4]))
            }
            Ok(std::net::IpAddr::V6(ip)) => {
                GeneralSubtree::IpAddress(CidrSubnet::V6(ip.octets(), [255; 16]))
            }
            Err(_) => GeneralSubtree::DnsName(n.clone()),
        })
        .collect();
    NameConstraints {
        permitted_subtrees,
        excluded_subtrees: Vec::new(),
    }
}

/// The CA's subject, derived from its key so that re-signing needs only the stored key, and its
/// constraints, from the names it may certify.
fn ca_params(key: &KeyPair, now: OffsetDateTime, names: &[String]) -> CertificateParams {
    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key_raw());
    let short: String = fingerprint.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "callsign");
    dn.push(DnType::CommonName, format!("callsign local CA {short}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.name_constraints = Some(name_constraints(names));
    // Server authentication only: certificates it signs are no use for e-mail, code signing or
    // client authentication, whose names the constraints above do not cover.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    params
}

fn ensure_local_ca(
    paths: &LocalCaPaths,
    extra: &[String],
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    callsign_store::files::create_private_dir(&paths.dir)?;
    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| s.to_string()).collect();
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let (ca_key, ca_names) = ca_for(paths, &names, now)?;
    if server_cert_is_fresh(paths, &names, now) {
        return Ok(());
    }
    issue_server_cert(paths, &names, now, ca_key, &ca_names)
}

/// The CA key and the names it may certify: the existing CA while it may certify every one of
/// `names`, otherwise a new one (which makes any older server certificate stale).
fn ca_for(
    paths: &LocalCaPaths,
    names: &[String],
    now: OffsetDateTime,
) -> anyhow::Result<(KeyPair, Vec<String>)> {
    let constrained_to: Option<Vec<String>> = std::fs::read_to_string(paths.ca_names())
        .ok()
        .map(|t| t.lines().map(str::to_owned).collect());
    let covers = constrained_to
        .as_ref()
        .is_some_and(|c| names.iter().all(|n| c.contains(n)));
    if covers && paths.ca_key().exists() && paths.ca_cert().exists() {
        let pem = std::fs::read_to_string(paths.ca_key())?;
        let key = KeyPair::from_pem(&pem).context("the local CA key does not parse")?;
        return Ok((key, constrained_to.unwrap_or_default()));
    }
    if paths.ca_cert().exists() {
        tracing::warn!(
            path = %paths.ca_cert().display(),
            names = ?names,
            "the local CA cannot certify every requested name; a new name-constrained CA \
             replaces it: clients must trust the new ca.pem"
        );
    }
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let cert = ca_params(&key, now, names)
        .self_signed(&key)
        .context("cannot make the CA certificate")?;
    write_atomically(&paths.ca_key(), &key.serialize_pem(), PRIVATE)?;
    write_atomically(&paths.ca_cert(), &cert.pem(), PUBLIC)?;
    write_atomically(&paths.ca_names(), &names.join("\n"), PUBLIC)?;
    // A new CA invalidates any older server certificate.
    let _ = std::fs::remove_file(paths.server_names());
    tracing::info!(path = %paths.ca_cert().display(), "created a local certificate authority");
    Ok((key, names.to_vec()))
}

/// Whether the server certificate on disk is for exactly `names` and not yet due for renewal.
fn server_cert_is_fresh(paths: &LocalCaPaths, names: &[String], now: OffsetDateTime) -> bool {
    let wanted = names.join("\n");
    let current = std::fs::read_to_string(paths.server_names()).ok();
    let fresh = current.as_deref().and_then(|c| {
        let (expiry, stored_names) = c.split_once('\n')?;
        let expiry = OffsetDateTime::from_unix_timestamp(expiry.parse().ok()?).ok()?;
        Some(stored_names == wanted && expiry - RENEW_BEFORE > now)
    });
    fresh == Some(true) && paths.server_cert().exists() && paths.server_key().exists()
}

/// Issues and writes a server certificate for `names`, signed by the local CA.
fn issue_server_cert(
    paths: &LocalCaPaths,
    names: &[String],
    now: OffsetDateTime,
    ca_key: KeyPair,
    ca_names: &[String],
) -> anyhow::Result<()> {
    let issuer = Issuer::new(ca_params(&ca_key, now, ca_names), ca_key);
    let mut params = CertificateParams::new(names.to_vec()).context("invalid TLS name")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "callsign");
    dn.push(DnType::CommonName, names[0].clone());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::hours(1);
    params.not_after = now + SERVER_VALIDITY;
    let key = KeyPair::generate().context("cannot generate the server key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the server certificate")?;
    write_atomically(&paths.server_key(), &key.serialize_pem(), PRIVATE)?;
    write_atomically(&paths.server_cert(), &cert.pem(), PUBLIC)?;
    write_atomically(
        &paths.server_names(),
        &format!(
            "{}\n{}",
            params.not_after.unix_timestamp(),
            names.join("\n")
        ),
        PUBLIC,
    )?;
    tracing::info!(names = ?names, "issued a server certificate from the local CA");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ca_is_created_once_and_reissues_for_new_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = OffsetDateTime::now_utc();
        let mode = TlsMode::LocalCa {
            extra_names: vec![],
        };
        assert!(
            server_config(&mode, dir.path(), now)
                .expect("config")
                .is_some()
        );
        let paths = LocalCaPaths::new(dir.path());
        let ca = std::fs::read_to_string(paths.ca_cert()).expect("ca");
        let server = std::fs::read_to_string(paths.server_cert()).expect("server");
        // Second start: nothing changes.
        server_config(&mode, dir.path(), now).expect("config");
        assert_eq!(
            std::fs::read_to_string(paths.server_cert()).expect("server"),
            server
        );
        // A name outside the CA's constraints: a new CA (constrained to it too) and a new
        // server certificate; asking for fewer names again keeps that CA.
        let mode = TlsMode::LocalCa {
            extra_names: vec!["callsign.internal".into()],
        };
        server_config(&mode, dir.path(), now).expect("config");
        let ca2 = std::fs::read_to_string(paths.ca_cert()).expect("ca");
        assert_ne!(ca2, ca);
        assert_ne!(
            std::fs::read_to_string(paths.server_cert()).expect("server"),
            server
        );
        server_config(
            &TlsMode::LocalCa {
                extra_names: vec![],
            },
            dir.path(),
            now,
        )
        .expect("config");
        assert_eq!(std::fs::read_to_string(paths.ca_cert()).expect("ca"), ca2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(paths.ca_key())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// Verifies a certificate the way clients do (rustls/webpki), trusting only `ca_pem`.
    fn verify(ca_pem: &str, cert: &rcgen::Certificate, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier as _;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("pem"))
            .expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        verifier
            .verify_server_cert(
                cert.der(),
                &[],
                &rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name"),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map(drop)
    }

    #[test]
    fn the_ca_key_cannot_mint_certificates_for_other_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = OffsetDateTime::now_utc();
        let mode = TlsMode::LocalCa {
            extra_names: vec!["callsign.internal".into()],
        };
        server_config(&mode, dir.path(), now).expect("config");
        let paths = LocalCaPaths::new(dir.path());
        let ca_pem = std::fs::read_to_string(paths.ca_cert()).expect("ca");
        let names: Vec<String> = std::fs::read_to_string(paths.ca_names())
            .expect("names")
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(names.contains(&"callsign.internal".to_owned()));
        // Whoever steals the CA key signs what they like...
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(paths.ca_key()).expect("key")).expect("key");
        let issuer = Issuer::new(ca_params(&ca_key, now, &names), ca_key);
        let forge = |name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
            params.use_authority_key_identifier_extension = true;
            params.signed_by(&key, &issuer).expect("signed")
        };
        // ...but clients that trust the CA accept it only for the server's own names.
        assert!(verify(&ca_pem, &forge("bank.example"), "bank.example").is_err());
        assert!(verify(&ca_pem, &forge("10.0.0.1"), "10.0.0.1").is_err());
        verify(&ca_pem, &forge("callsign.internal"), "callsign.internal").expect("own name");
        verify(&ca_pem, &forge("127.0.0.1"), "127.0.0.1").expect("own address");
        // The server certificate it issued verifies for its names.
        let server_pem = std::fs::read_to_string(paths.server_cert()).expect("server");
        let server = CertificateDer::from_pem_slice(server_pem.as_bytes()).expect("pem");
        use rustls::client::danger::ServerCertVerifier as _;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("pem"))
            .expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .expect("verifier");
        for name in ["localhost", "callsign.internal", "127.0.0.1"] {
            verifier
                .verify_server_cert(
                    &server,
                    &[],
                    &rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name"),
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_world_readable_own_key_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "not read").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mode = TlsMode::Files {
            cert: dir.path().join("cert.pem"),
            key: key.clone(),
        };
        let err = server_config(&mode, dir.path(), OffsetDateTime::now_utc())
            .expect_err("world-readable");
        assert!(
            format!("{err:#}").contains("readable by every local user"),
            "{err:#}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = server_config(&mode, dir.path(), OffsetDateTime::now_utc()).expect_err("no cert");
        assert!(!format!("{err:#}").contains("readable by every"), "{err:#}");
    }

    #[test]
    fn own_files_that_do_not_exist_are_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mode = TlsMode::Files {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope-key.pem"),
        };
        let err =
            server_config(&mode, dir.path(), OffsetDateTime::now_utc()).expect_err("missing files");
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }
}
