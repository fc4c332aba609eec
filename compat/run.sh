#!/usr/bin/env bash
# SDK compatibility suites: the released, pinned ACS Identity SDKs against a real callsign server.
#
#   bash compat/run.sh                 # from the repo root (or anywhere)
#   bash compat/run.sh --install-only  # only create the venvs and node_modules
#
# Needs a built server; this script never builds Rust. CALLSIGN_BIN names the binary (default
# target/debug/callsign; a relative path is taken from the repo root). Needs python3 (3.11), node
# (>= 20) and npm, and PyPI/npm for the first run only:
#   * creates .venv/<name> from compat/python/requirements/<name>.txt (fully pinned, --no-deps)
#     when missing or when the pins changed, and `npm ci` in compat/js, compat/oidc and
#     compat/console (axe-core) likewise;
#   * validates the OpenAPI document (crates/callsign-server/openapi.json) with
#     openapi-spec-validator from .venv/openapi;
#   * runs each pytest suite in its own venv, then the node tests; each starts its own server on
#     127.0.0.1 (port 0, fresh temp data dir) and stops it with SIGTERM, requiring exit code 0
#     (compat/python/openapi validates the served document and the server's responses against
#     the OpenAPI document; compat/python/console drives the admin console in headless Chromium,
#     which needs /usr/bin/chromium and /usr/bin/chromedriver from the Debian packages chromium
#     and chromium-driver, and writes screenshots to target/console-screenshots/);
#   * prints every runner's summary and exits non-zero if anything failed (pytest's "no tests
#     collected", exit code 5, counts as a failure).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONDONTWRITEBYTECODE=1

install_only=0
if [ "${1:-}" = "--install-only" ]; then
  install_only=1
fi

# venv name : test directory under compat/python (a venv may serve several directories)
suites=(
  "admin:admin"
  "identity15:identity"
  "identity15:verify"
  "identity15:devmode"
  "identity131:identity"
  "identity101:identity"
  "openapi:openapi"
  "console:console"
)

logdir="$(mktemp -d "${TMPDIR:-/tmp}/callsign-compat-run.XXXXXX")"
trap 'rm -rf "$logdir"' EXIT

hash_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

ensure_venv() {
  local name="$1" req="$here/python/requirements/$1.txt" dir="$root/.venv/$1"
  local want stamp="$dir/.compat-requirements.sha256"
  want="$(hash_of "$req")"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "compat: installing .venv/$name from ${req#"$root"/}"
  if [ ! -x "$dir/bin/python" ]; then
    "$PYTHON" -m venv "$dir" || return 1
  fi
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$req" \
    || return 1
  echo "$want" > "$stamp"
}

# `npm ci` in compat/<dir> when its node_modules is missing or the pins changed.
ensure_node_modules_in() {
  local js="$here/$1" want stamp="$here/$1/node_modules/.compat-lock.sha256"
  want="$(hash_of "$js/package.json" "$js/package-lock.json")"
  if [ -d "$js/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "compat: npm ci in compat/$1"
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error) || return 1
  echo "$want" > "$stamp"
}

# The SDK suites' packages, the OIDC provider the Rust tests start (compat/oidc), and axe-core
# for the console suite's accessibility checks (compat/console).
ensure_node_modules() {
  ensure_node_modules_in js && ensure_node_modules_in oidc && ensure_node_modules_in console
}

node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
  echo "compat: node >= 20 is required (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 2
fi

# Installs: venvs in parallel (each is independent), then node_modules.
setup_failed=0
pids=()
venvs=()
for suite in "${suites[@]}"; do
  name="${suite%%:*}"
  case " ${venvs[*]} " in *" $name "*) continue ;; esac
  venvs+=("$name")
  ensure_venv "$name" > "$logdir/setup-$name.log" 2>&1 &
  pids+=("$!:$name")
done
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"; name="${entry#*:}"
  if ! wait "$pid"; then
    echo "compat: setting up .venv/$name failed:" >&2
    cat "$logdir/setup-$name.log" >&2
    setup_failed=1
  else
    cat "$logdir/setup-$name.log"
  fi
done
if ! ensure_node_modules; then
  echo "compat: npm ci failed" >&2
  setup_failed=1
fi
if [ "$setup_failed" -ne 0 ]; then
  exit 1
fi
if [ "$install_only" -eq 1 ]; then
  echo "compat: venvs and node_modules are ready"
  exit 0
fi

bin="${CALLSIGN_BIN:-target/debug/callsign}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "compat: server binary not found or not executable: $bin" >&2
  echo "compat: build it first (cargo build -p callsign) or set CALLSIGN_BIN" >&2
  exit 2
fi
export CALLSIGN_BIN="$bin"

start=$SECONDS
results=()
total_passed=0
total_failed=0
overall=0

record() { # name, exit code, summary, passed, failed
  local status="ok"
  if [ "$2" -ne 0 ]; then status="FAILED (exit $2)"; overall=1; fi
  results+=("$(printf '%-30s %-16s %s' "$1" "$status" "$3")")
  total_passed=$((total_passed + $4))
  total_failed=$((total_failed + $5))
}

echo
echo "=== openapi-spec-validator: crates/callsign-server/openapi.json"
log="$logdir/openapi-spec-validator.log"
"$root/.venv/openapi/bin/openapi-spec-validator" "$root/crates/callsign-server/openapi.json" 2>&1 \
  | tee "$log"
code=${PIPESTATUS[0]}
if [ "$code" -eq 0 ]; then
  record "openapi-spec-validator" 0 "valid OpenAPI" 1 0
else
  record "openapi-spec-validator" "$code" "invalid OpenAPI" 0 1
fi

for suite in "${suites[@]}"; do
  name="${suite%%:*}"; tests="${suite#*:}"
  echo
  echo "=== pytest: .venv/$name, compat/python/$tests"
  log="$logdir/pytest-$name-$tests.log"
  (cd "$here/python" && "$root/.venv/$name/bin/python" -m pytest "$tests" -q) 2>&1 | tee "$log"
  code=${PIPESTATUS[0]}
  summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran' "$log" | tail -n1 | sed -E 's/^=+ //; s/ =+$//')"
  passed="$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)"
  failed=0
  for n in $(grep -oE '[0-9]+ (failed|errors?)' <<<"$summary" | grep -oE '^[0-9]+'); do
    failed=$((failed + n))
  done
  if [ "$code" -eq 5 ]; then summary="no tests collected"; fi
  if [ "$code" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
  record "pytest $name $tests" "$code" "${summary:-no summary}" "${passed:-0}" "$failed"
done

echo
echo "=== node --test: compat/js (@azure/communication-identity 1.3.1, jose)"
log="$logdir/node.log"
(cd "$here/js" && node run-tests.js) 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
passed="$(grep -E '^[^ ]+ pass [0-9]+$' "$log" | tail -n1 | grep -oE '[0-9]+$')"
failed="$(grep -E '^[^ ]+ fail [0-9]+$' "$log" | tail -n1 | grep -oE '[0-9]+$')"
[ -n "$passed" ] || passed=0
[ -n "$failed" ] || failed=0
if [ "$passed" -eq 0 ] && [ "$code" -eq 0 ]; then code=1; fi # ran no test
if [ "$code" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
record "node --test" "$code" "$passed passed, $failed failed" "$passed" "$failed"

echo
echo "=== node: compat/js/dev-mode.js (serve --dev, the documented string and CA)"
log="$logdir/node-dev.log"
(cd "$here/js" && node dev-mode.js) 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
if grep -q '^dev-mode pass 1$' "$log" && [ "$code" -eq 0 ]; then
  record "node dev mode" 0 "1 passed" 1 0
else
  [ "$code" -ne 0 ] || code=1
  record "node dev mode" "$code" "failed" 0 1
fi

echo
echo "=== compat summary ($((SECONDS - start)) s, server: $CALLSIGN_BIN)"
for line in "${results[@]}"; do echo "$line"; done
echo "compat: $total_passed passed, $total_failed failed"
exit "$overall"
