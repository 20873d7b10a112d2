-- wrk script for compare.sh's post classes: every request is a POST whose body is the number
-- of bytes given after `--` (default 1024), so `wrk ... -s post.lua URL -- 65536` sends 64 KiB
-- bodies (with Content-Length: wrk.format adds it). Prints report.lua's RESULT line.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

init = function(args)
  local size = tonumber(args[1]) or 1024
  wrk.method = "POST"
  wrk.body = string.rep("x", size)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
