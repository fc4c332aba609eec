//! The token hot path: the bare signature per algorithm, claims encoding without a signature,
//! and a whole issue (claims, encoding, signature) per algorithm.

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callsign_core::token::{Algorithm, Claims, SCP, SigningKey, TokenIssuer};
use callsign_core::{ExpiresIn, IdentityId, ResourceId, Scopes};
use criterion::Criterion;
use time::OffsetDateTime;

const ALGORITHMS: [Algorithm; 3] = [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256];

fn issuer(alg: Algorithm) -> TokenIssuer {
    let key = SigningKey::generate(alg).expect("key");
    TokenIssuer::new(
        key,
        callsign_core::token::Issuer::Fixed("urn:callsign:bench".into()),
        "local",
    )
    .expect("issuer")
}

fn benches(c: &mut Criterion) {
    let identity = IdentityId::new_random(ResourceId::new_random());
    let scopes = Scopes::parse(["chat", "voip"], true).expect("scopes");
    let expires = ExpiresIn::from_minutes(60).expect("60");
    let now = OffsetDateTime::now_utc();

    // A real token's signing input, so the hash inside the signature sees realistic length.
    let sample = issuer(Algorithm::Es256)
        .issue(&identity, &scopes, expires, 0, now)
        .expect("issues");
    let signing_input_len = sample.token.rfind('.').expect("three parts");
    let signing_input = sample.token.as_bytes()[..signing_input_len].to_vec();

    for alg in ALGORITHMS {
        let issuer = issuer(alg);
        c.bench_function(&format!("token/bare_signature/{alg}"), |b| {
            b.iter(|| black_box(issuer.key().sign(black_box(&signing_input)).expect("signs")))
        });
        c.bench_function(&format!("token/issue/{alg}"), |b| {
            b.iter(|| {
                black_box(
                    issuer
                        .issue(black_box(&identity), &scopes, expires, 0, now)
                        .expect("issues"),
                )
            })
        });
    }

    // Claims to payload text, as `TokenIssuer::encode` does before it signs.
    let iat = now.unix_timestamp();
    let claims = Claims {
        skypeid: identity.skype_id(),
        scp: SCP,
        csi: iat.to_string(),
        iat,
        exp: iat + 3600,
        acs_scope: scopes.to_claim(),
        resource_id: identity.resource().to_string(),
        resource_location: "local".into(),
        iss: "urn:callsign:bench".into(),
        sub: identity.to_string(),
        jti: uuid::Uuid::new_v4().hyphenated().to_string(),
        epoch: 0,
    };
    c.bench_function("token/claims_encoding", |b| {
        b.iter(|| {
            let json = serde_json::to_vec(black_box(&claims)).expect("json");
            black_box(URL_SAFE_NO_PAD.encode(json))
        })
    });
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
