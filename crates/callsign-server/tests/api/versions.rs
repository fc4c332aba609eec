//! The 2025-2026 api-versions: custom ids under their per-version names, the GA versions that
//! have none, the Teams extension surface, and the trailing-slash host some clients sign.

use callsign_api::{ApiVersion, CustomIdField, Operation};
use callsign_testkit::{Backend, SendExt, enc, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::json;

const TENANT: &str = "c70d068c-2f32-484d-9455-73070cd5aadd";
const OBJECT: &str = "b27b64b9-39d2-44a3-869d-67700b74e805";
const CLIENT_A: &str = "2a4f0d5e-8a7e-4b1a-9f2b-1c3d4e5f6a7b";
const CLIENT_B: &str = "7e6d5c4b-3a29-4817-8f6e-5d4c3b2a1908";

fn assignment_path(v: ApiVersion, tenant: &str, object: &str) -> String {
    format!("/access/teamsExtension/tenants/{tenant}/assignments/{object}?api-version={v}")
}

async fn every_served_version_is_advertised_and_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let listed = ApiVersion::supported_list();
    for v in [
        "2025-04-01-preview",
        "2025-06-30",
        "2026-07-22",
        "2026-09-23",
    ] {
        assert!(listed.contains(v), "{listed}");
    }
    for v in ApiVersion::ALL {
        let r = app
            .send(Method::POST, &format!("/identities?api-version={v}"), None)
            .await;
        let want = if v.is_legacy() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        assert_eq!(r.status, want, "{v}: {}", r.body);
        assert_eq!(r.headers["api-supported-versions"], listed.as_str());
    }
    assert_eq!(app.identity_count().await, ApiVersion::ALL.len() as i64);
    app.stop().await;
}

async fn external_ids_of_2025_04_01_preview_are_idempotent_and_answer_200_when_found(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let v = "api-version=2025-04-01-preview";
    let body = r#"{"externalId": "sally@contoso.com", "createTokenWithScopes": ["chat.join"]}"#;
    let a = app
        .send(Method::POST, &format!("/identities?{v}"), Some(body))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["identity"]["externalId"], "sally@contoso.com");
    assert!(a.body["identity"].get("customId").is_none(), "{}", a.body);
    assert!(a.body["accessToken"]["token"].as_str().is_some());
    let id = a.body["identity"]["id"].as_str().expect("id").to_owned();

    let b = app
        .send(Method::POST, &format!("/identities?{v}"), Some(body))
        .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    assert_eq!(b.body["identity"]["id"], id.as_str());
    assert_eq!(app.identity_count().await, 1);

    let got = app
        .send(Method::GET, &format!("/identities/{}?{v}", enc(&id)), None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["externalId"], "sally@contoso.com");
    assert!(got.body.get("customId").is_none());

    // The same identity read through 2025-03-02-preview names the field customId, and that
    // version's customId reaches the same identity.
    let got = app
        .send(
            Method::GET,
            &format!("/identities/{}?api-version=2025-03-02-preview", enc(&id)),
            None,
        )
        .await;
    assert_eq!(got.body["customId"], "sally@contoso.com");
    let c = app
        .send(
            Method::POST,
            "/identities?api-version=2025-03-02-preview",
            Some(r#"{"customId": "sally@contoso.com"}"#),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED);
    assert_eq!(c.body["identity"]["id"], id.as_str());

    // customId is not a field of 2025-04-01-preview: ignored, a new identity each time.
    for _ in 0..2 {
        let r = app
            .send(
                Method::POST,
                &format!("/identities?{v}"),
                Some(r#"{"customId": "sally@contoso.com"}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_ne!(r.body["identity"]["id"], id.as_str());
    }
    assert_eq!(app.identity_count().await, 3);

    let r = app
        .send(
            Method::POST,
            &format!("/identities?{v}"),
            Some(r#"{"externalId": ""}"#),
        )
        .await;
    r.assert_error(400, "ValidationError");
    assert_eq!(r.body["error"]["target"], "externalId");
    assert_eq!(app.identity_count().await, 3);
    app.stop().await;
}

async fn ga_versions_after_the_previews_have_no_custom_ids_and_no_get(backend: Backend) {
    let app = spawn_app(backend).await;
    let ga = [
        ApiVersion::V2025_06_30,
        ApiVersion::V2026_07_22,
        ApiVersion::V2026_09_23,
    ];
    for v in ga {
        assert_eq!(v.custom_id_field(), None);
        let mut ids = Vec::new();
        for field in ["customId", "externalId"] {
            let body = json!({ field: "sally@contoso.com", "createTokenWithScopes": ["voip.join"], "expiresInMinutes": 60 });
            let r = app
                .send(
                    Method::POST,
                    &format!("/identities?api-version={v}"),
                    Some(&body.to_string()),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{v}: {}", r.body);
            let identity = r.body["identity"].as_object().expect("identity");
            assert_eq!(identity.len(), 1, "{v}: only the id: {}", r.body);
            ids.push(r.body["identity"]["id"].as_str().expect("id").to_owned());
        }
        assert_ne!(ids[0], ids[1], "{v}: a custom id is ignored, not honoured");
        let r = app
            .send(
                Method::GET,
                &format!("/identities/{}?api-version={v}", enc(&ids[0])),
                None,
            )
            .await;
        r.assert_error(400, "UnsupportedApiVersion");
    }
    assert_eq!(app.identity_count().await, 6);
    app.stop().await;
}

async fn teams_extension_assignments_are_created_replaced_read_and_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let offering: Vec<ApiVersion> = ApiVersion::ALL
        .into_iter()
        .filter(|v| v.offers(Operation::TeamsExtensionAssignments))
        .collect();
    assert_eq!(
        offering,
        [
            ApiVersion::V2025_03_02Preview,
            ApiVersion::V2025_06_30,
            ApiVersion::V2026_07_22,
            ApiVersion::V2026_09_23
        ]
    );
    for v in offering {
        let path = assignment_path(v, TENANT, OBJECT);
        let created = app
            .send(
                Method::PUT,
                &path,
                Some(r#"{"principalType": "resourceAccount"}"#),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{v}: {}", created.body);
        assert_eq!(
            created.body,
            json!({"objectId": OBJECT, "tenantId": TENANT, "principalType": "resourceAccount"})
        );

        let body = json!({"principalType": "user", "clientIds": [CLIENT_A, CLIENT_B]}).to_string();
        let replaced = app.send(Method::PUT, &path, Some(&body)).await;
        assert_eq!(replaced.status, StatusCode::OK, "{v}: {}", replaced.body);
        let want = json!({"objectId": OBJECT, "tenantId": TENANT, "principalType": "user", "clientIds": [CLIENT_A, CLIENT_B]});
        assert_eq!(replaced.body, want);

        let got = app.send(Method::GET, &path, None).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, want);

        // Another object of the tenant is a different assignment.
        let other = assignment_path(v, TENANT, CLIENT_A);
        app.send(Method::GET, &other, None)
            .await
            .assert_error(404, "AssignmentNotFound");

        let deleted = app.send(Method::DELETE, &path, None).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{v}");
        assert!(deleted.raw.is_empty());
        app.send(Method::GET, &path, None)
            .await
            .assert_error(404, "AssignmentNotFound");
        app.send(Method::DELETE, &path, None)
            .await
            .assert_error(404, "AssignmentNotFound");
    }
    app.stop().await;
}

async fn bad_assignments_are_refused_and_store_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = ApiVersion::V2026_09_23;
    let path = assignment_path(v, TENANT, OBJECT);
    let many: Vec<String> = (0..101)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let cases = [
        (r#"{"principalType": "group"}"#.to_owned(), "principalType"),
        (r#"{"principalType": "User"}"#.to_owned(), "principalType"),
        (r#"{}"#.to_owned(), "principalType"),
        (r#"{"principalType": null}"#.to_owned(), "principalType"),
        (
            r#"{"principalType": "user", "clientIds": ["not-a-guid"]}"#.to_owned(),
            "clientIds",
        ),
        (
            json!({"principalType": "user", "clientIds": many}).to_string(),
            "clientIds",
        ),
    ];
    for (body, target) in &cases {
        let r = app.send(Method::PUT, &path, Some(body)).await;
        r.assert_error(400, "ValidationError");
        assert_eq!(r.body["error"]["target"], *target, "{body}");
    }
    let r = app
        .send(Method::PUT, &path, Some(r#"{"principalType": 5}"#))
        .await;
    r.assert_error(400, "ValidationError");
    for (tenant, object, target) in [
        ("tenant", OBJECT, "tenantId"),
        (TENANT, "c70d068c2f32484d945573070cd5aadd", "objectId"),
        (TENANT, "%FF", "objectId"),
    ] {
        let r = app
            .send(
                Method::PUT,
                &assignment_path(v, tenant, object),
                Some(r#"{"principalType": "user"}"#),
            )
            .await;
        if tenant == TENANT && object == "%FF" {
            // Not UTF-8 once decoded: refused while routing.
            r.assert_error(400, "ValidationError");
        } else {
            r.assert_error(400, "ValidationError");
            assert_eq!(r.body["error"]["target"], target);
        }
    }
    // Nothing was stored by any of it.
    app.send(Method::GET, &path, None)
        .await
        .assert_error(404, "AssignmentNotFound");

    // Not a version with the Teams extension, and not a method of the path.
    for old in [ApiVersion::V2023_10_01, ApiVersion::V2025_04_01Preview] {
        app.send(
            Method::PUT,
            &assignment_path(old, TENANT, OBJECT),
            Some(r#"{"principalType": "user"}"#),
        )
        .await
        .assert_error(400, "UnsupportedApiVersion");
    }
    let r = app
        .send(Method::POST, &path, Some(r#"{"principalType": "user"}"#))
        .await;
    r.assert_error(405, "MethodNotAllowed");
    assert_eq!(r.headers["allow"], "GET, PUT, DELETE");
    app.send(Method::GET, &path, None)
        .await
        .assert_error(404, "AssignmentNotFound");
    app.stop().await;
}

async fn teams_extension_exchange_refuses_tokens_it_cannot_verify(backend: Backend) {
    let app = spawn_app(backend).await;
    let base = app.endpoint.trim_end_matches('/').to_owned();
    let exchange =
        |v: ApiVersion| format!("/access/teamsExtension/:exchangeAccessToken?api-version={v}");
    // As the SDKs send it: the Teams Phone token as a bearer, an empty JSON body.
    for v in [ApiVersion::V2025_06_30, ApiVersion::V2026_09_23] {
        let r = app
            .client
            .post(format!("{base}{}", exchange(v)))
            .header("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
            .header("content-type", "application/json")
            .body("{}")
            .reply()
            .await;
        r.assert_error(401, "InvalidAccessToken");
        // HMAC-signed instead: authenticated, but there is still no token to exchange.
        app.send(Method::POST, &exchange(v), Some("{}"))
            .await
            .assert_error(401, "InvalidAccessToken");
    }
    let r = app
        .client
        .post(format!("{base}{}", exchange(ApiVersion::V2023_10_01)))
        .header("authorization", "Bearer x")
        .reply()
        .await;
    r.assert_error(400, "UnsupportedApiVersion");
    // Neither a bearer nor a signature: the ordinary authentication failure.
    let r = app
        .client
        .post(format!("{base}{}", exchange(ApiVersion::V2026_09_23)))
        .reply()
        .await;
    r.assert_error(401, "Denied");
    assert_eq!(app.identity_count().await, 0);
    app.stop().await;
}

async fn a_host_signed_with_a_trailing_slash_is_accepted_on_every_version(backend: Backend) {
    let app = spawn_app(backend).await;
    let slashed = format!("{}/", app.host);
    for v in ApiVersion::ALL {
        let r = app
            .send_signed_as(
                Method::POST,
                &format!("/identities?api-version={v}"),
                None,
                &slashed,
            )
            .await;
        assert!(r.status.is_success(), "{v}: {}", r.body);
    }
    // Any other host is still refused.
    let r = app
        .send_signed_as(
            Method::POST,
            "/identities?api-version=2023-10-01",
            None,
            &format!("{}//", app.host),
        )
        .await;
    r.assert_error(401, "Denied");
    assert_eq!(app.identity_count().await, ApiVersion::ALL.len() as i64);
    app.stop().await;
}

#[test]
fn custom_id_field_names_follow_the_spec() {
    assert_eq!(
        ApiVersion::V2025_03_02Preview.custom_id_field(),
        Some(CustomIdField::CustomId)
    );
    assert_eq!(
        ApiVersion::V2025_04_01Preview.custom_id_field(),
        Some(CustomIdField::ExternalId)
    );
}

on_every_backend!(
    every_served_version_is_advertised_and_accepted,
    external_ids_of_2025_04_01_preview_are_idempotent_and_answer_200_when_found,
    ga_versions_after_the_previews_have_no_custom_ids_and_no_get,
    teams_extension_assignments_are_created_replaced_read_and_deleted,
    bad_assignments_are_refused_and_store_nothing,
    teams_extension_exchange_refuses_tokens_it_cannot_verify,
    a_host_signed_with_a_trailing_slash_is_accepted_on_every_version,
);
