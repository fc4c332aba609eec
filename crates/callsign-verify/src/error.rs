//! Why a token is refused.

use callsign_api::Scope;

/// Why a token does not verify. Each variant says the status the middleware answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// 401: not three base64url segments, a header or payload that is not JSON, claims that do
    /// not fit together.
    #[error("the token is malformed")]
    Malformed,
    /// 401: the header says `alg: none` (an unsigned token).
    #[error("the token is unsigned (alg none)")]
    AlgNone,
    /// 401: the header names an HMAC algorithm (`HS256`…): someone signed it with the public key
    /// as a shared secret. The algorithm is pinned by the key, never taken from the header.
    #[error("the token names a symmetric algorithm")]
    SymmetricAlgorithm,
    /// 401: the header's `alg` is not the algorithm of the key its `kid` names.
    #[error("the token's algorithm is not its key's")]
    AlgorithmMismatch,
    /// 401: no published key has the token's `kid` (after at most one refresh per cooldown).
    #[error("the token's key is unknown")]
    UnknownKid,
    /// 401: the signature does not verify over the header and payload. A changed payload and a
    /// changed signature are the same event cryptographically, so both end here.
    #[error("the signature does not verify")]
    BadSignature,
    /// 401: `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// 401: `nbf` (or `iat` when there is no `nbf`) is still ahead (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// 401: `iss` is not the configured issuer.
    #[error("the token has another issuer")]
    WrongIssuer,
    /// 401: the token is for another resource.
    #[error("the token is for another resource")]
    WrongResource,
    /// 403: the token lacks a required scope.
    #[error("the token lacks the scope {}", .0.as_str())]
    MissingScope(Scope),
    /// 401: the identity's tokens were revoked after this one was issued.
    #[error("the token has been revoked")]
    Revoked,
    /// 401: the identity has been deleted.
    #[error("the identity has been deleted")]
    Deleted,
    /// 503: the revocation feed has been unreachable for longer than the configured bound and
    /// the policy is to fail closed.
    #[error("revocations are not known: the feed is stale")]
    FeedStale,
    /// 503: no key set has been fetched yet and the JWKS endpoint does not answer.
    #[error("the signing keys could not be fetched")]
    KeysUnavailable,
}

impl VerifyError {
    /// The HTTP status a backend answers with: 403 for a missing scope, 503 when the verifier
    /// cannot know (no keys, stale feed), 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            VerifyError::MissingScope(_) => 403,
            VerifyError::FeedStale | VerifyError::KeysUnavailable => 503,
            _ => 401,
        }
    }

    /// A stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed => "MalformedToken",
            VerifyError::AlgNone => "UnsignedToken",
            VerifyError::SymmetricAlgorithm => "SymmetricAlgorithm",
            VerifyError::AlgorithmMismatch => "AlgorithmMismatch",
            VerifyError::UnknownKid => "UnknownKey",
            VerifyError::BadSignature => "BadSignature",
            VerifyError::Expired => "TokenExpired",
            VerifyError::NotYetValid => "TokenNotYetValid",
            VerifyError::WrongIssuer => "WrongIssuer",
            VerifyError::WrongResource => "WrongResource",
            VerifyError::MissingScope(_) => "InsufficientScope",
            VerifyError::Revoked => "TokenRevoked",
            VerifyError::Deleted => "IdentityDeleted",
            VerifyError::FeedStale => "RevocationsUnavailable",
            VerifyError::KeysUnavailable => "KeysUnavailable",
        }
    }
}
