-- example-header_spec.lua: the example custom plugin of README "Write a
-- plugin" (conf/examples/plugins/example-header.lua) and its example config
-- (conf/examples/example-plugin.yaml). Also the model for a plugin spec: a
-- real gateway with the plugin configured, tg-echo as the upstream, and
-- assertions on what the client got and what the upstream received.

local helpers = require "spec.helpers"

local PLUGINS = helpers.repo_root() .. "/conf/examples/plugins"

describe("example-header plugin", function()
  local echo, gw

  lazy_setup(function()
    echo = helpers.start_echo()
    gw = helpers.start_gateway({
      plugins_path = { PLUGINS },
      upstreams = { api = { targets = { { url = echo.url() } } } },
      -- Global config: every route gets X-Env unless it says otherwise.
      plugins = { ["example-header"] = { header = "X-Env", value = "test" } },
      routes = {
        { name = "api", paths = { "/api" }, upstream = "api",
          plugins = { ["example-header"] = {
            header = "X-Served-By", value = "tollgate", add_to = "both",
            blocked_user_agents = { "BadBot", "evil-scanner" } } } },
        { name = "req-only", paths = { "/req-only" }, upstream = "api",
          plugins = { ["example-header"] = { value = "up", add_to = "request" } } },
        { name = "custom", paths = { "/custom" }, upstream = "api",
          plugins = { ["example-header"] = { value = "v", status = 451, message = "go away",
                                             blocked_user_agents = { "x" } } } },
        { name = "off", paths = { "/off" }, upstream = "api", plugins = { ["example-header"] = false } },
        { name = "health", paths = { "=/health" }, response = { status = 200, json = { status = "ok" } } },
      },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("adds the header to the response and to the request the upstream sees", function()
    local res = assert(gw.request({ path = "/api/hello", headers = { ["User-Agent"] = "curl/8.0" } }))
    assert.equal(200, res.status)
    assert.equal("tollgate", res.headers["x-served-by"])
    assert.equal("tollgate", res.json.headers["x-served-by"])
    assert.equal("/api/hello", res.json.path)
    -- The route's config replaced the global one: no X-Env here.
    assert.is_nil(res.headers["x-env"])
  end)

  it("with add_to: request, adds it upstream only; the default header name is X-Example", function()
    local res = assert(gw.request({ path = "/req-only" }))
    assert.equal(200, res.status)
    assert.equal("up", res.json.headers["x-example"])
    assert.is_nil(res.headers["x-example"])
  end)

  it("rejects a blocked user agent (case-insensitive substring) with 403 JSON, upstream untouched", function()
    assert(echo.reset_stats())
    for _, ua in ipairs({ "BadBot/1.0", "Mozilla/5.0 (compatible; badbot)", "EVIL-SCANNER" }) do
      local res = assert(gw.request({ path = "/api/x", headers = { ["User-Agent"] = ua } }))
      assert.equal(403, res.status)
      assert.equal("application/json", res.headers["content-type"])
      assert.same({ error = "user agent not allowed" }, res.json)
      -- header_filter also runs on the rejection.
      assert.equal("tollgate", res.headers["x-served-by"])
    end
    assert.equal(0, echo.stats().requests)
  end)

  it("lets other user agents and requests without one through", function()
    local res = assert(gw.request({ path = "/api/x", headers = { ["User-Agent"] = "GoodBot" } }))
    assert.equal(200, res.status)
    res = assert(gw.request({ path = "/api/x" }))
    assert.equal(200, res.status)
  end)

  it("uses the configured status and message", function()
    local res = assert(gw.request({ path = "/custom", headers = { ["User-Agent"] = "xyz" } }))
    assert.equal(451, res.status)
    assert.same({ error = "go away" }, res.json)
  end)

  it("runs its global config on routes without their own, and not where disabled", function()
    local res = assert(gw.request({ path = "/health" }))
    assert.equal(200, res.status)
    assert.equal("test", res.headers["x-env"])
    res = assert(gw.request({ path = "/off" }))
    assert.equal(200, res.status)
    assert.is_nil(res.headers["x-env"])
    assert.is_nil(res.json.headers["x-env"])
  end)

  it("leaves no errors in the error log", function()
    assert.same({}, helpers.error_lines(gw.error_log(), "error"))
  end)
end)

describe("example-header config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("the shipped conf/examples/example-plugin.yaml passes tollgate -t", function()
    local cmd = string.format("cd %s && %s -t -c conf/examples/example-plugin.yaml 2>&1; echo \"exit=$?\"",
                              helpers.shell_quote(helpers.repo_root()),
                              helpers.shell_quote(helpers.bin("tollgate")))
    local f = assert(io.popen(cmd))
    local out = f:read("*a")
    f:close()
    assert.matches("test is successful", out)
    assert.matches("exit=0", out)
  end)

  it("reports schema errors with their YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      plugins_path = { PLUGINS },
      routes = { { name = "r", paths = { "/r" }, response = { status = 200, body = "" },
                   plugins = { ["example-header"] = { header = "Bad Name", status = 200,
                                                      add_to = "upstream", blocked_user_agents = { "" } } } } },
    })
    assert.is_false(ok)
    for _, want in ipairs({
      "routes[0].plugins.example-header.value: required field missing",
      "routes[0].plugins.example-header.status: expected an integer between 400 and 499",
      "routes[0].plugins.example-header.add_to: expected one of: request, response, both",
      "routes[0].plugins.example-header.blocked_user_agents[0]: must not be empty",
    }) do
      assert.truthy(out:find(want, 1, true), "missing: " .. want .. "\n" .. out)
    end
    assert.matches("routes%[0%]%.plugins%.example%-header%.header: expected a string matching", out)
  end)
end)
