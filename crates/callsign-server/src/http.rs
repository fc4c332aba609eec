//! The request pipeline: route, version, body, authentication, then one handler per operation.
//!
//! Routing is done by hand rather than with a path-template router because ACS paths put
//! `:`-prefixed verbs after an id that arrives percent-encoded from some SDKs and raw from others
//! (`/identities/8%3Aacs%3A…/:issueAccessToken` and `/identities/8:acs:…/:issueAccessToken`), and
//! because every wrong method or path must still answer with the ACS error body.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use callsign_store::KeySlot;

use crate::auth::Authenticated;
use crate::connection::ClientAddr;
use crate::error::ApiError;
use crate::metrics::RequestKind;
use crate::state::{AppState, Directory};
use crate::throttle::OperationClass;
use crate::version::{self, ApiVersion, Operation};
use crate::{bearer, entra, feed, identities, meta, teams};
use callsign_store::Actor;

/// The whole HTTP surface.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// The text of a panic payload, for the log.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text panic payload")
}

/// Runs a request's handling; a bug that panics in it becomes an opaque 500 on this request,
/// logged with the request id and the panic, rather than a dropped connection.
async fn catching_panics(
    request_id: uuid::Uuid,
    handling: impl Future<Output = (RequestKind, Result<Response, ApiError>)>,
) -> (RequestKind, Result<Response, ApiError>) {
    match AssertUnwindSafe(handling).catch_unwind().await {
        Ok(handled) => handled,
        Err(payload) => {
            let panic = panic_message(payload.as_ref());
            tracing::error!(id = %request_id, panic, "a request handler panicked");
            let cause = anyhow::anyhow!("the handler panicked: {panic}");
            (
                RequestKind::unversioned("panicked"),
                Err(ApiError::Internal(cause)),
            )
        }
    }
}

/// A JSON response with the content type the real service sends.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "response serialization failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// An operation, decided from method and path alone.
///
/// Every route is described in the OpenAPI document (`crates/callsign-server/openapi.json`,
/// served at `GET /openapi.json`); a new route needs its arm in [`Route::template`], a sample
/// in `Route::every` (tests) and its operation in the document, or the drift test in
/// `openapi.rs` fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Health,
    Ready,
    Jwks,
    OpenApi,
    Create,
    List,
    Get(String),
    Delete(String),
    LegacyRevoke(String),
    LegacyIssue(String),
    Issue(String),
    Revoke(String),
    TeamsExchange,
    TeamsExtensionExchange,
    AssignmentGet(String, String),
    AssignmentPut(String, String),
    AssignmentDelete(String, String),
    EntraExchange,
    AccessList,
    AccessPatch,
    AccessGet(String),
    AccessPut(String),
    AccessDelete(String),
    Introspect,
    Revocations,
    RevocationSnapshot,
}

impl Route {
    /// Maps method and path to an operation: 404 for an unknown path, 405 for a known path with
    /// another method.
    pub(crate) fn parse(method: &Method, path: &str) -> Result<Route, ApiError> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let only = |want, route, allow| only(method, want, route, allow);
        match segments.as_slice() {
            ["health"] => only(Method::GET, Route::Health, "GET"),
            ["ready"] => only(Method::GET, Route::Ready, "GET"),
            [".well-known", "jwks.json"] => only(Method::GET, Route::Jwks, "GET"),
            ["openapi.json"] => only(Method::GET, Route::OpenApi, "GET"),
            ["identities"] => match *method {
                Method::POST => Ok(Route::Create),
                Method::GET => Ok(Route::List),
                _ => Err(ApiError::MethodNotAllowed("GET, POST")),
            },
            ["identities", id] if !id.is_empty() => {
                let id = decode_segment(id)?;
                match *method {
                    Method::GET => Ok(Route::Get(id)),
                    Method::DELETE => Ok(Route::Delete(id)),
                    Method::PATCH => Ok(Route::LegacyRevoke(id)),
                    _ => Err(ApiError::MethodNotAllowed("GET, DELETE, PATCH")),
                }
            }
            ["identities", id, verb] if !id.is_empty() => {
                let route = match *verb {
                    ":issueAccessToken" => Route::Issue(decode_segment(id)?),
                    ":revokeAccessTokens" => Route::Revoke(decode_segment(id)?),
                    "token" => Route::LegacyIssue(decode_segment(id)?),
                    _ => return Err(ApiError::NotFound),
                };
                only(Method::POST, route, "POST")
            }
            ["teamsUser", ":exchangeAccessToken"] => {
                only(Method::POST, Route::TeamsExchange, "POST")
            }
            ["access", rest @ ..] => Self::parse_access(method, rest),
            ["tokens", ":introspect"] => only(Method::POST, Route::Introspect, "POST"),
            ["revocations"] => only(Method::GET, Route::Revocations, "GET"),
            ["revocations", "snapshot"] => only(Method::GET, Route::RevocationSnapshot, "GET"),
            _ => Err(ApiError::NotFound),
        }
    }

    /// The routes under `/access/`: the Teams extension's and the Entra (trusted issuer) ones.
    fn parse_access(method: &Method, segments: &[&str]) -> Result<Route, ApiError> {
        let only = |want, route, allow| only(method, want, route, allow);
        let get_put_delete = |get: Route, put: Route, delete: Route| match *method {
            Method::GET => Ok(get),
            Method::PUT => Ok(put),
            Method::DELETE => Ok(delete),
            _ => Err(ApiError::MethodNotAllowed("GET, PUT, DELETE")),
        };
        match segments {
            ["teamsExtension", ":exchangeAccessToken"] => {
                only(Method::POST, Route::TeamsExtensionExchange, "POST")
            }
            ["teamsExtension", "tenants", tenant, "assignments", object]
                if !tenant.is_empty() && !object.is_empty() =>
            {
                let (t, o) = (
                    decode_named(tenant, "tenantId")?,
                    decode_named(object, "objectId")?,
                );
                get_put_delete(
                    Route::AssignmentGet(t.clone(), o.clone()),
                    Route::AssignmentPut(t.clone(), o.clone()),
                    Route::AssignmentDelete(t, o),
                )
            }
            ["entra", ":exchangeAccessToken"] => only(Method::POST, Route::EntraExchange, "POST"),
            ["entra", "assignments"] => match *method {
                Method::GET => Ok(Route::AccessList),
                Method::PATCH => Ok(Route::AccessPatch),
                _ => Err(ApiError::MethodNotAllowed("GET, PATCH")),
            },
            ["entra", "assignments", object] if !object.is_empty() => {
                let o = decode_named(object, "objectId")?;
                get_put_delete(
                    Route::AccessGet(o.clone()),
                    Route::AccessPut(o.clone()),
                    Route::AccessDelete(o),
                )
            }
            _ => Err(ApiError::NotFound),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Jwks => "jwks",
            Route::OpenApi => "openapi",
            Route::Create => "create",
            Route::List => "list",
            Route::Get(_) => "get",
            Route::Delete(_) => "delete",
            Route::LegacyRevoke(_) => "legacy_revoke",
            Route::LegacyIssue(_) => "legacy_issue",
            Route::Issue(_) => "issue",
            Route::Revoke(_) => "revoke",
            Route::TeamsExchange => "teams_exchange",
            Route::TeamsExtensionExchange => "teams_extension_exchange",
            Route::AssignmentGet(..) => "assignment_get",
            Route::AssignmentPut(..) => "assignment_put",
            Route::AssignmentDelete(..) => "assignment_delete",
            Route::EntraExchange => "entra_exchange",
            Route::AccessList => "access_list",
            Route::AccessPatch => "access_patch",
            Route::AccessGet(_) => "access_get",
            Route::AccessPut(_) => "access_put",
            Route::AccessDelete(_) => "access_delete",
            Route::Introspect => "introspect",
            Route::Revocations => "revocations",
            Route::RevocationSnapshot => "revocation_snapshot",
        }
    }

    /// The versioned operation this route is, `None` for callsign's unversioned additions.
    fn operation(&self) -> Option<Operation> {
        Some(match self {
            Route::Health
            | Route::Ready
            | Route::Jwks
            | Route::OpenApi
            | Route::Introspect
            | Route::Revocations
            | Route::RevocationSnapshot => return None,
            Route::Create => Operation::CreateIdentity,
            Route::List => Operation::ListIdentities,
            Route::Get(_) => Operation::GetIdentity,
            Route::Delete(_) => Operation::DeleteIdentity,
            Route::LegacyIssue(_) | Route::Issue(_) => Operation::IssueAccessToken,
            Route::LegacyRevoke(_) | Route::Revoke(_) => Operation::RevokeAccessTokens,
            Route::TeamsExchange => Operation::ExchangeTeamsUserToken,
            Route::TeamsExtensionExchange => Operation::ExchangeTeamsExtensionToken,
            Route::AssignmentGet(..) | Route::AssignmentPut(..) | Route::AssignmentDelete(..) => {
                Operation::TeamsExtensionAssignments
            }
            Route::EntraExchange => Operation::ExchangeEntraToken,
            Route::AccessList
            | Route::AccessPatch
            | Route::AccessGet(_)
            | Route::AccessPut(_)
            | Route::AccessDelete(_) => Operation::EntraAssignments,
        })
    }

    /// The throttling class, when the route has a fixed one (a create's depends on its body and
    /// is decided by its handler).
    pub(crate) fn throttle_class(&self) -> Option<OperationClass> {
        Some(match self {
            Route::Delete(_) => OperationClass::Delete,
            Route::LegacyRevoke(_) | Route::Revoke(_) => OperationClass::Revoke,
            Route::LegacyIssue(_) | Route::Issue(_) => OperationClass::Issue,
            Route::TeamsExchange | Route::TeamsExtensionExchange | Route::EntraExchange => {
                OperationClass::Exchange
            }
            Route::Introspect => OperationClass::Introspect,
            Route::List | Route::AccessList => OperationClass::List,
            _ => return None,
        })
    }

    /// Whether a resource's verify-only key may call this: verification (introspection and the
    /// revocation feed), nothing else.
    fn verify_only_may_call(&self) -> bool {
        matches!(
            self,
            Route::Introspect | Route::Revocations | Route::RevocationSnapshot
        )
    }

    /// Whether a bearer token is the request's whole credential (a user's token exchange), as
    /// opposed to a management call a bearer may make in place of a signature.
    pub(crate) fn is_exchange(&self) -> bool {
        matches!(self, Route::EntraExchange | Route::TeamsExtensionExchange)
    }

    /// The role a bearer token needs to call this: the narrower tokens role for what a
    /// token-minting backend does, the admin role for everything else.
    pub(crate) fn bearer_role<'a>(&self, issuer: &'a crate::oidc::TrustedIssuer) -> &'a str {
        match self {
            Route::Create
            | Route::Get(_)
            | Route::Issue(_)
            | Route::LegacyIssue(_)
            | Route::Revoke(_)
            | Route::LegacyRevoke(_) => &issuer.tokens_role,
            _ => &issuer.admin_role,
        }
    }

    /// Whether the operation exists in `version` (the 2020 preview has its own paths for issue
    /// and revoke).
    pub(crate) fn available_in(&self, version: ApiVersion) -> bool {
        let path_fits = match self {
            Route::LegacyRevoke(_) | Route::LegacyIssue(_) => version.is_legacy(),
            Route::Issue(_) | Route::Revoke(_) => !version.is_legacy(),
            _ => true,
        };
        path_fits && self.operation().is_none_or(|op| version.offers(op))
    }

    /// The method and the path template under which the OpenAPI document describes this route.
    #[cfg(test)]
    pub(crate) fn template(&self) -> (Method, &'static str) {
        match self {
            Route::Health => (Method::GET, "/health"),
            Route::Ready => (Method::GET, "/ready"),
            Route::Jwks => (Method::GET, "/.well-known/jwks.json"),
            Route::OpenApi => (Method::GET, "/openapi.json"),
            Route::Create => (Method::POST, "/identities"),
            Route::List => (Method::GET, "/identities"),
            Route::Get(_) => (Method::GET, "/identities/{id}"),
            Route::Delete(_) => (Method::DELETE, "/identities/{id}"),
            Route::LegacyRevoke(_) => (Method::PATCH, "/identities/{id}"),
            Route::LegacyIssue(_) => (Method::POST, "/identities/{id}/token"),
            Route::Issue(_) => (Method::POST, "/identities/{id}/:issueAccessToken"),
            Route::Revoke(_) => (Method::POST, "/identities/{id}/:revokeAccessTokens"),
            Route::TeamsExchange => (Method::POST, "/teamsUser/:exchangeAccessToken"),
            Route::TeamsExtensionExchange => {
                (Method::POST, "/access/teamsExtension/:exchangeAccessToken")
            }
            Route::AssignmentGet(..) => (Method::GET, TEAMS_ASSIGNMENT),
            Route::AssignmentPut(..) => (Method::PUT, TEAMS_ASSIGNMENT),
            Route::AssignmentDelete(..) => (Method::DELETE, TEAMS_ASSIGNMENT),
            Route::EntraExchange => (Method::POST, "/access/entra/:exchangeAccessToken"),
            Route::AccessList => (Method::GET, "/access/entra/assignments"),
            Route::AccessPatch => (Method::PATCH, "/access/entra/assignments"),
            Route::AccessGet(_) => (Method::GET, ENTRA_ASSIGNMENT),
            Route::AccessPut(_) => (Method::PUT, ENTRA_ASSIGNMENT),
            Route::AccessDelete(_) => (Method::DELETE, ENTRA_ASSIGNMENT),
            Route::Introspect => (Method::POST, "/tokens/:introspect"),
            Route::Revocations => (Method::GET, "/revocations"),
            Route::RevocationSnapshot => (Method::GET, "/revocations/snapshot"),
        }
    }

    /// Every route once, its path parameters [`SAMPLE_ID`], [`SAMPLE_TENANT`] and
    /// [`SAMPLE_OBJECT`]. Keep it next to the enum: the OpenAPI drift test checks the document
    /// against this list, and a route missing here goes unchecked.
    #[cfg(test)]
    pub(crate) fn every() -> Vec<Route> {
        let id = || SAMPLE_ID.to_owned();
        let (tenant, object) = (|| SAMPLE_TENANT.to_owned(), || SAMPLE_OBJECT.to_owned());
        vec![
            Route::Health,
            Route::Ready,
            Route::Jwks,
            Route::OpenApi,
            Route::Create,
            Route::List,
            Route::Get(id()),
            Route::Delete(id()),
            Route::LegacyRevoke(id()),
            Route::LegacyIssue(id()),
            Route::Issue(id()),
            Route::Revoke(id()),
            Route::TeamsExchange,
            Route::TeamsExtensionExchange,
            Route::AssignmentGet(tenant(), object()),
            Route::AssignmentPut(tenant(), object()),
            Route::AssignmentDelete(tenant(), object()),
            Route::EntraExchange,
            Route::AccessList,
            Route::AccessPatch,
            Route::AccessGet(object()),
            Route::AccessPut(object()),
            Route::AccessDelete(object()),
            Route::Introspect,
            Route::Revocations,
            Route::RevocationSnapshot,
        ]
    }

    /// Whether the route is answered before any api-version or authentication check (see
    /// `handle`).
    #[cfg(test)]
    pub(crate) fn is_public(&self) -> bool {
        matches!(
            self,
            Route::Health | Route::Ready | Route::Jwks | Route::OpenApi
        )
    }
}

/// The path template of a Teams extension assignment.
#[cfg(test)]
const TEAMS_ASSIGNMENT: &str = "/access/teamsExtension/tenants/{tenantId}/assignments/{objectId}";
/// The path template of an access assignment.
#[cfg(test)]
const ENTRA_ASSIGNMENT: &str = "/access/entra/assignments/{objectId}";
/// The identity id of [`Route::every`].
#[cfg(test)]
pub(crate) const SAMPLE_ID: &str =
    "8:acs:a1b2c3d4-0000-4000-8000-000000000001_b1b2c3d4-0000-4000-8000-000000000002";
/// The tenant id of [`Route::every`].
#[cfg(test)]
pub(crate) const SAMPLE_TENANT: &str = "c1b2c3d4-0000-4000-8000-000000000003";
/// The object id of [`Route::every`].
#[cfg(test)]
pub(crate) const SAMPLE_OBJECT: &str = "d1b2c3d4-0000-4000-8000-000000000004";

/// The host a request names: its `Host` header, else the authority of an absolute target;
/// empty when it names none (it then reaches the resources of the server's own address).
pub(crate) fn request_host(parts: &axum::http::request::Parts) -> &str {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// `route` when `method` is the one it takes, else 405 naming `allow`.
fn only(
    method: &Method,
    want: Method,
    route: Route,
    allow: &'static str,
) -> Result<Route, ApiError> {
    if *method == want {
        Ok(route)
    } else {
        Err(ApiError::MethodNotAllowed(allow))
    }
}

fn decode_segment(raw: &str) -> Result<String, ApiError> {
    decode_named(raw, "id")
}

pub(crate) fn decode_named(raw: &str, target: &'static str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::validation(format!("The {target} is not valid UTF-8."), target))
}

/// The `api-supported-versions` header value, built once.
static SUPPORTED_VERSIONS: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
    HeaderValue::from_str(&ApiVersion::supported_list())
        .unwrap_or_else(|_| HeaderValue::from_static(""))
});

/// The id of a request: logged, answered as `ms-cv`, recorded with what the request changes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId(pub(crate) uuid::Uuid);

/// Every request passes here: a request id, the handler, common headers, one log line.
async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4();
    let client_request_id = req
        .headers()
        .get("x-ms-client-request-id")
        .filter(|v| v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // A refused request's body may be left unread; HTTP/1 cannot then reuse the connection, and
    // a client must be told so, or it sends its next request into a closing connection.
    let unread_body_closes = req.version() < axum::http::Version::HTTP_2
        && (req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
            || req.headers().contains_key(header::TRANSFER_ENCODING));
    let mut req = req;
    // The request id goes with the request to whatever it changes (the audit log).
    req.extensions_mut().insert(RequestId(request_id));
    let (kind, result) = catching_panics(request_id, handle(&state, req)).await;
    let route = kind.route;
    // Causes and reasons are logged here, with the request id; the body never carries them.
    let reason = match &result {
        Err(e @ ApiError::Internal(_)) => {
            tracing::warn!(id = %request_id, route, cause = %e.cause(), "request failed");
            ""
        }
        Err(e @ ApiError::Unavailable(_)) => {
            // An outage fails every request the same way: one warning a few seconds with the
            // cause and how many were refused since, the rest at debug level.
            match state.outage_log.due() {
                Some(refused) => tracing::warn!(
                    id = %request_id,
                    route,
                    cause = %e.cause(),
                    refused_since_last_warning = refused,
                    "the store is unavailable; requests answer 503"
                ),
                None => {
                    tracing::debug!(id = %request_id, route, cause = %e.cause(), "request failed")
                }
            }
            ""
        }
        Err(ApiError::Denied(reason)) => reason,
        _ => "",
    };
    let refused = result.is_err();
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let headers = response.headers_mut();
    if refused && unread_body_closes {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(v) = client_request_id {
        headers.insert("x-ms-client-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
        headers.insert("ms-cv", v);
    }
    headers.insert("api-supported-versions", SUPPORTED_VERSIONS.clone());
    let status = response.status().as_u16();
    let took = started.elapsed();
    if let Some(metrics) = &state.metrics {
        metrics.request(kind, status, took);
    }
    let micros = took.as_micros() as u64;
    // One event per request, no span: a span per request costs more than the rest of the log.
    // Under their own target: successes at debug (formatting and writing a line costs as much
    // as the rest of a token's HTTP path; they are counted in the metrics), answers of 400 and
    // above at info, a refusal with its reason.
    if status >= 400 {
        tracing::info!(target: ACCESS_LOG, id = %request_id, %method, path, route, status, micros, reason, "request handled");
    } else {
        tracing::debug!(target: ACCESS_LOG, id = %request_id, %method, path, route, status, micros, "request handled");
    }
    response
}

/// The log target of the one line per request: `RUST_LOG=info,callsign_server::access=debug`
/// logs successful requests too.
pub(crate) const ACCESS_LOG: &str = "callsign_server::access";

/// Longest request-target (path and query) served; ACS paths are a few hundred bytes at most.
pub(crate) const MAX_TARGET_BYTES: usize = 2048;

/// 414 for a long request-target, 431 for a large head: before routing or any other work.
fn check_head(parts: &axum::http::request::Parts, state: &AppState) -> Result<(), ApiError> {
    let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_TARGET_BYTES {
        return Err(ApiError::UriTooLong(MAX_TARGET_BYTES));
    }
    let limits = &state.limits;
    let too_large = || ApiError::HeadersTooLarge {
        bytes: limits.max_head_bytes,
        headers: limits.max_headers,
    };
    if parts.headers.len() > limits.max_headers {
        return Err(too_large());
    }
    let size = target
        + parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > limits.max_head_bytes {
        return Err(too_large());
    }
    Ok(())
}

/// Handles a request; returns with the outcome what it is counted under (route, api-version).
async fn handle(state: &AppState, req: Request) -> (RequestKind, Result<Response, ApiError>) {
    let unmatched = RequestKind::unversioned("unmatched");
    let (parts, body) = req.into_parts();
    if let Err(e) = check_head(&parts, state) {
        if state.console.is_some() && crate::console::owns(parts.uri.path()) {
            return (
                RequestKind::unversioned("console"),
                Ok(crate::console::refused(e)),
            );
        }
        return (unmatched, Err(e));
    }
    if let Some(console) = &state.console
        && crate::console::owns(parts.uri.path())
    {
        let response = crate::console::handle(state, console, parts, body).await;
        return (RequestKind::unversioned("console"), Ok(response));
    }
    let route = match Route::parse(&parts.method, parts.uri.path()) {
        Ok(r) => r,
        Err(e) => return (unmatched, Err(e)),
    };
    let name = route.name();
    match route {
        Route::Health => (RequestKind::unversioned(name), Ok(meta::health())),
        Route::Ready => (RequestKind::unversioned(name), meta::ready(state).await),
        Route::Jwks => (RequestKind::unversioned(name), Ok(meta::jwks(state))),
        Route::OpenApi => (RequestKind::unversioned(name), Ok(meta::openapi())),
        route => {
            let version = version::from_query(parts.uri.query());
            let kind = RequestKind::versioned(name, &version);
            let result = match version {
                Ok(version) => handle_versioned(state, route, version, parts, body).await,
                Err(e) => Err(e),
            };
            (kind, result)
        }
    }
}

/// A route of the API proper, its api-version read: authentication, then the operation.
async fn handle_versioned(
    state: &AppState,
    route: Route,
    version: ApiVersion,
    parts: axum::http::request::Parts,
    body: Body,
) -> Result<Response, ApiError> {
    if teams::is_bearer(&parts.headers) && (route.is_exchange() || state.issuers.any()) {
        // A bearer token instead of an HMAC signature: a user's token to exchange, or a trusted
        // issuer's token with a management role.
        if !route.available_in(version) {
            return Err(not_in_version(version));
        }
        return bearer::handle(state, route, version, parts, body).await;
    }
    let now = state.clock.now();
    let (auth, body) = authenticate(state, route.verify_only_may_call(), &parts, body, now).await?;
    if !route.available_in(version) {
        return Err(not_in_version(version));
    }
    check_content_type(&parts.headers, &body)?;
    let actor = Actor {
        credential: auth.credential(),
        client: parts.extensions.get::<ClientAddr>().map(|c| c.0),
        request_id: parts.extensions.get::<RequestId>().map(|r| r.0.to_string()),
        subject: None,
    };
    let dir = state.directory(&auth, actor);
    if let Some(class) = route.throttle_class() {
        dir.throttle(class)?;
    }
    match route {
        Route::Revocations => return feed::revocations(state, &dir, &parts).await,
        Route::RevocationSnapshot => {
            return feed::snapshot(state, &dir, version, parts.uri.query()).await;
        }
        _ => {}
    }
    run(state, &dir, route, version, &body, now, parts.uri.query()).await
}

/// Authenticates the head, then reads the body and checks it against the signed hash. Failures
/// count against the client's address, which is turned away before any signature work once it
/// has failed too often.
async fn authenticate(
    state: &AppState,
    verify_only_may_call: bool,
    parts: &axum::http::request::Parts,
    body: Body,
    now: time::OffsetDateTime,
) -> Result<(Authenticated, bytes::Bytes), ApiError> {
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.0);
    if let Some(ip) = client {
        state.auth_failures.check(ip)?;
    }
    let denied = |e: ApiError| {
        if let (ApiError::Denied(_), Some(ip)) = (&e, client) {
            state.auth_failures.record(ip);
        }
        e
    };
    // The head is authenticated before the body is read: an unauthenticated client never makes
    // the server buffer or hash a body.
    // Keys changed in the store and this node could not load them: it cannot tell which keys
    // are still good, so it serves nobody (fail closed) until it can.
    if state.resources.is_stale() {
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "resources changed in the store cannot be loaded"
        )));
    }
    let head = state
        .authenticator
        .authenticate_head(parts, now.into(), &state.resources.get())
        .map_err(denied)?;
    // A verify-only key is refused before its body is read.
    if head.credential() == KeySlot::VerifyOnly && !verify_only_may_call {
        return Err(ApiError::VerifyOnly);
    }
    // A body that does not arrive in time counts against the address like a failed
    // authentication: the head may be a replay, and its body was never the signed one.
    let body = read_body(
        body,
        &parts.headers,
        state.max_body_bytes,
        state.limits.body_timeout,
    )
    .await
    .inspect_err(|e| {
        if let (ApiError::RequestTimeout, Some(ip)) = (e, client) {
            state.auth_failures.record(ip);
        }
    })?;
    let auth = head.body_matches(&body).map_err(denied)?;
    Ok((auth, body))
}

/// The operation itself, on an authenticated request whose body has been read.
pub(crate) async fn run(
    state: &AppState,
    dir: &Directory<'_>,
    route: Route,
    version: ApiVersion,
    body: &[u8],
    now: time::OffsetDateTime,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    match route {
        Route::Create => identities::create(dir, version, body).await,
        Route::List => identities::list(dir, version, query).await,
        Route::Get(id) => identities::get(dir, version, &id).await,
        Route::Delete(id) => identities::delete(dir, &id).await,
        Route::LegacyRevoke(id) => identities::legacy_revoke(dir, &id, body, now).await,
        Route::LegacyIssue(id) => identities::legacy_issue(dir, &id, body).await,
        Route::Issue(id) => identities::issue(dir, version, &id, body).await,
        Route::Revoke(id) => identities::revoke(dir, &id).await,
        Route::TeamsExchange => teams::exchange_teams_user(state, dir, version, body, now).await,
        // Their credential is the user's bearer token, never a signature.
        Route::TeamsExtensionExchange | Route::EntraExchange => Err(ApiError::InvalidAccessToken),
        Route::AccessList => entra::list(dir, version, query).await,
        Route::AccessPatch => entra::patch(dir, body).await,
        Route::AccessGet(object) => entra::get(dir, &object).await,
        Route::AccessPut(object) => entra::put(dir, &object, body).await,
        Route::AccessDelete(object) => entra::delete(dir, &object).await,
        Route::AssignmentGet(tenant, object) => teams::get(dir, &tenant, &object).await,
        Route::AssignmentPut(tenant, object) => teams::put(dir, &tenant, &object, body).await,
        Route::AssignmentDelete(tenant, object) => teams::delete(dir, &tenant, &object).await,
        Route::Introspect => meta::introspect(state, dir, body).await,
        Route::Health
        | Route::Ready
        | Route::Jwks
        | Route::OpenApi
        | Route::Revocations
        | Route::RevocationSnapshot => Err(ApiError::NotFound),
    }
}

/// 400 `UnsupportedApiVersion` for an operation `version` does not offer.
pub(crate) fn not_in_version(version: ApiVersion) -> ApiError {
    ApiError::UnsupportedApiVersion(format!(
        "This operation is not available in api-version {version}."
    ))
}

/// Reads the (authenticated) request's body: at most `limit` bytes (413), all of it within
/// `timeout` (408).
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_) => Err(ApiError::RequestTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Ok(Err(_)) => Err(ApiError::validation(
            "The request body could not be read.",
            "body",
        )),
    }
}

/// Reads and discards up to 1 MiB of an oversized body for up to 2 s, so that a client that
/// writes its whole body before reading (most HTTP/1 clients) sees the 413 rather than a reset.
/// Only authenticated requests get here.
async fn drain(body: Body) {
    const MAX: usize = 1024 * 1024;
    let mut body = body;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > MAX {
                break;
            }
        }
    })
    .await;
}

/// A non-empty body must be declared JSON (`application/json` or `application/merge-patch+json`).
pub(crate) fn check_content_type(headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    if body.is_empty() {
        return Ok(());
    }
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| m == "application/json" || m == "application/merge-patch+json");
    if ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Parses a JSON body; an empty body reads as `{}`. Messages never echo body content.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(T::default());
    };
    if *first != b'{' {
        // serde would read an array as positional fields; the wire has objects only.
        return Err(ApiError::validation(
            "The request body must be a JSON object.",
            "body",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let kind = e.to_string();
        let kind = kind.split(':').next().unwrap_or("invalid JSON");
        let kind = kind.split(" at line").next().unwrap_or(kind);
        let kind: String = kind
            .chars()
            .filter(|c| *c != '`' && *c != '"')
            .take(80)
            .collect();
        ApiError::validation(
            format!(
                "The request body is not valid: {kind} (line {}, column {}).",
                e.line(),
                e.column()
            ),
            "body",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_both_id_encodings() {
        let enc = "/identities/8%3Aacs%3Aa_b/:issueAccessToken";
        let raw = "/identities/8:acs:a_b/:issueAccessToken";
        assert_eq!(
            Route::parse(&Method::POST, enc).ok(),
            Some(Route::Issue("8:acs:a_b".into()))
        );
        assert_eq!(
            Route::parse(&Method::POST, raw).ok(),
            Some(Route::Issue("8:acs:a_b".into()))
        );
        assert_eq!(
            Route::parse(&Method::POST, "/identities/").ok(),
            Some(Route::Create)
        );
    }

    #[test]
    fn wrong_methods_and_paths_are_told_apart() {
        assert_eq!(
            Route::parse(&Method::GET, "/identities/").ok(),
            Some(Route::List)
        );
        assert!(matches!(
            Route::parse(&Method::PUT, "/identities"),
            Err(ApiError::MethodNotAllowed("GET, POST"))
        ));
        assert!(matches!(
            Route::parse(&Method::DELETE, "/identities"),
            Err(ApiError::MethodNotAllowed("GET, POST"))
        ));
        assert!(matches!(
            Route::parse(&Method::PUT, "/identities/x"),
            Err(ApiError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            Route::parse(&Method::GET, "/nope"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            Route::parse(&Method::POST, "/identities/x/:nope"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            Route::parse(&Method::POST, "/identities//token"),
            Err(ApiError::NotFound)
        ));
    }

    #[test]
    fn json_errors_do_not_echo_the_body() {
        #[derive(serde::Deserialize, Default, Debug)]
        struct T {
            #[allow(dead_code)]
            n: Option<i64>,
        }
        let err = parse_json::<T>(br#"{"n": "secret-value"}"#).expect_err("wrong type");
        let msg = err.to_string();
        assert!(!msg.contains("secret"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        assert!(parse_json::<T>(b"").is_ok());
        assert!(parse_json::<T>(b"{").is_err());
        assert!(
            parse_json::<T>(b"[1]").is_err(),
            "arrays are not positional structs"
        );
        assert!(
            parse_json::<T>(b"\xEF\xBB\xBF{\"n\": 1}").is_ok(),
            "a BOM is skipped"
        );
    }
}

#[cfg(test)]
mod panic_tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_an_opaque_500_and_its_payload_is_kept_for_the_log() {
        let id = uuid::Uuid::new_v4();
        let (kind, result) = catching_panics(id, async {
            if id.is_nil() {
                return (RequestKind::unversioned("never"), Err(ApiError::NotFound));
            }
            panic!("index out of bounds at the secret place")
        })
        .await;
        assert_eq!(kind, RequestKind::unversioned("panicked"));
        let e = result.expect_err("a failure");
        assert!(e.cause().contains("index out of bounds"), "{}", e.cause());
        let body = serde_json::to_string(&e.body()).expect("json");
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(
            e.into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let (_, fine) = catching_panics(id, async {
            (
                RequestKind::unversioned("ok"),
                Ok(json(StatusCode::OK, &42)),
            )
        })
        .await;
        assert_eq!(fine.expect("answers").status(), StatusCode::OK);
    }

    #[test]
    fn panic_messages_of_both_payload_kinds_are_read() {
        let owned: Box<dyn std::any::Any + Send> = Box::new(String::from("owned"));
        let borrowed: Box<dyn std::any::Any + Send> = Box::new("borrowed");
        let other: Box<dyn std::any::Any + Send> = Box::new(7_u8);
        assert_eq!(panic_message(owned.as_ref()), "owned");
        assert_eq!(panic_message(borrowed.as_ref()), "borrowed");
        assert_eq!(panic_message(other.as_ref()), "a non-text panic payload");
    }
}
