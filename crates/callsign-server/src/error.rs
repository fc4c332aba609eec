//! The one error type of the HTTP layer and its mapping to ACS error bodies.
//!
//! Every failure leaves as `{"error":{"code","message"[,"target"]}}` with the status documented on
//! its variant. 5xx bodies are opaque; their cause is logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callsign_api::{ErrorCode, ErrorResponse};
use callsign_store::StoreError;

/// A request failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `ValidationError`: the body or a parameter breaks a rule.
    #[error("{message}")]
    Validation {
        /// What is wrong.
        message: String,
        /// The field at fault.
        target: Option<&'static str>,
    },
    /// 400 `MissingApiVersionParameter`.
    #[error("The api-version query parameter is required.")]
    MissingApiVersion,
    /// 400 `UnsupportedApiVersion`: not a version we serve, or the operation does not exist in it.
    #[error("{0}")]
    UnsupportedApiVersion(String),
    /// 401 `Denied`: HMAC authentication failed. The body says only what ACS says; the reason
    /// goes to the request's log line.
    #[error("Denied by the resource provider.")]
    Denied(&'static str),
    /// 401 `IdentityNotOwned`: the id belongs to another resource.
    #[error("Provided identity doesn't belong to the resource.")]
    IdentityNotOwned,
    /// 403 `AuthorizationFailed`: a verify-only key asked for anything but verification.
    #[error(
        "The verify-only key may call token introspection and the revocation feed, nothing else."
    )]
    VerifyOnly,
    /// 403 `AuthorizationFailed`: a console request refused for the reason given (a form
    /// without this session's form token, from another origin, an action the session may not
    /// take).
    #[error("{0}")]
    Forbidden(&'static str),
    /// 401 `InvalidAccessToken`: Teams token exchange (no Entra ID here).
    #[error("Provided access token is not valid.")]
    InvalidAccessToken,
    /// 401 `InvalidAccessToken`: a bearer token was refused, and why (503
    /// `ServiceUnavailable` when the issuer's keys were never fetched and cannot be now).
    #[error("Provided access token is not valid: {0}.")]
    TokenRefused(crate::oidc::Refusal),
    /// 403 `AuthorizationFailed`: no access assignment covers the principal.
    #[error(
        "No access assignment of this resource covers the token's principal (the user, one of \
         their groups or their tenant)."
    )]
    NotAssigned,
    /// 403 `AuthorizationFailed`: the bearer token lacks the role the operation needs.
    #[error("The token lacks the role {0} that this operation needs.")]
    MissingRole(String),
    /// 403 `AuthorizationFailed`: the principal's identity was deleted; deleted ids are never
    /// used again.
    #[error("The identity of this principal was deleted and is not created again.")]
    IdentityDeleted,
    /// 404 `IdentityNotFound`: unknown or deleted identity of this resource.
    #[error("Identity not found.")]
    IdentityNotFound,
    /// 404 `AssignmentNotFound`: no Teams extension assignment for this tenant and object.
    #[error("Assignment not found.")]
    AssignmentNotFound,
    /// 404 `NotFound`: no such path.
    #[error("The requested path does not exist.")]
    NotFound,
    /// 405 `MethodNotAllowed`.
    #[error("The method is not allowed on this path.")]
    MethodNotAllowed(&'static str),
    /// 408 `RequestTimeout`: the body did not arrive in time.
    #[error("The request body was not received in time.")]
    RequestTimeout,
    /// 413 `RequestEntityTooLarge`.
    #[error("The request body exceeds the limit of {0} bytes.")]
    PayloadTooLarge(usize),
    /// 414 `UriTooLong`.
    #[error("The request target exceeds the limit of {0} bytes.")]
    UriTooLong(usize),
    /// 415 `UnsupportedMediaType`.
    #[error("The request body must be JSON (Content-Type: application/json).")]
    UnsupportedMediaType,
    /// 429 `TooManyRequests` with `Retry-After`: a throttling limit or the failed-authentication
    /// limit of the client's address.
    #[error("Too many requests. Retry after {retry_after} seconds.")]
    TooManyRequests {
        /// Whole seconds until a request can succeed.
        retry_after: u64,
    },
    /// 431 `RequestHeaderFieldsTooLarge`.
    #[error("The request head exceeds the limit of {bytes} bytes or {headers} header fields.")]
    HeadersTooLarge {
        /// The byte limit.
        bytes: usize,
        /// The header count limit.
        headers: usize,
    },
    /// 410 `CursorExpired`: a revocation-feed cursor older than the feed's retention.
    #[error(
        "The cursor is older than the revocation feed's retention; resynchronise from \
         revocations/snapshot."
    )]
    CursorExpired,
    /// 503 `ServiceUnavailable` with `Retry-After`: this node holds as many waiting feed
    /// requests as it allows (in all, or from this client's address).
    #[error("Too many requests are waiting on the revocation feed of this node. Retry later.")]
    TooManyWaiting,
    /// 503 `ServiceUnavailable` with `Retry-After`: storage is unreachable for now.
    #[error("The service is temporarily unavailable. Retry later.")]
    Unavailable(#[source] anyhow::Error),
    /// 503 `ServiceUnavailable` with `Retry-After`, as [`ApiError::Unavailable`]: the store
    /// cannot write now (disk full, read-only, I/O error; [`StoreError::cannot_write`]). The
    /// store logs that state once when it starts and once when it ends, so the cause is not
    /// logged again per request.
    #[error("The service is temporarily unavailable. Retry later.")]
    CannotWrite(#[source] anyhow::Error),
    /// 500 `InternalError`: opaque to the client, cause (with its whole source chain) logged.
    #[error("An internal error occurred.")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A validation error naming its field.
    pub fn validation(message: impl Into<String>, target: &'static str) -> Self {
        ApiError::Validation {
            message: message.into(),
            target: Some(target),
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. }
            | ApiError::MissingApiVersion
            | ApiError::UnsupportedApiVersion(_) => StatusCode::BAD_REQUEST,
            ApiError::TokenRefused(crate::oidc::Refusal::KeysUnavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Denied(_)
            | ApiError::IdentityNotOwned
            | ApiError::InvalidAccessToken
            | ApiError::TokenRefused(_) => StatusCode::UNAUTHORIZED,
            ApiError::VerifyOnly
            | ApiError::Forbidden(_)
            | ApiError::NotAssigned
            | ApiError::MissingRole(_)
            | ApiError::IdentityDeleted => StatusCode::FORBIDDEN,
            ApiError::IdentityNotFound | ApiError::AssignmentNotFound | ApiError::NotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::CursorExpired => StatusCode::GONE,
            ApiError::Unavailable(_) | ApiError::CannotWrite(_) | ApiError::TooManyWaiting => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The ACS error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Validation { .. } => ErrorCode::ValidationError,
            ApiError::MissingApiVersion => ErrorCode::MissingApiVersionParameter,
            ApiError::UnsupportedApiVersion(_) => ErrorCode::UnsupportedApiVersion,
            ApiError::Denied(_) => ErrorCode::Denied,
            ApiError::IdentityNotOwned => ErrorCode::IdentityNotOwned,
            ApiError::TokenRefused(crate::oidc::Refusal::KeysUnavailable) => {
                ErrorCode::ServiceUnavailable
            }
            ApiError::VerifyOnly
            | ApiError::Forbidden(_)
            | ApiError::NotAssigned
            | ApiError::MissingRole(_)
            | ApiError::IdentityDeleted => ErrorCode::AuthorizationFailed,
            ApiError::InvalidAccessToken | ApiError::TokenRefused(_) => {
                ErrorCode::InvalidAccessToken
            }
            ApiError::IdentityNotFound => ErrorCode::IdentityNotFound,
            ApiError::AssignmentNotFound => ErrorCode::AssignmentNotFound,
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::RequestTimeout => ErrorCode::RequestTimeout,
            ApiError::PayloadTooLarge(_) => ErrorCode::RequestEntityTooLarge,
            ApiError::UriTooLong(_) => ErrorCode::UriTooLong,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::TooManyRequests { .. } => ErrorCode::TooManyRequests,
            ApiError::HeadersTooLarge { .. } => ErrorCode::RequestHeaderFieldsTooLarge,
            ApiError::CursorExpired => ErrorCode::CursorExpired,
            ApiError::Unavailable(_) | ApiError::CannotWrite(_) | ApiError::TooManyWaiting => {
                ErrorCode::ServiceUnavailable
            }
            ApiError::Internal(_) => ErrorCode::InternalError,
        }
    }

    /// A 500 with `cause` (logged, never sent).
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(cause.into())
    }

    /// What is logged about the failure and never sent: the cause of a 5xx with its source
    /// chain (`outer: inner: root`), the reason of a 401 `Denied`; empty otherwise.
    pub fn cause(&self) -> String {
        match self {
            ApiError::Internal(cause)
            | ApiError::Unavailable(cause)
            | ApiError::CannotWrite(cause) => format!("{cause:#}"),
            ApiError::Denied(reason) => (*reason).to_owned(),
            _ => String::new(),
        }
    }

    /// The body sent to the client.
    pub fn body(&self) -> ErrorResponse {
        match self {
            ApiError::Validation {
                message,
                target: Some(target),
            } => ErrorResponse::with_target(self.code(), message.clone(), *target),
            _ => ErrorResponse::new(self.code(), self.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    /// The cause (logged, never sent) is the store error with its whole source chain.
    fn from(e: StoreError) -> Self {
        if e.is_cannot_write() {
            ApiError::CannotWrite(e.into())
        } else if e.is_unavailable() {
            ApiError::Unavailable(e.into())
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = crate::http::json(status, &self.body());
        let headers = response.headers_mut();
        match self {
            ApiError::Denied(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("HMAC-SHA256"),
                );
            }
            ApiError::TokenRefused(crate::oidc::Refusal::KeysUnavailable) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::TokenRefused(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unavailable(_) | ApiError::CannotWrite(_) | ApiError::TooManyWaiting => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::TooManyRequests { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_are_opaque() {
        let e = ApiError::internal(anyhow::anyhow!("disk I/O error at /secret/path"));
        let body = serde_json::to_string(&e.body()).expect("json");
        assert!(!body.contains("secret"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn the_logged_cause_keeps_the_whole_source_chain() {
        let root = std::io::Error::other("no space left on device");
        let e = ApiError::internal(anyhow::Error::new(root).context("writing the identity"));
        assert_eq!(e.cause(), "writing the identity: no space left on device");
        let body = serde_json::to_string(&e.body()).expect("json");
        assert!(!body.contains("space"), "{body}");
        // The chain is also there for whoever walks `source()`.
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "writing the identity");
    }

    #[test]
    fn denied_says_what_acs_says_and_keeps_the_reason_for_the_log() {
        let e = ApiError::Denied("the signature does not match");
        assert_eq!(e.body().error.message, "Denied by the resource provider.");
        assert_eq!(e.cause(), "the signature does not match");
    }

    #[test]
    fn a_store_that_cannot_write_is_a_503_with_retry_after_and_an_opaque_body() {
        let e = ApiError::from(StoreError::cannot_write(
            "disk full (database or disk is full) at /secret/callsign.db",
        ));
        assert!(matches!(e, ApiError::CannotWrite(_)), "{e:?}");
        assert!(e.cause().contains("disk full"));
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("1"))
        );
        let e = ApiError::from(StoreError::cannot_write("read-only"));
        let body = serde_json::to_string(&e.body()).expect("json");
        assert!(!body.contains("read-only"), "{body}");
        assert_eq!(e.code(), ErrorCode::ServiceUnavailable);
        // Other store failures keep their mapping.
        let busy = ApiError::from(StoreError::unavailable("database is locked"));
        assert!(matches!(busy, ApiError::Unavailable(_)));
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        let corrupt = ApiError::from(StoreError::corrupt("bad row"));
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_store_failure_keeps_its_cause_for_the_log_and_out_of_the_body() {
        let e = ApiError::from(
            StoreError::backend("SQLite").caused_by(std::io::Error::other("disk I/O error")),
        );
        assert!(matches!(e, ApiError::Internal(_)), "{e:?}");
        assert!(
            e.cause().ends_with("SQLite: disk I/O error"),
            "{}",
            e.cause()
        );
        let body = serde_json::to_string(&e.body()).expect("json");
        assert!(!body.contains("disk"), "{body}");
    }

    #[test]
    fn validation_errors_carry_their_target() {
        let e = ApiError::validation("bad", "scopes");
        assert_eq!(e.body().error.target.as_deref(), Some("scopes"));
        assert_eq!(e.code(), ErrorCode::ValidationError);
    }
}
