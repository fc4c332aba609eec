//! `GET /identities` (callsign's extension): paging, filters, bad parameters, the version gate,
//! and a listing that runs while identities are created and deleted.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callsign_api::{ApiVersion, Operation};
use callsign_testkit::{Backend, TestApp, enc, spawn_app};
use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PREVIEW: &str = "api-version=2025-03-02-preview";

/// Creates an identity through 2025-03-02-preview, with `custom` as its custom id.
async fn create(app: &TestApp, custom: Option<&str>) -> String {
    let body = custom.map(|c| json!({ "customId": c }).to_string());
    let r = app
        .send(
            Method::POST,
            &format!("/identities?{PREVIEW}"),
            body.as_deref(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["identity"]["id"].as_str().expect("id").to_owned()
}

/// Every page from `first` on, following `nextLink`: the items, and how many pages there were.
async fn list_all(app: &TestApp, first: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut target = first.to_owned();
    loop {
        let r = app.send(Method::GET, &target, None).await;
        assert_eq!(r.status, StatusCode::OK, "{target}: {}", r.body);
        pages += 1;
        items.extend(r.body["value"].as_array().expect("value").iter().cloned());
        match r.body.get("nextLink").and_then(Value::as_str) {
            Some(next) => {
                assert!(next.starts_with("identities?"), "{next}");
                target = format!("/{next}");
            }
            None => return (items, pages),
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn listing_pages_through_every_identity_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut created = Vec::new();
    for i in 0..25 {
        let custom = format!("user-{i:02}");
        created.push(create(&app, (i % 2 == 0).then_some(custom.as_str())).await);
    }
    let issued = app.issue(&created[3], &["chat"]).await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);

    let (items, pages) = list_all(&app, &format!("/identities?{PREVIEW}&maxpagesize=4")).await;
    assert_eq!(pages, 7);
    let listed = ids(&items);
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(listed, sorted, "in id order, each once");
    let mut expected = created.clone();
    expected.sort();
    assert_eq!(listed, expected);
    // Each item is what GET /identities/{id} answers for it.
    for item in &items {
        let id = item["id"].as_str().expect("id");
        let got = app
            .send(
                Method::GET,
                &format!("/identities/{}?{PREVIEW}", enc(id)),
                None,
            )
            .await;
        assert_eq!(&got.body, item);
    }
    let with_token = items.iter().find(|i| i["id"] == created[3].as_str());
    assert!(with_token.expect("listed")["lastTokenIssuedAt"].is_string());

    // The default page holds them all; 2025-04-01-preview names the custom id externalId.
    let r = app
        .send(
            Method::GET,
            "/identities?api-version=2025-04-01-preview",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.get("nextLink").is_none(), "{}", r.body);
    let value = r.body["value"].as_array().expect("value");
    assert_eq!(value.len(), 25);
    assert!(value.iter().any(|i| i["externalId"] == "user-00"));
    assert!(value.iter().all(|i| i.get("customId").is_none()));
    app.stop().await;
}

async fn listing_filters_by_custom_id_prefix_and_stale_token_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut team_a = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        team_a.push(create(&app, Some(&format!("team-a/{name}"))).await);
    }
    let team_b = create(&app, Some("team-b/frank")).await;
    let anonymous = create(&app, None).await;
    let before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let before = before
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let r = app.issue(&team_a[0], &["voip"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let prefix = enc("team-a/");
    let (items, pages) = list_all(
        &app,
        &format!("/identities?{PREVIEW}&customIdPrefix={prefix}&maxpagesize=2"),
    )
    .await;
    assert_eq!(pages, 3);
    let mut want = team_a.clone();
    want.sort();
    assert_eq!(ids(&items), want);

    let r = app
        .send(
            Method::GET,
            "/identities?api-version=2025-04-01-preview&externalIdPrefix=team-b",
            None,
        )
        .await;
    assert_eq!(
        ids(r.body["value"].as_array().expect("value")),
        vec![team_b.clone()]
    );
    assert_eq!(r.body["value"][0]["externalId"], "team-b/frank");

    // Stale: the last token before the cut, or none at all.
    let (items, _) = list_all(
        &app,
        &format!(
            "/identities?{PREVIEW}&lastTokenIssuedBefore={}&maxpagesize=3",
            enc(&before)
        ),
    )
    .await;
    let mut want: Vec<String> = team_a[1..].to_vec();
    want.extend([team_b.clone(), anonymous.clone()]);
    want.sort();
    assert_eq!(ids(&items), want);

    let (items, _) = list_all(
        &app,
        &format!(
            "/identities?{PREVIEW}&lastTokenIssuedBefore={}&customIdPrefix={prefix}&maxpagesize=1",
            enc(&before)
        ),
    )
    .await;
    let mut want: Vec<String> = team_a[1..].to_vec();
    want.sort();
    assert_eq!(ids(&items), want);
    app.stop().await;
}

/// A continuation the server would hand out, with its fields as given.
fn continuation(fields: Value) -> String {
    URL_SAFE_NO_PAD.encode(fields.to_string())
}

async fn bad_listing_parameters_are_400_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..3 {
        create(&app, Some(&format!("x{i}"))).await;
        create(&app, None).await;
    }
    let r = app
        .send(
            Method::GET,
            &format!("/identities?{PREVIEW}&maxpagesize=1"),
            None,
        )
        .await;
    let next = r.body["nextLink"].as_str().expect("nextLink").to_owned();
    let token = next
        .split("continuationToken=")
        .nth(1)
        .expect("token")
        .to_owned();
    let (kept, last) = token.split_at(token.len() - 1);
    let tampered = format!("{kept}{}", if last == "A" { "B" } else { "A" });

    let other_resource = format!("8:acs:{}_{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let mine = format!("8:acs:{}_{}", app.resource_id, uuid::Uuid::new_v4());
    let cases: Vec<(String, &str)> = vec![
        ("maxpagesize=0".into(), "maxpagesize"),
        ("maxpagesize=1001".into(), "maxpagesize"),
        ("maxpagesize=-1".into(), "maxpagesize"),
        ("maxpagesize=1.5".into(), "maxpagesize"),
        ("maxpagesize=abc".into(), "maxpagesize"),
        ("maxpagesize=".into(), "maxpagesize"),
        ("maxpagesize=2&maxpagesize=3".into(), "maxpagesize"),
        (
            "lastTokenIssuedBefore=yesterday".into(),
            "lastTokenIssuedBefore",
        ),
        ("customIdPrefix=".into(), "customIdPrefix"),
        ("customIdPrefix=%E2%80".into(), "customIdPrefix"),
        (
            format!("customIdPrefix={}", "a".repeat(257)),
            "customIdPrefix",
        ),
        ("externalIdPrefix=x".into(), "externalIdPrefix"),
        ("continuationToken=".into(), "continuationToken"),
        ("continuationToken=%21%21%21".into(), "continuationToken"),
        ("continuationToken=bm90IGpzb24".into(), "continuationToken"),
        (format!("continuationToken={tampered}"), "continuationToken"),
        (
            format!("continuationToken={token}&customIdPrefix=x"),
            "continuationToken",
        ),
        (
            format!(
                "continuationToken={}",
                continuation(json!({"v": 1, "after": other_resource}))
            ),
            "continuationToken",
        ),
        (
            format!(
                "continuationToken={}",
                continuation(json!({"v": 2, "after": mine}))
            ),
            "continuationToken",
        ),
        (
            format!(
                "continuationToken={}",
                continuation(json!({"v": 1, "after": "8:acs:x_y"}))
            ),
            "continuationToken",
        ),
        (
            format!(
                "continuationToken={}",
                continuation(json!({"v": 1, "after": mine, "before_ms": i64::MAX}))
            ),
            "continuationToken",
        ),
        (
            format!(
                "continuationToken={}",
                continuation(json!({"v": 1, "after": mine, "extra": 1}))
            ),
            "continuationToken",
        ),
    ];
    for (query, target) in cases {
        let r = app
            .send(Method::GET, &format!("/identities?{PREVIEW}&{query}"), None)
            .await;
        r.assert_error(400, "ValidationError");
        assert_eq!(r.body["error"]["target"], target, "{query}: {}", r.body);
    }
    // 2025-04-01-preview filters with externalIdPrefix; customIdPrefix is refused, not ignored.
    let r = app
        .send(
            Method::GET,
            "/identities?api-version=2025-04-01-preview&customIdPrefix=x",
            None,
        )
        .await;
    r.assert_error(400, "ValidationError");
    assert_eq!(r.body["error"]["target"], "customIdPrefix");
    assert_eq!(app.identity_count().await, 6);
    // The genuine continuation still works.
    let (rest, _) = list_all(&app, &format!("/{next}")).await;
    assert_eq!(rest.len(), 5);
    app.stop().await;
}

async fn listing_is_offered_only_where_get_identity_is(backend: Backend) {
    let app = spawn_app(backend).await;
    create(&app, None).await;
    for v in ApiVersion::ALL {
        assert_eq!(
            v.offers(Operation::ListIdentities),
            v.offers(Operation::GetIdentity)
        );
        let r = app
            .send(Method::GET, &format!("/identities?api-version={v}"), None)
            .await;
        if v.offers(Operation::ListIdentities) {
            assert_eq!(r.status, StatusCode::OK, "{v}: {}", r.body);
            assert_eq!(r.body["value"].as_array().map(Vec::len), Some(1));
        } else {
            r.assert_error(400, "UnsupportedApiVersion");
        }
    }
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let r = app
            .send(method, &format!("/identities?{PREVIEW}"), None)
            .await;
        r.assert_error(405, "MethodNotAllowed");
        assert_eq!(r.headers["allow"], "GET, POST");
    }
    app.stop().await;
}

/// Creates `n` identities, `parallel` requests at a time.
async fn create_many(app: &TestApp, n: usize, parallel: usize) -> Vec<String> {
    futures_util::stream::iter(0..n)
        .map(|_| create(app, None))
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// Creates `n` identities straight in the server's store (as `callsign seed` does), quickly.
async fn seed(app: &TestApp, n: usize) -> Vec<String> {
    let resource = callsign_core::ResourceId::parse(&app.resource_id).expect("guid");
    futures_util::stream::iter(0..n)
        .map(|_| async {
            let new = callsign_store::NewIdentity {
                id: callsign_core::IdentityId::new_random(resource),
                custom_id: None,
                created_at: time::OffsetDateTime::now_utc(),
            };
            let created = app
                .store
                .create_identity(new, &callsign_store::Actor::operator())
                .await
                .expect("create");
            created.identity.id.to_string()
        })
        .buffer_unordered(64)
        .collect()
        .await
}

async fn a_listing_during_creates_and_deletes_lists_every_lasting_identity_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let lasting = seed(&app, 10_001).await;
    let doomed = create_many(&app, 300, 16).await;
    let churn = async {
        let deletes = futures_util::stream::iter(doomed.iter())
            .map(|id| async {
                let r = app
                    .send(
                        Method::DELETE,
                        &format!("/identities/{}?{PREVIEW}", enc(id)),
                        None,
                    )
                    .await;
                assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
            })
            .buffer_unordered(4)
            .collect::<Vec<()>>();
        let creates = create_many(&app, 300, 4);
        tokio::join!(deletes, creates)
    };
    let first = format!("/identities?{PREVIEW}&maxpagesize=250");
    let listing = list_all(&app, &first);
    let ((items, pages), _) = tokio::join!(listing, churn);
    assert!(pages >= 41, "{pages} pages");
    let listed = ids(&items);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &listed {
        *counts.entry(id).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "an identity listed twice");
    let listed: HashSet<&str> = counts.into_keys().collect();
    let missing = lasting
        .iter()
        .filter(|id| !listed.contains(id.as_str()))
        .count();
    assert_eq!(
        missing, 0,
        "identities that existed throughout were skipped"
    );
    app.stop().await;
}

on_every_backend!(
    listing_pages_through_every_identity_exactly_once,
    listing_filters_by_custom_id_prefix_and_stale_token_time,
    bad_listing_parameters_are_400_and_change_nothing,
    listing_is_offered_only_where_get_identity_is,
    a_listing_during_creates_and_deletes_lists_every_lasting_identity_once,
);
