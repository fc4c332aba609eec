//! Faults an operator meets with the embedded store: the disk fills up under a running server,
//! and the data dir is read-only at start.
//!
//! How each fault is made. These tests run as root (here and in CI), and root ignores file
//! permissions, so:
//! * a **full disk** is a small tmpfs (`mount -t tmpfs -o size=3m`) holding the data dir, filled
//!   to the last byte with a filler file; freeing space is deleting the filler;
//! * a **read-only data dir** is a tmpfs remounted read-only (`mount -o remount,ro`), and a data
//!   dir whose database file is writable but whose directory is not is that read-only tmpfs with
//!   a writable database file bind-mounted over its `callsign.db`.
//!
//! Every mount is made under a fresh temp dir and undone by a guard, also when a test fails.
//! Where mounting is not allowed (no CAP_SYS_ADMIN: EPERM), the tests fall back, and say so:
//! * the full disk becomes a file-size limit on the server (`prlimit --fsize`, RLIMIT_FSIZE).
//!   The server registers a handler for SIGXFSZ at start, so a write past the limit fails with
//!   EFBIG instead of killing it; raising the limit (`prlimit --pid`) is freeing space;
//! * the read-only data dir becomes a directory without write permission (mode 0500), which
//!   binds every user but root. As root without mounts, the test says why it cannot run and
//!   fails.
//!
//! `CALLSIGN_TEST_NO_MOUNT=1` forces the fallbacks.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use callsign_testkit::{access_key, issue_path};

use crate::{BIN, Server, client, is_root, runtime, signed};

/// A mount, undone when dropped.
struct Mount {
    target: PathBuf,
}

impl Mount {
    fn new(args: &[&str], target: &Path) -> Result<Mount, String> {
        let out = Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Mount {
                target: target.to_path_buf(),
            })
        } else {
            Err(format!(
                "mount {} {} failed: {}",
                args.join(" "),
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A tmpfs of `size` at `target`, its root private (0700) as callsign wants its data dir.
    fn tmpfs(target: &Path, size: &str) -> Result<Mount, String> {
        if std::env::var_os("CALLSIGN_TEST_NO_MOUNT").is_some_and(|v| v == "1") {
            return Err("CALLSIGN_TEST_NO_MOUNT=1".into());
        }
        Mount::new(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ],
            target,
        )
    }

    /// `source` bind-mounted over `target`.
    fn bind(source: &Path, target: &Path) -> Mount {
        let source = source.to_str().expect("utf-8 path");
        Mount::new(&["--bind", source], target).expect("bind mount")
    }

    /// Remounts with `option` (`ro`, `rw`).
    fn remount(&self, option: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{option}")])
            .arg(&self.target)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "remount,{option} {}",
            self.target.display()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A server just killed may still hold a file for a moment: retry, then detach lazily,
        // so that no mount outlives the test.
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.target)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}

fn private_dir(path: &Path) {
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).expect("mkdir");
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `callsign serve` on `data`, started through `command` (the binary itself, or a wrapper that
/// executes it), its log (`RUST_LOG=info`) going to `log`.
fn start(command: Command, data: &Path, log: &Path) -> Server {
    let log = std::fs::File::create(log).expect("log file");
    Server::start_through(command, data, &[], "info", Stdio::from(log))
}

/// An answer, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// The server's HTTP API, signed with its access key.
struct Api {
    http: reqwest::Client,
    endpoint: String,
    host: String,
    key: String,
}

impl Api {
    fn new(server: &Server, data: &Path, key: &str) -> Api {
        Api {
            http: client(data),
            endpoint: server.endpoint.clone(),
            host: server.host(),
            key: key.to_owned(),
        }
    }

    async fn reply(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = r.text().await.expect("body");
        Reply {
            status,
            retry_after,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    async fn call(&self, method: Method, target: &str, body: &str) -> Reply {
        let r = signed(
            &self.http,
            &self.endpoint,
            &self.host,
            &self.key,
            method,
            target,
            body,
        )
        .await
        .expect("request");
        Self::reply(r).await
    }

    async fn plain(&self, path: &str) -> Reply {
        let r = self
            .http
            .get(format!("{}{path}", self.endpoint))
            .send()
            .await
            .expect("request");
        Self::reply(r).await
    }

    async fn create(&self) -> Reply {
        self.call(Method::POST, "/identities?api-version=2023-10-01", "")
            .await
    }

    async fn get(&self, id: &str) -> Reply {
        let target = format!(
            "/identities/{}?api-version=2025-03-02-preview",
            id.replace(':', "%3A")
        );
        self.call(Method::GET, &target, "").await
    }

    async fn issue(&self, id: &str) -> Reply {
        let target = issue_path(id);
        self.call(Method::POST, &target, r#"{"scopes":["chat"]}"#)
            .await
    }

    async fn introspect(&self, token: &str) -> Reply {
        let body = serde_json::json!({ "token": token }).to_string();
        self.call(
            Method::POST,
            "/tokens/:introspect?api-version=2023-10-01",
            &body,
        )
        .await
    }

    async fn revoke(&self, id: &str) -> Reply {
        let target = format!(
            "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
            id.replace(':', "%3A")
        );
        self.call(Method::POST, &target, "").await
    }

    async fn delete(&self, id: &str) -> Reply {
        let target = format!(
            "/identities/{}?api-version=2023-10-01",
            id.replace(':', "%3A")
        );
        self.call(Method::DELETE, &target, "").await
    }
}

fn created_id(r: &Reply) -> String {
    assert_eq!(r.status, 201, "{r:?}");
    r.body["identity"]["id"]
        .as_str()
        .expect("identity id")
        .to_owned()
}

/// 503 with `Retry-After` and the ACS error body, saying nothing of the cause.
#[track_caller]
fn assert_unavailable(r: &Reply, what: &str) {
    assert_eq!(r.status, 503, "{what}: {r:?}");
    assert_eq!(r.retry_after.as_deref(), Some("1"), "{what}: {r:?}");
    assert_eq!(
        r.body["error"]["code"], "ServiceUnavailable",
        "{what}: {r:?}"
    );
    let message = r.body["error"]["message"].as_str().expect("message");
    for secret in ["disk", "full", "I/O", "callsign.db", "/"] {
        assert!(
            !message.contains(secret),
            "{what}: the cause leaks: {message}"
        );
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    written
}

/// How many lines of `log` contain `needle`.
fn count_lines(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Waits (the log is written by a background thread) until `log` has `n` lines containing
/// `needle`, then asserts it has exactly `n`.
#[track_caller]
fn assert_logged(log: &Path, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_lines(log, needle) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let found = count_lines(log, needle);
    assert_eq!(
        found,
        n,
        "{needle:?} logged {found} times, not {n}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// How the disk fills and how space comes back.
enum DiskFull {
    /// The data dir is a 3 MB tmpfs; the filler takes every byte left.
    Tmpfs { filler: PathBuf },
    /// No mounts allowed: the server runs under a file-size limit.
    SizeLimit,
}

/// What a file-size limit leaves the server: its WAL starts near 100 KB and grows by a few
/// pages per create.
const SIZE_LIMIT: &str = "400000";

#[test]
fn a_full_disk_refuses_writes_with_503_keeps_reads_and_recovers_by_itself_losing_nothing() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    private_dir(&data);
    let log = root.path().join("serve.log");
    // Declared before the server: dropped (unmounted) after it, also on failure.
    let (_mount, fault) = match Mount::tmpfs(&data, "3m") {
        Ok(m) => (
            Some(m),
            DiskFull::Tmpfs {
                filler: data.join("filler"),
            },
        ),
        Err(why) => {
            eprintln!(
                "faults: no tmpfs ({why}); the full disk is a file-size limit instead (prlimit \
                 --fsize={SIZE_LIMIT} on the server, which ignores SIGXFSZ)"
            );
            (None, DiskFull::SizeLimit)
        }
    };
    let command = match fault {
        DiskFull::Tmpfs { .. } => Command::new(BIN),
        DiskFull::SizeLimit => {
            assert!(
                Command::new("prlimit")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "faults: neither a tmpfs nor prlimit (util-linux) is available: cannot make a \
                 full disk"
            );
            let mut c = Command::new("prlimit");
            c.arg(format!("--fsize={SIZE_LIMIT}:")).arg("--").arg(BIN);
            c
        }
    };
    let mut server = start(command, &data, &log);
    let key = access_key(&server.connection_string());
    let api = Api::new(&server, &data, &key);
    let rt = runtime();
    let mut acked: Vec<String> = Vec::new();

    let token = rt.block_on(async {
        for _ in 0..5 {
            acked.push(created_id(&api.create().await));
        }
        let r = api.issue(&acked[0]).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["token"].as_str().expect("token").to_owned()
    });
    let kept = acked[0].clone();
    let doomed = acked[1].clone();

    // The disk fills up.
    if let DiskFull::Tmpfs { filler } = &fault {
        assert!(fill(filler) > 1_000_000, "the filler took little room");
    }
    rt.block_on(async {
        // Creates until the first refusal (at once on the full tmpfs; at the limit otherwise).
        let mut refused = None;
        for _ in 0..5_000 {
            let r = api.create().await;
            if r.status == 201 {
                acked.push(created_id(&r));
            } else {
                refused = Some(r);
                break;
            }
        }
        let refused = refused.expect("the disk never filled up");
        assert_unavailable(&refused, "create on a full disk");
        assert_unavailable(&api.create().await, "create");
        assert_unavailable(&api.revoke(&kept).await, "revoke");
        assert_unavailable(&api.delete(&doomed).await, "delete");

        // Alive, not ready: a balancer sends writes elsewhere.
        assert_eq!(api.plain("health").await.status, 200);
        assert_unavailable(&api.plain("ready").await, "readiness");

        // Reads, token issue and introspection go on.
        let r = api.get(&kept).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["id"], kept.as_str());
        assert_eq!(
            api.get(&doomed).await.status,
            200,
            "the delete did not happen"
        );
        let r = api.issue(&kept).await;
        assert_eq!(r.status, 200, "{r:?}");
        let fresh = r.body["token"].as_str().expect("token").to_owned();
        for t in [&token, &fresh] {
            let r = api.introspect(t).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.body["active"], true, "{r:?}");
        }

        // Its own checks (every second) do not pretend the disk has room.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_unavailable(&api.plain("ready").await, "readiness a while later");
        assert_unavailable(&api.create().await, "create a while later");
    });
    // One line when the state began, none per request.
    assert_logged(&log, "the store cannot write:", 1);
    assert_eq!(count_lines(&log, "the store can write again"), 0);
    assert_eq!(count_lines(&log, "request failed"), 0);
    assert!(
        count_lines(&log, "status=503") >= 5,
        "requests are still logged:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // Room again, and the store finds out by itself: no client write in between.
    match &fault {
        DiskFull::Tmpfs { filler } => std::fs::remove_file(filler).expect("free space"),
        DiskFull::SizeLimit => {
            let status = Command::new("prlimit")
                .args([
                    "--pid",
                    &server.child.id().to_string(),
                    "--fsize=unlimited:",
                ])
                .status()
                .expect("prlimit");
            assert!(status.success(), "raising the file-size limit");
        }
    }
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = api.plain("ready").await;
            if r.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "still not ready: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_logged(&log, "the store can write again", 1);
    assert_eq!(count_lines(&log, "the store cannot write:"), 1);
    rt.block_on(async {
        for _ in 0..5 {
            acked.push(created_id(&api.create().await));
        }
        assert_eq!(api.revoke(&kept).await.status, 204);
        assert_eq!(api.delete(&doomed).await.status, 204);
    });
    acked.retain(|id| *id != doomed);

    // Nothing acknowledged is lost across kill -9.
    server.child.kill().expect("kill -9");
    let _ = server.child.wait();
    drop(server);
    let server = start(Command::new(BIN), &data, &root.path().join("restart.log"));
    let api = Api::new(&server, &data, &key);
    rt.block_on(async {
        let mut missing = Vec::new();
        for id in &acked {
            if api.get(id).await.status != 200 {
                missing.push(id.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged identities lost: {missing:?}",
            missing.len(),
            acked.len()
        );
        let r = api.get(&kept).await;
        assert_eq!(r.body["id"], kept.as_str(), "{r:?}");
        assert_eq!(api.get(&doomed).await.status, 404);
    });
    assert!(server.terminate().success());
    let db = rusqlite::Connection::open_with_flags(
        data.join("callsign.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database");
    let rows: i64 = db
        .query_row("SELECT count(*) FROM identities", [], |r| r.get(0))
        .expect("count");
    assert!(
        rows >= acked.len() as i64,
        "{rows} identities stored, {} acknowledged",
        acked.len()
    );
    drop(db);
}

/// Runs `callsign args`, which must fail at once (within 30 s) with one `error:` line naming
/// `path` and containing each of `words`.
#[track_caller]
fn assert_refused(args: &[&str], path: &Path, words: &[&str]) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run callsign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("callsign {args:?} kept running with a read-only data dir");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "callsign {args:?} succeeded: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(
        line.contains(&path.display().to_string()),
        "the error does not name {}: {line}",
        path.display()
    );
    for word in words {
        assert!(
            line.contains(word),
            "the error does not say {word:?}: {line}"
        );
    }
    eprintln!("faults: callsign {} refused: {line}", args[0]);
}

/// How the data dir is made read-only.
enum ReadOnly {
    /// A tmpfs remounted read-only.
    Mount(Mount),
    /// Without write permission: directories 0500, files 0400 (binds users other than root).
    Permissions,
}

/// `dir` and everything in it: directories `dir_mode`, files `file_mode`.
fn chmod_tree(dir: &Path, dir_mode: u32, file_mode: u32) {
    // Opened up before its entries are read, closed after.
    if dir_mode & 0o200 != 0 {
        chmod(dir, dir_mode);
    }
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let kind = entry.file_type().expect("type");
        if kind.is_dir() {
            chmod_tree(&entry.path(), dir_mode, file_mode);
        } else if kind.is_file() {
            chmod(&entry.path(), file_mode);
        }
    }
    if dir_mode & 0o200 == 0 {
        chmod(dir, dir_mode);
    }
}

impl ReadOnly {
    fn set(&self, data: &Path, read_only: bool) {
        match (self, read_only) {
            (ReadOnly::Mount(m), true) => m.remount("ro"),
            (ReadOnly::Mount(m), false) => m.remount("rw"),
            (ReadOnly::Permissions, true) => chmod_tree(data, 0o500, 0o400),
            (ReadOnly::Permissions, false) => chmod_tree(data, 0o700, 0o600),
        }
    }

    /// What the system says when a file cannot be created there.
    fn refusal(&self) -> &'static str {
        match self {
            ReadOnly::Mount(_) => "Read-only file system",
            ReadOnly::Permissions => "Permission denied",
        }
    }
}

#[test]
fn a_read_only_data_dir_at_start_is_refused_naming_the_path_and_nothing_is_lost() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    private_dir(&data);
    let data_arg = data.to_str().expect("utf-8").to_owned();
    let serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", &data_arg];
    let ca_cert = ["ca-cert", "--data-dir", &data_arg];
    // Declared before any server: dropped (unmounted) after it, also on failure.
    let read_only = match Mount::tmpfs(&data, "8m") {
        Ok(m) => ReadOnly::Mount(m),
        Err(why) if !is_root() => {
            eprintln!("faults: no tmpfs ({why}); the data dir is made read-only by mode 0500");
            ReadOnly::Permissions
        }
        Err(why) => panic!(
            "faults: cannot make a read-only data dir: no tmpfs ({why}), and this runs as root, \
             which file permissions do not bind"
        ),
    };

    // A new data dir on a read-only file system: serve and ca-cert refuse, naming it.
    read_only.set(&data, true);
    assert_refused(&serve, &data, &[read_only.refusal()]);
    assert_refused(&ca_cert, &data, &[read_only.refusal()]);
    read_only.set(&data, false);

    // A data dir in use, made read-only.
    let log = root.path().join("first.log");
    let server = start(Command::new(BIN), &data, &log);
    let key = access_key(&server.connection_string());
    let rt = runtime();
    let id = rt.block_on(async { created_id(&Api::new(&server, &data, &key).create().await) });
    assert!(server.terminate().success());
    read_only.set(&data, true);
    assert_refused(&serve, &data, &[read_only.refusal()]);
    // ca-cert only reads an existing CA: it prints it.
    let out = Command::new(BIN).args(ca_cert).output().expect("ca-cert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("-----BEGIN CERTIFICATE-----"));

    // Its database file writable but not its directory (SQLite would open it and fail at the
    // first write, unable to create its -wal and -shm files): refused at start too.
    {
        let _bind = match &read_only {
            ReadOnly::Mount(_) => {
                let copy = root.path().join("callsign.db");
                std::fs::copy(data.join("callsign.db"), &copy).expect("copy the database");
                Some(Mount::bind(&copy, &data.join("callsign.db")))
            }
            ReadOnly::Permissions => {
                chmod(&data.join("callsign.db"), 0o600);
                None
            }
        };
        assert_refused(
            &serve,
            &data.join("callsign.db"),
            &["not writable", read_only.refusal()],
        );
    }

    // Writable again: it starts, and everything is there.
    read_only.set(&data, false);
    let server = start(Command::new(BIN), &data, &root.path().join("again.log"));
    rt.block_on(async {
        let r = Api::new(&server, &data, &key).get(&id).await;
        assert_eq!(r.status, 200, "{r:?}");
    });
    assert!(server.terminate().success());
}
