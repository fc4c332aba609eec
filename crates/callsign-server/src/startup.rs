//! Building and running one server instance.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use callsign_core::token::{Algorithm, TokenIssuer};
use callsign_core::{AccessKey, Clock, ResourceId, SystemClock};
use callsign_hmac::AccessKeyMac;
use callsign_store::{
    BulkStore, KeyProtection, PostgresOptions, PostgresStore, ResourceRecord, ResourceStore,
    SqliteStore, Store,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::Authenticator;
use crate::connection::{ConnState, ConnectionLimits, Connections, Counted};
use crate::state::AppState;
use crate::tls::{self, TlsMode};

/// Where identities, resources and keys are kept.
#[derive(Clone)]
pub enum Database {
    /// SQLite in the data dir (the default).
    Embedded,
    /// A PostgreSQL database shared by any number of nodes.
    Postgres {
        /// `postgres://user[:password]@host[:port]/database`
        url: String,
        /// Pool and timeouts.
        options: PostgresOptions,
    },
}

/// A store named on the command line: a data dir or a `postgres://` URL.
#[derive(Clone)]
pub enum StoreLocation {
    /// The embedded store of this data dir.
    DataDir(PathBuf),
    /// A PostgreSQL database.
    Postgres(String),
}

// Debug shows database URLs with their password masked.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Embedded => f.write_str("Embedded"),
            Database::Postgres { url, options } => f
                .debug_struct("Postgres")
                .field("url", &callsign_store::mask_database_url(url))
                .field("options", options)
                .finish(),
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::DataDir(dir) => f.debug_tuple("DataDir").field(dir).finish(),
            StoreLocation::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&callsign_store::mask_database_url(url))
                .finish(),
        }
    }
}

impl StoreLocation {
    /// `postgres://…` or `postgresql://…` is a database; anything else shaped like a URL
    /// (`<scheme>://…`, the scheme made of letters, digits, `+`, `-` and `.`) is an error, so
    /// that a mistyped scheme is not taken for a data dir; anything else is a data dir.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(s.to_owned()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            {
                // Only the scheme is quoted: the rest may hold a password.
                anyhow::bail!(
                    "unknown scheme '{scheme}' in '{scheme}://…' (a data dir path or postgres://…)"
                );
            }
        }
        Ok(StoreLocation::DataDir(PathBuf::from(s)))
    }

    /// Opens (creating and migrating as needed) the store, its key material protected as
    /// `keys` says.
    pub async fn open(
        &self,
        options: &PostgresOptions,
        keys: KeyProtection,
    ) -> anyhow::Result<Arc<dyn BulkStore>> {
        Ok(match self {
            StoreLocation::DataDir(dir) => Arc::new(open_embedded_store_with(dir, keys)?),
            StoreLocation::Postgres(url) => {
                let options = PostgresOptions {
                    keys,
                    ..options.clone()
                };
                Arc::new(
                    PostgresStore::connect(url, &options)
                        .await
                        .context("cannot open the PostgreSQL database")?,
                )
            }
        })
    }
}

/// Everything `callsign serve` can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the embedded database and TLS material live.
    pub data_dir: PathBuf,
    /// The store.
    pub database: Database,
    /// TLS source.
    pub tls: TlsMode,
    /// Algorithm of new tokens.
    pub signing_alg: Algorithm,
    /// The `resourceLocation` claim.
    pub location: String,
    /// The `iss` claim; defaults to `urn:callsign:<resourceId>`.
    pub issuer: Option<String>,
    /// Extra `host[:port]` values clients may sign (a proxy's public name).
    pub public_hosts: Vec<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Connection deadlines and caps.
    pub limits: ConnectionLimits,
    /// Whether access keys and signing keys are sealed under a master key.
    pub keys: KeyProtection,
    /// Throttling per resource and operation class (off by default).
    pub throttle: crate::throttle::ThrottleConfig,
    /// Failed authentications one client address may make per minute before it gets 429
    /// (0: no limit).
    pub auth_failures_per_minute: u32,
}

impl Settings {
    /// The defaults, with the data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8443)),
            data_dir: data_dir.into(),
            database: Database::Embedded,
            tls: TlsMode::LocalCa {
                extra_names: Vec::new(),
            },
            signing_alg: Algorithm::Es256,
            location: "local".into(),
            issuer: None,
            public_hosts: Vec::new(),
            max_body_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            limits: ConnectionLimits::default(),
            keys: KeyProtection::plain(),
            throttle: crate::throttle::ThrottleConfig::off(),
            auth_failures_per_minute: 60,
        }
    }
}

/// Where the embedded database lives in a data dir.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("callsign.db")
}

/// The HTTP/1 and HTTP/2 settings that bound a connection's work (see [`ConnectionLimits`]).
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper (h2: the peer, told by SETTINGS) refuses heads over twice the limit while reading
        // them, with a bare 431; the dispatcher refuses heads over the limit proper with the ACS
        // error body (see `http.rs`), so the buffer a client can fill stays bounded.
        .max_buf_size((limits.max_head_bytes * 2).max(8192))
        .max_headers((limits.max_headers * 2).max(100));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_head_bytes * 2).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(None);
    builder
}

/// Reloads the signing keys from the store every `REFRESH_EVERY` (other nodes may add some).
fn spawn_key_refresher(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::keys::REFRESH_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = state.keys.refresh(state.store.as_ref()).await {
                tracing::warn!(error = %e.chain(), "could not reload the signing keys");
            }
        }
    })
}

/// One accepted connection, from its TLS handshake (when TLS is on) to its close; its place
/// under the cap is held until then.
async fn connection_task(
    admitted: crate::connection::Admitted,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: Counted<TowerToHyperService<axum::Router>>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
) {
    let state = Arc::clone(&admitted.state);
    match tls {
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)) => r,
                () = state.expired(&limits) => return,
            };
            let Ok(Ok(stream)) = handshake else {
                tracing::debug!(%peer, "TLS handshake failed or timed out");
                return;
            };
            serve_connection(&builder, stream, service, &state, &limits).await;
        }
        None => serve_connection(&builder, stream, service, &state, &limits).await,
    }
    drop(admitted);
}

/// Serves one connection until it ends, its deadline passes or it is asked to close; then
/// closes gracefully (HTTP/2 GOAWAY) and, if the peer does not finish within a few seconds,
/// drops it.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: Counted<TowerToHyperService<axum::Router>>,
    state: &ConnState,
    limits: &ConnectionLimits,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        () = state.expired(limits) => {}
    }
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(state.close_grace(), conn)
        .await
        .is_err()
    {
        tracing::debug!("connection did not close in time; dropped");
    }
}

/// Accept failures (EMFILE, ENFILE, ...): exponential backoff from 10 ms to 1 s, counted, logged
/// at most once a second.
#[derive(Debug, Default)]
struct AcceptBackoff {
    consecutive: u32,
    total: u64,
    last_log: Option<std::time::Instant>,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.consecutive = 0;
    }

    async fn failed(&mut self, e: &std::io::Error) {
        self.total += 1;
        self.consecutive = self.consecutive.saturating_add(1);
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(error = %e, failures = self.total, "accept failed; backing off");
            self.last_log = Some(std::time::Instant::now());
        }
        let exp = self.consecutive.min(7);
        let delay = Duration::from_millis(10 * (1u64 << exp)).min(Duration::from_secs(1));
        tokio::time::sleep(delay).await;
    }
}

/// A bound, ready-to-serve instance.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    resource: ResourceRecord,
    first_start: bool,
    shutdown_grace: Duration,
    limits: ConnectionLimits,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.listener.local_addr().ok())
            .field("resource", &self.resource.id)
            .finish_non_exhaustive()
    }
}

/// Opens the embedded store of a data dir (creating it if needed), keys in plain text.
pub fn open_embedded_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    open_embedded_store_with(data_dir, KeyProtection::plain())
}

/// Opens the embedded store of a data dir (creating it if needed), keys protected as `keys`
/// says.
pub fn open_embedded_store_with(
    data_dir: &Path,
    keys: KeyProtection,
) -> anyhow::Result<SqliteStore> {
    crate::files::secure_data_dir(data_dir)?;
    let path = database_path(data_dir);
    crate::files::create_private_file(&path)?;
    let store = SqliteStore::open_with(&path, keys)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    // The WAL and SHM files exist now; an older deployment may have left them readable.
    crate::files::secure_data_dir(data_dir)?;
    Ok(store)
}

/// The default resource, created on first use. Returns it and whether it was just created.
pub async fn ensure_default_resource(
    store: &dyn ResourceStore,
    clock: &dyn Clock,
) -> anyhow::Result<(ResourceRecord, bool)> {
    if let Some(r) = store.default_resource().await? {
        return Ok((r, false));
    }
    let candidate = ResourceRecord {
        id: ResourceId::new_random(),
        primary_key: AccessKey::generate(),
        secondary_key: AccessKey::generate(),
        created_at: clock.now(),
    };
    let winner = store.bootstrap_default_resource(candidate.clone()).await?;
    let created = winner.id == candidate.id;
    Ok((winner, created))
}

/// The connection string for `resource` at `endpoint` (which should end with `/`).
pub fn connection_string(endpoint: &str, key: &AccessKey) -> String {
    format!("endpoint={endpoint};accesskey={}", key.expose())
}

/// The URL clients should use for a listener on `addr`.
pub fn endpoint_for(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match host {
        IpAddr::V4(ip) => format!("{scheme}://{ip}:{}/", addr.port()),
        IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}/", addr.port()),
    }
}

impl Application {
    /// Opens the configured store and builds the instance.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (location, options) = match &settings.database {
            Database::Embedded => (
                StoreLocation::DataDir(settings.data_dir.clone()),
                PostgresOptions::default(),
            ),
            Database::Postgres { url, options } => {
                (StoreLocation::Postgres(url.clone()), options.clone())
            }
        };
        let store = location.open(&options, settings.keys.clone()).await?;
        Self::build_with(settings, store, Arc::new(SystemClock)).await
    }

    /// Builds the instance over `store` with `clock`: bootstraps the resource and keys, prepares
    /// TLS and binds the listener.
    pub async fn build_with(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        crate::files::secure_data_dir(&settings.data_dir)?;
        let (resource, first_start) =
            ensure_default_resource(store.as_ref(), clock.as_ref()).await?;
        match store.seal_status().await {
            Ok(status) if !settings.keys.is_sealed() && status.sealed == 0 => tracing::warn!(
                "access keys and signing keys are stored unsealed: a copy of the store can mint \
                 tokens; seal them with a master key (callsign seal --master-key-file FILE)"
            ),
            Ok(status) if settings.keys.is_sealed() && status.plain > 0 => tracing::warn!(
                plain = status.plain,
                "some keys are not sealed yet; run callsign seal with this master key"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "cannot tell whether the keys are sealed"),
        }
        let (active, keys) =
            crate::keys::bootstrap(store.as_ref(), settings.signing_alg, clock.as_ref()).await?;
        let issuer_name = settings
            .issuer
            .clone()
            .unwrap_or_else(|| format!("urn:callsign:{}", resource.id));
        let issuer = TokenIssuer::new(active, &issuer_name, &settings.location)?;

        let tls_config = tls::server_config(&settings.tls, &settings.data_dir, clock.now())?;
        let macs = [&resource.primary_key, &resource.secondary_key]
            .into_iter()
            .map(|k| AccessKeyMac::from_base64(k.expose()))
            .collect::<Result<Vec<_>, _>>()?;
        let authenticator = Authenticator::new(
            resource.id,
            macs,
            settings.public_hosts.clone(),
            tls_config.is_some(),
            Duration::from_secs(15 * 60),
        );
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let state = Arc::new(AppState {
            store,
            authenticator,
            issuer,
            keys,
            clock,
            max_body_bytes: settings.max_body_bytes,
            limits: settings.limits.clone(),
            throttle: crate::throttle::Throttle::new(settings.throttle.clone()),
            auth_failures: crate::throttle::AuthFailures::new(settings.auth_failures_per_minute),
            readiness: crate::meta::Readiness::default(),
            outage_log: crate::state::OutageLog::default(),
        });
        tracing::info!(throttle = %settings.throttle.describe(), auth_failures_per_minute = settings.auth_failures_per_minute, "request limits set");
        Ok(Self {
            listener,
            state,
            tls: tls_config.map(TlsAcceptor::from),
            resource,
            first_start,
            shutdown_grace: settings.shutdown_grace,
            limits: settings.limits.clone(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Whether the server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URL clients use.
    pub fn endpoint(&self) -> String {
        endpoint_for(self.local_addr(), self.is_tls())
    }

    /// The connection string with the primary key. A secret: print it, never log it.
    pub fn connection_string(&self) -> String {
        connection_string(&self.endpoint(), &self.resource.primary_key)
    }

    /// The connection string with the secondary key.
    pub fn secondary_connection_string(&self) -> String {
        connection_string(&self.endpoint(), &self.resource.secondary_key)
    }

    /// The default resource's id.
    pub fn resource_id(&self) -> ResourceId {
        self.resource.id
    }

    /// Whether this start created the resource.
    pub fn first_start(&self) -> bool {
        self.first_start
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// (up to the grace period) and closes the store.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            tls,
            shutdown_grace,
            limits,
            ..
        } = self;
        let refresher = spawn_key_refresher(Arc::clone(&state));
        let service = TowerToHyperService::new(crate::http::router(Arc::clone(&state)));
        let builder = http_builder(&limits);
        let nofile = crate::connection::raise_nofile_limit();
        let conns = Arc::new(Connections::new(
            crate::connection::derive_cap(limits.max_connections, nofile),
            limits.max_connections_per_address,
        ));
        tracing::info!(
            max_connections = conns.max(),
            per_address = limits.max_connections_per_address,
            nofile = nofile.unwrap_or(0),
            "connection cap set"
        );
        tokio::pin!(shutdown);
        let mut backoff = AcceptBackoff::default();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => {
                        backoff.reset();
                        conn
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        backoff.failed(&e).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Some(admitted) = conns.admit(peer.ip()) else {
                // At the cap with every connection busy, or this address holds its share:
                // refuse at once (the socket closes).
                tracing::debug!(%peer, "connection refused at the cap");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = Counted::new(service.clone(), Arc::clone(&admitted.state), peer);
            tokio::spawn(connection_task(
                admitted,
                stream,
                peer,
                service,
                builder.clone(),
                tls.clone(),
                limits.clone(),
            ));
        }
        drop(listener);
        tracing::info!(
            open = conns.len(),
            "shutting down: draining in-flight requests"
        );
        conns.close_all(shutdown_grace);
        tokio::select! {
            () = conns.drained() => {}
            () = tokio::time::sleep(shutdown_grace) => {
                tracing::warn!("grace period over; closing remaining connections");
            }
        }
        refresher.abort();
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_masked_in_debug_output() {
        let url = "postgres://callsign:hunter2@db.internal/callsign?sslmode=require";
        let shown = format!(
            "{:?} {:?}",
            StoreLocation::Postgres(url.into()),
            Database::Postgres {
                url: url.into(),
                options: PostgresOptions::default()
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
    }
}
