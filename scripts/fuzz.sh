#!/usr/bin/env bash
# The long property-test run ("fuzz job") over every parser an unauthenticated client reaches:
# the Authorization and date parsers, routes and percent-decoding, api-version parsing, every
# JSON request body and id. Not part of CI's default run, where each property runs 256 cases.
#
#   bash scripts/fuzz.sh                 # CASES=1000000 cases per property
#   CASES=20000 bash scripts/fuzz.sh     # a quick pass
#
# Builds the property tests once with the `fuzz` cargo profile (release optimisation, overflow
# checks and debug assertions on), then runs each test binary with PROPTEST_CASES=$CASES under the
# `fuzz` nextest profile (each test is stopped after an hour). Prints, and writes to
# target/fuzz/summary.txt, the wall time and outcome of each binary and the time of each test.
# Exits non-zero if any property fails; proptest then prints the minimal failing input and
# records it under the crate's proptest-regressions.
set -uo pipefail
cd "$(dirname "$0")/.."

CASES=${CASES:-1000000}
OUT=target/fuzz
mkdir -p "$OUT"

# name | cargo-nextest arguments selecting the binary and its property tests
TARGETS=(
    "callsign-hmac|-p callsign-hmac --test properties"
    "callsign-core|-p callsign-core --test properties"
    "callsign-api|-p callsign-api --test properties"
    "callsign-server|-p callsign-server --lib -E test(/^properties::/)"
)

nextest() {
    cargo nextest run --cargo-profile fuzz --profile fuzz --no-fail-fast "$@"
}

echo "==> building the property tests (cargo profile fuzz)"
for t in "${TARGETS[@]}"; do
    read -r -a args <<<"${t#*|}"
    if ! nextest --no-run "${args[@]}"; then
        echo "!!! build of ${t%%|*} failed"
        exit 1
    fi
done

summary="$OUT/summary.txt"
{
    echo "fuzz run $(date -u +%Y-%m-%dT%H:%M:%SZ), PROPTEST_CASES=$CASES, $(nproc) cores"
    printf '%-16s %10s  %s\n' "binary" "wall" "outcome"
} >"$summary"
failed=()
total_start=$(date +%s)
for t in "${TARGETS[@]}"; do
    name=${t%%|*}
    read -r -a args <<<"${t#*|}"
    log="$OUT/$name.log"
    echo
    echo "==> $name: ${args[*]} (PROPTEST_CASES=$CASES)"
    start=$(date +%s)
    PROPTEST_CASES=$CASES nextest "${args[@]}" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - start))
    outcome=$(grep -E '^ +Summary' "$log" | tail -1 | sed -E 's/^ +Summary \[ *[0-9.]+s\] //')
    [ -n "$outcome" ] || outcome="no summary (exit $rc)"
    [ "$rc" -eq 0 ] || failed+=("$name")
    printf '%-16s %9ss  %s\n' "$name" "$secs" "$outcome" >>"$summary"
    grep -E '^ +(PASS|FAIL|SIGSEGV|SIGABRT|TIMEOUT)' "$log" |
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
