//! What the server spends authenticating one request: parse `Authorization`, hash the body,
//! parse the date, build the string to sign and verify the MAC; and what a client spends signing.

use std::hint::black_box;
use std::time::SystemTime;

use callsign_hmac::{
    AccessKeyMac, Authorization, content_hash, parse_date, sign_request, string_to_sign,
};
use criterion::Criterion;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const HOST: &str = "127.0.0.1:8443";
const TARGET: &str = "/identities/8%3Aacs%3A00000000-1111-2222-3333-444444444444_00000005-14a2-493b-8a72-5a3a0d000081/:issueAccessToken?api-version=2023-10-01";
const BODY: &[u8] = br#"{"scopes":["chat","voip"],"expiresInMinutes":60}"#;

fn benches(c: &mut Criterion) {
    let key = AccessKeyMac::from_base64(KEY).expect("key");
    let signed = sign_request(&key, "POST", TARGET, HOST, BODY, SystemTime::now());

    c.bench_function("hmac/verify_request", |b| {
        b.iter(|| {
            let auth = Authorization::parse(black_box(&signed.authorization)).expect("parses");
            let hash = content_hash(black_box(BODY));
            assert_eq!(hash, signed.content_hash);
            let date = parse_date(black_box(&signed.date)).expect("date");
            black_box(date);
            let sts = string_to_sign("POST", black_box(TARGET), &[&signed.date, HOST, &hash]);
            assert!(key.verify(&sts, auth.signature));
        })
    });

    let sts = string_to_sign("POST", TARGET, &[&signed.date, HOST, &signed.content_hash]);
    let sig = key.sign(&sts);
    c.bench_function("hmac/verify_mac_only", |b| {
        b.iter(|| assert!(key.verify(black_box(&sts), black_box(&sig))))
    });

    c.bench_function("hmac/sign_request", |b| {
        b.iter(|| {
            black_box(sign_request(
                &key,
                "POST",
                black_box(TARGET),
                HOST,
                black_box(BODY),
                SystemTime::now(),
            ))
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
