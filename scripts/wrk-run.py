#!/usr/bin/env python3
"""One measured wrk run against a server on this machine, as JSON on stdout.

    wrk-run.py --url URL --script LUA --pid PID [--duration 10] [--warmup 2] [--connections 16]

Runs wrk (one thread) for the warm-up, then for the measured window, and reads the CPU time of
the server's process tree (the process and every descendant: nginx's worker, node's cluster
workers) and of the whole machine from /proc just around the measured run. The script must end
with scripts/wrk/report.lua's done() so that wrk prints its summary as one JSON line.
"""
import argparse
import json
import os
import resource
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root):
    """User + system seconds of `root` and all its live descendants."""
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        pid = int(entry)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p and p != root:
            p = parent.get(p)
        if p == root:
            total += seconds
    return total


def machine_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def wrk(args, seconds):
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", args.script, args.url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith("{")]
    if not line:
        sys.exit(f"wrk printed no report:\n{out}")
    return json.loads(line[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--script", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if args.warmup > 0:
        wrk(args, args.warmup)
    cpu0, (busy0, all0) = tree_cpu_seconds(args.pid), machine_cpu()
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = wrk(args, args.duration)
    cpu1, (busy1, all1) = tree_cpu_seconds(args.pid), machine_cpu()
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = r["duration_us"] / 1e6
    errors = sum(r["errors"].values())
    ok = r["requests"] - r["errors"]["status"]
    server = cpu1 - cpu0
    client = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    machine = (busy1 - busy0) / max(all1 - all0, 1) * os.cpu_count()
    json.dump({
        "ok": ok,
        "ops_per_s": ok / seconds,
        "errors": errors,
        "wrk": r,
        "connections": args.connections,
        "server_cores": server / seconds,
        "cpu_us_per_op": server * 1e6 / max(ok, 1),
        "client_cpu_us_per_op": client * 1e6 / max(ok, 1),
        "other_cores_busy": max(machine - (server + client) / seconds, 0.0),
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
