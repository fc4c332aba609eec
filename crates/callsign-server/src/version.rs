//! api-versions and what each one offers.

use std::fmt;

use crate::error::ApiError;

/// An api-version callsign serves, in release order.
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
    /// Adds `customId` and `GET /identities/{id}`.
    V2025_03_02Preview,
}

impl ApiVersion {
    /// Every served version, oldest first.
    pub const ALL: [ApiVersion; 9] = [
        ApiVersion::V2020_07_20Preview2,
        ApiVersion::V2021_03_07,
        ApiVersion::V2021_10_31Preview,
        ApiVersion::V2021_11_01,
        ApiVersion::V2022_06_01,
        ApiVersion::V2022_10_01,
        ApiVersion::V2023_08_01,
        ApiVersion::V2023_10_01,
        ApiVersion::V2025_03_02Preview,
    ];

    /// The query-string value.
    pub fn as_str(self) -> &'static str {
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
        }
    }

    /// Finds the `api-version` parameter in a query string and parses it.
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let value = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("api-version="))
            .ok_or(ApiError::MissingApiVersion)?;
        ApiVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == value)
            .ok_or_else(|| {
                let shown: String = value
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                    .take(40)
                    .collect();
                ApiError::UnsupportedApiVersion(format!(
                    "The api-version '{shown}' is not supported. Supported versions: {}.",
                    supported_list()
                ))
            })
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

    /// `customId` on create and `GET /identities/{id}` exist.
    pub fn has_custom_id(self) -> bool {
        self >= ApiVersion::V2025_03_02Preview
    }

    /// Teams token exchange exists.
    pub fn has_teams_exchange(self) -> bool {
        self >= ApiVersion::V2021_10_31Preview
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `a, b, c` of every served version, for messages and the `api-supported-versions` header.
pub fn supported_list() -> String {
    ApiVersion::ALL
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_the_query() {
        assert_eq!(
            ApiVersion::from_query(Some("api-version=2023-10-01")).ok(),
            Some(ApiVersion::V2023_10_01)
        );
        assert_eq!(
            ApiVersion::from_query(Some("x=1&api-version=2020-07-20-preview2")).ok(),
            Some(ApiVersion::V2020_07_20Preview2)
        );
        assert!(matches!(
            ApiVersion::from_query(None),
            Err(ApiError::MissingApiVersion)
        ));
        assert!(matches!(
            ApiVersion::from_query(Some("api-version=2019-01-01")),
            Err(ApiError::UnsupportedApiVersion(_))
        ));
    }

    #[test]
    fn the_list_matches_the_wire_crate() {
        let ours: Vec<&str> = ApiVersion::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(ours, callsign_api::API_VERSIONS);
    }

    #[test]
    fn features_follow_release_order() {
        assert!(!ApiVersion::V2022_06_01.has_expiry());
        assert!(ApiVersion::V2022_10_01.has_expiry());
        assert!(!ApiVersion::V2023_08_01.has_join_scopes());
        assert!(ApiVersion::V2023_10_01.has_join_scopes());
        assert!(ApiVersion::V2025_03_02Preview.has_custom_id());
        assert!(!ApiVersion::V2021_03_07.has_teams_exchange());
    }
}
