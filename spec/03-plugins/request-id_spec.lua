-- request-id_spec.lua: the request-id plugin through the real gateway and
-- tg-echo: which incoming ids are kept and which are replaced (the 128-char
-- and visible-ASCII edges), that one id reaches the upstream, the client,
-- the access log and the request's error-log lines, that error and local
-- responses carry it too, and W3C traceparent validation edge by edge.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local rep = string.rep
local UUID4 = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
local TRACEPARENT = "^00%-[0-9a-f]+%-[0-9a-f]+%-0[01]$"

local conf_errors = helpers.conf_error_set

-- The access-log entries (decoded) whose path is `path`.
local function access_entries(gw, path)
  local out = {}
  for _, line in ipairs(gw.access_log()) do
    local e = cjson.decode(line)
    if e and e.path == path then out[#out + 1] = e end
  end
  return out
end

-- How many times the upstream received header `name` (lowercase).
local function count_header(echo_json, name)
  local n = 0
  for _, pair in ipairs(echo_json.header_list) do
    if pair[1]:lower() == name then n = n + 1 end
  end
  return n
end

describe("request-id", function()
  local echo, gw

  setup(function()
    echo = helpers.start_echo()
    local dead = helpers.free_port()
    gw = helpers.start_gateway({
      upstreams = {
        echo = { targets = { { url = echo.url() } } },
        dead = { targets = { { url = "http://127.0.0.1:" .. dead } }, retries = 0,
                 passive_health = { max_fails = 0 } },
      },
      plugins = { ["request-id"] = {} },
      routes = {
        { name = "default", paths = { "/default" }, upstream = "echo" },
        { name = "strict", paths = { "/strict" }, upstream = "echo",
          plugins = { ["request-id"] = { trust_incoming = false, header_name = "X-Correlation-Id" } } },
        { name = "quiet", paths = { "/quiet" }, upstream = "echo",
          plugins = { ["request-id"] = { echo_downstream = false, traceparent = false } } },
        { name = "unsampled", paths = { "/unsampled" }, upstream = "echo",
          plugins = { ["request-id"] = { trace_sampled = false } } },
        { name = "off", paths = { "/off" }, upstream = "echo", plugins = { ["request-id"] = false } },
        { name = "dead", paths = { "/dead" }, upstream = "dead" },
        { name = "static", paths = { "/static" }, response = { status = 201, json = { ok = true } } },
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  describe("id", function()
    it("generates a UUIDv4 when the client sends none, the same one everywhere", function()
      local res = assert(gw.request({ path = "/default/a" }))
      assert.equal(200, res.status)
      local id = res.headers["x-request-id"]
      assert.matches(UUID4, id)
      assert.equal(id, res.json.headers["x-request-id"])
      assert.equal(1, count_header(res.json, "x-request-id"))
      local entry
      assert(helpers.wait_until(function()
        entry = access_entries(gw, "/default/a")[1]
        return entry
      end, 3))
      assert.equal(id, entry.request_id)
    end)

    it("generates distinct ids", function()
      local seen = {}
      for _ = 1, 200 do
        local res = assert(gw.request({ path = "/default" }))
        local id = res.headers["x-request-id"]
        assert.matches(UUID4, id)
        assert.is_nil(seen[id])
        seen[id] = true
      end
    end)

    it("keeps a sane incoming id, up to 128 visible ASCII characters", function()
      for _, id in ipairs({
        "a", "abc-123_XYZ.~!", "req:42/7?x=1&y=(2)", "'single'", "{json-ish}",
        rep("z", 128),
      }) do
        local res = assert(gw.request({ path = "/default", headers = { ["X-Request-Id"] = id } }))
        assert.equal(id, res.headers["x-request-id"])
        assert.equal(id, res.json.headers["x-request-id"])
      end
    end)

    it("replaces an id that is too long, empty, or not visible ASCII", function()
      for _, id in ipairs({
        rep("z", 129), "", "two words", "tab\there", "quote\"inside", "back\\slash",
        "caf\195\169",    -- (DEL and other controls never get this far: the core answers 400)
      }) do
        local res = assert(gw.request({ path = "/default", headers = { { "X-Request-Id", id } } }))
        assert.equal(200, res.status)
        local got = res.headers["x-request-id"]
        assert.matches(UUID4, got, "kept " .. id)
        assert.equal(got, res.json.headers["x-request-id"])
      end
    end)

    it("collapses repeated incoming headers into the one id", function()
      local res = assert(gw.request({ path = "/default", headers = {
        { "X-Request-Id", "first" }, { "X-Request-Id", "second" } } }))
      assert.equal("first", res.headers["x-request-id"])
      assert.equal(1, count_header(res.json, "x-request-id"))
      assert.equal("first", res.json.headers["x-request-id"])
    end)

    it("with trust_incoming false always generates, under its own header name", function()
      local res = assert(gw.request({ path = "/strict", headers = {
        ["X-Correlation-Id"] = "client-chosen", ["X-Request-Id"] = "other" } }))
      local id = res.headers["x-correlation-id"]
      assert.matches(UUID4, id)
      assert.equal(id, res.json.headers["x-correlation-id"])
      -- The default header name is not touched on this route.
      assert.equal("other", res.json.headers["x-request-id"])
      assert.is_nil(res.headers["x-request-id"])
    end)

    it("with echo_downstream false sends the id upstream only", function()
      local res = assert(gw.request({ path = "/quiet", headers = { ["X-Request-Id"] = "q-1" } }))
      assert.is_nil(res.headers["x-request-id"])
      assert.equal("q-1", res.json.headers["x-request-id"])
      assert.is_nil(res.json.headers["traceparent"])
    end)

    it("is disabled on a route with request-id: false", function()
      local res = assert(gw.request({ path = "/off" }))
      assert.is_nil(res.headers["x-request-id"])
      assert.is_nil(res.json.headers["x-request-id"])
      assert.is_nil(res.json.headers["traceparent"])
    end)

    it("replaces the upstream's own X-Request-Id in the response", function()
      local res = assert(gw.request({ path = "/default", headers = {
        ["X-Request-Id"] = "mine", ["X-Echo-Response-Header"] = "X-Request-Id: upstreams" } }))
      assert.equal("mine", res.headers["x-request-id"])
      local n = 0
      for _, h in ipairs(res.header_list) do
        if h[1]:lower() == "x-request-id" then n = n + 1 end
      end
      assert.equal(1, n)
    end)

    it("is on gateway errors and static responses, and on the error-log lines", function()
      local res = assert(gw.request({ path = "/dead", headers = { ["X-Request-Id"] = "dead-42" } }))
      assert.equal(502, res.status)
      assert.same({ error = "Bad Gateway" }, res.json)
      assert.equal("dead-42", res.headers["x-request-id"])
      local line
      assert(helpers.wait_until(function()
        for _, l in ipairs(helpers.error_lines(gw.error_log(), "error")) do
          if l:find('upstream "dead"', 1, true) then line = l return true end
        end
      end, 3))
      assert.truthy(line:find('request_id="dead-42"', 1, true), line)
      local entry
      assert(helpers.wait_until(function()
        entry = access_entries(gw, "/dead")[1]
        return entry
      end, 3))
      assert.equal("dead-42", entry.request_id)
      assert.equal(502, entry.status)

      res = assert(gw.request({ path = "/static", headers = { ["X-Request-Id"] = "st-1" } }))
      assert.equal(201, res.status)
      assert.equal("st-1", res.headers["x-request-id"])
    end)
  end)

  describe("traceparent", function()
    local VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    it("propagates a valid one unchanged, with its tracestate", function()
      local res = assert(gw.request({ path = "/default", headers = {
        traceparent = VALID, tracestate = "congo=t61rcWkgMzE" } }))
      assert.equal(VALID, res.json.headers["traceparent"])
      assert.equal("congo=t61rcWkgMzE", res.json.headers["tracestate"])
    end)

    it("accepts a future version with extra fields", function()
      local future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds"
      local res = assert(gw.request({ path = "/default", headers = { traceparent = future } }))
      assert.equal(future, res.json.headers["traceparent"])
    end)

    it("creates one when absent: version 00, sampled, random ids", function()
      local a = assert(gw.request({ path = "/default" })).json.headers["traceparent"]
      local b = assert(gw.request({ path = "/default" })).json.headers["traceparent"]
      for _, tp in ipairs({ a, b }) do
        assert.matches(TRACEPARENT, tp)
        assert.equal(55, #tp)
        assert.equal("-01", tp:sub(-3))
      end
      assert.not_equal(a:sub(4, 35), b:sub(4, 35))
      assert.not_equal(a:sub(37, 52), b:sub(37, 52))
    end)

    it("creates unsampled ones when trace_sampled is false", function()
      local tp = assert(gw.request({ path = "/unsampled" })).json.headers["traceparent"]
      assert.matches(TRACEPARENT, tp)
      assert.equal("-00", tp:sub(-3))
    end)

    it("replaces every invalid form and drops its tracestate", function()
      for _, bad in ipairs({
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",   -- uppercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   -- zero trace-id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   -- zero parent-id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   -- version ff
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",    -- short trace-id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",    -- short parent-id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", -- 00 with extra
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  -- extra without "-"
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",    -- short flags
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   -- not hex
        "garbage",
      }) do
        local res = assert(gw.request({ path = "/default", headers = {
          traceparent = bad, tracestate = "congo=t61rcWkgMzE" } }))
        local tp = res.json.headers["traceparent"]
        assert.not_equal(bad, tp)
        assert.matches(TRACEPARENT, tp, bad)
        assert.is_nil(res.json.headers["tracestate"], bad)
      end
    end)
  end)

  it("logs no errors besides the dead upstream's", function()
    for _, l in ipairs(helpers.error_lines(gw.error_log(), "error")) do
      assert.truthy(l:find('upstream "dead"', 1, true), l)
    end
  end)
end)

describe("request-id config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports schema errors with their YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      upstreams = { echo = { targets = { { url = "http://127.0.0.1:1" } } } },
      plugins = { ["request-id"] = { header_name = "X Bad" } },
      routes = { { name = "r", paths = { "/r" }, upstream = "echo",
                   plugins = { ["request-id"] = { header_name = "Content-Length", echo = true,
                                                  trust_incoming = "yes" } } } },
    })
    assert.is_false(ok)
    local errs = conf_errors(out)
    for _, want in ipairs({
      'plugins.request-id.header_name: expected a string matching "^[%w!#$%%&\'*+%-.^_`|~]+$"',
      "routes[0].plugins.request-id.header_name: cannot be Content-Length",
      "routes[0].plugins.request-id.echo: unknown key",
      "routes[0].plugins.request-id.trust_incoming: expected true or false",
    }) do
      assert.is_true(errs[want] == true, "missing: " .. want .. "\n" .. out)
    end
  end)
end)
