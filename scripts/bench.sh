#!/usr/bin/env bash
# Builds release, starts servers on temporary data (and fresh PostgreSQL databases), runs the
# standard workloads and the scale runs, and writes the result table.
#
#   bash scripts/bench.sh                 # everything: both backends, 10 k and 10 M identities
#   BENCH_SCALE="10000" BENCH_SCALE_PG="10000" bash scripts/bench.sh   # skip the 10 M runs
#   BENCH_BACKENDS=sqlite BENCH_DURATION=3 bash scripts/bench.sh
#   BENCH_BACKENDS= BENCH_SCALE= BENCH_SCALE_PG= bash scripts/bench.sh  # attribution only
#
# A run is repeated (up to twice) when other processes took more than a quarter of a core
# while it was measured; the "other load" column shows what was left.
#
# Settings (environment):
#   BENCH_DURATION     measured seconds per workload            (10)
#   BENCH_WARMUP       warm-up seconds per workload             (2)
#   BENCH_CONNECTIONS  concurrent connections                   (16)
#   BENCH_BACKENDS     "sqlite postgres"
#   BENCH_WORKLOADS    the standard workloads per backend ("create create-c64 create-token issue
#                      revoke delete mix")
#   BENCH_SCALE        directory sizes for the scale runs       ("10000 10000000")
#   BENCH_SCALE_PG     directory sizes for PostgreSQL scale     ("10000 10000000")
#   BENCH_ATTRIBUTION  1 to also run issue without request logs and without TLS (1)
#   BENCH_FLOOR        rounds of the floor comparison under wrk: nginx's fixed 200, callsign's
#                      issue, node-oidc-provider's token endpoint (3; 0 skips it)
#   BENCH_STARTUP      1 to measure start to ready (1)
#   BENCH_VERIFY       1 to measure callsign-verify: verifications/s per algorithm (criterion)
#                      and revocation propagation to a following verifier under 10,000
#                      verifications/s (1)
# (an empty BENCH_BACKENDS / BENCH_SCALE / BENCH_SCALE_PG skips that part)
#   BENCH_PG           PostgreSQL server URL without database   (postgres://postgres@127.0.0.1:5432)
#   BENCH_BIN          a callsign binary to measure instead of building release (the test
#                      suite's brief run of the tools uses its debug build)
#   BENCH_QUIET        0: neither wait for a quiet machine nor repeat runs (1)
#   BENCH_CHECK        1: exit non-zero when a floor run had an error or issued nothing (0)
#   BENCH_INSTALL      1: install wrk and nginx-light with apt-get when missing (0)
#   BENCH_OUT          where results go                         (target/bench/<UTC time>)
#
# Every load goes to 127.0.0.1 only, every run is bounded in time and count, and every server
# this script starts is stopped by its PID when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-16}
BACKENDS=${BENCH_BACKENDS-sqlite postgres}
SCALE=${BENCH_SCALE-10000 10000000}
SCALE_PG=${BENCH_SCALE_PG-10000 10000000}
ATTRIBUTION=${BENCH_ATTRIBUTION:-1}
FLOOR_ROUNDS=${BENCH_FLOOR:-3}
STARTUP=${BENCH_STARTUP:-1}
VERIFY=${BENCH_VERIFY:-1}
WORKLOADS=${BENCH_WORKLOADS-create create-c64 create-token issue revoke delete mix}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${BENCH_OUT:-$ROOT/target/bench/$STAMP}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/callsign-bench.XXXXXX")

SERVER_PID=""
PG_DBS=()
OTHER_PIDS=()
cleanup() {
    for pid in "${OTHER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    for db in "${PG_DBS[@]}"; do
        psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# A private copy, so that a concurrent build cannot swap the binary mid-run.
BIN="$OUT/callsign"
if [ -n "${BENCH_BIN:-}" ]; then
    cp "$BENCH_BIN" "$BIN"
else
    echo "==> cargo build --release -p callsign"
    cargo build --release -p callsign
    cp "${CARGO_TARGET_DIR:-target}/release/callsign" "$BIN"
fi
QUIET=${BENCH_QUIET:-1}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "rustc: $(rustc --version)"
    echo "postgres: $(psql --version 2>/dev/null || echo none)"
    echo "settings: duration ${DURATION}s, warm-up ${WARMUP}s, ${CONNECTIONS} connections"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

# start_server LABEL DATA_DIR [serve flags...]: starts `callsign serve` on a free port, waits for
# its banner and sets SERVER_PID, ENDPOINT and CS (the connection string).
start_server() {
    local label=$1 dir=$2
    shift 2
    env ${SERVER_ENV:-} "$BIN" serve --listen 127.0.0.1:0 --data-dir "$dir" "$@" >"$OUT/$label.stdout" 2>"$OUT/$label.log" &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        grep -q "listening on" "$OUT/$label.stdout" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/$label.log"; echo "server failed"; exit 1; }
        sleep 0.1
    done
    ENDPOINT=$(grep -m1 -o 'https\?://[^ ]*' "$OUT/$label.stdout")
    local db=()
    for a in "$@"; do
        case "$a" in postgres://*) db=(--database-url "$a") ;; esac
    done
    CS=$("$BIN" connection-string --data-dir "$dir" --endpoint "$ENDPOINT" "${db[@]}")
    echo "--> $label: server pid $SERVER_PID at $ENDPOINT"
}

stop_server() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=""
}

idle_rss() {
    sleep 1
    awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"
}

# Cores busy on the whole machine over one second (this script's servers are idle here).
machine_busy() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    echo "$a $b" | awk '{busy=$3-$1; idle=$4-$2; printf "%.2f", (busy/(busy+idle))*'"$(nproc)"'}'
}

# Waits (up to two minutes) until other work on the machine has calmed down.
wait_quiet() {
    [ "$QUIET" = 1 ] || return 0
    local busy
    for _ in $(seq 1 120); do
        busy=$(machine_busy)
        awk -v b="$busy" 'BEGIN {exit !(b < 0.25)}' && return 0
    done
    echo "    (machine still busy: $busy cores; measuring anyway)"
}

# run LABEL DATA_DIR [bench flags...]: one workload; repeated (up to twice) when other processes
# took more than a quarter of a core during the measured window.
run() {
    local label=$1 dir=$2 attempt
    shift 2
    for attempt in 1 2 3; do
        wait_quiet
        run_once "$label" "$dir" "$@"
        python3 -c "import json,sys; sys.exit(0 if json.load(open('$OUT/$label.json'))['other_cores_busy'] < 0.25 else 1)" && return 0
        echo "    other processes competed for the CPU; again"
    done
}

run_once() {
    local label=$1 dir=$2
    shift 2
    echo "--> $label"
    local warmup=(--warmup "$WARMUP") conns=(--connections "$CONNECTIONS") db=()
    case " $* " in *" --warmup "*) warmup=() ;; esac
    case " $* " in *" --connections "*) conns=() ;; esac
    # PostgreSQL's own CPU is in its backend processes, counted separately.
    if [ -n "${DB_PROCESS:-}" ]; then
        db=(--database-process "$DB_PROCESS")
    fi
    "$BIN" bench --connection-string "$CS" --data-dir "$dir" --server-pid "$SERVER_PID" \
        "${conns[@]}" --duration "$DURATION" "${warmup[@]}" "${db[@]}" --json "$@" \
        >"$OUT/$label.json" 2>"$OUT/$label.progress"
    python3 - "$OUT/$label.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("server") or {}
d = r.get("database") or {}
print(f"    {r['ops_per_s']:>9.0f} ops/s  p50 {r['latency_us']['p50']} µs  p99 {r['latency_us']['p99']} µs"
      f"  errors {r['error_total']}  server {s.get('cpu_us_per_op', 0):.1f} µs/op"
      f"  ({(r.get('server_cpu_over_es256') or 0):.2f} x ES256 {r.get('es256_sign_us') or 0:.1f} µs)"
      + (f"  database {d['cpu_us_per_op']:.1f} µs/op" if d else ""))
PY
}

# Creates a fresh database and sets DB_URL (not echoed: a subshell would lose the cleanup list).
new_pg_db() {
    local db="callsign_bench_$(date +%s%N | tail -c 10)"
    psql "$PG/postgres" -qc "CREATE DATABASE $db" >/dev/null
    PG_DBS+=("$db")
    DB_URL="$PG/$db"
}

# Start to ready: spawn the server and poll GET /health until it answers 200 (first start on an
# empty data dir, then restarts on the same data).
if [ "$STARTUP" = 1 ]; then
echo "==> start to ready"
wait_quiet
python3 - "$BIN" "$WORK/startup" >"$OUT/startup.json" <<'PY'
import json, os, signal, socket, ssl, statistics, subprocess, sys, time
binary, data = sys.argv[1], sys.argv[2]

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def once(data):
    port = free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = None
    while time.perf_counter() - t0 < 10:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        ready = (time.perf_counter() - t0) * 1000
                        break
        except OSError:
            time.sleep(0.001)
    time.sleep(1)
    with open(f"/proc/{p.pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    return ready, rss

# First starts on empty data dirs (database, resource, signing key, local CA), then restarts.
firsts = [once(f"{data}-{i}") for i in range(3)]
restarts = [once(f"{data}-2") for _ in range(5)]
print(json.dumps({
    "first_start_ms": [r[0] for r in firsts],
    "first_start_median_ms": statistics.median(r[0] for r in firsts),
    "restart_ms": [r[0] for r in restarts],
    "restart_median_ms": statistics.median(r[0] for r in restarts),
    "idle_rss_kib": statistics.median(r[1] for r in restarts),
}))
PY
cat "$OUT/startup.json"
fi

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_listening PORT PID LOG: until something accepts on the port (10 s), or the process died
# (then the end of its log is shown).
wait_listening() {
    for _ in $(seq 1 100); do
        python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $1), timeout=0.2)" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { echo "process $2 exited; the end of $3:"; tail -5 "$3"; exit 1; }
        sleep 0.1
    done
    echo "nothing listens on $1; the end of $3:"; tail -5 "$3"; exit 1
}

# wrk_run LABEL URL SCRIPT PID: one measured wrk run (scripts/wrk-run.py), repeated (up to
# twice) when other processes took more than a quarter of a core.
wrk_run() {
    local label=$1 url=$2 script=$3 pid=$4 attempt
    for attempt in 1 2 3; do
        wait_quiet
        python3 scripts/wrk-run.py --url "$url" --script "$script" --pid "$pid" \
            --duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS" >"$OUT/$label.json"
        if python3 - "$OUT/$label.json" "$QUIET" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"--> {sys.argv[1].rsplit('/', 1)[-1][:-5]}: {r['ops_per_s']:>9.0f} ops/s  p99 {r['wrk']['latency_us']['p99']} µs"
      f"  errors {r['errors']}  server {r['cpu_us_per_op']:.1f} µs/op  client {r['client_cpu_us_per_op']:.1f} µs/op"
      f"  other {r['other_cores_busy']:.2f} cores")
sys.exit(0 if r["other_cores_busy"] < 0.25 or sys.argv[2] != "1" else 1)
PY
        then
            return 0
        fi
        echo "    other processes competed for the CPU; again"
    done
}

# The floor: the same load generator (wrk, one thread, the same connections) against nginx
# answering a fixed 200 (one worker, no log), callsign issuing tokens (default configuration,
# pre-signed requests), and node-oidc-provider issuing ES256 JWT access tokens by
# client_credentials (two cluster workers); interleaved rounds, the bare ES256 signature measured
# before each callsign run.
if [ "$FLOOR_ROUNDS" -gt 0 ]; then
    echo "==> floor: nginx / callsign issue / node-oidc-provider under wrk ($FLOOR_ROUNDS rounds)"
    if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
        if [ "${BENCH_INSTALL:-0}" != 1 ]; then
            echo "the floor comparison needs wrk and nginx (Debian: apt-get install wrk nginx-light);"
            echo "install them, run with BENCH_INSTALL=1 to have this script install them, or BENCH_FLOOR=0"
            exit 1
        fi
        echo "--> installing wrk and nginx-light"
        ${SUDO:-} apt-get install -y -qq wrk nginx-light >/dev/null
    fi
    command -v node >/dev/null || { echo "the floor comparison needs Node.js (node-oidc-provider), or BENCH_FLOOR=0"; exit 1; }
    [ -d bench/oidc-provider/node_modules ] || (cd bench/oidc-provider && npm ci --silent --no-audit --no-fund)
    nginx -v 2>&1 | sed 's/^/    /'
    echo "    wrk: $(wrk -v 2>&1 | head -1)"
    mkdir -p "$WORK/nginx"
    NGINX_PORT=$(free_port)
    sed -e "s#@DIR@#$WORK/nginx#g" -e "s#@PORT@#$NGINX_PORT#g" scripts/wrk/nginx.conf >"$WORK/nginx/nginx.conf"
    nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2>"$OUT/nginx.log" &
    NGINX_PID=$!
    OTHER_PIDS+=("$NGINX_PID")
    wait_listening "$NGINX_PORT" "$NGINX_PID" "$OUT/nginx.log"
    OIDC_PORT=$(free_port)
    (cd bench/oidc-provider && PORT=$OIDC_PORT exec node server.mjs) >"$OUT/oidc.stdout" 2>"$OUT/oidc.log" &
    OIDC_PID=$!
    OTHER_PIDS+=("$OIDC_PID")
    wait_listening "$OIDC_PORT" "$OIDC_PID" "$OUT/oidc.log"
    cat scripts/wrk/report.lua >"$WORK/nginx.lua"
    cat scripts/wrk/oidc-token.lua scripts/wrk/report.lua >"$WORK/oidc.lua"
    start_server floor-callsign "$WORK/floor-callsign"
    for round in $(seq 1 "$FLOOR_ROUNDS"); do
        wrk_run "floor-nginx-$round" "http://127.0.0.1:$NGINX_PORT/" "$WORK/nginx.lua" "$NGINX_PID"
        # Signed just before the run: the requests are valid for 15 minutes.
        COMMUNICATION_SERVICES_CONNECTION_STRING="$CS" "$BIN" bench --data-dir "$WORK/floor-callsign" \
            --wrk-script "$WORK/issue.lua" --quiet >"$OUT/floor-signature-$round.json"
        cat scripts/wrk/report.lua >>"$WORK/issue.lua"
        wrk_run "floor-callsign-$round" "$ENDPOINT" "$WORK/issue.lua" "$SERVER_PID"
        wrk_run "floor-oidc-$round" "http://127.0.0.1:$OIDC_PORT/" "$WORK/oidc.lua" "$OIDC_PID"
    done
    if [ "${BENCH_CHECK:-0}" = 1 ]; then
        python3 - "$OUT" <<'PY'
import glob, json, sys
runs = sorted(glob.glob(f"{sys.argv[1]}/floor-*-*.json"))
bad = [p for p in runs if "signature" not in p and (json.load(open(p))["errors"] or json.load(open(p))["ok"] == 0)]
sigs = [json.load(open(p)).get("es256_sign_us") for p in runs if "signature" in p]
if bad or not runs or not all(sigs):
    sys.exit(f"floor runs with errors or no answers: {bad or 'no runs'}")
print(f"    {len(runs)} floor runs, every one answered without an error")
PY
    fi
    stop_server
    for pid in "$NGINX_PID" "$OIDC_PID"; do
        kill -TERM "$pid"
        wait "$pid" || true
    done
    OTHER_PIDS=()
fi

for backend in $BACKENDS; do
    echo "==> standard workloads on $backend"
    dir="$WORK/$backend"
    flags=()
    DB_PROCESS=""
    if [ "$backend" = postgres ]; then
        new_pg_db
        flags=(--database-url "$DB_URL")
        DB_PROCESS=postgres
    fi
    start_server "$backend" "$dir" "${flags[@]}"
    echo "{\"idle_rss_kib\": $(idle_rss)}" >"$OUT/$backend-idle.json"
    for w in $WORKLOADS; do
        case $w in
            create-c64) run "$backend-$w" "$dir" --workload create --connections 64 ;;
            delete) run "$backend-$w" "$dir" --workload delete --warmup 1 --requests 60000 --pool 90000 ;;
            *) run "$backend-$w" "$dir" --workload "$w" ;;
        esac
    done
    stop_server
done
DB_PROCESS=""

if [ "$ATTRIBUTION" = 1 ]; then
    # Where the server's time per token goes: the issue workload on identical fresh servers
    # (10,000 seeded identities) as configured by default, without the per-request log line,
    # and without it over plain HTTP; three rounds, interleaved. The differences are what
    # logging and TLS cost per token.
    echo "==> issue: default / no request logs / no request logs and no TLS (3 rounds)"
    for round in 1 2 3; do
        for variant in default nolog plain-nolog; do
            dir="$WORK/attr-$variant-$round"
            "$BIN" seed --count 10000 --data-dir "$dir" --quiet >/dev/null
            env=""
            extra=()
            case $variant in
                nolog) env="RUST_LOG=warn" ;;
                plain-nolog) env="RUST_LOG=warn"; extra=(--plain-http) ;;
            esac
            SERVER_ENV="$env" start_server "attr-$variant-$round" "$dir" "${extra[@]}"
            run "attr-$variant-$round" "$dir" --workload issue --seeded 10000
            stop_server
            rm -rf "$dir"
        done
    done
fi

if [ "$VERIFY" = 1 ]; then
    echo "==> callsign-verify: verifications per second, one thread, cached key"
    wait_quiet
    cargo bench -p callsign-verify --bench verify -- --warm-up-time 1 --measurement-time 3 \
        >"$OUT/verify.txt" 2>"$OUT/verify.log"
    grep -E '^verify/|time:' "$OUT/verify.txt" | sed 's/^/    /'
    echo "==> revocation propagation to a following verifier (ES256, 10,000 verifications/s)"
    cargo build --release -q -p callsign-verify --example propagation
    start_server propagation "$WORK/propagation"
    resource=$(grep -m1 -o 'resource [0-9a-f-]*' "$OUT/propagation.stdout" | cut -d' ' -f2)
    wait_quiet
    CALLSIGN_CONNECTION_STRING="$CS" CALLSIGN_RESOURCE_ID="$resource" CALLSIGN_CA="$WORK/propagation/tls/ca.pem" \
        "${CARGO_TARGET_DIR:-target}/release/examples/propagation" --server-pid "$SERVER_PID" \
        >"$OUT/propagation.txt" 2>"$OUT/propagation.log" || echo "    (propagation reported a failure; see $OUT/propagation.txt)"
    sed 's/^/    /' "$OUT/propagation.txt"
    stop_server
fi

scale_run() {
    local backend=$1 n=$2
    echo "==> issue with $n identities on $backend"
    local dir="$WORK/$backend-scale-$n" flags=() seedflags=()
    DB_PROCESS=""
    if [ "$backend" = postgres ]; then
        new_pg_db
        flags=(--database-url "$DB_URL")
        seedflags=(--database-url "$DB_URL")
        DB_PROCESS=postgres
    fi
    "$BIN" seed --count "$n" --data-dir "$dir" "${seedflags[@]}" --json >"$OUT/$backend-seed-$n.json" 2>"$OUT/$backend-seed-$n.progress"
    cat "$OUT/$backend-seed-$n.json"
    # The seed's writes reach the disk before the measured run, not during it (10 M rows leave
    # gigabytes of dirty pages that the kernel, or PostgreSQL's checkpointer, would write
    # back while tokens are issued).
    if [ "$backend" = postgres ]; then
        psql "$DB_URL" -qc "CHECKPOINT" >/dev/null
    fi
    sync
    start_server "$backend-scale-$n" "$dir" "${flags[@]}"
    echo "{\"idle_rss_kib\": $(idle_rss)}" >"$OUT/$backend-scale-$n-idle.json"
    run "$backend-scale-$n-issue" "$dir" --workload issue --seeded "$n"
    stop_server
    DB_PROCESS=""
    rm -rf "$dir"
}

for n in $SCALE; do
    case " $BACKENDS " in *" sqlite "*) scale_run sqlite "$n" ;; esac
done
for n in $SCALE_PG; do
    case " $BACKENDS " in *" postgres "*) scale_run postgres "$n" ;; esac
done

python3 - "$OUT" >"$OUT/results.md" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None

rows = [(b, w) for b in ("sqlite", "postgres") for w in ("create", "create-c64", "create-token", "issue", "revoke", "delete", "mix")]
if any(load(f"{b}-{w}.json") for b, w in rows):
  print("| backend | workload | conns | ops/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | errors | server CPU µs/op | x ES256 | PostgreSQL CPU µs/op | client CPU µs/op | other load (cores) | server RSS MiB |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for backend, w in rows:
    r = load(f"{backend}-{w}.json")
    if not r:
        continue
    l, s, d = r["latency_us"], r.get("server") or {}, r.get("database") or {}
    errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
    db = f"{d['cpu_us_per_op']:.1f}" if d else "–"
    print(f"| {backend} | {w} | {r['connections']} | {r['ops_per_s']:,.0f} | {l['p50']:,} | {l['p90']:,} | {l['p99']:,} | {l['p999']:,} | {l['max']:,} | {errs} "
          f"| {s.get('cpu_us_per_op', 0):.1f} | {(r.get('server_cpu_over_es256') or 0):.2f} | {db} | {r['client_cpu_us_per_op']:.1f} | {r['other_cores_busy']:.2f} | {s.get('rss_kib', 0)/1024:.1f} |")
print()
sign = [r["es256_sign_us"] for r in (load(f) for f in sorted(os.listdir(out)) if f.endswith(".json") and not f.startswith("floor-")) if isinstance(r, dict) and r.get("es256_sign_us")]
if sign:
    print(f"Bare ES256 signature, measured at the start of every run above: {min(sign):.1f} to {max(sign):.1f} µs.")
    print()
scale = glob.glob(os.path.join(out, "*-scale-*-issue.json"))
if scale:
  print("| backend | identities | seed time s | seed /s | issue ops/s | p50 µs | p99 µs | server CPU µs/op | PostgreSQL CPU µs/op | idle RSS MiB | RSS after run MiB | peak RSS MiB |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for f in sorted(glob.glob(os.path.join(out, "*-scale-*-issue.json")), key=lambda p: (p.split("/")[-1].split("-")[0], int(p.split("-scale-")[1].split("-")[0]))):
    name = os.path.basename(f)
    backend, n = name.split("-scale-")[0], int(name.split("-scale-")[1].split("-")[0])
    r, seed, idle = json.load(open(f)), load(f"{backend}-seed-{n}.json") or {}, load(f"{backend}-scale-{n}-idle.json") or {}
    s, d = r.get("server") or {}, r.get("database") or {}
    db = f"{d['cpu_us_per_op']:.1f}" if d else "–"
    print(f"| {backend} | {n:,} | {seed.get('elapsed_s', 0):.1f} | {seed.get('per_s', 0):,.0f} | {r['ops_per_s']:,.0f} | {r['latency_us']['p50']:,} | {r['latency_us']['p99']:,} "
          f"| {s.get('cpu_us_per_op', 0):.1f} | {db} | {idle.get('idle_rss_kib', 0)/1024:.1f} | {s.get('rss_kib', 0)/1024:.1f} | {s.get('rss_peak_kib', 0)/1024:.1f} |")
if scale:
    print()
attr = {}
for v in ("default", "nolog", "plain-nolog"):
    runs = [load(f"attr-{v}-{i}.json") for i in (1, 2, 3)]
    runs = [r for r in runs if r]
    if runs:
        attr[v] = runs
if attr:
    import statistics
    print("| issue, fresh server with 10,000 seeded identities | ops/s (median of 3) | server CPU µs/op (each round) | median | x ES256 |")
    print("|---|---:|---:|---:|---:|")
    names = {"default": "as configured by default (TLS, one info log line per request)",
             "nolog": "RUST_LOG=warn (no per-request log line)",
             "plain-nolog": "RUST_LOG=warn and --plain-http (no log line, no TLS)"}
    for v, runs in attr.items():
        cpu = [r["server"]["cpu_us_per_op"] for r in runs]
        ratio = statistics.median(r["server_cpu_over_es256"] for r in runs)
        print(f"| {names[v]} | {statistics.median(r['ops_per_s'] for r in runs):,.0f} | "
              f"{', '.join(f'{c:.1f}' for c in cpu)} | {statistics.median(cpu):.1f} | {ratio:.2f} |")
    print()
rounds = sorted(int(f[len("floor-nginx-"):-5]) for f in os.listdir(out) if f.startswith("floor-nginx-") and f.endswith(".json"))
if rounds:
    import statistics
    print("Server CPU per request under wrk (one thread, the same connections); nginx and node-oidc-provider over plain HTTP,")
    print("callsign over HTTPS (its default), issuing to a pool of 1,000 identities; other load: cores used by other processes.")
    print()
    print("| round | nginx fixed 200 µs/req (req/s) | bare ES256 µs | floor µs | callsign issue µs/token (tokens/s, p99 ms) | × floor | node-oidc-provider µs/token (tokens/s) | × floor | other load (cores) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios, oidc_ratios = [], []
    for i in rounds:
        n, c, o, sig = (load(f"floor-{k}-{i}.json") for k in ("nginx", "callsign", "oidc", "signature"))
        if not (n and c and o and sig):
            continue
        floor = n["cpu_us_per_op"] + sig["es256_sign_us"]
        ratios.append(c["cpu_us_per_op"] / floor)
        oidc_ratios.append(o["cpu_us_per_op"] / floor)
        print(f"| {i} | {n['cpu_us_per_op']:.1f} ({n['ops_per_s']:,.0f}) | {sig['es256_sign_us']:.1f} | {floor:.1f} "
              f"| {c['cpu_us_per_op']:.1f} ({c['ops_per_s']:,.0f}, {c['wrk']['latency_us']['p99'] / 1000:.1f}) | {ratios[-1]:.2f} "
              f"| {o['cpu_us_per_op']:.1f} ({o['ops_per_s']:,.0f}) | {oidc_ratios[-1]:.2f} "
              f"| {max(n['other_cores_busy'], c['other_cores_busy'], o['other_cores_busy']):.2f} |")
    if ratios:
        print()
        print(f"Median ratio to the floor: callsign {statistics.median(ratios):.2f}, node-oidc-provider {statistics.median(oidc_ratios):.2f}.")
        print()
for name, title in (("verify.txt", "callsign-verify (criterion, one thread, cached key)"), ("propagation.txt", "Revocation propagation to a following verifier")):
    p = os.path.join(out, name)
    if os.path.exists(p):
        lines = [l for l in open(p).read().splitlines() if l.strip()]
        if name == "verify.txt":
            lines = [l for l in lines if l.startswith("verify/") or "time:" in l or "thrpt:" in l]
        print(f"{title}:")
        print()
        print("```")
        print("\n".join(lines))
        print("```")
        print()
st = load("startup.json")
if st:
    firsts = ", ".join(f"{v:.0f}" for v in st["first_start_ms"])
    restarts = ", ".join(f"{v:.0f}" for v in st["restart_ms"])
    print(f"Start to ready (spawn to first 200 from GET /health over TLS): first start on an empty data dir "
          f"median {st['first_start_median_ms']:.0f} ms ({firsts}), restart median {st['restart_median_ms']:.0f} ms "
          f"({restarts}); idle RSS {st['idle_rss_kib']/1024:.1f} MiB.")
for backend in ("sqlite", "postgres"):
    idle = load(f"{backend}-idle.json")
    if idle:
        print(f"Idle RSS of the {backend} server before its workloads: {idle['idle_rss_kib']/1024:.1f} MiB.")
PY
echo
echo "==> results ($OUT/results.md)"
cat "$OUT/results.md"
