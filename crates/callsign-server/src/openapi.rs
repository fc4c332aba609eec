//! The OpenAPI 3.1 document of everything callsign serves, served at `GET /openapi.json`.
//!
//! The document is written by hand and checked in as `crates/callsign-server/openapi.json`; it is
//! compiled into the binary and served as it is. The tests below check it against the code: every
//! [`Route`](crate::http::Route) is documented under its method and path and every documented
//! operation is a route (other methods of a documented path are 405 with the documented `Allow`),
//! the api-version enum is `ApiVersion::ALL` and each operation lists exactly the versions that
//! offer it, security follows the pipeline (public routes, exchanges, the rest), error statuses
//! and codes follow `ApiError`, and the schemas of the wire types have the fields serde writes.
//! `compat/python/openapi/` validates the document with an independent validator and the
//! responses of a running server against it.

/// The OpenAPI document, as checked in.
pub const OPENAPI_DOCUMENT: &str = include_str!("../openapi.json");

/// `Cache-Control` of `GET /openapi.json`: the document changes only with the binary.
pub(crate) const OPENAPI_CACHE_CONTROL: &str = "public, max-age=300";

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use axum::http::{Method, StatusCode};
    use callsign_api::{
        AccessToken, ApiVersion, CreateIdentityRequest, CreateIdentityResponse, EntraAssignment,
        EntraAssignmentPage, EntraAssignmentRequest, ErrorCode, ErrorResponse, Identity,
        IdentityPage, InactiveReason, IntrospectRequest, IntrospectResponse, IssueTokenRequest,
        Jwk, Jwks, LegacyAccessToken, LegacyIdentity, LegacyRevokeRequest, Scope,
        TeamsExtensionAssignment, TeamsExtensionAssignmentRequest,
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::error::ApiError;
    use crate::http::{Route, SAMPLE_ID, SAMPLE_OBJECT, SAMPLE_TENANT};
    use crate::oidc::Refusal;

    /// The methods an OpenAPI path item may describe.
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        serde_json::from_str(OPENAPI_DOCUMENT).expect("the document is JSON")
    }

    /// Every documented operation by (method, path template).
    fn operations(doc: &Value) -> BTreeMap<(Method, String), Value> {
        let paths = doc["paths"].as_object().expect("paths");
        let mut found = BTreeMap::new();
        for (path, item) in paths {
            let item = item.as_object().expect("a path item");
            for (key, op) in item {
                if METHODS.contains(&key.as_str()) {
                    let method =
                        Method::from_bytes(key.to_ascii_uppercase().as_bytes()).expect("a method");
                    found.insert((method, path.clone()), op.clone());
                }
            }
        }
        found
    }

    /// The value a `$ref` names (or the value itself).
    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => doc
                .pointer(r.strip_prefix('#').expect("a local reference"))
                .unwrap_or_else(|| panic!("{r} resolves")),
            None => v,
        }
    }

    /// A path template with the samples of `Route::every` in it; the id percent-encoded or raw.
    fn concrete(template: &str, encoded: bool) -> String {
        let id = if encoded {
            SAMPLE_ID.replace(':', "%3A")
        } else {
            SAMPLE_ID.to_owned()
        };
        template
            .replace("{id}", &id)
            .replace("{tenantId}", SAMPLE_TENANT)
            .replace("{objectId}", SAMPLE_OBJECT)
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("an array: {v}"))
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    }

    #[test]
    fn the_document_is_openapi_3_1_of_this_release() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_a_route() {
        let doc = document();
        let documented: BTreeSet<(Method, String)> = operations(&doc).into_keys().collect();
        let routes = Route::every();
        let from_code: BTreeSet<(Method, String)> = routes
            .iter()
            .map(|r| {
                let (m, t) = r.template();
                (m, t.to_owned())
            })
            .collect();
        assert_eq!(from_code.len(), routes.len(), "two routes share a template");
        assert_eq!(
            documented, from_code,
            "documented operations (left) and routes (right) differ"
        );
        let ops = operations(&doc);
        for route in routes {
            let (method, template) = route.template();
            for encoded in [true, false] {
                let path = concrete(template, encoded);
                assert_eq!(
                    Route::parse(&method, &path).ok(),
                    Some(route.clone()),
                    "{method} {path}"
                );
                assert_eq!(
                    Route::parse(&method, &format!("{path}/")).ok(),
                    Some(route.clone()),
                    "{method} {path}/"
                );
            }
            let op = &ops[&(method.clone(), template.to_owned())];
            assert_eq!(op["operationId"], route.name(), "{method} {template}");
        }
    }

    #[test]
    fn other_methods_of_documented_paths_are_405_with_the_documented_allow() {
        let doc = document();
        let ops = operations(&doc);
        let paths = doc["paths"].as_object().expect("paths");
        assert!(!paths.is_empty());
        for template in paths.keys() {
            let allowed: BTreeSet<Method> = ops
                .keys()
                .filter(|(_, t)| t == template)
                .map(|(m, _)| m.clone())
                .collect();
            let path = concrete(template, true);
            for name in METHODS {
                let method =
                    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).expect("a method");
                if allowed.contains(&method) {
                    continue;
                }
                match Route::parse(&method, &path) {
                    Err(ApiError::MethodNotAllowed(allow)) => {
                        let allow: BTreeSet<Method> = allow
                            .split(", ")
                            .map(|m| Method::from_bytes(m.as_bytes()).expect("a method"))
                            .collect();
                        assert_eq!(allow, allowed, "Allow of {template}");
                    }
                    other => panic!("{method} {path}: {other:?}, not 405"),
                }
            }
        }
        // And a path the document does not have is not served.
        assert!(matches!(
            Route::parse(&Method::GET, "/openapi.yaml"),
            Err(ApiError::NotFound)
        ));
    }

    #[test]
    fn api_versions_are_every_served_version_and_each_operation_lists_those_offering_it() {
        let doc = document();
        let all: Vec<String> = ApiVersion::ALL
            .iter()
            .map(|v| v.as_str().to_owned())
            .collect();
        let parameter = &doc["components"]["parameters"]["ApiVersion"];
        assert_eq!(parameter["name"], "api-version");
        assert_eq!(parameter["in"], "query");
        assert_eq!(parameter["required"], true);
        assert_eq!(strings(&parameter["schema"]["enum"]), all);
        let ops = operations(&doc);
        let version_ref = json!({"$ref": "#/components/parameters/ApiVersion"});
        for route in Route::every() {
            let (method, template) = route.template();
            let op = &ops[&(method.clone(), template.to_owned())];
            let takes_version = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.contains(&version_ref));
            if route.is_public() {
                assert!(!takes_version, "{method} {template} takes no api-version");
                assert!(op.get("x-callsign-api-versions").is_none());
                continue;
            }
            assert!(takes_version, "{method} {template} takes the api-version");
            let offering: Vec<String> = ApiVersion::ALL
                .iter()
                .filter(|v| route.available_in(**v))
                .map(|v| v.as_str().to_owned())
                .collect();
            assert!(!offering.is_empty(), "{method} {template}");
            assert_eq!(
                strings(&op["x-callsign-api-versions"]),
                offering,
                "{method} {template}"
            );
            let description = op["description"].as_str().expect("a description");
            assert!(
                description.contains(&format!("Offered in api-version: {}.", offering.join(", "))),
                "{method} {template}: the description names the versions"
            );
        }
    }

    #[test]
    fn security_follows_the_pipeline() {
        let doc = document();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["hmac"]["type"], "apiKey");
        assert_eq!(schemes["hmac"]["in"], "header");
        assert_eq!(schemes["hmac"]["name"], "Authorization");
        assert_eq!(schemes["bearer"]["type"], "http");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        let ops = operations(&doc);
        for route in Route::every() {
            let (method, template) = route.template();
            let want = if route.is_public() {
                json!([])
            } else if route.is_exchange() {
                json!([{"bearer": []}])
            } else {
                json!([{"hmac": []}, {"bearer": []}])
            };
            assert_eq!(
                ops[&(method.clone(), template.to_owned())]["security"],
                want,
                "{method} {template}"
            );
        }
    }

    /// One of every `ApiError` variant.
    fn every_error() -> Vec<ApiError> {
        vec![
            ApiError::validation("m", "t"),
            ApiError::MissingApiVersion,
            ApiError::UnsupportedApiVersion("m".into()),
            ApiError::Denied("r"),
            ApiError::IdentityNotOwned,
            ApiError::VerifyOnly,
            ApiError::Forbidden("m"),
            ApiError::InvalidAccessToken,
            ApiError::TokenRefused(Refusal::Expired),
            ApiError::TokenRefused(Refusal::KeysUnavailable),
            ApiError::NotAssigned,
            ApiError::MissingRole("r".into()),
            ApiError::IdentityDeleted,
            ApiError::IdentityNotFound,
            ApiError::AssignmentNotFound,
            ApiError::NotFound,
            ApiError::MethodNotAllowed("GET"),
            ApiError::RequestTimeout,
            ApiError::PayloadTooLarge(1),
            ApiError::UriTooLong(1),
            ApiError::UnsupportedMediaType,
            ApiError::TooManyRequests { retry_after: 1 },
            ApiError::HeadersTooLarge {
                bytes: 1,
                headers: 1,
            },
            ApiError::CursorExpired,
            ApiError::TooManyWaiting,
            ApiError::Unavailable(anyhow::anyhow!("c")),
            ApiError::CannotWrite(anyhow::anyhow!("c")),
            ApiError::internal(anyhow::anyhow!("c")),
        ]
    }

    /// The codes the document allows with `status`.
    fn documented_codes(doc: &Value, status: u16) -> Vec<String> {
        let response = &doc["components"]["responses"][format!("Error{status}")];
        let schema = resolve(doc, &response["content"]["application/json"]["schema"]);
        assert_eq!(
            schema["allOf"][0]["$ref"],
            "#/components/schemas/ErrorResponse"
        );
        strings(&schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"])
    }

    #[test]
    fn error_statuses_and_codes_are_the_servers() {
        let doc = document();
        let mut by_status: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
        for e in every_error() {
            by_status
                .entry(e.status().as_u16())
                .or_default()
                .insert(e.code().as_str().to_owned());
        }
        let documented: BTreeMap<u16, BTreeSet<String>> = doc["components"]["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .filter_map(|k| k.strip_prefix("Error")?.parse::<u16>().ok())
            .map(|status| (status, documented_codes(&doc, status).into_iter().collect()))
            .collect();
        assert_eq!(
            documented, by_status,
            "documented (left) and ApiError (right)"
        );
        let every_code: BTreeSet<String> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        let served: BTreeSet<String> = by_status.values().flatten().cloned().collect();
        assert_eq!(
            served, every_code,
            "every ErrorCode is sent by some ApiError"
        );
        let enumerated: BTreeSet<String> =
            strings(&doc["components"]["schemas"]["ErrorCode"]["enum"])
                .into_iter()
                .collect();
        assert_eq!(enumerated, every_code);
        for status in [429, 503] {
            assert!(
                doc["components"]["responses"][format!("Error{status}")]["headers"]
                    .get("Retry-After")
                    .is_some()
            );
        }
        assert!(doc["components"]["responses"]["Error405"]["headers"]["Allow"].is_object());
    }

    #[test]
    fn every_operation_documents_the_failures_the_pipeline_can_answer() {
        let doc = document();
        let ops = operations(&doc);
        for route in Route::every() {
            let (method, template) = route.template();
            let responses = ops[&(method.clone(), template.to_owned())]["responses"]
                .as_object()
                .expect("responses")
                .clone();
            for (status, response) in &responses {
                let code: u16 = status.parse().expect("a status code, no ranges or default");
                let status_code = StatusCode::from_u16(code).expect("a status");
                if status_code.is_client_error() || status_code.is_server_error() {
                    assert_eq!(
                        response["$ref"],
                        format!("#/components/responses/Error{code}"),
                        "{method} {template} {code}"
                    );
                } else {
                    assert!(status_code.is_success(), "{method} {template} {code}");
                }
            }
            // Head limits and a panicking handler, before and after routing.
            let mut must = vec![414, 431, 500];
            if !route.is_public() {
                // api-version, authentication, verify-only key or role, body time and size,
                // content type, throttling, the store.
                must.extend([400, 401, 403, 408, 413, 415, 429, 503]);
            }
            for code in must {
                assert!(
                    responses.contains_key(&code.to_string()),
                    "{method} {template} documents {code}"
                );
            }
            assert_eq!(
                responses.contains_key("410"),
                route == Route::Revocations,
                "{method} {template}: only the feed answers 410"
            );
        }
    }

    /// The schema's property names are the keys serde writes for a value with every field set,
    /// and its required names (when `minimal` is given) the keys of a value with none set.
    fn fields_match(
        doc: &Value,
        schema: &str,
        full: &impl serde::Serialize,
        minimal: Option<&impl serde::Serialize>,
    ) {
        let s = &doc["components"]["schemas"][schema];
        let keys = |v: Value| -> BTreeSet<String> {
            v.as_object()
                .unwrap_or_else(|| panic!("{schema}: an object"))
                .keys()
                .cloned()
                .collect()
        };
        let properties: BTreeSet<String> = s["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema} has properties"))
            .keys()
            .cloned()
            .collect();
        let full = serde_json::to_value(full).expect("serializes");
        assert_eq!(properties, keys(full), "{schema}: properties");
        if let Some(minimal) = minimal {
            let required: BTreeSet<String> = s
                .get("required")
                .map(|r| strings(r).into_iter().collect())
                .unwrap_or_default();
            let minimal = serde_json::to_value(minimal).expect("serializes");
            assert_eq!(required, keys(minimal), "{schema}: required");
            assert_eq!(
                s["additionalProperties"], false,
                "{schema}: a closed answer"
            );
        }
    }

    #[test]
    fn wire_type_schemas_have_the_fields_serde_writes() {
        let doc = document();
        let s = |v: &str| v.to_owned();
        let identity = Identity {
            id: s("8:acs:x_y"),
            custom_id: Some(s("c")),
            external_id: Some(s("e")),
            last_token_issued_at: Some(s("t")),
        };
        let bare = Identity {
            id: s("8:acs:x_y"),
            custom_id: None,
            external_id: None,
            last_token_issued_at: None,
        };
        let token = AccessToken {
            token: s("t"),
            expires_on: s("e"),
        };
        fields_match(&doc, "Identity", &identity, Some(&bare));
        fields_match(
            &doc,
            "IdentityPage",
            &IdentityPage {
                value: vec![],
                next_link: Some(s("n")),
            },
            Some(&IdentityPage {
                value: vec![],
                next_link: None,
            }),
        );
        fields_match(&doc, "AccessToken", &token, Some(&token));
        let created = CreateIdentityResponse {
            identity: bare.clone(),
            access_token: Some(token.clone()),
        };
        fields_match(
            &doc,
            "CreateIdentityResponse",
            &created,
            Some(&CreateIdentityResponse {
                identity: bare.clone(),
                access_token: None,
            }),
        );
        // An exchange always answers a token.
        fields_match(&doc, "ExchangeResponse", &created, Some(&created));
        let legacy = LegacyIdentity { id: s("i") };
        fields_match(&doc, "LegacyIdentity", &legacy, Some(&legacy));
        let legacy = LegacyAccessToken {
            id: s("i"),
            token: s("t"),
            expires_on: s("e"),
        };
        fields_match(&doc, "LegacyAccessToken", &legacy, Some(&legacy));
        let teams = |client_ids| TeamsExtensionAssignment {
            object_id: s("o"),
            tenant_id: s("t"),
            principal_type: s("user"),
            client_ids,
        };
        fields_match(
            &doc,
            "TeamsExtensionAssignment",
            &teams(Some(vec![])),
            Some(&teams(None)),
        );
        let entra = |scopes| EntraAssignment {
            object_id: s("o"),
            tenant_id: s("t"),
            principal_type: s("user"),
            scopes,
        };
        fields_match(
            &doc,
            "EntraAssignment",
            &entra(Some(vec![])),
            Some(&entra(None)),
        );
        fields_match(
            &doc,
            "EntraAssignmentPage",
            &EntraAssignmentPage {
                value: vec![],
                next_link: Some(s("n")),
            },
            Some(&EntraAssignmentPage::default()),
        );
        fields_match(
            &doc,
            "IntrospectResponse",
            &IntrospectResponse {
                active: false,
                reason: Some(InactiveReason::Revoked),
                id: Some(s("i")),
                scopes: Some(vec![]),
                expires_on: Some(s("e")),
            },
            Some(&IntrospectResponse {
                active: true,
                reason: None,
                id: None,
                scopes: None,
                expires_on: None,
            }),
        );
        let keys = Jwks { keys: vec![] };
        fields_match(&doc, "Jwks", &keys, Some(&keys));
        let jwk = |part: Option<String>| Jwk {
            kty: s("EC"),
            kid: s("k"),
            alg: s("ES256"),
            use_: s("sig"),
            crv: part.clone(),
            x: part.clone(),
            y: part.clone(),
            n: part.clone(),
            e: part,
        };
        fields_match(&doc, "Jwk", &jwk(Some(s("p"))), Some(&jwk(None)));
        let error = ErrorResponse::with_target("c", "m", "t");
        fields_match(&doc, "ErrorResponse", &error, Some(&error));
        fields_match(
            &doc,
            "ErrorDetail",
            &error.error,
            Some(&ErrorResponse::new("c", "m").error),
        );
        // Requests: the fields read (unknown ones are ignored, so their schemas stay open).
        let none = None::<&()>;
        fields_match(
            &doc,
            "CreateIdentityRequest",
            &CreateIdentityRequest {
                create_token_with_scopes: Some(vec![]),
                expires_in_minutes: Some(60),
                custom_id: Some(s("c")),
                external_id: Some(s("e")),
            },
            none,
        );
        fields_match(
            &doc,
            "IssueTokenRequest",
            &IssueTokenRequest {
                scopes: Some(vec![]),
                expires_in_minutes: Some(60),
            },
            none,
        );
        fields_match(
            &doc,
            "LegacyRevokeRequest",
            &LegacyRevokeRequest {
                tokens_valid_from: Some(s("t")),
            },
            none,
        );
        fields_match(
            &doc,
            "TeamsExtensionAssignmentRequest",
            &TeamsExtensionAssignmentRequest {
                principal_type: Some(s("user")),
                client_ids: Some(vec![]),
            },
            none,
        );
        fields_match(
            &doc,
            "EntraAssignmentRequest",
            &EntraAssignmentRequest {
                tenant_id: Some(s("t")),
                principal_type: Some(s("user")),
                scopes: Some(vec![]),
            },
            none,
        );
        fields_match(
            &doc,
            "IntrospectRequest",
            &IntrospectRequest { token: s("t") },
            none,
        );
    }

    #[test]
    fn scopes_and_inactive_reasons_are_the_apis() {
        let doc = document();
        let scopes: Vec<String> = Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect();
        assert_eq!(
            strings(&doc["components"]["schemas"]["Scope"]["enum"]),
            scopes
        );
        let reasons: Vec<String> = [
            InactiveReason::Malformed,
            InactiveReason::Signature,
            InactiveReason::Expired,
            InactiveReason::Revoked,
            InactiveReason::IdentityNotFound,
            InactiveReason::ForeignResource,
        ]
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
        assert_eq!(
            strings(&doc["components"]["schemas"]["InactiveReason"]["enum"]),
            reasons
        );
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, v: &Value, seen: &mut usize) {
            match v {
                Value::Object(map) => {
                    if map.contains_key("$ref") {
                        let _ = resolve(doc, v);
                        *seen += 1;
                    }
                    map.values().for_each(|v| walk(doc, v, seen));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v, seen)),
                _ => {}
            }
        }
        let doc = document();
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > 100, "{seen} references");
    }
}
