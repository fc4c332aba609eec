//! `GET /identities` (callsign's extension): the query of a listing and its continuation.
//!
//! A listing is keyset-paged by identity id: the continuation names the last id a page covered
//! and the filters in force, so identities created or deleted meanwhile never move the others
//! and no identity that exists throughout is skipped or listed twice. The continuation is opaque
//! to clients (base64url of a small JSON object) and checked when it comes back: one that does
//! not decode, names another resource's identity or disagrees with the filters of the request
//! is a 400, never a store error.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callsign_api::list::{
    CONTINUATION_PARAMETER, DEFAULT_PAGE_SIZE, LAST_TOKEN_ISSUED_BEFORE_PARAMETER, MAX_PAGE_SIZE,
    MAX_PAGE_SIZE_PARAMETER,
};
use callsign_core::{CustomId, IdentityId, ResourceId};
use callsign_store::IdentityFilter;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;
use crate::version::{ApiVersion, CustomIdField};

/// A listing request, read from the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListQuery {
    /// Most identities in the page.
    pub(crate) page_size: u32,
    /// Which identities.
    pub(crate) filter: IdentityFilter,
    /// Where the page starts (exclusive); `None` for the first page.
    pub(crate) after: Option<IdentityId>,
}

/// The continuation as encoded in `continuationToken`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Continuation {
    /// The format; only 1 exists.
    v: u8,
    /// The last identity id the previous page covered.
    after: String,
    /// The custom id prefix filter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// The token time filter, milliseconds since the epoch, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before_ms: Option<i64>,
}

const CONTINUATION_VERSION: u8 = 1;

/// The parameters of a listing, as they arrived (decoded, each at most once).
#[derive(Debug, Default)]
struct RawParameters {
    page_size: Option<String>,
    prefix: Option<String>,
    before: Option<String>,
    continuation: Option<String>,
}

impl ListQuery {
    /// Reads the query string of `GET /identities` in `version`. Unknown parameters are ignored;
    /// a known one given twice, out of range or malformed is a 400 naming it.
    pub(crate) fn parse(
        query: Option<&str>,
        version: ApiVersion,
        resource: ResourceId,
    ) -> Result<Self, ApiError> {
        let field = version
            .custom_id_field()
            .ok_or_else(|| crate::http::not_in_version(version))?;
        let raw = RawParameters::read(query.unwrap_or(""), field)?;
        let page_size = match raw.page_size {
            None => DEFAULT_PAGE_SIZE,
            Some(v) => parse_page_size(&v)?,
        };
        let filter = IdentityFilter {
            custom_id_prefix: raw.prefix.map(|p| parse_prefix(&p, field)).transpose()?,
            last_token_issued_before: raw.before.as_deref().map(parse_before).transpose()?,
        };
        let (after, filter) = match raw.continuation {
            None => (None, filter),
            Some(token) => {
                let (after, filter) = continue_from(&token, filter, resource)?;
                (Some(after), filter)
            }
        };
        Ok(ListQuery {
            page_size,
            filter,
            after,
        })
    }

    /// The `nextLink` of a page that ends after `last`: a relative reference (no leading `/`,
    /// so that it resolves under an endpoint with a path as well as against the request URL),
    /// with the api-version, the page size and the continuation (which carries the filters).
    pub(crate) fn next_link(&self, version: ApiVersion, last: &IdentityId) -> String {
        let continuation = Continuation {
            v: CONTINUATION_VERSION,
            after: last.to_string(),
            prefix: self.filter.custom_id_prefix.clone(),
            before_ms: self
                .filter
                .last_token_issued_before
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
        };
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(&continuation).unwrap_or_default();
        format!(
            "identities?api-version={version}&{MAX_PAGE_SIZE_PARAMETER}={}&{CONTINUATION_PARAMETER}={}",
            self.page_size,
            URL_SAFE_NO_PAD.encode(json)
        )
    }
}

impl RawParameters {
    fn read(query: &str, field: CustomIdField) -> Result<Self, ApiError> {
        let mut raw = RawParameters::default();
        let other_field = match field {
            CustomIdField::CustomId => CustomIdField::ExternalId,
            CustomIdField::ExternalId => CustomIdField::CustomId,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            // A name that does not decode is no parameter of the listing's.
            let name = form_decode(name).unwrap_or_default();
            let (slot, target) = match name.as_str() {
                MAX_PAGE_SIZE_PARAMETER => (&mut raw.page_size, MAX_PAGE_SIZE_PARAMETER),
                LAST_TOKEN_ISSUED_BEFORE_PARAMETER => {
                    (&mut raw.before, LAST_TOKEN_ISSUED_BEFORE_PARAMETER)
                }
                CONTINUATION_PARAMETER => (&mut raw.continuation, CONTINUATION_PARAMETER),
                n if n == field.prefix_parameter() => (&mut raw.prefix, field.prefix_parameter()),
                n if n == other_field.prefix_parameter() => {
                    // Ignoring a filter would list (and let a caller act on) more than it asked.
                    return Err(ApiError::validation(
                        format!(
                            "api-version filters the custom id with {}.",
                            field.prefix_parameter()
                        ),
                        other_field.prefix_parameter(),
                    ));
                }
                _ => continue,
            };
            let value = form_decode(value).ok_or_else(|| {
                ApiError::validation(format!("{target} is not valid UTF-8."), target)
            })?;
            if slot.replace(value).is_some() {
                return Err(ApiError::validation(
                    format!("{target} must be given at most once."),
                    target,
                ));
            }
        }
        Ok(raw)
    }
}

/// A form-encoded query component: `%XX` escapes, `+` a space; `None` when the bytes are not
/// UTF-8 (a filter silently turned into U+FFFD would list something else than asked).
pub(crate) fn form_decode(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Decimal digits only (no sign, no spaces), 1 to the maximum.
pub(crate) fn parse_page_size(value: &str) -> Result<u32, ApiError> {
    Some(value)
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
        .ok_or_else(|| {
            ApiError::validation(
                format!("{MAX_PAGE_SIZE_PARAMETER} must be an integer from 1 to {MAX_PAGE_SIZE}."),
                MAX_PAGE_SIZE_PARAMETER,
            )
        })
}

/// A prefix follows the rules of a custom id (1 to 256 characters, no control characters).
fn parse_prefix(value: &str, field: CustomIdField) -> Result<String, ApiError> {
    let target = field.prefix_parameter();
    CustomId::parse(value)
        .map(|c| c.as_str().to_owned())
        .map_err(|e| {
            let message = e.to_string().replace("CustomId", target);
            ApiError::validation(message, target)
        })
}

/// An RFC 3339 time, to the millisecond (the precision token times are stored with).
fn parse_before(value: &str) -> Result<OffsetDateTime, ApiError> {
    let whole_ms = |t: OffsetDateTime| {
        let nanos = t.unix_timestamp_nanos();
        OffsetDateTime::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(1_000_000))
    };
    OffsetDateTime::parse(value, &Rfc3339)
        .ok()
        .and_then(|t| whole_ms(t).ok())
        .ok_or_else(|| {
            ApiError::validation(
                format!("{LAST_TOKEN_ISSUED_BEFORE_PARAMETER} must be an RFC 3339 date-time."),
                LAST_TOKEN_ISSUED_BEFORE_PARAMETER,
            )
        })
}

fn invalid_continuation() -> ApiError {
    ApiError::validation(
        format!("{CONTINUATION_PARAMETER} is not a continuation of this listing."),
        CONTINUATION_PARAMETER,
    )
}

/// The id a continuation resumes after and the filters it carries, once it is known to be one
/// this listing handed out: it decodes, names an identity of this resource and agrees with the
/// request's filters (a request that repeats them must repeat them unchanged; one that omits
/// them inherits them).
fn continue_from(
    token: &str,
    filter: IdentityFilter,
    resource: ResourceId,
) -> Result<(IdentityId, IdentityFilter), ApiError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid_continuation())?;
    let c: Continuation = serde_json::from_slice(&bytes).map_err(|_| invalid_continuation())?;
    if c.v != CONTINUATION_VERSION {
        return Err(invalid_continuation());
    }
    let after = IdentityId::parse(&c.after)
        .ok()
        .filter(|id| id.resource() == resource)
        .ok_or_else(invalid_continuation)?;
    let token_filter = IdentityFilter {
        custom_id_prefix: c
            .prefix
            .map(|p| CustomId::parse(&p).map(|c| c.as_str().to_owned()))
            .transpose()
            .map_err(|_| invalid_continuation())?,
        last_token_issued_before: c
            .before_ms
            .map(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000))
            .transpose()
            .map_err(|_| invalid_continuation())?,
    };
    let agrees = |given: bool, same: bool| !given || same;
    if !agrees(
        filter.custom_id_prefix.is_some(),
        filter.custom_id_prefix == token_filter.custom_id_prefix,
    ) || !agrees(
        filter.last_token_issued_before.is_some(),
        filter.last_token_issued_before == token_filter.last_token_issued_before,
    ) {
        return Err(invalid_continuation());
    }
    Ok((after, token_filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: ApiVersion = ApiVersion::V2025_03_02Preview;

    fn parse(query: &str, resource: ResourceId) -> Result<ListQuery, ApiError> {
        ListQuery::parse(Some(query), V, resource)
    }

    fn target(e: ApiError) -> Option<&'static str> {
        match e {
            ApiError::Validation { target, .. } => target,
            _ => None,
        }
    }

    /// The continuation of a `nextLink`, as a client sends it back.
    fn continuation_of(link: &str) -> &str {
        link.split("continuationToken=")
            .nth(1)
            .expect("a continuation")
    }

    #[test]
    fn defaults_and_filters_are_read_form_decoded() {
        let r = ResourceId::new_random();
        let q = parse("api-version=2025-03-02-preview", r).expect("valid");
        assert_eq!(q.page_size, DEFAULT_PAGE_SIZE);
        assert_eq!(q.filter, IdentityFilter::default());
        assert_eq!(q.after, None);
        let q = parse(
            "maxpagesize=1000&customIdPrefix=a+b%2Fc&lastTokenIssuedBefore=2026-01-02T03:04:05.678999%2B01:00",
            r,
        )
        .expect("valid");
        assert_eq!(q.page_size, 1000);
        assert_eq!(q.filter.custom_id_prefix.as_deref(), Some("a b/c"));
        let before = q.filter.last_token_issued_before.expect("before");
        assert_eq!(before.unix_timestamp(), 1_767_319_445);
        assert_eq!(before.millisecond(), 678, "to the millisecond");
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let r = ResourceId::new_random();
        for (query, want) in [
            ("maxpagesize=0", "maxpagesize"),
            ("maxpagesize=1001", "maxpagesize"),
            ("maxpagesize=%2B5", "maxpagesize"),
            ("maxpagesize=1&maxpagesize=1", "maxpagesize"),
            ("lastTokenIssuedBefore=2026-01-01", "lastTokenIssuedBefore"),
            ("customIdPrefix=%07", "customIdPrefix"),
            ("externalIdPrefix=a", "externalIdPrefix"),
            ("continuationToken=%FF", "continuationToken"),
        ] {
            let e = parse(query, r).expect_err(query);
            assert_eq!(target(e), Some(want), "{query}");
        }
        let e = ListQuery::parse(Some("customIdPrefix=a"), ApiVersion::V2025_04_01Preview, r)
            .expect_err("the other name");
        assert_eq!(target(e), Some("customIdPrefix"));
        assert!(matches!(
            ListQuery::parse(None, ApiVersion::V2023_10_01, r),
            Err(ApiError::UnsupportedApiVersion(_))
        ));
    }

    #[test]
    fn a_continuation_resumes_with_its_filters_and_only_in_its_resource() {
        let r = ResourceId::new_random();
        let first = parse(
            "maxpagesize=7&customIdPrefix=ops%2F&lastTokenIssuedBefore=2026-01-01T00:00:00Z",
            r,
        )
        .expect("valid");
        let last = IdentityId::new_random(r);
        let link = first.next_link(V, &last);
        assert!(
            link.starts_with(
                "identities?api-version=2025-03-02-preview&maxpagesize=7&continuationToken="
            ),
            "{link}"
        );
        let token = continuation_of(&link);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );

        let next = parse(&format!("maxpagesize=7&continuationToken={token}"), r).expect("resumes");
        assert_eq!(next.after, Some(last));
        assert_eq!(next.filter, first.filter);
        // Repeating the filters unchanged is fine; changing them is not.
        let same =
            parse(&format!("continuationToken={token}&customIdPrefix=ops/"), r).expect("same");
        assert_eq!(same.filter, first.filter);
        let e = parse(&format!("continuationToken={token}&customIdPrefix=dev/"), r)
            .expect_err("changed");
        assert_eq!(target(e), Some("continuationToken"));
        let e = parse(
            &format!("continuationToken={token}&lastTokenIssuedBefore=2027-01-01T00:00:00Z"),
            r,
        )
        .expect_err("changed");
        assert_eq!(target(e), Some("continuationToken"));
        // Another resource cannot resume from it.
        let e = parse(
            &format!("continuationToken={token}"),
            ResourceId::new_random(),
        )
        .expect_err("foreign");
        assert_eq!(target(e), Some("continuationToken"));
        // Nor can a token cut short or with a byte changed anywhere.
        for cut in 1..token.len() {
            assert!(
                parse(&format!("continuationToken={}", &token[..cut]), r).is_err(),
                "{cut}"
            );
        }
    }
}
