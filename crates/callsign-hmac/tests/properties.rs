//! Property tests of everything an unauthenticated client's headers reach: the `Authorization`
//! parser, the date parser, the string to sign, the content hash and the MAC.
//!
//! 256 cases per property by default; `PROPTEST_CASES=N` runs N (see `scripts/fuzz.sh`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callsign_hmac::{
    AccessKeyMac, Authorization, AuthorizationError, SCHEME, SIGNED_HEADERS, content_hash,
    format_date, parse_date, sign_request, string_to_sign,
};
use proptest::prelude::*;

/// The last second `format_date` can write (9999-12-31T23:59:59Z).
const LAST_SECOND: u64 = 253_402_300_799;

/// Pieces of `Authorization` values, glued at random: reaches every branch of the parser far
/// more often than uniform text does.
fn authorization_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("HMAC-SHA256".to_owned()),
        Just("hmac-sha256".to_owned()),
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("SignedHeaders".to_owned()),
        Just("signedheaders".to_owned()),
        Just("Signature".to_owned()),
        Just("=".to_owned()),
        Just("&".to_owned()),
        Just(";".to_owned()),
        Just("x-ms-date;host;x-ms-content-sha256".to_owned()),
        "[A-Za-z0-9+/=-]{0,12}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..48).prop_map(|v| v.concat())
}

/// A header name the parser keeps as is (after lower-casing): no separators, no whitespace.
fn header_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_.-]{0,24}"
}

/// Random upper/lower case of an ASCII word.
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars()
            .zip(upper)
            .map(|(c, u)| {
                if u {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    })
}

/// Checks that a parsed header holds no more than its input: every signed header name is a
/// (lower-cased) piece of the input and the signature a slice of it.
fn assert_bounded(input: &str, parsed: &Authorization<'_>) {
    let names: usize = parsed.signed_headers.iter().map(String::len).sum();
    assert!(parsed.signed_headers.len() <= input.len());
    assert!(names + parsed.signature.len() <= input.len());
    let range = input.as_bytes().as_ptr_range();
    assert!(range.contains(&parsed.signature.as_ptr()));
}

/// RFC 1123 dates with every field possibly out of range or misspelt.
fn date_like() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            "(Mon|Tue|Wed|Thu|Fri|Sat|Sun)",
            "(Monday|Sunday|Xyz|)",
            "[A-Za-z]{0,4}"
        ],
        prop_oneof![Just(", "), Just(","), Just(" "), Just("")],
        "[0-9]{0,3}",
        prop_oneof![
            "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)",
            "[A-Za-z]{0,4}"
        ],
        "[0-9]{0,6}",
        "[0-9]{0,3}:[0-9]{0,3}:[0-9]{0,3}",
        prop_oneof![
            Just(" GMT"),
            Just(" UTC"),
            Just(""),
            Just(" gmt"),
            Just("GMT")
        ],
    )
        .prop_map(|(day, comma, d, mon, y, hms, zone)| {
            format!("{day}{comma}{d} {mon} {y} {hms}{zone}")
        })
}

proptest! {
    #[test]
    fn authorization_parse_of_any_text_never_panics(s in any::<String>()) {
        if let Ok(a) = Authorization::parse(&s) {
            assert_bounded(&s, &a);
        }
    }

    #[test]
    fn authorization_parse_of_header_like_text_never_panics(s in authorization_like()) {
        if let Ok(a) = Authorization::parse(&s) {
            assert_bounded(&s, &a);
            prop_assert!(!a.signature.is_empty());
            prop_assert!(a.signed_headers.iter().all(|h| !h.is_empty()));
            prop_assert!(a.signed_headers.iter().all(|h| *h == h.to_ascii_lowercase()));
        }
    }

    #[test]
    fn authorization_parse_of_long_text_never_panics(
        s in prop_oneof![4 => "[ -~]{0,256}", 1 => "[ -~]{0,4096}"],
        repeat in prop_oneof![4 => 0usize..64, 1 => 0usize..2048],
    ) {
        let long = format!("{SCHEME} SignedHeaders={}&Signature={s}", "h;".repeat(repeat) + "h");
        for input in [&s, &long] {
            if let Ok(a) = Authorization::parse(input) {
                assert_bounded(input, &a);
            }
        }
    }

    #[test]
    fn a_generated_authorization_round_trips(
        scheme in any_case(SCHEME),
        names in prop::collection::vec(header_name(), 1..12),
        signature in "[A-Za-z0-9+/]{1,64}={0,2}",
        signature_first in any::<bool>(),
        keys in (any_case("SignedHeaders"), any_case("Signature")),
        lead in "[ \t]{0,3}",
        gap in " {1,3}",
        trail in "[ \t]{0,3}",
    ) {
        let headers = format!("{}={}", keys.0, names.join(";"));
        let sig = format!("{}={signature}", keys.1);
        let rest = if signature_first {
            format!("{sig}&{headers}")
        } else {
            format!("{headers}&{sig}")
        };
        let value = format!("{lead}{scheme}{gap}{rest}{trail}");
        let parsed = Authorization::parse(&value);
        let want: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        prop_assert_eq!(parsed.as_ref().map(|a| &a.signed_headers), Ok(&want));
        prop_assert_eq!(parsed.map(|a| a.signature), Ok(signature.as_str()));
    }

    #[test]
    fn other_schemes_are_refused(scheme in "[A-Za-z0-9-]{1,16}", rest in any::<String>()) {
        let value = format!("{scheme} {rest}");
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            prop_assert_eq!(Authorization::parse(&value), Err(AuthorizationError::Scheme));
        }
    }

    #[test]
    fn parse_date_of_any_text_never_panics(s in any::<String>()) {
        if let Some(t) = parse_date(&s) {
            // Whatever parses can be written back and reads the same.
            prop_assert_eq!(parse_date(&format_date(t)), Some(t));
        }
    }

    #[test]
    fn parse_date_of_date_like_text_never_panics(s in date_like()) {
        if let Some(t) = parse_date(&s) {
            prop_assert_eq!(parse_date(&format_date(t)), Some(t));
        }
    }

    #[test]
    fn formatted_dates_parse_back(
        secs in 0..=LAST_SECOND,
        nanos in 0u32..1_000_000_000,
        pad in ("[ \t]{0,3}", "[ \t]{0,3}"),
    ) {
        let whole = UNIX_EPOCH + Duration::from_secs(secs);
        let text = format_date(whole + Duration::from_nanos(u64::from(nanos)));
        prop_assert_eq!(text.len(), 29);
        prop_assert_eq!(parse_date(&text), Some(whole));
        prop_assert_eq!(parse_date(&format!("{}{text}{}", pad.0, pad.1)), Some(whole));
    }

    #[test]
    fn string_to_sign_is_exactly_the_documented_concatenation(
        method in any::<String>(),
        path in any::<String>(),
        values in prop::collection::vec(any::<String>(), 0..8),
    ) {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let sts = string_to_sign(&method, &path, &refs);
        prop_assert_eq!(&sts, &format!("{method}\n{path}\n{}", values.join(";")));
    }

    #[test]
    fn content_hashes_are_base64_sha256_and_tell_bodies_apart(
        a in prop::collection::vec(any::<u8>(), 0..2048),
        b in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let (ha, hb) = (content_hash(&a), content_hash(&b));
        prop_assert_eq!(ha.len(), 44);
        prop_assert_eq!(STANDARD.decode(&ha).map(|d| d.len()), Ok(32));
        prop_assert_eq!(ha == hb, a == b);
    }

    #[test]
    fn signatures_verify_and_tell_messages_apart(
        key in prop::collection::vec(any::<u8>(), 0..128),
        a in any::<String>(),
        b in any::<String>(),
    ) {
        let mac = AccessKeyMac::from_bytes(&key);
        let (sa, sb) = (mac.sign(&a), mac.sign(&b));
        prop_assert_eq!(sa.len(), 44);
        prop_assert!(mac.verify(&a, &sa));
        prop_assert_eq!(sa == sb, a == b);
        prop_assert_eq!(mac.verify(&b, &sa), a == b);
    }

    #[test]
    fn verify_of_any_signature_text_never_panics(sts in any::<String>(), sig in any::<String>()) {
        let mac = AccessKeyMac::from_bytes(b"key");
        let _ = mac.verify(&sts, &sig);
        // Only the exact signature, in padded base64, is accepted.
        prop_assert_eq!(mac.verify(&sts, &sig), sig == mac.sign(&sts));
    }

    #[test]
    fn keys_decode_from_base64_with_or_without_padding(
        key in prop::collection::vec(any::<u8>(), 0..128),
        message in any::<String>(),
        junk in any::<String>(),
    ) {
        let padded = STANDARD.encode(&key);
        let bare = padded.trim_end_matches('=');
        let want = AccessKeyMac::from_bytes(&key).sign(&message);
        for text in [padded.as_str(), bare, &format!(" {padded}\n")] {
            let mac = AccessKeyMac::from_base64(text);
            prop_assert_eq!(mac.map(|m| m.sign(&message)), Ok(want.clone()));
        }
        // Arbitrary text: either an error or a usable key, never a panic.
        if let Ok(mac) = AccessKeyMac::from_base64(&junk) {
            let _ = mac.sign(&message);
        }
    }

    #[test]
    fn signed_requests_parse_and_verify(
        key in prop::collection::vec(any::<u8>(), 1..96),
        method in "(GET|POST|PUT|PATCH|DELETE)",
        path in "/[ -~]{0,200}",
        host in "[a-z0-9.-]{1,40}(:[0-9]{1,5})?",
        body in prop::collection::vec(any::<u8>(), 0..512),
        secs in 0..=LAST_SECOND,
    ) {
        let mac = AccessKeyMac::from_bytes(&key);
        let now = UNIX_EPOCH + Duration::from_secs(secs);
        let h = sign_request(&mac, &method, &path, &host, &body, now);
        let auth = Authorization::parse(&h.authorization);
        let want: Vec<String> = SIGNED_HEADERS.split(';').map(str::to_owned).collect();
        prop_assert_eq!(auth.as_ref().map(|a| &a.signed_headers), Ok(&want));
        prop_assert_eq!(parse_date(&h.date), Some(now));
        prop_assert_eq!(&h.content_hash, &content_hash(&body));
        let sts = string_to_sign(&method, &path, &[&h.date, &host, &h.content_hash]);
        let signature = auth.map(|a| a.signature).unwrap_or_default();
        prop_assert!(mac.verify(&sts, signature));
        let other_path = format!("{path}x");
        let other = string_to_sign(&method, &other_path, &[&h.date, &host, &h.content_hash]);
        prop_assert!(!mac.verify(&other, signature));
    }
}

#[test]
fn the_last_writable_date_round_trips() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_SECOND);
    assert_eq!(format_date(t), "Fri, 31 Dec 9999 23:59:59 GMT");
    assert_eq!(parse_date(&format_date(t)), Some(t));
}
