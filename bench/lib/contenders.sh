# bench/lib/contenders.sh: the upstream and every contender: how to tell
# whether it is installed, which scenarios it has, its configuration for a
# scenario, and how to start it. Sourced by bench/run.
#
# The same shape for all: one worker (process or thread), access logs off,
# keep-alive to the upstream, the upstream's keep-alive pool sized 64, the
# X-Forwarded-* headers a gateway adds, and client keep-alive that never
# ends a connection during a run (max requests per connection 1,000,000,
# idle timeout 120 s). Each is started on GW_CPU with taskset.
#
# A contender NAME provides:
#   NAME_available            exit 0 when its binaries are installed
#   NAME_supports SCEN        prints nothing, or why the cell is "n/a"
#   NAME_start SCEN DIR PORT  writes its config to DIR, starts it; GW_PID
#
# The scenario's request and the upstream ports come from bench/run:
# UP_PORT, UP2_PORT (canary), BENCH, BENCH_ROUTES (S9 table size).

ALL_CONTENDERS="direct tollgate openresty nginx haproxy node node-ko"

KEEPALIVE_REQUESTS=1000000
HAPROXY_MAXCONN=$(( ($(ulimit -Hn) - 200) / 2 ))
KEEPALIVE_TIMEOUT_S=120
UPSTREAM_POOL=64

# Scenarios whose behaviour needs a tollgate plugin, and the plugin files.
scenario_plugins() {
  case $1 in
    S3) echo "key-auth request-transformer" ;;
    S4*) echo "jwt-auth" ;;
    S5*) echo "rate-limiting" ;;
    S6) echo "canary" ;;
    S8*) echo "key-auth jwt-auth rate-limiting request-transformer response-transformer canary" ;;
  esac
}

# ---------------------------------------------------------------- upstream

# nginx_common DIR: the part every nginx we start shares (the upstream and
# the nginx / OpenResty contenders): one worker, files under DIR, no access
# log, the same keep-alive limits; it opens the http block.
nginx_common() {
  local dir=$1
  cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body; proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fcgi; uwsgi_temp_path $dir/tmp/uwsgi; scgi_temp_path $dir/tmp/scgi;
  keepalive_requests $KEEPALIVE_REQUESTS;
  keepalive_timeout ${KEEPALIVE_TIMEOUT_S}s;
EOF
}

# The shared upstream: nginx, one worker, on LG_CPU. 200 with the fixed ~1 KB
# JSON body on GET /users/42 only and 404 elsewhere, so a contender that gets
# the prefix strip wrong shows up as errors, not as a fast wrong answer.
upstream_start() {
  local dir=$1
  mkdir -p "$dir/tmp"
  local body
  body=$(cat "$RUN_DIR/body.json")
  cat >"$dir/nginx.conf" <<EOF
$(nginx_common "$dir")
  default_type application/json;
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096;
    listen 127.0.0.1:$UP2_PORT backlog=4096;
    location = /users/42 { return 200 '$body'; }
    location / { return 404 '{"error":"not found"}'; }
  }
}
EOF
  bench_spawn "$LG_CPU" "$dir/stdout.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g "daemon off; master_process on;"
  UP_PID=$SPAWN_PID
}

# ---------------------------------------------------------------- direct

direct_available() { return 0; }
direct_supports() {
  case $1 in
    S1) ;;
    *) echo "n/a (no gateway: direct is the S1 ceiling only)" ;;
  esac
}
direct_start() { GW_PID=""; GW_PORT=$UP_PORT; SC_PATH=/users/42; }

# ---------------------------------------------------------------- tollgate

tollgate_bin() { echo "${TG_BUILD_DIR:-$ROOT/build}/tollgate"; }
tollgate_available() { [ -x "$(tollgate_bin)" ]; }
tollgate_supports() {
  local p
  for p in $(scenario_plugins "$1"); do
    [ -f "$ROOT/plugins/$p.lua" ] || { echo "n/a (plugin $p not yet available)"; return; }
  done
  [ -f "$BENCH/conf/tollgate/${1%-tls}.yaml" ] || case $1 in S1|S2|S7*|S9) ;; *) echo "n/a (no bench config yet)" ;; esac
}

tollgate_start() {
  local scen=$1 dir=$2 port=$3
  local conf=$dir/tollgate.yaml base=${scen%-tls} ssl=""
  [ "$base" != "$scen" ] && ssl=" ssl"
  {
    cat <<EOF
worker_processes: 1
listen: ["127.0.0.1:$port$ssl"]
access_log: { path: "off" }
error_log: { path: "$dir/error.log", level: warn }
limits: { max_keepalive_requests: $KEEPALIVE_REQUESTS, keepalive_timeout_ms: $((KEEPALIVE_TIMEOUT_S * 1000)) }
redis: { host: 127.0.0.1, port: ${REDIS_PORT:-6379}, timeout_ms: 200, pool_size: 32 }
shared_dicts: { ratelimit: 16m, cache: 16m }
upstreams:
  up: { targets: [ { url: "http://127.0.0.1:$UP_PORT" } ], keepalive: $UPSTREAM_POOL, keepalive_requests: $KEEPALIVE_REQUESTS }
  up2: { targets: [ { url: "http://127.0.0.1:$UP2_PORT" } ], keepalive: $UPSTREAM_POOL, keepalive_requests: $KEEPALIVE_REQUESTS }
EOF
    [ -n "$ssl" ] && echo "tls: { certificates: [ { cert: \"$RUN_DIR/tls.pem\", key: \"$RUN_DIR/tls.key\" } ] }"
    if [ -f "$BENCH/conf/tollgate/$base.yaml" ]; then
      # Plugin scenarios: routes, consumers and plugins from the bench's
      # config file, with @VARS@ filled in.
      sed -e "s|@BENCH@|$BENCH|g" -e "s|@DATA@|$RUN_DIR|g" "$BENCH/conf/tollgate/$base.yaml" |
        sed -e "/^@CONSUMERS@\$/{r $RUN_DIR/consumers.yaml" -e "d}"
    else
      echo "routes:"
      echo '  - { name: s1, paths: ["/api/v1"], strip_prefix: "/api/v1", upstream: up }'
      echo '  - { name: health, paths: ["=/health"], response: { status: 200, json: { status: ok } } }'
      if [ "$scen" = S9 ]; then
        awk -v n="$BENCH_ROUTES" 'BEGIN { for (i = 0; i < n; i++)
          printf "  - { name: r%04d, paths: [\"/svc/r%04d\"], strip_prefix: \"/svc/r%04d\", upstream: up }\n", i, i, i }'
      fi
    fi
  } >"$conf"
  "$(tollgate_bin)" -t -c "$conf" >"$dir/check.log" 2>&1 || { cat "$dir/check.log" >&2; return 1; }
  bench_spawn "$GW_CPU" "$dir/stdout.log" "$(tollgate_bin)" -c "$conf"
  GW_PID=$SPAWN_PID
}

# ---------------------------------------------------------------- nginx family

nginx_available() { command -v nginx >/dev/null; }
nginx_supports() {
  case $1 in
    S1|S2|S7*|S9) ;;
    *) echo "n/a (plain nginx has no plugin equivalent)" ;;
  esac
}

openresty_available() { command -v nginx >/dev/null && [ -f /usr/share/nginx/modules/ngx_http_lua_module.so ]; }
openresty_supports() {
  case $1 in
    S1|S2|S7*|S9) ;;
    *) [ -f "$BENCH/openresty/${1%-tls}.conf" ] || echo "n/a (no OpenResty policy written yet)" ;;
  esac
}

# nginx_conf SCEN DIR PORT LUA(0|1): the nginx / OpenResty configuration.
# OpenResty here is Debian's nginx with lua-nginx-module loaded; "plain"
# scenarios run no Lua per request (as an OpenResty user would write them),
# plugin scenarios add access_by_lua / header_filter_by_lua from
# bench/openresty/SCEN.conf.
nginx_conf() {
  local scen=${1%-tls} dir=$2 port=$3 lua=$4 ssl=""
  [ "$scen" != "$1" ] && ssl=" ssl"
  mkdir -p "$dir/tmp"
  if [ "$lua" = 1 ]; then
    echo "load_module /usr/share/nginx/modules/ndk_http_module.so;"
    echo "load_module /usr/share/nginx/modules/ngx_http_lua_module.so;"
  fi
  cat <<EOF
$(nginx_common "$dir")
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$http_host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Real-IP \$remote_addr;
  proxy_set_header X-Forwarded-Proto \$scheme;
  proxy_set_header X-Forwarded-Host \$host;
  proxy_set_header X-Forwarded-Port \$server_port;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive $UPSTREAM_POOL; keepalive_requests $KEEPALIVE_REQUESTS; }
  upstream up2 { server 127.0.0.1:$UP2_PORT; keepalive $UPSTREAM_POOL; keepalive_requests $KEEPALIVE_REQUESTS; }
EOF
  if [ "$lua" = 1 ]; then
    echo "  lua_package_path \"$BENCH/openresty/?.lua;;\";"
    [ -f "$BENCH/openresty/$scen.http.conf" ] && sed -e "s|@BENCH@|$BENCH|g" -e "s|@DATA@|$RUN_DIR|g" -e "s|@REDIS_PORT@|${REDIS_PORT:-6379}|g" "$BENCH/openresty/$scen.http.conf"
  fi
  cat <<EOF
  server {
    listen 127.0.0.1:$port$ssl backlog=4096;
EOF
  [ -n "$ssl" ] && printf '    ssl_certificate %s;\n    ssl_certificate_key %s;\n' "$RUN_DIR/tls.pem" "$RUN_DIR/tls.key"
  cat <<EOF
    location = /health { default_type application/json; return 200 '{"status":"ok"}'; }
EOF
  if [ "$lua" = 1 ] && [ -f "$BENCH/openresty/$scen.conf" ]; then
    sed -e "s|@BENCH@|$BENCH|g" -e "s|@DATA@|$RUN_DIR|g" -e "s|@REDIS_PORT@|${REDIS_PORT:-6379}|g" "$BENCH/openresty/$scen.conf"
  else
    echo "    location /api/v1/ { proxy_pass http://up/; }"
  fi
  if [ "$scen" = S9 ]; then
    awk -v n="$BENCH_ROUTES" 'BEGIN { for (i = 0; i < n; i++)
      printf "    location /svc/r%04d/ { proxy_pass http://up/; }\n", i }'
  fi
  echo "  }"
  echo "}"
}

nginx_start_common() {
  local scen=$1 dir=$2 port=$3 lua=$4
  nginx_conf "$scen" "$dir" "$port" "$lua" >"$dir/nginx.conf"
  nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g "daemon off; master_process on;" \
    >"$dir/check.log" 2>&1 || { cat "$dir/check.log" "$dir/error.log" >&2; return 1; }
  bench_spawn "$GW_CPU" "$dir/stdout.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g "daemon off; master_process on;"
  GW_PID=$SPAWN_PID
}
nginx_start() { nginx_start_common "$1" "$2" "$3" 0; }
openresty_start() { nginx_start_common "$1" "$2" "$3" 1; }

# ---------------------------------------------------------------- HAProxy

haproxy_available() { command -v haproxy >/dev/null; }
haproxy_supports() {
  case $1 in
    S1|S2|S7*|S9) ;;
    *) echo "n/a (HAProxy runs the plain scenarios only)" ;;
  esac
}

haproxy_start() {
  local scen=$1 dir=$2 port=$3
  # maxconn: HAProxy refuses to start unless 2 x maxconn descriptors fit in
  # the FD limit (20,000 here), so S7-idle gives it HAPROXY_MAXCONN - 100
  # connections (per-connection memory is what that cell reports).
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $HAPROXY_MAXCONN
defaults
  mode http
  timeout connect 1s
  timeout client ${KEEPALIVE_TIMEOUT_S}s
  timeout server 30s
  timeout http-keep-alive ${KEEPALIVE_TIMEOUT_S}s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$port
  http-request return status 200 content-type application/json string '{"status":"ok"}' if { path /health }
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Port %[dst_port]
EOF
  if [ "$scen" = S9 ]; then
    # The idiomatic HAProxy way to a large route table: a prefix map.
    awk -v n="$BENCH_ROUTES" 'BEGIN { for (i = 0; i < n; i++) printf "/svc/r%04d/ up\n", i }' >"$dir/routes.map"
    cat >>"$dir/haproxy.cfg" <<EOF
  http-request set-var(txn.route) path,map_beg($dir/routes.map)
  http-request set-path %[path,regsub(^/svc/r[0-9]+/,/)] if { var(txn.route) -m found }
  use_backend be if { var(txn.route) -m found }
EOF
  fi
  cat >>"$dir/haproxy.cfg" <<EOF
  use_backend be_api if { path_beg /api/v1/ }
backend be_api
  http-request set-path %[path,regsub(^/api/v1/,/)]
  server up 127.0.0.1:$UP_PORT maxconn $UPSTREAM_POOL
backend be
  server up 127.0.0.1:$UP_PORT maxconn $UPSTREAM_POOL
EOF
  haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 || { cat "$dir/check.log" >&2; return 1; }
  bench_spawn "$GW_CPU" "$dir/stdout.log" haproxy -db -f "$dir/haproxy.cfg"
  GW_PID=$SPAWN_PID
}

# ---------------------------------------------------------------- Node.js

node_available() { command -v node >/dev/null && [ -d "$BENCH/node/node_modules/express" ]; }
node_supports() {
  case $1 in
    S1|S2|S7*|S9) ;;
    *) grep -q "case '$1'" "$BENCH/node/gateway.js" 2>/dev/null || echo "n/a (no Node variant written yet)" ;;
  esac
}
node_start() {
  local scen=$1 dir=$2 port=$3
  bench_spawn "$GW_CPU" "$dir/stdout.log" env KEYOBJECT="${NODE_KEYOBJECT:-0}" PORT="$port" UPSTREAM="http://127.0.0.1:$UP_PORT" \
    UPSTREAM2="http://127.0.0.1:$UP2_PORT" SCENARIO="$scen" ROUTES="$BENCH_ROUTES" DATA="$RUN_DIR" \
    REDIS_PORT="${REDIS_PORT:-6379}" NODE_ENV=production node "$BENCH/node/gateway.js"
  GW_PID=$SPAWN_PID
}

# node-ko: the same Node gateway with the JWT key pre-parsed as a KeyObject
# (issue #8: report both). S4 only.
node-ko_available() { node_available; }
node-ko_supports() {
  case $1 in
    S4*) ;;
    *) echo "n/a (the KeyObject variant only matters for JWT)" ;;
  esac
}
node-ko_start() { NODE_KEYOBJECT=1 node_start "$@"; }
