//! Access assignments on PostgreSQL (table `callsign_access_assignments`): every write is one
//! transaction with its audit records, so a patch is all or nothing and leaves a record only
//! for what it changed.

use async_trait::async_trait;
use callsign_core::{AccessAssignment, ObjectId, ResourceId};
use deadpool_postgres::GenericClient;
use time::OffsetDateTime;

use super::{PostgresStore, pg, pool_error, write_audit};
use crate::access::{
    ACCESS_COLUMNS, AccessRow, Change, check_lookup, delete_event, plan, put_event, stored_scopes,
};
use crate::audit::Actor;
use crate::{AccessAssignmentStore, StoreError, unix_ms as ms};

/// Creates or replaces one assignment. One statement: a concurrent first put either inserts
/// or, having waited for the other insert, updates; `xmax = 0` holds only for a row this
/// statement inserted.
const PUT: &str = "
INSERT INTO callsign_access_assignments
  (resource_id, object_id, tenant_id, principal_type, scopes, updated_at_ms)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (resource_id, object_id) DO UPDATE
  SET tenant_id = EXCLUDED.tenant_id,
      principal_type = EXCLUDED.principal_type,
      scopes = EXCLUDED.scopes,
      updated_at_ms = EXCLUDED.updated_at_ms
RETURNING (xmax = 0) AS created";

/// Creates or replaces an assignment through `client` (a transaction), audited; true when it
/// was created.
async fn put(
    client: &impl GenericClient,
    resource: ResourceId,
    assignment: &AccessAssignment,
    actor: &Actor,
) -> Result<bool, StoreError> {
    let stmt = client.prepare_cached(PUT).await.map_err(pg)?;
    let row = client
        .query_one(
            &stmt,
            &[
                &resource.to_string(),
                &assignment.object_id.as_str(),
                &assignment.tenant_id.to_string(),
                &assignment.principal_type.as_str(),
                &stored_scopes(assignment.scopes.as_ref()),
                &ms(OffsetDateTime::now_utc()),
            ],
        )
        .await
        .map_err(pg)?;
    let created: bool = row.try_get(0).map_err(pg)?;
    write_audit(client, actor, &put_event(resource, assignment, created)).await?;
    Ok(created)
}

/// Deletes an assignment through `client` (not audited here); the principal type it had,
/// `None` when there was none.
async fn remove(
    client: &impl GenericClient,
    resource: ResourceId,
    object: &ObjectId,
) -> Result<Option<String>, StoreError> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM callsign_access_assignments WHERE resource_id = $1 AND object_id = $2
             RETURNING principal_type",
        )
        .await
        .map_err(pg)?;
    client
        .query_opt(&stmt, &[&resource.to_string(), &object.as_str()])
        .await
        .map_err(pg)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(pg)
}

fn access_row(row: &tokio_postgres::Row) -> Result<AccessRow, StoreError> {
    Ok(AccessRow {
        resource: row.try_get(0).map_err(pg)?,
        object: row.try_get(1).map_err(pg)?,
        tenant: row.try_get(2).map_err(pg)?,
        principal: row.try_get(3).map_err(pg)?,
        scopes: row.try_get(4).map_err(pg)?,
    })
}

/// The assignments of rows as read.
fn assignments(rows: &[tokio_postgres::Row]) -> Result<Vec<AccessAssignment>, StoreError> {
    rows.iter()
        .map(|row| access_row(row)?.record().map(|(_, a)| a))
        .collect()
}

/// Every access assignment, in `(resource, object)` order.
pub(super) async fn all(
    store: &PostgresStore,
) -> Result<Vec<(ResourceId, AccessAssignment)>, StoreError> {
    let client = store.pool.get().await.map_err(pool_error)?;
    let rows = client
        .query(
            &format!(
                "SELECT {ACCESS_COLUMNS} FROM callsign_access_assignments
                 ORDER BY resource_id, object_id"
            ),
            &[],
        )
        .await
        .map_err(pg)?;
    rows.iter().map(|row| access_row(row)?.record()).collect()
}

#[async_trait]
impl AccessAssignmentStore for PostgresStore {
    async fn get_access_assignment(
        &self,
        resource: ResourceId,
        object: &ObjectId,
    ) -> Result<Option<AccessAssignment>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ACCESS_COLUMNS} FROM callsign_access_assignments
                 WHERE resource_id = $1 AND object_id = $2"
            ))
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(&stmt, &[&resource.to_string(), &object.as_str()])
            .await
            .map_err(pg)?;
        row.map(|r| access_row(&r)?.record().map(|(_, a)| a))
            .transpose()
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
        let objects: Vec<&str> = objects.iter().map(ObjectId::as_str).collect();
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ACCESS_COLUMNS} FROM callsign_access_assignments
                 WHERE resource_id = $1 AND object_id = ANY($2::text[]) ORDER BY object_id"
            ))
            .await
            .map_err(pg)?;
        let rows = client
            .query(&stmt, &[&resource.to_string(), &objects])
            .await
            .map_err(pg)?;
        assignments(&rows)
    }

    async fn list_access_assignments(
        &self,
        resource: ResourceId,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<AccessAssignment>, StoreError> {
        let after = after.map(ObjectId::as_str).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ACCESS_COLUMNS} FROM callsign_access_assignments
                 WHERE resource_id = $1 AND object_id > $2 ORDER BY object_id LIMIT $3"
            ))
            .await
            .map_err(pg)?;
        let rows = client
            .query(&stmt, &[&resource.to_string(), &after, &limit])
            .await
            .map_err(pg)?;
        assignments(&rows)
    }

    async fn put_access_assignment(
        &self,
        resource: ResourceId,
        assignment: AccessAssignment,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let created = put(&tx, resource, &assignment, actor).await?;
        tx.commit().await.map_err(pg)?;
        Ok(created)
    }

    async fn delete_access_assignment(
        &self,
        resource: ResourceId,
        object: &ObjectId,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let principal = remove(&tx, resource, object).await?;
        write_audit(
            &tx,
            actor,
            &delete_event(resource, object, principal.as_deref()),
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok(principal.is_some())
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
        let mut client = self.pool.get().await.map_err(pool_error)?;
        // Dropped without a commit on any error: nothing of the patch is left.
        let tx = client.transaction().await.map_err(pg)?;
        for change in &changes {
            match change {
                Change::Put(assignment) => {
                    put(&tx, resource, assignment, actor).await?;
                }
                Change::Delete(object) => {
                    if let Some(principal) = remove(&tx, resource, object).await? {
                        let event = delete_event(resource, object, Some(&principal));
                        write_audit(&tx, actor, &event).await?;
                    }
                }
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(())
    }
}
