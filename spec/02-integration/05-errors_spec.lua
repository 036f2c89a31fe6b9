-- 05-errors_spec.lua: every error class the gateway answers, and what it
-- does when upstreams fail: retries, passive health and balancing.
--
-- Each error class is checked for its status, its JSON body
-- `{"error":"<reason phrase>"}` with Content-Type application/json, whether
-- the client connection survives, and, for errors about the request, that
-- nothing reached the upstream (tg-echo's /__stats). Upstream failures are
-- produced by tg-echo's X-Echo-Mode controls, by a port nothing listens on
-- (refused) and by a listening socket whose accept queue is full (SYNs are
-- dropped, so a connect never completes: a connect timeout on loopback).
--
-- Response framing errors tg-echo cannot produce come from a scripted
-- upstream: a LuaSocket listener in this process answering exact bytes.
--
-- Timeouts are configured small (hundreds of ms) so the file stays fast; the
-- only timing assertions are generous upper bounds ("answered within 3 s").

local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson.safe"

local gettime = socket.gettime

local parse = helpers.parse_raw_response

-- The error contract: status, JSON content type, {"error": reason}.
local function assert_error(res, status, reason)
  assert.is_table(res)
  assert.equal(status, res.status)
  assert.equal("application/json", res.headers["content-type"])
  assert.same({ error = reason }, res.json)
  assert.equal(#res.body, tonumber(res.headers["content-length"]))
end

-- Error-log lines at error level or above that match none of `allowed`
-- (Lua patterns), joined by newlines ("" when there are none).
local function unexpected_errors(text, allowed)
  local bad = {}
  for line in text:gmatch("[^\n]+") do
    if line:find("%[error%]") or line:find("%[crit%]") then
      local ok = false
      for _, pat in ipairs(allowed or {}) do
        if line:find(pat) then
          ok = true
          break
        end
      end
      if not ok then
        bad[#bad + 1] = line
      end
    end
  end
  return table.concat(bad, "\n")
end

-- Access-log entries (decoded) whose path starts with `prefix`.
-- Access-log entries whose path starts with prefix. The log is flushed once
-- per loop turn of the worker, which may come just after the client got its
-- answer: with `want`, wait (bounded) until that many lines are there.
local function access_entries(gw, prefix, want)
  local out
  local function collect()
    out = {}
    for _, line in ipairs(gw.access_log()) do
      local e = cjson.decode(line)
      if e and type(e.path) == "string" and e.path:sub(1, #prefix) == prefix then
        out[#out + 1] = e
      end
    end
    return out
  end
  if want then
    helpers.wait_until(function() return #collect() >= want end, 3)
  end
  return collect()
end

-- A listening socket that never accepts, with its accept queue filled: the
-- kernel drops further SYNs, so a connect to it hangs until the client
-- gives up. Returns the port and the sockets to keep alive.
local function blackhole()
  local server = assert(socket.tcp())
  assert(server:bind("127.0.0.1", 0))
  assert(server:listen(0))
  local _, port = server:getsockname()
  local keep = { server }
  -- Backlog 0 admits one connection; the others only make sure.
  for _ = 1, 3 do
    local c = socket.tcp()
    c:settimeout(0.2)
    c:connect("127.0.0.1", port)
    keep[#keep + 1] = c
  end
  -- Check the trick works here: a probe connect must not complete.
  local probe = socket.tcp()
  probe:settimeout(0.3)
  local ok = probe:connect("127.0.0.1", port)
  probe:close()
  return tonumber(port), keep, not ok
end

describe("error classes", function()
  local echo, gw, bh_keep, bh_works

  setup(function()
    echo = helpers.start_echo()
    local dead = helpers.free_port()
    local bh_port
    bh_port, bh_keep, bh_works = blackhole()
    local no_health = { max_fails = 0 }
    gw = helpers.start_gateway({
      limits = {
        max_header_bytes = 2048,
        max_headers = 20,
        max_uri_bytes = 256,
        max_body_bytes = 1000,
        header_timeout_ms = 500,
        body_timeout_ms = 500,
        keepalive_timeout_ms = 800,
      },
      upstreams = {
        echo = {
          targets = { { url = echo.url() } },
          timeouts = { connect_ms = 300, read_ms = 300 },
          retries = 0,
          -- No pooling: every attempt is on a fresh connection, so a reset
          -- is never taken for the keep-alive race (replayed once, see the
          -- retries block) and attempts can be counted exactly.
          keepalive = 0,
          passive_health = no_health,
        },
        refused = {
          targets = { { url = "http://127.0.0.1:" .. dead } },
          retries = 0,
          passive_health = no_health,
        },
        blackhole = {
          targets = { { url = "http://127.0.0.1:" .. bh_port } },
          timeouts = { connect_ms = 300 },
          retries = 0,
          passive_health = no_health,
        },
        bh_retry = {
          targets = { { url = "http://127.0.0.1:" .. bh_port }, { url = echo.url() } },
          timeouts = { connect_ms = 300 },
          retries = 1,
          passive_health = { max_fails = 1, fail_timeout_ms = 60000 },
        },
        down = {
          targets = { { url = "http://127.0.0.1:" .. helpers.free_port() },
                      { url = "http://127.0.0.1:" .. helpers.free_port() } },
          retries = 1,
          passive_health = { max_fails = 1, fail_timeout_ms = 60000 },
        },
      },
      routes = {
        { name = "echo", paths = { "/echo" }, upstream = "echo" },
        { name = "refused", paths = { "/refused" }, upstream = "refused" },
        { name = "blackhole", paths = { "/blackhole" }, upstream = "blackhole" },
        { name = "down", paths = { "/down" }, upstream = "down" },
        { name = "bh_retry", paths = { "/bh-retry" }, upstream = "bh_retry" },
        { name = "local", paths = { "/local" }, response = { echo = true } },
      },
    })
  end)

  teardown(function()
    for _, s in ipairs(bh_keep or {}) do
      s:close()
    end
    helpers.stop_all()
  end)

  before_each(function()
    assert(echo.reset_stats())
  end)

  describe("upstream failures", function()
    it("answers 502 when the upstream refuses the connection, and keeps the client connection", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/refused/x" }))
      assert_error(res, 502, "Bad Gateway")
      assert.is_nil(res.headers.connection)
      -- The same connection still serves a request.
      res = assert(conn:request({ path = "/echo/after" }))
      assert.equal(200, res.status)
      assert.equal("/echo/after", res.json.path)
      conn:close()
      local entries = access_entries(gw, "/refused/x", 1)
      assert.equal(1, #entries)
      assert.equal(502, entries[1].status)
      assert.equal("refused", entries[1].route)
      assert.truthy(gw.error_log():find('upstream "refused" [^\n]*connect failed'))
    end)

    it("answers 502 to HEAD with the error's length and no body", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ method = "HEAD", path = "/refused/head" }))
      assert.equal(502, res.status)
      assert.equal("", res.body)
      assert.equal(#'{"error":"Bad Gateway"}', tonumber(res.headers["content-length"]))
      -- No stray body bytes: the next response parses cleanly.
      res = assert(conn:request({ path = "/echo/after-head" }))
      conn:close()
      assert.equal(200, res.status)
      assert.equal("/echo/after-head", res.json.path)
    end)

    it("answers 502 when the upstream resets the connection", function()
      local res = assert(gw.request({ path = "/echo/reset", headers = { ["X-Echo-Mode"] = "reset" } }))
      assert_error(res, 502, "Bad Gateway")
      assert.equal(1, echo.stats().requests)        -- one attempt, retries: 0
    end)

    it("answers 502 when the upstream sends garbage", function()
      local res = assert(gw.request({ path = "/echo/garbage", headers = { ["X-Echo-Mode"] = "garbage" } }))
      assert_error(res, 502, "Bad Gateway")
      assert.is_nil(res.body:find("NOT HTTP", 1, true))
      assert.equal(1, echo.stats().requests)
    end)

    it("truncates the response and closes when the upstream closes mid-body", function()
      local t0 = gettime()
      local data, closed = helpers.raw(gw.port, "GET /echo/early HTTP/1.1\r\nHost: a\r\n"
        .. "X-Echo-Mode: close-early\r\n\r\n", { timeout = 3 })
      assert.is_true(gettime() - t0 < 3)
      assert.is_true(closed)
      -- The status was already sent: it stays 200, the body stops short.
      assert.truthy(data:find("^HTTP/1%.1 200 "))
      local head, body = data:match("^(.-)\r\n\r\n(.*)$")
      assert.truthy(head)
      assert.equal(100, tonumber(head:lower():match("\r\ncontent%-length: (%d+)")))
      assert.equal(10, #body)
      assert.truthy(gw.error_log():find("in the middle of the response body", 1, true))
    end)

    it("truncates the response and closes when the upstream stalls mid-body past read_ms", function()
      local t0 = gettime()
      local data, closed = helpers.raw(gw.port, "GET /echo/stall HTTP/1.1\r\nHost: a\r\n"
        .. "X-Echo-Mode: slow-body:1000\r\n\r\n", { timeout = 3 })
      assert.is_true(gettime() - t0 < 3)
      assert.is_true(closed)
      assert.truthy(data:find("^HTTP/1%.1 200 "))
      local head, body = data:match("^(.-)\r\n\r\n(.*)$")
      local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: (%d+)"))
      assert.is_number(len)
      assert.is_true(#body < len)
      assert.truthy(gw.error_log():find("timed out sending the response body", 1, true))
    end)

    it("answers 502 when the upstream frames a response with Content-Length and Transfer-Encoding", function()
      local res = assert(gw.request({ path = "/echo/cl-te",
        headers = { ["X-Echo-Response-Header"] = "Transfer-Encoding: chunked" } }))
      assert_error(res, 502, "Bad Gateway")
      assert.equal(1, echo.stats().requests)
    end)

    it("answers 502 when the upstream sends two Content-Length headers", function()
      local res = assert(gw.request({ path = "/echo/cl-cl",
        headers = { ["X-Echo-Response-Header"] = "Content-Length: 3" } }))
      assert_error(res, 502, "Bad Gateway")
    end)

    it("answers 504 when the upstream never answers (read_ms)", function()
      local conn = assert(helpers.connect(gw.port))
      local t0 = gettime()
      local res = assert(conn:request({ path = "/echo/hang", headers = { ["X-Echo-Mode"] = "hang" } }))
      assert.is_true(gettime() - t0 < 3)
      assert_error(res, 504, "Gateway Timeout")
      assert.equal(1, echo.stats().requests)
      -- A timeout is the upstream's fault: the client connection stays usable.
      res = assert(conn:request({ path = "/echo/next" }))
      assert.equal(200, res.status)
      assert.equal("/echo/next", res.json.path)
      conn:close()
    end)

    it("answers 504 when the upstream answers later than read_ms", function()
      local t0 = gettime()
      local res = assert(gw.request({ path = "/echo/slow", headers = { ["X-Echo-Delay-Ms"] = "2000" } }))
      assert.is_true(gettime() - t0 < 1.9)
      assert_error(res, 504, "Gateway Timeout")
    end)

    it("answers 504 when the connect does not complete (connect_ms)", function()
      assert.is_true(bh_works, "the full-backlog trick does not block connects on this kernel")
      local t0 = gettime()
      local res = assert(gw.request({ path = "/blackhole/x", timeout = 5 }))
      assert.is_true(gettime() - t0 < 3)
      assert_error(res, 504, "Gateway Timeout")
      assert.truthy(gw.error_log():find('upstream "blackhole" [^\n]*timed out connecting'))
    end)

    it("retries a connect timeout on the other target and then avoids the silent one", function()
      assert.is_true(bh_works, "the full-backlog trick does not block connects on this kernel")
      for i = 1, 4 do
        local res = assert(gw.request({ path = "/bh-retry/" .. i, timeout = 5 }))
        assert.equal(200, res.status)
        assert.equal("/bh-retry/" .. i, res.json.path)
      end
      assert.equal(4, echo.stats().requests)
      local timeouts = 0
      for line in gw.error_log():gmatch("[^\n]+") do
        if line:find('upstream "bh_retry" ', 1, true) and line:find("timed out connecting", 1, true) then
          timeouts = timeouts + 1
        end
      end
      assert.equal(1, timeouts)     -- max_fails 1: marked down after the first
    end)

    it("answers 503 once passive health has marked every target down", function()
      -- Both targets refuse: the first request tries both (retries: 1) and
      -- marks both down (max_fails: 1), so it fails with the last error.
      local res = assert(gw.request({ path = "/down/1" }))
      assert_error(res, 502, "Bad Gateway")
      for i = 2, 3 do
        res = assert(gw.request({ path = "/down/" .. i }))
        assert_error(res, 503, "Service Unavailable")
      end
      local log = gw.error_log()
      assert.truthy(log:find('upstream "down": no target available', 1, true))
      -- Marked down means not tried: exactly two connect failures in all.
      local fails = 0
      for line in log:gmatch("[^\n]+") do
        if line:find('upstream "down" ', 1, true) and line:find("connect failed", 1, true) then
          fails = fails + 1
        end
      end
      assert.equal(2, fails)
    end)
  end)

  describe("request errors", function()
    it("answers 431 to a head over max_header_bytes, before the upstream", function()
      local data, closed = helpers.raw(gw.port, "GET /echo/big HTTP/1.1\r\nHost: a\r\nX-Big: "
        .. ("a"):rep(3000) .. "\r\n\r\n")
      assert.is_true(closed)
      assert_error(parse(data), 431, "Request Header Fields Too Large")
      assert.equal("close", parse(data).headers.connection)
      assert.equal(0, echo.stats().requests)
    end)

    it("answers 431 to more than max_headers header lines", function()
      local lines = {}
      for i = 1, 30 do
        lines[#lines + 1] = "X-H" .. i .. ": v\r\n"
      end
      local data, closed = helpers.raw(gw.port, "GET /echo/many HTTP/1.1\r\nHost: a\r\n"
        .. table.concat(lines) .. "\r\n")
      assert.is_true(closed)
      assert_error(parse(data), 431, "Request Header Fields Too Large")
      assert.equal(0, echo.stats().requests)
    end)

    it("accepts exactly max_headers header lines", function()
      local headers = {}
      for i = 1, 19 do                       -- + Host = 20
        headers[#headers + 1] = { "X-H" .. i, "v" }
      end
      local res = assert(gw.request({ path = "/echo/twenty", headers = headers }))
      assert.equal(200, res.status)
      assert.equal("v", res.json.headers["x-h19"])
    end)

    it("answers 413 to a Content-Length over max_body_bytes without reading or forwarding it", function()
      local conn = assert(helpers.raw_conn(gw.port))
      -- Only the head: the answer must not wait for the body.
      assert(conn:send("POST /echo/big HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n"))
      local data, closed = conn:read_all(3)
      conn:close()
      assert.is_true(closed)
      local res = parse(data)
      assert_error(res, 413, "Content Too Large")
      assert.equal("close", res.headers.connection)
      assert.equal(0, echo.stats().requests)
    end)

    it("answers 413 to a Content-Length over max_body_bytes sent with its body", function()
      local data, closed = helpers.raw(gw.port, "POST /echo/big HTTP/1.1\r\nHost: a\r\n"
        .. "Content-Length: 2000\r\n\r\n" .. ("b"):rep(2000))
      assert.is_true(closed)
      assert_error(parse(data), 413, "Content Too Large")
      assert.equal(0, echo.stats().requests)
    end)

    it("answers 413 to an oversized Expect: 100-continue request without inviting the body", function()
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /echo/big HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n"
        .. "Expect: 100-continue\r\n\r\n"))
      local data, closed = conn:read_all(3)
      conn:close()
      assert.is_true(closed)
      assert.is_nil(data:find("100 Continue", 1, true))
      assert_error(parse(data), 413, "Content Too Large")
      assert.equal(0, echo.stats().requests)
    end)

    it("answers 413 when a chunked body streams past max_body_bytes on a local route", function()
      local chunk = ("c"):rep(400)
      local data, closed = helpers.raw(gw.port, {
        "POST /local/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "190\r\n" .. chunk .. "\r\n", "190\r\n" .. chunk .. "\r\n",
        "190\r\n" .. chunk .. "\r\n", "0\r\n\r\n",
      }, { pause = 0.02, timeout = 3 })
      assert.is_true(closed)
      assert_error(parse(data), 413, "Content Too Large")
    end)

    it("answers 413 when a chunked body streams past max_body_bytes", function()
      local chunk = ("c"):rep(400)
      local data, closed = helpers.raw(gw.port, {
        "POST /echo/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "190\r\n" .. chunk .. "\r\n", "190\r\n" .. chunk .. "\r\n",
        "190\r\n" .. chunk .. "\r\n", "0\r\n\r\n",
      }, { pause = 0.02, timeout = 3 })
      assert.is_true(closed)
      assert_error(parse(data), 413, "Content Too Large")
      -- The upstream may have seen the start of it, never a whole request.
      assert.equal(0, echo.stats().requests)
    end)

    it("accepts a body of exactly max_body_bytes", function()
      local res = assert(gw.request({ method = "POST", path = "/echo/fits", body = ("d"):rep(1000) }))
      assert.equal(200, res.status)
      assert.equal(1000, res.json.body_length)
    end)

    it("answers 414 to a target over max_uri_bytes", function()
      local data, closed = helpers.raw(gw.port, "GET /echo/" .. ("u"):rep(300) .. " HTTP/1.1\r\nHost: a\r\n\r\n")
      assert.is_true(closed)
      assert_error(parse(data), 414, "URI Too Long")
      assert.equal(0, echo.stats().requests)
    end)

    it("answers 400 to a malformed request and closes", function()
      local data, closed = helpers.raw(gw.port, "GET /echo/x HTTP/1.1\r\nHost: a\r\nNo colon here\r\n\r\n")
      assert.is_true(closed)
      local res = parse(data)
      assert_error(res, 400, "Bad Request")
      assert.equal("close", res.headers.connection)
      assert.equal(0, echo.stats().requests)
    end)

    it("answers 408 and closes when the head does not arrive within header_timeout_ms", function()
      local conn = assert(helpers.raw_conn(gw.port))
      local t0 = gettime()
      assert(conn:send("GET /echo/slowhead HTTP/1.1\r\nHost: a\r\n"))
      local data, closed = conn:read_all(3)
      conn:close()
      assert.is_true(gettime() - t0 < 3)
      assert.is_true(closed)
      local res = parse(data)
      assert_error(res, 408, "Request Timeout")
      assert.equal("close", res.headers.connection)
      assert.equal(0, echo.stats().requests)
    end)

    it("bounds the whole head by header_timeout_ms, not the gap between bytes", function()
      local conn = assert(helpers.raw_conn(gw.port))
      local head = "GET /echo/slowloris HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n"
      local t0 = gettime()
      -- One byte every 150 ms: each gap is well under 500 ms, the whole
      -- head would take 6 s. Stop sending once the gateway has answered.
      for i = 1, #head do
        if not conn:send(head:sub(i, i)) then
          break
        end
        local got = conn:receive(0.15)
        if got ~= "" then
          conn.buf = got .. conn.buf
          break
        end
      end
      local data, closed = conn:read_all(3)
      conn:close()
      assert.is_true(gettime() - t0 < 3)
      assert.is_true(closed)
      assert_error(parse(data), 408, "Request Timeout")
      assert.equal(0, echo.stats().requests)
    end)

    it("closes a connection that sends nothing, silently", function()
      local conn = assert(helpers.raw_conn(gw.port))
      local t0 = gettime()
      local data, closed = conn:read_all(3)
      conn:close()
      assert.is_true(gettime() - t0 < 3)
      assert.is_true(closed)
      assert.equal("", data)
    end)

    it("closes an idle keep-alive connection silently after keepalive_timeout_ms", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/echo/ka" }))
      assert.equal(200, res.status)
      local t0 = gettime()
      local data, closed = conn:read_all(3)
      conn:close()
      assert.is_true(gettime() - t0 < 3)
      assert.is_true(closed)
      assert.equal("", data)
    end)

    it("answers 408 and closes when the body stalls past body_timeout_ms", function()
      local conn = assert(helpers.raw_conn(gw.port))
      local t0 = gettime()
      assert(conn:send("POST /echo/stall HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"
        .. ("s"):rep(10)))
      local data, closed = conn:read_all(3)
      conn:close()
      assert.is_true(gettime() - t0 < 3)
      assert.is_true(closed)
      local res = parse(data)
      assert_error(res, 408, "Request Timeout")
      assert.equal("close", res.headers.connection)
      assert.equal(0, echo.stats().requests)
    end)

    it("times the body per read: a slow but steady body is not cut off", function()
      for _, path in ipairs({ "/echo/steady", "/local/steady" }) do
        -- Five pieces 200 ms apart: 800 ms in all, each gap under 500 ms.
        local pieces = { "POST " .. path .. " HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n"
                         .. "Connection: close\r\n\r\n" }
        for i = 1, 5 do
          pieces[#pieces + 1] = "s" .. i
        end
        local data, closed = helpers.raw(gw.port, pieces, { pause = 0.2, timeout = 3 })
        assert.is_true(closed)
        local res = parse(data)
        assert.equal(200, res.status)
        assert.equal("s1s2s3s4s5", res.json.body)
      end
    end)

    it("answers 408 and closes when the body stalls on a local route", function()
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /local/stall HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"
        .. ("s"):rep(10)))
      local data, closed = conn:read_all(3)
      conn:close()
      assert.is_true(closed)
      assert_error(parse(data), 408, "Request Timeout")
    end)

    it("logged only the upstream failures this file provoked", function()
      assert.equal("", unexpected_errors(gw.error_log(), { '%]: upstream "' }))
      assert.is_true(gw.alive())
    end)
  end)
end)

describe("retries, passive health and balancing", function()
  local e1, e2, gw, revive_port

  -- Requests that reached each echo since the last reset.
  local function hits()
    return e1.stats().requests, e2.stats().requests
  end

  local function reset()
    assert(e1.reset_stats())
    assert(e2.reset_stats())
  end

  setup(function()
    e1 = helpers.start_echo()
    e2 = helpers.start_echo()
    revive_port = helpers.free_port()
    local no_health = { max_fails = 0 }
    gw = helpers.start_gateway({
      upstreams = {
        onedead = {
          targets = { { url = "http://127.0.0.1:" .. helpers.free_port() }, { url = e1.url() } },
          retries = 1,
          passive_health = { max_fails = 2, fail_timeout_ms = 60000 },
        },
        noretry = {
          targets = { { url = "http://127.0.0.1:" .. helpers.free_port() }, { url = e1.url() } },
          retries = 0,
          passive_health = no_health,
        },
        pair = {
          targets = { { url = e1.url() }, { url = e2.url() } },
          retries = 1,
          keepalive = 0,        -- fresh connections: no keep-alive-race replays
          passive_health = no_health,
        },
        single = {
          targets = { { url = e1.url() } },
          retries = 0,
          timeouts = { read_ms = 300 },
          passive_health = no_health,
        },
        revive = {
          targets = { { url = "http://127.0.0.1:" .. revive_port } },
          retries = 0,
          passive_health = { max_fails = 1, fail_timeout_ms = 1000 },
        },
        weighted = {
          targets = { { url = e1.url(), weight = 3 }, { url = e2.url(), weight = 1 } },
          balance = "round_robin",
          passive_health = no_health,
        },
        least = {
          targets = { { url = e1.url() }, { url = e2.url() } },
          balance = "least_conn",
          passive_health = no_health,
        },
        hashed = {
          targets = { { url = e1.url() }, { url = e2.url() } },
          balance = "hash",
          hash_on = "header:X-User",
          passive_health = no_health,
        },
      },
      routes = {
        { name = "onedead", paths = { "/onedead" }, upstream = "onedead" },
        { name = "noretry", paths = { "/noretry" }, upstream = "noretry" },
        { name = "pair", paths = { "/pair" }, upstream = "pair" },
        { name = "single", paths = { "/single" }, upstream = "single" },
        { name = "revive", paths = { "/revive" }, upstream = "revive" },
        { name = "weighted", paths = { "/weighted" }, upstream = "weighted" },
        { name = "least", paths = { "/least" }, upstream = "least" },
        { name = "hashed", paths = { "/hashed" }, upstream = "hashed" },
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  before_each(reset)

  it("retries a refused connect on the other target, then skips the dead one after max_fails", function()
    local conn = assert(helpers.connect(gw.port))
    for i = 1, 10 do
      local res = assert(conn:request({ path = "/onedead/" .. i }))
      assert.equal(200, res.status)
      assert.equal("/onedead/" .. i, res.json.path)
    end
    conn:close()
    assert.equal(10, (hits()))
    local fails = 0
    for line in gw.error_log():gmatch("[^\n]+") do
      if line:find('upstream "onedead" ', 1, true) and line:find("connect failed", 1, true) then
        fails = fails + 1
      end
    end
    assert.equal(2, fails)           -- max_fails, then never tried again
    -- Every request was logged against the live target.
    local entries = access_entries(gw, "/onedead/", 10)
    assert.equal(10, #entries)
    for _, e in ipairs(entries) do
      assert.equal(200, e.status)
      assert.equal("127.0.0.1:" .. e1.port, e.upstream_addr)
    end
  end)

  it("answers 502 for the dead target when retries is 0", function()
    local statuses = {}
    for i = 1, 4 do
      local res = assert(gw.request({ path = "/noretry/" .. i }))
      statuses[res.status] = (statuses[res.status] or 0) + 1
      if res.status == 502 then
        assert_error(res, 502, "Bad Gateway")
      end
    end
    -- Round robin over one dead and one live target, no retry, no marking.
    assert.same({ [200] = 2, [502] = 2 }, statuses)
    assert.equal(2, (hits()))
  end)

  it("does not retry a POST with a body after the upstream reset it", function()
    local res = assert(gw.request({ method = "POST", path = "/pair/post", body = "payload",
                                    headers = { ["X-Echo-Mode"] = "reset" } }))
    assert_error(res, 502, "Bad Gateway")
    local a, b = hits()
    assert.equal(1, a + b)
  end)

  it("retries a GET the upstream reset on the other target", function()
    local res = assert(gw.request({ path = "/pair/get", headers = { ["X-Echo-Mode"] = "reset" } }))
    -- Both targets reset it (the control header travels along): 502 after
    -- exactly one retry, one attempt on each.
    assert_error(res, 502, "Bad Gateway")
    local a, b = hits()
    assert.equal(1, a)
    assert.equal(1, b)
  end)

  -- A pooled connection the upstream closes just as it is reused is the
  -- keep-alive race: the request is replayed once on a fresh connection,
  -- which is only safe when the request is idempotent.
  it("replays a GET once on a fresh connection when a reused connection resets", function()
    local conn = assert(helpers.connect(gw.port))
    local res = assert(conn:request({ path = "/single/warm" }))   -- pools a connection
    assert.equal(200, res.status)
    reset()
    res = assert(conn:request({ path = "/single/get", headers = { ["X-Echo-Mode"] = "reset" } }))
    conn:close()
    assert_error(res, 502, "Bad Gateway")
    assert.equal(2, (hits()))           -- the reused attempt and one replay, no more
  end)

  it("does not replay a POST without a body when a reused connection resets", function()
    local conn = assert(helpers.connect(gw.port))
    local res = assert(conn:request({ path = "/single/warm" }))   -- pools a connection
    assert.equal(200, res.status)
    reset()
    res = assert(conn:request({ method = "POST", path = "/single/post",
                                headers = { ["X-Echo-Mode"] = "reset" } }))
    conn:close()
    assert_error(res, 502, "Bad Gateway")
    -- POST is not idempotent: the upstream may have acted on it.
    assert.equal(1, (hits()))
  end)

  it("does not replay a request that timed out on a reused connection", function()
    local conn = assert(helpers.connect(gw.port))
    local res = assert(conn:request({ path = "/single/warm" }))   -- pools a connection
    assert.equal(200, res.status)
    reset()
    res = assert(conn:request({ path = "/single/hang", headers = { ["X-Echo-Mode"] = "hang" } }))
    conn:close()
    assert_error(res, 504, "Gateway Timeout")
    -- The upstream has the request and is working on it: that is no
    -- keep-alive race, and retries is 0.
    assert.equal(1, (hits()))
  end)

  it("brings a target marked down back after fail_timeout_ms", function()
    local res = assert(gw.request({ path = "/revive/1" }))
    assert_error(res, 502, "Bad Gateway")
    res = assert(gw.request({ path = "/revive/2" }))
    assert_error(res, 503, "Service Unavailable")
    -- The target starts listening; once fail_timeout_ms (1 s) has passed it
    -- is tried again and stays up.
    helpers.start_echo({ port = revive_port })
    local ok = helpers.wait_until(function()
      local r = gw.request({ path = "/revive/3" })
      return r and r.status == 200
    end, 5, 0.1)
    assert.truthy(ok)
    res = assert(gw.request({ path = "/revive/4" }))
    assert.equal(200, res.status)
    assert.equal("/revive/4", res.json.path)
  end)

  it("splits round_robin traffic by weight (3:1)", function()
    local conn = assert(helpers.connect(gw.port))
    for i = 1, 400 do
      local res = assert(conn:request({ path = "/weighted/" .. i }))
      assert.equal(200, res.status)
    end
    conn:close()
    local a, b = hits()
    assert.equal(400, a + b)
    assert.is_true(a >= 260 and a <= 340, "weight 3 target got " .. a)
    assert.is_true(b >= 60 and b <= 140, "weight 1 target got " .. b)
  end)

  it("least_conn sends new requests to the target without a request in flight", function()
    local slow = assert(helpers.connect(gw.port))
    assert(slow:send(helpers.encode_request({ path = "/least/slow",
                                               headers = { ["X-Echo-Delay-Ms"] = "1500" } })))
    -- Wait until the slow request reached an echo (it is counted on arrival).
    assert(helpers.wait_until(function()
      local a, b = hits()
      return a + b == 1
    end, 3))
    local a0 = hits()
    local busy = a0 == 1 and e1 or e2
    local idle = busy == e1 and e2 or e1
    for i = 1, 5 do
      local res = assert(gw.request({ path = "/least/fast" .. i }))
      assert.equal(200, res.status)
    end
    assert.equal(1, busy.stats().requests)
    assert.equal(5, idle.stats().requests)
    local res = assert(slow:read_response({ timeout = 5 }))
    slow:close()
    assert.equal(200, res.status)
    assert.equal("/least/slow", res.json.path)
  end)

  it("hash on header:X-User keeps each user on one target", function()
    local conn = assert(helpers.connect(gw.port))
    for round = 1, 3 do
      for u = 1, 20 do
        local res = assert(conn:request({ path = "/hashed/u" .. u .. "/" .. round,
                                          headers = { ["X-User"] = "user-" .. u } }))
        assert.equal(200, res.status)
      end
    end
    conn:close()
    local a, b = hits()
    assert.equal(60, a + b)
    assert.is_true(a > 0 and b > 0, "all users hashed to one target")
    assert(helpers.wait_until(function()
      return #access_entries(gw, "/hashed/") == 60
    end, 3))
    local where = {}
    for _, e in ipairs(access_entries(gw, "/hashed/")) do
      local user = e.path:match("^/hashed/(u%d+)/")
      where[user] = where[user] or e.upstream_addr
      assert.equal(where[user], e.upstream_addr, "user " .. user .. " moved")
    end
  end)

  it("logged only upstream failures", function()
    assert.equal("", unexpected_errors(gw.error_log(), { '%]: upstream "' }))
    assert.is_true(gw.alive())
  end)
end)

-- A scripted upstream: a LuaSocket listener in this process. The gateway is
-- another process, so one thread can send a request to it, accept its
-- upstream connection, answer with exact bytes, and read what the client
-- gets. This reaches framing errors tg-echo cannot produce.
describe("a misbehaving upstream", function()
  local server, gw

  setup(function()
    server = assert(socket.bind("127.0.0.1", 0))
    local _, port = server:getsockname()
    local target = { { url = "http://127.0.0.1:" .. port } }
    gw = helpers.start_gateway({
      upstreams = {
        fresh = { targets = target, retries = 0, keepalive = 0,
                  timeouts = { read_ms = 1000 }, passive_health = { max_fails = 0 } },
        pooled = { targets = target, retries = 0,
                   timeouts = { read_ms = 1000 }, passive_health = { max_fails = 0 } },
      },
      routes = {
        { name = "fresh", paths = { "/fresh" }, upstream = "fresh" },
        { name = "pooled", paths = { "/pooled" }, upstream = "pooled" },
      },
    })
  end)

  teardown(function()
    if server then
      server:close()
    end
    helpers.stop_all()
  end)

  -- Reads one request head (lines up to the empty one) from an upstream
  -- connection; returns its first line, or nil.
  local function read_request(up)
    up:settimeout(2)
    local first
    for _ = 1, 200 do
      local line = up:receive("*l")
      if not line then
        return nil
      end
      first = first or line
      if line == "" then
        return first
      end
    end
    return nil
  end

  -- Sends GET `path` through the gateway, accepts the upstream connection,
  -- answers `response` and closes it; returns the client's response.
  local function exchange(path, response)
    local conn = assert(helpers.connect(gw.port))
    assert(conn:send("GET " .. path .. " HTTP/1.1\r\nHost: a\r\n\r\n"))
    server:settimeout(3)
    local up = assert(server:accept())
    assert.equal("GET " .. path .. " HTTP/1.1", read_request(up))
    up:send(response)
    up:close()
    local res, err = conn:read_response({ timeout = 3 })
    conn:close()
    return res, err
  end

  local bad = {
    { "a bare LF in its head", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok" },
    { "an obs-fold line", "HTTP/1.1 200 OK\r\nX-F: a\r\n b\r\nContent-Length: 2\r\n\r\nok" },
    { "Content-Length and Transfer-Encoding",
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" },
    { "two different Content-Length",
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!" },
    { "a coding other than chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" },
    { "Transfer-Encoding in HTTP/1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" },
    { "a negative Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok" },
    { "a four-digit status", "HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok" },
    { "version HTTP/2.0", "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok" },
    { "a space before a header's colon", "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok" },
    { "a NUL in a header value", "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok" },
    { "a head larger than the read buffer",
      "HTTP/1.1 200 OK\r\nX-Big: " .. ("a"):rep(20000) .. "\r\nContent-Length: 2\r\n\r\nok" },
    { "nothing at all (it just closes)", "" },
  }
  for _, case in ipairs(bad) do
    it("answers 502 to a response with " .. case[1], function()
      local res = assert(exchange("/fresh/x", case[2]))
      assert_error(res, 502, "Bad Gateway")
    end)
  end

  it("cuts off a malformed chunked response body and closes", function()
    local conn = assert(helpers.raw_conn(gw.port))
    assert(conn:send("GET /fresh/chunks HTTP/1.1\r\nHost: a\r\n\r\n"))
    server:settimeout(3)
    local up = assert(server:accept())
    assert.truthy(read_request(up))
    up:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nEVIL\r\n0\r\n\r\n")
    up:close()
    local data, closed = conn:read_all(3)
    conn:close()
    assert.is_true(closed)
    assert.truthy(data:find("^HTTP/1%.1 200 "))
    assert.is_nil(data:find("EVIL", 1, true))
    assert.is_nil(data:find("\r\n0\r\n\r\n", 1, true))   -- never a clean end
  end)

  it("never hands bytes an upstream sent after a response to the next request", function()
    local conn = assert(helpers.connect(gw.port))
    assert(conn:send("GET /pooled/1 HTTP/1.1\r\nHost: a\r\n\r\n"))
    server:settimeout(3)
    local up = assert(server:accept())
    assert.truthy(read_request(up))
    -- A complete response, then a second one nobody asked for.
    up:send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            .. "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
    local res = assert(conn:read_response())
    assert.equal(200, res.status)
    assert.equal("ok", res.body)
    -- The next request must be answered by its own exchange: on a new
    -- connection, since the old one carried stray bytes.
    assert(conn:send("GET /pooled/2 HTTP/1.1\r\nHost: a\r\n\r\n"))
    local ready = socket.select({ server }, nil, 3)
    assert.equal(1, #ready)
    local up2 = assert(server:accept())
    assert.equal("GET /pooled/2 HTTP/1.1", read_request(up2))
    up2:send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
    res = assert(conn:read_response())
    conn:close()
    up:close()
    up2:close()
    assert.equal("good", res.body)
  end)

  it("logged only upstream failures", function()
    assert.equal("", unexpected_errors(gw.error_log(), { '%]: upstream "' }))
    assert.is_true(gw.alive())
  end)
end)
