-- 00-echo_spec.lua: tg-echo, the upstream every other spec trusts, tested
-- through spec/helpers.lua over real sockets. If this file fails, fix the
-- fixture before believing any gateway spec.

local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson.safe"

local function count(s, needle)
  local n, i = 0, 1
  for _ = 1, 100000 do
    local a, b = s:find(needle, i, true)
    if not a then
      break
    end
    n, i = n + 1, b + 1
  end
  return n
end

describe("tg-echo", function()
  local echo, port

  setup(function()
    echo = helpers.start_echo()
    port = echo.port
  end)

  teardown(function()
    helpers.stop_all()
  end)

  describe("echo document", function()
    it("describes the request", function()
      local res = assert(helpers.request(port, {
        path = "/x?a=1&b=2",
        headers = { { "X-Multi", "one" }, { "X-Other", "o" }, { "x-multi", "two" } },
      }))
      assert.equal(200, res.status)
      assert.equal("application/json", res.headers["content-type"])
      assert.equal(#res.body, tonumber(res.headers["content-length"]))
      local j = assert(res.json)
      assert.equal("GET", j.method)
      assert.equal("/x", j.path)
      assert.equal("a=1&b=2", j.query)
      assert.equal("/x?a=1&b=2", j.uri)
      assert.equal("1.1", j.http_version)
      assert.equal("localhost", j.headers.host)
      assert.equal("one, two", j.headers["x-multi"])
      assert.equal("o", j.headers["x-other"])
      assert.same({ { "Host", "localhost" }, { "X-Multi", "one" }, { "X-Other", "o" },
                    { "x-multi", "two" } }, j.header_list)
      assert.equal("", j.body)
      assert.equal(0, j.body_length)
      assert.is_false(j.chunked_request)
      assert.equal("127.0.0.1", j.remote_addr)
      assert.is_number(j.remote_port)
      assert.equal(1, j.connection_requests)
    end)

    it("reports query as null without '?' and as \"\" with an empty one", function()
      local res = assert(helpers.request(port, { path = "/plain" }))
      assert.equal(cjson.null, res.json.query)
      assert.equal("/plain", res.json.path)
      res = assert(helpers.request(port, { path = "/q?" }))
      assert.equal("", res.json.query)
    end)

    it("echoes bodies byte-exact through JSON escaping", function()
      local body = 'quote" backslash\\ nl\n cr\r tab\t ctl\1\31 del\127 utf8 h\195\169 \226\130\172'
      local res = assert(helpers.request(port, { method = "POST", path = "/b", body = body }))
      assert.equal(body, res.json.body)
      assert.equal(#body, res.json.body_length)
      assert.equal("POST", res.json.method)
    end)

    it("escapes invalid UTF-8 as \\u00XX and keeps the exact length", function()
      local res = assert(helpers.request(port, { method = "POST", body = "a\255b\192" }))
      assert.truthy(res.body:find('"a\\u00ffb\\u00c0"', 1, true))
      assert.equal(4, res.json.body_length)
    end)

    it("echoes a large body", function()
      local body = ("0123456789abcdef"):rep(65536)     -- 1 MiB
      local res = assert(helpers.request(port, { method = "PUT", body = body, timeout = 10 }))
      assert.equal(#body, res.json.body_length)
      assert.equal(body, res.json.body)
    end)

    it("decodes a chunked request body and reports trailers", function()
      local conn = assert(helpers.connect(port))
      assert(conn:send("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "5\r\nhello\r\n"))
      helpers.sleep(0.05)              -- the body arrives in two reads
      assert(conn:send("6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"))
      local res = assert(conn:read_response())
      conn:close()
      assert.equal("hello world", res.json.body)
      assert.equal(11, res.json.body_length)
      assert.is_true(res.json.chunked_request)
      assert.same({ { "X-Trailer", "t" } }, res.json.trailer_list)
      assert.is_nil(res.json.headers["x-trailer"])
    end)

    it("answers HEAD with Content-Length and no body", function()
      local conn = assert(helpers.connect(port))
      local res = assert(conn:request({ method = "HEAD", path = "/h" }))
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.truthy(tonumber(res.headers["content-length"]) > 0)
      -- Nothing but the head was sent: the next response parses cleanly.
      res = assert(conn:request({ path = "/after" }))
      assert.equal("/after", res.json.path)
      conn:close()
    end)

    it("speaks HTTP/1.0 with and without keep-alive", function()
      local res = assert(helpers.request(port, { version = "1.0" }))
      assert.equal("close", res.headers.connection)
      assert.equal("1.0", res.json.http_version)
      local conn = assert(helpers.connect(port))
      res = assert(conn:request({ version = "1.0", headers = { Connection = "keep-alive" } }))
      assert.equal("keep-alive", res.headers.connection)
      res = assert(conn:request({ version = "1.0", headers = { Connection = "keep-alive" } }))
      assert.equal(2, res.json.connection_requests)
      conn:close()
    end)

    it("answers unparsable requests with 400 and closes", function()
      local data, closed = helpers.raw(port, "GARBAGE\r\n\r\n")
      assert.truthy(data:find("^HTTP/1.1 400 "))
      assert.is_true(closed)
    end)
  end)

  describe("control headers", function()
    it("X-Echo-Status sets the status and keeps the JSON body", function()
      local res = assert(helpers.request(port, { headers = { ["X-Echo-Status"] = "503" } }))
      assert.equal(503, res.status)
      assert.equal("Service Unavailable", res.reason)
      assert.equal("GET", res.json.method)
    end)

    it("X-Echo-Status 204 and 304 have no body", function()
      for _, st in ipairs({ 204, 304 }) do
        local conn = assert(helpers.connect(port))
        local res = assert(conn:request({ headers = { ["X-Echo-Status"] = st } }))
        assert.equal(st, res.status)
        assert.equal("", res.body)
        assert.is_nil(res.headers["content-length"])
        assert.is_nil(res.headers["transfer-encoding"])
        -- No stray body bytes: the connection carries a clean next response.
        res = assert(conn:request({ path = "/next" }))
        assert.equal("/next", res.json.path)
        conn:close()
      end
    end)

    it("X-Echo-Delay-Ms delays without blocking other connections", function()
      local slow = assert(helpers.connect(port))
      local t0 = socket.gettime()
      assert(slow:send(helpers.encode_request({ path = "/slow", headers = { ["X-Echo-Delay-Ms"] = 400 } })))
      local fast = assert(helpers.request(port, { path = "/fast" }))
      assert.equal("/fast", fast.json.path)
      assert.truthy(socket.gettime() - t0 < 0.3, "fast request waited for the slow one")
      local res = assert(slow:read_response())
      assert.truthy(socket.gettime() - t0 >= 0.39)
      assert.equal("/slow", res.json.path)
      slow:close()
    end)

    it("X-Echo-Chunked sends the JSON body in N chunks", function()
      local res = assert(helpers.request(port, { path = "/ch", headers = { ["X-Echo-Chunked"] = 4 } }))
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.equal(4, res.chunks)
      assert.equal("/ch", res.json.path)
    end)

    it("X-Echo-Body-Size sends exactly N bytes of 'x'", function()
      local res = assert(helpers.request(port, { headers = { ["X-Echo-Body-Size"] = 1000 } }))
      assert.equal("text/plain", res.headers["content-type"])
      assert.equal("1000", res.headers["content-length"])
      assert.equal(("x"):rep(1000), res.body)
      res = assert(helpers.request(port, { headers = { ["X-Echo-Body-Size"] = 0 } }))
      assert.equal("0", res.headers["content-length"])
      assert.equal("", res.body)
    end)

    it("X-Echo-Body-Size streams large bodies", function()
      local n = 8 * 1024 * 1024 + 3
      local res = assert(helpers.request(port, { headers = { ["X-Echo-Body-Size"] = n }, timeout = 20 }))
      assert.equal(n, #res.body)
      assert.is_nil(res.body:find("[^x]"))
    end)

    it("X-Echo-Body-Size combines with X-Echo-Chunked", function()
      local res = assert(helpers.request(port, {
        headers = { ["X-Echo-Body-Size"] = 10, ["X-Echo-Chunked"] = 3 } }))
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.equal(3, res.chunks)
      assert.equal(("x"):rep(10), res.body)
      -- More pieces than bytes: empty pieces are skipped, never a premature 0-chunk.
      res = assert(helpers.request(port, {
        headers = { ["X-Echo-Body-Size"] = 2, ["X-Echo-Chunked"] = 5 } }))
      assert.equal(2, res.chunks)
      assert.equal("xx", res.body)
    end)

    it("X-Echo-Response-Header adds response headers (repeatable)", function()
      local res = assert(helpers.request(port, { headers = {
        { "X-Echo-Response-Header", "X-One: 1" },
        { "X-Echo-Response-Header", "Set-Cookie: a=1" },
        { "X-Echo-Response-Header", "Set-Cookie: b=2" },
      } }))
      assert.equal("1", res.headers["x-one"])
      assert.equal("a=1, b=2", res.headers["set-cookie"])
    end)

    it("X-Echo-Response-Header can replace Content-Type", function()
      local res = assert(helpers.request(port, { headers = {
        ["X-Echo-Response-Header"] = "Content-Type: text/html" } }))
      assert.equal("text/html", res.headers["content-type"])
    end)

    it("X-Echo-Close sends Connection: close and closes", function()
      local conn = assert(helpers.connect(port))
      local res = assert(conn:request({ headers = { ["X-Echo-Close"] = 1 } }))
      assert.equal("close", res.headers.connection)
      assert.is_true(conn.closed)
      -- The server side really closed: a raw read sees EOF.
      local data, closed = helpers.raw(port, helpers.encode_request({ headers = { ["X-Echo-Close"] = 1 } }))
      assert.truthy(data:find("^HTTP/1.1 200 "))
      assert.is_true(closed)
    end)
  end)

  describe("X-Echo-Mode", function()
    local function req(mode)
      return helpers.encode_request({ headers = { ["X-Echo-Mode"] = mode } })
    end

    it("garbage writes a non-HTTP line and closes", function()
      local data, closed = helpers.raw(port, req("garbage"))
      assert.equal("NOT HTTP AT ALL\r\n\r\n", data)
      assert.is_true(closed)
    end)

    it("reset closes with RST and no response", function()
      local data, closed = helpers.raw(port, req("reset"))
      assert.equal("", data)
      assert.is_true(closed)
      local res, err = helpers.request(port, { headers = { ["X-Echo-Mode"] = "reset" } })
      assert.is_nil(res)
      assert.truthy(err == "closed" or err:find("reset"), err)
    end)

    it("close-early promises 100 bytes, sends 10, closes", function()
      local data, closed = helpers.raw(port, req("close-early"))
      assert.truthy(data:find("Content-Length: 100\r\n", 1, true))
      assert.equal("0123456789", data:match("\r\n\r\n(.*)$"))
      assert.is_true(closed)
      local res, err = helpers.request(port, { headers = { ["X-Echo-Mode"] = "close-early" } })
      assert.is_nil(res)
      assert.equal("closed", err)
    end)

    it("no-length sends the body without framing, then closes", function()
      local data, closed = helpers.raw(port, req("no-length"))
      assert.is_true(closed)
      local head, body = data:match("^(.-\r\n\r\n)(.*)$")
      assert.falsy(head:lower():find("content-length", 1, true))
      assert.falsy(head:lower():find("transfer-encoding", 1, true))
      assert.truthy(cjson.decode(body))
      local res = assert(helpers.request(port, { headers = { ["X-Echo-Mode"] = "no-length" } }))
      assert.is_true(res.until_close)
      assert.equal("GET", res.json.method)
    end)

    it("hang never answers and keeps the connection open", function()
      local data, closed = helpers.raw(port, req("hang"), { timeout = 0.5 })
      assert.equal("", data)
      assert.is_false(closed)
      local res, err = helpers.request(port, { headers = { ["X-Echo-Mode"] = "hang" }, timeout = 0.3 })
      assert.is_nil(res)
      assert.equal("timeout", err)
    end)

    it("slow-body:N sends the head, then one byte every N ms", function()
      local conn = assert(helpers.connect(port))
      assert(conn:send(helpers.encode_request({ headers = {
        ["X-Echo-Mode"] = "slow-body:50", ["X-Echo-Body-Size"] = 10 } })))
      local t0 = socket.gettime()
      local head = assert(conn:receive_until("\r\n\r\n", 2))
      assert.truthy(head:find("Content-Length: 10\r\n", 1, true))
      assert.truthy(socket.gettime() - t0 < 0.4, "the head should not wait for the body")
      local body = assert(conn:receive_until(10, 3))
      assert.equal(("x"):rep(10), body)
      assert.truthy(socket.gettime() - t0 >= 0.45)
      -- The connection stays usable afterwards.
      local res = assert(conn:request({ path = "/after-slow" }))
      assert.equal("/after-slow", res.json.path)
      conn:close()
    end)
  end)

  describe("connections", function()
    it("reuses a keep-alive connection", function()
      local conn = assert(helpers.connect(port))
      local ports = {}
      for i = 1, 3 do
        local res = assert(conn:request({ path = "/k" .. i }))
        assert.equal(i, res.json.connection_requests)
        ports[i] = res.json.remote_port
      end
      assert.equal(ports[1], ports[3])
      conn:close()
    end)

    it("answers two pipelined requests in one write, in order", function()
      local conn = assert(helpers.connect(port))
      -- The first is delayed: the second must still come back second.
      assert(conn:send(
        helpers.encode_request({ path = "/p1", headers = { ["X-Echo-Delay-Ms"] = 150 } }) ..
        helpers.encode_request({ method = "POST", path = "/p2", body = "b2" })))
      local r1 = assert(conn:read_response())
      local r2 = assert(conn:read_response())
      assert.equal("/p1", r1.json.path)
      assert.equal(1, r1.json.connection_requests)
      assert.equal("/p2", r2.json.path)
      assert.equal("b2", r2.json.body)
      assert.equal(2, r2.json.connection_requests)
      conn:close()
    end)

    it("answers 300 pipelined requests sent in one write", function()
      local conn = assert(helpers.connect(port, { timeout = 10 }))
      local reqs = {}
      for i = 1, 300 do
        reqs[i] = helpers.encode_request({ path = "/pp" .. i,
          headers = i % 50 == 0 and { ["X-Echo-Chunked"] = 2 } or nil })
      end
      assert(conn:send(table.concat(reqs)))
      for i = 1, 300 do
        local res = assert(conn:read_response())
        assert.equal("/pp" .. i, res.json.path)
        assert.equal(i, res.json.connection_requests)
      end
      conn:close()
    end)

    it("parses a request fed one byte at a time", function()
      local conn = assert(helpers.connect(port))
      local bytes = "POST /bytes?x=1 HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n"
        .. "X-Long: " .. ("v"):rep(40) .. "\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
      for i = 1, #bytes do
        assert(conn:send(bytes:sub(i, i)))
        if i % 16 == 0 then
          helpers.sleep(0.001)
        end
      end
      local res = assert(conn:read_response())
      assert.equal("/bytes", res.json.path)
      assert.equal(("v"):rep(40), res.json.headers["x-long"])
      assert.equal("abc", res.json.body)
      conn:close()
    end)

    it("handles many concurrent connections", function()
      local conns = {}
      for i = 1, 200 do
        conns[i] = assert(helpers.connect(port))
        assert(conns[i]:send(helpers.encode_request({ path = "/m" .. i })))
      end
      for i = 1, 200 do
        local res = assert(conns[i]:read_response())
        assert.equal("/m" .. i, res.json.path)
        conns[i]:close()
      end
    end)
  end)

  describe("/__stats", function()
    it("counts requests and connections, not itself", function()
      assert(echo.reset_stats())
      local s = assert(echo.stats())
      assert.same(0, s.requests)
      assert.same(0, s.connections)
      assert(helpers.request(port, { path = "/one" }))
      local conn = assert(helpers.connect(port))
      assert(conn:request({ path = "/two" }))
      assert(conn:request({ path = "/three" }))
      -- /__stats on a connection that already carried a request counts
      -- that connection, not the stats request.
      local res = assert(conn:request({ path = "/__stats" }))
      assert.equal(3, res.json.requests)
      assert.equal(2, res.json.connections)
      conn:close()
      s = assert(echo.stats())
      assert.equal(3, s.requests)
      assert.equal(2, s.connections)
    end)

    it("counts connections that never sent a request", function()
      assert(echo.reset_stats())
      local c = assert(helpers.connect(port))
      assert(helpers.wait_until(function() return echo.stats().connections == 1 end, 2))
      c:close()
      assert.equal(0, echo.stats().requests)
    end)

    it("proves nothing reached the upstream", function()
      assert(echo.reset_stats())
      assert.same({ requests = 0, connections = 0 },
                  { requests = echo.stats().requests, connections = echo.stats().connections })
    end)
  end)

  describe("Expect: 100-continue", function()
    it("sends 100 Continue before reading the body", function()
      local conn = assert(helpers.connect(port))
      assert(conn:send("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"))
      assert.equal("HTTP/1.1 100 Continue\r\n\r\n", conn:receive_until("\r\n\r\n", 2))
      assert(conn:send("hello"))
      local res = assert(conn:read_response())
      assert.equal(200, res.status)
      assert.equal("hello", res.json.body)
      conn:close()
    end)

    it("works through the helper's wait_continue", function()
      local res = assert(helpers.request(port, { method = "POST", body = "abc", wait_continue = true,
        headers = { Expect = "100-continue" } }))
      assert.equal(100, res.interim[1].status)
      assert.equal("abc", res.json.body)
    end)

    it("X-Echo-Expect-Reject: 417 answers without reading the body, then closes", function()
      assert(echo.reset_stats())
      local conn = assert(helpers.connect(port))
      assert(conn:send("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        .. "X-Echo-Expect-Reject: 417\r\n\r\n"))
      local res = assert(conn:read_response())
      assert.equal(417, res.status)
      assert.same({}, res.interim)
      assert.equal("close", res.headers.connection)
      assert.equal(0, res.json.body_length)
      local _, closed = conn:read_all(2)
      assert.is_true(closed)
      conn:close()
      assert.equal(1, echo.stats().requests)
    end)
  end)

  describe("websocket upgrade", function()
    it("answers 101 and echoes raw bytes", function()
      local conn = assert(helpers.raw_conn(port))
      assert(conn:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
      local res = assert(conn:read_response())
      assert.equal(101, res.status)
      assert.equal("websocket", res.headers.upgrade)
      assert.equal("Upgrade", res.headers.connection)
      -- The RFC 6455 example key and its accept value.
      assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", res.headers["sec-websocket-accept"])
      assert(conn:send("hello"))
      assert.equal("hello", conn:receive_until(5, 2))
      local bin = "\0\1\2\255\254 GET / HTTP/1.1\r\n\r\n"
      assert(conn:send(bin))
      assert.equal(bin, conn:receive_until(#bin, 2))
      conn:shutdown()
      local rest, closed = conn:read_all(2)
      assert.equal("", rest)
      assert.is_true(closed)
      conn:close()
    end)

    it("echoes bytes sent together with the upgrade request", function()
      local conn = assert(helpers.raw_conn(port))
      assert(conn:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nearly"))
      local res = assert(conn:read_response())
      assert.equal(101, res.status)
      assert.equal("early", conn:receive_until(5, 2))
      conn:close()
    end)

    it("ignores Upgrade without Connection: Upgrade", function()
      local res = assert(helpers.request(port, { headers = { Upgrade = "websocket" } }))
      assert.equal(200, res.status)
      assert.equal("websocket", res.json.headers.upgrade)
    end)
  end)
end)

describe("tg-echo --fixed-body", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("answers every request with the same N-byte body", function()
    local e = helpers.start_echo({ fixed_body = 100 })
    local conn = assert(helpers.connect(e.port))
    for _ = 1, 3 do
      local res = assert(conn:request({ method = "POST", path = "/anything", body = "ignored" }))
      assert.equal(200, res.status)
      assert.equal("100", res.headers["content-length"])
      assert.equal(100, #res.body)
      assert.truthy(res.json)
    end
    conn:close()
    local res = assert(helpers.request(e.port, { version = "1.0", headers = { Connection = "keep-alive" } }))
    assert.equal("keep-alive", res.headers.connection)
    res = assert(helpers.request(e.port, { headers = { Connection = "close" } }))
    assert.equal("close", res.headers.connection)
    -- Pipelined requests get one fixed response each.
    local data = helpers.raw(e.port, helpers.encode_request({}) .. helpers.encode_request({})
      .. helpers.encode_request({ headers = { Connection = "close" } }))
    assert.equal(3, count(data, "HTTP/1.1 200 OK"))
    assert.truthy(e.stop())
  end)

  it("handles tiny fixed bodies", function()
    local e = helpers.start_echo({ fixed_body = 3 })
    local res = assert(helpers.request(e.port, {}))
    assert.equal("xxx", res.body)
    e.stop()
  end)
end)

describe("tg-echo process", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("exits cleanly on SIGTERM and on SIGINT", function()
    local e = helpers.start_echo()
    assert.is_true(helpers.pid_alive(e.pid))
    assert.is_true(e.stop())
    assert.is_false(helpers.pid_alive(e.pid))
    e = helpers.start_echo()
    os.execute("kill -INT " .. e.pid)
    assert(helpers.wait_until(function() return not helpers.pid_alive(e.pid) end, 3))
  end)

  it("listens on a given port", function()
    local p = helpers.free_port()
    local e = helpers.start_echo({ port = p })
    assert.equal(p, e.port)
    assert.equal(200, assert(helpers.request(p, {})).status)
    e.stop()
  end)

  it("listens on ::1", function()
    local probe = socket.tcp6()
    local ok = probe and probe:bind("::1", 0)
    if probe then
      probe:close()
    end
    if not ok then
      pending("no IPv6 loopback here")
      return
    end
    local e = helpers.start_echo({ host = "::1" })
    local res = assert(helpers.request(e.port, { addr = "::1" }))
    assert.equal(200, res.status)
    assert.equal("::1", res.json.remote_addr)
    e.stop()
  end)
end)

describe("helpers.yaml", function()
  it("writes deterministic block YAML with quoted strings", function()
    local y = helpers.yaml({
      listen = { "127.0.0.1:8000" },
      admin = { listen = "127.0.0.1:8001" },
      routes = { { name = "r1", paths = { "/a" }, plugins = {}, strip = true, n = 1.5 } },
      empty = helpers.array(),
      nothing = helpers.null,
      quoted = 'a "b"\n\\c',
    })
    assert.equal(table.concat({
      "admin:",
      '  listen: "127.0.0.1:8001"',
      "empty: []",
      "listen:",
      '  - "127.0.0.1:8000"',
      "nothing: null",
      'quoted: "a \\"b\\"\\n\\\\c"',
      "routes:",
      '  - "n": 1.5',
      '    name: "r1"',
      "    paths:",
      '      - "/a"',
      "    plugins: {}",
      "    strip: true",
      "",
    }, "\n"), y)
  end)

  it("honours __order", function()
    local y = helpers.yaml({ __order = { "z", "a" }, a = 1, z = 2, m = 3 })
    assert.equal("z: 2\na: 1\nm: 3\n", y)
  end)

  it("parses back to the same data when lyaml is available", function()
    local ok, lyaml = pcall(require, "lyaml")
    if not ok then
      pending("lyaml not installed")
      return
    end
    local t = { a = { { b = { 1, 2 }, c = "x\ty" }, { { "nested" } } }, d = false }
    assert.same(t, lyaml.load(helpers.yaml(t)))
  end)
end)
