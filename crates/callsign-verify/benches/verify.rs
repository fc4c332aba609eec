//! Verifications per second per algorithm with a cached key: header read, key lookup, signature,
//! claims into domain types, issuer, resource, time and scope checks.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;

use callsign_core::token::{Algorithm, SigningKey, TokenIssuer};
use callsign_core::{ExpiresIn, IdentityId, ResourceId, Scopes};
use callsign_verify::Scope;
use callsign_verify::jws::{Jws, Policy};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    let resource = ResourceId::new_random();
    let policy = Policy::for_resource(resource);
    let now = time::OffsetDateTime::now_utc();
    for alg in [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256] {
        let key = SigningKey::generate(alg).expect("key");
        let keys: HashMap<String, _> = [(key.kid().to_owned(), key.verifying_key())].into();
        let issuer = TokenIssuer::new(
            key,
            callsign_core::token::Issuer::Fixed(policy.issuer.clone()),
            "local",
        )
        .expect("issuer");
        let id = IdentityId::new_random(resource);
        let scopes = Scopes::parse(["chat", "voip"], true).expect("scopes");
        let token = issuer
            .issue(&id, &scopes, ExpiresIn::DEFAULT, 0, now)
            .expect("token")
            .token;
        group.bench_function(alg.jose_name(), |b| {
            b.iter(|| {
                let jws = Jws::parse(black_box(&token)).expect("parse");
                let key = keys.get(jws.kid()).expect("key");
                jws.verify(key, &policy, &[Scope::Chat], now)
                    .expect("verify")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
