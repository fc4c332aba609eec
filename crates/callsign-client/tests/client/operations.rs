//! Every operation against the live server.

use std::time::Duration;

use callsign_client::{AccessToken, CommunicationTokenScope as Scope, Error};
use time::OffsetDateTime;

use crate::helpers::spawn_server;

/// Asserts that `t` expires `minutes` from now (within a couple of minutes) and that the JWT's
/// `exp` agrees with `expiresOn` to the second.
#[track_caller]
fn assert_lifetime(t: &AccessToken, minutes: i64) {
    let left = t.expires_on - OffsetDateTime::now_utc();
    assert!(
        (left - time::Duration::minutes(minutes)).abs() < time::Duration::minutes(2),
        "token lives {left}, expected {minutes} min"
    );
    let from_jwt = AccessToken::from_jwt(t.token.clone()).expect("the token is a JWT with exp");
    assert_eq!(
        from_jwt.expires_on.unix_timestamp(),
        t.expires_on.unix_timestamp()
    );
}

#[tokio::test]
async fn create_user_returns_a_new_acs_id_each_time() {
    let server = spawn_server().await;
    let client = server.client();
    let a = client.create_user().await.expect("create");
    let b = client.create_user().await.expect("create");
    assert!(a.raw_id().starts_with("8:acs:"), "{a}");
    assert_ne!(a, b);
}

#[tokio::test]
async fn create_user_and_token_issues_a_token_for_every_scope_combination() {
    let server = spawn_server().await;
    let client = server.client();
    let combos: &[&[Scope]] = &[
        &[Scope::Chat],
        &[Scope::Voip],
        &[Scope::ChatJoin],
        &[Scope::ChatJoinLimited],
        &[Scope::VoipJoin],
        &[Scope::Voip, Scope::Chat],
        &[Scope::Chat, Scope::ChatJoin, Scope::ChatJoinLimited],
        &[Scope::Voip, Scope::VoipJoin],
        &[Scope::ChatJoin, Scope::VoipJoin],
    ];
    for scopes in combos {
        let (user, token) = client
            .create_user_and_token(scopes, None)
            .await
            .unwrap_or_else(|e| panic!("{scopes:?}: {e}"));
        assert!(user.raw_id().starts_with("8:acs:"));
        assert_lifetime(&token, 24 * 60);
    }
}

#[tokio::test]
async fn create_user_and_token_honours_the_expiry() {
    let server = spawn_server().await;
    let client = server.client();
    let (_, token) = client
        .create_user_and_token(&[Scope::Chat], Some(Duration::from_secs(3600)))
        .await
        .expect("create with token");
    assert_lifetime(&token, 60);
}

#[tokio::test]
async fn get_token_issues_tokens_with_the_default_minimum_and_maximum_expiry() {
    let server = spawn_server().await;
    let client = server.client();
    let user = client.create_user().await.expect("create");
    let t = client
        .get_token(&user, &[Scope::Chat, Scope::Voip], None)
        .await
        .expect("default");
    assert_lifetime(&t, 24 * 60);
    let t = client
        .get_token(
            &user,
            &[Scope::VoipJoin],
            Some(Duration::from_secs(60 * 60)),
        )
        .await
        .expect("1 h");
    assert_lifetime(&t, 60);
    // 24 h and 59 s: sent as 1440 whole minutes.
    let t = client
        .get_token(
            &user,
            &[Scope::Chat],
            Some(Duration::from_secs(1440 * 60 + 59)),
        )
        .await
        .expect("24 h");
    assert_lifetime(&t, 1440);
}

#[tokio::test]
async fn revoke_tokens_succeeds_and_tokens_can_be_issued_again() {
    let server = spawn_server().await;
    let client = server.client();
    let (user, _) = client
        .create_user_and_token(&[Scope::Voip], None)
        .await
        .expect("create");
    client.revoke_tokens(&user).await.expect("revoke");
    client.revoke_tokens(&user).await.expect("revoke twice");
    client
        .get_token(&user, &[Scope::Voip], None)
        .await
        .expect("a token after revocation");
}

#[tokio::test]
async fn delete_user_removes_the_user() {
    let server = spawn_server().await;
    let client = server.client();
    let user = client.create_user().await.expect("create");
    client.get_user(&user).await.expect("exists");
    client.delete_user(&user).await.expect("delete");
    let e = client.get_user(&user).await.expect_err("gone");
    assert_eq!(e.status(), Some(404), "{e}");
}

#[tokio::test]
async fn get_user_reports_custom_id_and_last_token_time() {
    let server = spawn_server().await;
    let client = server.client();
    let before = OffsetDateTime::now_utc() - time::Duration::seconds(2);
    let user = client
        .create_user_with_custom_id("alice@example.com")
        .await
        .expect("create");
    let details = client.get_user(&user).await.expect("get");
    assert_eq!(details.user, user);
    assert_eq!(details.custom_id.as_deref(), Some("alice@example.com"));
    assert_eq!(details.last_token_issued_at, None);

    client
        .get_token(&user, &[Scope::Chat], None)
        .await
        .expect("token");
    let details = client.get_user(&user).await.expect("get");
    let issued = details.last_token_issued_at.expect("a token was issued");
    assert!(issued >= before && issued <= OffsetDateTime::now_utc() + time::Duration::seconds(2));

    let plain = client.create_user().await.expect("create");
    assert_eq!(client.get_user(&plain).await.expect("get").custom_id, None);
}

#[tokio::test]
async fn creating_with_the_same_custom_id_returns_the_same_user() {
    let server = spawn_server().await;
    let client = server.client();
    let first = client
        .create_user_with_custom_id("sally@contoso.com")
        .await
        .expect("create");
    let again = client
        .create_user_with_custom_id("sally@contoso.com")
        .await
        .expect("create again");
    assert_eq!(first, again);
    let other = client
        .create_user_with_custom_id("bob@contoso.com")
        .await
        .expect("another custom id");
    assert_ne!(first, other);
}

#[tokio::test]
async fn a_client_from_the_plain_connection_string_fails_tls_without_the_ca() {
    // Verification stays on: the local CA is not trusted unless added.
    let server = spawn_server().await;
    let client = callsign_client::CommunicationIdentityClient::builder(
        callsign_client::ConnectionString::parse(&server.connection_string).expect("cs"),
    )
    .retry_policy(callsign_client::RetryPolicy::default())
    .build()
    .expect("client");
    let started = std::time::Instant::now();
    let e = client
        .create_user()
        .await
        .expect_err("untrusted certificate");
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "TLS failures are not retried ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_client_speaks_any_version_it_is_pointed_at() {
    use callsign_client::{ApiVersion, ConnectionString};
    let server = spawn_server().await;
    assert_eq!(callsign_client::API_VERSION, "2023-10-01");
    // Every version from 2022-10-01 on takes the same bodies (expiry, join scopes from 2023-10-01).
    for v in ApiVersion::ALL
        .into_iter()
        .filter(|v| *v >= ApiVersion::V2023_10_01)
    {
        let client = callsign_client::CommunicationIdentityClient::builder(
            ConnectionString::parse(&server.connection_string).expect("connection string"),
        )
        .api_version(v)
        .add_trusted_ca_pem(server.ca_pem.clone())
        .build()
        .expect("client");
        let (user, token) = client
            .create_user_and_token(
                &[Scope::ChatJoin, Scope::Voip],
                Some(Duration::from_secs(3600)),
            )
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_lifetime(&token, 60);
        client.revoke_tokens(&user).await.expect("revoke");
        client.delete_user(&user).await.expect("delete");
        let err = client
            .get_token(&user, &[Scope::Chat], None)
            .await
            .expect_err("deleted");
        assert!(
            matches!(err, Error::Service { status: 404, .. }),
            "{v}: {err}"
        );
    }
}
