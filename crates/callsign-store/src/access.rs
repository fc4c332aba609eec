//! What both backends share of access assignments ([`crate::AccessAssignmentStore`]): the
//! bound on a lookup, a patch put in order, the stored form of a row and its audit detail.

use std::collections::HashSet;

use callsign_core::{AccessAssignment, AccessPrincipalType, ObjectId, ResourceId, Scopes};
use uuid::Uuid;

use crate::StoreError;
use crate::audit::{AuditEvent, AuditOperation, AuditOutcome};

/// The most object ids [`crate::AccessAssignmentStore::access_assignments_of`] takes at once.
pub const MAX_ACCESS_OBJECTS: usize = 256;

/// Refuses a lookup of more than [`MAX_ACCESS_OBJECTS`] objects (a caller's bug).
pub(crate) fn check_lookup(objects: &[ObjectId]) -> Result<(), StoreError> {
    if objects.len() > MAX_ACCESS_OBJECTS {
        return Err(StoreError::backend(format!(
            "{} object ids asked at once; at most {MAX_ACCESS_OBJECTS} are",
            objects.len()
        )));
    }
    Ok(())
}

/// One change of a patch.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Create or replace.
    Put(AccessAssignment),
    /// Delete, if present.
    Delete(ObjectId),
}

impl Change {
    /// The object it changes.
    pub(crate) fn object(&self) -> &ObjectId {
        match self {
            Change::Put(a) => &a.object_id,
            Change::Delete(o) => o,
        }
    }
}

/// A patch's changes in object id order (rows are then locked in one order by every patch, so
/// two concurrent patches cannot deadlock); a repeated object id is refused (a caller's bug).
pub(crate) fn plan(
    puts: Vec<AccessAssignment>,
    deletes: Vec<ObjectId>,
) -> Result<Vec<Change>, StoreError> {
    let mut changes: Vec<Change> = puts
        .into_iter()
        .map(Change::Put)
        .chain(deletes.into_iter().map(Change::Delete))
        .collect();
    let mut seen = HashSet::with_capacity(changes.len());
    if let Some(repeated) = changes.iter().find(|c| !seen.insert(c.object())) {
        return Err(StoreError::backend(format!(
            "object id {} is named twice in one patch of access assignments",
            repeated.object()
        )));
    }
    changes.sort_by(|a, b| a.object().cmp(b.object()));
    Ok(changes)
}

/// The detail of an access assignment's audit record: `object <id> (<principalType>)`, or
/// `object <id>` when the type is unknown (a delete that found nothing).
pub(crate) fn detail(object: &str, principal: Option<&str>) -> String {
    match principal {
        Some(p) => format!("object {object} ({p})"),
        None => format!("object {object}"),
    }
}

/// The audit record of a put: `success` when it created the assignment, `replaced` when not.
pub(crate) fn put_event(
    resource: ResourceId,
    assignment: &AccessAssignment,
    created: bool,
) -> AuditEvent {
    let outcome = if created {
        AuditOutcome::Success
    } else {
        AuditOutcome::Replaced
    };
    AuditEvent::resource(AuditOperation::PutAccessAssignment, resource, outcome).with_detail(
        detail(
            assignment.object_id.as_str(),
            Some(assignment.principal_type.as_str()),
        ),
    )
}

/// The audit record of a delete: `success` with the principal type the assignment had, or
/// `notFound` (`None`: there was none).
pub(crate) fn delete_event(
    resource: ResourceId,
    object: &ObjectId,
    principal: Option<&str>,
) -> AuditEvent {
    let outcome = if principal.is_some() {
        AuditOutcome::Success
    } else {
        AuditOutcome::NotFound
    };
    AuditEvent::resource(AuditOperation::DeleteAccessAssignment, resource, outcome)
        .with_detail(detail(object.as_str(), principal))
}

/// The stored form of scopes: `None` is NULL (the trusted issuer's scopes), a set its claim
/// form (never empty: [`Scopes`] is not).
pub(crate) fn stored_scopes(scopes: Option<&Scopes>) -> Option<String> {
    scopes.map(Scopes::to_claim)
}

/// An access assignment row as both backends read it: resource, object, tenant, principal
/// type, scopes.
pub(crate) struct AccessRow {
    pub(crate) resource: String,
    pub(crate) object: String,
    pub(crate) tenant: String,
    pub(crate) principal: String,
    pub(crate) scopes: Option<String>,
}

/// The columns in [`AccessRow`]'s order.
pub(crate) const ACCESS_COLUMNS: &str = "resource_id, object_id, tenant_id, principal_type, scopes";

impl AccessRow {
    /// The assignment of a stored row; a value that does not parse, or an object id not in the
    /// form it is stored in (a GUID in lowercase), is corrupt data.
    pub(crate) fn record(self) -> Result<(ResourceId, AccessAssignment), StoreError> {
        let AccessRow {
            resource,
            object,
            tenant,
            principal,
            scopes,
        } = self;
        let bad = |what: &str, v: &str| {
            StoreError::corrupt(format!("access assignment {object:?}: {what} {v:?}"))
        };
        let object_id = ObjectId::parse(&object)
            .ok()
            .filter(|o| o.as_str() == object)
            .ok_or_else(|| bad("object id", &object))?;
        let tenant_id: Uuid =
            callsign_core::parse_guid(&tenant).ok_or_else(|| bad("tenant id", &tenant))?;
        Ok((
            ResourceId::parse(&resource).map_err(|_| bad("resource id", &resource))?,
            AccessAssignment {
                object_id,
                tenant_id,
                principal_type: AccessPrincipalType::parse(&principal)
                    .ok_or_else(|| bad("principal type", &principal))?,
                scopes: scopes
                    .map(|s| Scopes::from_claim(&s).map_err(|e| bad("scopes", &s).caused_by(e)))
                    .transpose()?,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(s: &str) -> ObjectId {
        ObjectId::parse(s).expect("object id")
    }

    fn put(s: &str) -> AccessAssignment {
        AccessAssignment {
            object_id: object(s),
            tenant_id: Uuid::nil(),
            principal_type: AccessPrincipalType::User,
            scopes: None,
        }
    }

    #[test]
    fn a_patch_runs_in_object_id_order_and_names_each_object_once() {
        let changes = plan(vec![put("c"), put("a")], vec![object("b")]).expect("plan");
        let order: Vec<&str> = changes.iter().map(|c| c.object().as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        let err = plan(vec![put("a")], vec![object("a")]).expect_err("repeated");
        assert!(
            err.is_backend() && err.to_string().contains("twice"),
            "{err}"
        );
        assert!(plan(vec![put("a"), put("a")], vec![]).is_err());
    }

    #[test]
    fn lookups_are_bounded() {
        let many: Vec<ObjectId> = (0..=MAX_ACCESS_OBJECTS)
            .map(|i| object(&i.to_string()))
            .collect();
        assert!(check_lookup(&many[..MAX_ACCESS_OBJECTS]).is_ok());
        assert!(check_lookup(&many).is_err_and(|e| e.is_backend()));
    }

    #[test]
    fn rows_that_do_not_parse_are_corrupt() {
        let row = |object: &str, tenant: &str, principal: &str, scopes: Option<&str>| AccessRow {
            resource: Uuid::new_v4().to_string(),
            object: object.to_owned(),
            tenant: tenant.to_owned(),
            principal: principal.to_owned(),
            scopes: scopes.map(str::to_owned),
        };
        let tenant = Uuid::new_v4().to_string();
        let good = row("alice", &tenant, "user", Some("chat,voip"));
        let (_, a) = good.record().expect("good row");
        assert_eq!(a.scopes.map(|s| s.to_claim()), Some("chat,voip".to_owned()));
        for bad in [
            row("a b", &tenant, "user", None),
            row(
                "B27B64B9-39D2-44A3-869D-67700B74E805",
                &tenant,
                "user",
                None,
            ),
            row("alice", "not-a-guid", "user", None),
            row("alice", &tenant, "User", None),
            row("alice", &tenant, "user", Some("")),
            row("alice", &tenant, "user", Some("chat,nope")),
        ] {
            assert!(bad.record().is_err_and(|e| e.is_corrupt()));
        }
    }
}
