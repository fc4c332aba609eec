//! Property tests of the domain parsers a request's path and body reach: identity, resource and
//! custom ids, GUIDs, scopes, token lifetimes, principal types, access keys and token
//! verification.
//!
//! 256 cases per property by default; `PROPTEST_CASES=N` runs N (see `scripts/fuzz.sh`).

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use callsign_core::token::{
    Algorithm, SigningKey, TokenIssuer, TokenVerifier, VerifyError, token_in_force,
};
use callsign_core::{
    AccessKey, CustomId, CustomIdError, ExpiresIn, ExpiresInError, IdError, IdentityId,
    PrincipalType, ResourceId, Scope, ScopeError, Scopes, parse_guid,
};
use proptest::prelude::*;
use time::OffsetDateTime;
use uuid::Uuid;

const PREFIXES: [&str; 4] = ["8:acs:", "8:gcch-acs:", "8:dod-acs:", "8:spool:"];

fn guid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// A GUID written the canonical way, upper-cased, or in one of the forms that must be refused.
fn guid_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => guid().prop_map(|u| u.hyphenated().to_string()),
        2 => guid().prop_map(|u| u.hyphenated().to_string().to_ascii_uppercase()),
        1 => guid().prop_map(|u| u.simple().to_string()),
        1 => guid().prop_map(|u| u.braced().to_string()),
        1 => guid().prop_map(|u| u.urn().to_string()),
        1 => "[0-9a-fA-F-]{30,40}",
        1 => "[0-9a-fA-FgG_:{}é-]{36}",
        1 => any::<String>(),
    ]
}

/// Identity-id-shaped text: any prefix, GUID-ish parts, any number of separators.
fn identity_like() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("8:acs:".to_owned()),
            Just("8:ACS:".to_owned()),
            Just("8:gcch-acs:".to_owned()),
            Just("8:dod-acs:".to_owned()),
            Just("8:spool:".to_owned()),
            Just("4:".to_owned()),
            Just(String::new()),
            "[0-9a-z:-]{0,12}",
        ],
        guid_text(),
        prop_oneof![Just("_"), Just("__"), Just(""), Just(":"), Just("_:")],
        guid_text(),
        prop_oneof![Just(""), Just("_"), Just(":x"), Just(" "), Just("\0")],
    )
        .prop_map(|(p, a, sep, b, tail)| format!("{p}{a}{sep}{b}{tail}"))
}

/// Wire names of scopes in any case, plus near misses and arbitrary text.
fn scope_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(Scope::ALL.to_vec()).prop_flat_map(|s| {
            prop::collection::vec(any::<bool>(), s.as_str().len()).prop_map(move |up| {
                s.as_str()
                    .chars()
                    .zip(up)
                    .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                    .collect()
            })
        }),
        1 => "(chat|voip|pstn|chat\\.join|voip\\.join)[ .a-z]{0,3}",
        1 => any::<String>(),
        1 => "[ -~]{60,300}",
    ]
}

fn assert_id_is_canonical(raw: &str, id: &IdentityId) {
    let shown = id.to_string();
    assert_eq!(shown, raw.to_ascii_lowercase());
    assert!(shown.is_ascii());
    assert_eq!(shown.matches('_').count(), 1);
    assert_eq!(shown.len(), 79);
    assert!(shown.len() <= raw.len());
}

static KEY: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::generate(Algorithm::Es256).expect("key generation"));
static VERIFIER: LazyLock<TokenVerifier> =
    LazyLock::new(|| TokenVerifier::new([KEY.verifying_key()]));
static ISSUER: LazyLock<TokenIssuer> = LazyLock::new(|| {
    let key = SigningKey::from_pkcs8(Algorithm::Es256, KEY.pkcs8_der()).expect("same key");
    TokenIssuer::new(
        key,
        callsign_core::token::Issuer::Fixed("https://callsign.test".into()),
        "unitedstates",
    )
    .expect("issuer")
});

/// Token-shaped text: base64url segments of JSON headers naming our `kid` or not.
fn token_like() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[A-Za-z0-9_-]{0,120}",
        any::<String>(),
        (
            prop_oneof![Just("ES256"), Just("RS256"), Just("none"), Just("EdDSA")],
            prop_oneof![Just(KEY.kid().to_owned()), "[a-z0-9]{0,16}"],
        )
            .prop_map(|(alg, kid)| {
                URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#))
            }),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
    ];
    prop::collection::vec(segment, 0..5).prop_map(|s| s.join("."))
}

proptest! {
    #[test]
    fn identity_parse_of_any_text_never_panics(raw in any::<String>()) {
        if let Ok(id) = IdentityId::parse(&raw) {
            assert_id_is_canonical(&raw, &id);
        }
    }

    #[test]
    fn identity_parse_of_id_like_text_never_panics(raw in identity_like()) {
        match IdentityId::parse(&raw) {
            Ok(id) => {
                assert_id_is_canonical(&raw, &id);
                prop_assert_eq!(IdentityId::parse(&id.to_string()), Ok(id));
                prop_assert_eq!(format!("8:{}", id.skype_id()), id.to_string());
            }
            Err(IdError::OtherCloud) => {
                prop_assert!(PREFIXES[1..].iter().any(|p| raw.starts_with(p)));
            }
            Err(IdError::Malformed) => {}
        }
    }

    #[test]
    fn identity_ids_round_trip(resource in guid(), user in guid(), upper in any::<bool>()) {
        let raw = format!("8:acs:{}_{}", resource.hyphenated(), user.hyphenated());
        let sent = if upper {
            format!("8:acs:{}", raw[6..].to_ascii_uppercase())
        } else {
            raw.clone()
        };
        let id = IdentityId::parse(&sent);
        prop_assert_eq!(id.as_ref().map(ToString::to_string), Ok(raw.clone()));
        prop_assert_eq!(id.map(|i| i.resource().as_uuid()), Ok(resource));
        for other in &PREFIXES[1..] {
            let foreign = format!("{other}{}", &raw[6..]);
            prop_assert_eq!(IdentityId::parse(&foreign), Err(IdError::OtherCloud));
        }
    }

    #[test]
    fn resource_ids_and_guids_of_any_text_never_panic(raw in guid_text()) {
        let r = ResourceId::parse(&raw);
        let g = parse_guid(&raw);
        prop_assert_eq!(r.ok().map(|r| r.as_uuid()), g);
        if let Some(g) = g {
            prop_assert_eq!(raw.len(), 36);
            prop_assert_eq!(g.hyphenated().to_string(), raw.to_ascii_lowercase());
        }
    }

    #[test]
    fn resource_ids_round_trip(u in guid()) {
        let r = ResourceId::parse(&u.hyphenated().to_string());
        prop_assert_eq!(r.as_ref().map(ResourceId::as_uuid), Ok(u));
        prop_assert_eq!(r.map(|r| r.to_string()), Ok(u.hyphenated().to_string()));
        prop_assert_eq!(parse_guid(&u.hyphenated().to_string().to_ascii_uppercase()), Some(u));
    }

    #[test]
    fn custom_ids_follow_their_rules(
        s in prop_oneof![
            any::<String>(),
            "\\PC{0,300}",
            "[a-zé]{250,260}",
            "[ -~]{0,40}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}][ -~]{0,40}",
        ],
    ) {
        let chars = s.chars().count();
        let want = if s.is_empty() {
            Err(CustomIdError::Empty)
        } else if chars > CustomId::MAX_CHARS {
            Err(CustomIdError::TooLong)
        } else if s.chars().any(char::is_control) {
            Err(CustomIdError::Control)
        } else {
            Ok(s.as_str())
        };
        let got = CustomId::parse(&s);
        prop_assert_eq!(got.as_ref().map(CustomId::as_str).map_err(Clone::clone), want);
    }

    #[test]
    fn scopes_of_any_names_never_panic(
        names in prop::collection::vec(scope_name(), 0..12),
        allow_join in any::<bool>(),
    ) {
        match Scopes::parse(names.iter().map(String::as_str), allow_join) {
            Ok(scopes) => {
                let got: Vec<Scope> = scopes.iter().collect();
                prop_assert!(!got.is_empty() && got.len() <= Scope::ALL.len());
                prop_assert!(allow_join || got.iter().all(|s| !s.is_join_scope()));
                // First-requested order, no repeats.
                let mut want: Vec<Scope> = Vec::new();
                for n in &names {
                    let s = Scope::ALL.into_iter().find(|s| s.as_str().eq_ignore_ascii_case(n));
                    let s = s.expect("every accepted name is a scope");
                    if !want.contains(&s) {
                        want.push(s);
                    }
                }
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(Scopes::from_claim(&scopes.to_claim()), Ok(scopes));
            }
            Err(ScopeError::Empty) => prop_assert!(names.is_empty()),
            Err(ScopeError::Unknown(shown)) => {
                prop_assert!(shown.chars().count() <= 64);
                prop_assert!(shown.chars().all(|c| c.is_ascii_graphic() || c == ' '));
            }
        }
    }

    #[test]
    fn scope_claims_of_any_text_never_panic(claim in any::<String>()) {
        if let Ok(s) = Scopes::from_claim(&claim) {
            prop_assert!(s.to_claim().len() <= claim.len());
        }
    }

    #[test]
    fn lifetimes_are_accepted_exactly_within_bounds(
        minutes in prop_oneof![any::<i64>(), -10i64..2000],
        absent in any::<bool>(),
    ) {
        let inside = (ExpiresIn::MIN_MINUTES..=ExpiresIn::MAX_MINUTES).contains(&minutes);
        let got = ExpiresIn::from_minutes(minutes);
        if inside {
            prop_assert_eq!(got.as_ref().map(|e| i64::from(e.minutes())), Ok(minutes));
            prop_assert_eq!(got.as_ref().map(|e| e.duration().whole_minutes()), Ok(minutes));
        } else {
            prop_assert_eq!(got.clone(), Err(ExpiresInError(minutes)));
        }
        let optional = ExpiresIn::from_optional_minutes((!absent).then_some(minutes));
        prop_assert_eq!(optional, if absent { Ok(ExpiresIn::DEFAULT) } else { got });
    }

    #[test]
    fn access_keys_need_base64_of_at_least_32_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..96),
        junk in any::<String>(),
    ) {
        let text = STANDARD.encode(&bytes);
        let key = AccessKey::parse(&text);
        if bytes.len() >= 32 {
            prop_assert_eq!(key.as_ref().map(AccessKey::expose), Ok(text.as_str()));
        } else {
            prop_assert!(key.is_err());
        }
        if let Ok(k) = AccessKey::parse(&junk) {
            prop_assert_eq!(k.expose(), junk.as_str());
            prop_assert!(STANDARD.decode(&junk).is_ok_and(|b| b.len() >= 32));
        }
    }

    #[test]
    fn principal_types_are_exact_names(
        s in prop_oneof![
            Just("user".to_owned()),
            Just("resourceAccount".to_owned()),
            "(user|resourceAccount|User|ResourceAccount|group)[ a-z]{0,2}",
            any::<String>(),
        ],
    ) {
        match PrincipalType::parse(&s) {
            Some(t) => {
                prop_assert_eq!(t.to_string(), s.clone());
                prop_assert_eq!(t.as_str(), s.as_str());
            }
            None => prop_assert!(s != "user" && s != "resourceAccount"),
        }
    }

    #[test]
    fn token_verification_of_any_text_never_panics(token in token_like()) {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        // Nothing here was signed with our key: it can only fail.
        prop_assert!(VERIFIER.verify(&token, now).is_err());
    }

    #[test]
    fn issued_tokens_verify_and_every_one_character_change_is_refused(
        resource in guid(),
        user in guid(),
        epoch in any::<u64>(),
        at in 0usize..1000,
        with in "[A-Za-z0-9_.-]",
    ) {
        let id = IdentityId::parse(&format!("8:acs:{resource}_{user}")).expect("id");
        let scopes = Scopes::parse(["chat", "voip"], true).expect("scopes");
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let issued = ISSUER.issue(&id, &scopes, ExpiresIn::DEFAULT, epoch, now).expect("issue");
        let verified = VERIFIER.verify(&issued.token, now).expect("verifies");
        prop_assert_eq!(&verified.identity, &id);
        prop_assert_eq!(verified.epoch, epoch);
        prop_assert!(token_in_force(verified.epoch, epoch));
        let at = at % issued.token.len();
        let mut tampered = issued.token.clone();
        tampered.replace_range(at..=at, &with);
        if tampered != issued.token {
            let got = VERIFIER.verify(&tampered, now);
            prop_assert!(
                matches!(got, Err(VerifyError::Malformed | VerifyError::Signature)),
                "{got:?}"
            );
        }
    }
}
