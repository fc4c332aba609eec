//! TLS to PostgreSQL: `sslmode`/`sslrootcert` against the test server, and URL masking.
//!
//! The server is `CALLSIGN_TEST_DATABASE_URL` or the local default; it must have `ssl = on`
//! (Debian's default cluster does, with the self-signed snakeoil certificate). Its root
//! certificate is `CALLSIGN_TEST_DATABASE_SSLROOTCERT`, by default that snakeoil certificate.

use callsign_store::{PostgresOptions, PostgresStore, Store, mask_database_url};
use callsign_testkit::{TestDatabase, admin_url, connect_postgres};

/// The certificate the test server presents, as a root.
fn server_root() -> String {
    std::env::var("CALLSIGN_TEST_DATABASE_SSLROOTCERT")
        .unwrap_or_else(|_| "/etc/ssl/certs/ssl-cert-snakeoil.pem".into())
}

async fn admin() -> tokio_postgres::Client {
    connect_postgres(&admin_url()).await
}

/// Fails (never skips) when the server cannot do TLS.
async fn require_server_ssl(admin: &tokio_postgres::Client) {
    let ssl: String = admin
        .query_one("SHOW ssl", &[])
        .await
        .expect("SHOW ssl")
        .get(0);
    assert_eq!(
        ssl, "on",
        "the test PostgreSQL server has ssl = off; the TLS tests need ssl = on (with \
         ssl_cert_file/ssl_key_file, e.g. Debian's snakeoil certificate)"
    );
}

/// A URL for database `db` on the test server with `password` (trust auth ignores it) and the
/// extra query `params`.
fn url(host: &str, password: Option<&str>, db: &str, params: &str) -> String {
    let config: tokio_postgres::Config = admin_url().parse().expect("admin url");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .or(password.map(str::to_owned));
    let credentials = match password {
        Some(p) => format!("{user}:{p}"),
        None => user.to_owned(),
    };
    format!("postgres://{credentials}@{host}:{port}/{db}?{params}")
}

/// The host of the test server.
fn host() -> String {
    let config: tokio_postgres::Config = admin_url().parse().expect("admin url");
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    }
}

/// Connects a store to a fresh database with `params` and returns whether its connection uses
/// TLS, as the server sees it.
async fn store_connection_uses_tls(params: &str) -> bool {
    store_connection_uses_tls_by(|db, app| {
        url(
            &host(),
            None,
            db,
            &format!("{params}&application_name={app}"),
        )
    })
    .await
}

async fn store_connection_uses_tls_by(make_url: impl FnOnce(&str, &str) -> String) -> bool {
    let admin = admin().await;
    require_server_ssl(&admin).await;
    let db = TestDatabase::create().await;
    let app = format!("callsign_tls_{}", uuid::Uuid::new_v4().simple());
    let result =
        PostgresStore::connect(&make_url(db.name(), &app), &PostgresOptions::default()).await;
    let seen = match &result {
        Ok(store) => {
            let row = admin
                .query_one(
                    "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s \
                     JOIN pg_stat_activity a ON a.pid = s.pid WHERE a.application_name = $1",
                    &[&app],
                )
                .await;
            store.close().await;
            Some(row.map(|r| (r.get::<_, i64>(0), r.get::<_, bool>(1))))
        }
        Err(_) => None,
    };
    drop(db);
    if let Err(e) = result {
        panic!("connect: {e}");
    }
    let (connections, ssl) = seen.expect("connected").expect("pg_stat_ssl");
    assert!(
        connections >= 1,
        "the store holds no connection named {app}"
    );
    ssl
}

#[tokio::test]
async fn require_connects_over_tls() {
    assert!(store_connection_uses_tls("sslmode=require").await);
}

#[tokio::test]
async fn disable_connects_without_tls() {
    assert!(!store_connection_uses_tls("sslmode=disable").await);
}

#[tokio::test]
async fn prefer_uses_tls_when_the_server_offers_it() {
    assert!(store_connection_uses_tls("sslmode=prefer").await);
}

#[tokio::test]
async fn the_default_is_prefer() {
    assert!(store_connection_uses_tls("connect_timeout=5").await);
}

#[tokio::test]
async fn verify_ca_accepts_the_server_root_whatever_the_host_name() {
    let root = server_root();
    let params = format!(
        "sslmode=verify-ca&sslrootcert={}",
        percent_encode_path(&root)
    );
    assert!(store_connection_uses_tls(&params).await);
}

#[tokio::test]
async fn a_key_value_string_takes_the_same_parameters() {
    let config: tokio_postgres::Config = admin_url().parse().expect("admin url");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let password = config
        .get_password()
        .map(|p| format!(" password='{}'", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let root = server_root();
    let uses_tls = store_connection_uses_tls_by(|db, app| {
        format!(
            "host={} port={port} user={user}{password} dbname={db} application_name={app} \
             sslmode=verify-ca sslrootcert='{root}'",
            host()
        )
    })
    .await;
    assert!(uses_tls);
}

/// A throwaway CA that signed nothing the server has.
fn unrelated_root() -> tempfile::NamedTempFile {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "callsign throwaway test CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), cert.pem()).expect("write CA");
    file
}

async fn connect_error(url: &str) -> String {
    match PostgresStore::connect(url, &PostgresOptions::default()).await {
        Ok(store) => {
            store.close().await;
            panic!("connected with {}", mask_database_url(url));
        }
        // Everything a caller printing the error and its sources would show.
        Err(e) => {
            let mut text = e.to_string();
            let mut next = std::error::Error::source(&e);
            while let Some(cause) = next {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                next = cause.source();
            }
            text
        }
    }
}

#[tokio::test]
async fn verify_full_refuses_a_server_not_signed_by_sslrootcert() {
    require_server_ssl(&admin().await).await;
    let ca = unrelated_root();
    let ca_path = ca.path().to_str().expect("utf-8 temp path").to_owned();
    let url = url(
        &host(),
        Some("s3cret"),
        "test",
        &format!("sslmode=verify-full&sslrootcert={ca_path}"),
    );
    let text = connect_error(&url).await;
    assert!(text.contains("sslmode=verify-full"), "{text}");
    assert!(text.contains("not trusted by sslrootcert"), "{text}");
    assert!(text.contains(&ca_path), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    // verify-ca checks the chain just the same.
    let url = url.replace("verify-full", "verify-ca");
    let text = connect_error(&url).await;
    assert!(text.contains("sslmode=verify-ca"), "{text}");
    assert!(text.contains("not trusted by sslrootcert"), "{text}");
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host_name() {
    require_server_ssl(&admin().await).await;
    // The snakeoil certificate names the machine (or localhost), never 127.0.0.1.
    let url = url(
        "127.0.0.1",
        Some("s3cret"),
        "test",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            percent_encode_path(&server_root())
        ),
    );
    let text = connect_error(&url).await;
    assert!(text.contains("sslmode=verify-full"), "{text}");
    assert!(text.contains("not valid for the host name"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn an_unknown_sslmode_is_a_clear_error() {
    let url = url(&host(), Some("s3cret"), "test", "sslmode=very-secure");
    let text = connect_error(&url).await;
    assert!(text.contains("unknown sslmode \"very-secure\""), "{text}");
    assert!(text.contains("verify-full"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn mask_hides_the_password_of_a_url() {
    assert_eq!(
        mask_database_url("postgres://postgres:s3cret@127.0.0.1:5432/test?sslmode=require"),
        "postgres://postgres:***@127.0.0.1:5432/test?sslmode=require"
    );
    assert_eq!(
        mask_database_url("postgresql://u:p%40ss%3A@h/db"),
        "postgresql://u:***@h/db"
    );
    // An unencoded `@` or `/` in the password.
    assert_eq!(
        mask_database_url("postgres://u:p@ss@h/db"),
        "postgres://u:***@h/db"
    );
    assert_eq!(
        mask_database_url("postgres://u:a/b?c@h/db"),
        "postgres://u:***@h/db"
    );
    // A password given as a parameter.
    assert_eq!(
        mask_database_url("postgres://u@h/db?password=s3cret&sslmode=disable&sslpassword=x"),
        "postgres://u@h/db?password=***&sslmode=disable&sslpassword=***"
    );
    // Nothing to hide.
    for url in [
        "postgres://u@h:5432/db",
        "postgres://h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        "postgresql://",
    ] {
        assert_eq!(mask_database_url(url), url);
    }
}

#[test]
fn mask_hides_the_password_of_a_key_value_string() {
    assert_eq!(
        mask_database_url("host=h user=u password=s3cret dbname=db"),
        "host=h user=u password=*** dbname=db"
    );
    assert_eq!(
        mask_database_url("host=h password='s3 cr\\'et' dbname=db"),
        "host=h password=*** dbname=db"
    );
    assert!(!mask_database_url("host=h password='s3cret").contains("s3cret"));
}

/// Percent-encodes what a URL query value cannot hold as it is.
fn percent_encode_path(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
