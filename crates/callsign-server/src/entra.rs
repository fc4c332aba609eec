//! Access for trusted identity providers' users (api-version 2025-03-02-preview): the access
//! assignments of `/access/entra/assignments` and the exchange of a user's own token for a
//! communication token at `/access/entra/:exchangeAccessToken`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callsign_api::{
    AccessToken, CreateIdentityResponse, EntraAssignment, EntraAssignmentPage,
    EntraAssignmentRequest, Identity,
};
use callsign_core::{
    AccessAssignment, AccessPrincipalType, ObjectId, Scopes, format_expires_on, parse_guid,
};

use crate::error::ApiError;
use crate::http::{json, parse_json};
use crate::oidc::Principal;
use crate::state::Directory;
use crate::version::ApiVersion;

/// The most members one `PATCH` may carry.
pub(crate) const MAX_PATCH: usize = 1000;

fn object_id(raw: &str) -> Result<ObjectId, ApiError> {
    ObjectId::parse(raw).map_err(|e| ApiError::validation(e.to_string(), "objectId"))
}

fn wire(a: &AccessAssignment) -> EntraAssignment {
    EntraAssignment {
        object_id: a.object_id.to_string(),
        tenant_id: a.tenant_id.hyphenated().to_string(),
        principal_type: a.principal_type.as_str().to_owned(),
        scopes: a
            .scopes
            .as_ref()
            .map(|s| s.iter().map(|s| s.as_str().to_owned()).collect()),
    }
}

/// The assignment a request describes for `object`.
fn assignment(object: ObjectId, req: EntraAssignmentRequest) -> Result<AccessAssignment, ApiError> {
    let tenant = req.tenant_id.ok_or_else(|| {
        ApiError::validation("TenantId: The TenantId field is required.", "tenantId")
    })?;
    let tenant_id = parse_guid(&tenant).ok_or_else(|| {
        ApiError::validation(
            "Provided tenantId has invalid format: a GUID is expected.",
            "tenantId",
        )
    })?;
    let principal_type = match req.principal_type.as_deref() {
        None => {
            return Err(ApiError::validation(
                "PrincipalType: The PrincipalType field is required.",
                "principalType",
            ));
        }
        Some(t) => AccessPrincipalType::parse(t).ok_or_else(|| {
            ApiError::validation(
                "Provided principalType is not valid: expected user, group, tenant or \
                 teamsResourceAccount.",
                "principalType",
            )
        })?,
    };
    if principal_type == AccessPrincipalType::Tenant && object.as_guid() != Some(tenant_id) {
        return Err(ApiError::validation(
            "A tenant assignment's objectId is its tenantId.",
            "objectId",
        ));
    }
    let scopes = req
        .scopes
        .map(|s| Scopes::parse(s.iter().map(String::as_str), true))
        .transpose()
        .map_err(|e| ApiError::validation(e.to_string(), "scopes"))?;
    Ok(AccessAssignment {
        object_id: object,
        tenant_id,
        principal_type,
        scopes,
    })
}

/// `GET /access/entra/assignments/{objectId}`: 200, or 404 `AssignmentNotFound`.
pub(crate) async fn get(dir: &Directory<'_>, object: &str) -> Result<Response, ApiError> {
    let a = dir.access_assignment(&object_id(object)?).await?;
    Ok(json(StatusCode::OK, &wire(&a)))
}

/// `PUT /access/entra/assignments/{objectId}`: 201 when created, 200 when replaced.
pub(crate) async fn put(
    dir: &Directory<'_>,
    object: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let object = object_id(object)?;
    let a = assignment(object, parse_json(body)?)?;
    let created = dir.put_access_assignment(a.clone()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &wire(&a)))
}

/// `DELETE /access/entra/assignments/{objectId}`: 204, or 404 `AssignmentNotFound`.
pub(crate) async fn delete(dir: &Directory<'_>, object: &str) -> Result<Response, ApiError> {
    dir.delete_access_assignment(&object_id(object)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH /access/entra/assignments` (JSON merge patch): every member put, every `null`
/// deleted, all in one transaction; 200 with the assignments put.
pub(crate) async fn patch(dir: &Directory<'_>, body: &[u8]) -> Result<Response, ApiError> {
    let Patch(patch) = parse_json(body)?;
    if patch.len() > MAX_PATCH {
        return Err(ApiError::validation(
            format!("At most {MAX_PATCH} assignments may be patched at once."),
            "body",
        ));
    }
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::with_capacity(patch.len());
    for (raw, member) in patch {
        let object = object_id(&raw)?;
        // Two spellings of one GUID would be two changes to one assignment.
        if !seen.insert(object.clone()) {
            return Err(ApiError::validation(
                "An objectId appears twice (GUIDs compare without regard to case).",
                "objectId",
            ));
        }
        match member {
            Some(req) => puts.push(assignment(object, req)?),
            None => deletes.push(object),
        }
    }
    let answer: std::collections::BTreeMap<String, EntraAssignment> = puts
        .iter()
        .map(|a| (a.object_id.to_string(), wire(a)))
        .collect();
    dir.patch_access_assignments(puts, deletes).await?;
    Ok(json(StatusCode::OK, &answer))
}

/// A merge patch's members in the order given; an object id named twice is refused (a JSON
/// map would keep only the last).
#[derive(Default)]
struct Patch(Vec<(String, Option<EntraAssignmentRequest>)>);

impl<'de> serde::Deserialize<'de> for Patch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Patch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of objectId to an assignment or null")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Patch, A::Error> {
                let mut members: Vec<(String, Option<EntraAssignmentRequest>)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if members.iter().any(|(k, _)| *k == key) || members.len() > MAX_PATCH {
                        return Err(serde::de::Error::custom(
                            "an objectId appears twice or there are too many members",
                        ));
                    }
                    let value = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Patch(members))
            }
        }
        d.deserialize_map(Members)
    }
}

/// `GET /access/entra/assignments`: a page in object id order, `nextLink` while more follow.
pub(crate) async fn list(
    dir: &Directory<'_>,
    version: ApiVersion,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let (size, after) = page_parameters(query.unwrap_or(""))?;
    let limit = usize::try_from(size).unwrap_or(usize::MAX);
    let mut page = dir.access_assignments(after.as_ref(), limit + 1).await?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_link = match page.last() {
        Some(last) if more => Some(format!(
            "access/entra/assignments?api-version={version}&{}={size}&{}={}",
            EntraAssignmentPage::MAX_PAGE_SIZE_PARAMETER,
            EntraAssignmentPage::CONTINUATION_PARAMETER,
            URL_SAFE_NO_PAD.encode(last.object_id.as_str())
        )),
        _ => None,
    };
    Ok(json(
        StatusCode::OK,
        &EntraAssignmentPage {
            value: page.iter().map(wire).collect(),
            next_link,
        },
    ))
}

/// `maxpagesize` and `continuationToken` of a listing.
fn page_parameters(query: &str) -> Result<(u32, Option<ObjectId>), ApiError> {
    let (mut size, mut after) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = crate::listing::form_decode(name).unwrap_or_default();
        if name == EntraAssignmentPage::MAX_PAGE_SIZE_PARAMETER {
            let value = crate::listing::form_decode(value).unwrap_or_default();
            size = Some(crate::listing::parse_page_size(&value)?);
        } else if name == EntraAssignmentPage::CONTINUATION_PARAMETER {
            let target = EntraAssignmentPage::CONTINUATION_PARAMETER;
            let bad = || ApiError::validation("continuationToken is not valid.", target);
            let bytes = URL_SAFE_NO_PAD.decode(value).map_err(|_| bad())?;
            let text = String::from_utf8(bytes).map_err(|_| bad())?;
            after = Some(ObjectId::parse(&text).map_err(|_| bad())?);
        }
    }
    Ok((
        size.unwrap_or(EntraAssignmentPage::DEFAULT_PAGE_SIZE),
        after,
    ))
}

/// The assignment that lets `p` exchange, if any: theirs, else one of their groups', else their
/// tenant's. An assignment counts only within its own tenant.
fn covering<'a>(p: &Principal, found: &'a [AccessAssignment]) -> Option<&'a AccessAssignment> {
    let subject = ObjectId::parse(&p.subject).ok();
    let mut in_tenant = found.iter().filter(|a| a.tenant_id == p.tenant);
    let of_kind = |kind: AccessPrincipalType| {
        found
            .iter()
            .filter(move |a| a.tenant_id == p.tenant && a.principal_type == kind)
    };
    let user = in_tenant.find(|a| {
        matches!(
            a.principal_type,
            AccessPrincipalType::User | AccessPrincipalType::TeamsResourceAccount
        ) && Some(&a.object_id) == subject.as_ref()
    });
    user.or_else(|| {
        let groups: Vec<ObjectId> = p
            .groups
            .iter()
            .filter_map(|g| ObjectId::parse(g).ok())
            .collect();
        of_kind(AccessPrincipalType::Group).find(|a| groups.contains(&a.object_id))
    })
    .or_else(|| {
        of_kind(AccessPrincipalType::Tenant).find(|a| a.object_id.as_guid() == Some(p.tenant))
    })
}

/// `POST /access/entra/:exchangeAccessToken`: the principal's identity (created on first
/// exchange) and a token that expires no later than the bearer token, if an assignment covers
/// the principal.
pub(crate) async fn exchange(
    dir: &Directory<'_>,
    principal: &Principal,
    now: time::OffsetDateTime,
) -> Result<Response, ApiError> {
    let found = dir.access_assignments_of(&principal.object_ids()).await?;
    let Some(a) = covering(principal, &found) else {
        return Err(ApiError::NotAssigned);
    };
    let scopes = a
        .scopes
        .clone()
        .unwrap_or_else(|| principal.issuer.scopes.clone());
    let (id, token) = issue_for(dir, principal, &scopes, now).await?;
    Ok(exchanged(id, token))
}

/// The answer of an exchange that names the identity: 200 `{identity: {id}, accessToken}`.
pub(crate) fn exchanged(id: String, token: AccessToken) -> Response {
    json(
        StatusCode::OK,
        &CreateIdentityResponse {
            identity: Identity {
                id,
                custom_id: None,
                external_id: None,
                last_token_issued_at: None,
            },
            access_token: Some(token),
        },
    )
}

/// The principal's identity in the directory's resource (created on first use) and a token for
/// it with `scopes` that expires no later than the principal's own token.
pub(crate) async fn issue_for(
    dir: &Directory<'_>,
    principal: &Principal,
    scopes: &Scopes,
    now: time::OffsetDateTime,
) -> Result<(String, AccessToken), ApiError> {
    let identity = dir
        .workforce_identity(principal.identity(dir.resource()))
        .await?;
    let expires_at = principal.expires_at.min(now + principal.issuer.max_token);
    // Accepted within the leeway, but a token that would be born expired is no token.
    if expires_at <= now {
        return Err(ApiError::TokenRefused(crate::oidc::Refusal::Expired));
    }
    let token = dir
        .issue_until(&(&identity).into(), scopes, expires_at)
        .await?;
    Ok((
        identity.id.to_string(),
        AccessToken {
            token: token.token,
            expires_on: format_expires_on(token.expires_at),
        },
    ))
}
