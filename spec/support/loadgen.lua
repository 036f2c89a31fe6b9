-- spec/support/loadgen.lua: a small, bounded HTTP/1.1 load client for the
-- process-model specs (spec/02-integration/08-process_spec.lua).
--
-- It runs as its own process so that a spec can keep sending signals to the
-- gateway while requests flow. One connection at a time, sequential
-- requests: either keep-alive (reuse the connection until the server says
-- close) or a new connection per request. Every request must come back
-- 200 with a complete body (Content-Length or chunked framing fully read)
-- that contains the --expect string, if one is given.
--
-- The one tolerated race is the one every HTTP client library retries: on
-- a REUSED keep-alive connection, the server may close an idle connection
-- (a draining worker does exactly that) while our next request is in
-- flight. When such a request got no response byte at all, it is retried
-- once on a fresh connection and counted as "retried", not failed. A
-- partial response, a non-200 status, a timeout, or any failure on a fresh
-- connection is a failure.
--
-- Usage (from the repo root):
--   luajit spec/support/loadgen.lua PORT [--requests N] [--seconds S]
--          [--mode keepalive|new] [--path /p] [--expect STR] [--addr A]
--          [--header "Name: value"]...
-- Prints "started" first, then one summary line:
--   ok N fail M retried R conns C max_ms X avg_ms Y
-- and the first few failure reasons as "fail: ..." lines on stderr.
-- Stops after N requests or S seconds, whichever comes first; every socket
-- operation has a timeout, so the process always ends.

local socket = require "socket"

local gettime = socket.gettime
local fmt, concat = string.format, table.concat

local MAX_HEADER_LINES = 200    -- per response; more is a broken response
local MAX_CHUNKS = 100000       -- per chunked body
local IO_TIMEOUT = 5            -- seconds per socket operation
local MAX_REPORTED = 10         -- failure reasons written to stderr

local opts = {
  port = tonumber(arg[1]), requests = 1000, seconds = 5, mode = "keepalive",
  path = "/", addr = "127.0.0.1", headers = {},
}
do
  local i = 2
  while arg[i] do
    local k, v = arg[i], arg[i + 1]
    if v == nil then
      io.stderr:write("loadgen: missing value for ", k, "\n")
      os.exit(2)
    end
    if k == "--requests" then opts.requests = tonumber(v)
    elseif k == "--seconds" then opts.seconds = tonumber(v)
    elseif k == "--mode" then opts.mode = v
    elseif k == "--path" then opts.path = v
    elseif k == "--expect" then opts.expect = v
    elseif k == "--addr" then opts.addr = v
    elseif k == "--header" then opts.headers[#opts.headers + 1] = v
    else
      io.stderr:write("loadgen: unknown option ", k, "\n")
      os.exit(2)
    end
    i = i + 2
  end
end
if not opts.port or not opts.requests or not opts.seconds
   or (opts.mode ~= "keepalive" and opts.mode ~= "new") then
  io.stderr:write("usage: loadgen.lua PORT [--requests N] [--seconds S] [--mode keepalive|new]"
                  .. " [--path P] [--expect S] [--addr A] [--header H]\n")
  os.exit(2)
end

local function connect()
  local sock = opts.addr:find(":", 1, true) and socket.tcp6() or socket.tcp()
  sock:settimeout(IO_TIMEOUT)
  local ok, err = sock:connect(opts.addr, opts.port)
  if not ok then
    sock:close()
    return nil, "connect: " .. tostring(err)
  end
  sock:setoption("tcp-nodelay", true)
  return sock
end

-- Reads one response. Returns res, or nil, err, got_any_byte.
local function read_response(sock)
  local line, err, partial = sock:receive("*l")
  if not line then
    return nil, "status line: " .. tostring(err), partial ~= nil and partial ~= ""
  end
  local status = tonumber(line:match("^HTTP/1%.[01] (%d%d%d)"))
  if not status then
    return nil, "bad status line: " .. line, true
  end
  local headers = {}
  for _ = 1, MAX_HEADER_LINES + 1 do
    line, err = sock:receive("*l")
    if not line then
      return nil, "header: " .. tostring(err), true
    end
    if line == "" then
      break
    end
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if not name then
      return nil, "bad header line: " .. line, true
    end
    headers[name:lower()] = value
  end
  local body
  local te, cl = headers["transfer-encoding"], headers["content-length"]
  if te and te:lower():find("chunked", 1, true) then
    local parts = {}
    for _ = 1, MAX_CHUNKS do
      line, err = sock:receive("*l")
      local size = line and tonumber(line:match("^(%x+)"), 16)
      if not size then
        return nil, "chunk size: " .. tostring(err or line), true
      end
      if size == 0 then
        -- Trailers, up to the empty line.
        for _ = 1, MAX_HEADER_LINES do
          line, err = sock:receive("*l")
          if not line then
            return nil, "trailer: " .. tostring(err), true
          end
          if line == "" then
            break
          end
        end
        break
      end
      local data
      data, err = sock:receive(size + 2)
      if not data then
        return nil, "chunk data: " .. tostring(err), true
      end
      parts[#parts + 1] = data:sub(1, size)
    end
    body = concat(parts)
  elseif cl then
    local n = tonumber(cl)
    if not n then
      return nil, "bad content-length: " .. cl, true
    end
    body, err, partial = sock:receive(n)
    if not body then
      return nil, fmt("body: %s after %d of %d bytes", tostring(err), #(partial or ""), n), true
    end
  else
    return nil, "response without length (status " .. status .. ")", true
  end
  return { status = status, headers = headers, body = body }
end

local head_tail = ""
if #opts.headers > 0 then
  head_tail = concat(opts.headers, "\r\n") .. "\r\n"
end

local ok, fail, retried, conns = 0, 0, 0, 0
local max_ms, total_ms = 0, 0
local reported = 0

local function report(why)
  fail = fail + 1
  if reported < MAX_REPORTED then
    reported = reported + 1
    io.stderr:write("fail: ", why, "\n")
    io.stderr:flush()
  end
end

io.stdout:write("started\n")
io.stdout:flush()

local sock, used = nil, 0
local deadline = gettime() + opts.seconds
for i = 1, opts.requests do
  if gettime() >= deadline then
    break
  end
  local req = fmt("GET %s%sn=%d HTTP/1.1\r\nHost: loadgen\r\n%s\r\n", opts.path,
                  opts.path:find("?", 1, true) and "&" or "?", i, head_tail)
  local t0 = gettime()
  local res, err
  -- At most two attempts: the second only for the keep-alive race.
  for attempt = 1, 2 do
    if not sock then
      sock, err = connect()
      used = 0
      if not sock then
        break
      end
      conns = conns + 1
    end
    local sent, serr = sock:send(req)
    local got_byte = false
    if sent then
      res, err, got_byte = read_response(sock)
    else
      err = "send: " .. tostring(serr)
    end
    if res then
      used = used + 1
      break
    end
    local reused = used > 0
    sock:close()
    sock = nil
    if not (attempt == 1 and reused and not got_byte) then
      err = fmt("%s (attempt %d, %s connection, %s)", err, attempt,
                reused and "reused" or "fresh", got_byte and "partial response" or "no response byte")
      break
    end
    retried = retried + 1
  end
  local ms = (gettime() - t0) * 1000
  total_ms = total_ms + ms
  if ms > max_ms then
    max_ms = ms
  end
  if not res then
    report(err)
  elseif res.status ~= 200 then
    report(fmt("status %d: %s", res.status, res.body:sub(1, 200)))
  elseif opts.expect and not res.body:find(opts.expect, 1, true) then
    report(fmt("body without %q: %s", opts.expect, res.body:sub(1, 200)))
  else
    ok = ok + 1
  end
  if sock and (opts.mode == "new" or (res and (res.headers.connection or ""):lower():find("close", 1, true))) then
    sock:close()
    sock = nil
  end
end
if sock then
  sock:close()
end

local n = ok + fail
io.stdout:write(fmt("ok %d fail %d retried %d conns %d max_ms %.1f avg_ms %.2f\n", ok, fail,
                    retried, conns, max_ms, n > 0 and total_ms / n or 0))
io.stdout:flush()
