#!/usr/bin/env bash
# Makes the secrets packaging/compose.yaml needs, with openssl:
#
#   bash packaging/make-certs.sh [--name PUBLIC_NAME]... [--out DIR] [--env-file FILE]
#
# into DIR (default packaging/certs/, gitignored):
#   ca.pem, ca-key.pem              a private CA; the nodes trust it for PostgreSQL, clients for
#                                   the proxy
#   postgres.pem, postgres-key.pem  PostgreSQL's server certificate, for the name `postgres` (the
#                                   compose service the nodes reach with sslmode=verify-full)
#   proxy.pem, proxy-key.pem        the proxy's certificate, for localhost, 127.0.0.1, ::1, every
#                                   --name and $CALLSIGN_PUBLIC_NAME
#   master.key                      callsign's master key (32 random bytes, base64), sealing the
#                                   access keys and signing keys in PostgreSQL
# and into FILE (default packaging/.env, gitignored, read by docker compose) the PostgreSQL
# password, POSTGRES_PASSWORD.
#
# Nothing that exists is replaced: run it again to add what is missing. To renew a certificate,
# delete it (and its key) first. Never delete master.key of a deployment that holds data: the
# keys in the database cannot be unsealed without it; keep a copy apart from database backups.
set -euo pipefail
umask 077

here=$(cd "$(dirname "$0")" && pwd)
out=$here/certs
env_file=$here/.env
names=(localhost 127.0.0.1 ::1)
[ -n "${CALLSIGN_PUBLIC_NAME:-}" ] && names+=("$CALLSIGN_PUBLIC_NAME")
ca_days=3650
leaf_days=825

while [ $# -gt 0 ]; do
    case $1 in
        --name) names+=("${2:?--name needs a value}"); shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --env-file) env_file=${2:?--env-file needs a file}; shift 2 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "make-certs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v openssl >/dev/null || { echo "make-certs.sh: openssl is not installed" >&2; exit 1; }
mkdir -p "$out"

# "DNS:name" or "IP:address" for each name, comma-separated.
subject_alt_names() {
    local n list=""
    for n in "$@"; do
        if [[ $n == *:* || $n =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
            list+="${list:+,}IP:$n"
        else
            list+="${list:+,}DNS:$n"
        fi
    done
    printf '%s' "$list"
}

if [ ! -f "$out/ca.pem" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca-key.pem"
    openssl req -x509 -new -sha256 -days "$ca_days" -key "$out/ca-key.pem" \
        -subj "/CN=callsign compose CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$out/ca.pem"
    chmod 0644 "$out/ca.pem"
    echo "made $out/ca.pem (the CA clients and nodes trust)"
fi

# leaf NAME-OF-FILES COMMON-NAME SUBJECT-ALT-NAMES...
leaf() {
    local file=$1 cn=$2
    shift 2
    [ -f "$out/$file.pem" ] && return 0
    openssl ecparam -name prime256v1 -genkey -noout -out "$out/$file-key.pem"
    openssl req -new -sha256 -key "$out/$file-key.pem" -subj "/CN=$cn" -out "$out/$file.csr"
    local err
    err=$(openssl x509 -req -sha256 -days "$leaf_days" -in "$out/$file.csr" \
        -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -set_serial "0x$(openssl rand -hex 16)" \
        -extfile <(printf '%s\n' \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" \
            "subjectKeyIdentifier=hash" \
            "authorityKeyIdentifier=keyid" \
            "subjectAltName=$(subject_alt_names "$@")") \
        -out "$out/$file.pem" 2>&1) || { echo "$err" >&2; return 1; }
    rm -f "$out/$file.csr"
    chmod 0644 "$out/$file.pem"
    echo "made $out/$file.pem for $*"
}

leaf postgres postgres postgres
leaf proxy "${names[3]:-localhost}" "${names[@]}"

if [ ! -f "$out/master.key" ]; then
    openssl rand -base64 32 >"$out/master.key"
    echo "made $out/master.key (keep a copy apart from the database's backups)"
fi

if [ -n "${names[3]:-}" ] && ! grep -q '^CALLSIGN_PUBLIC_NAME=' "$env_file" 2>/dev/null; then
    echo "CALLSIGN_PUBLIC_NAME=${names[3]}" >>"$env_file"
    echo "wrote CALLSIGN_PUBLIC_NAME=${names[3]} to $env_file"
fi

if ! grep -q '^POSTGRES_PASSWORD=' "$env_file" 2>/dev/null; then
    echo "POSTGRES_PASSWORD=$(openssl rand -hex 24)" >>"$env_file"
    echo "wrote POSTGRES_PASSWORD to $env_file"
fi
