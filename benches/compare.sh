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
#           Then one more run each under churn with dfp-load's per-100 ms timeline (the
#           throughput-over-time chart).
#   instructions
#           User-space instructions and system calls per request of ours and of HAProxy (10
#           routes), counts that the machine's noise does not move: a fixed number of requests
#           (--requests, over 10 keep-alive connections, after 500 warm-up requests) through the
#           proxy under valgrind's callgrind (instructions of all its threads, startup and warm-up
#           excluded), then through the proxy alone with `strace -c -f` attached (its syscalls).
#           About a minute (one run each: counts need no rounds), so it is part of every run.
#   Request classes, each measured on ours, HAProxy and nginx in the same alternating rounds
#   (one set of the three proxies serves them all, with one ECDSA P-256 certificate that
#   openssl makes for the run):
#   https      HTTPS keep-alive, HTTP/1.1 (wrk over TLS, --connections connections).
#   handshake  A new TLS connection with a full handshake for every request (dfp-load, a
#              rustls client with session resumption off that counts full and resumed
#              handshakes; 20 connections): CPU per request is CPU per handshake.
#   h2         HTTP/2 over TLS (h2load -c20 -m10).
#   post       POST with a 1 KiB and with a 64 KiB body (wrk, benches/compare/post.lua).
#   options    A service with options: a request header set, a response header added and a
#              regex path rewrite (ours: setReqHeader, addResHeader, reqPathSearch/Replace).
#   websocket  WebSocket echo messages per second (128 bytes, one in flight per connection;
#              dfp-load's client and echo server).
#   Three more, not part of the default run (name them with --only):
#   class-churn  Each request class on ours alone, quiet and with a reconfigure every 100 ms (of
#              the class's own service on odd ticks, another service on even ones): throughput
#              under churn over quiet, paired by round, and the failed requests.
#              --churn-classes picks the classes (default: all six).
#   threads    The paced GET on ours with --threads 1 (core 0) and --threads 2 (cores 0 and 1):
#              CPU per request of two threads over one, paired by round (what sharing between
#              threads costs on the hot path); HAProxy nbthread 1 and 2 beside it, as control.
#   tcp        TCP services (ours: a reconfigure with reqMode=tcp and srcPort) beside HAProxy's
#              `mode tcp` (nbthread 1), both forwarding to one TCP echo server (dfp-load
#              tcp-echo, core 1). Two loads from dfp-load, alternating ours and HAProxy per round:
#              tcp-stream (10 long connections, each echoing 128 KiB chunks one at a time:
#              MiB/s and proxy CPU per GiB echoed, every byte crossing the proxy twice) and
#              tcp-connect (20 clients, each opening a connection, echoing 64 bytes, closing it:
#              connections/s and proxy CPU per connection). nginx is left out: its `stream {}`
#              module (Debian: libnginx-mod-stream) is loaded only when installed.
#   queue      Overload behind a cap: a service on the three nginx upstreams with 2 requests in
#              flight per instance (ours: instanceMaxConn=2 and the default queue; HAProxy:
#              `maxconn 2` on each server line and its queue), 200 wrk connections, so ~194
#              requests wait at any moment. Alternating per round: req/s, p99, errors (a 503
#              from the queue counts) and proxy CPU per request, ours ÷ HAProxy.
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
# Run:     benches/compare.sh                  (8 rounds of 10 s, 50 connections; ~55 minutes)
#          benches/compare.sh --quick          (2 rounds of 3 s, 2,000 counted requests: checks
#                                              that everything works)
#          benches/compare.sh --only instructions   (~1 minute)
#          benches/compare.sh --only https,h2 --quick
#          benches/compare.sh --only tcp --rounds 3 --duration 5   (~3 minutes)
# Options: --rounds N  --duration SECONDS  --connections N
#          --only closed|paced|routes|churn|instructions|https|handshake|h2|post|options|websocket
#                 |class-churn|threads|tcp|queue
#                 (or several, comma-separated; "classes": https to websocket)
#          --churn-classes LIST (class-churn: the classes, comma-separated; default all six)
#          --routes N (the large route count, default 10000)  --bin PATH (skip the cargo build)
#          --load-bin PATH (dfp-load, the handshake, WebSocket and TCP client: skip its cargo build)
#          --requests N (instructions: the counted requests, default 20000)
#          --charts DIR (where the run's SVG charts go as well as the run directory: the ones
#                 BENCHMARKS.md embeds are in benches/charts/, from a run given --charts
#                 benches/charts; drawn by benches/lib/charts.py from results.tsv)
# Needs:   a 2-core (or larger) Linux machine, root for apt-get when haproxy, nginx, wrk (or,
#          for instructions, valgrind or strace; for the classes openssl and h2load) is
#          missing, and `consul`
#          (../shared/bin/install-consul puts one on PATH).
# Output:  progress on stderr; the report (markdown, ready for BENCHMARKS.md) on stdout and in
#          target/compare/<timestamp>/report.md beside the raw results, configs and logs;
#          SVG charts of the request classes (CPU per request, req/s, p50/p99) in its charts/.
# Every process it starts is stopped when it ends, also on errors and Ctrl-C.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
readonly HERE REPO
readonly BENCH_NAME=compare
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$HERE/lib/common.sh"
readonly HELPERS="$HERE/compare"
readonly PROXY_CORE=0
readonly LOAD_CORE=1

ROUNDS=8
DURATION=10
CONNECTIONS=50
ONLY=all
CHARTS=
MANY_ROUTES=10000
BIN=""
LOAD_BIN=""
INSTR_REQUESTS=20000
readonly INSTR_CONNECTIONS=10
readonly INSTR_WARMUP=500
# The request classes (--only names) and their settings.
readonly CLASSES="https handshake h2 post options websocket"
readonly HANDSHAKE_CONNECTIONS=20
readonly H2_CLIENTS=20
readonly H2_STREAMS=10
readonly WS_MESSAGE_BYTES=128
readonly OPTS_PATH=/api/v1/opts
readonly WS_PATH=/ws
CHURN_CLASSES=$CLASSES
# tcp: the two loads' shapes (dfp-load tcp-stream and tcp-connect).
readonly TCP_STREAM_CONNECTIONS=10
readonly TCP_CHUNK_BYTES=131072
readonly TCP_CONNECT_CONNECTIONS=20
readonly TCP_CONNECT_BYTES=64
# queue: the cap on each instance and the connections that overload it.
readonly QUEUE_CAP=2
readonly QUEUE_CONNECTIONS=200

# ----------------------------------------------------------------------------------------------
# Options

parse_args() {
  while (($#)); do
    case $1 in
      --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
      --duration) DURATION=${2:?--duration needs seconds}; shift ;;
      --connections) CONNECTIONS=${2:?--connections needs a number}; shift ;;
      --only) ONLY=${2:?--only needs a scenario or class name}; shift ;;
      --routes) MANY_ROUTES=${2:?--routes needs a number}; shift ;;
      --bin) BIN=${2:?--bin needs a path}; shift ;;
      --load-bin) LOAD_BIN=${2:?--load-bin needs a path}; shift ;;
      --requests) INSTR_REQUESTS=${2:?--requests needs a number}; shift ;;
      --charts) CHARTS=${2:?--charts needs a directory}; shift ;;
      --churn-classes) CHURN_CLASSES=${2:?--churn-classes needs class names}; CHURN_CLASSES=${CHURN_CLASSES//,/ }; shift ;;
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
  local list=",$ONLY,"
  list=${list//,classes,/,${CLASSES// /,},}
  list=${list#,}
  ONLY=${list%,}
  local name
  for name in ${ONLY//,/ }; do
    case " all closed paced routes churn instructions $CLASSES class-churn threads tcp queue " in
      *" $name "*) ;;
      *) die "--only takes closed, paced, routes, churn, instructions, ${CLASSES// /, }, classes, class-churn, threads, tcp or queue (comma-separated for several), not $name" ;;
    esac
  done
  for name in $CHURN_CLASSES; do
    [[ " $CLASSES " == *" $name "* ]] || die "--churn-classes takes ${CLASSES// /, }, not $name"
  done
}

# wants NAME: the scenario or class NAME is to run (--only, a comma-separated list, or all).
wants() { [[ $ONLY == all || ",$ONLY," == *",$1,"* ]]; }

# named NAME: NAME is in --only's list (the scenarios the default run leaves out).
named() { [[ ",$ONLY," == *",$1,"* ]]; }

# class_needed CLASS: the classes scenario measures CLASS, or class-churn does.
class_needed() { wants "$1" || { named class-churn && [[ " $CHURN_CLASSES " == *" $1 "* ]]; }; }

# wants_classes [https]: any request class is to run (with "https": any class over TLS).
wants_classes() {
  local class
  for class in $CLASSES; do
    if [[ ${1:-} == https && $class != https && $class != handshake && $class != h2 ]]; then continue; fi
    class_needed "$class" && return 0
  done
  return 1
}

# ----------------------------------------------------------------------------------------------
# Prerequisites (process, port and install helpers: lib/common.sh)

ensure_tools() {
  local -a tools=(haproxy nginx:nginx-light wrk taskset:util-linux pgrep:procps curl awk:)
  if wants instructions; then tools+=(valgrind callgrind_control:valgrind strace); fi
  if wants_classes https; then tools+=(openssl); fi
  if class_needed h2; then tools+=(h2load:nghttp2-client); fi
  require_tools "${tools[@]}"
  ensure_consul
  (($(nproc) >= 2)) || die "needs at least 2 cores (proxy on core $PROXY_CORE, load on core $LOAD_CORE)"
  # N routes mean N blocking queries to Consul, each on its own connection: the proxy and the
  # agent each need N descriptors and more (inherited from this shell's limit).
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  CONSUL_CONNS=$((MANY_ROUTES + 500))
  (($(ulimit -n) >= CONSUL_CONNS + 100)) ||
    die "open files are limited to $(ulimit -n), too few for $MANY_ROUTES routes (each one holds a connection to Consul): raise the limit or pass a smaller --routes"
}

describe_machine() {
  machine_head
  echo "- cores: $(nproc); CPU: $(cpu_model); kernel: $(uname -r)"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
  echo "- $(peer_versions); wrk: $({ wrk -v 2>&1 || true; } | awk 'NR == 1 { print $2 }');" \
    "$(rustc --version 2>/dev/null || echo 'rustc unknown')"
  echo "- settings: $ROUNDS rounds, ${DURATION} s per run, $CONNECTIONS connections, wrk -t 1;" \
    "proxy on core $PROXY_CORE, wrk + upstreams + Consul on core $LOAD_CORE"
  if wants instructions; then
    echo "- instructions: $(valgrind --version) (callgrind), strace $(strace -V | awk 'NR == 1 { print $NF }');" \
      "$INSTR_REQUESTS requests over $INSTR_CONNECTIONS connections (curl, on core $LOAD_CORE)"
  fi
  if wants_classes; then
    echo "- classes: $(openssl version 2>/dev/null | awk '{ print $1, $2 }');" \
      "h2load: $({ h2load --version 2>/dev/null || echo '? ?'; } | awk 'NR == 1 { print $2 }');" \
      "certificate: ECDSA P-256 (openssl, self-signed), the same file for every proxy;" \
      "handshake: dfp-load (rustls $(rustls_version), resumption off), $HANDSHAKE_CONNECTIONS connections;" \
      "h2: h2load -t 1 -c $H2_CLIENTS -m $H2_STREAMS; websocket: dfp-load, $CONNECTIONS connections, $WS_MESSAGE_BYTES-byte messages"
  fi
  if named tcp; then
    echo "- tcp: dfp-load (tcp-echo instance on core $LOAD_CORE); tcp-stream: $TCP_STREAM_CONNECTIONS connections," \
      "$TCP_CHUNK_BYTES-byte chunks echoed one at a time; tcp-connect: $TCP_CONNECT_CONNECTIONS clients," \
      "one $TCP_CONNECT_BYTES-byte echo per connection; HAProxy \`mode tcp\`, nbthread 1, no splice;" \
      "nginx not measured (no stream module)"
  fi
  echo
}

# build_load: LOAD_BIN as given (--load-bin), or dfp-load as cargo builds it (benches/load.rs).
build_load() {
  if [[ -n $LOAD_BIN ]]; then
    [[ -x $LOAD_BIN ]] || die "--load-bin $LOAD_BIN is not an executable"
    return
  fi
  log "building: cargo build --release -p dfp-benches --bin dfp-load"
  (cd "$REPO" && cargo build --release -p dfp-benches --bin dfp-load >&2) ||
    die "cargo build --release -p dfp-benches --bin dfp-load failed"
  LOAD_BIN="$(cargo_target_dir)/release/dfp-load"
}

# rustls_version: the rustls that dfp-load is built with (Cargo.lock).
rustls_version() {
  awk '$0 == "name = \"rustls\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' "$REPO/Cargo.lock"
}

# ----------------------------------------------------------------------------------------------
# Upstreams (three nginx) and Consul

declare -a UPSTREAM_PORTS=()
# The classes': the options service's three upstreams (nginx answering "oN <path> <X-Bench-Env>",
# so a check sees the rewrite and the header), the WebSocket echo server, the certificate.
declare -a OPTS_PORTS=()
WS_PORT=""
CERT_DIR=""
declare -A TLS_URL=() TLS_ADDR=() PLAIN_ADDR=() OPTS_URL=() NEGOTIATED=()
# tcp: the echo server's port and where each proxy's TCP listener is.
TCP_ECHO_PORT=""
declare -A TCP_ADDR=()

start_upstreams() {
  local i port
  for i in 1 2 3; do
    free_port port
    start_nginx_upstream "nginx-upstream-$i" "$LOAD_CORE" "$port" "ok$i" 8192 60s
    UPSTREAM_PORTS+=("$port")
  done
  log "upstreams: nginx on ports ${UPSTREAM_PORTS[*]} (core $LOAD_CORE)"
}

start_consul() {
  start_consul_agent "$LOAD_CORE"
  local i
  for i in 1 2 3; do register_instance books-ms "books-$i" "${UPSTREAM_PORTS[i - 1]}"; done
  # A second service for the churn scenario, on the first upstream.
  register_instance churn-ms churn-1 "${UPSTREAM_PORTS[0]}"
  log "consul: dev agent at $CONSUL (core $LOAD_CORE), books-ms registered with 3 instances"
}

# ----------------------------------------------------------------------------------------------
# The proxies under test. Each start_* sets URL[target] (where wrk sends requests) and
# PID[target] (the root of the process tree whose CPU is counted).

# start_ours TARGET INSTANCE_NAME EXPECTED_SERVICES [WRAPPER...]: starts docker-flow-proxy on
# core 0 with one worker thread against our Consul agent; it restores the routes stored under
# INSTANCE_NAME. A WRAPPER (valgrind and its options) runs the proxy under it, given more time.
start_ours() {
  local target=$1 instance=$2 expected=$3 patience=1
  shift 3
  (($# == 0)) || patience=10
  local -a options=(--threads 1)
  # Listeners this comparison does not use are turned off where the binary has them.
  if "$BIN" server --help 2>/dev/null | grep -q -- '--tls-listen'; then options+=(--tls-listen off); fi
  launch_ours "$target" "$PROXY_CORE" "$instance" $((30 * patience)) "$@" -- "${options[@]}"
  wait_for "$LAST_PID" "$target restoring $expected routes" 600 services_routed "$target" "$expected"
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

# haproxy_config ROUTES PORT: Docker Flow Proxy's shape (nbthread 1). books-ms's ACL is in the
# middle of the list: HAProxy tries the rules in order, so with traffic spread evenly over the
# services a request meets half of them on average before its own.
haproxy_config() {
  haproxy_head 1 5000 20s 15s
  haproxy_routes "$1" "$2" $(($1 / 2)) "${UPSTREAM_PORTS[@]}"
}

# start_haproxy TARGET ROUTES [MODE [WRAPPER...]]: HAProxy on core 0 (in the foreground; MODE
# -W: master-worker, "" not); a WRAPPER (valgrind and its options) runs HAProxy under it.
start_haproxy() {
  local target=$1 routes=$2 mode=${3:-} port
  shift $(($# < 3 ? $# : 3))
  local -a flags=(-db)
  [[ $mode != -W ]] || flags=(-W -db)
  free_port port
  haproxy_config "$routes" "$port" >"$RUN/$target.cfg"
  launch_haproxy "$target" "$PROXY_CORE" "$port" "$@" haproxy "${flags[@]}"
}

# start_nginx_proxy TARGET [TLS_PORT]: nginx as a reverse proxy on core 0 with the same 10
# routes (prefix locations) and pooled keep-alive connections to the upstreams. With TLS_PORT
# (the classes), also HTTPS and HTTP/2 there, and the options and WebSocket services.
start_nginx_proxy() {
  local target=$1 tls=${2:-} port dir i
  free_port port
  dir="$RUN/$target"
  mkdir -p "$dir"
  {
    nginx_main_conf "$dir" 8192
    echo "http {"
    nginx_http_conf "$dir" 60s
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
    [[ -z $tls ]] || nginx_classes_http
    echo "  server {"
    echo "    listen 127.0.0.1:$port;"
    [[ -z $tls ]] || nginx_classes_server "$tls"
    echo "    location $BOOKS_PATH { proxy_pass http://books-ms; }"
    for i in $(seq 1 9); do echo "    location /api/v$((i % 7))/svc-$i { proxy_pass http://unused; }"; done
    echo "  }"
    echo "}"
  } >"$dir/nginx.conf"
  start_pinned "$target" "$PROXY_CORE" nginx -p "$dir" -c "$dir/nginx.conf" -e stderr
  PID[$target]=$LAST_PID
  URL[$target]="http://127.0.0.1:$port$BOOKS_PATH"
  wait_for "$LAST_PID" "$target listening on port $port" 10 listening "$port"
  [[ -z $tls ]] || set_class_urls "$target" "$port" "$tls"
}

# nginx_classes_http: the classes' upstreams and settings in nginx's http block. Request bodies
# up to 128 KiB stay in memory (by default nginx writes bodies over 16 KiB to a temp file:
# measuring that would measure a disk, not nginx).
nginx_classes_http() {
  local i
  echo "  client_body_buffer_size 128k;"
  echo "  upstream opts-ms {"
  for i in 1 2 3; do echo "    server 127.0.0.1:${OPTS_PORTS[i - 1]};"; done
  echo "    keepalive $((3 * CONNECTIONS > 32 ? 3 * CONNECTIONS : 32));"
  echo "    keepalive_requests 100000000;"
  echo "  }"
  echo "  upstream ws-ms { server 127.0.0.1:$WS_PORT; }"
}

# nginx_classes_server TLS_PORT: the classes' listener and locations in nginx's server block:
# HTTPS with HTTP/2 (the one certificate), the options service (proxy_set_header in a location
# replaces the inherited ones, so they are repeated), and the WebSocket service.
nginx_classes_server() {
  echo "    listen 127.0.0.1:$1 ssl http2;"
  # nginx 1.22 offers TLS 1.3 only when told (1.23.4 made it a default); the others do by default.
  echo "    ssl_protocols TLSv1.2 TLSv1.3;"
  echo "    ssl_certificate $CERT_DIR/cert.pem;"
  echo "    ssl_certificate_key $CERT_DIR/key.pem;"
  echo "    location $OPTS_PATH/ {"
  echo "      rewrite ^$OPTS_PATH/(.*)\$ /books/\$1 break;"
  echo "      proxy_set_header Connection \"\";"
  echo "      proxy_set_header Host \$http_host;"
  echo "      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
  echo "      proxy_set_header X-Forwarded-Proto \$scheme;"
  echo "      proxy_set_header X-Forwarded-Host \$http_host;"
  echo "      proxy_set_header X-Bench-Env production;"
  echo "      add_header X-Served-By dfp-bench always;"
  echo "      proxy_pass http://opts-ms;"
  echo "    }"
  echo "    location $WS_PATH {"
  echo "      proxy_set_header Upgrade \$http_upgrade;"
  echo "      proxy_set_header Connection upgrade;"
  echo "      proxy_set_header Host \$http_host;"
  echo "      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
  echo "      proxy_set_header X-Forwarded-Proto \$scheme;"
  echo "      proxy_set_header X-Forwarded-Host \$http_host;"
  echo "      proxy_read_timeout 3600s;"
  echo "      proxy_pass http://ws-ms;"
  echo "    }"
}

# set_class_urls TARGET PLAIN_PORT TLS_PORT: where the classes' clients go.
set_class_urls() {
  PLAIN_ADDR[$1]="127.0.0.1:$2"
  TLS_ADDR[$1]="127.0.0.1:$3"
  TLS_URL[$1]="https://127.0.0.1:$3$BOOKS_PATH"
  OPTS_URL[$1]="http://127.0.0.1:$2$OPTS_PATH/item/42"
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
# user_us_per_request p90_us p999_us (extra: the churner's "applied/attempted" changes; core0:
# all busy time of the proxy's core per request; the busy shares say which core was saturated;
# user: the part of the proxy's CPU spent in user space, the rest being the kernel's; p90 and
# p99.9 last, so the columns before them kept their places when they were added).
measure() {
  local scenario=$1 mode=$2 round=$3 target=$4 churner=${5:-} count_file=${6:-} extra=-
  local out before="0 0" after="0 0" pid=${PID[$target]:-}
  local core_before core_after load_before load_after
  core_before=$(core_busy_ticks "$PROXY_CORE")
  load_before=$(core_busy_ticks "$LOAD_CORE")
  [[ -n $pid ]] && before=$(cpu_ticks "$pid")
  out=$(run_load "$mode" "$target" 2>&1) || die "the load ($mode) against $target failed: $out"
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
  line=$(grep '^RESULT ' <<<"$out") || die "the load ($mode) printed no RESULT line: $out"
  for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  # The handshake client's count of full and resumed handshakes, and what they negotiated.
  # (Under churn the field keeps the churner's count of changes instead.)
  if [[ $mode == handshake ]]; then
    [[ -n $churner ]] || extra="${r[full_handshakes]}/${r[resumed_handshakes]}"
    NEGOTIATED[$target]=${r[negotiated]:-}
  fi
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
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$mode" \
    "$round" "$target" "$rps" "$p50" "$p99" "$errors" "$cpu" "$requests" "$extra" "$core" "$busy0" \
    "$busy1" "$user" "${r[p90_us]:--}" "${r[p999_us]:--}" >>"$RESULTS"
  log "$scenario/$mode round $round $target: $rps req/s, p50 ${p50} us, p99 ${p99} us, $errors errors," \
    "CPU ${cpu} us/request (user ${user}; core $PROXY_CORE: ${core}); cores busy ${busy0}% / ${busy1}%"
}

# wrk_run SCRIPT URL [ARG...]: one wrk run of DURATION over CONNECTIONS connections on the load
# core (ARGs go to the script after `--`).
wrk_run() {
  local script=$1 url=$2
  shift 2
  local -a args=()
  (($# == 0)) || args=(-- "$@")
  taskset -c "$LOAD_CORE" wrk -t 1 -c "$CONNECTIONS" -d "${DURATION}s" --timeout 5s -s "$script" \
    "$url" ${args[@]+"${args[@]}"}
}

# h2load_run URL: h2load for DURATION on the load core; prints its output and a RESULT line
# (benches/compare/h2load.awk: no percentiles, h2load reports none).
h2load_run() {
  local out
  out=$(taskset -c "$LOAD_CORE" h2load -t 1 -c "$H2_CLIENTS" -m "$H2_STREAMS" -D "$DURATION" "$1" 2>&1) || {
    printf '%s\n' "$out"
    return 1
  }
  printf '%s\n' "$out"
  awk -f "$HELPERS/h2load.awk" <<<"$out"
}

# run_load MODE TARGET: the load of one run against TARGET; prints a RESULT line
# (benches/compare/report.lua's format). The modes of the existing scenarios run wrk on
# URL[TARGET] (paced: with the paced script); the classes have their own clients and URLs.
run_load() {
  local target=$2
  case $1 in
    paced) wrk_run "$HELPERS/paced.lua" "${URL[$target]}" ;;
    https) wrk_run "$HELPERS/report.lua" "${TLS_URL[$target]}" ;;
    post-1k) wrk_run "$HELPERS/post.lua" "${URL[$target]}" 1024 ;;
    post-64k) wrk_run "$HELPERS/post.lua" "${URL[$target]}" 65536 ;;
    options) wrk_run "$HELPERS/report.lua" "${OPTS_URL[$target]}" ;;
    h2) h2load_run "${TLS_URL[$target]}" ;;
    handshake)
      taskset -c "$LOAD_CORE" "$LOAD_BIN" handshakes --addr "${TLS_ADDR[$target]}" --path "$BOOKS_PATH" \
        --connections "$HANDSHAKE_CONNECTIONS" --duration "$DURATION" --max $((DURATION * 100000))
      ;;
    websocket)
      taskset -c "$LOAD_CORE" "$LOAD_BIN" websocket --addr "${PLAIN_ADDR[$target]}" --path "$WS_PATH" \
        --connections "$CONNECTIONS" --duration "$DURATION" --size "$WS_MESSAGE_BYTES" \
        --max $((DURATION * 1000000))
      ;;
    tcp-stream)
      taskset -c "$LOAD_CORE" "$LOAD_BIN" tcp-stream --addr "${TCP_ADDR[$target]}" \
        --connections "$TCP_STREAM_CONNECTIONS" --duration "$DURATION" --size "$TCP_CHUNK_BYTES" \
        --max $((DURATION * 1000000))
      ;;
    tcp-connect)
      taskset -c "$LOAD_CORE" "$LOAD_BIN" tcp-connect --addr "${TCP_ADDR[$target]}" \
        --connections "$TCP_CONNECT_CONNECTIONS" --duration "$DURATION" --size "$TCP_CONNECT_BYTES" \
        --max $((DURATION * 1000000))
      ;;
    *) wrk_run "$HELPERS/report.lua" "${URL[$target]}" ;;
  esac
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
# The request classes: their upstreams, certificate and proxies

# make_certificate: one self-signed ECDSA P-256 certificate for every proxy, in CERT_DIR:
# cert.pem and key.pem (nginx), haproxy.pem (both, for HAProxy's crt), certs/default.pem
# (both, for our --certs-dir: "default" is served to clients that send no SNI).
make_certificate() {
  CERT_DIR="$RUN/tls"
  mkdir -p "$CERT_DIR/certs"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$CERT_DIR/key.pem" 2>/dev/null ||
    die "openssl could not make a P-256 key"
  openssl req -x509 -new -key "$CERT_DIR/key.pem" -sha256 -days 30 -subj /CN=dfp-bench.local \
    -addext subjectAltName=DNS:dfp-bench.local -out "$CERT_DIR/cert.pem" 2>/dev/null ||
    die "openssl could not make the certificate"
  cat "$CERT_DIR/cert.pem" "$CERT_DIR/key.pem" >"$CERT_DIR/haproxy.pem"
  cp "$CERT_DIR/haproxy.pem" "$CERT_DIR/certs/default.pem"
  log "certificate: $(openssl x509 -in "$CERT_DIR/cert.pem" -noout -text | awk '/Public Key Algorithm|NIST CURVE/ { $1 = $1; printf "%s; ", $0 }')"
}

# start_class_upstreams: the options service's three nginx upstreams and the WebSocket echo
# server (dfp-load ws-echo), on the load core, registered in Consul as opts-ms and ws-ms.
start_class_upstreams() {
  local i port
  for i in 1 2 3; do
    free_port port
    # shellcheck disable=SC2016 # nginx variables, for nginx to expand
    start_nginx_upstream "nginx-opts-$i" "$LOAD_CORE" "$port" "o$i \$uri \$http_x_bench_env" 8192 60s
    OPTS_PORTS+=("$port")
    register_instance opts-ms "opts-$i" "$port"
  done
  free_port WS_PORT
  start_pinned ws-echo "$LOAD_CORE" "$LOAD_BIN" ws-echo --listen "127.0.0.1:$WS_PORT"
  wait_for "$LAST_PID" "the WebSocket echo server listening on port $WS_PORT" 10 listening "$WS_PORT"
  register_instance ws-ms ws-1 "$WS_PORT"
  log "class upstreams: options service on ports ${OPTS_PORTS[*]}, WebSocket echo on $WS_PORT (core $LOAD_CORE)"
}

# reconfigure_with TARGET PARAM=VALUE...: an admin reconfigure with URL-encoded parameters;
# dies unless it answers 200.
reconfigure_with() {
  local target=$1 code
  shift
  local -a args=()
  local param
  for param in "$@"; do args+=(--data-urlencode "$param"); done
  code=$(curl -s --max-time 5 -G -o "$RUN/last-reconfigure.json" -w '%{http_code}' "${args[@]}" \
    "${ADMIN[$target]}/v1/docker-flow-proxy/reconfigure")
  [[ $code == 200 ]] || die "$target: reconfigure $* answered $code: $(cat "$RUN/last-reconfigure.json")"
}

# start_ours_classes TARGET: ours with the HTTPS listener and the certificate (--certs-dir),
# books-ms, the options service and the WebSocket service routed by reconfigure calls.
start_ours_classes() {
  local target=$1 tls
  free_port tls
  launch_ours "$target" "$PROXY_CORE" dfp-bench-classes 30 -- --threads 1 \
    --tls-listen "127.0.0.1:$tls" --certs-dir "$CERT_DIR/certs"
  wait_for "$LAST_PID" "$target restoring 10 routes" 600 services_routed "$target" 10
  route_books "$target"
  reconfigure_with "$target" serviceName=opts-ms "servicePath=$OPTS_PATH" \
    "reqPathSearch=^$OPTS_PATH/(.*)" 'reqPathReplace=/books/\1' \
    'setReqHeader=X-Bench-Env production' 'addResHeader=X-Served-By dfp-bench'
  reconfigure_with "$target" serviceName=ws-ms "servicePath=$WS_PATH"
  wait_for "${PID[$target]}" "$target routing 12 services" 30 services_routed "$target" 12
  local plain=${URL[$target]#http://127.0.0.1:}
  set_class_urls "$target" "${plain%%/*}" "$tls"
}

# start_haproxy_classes TARGET: HAProxy (nbthread 1) with Docker Flow Proxy's shape as in
# closed/paced, plus an HTTPS bind (the certificate, `alpn h2,http/1.1`), X-Forwarded-Proto
# by the connection, and the options and WebSocket services (their rules just after
# books-ms's, in the middle of the list).
start_haproxy_classes() {
  local target=$1 port tls
  free_port port
  free_port tls
  {
    haproxy_head 1 5000 20s 15s
    haproxy_routes 10 "$port" 5 "${UPSTREAM_PORTS[@]}" | awk -v tls="$tls" -v pem="$CERT_DIR/haproxy.pem" \
      -v opts="$OPTS_PATH" -v ws="$WS_PATH" '
      /^  bind / { print; print "  bind 127.0.0.1:" tls " ssl crt " pem " alpn h2,http/1.1"; next }
      /set-header X-Forwarded-Proto http$/ {
        print "  http-request set-header X-Forwarded-Proto https if { ssl_fc }"
        print "  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }"
        next
      }
      /^  use_backend books-ms-be / {
        print
        print "  acl url_opts-ms path_beg " opts; print "  use_backend opts-ms-be if url_opts-ms"
        print "  acl url_ws-ms path_beg " ws; print "  use_backend ws-ms-be if url_ws-ms"
        next
      }
      { print }'
    echo "backend opts-ms-be"
    echo "  http-request set-header X-Bench-Env production"
    printf '  http-request replace-path ^%s/(.*) /books/\\1\n' "$OPTS_PATH"
    echo "  http-response add-header X-Served-By dfp-bench"
    local i
    for i in 1 2 3; do echo "  server opts-$i 127.0.0.1:${OPTS_PORTS[i - 1]}"; done
    echo "backend ws-ms-be"
    echo "  server ws-1 127.0.0.1:$WS_PORT"
  } >"$RUN/$target.cfg"
  launch_haproxy "$target" "$PROXY_CORE" "$port" haproxy -db
  set_class_urls "$target" "$port" "$tls"
}

# check_classes TARGET: before measuring, each wanted class works through TARGET.
check_classes() {
  local target=$1 out
  if wants_classes https; then
    out=$(curl -sk --max-time 5 --http1.1 -w ' %{http_code} %{http_version}' "${TLS_URL[$target]}") ||
      die "$target: ${TLS_URL[$target]} did not answer"
    [[ $out == ok?" 200 1.1" ]] || die "$target: HTTPS answered '$out', not 200 over HTTP/1.1"
  fi
  if wants h2; then
    out=$(curl -sk --max-time 5 --http2 -w ' %{http_code} %{http_version}' "${TLS_URL[$target]}") ||
      die "$target: ${TLS_URL[$target]} did not answer over HTTP/2"
    [[ $out == ok?" 200 2" ]] || die "$target: HTTP/2 answered '$out', not 200 over HTTP/2"
  fi
  if wants handshake; then
    out=$("$LOAD_BIN" handshakes --addr "${TLS_ADDR[$target]}" --path "$BOOKS_PATH" --connections 1 \
      --duration 10 --max 5) || die "$target: dfp-load handshakes failed: $out"
    [[ $out == *" requests=5 "*" full_handshakes=5 resumed_handshakes=0 "* ]] ||
      die "$target: 5 new TLS connections did not give 5 full handshakes and 5 answers: $out"
  fi
  if wants post; then
    out=$(head -c 65536 /dev/zero | curl -s --max-time 5 --data-binary @- -w ' %{http_code}' "${URL[$target]}") ||
      die "$target: a POST to ${URL[$target]} did not answer"
    [[ $out == ok?" 200" ]] || die "$target: a 64 KiB POST answered '$out', not 200"
  fi
  if wants options; then
    out=$(curl -si --max-time 5 "${OPTS_URL[$target]}") || die "$target: ${OPTS_URL[$target]} did not answer"
    [[ $out == "HTTP/1.1 200"* ]] || die "$target: the options service answered '$out', not 200"
    [[ ${out,,} == *"x-served-by: dfp-bench"* ]] || die "$target: the answer lacks X-Served-By: $out"
    [[ $out == *"o"[123]" /books/item/42 production" ]] ||
      die "$target: the instance did not see the rewritten path and the set header: $out"
  fi
  if wants websocket; then
    out=$("$LOAD_BIN" websocket --addr "${PLAIN_ADDR[$target]}" --path "$WS_PATH" --connections 2 \
      --duration 10 --max 20) || die "$target: dfp-load websocket failed: $out"
    [[ $out == *" requests=20 "*" connect=0 read=0 write=0 status=0 timeout=0 "* ]] ||
      die "$target: 20 WebSocket messages did not come back: $out"
  fi
  log "$target: the classes work (${ONLY})"
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

# scenario_classes: every wanted request class on ours, HAProxy and nginx (one set of the three
# serves them all), in alternating rounds like closed/paced; results under scenario "classes"
# with the class as the mode (post: post-1k and post-64k).
scenario_classes() {
  log "scenario classes: starting ours, haproxy and nginx on core $PROXY_CORE with HTTPS"
  make_certificate
  start_class_upstreams
  store_routes dfp-bench-classes 10
  start_ours_classes ours
  start_haproxy_classes haproxy
  local tls
  free_port tls
  start_nginx_proxy nginx "$tls"
  local target class mode round
  for target in ours haproxy nginx; do
    check_route "$target"
    check_classes "$target"
  done
  for class in $CLASSES; do
    wants "$class" || continue
    for mode in $(class_modes "$class"); do
      for ((round = 1; round <= ROUNDS; round++)); do
        for target in ours haproxy nginx; do measure classes "$mode" "$round" "$target"; done
      done
    done
  done
  if named class-churn; then classes_under_churn; fi
  for target in ours haproxy nginx; do
    [[ -z ${NEGOTIATED[$target]:-} ]] || echo "$target ${NEGOTIATED[$target]}" >>"$RUN/negotiated.txt"
  done
  stop_tree "${PID[ours]}"
  stop_tree "${PID[haproxy]}"
  stop_tree "${PID[nginx]}"
}

# class_modes CLASS: the measured modes of a class (post has two body sizes).
class_modes() { if [[ $1 == post ]]; then echo post-1k post-64k; else echo "$1"; fi; }

# urlencode TEXT: TEXT percent-encoded for a query string (bash only: no process).
urlencode() {
  local text=$1 out="" c i
  for ((i = 0; i < ${#text}; i++)); do
    c=${text:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

# class_churn_query CLASS: the reconfigure (query string) that churn repeats for the service
# CLASS loads, with the options it was routed with.
class_churn_query() {
  case $1 in
    options)
      printf 'serviceName=opts-ms&servicePath=%s&reqPathSearch=%s&reqPathReplace=%s&setReqHeader=%s&addResHeader=%s' \
        "$OPTS_PATH" "$(urlencode "^$OPTS_PATH/(.*)")" "$(urlencode '/books/\1')" \
        "$(urlencode 'X-Bench-Env production')" "$(urlencode 'X-Served-By dfp-bench')"
      ;;
    websocket) printf 'serviceName=ws-ms&servicePath=%s' "$WS_PATH" ;;
    *) printf 'serviceName=books-ms&servicePath=%s' "$BOOKS_PATH" ;;
  esac
}

# classes_under_churn: class-churn, on the classes scenario's ours: every class of
# --churn-classes quiet (target ours) and with a reconfigure every 100 ms (target ours-busy,
# the same process), alternating within each round.
classes_under_churn() {
  local array class mode round count_file churner query
  PID[ours-busy]=${PID[ours]}
  for array in URL ADMIN TLS_URL TLS_ADDR PLAIN_ADDR OPTS_URL; do
    declare -n map=$array
    # shellcheck disable=SC2154 # map names an associative array: ours-busy is a key
    map[ours-busy]=${map[ours]}
    unset -n map
  done
  log "class-churn: ${CHURN_CLASSES// /, } on ours, quiet and with a reconfigure every 100 ms"
  for class in $CHURN_CLASSES; do
    query=$(class_churn_query "$class")
    for mode in $(class_modes "$class"); do
      for ((round = 1; round <= ROUNDS; round++)); do
        measure class-churn "$mode" "$round" ours
        count_file="$RUN/class-churn-$mode-$round.count"
        churn_ours "${ADMIN[ours]}" "$count_file" "$query" &
        churner=$!
        STARTED+=("$churner")
        STARTED_NAME[$churner]="churn-$mode"
        measure class-churn "$mode" "$round" ours-busy "$churner" "$count_file"
        stop_tree "$churner"
      done
    done
  done
}

# scenario_threads: the paced GET on ours with one worker thread on core 0 and with two on
# cores 0 and 1, alternating within each round; HAProxy with nbthread 1 and 2 on the same
# cores beside them, as the control (what a second thread costs a proxy that shares nothing
# on its hot path: fewer events per wake-up, and a thread on the load generator's core).
scenario_threads() {
  log "scenario threads: ours and HAProxy with 1 thread (core $PROXY_CORE) and 2 (cores $PROXY_CORE,$LOAD_CORE), paced"
  store_routes dfp-bench-threads 10
  local -a off=(--tls-listen off)
  launch_ours ours-t1 "$PROXY_CORE" dfp-bench-threads 30 -- --threads 1 "${off[@]}"
  wait_for "$LAST_PID" "ours-t1 restoring 10 routes" 600 services_routed ours-t1 10
  route_books ours-t1
  launch_ours ours-t2 "$PROXY_CORE,$LOAD_CORE" dfp-bench-threads 30 -- --threads 2 "${off[@]}"
  wait_for "$LAST_PID" "ours-t2 restoring 10 routes" 600 services_routed ours-t2 10
  route_books ours-t2
  local target round port threads cores
  for threads in 1 2; do
    cores=$PROXY_CORE
    ((threads == 1)) || cores="$PROXY_CORE,$LOAD_CORE"
    free_port port
    {
      haproxy_head "$threads" 5000 20s 15s
      haproxy_routes 10 "$port" 5 "${UPSTREAM_PORTS[@]}"
    } >"$RUN/haproxy-t$threads.cfg"
    launch_haproxy "haproxy-t$threads" "$cores" "$port" haproxy -db
  done
  local -a targets=(ours-t1 ours-t2 haproxy-t1 haproxy-t2)
  for target in "${targets[@]}"; do check_route "$target"; done
  for ((round = 1; round <= ROUNDS; round++)); do
    for target in "${targets[@]}"; do measure threads paced "$round" "$target"; done
  done
  for target in "${targets[@]}"; do stop_tree "${PID[$target]}"; done
}

# scenario_tcp: a TCP echo server, ours with a TCP service on it and HAProxy in `mode tcp` in
# front of it; tcp-stream and tcp-connect on both, alternating within each round.
scenario_tcp() {
  log "scenario tcp: a TCP echo server on core $LOAD_CORE, ours and haproxy in front of it on core $PROXY_CORE"
  free_port TCP_ECHO_PORT
  start_pinned tcp-echo "$LOAD_CORE" "$LOAD_BIN" tcp-echo --listen "127.0.0.1:$TCP_ECHO_PORT"
  wait_for "$LAST_PID" "the TCP echo server listening on port $TCP_ECHO_PORT" 10 listening "$TCP_ECHO_PORT"
  register_instance tcp-echo tcp-echo-1 "$TCP_ECHO_PORT"
  local port
  launch_ours ours "$PROXY_CORE" dfp-bench-tcp 30 -- --threads 1 --tls-listen off
  free_port port
  reconfigure_with ours serviceName=tcp-echo reqMode=tcp "srcPort=$port"
  grep -q '127.0.0.1' "$RUN/last-reconfigure.json" || die "ours: the TCP reconfigure found no instance: $(cat "$RUN/last-reconfigure.json")"
  wait_for "${PID[ours]}" "ours listening on TCP port $port" 10 listening "$port"
  TCP_ADDR[ours]="127.0.0.1:$port"
  free_port port
  {
    echo "global"
    echo "  nbthread 1"
    echo "  maxconn 5000"
    echo "  tune.bufsize 16384"
    echo
    echo "defaults"
    echo "  mode tcp"
    echo "  balance roundrobin"
    echo "  timeout connect 5s"
    echo "  timeout client 20s"
    echo "  timeout server 20s"
    echo
    echo "frontend tcp-echo-fe"
    echo "  bind 127.0.0.1:$port"
    echo "  default_backend tcp-echo-be"
    echo
    echo "backend tcp-echo-be"
    echo "  server tcp-echo-1 127.0.0.1:$TCP_ECHO_PORT"
  } >"$RUN/haproxy.cfg"
  launch_haproxy haproxy "$PROXY_CORE" "$port" haproxy -db
  TCP_ADDR[haproxy]="127.0.0.1:$port"
  local target mode round out
  for target in ours haproxy; do
    for mode in tcp-stream tcp-connect; do
      out=$("$LOAD_BIN" "$mode" --addr "${TCP_ADDR[$target]}" --connections 2 --duration 10 --max 20) ||
        die "$target: dfp-load $mode failed: $out"
      [[ $out == *" requests=20 "*" connect=0 read=0 write=0 status=0 timeout=0 "* ]] ||
        die "$target: 20 $mode echoes did not come back whole: $out"
    done
    log "$target: ${TCP_ADDR[$target]} echoes (tcp-stream, tcp-connect)"
  done
  for mode in tcp-stream tcp-connect; do
    for ((round = 1; round <= ROUNDS; round++)); do
      for target in ours haproxy; do measure tcp "$mode" "$round" "$target"; done
    done
  done
  stop_tree "${PID[ours]}"
  stop_tree "${PID[haproxy]}"
}

# scenario_queue: a service capped at QUEUE_CAP requests in flight per instance, on the three
# upstreams, overloaded by QUEUE_CONNECTIONS wrk connections: ours (instanceMaxConn and the
# queue it has by default) beside HAProxy (`maxconn` on each server line, `timeout queue`).
scenario_queue() {
  log "scenario queue: $QUEUE_CAP in flight per instance, 3 instances, $QUEUE_CONNECTIONS connections"
  local i port target round
  for i in 1 2 3; do register_instance queue-ms "queue-$i" "${UPSTREAM_PORTS[i - 1]}"; done
  launch_ours ours "$PROXY_CORE" dfp-bench-queue 30 -- --threads 1 --tls-listen off
  reconfigure_with ours serviceName=queue-ms servicePath=/queue "instanceMaxConn=$QUEUE_CAP"
  grep -q '127.0.0.1' "$RUN/last-reconfigure.json" || die "ours: the queue-ms reconfigure found no instance: $(cat "$RUN/last-reconfigure.json")"
  URL[ours]="${URL[ours]%"$BOOKS_PATH"}/queue"
  free_port port
  {
    haproxy_head 1 5000 20s 15s
    echo
    echo "frontend queue-fe"
    echo "  bind 127.0.0.1:$port"
    echo "  default_backend queue-be"
    echo
    echo "backend queue-be"
    for i in 1 2 3; do echo "  server queue-$i 127.0.0.1:${UPSTREAM_PORTS[i - 1]} maxconn $QUEUE_CAP"; done
  } >"$RUN/haproxy.cfg"
  launch_haproxy haproxy "$PROXY_CORE" "$port" haproxy -db
  URL[haproxy]="http://127.0.0.1:$port/queue"
  for target in ours haproxy; do
    [[ $(curl -s --max-time 5 -o /dev/null -w "%{http_code}" "${URL[$target]}") == 200 ]] ||
      die "$target: ${URL[$target]} does not answer 200 (logs: $LOGS/$target.log)"
    log "$target: ${URL[$target]} answers 200"
  done
  local CONNECTIONS=$QUEUE_CONNECTIONS
  for ((round = 1; round <= ROUNDS; round++)); do
    for target in ours haproxy; do measure queue closed "$round" "$target"; done
  done
  stop_tree "${PID[ours]}"
  stop_tree "${PID[haproxy]}"
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

# The churners' clock and sleep start no process (now_ms reads bash's EPOCHREALTIME, and
# sleep_until is a read that times out on a pipe nobody writes to): the load core is saturated in
# the closed loop, and a few forks per change there would be measured as the proxy's churn cost.

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

# churn_ours ADMIN COUNT_FILE [QUERY]: every 100 ms for the run's duration, a reconfigure: odd
# ticks the service under load again (QUERY, the reconfigure's query string; default books-ms
# on its path), even ticks churn-ms with its path flipped.
# The call is written by bash itself (/dev/tcp), not by a curl process per call: like
# HAProxy's churner (a `kill` builtin), the operator's side costs next to nothing on the load
# core, so what the churn costs is what the proxy and Consul do.
churn_ours() {
  local admin=$1 file=$2 ticks=$((DURATION * 10)) i ok=0 target status start
  local loaded=${3:-serviceName=books-ms&servicePath=$BOOKS_PATH}
  local hostport=${admin#http://}
  taskset -cp "$LOAD_CORE" "$BASHPID" >/dev/null
  open_sleeper
  now_ms
  start=$NOW_MS
  for ((i = 0; i < ticks && NOW_MS < start + DURATION * 1000; i++)); do
    if ((i % 2)); then
      target="/v1/docker-flow-proxy/reconfigure?$loaded"
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
      start_churner "$target" "$count_file"
      churner=$CHURNER
      measure churn busy "$round" "$target" "$churner" "$count_file"
      stop_tree "$churner"
      # Reloaded HAProxy workers drain their last connections before the next quiet run.
      sleep 1
    done
  done
  churn_timelines
  stop_tree "${PID[ours-churn]}"
  stop_tree "${PID[haproxy-churn]}"
}

# start_churner TARGET COUNT_FILE: the churn scenario's change every 100 ms for TARGET in the
# background (ours-churn: reconfigure calls; haproxy-churn: reloads); sets CHURNER to its pid.
start_churner() {
  if [[ $1 == ours-churn ]]; then
    churn_ours "${ADMIN[$1]}" "$2" &
  else
    churn_haproxy "${PID[$1]}" "$2" &
  fi
  CHURNER=$!
  STARTED+=("$CHURNER")
  STARTED_NAME[$CHURNER]="churn-$1"
}

# churn_timelines: throughput over time under churn, one run per proxy after the rounds:
# dfp-load's closed-loop GETs (as wrk's) with its timeline of requests completed and failed in
# each 100 ms (timeline-ours.tsv, timeline-haproxy.tsv in the run's folder), drawn by charts.py
# as churn-timeline.svg. A run's average hides what a reload does; the timeline shows it.
churn_timelines() {
  local target name addr path count_file churner out
  for target in ours-churn haproxy-churn; do
    name=${target%-churn}
    addr=${URL[$target]#http://}
    path=/${addr#*/}
    addr=${addr%%/*}
    count_file="$RUN/timeline-$name.count"
    start_churner "$target" "$count_file"
    churner=$CHURNER
    out=$(taskset -c "$LOAD_CORE" "$LOAD_BIN" get --addr "$addr" --path "$path" \
      --connections "$CONNECTIONS" --duration "$DURATION" --max $((DURATION * 1000000)) \
      --timeline "$RUN/timeline-$name.tsv" 2>&1) || die "the timeline run against $target failed: $out"
    wait "$churner" || true
    stop_tree "$churner"
    log "churn timeline $target: ${out#RESULT } (changes: $(cat "$count_file" 2>/dev/null || echo '?'))"
    sleep 1
  done
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
  local negotiated=""
  [[ ! -s $RUN/negotiated.txt ]] || negotiated=$(awk '{ printf "%s%s: %s", (NR > 1 ? "; " : ""), $1, $2 }' "$RUN/negotiated.txt")
  awk -F'\t' -v many="$MANY_ROUTES" -v instructions="$INSTRUCTIONS" -v warmup="$INSTR_WARMUP" \
    -v conns="$CONNECTIONS" -v handshake_connections="$HANDSHAKE_CONNECTIONS" \
    -v h2_clients="$H2_CLIENTS" -v h2_streams="$H2_STREAMS" -v ws_bytes="$WS_MESSAGE_BYTES" \
    -v negotiated="$negotiated" -v tcp_chunk="$TCP_CHUNK_BYTES" -v tcp_streams="$TCP_STREAM_CONNECTIONS" \
    -v tcp_clients="$TCP_CONNECT_CONNECTIONS" -v tcp_connect_bytes="$TCP_CONNECT_BYTES" \
    -v queue_cap="$QUEUE_CAP" -v queue_conns="$QUEUE_CONNECTIONS" \
    -f "$HELPERS/report.awk" "$RESULTS" "$INSTRUCTIONS"
}

main() {
  parse_args "$@"
  set_traps

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
  if wants_classes || named tcp || wants churn; then build_load; fi
  describe_machine >"$RUN/machine.md"
  start_upstreams
  start_consul

  if wants closed || wants paced; then scenario_compare; fi
  if wants routes; then scenario_routes; fi
  if wants churn; then scenario_churn; fi
  if wants instructions; then scenario_instructions; fi
  if wants_classes; then scenario_classes; fi
  if named threads; then scenario_threads; fi
  if named tcp; then scenario_tcp; fi
  if named queue; then scenario_queue; fi

  {
    cat "$RUN/machine.md"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    report
  } | tee "$RUN/report.md"
  log "report: $RUN/report.md; raw results: $RESULTS"
  if python3 "$HERE/lib/charts.py" "$RUN" "$RUN/charts"; then
    if [[ -n ${CHARTS:-} ]]; then
      mkdir -p "$CHARTS" && cp "$RUN"/charts/*.svg "$CHARTS"/
      log "charts copied to $CHARTS"
    fi
  else
    log "no charts drawn (python3 missing, or no request class in this run)"
  fi
}

main "$@"
