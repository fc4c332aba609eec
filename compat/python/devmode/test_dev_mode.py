"""`callsign serve --dev` with the released Python SDK, using only what the README documents: the
well-known connection string (verbatim, port 8443) and the dev CA from `callsign ca-cert --dev`.

Two runs accept the same key; nothing is written to the working directory; the store does not
outlive a run.
"""

import os
import signal
import subprocess
import tempfile
import time

import pytest
import requests
from azure.communication.identity import CommunicationIdentityClient, CommunicationTokenScope

from conftest import _server_bin

DOCUMENTED = ("endpoint=https://127.0.0.1:8443/;"
              "accesskey=Y2FsbHNpZ24tZGV2LXByaW1hcnkta2V5LXB1YmxpYyE=")


def _wait_ready(proc, ca):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("serve --dev exited with %r (is port 8443 taken?)" % proc.returncode)
        try:
            if requests.get("https://127.0.0.1:8443/health", verify=ca, timeout=2).ok:
                return
        except requests.exceptions.ConnectionError:
            time.sleep(0.05)
    pytest.fail("serve --dev did not answer on 127.0.0.1:8443")


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_the_documented_string_and_ca_work_on_every_run(monkeypatch):
    binary = _server_bin()
    with tempfile.TemporaryDirectory() as cwd, tempfile.TemporaryDirectory() as elsewhere:
        ca = os.path.join(elsewhere, "callsign-dev-ca.pem")
        with open(ca, "w") as f:
            f.write(subprocess.run([binary, "ca-cert", "--dev"], check=True,
                                   capture_output=True, text=True).stdout)
        printed = subprocess.run([binary, "connection-string", "--dev"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        assert printed == DOCUMENTED
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
        ids = []
        for _ in range(2):
            proc = subprocess.Popen([binary, "serve", "--dev"], cwd=cwd,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_ready(proc, ca)
                client = CommunicationIdentityClient.from_connection_string(DOCUMENTED)
                user, token = client.create_user_and_token([CommunicationTokenScope.CHAT])
                assert user.properties["id"].startswith(
                    "8:acs:de7de7de-de7d-4e7d-8e7d-e7de7de7de7d_")
                assert token.token.count(".") == 2
                client.revoke_tokens(user)
                ids.append(user.properties["id"])
            finally:
                _stop(proc)
            assert os.listdir(cwd) == [], "nothing written to the working directory"
        assert ids[0] != ids[1]
