//! HMAC-SHA256 request signing, exactly as the Azure Communication Services SDKs do it.
//!
//! One implementation of the signing rules, used by the server to verify and by clients to sign,
//! so the two can never drift apart.
//!
//! A signed request carries three headers:
//!
//! * `x-ms-date` (or, for older SDKs, `Date`): an RFC 1123 date such as `Mon, 01 Jan 2024 00:00:00 GMT`;
//! * `x-ms-content-sha256`: base64 of the SHA-256 of the exact body bytes;
//! * `Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=<base64>`.
//!
//! The signature is HMAC-SHA256, keyed with the base64-decoded access key, over the string
//! `METHOD \n path?query \n date;host;content-hash` (header *values* joined by `;`).
//!
//! ```
//! use callsign_hmac::{content_hash, string_to_sign, AccessKeyMac};
//!
//! let key = AccessKeyMac::from_base64("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
//! let sts = string_to_sign(
//!     "POST",
//!     "/identities?api-version=2023-10-01",
//!     &["Mon, 01 Jan 2024 00:00:00 GMT", "myres.communication.azure.com", &content_hash(b"")],
//! );
//! assert_eq!(key.sign(&sts), "8wglOM4Sf2wv5qYnvZukZTgIzroR0SBEkmVvn2w+CY8=");
//! ```

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Standard alphabet, padding optional, non-zero trailing bits tolerated: what Python's and
/// Node's base64 decoders accept for a key.
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The authorization scheme name the SDKs send.
pub const SCHEME: &str = "HMAC-SHA256";
/// The header names the SDKs sign, in the order they sign them (current SDKs).
pub const SIGNED_HEADERS: &str = "x-ms-date;host;x-ms-content-sha256";

/// base64(SHA-256(body)), the value of `x-ms-content-sha256`.
pub fn content_hash(body: &[u8]) -> String {
    STANDARD.encode(Sha256::digest(body))
}

/// The string to sign: `METHOD\npath_and_query\nvalue1;value2;...`.
pub fn string_to_sign(method: &str, path_and_query: &str, header_values: &[&str]) -> String {
    let mut s = String::with_capacity(
        method.len()
            + path_and_query.len()
            + header_values.iter().map(|v| v.len() + 1).sum::<usize>()
            + 2,
    );
    s.push_str(method);
    s.push('\n');
    s.push_str(path_and_query);
    s.push('\n');
    for (i, v) in header_values.iter().enumerate() {
        if i > 0 {
            s.push(';');
        }
        s.push_str(v);
    }
    s
}

/// An access key made ready for signing: the decoded key bytes behind an HMAC instance.
///
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct AccessKeyMac {
    mac: HmacSha256,
}

impl std::fmt::Debug for AccessKeyMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKeyMac(<redacted>)")
    }
}

/// The access key is not valid base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKey;

impl std::fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the access key is not valid base64")
    }
}

impl std::error::Error for InvalidKey {}

impl AccessKeyMac {
    /// Builds the MAC from the key as it appears in a connection string (base64).
    ///
    /// Decoding is lenient about missing padding, like the Python and JS SDKs.
    pub fn from_base64(key: &str) -> Result<Self, InvalidKey> {
        let bytes = LENIENT.decode(key.trim()).map_err(|_| InvalidKey)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Builds the MAC from raw key bytes.
    pub fn from_bytes(key: &[u8]) -> Self {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        Self { mac }
    }

    /// base64(HMAC-SHA256(key, string_to_sign)).
    pub fn sign(&self, string_to_sign: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(string_to_sign.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }

    /// The MAC after `parts` have been fed in order: the shared prefix of several candidate
    /// strings to sign, hashed once (see [`AccessKeyMac::verify_rest`]).
    pub fn after(&self, parts: &[&str]) -> Self {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(p.as_bytes());
        }
        Self { mac }
    }

    /// Feeds `parts` after whatever this MAC has seen and checks the decoded signature `sig` in
    /// constant time. `key.after(&[a]).verify_rest(&[b], sig)` equals verifying `a + b`.
    pub fn verify_rest(&self, parts: &[&str], sig: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(p.as_bytes());
        }
        mac.verify_slice(sig).is_ok()
    }

    /// Checks a base64 signature over `string_to_sign` in constant time.
    pub fn verify(&self, string_to_sign: &str, signature_b64: &str) -> bool {
        let Ok(sig) = STANDARD.decode(signature_b64) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(string_to_sign.as_bytes());
        mac.verify_slice(&sig).is_ok()
    }
}

/// A parsed `Authorization: HMAC-SHA256 SignedHeaders=...&Signature=...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    /// Lower-cased header names, in the order their values are signed.
    pub signed_headers: Vec<String>,
    /// The base64 signature.
    pub signature: &'a str,
}

/// Why an `Authorization` header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationError {
    /// Not the `HMAC-SHA256` scheme.
    Scheme,
    /// `SignedHeaders` or `Signature` missing or empty.
    Malformed,
}

impl std::fmt::Display for AuthorizationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthorizationError::Scheme => {
                f.write_str("the Authorization scheme is not HMAC-SHA256")
            }
            AuthorizationError::Malformed => {
                f.write_str("the Authorization header lacks SignedHeaders or Signature")
            }
        }
    }
}

impl std::error::Error for AuthorizationError {}

impl<'a> Authorization<'a> {
    /// Parses the header value.
    pub fn parse(value: &'a str) -> Result<Self, AuthorizationError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').ok_or(AuthorizationError::Scheme)?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(AuthorizationError::Scheme);
        }
        let mut signed_headers = None;
        let mut signature = None;
        for part in rest.trim().split('&') {
            let (k, v) = part.split_once('=').ok_or(AuthorizationError::Malformed)?;
            if k.eq_ignore_ascii_case("SignedHeaders") {
                signed_headers = Some(v);
            } else if k.eq_ignore_ascii_case("Signature") {
                signature = Some(v);
            }
        }
        let (Some(headers), Some(signature)) = (signed_headers, signature) else {
            return Err(AuthorizationError::Malformed);
        };
        if headers.is_empty() || signature.is_empty() {
            return Err(AuthorizationError::Malformed);
        }
        let signed_headers = headers
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect::<Vec<_>>();
        if signed_headers.iter().any(String::is_empty) {
            return Err(AuthorizationError::Malformed);
        }
        Ok(Self {
            signed_headers,
            signature,
        })
    }
}

/// RFC 1123 date as the SDKs send it, e.g. `Mon, 01 Jan 2024 00:00:00 GMT`.
pub fn format_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Parses an RFC 1123 date (`x-ms-date` / `Date`).
pub fn parse_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

/// The headers a client adds to sign one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequestHeaders {
    /// Value of `x-ms-date`.
    pub date: String,
    /// Value of `x-ms-content-sha256`.
    pub content_hash: String,
    /// Value of `Authorization`.
    pub authorization: String,
}

/// Signs a request the way the current SDKs do (`x-ms-date;host;x-ms-content-sha256`).
///
/// `host` is the authority the client connects to (`host[:port]`, port omitted when default),
/// `path_and_query` the request-target exactly as it is sent.
pub fn sign_request(
    key: &AccessKeyMac,
    method: &str,
    path_and_query: &str,
    host: &str,
    body: &[u8],
    now: SystemTime,
) -> SignedRequestHeaders {
    let date = format_date(now);
    let content_hash = content_hash(body);
    let sts = string_to_sign(method, path_and_query, &[&date, host, &content_hash]);
    let authorization = format!(
        "{SCHEME} SignedHeaders={SIGNED_HEADERS}&Signature={}",
        key.sign(&sts)
    );
    SignedRequestHeaders {
        date,
        content_hash,
        authorization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const DATE: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    const HOST: &str = "myres.communication.azure.com";

    fn key() -> AccessKeyMac {
        AccessKeyMac::from_base64(KEY).expect("valid key")
    }

    #[test]
    fn empty_and_empty_object_bodies_hash_to_the_documented_values() {
        assert_eq!(
            content_hash(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(
            content_hash(b"{}"),
            "RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o="
        );
    }

    #[test]
    fn worked_example_a_create_user_with_empty_body() {
        let hash = content_hash(b"");
        let sts = string_to_sign(
            "POST",
            "/identities?api-version=2023-10-01",
            &[DATE, HOST, &hash],
        );
        assert_eq!(
            sts,
            "POST\n/identities?api-version=2023-10-01\nMon, 01 Jan 2024 00:00:00 GMT;myres.communication.azure.com;47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(
            key().sign(&sts),
            "8wglOM4Sf2wv5qYnvZukZTgIzroR0SBEkmVvn2w+CY8="
        );
        assert!(key().verify(&sts, "8wglOM4Sf2wv5qYnvZukZTgIzroR0SBEkmVvn2w+CY8="));
    }

    #[test]
    fn worked_example_b_issue_token_with_body() {
        let body = br#"{"scopes": ["chat"], "expiresInMinutes": 60}"#;
        let hash = content_hash(body);
        assert_eq!(hash, "a8BIM8GkB4D83HsnAPLrJzI/DLagTSlYTNoA8jGCDvc=");
        let sts = string_to_sign(
            "POST",
            "/identities/8%3Aacs%3A00000000-1111-2222-3333-444444444444_00000005-14a2-493b-8a72-5a3a0d000081/:issueAccessToken?api-version=2023-10-01",
            &[DATE, HOST, &hash],
        );
        assert_eq!(
            key().sign(&sts),
            "3IV5ywe2EkFIBTsmAhmJcvhV/4UbG4cL5Ex3GjnyDrI="
        );
    }

    #[test]
    fn python_sdk_unit_test_vectors() {
        let key = AccessKeyMac::from_base64("pw==").expect("valid key");
        let date = "Wed, 13 Apr 2022 18:09:12 GMT";
        let host = "contoso.communicationservices.azure.com";
        let hash = content_hash(b"");
        for (path, want) in [
            ("/", "88MDmJhUR3m5QhFxb8ztShsSwlGrg7g/6XPnWf7QEO4="),
            ("/testPath", "RoCrHjw7fb9fpHSbqvRUY2xa8RBS0YvI1cxI1x8AS38="),
            (
                "/testPath?testQuery=yes",
                "il99+rd6V5O136roX/zVePCNle78HmvC4B7tu9zRH3I=",
            ),
        ] {
            let sts = string_to_sign("GET", path, &[date, host, &hash]);
            assert_eq!(key.sign(&sts), want, "path {path}");
        }
        assert_eq!(
            key.sign("banana"),
            "88EC05aAS9iXnaimtNO78JLjiPtfWryQB/5QYEzEsu8="
        );
    }

    #[test]
    fn verification_fails_for_a_changed_string_or_signature() {
        let sts = "POST\n/identities?api-version=2023-10-01\nx;y;z";
        let sig = key().sign(sts);
        assert!(key().verify(sts, &sig));
        assert!(!key().verify("POST\n/identities?api-version=2022-10-01\nx;y;z", &sig));
        assert!(!key().verify(sts, "not base64 !"));
        assert!(!key().verify(sts, &sig[..sig.len() - 4]));
        let other = AccessKeyMac::from_bytes(b"another key");
        assert!(!other.verify(sts, &sig));
    }

    #[test]
    fn authorization_header_parses_in_any_order_and_case() {
        let a = Authorization::parse(
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=abc=",
        )
        .expect("parses");
        assert_eq!(
            a.signed_headers,
            ["x-ms-date", "host", "x-ms-content-sha256"]
        );
        assert_eq!(a.signature, "abc=");
        let b = Authorization::parse(
            "hmac-sha256 Signature=abc=&SignedHeaders=Date;Host;x-ms-content-sha256",
        )
        .expect("parses");
        assert_eq!(b.signed_headers, ["date", "host", "x-ms-content-sha256"]);
        assert_eq!(
            Authorization::parse("Bearer abc"),
            Err(AuthorizationError::Scheme)
        );
        assert_eq!(
            Authorization::parse("HMAC-SHA256"),
            Err(AuthorizationError::Scheme)
        );
        assert_eq!(
            Authorization::parse("HMAC-SHA256 SignedHeaders=&Signature=x"),
            Err(AuthorizationError::Malformed)
        );
        assert_eq!(
            Authorization::parse("HMAC-SHA256 Signature=x"),
            Err(AuthorizationError::Malformed)
        );
    }

    #[test]
    fn dates_round_trip_in_rfc1123() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        assert_eq!(format_date(t), DATE);
        assert_eq!(parse_date(DATE), Some(t));
        assert_eq!(parse_date("yesterday"), None);
    }

    #[test]
    fn sign_request_matches_worked_example_a() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let h = sign_request(
            &key(),
            "POST",
            "/identities?api-version=2023-10-01",
            HOST,
            b"",
            t,
        );
        assert_eq!(h.date, DATE);
        assert_eq!(
            h.authorization,
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=8wglOM4Sf2wv5qYnvZukZTgIzroR0SBEkmVvn2w+CY8="
        );
    }

    #[test]
    fn keys_decode_with_or_without_padding_and_reject_garbage() {
        assert!(AccessKeyMac::from_base64("pw==").is_ok());
        assert!(AccessKeyMac::from_base64("pw").is_ok());
        assert_eq!(AccessKeyMac::from_base64("p*w").err(), Some(InvalidKey));
    }
}
