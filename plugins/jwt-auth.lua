-- jwt-auth: authenticates requests carrying a JSON Web Token (JWS compact,
-- HS*/RS*/PS*/ES*/EdDSA) and forwards the identity to the upstream as
-- headers it can trust. See docs/plugins/jwt-auth.md.
--
-- Where the verification key comes from, one of (mutually exclusive):
--   secret / public_key / public_key_file   one key for every token
--   jwks_file / jwks_url                    the token's `kid` picks a key
--   none of them                            the consumer whose jwt.key
--                                           equals the token's key_claim
--
-- Per request, for a token seen before (cache hit) the cost is one SHA-256
-- of the token, one LRU lookup and the exp/nbf comparison; only a new token
-- pays for base64url, JSON and the signature (RS256 ~20 µs, ES256 ~60 µs).
-- Everything derived from the config (keys, claim rules, header lists, the
-- LRU) is built once per config table and kept in a weak-keyed table.
--
-- Failures answer 401 with `WWW-Authenticate: Bearer` and one of two fixed
-- bodies; the reason goes to the error log at info level, never the token.

local tg      = require "tollgate"
local schema  = require "tollgate.schema"
local jwt     = require "tollgate.auth.jwt"
local keys    = require "tollgate.auth.keys"
local lru     = require "tollgate.auth.lru"
local util    = require "tollgate.auth.util"
local crypto  = require "tollgate.crypto"

local type, tostring, tonumber, ipairs, pairs, setmetatable = type, tostring, tonumber, ipairs, pairs, setmetatable
local concat = table.concat
local find, lower, format = string.find, string.lower, string.format
local floor = math.floor
local sha256 = crypto.sha256
local decode, verify, check_claims, check_times = jwt.decode, jwt.verify, jwt.check_claims, jwt.check_times
local MAX_TOKEN_BYTES = jwt.MAX_TOKEN_BYTES

local NAME = "jwt-auth"

-- A verified token without `exp` is re-verified after this long, so a key
-- removed from the configuration or the key set stops working within it.
local NO_EXP_TTL_S = 300

local MISSING = { error = "Missing token" }
local INVALID = { error = "Invalid or expired token" }
local CHALLENGE = { ["WWW-Authenticate"] = "Bearer" }

local DEFAULT_HEADERS = { sub = "X-User-Id", roles = "X-User-Roles", tenant_id = "X-Tenant-Id" }

-- A header name (RFC 9110 token).
local HEADER_NAME = "^[%w!#%$%%&'%*%+%.%^_`|~%-]+$"

------------------------------------------------------------------------------
-- schema
------------------------------------------------------------------------------

local function string_or_list(v)
  if type(v) == "string" then
    if v == "" then
      return nil, "must not be empty"
    end
    return true
  end
  if type(v) == "table" and not schema.is_null(v) and #v > 0 then
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if n == #v then
      for _, x in ipairs(v) do
        if type(x) ~= "string" or x == "" then
          return nil, "expected a string or a list of strings"
        end
      end
      return true
    end
  end
  return nil, "expected a string or a list of strings"
end

-- The single configured key must verify at least one allowed algorithm.
local function fits_any(key, algorithms)
  for _, a in ipairs(algorithms or jwt.ALG_NAMES) do
    if jwt.key_fits(key, a) then
      return true
    end
  end
  return nil, "cannot verify any of the allowed algorithms"
end

local function check_secret(v, conf)
  local key, err = keys.secret(v, conf.secret_base64)
  if not key then
    return nil, err
  end
  return fits_any(key, conf.algorithms)
end

local function check_pem(v, conf)
  local key, err = keys.pem(v)
  if not key then
    return nil, err
  end
  return fits_any(key, conf.algorithms)
end

local function check_pem_file(v, conf)
  local key, err = keys.pem_file(v)
  if not key then
    return nil, err
  end
  return fits_any(key, conf.algorithms)
end

local function check_jwks_file(v)
  local set, err = keys.jwks_file(v)
  if not set then
    return nil, err
  end
  return true
end

local schema_def = {
  type = "record",
  fields = {
    -- Where the token is read from, in this order.
    header = { type = "string", default = "Authorization", match = HEADER_NAME },
    cookie = { type = "string", min_len = 1 },
    query_param = { type = "string", min_len = 1 },
    algorithms = { type = "array", min_len = 1, elements = { type = "string", one_of = jwt.ALG_NAMES } },
    -- Keys.
    secret = { type = "string", min_len = 1, check = check_secret },
    secret_base64 = { type = "boolean", default = false },
    public_key = { type = "string", min_len = 1, check = check_pem },
    public_key_file = { type = "string", min_len = 1, check = check_pem_file },
    jwks_file = { type = "string", min_len = 1, check = check_jwks_file },
    jwks_url = { type = "string", match = "^https?://[^%s]+$" },
    jwks_refresh_s = { type = "number", default = 300, gt = 0 },
    jwks_min_refetch_s = { type = "number", default = 10, min = 0 },
    jwks_timeout_ms = { type = "integer", default = 2000, min = 1 },
    key_claim = { type = "string", default = "iss", min_len = 1 },
    -- Claims.
    leeway_s = { type = "number", default = 0, min = 0 },
    issuer = { type = "any", check = string_or_list },
    audience = { type = "any", check = string_or_list },
    required_claims = { type = "array", default = {}, elements = { type = "string", min_len = 1 } },
    -- What the upstream gets.
    claims_to_headers = { type = "map", keys = { type = "string", min_len = 1 },
                          values = { type = "string", match = HEADER_NAME } },
    plan_claim = { type = "string", min_len = 1 },
    keep_token = { type = "boolean", default = false },
    cache_size = { type = "integer", default = 10000, min = 0 },
  },
  entity_checks = {
    schema.mutually_exclusive{ "secret", "public_key", "public_key_file", "jwks_file", "jwks_url" },
  },
}

------------------------------------------------------------------------------
-- per-config state
------------------------------------------------------------------------------

local states = setmetatable({}, { __mode = "k" })   -- conf -> state

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do
    s[v] = true
  end
  return s
end

-- Built once per conf table (the validated copy the runtime passes to
-- every request of that route). Keys come from tollgate.auth.keys, where
-- the schema checks already parsed them.
local function build_state(conf)
  local st = {
    allowed = set_of(conf.algorithms or jwt.ALG_NAMES),
    rules = jwt.compile_claim_rules(conf),
    cache = conf.cache_size > 0 and lru.new(conf.cache_size) or nil,
    bearer = lower(conf.header) == "authorization",
  }
  if conf.secret then
    st.key = assert(keys.secret(conf.secret, conf.secret_base64))
  elseif conf.public_key then
    st.key = assert(keys.pem(conf.public_key))
  elseif conf.public_key_file then
    st.key = assert(keys.pem_file(conf.public_key_file))
  elseif conf.jwks_file then
    st.jwks_keys = assert(keys.jwks_file(conf.jwks_file))
  elseif conf.jwks_url then
    st.jwks = require("tollgate.auth.jwks").get(conf.jwks_url, {
      refresh_s = conf.jwks_refresh_s, min_refetch_s = conf.jwks_min_refetch_s,
      timeout_ms = conf.jwks_timeout_ms,
    })
  else
    st.consumers = require "tollgate.consumers"
  end
  -- Identity headers: claim -> header, sorted for a stable order upstream.
  local map = conf.claims_to_headers or DEFAULT_HEADERS
  local pairs_list, names = {}, {}
  for claim, header in pairs(map) do
    pairs_list[#pairs_list + 1] = { claim = claim, header = header }
  end
  table.sort(pairs_list, function(a, b) return a.header < b.header end)
  for i, p in ipairs(pairs_list) do
    names[i] = p.header
  end
  st.identity = pairs_list
  -- Cleared on every request before anything else: the configured names
  -- and the defaults (an upstream may still trust X-User-Id after an
  -- operator remapped sub elsewhere), with their underscore spellings.
  for _, h in pairs(DEFAULT_HEADERS) do
    names[#names + 1] = h
  end
  table.sort(names)
  st.strip = util.spoofable(names)
  states[conf] = st
  return st
end

------------------------------------------------------------------------------
-- request
------------------------------------------------------------------------------

local function reject(body, reason)
  -- Reasons are fixed strings of this plugin and jwt.lua; none contains the
  -- token or a header value.
  tg.log.info("rejected: ", reason)
  return tg.response.exit(401, body, CHALLENGE)
end

-- The token and where it came from ("header", "cookie", "query"), or nil.
local function extract(conf, st)
  local v = tg.request.get_header(conf.header)
  if v ~= nil then
    -- "Bearer" is case-insensitive (RFC 9110 11.1); other configured
    -- headers may carry the bare token too.
    local scheme, rest = v:match("^%s*(%S+)%s+(%S+)%s*$")
    if scheme and lower(scheme) == "bearer" then
      return rest, "header"
    end
    if not st.bearer then
      local bare = v:match("^%s*(%S+)%s*$")
      if bare then
        return bare, "header"
      end
    end
  end
  if conf.cookie then
    local c = util.get_cookie(tg.request.get_header("Cookie"), conf.cookie)
    if c and c ~= "" then
      return c, "cookie"
    end
  end
  if conf.query_param then
    local q = tg.request.get_query_arg(conf.query_param)
    if type(q) == "string" and q ~= "" then
      return q, "query"
    end
  end
  return nil
end

-- A claim as a header value: strings as they are, numbers and booleans
-- printed, lists joined with ","; anything else (objects, nested lists,
-- control characters) is left out.
local function header_value(v)
  local t = type(v)
  if t == "string" then
    return v
  elseif t == "number" then
    if v == floor(v) and v > -2^53 and v < 2^53 then
      return format("%d", v)
    end
    return tostring(v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    local parts = {}
    for i, x in ipairs(v) do
      local s = type(x) ~= "table" and header_value(x)
      if not s or find(s, ",", 1, true) then
        return nil
      end
      parts[i] = s
    end
    return concat(parts, ",")
  end
  return nil
end

-- Key and consumer for a decoded token, or nil, reason.
local function select_key(st, conf, tok)
  if st.key then
    return st.key
  end
  if st.jwks_keys or st.jwks then
    local kid = tok.kid
    if kid == nil then
      return nil, "no kid in the token"
    end
    if st.jwks_keys then
      local k = st.jwks_keys[kid]
      if not k then
        return nil, "unknown kid"
      end
      return k
    end
    return st.jwks:key(kid)
  end
  local name = tok.claims[conf.key_claim]
  if type(name) ~= "string" then
    return nil, "no " .. conf.key_claim .. " claim"
  end
  local consumer, key = st.consumers.by_jwt_key(name)
  if not consumer then
    return nil, "no consumer for this " .. conf.key_claim
  end
  return key, consumer
end

-- Verifies a token not in the cache; returns the cache entry or nil, reason.
local function verify_token(st, conf, token, now)
  local tok, err = decode(token)
  if not tok then
    return nil, err
  end
  if not st.allowed[tok.alg] then
    return nil, "alg not allowed"
  end
  local key, consumer = select_key(st, conf, tok)
  if not key then
    return nil, consumer
  end
  local ok
  ok, err = verify(tok, key)
  if not ok then
    return nil, err
  end
  local claims = tok.claims
  local exp, nbf
  ok, exp, nbf = check_claims(claims, st.rules, now)
  if not ok then
    return nil, exp
  end
  if consumer == nil then
    -- Later plugins put the id and plan into headers and keys (rate
    -- limiting, logging): only header-safe strings become an identity.
    local sub = claims.sub
    if type(sub) == "string" and sub ~= "" and util.valid_header_value(sub) then
      consumer = { id = sub }
      local plan = conf.plan_claim and claims[conf.plan_claim]
      if type(plan) == "string" and plan ~= "" and util.valid_header_value(plan) then
        consumer.plan = plan
      end
    end
  end
  -- The identity headers are computed once per token, not per request.
  local headers = {}
  for _, p in ipairs(st.identity) do
    local v = claims[p.claim]
    if v ~= nil then
      local s = header_value(v)
      if s and s ~= "" and util.valid_header_value(s) then
        headers[#headers + 1] = p.header
        headers[#headers + 1] = s
      end
    end
  end
  return { exp = exp, nbf = nbf, consumer = consumer, claims = claims, headers = headers }
end

local function access(conf, ctx)
  local st = states[conf] or build_state(conf)
  local request = tg.request

  for i = 1, #st.strip do
    request.clear_header(st.strip[i])
  end

  local token, from = extract(conf, st)
  if token == nil then
    return reject(MISSING, "no token")
  end
  if #token > MAX_TOKEN_BYTES then
    return reject(INVALID, "token too large")
  end

  local now = tg.now()
  local cache = st.cache
  local id = cache and sha256(token)
  local entry = cache and cache:get(id, now)
  if entry then
    local ok, err = check_times(entry.exp, entry.nbf, now, st.rules.leeway)
    if not ok then
      cache:delete(id)
      return reject(INVALID, err)
    end
  else
    local err
    entry, err = verify_token(st, conf, token, now)
    if not entry then
      return reject(INVALID, err)
    end
    if cache then
      local ttl = entry.exp and (entry.exp + st.rules.leeway - now) or NO_EXP_TTL_S
      cache:set(id, entry, ttl, now)
    end
  end

  -- ctx["jwt-auth"].claims for later plugins; the cache entry itself,
  -- shared by every request with this token: read it, never change it.
  ctx.consumer = entry.consumer
  ctx[NAME] = entry
  local h = entry.headers
  for i = 1, #h, 2 do
    request.set_header(h[i], h[i + 1])
  end

  if from == "header" then
    if conf.keep_token then
      -- One value upstream, the one verified, even if the client repeated
      -- the header.
      request.set_header(conf.header, request.get_header(conf.header))
    else
      request.clear_header(conf.header)
    end
  end
  if not conf.keep_token then
    if conf.query_param then
      util.remove_query_arg(request, conf.query_param)
    end
    if conf.cookie then
      local c, removed = util.strip_cookie(request.get_header("Cookie"), conf.cookie)
      if removed then
        if c then request.set_header("Cookie", c) else request.clear_header("Cookie") end
      end
    end
  end
end

-- Starts the background key-set refresh for every jwks_url of the config
-- as soon as the worker starts, so the first requests find keys ready. The
-- validated confs are not reachable from here, so the raw config is read;
-- build_state() later gets the same fetcher by URL.
local function init_worker()
  local cfg = tg.config()
  if type(cfg) ~= "table" then
    return
  end
  local jwks = require "tollgate.auth.jwks"
  local function start(pc)
    if type(pc) == "table" and type(pc.jwks_url) == "string" then
      jwks.get(pc.jwks_url, {
        refresh_s = tonumber(pc.jwks_refresh_s), min_refetch_s = tonumber(pc.jwks_min_refetch_s),
        timeout_ms = tonumber(pc.jwks_timeout_ms),
      })
    end
  end
  if type(cfg.plugins) == "table" then
    start(cfg.plugins[NAME])
  end
  if type(cfg.routes) == "table" then
    for _, r in ipairs(cfg.routes) do
      if type(r) == "table" and type(r.plugins) == "table" then
        start(r.plugins[NAME])
      end
    end
  end
end

return {
  name = NAME,
  version = "1.0.0",
  -- Before rate-limiting (~910), which reads ctx.consumer.plan; Kong's
  -- jwt priority.
  priority = 1450,
  schema = schema_def,
  init_worker = init_worker,
  access = access,
}
