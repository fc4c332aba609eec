"""azure-communication-identity (1.0.1, 1.3.1 or 1.5.0: whichever this venv pins), sync and aio
clients, on every api-version the installed SDK offers through `api_version=`.

What differs between the pinned releases is read from the installed package:
* 1.0.1 has no `api_version=` (always 2021-03-07), no `token_expires_in`, signs `Date` instead of
  x-ms-date and returns `expires_on` as a datetime;
* 1.3.1 offers 2021-03-07, 2022-06-01, 2022-10-01 and sends `"expiresInMinutes": null`;
* 1.5.0 offers those and 2023-10-01 (the join scopes).
"""

import asyncio
import datetime as dt
import inspect

import pytest
from azure.communication.identity import CommunicationIdentityClient, CommunicationUserIdentifier
from azure.communication.identity import _version as sdk_version
from azure.communication.identity._shared.user_credential import CommunicationTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)

from callsign_testlib import (
    ALL_SCOPE_COMBOS,
    CLASSIC_SCOPE_COMBOS,
    FOREIGN_ID,
    JOIN_SCOPES,
    ClientAdapter,
    as_epoch_seconds,
    assert_expires_in,
    assert_identity_id,
    error_of,
    jwt_payload,
    new_guid,
    parse_expires_on,
    utcnow,
)

SDK_VERSION = tuple(int(x) for x in sdk_version.VERSION.split(".")[:3])

try:
    from azure.communication.identity._api_versions import ApiVersion

    # Every value of the SDK's own enum; the client passes `api_version=` through unchecked.
    API_VERSIONS = [v.value for v in ApiVersion]
except ImportError:  # 1.0.x: the api-version is hard-coded
    API_VERSIONS = [None]

DEFAULT_API_VERSION = "2021-03-07"
SDK_HAS_EXPIRY = SDK_VERSION >= (1, 3, 0)

# Versions released after the pinned SDKs. Their identity operations take and return the bodies
# of 2023-10-01, so the newest SDK (which knows the join scopes) speaks them through
# `api_version=`, as applications do until their SDK catches up.
NEWER_API_VERSIONS = ["2025-04-01-preview", "2025-06-30", "2026-07-22", "2026-09-23"]
if SDK_VERSION >= (1, 5, 0):
    API_VERSIONS = API_VERSIONS + NEWER_API_VERSIONS


def effective(api_version):
    return api_version or DEFAULT_API_VERSION


def server_honours_expiry(api_version):
    return effective(api_version) >= "2022-10-01"


def server_has_join_scopes(api_version):
    return effective(api_version) >= "2023-10-01"


def combos(api_version):
    return ALL_SCOPE_COMBOS if server_has_join_scopes(api_version) else CLASSIC_SCOPE_COMBOS


def version_id(v):
    return v or "default"


def make_client(conn_str, mode, api_version):
    kwargs = {"api_version": api_version} if api_version else {}

    def make_sync():
        return CommunicationIdentityClient.from_connection_string(conn_str, **kwargs)

    def make_async():
        from azure.communication.identity.aio import CommunicationIdentityClient as AsyncClient

        return AsyncClient.from_connection_string(conn_str, **kwargs)

    return ClientAdapter(mode, make_sync, make_async)


MODES = ["sync", "async"]


@pytest.fixture(params=API_VERSIONS, ids=version_id)
def api_version(request):
    return request.param


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def client(server, mode, api_version):
    return make_client(server.connection_string, mode, api_version)


def expiry_kwargs(minutes):
    return {"token_expires_in": dt.timedelta(minutes=minutes)}


def check_token(server, user_id, access_token, scopes, minutes=24 * 60, now=None):
    """What every SDK consumer relies on: a 3-part JWT whose payload the Python credential
    parses to an int exp, matching expiresOn; and the server agrees the token is in force."""
    token, expires_on = access_token.token, access_token.expires_on
    if SDK_VERSION >= (1, 3, 0):
        # 1.3.0+ hands the raw wire string through as AccessToken.expires_on.
        assert isinstance(expires_on, str), expires_on
    else:
        assert isinstance(expires_on, dt.datetime), expires_on
    when = assert_expires_in(expires_on, minutes, now=now)
    payload = jwt_payload(token)
    assert abs(payload["exp"] - when.timestamp()) < 1.0, (payload["exp"], expires_on)
    assert payload["skypeid"] == user_id[len("8:"):]
    assert payload["resourceId"] == server.resource_id
    assert sorted(payload["acsScope"].split(",")) == sorted(scopes)
    cred = CommunicationTokenCredential(token)
    assert as_epoch_seconds(cred.get_token().expires_on) == payload["exp"]
    info = server.assert_active(token)
    assert info["id"] == user_id
    assert sorted(info["scopes"]) == sorted(scopes)
    return payload


def expect_error(call, exc_type, status, code, message=None):
    with pytest.raises(exc_type) as err:
        call()
    got = error_of(err.value)
    assert got[:2] == (status, code), got
    if message is not None:
        assert got[2] == message, got
    return got


# -- response framing ----------------------------------------------------------------------------


def test_responses_are_json_and_echo_the_request_id(client):
    seen = []
    client.create_user(raw_response_hook=seen.append)
    user = client.create_user()
    try:
        client.get_token(user, [], raw_response_hook=seen.append)
    except HttpResponseError:
        pass
    assert [p.http_response.status_code for p in seen] == [201, 400]
    for pipeline_response in seen:
        response, request = pipeline_response.http_response, pipeline_response.http_request
        assert response.headers["Content-Type"].startswith("application/json")
        sent = request.headers.get("x-ms-client-request-id")
        assert sent and response.headers.get("x-ms-client-request-id") == sent


# -- create -------------------------------------------------------------------------------------


def test_create_user(client, server):
    user = client.create_user()
    assert isinstance(user, CommunicationUserIdentifier)
    raw = user.properties["id"]
    assert_identity_id(raw, server.resource_id)
    assert user.raw_id == raw
    assert client.create_user().properties["id"] != raw


def _scope_cases():
    return [
        pytest.param(v, s, id="%s-%s" % (version_id(v), ",".join(s)))
        for v in API_VERSIONS
        for s in combos(v)
    ]


@pytest.mark.parametrize("api_version,scopes", _scope_cases())
def test_create_user_and_token_and_get_token(server, mode, api_version, scopes):
    client = make_client(server.connection_string, mode, api_version)
    now = utcnow()
    user, token = client.create_user_and_token(scopes)
    raw = user.properties["id"]
    assert_identity_id(raw, server.resource_id)
    check_token(server, raw, token, scopes, now=now)

    now = utcnow()
    again = client.get_token(user, scopes)
    check_token(server, raw, again, scopes, now=now)
    assert again.token != token.token


@pytest.mark.parametrize("api_version", [v for v in API_VERSIONS if not server_has_join_scopes(v)],
                         ids=version_id)
def test_join_scopes_are_refused_before_2023_10_01(server, mode, api_version):
    client = make_client(server.connection_string, mode, api_version)
    user = client.create_user()
    for scope in sorted(JOIN_SCOPES):
        expect_error(lambda: client.create_user_and_token([scope]), HttpResponseError, 400,
                     "ValidationError")
        expect_error(lambda: client.get_token(user, ["chat", scope]), HttpResponseError, 400,
                     "ValidationError")


def test_create_user_and_token_without_scopes_gives_no_token(client):
    # The real service answers 201 with the identity only; the SDK then fails client-side
    # (its own live test only expects *some* exception). An HTTP error would be wrong here.
    with pytest.raises(Exception) as err:
        client.create_user_and_token(None)
    assert not isinstance(err.value, HttpResponseError), err.value
    assert isinstance(err.value, (AttributeError, KeyError, TypeError)), repr(err.value)


# -- expiry -------------------------------------------------------------------------------------

# token_expires_in arrived in azure-communication-identity 1.3.0: with 1.0.1 these tests are not
# defined at all (rather than skipped).
if SDK_HAS_EXPIRY:

    @pytest.mark.parametrize("minutes", [60, 1440])
    def test_custom_expiry(client, server, api_version, minutes):
        expected = minutes if server_honours_expiry(api_version) else 24 * 60
        now = utcnow()
        user, token = client.create_user_and_token(["chat"], **expiry_kwargs(minutes))
        check_token(server, user.properties["id"], token, ["chat"], minutes=expected, now=now)
        now = utcnow()
        token = client.get_token(user, ["voip"], **expiry_kwargs(minutes))
        check_token(server, user.properties["id"], token, ["voip"], minutes=expected, now=now)


    @pytest.mark.parametrize("minutes", [59, 1441])
    def test_invalid_expiry(client, server, api_version, minutes):
        if not server_honours_expiry(api_version):
            # Before 2022-10-01 the field does not exist; it is ignored and the default applies.
            user, token = client.create_user_and_token(["chat"], **expiry_kwargs(minutes))
            check_token(server, user.properties["id"], token, ["chat"])
            return
        message = ("ExpiresInMinutes value %d is invalid. Value must be within the [60, 1440] "
                   "interval." % minutes)
        expect_error(lambda: client.create_user_and_token(["chat"], **expiry_kwargs(minutes)),
                     HttpResponseError, 400, "ValidationError", message)
        user = client.create_user()
        expect_error(lambda: client.get_token(user, ["chat"], **expiry_kwargs(minutes)),
                     HttpResponseError, 400, "ValidationError", message)


# -- scopes validation --------------------------------------------------------------------------


def test_get_token_with_empty_scopes(client):
    user = client.create_user()
    expect_error(lambda: client.get_token(user, []), HttpResponseError, 400, "ValidationError",
                 "Invalid scopes - Scopes field is required.")


def test_get_token_with_no_scopes(client):
    user = client.create_user()
    expect_error(lambda: client.get_token(user, None), HttpResponseError, 400, "ValidationError",
                 "Scopes: The Scopes field is required.")


def test_get_token_with_unknown_scope(client):
    user = client.create_user()
    expect_error(lambda: client.get_token(user, ["chat", "email"]), HttpResponseError, 400,
                 "ValidationError")


# -- revoke and delete --------------------------------------------------------------------------


def test_revoke_tokens(client, server):
    user, first = client.create_user_and_token(["chat"])
    second = client.get_token(user, ["voip"])
    server.assert_active(first.token)
    server.assert_active(second.token)
    assert client.revoke_tokens(user) is None
    server.assert_inactive(first.token, "revoked")
    server.assert_inactive(second.token, "revoked")
    fresh = client.get_token(user, ["chat", "voip"])
    check_token(server, user.properties["id"], fresh, ["chat", "voip"])
    server.assert_inactive(first.token, "revoked")
    # Revoking again is fine and takes the fresh token too.
    client.revoke_tokens(user)
    server.assert_inactive(fresh.token, "revoked")


def test_delete_user(client, server):
    user, token = client.create_user_and_token(["voip"])
    assert client.delete_user(user) is None
    server.assert_inactive(token.token, "identityNotFound")
    expect_error(lambda: client.get_token(user, ["voip"]), ResourceNotFoundError, 404,
                 "IdentityNotFound")
    expect_error(lambda: client.revoke_tokens(user), ResourceNotFoundError, 404,
                 "IdentityNotFound")
    expect_error(lambda: client.delete_user(user), ResourceNotFoundError, 404, "IdentityNotFound")


def test_unknown_identity_of_this_resource_is_not_found(client, server):
    ghost = CommunicationUserIdentifier("8:acs:%s_%s" % (server.resource_id, new_guid()))
    expect_error(lambda: client.get_token(ghost, ["chat"]), ResourceNotFoundError, 404,
                 "IdentityNotFound")
    expect_error(lambda: client.delete_user(ghost), ResourceNotFoundError, 404, "IdentityNotFound")


def test_malformed_identity_is_a_validation_error(client):
    bad = CommunicationUserIdentifier("not-an-identity")
    expect_error(lambda: client.get_token(bad, ["chat"]), HttpResponseError, 400,
                 "ValidationError")


def test_foreign_identity_is_not_owned(client):
    foreign = CommunicationUserIdentifier(FOREIGN_ID)
    message = "Provided identity doesn't belong to the resource."
    expect_error(lambda: client.get_token(foreign, ["chat"]), ClientAuthenticationError, 401,
                 "IdentityNotOwned", message)
    expect_error(lambda: client.revoke_tokens(foreign), ClientAuthenticationError, 401,
                 "IdentityNotOwned", message)
    expect_error(lambda: client.delete_user(foreign), ClientAuthenticationError, 401,
                 "IdentityNotOwned", message)


@pytest.mark.parametrize("host", [None, "localhost"])
def test_another_resource_works_through_the_connection_string_printed_for_it(server, mode, host):
    """`callsign resource create` on the running server's store prints a connection string that
    the SDK uses unchanged: on the server's own address (the key tells the resource), or on a
    host name of the resource's own (`localhost` here)."""
    import json
    import time

    name = "py-%s-%s" % (mode, host or "shared")
    args = ["resource", "create", "--name", name, "--json"] + (["--host", host] if host else [])
    created = json.loads(server.callsign(*args))
    cs = created["connectionString"]
    if host:
        assert cs.startswith("endpoint=https://%s:" % host), cs
    client = make_client(cs, mode, None)
    deadline = time.monotonic() + 5
    while True:  # the server reloads its resources within a second
        try:
            user = client.create_user()
            break
        except ClientAuthenticationError:
            assert time.monotonic() < deadline, "the new resource's key is still refused"
            time.sleep(0.1)
    assert_identity_id(user.properties["id"], created["id"])
    token = client.get_token(user, ["chat"])
    assert jwt_payload(token.token)["skypeid"].startswith("acs:" + created["id"])
    # The default resource's key sees that identity as another resource's.
    default = make_client(server.connection_string, mode, None)
    expect_error(lambda: default.get_token(user, ["chat"]), ClientAuthenticationError, 401,
                 "IdentityNotOwned")
    client.delete_user(user)


def test_wrong_access_key_is_denied(server, mode, api_version):
    good = make_client(server.connection_string, mode, api_version)
    user = good.create_user()
    bad = make_client(server.wrong_key_connection_string(), mode, api_version)
    expect_error(bad.create_user, ClientAuthenticationError, 401, "Denied")
    expect_error(lambda: bad.get_token(user, ["chat"]), ClientAuthenticationError, 401, "Denied")
    expect_error(lambda: bad.revoke_tokens(user), ClientAuthenticationError, 401, "Denied")
    expect_error(lambda: bad.delete_user(user), ClientAuthenticationError, 401, "Denied")
    # Nothing happened to the user.
    good.get_token(user, ["chat"])


# -- client-side token parsing ------------------------------------------------------------------


def test_token_credentials_parse_many_tokens(server):
    """The SDK's CommunicationTokenCredential (sync and async) reads `exp` from every token."""
    from azure.communication.identity._shared.user_credential_async import (
        CommunicationTokenCredential as AsyncCommunicationTokenCredential,
    )

    api_version = API_VERSIONS[-1]
    client = make_client(server.connection_string, "sync", api_version)
    scope_sets = combos(api_version)
    user = client.create_user()
    tokens = []
    for i in range(120):
        tokens.append(client.get_token(user, scope_sets[i % len(scope_sets)]).token)

    for token in tokens:
        payload = jwt_payload(token)
        assert as_epoch_seconds(CommunicationTokenCredential(token).get_token().expires_on) \
            == payload["exp"]

    async def read_all():
        out = []
        for token in tokens:
            cred = AsyncCommunicationTokenCredential(token)
            got = cred.get_token()
            if inspect.isawaitable(got):
                got = await got
            out.append(as_epoch_seconds(got.expires_on))
        return out

    assert asyncio.run(read_all()) == [jwt_payload(t)["exp"] for t in tokens]


def test_expires_on_is_utc(server):
    client = make_client(server.connection_string, "sync", API_VERSIONS[-1])
    _, token = client.create_user_and_token(["chat"])
    when = parse_expires_on(token.expires_on)
    assert when.utcoffset() == dt.timedelta(0)


# -- api-version plumbing, Teams exchange, plain HTTP, concurrency ---------------------------------

if API_VERSIONS != [None]:

    def test_unsupported_api_version_is_refused(server, mode):
        # Proves the api_version= keyword really reaches the wire.
        client = make_client(server.connection_string, mode, "2019-01-01")
        expect_error(client.create_user, HttpResponseError, 400, "UnsupportedApiVersion")


TEAMS_VERSIONS = [v for v in API_VERSIONS if v and v >= "2022-06-01"]
if hasattr(CommunicationIdentityClient, "get_token_for_teams_user") and TEAMS_VERSIONS:

    @pytest.mark.parametrize("api_version", TEAMS_VERSIONS)
    @pytest.mark.parametrize("aad_token", ["", "invalid", "a.b.c",
                                           "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2ln"])
    def test_teams_exchange_with_an_invalid_aad_token(server, mode, api_version, aad_token):
        # A valid exchange needs a real Entra ID login, impossible offline; an invalid token
        # must give what the real service gives (recordings of test_get_token_for_teams_user_*).
        client = make_client(server.connection_string, mode, api_version)
        expect_error(
            lambda: client.get_token_for_teams_user(
                aad_token, "00000000-0000-0000-0000-000000000001",
                "00000000-0000-0000-0000-000000000002"),
            ClientAuthenticationError, 401, "InvalidAccessToken",
            "Provided access token is not valid.")


def test_plain_http_endpoint(server, plain_http_server, mode):
    """`CommunicationIdentityClient("http://host:port", key)` against `--plain-http`: 1.0.1 signs
    `Date`, 1.3.1 signs the path without its leading '/', 1.5.0 signs it correctly."""
    endpoint = plain_http_server.endpoint.rstrip("/")
    key = plain_http_server.access_key

    def make_sync():
        return CommunicationIdentityClient(endpoint, key)

    def make_async():
        from azure.communication.identity.aio import CommunicationIdentityClient as AsyncClient

        return AsyncClient(endpoint, key)

    client = ClientAdapter(mode, make_sync, make_async)
    user, token = client.create_user_and_token(["chat"])
    raw = user.properties["id"]
    assert_identity_id(raw, plain_http_server.resource_id)
    jwt_payload(token.token)
    plain_http_server.assert_active(token.token)
    again = client.get_token(user, ["voip"])
    client.revoke_tokens(user)
    plain_http_server.assert_inactive(again.token, "revoked")
    client.delete_user(user)
    expect_error(lambda: client.get_token(user, ["chat"]), ResourceNotFoundError, 404,
                 "IdentityNotFound")
    # Its resource is not the HTTPS server's.
    expect_error(lambda: make_client(server.connection_string, "sync", None).get_token(
        user, ["chat"]), ClientAuthenticationError, 401, "IdentityNotOwned")


def test_many_concurrent_async_calls(server):
    from azure.communication.identity.aio import CommunicationIdentityClient as AsyncClient

    api_version = API_VERSIONS[-1]
    kwargs = {"api_version": api_version} if api_version else {}
    scope_sets = combos(api_version)

    async def one(client, i):
        scopes = scope_sets[i % len(scope_sets)]
        user, token = await client.create_user_and_token(scopes)
        second = await client.get_token(user, scopes)
        if i % 3 == 0:
            await client.revoke_tokens(user)
        return user.properties["id"], token.token, second.token, i % 3 == 0

    async def run():
        async with AsyncClient.from_connection_string(server.connection_string,
                                                      **kwargs) as client:
            return await asyncio.gather(*(one(client, i) for i in range(40)))

    results = asyncio.run(run())
    ids = [r[0] for r in results]
    assert len(set(ids)) == len(ids)
    for raw, first, second, revoked in results:
        assert_identity_id(raw, server.resource_id)
        for token in (first, second):
            assert jwt_payload(token)["skypeid"] == raw[len("8:"):]
            if revoked:
                server.assert_inactive(token, "revoked")
            else:
                server.assert_active(token)


# -- the endpoint as the portal shows it -----------------------------------------------------------


@pytest.mark.skipif(SDK_VERSION < (1, 5, 0), reason="the explicit constructor of 1.5.0")
@pytest.mark.parametrize("api_version", [None] + NEWER_API_VERSIONS, ids=version_id)
def test_explicit_constructor_with_a_trailing_slash_endpoint(server, mode, api_version):
    """`CommunicationIdentityClient("https://host:port/", AzureKeyCredential(key))` signs the host
    as `host:port/`; callsign accepts it on every version."""
    from azure.core.credentials import AzureKeyCredential

    assert server.endpoint.endswith("/"), server.endpoint
    kwargs = {"api_version": api_version} if api_version else {}

    def make_sync():
        return CommunicationIdentityClient(
            server.endpoint, AzureKeyCredential(server.access_key), **kwargs)

    def make_async():
        from azure.communication.identity.aio import CommunicationIdentityClient as AsyncClient

        return AsyncClient(server.endpoint, AzureKeyCredential(server.access_key), **kwargs)

    client = ClientAdapter(mode, make_sync, make_async)
    now = utcnow()
    user, token = client.create_user_and_token(["chat", "voip"])
    raw = user.properties["id"]
    assert_identity_id(raw, server.resource_id)
    check_token(server, raw, token, ["chat", "voip"], now=now)
    client.revoke_tokens(user)
    server.assert_inactive(token.token, "revoked")
    client.delete_user(user)
    expect_error(lambda: client.get_token(user, ["chat"]), ResourceNotFoundError, 404,
                 "IdentityNotFound")
