//! The revocation feed: `GET /revocations` (JSON, long-poll, server-sent events) and
//! `GET /revocations/snapshot`, on both backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callsign_core::{AccessKey, FixedClock, ResourceId};
use callsign_store::{Actor, KeySlot};
use callsign_testkit::{Backend, SigningClient, TestApp, enc, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const V: &str = "api-version=2023-10-01";

async fn feed(client: &SigningClient, query: &str) -> callsign_testkit::Reply {
    client
        .send(Method::GET, &format!("/revocations?{V}{query}"), None)
        .await
}

/// The current cursor (no history).
async fn position(client: &SigningClient) -> String {
    let r = feed(client, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["events"], serde_json::json!([]));
    r.body["cursor"].as_str().expect("cursor").to_owned()
}

async fn revoke(client: &SigningClient, id: &str) {
    let r = client
        .send(
            Method::POST,
            &format!("/identities/{}/:revokeAccessTokens?{V}", enc(id)),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

async fn delete(client: &SigningClient, id: &str) {
    let r = client
        .send(
            Method::DELETE,
            &format!("/identities/{}?{V}", enc(id)),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

fn event(id: &str, kind: &str, epoch: u64) -> Value {
    serde_json::json!({"id": id, "kind": kind, "epoch": epoch})
}

async fn events_come_in_commit_order_without_history(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, b) = (app.create_user().await, app.create_user().await);
    revoke(&app, &a).await;
    let start = position(&app).await;
    revoke(&app, &a).await;
    revoke(&app, &b).await;
    delete(&app, &b).await;
    // The 2020 preview's PATCH revokes too.
    let r = app
        .send(
            Method::PATCH,
            &format!("/identities/{}?api-version=2020-07-20-preview2", enc(&a)),
            Some(r#"{"tokensValidFrom": "2020-01-01T00:00:00Z"}"#),
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.body);
    let r = feed(&app, &format!("&after={start}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.headers["content-type"]
            .to_str()
            .expect("type")
            .starts_with("application/json")
    );
    assert_eq!(
        r.body["events"],
        serde_json::json!([
            event(&a, "revoked", 2),
            event(&b, "revoked", 1),
            event(&b, "deleted", 1),
            event(&a, "revoked", 3),
        ])
    );
    let end = r.body["cursor"].as_str().expect("cursor").to_owned();
    assert_ne!(end, start);
    let again = feed(&app, &format!("&after={end}")).await;
    assert_eq!(again.body["events"], serde_json::json!([]));
    assert_eq!(again.body["cursor"], end.as_str());
    assert_eq!(position(&app).await, end);
    app.stop().await;
}

async fn a_long_poll_wakes_on_a_revoke_and_otherwise_waits_its_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_user().await;
    let start = position(&app).await;
    let follower: SigningClient = (*app).clone();
    let query = format!("&after={start}&wait=20");
    let poll = tokio::spawn(async move { feed(&follower, &query).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "nothing happened yet");
    let revoked_at = Instant::now();
    revoke(&app, &id).await;
    let r = poll.await.expect("poll");
    let took = revoked_at.elapsed();
    // Woken by the event, not by the 20 s wait (the latency itself is measured in
    // BENCHMARKS.md; a loaded test machine must not fail this).
    assert!(took < Duration::from_secs(5), "woke after {took:?}");
    assert_eq!(
        r.body["events"],
        serde_json::json!([event(&id, "revoked", 1)])
    );
    // Nothing after the new cursor: an empty answer once the wait is over, same cursor.
    let cursor = r.body["cursor"].as_str().expect("cursor").to_owned();
    let started = Instant::now();
    let r = feed(&app, &format!("&after={cursor}&wait=1")).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.body["events"], serde_json::json!([]));
    assert_eq!(r.body["cursor"], cursor.as_str());
    app.stop().await;
}

/// Reads server-sent events from `resp` until `n` events arrived: (id, data) of each.
async fn sse_events(resp: &mut reqwest::Response, n: usize) -> Vec<(String, Value)> {
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("an event in time")
            .expect("read")
            .expect("the stream goes on");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        while let Some(end) = text.find("\n\n") {
            let message: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                message
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_owned)
            };
            if let (Some(id), Some(data)) = (field("id: "), field("data: ")) {
                assert_eq!(field("event: ").as_deref(), Some("revocation"));
                out.push((id, serde_json::from_str(&data).expect("json data")));
            }
        }
    }
    out
}

async fn open_stream(client: &SigningClient, query: &str) -> reqwest::Response {
    let resp = client
        .signed(
            Method::GET,
            &format!("/revocations?{V}{query}"),
            None,
            &client.key,
        )
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp
}

async fn a_stream_delivers_revokes_and_deletes_with_usable_ids(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, b) = (app.create_user().await, app.create_user().await);
    let mut stream = open_stream(&app, "").await;
    revoke(&app, &a).await;
    delete(&app, &b).await;
    let got = sse_events(&mut stream, 2).await;
    assert_eq!(got[0].1, event(&a, "revoked", 1));
    assert_eq!(got[1].1, event(&b, "deleted", 0));
    // An event's id is a cursor: the JSON feed after it holds what followed.
    let r = feed(&app, &format!("&after={}", got[0].0)).await;
    assert_eq!(
        r.body["events"],
        serde_json::json!([event(&b, "deleted", 0)])
    );
    assert_eq!(r.body["cursor"], got[1].0.as_str());
    // A stream resumed after an id starts right after it.
    let mut resumed = open_stream(&app, &format!("&after={}", got[0].0)).await;
    assert_eq!(
        sse_events(&mut resumed, 1).await[0].1,
        event(&b, "deleted", 0)
    );
    drop((stream, resumed));
    app.stop().await;
}

async fn the_verify_only_key_reads_its_own_resource_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let verify_key = AccessKey::generate();
    let resource = ResourceId::parse(&app.resource_id).expect("guid");
    app.store
        .replace_access_key(
            resource,
            KeySlot::VerifyOnly,
            verify_key.clone(),
            false,
            &Actor::operator(),
        )
        .await
        .expect("verify-only key");
    let verifier = app.client_with(&app.endpoint, verify_key.expose());
    verifier.wait_until_accepted().await;
    let start = position(&verifier).await;
    let (_, other) = app.add_resource("elsewhere", None).await;
    let foreign = other.create_user().await;
    revoke(&other, &foreign).await;
    let mine = app.create_user().await;
    revoke(&app, &mine).await;
    let r = feed(&verifier, &format!("&after={start}")).await;
    assert_eq!(
        r.body["events"],
        serde_json::json!([event(&mine, "revoked", 1)])
    );
    let snap = verifier
        .send(Method::GET, &format!("/revocations/snapshot?{V}"), None)
        .await;
    assert_eq!(
        snap.body["value"],
        serde_json::json!([event(&mine, "revoked", 1)])
    );
    // Still nothing else for it.
    let r = verifier
        .send(Method::POST, &format!("/identities?{V}"), None)
        .await;
    r.assert_error(403, "AuthorizationFailed");
    app.stop().await;
}

async fn wait_bounds_and_bad_cursors_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = position(&app).await;
    for bad in [
        "&wait=31",
        "&wait=-1",
        "&wait=x",
        "&after=nope",
        "&after=1-x",
    ] {
        let q = if bad.starts_with("&wait") {
            format!("&after={start}{bad}")
        } else {
            bad.to_owned()
        };
        feed(&app, &q).await.assert_error(400, "ValidationError");
    }
    feed(&app, "&after=1-999")
        .await
        .assert_error(410, "CursorExpired");
    app.send(
        Method::GET,
        &format!("/revocations/snapshot?{V}&after=nope"),
        None,
    )
    .await
    .assert_error(400, "ValidationError");
    app.send(Method::POST, &format!("/revocations?{V}"), None)
        .await
        .assert_error(405, "MethodNotAllowed");
    app.send(Method::GET, "/revocations", None)
        .await
        .assert_error(400, "MissingApiVersionParameter");
    app.stop().await;
}

async fn a_cursor_older_than_the_retention_is_gone_and_the_snapshot_resyncs(backend: Backend) {
    let clock = Arc::new(FixedClock::new(time::OffsetDateTime::now_utc()));
    let app = TestApp::builder()
        .backend(backend)
        .clock(clock.clone())
        .settings(|s| s.revocation_feed.prune_every = Duration::from_millis(100))
        .spawn()
        .await;
    let (a, b, c) = (
        app.create_user().await,
        app.create_user().await,
        app.create_user().await,
    );
    let old = position(&app).await;
    revoke(&app, &a).await;
    delete(&app, &b).await;
    clock.advance(time::Duration::hours(25));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = feed(&app, &format!("&after={old}")).await;
        if r.status == StatusCode::GONE {
            r.assert_error(410, "CursorExpired");
            break;
        }
        assert!(Instant::now() < deadline, "never pruned: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Resynchronise: the snapshot has the revoked identity (the deletion is past the
    // retention), then the feed from its cursor loses nothing.
    let snap = app
        .send(Method::GET, &format!("/revocations/snapshot?{V}"), None)
        .await;
    assert_eq!(snap.status, StatusCode::OK, "{}", snap.body);
    assert_eq!(
        snap.body["value"],
        serde_json::json!([event(&a, "revoked", 1)])
    );
    assert!(snap.body.get("nextLink").is_none());
    let cursor = snap.body["cursor"].as_str().expect("cursor").to_owned();
    // Back to the time events are stamped with (the system's), or the pruner, a day ahead,
    // would take the next event as soon as it is written.
    clock.advance(time::Duration::hours(-25));
    revoke(&app, &c).await;
    let r = feed(&app, &format!("&after={cursor}")).await;
    assert_eq!(
        r.body["events"],
        serde_json::json!([event(&c, "revoked", 1)])
    );
    app.stop().await;
}

async fn the_snapshot_holds_revoked_and_deleted_identities_and_its_cursor_loses_nothing(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let mut expected = Vec::new();
    for i in 0..6 {
        let id = app.create_user().await;
        if i % 3 == 1 {
            revoke(&app, &id).await;
            expected.push(event(&id, "revoked", 1));
        } else if i % 3 == 2 {
            delete(&app, &id).await;
            expected.push(event(&id, "deleted", 0));
        }
    }
    expected.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
    let snap = app
        .send(Method::GET, &format!("/revocations/snapshot?{V}"), None)
        .await;
    assert_eq!(snap.body["value"], Value::Array(expected.clone()));
    let cursor = snap.body["cursor"].as_str().expect("cursor").to_owned();
    let after = expected[1]["id"].as_str().expect("id");
    let rest = app
        .send(
            Method::GET,
            &format!("/revocations/snapshot?{V}&after={after}"),
            None,
        )
        .await;
    assert_eq!(rest.body["value"], Value::Array(expected[2..].to_vec()));
    let late = app.create_user().await;
    revoke(&app, &late).await;
    let r = feed(&app, &format!("&after={cursor}")).await;
    assert_eq!(
        r.body["events"],
        serde_json::json!([event(&late, "revoked", 1)])
    );
    app.stop().await;
}

async fn shutdown_ends_open_long_polls_and_streams_promptly(backend: Backend) {
    let app = spawn_app(backend).await;
    let start = position(&app).await;
    let follower: SigningClient = (*app).clone();
    let query = format!("&after={start}&wait=30");
    let poll = tokio::spawn(async move { feed(&follower, &query).await });
    let mut stream = open_stream(&app, "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stopped in time");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let r = poll.await.expect("poll");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["events"], serde_json::json!([]));
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            drop(chunk);
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");
}

/// More events than one page (1,000) behind a stream, and waiters of another resource: the
/// stream delivers every event in order, and another resource's events wake no one here into
/// a wrong answer.
async fn a_stream_delivers_more_than_a_page_and_other_resources_stay_apart(backend: Backend) {
    let app = spawn_app(backend).await;
    let resource = ResourceId::parse(&app.resource_id).expect("guid");
    let (_, other) = app.add_resource("other", None).await;
    let other_start = position(&other).await;
    let mut other_stream = open_stream(&other, "").await;
    let mut ids = Vec::new();
    for _ in 0..1100 {
        let new = callsign_store::NewIdentity {
            id: callsign_core::IdentityId::new_random(resource),
            custom_id: None,
            created_at: time::OffsetDateTime::now_utc(),
        };
        let created = app
            .store
            .create_identity(new, &Actor::operator())
            .await
            .expect("create");
        ids.push(created.identity.id.to_string());
    }
    let start = position(&app).await;
    // Open before the events: they arrive as one commit, more than a page, while it waits.
    let mut stream = open_stream(&app, &format!("&after={start}")).await;
    let revoked = app
        .store
        .replace_access_key(
            resource,
            KeySlot::Secondary,
            AccessKey::generate(),
            true,
            &Actor::operator(),
        )
        .await
        .expect("replace");
    assert_eq!(revoked, Some(1100));
    let got = sse_events(&mut stream, 1100).await;
    let mut seen: Vec<String> = got
        .iter()
        .map(|(_, e)| {
            assert_eq!(e["kind"], "revoked");
            e["id"].as_str().expect("id").to_owned()
        })
        .collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every identity once");
    // The other resource saw none of it: its feed and its stream are still empty.
    let r = feed(&other, &format!("&after={other_start}&wait=1")).await;
    assert_eq!(r.body["events"], serde_json::json!([]));
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let chunk = other_stream.chunk().await.expect("read").expect("open");
            if std::str::from_utf8(&chunk)
                .expect("utf-8")
                .contains("data:")
            {
                return;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "no event reached another resource's stream");
    drop((stream, other_stream));
    app.stop().await;
}

on_every_backend!(
    events_come_in_commit_order_without_history,
    a_long_poll_wakes_on_a_revoke_and_otherwise_waits_its_time,
    a_stream_delivers_revokes_and_deletes_with_usable_ids,
    a_stream_delivers_more_than_a_page_and_other_resources_stay_apart,
    the_verify_only_key_reads_its_own_resource_only,
    wait_bounds_and_bad_cursors_are_refused,
    a_cursor_older_than_the_retention_is_gone_and_the_snapshot_resyncs,
    the_snapshot_holds_revoked_and_deleted_identities_and_its_cursor_loses_nothing,
    shutdown_ends_open_long_polls_and_streams_promptly,
);
