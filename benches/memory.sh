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
readonly HOLD="$HERE/memory/hold.py"
readonly BOOKS_PATH=/api/v1/books
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

log() { printf '[memory %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'memory.sh: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^# Every process/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

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

now_ms() {
  local t=${EPOCHREALTIME/[.,]/}
  echo $((10#$t / 1000))
}

# ----------------------------------------------------------------------------------------------
# Processes: everything started goes through start_bg and is stopped by stop_tree/cleanup.

declare -a STARTED=()      # pids of the processes this script started, in start order
declare -A STARTED_NAME=() # pid -> name, for messages
CREATED_POLICY_RC=""

# start_bg NAME COMMAND...: runs COMMAND, output in $LOGS/NAME.log; sets LAST_PID.
start_bg() {
  local name=$1
  shift
  "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  LAST_PID=$!
  STARTED+=("$LAST_PID")
  STARTED_NAME[$LAST_PID]=$name
}

# The pid and all its descendants, parents first.
tree_pids() {
  local pid=$1 child
  echo "$pid"
  for child in $(pgrep -P "$pid" 2>/dev/null || true); do tree_pids "$child"; done
}

# stop_tree PID: SIGTERM to the process and its descendants, SIGKILL after 5 s.
stop_tree() {
  local pid=$1 p tries
  local -a tree
  mapfile -t tree < <(tree_pids "$pid")
  for p in "${tree[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for ((tries = 0; tries < 50; tries++)); do
    local alive=0
    for p in "${tree[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${tree[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# forget PID: PID has ended and been waited for; cleanup has nothing left to stop there.
forget() {
  local p
  local -a kept=()
  for p in "${STARTED[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
  STARTED=("${kept[@]+"${kept[@]}"}")
}

# wait_exit PID SECONDS: waits until process PID ends (and forgets it); dies after SECONDS.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || die "${STARTED_NAME[$pid]:-process $pid} did not finish in time (see $LOGS/${STARTED_NAME[$pid]:-}.log)"
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

cleanup() {
  local status=$?
  set +e
  trap - ERR
  local -a all=("${STARTED[@]+"${STARTED[@]}"}")
  local i
  ((${#all[@]} == 0)) || log "stopping what is still running: $(for p in "${all[@]}"; do printf '%s ' "${STARTED_NAME[$p]}"; done)"
  for ((i = ${#all[@]} - 1; i >= 0; i--)); do
    [[ -n ${all[i]} ]] && stop_tree "${all[i]}"
  done
  if [[ -n $CREATED_POLICY_RC ]]; then rm -f "$CREATED_POLICY_RC"; fi
  if ((status != 0)) && [[ -n ${LOGS:-} ]]; then
    log "stopped with status $status; logs of the processes are in $LOGS"
  fi
  exit "$status"
}

on_error() {
  log "failed at line $1: $2"
}

# ----------------------------------------------------------------------------------------------
# Ports: picked at random below the kernel's ephemeral range and checked against every socket
# in /proc/net/tcp{,6}, so they collide neither with listeners nor with outgoing connections.

declare -A TAKEN_PORTS=()

port_in_use() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v hex="$hex" 'FNR > 1 { split($2, a, ":"); if (a[length(a)] == hex) found = 1 }
                     END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# free_port VAR: sets VAR to a free port (the locals have odd names so that VAR can't be one).
free_port() {
  local _fp_try _fp_port _fp_low _fp_high
  read -r _fp_low _ </proc/sys/net/ipv4/ip_local_port_range
  _fp_high=$((_fp_low - 1))
  _fp_low=$((_fp_high - 12000 > 1024 ? _fp_high - 12000 : 1025))
  for ((_fp_try = 0; _fp_try < 500; _fp_try++)); do
    _fp_port=$((_fp_low + (RANDOM * 32768 + RANDOM) % (_fp_high - _fp_low + 1)))
    [[ -n ${TAKEN_PORTS[$_fp_port]:-} ]] && continue
    port_in_use "$_fp_port" && continue
    TAKEN_PORTS[$_fp_port]=1
    printf -v "$1" '%s' "$_fp_port"
    return 0
  done
  die "found no free port between $_fp_low and $_fp_high"
}

# wait_until PID SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds (status 0) or
# SECONDS pass (status 1); dies at once when process PID (the one expected to make it true) ends.
wait_until() {
  local pid=$1 seconds=$2 tries
  shift 2
  for ((tries = 0; tries < seconds * 10; tries++)); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || die "${STARTED_NAME[$pid]:-process $pid} exited while waiting for: $* (see $LOGS/${STARTED_NAME[$pid]:-}.log)"
    sleep 0.1
  done
  return 1
}

# wait_for PID DESCRIPTION SECONDS COMMAND...: wait_until, dying when SECONDS pass.
wait_for() {
  local pid=$1 what=$2 seconds=$3
  shift 3
  wait_until "$pid" "$seconds" "$@" || die "$what did not happen within ${seconds}s (logs: $LOGS)"
}

listening() { port_in_use "$1" && (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ----------------------------------------------------------------------------------------------
# Prerequisites

install_packages() {
  local -a packages=("$@")
  ((EUID == 0)) || die "missing ${packages[*]} and not root: install them (apt-get install ${packages[*]}) and run again"
  command -v apt-get >/dev/null || die "missing ${packages[*]} and no apt-get here: install them and run again"
  # Debian starts a package's daemon on install unless policy-rc.d says no; this script must
  # leave nothing running, so say no for the time of the install when nobody else does.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    CREATED_POLICY_RC=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$CREATED_POLICY_RC"
    chmod +x "$CREATED_POLICY_RC"
  fi
  log "installing ${packages[*]} with apt-get"
  apt-get update -qq >&2 || die "apt-get update failed: cannot install ${packages[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2 ||
    die "apt-get install ${packages[*]} failed"
  if [[ -n $CREATED_POLICY_RC ]]; then
    rm -f "$CREATED_POLICY_RC"
    CREATED_POLICY_RC=""
  fi
}

ensure_tools() {
  local -a missing=()
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v nginx >/dev/null || missing+=(nginx-light)
  command -v pgrep >/dev/null || missing+=(procps)
  command -v curl >/dev/null || missing+=(curl)
  ((${#missing[@]} == 0)) || install_packages "${missing[@]}"
  local tool
  for tool in haproxy nginx pgrep curl awk; do
    command -v "$tool" >/dev/null || die "$tool is still missing after the install"
  done
  if ! command -v consul >/dev/null; then
    local installer="$REPO/../shared/bin/install-consul"
    [[ -x $installer ]] || die "consul is not on PATH and $installer is missing: install Consul 1.8+"
    "$installer" >&2 || die "$installer failed"
    command -v consul >/dev/null || die "consul is still not on PATH after $installer"
  fi
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

build_proxy() {
  if [[ -n $BIN ]]; then
    [[ -x $BIN ]] || die "--bin $BIN is not an executable"
    log "using $BIN (not built)"
    return
  fi
  log "building: cargo build --release -p docker-flow-proxy"
  (cd "$REPO" && cargo build --release -p docker-flow-proxy >&2) ||
    die "cargo build --release -p docker-flow-proxy failed"
  BIN="$REPO/target/release/docker-flow-proxy"
}

describe_machine() {
  local cpu commit
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$REPO" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
  echo "## Machine"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $commit"
  echo "- binary: $BIN (built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'), $(kib_mb "$(($(stat -c %s "$BIN") / 1024))") MB on disk)"
  echo "- cores: $(nproc); CPU: ${cpu:-unknown}; kernel: $(uname -r); memory: $(awk '$1 == "MemTotal:" { printf "%.1f GB", $2 * 1024 / 1e9 }' /proc/meminfo)"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
  echo "- haproxy: $(haproxy -v 2>&1 | awk 'NR == 1 { print $3 }'); nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///');" \
    "consul: $(consul version | awk 'NR == 1 { print $2 }'); python: $(python3 --version 2>&1 || echo missing)"
  echo "- settings: --routes $ROUTES, --connections $CONNECTIONS; open files limit $(ulimit -n);" \
    "RSS read after ${QUIET_MIN}-${QUIET_MAX} s of quiet (once still for 2 s)"
  echo
}

# ----------------------------------------------------------------------------------------------
# The upstream (one nginx) and Consul

start_upstream() {
  local dir="$RUN/nginx-upstream"
  free_port UPSTREAM_PORT
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $((CONNECTIONS + 1024)); }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  scgi_temp_path $dir/scgi;
  uwsgi_temp_path $dir/uwsgi;
  server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 "ok"; } }
}
EOF
  start_bg nginx-upstream nginx -p "$dir" -c "$dir/nginx.conf" -e stderr
  wait_for "$LAST_PID" "nginx upstream listening on port $UPSTREAM_PORT" 10 listening "$UPSTREAM_PORT"
  log "upstream: nginx on port $UPSTREAM_PORT"
}

consul_up() { [[ $(curl -sf --max-time 1 "$CONSUL/v1/status/leader") == *:* ]]; }

start_consul() {
  local http lan wan server
  free_port http
  free_port lan
  free_port wan
  free_port server
  CONSUL="http://127.0.0.1:$http"
  start_bg consul consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 \
    -http-port "$http" -dns-port -1 -grpc-port -1 \
    -serf-lan-port "$lan" -serf-wan-port "$wan" -server-port "$server" -log-level warn \
    -hcl "limits { http_max_conns_per_client = $CONSUL_CONNS }"
  wait_for "$LAST_PID" "Consul dev agent on port $http electing itself" 30 consul_up
  curl -sf --max-time 5 -X PUT "$CONSUL/v1/agent/service/register" \
    -d "{\"Name\":\"books-ms\",\"ID\":\"books-1\",\"Address\":\"127.0.0.1\",\"Port\":$UPSTREAM_PORT}" ||
    die "registering books-1 in Consul failed"
  log "consul: dev agent at $CONSUL, books-ms registered with 1 instance"
}

# kv_put_block INSTANCE SERVICE PATH: a curl config block storing one route in Consul KV.
kv_put_block() {
  printf 'url = "%s/v1/kv/%s/services/%s"\nrequest = "PUT"\n' "$CONSUL" "$1" "$2"
  printf 'data = "{\\"serviceName\\":\\"%s\\",\\"servicePath\\":\\"%s\\"}"\n' "$2" "$3"
  printf 'output = "/dev/null"\nwrite-out = "%%{http_code}\\n"\nmax-time = 10\n'
}

# store_routes INSTANCE_NAME COUNT: stores COUNT routes in Consul KV the way a reconfigure
# does (`<instance>/services/<name>` = the call's parameters as JSON): books-ms on
# /api/v1/books and COUNT-1 services svc-<i> on /api/v<i%7>/svc-<i> with no instance.
# One curl stores them all (one config block per key, separated by `next`).
store_routes() {
  local instance=$1 count=$2 i batch="$RUN/kv-$1.curl"
  {
    kv_put_block "$instance" books-ms "$BOOKS_PATH"
    for ((i = 1; i < count; i++)); do
      echo next
      kv_put_block "$instance" "svc-$i" "/api/v$((i % 7))/svc-$i"
    done
  } >"$batch"
  local stored
  stored=$(curl -s -K "$batch" | grep -c '^200$' || true)
  ((stored == count)) || die "stored $stored of $count routes in Consul KV under $instance/services/"
  local listed
  listed=$(curl -sf --max-time 30 "$CONSUL/v1/kv/$instance/services/?keys" | tr ',' '\n' | grep -c services/ || true)
  ((listed == count)) || die "Consul KV lists $listed keys under $instance/services/, expected $count"
}

# ----------------------------------------------------------------------------------------------
# The proxies under test. Each start_* sets PID[target] (the process whose memory is read),
# URL[target] (books-ms through it) and STARTUP_S (seconds from start to ready).

declare -A URL=() PID=() ADMIN=()

services_routed() {
  local metrics
  metrics=$(curl -sf --max-time 5 "${ADMIN[$1]}/metrics") || return 1
  [[ $(awk '$1 == "dfp_services" { print $2 }' <<<"$metrics") == "$2" ]]
}

# start_ours TARGET INSTANCE_NAME EXPECTED_SERVICES THREADS BUDGET [OPTION...]: docker-flow-proxy
# against our Consul agent (THREADS "default": no --threads); it restores the routes stored
# under INSTANCE_NAME. Returns 1 (and stops it) when they are not all routed within BUDGET s.
start_ours() {
  local target=$1 instance=$2 expected=$3 threads=$4 budget=$5 port admin started
  shift 5
  local -a options=("$@")
  [[ $threads == default ]] || options+=(--threads "$threads")
  free_port port
  free_port admin
  started=$(now_ms)
  start_bg "$target" "$BIN" server --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --tls-listen off --consul-address "http://127.0.0.1:${CONSUL##*:}" --instance-name "$instance" \
    --shutdown-grace 1s ${options[@]+"${options[@]}"}
  PID[$target]=$LAST_PID
  URL[$target]="http://127.0.0.1:$port$BOOKS_PATH"
  ADMIN[$target]="http://127.0.0.1:$admin"
  wait_for "$LAST_PID" "$target's admin API on port $admin" 30 listening "$admin"
  if ! wait_until "$LAST_PID" "$budget" services_routed "$target" "$expected"; then
    log "$target: $expected routes not routed within ${budget}s; stopping it"
    stop_tree "$LAST_PID"
    return 1
  fi
  STARTUP_S=$(awk -v ms=$(($(now_ms) - started)) 'BEGIN { printf "%.1f", ms / 1000 }')
}

# haproxy_config ROUTES PORT NBTHREAD: Docker Flow Proxy's shape: one frontend with a path_beg
# ACL and a use_backend line per service, one backend per service (books-ms's first: memory
# does not care about the order). NBTHREAD "default" leaves HAProxy's own (one per core).
haproxy_config() {
  local routes=$1 port=$2 nbthread=$3 i
  echo "global"
  [[ $nbthread == default ]] || echo "  nbthread $nbthread"
  cat <<EOF
  maxconn $((CONNECTIONS + 100 > 5000 ? CONNECTIONS + 100 : 5000))
  tune.bufsize 16384

defaults
  mode http
  balance roundrobin
  option http-keep-alive
  option forwardfor
  option dontlognull
  option redispatch
  http-reuse always
  timeout connect 5s
  timeout client $IDLE_TIMEOUT
  timeout server 20s
  timeout queue 30s
  timeout tunnel 3600s
  timeout http-request 5s
  timeout http-keep-alive $IDLE_TIMEOUT

frontend services
  bind 127.0.0.1:$port
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  acl url_books-ms path_beg $BOOKS_PATH
  use_backend books-ms-be if url_books-ms
EOF
  for ((i = 1; i < routes; i++)); do
    printf '  acl url_svc-%d path_beg /api/v%d/svc-%d\n  use_backend svc-%d-be if url_svc-%d\n' \
      "$i" $((i % 7)) "$i" "$i" "$i"
  done
  echo
  printf 'backend books-ms-be\n  server books-1 127.0.0.1:%s\n' "$UPSTREAM_PORT"
  for ((i = 1; i < routes; i++)); do
    printf 'backend svc-%d-be\n  server svc-%d 127.0.0.1:9\n' "$i" "$i"
  done
}

# start_haproxy TARGET ROUTES NBTHREAD: HAProxy in the foreground, one process (no master).
start_haproxy() {
  local target=$1 routes=$2 nbthread=$3 port cfg started
  free_port port
  cfg="$RUN/$target.cfg"
  haproxy_config "$routes" "$port" "$nbthread" >"$cfg"
  haproxy -c -f "$cfg" >"$LOGS/$target.check.log" 2>&1 || die "HAProxy refuses $cfg: see $LOGS/$target.check.log"
  started=$(now_ms)
  start_bg "$target" haproxy -db -f "$cfg"
  PID[$target]=$LAST_PID
  URL[$target]="http://127.0.0.1:$port$BOOKS_PATH"
  wait_for "$LAST_PID" "$target listening on port $port" 120 listening "$port"
  STARTUP_S=$(awk -v ms=$(($(now_ms) - started)) 'BEGIN { printf "%.1f", ms / 1000 }')
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
  wait_exit "$holder" 10
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
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'on_error $LINENO "$BASH_COMMAND"' ERR

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
}

main "$@"
