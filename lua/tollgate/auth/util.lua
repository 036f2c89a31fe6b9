-- tollgate.auth.util: request-editing helpers shared by the authentication
-- plugins: taking a credential out of the query string or the Cookie
-- header without disturbing the rest of it (tg.request.set_query_arg
-- re-encodes and reorders every other argument, so it is only used when an
-- earlier plugin already rewrote the query), and the set of header names a
-- client must not be able to send in place of the gateway.

local find, sub, gsub, lower = string.find, string.sub, string.gsub, string.lower
local concat = table.concat
local char, tonumber, ipairs, pairs, type = string.char, tonumber, ipairs, pairs, type

local _M = {}

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- util.strip_query_param(raw, name) -> new raw query, removed (boolean).
-- Drops every `name=...` (and bare `name`) from a raw query string, matching
-- the decoded name as tg.request.get_query_arg does; everything else stays
-- byte for byte, in order.
function _M.strip_query_param(raw, name)
  if raw == nil or raw == "" then
    return raw, false
  end
  -- Every loop below ends at the last separator; the count (one more than
  -- the separators there can be) only makes the bound explicit.
  local out, removed, pos = {}, false, 1
  for _ = 1, #raw + 1 do
    local amp = find(raw, "&", pos, true)
    local piece = sub(raw, pos, (amp or 0) - 1)
    if piece ~= "" then
      local eq = find(piece, "=", 1, true)
      local k = eq and sub(piece, 1, eq - 1) or piece
      if unescape(k) == name then
        removed = true
      else
        out[#out + 1] = piece
      end
    end
    if not amp then
      break
    end
    pos = amp + 1
  end
  if not removed then
    return raw, false
  end
  return concat(out, "&"), true
end

-- Whether two decoded query tables (tg.request.get_query's shape: string,
-- true, or a list of strings per name) hold the same arguments.
local function same_args(a, b)
  for k, v in pairs(a) do
    local w = b[k]
    if type(v) == "table" then
      if type(w) ~= "table" or #w ~= #v then
        return false
      end
      for i = 1, #v do
        if v[i] ~= w[i] then return false end
      end
    elseif v ~= w then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

-- util.remove_query_arg(request, name) -> true when `name` was in the query
-- going upstream and is now removed. request: tg.request. When no earlier
-- plugin changed the query, the client's raw query goes on byte for byte
-- minus that parameter; otherwise set_query_arg removes it, keeping the
-- earlier edits (at the price of re-encoding the query).
function _M.remove_query_arg(request, name)
  local upstream = request.get_upstream_query()
  if upstream[name] == nil then
    return false
  end
  if same_args(upstream, request.get_query()) then
    local q = _M.strip_query_param(request.get_raw_query(), name)
    request.set_query(q)
  else
    request.set_query_arg(name, nil)
  end
  return true
end

-- util.get_cookie(header, name) -> value | nil. The first cookie `name`
-- in a Cookie header value (RFC 6265 5.4: "name=value" pairs joined by "; ").
function _M.get_cookie(header, name)
  if header == nil then
    return nil
  end
  local pos = 1
  for _ = 1, #header + 1 do
    local semi = find(header, ";", pos, true)
    local piece = sub(header, pos, (semi or 0) - 1)
    local k, v = piece:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
    if k == name then
      if sub(v, 1, 1) == '"' and sub(v, -1) == '"' and #v >= 2 then
        v = sub(v, 2, -2)
      end
      return v
    end
    if not semi then
      return nil
    end
    pos = semi + 1
  end
  return nil
end

-- util.strip_cookie(header, name) -> new header value (nil when no cookie
-- is left), removed (boolean).
function _M.strip_cookie(header, name)
  if header == nil then
    return nil, false
  end
  local out, removed, pos = {}, false, 1
  for _ = 1, #header + 1 do
    local semi = find(header, ";", pos, true)
    local piece = sub(header, pos, (semi or 0) - 1)
    local k = piece:match("^%s*([^=]-)%s*=")
    if k == name then
      removed = true
    elseif piece:find("%S") then
      out[#out + 1] = piece:match("^%s*(.-)%s*$")
    end
    if not semi then
      break
    end
    pos = semi + 1
  end
  if not removed then
    return header, false
  end
  if #out == 0 then
    return nil, true
  end
  return concat(out, "; "), true
end

-- util.spoofable(names) -> list of header names to clear before setting
-- identity headers: each name, plus its spelling with underscores, which
-- some upstream stacks (CGI-style environments, some frameworks) treat as
-- the same header. Deduplicated case-insensitively.
function _M.spoofable(names)
  local out, seen = {}, {}
  for i = 1, #names do
    for _, n in ipairs({ names[i], (gsub(names[i], "-", "_")) }) do
      local l = lower(n)
      if not seen[l] then
        seen[l] = true
        out[#out + 1] = n
      end
    end
  end
  return out
end

-- util.valid_header_value(v) -> whether v can go into a header as is (no
-- control characters, so no header injection from a claim).
function _M.valid_header_value(v)
  return not find(v, "[%z\1-\8\10-\31\127]")
end

return _M
