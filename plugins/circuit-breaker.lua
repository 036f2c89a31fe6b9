-- circuit-breaker: stops sending requests to an upstream target that keeps
-- failing, and answers 503 {"error":"Service unavailable"} itself when
-- every target of the upstream is open.
--
-- One breaker per upstream target (upstream name + address), in a shared
-- dict, so every worker sees the same state and every route that uses the
-- plugin on that upstream shares it. States, as in Hystrix / resilience4j:
--
--   closed     requests flow. The log phase counts each attempt's outcome
--              (tg.upstream.get_attempts(): the upstream status, or 502/504
--              for a connect failure, reset, garbage or timeout). `failures`
--              consecutive failures open the breaker; so does, with
--              `error_ratio`, an error ratio at or above it over a sliding
--              `window_s` of at least `min_requests` attempts.
--   open       for `open_s` seconds the target is excluded before the
--              balancer (tg.upstream.exclude_target), so retries and the
--              balancer only see the others.
--   half-open  after `open_s`, up to `probes` requests at a time are let
--              through (a shared counter taken with incr, so all workers
--              together send at most `probes`); a successful probe closes
--              the breaker, a failed one opens it for another `open_s`.
--
-- Keys: "cb:<upstream>\0<addr>" + ":s" (when it opened; absent = closed),
-- ":f" (consecutive failures), ":p" (probe slots taken, expires after
-- open_s so a probe lost with its worker cannot block probing), ":n:<w>" /
-- ":e:<w>" (attempts / failures in window w, only with error_ratio).
--
-- A closed target costs one shared-dict read per request in access and one
-- or two in log. The breaker complements the core's passive health checks
-- (which only count connection-level failures and are per worker) and its
-- retries (a failed attempt is counted here even when a retry then
-- succeeded on another target).
local tg = require "tollgate"

local type, ipairs, pairs, setmetatable, tostring = type, ipairs, pairs, setmetatable, tostring
local floor, ceil, huge = math.floor, math.ceil, math.huge
local now = tg.now
local get_name = tg.upstream.get_name
local get_targets = tg.upstream.get_targets
local get_attempts = tg.upstream.get_attempts
local exclude_target = tg.upstream.exclude_target
local exit = tg.response.exit
local log = tg.log

local NAME = "circuit-breaker"
local UNAVAILABLE = { error = "Service unavailable" }
local DEFAULT_DICT = "breakers"
local MAX_TARGETS = 64   -- the core can exclude targets 1..64 of an upstream

-- upstream name -> list of { s, f, p, base, addr } key strings per target.
-- A worker's upstreams never change (a reload starts new workers), so this
-- is filled once per upstream and never invalidated.
local target_keys = {}

-- conf table -> { dict, failure (status -> true) or nil }
local compiled = setmetatable({}, { __mode = "k" })

local function compile(conf)
  local c = compiled[conf]
  if c then return c end
  local name = conf.dict or DEFAULT_DICT
  local dict, err = tg.shared.dict(name)
  if not dict then error("shared dict \"" .. name .. "\": " .. tostring(err)) end
  c = { dict = dict }
  if conf.failure_statuses then
    c.failure = {}
    for _, s in ipairs(conf.failure_statuses) do c.failure[s] = true end
  end
  compiled[conf] = c
  return c
end

local function keys_of(up)
  local keys = target_keys[up]
  if keys then return keys end
  local targets = get_targets()
  -- unguarded: targets past MAX_TARGETS, always available as far as the
  -- breaker knows.
  keys = { unguarded = 0 }
  if #targets > MAX_TARGETS then
    keys.unguarded = #targets - MAX_TARGETS
    log.warn("upstream \"", up, "\" has ", #targets, " targets: only the first ", MAX_TARGETS,
             " get a breaker")
  end
  for i, t in ipairs(targets) do
    if i > MAX_TARGETS then break end
    local base = "cb:" .. up .. "\0" .. t.addr
    keys[i] = { base = base, addr = t.addr, s = base .. ":s", f = base .. ":f", p = base .. ":p" }
  end
  target_keys[up] = keys
  return keys
end

local function failed(c, status)
  if c.failure then return c.failure[status] == true end
  return status >= 500
end

local function access(conf, ctx)
  local up = get_name()
  if up == nil then return end          -- a static route: nothing to protect
  local c = compile(conf)
  local dict = c.dict
  local keys = keys_of(up)
  local t = now()
  local open_s = conf.open_s
  local allowed, wait = keys.unguarded, huge
  local probes
  for i = 1, #keys do
    local k = keys[i]
    local opened = dict:get(k.s)
    if opened == nil then
      allowed = allowed + 1
    elseif t < opened + open_s then
      exclude_target(i)
      if opened + open_s - t < wait then wait = opened + open_s - t end
    else
      -- Half-open: take a probe slot, or stay out.
      local n = dict:incr(k.p, 1, 0, open_s)
      if n and n <= conf.probes then
        allowed = allowed + 1
        probes = probes or {}
        probes[i] = true
      else
        if n then dict:incr(k.p, -1) end
        exclude_target(i)
        if 1 < wait then wait = 1 end
      end
    end
  end
  if probes then ctx[NAME] = { probes = probes } end
  if allowed == 0 then
    return exit(503, UNAVAILABLE, { ["Retry-After"] = tostring(ceil(wait)) })
  end
end

local function window_keys(k, w)
  return k.base .. ":n:" .. w, k.base .. ":e:" .. w
end

local function open(c, conf, up, k, t, why)
  local dict = c.dict
  -- add: only the first worker to trip it logs and stamps the time.
  local ok = dict:add(k.s, t)
  dict:delete(k.f)
  dict:delete(k.p)
  if conf.error_ratio then
    local w = floor(t / conf.window_s)
    for _, key in ipairs({ window_keys(k, w) }) do dict:delete(key) end
    for _, key in ipairs({ window_keys(k, w - 1) }) do dict:delete(key) end
  end
  if ok then
    log.warn("opened for upstream \"", up, "\" target ", k.addr, " (", why, ") for ", conf.open_s, " s")
  end
end

-- Counts one attempt's outcome while the breaker is closed.
local function record(c, conf, up, k, bad, t)
  local dict = c.dict
  if bad then
    local n = dict:incr(k.f, 1, 0)
    if n and n >= conf.failures then
      return open(c, conf, up, k, t, n .. (n == 1 and " failure" or " consecutive failures"))
    end
  elseif dict:get(k.f) then
    dict:delete(k.f)
  end
  local ratio = conf.error_ratio
  if not ratio then return end
  local ws = conf.window_s
  local w = floor(t / ws)
  local nk, ek = window_keys(k, w)
  local n = dict:incr(nk, 1, 0, 2 * ws) or 0
  local e = bad and dict:incr(ek, 1, 0, 2 * ws) or dict:get(ek) or 0
  -- Sliding window: the previous window weighted by how much of it is
  -- still inside the last window_s seconds.
  local pk, pek = window_keys(k, w - 1)
  local weight = 1 - (t - w * ws) / ws
  local total = n + (dict:get(pk) or 0) * weight
  local errors = e + (dict:get(pek) or 0) * weight
  if bad and total >= conf.min_requests and errors / total >= ratio then
    open(c, conf, up, k, t, "error ratio " .. floor(errors / total * 100 + 0.5) .. "% over "
         .. floor(total + 0.5) .. " attempts")
  end
end

local function log_phase(conf, ctx)
  local up = get_name()
  if up == nil then return end
  local attempts = get_attempts()
  local st = ctx[NAME]
  local probes = st and st.probes
  if #attempts == 0 and not probes then return end
  local c = compile(conf)
  local dict = c.dict
  local keys = keys_of(up)
  local t = now()
  for _, a in ipairs(attempts) do
    local k = keys[a.index]
    if k then
      local bad = failed(c, a.status)
      local opened = dict:get(k.s)
      if probes and probes[a.index] then
        probes[a.index] = "used"
        if opened == nil then
          -- Another probe closed it meanwhile: an ordinary attempt.
          record(c, conf, up, k, bad, t)
        elseif bad then
          dict:set(k.s, t)
          dict:delete(k.p)
          log.warn("probe of upstream \"", up, "\" target ", k.addr, " failed (", a.status,
                   "): open for another ", conf.open_s, " s")
        else
          dict:delete(k.s)
          dict:delete(k.f)
          dict:delete(k.p)
          log.notice("closed for upstream \"", up, "\" target ", k.addr, " after a successful probe")
        end
      elseif opened == nil then
        record(c, conf, up, k, bad, t)
      end
      -- Open or half-open and not our probe: a request that was already in
      -- flight when the breaker opened. Its outcome says nothing new.
    end
  end
  -- Probe slots taken in access for targets the balancer did not pick.
  if probes then
    for i, v in pairs(probes) do
      if v == true then dict:incr(keys[i].p, -1) end
    end
  end
end

local dict_configured = require("tollgate.shdict").configured

return {
  name = NAME,
  version = "1.0.0",
  -- Last in access: after canary (which picks the upstream whose targets
  -- are judged here) and after anything that may answer without the
  -- upstream (a cache hit, a rate limit).
  priority = 20,
  schema = {
    type = "record",
    fields = {
      failures = { type = "integer", default = 5, min = 1,
                   description = "consecutive failed attempts that open the breaker" },
      error_ratio = { type = "number", gt = 0, max = 1,
                      description = "also open at this ratio of failed attempts over window_s" },
      window_s = { type = "number", default = 10, gt = 0 },
      min_requests = { type = "integer", default = 20, min = 1,
                       description = "attempts in the window before error_ratio applies" },
      open_s = { type = "number", default = 30, gt = 0 },
      probes = { type = "integer", default = 1, min = 1 },
      failure_statuses = { type = "array", min_len = 1,
                           elements = { type = "integer", min = 400, max = 599 },
                           description = "statuses that count as failures; default: every 5xx" },
      -- No schema default: check_def runs a default through its check, and
      -- this check needs the operator's config. The entity check covers
      -- the default name.
      dict = { type = "string", check = dict_configured,
               description = "shared dict for the breaker state (default " .. DEFAULT_DICT .. ")" },
    },
    entity_checks = { function(conf)
      if conf.dict then return true end
      local ok, err = dict_configured(DEFAULT_DICT)
      if not ok then return nil, "dict: " .. err end
      return true
    end },
  },
  access = access,
  log = log_phase,
}
