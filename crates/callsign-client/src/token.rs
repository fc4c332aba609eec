//! Access tokens and reading their expiry.

use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use time::OffsetDateTime;

/// Decoding that accepts padded or unpadded input.
const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);

/// An access token and when it expires.
///
/// `Debug` does not show the token: it is a bearer credential.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The token (a JWT), to hand to the Chat and Calling SDKs.
    pub token: String,
    /// When it stops being valid.
    pub expires_on: OffsetDateTime,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// A token whose expiry cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token is not formatted correctly: {0}")]
pub struct MalformedToken(pub &'static str);

impl AccessToken {
    /// Reads the expiry from a JWT's payload (`exp`, seconds since the epoch, integer or
    /// fraction), as the SDK credentials do. The signature is not checked: that is the job of
    /// the services that accept the token.
    ///
    /// ```
    /// use callsign_client::AccessToken;
    ///
    /// // header {"alg":"none"}, payload {"exp":1900000000}
    /// let t = AccessToken::from_jwt("eyJhbGciOiJub25lIn0.eyJleHAiOjE5MDAwMDAwMDB9.sig").unwrap();
    /// assert_eq!(t.expires_on.unix_timestamp(), 1_900_000_000);
    /// assert!(AccessToken::from_jwt("not a jwt").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`MalformedToken`] when the token has fewer than three `.`-separated parts, its payload
    /// is not base64 (URL-safe or standard, padded or not) of a JSON object, or `exp` is missing
    /// or not a number of seconds a date can hold.
    pub fn from_jwt(token: impl Into<String>) -> Result<Self, MalformedToken> {
        let token = token.into();
        let expires_on = jwt_expiry(&token)?;
        Ok(Self { token, expires_on })
    }
}

fn jwt_expiry(token: &str) -> Result<OffsetDateTime, MalformedToken> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() < 3 {
        return Err(MalformedToken("expected three `.`-separated parts"));
    }
    let payload = parts[1].trim_end_matches('=');
    let bytes = URL_SAFE
        .decode(payload)
        .or_else(|_| STANDARD.decode(payload))
        .map_err(|_| MalformedToken("the payload is not base64"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| MalformedToken("the payload is not JSON"))?;
    let exp = claims
        .get("exp")
        .ok_or(MalformedToken("the payload has no `exp` claim"))?;
    let at = if let Some(secs) = exp.as_i64() {
        OffsetDateTime::from_unix_timestamp(secs).ok()
    } else {
        exp.as_f64()
            .filter(|s| s.is_finite())
            .and_then(|s| OffsetDateTime::from_unix_timestamp_nanos((s * 1e9) as i128).ok())
    };
    at.ok_or(MalformedToken("`exp` is not a number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE.encode(br#"{"alg":"ES256","typ":"JWT"}"#),
            URL_SAFE.encode(payload)
        )
    }

    #[test]
    fn exp_is_read_as_integer_or_fraction() {
        let t = AccessToken::from_jwt(jwt(r#"{"skypeid":"acs:x","exp":1900000000}"#)).expect("ok");
        assert_eq!(t.expires_on.unix_timestamp(), 1_900_000_000);
        let t = AccessToken::from_jwt(jwt(r#"{"exp":1900000000.5}"#)).expect("ok");
        assert_eq!(
            t.expires_on.unix_timestamp_nanos(),
            1_900_000_000_500_000_000
        );
    }

    #[test]
    fn url_safe_and_standard_alphabets_with_or_without_padding_are_accepted() {
        // "?>~" puts `-`/`_` (URL-safe) or `+`/`/` (standard) into the base64 text.
        let payload = r#"{"exp":1900000000,"n":"?>~?>~"}"#;
        let header = URL_SAFE.encode("{}");
        for body in [
            URL_SAFE.encode(payload),
            STANDARD.encode(payload),
            URL_SAFE.encode(payload).trim_end_matches('=').to_owned(),
        ] {
            let t = AccessToken::from_jwt(format!("{header}.{body}.sig")).expect("ok");
            assert_eq!(t.expires_on.unix_timestamp(), 1_900_000_000);
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            String::new(),
            "a.b".to_owned(),
            "a.!!!.c".to_owned(),
            jwt("not json"),
            jwt(r#"{"iat":1}"#),
            jwt(r#"{"exp":"1900000000"}"#),
            jwt(r#"{"exp":1e300}"#),
        ] {
            assert!(AccessToken::from_jwt(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let t = AccessToken::from_jwt(jwt(r#"{"exp":1900000000}"#)).expect("ok");
        assert!(!format!("{t:?}").contains(&t.token));
    }
}
