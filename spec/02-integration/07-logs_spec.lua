-- 07-logs_spec.lua: the access log (one JSON line per request, with the
-- fields the README lists, never the query string) and the error log (a
-- level on every line, no errors on a clean run), and that secrets sent by
-- clients (Authorization, Cookie, API keys, query-string tokens) never reach
-- either log, whatever happens to the request.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local fmt = string.format

local read_file = helpers.read_file

-- The decoded access-log entries of gw (asserting each line is JSON).
local function entries(gw)
  local out = {}
  for i, line in ipairs(gw.access_log()) do
    local e = cjson.decode(line)
    assert(type(e) == "table", "access log line " .. i .. " is not a JSON object: " .. line)
    out[#out + 1] = e
  end
  return out
end

-- Waits (bounded) for the access-log entry whose path equals `path`.
local function entry_for(gw, path, timeout)
  local found
  assert(helpers.wait_until(function()
    for _, e in ipairs(entries(gw)) do
      if e.path == path then
        found = e
        return true
      end
    end
  end, timeout or 3), "no access log entry for " .. path)
  return found
end

local ERROR_LINE = "^(%d%d%d%d/%d%d/%d%d %d%d:%d%d:%d%d%.%d%d%d) %[(%a+)%] ([%w ]+)%[(%d+)%]: (.+)$"
local LEVELS = { debug = true, info = true, notice = true, warn = true, error = true, crit = true }

describe("access log", function()
  local gw, echo, dead_port

  lazy_setup(function()
    echo = helpers.start_echo()
    dead_port = helpers.free_port()        -- nothing listens here
    gw = helpers.start_gateway({
      error_log = { level = "debug" },
      upstreams = {
        svc = { targets = { { url = echo.url() } }, timeouts = { read_ms = 300 } },
        dead = { targets = { { url = "http://127.0.0.1:" .. dead_port } }, retries = 0,
                 passive_health = { max_fails = 0 } },
      },
      routes = {
        { name = "api", paths = { "/api" }, upstream = "svc" },
        { name = "gone", paths = { "/gone" }, upstream = "dead" },
        { name = "static", paths = { "=/static" }, response = { status = 201, json = { ok = true } } },
        { name = "echo", paths = { "/echo" }, response = { echo = true } },
      },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("writes one JSON line per proxied request with every field", function()
    local req = { path = "/api/one?token=QUERYSECRET&x=1", headers = { ["X-Mark"] = "one" } }
    local res = assert(gw.request(req))
    assert.equal(200, res.status)
    local e = entry_for(gw, "/api/one")
    assert.truthy(e.time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"), e.time)
    assert.equal("127.0.0.1", e.client_ip)
    assert.equal("GET", e.method)
    assert.equal(200, e.status)
    assert.equal(#res.raw, e.bytes_sent)
    assert.equal(#helpers.encode_request(req), e.request_bytes)
    assert.equal("number", type(e.duration_ms))
    assert.truthy(e.duration_ms >= 0 and e.duration_ms < 5000, e.duration_ms)
    assert.equal("api", e.route)
    assert.equal("svc", e.upstream)
    assert.equal("127.0.0.1:" .. echo.port, e.upstream_addr)
    assert.equal(200, e.upstream_status)
    assert.equal("number", type(e.upstream_ms))
    assert.truthy(e.upstream_ms >= 0 and e.upstream_ms <= e.duration_ms + 1, e.upstream_ms)
  end)

  it("never logs the query string", function()
    assert(gw.request({ path = "/api/q?access_token=QS-SEKRIT-1&sig=QS-SEKRIT-2" }))
    assert(gw.request({ path = "/static?apikey=QS-SEKRIT-3" }))
    entry_for(gw, "/api/q")
    entry_for(gw, "/static")
    local text = table.concat(gw.access_log(), "\n")
    assert.falsy(text:find("QS-SEKRIT", 1, true), text)
    assert.falsy(text:find("access_token", 1, true))
    assert.falsy(text:find("?", 1, true), text)
  end)

  it("logs local answers: static, 404 and a 400 on a climbing path", function()
    local res = assert(gw.request({ path = "/static" }))
    assert.equal(201, res.status)
    assert(gw.request({ path = "/not-routed" }))
    local data = helpers.raw(gw.port, "GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.truthy(data:find("^HTTP/1.1 400 "))

    local e = entry_for(gw, "/static")
    assert.equal(201, e.status)
    assert.equal("static", e.route)
    assert.equal(#res.raw, e.bytes_sent)
    assert.is_nil(e.upstream_addr)
    assert.is_nil(e.upstream_ms)

    e = entry_for(gw, "/not-routed")
    assert.equal(404, e.status)
    assert.is_nil(e.route)
    assert.is_nil(e.upstream_addr)

    e = entry_for(gw, "/../etc/passwd")
    assert.equal(400, e.status)
    assert.is_nil(e.route)
  end)

  it("logs upstream failures with the upstream address", function()
    local res = assert(gw.request({ path = "/gone/x" }))
    assert.equal(502, res.status)
    local e = entry_for(gw, "/gone/x")
    assert.equal(502, e.status)
    assert.equal("gone", e.route)
    assert.equal("127.0.0.1:" .. dead_port, e.upstream_addr)
    assert.is_nil(e.upstream_status)

    res = assert(gw.request({ path = "/api/slow", headers = { ["X-Echo-Mode"] = "hang" } }))
    assert.equal(504, res.status)
    e = entry_for(gw, "/api/slow")
    assert.equal(504, e.status)
    assert.equal("127.0.0.1:" .. echo.port, e.upstream_addr)
    assert.truthy(e.upstream_ms >= 250, e.upstream_ms)
  end)

  it("keeps the log valid JSON for paths with quotes and backslashes", function()
    local data = helpers.raw(gw.port, 'GET /api/q"uo\\te HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    local status = tonumber(data:match("^HTTP/1.1 (%d+)"))
    assert.truthy(status, data)
    if status ~= 400 then
      local e = entry_for(gw, '/api/q"uo\\te')
      assert.equal(status, e.status)
    end
    entries(gw)      -- every line still decodes
  end)

  it("logs a client that leaves mid-body as 499", function()
    local conn = assert(helpers.raw_conn(gw.port))
    assert(conn:send("POST /api/leaver HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"))
    helpers.sleep(0.2)
    conn:close()
    local e = entry_for(gw, "/api/leaver")
    assert.equal(499, e.status)
    assert.equal("api", e.route)
  end)

  it("never writes secret header values or query tokens to any log", function()
    local secret_headers = {
      Authorization = "Bearer SEKRIT-AUTH",
      Cookie = "session=SEKRIT-COOKIE; theme=dark",
      ["X-Api-Key"] = "SEKRIT-APIKEY",
      ["Proxy-Authorization"] = "Basic SEKRIT-PROXY",
      apikey = "SEKRIT-KONG-KEY",
    }
    local q = "?api_key=SEKRIT-QUERY&password=SEKRIT-PW"
    local function with(extra)
      local h = {}
      for k, v in pairs(secret_headers) do
        h[k] = v
      end
      for k, v in pairs(extra or {}) do
        h[k] = v
      end
      return h
    end
    -- Every outcome that might log something: proxied, static, echo, 404,
    -- 400 path, upstream refused, upstream timeout, broken chunked body,
    -- malformed head, client gone mid-body.
    assert.equal(200, assert(gw.request({ path = "/api/s1" .. q, headers = with() })).status)
    assert.equal(201, assert(gw.request({ path = "/static" .. q, headers = with() })).status)
    assert.equal(200, assert(gw.request({ method = "POST", path = "/echo" .. q, headers = with(),
                                          body = "pw=SEKRIT-BODY" })).status)
    assert.equal(404, assert(gw.request({ path = "/nowhere" .. q, headers = with() })).status)
    assert.equal(502, assert(gw.request({ path = "/gone" .. q, headers = with() })).status)
    assert.equal(504, assert(gw.request({ path = "/api/s2" .. q,
                                          headers = with({ ["X-Echo-Mode"] = "hang" }) })).status)
    local head = ""
    for k, v in pairs(secret_headers) do
      head = head .. k .. ": " .. v .. "\r\n"
    end
    local data = helpers.raw(gw.port, "GET /../x" .. q .. " HTTP/1.1\r\nHost: x\r\n" .. head .. "\r\n")
    assert.truthy(data:find("^HTTP/1.1 400 "))
    data = helpers.raw(gw.port, "POST /api/chunk" .. q .. " HTTP/1.1\r\nHost: x\r\n" .. head
      .. "Transfer-Encoding: chunked\r\n\r\nZZ\r\nSEKRIT-CHUNK\r\n0\r\n\r\n")
    assert.truthy(data:find("^HTTP/1.1 400 "), data)
    data = helpers.raw(gw.port, "GET /api/bad" .. q .. " HTTP/1.1\r\nHost: x\r\n" .. head
      .. "Bad Header: SEKRIT-BADHDR\r\n\r\n")
    assert.truthy(data:find("^HTTP/1.1 400 "), data)
    local conn = assert(helpers.raw_conn(gw.port))
    assert(conn:send("POST /api/left" .. q .. " HTTP/1.1\r\nHost: x\r\n" .. head
      .. "Content-Length: 50\r\n\r\nSEKRIT-PARTIAL"))
    helpers.sleep(0.2)
    conn:close()
    entry_for(gw, "/api/left")

    local logs = {
      ["access log"] = table.concat(gw.access_log(), "\n"),
      ["error log"] = gw.error_log(),
      stdout = read_file(gw.dir .. "/stdout.log") or "",
      stderr = gw.stderr(),
    }
    assert.truthy(#logs["access log"] > 0 and #logs["error log"] > 0)
    for name, text in pairs(logs) do
      assert.falsy(text:find("SEKRIT", 1, true), name .. " leaks a secret:\n" .. text)
    end
  end)

  it("every error log line has a time, a level and a process", function()
    local text = gw.error_log()
    local n = 0
    for line in text:gmatch("[^\n]+") do
      local time, level, role, pid = line:match(ERROR_LINE)
      assert.truthy(time, "malformed error log line: " .. line)
      assert.truthy(LEVELS[level], "unknown level in: " .. line)
      assert.truthy(role:find("^master$") or role:find("^worker %d+$"), line)
      assert.truthy(tonumber(pid) > 1, line)
      n = n + 1
    end
    assert.truthy(n >= 3, text)
    -- The upstream failures above are logged as errors, with the upstream.
    assert.truthy(text:find('%[error%] worker %d+%[%d+%]: [^\n]*upstream "dead"[^\n]*127%.0%.0%.1:'
                            .. dead_port), text)
  end)
end)

describe("access log off", function()
  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("writes nothing anywhere", function()
    local gw = helpers.start_gateway({
      access_log = { path = "off" },
      routes = { { name = "r", paths = { "/" }, response = { body = "x" } } },
    })
    for i = 1, 5 do
      assert.equal(200, assert(gw.request({ path = "/quiet" .. i })).status)
    end
    helpers.sleep(0.3)
    assert.truthy(gw.stop())
    assert.is_nil(read_file(gw.dir .. "/access.log"))
    assert.is_nil(read_file(helpers.repo_root() .. "/off"))   -- not a file named "off"
    assert.equal("", read_file(gw.dir .. "/stdout.log") or "")
    local all = gw.error_log() .. gw.stderr()
    assert.falsy(all:find("/quiet", 1, true), all)
  end)
end)

describe("error log", function()
  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("has no [error] or [crit] lines after a clean run, stop included", function()
    local echo = helpers.start_echo()
    local gw = helpers.start_gateway({
      worker_processes = 2,
      upstreams = { svc = { targets = { { url = echo.url() } } } },
      routes = {
        { name = "api", paths = { "/api" }, upstream = "svc" },
        { name = "health", paths = { "=/health" }, response = { json = { status = "ok" } } },
      },
    })
    local conn = assert(helpers.connect(gw.port))
    for i = 1, 20 do
      assert.equal(200, assert(conn:request({ path = "/api/k" .. i })).status)
    end
    conn:close()
    assert.equal(200, assert(gw.request({ method = "POST", path = "/api/b", body = ("b"):rep(100000) })).status)
    assert.equal(200, assert(gw.request({ path = "/health" })).status)
    -- Client mistakes are the client's, not the gateway's errors.
    assert.equal(404, assert(gw.request({ path = "/nope" })).status)
    assert.truthy(helpers.raw(gw.port, "GET / HTTP/1.1\r\n\r\n"):find("^HTTP/1.1 400 "))
    assert.truthy(helpers.raw(gw.port, "GET /../ HTTP/1.1\r\nHost: x\r\n\r\n"):find("^HTTP/1.1 400 "))
    assert.equal(200, assert(gw.admin_request({ path = "/status" })).status)
    entry_for(gw, "/nope")
    assert.truthy(gw.stop())
    local text = gw.error_log()
    assert.falsy(text:find("[error]", 1, true), text)
    assert.falsy(text:find("[crit]", 1, true), text)
    for line in text:gmatch("[^\n]+") do
      local _, level = line:match(ERROR_LINE)
      assert.truthy(LEVELS[level], "malformed error log line: " .. line)
    end
    -- The shutdown was recorded.
    assert.truthy(text:find("stopp", 1, true), text)
  end)

  it("respects the configured level", function()
    local gw = helpers.start_gateway({
      error_log = { level = "warn" },
      routes = { { name = "r", paths = { "/" }, response = { body = "x" } } },
    })
    assert.truthy(helpers.raw(gw.port, "GET / HTTP/1.1\r\n\r\n"):find("^HTTP/1.1 400 "))
    assert.truthy(gw.stop())
    local text = gw.error_log()
    assert.falsy(text:find("[info]", 1, true), text)
    assert.falsy(text:find("[notice]", 1, true), text)
    assert.falsy(text:find("[debug]", 1, true), text)
  end)

  it("keeps access lines whole with two workers under concurrent load", function()
    local gw = helpers.start_gateway({
      worker_processes = 2,
      routes = { { name = "r", paths = { "/" }, response = { body = ("y"):rep(2000) } } },
    })
    local conns = {}
    for i = 1, 50 do
      conns[i] = assert(helpers.connect(gw.port))
    end
    for round = 1, 4 do
      for i = 1, 50 do
        assert(conns[i]:send(helpers.encode_request({ path = fmt("/c/%d/%d", i, round) })))
      end
      for i = 1, 50 do
        assert.equal(200, assert(conns[i]:read_response()).status)
      end
    end
    for i = 1, 50 do
      conns[i]:close()
    end
    assert.truthy(gw.stop())
    local seen = {}
    for _, e in ipairs(entries(gw)) do
      seen[e.path] = (seen[e.path] or 0) + 1
    end
    for i = 1, 50 do
      for round = 1, 4 do
        assert.equal(1, seen[fmt("/c/%d/%d", i, round)], fmt("/c/%d/%d", i, round))
      end
    end
  end)
end)
