//! Connection strings: `endpoint=https://host/;accesskey=<base64>`.

use std::fmt;
use std::str::FromStr;

use callsign_api::connection_string::ConnectionStringParts;
use callsign_hmac::AccessKeyMac;
use reqwest::Url;

use crate::Error;

/// A parsed connection string: the resource's endpoint and its access key.
///
/// Parsed the way the Azure SDKs read it ([`callsign_api::connection_string`], the grammar the
/// server writes): `;`-separated `key=value` pairs, keys compared without regard to case, the
/// value being everything after the *first* `=` (so the `=` padding of a base64 key survives),
/// unknown keys ignored, and the last of a repeated key winning. An endpoint without a scheme gets `https://`, as the Python SDK does; unlike the Python SDK an
/// explicit `http://` endpoint is kept (useful for a server behind a TLS-terminating proxy, or
/// for tests).
///
/// `Debug` never shows the key.
///
/// ```
/// use callsign_client::ConnectionString;
///
/// let cs: ConnectionString = "Endpoint=https://127.0.0.1:8443/;AccessKey=cGFzc3dvcmQ="
///     .parse()
///     .unwrap();
/// assert_eq!(cs.endpoint().as_str(), "https://127.0.0.1:8443/");
/// assert!(!format!("{cs:?}").contains("cGFzc3dvcmQ"));
///
/// let err = ConnectionString::parse("endpoint=https://127.0.0.1:8443/").unwrap_err();
/// assert!(err.to_string().contains("accesskey"));
/// ```
#[derive(Clone)]
pub struct ConnectionString {
    endpoint: Url,
    key: AccessKeyMac,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("endpoint", &self.endpoint.as_str())
            .field("accesskey", &"<redacted>")
            .finish()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidConnectionString(reason.into())
}

impl ConnectionString {
    /// Parses `endpoint=...;accesskey=...`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConnectionString`] when a part is not `key=value`, the endpoint or the
    /// access key is missing or empty, the endpoint is not an `http`/`https` URL with a host (and
    /// no query, fragment or credentials), or the key is not base64. The message never contains
    /// the key.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let ConnectionStringParts {
            endpoint,
            access_key: key,
        } = ConnectionStringParts::split(s).map_err(|e| invalid(e.to_string()))?;
        let endpoint = match endpoint {
            Some(e) if !e.is_empty() => parse_endpoint(e)?,
            Some(_) => return Err(invalid("the endpoint is empty")),
            None => return Err(invalid("no `endpoint=` part")),
        };
        let key = match key {
            Some(k) if !k.is_empty() => AccessKeyMac::from_base64(k)
                .map_err(|_| invalid("the access key is not valid base64"))?,
            Some(_) => return Err(invalid("the access key is empty")),
            None => return Err(invalid("no `accesskey=` part")),
        };
        Ok(Self { endpoint, key })
    }

    /// Builds a connection string from an endpoint URL and a base64 access key.
    ///
    /// # Errors
    ///
    /// As [`ConnectionString::parse`].
    pub fn from_parts(endpoint: &str, access_key: &str) -> Result<Self, Error> {
        if access_key.trim().is_empty() {
            return Err(invalid("the access key is empty"));
        }
        let key = AccessKeyMac::from_base64(access_key)
            .map_err(|_| invalid("the access key is not valid base64"))?;
        Ok(Self {
            endpoint: parse_endpoint(endpoint.trim())?,
            key,
        })
    }

    /// The endpoint, always ending with `/`.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    pub(crate) fn key(&self) -> &AccessKeyMac {
        &self.key
    }
}

impl FromStr for ConnectionString {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn parse_endpoint(raw: &str) -> Result<Url, Error> {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|e| invalid(format!("the endpoint `{raw}` is not a URL: {e}")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(invalid(format!(
            "the endpoint scheme must be https or http, not `{}`",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the endpoint has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the endpoint must not have a query or a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("the endpoint must not carry credentials"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn reason(s: &str) -> String {
        match ConnectionString::parse(s) {
            Err(Error::InvalidConnectionString(r)) => r,
            other => panic!("expected an invalid connection string, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_case_insensitive_and_padding_survives() {
        let cs = ConnectionString::parse(&format!(
            "ENDPOINT=https://myres.communication.azure.com/;AccessKey={KEY}"
        ))
        .expect("parses");
        assert_eq!(
            cs.endpoint().as_str(),
            "https://myres.communication.azure.com/"
        );
        let sts = "x";
        let direct = AccessKeyMac::from_base64(KEY).expect("key");
        assert_eq!(cs.key().sign(sts), direct.sign(sts));
    }

    #[test]
    fn order_whitespace_unknown_keys_and_trailing_separators_are_tolerated() {
        let cs = ConnectionString::parse(&format!(
            " accesskey={KEY} ; foo=bar ;endpoint=http://127.0.0.1:8080;"
        ))
        .expect("parses");
        assert_eq!(cs.endpoint().as_str(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn an_endpoint_without_scheme_gets_https_and_default_ports_are_dropped() {
        let cs = ConnectionString::parse(&format!("endpoint=myres.example:443;accesskey={KEY}"))
            .expect("parses");
        assert_eq!(cs.endpoint().as_str(), "https://myres.example/");
    }

    #[test]
    fn a_path_is_kept_with_a_trailing_slash() {
        let cs = ConnectionString::parse(&format!(
            "endpoint=https://proxy.example/acs;accesskey={KEY}"
        ))
        .expect("parses");
        assert_eq!(cs.endpoint().as_str(), "https://proxy.example/acs/");
    }

    #[test]
    fn bad_strings_are_refused_with_a_reason_that_never_shows_the_key() {
        assert!(reason("").contains("endpoint"));
        assert!(reason("https://host/").contains("key=value"));
        assert!(reason(&format!("accesskey={KEY}")).contains("endpoint"));
        assert!(reason("endpoint=https://h/").contains("accesskey"));
        assert!(reason("endpoint=https://h/;accesskey=").contains("empty"));
        assert!(reason(&format!("endpoint=;accesskey={KEY}")).contains("empty"));
        assert!(reason(&format!("endpoint=ftp://h/;accesskey={KEY}")).contains("scheme"));
        assert!(reason(&format!("endpoint=https://h/?a=b;accesskey={KEY}")).contains("query"));
        assert!(
            reason(&format!("endpoint=https://u:p@h/;accesskey={KEY}")).contains("credentials")
        );
        let r = reason("endpoint=https://h/;accesskey=not*base64!");
        assert!(r.contains("base64"));
        assert!(!r.contains("not*base64"));
    }

    #[test]
    fn debug_redacts_the_key() {
        let cs = ConnectionString::parse(&format!("endpoint=https://h/;accesskey={KEY}"))
            .expect("parses");
        let shown = format!("{cs:?}");
        assert!(!shown.contains(KEY), "{shown}");
        assert!(shown.contains("https://h/"));
    }
}
