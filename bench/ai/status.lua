-- Appended by bench/ai/run.py to each workload script (w1-w3.lua): counts responses by HTTP status, and
-- 2xx responses whose body lacks what the workload expects (the usage object; for a stream, the final
-- "data: [DONE]"), then prints "bench-statuses: 200=N ..." and "bench-bad-bodies: N" for measure.parse_wrk.
local threads = {}
local expect = wrk.headers["x-bench-stream"] and "data: [DONE]" or '"usage"'

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   statuses, bad = {}, 0
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 200 and status < 300 and not string.find(body, expect, 1, true) then
      bad = bad + 1
   end
end

function done(summary, latency, requests)
   local all, nbad = {}, 0
   for _, t in ipairs(threads) do
      for code, n in pairs(t:get("statuses")) do all[code] = (all[code] or 0) + n end
      nbad = nbad + t:get("bad")
   end
   io.write("bench-statuses:")
   for code, n in pairs(all) do io.write(string.format(" %d=%d", code, n)) end
   io.write(string.format("\nbench-bad-bodies: %d\n", nbad))
end
