# h2load.awk: turns h2load's summary into report.lua's RESULT line for compare.sh. h2load
# reports no latency percentiles (only min/max/mean/sd), so p50/p99 are "-". Errors: requests
# h2load counts as failed (read: its errored and timed-out ones included) and answers >= 400
# (status). Plain awk (mawk).

# "10.00s," "998.12ms," "512us," -> microseconds
function us(v) {
  sub(/,$/, "", v)
  if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
  if (v ~ /us$/) { sub(/us$/, "", v); return v + 0 }
  sub(/s$/, "", v); return v * 1000000
}

$1 == "finished" && $2 == "in" { duration = us($3) }
$1 == "requests:" { done = $6; failed = $10 }
$1 == "status" && $2 == "codes:" { status = $7 + $9 }

END {
  if (duration == "") exit 1
  printf "RESULT requests=%d duration_us=%d p50_us=- p99_us=- connect=0 read=%d write=0 status=%d timeout=0\n",
    done, duration, failed, status
}
