#!/usr/bin/env bash
# compare.sh: docker-flow-proxy side by side with HAProxy, nginx and no proxy at all.
#
# What it answers, for tiny keep-alive GETs over loopback:
#   closed  Closed-loop throughput (req/s), p50/p99 latency, errors and the proxy's CPU time per
#           request, for: ours, HAProxy, nginx as a proxy, and "direct" (wrk straight at one
#           upstream, no proxy: what the load side can do, the ceiling for any proxy here).
#   paced   The same with each connection pausing 1-4 ms between requests, so no core
#           saturates: the proxy's CPU per request there is the steady figure to compare.
#   routes  Throughput of ours and of HAProxy with 10 routes and with 10,000 routes.
#   churn   Failed requests and throughput while the routes change every 100 ms (ours: admin
#           reconfigure calls; HAProxy: a master-worker reload), next to a quiet run.
#   instructions
#           User-space instructions and system calls per request of ours and of HAProxy (10
#           routes), counts that the machine's noise does not move: a fixed number of requests
#           (--requests, over 10 keep-alive connections, after 500 warm-up requests) through the
#           proxy under valgrind's callgrind (instructions of all its threads, startup and warm-up
#           excluded), then through the proxy alone with `strace -c -f` attached (its syscalls).
#           About a minute (one run each: counts need no rounds), so it is part of every run.
#
# How: the proxy under test runs on core 0 with one worker thread (HAProxy `nbthread 1`, nginx
# `worker_processes 1`); wrk, the three nginx upstreams and the Consul dev agent share core 1.
# Targets alternate within each round (ours, haproxy, nginx, direct), and every ratio is taken
# between runs of the same round, so slow drifts of the machine cancel out. Proxy CPU is the
# utime+stime delta in /proc/<pid>/stat of the proxy's whole process tree (HAProxy's and nginx's
# master and worker processes included, and workers they reaped meanwhile), divided by the
# requests wrk completed. The kernel keeps utime+stime equal to the exact run time (only the
# user/system split is sampled); core 0's busy time in /proc/stat, tick-sampled, is a cross-check.
#
# Run:     benches/compare.sh                  (8 rounds of 10 s, 50 connections; ~25 minutes)
#          benches/compare.sh --quick          (2 rounds of 3 s, 2,000 counted requests: checks
#                                              that everything works)
#          benches/compare.sh --only instructions   (~1 minute)
# Options: --rounds N  --duration SECONDS  --connections N
#          --only closed|paced|routes|churn|instructions
#          --routes N (the large route count, default 10000)  --bin PATH (skip the cargo build)
#          --requests N (instructions: the counted requests, default 20000)
# Needs:   a 2-core (or larger) Linux machine, root for apt-get when haproxy, nginx, wrk (or,
#          for instructions, valgrind or strace) is missing, and `consul`
#          (../shared/bin/install-consul puts one on PATH).
# Output:  progress on stderr; the report (markdown, ready for BENCHMARKS.md) on stdout and in
#          target/compare/<timestamp>/report.md beside the raw results, configs and logs.
# Every process it starts is stopped when it ends, also on errors and Ctrl-C.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
readonly HERE REPO
readonly HELPERS="$HERE/compare"
readonly PROXY_CORE=0
readonly LOAD_CORE=1
readonly BOOKS_PATH=/api/v1/books

ROUNDS=8
DURATION=10
CONNECTIONS=50
ONLY=all
MANY_ROUTES=10000
BIN=""
INSTR_REQUESTS=20000
readonly INSTR_CONNECTIONS=10
readonly INSTR_WARMUP=500

# ----------------------------------------------------------------------------------------------
# Small helpers

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'compare.sh: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,/^# Every process/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

parse_args() {
  while (($#)); do
    case $1 in
      --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
      --duration) DURATION=${2:?--duration needs seconds}; shift ;;
      --connections) CONNECTIONS=${2:?--connections needs a number}; shift ;;
      --only) ONLY=${2:?--only needs closed, paced, routes, churn or instructions}; shift ;;
      --routes) MANY_ROUTES=${2:?--routes needs a number}; shift ;;
      --bin) BIN=${2:?--bin needs a path}; shift ;;
      --requests) INSTR_REQUESTS=${2:?--requests needs a number}; shift ;;
      --quick) ROUNDS=2 DURATION=3 INSTR_REQUESTS=2000 ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift
  done
  [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number, not $ROUNDS"
  [[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be whole seconds, not $DURATION"
  [[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "--connections must be a positive number"
  [[ $MANY_ROUTES =~ ^[1-9][0-9]*$ ]] || die "--routes must be a number above 10"
  ((MANY_ROUTES > 10)) || die "--routes must be a number above 10"
  [[ $INSTR_REQUESTS =~ ^[1-9][0-9]*$ ]] || die "--requests must be a number, not $INSTR_REQUESTS"
  ((INSTR_REQUESTS >= INSTR_CONNECTIONS)) || die "--requests must be at least $INSTR_CONNECTIONS"
  case $ONLY in
    all | closed | paced | routes | churn | instructions) ;;
    *) die "--only takes closed, paced, routes, churn or instructions" ;;
  esac
}

wants() { [[ $ONLY == all || $ONLY == "$1" ]]; }

# ----------------------------------------------------------------------------------------------
# Processes: everything started goes through start_pinned and is stopped by stop_tree/cleanup.

declare -a STARTED=()      # pids of the processes this script started, in start order
declare -A STARTED_NAME=() # pid -> name, for messages
CREATED_POLICY_RC=""

# start_pinned NAME CORE COMMAND...: runs COMMAND pinned to CORE, output in $LOGS/NAME.log;
# sets LAST_PID.
start_pinned() {
  local name=$1 core=$2
  shift 2
  taskset -c "$core" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
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

# wait_exit PID DEADLINE: waits until process PID ends (and forgets it); dies when the clock
# ($SECONDS) passes DEADLINE first.
wait_exit() {
  local pid=$1 deadline=$2
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

# wait_for PID DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds;
# gives up after SECONDS, or at once when process PID (the one expected to make it true) ends.
wait_for() {
  local pid=$1 what=$2 seconds=$3 tries
  shift 3
  for ((tries = 0; tries < seconds * 10; tries++)); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || die "$what did not happen: ${STARTED_NAME[$pid]:-process $pid} exited (see $LOGS/${STARTED_NAME[$pid]:-}.log)"
    sleep 0.1
  done
  die "$what did not happen within ${seconds}s (logs: $LOGS)"
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
  command -v wrk >/dev/null || missing+=(wrk)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v pgrep >/dev/null || missing+=(procps)
  command -v curl >/dev/null || missing+=(curl)
  local -a tools=(haproxy nginx wrk taskset pgrep curl awk)
  if wants instructions; then
    if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then missing+=(valgrind); fi
    command -v strace >/dev/null || missing+=(strace)
    tools+=(valgrind callgrind_control strace)
  fi
  ((${#missing[@]} == 0)) || install_packages "${missing[@]}"
  local tool
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is still missing after the install"
  done
  if ! command -v consul >/dev/null; then
    local installer="$REPO/../shared/bin/install-consul"
    [[ -x $installer ]] || die "consul is not on PATH and $installer is missing: install Consul 1.8+"
    "$installer" >&2 || die "$installer failed"
    command -v consul >/dev/null || die "consul is still not on PATH after $installer"
  fi
  (($(nproc) >= 2)) || die "needs at least 2 cores (proxy on core $PROXY_CORE, load on core $LOAD_CORE)"
  # N routes mean N blocking queries to Consul, each on its own connection: the proxy and the
  # agent each need N descriptors and more (inherited from this shell's limit).
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  CONSUL_CONNS=$((MANY_ROUTES + 500))
  (($(ulimit -n) >= CONSUL_CONNS + 100)) ||
    die "open files are limited to $(ulimit -n), too few for $MANY_ROUTES routes (each one holds a connection to Consul): raise the limit or pass a smaller --routes"
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
  echo "- cores: $(nproc); CPU: ${cpu:-unknown}; kernel: $(uname -r)"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
  echo "- haproxy: $(haproxy -v 2>&1 | awk 'NR == 1 { print $3 }'); nginx: $(nginx -v 2>&1 | sed 's/.*nginx\///');" \
    "wrk: $({ wrk -v 2>&1 || true; } | awk 'NR == 1 { print $2 }'); consul: $(consul version | awk 'NR == 1 { print $2 }');" \
    "$(rustc --version 2>/dev/null || echo 'rustc unknown')"
  echo "- settings: $ROUNDS rounds, ${DURATION} s per run, $CONNECTIONS connections, wrk -t 1;" \
    "proxy on core $PROXY_CORE, wrk + upstreams + Consul on core $LOAD_CORE"
  if wants instructions; then
    echo "- instructions: $(valgrind --version) (callgrind), strace $(strace -V | awk 'NR == 1 { print $NF }');" \
      "$INSTR_REQUESTS requests over $INSTR_CONNECTIONS connections (curl, on core $LOAD_CORE)"
  fi
  echo
}

# ----------------------------------------------------------------------------------------------
# Upstreams (three nginx) and Consul

declare -a UPSTREAM_PORTS=()

nginx_common() {
  # Everything nginx writes goes to the run's directory, nothing to /var.
  local dir=$1
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
EOF
}

nginx_http_common() {
  local dir=$1
  cat <<EOF
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 60s;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  scgi_temp_path $dir/scgi;
  uwsgi_temp_path $dir/uwsgi;
EOF
}

start_upstreams() {
  local i port dir
  for i in 1 2 3; do
    free_port port
    dir="$RUN/nginx-upstream-$i"
    mkdir -p "$dir"
    {
      nginx_common "$dir"
      echo "http {"
      nginx_http_common "$dir"
      echo "  server { listen 127.0.0.1:$port; location / { return 200 \"ok$i\"; } }"
      echo "}"
    } >"$dir/nginx.conf"
    start_pinned "nginx-upstream-$i" "$LOAD_CORE" nginx -p "$dir" -c "$dir/nginx.conf" -e stderr
    wait_for "$LAST_PID" "nginx upstream $i listening on port $port" 10 listening "$port"
    UPSTREAM_PORTS+=("$port")
  done
  log "upstreams: nginx on ports ${UPSTREAM_PORTS[*]} (core $LOAD_CORE)"
}

consul_up() { [[ $(curl -sf --max-time 1 "$CONSUL/v1/status/leader") == *:* ]]; }

start_consul() {
  local http lan wan server
  free_port http
  free_port lan
  free_port wan
  free_port server
  CONSUL="http://127.0.0.1:$http"
  start_pinned consul "$LOAD_CORE" consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 \
    -http-port "$http" -dns-port -1 -grpc-port -1 \
    -serf-lan-port "$lan" -serf-wan-port "$wan" -server-port "$server" -log-level warn \
    -hcl "limits { http_max_conns_per_client = $CONSUL_CONNS }"
  wait_for "$LAST_PID" "Consul dev agent on port $http electing itself" 30 consul_up
  local i
  for i in 1 2 3; do
    curl -sf --max-time 5 -X PUT "$CONSUL/v1/agent/service/register" \
      -d "{\"Name\":\"books-ms\",\"ID\":\"books-$i\",\"Address\":\"127.0.0.1\",\"Port\":${UPSTREAM_PORTS[i - 1]}}" ||
      die "registering books-$i in Consul failed"
  done
  # A second service for the churn scenario, on the first upstream.
  curl -sf --max-time 5 -X PUT "$CONSUL/v1/agent/service/register" \
    -d "{\"Name\":\"churn-ms\",\"ID\":\"churn-1\",\"Address\":\"127.0.0.1\",\"Port\":${UPSTREAM_PORTS[0]}}" ||
    die "registering churn-1 in Consul failed"
  log "consul: dev agent at $CONSUL (core $LOAD_CORE), books-ms registered with 3 instances"
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
# The proxies under test. Each start_* sets URL[target] (where wrk sends requests) and
# PID[target] (the root of the process tree whose CPU is counted).

declare -A URL=() PID=() ADMIN=()

# start_ours TARGET INSTANCE_NAME EXPECTED_SERVICES [WRAPPER...]: starts docker-flow-proxy on
# core 0 with one worker thread against our Consul agent; it restores the routes stored under
# INSTANCE_NAME. A WRAPPER (valgrind and its options) runs the proxy under it, given more time.
start_ours() {
  local target=$1 instance=$2 expected=$3 port admin patience=1
  shift 3
  (($# == 0)) || patience=10
  local -a optional=()
  # Listeners this comparison does not use are turned off where the binary has them.
  if "$BIN" server --help 2>/dev/null | grep -q -- '--tls-listen'; then optional+=(--tls-listen off); fi
  free_port port
  free_port admin
  start_pinned "$target" "$PROXY_CORE" "$@" "$BIN" server --threads 1 \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --consul-address "http://127.0.0.1:${CONSUL##*:}" --instance-name "$instance" \
    --shutdown-grace 1s "${optional[@]+"${optional[@]}"}"
  PID[$target]=$LAST_PID
  URL[$target]="http://127.0.0.1:$port$BOOKS_PATH"
  ADMIN[$target]="http://127.0.0.1:$admin"
  wait_for "$LAST_PID" "$target's admin API on port $admin" $((30 * patience)) listening "$admin"
  wait_for "$LAST_PID" "$target restoring $expected routes" 600 services_routed "$target" "$expected"
}

services_routed() {
  local metrics
  metrics=$(curl -sf --max-time 5 "${ADMIN[$1]}/metrics") || return 1
  [[ $(awk '$1 == "dfp_services" { print $2 }' <<<"$metrics") == "$2" ]]
}

# reconfigure TARGET SERVICE PATH: the admin API call Docker Flow Proxy's users make.
reconfigure() {
  curl -s --max-time 5 -o "$RUN/last-reconfigure.json" -w '%{http_code}' \
    "${ADMIN[$1]}/v1/docker-flow-proxy/reconfigure?serviceName=$2&servicePath=$3"
}

# route_books TARGET: reconfigures books-ms on ours, as its users do; it must find the instances.
route_books() {
  local code
  code=$(reconfigure "$1" books-ms "$BOOKS_PATH")
  [[ $code == 200 ]] || die "$1: reconfigure of books-ms answered $code: $(cat "$RUN/last-reconfigure.json")"
  grep -q '127.0.0.1' "$RUN/last-reconfigure.json" || die "$1: reconfigure found no instance: $(cat "$RUN/last-reconfigure.json")"
}

# haproxy_config ROUTES PORT: Docker Flow Proxy's shape: one frontend with a path_beg
# ACL and a use_backend line per service, one backend per service. books-ms's ACL is in the
# middle of the list: HAProxy tries the rules in order, so with traffic spread evenly over the
# services a request meets half of them on average before its own.
haproxy_config() {
  local routes=$1 port=$2 middle=$(($1 / 2)) i
  cat <<EOF
global
  nbthread 1
  maxconn 5000
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
  timeout client 20s
  timeout server 20s
  timeout queue 30s
  timeout tunnel 3600s
  timeout http-request 5s
  timeout http-keep-alive 15s

frontend services
  bind 127.0.0.1:$port
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
EOF
  for ((i = 1; i < routes; i++)); do
    if ((i == middle)); then
      printf '  acl url_books-ms path_beg %s\n  use_backend books-ms-be if url_books-ms\n' "$BOOKS_PATH"
    fi
    printf '  acl url_svc-%d path_beg /api/v%d/svc-%d\n  use_backend svc-%d-be if url_svc-%d\n' \
      "$i" $((i % 7)) "$i" "$i" "$i"
  done
  echo
  echo "backend books-ms-be"
  for i in 1 2 3; do echo "  server books-$i 127.0.0.1:${UPSTREAM_PORTS[i - 1]}"; done
  for ((i = 1; i < routes; i++)); do
    printf 'backend svc-%d-be\n  server svc-%d 127.0.0.1:9\n' "$i" "$i"
  done
}

# start_haproxy TARGET ROUTES [MODE [WRAPPER...]]: HAProxy on core 0 (in the foreground; MODE
# -W: master-worker, "" not); a WRAPPER (valgrind and its options) runs HAProxy under it.
start_haproxy() {
  local target=$1 routes=$2 mode=${3:-} port cfg
  shift $(($# < 3 ? $# : 3))
  free_port port
  cfg="$RUN/$target.cfg"
  haproxy_config "$routes" "$port" >"$cfg"
  haproxy -c -f "$cfg" >"$LOGS/$target.check.log" 2>&1 || die "HAProxy refuses $cfg: see $LOGS/$target.check.log"
  if [[ $mode == -W ]]; then
    start_pinned "$target" "$PROXY_CORE" "$@" haproxy -W -db -f "$cfg"
  else
    start_pinned "$target" "$PROXY_CORE" "$@" haproxy -db -f "$cfg"
  fi
  PID[$target]=$LAST_PID
  URL[$target]="http://127.0.0.1:$port$BOOKS_PATH"
  wait_for "$LAST_PID" "$target listening on port $port" 120 listening "$port"
}

# start_nginx_proxy TARGET: nginx as a reverse proxy on core 0 with the same 10 routes
# (prefix locations) and pooled keep-alive connections to the upstreams.
start_nginx_proxy() {
  local target=$1 port dir i
  free_port port
  dir="$RUN/$target"
  mkdir -p "$dir"
  {
    nginx_common "$dir"
    echo "http {"
    nginx_http_common "$dir"
    echo "  upstream books-ms {"
    for i in 1 2 3; do echo "    server 127.0.0.1:${UPSTREAM_PORTS[i - 1]};"; done
    # Idle connections kept per worker, over all three upstreams. Fewer than the client
    # connections (the usual 32 with 50 clients) makes nginx close and reopen upstream
    # connections all the time; room for every client on every upstream avoids that.
    echo "    keepalive $((3 * CONNECTIONS > 32 ? 3 * CONNECTIONS : 32));"
    echo "    keepalive_requests 100000000;"
    echo "  }"
    echo "  upstream unused { server 127.0.0.1:9; }"
    echo "  proxy_http_version 1.1;"
    echo "  proxy_set_header Connection \"\";"
    echo "  proxy_set_header Host \$http_host;"
    echo "  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
    echo "  proxy_set_header X-Forwarded-Proto \$scheme;"
    echo "  proxy_set_header X-Forwarded-Host \$http_host;"
    echo "  server {"
    echo "    listen 127.0.0.1:$port;"
    echo "    location $BOOKS_PATH { proxy_pass http://books-ms; }"
    for i in $(seq 1 9); do echo "    location /api/v$((i % 7))/svc-$i { proxy_pass http://unused; }"; done
    echo "  }"
    echo "}"
  } >"$dir/nginx.conf"
  start_pinned "$target" "$PROXY_CORE" nginx -p "$dir" -c "$dir/nginx.conf" -e stderr
  PID[$target]=$LAST_PID
  URL[$target]="http://127.0.0.1:$port$BOOKS_PATH"
  wait_for "$LAST_PID" "$target listening on port $port" 10 listening "$port"
}

set_direct() {
  URL[direct]="http://127.0.0.1:${UPSTREAM_PORTS[0]}$BOOKS_PATH"
  PID[direct]=""
}

# check_route TARGET: the route answers 200, and (through a proxy) six requests reach all
# three upstreams.
check_route() {
  local target=$1 i code body seen=""
  for i in 1 2 3 4 5 6; do
    body=$(curl -s --max-time 5 -w ' %{http_code}' "${URL[$target]}") || die "$target: ${URL[$target]} did not answer"
    code=${body##* }
    [[ $code == 200 ]] || die "$target: ${URL[$target]} answered $code, not 200 (logs: $LOGS/$target.log)"
    seen+="${body%% *} "
  done
  if [[ $target != direct ]]; then
    for i in 1 2 3; do
      [[ $seen == *"ok$i "* ]] || die "$target: six requests never reached upstream $i (answers: $seen)"
    done
  fi
  log "$target: ${URL[$target]} answers 200 (upstreams seen: $seen)"
}

# ----------------------------------------------------------------------------------------------
# Measuring one run

CLK_TCK=$(getconf CLK_TCK)
readonly CLK_TCK

# cpu_ticks PID: "USER SYSTEM", the CPU time (clock ticks) of PID and all its descendants so
# far: utime and stime of each, plus cutime and cstime (the CPU of the children each has already
# reaped: HAProxy's master reaps the workers that a reload retires, nginx's master old workers).
cpu_ticks() {
  local user=0 system=0 p line
  local -a f
  for p in $(tree_pids "$1"); do
    line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    read -r -a f <<<"${line##*) }"
    user=$((user + f[11] + f[13]))
    system=$((system + f[12] + f[14]))
  done
  echo "$user $system"
}

# core_busy_ticks CORE: busy time of one core so far (user, nice, system, irq and softirq in
# /proc/stat, in clock ticks). Loopback TCP work done in softirq context is charged here even
# when the kernel does not charge it to the process that caused it.
core_busy_ticks() {
  awk -v cpu="cpu$1" '$1 == cpu { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# measure SCENARIO MODE ROUND TARGET [CHURNER_PID COUNT_FILE]: one wrk run against TARGET;
# appends a line to results.tsv: scenario mode round target req/s p50_us p99_us errors
# cpu_us_per_request requests extra core0_us_per_request core0_busy_% core1_busy_%
# user_us_per_request (extra: the churner's "applied/attempted" changes; core0: all busy time of
# the proxy's core per request; the busy shares say which core was saturated; user: the part of
# the proxy's CPU spent in user space, the rest being the kernel's).
measure() {
  local scenario=$1 mode=$2 round=$3 target=$4 churner=${5:-} count_file=${6:-} extra=-
  local script="$HELPERS/report.lua" out before="0 0" after="0 0" pid=${PID[$target]:-}
  [[ $mode == paced ]] && script="$HELPERS/paced.lua"
  local core_before core_after load_before load_after
  core_before=$(core_busy_ticks "$PROXY_CORE")
  load_before=$(core_busy_ticks "$LOAD_CORE")
  [[ -n $pid ]] && before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CORE" wrk -t 1 -c "$CONNECTIONS" -d "${DURATION}s" --timeout 5s \
    -s "$script" "${URL[$target]}" 2>&1) || die "wrk against $target failed: $out"
  [[ -n $pid ]] && after=$(cpu_ticks "$pid")
  core_after=$(core_busy_ticks "$PROXY_CORE")
  load_after=$(core_busy_ticks "$LOAD_CORE")
  printf '%s\n' "$out" >>"$LOGS/wrk.log"
  if [[ -n $churner ]]; then
    wait "$churner" || true
    extra=$(cat "$count_file" 2>/dev/null || echo '?')
  fi
  local line kv
  local -A r=()
  line=$(grep '^RESULT ' <<<"$out") || die "wrk printed no RESULT line: $out"
  for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  local requests=${r[requests]} duration_us=${r[duration_us]} p50=${r[p50_us]} p99=${r[p99_us]}
  local errors=$((r[connect] + r[read] + r[write] + r[status] + r[timeout])) rps cpu="-" user="-" core="-"
  rps=$(awk -v n="$requests" -v us="$duration_us" 'BEGIN { printf "%.0f", (us > 0 ? n * 1e6 / us : 0) }')
  local busy0 busy1
  busy0=$(awk -v t=$((core_after - core_before)) -v hz="$CLK_TCK" -v us="$duration_us" 'BEGIN { printf "%.0f", t * 1e8 / hz / us }')
  busy1=$(awk -v t=$((load_after - load_before)) -v hz="$CLK_TCK" -v us="$duration_us" 'BEGIN { printf "%.0f", t * 1e8 / hz / us }')
  if [[ -n $pid ]] && ((requests > 0)); then
    local du ds
    du=$((${after% *} - ${before% *}))
    ds=$((${after#* } - ${before#* }))
    cpu=$(awk -v t=$((du + ds)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    user=$(awk -v t="$du" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    core=$(awk -v t=$((core_after - core_before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$mode" "$round" \
    "$target" "$rps" "$p50" "$p99" "$errors" "$cpu" "$requests" "$extra" "$core" "$busy0" "$busy1" \
    "$user" >>"$RESULTS"
  log "$scenario/$mode round $round $target: $rps req/s, p50 ${p50} us, p99 ${p99} us, $errors errors," \
    "CPU ${cpu} us/request (user ${user}; core $PROXY_CORE: ${core}); cores busy ${busy0}% / ${busy1}%"
}

# fixed_load NAME URL COUNT: exactly COUNT GETs of URL over INSTR_CONNECTIONS keep-alive
# connections, one curl per connection sending one request at a time, all on the load core.
# Sets LOAD_OK (answers 200), LOAD_FAILED (COUNT - LOAD_OK: other answers, errors, requests never
# sent) and LOAD_CONNECTS (connections the clients opened: INSTR_CONNECTIONS when all kept alive).
fixed_load() {
  local name=$1 url=$2 count=$3 i n config
  local -a pids=()
  mkdir -p "$RUN/load"
  for ((i = 0; i < INSTR_CONNECTIONS; i++)); do
    n=$((count / INSTR_CONNECTIONS + (i < count % INSTR_CONNECTIONS ? 1 : 0)))
    ((n > 0)) || continue
    config="$RUN/load/$name-$i.curl"
    # One `url` and `output` pair per request: curl sends them in order on one connection.
    awk -v n="$n" -v url="$url" 'BEGIN {
      print "silent"; print "show-error"; print "max-time = 30"
      print "write-out = \"%{http_code} %{num_connects}\\n\""
      for (i = 0; i < n; i++) printf "url = \"%s\"\noutput = \"/dev/null\"\n", url
    }' >"$config"
    start_pinned "$name-$i" "$LOAD_CORE" curl -K "$config"
    pids+=("$LAST_PID")
  done
  # Bounded: under valgrind a request takes ~1 ms of the proxy's time; allow 10 ms each.
  local deadline=$((SECONDS + 30 + count / 100)) pid
  for pid in "${pids[@]}"; do wait_exit "$pid" "$deadline"; done
  local -a logs=()
  for ((i = 0; i < INSTR_CONNECTIONS; i++)); do
    [[ -e "$LOGS/$name-$i.log" ]] && logs+=("$LOGS/$name-$i.log")
  done
  read -r LOAD_OK LOAD_CONNECTS < <(awk '$1 ~ /^[0-9][0-9][0-9]$/ && NF == 2 { ok += ($1 == 200); c += $2 }
    END { print ok + 0, c + 0 }' "${logs[@]}")
  LOAD_FAILED=$((count - LOAD_OK))
}

# callgrind_ctl PID ARGS...: callgrind_control ARGS for the callgrind run PID (its exit status
# says nothing: it prints "OK." when the run did what was asked).
callgrind_ctl() {
  local pid=$1 out
  shift
  out=$(callgrind_control "$@" "$pid" 2>&1) || die "callgrind_control $* $pid failed: $out"
  [[ $out == *OK.* ]] || die "callgrind_control $* $pid failed: $out"
}

# count_instructions TARGET LABEL: TARGET runs under callgrind with instrumentation off. After
# INSTR_WARMUP requests, turns it on, sends INSTR_REQUESTS requests, dumps the counters and
# appends "instructions LABEL requests failed connections Ir" to $INSTRUCTIONS. Ir is the
# instructions executed in user space by all the proxy's threads (callgrind sums the threads
# into one dump unless told --separate-threads=yes), the kernel's work not included.
count_instructions() {
  local target=$1 label=$2 pid=${PID[$1]} dump="$RUN/callgrind/$1.out.1" ir
  fixed_load "$target-warmup" "${URL[$target]}" "$INSTR_WARMUP"
  ((LOAD_FAILED == 0)) || die "$target: $LOAD_FAILED of $INSTR_WARMUP warm-up requests failed (logs: $LOGS/$target-warmup-*.log)"
  callgrind_ctl "$pid" --instr=on
  callgrind_ctl "$pid" --zero
  fixed_load "$target-counted" "${URL[$target]}" "$INSTR_REQUESTS"
  callgrind_ctl "$pid" --dump
  wait_for "$pid" "callgrind's dump of $target in $dump" 60 grep -q '^totals:' "$dump"
  ir=$(awk '$1 == "totals:" { print $2 }' "$dump")
  [[ $ir =~ ^[0-9]+$ ]] || die "no instruction count in $dump"
  printf 'instructions\t%s\t%s\t%s\t%s\t%s\n' "$label" "$INSTR_REQUESTS" "$LOAD_FAILED" "$LOAD_CONNECTS" "$ir" >>"$INSTRUCTIONS"
  log "$target: $(awk -v ir="$ir" -v n="$INSTR_REQUESTS" 'BEGIN { printf "%.0f", ir / n }') user-space instructions/request" \
    "over $INSTR_REQUESTS requests ($LOAD_FAILED failed, $LOAD_CONNECTS connections)"
}

# all_traced PID TRACER: every thread of process PID is traced by TRACER.
all_traced() {
  local status tracer
  for status in /proc/"$1"/task/*/status; do
    tracer=$(awk '$1 == "TracerPid:" { print $2 }' "$status") || return 1
    [[ $tracer == "$2" ]] || return 1
  done
}

# count_syscalls TARGET LABEL: after INSTR_WARMUP requests, attaches `strace -c -f` to every
# thread of TARGET, sends INSTR_REQUESTS requests, detaches and appends "syscalls LABEL requests
# failed connections name=calls..." to $INSTRUCTIONS.
count_syscalls() {
  local target=$1 label=$2 pid=${PID[$1]} summary="$RUN/strace-$1.txt" tracer calls
  fixed_load "$target-warmup" "${URL[$target]}" "$INSTR_WARMUP"
  ((LOAD_FAILED == 0)) || die "$target: $LOAD_FAILED of $INSTR_WARMUP warm-up requests failed (logs: $LOGS/$target-warmup-*.log)"
  start_pinned "strace-$target" "$LOAD_CORE" strace -c -f -q -o "$summary" -p "$pid"
  tracer=$LAST_PID
  wait_for "$tracer" "strace attached to every thread of $target" 30 all_traced "$pid" "$tracer"
  fixed_load "$target-counted" "${URL[$target]}" "$INSTR_REQUESTS"
  # strace detaches on SIGTERM and then writes its summary.
  stop_tree "$tracer"
  grep -q ' total$' "$summary" 2>/dev/null || die "strace wrote no summary to $summary (log: $LOGS/strace-$target.log)"
  # Rows: % time, seconds, usecs/call, calls, [errors,] syscall.
  calls=$(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" { printf "\t%s=%s", $NF, $4 }' "$summary")
  printf 'syscalls\t%s\t%s\t%s\t%s%s\n' "$label" "$INSTR_REQUESTS" "$LOAD_FAILED" "$LOAD_CONNECTS" "$calls" >>"$INSTRUCTIONS"
  log "$target: $(awk -v n="$INSTR_REQUESTS" '$1 ~ /^[0-9.]+$/ && $NF != "total" { c += $4 }
    END { printf "%.2f", c / n }' "$summary") syscalls/request over $INSTR_REQUESTS requests" \
    "($LOAD_FAILED failed, $LOAD_CONNECTS connections)"
}

# ----------------------------------------------------------------------------------------------
# Scenarios

scenario_compare() {
  log "scenario closed/paced: starting ours, haproxy and nginx on core $PROXY_CORE"
  store_routes dfp-bench-main 10
  start_ours ours dfp-bench-main 10
  route_books ours
  start_haproxy haproxy 10
  start_nginx_proxy nginx
  set_direct
  local target mode round
  for target in ours haproxy nginx direct; do check_route "$target"; done
  for mode in closed paced; do
    wants "$mode" || continue
    for ((round = 1; round <= ROUNDS; round++)); do
      for target in ours haproxy nginx direct; do measure compare "$mode" "$round" "$target"; done
    done
  done
  stop_tree "${PID[ours]}"
  stop_tree "${PID[haproxy]}"
  stop_tree "${PID[nginx]}"
}

scenario_routes() {
  log "scenario routes: storing 10 and $MANY_ROUTES routes in Consul KV"
  store_routes dfp-bench-r10 10
  store_routes "dfp-bench-r$MANY_ROUTES" "$MANY_ROUTES"
  log "starting ours with 10 routes and with $MANY_ROUTES (restored from Consul KV at start)"
  local started=$SECONDS
  start_ours ours-10 dfp-bench-r10 10
  start_ours "ours-$MANY_ROUTES" "dfp-bench-r$MANY_ROUTES" "$MANY_ROUTES"
  log "ours restored $MANY_ROUTES routes in $((SECONDS - started)) s"
  start_haproxy haproxy-10 10
  start_haproxy "haproxy-$MANY_ROUTES" "$MANY_ROUTES"
  local target round
  local -a targets=(ours-10 "ours-$MANY_ROUTES" haproxy-10 "haproxy-$MANY_ROUTES")
  for target in "${targets[@]}"; do check_route "$target"; done
  for ((round = 1; round <= ROUNDS; round++)); do
    for target in "${targets[@]}"; do measure routes closed "$round" "$target"; done
  done
  for target in "${targets[@]}"; do stop_tree "${PID[$target]}"; done
}

# The churners' clock and sleep start no process (bash's EPOCHREALTIME, and a read that times
# out on a pipe nobody writes to): the load core is saturated in the closed loop, and a few
# forks per change there would be measured as the proxy's churn cost.

# now_ms: sets NOW_MS to the wall clock in milliseconds.
now_ms() {
  local t=${EPOCHREALTIME/[.,]/}
  NOW_MS=$((10#$t / 1000))
}

# sleep_until MS: sleeps until the clock reaches MS; returns at once if it has. Needs the fd
# in SLEEP_FD (open_sleeper).
sleep_until() {
  now_ms
  local left=$(($1 - NOW_MS)) secs
  ((left > 0)) || return 0
  printf -v secs '%d.%03d' $((left / 1000)) $((left % 1000))
  read -r -t "$secs" -u "$SLEEP_FD" _ || true
  now_ms
}

# open_sleeper: SLEEP_FD, a pipe held open at both ends that never has data.
open_sleeper() {
  exec {SLEEP_FD}<> <(:)
}

# churn_ours ADMIN COUNT_FILE: every 100 ms for the run's duration, a reconfigure: odd ticks
# books-ms again (the service under load), even ticks churn-ms with its path flipped.
# The call is written by bash itself (/dev/tcp), not by a curl process per call: like
# HAProxy's churner (a `kill` builtin), the operator's side costs next to nothing on the load
# core, so what the churn costs is what the proxy and Consul do.
churn_ours() {
  local admin=$1 file=$2 ticks=$((DURATION * 10)) i ok=0 target status start
  local hostport=${admin#http://}
  taskset -cp "$LOAD_CORE" "$BASHPID" >/dev/null
  open_sleeper
  now_ms
  start=$NOW_MS
  for ((i = 0; i < ticks && NOW_MS < start + DURATION * 1000; i++)); do
    if ((i % 2)); then
      target="/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=$BOOKS_PATH"
    else
      target="/v1/docker-flow-proxy/reconfigure?serviceName=churn-ms&servicePath=/api/v2/churn-$((i / 2 % 2))"
    fi
    status=""
    if exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" 2>/dev/null; then
      printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$target" "$hostport" >&3
      read -r -t 2 _ status _ <&3 || true
      exec 3<&-
    fi
    [[ $status == 200 ]] && ok=$((ok + 1))
    sleep_until $((start + (i + 1) * 100))
  done
  echo "$ok/$i" >"$file"
}

# churn_haproxy MASTER_PID COUNT_FILE: every 100 ms, a reload of the master-worker HAProxy.
churn_haproxy() {
  local master=$1 file=$2 ticks=$((DURATION * 10)) i ok=0 start
  taskset -cp "$LOAD_CORE" "$BASHPID" >/dev/null
  open_sleeper
  now_ms
  start=$NOW_MS
  for ((i = 0; i < ticks && NOW_MS < start + DURATION * 1000; i++)); do
    kill -USR2 "$master" 2>/dev/null && ok=$((ok + 1))
    sleep_until $((start + (i + 1) * 100))
  done
  echo "$ok/$i" >"$file"
}

scenario_churn() {
  log "scenario churn: ours and a master-worker HAProxy, quiet and with a change every 100 ms"
  store_routes dfp-bench-churn 10
  start_ours ours-churn dfp-bench-churn 10
  local code
  code=$(reconfigure ours-churn churn-ms /api/v2/churn-0)
  [[ $code == 200 ]] || die "reconfigure of churn-ms answered $code: $(cat "$RUN/last-reconfigure.json")"
  start_haproxy haproxy-churn 10 -W
  check_route ours-churn
  check_route haproxy-churn
  local round target count_file churner
  for ((round = 1; round <= ROUNDS; round++)); do
    for target in ours-churn haproxy-churn; do
      measure churn quiet "$round" "$target"
      count_file="$RUN/churn-$target-$round.count"
      if [[ $target == ours-churn ]]; then
        churn_ours "${ADMIN[$target]}" "$count_file" &
      else
        churn_haproxy "${PID[$target]}" "$count_file" &
      fi
      churner=$!
      STARTED+=("$churner")
      STARTED_NAME[$churner]="churn-$target"
      measure churn busy "$round" "$target" "$churner" "$count_file"
      stop_tree "$churner"
      # Reloaded HAProxy workers drain their last connections before the next quiet run.
      sleep 1
    done
  done
  stop_tree "${PID[ours-churn]}"
  stop_tree "${PID[haproxy-churn]}"
}

# callgrind_wrapper TARGET: sets CALLGRIND to the valgrind command line that runs TARGET with
# instrumentation off (startup and warm-up run uncounted, ~5x slower rather than ~50x).
callgrind_wrapper() {
  CALLGRIND=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$RUN/callgrind/$1.out")
}

scenario_instructions() {
  log "scenario instructions: ours and HAProxy with 10 routes, under callgrind then under strace"
  store_routes dfp-bench-instr 10
  mkdir -p "$RUN/callgrind"
  local -a CALLGRIND=()
  callgrind_wrapper ours-callgrind
  start_ours ours-callgrind dfp-bench-instr 10 "${CALLGRIND[@]}"
  route_books ours-callgrind
  check_route ours-callgrind
  count_instructions ours-callgrind ours
  stop_tree "${PID[ours-callgrind]}"
  callgrind_wrapper haproxy-callgrind
  start_haproxy haproxy-callgrind 10 "" "${CALLGRIND[@]}"
  check_route haproxy-callgrind
  count_instructions haproxy-callgrind haproxy
  stop_tree "${PID[haproxy-callgrind]}"

  start_ours ours-strace dfp-bench-instr 10
  route_books ours-strace
  check_route ours-strace
  count_syscalls ours-strace ours
  stop_tree "${PID[ours-strace]}"
  start_haproxy haproxy-strace 10
  check_route haproxy-strace
  count_syscalls haproxy-strace haproxy
  stop_tree "${PID[haproxy-strace]}"
}

# ----------------------------------------------------------------------------------------------
# Report: medians, min-max over rounds, and ratios paired by round.

report() {
  awk -F'\t' -v many="$MANY_ROUTES" -v instructions="$INSTRUCTIONS" -v warmup="$INSTR_WARMUP" -f "$HELPERS/report.awk" \
    "$RESULTS" "$INSTRUCTIONS"
}

main() {
  parse_args "$@"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'on_error $LINENO "$BASH_COMMAND"' ERR

  RUN="$REPO/target/compare/$(date +%Y%m%d-%H%M%S)"
  LOGS="$RUN/logs"
  RESULTS="$RUN/results.tsv"
  INSTRUCTIONS="$RUN/instructions.tsv"
  mkdir -p "$LOGS"
  : >"$RESULTS"
  : >"$INSTRUCTIONS"
  log "run directory: $RUN"

  ensure_tools
  build_proxy
  describe_machine >"$RUN/machine.md"
  start_upstreams
  start_consul

  if wants closed || wants paced; then scenario_compare; fi
  if wants routes; then scenario_routes; fi
  if wants churn; then scenario_churn; fi
  if wants instructions; then scenario_instructions; fi

  {
    cat "$RUN/machine.md"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    report
  } | tee "$RUN/report.md"
  log "report: $RUN/report.md; raw results: $RESULTS"
}

main "$@"
