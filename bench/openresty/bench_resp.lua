-- bench/openresty/bench_resp.lua: the smallest RESP (Redis protocol) client
-- the rate-limit policy needs, over ngx.socket.tcp with its keep-alive
-- pool; written for this benchmark because lua-resty-redis is not packaged
-- in Debian. Commands go out pipelined, in one write.
local tcp = ngx.socket.tcp
local concat = table.concat
local sub, byte, tonumber = string.sub, string.byte, tonumber

local _M = {}

local POOL_SIZE = 32
local IDLE_MS = 60000

local function encode(args, out)
  out[#out + 1] = "*" .. #args .. "\r\n"
  for i = 1, #args do
    local a = tostring(args[i])
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
end

local function read_reply(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local t = byte(line)
  if t == 58 then return tonumber(sub(line, 2)) end          -- ':' integer
  if t == 43 then return sub(line, 2) end                    -- '+' status
  if t == 45 then return false, sub(line, 2) end             -- '-' error
  if t == 36 then                                            -- '$' bulk
    local n = tonumber(sub(line, 2))
    if n < 0 then return ngx.null end
    local data
    data, err = sock:receive(n + 2)
    if not data then return nil, err end
    return sub(data, 1, n)
  end
  return nil, "unsupported reply " .. line
end

-- pipeline(host, port, timeout_ms, {cmd...}, {cmd...}) -> {reply...} | nil, err
function _M.pipeline(host, port, timeout_ms, ...)
  local sock = tcp()
  sock:settimeout(timeout_ms)
  local ok, err = sock:connect(host, port)
  if not ok then return nil, err end
  local out = {}
  local n = select("#", ...)
  for i = 1, n do encode(select(i, ...), out) end
  ok, err = sock:send(concat(out))
  if not ok then sock:close() return nil, err end
  local replies = {}
  for i = 1, n do
    local r, rerr = read_reply(sock)
    if r == nil then sock:close() return nil, rerr end
    replies[i] = r
  end
  sock:setkeepalive(IDLE_MS, POOL_SIZE)
  return replies
end

return _M
