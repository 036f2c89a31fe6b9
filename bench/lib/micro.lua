-- bench/lib/micro.lua (S0): turn the raw outputs of `openssl speed -mr`,
-- `redis-benchmark --csv` and ffi_vs_capi.lua into one JSON object of
-- microseconds per operation: the CPU budget each plugin starts from.
--   luajit bench/lib/micro.lua DIR FFI_JSON HTTP_PARSER_JSON
local cjson = require "cjson"

local dir, ffi_json, hp_json = arg[1], arg[2], arg[3]

local function read(name)
  local f = io.open(dir .. "/" .. name)
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

local function us(per_s)
  per_s = tonumber(per_s)
  if not per_s or per_s <= 0 then return cjson.null end
  return math.floor(1e6 / per_s * 1000 + 0.5) / 1000
end

local out = { crypto_us = {}, redis_us = {}, lua_call_ns = cjson.null, http_parser = cjson.null }

-- +F2:n:2048:sign/s:verify/s (RSA), +F4:n:256:sign/s:verify/s (ECDSA),
-- +F6:n:253:Ed25519:sign/s:verify/s (EdDSA).
local pk = read("pk.txt")
for bits, sign, verify in pk:gmatch("%+F2:%d+:(%d+):([%d.]+):([%d.]+)") do
  out.crypto_us["rsa" .. bits .. "_sign"] = us(sign)
  out.crypto_us["rsa" .. bits .. "_verify"] = us(verify)
end
for bits, sign, verify in pk:gmatch("%+F4:%d+:(%d+):([%d.]+):([%d.]+)") do
  if bits == "256" then
    out.crypto_us.ecdsap256_sign = us(sign)
    out.crypto_us.ecdsap256_verify = us(verify)
  end
end
for sign, verify in pk:gmatch("%+F6:%d+:%d+:Ed25519:([%d.]+):([%d.]+)") do
  out.crypto_us.ed25519_sign = us(sign)
  out.crypto_us.ed25519_verify = us(verify)
end
-- +H:blocksize then +F:n:hmac(sha256):bytes/s.
local hm = read("hmac.txt")
local block = tonumber(hm:match("%+H:(%d+)"))
local bps = tonumber(hm:match("%+F:%d+:hmac%(sha256%):([%d.]+)"))
if block and bps and bps > 0 then
  out.crypto_us["hmac_sha256_" .. block .. "B"] = us(bps / block)
end

-- "PING_INLINE","48123.45","0.015",... : one client, so 1/rps is one round trip.
for name, rps, avg, min, p50, p95, p99 in read("redis.csv"):gmatch(
    '"([%w_]+)","([%d.]+)","([%d.]+)","([%d.]+)","([%d.]+)","([%d.]+)","([%d.]+)"') do
  out.redis_us[name:lower()] = { round_trip = us(rps), p50 = tonumber(p50) * 1000, p99 = tonumber(p99) * 1000 }
end

if ffi_json and ffi_json ~= "null" then
  local ok, v = pcall(cjson.decode, ffi_json)
  if ok then out.lua_call_ns = v end
end

if hp_json and hp_json ~= "null" then
  local ok, v = pcall(cjson.decode, hp_json)
  if ok then out.http_parser = v end
end

io.write(cjson.encode(out), "\n")
