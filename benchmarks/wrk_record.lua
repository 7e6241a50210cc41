-- wrk script for benchmarks/switch_under_load.py: keep-alive clients that never retry,
-- paced to a rate, every response logged with its arrival time and the color that
-- answered it.
--
--   wrk ... -s wrk_record.lua URL -- RATE WARMUP LOGFILE PATH [PATH ...]
--
-- RATE is requests a second for each wrk thread; requests go round the PATHs. Each
-- request is scheduled on the clock (t0 + k/RATE); a connection waits for its slot
-- after each answer. A request sent more than 100 ms after its slot, once the first
-- WARMUP seconds (every connection's TLS handshake at once) are over, counts as
-- late: the client, not the server, then set the pace.
-- Arrival times use CLOCK_MONOTONIC, the clock of Python's time.monotonic().

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } cg_timespec;
  int clock_gettime(int clock, cg_timespec *ts);
]]
local ts = ffi.new("cg_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  rate = tonumber(args[1])
  warmup = tonumber(args[2])
  logfile = args[3]
  reqs = {}
  for i = 4, #args do reqs[#reqs + 1] = wrk.format("GET", args[i]) end
  n, slots, late, t0 = 0, 0, 0, now()
  log = {}
end

function request()
  n = n + 1
  return reqs[(n - 1) % #reqs + 1]
end

function delay()
  slots = slots + 1
  local t = now()
  local wait = t0 + slots / rate - t
  if wait < -0.1 and t > t0 + warmup then late = late + 1 end
  if wait > 0 then return wait * 1000 end
  return 0
end

function response(status, headers, body)
  local color = headers["X-Colorgate-Color"] or headers["x-colorgate-color"] or "-"
  log[#log + 1] = string.format("%.4f %d %s", now(), status, color)
end

function done(summary, latency, requests)
  -- done() runs in wrk's main Lua state, where init() did not: ask a thread for its args
  local f = assert(io.open(threads[1]:get("logfile"), "w"))
  local late_total, slots_total = 0, 0
  for _, t in ipairs(threads) do
    for _, line in ipairs(t:get("log")) do f:write(line, "\n") end
    late_total = late_total + t:get("late")
    slots_total = slots_total + t:get("slots")
  end
  f:close()
  local e = summary.errors
  io.write(string.format(
    "COLORGATE requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d late=%d slots=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, late_total, slots_total,
    latency:percentile(50), latency:percentile(99), latency.max))
end
