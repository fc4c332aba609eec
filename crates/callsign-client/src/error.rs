//! The client's error type.

use std::time::Duration;

use callsign_api::{ErrorCode, ErrorResponse};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service refused the request with an ACS error body
    /// (`{"error":{"code","message","target"}}`), e.g. 400 `ValidationError`, 401 `Denied` (wrong
    /// access key), 401 `IdentityNotOwned`, 404 `IdentityNotFound`, or a 429/5xx that was still
    /// failing after the retries.
    #[error("{}", service_display(*status, code, message, target.as_deref()))]
    Service {
        /// The HTTP status, e.g. 404.
        status: u16,
        /// The service's machine-readable error code, e.g. `IdentityNotFound`.
        code: String,
        /// The service's human-readable message.
        message: String,
        /// The request field the error is about, when the service names one.
        target: Option<String>,
    },
    /// The connection string (or endpoint and key) could not be used. The reason never contains
    /// the access key.
    #[error("invalid connection string: {0}")]
    InvalidConnectionString(String),
    /// The client could not be built from its options, e.g. a trusted CA certificate is not PEM.
    #[error("invalid client configuration: {0}")]
    Configuration(String),
    /// An argument was refused before anything was sent, e.g. an object id that cannot be a
    /// path segment (empty, `.` or `..`) or a bearer token that cannot be a header value. The
    /// reason never contains a token.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An attempt took longer than the per-request timeout (timeouts are not retried: the
    /// request may have been carried out).
    #[error("the request timed out after {0:?}")]
    Timeout(Duration),
    /// The request could not be sent or its response not read: connection refused, TLS
    /// handshake failure (e.g. an untrusted certificate), connection reset.
    #[error("transport error: {0}")]
    Transport(#[source] reqwest::Error),
    /// The service answered, but not as the API says it does: an unexpected status, a body that
    /// is neither the documented response nor an ACS error body, or an unparseable field.
    #[error("unexpected response (HTTP {status}): {detail}")]
    UnexpectedResponse {
        /// The HTTP status received.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
}

fn service_display(status: u16, code: &str, message: &str, target: Option<&str>) -> String {
    match target {
        Some(t) => format!("({code}) {message} [HTTP {status}, target: {t}]"),
        None => format!("({code}) {message} [HTTP {status}]"),
    }
}

impl Error {
    /// The HTTP status of a response that caused the error, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Service { status, .. } | Error::UnexpectedResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The service's error code (`ValidationError`, `IdentityNotFound`, …), if the service sent
    /// one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The service's error code as one of callsign's [`ErrorCode`]s, if it sent one of those.
    /// Compare against this rather than against string literals:
    /// `e.error_code() == Some(ErrorCode::IdentityNotFound)`.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code().and_then(ErrorCode::from_wire)
    }

    /// The service's error message, if the service sent one.
    pub fn service_message(&self) -> Option<&str> {
        match self {
            Error::Service { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The request field the service blamed, if it named one.
    pub fn target(&self) -> Option<&str> {
        match self {
            Error::Service { target, .. } => target.as_deref(),
            _ => None,
        }
    }

    /// Maps a failed response: an ACS error body becomes [`Error::Service`], anything else
    /// [`Error::UnexpectedResponse`] with the start of the body.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(e) => Error::Service {
                status,
                code: e.error.code,
                message: e.error.message,
                target: e.error.target,
            },
            Err(_) => Error::UnexpectedResponse {
                status,
                detail: if body.is_empty() {
                    "no error body".to_owned()
                } else {
                    format!("body is not an ACS error: {}", snippet(body))
                },
            },
        }
    }
}

/// The start of a body, for error messages.
pub(crate) fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acs_error_bodies_become_service_errors() {
        let e = Error::from_response(
            400,
            br#"{"error":{"code":"ValidationError","message":"bad","target":"scopes"}}"#,
        );
        assert_eq!(e.status(), Some(400));
        assert_eq!(e.code(), Some("ValidationError"));
        assert_eq!(e.error_code(), Some(ErrorCode::ValidationError));
        assert_eq!(e.service_message(), Some("bad"));
        assert_eq!(e.target(), Some("scopes"));
        assert_eq!(
            e.to_string(),
            "(ValidationError) bad [HTTP 400, target: scopes]"
        );
    }

    #[test]
    fn other_bodies_become_unexpected_responses() {
        let e = Error::from_response(502, b"<html>bad gateway</html>");
        assert!(matches!(e, Error::UnexpectedResponse { status: 502, .. }));
        assert_eq!(e.code(), None);
        assert!(e.to_string().contains("bad gateway"));
        let e = Error::from_response(500, b"");
        assert!(e.to_string().contains("no error body"));
    }
}
