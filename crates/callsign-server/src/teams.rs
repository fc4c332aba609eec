//! The Teams extension surface (2025-03-02-preview, 2025-06-30 and later GA versions): access
//! assignments stored per resource, and the token exchange, which is refused until an issuer
//! that can vouch for Teams Phone tokens is configured.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callsign_api::{TeamsExtensionAssignment, TeamsExtensionAssignmentRequest};
use callsign_core::{MAX_CLIENT_IDS, PrincipalType, TeamsAssignment, parse_guid};
use uuid::Uuid;

use crate::error::ApiError;
use crate::http::{json, parse_json};
use crate::state::Directory;

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
