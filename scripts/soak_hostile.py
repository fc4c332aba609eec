#!/usr/bin/env python3
"""Soak traffic for scripts/soak.sh (standard library only).

Against one running server on 127.0.0.1, for --seconds:

* valid traffic from 127.0.0.2: signed issue-token requests (and some creates) at a bounded
  rate over keep-alive connections (reopened now and then), each one timed;
* hostile traffic from other loopback addresses, each pattern in its own threads at a bounded
  rate, every outcome recorded (a status code, "closed" when the server closed the connection
  without answering, "hang" when nothing happened within the relevant deadline + 10 s);
* the server's VmRSS sampled every second.

Prints a summary (and writes it as JSON with --out) and exits 1 when a budget is broken:
a valid request failed or valid p99 >= --p99-ms, max RSS >= --rss-mib, a hostile request got a
5xx, a 2xx (GET /health excepted, which must answer 200), an outcome its pattern does not allow,
or hung; or the server stopped answering.
"""

import argparse
import base64
import collections
import email.utils
import hashlib
import hmac
import http.client
import json
import math
import multiprocessing as mp
import os
import random
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse

API = "api-version=2023-10-01"
CREATE = f"/identities?{API}"
# 32 zero bytes: a well-formed signature that matches nothing.
WRONG = base64.b64encode(bytes(32)).decode()

VALID_SRC = "127.0.0.2"
BAD_SIG_SRC = "127.0.0.1"  # one address failing authentication at a high rate
OVERSIZED_SRC = "127.0.0.4"
LONG_TARGET_SRC = "127.0.0.5"
IDLE_SRC = "127.0.0.6"
SLOWLORIS_SRC = "127.0.0.7"
SLOW_BODY_SIGNED_SRC = "127.0.0.8"
SLOW_BODY_UNSIGNED_SRC = "127.0.0.9"
HEALTH_SRC = "127.0.0.10"
# Amplification shapes rotate over 127.0.1.1-250 so that most reach the full head check
# instead of the per-address 429.
AMPLIFICATION_SRCS = [f"127.0.1.{i}" for i in range(1, 251)]

# What each pattern may get besides "hang" (never allowed). "4xx" is any 400-499.
ALLOWED = {
    "amplification": {"4xx", "closed"},
    "oversized-head": {"4xx", "closed"},
    "long-target": {"4xx"},
    "idle-tls": {"4xx", "closed"},
    "idle-tcp-no-handshake": {"4xx", "closed"},
    "slowloris": {"4xx", "closed"},
    "slow-body-signed": {"4xx"},
    "slow-body-unsigned": {"4xx"},
    "bad-signature": {401, 429},
    "health-flood": {200},
}


class Cfg:
    host = "127.0.0.1"
    port = 0
    hostport = ""
    key = b""
    ctx = None
    idle = 5.0
    header = 5.0
    body = 5.0
    handshake = 10.0
    end = 0.0


def signed_headers(method, target, body, key=None):
    date = email.utils.formatdate(usegmt=True)
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    if key is None:
        sig = WRONG
    else:
        msg = f"{method}\n{target}\n{date};{Cfg.hostport};{digest}".encode()
        sig = base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()
    return [
        ("x-ms-date", date),
        ("x-ms-content-sha256", digest),
        ("authorization", f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"),
    ]


def request_bytes(method, target, headers, body=b""):
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    # nearest rank
    i = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


# ------------------------------------------------------------------------------------------------
# Raw HTTP/1.1 over TLS, for the hostile patterns


class Closed(Exception):
    pass


class Hang(Exception):
    pass


def connect(src, tls=True, timeout=10.0):
    raw = socket.create_connection((Cfg.host, Cfg.port), timeout=timeout, source_address=(src, 0))
    if not tls:
        return raw
    try:
        return Cfg.ctx.wrap_socket(raw, server_hostname=Cfg.host)
    except BaseException:
        raw.close()
        raise


def _recv(s, deadline):
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        raise Hang()
    except (OSError, ssl.SSLError):
        raise Closed()
    if not chunk:
        raise Closed()
    return chunk


def read_response(s, deadline, buf=b""):
    """(status, headers) of one response; its body is read and dropped."""
    while b"\r\n\r\n" not in buf:
        buf += _recv(s, deadline)
        if len(buf) > 1 << 20:
            raise Closed()
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            rest += _recv(s, deadline)
    else:
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            rest += _recv(s, deadline)
    return status, headers


def one_shot(src, payload, bound):
    """Sends one request on a new TLS connection; returns its outcome."""
    deadline = time.monotonic() + bound
    try:
        s = connect(src, timeout=bound)
    except socket.timeout:
        return "hang"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "closed"
    try:
        s.settimeout(bound)
        try:
            s.sendall(payload)
        except socket.timeout:
            return "hang"
        except OSError:
            pass  # closed while we were still writing; see whether it answered first
        try:
            status, _ = read_response(s, deadline)
            return status
        except Hang:
            return "hang"
        except Closed:
            return "closed"
    finally:
        s.close()


def trickle(s, first, drip, interval, bound):
    """Writes `first`, then `drip` every `interval` s until the server answers or closes.
    Returns (outcome, seconds from the end of `first`)."""
    deadline = time.monotonic() + bound
    try:
        s.sendall(first)
    except OSError:
        return "closed", 0.0
    since = time.monotonic()
    next_drip = since + interval
    while True:
        now = time.monotonic()
        if now >= deadline:
            return "hang", now - since
        ready = s.pending() if isinstance(s, ssl.SSLSocket) else 0
        if not ready:
            r, _, _ = select.select([s], [], [], max(0.0, min(next_drip, deadline) - now))
            ready = bool(r)
        if ready:
            try:
                status, _ = read_response(s, deadline)
                return status, time.monotonic() - since
            except Closed:
                return "closed", time.monotonic() - since
            except Hang:
                return "hang", time.monotonic() - since
        if time.monotonic() >= next_drip:
            next_drip += interval
            try:
                s.settimeout(5)
                s.sendall(drip)
            except socket.timeout:
                return "hang", time.monotonic() - since
            except OSError:
                # Closed: look for an answer sent just before.
                try:
                    status, _ = read_response(s, time.monotonic() + 1)
                    return status, time.monotonic() - since
                except (Closed, Hang):
                    return "closed", time.monotonic() - since


# ------------------------------------------------------------------------------------------------
# Hostile patterns


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = collections.defaultdict(collections.Counter)  # "pattern/variant" -> Counter
        self.durations = collections.defaultdict(list)  # "pattern/variant" -> seconds to close/answer
        self.notes = collections.Counter()

    def add(self, name, outcome, took=None):
        with self.lock:
            self.outcomes[name][str(outcome)] += 1
            if took is not None:
                self.durations[name].append(took)

    def note(self, what):
        with self.lock:
            self.notes[what] += 1


def paced(rate):
    """Yields until the end of the run, at most `rate` times a second (with jitter)."""
    interval = 1.0 / rate
    t = time.monotonic() + random.random() * interval
    while True:
        now = time.monotonic()
        if now >= Cfg.end:
            return
        if t > now:
            time.sleep(t - now)
        yield
        t = max(t + interval, time.monotonic() - interval)


def amplification_payloads():
    hp = Cfg.hostport
    date, digest, _ = (v for _, v in signed_headers("POST", CREATE, b""))
    base = [("host", hp), ("x-ms-date", date), ("x-ms-content-sha256", digest)]
    out = {}
    # (a) The original attack: one ~190 KB request naming a 150 KB header 20,000 times.
    out["a-190KB-names-150KB-header-20000x"] = request_bytes("POST", CREATE, base + [
        ("a", "v" * (150 * 1024)),
        ("authorization", "HMAC-SHA256 SignedHeaders=" + ";".join(["a"] * 20000) + f"&Signature={WRONG}"),
        ("content-length", "0"),
    ])
    # (b) The worst within the limits: 2000-byte target on a known route, ~31 KB of headers,
    # a 512-byte Authorization signing the three headers, wrongly.
    prefix, suffix = "/identities/8%3Aacs%3A", f"/:issueAccessToken?{API}"
    target = prefix + "a" * (2000 - len(prefix) - len(suffix)) + suffix
    auth = f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={WRONG}&pad="
    auth += "p" * (512 - len(auth))
    hs = base + [("authorization", auth), ("content-type", "application/json"), ("content-length", "0")]
    size = len(target) + sum(len(k) + len(v) + 4 for k, v in hs)
    room = 32 * 1024 - 64 - size
    for i in range(50):
        name = f"x-filler-{i:02}"
        hs.append((name, "f" * (room // 50 - len(name) - 4)))
    out["b-worst-within-limits-31KB"] = request_bytes("POST", target, hs)
    # (c) SignedHeaders naming host 50 times.
    out["c-signedheaders-host-50x"] = request_bytes("POST", CREATE, base + [
        ("authorization", "HMAC-SHA256 SignedHeaders=" + ";".join(["host"] * 50) + f"&Signature={WRONG}"),
        ("content-length", "0"),
    ])
    # (d) A 14 KB Authorization naming a 12 KB header 2,000 times (head under the limit).
    out["d-14KB-authorization-names-12KB-header"] = request_bytes("POST", CREATE, base + [
        ("x-big", "v" * (12 * 1024)),
        ("authorization", "HMAC-SHA256 SignedHeaders=" + ";".join(["x-big"] * 2000) + f"&Signature={WRONG}"),
        ("content-length", "0"),
    ])
    return out


def amplification(t, rate):
    n = 0
    for _ in paced(rate):
        payloads = amplification_payloads()
        name = list(payloads)[n % len(payloads)]
        src = AMPLIFICATION_SRCS[n % len(AMPLIFICATION_SRCS)]
        n += 1
        t0 = time.monotonic()
        t.add(f"amplification/{name}", one_shot(src, payloads[name], 15), time.monotonic() - t0)


def oversized(t, rate):
    hp = Cfg.hostport
    variants = {
        "40KB-header": lambda: request_bytes("GET", "/health", [("host", hp), ("x-big", "v" * 40 * 1024)]),
        "80-headers": lambda: request_bytes("GET", "/health", [("host", hp)] + [(f"x-h{i}", "v") for i in range(80)]),
        "200KB-head": lambda: request_bytes("POST", CREATE, [("host", hp)] + [(f"x-f{i}", "v" * 2000) for i in range(100)]),
    }
    names = list(variants)
    n = 0
    for _ in paced(rate):
        name = names[n % len(names)]
        n += 1
        t0 = time.monotonic()
        t.add(f"oversized-head/{name}", one_shot(OVERSIZED_SRC, variants[name](), 15), time.monotonic() - t0)


def long_target(t, rate):
    hp = Cfg.hostport
    variants = {
        "3000B": "/identities/" + "a" * 2970 + f"?{API}",
        "20000B": "/identities?" + API + "&pad=" + "p" * 19950,
    }
    names = list(variants)
    n = 0
    for _ in paced(rate):
        name = names[n % len(names)]
        n += 1
        payload = request_bytes("POST", variants[name], [("host", hp), ("content-length", "0")] + signed_headers("POST", variants[name], b""))
        t0 = time.monotonic()
        t.add(f"long-target/{name}", one_shot(LONG_TARGET_SRC, payload, 15), time.monotonic() - t0)


def idle(t, tls):
    """Open a connection, send nothing, wait for the server to close it."""
    name = "idle-tls" if tls else "idle-tcp-no-handshake"
    limit = Cfg.idle if tls else Cfg.handshake
    bound = limit + 10
    while time.monotonic() + bound < Cfg.end + 5:
        t0 = time.monotonic()
        try:
            s = connect(IDLE_SRC, tls=tls, timeout=bound)
        except OSError:
            t.add(name, "closed-in-handshake", time.monotonic() - t0)
            time.sleep(1)
            continue
        try:
            status, _ = read_response(s, t0 + bound)
            t.add(name, status, time.monotonic() - t0)
        except Closed:
            t.add(name, "closed", time.monotonic() - t0)
        except Hang:
            t.add(name, "hang", time.monotonic() - t0)
        finally:
            s.close()


def slowloris(t, variant):
    """Half a head, then one more header line (or one byte) a second, never ending it."""
    hp = Cfg.hostport
    first = f"POST {CREATE} HTTP/1.1\r\nHost: {hp}\r\n".encode()
    bound = Cfg.header + 10
    i = 0
    while time.monotonic() + bound < Cfg.end + 5:
        i += 1
        drip = f"x-slow-{i}: 1\r\n".encode() if variant == "header-lines" else b"a"
        try:
            s = connect(SLOWLORIS_SRC, timeout=10)
        except OSError:
            t.add(f"slowloris/{variant}", "closed-in-handshake")
            time.sleep(1)
            continue
        try:
            outcome, took = trickle(s, first, drip, 1.0, bound)
            t.add(f"slowloris/{variant}", outcome, took)
        finally:
            s.close()


def slow_body(t, signed):
    """A head announcing 200 body bytes, then one byte a second."""
    hp = Cfg.hostport
    body = b"{" + b" " * 198 + b"}"
    name = "slow-body-signed" if signed else "slow-body-unsigned"
    src = SLOW_BODY_SIGNED_SRC if signed else SLOW_BODY_UNSIGNED_SRC
    bound = Cfg.body + 10
    while time.monotonic() + bound < Cfg.end + 5:
        hs = [("host", hp), ("content-type", "application/json"), ("content-length", str(len(body)))]
        hs += signed_headers("POST", CREATE, body, Cfg.key if signed else None)
        try:
            s = connect(src, timeout=10)
        except OSError:
            t.add(name, "closed-in-handshake")
            time.sleep(1)
            continue
        try:
            outcome, took = trickle(s, request_bytes("POST", CREATE, hs, body[:5]), body[5:6], 1.0, bound)
            t.add(name, outcome, took)
        finally:
            s.close()
        if not signed:
            time.sleep(0.5)


def keepalive_loop(t, name, src, rate, make_request, check=None):
    """Requests on one kept-alive connection (reopened when the server closes it)."""
    s = None
    for _ in paced(rate):
        if s is None:
            try:
                s = connect(src, timeout=10)
            except OSError as e:
                t.add(name, f"connect-failed:{type(e).__name__}")
                time.sleep(0.5)
                continue
        try:
            s.settimeout(15)
            s.sendall(make_request())
            status, headers = read_response(s, time.monotonic() + 15)
            t.add(name, status)
            if check:
                check(status, headers)
            if headers.get("connection", "").lower() == "close":
                s.close()
                s = None
        except Hang:
            t.add(name, "hang")
            s.close()
            s = None
        except (Closed, OSError):
            t.add(name, "closed")
            s.close()
            s = None
    if s is not None:
        s.close()


def bad_signature(t, rate):
    hp = Cfg.hostport

    def make():
        return request_bytes("POST", CREATE, [("host", hp), ("content-length", "0")] + signed_headers("POST", CREATE, b""))

    def check(status, headers):
        if status == 429 and "retry-after" not in headers:
            t.note("bad-signature: 429 without Retry-After")

    keepalive_loop(t, "bad-signature", BAD_SIG_SRC, rate, make, check)


def health_flood(t, rate):
    req = request_bytes("GET", "/health", [("host", Cfg.hostport)])
    keepalive_loop(t, "health-flood", HEALTH_SRC, rate, lambda: req)


def hostile_main(q, rates):
    t = Tally()
    threads = [
        threading.Thread(target=amplification, args=(t, rates["amplification"])),
        threading.Thread(target=oversized, args=(t, rates["oversized"])),
        threading.Thread(target=long_target, args=(t, rates["long_target"])),
        threading.Thread(target=bad_signature, args=(t, rates["bad_signature"])),
    ]
    threads += [threading.Thread(target=health_flood, args=(t, rates["health"] / 2)) for _ in range(2)]
    threads += [threading.Thread(target=idle, args=(t, i % 4 != 3)) for i in range(rates["idle_conns"])]
    threads += [threading.Thread(target=slowloris, args=(t, "header-lines" if i % 2 else "bytes")) for i in range(rates["slowloris_conns"])]
    threads += [threading.Thread(target=slow_body, args=(t, i % 2 == 0)) for i in range(rates["slow_body_conns"])]
    for th in threads:
        th.daemon = True
        th.start()
    for th in threads:
        th.join()
    q.put(("hostile", {
        "outcomes": {k: dict(v) for k, v in t.outcomes.items()},
        "durations": {k: v for k, v in t.durations.items()},
        "notes": dict(t.notes),
    }))


# ------------------------------------------------------------------------------------------------
# Valid traffic


def valid_worker(idx, nthreads, rate, lat, errors, counts, lock):
    interval = nthreads / rate
    pool = []
    conn = None
    on_conn = 0
    next_t = time.monotonic() + interval * idx / nthreads
    while True:
        now = time.monotonic()
        if now >= Cfg.end:
            break
        if next_t > now:
            time.sleep(next_t - now)
        next_t = max(next_t + interval, time.monotonic() - interval)
        if not pool or random.random() < 0.1:
            op, target, body, want = "create", CREATE, b"{}", 201
        else:
            ident = random.choice(pool)
            op = "issue"
            target = f"/identities/{urllib.parse.quote(ident, safe='')}/:issueAccessToken?{API}"
            body, want = b'{"scopes":["chat"]}', 200
        headers = dict(signed_headers("POST", target, body, Cfg.key))
        headers["content-type"] = "application/json"
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPSConnection(Cfg.host, Cfg.port, context=Cfg.ctx, timeout=30,
                                                   source_address=(VALID_SRC, 0))
                conn.connect()
                on_conn = 0
            conn.request("POST", target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            took = time.perf_counter() - t0
            on_conn += 1
            ok = resp.status == want
            if ok:
                doc = json.loads(data)
                if op == "create":
                    pool.append(doc["identity"]["id"])
                    if len(pool) > 200:
                        pool.pop(0)
                else:
                    ok = bool(doc.get("token"))
            with lock:
                lat.append(took)
                counts[op] += 1
                if not ok:
                    errors[f"{op}: {resp.status}"] += 1
            if not ok or resp.getheader("connection", "").lower() == "close" or on_conn >= 100:
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 - every failure is counted
            took = time.perf_counter() - t0
            with lock:
                lat.append(took)
                counts[op] += 1
                errors[f"{op}: {type(e).__name__}: {e}"[:120]] += 1
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def valid_main(q, rate, nthreads):
    lat, errors, counts, lock = [], collections.Counter(), collections.Counter(), threading.Lock()
    threads = [threading.Thread(target=valid_worker, args=(i, nthreads, rate, lat, errors, counts, lock))
               for i in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    q.put(("valid", {"latencies_s": lat, "errors": dict(errors), "counts": dict(counts)}))


# ------------------------------------------------------------------------------------------------


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health_ok():
    try:
        c = http.client.HTTPSConnection(Cfg.host, Cfg.port, context=Cfg.ctx, timeout=10,
                                        source_address=(VALID_SRC, 0))
        c.request("GET", "/health")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--connection-string", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--valid-rate", type=float, default=50, help="valid requests per second")
    ap.add_argument("--valid-connections", type=int, default=4)
    ap.add_argument("--idle-timeout", type=float, default=5)
    ap.add_argument("--header-timeout", type=float, default=5)
    ap.add_argument("--body-timeout", type=float, default=5)
    ap.add_argument("--handshake-timeout", type=float, default=10)
    ap.add_argument("--p99-ms", type=float, default=50)
    ap.add_argument("--rss-mib", type=float, default=100)
    ap.add_argument("--out", help="also write the summary as JSON here")
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.endpoint)
    if u.hostname != "127.0.0.1":
        sys.exit(f"loopback only: {a.endpoint}")
    Cfg.port = u.port
    Cfg.hostport = f"127.0.0.1:{u.port}"
    parts = dict(p.split("=", 1) for p in a.connection_string.strip().split(";") if "=" in p)
    Cfg.key = base64.b64decode(parts["accesskey"])
    Cfg.ctx = ssl.create_default_context(cafile=a.ca)
    Cfg.idle, Cfg.header, Cfg.body, Cfg.handshake = a.idle_timeout, a.header_timeout, a.body_timeout, a.handshake_timeout
    Cfg.end = time.monotonic() + a.seconds
    rates = {"amplification": 4, "oversized": 3, "long_target": 3, "bad_signature": 20, "health": 200,
             "idle_conns": 20, "slowloris_conns": 20, "slow_body_conns": 10}

    rss0 = proc_status(a.pid, "VmRSS")
    cpu0, wall0 = proc_cpu_s(a.pid), time.monotonic()
    q = mp.get_context("fork").Queue()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=valid_main, args=(q, a.valid_rate, a.valid_connections)),
             ctx.Process(target=hostile_main, args=(q, rates))]
    for p in procs:
        p.start()

    rss_max, rss_samples, server_gone = rss0, [], False
    results = {}
    next_progress = time.monotonic() + 30
    while len(results) < len(procs):
        try:
            kind, data = q.get(timeout=1)
            results[kind] = data
        except Exception:  # queue.Empty
            pass
        try:
            rss = proc_status(a.pid, "VmRSS")
            rss_samples.append(rss)
            rss_max = max(rss_max, rss)
        except OSError:
            server_gone = True
        if time.monotonic() >= next_progress:
            next_progress += 30
            left = max(0, Cfg.end - time.monotonic())
            print(f"soak: {time.monotonic() - wall0:.0f} s, RSS {rss_samples[-1] / 1024 if rss_samples else 0:.1f} MiB "
                  f"(max {rss_max / 1024:.1f}), {left:.0f} s of traffic left", file=sys.stderr, flush=True)
        if time.monotonic() > Cfg.end + 120:
            print("soak: workers did not finish within 120 s of the end", file=sys.stderr)
            break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    wall = time.monotonic() - wall0
    try:
        cpu = proc_cpu_s(a.pid) - cpu0
    except OSError:
        cpu, server_gone = float("nan"), True
    alive = not server_gone and health_ok()
    time.sleep(1)
    try:
        rss_end = proc_status(a.pid, "VmRSS")
        hwm = proc_status(a.pid, "VmHWM")
        fds_end = len(os.listdir(f"/proc/{a.pid}/fd"))
    except OSError:
        rss_end = hwm = fds_end = None

    failures = []
    v = results.get("valid")
    if v is None:
        failures.append("valid traffic produced no result")
        v = {"latencies_s": [], "errors": {}, "counts": {}}
    lat = sorted(x * 1000 for x in v["latencies_s"])
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    if not lat:
        failures.append("no valid request was made")
    if v["errors"]:
        failures.append(f"valid requests failed: {v['errors']}")
    if p99 is not None and p99 >= a.p99_ms:
        failures.append(f"valid p99 {p99:.1f} ms >= {a.p99_ms:g} ms")
    if rss_max >= a.rss_mib * 1024:
        failures.append(f"max RSS {rss_max / 1024:.1f} MiB >= {a.rss_mib:g} MiB")
    if not alive:
        failures.append("the server did not answer GET /health after the soak")

    h = results.get("hostile")
    if h is None:
        failures.append("hostile traffic produced no result")
        h = {"outcomes": {}, "durations": {}, "notes": {}}
    patterns = collections.defaultdict(collections.Counter)
    for name, outcomes in h["outcomes"].items():
        pattern = name.split("/")[0]
        allowed = ALLOWED[pattern]
        for outcome, n in outcomes.items():
            patterns[pattern][outcome] += n
            code = int(outcome) if outcome.isdigit() else None
            if code is None:
                ok = outcome in allowed
            else:
                ok = code in allowed or ("4xx" in allowed and 400 <= code < 500)
            if not ok:
                failures.append(f"{name}: {n} x {outcome}")
    for pattern in ALLOWED:
        if not patterns.get(pattern):
            failures.append(f"{pattern}: no request completed")
    if a.seconds >= 10 and not patterns["bad-signature"].get("429"):
        failures.append("bad-signature: the failed-authentication limit never answered 429")
    for what, n in h["notes"].items():
        failures.append(f"{what}: {n}")

    summary = {
        "seconds": a.seconds,
        "wall_seconds": round(wall, 1),
        "valid": {
            "requests": len(lat),
            "by_operation": v["counts"],
            "rate_per_s": round(len(lat) / a.seconds, 1),
            "p50_ms": round(p50, 2) if p50 is not None else None,
            "p99_ms": round(p99, 2) if p99 is not None else None,
            "p999_ms": round(percentile(lat, 99.9), 2) if lat else None,
            "max_ms": round(lat[-1], 2) if lat else None,
            "errors": v["errors"],
        },
        "hostile": {k: dict(c) for k, c in sorted(patterns.items())},
        "hostile_by_variant": {k: v2 for k, v2 in sorted(h["outcomes"].items())},
        "close_seconds": {k: {"median": round(sorted(d)[len(d) // 2], 2), "max": round(max(d), 2)}
                          for k, d in sorted(h["durations"].items()) if d},
        "server": {
            "rss_start_mib": round(rss0 / 1024, 1),
            "rss_max_mib": round(rss_max / 1024, 1),
            "rss_end_mib": round(rss_end / 1024, 1) if rss_end else None,
            "vmhwm_mib": round(hwm / 1024, 1) if hwm else None,
            "open_fds_end": fds_end,
            "cpu_cores_avg": round(cpu / wall, 2),
            "answers_health_after": alive,
        },
        "failures": failures,
    }
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)

    s = summary
    print(f"duration {a.seconds:g} s (wall {wall:.0f} s)")
    vv = s["valid"]
    print(f"valid (from {VALID_SRC}): {vv['requests']} requests {vv['by_operation']}, {vv['rate_per_s']}/s, "
          f"p50 {vv['p50_ms']} ms, p99 {vv['p99_ms']} ms, p99.9 {vv['p999_ms']} ms, max {vv['max_ms']} ms, "
          f"errors {sum(v['errors'].values())}")
    print("hostile (outcome: count):")
    for k, c in s["hostile"].items():
        print(f"  {k:<22} " + ", ".join(f"{o}: {n}" for o, n in sorted(c.items())))
    print("  by variant:")
    for k, c in s["hostile_by_variant"].items():
        d = s["close_seconds"].get(k)
        extra = f"  (answered/closed after median {d['median']} s, max {d['max']} s)" if d else ""
        print(f"    {k:<48} " + ", ".join(f"{o}: {n}" for o, n in sorted(c.items())) + extra)
    sv = s["server"]
    print(f"server: RSS start {sv['rss_start_mib']} MiB, max {sv['rss_max_mib']} MiB, end {sv['rss_end_mib']} MiB "
          f"(VmHWM {sv['vmhwm_mib']} MiB); CPU {sv['cpu_cores_avg']} cores on average; "
          f"{sv['open_fds_end']} open fds after; answers /health: {alive}")
    if failures:
        print("FAIL:")
        for f in failures:
            print(f"  {f}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
