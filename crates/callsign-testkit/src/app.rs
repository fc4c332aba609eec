//! The real server, in process, on port 0 over either backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use callsign_core::{Clock, SystemClock};
use callsign_server::{Application, LocalCaPaths, Settings};
use callsign_store::{Database, PostgresOptions, PostgresStore, Store, open_embedded_store_with};
use tokio::sync::oneshot;

use crate::database::TestDatabase;
use crate::signing::{SigningClient, access_key};

/// Where a test server keeps its identities, resources and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite store in the server's temp data dir.
    Sqlite,
    /// PostgreSQL: a fresh database on the test server (see [`TestDatabase`]).
    Postgres,
}

/// A server on 127.0.0.1 port 0 with a fresh store, and a client signing with its primary key.
///
/// A `TestApp` is used as that client: it dereferences to its [`SigningClient`]. Dropping it
/// stops the server, removes its data dir and drops its database; [`TestApp::stop`] also checks
/// that the server ended cleanly.
pub struct TestApp {
    api: SigningClient,
    /// The backend the server runs on.
    pub backend: Backend,
    /// The default resource's id.
    pub resource_id: String,
    /// The default resource's primary access key (the one [`SigningClient::send`] signs with).
    pub primary_key: String,
    /// The default resource's secondary access key.
    pub secondary_key: String,
    /// `endpoint=…;accesskey=<primary key>`.
    pub connection_string: String,
    /// The server's data dir (TLS material; the SQLite store on [`Backend::Sqlite`]).
    pub data_dir: tempfile::TempDir,
    /// The server's database on [`Backend::Postgres`].
    pub database: Option<TestDatabase>,
    /// The store the server serves (shared with it): for what a store-side command does while
    /// the server runs, such as creating a resource.
    pub store: Arc<dyn Store>,
    /// The metrics listener's address, when the settings gave one (`metrics_listen`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl std::ops::Deref for TestApp {
    type Target = SigningClient;

    fn deref(&self) -> &SigningClient {
        &self.api
    }
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("endpoint", &self.api.endpoint)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Spawns a server with default settings on `backend`.
pub async fn spawn_app(backend: Backend) -> TestApp {
    TestApp::builder().backend(backend).spawn().await
}

type Configure = Box<dyn FnOnce(&mut Settings) + Send>;

/// How to start a [`TestApp`]: the backend, settings changes, the clock, a prepared store.
#[must_use = "nothing starts before `spawn`"]
pub struct AppBuilder {
    backend: Backend,
    configure: Configure,
    clock: Arc<dyn Clock>,
    data_dir: Option<tempfile::TempDir>,
    database: Option<TestDatabase>,
    /// Another node's database, shared and not owned: dropped with that node.
    shared_database: Option<String>,
}

impl AppBuilder {
    /// Runs the server on `backend` (SQLite unless told).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Changes the settings after the kit's own (listen on port 0, the data dir, the
    /// database) and before the server is built.
    pub fn settings(mut self, configure: impl FnOnce(&mut Settings) + Send + 'static) -> Self {
        self.configure = Box::new(configure);
        self
    }

    /// The server's clock (by default the system clock); requests are dated by it too.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses this data dir, prepared beforehand (seeded, say), instead of a new one.
    pub fn data_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// Runs on PostgreSQL over this database, prepared beforehand, instead of a new one.
    pub fn database(mut self, database: TestDatabase) -> Self {
        self.backend = Backend::Postgres;
        self.database = Some(database);
        self
    }

    /// Builds the server, starts serving and returns once it listens.
    pub async fn spawn(self) -> TestApp {
        let data_dir = match self.data_dir {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("temp dir"),
        };
        let database = match (self.backend, self.database, &self.shared_database) {
            (Backend::Sqlite, _, _) | (Backend::Postgres, None, Some(_)) => None,
            (Backend::Postgres, Some(db), _) => Some(db),
            (Backend::Postgres, None, None) => Some(TestDatabase::create().await),
        };
        let mut settings = Settings::new(data_dir.path());
        settings.listen = "127.0.0.1:0".parse().expect("addr");
        if let Some(url) = database
            .as_ref()
            .map(TestDatabase::url)
            .or(self.shared_database)
        {
            settings.database = Database::Postgres {
                url,
                options: PostgresOptions::default(),
            };
        }
        // Resources made during a test are picked up quickly (production polls every second).
        settings.resource_poll = std::time::Duration::from_millis(100);
        (self.configure)(&mut settings);
        let store = open_store(&settings).await;
        let app = Application::build_with(settings, Arc::clone(&store), Arc::clone(&self.clock))
            .await
            .expect("the server builds");
        let mut client = reqwest::Client::builder();
        if app.is_tls() {
            let ca = std::fs::read(ca_path(data_dir.path())).expect("the local CA");
            client = client.tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("pem")]);
        }
        let connection_string = app.connection_string();
        let metrics_addr = app.metrics_addr();
        let mut api = SigningClient::new(
            client.build().expect("client"),
            &app.endpoint(),
            &access_key(&connection_string),
        );
        api.clock = self.clock;
        let (tx, rx) = oneshot::channel();
        TestApp {
            backend: self.backend,
            resource_id: app.resource_id().to_string(),
            primary_key: api.key.clone(),
            secondary_key: access_key(&app.secondary_connection_string()),
            connection_string,
            api,
            server: Some(tokio::spawn(app.serve(async {
                let _ = rx.await;
            }))),
            shutdown: Some(tx),
            data_dir,
            database,
            store,
            metrics_addr,
        }
    }
}

/// The store `settings` name, opened as `Application::build` opens it.
async fn open_store(settings: &Settings) -> Arc<dyn Store> {
    let keys = settings.keys.clone();
    match &settings.database {
        Database::Embedded => Arc::new(
            open_embedded_store_with(&settings.data_dir, keys).expect("the embedded store opens"),
        ),
        Database::Postgres { url, options } => {
            let options = PostgresOptions {
                keys,
                ..options.clone()
            };
            Arc::new(
                PostgresStore::connect(url, &options)
                    .await
                    .expect("the PostgreSQL store opens"),
            )
        }
    }
}

fn ca_path(data_dir: &Path) -> PathBuf {
    LocalCaPaths::new(data_dir).ca_cert()
}

impl TestApp {
    /// A server started as the [`AppBuilder`] says.
    pub fn builder() -> AppBuilder {
        AppBuilder {
            backend: Backend::Sqlite,
            configure: Box::new(|_| {}),
            clock: Arc::new(SystemClock),
            data_dir: None,
            database: None,
            shared_database: None,
        }
    }

    /// A second node over this node's PostgreSQL database (its own data dir, port and clock
    /// from the system): several stateless nodes, as deployed. The database stays this node's.
    pub fn another_node(&self) -> AppBuilder {
        let db = self
            .database
            .as_ref()
            .expect("another node needs a node on PostgreSQL that owns its database");
        AppBuilder {
            backend: Backend::Postgres,
            shared_database: Some(db.url()),
            ..TestApp::builder()
        }
    }

    /// `http://ADDR/metrics` of the metrics listener, when the settings gave one
    /// (`s.metrics_listen = Some("127.0.0.1:0".parse()?)`).
    pub fn metrics_url(&self) -> Option<String> {
        self.metrics_addr.map(|a| format!("http://{a}/metrics"))
    }

    /// The local CA's certificate file (what clients trust).
    pub fn ca_path(&self) -> PathBuf {
        ca_path(self.data_dir.path())
    }

    /// The local CA's certificate, PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_path()).expect("the local CA")
    }

    /// How many identities the server's store holds (tombstones aside), read with SQL from its
    /// database on either backend: what a refused request must not have changed.
    pub async fn identity_count(&self) -> i64 {
        match &self.database {
            None => {
                assert_eq!(
                    self.backend,
                    Backend::Sqlite,
                    "count on the node that owns the database"
                );
                let conn = rusqlite::Connection::open_with_flags(
                    callsign_store::database_path(self.data_dir.path()),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .expect("open the SQLite database");
                conn.query_row("SELECT count(*) FROM identities", [], |r| r.get(0))
                    .expect("count identities")
            }
            Some(db) => db
                .connect()
                .await
                .query_one("SELECT count(*) FROM callsign_identities", &[])
                .await
                .expect("count identities")
                .get(0),
        }
    }

    /// A client of this server at `endpoint` (its own, or `https://localhost:PORT/` for a
    /// resource routed by the host name `localhost`) signing with `key`.
    pub fn client_with(&self, endpoint: &str, key: &str) -> SigningClient {
        let mut api = SigningClient::new(self.api.client.clone(), endpoint, key);
        api.clock = Arc::clone(&self.api.clock);
        api
    }

    /// The server's endpoint with `localhost` for its address: the endpoint of a resource whose
    /// host name is `localhost`.
    pub fn localhost_endpoint(&self) -> String {
        let port = self
            .api
            .endpoint
            .rsplit_once(':')
            .expect("endpoint with a port")
            .1;
        let scheme = self.api.endpoint.split_once("://").expect("scheme").0;
        format!("{scheme}://localhost:{port}")
    }

    /// Creates a resource in the store, as `callsign resource create` does while the server
    /// runs, and waits until the server serves it (it polls the store). Returns the resource and
    /// a client signing with its primary key at `endpoint`.
    pub async fn add_resource(
        &self,
        name: &str,
        host: Option<&str>,
    ) -> (callsign_store::ResourceRecord, SigningClient) {
        let record = callsign_store::ResourceRecord::generate(
            callsign_core::ResourceName::parse(name).expect("a resource name"),
            host.map(|h| callsign_core::HostName::parse(h).expect("a host name")),
            self.api.clock.now(),
        );
        let created = self
            .store
            .create_resource(record.clone(), &callsign_store::Actor::operator())
            .await
            .expect("create the resource");
        assert_eq!(created, callsign_store::ResourceCreated::Created);
        let endpoint = match host {
            Some(_) => self.localhost_endpoint(),
            None => self.api.endpoint.clone(),
        };
        let client = self.client_with(&endpoint, record.primary_key.expose());
        client.wait_until_accepted().await;
        (record, client)
    }

    /// The audit log of the server's store, every record in sequence order.
    ///
    /// The record of the deployment's own beginning (the default resource, created by the node
    /// at its first start) is left out: these are the records of what a test did.
    pub async fn audit_records(&self) -> Vec<callsign_store::AuditRecord> {
        let query = callsign_store::AuditQuery {
            limit: 1_000_000,
            ..callsign_store::AuditQuery::default()
        };
        let mut records = self
            .store
            .audit_records(&query)
            .await
            .expect("audit records");
        records.retain(|r| {
            !(r.operation == callsign_store::AuditOperation::CreateResource
                && r.credential == callsign_store::Credential::Node)
        });
        records
    }

    /// Stops the server as SIGTERM would and checks it ended cleanly.
    pub async fn stop(mut self) {
        self.stop_cleanly().await;
    }

    async fn stop_cleanly(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("join the server")
                .expect("clean shutdown");
        }
    }

    /// Stops the server cleanly and keeps what it stored: the builder of the same server
    /// (data dir, database, clock) to start again, on a new port, as a restarted process.
    pub async fn stop_keeping_data(mut self) -> AppBuilder {
        self.stop_cleanly().await;
        let placeholder = tempfile::tempdir().expect("temp dir");
        AppBuilder {
            backend: self.backend,
            clock: Arc::clone(&self.api.clock),
            data_dir: Some(std::mem::replace(&mut self.data_dir, placeholder)),
            database: self.database.take(),
            ..TestApp::builder()
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
