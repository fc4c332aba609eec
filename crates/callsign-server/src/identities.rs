//! The identity operations, one handler each. Every handler validates its whole input before it
//! writes anything, so a refused request changes nothing.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callsign_api::{
    AccessToken, CreateIdentityRequest, CreateIdentityResponse, Identity, IdentityPage,
    IssueTokenRequest, LegacyAccessToken, LegacyIdentity, LegacyRevokeRequest,
};
use callsign_core::token::IssuedToken;
use callsign_core::{CustomId, ExpiresIn, ScopeError, Scopes, format_expires_on};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::http::{json, parse_json};
use crate::listing::ListQuery;
use crate::state::Directory;
use crate::throttle::OperationClass;
use crate::version::{ApiVersion, CustomIdField};

/// The wire identity, with the custom id under the name `version` gives it.
fn wire_identity(
    id: String,
    custom_id: Option<CustomId>,
    last_token_issued_at: Option<String>,
    version: ApiVersion,
) -> Identity {
    let custom_id = custom_id.map(|c| c.as_str().to_owned());
    let (custom_id, external_id) = match version.custom_id_field() {
        Some(CustomIdField::CustomId) => (custom_id, None),
        Some(CustomIdField::ExternalId) => (None, custom_id),
        None => (None, None),
    };
    Identity {
        id,
        custom_id,
        external_id,
        last_token_issued_at,
    }
}

fn scopes(list: Option<Vec<String>>, version: ApiVersion) -> Result<Scopes, ApiError> {
    let list = list
        .ok_or_else(|| ApiError::validation("Scopes: The Scopes field is required.", "Scopes"))?;
    Scopes::parse(list.iter().map(String::as_str), version.has_join_scopes()).map_err(|e| match e {
        ScopeError::Empty => ApiError::validation(e.to_string(), "scopes"),
        ScopeError::Unknown(_) => ApiError::validation(e.to_string(), "scopes"),
    })
}

fn expiry(minutes: Option<i64>, version: ApiVersion) -> Result<ExpiresIn, ApiError> {
    if !version.has_expiry() {
        // Older api-versions have no such field; the service ignores it there.
        return Ok(ExpiresIn::DEFAULT);
    }
    ExpiresIn::from_optional_minutes(minutes)
        .map_err(|e| ApiError::validation(e.to_string(), "ExpiresInMinutes"))
}

fn wire_token(t: IssuedToken) -> AccessToken {
    AccessToken {
        token: t.token,
        expires_on: format_expires_on(t.expires_at),
    }
}

/// `POST /identities`: 201 with the identity and, when scopes are given, a token (200 with just
/// the id on 2020-07-20-preview2). A repeated `customId` returns the existing identity.
pub(crate) async fn create(
    dir: &Directory<'_>,
    version: ApiVersion,
    body: &[u8],
) -> Result<Response, ApiError> {
    if version.is_legacy() {
        dir.throttle(OperationClass::Create)?;
        let created = dir.create(None).await?;
        return Ok(json(
            StatusCode::OK,
            &LegacyIdentity {
                id: created.identity.id.to_string(),
            },
        ));
    }
    let req: CreateIdentityRequest = parse_json(body)?;
    // Only the field this version defines is read; the other is an unknown property here and
    // ignored, as the service ignores unknown properties.
    let (field, requested) = match version.custom_id_field() {
        Some(f @ CustomIdField::CustomId) => (f, req.custom_id),
        Some(f @ CustomIdField::ExternalId) => (f, req.external_id),
        None => (CustomIdField::CustomId, None),
    };
    let custom_id = requested
        .map(|c| {
            CustomId::parse(&c).map_err(|e| {
                // The rules are the custom id's; the message names the field this version uses.
                let name = match field {
                    CustomIdField::CustomId => "CustomId",
                    CustomIdField::ExternalId => "ExternalId",
                };
                ApiError::validation(e.to_string().replace("CustomId", name), field.as_str())
            })
        })
        .transpose()?;
    let scopes = match req.create_token_with_scopes {
        Some(list) if !list.is_empty() => Some(scopes(Some(list), version)?),
        _ => None,
    };
    let expires_in = expiry(req.expires_in_minutes, version)?;

    // ACS throttles create-with-token with token issue, plain creates on their own.
    dir.throttle(if scopes.is_some() {
        OperationClass::Issue
    } else {
        OperationClass::Create
    })?;
    let created = dir.create(custom_id).await?;
    let access_token = match scopes {
        Some(s) => Some(wire_token(
            dir.issue(&(&created.identity).into(), &s, expires_in)
                .await?,
        )),
        None => None,
    };
    let status = if !created.created && version.existing_identity_is_200() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(
        status,
        &CreateIdentityResponse {
            identity: wire_identity(
                created.identity.id.to_string(),
                created.identity.custom_id,
                None,
                version,
            ),
            access_token,
        },
    ))
}

/// `GET /identities/{id}` (the two previews): 200 with id, custom id and last issue time.
pub(crate) async fn get(
    dir: &Directory<'_>,
    version: ApiVersion,
    raw_id: &str,
) -> Result<Response, ApiError> {
    let id = dir.resolve(raw_id)?;
    let record = dir.get(&id).await?;
    Ok(json(
        StatusCode::OK,
        &wire_identity(
            record.id.to_string(),
            record.custom_id,
            record.last_token_issued_at.map(format_expires_on),
            version,
        ),
    ))
}

/// `GET /identities` (callsign's extension, on the versions with `GET /identities/{id}`): 200
/// with one page of the resource's identities in id order, each as `GET /identities/{id}`
/// answers it, and a `nextLink` unless it is the last page.
pub(crate) async fn list(
    dir: &Directory<'_>,
    version: ApiVersion,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let list = ListQuery::parse(query, version, dir.resource())?;
    let page = dir
        .list(list.after.as_ref(), list.page_size, &list.filter)
        .await?;
    let value = page
        .records
        .into_iter()
        .map(|r| {
            wire_identity(
                r.id.to_string(),
                r.custom_id,
                r.last_token_issued_at.map(format_expires_on),
                version,
            )
        })
        .collect();
    let next_link = page.next_after.map(|last| list.next_link(version, &last));
    Ok(json(StatusCode::OK, &IdentityPage { value, next_link }))
}

/// `POST /identities/{id}/:issueAccessToken`: 200 `{token, expiresOn}`.
pub(crate) async fn issue(
    dir: &Directory<'_>,
    version: ApiVersion,
    raw_id: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let id = dir.resolve(raw_id)?;
    let req: IssueTokenRequest = parse_json(body)?;
    let scopes = scopes(req.scopes, version)?;
    let expires_in = expiry(req.expires_in_minutes, version)?;
    let subject = dir.subject(&id).await?;
    let token = dir.issue(&subject, &scopes, expires_in).await?;
    Ok(json(StatusCode::OK, &wire_token(token)))
}

/// `POST /identities/{id}/token` (2020-07-20-preview2): 200 `{id, token, expiresOn}`.
pub(crate) async fn legacy_issue(
    dir: &Directory<'_>,
    raw_id: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let id = dir.resolve(raw_id)?;
    let req: IssueTokenRequest = parse_json(body)?;
    let scopes = scopes(req.scopes, ApiVersion::V2020_07_20Preview2)?;
    let subject = dir.subject(&id).await?;
    let token = dir.issue(&subject, &scopes, ExpiresIn::DEFAULT).await?;
    Ok(json(
        StatusCode::OK,
        &LegacyAccessToken {
            id: id.to_string(),
            token: token.token,
            expires_on: format_expires_on(token.expires_at),
        },
    ))
}

/// `POST /identities/{id}/:revokeAccessTokens`: 204. Every token issued before this moment is
/// out of force at once; tokens issued afterwards are not affected.
pub(crate) async fn revoke(dir: &Directory<'_>, raw_id: &str) -> Result<Response, ApiError> {
    let id = dir.resolve(raw_id)?;
    dir.revoke(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH /identities/{id}` with `tokensValidFrom` (2020-07-20-preview2): 204.
///
/// Revocation is by epoch, not by time: any `tokensValidFrom` up to now (or absent) revokes every
/// token issued so far, which is at least what was asked (tokens issued between that time and now
/// are revoked too). A time more than a minute in the future (beyond clock skew) cannot be
/// honoured exactly and is refused.
pub(crate) async fn legacy_revoke(
    dir: &Directory<'_>,
    raw_id: &str,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<Response, ApiError> {
    let id = dir.resolve(raw_id)?;
    let req: LegacyRevokeRequest = parse_json(body)?;
    if let Some(from) = req.tokens_valid_from {
        let from = OffsetDateTime::parse(&from, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                ApiError::validation(
                    "tokensValidFrom must be an RFC 3339 date-time.",
                    "tokensValidFrom",
                )
            })?;
        if from > now + time::Duration::minutes(1) {
            return Err(ApiError::validation(
                "tokensValidFrom must not be in the future.",
                "tokensValidFrom",
            ));
        }
    }
    dir.revoke(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /identities/{id}`: 204. Revokes every token, refuses every later one and removes what
/// is stored for the identity.
pub(crate) async fn delete(dir: &Directory<'_>, raw_id: &str) -> Result<Response, ApiError> {
    let id = dir.resolve(raw_id)?;
    dir.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
