#!/usr/bin/env bash
# Bounded soak: starts a release server on 127.0.0.1 with short deadlines and, for SOAK_SECONDS,
# sends it valid signed traffic (from 127.0.0.2, timed) mixed with every hostile pattern of
# THREAT-MODEL.md (from other loopback addresses, each at a bounded rate), sampling the server's
# RSS every second. Fails when valid p99 >= 50 ms, a valid request fails, RSS reaches 100 MiB,
# or a hostile request gets a 5xx, a 2xx or hangs. See scripts/soak_hostile.py for the patterns.
#
#   bash scripts/soak.sh                     # 5 minutes
#   SOAK_SECONDS=30 bash scripts/soak.sh
#
# Settings (environment):
#   SOAK_SECONDS      traffic duration in seconds             (300)
#   SOAK_VALID_RATE   valid requests per second               (50)
#   SOAK_BUILD        1 to rebuild the release binary first   (built only when missing)
#   SOAK_OUT          also write the summary as JSON to this file
#
# Loopback only; everything stops by itself; the server this script starts is stopped by its PID
# and its temporary data dir removed when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${SOAK_SECONDS:-300}
RATE=${SOAK_VALID_RATE:-50}
SRC_BIN="${CARGO_TARGET_DIR:-target}/release/callsign"
if [ ! -x "$SRC_BIN" ] || [ "${SOAK_BUILD:-0}" = 1 ]; then
    cargo build --release -q --bin callsign
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/callsign-soak.XXXXXX")
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy, so that a concurrent build cannot swap the binary mid-run.
cp "$SRC_BIN" "$tmp/callsign"
"$tmp/callsign" serve --data-dir "$tmp/data" --listen 127.0.0.1:0 \
    --idle-timeout-secs 5 --header-timeout-secs 5 --body-timeout-secs 5 \
    --auth-failures-per-minute 60 >"$tmp/server.stdout" 2>"$tmp/server.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do
    grep -q "endpoint=" "$tmp/server.stdout" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$tmp/server.log" >&2; echo "soak: the server did not start" >&2; exit 1; }
    sleep 0.1
done
ENDPOINT=$(grep -m1 -o 'https://[^ ]*' "$tmp/server.stdout")
CS=$(grep -m1 -o 'endpoint=[^ ]*' "$tmp/server.stdout" || true)
[ -n "$CS" ] || CS=$("$tmp/callsign" connection-string --data-dir "$tmp/data" --endpoint "$ENDPOINT")

echo "soak: $(date -u +%Y-%m-%dT%H:%M:%SZ), ${DURATION} s, server pid $SERVER_PID at $ENDPOINT," \
    "binary built $(date -u -r "$SRC_BIN" +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"

rc=0
python3 scripts/soak_hostile.py --endpoint "$ENDPOINT" --connection-string "$CS" \
    --ca "$tmp/data/tls/ca.pem" --pid "$SERVER_PID" --seconds "$DURATION" --valid-rate "$RATE" \
    --idle-timeout 5 --header-timeout 5 --body-timeout 5 --handshake-timeout 10 \
    ${SOAK_OUT:+--out "$SOAK_OUT"} || rc=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "soak: FAIL: the server exited during the soak" >&2
    tail -n 20 "$tmp/server.log" >&2
    rc=1
fi
panics=$(grep -c -i 'panicked' "$tmp/server.log" || true)
errors=$(grep -c -E '\bERROR\b|"level":"ERROR"' "$tmp/server.log" || true)
echo "server log: $(wc -l <"$tmp/server.log") lines, $panics panics, $errors ERROR lines"
if [ "$panics" != 0 ]; then
    grep -i -m5 'panicked' "$tmp/server.log" >&2
    rc=1
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$rc"
