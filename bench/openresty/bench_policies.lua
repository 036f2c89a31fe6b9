-- bench/openresty/bench_policies.lua: the OpenResty contender's policies,
-- the same behaviour as the tollgate plugins of each scenario, written the
-- way an OpenResty user writes access_by_lua code (plain tables loaded in
-- init_by_lua, lua_shared_dict counters, ngx.req.set_header). Written for
-- this benchmark; see bench/README and docs/bench.md.
local cjson = require "cjson.safe"
local bench_jwt = require "bench_jwt"
local resp = require "bench_resp"

local ngx = ngx
local var, req, header = ngx.var, ngx.req, ngx.header
local floor, tostring = math.floor, tostring
local crc32 = ngx.crc32_short
local set_header, clear_header = req.set_header, req.clear_header

local _M = {}

local keys = {}          -- API key -> { id, plan }
local verifier           -- bench_jwt object
local REDIS_HOST, REDIS_PORT, REDIS_TIMEOUT_MS = "127.0.0.1", 6379, 200

local function reject(status, msg)
  ngx.status = status
  header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({ error = msg }))
  return ngx.exit(status)
end

local function read_file(path)
  local f = assert(io.open(path))
  local s = f:read("*a")
  f:close()
  return s
end

-- init_by_lua ------------------------------------------------------------

function _M.load_keys(path)
  for line in io.lines(path) do
    local key, id = line:match("^(%S+)%s+(%S+)")
    if key then keys[key] = { id = id, plan = "free" } end
  end
end

function _M.init_jwt(alg, secret_or_pem_path)
  local key = alg == "HS256" and secret_or_pem_path or read_file(secret_or_pem_path)
  verifier = assert(bench_jwt.new(alg, key))
end

function _M.init_redis(port)
  REDIS_PORT = tonumber(port)
end

-- access_by_lua ----------------------------------------------------------

function _M.key_auth()
  local key = var.http_x_api_key
  if not key then return reject(401, "API key required") end
  local c = keys[key]
  if not c then return reject(401, "Invalid API key") end
  clear_header("X-API-Key")
  set_header("X-Client-Id", c.id)
  set_header("X-Client-Plan", c.plan)
  ngx.ctx.consumer = c
end

function _M.jwt_auth()
  local auth = var.http_authorization
  if not auth or auth:sub(1, 7) ~= "Bearer " then return reject(401, "Missing token") end
  local claims = verifier:verify(auth:sub(8))
  if not claims then return reject(401, "Invalid or expired token") end
  clear_header("Authorization")
  set_header("X-User-Id", claims.sub)
end

local function limit_headers(limit, count)
  header["X-RateLimit-Limit"] = limit
  header["X-RateLimit-Remaining"] = count < limit and limit - count or 0
end

-- Fixed window in a lua_shared_dict: one incr per request.
function _M.ratelimit_local(limit, window, id)
  local key = id .. ":" .. floor(ngx.now() / window)
  local count = ngx.shared.ratelimit:incr(key, 1, 0, window)
  limit_headers(limit, count or 0)
  if count and count > limit then return reject(429, "Too Many Requests") end
end

-- Fixed window in Redis: INCR and EXPIRE NX pipelined, one round trip.
function _M.ratelimit_redis(limit, window, id)
  local key = "rl:" .. id .. ":" .. floor(ngx.now() / window)
  local r = resp.pipeline(REDIS_HOST, REDIS_PORT, REDIS_TIMEOUT_MS,
                          { "INCR", key }, { "EXPIRE", key, window, "NX" })
  if not r then return end                     -- fault tolerant: let it through
  local count = r[1]
  limit_headers(limit, count)
  if count > limit then return reject(429, "Too Many Requests") end
end

-- Canary: weight percent of the users (by a stable hash) go to "up2".
function _M.canary(user, weight)
  if user and crc32(user) % 100 < weight then
    var.ups = "up2"
  end
end

return _M
