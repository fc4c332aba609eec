//! A fresh PostgreSQL database per test.

use tokio_postgres::config::Host;

/// The variable naming the PostgreSQL server tests create their databases on.
const URL_VAR: &str = "CALLSIGN_TEST_DATABASE_URL";

/// The server tests use when [`URL_VAR`] is unset: the local one `scripts/test.sh` starts.
const LOCAL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The URL of the test server's maintenance database: `CALLSIGN_TEST_DATABASE_URL`, or the local
/// default `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn admin_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| LOCAL_DEFAULT.into())
}

/// A new, empty database on the test server, with a unique name; dropped (with any session
/// still connected to it) when this value is dropped, also when the test fails.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestDatabase {
    /// Creates the database. Panics when the test server cannot be reached: a suite that needs
    /// PostgreSQL fails rather than skips.
    pub async fn create() -> TestDatabase {
        let admin_url = admin_url();
        let config: tokio_postgres::Config = admin_url
            .parse()
            .unwrap_or_else(|e| panic!("{URL_VAR} is not a PostgreSQL URL: {e}"));
        let name = format!("callsign_test_{}", uuid::Uuid::new_v4().simple());
        connect_postgres(&admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create the test database");
        TestDatabase {
            host: match config.get_hosts().first() {
                Some(Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".into(),
            },
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_owned(),
            password: config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            admin_url,
            name,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        self.url_via(&self.host, self.port)
    }

    /// The URL of this database reached through `host:port` instead (a relay, or the same
    /// server under another name).
    pub fn url_via(&self, host: &str, port: u16) -> String {
        let user = &self.user;
        match &self.password {
            Some(p) => format!("postgres://{user}:{p}@{host}:{port}/{}", self.name),
            None => format!("postgres://{user}@{host}:{port}/{}", self.name),
        }
    }

    /// The test server's host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The test server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A plain (no TLS) connection to this database, for checks in SQL.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect_postgres(&self.url()).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime (which must not be blocked on) or outside any: the drop
        // gets a thread and a runtime of its own either way.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                connect_postgres(&admin_url)
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
            })
        })
        .join();
        // A failed drop leaves a database behind but must not hide the test's own outcome.
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop test database {}: {e}", self.name);
        }
    }
}

/// A plain (no TLS) connection to `url`, its connection task spawned on the current runtime.
/// Panics when the server cannot be reached: a suite that needs PostgreSQL fails rather than
/// skips.
pub async fn connect_postgres(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL must be running for this test (see scripts/test.sh): {e}")
        });
    tokio::spawn(conn);
    client
}
