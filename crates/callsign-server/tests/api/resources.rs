//! Several resources on one server: how a request reaches its resource (by the key that
//! verifies on the server's own address, by host name otherwise), what one resource's keys see of
//! another's identities, replaced keys, and the verify-only key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use callsign_core::AccessKey;
use callsign_store::KeySlot;
use callsign_testkit::{Backend, SigningClient, enc, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PREVIEW: &str = "api-version=2025-03-02-preview";

async fn create(client: &SigningClient, custom: Option<&str>) -> String {
    let body = custom.map(|c| json!({ "customId": c }).to_string());
    let r = client
        .send(
            Method::POST,
            &format!("/identities?{PREVIEW}"),
            body.as_deref(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["identity"]["id"].as_str().expect("id").to_owned()
}

async fn token(client: &SigningClient, id: &str) -> String {
    let r = client.issue(id, &["chat"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["token"].as_str().expect("token").to_owned()
}

async fn listed(client: &SigningClient) -> Vec<String> {
    let r = client
        .send(Method::GET, &format!("/identities?{PREVIEW}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn identities_of_one_resource_are_foreign_to_another(backend: Backend) {
    let app = spawn_app(backend).await;
    let (other, b) = app.add_resource("tenant-b", None).await;
    assert_ne!(other.id.to_string(), app.resource_id);

    let mine = create(&app, Some("alice")).await;
    let my_token = token(&app, &mine).await;
    let theirs = create(&b, Some("alice")).await;
    assert_ne!(mine, theirs, "a custom id is per resource");
    assert!(theirs.contains(&other.id.to_string()), "{theirs}");

    // Every operation B's key can name A's identity in is answered as ACS answers a foreign id,
    // and changes nothing.
    let foreign = enc(&mine);
    let attempts = [
        (
            Method::GET,
            format!("/identities/{foreign}?{PREVIEW}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/identities/{foreign}?{PREVIEW}"),
            None,
        ),
        (
            Method::POST,
            format!("/identities/{foreign}/:issueAccessToken?{PREVIEW}"),
            Some(r#"{"scopes":["chat"]}"#),
        ),
        (
            Method::POST,
            format!("/identities/{foreign}/:revokeAccessTokens?{PREVIEW}"),
            None,
        ),
        (
            Method::POST,
            format!("/identities/{foreign}/token?api-version=2020-07-20-preview2"),
            Some(r#"{"scopes":["chat"]}"#),
        ),
        (
            Method::PATCH,
            format!("/identities/{foreign}?api-version=2020-07-20-preview2"),
            Some(r#"{"tokensValidFrom":"2020-01-01T00:00:00Z"}"#),
        ),
        (
            Method::DELETE,
            format!("/identities/{foreign}?api-version=2020-07-20-preview2"),
            None,
        ),
    ];
    for (method, target, body) in attempts {
        let r = b.send(method.clone(), &target, body).await;
        r.assert_error(401, "IdentityNotOwned");
    }
    let intro = b.introspect(&my_token).await;
    assert_eq!(intro["active"], false);
    assert_eq!(intro["reason"], "foreignResource");

    // A's identity and token are as they were; each listing holds its own resource only.
    assert_eq!(app.introspect(&my_token).await["active"], true);
    assert_eq!(listed(&app).await, vec![mine.clone()]);
    assert_eq!(listed(&b).await, vec![theirs.clone()]);
    // The same customId through A still finds A's identity.
    assert_eq!(create(&app, Some("alice")).await, mine);
}

async fn a_resource_with_a_host_name_is_reached_by_that_name_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let (routed, by_name) = app.add_resource("by-name", Some("localhost")).await;
    let id = create(&by_name, None).await;
    assert!(id.contains(&routed.id.to_string()));

    // Its key on the server's address, and the default resource's key on its name, are
    // refused: each host has its own resources.
    let wrong_host = app.client_with(&app.endpoint, routed.primary_key.expose());
    wrong_host
        .send(Method::POST, &format!("/identities?{PREVIEW}"), None)
        .await
        .assert_error(401, "Denied");
    let default_on_name = app.client_with(&app.localhost_endpoint(), &app.primary_key);
    default_on_name
        .send(Method::POST, &format!("/identities?{PREVIEW}"), None)
        .await
        .assert_error(401, "Denied");
    assert_eq!(listed(&by_name).await, vec![id]);
    assert!(listed(&app).await.is_empty());
}

async fn the_verify_only_key_may_introspect_and_nothing_else(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = create(&app, Some("carol")).await;
    let tok = token(&app, &id).await;
    let verify_key = AccessKey::generate();
    let resource = callsign_core::ResourceId::parse(&app.resource_id).expect("guid");
    app.store
        .replace_access_key(
            resource,
            KeySlot::VerifyOnly,
            verify_key.clone(),
            false,
            &callsign_store::Actor::operator(),
        )
        .await
        .expect("make the verify-only key");
    let verifier = app.client_with(&app.endpoint, verify_key.expose());
    verifier.wait_until_accepted().await;

    let intro = verifier.introspect(&tok).await;
    assert_eq!(intro["active"], true, "{intro}");
    let path = enc(&id);
    let refused = [
        (Method::POST, format!("/identities?{PREVIEW}"), None),
        (Method::GET, format!("/identities?{PREVIEW}"), None),
        (Method::GET, format!("/identities/{path}?{PREVIEW}"), None),
        (
            Method::DELETE,
            format!("/identities/{path}?{PREVIEW}"),
            None,
        ),
        (
            Method::POST,
            format!("/identities/{path}/:issueAccessToken?{PREVIEW}"),
            Some(r#"{"scopes":["chat"]}"#),
        ),
        (
            Method::POST,
            format!("/identities/{path}/:revokeAccessTokens?{PREVIEW}"),
            None,
        ),
        (
            Method::POST,
            format!("/identities/{path}/token?api-version=2020-07-20-preview2"),
            Some(r#"{"scopes":["chat"]}"#),
        ),
        (
            Method::PUT,
            format!(
                "/access/teamsExtension/tenants/{0}/assignments/{0}?api-version=2025-06-30",
                uuid::Uuid::new_v4()
            ),
            Some(r#"{"principalType":"user"}"#),
        ),
    ];
    for (method, target, body) in refused {
        let r = verifier.send(method.clone(), &target, body).await;
        r.assert_error(403, "AuthorizationFailed");
        assert!(
            !r.body.to_string().contains(verify_key.expose()),
            "no key in a response"
        );
    }
    // Nothing changed: one identity, still in force, no new one.
    assert_eq!(app.identity_count().await, 1);
    assert_eq!(app.introspect(&tok).await["active"], true);
}

/// Replacing the primary key while requests signed with the secondary run: none of them fails,
/// and the old primary is refused within the poll interval.
async fn a_replaced_key_is_refused_and_the_other_keeps_working(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = create(&app, None).await;
    let before = token(&app, &id).await;
    let secondary = Arc::new(app.client_with(&app.endpoint, &app.secondary_key));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, stop, ok, failed, id) = (
            Arc::clone(&secondary),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            id.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client.issue(&id, &["voip"]).await;
                let counter = if r.status == StatusCode::OK {
                    &ok
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resource = callsign_core::ResourceId::parse(&app.resource_id).expect("guid");
    let fresh = AccessKey::generate();
    let revoked = app
        .store
        .replace_access_key(
            resource,
            KeySlot::Primary,
            fresh.clone(),
            true,
            &callsign_store::Actor::operator(),
        )
        .await
        .expect("replace the primary key")
        .expect("the resource exists");
    assert_eq!(revoked, 1, "every token of the resource revoked");

    let replaced_at = Instant::now();
    loop {
        let r = app
            .send(Method::POST, &format!("/identities?{PREVIEW}"), None)
            .await;
        if r.status == StatusCode::UNAUTHORIZED {
            r.assert_error(401, "Denied");
            break;
        }
        assert!(
            replaced_at.elapsed() < Duration::from_secs(5),
            "the old key still works after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a secondary-key request failed"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);

    let new_primary = app.client_with(&app.endpoint, fresh.expose());
    new_primary.wait_until_accepted().await;
    let after = token(&new_primary, &id).await;
    let intro: Value = new_primary.introspect(&before).await;
    assert_eq!(intro["reason"], "revoked", "{intro}");
    assert_eq!(new_primary.introspect(&after).await["active"], true);
}

on_every_backend!(
    identities_of_one_resource_are_foreign_to_another,
    a_resource_with_a_host_name_is_reached_by_that_name_only,
    the_verify_only_key_may_introspect_and_nothing_else,
    a_replaced_key_is_refused_and_the_other_keeps_working,
);
