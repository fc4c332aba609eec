"""The OpenAPI document (crates/callsign-server/openapi.json) against independent tools and the
real server.

* openapi-spec-validator checks the file, and the document the running server serves at
  `GET /openapi.json`, as OpenAPI 3.1 (and refuses a broken copy, so it does check).
* openapi-core validates every response of a black-box run against the document: status code
  (undocumented statuses fail), content type, required headers (`Retry-After`) and body schema
  (closed answer objects: an undocumented field fails). The run covers every documented
  operation, success and failure, on the api-versions that offer them; unknown paths and methods
  (404, 405) have no operation and are checked against the document's error schemas with
  jsonschema.

The last test requires that every documented operation was exercised.
"""

import base64
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid

import jsonschema
import openapi_spec_validator
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from callsign_testlib import FOREIGN_ID, assert_identity_id, new_guid
from conftest import REPO_ROOT, running_server

DOCUMENT = os.path.join(REPO_ROOT, "crates", "callsign-server", "openapi.json")

V = "api-version=2023-10-01"
LEGACY = "api-version=2020-07-20-preview2"
CUSTOM = "api-version=2025-03-02-preview"
EXTERNAL = "api-version=2025-04-01-preview"
TEAMS = "api-version=2025-06-30"
ENTRA = "api-version=2025-03-02-preview"

# Operations seen (operationId) and statuses seen, over the whole module.
SEEN_OPERATIONS = set()
SEEN_STATUSES = set()


def load_document():
    with open(DOCUMENT, "rb") as f:
        return f.read()


def quote_id(raw_id):
    return urllib.parse.quote(raw_id, safe="")


class Checker(object):
    """Sends requests to a server and validates each response against the document."""

    def __init__(self, doc, server):
        self.doc = doc
        self.server = server
        self.openapi = OpenAPI.from_dict(doc)
        self.templates = [
            (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)) + "$"), p)
            for p in doc["paths"]
        ]

    def operation_id(self, method, path):
        matches = [t for rx, t in self.templates if rx.match(path)]
        assert len(matches) <= 1, matches
        if not matches:
            return None
        return self.doc["paths"][matches[0]].get(method.lower(), {}).get("operationId")

    def validate(self, method, path_and_query, status, headers, raw):
        split = urllib.parse.urlsplit(path_and_query)
        args = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        content_type = headers.get("content-type")
        data = raw
        if content_type and content_type.startswith("text/event-stream"):
            data = raw.decode("utf-8")
        op = self.operation_id(method, split.path)
        SEEN_STATUSES.add(status)
        if op is None:
            # An unknown path (404) or method (405): no operation; the error schemas still hold.
            assert status in (404, 405), (method, path_and_query, status)
            schema = dict(self.doc)
            schema["$ref"] = "#/components/schemas/Error%d" % status
            jsonschema.Draft202012Validator(schema).validate(json.loads(raw))
            if status == 405:
                assert headers.get("allow"), headers
            return
        request = MockRequest(
            "%s://%s" % (self.server.scheme, self.server.host), method.lower(), split.path,
            args=args)
        response = MockResponse(data, status_code=status, headers=headers,
                                content_type=content_type or "application/json")
        self.openapi.validate_response(request, response)
        SEEN_OPERATIONS.add(op)

    def call(self, method, path_and_query, body=b"", expect=None, code=None, **kwargs):
        """Sends, validates, checks the status (and error code); returns (headers, parsed body)."""
        status, headers, raw = self.server.raw_request(method, path_and_query, body, **kwargs)
        self.validate(method, path_and_query, status, headers, raw)
        assert status == expect, (method, path_and_query, status, raw[:300])
        parsed = None
        if raw and headers.get("content-type", "").startswith("application/json"):
            parsed = json.loads(raw)
        if code is not None:
            assert parsed["error"]["code"] == code, parsed
        return headers, parsed


@pytest.fixture(scope="module")
def doc():
    return json.loads(load_document())


@pytest.fixture(scope="module")
def api(doc, server):
    return Checker(doc, server)


def test_the_document_is_valid_openapi_3_1(doc):
    assert doc["openapi"] == "3.1.0"
    openapi_spec_validator.validate(doc, cls=openapi_spec_validator.OpenAPIV31SpecValidator)
    # The validator does refuse a broken document.
    broken = json.loads(json.dumps(doc))
    broken["paths"]["/health"]["get"]["parameters"] = [{"name": "x", "in": "body"}]
    with pytest.raises(Exception):
        openapi_spec_validator.validate(broken)


def test_the_served_document_is_the_file_and_valid(api, server):
    status, headers, raw = server.raw_request("GET", "/openapi.json", sign=False)
    api.validate("GET", "/openapi.json", status, headers, raw)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert raw == load_document()
    openapi_spec_validator.validate(json.loads(raw))
    # Unauthenticated and unversioned: a signature and an api-version change nothing.
    api.call("GET", "/openapi.json?" + V, expect=200)


def test_health_readiness_and_keys(api):
    _, body = api.call("GET", "/health", sign=False, expect=200)
    assert body == {"status": "ok"}
    _, body = api.call("GET", "/ready", sign=False, expect=200)
    assert body == {"status": "ready"}
    headers, body = api.call("GET", "/.well-known/jwks.json", sign=False, expect=200)
    assert body["keys"] and headers["cache-control"].startswith("public")


def test_identities_and_tokens(api, server):
    _, created = api.call("POST", "/identities?" + V, {}, expect=201)
    raw_id = created["identity"]["id"]
    assert_identity_id(raw_id, server.resource_id)
    _, with_token = api.call(
        "POST", "/identities?" + V,
        {"createTokenWithScopes": ["chat", "voip"], "expiresInMinutes": 60}, expect=201)
    other = with_token["identity"]["id"]
    issue = "/identities/%s/:issueAccessToken?%s" % (quote_id(raw_id), V)
    _, token = api.call("POST", issue, {"scopes": ["chat.join", "voip.join"]}, expect=200)
    # The raw, unencoded id is the same path.
    api.call("POST", "/identities/%s/:issueAccessToken?%s" % (raw_id, V), {"scopes": ["chat"]},
             expect=200)
    _, info = api.call("POST", "/tokens/:introspect?" + V, {"token": token["token"]}, expect=200)
    assert info["active"] is True and info["id"] == raw_id
    api.call("POST", "/identities/%s/:revokeAccessTokens?%s" % (quote_id(raw_id), V),
             expect=204)
    _, info = api.call("POST", "/tokens/:introspect?" + V, {"token": token["token"]}, expect=200)
    assert info == dict(info, active=False, reason="revoked")
    _, info = api.call("POST", "/tokens/:introspect?" + V, {"token": "not.a.jwt"}, expect=200)
    assert info == {"active": False, "reason": "malformed"}
    api.call("POST", "/tokens/:introspect?" + V, {}, expect=400, code="ValidationError")
    # Validation errors name their field.
    _, err = api.call("POST", issue, {"scopes": []}, expect=400, code="ValidationError")
    assert err["error"]["target"] == "scopes"
    api.call("POST", issue, {"scopes": ["chat"], "expiresInMinutes": 59}, expect=400,
             code="ValidationError")
    api.call("POST", "/identities/%s/:issueAccessToken?api-version=2022-06-01" % quote_id(raw_id),
             {"scopes": ["chat.join"]}, expect=400, code="ValidationError")
    api.call("POST", issue, b"[1]", expect=400, code="ValidationError")
    # Another resource's identity.
    api.call("POST", "/identities/%s/:issueAccessToken?%s" % (quote_id(FOREIGN_ID), V),
             {"scopes": ["chat"]}, expect=401, code="IdentityNotOwned")
    # Delete; then the identity is gone.
    api.call("DELETE", "/identities/%s?%s" % (quote_id(other), V), expect=204)
    api.call("POST", "/identities/%s/:issueAccessToken?%s" % (quote_id(other), V),
             {"scopes": ["chat"]}, expect=404, code="IdentityNotFound")
    api.call("DELETE", "/identities/%s?%s" % (quote_id(raw_id), V), expect=204)


def test_the_2020_preview_paths(api):
    _, created = api.call("POST", "/identities?" + LEGACY, expect=200)
    raw_id = created["id"]
    path = "/identities/%s" % quote_id(raw_id)
    _, token = api.call("POST", "%s/token?%s" % (path, LEGACY), {"scopes": ["chat"]}, expect=200)
    assert token["id"] == raw_id
    api.call("PATCH", "%s?%s" % (path, LEGACY), {"tokensValidFrom": "2020-01-01T00:00:00Z"},
             expect=204)
    api.call("PATCH", "%s?%s" % (path, LEGACY), {"tokensValidFrom": "yesterday"}, expect=400,
             code="ValidationError")
    # Each path only in its own version.
    api.call("POST", "%s/token?%s" % (path, V), {"scopes": ["chat"]}, expect=400,
             code="UnsupportedApiVersion")
    api.call("POST", "%s/:revokeAccessTokens?%s" % (path, LEGACY), expect=400,
             code="UnsupportedApiVersion")
    api.call("DELETE", "%s?%s" % (path, LEGACY), expect=204)


def test_custom_ids_reads_and_the_listing(api):
    custom = "openapi-" + new_guid()
    _, first = api.call("POST", "/identities?" + CUSTOM, {"customId": custom}, expect=201)
    _, again = api.call("POST", "/identities?" + CUSTOM, {"customId": custom}, expect=201)
    assert again["identity"]["id"] == first["identity"]["id"]
    raw_id = first["identity"]["id"]
    api.call("POST", "/identities/%s/:issueAccessToken?%s" % (quote_id(raw_id), CUSTOM),
             {"scopes": ["chat"]}, expect=200)
    _, got = api.call("GET", "/identities/%s?%s" % (quote_id(raw_id), CUSTOM), expect=200)
    assert got["customId"] == custom and "lastTokenIssuedAt" in got
    external = "openapi-" + new_guid()
    api.call("POST", "/identities?" + EXTERNAL, {"externalId": external}, expect=201)
    _, found = api.call("POST", "/identities?" + EXTERNAL, {"externalId": external}, expect=200)
    assert found["identity"]["externalId"] == external
    # Pages of one, following nextLink (relative to the endpoint).
    _, page = api.call("GET", "/identities?%s&maxpagesize=1" % CUSTOM, expect=200)
    assert len(page["value"]) == 1 and page["nextLink"].startswith("identities?")
    api.call("GET", "/" + page["nextLink"], expect=200)
    api.call("GET", "/identities?%s&customIdPrefix=openapi-" % CUSTOM, expect=200)
    api.call("GET", "/identities?%s&maxpagesize=0" % CUSTOM, expect=400, code="ValidationError")
    api.call("GET", "/identities?%s&continuationToken=bogus" % CUSTOM, expect=400,
             code="ValidationError")
    api.call("GET", "/identities?" + V, expect=400, code="UnsupportedApiVersion")
    api.call("GET", "/identities/%s?%s" % (quote_id(raw_id), V), expect=400,
             code="UnsupportedApiVersion")
    api.call("DELETE", "/identities/%s?%s" % (quote_id(raw_id), CUSTOM), expect=204)
    api.call("GET", "/identities/%s?%s" % (quote_id(raw_id), CUSTOM), expect=404,
             code="IdentityNotFound")


def test_the_pipelines_refusals(api, server):
    api.call("POST", "/identities", {}, expect=400, code="MissingApiVersionParameter")
    api.call("POST", "/identities?api-version=2019-01-01", {}, expect=400,
             code="UnsupportedApiVersion")
    headers, _ = api.call("POST", "/identities?" + V, {}, sign=False, expect=401, code="Denied")
    assert headers["www-authenticate"] == "HMAC-SHA256"
    wrong_key = base64.b64encode(b"\x07" * 64).decode("ascii")
    api.call("POST", "/identities?" + V, {}, key=wrong_key, expect=401, code="Denied")
    api.call("POST", "/identities?" + V, b"{}", headers={"Content-Type": "text/plain"},
             expect=415, code="UnsupportedMediaType")
    api.call("POST", "/identities?" + V, b" " * 70000, expect=413, code="RequestEntityTooLarge")
    api.call("GET", "/health?pad=" + "x" * 2100, sign=False, expect=414, code="UriTooLong")
    many = {"x-pad-%d" % i: "1" for i in range(70)}
    api.call("GET", "/health", sign=False, headers=many, expect=431,
             code="RequestHeaderFieldsTooLarge")
    # No such path, no such method: the document's error bodies, Allow as documented.
    api.call("GET", "/nope?" + V, expect=404, code="NotFound")
    api.call("POST", "/identities/%s/:nope?%s" % (quote_id(FOREIGN_ID), V), expect=404,
             code="NotFound")
    headers, _ = api.call("PUT", "/identities?" + V, {}, expect=405, code="MethodNotAllowed")
    assert headers["allow"] == "GET, POST"
    headers, _ = api.call("DELETE", "/openapi.json", sign=False, expect=405,
                          code="MethodNotAllowed")
    assert headers["allow"] == "GET"


def test_teams_extension_assignments(api):
    tenant, obj = new_guid(), new_guid()
    path = "/access/teamsExtension/tenants/%s/assignments/%s?%s" % (tenant, obj, TEAMS)
    body = {"principalType": "user", "clientIds": [new_guid()]}
    _, put = api.call("PUT", path, body, expect=201)
    assert put["tenantId"] == tenant and put["objectId"] == obj
    api.call("PUT", path, {"principalType": "resourceAccount"}, expect=200)
    api.call("PUT", path, {"principalType": "bot"}, expect=400, code="ValidationError")
    _, got = api.call("GET", path, expect=200)
    assert got["principalType"] == "resourceAccount"
    api.call("DELETE", path, expect=204)
    api.call("GET", path, expect=404, code="AssignmentNotFound")
    api.call("DELETE", path, expect=404, code="AssignmentNotFound")
    api.call("GET", path.replace(TEAMS, V), expect=400, code="UnsupportedApiVersion")


def test_access_assignments(api):
    tenant = new_guid()
    base = "/access/entra/assignments"
    alice = "%s/alice-%s?%s" % (base, uuid.uuid4().hex[:8], ENTRA)
    body = {"tenantId": tenant, "principalType": "user", "scopes": ["chat"]}
    api.call("PUT", alice, body, expect=201)
    _, put = api.call("PUT", alice, dict(body, principalType="group"), expect=200)
    assert put["principalType"] == "group"
    api.call("PUT", alice, {"principalType": "user"}, expect=400, code="ValidationError")
    _, got = api.call("GET", alice, expect=200)
    assert got["scopes"] == ["chat"]
    bob = "bob-" + uuid.uuid4().hex[:8]
    alice_id = alice.split("/")[-1].split("?")[0]
    _, patched = api.call(
        "PATCH", "%s?%s" % (base, ENTRA),
        {bob: {"tenantId": tenant, "principalType": "group"}, alice_id: None},
        headers={"Content-Type": "application/merge-patch+json"}, expect=200)
    assert list(patched) == [bob]
    api.call("GET", alice, expect=404, code="AssignmentNotFound")
    _, page = api.call("GET", "%s?%s&maxpagesize=1" % (base, ENTRA), expect=200)
    assert len(page["value"]) == 1
    api.call("DELETE", "%s/%s?%s" % (base, bob, ENTRA), expect=204)
    api.call("DELETE", "%s/%s?%s" % (base, bob, ENTRA), expect=404, code="AssignmentNotFound")
    api.call("GET", "%s?%s" % (base, V), expect=400, code="UnsupportedApiVersion")


def test_exchanges_without_a_trusted_issuer(api):
    bearer = {"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}
    api.call("POST", "/access/entra/:exchangeAccessToken?" + ENTRA, {}, sign=False,
             headers=bearer, expect=401, code="InvalidAccessToken")
    api.call("POST", "/access/entra/:exchangeAccessToken?" + ENTRA, {}, expect=401,
             code="InvalidAccessToken")
    api.call("POST", "/access/teamsExtension/:exchangeAccessToken?" + TEAMS, {}, sign=False,
             headers=bearer, expect=401, code="InvalidAccessToken")
    api.call("POST", "/teamsUser/:exchangeAccessToken?" + V,
             {"token": "not-an-entra-token", "appId": new_guid(), "userId": new_guid()},
             expect=401, code="InvalidAccessToken")
    api.call("POST", "/teamsUser/:exchangeAccessToken?" + LEGACY, {"token": "t"}, expect=400,
             code="UnsupportedApiVersion")


def test_the_revocation_feed(api):
    _, start = api.call("GET", "/revocations?" + V, expect=200)
    assert start["events"] == []
    _, created = api.call("POST", "/identities?" + V, {}, expect=201)
    raw_id = created["identity"]["id"]
    api.call("POST", "/identities/%s/:revokeAccessTokens?%s" % (quote_id(raw_id), V),
             expect=204)
    after = "/revocations?%s&after=%s" % (V, start["cursor"])
    _, page = api.call("GET", after + "&wait=5", expect=200)
    assert {"id": raw_id, "kind": "revoked", "epoch": 1} in page["events"]
    _, snapshot = api.call("GET", "/revocations/snapshot?" + V, expect=200)
    assert any(e["id"] == raw_id for e in snapshot["value"])
    api.call("GET", "/revocations?%s&after=nope" % V, expect=400, code="ValidationError")
    api.call("GET", "/revocations?%s&wait=31" % V, expect=400, code="ValidationError")
    api.call("GET", "/revocations/snapshot?%s&after=nope" % V, expect=400,
             code="ValidationError")
    # The same event as a server-sent event: read the first message, then hang up.
    status, headers, first = sse_first_message(api.server, after)
    api.validate("GET", after, status, headers, first)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert b"event: revocation" in first and raw_id.encode() in first
    api.call("DELETE", "/identities/%s?%s" % (quote_id(raw_id), V), expect=204)


def sse_first_message(server, path_and_query):
    """(status, headers, the first message) of a server-sent event stream, then hangs up."""
    conn_class = http.client.HTTPSConnection if server.scheme == "https" else \
        http.client.HTTPConnection
    kwargs = {"context": server._ssl()} if server.scheme == "https" else {}
    conn = conn_class(server.host, timeout=10, **kwargs)
    try:
        headers = server.signing_headers("GET", path_and_query)
        headers["Accept"] = "text/event-stream"
        conn.request("GET", path_and_query, headers=headers)
        resp = conn.getresponse()
        got = {k.lower(): v for k, v in resp.getheaders()}
        message = b""
        while b"\n\n" not in message:
            chunk = resp.read1(65536)
            if not chunk:
                break
            message += chunk
        return resp.status, got, message
    finally:
        conn.close()


def test_the_verify_only_key_verifies_and_does_nothing_else(api, server):
    out = server.callsign("keys", "verify-only")
    key = re.search(r"accesskey=(\S+)", out).group(1)
    # The server picks up the new key within about a second.
    deadline = time.monotonic() + 10
    while True:
        status, _, _ = server.raw_request("GET", "/revocations?" + V, key=key)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    api.call("GET", "/revocations?" + V, key=key, expect=200)
    api.call("POST", "/tokens/:introspect?" + V, {"token": "x.y.z"}, key=key, expect=200)
    api.call("POST", "/identities?" + V, {}, key=key, expect=403, code="AuthorizationFailed")


def test_timeouts_waiting_caps_and_the_failure_limit():
    """A server of its own, with tight limits: 408, 503 and 429 turn its address away."""
    doc = json.loads(load_document())
    with running_server("--plain-http", "--body-timeout-secs", "1", "--max-feed-waiting", "1",
                        "--auth-failures-per-minute", "3") as srv:
        api = Checker(doc, srv)
        # 408: a signed head whose body never comes (counts as a failure: 1 of 3).
        path = "/identities?" + V
        status, headers, raw = head_without_body(srv, path, b"{}")
        api.validate("POST", path, status, headers, raw)
        assert status == 408, (status, raw)
        # 503: one long-poll waits, the node allows one.
        _, start = api.call("GET", "/revocations?" + V, expect=200)
        waiting = "/revocations?%s&after=%s&wait=2" % (V, start["cursor"])
        first = {}

        def wait_first():
            first.update(zip(("status", "headers", "raw"), srv.raw_request("GET", waiting)))

        t = threading.Thread(target=wait_first)
        t.start()
        time.sleep(0.7)
        headers, _ = api.call("GET", waiting, expect=503, code="ServiceUnavailable")
        assert headers["retry-after"] == "1"
        t.join(10)
        api.validate("GET", waiting, first["status"], first["headers"], first["raw"])
        assert first["status"] == 200
        # 429: failures until the address is turned away, before any signature work.
        wrong_key = base64.b64encode(b"\x07" * 64).decode("ascii")
        statuses = []
        for _ in range(5):
            status, headers, raw = srv.raw_request("POST", path, {}, key=wrong_key)
            api.validate("POST", path, status, headers, raw)
            statuses.append(status)
            if status == 429:
                break
        assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
        api.call("POST", path, {}, expect=429, code="TooManyRequests")


def head_without_body(server, path, body):
    """A signed POST whose Content-Length promises `body` that is never sent (plain HTTP)."""
    host, port = server.host.rsplit(":", 1)
    headers = server.signing_headers("POST", path, body)
    head = "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n" \
           "Content-Length: %d\r\n" % (path, server.host, len(body))
    head += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode("ascii"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        head_part, _, rest = data.partition(b"\r\n\r\n")
        lines = head_part.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        got = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            got[k.strip().lower()] = v.strip()
        length = int(got.get("content-length", "0"))
        while len(rest) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
    return status, got, rest[:length]


def test_every_documented_operation_was_exercised(doc):
    documented = {op["operationId"] for item in doc["paths"].values()
                  for key, op in item.items() if isinstance(op, dict) and "operationId" in op}
    assert documented - SEEN_OPERATIONS == set(), "never exercised"
    assert {200, 201, 204, 400, 401, 403, 404, 405, 408, 413, 414, 415, 429, 431, 503} \
        <= SEEN_STATUSES, sorted(SEEN_STATUSES)
