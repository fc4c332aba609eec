//! Property tests of every request body the server deserialises and of api-version parsing.
//!
//! Each body type is read from arbitrary bytes, from JSON-shaped bytes and from arbitrary JSON
//! values; none may panic, and what is read never holds more text than the input had.
//!
//! 256 cases per property by default; `PROPTEST_CASES=N` runs N (see `scripts/fuzz.sh`).

use callsign_api::{
    ApiVersion, CreateIdentityRequest, IntrospectRequest, IssueTokenRequest, LegacyRevokeRequest,
    TeamsExtensionAssignmentRequest,
};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

/// Every field name of every request body, so generated objects hit real fields often.
const FIELDS: [&str; 9] = [
    "createTokenWithScopes",
    "expiresInMinutes",
    "customId",
    "externalId",
    "scopes",
    "tokensValidFrom",
    "principalType",
    "clientIds",
    "token",
];

/// The text a request body holds: every string and the number of list items.
trait Footprint {
    fn footprint(&self) -> usize;
}

fn strings(v: &Option<Vec<String>>) -> usize {
    v.as_ref()
        .map_or(0, |l| l.len() + l.iter().map(String::len).sum::<usize>())
}

fn string(v: &Option<String>) -> usize {
    v.as_ref().map_or(0, String::len)
}

impl Footprint for CreateIdentityRequest {
    fn footprint(&self) -> usize {
        strings(&self.create_token_with_scopes)
            + string(&self.custom_id)
            + string(&self.external_id)
    }
}

impl Footprint for IssueTokenRequest {
    fn footprint(&self) -> usize {
        strings(&self.scopes)
    }
}

impl Footprint for LegacyRevokeRequest {
    fn footprint(&self) -> usize {
        string(&self.tokens_valid_from)
    }
}

impl Footprint for IntrospectRequest {
    fn footprint(&self) -> usize {
        self.token.len()
    }
}

impl Footprint for TeamsExtensionAssignmentRequest {
    fn footprint(&self) -> usize {
        string(&self.principal_type) + strings(&self.client_ids)
    }
}

/// Reads `bytes` as `T`: never panics, and a body read holds no more than its bytes (a JSON
/// string is at least as long as its decoded text; a list item takes at least one byte).
fn read<T: DeserializeOwned + Footprint>(bytes: &[u8]) -> Option<T> {
    let body = serde_json::from_slice::<T>(bytes).ok()?;
    assert!(
        body.footprint() <= bytes.len(),
        "{} bytes read as {} bytes of text",
        bytes.len(),
        body.footprint()
    );
    Some(body)
}

/// Reads `bytes` as every body type.
fn read_all(bytes: &[u8]) {
    read::<CreateIdentityRequest>(bytes);
    read::<IssueTokenRequest>(bytes);
    read::<LegacyRevokeRequest>(bytes);
    read::<IntrospectRequest>(bytes);
    read::<TeamsExtensionAssignmentRequest>(bytes);
}

/// Reads `value` as `T` both directly and through its serialised bytes: the two must agree.
fn read_value<T: DeserializeOwned + Footprint + PartialEq + std::fmt::Debug>(value: &Value) {
    let bytes = serde_json::to_vec(value).expect("a Value always serialises");
    let direct = serde_json::from_value::<T>(value.clone()).ok();
    let through_bytes = read::<T>(&bytes);
    assert_eq!(direct, through_bytes, "{value}");
}

fn read_value_all(value: &Value) {
    read_value::<CreateIdentityRequest>(value);
    read_value::<IssueTokenRequest>(value);
    read_value::<LegacyRevokeRequest>(value);
    read_value::<IntrospectRequest>(value);
    read_value::<TeamsExtensionAssignmentRequest>(value);
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9.:_-]{0,12}",
        1 => any::<String>(),
        1 => Just("chat".to_owned()),
        1 => Just("user".to_owned()),
        1 => Just("2024-01-01T00:00:00Z".to_owned()),
    ]
}

fn json_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        (50i64..1500).prop_map(Number::from),
        // Finite values only (JSON has no NaN or infinity), drawn without rejection so that a
        // million cases never hit proptest's reject limit.
        (prop::num::f64::POSITIVE
            | prop::num::f64::NEGATIVE
            | prop::num::f64::NORMAL
            | prop::num::f64::SUBNORMAL
            | prop::num::f64::ZERO)
            .prop_map(|f| Number::from_f64(f).unwrap_or_else(|| Number::from(0))),
    ]
}

/// Arbitrary JSON values, up to 6 levels deep, with keys that are often real field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number().prop_map(Value::Number),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        let key = prop_oneof![
            3 => prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
            1 => json_string(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// JSON-ish token soup: mostly well-formed lexemes in any order, so the parser's error paths
/// (unclosed strings, bad escapes, duplicate keys, wrong types) are all reached.
fn json_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(":".to_owned()),
        Just(",".to_owned()),
        Just(" ".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("\"".to_owned()),
        Just("\\u".to_owned()),
        Just("\\ud800".to_owned()),
        prop::sample::select(FIELDS.to_vec()).prop_map(|f| format!("\"{f}\"")),
        "\"[a-z\\\\\"]{0,8}\"",
        "-?[0-9]{1,25}",
        prop::sample::select(vec![
            "1.5", "-0.0", "6e1", "1e400", "60.", ".5", "0x10", "1E-7"
        ])
        .prop_map(str::to_owned),
        any::<u8>().prop_map(|b| char::from(b).to_string()),
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat().into_bytes())
}

/// A valid body of each type, to check that what is written reads back the same.
fn scopes() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(prop::collection::vec(any::<String>(), 0..6))
}

fn create_request() -> impl Strategy<Value = CreateIdentityRequest> {
    (
        scopes(),
        prop::option::of(any::<i64>()),
        prop::option::of(any::<String>()),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(s, e, c, x)| CreateIdentityRequest {
            create_token_with_scopes: s,
            expires_in_minutes: e,
            custom_id: c,
            external_id: x,
        })
}

fn round_trips<T: Serialize + DeserializeOwned + Footprint + PartialEq + std::fmt::Debug>(
    body: &T,
) {
    let bytes = serde_json::to_vec(body).expect("serialises");
    assert_eq!(read::<T>(&bytes).as_ref(), Some(body));
}

/// Text that is an api-version, almost one, or nothing like one.
fn version_like() -> impl Strategy<Value = String> {
    let exact = prop::sample::select(ApiVersion::ALL.to_vec()).prop_map(|v| v.as_str().to_owned());
    prop_oneof![
        3 => exact.clone(),
        2 => (exact.clone(), "[ -~]{0,2}", "[ -~]{0,2}").prop_map(|(v, a, b)| format!("{a}{v}{b}")),
        1 => exact.clone().prop_map(|v| v.to_ascii_uppercase()),
        1 => (exact, any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let mut v = v.into_bytes();
            let at = i.index(v.len());
            v.remove(at);
            String::from_utf8(v).expect("ASCII")
        }),
        1 => "20[0-9]{2}-[0-9]{2}-[0-9]{2}(-preview[0-9]?)?",
        1 => any::<String>(),
    ]
}

proptest! {
    #[test]
    fn bodies_of_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        read_all(&bytes);
    }

    #[test]
    fn bodies_of_json_like_bytes_never_panic(bytes in json_like_bytes()) {
        read_all(&bytes);
    }

    #[test]
    fn bodies_of_arbitrary_json_values_never_panic(value in json_value()) {
        read_value_all(&value);
    }

    #[test]
    fn bodies_of_objects_with_real_fields_never_panic(
        fields in prop::collection::vec(
            (prop::sample::select(FIELDS.to_vec()), json_value()),
            0..4,
        ),
    ) {
        let object = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>();
        read_value_all(&Value::Object(object));
    }

    #[test]
    fn deeply_nested_bodies_are_refused_without_overflowing_the_stack(
        depth in prop_oneof![8 => 0usize..300, 1 => 0usize..20_000],
        open in prop_oneof![Just("["), Just("{\"scopes\":"), Just("{\"a\":[")],
        close in any::<bool>(),
    ) {
        let mut body = open.repeat(depth);
        if close {
            body.push_str("null");
            for _ in 0..depth {
                body.push_str(match open {
                    "[" => "]",
                    "{\"scopes\":" => "}",
                    _ => "]}",
                });
            }
        }
        read_all(body.as_bytes());
    }

    #[test]
    fn long_bodies_never_panic(
        field in prop::sample::select(FIELDS.to_vec()),
        len in prop_oneof![16 => 0usize..2048, 1 => 0usize..65_536],
        fill in "[ -~]",
    ) {
        let text = fill.repeat(len).replace(['"', '\\'], "a");
        let list: Vec<&str> = vec!["a"; len / 4];
        for body in [
            format!(r#"{{"{field}": "{text}"}}"#),
            serde_json::json!({ field: list }).to_string(),
        ] {
            read_all(body.as_bytes());
        }
    }

    #[test]
    fn valid_bodies_round_trip(
        create in create_request(),
        issue in (scopes(), prop::option::of(any::<i64>())),
        revoke in prop::option::of(any::<String>()),
        token in any::<String>(),
        assignment in (prop::option::of(any::<String>()), scopes()),
    ) {
        round_trips(&create);
        round_trips(&IssueTokenRequest { scopes: issue.0, expires_in_minutes: issue.1 });
        round_trips(&LegacyRevokeRequest { tokens_valid_from: revoke });
        round_trips(&IntrospectRequest { token });
        round_trips(&TeamsExtensionAssignmentRequest {
            principal_type: assignment.0,
            client_ids: assignment.1,
        });
    }

    #[test]
    fn api_version_parse_accepts_exactly_the_listed_values(s in version_like()) {
        let listed = ApiVersion::ALL.into_iter().find(|v| v.as_str() == s);
        prop_assert_eq!(ApiVersion::parse(&s), listed);
        prop_assert_eq!(s.parse::<ApiVersion>().ok(), listed);
        if let Some(v) = listed {
            prop_assert_eq!(v.to_string(), s);
        }
    }
}

#[test]
fn every_listed_api_version_parses_and_nothing_else_of_its_shape() {
    for v in ApiVersion::ALL {
        assert_eq!(ApiVersion::parse(v.as_str()), Some(v));
        assert_eq!(ApiVersion::parse(&format!("{v} ")), None);
        assert_eq!(ApiVersion::parse(&v.as_str().to_ascii_uppercase()), {
            // Only the all-digit versions have no letters to change case.
            (v.as_str() == v.as_str().to_ascii_uppercase()).then_some(v)
        });
    }
}
