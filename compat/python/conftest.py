"""Starts one callsign server per pytest session: fresh data dir, port 0, TLS from its local CA.

The server binary comes from CALLSIGN_BIN (default: target/debug/callsign in the repo root). The
fixture reads the endpoint, connection string and CA path from the server's stdout, points
REQUESTS_CA_BUNDLE (requests) and SSL_CERT_FILE (aiohttp) at the CA, and at the end sends SIGTERM
to that one process and asserts it exits 0. The temp dir (data and server.log) is removed after a
clean run unless CALLSIGN_KEEP_DATA is set.
"""

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from callsign_testlib import Server

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BIN = os.path.join(REPO_ROOT, "target", "debug", "callsign")
STARTUP_TIMEOUT = 30
SHUTDOWN_TIMEOUT = 20


def _server_bin():
    path = os.environ.get("CALLSIGN_BIN") or DEFAULT_BIN
    if not os.path.isabs(path):
        path = os.path.join(REPO_ROOT, path)
    if not os.access(path, os.X_OK):
        pytest.exit("callsign binary not found or not executable: %s "
                    "(build it with `cargo build -p callsign` or set CALLSIGN_BIN)" % path,
                    returncode=3)
    return path


def _pump(stream, lines):
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _read_startup(proc, lines, log_path, need_ca):
    """Reads stdout until the endpoint, the connection string and the CA path are known."""
    endpoint = resource = conn = ca = None
    seen = []
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not (endpoint and conn and (ca or not need_ca)):
        left = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(left, 0.01)) if left > 0 else None
        except queue.Empty:
            line = None
        if line is None:
            with open(log_path, errors="replace") as f:
                log = f.read()[-4000:]
            raise RuntimeError("callsign did not report its endpoint (exit code %r).\nstdout:\n%s"
                               "\nstderr (tail):\n%s" % (proc.poll(), "".join(seen), log))
        seen.append(line)
        m = re.search(r"listening on (https?://\S+?) \(resource ([0-9a-f-]{36})\)", line)
        if m:
            endpoint, resource = m.group(1), m.group(2)
        m = re.search(r"(endpoint=\S+;accesskey=\S+)", line)
        if m:
            conn = m.group(1)
        m = re.search(r"REQUESTS_CA_BUNDLE=(\S+)", line)
        if m:
            ca = m.group(1)
    return endpoint, resource, conn, ca


@contextlib.contextmanager
def running_server(*extra_args):
    """Starts `callsign serve` on 127.0.0.1:0 with a fresh data dir; yields a Server; then sends
    SIGTERM to that process (by its handle, nothing else) and requires exit code 0."""
    binary = _server_bin()
    plain = "--plain-http" in extra_args
    data_dir = tempfile.mkdtemp(prefix="callsign-compat-")
    log_path = os.path.join(data_dir, "server.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", os.path.join(data_dir, "data"), "--listen", "127.0.0.1:0"]
        + list(extra_args),
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
    )
    failed = True
    lines = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    pump.start()
    try:
        endpoint, resource, conn, ca = _read_startup(proc, lines, log_path, need_ca=not plain)
        assert endpoint.startswith("http://" if plain else "https://"), endpoint
        if not plain:
            assert ca == os.path.join(data_dir, "data", "tls", "ca.pem"), ca
            assert os.path.isfile(ca), ca
        assert conn == "endpoint=%s;accesskey=%s" % (endpoint, conn.split(";accesskey=", 1)[1])
        yield Server(
            endpoint=endpoint,
            connection_string=conn,
            access_key=conn.split(";accesskey=", 1)[1],
            ca_path=ca,
            resource_id=resource,
            data_dir=data_dir,
            pid=proc.pid,
            log_path=log_path,
            binary=binary,
            store_dir=os.path.join(data_dir, "data"),
        )
        failed = False
    finally:
        code = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = "timeout"
        else:
            code = ("already exited", proc.returncode)
        log.close()
        pump.join(timeout=5)  # the pipe is at EOF once the process is gone
        if proc.stdout and not pump.is_alive():
            proc.stdout.close()
        if code == 0 and not failed and not os.environ.get("CALLSIGN_KEEP_DATA"):
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            sys.stderr.write("callsign server log kept at %s\n" % log_path)
    assert code == 0, "callsign did not exit 0 after SIGTERM: %r" % (code,)


@pytest.fixture(scope="session")
def server():
    """The HTTPS server every suite uses; REQUESTS_CA_BUNDLE and SSL_CERT_FILE point at its CA
    while it runs."""
    saved_env = {k: os.environ.get(k) for k in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    with running_server() as srv:
        # aiohttp builds its default SSL context when it is imported: setting SSL_CERT_FILE
        # afterwards would not be seen, so the async clients must be imported after this point.
        if "aiohttp" in sys.modules:
            raise RuntimeError("aiohttp was imported before the CA was known; import the aio "
                               "clients lazily inside the tests")
        os.environ["REQUESTS_CA_BUNDLE"] = srv.ca_path
        os.environ["SSL_CERT_FILE"] = srv.ca_path
        try:
            yield srv
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="session")
def plain_http_server():
    """A second server speaking plain HTTP (`--plain-http`), started only if a test asks."""
    with running_server("--plain-http") as srv:
        yield srv


@pytest.fixture(scope="session", params=["EdDSA", "RS256"])
def other_alg_server(request):
    """A server signing with `--signing-alg` EdDSA, then RS256, started only if a test asks;
    `.signing_alg` names it."""
    with running_server("--signing-alg", request.param) as srv:
        srv.signing_alg = request.param
        yield srv
