//! Prometheus metrics: what the node recorded, served as text on a listener of its own
//! (`--metrics-listen`, off by default), never on the API's.
//!
//! One registry per instance (`prometheus-client`, no global recorder): tests run many servers
//! in one process and each counts only its own traffic. Without `--metrics-listen` nothing is
//! recorded at all ([`AppState::metrics`](crate::state::AppState) is `None`).
//!
//! The request path pays a few atomics and one hash-map read per request: labels are
//! `&'static str` and integers, never a string made per request, and their values come from
//! fixed sets (route names, status codes, the served api-versions plus `none` and `invalid`,
//! scope names, store operations), so no client can grow the number of series.
//!
//! Values that exist anyway (open connections, the store's pool) are read when scraped, by a
//! [`Collector`], rather than kept up to date on every change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use callsign_api::Scope;
use callsign_core::Scopes;
use callsign_store::StoreHealth;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::connection::{ConnectionLimits, Connections};
use crate::error::ApiError;
use crate::state::AppState;
use crate::version::ApiVersion;

/// Upper bounds (seconds) of the request latency buckets: 0.5 ms to a minute (long-polls of the
/// revocation feed are requests too).
const REQUEST_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Upper bounds (seconds) of the store latency buckets: 50 µs (a pooled SQLite read) to 5 s
/// (PostgreSQL's statement timeout).
const STORE_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// The labels of a request count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
    api_version: &'static str,
}

/// The label of a request latency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

/// The label of an issued-token count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ScopeLabel {
    scope: &'static str,
}

/// The label of a store latency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// The label of a pool's connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The build's version, as `callsign_build_info{version}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A store call the server times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    CreateIdentity,
    GetIdentity,
    ListIdentities,
    RevokeTokens,
    DeleteIdentity,
    RecordAudit,
}

impl StoreOp {
    /// The `operation` label.
    fn as_str(self) -> &'static str {
        match self {
            StoreOp::CreateIdentity => "create_identity",
            StoreOp::GetIdentity => "get_identity",
            StoreOp::ListIdentities => "list_identities",
            StoreOp::RevokeTokens => "revoke_tokens",
            StoreOp::DeleteIdentity => "delete_identity",
            StoreOp::RecordAudit => "record_audit",
        }
    }
}

/// The route and api-version a request is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestKind {
    /// The route's name (`create`, `issue`, …; `unmatched` before routing, `panicked`).
    pub(crate) route: &'static str,
    /// The api-version it named; `none` when it named none or the route is unversioned,
    /// `invalid` when it names no served version.
    pub(crate) api_version: &'static str,
}

impl RequestKind {
    /// A request refused before (or without) reading its api-version.
    pub(crate) const fn unversioned(route: &'static str) -> Self {
        Self {
            route,
            api_version: "none",
        }
    }

    /// A versioned route's request, with the outcome of reading its api-version.
    pub(crate) fn versioned(route: &'static str, version: &Result<ApiVersion, ApiError>) -> Self {
        let api_version = match version {
            Ok(v) => v.as_str(),
            Err(ApiError::MissingApiVersion) => "none",
            Err(_) => "invalid",
        };
        Self { route, api_version }
    }
}

/// One node's metrics: the registry and the handles the request path records with.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RouteLabel>,
    /// One counter per scope, in [`Scope::ALL`] order: no lookup on the hot path.
    tokens: [Counter; Scope::ALL.len()],
    /// Tokens issued, once each (not exposed: the console's rates read it).
    issued: Counter,
    auth_failures: Counter,
    throttled: Counter,
    store: HistogramFamily<OperationLabel>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every metric, reading open connections from `connections` and the pool
    /// from `store` when scraped.
    pub(crate) fn new(store: Arc<dyn StoreHealth>, connections: Arc<Connections>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "callsign_http_requests",
            "API requests answered, by route, status code and api-version",
            requests.clone(),
        );
        let latency: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "callsign_http_request_duration_seconds",
            "Time from a request's head to its response's head, by route",
            latency.clone(),
        );
        let issued = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "callsign_tokens_issued",
            "Access tokens issued, counted once per scope each carries",
            issued.clone(),
        );
        let tokens =
            Scope::ALL.map(|s| issued.get_or_create_owned(&ScopeLabel { scope: s.as_str() }));
        let auth_failures = Counter::default();
        registry.register(
            "callsign_auth_failures",
            "API requests answered 401 (authentication failed)",
            auth_failures.clone(),
        );
        let throttled = Counter::default();
        registry.register(
            "callsign_throttled",
            "API requests answered 429 (throttled, or too many failed authentications)",
            throttled.clone(),
        );
        let store_latency: HistogramFamily<OperationLabel> =
            Family::new_with_constructor(|| Histogram::new(STORE_BUCKETS));
        registry.register(
            "callsign_store_operation_duration_seconds",
            "Time the store took for a request's call, by operation",
            store_latency.clone(),
        );
        registry.register(
            "callsign_build",
            "The running build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        registry.register_collector(Box::new(Live { store, connections }));
        Self {
            registry,
            requests,
            latency,
            tokens,
            issued: Counter::default(),
            auth_failures,
            throttled,
            store: store_latency,
        }
    }

    /// Records an answered request.
    pub(crate) fn request(&self, kind: RequestKind, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: kind.route,
                status,
                api_version: kind.api_version,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabel { route: kind.route })
            .observe(took.as_secs_f64());
        match status {
            401 => {
                self.auth_failures.inc();
            }
            429 => {
                self.throttled.inc();
            }
            _ => {}
        }
    }

    /// Records an issued token.
    pub(crate) fn token_issued(&self, scopes: &Scopes) {
        self.issued.inc();
        for scope in scopes.iter() {
            if let Some(i) = Scope::ALL.iter().position(|s| *s == scope) {
                self.tokens[i].inc();
            }
        }
    }

    /// Tokens issued since the node started, each once.
    pub(crate) fn tokens_issued(&self) -> u64 {
        self.issued.get()
    }

    /// Records how long a store call took.
    pub(crate) fn store_call(&self, op: StoreOp, took: Duration) {
        self.store
            .get_or_create(&OperationLabel {
                operation: op.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition: OpenMetrics when `openmetrics`, else Prometheus text 0.0.4.
    pub(crate) fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        }
        Ok(text)
    }
}

/// What is read when scraped: the connection layer's counts and the store's pool.
struct Live {
    store: Arc<dyn StoreHealth>,
    connections: Arc<Connections>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// Encodes one unlabelled metric.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let conns = &self.connections;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        encode_one(
            &mut encoder,
            "callsign_connections_open",
            "Connections open on the API listener.",
            &ConstGauge::new(count(conns.len())),
        )?;
        let refused = conns.refused.load(std::sync::atomic::Ordering::Relaxed);
        encode_one(
            &mut encoder,
            "callsign_connections_refused",
            "Connections closed at once at the cap (every open one busy, or the address's share used).",
            &ConstCounter::new(refused),
        )?;
        let evicted = conns.evicted.load(std::sync::atomic::Ordering::Relaxed);
        encode_one(
            &mut encoder,
            "callsign_connections_evicted",
            "Idle connections closed to make room for a new one at the cap.",
            &ConstCounter::new(evicted),
        )?;
        let Some(pool) = self.store.pool_status() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(0_i64);
        let mut connections = encoder.encode_descriptor(
            "callsign_store_pool_connections",
            "The store's pooled connections, by state (SQLite: its read connections).",
            None,
            gauge.metric_type(),
        )?;
        for (state, n) in [
            ("idle", pool.idle),
            ("in_use", pool.open.saturating_sub(pool.idle)),
        ] {
            let labels = StateLabel { state };
            ConstGauge::new(count(n)).encode(connections.encode_family(&labels)?)?;
        }
        encode_one(
            &mut encoder,
            "callsign_store_pool_max_connections",
            "Most connections the store's pool keeps.",
            &ConstGauge::new(count(pool.max)),
        )?;
        encode_one(
            &mut encoder,
            "callsign_store_pool_waiting",
            "Requests waiting for a connection of the store's pool.",
            &ConstGauge::new(count(pool.waiting)),
        )
    }
}

/// Connections the metrics listener keeps open at once; past it the longest-idle one is closed
/// (a scraper needs one).
const MAX_CONNECTIONS: usize = 8;

/// The metrics listener's deadlines and caps: it answers one small `GET` to anybody who can
/// reach it, so it holds little and briefly.
fn limits() -> ConnectionLimits {
    ConnectionLimits {
        tls_handshake_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(5),
        max_head_bytes: 8 * 1024,
        max_headers: 32,
        max_connections: Some(MAX_CONNECTIONS),
        max_connections_per_address: MAX_CONNECTIONS,
        h2_max_concurrent_streams: 4,
        h2_max_pending_reset_streams: 4,
    }
}

/// `GET /metrics`; every other path 404, another method 405.
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

/// The exposition, in OpenMetrics when the scraper asks for it, else Prometheus text 0.0.4.
async fn scrape(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(metrics) = state.metrics.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    match metrics.encode(openmetrics) {
        Ok(text) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the metrics could not be encoded");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `GET /metrics` on `listener` (plain HTTP) until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let limits = limits();
    let conns = Arc::new(Connections::new(MAX_CONNECTIONS, MAX_CONNECTIONS).recycling_own_idle());
    let addr = listener
        .local_addr()
        .ok()
        .map(|a: SocketAddr| a.to_string());
    tracing::info!(
        addr = addr.as_deref().unwrap_or("?"),
        "serving metrics at /metrics (plain HTTP, no authentication)"
    );
    crate::serve::accept_until(&listener, router(state), None, &limits, &conns, shutdown).await;
    conns.close_all(Duration::ZERO);
    let _ = tokio::time::timeout(Duration::from_secs(1), conns.drained()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metrics over a fresh embedded store (kept in the returned dir).
    fn metrics() -> (Metrics, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let store = callsign_store::open_embedded_store_with(
            dir.path(),
            callsign_store::KeyProtection::plain(),
        )
        .expect("store");
        let metrics = Metrics::new(Arc::new(store), Arc::new(Connections::new(4, 4)));
        (metrics, dir)
    }

    #[test]
    fn labels_come_from_fixed_sets() {
        let missing = RequestKind::versioned("create", &Err(ApiError::MissingApiVersion));
        assert_eq!(missing.api_version, "none");
        let unknown = Err(ApiError::UnsupportedApiVersion("x".into()));
        assert_eq!(
            RequestKind::versioned("create", &unknown).api_version,
            "invalid"
        );
        let known = RequestKind::versioned("get", &Ok(ApiVersion::V2025_03_02Preview));
        assert_eq!(known.api_version, "2025-03-02-preview");
    }

    #[test]
    fn a_token_counts_once_per_scope() {
        let (m, _dir) = metrics();
        let scopes = Scopes::parse(["chat", "voip"], true).expect("scopes");
        m.token_issued(&scopes);
        m.token_issued(&scopes);
        let text = m.encode(false).expect("encodes");
        assert!(
            text.contains("callsign_tokens_issued_total{scope=\"chat\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("callsign_tokens_issued_total{scope=\"voip\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("callsign_tokens_issued_total{scope=\"voip.join\"} 0\n"),
            "{text}"
        );
    }

    /// What recording a request costs: `cargo test --release -p callsign-server --lib
    /// recording_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn recording_cost() {
        let (m, _dir) = metrics();
        let routes = ["create", "issue", "get", "revoke", "delete"];
        let n = 2_000_000u32;
        let started = std::time::Instant::now();
        for i in 0..n {
            let kind = RequestKind {
                route: routes[i as usize % routes.len()],
                api_version: "2023-10-01",
            };
            m.request(kind, 200, Duration::from_micros(u64::from(i % 5000)));
        }
        let per_request = started.elapsed() / n;
        let started = std::time::Instant::now();
        for i in 0..n {
            m.store_call(
                StoreOp::GetIdentity,
                Duration::from_micros(u64::from(i % 500)),
            );
        }
        let per_store_call = started.elapsed() / n;
        let started = std::time::Instant::now();
        let scopes = Scopes::parse(["chat", "voip"], true).expect("scopes");
        for _ in 0..n {
            m.token_issued(&scopes);
        }
        let per_token = started.elapsed() / n;
        println!(
            "request {per_request:?}, store call {per_store_call:?}, chat+voip token {per_token:?}"
        );
    }
}
