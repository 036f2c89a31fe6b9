-- rate-limiting: limits requests per identity (consumer, client IP, a
-- header, the route or the path) over one or several windows, with three
-- algorithms (fixed window, sliding window, GCRA token bucket) and two
-- storages: `local` (a shared dict, exact across the workers of one
-- instance) and `redis` (one atomic server-side script per request, exact
-- across instances). Documented in docs/plugins/rate-limiting.md.
--
-- The config is compiled once per conf table (weakly keyed, so a reload's
-- new tables get new entries and the old ones go with the old VM): the
-- list of limits with their key tags, the identity kind, the
-- RateLimit-Policy strings per plan. A request then costs the identity
-- string, one key per limit, and the storage calls.
--
-- Storage failures (Redis down, slower than its timeout, a shared dict out
-- of memory) are "faults": with fault_tolerant the request passes without
-- rate-limit headers, otherwise it gets a 503. Either way the fault is
-- counted (GET /rate-limiting/stats on the admin listener) and logged at
-- most once per FAULT_LOG_INTERVAL per worker.

local tg     = require "tollgate"
local schema = require "tollgate.schema"
local policy_local = require "tollgate.ratelimit.local"

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local floor, ceil = math.floor, math.ceil
local concat = table.concat
local format = string.format
local setmetatable = setmetatable
local limit_of = policy_local.limit_of

local set_header = tg.response.set_header
local get_header = tg.request.get_header
local get_client_ip = tg.request.get_client_ip
local get_path = tg.request.get_path
local get_route_name = tg.request.get_route_name
local now_fn = tg.now

local DEFAULT_WINDOW_S = 60
local MAX_WINDOW_S = 31622400      -- one leap year: longer windows are a config mistake
local MAX_LIMITS = 16              -- per route; each costs a key per request
local FAULT_LOG_INTERVAL = 10      -- s between two fault messages of one worker
local STATS_DICT = "ratelimit"     -- fault counters, when that dict exists
local EPS = 1e-6

local ALGORITHMS = { "fixed_window", "sliding_window", "token_bucket" }
local ALG_CODE = { fixed_window = "f", sliding_window = "s", token_bucket = "t" }

-- Storage strategies (house style: one table, one interface). The Redis
-- one is loaded on first use, so configs without Redis never load a client.
local POLICIES = {
  ["local"] = function() return policy_local end,
  redis = function() return require "tollgate.ratelimit.redis" end,
}

---------------------------------------------------------------------------
-- schema
---------------------------------------------------------------------------

local function window_def(required)
  return { type = "number", min = 0.001, max = MAX_WINDOW_S, required = required }
end

local function plans_def()
  return { type = "map", keys = { type = "string", min_len = 1 },
           values = { type = "integer", min = 0 } }
end

local function check_by(v)
  if v == "consumer" or v == "ip" or v == "route" or v == "path" then return true end
  local name = v:match("^header:(.+)$")
  if name and name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then return true end
  return nil, "expected consumer, ip, route, path or header:NAME"
end

-- Fields of the single-limit form make no sense next to `limits`.
local function single_only(field)
  return function(_, conf)
    if conf.limits ~= nil then
      return nil, "not allowed with limits (set " .. field .. " on each item of limits)"
    end
    return true
  end
end

-- Two limits with the same window and algorithm would share one counter.
local function check_limits(list, conf)
  local seen = {}
  for i, l in ipairs(list) do
    local k = tostring(l.window_s) .. "/" .. (l.algorithm or conf.algorithm or "")
    if seen[k] then
      return nil, "items " .. (seen[k] - 1) .. " and " .. (i - 1)
        .. " have the same window_s and algorithm (they would share one counter)"
    end
    seen[k] = i
  end
  return true
end

-- The local policy needs its shared dict; say so at config load rather
-- than with a 500 on the first request.
local function check_dict(conf)
  if conf.policy ~= "local" then return true end
  local name = conf.dict
  local cfg = tg.config()
  if type(cfg) ~= "table" then return true end    -- validated outside the gateway
  local dicts = cfg.shared_dicts
  if type(dicts) ~= "table" or schema.is_null(dicts) or dicts[name] == nil then
    return nil, "no shared dict \"" .. name .. "\" (policy local needs one: shared_dicts: { "
      .. name .. ": 10m })"
  end
  return true
end

local limit_item = {
  type = "record",
  fields = {
    limit     = { type = "integer", min = 0, required = true },
    window_s  = window_def(true),
    algorithm = { type = "string", one_of = ALGORITHMS },
    plans     = plans_def(),
  },
}

local conf_schema = {
  type = "record",
  fields = {
    limit          = { type = "integer", min = 0 },
    window_s       = { type = "number", min = 0.001, max = MAX_WINDOW_S, check = single_only("window_s") },
    plans          = { type = "map", keys = { type = "string", min_len = 1 },
                       values = { type = "integer", min = 0 }, check = single_only("plans") },
    limits         = { type = "array", min_len = 1, max_len = MAX_LIMITS, elements = limit_item,
                       check = check_limits },
    algorithm      = { type = "string", default = "sliding_window", one_of = ALGORITHMS },
    by             = { type = "string", default = "consumer", check = check_by },
    scope          = { type = "string", default = "route", one_of = { "route", "global" } },
    policy         = { type = "string", default = "local", one_of = { "local", "redis" } },
    dict           = { type = "string", default = "ratelimit", min_len = 1 },
    redis_timeout_ms = { type = "integer", min = 1, max = 60000 },
    fault_tolerant = { type = "boolean", default = true },
    headers        = { type = "boolean", default = true },
    status         = { type = "integer", default = 429, min = 400, max = 599 },
  },
  entity_checks = { schema.only_one_of{ "limit", "limits" }, check_dict },
}

---------------------------------------------------------------------------
-- compiled configs
---------------------------------------------------------------------------

local BY_CONSUMER, BY_IP, BY_HEADER, BY_ROUTE, BY_PATH = 1, 2, 3, 4, 5
local BY_KIND = { consumer = BY_CONSUMER, ip = BY_IP, route = BY_ROUTE, path = BY_PATH }

local compiled = setmetatable({}, { __mode = "k" })

-- "10;w=1, 1000;w=3600" for the limits a plan gets (IETF draft).
local function policy_header(limits, plan)
  local parts = {}
  for i, lim in ipairs(limits) do
    parts[i] = limit_of(lim, plan) .. ";w=" .. tostring(lim.window)
  end
  return concat(parts, ", ")
end

local function compile(conf)
  local src = conf.limits
  if src == nil then
    src = { { limit = conf.limit, window_s = conf.window_s or DEFAULT_WINDOW_S, plans = conf.plans } }
  end
  local limits, has_zero, plan_names = {}, false, {}
  for i, l in ipairs(src) do
    local alg = ALG_CODE[l.algorithm or conf.algorithm]
    limits[i] = {
      alg = alg, window = l.window_s, limit = l.limit, plans = l.plans,
      -- Part of the key: limits of other windows or algorithms never share.
      tag = alg .. tostring(l.window_s),
      window_us = floor(l.window_s * 1e6 + 0.5),
      window_arg = format("%.0f", floor(l.window_s * 1e6 + 0.5)),   -- for the Redis script
    }
    if l.limit == 0 then has_zero = true end
    for name, v in pairs(l.plans or {}) do
      plan_names[name] = true
      if v == 0 then has_zero = true end
    end
  end
  local by_kind = BY_KIND[conf.by] or BY_HEADER
  local cc = {
    limits = limits,
    has_zero = has_zero,
    by = by_kind,
    header = by_kind == BY_HEADER and conf.by:sub(8) or nil,
    global = conf.scope == "global",
    bases = {},                 -- route name -> key prefix (scope: route)
    policy = POLICIES[conf.policy](),
    dict_name = conf.dict,
    redis_timeout_ms = conf.redis_timeout_ms,
    fault_tolerant = conf.fault_tolerant,
    headers = conf.headers,
    status = conf.status,
    policy_hdr = { [""] = policy_header(limits, nil) },
  }
  for name in pairs(plan_names) do cc.policy_hdr[name] = policy_header(limits, name) end
  compiled[conf] = cc
  return cc
end

---------------------------------------------------------------------------
-- faults: counted and logged, never silent
---------------------------------------------------------------------------

local worker_stats = { storage_errors = 0, allowed_on_error = 0, rejected_on_error = 0 }
local last_fault_log, suppressed = -FAULT_LOG_INTERVAL, 0

local function count(name)
  worker_stats[name] = worker_stats[name] + 1
  local dict = tg.shared.dict(STATS_DICT)
  if dict then dict:incr("tg:rl:stats:" .. name, 1, 0) end
end

-- severe: the storage answered with an error (not a timeout or an outage),
-- which points at a misconfiguration and is logged as an error.
local function fault(cc, err, severe, now)
  count("storage_errors")
  count(cc.fault_tolerant and "allowed_on_error" or "rejected_on_error")
  if now - last_fault_log >= FAULT_LOG_INTERVAL then
    local more = suppressed > 0 and (" (" .. suppressed .. " more since the last message)") or ""
    local log = severe and tg.log.err or tg.log.warn
    log(cc.fault_tolerant and "storage failed, allowing requests (fault_tolerant): "
        or "storage failed, rejecting requests with 503: ", err, more)
    last_fault_log, suppressed = now, 0
  else
    suppressed = suppressed + 1
  end
  if cc.fault_tolerant then return end
  set_header("Content-Type", "application/json")
  return tg.response.exit(503, '{"error":"Service Unavailable"}')
end

---------------------------------------------------------------------------
-- request
---------------------------------------------------------------------------

-- Identities carry their kind, so a consumer id never meets an IP.
local function identity(cc, consumer)
  local by = cc.by
  if by == BY_CONSUMER then
    local cid = consumer and consumer.id
    if cid ~= nil then return "c:" .. tostring(cid) end
  elseif by == BY_HEADER then
    local v = get_header(cc.header)
    if v ~= nil and v ~= "" then return "h:" .. v end
  elseif by == BY_ROUTE then
    return "-"
  elseif by == BY_PATH then
    return "p:" .. get_path()
  end
  return "ip:" .. get_client_ip()
end

-- A limit of 0 rejects without touching storage (and without dividing by
-- zero in GCRA): returns the longest window among the zero limits.
local function zero_window(cc, plan)
  local w
  for _, lim in ipairs(cc.limits) do
    if limit_of(lim, plan) == 0 and (w == nil or lim.window > w) then w = lim.window end
  end
  return w
end

local function access(conf, ctx)
  local cc = compiled[conf] or compile(conf)
  local consumer = ctx.consumer
  if type(consumer) ~= "table" then consumer = nil end
  local plan = consumer and consumer.plan
  if plan ~= nil then
    plan = tostring(plan)
    if cc.policy_hdr[plan] == nil then plan = nil end   -- unknown plan: default limits
  end

  local now = now_fn()
  local ok, L, rem, reset, retry
  local zw = cc.has_zero and zero_window(cc, plan)
  if zw then
    ok, L, rem, reset, retry = false, 0, 0, zw, zw
  else
    local base
    if cc.global then
      base = "tg:rl:g:"
    else
      local route = get_route_name() or ""
      base = cc.bases[route]
      if base == nil then
        base = "tg:rl:r:" .. route .. ":"
        cc.bases[route] = base
      end
    end
    ok, L, rem, reset, retry = cc.policy.check(cc, base, identity(cc, consumer), plan, now)
    if ok == nil then return fault(cc, L, rem, now) end
  end

  if cc.headers then
    local reset_s = ceil(reset - EPS)
    if reset_s < 0 then reset_s = 0 end
    set_header("X-RateLimit-Limit", L)
    set_header("X-RateLimit-Remaining", rem)
    set_header("X-RateLimit-Reset", ceil(now + reset - EPS))
    set_header("RateLimit-Policy", cc.policy_hdr[plan or ""])
    set_header("RateLimit-Limit", L)
    set_header("RateLimit-Remaining", rem)
    set_header("RateLimit-Reset", reset_s)
  end
  if ok then return end

  local after = ceil(retry - EPS)
  if after < 1 then after = 1 end
  set_header("Retry-After", after)
  set_header("Content-Type", "application/json")
  return tg.response.exit(cc.status, '{"error":"Too Many Requests","retry_after":' .. after .. '}')
end

-- GET /rate-limiting/stats on the admin listener: fault counters of the
-- whole instance (from the shared dict STATS_DICT, else this worker's).
local function stats()
  local out = {}
  local dict = tg.shared.dict(STATS_DICT)
  for name, v in pairs(worker_stats) do
    out[name] = dict and (dict:get("tg:rl:stats:" .. name) or 0) or v
  end
  out.scope = dict and "instance" or "worker"
  return 200, out
end

return {
  name = "rate-limiting",
  version = "1.0.0",
  -- After authentication (which sets ctx.consumer), before most others.
  priority = 900,
  schema = conf_schema,
  access = access,
  admin = { ["/rate-limiting/stats"] = function() return stats() end },
}
