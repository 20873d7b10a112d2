#!/usr/bin/env bash
# reconfigure-rate.sh: what reconfigure calls cost as the table grows (issue "control plane at
# scale", point 3: 10,000 calls, one per service, 16 at a time, in <= 15 s against a real
# Consul, KV write included; one reconfigure at 10,000 routes in <= 5 ms p50 plus Consul's
# write time).
#
# What it measures: N services are registered in Consul (books-ms and svc-<i>, one instance
# each). Each binary given starts with an empty store (its own instance name) and is sent one
# reconfigure per service (svc-<i> on /api/v<i%7>/svc-<i>), 16 at a time (curl --parallel),
# the way Docker Flow Swarm Listener configures a cluster at start. Reported: the whole run's
# time and calls per second, the median call time of the first 160 calls (a table of at most
# 160 routes) and of the last 1,600 (over 8,400 routes at N = 10,000; a tenth and 16% of N
# for smaller N). Then, at N routes, 50
# single calls one after another that change one service (a new addResHeader each time, so
# each is stored and published): their median, beside the median of 50 plain Consul KV writes
# of the same size (Consul's own write time, which every call includes).
#
# Run:     benches/reconfigure-rate.sh --bin target/release/docker-flow-proxy [--bin OTHER ...]
# Options: --routes N (default 10000)  --rounds N (default 1)  --help
# Needs:   Linux, `consul` (../shared/bin/install-consul puts one on PATH), curl >= 7.66.
# Output:  progress on stderr; a markdown table on stdout (a row per binary and round).
# Every process it starts is stopped when it ends, also on errors and Ctrl-C.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
readonly HERE REPO
readonly BENCH_NAME=reconfigure-rate
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$HERE/lib/common.sh"

ROUTES=10000
ROUNDS=1
CONSUL_CONNS=1000
parse_binaries_args 21 "$@"
((ROUTES >= 10)) || die "--routes must be at least 10"
# The first and last calls compared: 160 and 1,600 at 10,000 routes, fewer for small tables.
FIRST=$((ROUTES / 10 < 160 ? ROUTES / 10 : 160))
LAST=$((ROUTES * 16 / 100 < 1600 ? ROUTES * 16 / 100 : 1600))
((FIRST >= 1)) || FIRST=1
((LAST >= 1)) || LAST=1

RUN=$(mktemp -d /tmp/reconfigure-rate.XXXXXX)
LOGS=$RUN
set_traps
require_tools curl
ensure_consul
start_consul_agent ""
register_instance books-ms books-1 9
log "registering $((ROUTES - 1)) services in Consul (one instance each)"
register_services 1 $((ROUTES - 1))

# median: the median of the numbers on stdin.
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# calls ADMIN FIRST LAST: a curl config with one reconfigure per service svc-FIRST..svc-LAST,
# each writing "<ms> <status>" (time from start to the whole answer).
calls() {
  local admin=$1 first=$2 last=$3 i
  for ((i = first; i <= last; i++)); do
    ((i == first)) || echo next
    printf 'url = "%s/v1/docker-flow-proxy/reconfigure?serviceName=svc-%d&servicePath=/api/v%d/svc-%d"\n' \
      "$admin" "$i" "$((i % 7))" "$i"
    printf 'output = "/dev/null"\nwrite-out = "%%{time_total} %%{http_code}\\n"\nmax-time = 30\n'
  done
}

echo "| binary | round | routes | all calls, 16 at a time (s) | calls/s | median call, first $FIRST (ms) | median call, last $LAST (ms) | one call at $ROUTES routes, median of 50 (ms) | Consul KV write, median of 50 (ms) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for ((round = 1; round <= ROUNDS; round++)); do
  for b in "${!BINS[@]}"; do
    BIN=${BINS[$b]}
    target="bin$b-r$round"
    instance="dfp-rate-$b-$round"
    launch_ours "$target" "" "$instance" 60 -- --tls-listen off
    admin=${ADMIN[$target]}
    curl -sf --max-time 10 "$admin/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books" >/dev/null ||
      die "$target: the first reconfigure failed"
    calls "$admin" 1 $((ROUTES - 1)) >"$RUN/calls.curl"
    log "$target: $((ROUTES - 1)) reconfigure calls, 16 at a time"
    now_ms
    started=$NOW_MS
    curl -s --no-progress-meter --parallel --parallel-max 16 -K "$RUN/calls.curl" >"$RUN/answers-$target" || true
    now_ms
    took=$((NOW_MS - started))
    ok=$(awk '$2 == 200' "$RUN/answers-$target" | wc -l)
    ((ok == ROUTES - 1)) || die "$target: $ok of $((ROUTES - 1)) calls answered 200 (see $RUN/answers-$target)"
    services_routed "$target" "$ROUTES" || die "$target does not route $ROUTES services"
    # Answers are written as they complete: the first lines are the first calls.
    first=$(head -n "$FIRST" "$RUN/answers-$target" | awk '{ printf "%.2f\n", $1 * 1000 }' | median)
    last=$(tail -n "$LAST" "$RUN/answers-$target" | awk '{ printf "%.2f\n", $1 * 1000 }' | median)
    # One call at a time at full size: each changes svc-1 (stored and published).
    single=$(for ((i = 0; i < 50; i++)); do
      curl -s -o /dev/null -w '%{time_total}\n' --max-time 10 \
        "$admin/v1/docker-flow-proxy/reconfigure?serviceName=svc-1&servicePath=/api/v1/svc-1&addResHeader=X-Round%20$round-$i"
    done | awk '{ printf "%.2f\n", $1 * 1000 }' | median)
    kv=$(for ((i = 0; i < 50; i++)); do
      curl -s -o /dev/null -w '%{time_total}\n' --max-time 10 -X PUT \
        -d "{\"serviceName\":\"svc-1\",\"servicePath\":\"/api/v1/svc-1\",\"addResHeader\":\"X-Round $i\"}" \
        "$CONSUL/v1/kv/dfp-rate-kv/services/svc-1"
    done | awk '{ printf "%.2f\n", $1 * 1000 }' | median)
    rate=$(awk -v n=$((ROUTES - 1)) -v ms="$took" 'BEGIN { printf "%.0f", n * 1000 / ms }')
    seconds=$(awk -v ms="$took" 'BEGIN { printf "%.2f", ms / 1000 }')
    log "$target: $seconds s, $rate calls/s; median $first ms (first $FIRST), $last ms (last $LAST); single $single ms, KV $kv ms"
    echo "| $BIN | $round | $ROUTES | $seconds | $rate | $first | $last | $single | $kv |"
    stop_tree "${PID[$target]}"
  done
done
