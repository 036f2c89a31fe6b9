-- cors: Cross-Origin Resource Sharing at the gateway (Fetch standard,
-- "CORS protocol"). Preflights are answered here; actual requests are
-- proxied and get the CORS headers on their response.
--
--   cors:
--     origins: ["https://app.example.com", "~https://[a-z0-9-]+\\.example\\.com"]
--     methods: [GET, POST]
--     headers: [Authorization, Content-Type]
--     exposed_headers: [X-Request-Id]
--     credentials: true
--     max_age: 600
--
-- Origins: "*" (any), an exact origin ("https://app.example.com",
-- compared case-insensitively, no path, no trailing slash; "null" only
-- when listed), or "~" and a PCRE2 regex (lua/tollgate/regex.lua) that must
-- match the whole Origin value: it is anchored at both ends, so
-- "~https://.*\.example\.com" cannot be satisfied by
-- "https://x.example.com.evil.net".
--
-- A preflight (OPTIONS with Origin and Access-Control-Request-Method) is
-- answered 204 by the gateway, the upstream never sees it. With an allowed
-- origin it carries Access-Control-Allow-Origin / -Methods / -Headers
-- (the configured list, or the request's Access-Control-Request-Headers
-- echoed when none is configured) / -Credentials / -Max-Age; with any
-- other origin it carries none of them, so the browser stops there.
-- An actual request from an allowed origin gets Access-Control-Allow-Origin,
-- -Credentials and -Expose-Headers on its response, whatever produced it
-- (upstream, another plugin's exit, a gateway error), so the browser can
-- read errors too. A request from another origin is proxied unchanged and
-- its response gets no CORS headers.
--
-- Access-Control-Allow-Origin is "*" when "*" is allowed and credentials
-- are off; otherwise the request's origin is echoed, and every response
-- of the route then says Vary: Origin (also those without an Origin, so a
-- shared cache never serves one origin's answer to another). With "*" and
-- credentials, the origin "null" (sandboxed frames, file: pages) is not
-- echoed unless listed.
--
-- Runs in access at priority 2000, before the auth plugins (a preflight
-- carries no credentials). The route must accept OPTIONS (no `methods:`,
-- or OPTIONS listed), or a preflight never reaches the plugin.
-- Docs: docs/plugins/cors.md.
local tg    = require "tollgate"
local regex = require "tollgate.regex"

local request  = tg.request
local response = tg.response
local type     = type
local ipairs   = ipairs
local tostring = tostring
local find     = string.find
local lower    = string.lower
local sub      = string.sub
local concat   = table.concat
local setmetatable = setmetatable

local NAME = "cors"
local PREFLIGHT = {}   -- ctx marker: this request was answered as a preflight
local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"
local DEFAULT_METHODS = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS" }

-- ------------------------------------------------------------------ schema

local function origin_check(v)
  if v == "*" or v == "null" then return true end
  if sub(v, 1, 1) == "~" then
    local ok, err = regex.check(sub(v, 2), "az")
    if not ok then return nil, "invalid regex after \"~\": " .. err end
    return true
  end
  if not find(v, "^[%a][%w+.-]*://[^/?#%s]+$") then
    return nil, "expected \"*\", \"null\", an origin like https://app.example.com (no path) or ~regex"
  end
  return true
end

local TOKEN_LIST = { type = "array", elements = { type = "string", match = TOKEN } }

local schema = {
  type = "record",
  fields = {
    origins = { type = "array", min_len = 1, default = { "*" },
                elements = { type = "string", min_len = 1, check = origin_check } },
    methods = { type = "array", min_len = 1, default = DEFAULT_METHODS,
                elements = { type = "string", match = TOKEN } },
    headers = TOKEN_LIST,
    exposed_headers = TOKEN_LIST,
    credentials = { type = "boolean", default = false },
    max_age = { type = "integer", min = 0 },
  },
}

-- ------------------------------------------------------- per-config cache

local compiled_cache = setmetatable({}, { __mode = "k" })

local function compile(conf)
  local c = compiled_cache[conf]
  if c then return c end
  c = { exact = {}, regexes = {}, any = false, credentials = conf.credentials }
  for _, o in ipairs(conf.origins) do
    if o == "*" then
      c.any = true
    elseif sub(o, 1, 1) == "~" then
      c.regexes[#c.regexes + 1] = assert(regex.compile(sub(o, 2), "az"))
    else
      c.exact[lower(o)] = true
    end
  end
  c.star = c.any and not conf.credentials       -- answer "*" rather than the origin
  c.vary = not c.star
  c.methods = concat(conf.methods, ", ")
  c.headers = conf.headers and #conf.headers > 0 and concat(conf.headers, ", ") or nil
  c.exposed = conf.exposed_headers and #conf.exposed_headers > 0 and concat(conf.exposed_headers, ", ") or nil
  c.max_age = conf.max_age and tostring(conf.max_age) or nil
  compiled_cache[conf] = c
  return c
end

-- The Access-Control-Allow-Origin value for `origin`, or nil if not allowed.
local function allow_origin(c, origin)
  if c.star then return "*" end
  if c.exact[lower(origin)] then return origin end
  for i = 1, #c.regexes do
    -- A match error (the match limit) counts as no match.
    if c.regexes[i]:match(origin) == true then return origin end
  end
  if c.any and origin ~= "null" then return origin end
  return nil
end

-- Whether a Vary value already covers Origin ("*" covers everything).
local function varies_by_origin(v)
  for item in v:gmatch("[^,]+") do
    local t = lower(item):match("^%s*(.-)%s*$")
    if t == "origin" or t == "*" then return true end
  end
  return false
end

-- Adds Origin to Vary, keeping what the upstream listed (only the first
-- Vary line is inspected; a repeat of Origin in a later one is harmless).
local function add_vary(c)
  if not c.vary then return end
  local v = response.get_header("Vary")
  if v == nil then
    response.set_header("Vary", "Origin")
  elseif not varies_by_origin(v) then
    response.add_header("Vary", "Origin")
  end
end

local function access(conf, ctx)
  local origin = request.get_header("Origin")
  if origin == nil then return end
  local c = compile(conf)
  local allowed = allow_origin(c, origin)

  if request.get_method() == "OPTIONS" and request.get_header("Access-Control-Request-Method") then
    if allowed then
      response.set_header("Access-Control-Allow-Origin", allowed)
      if c.credentials then response.set_header("Access-Control-Allow-Credentials", "true") end
      response.set_header("Access-Control-Allow-Methods", c.methods)
      local h = c.headers or request.get_header("Access-Control-Request-Headers")
      if h then response.set_header("Access-Control-Allow-Headers", h) end
      if c.max_age then response.set_header("Access-Control-Max-Age", c.max_age) end
    end
    add_vary(c)
    ctx[NAME] = PREFLIGHT
    return response.exit(204)
  end
  if allowed then ctx[NAME] = allowed end
end

local function header_filter(conf, ctx)
  local st = ctx[NAME]
  if st == PREFLIGHT then return end
  local c = compile(conf)
  if type(st) == "string" then
    response.set_header("Access-Control-Allow-Origin", st)
    if c.credentials then response.set_header("Access-Control-Allow-Credentials", "true") end
    if c.exposed then response.set_header("Access-Control-Expose-Headers", c.exposed) end
  end
  add_vary(c)
end

return {
  name = NAME,
  version = "1.0.0",
  priority = 2000,
  schema = schema,
  access = access,
  header_filter = header_filter,
}
