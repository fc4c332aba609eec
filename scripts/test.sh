#!/usr/bin/env bash
# Installs what the tests need and runs every test. Exits non-zero if anything fails.
#
#   bash scripts/test.sh
#
# Steps: PostgreSQL available and running (installed from Debian packages if missing),
# Chromium and chromedriver for the console's browser suite (Debian packages chromium and
# chromium-driver, installed if missing), formatting and lint checks, the packaging lint
# (packaging/: Dockerfile, compose file, systemd unit; linted, not built), licenses and banned
# crates (cargo deny, installed if missing), the Rust test suites (unit, black-box, store
# conformance on SQLite and PostgreSQL, CLI and crash tests, doc tests), then the compatibility
# suites that drive the released ACS SDKs (pinned, in venvs and node_modules) and the admin
# console (headless Chromium, axe-core) against the real server, and a one-second run of the
# benchmark's floor comparison (wrk, nginx, node-oidc-provider; no speed asserted).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
failed=()

step() {
    local name=$1
    shift
    echo
    echo "==> $name"
    if ! "$@"; then
        echo "!!! $name failed"
        failed+=("$name")
    fi
}

ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        echo "PostgreSQL is not installed; installing it from Debian packages"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null || return 1
    fi
    if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
        echo "starting PostgreSQL"
        local version
        version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
        [ -n "$version" ] || { echo "no PostgreSQL cluster configured"; return 1; }
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || return 1
        for _ in $(seq 1 30); do
            pg_isready -h 127.0.0.1 -p 5432 -q && break
            sleep 1
        done
    fi
    pg_isready -h 127.0.0.1 -p 5432
}

# The browser the console suite (compat/python/console) drives: /usr/bin/chromium and
# /usr/bin/chromedriver, from Debian packages so that Selenium never downloads a browser.
ensure_chromium() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        return 0
    fi
    echo "Chromium or chromedriver is not installed; installing them from Debian packages"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null || return 1
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]
}

# The benchmark's tools, run for a second each to prove they work (no speed is asserted):
# wrk, nginx (Debian packages wrk and nginx-light, installed if missing), node-oidc-provider
# (bench/oidc-provider, npm ci), and callsign's pre-signed wrk requests.
bench_tools() {
    if ! command -v wrk >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1; then
        echo "wrk or nginx is not installed; installing them from Debian packages"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk nginx-light >/dev/null || return 1
    fi
    BENCH_BIN="$ROOT/target/debug/callsign" BENCH_OUT="$ROOT/target/bench-tools" BENCH_QUIET=0 \
        BENCH_CHECK=1 BENCH_FLOOR=1 BENCH_DURATION=1 BENCH_WARMUP=1 BENCH_STARTUP=0 \
        BENCH_BACKENDS= BENCH_SCALE= BENCH_SCALE_PG= BENCH_ATTRIBUTION=0 BENCH_VERIFY=0 \
        bash scripts/bench.sh
}

ensure_nextest() {
    cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
}

# Licenses, banned crates and sources (deny.toml). Advisories need the network: left out.
cargo_deny() {
    if ! cargo deny --version >/dev/null 2>&1; then
        cargo install --locked cargo-deny --version 0.20.2 || return 1
    fi
    cargo deny --locked check licenses bans sources
}

step "PostgreSQL" ensure_postgres
step "Chromium (console browser suite)" ensure_chromium
# The pinned SDKs first: the Rust client's signing cross-check runs the released Python SDK.
step "SDK installs (venvs, node_modules)" bash compat/run.sh --install-only
export CALLSIGN_SDK_PYTHON="$ROOT/.venv/identity15/bin/python"
export CALLSIGN_REQUIRE_SDK=1
export CALLSIGN_TEST_DATABASE_URL=${CALLSIGN_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo build" cargo build --workspace --locked
step "packaging lint" bash scripts/lint-packaging.sh
step "cargo deny" cargo_deny
step "cargo-nextest" ensure_nextest
step "Rust tests" cargo nextest run --workspace --locked --no-fail-fast
step "Rust doc tests" cargo test --workspace --doc --locked

if [ -f compat/run.sh ]; then
    step "SDK compatibility suites" env CALLSIGN_BIN="$ROOT/target/debug/callsign" bash compat/run.sh
fi
step "Benchmark tools (1 s runs, no speed asserted)" bench_tools
# The README's Quick start, block by block, as a newcomer runs it (port 8443, dev mode).
step "README quick start" env CALLSIGN_BIN="$ROOT/target/debug/callsign" python3 scripts/readme-quickstart.py

echo
if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all test steps passed"
