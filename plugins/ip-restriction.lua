-- ip-restriction: lets a request through or answers 403 by the client's IP
-- address, against allow and deny lists of addresses and CIDR networks
-- (IPv4 and IPv6).
--
-- The client address is the connection's peer, unless that peer is one of
-- `trusted_proxies`: then it is taken from X-Forwarded-For, walking from the
-- right (the entry the nearest proxy appended) past every trusted proxy to
-- the first address that is not one. Entries further left were written by
-- whoever sent the request and prove nothing. A client address that cannot
-- be parsed is refused (fail closed).
--
-- Deny wins over allow; with an allow list, anything not on it is refused.
-- The lists are parsed once per config (cached by conf table, weak keys),
-- and each set remembers the answer for addresses it has seen.
local tg = require "tollgate"
local cidr = require "tollgate.traffic.cidr"
local schema = require "tollgate.schema"

local type, setmetatable = type, setmetatable
local match, concat = string.match, table.concat
local get_client_ip = tg.request.get_client_ip
local get_headers = tg.request.get_headers
local exit = tg.response.exit

local FORBIDDEN = { error = "Forbidden" }
local MAX_XFF_HOPS = 32   -- X-Forwarded-For entries examined; a longer chain is refused

-- conf table -> { allow = set|nil, deny = set|nil, trusted = set|nil }
local compiled = setmetatable({}, { __mode = "k" })

local function entry_check(v)
  local fam, err = cidr.parse(v)
  if not fam then return nil, err end
  return true
end

local function ip_list()
  return { type = "array", elements = { type = "string", check = entry_check } }
end

local function compile(conf)
  local c = compiled[conf]
  if c then return c end
  c = {}
  -- Validated by the schema check at load, so these cannot fail here.
  if conf.allow then c.allow = cidr.new_set(conf.allow) end
  if conf.deny then c.deny = cidr.new_set(conf.deny) end
  if conf.trusted_proxies and #conf.trusted_proxies > 0 then
    c.trusted = cidr.new_set(conf.trusted_proxies)
  end
  compiled[conf] = c
  return c
end

-- One X-Forwarded-For entry without spaces or a port ("[::1]:80",
-- "192.0.2.1:8080"), as some proxies write them.
local function clean(entry)
  entry = match(entry, "^%s*(.-)%s*$")
  local v6 = match(entry, "^%[(.-)%]")
  if v6 then return v6 end
  local v4 = match(entry, "^([%d%.]+):%d+$")
  return v4 or entry
end

-- The address to judge: the peer, or the right-most untrusted address of
-- X-Forwarded-For when the peer is a trusted proxy.
local function client_address(c)
  local peer = get_client_ip()
  local trusted = c.trusted
  if not trusted or not trusted:contains(peer) then return peer end
  local xff = get_headers()["x-forwarded-for"]
  if xff == nil then return peer end
  if type(xff) == "table" then xff = concat(xff, ",") end
  -- Split into entries, then walk them right to left.
  local entries, n = {}, 0
  for e in (xff .. ","):gmatch("([^,]*),") do
    n = n + 1
    if n > MAX_XFF_HOPS then return nil end
    entries[n] = e
  end
  local addr = peer
  for i = n, 1, -1 do
    local e = clean(entries[i])
    if e ~= "" then
      addr = e
      if not trusted:contains(e) then return e end
    end
  end
  -- Every hop is trusted: the left-most is the best we know.
  return addr
end

local function access(conf, ctx)
  local c = compile(conf)
  local ip = client_address(c)
  if ip == nil then return exit(403, FORBIDDEN) end
  -- contains() is nil for something that is not an address: refused by
  -- either list.
  local deny = c.deny
  if deny and deny:contains(ip) ~= false then return exit(403, FORBIDDEN) end
  local allow = c.allow
  if allow and not allow:contains(ip) then return exit(403, FORBIDDEN) end
end

return {
  name = "ip-restriction",
  version = "1.0.0",
  -- Early: a refused address costs no authentication, no body, no Redis.
  priority = 3000,
  schema = {
    type = "record",
    fields = {
      allow = ip_list(),
      deny = ip_list(),
      trusted_proxies = ip_list(),
    },
    entity_checks = { schema.at_least_one_of({ "allow", "deny" }) },
  },
  access = access,
}
