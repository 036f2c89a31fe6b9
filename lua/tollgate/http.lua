-- tollgate.http: tg.http.request{...}, a non-blocking HTTP/1.1 client for
-- plugins (JWKS fetches, auth callouts, log shipping). The connection,
-- name resolution, pooling and response parsing live in core/tg_httpc.c;
-- this module checks the arguments, builds the request head and turns the
-- result into a table. The calling coroutine yields while the worker's
-- loop does the I/O, so other requests are served meanwhile.
--
--   local res, err = tg.http.request{ method = "GET", url = "http(s)://...",
--     headers = {...}, body = "...", timeout_ms = 5000,
--     max_body_bytes = 10485760, keepalive = true,
--     ssl_verify = true, ca_file = nil }      -- https: verification, CA file
--   res = { status = 200, headers = { ["content-type"] = "..." }, body = "...",
--           reused = false }
--
-- Expected failures return nil, err ("timeout", "connection refused",
-- "invalid response", "response too large", ...); misuse (a bad option
-- type, a header with CR/LF, a call from header_filter) raises.
local ffi     = require "ffi"
local C       = require "tollgate.ffi"      -- declares tg_str_t, tg_http_header_t
local runtime = require "tollgate.runtime"
local current = require "tollgate.context"

local ffi_string = ffi.string
local ffi_new    = ffi.new
local type       = type
local pairs      = pairs
local ipairs     = ipairs
local tostring   = tostring
local tonumber   = tonumber
local error      = error
local pcall      = pcall
local concat     = table.concat
local lower      = string.lower
local find       = string.find
local match      = string.match
local sub        = string.sub
local gsub       = string.gsub

ffi.cdef [[
typedef struct tg_httpc_req_s tg_httpc_req_t;
tg_httpc_req_t *tg_ffi_http_start(const char *host, size_t hlen, int port,
                                  const char *head, size_t headlen,
                                  const char *body, size_t bodylen,
                                  int flags, int timeout_ms, double max_body,
                                  const char *ca_file);
const char *tg_ffi_http_error(const tg_httpc_req_t *h);
int tg_ffi_http_status(const tg_httpc_req_t *h);
const tg_http_header_t *tg_ffi_http_headers(const tg_httpc_req_t *h, int *n);
const char *tg_ffi_http_body(const tg_httpc_req_t *h, size_t *len);
int tg_ffi_http_reused(const tg_httpc_req_t *h);
void tg_ffi_http_free(tg_httpc_req_t *h);
]]

local _M = {}

-- Flags of tg_ffi_http_start (core/tg_httpc.h).
local F_HEAD, F_KEEPALIVE, F_IDEMPOTENT, F_TLS, F_NO_VERIFY = 1, 2, 4, 8, 16

local DEFAULT_TIMEOUT_MS = 5000
local DEFAULT_MAX_BODY = 10 * 1024 * 1024

-- Contexts whose coroutine may wait (header_filter / body_filter run
-- synchronously; init_worker has no coroutine: use tg.timer.at there).
local CAN_WAIT = { rewrite = true, access = true, log = true, timer = true }

-- Framing and connection handling belong to the client.
local MANAGED = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true }

-- RFC 9110 idempotent methods: only these are replayed after a pooled
-- connection turned out to be closed by the server.
local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, TRACE = true, PUT = true, DELETE = true }

-- Methods whose request carries a body by definition: Content-Length: 0
-- when none is given (some servers answer 411 otherwise).
local WANTS_LENGTH = { POST = true, PUT = true, PATCH = true }

local int_out = ffi_new("int[1]")
local size_out = ffi_new("size_t[1]")

-- Parsed URLs, keyed by the URL string: plugins call the same few URLs
-- over and over (a JWKS endpoint, an auth service). Bounded: cleared when
-- it grows past URL_CACHE_MAX entries.
local URL_CACHE_MAX = 256
local url_cache, url_cache_n = {}, 0

-- url -> { host=, port=, target=, host_header= } | nil, err
local function parse_url(url)
  local u = url_cache[url]
  if u then return u end
  local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "invalid url" end
  scheme = lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "unsupported url scheme \"" .. scheme .. "\""
  end
  local tls = scheme == "https"
  local default_port = tls and 443 or 80
  local authority, target = match(rest, "^([^/?#]*)(.*)$")
  target = gsub(target, "#.*$", "")
  if target == "" then
    target = "/"
  elseif sub(target, 1, 1) == "?" then
    target = "/" .. target
  end
  -- Request-target bytes must be visible ASCII (already percent-encoded).
  if find(target, "[%z\1-\32\127-\255]") then return nil, "invalid url" end
  local host, port, bracketed
  if sub(authority, 1, 1) == "[" then
    host, port = match(authority, "^%[([%x:.]+)%](.*)$")
    bracketed = true
  else
    -- userinfo ("user:pass@") is refused: credentials go in headers.
    host, port = match(authority, "^([%w._-]+)(.*)$")
    if host and #host > 253 then host = nil end
  end
  if not host then return nil, "invalid url" end
  if port == "" then
    port = default_port
  else
    port = tonumber(match(port, "^:(%d+)$"))
    if not port or port < 1 or port > 65535 then return nil, "invalid url" end
  end
  host = lower(host)
  local hh = bracketed and ("[" .. host .. "]") or host
  if port ~= default_port then hh = hh .. ":" .. port end
  u = { host = host, port = port, target = target, host_header = hh, tls = tls }
  if url_cache_n >= URL_CACHE_MAX then url_cache, url_cache_n = {}, 0 end
  url_cache[url] = u
  url_cache_n = url_cache_n + 1
  return u
end

local function header_value(v)
  if type(v) == "number" then v = tostring(v) end
  if type(v) ~= "string" or find(v, "[%z\1-\8\10-\31\127]") then
    error("tg.http.request: invalid header value", 3)
  end
  return v
end

-- Collects the result of a finished callout (the handle is freed by the
-- caller whatever happens here).
local function collect(h)
  local e = C.tg_ffi_http_error(h)
  if e ~= nil then return nil, ffi_string(e) end
  local hs = C.tg_ffi_http_headers(h, int_out)
  local headers = {}
  for i = 0, int_out[0] - 1 do
    local k = lower(ffi_string(hs[i].name.p, hs[i].name.len))
    local v = ffi_string(hs[i].value.p, hs[i].value.len)
    local old = headers[k]
    headers[k] = old and (old .. ", " .. v) or v
  end
  local p = C.tg_ffi_http_body(h, size_out)
  return {
    status = C.tg_ffi_http_status(h),
    headers = headers,
    body = ffi_string(p, size_out[0]),
    reused = C.tg_ffi_http_reused(h) == 1,
  }
end

function _M.request(opts)
  if type(opts) ~= "table" then error("tg.http.request: expected a table of options", 2) end
  local phase = current.phase
  if not CAN_WAIT[phase] then
    error("tg.http.request: not available in " .. (phase and ("phase " .. phase) or "this context")
          .. " (use rewrite, access, log or a timer)", 2)
  end

  local method = opts.method or "GET"
  if type(method) ~= "string" or not match(method, "^[A-Z][A-Z-]*$") then
    error("tg.http.request: method must be an uppercase token", 2)
  end
  local url = opts.url
  if type(url) ~= "string" then error("tg.http.request: url must be a string", 2) end
  local headers = opts.headers
  if headers ~= nil and type(headers) ~= "table" then error("tg.http.request: headers must be a table", 2) end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then error("tg.http.request: body must be a string", 2) end
  local timeout_ms = opts.timeout_ms or DEFAULT_TIMEOUT_MS
  if type(timeout_ms) ~= "number" or timeout_ms <= 0 then
    error("tg.http.request: timeout_ms must be a number > 0", 2)
  end
  -- The C side takes an int: a day is more than any callout should wait.
  if timeout_ms > 86400000 then timeout_ms = 86400000 end
  local max_body = opts.max_body_bytes or DEFAULT_MAX_BODY
  if type(max_body) ~= "number" or max_body < 0 then
    error("tg.http.request: max_body_bytes must be a number >= 0", 2)
  end
  local keepalive = opts.keepalive
  if keepalive == nil then keepalive = true end
  if type(keepalive) ~= "boolean" then error("tg.http.request: keepalive must be a boolean", 2) end

  local ssl_verify = opts.ssl_verify
  if ssl_verify == nil then ssl_verify = true end
  if type(ssl_verify) ~= "boolean" then error("tg.http.request: ssl_verify must be a boolean", 2) end
  local ca_file = opts.ca_file
  if ca_file ~= nil and (type(ca_file) ~= "string" or ca_file == "" or find(ca_file, "%z")) then
    error("tg.http.request: ca_file must be a file path", 2)
  end

  local u, uerr = parse_url(url)
  if not u then return nil, uerr end

  local parts = { method, " ", u.target, " HTTP/1.1\r\n" }
  local n = 4
  local has_host, has_ua = false, false
  if headers then
    for name, value in pairs(headers) do
      if type(name) ~= "string" or not match(name, "^[%w!#$%%&'*+.^_`|~-]+$") then
        error("tg.http.request: invalid header name", 2)
      end
      local lname = lower(name)
      if MANAGED[lname] then error("tg.http.request: " .. name .. " is set by the client", 2) end
      if lname == "host" then has_host = true elseif lname == "user-agent" then has_ua = true end
      if type(value) == "table" then
        for _, v in ipairs(value) do
          parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] = name, ": ", header_value(v), "\r\n"
          n = n + 4
        end
      else
        parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] = name, ": ", header_value(value), "\r\n"
        n = n + 4
      end
    end
  end
  if not has_host then
    parts[n + 1], parts[n + 2] = "Host: ", u.host_header .. "\r\n"
    n = n + 2
  end
  if not has_ua then
    parts[n + 1] = "User-Agent: tollgate\r\n"
    n = n + 1
  end
  if body or WANTS_LENGTH[method] then
    parts[n + 1] = "Content-Length: " .. (body and #body or 0) .. "\r\n"
    n = n + 1
  end
  if not keepalive then
    parts[n + 1] = "Connection: close\r\n"
    n = n + 1
  end
  parts[n + 1] = "\r\n"
  local head = concat(parts, "", 1, n + 1)

  local flags = 0
  if method == "HEAD" then flags = flags + F_HEAD end
  if keepalive then flags = flags + F_KEEPALIVE end
  if IDEMPOTENT[method] then flags = flags + F_IDEMPOTENT end
  if u.tls then
    flags = flags + F_TLS
    if not ssl_verify then flags = flags + F_NO_VERIFY end
  end

  local h = C.tg_ffi_http_start(u.host, #u.host, u.port, head, #head,
                                body, body and #body or 0, flags, timeout_ms, max_body,
                                u.tls and ca_file or nil)
  if h == nil then
    error("tg.http.request: not available in " .. (phase and ("phase " .. phase) or "this context"), 2)
  end
  runtime.wait()
  local ok, res, err = pcall(collect, h)
  C.tg_ffi_http_free(h)
  if not ok then error(res, 0) end
  return res, err
end

return _M
