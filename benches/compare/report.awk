# report.awk: turns compare.sh's results.tsv into the markdown tables of BENCHMARKS.md.
#
# Input (tab-separated), one line per wrk run:
#   scenario mode round target req/s p50_us p99_us errors cpu_us_per_request requests extra
#   core0_us_per_request core0_busy_% core1_busy_% user_us_per_request
# Every figure is "median (min–max)" over the rounds. A ratio is taken between two runs of the
# same round and then summarised the same way, so a claim holds only when its min–max range
# stays on one side of the threshold. Variables: many (the large route count), instructions and
# warmup (below), and for the request classes (scenario "classes", the class as the mode):
# conns, handshake_connections, h2_clients, h2_streams, ws_bytes (the load of each) and
# negotiated (what the handshake client's connections negotiated); for scenario tcp (modes
# tcp-stream, where a request is one echoed chunk, and tcp-connect, where it is a connection):
# tcp_chunk, tcp_streams, tcp_clients, tcp_connect_bytes; for scenario queue: queue_cap and
# queue_conns. Plain awk (mawk).
#
# A second input, named by the variable instructions (compare.sh's instructions.tsv), holds the
# counts of the instructions scenario, one line per proxy and kind:
#   instructions target requests failed connections Ir
#   syscalls target requests failed connections name=calls...
# (warmup: the uncounted requests sent before).

function keep(key, value) {
  if (value == "-" || value == "") return
  count[key]++
  values[key, count[key]] = value + 0
}

# Sorts values[key, 1..n] into sorted[1..n]; returns n.
function sort_key(key,   n, i, j, t) {
  n = count[key] + 0
  for (i = 1; i <= n; i++) sorted[i] = values[key, i]
  for (i = 2; i <= n; i++) {
    t = sorted[i]
    for (j = i - 1; j >= 1 && sorted[j] > t; j--) sorted[j + 1] = sorted[j]
    sorted[j + 1] = t
  }
  return n
}

function median(key,   n) {
  n = sort_key(key)
  if (n == 0) return ""
  return n % 2 ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
}

# "median (min–max)" with printf format fmt, divided by scale; "–" without values.
function summary(key, fmt, scale,   n, m) {
  n = sort_key(key)
  if (n == 0) return "–"
  m = n % 2 ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
  if (n == 1) return sprintf(fmt, m / scale)
  return sprintf(fmt " (" fmt "–" fmt ")", m / scale, sorted[1] / scale, sorted[n] / scale)
}

function lowest(key) { return sort_key(key) ? sorted[1] : "" }
function highest(key,   n) { n = sort_key(key); return n ? sorted[n] : "" }

# Records the per-round ratio metric(a) / metric(b) for every round that has both.
function pair(scenario, mode_a, a, mode_b, b, metric, into,   r, x, y) {
  for (r = 1; r <= max_round; r++) {
    x = at[scenario, mode_a, a, r, metric]
    y = at[scenario, mode_b, b, r, metric]
    if (x != "" && x != "-" && y != "" && y != "-" && y + 0 > 0) keep(into, x / y)
  }
}

# A target of the issue: are all the paired ratios on the right side of the threshold?
function verdict(key, op, threshold,   m, lo, hi) {
  m = median(key)
  if (m == "") return "not measured"
  lo = lowest(key); hi = highest(key)
  if (op == "<=" ? hi <= threshold : lo >= threshold) return "met (every round)"
  if (op == "<=" ? lo > threshold : hi < threshold) return "not met (every round)"
  return "unclear: rounds on both sides (median " ((op == "<=" ? m <= threshold : m >= threshold) ? "meets it)" : "misses it)")
}

# The request classes, in the order compare.sh runs them, and what each measures.
function class_label(c) {
  if (c == "https") return "HTTPS keep-alive, HTTP/1.1 (wrk, " conns " connections)"
  if (c == "handshake") return "new TLS connection per request, full handshake (" handshake_connections " connections; per request = per handshake)"
  if (c == "h2") return "HTTP/2 over TLS (h2load -c" h2_clients " -m" h2_streams ")"
  if (c == "post-1k") return "POST, 1 KiB body (wrk, " conns " connections)"
  if (c == "post-64k") return "POST, 64 KiB body (wrk, " conns " connections)"
  if (c == "options") return "service with options: request header set, response header added, regex path rewrite (wrk, " conns " connections)"
  if (c == "websocket") return "WebSocket echo, " ws_bytes "-byte messages (" conns " connections; per request = per message)"
  return c
}

function target_name(t) {
  if (t == "ours") return "docker-flow-proxy"
  if (t == "haproxy") return "HAProxy"
  if (t == "nginx") return "nginx (proxy)"
  if (t == "direct") return "direct to upstream (ceiling)"
  return t
}

FILENAME == instructions {
  t = $2; kind = $1
  counted[t, kind] = $3; failed[t, kind] = $4; connections[t, kind] = $5
  if (kind == "instructions") ir[t] = $6
  if (kind == "syscalls") {
    sys_count[t] = 0; sys_total[t] = 0
    for (i = 6; i <= NF; i++) {
      split($i, kv, "=")
      sys_name[t, ++sys_count[t]] = kv[1]; sys_calls[t, sys_count[t]] = kv[2]; sys_total[t] += kv[2]
    }
  }
  next
}

{
  scenario = $1; mode = $2; round = $3 + 0; target = $4
  if (round > max_round) max_round = round
  base = scenario SUBSEP mode SUBSEP target
  if (!(base in seen)) { seen[base] = 1; order[scenario, mode, ++targets[scenario, mode]] = target }
  keep(base SUBSEP "rps", $5); keep(base SUBSEP "p50", $6); keep(base SUBSEP "p99", $7)
  keep(base SUBSEP "cpu", $9); keep(base SUBSEP "core", $12)
  keep(base SUBSEP "busy0", $13); keep(base SUBSEP "busy1", $14); keep(base SUBSEP "user", $15)
  errors[base] += $8; runs[base]++
  if (scenario == "class-churn" && !(("cc" SUBSEP mode) in seen)) { seen["cc" SUBSEP mode] = 1; class_churn_mode[++class_churn_modes] = mode }
  at[scenario, mode, target, round, "rps"] = $5
  at[scenario, mode, target, round, "p99"] = $7
  at[scenario, mode, target, round, "cpu"] = $9
  at[scenario, mode, target, round, "core"] = $12
  at[scenario, mode, target, round, "user"] = $15
  at[scenario, mode, target, round, "errors"] = $8
  if ($11 != "-" && split($11, c, "/") == 2) { applied[base] += c[1]; attempted[base] += c[2] }
}

function compare_table(mode, title,   i, t, base, against) {
  if (!targets["compare", mode]) return
  print "### " title
  print ""
  print "| target | req/s | p50 ms | p99 ms | errors | proxy CPU µs/request | of which user space | core 0 busy µs/request | cores 0 / 1 busy % | req/s ÷ HAProxy | CPU/request ÷ HAProxy | core 0 ÷ HAProxy | p99 ÷ HAProxy |"
  print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for (i = 1; i <= targets["compare", mode]; i++) {
    t = order["compare", mode, i]
    base = "compare" SUBSEP mode SUBSEP t
    against = "ratio" SUBSEP mode SUBSEP t
    if (t != "haproxy") {
      pair("compare", mode, t, mode, "haproxy", "rps", against SUBSEP "rps")
      pair("compare", mode, t, mode, "haproxy", "cpu", against SUBSEP "cpu")
      pair("compare", mode, t, mode, "haproxy", "p99", against SUBSEP "p99")
      pair("compare", mode, t, mode, "haproxy", "core", against SUBSEP "core")
    }
    printf "| %s | %s | %s | %s | %d | %s | %s | %s | %s / %s | %s | %s | %s | %s |\n", target_name(t),
      summary(base SUBSEP "rps", "%.0f", 1), summary(base SUBSEP "p50", "%.2f", 1000),
      summary(base SUBSEP "p99", "%.2f", 1000), errors[base], summary(base SUBSEP "cpu", "%.1f", 1),
      summary(base SUBSEP "user", "%.1f", 1),
      summary(base SUBSEP "core", "%.1f", 1),
      median(base SUBSEP "busy0") == "" ? "–" : sprintf("%.0f", median(base SUBSEP "busy0")),
      median(base SUBSEP "busy1") == "" ? "–" : sprintf("%.0f", median(base SUBSEP "busy1")),
      t == "haproxy" ? "1" : summary(against SUBSEP "rps", "%.2f", 1),
      t == "haproxy" ? "1" : summary(against SUBSEP "cpu", "%.2f", 1),
      t == "haproxy" ? "1" : summary(against SUBSEP "core", "%.2f", 1),
      t == "haproxy" ? "1" : summary(against SUBSEP "p99", "%.2f", 1)
  }
  print ""
}

function classes_tables(   all, n, i, j, c, t, base, against, proxies, full, resumed, key) {
  n = split("https handshake h2 post-1k post-64k options websocket", all, " ")
  for (i = 1; i <= n; i++) if (targets["classes", all[i]]) break
  if (i > n) return
  split("ours haproxy nginx", proxies, " ")
  for (i = 1; i <= n; i++) {
    c = all[i]
    for (j = 1; j <= 3; j++) {
      t = proxies[j]
      if (t == "haproxy") continue
      against = "cratio" SUBSEP c SUBSEP t
      pair("classes", c, t, c, "haproxy", "rps", against SUBSEP "rps")
      pair("classes", c, t, c, "haproxy", "cpu", against SUBSEP "cpu")
      pair("classes", c, t, c, "haproxy", "p99", against SUBSEP "p99")
    }
  }
  print "### Request classes: ours and nginx over HAProxy"
  print ""
  print "| class | HAProxy CPU µs/request | CPU/request: ours ÷ HAProxy | CPU/request: nginx ÷ HAProxy | HAProxy req/s | req/s: ours ÷ HAProxy | req/s: nginx ÷ HAProxy |"
  print "|---|---:|---:|---:|---:|---:|---:|"
  for (i = 1; i <= n; i++) {
    c = all[i]
    if (!targets["classes", c]) continue
    base = "classes" SUBSEP c SUBSEP "haproxy"
    printf "| %s | %s | %s | %s | %s | %s | %s |\n", class_label(c), summary(base SUBSEP "cpu", "%.1f", 1),
      summary("cratio" SUBSEP c SUBSEP "ours" SUBSEP "cpu", "%.2f", 1),
      summary("cratio" SUBSEP c SUBSEP "nginx" SUBSEP "cpu", "%.2f", 1),
      summary(base SUBSEP "rps", "%.0f", 1),
      summary("cratio" SUBSEP c SUBSEP "ours" SUBSEP "rps", "%.2f", 1),
      summary("cratio" SUBSEP c SUBSEP "nginx" SUBSEP "rps", "%.2f", 1)
  }
  print ""
  print "### Request classes: every run"
  print ""
  print "| class | target | req/s | p50 ms | p99 ms | errors | proxy CPU µs/request | of which user space | cores 0 / 1 busy % | req/s ÷ HAProxy | CPU/request ÷ HAProxy | p99 ÷ HAProxy |"
  print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for (i = 1; i <= n; i++) {
    c = all[i]
    if (!targets["classes", c]) continue
    for (j = 1; j <= 3; j++) {
      t = proxies[j]
      base = "classes" SUBSEP c SUBSEP t
      if (!runs[base]) continue
      against = "cratio" SUBSEP c SUBSEP t
      printf "| %s | %s | %s | %s | %s | %d | %s | %s | %s / %s | %s | %s | %s |\n", c, target_name(t),
        summary(base SUBSEP "rps", "%.0f", 1), summary(base SUBSEP "p50", "%.2f", 1000),
        summary(base SUBSEP "p99", "%.2f", 1000), errors[base], summary(base SUBSEP "cpu", "%.1f", 1),
        summary(base SUBSEP "user", "%.1f", 1),
        median(base SUBSEP "busy0") == "" ? "–" : sprintf("%.0f", median(base SUBSEP "busy0")),
        median(base SUBSEP "busy1") == "" ? "–" : sprintf("%.0f", median(base SUBSEP "busy1")),
        t == "haproxy" ? "1" : summary(against SUBSEP "rps", "%.2f", 1),
        t == "haproxy" ? "1" : summary(against SUBSEP "cpu", "%.2f", 1),
        t == "haproxy" ? "1" : summary(against SUBSEP "p99", "%.2f", 1)
    }
  }
  print ""
  if (targets["classes", "handshake"]) {
    full = ""
    for (j = 1; j <= 3; j++) {
      key = "classes" SUBSEP "handshake" SUBSEP proxies[j]
      if (!runs[key]) continue
      full = full (full == "" ? "" : "; ") target_name(proxies[j]) " " applied[key] " full, " (attempted[key] + 0) " resumed"
    }
    print "Handshakes, counted by the client (rustls's handshake kind of each connection, all rounds): " full "."
    if (negotiated != "") print "Negotiated (protocol/suite/group): " negotiated "."
    print ""
  }
  print "p50/p99 of h2 are \"–\": h2load reports no percentiles. Errors: the client's socket errors and"
  print "timeouts plus answers ≥ 400 (h2load: its failed requests plus answers ≥ 400), all rounds."
  print ""
}

function routes_table(   proxies, i, t, few, lots) {
  if (!targets["routes", "closed"]) return
  print "### Routes: closed loop with 10 and " many " routes"
  print ""
  print "| target | routes | req/s | p99 ms | errors | proxy CPU µs/request | req/s at " many " ÷ at 10 (paired) |"
  print "|---|---:|---:|---:|---:|---:|---:|"
  split("ours haproxy", proxies, " ")
  for (i = 1; i <= 2; i++) {
    t = proxies[i]
    few = "routes" SUBSEP "closed" SUBSEP t "-10"
    lots = "routes" SUBSEP "closed" SUBSEP t "-" many
    pair("routes", "closed", t "-" many, "closed", t "-10", "rps", "scale" SUBSEP t)
    printf "| %s | 10 | %s | %s | %d | %s | |\n", target_name(t), summary(few SUBSEP "rps", "%.0f", 1),
      summary(few SUBSEP "p99", "%.2f", 1000), errors[few], summary(few SUBSEP "cpu", "%.1f", 1)
    printf "| %s | %s | %s | %s | %d | %s | %s |\n", target_name(t), many,
      summary(lots SUBSEP "rps", "%.0f", 1), summary(lots SUBSEP "p99", "%.2f", 1000), errors[lots],
      summary(lots SUBSEP "cpu", "%.1f", 1), summary("scale" SUBSEP t, "%.3f", 1)
  }
  print ""
}

function churn_table(   proxies, i, t, quiet, busy) {
  if (!targets["churn", "quiet"]) return
  print "### Churn: closed loop while the routes change every 100 ms"
  print ""
  print "| target | how it changes | changes done | quiet req/s | req/s under churn | under churn ÷ quiet (paired) | failed requests quiet / under churn (all rounds) | proxy CPU µs/request quiet / under churn |"
  print "|---|---|---:|---:|---:|---:|---:|---:|"
  split("ours-churn haproxy-churn", proxies, " ")
  for (i = 1; i <= 2; i++) {
    t = proxies[i]
    quiet = "churn" SUBSEP "quiet" SUBSEP t
    busy = "churn" SUBSEP "busy" SUBSEP t
    pair("churn", "busy", t, "quiet", t, "rps", "churn" SUBSEP t)
    printf "| %s | %s | %d/%d | %s | %s | %s | %d / %d | %s / %s |\n",
      t == "ours-churn" ? "docker-flow-proxy" : "HAProxy (master-worker)",
      t == "ours-churn" ? "admin reconfigure (table swap)" : "`kill -USR2` reload",
      applied[busy], attempted[busy], summary(quiet SUBSEP "rps", "%.0f", 1),
      summary(busy SUBSEP "rps", "%.0f", 1), summary("churn" SUBSEP t, "%.3f", 1),
      errors[quiet], errors[busy], summary(quiet SUBSEP "cpu", "%.1f", 1), summary(busy SUBSEP "cpu", "%.1f", 1)
  }
  print ""
}

# Per request: instructions (kind "instructions") or syscalls ("syscalls") of target t; "" if
# not measured.
function per_request(t, kind) {
  if (!((t, kind) in counted) || counted[t, kind] == 0) return ""
  return (kind == "instructions" ? ir[t] : sys_total[t]) / counted[t, kind]
}

# Ours over HAProxy, per request; "" if either is missing.
function instr_ratio(kind,   a, b) {
  a = per_request("ours", kind); b = per_request("haproxy", kind)
  return (a == "" || b == "" || b == 0) ? "" : a / b
}

# A per-request count of syscalls: two decimals, "<0.01" for rare calls that happened.
function calls_per_request(calls, requests) {
  return (calls > 0 && calls / requests < 0.01) ? "<0.01" : sprintf("%.2f", calls / requests)
}

# The four most frequent syscalls of target t and the rest, per request.
function top_syscalls(t,   n, i, j, best, used, out, rest) {
  n = sys_count[t]; out = ""; rest = sys_total[t]
  for (i = 1; i <= 4 && i <= n; i++) {
    best = 0
    for (j = 1; j <= n; j++) if (!(j in used) && (best == 0 || sys_calls[t, j] + 0 > sys_calls[t, best] + 0)) best = j
    used[best] = 1; rest -= sys_calls[t, best]
    out = out (out == "" ? "" : ", ") sys_name[t, best] " " calls_per_request(sys_calls[t, best], counted[t, "syscalls"])
  }
  if (n > 4) out = out ", other " calls_per_request(rest, counted[t, "syscalls"])
  return out == "" ? "–" : out
}

function instructions_table(   proxies, i, t, r, s) {
  if (per_request("ours", "instructions") == "" && per_request("haproxy", "instructions") == "" &&
      per_request("ours", "syscalls") == "" && per_request("haproxy", "syscalls") == "") return
  print "### Instructions and system calls per request (10 routes, fixed request count)"
  print ""
  print "| target | user-space instructions/request | ÷ HAProxy | syscalls/request | ÷ HAProxy | most frequent syscalls (per request) | failed requests (callgrind / strace run) |"
  print "|---|---:|---:|---:|---:|---|---:|"
  split("ours haproxy", proxies, " ")
  for (i = 1; i <= 2; i++) {
    t = proxies[i]
    r = instr_ratio("instructions"); s = instr_ratio("syscalls")
    printf "| %s | %s | %s | %s | %s | %s | %s / %s |\n", target_name(t),
      per_request(t, "instructions") == "" ? "–" : sprintf("%.0f", per_request(t, "instructions")),
      t == "haproxy" ? "1" : (r == "" ? "–" : sprintf("%.3f", r)),
      per_request(t, "syscalls") == "" ? "–" : sprintf("%.2f", per_request(t, "syscalls")),
      t == "haproxy" ? "1" : (s == "" ? "–" : sprintf("%.3f", s)),
      top_syscalls(t),
      ((t, "instructions") in failed) ? failed[t, "instructions"] : "–",
      ((t, "syscalls") in failed) ? failed[t, "syscalls"] : "–"
  }
  print ""
  t = ((("ours", "instructions") in counted) ? "ours" : "haproxy")
  printf "Each proxy (one worker thread) got %d requests over %d keep-alive connections (curl, one request at a\n", counted[t, "instructions"], connections[t, "instructions"]
  printf "time on each) after %d uncounted warm-up ones. Instructions: callgrind's Ir, summed over all the\n", warmup
  print "proxy's threads, user space only (the kernel's share shows in the syscalls); startup and warm-up"
  print "ran uninstrumented. Syscalls: a second run of the proxy without valgrind, `strace -c -f` attached"
  print "to all its threads for the same number of requests. One run each: these are counts, not times."
  print ""
}

# The verdict on a one-run count: ours over HAProxy against the threshold.
function count_verdict(kind, threshold,   r, f) {
  r = instr_ratio(kind)
  if (r == "") return "not measured"
  f = failed["ours", kind] + failed["haproxy", kind]
  if (f > 0) return "unclear: " f " failed requests"
  return r <= threshold ? "met" : "not met"
}

function targets_table(   k) {
  print "### The issue's targets"
  print ""
  print "| target | measured (median, min–max of the paired ratio) | verdict |"
  print "|---|---:|---|"
  k = "ratio" SUBSEP "paced" SUBSEP "ours" SUBSEP "cpu"
  printf "| proxy CPU/request at paced load ≤ 0.9× HAProxy's | %s | %s |\n", summary(k, "%.2f", 1), verdict(k, "<=", 0.9)
  k = "ratio" SUBSEP "closed" SUBSEP "ours" SUBSEP "rps"
  printf "| closed-loop req/s ≥ 1.05× HAProxy's | %s | %s |\n", summary(k, "%.2f", 1), verdict(k, ">=", 1.05)
  k = "ratio" SUBSEP "closed" SUBSEP "ours" SUBSEP "p99"
  printf "| closed-loop p99 ≤ HAProxy's | %s | %s |\n", summary(k, "%.2f", 1), verdict(k, "<=", 1.0)
  k = "ratio" SUBSEP "paced" SUBSEP "ours" SUBSEP "p99"
  printf "| paced p99 ≤ HAProxy's | %s | %s |\n", summary(k, "%.2f", 1), verdict(k, "<=", 1.0)
  k = "scale" SUBSEP "ours"
  printf "| req/s at %s routes ≥ 0.95× at 10 routes | %s | %s |\n", many, summary(k, "%.3f", 1), verdict(k, ">=", 0.95)
  k = "churn" SUBSEP "ours-churn"
  if (count[k]) {
    printf "| under churn: 0 failed requests | %d failed | %s |\n", errors["churn" SUBSEP "busy" SUBSEP "ours-churn"],
      errors["churn" SUBSEP "busy" SUBSEP "ours-churn"] == 0 ? "met" : "not met"
  } else {
    print "| under churn: 0 failed requests | – | not measured |"
  }
  printf "| under churn: req/s ≥ 0.95× quiet | %s | %s |\n", summary(k, "%.3f", 1), verdict(k, ">=", 0.95)
  k = instr_ratio("instructions")
  printf "| user-space instructions/request ≤ 0.7× HAProxy's | %s | %s |\n", k == "" ? "–" : sprintf("%.3f", k),
    count_verdict("instructions", 0.7)
  k = instr_ratio("syscalls")
  printf "| syscalls/request ≤ HAProxy's | %s | %s |\n", k == "" ? "–" : sprintf("%.3f", k), count_verdict("syscalls", 1.0)
  print ""
}

# class-churn: every class on ours, quiet and under a reconfigure every 100 ms.
function class_churn_table(   i, c, quiet, busy, key) {
  if (!class_churn_modes) return
  print "### Request classes under churn: ours, quiet and with a reconfigure every 100 ms"
  print ""
  print "| class | changes done | quiet req/s | req/s under churn | under churn ÷ quiet (paired) | target ≥ 0.95 | failed requests quiet / under churn (all rounds) | proxy CPU µs/request quiet / under churn |"
  print "|---|---:|---:|---:|---:|---|---:|---:|"
  for (i = 1; i <= class_churn_modes; i++) {
    c = class_churn_mode[i]
    quiet = "class-churn" SUBSEP c SUBSEP "ours"
    busy = "class-churn" SUBSEP c SUBSEP "ours-busy"
    key = "class-churn-ratio" SUBSEP c
    pair("class-churn", c, "ours-busy", c, "ours", "rps", key)
    printf "| %s | %d/%d | %s | %s | %s | %s | %d / %d | %s / %s |\n", class_label(c),
      applied[busy], attempted[busy], summary(quiet SUBSEP "rps", "%.0f", 1),
      summary(busy SUBSEP "rps", "%.0f", 1), summary(key, "%.3f", 1), verdict(key, ">=", 0.95),
      errors[quiet], errors[busy], summary(quiet SUBSEP "cpu", "%.1f", 1), summary(busy SUBSEP "cpu", "%.1f", 1)
  }
  print ""
}

# tcp: TCP services beside HAProxy's mode tcp. tcp-stream's "requests" are echoed chunks of
# tcp_chunk bytes (reported per GiB echoed: bytes the client sent and read back), tcp-connect's
# are connections.
function tcp_table(   t, proxies, i, base, gib, k) {
  if (!targets["tcp", "tcp-stream"] && !targets["tcp", "tcp-connect"]) return
  gib = 1073741824 / tcp_chunk
  split("ours haproxy", proxies, " ")
  for (i = 1; i <= 2; i++) {
    t = proxies[i]
    pair("tcp", "tcp-stream", t, "tcp-stream", "haproxy", "cpu", "tratio" SUBSEP "stream" SUBSEP t SUBSEP "cpu")
    pair("tcp", "tcp-stream", t, "tcp-stream", "haproxy", "rps", "tratio" SUBSEP "stream" SUBSEP t SUBSEP "rps")
    pair("tcp", "tcp-connect", t, "tcp-connect", "haproxy", "cpu", "tratio" SUBSEP "connect" SUBSEP t SUBSEP "cpu")
    pair("tcp", "tcp-connect", t, "tcp-connect", "haproxy", "rps", "tratio" SUBSEP "connect" SUBSEP t SUBSEP "rps")
  }
  print "### TCP services beside HAProxy `mode tcp`"
  print ""
  print "tcp-stream: " tcp_streams " connections, each echoing " tcp_chunk "-byte chunks one at a time (every byte"
  print "crosses the proxy twice). tcp-connect: " tcp_clients " clients, each opening a connection, echoing " tcp_connect_bytes " bytes"
  print "and closing it."
  print ""
  print "| load | target | throughput | errors | proxy CPU | of which user space | cores 0 / 1 busy % | throughput ÷ HAProxy | CPU ÷ HAProxy |"
  print "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for (i = 1; i <= 2; i++) {
    t = proxies[i]
    base = "tcp" SUBSEP "tcp-stream" SUBSEP t
    if (runs[base]) {
      printf "| tcp-stream | %s | %s MiB/s | %d | %s s/GiB | %s s/GiB | %s / %s | %s | %s |\n", target_name(t),
        summary(base SUBSEP "rps", "%.0f", 1048576 / tcp_chunk), errors[base],
        summary(base SUBSEP "cpu", "%.3f", 1e6 / gib), summary(base SUBSEP "user", "%.3f", 1e6 / gib),
        median(base SUBSEP "busy0") == "" ? "–" : sprintf("%.0f", median(base SUBSEP "busy0")),
        median(base SUBSEP "busy1") == "" ? "–" : sprintf("%.0f", median(base SUBSEP "busy1")),
        t == "haproxy" ? "1" : summary("tratio" SUBSEP "stream" SUBSEP t SUBSEP "rps", "%.2f", 1),
        t == "haproxy" ? "1" : summary("tratio" SUBSEP "stream" SUBSEP t SUBSEP "cpu", "%.2f", 1)
    }
  }
  for (i = 1; i <= 2; i++) {
    t = proxies[i]
    base = "tcp" SUBSEP "tcp-connect" SUBSEP t
    if (runs[base]) {
      printf "| tcp-connect | %s | %s conn/s | %d | %s µs/conn | %s µs/conn | %s / %s | %s | %s |\n", target_name(t),
        summary(base SUBSEP "rps", "%.0f", 1), errors[base],
        summary(base SUBSEP "cpu", "%.1f", 1), summary(base SUBSEP "user", "%.1f", 1),
        median(base SUBSEP "busy0") == "" ? "–" : sprintf("%.0f", median(base SUBSEP "busy0")),
        median(base SUBSEP "busy1") == "" ? "–" : sprintf("%.0f", median(base SUBSEP "busy1")),
        t == "haproxy" ? "1" : summary("tratio" SUBSEP "connect" SUBSEP t SUBSEP "rps", "%.2f", 1),
        t == "haproxy" ? "1" : summary("tratio" SUBSEP "connect" SUBSEP t SUBSEP "cpu", "%.2f", 1)
    }
  }
  print ""
  k = "tratio" SUBSEP "stream" SUBSEP "ours" SUBSEP "cpu"
  print "Target: proxy CPU per GiB ≤ 0.9× HAProxy's: " summary(k, "%.2f", 1) ", " verdict(k, "<=", 0.9) "."
  k = "tratio" SUBSEP "connect" SUBSEP "ours" SUBSEP "cpu"
  print "Target: proxy CPU per connection ≤ 0.9× HAProxy's: " summary(k, "%.2f", 1) ", " verdict(k, "<=", 0.9) "."
  print ""
}

# queue: overload behind instanceMaxConn (ours) and server maxconn (HAProxy), both queueing.
function queue_table(   t, proxies, i, base) {
  if (!targets["queue", "closed"]) return
  split("ours haproxy", proxies, " ")
  pair("queue", "closed", "ours", "closed", "haproxy", "cpu", "qratio" SUBSEP "cpu")
  pair("queue", "closed", "ours", "closed", "haproxy", "rps", "qratio" SUBSEP "rps")
  pair("queue", "closed", "ours", "closed", "haproxy", "p99", "qratio" SUBSEP "p99")
  print "### Overload behind a cap: queued requests"
  print ""
  print "A service on three instances, at most " queue_cap " requests in flight on each (ours: `instanceMaxConn=" queue_cap "`, the"
  print "default queue; HAProxy: `maxconn " queue_cap "` on each server line, `timeout queue 30s`); wrk with " queue_conns " connections,"
  print "so all but " 3 * queue_cap " requests wait in the queue at any moment. Errors include any 503 from a queue."
  print ""
  print "| target | req/s | p99 ms | errors | proxy CPU µs/request | of which user space |"
  print "|---|---:|---:|---:|---:|---:|"
  for (i = 1; i <= 2; i++) {
    t = proxies[i]
    base = "queue" SUBSEP "closed" SUBSEP t
    if (runs[base])
      printf "| %s | %s | %s | %d | %s | %s |\n", target_name(t), summary(base SUBSEP "rps", "%.0f", 1),
        summary(base SUBSEP "p99", "%.2f", 1000), errors[base], summary(base SUBSEP "cpu", "%.1f", 1),
        summary(base SUBSEP "user", "%.1f", 1)
  }
  print ""
  print "Ours ÷ HAProxy (paired by round): CPU per request " summary("qratio" SUBSEP "cpu", "%.2f", 1) \
    ", req/s " summary("qratio" SUBSEP "rps", "%.2f", 1) ", p99 " summary("qratio" SUBSEP "p99", "%.2f", 1) "."
  print ""
}

# threads: the paced GET on ours with two worker threads over one, and HAProxy's nbthread 2
# over nbthread 1 in the same rounds (the control).
function threads_table(   t, p, base, key, name, names) {
  if (!targets["threads", "paced"]) return
  print "### Threads: the paced GET with one worker thread and with two"
  print ""
  print "| proxy | cores | req/s | p99 ms | errors | proxy CPU µs/request | of which user space |"
  print "|---|---|---:|---:|---:|---:|---:|"
  names["ours"] = "docker-flow-proxy --threads "
  names["haproxy"] = "HAProxy nbthread "
  for (p = 0; p < 2; p++) {
    name = p == 0 ? "ours" : "haproxy"
    for (t = 1; t <= 2; t++) {
      base = "threads" SUBSEP "paced" SUBSEP name "-t" t
      if (!(base SUBSEP "cpu" in count)) continue
      printf "| %s%d | %s | %s | %s | %d | %s | %s |\n", names[name], t, t == 1 ? "0" : "0, 1",
        summary(base SUBSEP "rps", "%.0f", 1), summary(base SUBSEP "p99", "%.2f", 1000), errors[base],
        summary(base SUBSEP "cpu", "%.1f", 1), summary(base SUBSEP "user", "%.1f", 1)
    }
  }
  key = "threads-ratio"
  pair("threads", "paced", "ours-t2", "paced", "ours-t1", "cpu", key)
  pair("threads", "paced", "ours-t2", "paced", "ours-t1", "user", "threads-user")
  pair("threads", "paced", "haproxy-t2", "paced", "haproxy-t1", "cpu", "threads-haproxy")
  print ""
  print "CPU per request, two threads ÷ one (paired by round): " summary(key, "%.3f", 1) \
    "; target ≤ 1.1: " verdict(key, "<=", 1.1) ". User space alone: " summary("threads-user", "%.3f", 1) \
    ". HAProxy's nbthread 2 ÷ 1 in the same rounds: " summary("threads-haproxy", "%.3f", 1) "."
  print ""
}

END {
  compare_table("closed", "Closed loop (wrk, " "every connection sends its next request at once)")
  compare_table("paced", "Paced (each connection waits 1–4 ms between requests)")
  routes_table()
  churn_table()
  classes_tables()
  class_churn_table()
  threads_table()
  tcp_table()
  queue_table()
  instructions_table()
  targets_table()
  print "Figures: median (min–max) over the rounds. Ratios are paired: each round's value over HAProxy's"
  print "in the same round (or over the same proxy's quiet / 10-route run), then summarised. Errors are"
  print "wrk's socket errors plus answers ≥ 400, summed over all rounds. Proxy CPU is user+system time of"
  print "the proxy's whole process tree (for HAProxy and nginx, master and workers, with the workers they"
  print "have reaped) per completed request: the kernel keeps that sum exact (only its user/system split,"
  print "\"of which user space\", is sampled). Core 0 busy is everything core 0 did (user, system, irq,"
  print "softirq) per request, from tick-sampled /proc/stat: a rough cross-check that also shows anything"
  print "else that ran on the proxy's core (close to the exact figure when the core is saturated, up to"
  print "~30% off at the paced load on a busy machine). Cores busy: medians of the share of the run each"
  print "core was busy (core 0: the proxy; core 1: wrk, the upstreams, Consul)."
}
