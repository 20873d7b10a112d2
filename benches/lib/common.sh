# shellcheck shell=bash
# common.sh: what benches/compare.sh and benches/memory.sh share. Sourced, never run.
#
# The sourcing script sets BENCH_NAME (its log prefix: "compare", "memory") before sourcing,
# and REPO, RUN and LOGS (the run's directory and its logs) before starting anything; the
# Consul helpers also read CONSUL_CONNS. Everything here listens and connects on 127.0.0.1
# only, and every process goes through start_bg/start_pinned so that cleanup stops it.

: "${BENCH_NAME:?set BENCH_NAME before sourcing benches/lib/common.sh}"

readonly BOOKS_PATH=/api/v1/books

# ----------------------------------------------------------------------------------------------
# Small helpers

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf '%s.sh: %s\n' "$BENCH_NAME" "$*" >&2
  exit 1
}

# usage: the running script's opening comment, from its second line to "# Every process".
usage() {
  sed -n '2,/^# Every process/p' "$0" | sed 's/^# \{0,1\}//'
}

# now_ms: sets NOW_MS to the wall clock in milliseconds (bash's EPOCHREALTIME: no process).
# shellcheck disable=SC2034 # NOW_MS is for the sourcing scripts
now_ms() {
  local t=${EPOCHREALTIME/[.,]/}
  NOW_MS=$((10#$t / 1000))
}

# ----------------------------------------------------------------------------------------------
# Processes: everything started goes through start_bg (or start_pinned) and is stopped by
# stop_tree or, at the latest, by cleanup.

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

# start_pinned NAME CORE COMMAND...: start_bg with COMMAND pinned to CORE (taskset); CORE ""
# leaves it unpinned.
start_pinned() {
  local name=$1 core=$2
  shift 2
  if [[ -n $core ]]; then
    start_bg "$name" taskset -c "$core" "$@"
  else
    start_bg "$name" "$@"
  fi
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

# set_traps: cleanup on every way out (exit, error, Ctrl-C, SIGTERM).
set_traps() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'on_error $LINENO "$BASH_COMMAND"' ERR
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

# wait_until PID DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds
# (status 0) or SECONDS pass (status 1); dies at once when process PID (the one expected to
# make it true) ends.
wait_until() {
  local pid=$1 what=$2 seconds=$3 tries
  shift 3
  for ((tries = 0; tries < seconds * 10; tries++)); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || die "$what did not happen: ${STARTED_NAME[$pid]:-process $pid} exited (see $LOGS/${STARTED_NAME[$pid]:-}.log)"
    sleep 0.1
  done
  return 1
}

# wait_for PID DESCRIPTION SECONDS COMMAND...: wait_until, dying when SECONDS pass.
wait_for() {
  local what=$2 seconds=$3
  wait_until "$@" || die "$what did not happen within ${seconds}s (logs: $LOGS)"
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

# require_tools TOOL[:PACKAGE]...: installs (install_packages) the packages of the tools that
# are not on PATH, then dies if any is still missing. PACKAGE is TOOL when not given; an empty
# one ("awk:") means the tool is only checked, never installed.
require_tools() {
  local spec tool package
  local -a missing=() tools=()
  local -A wanted=()
  for spec in "$@"; do
    tool=${spec%%:*}
    package=$tool
    [[ $spec != *:* ]] || package=${spec#*:}
    tools+=("$tool")
    command -v "$tool" >/dev/null && continue
    if [[ -n $package && -z ${wanted[$package]:-} ]]; then
      wanted[$package]=1
      missing+=("$package")
    fi
  done
  ((${#missing[@]} == 0)) || install_packages "${missing[@]}"
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is still missing after the install"
  done
}

# ensure_consul: `consul` on PATH, put there by ../shared/bin/install-consul when it is not.
ensure_consul() {
  command -v consul >/dev/null && return 0
  local installer="$REPO/../shared/bin/install-consul"
  [[ -x $installer ]] || die "consul is not on PATH and $installer is missing: install Consul 1.8+"
  "$installer" >&2 || die "$installer failed"
  command -v consul >/dev/null || die "consul is still not on PATH after $installer"
}

# build_proxy: BIN as given (--bin), or the release binary cargo builds.
build_proxy() {
  if [[ -n $BIN ]]; then
    [[ -x $BIN ]] || die "--bin $BIN is not an executable"
    log "using $BIN (not built)"
    return
  fi
  log "building: cargo build --release -p docker-flow-proxy"
  (cd "$REPO" && cargo build --release -p docker-flow-proxy >&2) ||
    die "cargo build --release -p docker-flow-proxy failed"
  BIN="$(cargo_target_dir)/release/docker-flow-proxy"
}

# cargo_target_dir: where cargo puts what it builds here (CARGO_TARGET_DIR, relative to the
# repository when relative, or the repository's target/).
cargo_target_dir() {
  local dir=${CARGO_TARGET_DIR:-target}
  [[ $dir == /* ]] || dir="$REPO/$dir"
  echo "$dir"
}

# machine_head: the report's "## Machine" heading and its first line (date and commit).
machine_head() {
  local commit
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$REPO" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
  echo "## Machine"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $commit"
}

cpu_model() {
  local cpu
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  echo "${cpu:-unknown}"
}

# peer_versions: "haproxy: V; nginx: V; consul: V", for the machine description.
peer_versions() {
  printf 'haproxy: %s; nginx: %s; consul: %s' "$(haproxy -v 2>&1 | awk 'NR == 1 { print $3 }')" \
    "$(nginx -v 2>&1 | sed 's/.*nginx\///')" "$(consul version | awk 'NR == 1 { print $2 }')"
}

# ----------------------------------------------------------------------------------------------
# nginx: configs whose every file is in the run's directory (nothing in /var)

# nginx_main_conf DIR WORKER_CONNECTIONS: the top of an nginx.conf (one worker, foreground).
nginx_main_conf() {
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $2; }
EOF
}

# nginx_http_conf DIR KEEPALIVE_TIMEOUT: the settings of an nginx.conf's http block.
nginx_http_conf() {
  local dir=$1
  cat <<EOF
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout $2;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  scgi_temp_path $dir/scgi;
  uwsgi_temp_path $dir/uwsgi;
EOF
}

# start_nginx_upstream NAME CORE PORT BODY WORKER_CONNECTIONS KEEPALIVE_TIMEOUT: an nginx (config
# and files in $RUN/NAME, pinned to CORE unless "") answering every request on 127.0.0.1:PORT
# with 200 BODY; returns once it listens.
start_nginx_upstream() {
  local name=$1 core=$2 port=$3 body=$4 dir="$RUN/$1"
  mkdir -p "$dir"
  {
    nginx_main_conf "$dir" "$5"
    echo "http {"
    nginx_http_conf "$dir" "$6"
    echo "  server { listen 127.0.0.1:$port; location / { return 200 \"$body\"; } }"
    echo "}"
  } >"$dir/nginx.conf"
  start_pinned "$name" "$core" nginx -p "$dir" -c "$dir/nginx.conf" -e stderr
  wait_for "$LAST_PID" "$name listening on port $port" 10 listening "$port"
}

# ----------------------------------------------------------------------------------------------
# Consul

consul_up() { [[ $(curl -sf --max-time 1 "$CONSUL/v1/status/leader") == *:* ]]; }

# start_consul_agent CORE: a Consul dev agent on free ports (pinned to CORE unless ""),
# accepting CONSUL_CONNS connections from one client; sets CONSUL (its HTTP API) once it has
# elected itself.
start_consul_agent() {
  local core=$1 http lan wan server
  free_port http
  free_port lan
  free_port wan
  free_port server
  CONSUL="http://127.0.0.1:$http"
  start_pinned consul "$core" consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 \
    -http-port "$http" -dns-port -1 -grpc-port -1 \
    -serf-lan-port "$lan" -serf-wan-port "$wan" -server-port "$server" -log-level warn \
    -hcl "limits { http_max_conns_per_client = $CONSUL_CONNS }"
  wait_for "$LAST_PID" "Consul dev agent on port $http electing itself" 30 consul_up
}

# register_instance SERVICE ID PORT: registers an instance of SERVICE at 127.0.0.1:PORT.
register_instance() {
  curl -sf --max-time 5 -X PUT "$CONSUL/v1/agent/service/register" \
    -d "{\"Name\":\"$1\",\"ID\":\"$2\",\"Address\":\"127.0.0.1\",\"Port\":$3}" ||
    die "registering $2 in Consul failed"
}

# register_services FIRST LAST [PORT]: registers services svc-FIRST..svc-LAST in Consul, one
# instance each at 127.0.0.1:PORT (default: 20000 + i % 40000, which need not answer), with one
# curl (a config block per service, separated by `next`). Dies unless every one is taken.
register_services() {
  local first=$1 last=$2 port=${3:-} i batch="$RUN/register.curl"
  {
    for ((i = first; i <= last; i++)); do
      ((i == first)) || echo next
      printf 'url = "%s/v1/agent/service/register"\nrequest = "PUT"\n' "$CONSUL"
      printf 'data = "{\\"Name\\":\\"svc-%d\\",\\"ID\\":\\"svc-%d\\",\\"Address\\":\\"127.0.0.1\\",\\"Port\\":%d}"\n' \
        "$i" "$i" "${port:-$((20000 + i % 40000))}"
      printf 'output = "/dev/null"\nwrite-out = "%%{http_code}\\n"\nmax-time = 10\n'
    done
  } >"$batch"
  local registered
  registered=$(curl -s -K "$batch" | grep -c '^200$' || true)
  ((registered == last - first + 1)) || die "registered $registered of $((last - first + 1)) services"
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
# The proxies under test. Each start_* sets PID[target] (the root of its process tree),
# URL[target] (books-ms through it) and, for ours, ADMIN[target] (its admin API).

declare -A URL=() PID=() ADMIN=()

# launch_ours TARGET CORE INSTANCE_NAME ADMIN_SECONDS [WRAPPER...] -- [OPTION...]:
# docker-flow-proxy (pinned to CORE unless "") against our Consul agent, restoring the routes
# stored under INSTANCE_NAME, run under WRAPPER when given (valgrind and its options). Returns
# once the admin API listens (dies after ADMIN_SECONDS); the routes may still be on their way.
# LAUNCHED_MS: now_ms's clock just before the start.
# shellcheck disable=SC2034 # LAUNCHED_MS is for the sourcing scripts
launch_ours() {
  local target=$1 core=$2 instance=$3 seconds=$4 port admin
  shift 4
  local -a wrapper=()
  while (($#)) && [[ $1 != -- ]]; do
    wrapper+=("$1")
    shift
  done
  (($# == 0)) || shift
  free_port port
  free_port admin
  now_ms
  LAUNCHED_MS=$NOW_MS
  start_pinned "$target" "$core" ${wrapper[@]+"${wrapper[@]}"} "$BIN" server \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --consul-address "http://127.0.0.1:${CONSUL##*:}" --instance-name "$instance" \
    --shutdown-grace 1s "$@"
  PID[$target]=$LAST_PID
  URL[$target]="http://127.0.0.1:$port$BOOKS_PATH"
  ADMIN[$target]="http://127.0.0.1:$admin"
  wait_for "$LAST_PID" "$target's admin API on port $admin" "$seconds" listening "$admin"
}

# services_routed TARGET COUNT: ours' admin /metrics says COUNT services are routed.
services_routed() {
  local metrics
  metrics=$(curl -sf --max-time 5 "${ADMIN[$1]}/metrics") || return 1
  [[ $(awk '$1 == "dfp_services" { print $2 }' <<<"$metrics") == "$2" ]]
}

# haproxy_head NBTHREAD MAXCONN CLIENT_TIMEOUT KEEPALIVE_TIMEOUT: the global and defaults
# sections of Docker Flow Proxy's HAProxy config. NBTHREAD "default" leaves HAProxy's own.
haproxy_head() {
  echo "global"
  [[ $1 == default ]] || echo "  nbthread $1"
  cat <<EOF
  maxconn $2
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
  timeout client $3
  timeout server 20s
  timeout queue 30s
  timeout tunnel 3600s
  timeout http-request 5s
  timeout http-keep-alive $4
EOF
}

# haproxy_routes ROUTES PORT BOOKS_AT UPSTREAM_PORT...: Docker Flow Proxy's shape after the
# head: one frontend on 127.0.0.1:PORT with a path_beg ACL and a use_backend line per service
# (books-ms's first when BOOKS_AT is 0, else just before svc-BOOKS_AT's), then one backend per
# service: books-ms's with a server per UPSTREAM_PORT, the others' with an unused one.
haproxy_routes() {
  local routes=$1 port=$2 at=$3 i
  shift 3
  echo
  cat <<EOF
frontend services
  bind 127.0.0.1:$port
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
EOF
  for ((i = 0; i < routes; i++)); do
    if ((i == at)); then
      printf '  acl url_books-ms path_beg %s\n  use_backend books-ms-be if url_books-ms\n' "$BOOKS_PATH"
    fi
    ((i == 0)) || printf '  acl url_svc-%d path_beg /api/v%d/svc-%d\n  use_backend svc-%d-be if url_svc-%d\n' \
      "$i" $((i % 7)) "$i" "$i" "$i"
  done
  echo
  echo "backend books-ms-be"
  for ((i = 1; i <= $#; i++)); do echo "  server books-$i 127.0.0.1:${!i}"; done
  for ((i = 1; i < routes; i++)); do
    printf 'backend svc-%d-be\n  server svc-%d 127.0.0.1:9\n' "$i" "$i"
  done
}

# launch_haproxy TARGET CORE PORT COMMAND...: checks $RUN/TARGET.cfg (haproxy -c), then runs
# COMMAND -f that config (pinned to CORE unless "") and returns once it listens on PORT.
# LAUNCHED_MS: now_ms's clock just before the start (after the check).
# shellcheck disable=SC2034 # PID, URL and LAUNCHED_MS are for the sourcing scripts
launch_haproxy() {
  local target=$1 core=$2 port=$3 cfg="$RUN/$1.cfg"
  shift 3
  haproxy -c -f "$cfg" >"$LOGS/$target.check.log" 2>&1 || die "HAProxy refuses $cfg: see $LOGS/$target.check.log"
  now_ms
  LAUNCHED_MS=$NOW_MS
  start_pinned "$target" "$core" "$@" -f "$cfg"
  PID[$target]=$LAST_PID
  URL[$target]="http://127.0.0.1:$port$BOOKS_PATH"
  wait_for "$LAST_PID" "$target listening on port $port" 120 listening "$port"
}

# parse_binaries_args HELP_LAST_LINE ARGS...: the options of the control-plane benches that
# compare builds: --bin PATH (repeatable, at least one, each executable), --routes N,
# --rounds N, --help (prints the script's header, lines 2 to HELP_LAST_LINE). Sets BINS,
# ROUTES and ROUNDS (set the defaults before calling).
parse_binaries_args() {
  local help_last=$1
  shift
  BINS=()
  while (($#)); do
    case $1 in
      --bin) BINS+=("$2"); shift 2 ;;
      --routes) ROUTES=$2; shift 2 ;;
      --rounds) ROUNDS=$2; shift 2 ;;
      --help | -h) sed -n "2,${help_last}p" "$0"; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
  done
  ((${#BINS[@]})) || die "give at least one --bin PATH (a release build of docker-flow-proxy)"
  local bin
  for bin in "${BINS[@]}"; do [[ -x $bin ]] || die "$bin is not an executable"; done
  [[ $ROUTES =~ ^[1-9][0-9]*$ ]] || die "--routes must be a positive number, not $ROUTES"
  [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive number, not $ROUNDS"
}
