-- key-auth: authenticates requests by an API key, sent in a header
-- (X-API-Key by default) or, only when enabled, a query parameter. See
-- docs/plugins/key-auth.md.
--
-- Key sources, in order:
--   1. the consumers of the config (`consumers[].api_keys`), looked up by
--      the key's SHA-256 (so hashed keys and plaintext ones share one
--      index) and, for plaintext keys, compared in constant time;
--   2. with `redis_lookup: true`, Redis key `apikey:<sha256 hex>` holding
--      the consumer as JSON ({"id":..,"plan":..,"active":true}), cached
--      per worker in an LRU, answers "no such key" included (for a shorter
--      time), so a flood of wrong keys costs one Redis round trip per
--      distinct key per negative_ttl_s, not one per request.
-- When Redis cannot answer, `fail: closed` (default) answers 503, `fail:
-- open` lets the request through without a consumer.
--
-- The key never reaches a log line: it is hashed before anything else
-- looks at it, and the core never logs query strings or header values.

local tg     = require "tollgate"
local lru    = require "tollgate.auth.lru"
local util   = require "tollgate.auth.util"
local crypto = require "tollgate.crypto"
local consumers = require "tollgate.consumers"

local type, tostring, setmetatable = type, tostring, setmetatable
local sha256_hex = crypto.sha256_hex

local NAME = "key-auth"

local REQUIRED = { error = "API key required" }
local INVALID = { error = "Invalid API key" }
local UNAVAILABLE = { error = "Service Unavailable" }

-- The negative-cache marker (a key Redis does not know, or an inactive one).
local UNKNOWN = setmetatable({}, { __tostring = function() return "unknown key" end })

local HEADER_NAME = "^[%w!#%$%%&'%*%+%.%^_`|~%-]+$"
local IDENTITY = { "X-Client-Id", "X-Client-Plan" }

local schema_def = {
  type = "record",
  fields = {
    header = { type = "string", default = "X-API-Key", match = HEADER_NAME },
    query_param = { type = "string", min_len = 1 },
    hide_credentials = { type = "boolean", default = true },
    redis_lookup = { type = "boolean", default = false },
    redis_timeout_ms = { type = "integer", min = 1 },
    cache_ttl_s = { type = "number", default = 300, gt = 0 },
    negative_ttl_s = { type = "number", default = 10, min = 0 },
    cache_size = { type = "integer", default = 10000, min = 1 },
    fail = { type = "string", default = "closed", one_of = { "closed", "open" } },
  },
}

------------------------------------------------------------------------------
-- per-config state
------------------------------------------------------------------------------

local states = setmetatable({}, { __mode = "k" })   -- conf -> state
local STRIP = util.spoofable(IDENTITY)

local function state_of(conf)
  local st = states[conf]
  if st == nil then
    st = {
      cache = conf.redis_lookup and lru.new(conf.cache_size) or nil,
      redis_opts = { timeout_ms = conf.redis_timeout_ms },
    }
    states[conf] = st
  end
  return st
end

------------------------------------------------------------------------------
-- Redis lookup
------------------------------------------------------------------------------

-- The consumer a Redis value describes, or UNKNOWN.
local function parse_consumer(value)
  local c = tg.json.decode(value)
  if type(c) ~= "table" or type(c.id) ~= "string" or c.id == "" then
    tg.log.warn("redis value of an API key is not a consumer object; key treated as unknown")
    return UNKNOWN
  end
  if c.active == false then
    return UNKNOWN
  end
  local plan = type(c.plan) == "string" and c.plan ~= "" and c.plan or nil
  if not util.valid_header_value(c.id) or (plan and not util.valid_header_value(plan)) then
    tg.log.warn("redis value of an API key has control characters in id or plan; key treated as unknown")
    return UNKNOWN
  end
  return { id = c.id, plan = plan }
end

-- consumer | UNKNOWN | nil, err (Redis could not answer).
local function redis_lookup(st, conf, hash)
  local now = tg.now()
  local cache = st.cache
  local hit = cache:get(hash, now)
  if hit ~= nil then
    return hit
  end
  local red, err = tg.redis(st.redis_opts)
  if not red then
    return nil, err or "redis unavailable"
  end
  local value
  value, err = red:call("GET", "apikey:" .. hash)
  if value == nil or value == false then
    return nil, err or "redis error"
  end
  local consumer
  if value == red.null or type(value) ~= "string" then
    consumer = UNKNOWN
  else
    consumer = parse_consumer(value)
  end
  -- tg.now() again: the call yielded for a round trip.
  now = tg.now()
  if consumer == UNKNOWN then
    if conf.negative_ttl_s > 0 then
      cache:set(hash, UNKNOWN, conf.negative_ttl_s, now)
    end
  else
    cache:set(hash, consumer, conf.cache_ttl_s, now)
  end
  return consumer
end

------------------------------------------------------------------------------
-- request
------------------------------------------------------------------------------

local function access(conf, ctx)
  local request = tg.request
  for i = 1, #STRIP do
    request.clear_header(STRIP[i])
  end

  local key = request.get_header(conf.header)
  local from_header = key ~= nil and key ~= ""
  if not from_header and conf.query_param then
    key = request.get_query_arg(conf.query_param)
  end
  -- The query parameter never goes upstream, whichever way this ends.
  if conf.query_param then
    util.remove_query_arg(request, conf.query_param)
  end
  if type(key) ~= "string" or key == "" then
    tg.log.info("rejected: no API key")
    return tg.response.exit(401, REQUIRED)
  end

  local hash = sha256_hex(key)
  local consumer = consumers.by_api_key(key, hash)
  if consumer == nil and conf.redis_lookup then
    local err
    consumer, err = redis_lookup(state_of(conf), conf, hash)
    if consumer == nil then
      if conf.fail == "open" then
        tg.log.warn("redis lookup failed (", tostring(err), "); fail open: request passes without a consumer")
      else
        tg.log.warn("redis lookup failed (", tostring(err), "); fail closed")
        return tg.response.exit(503, UNAVAILABLE)
      end
    elseif consumer == UNKNOWN then
      consumer = false
    end
  end
  if consumer == false or (consumer == nil and not conf.redis_lookup) then
    tg.log.info("rejected: unknown API key")
    return tg.response.exit(401, INVALID)
  end

  if consumer then
    ctx.consumer = consumer
    request.set_header("X-Client-Id", consumer.id)
    if consumer.plan then
      request.set_header("X-Client-Plan", consumer.plan)
    end
  end
  if from_header and conf.hide_credentials then
    request.clear_header(conf.header)
  end
end

return {
  name = NAME,
  version = "1.0.0",
  -- Before rate-limiting (~910), which reads ctx.consumer.plan; Kong's
  -- key-auth priority.
  priority = 1250,
  schema = schema_def,
  access = access,
}
