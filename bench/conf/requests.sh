# bench/conf/requests.sh: what the client sends in the plugin scenarios
# (sourced by bench/run; the data files come from bench/lib/data.sh).
#   SC_HDRS   fixed request headers
#   SC_VARY   a file of header lines, request i carries line i mod N
#   SC_KIND   throughput | close | idle | active | reject
#   SC_SCHEME http, or https (max req/s and CPU by wrk; open loop by tg-bench --tls)
#   SC_DENY   status a request WITHOUT SC_HDRS / SC_VARY must get: proves
#             the contender enforces the policy, not just forwards

scenario_request_extra() {
  local tok
  case $1 in
    S3)
      SC_VARY=$RUN_DIR/vary-keys.txt; SC_DENY=401 ;;                       # the 1,000 keys in turn
    S4-hs256|S4-rs256|S4-es256)
      tok=$(cat "$RUN_DIR/token-${1#S4-}.txt" 2>/dev/null)
      SC_HDRS=("Authorization: Bearer $tok"); SC_DENY=401 ;;
    S4-hs256-10k)
      SC_VARY=$RUN_DIR/vary-hs256-10k.txt; SC_DENY=401 ;;
    S5-reject)
      SC_KIND=reject ;;                                       # open loop at 2x the limit
    S6)
      SC_VARY=$RUN_DIR/vary-users.txt ;;                      # 10,000 users hashed 90/10
    S8|S8-tls)
      tok=$(cat "$RUN_DIR/token-rs256.txt" 2>/dev/null)
      SC_HDRS=("X-API-Key: key-0042" "Authorization: Bearer $tok"); SC_DENY=401
      [ "$1" = S8-tls ] && SC_SCHEME=https ;;                 # wrk max, tg-bench --tls open loop
  esac
}
