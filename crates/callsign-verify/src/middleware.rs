//! axum/tower integration: [`VerifyLayer`] guards a whole router with required scopes, the
//! [`Token`] extractor hands a handler the verified claims (and can require scopes itself).
//!
//! Both read `Authorization: Bearer <token>`. Refusals answer with the ACS error body
//! `{"error":{"code","message"}}`: 401 (with `WWW-Authenticate: Bearer`) for a missing or bad
//! token, 403 for a missing scope, 503 when the verifier cannot know (no keys, stale feed).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use callsign_api::{ErrorResponse, Scope};
use callsign_core::token::VerifiedToken;

use crate::{Verifier, VerifyError};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 401: no `Authorization: Bearer` header.
    MissingToken,
    /// 500: the extractor found no verifier (add `Extension(Arc<Verifier>)` or the layer).
    NoVerifier,
    /// The token was refused: see [`VerifyError::status`].
    Invalid(VerifyError),
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            Rejection::MissingToken => (
                401,
                "MissingToken",
                "an Authorization: Bearer token is required".to_owned(),
            ),
            Rejection::NoVerifier => (500, "InternalError", "internal error".to_owned()),
            Rejection::Invalid(e) => (e.status(), e.code(), e.to_string()),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut resp = (status, axum::Json(ErrorResponse::new(code, message))).into_response();
        let challenge = match &self {
            Rejection::Invalid(VerifyError::MissingScope(s)) => Some(format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                s.as_str()
            )),
            Rejection::MissingToken => Some("Bearer".to_owned()),
            Rejection::Invalid(_) if status == StatusCode::UNAUTHORIZED => {
                Some("Bearer error=\"invalid_token\"".to_owned())
            }
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        resp
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn verify_request(
    verifier: &Verifier,
    headers: &HeaderMap,
    required: &[Scope],
) -> Result<VerifiedToken, Rejection> {
    let token = bearer(headers).ok_or(Rejection::MissingToken)?;
    verifier
        .verify_scopes(token, required)
        .await
        .map_err(Rejection::Invalid)
}

/// A tower layer that lets through only requests with a valid token carrying `scopes`; the
/// handler finds the [`VerifiedToken`] (and the verifier) in the request extensions, or takes a
/// [`Token`].
#[derive(Debug, Clone)]
pub struct VerifyLayer {
    verifier: Arc<Verifier>,
    scopes: Arc<[Scope]>,
}

impl VerifyLayer {
    /// Requires a valid token with every scope of `scopes`.
    pub fn new(verifier: Arc<Verifier>, scopes: &[Scope]) -> Self {
        Self {
            verifier,
            scopes: scopes.into(),
        }
    }
}

impl<S> tower::Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`VerifyLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct VerifyService<S> {
    inner: S,
    layer: VerifyLayer,
}

impl<S> tower::Service<Request> for VerifyService<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The clone that was made ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            match verify_request(&layer.verifier, req.headers(), &layer.scopes).await {
                Ok(token) => {
                    req.extensions_mut().insert(token);
                    req.extensions_mut().insert(layer.verifier);
                    inner.call(req).await
                }
                Err(rejection) => Ok(rejection.into_response()),
            }
        })
    }
}

/// Scopes a [`Token`] extractor requires, as a type.
pub trait RequiredScopes: Send + Sync + 'static {
    /// The scopes; all are required.
    const SCOPES: &'static [Scope];
}

/// No scope required: any valid token.
#[derive(Debug)]
pub struct AnyScope;
impl RequiredScopes for AnyScope {
    const SCOPES: &'static [Scope] = &[];
}

/// The `chat` scope.
#[derive(Debug)]
pub struct ChatScope;
impl RequiredScopes for ChatScope {
    const SCOPES: &'static [Scope] = &[Scope::Chat];
}

/// The `voip` scope.
#[derive(Debug)]
pub struct VoipScope;
impl RequiredScopes for VoipScope {
    const SCOPES: &'static [Scope] = &[Scope::Voip];
}

/// An extractor: the verified claims of the request's bearer token, which must carry the
/// scopes of `R`. Behind a [`VerifyLayer`] it takes the layer's verification (and checks its own
/// scopes); otherwise it verifies with the `Arc<Verifier>` of the request extensions
/// (`.layer(axum::Extension(verifier))`).
#[derive(Debug)]
pub struct Token<R: RequiredScopes = AnyScope> {
    /// The verified claims.
    pub claims: VerifiedToken,
    _scopes: PhantomData<fn() -> R>,
}

impl<R: RequiredScopes> std::ops::Deref for Token<R> {
    type Target = VerifiedToken;

    fn deref(&self) -> &VerifiedToken {
        &self.claims
    }
}

impl<S: Send + Sync, R: RequiredScopes> FromRequestParts<S> for Token<R> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
        let claims = match parts.extensions.get::<VerifiedToken>() {
            Some(claims) => {
                if let Some(missing) = R::SCOPES.iter().find(|s| !claims.scopes.contains(**s)) {
                    return Err(Rejection::Invalid(VerifyError::MissingScope(*missing)));
                }
                claims.clone()
            }
            None => {
                let verifier = parts
                    .extensions
                    .get::<Arc<Verifier>>()
                    .ok_or(Rejection::NoVerifier)?;
                verify_request(verifier, &parts.headers, R::SCOPES).await?
            }
        };
        Ok(Self {
            claims,
            _scopes: PhantomData,
        })
    }
}
