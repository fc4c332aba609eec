//! The api-versions callsign serves and what each one offers: the one place that knows.
//!
//! The server routes by these, the client and the load generator send them, and the
//! `api-supported-versions` header lists them.

use std::fmt;

/// An api-version, in release order (so `>=` means "this one or a later one").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiVersion {
    /// The seed's package (azure-communication-administration 1.0.0b1–b4): 200 on create,
    /// `/token` and `PATCH` revoke.
    V2020_07_20Preview2,
    /// First GA (identity 1.0.x, JS 1.0.0).
    V2021_03_07,
    /// Teams token exchange preview.
    V2021_10_31Preview,
    /// GA, as advertised by the real service.
    V2021_11_01,
    /// Identity 1.1.0–1.2.0, JS 1.1.0.
    V2022_06_01,
    /// Adds `expiresInMinutes` (identity 1.3.x, JS 1.2.0).
    V2022_10_01,
    /// GA, as advertised by the real service.
    V2023_08_01,
    /// Adds the join scopes (identity 1.4.0–1.5.0, JS 1.3.x).
    V2023_10_01,
    /// Adds `customId`, `GET /identities/{id}` and the Teams extension.
    V2025_03_02Preview,
    /// `externalId` (the custom id under another name), 200 for an existing one, and
    /// `GET /identities/{id}`; no Teams extension.
    V2025_04_01Preview,
    /// GA: the 2023-10-01 identity operations plus the Teams extension; no custom ids.
    V2025_06_30,
    /// GA, same operations as 2025-06-30.
    V2026_07_22,
    /// GA, same operations as 2025-06-30 (the .NET SDK's next default).
    V2026_09_23,
}

/// What a client may call, by api-version. `GET /health`, the JWKS and callsign's own
/// introspection are not versioned and not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /identities`.
    CreateIdentity,
    /// `DELETE /identities/{id}`.
    DeleteIdentity,
    /// `POST /identities/{id}/:issueAccessToken` (`/token` in 2020-07-20-preview2).
    IssueAccessToken,
    /// `POST /identities/{id}/:revokeAccessTokens` (`PATCH /identities/{id}` in
    /// 2020-07-20-preview2).
    RevokeAccessTokens,
    /// `GET /identities/{id}`.
    GetIdentity,
    /// `GET /identities` (callsign's extension): the identities of the resource, paged.
    ListIdentities,
    /// `POST /teamsUser/:exchangeAccessToken`.
    ExchangeTeamsUserToken,
    /// `POST /access/teamsExtension/:exchangeAccessToken`.
    ExchangeTeamsExtensionToken,
    /// `GET`, `PUT`, `DELETE /access/teamsExtension/tenants/{tenantId}/assignments/{objectId}`.
    TeamsExtensionAssignments,
    /// `POST /access/entra/:exchangeAccessToken`.
    ExchangeEntraToken,
    /// `GET`, `PATCH /access/entra/assignments`; `GET`, `PUT`, `DELETE
    /// /access/entra/assignments/{objectId}`.
    EntraAssignments,
}

impl ApiVersion {
    /// Every served version, oldest first.
    pub const ALL: [ApiVersion; 13] = [
        ApiVersion::V2020_07_20Preview2,
        ApiVersion::V2021_03_07,
        ApiVersion::V2021_10_31Preview,
        ApiVersion::V2021_11_01,
        ApiVersion::V2022_06_01,
        ApiVersion::V2022_10_01,
        ApiVersion::V2023_08_01,
        ApiVersion::V2023_10_01,
        ApiVersion::V2025_03_02Preview,
        ApiVersion::V2025_04_01Preview,
        ApiVersion::V2025_06_30,
        ApiVersion::V2026_07_22,
        ApiVersion::V2026_09_23,
    ];

    /// The version callsign's own client and CLI speak unless told otherwise: the newest one
    /// every released SDK generation since 2023 knows.
    pub const CLIENT_DEFAULT: ApiVersion = ApiVersion::V2023_10_01;

    /// The query-string value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V2020_07_20Preview2 => "2020-07-20-preview2",
            ApiVersion::V2021_03_07 => "2021-03-07",
            ApiVersion::V2021_10_31Preview => "2021-10-31-preview",
            ApiVersion::V2021_11_01 => "2021-11-01",
            ApiVersion::V2022_06_01 => "2022-06-01",
            ApiVersion::V2022_10_01 => "2022-10-01",
            ApiVersion::V2023_08_01 => "2023-08-01",
            ApiVersion::V2023_10_01 => "2023-10-01",
            ApiVersion::V2025_03_02Preview => "2025-03-02-preview",
            ApiVersion::V2025_04_01Preview => "2025-04-01-preview",
            ApiVersion::V2025_06_30 => "2025-06-30",
            ApiVersion::V2026_07_22 => "2026-07-22",
            ApiVersion::V2026_09_23 => "2026-09-23",
        }
    }

    /// The version named exactly `value`, if served.
    pub fn parse(value: &str) -> Option<Self> {
        ApiVersion::ALL.into_iter().find(|v| v.as_str() == value)
    }

    /// Whether `op` exists in this version.
    pub fn offers(self, op: Operation) -> bool {
        use ApiVersion as V;
        match op {
            Operation::CreateIdentity
            | Operation::DeleteIdentity
            | Operation::IssueAccessToken
            | Operation::RevokeAccessTokens => true,
            Operation::GetIdentity | Operation::ListIdentities => self.has_custom_id(),
            Operation::ExchangeTeamsUserToken => self >= V::V2021_10_31Preview,
            Operation::ExchangeEntraToken | Operation::EntraAssignments => {
                self == V::V2025_03_02Preview
            }
            Operation::ExchangeTeamsExtensionToken | Operation::TeamsExtensionAssignments => {
                matches!(
                    self,
                    V::V2025_03_02Preview | V::V2025_06_30 | V::V2026_07_22 | V::V2026_09_23
                )
            }
        }
    }

    /// The oldest preview, with its own routes and status codes.
    pub fn is_legacy(self) -> bool {
        self == ApiVersion::V2020_07_20Preview2
    }

    /// `expiresInMinutes` is honoured.
    pub fn has_expiry(self) -> bool {
        self >= ApiVersion::V2022_10_01
    }

    /// `chat.join`, `chat.join.limited` and `voip.join` exist.
    pub fn has_join_scopes(self) -> bool {
        self >= ApiVersion::V2023_10_01
    }

    /// A caller-chosen id on create and `GET /identities/{id}` exist: the two previews only.
    /// The GA versions after them define neither; their request models do not forbid unknown
    /// properties, so there such a field in a create body is ignored like any unknown field and
    /// a new identity is created every time, as the service does.
    pub fn has_custom_id(self) -> bool {
        self.custom_id_field().is_some()
    }

    /// The wire name of the caller-chosen id: `customId` in 2025-03-02-preview, `externalId` in
    /// 2025-04-01-preview (the same concept; the preview renamed it back and forth).
    pub fn custom_id_field(self) -> Option<CustomIdField> {
        match self {
            ApiVersion::V2025_03_02Preview => Some(CustomIdField::CustomId),
            ApiVersion::V2025_04_01Preview => Some(CustomIdField::ExternalId),
            _ => None,
        }
    }

    /// Whether a create that finds the identity of an existing custom id answers 200 (only
    /// 2025-04-01-preview documents that; 2025-03-02-preview answers 201 either way).
    pub fn existing_identity_is_200(self) -> bool {
        self == ApiVersion::V2025_04_01Preview
    }

    /// `a, b, c` of every served version, for messages and the `api-supported-versions` header.
    pub fn supported_list() -> String {
        ApiVersion::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How a version names the caller-chosen id of an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomIdField {
    /// `customId` (2025-03-02-preview).
    CustomId,
    /// `externalId` (2025-04-01-preview).
    ExternalId,
}

impl CustomIdField {
    /// The JSON field name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CustomIdField::CustomId => "customId",
            CustomIdField::ExternalId => "externalId",
        }
    }

    /// The query parameter of `GET /identities` that filters by a prefix of this field.
    pub const fn prefix_parameter(self) -> &'static str {
        match self {
            CustomIdField::CustomId => "customIdPrefix",
            CustomIdField::ExternalId => "externalIdPrefix",
        }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApiVersion {
    type Err = UnknownApiVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiVersion::parse(s).ok_or(UnknownApiVersion)
    }
}

/// A string that names no served api-version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownApiVersion;

impl fmt::Display for UnknownApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a supported api-version (supported: {})",
            ApiVersion::supported_list()
        )
    }
}

impl std::error::Error for UnknownApiVersion {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_release_order_and_round_trips() {
        assert!(ApiVersion::ALL.windows(2).all(|w| w[0] < w[1]));
        for v in ApiVersion::ALL {
            assert_eq!(ApiVersion::parse(v.as_str()), Some(v));
            assert_eq!(v.as_str().parse::<ApiVersion>(), Ok(v));
        }
        assert_eq!(ApiVersion::parse("2019-01-01"), None);
        assert_eq!(ApiVersion::parse("2023-10-01 "), None);
    }

    #[test]
    fn features_follow_the_spec() {
        use ApiVersion as V;
        assert!(!V::V2022_06_01.has_expiry());
        assert!(V::V2022_10_01.has_expiry());
        assert!(!V::V2023_08_01.has_join_scopes());
        assert!(V::V2026_09_23.has_join_scopes());
        assert!(V::V2025_04_01Preview.offers(Operation::GetIdentity));
        assert!(!V::V2025_06_30.offers(Operation::GetIdentity));
        for v in ApiVersion::ALL {
            assert_eq!(
                v.offers(Operation::ListIdentities),
                v.offers(Operation::GetIdentity),
                "{v}"
            );
        }
        assert!(!V::V2021_03_07.offers(Operation::ExchangeTeamsUserToken));
        assert!(V::V2026_07_22.offers(Operation::TeamsExtensionAssignments));
        assert!(!V::V2025_04_01Preview.offers(Operation::TeamsExtensionAssignments));
        assert!(!V::V2023_10_01.offers(Operation::ExchangeTeamsExtensionToken));
        assert!(V::V2025_03_02Preview.offers(Operation::ExchangeEntraToken));
        assert!(V::V2025_03_02Preview.offers(Operation::EntraAssignments));
        assert!(!V::V2025_06_30.offers(Operation::EntraAssignments));
        assert!(!V::V2025_04_01Preview.offers(Operation::ExchangeEntraToken));
    }
}
