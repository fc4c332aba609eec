//! The server under test: endpoint, signing key, TLS trust and the loopback rule.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use callsign_client::ConnectionString;
use callsign_client::signing::{sign, signing_host};
use reqwest::Url;

/// Where requests go and how they are signed.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The endpoint and the key requests are signed with.
    credentials: ConnectionString,
    ca_pem: Option<Vec<u8>>,
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
        let credentials = ConnectionString::parse(connection_string)?;
        let host = signing_host(credentials.endpoint());
        if !allow_remote && !is_loopback(&host) {
            bail!(
                "refusing to load {host}: not a loopback address (pass --allow-remote to drive another machine)"
            );
        }
        let ca_path = ca_cert
            .map(Path::to_path_buf)
            .or_else(|| data_dir.map(|d| d.join("tls").join("ca.pem")));
        let ca_pem = match ca_path {
            Some(p) if credentials.endpoint().scheme() == "https" => Some(
                std::fs::read(&p)
                    .with_context(|| format!("cannot read the CA certificate {}", p.display()))?,
            ),
            _ => None,
        };
        Ok(Self {
            credentials,
            ca_pem,
        })
    }

    /// The endpoint, ending with `/`.
    pub(crate) fn endpoint(&self) -> &Url {
        self.credentials.endpoint()
    }

    /// The URL of `path_and_query` (which starts with `/`) under the endpoint.
    pub(crate) fn url(&self, path_and_query: &str) -> anyhow::Result<Url> {
        self.endpoint()
            .join(path_and_query.trim_start_matches('/'))
            .with_context(|| format!("{path_and_query} is not a path under the endpoint"))
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

    /// The `Host` value and the signed headers of a request dated `now`.
    pub(crate) fn signed_headers(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now: SystemTime,
    ) -> anyhow::Result<(String, callsign_client::signing::SignedRequestHeaders)> {
        let url = self.url(path_and_query)?;
        let signed = sign(&self.credentials, method, &url, body, now);
        Ok((signing_host(&url), signed))
    }

    /// Sends one freshly signed request and reads the whole response.
    pub(crate) async fn send(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path_and_query: &str,
        body: &'static [u8],
    ) -> anyhow::Result<(u16, bytes::Bytes)> {
        let url = self.url(path_and_query)?;
        let signed = sign(
            &self.credentials,
            method.as_str(),
            &url,
            body,
            SystemTime::now(),
        );
        let mut req = client
            .request(method, url)
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
        let target = Target::new(
            "accesskey=YWJj;endpoint=https://127.0.0.1:8443/",
            None,
            None,
            false,
        )
        .expect("parses");
        assert_eq!(target.endpoint().as_str(), "https://127.0.0.1:8443/");
        assert_eq!(
            target
                .url("/identities?api-version=2023-10-01")
                .expect("url")
                .as_str(),
            "https://127.0.0.1:8443/identities?api-version=2023-10-01"
        );
        assert!(Target::new("endpoint=https://x/", None, None, true).is_err());
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
