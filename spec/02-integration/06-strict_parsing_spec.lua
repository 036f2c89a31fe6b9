-- 06-strict_parsing_spec.lua: request-smuggling strictness, over raw bytes.
--
-- http-parser 2.9 (Debian, non-strict) lets through much that RFC 9112
-- forbids; tollgate's own layer (core/tg_http.h lists the rules) must refuse
-- each of those requests with the status that file names, close the
-- connection, and never let any of it reach the upstream. Every case is
-- sent whole and, for head-level cases, one byte at a time (the parser is
-- resumable, so the verdict must not depend on how bytes arrive). Body-level
-- cases (chunked framing) are sent both to a proxied route, where the head
-- has already gone upstream when the body turns out bad, and to a local
-- echo route; tg-echo counts a request only once it is complete, so
-- `requests == 0` still proves no request was delivered.
--
-- Positive controls next to the cases show that the same requests, written
-- correctly, do get through: a rejection is the rule firing, not a broken
-- route.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local parse = helpers.parse_raw_response

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

local reasons = {
  [400] = "Bad Request", [405] = "Method Not Allowed", [417] = "Expectation Failed",
  [501] = "Not Implemented", [505] = "HTTP Version Not Supported",
}

-- Splits bytes into one-byte pieces for helpers.raw.
local function bytewise(s)
  local t = {}
  for i = 1, #s do
    t[i] = s:sub(i, i)
  end
  return t
end

-- Requests whose head is invalid. `p` is the path prefix of a proxied route.
local head_cases = {
  { "Content-Length with Transfer-Encoding", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" },
  { "Transfer-Encoding before Content-Length", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" },
  { "two differing Content-Length", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" },
  { "two equal Content-Length", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" },
  { "a Content-Length list", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello" },
  { "a signed Content-Length", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello" },
  { "a negative Content-Length", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n" },
  { "Content-Length with trailing junk", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello" },
  { "'Transfer-Encoding : chunked' (space before the colon)", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" },
  { "Transfer-Encoding: chunked twice", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" },
  { "Transfer-Encoding: chunked, chunked", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n" },
  { "Transfer-Encoding: chunked, gzip (chunked not last)", 400,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" },
  { "Transfer-Encoding: gzip, chunked (unsupported coding)", 501,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" },
  { "Transfer-Encoding: gzip alone", 501,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n" },
  { "Transfer-Encoding in HTTP/1.0", 400,
    "POST /api/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" },
  { "an obs-fold line", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\r\nX-Fold: one\r\n two\r\n\r\n" },
  { "an obs-fold line with a tab", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\r\nX-Fold: one\r\n\ttwo\r\n\r\n" },
  { "bare LF line endings", 400,
    "GET /api/x HTTP/1.1\nHost: a\n\n" },
  { "one bare LF among CRLFs", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n" },
  { "a bare CR in a header value", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n" },
  { "'\\r\\n\\rX' ending the head (a hidden second request)", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\r\n\rXGET /api/hidden HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "HTTP/2.0 as the version", 505,
    "GET /api/x HTTP/2.0\r\nHost: a\r\n\r\n" },
  { "HTTP/9.9 as the version", 505,
    "GET /api/x HTTP/9.9\r\nHost: a\r\n\r\n" },
  { "a lowercase version", 400,
    "GET /api/x http/1.1\r\nHost: a\r\n\r\n" },
  { "'#' in the target", 400,
    "GET /api/x#frag HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "byte 0x80 in the target", 400,
    "GET /api/x\128y HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "a missing Host in HTTP/1.1", 400,
    "GET /api/x HTTP/1.1\r\nX-A: b\r\n\r\n" },
  { "two Host headers", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" },
  { "two identical Host headers", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n" },
  { "an empty Host", 400,
    "GET /api/x HTTP/1.1\r\nHost: \r\n\r\n" },
  { "an extra token after the version", 400,
    "GET /api/x HTTP/1.1 extra\r\nHost: a\r\n\r\n" },
  { "an extra token before the version", 400,
    "GET /api/x extra HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "two spaces in the request line", 400,
    "GET  /api/x HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "NUL in a header value", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n" },
  { "a header name that is not a token", 400,
    "GET /api/x HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n" },
  { "userinfo in an absolute-form target", 400,
    "GET http://user@a/api/x HTTP/1.1\r\nHost: a\r\n\r\n" },
  { "CONNECT", 405,
    "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n" },
  { "an Expect other than 100-continue", 417,
    "POST /api/x HTTP/1.1\r\nHost: a\r\nExpect: something\r\nContent-Length: 1\r\n\r\nx" },
}

-- Chunked bodies that are malformed; the head is valid. `%s` is the path.
local body_cases = {
  { "a non-hex chunk size (zz)", "zz\r\nhello\r\n0\r\n\r\n" },
  { "a chunk-size line ended by \\r\\r", "5\r\rhello\r\n0\r\n\r\n" },
  { "a chunk-size line ended by a bare LF", "5\nhello\r\n0\r\n\r\n" },
  { "two bogus bytes instead of CRLF after chunk data", "5\r\nhelloXY0\r\n\r\n" },
  { "Content-Length in a chunked trailer", "5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n" },
  { "Transfer-Encoding in a chunked trailer", "5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n" },
  { "an overlong chunk size", "10000000000000000005\r\nhello\r\n0\r\n\r\n" },
  { "a negative chunk size", "-5\r\nhello\r\n0\r\n\r\n" },
}

describe("strict request parsing", function()
  local echo, gw

  setup(function()
    echo = helpers.start_echo()
    gw = helpers.start_gateway({
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      routes = {
        { name = "api", paths = { "/api" }, upstream = "echo" },
        { name = "local", paths = { "/local" }, response = { echo = true } },
        { name = "abs-host", paths = { "/abs" }, hosts = { "api.example.com" }, upstream = "echo" },
        { name = "abs-any", paths = { "/abs" }, response = { status = 200, json = { route = "fallback" } } },
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  before_each(function()
    assert(echo.reset_stats())
  end)

  -- Sends bytes, expects one error response with `status`, a closed
  -- connection and an untouched upstream.
  local function expect_rejected(bytes, status, opts)
    local data, closed = helpers.raw(gw.port, bytes, opts or { timeout = 3 })
    assert.truthy(data, "no connection")
    local res = parse(data)
    assert.is_table(res, "no response: " .. ("%q"):format(data))
    assert.equal(status, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ error = reasons[status] }, res.json)
    assert.equal(1, count(data, "HTTP/1.1 "))
    assert.is_true(closed, "connection left open")
    assert.equal(0, echo.stats().requests)
  end

  describe("rejects a head with", function()
    for _, case in ipairs(head_cases) do
      local name, status, bytes = case[1], case[2], case[3]
      it(name .. " -> " .. status, function()
        expect_rejected(bytes, status)
      end)
    end
  end)

  describe("rejects, fed one byte at a time, a head with", function()
    for _, case in ipairs(head_cases) do
      local name, status, bytes = case[1], case[2], case[3]
      it(name .. " -> " .. status, function()
        expect_rejected(bytewise(bytes), status, { pause = 0.001, timeout = 3 })
      end)
    end
  end)

  for _, route in ipairs({ "/api", "/local" }) do
    describe("rejects on " .. route .. " a chunked body with", function()
      for _, case in ipairs(body_cases) do
        local name, body = case[1], case[2]
        it(name .. " -> 400", function()
          expect_rejected("POST " .. route .. "/x HTTP/1.1\r\nHost: a\r\n"
                          .. "Transfer-Encoding: chunked\r\n\r\n" .. body, 400)
        end)
      end
    end)
  end

  describe("lets through, written correctly", function()
    it("a chunked body with a trailer, de-chunked on a local route", function()
      local res = assert(gw.request({ method = "POST", path = "/local/x",
        headers = { ["Transfer-Encoding"] = "chunked" },
        body = "5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: t\r\n\r\n" }))
      assert.equal(200, res.status)
      assert.equal("hello world", res.json.body)
    end)

    it("a chunked body to the upstream", function()
      local res = assert(gw.request({ method = "POST", path = "/api/x",
        headers = { ["Transfer-Encoding"] = "chunked" },
        body = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" }))
      assert.equal(200, res.status)
      assert.equal("hello world", res.json.body)
      assert.equal(1, echo.stats().requests)
    end)

    it("one Content-Length, HTTP/1.0 without Host, and a head fed byte by byte", function()
      local data = helpers.raw(gw.port, bytewise("POST /api/one HTTP/1.1\r\nHost: a\r\n"
        .. "Content-Length: 5\r\nConnection: close\r\n\r\nhello"), { pause = 0.001, timeout = 3 })
      local res = parse(data)
      assert.equal(200, res.status)
      assert.equal("hello", res.json.body)
      data = helpers.raw(gw.port, "GET /api/ten HTTP/1.0\r\n\r\n", { timeout = 3 })
      res = parse(data)
      assert.equal(200, res.status)
      assert.equal("/api/ten", res.json.path)
      assert.equal(2, echo.stats().requests)
    end)
  end)

  describe("absolute-form", function()
    it("routes by the target's authority, not by Host", function()
      local data = helpers.raw(gw.port, "GET http://api.example.com/abs/x?q=1 HTTP/1.1\r\n"
        .. "Host: other.example\r\nConnection: close\r\n\r\n", { timeout = 3 })
      local res = parse(data)
      assert.equal(200, res.status)
      assert.equal("/abs/x", res.json.path)
      assert.equal("q=1", res.json.query)
      assert.equal("api.example.com", res.json.headers.host)
      assert.equal("api.example.com", res.json.headers["x-forwarded-host"])
      assert.equal(1, echo.stats().requests)
    end)

    it("ignores a Host that names the routed host when the authority does not", function()
      local data = helpers.raw(gw.port, "GET http://other.example/abs/x HTTP/1.1\r\n"
        .. "Host: api.example.com\r\nConnection: close\r\n\r\n", { timeout = 3 })
      local res = parse(data)
      assert.equal(200, res.status)
      assert.same({ route = "fallback" }, res.json)
      assert.equal(0, echo.stats().requests)
    end)
  end)

  describe("connection state", function()
    it("never parses the unread body of a locally answered request as a request", function()
      local conn = assert(helpers.raw_conn(gw.port))
      assert(conn:send("POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"))
      local head = assert(conn:receive_until("\r\n\r\n", 3))
      assert.truthy(head:find("^HTTP/1%.1 404 "))
      local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: (%d+)"))
      local body = assert(conn:receive_until(len, 3))
      assert.same({ error = "Not Found" }, cjson.decode(body))
      -- What follows is body as far as the client is concerned: a request
      -- hidden in it must be neither answered nor forwarded.
      conn:send("GET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
      local rest = conn:read_all(1.5)
      conn:close()
      assert.equal("", rest)
      assert.equal(0, echo.stats().requests)
    end)

    -- Splits raw bytes holding several responses into parsed responses
    -- (each framed by its Content-Length).
    local function responses(data)
      local out = {}
      for _ = 1, 10 do
        local head, rest = data:match("^(HTTP/1%.1 .-\r\n\r\n)(.*)$")
        if not head then
          break
        end
        local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: (%d+)")) or 0
        out[#out + 1] = parse(head .. rest:sub(1, len))
        data = rest:sub(len + 1)
      end
      return out, data
    end

    it("skips a fully received body of a locally answered request and serves the next one", function()
      -- The 404's body is itself a request; only the request after it is real.
      local hidden = "GET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
      local data, closed = helpers.raw(gw.port, "POST /nowhere HTTP/1.1\r\nHost: a\r\n"
        .. "Content-Length: " .. #hidden .. "\r\n\r\n" .. hidden
        .. "GET /api/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", { timeout = 3 })
      assert.is_true(closed)
      local list, rest = responses(data)
      assert.equal(2, #list)
      assert.equal("", rest)
      assert.equal(404, list[1].status)
      assert.same({ error = "Not Found" }, list[1].json)
      assert.equal(200, list[2].status)
      assert.equal("/api/next", list[2].json.path)
      assert.equal(1, echo.stats().requests)
    end)

    it("skips a fully received chunked body of a locally answered request", function()
      local data, closed = helpers.raw(gw.port, "POST /nowhere HTTP/1.1\r\nHost: a\r\n"
        .. "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        .. "GET /api/next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", { timeout = 3 })
      assert.is_true(closed)
      local list, rest = responses(data)
      assert.equal(2, #list)
      assert.equal("", rest)
      assert.equal(404, list[1].status)
      assert.equal("/api/next", list[2].json.path)
      assert.equal(1, echo.stats().requests)
    end)

    it("answers nothing after a request with Connection: close", function()
      local data, closed = helpers.raw(gw.port, "GET /api/first HTTP/1.1\r\nHost: a\r\n"
        .. "Connection: close\r\n\r\nGET /api/second HTTP/1.1\r\nHost: a\r\n\r\n", { timeout = 3 })
      assert.is_true(closed)
      assert.equal(1, count(data, "HTTP/1.1 "))
      local res = parse(data)
      assert.equal(200, res.status)
      assert.equal("close", res.headers.connection)
      assert.equal("/api/first", res.json.path)
      assert.equal(1, echo.stats().requests)
    end)

    it("answers nothing after a rejected request in the same packet", function()
      local data, closed = helpers.raw(gw.port, "GET /api/a HTTP/1.1\r\nHost: a\r\n"
        .. "Content-Length: 0\r\nContent-Length: 0\r\n\r\nGET /api/b HTTP/1.1\r\nHost: a\r\n\r\n",
        { timeout = 3 })
      assert.is_true(closed)
      assert.equal(1, count(data, "HTTP/1.1 "))
      assert.equal(400, parse(data).status)
      assert.equal(0, echo.stats().requests)
    end)

    it("answers a valid pipelined request, then rejects the invalid one after it", function()
      local data, closed = helpers.raw(gw.port, "GET /api/ok HTTP/1.1\r\nHost: a\r\n\r\n"
        .. "GET /api/bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", { timeout = 3 })
      assert.is_true(closed)
      assert.equal(2, count(data, "HTTP/1.1 "))
      assert.truthy(data:find("^HTTP/1%.1 200 "))
      assert.truthy(data:find("\r\nHTTP/1%.1 400 ") or data:find("}HTTP/1%.1 400 "))
      assert.equal(1, echo.stats().requests)
    end)
  end)

  it("logged no errors", function()
    local bad = {}
    for line in gw.error_log():gmatch("[^\n]+") do
      if line:find("%[error%]") or line:find("%[crit%]") then
        bad[#bad + 1] = line
      end
    end
    assert.equal("", table.concat(bad, "\n"))
    assert.is_true(gw.alive())
  end)
end)
