//! Every workload runs briefly against a real server started on port 0, and seeding writes the
//! identities it promises. These prove the tools work; they assert no speed.

use callsign_bench::{BenchArgs, Report, SeedArgs, Workload, bench, seed, seeded_identity};
use callsign_core::ResourceId;
use callsign_testkit::{Backend, Reply, TestApp, TestDatabase, enc, spawn_app};
use reqwest::Method;

fn brief(workload: Workload, app: &TestApp) -> BenchArgs {
    let mut args = BenchArgs::new(workload, app.connection_string.clone());
    args.data_dir = Some(app.data_dir.path().to_path_buf());
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
    // On SQLite: the load generator speaks HTTP only, whatever the server stores in.
    let app = spawn_app(Backend::Sqlite).await;
    for workload in [
        Workload::Create,
        Workload::CreateToken,
        Workload::Issue,
        Workload::Revoke,
        Workload::Delete,
        Workload::Mix,
    ] {
        let report = bench(brief(workload, &app))
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
    let mut args = brief(Workload::Issue, &app);
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
    let mut args = brief(Workload::Delete, &app);
    args.pool = Some(30);
    let report = bench(args).await.expect("short pool");
    assert_eq!(report.stopped_by, "pool exhausted");
    check(&report, 30);

    app.stop().await;
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

async fn get_identity(app: &TestApp, id: &str) -> Reply {
    let target = format!("/identities/{}?api-version=2025-03-02-preview", enc(id));
    app.send(Method::GET, &target, None).await
}

/// Seeds 1,000 identities into a new store on `backend` (twice: the second run adds none), then
/// serves them.
async fn seeded_identities_are_stored_and_servable(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDatabase::create().await),
    };
    let seed_args = |batch, json| SeedArgs {
        count: 1_000,
        start: 0,
        data_dir: Some(dir.path().to_path_buf()),
        database_url: database.as_ref().map(TestDatabase::url),
        batch,
        json,
        quiet: true,
    };
    let report = seed(seed_args(300, false)).await.expect("seeds");
    assert_eq!((report.count, report.inserted), (1_000, 1_000));
    let resource = ResourceId::parse(&report.resource).expect("resource id");

    // Seeding again inserts nothing new.
    let again = seed(seed_args(1_000, true)).await.expect("seeds again");
    assert_eq!(
        (again.inserted, again.resource.as_str()),
        (0, report.resource.as_str())
    );

    let mut app = TestApp::builder().backend(backend).data_dir(dir);
    if let Some(database) = database {
        app = app.database(database);
    }
    let app = app.spawn().await;
    assert_eq!(app.resource_id, report.resource);
    assert_eq!(app.identity_count().await, 1_000);
    for i in [0, 1, 499, 999] {
        let id = seeded_identity(resource, i).to_string();
        let r = get_identity(&app, &id).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["id"], id.as_str());
    }
    let beyond = seeded_identity(resource, 1_000).to_string();
    get_identity(&app, &beyond)
        .await
        .assert_error(404, "IdentityNotFound");

    // The server serves them: issuing to random seeded ids never meets a 404.
    let mut args = brief(Workload::Issue, &app);
    args.seeded = Some(1_000);
    let report = bench(args).await.expect("issue to seeded ids");
    check(&report, 200);
    assert_eq!(report.identities, 1_000);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_identities_are_stored_and_servable_on_sqlite() {
    seeded_identities_are_stored_and_servable(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_identities_are_stored_and_servable_on_postgres() {
    seeded_identities_are_stored_and_servable(Backend::Postgres).await;
}
