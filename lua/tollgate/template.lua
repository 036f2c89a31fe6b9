-- tollgate.template: values with request variables, parsed once per config.
--
-- A template is a string with $(...) variables:
--   $(consumer.FIELD)  a field of ctx.consumer (set by the auth plugins),
--                      e.g. $(consumer.id), $(consumer.plan)
--   $(request_id)      ctx.request_id (set by the request-id plugin)
--   $(headers.NAME)    request header NAME (case-insensitive; the first one)
--   $(query.NAME)      query argument NAME of the client's request, decoded
--                      (the first one when repeated)
--   $(client_ip)       the client address
-- "$$(" is a literal "$(", any other "$" is literal. Unknown variables and
-- unterminated "$(" are config errors.
--
-- compile() splits the string once into literal pieces and variable
-- getters; render() fills a scratch list and concatenates it. It returns
-- nil when a variable has no value (no consumer, header absent, ...): the
-- caller then skips the edit rather than send a half-filled value such as
-- "Bearer ". A template without variables renders to its string directly.
--
-- Variables are read through an `env` the caller passes (the plugin builds
-- it on the PDK once), so this module needs no request and unit specs can
-- render with a table.
local type   = type
local find   = string.find
local sub    = string.sub
local gsub   = string.gsub
local concat = table.concat
local tostring = tostring
local setmetatable = setmetatable

local _M = {}

local tpl_mt = {}
tpl_mt.__index = tpl_mt

-- Variable kinds: name pattern of the argument, or false for none.
local KINDS = {
  consumer  = "^[%a_][%w_]*$",
  headers   = "^[%w!#$%%&'*+%-.^_`|~]+$",
  query     = "^[^%s]+$",
  request_id = false,
  client_ip  = false,
}

local function parse_var(text)
  local kind, arg = text:match("^([%a_]+)%.(.*)$")
  if not kind then kind = text end
  local argpat = KINDS[kind]
  if argpat == nil then return nil, "unknown template variable $(" .. text .. ")" end
  if argpat == false then
    if arg then return nil, "unknown template variable $(" .. text .. ")" end
    return { kind = kind }
  end
  if not arg or arg == "" or not find(arg, argpat) then
    return nil, "template variable $(" .. text .. ") needs a valid name after \"" .. kind .. ".\""
  end
  return { kind = kind, arg = arg }
end

--- template.compile(s) -> tpl, or nil, err. tpl.static is the string when
-- it has no variables.
function _M.compile(s)
  if type(s) ~= "string" then error("template.compile: expected a string", 2) end
  local parts, i, n, has_var = {}, 1, #s, false
  local lit = {}
  while i <= n do
    local d = find(s, "$(", i, true)
    if not d then
      lit[#lit + 1] = sub(s, i)
      break
    end
    if d > 1 and sub(s, d - 1, d - 1) == "$" and d - 1 >= i then
      -- "$$(": literal "$(" (the first "$" is dropped).
      lit[#lit + 1] = sub(s, i, d - 2) .. "$("
      i = d + 2
    else
      lit[#lit + 1] = sub(s, i, d - 1)
      local close = find(s, ")", d + 2, true)
      if not close then return nil, "unterminated \"$(\" at offset " .. (d - 1) end
      local v, err = parse_var(sub(s, d + 2, close - 1))
      if not v then return nil, err end
      local l = concat(lit)
      if l ~= "" then parts[#parts + 1] = l end
      lit = {}
      parts[#parts + 1] = v
      has_var = true
      i = close + 1
    end
  end
  local l = concat(lit)
  if l ~= "" then parts[#parts + 1] = l end
  local tpl = setmetatable({ parts = parts, source = s }, tpl_mt)
  if not has_var then tpl.static = l end
  return tpl
end

--- template.check(s) -> true, or nil, err: for schema checks.
function _M.check(s)
  local tpl, err = _M.compile(s)
  if not tpl then return nil, err end
  return true
end

local scratch = {}   -- render() output pieces; rendering never yields

--- tpl:render(env, ctx) -> string, or nil when a variable has no value.
-- env: { consumer = fn(ctx, field), request_id = fn(ctx), headers =
-- fn(ctx, name), query = fn(ctx, name), client_ip = fn(ctx) }, each
-- returning a string (numbers are converted) or nil.
function tpl_mt:render(env, ctx)
  if self.static then return self.static end
  local parts = self.parts
  local n = #parts
  for i = 1, n do
    local p = parts[i]
    if type(p) == "string" then
      scratch[i] = p
    else
      local v = env[p.kind](ctx, p.arg)
      local tv = type(v)
      if tv == "number" then v = tostring(v)
      elseif tv ~= "string" then
        for k = 1, i - 1 do scratch[k] = nil end
        return nil
      end
      scratch[i] = v
    end
  end
  local out = concat(scratch, "", 1, n)
  for k = 1, n do scratch[k] = nil end
  return out
end

--- template.escape(s) -> s with every "$(" written "$$(", so that a
-- literal string compiles to itself.
function _M.escape(s)
  return (gsub(s, "%$%(", "$$("))
end

return _M
