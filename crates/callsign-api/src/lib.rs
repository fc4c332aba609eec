//! Wire types of the callsign identity API.
//!
//! These are the JSON bodies the ACS Identity SDKs send and expect, field for field, plus callsign's
//! own extensions (token introspection, JWKS). This crate depends on serde alone so that any client
//! can share it without pulling in the server.
//!
//! Field names follow the wire (`camelCase`); unknown request fields are ignored, as the real
//! service does.
//!
//! ```
//! use callsign_api::{ErrorCode, ErrorResponse, IssueTokenRequest};
//!
//! let req: IssueTokenRequest = serde_json::from_str(r#"{"scopes": ["chat"], "expiresInMinutes": null}"#).unwrap();
//! assert_eq!(req.scopes.as_deref(), Some(&["chat".to_string()][..]));
//! assert_eq!(req.expires_in_minutes, None);
//!
//! let err = ErrorResponse::new(ErrorCode::IdentityNotFound, "Identity not found.");
//! assert_eq!(
//!     serde_json::to_string(&err).unwrap(),
//!     r#"{"error":{"code":"IdentityNotFound","message":"Identity not found."}}"#
//! );
//! ```

use serde::{Deserialize, Serialize};

mod code;
pub mod connection_string;
mod scope;
mod version;

pub use code::{ErrorCode, InactiveReason};
pub use scope::{Scope, UnknownScope};
pub use version::{ApiVersion, CustomIdField, Operation, UnknownApiVersion};

/// The api-version callsign's own client speaks unless told otherwise.
pub const CLIENT_API_VERSION: &str = ApiVersion::CLIENT_DEFAULT.as_str();

/// The error body of every failed request: `{"error":{"code","message"[,"target"]}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error itself.
    pub error: ErrorDetail,
}

impl ErrorResponse {
    /// An error without a target.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                target: None,
            },
        }
    }

    /// An error naming the offending field.
    pub fn with_target(
        code: impl Into<String>,
        message: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(code, message);
        e.error.target = Some(target.into());
        e
    }
}

/// One error: a machine-readable code, a human message and optionally the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `ValidationError`, `IdentityNotFound`, `Denied`: one of
    /// [`ErrorCode`] from callsign, possibly another from another service.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request field the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl ErrorDetail {
    /// The code as one of callsign's, if it is one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_wire(&self.code)
    }
}

/// `POST /identities` body (api-version 2021-03-07 and later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateIdentityRequest {
    /// Scopes of a token to issue together with the identity; `null` or absent means no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_token_with_scopes: Option<Vec<String>>,
    /// Token lifetime in minutes, 60..=1440 (2022-10-01 and later); `null` means the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_minutes: Option<i64>,
    /// A caller-chosen id (2025-03-02-preview): creating twice with the same one yields the same
    /// identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    /// The same, as 2025-04-01-preview names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// The identity part of responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// Raw id, `8:acs:<resourceId>_<uuid>`.
    pub id: String,
    /// The custom id the identity was created with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_id: Option<String>,
    /// The same, as 2025-04-01-preview names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// When the last token was issued for this identity (`GET` and the listing only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_issued_at: Option<String>,
}

/// `GET /identities` response (callsign's extension), paged as Azure lists are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityPage {
    /// The identities of this page, in id order.
    pub value: Vec<Identity>,
    /// Where the next page is: a reference relative to the endpoint (or to the request URL),
    /// `identities?…` with the continuation; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

/// The query parameters of `GET /identities` and their limits.
pub mod list {
    /// Most identities per page the caller wants.
    pub const MAX_PAGE_SIZE_PARAMETER: &str = "maxpagesize";
    /// The opaque continuation of a `nextLink`.
    pub const CONTINUATION_PARAMETER: &str = "continuationToken";
    /// Only identities whose last token was issued before this RFC 3339 time, or never.
    pub const LAST_TOKEN_ISSUED_BEFORE_PARAMETER: &str = "lastTokenIssuedBefore";
    /// The page size when `maxpagesize` is absent.
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
    /// The largest `maxpagesize` accepted.
    pub const MAX_PAGE_SIZE: u32 = 1000;
}

/// An issued access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessToken {
    /// The JWT.
    pub token: String,
    /// Expiry, ISO 8601 with offset, e.g. `2023-06-28T07:30:11+00:00`.
    pub expires_on: String,
}

/// `POST /identities` response (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateIdentityResponse {
    /// The new (or, for a repeated custom id, the existing) identity.
    pub identity: Identity,
    /// Present only when scopes were requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<AccessToken>,
}

/// `POST /identities/{id}/:issueAccessToken` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueTokenRequest {
    /// Requested scopes; required and non-empty.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Token lifetime in minutes, 60..=1440; `null` means the default (1440).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_minutes: Option<i64>,
}

/// `POST /identities?api-version=2020-07-20-preview2` response (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyIdentity {
    /// Raw id.
    pub id: String,
}

/// `POST /identities/{id}/token?api-version=2020-07-20-preview2` response (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyAccessToken {
    /// Raw id of the identity.
    pub id: String,
    /// The JWT.
    pub token: String,
    /// Expiry, ISO 8601 with offset.
    pub expires_on: String,
}

/// `PATCH /identities/{id}?api-version=2020-07-20-preview2` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyRevokeRequest {
    /// Tokens issued before this instant are revoked; absent means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_valid_from: Option<String>,
}

/// `PUT /access/teamsExtension/tenants/{tenantId}/assignments/{objectId}` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamsExtensionAssignmentRequest {
    /// `resourceAccount` or `user`; required.
    #[serde(default)]
    pub principal_type: Option<String>,
    /// Entra application (client) ids allowed to exchange tokens for this principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ids: Option<Vec<String>>,
}

/// A Teams extension access assignment, as `GET` and `PUT` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamsExtensionAssignment {
    /// The Entra object id of the principal.
    pub object_id: String,
    /// The Entra tenant id.
    pub tenant_id: String,
    /// `resourceAccount` or `user`.
    pub principal_type: String,
    /// Client ids, when the assignment names any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ids: Option<Vec<String>>,
}

/// `PUT /access/entra/assignments/{objectId}` body, and one member of the `PATCH` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntraAssignmentRequest {
    /// The tenant of the principal (a GUID); required.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// `user`, `group`, `tenant` or `teamsResourceAccount`; required.
    #[serde(default)]
    pub principal_type: Option<String>,
    /// The scopes of the tokens the principal's exchanges get (callsign extension; absent:
    /// the trusted issuer's configured scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// An access assignment, as `GET`, `PUT` and `PATCH` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntraAssignment {
    /// The principal's object id (an Entra GUID, or another provider's subject or group).
    pub object_id: String,
    /// The principal's tenant.
    pub tenant_id: String,
    /// `user`, `group`, `tenant` or `teamsResourceAccount`.
    pub principal_type: String,
    /// Scopes, when the assignment names them (callsign extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// One page of `GET /access/entra/assignments`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntraAssignmentPage {
    /// The assignments, in object id order.
    pub value: Vec<EntraAssignment>,
    /// The URL of the next page (path and query), when there is one.
    #[serde(rename = "nextLink", default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

impl EntraAssignmentPage {
    /// The query parameter carrying a page size.
    pub const MAX_PAGE_SIZE_PARAMETER: &str = "maxpagesize";
    /// The query parameter carrying where the next page starts.
    pub const CONTINUATION_PARAMETER: &str = "continuationToken";
    /// Page size when none is asked for.
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
    /// Largest page size.
    pub const MAX_PAGE_SIZE: u32 = 1000;
}

/// The `PATCH /access/entra/assignments` body (JSON merge patch): object id to assignment, or
/// to `null` to delete it. The answer maps each object id put to its assignment.
pub type EntraAssignmentPatch = std::collections::BTreeMap<String, Option<EntraAssignmentRequest>>;

/// `POST /tokens/:introspect` body (callsign extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntrospectRequest {
    /// The JWT to check.
    pub token: String,
}

/// `POST /tokens/:introspect` response (callsign extension): whether a token is in force *now*,
/// revocation and deletion included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectResponse {
    /// True when the signature is ours, the token has not expired, its identity exists and its
    /// tokens have not been revoked since it was issued.
    pub active: bool,
    /// Why the token is not active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<InactiveReason>,
    /// The identity the token was issued to, when the signature is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The token's scopes, when the signature is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The token's expiry, when the signature is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<String>,
}

/// A JSON Web Key Set, served at `/.well-known/jwks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The public keys, newest first.
    pub keys: Vec<Jwk>,
}

/// One public key (RFC 7517) for EC P-256, Ed25519 or RSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC`, `OKP` or `RSA`.
    pub kty: String,
    /// Key id, as in the tokens' `kid` header.
    pub kid: String,
    /// `ES256`, `EdDSA` or `RS256`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// Curve (`P-256`, `Ed25519`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC / OKP x coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_are_read_as_absent() {
        let r: CreateIdentityRequest =
            serde_json::from_str(r#"{"createTokenWithScopes": null, "expiresInMinutes": null}"#)
                .expect("parses");
        assert_eq!(r, CreateIdentityRequest::default());
    }

    #[test]
    fn create_response_omits_absent_token() {
        let r = CreateIdentityResponse {
            identity: Identity {
                id: "8:acs:x_y".into(),
                custom_id: None,
                external_id: None,
                last_token_issued_at: None,
            },
            access_token: None,
        };
        assert_eq!(
            serde_json::to_string(&r).expect("serializes"),
            r#"{"identity":{"id":"8:acs:x_y"}}"#
        );
    }

    #[test]
    fn wrong_types_are_rejected() {
        assert!(serde_json::from_str::<IssueTokenRequest>(r#"{"scopes": "chat"}"#).is_err());
        assert!(
            serde_json::from_str::<IssueTokenRequest>(
                r#"{"scopes": ["chat"], "expiresInMinutes": "60"}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<IssueTokenRequest>(
                r#"{"scopes": ["chat"], "expiresInMinutes": 60.5}"#
            )
            .is_err()
        );
    }

    #[test]
    fn error_target_is_serialized_when_present() {
        let e = ErrorResponse::with_target("ValidationError", "bad", "scopes");
        assert_eq!(
            serde_json::to_string(&e).expect("serializes"),
            r#"{"error":{"code":"ValidationError","message":"bad","target":"scopes"}}"#
        );
    }
}
