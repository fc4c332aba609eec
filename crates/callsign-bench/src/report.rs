//! The result of one run, for people (`to_text`) and machines (serde).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds, from an HDR histogram (3 significant digits).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest request.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// One operation type within the run (several in `mix`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpReport {
    /// Successful operations in the measured window.
    pub ops: u64,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Their latency.
    pub latency_us: Latency,
}

/// What the server process used (same machine only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    /// Its process id.
    pub pid: u32,
    /// User plus system CPU seconds spent in the measured window.
    pub cpu_s: f64,
    /// Of which per successful operation, in microseconds.
    pub cpu_us_per_op: f64,
    /// Cores busy on average over the window.
    pub cores_busy: f64,
    /// Resident memory before the run (after the pool was made), KiB.
    pub rss_before_kib: u64,
    /// Resident memory at the end of the run, KiB.
    pub rss_kib: u64,
    /// Peak resident memory of the process so far, KiB.
    pub rss_peak_kib: u64,
}

/// What the database processes used (same machine only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseUsage {
    /// The command name counted.
    pub process: String,
    /// How many such processes ran at the end of the window.
    pub processes: usize,
    /// Their CPU seconds in the measured window.
    pub cpu_s: f64,
    /// Of which per successful operation, in microseconds.
    pub cpu_us_per_op: f64,
}

/// The result of one `callsign bench` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Workload name.
    pub workload: String,
    /// The endpoint driven.
    pub endpoint: String,
    /// Concurrent connections.
    pub connections: usize,
    /// Warm-up length (not counted), seconds.
    pub warmup_s: f64,
    /// Length of the measured window, seconds.
    pub elapsed_s: f64,
    /// What ended the run: `duration`, `requests` or `pool exhausted`.
    pub stopped_by: String,
    /// Identities the run could pick from (pool or seeded), 0 for create workloads.
    pub identities: u64,
    /// Successful operations in the measured window.
    pub ops: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Latency of successful operations.
    pub latency_us: Latency,
    /// Failed requests by HTTP status (or `transport`).
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub error_total: u64,
    /// Per operation type.
    pub by_op: BTreeMap<String, OpReport>,
    /// The server's usage, with `--server-pid`.
    pub server: Option<ServerUsage>,
    /// The database's usage, with `--database-process`.
    pub database: Option<DatabaseUsage>,
    /// This load generator's own CPU time per operation, microseconds.
    pub client_cpu_us_per_op: f64,
    /// Cores busy on the whole machine during the window, on average.
    pub machine_cores_busy: f64,
    /// Of which neither the server, the database processes nor this load generator: other
    /// work on the machine that competed with the run.
    pub other_cores_busy: f64,
    /// One bare ES256 signature on this machine, measured in this run, microseconds.
    pub es256_sign_us: Option<f64>,
    /// Server CPU per operation divided by the bare ES256 signature cost.
    pub server_cpu_over_es256: Option<f64>,
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn latency_line(l: &Latency) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        thousands(l.p50),
        thousands(l.p90),
        thousands(l.p99),
        thousands(l.p999),
        thousands(l.max)
    )
}

impl Report {
    /// The report as a few aligned lines.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.write_throughput(&mut s);
        self.write_errors(&mut s);
        self.write_usage(&mut s);
        s
    }

    /// The run, its throughput and its latency (per operation type too, for a mix).
    fn write_throughput(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "callsign bench: {}, {} connections, {:.1} s measured after {:.1} s warm-up, stopped by {} ({})",
            self.workload,
            self.connections,
            self.elapsed_s,
            self.warmup_s,
            self.stopped_by,
            self.endpoint
        );
        if self.identities > 0 {
            let _ = writeln!(s, "  identities    {}", thousands(self.identities));
        }
        let _ = writeln!(
            s,
            "  throughput    {} ops, {:.0} ops/s",
            thousands(self.ops),
            self.ops_per_s
        );
        let _ = writeln!(s, "  latency (µs)  {}", latency_line(&self.latency_us));
        if self.by_op.len() > 1 {
            for (name, op) in &self.by_op {
                let _ = writeln!(
                    s,
                    "    {name:<13}{} ops, {:.0} ops/s, {}",
                    thousands(op.ops),
                    op.ops_per_s,
                    latency_line(&op.latency_us)
                );
            }
        }
    }

    /// Failed requests by status.
    fn write_errors(&self, s: &mut String) {
        if self.errors.is_empty() {
            let _ = writeln!(s, "  errors        none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {}", thousands(*v)))
                .collect();
            let _ = writeln!(s, "  errors        {}", list.join(", "));
        }
    }

    /// What the server, the database, this process and the machine spent.
    fn write_usage(&self, s: &mut String) {
        if let Some(server) = &self.server {
            let _ = writeln!(
                s,
                "  server CPU    {:.1} µs/op ({:.2} cores busy, pid {})",
                server.cpu_us_per_op, server.cores_busy, server.pid
            );
            let _ = writeln!(
                s,
                "  server RSS    {:.1} MiB at the end ({:.1} MiB before, peak {:.1} MiB)",
                server.rss_kib as f64 / 1024.0,
                server.rss_before_kib as f64 / 1024.0,
                server.rss_peak_kib as f64 / 1024.0
            );
        }
        if let Some(db) = &self.database {
            let _ = writeln!(
                s,
                "  database CPU  {:.1} µs/op ({} {} processes)",
                db.cpu_us_per_op, db.processes, db.process
            );
        }
        if let Some(sign) = self.es256_sign_us {
            let _ = write!(s, "  ES256 sign    {sign:.1} µs (bare signature, this run)");
            match self.server_cpu_over_es256 {
                Some(r) => {
                    let _ = writeln!(s, "; server CPU per op = {r:.2} x");
                }
                None => s.push('\n'),
            }
        }
        let _ = writeln!(s, "  client CPU    {:.1} µs/op", self.client_cpu_us_per_op);
        let _ = writeln!(
            s,
            "  machine       {:.2} cores busy, {:.2} of them by other processes",
            self.machine_cores_busy, self.other_cores_busy
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
