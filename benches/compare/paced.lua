-- wrk script for the paced mode of compare.sh: each connection waits 1-4 ms (uniform) after
-- each answer before it sends the next request, so neither the proxy's core nor the load
-- generator's core is saturated and the proxy's CPU per request is its steady-state cost.
-- wrk starts a request's latency clock when it writes the request, so the wait is not in p50/p99.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

init = function(args)
  math.randomseed(os.time())
end

delay = function()
  return math.random(1, 4)
end
