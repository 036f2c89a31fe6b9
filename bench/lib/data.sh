# bench/lib/data.sh: the data the plugin scenarios share, written once per
# run into RUN_DIR: 1,000 API keys and the tollgate consumers holding them,
# the JWT keys (HS256 secret, RSA 2048, EC P-256) and tokens, the users of
# the canary's sticky hash. Sourced by bench/run.

BENCH_HS256_SECRET="bench-hs256-secret-0123456789abcdef0123456789abcdef"

make_data() {
  local d=$1
  awk 'BEGIN { for (i = 0; i < 1000; i++) printf "key-%04d c%04d\n", i, i }' >"$d/keys.txt"
  awk '{ print "X-API-Key: " $1 }' "$d/keys.txt" >"$d/vary-keys.txt"
  awk 'BEGIN { for (i = 0; i < 10000; i++) printf "X-User: user-%05d\n", i }' >"$d/vary-users.txt"
  {
    echo "consumers:"
    awk '{ printf "  - { id: %s, plan: free, api_keys: [\"%s\"] }\n", $2, $1 }' "$d/keys.txt"
  } >"$d/consumers.yaml"
  printf '%s\n' "$BENCH_HS256_SECRET" >"$d/hs256.secret"
  # S8-tls: a self-signed ECDSA P-256 certificate for 127.0.0.1 / localhost.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$d/tls.key" -out "$d/tls.pem" 2>/dev/null
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/rsa.pem" 2>/dev/null &&
    openssl pkey -in "$d/rsa.pem" -pubout -out "$d/rsa.pub.pem" 2>/dev/null
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ec.pem" 2>/dev/null &&
    openssl pkey -in "$d/ec.pem" -pubout -out "$d/ec.pub.pem" 2>/dev/null
  if command -v node >/dev/null && [ -d "$BENCH/node/node_modules/jsonwebtoken" ]; then
    timeout 60 node "$BENCH/node/mktokens.js" "$d" || echo "bench: token generation failed" >&2
  fi
}
