//! Load generation and bulk seeding for callsign.
//!
//! * [`bench`] drives a running server the way real clients do: every request freshly
//!   HMAC-signed ([`callsign_client::signing::sign`]), HTTP/1.1 keep-alive over TLS, one connection
//!   per worker, for a fixed time or a fixed number of requests after a warm-up that is not
//!   counted. It reports throughput, an HDR latency histogram summary, errors by status and, when
//!   the server runs on this machine (`--server-pid`), the server's CPU time per operation taken
//!   from `/proc/<pid>/stat` over the measured window only, next to the cost of one bare ES256
//!   signature measured in the same run.
//! * [`seed`] writes many identities straight into a store with
//!   [`callsign_store::BulkIdentities::import_identities`] in large batches. Seeded ids are a pure
//!   function of the resource and an index ([`seeded_identity`]), so `bench --seeded N` can pick
//!   any of them at random without a list.
//!
//! Both are exposed as clap argument structs ([`BenchArgs`], [`SeedArgs`]) plus `run_*`
//! functions that print, so the `callsign` binary only wires them in.

mod load;
mod procfs;
pub mod progress;
mod report;
mod seed;
mod target;
mod wrk;

use std::path::PathBuf;

pub use load::{bench, es256_sign_cost};
pub use report::{DatabaseUsage, Latency, OpReport, Report, ServerUsage};
pub use seed::{SeedReport, seed, seeded_identity};
pub use wrk::{WrkScript, write_wrk_script};

/// What the load generator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// `POST /identities` without scopes (a durable write per request).
    Create,
    /// `POST /identities` with `createTokenWithScopes` (a durable write and a signature).
    CreateToken,
    /// `POST /identities/{id}/:issueAccessToken` against a pre-created (or seeded) pool.
    Issue,
    /// `POST /identities/{id}/:revokeAccessTokens` against the pool.
    Revoke,
    /// `DELETE /identities/{id}`, each on a pre-created identity of its own.
    Delete,
    /// 80 % issue, 10 % create with token, 5 % revoke, 5 % delete.
    Mix,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::CreateToken => "create-token",
            Workload::Issue => "issue",
            Workload::Revoke => "revoke",
            Workload::Delete => "delete",
            Workload::Mix => "mix",
        }
    }
}

/// `callsign bench`: drive a running server and report what it sustained.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(long, value_enum, default_value = "issue")]
    pub workload: Workload,
    /// `endpoint=…;accesskey=…` of the server under test.
    #[arg(
        long,
        env = "COMMUNICATION_SERVICES_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub connection_string: String,
    /// The server's data dir; its `tls/ca.pem` is trusted unless --ca-cert is given.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the server's TLS certificate.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Concurrent connections (one worker and one keep-alive connection each).
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Measured time in seconds [default: 10, or up to 600 with --requests].
    #[arg(long, short = 'd')]
    pub duration: Option<f64>,
    /// Stop after this many measured requests (or at --duration, whichever comes first).
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Warm-up in seconds before measuring (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Identities created before the run for issue, revoke and mix [default: 1000]; for delete,
    /// how many to create (the run ends when they are used up) [default: --requests + 2000, or
    /// 30000].
    #[arg(long)]
    pub pool: Option<u64>,
    /// Use the identities 0..N written by `callsign seed` instead of creating a pool (issue and
    /// revoke only).
    #[arg(long, value_name = "N")]
    pub seeded: Option<u64>,
    /// The server's process id, for its CPU time per operation and memory (same machine only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Also count the CPU time of every process with this command name, e.g. `postgres` for the
    /// database behind the server (same machine only).
    #[arg(long, value_name = "NAME")]
    pub database_process: Option<String>,
    /// Skip measuring the bare ES256 signature cost.
    #[arg(long)]
    pub no_baseline: bool,
    /// Allow an endpoint that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// api-version to send.
    #[arg(long, default_value = callsign_api::ApiVersion::CLIENT_DEFAULT.as_str())]
    pub api_version: callsign_api::ApiVersion,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Instead of running the load, write a script for the `wrk` load generator that replays
    /// pre-signed requests of the workload (issue only; valid for the server's 15-minute date
    /// window), measure the bare ES256 signature, print both as JSON and exit.
    #[arg(long, value_name = "FILE")]
    pub wrk_script: Option<PathBuf>,
}

impl BenchArgs {
    /// Arguments for `workload` against `connection_string` with the command-line defaults.
    pub fn new(workload: Workload, connection_string: impl Into<String>) -> Self {
        Self {
            workload,
            connection_string: connection_string.into(),
            data_dir: None,
            ca_cert: None,
            connections: 16,
            duration: None,
            requests: None,
            warmup: 2.0,
            pool: None,
            seeded: None,
            server_pid: None,
            database_process: None,
            no_baseline: false,
            allow_remote: false,
            api_version: callsign_api::ApiVersion::CLIENT_DEFAULT,
            json: false,
            quiet: false,
            wrk_script: None,
        }
    }
}

/// `callsign seed`: bulk-insert identities straight into a store (not through HTTP).
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// How many identities to write.
    #[arg(long)]
    pub count: u64,
    /// Index of the first identity (to grow a seeded directory in steps).
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Data dir of the embedded store [default: ./callsign-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A postgres:// URL instead of the embedded store.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Identities per import batch.
    #[arg(long, default_value_t = 50_000)]
    pub batch: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `callsign bench` and prints the report (text, or JSON with `--json`).
pub async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let json = args.json;
    if args.wrk_script.is_some() {
        let written = write_wrk_script(args).await?;
        println!("{}", serde_json::to_string_pretty(&written)?);
        return Ok(());
    }
    let report = bench(args).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// Runs `callsign seed` and prints what it did.
pub async fn run_seed(args: SeedArgs) -> anyhow::Result<()> {
    let json = args.json;
    let report = seed(args).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "callsign: seeded identities {}..{} of resource {}: {} inserted ({} already there) in {:.1} s, {:.0}/s",
            report.start,
            report.start + report.count,
            report.resource,
            report.inserted,
            report.count - report.inserted,
            report.elapsed_s,
            report.per_s
        );
    }
    Ok(())
}
