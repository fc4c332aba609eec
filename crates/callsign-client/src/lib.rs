//! Rust client for callsign and Azure Communication Services (ACS) Identity: create users, issue
//! and revoke their access tokens, delete them.
//!
//! It speaks the ACS Identity wire protocol as the released Azure SDKs do (api-version
//! 2023-10-01, HMAC-SHA256 request signing with the resource's access key), so the same code
//! works against a callsign server and against Azure. Custom ids and reading a user back use
//! api-version 2025-03-02-preview, as do workforce access: the access assignments of a trusted
//! identity provider's principals and the exchange of their tokens
//! ([`CommunicationIdentityClient::exchange_access_token`]).
//!
//! * [`CommunicationIdentityClient`]: the operations, built from a connection string, with
//!   retries ([`RetryPolicy`]), a per-attempt timeout and extra trusted CAs (for callsign's local
//!   CA) through [`CommunicationIdentityClientBuilder`].
//! * [`CommunicationTokenCredential`]: a user's token that renews itself through your refresher.
//! * [`Error`]: the service's error code, message, target and HTTP status, or what else failed.
//! * [`quickstart`]: the ACS quickstart in Rust (run by the `issue_tokens` example).
//! * [`api`]: the wire types, re-exported from `callsign-api`.
//!
//! # Example
//!
//! Parsing a connection string and building a client does no I/O:
//!
//! ```
//! use callsign_client::{
//!     CommunicationIdentityClient, CommunicationTokenScope, ConnectionString, Error,
//! };
//!
//! let cs = "endpoint=https://127.0.0.1:8443/;accesskey=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
//! let client = CommunicationIdentityClient::from_connection_string(cs)?;
//! assert_eq!(client.endpoint().as_str(), "https://127.0.0.1:8443/");
//!
//! let scopes: Vec<CommunicationTokenScope> = ["chat", "voip.join"]
//!     .iter()
//!     .map(|s| s.parse())
//!     .collect::<Result<_, _>>()
//!     .expect("known scopes");
//! assert_eq!(scopes, [CommunicationTokenScope::Chat, CommunicationTokenScope::VoipJoin]);
//!
//! match CommunicationIdentityClient::from_connection_string("endpoint=https://127.0.0.1:8443/") {
//!     Err(Error::InvalidConnectionString(reason)) => assert!(reason.contains("accesskey")),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Error>(())
//! ```
//!
//! Talking to a server (callsign's local CA trusted alongside the platform's roots):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use callsign_client::{
//!     CommunicationIdentityClient, CommunicationTokenScope, ConnectionString, Error, ErrorCode,
//! };
//!
//! let cs = ConnectionString::parse(&std::env::var("COMMUNICATION_SERVICES_CONNECTION_STRING")?)?;
//! let client = CommunicationIdentityClient::builder(cs)
//!     .add_trusted_ca_pem(std::fs::read("callsign-data/tls/ca.pem")?)
//!     .timeout(Duration::from_secs(10))
//!     .build()?;
//!
//! let (user, token) = client
//!     .create_user_and_token(&[CommunicationTokenScope::Chat], Some(Duration::from_secs(3600)))
//!     .await?;
//! println!("{user}: token expires at {}", token.expires_on);
//!
//! client.delete_user(&user).await?;
//! match client.get_token(&user, &[CommunicationTokenScope::Chat], None).await {
//!     Err(e @ Error::Service { .. }) => {
//!         assert_eq!(e.status(), Some(404));
//!         assert_eq!(e.error_code(), Some(ErrorCode::IdentityNotFound));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod clock;
mod connection_string;
mod credential;
mod error;
mod identifier;
pub mod quickstart;
mod retry;
mod scope;
pub mod signing;
mod token;

pub use callsign_api as api;
pub use callsign_api::ErrorCode;
pub use callsign_api::{
    EntraAssignment, EntraAssignmentPage, EntraAssignmentPatch, EntraAssignmentRequest,
};
pub use client::{
    ACCESS_API_VERSION, API_VERSION, AccessAssignmentsPage, ApiVersion, CUSTOM_ID_API_VERSION,
    CommunicationIdentityClient, CommunicationIdentityClientBuilder, CommunicationUserDetails,
    DEFAULT_TIMEOUT, ListUsersOptions, PrincipalType, UnknownApiVersion, UnknownPrincipalType,
    UsersPage, access_assignment_request,
};
pub use clock::{Clock, SystemClock};
pub use connection_string::ConnectionString;
pub use credential::{
    CommunicationTokenCredential, CommunicationTokenCredentialBuilder, CredentialError,
    ON_DEMAND_REFRESH_WINDOW, PROACTIVE_REFRESH_WINDOW, PROACTIVE_RETRY_INTERVAL, RefreshError,
};
pub use error::Error;
pub use identifier::CommunicationUserIdentifier;
pub use retry::RetryPolicy;
pub use scope::{CommunicationTokenScope, UnknownScope};
pub use token::{AccessToken, MalformedToken};
