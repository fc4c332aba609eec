//! How the client signs a request: the one ACS HMAC implementation of `callsign-hmac`, fed with
//! exactly what is sent.
//!
//! * host: the URL's authority, `host[:port]`, the port left out when it is the scheme's
//!   default (as the JS SDK and `reqwest`'s `Host` header do);
//! * path and query: the request-target as sent, ids percent-encoded (`8%3Aacs%3A…`);
//! * body: the exact bytes sent (empty when there is none).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use callsign_client::signing::sign;
//! use callsign_client::ConnectionString;
//!
//! // Worked example (a) of the protocol notes: create a user, empty body.
//! let cs = ConnectionString::parse(
//!     "endpoint=https://myres.communication.azure.com/;accesskey=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
//! ).unwrap();
//! let url = cs.endpoint().join("identities?api-version=2023-10-01").unwrap();
//! let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200); // Mon, 01 Jan 2024 00:00:00 GMT
//! let signed = sign(&cs, "POST", &url, b"", date);
//! assert_eq!(signed.date, "Mon, 01 Jan 2024 00:00:00 GMT");
//! assert!(signed.authorization.ends_with("&Signature=8wglOM4Sf2wv5qYnvZukZTgIzroR0SBEkmVvn2w+CY8="));
//! ```

use std::time::SystemTime;

use reqwest::Url;

use crate::ConnectionString;
pub use callsign_hmac::SignedRequestHeaders;

/// The `host` value signed for `url`: `host[:port]`, default port omitted.
pub fn signing_host(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The request-target of `url` as sent: path, then `?query` when there is one.
pub fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Signs a request to `url` with the key of `credentials`, dated `now`: the values of the
/// `x-ms-date`, `x-ms-content-sha256` and `Authorization` headers.
pub fn sign(
    credentials: &ConnectionString,
    method: &str,
    url: &Url,
    body: &[u8],
    now: SystemTime,
) -> SignedRequestHeaders {
    callsign_hmac::sign_request(
        credentials.key(),
        method,
        &path_and_query(url),
        &signing_host(url),
        body,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keeps_non_default_ports_only() {
        let url = |s: &str| Url::parse(s).expect("url");
        assert_eq!(signing_host(&url("https://h.example:443/x")), "h.example");
        assert_eq!(signing_host(&url("http://h.example:80/x")), "h.example");
        assert_eq!(
            signing_host(&url("https://127.0.0.1:8443/")),
            "127.0.0.1:8443"
        );
        assert_eq!(signing_host(&url("http://[::1]:9000/")), "[::1]:9000");
        assert_eq!(signing_host(&url("http://h.example:443/")), "h.example:443");
    }

    #[test]
    fn path_and_query_is_the_request_target_as_sent() {
        let url = Url::parse(
            "https://h/identities/8%3Aacs%3Ar_u/:issueAccessToken?api-version=2023-10-01",
        )
        .expect("url");
        assert_eq!(
            path_and_query(&url),
            "/identities/8%3Aacs%3Ar_u/:issueAccessToken?api-version=2023-10-01"
        );
        assert_eq!(path_and_query(&Url::parse("https://h").expect("url")), "/");
    }
}
