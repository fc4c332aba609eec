//! Every workload runs briefly against a real server started on port 0, and seeding writes the
//! identities it promises. These prove the tools work; they assert no speed.

use std::path::Path;

use callsign_bench::{BenchArgs, Report, SeedArgs, Workload, bench, seed, seeded_identity};
use callsign_core::{IdentityId, ResourceId};
use callsign_server::{Application, Settings};
use tokio::sync::oneshot;

struct Running {
    connection_string: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(dir: &Path) -> Running {
        let mut settings = Settings::new(dir);
        settings.listen = "127.0.0.1:0".parse().expect("addr");
        let app = Application::build(settings).await.expect("server builds");
        let connection_string = app.connection_string();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(app.serve(async {
            let _ = rx.await;
        }));
        Running {
            connection_string,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task
            .await
            .expect("join")
            .expect("server stops cleanly");
    }
}

fn brief(workload: Workload, running: &Running, dir: &Path) -> BenchArgs {
    let mut args = BenchArgs::new(workload, running.connection_string.clone());
    args.data_dir = Some(dir.to_path_buf());
    args.connections = 2;
    args.requests = Some(200);
    args.duration = Some(15.0);
    args.warmup = 0.0;
    args.pool = Some(if workload == Workload::Delete {
        220
    } else {
        40
    });
    args.no_baseline = true;
    args.quiet = true;
    // The server runs in this process.
    args.server_pid = Some(std::process::id());
    args
}

fn check(report: &Report, want_ops: u64) {
    assert_eq!(report.error_total, 0, "{}", report.to_text());
    assert!(report.errors.is_empty());
    assert_eq!(report.ops, want_ops, "{}", report.to_text());
    assert!(report.ops_per_s > 0.0);
    assert!(report.latency_us.p50 > 0 && report.latency_us.max >= report.latency_us.p99);
    let server = report.server.as_ref().expect("server usage");
    assert!(server.rss_kib > 0);
    // Round trip through the JSON the CLI prints.
    let json = serde_json::to_string(report).expect("json");
    let back: Report = serde_json::from_str(&json).expect("parses");
    assert_eq!((back.ops, &back.errors), (report.ops, &report.errors));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_briefly_without_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = Running::start(dir.path()).await;
    for workload in [
        Workload::Create,
        Workload::CreateToken,
        Workload::Issue,
        Workload::Revoke,
        Workload::Delete,
        Workload::Mix,
    ] {
        let report = bench(brief(workload, &running, dir.path()))
            .await
            .unwrap_or_else(|e| panic!("{workload:?}: {e:#}"));
        assert_eq!(report.workload, workload.name());
        assert_eq!(report.stopped_by, "requests");
        check(&report, 200);
        if workload == Workload::Mix {
            assert!(report.by_op.contains_key("issue"), "{}", report.to_text());
        }
    }

    // A duration-bounded run with a warm-up and the signature baseline.
    let mut args = brief(Workload::Issue, &running, dir.path());
    args.requests = None;
    args.duration = Some(0.5);
    args.warmup = 0.2;
    args.no_baseline = false;
    let report = bench(args).await.expect("timed run");
    assert_eq!(report.stopped_by, "duration");
    assert_eq!(report.error_total, 0);
    assert!(report.ops > 0);
    assert!(report.es256_sign_us.is_some_and(|us| us > 0.0));
    assert!(report.server_cpu_over_es256.is_some());

    // A delete pool smaller than the request count ends the run early, without errors.
    let mut args = brief(Workload::Delete, &running, dir.path());
    args.pool = Some(30);
    let report = bench(args).await.expect("short pool");
    assert_eq!(report.stopped_by, "pool exhausted");
    check(&report, 30);

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_endpoints_are_refused_without_the_flag() {
    let args = BenchArgs::new(
        Workload::Issue,
        "endpoint=https://192.0.2.1:8443/;accesskey=YWJj",
    );
    let err = bench(args).await.expect_err("refused");
    assert!(format!("{err:#}").contains("--allow-remote"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_identities_are_stored_and_servable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = seed(SeedArgs {
        count: 1_000,
        start: 0,
        data_dir: Some(dir.path().to_path_buf()),
        database_url: None,
        batch: 300,
        json: false,
        quiet: true,
    })
    .await
    .expect("seeds");
    assert_eq!((report.count, report.inserted), (1_000, 1_000));
    let resource = ResourceId::parse(&report.resource).expect("resource id");

    // Seeding again inserts nothing new.
    let again = seed(SeedArgs {
        count: 1_000,
        start: 0,
        data_dir: Some(dir.path().to_path_buf()),
        database_url: None,
        batch: 1_000,
        json: true,
        quiet: true,
    })
    .await
    .expect("seeds again");
    assert_eq!(
        (again.inserted, again.resource.as_str()),
        (0, report.resource.as_str())
    );

    {
        let store = callsign_store::open_embedded_store(dir.path()).expect("store");
        use callsign_store::{BulkIdentities as _, IdentityStore as _};
        let all = store.list_identities(None, 5_000).await.expect("list");
        assert_eq!(all.len(), 1_000);
        for i in [0, 1, 499, 999] {
            let id = seeded_identity(resource, i);
            let found = store.get_identity(&id).await.expect("get");
            assert_eq!(found.map(|r| r.id), Some(id));
        }
        let beyond: IdentityId = seeded_identity(resource, 1_000);
        assert_eq!(store.get_identity(&beyond).await.expect("get"), None);
        use callsign_store::Store as _;
        store.close().await;
    }

    // The server serves them: issuing to random seeded ids never meets a 404.
    let running = Running::start(dir.path()).await;
    let mut args = brief(Workload::Issue, &running, dir.path());
    args.seeded = Some(1_000);
    let report = bench(args).await.expect("issue to seeded ids");
    check(&report, 200);
    assert_eq!(report.identities, 1_000);
    running.stop().await;
}
