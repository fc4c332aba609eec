//! Bulk seeding: millions of identities in one go, straight into the store.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use callsign_core::{IdentityId, ResourceId, SystemClock};
use callsign_store::{
    BulkIdentities, BulkStore, IdentityRecord, KeyProtection, PostgresOptions, StoreLocation,
    ensure_default_resource,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::SeedArgs;

/// What `seed` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedReport {
    /// The resource the identities belong to.
    pub resource: String,
    /// First index written.
    pub start: u64,
    /// How many were asked for.
    pub count: u64,
    /// How many were new (the rest existed already).
    pub inserted: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Identities per second.
    pub per_s: f64,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many ids are generated and sorted at once: about 16 bytes each.
const SORT_WINDOW: u64 = 5_000_000;

/// The user part of the `index`-th seeded identity.
fn seeded_user(index: u64) -> Uuid {
    const SALT: u64 = 0x6361_6c6c_7369_676e;
    let hi = splitmix64(index.wrapping_mul(2) ^ SALT);
    let lo = splitmix64(index.wrapping_mul(2).wrapping_add(1) ^ SALT);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn identity(resource: ResourceId, user: Uuid) -> IdentityId {
    IdentityId::parse(&format!("8:acs:{resource}_{}", user.hyphenated()))
        .expect("a resource GUID and a UUID always make a valid identity id")
}

/// The `index`-th seeded identity of `resource`: a v4-shaped UUID derived from the index, so
/// seeded ids spread over the key space like random ones and anyone can recompute them.
pub fn seeded_identity(resource: ResourceId, index: u64) -> IdentityId {
    identity(resource, seeded_user(index))
}

/// Writes identities `start..start + count` of the store's default resource (created if the
/// store is new) with `import_identities`, in key order within windows of five million,
/// `batch` at a time, two batches in flight.
pub async fn seed(args: SeedArgs) -> anyhow::Result<SeedReport> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let location = match &args.database_url {
        Some(url) => match StoreLocation::parse(url).context("--database-url")? {
            StoreLocation::Postgres(url) => StoreLocation::Postgres(url),
            StoreLocation::DataDir(_) => bail!("--database-url must be a postgres:// URL"),
        },
        None => StoreLocation::DataDir(
            args.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./callsign-data")),
        ),
    };
    // A benchmark tool: it reads the resource id, so it works on stores without a master key.
    let store = location
        .open(&seeding_options(), KeyProtection::plain())
        .await?;
    let result = seed_into(&store, &args).await;
    store.close().await;
    result
}

async fn seed_into(
    store: &std::sync::Arc<dyn BulkStore>,
    args: &SeedArgs,
) -> anyhow::Result<SeedReport> {
    let (resource, _) = ensure_default_resource(store.as_ref(), &SystemClock).await?;
    let resource_id = resource.id;
    let now = now_ms();
    let started = Instant::now();
    let end = args
        .start
        .checked_add(args.count)
        .context("--start + --count overflows")?;
    let mut progress = Progress::new(args.count, args.quiet, started);
    let mut in_flight = JoinSet::new();
    let mut window_start = args.start;
    while window_start < end {
        // Sorting a whole window of ids turns random inserts into near-sequential ones.
        let window_end = end.min(window_start.saturating_add(SORT_WINDOW));
        let mut users: Vec<Uuid> = (window_start..window_end).map(seeded_user).collect();
        users.sort_unstable();
        for chunk in users.chunks(args.batch) {
            while in_flight.len() >= 2 {
                if let Some(done) = in_flight.join_next().await {
                    progress.done(done.context("an import task failed")??);
                }
            }
            let records = records(resource_id, chunk, now);
            let written = records.len() as u64;
            let bulk: std::sync::Arc<dyn BulkIdentities> = std::sync::Arc::clone(store) as _;
            in_flight.spawn(async move {
                bulk.import_identities(records)
                    .await
                    .map(|report| (written, report.inserted as u64))
            });
            progress.show();
        }
        window_start = window_end;
    }
    while let Some(done) = in_flight.join_next().await {
        progress.done(done.context("an import task failed")??);
    }
    let inserted = progress.finish();
    let elapsed = started.elapsed().as_secs_f64();
    Ok(SeedReport {
        resource: resource_id.to_string(),
        start: args.start,
        count: args.count,
        inserted,
        elapsed_s: elapsed,
        per_s: args.count as f64 / elapsed.max(1e-9),
    })
}

/// Now, to the millisecond (the precision stored).
fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now)
}

/// The records of `users`, fresh identities of `resource` created at `now`.
fn records(resource: ResourceId, users: &[Uuid], now: OffsetDateTime) -> Vec<IdentityRecord> {
    users
        .iter()
        .map(|user| IdentityRecord {
            id: identity(resource, *user),
            custom_id: None,
            created_at: now,
            revocation_epoch: 0,
            last_token_issued_at: None,
        })
        .collect()
}

/// Seeding progress: a bar on a terminal ([`crate::progress`]), else a plain line every two
/// seconds on standard error (unless quiet).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    count: u64,
    started: Instant,
    last_line: Instant,
    /// Identities written so far, new or not.
    written: u64,
    /// Of them, new ones.
    inserted: u64,
}

impl Progress {
    fn new(count: u64, quiet: bool, started: Instant) -> Self {
        Self {
            bar: crate::progress::counter(count, "seed", quiet),
            quiet,
            count,
            started,
            last_line: started,
            written: 0,
            inserted: 0,
        }
    }

    /// A batch of `written` identities is in, `inserted` of them new.
    fn done(&mut self, (written, inserted): (u64, u64)) {
        self.written += written;
        self.inserted += inserted;
        if let Some(bar) = &self.bar {
            bar.set_position(self.written);
        }
    }

    /// The plain line, when it is time for one and no bar is drawn.
    fn show(&mut self) {
        if self.bar.is_some() || self.quiet || self.last_line.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_line = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "seed: {:>10} of {} written, {:.1} s, {:.0}/s",
            self.written,
            self.count,
            secs,
            self.written as f64 / secs
        );
    }

    /// Clears the bar; returns how many identities were new.
    fn finish(self) -> u64 {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        self.inserted
    }
}

/// One import statement writes a whole batch (50,000 identities by default), which can take
/// longer than the request path's statement timeout on a slow disk.
fn seeding_options() -> PostgresOptions {
    PostgresOptions {
        statement_timeout: std::time::Duration::from_secs(300),
        ..PostgresOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn seeded_ids_are_stable_distinct_and_valid() {
        let r = ResourceId::parse("00000000-1111-2222-3333-444444444444").expect("guid");
        assert_eq!(seeded_identity(r, 7), seeded_identity(r, 7));
        let ids: HashSet<IdentityId> = (0..50_000).map(|i| seeded_identity(r, i)).collect();
        assert_eq!(ids.len(), 50_000);
        let s = seeded_identity(r, 0).to_string();
        assert!(s.starts_with("8:acs:00000000-1111-2222-3333-444444444444_"));
        assert_eq!(s.matches('_').count(), 1);
    }
}
