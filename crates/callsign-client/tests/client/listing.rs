//! Listing users: the stream over every page, one page at a time, filters, and a `nextLink`
//! that is not the endpoint's.

use std::time::Duration;

use callsign_client::{CommunicationTokenScope as Scope, Error, ListUsersOptions, RetryPolicy};
use futures_util::TryStreamExt as _;
use time::OffsetDateTime;

use crate::helpers::{CannedServer, response, spawn_server};

#[tokio::test]
async fn list_users_streams_every_page_in_id_order() {
    let server = spawn_server().await;
    let client = server.client();
    let mut created = Vec::new();
    for i in 0..11 {
        let user = if i % 3 == 0 {
            client
                .create_user_with_custom_id(&format!("team-a/{i}"))
                .await
        } else {
            client.create_user().await
        };
        created.push(user.expect("create"));
    }
    client
        .get_token(&created[0], &[Scope::Chat], None)
        .await
        .expect("token");

    let options = ListUsersOptions {
        max_page_size: Some(3),
        ..ListUsersOptions::default()
    };
    let users: Vec<_> = client
        .list_users(options.clone())
        .try_collect()
        .await
        .expect("list");
    let listed: Vec<String> = users.iter().map(|u| u.user.raw_id().to_owned()).collect();
    let mut want: Vec<String> = created.iter().map(|u| u.raw_id().to_owned()).collect();
    want.sort();
    assert_eq!(listed, want);
    let first = users.iter().find(|u| u.user == created[0]).expect("listed");
    assert_eq!(first.custom_id.as_deref(), Some("team-a/0"));
    assert!(first.last_token_issued_at.is_some());
    assert_eq!(first, &client.get_user(&created[0]).await.expect("get"));

    // One page at a time, following the link by hand.
    let page = client.list_users_page(&options, None).await.expect("page");
    assert_eq!(page.users.len(), 3);
    let link = page.next_link.expect("more pages");
    let second = client
        .list_users_page(&ListUsersOptions::default(), Some(&link))
        .await
        .expect("second page");
    assert_eq!(second.users, users[3..6]);

    // Filters: a custom id prefix, and never had a token before now.
    let team_a = ListUsersOptions {
        custom_id_prefix: Some("team-a/".into()),
        max_page_size: Some(1),
        ..ListUsersOptions::default()
    };
    let team: Vec<_> = client.list_users(team_a).try_collect().await.expect("list");
    assert_eq!(team.len(), 4);
    let stale = ListUsersOptions {
        last_token_issued_before: Some(OffsetDateTime::now_utc() - time::Duration::minutes(1)),
        ..ListUsersOptions::default()
    };
    let stale: Vec<_> = client.list_users(stale).try_collect().await.expect("list");
    assert_eq!(stale.len(), 10);
    assert!(stale.iter().all(|u| u.user != created[0]));
}

#[tokio::test]
async fn a_page_size_out_of_range_is_the_services_validation_error() {
    let server = spawn_server().await;
    let client = server.client();
    let options = ListUsersOptions {
        max_page_size: Some(1001),
        ..ListUsersOptions::default()
    };
    let e = client
        .list_users(options)
        .try_collect::<Vec<_>>()
        .await
        .expect_err("out of range");
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(matches!(&e, Error::Service { .. }), "{e:?}");
}

#[tokio::test]
async fn a_next_link_to_another_server_is_not_followed() {
    let page = r#"{"value":[{"id":"8:acs:5b0a7d4e-1c2f-4a3b-9d8e-7f6a5b4c3d2e_0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"}],"nextLink":"https://elsewhere.example/identities?api-version=2025-03-02-preview"}"#;
    let canned = CannedServer::start(vec![response(200, &[], page)]).await;
    let client = canned.client(RetryPolicy::none(), Duration::from_secs(5));
    let mut users = std::pin::pin!(client.list_users(ListUsersOptions::default()));
    let first = users.try_next().await.expect("first page").expect("a user");
    assert!(first.user.raw_id().starts_with("8:acs:"));
    let e = users.try_next().await.expect_err("not followed");
    assert!(matches!(e, Error::UnexpectedResponse { .. }), "{e:?}");
    assert_eq!(canned.requests().len(), 1);
    let target = &canned.requests()[0].target;
    assert!(
        target.starts_with("/identities?api-version=2025-03-02-preview"),
        "{target}"
    );
}

/// A server whose pages do not move forward (a page naming itself, or ids that go back) ends
/// the listing with an error instead of making the client request for ever.
#[tokio::test]
async fn a_listing_that_does_not_move_forward_ends_with_an_error() {
    let id = |n: u32| {
        format!("8:acs:5b0a7d4e-1c2f-4a3b-9d8e-7f6a5b4c3d2e_0a1b2c3d-4e5f-4a6b-8c7d-{n:012}")
    };
    let link = "identities?api-version=2025-03-02-preview&continuationToken=same";
    let same = format!(r#"{{"value":[{{"id":"{}"}}],"nextLink":"{link}"}}"#, id(2));
    let canned = CannedServer::start(vec![
        response(200, &[], &same),
        response(200, &[], &same),
        response(200, &[], &same),
    ])
    .await;
    let client = canned.client(RetryPolicy::none(), Duration::from_secs(5));
    let mut users = std::pin::pin!(client.list_users(ListUsersOptions::default()));
    users.try_next().await.expect("first page").expect("a user");
    let e = users.try_next().await.expect_err("stopped");
    assert!(matches!(e, Error::UnexpectedResponse { .. }), "{e:?}");
    assert_eq!(
        canned.requests().len(),
        2,
        "stopped at the page that names itself"
    );

    let backwards = [
        format!(r#"{{"value":[{{"id":"{}"}}],"nextLink":"{link}1"}}"#, id(5)),
        format!(r#"{{"value":[{{"id":"{}"}}],"nextLink":"{link}2"}}"#, id(3)),
    ];
    let canned = CannedServer::start(vec![
        response(200, &[], &backwards[0]),
        response(200, &[], &backwards[1]),
    ])
    .await;
    let client = canned.client(RetryPolicy::none(), Duration::from_secs(5));
    let mut users = std::pin::pin!(client.list_users(ListUsersOptions::default()));
    users.try_next().await.expect("first page").expect("a user");
    let e = users.try_next().await.expect_err("stopped");
    assert!(matches!(e, Error::UnexpectedResponse { .. }), "{e:?}");
    assert_eq!(canned.requests().len(), 2);
}
