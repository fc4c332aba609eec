//! Identity lookup on the embedded store: `get_identity` by id in a directory of 10,000, the
//! read every token issue makes.

use std::hint::black_box;

use callsign_core::{IdentityId, ResourceId};
use callsign_store::{
    BulkIdentities as _, IdentityRecord, IdentityStore as _, SqliteStore, Store as _,
};
use criterion::Criterion;
use time::OffsetDateTime;

const IDENTITIES: usize = 10_000;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("bench.db")).expect("store");
    let resource = ResourceId::new_random();
    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    let ids: Vec<IdentityId> = (0..IDENTITIES)
        .map(|_| IdentityId::new_random(resource))
        .collect();
    let records = ids
        .iter()
        .map(|id| IdentityRecord {
            id: *id,
            custom_id: None,
            created_at: now,
            revocation_epoch: 0,
            last_token_issued_at: None,
        })
        .collect();
    let inserted = rt
        .block_on(store.import_identities(records))
        .expect("import")
        .inserted;
    assert_eq!(inserted, IDENTITIES);

    let mut i = 0usize;
    c.bench_function("store/sqlite/get_identity", |b| {
        b.iter(|| {
            i = (i + 7919) % IDENTITIES;
            let found = rt
                .block_on(store.get_identity(black_box(&ids[i])))
                .expect("get");
            black_box(found.expect("present"))
        })
    });
    let missing = IdentityId::new_random(resource);
    c.bench_function("store/sqlite/get_identity_missing", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(store.get_identity(black_box(&missing)))
                    .expect("get"),
            )
        })
    });
    rt.block_on(store.close());
}

fn main() {
    // Short windows: these run often and the numbers are stable well within them.
    let mut c = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
