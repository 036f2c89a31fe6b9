-- spec/helpers.lua: what every busted spec uses to drive the real binaries.
--
-- Specs start the real gateway with a generated YAML config, a real upstream
-- (tg-echo) and, when needed, a real Redis, then talk to them over real
-- sockets on 127.0.0.1 (Kong's spec helpers are the model). Nothing here
-- mocks the gateway.
--
-- Runs under LuaJIT with LuaSocket and lua-cjson only. Load it from the repo
-- root as `local helpers = require "spec.helpers"`.
--
-- Error contract (house style): runtime failures that a spec may want to
-- assert on return `nil, err` (request, raw, wait_until); failing to start a
-- fixture raises, because no spec can continue without it; misuse raises
-- with error(msg, 2).
--
-- Process hygiene: every process started here is recorded, and stop() kills
-- exactly that PID (SIGTERM, bounded wait, SIGKILL). Call helpers.stop_all()
-- in teardown(). Every wait and loop is bounded in time.

local socket = require "socket"
local cjson = require "cjson.safe"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local concat, insert, sort = table.concat, table.insert, table.sort
local fmt, rep = string.format, string.rep
local floor, huge = math.floor, math.huge
local gettime = socket.gettime

local _M = {}

-- The registry of processes and temp dirs this Lua state started: the one
-- piece of module-level mutable state, needed so stop_all() can clean up.
local started = {}
local tmpdirs = {}
local ports_given = {}

local MAX_HEADER_LINES = 1000   -- per response head; a runaway peer is an error
local MAX_LINE = 64 * 1024      -- status/header/chunk-size line
local MAX_INTERIM = 20          -- 1xx responses skipped before the final one
local MAX_CHUNKS = 1000000      -- chunks in one chunked body
local STOP_TIMEOUT = 10         -- seconds between SIGTERM and SIGKILL

------------------------------------------------------------------------------
-- paths and small utilities
------------------------------------------------------------------------------

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Run a shell command and return its stdout (the whole of it).
local function capture(cmd)
  local f = assert(io.popen(cmd, "r"))
  local out = f:read("*a")
  f:close()
  return out
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- The last `n` lines of `text`, for error messages.
local function tail(text, n)
  if not text or text == "" then
    return "(empty)"
  end
  local lines = {}
  for line in text:gmatch("[^\n]*") do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  local from = #lines - n + 1
  if from < 1 then
    from = 1
  end
  return concat(lines, "\n", from, #lines)
end

-- The repository root: the directory above this file's spec/ directory.
local repo_root do
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/spec/helpers%.lua$") or "."
  if dir:sub(1, 1) ~= "/" then
    local cwd = os.getenv("PWD") or capture("pwd"):gsub("%s+$", "")
    dir = (dir == ".") and cwd or (cwd .. "/" .. dir)
  end
  repo_root = dir
end

--- helpers.repo_root() -> absolute path of the repository.
-- Small file and shell utilities the specs share.
_M.read_file = read_file       -- path -> contents | nil
_M.write_file = write_file     -- path, text (raises on failure)
_M.shell_quote = shell_quote   -- s -> 's' quoted for sh

-- Parses the first HTTP response in raw bytes (from raw()/raw_conn()):
-- { status, headers (lowercase names), body (everything after the head, so
-- a second response makes `json` nil), json } or nil without a full head.
function _M.parse_raw_response(data)
  local head, body = (data or ""):match("^(.-)\r\n\r\n(.*)$")
  if not head then
    return nil
  end
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    headers[name:lower()] = value
  end
  return {
    status = tonumber(head:match("^HTTP/1%.1 (%d%d%d) ")),
    headers = headers,
    body = body,
    json = require("cjson.safe").decode(body),
  }
end

-- The errors `tollgate -t` printed (its stdout+stderr text), as a set
-- { ["path: message"] = true }, without the closing "configuration file" line.
function _M.conf_error_set(out)
  local errs = {}
  for line in out:gmatch("[^\n]+") do
    local e = line:match("^tollgate: (.+)$")
    if e and not e:find("^configuration file") then errs[e] = true end
  end
  return errs
end

-- Values of header `name` in a { header_list = { {name, value}, ... } }
-- table (a response from request(), or tg-echo's JSON), in order.
function _M.header_values(t, name)
  local out = {}
  name = name:lower()
  for _, h in ipairs(t.header_list) do
    if h[1]:lower() == name then out[#out + 1] = h[2] end
  end
  return out
end

function _M.repo_root()
  return repo_root
end

--- helpers.build_dir() -> the CMake build directory: $TG_BUILD_DIR, else
-- <repo>/build.
function _M.build_dir()
  local d = os.getenv("TG_BUILD_DIR")
  if d and d ~= "" then
    return d
  end
  return repo_root .. "/build"
end

--- helpers.bin(name) -> path of a built binary, e.g. bin("tollgate"),
-- bin("tg-echo").
function _M.bin(name)
  return _M.build_dir() .. "/" .. name
end

--- helpers.sleep(seconds) -> sleeps (LuaSocket, sub-second resolution).
function _M.sleep(s)
  socket.sleep(s)
end

--- helpers.wait_until(fn, timeout, step) -> the first truthy value fn()
-- returns, polling every `step` seconds (default 0.05) for at most
-- `timeout` seconds (default 5). On timeout returns nil, err; an error
-- raised by fn counts as "not yet" and its message ends up in err. Use as
-- `assert(helpers.wait_until(function() ... end, 5))`.
function _M.wait_until(fn, timeout, step)
  timeout = timeout or 5
  step = step or 0.05
  local deadline = gettime() + timeout
  local last_err
  -- The deadline bounds the loop; the count is a backstop against step = 0.
  for _ = 1, floor(timeout / math.max(step, 0.001)) + 2 do
    local ok, v = pcall(fn)
    if ok and v then
      return v
    end
    if not ok then
      last_err = v
    end
    if gettime() >= deadline then
      break
    end
    socket.sleep(step)
  end
  return nil, fmt("wait_until: timed out after %gs%s", timeout,
                  last_err and (": last error: " .. tostring(last_err)) or "")
end

--- helpers.tmpdir(prefix) -> a fresh directory under <repo>/spec/tmp/
-- (git-ignored), removed by stop_all() unless TG_KEEP_TMP is set.
function _M.tmpdir(prefix)
  local root = repo_root .. "/spec/tmp"
  os.execute("mkdir -p " .. shell_quote(root))
  local dir = capture("mktemp -d " .. shell_quote(root .. "/" .. (prefix or "t") .. "-XXXXXX"))
    :gsub("%s+$", "")
  if dir == "" then
    error("cannot create a temp dir under " .. root, 2)
  end
  tmpdirs[#tmpdirs + 1] = dir
  return dir
end

------------------------------------------------------------------------------
-- processes
------------------------------------------------------------------------------

-- Whether `pid` is running. A zombie counts as exited: in some sandboxes
-- nobody reaps orphans, and `kill -0` would report them as alive.
local function pid_alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat then
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= nil and state ~= "Z" and state ~= "X"
  end
  local self_stat = io.open("/proc/self/stat")
  if self_stat then
    self_stat:close()
    return false       -- /proc works, so the pid is gone
  end
  local rc = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  return rc == 0 or rc == true
end

local function pid_signal(pid, sig)
  local rc = os.execute(fmt("kill -s %s %d 2>/dev/null", sig or "TERM", pid))
  return rc == 0 or rc == true
end

-- The process group of `pid`, from /proc, or nil.
local function pid_pgrp(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  return stat and tonumber(stat:match("^%d+ %b() %a %d+ (%d+)"))
end

-- Start `argv` (a list) in the background with stdout/stderr to files and
-- return its PID. `opts.setsid` puts it in its own process group (pgid =
-- pid), so a last-resort SIGKILL can reach the workers it forked and
-- nothing else. `opts.env` adds environment variables.
local function spawn(argv, stdout_path, stderr_path, opts)
  opts = opts or {}
  local parts = {}
  for _, a in ipairs(argv) do
    parts[#parts + 1] = shell_quote(a)
  end
  local env = {}
  for k, v in pairs(opts.env or {}) do
    env[#env + 1] = shell_quote(k .. "=" .. tostring(v))
  end
  sort(env)
  local cmd = fmt("cd %s && exec %s%s%s >%s 2>%s </dev/null & echo $!",
                  shell_quote(opts.cwd or repo_root),
                  #env > 0 and ("env " .. concat(env, " ") .. " ") or "",
                  opts.setsid and "setsid " or "",
                  concat(parts, " "),
                  shell_quote(stdout_path), shell_quote(stderr_path))
  local pid = tonumber((capture(cmd):match("(%d+)")))
  if not pid then
    error("cannot start " .. argv[1], 3)
  end
  return pid
end

-- Live processes in process group `pgid` (a group spawn() created).
local function group_pids(pgid)
  local pids = {}
  for p in capture("pgrep -g " .. tonumber(pgid) .. " 2>/dev/null"):gmatch("%d+") do
    p = tonumber(p)
    if pid_alive(p) then
      pids[#pids + 1] = p
    end
  end
  return pids
end

-- Stop one process: `sig` (default TERM), wait up to `timeout` seconds,
-- then SIGKILL. With `own_group` (it leads a group spawn() created),
-- whatever is left in that group afterwards (orphaned workers) is
-- SIGKILLed too, so the next spec starts clean. Returns true when the
-- process exited before any SIGKILL of ours.
local function stop_pid(pid, sig, timeout, own_group)
  local graceful = true
  if pid_alive(pid) then
    pid_signal(pid, sig or "TERM")
    if not _M.wait_until(function() return not pid_alive(pid) end, timeout or STOP_TIMEOUT, 0.02) then
      graceful = false
      pid_signal(pid, "KILL")
      _M.wait_until(function() return not pid_alive(pid) end, 2, 0.02)
    end
  end
  if own_group and #group_pids(pid) > 0 then
    os.execute(fmt("kill -s KILL -- -%d 2>/dev/null", pid))
  end
  return graceful
end

local function register(entry)
  started[#started + 1] = entry
  return entry
end

--- helpers.stop_all() -> stops every process started through these helpers
-- (newest first) and removes their temp dirs (kept when TG_KEEP_TMP=1).
-- Call it from teardown().
function _M.stop_all()
  for i = #started, 1, -1 do
    local e = started[i]
    started[i] = nil
    pcall(e.stop)
  end
  if not os.getenv("TG_KEEP_TMP") then
    local root = repo_root .. "/spec/tmp/"
    for i = #tmpdirs, 1, -1 do
      local d = tmpdirs[i]
      if d:sub(1, #root) == root then
        os.execute("rm -rf " .. shell_quote(d))
      end
      tmpdirs[i] = nil
    end
  end
end

--- helpers.pid_alive(pid) -> whether the process runs (zombies count as gone).
_M.pid_alive = pid_alive

------------------------------------------------------------------------------
-- ports
------------------------------------------------------------------------------

--- helpers.free_port() -> a TCP port that was free on 127.0.0.1 a moment
-- ago (bind port 0, read it, close). Never returns the same port twice in
-- one run, so two fixtures asking in a row do not collide.
function _M.free_port()
  for _ = 1, 100 do
    local s = assert(socket.tcp())
    s:setoption("reuseaddr", true)
    local ok, err = s:bind("127.0.0.1", 0)
    if not ok then
      s:close()
      error("free_port: " .. tostring(err), 2)
    end
    local _, port = s:getsockname()
    s:close()
    port = tonumber(port)
    if port and not ports_given[port] then
      ports_given[port] = true
      return port
    end
  end
  error("free_port: no fresh port after 100 tries", 2)
end

-- Whether something accepts TCP connections on addr:port right now.
local function port_open(port, addr, timeout)
  addr = addr or "127.0.0.1"
  local s = addr:find(":", 1, true) and socket.tcp6() or socket.tcp()
  s:settimeout(timeout or 0.2)
  local ok = s:connect(addr, port)
  s:close()
  return ok == 1 or ok == true
end
_M.port_open = port_open

------------------------------------------------------------------------------
-- connections: one object for HTTP and raw use
------------------------------------------------------------------------------

local conn_mt = {}
conn_mt.__index = conn_mt

--- helpers.connect(port, opts) -> conn, or nil, err. A TCP connection to
-- opts.addr (default 127.0.0.1; "::1" for IPv6) that keeps unread bytes
-- between calls, so it serves keep-alive reuse and pipelining:
--   conn:request(req)         -> res | nil, err  (see helpers.request)
--   conn:send(bytes)          -> true | nil, err
--   conn:read_response(req)   -> res | nil, err  (req.method for HEAD framing)
--   conn:receive(timeout)     -> data, closed    (whatever arrives first)
--   conn:receive_until(pattern_or_n, timeout) -> data | nil, err, partial
--   conn:read_all(timeout)    -> data, closed    (until the peer closes)
--   conn:shutdown()           -> half-close our sending side
--   conn:close()
-- conn.closed becomes true when the peer closed (or a response said so).
function _M.connect(port, opts)
  opts = opts or {}
  local addr = opts.addr or "127.0.0.1"
  local sock = addr:find(":", 1, true) and socket.tcp6() or socket.tcp()
  sock:settimeout(opts.timeout or 5)
  local ok, err = sock:connect(addr, port)
  if not ok then
    sock:close()
    return nil, err
  end
  sock:setoption("tcp-nodelay", true)
  return setmetatable({
    sock = sock, port = port, buf = "", eof = false, closed = false,
    timeout = opts.timeout or 5,
  }, conn_mt)
end

-- Receive whatever the socket has (at least one byte unless the deadline
-- passes or the peer closes). Returns chunk, or nil, err.
function conn_mt:_recv(deadline)
  if self.eof or self.sock_closed then
    return nil, "closed"
  end
  local sock = self.sock
  if not sock:dirty() then
    local remaining = deadline - gettime()
    if remaining <= 0 then
      return nil, "timeout"
    end
    local r = socket.select({ sock }, nil, remaining)
    if not r or #r == 0 then
      return nil, "timeout"
    end
  end
  sock:settimeout(0)
  local data, err, partial = sock:receive(65536)
  local chunk = data or partial or ""
  if err and err ~= "timeout" then
    -- "closed", "connection reset by peer", ...: no more bytes will come.
    self.eof = true
    self.closed = true
    self.close_reason = err
    if chunk == "" then
      return nil, err == "closed" and "closed" or err
    end
  end
  if chunk == "" then
    return nil, "timeout"
  end
  return chunk
end

function conn_mt:_read_line(deadline)
  for _ = 1, MAX_LINE do
    local nl = self.buf:find("\n", 1, true)
    if nl then
      local line = self.buf:sub(1, nl)
      self.buf = self.buf:sub(nl + 1)
      return line
    end
    if #self.buf > MAX_LINE then
      return nil, "line too long"
    end
    local chunk, err = self:_recv(deadline)
    if not chunk then
      return nil, err
    end
    self.buf = self.buf .. chunk
  end
  return nil, "line too long"
end

-- Exactly n bytes. Chunks are collected in a table so a multi-megabyte body
-- does not cost quadratic string concatenation.
function conn_mt:_read_n(n, deadline)
  local parts, have = {}, 0
  if #self.buf > 0 then
    local take = self.buf:sub(1, n)
    parts[1] = take
    have = #take
    self.buf = self.buf:sub(#take + 1)
  end
  while have < n do
    local chunk, err = self:_recv(deadline)
    if not chunk then
      return nil, err, concat(parts)
    end
    local need = n - have
    if #chunk > need then
      self.buf = chunk:sub(need + 1)
      chunk = chunk:sub(1, need)
    end
    parts[#parts + 1] = chunk
    have = have + #chunk
  end
  return concat(parts)
end

-- Everything until the peer closes. Returns data, closed (false when the
-- deadline passed first).
function conn_mt:_read_all(deadline)
  local parts = { self.buf }
  self.buf = ""
  while true do
    local chunk, err = self:_recv(deadline)
    if not chunk then
      return concat(parts), err ~= "timeout"
    end
    parts[#parts + 1] = chunk
  end
end

function conn_mt:send(bytes)
  if self.sock_closed then
    return nil, "closed"
  end
  self.sock:settimeout(self.timeout)
  local ok, err = self.sock:send(bytes)
  if not ok then
    return nil, err
  end
  return true
end

function conn_mt:receive(timeout)
  local deadline = gettime() + (timeout or 2)
  if #self.buf > 0 then
    local data = self.buf
    self.buf = ""
    return data, self.eof
  end
  local chunk = self:_recv(deadline)
  return chunk or "", self.eof
end

function conn_mt:receive_until(what, timeout)
  local deadline = gettime() + (timeout or 2)
  if type(what) == "number" then
    local data, err, partial = self:_read_n(what, deadline)
    if not data then
      return nil, err, partial
    end
    return data
  end
  for _ = 1, 1000000 do
    local s, e = self.buf:find(what, 1, true)
    if s then
      local data = self.buf:sub(1, e)
      self.buf = self.buf:sub(e + 1)
      return data
    end
    local chunk, err = self:_recv(deadline)
    if not chunk then
      local partial = self.buf
      self.buf = ""
      return nil, err, partial
    end
    self.buf = self.buf .. chunk
  end
  return nil, "too many reads"
end

function conn_mt:read_all(timeout)
  return self:_read_all(gettime() + (timeout or 2))
end

function conn_mt:shutdown()
  self.sock:shutdown("send")
end

function conn_mt:close()
  if not self.sock_closed then
    self.sock:close()
    self.sock_closed = true
  end
  self.closed = true
end

------------------------------------------------------------------------------
-- HTTP/1.1 client
------------------------------------------------------------------------------

local function lower_has(list, name)
  name = name:lower()
  for _, h in ipairs(list) do
    if h[1]:lower() == name then
      return true
    end
  end
  return false
end

--- helpers.encode_request(req) -> bytes, head, body: the whole request (see
-- helpers.request), then its head and body separately. For pipelining
-- several requests in one write.
function _M.encode_request(req)
  local list = {}
  local headers = req.headers
  if headers then
    if headers[1] ~= nil then
      for _, h in ipairs(headers) do
        list[#list + 1] = { h[1], tostring(h[2]) }
      end
    else
      local names = {}
      for k in pairs(headers) do
        names[#names + 1] = k
      end
      sort(names)
      for _, k in ipairs(names) do
        local v = headers[k]
        if type(v) == "table" then
          for _, one in ipairs(v) do
            list[#list + 1] = { k, tostring(one) }
          end
        else
          list[#list + 1] = { k, tostring(v) }
        end
      end
    end
  end
  local body = req.body
  if type(body) == "table" then
    body = assert(cjson.encode(body))
    if not lower_has(list, "content-type") then
      list[#list + 1] = { "Content-Type", "application/json" }
    end
  end
  if not req.no_host and not lower_has(list, "host") then
    insert(list, 1, { "Host", req.host or "localhost" })
  end
  if body and not lower_has(list, "content-length") and not lower_has(list, "transfer-encoding") then
    list[#list + 1] = { "Content-Length", tostring(#body) }
  end
  local out = { fmt("%s %s HTTP/%s\r\n", req.method or "GET", req.path or "/", req.version or "1.1") }
  for _, h in ipairs(list) do
    out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n"
  end
  out[#out + 1] = "\r\n"
  local head = concat(out)
  return head .. (body or ""), head, body
end

-- Read one response head (status line + headers), appending raw bytes.
local function read_head(conn, deadline, raw)
  local line, err = conn:_read_line(deadline)
  if not line then
    return nil, err
  end
  raw[#raw + 1] = line
  local version, status, reason = line:match("^HTTP/(%d%.%d) (%d%d%d) ?([^\r\n]*)\r?\n$")
  if not version then
    return nil, "bad status line: " .. line
  end
  local headers, list = {}, {}
  for _ = 1, MAX_HEADER_LINES do
    line, err = conn:_read_line(deadline)
    if not line then
      return nil, err
    end
    raw[#raw + 1] = line
    if line == "\r\n" or line == "\n" then
      return { version = version, status = tonumber(status), reason = reason,
               headers = headers, header_list = list }
    end
    local name, value = line:match("^([^:\r\n]+):[ \t]*(.-)[ \t]*\r?\n$")
    if not name then
      return nil, "bad header line: " .. line
    end
    list[#list + 1] = { name, value }
    local k = name:lower()
    headers[k] = headers[k] and (headers[k] .. ", " .. value) or value
  end
  return nil, "too many header lines"
end

-- Decode a chunked body; trailers go to res.trailers.
local function read_chunked(conn, deadline, raw, res)
  local parts = {}
  for _ = 1, MAX_CHUNKS do
    local line, err = conn:_read_line(deadline)
    if not line then
      return nil, err
    end
    raw[#raw + 1] = line
    local size = tonumber(line:match("^%s*(%x+)"), 16)
    if not size then
      return nil, "bad chunk size line: " .. line
    end
    if size == 0 then
      res.trailers = {}
      for _ = 1, MAX_HEADER_LINES do
        line, err = conn:_read_line(deadline)
        if not line then
          return nil, err
        end
        raw[#raw + 1] = line
        if line == "\r\n" or line == "\n" then
          return concat(parts)
        end
        local name, value = line:match("^([^:\r\n]+):[ \t]*(.-)[ \t]*\r?\n$")
        if name then
          res.trailers[name:lower()] = value
        end
      end
      return nil, "too many trailer lines"
    end
    local data, derr = conn:_read_n(size, deadline)
    if not data then
      return nil, derr
    end
    raw[#raw + 1] = data
    parts[#parts + 1] = data
    res.chunks = (res.chunks or 0) + 1
    local crlf
    crlf, err = conn:_read_line(deadline)
    if not crlf then
      return nil, err
    end
    raw[#raw + 1] = crlf
    if crlf ~= "\r\n" and crlf ~= "\n" then
      return nil, "missing CRLF after chunk data"
    end
  end
  return nil, "too many chunks"
end

--- conn:read_response(req) -> res | nil, err. Reads one response; req.method
-- ("HEAD" means no body) and req.timeout matter. See helpers.request for res.
function conn_mt:read_response(req)
  req = req or {}
  local deadline = gettime() + (req.timeout or self.timeout or 5)
  local raw, interim = {}, {}
  local res, err
  for _ = 1, MAX_INTERIM do
    res, err = read_head(self, deadline, raw)
    if not res then
      self:close()
      return nil, err
    end
    if res.status >= 200 or res.status == 101 or req.stop_at_interim then
      break
    end
    interim[#interim + 1] = res
    res = nil
  end
  if not res then
    self:close()
    return nil, "too many interim responses"
  end
  res.interim = interim

  local method = (req.method or "GET"):upper()
  local te = res.headers["transfer-encoding"]
  local cl = res.headers["content-length"]
  local body
  if method == "HEAD" or res.status < 200 or res.status == 204 or res.status == 304 then
    body = ""
  elseif te and te:lower():find("chunked", 1, true) then
    body, err = read_chunked(self, deadline, raw, res)
  elseif cl then
    local n = tonumber(cl)
    if not n then
      self:close()
      return nil, "bad content-length: " .. cl
    end
    local partial
    body, err, partial = self:_read_n(n, deadline)
    if not body then
      res.partial_body = partial
    end
  else
    local closed
    body, closed = self:_read_all(deadline)
    res.until_close = true
    if not closed then
      err = "timeout"
      body = nil
    end
  end
  if not body then
    self:close()
    return nil, err
  end
  if body ~= "" and te == nil then
    raw[#raw + 1] = body
  end
  res.body = body
  res.raw = concat(raw)

  -- The peer said it will close: no more requests on this connection, but
  -- the socket stays open so a spec can still watch the close happen
  -- (conn:read_all()); conn:close() or helpers.request() releases it.
  local connection = (res.headers["connection"] or ""):lower()
  if res.until_close or connection:find("close", 1, true)
     or (res.version == "1.0" and not connection:find("keep-alive", 1, true)) then
    self.closed = true
  end
  local ctype = res.headers["content-type"] or ""
  if ctype:lower():find("json", 1, true) then
    res.json = cjson.decode(body)
  end
  return res
end

--- conn:request(req) -> res | nil, err. Sends req on this connection and
-- reads the response (see helpers.request). With req.wait_continue the
-- head goes first and the body only after a 100 Continue; a final status
-- instead is returned without sending the body.
function conn_mt:request(req)
  req = req or {}
  if self.closed then
    return nil, "closed"
  end
  local bytes, head, body = _M.encode_request(req)
  if req.wait_continue and body then
    local ok, err = self:send(head)
    if not ok then
      self:close()
      return nil, err
    end
    local deadline = gettime() + (req.timeout or self.timeout or 5)
    local raw = {}
    local first
    first, err = read_head(self, deadline, raw)
    if not first then
      self:close()
      return nil, err
    end
    if first.status ~= 100 then
      -- A final answer before the body: read its body and return it.
      local saved = self.buf
      self.buf = concat(raw) .. saved
      return self:read_response(req)
    end
    ok, err = self:send(body)
    if not ok then
      self:close()
      return nil, err
    end
    local res
    res, err = self:read_response(req)
    if res then
      insert(res.interim, 1, first)
      res.raw = concat(raw) .. res.raw
    end
    return res, err
  end
  local ok, err = self:send(bytes)
  if not ok then
    self:close()
    return nil, err
  end
  return self:read_response(req)
end

--- helpers.request(port, req) -> res | nil, err
-- An HTTP/1.1 request over a raw TCP connection to 127.0.0.1:port.
-- req = {
--   method = "GET", path = "/", version = "1.1",
--   headers = { Name = "v" | {"v1","v2"} } (sent sorted by name) or
--             { {"Name","v"}, {"Name","v2"} } (order and duplicates kept),
--   body = string | table (table -> JSON + Content-Type),
--   host = "localhost" (Host header unless headers set one or no_host=true),
--   timeout = 5, conn = <helpers.connect() object to reuse>,
--   addr = "127.0.0.1", wait_continue = false,
-- }
-- Content-Length is added for a body unless headers set it or
-- Transfer-Encoding. res = { status, reason, version, headers (lowercase
-- name -> value, repeats joined ", "), header_list ({name, value} in wire
-- order), body, json (decoded when the content type says json), raw (every
-- byte read, interim responses included), interim (skipped 1xx heads),
-- trailers, chunks (count, for chunked bodies), until_close }.
-- Framing: Content-Length, chunked, or until close; HEAD/1xx/204/304 have
-- no body. Without req.conn the connection is closed afterwards.
function _M.request(port, req)
  req = req or {}
  if req.conn then
    return req.conn:request(req)
  end
  local conn, err = _M.connect(port, { addr = req.addr, timeout = req.timeout })
  if not conn then
    return nil, err
  end
  local res
  res, err = conn:request(req)
  conn:close()
  return res, err
end

--- helpers.raw(port, bytes, opts) -> data, closed
-- Sends `bytes` (a string, or a list of strings sent with opts.pause
-- seconds between them), then reads until the peer closes or opts.timeout
-- (default 2 s) passes. `closed` is true when the peer closed (FIN or RST).
-- opts.shutdown = true half-closes our side after sending. Returns nil, err
-- if the connection cannot be made.
function _M.raw(port, bytes, opts)
  opts = opts or {}
  local conn, err = _M.connect(port, { addr = opts.addr, timeout = opts.timeout or 2 })
  if not conn then
    return nil, err
  end
  local pieces = type(bytes) == "table" and bytes or { bytes }
  for i, piece in ipairs(pieces) do
    if i > 1 and opts.pause then
      socket.sleep(opts.pause)
    end
    if not conn:send(piece) then
      break       -- the peer may already have closed; read what it said
    end
  end
  if opts.shutdown then
    conn:shutdown()
  end
  local data, closed = conn:read_all(opts.timeout or 2)
  conn:close()
  return data, closed
end

--- helpers.raw_conn(port, opts) -> conn | nil, err. Same object as
-- helpers.connect, for multi-step raw tests (send / receive /
-- receive_until / read_all / shutdown / close, all with timeouts).
function _M.raw_conn(port, opts)
  return _M.connect(port, opts)
end

------------------------------------------------------------------------------
-- YAML
------------------------------------------------------------------------------

--- helpers.null: a sentinel that helpers.yaml() writes as `null` (so is
-- cjson.null, which decoded JSON uses).
_M.null = setmetatable({}, { __tostring = function() return "null" end })

local array_mt = { __yaml = "array" }
local map_mt = { __yaml = "map" }

--- helpers.array(t) / helpers.map(t) -> t, marked so that an empty table is
-- written as [] or {} (an unmarked empty table is written as {}).
function _M.array(t)
  return setmetatable(t or {}, array_mt)
end
function _M.map(t)
  return setmetatable(t or {}, map_mt)
end

local yaml_escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
  ["\0"] = "\\0",
}

local function yaml_quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return yaml_escapes[c] or fmt("\\x%02X", c:byte())
  end) .. '"'
end

local function yaml_number(v)
  if v ~= v then
    return ".nan"
  elseif v == huge then
    return ".inf"
  elseif v == -huge then
    return "-.inf"
  elseif v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then
    return fmt("%d", v)
  end
  return fmt("%.17g", v)
end

local function is_container(v)
  return type(v) == "table" and v ~= _M.null
end

local function is_array(t)
  local mt = getmetatable(t)
  if mt == array_mt then
    return true
  elseif mt == map_mt then
    return false
  end
  local n = 0
  for k in pairs(t) do
    if k ~= "__order" then
      n = n + 1
    end
  end
  return n > 0 and n == #t
end

local function is_empty(t)
  for k in pairs(t) do
    if k ~= "__order" then
      return false
    end
  end
  return true
end

local reserved = {
  ["true"] = true, ["false"] = true, ["yes"] = true, ["no"] = true, ["on"] = true,
  ["off"] = true, ["null"] = true, ["y"] = true, ["n"] = true, ["~"] = true,
}

local function yaml_key(k)
  if type(k) == "number" then
    return yaml_number(k)
  end
  k = tostring(k)
  if k:match("^[%a_][%w_%-%.]*$") and not reserved[k:lower()] then
    return k
  end
  return yaml_quote(k)
end

-- Keys in __order first (in that order), then the rest: numbers ascending,
-- then strings ascending. Deterministic, so a config diff is a real diff.
local function sorted_keys(t)
  local keys, seen = {}, { __order = true }
  if type(t.__order) == "table" then
    for _, k in ipairs(t.__order) do
      if t[k] ~= nil and not seen[k] then
        keys[#keys + 1] = k
        seen[k] = true
      end
    end
  end
  local rest = {}
  for k in pairs(t) do
    if not seen[k] then
      rest[#rest + 1] = k
    end
  end
  sort(rest, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then
      return ta == "number"
    end
    return a < b
  end)
  for _, k in ipairs(rest) do
    keys[#keys + 1] = k
  end
  return keys
end

local function yaml_inline(v)
  if v == _M.null or v == cjson.null then
    return "null"
  end
  local t = type(v)
  if t == "string" then
    return yaml_quote(v)
  elseif t == "number" then
    return yaml_number(v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then       -- only empty containers are inline
    return is_array(v) and "[]" or "{}"
  end
  error("yaml: cannot encode a " .. t, 4)
end

-- Append the lines of a non-empty container at `indent` spaces.
local function yaml_block(v, indent, out, depth)
  if depth > 100 then
    error("yaml: nesting deeper than 100 (a cycle?)", 4)
  end
  local pad = rep(" ", indent)
  if is_array(v) then
    for i = 1, #v do
      local item = v[i]
      if is_container(item) and not is_empty(item) then
        -- Render the item one level deeper, then put the dash on its first
        -- line: "- key: v" / "  key2: v", or "- - a" for nested lists.
        local first = #out + 1
        yaml_block(item, indent + 2, out, depth + 1)
        out[first] = pad .. "- " .. out[first]:sub(indent + 3)
      else
        out[#out + 1] = pad .. "- " .. yaml_inline(item)
      end
    end
  else
    for _, k in ipairs(sorted_keys(v)) do
      local item = v[k]
      if is_container(item) and not is_empty(item) then
        out[#out + 1] = pad .. yaml_key(k) .. ":"
        yaml_block(item, indent + 2, out, depth + 1)
      else
        out[#out + 1] = pad .. yaml_key(k) .. ": " .. yaml_inline(item)
      end
    end
  end
end

--- helpers.yaml(value) -> YAML text. Maps become block maps with sorted keys
-- (or the table's __order list first), sequences (1..n tables) block
-- sequences, strings are always double-quoted with escapes, numbers and
-- booleans plain, helpers.null is null, empty tables {} (or [] via
-- helpers.array).
function _M.yaml(value)
  if is_container(value) and not is_empty(value) then
    local out = {}
    yaml_block(value, 0, out, 0)
    return concat(out, "\n") .. "\n"
  end
  return yaml_inline(value) .. "\n"
end

------------------------------------------------------------------------------
-- tg-echo
------------------------------------------------------------------------------

-- Poll `path` until it has a "listening <port>" line; nil if the process
-- died or the deadline passed.
local function wait_listening(path, pid, timeout)
  local port
  _M.wait_until(function()
    local text = read_file(path) or ""
    port = tonumber(text:match("listening (%d+)"))
    return port or not pid_alive(pid)
  end, timeout, 0.01)
  return port
end

--- helpers.start_echo(opts) -> echo. Starts tg-echo in the background.
-- opts = { host = "127.0.0.1", port = 0 (free), fixed_body = N }.
-- echo = { port, host, pid, dir,
--          stop()        -- SIGTERM that PID, wait, SIGKILL if needed
--          stats()       -- GET /__stats -> {requests=, connections=, ...}
--          reset_stats() -- POST /__stats/reset
--          url(path)     -- "http://127.0.0.1:<port><path>" }
-- Raises if it does not print "listening <port>" within 5 s.
function _M.start_echo(opts)
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local dir = _M.tmpdir("echo")
  local argv = { _M.bin("tg-echo"), "--host", host, "--port", tostring(opts.port or 0) }
  if opts.fixed_body then
    argv[#argv + 1] = "--fixed-body"
    argv[#argv + 1] = tostring(opts.fixed_body)
  end
  local out, err = dir .. "/stdout", dir .. "/stderr"
  local pid = spawn(argv, out, err)
  local port = wait_listening(out, pid, opts.timeout or 5)
  if not port then
    stop_pid(pid, "KILL", 1)
    error(fmt("tg-echo did not start (%s): %s", argv[1], tail(read_file(err), 20)), 2)
  end
  local addr = host == "localhost" and "127.0.0.1" or host
  local echo = { port = port, host = host, pid = pid, dir = dir }
  function echo.stop()
    return stop_pid(pid, "TERM", 5)
  end
  function echo.stats()
    local res, rerr = _M.request(port, { path = "/__stats", addr = addr })
    if not res then
      return nil, rerr
    end
    return res.json
  end
  function echo.reset_stats()
    local res, rerr = _M.request(port, { method = "POST", path = "/__stats/reset", addr = addr })
    return res and res.json, rerr
  end
  function echo.url(path)
    return fmt("http://%s:%d%s", host:find(":", 1, true) and ("[" .. host .. "]") or host,
               port, path or "")
  end
  return register(echo)
end

------------------------------------------------------------------------------
-- Redis
------------------------------------------------------------------------------

-- Minimal RESP reply parser over a conn (bounded nesting).
local function resp_read(conn, deadline, depth)
  if depth > 8 then
    return nil, "reply nested too deep"
  end
  local line, err = conn:_read_line(deadline)
  if not line then
    return nil, err
  end
  local kind, rest = line:sub(1, 1), line:sub(2):gsub("\r?\n$", "")
  if kind == "+" then
    return rest
  elseif kind == "-" then
    return false, rest
  elseif kind == ":" then
    return tonumber(rest)
  elseif kind == "$" then
    local n = tonumber(rest)
    if n < 0 then
      return _M.null
    end
    local data
    data, err = conn:_read_n(n + 2, deadline)
    if not data then
      return nil, err
    end
    return data:sub(1, n)
  elseif kind == "*" then
    local n = tonumber(rest)
    if n < 0 then
      return _M.null
    end
    local arr = {}
    for i = 1, n do
      local v, verr = resp_read(conn, deadline, depth + 1)
      if v == nil then
        return nil, verr
      end
      arr[i] = v
    end
    return arr
  end
  return nil, "bad reply: " .. line
end

--- helpers.redis_command(port, ...) -> reply | false, msg | nil, err.
-- One command on a fresh connection, e.g. redis_command(port, "GET", "k").
-- Nil bulk replies come back as helpers.null.
function _M.redis_command(port, ...)
  local args = { ... }
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  local conn, err = _M.connect(port, { timeout = 2 })
  if not conn then
    return nil, err
  end
  local ok
  ok, err = conn:send(concat(out))
  if not ok then
    conn:close()
    return nil, err
  end
  local v, verr = resp_read(conn, gettime() + 2, 0)
  conn:close()
  return v, verr
end

--- helpers.start_redis(opts) -> redis = { port, pid, dir, stop(),
-- command(...) }. A throwaway redis-server on a free 127.0.0.1 port, no
-- persistence, ready when PING answers (bounded 5 s).
function _M.start_redis(opts)
  opts = opts or {}
  local port = opts.port or _M.free_port()
  local dir = _M.tmpdir("redis")
  local argv = { "redis-server", "--port", tostring(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--dir", dir, "--logfile", "" }
  local pid = spawn(argv, dir .. "/stdout", dir .. "/stderr")
  local ready = _M.wait_until(function()
    if not pid_alive(pid) then
      return "dead"
    end
    return _M.redis_command(port, "PING") == "PONG" and "ok"
  end, opts.timeout or 5, 0.02)
  if ready ~= "ok" then
    stop_pid(pid, "KILL", 1)
    error("redis-server did not start: " .. tail(read_file(dir .. "/stdout"), 20)
          .. "\n" .. tail(read_file(dir .. "/stderr"), 10), 2)
  end
  local redis = { port = port, pid = pid, dir = dir }
  function redis.stop()
    return stop_pid(pid, "TERM", 5)
  end
  function redis.command(...)
    return _M.redis_command(port, ...)
  end
  return register(redis)
end

------------------------------------------------------------------------------
-- tollgate
------------------------------------------------------------------------------

local function port_of(addr)
  if type(addr) == "table" then
    addr = addr[1] or addr.listen or addr.address or addr.addr
    if type(addr) == "table" then
      addr = addr.listen or addr.address or addr.addr
    end
  end
  return type(addr) == "string" and tonumber(addr:match(":(%d+)$")) or nil
end

-- The text of a top-level YAML key's block ("listen:" up to the next
-- top-level key), for finding ports in a config given as a string.
local function yaml_block_of(text, key)
  local t = "\n" .. text
  local s = t:find("\n" .. key .. ":", 1, true)
  if not s then
    return nil
  end
  local rest = t:sub(s + #key + 2)
  local e = rest:find("\n[^%s#%-]")
  return e and rest:sub(1, e) or rest
end

-- Fill the defaults described at start_gateway into a copy of conf. On
-- reload, `prev` (the running effective config) supplies them instead, so
-- ports and log paths stay put unless the new config names its own.
local function conf_defaults(conf, dir, prev)
  local c = {}
  for k, v in pairs(conf) do
    c[k] = v
  end
  local defaults = prev or {
    listen = { "127.0.0.1:" .. _M.free_port() },
    admin = { listen = "127.0.0.1:" .. _M.free_port() },
    worker_processes = 1,
    error_log = { path = dir .. "/error.log", level = "info" },
    access_log = { path = dir .. "/access.log", format = "json" },
  }
  for _, k in ipairs({ "listen", "admin", "worker_processes", "error_log", "access_log" }) do
    if c[k] == nil then
      c[k] = defaults[k]
    elseif c[k] == false then
      c[k] = nil            -- explicitly none (e.g. admin = false)
    end
  end
  for _, name in ipairs({ "error_log", "access_log" }) do
    local v = c[name]
    if type(v) == "table" and v.path == nil then
      local copy = {}
      for k, x in pairs(v) do
        copy[k] = x
      end
      copy.path = dir .. "/" .. (name:gsub("_", "."))
      c[name] = copy
    end
  end
  return c
end

--- helpers.test_config(conf) -> ok, output. Runs `tollgate -t -c FILE`
-- (conf as for start_gateway, no defaults added) and returns whether it
-- exited 0 plus its stdout+stderr.
function _M.test_config(conf)
  local dir = _M.tmpdir("conf")
  local path = dir .. "/tollgate.yaml"
  write_file(path, type(conf) == "string" and conf or _M.yaml(conf))
  local out = capture(fmt("cd %s && %s -t -c %s 2>&1; echo \"exit=$?\"",
                          shell_quote(repo_root), shell_quote(_M.bin("tollgate")), shell_quote(path)))
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return code == 0, (out:gsub("exit=%d+%s*$", ""))
end

--- helpers.start_gateway(conf, opts) -> gw
-- conf: a Lua table of the tollgate YAML config, or YAML text. For a table
-- these defaults are filled when absent:
--   listen = {"127.0.0.1:<free>"}, admin = {listen = "127.0.0.1:<free>"}
--   (admin = false: none), worker_processes = 1,
--   error_log = {path = <dir>/error.log, level = "info"},
--   access_log = {path = <dir>/access.log, format = "json"}.
-- For YAML text nothing is added; ports are found in its listen/admin
-- blocks unless opts.port / opts.admin_port say.
-- opts = { timeout = 10 (startup), env = {VAR = v}, args = {...} (extra
--          CLI args), wait = true (false: return without waiting) }.
-- Starts `<build>/tollgate -c <dir>/tollgate.yaml` from the repo root,
-- waits until the first listen port accepts and the admin /health answers
-- 200; raises with the tail of the error log if it exits or times out.
-- gw = { port, admin_port, pid, dir, conf_path, conf (effective table),
--   stop(sig)           -- sig (default TERM) to the PID, wait, SIGKILL last;
--                          true when it exited in time. Leftover processes
--                          in its process group (orphaned workers) are
--                          SIGKILLed afterwards.
--   group_pids()        -- live PIDs in its process group (master, workers)
--   kill(sig)           -- just send a signal (default TERM)
--   alive()             -- running?
--   reload(new_conf, o) -- rewrite the config (if given), SIGHUP, then wait
--                          for admin /status to show a new generation
--                          (bounded o.timeout, default 5 s) or settle 0.75 s
--                          when there is no generation to watch. Returns
--                          true, or nil, err.
--   error_log()         -- the error log text ("" if none yet)
--   access_log()        -- the access log lines (table)
--   stderr()            -- the process's stderr text
--   request(req)        -- helpers.request(gw.port, req)
--   admin_request(req)  -- helpers.request(gw.admin_port, req) }
function _M.start_gateway(conf, opts)
  opts = opts or {}
  local dir = _M.tmpdir("gw")
  local conf_path = dir .. "/tollgate.yaml"
  local gw = { dir = dir, conf_path = conf_path }

  local function render(c, prev)
    if type(c) == "string" then
      local port = opts.port or port_of((yaml_block_of(c, "listen") or ""):match("[%w%]%.]+:%d+"))
      local admin_port = opts.admin_port
        or port_of((yaml_block_of(c, "admin") or ""):match("[%w%]%.]+:%d+"))
      return c, port, admin_port, nil, dir .. "/error.log", dir .. "/access.log"
    end
    if type(c) ~= "table" then
      error("start_gateway: conf must be a table or YAML text", 3)
    end
    local full = conf_defaults(c, dir, prev)
    local admin_port = full.admin and port_of(full.admin.listen or full.admin)
    return _M.yaml(full), port_of(full.listen), admin_port, full,
           type(full.error_log) == "table" and full.error_log.path or dir .. "/error.log",
           type(full.access_log) == "table" and full.access_log.path or dir .. "/access.log"
  end

  local text
  text, gw.port, gw.admin_port, gw.conf, gw.error_log_path, gw.access_log_path = render(conf)
  write_file(conf_path, text)

  local argv = { _M.bin("tollgate"), "-c", conf_path }
  for _, a in ipairs(opts.args or {}) do
    argv[#argv + 1] = a
  end
  local stdout_path, stderr_path = dir .. "/stdout.log", dir .. "/stderr.log"
  local pid = spawn(argv, stdout_path, stderr_path, { env = opts.env, setsid = true })
  gw.pid = pid
  -- Group kill only if the gateway really leads its own group. Checked
  -- lazily and latched: right after spawn() the shell may not have reached
  -- setsid yet, and after exit /proc no longer knows.
  local own_group = false
  local function leads_group()
    own_group = own_group or pid_pgrp(pid) == pid
    return own_group
  end

  function gw.alive()
    return pid_alive(pid)
  end
  function gw.kill(sig)
    if sig == gw then sig = nil end        -- tolerate gw:kill()
    return pid_signal(pid, sig or "TERM")
  end
  function gw.stop(sig, timeout)
    if sig == gw then sig, timeout = timeout, nil end
    return stop_pid(pid, sig or "TERM", timeout or STOP_TIMEOUT, leads_group())
  end
  function gw.group_pids()
    return leads_group() and group_pids(pid) or (pid_alive(pid) and { pid } or {})
  end
  function gw.error_log()
    return read_file(gw.error_log_path) or ""
  end
  function gw.stderr()
    return read_file(stderr_path) or ""
  end
  function gw.access_log()
    local lines = {}
    for line in (read_file(gw.access_log_path) or ""):gmatch("[^\n]+") do
      lines[#lines + 1] = line
    end
    return lines
  end
  function gw.request(req)
    if req == gw then error("use gw.request(req), not gw:request(req)", 2) end
    return _M.request(gw.port, req)
  end
  function gw.admin_request(req)
    if req == gw then error("use gw.admin_request(req)", 2) end
    return _M.request(gw.admin_port, req)
  end

  -- The config generation admin /status reports, if any.
  local function generation()
    if not gw.admin_port then
      return nil
    end
    local res = _M.request(gw.admin_port, { path = "/status", timeout = 1 })
    local j = res and res.status == 200 and res.json
    if type(j) ~= "table" then
      return nil
    end
    local g = j.generation or j.config_generation or j.conf_generation or j.config_version
    if g == nil and type(j.config) == "table" then
      g = j.config.generation or j.config.version
    end
    return g
  end

  function gw.reload(new_conf, ropts)
    if new_conf == gw then new_conf, ropts = ropts, nil end
    ropts = ropts or {}
    if new_conf ~= nil then
      local t, port, admin_port, full, elog, alog = render(new_conf, gw.conf)
      write_file(conf_path, t)
      gw.conf = full or gw.conf
      gw.port = port or gw.port
      gw.admin_port = admin_port or gw.admin_port
      gw.error_log_path, gw.access_log_path = elog, alog
    end
    local before = generation()
    if not pid_signal(pid, "HUP") then
      return nil, "cannot signal tollgate (pid " .. pid .. ")"
    end
    if before == nil then
      socket.sleep(ropts.settle or 0.75)
      if not pid_alive(pid) then
        return nil, "tollgate exited after SIGHUP: " .. tail(gw.error_log(), 20)
      end
      return true
    end
    local ok = _M.wait_until(function()
      local g = generation()
      return g ~= nil and g ~= before
    end, ropts.timeout or 5, 0.05)
    if not ok then
      if not pid_alive(pid) then
        return nil, "tollgate exited after SIGHUP: " .. tail(gw.error_log(), 20)
      end
      return nil, "config generation did not change after SIGHUP (still "
                  .. tostring(before) .. ")"
    end
    return true
  end

  register(gw)

  if opts.wait == false then
    return gw
  end

  local function failure(why)
    local msg = fmt("tollgate %s (config %s)\n-- error log:\n%s\n-- stderr:\n%s",
                    why, conf_path, tail(gw.error_log(), 30), tail(gw.stderr(), 30))
    gw.stop("KILL", 2)
    error(msg, 3)
  end

  if not gw.port then
    failure("has no listen port to wait for")
  end
  local deadline = gettime() + (opts.timeout or 10)
  for _ = 1, 100000 do
    if not pid_alive(pid) then
      failure("exited during startup")
    end
    local up = port_open(gw.port)
    if up and gw.admin_port then
      local res = _M.request(gw.admin_port, { path = "/health", timeout = 1 })
      up = res ~= nil and res.status == 200
    end
    if up then
      leads_group()
      return gw
    end
    if gettime() >= deadline then
      failure(fmt("not ready after %gs", opts.timeout or 10))
    end
    socket.sleep(0.05)
  end
  failure("not ready")
end

------------------------------------------------------------------------------
-- plugins
------------------------------------------------------------------------------

--- helpers.fixtures_path() -> absolute path of spec/fixtures/plugins, the
-- fixture plugins of the specs. Put it in a config's plugins_path:
--   helpers.start_gateway({ plugins_path = { helpers.fixtures_path() }, ... })
function _M.fixtures_path()
  return repo_root .. "/spec/fixtures/plugins"
end

--- helpers.error_lines(text, level) -> the error-log lines of `text` at
-- `level` ("error" by default) or above, as a list. A plugin failure is
-- one entry even though its traceback spans several lines: lines that do
-- not start a new log entry (a date) are joined to the one before.
function _M.error_lines(text, level)
  local order = { debug = 0, info = 1, notice = 2, warn = 3, error = 4, crit = 5, alert = 6, emerg = 7 }
  local min = order[level or "error"] or 4
  local entries = {}
  for line in (text or ""):gmatch("[^\n]+") do
    if line:match("^%d%d%d%d[-/]%d%d[-/]%d%d") or #entries == 0 then
      entries[#entries + 1] = line
    else
      entries[#entries] = entries[#entries] .. "\n" .. line
    end
  end
  local out = {}
  for _, e in ipairs(entries) do
    local lv = e:match("%[(%a+)%]")
    if lv and order[lv] and order[lv] >= min then
      out[#out + 1] = e
    end
  end
  return out
end

return _M
