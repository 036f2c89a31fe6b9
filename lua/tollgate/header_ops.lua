-- tollgate.header_ops: header edits shared by request-transformer and
-- response-transformer. `api` is tg.request or tg.response: both offer
-- get_headers / clear_header / set_header / add_header with the same
-- meaning on their side of the proxy.
local lower  = string.lower
local ipairs = ipairs
local type   = type

local _M = {}

-- Renames headers: every value of `from` moves to `to` (repeated headers
-- keep all their values, in order). renames: list of { from =, to = }.
function _M.rename(api, renames)
  if #renames == 0 then return end
  local all = api.get_headers()
  for _, r in ipairs(renames) do
    local v = all[lower(r.from)]
    if v ~= nil then
      api.clear_header(r.from)
      if type(v) == "table" then
        api.set_header(r.to, v[1])
        for i = 2, #v do api.add_header(r.to, v[i]) end
      else
        api.set_header(r.to, v)
      end
      all[lower(r.to)] = v
      all[lower(r.from)] = nil
    end
  end
end

return _M
