-- tollgate.traffic.cidr: IPv4 and IPv6 addresses and networks, parsed once
-- at config time into sets that answer "is this address in one of them?"
-- without allocating for IPv4 and with one short string per prefix length
-- for IPv6.
--
--   local cidr = require "tollgate.traffic.cidr"
--   local set, err = cidr.new_set({ "10.0.0.0/8", "192.0.2.7", "2001:db8::/32" })
--   set:contains("10.1.2.3")   --> true
--
-- Parsing is strict (the model is Go's net/netip): IPv4 is exactly four
-- decimal octets without leading zeros (an "010" would be octal to some
-- tools and decimal to others), IPv6 follows RFC 4291 text forms including
-- "::" and an embedded IPv4 tail, zone ids ("%eth0") are refused, and a
-- network with host bits set ("10.0.0.1/8") is refused rather than silently
-- widened. An IPv4-mapped IPv6 address (::ffff:192.0.2.1, what a dual-stack
-- socket reports for an IPv4 client) is the IPv4 address, both in lists and
-- when matching.
--
-- Lookup: a set keeps, per family and per prefix length in use, a hash of
-- the masked networks, so a lookup costs one hash probe per distinct prefix
-- length (usually a handful) whatever the size of the list. IPv4 addresses
-- are 32-bit numbers (bit.band keys, no strings); IPv6 ones are 16-byte
-- strings masked by substring. Parsed client addresses are remembered in a
-- small per-set cache, so a returning client costs one table lookup.
local bit = require "bit"

local band, lshift, rshift, tobit = bit.band, bit.lshift, bit.rshift, bit.tobit
local byte, char, sub, find, match = string.byte, string.char, string.sub, string.find, string.match
local tonumber, type, ipairs, setmetatable = tonumber, type, ipairs, setmetatable
local floor = math.floor
local sort = table.sort

local _M = {}

local CACHE_MAX = 10000   -- remembered client addresses per set, then start over

-- Mask of the top `bits` bits of a 32-bit word, as a signed bit.* number.
local function mask32(bits)
  if bits == 0 then return 0 end
  return tobit(lshift(-1, 32 - bits))
end

-- "a.b.c.d" -> 32-bit number (signed, as bit.* returns), or nil.
local function parse_v4(s)
  local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local n = 0
  for _, part in ipairs({ a, b, c, d }) do
    if #part > 3 or (#part > 1 and byte(part, 1) == 48) then return nil end
    local v = tonumber(part)
    if v > 255 then return nil end
    n = n * 256 + v
  end
  return tobit(n)
end

-- IPv6 text -> 16-byte string, or nil.
local function parse_v6(s)
  if find(s, "%%") or #s < 2 or #s > 45 then return nil end
  -- An IPv4 tail counts as two groups.
  local v4tail
  local head = s
  local p = find(s, "[^:]*%.[^:]*$")
  if p then
    v4tail = parse_v4(sub(s, p))
    if not v4tail then return nil end
    head = sub(s, 1, p - 1)
    if head == "" or sub(head, -1) ~= ":" then return nil end
    if sub(head, -2) ~= "::" then head = sub(head, 1, -2) end
  end
  local dbl = find(head, "::", 1, true)
  if dbl and find(head, "::", dbl + 1, true) then return nil end
  local left, right = head, ""
  if dbl then left, right = sub(head, 1, dbl - 1), sub(head, dbl + 2) end
  local function groups(part, out)
    if part == "" then return out end
    for g in (part .. ":"):gmatch("([^:]*):") do
      if not match(g, "^%x%x?%x?%x?$") then return nil end
      out[#out + 1] = tonumber(g, 16)
    end
    return out
  end
  local lg = groups(left, {})
  local rg = groups(right, {})
  if not lg or not rg then return nil end
  local want = v4tail and 6 or 8
  local n = #lg + #rg
  if dbl then
    if n > want - 1 then return nil end
  elseif n ~= want then
    return nil
  end
  local all = {}
  for _, g in ipairs(lg) do all[#all + 1] = g end
  for _ = 1, want - n do all[#all + 1] = 0 end
  for _, g in ipairs(rg) do all[#all + 1] = g end
  if v4tail then
    all[7] = band(rshift(v4tail, 16), 0xffff)
    all[8] = band(v4tail, 0xffff)
  end
  local bytes = {}
  for i = 1, 8 do
    bytes[2 * i - 1] = rshift(all[i], 8)
    bytes[2 * i] = band(all[i], 0xff)
  end
  return char(unpack(bytes))
end

local V4_MAPPED = ("\0"):rep(10) .. "\255\255"

-- Parses an address. Returns 4, number (IPv4) or 6, 16-byte string; nil on
-- error. IPv4-mapped IPv6 addresses come back as IPv4.
local function parse_ip(s)
  if type(s) ~= "string" then return nil end
  local v4 = parse_v4(s)
  if v4 then return 4, v4 end
  local v6 = parse_v6(s)
  if not v6 then return nil end
  if sub(v6, 1, 12) == V4_MAPPED then
    local a, b, c, d = byte(v6, 13, 16)
    return 4, tobit(((a * 256 + b) * 256 + c) * 256 + d)
  end
  return 6, v6
end
_M.parse_ip = parse_ip

-- The first `bits` bits of a 16-byte string, the rest of the last byte
-- zeroed (the hash key of an IPv6 network).
local function prefix6(bin, bits)
  local full = floor(bits / 8)
  local rest = bits % 8
  if rest == 0 then return sub(bin, 1, full) end
  return sub(bin, 1, full) .. char(band(byte(bin, full + 1), lshift(0xff, 8 - rest)))
end

-- Parses "addr" or "addr/len". Returns family, network, bits; nil, err.
function _M.parse(s)
  if type(s) ~= "string" then return nil, "expected a string" end
  local addr, len = match(s, "^([^/]+)/(%d+)$")
  if not addr then
    if find(s, "/", 1, true) then return nil, "invalid network \"" .. s .. "\"" end
    addr = s
  end
  local fam, ip = parse_ip(addr)
  if not fam then return nil, "invalid IP address \"" .. addr .. "\"" end
  -- A mapped IPv6 network (::ffff:10.0.0.0/104) is the IPv4 network /8.
  local max = fam == 4 and 32 or 128
  local bits = max
  if len then
    if #len > 3 or (#len > 1 and byte(len, 1) == 48) then return nil, "invalid prefix length in \"" .. s .. "\"" end
    bits = tonumber(len)
    if fam == 4 and not parse_v4(addr) then bits = bits - 96 end
    if bits < 0 or bits > max then return nil, "invalid prefix length in \"" .. s .. "\"" end
  end
  if fam == 4 then
    if band(ip, mask32(bits)) ~= ip then
      return nil, "\"" .. s .. "\" has host bits set"
    end
  elseif prefix6(ip, bits) .. ("\0"):rep(16 - #prefix6(ip, bits)) ~= ip then
    return nil, "\"" .. s .. "\" has host bits set"
  end
  return fam, ip, bits
end

local set_mt = {}
set_mt.__index = set_mt

-- Builds a set from a list of addresses and networks. Returns the set, or
-- nil, err, index (1-based) of the first bad entry.
function _M.new_set(list)
  local self = { v4 = {}, v4_lens = {}, v6 = {}, v6_lens = {}, cache = {}, ncache = 0 }
  for i, s in ipairs(list or {}) do
    local fam, ip, bits = _M.parse(s)
    if not fam then return nil, ip, i end
    local nets, lens = self.v4, self.v4_lens
    local key = ip
    if fam == 6 then
      nets, lens = self.v6, self.v6_lens
      key = prefix6(ip, bits)
    end
    if not nets[bits] then
      nets[bits] = {}
      lens[#lens + 1] = bits
    end
    nets[bits][key] = true
  end
  -- Longest prefixes first: the most specific entry answers (only a
  -- yes/no is returned, so the order changes nothing but the work done
  -- for host entries, the most common kind).
  sort(self.v4_lens, function(a, b) return a > b end)
  sort(self.v6_lens, function(a, b) return a > b end)
  self.v4_masks = {}
  for i, bits in ipairs(self.v4_lens) do self.v4_masks[i] = mask32(bits) end
  return setmetatable(self, set_mt)
end

local function lookup(self, fam, ip)
  if fam == 4 then
    local lens, masks, nets = self.v4_lens, self.v4_masks, self.v4
    for i = 1, #lens do
      if nets[lens[i]][band(ip, masks[i])] then return true end
    end
    return false
  end
  local lens, nets = self.v6_lens, self.v6
  for i = 1, #lens do
    if nets[lens[i]][prefix6(ip, lens[i])] then return true end
  end
  return false
end

-- true / false for an address string; nil, "invalid address" when `s` is
-- not an address.
function set_mt:contains(s)
  local hit = self.cache[s]
  if hit ~= nil then return hit end
  local fam, ip = parse_ip(s)
  if not fam then return nil, "invalid address" end
  hit = lookup(self, fam, ip)
  if self.ncache >= CACHE_MAX then
    self.cache, self.ncache = {}, 0
  end
  self.cache[s] = hit
  self.ncache = self.ncache + 1
  return hit
end

return _M
