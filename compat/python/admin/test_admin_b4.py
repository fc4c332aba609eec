"""azure-communication-administration 1.0.0b4 (api-version 2020-07-20-preview2: 200 on create,
POST /identities/{id}/token, PATCH revoke, `Date`-signed HMAC), sync and aio clients."""

import datetime as dt

import pytest
from azure.communication.administration import (
    CommunicationIdentityClient,
    CommunicationIdentityToken,
    CommunicationUser,
)
from azure.communication.administration._shared.user_credential import (
    CommunicationUserCredential,
)
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)

from callsign_testlib import (
    FOREIGN_ID,
    ClientAdapter,
    as_epoch_seconds,
    assert_expires_in,
    assert_identity_id,
    error_of,
    jwt_payload,
    utcnow,
)

LEGACY_SCOPES = [["chat"], ["voip"], ["chat", "voip"]]


def make_client(conn_str, mode):
    def make_async():
        from azure.communication.administration.aio import (
            CommunicationIdentityClient as AsyncClient,
        )
        return AsyncClient.from_connection_string(conn_str)

    return ClientAdapter(mode, lambda: CommunicationIdentityClient.from_connection_string(conn_str),
                         make_async)


@pytest.fixture(params=["sync", "async"])
def client(request, server):
    return make_client(server.connection_string, request.param)


def test_create_user(client, server):
    user = client.create_user()
    assert isinstance(user, CommunicationUser)
    assert_identity_id(user.identifier, server.resource_id)
    other = client.create_user()
    assert other.identifier != user.identifier


@pytest.mark.parametrize("scopes", LEGACY_SCOPES, ids=",".join)
def test_issue_token(client, server, scopes):
    user = client.create_user()
    before = utcnow()
    result = client.issue_token(user, scopes)
    assert isinstance(result, CommunicationIdentityToken)
    # msrest turned expiresOn into an aware datetime; the default lifetime is 24 hours.
    assert isinstance(result.expires_on, dt.datetime)
    assert_expires_in(result.expires_on, 24 * 60, now=before)
    payload = jwt_payload(result.token)
    assert payload["skypeid"] == user.identifier[len("8:"):]
    assert payload["resourceId"] == server.resource_id
    assert sorted(payload["acsScope"].split(",")) == sorted(scopes)
    exp = dt.datetime.fromtimestamp(payload["exp"], dt.timezone.utc)
    assert abs(exp - result.expires_on) < dt.timedelta(seconds=1)
    # The SDK's own credential parses the token and reads the same expiry.
    cred = CommunicationUserCredential(result.token)
    assert as_epoch_seconds(cred.get_token().expires_on) == payload["exp"]
    info = server.assert_active(result.token)
    assert info["id"] == user.identifier
    assert sorted(info["scopes"]) == sorted(scopes)


def test_issue_token_with_no_scopes_is_a_validation_error(client):
    user = client.create_user()
    with pytest.raises(HttpResponseError) as err:
        client.issue_token(user, [])
    status, code, _ = error_of(err.value)
    assert (status, code) == (400, "ValidationError")


def test_revoke_tokens_without_issued_before(client, server):
    user = client.create_user()
    old = client.issue_token(user, ["chat"]).token
    server.assert_active(old)
    assert client.revoke_tokens(user) is None
    server.assert_inactive(old, "revoked")
    new = client.issue_token(user, ["chat"]).token
    server.assert_active(new)
    server.assert_inactive(old, "revoked")


def test_revoke_tokens_with_issued_before(client, server):
    user = client.create_user()
    old = client.issue_token(user, ["chat", "voip"]).token
    client.revoke_tokens(user, issued_before=utcnow())
    server.assert_inactive(old, "revoked")
    new = client.issue_token(user, ["chat", "voip"]).token
    server.assert_active(new)


def test_delete_user(client, server):
    user = client.create_user()
    token = client.issue_token(user, ["voip"]).token
    assert client.delete_user(user) is None
    server.assert_inactive(token, "identityNotFound")
    for call in (lambda: client.issue_token(user, ["voip"]),
                 lambda: client.revoke_tokens(user),
                 lambda: client.delete_user(user)):
        with pytest.raises(ResourceNotFoundError) as err:
            call()
        status, code, _ = error_of(err.value)
        assert (status, code) == (404, "IdentityNotFound")


def test_unknown_user_is_not_found(client, server):
    from callsign_testlib import new_guid
    ghost = CommunicationUser("8:acs:%s_%s" % (server.resource_id, new_guid()))
    with pytest.raises(ResourceNotFoundError) as err:
        client.issue_token(ghost, ["chat"])
    assert error_of(err.value)[:2] == (404, "IdentityNotFound")


def test_foreign_identity_is_not_owned(client):
    foreign = CommunicationUser(FOREIGN_ID)
    for call in (lambda: client.issue_token(foreign, ["chat"]),
                 lambda: client.revoke_tokens(foreign),
                 lambda: client.delete_user(foreign)):
        with pytest.raises(ClientAuthenticationError) as err:
            call()
        status, code, _ = error_of(err.value)
        assert (status, code) == (401, "IdentityNotOwned")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_wrong_access_key_is_denied(server, mode):
    client = make_client(server.wrong_key_connection_string(), mode)
    with pytest.raises(ClientAuthenticationError) as err:
        client.create_user()
    status, code, _ = error_of(err.value)
    assert (status, code) == (401, "Denied")


def test_user_credential_parses_many_tokens(server):
    client = CommunicationIdentityClient.from_connection_string(server.connection_string)
    user = client.create_user()
    for i in range(60):
        result = client.issue_token(user, LEGACY_SCOPES[i % len(LEGACY_SCOPES)])
        payload = jwt_payload(result.token)
        cred = CommunicationUserCredential(result.token)
        assert as_epoch_seconds(cred.get_token().expires_on) == payload["exp"]
