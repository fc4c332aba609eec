//! HMAC-SHA256 request authentication, exactly as the SDKs sign (see `callsign_hmac`), with the
//! fallbacks that real SDK versions need.
//!
//! The only way to obtain an [`Authenticated`] is [`Authenticator::authenticate`], and the only
//! way to reach a resource's identities is through one (`AppState::directory`).

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use axum::http::request::Parts;
use callsign_core::ResourceId;
use callsign_hmac::{AccessKeyMac, Authorization, content_hash, parse_date, string_to_sign};

use crate::error::ApiError;

/// Proof that a request was signed with one of a resource's access keys.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    resource: ResourceId,
}

impl Authenticated {
    /// The resource the request is for.
    pub fn resource(&self) -> ResourceId {
        self.resource
    }
}

/// Checks request signatures for one resource.
#[derive(Debug, Clone)]
pub struct Authenticator {
    resource: ResourceId,
    keys: Vec<AccessKeyMac>,
    public_hosts: Vec<String>,
    default_port: u16,
    max_skew: Duration,
}

impl Authenticator {
    /// `keys`: the primary and secondary keys; `public_hosts`: extra `host[:port]` values clients
    /// may have signed (a proxy's name); `tls` decides the default port (443 or 80).
    pub fn new(
        resource: ResourceId,
        keys: Vec<AccessKeyMac>,
        public_hosts: Vec<String>,
        tls: bool,
        max_skew: Duration,
    ) -> Self {
        Self {
            resource,
            keys,
            public_hosts,
            default_port: if tls { 443 } else { 80 },
            max_skew,
        }
    }

    /// Verifies the request's `Authorization`, date and content hash against its exact body.
    pub fn authenticate(
        &self,
        parts: &Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Authenticated, ApiError> {
        let header =
            |name: &str| -> Option<&str> { parts.headers.get(name).and_then(|v| v.to_str().ok()) };
        let value = header("authorization")
            .ok_or(ApiError::Denied("the Authorization header is missing"))?;
        let auth = Authorization::parse(value).map_err(|_| {
            ApiError::Denied(
                "the Authorization header is not HMAC-SHA256 SignedHeaders=...&Signature=...",
            )
        })?;

        let signs = |n: &str| auth.signed_headers.iter().any(|h| h == n);
        if !signs("host") || !signs("x-ms-content-sha256") || !(signs("x-ms-date") || signs("date"))
        {
            return Err(ApiError::Denied(
                "SignedHeaders must cover x-ms-date (or date), host and x-ms-content-sha256",
            ));
        }

        let claimed_hash = header("x-ms-content-sha256").ok_or(ApiError::Denied(
            "the x-ms-content-sha256 header is missing",
        ))?;
        if claimed_hash != content_hash(body) {
            return Err(ApiError::Denied(
                "x-ms-content-sha256 does not match the body",
            ));
        }

        let date_name = if signs("x-ms-date") {
            "x-ms-date"
        } else {
            "date"
        };
        let date = header(date_name)
            .and_then(parse_date)
            .ok_or(ApiError::Denied(
                "the signed date header is missing or not an RFC 1123 date",
            ))?;
        let skew = now.duration_since(date).unwrap_or_else(|e| e.duration());
        if skew > self.max_skew {
            return Err(ApiError::Denied(
                "the request date is more than 15 minutes from the server's time",
            ));
        }

        let received_host = header("host")
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
            .ok_or(ApiError::Denied("the Host header is missing"))?;
        let hosts = self.host_candidates(&received_host);

        // Values of every signed header except host, which varies over its candidates.
        let mut values: Vec<Option<&str>> = Vec::with_capacity(auth.signed_headers.len());
        for name in &auth.signed_headers {
            if name == "host" {
                values.push(None);
            } else {
                let v = header(name).ok_or(ApiError::Denied("a signed header is missing"))?;
                values.push(Some(v));
            }
        }

        let targets = path_candidates(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
        let method = parts.method.as_str();
        for host in &hosts {
            let joined: Vec<&str> = values.iter().map(|v| v.unwrap_or(host)).collect();
            for target in &targets {
                let sts = string_to_sign(method, target, &joined);
                if self.keys.iter().any(|k| k.verify(&sts, auth.signature)) {
                    return Ok(Authenticated {
                        resource: self.resource,
                    });
                }
            }
        }
        Err(ApiError::Denied("the signature does not match"))
    }

    /// The received host first, then it with the default port added or removed, then the
    /// configured public hosts.
    fn host_candidates(&self, received: &str) -> Vec<String> {
        let mut out = vec![received.to_owned()];
        let suffix = format!(":{}", self.default_port);
        if let Some(bare) = received.strip_suffix(&suffix) {
            out.push(bare.to_owned());
        } else if !has_port(received) {
            out.push(format!("{received}{suffix}"));
        }
        for h in &self.public_hosts {
            if !out.contains(h) {
                out.push(h.clone());
            }
        }
        // Python's explicit constructor given the endpoint as the portal shows it
        // (`https://host:port/`) signs `host:port/`. The host is no secret: this weakens nothing.
        let slashed: Vec<String> = out.iter().map(|h| format!("{h}/")).collect();
        out.extend(slashed);
        out
    }
}

fn has_port(host: &str) -> bool {
    match host.rfind(':') {
        // `[::1]` has colons but no port; `[::1]:8443` has one after the bracket.
        Some(i) => !host[i..].contains(']') && host[i + 1..].chars().all(|c| c.is_ascii_digit()),
        None => false,
    }
}

/// The request-target as sent, then without its leading `/` (Python ≤1.3 over http), then
/// percent-decoded (clients that sign the unquoted path but send it quoted).
fn path_candidates(raw: &str) -> Vec<Cow<'_, str>> {
    let mut out = vec![Cow::Borrowed(raw)];
    if let Some(stripped) = raw.strip_prefix('/') {
        out.push(Cow::Borrowed(stripped));
    }
    if let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() {
        if decoded != raw {
            out.push(Cow::Owned(decoded.into_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use callsign_hmac::format_date;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn authenticator() -> Authenticator {
        Authenticator::new(
            ResourceId::new_random(),
            vec![
                AccessKeyMac::from_bytes(b"the other key"),
                AccessKeyMac::from_base64(KEY).expect("key"),
            ],
            vec!["public.example:8443".into()],
            true,
            Duration::from_secs(900),
        )
    }

    // Each argument is one thing a client can get right or wrong; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn request(
        target: &str,
        signed_target: &str,
        host: &str,
        signed_host: &str,
        date_header: &str,
        body: &[u8],
        signed_body: &[u8],
        when: SystemTime,
    ) -> Parts {
        let date = format_date(when);
        let hash = content_hash(signed_body);
        let sts = string_to_sign("POST", signed_target, &[&date, signed_host, &hash]);
        let sig = AccessKeyMac::from_base64(KEY).expect("key").sign(&sts);
        let (parts, ()) = Request::post(target)
            .header("host", host)
            .header(date_header, &date)
            .header("x-ms-content-sha256", content_hash(body))
            .header(
                "authorization",
                format!("HMAC-SHA256 SignedHeaders={date_header};host;x-ms-content-sha256&Signature={sig}"),
            )
            .body(())
            .expect("request")
            .into_parts();
        parts
    }

    #[test]
    fn sdk_quirks_are_accepted() {
        let a = authenticator();
        let now = SystemTime::now();
        let t = "/identities/8%3Aacs%3Ax_y/:issueAccessToken?api-version=2023-10-01";
        let decoded = "/identities/8:acs:x_y/:issueAccessToken?api-version=2023-10-01";
        let cases = [
            // As sent, x-ms-date.
            (t, t, "127.0.0.1:8443", "127.0.0.1:8443", "x-ms-date"),
            // Old SDKs sign Date.
            (t, t, "127.0.0.1:8443", "127.0.0.1:8443", "date"),
            // Python ≤1.3 over http drops the leading slash.
            (t, &t[1..], "127.0.0.1:8443", "127.0.0.1:8443", "x-ms-date"),
            // Signed decoded, sent encoded.
            (t, decoded, "127.0.0.1:8443", "127.0.0.1:8443", "x-ms-date"),
            // Host without the default port, signed with it, and the other way round.
            (t, t, "localhost", "localhost:443", "x-ms-date"),
            (t, t, "localhost:443", "localhost", "x-ms-date"),
            // A proxy rewrote Host; the client signed the public name.
            (t, t, "10.0.0.1:9000", "public.example:8443", "x-ms-date"),
            // Python's explicit constructor with a trailing-slash endpoint signs `host:port/`.
            (t, t, "127.0.0.1:8443", "127.0.0.1:8443/", "x-ms-date"),
            (t, t, "localhost", "localhost:443/", "x-ms-date"),
            (t, t, "10.0.0.1:9000", "public.example:8443/", "x-ms-date"),
        ];
        for (target, signed_target, host, signed_host, date) in cases {
            let p = request(
                target,
                signed_target,
                host,
                signed_host,
                date,
                b"{}",
                b"{}",
                now,
            );
            assert!(
                a.authenticate(&p, b"{}", now).is_ok(),
                "{target} signed as {signed_target} on {host}/{signed_host} with {date}"
            );
        }
    }

    #[test]
    fn bad_requests_are_denied() {
        let a = authenticator();
        let now = SystemTime::now();
        let t = "/identities?api-version=2023-10-01";
        let deny = |p: &Parts, body: &[u8]| {
            assert!(matches!(
                a.authenticate(p, body, now),
                Err(ApiError::Denied(_))
            ));
        };
        // Tampered body (hash header matches the tampered body, signature does not).
        deny(
            &request(t, t, "h", "h", "x-ms-date", b"{\"a\":2}", b"{\"a\":1}", now),
            b"{\"a\":2}",
        );
        // Body differs from the hash header.
        deny(
            &request(t, t, "h", "h", "x-ms-date", b"{}", b"{}", now),
            b"{ }",
        );
        // Stale and future dates.
        let old = now - Duration::from_secs(16 * 60);
        deny(&request(t, t, "h", "h", "x-ms-date", b"", b"", old), b"");
        let future = now + Duration::from_secs(16 * 60);
        deny(&request(t, t, "h", "h", "x-ms-date", b"", b"", future), b"");
        // Wrong host, wrong path.
        deny(
            &request(t, t, "h", "other", "x-ms-date", b"", b"", now),
            b"",
        );
        deny(
            &request(
                t,
                "/identities?api-version=2022-10-01",
                "h",
                "h",
                "x-ms-date",
                b"",
                b"",
                now,
            ),
            b"",
        );
        // Within skew is fine.
        let ok = now - Duration::from_secs(14 * 60);
        assert!(
            a.authenticate(
                &request(t, t, "h", "h", "x-ms-date", b"", b"", ok),
                b"",
                now
            )
            .is_ok()
        );
    }

    #[test]
    fn missing_or_garbled_authorization_is_denied() {
        let a = authenticator();
        let now = SystemTime::now();
        for auth in [
            None,
            Some("Bearer x"),
            Some("HMAC-SHA256 nonsense"),
            Some("HMAC-SHA256 SignedHeaders=host&Signature=abc"),
        ] {
            let mut b = Request::post("/identities?api-version=2023-10-01")
                .header("host", "h")
                .header("x-ms-date", format_date(now))
                .header("x-ms-content-sha256", content_hash(b""));
            if let Some(v) = auth {
                b = b.header("authorization", v);
            }
            let (p, ()) = b.body(()).expect("request").into_parts();
            assert!(
                matches!(a.authenticate(&p, b"", now), Err(ApiError::Denied(_))),
                "{auth:?}"
            );
        }
    }

    #[test]
    fn ports_are_detected() {
        assert!(has_port("localhost:8443"));
        assert!(!has_port("localhost"));
        assert!(has_port("[::1]:8443"));
        assert!(!has_port("[::1]"));
    }
}
