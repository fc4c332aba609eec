//! Workforce access (`/access/entra`): the token exchange and the access assignments.
//!
//! What the client puts on the wire and how it reads the answers is checked against canned
//! servers; the behaviour of the real server's endpoints is checked by the tests marked
//! `#[ignore]` until those endpoints are in the server.

use std::collections::BTreeMap;
use std::time::Duration;

use callsign_client::{
    CommunicationTokenScope as Scope, EntraAssignmentPatch, Error, ErrorCode, PrincipalType,
    RetryPolicy, access_assignment_request,
};
use callsign_hmac::{AccessKeyMac, content_hash, string_to_sign};
use futures_util::TryStreamExt as _;

use crate::helpers::{Canned, CannedServer, Captured, OTHER_KEY, response, spawn_server};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const GUID_OBJECT: &str = "b27b64b9-39d2-44a3-869d-67700b74e805";
const AUTH0_OBJECT: &str = "auth0|5f7c8ec7c33c6c004bbafe82";
const WORKFORCE_ID: &str = "8:acs:5b0a7d4e-1c2f-4a3b-9d8e-7f6a5b4c3d2e_wf_72f988bf-86f1-41af-91ab-2d7cd011db47_b27b64b9-39d2-44a3-869d-67700b74e805";
const BEARER: &str = "eyJhbGciOiJSUzI1NiJ9.eyJvaWQiOiJiMjdiIn0.c2lnbmF0dXJl";
const TIMEOUT: Duration = Duration::from_secs(10);

fn fast() -> RetryPolicy {
    RetryPolicy::default()
        .max_retries(3)
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(100))
}

fn exchanged() -> Canned {
    response(
        200,
        &[],
        &format!(
            r#"{{"identity":{{"id":"{WORKFORCE_ID}"}},"accessToken":{{"token":"a.b.c","expiresOn":"2030-01-01T00:00:00+00:00"}}}}"#
        ),
    )
}

fn assignment_json(object: &str, principal: &str) -> String {
    format!(r#"{{"objectId":"{object}","tenantId":"{TENANT}","principalType":"{principal}"}}"#)
}

/// Signed with the canned client's key over exactly what was sent (method, encoded target,
/// body).
#[track_caller]
fn assert_hmac_signed(r: &Captured) {
    let date = r.header("x-ms-date").expect("x-ms-date");
    let host = r.header("host").expect("host");
    let hash = content_hash(&r.body);
    assert_eq!(r.header("x-ms-content-sha256"), Some(hash.as_str()));
    let sts = string_to_sign(&r.method, &r.target, &[date, host, &hash]);
    let key = AccessKeyMac::from_base64(OTHER_KEY).expect("key");
    assert_eq!(
        r.header("authorization"),
        Some(
            format!(
                "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={}",
                key.sign(&sts)
            )
            .as_str()
        ),
        "{} {}",
        r.method,
        r.target
    );
}

#[tokio::test]
async fn the_exchange_sends_the_bearer_token_alone_unsigned() {
    let server = CannedServer::start(vec![exchanged()]).await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    let (user, token) = client
        .exchange_access_token(BEARER)
        .await
        .expect("exchanged");
    assert_eq!(user.raw_id(), WORKFORCE_ID);
    assert_eq!(token.token, "a.b.c");
    assert_eq!(token.expires_on.unix_timestamp(), 1_893_456_000);

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.target,
        "/access/entra/:exchangeAccessToken?api-version=2025-03-02-preview"
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, b"{}");
    // Not signed: the bearer token is the credential, the access key is not used.
    assert_eq!(r.header("x-ms-date"), None);
    assert_eq!(r.header("x-ms-content-sha256"), None);
}

#[tokio::test]
async fn the_exchange_is_retried_on_transient_statuses_only() {
    let server = CannedServer::start(vec![
        response(
            503,
            &[],
            r#"{"error":{"code":"ServiceUnavailable","message":"Try later."}}"#,
        ),
        response(429, &[("retry-after-ms", "10")], ""),
        exchanged(),
    ])
    .await;
    let client = server.client(fast(), TIMEOUT);
    let (user, _) = client
        .exchange_access_token(BEARER)
        .await
        .expect("third attempt");
    assert_eq!(user.raw_id(), WORKFORCE_ID);
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let bearer = format!("Bearer {BEARER}");
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some(bearer.as_str()))
    );

    let server = CannedServer::start(vec![
        response(
            401,
            &[],
            r#"{"error":{"code":"InvalidAccessToken","message":"Provided access token is not valid."}}"#,
        ),
        exchanged(),
    ])
    .await;
    let e = server
        .client(fast(), TIMEOUT)
        .exchange_access_token(BEARER)
        .await
        .expect_err("refused");
    assert_eq!(e.status(), Some(401));
    assert_eq!(e.code(), Some("InvalidAccessToken"));
    assert!(!e.to_string().contains(BEARER), "{e}");
    assert_eq!(server.requests().len(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn an_unusable_bearer_token_is_refused_before_anything_is_sent() {
    let server = CannedServer::start(vec![exchanged()]).await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    for bad in ["", "  \n", "two\nlines"] {
        let e = client
            .exchange_access_token(bad)
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e:?}");
    }
    // A token file's final newline is not part of the token.
    client
        .exchange_access_token(&format!("{BEARER}\n"))
        .await
        .expect("trimmed");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
}

#[tokio::test]
async fn an_exchange_answer_without_a_token_is_an_unexpected_response() {
    let server = CannedServer::start(vec![response(
        200,
        &[],
        &format!(r#"{{"identity":{{"id":"{WORKFORCE_ID}"}}}}"#),
    )])
    .await;
    let e = server
        .client(RetryPolicy::none(), TIMEOUT)
        .exchange_access_token(BEARER)
        .await
        .expect_err("no token");
    assert!(
        matches!(e, Error::UnexpectedResponse { status: 200, .. }),
        "{e:?}"
    );
}

/// Put, get and delete as they go on the wire: signed, at 2025-03-02-preview whatever the
/// client's version, object ids percent-encoded as one path segment.
#[tokio::test]
async fn assignment_calls_are_signed_and_encode_the_object_id() {
    let server = CannedServer::start(vec![
        response(201, &[], &assignment_json(AUTH0_OBJECT, "user")),
        response(200, &[], &assignment_json(AUTH0_OBJECT, "user")),
        response(200, &[], &assignment_json(GUID_OBJECT, "group")),
        response(204, &[], ""),
    ])
    .await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    let (put, created) = client
        .put_access_assignment(
            AUTH0_OBJECT,
            TENANT,
            PrincipalType::User,
            Some(&[Scope::Chat, Scope::Voip]),
        )
        .await
        .expect("put");
    assert!(created, "201 is a creation");
    assert_eq!(put.object_id, AUTH0_OBJECT);
    let (_, created) = client
        .put_access_assignment(AUTH0_OBJECT, TENANT, PrincipalType::User, None)
        .await
        .expect("put again");
    assert!(!created, "200 is a replacement");
    let got = client
        .get_access_assignment(GUID_OBJECT)
        .await
        .expect("get");
    assert_eq!(got.principal_type, "group");
    client
        .delete_access_assignment(AUTH0_OBJECT)
        .await
        .expect("delete");

    let r = server.requests();
    assert_eq!(r.len(), 4);
    r.iter().for_each(assert_hmac_signed);
    let encoded = "/access/entra/assignments/auth0%7C5f7c8ec7c33c6c004bbafe82";
    let version = "?api-version=2025-03-02-preview";
    let sent: Vec<(&str, &str)> = r
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        sent,
        [
            ("PUT", format!("{encoded}{version}").as_str()),
            ("PUT", format!("{encoded}{version}").as_str()),
            (
                "GET",
                format!("/access/entra/assignments/{GUID_OBJECT}{version}").as_str()
            ),
            ("DELETE", format!("{encoded}{version}").as_str()),
        ]
    );
    assert_eq!(r[0].header("content-type"), Some("application/json"));
    assert_eq!(
        r[0].body,
        format!(r#"{{"tenantId":"{TENANT}","principalType":"user","scopes":["chat","voip"]}}"#)
            .as_bytes()
    );
    assert_eq!(
        r[1].body,
        format!(r#"{{"tenantId":"{TENANT}","principalType":"user"}}"#).as_bytes()
    );
    assert!(r[2].body.is_empty() && r[3].body.is_empty());
    assert_eq!(r[2].header("content-type"), None);
}

/// A patch is a signed JSON merge patch of the collection: `null` deletes.
#[tokio::test]
async fn a_patch_is_a_signed_merge_patch_of_the_collection() {
    let server = CannedServer::start(vec![response(
        200,
        &[],
        &format!(r#"{{"{TENANT}":{}}}"#, assignment_json(TENANT, "tenant")),
    )])
    .await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    let mut patch = EntraAssignmentPatch::new();
    patch.insert(
        TENANT.to_owned(),
        Some(access_assignment_request(
            TENANT,
            PrincipalType::Tenant,
            None,
        )),
    );
    patch.insert(AUTH0_OBJECT.to_owned(), None);
    let put = client
        .patch_access_assignments(&patch)
        .await
        .expect("patch");
    assert_eq!(put.keys().collect::<Vec<_>>(), [TENANT]);
    assert_eq!(put[TENANT].principal_type, "tenant");

    let r = server.requests();
    assert_eq!(r.len(), 1);
    assert_hmac_signed(&r[0]);
    assert_eq!(r[0].method, "PATCH");
    assert_eq!(
        r[0].target,
        "/access/entra/assignments?api-version=2025-03-02-preview"
    );
    assert_eq!(
        r[0].header("content-type"),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        r[0].body,
        format!(
            r#"{{"{TENANT}":{{"tenantId":"{TENANT}","principalType":"tenant"}},"{AUTH0_OBJECT}":null}}"#
        )
        .as_bytes()
    );
}

#[tokio::test]
async fn an_object_id_that_is_not_one_path_segment_is_refused_before_anything_is_sent() {
    let server = CannedServer::start(vec![response(204, &[], "")]).await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    for bad in ["", ".", ".."] {
        let e = client
            .delete_access_assignment(bad)
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e:?}");
        let e = client
            .get_access_assignment(bad)
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e:?}");
        let e = client
            .put_access_assignment(bad, TENANT, PrincipalType::User, None)
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e:?}");
    }
    assert!(server.requests().is_empty());
}

/// The listing follows each page's `nextLink` (relative to the endpoint) until a page has
/// none, and asks for the page size on the first request only.
#[tokio::test]
async fn the_assignment_listing_follows_next_links_to_the_last_page() {
    let link = |n: u32| {
        format!(
            "access/entra/assignments?api-version=2025-03-02-preview&maxpagesize=2&continuationToken=c{n}"
        )
    };
    let page = |objects: &[&str], next: Option<String>| {
        let value: Vec<String> = objects.iter().map(|o| assignment_json(o, "user")).collect();
        let next = next.map_or(String::new(), |l| format!(r#","nextLink":"{l}""#));
        response(
            200,
            &[],
            &format!(r#"{{"value":[{}]{next}}}"#, value.join(",")),
        )
    };
    let server = CannedServer::start(vec![
        page(&["a", "b"], Some(link(1))),
        page(&["c", "d"], Some(format!("/{}", link(2)))),
        page(&["e"], None),
    ])
    .await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    let all: Vec<_> = client
        .list_access_assignments(Some(2))
        .try_collect()
        .await
        .expect("list");
    let objects: Vec<&str> = all.iter().map(|a| a.object_id.as_str()).collect();
    assert_eq!(objects, ["a", "b", "c", "d", "e"]);
    let r = server.requests();
    assert_eq!(r.len(), 3);
    r.iter().for_each(assert_hmac_signed);
    assert_eq!(
        r[0].target,
        "/access/entra/assignments?api-version=2025-03-02-preview&maxpagesize=2"
    );
    assert_eq!(r[1].target, format!("/{}", link(1)));
    assert_eq!(r[2].target, format!("/{}", link(2)));

    // Page by page, by hand.
    let server = CannedServer::start(vec![page(&["a"], Some(link(1))), page(&["b"], None)]).await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    let first = client
        .list_access_assignments_page(None, None)
        .await
        .expect("first");
    assert_eq!(first.assignments.len(), 1);
    let next = first.next_link.expect("a next page");
    let last = client
        .list_access_assignments_page(None, Some(&next))
        .await
        .expect("last");
    assert_eq!(last.next_link, None);
    assert_eq!(
        server.requests()[0].target,
        "/access/entra/assignments?api-version=2025-03-02-preview"
    );
}

#[tokio::test]
async fn the_assignment_listing_stops_at_a_foreign_or_stuck_next_link() {
    let foreign = format!(
        r#"{{"value":[{}],"nextLink":"https://elsewhere.example/access/entra/assignments?api-version=2025-03-02-preview"}}"#,
        assignment_json("a", "user")
    );
    let server = CannedServer::start(vec![response(200, &[], &foreign)]).await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    let mut stream = std::pin::pin!(client.list_access_assignments(None));
    stream.try_next().await.expect("first").expect("one");
    let e = stream.try_next().await.expect_err("not followed");
    assert!(matches!(e, Error::UnexpectedResponse { .. }), "{e:?}");
    assert_eq!(server.requests().len(), 1);

    let link = "access/entra/assignments?api-version=2025-03-02-preview&continuationToken=x";
    let backwards = |object: &str, n: u32| {
        response(
            200,
            &[],
            &format!(
                r#"{{"value":[{}],"nextLink":"{link}{n}"}}"#,
                assignment_json(object, "user")
            ),
        )
    };
    let server = CannedServer::start(vec![backwards("m", 1), backwards("b", 2)]).await;
    let client = server.client(RetryPolicy::none(), TIMEOUT);
    let e = client
        .list_access_assignments(None)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("stopped");
    assert!(e.to_string().contains("assignments out of order"), "{e}");
    assert_eq!(server.requests().len(), 2);
}

// Against the real server.

#[tokio::test]
async fn a_trusted_issuers_user_exchanges_their_token_through_the_client() {
    let provider = callsign_testkit::OidcProvider::start(&[]).await;
    let server = crate::helpers::spawn_server_trusting(&provider.issuer).await;
    let client = server.client();
    let bearer = provider
        .token("alice", "ES256", serde_json::json!({}))
        .await;
    let refused = client
        .exchange_access_token(&bearer)
        .await
        .expect_err("no assignment");
    assert_eq!(refused.status(), Some(403), "{refused}");
    let tenant = callsign_server::oidc::TrustedIssuer::tenant_of_issuer(&provider.issuer);
    client
        .put_access_assignment(
            "alice",
            &tenant.to_string(),
            PrincipalType::User,
            Some(&[Scope::Chat]),
        )
        .await
        .expect("assigned");
    let (user, token) = client
        .exchange_access_token(&bearer)
        .await
        .expect("exchanged");
    assert!(
        user.raw_id().contains(&format!("_wf_{tenant}_")),
        "{}",
        user.raw_id()
    );
    assert!(!token.token.is_empty());
    let (again, _) = client.exchange_access_token(&bearer).await.expect("again");
    assert_eq!(again, user, "the same identity every time");
}

#[tokio::test]
async fn assignments_are_created_replaced_read_and_deleted() {
    let server = spawn_server().await;
    let client = server.client();
    let (put, created) = client
        .put_access_assignment(AUTH0_OBJECT, TENANT, PrincipalType::User, None)
        .await
        .expect("put");
    assert!(created, "the first put creates");
    assert_eq!(put.object_id, AUTH0_OBJECT);
    assert_eq!(put.tenant_id, TENANT);
    assert_eq!(put.principal_type, "user");
    assert_eq!(put.scopes, None);

    let (replaced, created) = client
        .put_access_assignment(
            AUTH0_OBJECT,
            TENANT,
            PrincipalType::Group,
            Some(&[Scope::Chat, Scope::Voip]),
        )
        .await
        .expect("put again");
    assert!(!created, "the second put replaces");
    assert_eq!(replaced.principal_type, "group");
    assert_eq!(
        replaced.scopes,
        Some(vec!["chat".to_owned(), "voip".to_owned()])
    );
    let got = client
        .get_access_assignment(AUTH0_OBJECT)
        .await
        .expect("get");
    assert_eq!(got, replaced);

    // A GUID object id, given in capitals, is one principal: kept in lowercase.
    let (guid, _) = client
        .put_access_assignment(
            &GUID_OBJECT.to_uppercase(),
            TENANT,
            PrincipalType::User,
            None,
        )
        .await
        .expect("put a GUID");
    assert_eq!(guid.object_id, GUID_OBJECT);
    assert_eq!(
        client
            .get_access_assignment(GUID_OBJECT)
            .await
            .expect("get the GUID"),
        guid
    );

    client
        .delete_access_assignment(AUTH0_OBJECT)
        .await
        .expect("delete");
    for e in [
        client
            .get_access_assignment(AUTH0_OBJECT)
            .await
            .expect_err("gone"),
        client
            .delete_access_assignment(AUTH0_OBJECT)
            .await
            .expect_err("gone"),
    ] {
        assert_eq!(e.status(), Some(404), "{e}");
        assert_eq!(e.error_code(), Some(ErrorCode::AssignmentNotFound), "{e}");
    }
}

#[tokio::test]
async fn an_absent_assignment_is_404_assignment_not_found() {
    let server = spawn_server().await;
    let client = server.client();
    let e = client
        .get_access_assignment(GUID_OBJECT)
        .await
        .expect_err("absent");
    assert_eq!(e.status(), Some(404), "{e}");
    assert_eq!(e.code(), Some("AssignmentNotFound"), "{e}");
    let e = client
        .delete_access_assignment("never|assigned")
        .await
        .expect_err("absent");
    assert_eq!(e.status(), Some(404), "{e}");
    assert_eq!(e.code(), Some("AssignmentNotFound"), "{e}");
}

#[tokio::test]
async fn the_listing_pages_through_every_assignment_in_object_id_order() {
    let server = spawn_server().await;
    let client = server.client();
    let mut objects: Vec<String> = (0..7).map(|i| format!("auth0|user-{i}")).collect();
    objects.push(GUID_OBJECT.to_owned());
    for object in &objects {
        client
            .put_access_assignment(object, TENANT, PrincipalType::User, None)
            .await
            .expect("put");
    }
    objects.sort();

    // 8 assignments, 3 a page: 3 pages.
    let first = client
        .list_access_assignments_page(Some(3), None)
        .await
        .expect("first page");
    assert_eq!(first.assignments.len(), 3);
    let second = client
        .list_access_assignments_page(None, first.next_link.as_deref())
        .await
        .expect("second page");
    assert_eq!(second.assignments.len(), 3);
    let third = client
        .list_access_assignments_page(None, second.next_link.as_deref())
        .await
        .expect("third page");
    assert_eq!(third.assignments.len(), 2);
    assert_eq!(third.next_link, None, "the third page is the last");
    let paged: Vec<String> = [first, second, third]
        .into_iter()
        .flat_map(|p| p.assignments)
        .map(|a| a.object_id)
        .collect();
    assert_eq!(paged, objects);

    let streamed: Vec<String> = client
        .list_access_assignments(Some(3))
        .map_ok(|a| a.object_id)
        .try_collect()
        .await
        .expect("list");
    assert_eq!(streamed, objects);

    let e = client
        .list_access_assignments(Some(1001))
        .try_collect::<Vec<_>>()
        .await
        .expect_err("page size out of range");
    assert_eq!(e.status(), Some(400), "{e}");
}

#[tokio::test]
async fn a_patch_puts_and_deletes_in_one_request() {
    let server = spawn_server().await;
    let client = server.client();
    client
        .put_access_assignment(AUTH0_OBJECT, TENANT, PrincipalType::User, None)
        .await
        .expect("put");

    let mut patch = EntraAssignmentPatch::new();
    patch.insert(
        GUID_OBJECT.to_owned(),
        Some(access_assignment_request(
            TENANT,
            PrincipalType::Group,
            Some(&[Scope::Chat]),
        )),
    );
    patch.insert(
        TENANT.to_owned(),
        Some(access_assignment_request(
            TENANT,
            PrincipalType::Tenant,
            None,
        )),
    );
    patch.insert(AUTH0_OBJECT.to_owned(), None);
    let put = client
        .patch_access_assignments(&patch)
        .await
        .expect("patch");
    assert_eq!(
        put.keys().map(String::as_str).collect::<Vec<_>>(),
        [TENANT, GUID_OBJECT]
    );
    assert_eq!(put[GUID_OBJECT].principal_type, "group");
    assert_eq!(put[GUID_OBJECT].scopes, Some(vec!["chat".to_owned()]));

    let listed: BTreeMap<String, _> = client
        .list_access_assignments(None)
        .map_ok(|a| (a.object_id.clone(), a))
        .try_collect()
        .await
        .expect("list");
    assert_eq!(
        listed, put,
        "the deleted one is gone, the put ones are there"
    );
    let e = client
        .get_access_assignment(AUTH0_OBJECT)
        .await
        .expect_err("deleted by the patch");
    assert_eq!(e.error_code(), Some(ErrorCode::AssignmentNotFound), "{e}");

    // All or nothing: an invalid member changes nothing.
    let mut bad = EntraAssignmentPatch::new();
    bad.insert(GUID_OBJECT.to_owned(), None);
    bad.insert(
        "auth0|other".to_owned(),
        Some(access_assignment_request(
            "not-a-guid",
            PrincipalType::User,
            None,
        )),
    );
    let e = client
        .patch_access_assignments(&bad)
        .await
        .expect_err("invalid tenant");
    assert_eq!(e.status(), Some(400), "{e}");
    client
        .get_access_assignment(GUID_OBJECT)
        .await
        .expect("not deleted");
}
