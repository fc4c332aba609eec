//! The server under test: endpoint, signing key, TLS trust and the loopback rule.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use callsign_hmac::{AccessKeyMac, sign_request};

/// Where requests go and how they are signed.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `https://host:port`, no trailing slash.
    pub(crate) base: String,
    /// The authority clients sign (`host[:port]`).
    pub(crate) host: String,
    pub(crate) key: AccessKeyMac,
    ca_pem: Option<Vec<u8>>,
}

/// Splits `endpoint=…;accesskey=…` (any order, any case of the names).
pub(crate) fn parse_connection_string(s: &str) -> anyhow::Result<(String, String)> {
    let mut endpoint = None;
    let mut key = None;
    for part in s.trim().split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            bail!("the connection string is not endpoint=…;accesskey=…");
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "endpoint" => endpoint = Some(value.trim().to_owned()),
            "accesskey" => key = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    match (endpoint, key) {
        (Some(e), Some(k)) if !e.is_empty() && !k.is_empty() => Ok((e, k)),
        _ => bail!("the connection string lacks endpoint= or accesskey="),
    }
}

/// The host part of an authority, without port or IPv6 brackets.
fn host_only(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Whether `authority` names this machine through the loopback interface.
pub(crate) fn is_loopback(authority: &str) -> bool {
    let host = host_only(authority);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Target {
    /// Parses the connection string, refuses a non-loopback endpoint unless `allow_remote`, and
    /// reads the CA to trust (`ca_cert`, else `<data_dir>/tls/ca.pem` when given).
    pub(crate) fn new(
        connection_string: &str,
        ca_cert: Option<&Path>,
        data_dir: Option<&Path>,
        allow_remote: bool,
    ) -> anyhow::Result<Self> {
        let (endpoint, key) = parse_connection_string(connection_string)?;
        let key = AccessKeyMac::from_base64(&key).context("the access key is not base64")?;
        let (scheme, rest) = endpoint
            .split_once("://")
            .context("the endpoint is not an http:// or https:// URL")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            bail!("the endpoint is not an http:// or https:// URL");
        }
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        if host.is_empty() {
            bail!("the endpoint has no host");
        }
        if !allow_remote && !is_loopback(&host) {
            bail!(
                "refusing to load {host}: not a loopback address (pass --allow-remote to drive another machine)"
            );
        }
        let ca_path = ca_cert
            .map(Path::to_path_buf)
            .or_else(|| data_dir.map(|d| d.join("tls").join("ca.pem")));
        let ca_pem = match ca_path {
            Some(p) if scheme == "https" => Some(
                std::fs::read(&p)
                    .with_context(|| format!("cannot read the CA certificate {}", p.display()))?,
            ),
            _ => None,
        };
        Ok(Self {
            base: format!("{scheme}://{host}"),
            host,
            key,
            ca_pem,
        })
    }

    /// A client that keeps one keep-alive HTTP/1.1 connection.
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30));
        if let Some(pem) = &self.ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).context("the CA file is not PEM")?;
            builder = builder.tls_certs_only([cert]);
        }
        builder.build().context("cannot build the HTTP client")
    }

    /// Sends one freshly signed request and reads the whole response.
    pub(crate) async fn send(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path_and_query: &str,
        body: &'static [u8],
    ) -> reqwest::Result<(u16, bytes::Bytes)> {
        let signed = sign_request(
            &self.key,
            method.as_str(),
            path_and_query,
            &self.host,
            body,
            SystemTime::now(),
        );
        let mut req = client
            .request(method, format!("{}{}", self.base, path_and_query))
            .header("x-ms-date", signed.date)
            .header("x-ms-content-sha256", signed.content_hash)
            .header("authorization", signed.authorization);
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok((status, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_parse_in_any_order() {
        let (e, k) = parse_connection_string("accesskey=YWJj;endpoint=https://127.0.0.1:8443/")
            .expect("parses");
        assert_eq!(e, "https://127.0.0.1:8443/");
        assert_eq!(k, "YWJj");
        assert!(parse_connection_string("endpoint=https://x/").is_err());
    }

    #[test]
    fn only_loopback_is_allowed_by_default() {
        for ok in [
            "127.0.0.1:8443",
            "localhost",
            "[::1]:8443",
            "127.3.4.5",
            "LOCALHOST:1",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for no in [
            "10.0.0.1:8443",
            "example.com",
            "[2001:db8::1]:443",
            "192.168.1.1",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
        let cs = "endpoint=https://example.com/;accesskey=YWJj";
        assert!(Target::new(cs, None, None, false).is_err());
        assert!(Target::new(cs, None, None, true).is_ok());
    }
}
