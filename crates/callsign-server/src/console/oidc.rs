//! Signing in to the console with a trusted issuer: the authorization code flow with PKCE
//! (RFC 7636, S256), the console a public client (`console_client_id` of the issuer).
//!
//! The flow's state, PKCE verifier and start time live in a short cookie (`callsign_oidc`,
//! HttpOnly, `SameSite=Lax` because the issuer sends the browser back with a cross-site
//! navigation, ten minutes); any node finishes what another started. The code is redeemed at
//! the issuer's token endpoint (found by discovery, with the issuer's own CA and timeouts) only
//! when the callback's state matches the cookie's; the access token is then verified exactly as
//! a bearer token of the API is (issuer, audience, expiry, signature), and the user needs the
//! issuer's admin role. A failed callback counts against the client's address like a wrong key.

use aws_lc_rs::digest;
use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::actions::login_page;
use super::session::{self, Signer};
use super::{Req, cookie, redirect};
use crate::error::ApiError;

/// The flow cookie.
const FLOW_COOKIE: &str = "callsign_oidc";
/// Where the flow cookie is sent.
const FLOW_PATH: &str = "/console/login/oidc";
/// How long a sign-in may take at the issuer.
const FLOW_SECONDS: i64 = 600;
/// The largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Each issuer has a callback of its own, so that a response is only ever taken as the one
/// issuer's it was sent to (a mix-up defence besides the `iss` check).
fn redirect_uri(req: &Req<'_>, index: usize) -> String {
    format!("{}console/login/oidc/{index}/callback", req.endpoint())
}

/// The flow cookie: `SameSite=Lax`, as the issuer sends the browser back cross-site.
fn flow_cookie(req: &Req<'_>, value: &str, max_age: i64) -> axum::http::HeaderValue {
    req.cookie_at(FLOW_COOKIE, value, FLOW_PATH, "Lax", max_age)
}

/// `GET /console/login/oidc/<n>`: off to the issuer's authorization endpoint.
pub(crate) async fn start(req: &Req<'_>, index: &str) -> Result<Response, ApiError> {
    let index: usize = index.parse().map_err(|_| ApiError::NotFound)?;
    if req.state.issuers.console_logins().all(|(i, _)| i != index) {
        return Err(ApiError::NotFound);
    }
    let (endpoints, issuer, _) = req.state.issuers.console_login(index).await.map_err(|e| {
        tracing::warn!(error = %e, "console sign-in: the issuer's endpoints are unknown");
        ApiError::Unavailable(e)
    })?;
    let client_id = issuer.console_client_id.as_deref().unwrap_or_default();
    let state = session::random_hex();
    let verifier = format!("{}{}", session::random_hex(), session::random_hex());
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    let mut url = endpoints.authorization;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &redirect_uri(req, index))
        .append_pair("scope", &issuer.console_scope)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(resource) = &issuer.console_resource {
        url.query_pairs_mut().append_pair("resource", resource);
    }
    let flow = format!("{index}.{state}.{verifier}.{}", req.now);
    Ok(redirect(
        url.as_str(),
        Some(flow_cookie(req, &flow, FLOW_SECONDS)),
    ))
}

/// A started flow, as its cookie holds it.
struct Flow<'a> {
    index: usize,
    state: &'a str,
    verifier: &'a str,
    started: i64,
}

fn parse_flow(value: &str) -> Option<Flow<'_>> {
    let mut parts = value.split('.');
    let flow = Flow {
        index: parts.next()?.parse().ok()?,
        state: parts.next()?,
        verifier: parts.next()?,
        started: parts.next()?.parse().ok()?,
    };
    let hex = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.next().is_none() && hex(flow.state, 32) && hex(flow.verifier, 64)).then_some(flow)
}

/// What the issuer sent the browser back with.
#[derive(Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

/// `GET /console/login/oidc/<n>/callback`: checks the flow (its issuer, state, age, and the
/// issuer the response names), redeems the code, verifies the token, opens the session.
///
/// A missing or mismatched state is not counted against the address (any page can send a
/// browser here); a response with the right state that fails later is.
pub(crate) async fn callback(req: &Req<'_>, index: &str) -> Result<Response, ApiError> {
    let client = req.client();
    if let Some(ip) = client {
        req.state.auth_failures.check(ip)?;
    }
    let clear = flow_cookie(req, "", 0);
    let failed = |status: StatusCode, message: &str, counts: bool| {
        if let (true, Some(ip)) = (counts, client) {
            req.state.auth_failures.record(ip);
        }
        let mut page = login_page(req, Some((status, message)));
        page.headers_mut().append(header::SET_COOKIE, clear.clone());
        Ok(page)
    };
    let query = req.parts.uri.query().unwrap_or("");
    let back: Callback = callback_params(query);
    let Some(flow) = cookie(&req.parts.headers, FLOW_COOKIE).and_then(parse_flow) else {
        return failed(StatusCode::BAD_REQUEST, EXPIRED, false);
    };
    let this_issuer = index.parse::<usize>().ok() == Some(flow.index);
    if !this_issuer || req.now - flow.started > FLOW_SECONDS || req.now < flow.started {
        return failed(StatusCode::BAD_REQUEST, EXPIRED, false);
    }
    let state_ok = back
        .state
        .as_deref()
        .is_some_and(|s| session::fixed_time_eq(s, flow.state));
    if !state_ok {
        return failed(StatusCode::BAD_REQUEST, EXPIRED, false);
    }
    let Some(issuer) = req
        .state
        .issuers
        .console_logins()
        .find(|(i, _)| *i == flow.index)
        .map(|(_, c)| c.issuer.clone())
    else {
        return failed(StatusCode::BAD_REQUEST, EXPIRED, true);
    };
    // RFC 9207: a response naming another issuer was not this issuer's.
    if back.iss.as_deref().is_some_and(|iss| iss != issuer) {
        return failed(StatusCode::BAD_REQUEST, OTHER_ISSUER, true);
    }
    if let Some(error) = back.error {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(40)
            .collect();
        let message = format!("The identity provider did not sign you in ({code}).");
        return failed(StatusCode::UNAUTHORIZED, &message, false);
    }
    let Some(code) = back.code.filter(|c| !c.is_empty() && c.len() <= 4096) else {
        return failed(
            StatusCode::BAD_REQUEST,
            "The identity provider sent no code.",
            true,
        );
    };
    match sign_in(req, &flow, &code, back.iss.is_some()).await {
        Ok(mut response) => {
            response.headers_mut().append(header::SET_COOKIE, clear);
            Ok(response)
        }
        Err(Refused::Unavailable(e)) => {
            // Counted too: a client must not make this node call a failing issuer for free.
            if let Some(ip) = client {
                req.state.auth_failures.record(ip);
            }
            Err(e)
        }
        Err(Refused::Denied(status, message)) => failed(status, &message, true),
    }
}

const OTHER_ISSUER: &str = "The answer came from another identity provider than the one the sign-in went to; nothing was changed.";
const EXPIRED: &str =
    "The sign-in expired or was started in another browser; nothing was changed. Start again.";

enum Refused {
    Unavailable(ApiError),
    Denied(StatusCode, String),
}

/// Redeems the code, verifies the token, checks the role and opens the session.
async fn sign_in(
    req: &Req<'_>,
    flow: &Flow<'_>,
    code: &str,
    named_itself: bool,
) -> Result<Response, Refused> {
    let state = req.state;
    let token = redeem(req, flow, code, named_itself).await?;
    let now = state.clock.now();
    let principal = state.issuers.verify(&token, now).await.map_err(|r| {
        Refused::Denied(
            StatusCode::UNAUTHORIZED,
            format!("The identity provider's token was not accepted: {r}."),
        )
    })?;
    let expected = state
        .issuers
        .console_logins()
        .find(|(i, _)| *i == flow.index)
        .map(|(_, c)| c.issuer.clone());
    if expected.as_deref() != Some(principal.issuer.issuer.as_str()) {
        return Err(Refused::Denied(
            StatusCode::UNAUTHORIZED,
            "The token comes from another issuer.".into(),
        ));
    }
    if principal.expires_at.unix_timestamp() <= req.now {
        return Err(Refused::Denied(
            StatusCode::UNAUTHORIZED,
            "The identity provider's token has expired already.".into(),
        ));
    }
    let admin = &principal.issuer.admin_role;
    if !principal.has_role(admin) {
        tracing::info!(subject = %principal.audit_subject(), role = %admin, "console sign-in refused: the user lacks the role");
        return Err(Refused::Denied(
            StatusCode::FORBIDDEN,
            format!("Your account lacks the role {admin}, which the console needs."),
        ));
    }
    let resource = crate::bearer::resource(state, req.parts, &principal)
        .map_err(|e| Refused::Denied(e.status(), e.body().error.message))?;
    let key = req.server_secret();
    let mut subject = principal.audit_subject();
    let mut end = subject.len().min(350);
    while !subject.is_char_boundary(end) {
        end -= 1;
    }
    subject.truncate(end);
    let signer = Signer::Issuer {
        subject,
        expires: principal.expires_at.unix_timestamp(),
    };
    req.open_session(resource, signer, key)
        .await
        .map_err(Refused::Unavailable)
}

/// The access token for `code`, from the issuer's token endpoint. `named_itself`: the
/// authorization response carried `iss`; an issuer that promises it must have sent it.
async fn redeem(
    req: &Req<'_>,
    flow: &Flow<'_>,
    code: &str,
    named_itself: bool,
) -> Result<String, Refused> {
    let unavailable = |e: anyhow::Error| {
        tracing::warn!(error = %e, "console sign-in: the code could not be redeemed");
        Refused::Unavailable(ApiError::Unavailable(e))
    };
    let (endpoints, issuer, http) = req
        .state
        .issuers
        .console_login(flow.index)
        .await
        .map_err(unavailable)?;
    if endpoints.names_itself && !named_itself {
        return Err(Refused::Denied(
            StatusCode::BAD_REQUEST,
            OTHER_ISSUER.into(),
        ));
    }
    let client_id = issuer.console_client_id.as_deref().unwrap_or_default();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", &redirect_uri(req, flow.index)),
        ("client_id", client_id),
        ("code_verifier", flow.verifier),
    ];
    let body = {
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.extend_pairs(form);
        if let Some(resource) = &issuer.console_resource {
            body.append_pair("resource", resource);
        }
        body.finish()
    };
    let resp = http
        .post(endpoints.token)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| unavailable(e.into()))?;
    let status = resp.status();
    let bytes = callsign_verify::read_bounded(resp, MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| unavailable(e.into()))?
        .ok_or_else(|| unavailable(anyhow::anyhow!("the token response is too large")))?;
    if status.is_server_error() {
        return Err(unavailable(anyhow::anyhow!(
            "the token endpoint answered {status}"
        )));
    }
    if !status.is_success() {
        return Err(Refused::Denied(
            StatusCode::UNAUTHORIZED,
            "The identity provider refused the code.".into(),
        ));
    }
    let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
        unavailable(anyhow::anyhow!(
            "the token response is not JSON with an access_token"
        ))
    })?;
    Ok(parsed.access_token)
}

/// The callback's parameters (unknown ones ignored, the last of a repeated one kept).
fn callback_params(query: &str) -> Callback {
    let mut back = Callback::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = Some(v.into_owned());
        match k.as_ref() {
            "code" => back.code = v,
            "state" => back.state = v,
            "error" => back.error = v,
            "iss" => back.iss = v,
            _ => {}
        }
    }
    back
}
