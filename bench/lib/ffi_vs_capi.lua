-- bench/lib/ffi_vs_capi.lua (S0): what one call from Lua into C costs, the
-- classic C API (a lua_CFunction: luasocket's gettime) against the FFI
-- (clock_gettime declared with ffi.cdef), both doing the same vDSO clock
-- read, JIT on. Prints one JSON object in ns per call.
local ffi = require "ffi"
local socket = require "socket"

ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk, bench_timespec *ts);
]]

local C = ffi.C
local N = 5000000
local clock = os.clock

local function per_call(f)
  f(N / 10)                       -- let the JIT compile the loop first
  local t = clock()
  f(N)
  return (clock() - t) / N * 1e9
end

local gettime = socket.gettime
local capi = per_call(function(n)
  local s = 0
  for _ = 1, n do s = s + gettime() end
  return s
end)

local ts = ffi.new("bench_timespec")
local fficall = per_call(function(n)
  local s = 0
  for _ = 1, n do
    C.clock_gettime(1, ts)
    s = s + tonumber(ts.tv_nsec)
  end
  return s
end)

local empty = per_call(function(n)
  local s = 0
  for i = 1, n do s = s + i end
  return s
end)

io.write(string.format('{"capi_ns":%.1f,"ffi_ns":%.1f,"loop_ns":%.2f,"calls":%d}\n', capi, fficall, empty, N))
