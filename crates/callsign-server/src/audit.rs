//! Audit log retention: every node prunes records older than the retention in the background,
//! in bounded batches, so that no prune holds the store's writer for long. Pruning is
//! idempotent: nodes pruning one database together delete each record once.

use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;

/// How often a node prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Records deleted per transaction.
const PRUNE_BATCH: usize = 1000;
/// The pause between two batches, which lets waiting writes go first.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Prunes the audit log every [`PRUNE_EVERY`], from the start, when a retention is set.
pub(crate) fn spawn_pruner(state: Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    let retention = state.audit_retention?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            prune_once(&state, retention).await;
        }
    }))
}

/// Deletes every record older than `retention`, one batch at a time.
pub(crate) async fn prune_once(state: &AppState, retention: Duration) {
    let before = state.clock.now() - retention;
    let mut total = 0;
    loop {
        match state.store.prune_audit(before, PRUNE_BATCH).await {
            Ok(n) => {
                total += n;
                if n < PRUNE_BATCH {
                    break;
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
            Err(e) => {
                tracing::warn!(error = %e.chain(), "could not prune the audit log");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(records = total, "pruned audit records past their retention");
    }
}
