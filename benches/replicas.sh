#!/usr/bin/env bash
# replicas.sh: how fast a route reaches every replica (issue "control plane at scale", point 6:
# 5 proxies with one instance name and 1,000 services; a reconfigure to any one is live on all
# within 1 s; a replica started cold serves everything within 2 s).
#
# What it measures: N services registered in a Consul dev agent (one nginx instance behind
# all of them), R proxies started with one instance name. Service i is sent as a reconfigure
# to replica i mod R; from just before the call until every replica answers 200 for its path
# (each polled in turn with curl, as fast as curl goes) is that service's convergence time.
# Then one more replica is started cold: the time from its start until its admin /metrics
# says N services are routed and a route answers through it.
#
# Run:     benches/replicas.sh --bin target/release/docker-flow-proxy
# Options: --services N (default 1000)  --replicas R (default 5)  --help
# Needs:   Linux, `consul` (../shared/bin/install-consul puts one on PATH), curl, nginx.
# Output:  progress on stderr; a markdown table on stdout.
# Every process it starts is stopped when it ends, also on errors and Ctrl-C.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
readonly HERE REPO
readonly BENCH_NAME=replicas
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$HERE/lib/common.sh"

SERVICES=1000
REPLICAS=5
BIN=""
CONSUL_CONNS=1000

while (($#)); do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --services) SERVICES=$2; shift 2 ;;
    --replicas) REPLICAS=$2; shift 2 ;;
    --help | -h) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -x $BIN ]] || die "give --bin PATH (a release build of docker-flow-proxy)"

RUN=$(mktemp -d /tmp/replicas.XXXXXX)
LOGS=$RUN
set_traps
require_tools nginx:nginx-light curl
ensure_consul

free_port UPSTREAM_PORT
start_nginx_upstream nginx-upstream "" "$UPSTREAM_PORT" ok 1024 60s
start_consul_agent ""
log "registering $SERVICES services in Consul"
register_services 0 $((SERVICES - 1)) "$UPSTREAM_PORT"

for ((r = 0; r < REPLICAS; r++)); do
  launch_ours "replica-$r" "" dfp-replicas 30 -- --tls-listen off --threads 1
done

# serves TARGET PATH: the replica answers 200 for PATH.
serves() {
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${URL[$1]%/api/v1/books}$2") == 200 ]]
}

log "sending $SERVICES reconfigure calls, each to one replica in turn"
: >"$RUN/convergence-ms"
for ((i = 0; i < SERVICES; i++)); do
  target="replica-$((i % REPLICAS))"
  now_ms
  start=$NOW_MS
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
    "${ADMIN[$target]}/v1/docker-flow-proxy/reconfigure?serviceName=svc-$i&servicePath=/svc-$i")
  [[ $code == 200 ]] || die "reconfigure of svc-$i on $target answered $code"
  for ((r = 0; r < REPLICAS; r++)); do
    wait_for "${PID[replica-$r]}" "replica-$r serving /svc-$i" 30 serves "replica-$r" "/svc-$i"
  done
  now_ms
  echo $((NOW_MS - start)) >>"$RUN/convergence-ms"
done
read -r median p99 max < <(sort -n "$RUN/convergence-ms" |
  awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)], a[int(NR * 0.99 + 0.5)], a[NR] }')
log "live on all $REPLICAS replicas: median $median ms, p99 $p99 ms, max $max ms"

# ready_all TARGET: all services routed and one answers through it.
ready_all() {
  services_routed "$1" "$SERVICES" && serves "$1" /svc-0
}
launch_ours cold "" dfp-replicas 30 -- --tls-listen off --threads 1
wait_for "${PID[cold]}" "the cold replica serving $SERVICES routes" 60 ready_all cold
now_ms
cold_ms=$((NOW_MS - LAUNCHED_MS))
log "cold replica: serving all $SERVICES routes after $cold_ms ms"

echo "| replicas | services | reconfigure to live on all: median | p99 | max | cold replica serving all |"
echo "|---:|---:|---:|---:|---:|---:|"
echo "| $REPLICAS | $SERVICES | $median ms | $p99 ms | $max ms | $cold_ms ms |"
