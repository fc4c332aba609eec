#!/usr/bin/env python3
"""Runs the README's Quick start as a newcomer would, block by block, from the repository root.

The `sh` blocks between "## Quick start" and the next heading are taken in order: the one that
starts the server (`serve --dev`) runs in the background, the others in one shell (so `export`s
carry over) with `set -euo pipefail`. The only change to the text: `cargo run --release --` and
`target/release/callsign` become the binary under test (CALLSIGN_BIN, default target/debug/callsign),
so the test needs no second, release build. Fails if a block fails, if the quickstart's output is
not what it should be, or if the dev server leaves anything in its working directory.

    python3 scripts/readme-quickstart.py
"""

import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_start_blocks(readme):
    section = readme.split("\n## Quick start\n", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def main():
    binary = os.environ.get("CALLSIGN_BIN", os.path.join(ROOT, "target", "debug", "callsign"))
    binary = os.path.abspath(binary)
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = quick_start_blocks(f.read())
    subst = lambda b: (b.replace("cargo run --release --", shlex.quote(binary))
                       .replace("target/release/callsign", shlex.quote(binary)))
    serve = [b for b in blocks if "serve --dev" in b]
    rest = [subst(b) for b in blocks if "serve --dev" not in b]
    assert len(serve) == 1 and len(rest) >= 2, "the Quick start changed shape: %r" % blocks
    server_cwd = tempfile.mkdtemp(prefix="callsign-readme-")
    server_log = open(os.path.join(tempfile.gettempdir(), "callsign-readme-server.log"), "w")
    server = subprocess.Popen(["bash", "-c", "exec " + subst(serve[0])], cwd=server_cwd,
                              stdout=subprocess.DEVNULL, stderr=server_log)
    made = [os.path.join(ROOT, "callsign-dev-ca.pem")]
    try:
        script = "set -euo pipefail\n" + "\n".join(rest)
        # The server is up once the dev CA verifies its health answer.
        ca = subprocess.run([binary, "ca-cert", "--dev"], check=True, capture_output=True,
                            text=True).stdout
        context = ssl.create_default_context(cadata=ca)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen("https://127.0.0.1:8443/health", context=context,
                                            timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert server.poll() is None, "serve --dev exited (is port 8443 taken?)"
                assert time.monotonic() < deadline, "serve --dev did not answer"
                time.sleep(0.1)
        done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        print(done.stdout)
        print(done.stderr, file=sys.stderr)
        assert done.returncode == 0, "a Quick start block failed (exit %d)" % done.returncode
        assert "Azure Communication Services - User Access Tokens Quickstart" in done.stdout
        assert "Exception" not in done.stdout + done.stderr
        assert re.search(r"8:acs:de7de7de-de7d-4e7d-8e7d-e7de7de7de7d_\S+ \S+", done.stdout), \
            "the current SDK's snippet printed no identity"
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        left = os.listdir(server_cwd)
        os.rmdir(server_cwd) if not left else None
        for path in made:
            if os.path.exists(path):
                os.remove(path)
    assert code == 0, "serve --dev exited %d" % code
    assert not left, "serve --dev wrote %r into its working directory" % left
    print("README quick start: every block ran")


if __name__ == "__main__":
    main()
