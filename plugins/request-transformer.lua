-- request-transformer: edits the request before it goes upstream: headers
-- and query arguments (remove / rename / replace / add / append) and the
-- path (a PCRE2 regex with captures).
--
--   request-transformer:
--     remove:  { headers: [X-Debug], query: [debug] }
--     rename:  { headers: { X-Old: X-New }, query: { q: search } }
--     replace: { headers: { X-Env: prod }, query: { v: "2" } }
--     add:     { headers: { X-Consumer: "$(consumer.id)" }, query: { src: gw } }
--     append:  { headers: { X-Via: tollgate }, query: { tag: a } }
--     path:    { pattern: "^/api/v1/(.*)", replace: "/$1" }
--
-- Order (Kong's): remove, rename, replace, add, append; headers first, then
-- the query, then the path. Within one operation, names are applied in
-- sorted order, so a config means the same thing on every run. replace
-- only touches what exists, add only what does not, append always adds
-- (the header repeats; the query argument becomes a list).
--
-- Values may be templates (lua/tollgate/template.lua): $(consumer.id),
-- $(request_id), $(headers.NAME), $(query.NAME), $(client_ip). They are
-- all rendered before this plugin's first edit: headers as they stand then
-- (earlier plugins' edits included, e.g. jwt-auth removing Authorization),
-- query arguments as the client sent them. An edit whose template has a
-- variable without value is skipped, and so is a header value that would
-- contain a control character (a %0d%0a in a query argument copied into a
-- header): the request goes on without that edit.
--
-- The path pattern is matched against the request path as the client sent
-- it (normalized, before strip_prefix); the first match is replaced (sed
-- semantics: text around the match is kept) and the result becomes the
-- upstream path, so strip_prefix does not apply when the pattern matches.
-- A pattern that does not match leaves the path alone.
--
-- Runs in access at priority 801 (Kong's), after the auth plugins, which
-- set ctx.consumer. Everything parsed is cached per config table.
-- Docs: docs/plugins/request-transformer.md.
local tg       = require "tollgate"
local header_ops = require "tollgate.header_ops"
local regex    = require "tollgate.regex"
local template = require "tollgate.template"

local request = tg.request
local type    = type
local tostring = tostring
local pairs   = pairs
local ipairs  = ipairs
local find    = string.find
local lower   = string.lower
local sort    = table.sort
local setmetatable = setmetatable

local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"
local CORE_HEADERS = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true }
local CONTROL = "[%z\1-\8\10-\31\127]"

-- ------------------------------------------------------------------ schema

local function not_core_header(name)
  if CORE_HEADERS[lower(name)] then return nil, name .. " is managed by the gateway" end
  return true
end

local function value_check(v)
  local tv = type(v)
  if tv == "number" then return true end
  if tv ~= "string" then return nil, "expected a string or a number" end
  if find(v, CONTROL) then return nil, "must not contain control characters" end
  return template.check(v)
end

local HEADER_NAME = { type = "string", match = TOKEN, check = not_core_header }
local QUERY_NAME  = { type = "string", min_len = 1 }
local VALUE       = { type = "any", check = value_check }

local function values_op()
  return { type = "record", fields = {
    headers = { type = "map", keys = HEADER_NAME, values = VALUE },
    query   = { type = "map", keys = QUERY_NAME, values = VALUE },
  } }
end

local schema = {
  type = "record",
  fields = {
    remove = { type = "record", fields = {
      headers = { type = "array", elements = HEADER_NAME },
      query   = { type = "array", elements = QUERY_NAME },
    } },
    rename = { type = "record", fields = {
      headers = { type = "map", keys = HEADER_NAME, values = HEADER_NAME },
      query   = { type = "map", keys = QUERY_NAME, values = QUERY_NAME },
    } },
    replace = values_op(),
    add     = values_op(),
    append  = values_op(),
    path = { type = "record",
      fields = {
        pattern = { type = "string", required = true, min_len = 1,
                    check = function(v) return regex.check(v) end },
        replace = { type = "string", required = true,
                    check = function(v, rec)
                      local re = rec and rec.pattern and regex.compile(rec.pattern)
                      if not re then return true end   -- the pattern's own error is reported
                      return re:check_replacement(v)
                    end },
      },
    },
  },
}

-- ------------------------------------------------------- per-config cache

local compiled_cache = setmetatable({}, { __mode = "k" })

local function sorted_keys(map)
  local keys = {}
  if map then for k in pairs(map) do keys[#keys + 1] = k end end
  sort(keys)
  return keys
end

-- { {name=, tpl=}, ... } in name order.
local function value_list(map)
  local out = {}
  for _, k in ipairs(sorted_keys(map)) do
    local v = map[k]
    out[#out + 1] = { name = k, tpl = assert(template.compile(type(v) == "number" and tostring(v) or v)) }
  end
  return out
end

local function pair_list(map)
  local out = {}
  for _, k in ipairs(sorted_keys(map)) do out[#out + 1] = { from = k, to = map[k] } end
  return out
end

local function compile(conf)
  local c = compiled_cache[conf]
  if c then return c end
  local rm, rn, rp, ad, ap = conf.remove or {}, conf.rename or {}, conf.replace or {},
                             conf.add or {}, conf.append or {}
  c = {
    h_remove = rm.headers or {}, h_rename = pair_list(rn.headers),
    h_replace = value_list(rp.headers), h_add = value_list(ad.headers), h_append = value_list(ap.headers),
    q_remove = rm.query or {}, q_rename = pair_list(rn.query),
    q_replace = value_list(rp.query), q_add = value_list(ad.query), q_append = value_list(ap.query),
  }
  c.has_query = #c.q_remove + #c.q_rename + #c.q_replace + #c.q_add + #c.q_append > 0
  -- Lists of value edits whose templates are rendered per request.
  c.value_lists = { c.h_replace, c.h_add, c.h_append, c.q_replace, c.q_add, c.q_append }
  if conf.path then
    c.path_re = assert(regex.compile(conf.path.pattern))
    c.path_replace = conf.path.replace
  end
  compiled_cache[conf] = c
  return c
end

-- ------------------------------------------------------------- templates

local env = {
  consumer = function(ctx, field)
    local c = ctx.consumer
    return type(c) == "table" and c[field] or nil
  end,
  request_id = function(ctx) return ctx.request_id end,
  headers = function(_, name) return request.get_header(name) end,
  query = function(_, name)
    local v = request.get_query_arg(name)
    if v == true then return "" end
    return v
  end,
  client_ip = function() return request.get_client_ip() end,
}

-- Rendered values of this request, keyed by edit entry; false = skip.
-- Filled and emptied within one access() call, which never yields.
local rendered = setmetatable({}, { __mode = "k" })

local function render_all(c, ctx)
  for _, list in ipairs(c.value_lists) do
    for i = 1, #list do
      local e = list[i]
      local v = e.tpl:render(env, ctx)
      rendered[e] = v or false
    end
  end
end

local function clear_rendered(c)
  for _, list in ipairs(c.value_lists) do
    for i = 1, #list do rendered[list[i]] = nil end
  end
end

-- ------------------------------------------------------------- headers

local function header_value(e)
  local v = rendered[e]
  if not v then return nil end
  if find(v, CONTROL) then
    tg.log.info("skipped header ", e.name, ": its value would contain a control character")
    return nil
  end
  return v
end

local function edit_headers(c)
  for _, name in ipairs(c.h_remove) do request.clear_header(name) end

  header_ops.rename(request, c.h_rename)

  for _, e in ipairs(c.h_replace) do
    local v = header_value(e)
    if v and request.get_header(e.name) ~= nil then request.set_header(e.name, v) end
  end
  for _, e in ipairs(c.h_add) do
    local v = header_value(e)
    if v and request.get_header(e.name) == nil then request.set_header(e.name, v) end
  end
  for _, e in ipairs(c.h_append) do
    local v = header_value(e)
    if v then request.add_header(e.name, v) end
  end
end

-- --------------------------------------------------------------- query

local function copy_args(args)
  local out = {}
  for k, v in pairs(args) do
    if type(v) == "table" then
      local l = {}
      for i = 1, #v do l[i] = v[i] end
      v = l
    end
    out[k] = v
  end
  return out
end

local function edit_query(c)
  -- The query as it will go upstream, when the PDK can tell (other plugins
  -- may have edited it, e.g. key-auth removing api_key); otherwise the
  -- client's. See docs/plugins/request-transformer.md, "Query".
  local get_upstream = request.get_upstream_query
  local args = copy_args(get_upstream and get_upstream() or request.get_query())
  local touched, n = {}, 0
  local function touch(name)
    if not touched[name] then
      n = n + 1
      touched[n] = name
      touched[name] = true
    end
  end

  for _, name in ipairs(c.q_remove) do
    if args[name] ~= nil then args[name] = nil; touch(name) end
  end
  for _, r in ipairs(c.q_rename) do
    if args[r.from] ~= nil then
      args[r.to], args[r.from] = args[r.from], nil
      touch(r.from); touch(r.to)
    end
  end
  for _, e in ipairs(c.q_replace) do
    local v = rendered[e]
    if v and args[e.name] ~= nil then args[e.name] = v; touch(e.name) end
  end
  for _, e in ipairs(c.q_add) do
    local v = rendered[e]
    if v and args[e.name] == nil then args[e.name] = v; touch(e.name) end
  end
  for _, e in ipairs(c.q_append) do
    local v = rendered[e]
    if v then
      local cur = args[e.name]
      if cur == nil then
        args[e.name] = v
      elseif type(cur) == "table" then
        cur[#cur + 1] = v
      else
        args[e.name] = { cur == true and "" or cur, v }
      end
      touch(e.name)
    end
  end
  if n == 0 then return end

  if get_upstream then
    request.set_query(args)
    return
  end
  -- Without the upstream view, edit only the touched names so that other
  -- plugins' edits survive; a list value needs the whole query.
  for i = 1, n do
    if type(args[touched[i]]) == "table" then
      request.set_query(args)
      return
    end
  end
  for i = 1, n do
    local name = touched[i]
    request.set_query_arg(name, args[name])
  end
end

-- ---------------------------------------------------------------- path

local function valid_path(p)
  return find(p, "^/") ~= nil and not find(p, "[%z\1-\32\127-\255?#]")
end

local function rewrite_path(c)
  local path = request.get_path()
  local new, count = c.path_re:sub(path, c.path_replace)
  if not new then
    -- The match limit (a pathological path against a backtracking pattern)
    -- or a library error: refuse rather than forward the unrewritten path.
    tg.log.err("path rewrite failed: ", count)
    return tg.response.exit(500, { error = "Internal Server Error" })
  end
  if count == 0 then return end
  if not valid_path(new) then
    tg.log.err("path rewrite of \"", path, "\" gave an invalid path \"", new, "\"")
    return tg.response.exit(500, { error = "Internal Server Error" })
  end
  request.set_path(new)
end

local function access(conf, ctx)
  local c = compile(conf)
  render_all(c, ctx)
  edit_headers(c)
  if c.has_query then edit_query(c) end
  clear_rendered(c)
  if c.path_re then rewrite_path(c) end
end

return {
  name = "request-transformer",
  version = "1.0.0",
  priority = 801,
  schema = schema,
  access = access,
}
