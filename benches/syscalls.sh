#!/usr/bin/env bash
# syscalls.sh: where a tunnel's CPU goes, ours beside HAProxy: per WebSocket message and per
# short TCP connection, the proxy's user and system time, its system calls by name and the
# TCP segments they cause.
#
# What it measures: the proxy pinned to core 0 (ours: --threads 1, standalone, whose plain
# WebSocket tunnels run on its thread dfp-tunnels-0; HAProxy 2.6: nbthread 1), dfp-load's echo
# servers and clients on core 1. Two loads, as in compare.sh's websocket and tcp scenarios:
# websocket (50 connections, 128-byte messages echoed one at a time per connection) and
# tcp-connect (20
# clients, each connection echoes 64 bytes and closes; ours a reqMode=tcp service on a
# srcPort, HAProxy `mode tcp`). Per round, proxy and load, after a warm-up of 2,000:
#   - a timed run of --messages (--connections): the proxy process's user and system time, all
#     its threads (/proc/PID/stat), and the host's TCP segments sent (nstat; all loopback);
#   - a counted run of the same size: the process's system calls by name (perf stat on the
#     syscalls:sys_enter_* tracepoints; a run of its own, so their cost is not in the times);
#   - with --profile, a third run of the same size under `perf record` (kernel and user
#     stacks, 999 samples a second): the share of the process's samples in user space and
#     under each system call, turned into µs per message (connection) with the timed run's CPU.
# Ours and HAProxy alternate within each round; medians over the rounds are reported.
#
# Run:     benches/syscalls.sh --bin target/release/docker-flow-proxy --load-bin target/release/dfp-load
# Options: --messages N (default 400000)  --connections N (default 100000)  --rounds N (default 3)
#          --profile (also where the kernel time goes, system call by system call)  --help
# Needs:   Linux, root (perf reads tracepoints); installs perf, haproxy, nstat (iproute2) and
#          curl with apt-get when missing.
# Output:  progress on stderr; a markdown report on stdout and in target/syscalls/<timestamp>/.
# Every process it starts is stopped when it ends, also on errors and Ctrl-C.

set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
readonly HERE REPO
readonly BENCH_NAME=syscalls
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$HERE/lib/common.sh"

readonly PROXY_CORE=0 LOAD_CORE=1 WARM_UP=2000
MESSAGES=400000
CONNECTIONS=100000
ROUNDS=3
PROFILE=0
BIN=""
LOAD_BIN=""

while (($#)); do
  case $1 in
    --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
    --load-bin) LOAD_BIN=${2:?--load-bin needs a path}; shift 2 ;;
    --messages) MESSAGES=${2:?--messages needs a number}; shift 2 ;;
    --connections) CONNECTIONS=${2:?--connections needs a number}; shift 2 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    --profile) PROFILE=1; shift ;;
    --help | -h) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -x $BIN ]] || die "--bin must name the docker-flow-proxy binary (cargo build --release -p docker-flow-proxy)"
[[ -x $LOAD_BIN ]] || die "--load-bin must name dfp-load (cargo build --release -p dfp-benches)"
for n in "$MESSAGES" "$CONNECTIONS" "$ROUNDS"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "--messages, --connections and --rounds take whole numbers above 0, not $n"
done
RUN="$REPO/target/syscalls/$(date -u +%Y%m%d-%H%M%S)"
LOGS="$RUN/logs"
mkdir -p "$LOGS"
set_traps
require_tools perf:linux-perf haproxy nstat:iproute2 curl taskset:util-linux
perf stat -e 'syscalls:sys_enter_sendto' true >/dev/null 2>&1 ||
  die "perf cannot read the syscalls tracepoints here (run as root)"
CLK_TCK=$(getconf CLK_TCK)
readonly RUN LOGS CLK_TCK

free_port WS_ECHO
free_port TCP_ECHO
start_pinned ws-echo "$LOAD_CORE" "$LOAD_BIN" ws-echo --listen "127.0.0.1:$WS_ECHO"
wait_for "$LAST_PID" "the WebSocket echo server listening" 10 listening "$WS_ECHO"
start_pinned tcp-echo "$LOAD_CORE" "$LOAD_BIN" tcp-echo --listen "127.0.0.1:$TCP_ECHO"
wait_for "$LAST_PID" "the TCP echo server listening" 10 listening "$TCP_ECHO"

# start_proxy TARGET LOAD: ours or HAProxy in front of LOAD's echo server; sets PROXY_PID (the
# process that carries the traffic: HAProxy's worker) and ADDR (where the load connects).
start_proxy() {
  local target=$1 load=$2 port admin
  free_port port
  if [[ $target == ours ]]; then
    free_port admin
    rm -f "$RUN/state.json"
    start_pinned "ours-$load" "$PROXY_CORE" "$BIN" server --listen "127.0.0.1:$port" \
      --admin-listen "127.0.0.1:$admin" --threads 1 --tls-listen off --state-file "$RUN/state.json"
    PROXY_PID=$LAST_PID
    wait_for "$PROXY_PID" "ours' admin API listening" 30 listening "$admin"
    local query
    if [[ $load == websocket ]]; then
      query="serviceName=127.0.0.1&servicePath=/ws&port=$WS_ECHO"
      ADDR="127.0.0.1:$port"
    else
      free_port ADDR_PORT
      query="serviceName=127.0.0.1&reqMode=tcp&srcPort=$ADDR_PORT&port=$TCP_ECHO"
      ADDR="127.0.0.1:$ADDR_PORT"
    fi
    curl -sf -o "$LOGS/reconfigure-$load.json" "http://127.0.0.1:$admin/v1/docker-flow-proxy/reconfigure?$query" ||
      die "ours refused the $load route (see $LOGS/reconfigure-$load.json)"
    wait_for "$PROXY_PID" "ours listening on $ADDR" 10 listening "${ADDR##*:}"
  else
    {
      printf 'global\n  nbthread 1\n  maxconn 5000\n  tune.bufsize 16384\n\n'
      printf 'defaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  timeout tunnel 1h\n\n'
      if [[ $load == websocket ]]; then
        printf 'frontend fe\n  mode http\n  bind 127.0.0.1:%s\n  default_backend be\n\n' "$port"
        printf 'backend be\n  mode http\n  server ws-1 127.0.0.1:%s\n' "$WS_ECHO"
      else
        printf 'frontend fe\n  mode tcp\n  bind 127.0.0.1:%s\n  default_backend be\n\n' "$port"
        printf 'backend be\n  mode tcp\n  server tcp-1 127.0.0.1:%s\n' "$TCP_ECHO"
      fi
    } >"$RUN/haproxy-$load.cfg"
    start_pinned "haproxy-$load" "$PROXY_CORE" haproxy -db -f "$RUN/haproxy-$load.cfg"
    PROXY_PID=$LAST_PID
    ADDR="127.0.0.1:$port"
    wait_for "$PROXY_PID" "HAProxy listening on $ADDR" 10 listening "$port"
    PROXY_PID=$(pgrep -P "$PROXY_PID" -x haproxy || echo "$PROXY_PID")
  fi
}

# load_run LOAD COUNT [WRAPPER...]: dfp-load's client for LOAD, COUNT messages (or
# connections), on ADDR; run under WRAPPER when given (perf, which counts while it runs).
load_run() {
  local load=$1 count=$2 out
  shift 2
  if [[ $load == websocket ]]; then
    out=$("$@" taskset -c "$LOAD_CORE" "$LOAD_BIN" websocket --addr "$ADDR" --path /ws \
      --connections 50 --duration 120 --size 128 --max "$count")
  else
    out=$("$@" taskset -c "$LOAD_CORE" "$LOAD_BIN" tcp-connect --addr "$ADDR" --connections 20 \
      --duration 120 --size 64 --max "$count")
  fi
  local done_count
  done_count=$(grep -o 'requests=[0-9]*' <<<"$out" | cut -d= -f2)
  [[ $done_count == "$count" ]] || die "dfp-load $load finished ${done_count:-none} of $count: $out"
  grep -qE ' (connect|read|write|status|timeout)=[1-9]' <<<"$out" && die "dfp-load $load saw errors: $out"
  return 0
}

process_ticks() { awk '{ print $14 + $15, $14 }' "/proc/$PROXY_PID/stat"; }
out_segments() { nstat -az TcpOutSegs | awk '$1 == "TcpOutSegs" { print $2 }'; }

# measure TARGET LOAD ROUND COUNT: one row of $RUN/rows.tsv: target load round, then per
# message (connection): total µs, user µs, TCP segments, system calls, and the calls by name.
measure() {
  local target=$1 load=$2 round=$3 count=$4
  start_proxy "$target" "$load"
  load_run "$load" "$WARM_UP"
  local before after seg_before seg_after
  read -r -a before < <(process_ticks)
  seg_before=$(out_segments)
  load_run "$load" "$count"
  read -r -a after < <(process_ticks)
  seg_after=$(out_segments)
  # perf counts the proxy's threads for as long as the load it runs takes.
  load_run "$load" "$count" perf stat -p "$PROXY_PID" -x, -e 'syscalls:sys_enter_*' \
    -o "$RUN/perf-$target-$load-$round.csv" --
  if ((PROFILE)); then
    load_run "$load" "$count" perf record -q -F 999 -g -p "$PROXY_PID" \
      -o "$RUN/profile-$target-$load-$round.data" --
  fi
  stop_tree "$PROXY_PID"
  local calls
  calls=$(awk -F, -v n="$count" '$1 ~ /^[0-9]+$/ && $1 > 0 {
      sub(/^syscalls:sys_enter_/, "", $3); total += $1; by[$3] = $1 }
    END { printf "%.2f", total / n; for (c in by) if (by[c] / n >= 0.01) printf " %s=%.2f", c, by[c] / n }' \
    "$RUN/perf-$target-$load-$round.csv")
  awk -v t="$target" -v l="$load" -v r="$round" -v n="$count" -v hz="$CLK_TCK" \
    -v d="$((after[0] - before[0]))" -v u="$((after[1] - before[1]))" \
    -v s="$((seg_after - seg_before))" -v c="$calls" \
    'BEGIN { printf "%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%s\n", t, l, r, d * 1e6 / hz / n, u * 1e6 / hz / n, s / n, c }' \
    >>"$RUN/rows.tsv"
  log "$target $load round $round: $(tail -1 "$RUN/rows.tsv" | cut -f4-)"
  if ((PROFILE)); then profile_row "$target" "$load" "$round"; fi
}

# profile_row TARGET LOAD ROUND: one row of $RUN/profile.tsv from the round's perf record:
# target load round, then µs per message (connection) in user space, under each system call
# (name=µs) and elsewhere in the kernel (interrupts, the scheduler outside a call), each share
# of the samples times the timed run's CPU (rows.tsv, column 4).
profile_row() {
  local target=$1 load=$2 round=$3 data cpu user calls
  data="$RUN/profile-$target-$load-$round.data"
  cpu=$(tail -1 "$RUN/rows.tsv" | cut -f4)
  user=$(perf report -i "$data" --no-children --sort dso --stdio 2>/dev/null |
    awk '$1 ~ /%$/ && $2 != "[kernel.kallsyms]" { sub(/%/, "", $1); s += $1 } END { printf "%.2f", s }')
  # With --children, a call's line counts every sample under it (its first column).
  calls=$(perf report -i "$data" --children --sort sym -g none --stdio 2>/dev/null |
    awk -v cpu="$cpu" -v user="$user" '$1 ~ /%$/ && $4 ~ /^__x64_sys_/ {
        sub(/%/, "", $1); name = $4; sub(/^__x64_sys_/, "", name); share[name] = $1; in_calls += $1 }
      END { printf "%.2f", cpu * user / 100
        for (c in share) if (cpu * share[c] / 100 >= 0.05) printf " %s=%.2f", c, cpu * share[c] / 100
        printf " other-kernel=%.2f", cpu * (100 - user - in_calls) / 100 }')
  printf '%s\t%s\t%s\t%s\n' "$target" "$load" "$round" "$calls" >>"$RUN/profile.tsv"
  log "$target $load round $round, µs by where: user $calls"
}

# The report's awk programs share these: sorted(a, n) sorts a[1..n] as numbers, middle(a, n)
# is the median of a sorted a[1..n], median(list) that of a space-separated list.
readonly AWK_MEDIANS='
  function sorted(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t } }
  function middle(a, n) { return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function median(list,   a, n) { n = split(list, a, " "); sorted(a, n); return middle(a, n) }
'

: >"$RUN/rows.tsv"
: >"$RUN/profile.tsv"
for ((round = 1; round <= ROUNDS; round++)); do
  for load in websocket tcp-connect; do
    count=$MESSAGES
    [[ $load == tcp-connect ]] && count=$CONNECTIONS
    for target in ours haproxy; do measure "$target" "$load" "$round" "$count"; done
  done
done

{
  echo "# Where a tunnel's CPU goes: ours beside HAProxy"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "- $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo); kernel $(uname -r); $(haproxy -v | head -1)"
  echo "- $ROUNDS rounds; websocket: $MESSAGES messages of 128 bytes over 50 connections; tcp-connect: $CONNECTIONS connections of 64 bytes, 20 at a time"
  echo "- per message (websocket) or per connection (tcp-connect); CPU of the proxy's process, all threads; segments: every TCP segment sent on the host (the load's and the echo server's too)"
  echo
  echo "| load | proxy | round | CPU µs | of it user µs | TCP segments | system calls | by name (≥ 0.01) |"
  echo "|---|---|---:|---:|---:|---:|---:|---|"
  sort -t$'\t' -k2,2 -k1,1r -k3,3n "$RUN/rows.tsv" |
    awk -F'\t' '{ split($7, c, " "); names = ""; for (i = 2; i in c; i++) names = names " " c[i];
      printf "| %s | %s | %s | %s | %s | %s | %s |%s |\n", $2, $1, $3, $4, $5, $6, c[1], names }'
  echo
  echo "Ours ÷ HAProxy, paired by round: median (min–max)"
  echo
  for load in websocket tcp-connect; do
    awk -F'\t' -v l="$load" "$AWK_MEDIANS"'
      function summary(a, n) { sorted(a, n); return sprintf("%.3f (%.3f–%.3f)", middle(a, n), a[1], a[n]) }
      $2 == l { split($7, c, " "); v[$1, $3, "cpu"] = $4; v[$1, $3, "user"] = $5; v[$1, $3, "sys"] = $4 - $5; v[$1, $3, "calls"] = c[1]; if ($3 > rounds) rounds = $3 }
      END {
        split("cpu user sys calls", what, " ")
        for (w = 1; w <= 4; w++) { n = 0
          for (r = 1; r <= rounds; r++) if (v["haproxy", r, what[w]] > 0) ratio[w, ++n] = v["ours", r, what[w]] / v["haproxy", r, what[w]]
          for (i = 1; i <= n; i++) a[i] = ratio[w, i]
          out[w] = summary(a, n) }
        printf "- %s: CPU **%s**; user %s; system %s; system calls %s\n", l, out[1], out[2], out[3], out[4] }' \
      "$RUN/rows.tsv"
  done
  if ((PROFILE)); then
    echo
    echo "Where the CPU goes (perf record of the proxy's process; each share of its samples times the"
    echo "timed run's CPU), µs per message or connection, median over the rounds:"
    echo
    echo "| load | proxy | user space | under each system call (≥ 0.05 µs) | elsewhere in the kernel |"
    echo "|---|---|---:|---|---:|"
    awk -F'\t' "$AWK_MEDIANS"'
      { key = $2 "\t" $1; keys[key] = 1; n = split($4, f, " "); v[key, "user"] = v[key, "user"] " " f[1]
        for (i = 2; i <= n; i++) { split(f[i], kv, "="); if (kv[1] != "other-kernel") names[key, kv[1]] = 1
          v[key, kv[1]] = v[key, kv[1]] " " kv[2] } }
      END { for (key in keys) { split(key, k, "\t"); n = 0
          # The calls, largest first.
          for (nk in names) { split(nk, p, SUBSEP); if (p[1] != key) continue
            m = median(v[key, p[2]]); for (i = ++n; i > 1 && us[i - 1] < m; i--) { us[i] = us[i - 1]; nm[i] = nm[i - 1] }
            us[i] = m; nm[i] = p[2] }
          calls = ""; for (i = 1; i <= n; i++) calls = calls sprintf("%s%s %.2f", i > 1 ? ", " : "", nm[i], us[i])
          printf "| %s | %s | %.2f | %s | %.2f |\n", k[1], k[2], median(v[key, "user"]), calls, median(v[key, "other-kernel"]) } }' \
      "$RUN/profile.tsv" | sort
  fi
} | tee "$RUN/report.md"
log "report: $RUN/report.md"
