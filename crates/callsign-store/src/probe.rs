//! A read-only look at a store, for `callsign doctor`: can it be reached, which schema version
//! it holds, whether the connection is encrypted, how far the database's clock is from ours.
//!
//! Unlike [`StoreLocation::open`](crate::StoreLocation::open), nothing here creates a data dir
//! or a database, tightens a permission, takes a lock or applies a migration.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use tokio_postgres::config::Host;

use crate::pg_tls::{self, with_causes};
use crate::{PostgresStore, SqliteStore, StoreError, database_path};

/// How far a store's schema is from the one this binary knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion {
    /// Migrations applied to the store (0: none yet).
    pub applied: i64,
    /// Migrations this binary knows.
    pub latest: i64,
}

/// What a look at a PostgreSQL database found.
#[derive(Debug, Clone)]
pub struct PostgresProbe {
    /// `host:port` of the server (never the URL: it may hold a password).
    pub target: String,
    /// The `sslmode` in force (`prefer` when the URL names none).
    pub sslmode: String,
    /// Whether this connection is encrypted (the server's own `pg_stat_ssl` says).
    pub tls: bool,
    /// Whether the server certificate was checked (`verify-ca`, `verify-full`, or `require`
    /// with a root certificate file).
    pub certificate_checked: bool,
    /// Whether every host of the URL is a loopback address, `localhost` or a Unix socket.
    pub local: bool,
    /// The database's clock less ours, in seconds (ours taken halfway through the query).
    pub clock_offset_secs: f64,
    /// How long the clock query took.
    pub round_trip: Duration,
    /// The schema version (`applied` 0 when callsign never ran on the database).
    pub schema: SchemaVersion,
}

/// Opens the embedded database of `data_dir` read-only and reads its schema version; an error
/// when there is none or it is not a callsign database.
pub fn probe_embedded(data_dir: &Path) -> Result<SchemaVersion, StoreError> {
    let path = database_path(data_dir);
    if !path.is_file() {
        return Err(StoreError::unavailable(format!(
            "there is no database at {}",
            path.display()
        )));
    }
    let failed = |e: rusqlite::Error| {
        StoreError::backend(format!("cannot read the database {}", path.display())).caused_by(e)
    };
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    conn.busy_timeout(Duration::from_secs(2)).map_err(failed)?;
    // Reading the schema proves the file is a database (a stray file fails here).
    let _tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(failed)?;
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(failed)?;
    Ok(SchemaVersion {
        applied,
        latest: SqliteStore::latest_migration(),
    })
}

/// Connects to the database at `url` as the server would (the URL's `sslmode` and
/// `sslrootcert`), asks for its clock, whether the connection is encrypted and its schema
/// version, and disconnects. Errors name the host and say what failed, never the password.
pub async fn probe_postgres(url: &str, timeout: Duration) -> Result<PostgresProbe, StoreError> {
    let (mut config, tls) = pg_tls::configure(url)?;
    config.connect_timeout(timeout);
    if config.get_application_name().is_none() {
        config.application_name("callsign doctor");
    }
    let local = is_local(&config);
    let target = tls.target().to_owned();
    let connected = tokio::time::timeout(timeout, config.connect(tls.connector()))
        .await
        .map_err(|_| {
            StoreError::unavailable(format!(
                "cannot connect to PostgreSQL at {target}: no answer within {} ms",
                timeout.as_millis()
            ))
        })?;
    let (client, connection) = connected.map_err(|e| {
        if let Some(message) = tls.explain(&e) {
            return StoreError::backend(message);
        }
        match e.as_db_error() {
            // What the server answered (authentication, unknown database): its message alone.
            Some(db) => StoreError::backend(format!(
                "PostgreSQL at {target} refused the connection: {}",
                db.message()
            )),
            None => StoreError::unavailable(format!(
                "cannot connect to PostgreSQL at {target}: {}",
                with_causes(&e)
            )),
        }
    })?;
    let driver = tokio::spawn(connection);
    let result = tokio::time::timeout(timeout, query(&client)).await;
    drop(client);
    driver.abort();
    let (clock_offset_secs, round_trip, encrypted, applied) = result
        .map_err(|_| {
            StoreError::unavailable(format!(
                "PostgreSQL at {target} did not answer within {} ms",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| {
            let why = e
                .as_db_error()
                .map_or_else(|| with_causes(&e), |db| db.message().to_owned());
            StoreError::backend(format!("PostgreSQL at {target}: {why}"))
        })?;
    Ok(PostgresProbe {
        target,
        sslmode: tls.mode().to_string(),
        tls: encrypted,
        certificate_checked: tls.checks_certificate(),
        local,
        clock_offset_secs,
        round_trip,
        schema: SchemaVersion {
            applied,
            latest: i64::from(PostgresStore::latest_migration()),
        },
    })
}

/// The clock offset (seconds), the round trip, whether the connection is encrypted, and the
/// applied schema version.
async fn query(
    client: &tokio_postgres::Client,
) -> Result<(f64, Duration, bool, i64), tokio_postgres::Error> {
    let before = SystemTime::now();
    let started = Instant::now();
    let row = client
        .query_one(
            "SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8, \
                    COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
                    to_regclass('callsign_schema_migrations') IS NOT NULL",
            &[],
        )
        .await?;
    let round_trip = started.elapsed();
    let server: f64 = row.get(0);
    let ours = before.duration_since(UNIX_EPOCH).unwrap_or_default() + round_trip / 2;
    let encrypted: bool = row.get(1);
    let has_schema: bool = row.get(2);
    let applied = if has_schema {
        client
            .query_one(
                "SELECT COALESCE(max(version), 0)::int8 FROM callsign_schema_migrations",
                &[],
            )
            .await?
            .get(0)
    } else {
        0
    };
    Ok((server - ours.as_secs_f64(), round_trip, encrypted, applied))
}

/// Whether every host of `config` is on this machine: a loopback address, `localhost` or a Unix
/// socket (traffic to them never crosses a network).
fn is_local(config: &tokio_postgres::Config) -> bool {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    if hosts.is_empty() && addrs.is_empty() {
        return false;
    }
    let host_local = |h: &Host| match h {
        Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    };
    // A host address, when given, is what is connected to.
    if !addrs.is_empty() {
        return addrs.iter().all(IpAddr::is_loopback);
    }
    hosts.iter().all(host_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(url: &str) -> bool {
        is_local(&url.parse::<tokio_postgres::Config>().expect("parses"))
    }

    #[test]
    fn loopback_hosts_and_sockets_are_local_others_not() {
        assert!(local("postgres://u@127.0.0.1:5432/db"));
        assert!(local("postgres://u@localhost/db"));
        assert!(local("postgres://u@[::1]:5432/db"));
        assert!(local("host=/var/run/postgresql user=u"));
        assert!(!local("postgres://u@db.internal/db"));
        assert!(!local("postgres://u@10.0.0.5/db"));
        assert!(!local("postgres://u@127.0.0.1,db.internal/db"));
    }

    #[test]
    fn a_missing_embedded_database_is_an_error_and_nothing_is_created() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let err = probe_embedded(&data).expect_err("no database");
        assert!(err.to_string().contains("no database"), "{err}");
        assert!(!data.exists());
    }

    #[test]
    fn an_embedded_store_reports_its_schema_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::open_embedded_store(dir.path()).expect("opens");
        drop(store);
        let version = probe_embedded(dir.path()).expect("probes");
        assert_eq!(version.applied, version.latest);
        assert!(version.latest > 0);
    }
}
