//! `kill -9` in the middle of the commands that change a store as a whole: `migrate`,
//! `migrate-store`, `seal` and `rotate-master-key`.
//!
//! Each command is run again and again and killed (SIGKILL) after ever longer delays, so that
//! the kills land before, inside and after its transactions; after every kill the store is
//! checked for a half-applied state, and once a run finishes by itself (it must succeed) the
//! store is checked whole: complete, consistent, and served by a node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use callsign_testkit::{TestDatabase, access_key, connect_postgres};
use reqwest::Method;
use serde_json::Value;

use crate::{BIN, Server, client, run, runtime, signed};

/// What a kill ladder did.
struct Ladder {
    /// Runs killed before they finished.
    killed: usize,
    /// The output of the run that finished by itself.
    stdout: String,
}

/// Runs `callsign args` again and again, killing each run (SIGKILL) after 0, 1, 2, 3, 4, 5, 7,
/// … ms (each delay about 30% longer than the last), calling `after_kill` after every kill,
/// until a run finishes by itself. That run must succeed.
fn kill_ladder(args: &[&str], mut after_kill: impl FnMut()) -> Ladder {
    let started = Instant::now();
    let mut delay = Duration::ZERO;
    let mut killed = 0;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "`callsign {}` never finished by itself ({killed} kills)",
            args[0]
        );
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn callsign");
        std::thread::sleep(delay);
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("kill -9");
            let _ = child.wait();
            killed += 1;
            after_kill();
            delay = (delay * 13 / 10).max(delay + Duration::from_millis(1));
            continue;
        }
        let out = child.wait_with_output().expect("output");
        assert!(
            out.status.success(),
            "`callsign {}` after {killed} kills (the last after {:?}) failed: {}",
            args[0],
            delay,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "callsign {}: {killed} runs killed, the longest after {delay:?}, then one finished",
            args[0]
        );
        return Ladder {
            killed,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        };
    }
}

/// A kill ladder with its kill points placed at the run's own statements: the test watches the
/// run's sessions (`application_name` callsign) in `pg_stat_activity` and kills the run as soon
/// as it has seen `k` distinct session states (a statement starting, running, a transaction
/// waiting for its next statement) for k = 1, 2, 3, …, calling `before_each` before every run
/// and `after_kill` after every kill, until three runs in a row finish first (how many states
/// the test catches varies from run to run). Those runs must succeed. Returns the kills.
fn statement_ladder(
    rt: &tokio::runtime::Runtime,
    url: &str,
    args: &[&str],
    mut before_each: impl FnMut(),
    mut after_kill: impl FnMut(),
) -> usize {
    let watcher = rt.block_on(connect_postgres(url));
    let started = Instant::now();
    let mut killed = 0;
    let mut finished_in_a_row = 0;
    let mut most_states = 0;
    for k in 1.. {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "`callsign {}` never finished by itself ({killed} kills)",
            args[0]
        );
        before_each();
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn callsign");
        let mut states = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let finished = loop {
            if child.try_wait().expect("try_wait").is_some() {
                break true;
            }
            assert!(Instant::now() < deadline, "the run did not end");
            for row in rt
                .block_on(watcher.query(
                    "SELECT concat_ws(' ', pid, state, query_start, left(query, 80))
                     FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'callsign'",
                    &[],
                ))
                .expect("pg_stat_activity")
            {
                states.insert(row.get::<_, String>(0));
            }
            if states.len() >= k {
                break false;
            }
        };
        if !finished {
            child.kill().expect("kill -9");
            let _ = child.wait();
            killed += 1;
            finished_in_a_row = 0;
            after_kill();
            continue;
        }
        let out = child.wait_with_output().expect("output");
        assert!(
            out.status.success(),
            "`callsign {}` after {killed} kills failed: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        );
        most_states = most_states.max(states.len());
        finished_in_a_row += 1;
        if finished_in_a_row == 3 {
            eprintln!(
                "callsign {}: {killed} runs killed at one of their first {} session states \
                 seen, then three finished (up to {most_states} states seen)",
                args[0],
                k - 3
            );
            return killed;
        }
    }
    unreachable!()
}

/// Waits until the database has seen every killed run go: no callsign session is left in it.
/// A session whose client was killed may still finish a statement, even a `COMMIT` the client
/// sent just before; only then is what the kill left final.
async fn pg_settled(pg: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sessions: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'callsign'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if sessions == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a killed run's session never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the table or index `table` exists, or for `table.column` that column.
async fn pg_has_table(pg: &tokio_postgres::Client, table: &str) -> bool {
    if let Some((table, column)) = table.split_once('.') {
        return pg
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2)",
                &[&table, &column],
            )
            .await
            .expect("information_schema")
            .get(0);
    }
    pg.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

/// The tables and indexes (`table.column`: columns) each PostgreSQL migration creates
/// (version 1 to 10).
const PG_TABLES: &[&[&str]] = &[
    &[
        "callsign_resources",
        "callsign_signing_keys",
        "callsign_identities",
    ],
    &["callsign_teams_assignments"],
    &["callsign_identity_tombstones"],
    &["callsign_identities_by_resource"],
    &["callsign_resources_by_name", "callsign_config_generation"],
    &[
        "callsign_audit_log",
        "callsign_audit_log_at",
        "callsign_token_counts",
    ],
    &[
        "callsign_signing_keys.activates_at_ms",
        "callsign_signing_keys.retire_after_ms",
    ],
    &[
        "callsign_identity_tombstones.revocation_epoch",
        "callsign_identity_tombstones_by_resource",
        "callsign_identities_revoked",
        "callsign_revocation_heads",
        "callsign_revocation_events",
        "callsign_revocation_events_at",
    ],
    &["callsign_access_assignments", "callsign_audit_log.subject"],
    // 10 changes a storage parameter only.
    &[],
];

/// The applied migrations, checked against the tables: applied in order (1..=n), each wholly
/// (all its tables there) and nothing of a migration not recorded. Returns n.
async fn pg_schema_consistent(pg: &tokio_postgres::Client) -> usize {
    pg_settled(pg).await;
    let versions: Vec<i32> = if pg_has_table(pg, "callsign_schema_migrations").await {
        pg.query(
            "SELECT version FROM callsign_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect()
    } else {
        Vec::new()
    };
    let expected: Vec<i32> = (1..).take(versions.len()).collect();
    assert_eq!(versions, expected, "migrations applied out of order");
    for (i, tables) in PG_TABLES.iter().enumerate() {
        let recorded = i < versions.len();
        for table in *tables {
            assert_eq!(
                pg_has_table(pg, table).await,
                recorded,
                "migration {} half-applied: table {table}",
                i + 1
            );
        }
    }
    versions.len()
}

/// Everything a copy carries, as stored.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    /// (id, primary key, secondary key) of the default resource.
    resource: Option<(String, String, String)>,
    /// Signing key ids.
    kids: BTreeSet<String>,
    /// Identity id → (custom id, revocation epoch).
    identities: BTreeMap<String, (Option<String>, i64)>,
    /// Tombstoned ids.
    tombstones: BTreeSet<String>,
}

/// A data dir's database, copied first (no callsign runs on it now) so that the test opens
/// nothing in the data dir itself; the copy lives as long as the temp dir.
fn sqlite_copy(data_dir: &Path) -> (tempfile::TempDir, rusqlite::Connection) {
    let scratch = tempfile::tempdir().expect("dir");
    for suffix in ["", "-wal", "-journal"] {
        let from = data_dir.join(format!("callsign.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, scratch.path().join(format!("callsign.db{suffix}")))
                .expect("copy the database");
        }
    }
    let db = rusqlite::Connection::open(scratch.path().join("callsign.db")).expect("open");
    (scratch, db)
}

/// The tables and indexes (`table.column`: columns) each SQLite migration creates
/// (version 1 to 9).
const SQLITE_TABLES: &[&[&str]] = &[
    &["resources", "signing_keys", "identities"],
    &["teams_assignments"],
    &["identity_tombstones"],
    &["identities_by_resource"],
    &["resources_by_name", "config_generation"],
    &["audit_log", "audit_log_at", "token_counts"],
    &[
        "signing_keys.activates_at_ms",
        "signing_keys.retire_after_ms",
    ],
    &[
        "identity_tombstones.revocation_epoch",
        "identity_tombstones_by_resource",
        "identities_revoked",
        "revocation_heads",
        "revocation_events",
        "revocation_events_at",
    ],
    &["access_assignments", "audit_log.subject"],
];

/// A data dir's schema, checked against `PRAGMA user_version` as [`pg_schema_consistent`]
/// does; 0 without a database. Returns the version.
fn sqlite_schema_consistent(data_dir: &Path) -> usize {
    if !data_dir.join("callsign.db").exists() {
        return 0;
    }
    let (_scratch, db) = sqlite_copy(data_dir);
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    let version = usize::try_from(version).expect("version");
    for (i, tables) in SQLITE_TABLES.iter().enumerate() {
        for table in *tables {
            let present: bool = match table.split_once('.') {
                Some((table, column)) => db.query_row(
                    "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                    [table, column],
                    |r| r.get(0),
                ),
                None => db.query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE type IN ('table', 'index') AND name = ?1",
                    [table],
                    |r| r.get(0),
                ),
            }
            .expect("sqlite_master");
            assert_eq!(
                present,
                i < version,
                "migration {} half-applied: table {table}",
                i + 1
            );
        }
    }
    version
}

/// Checks that `now`, a copy cut short, holds nothing the source does not: never another
/// resource, and only identities, keys and tombstones as they are on the source.
fn part_of(now: &Contents, expected: &Contents) {
    if let Some(resource) = &now.resource {
        assert_eq!(Some(resource), expected.resource.as_ref());
    }
    assert!(now.kids.is_subset(&expected.kids));
    assert!(now.tombstones.is_subset(&expected.tombstones));
    assert!(
        now.identities
            .iter()
            .all(|(id, v)| expected.identities.get(id) == Some(v))
    );
}

fn sqlite_contents(data_dir: &Path) -> Contents {
    let (_scratch, db) = sqlite_copy(data_dir);
    let resource = db
        .query_row(
            "SELECT id, primary_key, secondary_key FROM resources WHERE is_default",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok();
    let strings = |sql: &str| -> BTreeSet<String> {
        let mut s = db.prepare(sql).expect("prepare");
        s.query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    let kids = strings("SELECT kid FROM signing_keys");
    let tombstones = strings("SELECT id FROM identity_tombstones");
    let mut s = db
        .prepare("SELECT id, custom_id, revocation_epoch FROM identities")
        .expect("prepare");
    let identities = s
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    Contents {
        resource,
        kids,
        identities,
        tombstones,
    }
}

async fn pg_contents(pg: &tokio_postgres::Client) -> Contents {
    pg_settled(pg).await;
    let resource = pg
        .query_opt(
            "SELECT id, primary_key, secondary_key FROM callsign_resources WHERE is_default",
            &[],
        )
        .await
        .expect("resource")
        .map(|r| (r.get(0), r.get(1), r.get(2)));
    let strings = |sql: &'static str| async move {
        pg.query(sql, &[])
            .await
            .expect("query")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<BTreeSet<String>>()
    };
    let kids = strings("SELECT kid FROM callsign_signing_keys").await;
    let tombstones = strings("SELECT id FROM callsign_identity_tombstones").await;
    let identities = pg
        .query(
            "SELECT id, custom_id, revocation_epoch FROM callsign_identities",
            &[],
        )
        .await
        .expect("identities")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    Contents {
        resource,
        kids,
        identities,
        tombstones,
    }
}

async fn call(
    server: &Server,
    data_dir: &Path,
    key: &str,
    method: Method,
    target: &str,
    body: &str,
) -> (u16, Value) {
    let r = signed(
        &client(data_dir),
        &server.endpoint,
        &server.host(),
        key,
        method,
        target,
        body,
    )
    .await
    .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn jwks(server: &Server, data_dir: &Path) -> Value {
    client(data_dir)
        .get(format!("{}.well-known/jwks.json", server.endpoint))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json")
}

/// A node on the store serves with `key`: a create succeeds and `token` (if any) is active.
async fn serves(server: &Server, data_dir: &Path, key: &str, token: Option<&str>) {
    let (s, body) = call(
        server,
        data_dir,
        key,
        Method::POST,
        "/identities?api-version=2023-10-01",
        "",
    )
    .await;
    assert_eq!(s, 201, "{body}");
    if let Some(token) = token {
        let body = serde_json::json!({ "token": token }).to_string();
        let (s, body) = call(
            server,
            data_dir,
            key,
            Method::POST,
            "/tokens/:introspect?api-version=2023-10-01",
            &body,
        )
        .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["active"], true, "{body}");
    }
}

#[test]
fn migrate_killed_at_any_point_completes_on_a_rerun() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let pg = rt.block_on(connect_postgres(&url));
    let args = ["migrate", "--database-url", &url];
    let mut applied = BTreeSet::new();
    let ladder = kill_ladder(&args, || {
        applied.insert(rt.block_on(pg_schema_consistent(&pg)));
    });
    assert!(ladder.killed > 0);
    assert!(
        ladder.stdout.contains("schema is up to date"),
        "{}",
        ladder.stdout
    );
    // Then killed right as the migrations run, each time on a fresh schema, and run again.
    let reset = || {
        rt.block_on(pg.batch_execute(
            "DROP SCHEMA public CASCADE; CREATE SCHEMA public; GRANT ALL ON SCHEMA public TO public",
        ))
        .expect("reset");
    };
    let killed = statement_ladder(&rt, &url, &args, reset, || {
        applied.insert(rt.block_on(pg_schema_consistent(&pg)));
        let (ok, _, err) = run(&args);
        assert!(ok, "{err}");
        assert!(rt.block_on(pg_schema_consistent(&pg)) >= PG_TABLES.len());
    });
    assert!(killed > 0);
    eprintln!("migrations applied when killed: {applied:?}");

    let (ok, _, err) = run(&["migrate", "--database-url", &url]);
    assert!(ok, "{err}");
    assert!(rt.block_on(pg_schema_consistent(&pg)) >= PG_TABLES.len());
    // No killed run left its advisory lock behind (the runs since took it).
    let locks: i64 = rt.block_on(async {
        pg.query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
             WHERE l.locktype = 'advisory' AND d.datname = current_database()",
            &[],
        )
        .await
        .expect("locks")
        .get(0)
    });
    assert_eq!(locks, 0);

    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &["--database-url", &url]);
    let key = access_key(&server.connection_string());
    rt.block_on(serves(&server, dir.path(), &key, None));
    assert!(server.terminate().success());
    drop(pg);
    drop(db);
}

/// How many identities the seeded source holds besides the few made through the API: enough
/// for a copy of several batches, long enough to be killed in the middle.
const SEEDED: &str = "30000";

/// A data dir with a resource, a signing key, identities with custom ids, a revoked and a
/// deleted one, a token, and many seeded identities. Returns (access key, token).
fn seeded_source(rt: &tokio::runtime::Runtime, data: &Path) -> (String, String) {
    let server = Server::start(data, &[]);
    let key = access_key(&server.connection_string());
    let token = rt.block_on(async {
        let mut ids = Vec::new();
        for i in 0..6 {
            let (s, body) = call(
                &server,
                data,
                &key,
                Method::POST,
                "/identities?api-version=2025-03-02-preview",
                &format!(r#"{{"customId": "user-{i}@example.com"}}"#),
            )
            .await;
            assert_eq!(s, 201, "{body}");
            ids.push(
                body["identity"]["id"]
                    .as_str()
                    .expect("id")
                    .replace(':', "%3A"),
            );
        }
        let (s, _) = call(
            &server,
            data,
            &key,
            Method::POST,
            &format!(
                "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
                ids[0]
            ),
            "",
        )
        .await;
        assert_eq!(s, 204);
        let (s, _) = call(
            &server,
            data,
            &key,
            Method::DELETE,
            &format!("/identities/{}?api-version=2023-10-01", ids[1]),
            "",
        )
        .await;
        assert_eq!(s, 204);
        let (s, body) = call(
            &server,
            data,
            &key,
            Method::POST,
            &format!(
                "/identities/{}/:issueAccessToken?api-version=2023-10-01",
                ids[2]
            ),
            r#"{"scopes": ["chat"]}"#,
        )
        .await;
        assert_eq!(s, 200, "{body}");
        body["token"].as_str().expect("token").to_owned()
    });
    assert!(server.terminate().success());
    let d = data.to_str().expect("utf-8");
    let (ok, _, err) = run(&["seed", "--count", SEEDED, "--data-dir", d, "-q"]);
    assert!(ok, "{err}");
    (key, token)
}

#[test]
fn migrate_store_to_postgres_killed_at_any_point_completes_on_a_rerun() {
    let rt = runtime();
    let root = tempfile::tempdir().expect("dir");
    let source = root.path().join("source");
    let (key, token) = seeded_source(&rt, &source);
    let expected = sqlite_contents(&source);
    assert_eq!(expected.tombstones.len(), 1);
    assert!(expected.identities.len() > 30_000);

    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let pg = rt.block_on(connect_postgres(&url));
    let src = source.to_str().expect("utf-8");
    let args = ["migrate-store", "--from", src, "--to", &url];
    let mut partial = BTreeSet::new();
    let ladder = kill_ladder(&args, || {
        rt.block_on(async {
            // Never a half-applied migration, nothing the source does not have.
            if pg_schema_consistent(&pg).await < PG_TABLES.len() {
                return;
            }
            let now = pg_contents(&pg).await;
            part_of(&now, &expected);
            partial.insert(now.identities.len());
        });
    });
    assert!(ladder.killed > 0);
    assert!(
        ladder.stdout.contains("callsign: copied"),
        "{}",
        ladder.stdout
    );
    eprintln!("identities on the target when killed: {partial:?}");
    assert_eq!(rt.block_on(pg_contents(&pg)), expected);

    // A further run finds everything there and copies nothing.
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(out.contains("copied 0 signing key(s), 0 of"), "{out}");
    assert_eq!(rt.block_on(pg_contents(&pg)), expected);

    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &["--database-url", &url]);
    rt.block_on(serves(&server, dir.path(), &key, Some(&token)));
    assert!(server.terminate().success());
    drop(pg);
    drop(db);
}

#[test]
fn migrate_store_to_a_data_dir_killed_at_any_point_completes_on_a_rerun() {
    let rt = runtime();
    let root = tempfile::tempdir().expect("dir");
    let source = root.path().join("source");
    let (key, token) = seeded_source(&rt, &source);
    let expected = sqlite_contents(&source);
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let src = source.to_str().expect("utf-8");
    let (ok, _, err) = run(&["migrate-store", "--from", src, "--to", &url]);
    assert!(ok, "{err}");

    // Back from PostgreSQL into a new data dir, killed as it creates and fills it.
    let target = root.path().join("target");
    let t = target.to_str().expect("utf-8");
    let args = ["migrate-store", "--from", &url, "--to", t];
    let mut partial = BTreeSet::new();
    let ladder = kill_ladder(&args, || {
        if sqlite_schema_consistent(&target) >= SQLITE_TABLES.len() {
            let now = sqlite_contents(&target);
            part_of(&now, &expected);
            partial.insert(now.identities.len());
        }
    });
    assert!(ladder.killed > 0);
    eprintln!("identities on the target when killed: {partial:?}");
    assert!(sqlite_schema_consistent(&target) >= SQLITE_TABLES.len());
    assert_eq!(sqlite_contents(&target), expected);
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(out.contains("copied 0 signing key(s), 0 of"), "{out}");
    assert_eq!(sqlite_contents(&target), expected);

    let server = Server::start(&target, &[]);
    rt.block_on(serves(&server, &target, &key, Some(&token)));
    assert!(server.terminate().success());
    drop(db);
}

/// Where the keys live: a data dir or a PostgreSQL database.
enum KeyStore<'a> {
    DataDir(&'a Path),
    Postgres(&'a str),
}

impl KeyStore<'_> {
    fn args(&self) -> Vec<&str> {
        match self {
            KeyStore::DataDir(d) => vec!["--data-dir", d.to_str().expect("utf-8")],
            KeyStore::Postgres(url) => vec!["--database-url", url],
        }
    }

    /// What `serve` needs besides its data dir.
    fn serve_args(&self) -> Vec<&str> {
        match self {
            KeyStore::DataDir(_) => Vec::new(),
            KeyStore::Postgres(url) => vec!["--database-url", url],
        }
    }

    /// Every stored access key and signing key, as the master key id that sealed it (`None`:
    /// stored in plain text).
    fn sealed_by(&self, rt: &tokio::runtime::Runtime) -> Vec<Option<String>> {
        let (texts, blobs): (Vec<String>, Vec<Vec<u8>>) = match self {
            KeyStore::DataDir(d) => {
                let (_scratch, db) = sqlite_copy(d);
                let mut texts = Vec::new();
                let mut s = db
                    .prepare("SELECT primary_key, secondary_key FROM resources")
                    .expect("prepare");
                for row in s
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("query")
                {
                    let (p, q): (String, String) = row.expect("row");
                    texts.extend([p, q]);
                }
                let mut s = db
                    .prepare("SELECT pkcs8 FROM signing_keys")
                    .expect("prepare");
                let blobs = s
                    .query_map([], |r| r.get(0))
                    .expect("query")
                    .map(|r| r.expect("row"))
                    .collect();
                (texts, blobs)
            }
            KeyStore::Postgres(url) => rt.block_on(async {
                let pg = connect_postgres(url).await;
                pg_settled(&pg).await;
                let mut texts = Vec::new();
                for row in pg
                    .query(
                        "SELECT primary_key, secondary_key FROM callsign_resources",
                        &[],
                    )
                    .await
                    .expect("resources")
                {
                    texts.extend([row.get(0), row.get(1)]);
                }
                let blobs = pg
                    .query("SELECT pkcs8 FROM callsign_signing_keys", &[])
                    .await
                    .expect("keys")
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                (texts, blobs)
            }),
        };
        assert_eq!(texts.len(), 2, "one resource");
        assert!(!blobs.is_empty(), "a signing key");
        let id = |v: &[u8]| {
            let rest = v.strip_prefix(b"sealed:v1:")?;
            let end = rest.iter().position(|b| *b == b':')?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        };
        texts
            .iter()
            .map(|t| id(t.as_bytes()))
            .chain(blobs.iter().map(|b| id(b)))
            .collect()
    }

    /// The one master key id every key is sealed under (`None`: all plain); a mix fails.
    fn sealed_under(&self, rt: &tokio::runtime::Runtime) -> Option<String> {
        let all = self.sealed_by(rt);
        let distinct: BTreeSet<&Option<String>> = all.iter().collect();
        assert_eq!(distinct.len(), 1, "keys half-sealed: {all:?}");
        all[0].clone()
    }
}

/// The master key id a `seal` or `rotate-master-key` run reports.
fn reported_id(stdout: &str) -> String {
    stdout
        .split("sealed under master key ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no master key id in {stdout:?}"))
        .to_owned()
}

/// `seal` and then `rotate-master-key`, each killed again and again, then completed.
fn seal_and_rotate_killed(rt: &tokio::runtime::Runtime, store: &KeyStore<'_>, data: &Path) {
    let mut serve_args = store.serve_args();
    let server = Server::start(data, &serve_args);
    let key = access_key(&server.connection_string());
    let jwks_before = rt.block_on(jwks(&server, data));
    assert!(server.terminate().success());
    assert_eq!(store.sealed_under(rt), None);

    let keys = tempfile::tempdir().expect("dir");
    let old = keys.path().join("old.key");
    let new = keys.path().join("new.key");
    let (o, n) = (old.to_str().expect("utf-8"), new.to_str().expect("utf-8"));

    let mut args = vec!["seal", "--master-key-file", o];
    args.extend(store.args());
    let mut seen = BTreeSet::new();
    if let KeyStore::Postgres(url) = store {
        statement_ladder(
            rt,
            url,
            &args,
            || {},
            || {
                seen.insert(store.sealed_under(rt));
            },
        );
    }
    let ladder = kill_ladder(&args, || {
        seen.insert(store.sealed_under(rt));
    });
    assert!(ladder.killed > 0);
    let old_id = reported_id(&ladder.stdout);
    assert_eq!(store.sealed_under(rt), Some(old_id.clone()));
    assert!(
        seen.iter()
            .all(|s| s.is_none() || *s == Some(old_id.clone())),
        "{seen:?}"
    );

    let mut args = vec![
        "rotate-master-key",
        "--master-key-file",
        o,
        "--new-master-key-file",
        n,
    ];
    args.extend(store.args());
    let mut seen = BTreeSet::new();
    if let KeyStore::Postgres(url) = store {
        statement_ladder(
            rt,
            url,
            &args,
            || {},
            || {
                seen.insert(store.sealed_under(rt).expect("sealed"));
            },
        );
    }
    let ladder = kill_ladder(&args, || {
        seen.insert(store.sealed_under(rt).expect("sealed"));
    });
    assert!(ladder.killed > 0);
    let new_id = reported_id(&ladder.stdout);
    assert_ne!(new_id, old_id);
    assert_eq!(store.sealed_under(rt), Some(new_id.clone()));
    assert!(
        seen.iter().all(|s| *s == old_id || *s == new_id),
        "{seen:?}"
    );
    eprintln!("sealed under {seen:?} when killed (old {old_id}, new {new_id})");

    // The same access key through the new master key; the old one opens nothing.
    let mut args = vec!["connection-string", "--master-key-file", n];
    args.extend(store.args());
    let (ok, cs, err) = run(&args);
    assert!(ok, "{err}");
    assert_eq!(access_key(&cs), key);
    let mut args = vec!["connection-string", "--master-key-file", o];
    args.extend(store.args());
    let (ok, _, err) = run(&args);
    assert!(!ok && err.contains("sealed"), "{err}");

    // A node starts with the new key and serves with the same keys.
    serve_args.extend(["--master-key-file", n]);
    let server = Server::start(data, &serve_args);
    assert_eq!(rt.block_on(jwks(&server, data)), jwks_before);
    rt.block_on(serves(&server, data, &key, None));
    assert!(server.terminate().success());
}

#[test]
fn seal_and_rotate_master_key_killed_at_any_point_complete_on_a_rerun_embedded() {
    let rt = runtime();
    let root = tempfile::tempdir().expect("dir");
    let data = root.path().join("data");
    seal_and_rotate_killed(&rt, &KeyStore::DataDir(&data), &data);
}

#[test]
fn seal_and_rotate_master_key_killed_at_any_point_complete_on_a_rerun_postgres() {
    let rt = runtime();
    let db = rt.block_on(TestDatabase::create());
    let url = db.url();
    let root = tempfile::tempdir().expect("dir");
    let data = root.path().join("data");
    seal_and_rotate_killed(&rt, &KeyStore::Postgres(&url), &data);
    drop(db);
}
