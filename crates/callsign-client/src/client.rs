//! The identity client: create and delete users, issue and revoke their tokens.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use callsign_api as api;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::snippet;
use crate::retry::is_retryable_status;
use crate::{
    AccessToken, Clock, CommunicationTokenScope, CommunicationUserIdentifier, ConnectionString,
    Error, RetryPolicy, SystemClock, signing,
};

/// The api-version of every operation except the two that need custom ids, unless
/// [`CommunicationIdentityClientBuilder::api_version`] says otherwise.
pub const API_VERSION: &str = api::CLIENT_API_VERSION;

/// The api-version of [`CommunicationIdentityClient::create_user_with_custom_id`] and
/// [`CommunicationIdentityClient::get_user`] (a preview: the real service may change it).
pub const CUSTOM_ID_API_VERSION: &str = ApiVersion::V2025_03_02Preview.as_str();

pub use access::{
    ACCESS_API_VERSION, AccessAssignmentsPage, PrincipalType, UnknownPrincipalType,
    access_assignment_request,
};
pub use api::{ApiVersion, UnknownApiVersion};
pub use list::{ListUsersOptions, UsersPage};

mod access;
mod list;

/// How long one attempt may take, unless [`CommunicationIdentityClientBuilder::timeout`] says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything but RFC 3986 unreserved characters is encoded in an id path segment, as the SDKs
/// do (`8:acs:…` → `8%3Aacs%3A…`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A client of the Communication Services Identity API, speaking api-version 2023-10-01 by
/// default (so it works against Azure Communication Services as well as callsign; see
/// [`CommunicationIdentityClientBuilder::api_version`]), HMAC-signed with the resource's access
/// key.
///
/// Cheap to clone: clones share the connection pool.
///
/// ```no_run
/// # async fn demo() -> Result<(), callsign_client::Error> {
/// use std::time::Duration;
/// use callsign_client::{CommunicationIdentityClient, CommunicationTokenScope};
///
/// let client = CommunicationIdentityClient::from_connection_string(
///     &std::env::var("COMMUNICATION_SERVICES_CONNECTION_STRING").unwrap_or_default(),
/// )?;
/// let user = client.create_user().await?;
/// let token = client
///     .get_token(&user, &[CommunicationTokenScope::Voip], Some(Duration::from_secs(3600)))
///     .await?;
/// println!("{} expires at {}", user, token.expires_on);
/// client.revoke_tokens(&user).await?;
/// client.delete_user(&user).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CommunicationIdentityClient {
    http: reqwest::Client,
    credentials: ConnectionString,
    api_version: ApiVersion,
    retry: RetryPolicy,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for CommunicationIdentityClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommunicationIdentityClient")
            .field("endpoint", &self.credentials.endpoint().as_str())
            .field("api_version", &self.api_version)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Options for a [`CommunicationIdentityClient`]: timeout, retries, extra trusted CAs, clock.
///
/// ```
/// use std::time::Duration;
/// use callsign_client::{CommunicationIdentityClient, ConnectionString, RetryPolicy};
///
/// let cs = ConnectionString::parse("endpoint=https://127.0.0.1:8443/;accesskey=cGFzc3dvcmQ=").unwrap();
/// let client = CommunicationIdentityClient::builder(cs)
///     .timeout(Duration::from_secs(5))
///     .retry_policy(RetryPolicy::default().max_retries(2))
///     .build()
///     .unwrap();
/// assert_eq!(client.endpoint().as_str(), "https://127.0.0.1:8443/");
///
/// // A CA that is not PEM is refused when building.
/// let cs = ConnectionString::parse("endpoint=https://127.0.0.1:8443/;accesskey=cGFzc3dvcmQ=").unwrap();
/// assert!(CommunicationIdentityClient::builder(cs).add_trusted_ca_pem("nonsense").build().is_err());
/// ```
pub struct CommunicationIdentityClientBuilder {
    credentials: ConnectionString,
    api_version: ApiVersion,
    retry: RetryPolicy,
    timeout: Duration,
    ca_pems: Vec<Vec<u8>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for CommunicationIdentityClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommunicationIdentityClientBuilder")
            .field("credentials", &self.credentials)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("extra_cas", &self.ca_pems.len())
            .finish_non_exhaustive()
    }
}

impl CommunicationIdentityClientBuilder {
    /// Defaults: [`RetryPolicy::default`], [`DEFAULT_TIMEOUT`], the platform's trusted roots, the
    /// system clock.
    pub fn new(credentials: ConnectionString) -> Self {
        Self {
            credentials,
            api_version: ApiVersion::CLIENT_DEFAULT,
            retry: RetryPolicy::default(),
            timeout: DEFAULT_TIMEOUT,
            ca_pems: Vec::new(),
            clock: Arc::new(SystemClock),
        }
    }

    /// How long one attempt (connect, send, read the whole response) may take before it fails
    /// with [`Error::Timeout`]. Each retry gets the full timeout again.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The api-version of create, issue, revoke and delete (default
    /// [`ApiVersion::CLIENT_DEFAULT`], 2023-10-01, which every deployment of the service knows).
    /// The request and response bodies of these operations are the same in every version from
    /// 2022-10-01 on; older ones ignore `expires_in` and the join scopes. Custom-id calls and
    /// [`CommunicationIdentityClient::get_user`] use this version when it has custom ids
    /// (2025-03-02-preview, 2025-04-01-preview), else [`CUSTOM_ID_API_VERSION`].
    /// [`build`](Self::build) refuses 2020-07-20-preview2, whose paths and status codes differ.
    pub fn api_version(mut self, version: ApiVersion) -> Self {
        self.api_version = version;
        self
    }

    /// When to retry; see [`RetryPolicy`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Trusts the CA certificate(s) in `pem` (one certificate or a bundle) *in addition to* the
    /// platform's trusted roots, e.g. callsign's local CA (`<data-dir>/tls/ca.pem`, or the output
    /// of `callsign ca-cert`). Certificate and host name verification stay on.
    ///
    /// On Linux the platform roots are the system store, which honours `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` (when `SSL_CERT_FILE` is set it *replaces* the system bundle, so adding it
    /// here as well is harmless). On a system with no trusted roots at all (no CA bundle
    /// installed), [`build`](Self::build) fails unless a CA is added here.
    pub fn add_trusted_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// The clock that dates requests (`x-ms-date`) and `Retry-After` dates are compared with.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] when an extra CA is not a PEM certificate or the TLS setup fails
    /// (for instance, no trusted root at all).
    pub fn build(self) -> Result<CommunicationIdentityClient, Error> {
        if self.api_version.is_legacy() {
            return Err(Error::Configuration(format!(
                "api-version {} has other paths and status codes; use 2021-03-07 or later",
                self.api_version
            )));
        }
        let mut certs = Vec::new();
        for pem in &self.ca_pems {
            let bundle = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::Configuration(format!("a trusted CA certificate is not PEM: {e}"))
            })?;
            if bundle.is_empty() {
                return Err(Error::Configuration(
                    "a trusted CA certificate PEM holds no certificate".to_owned(),
                ));
            }
            certs.extend(bundle);
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("callsign-client/", env!("CARGO_PKG_VERSION")));
        if !certs.is_empty() {
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| {
            Error::Configuration(format!("cannot set up HTTP/TLS: {}", error_chain(&e)))
        })?;
        Ok(CommunicationIdentityClient {
            http,
            credentials: self.credentials,
            api_version: self.api_version,
            retry: self.retry,
            timeout: self.timeout,
            clock: self.clock,
        })
    }
}

/// What [`CommunicationIdentityClient::get_user`] and the listing tell about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunicationUserDetails {
    /// The user.
    pub user: CommunicationUserIdentifier,
    /// The custom id it was created with, if any.
    pub custom_id: Option<String>,
    /// When a token was last issued for it, if ever.
    pub last_token_issued_at: Option<OffsetDateTime>,
}

/// One request, before signing.
struct Call {
    method: Method,
    path: String,
    api_version: ApiVersion,
    /// `Some` (even empty) sends these bytes, with `Content-Type: <content_type>`.
    body: Option<Vec<u8>>,
    expected: u16,
    /// Another success status the version documents (200 for an existing external id, 200 for
    /// a replaced access assignment).
    also: Option<u16>,
    /// How the request proves who sends it.
    auth: Auth,
    /// The media type of `body`.
    content_type: &'static str,
}

/// The media type of every body but a merge patch.
const JSON: &str = "application/json";

/// How a call authenticates.
enum Auth {
    /// HMAC-SHA256 with the connection string's access key (every management call).
    AccessKey,
    /// `Authorization: Bearer <token>` and nothing signed: the token exchange, whose caller is
    /// the bearer of a user's token, not the holder of the access key. The value is marked
    /// sensitive, so that HTTP stacks leave it out of their logs.
    Bearer(HeaderValue),
}

impl CommunicationIdentityClient {
    /// A client with default options for a connection string
    /// (`endpoint=https://…/;accesskey=…`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] (see [`ConnectionString::parse`]), or
    /// [`Error::Configuration`] if the TLS setup fails.
    pub fn from_connection_string(connection_string: &str) -> Result<Self, Error> {
        Self::builder(ConnectionString::parse(connection_string)?).build()
    }

    /// A builder for a client with options.
    pub fn builder(credentials: ConnectionString) -> CommunicationIdentityClientBuilder {
        CommunicationIdentityClientBuilder::new(credentials)
    }

    /// The resource endpoint, ending with `/`.
    pub fn endpoint(&self) -> &Url {
        self.credentials.endpoint()
    }

    /// Creates a user (`POST /identities`, empty body).
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn create_user(&self) -> Result<CommunicationUserIdentifier, Error> {
        let created: api::CreateIdentityResponse = self
            .call_json(Call {
                method: Method::POST,
                path: "identities".to_owned(),
                api_version: self.api_version,
                body: Some(Vec::new()),
                expected: 201,
                also: None,
                auth: Auth::AccessKey,
                content_type: JSON,
            })
            .await?;
        Ok(created.identity.id.into())
    }

    /// Creates a user with a custom id of your choosing, or returns the user already created
    /// with it: calling it twice with the same id yields the same user. Uses api-version
    /// 2025-03-02-preview.
    ///
    /// # Errors
    ///
    /// See [`Error`]; an empty or over-long custom id is a 400 `ValidationError`.
    pub async fn create_user_with_custom_id(
        &self,
        custom_id: &str,
    ) -> Result<CommunicationUserIdentifier, Error> {
        let version = self.custom_id_version();
        let mut body = api::CreateIdentityRequest::default();
        match version.custom_id_field() {
            Some(api::CustomIdField::ExternalId) => body.external_id = Some(custom_id.to_owned()),
            _ => body.custom_id = Some(custom_id.to_owned()),
        }
        let created: api::CreateIdentityResponse = self
            .call_json(Call {
                method: Method::POST,
                path: "identities".to_owned(),
                api_version: version,
                body: Some(to_json(&body)?),
                expected: 201,
                also: version.existing_identity_is_200().then_some(200),
                auth: Auth::AccessKey,
                content_type: JSON,
            })
            .await?;
        Ok(created.identity.id.into())
    }

    /// The version of the custom-id calls: the configured one if it has custom ids.
    fn custom_id_version(&self) -> ApiVersion {
        if self.api_version.has_custom_id() {
            self.api_version
        } else {
            ApiVersion::V2025_03_02Preview
        }
    }

    /// Creates a user and issues it a token in one call. `expires_in` is sent in whole minutes
    /// (rounded down, as the SDKs do); the service accepts 60 to 1440 minutes and defaults to
    /// 24 hours.
    ///
    /// # Errors
    ///
    /// See [`Error`]: 400 `ValidationError` for an expiry out of range. With no scopes the
    /// service creates the user but issues no token, which is reported as
    /// [`Error::UnexpectedResponse`] (the user then exists).
    pub async fn create_user_and_token(
        &self,
        scopes: &[CommunicationTokenScope],
        expires_in: Option<Duration>,
    ) -> Result<(CommunicationUserIdentifier, AccessToken), Error> {
        let body = api::CreateIdentityRequest {
            create_token_with_scopes: Some(scope_names(scopes)),
            expires_in_minutes: expires_in.map(minutes),
            ..Default::default()
        };
        let created: api::CreateIdentityResponse = self
            .call_json(Call {
                method: Method::POST,
                path: "identities".to_owned(),
                api_version: self.api_version,
                body: Some(to_json(&body)?),
                expected: 201,
                also: None,
                auth: Auth::AccessKey,
                content_type: JSON,
            })
            .await?;
        user_and_token(created, 201)
    }

    /// Issues a token for `user` with `scopes`, valid for `expires_in` (whole minutes, 60 to
    /// 1440; default 24 hours).
    ///
    /// # Errors
    ///
    /// See [`Error`]: 400 `ValidationError` for no scopes or an expiry out of range, 404
    /// `IdentityNotFound` for a deleted user, 401 `IdentityNotOwned` for another resource's user.
    pub async fn get_token(
        &self,
        user: &CommunicationUserIdentifier,
        scopes: &[CommunicationTokenScope],
        expires_in: Option<Duration>,
    ) -> Result<AccessToken, Error> {
        let body = api::IssueTokenRequest {
            scopes: Some(scope_names(scopes)),
            expires_in_minutes: expires_in.map(minutes),
        };
        let token: api::AccessToken = self
            .call_json(Call {
                method: Method::POST,
                path: format!("{}/:issueAccessToken", user_path(user)),
                api_version: self.api_version,
                body: Some(to_json(&body)?),
                expected: 200,
                also: None,
                auth: Auth::AccessKey,
                content_type: JSON,
            })
            .await?;
        access_token(token, 200)
    }

    /// Revokes every token issued to `user` so far. Tokens issued afterwards are valid.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn revoke_tokens(&self, user: &CommunicationUserIdentifier) -> Result<(), Error> {
        self.call(Call {
            method: Method::POST,
            path: format!("{}/:revokeAccessTokens", user_path(user)),
            api_version: self.api_version,
            body: None,
            expected: 204,
            also: None,
            auth: Auth::AccessKey,
            content_type: JSON,
        })
        .await
        .map(drop)
    }

    /// Deletes `user`, revoking its tokens and refusing any later one.
    ///
    /// # Errors
    ///
    /// See [`Error`].
    pub async fn delete_user(&self, user: &CommunicationUserIdentifier) -> Result<(), Error> {
        self.call(Call {
            method: Method::DELETE,
            path: user_path(user),
            api_version: self.api_version,
            body: None,
            expected: 204,
            also: None,
            auth: Auth::AccessKey,
            content_type: JSON,
        })
        .await
        .map(drop)
    }

    /// Reads a user back: its custom id and when it last got a token. Uses api-version
    /// 2025-03-02-preview.
    ///
    /// # Errors
    ///
    /// See [`Error`]: 404 `IdentityNotFound` for an unknown or deleted user.
    pub async fn get_user(
        &self,
        user: &CommunicationUserIdentifier,
    ) -> Result<CommunicationUserDetails, Error> {
        let identity: api::Identity = self
            .call_json(Call {
                method: Method::GET,
                path: user_path(user),
                api_version: self.custom_id_version(),
                body: None,
                expected: 200,
                also: None,
                auth: Auth::AccessKey,
                content_type: JSON,
            })
            .await?;
        user_details(identity, 200)
    }

    async fn call_json<T: DeserializeOwned>(&self, call: Call) -> Result<T, Error> {
        let url = self.url(&call)?;
        self.call_json_at(&call, url).await
    }

    /// [`Self::call_json`] to a URL of the caller's (a listing's with its query).
    async fn call_json_at<T: DeserializeOwned>(&self, call: &Call, url: Url) -> Result<T, Error> {
        self.call_json_status_at(call, url)
            .await
            .map(|(_, parsed)| parsed)
    }

    /// [`Self::call_json_at`], with the success status received (`expected` or `also`).
    async fn call_json_status_at<T: DeserializeOwned>(
        &self,
        call: &Call,
        url: Url,
    ) -> Result<(u16, T), Error> {
        let (status, body) = self.call_status_at(call, url).await?;
        let parsed = serde_json::from_slice(&body).map_err(|e| Error::UnexpectedResponse {
            status,
            detail: format!("the body does not match the API ({e}): {}", snippet(&body)),
        })?;
        Ok((status, parsed))
    }

    /// `<endpoint><path>?api-version=<version>`.
    fn url(&self, call: &Call) -> Result<Url, Error> {
        Url::parse(&format!(
            "{}{}?api-version={}",
            self.credentials.endpoint(),
            call.path,
            call.api_version
        ))
        .map_err(|e| Error::Configuration(format!("cannot build the request URL: {e}")))
    }

    /// Sends a call, retrying as the policy says; returns the body of the expected success.
    async fn call(&self, call: Call) -> Result<Vec<u8>, Error> {
        let url = self.url(&call)?;
        self.call_at(&call, url).await
    }

    /// [`Self::call`] to `url`.
    async fn call_at(&self, call: &Call, url: Url) -> Result<Vec<u8>, Error> {
        self.call_status_at(call, url).await.map(|(_, body)| body)
    }

    /// [`Self::call_at`], with the success status received (`expected` or `also`).
    async fn call_status_at(&self, call: &Call, url: Url) -> Result<(u16, Vec<u8>), Error> {
        let mut retry = 0;
        loop {
            let can_retry = retry < self.retry.get_max_retries();
            let delay = match self.attempt(call, &url).await {
                Ok((status, _, body)) if status == call.expected || Some(status) == call.also => {
                    return Ok((status, body));
                }
                Ok((status, headers, _)) if can_retry && is_retryable_status(status) => {
                    tracing::debug!(status, retry, %url, "retrying after a transient status");
                    self.retry
                        .retry_after(&headers, self.clock.now())
                        .unwrap_or_else(|| self.retry.backoff(retry))
                }
                Ok((status, _, _)) if (200..300).contains(&status) => {
                    return Err(Error::UnexpectedResponse {
                        status,
                        detail: format!("expected HTTP {}", call.expected),
                    });
                }
                Ok((status, _, body)) => return Err(Error::from_response(status, &body)),
                Err(Error::Transport(e)) if can_retry && is_retryable_transport(&e) => {
                    tracing::debug!(error = %error_chain(&e), retry, %url, "retrying after a connection failure");
                    self.retry.backoff(retry)
                }
                Err(e) => return Err(e),
            };
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    /// One attempt (signed, or with the call's bearer token), bounded by the timeout.
    async fn attempt(&self, call: &Call, url: &Url) -> Result<(u16, HeaderMap, Vec<u8>), Error> {
        let body = call.body.as_deref().unwrap_or_default();
        let mut request = self
            .http
            .request(call.method.clone(), url.clone())
            .header(ACCEPT, "application/json");
        request = match &call.auth {
            Auth::AccessKey => {
                let signed = signing::sign(
                    &self.credentials,
                    call.method.as_str(),
                    url,
                    body,
                    SystemTime::from(self.clock.now()),
                );
                request
                    .header("x-ms-date", signed.date)
                    .header("x-ms-content-sha256", signed.content_hash)
                    .header(AUTHORIZATION, signed.authorization)
            }
            Auth::Bearer(value) => request.header(AUTHORIZATION, value.clone()),
        };
        if call.body.is_some() {
            request = request
                .header(CONTENT_TYPE, call.content_type)
                .body(body.to_vec());
        }
        let exchange = async {
            let response = request.send().await.map_err(transport)?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.map_err(transport)?;
            Ok((status, headers, bytes.to_vec()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }
}

fn transport(e: reqwest::Error) -> Error {
    Error::Transport(e)
}

/// A connection that could not be made, for a reason that may pass: nothing was sent. TLS
/// failures (an untrusted certificate, say) will not pass and are not retried.
fn is_retryable_transport(e: &reqwest::Error) -> bool {
    e.is_connect() && !is_tls_failure(e)
}

/// Whether an `InvalidData` I/O error, which is how TLS failures surface, is among the causes.
/// `io::Error::source` skips the error it wraps, so wrapped errors are visited explicitly.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::InvalidData {
            return true;
        }
        if let Some(inner) = io.get_ref()
            && is_tls_failure(inner)
        {
            return true;
        }
    }
    e.source().is_some_and(is_tls_failure)
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn user_path(user: &CommunicationUserIdentifier) -> String {
    format!("identities/{}", utf8_percent_encode(user.raw_id(), SEGMENT))
}

fn scope_names(scopes: &[CommunicationTokenScope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

/// Whole minutes, rounded down, as the Python SDK sends them.
fn minutes(d: Duration) -> i64 {
    i64::try_from(d.as_secs() / 60).unwrap_or(i64::MAX)
}

fn to_json(body: &impl serde::Serialize) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(body)
        .map_err(|e| Error::Configuration(format!("cannot serialize the request body: {e}")))
}

fn parse_date(s: &str, status: u16, field: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| Error::UnexpectedResponse {
        status,
        detail: format!("`{field}` is not an ISO 8601 date-time ({e}): {s}"),
    })
}

/// A wire identity, as `GET /identities/{id}` and the listing answer it.
fn user_details(identity: api::Identity, status: u16) -> Result<CommunicationUserDetails, Error> {
    let last_token_issued_at = identity
        .last_token_issued_at
        .as_deref()
        .map(|t| parse_date(t, status, "lastTokenIssuedAt"))
        .transpose()?;
    Ok(CommunicationUserDetails {
        user: identity.id.into(),
        custom_id: identity.custom_id.or(identity.external_id),
        last_token_issued_at,
    })
}

/// The identity and the token of a create or exchange answered with `status`; an answer
/// without a token is unexpected.
pub(crate) fn user_and_token(
    answer: api::CreateIdentityResponse,
    status: u16,
) -> Result<(CommunicationUserIdentifier, AccessToken), Error> {
    let token = answer
        .access_token
        .ok_or_else(|| Error::UnexpectedResponse {
            status,
            detail: "the response has no accessToken".to_owned(),
        })?;
    Ok((answer.identity.id.into(), access_token(token, status)?))
}

fn access_token(wire: api::AccessToken, status: u16) -> Result<AccessToken, Error> {
    Ok(AccessToken {
        expires_on: parse_date(&wire.expires_on, status, "expiresOn")?,
        token: wire.token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_like_the_sdks() {
        assert_eq!(
            user_path(&CommunicationUserIdentifier::new("8:acs:r-1_u.2~x")),
            "identities/8%3Aacs%3Ar-1_u.2~x"
        );
        assert_eq!(
            user_path(&CommunicationUserIdentifier::new("a/b?c d")),
            "identities/a%2Fb%3Fc%20d"
        );
    }

    #[test]
    fn expiry_is_sent_in_whole_minutes_rounded_down() {
        assert_eq!(minutes(Duration::from_secs(3600)), 60);
        assert_eq!(minutes(Duration::from_secs(59 * 60 + 59)), 59);
        assert_eq!(
            minutes(Duration::MAX),
            i64::try_from(u64::MAX / 60).unwrap_or(i64::MAX)
        );
    }

    #[test]
    fn service_dates_with_seven_fraction_digits_parse() {
        let t = parse_date("2023-06-28T07:30:11.8919724+00:00", 200, "expiresOn").expect("parses");
        assert_eq!(t.unix_timestamp(), 1_687_937_411);
        assert_eq!(t.nanosecond(), 891_972_400);
        assert!(parse_date("2023-06-28T07:30:11+00:00", 200, "expiresOn").is_ok());
        assert!(parse_date("tomorrow", 200, "expiresOn").is_err());
    }
}
