-- tollgate.ratelimit.local: the `policy: local` storage of the rate-limiting
-- plugin. Counters live in a shared dict, so every worker of one instance
-- counts against the same numbers.
--
-- Exactness comes from the dict's one atomic primitive, incr(): a fixed or
-- sliding window admits request number n of its window only if n (weighted
-- with the previous window for sliding) stays within the limit, and each
-- concurrent caller gets a distinct n. A rejected request gives its
-- increment back, so the counters hold admitted requests only (the sliding
-- window's "previous window" must not be inflated by rejections). Between
-- the increment and the give-back another worker may see a count one too
-- high and reject too: the error is always on the safe side and lasts
-- microseconds. Never more than `limit` requests pass.
--
-- GCRA (token bucket) keeps one number per key, the theoretical arrival
-- time (TAT), and needs read-max-add-write, which incr cannot express. It
-- runs under a per-key lock made from dict:add(): the holder never yields
-- between add and delete, so the lock is held for a few microseconds; a
-- worker that dies holding it leaves a lock that expires after LOCK_TTL.
--
-- Several limits on one request: every limit is tried; if one rejects, the
-- others give their unit back, so a request counts everywhere or nowhere.
--
-- check() returns ok, limit, remaining, reset_s, retry_s of the limit to
-- report (see plugins/rate-limiting.lua), or nil, err when the dict failed.

local tg = require "tollgate"

local floor = math.floor
local huge = math.huge

local _M = {}

local LOCK_TTL = 0.5     -- s: only matters when a lock holder died
local LOCK_SPINS = 100   -- add() attempts before yielding; a holder needs microseconds
local LOCK_WAIT = 0.1    -- s: give up (an error) after this much sleeping
local LOCK_SLEEP = 0.001 -- s between attempts once spinning did not help
local EPS = 1e-6         -- s: float slack when comparing times (TAT ~ 1.7e9 s)

-- Returns the effective limit of `lim` for `plan`.
local function limit_of(lim, plan)
  local plans = lim.plans
  if plan ~= nil and plans ~= nil then
    local v = plans[plan]
    if v ~= nil then return v end
  end
  return lim.limit
end
_M.limit_of = limit_of

local function lock(dict, lk)
  for _ = 1, LOCK_SPINS do
    local ok, err = dict:add(lk, true, LOCK_TTL)
    if ok then return true end
    if err ~= "exists" then return nil, err end
  end
  local waited = 0
  while waited < LOCK_WAIT do
    tg.sleep(LOCK_SLEEP)
    waited = waited + LOCK_SLEEP
    local ok, err = dict:add(lk, true, LOCK_TTL)
    if ok then return true end
    if err ~= "exists" then return nil, err end
  end
  return nil, "lock wait timed out"
end

-- Seconds until one more request fits a sliding window: `cur` admitted in
-- the current window (elapsed e of w), `prev` in the previous one.
local function sliding_retry(L, w, e, prev, cur)
  -- Within this window the previous window's weight prev*(w-t)/w falls.
  if prev > 0 and cur + 1 <= L then
    local t = w * (1 - (L - cur - 1) / prev)
    if t <= w then
      return t > e and t - e or 0
    end
  end
  -- Next window: the current count becomes the weighted one.
  local t = 0
  if cur > L - 1 then t = w * (1 - (L - 1) / cur) end
  return (w - e) + t
end

-- Each algorithm: acquire(dict, key, L, w, now) -> ok, remaining, reset, retry
-- | nil, err; release(dict, key, L, w, now) gives an admitted unit back.

local fixed = {}

function fixed.acquire(dict, key, L, w, now)
  local wn = floor(now / w)
  local reset = (wn + 1) * w - now
  -- Created at any moment of its window, a key with TTL w outlives it.
  local n, err = dict:incr(key .. ":" .. wn, 1, 0, w)
  if not n then return nil, err end
  if n > L then
    dict:incr(key .. ":" .. wn, -1)
    return false, 0, reset, reset
  end
  return true, L - n, reset, 0
end

function fixed.release(dict, key, _, w, now)
  dict:incr(key .. ":" .. floor(now / w), -1)
end

local sliding = {}

function sliding.acquire(dict, key, L, w, now)
  local wn = floor(now / w)
  local e = now - wn * w
  local prev = dict:get(key .. ":" .. (wn - 1)) or 0
  local weighted = prev * (w - e) / w
  -- A current-window key must live on as the next window's "previous".
  local ck = key .. ":" .. wn
  local n, err = dict:incr(ck, 1, 0, 2 * w)
  if not n then return nil, err end
  local est = weighted + n
  if est > L + EPS then
    dict:incr(ck, -1)
    return false, 0, w - e, sliding_retry(L, w, e, prev, n - 1)
  end
  local remaining = floor(L - est + EPS)
  return true, remaining > 0 and remaining or 0, w - e, 0
end

sliding.release = fixed.release

local bucket = {}

-- GCRA: emission interval T = w / L, burst L. A request at `now` is
-- admitted when max(TAT, now) + T - now <= w; TAT then moves by T. The key
-- expires exactly when the bucket is full again (TAT = now), so a missing
-- key means a full bucket.
function bucket.acquire(dict, key, L, w, now)
  local T = w / L
  local lk = key .. ":lock"
  local ok, err = lock(dict, lk)
  if not ok then return nil, err end
  local tat = dict:get(key)
  if tat == nil or tat < now then tat = now end
  local new = tat + T
  if new - now > w + EPS then
    dict:delete(lk)
    return false, 0, tat - now, new - w - now
  end
  ok, err = dict:set(key, new, new - now)
  dict:delete(lk)
  if not ok then return nil, err end
  local remaining = floor((w - (new - now)) / T + EPS)
  return true, remaining > 0 and remaining or 0, new - now, 0
end

function bucket.release(dict, key, L, w, now)
  local lk = key .. ":lock"
  if not lock(dict, lk) then return end
  local tat = dict:get(key)
  if tat ~= nil then
    local back = tat - w / L
    if back > now then
      dict:set(key, back, back - now)
    else
      dict:delete(key)
    end
  end
  dict:delete(lk)
end

local ALGS = { f = fixed, s = sliding, t = bucket }

-- cc: the compiled config (plugins/rate-limiting.lua); base: key prefix up
-- to the limit's tag; id: identity; plan: consumer plan or nil.
function _M.check(cc, base, id, plan, now)
  local dict = cc.dict
  if dict == nil then
    local err
    dict, err = tg.shared.dict(cc.dict_name)
    if not dict then return nil, err end
    cc.dict = dict
  end
  local limits = cc.limits
  local n = #limits
  -- The limit to report: on success the lowest remaining (ties: the later
  -- reset); on rejection the rejecting limit with the longest wait.
  local all_ok = true
  local r_L, r_rem, r_reset, r_retry = 0, huge, 0, 0
  for i = 1, n do
    local lim = limits[i]
    local L = limit_of(lim, plan)
    local key = base .. lim.tag .. ":" .. id
    local ok, rem, reset, retry = ALGS[lim.alg].acquire(dict, key, L, lim.window, now)
    if ok == nil then
      -- Storage failure: undo what this request holds (after a rejection
      -- it holds nothing: everything was given back then).
      for j = 1, all_ok and i - 1 or 0 do
        local lj = limits[j]
        ALGS[lj.alg].release(dict, base .. lj.tag .. ":" .. id, limit_of(lj, plan), lj.window, now)
      end
      return nil, rem
    end
    if ok then
      if all_ok and (rem < r_rem or (rem == r_rem and reset > r_reset)) then
        r_L, r_rem, r_reset, r_retry = L, rem, reset, 0
      end
      if not all_ok then
        -- Already rejected: this unit must not count.
        ALGS[lim.alg].release(dict, key, L, lim.window, now)
      end
    else
      if all_ok then
        all_ok = false
        r_L, r_rem, r_reset, r_retry = L, 0, reset, retry
        for j = 1, i - 1 do
          local lj = limits[j]
          ALGS[lj.alg].release(dict, base .. lj.tag .. ":" .. id, limit_of(lj, plan), lj.window, now)
        end
      elseif retry > r_retry then
        r_L, r_rem, r_reset, r_retry = L, 0, reset, retry
      end
    end
  end
  return all_ok, r_L, r_rem, r_reset, r_retry
end

return _M
