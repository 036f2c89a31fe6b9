# bench/lib/procs.sh: process bookkeeping and /proc measurements for bench/run.
#
# Every process the harness starts goes through bench_spawn, which records
# its PID; bench_stop_all (run from the EXIT trap) stops exactly those PIDs,
# TERM first and KILL after a bounded wait. Nothing is ever stopped by name.
#
# CPU time is read from /proc/<pid>/stat (utime + stime, in clock ticks) for
# a whole process tree (master + workers: the master is idle, so the sum is
# the workers' time). Memory is VmRSS / VmHWM from /proc/<pid>/status.

BENCH_PIDS=()
CLK_TCK=$(getconf CLK_TCK)

# bench_spawn CPU LOGFILE CMD...: start CMD pinned to CPU, stdout+stderr to
# LOGFILE; sets SPAWN_PID. taskset execs CMD, so $! is CMD's own PID.
bench_spawn() {
  local cpu=$1 log=$2
  shift 2
  taskset -c "$cpu" "$@" >"$log" 2>&1 </dev/null &
  SPAWN_PID=$!
  BENCH_PIDS+=("$SPAWN_PID")
}

# bench_stop PID: TERM, wait up to 3 s, then KILL. Waits for the exit.
bench_stop() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${BENCH_PIDS[@]}"; do [ "$p" != "$pid" ] && keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

bench_stop_all() {
  local p
  for p in "${BENCH_PIDS[@]}"; do bench_stop "$p"; done
}

# tree_pids PID: PID and its descendants (two levels are all we start).
tree_pids() {
  local pid=$1 c g
  echo "$pid"
  for c in $(pgrep -P "$pid" 2>/dev/null); do
    echo "$c"
    for g in $(pgrep -P "$c" 2>/dev/null); do echo "$g"; done
  done
}

# cpu_ticks PIDS...: summed utime+stime. The command name in /proc/PID/stat
# may contain spaces, so fields are counted after its closing parenthesis.
# One awk for all PIDs: this runs between measured runs, keep it cheap.
cpu_ticks() {
  local files=() p
  for p in "$@"; do [ -r "/proc/$p/stat" ] && files+=("/proc/$p/stat"); done
  [ ${#files[@]} -eq 0 ] && { echo 0; return; }
  awk '{ sub(/^.*\) /, ""); s += $12 + $13 } END { print s + 0 }' "${files[@]}" 2>/dev/null || echo 0
}

# mem_kb FIELD PIDS...: summed VmRSS or VmHWM (kB).
mem_kb() {
  local field=$1 files=() p
  shift
  for p in "$@"; do [ -r "/proc/$p/status" ] && files+=("/proc/$p/status"); done
  [ ${#files[@]} -eq 0 ] && { echo 0; return; }
  awk -v f="$field:" '$1 == f { s += $2 } END { print s + 0 }' "${files[@]}" 2>/dev/null || echo 0
}

# free_port: a port nobody listens on, below the ephemeral range so that
# outgoing connections never take it.
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ] && [[ " ${USED_PORTS:-} " != *" $p "* ]]; then
      USED_PORTS="${USED_PORTS:-} $p"
      echo "$p"
      return 0
    fi
  done
  echo "bench: no free port found" >&2
  return 1
}

# calc EXPR: floating-point arithmetic through awk.
calc() { awk "BEGIN { v = $1; if (v == int(v)) printf \"%d\", v; else printf \"%.3f\", v }"; }
