//! Requests whose credential is a trusted issuer's bearer token rather than an HMAC signature:
//! a user's token exchange, or a management call by a principal with a configured role.
//!
//! The token is verified before the body is read, failures count against the client's address
//! as failed signatures do, and the resource is the one the request's host routes to that the
//! issuer is trusted for (exactly one, or the request is refused).

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use callsign_core::ResourceId;
use callsign_store::{Actor, Credential};

use crate::auth::Authenticated;
use crate::connection::ClientAddr;
use crate::error::ApiError;
use crate::http::{RequestId, Route, check_content_type, read_body, run};
use crate::oidc::{Principal, Refusal};
use crate::state::AppState;
use crate::version::ApiVersion;
use crate::{entra, feed, teams};

/// The token of `Authorization: Bearer <token>`.
fn token(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(6..))
        .map_or("", str::trim)
}

/// The resource a bearer request is for: the one of the host's resources the issuer serves.
pub(crate) fn resource(
    state: &AppState,
    parts: &Parts,
    p: &Principal,
) -> Result<ResourceId, ApiError> {
    if state.resources.is_stale() {
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "resources changed in the store cannot be loaded"
        )));
    }
    let host = crate::http::request_host(parts);
    let routing = state.resources.get();
    let mut served = routing
        .candidates(host)
        .iter()
        .map(|r| r.id)
        .filter(|id| p.issuer.serves(*id));
    match (served.next(), served.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(ApiError::TokenRefused(Refusal::OtherResource)),
        (Some(_), Some(_)) => Err(ApiError::TokenRefused(Refusal::AmbiguousResource)),
    }
}

/// Verifies the bearer token, picks the resource, reads the body, then runs the operation if
/// the principal may: an exchange needs an assignment, anything else the route's role.
pub(crate) async fn handle(
    state: &AppState,
    route: Route,
    version: ApiVersion,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    if !state.issuers.any() {
        // No issuer is trusted: an exchange is refused as ACS refuses a token it cannot accept.
        return Err(ApiError::InvalidAccessToken);
    }
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.0);
    if let Some(ip) = client {
        state.auth_failures.check(ip)?;
    }
    let refused = |e: ApiError| {
        let counts = !matches!(e, ApiError::TokenRefused(Refusal::KeysUnavailable));
        if let (true, Some(ip)) = (counts, client) {
            state.auth_failures.record(ip);
        }
        e
    };
    let now = state.clock.now();
    let principal = state
        .issuers
        .verify(token(&parts.headers), now)
        .await
        .map_err(|r| refused(ApiError::TokenRefused(r)))?;
    let resource = resource(state, &parts, &principal).map_err(refused)?;
    if !route.is_exchange() {
        let role = route.bearer_role(&principal.issuer);
        if !principal.has_role(role) && !principal.has_role(&principal.issuer.admin_role) {
            return Err(ApiError::MissingRole(role.to_owned()));
        }
    }
    let body = read_body(
        body,
        &parts.headers,
        state.max_body_bytes,
        state.limits.body_timeout,
    )
    .await?;
    check_content_type(&parts.headers, &body)?;
    let actor = Actor {
        credential: Credential::Bearer,
        client,
        request_id: parts.extensions.get::<RequestId>().map(|r| r.0.to_string()),
        subject: Some(principal.audit_subject()),
    };
    let dir = state.directory(&Authenticated::bearer(resource, &principal), actor);
    if let Some(class) = route.throttle_class() {
        dir.throttle(class)?;
    }
    match route {
        Route::EntraExchange => entra::exchange(&dir, &principal, now).await,
        Route::TeamsExtensionExchange => teams::exchange_extension(&dir, &principal, now).await,
        Route::Revocations => feed::revocations(state, &dir, &parts).await,
        Route::RevocationSnapshot => feed::snapshot(state, &dir, version, parts.uri.query()).await,
        route => run(state, &dir, route, version, &body, now, parts.uri.query()).await,
    }
}
