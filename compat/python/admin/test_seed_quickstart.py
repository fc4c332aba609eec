"""The seed quickstart (azure-communication-administration 1.0.0b4), run verbatim."""

import datetime as dt
import os
import re
import subprocess
import sys

import pytest
from azure.communication.administration import CommunicationIdentityClient, CommunicationUser
from azure.core.exceptions import ResourceNotFoundError

from callsign_testlib import ID_RE, error_of, jwt_payload

SEED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "seed",
                    "issue-tokens.py")


def run_seed(server):
    env = {k: v for k, v in os.environ.items()
           if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
                        "COMMUNICATION_SERVICES_CONNECTION_STRING")}
    env["COMMUNICATION_SERVICES_CONNECTION_STRING"] = server.connection_string
    env["REQUESTS_CA_BUNDLE"] = server.ca_path
    proc = subprocess.run([sys.executable, SEED], env=env, capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(SEED))
    return proc


def test_seed_quickstart_runs_verbatim(server):
    started = dt.datetime.now(dt.timezone.utc)
    proc = run_seed(server)
    out = proc.stdout
    assert proc.returncode == 0, (proc.returncode, out, proc.stderr)
    assert "Exception" not in out, out
    assert "Exception" not in proc.stderr, proc.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 6, out

    assert lines[0] == "Azure Communication Services - User Access Tokens Quickstart"

    m = re.match(r"^Created a user with ID: (\S+):$", lines[1])
    assert m, lines[1]
    user_id = m.group(1)
    m = ID_RE.match(user_id)
    assert m and m.group(1) == server.resource_id, user_id

    m = re.match(r"^Issued a token with 'voip' scope that expires at "
                 r"(\d\d/\d\d/\d\d \d\d:\d\d \d\d [AP]M):$", lines[2])
    assert m, lines[2]
    printed = dt.datetime.strptime(m.group(1), "%d/%m/%y %I:%M %S %p").replace(
        tzinfo=dt.timezone.utc)

    token = lines[3]
    assert re.match(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$", token), token
    payload = jwt_payload(token)
    assert payload["skypeid"] == user_id[len("8:"):]
    assert payload["acsScope"] == "voip"
    assert payload["resourceId"] == server.resource_id
    # The printed expiry is the token's exp, about 24 hours from now.
    exp = dt.datetime.fromtimestamp(payload["exp"], dt.timezone.utc)
    assert abs(exp - printed) < dt.timedelta(seconds=2), (exp, printed)
    assert abs(exp - (started + dt.timedelta(hours=24))) < dt.timedelta(minutes=1)

    assert lines[4] == "Successfully revoked all tokens for user with ID: " + user_id
    assert lines[5] == "Deleted the user with ID: " + user_id

    # The server really deleted the user: its token is out of force at once ...
    server.assert_inactive(token, "identityNotFound")
    # ... and a new token for it is refused with 404.
    client = CommunicationIdentityClient.from_connection_string(server.connection_string)
    with pytest.raises(ResourceNotFoundError) as err:
        client.issue_token(CommunicationUser(user_id), ["voip"])
    assert err.value.status_code == 404
    assert error_of(err.value)[:2] == (404, "IdentityNotFound")
