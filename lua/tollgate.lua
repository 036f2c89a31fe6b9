-- tollgate: the PDK, the only API plugins use. `local tg = require "tollgate"`.
-- Every function documented in docs/pdk.md. Conventions (lua-resty):
-- expected failures return nil, err; caller misuse raises error(msg, 2);
-- a function used in a phase where it makes no sense raises
-- "tg.x.y: not available in phase z".
local ffi     = require "ffi"
local C       = require "tollgate.ffi"
local current = require "tollgate.context"
local runtime = require "tollgate.runtime"
local cjson   = require "cjson.safe"

local ffi_string = ffi.string
local ffi_new    = ffi.new
local type       = type
local tostring   = tostring
local pairs      = pairs
local ipairs     = ipairs
local error      = error
local concat     = table.concat
local byte       = string.byte
local char       = string.char
local gsub       = string.gsub
local lower      = string.lower
local tonumber   = tonumber

local tg = { request = {}, response = {}, upstream = {}, log = {}, timer = {}, shared = {} }

local HDR_SET, HDR_ADD, HDR_CLEAR = 0, 1, 2
local int_out = ffi_new("int[1]")
local size_out = ffi_new("size_t[1]")

-- Phase sets (names as in current.phase).
local ANY        = { rewrite = true, access = true, header_filter = true, body_filter = true, log = true }
local REQ_EDIT   = { rewrite = true, access = true }
local RESP_EDIT  = { rewrite = true, access = true, header_filter = true }

local function req(fname, allowed, level)
  local r = current.r
  if r == nil then error(fname .. ": no request in this context", level or 3) end
  if allowed and not allowed[current.phase] then
    error(fname .. ": not available in phase " .. tostring(current.phase), level or 3)
  end
  return r
end

local function str(s)
  if s == nil or s.p == nil then return nil end
  return ffi_string(s.p, s.len)
end

-- level: where the error points (default: the caller of the PDK function
-- that called check_string).
local function check_string(fname, v, what, level)
  if type(v) == "number" then return tostring(v) end
  if type(v) ~= "string" then error(fname .. ": " .. what .. " must be a string", level or 3) end
  return v
end

-- ---------------------------------------------------------------- request

local request = tg.request

function request.get_method() return str(C.tg_ffi_req_method(req("tg.request.get_method", ANY))) end
function request.get_path() return str(C.tg_ffi_req_path(req("tg.request.get_path", ANY))) end
function request.get_raw_query()
  return str(C.tg_ffi_req_raw_query(req("tg.request.get_raw_query", ANY))) or ""
end
function request.get_client_ip() return ffi_string(C.tg_ffi_req_client_ip(req("tg.request.get_client_ip", ANY))) end
function request.get_host() return ffi_string(C.tg_ffi_req_host(req("tg.request.get_host", ANY))) end
function request.get_port() return C.tg_ffi_req_port(req("tg.request.get_port", ANY)) end
function request.get_scheme()
  return C.tg_ffi_req_https(req("tg.request.get_scheme", ANY)) == 1 and "https" or "http"
end
-- The verified client certificate of an mTLS listener, or nil. The out
-- array is reused: nothing yields between the call and the copies.
local cert_out = ffi_new("const char *[4]")
function request.get_client_cert()
  if C.tg_ffi_req_client_cert(req("tg.request.get_client_cert", ANY), cert_out) == 0 then return nil end
  return { subject = ffi_string(cert_out[0]), issuer = ffi_string(cert_out[1]),
           serial = ffi_string(cert_out[2]), fingerprint_sha256 = ffi_string(cert_out[3]) }
end
function request.get_http_version()
  return C.tg_ffi_req_http_minor(req("tg.request.get_http_version", ANY)) == 0 and 1.0 or 1.1
end
function request.get_start_time() return C.tg_ffi_req_start_time(req("tg.request.get_start_time", ANY)) end
function request.get_route_name()
  local p = C.tg_ffi_req_route_name(req("tg.request.get_route_name", ANY))
  return p ~= nil and ffi_string(p) or nil
end

-- Header as it will go upstream (client header with plugin edits); the
-- first one when repeated.
function request.get_header(name)
  name = check_string("tg.request.get_header", name, "name")
  local h = C.tg_ffi_req_header(req("tg.request.get_header", ANY), name, #name)
  if h == nil then return nil end
  return ffi_string(h.value.p, h.value.len)
end

local function headers_table(h, n, max)
  local t = {}
  for i = 0, n - 1 do
    local k = lower(ffi_string(h[i].name.p, h[i].name.len))
    local v = ffi_string(h[i].value.p, h[i].value.len)
    local old = t[k]
    if old == nil then t[k] = v
    elseif type(old) == "table" then old[#old + 1] = v
    else t[k] = { old, v } end
    if max and i + 1 >= max then break end
  end
  return t
end

-- All headers, lowercase names; repeated ones as a list of values.
function request.get_headers(max)
  local r = req("tg.request.get_headers", ANY)
  local h = C.tg_ffi_req_headers(r, int_out)
  return headers_table(h, int_out[0], max)
end

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function escape(s)
  return (gsub(s, "[^%w%-%._~]", function(c) return string.format("%%%02X", byte(c)) end))
end

-- Decoded query arguments: name -> value (a list when repeated; true for a
-- name without "="). Parsed once per request.
local function parse_query(q)
  local args = {}
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k then v = unescape(v) else k, v = pair, true end
    k = unescape(k)
    local old = args[k]
    if old == nil then args[k] = v
    elseif type(old) == "table" then old[#old + 1] = v
    else args[k] = { old, v } end
  end
  return args
end

function request.get_query()
  local r = req("tg.request.get_query", ANY)
  local ctx = current.ctx
  local cache = ctx.__query
  if cache == nil then
    cache = parse_query(str(C.tg_ffi_req_raw_query(r)) or "")
    ctx.__query = cache
  end
  return cache
end

function request.get_query_arg(name)
  name = check_string("tg.request.get_query_arg", name, "name")
  local v = request.get_query()[name]
  if type(v) == "table" then return v[1] end
  return v
end

-- Reads the whole body (yields until it has arrived; bounded by
-- limits.max_body_bytes). Returns the body or nil, err.
function request.get_body()
  local r = req("tg.request.get_body", REQ_EDIT)
  local rc = C.tg_ffi_req_read_body(r)
  if rc == 1 then
    runtime.wait()
    rc = C.tg_ffi_req_read_body(r)
  end
  if rc ~= 0 then return nil, "body not available" end
  local p = C.tg_ffi_req_body(r, size_out)
  return ffi_string(p, size_out[0])
end

local function edit_header(fname, mode, name, value)
  local r = req(fname, REQ_EDIT, 4)
  name = check_string(fname, name, "name", 4)
  if mode ~= HDR_CLEAR then
    value = check_string(fname, value, "value", 4)
  else
    value = ""
  end
  local rc = C.tg_ffi_req_header_set(r, name, #name, value, #value, mode)
  if rc == -1 then error(fname .. ": invalid header name or value", 3) end
  if rc == -2 then error(fname .. ": " .. name .. " is set by the core", 3) end
end

function request.set_header(name, value) edit_header("tg.request.set_header", HDR_SET, name, value) end
function request.add_header(name, value) edit_header("tg.request.add_header", HDR_ADD, name, value) end
function request.clear_header(name) edit_header("tg.request.clear_header", HDR_CLEAR, name) end

function request.set_path(path)
  local r = req("tg.request.set_path", REQ_EDIT)
  path = check_string("tg.request.set_path", path, "path")
  if C.tg_ffi_req_set_path(r, path, #path) ~= 0 then
    error("tg.request.set_path: invalid path \"" .. path .. "\"", 2)
  end
end

local function encode_query(args)
  local keys = {}
  for k in pairs(args) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = args[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do parts[#parts + 1] = escape(k) .. "=" .. escape(tostring(x)) end
    elseif v == true then
      parts[#parts + 1] = escape(k)
    elseif v ~= false and v ~= nil then
      parts[#parts + 1] = escape(k) .. "=" .. escape(tostring(v))
    end
  end
  return concat(parts, "&")
end

-- Sets the query sent upstream: a raw string or a table of arguments.
function request.set_query(q)
  local r = req("tg.request.set_query", REQ_EDIT)
  if type(q) == "table" then q = encode_query(q)
  elseif type(q) ~= "string" then error("tg.request.set_query: expected a string or a table", 2) end
  local rc = q == "" and C.tg_ffi_req_set_query(r, nil, 0) or C.tg_ffi_req_set_query(r, q, #q)
  if rc ~= 0 then error("tg.request.set_query: invalid query", 2) end
  current.ctx.__upstream_query = nil
end

-- The decoded arguments of the query as it will go upstream (after the
-- edits of earlier plugins). Do not modify the returned table.
local function upstream_args(r, ctx)
  local args = ctx.__upstream_query
  if args == nil then
    local uri = str(C.tg_ffi_req_upstream_uri(r)) or ""
    args = parse_query(uri:match("%?(.*)$") or "")
    ctx.__upstream_query = args
  end
  return args
end

function request.get_upstream_query()
  local r = req("tg.request.get_upstream_query", ANY)
  return upstream_args(r, current.ctx)
end

-- Sets (or with nil removes) one argument of the query sent upstream; a
-- list of values sends the name once per value.
function request.set_query_arg(name, value)
  local r = req("tg.request.set_query_arg", REQ_EDIT)
  name = check_string("tg.request.set_query_arg", name, "name")
  local ctx = current.ctx
  local args = upstream_args(r, ctx)
  if type(value) == "table" then
    local list = {}
    for i, v in ipairs(value) do list[i] = check_string("tg.request.set_query_arg", v, "value") end
    value = list
  elseif value ~= nil and value ~= true then
    value = check_string("tg.request.set_query_arg", value, "value")
  end
  args[name] = value
  local q = encode_query(args)
  local rc = q == "" and C.tg_ffi_req_set_query(r, nil, 0) or C.tg_ffi_req_set_query(r, q, #q)
  if rc ~= 0 then error("tg.request.set_query_arg: invalid value", 2) end
  ctx.__upstream_query = args
end

-- Replaces the body sent upstream (reads the client's body first).
function request.set_body(body)
  local r = req("tg.request.set_body", REQ_EDIT)
  body = check_string("tg.request.set_body", body, "body")
  local _, err = request.get_body()
  if err then return nil, err end
  if C.tg_ffi_req_set_body(r, body, #body) ~= 0 then return nil, "body not available" end
  return true
end

-- Sets the id used in the access log and error log lines of this request.
function request.set_id(id)
  local r = req("tg.request.set_id", ANY)
  id = check_string("tg.request.set_id", id, "id")
  C.tg_ffi_req_set_id(r, id, #id)
end

-- --------------------------------------------------------------- response

local response = tg.response

local function resp_edit(fname, mode, name, value)
  local r = req(fname, RESP_EDIT, 4)
  name = check_string(fname, name, "name", 4)
  if mode ~= HDR_CLEAR then value = check_string(fname, value, "value", 4) else value = "" end
  local rc = C.tg_ffi_resp_header_set(r, name, #name, value, #value, mode)
  if rc == -1 then error(fname .. ": invalid header name or value", 3) end
  if rc == -2 then error(fname .. ": " .. name .. " is set by the core", 3) end
  if rc == -3 then error(fname .. ": the response head was already sent", 3) end
end

function response.set_header(name, value) resp_edit("tg.response.set_header", HDR_SET, name, value) end
function response.add_header(name, value) resp_edit("tg.response.add_header", HDR_ADD, name, value) end
function response.clear_header(name) resp_edit("tg.response.clear_header", HDR_CLEAR, name) end

function response.get_status() return C.tg_ffi_resp_status(req("tg.response.get_status", ANY)) end

function response.set_status(status)
  local r = req("tg.response.set_status", { header_filter = true })
  if type(status) ~= "number" or C.tg_ffi_resp_set_status(r, status) ~= 0 then
    error("tg.response.set_status: invalid status", 2)
  end
end

function response.get_header(name)
  name = check_string("tg.response.get_header", name, "name")
  local h = C.tg_ffi_resp_header(req("tg.response.get_header", ANY), name, #name)
  if h == nil then return nil end
  return ffi_string(h.value.p, h.value.len)
end

function response.get_headers(max)
  local r = req("tg.response.get_headers", ANY)
  local h = C.tg_ffi_resp_headers(r, int_out)
  return headers_table(h, int_out[0], max)
end

-- Called in header_filter by a plugin with a body_filter that will leave
-- this response's body untouched. When all body_filter plugins of the route
-- say so, the core skips body_filter and keeps the response's framing
-- (Content-Length) instead of re-chunking it.
function response.skip_body_filter()
  req("tg.response.skip_body_filter", { header_filter = true })
  local ctx = current.ctx
  local skip = ctx.__skip_body_filter
  if not skip then
    skip = {}
    ctx.__skip_body_filter = skip
  end
  skip[current.plugin or "?"] = true
end

function response.get_upstream_status()
  local s = C.tg_ffi_resp_upstream_status(req("tg.response.get_upstream_status", ANY))
  return s ~= 0 and s or nil
end

-- Ends the request now with status and body (a table is sent as JSON);
-- later plugins of the phase and the upstream are skipped.
function response.exit(status, body, headers)
  local r = req("tg.response.exit", REQ_EDIT)
  if type(status) ~= "number" or status < 200 or status > 599 then
    error("tg.response.exit: status must be a number between 200 and 599", 2)
  end
  if headers ~= nil then
    if type(headers) ~= "table" then error("tg.response.exit: headers must be a table", 2) end
    for k, v in pairs(headers) do resp_edit("tg.response.exit", HDR_SET, k, v) end
  end
  local ctype = C.tg_ffi_resp_header(r, "content-type", 12)
  if type(body) == "table" then
    body = cjson.encode(body)
    if ctype == nil then C.tg_ffi_resp_header_set(r, "Content-Type", 12, "application/json", 16, HDR_SET) end
  elseif body == nil then
    body = ""
  else
    body = check_string("tg.response.exit", body, "body")
    if ctype == nil then
      C.tg_ffi_resp_header_set(r, "Content-Type", 12, "text/plain; charset=utf-8", 25, HDR_SET)
    end
  end
  C.tg_ffi_resp_exit(r, status, body, #body)
  -- Yield straight to the core, through any pcall() of the plugin's: the
  -- plugin never resumes (a swallowed exit must never let a request
  -- through). Later phases run in a fresh coroutine with the same ctx.
  coroutine.yield(runtime.codes.EXIT, current.ctx)
  error("tg.response.exit: resumed after exit", 2)   -- cannot happen
end

-- --------------------------------------------------------------- upstream

function tg.upstream.set(name)
  local r = req("tg.upstream.set", REQ_EDIT)
  name = check_string("tg.upstream.set", name, "name")
  if C.tg_ffi_upstream_set(r, name, #name) ~= 0 then
    return nil, "unknown upstream \"" .. name .. "\""
  end
  return true
end

function tg.upstream.get_name()
  local p = C.tg_ffi_upstream_name(req("tg.upstream.get_name", ANY))
  return p ~= nil and ffi_string(p) or nil
end

-- The targets of the upstream this request goes to: { {addr=, index=}, ... }
-- (index is 1-based here, as everywhere in Lua).
function tg.upstream.get_targets()
  local r = req("tg.upstream.get_targets", ANY)
  local t = {}
  for i = 0, C.tg_ffi_upstream_ntargets(r) - 1 do
    t[i + 1] = { index = i + 1, addr = ffi_string(C.tg_ffi_upstream_target_addr(r, i)) }
  end
  return t
end

-- Keeps target `index` (1-based) out of this request's choices; when every
-- target is excluded the core answers 503.
function tg.upstream.exclude_target(index)
  local r = req("tg.upstream.exclude_target", REQ_EDIT)
  if type(index) ~= "number" or C.tg_ffi_upstream_exclude_target(r, index - 1) ~= 0 then
    error("tg.upstream.exclude_target: invalid target index", 2)
  end
end

-- What each attempt of this request did: { {index=, addr=, status=}, ... };
-- status is the upstream's, or 502 / 504 for a failed attempt. For log.
function tg.upstream.get_attempts()
  local r = req("tg.upstream.get_attempts", ANY)
  local out = {}
  for i = 0, C.tg_ffi_upstream_nattempts(r) - 1 do
    local status = C.tg_ffi_upstream_attempt(r, i, int_out)
    local idx = int_out[0]
    local addr = C.tg_ffi_upstream_target_addr(r, idx)
    out[i + 1] = { index = idx + 1, addr = addr ~= nil and ffi_string(addr) or nil, status = status }
  end
  return out
end

-- -------------------------------------------------------------------- log

local LEVELS = { debug = 0, info = 1, notice = 2, warn = 3, err = 4, crit = 5 }

local function logger(level)
  return function(...)
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do parts[i] = tostring(parts[i]) end
    local msg = concat(parts, "", 1, n)
    if current.plugin then msg = "[" .. current.plugin .. "] " .. msg end
    C.tg_ffi_log(level, current.r, msg, #msg)
  end
end

for name, level in pairs(LEVELS) do tg.log[name] = logger(level) end
tg.log.error = tg.log.err
tg.log.warning = tg.log.warn

-- ------------------------------------------------------------ time, timers

function tg.now() return C.tg_ffi_now() end

-- Pauses the running request or timer for s seconds without blocking.
function tg.sleep(s)
  if type(s) ~= "number" or s < 0 then error("tg.sleep: expected a number of seconds >= 0", 2) end
  if C.tg_ffi_sleep(s) ~= 1 then error("tg.sleep: not available in phase " .. tostring(current.phase), 2) end
  runtime.wait()
end

-- Runs fn(premature, ...) after delay seconds, in its own coroutine.
function tg.timer.at(delay, fn, ...)
  if type(delay) ~= "number" or delay < 0 then error("tg.timer.at: delay must be a number >= 0", 2) end
  if type(fn) ~= "function" then error("tg.timer.at: fn must be a function", 2) end
  return runtime.add_timer(delay, fn, ...)
end

-- Runs fn(premature, ...) every interval seconds (the next run is
-- scheduled when the previous one finishes, so runs never overlap).
function tg.timer.every(interval, fn, ...)
  if type(interval) ~= "number" or interval <= 0 then error("tg.timer.every: interval must be a number > 0", 2) end
  if type(fn) ~= "function" then error("tg.timer.every: fn must be a function", 2) end
  local args = { n = select("#", ...), ... }
  local function tick(premature)
    fn(premature, unpack(args, 1, args.n))
    if not premature then runtime.add_timer(interval, tick) end
  end
  return runtime.add_timer(interval, tick)
end

-- ------------------------------------------------------------------ misc

tg.json = {
  encode = cjson.encode,
  decode = cjson.decode,   -- value or nil, err
  null = cjson.null,
}

function tg.shared.dict(name)
  return require("tollgate.shdict").dict(name)
end

function tg.worker_id() return C.tg_ffi_worker_slot() end

-- The whole configuration as loaded (YAML as Lua tables; read it, never
-- change it). Plugins build their indexes from it in init_worker.
function tg.config() return runtime.config end

-- Lazily loaded modules: tg.crypto, tg.redis(opts), tg.http.request{...}.
local lazy = { crypto = "tollgate.crypto", redis = "tollgate.redis", http = "tollgate.http" }

-- tg.ctx is the running request's ctx table; tg.crypto loads on first use.
return setmetatable(tg, {
  __index = function(t, k)
    if k == "ctx" then return current.ctx end
    local mod = lazy[k]
    if mod then
      local m = require(mod)
      rawset(t, k, m)
      return m
    end
    return nil
  end,
})
