#!/usr/bin/env bash
# conf/make-dev-cert.sh [DIR] [NAME...]
#
# Makes a self-signed certificate for local development with the openssl
# CLI: DIR/dev.crt and DIR/dev.key (default DIR: conf/certs), valid for a
# year for NAME... (default: localhost) plus 127.0.0.1 and ::1. An EC P-256
# key: small and fast. Browsers and curl will not trust it (use curl -k, or
# --cacert DIR/dev.crt). Never use it in production.
#
# Then serve HTTPS by adding to the config (paths are relative to it):
#   listen: ["127.0.0.1:8080", "127.0.0.1:8443 ssl"]
#   tls: { certificates: [ { cert: certs/dev.crt, key: certs/dev.key } ] }
set -euo pipefail
dir=${1:-"$(cd "$(dirname "$0")" && pwd)/certs"}
[ $# -gt 0 ] && shift
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(localhost)

san=""
for n in "${names[@]}"; do san="${san:+$san,}DNS:$n"; done
san="$san,IP:127.0.0.1,IP:::1"

mkdir -p "$dir"
umask 077   # the key is readable by its owner only
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=${names[0]}" -addext "subjectAltName=$san" \
  -addext "keyUsage=digitalSignature" -addext "extendedKeyUsage=serverAuth" \
  -keyout "$dir/dev.key" -out "$dir/dev.crt" 2>/dev/null
chmod 644 "$dir/dev.crt"
echo "made $dir/dev.crt and $dir/dev.key for ${names[*]}, 127.0.0.1, ::1 (self-signed, 365 days)"
