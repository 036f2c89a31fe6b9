-- proxy-cache: keeps upstream responses to GET (and serves HEAD from them)
-- in a shared dict, so every worker answers repeated requests without the
-- upstream until the entry expires.
--
-- Key: host, path and the query with its arguments sorted (a=1&b=2 and
-- b=2&a=1 are one entry), plus the values of `vary_headers` and, with
-- `vary_consumer`, ctx.consumer.id. Components are joined with NUL bytes,
-- which no URI or header value contains, so two different requests cannot
-- build the same key.
--
-- Flow: access looks the key up; a HIT ends the request with the stored
-- status, headers and body (X-Cache-Status: HIT, Age). On a MISS the request
-- goes upstream; header_filter decides whether the response may be stored
-- (status in `statuses`, no Cache-Control no-store / private / no-cache, no
-- Set-Cookie, Vary only on headers that are part of the key, a positive
-- TTL from s-maxage, max-age, minus Age, else `ttl_s`), and body_filter
-- collects the body up to `max_object_bytes` and stores it when the last
-- chunk has passed. A response that is not stored is marked BYPASS, as is
-- a request that could not use the cache (method, Cache-Control: no-store).
-- The dict's LRU eviction bounds the memory: a full dict drops its least
-- recently used entries to make room.
--
-- What is stored is what this plugin's header_filter and body_filter see:
-- the upstream's response after the filters of plugins with a higher
-- priority. Those run again on a HIT, so they must set headers rather than
-- add them; response-transformer (priority below 850) runs after and so
-- transforms the stored upstream response once per request, as it should.
-- Response headers set by plugins before the response existed (in access,
-- e.g. rate-limiting's counters) are not stored.
--
-- Purge on the admin listener (see docs/plugins/proxy-cache.md):
--   GET    /proxy-cache                 entries and free space per dict
--   DELETE /proxy-cache/purge           every entry
--   DELETE /proxy-cache/purge?path=/p   entries for that path (any query);
--          &host=h narrows to a host; prefix=/p instead of path= for a subtree
-- (POST works like DELETE.)
local tg = require "tollgate"
local cjson = require "cjson.safe"

local type, pairs, ipairs, tostring, tonumber, setmetatable = type, pairs, ipairs, tostring, tonumber, setmetatable
local sub, find, lower, match, gmatch, gsub, char =
  string.sub, string.find, string.lower, string.match, string.gmatch, string.gsub, string.char
local concat, sort = table.concat, table.sort
local floor, max = math.floor, math.max
local now = tg.now
local req_get_header = tg.request.get_header
local get_method = tg.request.get_method
local get_host = tg.request.get_host
local get_path = tg.request.get_path
local get_raw_query = tg.request.get_raw_query
local resp = tg.response
local skip_body_filter = tg.response.skip_body_filter

local NAME = "proxy-cache"
local DEFAULT_DICT = "cache"
local PREFIX = "pc:"
local MAX_KEY_BYTES = 16384   -- longer keys (huge queries, header values) are not cached
local SEP = "\0"

-- Headers never stored: per-response, ours, or ones the core writes on
-- every local answer (Date, Server), which a hit is; sending the stored
-- ones too would repeat them. Age tells how old a hit is.
local NOT_STORED = { ["x-cache-status"] = true, age = true, ["set-cookie"] = true,
                     date = true, server = true }

-- conf table -> { dict, statuses (set), vary (sorted lowercase names), vary_set }
local compiled = setmetatable({}, { __mode = "k" })

local function compile(conf)
  local c = compiled[conf]
  if c then return c end
  local name = conf.dict or DEFAULT_DICT
  local dict, err = tg.shared.dict(name)
  if not dict then error("shared dict \"" .. name .. "\": " .. tostring(err)) end
  c = { dict = dict, statuses = {}, vary = {}, vary_set = {} }
  for _, s in ipairs(conf.statuses) do c.statuses[s] = true end
  for _, h in ipairs(conf.vary_headers) do
    local l = lower(h)
    if not c.vary_set[l] then
      c.vary_set[l] = true
      c.vary[#c.vary + 1] = l
    end
  end
  sort(c.vary)
  compiled[conf] = c
  return c
end

-- Cache-Control directives as a table: name -> true or its value.
local function directives(v)
  if v == nil then return nil end
  if type(v) == "table" then v = concat(v, ",") end
  local d = {}
  for part in gmatch(v, "[^,]+") do
    local k, val = match(part, "^%s*([%w-]+)%s*=%s*\"?([^\"]*)\"?%s*$")
    if k then d[lower(k)] = val
    else
      k = match(part, "^%s*([%w-]+)%s*$")
      if k then d[lower(k)] = true end
    end
  end
  return d
end

-- The query with its arguments in a stable order.
local function sorted_query()
  local q = get_raw_query()
  if q == "" or not find(q, "&", 1, true) then return q end
  local parts, n = {}, 0
  for p in gmatch(q, "[^&]+") do
    n = n + 1
    parts[n] = p
  end
  sort(parts)
  return concat(parts, "&")
end

local function cache_key(c, conf, ctx)
  local parts = { PREFIX .. lower(get_host()), get_path(), sorted_query() }
  for _, h in ipairs(c.vary) do
    parts[#parts + 1] = req_get_header(h) or ""
  end
  if conf.vary_consumer then
    local consumer = ctx.consumer
    local id = type(consumer) == "table" and consumer.id
    parts[#parts + 1] = id ~= nil and tostring(id) or ""
  end
  return concat(parts, SEP)
end

-- Whether If-None-Match names the stored ETag (weak comparison).
local function etag_matches(inm, etag)
  if etag == nil then return false end
  if inm == "*" then return true end
  local bare = gsub(etag, "^W/", "")
  for tag in gmatch(inm, "[^,]+") do
    tag = gsub(match(tag, "^%s*(.-)%s*$"), "^W/", "")
    if tag == bare then return true end
  end
  return false
end

local function serve(c, entry)
  local nl = find(entry, "\n", 1, true)
  local meta = nl and cjson.decode(sub(entry, 1, nl - 1))
  if type(meta) ~= "table" or type(meta.s) ~= "number" or type(meta.h) ~= "table" then
    return false   -- not ours or damaged: treat as a miss and overwrite
  end
  local etag
  for _, h in ipairs(meta.h) do
    resp.add_header(h[1], h[2])
    if h[1] == "etag" then etag = h[2] end
  end
  resp.set_header("X-Cache-Status", "HIT")
  resp.set_header("Age", tostring(max(0, floor(now() - meta.t)) + (meta.a or 0)))
  local inm = req_get_header("if-none-match")
  if inm and meta.s == 200 and etag_matches(inm, etag) then
    return resp.exit(304)
  end
  return resp.exit(meta.s, sub(entry, nl + 1))
end

local function bypass(ctx)
  ctx[NAME] = { bypass = true }
  resp.set_header("X-Cache-Status", "BYPASS")
end

local function access(conf, ctx)
  local method = get_method()
  if method ~= "GET" and method ~= "HEAD" then return bypass(ctx) end
  local c = compile(conf)
  local refresh = false
  if conf.request_cache_control then
    local cc = directives(req_get_header("cache-control"))
    if cc then
      if cc["no-store"] then return bypass(ctx) end
      if cc["no-cache"] or cc["max-age"] == "0" then refresh = true end
    elseif req_get_header("pragma") == "no-cache" then
      refresh = true
    end
  end
  local key = cache_key(c, conf, ctx)
  if #key > MAX_KEY_BYTES then return bypass(ctx) end
  if not refresh then
    local entry = c.dict:get(key)
    if type(entry) == "string" then
      ctx[NAME] = { hit = true }
      serve(c, entry)
    end
  end
  -- A miss. Headers plugins already set for the response are theirs, not
  -- the upstream's: remember their names so they are not stored.
  local pre
  for name in pairs(resp.get_headers()) do
    pre = pre or {}
    pre[name] = true
  end
  ctx[NAME] = { key = key, pre = pre, head = method == "HEAD" }
end

-- The TTL the response allows, or nil when it must not be stored.
local function response_ttl(conf, c, st, headers)
  if headers["set-cookie"] ~= nil then return nil end
  local cc = directives(headers["cache-control"])
  local ttl = conf.ttl_s
  if cc then
    if cc["no-store"] or cc["private"] or cc["no-cache"] then return nil end
    local s = tonumber(cc["s-maxage"]) or tonumber(cc["max-age"])
    if s then ttl = s end
  end
  -- A request that carried credentials may only be shared when the
  -- response says so (RFC 9111 3.5), unless the key holds the consumer.
  if st.auth and not (cc and (cc.public or cc["s-maxage"])) then return nil end
  local vary = headers["vary"]
  if vary then
    if type(vary) == "table" then vary = concat(vary, ",") end
    for h in gmatch(vary, "[^,%s]+") do
      if h == "*" or not c.vary_set[lower(h)] then return nil end
    end
  end
  local age = tonumber(headers["age"]) or 0
  ttl = ttl - age
  if ttl <= 0 then return nil end
  return ttl, age
end

local function header_filter(conf, ctx)
  local st = ctx[NAME]
  if st == nil or st.hit or st.bypass then
    -- Nothing to collect: keep the response's framing (a hit keeps its
    -- Content-Length) instead of having the core re-chunk it for us.
    return skip_body_filter()
  end
  local c = compile(conf)
  local status = resp.get_status()
  local ttl, age
  if resp.get_upstream_status() ~= nil and c.statuses[status] and not st.head then
    local headers = resp.get_headers()
    st.auth = not conf.vary_consumer and req_get_header("authorization") ~= nil
    ttl, age = response_ttl(conf, c, st, headers)
    if ttl then
      local list = {}
      local pre = st.pre
      for name, v in pairs(headers) do
        if not NOT_STORED[name] and not (pre and pre[name]) then
          if type(v) == "table" then
            for _, x in ipairs(v) do list[#list + 1] = { name, x } end
          else
            list[#list + 1] = { name, v }
          end
        end
      end
      st.meta = cjson.encode({ s = status, t = now(), a = age, h = list })
      st.ttl = ttl
      st.buf, st.n, st.size = {}, 0, 0
    end
  end
  -- HEAD goes upstream as HEAD (the PDK cannot turn it into a GET), so its
  -- answer has no body to store: a MISS that fills nothing.
  resp.set_header("X-Cache-Status", (ttl or st.head) and "MISS" or "BYPASS")
  if not ttl then skip_body_filter() end
end

local function body_filter(conf, ctx, chunk, eof)
  local st = ctx[NAME]
  if st == nil or st.buf == nil then return end
  if #chunk > 0 then
    local size = st.size + #chunk
    if size > conf.max_object_bytes then
      st.buf = nil     -- too large: stream it on, keep nothing
      return
    end
    st.size = size
    st.n = st.n + 1
    st.buf[st.n] = chunk
  end
  if eof then
    local value = st.meta .. "\n" .. concat(st.buf, "", 1, st.n)
    st.buf = nil
    local ok, err = compile(conf).dict:set(st.key, value, st.ttl)
    if not ok then tg.log.info("not stored: ", err) end
  end
end

-- ---------------------------------------------------------------- admin

local function unescape(s)
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- Names of the dicts any proxy-cache config uses.
local function cache_dicts()
  local conf = tg.config()
  local names, list = {}, {}
  local function add(pc)
    if type(pc) == "table" then
      local n = type(pc.dict) == "string" and pc.dict or DEFAULT_DICT
      if not names[n] then
        names[n] = true
        list[#list + 1] = n
      end
    end
  end
  if type(conf) == "table" then
    if type(conf.plugins) == "table" then add(conf.plugins[NAME]) end
    if type(conf.routes) == "table" then
      for _, r in ipairs(conf.routes) do
        if type(r) == "table" and type(r.plugins) == "table" then add(r.plugins[NAME]) end
      end
    end
  end
  sort(list)
  return list
end

local function purge(args)
  local host = args.host and lower(unescape(args.host))
  local path = args.path and unescape(args.path)
  local prefix = args.prefix and unescape(args.prefix)
  local purged = 0
  for _, name in ipairs(cache_dicts()) do
    local dict = tg.shared.dict(name)
    if dict then
      for _, key in ipairs(dict:get_keys(0)) do
        if sub(key, 1, #PREFIX) == PREFIX then
          local khost, kpath = match(key, "^pc:([^%z]*)%z([^%z]*)")
          local ok = khost ~= nil
            and (host == nil or khost == host)
            and (path == nil or kpath == path)
            and (prefix == nil or sub(kpath, 1, #prefix) == prefix)
          if ok then
            dict:delete(key)
            purged = purged + 1
          end
        end
      end
    end
  end
  return purged
end

local function admin(method, path, args)
  if path == "/proxy-cache" then
    if method ~= "GET" and method ~= "HEAD" then return 405, { error = "Method Not Allowed" } end
    local out = {}
    for _, name in ipairs(cache_dicts()) do
      local dict = tg.shared.dict(name)
      if dict then
        local n = 0
        for _, key in ipairs(dict:get_keys(0)) do
          if sub(key, 1, #PREFIX) == PREFIX then n = n + 1 end
        end
        out[name] = { entries = n, capacity = dict:capacity(), free_space = dict:free_space() }
      end
    end
    return 200, { dicts = out }
  end
  if path == "/proxy-cache/purge" then
    if method ~= "DELETE" and method ~= "POST" then return 405, { error = "Method Not Allowed" } end
    if args.path and args.prefix then
      return 400, { error = "path and prefix are mutually exclusive" }
    end
    return 200, { purged = purge(args) }
  end
  return 404, { error = "Not Found" }
end

-- ---------------------------------------------------------------- schema

local dict_configured = require("tollgate.shdict").configured

return {
  name = NAME,
  version = "1.0.0",
  -- After authentication, ip-restriction, size limits and rate limiting
  -- (a cached answer is still only for those allowed to get it), before
  -- response-transformer (so the stored response is the upstream's, see
  -- above) and before canary / circuit-breaker (a hit needs no upstream).
  priority = 850,
  schema = {
    type = "record",
    fields = {
      -- No schema default for dict: see circuit-breaker (the check needs
      -- the operator's config); the entity check covers the default.
      dict = { type = "string", check = dict_configured,
               description = "shared dict holding the entries (default cache)" },
      ttl_s = { type = "number", default = 300, gt = 0,
                description = "TTL when the response has no s-maxage / max-age" },
      statuses = { type = "array", default = { 200, 301, 404 }, min_len = 1,
                   elements = { type = "integer", min = 200, max = 599 } },
      vary_headers = { type = "array", default = {}, max_len = 16,
                       elements = { type = "string", match = "^[%w!#$%%&'*+.^_`|~-]+$" } },
      vary_consumer = { type = "boolean", default = false },
      max_object_bytes = { type = "integer", default = 1048576, min = 1 },
      request_cache_control = { type = "boolean", default = true,
                                description = "honour the client's no-store / no-cache" },
    },
    entity_checks = { function(conf)
      if conf.dict then return true end
      local ok, err = dict_configured(DEFAULT_DICT)
      if not ok then return nil, "dict: " .. err end
      return true
    end },
  },
  access = access,
  header_filter = header_filter,
  body_filter = body_filter,
  admin = { ["/proxy-cache"] = admin },
}
