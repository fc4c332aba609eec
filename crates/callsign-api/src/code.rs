//! Error codes and introspection reasons: the machine-readable words of the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `error.code` of an error body, as callsign sends it.
///
/// The codes of the real service for the same failures; the server chooses one for every
/// failure, and clients compare against these rather than string literals. A client reading a
/// body keeps the code as a string too ([`crate::ErrorDetail::code`]): a service may send codes
/// this list does not know ([`ErrorCode::from_wire`] is then `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the body or a parameter breaks a rule.
    ValidationError,
    /// 400: no `api-version` query parameter.
    MissingApiVersionParameter,
    /// 400: an api-version that is not served, or that lacks the operation.
    UnsupportedApiVersion,
    /// 401: request authentication failed.
    Denied,
    /// 401: the identity belongs to another resource.
    IdentityNotOwned,
    /// 403: the credential may not do this (callsign: a verify-only key outside verification).
    AuthorizationFailed,
    /// 401: a Teams or Entra ID access token was not accepted.
    InvalidAccessToken,
    /// 404: no such identity in this resource.
    IdentityNotFound,
    /// 404: no such Teams extension assignment.
    AssignmentNotFound,
    /// 404: no such path.
    NotFound,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 413: the body is over the limit.
    RequestEntityTooLarge,
    /// 414: the request target is over the limit.
    UriTooLong,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: a throttling limit; `Retry-After` says when to come back.
    TooManyRequests,
    /// 431: the request head is over the limit.
    RequestHeaderFieldsTooLarge,
    /// 410: a revocation-feed cursor older than the feed's retention (callsign extension):
    /// resynchronise from the snapshot.
    CursorExpired,
    /// 503: storage is unavailable for now; `Retry-After` says when to come back.
    ServiceUnavailable,
    /// 500: an internal error (the body says nothing more).
    InternalError,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::ValidationError,
        ErrorCode::MissingApiVersionParameter,
        ErrorCode::UnsupportedApiVersion,
        ErrorCode::Denied,
        ErrorCode::IdentityNotOwned,
        ErrorCode::AuthorizationFailed,
        ErrorCode::InvalidAccessToken,
        ErrorCode::IdentityNotFound,
        ErrorCode::AssignmentNotFound,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::RequestEntityTooLarge,
        ErrorCode::UriTooLong,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::TooManyRequests,
        ErrorCode::RequestHeaderFieldsTooLarge,
        ErrorCode::CursorExpired,
        ErrorCode::ServiceUnavailable,
        ErrorCode::InternalError,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "ValidationError",
            ErrorCode::MissingApiVersionParameter => "MissingApiVersionParameter",
            ErrorCode::UnsupportedApiVersion => "UnsupportedApiVersion",
            ErrorCode::Denied => "Denied",
            ErrorCode::IdentityNotOwned => "IdentityNotOwned",
            ErrorCode::AuthorizationFailed => "AuthorizationFailed",
            ErrorCode::InvalidAccessToken => "InvalidAccessToken",
            ErrorCode::IdentityNotFound => "IdentityNotFound",
            ErrorCode::AssignmentNotFound => "AssignmentNotFound",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::MethodNotAllowed => "MethodNotAllowed",
            ErrorCode::RequestTimeout => "RequestTimeout",
            ErrorCode::RequestEntityTooLarge => "RequestEntityTooLarge",
            ErrorCode::UriTooLong => "UriTooLong",
            ErrorCode::UnsupportedMediaType => "UnsupportedMediaType",
            ErrorCode::TooManyRequests => "TooManyRequests",
            ErrorCode::RequestHeaderFieldsTooLarge => "RequestHeaderFieldsTooLarge",
            ErrorCode::CursorExpired => "CursorExpired",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
            ErrorCode::InternalError => "InternalError",
        }
    }

    /// The code a wire string names (exact case), if it is one of these.
    pub fn from_wire(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for String {
    fn from(code: ErrorCode) -> String {
        code.as_str().to_owned()
    }
}

/// Why `POST /tokens/:introspect` found a token not in force (callsign extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InactiveReason {
    /// Not a token of the expected shape.
    Malformed,
    /// The signature is not by a key of this deployment.
    Signature,
    /// Past its expiry.
    Expired,
    /// Revoked (or every token of the identity revoked) after it was issued.
    Revoked,
    /// The identity is deleted or never existed.
    IdentityNotFound,
    /// Issued for an identity of another resource than the caller's.
    ForeignResource,
    /// A reason a newer server sends that this version does not know.
    #[serde(other)]
    Unknown,
}

impl InactiveReason {
    /// The reason as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            InactiveReason::Malformed => "malformed",
            InactiveReason::Signature => "signature",
            InactiveReason::Expired => "expired",
            InactiveReason::Revoked => "revoked",
            InactiveReason::IdentityNotFound => "identityNotFound",
            InactiveReason::ForeignResource => "foreignResource",
            InactiveReason::Unknown => "unknown",
        }
    }
}

impl fmt::Display for InactiveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_distinct() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::from_wire("validationerror"), None);
    }

    #[test]
    fn reasons_serialize_as_their_wire_names() {
        for reason in [
            InactiveReason::Malformed,
            InactiveReason::Signature,
            InactiveReason::Expired,
            InactiveReason::Revoked,
            InactiveReason::IdentityNotFound,
            InactiveReason::ForeignResource,
        ] {
            let json = serde_json::to_string(&reason).expect("serializes");
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(
                serde_json::from_str::<InactiveReason>(&json).expect("parses"),
                reason
            );
        }
        assert_eq!(
            serde_json::from_str::<InactiveReason>("\"suspended\"").expect("parses"),
            InactiveReason::Unknown
        );
    }
}
