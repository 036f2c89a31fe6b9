-- 12-http_client_spec.lua: tg.http.request, the plugins' non-blocking
-- HTTP/1.1 client (core/tg_httpc.c, lua/tollgate/http.lua).
--
-- Every callout goes to a real server: tg-echo (which reports what it
-- received and misbehaves on request through X-Echo-* headers) or the
-- gateway itself. The fixture plugin spec/fixtures/plugins/httpc-callout.lua
-- performs the callout described by the query string and answers what it
-- got as JSON; httpc-timer does one from a timer started in init_worker,
-- httpc-phases one from the log phase (and tries one from header_filter,
-- where it must raise).
--
-- The gateway runs one worker, so "served meanwhile" assertions prove the
-- callouts do not block the loop. Timing assertions are generous upper
-- bounds only.

local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson.safe"

local gettime = socket.gettime
local FIXTURES = helpers.repo_root() .. "/spec/fixtures/plugins"

local function escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- Query string for httpc-callout: a value that is a table repeats the key.
local function query(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) ~= "table" then v = { v } end
    for _, x in ipairs(v) do parts[#parts + 1] = escape(k) .. "=" .. escape(x) end
  end
  return table.concat(parts, "&")
end

-- Error-log lines at error level or above that match none of `allowed`.
local function unexpected_errors(text, allowed)
  local bad = {}
  for line in text:gmatch("[^\n]+") do
    if line:find("%[error%]") or line:find("%[crit%]") then
      local ok = false
      for _, pat in ipairs(allowed or {}) do
        if line:find(pat) then ok = true break end
      end
      if not ok then bad[#bad + 1] = line end
    end
  end
  return table.concat(bad, "\n")
end

describe("tg.http.request", function()
  local echo, gw

  setup(function()
    echo = helpers.start_echo()
    local static = { status = 200, body = "not reached" }
    gw = helpers.start_gateway({
      plugins_path = { FIXTURES },
      routes = {
        { name = "callout", paths = { "/callout" }, response = static,
          plugins = { ["httpc-callout"] = {} } },
        { name = "callout-rewrite", paths = { "/callout-rewrite" }, response = static,
          plugins = { ["httpc-callout"] = { phase = "rewrite" } } },
        { name = "echo", paths = { "/echo" }, response = { echo = true } },
        { name = "timer", paths = { "/timer" }, response = static,
          plugins = { ["httpc-timer"] = { url = echo.url("/jwks?kid=1") } } },
        { name = "ship", paths = { "/shipped" }, response = { status = 200, body = "shipped" },
          plugins = { ["httpc-phases"] = { role = "ship", url = echo.url("/logs") } } },
        { name = "read", paths = { "/read-shipped" }, response = static,
          plugins = { ["httpc-phases"] = { role = "read" } } },
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  -- Runs one gateway request to the fixture; returns the list of callout
  -- results ({res, err, elapsed_ms}) and the gateway response.
  local function callouts(t, path)
    local res = assert(gw.request({ path = (path or "/callout") .. "?" .. query(t), timeout = 10 }))
    assert.equal(200, res.status, res.body)
    assert.is_table(res.json, res.body)
    return res.json.results, res
  end

  local function callout(t, path)
    local results, res = callouts(t, path)
    return results[1], res
  end

  -- The callout's response body, which tg-echo fills with what it received.
  local function echoed(r)
    assert.equal(cjson.null, r.err)
    assert.is_table(r.res)
    local j = cjson.decode(r.res.body)
    assert.is_table(j, r.res.body)
    return j
  end

  describe("requests", function()
    it("sends a GET with its query, Host and User-Agent, and returns status, headers and body", function()
      local r = callout({ url = echo.url("/a/b?x=1&y=two") })
      local j = echoed(r)
      assert.equal(200, r.res.status)
      assert.equal("GET", j.method)
      assert.equal("/a/b?x=1&y=two", j.uri)
      assert.equal("127.0.0.1:" .. echo.port, j.headers.host)
      assert.equal("tollgate", j.headers["user-agent"])
      assert.equal("application/json", r.res.headers["content-type"])
      assert.equal(tostring(#r.res.body), r.res.headers["content-length"])
      assert.equal("tg-echo", r.res.headers.server)
    end)

    it("sends a POST with body, Content-Length and the caller's headers", function()
      local r = callout({ url = echo.url("/submit"), method = "POST", body = "hello world",
                          ["h.X-A"] = "b", ["h.Content-Type"] = "text/plain" })
      local j = echoed(r)
      assert.equal("POST", j.method)
      assert.equal("hello world", j.body)
      assert.equal("11", j.headers["content-length"])
      assert.equal("b", j.headers["x-a"])
      assert.equal("text/plain", j.headers["content-type"])
      assert.is_false(j.chunked_request)
    end)

    it("sends repeated request headers and joins repeated response headers, names lowercased", function()
      local r = callout({ url = echo.url("/"),
                          ["h.X-Echo-Response-Header"] = { "X-Multi: a", "X-Multi: b" } })
      local j = echoed(r)
      assert.equal("X-Multi: a, X-Multi: b", j.headers["x-echo-response-header"])
      assert.equal("a, b", r.res.headers["x-multi"])
      assert.is_nil(r.res.headers["X-Multi"])
    end)

    it("lets the caller set Host", function()
      local j = echoed(callout({ url = echo.url("/"), ["h.Host"] = "api.internal" }))
      assert.equal("api.internal", j.headers.host)
    end)

    it("sends an empty POST with Content-Length: 0", function()
      local j = echoed(callout({ url = echo.url("/"), method = "POST" }))
      assert.equal("0", j.headers["content-length"])
      assert.equal("", j.body)
    end)

    it("works from the rewrite phase too", function()
      local j = echoed(callout({ url = echo.url("/rw") }, "/callout-rewrite"))
      assert.equal("/rw", j.path)
    end)

    it("calls the gateway itself (same single worker) without deadlock", function()
      local r = callout({ url = "http://127.0.0.1:" .. gw.port .. "/echo?from=callout" })
      local j = echoed(r)
      assert.equal("tollgate", r.res.headers.server)
      assert.equal("/echo", j.path)
      assert.equal("echo", j.route)
    end)

    it("connects to an IPv6 literal", function()
      local echo6 = helpers.start_echo({ host = "::1" })
      local j = echoed(callout({ url = "http://[::1]:" .. echo6.port .. "/v6" }))
      assert.equal("/v6", j.path)
      assert.equal("[::1]:" .. echo6.port, j.headers.host)
      assert.equal("::1", j.remote_addr)
    end)

    it("resolves a host name (localhost) and caches it", function()
      local r1 = callout({ url = "http://localhost:" .. echo.port .. "/named" })
      local j = echoed(r1)
      assert.equal("localhost:" .. echo.port, j.headers.host)
      assert.equal("127.0.0.1", j.remote_addr)
      local r2 = callout({ url = "http://LocalHost:" .. echo.port .. "/named" })
      assert.equal("/named", echoed(r2).path)
    end)
  end)

  describe("responses", function()
    it("returns a redirect as is, without following it", function()
      assert(echo.reset_stats())
      local r = callout({ url = echo.url("/old"), ["h.X-Echo-Status"] = "302",
                          ["h.X-Echo-Response-Header"] = "Location: /elsewhere" })
      assert.equal(302, r.res.status)
      assert.equal("/elsewhere", r.res.headers.location)
      assert.equal(1, echo.stats().requests)
    end)

    it("skips a 100 Continue before the final response", function()
      local r = callout({ url = echo.url("/"), method = "PUT", body = "payload",
                          ["h.Expect"] = "100-continue" })
      local j = echoed(r)
      assert.equal(200, r.res.status)
      assert.equal("payload", j.body)
      assert.equal("100-continue", j.headers.expect)
    end)

    it("reads no body after 204 and HEAD, and keeps the connection", function()
      local results = callouts({ url = echo.url("/"), ["h.X-Echo-Status"] = "204", n = 2 })
      for _, r in ipairs(results) do
        assert.equal(cjson.null, r.err)
        assert.equal(204, r.res.status)
        assert.equal("", r.res.body)
      end
      assert.is_true(results[2].res.reused)
      results = callouts({ url = echo.url("/"), method = "HEAD", n = 2 })
      for _, r in ipairs(results) do
        assert.equal(cjson.null, r.err)
        assert.equal(200, r.res.status)
        assert.equal("", r.res.body)
        assert.truthy(tonumber(r.res.headers["content-length"]) > 0)
      end
      assert.is_true(results[2].res.reused)
    end)

    it("decodes a chunked response", function()
      local r = callout({ url = echo.url("/c"), ["h.X-Echo-Chunked"] = "5" })
      local j = echoed(r)
      assert.equal("chunked", r.res.headers["transfer-encoding"])
      assert.equal("/c", j.path)
      assert.equal("5", j.headers["x-echo-chunked"])
    end)

    it("reads a body delimited by close, and does not reuse that connection", function()
      local results = callouts({ url = echo.url("/nl"), ["h.X-Echo-Mode"] = "no-length", n = 2 })
      for _, r in ipairs(results) do
        local j = echoed(r)
        assert.equal("/nl", j.path)
        assert.is_nil(r.res.headers["content-length"])
        assert.is_nil(r.res.headers["transfer-encoding"])
      end
      -- The second never comes over the first one's connection (the pool
      -- may hold other connections to the echo, e.g. the timer's).
      assert.are_not.equal(echoed(results[1]).remote_port, echoed(results[2]).remote_port)
    end)

    it("reads a 5 MB body, by Content-Length and chunked", function()
      local size = 5 * 1024 * 1024
      local r = callout({ url = echo.url("/big"), ["h.X-Echo-Body-Size"] = size, summary = 1 })
      assert.equal(cjson.null, r.err)
      assert.equal(size, r.res.body_length)
      assert.is_true(r.res.all_x)
      assert.equal(tostring(size), r.res.headers["content-length"])
      r = callout({ url = echo.url("/big"), ["h.X-Echo-Body-Size"] = size,
                    ["h.X-Echo-Chunked"] = "37", summary = 1 })
      assert.equal(cjson.null, r.err)
      assert.equal(size, r.res.body_length)
      assert.is_true(r.res.all_x)
      assert.equal("chunked", r.res.headers["transfer-encoding"])
    end)

    it("enforces max_body_bytes for every framing", function()
      local exact = callout({ url = echo.url("/"), ["h.X-Echo-Body-Size"] = 1000,
                              max_body_bytes = 1000, summary = 1 })
      assert.equal(cjson.null, exact.err)
      assert.equal(1000, exact.res.body_length)
      for _, t in ipairs({
        { ["h.X-Echo-Body-Size"] = 1001 },
        { ["h.X-Echo-Body-Size"] = 5000, ["h.X-Echo-Chunked"] = "4" },
        { ["h.X-Echo-Mode"] = "no-length" },   -- its JSON body is > 100 bytes
      }) do
        t.url = echo.url("/")
        t.max_body_bytes = t["h.X-Echo-Mode"] and 100 or 1000
        local r = callout(t)
        assert.equal("response too large", r.err)
        assert.equal(cjson.null, r.res)
      end
      -- The default cap is 10 MiB.
      local r = callout({ url = echo.url("/"), ["h.X-Echo-Body-Size"] = 10 * 1024 * 1024 + 1 })
      assert.equal("response too large", r.err)
    end)
  end)

  describe("failures", function()
    it("times out as a whole, within a bounded time", function()
      local t0 = gettime()
      local r = callout({ url = echo.url("/"), ["h.X-Echo-Delay-Ms"] = "3000", timeout_ms = 300 })
      local took = gettime() - t0
      assert.equal("timeout", r.err)
      assert.equal(cjson.null, r.res)
      assert.truthy(r.elapsed_ms >= 250, r.elapsed_ms)
      assert.truthy(took < 1.5, took)
      -- A server that never answers, and one that trickles the body.
      r = callout({ url = echo.url("/"), ["h.X-Echo-Mode"] = "hang", timeout_ms = 200 })
      assert.equal("timeout", r.err)
      r = callout({ url = echo.url("/"), ["h.X-Echo-Mode"] = "slow-body:100", timeout_ms = 300 })
      assert.equal("timeout", r.err)
    end)

    it("reports a refused connection", function()
      local r = callout({ url = "http://127.0.0.1:" .. helpers.free_port() .. "/" })
      assert.equal("connection refused", r.err)
      assert.equal(cjson.null, r.res)
    end)

    it("reports garbage, a reset and a truncated body", function()
      assert.equal("invalid response", callout({ url = echo.url("/"), ["h.X-Echo-Mode"] = "garbage" }).err)
      assert.equal("connection reset", callout({ url = echo.url("/"), ["h.X-Echo-Mode"] = "reset" }).err)
      assert.equal("connection closed", callout({ url = echo.url("/"), ["h.X-Echo-Mode"] = "close-early" }).err)
    end)

    it("refuses bad URLs with nil, err (https is spec/02-integration/13-tls_spec.lua)", function()
      assert.equal("connection refused", callout({ url = "https://127.0.0.1:" .. helpers.free_port() .. "/" }).err)
      assert.equal("invalid url", callout({ url = "not a url" }).err)
      assert.equal("invalid url", callout({ url = "http://user:pw@127.0.0.1/" }).err)
      assert.equal("invalid url", callout({ url = "http://127.0.0.1:99999/" }).err)
      assert.equal('unsupported url scheme "ftp"', callout({ url = "ftp://127.0.0.1/" }).err)
    end)

    it("raises on misuse: a header value with CR/LF, a header the client owns", function()
      local res = assert(gw.request({ path = "/callout?" .. query({ url = echo.url("/"), ["h.X-Bad"] = "a\r\nb" }) }))
      assert.equal(500, res.status)
      res = assert(gw.request({ path = "/callout?" .. query({ url = echo.url("/"), ["h.Content-Length"] = "5" }) }))
      assert.equal(500, res.status)
      local log = gw.error_log()
      assert.truthy(log:find("tg.http.request: invalid header value", 1, true), log)
      assert.truthy(log:find("tg.http.request: Content-Length is set by the client", 1, true), log)
      -- The worker goes on.
      assert.equal("/after", echoed(callout({ url = echo.url("/after") })).path)
    end)
  end)

  describe("keep-alive", function()
    it("reuses a pooled connection across callouts and requests", function()
      assert(echo.reset_stats())
      local results = callouts({ url = echo.url("/ka"), n = 3 })
      local first = echoed(results[1]).connection_requests
      for i = 2, 3 do
        assert.is_true(results[i].res.reused)
        assert.equal(first + i - 1, echoed(results[i]).connection_requests)
      end
      -- The next gateway request finds the same connection in the pool.
      local r = callout({ url = echo.url("/ka") })
      assert.is_true(r.res.reused)
      assert.equal(first + 3, echoed(r).connection_requests)
      assert.truthy(echo.stats().connections <= 1)
    end)

    it("opens a fresh connection each time with keepalive = false", function()
      local results = callouts({ url = echo.url("/close"), keepalive = 0, n = 2 })
      for _, r in ipairs(results) do
        local j = echoed(r)
        assert.equal(1, j.connection_requests)
        assert.equal("close", j.headers.connection)
        assert.is_false(r.res.reused)
      end
    end)

    it("replaces a pooled connection the server closed", function()
      -- X-Echo-Close: the server closes after answering; the pool must not
      -- hand that connection out again.
      local results = callouts({ url = echo.url("/"), ["h.X-Echo-Close"] = "1", n = 3 })
      local ports = {}
      for _, r in ipairs(results) do
        assert.equal("close", r.res.headers.connection)
        local port = echoed(r).remote_port
        assert.is_nil(ports[port])
        ports[port] = true
      end
      local r = callout({ url = echo.url("/after-close") })
      assert.is_nil(ports[echoed(r).remote_port])
    end)
  end)

  describe("concurrency", function()
    it("serves 20 requests each waiting 300 ms on a callout in parallel on one worker", function()
      local conns = {}
      local path = "/callout?" .. query({ url = echo.url("/slow"), ["h.X-Echo-Delay-Ms"] = "300" })
      local t0 = gettime()
      for i = 1, 20 do
        conns[i] = assert(helpers.connect(gw.port, { timeout = 10 }))
        assert(conns[i]:send("GET " .. path .. " HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"))
      end
      for i = 1, 20 do
        local data = conns[i]:read_all(10)
        conns[i]:close()
        local res = helpers.parse_raw_response(data)
        assert.is_table(res, data)
        assert.equal(200, res.status)
        local r = res.json.results[1]
        assert.equal(cjson.null, r.err)
        assert.equal("/slow", cjson.decode(r.res.body).path)
      end
      local took = gettime() - t0
      assert.truthy(took < 2.5, "20 x 300 ms callouts took " .. took .. " s")
    end)

    it("tears down the callout of a client that leaves, at once", function()
      -- The callout target is a listener in this process: it sees the
      -- gateway's connection close long before the callout's 5 s timeout.
      local server = assert(socket.bind("127.0.0.1", 0))
      local _, sport = server:getsockname()
      server:settimeout(5)
      local c = assert(helpers.connect(gw.port))
      assert(c:send("GET /callout?" .. query({ url = "http://127.0.0.1:" .. sport .. "/wait",
                                               timeout_ms = 5000 })
                    .. " HTTP/1.1\r\nHost: gw\r\n\r\n"))
      local s = assert(server:accept())
      s:settimeout(2)
      local first = s:receive("*l")
      assert.equal("GET /wait HTTP/1.1", first)
      repeat local line = s:receive("*l") until line == nil or line == ""
      local t0 = gettime()
      c:close()
      s:settimeout(3)
      local data, err = s:receive(1)
      local took = gettime() - t0
      assert.is_nil(data)
      assert.equal("closed", err)
      assert.truthy(took < 1.5, "callout connection closed after " .. took .. " s")
      s:close()
      server:close()
      -- The request is logged as 499 and the worker carries on.
      assert(helpers.wait_until(function()
        for _, line in ipairs(gw.access_log()) do
          local e = cjson.decode(line)
          if e and e.path == "/callout" and e.status == 499 then return true end
        end
      end, 3))
      assert.equal("/next", echoed(callout({ url = echo.url("/next") })).path)
    end)

    it("keeps serving while a client that left waits on its callout", function()
      local pids = gw.group_pids()
      local c = assert(helpers.connect(gw.port))
      local path = "/callout?" .. query({ url = echo.url("/abandoned"), ["h.X-Echo-Delay-Ms"] = "800" })
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: gw\r\n\r\n"))
      helpers.sleep(0.1)
      c:close()
      -- Served meanwhile, then again after the abandoned callout ended.
      local t0 = gettime()
      assert.equal("/meanwhile", echoed(callout({ url = echo.url("/meanwhile") })).path)
      assert.truthy(gettime() - t0 < 0.5)
      helpers.sleep(1.0)
      assert.equal("/later", echoed(callout({ url = echo.url("/later") })).path)
      assert.same(pids, gw.group_pids())
      assert.is_nil(gw.error_log():find("died", 1, true))
    end)
  end)

  describe("other contexts", function()
    it("runs a callout from a timer started in init_worker", function()
      local state = assert(helpers.wait_until(function()
        local res = gw.request({ path = "/timer" })
        return res and res.status == 200 and res.json.done and res.json
      end, 5))
      assert.equal(cjson.null, state.err)
      assert.equal(200, state.status)
      assert.equal(1, state.runs)
      local j = cjson.decode(state.body)
      assert.equal("/jwks", j.path)
      assert.equal("kid=1", j.query)
      assert.equal("timer", j.headers["x-from"])
    end)

    it("ships from the log phase, and raises in header_filter", function()
      local res = assert(gw.request({ path = "/shipped" }))
      assert.equal(200, res.status)
      assert.equal("shipped", res.body)
      assert.truthy(res.headers["x-httpc-error"]:find("tg.http.request: not available in phase header_filter", 1, true),
                    res.headers["x-httpc-error"])
      local state = assert(helpers.wait_until(function()
        local r = gw.request({ path = "/read-shipped" })
        return r and r.json and r.json.count >= 1 and r.json
      end, 5))
      assert.equal(cjson.null, state.err)
      assert.equal(200, state.status)
      local j = cjson.decode(state.body)
      assert.equal("POST", j.method)
      assert.equal("/logs", j.path)
      assert.same({ path = "/shipped", status = 200 }, cjson.decode(j.body))
    end)
  end)

  it("logged no unexpected errors", function()
    assert.equal("", unexpected_errors(gw.error_log(), {
      "tg%.http%.request: invalid header value",
      "tg%.http%.request: Content%-Length is set by the client",
    }))
  end)
end)

describe("tg.http.request at worker exit", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("tears down a pending callout when its request goes away", function()
    local echo = helpers.start_echo()
    local gw = helpers.start_gateway({
      plugins_path = { FIXTURES },
      shutdown_timeout_ms = 300,
      routes = {
        { name = "callout", paths = { "/callout" }, response = { status = 200, body = "x" },
          plugins = { ["httpc-callout"] = {} } },
      },
    })
    local c = assert(helpers.connect(gw.port))
    assert(c:send("GET /callout?" .. query({ url = echo.url("/"), ["h.X-Echo-Mode"] = "hang",
                                             timeout_ms = 20000 }) .. " HTTP/1.1\r\nHost: gw\r\n\r\n"))
    -- The callout reached the echo, which never answers.
    assert(helpers.wait_until(function() return echo.stats().requests == 1 end, 5))
    -- Graceful stop: the drain times out after 300 ms, the worker drops
    -- the request (its wait is cancelled) and frees the client, which
    -- closes the callout's connection; nothing may crash on the way.
    local t0 = gettime()
    assert.is_true(gw.stop("TERM", 5))
    assert.truthy(gettime() - t0 < 4)
    local log = gw.error_log()
    assert.truthy(log:find("drain timeout: closing 1 connection", 1, true), log)
    assert.truthy(log:find("worker 0%[%d+%]: exiting"), log)
    assert.truthy(log:find("master%[%d+%]: stopped"), log)
    assert.is_nil(log:find("died on signal", 1, true), log)
    assert.equal("", unexpected_errors(log))
    c:close()
  end)
end)
