//! Revocation propagation under load: how long after a revoke a verifier that follows the
//! server's revocation feed refuses the revoked token, while it verifies other tokens at a
//! steady rate.
//!
//! ```text
//! CALLSIGN_CONNECTION_STRING="endpoint=https://127.0.0.1:8443/;accesskey=<primary key>" \
//! CALLSIGN_RESOURCE_ID=<resource id> CALLSIGN_CA=callsign-data/tls/ca.pem \
//!   cargo run --release -p callsign-verify --example propagation -- \
//!     --revocations 1000 --rate 10000 --revoke-every 20 [--json]
//! ```
//!
//! The key must be able to create and revoke (the primary or secondary key, not the verify-only
//! one); the follower signs its feed requests with the same key. `CALLSIGN_RESOURCE_ID` may be
//! left out: it is then read from the first identity created.
//!
//! What it does, in order:
//!
//! 1. creates `--revocations` identities with a `chat` token each (to be revoked) and `--pool`
//!    identities whose tokens are never revoked, `--concurrency` requests at a time;
//! 2. builds a [`Verifier`] following the revocation feed and waits until it is current;
//! 3. verifies the pool's tokens in the background at `--rate` verifications per second
//!    (`--load-tasks` tasks, each paced by a timer), counting successes and failures;
//! 4. after `--warmup`, revokes the identities one at a time, one every `--revoke-every`
//!    milliseconds. For each: `t0` just before the revoke is sent, `t_ack` when its 204 arrives,
//!    `t_seen` when a probe, which verifies every pending revoked token every `--probe-every`
//!    milliseconds, first gets [`VerifyError::Revoked`] for it;
//! 5. reports `t_seen - t_ack` and `t_seen - t0` (p50, p90, p99, max), the revokes not seen
//!    within `--bound` seconds of their 204 (failures: the run never waits longer), the achieved
//!    verification rate over the revocation window, and every unexpected verification error.
//!
//! Bounded in count and time, it stops by itself. It refuses an endpoint that is not a loopback
//! address: it is meant for a server on the same machine.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use callsign_client::{
    CommunicationIdentityClient, CommunicationTokenScope, CommunicationUserIdentifier,
    ConnectionString, RetryPolicy,
};
use callsign_verify::callsign_core::{IdentityId, ResourceId};
use callsign_verify::{FollowerConfig, StalePolicy, Verifier, VerifyError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

const USAGE: &str = "\
usage: propagation [--revocations N] [--rate R] [--revoke-every MS] [--pool P]
                   [--load-tasks T] [--concurrency C] [--warmup S] [--bound S]
                   [--probe-every MS] [--server-pid PID] [--json]
environment: CALLSIGN_CONNECTION_STRING (required), CALLSIGN_RESOURCE_ID, CALLSIGN_CA";

/// What the run does; see the module documentation.
#[derive(Debug, Clone)]
struct Options {
    revocations: usize,
    rate: u64,
    revoke_every: Duration,
    pool: usize,
    load_tasks: usize,
    concurrency: usize,
    warmup: Duration,
    bound: Duration,
    probe_every: Duration,
    server_pid: Option<u32>,
    json: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            revocations: 1000,
            rate: 10_000,
            revoke_every: Duration::from_millis(20),
            pool: 64,
            load_tasks: 4,
            concurrency: 16,
            warmup: Duration::from_secs(2),
            bound: Duration::from_secs(10),
            probe_every: Duration::from_millis(1),
            server_pid: None,
            json: false,
        }
    }
}

fn number<T>(flag: &str, value: &str, range: (T, T)) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let n: T = value
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} takes a number, not {value:?}"))?;
    if n < range.0 || n > range.1 {
        bail!("{flag} must be from {} to {}", range.0, range.1);
    }
    Ok(n)
}

fn parse_options(args: impl IntoIterator<Item = String>) -> anyhow::Result<Options> {
    let mut o = Options::default();
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--json" => {
                o.json = true;
                continue;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => {}
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let ms = |range| number(&flag, &value, range).map(Duration::from_millis);
        let secs = |range| number(&flag, &value, range).map(Duration::from_secs);
        match flag.as_str() {
            "--revocations" => o.revocations = number(&flag, &value, (1, 100_000))?,
            "--rate" => o.rate = number(&flag, &value, (0, 1_000_000))?,
            "--revoke-every" => o.revoke_every = ms((1, 10_000))?,
            "--pool" => o.pool = number(&flag, &value, (1, 10_000))?,
            "--load-tasks" => o.load_tasks = number(&flag, &value, (1, 64))?,
            "--concurrency" => o.concurrency = number(&flag, &value, (1, 64))?,
            "--warmup" => o.warmup = secs((0, 60))?,
            "--bound" => o.bound = secs((1, 60))?,
            "--probe-every" => o.probe_every = ms((1, 100))?,
            "--server-pid" => o.server_pid = Some(number(&flag, &value, (1, u32::MAX))?),
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    Ok(o)
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether the endpoint's host is a loopback address (or `localhost`).
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat` (Linux;
/// `None` elsewhere). Clock ticks are taken as 100 a second, as on every common Linux build.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds the whole machine has been busy (every state but idle and I/O wait), from the
/// first line of `/proc/stat` (Linux; `None` elsewhere).
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: f64 = ticks.iter().take(8).sum();
    Some((total - ticks.get(3)? - ticks.get(4)?) / 100.0)
}

/// An identity and its token.
struct Issued {
    user: CommunicationUserIdentifier,
    token: String,
}

/// Creates `n` identities with a `chat` token each, `concurrency` requests at a time.
async fn create_tokens(
    client: &CommunicationIdentityClient,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Issued>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let client = client.clone();
        let next = Arc::clone(&next);
        set.spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let (user, token) = client
                    .create_user_and_token(&[CommunicationTokenScope::Chat], None)
                    .await?;
                out.push(Issued {
                    user,
                    token: token.token,
                });
            }
            Ok::<_, callsign_client::Error>(out)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = set.join_next().await {
        all.extend(done?.context("creating an identity with a token")?);
    }
    Ok(all)
}

/// Error counts by [`VerifyError::code`].
#[derive(Debug, Default)]
struct ErrorCounts(Mutex<BTreeMap<&'static str, u64>>);

impl ErrorCounts {
    fn add(&self, e: &VerifyError) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(e.code())
            .or_default() += 1;
    }

    fn take(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The background load's counters.
#[derive(Debug, Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Verifications dropped because a task fell more than 50 ms behind its schedule.
    dropped: AtomicU64,
    errors: ErrorCounts,
    stop: AtomicBool,
}

impl Load {
    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// One load task: `rate` verifications a second of the pool's tokens, starting at `offset`,
/// caught up every 2 ms; a debt of more than 50 ms of work is dropped (and counted), so the task
/// never bursts to catch up after a stall.
async fn load_task(
    verifier: Arc<Verifier>,
    pool: Arc<Vec<String>>,
    rate: f64,
    offset: usize,
    load: Arc<Load>,
) {
    let start = Instant::now();
    let max_debt = ((rate * 0.05).ceil() as u64).max(1);
    let mut scheduled = 0u64;
    let mut next = offset;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !load.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        let mut owed = due.saturating_sub(scheduled);
        if owed > max_debt {
            load.dropped.fetch_add(owed - max_debt, Ordering::Relaxed);
            scheduled += owed - max_debt;
            owed = max_debt;
        }
        for k in 0..owed {
            let token = &pool[next % pool.len()];
            next += 1;
            match verifier.verify(token).await {
                Ok(_) => load.ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    load.errors.add(&e);
                    load.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            scheduled += 1;
            // Let the follower and the probe run between small batches, as a server would.
            if k % 8 == 7 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// What happened to one revoked identity.
#[derive(Debug, Clone, Copy, Default)]
struct Record {
    /// Just before the revoke was sent.
    t0: Option<Instant>,
    /// When its 204 arrived.
    ack: Option<Instant>,
    /// When the probe first got `Revoked`.
    seen: Option<Instant>,
    revoke_failed: bool,
    /// Not seen within the bound.
    gave_up: bool,
}

type Records = Arc<Mutex<Vec<Record>>>;

fn lock(records: &Records) -> std::sync::MutexGuard<'_, Vec<Record>> {
    records.lock().unwrap_or_else(|e| e.into_inner())
}

/// Revokes each identity in turn, one every `every`; tells the probe about each just before.
async fn revoke_all(
    client: CommunicationIdentityClient,
    users: Vec<CommunicationUserIdentifier>,
    every: Duration,
    records: Records,
    probe: mpsc::UnboundedSender<usize>,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for (i, user) in users.iter().enumerate() {
        tick.tick().await;
        let t0 = Instant::now();
        lock(&records)[i].t0 = Some(t0);
        let _ = probe.send(i);
        let result = client.revoke_tokens(user).await;
        let now = Instant::now();
        let mut recs = lock(&records);
        match result {
            Ok(()) => recs[i].ack = Some(now),
            Err(e) => {
                recs[i].revoke_failed = true;
                failures.push(e.to_string());
            }
        }
    }
    failures
}

/// Verifies every pending revoked token every `every` until it is `Revoked` (recording when),
/// its revoke failed, or `bound` has passed since its 204 (or since it was sent, while it has
/// not been acknowledged). Ends when the revoker is done and nothing is pending.
async fn probe(
    verifier: Arc<Verifier>,
    tokens: Arc<Vec<String>>,
    records: Records,
    mut pending: mpsc::UnboundedReceiver<usize>,
    every: Duration,
    bound: Duration,
    unexpected: Arc<ErrorCounts>,
) {
    let mut active: Vec<usize> = Vec::new();
    let mut open = true;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        while open {
            match pending.try_recv() {
                Ok(i) => active.push(i),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !open && active.is_empty() {
            return;
        }
        let mut still = Vec::with_capacity(active.len());
        for i in active.drain(..) {
            let result = verifier.verify(&tokens[i]).await;
            let now = Instant::now();
            let mut recs = lock(&records);
            let r = &mut recs[i];
            match result {
                Err(VerifyError::Revoked) => {
                    r.seen = Some(now);
                    continue;
                }
                Ok(_) => {}
                Err(e) => unexpected.add(&e),
            }
            if r.revoke_failed {
                continue;
            }
            let since = r.ack.or(r.t0).unwrap_or(now);
            if now.duration_since(since) > bound {
                r.gave_up = true;
                continue;
            }
            still.push(i);
        }
        active = still;
    }
}

/// p50, p90, p99 and max of a sample, in milliseconds (nearest rank). The samples are kept and
/// sorted: there are at most `--revocations` of them, and they may be negative (a revoke seen
/// before its 204), which a histogram of unsigned values would not hold.
#[derive(Debug, Clone, Copy)]
struct Summary {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn summarise(mut v: Vec<f64>) -> Option<Summary> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Summary {
        n: v.len(),
        p50: rank(50.0),
        p90: rank(90.0),
        p99: rank(99.0),
        max: v[v.len() - 1],
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `later - earlier` in milliseconds, negative when `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        ms(later - earlier)
    } else {
        -ms(earlier - later)
    }
}

fn summary_json(s: Option<Summary>) -> serde_json::Value {
    match s {
        Some(s) => serde_json::json!({
            "n": s.n, "p50_ms": s.p50, "p90_ms": s.p90, "p99_ms": s.p99, "max_ms": s.max,
        }),
        None => serde_json::Value::Null,
    }
}

fn summary_line(name: &str, s: Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "{name:<36} p50 {:>8.2}  p90 {:>8.2}  p99 {:>8.2}  max {:>8.2} ms  (n={})",
            s.p50, s.p90, s.p99, s.max, s.n
        ),
        None => format!("{name:<36} no sample"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse_options(std::env::args().skip(1))?;
    let cs = ConnectionString::parse(
        &var("CALLSIGN_CONNECTION_STRING").context("set CALLSIGN_CONNECTION_STRING")?,
    )?;
    if !is_loopback(cs.endpoint()) {
        bail!(
            "the endpoint {} is not a loopback address; this tool only measures a server on this machine",
            cs.endpoint()
        );
    }
    let ca = match var("CALLSIGN_CA") {
        Some(path) => Some(std::fs::read(&path).with_context(|| format!("reading {path}"))?),
        None => None,
    };

    let client = |timeout, retry| {
        let mut b = CommunicationIdentityClient::builder(cs.clone())
            .timeout(timeout)
            .retry_policy(retry);
        if let Some(pem) = &ca {
            b = b.add_trusted_ca_pem(pem.clone());
        }
        b.build()
    };
    let setup = client(Duration::from_secs(10), RetryPolicy::default())?;
    // A revoke that fails is a counted failure, not hidden by a retry.
    let revoker = client(Duration::from_secs(5), RetryPolicy::none())?;

    // 1. Identities and tokens.
    let started = Instant::now();
    let revoked = create_tokens(&setup, o.revocations, o.concurrency).await?;
    let pool = create_tokens(&setup, o.pool, o.concurrency).await?;
    let setup_time = started.elapsed();
    let resource = match var("CALLSIGN_RESOURCE_ID") {
        Some(id) => ResourceId::parse(&id)?,
        None => IdentityId::parse(revoked[0].user.raw_id())?.resource(),
    };

    // 2. The following verifier.
    let mut http = reqwest::Client::builder();
    if let Some(pem) = &ca {
        http = http.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
    }
    let verifier = Arc::new(
        Verifier::builder(cs.endpoint().clone(), resource)
            .http_client(http.build()?)
            .follow_revocations(
                cs.clone(),
                FollowerConfig {
                    policy: StalePolicy::FailClosed,
                    ..FollowerConfig::default()
                },
            )
            .build()?,
    );
    let follower = verifier
        .revocations()
        .context("the verifier follows the feed")?;
    let current_at = Instant::now();
    if !follower.wait_until_current(Duration::from_secs(10)).await {
        bail!("the follower did not load the snapshot within 10 s");
    }
    let current_after = current_at.elapsed();
    let tokens: Arc<Vec<String>> = Arc::new(revoked.iter().map(|r| r.token.clone()).collect());
    let pool: Arc<Vec<String>> = Arc::new(pool.into_iter().map(|p| p.token).collect());
    // Every token verifies before anything is revoked (this also fetches the keys).
    for t in tokens.iter().chain(pool.iter()) {
        if let Err(e) = verifier.verify(t).await {
            bail!("a fresh token does not verify: {e}");
        }
    }

    // 3. Background load.
    let load = Arc::new(Load::default());
    let mut loaders = JoinSet::new();
    if o.rate > 0 {
        let per_task = o.rate as f64 / o.load_tasks as f64;
        for t in 0..o.load_tasks {
            loaders.spawn(load_task(
                Arc::clone(&verifier),
                Arc::clone(&pool),
                per_task,
                t * pool.len() / o.load_tasks,
                Arc::clone(&load),
            ));
        }
    }
    tokio::time::sleep(o.warmup).await;

    // 4. Revokes, and the probe.
    let records: Records = Arc::new(Mutex::new(vec![Record::default(); o.revocations]));
    let unexpected = Arc::new(ErrorCounts::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let own_pid = std::process::id().to_string();
    let server_pid = o.server_pid.map(|p| p.to_string());
    let cpu_before = (
        cpu_seconds(&own_pid),
        server_pid.as_deref().and_then(cpu_seconds),
        machine_busy_seconds(),
    );
    let window_start = Instant::now();
    let done_before = load.done();
    let dropped_before = load.dropped.load(Ordering::Relaxed);
    let probe_task = tokio::spawn(probe(
        Arc::clone(&verifier),
        Arc::clone(&tokens),
        Arc::clone(&records),
        rx,
        o.probe_every,
        o.bound,
        Arc::clone(&unexpected),
    ));
    let revoke_failures = revoke_all(
        revoker,
        revoked.into_iter().map(|r| r.user).collect(),
        o.revoke_every,
        Arc::clone(&records),
        tx,
    )
    .await;
    let revokes_took = window_start.elapsed();
    probe_task.await?;
    let window = window_start.elapsed();
    let verified = load.done() - done_before;
    let dropped = load.dropped.load(Ordering::Relaxed) - dropped_before;
    let cpu_after = (
        cpu_seconds(&own_pid),
        server_pid.as_deref().and_then(cpu_seconds),
        machine_busy_seconds(),
    );
    load.stop.store(true, Ordering::Relaxed);
    while loaders.join_next().await.is_some() {}
    let cores = |before: Option<f64>, after: Option<f64>| {
        before
            .zip(after)
            .map(|(b, a)| (a - b) / window.as_secs_f64())
    };
    let generator_cores = cores(cpu_before.0, cpu_after.0);
    let server_cores = cores(cpu_before.1, cpu_after.1);
    let machine_cores = cores(cpu_before.2, cpu_after.2);
    // What neither this process nor the server used (known only with --server-pid): other
    // processes, and kernel work charged to neither.
    let other_cores = machine_cores
        .zip(generator_cores)
        .zip(server_cores)
        .map(|((m, g), s)| m - g - s);

    // 5. Report.
    let recs = lock(&records).clone();
    let after_ack: Vec<f64> = recs
        .iter()
        .filter_map(|r| Some(signed_ms(r.seen?, r.ack?)))
        .collect();
    let after_t0: Vec<f64> = recs
        .iter()
        .filter_map(|r| Some(signed_ms(r.seen?, r.t0?)))
        .collect();
    let round_trip: Vec<f64> = recs
        .iter()
        .filter_map(|r| Some(ms(r.ack? - r.t0?)))
        .collect();
    let before_ack = after_ack.iter().filter(|d| **d < 0.0).count();
    let not_seen = recs.iter().filter(|r| r.gave_up).count();
    let seen_unacked = recs
        .iter()
        .filter(|r| r.seen.is_some() && r.ack.is_none())
        .count();
    let rate = verified as f64 / window.as_secs_f64();
    let (propagation, since_sent, revoke_rt) = (
        summarise(after_ack),
        summarise(after_t0),
        summarise(round_trip),
    );
    let load_errors = load.errors.take();
    let probe_errors = unexpected.take();

    if o.json {
        let report = serde_json::json!({
            "revocations": o.revocations,
            "revoke_every_ms": ms(o.revoke_every),
            "target_rate": o.rate,
            "load_tasks": o.load_tasks,
            "pool": o.pool,
            "probe_every_ms": ms(o.probe_every),
            "bound_s": o.bound.as_secs(),
            "setup_s": setup_time.as_secs_f64(),
            "follower_current_s": current_after.as_secs_f64(),
            "window_s": window.as_secs_f64(),
            "revokes_s": revokes_took.as_secs_f64(),
            "propagation_after_ack": summary_json(propagation),
            "propagation_after_send": summary_json(since_sent),
            "revoke_round_trip": summary_json(revoke_rt),
            "seen_before_ack": before_ack,
            "seen_without_ack": seen_unacked,
            "not_seen_within_bound": not_seen,
            "revoke_failures": revoke_failures.len(),
            "verifications": verified,
            "verifications_per_s": rate,
            "verifications_dropped_behind_schedule": dropped,
            "load_errors": load_errors,
            "probe_unexpected_errors": probe_errors,
            "generator_cores": generator_cores,
            "server_cores": server_cores,
            "machine_cores": machine_cores,
            "other_cores": other_cores,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "revocation propagation: {} revokes, one every {} ms; background {} verifications/s \
             target ({} tasks, pool of {}); probe every {} ms; bound {} s",
            o.revocations,
            o.revoke_every.as_millis(),
            o.rate,
            o.load_tasks,
            o.pool,
            o.probe_every.as_millis(),
            o.bound.as_secs()
        );
        println!(
            "setup: {} identities with tokens in {:.2} s; follower current after {:.0} ms",
            o.revocations + o.pool,
            setup_time.as_secs_f64(),
            ms(current_after)
        );
        println!(
            "{}",
            summary_line("revoke round trip (t_ack - t0)", revoke_rt)
        );
        println!(
            "{}",
            summary_line("propagation (t_seen - t_ack)", propagation)
        );
        println!("{}", summary_line("propagation (t_seen - t0)", since_sent));
        println!(
            "seen before the 204: {before_ack}; not seen within {} s: {not_seen}; revoke failures: {}",
            o.bound.as_secs(),
            revoke_failures.len()
        );
        println!(
            "background: {verified} verifications in {:.2} s = {rate:.0}/s (target {}); \
             {dropped} dropped behind schedule; failures {:?}",
            window.as_secs_f64(),
            o.rate,
            load_errors
        );
        println!("probe: unexpected errors {probe_errors:?}");
        let show = |c: Option<f64>| c.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"));
        println!(
            "CPU over the window (cores): this process {}, server {}, whole machine {}, other {}",
            show(generator_cores),
            show(server_cores),
            show(machine_cores),
            show(other_cores)
        );
        for f in revoke_failures.iter().take(5) {
            println!("revoke failure: {f}");
        }
    }
    let clean = not_seen == 0
        && revoke_failures.is_empty()
        && load_errors.is_empty()
        && probe_errors.is_empty();
    if !clean {
        std::process::exit(1);
    }
    Ok(())
}
