#!/usr/bin/env bash
# memory.sh: docker-flow-proxy's memory against the performance issue's two targets, beside HAProxy.
#
# The targets: "idle RSS <= 20 MB with 1,000 routes; <= 30 kB per idle keep-alive client
# connection". What it measures:
#   idle    The proxy's resident memory (VmRSS, and its peak VmHWM, from /proc/PID/status) with
#           1 route, with --routes routes and (when it is routed within a minute) with 10,000
#           routes, restored from Consul KV at start (Consul mode), with one worker thread
#           (--threads 1) and with the default (one per core). Read once every route is routed
#           (dfp_services in the admin /metrics) and the RSS has stood still for 2 s (at least
#           3 s of quiet, at most 15 s). HAProxy beside it with the same routes in its config
#           (nbthread 1, and its default).
#   conns   RSS per idle keep-alive client connection: --connections clients each send one GET
#           to books-ms (/api/v1/books; one nginx instance registered in Consul), read the answer
#           and stay open, idle; (RSS holding them - RSS before) / connections. Ours with 10
#           routes (--threads 1 and the default), HAProxy with 10 routes and nbthread 1. The
#           connections are held by benches/memory/hold.py (python3), which checks at the end
#           that the proxy closed none of them.
# How: everything on 127.0.0.1, on free ports, no core pinning (memory does not depend on it).
# RSS is user-space memory only (the kernel's socket buffers are not in it). MB and kB in the
# report are 10^6 and 10^3 bytes (/proc's "kB" are KiB, converted); the verdicts use those.
#
# Run:     benches/memory.sh --bin target/release/docker-flow-proxy     (~2-3 minutes)
# Options: --bin PATH (skip the cargo build)  --routes N (default 1000)
#          --connections N (default 1000)  --help
# Needs:   Linux, root for apt-get when haproxy, nginx or curl is missing, `consul`
#          (../shared/bin/install-consul puts one on PATH), python3 for the connections part
#          (without it that part is skipped and the report says so).
# Output:  progress on stderr; the report (markdown) on stdout and in
#          target/memory/<timestamp>/report.md beside the configs and logs.
# Every process it starts is stopped when it ends, also on errors and Ctrl-C.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
readonly HERE REPO
readonly BENCH_NAME=memory
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$HERE/lib/common.sh"
readonly HOLD="$HERE/memory/hold.py"
readonly BIG_ROUTES=10000 # the extra row, measured when routed within BIG_BUDGET seconds
readonly BIG_BUDGET=60
readonly CONN_ROUTES=10   # routes of the proxies in the connections part
readonly QUIET_MIN=3      # seconds of quiet before any RSS reading...
readonly QUIET_STILL=4    # ...then this many equal readings 0.5 s apart (2 s)...
readonly QUIET_MAX=15     # ...or this many seconds, whichever comes first
readonly IDLE_TIMEOUT=300s # client keep-alive timeout of both proxies in the connections part
readonly TARGET_IDLE_MB=20
readonly TARGET_CONN_KB=30

ROUTES=1000
CONNECTIONS=1000
BIN=""
CONN_NOTE=""   # why the connections part was skipped or shrunk, for the report
BIG_NOTE=""    # why the 10,000-route row is missing, for the report

# ----------------------------------------------------------------------------------------------
# Small helpers

parse_args() {
  while (($#)); do
    case $1 in
      --bin) BIN=${2:?--bin needs a path}; shift ;;
      --routes) ROUTES=${2:?--routes needs a number}; shift ;;
      --connections) CONNECTIONS=${2:?--connections needs a number}; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift
  done
  [[ $ROUTES =~ ^[1-9][0-9]*$ ]] || die "--routes must be a number above 1, not $ROUTES"
  ((ROUTES > 1)) || die "--routes must be a number above 1, not $ROUTES"
  [[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "--connections must be a positive number, not $CONNECTIONS"
}

# kib_mb KIB: KiB (as /proc says "kB") in MB (10^6 bytes), one decimal.
kib_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }'; }

# seconds_since MS: seconds (one decimal) from MS (now_ms's clock) until now.
seconds_since() {
  now_ms
  awk -v ms=$((NOW_MS - $1)) 'BEGIN { printf "%.1f", ms / 1000 }'
}

# ----------------------------------------------------------------------------------------------
# Prerequisites (process, port and install helpers: lib/common.sh)

ensure_tools() {
  require_tools haproxy nginx:nginx-light pgrep:procps curl awk:
  ensure_consul
  if ! command -v python3 >/dev/null || ! python3 -c 'import socket, signal, resource' 2>/dev/null; then
    CONN_NOTE="not measured: python3 is not on PATH (it holds the client connections: benches/memory/hold.py)"
    log "python3 is missing: the connections part is skipped"
  fi
  # Descriptors, inherited by everything started here: the Consul agent and the proxy may hold
  # one connection per route; each held client connection costs one descriptor in hold.py and
  # one or two (client and upstream side) in the proxy.
  local big=$((ROUTES > BIG_ROUTES ? ROUTES : BIG_ROUTES)) want
  CONSUL_CONNS=$((big + 500))
  want=$((CONSUL_CONNS + 100 > 2 * CONNECTIONS + 200 ? CONSUL_CONNS + 100 : 2 * CONNECTIONS + 200))
  if (($(ulimit -n) < want)); then
    ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  fi
  local limit
  limit=$(ulimit -n)
  log "open files limit: $limit (soft; hard $(ulimit -Hn))"
  ((limit >= ROUTES + 600)) ||
    die "open files are limited to $limit, too few for $ROUTES routes: raise the limit (ulimit -n) or pass a smaller --routes"
  if ((ROUTES < BIG_ROUTES && limit < BIG_ROUTES + 600)); then
    BIG_NOTE="not measured: open files are limited to $limit, too few for $BIG_ROUTES routes"
  fi
  if ((limit < 2 * CONNECTIONS + 200)); then
    local fewer=$(((limit - 200) / 2))
    ((fewer >= 100)) || die "open files are limited to $limit, too few to hold even 100 connections"
    [[ -n $CONN_NOTE ]] || CONN_NOTE="$fewer connections instead of $CONNECTIONS: open files are limited to $limit (hard limit $(ulimit -Hn))"
    log "open files limited to $limit: holding $fewer connections instead of $CONNECTIONS"
    CONNECTIONS=$fewer
  fi
}

describe_machine() {
  machine_head
  echo "- binary: $BIN (built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'), $(kib_mb "$(($(stat -c %s "$BIN") / 1024))") MB on disk)"
  echo "- cores: $(nproc); CPU: $(cpu_model); kernel: $(uname -r); memory: $(awk '$1 == "MemTotal:" { printf "%.1f GB", $2 * 1024 / 1e9 }' /proc/meminfo)"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
  echo "- $(peer_versions); python: $(python3 --version 2>&1 || echo missing)"
  echo "- settings: --routes $ROUTES, --connections $CONNECTIONS; open files limit $(ulimit -n);" \
    "RSS read after ${QUIET_MIN}-${QUIET_MAX} s of quiet (once still for 2 s)"
  echo
}

# ----------------------------------------------------------------------------------------------
# The upstream (one nginx) and Consul

start_upstream() {
  free_port UPSTREAM_PORT
  start_nginx_upstream nginx-upstream "" "$UPSTREAM_PORT" ok $((CONNECTIONS + 1024)) 600s
  log "upstream: nginx on port $UPSTREAM_PORT"
}

start_consul() {
  start_consul_agent ""
  register_instance books-ms books-1 "$UPSTREAM_PORT"
  log "consul: dev agent at $CONSUL, books-ms registered with 1 instance"
}

# ----------------------------------------------------------------------------------------------
# The proxies under test. Each start_* sets PID[target] (the process whose memory is read),
# URL[target] (books-ms through it) and STARTUP_S (seconds from start to ready).

# start_ours TARGET INSTANCE_NAME EXPECTED_SERVICES THREADS BUDGET [OPTION...]: docker-flow-proxy
# against our Consul agent (THREADS "default": no --threads); it restores the routes stored
# under INSTANCE_NAME. Returns 1 (and stops it) when they are not all routed within BUDGET s.
start_ours() {
  local target=$1 instance=$2 expected=$3 threads=$4 budget=$5
  shift 5
  local -a options=("$@")
  [[ $threads == default ]] || options+=(--threads "$threads")
  launch_ours "$target" "" "$instance" 30 -- --tls-listen off ${options[@]+"${options[@]}"}
  if ! wait_until "$LAST_PID" "$target routing $expected routes" "$budget" services_routed "$target" "$expected"; then
    log "$target: $expected routes not routed within ${budget}s; stopping it"
    stop_tree "$LAST_PID"
    return 1
  fi
  STARTUP_S=$(seconds_since "$LAUNCHED_MS")
}

# haproxy_config ROUTES PORT NBTHREAD: Docker Flow Proxy's shape, books-ms's ACL first (memory
# does not care about the order). NBTHREAD "default" leaves HAProxy's own (one per core).
haproxy_config() {
  haproxy_head "$3" $((CONNECTIONS + 100 > 5000 ? CONNECTIONS + 100 : 5000)) "$IDLE_TIMEOUT" "$IDLE_TIMEOUT"
  haproxy_routes "$1" "$2" 0 "$UPSTREAM_PORT"
}

# start_haproxy TARGET ROUTES NBTHREAD: HAProxy in the foreground, one process (no master).
start_haproxy() {
  local target=$1 routes=$2 nbthread=$3 port
  free_port port
  haproxy_config "$routes" "$port" "$nbthread" >"$RUN/$target.cfg"
  launch_haproxy "$target" "" "$port" haproxy -db
  STARTUP_S=$(seconds_since "$LAUNCHED_MS")
}

# check_route TARGET: books-ms answers 200 "ok" through the proxy (three requests).
check_route() {
  local target=$1 i body
  for i in 1 2 3; do
    body=$(curl -s --max-time 5 -w ' %{http_code}' "${URL[$target]}") || die "$target: ${URL[$target]} did not answer"
    [[ $body == "ok 200" ]] || die "$target: ${URL[$target]} answered '$body', not 'ok 200' (logs: $LOGS/$target.log)"
  done
}

# ----------------------------------------------------------------------------------------------
# Reading memory

# read_memory PID: sets MEM_RSS MEM_HWM MEM_ANON MEM_FILE (KiB, /proc's "kB"), MEM_THREADS and
# MEM_FDS (open descriptors) of process PID.
read_memory() {
  local line
  line=$(awk '$1 == "VmRSS:" { r = $2 } $1 == "VmHWM:" { h = $2 } $1 == "RssAnon:" { a = $2 }
              $1 == "RssFile:" { f = $2 } $1 == "Threads:" { t = $2 }
              END { print r + 0, h + 0, a + 0, f + 0, t + 0 }' "/proc/$1/status") ||
    die "process $1 (${STARTED_NAME[$1]:-}) is gone: see $LOGS/${STARTED_NAME[$1]:-}.log"
  read -r MEM_RSS MEM_HWM MEM_ANON MEM_FILE MEM_THREADS <<<"$line"
  local -a fds=("/proc/$1/fd"/*)
  MEM_FDS=${#fds[@]}
}

# settle PID: waits for quiet: at least QUIET_MIN s, then until VmRSS gave QUIET_STILL equal
# readings in a row (0.5 s apart), at most QUIET_MAX s. Sets SETTLED (yes, or "no" when the
# RSS still moved) and then read_memory's figures.
settle() {
  local pid=$1 start=$SECONDS last="" same=0
  while :; do
    read_memory "$pid"
    if [[ $MEM_RSS == "$last" ]]; then same=$((same + 1)); else same=0 last=$MEM_RSS; fi
    if ((SECONDS - start >= QUIET_MIN && same >= QUIET_STILL)); then SETTLED=yes; return; fi
    if ((SECONDS - start >= QUIET_MAX)); then SETTLED=no; return; fi
    sleep 0.5
  done
}

# ----------------------------------------------------------------------------------------------
# Scenarios. Results: $IDLE (proxy threads routes startup_s rss hwm anon file os_threads
# settled) and $CONNS (proxy threads connections open before holding after_close per_conn_kb
# fds_before fds_holding settled), tab-separated, KiB.

threads_label() { [[ $1 == default ]] && echo "default ($(nproc))" || echo "$1"; }

idle_row() {
  local proxy=$1 threads=$2 routes=$3
  settle "${PID[$4]}"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$threads" "$routes" "$STARTUP_S" \
    "$MEM_RSS" "$MEM_HWM" "$MEM_ANON" "$MEM_FILE" "$MEM_THREADS" "$SETTLED" >>"$IDLE"
  log "$proxy threads=$threads routes=$routes: VmRSS $(kib_mb "$MEM_RSS") MB, VmHWM $(kib_mb "$MEM_HWM") MB" \
    "(anon $(kib_mb "$MEM_ANON"), file $(kib_mb "$MEM_FILE")); ready after ${STARTUP_S}s; still: $SETTLED"
}

scenario_idle() {
  local -a counts=(1 "$ROUTES")
  if ((ROUTES < BIG_ROUTES)) && [[ -z $BIG_NOTE ]]; then counts+=("$BIG_ROUTES"); fi
  local routes threads target budget started
  for routes in "${counts[@]}"; do
    started=$SECONDS
    store_routes "dfp-mem-r$routes" "$routes"
    log "stored $routes routes in Consul KV in $((SECONDS - started)) s"
  done
  for routes in "${counts[@]}"; do
    budget=600
    ((routes == BIG_ROUTES && ROUTES < BIG_ROUTES)) && budget=$BIG_BUDGET
    for threads in 1 default; do
      target="ours-r$routes-t$threads"
      log "idle: ours, $routes routes, threads $threads"
      if ! start_ours "$target" "dfp-mem-r$routes" "$routes" "$threads" "$budget"; then
        ((budget == BIG_BUDGET)) || die "$target did not route $routes routes within ${budget}s"
        BIG_NOTE="not measured: ours did not route $BIG_ROUTES routes within ${BIG_BUDGET} s"
        continue 2
      fi
      idle_row ours "$threads" "$routes" "$target"
      check_route "$target"
      stop_tree "${PID[$target]}"
    done
  done
  for routes in "${counts[@]}"; do
    for threads in 1 default; do
      target="haproxy-r$routes-t$threads"
      log "idle: haproxy, $routes routes, nbthread $threads"
      start_haproxy "$target" "$routes" "$threads"
      idle_row haproxy "$threads" "$routes" "$target"
      check_route "$target"
      stop_tree "${PID[$target]}"
    done
  done
}

# hold_connections PROXY THREADS TARGET: RSS of TARGET before, while holding CONNECTIONS idle
# keep-alive client connections (each has sent one GET to books-ms), and after they closed.
hold_connections() {
  local proxy=$1 threads=$2 target=$3 pid=${PID[$3]} hostport port
  hostport=${URL[$target]#http://}
  hostport=${hostport%%/*}
  port=${hostport##*:}
  check_route "$target"
  settle "$pid"
  local before=$MEM_RSS fds_before=$MEM_FDS
  start_bg "hold-$target" python3 "$HOLD" 127.0.0.1 "$port" "$BOOKS_PATH" "$CONNECTIONS"
  local holder=$LAST_PID
  wait_for "$holder" "hold.py opening $CONNECTIONS connections to $target" $((30 + CONNECTIONS / 50)) \
    grep -q '^HELD ' "$LOGS/hold-$target.log"
  settle "$pid"
  local holding=$MEM_RSS fds_holding=$MEM_FDS settled=$SETTLED
  kill -USR1 "$holder"
  wait_exit "$holder" $((SECONDS + 10))
  local open
  open=$(awk '$1 == "OPEN" { print $2 }' "$LOGS/hold-$target.log")
  [[ $open =~ ^[0-9]+$ ]] || die "hold.py did not say how many connections stayed open (see $LOGS/hold-$target.log)"
  settle "$pid"
  local per
  per=$(awk -v d=$((holding - before)) -v n="$CONNECTIONS" 'BEGIN { printf "%.1f", d * 1024 / n / 1000 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$threads" "$CONNECTIONS" "$open" \
    "$before" "$holding" "$MEM_RSS" "$per" "$fds_before" "$fds_holding" "$settled" >>"$CONNS"
  log "$proxy threads=$threads: $CONNECTIONS connections ($open still open): VmRSS $(kib_mb "$before") ->" \
    "$(kib_mb "$holding") MB ($per kB each), $(kib_mb "$MEM_RSS") MB after they closed; fds $fds_before -> $fds_holding"
}

scenario_conns() {
  [[ $CONN_NOTE != not* ]] || return 0
  store_routes dfp-mem-conns "$CONN_ROUTES"
  local threads target
  for threads in 1 default; do
    target="ours-conns-t$threads"
    log "connections: ours, $CONN_ROUTES routes, threads $threads, $CONNECTIONS connections"
    start_ours "$target" dfp-mem-conns "$CONN_ROUTES" "$threads" 60 --idle-timeout "$IDLE_TIMEOUT" ||
      die "$target did not route $CONN_ROUTES routes within 60 s"
    hold_connections ours "$threads" "$target"
    stop_tree "${PID[$target]}"
  done
  target="haproxy-conns-t1"
  log "connections: haproxy, $CONN_ROUTES routes, nbthread 1, $CONNECTIONS connections"
  start_haproxy "$target" "$CONN_ROUTES" 1
  hold_connections haproxy 1 "$target"
  stop_tree "${PID[$target]}"
}

# ----------------------------------------------------------------------------------------------
# Report

report_idle() {
  echo "## Idle RSS (Consul mode, routes restored from Consul KV at start)"
  echo
  echo "| proxy | worker threads | routes | ready after | VmRSS | VmHWM (peak) | anonymous | file-backed | OS threads | RSS still |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"
  local proxy threads routes startup rss hwm anon file os settled
  while IFS=$'\t' read -r proxy threads routes startup rss hwm anon file os settled; do
    printf '| %s | %s | %s | %s s | %s MB | %s MB | %s MB | %s MB | %s | %s |\n' "$proxy" \
      "$(threads_label "$threads")" "$routes" "$startup" "$(kib_mb "$rss")" "$(kib_mb "$hwm")" \
      "$(kib_mb "$anon")" "$(kib_mb "$file")" "$os" "$settled"
  done <"$IDLE"
  echo
  [[ -z $BIG_NOTE ]] || { echo "$BIG_ROUTES routes: $BIG_NOTE."; echo; }
  echo "Ready after: ours, from start until the admin /metrics says \`dfp_services\` = routes;" \
    "HAProxy, until it listens. Read after ${QUIET_MIN}-${QUIET_MAX} s of quiet; \"RSS still\" = no" \
    "change over the last 2 s. HAProxy (nbthread as shown) has the same routes in its config file."
  echo
}

report_conns() {
  echo "## RSS per idle keep-alive client connection"
  echo
  if [[ $CONN_NOTE == not* ]]; then
    echo "$CONN_NOTE."
    echo
    return
  fi
  echo "| proxy | worker threads | connections | still open at the end | VmRSS before | holding them | after they closed | per connection | descriptors before → holding |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  local proxy threads n open before holding after per fb fh settled
  while IFS=$'\t' read -r proxy threads n open before holding after per fb fh settled; do
    printf '| %s | %s | %s | %s | %s MB | %s MB | %s MB | **%s kB** | %s → %s |\n' "$proxy" \
      "$(threads_label "$threads")" "$n" "$open" "$(kib_mb "$before")" "$(kib_mb "$holding")" \
      "$(kib_mb "$after")" "$per" "$fb" "$fh"
  done <"$CONNS"
  echo
  [[ -z $CONN_NOTE ]] || { echo "Note: $CONN_NOTE."; echo; }
  echo "Each proxy has $CONN_ROUTES routes; books-ms has one nginx instance. Each client (python3," \
    "benches/memory/hold.py) connects, sends one GET $BOOKS_PATH, reads the 200 and then stays" \
    "open and idle; per connection = (RSS holding them - RSS before) / connections, both read" \
    "after ${QUIET_MIN}+ s of quiet. Both proxies' client keep-alive timeout is $IDLE_TIMEOUT" \
    "here (ours: --idle-timeout; HAProxy: timeout http-keep-alive and client), so none closes" \
    "while measured; \"still open\" is checked by the client at the end. Kernel socket buffers" \
    "are not in RSS."
  echo
}

# verdicts: one line per target, from the worst of ours' thread settings.
report_verdicts() {
  echo "## Verdicts"
  echo
  local worst
  worst=$(awk -F'\t' -v n="$ROUTES" '$1 == "ours" && $3 == n { s = s sep ($2 == "default" ? "default threads" : $2 " thread") ": " sprintf("%.1f", $5 * 1024 / 1e6) " MB"; sep = ", "; if ($5 > m) m = $5 }
    END { if (s != "") printf "%.1f\t%s\n", m * 1024 / 1e6, s }' "$IDLE")
  local scope="$ROUTES routes"
  ((ROUTES == 1000)) || scope="$ROUTES routes (the target speaks of 1,000)"
  if [[ -z $worst ]]; then
    echo "- idle RSS ≤ $TARGET_IDLE_MB MB with $scope: not measured"
  else
    local mb=${worst%%$'\t'*}
    local verdict="not met"
    awk -v a="$mb" -v t="$TARGET_IDLE_MB" 'BEGIN { exit !(a <= t) }' && verdict=met
    echo "- idle RSS ≤ $TARGET_IDLE_MB MB with $scope: **$verdict** ($mb MB at most; ${worst#*$'\t'})"
  fi
  if [[ $CONN_NOTE == not* ]]; then
    echo "- ≤ $TARGET_CONN_KB kB per idle keep-alive client connection: not measured ($CONN_NOTE)"
  else
    worst=$(awk -F'\t' '$1 == "ours" { s = s sep ($2 == "default" ? "default threads" : $2 " thread") ": " $8 " kB"; sep = ", "; if ($8 + 0 > m || !seen) m = $8 + 0; seen = 1; if ($4 != $3) closed = 1 }
      END { if (s != "") printf "%.1f\t%s\t%d\n", m, s, closed }' "$CONNS")
    local kb=${worst%%$'\t'*} rest=${worst#*$'\t'}
    local detail=${rest%$'\t'*} closed=${rest##*$'\t'}
    local verdict="not met"
    awk -v a="$kb" -v t="$TARGET_CONN_KB" 'BEGIN { exit !(a <= t) }' && verdict=met
    ((closed == 0)) || verdict="$verdict, but the proxy closed some of them: the figure is not valid"
    local haproxy
    haproxy=$(awk -F'\t' '$1 == "haproxy" { print $8 }' "$CONNS")
    echo "- ≤ $TARGET_CONN_KB kB per idle keep-alive client connection: **$verdict** ($kb kB at most;" \
      "$detail; HAProxy nbthread 1: ${haproxy:-?} kB; over $CONNECTIONS connections)"
  fi
  echo
}

main() {
  parse_args "$@"
  set_traps

  RUN="$REPO/target/memory/$(date +%Y%m%d-%H%M%S)"
  LOGS="$RUN/logs"
  IDLE="$RUN/idle.tsv"
  CONNS="$RUN/conns.tsv"
  mkdir -p "$LOGS"
  : >"$IDLE"
  : >"$CONNS"
  log "run directory: $RUN"
  local began=$SECONDS

  ensure_tools
  build_proxy
  describe_machine >"$RUN/machine.md"
  start_upstream
  start_consul

  scenario_idle
  scenario_conns

  {
    echo "# Memory: docker-flow-proxy beside HAProxy"
    echo
    cat "$RUN/machine.md"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg); run time: $((SECONDS - began)) s"
    echo
    report_verdicts
    report_idle
    report_conns
  } | tee "$RUN/report.md"
  log "report: $RUN/report.md; raw results: $IDLE, $CONNS"
  python3 "$HERE/lib/charts.py" --memory "$RUN" "$RUN/charts" || log "no chart drawn (python3 missing?)"
}

main "$@"
