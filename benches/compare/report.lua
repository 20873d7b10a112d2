-- wrk script: prints one machine-readable RESULT line when the run ends (used by compare.sh).
-- Latencies are microseconds; errors are wrk's own counts (status = answers >= 400).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d"
      .. " p90_us=%d p999_us=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(90), latency:percentile(99.9)))
end
