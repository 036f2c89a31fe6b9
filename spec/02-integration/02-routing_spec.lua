-- 02-routing_spec.lua: how the real gateway picks a route, through real
-- sockets: exact > longest prefix > regex, segment boundaries, hosts,
-- methods and ports narrowing, strip_prefix, path normalization, the 404,
-- static `response:` routes, echo routes, and a 10,000-route config.
--
-- Upstream routes point at separate tg-echo processes, one per letter, and
-- set preserve_host: false, so the Host an echo reports ("127.0.0.1:<its
-- port>") names the upstream that was hit; the client's Host still drives
-- host routing.

local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson.safe"

local fmt = string.format

local LETTERS = { "A", "B", "C", "D", "E", "F" }

describe("routing", function()
  local echo = {}        -- letter -> echo fixture
  local by_host = {}     -- "127.0.0.1:<port>" -> letter
  local gw, port2

  -- Sends req and returns the response plus the letter of the echo that
  -- answered (nil when the gateway answered itself).
  local function hit(req)
    local res, err = gw.request(req)
    assert(res, err)
    local who = res.json and type(res.json.headers) == "table" and by_host[res.json.headers.host]
    return res, who
  end

  local function reset_all()
    for _, l in ipairs(LETTERS) do
      assert(echo[l].reset_stats())
    end
  end

  local function total_requests()
    local n = 0
    for _, l in ipairs(LETTERS) do
      n = n + assert(echo[l].stats()).requests
    end
    return n
  end

  local function up(letter, name, paths, extra)
    local r = { name = name, paths = paths, upstream = letter, preserve_host = false }
    for k, v in pairs(extra or {}) do
      r[k] = v
    end
    return r
  end

  lazy_setup(function()
    local upstreams = {}
    for _, l in ipairs(LETTERS) do
      echo[l] = helpers.start_echo()
      by_host["127.0.0.1:" .. echo[l].port] = l
      upstreams[l] = { targets = { { url = echo[l].url() } } }
    end
    local port1 = helpers.free_port()
    port2 = helpers.free_port()
    gw = helpers.start_gateway({
      listen = { "127.0.0.1:" .. port1, "127.0.0.1:" .. port2 },
      upstreams = upstreams,
      routes = {
        -- precedence: the same string as exact, prefix and regex
        up("C", "p-regex", { "~^/p/exact" }),
        up("B", "p-prefix", { "/p/exact" }),
        up("A", "p-exact", { "=/p/exact" }),
        -- longest prefix and segment boundary
        up("A", "v1", { "/api/v1" }),
        up("B", "v1-users", { "/api/v1/users" }),
        up("E", "v1-orders", { "/api/v1/orders" }),
        up("F", "slash-end", { "/dir/" }),
        -- strip_prefix
        up("D", "strip-all", { "/s/users" }, { strip_prefix = "/s/users" }),
        up("D", "strip-part", { "/s/orders" }, { strip_prefix = "/s" }),
        up("D", "strip-slash", { "/t/" }, { strip_prefix = "/t/" }),
        up("D", "strip-other", { "/s/other" }, { strip_prefix = "/elsewhere" }),
        -- hosts: the hostless route comes first to show that order does not win
        up("C", "h-none", { "/h" }),
        up("B", "h-wild", { "/h" }, { hosts = { "*.example.com" } }),
        up("A", "h-exact", { "/h" }, { hosts = { "api.example.com", "other.test" } }),
        up("D", "h-deep-wild", { "/h" }, { hosts = { "*.deep.example.com" } }),
        up("A", "h-only", { "=/honly" }, { hosts = { "only.test" } }),
        -- methods: restricted route first (fall-through), and last
        -- (specificity must not depend on config order)
        up("A", "mf-post", { "/mf" }, { methods = { "POST", "PUT" } }),
        up("B", "mf-any", { "/mf" }),
        up("B", "m-any", { "/m" }),
        up("A", "m-post", { "/m" }, { methods = { "POST", "PUT" } }),
        up("A", "m-get-only", { "=/monly" }, { methods = { "GET" } }),
        up("B", "mm", { "/mm" }),
        up("A", "mm-x-put", { "/mm/x" }, { methods = { "PUT" } }),
        -- ports, the same two ways
        up("A", "portf-2", { "/portf" }, { ports = { port2 } }),
        up("B", "portf-any", { "/portf" }),
        up("B", "port-any", { "/port" }),
        up("A", "port-2", { "/port" }, { ports = { port2 } }),
        up("A", "port-2-only", { "=/ponly" }, { ports = { port2 } }),
        -- regexes, in config order
        up("C", "re-num", { "~^/r/[0-9]+$" }),
        up("D", "re-any", { "~^/r/" }),
        up("E", "re-ci", { "~(?i)^/ci/yes$" }),
        -- static and echo responses
        { name = "st-json", paths = { "=/static/json" }, response = {
            status = 201, json = { a = 1, b = { true, "x", 2.5 }, c = { d = helpers.null } },
            headers = { ["X-Static"] = "yes", ["Cache-Control"] = "no-store" } } },
        { name = "st-text", paths = { "=/static/text" }, response = {
            status = 418, body = "short and stout\n", content_type = "text/x-teapot" } },
        { name = "st-plain", paths = { "=/static/plain" }, response = { body = "plain" } },
        { name = "st-empty", paths = { "=/static/empty" }, response = { status = 204 } },
        { name = "st-304", paths = { "=/static/304" }, response = { status = 304, body = "stale" } },
        { name = "echo", paths = { "/echo" }, response = { echo = true } },
        { name = "echo-201", paths = { "/echo201" }, response = { echo = true, status = 201 } },
      },
    })
    assert.equal(port1, gw.port)
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  describe("precedence", function()
    it("an exact path beats a prefix and a regex of the same text", function()
      local res, who = hit({ path = "/p/exact" })
      assert.equal(200, res.status)
      assert.equal("A", who)
      assert.equal("/p/exact", res.json.path)
    end)

    it("a prefix beats a regex", function()
      local res, who = hit({ path = "/p/exact/more" })
      assert.equal(200, res.status)
      assert.equal("B", who)
      assert.equal("/p/exact/more", res.json.path)
      -- The exact route does not match with a query either way.
      res, who = hit({ path = "/p/exact?q=1" })
      assert.equal("A", who)
      assert.equal("q=1", res.json.query)
    end)

    it("the regex gets what no prefix takes", function()
      local res, who = hit({ path = "/p/exactZ" })
      assert.equal(200, res.status)
      assert.equal("C", who)
    end)

    it("the longest prefix wins", function()
      local _, who = hit({ path = "/api/v1/users/42" })
      assert.equal("B", who)
      _, who = hit({ path = "/api/v1/users" })
      assert.equal("B", who)
      _, who = hit({ path = "/api/v1/orders/7" })
      assert.equal("E", who)
      _, who = hit({ path = "/api/v1/other" })
      assert.equal("A", who)
      _, who = hit({ path = "/api/v1" })
      assert.equal("A", who)
    end)

    it("a prefix matches on a segment boundary only", function()
      local res, who = hit({ path = "/api/v1/usersX" })
      assert.equal(200, res.status)
      assert.equal("A", who)         -- falls back to /api/v1, not /api/v1/users
      assert.equal("/api/v1/usersX", res.json.path)
      _, who = hit({ path = "/api/v1/users/" })
      assert.equal("B", who)
      _, who = hit({ path = "/api/v1/users?x=1" })
      assert.equal("B", who)
      reset_all()
      res = hit({ path = "/api/v1X" })
      assert.equal(404, res.status)
      res = hit({ path = "/ap" })
      assert.equal(404, res.status)
      assert.equal(0, total_requests())
    end)

    it("a prefix ending in / matches below it but not the bare name", function()
      local res, who = hit({ path = "/dir/x/y" })
      assert.equal("F", who)
      res, who = hit({ path = "/dir/" })
      assert.equal("F", who)
      res = hit({ path = "/dir" })
      assert.equal(404, res.status)
      res = hit({ path = "/dirx" })
      assert.equal(404, res.status)
    end)
  end)

  describe("strip_prefix", function()
    it("strips the whole route path to /", function()
      local res, who = hit({ path = "/s/users" })
      assert.equal("D", who)
      assert.equal("/", res.json.path)
      res = hit({ path = "/s/users?a=1&b=%20two" })
      assert.equal("/", res.json.path)
      assert.equal("a=1&b=%20two", res.json.query)
      assert.equal("/?a=1&b=%20two", res.json.uri)
    end)

    it("keeps what follows the stripped part, and the query as sent", function()
      local res = hit({ path = "/s/users/42/profile?x=%2F&y=&z" })
      assert.equal("/42/profile", res.json.path)
      assert.equal("x=%2F&y=&z", res.json.query)
      res = hit({ path = "/s/users/" })
      assert.equal("/", res.json.path)
      res = hit({ path = "/s/orders/7" })
      assert.equal("/orders/7", res.json.path)
      res = hit({ path = "/s/orders" })
      assert.equal("/orders", res.json.path)
    end)

    it("a strip_prefix ending in / keeps the path's leading slash", function()
      local res, who = hit({ path = "/t/x/y" })
      assert.equal("D", who)
      assert.equal("/x/y", res.json.path)
      res = hit({ path = "/t/" })
      assert.equal("/", res.json.path)
    end)

    it("a strip_prefix that is not a prefix of the path changes nothing", function()
      local res = hit({ path = "/s/other/1" })
      assert.equal("/s/other/1", res.json.path)
    end)

    it("an empty query is kept as an empty query", function()
      local res = hit({ path = "/s/users/1?" })
      assert.equal("/1", res.json.path)
      assert.equal("", res.json.query)
    end)
  end)

  describe("hosts", function()
    it("an exact host beats a wildcard, which beats none", function()
      local _, who = hit({ path = "/h", host = "api.example.com" })
      assert.equal("A", who)
      _, who = hit({ path = "/h/sub", host = "other.test" })
      assert.equal("A", who)
      _, who = hit({ path = "/h", host = "www.example.com" })
      assert.equal("B", who)
      _, who = hit({ path = "/h", host = "a.b.example.com" })
      assert.equal("B", who)
      _, who = hit({ path = "/h", host = "unrelated.org" })
      assert.equal("C", who)
    end)

    it("a longer wildcard beats a shorter one", function()
      local _, who = hit({ path = "/h", host = "x.deep.example.com" })
      assert.equal("D", who)
    end)

    it("a trailing dot in the Host header names the same host", function()
      local _, who = hit({ path = "/h", host = "api.example.com." })
      assert.equal("A", who)
      _, who = hit({ path = "/h", host = "www.example.com.:80" })
      assert.equal("B", who)
    end)

    it("a wildcard needs at least one label before its suffix", function()
      local _, who = hit({ path = "/h", host = "example.com" })
      assert.equal("C", who)
      _, who = hit({ path = "/h", host = "notexample.com" })
      assert.equal("C", who)
    end)

    it("ignores the port and the case of the Host header", function()
      local _, who = hit({ path = "/h", host = "api.example.com:8080" })
      assert.equal("A", who)
      _, who = hit({ path = "/h", host = "API.Example.COM" })
      assert.equal("A", who)
      _, who = hit({ path = "/h", host = "WWW.EXAMPLE.COM:443" })
      assert.equal("B", who)
    end)

    it("uses the absolute-form authority over the Host header", function()
      local res = assert(helpers.request(gw.port, {
        path = "http://api.example.com/h", host = "unrelated.org" }))
      assert.equal(200, res.status)
      assert.equal("A", by_host[res.json.headers.host])
    end)

    it("a host-only route does not match other hosts (404)", function()
      reset_all()
      local res = hit({ path = "/honly", host = "only.test" })
      assert.equal(200, res.status)
      assert.equal(1, total_requests())
      res = hit({ path = "/honly", host = "nope.test" })
      assert.equal(404, res.status)
      assert.same({ error = "Not Found" }, res.json)
      res = hit({ path = "/honly", version = "1.0", no_host = true })
      assert.equal(404, res.status)
      assert.equal(1, total_requests())
    end)
  end)

  describe("methods", function()
    it("narrow a route; other methods fall through to the next candidate", function()
      local res, who = hit({ method = "POST", path = "/mf", body = "b" })
      assert.equal("A", who)
      assert.equal("b", res.json.body)
      _, who = hit({ method = "PUT", path = "/mf/1", body = "" })
      assert.equal("A", who)
      _, who = hit({ path = "/mf" })
      assert.equal("B", who)
      _, who = hit({ method = "DELETE", path = "/mf/x" })
      assert.equal("B", who)
    end)

    it("a route listing the method beats one listing none, whatever the config order", function()
      local res, who = hit({ method = "POST", path = "/m", body = "b" })
      assert.equal("A", who)
      assert.equal("b", res.json.body)
      _, who = hit({ method = "PUT", path = "/m/1", body = "" })
      assert.equal("A", who)
      _, who = hit({ path = "/m" })
      assert.equal("B", who)
      _, who = hit({ method = "DELETE", path = "/m" })
      assert.equal("B", who)
    end)

    it("fall back to a shorter prefix", function()
      local _, who = hit({ method = "PUT", path = "/mm/x", body = "" })
      assert.equal("A", who)
      local res
      res, who = hit({ path = "/mm/x" })
      assert.equal("B", who)
      assert.equal("/mm/x", res.json.path)
    end)

    it("404 when no route allows the method", function()
      reset_all()
      local res, who = hit({ path = "/monly" })
      assert.equal("A", who)
      res = hit({ method = "DELETE", path = "/monly" })
      assert.equal(404, res.status)
      res = hit({ method = "POST", path = "/monly", body = "x" })
      assert.equal(404, res.status)
      assert.equal(1, total_requests())
    end)

    it("are case-sensitive in the config", function()
      local ok, out = helpers.test_config({
        listen = { "127.0.0.1:" .. helpers.free_port() },
        routes = { { name = "r", paths = { "/" }, methods = { "get", "FETCH" }, response = { body = "x" } } },
      })
      assert.is_false(ok)
      assert.truthy(out:find('routes[0].methods[0]: unknown method "get"', 1, true), out)
      assert.truthy(out:find('routes[0].methods[1]: unknown method "FETCH"', 1, true), out)
    end)
  end)

  describe("ports", function()
    it("narrow a route to one listener; the other falls through", function()
      local res = assert(helpers.request(port2, { path = "/portf" }))
      assert.equal("A", by_host[res.json.headers.host])
      local _, who = hit({ path = "/portf/x" })
      assert.equal("B", who)
    end)

    it("a route listing the port beats one listing none, whatever the config order", function()
      local res = assert(helpers.request(port2, { path = "/port" }))
      assert.equal("A", by_host[res.json.headers.host])
      local _, who = hit({ path = "/port" })
      assert.equal("B", who)
    end)

    it("404 on the other listener when only that port is allowed", function()
      local res = assert(helpers.request(port2, { path = "/ponly" }))
      assert.equal(200, res.status)
      assert.equal("A", by_host[res.json.headers.host])
      res = hit({ path = "/ponly" })
      assert.equal(404, res.status)
    end)

    it("a port no listener has is a config error", function()
      local ok, out = helpers.test_config({
        listen = { "127.0.0.1:" .. helpers.free_port() },
        routes = { { name = "r", paths = { "/" }, ports = { 1 }, response = { body = "x" } } },
      })
      assert.is_false(ok)
      assert.truthy(out:find("routes[0].ports[0]: no listen entry has port 1", 1, true), out)
    end)
  end)

  describe("regex routes", function()
    it("are tried in config order", function()
      local _, who = hit({ path = "/r/123" })
      assert.equal("C", who)
      _, who = hit({ path = "/r/abc" })
      assert.equal("D", who)
      _, who = hit({ path = "/r/123/x" })
      assert.equal("D", who)
    end)

    it("are case-sensitive unless the pattern says otherwise", function()
      local res = hit({ path = "/R/1" })
      assert.equal(404, res.status)
      local _, who = hit({ path = "/CI/YES" })
      assert.equal("E", who)
    end)

    it("match the normalized path, without the query", function()
      local res, who = hit({ path = "/r/x/../123?z=9" })
      assert.equal("C", who)
      assert.equal("/r/123", res.json.path)
      assert.equal("z=9", res.json.query)
      _, who = hit({ path = "/r/%31%32" })
      assert.equal("C", who)
    end)
  end)

  describe("no route", function()
    it("404 with a JSON body and nothing sent upstream", function()
      reset_all()
      for _, m in ipairs({ "GET", "POST", "DELETE" }) do
        local res = hit({ method = m, path = "/nope", body = m == "POST" and "data" or nil })
        assert.equal(404, res.status)
        assert.equal("application/json", res.headers["content-type"])
        assert.equal('{"error":"Not Found"}', res.body)
        assert.equal(tostring(#res.body), res.headers["content-length"])
      end
      assert.equal(0, total_requests())
    end)

    it("keeps the connection open after a 404 (with and without a body)", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ path = "/nope" }))
      assert.equal(404, res.status)
      res = assert(conn:request({ method = "POST", path = "/nope", body = "abc" }))
      assert.equal(404, res.status)
      local who
      res = assert(conn:request({ path = "/api/v1/users/9" }))
      who = by_host[res.json.headers.host]
      assert.equal("B", who)
      conn:close()
    end)

    it("HEAD of an unknown path has the 404 head and no body", function()
      local data, closed = helpers.raw(gw.port,
        "HEAD /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.truthy(data:find("^HTTP/1.1 404 "), data)
      assert.is_true(closed)
      assert.equal("", data:match("\r\n\r\n(.*)$"))
    end)
  end)

  describe("path normalization", function()
    it("resolves dot segments before routing and forwarding", function()
      local res, who = hit({ path = "/api/v1/users/../orders" })
      assert.equal("E", who)
      assert.equal("/api/v1/orders", res.json.path)
      res, who = hit({ path = "/api/./v1/users/./7" })
      assert.equal("B", who)
      assert.equal("/api/v1/users/7", res.json.path)
      res, who = hit({ path = "/api/v1/users/42/.." })
      assert.equal("B", who)
      assert.equal("/api/v1/users/", res.json.path)
    end)

    it("decodes percent-encoded dots and unreserved characters", function()
      local res, who = hit({ path = "/api/v1/users/%2e%2e/orders" })
      assert.equal("E", who)
      assert.equal("/api/v1/orders", res.json.path)
      res, who = hit({ path = "/api/v1/users/%2E%2E/orders" })
      assert.equal("E", who)
      res, who = hit({ path = "/api/v1/%75sers/1" })
      assert.equal("B", who)
      assert.equal("/api/v1/users/1", res.json.path)
    end)

    it("keeps an encoded slash as written (it is not a segment boundary)", function()
      local res, who = hit({ path = "/api/v1/users%2F42" })
      assert.equal("A", who)
      assert.equal("/api/v1/users%2F42", res.json.path)
    end)

    it("a path climbing above / is a 400 that never reaches an upstream", function()
      reset_all()
      for _, p in ipairs({ "/../x", "/api/../../x", "/%2e%2e/x", "/api/v1/%2E%2E/%2e%2e/%2e%2e/etc",
                           "/api/v1/users/..%2f..%2f..%2fetc" }) do
        local data, closed = helpers.raw(gw.port, "GET " .. p .. " HTTP/1.1\r\nHost: x\r\n\r\n")
        if p:find("%%2f") then
          -- "%2f" is kept encoded, so this one does not climb: it routes.
          assert.truthy(data:find("^HTTP/1.1 200 "), p .. ": " .. data)
        else
          assert.truthy(data:find("^HTTP/1.1 400 "), p .. ": " .. data)
          assert.is_true(closed, p)
          assert.truthy(data:find('{"error":"Bad Request"}', 1, true), p)
        end
      end
      assert.equal(1, total_requests())
    end)

    it("a malformed or NUL percent-escape is a 400", function()
      reset_all()
      for _, p in ipairs({ "/api/v1/%zz", "/api/v1/%2", "/api/v1/%00x" }) do
        local data = helpers.raw(gw.port, "GET " .. p .. " HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.truthy(data:find("^HTTP/1.1 400 "), p .. ": " .. data)
      end
      assert.equal(0, total_requests())
    end)
  end)

  describe("static responses", function()
    it("answer with the configured status, JSON body and headers", function()
      reset_all()
      local res = hit({ path = "/static/json" })
      assert.equal(201, res.status)
      assert.equal("application/json", res.headers["content-type"])
      assert.same({ a = 1, b = { true, "x", 2.5 }, c = { d = cjson.null } }, res.json)
      assert.equal(tostring(#res.body), res.headers["content-length"])
      assert.equal("yes", res.headers["x-static"])
      assert.equal("no-store", res.headers["cache-control"])
      assert.equal(0, total_requests())
    end)

    it("answer with a text body and a custom content type", function()
      local res = hit({ path = "/static/text" })
      assert.equal(418, res.status)
      assert.equal("short and stout\n", res.body)
      assert.equal("text/x-teapot", res.headers["content-type"])
      res = hit({ path = "/static/plain" })
      assert.equal(200, res.status)
      assert.equal("plain", res.body)
      assert.truthy(res.headers["content-type"]:find("^text/plain"))
    end)

    it("a 204 has no body and no Content-Length", function()
      local data = helpers.raw(gw.port, "GET /static/empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.truthy(data:find("^HTTP/1.1 204 "), data)
      assert.equal("", data:match("\r\n\r\n(.*)$"))
      assert.falsy(data:lower():find("\r\ncontent%-length:"), data)
    end)

    it("a 304 sends no body even when one is configured", function()
      local data = helpers.raw(gw.port, "GET /static/304 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.truthy(data:find("^HTTP/1.1 304 "), data)
      assert.equal("", data:match("\r\n\r\n(.*)$"))
    end)

    it("a 1xx status is a config error (it cannot end a response)", function()
      for _, st in ipairs({ 100, 101, 103 }) do
        local ok, out = helpers.test_config({
          listen = { "127.0.0.1:" .. helpers.free_port() },
          routes = { { name = "r", paths = { "/" }, response = { status = st, body = "x" } } },
        })
        assert.is_false(ok, st .. ": " .. out)
        assert.truthy(out:find("routes[0].response.status", 1, true), out)
      end
    end)

    it("HEAD gets the head with the GET's length and no body", function()
      local get = hit({ path = "/static/json" })
      local data, closed = helpers.raw(gw.port,
        "HEAD /static/json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(closed)
      assert.truthy(data:find("^HTTP/1.1 201 "), data)
      assert.truthy(data:find("\r\nContent-Length: " .. #get.body .. "\r\n", 1, true), data)
      assert.equal("", data:match("\r\n\r\n(.*)$"))
      -- On a kept-alive connection the next response follows right away.
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ method = "HEAD", path = "/static/text" }))
      assert.equal(418, res.status)
      assert.equal("", res.body)
      res = assert(conn:request({ path = "/static/text" }))
      assert.equal("short and stout\n", res.body)
      conn:close()
    end)

    it("skip a request body and keep the connection", function()
      local conn = assert(helpers.connect(gw.port))
      local res = assert(conn:request({ method = "POST", path = "/static/plain", body = ("z"):rep(1000) }))
      assert.equal(200, res.status)
      assert.equal("plain", res.body)
      res = assert(conn:request({ method = "POST", path = "/static/plain",
        headers = { ["Transfer-Encoding"] = "chunked" }, body = "3\r\nabc\r\n0\r\n\r\n" }))
      assert.equal("plain", res.body)
      res = assert(conn:request({ path = "/static/text" }))
      assert.equal(418, res.status)
      conn:close()
    end)
  end)

  describe("echo responses", function()
    it("return method, path, query, headers and body as JSON", function()
      reset_all()
      local res = hit({ method = "POST", path = "/echo/x/../y?a=1&b=two",
        headers = { ["X-Foo"] = "bar", ["Content-Type"] = "application/json" }, body = '{"k":"v"}' })
      assert.equal(200, res.status)
      assert.equal("application/json", res.headers["content-type"])
      local j = res.json
      assert.equal("POST", j.method)
      assert.equal("/echo/y", j.path)
      assert.equal("a=1&b=two", j.query)
      assert.equal("bar", j.headers["x-foo"])
      assert.equal("localhost", j.headers.host)
      assert.equal("9", j.headers["content-length"])
      assert.equal('{"k":"v"}', j.body)
      assert.equal("echo", j.route)
      assert.equal(0, total_requests())
    end)

    it("say query null without a '?', and use the route's status", function()
      local res = hit({ path = "/echo201" })
      assert.equal(201, res.status)
      assert.equal(cjson.null, res.json.query)
      assert.equal("", res.json.body)
      assert.equal("GET", res.json.method)
    end)

    it("echo a chunked body and a body sent in pieces", function()
      local res = hit({ method = "PUT", path = "/echo",
        headers = { ["Transfer-Encoding"] = "chunked" }, body = "4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n" })
      assert.equal(200, res.status)
      assert.equal("Wikipedia", res.json.body)
      local conn = assert(helpers.connect(gw.port))
      assert(conn:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello"))
      helpers.sleep(0.1)
      assert(conn:send(" you"))
      helpers.sleep(0.1)
      assert(conn:send("!"))
      res = assert(conn:read_response())
      assert.equal("hello you!", res.json.body)
      conn:close()
    end)

    it("echo a UTF-8 body and quotes/control characters as they were", function()
      local body = 'h\195\169llo "w\\rld"\n\t\1'
      local res = hit({ method = "POST", path = "/echo", body = body })
      assert.equal(200, res.status)
      assert.truthy(res.json, res.body)
      assert.equal(body, res.json.body)
    end)

    it("HEAD has no body", function()
      local data, closed = helpers.raw(gw.port,
        "HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(closed)
      assert.truthy(data:find("^HTTP/1.1 200 "), data)
      assert.equal("", data:match("\r\n\r\n(.*)$"))
    end)
  end)

  it("answers pipelined requests for different kinds of routes in order", function()
    local conn = assert(helpers.connect(gw.port))
    local reqs = {
      { path = "/api/v1/users/1" }, { path = "/static/text" }, { path = "/nope" },
      { method = "POST", path = "/echo", body = "e" }, { path = "/h", host = "api.example.com" },
      { method = "HEAD", path = "/static/json" }, { path = "/r/5" },
    }
    local bytes = {}
    for i, r in ipairs(reqs) do
      bytes[i] = helpers.encode_request(r)
    end
    assert(conn:send(table.concat(bytes)))
    local expect = { { 200, "B" }, { 418 }, { 404 }, { 200, nil, "e" }, { 200, "A" }, { 201 }, { 200, "C" } }
    for i, e in ipairs(expect) do
      local res = assert(conn:read_response(reqs[i]))
      assert.equal(e[1], res.status, "request " .. i)
      if e[2] then
        assert.equal(e[2], by_host[res.json.headers.host], "request " .. i)
      end
      if e[3] then
        assert.equal(e[3], res.json.body)
      end
    end
    conn:close()
  end)

  it("left no [error] or [crit] in the error log", function()
    local log = gw.error_log()
    assert.falsy(log:find("[crit]", 1, true), log)
    assert.falsy(log:find("[error]", 1, true), log)
  end)
end)

describe("a 10,000-route config", function()
  local N = 10000
  local gw, echo, text

  lazy_setup(function()
    echo = helpers.start_echo()
    local out = {
      "listen: [\"127.0.0.1:" .. helpers.free_port() .. "\"]",
      "admin: { listen: \"127.0.0.1:" .. helpers.free_port() .. "\" }",
      "worker_processes: 1",
      "error_log: { path: stderr, level: info }",
      "access_log: { path: \"off\" }",
      "upstreams:",
      "  svc: { targets: [ { url: \"" .. echo.url() .. "\" } ] }",
      "routes:",
    }
    -- Mostly prefixes sharing long common parts (the radix tree's hard
    -- case), every tenth an exact path, every hundredth a regex; every
    -- route answers with its own number, route N goes to the echo.
    for i = 1, N do
      local path
      if i % 100 == 0 then
        path = fmt("~^/re/%d/[a-z]+$", i)
      elseif i % 10 == 0 then
        path = fmt("=/exact/%d", i)
      else
        path = fmt("/api/v1/tenants/%d/items", i)
      end
      if i == N then
        out[#out + 1] = fmt('  - { name: "r%d", paths: ["/last/%d"], upstream: svc, strip_prefix: "/last" }', i, i)
      else
        out[#out + 1] = fmt('  - { name: "r%d", paths: ["%s"], response: { json: { n: %d } } }', i, path, i)
      end
    end
    text = table.concat(out, "\n") .. "\n"
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("passes -t", function()
    local t0 = socket.gettime()
    local ok, output = helpers.test_config(text)
    print(fmt("\n  -t of %d routes: %.3f s", N, socket.gettime() - t0))
    assert.is_true(ok, output)
  end)

  it("loads and matches the first, middle and last routes", function()
    local t0 = socket.gettime()
    gw = helpers.start_gateway(text, { timeout = 20 })
    print(fmt("  start with %d routes: %.3f s", N, socket.gettime() - t0))
    local function n_of(path)
      local res = assert(gw.request({ path = path }))
      return res.status, res.json and res.json.n
    end
    t0 = socket.gettime()
    assert.same({ 200, 1 }, { n_of("/api/v1/tenants/1/items") })
    assert.same({ 200, 1 }, { n_of("/api/v1/tenants/1/items/deep/x") })
    assert.same({ 200, 5001 }, { n_of("/api/v1/tenants/5001/items/7") })
    assert.same({ 200, 9999 }, { n_of("/api/v1/tenants/9999/items") })
    assert.same({ 200, 5000 }, { n_of("/re/5000/abc") })
    assert.same({ 200, 100 }, { n_of("/re/100/z") })
    assert.same({ 200, 9990 }, { n_of("/exact/9990") })
    assert.same({ 200, 10 }, { n_of("/exact/10") })
    -- Near misses: a boundary, a missing exact, a regex that does not fit.
    assert.same({ 404 }, { n_of("/api/v1/tenants/1/itemsX") })
    assert.same({ 404 }, { n_of("/api/v1/tenants/10/items") })
    assert.same({ 404 }, { n_of("/exact/11") })
    assert.same({ 404 }, { n_of("/re/5000/ABC") })
    assert.same({ 404 }, { n_of("/api/v1/tenants/10001/items") })
    local res = assert(gw.request({ path = "/last/10000/x?q=1" }))
    assert.equal(200, res.status)
    assert.equal("/10000/x", res.json.path)
    assert.equal("q=1", res.json.query)
    print(fmt("  14 lookups: %.3f s", socket.gettime() - t0))
    local log = gw.stderr()
    assert.falsy(log:find("[error]", 1, true), log)
    assert.falsy(log:find("[crit]", 1, true), log)
  end)
end)
