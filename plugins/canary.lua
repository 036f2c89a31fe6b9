-- canary: splits a route's traffic between upstreams by weight, e.g. 90%
-- to payment-v1 and 10% to payment-v2, optionally sticky per client.
--
-- Without `sticky_by`, each worker deals requests out with nginx's smooth
-- weighted round robin, so every worker's split is exact to within one
-- request per cycle (a cycle is the sum of the weights) and the sides are
-- interleaved rather than bunched.
--
-- With `sticky_by` (consumer | ip | header:NAME | cookie:NAME), a 32-bit
-- hash of the key picks a point in [0, 1) and the cumulative weights cut
-- that interval into one slice per upstream: the same key lands on the same
-- upstream as long as the weights do not change, in every worker and every
-- gateway instance. Moving weight from the first upstream to the last only
-- moves the keys at the boundary (raising a 10% canary to 20% keeps the
-- first 10% where they were and adds the next 10%). A request without the
-- key (no consumer, no such header or cookie) falls back to the round
-- robin; `consumer` falls back to the client address.
--
-- `override_header` (e.g. X-Canary: payment-v2) pins a request to one of
-- the canary's own upstreams, for testing; any other value is ignored, so a
-- client cannot reach an upstream the canary does not list.
--
-- The chosen upstream is set with tg.upstream.set() and shows in the access
-- log's `upstream` field.
local tg = require "tollgate"
local bit = require "bit"

local type, ipairs, setmetatable, tostring = type, ipairs, setmetatable, tostring
local byte, sub, find, match = string.byte, string.sub, string.find, string.match
local bxor, band, rshift, lshift, tobit = bit.bxor, bit.band, bit.rshift, bit.lshift, bit.tobit
local get_header = tg.request.get_header
local get_client_ip = tg.request.get_client_ip
local upstream_set = tg.upstream.set

-- conf table -> { names, weights, cum (cumulative fractions), total,
-- current (round-robin state), by, key_name, override (set of names) }
local compiled = setmetatable({}, { __mode = "k" })

-- a * b mod 2^32 for 32-bit a, b, exact in doubles: split b in 16-bit
-- halves so no partial product exceeds 2^53.
local function mul32(a, b)
  local lo = band(b, 0xffff)
  local hi = rshift(b, 16)
  return tobit(a * lo + lshift(tobit(a * hi), 16))
end

-- FNV-1a over the bytes, then MurmurHash3's finaliser: FNV alone leaves
-- short keys that differ in their last byte ("user-1", "user-2") close
-- together in the high bits, which is what the slice comparison reads.
-- Returns a number in [0, 1).
local function hash01(s)
  local h = tobit(2166136261)
  for i = 1, #s do
    h = bxor(h, byte(s, i))
    h = tobit(lshift(h, 24) + mul32(h, 403))   -- * 16777619 = 2^24 + 403
  end
  h = bxor(h, rshift(h, 16))
  h = mul32(h, 0x85ebca6b)
  h = bxor(h, rshift(h, 13))
  h = mul32(h, 0xc2b2ae35)
  h = bxor(h, rshift(h, 16))
  if h < 0 then h = h + 4294967296 end
  return h / 4294967296
end

local function compile(conf)
  local c = compiled[conf]
  if c then return c end
  local n = #conf.upstreams
  c = { names = {}, weights = {}, cum = {}, current = {}, total = 0, n = n, override = {} }
  for i, u in ipairs(conf.upstreams) do
    c.names[i] = u.upstream
    c.weights[i] = u.weight
    c.current[i] = 0
    c.total = c.total + u.weight
    c.override[u.upstream] = true
  end
  local acc = 0
  for i = 1, n do
    acc = acc + c.weights[i]
    c.cum[i] = acc / c.total
  end
  c.cum[n] = 1   -- no rounding gap at the top
  local by = conf.sticky_by
  if by then
    local kind, name = match(by, "^(%a+):(.+)$")
    c.by = kind or by
    if kind == "header" then c.key_name = name
    elseif kind == "cookie" then c.key_name = name end
  end
  compiled[conf] = c
  return c
end

-- Smooth weighted round robin (nginx): add each weight to its current
-- value, take the largest, subtract the total from it.
local function round_robin(c)
  local cur, w = c.current, c.weights
  local best, best_v = 1, nil
  for i = 1, c.n do
    local v = cur[i] + w[i]
    cur[i] = v
    if best_v == nil or v > best_v then best, best_v = i, v end
  end
  cur[best] = cur[best] - c.total
  return c.names[best]
end

-- The value of cookie `name` in the Cookie header, or nil.
local function cookie(name)
  local h = get_header("cookie")
  if h == nil then return nil end
  local pos = 1
  for _ = 1, 200 do    -- cookies per header; the header itself is bounded by the core
    local s, e = find(h, name .. "=", pos, true)
    if not s then return nil end
    local before = s > 1 and sub(h, s - 1, s - 1) or ";"
    if s == 1 or before == ";" or before == " " then
      local v = match(h, "^([^;]*)", e + 1)
      return (match(v, "^%s*(.-)%s*$"))
    end
    pos = e + 1
  end
  return nil
end

local function sticky_key(c, ctx)
  local by = c.by
  if by == "ip" then return get_client_ip() end
  if by == "consumer" then
    local consumer = ctx.consumer
    local id = type(consumer) == "table" and consumer.id
    if id ~= nil then return "c:" .. tostring(id) end
    return get_client_ip()
  end
  if by == "header" then return get_header(c.key_name) end
  if by == "cookie" then return cookie(c.key_name) end
  return nil
end

local function choose(c, key)
  local p = hash01(key)
  local cum = c.cum
  for i = 1, c.n do
    if p < cum[i] then return c.names[i] end
  end
  return c.names[c.n]
end

local function access(conf, ctx)
  local c = compile(conf)
  local name
  if conf.override_header then
    local v = get_header(conf.override_header)
    if v and c.override[v] then name = v end
  end
  if not name and c.by then
    local key = sticky_key(c, ctx)
    if key and key ~= "" then name = choose(c, key) end
  end
  if not name then name = round_robin(c) end
  local ok, err = upstream_set(name)
  -- The names were checked against the config at load: this cannot fail
  -- unless the config and the worker disagree.
  if not ok then error(err) end
end

-- Upstream names are checked against the configuration being loaded, so
-- `tollgate -t` reports a typo with its YAML path.
local function known_upstream(name)
  local conf = tg.config()
  local ups = type(conf) == "table" and conf.upstreams
  if type(ups) ~= "table" then return true end   -- the core reports a missing section
  if ups[name] == nil then return nil, "unknown upstream \"" .. name .. "\"" end
  return true
end

local function check_upstreams(list)
  local seen = {}
  local total = 0
  for i, u in ipairs(list) do
    if seen[u.upstream] then
      return nil, "upstream \"" .. u.upstream .. "\" listed twice ([" .. (seen[u.upstream] - 1) .. "] and [" .. (i - 1) .. "])"
    end
    seen[u.upstream] = i
    total = total + u.weight
  end
  if total <= 0 then return nil, "at least one weight must be positive" end
  return true
end

local function check_sticky(v)
  if v == "consumer" or v == "ip" then return true end
  local kind, name = match(v, "^(%a+):(.+)$")
  if (kind == "header" and match(name, "^[%w!#$%%&'*+.^_`|~-]+$"))
     or (kind == "cookie" and match(name, "^[%w!#$%%&'*+.^_`|~-]+$")) then
    return true
  end
  return nil, "expected consumer, ip, header:NAME or cookie:NAME"
end

return {
  name = "canary",
  version = "1.0.0",
  -- Late in access: after authentication (sticky_by consumer needs
  -- ctx.consumer) and before circuit-breaker, which works on the targets
  -- of the upstream chosen here.
  priority = 30,
  schema = {
    type = "record",
    fields = {
      upstreams = {
        type = "array", required = true, min_len = 1, max_len = 64,
        elements = {
          type = "record",
          fields = {
            upstream = { type = "string", required = true, min_len = 1, check = known_upstream },
            weight = { type = "integer", required = true, min = 0, max = 1000000 },
          },
        },
        check = check_upstreams,
      },
      sticky_by = { type = "string", check = check_sticky },
      override_header = { type = "string", match = "^[%w!#$%%&'*+.^_`|~-]+$" },
    },
  },
  access = access,
}
