//! The load generator: workers, phases, measurement.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use callsign_api::ApiVersion;
use callsign_core::token::{Algorithm, SigningKey};
use callsign_core::{IdentityId, ResourceId};
use hdrhistogram::Histogram;
use reqwest::Method;
use serde::Deserialize;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::report::{DatabaseUsage, Latency, OpReport, Report, ServerUsage};
use crate::target::Target;
use crate::{BenchArgs, Workload, procfs, seeded_identity};

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Longest measured window accepted.
const MAX_DURATION: f64 = 3600.0;
/// Measured window when only --requests bounds the run.
const COUNT_RUN_CAP: f64 = 600.0;

// Request bodies as fixed bytes: nothing to encode per request. A test reads them back through
// callsign-api's types, so they say what the wire vocabulary says.
const CREATE_BODY: &[u8] = b"{}";
const CREATE_TOKEN_BODY: &[u8] =
    br#"{"createTokenWithScopes":["chat","voip"],"expiresInMinutes":60}"#;
pub(crate) const ISSUE_BODY: &[u8] = br#"{"scopes":["chat","voip"],"expiresInMinutes":60}"#;

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Create,
    CreateToken,
    Issue,
    Revoke,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::CreateToken => "create-token",
            Op::Issue => "issue",
            Op::Revoke => "revoke",
            Op::Delete => "delete",
        }
    }

    fn expected_status(self) -> u16 {
        match self {
            Op::Create | Op::CreateToken => 201,
            Op::Issue => 200,
            Op::Revoke | Op::Delete => 204,
        }
    }
}

/// Where issue and revoke find identities.
pub(crate) enum Identities {
    None,
    /// Created over HTTP before the run: path segments with `:` encoded.
    Pool(Vec<String>),
    /// `0..count` of `callsign seed`.
    Seeded {
        resource: ResourceId,
        count: u64,
    },
}

impl Identities {
    fn len(&self) -> u64 {
        match self {
            Identities::None => 0,
            Identities::Pool(p) => p.len() as u64,
            Identities::Seeded { count, .. } => *count,
        }
    }

    pub(crate) fn pick(&self, rng: &mut Rng) -> Option<String> {
        match self {
            Identities::None => None,
            Identities::Pool(p) if p.is_empty() => None,
            Identities::Pool(p) => Some(p[rng.below(p.len() as u64) as usize].clone()),
            Identities::Seeded { resource, count } => {
                Some(encode_id(&seeded_identity(*resource, rng.below(*count))))
            }
        }
    }
}

/// The request-target of `/identities` (no id) or of the identity `id` (a path segment) with
/// `verb` (`""` or `/:issueAccessToken`, say) at `api_version`.
pub(crate) fn identity_path(api_version: ApiVersion, id: Option<&str>, verb: &str) -> String {
    match id {
        Some(id) => format!("/identities/{id}{verb}?api-version={api_version}"),
        None => format!("/identities?api-version={api_version}"),
    }
}

/// The id as a path segment, `:` percent-encoded as the SDKs send it.
fn encode_id(id: &IdentityId) -> String {
    id.to_string().replace(':', "%3A")
}

/// xorshift64*: a fast, good-enough generator for picking ops and identities.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// State shared by the workers and the controller.
struct Shared {
    target: Target,
    api_version: ApiVersion,
    workload: Workload,
    phase: AtomicU8,
    limit: Option<u64>,
    started_measured: AtomicU64,
    done_measured: AtomicU64,
    errors_measured: AtomicU64,
    identities: Identities,
    /// Identities only ever deleted (never issued to), so a delete cannot race an issue.
    doomed: Mutex<Vec<String>>,
    exhausted: AtomicBool,
    /// How many workers run (one per connection).
    workers: usize,
    finished_workers: AtomicUsize,
}

#[derive(Deserialize)]
struct CreatedBody {
    identity: CreatedIdentity,
}

#[derive(Deserialize)]
struct CreatedIdentity {
    id: String,
}

enum Outcome {
    Ok(Option<String>),
    Status(u16),
    Transport,
    Exhausted,
}

impl Shared {
    fn path(&self, id: Option<&str>, verb: &str) -> String {
        identity_path(self.api_version, id, verb)
    }

    async fn run_op(&self, client: &reqwest::Client, op: Op, rng: &mut Rng) -> Outcome {
        let (method, path, body) = match op {
            Op::Create => (Method::POST, self.path(None, ""), CREATE_BODY),
            Op::CreateToken => (Method::POST, self.path(None, ""), CREATE_TOKEN_BODY),
            Op::Issue | Op::Revoke => {
                let Some(id) = self.identities.pick(rng) else {
                    return Outcome::Exhausted;
                };
                if op == Op::Issue {
                    (
                        Method::POST,
                        self.path(Some(&id), "/:issueAccessToken"),
                        ISSUE_BODY,
                    )
                } else {
                    (
                        Method::POST,
                        self.path(Some(&id), "/:revokeAccessTokens"),
                        &b""[..],
                    )
                }
            }
            Op::Delete => {
                let id = self.doomed.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(id) = id else {
                    return Outcome::Exhausted;
                };
                (Method::DELETE, self.path(Some(&id), ""), &b""[..])
            }
        };
        match self.target.send(client, method, &path, body).await {
            Ok((status, bytes)) if status == op.expected_status() => {
                // Only the mix keeps what it creates (for later deletes).
                if op == Op::CreateToken && self.workload == Workload::Mix {
                    let id = serde_json::from_slice::<CreatedBody>(&bytes)
                        .ok()
                        .and_then(|b| IdentityId::parse(&b.identity.id).ok())
                        .map(|id| encode_id(&id));
                    return Outcome::Ok(id);
                }
                Outcome::Ok(None)
            }
            Ok((status, _)) => Outcome::Status(status),
            Err(_) => Outcome::Transport,
        }
    }

    fn choose(&self, rng: &mut Rng) -> Op {
        match self.workload {
            Workload::Create => Op::Create,
            Workload::CreateToken => Op::CreateToken,
            Workload::Issue => Op::Issue,
            Workload::Revoke => Op::Revoke,
            Workload::Delete => Op::Delete,
            Workload::Mix => mix_op(rng),
        }
    }
}

/// One draw of the mix: 80 % issue, 10 % create with token, 5 % revoke, 5 % delete.
fn mix_op(rng: &mut Rng) -> Op {
    match rng.below(100) {
        0..80 => Op::Issue,
        80..90 => Op::CreateToken,
        90..95 => Op::Revoke,
        _ => Op::Delete,
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits; larger values are clamped.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// What one worker measured.
struct WorkerResult {
    by_op: HashMap<Op, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
}

async fn worker(
    shared: Arc<Shared>,
    client: reqwest::Client,
    start: Arc<Barrier>,
    seed: u64,
) -> WorkerResult {
    let mut result = WorkerResult {
        by_op: HashMap::new(),
        errors: BTreeMap::new(),
    };
    let mut rng = Rng::new(seed);
    // Open the keep-alive connection (TCP and TLS) before anything is timed.
    if let Ok(url) = shared.target.url("/health")
        && let Ok(r) = client.get(url).send().await
    {
        let _ = r.bytes().await;
    }
    start.wait().await;
    loop {
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == STOP {
            break;
        }
        let measured = phase == MEASURE;
        if measured && shared.limit_reached() {
            break;
        }
        let op = shared.next_op(&mut rng);
        let started = Instant::now();
        let outcome = shared.run_op(&client, op, &mut rng).await;
        let micros = started.elapsed().as_micros() as u64;
        if !shared
            .record(&mut result, op, outcome, micros, measured)
            .await
        {
            break;
        }
    }
    shared.finished_workers.fetch_add(1, Ordering::AcqRel);
    result
}

impl Shared {
    /// Claims one measured request; false once --requests have been started.
    fn limit_reached(&self) -> bool {
        self.limit
            .is_some_and(|limit| self.started_measured.fetch_add(1, Ordering::AcqRel) >= limit)
    }

    /// The next operation of this worker.
    fn next_op(&self, rng: &mut Rng) -> Op {
        let op = self.choose(rng);
        if op == Op::Delete
            && self.workload == Workload::Mix
            && self
                .doomed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            // Nothing deletable yet: create one instead (it becomes deletable).
            return Op::CreateToken;
        }
        op
    }

    /// Counts what one request did (in the measured window only); false when the worker must
    /// stop (nothing left to work on).
    async fn record(
        &self,
        result: &mut WorkerResult,
        op: Op,
        outcome: Outcome,
        micros: u64,
        measured: bool,
    ) -> bool {
        match outcome {
            Outcome::Ok(created) => {
                if let Some(id) = created {
                    self.doomed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(id);
                }
                if measured {
                    result
                        .by_op
                        .entry(op)
                        .or_insert_with(histogram)
                        .saturating_record(micros.max(1));
                    self.done_measured.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Status(status) => {
                if measured {
                    *result.errors.entry(status.to_string()).or_default() += 1;
                    self.errors_measured.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Transport => {
                if measured {
                    *result.errors.entry("transport".into()).or_default() += 1;
                    self.errors_measured.fetch_add(1, Ordering::Relaxed);
                }
                // Do not spin on a server that is gone.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Outcome::Exhausted => {
                self.exhausted.store(true, Ordering::Release);
                return false;
            }
        }
        true
    }
}

/// Creates `count` identities over `connections` connections, returning their encoded ids.
pub(crate) async fn create_identities(
    target: &Target,
    api_version: ApiVersion,
    count: u64,
    connections: usize,
    quiet: bool,
) -> anyhow::Result<Vec<String>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let next = Arc::new(AtomicU64::new(0));
    let path = format!("/identities?api-version={api_version}");
    let started = Instant::now();
    let bar = crate::progress::counter(count, "pool", quiet);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (target, next, path) = (target.clone(), Arc::clone(&next), path.clone());
        let client = target.client()?;
        let bar = bar.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::AcqRel) < count {
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
                let (status, body) = target
                    .send(&client, Method::POST, &path, CREATE_BODY)
                    .await
                    .context("creating the identity pool")?;
                if status != 201 {
                    bail!("creating the identity pool: the server answered {status}");
                }
                let created: CreatedBody =
                    serde_json::from_slice(&body).context("creating the identity pool")?;
                let id = IdentityId::parse(&created.identity.id)
                    .context("the server returned an unexpected id")?;
                ids.push(encode_id(&id));
            }
            Ok::<_, anyhow::Error>(ids)
        });
    }
    let mut all = Vec::with_capacity(count as usize);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.context("a pool task failed")??);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !quiet {
        eprintln!(
            "bench: created {} identities in {:.1} s",
            all.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(all)
}

/// The resource of the server's identities, learned from one create.
pub(crate) async fn learn_resource(
    target: &Target,
    api_version: ApiVersion,
) -> anyhow::Result<ResourceId> {
    let ids = create_identities(target, api_version, 1, 1, true).await?;
    let raw = ids
        .first()
        .context("no identity was created")?
        .replace("%3A", ":");
    Ok(IdentityId::parse(&raw)
        .context("the server returned an unexpected id")?
        .resource())
}

/// The cost of one bare ES256 signature on this machine, in microseconds: the same signing call
/// the server makes, over a payload the size of a token's signing input, on one thread, for
/// about `budget`.
pub fn es256_sign_cost(budget: Duration) -> anyhow::Result<f64> {
    let key = SigningKey::generate(Algorithm::Es256).context("cannot make an ES256 key")?;
    let message = vec![b'e'; 620];
    for _ in 0..200 {
        std::hint::black_box(key.sign(std::hint::black_box(&message))?);
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        for _ in 0..100 {
            std::hint::black_box(key.sign(std::hint::black_box(&message))?);
        }
        n += 100;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn progress(label: &str, since: Instant, ops: u64, last_ops: u64, last: Instant, errors: u64) {
    let secs = since.elapsed().as_secs_f64();
    let window = last.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "bench: {label} {secs:>5.1} s  {ops:>9} ops  {:>8.0} ops/s (last {:>8.0})  errors {errors}",
        ops as f64 / secs.max(1e-9),
        (ops - last_ops) as f64 / window
    );
}

/// Runs one workload against a running server and returns the report.
pub async fn bench(args: BenchArgs) -> anyhow::Result<Report> {
    let duration = measured_window(&args)?;
    let probe = Probe {
        server_pid: args.server_pid.map(|p| p.to_string()),
        database_process: args.database_process.clone(),
    };
    if let Some(pid) = &probe.server_pid {
        procfs::cpu_seconds(pid).context("--server-pid must be a process on this machine")?;
    }
    let (target, es256_sign_us) = target_and_baseline(&args)?;

    let shared = Arc::new(prepare(&args, target).await?);
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let workers = spawn_workers(&shared, &barrier)?;
    let (before, started) =
        start_measuring(&shared, &barrier, args.warmup, args.quiet, &probe).await?;
    let elapsed = measure(&shared, started, duration, args.quiet).await;
    let after = probe.sample()?;
    shared.phase.store(STOP, Ordering::Release);

    let merged = collect(workers).await?;
    let window = Window {
        elapsed,
        duration,
        before,
        after,
    };
    assemble(&args, &shared, &window, merged, es256_sign_us)
}

/// The server under test, and the bare ES256 signature's cost measured first, while the
/// server is idle (unless `--no-baseline`).
pub(crate) fn target_and_baseline(args: &BenchArgs) -> anyhow::Result<(Target, Option<f64>)> {
    let target = Target::new(
        &args.connection_string,
        args.ca_cert.as_deref(),
        args.data_dir.as_deref(),
        args.allow_remote,
    )?;
    let es256_sign_us = if args.no_baseline {
        None
    } else {
        Some(es256_sign_cost(Duration::from_secs(1))?)
    };
    Ok((target, es256_sign_us))
}

/// Checks the arguments; returns the measured window in seconds.
fn measured_window(args: &BenchArgs) -> anyhow::Result<f64> {
    if args.connections == 0 || args.connections > 4096 {
        bail!("--connections must be between 1 and 4096");
    }
    let duration = match (args.duration, args.requests) {
        (Some(d), _) => d,
        (None, Some(_)) => COUNT_RUN_CAP,
        (None, None) => 10.0,
    };
    if !(duration > 0.0 && duration <= MAX_DURATION) {
        bail!("--duration must be more than 0 and at most {MAX_DURATION} seconds");
    }
    if !(0.0..=600.0).contains(&args.warmup) {
        bail!("--warmup must be between 0 and 600 seconds");
    }
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    if args.seeded.is_some() && !matches!(args.workload, Workload::Issue | Workload::Revoke) {
        bail!("--seeded works with the issue and revoke workloads");
    }
    if args.seeded == Some(0) {
        bail!("--seeded must be at least 1");
    }
    Ok(duration)
}

/// Makes the identities the workload needs (the pool, or the seeded range, and those to
/// delete) and the state the workers share.
async fn prepare(args: &BenchArgs, target: Target) -> anyhow::Result<Shared> {
    let identities = match (args.workload, args.seeded) {
        (Workload::Issue | Workload::Revoke, Some(count)) => Identities::Seeded {
            resource: learn_resource(&target, args.api_version).await?,
            count,
        },
        (Workload::Issue | Workload::Revoke | Workload::Mix, None) => Identities::Pool(
            create_identities(
                &target,
                args.api_version,
                args.pool.unwrap_or(1000).max(1),
                args.connections,
                args.quiet,
            )
            .await?,
        ),
        _ => Identities::None,
    };
    let doomed_count = match args.workload {
        Workload::Delete => args
            .pool
            .unwrap_or_else(|| args.requests.map_or(30_000, |r| r + 2_000)),
        Workload::Mix => (identities.len() / 4).max(50),
        _ => 0,
    };
    let doomed = create_identities(
        &target,
        args.api_version,
        doomed_count,
        args.connections,
        args.quiet,
    )
    .await?;
    Ok(Shared {
        target,
        api_version: args.api_version,
        workload: args.workload,
        phase: AtomicU8::new(if args.warmup > 0.0 { WARMUP } else { MEASURE }),
        limit: args.requests,
        started_measured: AtomicU64::new(0),
        done_measured: AtomicU64::new(0),
        errors_measured: AtomicU64::new(0),
        identities,
        doomed: Mutex::new(doomed),
        exhausted: AtomicBool::new(false),
        workers: args.connections,
        finished_workers: AtomicUsize::new(0),
    })
}

/// One worker per connection, each waiting at `barrier`.
fn spawn_workers(
    shared: &Arc<Shared>,
    barrier: &Arc<Barrier>,
) -> anyhow::Result<Vec<JoinHandle<WorkerResult>>> {
    let mut workers = Vec::with_capacity(shared.workers);
    for i in 0..shared.workers {
        let client = shared.target.client()?;
        let seed = (i as u64 + 1) ^ (u64::from(std::process::id()) << 20);
        workers.push(tokio::spawn(worker(
            Arc::clone(shared),
            client,
            Arc::clone(barrier),
            seed,
        )));
    }
    Ok(workers)
}

/// How often the controller looks at the workers.
const TICK: Duration = Duration::from_millis(50);

impl Shared {
    /// Whether every worker has stopped.
    fn all_done(&self) -> bool {
        self.finished_workers.load(Ordering::Acquire) == self.workers
    }
}

/// Lets the workers go and runs the warm-up, if any; returns the usage when the measured window
/// opened and the moment it did.
async fn start_measuring(
    shared: &Shared,
    barrier: &Barrier,
    warmup: f64,
    quiet: bool,
    probe: &Probe,
) -> anyhow::Result<(Usage, Instant)> {
    if warmup <= 0.0 {
        // No warm-up: the workers start measured the moment they are let go.
        let measured = probe.sample()?;
        let started = Instant::now();
        barrier.wait().await;
        return Ok((measured, started));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut last = Instant::now();
    let bar = crate::progress::timer(warmup, "warm-up", quiet);
    while started.elapsed().as_secs_f64() < warmup && !shared.all_done() {
        tokio::time::sleep(TICK).await;
        if let Some(bar) = &bar {
            bar.set_position(started.elapsed().as_millis() as u64);
        } else if !quiet && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!("bench: warm-up {:>5.1} s", started.elapsed().as_secs_f64());
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let measured = probe.sample()?;
    let started = Instant::now();
    shared.phase.store(MEASURE, Ordering::Release);
    Ok((measured, started))
}

/// Waits out the measured window (or until every worker has stopped), with a progress line a
/// second; returns its length in seconds.
async fn measure(shared: &Shared, started: Instant, duration: f64, quiet: bool) -> f64 {
    let mut last = Instant::now();
    let mut last_ops = 0;
    let bar = crate::progress::timer(duration, "measure", quiet);
    loop {
        tokio::time::sleep(TICK).await;
        if started.elapsed().as_secs_f64() >= duration || shared.all_done() {
            break;
        }
        if let Some(bar) = &bar {
            let ops = shared.done_measured.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            bar.set_position(started.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{ops} ops, {:.0} ops/s, errors {}",
                ops as f64 / secs.max(1e-9),
                shared.errors_measured.load(Ordering::Relaxed)
            ));
        } else if !quiet && last.elapsed() >= Duration::from_secs(1) {
            let ops = shared.done_measured.load(Ordering::Relaxed);
            progress(
                "measure",
                started,
                ops,
                last_ops,
                last,
                shared.errors_measured.load(Ordering::Relaxed),
            );
            last = Instant::now();
            last_ops = ops;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    started.elapsed().as_secs_f64()
}

/// What the workers measured, merged.
async fn collect(workers: Vec<JoinHandle<WorkerResult>>) -> anyhow::Result<WorkerResult> {
    let mut merged = WorkerResult {
        by_op: HashMap::new(),
        errors: BTreeMap::new(),
    };
    for w in workers {
        let r = w.await.context("a worker failed")?;
        for (op, h) in r.by_op {
            merged
                .by_op
                .entry(op)
                .or_insert_with(histogram)
                .add(h)
                .map_err(|e| anyhow::anyhow!("merging histograms: {e}"))?;
        }
        for (k, v) in r.errors {
            *merged.errors.entry(k).or_default() += v;
        }
    }
    Ok(merged)
}

/// Which processes' usage is read around the measured window (same machine only).
struct Probe {
    server_pid: Option<String>,
    database_process: Option<String>,
}

/// CPU seconds and memory at one edge of the measured window.
struct Usage {
    /// The server's CPU seconds and its resident memory now and at its peak, KiB.
    server: Option<(f64, (u64, u64))>,
    /// The database processes' CPU seconds and how many there are.
    database: Option<(f64, usize)>,
    /// This process's CPU seconds.
    client_cpu: f64,
    /// CPU seconds the whole machine has been busy.
    machine_busy: f64,
}

impl Probe {
    fn sample(&self) -> anyhow::Result<Usage> {
        let server = match &self.server_pid {
            Some(pid) => Some((procfs::cpu_seconds(pid)?, procfs::memory_kib(pid)?)),
            None => None,
        };
        let database = self
            .database_process
            .as_deref()
            .map(procfs::cpu_seconds_of_command)
            .transpose()?;
        Ok(Usage {
            server,
            database,
            client_cpu: procfs::cpu_seconds("self")?,
            machine_busy: procfs::machine_busy_seconds()?,
        })
    }
}

/// The measured window: its length, the planned length and the usage at both edges.
struct Window {
    elapsed: f64,
    duration: f64,
    before: Usage,
    after: Usage,
}

impl Window {
    /// `n` per second of the window.
    fn rate(&self, n: f64) -> f64 {
        n / self.elapsed.max(1e-9)
    }

    fn server(&self, pid: Option<u32>, per_op: impl Fn(f64) -> f64) -> Option<ServerUsage> {
        match (pid, self.before.server, self.after.server) {
            (Some(pid), Some((cpu0, (rss0, _))), Some((cpu1, (rss, peak)))) => Some(ServerUsage {
                pid,
                cpu_s: cpu1 - cpu0,
                cpu_us_per_op: per_op((cpu1 - cpu0) * 1e6),
                cores_busy: self.rate(cpu1 - cpu0),
                rss_before_kib: rss0,
                rss_kib: rss,
                rss_peak_kib: peak,
            }),
            _ => None,
        }
    }

    fn database(&self, name: Option<&str>, per_op: impl Fn(f64) -> f64) -> Option<DatabaseUsage> {
        match (name, self.before.database, self.after.database) {
            (Some(name), Some((cpu0, _)), Some((cpu1, processes))) => Some(DatabaseUsage {
                process: name.to_owned(),
                processes,
                cpu_s: cpu1 - cpu0,
                cpu_us_per_op: per_op((cpu1 - cpu0) * 1e6),
            }),
            _ => None,
        }
    }
}

/// The report of a run.
fn assemble(
    args: &BenchArgs,
    shared: &Shared,
    window: &Window,
    merged: WorkerResult,
    es256_sign_us: Option<f64>,
) -> anyhow::Result<Report> {
    let mut total = histogram();
    for h in merged.by_op.values() {
        total
            .add(h)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e}"))?;
    }
    let ops = total.len();
    let per_op = |n: f64| if ops == 0 { 0.0 } else { n / ops as f64 };
    let stopped_by = if shared.exhausted.load(Ordering::Acquire) {
        "pool exhausted"
    } else if window.elapsed >= window.duration {
        "duration"
    } else {
        "requests"
    };
    let server = window.server(args.server_pid, per_op);
    let database = window.database(args.database_process.as_deref(), per_op);
    let server_cpu_over_es256 = match (&server, es256_sign_us) {
        (Some(s), Some(sign)) if ops > 0 && sign > 0.0 => Some(s.cpu_us_per_op / sign),
        _ => None,
    };
    let client_cpu = window.after.client_cpu - window.before.client_cpu;
    let machine_cores_busy = window.rate(window.after.machine_busy - window.before.machine_busy);
    let accounted = client_cpu
        + server.as_ref().map_or(0.0, |s| s.cpu_s)
        + database.as_ref().map_or(0.0, |d| d.cpu_s);
    let other_cores_busy = (machine_cores_busy - window.rate(accounted)).max(0.0);
    Ok(Report {
        workload: args.workload.name().into(),
        endpoint: shared.target.endpoint().to_string(),
        connections: args.connections,
        warmup_s: args.warmup,
        elapsed_s: window.elapsed,
        stopped_by: stopped_by.into(),
        identities: shared.identities.len(),
        ops,
        ops_per_s: window.rate(ops as f64),
        latency_us: Latency::from_histogram(&total),
        error_total: merged.errors.values().sum(),
        errors: merged.errors,
        by_op: by_op_reports(&merged.by_op, window),
        server,
        database,
        client_cpu_us_per_op: per_op(client_cpu * 1e6),
        machine_cores_busy,
        other_cores_busy,
        es256_sign_us,
        server_cpu_over_es256,
    })
}

/// Each operation type's share of the run.
fn by_op_reports(
    by_op: &HashMap<Op, Histogram<u64>>,
    window: &Window,
) -> BTreeMap<String, OpReport> {
    by_op
        .iter()
        .map(|(op, h)| {
            (
                op.name().to_owned(),
                OpReport {
                    ops: h.len(),
                    ops_per_s: window.rate(h.len() as f64),
                    latency_us: Latency::from_histogram(h),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_are_wire_bodies_with_known_scopes() {
        let create: callsign_api::CreateIdentityRequest =
            serde_json::from_slice(CREATE_TOKEN_BODY).expect("create body");
        let issue: callsign_api::IssueTokenRequest =
            serde_json::from_slice(ISSUE_BODY).expect("issue body");
        for scopes in [create.create_token_with_scopes, issue.scopes] {
            let scopes = scopes.expect("scopes");
            assert!(!scopes.is_empty());
            for name in scopes {
                name.parse::<callsign_api::Scope>().expect("a known scope");
            }
        }
        let _: callsign_api::CreateIdentityRequest =
            serde_json::from_slice(CREATE_BODY).expect("empty create body");
    }

    #[test]
    fn the_mix_has_the_documented_shares() {
        let mut rng = Rng::new(42);
        let mut counts: HashMap<Op, u32> = HashMap::new();
        for _ in 0..100_000 {
            *counts.entry(mix_op(&mut rng)).or_default() += 1;
        }
        let share = |op| f64::from(counts[&op]) / 1000.0;
        assert!((share(Op::Issue) - 80.0).abs() < 1.0);
        assert!((share(Op::CreateToken) - 10.0).abs() < 1.0);
        assert!((share(Op::Revoke) - 5.0).abs() < 1.0);
        assert!((share(Op::Delete) - 5.0).abs() < 1.0);
    }

    #[test]
    fn the_baseline_is_measured() {
        let us = es256_sign_cost(Duration::from_millis(20)).expect("signs");
        assert!(us > 0.0 && us < 10_000.0, "{us}");
    }
}
