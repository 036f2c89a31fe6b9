-- cors_spec.lua: the cors plugin through the real gateway and tg-echo:
-- preflights answered at the gateway (tg-echo's /__stats proves the
-- upstream never saw them) for allowed and refused origins; origin
-- matching at its edges (exact, case, regex anchored at both ends, "*",
-- "*" with credentials, "null"); actual requests proxied with or without
-- CORS headers; Vary: Origin merged with the upstream's; CORS headers on
-- other plugins' exits and on gateway errors; config errors.

local helpers = require "spec.helpers"

local FIXTURES = helpers.fixtures_path()

local conf_errors = helpers.conf_error_set

local header_values = helpers.header_values

local CORS_HEADERS = {
  "access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-methods",
  "access-control-allow-headers", "access-control-max-age", "access-control-expose-headers",
}

local function assert_no_cors(res)
  for _, h in ipairs(CORS_HEADERS) do
    assert.is_nil(res.headers[h], h)
  end
end

local function preflight(gw, path, origin, extra)
  local headers = { Origin = origin, ["Access-Control-Request-Method"] = "POST" }
  for k, v in pairs(extra or {}) do headers[k] = v end
  return assert(gw.request({ method = "OPTIONS", path = path, headers = headers }))
end

describe("cors", function()
  local echo, gw

  setup(function()
    echo = helpers.start_echo()
    local dead = helpers.free_port()
    local strict = {
      origins = { "https://app.example.com", "~https://[a-z0-9-]+\\.example\\.org" },
      methods = { "GET", "POST" },
      headers = { "Authorization", "Content-Type" },
      exposed_headers = { "X-Request-Id", "X-Total" },
      credentials = true,
      max_age = 600,
    }
    gw = helpers.start_gateway({
      plugins_path = { FIXTURES },
      upstreams = {
        echo = { targets = { { url = echo.url() } } },
        dead = { targets = { { url = "http://127.0.0.1:" .. dead } }, retries = 0,
                 passive_health = { max_fails = 0 } },
      },
      routes = {
        { name = "strict", paths = { "/strict" }, upstream = "echo", plugins = { cors = strict } },
        { name = "star", paths = { "/star" }, upstream = "echo", plugins = { cors = {} } },
        { name = "star-cred", paths = { "/starcred" }, upstream = "echo",
          plugins = { cors = { origins = { "*" }, credentials = true } } },
        { name = "null", paths = { "/null" }, upstream = "echo", plugins = { cors = { origins = { "null" } } } },
        { name = "exit", paths = { "/exit" }, upstream = "echo",
          plugins = { cors = strict, ["rt-exit"] = { status = 401, json = { error = "Unauthorized" } } } },
        { name = "dead", paths = { "/dead" }, upstream = "dead", plugins = { cors = strict } },
        { name = "get-only", paths = { "/getonly" }, methods = { "GET" }, upstream = "echo",
          plugins = { cors = strict } },
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  describe("preflight", function()
    it("is answered 204 at the gateway for an allowed origin", function()
      assert(echo.reset_stats())
      local res = preflight(gw, "/strict/x", "https://app.example.com", {
        ["Access-Control-Request-Headers"] = "X-Ignored" })
      assert.equal(204, res.status)
      assert.equal("", res.body)
      assert.is_nil(res.headers["content-length"])
      assert.is_nil(res.headers["content-type"])
      assert.equal("https://app.example.com", res.headers["access-control-allow-origin"])
      assert.equal("true", res.headers["access-control-allow-credentials"])
      assert.equal("GET, POST", res.headers["access-control-allow-methods"])
      assert.equal("Authorization, Content-Type", res.headers["access-control-allow-headers"])
      assert.equal("600", res.headers["access-control-max-age"])
      assert.same({ "Origin" }, header_values(res, "Vary"))
      assert.equal(0, echo.stats().requests)
    end)

    it("carries no CORS headers for a refused origin, and still skips the upstream", function()
      assert(echo.reset_stats())
      for _, origin in ipairs({
        "https://evil.example.com", "http://app.example.com", "https://app.example.com.evil.net",
        "https://shop.example.org.evil.net", "https://x.shop.example.org/", "null", "",
      }) do
        local res = preflight(gw, "/strict", origin)
        assert.equal(204, res.status)
        assert_no_cors(res)
        assert.same({ "Origin" }, header_values(res, "Vary"))
      end
      assert.equal(0, echo.stats().requests)
    end)

    it("matches exact origins case-insensitively and regex origins whole", function()
      for _, origin in ipairs({ "https://APP.Example.com", "https://shop.example.org", "https://a-1.example.org" }) do
        local res = preflight(gw, "/strict", origin)
        assert.equal(origin, res.headers["access-control-allow-origin"])
      end
    end)

    it("echoes the requested headers when none are configured", function()
      local res = preflight(gw, "/star", "https://any.test", {
        ["Access-Control-Request-Headers"] = "X-Foo, Content-Type" })
      assert.equal(204, res.status)
      assert.equal("*", res.headers["access-control-allow-origin"])
      assert.equal("X-Foo, Content-Type", res.headers["access-control-allow-headers"])
      assert.equal("GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS", res.headers["access-control-allow-methods"])
      assert.is_nil(res.headers["access-control-allow-credentials"])
      assert.is_nil(res.headers["access-control-max-age"])
      assert.is_nil(res.headers["vary"])
    end)

    it("proxies an OPTIONS request that is not a preflight", function()
      assert(echo.reset_stats())
      local res = assert(gw.request({ method = "OPTIONS", path = "/strict",
                                      headers = { Origin = "https://app.example.com" } }))
      assert.equal(200, res.status)
      assert.equal("OPTIONS", res.json.method)
      assert.equal("https://app.example.com", res.headers["access-control-allow-origin"])
      assert.equal(1, echo.stats().requests)
    end)

    it("never reaches the plugin on a route that does not accept OPTIONS", function()
      local res = preflight(gw, "/getonly", "https://app.example.com")
      assert.equal(404, res.status)
    end)
  end)

  describe("actual requests", function()
    it("get the CORS headers for an allowed origin", function()
      local res = assert(gw.request({ path = "/strict/a", headers = { Origin = "https://app.example.com" } }))
      assert.equal(200, res.status)
      assert.equal("https://app.example.com", res.json.headers.origin)
      assert.equal("https://app.example.com", res.headers["access-control-allow-origin"])
      assert.equal("true", res.headers["access-control-allow-credentials"])
      assert.equal("X-Request-Id, X-Total", res.headers["access-control-expose-headers"])
      assert.is_nil(res.headers["access-control-allow-methods"])   -- preflight only
      assert.is_nil(res.headers["access-control-max-age"])
      assert.same({ "Origin" }, header_values(res, "Vary"))
    end)

    it("are proxied without CORS headers for another origin", function()
      assert(echo.reset_stats())
      local res = assert(gw.request({ method = "POST", path = "/strict", body = "x",
                                      headers = { Origin = "https://evil.example.com" } }))
      assert.equal(200, res.status)
      assert.equal("x", res.json.body)
      assert_no_cors(res)
      assert.same({ "Origin" }, header_values(res, "Vary"))
      assert.equal(1, echo.stats().requests)
    end)

    it("without Origin get Vary: Origin only", function()
      local res = assert(gw.request({ path = "/strict" }))
      assert_no_cors(res)
      assert.same({ "Origin" }, header_values(res, "Vary"))
    end)

    it("merge Vary with the upstream's and replace its Access-Control-Allow-Origin", function()
      local res = assert(gw.request({ path = "/strict", headers = {
        { "Origin", "https://app.example.com" },
        { "X-Echo-Response-Header", "Vary: Accept-Encoding" },
        { "X-Echo-Response-Header", "Access-Control-Allow-Origin: *" } } }))
      assert.same({ "Accept-Encoding", "Origin" }, header_values(res, "Vary"))
      assert.same({ "https://app.example.com" }, header_values(res, "Access-Control-Allow-Origin"))

      res = assert(gw.request({ path = "/strict", headers = {
        { "Origin", "https://app.example.com" }, { "X-Echo-Response-Header", "Vary: Accept, origin" } } }))
      assert.same({ "Accept, origin" }, header_values(res, "Vary"))
    end)

    it("with \"*\" answer \"*\" and do not vary", function()
      local res = assert(gw.request({ path = "/star", headers = { Origin = "https://whoever.test" } }))
      assert.equal("*", res.headers["access-control-allow-origin"])
      assert.is_nil(res.headers["access-control-allow-credentials"])
      assert.is_nil(res.headers["vary"])
      res = assert(gw.request({ path = "/star", headers = { Origin = "null" } }))
      assert.equal("*", res.headers["access-control-allow-origin"])
    end)

    it("with \"*\" and credentials echo the origin, but never \"null\"", function()
      local res = assert(gw.request({ path = "/starcred", headers = { Origin = "https://whoever.test" } }))
      assert.equal("https://whoever.test", res.headers["access-control-allow-origin"])
      assert.equal("true", res.headers["access-control-allow-credentials"])
      assert.same({ "Origin" }, header_values(res, "Vary"))
      res = assert(gw.request({ path = "/starcred", headers = { Origin = "null" } }))
      assert_no_cors(res)
    end)

    it("allow \"null\" when it is listed", function()
      local res = assert(gw.request({ path = "/null", headers = { Origin = "null" } }))
      assert.equal("null", res.headers["access-control-allow-origin"])
      res = assert(gw.request({ path = "/null", headers = { Origin = "https://a.test" } }))
      assert_no_cors(res)
    end)

    it("keep their CORS headers on another plugin's exit and on gateway errors", function()
      assert(echo.reset_stats())
      local res = assert(gw.request({ path = "/exit", headers = { Origin = "https://app.example.com" } }))
      assert.equal(401, res.status)
      assert.same({ error = "Unauthorized" }, res.json)
      assert.equal("https://app.example.com", res.headers["access-control-allow-origin"])
      assert.equal(0, echo.stats().requests)

      -- A preflight on the same route is answered before the exit plugin runs.
      res = preflight(gw, "/exit", "https://app.example.com")
      assert.equal(204, res.status)

      res = assert(gw.request({ path = "/dead", headers = { Origin = "https://app.example.com" } }))
      assert.equal(502, res.status)
      assert.equal("https://app.example.com", res.headers["access-control-allow-origin"])
      assert.equal("X-Request-Id, X-Total", res.headers["access-control-expose-headers"])
    end)
  end)

  it("logs no errors besides the dead upstream's", function()
    for _, l in ipairs(helpers.error_lines(gw.error_log(), "error")) do
      assert.truthy(l:find('upstream "dead"', 1, true), l)
    end
  end)
end)

describe("cors config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports schema errors with their YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      upstreams = { echo = { targets = { { url = "http://127.0.0.1:1" } } } },
      routes = {
        { name = "a", paths = { "/a" }, upstream = "echo", plugins = { cors = {
          origins = { "https://a.example.com/", "~https://(x", "example.com" },
          methods = { "GE T" },
          max_age = -1,
          credentials = "yes",
          allow_all = true,
        } } },
        { name = "b", paths = { "/b" }, upstream = "echo", plugins = { cors = { origins = {} } } },
      },
    })
    assert.is_false(ok)
    local errs = conf_errors(out)
    local P = "routes[0].plugins.cors."
    local ORIGIN = 'expected "*", "null", an origin like https://app.example.com (no path) or ~regex'
    for _, want in ipairs({
      P .. "origins[0]: " .. ORIGIN,
      P .. 'origins[1]: invalid regex after "~": missing closing parenthesis at offset 10',
      P .. "origins[2]: " .. ORIGIN,
      P .. 'methods[0]: expected a string matching "^[%w!#$%%&\'*+%-.^_`|~]+$"',
      P .. "max_age: expected a non-negative integer",
      P .. "credentials: expected true or false",
      P .. "allow_all: unknown key",
      "routes[1].plugins.cors.origins: must not be empty",
    }) do
      assert.is_true(errs[want] == true, "missing: " .. want .. "\n" .. out)
    end
  end)
end)
