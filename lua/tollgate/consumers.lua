-- tollgate.consumers: the top-level `consumers:` list of the configuration,
-- shared by the authentication plugins (key-auth, jwt-auth) and read by
-- rate-limiting through ctx.consumer.plan.
--
--   consumers:
--     - id: alice
--       plan: pro
--       api_keys: ["sk_live_abc", { sha256: "<64 hex>" }]
--       jwt: { key: alice-issuer, algorithm: HS256, secret: "..." }
--
-- The core keeps this section raw; the runtime calls check() at every
-- config load (start, `tollgate -t`, reload), which validates each consumer,
-- reports errors with their YAML path ("consumers[2].jwt.algorithm: ..."),
-- parses every JWT key, and builds the lookup indexes once, keyed by the
-- list table (the same table tg.config().consumers returns), so requests
-- only do hash lookups.
--
-- What a request gets as ctx.consumer is a small public table { id, plan },
-- one per consumer, shared by every request: never the keys or secrets,
-- and never to be modified.

local schema = require "tollgate.schema"
local jwt    = require "tollgate.auth.jwt"
local keys   = require "tollgate.auth.keys"
local crypto = require "tollgate.crypto"

local type, ipairs, pairs, tostring, setmetatable = type, ipairs, pairs, tostring, setmetatable
local lower, find = string.lower, string.find
local sha256_hex = crypto.sha256_hex
local constant_time_eq = crypto.constant_time_eq

local _M = {}

-- raw consumers list -> index. Weak keys: an old config's index goes with
-- its config table.
local indexes = setmetatable({}, { __mode = "k" })
local EMPTY_LIST = {}

local function is_null(v)
  return v == nil or schema.is_null(v)
end

------------------------------------------------------------------------------
-- schema
------------------------------------------------------------------------------

-- An API key as configured: a plaintext string, or { sha256 = hex }.
local function check_api_key(v)
  if type(v) == "string" then
    if v == "" then
      return nil, "must not be empty"
    end
    return true
  end
  if type(v) == "table" and not schema.is_null(v) then
    for k in pairs(v) do
      if k ~= "sha256" then
        return nil, "unknown key " .. tostring(k) .. " (expected a string or { sha256: hex })"
      end
    end
    local h = v.sha256
    if type(h) ~= "string" or #h ~= 64 or find(h, "[^%x]") then
      return nil, "sha256 must be 64 hex digits"
    end
    return true
  end
  return nil, "expected a string or { sha256: hex }"
end

-- Which key material fits depends on the algorithm, so these checks read
-- their siblings (checks run after every field of the record is
-- validated). A family mismatch is reported on `algorithm`; a key that does
-- not parse, or does not fit the algorithm, on the key's own field.
local function check_family(alg, rec)
  local hs = jwt.ALGS[alg].family == "HS"
  if rec.secret and (rec.public_key or rec.public_key_file) then
    return true   -- two kinds of key: only_one_of says so
  end
  if rec.secret and not hs then
    return nil, alg .. " needs public_key or public_key_file, not a secret"
  end
  if (rec.public_key or rec.public_key_file) and hs then
    return nil, alg .. " needs a secret, not a public key"
  end
  return true
end

-- The algorithm the key is checked against, or nil when `algorithm` itself
-- is wrong (already reported there).
local function alg_of(rec, want_hs)
  local alg = rec.algorithm
  local info = alg and jwt.ALGS[alg]
  if info and (info.family == "HS") == want_hs then
    return alg
  end
  return nil
end

local function check_secret(v, rec)
  local alg = alg_of(rec, true)
  if alg then
    local key, err = keys.secret(v, rec.secret_base64, alg)
    if not key then
      return nil, err
    end
  end
  return true
end

local function check_pem(v, rec)
  local alg = alg_of(rec, false)
  if alg then
    local key, err = keys.pem(v, alg)
    if not key then
      return nil, err
    end
  end
  return true
end

local function check_pem_file(v, rec)
  local alg = alg_of(rec, false)
  if alg then
    local key, err = keys.pem_file(v, alg)
    if not key then
      return nil, err
    end
  end
  return true
end

local JWT_DEF = {
  type = "record",
  fields = {
    key = { type = "string", min_len = 1,
            description = "matched against the token's key_claim (default: the consumer id)" },
    algorithm = { type = "string", default = "HS256", one_of = jwt.ALG_NAMES, check = check_family },
    secret = { type = "string", min_len = 1, check = check_secret },
    secret_base64 = { type = "boolean", default = false },
    public_key = { type = "string", min_len = 1, check = check_pem },
    public_key_file = { type = "string", min_len = 1, check = check_pem_file },
  },
  entity_checks = { schema.only_one_of{ "secret", "public_key", "public_key_file" } },
}

-- Ids and plans travel upstream as header values (X-Client-Id, ...).
local function check_header_safe(v)
  if find(v, "[%z\1-\8\10-\31\127]") then
    return nil, "must not contain control characters"
  end
  return true
end

local CONSUMER_DEF = {
  type = "record",
  fields = {
    id = { type = "string", required = true, min_len = 1, check = check_header_safe },
    plan = { type = "string", min_len = 1, check = check_header_safe },
    api_keys = { type = "array", elements = { type = "any", check = check_api_key } },
    jwt = JWT_DEF,
  },
}

local LIST_DEF = { type = "array", elements = CONSUMER_DEF }

------------------------------------------------------------------------------
-- indexes
------------------------------------------------------------------------------

local function empty_index()
  return { by_id = {}, by_key_hash = {}, by_jwt_key = {}, n = 0 }
end

-- Builds the lookup tables from the validated list; appends an error for
-- every ambiguity (same id, same API key, same jwt key twice).
local function build_index(list, path, errs)
  local idx = empty_index()
  for i, c in ipairs(list) do
    local cpath = path .. "[" .. (i - 1) .. "]"
    local pub = { id = c.id, plan = c.plan }
    if idx.by_id[c.id] then
      errs[#errs + 1] = cpath .. ".id: duplicate consumer id \"" .. c.id .. "\""
    else
      idx.by_id[c.id] = pub
      idx.n = idx.n + 1
    end
    for j, k in ipairs(c.api_keys or EMPTY_LIST) do
      local plain, hash
      if type(k) == "string" then
        plain, hash = k, sha256_hex(k)
      else
        hash = lower(k.sha256)
      end
      if idx.by_key_hash[hash] then
        -- Never echo the key itself into a log.
        errs[#errs + 1] = cpath .. ".api_keys[" .. (j - 1) .. "]: the same API key is already configured (consumer \""
                          .. idx.by_key_hash[hash].consumer.id .. "\")"
      else
        idx.by_key_hash[hash] = { consumer = pub, plain = plain }
      end
    end
    local jc = c.jwt
    if jc then
      local name = jc.key or c.id
      local key
      if jc.secret then
        key = keys.secret(jc.secret, jc.secret_base64, jc.algorithm)
      elseif jc.public_key then
        key = keys.pem(jc.public_key, jc.algorithm)
      else
        key = keys.pem_file(jc.public_key_file, jc.algorithm)
      end
      if idx.by_jwt_key[name] then
        errs[#errs + 1] = cpath .. ".jwt.key: \"" .. name .. "\" is already the key of consumer \""
                          .. idx.by_jwt_key[name].consumer.id .. "\""
      elseif key then
        idx.by_jwt_key[name] = { consumer = pub, key = key }
      end
    end
  end
  return idx
end

-- consumers.check(list, path, errs): validates the raw `consumers` value,
-- appending "path: message" errors, and builds its indexes.
function _M.check(list, path, errs)
  if is_null(list) then
    return
  end
  local conf, verrs = schema.validate(LIST_DEF, list, path)
  if not conf then
    for _, e in ipairs(verrs) do
      errs[#errs + 1] = e
    end
    return
  end
  indexes[list] = build_index(conf, path, errs)
end

-- consumers.index() -> the running config's index:
--   { by_id = id -> consumer, by_key_hash = sha256 hex -> { consumer, plain },
--     by_jwt_key = key -> { consumer, key }, n }
-- Built on first use if check() did not run for this table (a unit test).
local empty = empty_index()
function _M.index()
  local rt = package.loaded["tollgate.runtime"]
  local list = type(rt) == "table" and type(rt.config) == "table" and rt.config.consumers or nil
  if is_null(list) then
    return empty
  end
  local idx = indexes[list]
  if idx == nil then
    local errs = {}
    _M.check(list, "consumers", errs)
    idx = indexes[list] or empty
    indexes[list] = idx
  end
  return idx
end

-- consumers.get(id) -> consumer | nil.
function _M.get(id)
  return _M.index().by_id[id]
end

-- consumers.by_api_key(key, hash) -> consumer | nil. hash: the key's
-- sha256 hex when the caller already has it. The lookup is by SHA-256, so
-- the table lookup's timing says nothing usable about the stored keys; a
-- plaintext key is then compared in constant time as well.
function _M.by_api_key(key, hash)
  local e = _M.index().by_key_hash[hash or sha256_hex(key)]
  if e == nil then
    return nil
  end
  if e.plain and not constant_time_eq(e.plain, key) then
    return nil
  end
  return e.consumer
end

-- consumers.by_jwt_key(name) -> consumer, key | nil.
function _M.by_jwt_key(name)
  local e = _M.index().by_jwt_key[name]
  if e == nil then
    return nil
  end
  return e.consumer, e.key
end

return _M
