#!/usr/bin/env bash
# Prints an HS256 JWT for the demo consumer of conf/tollgate.yaml (iss
# demo-issuer, valid for an hour), made with the openssl CLI.
set -euo pipefail
secret=${1:-demo-secret-change-me}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"iss":"demo-issuer","sub":"demo-user","roles":["reader"],"iat":%d,"exp":%d}' "$now" $((now + 3600)) | b64url)
sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -hmac "$secret" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$sig"
