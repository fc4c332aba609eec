//! Reading the api-version of a request. Which versions exist and what each offers is
//! `callsign_api::ApiVersion`; this module only maps the query string to it, and failures to
//! the ACS error body.

pub(crate) use callsign_api::{ApiVersion, CustomIdField, Operation};

use crate::error::ApiError;

/// Finds the `api-version` parameter in a query string and parses it.
pub fn from_query(query: Option<&str>) -> Result<ApiVersion, ApiError> {
    let raw = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("api-version="))
        .ok_or(ApiError::MissingApiVersion)?;
    // Query values are form-encoded: `%2D` is `-`, `+` a space.
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let value = decoded.replace('+', " ");
    ApiVersion::parse(&value).ok_or_else(|| {
        let shown: String = value
            .chars()
            .take(40)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        ApiError::UnsupportedApiVersion(format!(
            "The api-version '{shown}' is not supported. Supported versions: {}.",
            ApiVersion::supported_list()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_the_query() {
        assert_eq!(
            from_query(Some("api-version=2023-10-01")).ok(),
            Some(ApiVersion::V2023_10_01)
        );
        assert_eq!(
            from_query(Some("x=1&api-version=2020-07-20-preview2")).ok(),
            Some(ApiVersion::V2020_07_20Preview2)
        );
        assert_eq!(
            from_query(Some("api-version=2026-09-23")).ok(),
            Some(ApiVersion::V2026_09_23)
        );
        assert_eq!(
            from_query(Some("api-version=2026%2D09%2D23")).ok(),
            Some(ApiVersion::V2026_09_23)
        );
        assert!(matches!(from_query(None), Err(ApiError::MissingApiVersion)));
        let Err(ApiError::UnsupportedApiVersion(msg)) = from_query(Some("api-version=2026-09-23+"))
        else {
            panic!("a trailing space is another version");
        };
        assert!(msg.contains("'2026-09-23?'"), "{msg}");
        assert!(matches!(
            from_query(Some("api-version=2019-01-01")),
            Err(ApiError::UnsupportedApiVersion(_))
        ));
    }
}
