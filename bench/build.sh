#!/usr/bin/env bash
# bench/build.sh: build the benchmark load client (tg-bench) without CMake.
#   bench/build.sh [OUT_DIR]     (default: bench/.bin)
# Needs a C compiler, libev and OpenSSL 3 (tg-bench --tls, for S8-tls)
# (Debian: build-essential libev-dev libssl-dev); the S0 http-parser
# micro-benchmark also needs libhttp-parser-dev (the core's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/.bin}
mkdir -p "$out"
cc -O2 -g -Wall -Wextra -Wno-unused-parameter -o "$out/tg-bench" "$here/loadgen/tg_bench.c" -lev -lssl -lcrypto -lm
if [ -f /usr/include/http_parser.h ]; then
  cc -O2 -Wall -Wextra -o "$out/http-parser-bench" "$here/micro/http_parser_bench.c" -lhttp_parser
fi
echo "$out"
