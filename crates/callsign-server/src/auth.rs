//! HMAC-SHA256 request authentication, exactly as the SDKs sign (see `callsign_hmac`), with the
//! fallbacks that real SDK versions need.
//!
//! The only way to obtain an [`Authenticated`] is [`HeadVerified::body_matches`] on the
//! [`HeadVerified`] that [`Authenticator::authenticate_head`] gives, and the only way to reach a
//! resource's identities is through one (`AppState::directory`).

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use axum::http::request::Parts;
use base64::Engine as _;
use callsign_core::ResourceId;
use callsign_hmac::{Authorization, content_hash, parse_date};
use callsign_store::{Credential, KeySlot};

use crate::error::ApiError;
use crate::resources::{ResourceKeys, Routing};

/// Proof that a request was signed with one of a resource's access keys, or carried a bearer
/// token of an issuer trusted for the resource.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    resource: ResourceId,
    credential: Credential,
}

impl Authenticated {
    /// The resource the request is for.
    pub fn resource(&self) -> ResourceId {
        self.resource
    }

    /// Which of its keys signed the request, or [`Credential::Bearer`].
    pub fn credential(&self) -> Credential {
        self.credential
    }

    /// A console request of a session of `resource` opened with `credential` (checked by the
    /// console's session cookie, which is signed with one of the resource's keys).
    pub(crate) fn console(resource: ResourceId, credential: Credential) -> Self {
        Self {
            resource,
            credential,
        }
    }

    /// A request for `resource` whose bearer token `principal` verified (the other way to
    /// obtain an [`Authenticated`]; which operations the principal may call is the caller's
    /// check, by its roles).
    pub(crate) fn bearer(resource: ResourceId, principal: &crate::oidc::Principal) -> Self {
        debug_assert!(principal.issuer.serves(resource));
        Self {
            resource,
            credential: Credential::Bearer,
        }
    }
}

/// The longest `Authorization` value considered (the SDKs send about 120 bytes).
pub const MAX_AUTHORIZATION_LEN: usize = 512;

/// base64(SHA-256("")).
const EMPTY_BODY_HASH: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

/// Whether the request announces a non-empty body.
fn declares_body(parts: &Parts) -> bool {
    let length = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0)
        || parts
            .headers
            .contains_key(axum::http::header::TRANSFER_ENCODING)
}

/// The longest `Host` value considered (a DNS name and a port).
const MAX_HOST_LEN: usize = 270;

/// A request whose head is signed with a resource key; its body is not checked yet.
#[derive(Debug)]
pub struct HeadVerified {
    resource: ResourceId,
    credential: KeySlot,
    claimed_hash: String,
}

impl HeadVerified {
    /// Which key signed the head.
    pub fn credential(&self) -> KeySlot {
        self.credential
    }

    /// Checks that `body` is what the signed `x-ms-content-sha256` says.
    pub fn body_matches(self, body: &[u8]) -> Result<Authenticated, ApiError> {
        if content_hash(body) == self.claimed_hash {
            Ok(Authenticated {
                resource: self.resource,
                credential: self.credential.into(),
            })
        } else {
            Err(ApiError::Denied(
                "x-ms-content-sha256 does not match the body",
            ))
        }
    }
}

/// The order of the three signed headers, as the client listed them.
#[derive(Debug, Clone, Copy)]
struct SignedOrder {
    /// Position of (date, host, content hash) in the signed list.
    positions: [usize; 3],
    /// `x-ms-date` rather than `date`.
    x_ms_date: bool,
}

impl SignedOrder {
    /// Exactly `x-ms-date` or `date`, `host` and `x-ms-content-sha256`, each once, any order.
    fn of(names: &[String]) -> Option<Self> {
        if names.len() != 3 {
            return None;
        }
        let mut found: [Option<usize>; 3] = [None; 3];
        let mut x_ms_date = false;
        for (i, name) in names.iter().enumerate() {
            let slot = match name.as_str() {
                "x-ms-date" => {
                    x_ms_date = true;
                    0
                }
                "date" => 0,
                "host" => 1,
                "x-ms-content-sha256" => 2,
                _ => return None,
            };
            if found[slot].replace(i).is_some() {
                return None;
            }
        }
        let [Some(d), Some(h), Some(c)] = found else {
            return None;
        };
        Some(Self {
            positions: [d, h, c],
            x_ms_date,
        })
    }

    fn date_name(self) -> &'static str {
        if self.x_ms_date { "x-ms-date" } else { "date" }
    }

    /// The three values in signed order.
    fn values<'a>(self, date: &'a str, host: &'a str, hash: &'a str) -> [&'a str; 3] {
        let mut out = [""; 3];
        out[self.positions[0]] = date;
        out[self.positions[1]] = host;
        out[self.positions[2]] = hash;
        out
    }
}

/// What a request signs, as received.
struct SignedValues<'a> {
    method: &'a str,
    target: &'a str,
    received_host: &'a str,
    date: &'a str,
    content_hash: &'a str,
    order: SignedOrder,
}

/// Checks request signatures against the keys of the resources a request may be for.
#[derive(Debug, Clone)]
pub struct Authenticator {
    public_hosts: Vec<String>,
    default_port: u16,
    max_skew: Duration,
}

impl Authenticator {
    /// `public_hosts`: extra `host[:port]` values clients may have signed (a proxy's name);
    /// `tls` decides the default port (443 or 80).
    pub fn new(public_hosts: Vec<String>, tls: bool, max_skew: Duration) -> Self {
        Self {
            public_hosts,
            default_port: if tls { 443 } else { 80 },
            max_skew,
        }
    }

    /// Verifies the request's signature from its head alone, before the body is read: the
    /// signature covers the *claimed* content hash, so an unauthenticated client cannot make the
    /// server buffer or hash a body. [`HeadVerified::body_matches`] then checks the body against
    /// the claim.
    ///
    /// The resource is the one of `routing`'s candidates for the request's host whose key
    /// verifies.
    ///
    /// Bounded work whatever the request: the `Authorization` value is at most
    /// [`MAX_AUTHORIZATION_LEN`] bytes and must sign exactly the three headers the SDKs sign, each
    /// once; at most `MAX_RESOURCES_PER_HOST × 3` keys are tried, and per key at most
    /// `2 × (2 + public hosts)` host and 3 path candidates, each path hashed once per key (the
    /// host varies only in the suffix of the string to sign).
    pub(crate) fn authenticate_head(
        &self,
        parts: &Parts,
        now: SystemTime,
        routing: &Routing,
    ) -> Result<HeadVerified, ApiError> {
        let (order, signature) = signed_order_and_signature(parts)?;
        let claimed_hash = claimed_content_hash(parts)?;
        let date = self.signed_date(parts, order, now)?;
        let received_host = single_header(parts, "host")?
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .filter(|h| h.len() <= MAX_HOST_LEN && !h.contains('/'))
            .ok_or(ApiError::Denied("the Host header is missing or too long"))?;
        let signed = SignedValues {
            method: parts.method.as_str(),
            target: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            received_host,
            date,
            content_hash: claimed_hash,
            order,
        };
        match self.signature_matches(&signed, &signature, routing.candidates(received_host)) {
            Some((resource, credential)) => Ok(HeadVerified {
                resource,
                credential,
                claimed_hash: claimed_hash.to_owned(),
            }),
            None => Err(ApiError::Denied("the signature does not match")),
        }
    }

    /// The signed date header's value, if it is a date within the allowed skew of `now`.
    fn signed_date<'a>(
        &self,
        parts: &'a Parts,
        order: SignedOrder,
        now: SystemTime,
    ) -> Result<&'a str, ApiError> {
        let value = single_header(parts, order.date_name())?
            .filter(|d| d.len() <= 64)
            .ok_or(ApiError::Denied("the signed date header is missing"))?;
        let date = parse_date(value).ok_or(ApiError::Denied(
            "the signed date header is not an RFC 1123 date",
        ))?;
        let skew = now.duration_since(date).unwrap_or_else(|e| e.duration());
        if skew > self.max_skew {
            return Err(ApiError::Denied(
                "the request date is more than 15 minutes from the server's time",
            ));
        }
        Ok(value)
    }

    /// Tries every key of every candidate resource over every host and path candidate; the
    /// path prefix of the string to sign is hashed once per key and path, only the short suffix
    /// per host. Returns the resource and the key that verified.
    fn signature_matches(
        &self,
        v: &SignedValues<'_>,
        signature: &[u8; 32],
        resources: &[ResourceKeys],
    ) -> Option<(ResourceId, KeySlot)> {
        let hosts = self.host_candidates(v.received_host);
        let targets = path_candidates(v.target);
        resources.iter().find_map(|resource| {
            resource.keys.iter().find_map(|(slot, key)| {
                let verifies = targets.iter().any(|target| {
                    let prefix = key.after(&[v.method, "\n", target, "\n"]);
                    hosts.iter().any(|host| {
                        let values = v.order.values(v.date, host, v.content_hash);
                        prefix.verify_rest(&[values[0], ";", values[1], ";", values[2]], signature)
                    })
                });
                verifies.then_some((resource.id, *slot))
            })
        })
    }

    /// [`Authenticator::authenticate_head`] and [`HeadVerified::body_matches`] in one, for
    /// callers that hold the body already.
    #[cfg(test)]
    pub(crate) fn authenticate(
        &self,
        parts: &Parts,
        body: &[u8],
        now: SystemTime,
        routing: &Routing,
    ) -> Result<Authenticated, ApiError> {
        self.authenticate_head(parts, now, routing)?
            .body_matches(body)
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

/// The value of a header that decides authentication. It must appear at most once: with two,
/// which one was signed would be a guess.
fn single_header<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = parts.headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::Denied(
            "a header used for authentication appears twice",
        ));
    }
    Ok(first.and_then(|v| v.to_str().ok()))
}

/// The `Authorization` header read: which headers were signed, in which order, and the 32-byte
/// signature. Bounded: the value is at most [`MAX_AUTHORIZATION_LEN`] bytes.
fn signed_order_and_signature(parts: &Parts) -> Result<(SignedOrder, [u8; 32]), ApiError> {
    let value = single_header(parts, "authorization")?
        .ok_or(ApiError::Denied("the Authorization header is missing"))?;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(ApiError::Denied("the Authorization header is too long"));
    }
    let auth = Authorization::parse(value).map_err(|_| {
        ApiError::Denied(
            "the Authorization header is not HMAC-SHA256 SignedHeaders=...&Signature=...",
        )
    })?;
    let order = SignedOrder::of(&auth.signed_headers).ok_or(ApiError::Denied(
        "SignedHeaders must be exactly x-ms-date (or date), host and x-ms-content-sha256, each once",
    ))?;
    let mut signature = [0u8; 32];
    let decoded = base64::engine::general_purpose::STANDARD
        .decode_slice(auth.signature.as_bytes(), &mut signature)
        .ok()
        .filter(|n| auth.signature.len() <= 44 && *n == 32);
    if decoded.is_none() {
        return Err(ApiError::Denied("the signature is not 32 bytes of base64"));
    }
    Ok((order, signature))
}

/// The claimed `x-ms-content-sha256`. The signature covers the body's hash, not its length: a
/// body announced where the signed hash is the empty body's cannot match, so it is refused
/// before it is read (a replayed head must not hold a connection with a body that never ends).
fn claimed_content_hash(parts: &Parts) -> Result<&str, ApiError> {
    let claimed = single_header(parts, "x-ms-content-sha256")?
        .filter(|h| h.len() == 44)
        .ok_or(ApiError::Denied(
            "the x-ms-content-sha256 header is missing or not a SHA-256 in base64",
        ))?;
    if claimed == EMPTY_BODY_HASH && declares_body(parts) {
        return Err(ApiError::Denied(
            "a body is sent where the signed hash is of no body",
        ));
    }
    Ok(claimed)
}

/// The request-target as sent, then without its leading `/` (Python ≤1.3 over http), then
/// percent-decoded (clients that sign the unquoted path but send it quoted).
fn path_candidates(raw: &str) -> Vec<Cow<'_, str>> {
    let mut out = vec![Cow::Borrowed(raw)];
    if let Some(stripped) = raw.strip_prefix('/') {
        out.push(Cow::Borrowed(stripped));
    }
    if let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8()
        && decoded != raw
    {
        out.push(Cow::Owned(decoded.into_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use callsign_hmac::{format_date, string_to_sign};

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    use callsign_hmac::AccessKeyMac;

    /// An authenticator, and a routing table with one resource whose secondary key is `KEY`
    /// beside another resource.
    fn authenticator() -> (Authenticator, Routing) {
        let resource = |primary: AccessKeyMac, secondary: AccessKeyMac| ResourceKeys {
            id: ResourceId::new_random(),
            keys: vec![(KeySlot::Primary, primary), (KeySlot::Secondary, secondary)],
        };
        let routing = Routing::shared(vec![
            resource(
                AccessKeyMac::from_bytes(b"a third key"),
                AccessKeyMac::from_bytes(b"a fourth key"),
            ),
            resource(
                AccessKeyMac::from_bytes(b"the other key"),
                AccessKeyMac::from_base64(KEY).expect("key"),
            ),
        ]);
        let a = Authenticator::new(
            vec!["public.example:8443".into()],
            true,
            Duration::from_secs(900),
        );
        (a, routing)
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
        let (a, routing) = authenticator();
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
                a.authenticate(&p, b"{}", now, &routing)
                    .is_ok_and(|auth| auth.credential() == Credential::Secondary),
                "{target} signed as {signed_target} on {host}/{signed_host} with {date}"
            );
        }
    }

    #[test]
    fn bad_requests_are_denied() {
        let (a, routing) = authenticator();
        let now = SystemTime::now();
        let t = "/identities?api-version=2023-10-01";
        let deny = |p: &Parts, body: &[u8]| {
            assert!(matches!(
                a.authenticate(p, body, now, &routing),
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
                now,
                &routing
            )
            .is_ok()
        );
    }

    #[test]
    fn missing_or_garbled_authorization_is_denied() {
        let (a, routing) = authenticator();
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
                matches!(
                    a.authenticate(&p, b"", now, &routing),
                    Err(ApiError::Denied(_))
                ),
                "{auth:?}"
            );
        }
    }

    #[test]
    fn signed_headers_must_be_exactly_the_sdk_set() {
        let names = |s: &str| s.split(';').map(str::to_owned).collect::<Vec<_>>();
        for ok in [
            "x-ms-date;host;x-ms-content-sha256",
            "date;host;x-ms-content-sha256",
            "host;x-ms-content-sha256;x-ms-date",
        ] {
            assert!(SignedOrder::of(&names(ok)).is_some(), "{ok}");
        }
        for bad in [
            "x-ms-date;host",
            "x-ms-date;host;x-ms-content-sha256;x-ms-date",
            "x-ms-date;date;host",
            "x-ms-date;host;host",
            "x-ms-date;host;user-agent",
            "x-ms-date;host;x-ms-content-sha256;user-agent",
        ] {
            assert!(SignedOrder::of(&names(bad)).is_none(), "{bad}");
        }
        let order = SignedOrder::of(&names("host;x-ms-content-sha256;date")).expect("valid");
        assert_eq!(order.values("d", "h", "c"), ["h", "c", "d"]);
        assert_eq!(order.date_name(), "date");
    }

    #[test]
    fn the_body_is_checked_against_the_signed_hash() {
        let (a, routing) = authenticator();
        let now = SystemTime::now();
        let t = "/identities?api-version=2023-10-01";
        let p = request(t, t, "h", "h", "x-ms-date", b"{}", b"{}", now);
        let head = a.authenticate_head(&p, now, &routing).expect("signed head");
        assert!(matches!(
            head.body_matches(b"{ }"),
            Err(ApiError::Denied(_))
        ));
    }

    #[test]
    fn ports_are_detected() {
        assert!(has_port("localhost:8443"));
        assert!(!has_port("localhost"));
        assert!(has_port("[::1]:8443"));
        assert!(!has_port("[::1]"));
    }
}
