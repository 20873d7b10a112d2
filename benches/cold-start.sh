#!/usr/bin/env bash
# cold-start.sh: how long docker-flow-proxy takes from start to serving every route it restores
# from Consul KV (issue "control plane at scale", point 2: 10,000 stored services served
# <= 2 s after start).
#
# What it measures: N routes are stored in Consul KV the way reconfigure calls store them
# (books-ms, with one registered instance, and N-1 services svc-<i> on /api/v<i%7>/svc-<i>,
# each registered in Consul with one instance), then each binary given is started against
# that Consul dev agent, ROUNDS times, alternating. "Ready" is the first moment its admin API
# answers /metrics with dfp_services = N (the admin listener answers during the restore; the
# data plane serves once it is done) and books-ms answers through it; the time is from the
# process start, polled every 0.1 s. Then one registration change (a new books-ms instance)
# and the HTTP requests the proxy sends Consul for it (its dfp_consul_requests_total, once
# it has stood still for 1.5 s; "-" for a build without that counter).
#
# Run:     benches/cold-start.sh --bin target/release/docker-flow-proxy [--bin OTHER ...]
# Options: --routes N (default 10000)  --rounds N (default 3)  --help
# Needs:   Linux, `consul` (../shared/bin/install-consul puts one on PATH), curl, nginx (the
#          books-ms instance; installed with apt-get when missing, as root).
# Output:  progress on stderr; a markdown table on stdout (per binary: each round, median).
# Every process it starts is stopped when it ends, also on errors and Ctrl-C.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
readonly HERE REPO
readonly BENCH_NAME=cold-start
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$HERE/lib/common.sh"

ROUTES=10000
ROUNDS=3
CONSUL_CONNS=1000
parse_binaries_args 20 "$@"

RUN=$(mktemp -d /tmp/cold-start.XXXXXX)
LOGS=$RUN
set_traps
require_tools nginx:nginx-light curl
ensure_consul

# A books-ms instance (nginx answering "ok") and the Consul agent with every service registered.
free_port UPSTREAM_PORT
start_nginx_upstream nginx-upstream "" "$UPSTREAM_PORT" ok 1024 60s
start_consul_agent ""
register_instance books-ms books-1 "$UPSTREAM_PORT"
log "registering $((ROUTES - 1)) services in Consul (one instance each)"
register_services 1 $((ROUTES - 1))
log "storing $ROUTES routes in Consul KV"
store_routes dfp-cold "$ROUTES"

ready() {
  services_routed "$1" "$ROUTES" && [[ $(curl -s --max-time 2 "${URL[$1]}") == ok ]]
}

# consul_requests TARGET: the target's dfp_consul_requests_total (empty when it has none).
consul_requests() {
  curl -sf --max-time 5 "${ADMIN[$1]}/metrics" | awk '$1 == "dfp_consul_requests_total" { print $2 }'
}

# settled_requests TARGET: consul_requests once it has not moved for 1.5 s (at most 60 s).
settled_requests() {
  local last now still=0 tries
  last=$(consul_requests "$1")
  for ((tries = 0; tries < 120 && still < 3; tries++)); do
    sleep 0.5
    now=$(consul_requests "$1")
    if [[ $now == "$last" ]]; then still=$((still + 1)); else still=0 last=$now; fi
  done
  echo "$last"
}

# instances_routed TARGET COUNT: ours' /metrics says COUNT instances are routed.
instances_routed() {
  [[ $(curl -sf --max-time 5 "${ADMIN[$1]}/metrics" | awk '$1 == "dfp_instances" { print $2 }') == "$2" ]]
}

declare -A TIMES=() CHANGE=()
for ((round = 1; round <= ROUNDS; round++)); do
  for b in "${!BINS[@]}"; do
    BIN=${BINS[$b]}
    target="bin$b-r$round"
    launch_ours "$target" "" dfp-cold 120 -- --tls-listen off
    wait_for "$LAST_PID" "$target serving $ROUTES routes" 120 ready "$target"
    now_ms
    ms=$((NOW_MS - LAUNCHED_MS))
    TIMES[$b]+="$ms "
    log "$target: ready after $ms ms"
    # One registration change (a new books-ms instance; it need not answer): the requests the
    # proxy sends Consul for it, once everything has settled.
    before=$(settled_requests "$target")
    if [[ -n $before ]]; then
      instances=$(curl -sf --max-time 5 "${ADMIN[$target]}/metrics" | awk '$1 == "dfp_instances" { print $2 }')
      register_instance books-ms "books-extra" 9
      wait_for "${PID[$target]}" "$target routing the new instance" 60 instances_routed "$target" $((instances + 1))
      after=$(settled_requests "$target")
      CHANGE[$b]+="$((after - before)) "
      log "$target: $((after - before)) requests to Consul for one registration change"
      curl -sf --max-time 5 -X PUT "$CONSUL/v1/agent/service/deregister/books-extra" >/dev/null
    else
      CHANGE[$b]+="- "
    fi
    stop_tree "${PID[$target]}"
  done
done

echo "| binary | routes | ready after, each round (ms) | median (ms) | requests to Consul per registration change, each round |"
echo "|---|---:|---|---:|---|"
for b in "${!BINS[@]}"; do
  read -r -a t <<<"${TIMES[$b]}"
  median=$(printf '%s\n' "${t[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  echo "| ${BINS[$b]} | $ROUTES | ${t[*]} | $median | ${CHANGE[$b]} |"
done
