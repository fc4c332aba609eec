#!/usr/bin/env python3
"""How long `callsign serve --dev` takes to be ready: from the process's start to the first
answer of `GET /health` over TLS verified with the dev CA, and what the banner itself reports.

    python3 scripts/dev-startup.py [BINARY] [RUNS]     # default target/release/callsign, 20

Each run uses a free loopback port, waits for the answer (polling every millisecond), then sends
SIGTERM and waits for the exit. Prints min, median and max.
"""

import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(binary, context):
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([binary, "serve", "--dev", "--listen", "127.0.0.1:%d" % port],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "RUST_LOG": "warn"})
    try:
        while True:
            try:
                with urllib.request.urlopen("https://127.0.0.1:%d/health" % port,
                                            context=context, timeout=1) as r:
                    if r.status == 200:
                        ready = (time.perf_counter() - started) * 1000
                        break
            except OSError:
                if proc.poll() is not None:
                    sys.exit("serve --dev exited early")
                time.sleep(0.001)
        banner = proc.stdout.readline()
        reported = float(re.search(r"ready in (\d+) ms", banner).group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return ready, reported


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release",
                                                                 "callsign")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    ca = subprocess.run([binary, "ca-cert", "--dev"], check=True, capture_output=True,
                        text=True).stdout
    context = ssl.create_default_context(cadata=ca)
    results = [one_run(binary, context) for _ in range(runs)]
    for name, values in (("process start to first /health answer", [r[0] for r in results]),
                         ("banner's own 'ready in'", [r[1] for r in results])):
        print("%-40s min %6.1f ms  median %6.1f ms  max %6.1f ms  (%d runs)" % (
            name, min(values), statistics.median(values), max(values), runs))


if __name__ == "__main__":
    main()
