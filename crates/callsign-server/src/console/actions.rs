//! What each console page reads and each form does. Input is parsed whole before anything is
//! written; a refused form changes nothing.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use callsign_api::connection_string::ConnectionStringParts;
use callsign_core::{AccessKey, CustomId, ExpiresIn, IdentityId, Scopes};
use callsign_hmac::AccessKeyMac;
use callsign_store::{
    AuditEvent, AuditOperation, AuditOutcome, AuditQuery, IdentityFilter, KeySlot,
};
use time::OffsetDateTime;

use super::pages::{self, IdentityView, Notice};
use super::session::{self, LOGIN_COOKIE, Signer};
use super::{Form, Req, Signed, cookie, read_form, redirect, signed_form};
use crate::error::ApiError;

/// The sign-in page, with a fresh double-submit token when the browser holds none.
pub(crate) fn login_page(req: &Req<'_>, error: Option<(StatusCode, &str)>) -> Response {
    let existing = cookie(&req.parts.headers, LOGIN_COOKIE)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()));
    let token = existing.map_or_else(session::random_hex, str::to_owned);
    let issuers: Vec<(usize, String)> = req
        .state
        .issuers
        .console_logins()
        .map(|(i, c)| (i, c.issuer.clone()))
        .collect();
    let signed_out = error.is_none()
        && req
            .query()
            .iter()
            .any(|(k, v)| k == "notice" && v == "signed-out");
    let mut response = pages::login(&token, error, &issuers, signed_out);
    if existing.is_none() {
        let c = req.cookie_header(LOGIN_COOKIE, &token, 3600);
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

const WRONG_KEY: &str = "This access key is not valid for this server.";
const VERIFY_ONLY: &str =
    "A verify-only key cannot sign in to the console; use the primary or secondary key.";

/// `POST /console/login`: an access key (or a whole connection string) opens a session.
pub(crate) async fn login(req: &Req<'_>, body: Body) -> Result<Response, ApiError> {
    let client = req.client();
    if let Some(ip) = client {
        req.state.auth_failures.check(ip)?;
    }
    req.same_origin()?;
    let form = read_form(req, body).await.inspect_err(|e| {
        // A body that never arrives is counted like a wrong key (as the API counts it).
        if let (ApiError::RequestTimeout, Some(ip)) = (e, client) {
            req.state.auth_failures.record(ip);
        }
    })?;
    // Again now that the body is in: many sign-ins may have waited for their bodies at once.
    if let Some(ip) = client {
        req.state.auth_failures.check(ip)?;
    }
    let expected = cookie(&req.parts.headers, LOGIN_COOKIE)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or("");
    let sent = form.get("csrf").unwrap_or("");
    if expected.is_empty() || !session::fixed_time_eq(expected, sent) {
        return Err(ApiError::Forbidden(super::BAD_FORM_TOKEN));
    }
    let failed = |message| {
        if let Some(ip) = client {
            req.state.auth_failures.record(ip);
        }
        Ok(login_page(req, Some((StatusCode::UNAUTHORIZED, message))))
    };
    let Some(given) = given_key(form.get("key").unwrap_or("")) else {
        return failed(WRONG_KEY);
    };
    let Some((resource, slot, key)) = find_key(req, &given) else {
        return failed(WRONG_KEY);
    };
    if slot == KeySlot::VerifyOnly {
        return failed(VERIFY_ONLY);
    }
    let mut response = req.open_session(resource, Signer::Key(slot), key).await?;
    let clear = req.cookie_header(LOGIN_COOKIE, "", 0);
    response.headers_mut().append(header::SET_COOKIE, clear);
    Ok(response)
}

/// The key of a sign-in form: the key itself or a connection string holding it.
fn given_key(text: &str) -> Option<AccessKeyMac> {
    let text = text.trim();
    if text.is_empty() || text.len() > 2048 {
        return None;
    }
    let key = if text.contains('=') && text.to_ascii_lowercase().contains("accesskey=") {
        ConnectionStringParts::split(text).ok()?.access_key?
    } else {
        text
    };
    AccessKeyMac::from_base64(key).ok()
}

/// The resource and slot whose key `given` is, among the resources the request's host reaches.
fn find_key(
    req: &Req<'_>,
    given: &AccessKeyMac,
) -> Option<(callsign_core::ResourceId, KeySlot, AccessKeyMac)> {
    let routing = req.state.resources.get();
    routing.candidates(req.host()).iter().find_map(|r| {
        r.keys
            .iter()
            .find(|(_, stored)| session::same_key(given, stored))
            .map(|(slot, key)| (r.id, *slot, key.clone()))
    })
}

/// `POST /console/logout`.
pub(crate) async fn logout(
    req: &Req<'_>,
    signed: &Signed,
    body: Body,
) -> Result<Response, ApiError> {
    signed_form(req, signed, body).await?;
    req.console.logouts.end(&signed.session, req.now);
    req.directory(signed)
        .record(AuditEvent::resource(
            AuditOperation::ConsoleLogout,
            signed.session.resource,
            AuditOutcome::Success,
        ))
        .await?;
    Ok(redirect(
        "/console/login?notice=signed-out",
        Some(req.cookie_header(super::COOKIE, "", 0)),
    ))
}

/// A notice named by the `notice` query parameter (fixed texts; nothing is echoed).
fn notice(req: &Req<'_>) -> Option<Notice> {
    req.query()
        .into_iter()
        .find(|(k, _)| k == "notice")
        .and_then(|(_, v)| Notice::parse(&v))
}

/// `GET /console/`: the resource, its keys, and (for the default resource) every resource.
pub(crate) async fn overview(req: &Req<'_>, signed: &Signed) -> Result<Response, ApiError> {
    let resources = req.state.store.resources().await?;
    let mine = resources
        .iter()
        .find(|r| r.id == signed.session.resource)
        .ok_or(ApiError::NotFound)?;
    let others = if req.is_admin(signed) {
        resources.iter().filter(|r| r.id != mine.id).collect()
    } else {
        Vec::new()
    };
    let view = pages::Overview {
        resource: mine,
        others,
        endpoint: req.endpoint(),
        admin: req.is_admin(signed),
    };
    Ok(pages::overview(signed, &view, notice(req)))
}

/// The slot a path names (`primary`, `secondary`, `verifyOnly`).
fn slot_of(name: &str) -> Result<KeySlot, ApiError> {
    match name {
        "primary" => Ok(KeySlot::Primary),
        "secondary" => Ok(KeySlot::Secondary),
        "verifyOnly" => Ok(KeySlot::VerifyOnly),
        _ => Err(ApiError::NotFound),
    }
}

/// `GET /console/keys/<slot>/regenerate`: the confirmation.
pub(crate) fn regenerate_page(
    req: &Req<'_>,
    signed: &Signed,
    slot: &str,
) -> Result<Response, ApiError> {
    let slot = slot_of(slot)?;
    let current = fingerprint(req, signed, slot);
    Ok(pages::regenerate(signed, slot, &current, None))
}

/// A short, one-way mark of the key now in `slot` (`none` when there is none): the
/// confirmation form carries it, so that sending the form again (a reload) cannot replace the
/// key a second time.
fn fingerprint(req: &Req<'_>, signed: &Signed, slot: KeySlot) -> String {
    req.key_of(signed.session.resource, slot)
        .map(|k| k.sign("callsign console key fingerprint v1")[..16].to_owned())
        .unwrap_or_else(|| "none".to_owned())
}

/// `POST /console/keys/<slot>/regenerate`: a new key in `slot`; the session goes on (re-signed
/// with the new key when it was opened with the old one).
pub(crate) async fn regenerate(
    req: &Req<'_>,
    mut signed: Signed,
    slot: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let slot = slot_of(slot)?;
    let form = signed_form(req, &signed, body).await?;
    let current = fingerprint(req, &signed, slot);
    if !session::fixed_time_eq(form.get("current").unwrap_or(""), &current) {
        return Err(ApiError::validation(
            "The key changed since this page was shown (was the form sent twice?); nothing was changed.",
            "current",
        ));
    }
    if !form.ticked("confirm") {
        let message = "Tick the confirmation to regenerate the key; nothing was changed.";
        let mut page = pages::regenerate(&signed, slot, &current, Some(message));
        *page.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(page);
    }
    let revoke = form.ticked("revoke_tokens");
    let key = AccessKey::generate();
    let store = &req.state.store;
    let actor = req.actor(&signed);
    let replaced = store
        .replace_access_key(signed.session.resource, slot, key.clone(), revoke, &actor)
        .await?;
    let revoked = replaced.ok_or(ApiError::NotFound)?;
    // This node serves the new key at once; others when they see the change (their poll).
    if let Err(e) = req.state.resources.refresh(store.as_ref()).await {
        tracing::warn!(error = %e.chain(), "resources could not be reloaded after a key change");
    }
    if Some(slot) == signed.session.key_slot() {
        signed.key = AccessKeyMac::from_base64(key.expose())
            .map_err(|_| ApiError::internal(anyhow::anyhow!("a generated key is not base64")))?;
        signed.session.seen = req.now;
    }
    let cookie = req.session_cookie(&signed);
    let shown = match slot {
        KeySlot::VerifyOnly => key.expose().to_owned(),
        _ => callsign_api::connection_string::format(&req.endpoint(), key.expose()),
    };
    let mut page = pages::regenerated(&signed, slot, &shown, revoke.then_some(revoked));
    page.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(page)
}

/// Identities shown per page.
const PAGE: u32 = 50;

/// `GET /console/identities`: search by id or custom id prefix, stale filter, paged.
pub(crate) async fn identities(req: &Req<'_>, signed: &Signed) -> Result<Response, ApiError> {
    let query = req.query();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let q = param("q");
    if let Some(q) = &q
        && q.starts_with("8:")
    {
        let dir = req.directory(signed);
        let id = dir.resolve(q)?;
        return Ok(redirect(&pages::identity_href(&id), None));
    }
    let stale = match param("stale").as_deref() {
        None => None,
        Some(d @ ("7" | "30" | "90")) => d.parse::<i64>().ok(),
        Some(_) => {
            return Err(ApiError::validation("Choose 7, 30 or 90 days.", "stale"));
        }
    };
    if q.as_ref()
        .is_some_and(|q| q.len() > 256 || q.chars().any(char::is_control))
    {
        return Err(ApiError::validation(
            "The search must be at most 256 bytes, without control characters.",
            "q",
        ));
    }
    let dir = req.directory(signed);
    let after = param("after").map(|a| dir.resolve(&a)).transpose()?;
    let filter = IdentityFilter {
        custom_id_prefix: q.clone(),
        last_token_issued_before: stale.map(|d| req.state.clock.now() - time::Duration::days(d)),
    };
    let page = dir.list(after.as_ref(), PAGE, &filter).await?;
    let view = pages::IdentitiesView {
        q: q.as_deref().unwrap_or(""),
        stale,
        page: &page,
    };
    Ok(pages::identities(signed, &view, notice(req)))
}

/// `POST /console/identities`: a new identity, with an optional custom id.
pub(crate) async fn create_identity(
    req: &Req<'_>,
    signed: &Signed,
    body: Body,
) -> Result<Response, ApiError> {
    let form = signed_form(req, signed, body).await?;
    let custom_id = match form
        .get("custom_id")
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        None => None,
        Some(c) => {
            Some(CustomId::parse(c).map_err(|e| ApiError::validation(e.to_string(), "customId"))?)
        }
    };
    let dir = req.directory(signed);
    dir.throttle(crate::throttle::OperationClass::Create)?;
    let created = dir.create(custom_id).await?;
    let notice = if created.created {
        "created"
    } else {
        "existing"
    };
    let to = format!(
        "{}?notice={notice}",
        pages::identity_href(&created.identity.id)
    );
    Ok(redirect(&to, None))
}

/// `GET /console/identities/<id>`.
pub(crate) async fn identity(
    req: &Req<'_>,
    signed: &Signed,
    raw: &str,
) -> Result<Response, ApiError> {
    let dir = req.directory(signed);
    let id = dir.resolve(&crate::http::decode_named(raw, "id")?)?;
    let record = dir.get(&id).await?;
    let view = IdentityView {
        record: &record,
        token: None,
    };
    Ok(pages::identity(signed, &view, notice(req)))
}

/// `POST /console/identities/<id>/<issue|revoke|delete>`.
pub(crate) async fn identity_action(
    req: &Req<'_>,
    signed: &Signed,
    raw: &str,
    verb: &str,
    body: Body,
) -> Result<Response, ApiError> {
    if !matches!(verb, "issue" | "revoke" | "delete") {
        return Err(ApiError::NotFound);
    }
    let form = signed_form(req, signed, body).await?;
    let dir = req.directory(signed);
    let id = dir.resolve(&crate::http::decode_named(raw, "id")?)?;
    match verb {
        "issue" => issue(req, signed, &id, &form).await,
        "revoke" => {
            dir.throttle(crate::throttle::OperationClass::Revoke)?;
            dir.revoke(&id).await?;
            Ok(redirect(
                &format!("{}?notice=revoked", pages::identity_href(&id)),
                None,
            ))
        }
        _ => {
            if !form.ticked("confirm") {
                return Err(ApiError::validation(
                    "Tick the confirmation to delete the identity; nothing was changed.",
                    "confirm",
                ));
            }
            dir.throttle(crate::throttle::OperationClass::Delete)?;
            dir.delete(&id).await?;
            Ok(redirect("/console/identities?notice=deleted", None))
        }
    }
}

/// Issues a token with the form's scopes and lifetime and shows it once.
async fn issue(
    req: &Req<'_>,
    signed: &Signed,
    id: &IdentityId,
    form: &Form,
) -> Result<Response, ApiError> {
    let names: Vec<&str> = form.all("scope").collect();
    if names.is_empty() {
        return Err(ApiError::validation("Choose at least one scope.", "scope"));
    }
    let scopes =
        Scopes::parse(names, true).map_err(|e| ApiError::validation(e.to_string(), "scope"))?;
    let minutes = form
        .get("minutes")
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| m.parse::<i64>())
        .transpose()
        .map_err(|_| {
            ApiError::validation("The lifetime must be a whole number of minutes.", "minutes")
        })?;
    let expires = ExpiresIn::from_optional_minutes(minutes)
        .map_err(|e| ApiError::validation(e.to_string(), "minutes"))?;
    let dir = req.directory(signed);
    dir.throttle(crate::throttle::OperationClass::Issue)?;
    let record = dir.get(id).await?;
    let token = dir.issue(&(&record).into(), &scopes, expires).await?;
    if !dir.audits_every_issue() {
        let event = AuditEvent::identity(AuditOperation::IssueToken, *id, AuditOutcome::Success)
            .with_detail(format!("scopes {}", scopes.to_claim()));
        dir.record(event).await?;
    }
    let view = IdentityView {
        record: &record,
        token: Some((&token.token, token.expires_at)),
    };
    Ok(pages::identity(signed, &view, Some(Notice::Issued)))
}

/// `GET /console/signing-keys`.
pub(crate) async fn signing_keys(req: &Req<'_>, signed: &Signed) -> Result<Response, ApiError> {
    let keys = req.state.store.signing_keys().await?;
    let now = req.state.clock.now();
    let states = crate::keys::key_states(&keys, now);
    Ok(pages::signing_keys(
        signed,
        &keys,
        &states,
        req.is_admin(signed),
        notice(req),
    ))
}

/// `POST /console/signing-keys/rotate` (sessions of the default resource only).
pub(crate) async fn rotate(
    req: &Req<'_>,
    signed: &Signed,
    body: Body,
) -> Result<Response, ApiError> {
    let form = signed_form(req, signed, body).await?;
    if !req.is_admin(signed) {
        return Err(ApiError::Forbidden(
            "Only a session of the deployment's default resource rotates the signing keys.",
        ));
    }
    if !form.ticked("confirm") {
        return Err(ApiError::validation(
            "Tick the confirmation to rotate the signing key; nothing was changed.",
            "confirm",
        ));
    }
    let store = &req.state.store;
    let now = req.state.clock.now();
    let alg = req.state.keys.alg();
    crate::keys::rotate_signing_key(store.as_ref(), alg, now, req.actor(signed))
        .await
        .map_err(ApiError::internal)?;
    if let Err(e) = req.state.keys.refresh(store.as_ref(), now).await {
        tracing::warn!(error = %e.chain(), "signing keys could not be reloaded after a rotation");
    }
    Ok(redirect("/console/signing-keys?notice=rotated", None))
}

/// Audit records shown per page.
const AUDIT_PAGE: usize = 100;

/// `GET /console/audit`: filtered by time, resource (default resource's sessions) and
/// operation; oldest first from `since` (the last 24 hours unless told).
pub(crate) async fn audit(req: &Req<'_>, signed: &Signed) -> Result<Response, ApiError> {
    let filter = AuditFilter::read(req, signed)?;
    let query = AuditQuery {
        after: filter.after,
        since: filter.since,
        resource: filter.resource,
        operation: filter.operation,
        limit: AUDIT_PAGE + 1,
    };
    let mut records = req.state.store.audit_records(&query).await?;
    let mut next = (records.len() > AUDIT_PAGE).then(|| records[AUDIT_PAGE - 1].seq);
    records.truncate(AUDIT_PAGE);
    if let Some(until) = filter.until
        && let Some(cut) = records.iter().position(|r| r.at > until)
    {
        records.truncate(cut);
        next = None;
    }
    Ok(pages::audit(signed, &filter, &records, next))
}

/// The audit page's filter, read from its query.
pub(crate) struct AuditFilter {
    pub(crate) since: Option<OffsetDateTime>,
    pub(crate) until: Option<OffsetDateTime>,
    pub(crate) operation: Option<AuditOperation>,
    pub(crate) resource: Option<callsign_core::ResourceId>,
    pub(crate) after: Option<i64>,
    pub(crate) admin: bool,
}

impl AuditFilter {
    fn read(req: &Req<'_>, signed: &Signed) -> Result<Self, ApiError> {
        let query = req.query();
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
        let time = |name: &'static str| -> Result<Option<OffsetDateTime>, ApiError> {
            match param(name).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => pages::parse_local_minute(v).map(Some).ok_or_else(|| {
                    ApiError::validation("Give the time as YYYY-MM-DDTHH:MM (UTC).", name)
                }),
            }
        };
        let since = if param("since").is_none() {
            Some(req.state.clock.now() - time::Duration::hours(24))
        } else {
            time("since")?
        };
        let operation =
            match param("operation").filter(|v| !v.is_empty()) {
                None => None,
                Some(v) => Some(AuditOperation::parse(v).ok_or_else(|| {
                    ApiError::validation("There is no such operation.", "operation")
                })?),
            };
        let admin = req.is_admin(signed);
        let resource = match param("resource").filter(|v| !v.is_empty()) {
            Some(r) if admin => Some(
                callsign_core::ResourceId::parse(r)
                    .map_err(|_| ApiError::validation("The resource is not a GUID.", "resource"))?,
            ),
            _ if admin => None,
            _ => Some(signed.session.resource),
        };
        let after = match param("after").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(v.parse::<i64>().map_err(|_| {
                ApiError::validation("The page position is not a number.", "after")
            })?),
        };
        Ok(Self {
            since,
            until: time("until")?,
            operation,
            resource,
            after,
            admin,
        })
    }
}
