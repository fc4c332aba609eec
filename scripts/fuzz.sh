#!/usr/bin/env bash
# The long property-test run ("fuzz job") over every parser an unauthenticated client reaches:
# the Authorization and date parsers, routes and percent-decoding, api-version parsing, every
# JSON request body and id. Not part of CI's default run, where each property runs 256 cases.
#
#   bash scripts/fuzz.sh                 # CASES=1000000 cases per property
#   CASES=20000 bash scripts/fuzz.sh     # a quick pass
#
# Builds the property tests once with the `fuzz` cargo profile (release optimisation, overflow
# checks and debug assertions on) into a nextest archive, so that edits made while it runs change
# nothing, then runs each test binary from it with PROPTEST_CASES=$CASES under the `fuzz` nextest
# profile (each test is stopped after an hour). Prints, and writes to target/fuzz-run/summary.txt,
# the wall time and outcome of each binary and the time of each test. Exits non-zero if any
# property fails; proptest then prints the minimal failing input.
set -uo pipefail
cd "$(dirname "$0")/.."

CASES=${CASES:-1000000}
OUT=target/fuzz-run
ARCHIVE=$OUT/properties.tar.zst
mkdir -p "$OUT"

# name | nextest filter selecting that binary's property tests
TARGETS=(
    "callsign-hmac|package(callsign-hmac) & binary(properties)"
    "callsign-core|package(callsign-core) & binary(properties)"
    "callsign-api|package(callsign-api) & binary(properties)"
    "callsign-server|package(callsign-server) & kind(lib) & test(/^properties::/)"
)

echo "==> building the property tests (cargo profile fuzz)"
if ! cargo nextest archive --cargo-profile fuzz --archive-file "$ARCHIVE" \
    -p callsign-hmac -p callsign-core -p callsign-api -p callsign-server \
    --lib --test properties; then
    echo "!!! build failed"
    exit 1
fi

summary="$OUT/summary.txt"
{
    echo "fuzz run $(date -u +%Y-%m-%dT%H:%M:%SZ), PROPTEST_CASES=$CASES, $(nproc) cores"
    printf '%-16s %10s  %s\n' "binary" "wall" "outcome"
} >"$summary"
failed=()
total_start=$(date +%s)
for t in "${TARGETS[@]}"; do
    name=${t%%|*}
    filter=${t#*|}
    log="$OUT/$name.log"
    echo
    echo "==> $name: $filter (PROPTEST_CASES=$CASES)"
    start=$(date +%s)
    PROPTEST_CASES=$CASES cargo nextest run --archive-file "$ARCHIVE" --workspace-remap . \
        --profile fuzz --no-fail-fast -E "$filter" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - start))
    outcome=$(grep -E '^ +Summary' "$log" | tail -1 | sed -E 's/^ +Summary \[ *[0-9.]+s\] //')
    [ -n "$outcome" ] || outcome="no summary (exit $rc)"
    [ "$rc" -eq 0 ] || failed+=("$name")
    printf '%-16s %9ss  %s\n' "$name" "$secs" "$outcome" >>"$summary"
    grep -E '^ +(PASS|FAIL|SIGSEGV|SIGABRT|SIGKILL|TIMEOUT)' "$log" |
        sed -E 's/^ +([A-Z]+) \[ *([0-9.]+s)\] \( *[0-9]+\/[0-9]+\) [^ ]+ /    \1 \2 /' >>"$summary"
done
echo "total: $(($(date +%s) - total_start))s" >>"$summary"

echo
echo "==> summary"
cat "$summary"
if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
