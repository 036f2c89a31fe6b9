-- response-transformer: edits the response on its way to the client:
-- headers (remove / rename / replace / add / append, in header_filter) and,
-- for JSON bodies from the upstream, field removal and an envelope (in
-- body_filter).
--
--   response-transformer:
--     remove:  { headers: [Server, X-Powered-By] }
--     rename:  { headers: { X-Internal-Id: X-Id } }
--     replace: { headers: { Cache-Control: no-store } }
--     add:     { headers: { X-Api-Version: "1.0" } }
--     append:  { headers: { Vary: Accept } }
--     remove_json_fields: [password, user.ssn, items.internal]
--     json_envelope: { api_version: "1.0" }
--     max_buffer_bytes: 1048576
--
-- Header operations apply to every response of the route, the gateway's
-- own errors included; order and semantics as in request-transformer
-- (remove, rename, replace, add, append; names sorted within one op).
--
-- Body transformations apply only to bodies that came from the upstream
-- (a status from the upstream), with Content-Type application/json
-- (parameters allowed) and no Content-Encoding: the gateway's own answers
-- (errors, exits of other plugins) keep their documented shape. The body
-- is buffered until its end, up to max_buffer_bytes; a larger one is sent
-- on untouched from the point it crossed the limit, with one warning per
-- request. A body that is not valid JSON is sent untouched (info log).
--
-- Fields are removed by cutting them out of the JSON text, not by
-- decoding and re-encoding it: everything else stays byte for byte (number
-- precision, key order, [] versus {}, whitespace, escapes), which a cjson
-- round trip would not keep. cjson only validates first. A path "a.b" names key b inside key a;
-- where a path meets an array, the rest of the path applies to each of its
-- elements (so "items.secret" strips secret from every item, and a
-- top-level array is handled the same way). Keys containing "." cannot be
-- named. Repeated keys are all removed.
--
-- The envelope is {"data": <body>, <json_envelope keys, sorted>,
-- "request_id": <ctx.request_id from the request-id plugin, or null>}.
--
-- The body's new length is the core's concern: a route with a body_filter
-- plugin is answered chunked (close-delimited to HTTP/1.0 clients).
-- Docs: docs/plugins/response-transformer.md.
local tg    = require "tollgate"
local header_ops = require "tollgate.header_ops"
local cjson = require "cjson.safe"

local response = tg.response
local request  = tg.request
local type     = type
local pairs    = pairs
local ipairs   = ipairs
local tostring = tostring
local byte     = string.byte
local find     = string.find
local sub      = string.sub
local lower    = string.lower
local concat   = table.concat
local sort     = table.sort
local setmetatable = setmetatable

local NAME = "response-transformer"
local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"
local CORE_HEADERS = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true }
local CONTROL = "[%z\1-\8\10-\31\127]"
local DEFAULT_MAX_BUFFER = 1024 * 1024
local MAX_MAX_BUFFER = 64 * 1024 * 1024   -- a bound on per-request memory an operator may allow

-- A private cjson instance: strict numbers (no hex, Infinity, NaN), and its
-- settings cannot leak into other plugins' cjson.
local json = cjson.new()
json.decode_invalid_numbers(false)

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
  return true
end

local HEADER_NAME = { type = "string", match = TOKEN, check = not_core_header }
local VALUE = { type = "any", check = value_check }

local function values_op()
  return { type = "record", fields = {
    headers = { type = "map", keys = HEADER_NAME, values = VALUE },
  } }
end

local schema = {
  type = "record",
  fields = {
    remove  = { type = "record", fields = { headers = { type = "array", elements = HEADER_NAME } } },
    rename  = { type = "record", fields = { headers = { type = "map", keys = HEADER_NAME, values = HEADER_NAME } } },
    replace = values_op(),
    add     = values_op(),
    append  = values_op(),
    json_envelope = { type = "map",
      keys = { type = "string", min_len = 1, check = function(k)
        if k == "data" or k == "request_id" then return nil, "\"" .. k .. "\" is set by the envelope" end
        return true
      end },
      values = { type = "any", check = function(v)
        local tv = type(v)
        if tv == "string" or tv == "number" or tv == "boolean" then return true end
        return nil, "expected a string, a number or a boolean"
      end } },
    remove_json_fields = { type = "array", min_len = 1,
      -- "a.b.c": non-empty keys separated by single dots.
      elements = { type = "string", min_len = 1, check = function(v)
        if find(v, "^%.") or find(v, "%.$") or find(v, "%.%.") then
          return nil, "expected dot-separated non-empty keys, e.g. user.password"
        end
        return true
      end } },
    max_buffer_bytes = { type = "integer", default = DEFAULT_MAX_BUFFER, min = 1, max = MAX_MAX_BUFFER },
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

local function value_list(map)
  local out = {}
  for _, k in ipairs(sorted_keys(map)) do out[#out + 1] = { name = k, value = tostring(map[k]) } end
  return out
end

-- "a.b", "a.c", "d" -> { a = { b = true, c = true }, d = true }. A shorter
-- path wins over a longer one below it ("a" and "a.b": all of a goes).
local function field_tree(paths)
  local tree = {}
  for _, p in ipairs(paths) do
    local node = tree
    local segs = {}
    for seg in p:gmatch("[^.]+") do segs[#segs + 1] = seg end
    for i, seg in ipairs(segs) do
      if node[seg] == true then break end
      if i == #segs then
        node[seg] = true
      else
        if type(node[seg]) ~= "table" then node[seg] = {} end
        node = node[seg]
      end
    end
  end
  return tree
end

local function compile(conf)
  local c = compiled_cache[conf]
  if c then return c end
  local rn = conf.rename and conf.rename.headers
  local renames = {}
  for _, k in ipairs(sorted_keys(rn)) do renames[#renames + 1] = { from = k, to = rn[k] } end
  c = {
    remove = conf.remove and conf.remove.headers or {},
    rename = renames,
    replace = value_list(conf.replace and conf.replace.headers),
    add = value_list(conf.add and conf.add.headers),
    append = value_list(conf.append and conf.append.headers),
    body = conf.json_envelope ~= nil or conf.remove_json_fields ~= nil,
    max = conf.max_buffer_bytes,
  }
  if conf.remove_json_fields then c.tree = field_tree(conf.remove_json_fields) end
  if conf.json_envelope then
    local parts = {}
    for _, k in ipairs(sorted_keys(conf.json_envelope)) do
      parts[#parts + 1] = "," .. json.encode(k) .. ":" .. json.encode(conf.json_envelope[k])
    end
    c.envelope_tail = concat(parts) .. ",\"request_id\":"
  end
  compiled_cache[conf] = c
  return c
end

-- --------------------------------------------------------------- headers

local function edit_headers(c)
  for _, name in ipairs(c.remove) do response.clear_header(name) end
  header_ops.rename(response, c.rename)
  for _, e in ipairs(c.replace) do
    if response.get_header(e.name) ~= nil then response.set_header(e.name, e.value) end
  end
  for _, e in ipairs(c.add) do
    if response.get_header(e.name) == nil then response.set_header(e.name, e.value) end
  end
  for _, e in ipairs(c.append) do response.add_header(e.name, e.value) end
end

local function is_json(ct)
  if ct == nil then return false end
  ct = lower(ct)
  return find(ct, "^%s*application/json%s*$") ~= nil or find(ct, "^%s*application/json%s*;") ~= nil
end

-- Decides whether this response's body is ours to change; when it is not,
-- tells the core so that (if no other body_filter wants it) the response
-- keeps its framing instead of being re-chunked.
local function wants_body(c)
  if not c.body then return false end
  if response.get_upstream_status() == nil or request.get_method() == "HEAD" then return false end
  if not is_json(response.get_header("Content-Type")) then return false end
  local ce = response.get_header("Content-Encoding")
  return ce == nil or lower(ce) == "identity"
end

local function header_filter(conf, ctx)
  local c = compile(conf)
  edit_headers(c)
  if not wants_body(c) then
    response.skip_body_filter()
    return
  end
  ctx[NAME] = { parts = {}, n = 0, size = 0 }
end

-- ------------------------------------------------- JSON text surgery
-- These functions run on text cjson has just accepted, so they only find
-- boundaries; they never need to report a syntax error.

-- Index of the first non-whitespace byte at or after i (compact JSON has
-- none, hence the byte test before the pattern search).
local function skip_ws(s, i)
  local c = byte(s, i)
  if c ~= 32 and c ~= 10 and c ~= 13 and c ~= 9 then return i end
  return find(s, "[^ \t\r\n]", i)
end

-- Index of the closing quote of the string that opens at i.
local function string_end(s, i)
  local j = i + 1
  while true do
    local k = find(s, '["\\]', j)
    if byte(s, k) == 34 then return k end
    j = k + 2                                  -- skip the escaped byte
  end
end

-- Index of the last byte of the value that starts at i.
local function value_end(s, i)
  local c = byte(s, i)
  if c == 34 then return string_end(s, i) end
  if c == 123 or c == 91 then
    local depth, j = 0, i
    while true do
      local k = find(s, '[%[%]{}"]', j)
      local d = byte(s, k)
      if d == 34 then
        j = string_end(s, k) + 1
      elseif d == 123 or d == 91 then
        depth = depth + 1
        j = k + 1
      else
        depth = depth - 1
        if depth == 0 then return k end
        j = k + 1
      end
    end
  end
  local _, e = find(s, "^[^,%]} \t\r\n]+", i)    -- number, true, false, null
  return e
end

-- Removal records cuts: byte ranges of the body to leave out, in
-- increasing order, a range that touches the previous one extending it.
-- The output is the body minus the cuts, so everything outside a removed
-- member, whitespace included, is copied as it was, in few pieces.
local function add_cut(cuts, from, to)
  local n = cuts.n
  if n > 0 and from <= cuts[n] + 1 then
    if to > cuts[n] then cuts[n] = to end
    return
  end
  cuts[n + 1], cuts[n + 2] = from, to
  cuts.n = n + 2
end

local walk

-- The last byte of the value at i, walking it with `tree` when it is an
-- object or an array and the tree goes on below it.
local function walk_value(s, i, tree, cuts)
  local c = byte(s, i)
  if tree and (c == 123 or c == 91) then return walk(s, i, tree, cuts) end
  return value_end(s, i)
end

walk = function(s, i, tree, cuts)
  if byte(s, i) == 91 then                                   -- array: each element
    local j = skip_ws(s, i + 1)
    if byte(s, j) == 93 then return j end
    while true do
      local e = walk_value(s, j, tree, cuts)
      j = skip_ws(s, e + 1)
      if byte(s, j) == 93 then return j end
      j = skip_ws(s, j + 1)                                  -- past ","
    end
  end
  local j = skip_ws(s, i + 1)                                -- object
  if byte(s, j) == 125 then return j end
  local kept_end = nil      -- last byte of the last member kept so far
  while true do
    local ke = string_end(s, j)
    local key = sub(s, j + 1, ke - 1)
    if find(key, "\\", 1, true) then key = json.decode(sub(s, j, ke)) end
    local vs = skip_ws(s, skip_ws(s, ke + 1) + 1)            -- past ":"
    local sub_tree = tree[key]
    local e, nxt
    if sub_tree == true then
      e = value_end(s, vs)
      nxt = skip_ws(s, e + 1)
      if kept_end then
        add_cut(cuts, kept_end + 1, e)                       -- ", member"
      elseif byte(s, nxt) == 44 then
        add_cut(cuts, j, skip_ws(s, nxt + 1) - 1)            -- "member, "
      else
        add_cut(cuts, j, e)                                  -- the only one
      end
    else
      e = walk_value(s, vs, sub_tree, cuts)
      kept_end = e
      nxt = skip_ws(s, e + 1)
    end
    if byte(s, nxt) == 125 then return nxt end
    j = skip_ws(s, nxt + 1)                                  -- past ","
  end
end

local function remove_fields(body, tree)
  local i = skip_ws(body, 1)
  local c = i and byte(body, i)
  if c ~= 123 and c ~= 91 then return body end
  local cuts = { n = 0 }
  walk(body, i, tree, cuts)
  if cuts.n == 0 then return body end
  local out, pos = {}, 1
  for k = 1, cuts.n, 2 do
    out[#out + 1] = sub(body, pos, cuts[k] - 1)
    pos = cuts[k + 1] + 1
  end
  out[#out + 1] = sub(body, pos)
  return concat(out)
end

local function transform(c, body, ctx)
  local ok, err = json.decode(body)
  if ok == nil then
    tg.log.info("response body is not valid JSON (", err, "), sent untouched")
    return nil
  end
  if c.tree then body = remove_fields(body, c.tree) end
  if c.envelope_tail then
    local id = ctx.request_id
    body = "{\"data\":" .. body .. c.envelope_tail .. (id and json.encode(id) or "null") .. "}"
  end
  return body
end

local function body_filter(conf, ctx, chunk, eof)
  local st = ctx[NAME]
  if st == nil or st.passthrough then return nil end
  local c = compile(conf)
  local size = st.size + #chunk
  if size > c.max then
    st.passthrough = true
    tg.log.warn("response body larger than max_buffer_bytes (", c.max, "), sent untouched")
    local parts = st.parts
    parts[st.n + 1] = chunk
    local out = concat(parts, "", 1, st.n + 1)
    st.parts = nil
    return out
  end
  st.size = size
  if #chunk > 0 then
    st.n = st.n + 1
    st.parts[st.n] = chunk
  end
  if not eof then return "" end
  local body = concat(st.parts, "", 1, st.n)
  st.parts = nil
  ctx[NAME] = nil
  return transform(c, body, ctx) or body
end

return {
  name = NAME,
  version = "1.0.0",
  priority = 800,
  schema = schema,
  header_filter = header_filter,
  body_filter = body_filter,
}
