-- tollgate.ratelimit.redis: the `policy: redis` storage of the
-- rate-limiting plugin. One server-side Lua script per request (EVALSHA
-- through tg.redis's run_script, which reloads it on NOSCRIPT) evaluates
-- every limit of the request and, only if all of them admit it, records it
-- in all of them. A script runs atomically in Redis, so the count is exact
-- across workers and gateway instances: one round trip, no locks, no
-- give-backs.
--
-- Time is the gateway's clock (tg.now(), in microseconds), sent with the
-- request; the window numbers in the key names come from it too, so every
-- key the script touches is declared in KEYS. Gateway instances sharing a
-- Redis need synchronised clocks (NTP); a skew of d seconds shifts their
-- windows by d.
--
-- Keys expire on their own: a fixed window's counter at the end of its
-- window, a sliding window's at the end of the next one (it is that
-- window's "previous"), a bucket's TAT when the bucket is full again.
--
-- check() returns ok, limit, remaining, reset_s, retry_s of the limit to
-- report, or nil, err, severe when Redis failed (timeout or down; severe:
-- Redis answered with an error).

local tg = require "tollgate"
local limit_of = require("tollgate.ratelimit.local").limit_of

local floor = math.floor
local format = string.format
local type = type
local tostring = tostring
local unpack = unpack

local _M = {}

-- KEYS: per limit one key (fixed window: its window; bucket: the TAT), two
-- for a sliding window (current window, previous window).
-- ARGV[1]: now (µs); ARGV[2]: number of limits; then per limit i:
-- ARGV[3i] algorithm (f|s|t), ARGV[3i+1] limit (> 0), ARGV[3i+2] window (µs).
-- Returns { admitted (1|0), index of the limit to report, remaining,
-- reset (µs), retry (µs) }: on success the lowest remaining (ties: the
-- later reset), on rejection the rejecting limit with the longest wait.
_M.SCRIPT = [[
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local floor, ceil = math.floor, math.ceil

local function sliding_retry(L, w, e, prev, cur)
  if prev > 0 and cur + 1 <= L then
    local t = w * (1 - (L - cur - 1) / prev)
    if t <= w then
      if t > e then return t - e end
      return 0
    end
  end
  local t = 0
  if cur > L - 1 then t = w * (1 - (L - 1) / cur) end
  return (w - e) + t
end

local ki = 1
local all_ok = true
local best, b_rem, b_reset, b_retry = 1, -1, 0, 0
local commit = {}
for i = 1, n do
  local a = ARGV[3 * i]
  local L = tonumber(ARGV[3 * i + 1])
  local w = tonumber(ARGV[3 * i + 2])
  local ok, rem, reset, retry
  local k = KEYS[ki]
  ki = ki + 1
  if a == 't' then
    local T = w / L
    local tat = tonumber(redis.call('GET', k)) or now
    if tat < now then tat = now end
    local new = tat + T
    if new - now <= w + 1 then
      ok, rem, reset, retry = true, floor((w - (new - now)) / T + 1e-6), new - now, 0
      commit[i] = new
    else
      ok, rem, reset, retry = false, 0, tat - now, new - w - now
    end
  else
    local start = floor(now / w) * w
    local e = now - start
    local cur = tonumber(redis.call('GET', k)) or 0
    local prev, est = 0, cur
    if a == 's' then
      prev = tonumber(redis.call('GET', KEYS[ki])) or 0
      ki = ki + 1
      est = prev * (w - e) / w + cur
    end
    reset = w - e
    if est + 1 <= L + 1e-6 then
      ok, rem, retry = true, floor(L - est - 1 + 1e-6), 0
      commit[i] = start + (a == 's' and 2 or 1) * w - now
    else
      ok, rem = false, 0
      if a == 's' then retry = sliding_retry(L, w, e, prev, cur) else retry = reset end
    end
  end
  if rem < 0 then rem = 0 end
  if ok then
    if all_ok and (b_rem < 0 or rem < b_rem or (rem == b_rem and reset > b_reset)) then
      best, b_rem, b_reset, b_retry = i, rem, reset, 0
    end
  else
    if all_ok or retry > b_retry then
      best, b_rem, b_reset, b_retry = i, 0, reset, retry
    end
    all_ok = false
  end
end

if all_ok then
  ki = 1
  for i = 1, n do
    local a, k = ARGV[3 * i], KEYS[ki]
    ki = ki + (a == 's' and 2 or 1)
    if a == 't' then
      redis.call('SET', k, string.format('%.0f', commit[i]), 'PX', ceil((commit[i] - now) / 1000))
    elseif redis.call('INCR', k) == 1 then
      redis.call('PEXPIRE', k, ceil(commit[i] / 1000))
    end
  end
end
return { all_ok and 1 or 0, best, b_rem, floor(b_reset), ceil(b_retry) }
]]

local SCRIPT = _M.SCRIPT

-- Arguments of one call, reused: unpack() copies them onto the stack
-- before run_script runs, so a request waiting on Redis never reads this
-- table again and the next request may refill it.
local args = {}

function _M.check(cc, base, id, plan, now)
  local red = cc.red
  if red == nil then
    local err
    red, err = tg.redis(cc.redis_timeout_ms and { timeout_ms = cc.redis_timeout_ms } or nil)
    if not red then return nil, "redis: " .. tostring(err) end
    cc.red = red
  end

  local now_us = floor(now * 1e6)
  local limits = cc.limits
  local n = #limits
  local nk = 0
  for i = 1, n do
    local lim = limits[i]
    local key = base .. lim.tag .. ":" .. id
    if lim.alg == "t" then
      nk = nk + 1
      args[nk] = key
    else
      local wn = floor(now_us / lim.window_us)
      nk = nk + 1
      args[nk] = key .. ":" .. format("%.0f", wn)
      if lim.alg == "s" then
        nk = nk + 1
        args[nk] = key .. ":" .. format("%.0f", wn - 1)
      end
    end
  end
  -- Numbers go as strings: tostring() would print 1.8e+15 for now_us.
  local na = nk + 1
  args[na] = format("%.0f", now_us)
  na = na + 1
  args[na] = n
  for i = 1, n do
    local lim = limits[i]
    args[na + 1] = lim.alg
    args[na + 2] = limit_of(lim, plan)
    args[na + 3] = lim.window_arg
    na = na + 3
  end

  local res, err = red:run_script(SCRIPT, nk, unpack(args, 1, na))
  if not res then
    -- false: Redis answered with an error (OOM, READONLY, a script bug):
    -- unlike a timeout, that is a configuration problem worth an error.
    return nil, "redis: " .. tostring(err), res == false
  end
  if type(res) ~= "table" or #res ~= 5 then return nil, "redis: unexpected script reply" end
  return res[1] == 1, limit_of(limits[res[2]], plan), res[3], res[4] / 1e6, res[5] / 1e6
end

return _M
