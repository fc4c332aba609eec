//! The console's HTML. Every interpolated value is escaped by `maud`; no page carries inline
//! script or style (the Content-Security-Policy forbids both).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use callsign_core::IdentityId;
use callsign_store::{
    AuditOperation, AuditRecord, IdentityPage, IdentityRecord, KeySlot, ResourceRecord,
    StoredSigningKey,
};
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;

use super::Signed;
use super::actions::AuditFilter;
use super::session::Signer;
use crate::keys::KeyState;

/// The stylesheet, compiled in.
pub(crate) const CSS: &str = include_str!("assets/console.css");
/// The script (copy buttons, live charts), compiled in.
pub(crate) const JS: &str = include_str!("assets/console.js");

/// A fixed message after an action (named in a redirect's query; never echoed text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    Created,
    Existing,
    Revoked,
    Deleted,
    Issued,
    Rotated,
}

impl Notice {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Notice::Created,
            "existing" => Notice::Existing,
            "revoked" => Notice::Revoked,
            "deleted" => Notice::Deleted,
            "rotated" => Notice::Rotated,
            _ => return None,
        })
    }

    fn text(self) -> &'static str {
        match self {
            Notice::Created => "Identity created.",
            Notice::Existing => "An identity with this custom id exists already: here it is.",
            Notice::Revoked => "Every token issued to this identity so far is revoked, at once.",
            Notice::Deleted => "Identity deleted. Its id will never be used again.",
            Notice::Issued => "Token issued. Copy it now: it is not shown again.",
            Notice::Rotated => {
                "A new signing key is published; it starts signing once every verifier has had time to fetch it."
            }
        }
    }
}

/// Which page of the navigation is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Identities,
    SigningKeys,
    Audit,
    Rates,
    None,
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// The frame of every page: head, skip link, navigation and sign-out for a session.
fn layout(title: &str, signed: Option<&Signed>, nav: Nav, body: Markup) -> Markup {
    let link = |id: &str, href: &str, label: &str, this: Nav| {
        html! {
            li { a id=(id) href=(href) aria-current=[(nav == this).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · callsign console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "callsign console" }
                    @if let Some(signed) = signed {
                        nav aria-label="Console" {
                            ul {
                                (link("nav-overview", "/console/", "Overview", Nav::Overview))
                                (link("nav-identities", "/console/identities", "Identities", Nav::Identities))
                                (link("nav-signing-keys", "/console/signing-keys", "Signing keys", Nav::SigningKeys))
                                (link("nav-audit", "/console/audit", "Audit log", Nav::Audit))
                                (link("nav-rates", "/console/rates", "Live rates", Nav::Rates))
                            }
                        }
                        form #logout-form method="post" action="/console/logout" {
                            (csrf(signed))
                            button #logout type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.session.csrf(&signed.key)); }
}

fn notice_block(notice: Option<Notice>) -> Markup {
    html! {
        @if let Some(n) = notice { p #notice.notice role="status" { (n.text()) } }
    }
}

fn error_block(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message { p #error.error role="alert" { (m) } }
    }
}

/// A time as the console shows it (UTC, to the second).
pub(crate) fn show_time(t: OffsetDateTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}

/// A time as a `datetime-local` input holds it (UTC, to the minute).
fn local_minute(t: OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}

/// Reads a `datetime-local` value (`YYYY-MM-DDTHH:MM`, seconds optional) as UTC.
pub(crate) fn parse_local_minute(v: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let with_seconds =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(v, &format)
        .or_else(|_| time::PrimitiveDateTime::parse(v, &with_seconds))
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// The console page of an identity.
pub(crate) fn identity_href(id: &IdentityId) -> String {
    let raw = id.to_string();
    let encoded: String =
        percent_encoding::utf8_percent_encode(&raw, percent_encoding::NON_ALPHANUMERIC).collect();
    format!("/console/identities/{encoded}")
}

/// An error page (status and message of the API's error).
pub(crate) fn error(signed: Option<&Signed>, status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        (error_block(Some(message)))
        p { a href="/console/" { "Back to the console" } }
    };
    html_response(status, layout(title, signed, Nav::None, body))
}

/// The sign-in page.
pub(crate) fn login(
    token: &str,
    error: Option<(StatusCode, &str)>,
    issuers: &[(usize, String)],
    signed_out: bool,
) -> Response {
    let status = error.map_or(StatusCode::OK, |(s, _)| s);
    let body = html! {
        (error_block(error.map(|(_, m)| m)))
        @if signed_out { p #notice.notice role="status" { "Signed out." } }
        form #login-form method="post" action="/console/login" {
            input type="hidden" name="csrf" value=(token);
            label for="key" { "Access key or connection string" }
            input #key type="password" name="key" required autocomplete="off" autofocus
                aria-describedby="key-help";
            p #key-help.help {
                "The primary or secondary key of a resource this server serves "
                "(" code { "callsign connection-string" } " prints one)."
            }
            button #login-submit type="submit" { "Sign in" }
        }
        @if !issuers.is_empty() {
            section aria-labelledby="sso-heading" {
                h2 #sso-heading { "Or with your identity provider" }
                ul.sso {
                    @for (i, issuer) in issuers {
                        li { a.sso-link id=(format!("sso-{i}")) href=(format!("/console/login/oidc/{i}")) { "Sign in with " (issuer) } }
                    }
                }
            }
        }
    };
    html_response(status, layout("Sign in", None, Nav::None, body))
}

/// What the overview shows.
pub(crate) struct Overview<'a> {
    pub(crate) resource: &'a ResourceRecord,
    pub(crate) others: Vec<&'a ResourceRecord>,
    pub(crate) endpoint: String,
    pub(crate) admin: bool,
}

fn slot_name(slot: KeySlot) -> &'static str {
    match slot {
        KeySlot::Primary => "primary",
        KeySlot::Secondary => "secondary",
        KeySlot::VerifyOnly => "verifyOnly",
    }
}

fn signer_label(signer: &Signer) -> String {
    match signer {
        Signer::Key(slot) => slot_label(*slot).to_owned(),
        Signer::Issuer { subject, .. } => format!("sign-in of {subject}"),
    }
}

fn slot_label(slot: KeySlot) -> &'static str {
    match slot {
        KeySlot::Primary => "Primary key",
        KeySlot::Secondary => "Secondary key",
        KeySlot::VerifyOnly => "Verify-only key",
    }
}

/// A read-only field with a copy button (the button works with JavaScript only).
fn copyable(id: &str, label: &str, value: &str) -> Markup {
    html! {
        div.copyable {
            label for=(id) { (label) }
            input id=(id) type="text" readonly value=(value) spellcheck="false";
            button.copy type="button" data-copy=(id) { "Copy" }
        }
    }
}

/// `GET /console/`.
pub(crate) fn overview(signed: &Signed, view: &Overview<'_>, notice: Option<Notice>) -> Response {
    let r = view.resource;
    let body = html! {
        (notice_block(notice))
        section aria-labelledby="resource-heading" {
            h2 #resource-heading { "Resource" }
            dl {
                dt { "Name" } dd #resource-name { (r.name.as_str()) }
                dt { "Id" } dd #resource-id { code { (r.id) } }
                dt { "Host" } dd { (r.host.as_ref().map_or("the server's own address", |h| h.as_str())) }
                dt { "Created" } dd { (show_time(r.created_at)) }
                dt { "Signed in with" } dd #signed-in-with { (signer_label(&signed.session.signer)) }
            }
        }
        section aria-labelledby="keys-heading" {
            h2 #keys-heading { "Access keys" }
            p { "Regenerating a key refuses the old one at once; the other keys keep working." }
            table.keys {
                caption.visually-hidden { "Access keys of this resource" }
                thead { tr { th scope="col" { "Key" } th scope="col" { "Use" } th scope="col" { "Action" } } }
                tbody {
                    @for slot in [KeySlot::Primary, KeySlot::Secondary, KeySlot::VerifyOnly] {
                        tr id=(format!("key-{}", slot_name(slot))) {
                            th scope="row" { (slot_label(slot)) }
                            td {
                                @match (slot, r.key(slot)) {
                                    (KeySlot::VerifyOnly, None) => { "None yet: introspection and the revocation feed only." }
                                    (KeySlot::VerifyOnly, Some(_)) => { "Introspection and the revocation feed only." }
                                    (_, Some(key)) => {
                                        details {
                                            summary { "Show connection string" }
                                            (copyable(&format!("connection-string-{}", slot_name(slot)), "Connection string",
                                                &callsign_api::connection_string::format(&view.endpoint, key.expose())))
                                        }
                                    }
                                    (_, None) => { "None." }
                                }
                            }
                            td {
                                a.regenerate href=(format!("/console/keys/{}/regenerate", slot_name(slot))) {
                                    @if r.key(slot).is_some() { "Regenerate" } @else { "Create" }
                                    span.visually-hidden { " the " (slot_label(slot).to_lowercase()) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if view.admin {
            section aria-labelledby="resources-heading" {
                h2 #resources-heading { "Other resources of this deployment" }
                @if view.others.is_empty() {
                    p { "None. " code { "callsign resource create" } " adds one." }
                } @else {
                    table #resources {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Id" } th scope="col" { "Host" } th scope="col" { "Created" } } }
                        tbody {
                            @for o in &view.others {
                                tr { td { (o.name.as_str()) } td { code { (o.id) } }
                                     td { (o.host.as_ref().map_or("shared", |h| h.as_str())) } td { (show_time(o.created_at)) } }
                            }
                        }
                    }
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout("Overview", Some(signed), Nav::Overview, body),
    )
}

/// `GET /console/keys/<slot>/regenerate`: the confirmation (with `error`, the refused form).
pub(crate) fn regenerate(
    signed: &Signed,
    slot: KeySlot,
    current: &str,
    error: Option<&str>,
) -> Response {
    let label = slot_label(slot);
    let body = html! {
        (error_block(error))
        form #regenerate-form method="post" action=(format!("/console/keys/{}/regenerate", slot_name(slot))) {
            (csrf(signed))
            input type="hidden" name="current" value=(current);
            p { "A new " (label.to_lowercase()) " replaces the current one. Every client using the current one is refused from now on." }
            div.check {
                input #confirm type="checkbox" name="confirm" value="yes" required;
                label for="confirm" { "I understand that the current " (label.to_lowercase()) " stops working at once." }
            }
            div.check {
                input #revoke-tokens type="checkbox" name="revoke_tokens" value="yes";
                label for="revoke-tokens" { "Also revoke every token issued so far for this resource's identities." }
            }
            button #regenerate-submit type="submit" { "Regenerate" }
            " " a href="/console/" { "Cancel" }
        }
    };
    html_response(
        StatusCode::OK,
        layout(
            &format!("Regenerate the {}", label.to_lowercase()),
            Some(signed),
            Nav::Overview,
            body,
        ),
    )
}

/// The answer to a regeneration: the new key, shown once.
pub(crate) fn regenerated(
    signed: &Signed,
    slot: KeySlot,
    shown: &str,
    revoked: Option<u64>,
) -> Response {
    let what = if slot == KeySlot::VerifyOnly {
        "New verify-only key"
    } else {
        "New connection string"
    };
    let body = html! {
        p #notice.notice role="status" {
            (slot_label(slot)) " regenerated; the old one is refused from now on."
            @if let Some(n) = revoked { " Tokens of " (n) " identities revoked." }
        }
        div.copyable {
            label for="new-connection-string" { (what) }
            textarea #new-connection-string readonly rows="3" spellcheck="false" { (shown) }
            button.copy type="button" data-copy="new-connection-string" { "Copy" }
        }
        p { a href="/console/" { "Back to the overview" } }
    };
    html_response(
        StatusCode::OK,
        layout("Key regenerated", Some(signed), Nav::Overview, body),
    )
}

/// What the identities page shows.
pub(crate) struct IdentitiesView<'a> {
    pub(crate) q: &'a str,
    pub(crate) stale: Option<i64>,
    pub(crate) page: &'a IdentityPage,
}

fn last_token(r: &IdentityRecord) -> String {
    r.last_token_issued_at
        .map_or_else(|| "never".to_owned(), show_time)
}

/// `GET /console/identities`.
pub(crate) fn identities(
    signed: &Signed,
    view: &IdentitiesView<'_>,
    notice: Option<Notice>,
) -> Response {
    let stale_options = [
        ("", "Any"),
        ("7", "7 days"),
        ("30", "30 days"),
        ("90", "90 days"),
    ];
    let chosen = view.stale.map(|d| d.to_string()).unwrap_or_default();
    let next = view.page.next_after.map(|after| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("q", view.q);
        q.append_pair("stale", &chosen);
        q.append_pair("after", &after.to_string());
        format!("/console/identities?{}", q.finish())
    });
    let body = html! {
        (notice_block(notice))
        form #search-form method="get" action="/console/identities" role="search" {
            div.field {
                label for="q" { "Identity id or custom id prefix" }
                input #q type="search" name="q" value=(view.q) maxlength="256";
            }
            div.field {
                label for="stale" { "No token issued for" }
                select #stale name="stale" {
                    @for (value, label) in stale_options {
                        option value=(value) selected[value == chosen] { (label) }
                    }
                }
            }
            button #search-submit type="submit" { "Search" }
        }
        @if view.page.records.is_empty() {
            p #no-identities { "No identity matches." }
        } @else {
            table #identities {
                caption.visually-hidden { "Identities" }
                thead { tr { th scope="col" { "Identity" } th scope="col" { "Custom id" } th scope="col" { "Created" } th scope="col" { "Last token" } } }
                tbody {
                    @for r in &view.page.records {
                        tr {
                            td { a.identity-link href=(identity_href(&r.id)) { (r.id) } }
                            td { (r.custom_id.as_ref().map_or("", |c| c.as_str())) }
                            td { (show_time(r.created_at)) }
                            td { (last_token(r)) }
                        }
                    }
                }
            }
        }
        @if let Some(href) = next { p { a #next-page href=(href) { "Next page" } } }
        (create_form(signed))
    };
    html_response(
        StatusCode::OK,
        layout("Identities", Some(signed), Nav::Identities, body),
    )
}

/// The form that creates an identity.
fn create_form(signed: &Signed) -> Markup {
    html! {
        section aria-labelledby="create-heading" {
            h2 #create-heading { "New identity" }
            form #create-form method="post" action="/console/identities" {
                (csrf(signed))
                div.field {
                    label for="custom-id" { "Custom id (optional)" }
                    input #custom-id type="text" name="custom_id" maxlength="256";
                }
                button #create-submit type="submit" { "Create identity" }
            }
        }
    }
}

/// What an identity's page shows; with a token just issued.
pub(crate) struct IdentityView<'a> {
    pub(crate) record: &'a IdentityRecord,
    pub(crate) token: Option<(&'a str, OffsetDateTime)>,
}

/// The scopes offered, with the ids of their checkboxes.
const SCOPES: [(&str, &str); 5] = [
    ("chat", "scope-chat"),
    ("voip", "scope-voip"),
    ("chat.join", "scope-chat-join"),
    ("chat.join.limited", "scope-chat-join-limited"),
    ("voip.join", "scope-voip-join"),
];

/// `GET /console/identities/<id>`.
pub(crate) fn identity(
    signed: &Signed,
    view: &IdentityView<'_>,
    notice: Option<Notice>,
) -> Response {
    let r = view.record;
    let href = identity_href(&r.id);
    let body = html! {
        (notice_block(notice))
        @if let Some((token, expires)) = view.token {
            div.copyable {
                label for="token" { "Access token" }
                textarea #token readonly rows="6" spellcheck="false" { (token) }
                button.copy type="button" data-copy="token" { "Copy" }
            }
            p { "Expires " span #token-expires { (show_time(expires)) } "." }
        }
        dl {
            dt { "Id" } dd #identity-id { code { (r.id) } }
            dt { "Custom id" } dd #custom-id { (r.custom_id.as_ref().map_or("none", |c| c.as_str())) }
            dt { "Created" } dd { (show_time(r.created_at)) }
            dt { "Last token" } dd #last-token { (last_token(r)) }
            dt { "Revocation epoch" } dd #revocation-epoch { (r.revocation_epoch) }
        }
        section aria-labelledby="issue-heading" {
            h2 #issue-heading { "Issue a token" }
            form #issue-form method="post" action=(format!("{href}/issue")) {
                (csrf(signed))
                fieldset {
                    legend { "Scopes" }
                    @for (scope, id) in SCOPES {
                        div.check {
                            input id=(id) type="checkbox" name="scope" value=(scope) checked[scope == "chat"];
                            label for=(id) { (scope) }
                        }
                    }
                }
                div.field {
                    label for="minutes" { "Lifetime in minutes (60 to 1440)" }
                    input #minutes type="number" name="minutes" min="60" max="1440" value="60" required;
                }
                button #issue-submit type="submit" { "Issue token" }
            }
        }
        section aria-labelledby="revoke-heading" {
            h2 #revoke-heading { "Revoke" }
            form #revoke-form method="post" action=(format!("{href}/revoke")) {
                (csrf(signed))
                p { "Every token issued so far stops working at once; later tokens are not affected." }
                button #revoke-submit type="submit" { "Revoke all tokens" }
            }
        }
        section aria-labelledby="delete-heading" {
            h2 #delete-heading { "Delete" }
            form #delete-form method="post" action=(format!("{href}/delete")) {
                (csrf(signed))
                div.check {
                    input #delete-confirm type="checkbox" name="confirm" value="yes" required;
                    label for="delete-confirm" { "I understand that the identity and its tokens are gone for good." }
                }
                button #delete-submit.danger type="submit" { "Delete identity" }
            }
        }
    };
    html_response(
        StatusCode::OK,
        layout("Identity", Some(signed), Nav::Identities, body),
    )
}

/// `GET /console/signing-keys`.
pub(crate) fn signing_keys(
    signed: &Signed,
    keys: &[StoredSigningKey],
    states: &[KeyState],
    admin: bool,
    notice: Option<Notice>,
) -> Response {
    let body = html! {
        (notice_block(notice))
        p { "Tokens are signed with the active key; every published key is in the "
            a #jwks-link href="/.well-known/jwks.json" { "JWKS" } "." }
        div.scroll {
        table #signing-keys {
            caption.visually-hidden { "Signing keys" }
            thead { tr { th scope="col" { "Key id" } th scope="col" { "Algorithm" } th scope="col" { "State" }
                         th scope="col" { "Created" } th scope="col" { "Signs from" } th scope="col" { "Retired after" } } }
            tbody {
                @for (k, state) in keys.iter().zip(states) {
                    tr data-kid=(k.kid) {
                        td { code { (k.kid) } } td { (k.alg) } td { (state.as_str()) }
                        td { (show_time(k.created_at)) } td { (show_time(k.activates_at)) }
                        td { (k.retire_after.map_or_else(|| "—".to_owned(), show_time)) }
                    }
                }
            }
        }
        }
        @if admin {
            section aria-labelledby="rotate-heading" {
                h2 #rotate-heading { "Rotate" }
                form #rotate-form method="post" action="/console/signing-keys/rotate" {
                    (csrf(signed))
                    p { "A new key is published now and signs once verifiers have had time to fetch it; the current key keeps verifying until its tokens have expired." }
                    div.check {
                        input #rotate-confirm type="checkbox" name="confirm" value="yes" required;
                        label for="rotate-confirm" { "Rotate the signing key" }
                    }
                    button #rotate-submit type="submit" { "Rotate" }
                }
            }
        } @else {
            p { "Only a session of the deployment's default resource rotates the signing keys." }
        }
    };
    html_response(
        StatusCode::OK,
        layout("Signing keys", Some(signed), Nav::SigningKeys, body),
    )
}

/// The audit page's filter form.
fn audit_filter(filter: &AuditFilter, chosen: &str) -> Markup {
    html! {
        form #audit-filter method="get" action="/console/audit" {
            div.field {
                label for="since" { "From (UTC)" }
                input #since type="datetime-local" name="since" value=(filter.since.map(local_minute).unwrap_or_default());
            }
            div.field {
                label for="until" { "Until (UTC)" }
                input #until type="datetime-local" name="until" value=(filter.until.map(local_minute).unwrap_or_default());
            }
            div.field {
                label for="operation" { "Operation" }
                select #operation name="operation" {
                    option value="" selected[chosen.is_empty()] { "Any" }
                    @for op in AuditOperation::ALL {
                        option value=(op.as_str()) selected[op.as_str() == chosen] { (op.as_str()) }
                    }
                }
            }
            @if filter.admin {
                div.field {
                    label for="resource" { "Resource id (empty: all)" }
                    input #resource type="text" name="resource" value=(filter.resource.map(|r| r.to_string()).unwrap_or_default());
                }
            }
            button #audit-submit type="submit" { "Filter" }
        }
    }
}

/// `GET /console/audit`.
pub(crate) fn audit(
    signed: &Signed,
    filter: &AuditFilter,
    records: &[AuditRecord],
    next: Option<i64>,
) -> Response {
    let chosen = filter.operation.map(AuditOperation::as_str).unwrap_or("");
    let next_href = next.map(|after| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("since", &filter.since.map(local_minute).unwrap_or_default());
        q.append_pair("until", &filter.until.map(local_minute).unwrap_or_default());
        q.append_pair("operation", chosen);
        if filter.admin {
            q.append_pair(
                "resource",
                &filter.resource.map(|r| r.to_string()).unwrap_or_default(),
            );
        }
        q.append_pair("after", &after.to_string());
        format!("/console/audit?{}", q.finish())
    });
    let body = html! {
        (audit_filter(filter, chosen))
        @if records.is_empty() {
            p #no-records { "No record matches." }
        } @else {
            div.scroll {
                table #audit {
                    caption.visually-hidden { "Audit records, oldest first" }
                    thead { tr { th scope="col" { "Time" } @if filter.admin { th scope="col" { "Resource" } } th scope="col" { "Operation" } th scope="col" { "Outcome" } th scope="col" { "Identity" }
                                 th scope="col" { "Credential" } th scope="col" { "Subject" } th scope="col" { "Client" } th scope="col" { "Detail" } } }
                    tbody {
                        @for r in records {
                            tr.audit-record {
                                td { (show_time(r.at)) }
                                @if filter.admin { td.resource { (r.resource.map(|r| r.to_string()).unwrap_or_default()) } }
                                td.operation { (r.operation.as_str()) }
                                td { (r.outcome.as_str()) }
                                td.identity { @if let Some(id) = &r.identity { (id) } }
                                td.credential { (r.credential.as_str()) }
                                td.subject { (r.subject.as_deref().unwrap_or("")) }
                                td { (r.client.map(|c| c.to_string()).unwrap_or_default()) }
                                td { (r.detail.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(href) = next_href { p { a #next-page href=(href) { "Next page" } } }
    };
    html_response(
        StatusCode::OK,
        layout("Audit log", Some(signed), Nav::Audit, body),
    )
}

/// `GET /console/rates`: the charts, drawn and updated by the script from `rates.json`.
pub(crate) fn rates(signed: &Signed) -> Response {
    let chart = |id: &str, title: &str| {
        html! {
            figure.chart {
                figcaption id=(format!("{id}-title")) { (title) " " span.latest id=(format!("{id}-latest")) aria-live="polite" {} }
                svg id=(id) viewBox="0 0 300 100" preserveAspectRatio="none" role="img" aria-labelledby=(format!("{id}-title")) {}
            }
        }
    };
    let body = html! {
        p #rates-status role="status" { "Rates over the last two minutes of this node, updated every two seconds. Without JavaScript, "
            a href="/console/rates.json" { "the counters" } " are still readable." }
        div.charts {
            (chart("chart-requests", "Requests per second"))
            (chart("chart-errors", "4xx and 5xx per second"))
            (chart("chart-p99", "p99 latency, ms"))
            (chart("chart-tokens", "Tokens issued per second"))
        }
        table #route-rates {
            caption { "By route, over the last interval" }
            thead { tr { th scope="col" { "Route" } th scope="col" { "Requests/s" } th scope="col" { "4xx/s" } th scope="col" { "5xx/s" } } }
            tbody {}
        }
    };
    html_response(
        StatusCode::OK,
        layout("Live rates", Some(signed), Nav::Rates, body),
    )
}
