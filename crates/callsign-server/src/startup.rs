//! Building one server instance: settings → [`Application::build`] (store, resource, keys,
//! TLS, listener) → [`Application::serve`].

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use callsign_api::connection_string;
use callsign_core::token::Issuer;
use callsign_core::{Clock, ResourceId, SystemClock};
use callsign_store::{
    Database, KeyMaterialStore, KeyProtection, PostgresOptions, ResourceRecord, Store,
    StoreLocation, ensure_default_resource, ensure_default_resource_as,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::Authenticator;
use crate::connection::{ConnectionLimits, Connections};
use crate::serve::Serving;
use crate::settings::Settings;
use crate::state::AppState;
use crate::tls;

/// A bound, ready-to-serve instance.
pub struct Application {
    listener: TcpListener,
    /// The metrics listener (`--metrics-listen`), when there is one.
    metrics_listener: Option<TcpListener>,
    conns: Arc<Connections>,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    resource: ResourceRecord,
    first_start: bool,
    shutdown_grace: Duration,
    limits: ConnectionLimits,
    resource_poll: Duration,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.listener.local_addr().ok())
            .field("metrics_addr", &self.metrics_addr())
            .field("resource", &self.resource.id)
            .finish_non_exhaustive()
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
        callsign_store::secure_data_dir(&settings.data_dir)?;
        let (resource, first_start) = match settings.default_resource.clone() {
            Some(fixed) => ensure_default_resource_as(store.as_ref(), fixed).await?,
            None => ensure_default_resource(store.as_ref(), clock.as_ref()).await?,
        };
        if !settings.ephemeral {
            warn_about_sealing(store.as_ref(), &settings.keys).await;
        }
        let signer = crate::keys::Signer {
            alg: settings.signing_alg,
            issuer: settings
                .issuer
                .clone()
                .map_or(Issuer::PerResource, Issuer::Fixed),
            location: settings.location.clone(),
            rotation: settings.signing_key_rotation,
            refresh_every: settings.key_refresh,
        };
        let keys = crate::keys::bootstrap(store.as_ref(), signer, clock.as_ref()).await?;

        let tls_config = tls::server_config(&settings.tls, &settings.data_dir, clock.now())?;
        let authenticator = Authenticator::new(
            settings.public_hosts.clone(),
            tls_config.is_some(),
            Duration::from_secs(15 * 60),
        );
        let resources = crate::resources::Resources::load(store.as_ref()).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let metrics_listener = bind_metrics(settings.metrics_listen).await?;
        let conns = Arc::new(crate::serve::connection_cap(&settings.limits));
        let metrics = (metrics_listener.is_some() || settings.console).then(|| {
            crate::metrics::Metrics::new(
                Arc::clone(&store) as Arc<dyn callsign_store::StoreHealth>,
                Arc::clone(&conns),
            )
        });
        let state = Arc::new(AppState {
            store,
            authenticator,
            resources,
            keys,
            clock,
            max_body_bytes: settings.max_body_bytes,
            limits: settings.limits.clone(),
            throttle: crate::throttle::Throttle::new(settings.throttle.clone()),
            auth_failures: crate::throttle::AuthFailures::new(settings.auth_failures_per_minute),
            readiness: crate::meta::Readiness::default(),
            outage_log: crate::state::OutageLog::default(),
            audit_retention: settings.audit_retention,
            audit_token_issue: settings.audit_token_issue,
            waiters: Arc::new(crate::feed::Waiters::new(settings.revocation_feed.clone())),
            issuers: crate::oidc::Issuers::new(settings.oidc_issuers.clone())?,
            metrics,
            console: settings.console.then(|| crate::console::Console {
                logouts: crate::console::Logouts::default(),
                tls: tls_config.is_some(),
                default_resource: resource.id,
            }),
        });
        tracing::info!(throttle = %settings.throttle.describe(), auth_failures_per_minute = settings.auth_failures_per_minute, "request limits set");
        Ok(Self {
            listener,
            metrics_listener,
            conns,
            state,
            tls: tls_config.map(TlsAcceptor::from),
            resource,
            first_start,
            shutdown_grace: settings.shutdown_grace,
            limits: settings.limits.clone(),
            resource_poll: settings.resource_poll,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// The metrics listener's bound address (`--metrics-listen`); `None` when metrics are off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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
        connection_string::endpoint_for(self.local_addr(), self.is_tls())
    }

    /// The connection string with the primary key. A secret: print it, never log it.
    pub fn connection_string(&self) -> String {
        connection_string::format(&self.endpoint(), self.resource.primary_key.expose())
    }

    /// The connection string with the secondary key.
    pub fn secondary_connection_string(&self) -> String {
        connection_string::format(&self.endpoint(), self.resource.secondary_key.expose())
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
        let serving = Serving {
            state: self.state,
            tls: self.tls,
            limits: self.limits,
            conns: self.conns,
            shutdown_grace: self.shutdown_grace,
            resource_poll: self.resource_poll,
            metrics: self.metrics_listener,
        };
        crate::serve::run(self.listener, serving, shutdown).await
    }
}

/// The metrics listener, bound at build time (port 0 allowed), when one is asked for.
async fn bind_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    Ok(Some(listener))
}

/// Warns when keys are stored unsealed, or some are left unsealed under a master key.
async fn warn_about_sealing(store: &dyn KeyMaterialStore, keys: &KeyProtection) {
    match store.seal_status().await {
        Ok(status) if !keys.is_sealed() && status.sealed == 0 => tracing::warn!(
            "access keys and signing keys are stored unsealed: a copy of the store can mint \
             tokens; seal them with a master key (callsign seal --master-key-file FILE)"
        ),
        Ok(status) if keys.is_sealed() && status.plain > 0 => tracing::warn!(
            plain = status.plain,
            "some keys are not sealed yet; run callsign seal with this master key"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e.chain(), "cannot tell whether the keys are sealed"),
    }
}
