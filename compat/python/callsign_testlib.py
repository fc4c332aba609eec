"""Helpers shared by every compat suite. Standard library only: each venv pins a different SDK.

Nothing here talks to anything but the callsign server the fixture started on 127.0.0.1.
"""

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from email.utils import formatdate

GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ID_RE = re.compile(r"^8:acs:(" + GUID + r")_(" + GUID + r")$")

# An identity of another resource; the JS SDK's live tests use this very id.
FOREIGN_ID = "8:acs:00000000-0000-0000-0000-000000000000_00000000-0000-0000-0000-000000000000"

# Every scope combination the Python 1.5.0 live tests issue (tests/utils.py of the sdist).
ALL_SCOPE_COMBOS = [
    ["chat"],
    ["voip"],
    ["chat.join"],
    ["chat.join.limited"],
    ["voip.join"],
    ["voip", "chat"],
    ["chat", "chat.join", "chat.join.limited"],
    ["voip", "voip.join"],
    ["chat.join", "voip.join"],
]
JOIN_SCOPES = {"chat.join", "chat.join.limited", "voip.join"}
CLASSIC_SCOPE_COMBOS = [c for c in ALL_SCOPE_COMBOS if not JOIN_SCOPES.intersection(c)]


def assert_identity_id(raw_id, resource_id):
    m = ID_RE.match(raw_id)
    assert m, "not an 8:acs:<resource>_<guid> id: %r" % (raw_id,)
    assert m.group(1) == resource_id, (raw_id, resource_id)
    return m.group(2)


def new_guid():
    return str(uuid.uuid4())


def parse_expires_on(value):
    """`expiresOn` as the wire carries it (ISO 8601 with offset, up to 7 fractional digits), or a
    datetime the SDK already made of it, as an aware datetime."""
    if isinstance(value, dt.datetime):
        assert value.tzinfo is not None, "naive datetime: %r" % (value,)
        return value
    assert isinstance(value, str), "expires_on is %r" % (type(value),)
    m = re.match(
        r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,7}))?(Z|[+-]\d{2}:\d{2})$", value
    )
    assert m, "expiresOn not ISO 8601 with an offset: %r" % (value,)
    base = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    frac = (m.group(2) or "0").ljust(7, "0")
    base = base + dt.timedelta(microseconds=int(frac) // 10)
    tz = m.group(3)
    if tz == "Z":
        offset = dt.timedelta(0)
    else:
        sign = 1 if tz[0] == "+" else -1
        offset = sign * dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return base.replace(tzinfo=dt.timezone(offset))


def utcnow():
    return dt.datetime.now(dt.timezone.utc)


def assert_expires_in(expires_on, minutes, tolerance=dt.timedelta(minutes=1), now=None):
    """expires_on lies within `tolerance` of now + minutes."""
    when = parse_expires_on(expires_on)
    target = (now or utcnow()) + dt.timedelta(minutes=minutes)
    assert abs(when - target) <= tolerance, "expires %s, expected about %s" % (
        when.isoformat(), target.isoformat())
    return when


def jwt_payload(token):
    """Decode the payload exactly the way the Python SDKs' CommunicationTokenCredential does
    (`_shared/utils.py create_access_token`): standard-alphabet b64decode of part 1 + "==",
    ASCII, json.loads. Then check what every SDK needs from it."""
    assert isinstance(token, str)
    parts = token.split(".")
    assert len(parts) == 3, "a JWT has three parts: %r" % (token[:40],)
    payload = json.loads(base64.b64decode(parts[1] + "==").decode("ascii"))
    # The Python parser ignores '-' and '_', so a base64url payload containing them would decode
    # to garbage; the exact round trip proves it did not happen.
    strict = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    assert payload == strict
    assert type(payload["exp"]) is int, "exp must be an integer: %r" % (payload.get("exp"),)
    return payload


class Server(object):
    """What the fixture learned about the running server."""

    def __init__(self, endpoint, connection_string, access_key, ca_path, resource_id, data_dir,
                 pid, log_path, binary=None, store_dir=None):
        self.endpoint = endpoint  # https://127.0.0.1:PORT/ (http:// with --plain-http)
        self.connection_string = connection_string
        self.access_key = access_key
        self.ca_path = ca_path
        self.resource_id = resource_id
        self.data_dir = data_dir
        self.pid = pid
        self.log_path = log_path
        self.binary = binary
        self.store_dir = store_dir
        parsed = urllib.parse.urlsplit(endpoint)
        self.scheme = parsed.scheme
        self.host = parsed.netloc  # 127.0.0.1:PORT
        assert parsed.hostname == "127.0.0.1", endpoint

    def callsign(self, *args):
        """Runs a store-side `callsign` command on this server's data dir; returns its stdout."""
        import subprocess

        out = subprocess.run(
            [self.binary] + list(args) + ["--data-dir", self.store_dir],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert out.returncode == 0, "callsign %s: %s" % (" ".join(args), out.stderr)
        return out.stdout

    def wrong_key_connection_string(self):
        bogus = base64.b64encode(b"\x07" * 64).decode("ascii")
        assert bogus != self.access_key
        return "endpoint=%s;accesskey=%s" % (self.endpoint, bogus)

    def _ssl(self):
        if self.scheme == "http":
            return None
        return ssl.create_default_context(cafile=self.ca_path)

    def signing_headers(self, method, path_and_query, body=b"", key=None):
        """The three headers of an HMAC-SHA256 signature as the SDKs sign requests
        (x-ms-date;host;x-ms-content-sha256)."""
        date = formatdate(usegmt=True)
        content_hash = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        to_sign = "%s\n%s\n%s;%s;%s" % (method, path_and_query, date, self.host, content_hash)
        secret = base64.b64decode(key or self.access_key)
        signature = base64.b64encode(
            hmac.new(secret, to_sign.encode("utf-8"), hashlib.sha256).digest()).decode("ascii")
        return {
            "x-ms-date": date,
            "x-ms-content-sha256": content_hash,
            "Authorization": "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
                             "&Signature=" + signature,
        }

    def raw_request(self, method, path_and_query, body=b"", key=None, sign=True, headers=None):
        """A request, HMAC-signed unless `sign` is false; a non-empty body is declared JSON
        unless `headers` says otherwise. Returns (status, headers as a dict with lower-case
        names, raw body bytes)."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode("utf-8")
        all_headers = {"Accept": "application/json"}
        if sign:
            all_headers.update(self.signing_headers(method, path_and_query, body, key))
        if body:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        url = "%s://%s%s" % (self.scheme, self.host, path_and_query)
        req = urllib.request.Request(url, data=body if method != "GET" else None,
                                     headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as resp:
                status, got, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            status, got, raw = err.code, err.headers, err.read()
        return status, {k.lower(): v for k, v in got.items()}, raw

    def signed_request(self, method, path_and_query, body=b"", key=None):
        """An HMAC-SHA256 signed request as the SDKs sign them (x-ms-date;host;x-ms-content-sha256).
        Returns (status, parsed JSON or None)."""
        status, _, raw = self.raw_request(method, path_and_query, body, key)
        return status, (json.loads(raw) if raw else None)

    def introspect(self, token):
        """POST /tokens/:introspect (callsign extension): is the token in force right now?"""
        status, body = self.signed_request(
            "POST", "/tokens/:introspect?api-version=2023-10-01", {"token": token})
        assert status == 200, (status, body)
        assert isinstance(body.get("active"), bool), body
        return body

    def assert_active(self, token):
        info = self.introspect(token)
        assert info["active"] is True, info
        return info

    def assert_inactive(self, token, reason):
        info = self.introspect(token)
        assert info["active"] is False, info
        assert info.get("reason") == reason, info
        return info


def error_of(exc):
    """(status, code, message) of an azure-core HttpResponseError, read from the parsed error
    model when the SDK made one and from the raw response body otherwise."""
    status = exc.status_code
    code = message = None
    model = getattr(exc, "error", None)
    if model is not None and getattr(model, "code", None):
        code, message = model.code, model.message
    else:
        body = json.loads(exc.response.text())
        code, message = body["error"]["code"], body["error"]["message"]
    return status, code, message


class ClientAdapter(object):
    """Calls one SDK method either on a sync client or, in async mode, inside `asyncio.run` on a
    fresh aio client (`async with client: await client.method(...)`), so that one test body covers
    both. `make_async` must import the aio module lazily (see conftest.py)."""

    def __init__(self, mode, make_sync, make_async):
        assert mode in ("sync", "async")
        self.mode = mode
        self._make_sync = make_sync
        self._make_async = make_async
        self._sync = make_sync() if mode == "sync" else None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self.mode == "sync":
            return getattr(self._sync, name)

        def call(*args, **kwargs):
            import asyncio

            async def run():
                client = self._make_async()
                async with client:
                    return await getattr(client, name)(*args, **kwargs)

            return asyncio.run(run())

        return call


def as_epoch_seconds(value):
    """An SDK credential's expires_on (int seconds, or an aware datetime in the early previews)."""
    if isinstance(value, dt.datetime):
        assert value.tzinfo is not None
        return int(value.timestamp())
    assert isinstance(value, int), value
    return value
