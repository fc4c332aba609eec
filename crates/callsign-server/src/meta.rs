//! Liveness, readiness, the public key set, the OpenAPI document and token introspection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use callsign_api::{InactiveReason, IntrospectRequest, IntrospectResponse, Jwk, Jwks};
use callsign_core::format_expires_on;
use callsign_core::token::{PublicParts, VerifyError, VerifyingKey, token_in_force};
use callsign_store::StoreHealth;

use crate::error::ApiError;
use crate::http::json;
use crate::state::{AppState, Directory};

/// `GET /health` (liveness, no authentication): 200 while the process serves. Touches nothing,
/// so a flood of it costs no store connection.
pub(crate) fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// How long a readiness answer is reused.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last store ping, shared by every readiness request: at most one ping a second, however
/// many requests ask. The ping runs in its own task with a deadline, so a probe that gives up
/// (or a client that disconnects) can neither cancel it half-way nor leave it marked as running.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    inner: Arc<ReadinessInner>,
}

#[derive(Debug, Default)]
struct ReadinessInner {
    last: Mutex<Option<(Instant, bool)>>,
    pinging: AtomicBool,
}

/// How long a readiness ping may take before the store counts as not answering.
const PING_DEADLINE: Duration = Duration::from_secs(2);

impl Readiness {
    async fn ready(&self, state: &AppState) -> bool {
        let inner = &self.inner;
        let cached = *inner.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ok)) = cached
            && at.elapsed() < READINESS_TTL
        {
            return ok;
        }
        if inner.pinging.swap(true, Ordering::AcqRel) {
            // Another request is pinging: answer with what is known.
            return cached.is_none_or(|(_, ok)| ok);
        }
        let inner = Arc::clone(&self.inner);
        let store: Arc<dyn StoreHealth> = Arc::clone(&state.store) as Arc<dyn StoreHealth>;
        let ping = tokio::spawn(async move {
            let ok = matches!(
                tokio::time::timeout(PING_DEADLINE, store.ping()).await,
                Ok(Ok(()))
            );
            *inner.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), ok));
            inner.pinging.store(false, Ordering::Release);
            ok
        });
        ping.await.unwrap_or(false)
    }
}

/// `GET /ready` (readiness, no authentication): 200 when the store answered within the last
/// second and can write, 503 with `Retry-After` otherwise. A node whose disk is full or
/// read-only is not ready, so a balancer sends writes elsewhere; it stays alive (`/health`) and
/// serves reads. Whether the store can write costs no I/O ([`StoreHealth::writable`]),
/// so it is asked on every request, not cached.
pub(crate) async fn ready(state: &AppState) -> Result<Response, ApiError> {
    state.store.writable()?;
    if state.resources.is_stale() {
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "resources changed in the store cannot be loaded"
        )));
    }
    if state.readiness.ready(state).await {
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready"}),
        ))
    } else {
        Err(ApiError::Unavailable(anyhow::anyhow!(
            "the store does not answer"
        )))
    }
}

/// `GET /.well-known/jwks.json` (no authentication): every public key tokens may be signed with.
pub(crate) fn jwks(state: &AppState) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(crate::keys::JWKS_CACHE_CONTROL),
            ),
        ],
        state.keys.get().jwks.clone(),
    )
        .into_response()
}

/// `GET /openapi.json` (no authentication): the OpenAPI document of everything callsign serves,
/// as checked in ([`crate::openapi::OPENAPI_DOCUMENT`]).
pub(crate) fn openapi() -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(crate::openapi::OPENAPI_CACHE_CONTROL),
            ),
        ],
        crate::openapi::OPENAPI_DOCUMENT,
    )
        .into_response()
}

/// The JWKS document for `keys` (newest first).
pub(crate) fn jwks_document(keys: &[VerifyingKey]) -> Jwks {
    Jwks {
        keys: keys
            .iter()
            .map(|k| {
                let mut jwk = Jwk {
                    kty: String::new(),
                    kid: k.kid().to_owned(),
                    alg: k.algorithm().jose_name().to_owned(),
                    use_: "sig".into(),
                    crv: None,
                    x: None,
                    y: None,
                    n: None,
                    e: None,
                };
                match k.public_parts() {
                    PublicParts::Ec { x, y } => {
                        jwk.kty = "EC".into();
                        jwk.crv = Some("P-256".into());
                        jwk.x = Some(B64URL.encode(x));
                        jwk.y = Some(B64URL.encode(y));
                    }
                    PublicParts::Okp { x } => {
                        jwk.kty = "OKP".into();
                        jwk.crv = Some("Ed25519".into());
                        jwk.x = Some(B64URL.encode(x));
                    }
                    PublicParts::Rsa { n, e, .. } => {
                        jwk.kty = "RSA".into();
                        jwk.n = Some(B64URL.encode(n));
                        jwk.e = Some(B64URL.encode(e));
                    }
                }
                jwk
            })
            .collect(),
    }
}

/// The `kid` of a JWS header, if it parses.
fn token_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = B64URL.decode(header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("kid")?.as_str().map(str::to_owned)
}

fn inactive(reason: InactiveReason) -> IntrospectResponse {
    IntrospectResponse {
        active: false,
        reason: Some(reason),
        id: None,
        scopes: None,
        expires_on: None,
    }
}

/// `POST /tokens/:introspect` (callsign extension, HMAC-authenticated): whether a token is in
/// force right now. This is where revocation takes effect at once, which a JWKS check alone
/// cannot see.
pub(crate) async fn introspect(
    state: &AppState,
    dir: &Directory<'_>,
    body: &[u8],
) -> Result<Response, ApiError> {
    // A JSON object only: serde would read `["<jwt>"]` as the struct's fields in order.
    let req: Option<IntrospectRequest> = if body.trim_ascii_start().first() == Some(&b'{') {
        serde_json::from_slice(body).ok()
    } else {
        None
    };
    let req = req
        .ok_or_else(|| ApiError::validation("The body must be {\"token\": \"<jwt>\"}.", "token"))?;
    let now = state.clock.now();
    // A key another node added since our last refresh: reload once before judging.
    if let Some(kid) = token_kid(&req.token)
        && !state.keys.get().knows(&kid)
    {
        state
            .keys
            .refresh_if_stale(state.store.as_ref(), now)
            .await?;
    }
    let token = match state.keys.get().verifier.verify(&req.token, now) {
        Ok(token) => token,
        Err(e) => {
            let reason = match e {
                VerifyError::Malformed => InactiveReason::Malformed,
                VerifyError::Signature => InactiveReason::Signature,
                VerifyError::Expired => InactiveReason::Expired,
            };
            return Ok(json(StatusCode::OK, &inactive(reason)));
        }
    };
    let reason = if !dir.owns(&token.identity) {
        Some(InactiveReason::ForeignResource)
    } else {
        match dir.get(&token.identity).await {
            Err(ApiError::IdentityNotFound) => Some(InactiveReason::IdentityNotFound),
            Err(e) => return Err(e),
            Ok(identity) if !token_in_force(token.epoch, identity.revocation_epoch) => {
                Some(InactiveReason::Revoked)
            }
            Ok(_) => None,
        }
    };
    let response = IntrospectResponse {
        active: reason.is_none(),
        reason,
        id: Some(token.identity.to_string()),
        scopes: Some(token.scopes.iter().map(|s| s.as_str().to_owned()).collect()),
        expires_on: Some(format_expires_on(token.expires_at)),
    };
    Ok(json(StatusCode::OK, &response))
}
