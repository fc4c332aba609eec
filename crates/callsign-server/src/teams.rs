//! The Teams surface: the Teams user token exchange (`/teamsUser/:exchangeAccessToken`), and the
//! Teams extension (2025-03-02-preview, 2025-06-30 and later GA versions): access assignments
//! stored per resource and the token exchange. Both exchanges are refused with 401
//! `InvalidAccessToken`, as before any Entra ID is configured, until a trusted issuer with
//! `profile = "entra"` and `teams = true` vouches for such tokens.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callsign_api::{TeamsExtensionAssignment, TeamsExtensionAssignmentRequest};
use callsign_core::{MAX_CLIENT_IDS, PrincipalType, TeamsAssignment, parse_guid};
use uuid::Uuid;

use crate::error::ApiError;
use crate::http::{json, parse_json};
use crate::oidc::{Principal, Profile, Refusal};
use crate::state::{AppState, Directory};
use crate::version::ApiVersion;

/// Whether the request carries `Authorization: Bearer …` (the exchange's own credential).
pub(crate) fn is_bearer(headers: &HeaderMap) -> bool {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let (first, second) = (all.next(), all.next());
    // Two Authorization headers go the signature way, which refuses them.
    second.is_none()
        && first.map(|v| v.as_bytes()).is_some_and(|v| {
            v.len() >= 6
                && v[..6].eq_ignore_ascii_case(b"bearer")
                && v.get(6).is_none_or(|b| *b == b' ')
        })
}

fn guid(raw: &str, target: &'static str) -> Result<Uuid, ApiError> {
    parse_guid(raw).ok_or_else(|| {
        ApiError::validation(
            format!("Provided {target} has invalid format: a GUID is expected."),
            target,
        )
    })
}

fn key(tenant: &str, object: &str) -> Result<(Uuid, Uuid), ApiError> {
    Ok((guid(tenant, "tenantId")?, guid(object, "objectId")?))
}

fn wire(a: &TeamsAssignment) -> TeamsExtensionAssignment {
    TeamsExtensionAssignment {
        object_id: a.object_id.to_string(),
        tenant_id: a.tenant_id.to_string(),
        principal_type: a.principal_type.as_str().to_owned(),
        client_ids: a
            .client_ids
            .as_ref()
            .map(|ids| ids.iter().map(Uuid::to_string).collect()),
    }
}

/// `GET …/tenants/{tenantId}/assignments/{objectId}`: 200, or 404 `AssignmentNotFound`.
pub(crate) async fn get(
    dir: &Directory<'_>,
    tenant: &str,
    object: &str,
) -> Result<Response, ApiError> {
    let (tenant, object) = key(tenant, object)?;
    let a = dir.assignment(tenant, object).await?;
    Ok(json(StatusCode::OK, &wire(&a)))
}

/// `PUT …/tenants/{tenantId}/assignments/{objectId}`: 201 when created, 200 when replaced.
pub(crate) async fn put(
    dir: &Directory<'_>,
    tenant: &str,
    object: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let (tenant_id, object_id) = key(tenant, object)?;
    let req: TeamsExtensionAssignmentRequest = parse_json(body)?;
    let principal_type = match req.principal_type.as_deref() {
        None => {
            return Err(ApiError::validation(
                "PrincipalType: The PrincipalType field is required.",
                "principalType",
            ));
        }
        Some(t) => PrincipalType::parse(t).ok_or_else(|| {
            ApiError::validation(
                "Provided principalType is not valid: expected resourceAccount or user.",
                "principalType",
            )
        })?,
    };
    let client_ids = match req.client_ids {
        None => None,
        Some(ids) => {
            // Duplicates (in any letter case) count once; the limit applies to distinct ids.
            let mut parsed: Vec<Uuid> = Vec::with_capacity(ids.len().min(MAX_CLIENT_IDS));
            for id in &ids {
                let id = guid(id, "clientIds")?;
                if !parsed.contains(&id) {
                    if parsed.len() == MAX_CLIENT_IDS {
                        return Err(ApiError::validation(
                            format!("At most {MAX_CLIENT_IDS} distinct clientIds may be assigned."),
                            "clientIds",
                        ));
                    }
                    parsed.push(id);
                }
            }
            Some(parsed)
        }
    };
    let assignment = TeamsAssignment {
        tenant_id,
        object_id,
        principal_type,
        client_ids,
    };
    let created = dir.put_assignment(assignment.clone()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &wire(&assignment)))
}

/// `DELETE …/tenants/{tenantId}/assignments/{objectId}`: 204, or 404 `AssignmentNotFound`.
pub(crate) async fn delete(
    dir: &Directory<'_>,
    tenant: &str,
    object: &str,
) -> Result<Response, ApiError> {
    let (tenant, object) = key(tenant, object)?;
    dir.delete_assignment(tenant, object).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of `POST /teamsUser/:exchangeAccessToken`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TeamsUserRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    app_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// A required GUID field of the Teams user exchange, with ACS's messages and targets.
fn required_guid(
    value: Option<&str>,
    name: &'static str,
    target: &'static str,
    lower: &'static str,
) -> Result<Uuid, ApiError> {
    match value {
        None | Some("") => Err(ApiError::validation(
            format!("{name}: The {name} field is required."),
            target,
        )),
        Some(v) => parse_guid(v).ok_or_else(|| {
            ApiError::validation(format!("Provided {name} has invalid format."), lower)
        }),
    }
}

/// Refuses a principal whose issuer does not vouch for Teams tokens.
fn vouched_for_teams(p: &Principal) -> Result<(), ApiError> {
    if p.issuer.teams && p.issuer.profile == Profile::Entra {
        Ok(())
    } else {
        Err(ApiError::TokenRefused(Refusal::NotTeams))
    }
}

/// `POST /teamsUser/:exchangeAccessToken`: the body's Entra token verified as ACS does (its
/// `appid` and `oid` must be the body's `appId` and `userId`, from 2022-06-01 on), then a token
/// for the user's workforce identity that expires with the Entra token.
pub(crate) async fn exchange_teams_user(
    state: &AppState,
    dir: &Directory<'_>,
    version: ApiVersion,
    body: &[u8],
    now: time::OffsetDateTime,
) -> Result<Response, ApiError> {
    if !state.issuers.any_teams() {
        return Err(ApiError::InvalidAccessToken);
    }
    let req: TeamsUserRequest = parse_json(body)?;
    let checks_ids = version >= ApiVersion::V2022_06_01;
    let ids = if checks_ids {
        let app = required_guid(req.app_id.as_deref(), "AppId", "AppId", "appId")?;
        let user = required_guid(req.user_id.as_deref(), "UserId", "UserId", "userId")?;
        Some((app, user))
    } else {
        None
    };
    let token = req
        .token
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::InvalidAccessToken)?;
    let p = state
        .issuers
        .verify(&token, now)
        .await
        .map_err(ApiError::TokenRefused)?;
    vouched_for_teams(&p)?;
    if !p.issuer.serves(dir.resource()) {
        return Err(ApiError::TokenRefused(Refusal::OtherResource));
    }
    if let Some((app, user)) = ids {
        if p.app_id.as_deref().and_then(parse_guid) != Some(app) {
            return Err(ApiError::validation(
                "AAD application is not the expected one.",
                "appId",
            ));
        }
        if parse_guid(&p.subject) != Some(user) {
            return Err(ApiError::validation(
                "Provided AAD token issued for unexpected user.",
                "userId",
            ));
        }
    }
    let scopes = p.issuer.scopes.clone();
    let (_, token) = crate::entra::issue_for(dir, &p, &scopes, now).await?;
    Ok(json(StatusCode::OK, &token))
}

/// `POST /access/teamsExtension/:exchangeAccessToken`: a Teams Phone user's token (the bearer)
/// for a token of their workforce identity, if a Teams extension assignment of their tenant and
/// object id allows it (and names the token's application, when it names any).
pub(crate) async fn exchange_extension(
    dir: &Directory<'_>,
    p: &Principal,
    now: time::OffsetDateTime,
) -> Result<Response, ApiError> {
    vouched_for_teams(p)?;
    let object = parse_guid(&p.subject).ok_or(ApiError::TokenRefused(Refusal::NoSubject))?;
    let a = match dir.assignment(p.tenant, object).await {
        Err(ApiError::AssignmentNotFound) => return Err(ApiError::NotAssigned),
        other => other?,
    };
    let app = p.app_id.as_deref().and_then(parse_guid);
    if let Some(allowed) = &a.client_ids
        && !app.is_some_and(|app| allowed.contains(&app))
    {
        return Err(ApiError::NotAssigned);
    }
    let scopes = p.issuer.scopes.clone();
    let (id, token) = crate::entra::issue_for(dir, p, &scopes, now).await?;
    Ok(crate::entra::exchanged(id, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_is_recognised_in_any_case() {
        let mut h = HeaderMap::new();
        assert!(!is_bearer(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(is_bearer(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert!(is_bearer(&h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("HMAC-SHA256 SignedHeaders=x&Signature=y"),
        );
        assert!(!is_bearer(&h));
    }
}
