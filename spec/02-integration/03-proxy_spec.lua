-- spec/02-integration/03-proxy_spec.lua: the streaming reverse proxy, end to
-- end: the real tollgate in front of the real tg-echo upstream, over real
-- sockets.
--
-- Covered: request bodies (Content-Length, chunked, empty, slow, several MiB)
-- arriving intact and correctly framed; response bodies (Content-Length,
-- chunked, close-delimited, several MB, read slowly, HEAD/204/304) re-framed
-- for the client's HTTP version; downstream keep-alive, HTTP/1.0, Connection:
-- close, pipelining and max_keepalive_requests; the upstream keep-alive pool
-- (reuse, a closing upstream, keepalive: 0); header rewriting both ways
-- (hop-by-hop, X-Forwarded-*, Host); Expect: 100-continue; WebSocket
-- tunnelling; clients that go away mid-exchange; an upstream response with
-- ambiguous framing; an IPv6 listener.
--
-- One test needs an upstream that sends a burst and then trickles, which
-- tg-echo cannot do; it uses a bare LuaSocket listener as the upstream.
--
-- Each test asserts what the client got AND what the upstream received (the
-- echo's JSON), and the gateway's error log is checked for unexpected
-- [error]/[crit] lines. Bodies are deterministic ASCII so a lost or
-- reordered byte shows up both in the length and in the checksum.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"
local socket = require "socket"

local fmt, concat = string.format, table.concat

local MiB = 1024 * 1024
local MAX_BODY = 6 * MiB   -- the gateway's max_body_bytes: 5 MiB fits, 7 MB does not

-- n bytes of ASCII in numbered 72-byte lines: every offset is distinct
-- enough that a dropped, duplicated or swapped block changes the checksum.
local function pattern(n)
  local parts, len, i = {}, 0, 0
  while len < n do
    local line = fmt("%08x:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789\n", i)
    parts[#parts + 1] = line
    len = len + #line
    i = i + 1
  end
  return concat(parts):sub(1, n)
end

-- Adler-32, enough to tell two multi-megabyte bodies apart in a message.
local function adler32(s)
  local a, b = 1, 0
  local n = #s
  for i = 1, n, 4096 do
    local bytes = { s:byte(i, math.min(i + 4095, n)) }
    for j = 1, #bytes do
      a = (a + bytes[j]) % 65521
      b = (b + a) % 65521
    end
  end
  return b * 65536 + a
end

local function count(s, sub)
  local n, from = 0, 1
  for _ = 1, 100000 do
    local i = s:find(sub, from, true)
    if not i then
      break
    end
    n = n + 1
    from = i + #sub
  end
  return n
end

-- The [error] / [crit] / [alert] lines of a gateway's error log, joined.
local function bad_log_lines(gw)
  local bad = {}
  for line in gw.error_log():gmatch("[^\n]+") do
    if line:find("%[error%]") or line:find("%[crit%]") or line:find("%[alert%]")
       or line:find("%[emerg%]") then
      bad[#bad + 1] = line
    end
  end
  return concat(bad, "\n")
end

local function assert_clean_log(gw)
  assert.equal("", bad_log_lines(gw))
end

-- The header names (lowercased) of a header_list, as a set.
local function names_of(list)
  local set = {}
  for _, h in ipairs(list) do
    set[h[1]:lower()] = (set[h[1]:lower()] or 0) + 1
  end
  return set
end

-- Values of every `name` header in a header_list, in order.
local function values_of(list, name)
  local out = {}
  for _, h in ipairs(list) do
    if h[1]:lower() == name then
      out[#out + 1] = h[2]
    end
  end
  return out
end

-- Upstream connections tg-echo has open. Its active_connections counts
-- the connection asking for /__stats too, hence the - 1.
local function upstream_open(e)
  local s = assert(e.stats())
  return s.active_connections - 1
end

local function ipv6_loopback()
  local probe = socket.tcp6()
  local ok = probe and probe:bind("::1", 0)
  if probe then
    probe:close()
  end
  return ok and true or false
end

describe("proxy", function()
  local echo, echo_pool, echo_nopool, echo_kato, echo_ws, echo_ws2, gw

  lazy_setup(function()
    echo = helpers.start_echo()
    echo_pool = helpers.start_echo()
    echo_nopool = helpers.start_echo()
    echo_kato = helpers.start_echo()
    echo_ws = helpers.start_echo()
    echo_ws2 = helpers.start_echo()   -- stopped by a test
    gw = helpers.start_gateway({
      limits = { max_body_bytes = MAX_BODY },
      upstreams = {
        echo = { targets = { { url = echo.url() } } },
        pooled = { targets = { { url = echo_pool.url() } }, keepalive = 4 },
        nopool = { targets = { { url = echo_nopool.url() } }, keepalive = 0 },
        ws = { targets = { { url = echo_ws.url() } } },
        kareq = { targets = { { url = echo.url() } }, keepalive_requests = 3 },
        ws2 = { targets = { { url = echo_ws2.url() } }, retries = 0 },
        kato = { targets = { { url = echo_kato.url() } }, keepalive_timeout_ms = 300 },
      },
      routes = {
        { name = "api", paths = { "/api" }, upstream = "echo" },
        { name = "target-host", paths = { "/th" }, upstream = "echo", preserve_host = false },
        { name = "pooled", paths = { "/pooled" }, upstream = "pooled" },
        { name = "nopool", paths = { "/nopool" }, upstream = "nopool" },
        { name = "ws", paths = { "/ws" }, upstream = "ws" },
        { name = "kareq", paths = { "/kareq" }, upstream = "kareq" },
        { name = "ws2", paths = { "/ws2" }, upstream = "ws2" },
        { name = "kato", paths = { "/kato" }, upstream = "kato" },
      },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  ----------------------------------------------------------------------------
  describe("request bodies", function()
    it("forwards a small Content-Length body intact", function()
      local res = assert(gw.request({ method = "POST", path = "/api/small",
        headers = { ["Content-Type"] = "text/plain" }, body = "hello, upstream" }))
      assert.equal(200, res.status)
      assert.equal("POST", res.json.method)
      assert.equal("/api/small", res.json.path)
      assert.equal("hello, upstream", res.json.body)
      assert.equal(15, res.json.body_length)
      assert.equal("15", res.json.headers["content-length"])
      assert.is_false(res.json.chunked_request)
      assert.is_nil(res.json.headers["transfer-encoding"])
    end)

    for _, size in ipairs({ 1 * MiB, 5 * MiB }) do
      it(fmt("forwards a %d MiB Content-Length body intact", size / MiB), function()
        local body = pattern(size)
        local res = assert(gw.request({ method = "PUT", path = "/api/big", body = body,
          headers = { ["Content-Type"] = "text/plain" }, timeout = 20 }))
        assert.equal(200, res.status)
        assert.equal(size, res.json.body_length)
        assert.equal(tostring(size), res.json.headers["content-length"])
        assert.is_false(res.json.chunked_request)
        assert.equal(adler32(body), adler32(res.json.body))
        assert.is_true(res.json.body == body, "body differs")
        assert_clean_log(gw)
      end)
    end

    it("forwards a chunked body (several chunks, extensions, trailer) as chunked", function()
      local conn = assert(helpers.raw_conn(gw.port))
      local pieces = {
        "POST /api/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
          .. "Content-Type: text/plain\r\n\r\n",
        "5;ext=1\r\nhello\r\n",
        "1;name=\"quoted value\"\r\n,\r\n",
        "6\r\n world\r\n10\r\n",
        "0123456789abcdef\r\n",
        "0\r\nX-Trailer: dropped\r\n\r\n",
      }
      for i, p in ipairs(pieces) do
        assert(conn:send(p))
        if i > 1 then
          helpers.sleep(0.05)
        end
      end
      local res = assert(conn:read_response())
      conn:close()
      assert.equal(200, res.status)
      assert.equal("hello, world0123456789abcdef", res.json.body)
      assert.equal(28, res.json.body_length)
      -- README: chunked is forwarded as chunked, re-framed by the gateway.
      assert.is_true(res.json.chunked_request)
      assert.equal("chunked", res.json.headers["transfer-encoding"])
      assert.is_nil(res.json.headers["content-length"])
      -- Trailers are validated and dropped, never forwarded.
      assert.same({}, res.json.trailer_list)
      assert.is_nil(res.json.headers["x-trailer"])
      assert_clean_log(gw)
    end)

    it("forwards a 1 MiB chunked body in 64 KiB chunks intact", function()
      local body = pattern(MiB)
      local parts = {}
      for i = 1, #body, 65536 do
        local piece = body:sub(i, i + 65535)
        parts[#parts + 1] = fmt("%x\r\n%s\r\n", #piece, piece)
      end
      parts[#parts + 1] = "0\r\n\r\n"
      local res = assert(gw.request({ method = "POST", path = "/api/chunked-big", timeout = 20,
        headers = { ["Transfer-Encoding"] = "chunked", ["Content-Type"] = "text/plain" },
        body = concat(parts) }))
      assert.equal(200, res.status)
      assert.is_true(res.json.chunked_request)
      assert.equal(MiB, res.json.body_length)
      assert.equal(adler32(body), adler32(res.json.body))
      assert.is_true(res.json.body == body, "body differs")
    end)

    it("forwards an empty POST body with Content-Length: 0", function()
      local res = assert(gw.request({ method = "POST", path = "/api/empty", body = "" }))
      assert.equal(200, res.status)
      assert.equal("POST", res.json.method)
      assert.equal("", res.json.body)
      assert.equal(0, res.json.body_length)
      assert.equal("0", res.json.headers["content-length"])
      assert.is_false(res.json.chunked_request)
    end)

    it("forwards a POST without any body framing as bodyless", function()
      local res = assert(gw.request({ method = "POST", path = "/api/nobody" }))
      assert.equal(200, res.status)
      assert.equal(0, res.json.body_length)
      assert.is_nil(res.json.headers["transfer-encoding"])
      assert.is_false(res.json.chunked_request)
    end)

    it("forwards a body that arrives in pieces with pauses", function()
      local body = pattern(30000)
      local head = "POST /api/slow HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        .. "Content-Length: " .. #body .. "\r\n\r\n"
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send(head))
      for i = 1, #body, 7000 do
        helpers.sleep(0.1)
        assert(conn:send(body:sub(i, i + 6999)))
      end
      local res = assert(conn:read_response({ timeout = 5 }))
      conn:close()
      assert.equal(200, res.status)
      assert.equal(#body, res.json.body_length)
      assert.is_true(res.json.body == body, "body differs")
    end)

    it("stops a chunked body at max_body_bytes with 413 and closes", function()
      local before = upstream_open(echo)
      local conn = assert(helpers.raw_conn(gw.port, { timeout = 10 }))
      assert(conn:send("POST /api/chunked-over HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"))
      local piece = fmt("%x\r\n%s\r\n", MiB, ("z"):rep(MiB))
      for _ = 1, 7 do
        if not conn:send(piece) then
          break      -- the gateway already answered and closed
        end
      end
      local res = assert(conn:read_response({ timeout = 5 }))
      assert.equal(413, res.status)
      assert.same({ error = "Content Too Large" }, res.json)
      local _, closed = conn:read_all(3)
      assert.is_true(closed)
      conn:close()
      -- The upstream connection that carried the partial body is not pooled.
      assert(helpers.wait_until(function() return upstream_open(echo) <= before end, 3))
      local after = assert(gw.request({ method = "POST", path = "/api/after-over", body = "ok" }))
      assert.equal("ok", after.json.body)
      assert.equal("/api/after-over", after.json.path)
    end)

    it("forwards a chunked body whose chunk lines are split across reads", function()
      local res = assert(helpers.raw(gw.port, {
        "POST /api/split HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        "a", "\r", "\n0123", "456789\r", "\n", "0\r", "\n\r", "\n",
      }, { pause = 0.03, timeout = 3 }))
      local body = res:match("\r\n\r\n(.*)$")
      assert.truthy(res:find("^HTTP/1.1 200 "), res)
      local j = cjson.decode(body)
      assert.equal("0123456789", j and j.body)
    end)
  end)

  ----------------------------------------------------------------------------
  describe("response bodies", function()
    it("passes a Content-Length response through", function()
      local res = assert(gw.request({ path = "/api/cl", headers = { ["X-Echo-Body-Size"] = 1000 } }))
      assert.equal(200, res.status)
      assert.equal("1000", res.headers["content-length"])
      assert.is_nil(res.headers["transfer-encoding"])
      assert.equal(("x"):rep(1000), res.body)
      assert.equal("text/plain", res.headers["content-type"])
    end)

    it("passes an empty Content-Length: 0 response and keeps the connection", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/api/cl0", headers = { ["X-Echo-Body-Size"] = 0 } }))
      assert.equal(200, res.status)
      assert.equal("0", res.headers["content-length"])
      assert.equal("", res.body)
      res = assert(conn:request({ path = "/api/after-cl0" }))
      assert.equal("/api/after-cl0", res.json.path)
      conn:close()
    end)

    it("re-chunks a chunked upstream response to an HTTP/1.1 client", function()
      local res = assert(gw.request({ path = "/api/chunked-resp", headers = { ["X-Echo-Chunked"] = 5 } }))
      assert.equal(200, res.status)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.truthy(res.chunks >= 1)
      assert.equal("/api/chunked-resp", res.json.path)
      assert.equal("5", res.json.headers["x-echo-chunked"])
    end)

    it("streams a chunked 200 KB body intact", function()
      local res = assert(gw.request({ path = "/api/chunked-size",
        headers = { ["X-Echo-Chunked"] = 7, ["X-Echo-Body-Size"] = 200000 } }))
      assert.equal(200, res.status)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.equal(200000, #res.body)
      assert.equal(("x"):rep(200000), res.body)
    end)

    it("sends a chunked upstream response close-delimited to an HTTP/1.0 client", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ version = "1.0", path = "/api/chunked-10",
        headers = { ["X-Echo-Chunked"] = 3, Connection = "keep-alive" } }))
      assert.equal(200, res.status)
      assert.is_nil(res.headers["transfer-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.is_true(res.until_close)
      assert.equal("close", (res.headers.connection or ""):lower())
      assert.equal("/api/chunked-10", res.json.path)
      conn:close()
    end)

    it("chunks a no-length upstream response to an HTTP/1.1 client", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/api/nolen", headers = { ["X-Echo-Mode"] = "no-length" } }))
      assert.equal(200, res.status)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.is_nil(res.until_close)
      assert.equal("/api/nolen", res.json.path)
      -- The client connection survives the upstream's close.
      assert.is_false(conn.closed)
      res = assert(conn:request({ path = "/api/after-nolen" }))
      assert.equal("/api/after-nolen", res.json.path)
      conn:close()
      assert_clean_log(gw)
    end)

    it("sends a no-length upstream response close-delimited to an HTTP/1.0 client", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ version = "1.0", path = "/api/nolen10",
        headers = { ["X-Echo-Mode"] = "no-length", Connection = "keep-alive" } }))
      assert.equal(200, res.status)
      assert.is_nil(res.headers["transfer-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.is_true(res.until_close)
      assert.equal("close", (res.headers.connection or ""):lower())
      assert.equal("/api/nolen10", res.json.path)
      conn:close()
    end)

    it("passes a 5 MB response with the right length", function()
      local res = assert(gw.request({ path = "/api/big-resp", timeout = 20,
        headers = { ["X-Echo-Body-Size"] = 5000000 } }))
      assert.equal(200, res.status)
      assert.equal("5000000", res.headers["content-length"])
      assert.equal(5000000, #res.body)
      assert.is_nil(res.body:find("[^x]"), "body is not all 'x'")
    end)

    it("passes a 5 MB chunked response intact", function()
      local res = assert(gw.request({ path = "/api/big-chunked", timeout = 20,
        headers = { ["X-Echo-Body-Size"] = 5000000, ["X-Echo-Chunked"] = 9 } }))
      assert.equal(200, res.status)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.equal(5000000, #res.body)
      assert.is_nil(res.body:find("[^x]"), "body is not all 'x'")
    end)

    it("loses no bytes when the client reads a 5 MB response slowly", function()
      local size = 5000000
      local conn = assert(helpers.connect(gw.port, { timeout = 10 }))
      -- A fixed 64 KiB receive buffer (no autotuning) makes the client the
      -- bottleneck quickly. Much smaller ones make loopback TCP itself crawl
      -- (zero-window probes), which would test the kernel, not the gateway.
      pcall(conn.sock.setoption, conn.sock, "recv-buffer-size", 65536)
      assert(conn:send(helpers.encode_request({ path = "/api/slow-read",
        headers = { ["X-Echo-Body-Size"] = size } })))
      helpers.sleep(0.5)   -- let every buffer on the way fill up
      local head = assert(conn:receive_until("\r\n\r\n", 5))
      assert.truthy(head:find("^HTTP/1.1 200 "), head)
      assert.truthy(head:lower():find("\r\ncontent%-length: 5000000\r\n"), head)
      local parts, got = {}, 0
      for i = 1, 10000 do
        if got >= size then
          break
        end
        local piece, err = conn:receive_until(math.min(16384, size - got), 5)
        assert(piece, "read stopped after " .. got .. " bytes: " .. tostring(err))
        parts[#parts + 1] = piece
        got = got + #piece
        if i % 40 == 0 then
          helpers.sleep(0.03)
        end
        if i == 100 then
          helpers.sleep(0.5)  -- a long stall mid-body
        end
      end
      local body = concat(parts)
      assert.equal(size, #body)
      assert.is_nil(body:find("[^x]"), "body is not all 'x'")
      -- Nothing after the body, and the connection is still usable.
      local res = assert(conn:request({ path = "/api/after-slow" }))
      assert.equal("/api/after-slow", res.json.path)
      conn:close()
      assert_clean_log(gw)
    end)

    it("re-chunks a 3 MB chunked response to a slow reader intact", function()
      local size = 3000000
      local conn = assert(helpers.connect(gw.port, { timeout = 10 }))
      pcall(conn.sock.setoption, conn.sock, "recv-buffer-size", 65536)
      assert(conn:send(helpers.encode_request({ path = "/api/slow-chunked",
        headers = { ["X-Echo-Body-Size"] = size, ["X-Echo-Chunked"] = 40 } })))
      helpers.sleep(0.4)
      local res = assert(conn:read_response({ timeout = 10 }))
      assert.equal(200, res.status)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.equal(size, #res.body)
      assert.is_nil(res.body:find("[^x]"), "body is not all 'x'")
      conn:close()
    end)

    it("answers pipelined large responses in order to a client that reads late", function()
      local conn = assert(helpers.connect(gw.port, { timeout = 10 }))
      local sizes = { 1500000, 10, 1200000 }
      assert(conn:send(
        helpers.encode_request({ path = "/api/pl1", headers = { ["X-Echo-Body-Size"] = sizes[1] } })
        .. helpers.encode_request({ path = "/api/pl2", headers = { ["X-Echo-Body-Size"] = sizes[2] } })
        .. helpers.encode_request({ path = "/api/pl3", headers = { ["X-Echo-Body-Size"] = sizes[3],
                                                                 ["X-Echo-Chunked"] = 3 } })
        .. helpers.encode_request({ path = "/api/pl4" })))
      helpers.sleep(0.5)
      for i = 1, 3 do
        local res = assert(conn:read_response({ timeout = 10 }))
        assert.equal(200, res.status)
        assert.equal(sizes[i], #res.body)
        assert.is_nil(res.body:find("[^x]"), "body is not all 'x'")
      end
      local res = assert(conn:read_response())
      assert.equal("/api/pl4", res.json.path)
      conn:close()
    end)

    it("answers HEAD without a body and keeps the connection usable", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ method = "HEAD", path = "/api/head",
        headers = { ["X-Echo-Body-Size"] = 500 } }))
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.is_nil(res.headers["transfer-encoding"])
      -- Had body bytes followed the head, this response would be garbage.
      res = assert(conn:request({ path = "/api/after-head" }))
      assert.equal(200, res.status)
      assert.equal("/api/after-head", res.json.path)
      conn:close()
    end)

    it("HEAD on a chunked upstream gets no chunked framing", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ method = "HEAD", path = "/api/head-chunked",
        headers = { ["X-Echo-Chunked"] = 3 } }))
      assert.equal(200, res.status)
      res = assert(conn:request({ path = "/api/after-head-chunked" }))
      assert.equal("/api/after-head-chunked", res.json.path)
      conn:close()
    end)

    for _, status in ipairs({ 204, 304 }) do
      it(fmt("forwards a %d without a body and keeps the connection", status), function()
        local conn = assert(helpers.connect(gw.port))
        local res = assert(conn:request({ path = "/api/s" .. status,
          headers = { ["X-Echo-Status"] = status } }))
        assert.equal(status, res.status)
        assert.equal("", res.body)
        assert.is_nil(res.headers["transfer-encoding"])
        assert.is_nil(res.headers["content-length"])
        res = assert(conn:request({ path = "/api/after-" .. status }))
        assert.equal(200, res.status)
        assert.equal("/api/after-" .. status, res.json.path)
        conn:close()
      end)
    end

    it("passes upstream error statuses with their body", function()
      local res = assert(gw.request({ path = "/api/e503", headers = { ["X-Echo-Status"] = 503 } }))
      assert.equal(503, res.status)
      assert.equal(503, res.json.status)
      assert.equal("/api/e503", res.json.path)
    end)
  end)

  ----------------------------------------------------------------------------
  describe("downstream keep-alive", function()
    it("serves several requests on one client connection", function()
      local conn = assert(helpers.connect(gw.port))
      for i = 1, 5 do
        local res = assert(conn:request({ method = i % 2 == 0 and "POST" or "GET",
          path = "/api/ka" .. i, body = i % 2 == 0 and ("b" .. i) or nil }))
        assert.equal(200, res.status)
        assert.equal("/api/ka" .. i, res.json.path)
        assert.is_nil(res.headers.connection)
        assert.is_false(conn.closed)
      end
      conn:close()
    end)

    it("closes an HTTP/1.0 connection without keep-alive", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ version = "1.0", path = "/api/v10" }))
      assert.equal(200, res.status)
      assert.equal("/api/v10", res.json.path)
      -- The upstream is spoken to in HTTP/1.1 whatever the client speaks.
      assert.equal("1.1", res.json.http_version)
      assert.is_true(conn.closed)
      assert.not_equal("keep-alive", (res.headers.connection or ""):lower())
      local rest, closed = conn:read_all(2)
      assert.equal("", rest)
      assert.is_true(closed)
      conn:close()
    end)

    it("keeps an HTTP/1.0 connection with Connection: keep-alive", function()
      local conn = assert(helpers.connect(gw.port))
      for i = 1, 3 do
        local res = assert(conn:request({ version = "1.0", path = "/api/v10ka" .. i,
          headers = { Connection = "keep-alive" } }))
        assert.equal(200, res.status)
        assert.equal("keep-alive", (res.headers.connection or ""):lower())
        assert.equal("/api/v10ka" .. i, res.json.path)
        -- Connection is hop-by-hop: the upstream does not see it.
        assert.is_nil(res.json.headers.connection)
        assert.is_false(conn.closed)
      end
      conn:close()
    end)

    it("honours Connection: close", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/api/close", headers = { Connection = "close" } }))
      assert.equal(200, res.status)
      assert.equal("close", (res.headers.connection or ""):lower())
      assert.is_nil(res.json.headers.connection)
      local rest, closed = conn:read_all(2)
      assert.equal("", rest)
      assert.is_true(closed)
      conn:close()
    end)

    it("closes at once after Connection: close with nothing left to read, lingers otherwise", function()
      local function active()
        local res = assert(helpers.request(gw.admin_port, { path = "/status" }))
        return res.json.connections_active
      end
      -- The admin request that asks is a connection of the worker too.
      local base = 1
      assert(helpers.wait_until(function() return active() == base end, 3))
      -- Nothing more sent: the gateway's side is gone as soon as the
      -- response is out, while the client still holds its socket.
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/api/close", headers = { Connection = "close" } }))
      assert.equal(200, res.status)
      local _, closed = conn:read_all(2)
      assert.is_true(closed)
      assert.truthy(helpers.wait_until(function() return active() == base end, 0.5))
      conn:close()
      -- Bytes after the last request: the gateway half-closes and keeps
      -- reading (lingering close) so that they cannot reset the response.
      local c2 = assert(helpers.connect(gw.port))
      assert(c2:send(helpers.encode_request({ path = "/api/close", headers = { Connection = "close" } })
                     .. "GET /api/never HTTP/1.1\r\n"))
      res = assert(c2:read_response())
      assert.equal(200, res.status)
      _, closed = c2:read_all(2)
      assert.is_true(closed)
      assert.equal(base + 1, active())
      c2:close()
      assert.truthy(helpers.wait_until(function() return active() == base end, 3))
    end)

    it("ignores requests pipelined after Connection: close", function()
      assert(echo.reset_stats())
      local data, closed = helpers.raw(gw.port,
        helpers.encode_request({ path = "/api/last", headers = { Connection = "close" } })
        .. helpers.encode_request({ path = "/api/never" }), { timeout = 3 })
      assert.is_true(closed)
      assert.equal(1, count(data, "HTTP/1.1 "))
      assert.truthy(data:find("/api/last", 1, true))
      assert.is_nil(data:find("/api/never", 1, true))
      assert.equal(1, echo.stats().requests)
    end)

    it("answers 3 pipelined requests sent in one write, in order", function()
      assert(echo.reset_stats())
      local conn = assert(helpers.connect(gw.port))
      assert(conn:send(
        helpers.encode_request({ path = "/api/p1", headers = { ["X-Echo-Delay-Ms"] = 150 } })
        .. helpers.encode_request({ method = "POST", path = "/api/p2", body = "second" })
        .. helpers.encode_request({ path = "/api/p3", headers = { ["X-Echo-Chunked"] = 2 } })
        .. helpers.encode_request({ path = "/api/p4" })))
      local r1 = assert(conn:read_response())
      local r2 = assert(conn:read_response())
      local r3 = assert(conn:read_response())
      local r4 = assert(conn:read_response())
      assert.equal("/api/p1", r1.json.path)
      assert.equal("/api/p2", r2.json.path)
      assert.equal("second", r2.json.body)
      assert.equal("/api/p3", r3.json.path)
      assert.equal("chunked", r3.headers["transfer-encoding"])
      assert.equal("/api/p4", r4.json.path)
      assert.is_false(conn.closed)
      conn:close()
      assert.equal(4, echo.stats().requests)
    end)

    it("answers 300 pipelined requests (more than one read buffer) in order", function()
      assert(echo.reset_stats())
      local conn = assert(helpers.connect(gw.port, { timeout = 10 }))
      local reqs = {}
      for i = 1, 300 do
        reqs[i] = helpers.encode_request({ path = "/api/pp" .. i, headers = {
          ["X-Pad"] = ("p"):rep(40), ["X-Echo-Chunked"] = i % 50 == 0 and 2 or nil } })
      end
      assert(conn:send(concat(reqs)))
      for i = 1, 300 do
        local res = assert(conn:read_response())
        assert.equal("/api/pp" .. i, res.json.path)
      end
      assert.is_false(conn.closed)
      conn:close()
      assert.equal(300, echo.stats().requests)
    end)

    it("answers pipelined requests whose bodies and heads share reads", function()
      local conn = assert(helpers.connect(gw.port))
      local body = pattern(20000)
      assert(conn:send(
        helpers.encode_request({ method = "POST", path = "/api/pb1", body = body })
        .. "POST /api/pb2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        .. helpers.encode_request({ path = "/api/pb3", headers = { Connection = "close" } })))
      local r1 = assert(conn:read_response())
      local r2 = assert(conn:read_response())
      local r3 = assert(conn:read_response())
      assert.is_true(r1.json.body == body, "body differs")
      assert.equal("abc", r2.json.body)
      assert.equal("/api/pb3", r3.json.path)
      assert.equal("close", r3.headers.connection)
      local _, closed = conn:read_all(2)
      assert.is_true(closed)
      conn:close()
    end)
  end)

  ----------------------------------------------------------------------------
  describe("upstream keep-alive pool", function()
    it("reuses one upstream connection for sequential requests", function()
      assert(echo_pool.reset_stats())
      local first
      for i = 1, 10 do
        -- A fresh client connection each time: reuse is the gateway's doing.
        local res = assert(gw.request({ path = "/pooled/r" .. i }))
        assert.equal(200, res.status)
        assert.equal("/pooled/r" .. i, res.json.path)
        first = first or res.json.connection_requests
        assert.equal(first + i - 1, res.json.connection_requests)
      end
      local s = assert(echo_pool.stats())
      assert.equal(10, s.requests)
      assert.truthy(s.connections <= 1, "connections: " .. s.connections)
    end)

    it("does not reuse an upstream connection that said close", function()
      assert(echo_pool.reset_stats())
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/pooled/close", headers = { ["X-Echo-Close"] = 1 } }))
      assert.equal(200, res.status)
      -- The upstream's Connection: close is hop-by-hop: the client keeps its connection.
      assert.is_nil(res.headers.connection)
      assert.is_false(conn.closed)
      res = assert(conn:request({ path = "/pooled/after-close" }))
      assert.equal(200, res.status)
      assert.equal("/pooled/after-close", res.json.path)
      assert.equal(1, res.json.connection_requests)
      conn:close()
      local s = assert(echo_pool.stats())
      assert.equal(2, s.requests)
      -- No stale-connection replay was needed (it would have been logged).
      assert.is_nil(gw.error_log():find("replaying", 1, true))
      assert_clean_log(gw)
    end)

    it("does not reuse connections with keepalive: 0", function()
      assert(echo_nopool.reset_stats())
      for i = 1, 5 do
        local res = assert(gw.request({ path = "/nopool/" .. i }))
        assert.equal(200, res.status)
        assert.equal(1, res.json.connection_requests)
      end
      local s = assert(echo_nopool.stats())
      assert.equal(5, s.requests)
      assert.equal(5, s.connections)
      -- And they are closed, not left open.
      assert(helpers.wait_until(function()
        return upstream_open(echo_nopool) == 0
      end, 3))
    end)

    it("closes an upstream connection after keepalive_requests", function()
      local seen = {}
      for i = 1, 7 do
        local res = assert(gw.request({ path = "/kareq/" .. i }))
        assert.equal(200, res.status)
        seen[i] = res.json.connection_requests
      end
      assert.same({ 1, 2, 3, 1, 2, 3, 1 }, seen)
      assert_clean_log(gw)
    end)

    it("closes an idle pooled connection after keepalive_timeout_ms", function()
      local res = assert(gw.request({ path = "/kato/1" }))
      assert.equal(1, res.json.connection_requests)
      res = assert(gw.request({ path = "/kato/2" }))
      assert.equal(2, res.json.connection_requests)
      assert.equal(1, upstream_open(echo_kato))
      assert(helpers.wait_until(function() return upstream_open(echo_kato) == 0 end, 3))
      res = assert(gw.request({ path = "/kato/3" }))
      assert.equal(200, res.status)
      assert.equal(1, res.json.connection_requests)
      assert.is_nil(gw.error_log():find("replaying", 1, true))
    end)

    it("keeps at most `keepalive` idle connections", function()
      -- 8 concurrent requests need 8 upstream connections; afterwards the
      -- pool keeps 4 of them (keepalive: 4) and closes the rest.
      assert(echo_pool.reset_stats())
      local conns = {}
      for i = 1, 8 do
        conns[i] = assert(helpers.connect(gw.port))
        assert(conns[i]:send(helpers.encode_request({ path = "/pooled/c" .. i,
          headers = { ["X-Echo-Delay-Ms"] = 200 } })))
      end
      for i = 1, 8 do
        local res = assert(conns[i]:read_response())
        assert.equal("/pooled/c" .. i, res.json.path)
        conns[i]:close()
      end
      assert(helpers.wait_until(function()
        return upstream_open(echo_pool) == 4
      end, 3))
    end)
  end)

  ----------------------------------------------------------------------------
  describe("request headers", function()
    it("removes hop-by-hop headers and the ones Connection names", function()
      local res = assert(gw.request({ path = "/api/hop", headers = {
        { "Connection", "close, X-Secret" },
        { "Keep-Alive", "timeout=5" },
        { "TE", "trailers" },
        { "Trailer", "X-Checksum" },
        { "Upgrade", "h2c" },
        { "Proxy-Authorization", "Basic Zm9vOmJhcg==" },
        { "Proxy-Connection", "keep-alive" },
        { "X-Secret", "do-not-forward" },
        { "X-Keep", "forward-me" },
      } }))
      assert.equal(200, res.status)
      local seen = names_of(res.json.header_list)
      for _, name in ipairs({ "connection", "keep-alive", "te", "trailer", "upgrade",
                              "proxy-authorization", "proxy-connection", "x-secret" }) do
        assert.is_nil(seen[name], name .. " reached the upstream")
      end
      assert.equal("forward-me", res.json.headers["x-keep"])
    end)

    it("removes headers named in several Connection headers", function()
      local res = assert(gw.request({ path = "/api/hop2", headers = {
        { "Connection", "X-A" },
        { "X-A", "1" },
        { "Connection", "keep-alive, x-b" },
        { "X-B", "2" },
        { "X-C", "3" },
      } }))
      assert.equal(200, res.status)
      assert.is_nil(res.json.headers["x-a"])
      assert.is_nil(res.json.headers["x-b"])
      assert.is_nil(res.json.headers.connection)
      assert.equal("3", res.json.headers["x-c"])
    end)

    it("sets X-Forwarded-For to the client address when there is none", function()
      local res = assert(gw.request({ path = "/api/xff0" }))
      assert.same({ "127.0.0.1" }, values_of(res.json.header_list, "x-forwarded-for"))
    end)

    it("appends the client address to an X-Forwarded-For", function()
      local res = assert(gw.request({ path = "/api/xff1", headers = { ["X-Forwarded-For"] = "10.0.0.1" } }))
      assert.same({ "10.0.0.1, 127.0.0.1" }, values_of(res.json.header_list, "x-forwarded-for"))
    end)

    it("does not forward an empty X-Forwarded-For element", function()
      local res = assert(gw.request({ path = "/api/xff-empty", headers = { { "X-Forwarded-For", "" } } }))
      assert.equal(200, res.status)
      assert.same({ "127.0.0.1" }, values_of(res.json.header_list, "x-forwarded-for"))
    end)

    it("merges several X-Forwarded-For headers into one, in order", function()
      local res = assert(gw.request({ path = "/api/xff2", headers = {
        { "X-Forwarded-For", "1.1.1.1" },
        { "X-Other", "o" },
        { "X-Forwarded-For", "2.2.2.2, 3.3.3.3" },
      } }))
      assert.same({ "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1" },
                  values_of(res.json.header_list, "x-forwarded-for"))
    end)

    it("sets X-Forwarded-Proto/Host/Port and X-Real-IP, replacing client values", function()
      local res = assert(gw.request({ path = "/api/xf", host = "api.example.com", headers = {
        { "Host", "api.example.com" },
        { "X-Forwarded-Proto", "https" },
        { "X-Forwarded-Host", "evil.example" },
        { "X-Forwarded-Port", "1" },
        { "X-Real-IP", "6.6.6.6" },
      } }))
      assert.equal(200, res.status)
      local l = res.json.header_list
      assert.same({ "http" }, values_of(l, "x-forwarded-proto"))
      assert.same({ "api.example.com" }, values_of(l, "x-forwarded-host"))
      assert.same({ tostring(gw.port) }, values_of(l, "x-forwarded-port"))
      assert.same({ "127.0.0.1" }, values_of(l, "x-real-ip"))
    end)

    it("preserves Host by default", function()
      local res = assert(gw.request({ path = "/api/host", headers = { Host = "api.example.com:8443" } }))
      assert.same({ "api.example.com:8443" }, values_of(res.json.header_list, "host"))
      assert.equal("api.example.com:8443", res.json.headers["x-forwarded-host"])
    end)

    it("sends the target's host with preserve_host: false", function()
      local res = assert(gw.request({ path = "/th/x", headers = { Host = "api.example.com" } }))
      assert.equal(200, res.status)
      assert.same({ "127.0.0.1:" .. echo.port }, values_of(res.json.header_list, "host"))
      assert.equal("api.example.com", res.json.headers["x-forwarded-host"])
    end)

    it("forwards repeated headers all, in order", function()
      local res = assert(gw.request({ path = "/api/multi", headers = {
        { "X-Multi", "one" },
        { "Accept", "text/plain" },
        { "X-Multi", "two" },
        { "X-Multi", "three, four" },
      } }))
      assert.same({ "one", "two", "three, four" }, values_of(res.json.header_list, "x-multi"))
      -- Order relative to other headers is kept too.
      local order = {}
      for _, h in ipairs(res.json.header_list) do
        local n = h[1]:lower()
        if n == "x-multi" or n == "accept" then
          order[#order + 1] = n .. "=" .. h[2]
        end
      end
      assert.same({ "x-multi=one", "accept=text/plain", "x-multi=two", "x-multi=three, four" }, order)
    end)

    it("forwards header values byte for byte", function()
      local v = 'a=1; b="two, three" ; c=\t~!#$%&*+-.^_`|'
      local res = assert(gw.request({ path = "/api/values", headers = { { "X-Odd", v } } }))
      assert.equal(v, res.json.headers["x-odd"])
    end)

    it("turns an absolute-form target into origin-form with its authority as Host", function()
      -- RFC 9112 3.2.2: the target's authority wins over the Host header.
      local res = assert(gw.request({ path = "http://api.example.com/api/abs?q=1",
        headers = { Host = "other.example.com" } }))
      assert.equal(200, res.status)
      assert.equal("/api/abs?q=1", res.json.uri)
      assert.same({ "api.example.com" }, values_of(res.json.header_list, "host"))
      assert.equal("api.example.com", res.json.headers["x-forwarded-host"])
    end)

    it("sends the target's host for an HTTP/1.0 request without Host", function()
      local res = assert(gw.request({ version = "1.0", path = "/api/nohost", no_host = true }))
      assert.equal(200, res.status)
      assert.same({ "127.0.0.1:" .. echo.port }, values_of(res.json.header_list, "host"))
      assert.is_nil(res.json.headers["x-forwarded-host"])
      assert.equal("1.1", res.json.http_version)
    end)

    it("re-emits a Content-Length with leading zeros as its value", function()
      local res = assert(gw.request({ method = "POST", path = "/api/cl-zeros",
        headers = { ["Content-Length"] = "005" }, body = "12345" }))
      assert.equal(200, res.status)
      assert.equal("12345", res.json.body)
      assert.same({ "5" }, values_of(res.json.header_list, "content-length"))
    end)

    it("forwards the query string and method untouched", function()
      local res = assert(gw.request({ method = "DELETE", path = "/api/q?a=1&b=%2F&c" }))
      assert.equal("DELETE", res.json.method)
      assert.equal("a=1&b=%2F&c", res.json.query)
      assert.equal("/api/q?a=1&b=%2F&c", res.json.uri)
    end)
  end)

  ----------------------------------------------------------------------------
  describe("response headers", function()
    it("removes hop-by-hop headers from the upstream response", function()
      local res = assert(gw.request({ path = "/api/resp-hop", headers = {
        { "X-Echo-Response-Header", "Keep-Alive: timeout=99" },
        { "X-Echo-Response-Header", "Proxy-Authenticate: Basic realm=x" },
        { "X-Echo-Response-Header", "Upgrade: h2c" },
        { "X-Echo-Response-Header", "Connection: X-Hidden" },
        { "X-Echo-Response-Header", "X-Hidden: secret" },
        { "X-Echo-Response-Header", "X-Visible: yes" },
      } }))
      assert.equal(200, res.status)
      local seen = names_of(res.header_list)
      for _, name in ipairs({ "keep-alive", "proxy-authenticate", "upgrade", "x-hidden", "connection" }) do
        assert.is_nil(seen[name], name .. " reached the client")
      end
      assert.equal("yes", res.headers["x-visible"])
      assert.equal("/api/resp-hop", res.json.path)
    end)

    it("passes response header values and repeats through unchanged", function()
      local res = assert(gw.request({ path = "/api/resp-vals", headers = {
        { "X-Echo-Response-Header", 'X-Odd: a=1; b="two, three" ;c' },
        { "X-Echo-Response-Header", "Set-Cookie: a=1; Path=/" },
        { "X-Echo-Response-Header", "Set-Cookie: b=2; HttpOnly" },
        { "X-Echo-Response-Header", "Cache-Control: no-store" },
      } }))
      assert.equal(200, res.status)
      assert.equal('a=1; b="two, three" ;c', res.headers["x-odd"])
      assert.same({ "a=1; Path=/", "b=2; HttpOnly" }, values_of(res.header_list, "set-cookie"))
      assert.equal("no-store", res.headers["cache-control"])
      assert.equal("tg-echo", res.headers.server)
    end)

    it("keeps the reason phrase and status of the upstream", function()
      local direct = assert(helpers.request(echo.port, { path = "/s418", headers = { ["X-Echo-Status"] = 418 } }))
      local res = assert(gw.request({ path = "/api/s418", headers = { ["X-Echo-Status"] = 418 } }))
      assert.equal(418, res.status)
      assert.equal(direct.reason, res.reason)
      assert.equal(418, res.json.status)
    end)
  end)

  ----------------------------------------------------------------------------
  describe("Expect: 100-continue", function()
    it("sends 100 Continue before the body, then the final response", function()
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /api/expect HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        .. "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"))
      assert.equal("HTTP/1.1 100 Continue\r\n\r\n", conn:receive_until("\r\n\r\n", 3))
      assert(conn:send("hello"))
      local res = assert(conn:read_response())
      assert.equal(200, res.status)
      assert.same({}, res.interim)   -- exactly one 100: the upstream's is not relayed
      assert.equal("hello", res.json.body)
      assert.is_nil(res.json.headers.expect)
      assert.is_false(conn.closed)
      res = assert(conn:request({ path = "/api/after-expect" }))
      assert.equal("/api/after-expect", res.json.path)
      conn:close()
    end)

    it("works through a client that waits for the 100", function()
      local body = pattern(100000)
      local res = assert(gw.request({ method = "PUT", path = "/api/expect2", wait_continue = true,
        body = body, headers = { Expect = "100-continue", ["Content-Type"] = "text/plain" } }))
      assert.equal(200, res.status)
      assert.equal(1, #res.interim)
      assert.equal(100, res.interim[1].status)
      assert.is_true(res.json.body == body, "body differs")
      assert.is_nil(res.json.headers.expect)
    end)

    it("sends 100 Continue for a chunked body too", function()
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /api/expect-chunked HTTP/1.1\r\nHost: x\r\n"
        .. "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"))
      assert.equal("HTTP/1.1 100 Continue\r\n\r\n", conn:receive_until("\r\n\r\n", 3))
      assert(conn:send("4\r\nabcd\r\n0\r\n\r\n"))
      local res = assert(conn:read_response())
      assert.equal(200, res.status)
      assert.equal("abcd", res.json.body)
      assert.is_nil(res.json.headers.expect)
      conn:close()
    end)

    it("sends no stray 100 when the body came with the head, pipelined", function()
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /api/expect-eager HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        .. "Expect: 100-continue\r\n\r\nbody" .. helpers.encode_request({ path = "/api/expect-next" })))
      local r1 = assert(conn:read_response())
      local r2 = assert(conn:read_response())
      assert.equal("body", r1.json.body)
      assert.truthy(#r1.interim <= 1)
      assert.equal("/api/expect-next", r2.json.path)
      assert.same({}, r2.interim)
      conn:close()
    end)

    it("sends no 100 Continue to an HTTP/1.0 client", function()
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /api/expect10 HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n"
        .. "Expect: 100-continue\r\n\r\n"))
      helpers.sleep(0.2)
      assert(conn:send("abc"))
      local res = assert(conn:read_response())
      assert.equal(200, res.status)
      assert.same({}, res.interim)
      assert.is_nil(res.raw:find("100 Continue", 1, true))
      assert.equal("abc", res.json.body)
      assert.is_nil(res.json.headers.expect)
      conn:close()
    end)

    it("answers 404 without 100 on an unrouted path", function()
      assert(echo.reset_stats())
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"))
      local res = assert(conn:read_response({ stop_at_interim = true }))
      assert.equal(404, res.status)
      assert.same({ error = "Not Found" }, res.json)
      assert.is_nil(res.raw:find("100 Continue", 1, true))
      conn:close()
      assert.equal(0, echo.stats().requests)
    end)

    it("answers 413 without 100 for an over-limit Content-Length", function()
      assert(echo.reset_stats())
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /api/toobig HTTP/1.1\r\nHost: x\r\nContent-Length: 7000000\r\n"
        .. "Expect: 100-continue\r\n\r\n"))
      local res = assert(conn:read_response({ stop_at_interim = true }))
      assert.equal(413, res.status)
      assert.same({ error = "Content Too Large" }, res.json)
      assert.is_nil(res.raw:find("100 Continue", 1, true))
      local _, closed = conn:read_all(2)
      assert.is_true(closed)
      conn:close()
      assert.equal(0, echo.stats().requests)
    end)
  end)

  ----------------------------------------------------------------------------
  describe("WebSocket / Upgrade", function()
    local function upgrade(path, extra)
      local conn = assert(helpers.raw_conn(gw.port, { timeout = 5 }))
      assert(conn:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        .. "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        .. "Sec-WebSocket-Version: 13\r\n\r\n" .. (extra or "")))
      local res = assert(conn:read_response())
      return conn, res
    end

    it("answers 101 and tunnels bytes both ways", function()
      assert(echo_ws.reset_stats())
      local conn, res = upgrade("/ws/chat")
      assert.equal(101, res.status)
      assert.equal("websocket", (res.headers.upgrade or ""):lower())
      assert.equal("upgrade", (res.headers.connection or ""):lower())
      assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", res.headers["sec-websocket-accept"])
      for i = 1, 5 do
        local msg = "round trip " .. i
        assert(conn:send(msg))
        assert.equal(msg, conn:receive_until(#msg, 3))
      end
      local bin = "\0\1\2\255\254 GET / HTTP/1.1\r\nHost: y\r\n\r\n"
      assert(conn:send(bin))
      assert.equal(bin, conn:receive_until(#bin, 3))
      local big = pattern(100000)
      assert(conn:send(big))
      local back = assert(conn:receive_until(#big, 5))
      assert.equal(adler32(big), adler32(back))
      assert.is_true(back == big, "tunnelled payload differs")
      assert(conn:send("after big"))
      assert.equal("after big", conn:receive_until(9, 3))
      conn:close()
      assert.equal(1, echo_ws.stats().requests)
    end)

    it("tunnels 2 MB each way while both sides stream", function()
      local conn, res = upgrade("/ws/bulk")
      assert.equal(101, res.status)
      local data = pattern(2 * MiB)
      local back, got = {}, 0
      for i = 1, #data, 65536 do
        assert(conn:send(data:sub(i, i + 65535)))
        -- Read whatever came back so neither side's buffers stay full.
        local chunk = conn:receive(0.01)
        if chunk ~= "" then
          back[#back + 1] = chunk
          got = got + #chunk
        end
      end
      if got < #data then
        local rest, err = conn:receive_until(#data - got, 10)
        assert(rest, "tunnel stalled after " .. got .. " bytes: " .. tostring(err))
        back[#back + 1] = rest
      end
      local echoed = concat(back)
      assert.equal(#data, #echoed)
      assert.equal(adler32(data), adler32(echoed))
      assert.is_true(echoed == data, "tunnelled bytes differ")
      conn:close()
    end)

    it("forwards bytes sent together with the upgrade request", function()
      local conn, res = upgrade("/ws/early", "early bytes")
      assert.equal(101, res.status)
      assert.equal("early bytes", conn:receive_until(11, 3))
      conn:close()
    end)

    it("ends the tunnel when the client half-closes", function()
      local conn, res = upgrade("/ws/half")
      assert.equal(101, res.status)
      assert(conn:send("ping"))
      assert.equal("ping", conn:receive_until(4, 3))
      conn:shutdown()
      local t0 = socket.gettime()
      local rest, closed = conn:read_all(3)
      assert.equal("", rest)
      assert.is_true(closed)
      assert.truthy(socket.gettime() - t0 < 3)
      conn:close()
    end)

    it("closes the upstream side when the client goes away", function()
      assert(echo_ws.reset_stats())
      local conn, res = upgrade("/ws/gone")
      assert.equal(101, res.status)
      assert(conn:send("x"))
      assert.equal("x", conn:receive_until(1, 3))
      conn:close()
      assert(helpers.wait_until(function()
        return upstream_open(echo_ws) == 0
      end, 3))
      assert_clean_log(gw)
    end)

    it("ends the tunnel when the upstream goes away", function()
      local conn, res = upgrade("/ws2/upstream-gone")
      assert.equal(101, res.status)
      assert(conn:send("before"))
      assert.equal("before", conn:receive_until(6, 3))
      assert.is_true(echo_ws2.stop())
      local rest, closed = conn:read_all(3)
      assert.equal("", rest)
      assert.is_true(closed)
      conn:close()
    end)

    it("keeps the connection HTTP when the upstream ignores an Upgrade", function()
      -- tg-echo only switches to websocket; h2c is answered as a plain request.
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/api/h2c", headers = {
        Upgrade = "h2c", Connection = "Upgrade, HTTP2-Settings", ["HTTP2-Settings"] = "AAMAAABkAAQAAP__" } }))
      assert.equal(200, res.status)
      assert.equal("h2c", res.json.headers.upgrade)
      assert.equal("upgrade", res.json.headers.connection:lower())
      assert.is_nil(res.json.headers["http2-settings"])
      res = assert(conn:request({ path = "/api/after-h2c" }))
      assert.equal(200, res.status)
      assert.equal("/api/after-h2c", res.json.path)
      conn:close()
    end)

    it("does not tunnel Upgrade without Connection: upgrade", function()
      local res = assert(gw.request({ path = "/ws/plain", headers = { Upgrade = "websocket" } }))
      assert.equal(200, res.status)
      assert.equal("/ws/plain", res.json.path)
      assert.is_nil(res.json.headers.upgrade)
      assert.is_nil(res.headers.upgrade)
    end)
  end)

  it("left no unexpected errors in the error log", function()
    assert_clean_log(gw)
  end)
end)

describe("proxy when the client goes away", function()
  local echo, gw

  lazy_setup(function()
    echo = helpers.start_echo()
    gw = helpers.start_gateway({
      upstreams = { echo = { targets = { { url = echo.url() } },
                             timeouts = { connect_ms = 1000, send_ms = 3000, read_ms = 3000 } } },
      routes = { { name = "api", paths = { "/api" }, upstream = "echo" } },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("closes the upstream connection when the client leaves mid-response", function()
    local conn = assert(helpers.connect(gw.port, { timeout = 5 }))
    assert(conn:send(helpers.encode_request({ path = "/api/abort-resp",
      headers = { ["X-Echo-Body-Size"] = 5000000 } })))
    assert(conn:receive_until(100000, 5))
    conn:close()
    -- The half-sent response's connection cannot be pooled.
    assert(helpers.wait_until(function() return upstream_open(echo) == 0 end, 3))
    local res = assert(gw.request({ path = "/api/after-abort-resp" }))
    assert.equal("/api/after-abort-resp", res.json.path)
    assert.equal(1, res.json.connection_requests)
  end)

  it("does not pool an upstream connection left with half a request body", function()
    local conn = assert(helpers.raw_conn(gw.port))
    assert(conn:send("POST /api/abort-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
      .. ("y"):rep(1000)))
    helpers.sleep(0.2)
    conn:close()
    assert(helpers.wait_until(function() return upstream_open(echo) == 0 end, 3))
    -- Had that connection been pooled, this request would become the rest
    -- of the other's body.
    local res = assert(gw.request({ method = "POST", path = "/api/after-abort-body", body = "fine" }))
    assert.equal(200, res.status)
    assert.equal("/api/after-abort-body", res.json.path)
    assert.equal("fine", res.json.body)
  end)

  it("releases the upstream connection when the client leaves while waiting", function()
    -- nginx's default (proxy_ignore_client_abort off): an abandoned request
    -- does not hold an upstream connection until read_ms.
    local conn = assert(helpers.raw_conn(gw.port))
    assert(conn:send(helpers.encode_request({ path = "/api/abort-wait", headers = { ["X-Echo-Mode"] = "hang" } })))
    assert(helpers.wait_until(function() return upstream_open(echo) == 1 end, 2))
    conn:close()
    assert(helpers.wait_until(function() return upstream_open(echo) == 0 end, 2))
  end)

  it("keeps serving without crashes", function()
    local res = assert(gw.request({ path = "/api/still-here" }))
    assert.equal(200, res.status)
    local log = gw.error_log()
    assert.is_nil(log:find("%[crit%]"), log)
    assert.is_nil(log:find("%[alert%]"), log)
    assert.is_nil(log:find("died", 1, true), log)
  end)
end)

describe("proxy and an upstream response with ambiguous framing", function()
  local echo, gw

  lazy_setup(function()
    echo = helpers.start_echo()
    gw = helpers.start_gateway({
      upstreams = { echo = { targets = { { url = echo.url() } },
                             passive_health = { max_fails = 1000, fail_timeout_ms = 1000 } } },
      routes = { { name = "api", paths = { "/api" }, upstream = "echo" } },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  -- Ambiguous framing is garbage: 502, and none of it reaches the client
  -- (no smuggling through the response either).
  for _, case in ipairs({
    { "chunked and Content-Length", { { "X-Echo-Chunked", "2" }, { "X-Echo-Response-Header", "Content-Length: 5" } } },
    { "two different Content-Lengths", { { "X-Echo-Response-Header", "Content-Length: 3" } } },
    { "Transfer-Encoding gzip", { { "X-Echo-Response-Header", "Transfer-Encoding: gzip" } } },
  }) do
    it("answers 502 to an upstream response with " .. case[1], function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/api/badframe", headers = case[2] }))
      assert.equal(502, res.status)
      assert.same({ error = "Bad Gateway" }, res.json)
      assert.is_nil(res.body:find("badframe", 1, true))
      -- Nothing of the bad response is left to be read as a next response.
      if not conn.closed then
        res = assert(conn:request({ path = "/api/next" }))
        assert.equal(200, res.status)
        assert.equal("/api/next", res.json.path)
      end
      conn:close()
      assert.truthy(gw.error_log():find("sent an invalid response", 1, true))
      assert.is_nil(gw.error_log():find("%[crit%]"))
    end)
  end
end)

-- tg-echo cannot send a burst and then trickle, so this upstream is a bare
-- LuaSocket listener driven step by step by the test (the network edge).
describe("proxy with send_timeout_ms: 1000 and an upstream that slows down", function()
  local srv, uport, gw

  lazy_setup(function()
    srv = assert(socket.bind("127.0.0.1", 0))
    uport = select(2, srv:getsockname())
    srv:settimeout(5)
    gw = helpers.start_gateway({
      limits = { send_timeout_ms = 1000 },
      upstreams = { manual = { targets = { { url = "http://127.0.0.1:" .. uport } }, retries = 0 } },
      routes = { { name = "api", paths = { "/api" }, upstream = "manual" } },
    })
  end)

  lazy_teardown(function()
    srv:close()
    helpers.stop_all()
  end)

  it("does not time out a client that keeps up once the queue drained", function()
    -- 12 MB is more than the kernel buffers on the way take, so the gateway
    -- sees backpressure from the (not yet reading) client. Once the client
    -- has read everything, the upstream sends the last bytes slowly, for
    -- longer than send_timeout_ms: the client is not the slow one then.
    local burst, trickle = 12000000, 6
    local client = assert(helpers.connect(gw.port, { timeout = 10 }))
    pcall(client.sock.setoption, client.sock, "recv-buffer-size", 65536)
    assert(client:send(helpers.encode_request({ path = "/api/burst-then-trickle" })))
    local up = assert(srv:accept())
    up:settimeout(2)
    for _ = 1, 200 do
      local line = assert(up:receive("*l"))
      if line == "" then
        break
      end
    end
    local payload = "HTTP/1.1 200 OK\r\nContent-Length: " .. (burst + trickle) .. "\r\n\r\n"
      .. ("b"):rep(burst)
    local sent = 0
    up:settimeout(0)
    local function push()
      if sent < #payload then
        local i, _, partial = up:send(payload, sent + 1)
        sent = i or partial or sent
      end
    end
    for _ = 1, 30 do
      push()
      socket.sleep(0.01)
    end
    socket.sleep(0.3)
    assert(client:receive_until("\r\n\r\n", 5))
    local got = 0
    local deadline = socket.gettime() + 10
    for _ = 1, 1000000 do
      push()
      got = got + #client:receive(0.01)
      if (got >= burst and sent >= #payload) or socket.gettime() > deadline then
        break
      end
    end
    assert.equal(burst, got)
    for _ = 1, trickle do
      socket.sleep(0.3)
      up:send("t")
      local data = client:receive(1)
      got = got + #data
    end
    up:close()
    assert.equal(burst + trickle, got)
    assert.is_false(client.eof)
    client:close()
    assert.is_nil(gw.error_log():find("timed out reading the response", 1, true))
  end)
end)

describe("proxy with max_keepalive_requests: 3", function()
  local echo, gw

  lazy_setup(function()
    echo = helpers.start_echo()
    gw = helpers.start_gateway({
      limits = { max_keepalive_requests = 3 },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      routes = { { name = "api", paths = { "/api" }, upstream = "echo" } },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("closes after the third request and says so", function()
    local conn = assert(helpers.connect(gw.port))
    for i = 1, 2 do
      local res = assert(conn:request({ path = "/api/m" .. i }))
      assert.equal(200, res.status)
      assert.is_nil(res.headers.connection)
    end
    local res = assert(conn:request({ path = "/api/m3" }))
    assert.equal(200, res.status)
    assert.equal("/api/m3", res.json.path)
    assert.equal("close", res.headers.connection)
    local rest, closed = conn:read_all(2)
    assert.equal("", rest)
    assert.is_true(closed)
    conn:close()
  end)

  it("does not serve a fourth pipelined request", function()
    assert(echo.reset_stats())
    local reqs = {}
    for i = 1, 4 do
      reqs[i] = helpers.encode_request({ path = "/api/pm" .. i })
    end
    local data, closed = helpers.raw(gw.port, concat(reqs), { timeout = 3 })
    assert.is_true(closed)
    assert.equal(3, count(data, "HTTP/1.1 200 "))
    assert.equal(1, count(data, "Connection: close\r\n"))
    assert.is_nil(data:find("/api/pm4", 1, true))
    assert.equal(3, echo.stats().requests)
    assert_clean_log(gw)
  end)
end)

describe("proxy over IPv6", function()
  local echo6, gw, port6

  lazy_setup(function()
    if not ipv6_loopback() then
      return
    end
    echo6 = helpers.start_echo({ host = "::1" })
    port6 = helpers.free_port()
    gw = helpers.start_gateway({
      listen = { "127.0.0.1:" .. helpers.free_port(), "[::1]:" .. port6 },
      upstreams = { echo6 = { targets = { { url = echo6.url() } } } },
      routes = { { name = "api", paths = { "/api" }, upstream = "echo6" } },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("accepts on a [::1] listener and proxies to a [::1] target", function()
    if not gw then
      pending("no IPv6 loopback here")
      return
    end
    local res = assert(helpers.request(port6, { addr = "::1", method = "POST", path = "/api/v6",
      host = "[::1]:" .. port6, body = "six" }))
    assert.equal(200, res.status)
    assert.equal("/api/v6", res.json.path)
    assert.equal("six", res.json.body)
    assert.equal("::1", res.json.remote_addr)
    assert.equal("::1", res.json.headers["x-real-ip"])
    assert.equal("::1", res.json.headers["x-forwarded-for"])
    assert.equal("[::1]:" .. port6, res.json.headers.host)
    assert.equal(tostring(port6), res.json.headers["x-forwarded-port"])
    -- The IPv4 listener of the same gateway works too.
    res = assert(gw.request({ path = "/api/v4" }))
    assert.equal(200, res.status)
    assert.equal("127.0.0.1", res.json.headers["x-real-ip"])
    assert_clean_log(gw)
  end)
end)
