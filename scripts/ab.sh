#!/usr/bin/env bash
# Compares two builds of callsign on the same machine: the issue and create workloads, run
# against each build in turn (interleaved, so drift of the machine hits both alike), each server
# fresh on an embedded store. The newer build's load generator drives both servers.
#
#   bash scripts/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
#
# OLD_FLAGS / NEW_FLAGS add `serve` flags to one side (the same binary twice compares a setting:
# NEW_FLAGS=--audit-token-issue WORKLOADS=issue bash scripts/ab.sh BIN BIN); WORKLOADS picks the
# workloads (default "issue create").
#
# Prints one line per run: throughput, p99, server CPU per operation and its ratio to one bare
# ES256 signature measured in the same run (the ratio is what compares across machines).
set -euo pipefail
OLD=${1:?old binary}
NEW=${2:?new binary}
ROUNDS=${3:-3}

run() { # binary label workload [serve flags…]
    local bin=$1 label=$2 workload=$3 dir pid cs
    shift 3
    dir=$(mktemp -d)
    "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir" "$@" >"$dir/out" 2>"$dir/err" &
    pid=$!
    for _ in $(seq 1 100); do
        grep -q "accesskey=" "$dir/out" 2>/dev/null && break
        sleep 0.1
    done
    cs=$(grep -o 'endpoint=[^ ]*' "$dir/out" | head -1)
    "$NEW" bench --connection-string "$cs" --data-dir "$dir" --server-pid "$pid" \
        --workload "$workload" --duration 8 --warmup 2 --json >"$dir/bench.json" 2>"$dir/bench.err"
    python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], 'ops/s %.0f' % d['ops_per_s'], 'p99 %d us' % d['latency_us']['p99'],
      'server %.1f us/op' % d['server']['cpu_us_per_op'], '= %.2f x ES256' % d['server_cpu_over_es256'])
" "$dir/bench.json" "$label" "$workload"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}

for _ in $(seq 1 "$ROUNDS"); do
    for workload in ${WORKLOADS:-issue create}; do
        # shellcheck disable=SC2086 # the flags are words
        run "$OLD" old "$workload" ${OLD_FLAGS:-}
        # shellcheck disable=SC2086
        run "$NEW" new "$workload" ${NEW_FLAGS:-}
    done
done
