//! Every error path against the live server: status, code, message and target arrive typed.

use std::time::Duration;

use callsign_client::{CommunicationTokenScope as Scope, CommunicationUserIdentifier, Error};

use crate::helpers::{FOREIGN_ID, OTHER_KEY, spawn_server};

#[track_caller]
fn assert_service(e: &Error, status: u16, code: &str, message: &str, target: Option<&str>) {
    assert!(matches!(e, Error::Service { .. }), "{e:?}");
    assert_eq!(e.status(), Some(status), "{e}");
    assert_eq!(e.code(), Some(code), "{e}");
    assert_eq!(e.service_message(), Some(message), "{e}");
    assert_eq!(e.target(), target, "{e}");
}

#[tokio::test]
async fn operations_on_a_deleted_user_fail_with_404_identity_not_found() {
    let server = spawn_server().await;
    let client = server.client();
    let user = client.create_user().await.expect("create");
    client.delete_user(&user).await.expect("delete");

    let msg = "Identity not found.";
    let e = client
        .get_token(&user, &[Scope::Chat], None)
        .await
        .expect_err("token");
    assert_service(&e, 404, "IdentityNotFound", msg, None);
    let e = client.revoke_tokens(&user).await.expect_err("revoke");
    assert_service(&e, 404, "IdentityNotFound", msg, None);
    let e = client.delete_user(&user).await.expect_err("delete again");
    assert_service(&e, 404, "IdentityNotFound", msg, None);
    let e = client.get_user(&user).await.expect_err("get");
    assert_service(&e, 404, "IdentityNotFound", msg, None);
    assert_eq!(
        e.to_string(),
        "(IdentityNotFound) Identity not found. [HTTP 404]"
    );
}

#[tokio::test]
async fn another_resources_user_is_refused_with_401_identity_not_owned() {
    let server = spawn_server().await;
    let client = server.client();
    let foreign = CommunicationUserIdentifier::new(FOREIGN_ID);
    let msg = "Provided identity doesn't belong to the resource.";
    let e = client
        .get_token(&foreign, &[Scope::Chat], None)
        .await
        .expect_err("token");
    assert_service(&e, 401, "IdentityNotOwned", msg, None);
    let e = client.revoke_tokens(&foreign).await.expect_err("revoke");
    assert_service(&e, 401, "IdentityNotOwned", msg, None);
    let e = client.delete_user(&foreign).await.expect_err("delete");
    assert_service(&e, 401, "IdentityNotOwned", msg, None);
}

#[tokio::test]
async fn a_wrong_access_key_is_refused_with_401_denied() {
    let server = spawn_server().await;
    let client = server.client_with_key(OTHER_KEY);
    let e = client.create_user().await.expect_err("wrong key");
    assert!(matches!(e, Error::Service { .. }), "{e:?}");
    assert_eq!(e.status(), Some(401));
    assert_eq!(e.code(), Some("Denied"));
    let message = e.service_message().expect("message");
    assert!(
        message.starts_with("Denied by the resource provider"),
        "{message}"
    );
}

#[tokio::test]
async fn an_expiry_out_of_range_is_refused_with_400_validation_error() {
    let server = spawn_server().await;
    let client = server.client();
    let user = client.create_user().await.expect("create");
    let e = client
        .get_token(&user, &[Scope::Chat], Some(Duration::from_secs(59 * 60)))
        .await
        .expect_err("59 minutes");
    assert_service(
        &e,
        400,
        "ValidationError",
        "ExpiresInMinutes value 59 is invalid. Value must be within the [60, 1440] interval.",
        Some("ExpiresInMinutes"),
    );
    let e = client
        .create_user_and_token(&[Scope::Voip], Some(Duration::from_secs(1441 * 60)))
        .await
        .expect_err("1441 minutes");
    assert_service(
        &e,
        400,
        "ValidationError",
        "ExpiresInMinutes value 1441 is invalid. Value must be within the [60, 1440] interval.",
        Some("ExpiresInMinutes"),
    );
}

#[tokio::test]
async fn no_scopes_is_refused_with_400_validation_error() {
    let server = spawn_server().await;
    let client = server.client();
    let user = client.create_user().await.expect("create");
    let e = client
        .get_token(&user, &[], None)
        .await
        .expect_err("no scopes");
    assert_service(
        &e,
        400,
        "ValidationError",
        "Invalid scopes - Scopes field is required.",
        Some("scopes"),
    );
}

#[tokio::test]
async fn create_user_and_token_without_scopes_reports_the_missing_token() {
    // The service creates the user but issues no token, as the real one does.
    let server = spawn_server().await;
    let client = server.client();
    let e = client
        .create_user_and_token(&[], None)
        .await
        .expect_err("no token");
    assert!(
        matches!(e, Error::UnexpectedResponse { status: 201, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_empty_custom_id_is_refused_with_400_validation_error() {
    let server = spawn_server().await;
    let e = server
        .client()
        .create_user_with_custom_id("")
        .await
        .expect_err("empty custom id");
    assert_eq!(e.status(), Some(400), "{e}");
    assert_eq!(e.code(), Some("ValidationError"));
    assert_eq!(e.target(), Some("customId"));
}

#[test]
fn a_bad_connection_string_is_a_typed_error() {
    for bad in [
        "",
        "endpoint=https://127.0.0.1:8443/",
        "accesskey=cGFzc3dvcmQ=",
        "endpoint=https://127.0.0.1:8443/;accesskey=***",
        "https://127.0.0.1:8443/",
    ] {
        let e = callsign_client::CommunicationIdentityClient::from_connection_string(bad)
            .expect_err(bad);
        assert!(
            matches!(e, Error::InvalidConnectionString(_)),
            "{bad}: {e:?}"
        );
        assert!(e.to_string().starts_with("invalid connection string: "));
    }
}
