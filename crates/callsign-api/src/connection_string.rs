//! Connection strings, `endpoint=https://host/;accesskey=<base64>`: the one grammar the server
//! writes and clients read.
//!
//! Read the way the Azure SDKs read them: `;`-separated `key=value` pairs, keys compared without
//! regard to case, the value being everything after the *first* `=` (so the `=` padding of a
//! base64 key survives), unknown keys ignored, and the last of a repeated key winning. What the
//! endpoint and the key must look like is the reader's business (`callsign-client` checks both).
//!
//! ```
//! use callsign_api::connection_string::{ConnectionStringParts, format};
//!
//! let written = format("https://127.0.0.1:8443/", "cGFzc3dvcmQ=");
//! assert_eq!(written, "endpoint=https://127.0.0.1:8443/;accesskey=cGFzc3dvcmQ=");
//! let parts = ConnectionStringParts::split(&written).unwrap();
//! assert_eq!(parts.endpoint, Some("https://127.0.0.1:8443/"));
//! assert_eq!(parts.access_key, Some("cGFzc3dvcmQ="));
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The `endpoint` and `accesskey` values of a connection string, trimmed, as written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStringParts<'a> {
    /// The `endpoint=` value, if there is one.
    pub endpoint: Option<&'a str>,
    /// The `accesskey=` value, if there is one.
    pub access_key: Option<&'a str>,
}

// Never shows the key.
impl fmt::Debug for ConnectionStringParts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionStringParts")
            .field("endpoint", &self.endpoint)
            .field("access_key", &self.access_key.map(|_| "<redacted>"))
            .finish()
    }
}

/// A part of a connection string that is not `key=value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotKeyValuePairs;

impl fmt::Display for NotKeyValuePairs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "expected `key=value` pairs separated by `;`, e.g. `endpoint=https://host/;accesskey=...`",
        )
    }
}

impl std::error::Error for NotKeyValuePairs {}

impl<'a> ConnectionStringParts<'a> {
    /// Splits `s` into its parts.
    ///
    /// # Errors
    ///
    /// [`NotKeyValuePairs`] when a non-empty part has no `=`.
    pub fn split(s: &'a str) -> Result<Self, NotKeyValuePairs> {
        let mut parts = Self {
            endpoint: None,
            access_key: None,
        };
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or(NotKeyValuePairs)?;
            let name = name.trim();
            if name.eq_ignore_ascii_case("endpoint") {
                parts.endpoint = Some(value.trim());
            } else if name.eq_ignore_ascii_case("accesskey") {
                parts.access_key = Some(value.trim());
            }
        }
        Ok(parts)
    }
}

/// The connection string of `endpoint` (which should end with `/`) and a base64 access key. A
/// secret: print it, never log it.
pub fn format(endpoint: &str, access_key: &str) -> String {
    format!("endpoint={endpoint};accesskey={access_key}")
}

/// The endpoint clients should use for a listener on `addr`: `https://` (or `http://` without
/// TLS), an unspecified address replaced by the loopback address of its family, ending with `/`.
pub fn endpoint_for(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match host {
        IpAddr::V4(ip) => format!("{scheme}://{ip}:{}/", addr.port()),
        IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}/", addr.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        let written = format("http://[::1]:9000/", key);
        let parts = ConnectionStringParts::split(&written).expect("splits");
        assert_eq!(parts.endpoint, Some("http://[::1]:9000/"));
        assert_eq!(parts.access_key, Some(key));
        assert!(!format!("{parts:?}").contains(key));
    }

    #[test]
    fn names_ignore_case_unknown_names_are_skipped_and_the_last_repeat_wins() {
        let parts =
            ConnectionStringParts::split(" AccessKey=a== ; foo=bar ;ENDPOINT=x;endpoint=y;")
                .expect("splits");
        assert_eq!(parts.endpoint, Some("y"));
        assert_eq!(parts.access_key, Some("a=="));
        assert_eq!(
            ConnectionStringParts::split("https://host/"),
            Err(NotKeyValuePairs)
        );
        assert_eq!(
            ConnectionStringParts::split(""),
            Ok(ConnectionStringParts {
                endpoint: None,
                access_key: None
            })
        );
    }

    #[test]
    fn unspecified_listen_addresses_become_loopback() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            endpoint_for(at("0.0.0.0:8443"), true),
            "https://127.0.0.1:8443/"
        );
        assert_eq!(endpoint_for(at("[::]:80"), false), "http://[::1]:80/");
        assert_eq!(
            endpoint_for(at("10.1.2.3:9000"), false),
            "http://10.1.2.3:9000/"
        );
    }
}
