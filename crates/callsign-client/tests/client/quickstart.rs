//! The quickstart example's logic, run against the live server.

use callsign_client::quickstart::{self, CA_FILE_VAR, CONNECTION_STRING_VAR, TITLE};
use callsign_client::{AccessToken, CommunicationUserIdentifier};

use crate::helpers::spawn_server;

#[tokio::test]
async fn the_quickstart_prints_what_the_python_one_prints() {
    let server = spawn_server().await;
    let ca = server.ca_path.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let ok = quickstart::main_with(&mut out, |name| match name {
        CONNECTION_STRING_VAR => Some(server.connection_string.clone()),
        CA_FILE_VAR => Some(ca.clone()),
        _ => None,
    })
    .await;
    let text = String::from_utf8(out).expect("utf-8");
    assert!(ok, "{text}");

    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10, "{text}");
    assert_eq!(lines[0], TITLE);
    assert_eq!(lines[1], "");
    let id = lines[2]
        .strip_prefix("Created a user with ID: ")
        .and_then(|s| s.strip_suffix(':'))
        .expect("created line");
    assert!(id.starts_with("8:acs:"), "{id}");
    assert_eq!(lines[3], "");
    let expires = lines[4]
        .strip_prefix("Issued a token with 'voip' scope that expires at ")
        .and_then(|s| s.strip_suffix(':'))
        .expect("issued line");
    let token = AccessToken::from_jwt(lines[5]).expect("the token is printed");
    assert_eq!(expires, quickstart::format_expiry(token.expires_on));
    assert_eq!(lines[6], "");
    assert_eq!(
        lines[7],
        format!("Successfully revoked all tokens for user with ID: {id}")
    );
    assert_eq!(lines[8], "");
    assert_eq!(lines[9], format!("Deleted the user with ID: {id}"));

    let e = server
        .client()
        .get_user(&CommunicationUserIdentifier::new(id))
        .await
        .expect_err("the quickstart deleted its user");
    assert_eq!(e.status(), Some(404));
}

#[tokio::test]
async fn without_the_ca_the_quickstart_reports_the_tls_failure() {
    let server = spawn_server().await;
    let mut out = Vec::new();
    let ok = quickstart::main_with(&mut out, |name| {
        (name == CONNECTION_STRING_VAR).then(|| server.connection_string.clone())
    })
    .await;
    let text = String::from_utf8(out).expect("utf-8");
    assert!(!ok);
    assert!(
        text.starts_with(&format!("{TITLE}\nException:\ntransport error: ")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}

#[tokio::test]
async fn an_unreadable_ca_file_is_reported() {
    let mut out = Vec::new();
    let ok = quickstart::main_with(&mut out, |name| match name {
        CONNECTION_STRING_VAR => {
            Some("endpoint=https://127.0.0.1:1/;accesskey=cGFzc3dvcmQ=".to_owned())
        }
        CA_FILE_VAR => Some("/nonexistent/ca.pem".to_owned()),
        _ => None,
    })
    .await;
    let text = String::from_utf8(out).expect("utf-8");
    assert!(!ok);
    assert!(
        text.contains("Exception:\ncannot read the CA certificate file /nonexistent/ca.pem"),
        "{text}"
    );
}
