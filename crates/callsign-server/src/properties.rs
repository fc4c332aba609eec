//! Property tests of the crate-private parsers every request meets before it is authenticated:
//! the route parser with its percent-decoding, the api-version query parser, the JSON body
//! reader and request authentication.
//!
//! 256 cases per property by default; `PROPTEST_CASES=N` runs N (see `scripts/fuzz.sh`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, Request};
use callsign_api::{
    CreateIdentityRequest, IssueTokenRequest, LegacyRevokeRequest, TeamsExtensionAssignmentRequest,
};
use callsign_core::ResourceId;
use callsign_hmac::{AccessKeyMac, content_hash, format_date, sign_request};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;

use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::http::{Route, parse_json};
use crate::resources::{ResourceKeys, Routing};
use crate::version::{self, ApiVersion};
use callsign_store::KeySlot;

/// No error message the parsers build may be longer than this, whatever the input.
const MAX_MESSAGE: usize = 512;

/// The path segments the router knows, and the pieces that trip decoders.
const WORDS: [&str; 17] = [
    "identities",
    ":issueAccessToken",
    ":revokeAccessTokens",
    "token",
    "health",
    ".well-known",
    "jwks.json",
    "teamsUser",
    ":exchangeAccessToken",
    "access",
    "teamsExtension",
    "tenants",
    "assignments",
    "tokens",
    ":introspect",
    "8:acs:2b236b8e-e9b7-4be0-8757-b43061a56d37_00000021-c6b7-24db-7137-8e3a0d0064e1",
    "c70d068c-2f32-484d-9455-73070cd5aadd",
];

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        Just(Method::TRACE),
        Just(Method::CONNECT),
        "[A-Z]{1,12}".prop_map(|m| Method::from_bytes(m.as_bytes()).expect("a token")),
    ]
}

/// One path segment: a route word, percent escapes valid and not, or text of any length.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(WORDS.to_vec()).prop_map(str::to_owned),
        2 => "%[0-9A-Fa-f]{2}",
        1 => Just("%FF".to_owned()),
        1 => Just("%C3%A9".to_owned()),
        1 => Just("%E2%82".to_owned()),
        1 => Just("%ED%A0%80".to_owned()),
        1 => Just("%".to_owned()),
        1 => Just("%G1".to_owned()),
        1 => Just("%2F".to_owned()),
        1 => Just("%00".to_owned()),
        2 => "[a-zA-Z0-9%:._~-]{0,16}",
        1 => ("[a-zA-Z0-9%:._~-]{1,3}", 400usize..2000).prop_map(|(s, n)| s.repeat(n)),
        1 => "(%[0-9A-F]{2}){1,64}",
        1 => any::<String>(),
        1 => Just(String::new()),
    ]
}

/// Paths of 0 to 10 segments, with any number of slashes between and around them.
fn path() -> impl Strategy<Value = String> {
    (
        "/{0,3}",
        prop::collection::vec((segment(), "/{1,3}"), 0..10),
        prop_oneof![3 => "/{0,2}", 1 => "/{0,200}"],
    )
        .prop_map(|(lead, segs, trail)| {
            let mut p = lead;
            for (i, (s, slashes)) in segs.iter().enumerate() {
                if i > 0 {
                    p.push_str(slashes);
                }
                p.push_str(s);
            }
            p.push_str(&trail);
            p
        })
}

/// The text a route holds (its decoded ids).
fn ids(route: &Route) -> Vec<&str> {
    match route {
        Route::Get(id)
        | Route::Delete(id)
        | Route::LegacyRevoke(id)
        | Route::LegacyIssue(id)
        | Route::Issue(id)
        | Route::Revoke(id) => vec![id],
        Route::AssignmentGet(t, o) | Route::AssignmentPut(t, o) | Route::AssignmentDelete(t, o) => {
            vec![t, o]
        }
        _ => vec![],
    }
}

/// The method each route is reached with.
fn method_of(route: &Route) -> Method {
    match route {
        Route::Health | Route::Jwks | Route::List | Route::Get(_) | Route::AssignmentGet(..) => {
            Method::GET
        }
        Route::Delete(_) | Route::AssignmentDelete(..) => Method::DELETE,
        Route::LegacyRevoke(_) => Method::PATCH,
        Route::AssignmentPut(..) => Method::PUT,
        _ => Method::POST,
    }
}

/// Errors of the parsers are bounded, printable and short.
fn assert_error_is_bounded(e: &ApiError) {
    let message = e.to_string();
    assert!(message.len() <= MAX_MESSAGE, "{} bytes", message.len());
    assert!(!message.chars().any(char::is_control), "{message:?}");
}

fn check_route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let got = Route::parse(method, path);
    match &got {
        Ok(route) => {
            // Decoding only shrinks: memory is bounded by the path.
            let held: usize = ids(route).iter().map(|s| s.len()).sum();
            assert!(held <= path.len(), "{held} > {}", path.len());
            assert_eq!(*method, method_of(route), "{path:?} -> {route:?}");
        }
        Err(e) => assert_error_is_bounded(e),
    }
    got
}

/// An id as a client may put it in a path: percent-encoded, and raw where that is unambiguous.
fn encodings(id: &str) -> Vec<String> {
    let mut out = vec![utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()];
    if !id.contains(['/', '%']) {
        out.push(id.to_owned());
    }
    out
}

/// Query strings of `&`-joined pairs, often naming api-version.
fn query() -> impl Strategy<Value = Option<String>> {
    let value = prop_oneof![
        3 => prop::sample::select(ApiVersion::ALL.to_vec()).prop_map(|v| v.as_str().to_owned()),
        1 => "20[0-9]{2}-[0-9]{2}-[0-9]{2}(-preview[0-9]?)?",
        1 => "[%+0-9A-Fa-f-]{0,24}",
        1 => any::<String>(),
        1 => "[ -~]{40,2000}",
    ];
    let key = prop_oneof![
        3 => Just("api-version=".to_owned()),
        1 => Just("API-VERSION=".to_owned()),
        1 => Just("api-version".to_owned()),
        1 => Just("x=".to_owned()),
        1 => Just(String::new()),
        1 => "[a-z-]{0,12}=?",
    ];
    prop::option::of(prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}{v}"))
            .collect::<Vec<_>>()
            .join("&")
    }))
}

/// JSON-ish token soup, as the bodies of the api crate's properties.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(":".to_owned()),
        Just(",".to_owned()),
        Just(" ".to_owned()),
        Just("null".to_owned()),
        Just("\u{feff}".to_owned()),
        prop::sample::select(vec![
            "scopes",
            "createTokenWithScopes",
            "expiresInMinutes",
            "customId",
            "externalId",
            "tokensValidFrom",
            "principalType",
            "clientIds",
        ])
        .prop_map(|f| format!("\"{f}\"")),
        "\"[A-Z]{12}\"",
        "-?[0-9]{1,22}(\\.[0-9]{0,3})?",
        any::<u8>().prop_map(|b| char::from(b).to_string()),
    ];
    prop_oneof![
        4 => prop::collection::vec(token, 0..48).prop_map(|t| t.concat().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => "[ \t\r\n]{0,8}".prop_map(String::into_bytes),
    ]
}

/// `parse_json` of `body` as `T`: no panic, whitespace reads as the default, a success is what
/// serde reads, an error is short and never echoes the body.
fn check_json<T>(body: &[u8])
where
    T: serde::de::DeserializeOwned + Default + PartialEq + std::fmt::Debug,
{
    let unmarked = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match parse_json::<T>(body) {
        Ok(t) if unmarked.iter().all(u8::is_ascii_whitespace) => assert_eq!(t, T::default()),
        Ok(t) => {
            let serde =
                serde_json::from_slice::<T>(unmarked).or_else(|_| serde_json::from_slice(body));
            assert_eq!(serde.ok(), Some(t));
        }
        Err(e) => {
            assert_error_is_bounded(&e);
            let message = e.to_string();
            // Twelve upper-case letters are only ever in the body, never in a message.
            let upper_run = message
                .as_bytes()
                .windows(12)
                .any(|w| w.iter().all(u8::is_ascii_uppercase));
            assert!(!upper_run, "{message}");
        }
    }
}

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_800_000_000;

/// An authenticator with a routing table of one resource whose primary key is `KEY`.
struct Auth(Authenticator, Routing);

impl Auth {
    fn authenticate(
        &self,
        parts: &Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Result<crate::auth::Authenticated, ApiError> {
        self.0.authenticate(parts, body, now, &self.1)
    }
}

fn authenticator() -> Auth {
    let routing = Routing::shared(vec![ResourceKeys {
        id: ResourceId::new_random(),
        keys: vec![
            (KeySlot::Primary, AccessKeyMac::from_bytes(KEY)),
            (
                KeySlot::Secondary,
                AccessKeyMac::from_bytes(b"the secondary key"),
            ),
        ],
    }]);
    Auth(
        Authenticator::new(
            vec!["public.example:8443".into()],
            true,
            Duration::from_secs(900),
        ),
        routing,
    )
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

/// A request head; `None` where the generated parts do not make a valid `http` request, which
/// the HTTP layer would have refused before any parser ran.
fn head(method: &Method, target: &str, headers: &[(String, Vec<u8>)]) -> Option<Parts> {
    let mut b = Request::builder().method(method.clone()).uri(target);
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        b = b.header(name, value);
    }
    b.body(()).ok().map(|r| r.into_parts().0)
}

/// Header values: SDK-shaped, near misses, long, and bytes that are not UTF-8.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => "HMAC-SHA256 SignedHeaders=[a-z;-]{0,60}&Signature=[A-Za-z0-9+/=]{0,60}"
            .prop_map(String::into_bytes),
        1 => (
            "(HMAC-SHA256|hmac-sha256|Bearer) ",
            ";[a-z-]{1,12}",
            0usize..200,
            "Signature=[A-Za-z0-9+/]{43}=",
        )
            .prop_map(|(scheme, extra, n, sig)| {
                let names = format!("x-ms-date;host;x-ms-content-sha256{}", extra.repeat(n));
                format!("{scheme}SignedHeaders={names}&{sig}").into_bytes()
            }),
        1 => Just(format_date(now()).into_bytes()),
        1 => Just(content_hash(b"").into_bytes()),
        1 => "[a-z0-9.:\\[\\]-]{0,40}".prop_map(String::into_bytes),
        1 => "[ -~]{0,300}".prop_map(String::into_bytes),
        1 => ("[ -~]{1,2}", 2000usize..4000).prop_map(|(s, n)| s.repeat(n).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "authorization",
            "x-ms-date",
            "date",
            "host",
            "x-ms-content-sha256",
        ])
        .prop_map(str::to_owned),
        "[a-z-]{1,12}",
    ]
}

proptest! {
    #[test]
    fn routes_of_any_path_never_panic(method in method(), path in path()) {
        let _ = check_route(&method, &path);
    }

    #[test]
    fn routes_of_any_text_never_panic(method in method(), path in any::<String>()) {
        let _ = check_route(&method, &path);
    }

    #[test]
    fn routes_of_many_slashes_and_long_segments_never_panic(
        method in method(),
        slashes in prop_oneof![8 => 0usize..200, 1 => 0usize..20_000],
        long in prop_oneof![Just("a"), Just("%41"), Just("%FF"), Just("%")],
        repeat in prop_oneof![8 => 0usize..200, 1 => 0usize..20_000],
    ) {
        let deep = "/".repeat(slashes);
        let wide = format!("/identities/{}/:issueAccessToken", long.repeat(repeat));
        let many = format!("/identities{}", "/x".repeat(slashes.min(5000)));
        for p in [&deep, &wide, &many] {
            let _ = check_route(&method, p);
        }
    }

    #[test]
    fn ids_round_trip_through_the_path_encoded_or_raw(
        id in "\\PC{1,80}",
        other in "[0-9a-f-]{1,40}",
        trailing_slash in any::<bool>(),
    ) {
        let slash = if trailing_slash { "/" } else { "" };
        for enc in encodings(&id) {
            let one = format!("/identities/{enc}{slash}");
            prop_assert_eq!(check_route(&Method::GET, &one).ok(), Some(Route::Get(id.clone())));
            prop_assert_eq!(
                check_route(&Method::DELETE, &one).ok(),
                Some(Route::Delete(id.clone()))
            );
            prop_assert_eq!(
                check_route(&Method::PATCH, &one).ok(),
                Some(Route::LegacyRevoke(id.clone()))
            );
            for (verb, want) in [
                (":issueAccessToken", Route::Issue(id.clone())),
                (":revokeAccessTokens", Route::Revoke(id.clone())),
                ("token", Route::LegacyIssue(id.clone())),
            ] {
                let p = format!("/identities/{enc}/{verb}{slash}");
                prop_assert_eq!(check_route(&Method::POST, &p).ok(), Some(want));
                prop_assert!(matches!(
                    Route::parse(&Method::GET, &p),
                    Err(ApiError::MethodNotAllowed(_))
                ));
            }
            let a = format!("/access/teamsExtension/tenants/{enc}/assignments/{other}{slash}");
            prop_assert_eq!(
                check_route(&Method::PUT, &a).ok(),
                Some(Route::AssignmentPut(id.clone(), other.clone()))
            );
            let b = format!("/access/teamsExtension/tenants/{other}/assignments/{enc}{slash}");
            prop_assert_eq!(
                check_route(&Method::GET, &b).ok(),
                Some(Route::AssignmentGet(other.clone(), id.clone()))
            );
        }
    }

    #[test]
    fn ids_that_are_not_utf8_are_refused(
        before in "[a-z0-9]{0,8}",
        bad in prop::sample::select(vec!["%FF", "%C3", "%E2%82", "%ED%A0%80", "%80"]),
        after in "[a-z0-9]{0,8}",
    ) {
        let p = format!("/identities/{before}{bad}{after}/:issueAccessToken");
        let got = check_route(&Method::POST, &p);
        prop_assert!(matches!(got, Err(ApiError::Validation { .. })), "{:?}", got);
    }

    #[test]
    fn api_version_of_any_query_never_panics(q in query()) {
        let first = q
            .iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("api-version="));
        match version::from_query(q.as_deref()) {
            Ok(v) => {
                prop_assert!(first.is_some());
                if let Some(raw) = first.filter(|r| !r.contains(['%', '+'])) {
                    prop_assert_eq!(raw, v.as_str());
                }
            }
            Err(e) => {
                assert_error_is_bounded(&e);
                match first {
                    None => prop_assert!(matches!(e, ApiError::MissingApiVersion), "{:?}", e),
                    Some(raw) => {
                        prop_assert!(matches!(e, ApiError::UnsupportedApiVersion(_)), "{:?}", e);
                        prop_assert!(ApiVersion::parse(raw).is_none());
                        prop_assert!(e.to_string().is_ascii());
                    }
                }
            }
        }
    }

    #[test]
    fn api_version_of_any_text_never_panics(q in any::<String>()) {
        if let Err(e) = version::from_query(Some(&q)) {
            assert_error_is_bounded(&e);
        }
    }

    #[test]
    fn json_bodies_never_panic(bytes in body()) {
        check_json::<CreateIdentityRequest>(&bytes);
        check_json::<IssueTokenRequest>(&bytes);
        check_json::<LegacyRevokeRequest>(&bytes);
        check_json::<TeamsExtensionAssignmentRequest>(&bytes);
    }

    #[test]
    fn long_and_deep_json_bodies_never_panic(
        len in prop_oneof![16 => 0usize..2048, 1 => 0usize..65_536],
        depth in prop_oneof![8 => 0usize..300, 1 => 0usize..20_000],
    ) {
        let long = format!(r#"{{"scopes": ["{}"]}}"#, "A".repeat(len));
        let deep = format!("{{\"scopes\":{}", "[".repeat(depth));
        for bytes in [long.as_bytes(), deep.as_bytes()] {
            check_json::<CreateIdentityRequest>(bytes);
            check_json::<IssueTokenRequest>(bytes);
        }
    }

    #[test]
    fn authentication_of_any_head_never_panics(
        method in method(),
        target in "/[a-zA-Z0-9%:._~/?&=-]{0,120}",
        headers in prop::collection::vec((header_name(), header_value()), 0..8),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let Some(parts) = head(&method, &target, &headers) else {
            return Ok(());
        };
        match authenticator().authenticate(&parts, &body, now()) {
            // A random head carries no valid signature.
            Ok(_) => prop_assert!(false, "{parts:?} authenticated"),
            Err(e) => {
                prop_assert!(matches!(e, ApiError::Denied(_)), "{:?}", e);
                assert_error_is_bounded(&e);
            }
        }
    }

    #[test]
    fn sdk_signed_requests_authenticate_and_altered_ones_do_not(
        method in prop::sample::select(vec![
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ]),
        target in "/[a-zA-Z0-9%:._~/-]{0,80}(\\?[a-z0-9=&-]{0,40})?",
        host in "[a-z0-9.-]{1,30}(:[0-9]{1,5})?",
        body in prop::collection::vec(any::<u8>(), 0..256),
        skew in -800i64..800,
        flip in any::<prop::sample::Index>(),
    ) {
        let signed_at = UNIX_EPOCH + Duration::from_secs(NOW.saturating_add_signed(skew));
        let key = AccessKeyMac::from_bytes(KEY);
        let h = sign_request(&key, method.as_str(), &target, &host, &body, signed_at);
        let headers = vec![
            ("host".to_owned(), host.into_bytes()),
            ("x-ms-date".to_owned(), h.date.into_bytes()),
            ("x-ms-content-sha256".to_owned(), h.content_hash.into_bytes()),
            ("authorization".to_owned(), h.authorization.into_bytes()),
        ];
        let Some(parts) = head(&method, &target, &headers) else {
            return Ok(());
        };
        let a = authenticator();
        let got = a.authenticate(&parts, &body, now());
        prop_assert!(got.is_ok(), "{:?}", got);
        let mut altered = body.clone();
        if altered.is_empty() {
            altered.push(0);
        } else {
            let at = flip.index(altered.len());
            altered[at] ^= 1;
        }
        prop_assert!(matches!(a.authenticate(&parts, &altered, now()), Err(ApiError::Denied(_))));
    }
}

/// The work of authenticating an unsigned request must not grow with the square of its head:
/// here a 64 KiB header named 4000 times in `SignedHeaders` (about 16 KiB) would make a string
/// to sign of 256 MiB for every host and path candidate.
#[test]
fn authentication_work_is_bounded_by_the_head() {
    let big = "a".repeat(64 * 1024);
    let names = ";x-big".repeat(4000);
    let date = format_date(now());
    let headers =
        vec![
        ("host".to_owned(), b"h".to_vec()),
        ("x-ms-date".to_owned(), date.into_bytes()),
        ("x-ms-content-sha256".to_owned(), content_hash(b"").into_bytes()),
        ("x-big".to_owned(), big.into_bytes()),
        (
            "authorization".to_owned(),
            format!(
                "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256{names}&Signature={}",
                "A".repeat(43) + "="
            )
            .into_bytes(),
        ),
    ];
    let parts = head(
        &Method::POST,
        "/identities?api-version=2023-10-01",
        &headers,
    )
    .expect("a valid request");
    let started = Instant::now();
    let got = authenticator().authenticate(&parts, b"", now());
    let took = started.elapsed();
    assert!(matches!(got, Err(ApiError::Denied(_))), "{got:?}");
    assert!(
        took < Duration::from_secs(1),
        "authenticating a 80 KiB head took {took:?}"
    );
}
