"""README "From Python (PyJWT)": the fenced block after
`<!-- tested by compat/python/verify/test_verify_pyjwt.py -->` is exec'd unchanged, so the README
cannot drift from what runs here. Tokens come from azure-communication-identity against the live
server; the snippet fetches the JWKS over HTTPS trusting the server's local CA through its own
`ca_file` (SSL_CERT_FILE, which the fixture sets for the SDKs, is removed while it runs). Every
refusal is checked for its exact PyJWT exception class.
"""

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import ssl
import urllib.request

import jwt
import jwt.api_jwt
import pytest
from azure.communication.identity import CommunicationIdentityClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from callsign_testlib import parse_expires_on

README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")
MARKER = "<!-- tested by compat/python/verify/test_verify_pyjwt.py -->"


def readme_snippet():
    """The fenced block that follows the marker, exactly as the README has it."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert text.count(MARKER) == 1, "README.md must hold the marker exactly once: " + MARKER
    m = re.match(r"\s*```python\n(.*?)^```$", text.split(MARKER, 1)[1], re.S | re.M)
    assert m, "no ```python block right after the marker"
    return m.group(1)


def snippet():
    namespace = {"__name__": "readme_verify_pyjwt"}
    exec(compile(readme_snippet(), README + " (PyJWT block)", "exec"), namespace)
    return namespace["callsign_verifier"]


callsign_verifier = snippet()


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def part_json(part):
    return json.loads(unb64url(part))


def encode_json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def refused(exc_class, call, message=None):
    """`call()` must raise exactly `exc_class` (not a subclass); returns the exception."""
    with pytest.raises(jwt.PyJWTError) as info:
        call()
    assert type(info.value) is exc_class, "%s: %s" % (type(info.value).__name__, info.value)
    if message is not None:
        assert str(info.value) == message
    return info.value


@pytest.fixture(autouse=True)
def only_the_snippets_ca(monkeypatch):
    """Without SSL_CERT_FILE, the snippet's HTTPS trusts the local CA only through `ca_file`."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


@pytest.fixture(scope="module")
def client(server):
    return CommunicationIdentityClient.from_connection_string(server.connection_string)


@pytest.fixture(scope="module")
def issued(client):
    user, token = client.create_user_and_token(["chat", "voip"])
    return user, token


@pytest.fixture
def verify(server):
    return callsign_verifier(server.endpoint, server.resource_id, ca_file=server.ca_path)


def test_valid_token_verifies_with_identity_resource_and_scopes(server, issued, verify):
    user, token = issued
    claims = verify(token.token, ["chat"])
    assert claims["sub"] == user.properties["id"]
    assert claims["resourceId"] == server.resource_id
    assert claims["iss"] == "urn:callsign:" + server.resource_id
    assert sorted(claims["acsScope"].split(",")) == ["chat", "voip"]
    assert claims["exp"] == int(parse_expires_on(token.expires_on).timestamp())
    assert verify(token.token, ["voip", "chat"]) == claims
    assert verify(token.token) == claims
    assert part_json(token.token.split(".")[0])["alg"] == "ES256"  # the server's default


def test_changed_payload_is_refused(issued, verify):
    header, payload, signature = issued[1].token.split(".")
    claims = part_json(payload)
    claims["acsScope"] = "chat,voip,chat.join"
    forged = ".".join([header, encode_json(claims), signature])
    refused(jwt.InvalidSignatureError, lambda: verify(forged, ["chat"]),
            "Signature verification failed")


def test_changed_signature_is_refused(issued, verify):
    header, payload, signature = issued[1].token.split(".")
    sig = bytearray(unb64url(signature))
    sig[10] ^= 0x01
    forged = ".".join([header, payload, b64url(bytes(sig))])
    refused(jwt.InvalidSignatureError, lambda: verify(forged), "Signature verification failed")


def test_token_signed_by_another_key_under_callsigns_kid_is_refused(issued, verify):
    header, payload, _ = issued[1].token.split(".")
    signing_input = (header + "." + payload).encode("ascii")
    der = ec.generate_private_key(ec.SECP256R1()).sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    forged = header + "." + payload + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    refused(jwt.InvalidSignatureError, lambda: verify(forged), "Signature verification failed")


def test_unknown_kid_is_refused(issued, verify):
    header, payload, signature = issued[1].token.split(".")
    forged = ".".join([encode_json(dict(part_json(header), kid="not-a-callsign-key")), payload,
                       signature])
    refused(jwt.PyJWKClientError, lambda: verify(forged),
            'Unable to find a signing key that matches: "not-a-callsign-key"')


class _Clock(dt.datetime):
    """A datetime whose now() is `_Clock.at`."""

    at = None

    @classmethod
    def now(cls, tz=None):
        return cls.at.astimezone(tz)


def test_expired_token_is_refused(issued, verify, monkeypatch):
    # Tokens live at least an hour. PyJWT's decode has no "verify as of" option (jose has
    # `currentDate`), and a negative `leeway` would trip the `iat` check first
    # (ImmatureSignatureError), so this moves the clock PyJWT's claim checks read
    # (`datetime.now` in jwt.api_jwt) past `exp`; the snippet and PyJWT's checks run unchanged.
    assert jwt.api_jwt.datetime is dt.datetime, "PyJWT no longer reads datetime.now there"
    monkeypatch.setattr(jwt.api_jwt, "datetime", _Clock)
    token = issued[1].token
    exp = part_json(token.split(".")[1])["exp"]
    _Clock.at = dt.datetime.fromtimestamp(exp + 61, dt.timezone.utc)
    refused(jwt.ExpiredSignatureError, lambda: verify(token, ["chat"]), "Signature has expired")
    # Within the 60 s leeway it still verifies, so the refusal above is the expiry alone.
    _Clock.at = dt.datetime.fromtimestamp(exp + 59, dt.timezone.utc)
    assert verify(token, ["chat"])["exp"] == exp


def test_other_issuer_is_refused(server, issued):
    other = callsign_verifier(server.endpoint, server.resource_id, ca_file=server.ca_path,
                              issuer="urn:callsign:someone-else")
    refused(jwt.InvalidIssuerError, lambda: other(issued[1].token), "Invalid issuer")


def test_token_of_another_resource_is_refused(server, issued):
    # The issuer passes, so the resource check is what refuses.
    other = callsign_verifier(server.endpoint, "00000000-0000-0000-0000-000000000000",
                              ca_file=server.ca_path, issuer="urn:callsign:" + server.resource_id)
    refused(jwt.InvalidTokenError, lambda: other(issued[1].token), "token of another resource")


def test_missing_scope_is_refused(client, issued, verify):
    chat_only = client.get_token(issued[0], ["chat"]).token
    assert verify(chat_only, ["chat"])["acsScope"] == "chat"
    refused(jwt.InvalidTokenError, lambda: verify(chat_only, ["voip"]), "missing scope voip")
    refused(jwt.InvalidTokenError, lambda: verify(chat_only, ["voip.join", "chat"]),
            "missing scope voip.join")


def test_unsigned_token_is_refused(issued, verify):
    header, payload, _ = issued[1].token.split(".")
    unsigned = ".".join([encode_json(dict(part_json(header), alg="none")), payload, ""])
    refused(jwt.InvalidAlgorithmError, lambda: verify(unsigned),
            "The specified alg value is not allowed")


def test_hs256_token_keyed_with_the_public_key_is_refused(server, issued, verify):
    header, payload, _ = issued[1].token.split(".")
    kid = part_json(header)["kid"]
    with urllib.request.urlopen(server.endpoint + ".well-known/jwks.json", timeout=10,
                                context=ssl.create_default_context(cafile=server.ca_path)) as r:
        jwk = next(k for k in json.load(r)["keys"] if k["kid"] == kid)
    pem = jwt.PyJWK(jwk).key.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, json.dumps(jwk).encode("utf-8")):
        signing_input = encode_json(dict(part_json(header), alg="HS256")) + "." + payload
        mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        refused(jwt.InvalidAlgorithmError, lambda: verify(signing_input + "." + b64url(mac)),
                "The specified alg value is not allowed")


def test_without_the_ca_file_the_jwks_is_not_trusted(server, issued):
    untrusting = callsign_verifier(server.endpoint, server.resource_id)
    err = refused(jwt.PyJWKClientConnectionError, lambda: untrusting(issued[1].token))
    assert "CERTIFICATE_VERIFY_FAILED" in str(err), err


def test_revoked_token_still_verifies_introspection_refuses_it(server, client, verify):
    user, token = client.create_user_and_token(["chat"])
    client.revoke_tokens(user)
    server.assert_inactive(token.token, "revoked")
    assert verify(token.token, ["chat"])["sub"] == user.properties["id"]


def test_other_signing_algorithms_verify(other_alg_server):
    """A server started with `--signing-alg EdDSA` or `RS256`: its tokens verify, and a changed
    signature or a missing scope is still refused."""
    srv = other_alg_server
    status, body = srv.signed_request(
        "POST", "/identities?api-version=2023-10-01", {"createTokenWithScopes": ["voip"]})
    assert status == 201, (status, body)
    token = body["accessToken"]["token"]
    header, payload, signature = token.split(".")
    assert part_json(header)["alg"] == srv.signing_alg
    verify = callsign_verifier(srv.endpoint, srv.resource_id, ca_file=srv.ca_path)
    claims = verify(token, ["voip"])
    assert claims["sub"] == body["identity"]["id"]
    assert claims["resourceId"] == srv.resource_id
    sig = bytearray(unb64url(signature))
    sig[10] ^= 0x01
    forged = ".".join([header, payload, b64url(bytes(sig))])
    refused(jwt.InvalidSignatureError, lambda: verify(forged), "Signature verification failed")
    refused(jwt.InvalidTokenError, lambda: verify(token, ["chat"]), "missing scope chat")
