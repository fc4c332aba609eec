//! Connection lifecycle: a deadline at every stage and a cap on open connections.
//!
//! * Every request passes through [`Counted`], which counts requests in flight and notes when a
//!   request last started or finished. A watchdog per connection closes it (HTTP/2: GOAWAY;
//!   HTTP/1: `Connection: close` then close) when no request has started or finished for the
//!   idle timeout with nothing in flight, or for the request timeout with one in flight. Bytes
//!   alone (HTTP/2 PINGs, a window kept at zero so responses never leave) do not keep a
//!   connection alive: only requests do.
//! * The TLS handshake has its own deadline; the HTTP/1 request head has hyper's header read
//!   timeout; request bodies are read under the body timeout (`http.rs`).
//! * [`Connections`] admits at most `max` connections, and at most `per_address` from one client
//!   address (IPv6: one /64). At the cap it closes the connection that has been idle longest at
//!   once and admits the new one; with none idle it refuses the new one at once. Connections
//!   being closed still count, up to a small slack, so file descriptors stay bounded. The soft
//!   `RLIMIT_NOFILE` is raised to the hard limit at start and the cap derived from it
//!   ([`derive_cap`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Deadlines and caps of the connection layer; see the README's limits table.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// TLS handshake, from accept.
    pub tls_handshake_timeout: Duration,
    /// HTTP/1 request head, from the first byte read for it (hyper also applies it to the wait
    /// for the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// No bytes in either direction and no request in flight: the connection is closed. Also the
    /// wait for the first request after accept.
    pub idle_timeout: Duration,
    /// A request in flight (handler or response write) with no bytes moving for this long: the
    /// connection is closed.
    pub request_timeout: Duration,
    /// The whole request body must arrive within this, from the end of the head.
    pub body_timeout: Duration,
    /// Largest request head (request line and headers), bytes.
    pub max_head_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Most open connections; `None` derives it from `RLIMIT_NOFILE`.
    pub max_connections: Option<usize>,
    /// Most open connections from one client address (IPv6: one /64).
    pub max_connections_per_address: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the server answers them, per connection
    /// (reset-flood protection).
    pub h2_max_pending_reset_streams: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_head_bytes: 32 * 1024,
            max_headers: 64,
            max_connections: None,
            max_connections_per_address: 256,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
        }
    }
}

/// File descriptors kept back from the connection cap: the store, logs, TLS files, accept, and
/// the connections being closed ([`Connections`] lets them exceed the cap by a slack).
const FD_RESERVE: u64 = 128;

/// The cap unless told otherwise: about 2 GiB of connection state at the worst (an HTTP/2
/// connection with every stream stalled holds about 200 KiB).
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (best effort) and returns the soft limit
/// in force afterwards (`None`: unlimited or unknown).
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The connection cap: what was asked for, but never more than the open-file limit leaves room
/// for (an accept that fails with EMFILE helps nobody).
pub fn derive_cap(requested: Option<usize>, nofile: Option<u64>) -> usize {
    let room = nofile.map_or(usize::MAX, |n| {
        usize::try_from(n.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX)
    });
    match requested {
        Some(r) if r > room => {
            tracing::warn!(
                requested = r,
                cap = room,
                "--max-connections exceeds what the open-file limit allows; using the lower value"
            );
            room
        }
        Some(r) => r.max(1),
        None => room.min(DEFAULT_MAX_CONNECTIONS),
    }
}

/// What the connection layer knows about one connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// The client address it counts against.
    address: IpAddr,
    opened: Instant,
    /// Milliseconds after `opened` when a request last started or finished.
    last_io_ms: AtomicU64,
    in_flight: AtomicUsize,
    closing: AtomicBool,
    close: Notify,
    /// How long what is in flight may take once the connection is asked to close (ms).
    close_grace_ms: AtomicU64,
}

/// How long a connection closed by its deadline or to make room may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

impl ConnState {
    fn new(address: IpAddr) -> Self {
        Self {
            address,
            opened: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            close_grace_ms: AtomicU64::new(CLOSE_GRACE.as_millis() as u64),
        }
    }

    /// How long the connection may take to finish once asked to close.
    pub(crate) fn close_grace(&self) -> Duration {
        Duration::from_millis(self.close_grace_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(ms, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Asks the connection to close at once, dropping it without waiting (it is idle).
    fn evict(&self) {
        self.close_grace_ms.store(0, Ordering::Relaxed);
        self.request_close();
    }

    /// Asks the connection to close (idempotent).
    fn request_close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }

    /// Completes when the connection should close: asked to, or quiet past its deadline.
    pub(crate) async fn expired(&self, limits: &ConnectionLimits) {
        loop {
            let limit = if self.is_idle() {
                limits.idle_timeout
            } else {
                limits.request_timeout
            };
            let quiet = self.quiet_for();
            if quiet >= limit || self.closing.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(limit - quiet) => {}
                () = self.close.notified() => return,
            }
        }
    }
}

/// The open connections, capped.
#[derive(Debug)]
pub(crate) struct Connections {
    max: usize,
    per_address: usize,
    /// At its share, an address's own longest-idle connection is closed to admit its new one
    /// (the metrics listener: a scraper must not be locked out by idle sockets from its own
    /// address); otherwise the new one is refused.
    recycle_own: bool,
    next_id: AtomicU64,
    live: Mutex<Live>,
    emptied: Notify,
    /// Connections refused at the cap (none idle to close).
    pub(crate) refused: AtomicU64,
    /// Idle connections closed to make room.
    pub(crate) evicted: AtomicU64,
}

/// The open connections and how many each client address holds.
#[derive(Debug, Default)]
struct Live {
    by_id: HashMap<u64, Arc<ConnState>>,
    by_address: HashMap<IpAddr, usize>,
}

/// A live connection's place in [`Connections`]; dropping it frees the place.
pub(crate) struct Admitted {
    conns: Arc<Connections>,
    id: u64,
    address: IpAddr,
    pub(crate) state: Arc<ConnState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut live = self.conns.lock();
        live.by_id.remove(&self.id);
        if let Some(n) = live.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                live.by_address.remove(&self.address);
            }
        }
        if live.by_id.is_empty() {
            self.conns.emptied.notify_waiters();
        }
    }
}

impl Connections {
    pub(crate) fn new(max: usize, per_address: usize) -> Self {
        Self {
            max: max.max(1),
            per_address: per_address.max(1),
            recycle_own: false,
            next_id: AtomicU64::new(0),
            live: Mutex::new(Live::default()),
            emptied: Notify::new(),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// At an address's share, close its own longest-idle connection instead of refusing.
    pub(crate) fn recycling_own_idle(mut self) -> Self {
        self.recycle_own = true;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cap.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Admits a new connection from `peer`, closing the longest-idle one at the cap; `None` when
    /// the address holds its share already, or the cap is reached and every connection is busy.
    /// Constant time below the cap; a scan for the longest-idle connection at it.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let address = crate::throttle::address_key(peer);
        let mut live = self.lock();
        if live.by_address.get(&address).copied().unwrap_or(0) >= self.per_address {
            let own_idle = live
                .by_id
                .values()
                .filter(|s| s.address == address)
                .filter(|s| s.is_idle() && !s.closing.load(Ordering::Relaxed))
                .max_by_key(|s| s.quiet_for());
            match own_idle {
                Some(v) if self.recycle_own => {
                    // Its place is freed when it has closed; the address may briefly hold one
                    // more than its share meanwhile.
                    v.evict();
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        if live.by_id.len() >= self.max {
            let victim = live
                .by_id
                .values()
                .filter(|s| s.is_idle() && !s.closing.load(Ordering::Relaxed))
                .max_by_key(|s| s.quiet_for());
            // Connections being closed still hold a descriptor: past a small slack over the
            // cap, wait for them rather than evict more.
            let slack = (self.max / 16).max(16);
            match victim {
                Some(v) if live.by_id.len() < self.max + slack => {
                    v.evict();
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(address));
        live.by_id.insert(id, Arc::clone(&state));
        *live.by_address.entry(address).or_insert(0) += 1;
        Some(Admitted {
            conns: Arc::clone(self),
            id,
            address,
            state,
        })
    }

    /// Asks every connection to close, letting what is in flight take up to `grace`.
    pub(crate) fn close_all(&self, grace: Duration) {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        for s in self.lock().by_id.values() {
            s.close_grace_ms.store(grace_ms, Ordering::Relaxed);
            s.request_close();
        }
    }

    /// Completes when no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.emptied.notified();
            if self.lock().by_id.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// The client's address, as a request extension (for per-address limits and logs).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// A service wrapper that counts requests in flight and tags each with its client address.
#[derive(Debug, Clone)]
pub(crate) struct Counted<S> {
    inner: S,
    state: Arc<ConnState>,
    peer: SocketAddr,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, state: Arc<ConnState>, peer: SocketAddr) -> Self {
        Self { inner, state, peer }
    }
}

/// The connection a request came on, as a request extension: a response that streams (the
/// revocation feed) marks it active with each message it writes, so the idle deadline counts
/// from the last message, not from the request.
#[derive(Clone)]
pub(crate) struct Activity(Arc<ConnState>);

impl Activity {
    /// Marks the connection active now.
    pub(crate) fn touch(&self) {
        self.0.touch();
    }
}

struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for Counted<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, mut req: hyper::Request<B>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.peer.ip()));
        req.extensions_mut()
            .insert(Activity(Arc::clone(&self.state)));
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        self.state.touch();
        let guard = InFlight(Arc::clone(&self.state));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let _guard = guard;
            fut.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_never_exceeds_what_the_file_limit_allows() {
        assert_eq!(derive_cap(None, Some(1024)), 1024 - FD_RESERVE as usize);
        assert_eq!(derive_cap(Some(10), Some(1024)), 10);
        assert_eq!(
            derive_cap(Some(5000), Some(1024)),
            1024 - FD_RESERVE as usize
        );
        assert_eq!(derive_cap(None, None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(derive_cap(Some(0), None), 1);
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let ip = IpAddr::from([192, 0, 2, 1]);
        let conns = Arc::new(Connections::new(2, 100));
        let a = conns.admit(ip).expect("room");
        let b = conns.admit(ip).expect("room");
        b.state.in_flight.fetch_add(1, Ordering::Relaxed);
        let c = conns.admit(ip).expect("a is idle and makes room");
        assert!(a.state.closing.load(Ordering::Relaxed));
        assert_eq!(
            a.state.close_grace(),
            Duration::ZERO,
            "an idle victim goes at once"
        );
        assert!(!b.state.closing.load(Ordering::Relaxed));
        c.state.in_flight.fetch_add(1, Ordering::Relaxed);
        assert!(conns.admit(ip).is_none(), "every open connection is busy");
        assert_eq!(conns.refused.load(Ordering::Relaxed), 1);
        assert_eq!(conns.evicted.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(conns.len(), 2);
    }

    #[test]
    fn one_address_gets_its_share_only() {
        let recycling = Arc::new(Connections::new(100, 2).recycling_own_idle());
        let ip = IpAddr::from([192, 0, 2, 1]);
        let first = recycling.admit(ip).expect("room");
        let _second = recycling.admit(ip).expect("room");
        let _third = recycling.admit(ip).expect("its own idle one makes room");
        assert!(
            first.state.closing.load(Ordering::Relaxed),
            "the longest idle is closed"
        );
        let conns = Arc::new(Connections::new(100, 2));
        let a = conns.admit(ip).expect("room");
        let _b = conns.admit(ip).expect("room");
        assert!(conns.admit(ip).is_none());
        assert!(conns.admit(IpAddr::from([192, 0, 2, 2])).is_some());
        drop(a);
        assert!(
            conns.admit(ip).is_some(),
            "a closed connection frees its share"
        );
    }

    #[test]
    fn closing_connections_count_beyond_a_slack() {
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        let conns = Arc::new(Connections::new(16, 100));
        let mut held = Vec::new();
        for i in 0..200u8 {
            if let Some(a) = conns.admit(ip(i)) {
                held.push(a);
            }
        }
        // None of them ever finishes closing: the cap plus the slack bounds them.
        assert!(held.len() <= 16 + 16, "{}", held.len());
        assert!(conns.refused.load(Ordering::Relaxed) > 0);
    }
}
