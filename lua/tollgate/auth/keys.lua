-- tollgate.auth.keys: JWT key material from the configuration (a secret, a
-- PEM, a PEM file, a JWKS file) turned into tollgate.auth.jwt keys, parsed
-- once and cached by content.
--
-- Each worker has its own VM per config generation (a reload starts new
-- workers), and config validation runs in that same VM before any request.
-- So the schema checks that report a bad key with its YAML path also fill
-- this cache, and the plugins find their keys here on first use without
-- parsing anything again: parsing a PEM costs ~120 µs, a lookup here a hash.
-- Entries are never evicted: they are exactly the keys of the running
-- config.

local jwt    = require "tollgate.auth.jwt"
local crypto = require "tollgate.crypto"

local type, tostring, concat, sort = type, tostring, table.concat, table.sort
local io_open = io.open

local _M = {}

-- A key file bigger than this is a mistake (a whole bundle, a binary).
local MAX_KEY_FILE = 1024 * 1024

local cache = {}   -- "<kind>\0<algs>\0<material>" -> key or key set

local function algs_id(algs)
  if algs == nil then
    return ""
  end
  if type(algs) == "string" then
    return algs
  end
  local copy = {}
  for i = 1, #algs do
    copy[i] = algs[i]
  end
  sort(copy)
  return concat(copy, ",")
end

local function cached(kind, algs, material, make)
  local id = kind .. "\0" .. algs_id(algs) .. "\0" .. material
  local v = cache[id]
  if v then
    return v
  end
  local err
  v, err = make()
  if not v then
    return nil, err
  end
  cache[id] = v
  return v
end

-- keys.path(p) -> p made absolute: a relative path is relative to the
-- directory of the config file when the runtime tells us where that is
-- (runtime.conf_prefix), else to the gateway's working directory.
function _M.path(p)
  if p:sub(1, 1) == "/" then
    return p
  end
  local rt = package.loaded["tollgate.runtime"]
  local prefix = type(rt) == "table" and rt.conf_prefix or nil
  if type(prefix) == "string" and prefix ~= "" then
    return prefix .. "/" .. p
  end
  return p
end

-- keys.read_file(path) -> text | nil, err (bounded by MAX_KEY_FILE).
function _M.read_file(path)
  local full = _M.path(path)
  local f, err = io_open(full, "rb")
  if not f then
    return nil, "cannot open " .. tostring(err or full)
  end
  local text = f:read(MAX_KEY_FILE + 1)
  f:close()
  if text == nil then
    return nil, full .. " is empty"
  end
  if #text > MAX_KEY_FILE then
    return nil, full .. " is larger than " .. MAX_KEY_FILE .. " bytes"
  end
  return text
end

-- keys.secret(secret, secret_base64, algs) -> key | nil, err. With
-- secret_base64 the secret is base64url (Kong's secret_is_base64; padding
-- and the standard alphabet are accepted too, secrets get pasted from
-- everywhere).
function _M.secret(secret, secret_base64, algs)
  local kind = secret_base64 and "b64" or "secret"
  return cached(kind, algs, secret, function()
    local raw = secret
    if secret_base64 then
      -- One strict decoder for both alphabets: drop padding, map + / to - _.
      local url = secret:gsub("=?=$", ""):gsub("%+", "-"):gsub("/", "_")
      raw = crypto.base64url_decode(url)
      if raw == nil or raw == "" then
        return nil, "not valid base64"
      end
    end
    return jwt.secret_key(raw, algs)
  end)
end

-- keys.pem(pem, algs) -> key | nil, err.
function _M.pem(pem, algs)
  return cached("pem", algs, pem, function()
    return jwt.public_key(pem, algs)
  end)
end

-- keys.pem_file(path, algs) -> key | nil, err. The file is read once per
-- VM: a request never touches the disk, and a file edited after the config
-- was loaded takes effect on reload, like the rest of the config.
function _M.pem_file(path, algs)
  local id = "pemfile\0" .. algs_id(algs) .. "\0" .. path
  local key = cache[id]
  if key then
    return key
  end
  local text, err = _M.read_file(path)
  if not text then
    return nil, err
  end
  key, err = _M.pem(text, algs)
  if key then
    cache[id] = key
  end
  return key, err
end

-- keys.jwks(text) -> kid -> key, skipped | nil, err (jwt.parse_jwks).
function _M.jwks(text)
  local id = "jwks\0\0" .. text
  local v = cache[id]
  if v then
    return v.keys, v.skipped
  end
  local keys, skipped = jwt.parse_jwks(text)
  if not keys then
    return nil, skipped
  end
  cache[id] = { keys = keys, skipped = skipped }
  return keys, skipped
end

-- keys.jwks_file(path) -> kid -> key, skipped | nil, err. Read once per
-- VM, like pem_file.
function _M.jwks_file(path)
  local v = cache["jwksfile\0\0" .. path]
  if v then
    return v.keys, v.skipped
  end
  local text, err = _M.read_file(path)
  if not text then
    return nil, err
  end
  local keys, skipped = _M.jwks(text)
  if keys then
    cache["jwksfile\0\0" .. path] = { keys = keys, skipped = skipped }
  end
  return keys, skipped
end

return _M
