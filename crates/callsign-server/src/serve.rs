//! The accept loop: admits connections under the cap, serves each (TLS or plain) through one
//! connection function, and drains them on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::connection::{Admitted, ConnState, ConnectionLimits, Connections, Counted};
use crate::state::AppState;

/// What serving needs besides the listener: the state, TLS, the limits and the connection cap,
/// and the metrics listener when there is one.
pub(crate) struct Serving {
    pub(crate) state: Arc<AppState>,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) limits: ConnectionLimits,
    pub(crate) conns: Arc<Connections>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) resource_poll: Duration,
    pub(crate) metrics: Option<TcpListener>,
}

type Service = Counted<TowerToHyperService<axum::Router>>;

/// A connection's byte stream: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets in-flight requests
/// finish (up to the grace period) and closes the store.
pub(crate) async fn run(
    listener: TcpListener,
    mut serving: Serving,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let refresher = spawn_key_refresher(Arc::clone(&serving.state));
    let resource_poller = spawn_resource_poller(Arc::clone(&serving.state), serving.resource_poll);
    let pruner = crate::audit::spawn_pruner(Arc::clone(&serving.state));
    let feed_pruner = crate::feed::spawn_pruner(Arc::clone(&serving.state));
    let metrics = spawn_metrics(serving.metrics.take(), &serving.state);
    let conns = Arc::clone(&serving.conns);
    let router = crate::http::router(Arc::clone(&serving.state));
    let tls = serving.tls.as_ref();
    accept_until(&listener, router, tls, &serving.limits, &conns, shutdown).await;
    drop(listener);
    // Long-polls answer and streams end now, so that draining does not wait on them.
    serving.state.waiters.shut_down();
    tracing::info!(
        open = conns.len(),
        "shutting down: draining in-flight requests"
    );
    conns.close_all(serving.shutdown_grace);
    tokio::select! {
        () = conns.drained() => {}
        () = tokio::time::sleep(serving.shutdown_grace) => {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
    // The metrics listener served the drain too; it stops with the node.
    if let Some((stop, task)) = metrics {
        let _ = stop.send(());
        let _ = task.await;
    }
    refresher.abort();
    resource_poller.abort();
    feed_pruner.abort();
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    serving.state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves `/metrics` on the metrics listener, if there is one, until told to stop.
fn spawn_metrics(
    listener: Option<TcpListener>,
    state: &Arc<AppState>,
) -> Option<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let listener = listener?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::metrics::serve(listener, Arc::clone(state), async {
        let _ = stopped.await;
    }));
    Some((stop, task))
}

/// The connection cap: the configured one, lowered to what the file descriptor limit allows.
pub(crate) fn connection_cap(limits: &ConnectionLimits) -> Connections {
    let nofile = crate::connection::raise_nofile_limit();
    let conns = Connections::new(
        crate::connection::derive_cap(limits.max_connections, nofile),
        limits.max_connections_per_address,
    );
    tracing::info!(
        max_connections = conns.max(),
        per_address = limits.max_connections_per_address,
        nofile = nofile.unwrap_or(0),
        "connection cap set"
    );
    conns
}

/// Accepts connections until `shutdown` completes, each served by `router` in a task of its
/// own, under `limits` and the cap `conns`.
pub(crate) async fn accept_until(
    listener: &TcpListener,
    router: axum::Router,
    tls: Option<&TlsAcceptor>,
    limits: &ConnectionLimits,
    conns: &Arc<Connections>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let service = TowerToHyperService::new(router);
    let builder = http_builder(limits);
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
            tls.cloned(),
            limits.clone(),
        ));
    }
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

/// Reloads the signing keys from the store every refresh interval (other nodes may add some, a
/// pending one may have come into force), retiring and rotating them as due.
fn spawn_key_refresher(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.keys.refresh_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = state.clock.now();
            if let Err(e) = state.keys.maintain(state.store.as_ref(), now).await {
                tracing::warn!(error = %e.chain(), "could not reload the signing keys");
            }
        }
    })
}

/// Reloads the resources and their keys when the store's configuration generation moves, and
/// reads the console's logouts.
fn spawn_resource_poller(state: Arc<AppState>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // A failure to load a change is logged once by `refresh` (the node then refuses
            // requests); one to reach the store shows in the requests that need it.
            if let Err(e) = state.resources.refresh(state.store.as_ref()).await {
                tracing::debug!(error = %e.chain(), "could not reload the resources");
            }
            // Console logouts made on other nodes (or before a restart) end their sessions here.
            if let Some(console) = &state.console
                && let Err(e) = console
                    .logouts
                    .sync(state.store.as_ref(), state.clock.now())
                    .await
            {
                tracing::debug!(error = %e.chain(), "could not read the console's logouts");
            }
        }
    })
}

/// One accepted connection, from its TLS handshake (when TLS is on) to its close; its place
/// under the cap is held until then.
async fn connection_task(
    admitted: Admitted,
    stream: TcpStream,
    peer: SocketAddr,
    service: Service,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
) {
    let state = Arc::clone(&admitted.state);
    if let Some(io) = handshake(stream, peer, tls, &state, &limits).await {
        serve_connection(&builder, io, service, &state, &limits).await;
    }
    drop(admitted);
}

/// The connection's stream: the TCP stream itself without TLS, else the TLS stream once the
/// handshake is done within its deadline (`None` if it fails or times out).
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    state: &ConnState,
    limits: &ConnectionLimits,
) -> Option<Box<dyn Io>> {
    let Some(acceptor) = tls else {
        return Some(Box::new(stream));
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream)) => r,
        () = state.expired(limits) => return None,
    };
    match handshake {
        Ok(Ok(stream)) => Some(Box::new(stream)),
        _ => {
            tracing::debug!(%peer, "TLS handshake failed or timed out");
            None
        }
    }
}

/// Serves one connection until it ends, its deadline passes or it is asked to close; then
/// closes gracefully (HTTP/2 GOAWAY) and, if the peer does not finish within a few seconds,
/// drops it.
async fn serve_connection<I: Io>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: Service,
    state: &ConnState,
    limits: &ConnectionLimits,
) {
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
