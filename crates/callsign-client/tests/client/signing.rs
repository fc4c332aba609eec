//! Request signing: the protocol notes' worked vectors, what goes on the wire, and a
//! cross-check with the released Python SDK's own signing policy.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use callsign_client::signing::sign;
use callsign_client::{
    CommunicationIdentityClient, CommunicationTokenScope as Scope, CommunicationUserIdentifier,
    ConnectionString, RetryPolicy,
};
use callsign_hmac::{AccessKeyMac, content_hash, string_to_sign};
use time::macros::datetime;

use crate::helpers::{CannedServer, Captured, OTHER_KEY, response};

const WORKED_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const WORKED_HOST: &str = "https://myres.communication.azure.com/";
/// Mon, 01 Jan 2024 00:00:00 GMT.
fn worked_date() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
}

fn worked_credentials() -> ConnectionString {
    ConnectionString::from_parts(WORKED_HOST, WORKED_KEY).expect("cs")
}

#[test]
fn worked_example_a_create_user_signs_to_the_published_signature() {
    let cs = worked_credentials();
    let url = cs
        .endpoint()
        .join("identities?api-version=2023-10-01")
        .expect("url");
    let signed = sign(&cs, "POST", &url, b"", worked_date());
    assert_eq!(signed.date, "Mon, 01 Jan 2024 00:00:00 GMT");
    assert_eq!(
        signed.content_hash,
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
    assert_eq!(
        signed.authorization,
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=8wglOM4Sf2wv5qYnvZukZTgIzroR0SBEkmVvn2w+CY8="
    );
}

#[test]
fn worked_example_b_issue_token_signs_to_the_published_signature() {
    let cs = worked_credentials();
    let url = reqwest::Url::parse("https://myres.communication.azure.com/identities/8%3Aacs%3A00000000-1111-2222-3333-444444444444_00000005-14a2-493b-8a72-5a3a0d000081/:issueAccessToken?api-version=2023-10-01").expect("url");
    let signed = sign(
        &cs,
        "POST",
        &url,
        br#"{"scopes": ["chat"], "expiresInMinutes": 60}"#,
        worked_date(),
    );
    assert!(
        signed
            .authorization
            .ends_with("&Signature=3IV5ywe2EkFIBTsmAhmJcvhV/4UbG4cL5Ex3GjnyDrI="),
        "{}",
        signed.authorization
    );
}

/// Every operation, as the client puts it on the wire (the canned server refuses them all).
async fn capture_every_operation() -> Vec<Captured> {
    let server = CannedServer::start(vec![response(
        400,
        &[],
        r#"{"error":{"code":"Canned","message":"refused"}}"#,
    )])
    .await;
    let fixed = || datetime!(2024-01-01 00:00 UTC);
    let client = CommunicationIdentityClient::builder(
        ConnectionString::from_parts(&server.endpoint(), OTHER_KEY).expect("cs"),
    )
    .retry_policy(RetryPolicy::none())
    .clock(Arc::new(fixed))
    .build()
    .expect("client");
    let user = CommunicationUserIdentifier::new(
        "8:acs:00000000-1111-2222-3333-444444444444_00000005-14a2-493b-8a72-5a3a0d000081",
    );
    let hour = Some(Duration::from_secs(3600));
    let _ = client.create_user().await;
    let _ = client.create_user_with_custom_id("sally@contoso.com").await;
    let _ = client
        .create_user_and_token(&[Scope::Chat, Scope::VoipJoin], hour)
        .await;
    let _ = client
        .get_token(&user, &[Scope::ChatJoinLimited], hour)
        .await;
    let _ = client.get_token(&user, &[Scope::Voip], None).await;
    let _ = client.revoke_tokens(&user).await;
    let _ = client.delete_user(&user).await;
    let _ = client.get_user(&user).await;
    let requests = server.requests();
    assert_eq!(requests.len(), 8);
    requests
}

#[tokio::test]
async fn requests_are_signed_over_exactly_what_is_sent() {
    let requests = capture_every_operation().await;
    let targets: Vec<&str> = requests.iter().map(|r| r.target.as_str()).collect();
    let id = "8%3Aacs%3A00000000-1111-2222-3333-444444444444_00000005-14a2-493b-8a72-5a3a0d000081";
    assert_eq!(
        targets,
        [
            "/identities?api-version=2023-10-01".to_owned(),
            "/identities?api-version=2025-03-02-preview".to_owned(),
            "/identities?api-version=2023-10-01".to_owned(),
            format!("/identities/{id}/:issueAccessToken?api-version=2023-10-01"),
            format!("/identities/{id}/:issueAccessToken?api-version=2023-10-01"),
            format!("/identities/{id}/:revokeAccessTokens?api-version=2023-10-01"),
            format!("/identities/{id}?api-version=2023-10-01"),
            format!("/identities/{id}?api-version=2025-03-02-preview"),
        ]
    );
    let bodies: Vec<String> = requests
        .iter()
        .map(|r| String::from_utf8(r.body.clone()).expect("utf-8"))
        .collect();
    assert_eq!(
        bodies,
        [
            "",
            r#"{"customId":"sally@contoso.com"}"#,
            r#"{"createTokenWithScopes":["chat","voip.join"],"expiresInMinutes":60}"#,
            r#"{"scopes":["chat.join.limited"],"expiresInMinutes":60}"#,
            r#"{"scopes":["voip"]}"#,
            "",
            "",
            "",
        ]
    );
    let methods: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "POST", "POST", "POST", "POST", "POST", "POST", "DELETE", "GET"
        ]
    );

    let key = AccessKeyMac::from_base64(OTHER_KEY).expect("key");
    for r in &requests {
        let date = r.header("x-ms-date").expect("x-ms-date");
        assert_eq!(
            date, "Mon, 01 Jan 2024 00:00:00 GMT",
            "dated by the injected clock"
        );
        let host = r.header("host").expect("host");
        let hash = content_hash(&r.body);
        assert_eq!(r.header("x-ms-content-sha256"), Some(hash.as_str()));
        let sts = string_to_sign(&r.method, &r.target, &[date, host, &hash]);
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
        // Bodies (even the empty one of create) are JSON; requests without a body say nothing.
        let has_body = r.method == "POST" && !r.target.contains(":revokeAccessTokens");
        assert_eq!(
            r.header("content-type"),
            has_body.then_some("application/json"),
            "{} {}",
            r.method,
            r.target
        );
        assert_eq!(r.header("accept"), Some("application/json"));
    }
}

const PYTHON_SIGNER: &str = r#"
import json, sys
from azure.core.pipeline import PipelineRequest, PipelineContext
from azure.core.pipeline.transport import HttpRequest
import azure.communication.identity._shared.policy as policy_module

out = []
for case in json.load(sys.stdin):
    policy_module.get_current_utc_time = lambda date=case["date"]: date
    policy = policy_module.HMACCredentialsPolicy(case["endpoint"], case["key"])
    request = HttpRequest(case["method"], case["url"])
    request.body = case["body"]
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    out.append(request.headers["Authorization"])
json.dump(out, sys.stdout)
"#;

/// What `HMACCredentialsPolicy` of azure-communication-identity signs for each case.
fn python_signatures(python: &str, cases: &serde_json::Value) -> Vec<String> {
    let mut child = Command::new(python)
        .args(["-c", PYTHON_SIGNER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(cases.to_string().as_bytes())
        .expect("write cases");
    let output = child.wait_with_output().expect("python runs");
    assert!(
        output.status.success(),
        "the Python signer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON list of Authorization values")
}

#[tokio::test]
async fn signatures_match_the_released_python_sdk() {
    let Some(python) = std::env::var("CALLSIGN_SDK_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        assert!(
            std::env::var("CALLSIGN_REQUIRE_SDK").as_deref() != Ok("1"),
            "CALLSIGN_REQUIRE_SDK=1 but CALLSIGN_SDK_PYTHON (a python with azure-communication-identity==1.5.0) is not set"
        );
        eprintln!(
            "notice: CALLSIGN_SDK_PYTHON is not set; skipping the cross-check with the Python SDK's signing"
        );
        return;
    };

    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for r in capture_every_operation().await {
        let host = r.header("host").expect("host");
        cases.push(serde_json::json!({
            "endpoint": format!("http://{host}"),
            "key": OTHER_KEY,
            "date": r.header("x-ms-date").expect("date"),
            "method": r.method,
            "url": format!("http://{host}{}", r.target),
            "body": String::from_utf8(r.body.clone()).expect("utf-8"),
        }));
        ours.push(r.header("authorization").expect("authorization").to_owned());
    }
    // The worked examples, on an https endpoint with the default port.
    let cs = worked_credentials();
    for (target, body) in [
        ("identities?api-version=2023-10-01", ""),
        (
            "identities/8%3Aacs%3A00000000-1111-2222-3333-444444444444_00000005-14a2-493b-8a72-5a3a0d000081/:issueAccessToken?api-version=2023-10-01",
            r#"{"scopes": ["chat"], "expiresInMinutes": 60}"#,
        ),
    ] {
        let url = cs.endpoint().join(target).expect("url");
        cases.push(serde_json::json!({
            "endpoint": "https://myres.communication.azure.com",
            "key": WORKED_KEY,
            "date": "Mon, 01 Jan 2024 00:00:00 GMT",
            "method": "POST",
            "url": url.as_str(),
            "body": body,
        }));
        ours.push(sign(&cs, "POST", &url, body.as_bytes(), worked_date()).authorization);
    }

    let theirs = python_signatures(&python, &serde_json::Value::Array(cases));
    assert_eq!(ours, theirs);
    assert!(theirs[theirs.len() - 2].ends_with("8wglOM4Sf2wv5qYnvZukZTgIzroR0SBEkmVvn2w+CY8="));
}
