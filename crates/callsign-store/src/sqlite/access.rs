//! Access assignments on the embedded store (table `access_assignments`): reads on the read
//! pool; writes are jobs of the single writer thread, each in its own savepoint with its audit
//! records, so a patch is all or nothing and leaves a record only for what it changed.

use async_trait::async_trait;
use callsign_core::{AccessAssignment, ObjectId, ResourceId};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use time::OffsetDateTime;

use super::{
    Answer, Job, JobOutcome, Reply, SqliteStore, answer, backend, in_savepoint, write_audit,
};
use crate::access::{
    ACCESS_COLUMNS, AccessRow, Change, check_lookup, delete_event, plan, put_event, stored_scopes,
};
use crate::audit::Actor;
use crate::{AccessAssignmentStore, StoreError, unix_ms as ms};

/// A write of access assignments, for the writer thread.
pub(super) enum AccessJob {
    /// Create or replace one.
    Put(ResourceId, AccessAssignment, Actor, Reply<bool>),
    /// Delete one.
    Delete(ResourceId, ObjectId, Actor, Reply<bool>),
    /// Apply a patch's changes (in object id order) together.
    Patch(ResourceId, Vec<Change>, Actor, Reply<()>),
}

impl AccessJob {
    /// Answers the job with `e` (its batch could not run).
    pub(super) fn fail(self, e: StoreError) {
        match self {
            AccessJob::Put(.., r) | AccessJob::Delete(.., r) => drop(r.send(Err(e))),
            AccessJob::Patch(.., r) => drop(r.send(Err(e))),
        }
    }

    /// Runs the job in a savepoint of `tx` (see `run_job`).
    pub(super) fn run(self, tx: &rusqlite::Transaction<'_>) -> (Answer, JobOutcome) {
        match self {
            AccessJob::Put(resource, assignment, actor, reply) => answer(
                reply,
                in_savepoint(tx, |tx| put(tx, resource, &assignment, &actor)),
            ),
            AccessJob::Delete(resource, object, actor, reply) => answer(
                reply,
                in_savepoint(tx, |tx| {
                    let principal = remove(tx, resource, &object)?;
                    let event = delete_event(resource, &object, principal.as_deref());
                    write_audit(tx, &actor, &event)?;
                    Ok(principal.is_some())
                }),
            ),
            AccessJob::Patch(resource, changes, actor, reply) => answer(
                reply,
                in_savepoint(tx, |tx| patch(tx, resource, &changes, &actor)),
            ),
        }
    }
}

/// Creates or replaces an assignment, audited; true when it was created. The writer thread runs
/// one job at a time, so the insert-then-update pair cannot interleave with another put.
fn put(
    tx: &rusqlite::Transaction<'_>,
    resource: ResourceId,
    assignment: &AccessAssignment,
    actor: &Actor,
) -> Result<bool, StoreError> {
    let values = (
        resource.to_string(),
        assignment.object_id.as_str(),
        assignment.tenant_id.to_string(),
        assignment.principal_type.as_str(),
        stored_scopes(assignment.scopes.as_ref()),
        ms(OffsetDateTime::now_utc()),
    );
    let created = tx
        .prepare_cached(
            "INSERT INTO access_assignments
               (resource_id, object_id, tenant_id, principal_type, scopes, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute(put_params(&values)))
        .map_err(backend)?
        == 1;
    if !created {
        tx.prepare_cached(
            "UPDATE access_assignments
             SET tenant_id = ?3, principal_type = ?4, scopes = ?5, updated_at_ms = ?6
             WHERE resource_id = ?1 AND object_id = ?2",
        )
        .and_then(|mut s| s.execute(put_params(&values)))
        .map_err(backend)?;
    }
    write_audit(tx, actor, &put_event(resource, assignment, created))?;
    Ok(created)
}

/// The row values of a put as statement parameters.
fn put_params<'a>(
    v: &'a (String, &str, String, &str, Option<String>, i64),
) -> [&'a dyn rusqlite::ToSql; 6] {
    [&v.0, &v.1, &v.2, &v.3, &v.4, &v.5]
}

/// Deletes an assignment (not audited here); the principal type it had, `None` when there was
/// none.
fn remove(
    tx: &rusqlite::Transaction<'_>,
    resource: ResourceId,
    object: &ObjectId,
) -> Result<Option<String>, StoreError> {
    tx.prepare_cached(
        "DELETE FROM access_assignments WHERE resource_id = ?1 AND object_id = ?2
         RETURNING principal_type",
    )
    .and_then(|mut s| {
        s.query_row(params![resource.to_string(), object.as_str()], |r| r.get(0))
            .optional()
    })
    .map_err(backend)
}

/// Applies a patch's changes in one savepoint: a record per put, and per delete that found an
/// assignment.
fn patch(
    tx: &rusqlite::Transaction<'_>,
    resource: ResourceId,
    changes: &[Change],
    actor: &Actor,
) -> Result<(), StoreError> {
    for change in changes {
        match change {
            Change::Put(assignment) => {
                put(tx, resource, assignment, actor)?;
            }
            Change::Delete(object) => {
                if let Some(principal) = remove(tx, resource, object)? {
                    write_audit(tx, actor, &delete_event(resource, object, Some(&principal)))?;
                }
            }
        }
    }
    Ok(())
}

fn access_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccessRow> {
    Ok(AccessRow {
        resource: r.get(0)?,
        object: r.get(1)?,
        tenant: r.get(2)?,
        principal: r.get(3)?,
        scopes: r.get(4)?,
    })
}

/// The assignments of rows as read.
fn assignments(
    rows: impl Iterator<Item = rusqlite::Result<AccessRow>>,
) -> Result<Vec<AccessAssignment>, StoreError> {
    rows.map(|row| row.map_err(backend)?.record().map(|(_, a)| a))
        .collect()
}

/// Every access assignment, in `(resource, object)` order.
pub(super) fn all(c: &Connection) -> Result<Vec<(ResourceId, AccessAssignment)>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {ACCESS_COLUMNS} FROM access_assignments ORDER BY resource_id, object_id"
        ))
        .map_err(backend)?;
    let rows = stmt.query_map([], access_row).map_err(backend)?;
    rows.map(|row| row.map_err(backend)?.record()).collect()
}

#[async_trait]
impl AccessAssignmentStore for SqliteStore {
    async fn get_access_assignment(
        &self,
        resource: ResourceId,
        object: &ObjectId,
    ) -> Result<Option<AccessAssignment>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {ACCESS_COLUMNS} FROM access_assignments
                 WHERE resource_id = ?1 AND object_id = ?2"
            ))
            .and_then(|mut s| {
                s.query_row(params![resource.to_string(), object.as_str()], access_row)
                    .optional()
            })
            .map_err(backend)?
            .map(|row| row.record().map(|(_, a)| a))
            .transpose()
        })
    }

    async fn access_assignments_of(
        &self,
        resource: ResourceId,
        objects: &[ObjectId],
    ) -> Result<Vec<AccessAssignment>, StoreError> {
        check_lookup(objects)?;
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        // One statement per count of objects (not cached: counts vary).
        let marks = (2..objects.len() + 2)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let resource = resource.to_string();
        let values = std::iter::once(resource.as_str()).chain(objects.iter().map(ObjectId::as_str));
        self.read(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {ACCESS_COLUMNS} FROM access_assignments
                     WHERE resource_id = ?1 AND object_id IN ({marks}) ORDER BY object_id"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params_from_iter(values), access_row)
                .map_err(backend)?;
            assignments(rows)
        })
    }

    async fn list_access_assignments(
        &self,
        resource: ResourceId,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<AccessAssignment>, StoreError> {
        let after = after.map(ObjectId::as_str).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ACCESS_COLUMNS} FROM access_assignments
                     WHERE resource_id = ?1 AND object_id > ?2 ORDER BY object_id LIMIT ?3"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![resource.to_string(), after, limit], access_row)
                .map_err(backend)?;
            assignments(rows)
        })
    }

    async fn put_access_assignment(
        &self,
        resource: ResourceId,
        assignment: AccessAssignment,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let actor = actor.clone();
        self.submit(|r| Job::Access(AccessJob::Put(resource, assignment, actor, r)))
            .await
    }

    async fn delete_access_assignment(
        &self,
        resource: ResourceId,
        object: &ObjectId,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let (object, actor) = (object.clone(), actor.clone());
        self.submit(|r| Job::Access(AccessJob::Delete(resource, object, actor, r)))
            .await
    }

    async fn patch_access_assignments(
        &self,
        resource: ResourceId,
        puts: Vec<AccessAssignment>,
        deletes: Vec<ObjectId>,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let changes = plan(puts, deletes)?;
        if changes.is_empty() {
            return Ok(());
        }
        let actor = actor.clone();
        self.submit(|r| Job::Access(AccessJob::Patch(resource, changes, actor, r)))
            .await
    }
}
