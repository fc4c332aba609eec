//! The admin console: server-rendered pages under `/console/` (off with `serve --no-console`).
//!
//! Every page works without JavaScript; `assets/console.js` only adds copy buttons and the live
//! charts of the rates page. Nothing is loaded from elsewhere: the stylesheet and the script are
//! compiled into the binary and the Content-Security-Policy allows nothing but them.
//!
//! Before a user is signed in, the console does what the API does before authentication: small,
//! bounded work. The sign-in form's body is at most [`MAX_FORM_BYTES`], read within the body
//! timeout; a wrong key counts against the client's address like a failed signature, and an
//! address over the limit is turned away before any key is compared. A session is a signed
//! cookie (`session.rs`), checked with one HMAC and no store read. Every form posts a token bound
//! to the session, and a request that names another origin is refused. What a session changes is
//! recorded in the audit log with the key it signed in with and the subject `console#<session>`.

mod actions;
mod oidc;
mod pages;
mod rates;
mod session;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callsign_core::ResourceId;
use callsign_hmac::AccessKeyMac;
use callsign_store::{Actor, KeySlot};

use crate::auth::Authenticated;
use crate::connection::ClientAddr;
use crate::error::ApiError;
use crate::http::RequestId;
use crate::state::{AppState, Directory};

pub(crate) use session::Logouts;
use session::{COOKIE, Session};

/// The longest form body read (a sign-in form, an identity's custom id, a token request).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The console's part of a node's state.
#[derive(Debug)]
pub(crate) struct Console {
    /// Sessions logged out on this node.
    pub(crate) logouts: Logouts,
    /// Whether the node serves TLS (the cookies are then `Secure`).
    pub(crate) tls: bool,
    /// The deployment's default resource: its sessions also list every resource and rotate
    /// the signing keys.
    pub(crate) default_resource: ResourceId,
}

/// Whether `path` is the console's.
pub(crate) fn owns(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// Answers a console request. Failures are pages with the status and message of the API's
/// error (or, for `rates.json`, the API's error body); every answer carries the console's
/// security headers.
pub(crate) async fn handle(
    state: &AppState,
    console: &Console,
    parts: Parts,
    body: Body,
) -> Response {
    let now = state.clock.now().unix_timestamp();
    let req = Req {
        state,
        console,
        parts: &parts,
        now,
    };
    let json = parts.uri.path() == "/console/rates.json";
    let result = if plausible_host(req.host()) {
        route(&req, body).await
    } else {
        Err(ApiError::validation(
            "The Host header is not a host name and port.",
            "Host",
        ))
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) if json => console_error(e).into_response(),
        Err(e) => error_page(&req, console_error(e)),
    };
    secure_headers(response.headers_mut());
    response
}

/// A host name, IPv4 address or bracketed IPv6 address, with an optional port: what may go
/// into a connection string and an origin.
fn plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 270
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The console's wording of an API error: an identity of another resource is simply not
/// found here (the API answers 401 as ACS does; a signed-in user is not unauthenticated).
fn console_error(e: ApiError) -> ApiError {
    match e {
        ApiError::IdentityNotOwned => ApiError::IdentityNotFound,
        e => e,
    }
}

/// A console request refused before it was read (a request line or head over the limits): the
/// same page and headers as every console answer.
pub(crate) fn refused(e: ApiError) -> Response {
    let status = e.status();
    let mut response = pages::error(None, status, &e.body().error.message);
    secure_headers(response.headers_mut());
    response
}

/// One console request.
pub(crate) struct Req<'a> {
    state: &'a AppState,
    console: &'a Console,
    parts: &'a Parts,
    /// Unix seconds.
    now: i64,
}

/// A request of a signed-in session.
pub(crate) struct Signed {
    session: Session,
    key: AccessKeyMac,
    /// A renewed cookie to send with the answer.
    renewed: Option<HeaderValue>,
}

impl Req<'_> {
    fn client(&self) -> Option<std::net::IpAddr> {
        self.parts.extensions.get::<ClientAddr>().map(|c| c.0)
    }

    fn host(&self) -> &str {
        crate::http::request_host(self.parts)
    }

    fn query(&self) -> Vec<(String, String)> {
        let q = self.parts.uri.query().unwrap_or("");
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    /// The scheme the browser reached the console with: `https` when this node serves TLS, or
    /// when a TLS-terminating proxy in front of a `--plain-http` node says so
    /// (`X-Forwarded-Proto: https`; a client that sends it itself only gets `Secure` cookies
    /// it cannot send back over plain HTTP).
    fn scheme(&self) -> &'static str {
        let forwarded = self
            .parts
            .headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        if self.console.tls || forwarded {
            "https"
        } else {
            "http"
        }
    }

    /// The endpoint the browser reached this node at.
    fn endpoint(&self) -> String {
        format!("{}://{}/", self.scheme(), self.host())
    }

    /// The audit actor of `signed`'s requests.
    fn actor(&self, signed: &Signed) -> Actor {
        Actor {
            credential: signed.session.credential(),
            client: self.client(),
            request_id: self
                .parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.to_string()),
            subject: Some(signed.session.subject()),
        }
    }

    /// The signed-in resource's identities, as `signed` acts on them.
    fn directory(&self, signed: &Signed) -> Directory<'_> {
        let auth = Authenticated::console(signed.session.resource, signed.session.credential());
        self.state.directory(&auth, self.actor(signed))
    }

    /// The key in `slot` of `resource` as this node serves it (the resources the request's host
    /// reaches: at most a handful).
    fn key_of(&self, resource: ResourceId, slot: KeySlot) -> Option<AccessKeyMac> {
        let routing = self.state.resources.get();
        let r = routing
            .candidates(self.host())
            .iter()
            .find(|r| r.id == resource)?;
        r.keys
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, k)| k.clone())
    }

    /// The key `session`'s cookie is signed with: the access key it was opened with, or for an
    /// issuer's sign-in the server's own secret; `None` when its resource is not reachable here.
    fn session_key(&self, session: &Session) -> Option<AccessKeyMac> {
        match session.key_slot() {
            Some(slot) => self.key_of(session.resource, slot),
            None => {
                self.key_of(session.resource, KeySlot::Primary)?;
                Some(self.server_secret())
            }
        }
    }

    /// A secret no client holds: derived from the active token signing key (every node has it;
    /// a rotation ends the sessions signed with the old one).
    pub(crate) fn server_secret(&self) -> AccessKeyMac {
        self.state.keys.with_issuer(|issuer| {
            let context = b"callsign console issuer sessions v1\n";
            let mut input = Vec::with_capacity(context.len() + 256);
            input.extend_from_slice(context);
            input.extend_from_slice(issuer.key().pkcs8_der());
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
            AccessKeyMac::from_bytes(digest.as_ref())
        })
    }

    /// The session of the request's cookie, checked; renewed when due and `renew` (a
    /// background poll is no sign of a user at the keyboard).
    fn signed_in(&self, renew: bool) -> Option<Signed> {
        let value = cookie(&self.parts.headers, COOKIE)?;
        let (session, sig) = Session::parse(value).ok()?;
        let key = self.session_key(&session)?;
        session.check(sig, &key, self.now).ok()?;
        if self.console.logouts.ended(&session) {
            return None;
        }
        let mut signed = Signed {
            session,
            key,
            renewed: None,
        };
        if renew && self.now - signed.session.seen >= session::RENEW_AFTER {
            signed.session.seen = self.now;
            signed.renewed = Some(self.session_cookie(&signed));
        }
        Some(signed)
    }

    /// Opens a session of `signer` for `resource` (its cookie signed with `key`), records the
    /// sign-in, and sends the browser to the overview.
    async fn open_session(
        &self,
        resource: ResourceId,
        signer: session::Signer,
        key: AccessKeyMac,
    ) -> Result<Response, ApiError> {
        let signed = Signed {
            session: Session::open(resource, signer, self.now),
            key,
            renewed: None,
        };
        let event = callsign_store::AuditEvent::resource(
            callsign_store::AuditOperation::ConsoleLogin,
            resource,
            callsign_store::AuditOutcome::Success,
        );
        self.directory(&signed).record(event).await?;
        Ok(redirect("/console/", Some(self.session_cookie(&signed))))
    }

    /// Whether `signed` is a session of the deployment's default resource.
    fn is_admin(&self, signed: &Signed) -> bool {
        signed.session.resource == self.console.default_resource
    }

    fn session_cookie(&self, signed: &Signed) -> HeaderValue {
        let value = signed.session.to_cookie(&signed.key);
        let max_age = signed.session.ends() - self.now;
        self.cookie_header(COOKIE, &value, max_age)
    }

    /// A console cookie (`Path=/console`, `SameSite=Strict`).
    fn cookie_header(&self, name: &str, value: &str, max_age: i64) -> HeaderValue {
        self.cookie_at(name, value, "/console", "Strict", max_age)
    }

    /// An HttpOnly cookie for `path`, `Secure` when the browser came over https.
    fn cookie_at(
        &self,
        name: &str,
        value: &str,
        path: &str,
        same_site: &str,
        max_age: i64,
    ) -> HeaderValue {
        let secure = if self.scheme() == "https" {
            "; Secure"
        } else {
            ""
        };
        let text = format!(
            "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite={same_site}{secure}",
            max_age.max(0)
        );
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Refuses a form posted from another origin (`Origin`, `Sec-Fetch-Site`): the form token
    /// is the main defence, this the second.
    fn same_origin(&self) -> Result<(), ApiError> {
        let headers = &self.parts.headers;
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.as_bytes(), b"same-origin" | b"none")
        {
            return Err(ApiError::Forbidden(CROSS_ORIGIN));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let expected = format!("{}://{}", self.scheme(), self.host());
            // A browser that withholds the origin (`null`) still says where the form came
            // from in `Sec-Fetch-Site`; without that, `null` could be any page.
            let same_site_null = origin.as_bytes() == b"null"
                && headers
                    .get("sec-fetch-site")
                    .is_some_and(|s| s.as_bytes() == b"same-origin");
            if origin.as_bytes() != expected.as_bytes() && !same_site_null {
                return Err(ApiError::Forbidden(CROSS_ORIGIN));
            }
        }
        Ok(())
    }
}

const CROSS_ORIGIN: &str = "The form was sent from another site; nothing was changed.";
const BAD_FORM_TOKEN: &str = "The form has expired or did not come from this console; nothing was changed. Reload the page and try again.";

/// A posted form's fields.
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn ticked(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| !v.is_empty())
    }
}

/// Reads a form body: at most [`MAX_FORM_BYTES`], within the body timeout, declared as a form
/// in UTF-8 (the only encoding a browser sends for a UTF-8 page); every name and value must
/// decode to UTF-8 (400 otherwise: nothing is stored altered).
async fn read_form(req: &Req<'_>, body: Body) -> Result<Form, ApiError> {
    let content_type = req
        .parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut params = content_type.split(';').map(str::trim);
    let is_form = params
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    let utf8 = params.all(|p| {
        !p.to_ascii_lowercase().starts_with("charset=")
            || p[8..].trim_matches('"').eq_ignore_ascii_case("utf-8")
    });
    if !is_form || !utf8 {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limits = &req.state.limits;
    let bytes = crate::http::read_body(
        body,
        &req.parts.headers,
        MAX_FORM_BYTES,
        limits.body_timeout,
    )
    .await?;
    parse_form(&bytes).map(Form)
}

/// The pairs of a form body, each decoded strictly as UTF-8.
fn parse_form(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |raw: &[u8]| -> Result<String, ApiError> {
        let spaced: Vec<u8> = raw
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| ApiError::validation("The form is not valid UTF-8.", "body"))
    };
    bytes
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// Reads the form of a signed-in session and checks its origin and form token.
async fn signed_form(req: &Req<'_>, signed: &Signed, body: Body) -> Result<Form, ApiError> {
    req.same_origin()?;
    let form = read_form(req, body).await?;
    let token = form.get("csrf").unwrap_or("");
    if !signed.session.csrf_matches(&signed.key, token) {
        return Err(ApiError::Forbidden(BAD_FORM_TOKEN));
    }
    Ok(form)
}

/// The value of cookie `name`, if the request carries it once.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(v);
            }
        }
    }
    found
}

async fn route(req: &Req<'_>, body: Body) -> Result<Response, ApiError> {
    let path = req.parts.uri.path();
    let rest = path.strip_prefix("/console").unwrap_or(path);
    // HEAD is answered as GET (hyper sends no body).
    let method = match req.parts.method.clone() {
        Method::HEAD => Method::GET,
        m => m,
    };
    match (&method, rest) {
        (&Method::GET, "") => Ok(redirect("/console/", None)),
        (&Method::GET, "/assets/console.css") => Ok(asset(pages::CSS, "text/css; charset=utf-8")),
        (&Method::GET, "/assets/console.js") => {
            Ok(asset(pages::JS, "text/javascript; charset=utf-8"))
        }
        (&Method::GET, "/login") if req.signed_in(false).is_some() => {
            Ok(redirect("/console/", None))
        }
        (&Method::GET, "/login") => Ok(actions::login_page(req, None)),
        (&Method::POST, "/login") => actions::login(req, body).await,
        (&Method::GET, r) if r.starts_with("/login/oidc/") => {
            match r["/login/oidc/".len()..].split_once('/') {
                Some((index, "callback")) => oidc::callback(req, index).await,
                Some(_) => Err(ApiError::NotFound),
                None => oidc::start(req, &r["/login/oidc/".len()..]).await,
            }
        }
        (_, "/assets/console.css" | "/assets/console.js" | "") => {
            Err(ApiError::MethodNotAllowed("GET"))
        }
        (_, "/login") => Err(ApiError::MethodNotAllowed("GET, POST")),
        _ => {
            let Some(signed) = req.signed_in(rest != "/rates.json") else {
                if rest == "/rates.json" {
                    return Err(ApiError::Denied("no console session"));
                }
                return Ok(redirect("/console/login", None));
            };
            let renewed = signed.renewed.clone();
            let mut response = signed_route(req, &method, rest, signed, body).await?;
            if let Some(cookie) = renewed
                && !response.headers().contains_key(header::SET_COOKIE)
            {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            Ok(response)
        }
    }
}

/// The pages and actions of a signed-in session.
async fn signed_route(
    req: &Req<'_>,
    method: &Method,
    rest: &str,
    signed: Signed,
    body: Body,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    match segments.as_slice() {
        [""] if get => actions::overview(req, &signed).await,
        ["logout"] if post => actions::logout(req, &signed, body).await,
        ["keys", slot, "regenerate"] if get => actions::regenerate_page(req, &signed, slot),
        ["keys", slot, "regenerate"] if post => actions::regenerate(req, signed, slot, body).await,
        ["identities"] if get => actions::identities(req, &signed).await,
        ["identities"] if post => actions::create_identity(req, &signed, body).await,
        ["identities", id] if get => actions::identity(req, &signed, id).await,
        ["identities", id, verb] if post => {
            actions::identity_action(req, &signed, id, verb, body).await
        }
        ["signing-keys"] if get => actions::signing_keys(req, &signed).await,
        ["signing-keys", "rotate"] if post => actions::rotate(req, &signed, body).await,
        ["audit"] if get => actions::audit(req, &signed).await,
        ["rates"] if get => Ok(pages::rates(&signed)),
        ["rates.json"] if get => rates::snapshot(req.state),
        [""] | ["identities", _] | ["signing-keys"] | ["audit"] | ["rates"] | ["rates.json"] => {
            Err(ApiError::MethodNotAllowed("GET"))
        }
        ["logout"] | ["identities", _, _] | ["signing-keys", "rotate"] => {
            Err(ApiError::MethodNotAllowed("POST"))
        }
        ["identities"] | ["keys", _, "regenerate"] => Err(ApiError::MethodNotAllowed("GET, POST")),
        _ => Err(ApiError::NotFound),
    }
}

/// A 303 to `to`, with a cookie to set.
fn redirect(to: &str, cookie: Option<HeaderValue>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response();
    if let Some(c) = cookie {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response();
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// An error as a page: the API's status and message; a 5xx's cause is logged, never shown.
fn error_page(req: &Req<'_>, e: ApiError) -> Response {
    if matches!(
        e,
        ApiError::Internal(_) | ApiError::Unavailable(_) | ApiError::CannotWrite(_)
    ) {
        tracing::warn!(cause = %e.cause(), path = req.parts.uri.path(), "console request failed");
    }
    let status = e.status();
    let message = e.body().error.message;
    let api = e.into_response();
    let signed = req.signed_in(false);
    let mut response = pages::error(signed.as_ref(), status, &message);
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(v) = api.headers().get(&name) {
            response.headers_mut().insert(name, v.clone());
        }
    }
    response
}

/// The content security policy: this origin's stylesheet and script, nothing inline, no
/// frames, forms only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn secure_headers(headers: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(headers, "content-security-policy", CSP);
    set(headers, "x-frame-options", "DENY");
    set(headers, "x-content-type-options", "nosniff");
    // `same-origin`: the console's own forms carry their origin; other sites learn nothing.
    set(headers, "referrer-policy", "same-origin");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    set(
        headers,
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_strictly() {
        let pairs = parse_form(b"a=1&b=x+y%21&c&&scope=chat&scope=voip").expect("a form");
        let want = [
            ("a", "1"),
            ("b", "x y!"),
            ("c", ""),
            ("scope", "chat"),
            ("scope", "voip"),
        ];
        assert_eq!(pairs.len(), want.len());
        for ((k, v), (wk, wv)) in pairs.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        assert!(parse_form(b"custom_id=%FF%FEab").is_err());
        assert!(parse_form(b"%C3=x").is_err());
    }

    #[test]
    fn only_the_cookie_named_once_is_read() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=3"));
        assert_eq!(
            cookie(&headers, "b"),
            None,
            "two values: neither is trusted"
        );
    }
}
