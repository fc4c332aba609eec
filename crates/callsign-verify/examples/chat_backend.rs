//! A tiny chat backend that accepts only `chat` tokens of one resource and refuses tokens of
//! revoked or deleted identities within the staleness bound.
//!
//! ```text
//! CALLSIGN_CONNECTION_STRING="endpoint=https://127.0.0.1:8443/;accesskey=<verify-only key>" \
//! CALLSIGN_RESOURCE_ID=<resource id> CALLSIGN_CA=callsign-data/tls/ca.pem \
//!   cargo run -p callsign-verify --example chat_backend
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/messages
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use callsign_client::ConnectionString;
use callsign_verify::callsign_core::ResourceId;
use callsign_verify::middleware::ChatScope;
use callsign_verify::{FollowerConfig, StalePolicy, Token, Verifier};

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow::anyhow!("set {name}"))
}

/// `GET /messages`: only for `chat` tokens.
async fn messages(token: Token<ChatScope>) -> String {
    format!(
        "hello {}, your token is good until {}\n",
        token.identity, token.expires_at
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cs = ConnectionString::parse(&var("CALLSIGN_CONNECTION_STRING")?)?;
    let resource = ResourceId::parse(&var("CALLSIGN_RESOURCE_ID")?)?;
    let mut http = reqwest::Client::builder();
    if let Ok(ca) = var("CALLSIGN_CA") {
        let certs = reqwest::Certificate::from_pem_bundle(&std::fs::read(ca)?)?;
        http = http.tls_certs_merge(certs);
    }
    let verifier = Verifier::builder(cs.endpoint().clone(), resource)
        .http_client(http.build()?)
        .follow_revocations(
            cs,
            FollowerConfig {
                stale_after: Duration::from_secs(60),
                policy: StalePolicy::FailClosed,
                ..FollowerConfig::default()
            },
        )
        .build()?;
    let app = Router::new()
        .route("/messages", get(messages))
        .layer(axum::Extension(Arc::new(verifier)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("chat backend on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
