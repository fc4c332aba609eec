//! The Azure Communication Services "User Access Tokens" quickstart in Rust, step for step:
//! create a user, issue it a `voip` token, revoke its tokens, delete it.
//!
//! ```sh
//! export COMMUNICATION_SERVICES_CONNECTION_STRING="$(target/release/callsign connection-string)"
//! # callsign's local CA, trusted in addition to the platform's roots (optional):
//! export SSL_CERT_FILE="$PWD/callsign-data/tls/ca.pem"
//! cargo run -p callsign-client --example issue_tokens
//! ```
//!
//! `SSL_CERT_FILE` is the standard variable for a CA bundle; when it is set the example trusts the
//! certificates in it explicitly (on Linux the system store already honours it). On failure it
//! prints `Exception:` and the error, like the Python quickstart, and exits with status 1.

use std::process::ExitCode;

use callsign_client::quickstart;

#[tokio::main]
async fn main() -> ExitCode {
    let mut out = std::io::stdout();
    if quickstart::main_with(&mut out, |name| std::env::var(name).ok()).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
