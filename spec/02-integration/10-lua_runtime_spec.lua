-- 10-lua_runtime_spec.lua: the Lua runtime through the real binary: plugin
-- loading and config errors (`tollgate -t`), phase order, priority and
-- plugin_order, global/route merging, tg.response.exit, header and body
-- filters, plugin errors in every phase, the request PDK as the upstream
-- sees it, non-blocking tg.sleep and timers, shared dicts across workers,
-- and reload re-loading plugin code.
--
-- The plugins are fixtures in spec/fixtures/plugins/rt-*.lua (each says
-- what it does); files that must be broken or must change during the run
-- are written into a temp dir instead. Every gateway runs one worker unless
-- a test needs two. tg-echo is the upstream: its JSON answer says what it
-- received, its /__stats whether anything reached it at all.

local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson.safe"

local gettime = socket.gettime
local fmt, rep = string.format, string.rep
local concat = table.concat

local FIXTURES = helpers.fixtures_path()

-- Error-log entries (traceback lines joined) matching none of `allowed`
-- (Lua patterns), as one string: "" when the log is clean.
local function unexpected_errors(gw, allowed)
  local bad = {}
  for _, e in ipairs(helpers.error_lines(gw.error_log(), "error")) do
    local ok = false
    for _, pat in ipairs(allowed or {}) do
      if e:find(pat) then
        ok = true
        break
      end
    end
    if not ok then bad[#bad + 1] = e end
  end
  return concat(bad, "\n")
end

-- Waits (bounded) until the error log has an entry containing `plain`
-- (plain text, not a pattern) and returns that entry.
local function wait_log(gw, plain, level, timeout)
  local found
  helpers.wait_until(function()
    for _, e in ipairs(helpers.error_lines(gw.error_log(), level or "debug")) do
      if e:find(plain, 1, true) then
        found = e
        return true
      end
    end
  end, timeout or 3, 0.02)
  return found
end

-- A minimal valid config around `routes` and `plugins` for `tollgate -t`.
local function check_conf(extra)
  local c = {
    listen = { "127.0.0.1:" .. helpers.free_port() },
    plugins_path = { FIXTURES },
    upstreams = { echo = { targets = { { url = "http://127.0.0.1:1" } } } },
    routes = {},
  }
  for k, v in pairs(extra) do c[k] = v end
  return c
end

-- The lines of `out` that are config errors ("tollgate: <path>: <msg>").
local function conf_errors(out)
  local errs = {}
  for line in out:gmatch("[^\n]+") do
    local e = line:match("^tollgate: (.+)$")
    if e and not e:find("^configuration file") then errs[#errs + 1] = e end
  end
  return errs
end

local function has(list, s)
  for _, v in ipairs(list) do
    if v == s then return true end
  end
  return false
end

-- "Transfer-Encoding: chunked" framing of a raw response: every chunk size
-- line matches its data, and the body ends with the last chunk.
local function assert_valid_chunked(raw)
  local body = assert(raw:match("^.-\r\n\r\n(.*)$"), "no head")
  local pos, total = 1, 0
  for _ = 1, 100000 do
    local size_hex, after = body:match("^(%x+)\r\n()", pos)
    assert(size_hex, "bad chunk size line at byte " .. pos)
    local size = tonumber(size_hex, 16)
    if size == 0 then
      assert.equal("\r\n", body:sub(after, after + 1), "missing final CRLF")
      assert.equal(after + 1, #body, "bytes after the last chunk")
      return total
    end
    assert.equal("\r\n", body:sub(after + size, after + size + 1), "chunk data not followed by CRLF")
    total = total + size
    pos = after + size + 2
  end
  error("too many chunks")
end

-------------------------------------------------------------------------------

describe("lua runtime: config check (tollgate -t)", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("accepts a valid plugin config", function()
    local ok, out = helpers.test_config(check_conf({
      plugins = { ["rt-tag"] = { value = "g" } },
      routes = { { name = "r", paths = { "/r" }, upstream = "echo",
                   plugins = { ["rt-limit"] = { limit = 5 }, ["rt-tag"] = false } } },
    }))
    assert.is_true(ok, out)
    assert.matches("test is successful", out)
  end)

  it("reports every schema error with its YAML path", function()
    local ok, out = helpers.test_config(check_conf({
      plugins = { ["rt-limit"] = { limit = 3, by = { header = 7 } } },
      routes = {
        { name = "a", paths = { "/a" }, upstream = "echo",
          plugins = { ["rt-limit"] = { limit = 0, policy = "cluster", limitt = 1 } } },
        { name = "b", paths = { "/b" }, upstream = "echo",
          plugins = { ["rt-limit"] = { window_s = 10 } } },
      },
    }))
    assert.is_false(ok)
    local errs = conf_errors(out)
    for _, want in ipairs({
      "plugins.rt-limit.by.header: expected a string",
      "routes[0].plugins.rt-limit.limit: expected a positive integer",
      "routes[0].plugins.rt-limit.policy: expected one of: local, redis",
      "routes[0].plugins.rt-limit.limitt: unknown key",
      "routes[1].plugins.rt-limit.limit: required field missing",
    }) do
      assert.is_true(has(errs, want), "missing error: " .. want .. "\n" .. out)
    end
    assert.equal(5, #errs, out)
  end)

  it("names an unknown plugin with its path", function()
    local ok, out = helpers.test_config(check_conf({
      plugins = { ["no-such-plugin"] = {} },
      routes = { { name = "a", paths = { "/a" }, upstream = "echo", plugins = { ["rt-nope"] = {} } } },
    }))
    assert.is_false(ok)
    local errs = conf_errors(out)
    assert.is_true(has(errs, 'plugins.no-such-plugin: unknown plugin "no-such-plugin"'), out)
    assert.is_true(has(errs, 'routes[0].plugins.rt-nope: unknown plugin "rt-nope"'), out)
  end)

  it("names a plugin file with a syntax error, and one that returns a bad table", function()
    local dir = helpers.tmpdir("plugins")
    helpers.write_file(dir .. "/rt-broken.lua", "return {\n  name = 'rt-broken',\n  priority = = 1,\n}\n")
    helpers.write_file(dir .. "/rt-nopri.lua", "return { name = 'rt-nopri', access = function() end }\n")
    helpers.write_file(dir .. "/rt-raises.lua", "error('no luck at load time')\n")
    local ok, out = helpers.test_config(check_conf({
      plugins_path = { dir, FIXTURES },
      routes = { { name = "a", paths = { "/a" }, upstream = "echo",
                   plugins = { ["rt-broken"] = {}, ["rt-nopri"] = {}, ["rt-raises"] = {} } } },
    }))
    assert.is_false(ok)
    local errs = conf_errors(out)
    local function find(prefix, needle)
      for _, e in ipairs(errs) do
        if e:sub(1, #prefix) == prefix and e:find(needle, 1, true) then return e end
      end
    end
    assert.truthy(find("routes[0].plugins.rt-broken: ", dir .. "/rt-broken.lua:3:"), out)
    assert.truthy(find("routes[0].plugins.rt-nopri: ", dir .. "/rt-nopri.lua: priority must be a number"), out)
    assert.truthy(find("routes[0].plugins.rt-raises: ", "no luck at load time"), out)
  end)

  it("checks plugin_order: only enabled plugins, each once", function()
    local ok, out = helpers.test_config(check_conf({
      plugins = { ["rt-prio-100"] = {} },
      routes = {
        { name = "a", paths = { "/a" }, upstream = "echo",
          plugins = { ["rt-prio-300"] = {}, ["rt-prio-100"] = false },
          plugin_order = { "rt-prio-300", "rt-prio-100", "rt-prio-300", "rt-prio-200a" } },
        { name = "b", paths = { "/b" }, upstream = "echo",
          plugin_order = { "rt-prio-100" } },
      },
    }))
    assert.is_false(ok)
    local errs = conf_errors(out)
    assert.is_true(has(errs, 'routes[0].plugin_order[1]: plugin "rt-prio-100" is not enabled on this route'), out)
    assert.is_true(has(errs, 'routes[0].plugin_order[2]: plugin "rt-prio-300" listed twice'), out)
    assert.is_true(has(errs, 'routes[0].plugin_order[3]: plugin "rt-prio-200a" is not enabled on this route'), out)
    assert.equal(3, #errs, out)
  end)

  it("refuses a plugin_order that is not a list of names", function()
    local ok, out = helpers.test_config(check_conf({
      routes = { { name = "a", paths = { "/a" }, upstream = "echo",
                   plugins = { ["rt-prio-300"] = {} }, plugin_order = "rt-prio-300" } },
    }))
    assert.is_false(ok)
    assert.matches("routes%[0%]%.plugin_order: ", out)
  end)
end)

-------------------------------------------------------------------------------

describe("lua runtime: one worker", function()
  local echo, echo2, gw

  -- Each route is one scenario; `P` saves some braces.
  local function P(t) return t end

  lazy_setup(function()
    echo = helpers.start_echo()
    echo2 = helpers.start_echo()
    local report = P{ ["rt-report"] = {} }
    local function with_report(t)
      for k, v in pairs(report) do t[k] = v end
      return t
    end
    gw = helpers.start_gateway({
      plugins_path = { FIXTURES },
      limits = { max_body_bytes = 1100000 },
      shared_dicts = { rt = "1m" },
      upstreams = {
        echo = { targets = { { url = echo.url() } } },
        echo2 = { targets = { { url = echo2.url() } } },
        dead = { targets = { { url = "http://127.0.0.1:" .. helpers.free_port() } }, retries = 0,
                 passive_health = { max_fails = 0 } },
      },
      -- Global: rt-tag with a global value on every route.
      plugins = { ["rt-tag"] = { value = "global" } },
      routes = {
        { name = "plain", paths = { "/plain" }, upstream = "echo" },
        { name = "phases", paths = { "/phases" }, upstream = "echo", plugins = P{ ["rt-phases"] = {} } },
        { name = "phases-static", paths = { "=/phases-static" }, response = { status = 200, body = "static" },
          plugins = P{ ["rt-phases"] = {} } },
        { name = "prio", paths = { "/prio" }, upstream = "echo", plugins = with_report{
            ["rt-prio-100"] = {}, ["rt-prio-200b"] = {}, ["rt-prio-300"] = {}, ["rt-prio-200a"] = {} } },
        { name = "ordered", paths = { "/ordered" }, upstream = "echo",
          plugin_order = { "rt-prio-100", "rt-prio-200b" },
          plugins = with_report{ ["rt-prio-100"] = {}, ["rt-prio-200b"] = {}, ["rt-prio-300"] = {},
                                 ["rt-prio-200a"] = {} } },
        { name = "tag-route", paths = { "/tag-route" }, upstream = "echo",
          plugins = with_report{ ["rt-tag"] = { value = "route" } } },
        { name = "tag-default", paths = { "/tag-default" }, upstream = "echo",
          plugins = with_report{ ["rt-tag"] = {} } },
        { name = "tag-off", paths = { "/tag-off" }, upstream = "echo",
          plugins = with_report{ ["rt-tag"] = false } },
        { name = "limit", paths = { "/limit" }, upstream = "echo", plugins = P{ ["rt-limit"] = { limit = 10 } } },
        { name = "limit-static", paths = { "=/limit-static" }, response = { status = 200, json = { ok = true } },
          plugins = P{ ["rt-limit"] = { limit = 7, window_s = 1.5, policy = "redis" } } },
        { name = "exit-json", paths = { "/exit-json" }, upstream = "echo",
          plugins = with_report{ ["rt-exit"] = { status = 403, json = { error = "blocked", n = 1 },
                                                 headers = { ["X-Why"] = "test" } },
                                 ["rt-prio-100"] = {}, ["rt-prio-300"] = {} } },
        { name = "exit-ordered", paths = { "/exit-ordered" }, upstream = "echo",
          plugin_order = { "rt-prio-100" },
          plugins = with_report{ ["rt-exit"] = { status = 403, text = "no" },
                                 ["rt-prio-100"] = {}, ["rt-prio-300"] = {} } },
        { name = "exit-pcall", paths = { "/exit-pcall" }, upstream = "echo",
          plugins = P{ ["rt-exit"] = { status = 401, json = { error = "no" }, pcall = true } } },
        { name = "exit-text", paths = { "/exit-text" }, upstream = "echo",
          plugins = P{ ["rt-exit"] = { status = 418, text = "short and stout" } } },
        { name = "exit-ctype", paths = { "/exit-ctype" }, upstream = "echo",
          plugins = P{ ["rt-exit"] = { status = 400, json = { title = "bad" },
                                       headers = { ["Content-Type"] = "application/problem+json" } } } },
        { name = "exit-rewrite", paths = { "/exit-rewrite" }, upstream = "echo",
          plugins = with_report{ ["rt-exit"] = { phase = "rewrite", status = 401, json = { error = "who" } },
                                 ["rt-prio-300"] = {} } },
        { name = "exit-204", paths = { "/exit-204" }, upstream = "echo",
          plugins = P{ ["rt-exit"] = { status = 204 } } },
        { name = "exit-599", paths = { "/exit-599" }, upstream = "echo",
          plugins = P{ ["rt-exit"] = { status = 599, text = "edge" } } },
        { name = "exit-600", paths = { "/exit-600" }, upstream = "echo",
          plugins = P{ ["rt-exit"] = { status = 600, text = "x" } } },
        { name = "exit-199", paths = { "/exit-199" }, upstream = "echo",
          plugins = P{ ["rt-exit"] = { status = 199, text = "x" } } },
        { name = "upper", paths = { "/upper" }, upstream = "echo", plugins = P{ ["rt-body"] = { mode = "upper" } } },
        { name = "buffer", paths = { "/buffer" }, upstream = "echo",
          plugins = P{ ["rt-body"] = { mode = "buffer", skip_on = "X-Raw" } } },
        { name = "buffer-static", paths = { "=/buffer-static" }, response = { status = 200, body = "abc" },
          plugins = P{ ["rt-body"] = { mode = "buffer" } } },
        { name = "hdr-proxy", paths = { "/hdr-proxy" }, upstream = "echo",
          plugins = P{ ["rt-headers"] = { set = { ["X-Added"] = "yes" }, clear = { "X-Secret", "Server" } } } },
        { name = "hdr-static", paths = { "=/hdr-static" },
          response = { status = 201, json = { ok = true }, headers = { ["X-Static"] = "s", ["X-Secret"] = "s" } },
          plugins = P{ ["rt-headers"] = { set = { ["X-Added"] = "yes" }, clear = { "X-Secret" } } } },
        { name = "hdr-exit", paths = { "/hdr-exit" }, upstream = "echo",
          plugins = P{ ["rt-headers"] = { set = { ["X-Added"] = "yes" }, clear = { "X-Why" } },
                       ["rt-exit"] = { status = 429, json = { error = "slow down" }, headers = { ["X-Why"] = "w" } } } },
        { name = "hdr-502", paths = { "/hdr-502" }, upstream = "dead",
          plugins = P{ ["rt-headers"] = { set = { ["X-Added"] = "yes" } } } },
        { name = "fail-rewrite", paths = { "/fail-rewrite" }, upstream = "echo", plugins = P{ ["rt-fail"] = { phase = "rewrite" } } },
        { name = "fail-access", paths = { "/fail-access" }, upstream = "echo", plugins = P{ ["rt-fail"] = { phase = "access" } } },
        { name = "fail-header_filter", paths = { "/fail-header_filter" }, upstream = "echo",
          plugins = P{ ["rt-fail"] = { phase = "header_filter" } } },
        { name = "fail-body_filter", paths = { "/fail-body_filter" }, upstream = "echo",
          plugins = P{ ["rt-fail"] = { phase = "body_filter" } } },
        { name = "fail-log", paths = { "/fail-log" }, upstream = "echo", plugins = P{ ["rt-fail"] = { phase = "log" } } },
        { name = "inspect", paths = { "/inspect" }, upstream = "echo", plugins = P{ ["rt-req"] = { inspect = true } } },
        { name = "inspect-body", paths = { "/inspect-body" }, upstream = "echo",
          plugins = P{ ["rt-req"] = { inspect = true, read_body = true } } },
        { name = "edit", paths = { "/edit" }, upstream = "echo", plugins = P{ ["rt-req"] = {
            set = { ["X-Set"] = "s", ["X-Multi"] = "replaced" },
            add = { { "X-Add", "1" }, { "X-Add", "2" } },
            clear = { "X-Remove" },
            path = "/new/path",
            query_args = { added = "v w", a = false } } } },
        { name = "edit-host", paths = { "/edit-host" }, upstream = "echo", plugins = P{ ["rt-req"] = {
            set = { Host = "backend.internal" } } } },
        { name = "edit-query", paths = { "/edit-query" }, upstream = "echo",
          plugins = P{ ["rt-req"] = { query = "x=1&y=%20" } } },
        { name = "edit-body", paths = { "/edit-body" }, upstream = "echo",
          plugins = P{ ["rt-req"] = { body = "replaced body" } } },
        { name = "canary", paths = { "/canary" }, upstream = "echo", plugins = P{ ["rt-req"] = { upstream = "echo2" } } },
        { name = "canary-bad", paths = { "/canary-bad" }, upstream = "echo", plugins = P{ ["rt-req"] = { upstream = "nope" } } },
        { name = "hf-set", paths = { "/hf-set" }, upstream = "echo", plugins = P{ ["rt-req"] = { hf_set = true } } },
        { name = "misuse", paths = { "/misuse" }, upstream = "echo", plugins = P{ ["rt-req"] = { misuse = "header" } } },
        { name = "ctx", paths = { "/ctx" }, upstream = "echo",
          plugins = with_report{ ["rt-prio-300"] = {}, ["rt-tag"] = { value = "c" } } },
        { name = "ctx-exit", paths = { "/ctx-exit" }, upstream = "echo",
          plugin_order = { "rt-tag", "rt-exit" },
          plugins = with_report{ ["rt-tag"] = { value = "e" }, ["rt-exit"] = { status = 403 } } },
        { name = "ctx-sleep-exit", paths = { "/ctx-sleep-exit" }, upstream = "echo",
          plugin_order = { "rt-tag", "rt-sleep", "rt-exit" },
          plugins = with_report{ ["rt-tag"] = { value = "s" }, ["rt-sleep"] = { seconds = 0.01 },
                                 ["rt-exit"] = { status = 403 } } },
        { name = "sleep", paths = { "/sleep" }, upstream = "echo", plugins = P{ ["rt-sleep"] = { seconds = 1 } } },
        { name = "log-sleep", paths = { "/log-sleep" }, upstream = "echo",
          plugins = P{ ["rt-sleep"] = { seconds = 0, log_s = 0.8 } } },
        { name = "sleep-exit", paths = { "/sleep-exit" }, upstream = "echo",
          plugin_order = { "rt-sleep", "rt-exit" },
          plugins = P{ ["rt-sleep"] = { seconds = 0.05 }, ["rt-exit"] = { status = 202, json = { after = "sleep" } } } },
        { name = "sleep-fail", paths = { "/sleep-fail" }, upstream = "echo",
          plugin_order = { "rt-sleep", "rt-fail" },
          plugins = P{ ["rt-sleep"] = { seconds = 0.05 }, ["rt-fail"] = { phase = "access" } } },
        { name = "peek", paths = { "/peek" }, upstream = "echo", plugins = P{ ["rt-req"] = { peek_body = true } } },
        { name = "fast", paths = { "=/fast" }, response = { status = 200, json = { fast = true } } },
        { name = "log", paths = { "/log" }, upstream = "echo", plugins = P{ ["rt-log"] = {} } },
      },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  local function get(path, headers, extra)
    local req = { path = path, headers = headers }
    for k, v in pairs(extra or {}) do req[k] = v end
    return assert(gw.request(req))
  end

  describe("phases", function()
    it("run rewrite -> access -> header_filter -> body_filter -> log", function()
      local res = get("/phases")
      assert.equal(200, res.status)
      -- header_filter sees what the earlier phases recorded in ctx ...
      assert.equal("rewrite,access,header_filter", res.headers["x-phases"])
      -- ... and the log phase, after the response, sees all of them.
      local line = wait_log(gw, "phases=rewrite,access,header_filter,body_filter,log path=/phases", "info")
      assert.truthy(line, gw.error_log())
      assert.matches("%[rt%-phases%]", line)
    end)

    it("run the same way on a static response (no upstream)", function()
      local res = get("/phases-static")
      assert.equal(200, res.status)
      assert.equal("static", res.body)
      assert.equal("rewrite,access,header_filter", res.headers["x-phases"])
      assert.truthy(wait_log(gw, "phases=rewrite,access,header_filter,body_filter,log path=/phases-static", "info"))
    end)
  end)

  describe("plugin order", function()
    it("is descending priority, ties by name", function()
      local res = get("/prio")
      assert.equal(200, res.status)
      assert.equal("rt-prio-300,rt-prio-200a,rt-prio-200b,rt-prio-100", res.headers["x-order"])
    end)

    it("puts plugin_order first, then the rest by priority", function()
      local res = get("/ordered")
      assert.equal(200, res.status)
      assert.equal("rt-prio-100,rt-prio-200b,rt-prio-300,rt-prio-200a", res.headers["x-order"])
    end)
  end)

  describe("global and route plugins", function()
    it("runs a global plugin on a route without plugins of its own", function()
      local res = get("/plain")
      assert.equal(200, res.status)
      assert.equal("global", res.headers["x-tag"])
      -- Plugins enabled on other routes do not run here.
      assert.is_nil(res.headers["x-order"])
      assert.is_nil(res.headers["x-ratelimit-limit"])
      assert.is_nil(res.headers["x-phases"])
    end)

    it("lets a route's config replace the global one (run once, not merged)", function()
      local res = get("/tag-route")
      assert.equal("route", res.headers["x-tag"])
      assert.equal("route", res.headers["x-tags"])
      res = get("/tag-default")
      assert.equal("default", res.headers["x-tag"])
      assert.equal("default", res.headers["x-tags"])
    end)

    it("disables a global plugin on a route with `name: false`", function()
      local res = get("/tag-off")
      assert.equal(200, res.status)
      assert.is_nil(res.headers["x-tag"])
      assert.is_nil(res.headers["x-tags"])
      assert.equal("", res.headers["x-order"])     -- rt-report still ran
    end)
  end)

  describe("config", function()
    it("reaches the plugin validated, defaults filled", function()
      local res = get("/limit")
      assert.equal("10", res.headers["x-ratelimit-limit"])
      assert.equal("60", res.headers["x-ratelimit-window"])
      assert.equal("local/X-Consumer", res.headers["x-ratelimit-policy"])
      res = get("/limit-static")
      assert.equal("7", res.headers["x-ratelimit-limit"])
      assert.equal("1.5", res.headers["x-ratelimit-window"])
      assert.equal("redis/X-Consumer", res.headers["x-ratelimit-policy"])
    end)
  end)

  describe("response headers set in access", function()
    it("reach the proxied response and replace upstream headers of the same name", function()
      local res = get("/limit", { ["X-Echo-Response-Header"] = { "X-RateLimit-Limit: 999", "X-Upstream: u" } })
      assert.equal(200, res.status)
      assert.equal("10", res.headers["x-ratelimit-limit"])      -- one value, ours
      local n = 0
      for _, h in ipairs(res.header_list) do
        if h[1]:lower() == "x-ratelimit-limit" then n = n + 1 end
      end
      assert.equal(1, n)
      assert.equal("u", res.headers["x-upstream"])
      assert.equal("/limit", res.json.path)
    end)

    it("keep every value added with add_header", function()
      local res = get("/limit")
      local values = {}
      for _, h in ipairs(res.header_list) do
        if h[1]:lower() == "x-ratelimit-multi" then values[#values + 1] = h[2] end
      end
      assert.same({ "a", "b" }, values)
    end)
  end)

  describe("tg.response.exit", function()
    it("answers a table as JSON and skips later access plugins and the upstream", function()
      assert(echo.reset_stats())
      local res = get("/exit-json")
      assert.equal(403, res.status)
      assert.equal("application/json", res.headers["content-type"])
      assert.same({ error = "blocked", n = 1 }, res.json)
      assert.equal(#res.body, tonumber(res.headers["content-length"]))
      assert.equal("test", res.headers["x-why"])
      -- rt-prio-300 / -100 (lower priority) never ran; header_filter did.
      assert.equal("", res.headers["x-order"])
      assert.equal(0, echo.stats().requests)
    end)

    it("runs what plugin_order put before the exiting plugin, nothing after", function()
      local res = get("/exit-ordered")
      assert.equal(403, res.status)
      assert.equal("rt-prio-100", res.headers["x-order"])
    end)

    it("ends the request even when called inside pcall()", function()
      assert(echo.reset_stats())
      local res = get("/exit-pcall")
      assert.equal(401, res.status)
      assert.same({ error = "no" }, res.json)
      assert.is_nil(res.headers["x-exit-swallowed"])
      assert.equal(0, echo.stats().requests)
    end)

    it("answers a string as text/plain, unless a Content-Type header is given", function()
      local res = get("/exit-text")
      assert.equal(418, res.status)
      assert.equal("short and stout", res.body)
      assert.equal("text/plain; charset=utf-8", res.headers["content-type"])
      res = get("/exit-ctype")
      assert.equal(400, res.status)
      assert.equal("application/problem+json", res.headers["content-type"])
      assert.same({ title = "bad" }, cjson.decode(res.body))
    end)

    it("in rewrite skips access", function()
      assert(echo.reset_stats())
      local res = get("/exit-rewrite")
      assert.equal(401, res.status)
      assert.same({ error = "who" }, res.json)
      assert.equal("", res.headers["x-order"])
      assert.equal(0, echo.stats().requests)
    end)

    it("with 204 sends no body and no Content-Type; 599 is allowed", function()
      local res = get("/exit-204")
      assert.equal(204, res.status)
      assert.equal("", res.body)
      assert.is_nil(res.headers["content-type"])
      res = get("/exit-599")
      assert.equal(599, res.status)
      assert.equal("edge", res.body)
    end)

    it("refuses a status outside 200..599 (500, error logged)", function()
      for _, path in ipairs({ "/exit-600", "/exit-199" }) do
        local res = get(path)
        assert.equal(500, res.status)
        assert.same({ error = "Internal Server Error" }, res.json)
      end
      assert.truthy(wait_log(gw, "tg.response.exit: status must be a number between 200 and 599", "error"))
    end)
  end)

  describe("body_filter", function()
    it("rewrites a streamed chunked body chunk by chunk", function()
      local size = 300000
      local res = get("/upper", { ["X-Echo-Chunked"] = "6", ["X-Echo-Body-Size"] = tostring(size) })
      assert.equal(200, res.status)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.equal(size, #res.body)
      assert.equal(rep("X", size), res.body)
      assert.equal(size, assert_valid_chunked(res.raw))
      -- It really streamed: several body_filter calls, not one buffered one.
      local line = wait_log(gw, "rt-body calls=", "info")
      local calls, bytes = (line or ""):match("calls=(%d+) bytes=(%d+)")
      assert.truthy(tonumber(calls) and tonumber(calls) > 2, line)
      assert.equal(size, tonumber(bytes))
    end)

    it("uppercases a JSON body from a Content-Length response (sent chunked)", function()
      local res = get("/upper/p?q=1")
      assert.equal(200, res.status)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.truthy(res.body:find('"PATH":"/UPPER/P"', 1, true), res.body)
      assert.truthy(res.body:find('"QUERY":"Q=1"', 1, true), res.body)
      assert.is_nil(res.body:find("[a-z]"))
      assert.equal(#res.body, assert_valid_chunked(res.raw))
    end)

    it("may buffer the whole body and answer it at eof (chunked upstream)", function()
      local res = get("/buffer", { ["X-Echo-Chunked"] = "4", ["X-Echo-Body-Size"] = "1000" })
      assert.equal(200, res.status)
      assert.equal("[" .. rep("x", 1000) .. "]", res.body)
      assert.equal(1002, assert_valid_chunked(res.raw))
    end)

    it("changes a Content-Length response's length: the client gets chunked with the new length", function()
      local res = get("/buffer", { ["X-Echo-Body-Size"] = "5000" })
      assert.equal(200, res.status)
      assert.is_nil(res.headers["content-length"])
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.equal("[" .. rep("x", 5000) .. "]", res.body)
      assert.equal(5002, assert_valid_chunked(res.raw))
      -- The connection is still good for the next request.
      local conn = assert(helpers.connect(gw.port))
      for _ = 1, 2 do
        local r2 = assert(conn:request({ path = "/buffer", headers = { ["X-Echo-Body-Size"] = "3" } }))
        assert.equal("[xxx]", r2.body)
      end
      conn:close()
    end)

    it("runs at eof of an empty body", function()
      local res = get("/buffer", { ["X-Echo-Body-Size"] = "0" })
      assert.equal(200, res.status)
      assert.equal("[]", res.body)
    end)

    it("frames an HTTP/1.0 response by closing the connection", function()
      local res = get("/buffer", { ["X-Echo-Body-Size"] = "10" }, { version = "1.0" })
      assert.equal(200, res.status)
      assert.is_nil(res.headers["content-length"])
      assert.is_nil(res.headers["transfer-encoding"])
      assert.equal("[" .. rep("x", 10) .. "]", res.body)
    end)

    it("is skipped, framing kept, when every body_filter plugin says so in header_filter", function()
      local res = get("/buffer", { ["X-Echo-Body-Size"] = "7", ["X-Echo-Response-Header"] = "X-Raw: 1" })
      assert.equal(200, res.status)
      assert.equal("xxxxxxx", res.body)
      assert.equal("7", res.headers["content-length"])
      assert.is_nil(res.headers["transfer-encoding"])
    end)

    it("rewrites a static response", function()
      local res = get("/buffer-static")
      assert.equal(200, res.status)
      assert.equal("[abc]", res.body)
    end)
  end)

  describe("header_filter", function()
    it("adds and removes headers of a proxied response", function()
      local res = get("/hdr-proxy", { ["X-Echo-Response-Header"] = { "X-Secret: s3cr3t", "X-Kept: k" } })
      assert.equal(200, res.status)
      assert.equal("yes", res.headers["x-added"])
      assert.is_nil(res.headers["x-secret"])
      assert.is_nil(res.headers["server"])
      assert.equal("k", res.headers["x-kept"])
      assert.equal("200", res.headers["x-seen-status"])
      assert.equal("/hdr-proxy", res.json.path)
    end)

    it("adds and removes headers of a static response", function()
      local res = get("/hdr-static")
      assert.equal(201, res.status)
      assert.equal("yes", res.headers["x-added"])
      assert.equal("s", res.headers["x-static"])
      assert.is_nil(res.headers["x-secret"])
      assert.equal("201", res.headers["x-seen-status"])
      assert.same({ ok = true }, res.json)
    end)

    it("adds and removes headers of an exit response", function()
      local res = get("/hdr-exit")
      assert.equal(429, res.status)
      assert.equal("yes", res.headers["x-added"])
      assert.is_nil(res.headers["x-why"])
      assert.equal("429", res.headers["x-seen-status"])
      assert.same({ error = "slow down" }, res.json)
    end)

    it("runs on the gateway's own error responses (502)", function()
      local res = get("/hdr-502")
      assert.equal(502, res.status)
      assert.same({ error = "Bad Gateway" }, res.json)
      assert.equal("yes", res.headers["x-added"])
      assert.equal("502", res.headers["x-seen-status"])
    end)
  end)

  describe("a plugin error", function()
    local function worker_pids()
      local pids = gw.group_pids()
      table.sort(pids)
      return concat(pids, ",")
    end

    for _, phase in ipairs({ "rewrite", "access" }) do
      it("in " .. phase .. " is a 500, logged with plugin, phase, message and traceback", function()
        local pids = worker_pids()
        assert(echo.reset_stats())
        local res = get("/fail-" .. phase)
        assert.equal(500, res.status)
        assert.equal("application/json", res.headers["content-type"])
        assert.same({ error = "Internal Server Error" }, res.json)
        assert.equal(0, echo.stats().requests)
        local e = wait_log(gw, 'plugin "rt-fail" failed in ' .. phase .. ": ", "error")
        assert.truthy(e, gw.error_log())
        assert.matches("rt%-fail%.lua:%d+: rt%-fail boom in " .. phase, e)
        assert.matches("stack traceback:", e)
        assert.matches("in function 'boom'", e)
        -- The next request works, on the same worker.
        res = get("/plain")
        assert.equal(200, res.status)
        assert.equal(pids, worker_pids())
      end)
    end

    for _, phase in ipairs({ "header_filter", "body_filter", "log" }) do
      it("in " .. phase .. " is logged and the response still goes out", function()
        local pids = worker_pids()
        local res = get("/fail-" .. phase .. "/x")
        assert.equal(200, res.status)
        assert.equal("/fail-" .. phase .. "/x", res.json.path)
        local e = wait_log(gw, 'plugin "rt-fail" failed in ' .. phase .. ": ", "error")
        assert.truthy(e, gw.error_log())
        assert.matches("rt%-fail boom in " .. phase, e)
        assert.matches("stack traceback:", e)
        res = get("/plain")
        assert.equal(200, res.status)
        assert.equal(pids, worker_pids())
      end)
    end
  end)

  describe("request PDK", function()
    it("reads method, path, query, headers (repeated), client ip, host, route", function()
      local res = get("/inspect/a%62c?a=1&a=2&flag&b=hello%20world+x", {
        { "X-Multi", "1" }, { "X-Multi", "2" }, { "Host", "api.test:8080" } })
      assert.equal(200, res.status)
      local j = res.json
      assert.equal("GET", j.method)
      assert.equal("/inspect/abc", j.path)                  -- normalized
      assert.equal("a=1&a=2&flag&b=hello%20world+x", j.raw_query)
      assert.equal("1", j.arg_a)
      assert.is_true(j.arg_flag)
      assert.same({ "1", "2" }, j.args.a)
      assert.equal("hello world x", j.args.b)
      assert.equal("1", j.header_multi)
      assert.same({ "1", "2" }, j.headers_multi)
      assert.equal("api.test:8080", j.header_host)
      assert.equal("127.0.0.1", j.client_ip)
      assert.equal("api.test", j.host)
      assert.equal("http", j.scheme)
      assert.equal(1.1, j.http_version)
      assert.equal("inspect", j.route)
      assert.equal("echo", j.upstream)
    end)

    it("returns an empty raw query and no args without a query string", function()
      local res = get("/inspect", nil, { method = "DELETE" })
      assert.equal("DELETE", res.json.method)
      assert.equal("", res.json.raw_query)
      assert.is_nil(res.json.arg_a)
      assert.same({}, res.json.args)
    end)

    it("get_body: small, empty, 1 MiB, chunked", function()
      local res = get("/inspect-body", nil, { method = "POST", body = "hello" })
      assert.equal("hello", res.json.body)
      res = get("/inspect-body", nil, { method = "POST", body = "" })
      assert.equal("", res.json.body)
      assert.equal(0, res.json.body_len)
      res = get("/inspect-body")                            -- no body at all
      assert.equal("", res.json.body)
      local big = rep("0123456789abcdef", 65536)            -- 1 MiB
      res = get("/inspect-body", nil, { method = "PUT", body = big, timeout = 10 })
      assert.equal(200, res.status)
      assert.equal(#big, res.json.body_len)
      assert.equal(big, res.json.body)
      res = get("/inspect-body", { ["Transfer-Encoding"] = "chunked" },
                { method = "POST", body = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" })
      assert.equal(200, res.status)
      assert.equal("hello world", res.json.body)
    end)

    it("get_body over max_body_bytes is a 413", function()
      local chunk = rep("z", 65536)
      local parts = {}
      for i = 1, 20 do parts[i] = fmt("%x\r\n%s\r\n", #chunk, chunk) end   -- 1.25 MiB
      parts[#parts + 1] = "0\r\n\r\n"
      local res = assert(gw.request({ method = "POST", path = "/inspect-body", timeout = 10,
                                      headers = { ["Transfer-Encoding"] = "chunked" }, body = concat(parts) }))
      assert.equal(413, res.status)
      assert.same({ error = "Content Too Large" }, res.json)
      -- The worker is fine.
      assert.equal(200, get("/plain").status)
    end)

    it("set/add/clear_header, set_path and set_query_arg change what goes upstream", function()
      local res = get("/edit?a=1&keep=2", { ["X-Multi"] = "orig", ["X-Remove"] = "gone" })
      assert.equal(200, res.status)
      local j = res.json
      assert.equal("/new/path", j.path)
      assert.equal("added=v%20w&keep=2", j.query)
      assert.equal("s", j.headers["x-set"])
      assert.equal("replaced", j.headers["x-multi"])
      assert.equal("1, 2", j.headers["x-add"])
      assert.is_nil(j.headers["x-remove"])
    end)

    it("get_body in access leaves the body for the upstream", function()
      local body = rep("0123456789", 10000)
      local res = get("/peek", nil, { method = "POST", body = body })
      assert.equal(200, res.status)
      assert.equal(tostring(#body), res.json.headers["x-body-len"])
      assert.equal(tostring(#body), res.json.headers["content-length"])
      assert.equal(#body, res.json.body_length)
      assert.equal(body, res.json.body)
      res = get("/peek", { ["Transfer-Encoding"] = "chunked" },
                { method = "POST", body = "4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n" })
      assert.equal("wikipedia", res.json.body)
      assert.equal("9", res.json.headers["x-body-len"])
    end)

    it("set_header(\"Host\") sets the Host sent upstream", function()
      local res = get("/edit-host")
      assert.equal(200, res.status)
      assert.equal("backend.internal", res.json.headers.host)
    end)

    it("set_query replaces the query sent upstream", function()
      local res = get("/edit-query?old=1")
      assert.equal("x=1&y=%20", res.json.query)
      assert.equal("/edit-query", res.json.path)
    end)

    it("set_body sends the new body with a correct Content-Length", function()
      local res = get("/edit-body", nil, { method = "POST", body = "original, longer body" })
      assert.equal(200, res.status)
      assert.equal("replaced body", res.json.body)
      assert.equal("13", res.json.headers["content-length"])
      assert.is_false(res.json.chunked_request)
      -- A chunked client body, too.
      res = get("/edit-body", { ["Transfer-Encoding"] = "chunked" },
                { method = "POST", body = "3\r\nabc\r\n0\r\n\r\n" })
      assert.equal("replaced body", res.json.body)
      assert.equal("13", res.json.headers["content-length"])
      assert.is_nil(res.json.headers["transfer-encoding"])
    end)

    it("tg.upstream.set switches the upstream; an unknown name is nil, err", function()
      assert(echo.reset_stats())
      assert(echo2.reset_stats())
      local res = get("/canary")
      assert.equal(200, res.status)
      assert.equal(1, echo2.stats().requests)
      assert.equal(0, echo.stats().requests)
      res = get("/canary-bad")
      assert.same({ upstream_err = 'unknown upstream "nope"' }, res.json)
    end)

    it("tg.ctx is shared by the plugins and phases of one request, and fresh per request", function()
      for _ = 1, 2 do
        local res = get("/ctx")
        assert.equal("rt-prio-300", res.headers["x-order"])
        assert.equal("c", res.headers["x-tags"])
        assert.equal("true", res.headers["x-ctx-same"])
      end
    end)

    it("tg.ctx outlives an exit and a wait: later phases see what access recorded", function()
      -- The coroutine that exits (or waits) is not the one that runs the
      -- later phases; idle coroutines serve later requests, so each path
      -- goes three times: nothing may leak from one request to the next.
      for _ = 1, 3 do
        for path, tag in pairs({ ["/ctx-exit"] = "e", ["/ctx-sleep-exit"] = "s", ["/ctx"] = "c" }) do
          local res = get(path)
          assert.equal(tag, res.headers["x-tags"], path)
          assert.equal(path == "/ctx" and 200 or 403, res.status, path)
        end
      end
    end)
  end)

  describe("misuse", function()
    local cases = {
      set_header_name = "tg.request.set_header: name must be a string",
      set_header_value = "tg.request.set_header: invalid header name or value",
      set_header_framing = "tg.request.set_header: Content-Length is set by the core",
      add_header_value = "tg.request.add_header: value must be a string",
      set_path = 'tg.request.set_path: invalid path "no-slash"',
      set_query = "tg.request.set_query: expected a string or a table",
      get_header = "tg.request.get_header: name must be a string",
      resp_set_header = "tg.response.set_header: value must be a string",
      sleep = "tg.sleep: expected a number of seconds >= 0",
      timer_at = "tg.timer.at: fn must be a function",
      set_status_access = "tg.response.set_status: not available in phase access",
    }
    for kind, msg in pairs(cases) do
      it("raises, naming the function and the plugin's line: " .. kind, function()
        local res = get("/misuse", { ["X-Misuse"] = kind })
        assert.equal(500, res.status)
        local e = wait_log(gw, msg, "error")
        assert.truthy(e, "no log entry with: " .. msg)
        assert.matches('plugin "rt%-req" failed in access: ', e)
      end)
    end

    it("errors point at the plugin's line, where the mistake is (error level)", function()
      local wrong = {}
      for kind, msg in pairs(cases) do
        assert.equal(500, get("/misuse", { ["X-Misuse"] = kind }).status)
        local e = wait_log(gw, msg, "error") or ""
        if not e:find('failed in access: [^\n]*/rt%-req%.lua:%d+: ') then
          wrong[#wrong + 1] = kind .. " -> " .. (e:match("failed in access: ([^\n]*)") or "?")
        end
      end
      table.sort(wrong)
      assert.equal("", concat(wrong, "\n"))
    end)

    it("set_* in header_filter raises, is logged, and the response is still sent", function()
      local res = get("/hf-set")
      assert.equal(200, res.status)
      assert.equal("/hf-set", res.json.path)
      assert.equal("yes", res.headers["x-before-raise"])
      local e = wait_log(gw, "tg.request.set_header: not available in phase header_filter", "error")
      assert.truthy(e, gw.error_log())
      assert.matches('plugin "rt%-req" failed in header_filter', e)
    end)
  end)

  describe("waiting", function()
    it("tg.sleep in access does not block other requests", function()
      local slow = assert(helpers.connect(gw.port, { timeout = 5 }))
      local t0 = gettime()
      assert(slow:send(helpers.encode_request({ path = "/sleep" })))
      socket.sleep(0.05)                       -- let the worker start sleeping
      local t1 = gettime()
      local res = get("/fast")
      local fast_s = gettime() - t1
      assert.equal(200, res.status)
      assert.is_true(fast_s < 0.3, "fast request took " .. fast_s .. " s")
      local sres = assert(slow:read_response({ timeout = 5 }))
      local slow_s = gettime() - t0
      slow:close()
      assert.equal(200, sres.status)
      assert.is_true(slow_s >= 0.95, "slept only " .. slow_s .. " s")
      local slept_ms = tonumber(sres.headers["x-slept-ms"])
      assert.is_true(slept_ms >= 950 and slept_ms < 2000, "X-Slept-Ms " .. tostring(slept_ms))
    end)

    it("a log phase that waits does not delay the response or the connection", function()
      local conn = assert(helpers.connect(gw.port, { timeout = 5 }))
      local t0 = gettime()
      local res = assert(conn:request({ path = "/log-sleep" }))
      assert.equal(200, res.status)
      local first_s = gettime() - t0
      assert.is_true(first_s < 0.5, "response waited for the log phase: " .. first_s .. " s")
      res = assert(conn:request({ path = "/fast" }))      -- same connection, meanwhile
      assert.equal(200, res.status)
      assert.is_nil(gw.error_log():find("rt-sleep log done /log-sleep", 1, true))
      assert.truthy(wait_log(gw, "rt-sleep log done /log-sleep", "info", 3), gw.error_log())
      assert.is_true(gettime() - t0 >= 0.75)
      conn:close()
    end)

    it("exit and errors after a wait end the request like without one", function()
      assert(echo.reset_stats())
      local res = get("/sleep-exit")
      assert.equal(202, res.status)
      assert.same({ after = "sleep" }, res.json)
      res = get("/sleep-fail")
      assert.equal(500, res.status)
      assert.same({ error = "Internal Server Error" }, res.json)
      assert.equal(0, echo.stats().requests)
      assert.equal(200, get("/plain").status)
    end)

    it("a client that leaves during a sleep is logged as 499 and the worker carries on", function()
      local c = assert(helpers.connect(gw.port))
      assert(c:send(helpers.encode_request({ path = "/sleep?gone=1" })))
      socket.sleep(0.1)
      c:close()
      assert.equal(200, get("/fast").status)
      local entry
      assert(helpers.wait_until(function()
        for _, line in ipairs(gw.access_log()) do
          local e = cjson.decode(line)
          if e and e.path == "/sleep" and e.status == 499 then entry = e return true end
        end
      end, 3), "no 499 access-log entry in:\n" .. concat(gw.access_log(), "\n"))
      socket.sleep(1)                          -- the sleep timer fires for nobody
      assert.equal(200, get("/fast").status)
    end)

    it("sleeps of several requests overlap", function()
      local conns = {}
      local t0 = gettime()
      for i = 1, 5 do
        conns[i] = assert(helpers.connect(gw.port, { timeout = 5 }))
        assert(conns[i]:send(helpers.encode_request({ path = "/sleep" })))
      end
      for i = 1, 5 do
        local res = assert(conns[i]:read_response({ timeout = 5 }))
        assert.equal(200, res.status)
        conns[i]:close()
      end
      local took = gettime() - t0
      assert.is_true(took < 2.5, "5 parallel 1 s sleeps took " .. took .. " s")
    end)
  end)

  describe("tg.log", function()
    it("writes lines carrying the plugin name and request id at the configured level", function()
      local res = get("/log", { ["X-Test-Id"] = "rid-12345" })
      assert.equal(200, res.status)
      for level, text in pairs({ info = "rt-log info line 42 true", warn = "rt-log warn line",
                                 error = "rt-log err line" }) do
        local e = wait_log(gw, text, "info")
        assert.truthy(e, "missing " .. text .. " in:\n" .. gw.error_log())
        assert.matches("%[" .. level .. "%]", e)
        assert.matches('request_id="rid%-12345" %[rt%-log%] ' .. text:gsub("%p", "%%%0"), e)
      end
      -- error_log level is info: debug lines are dropped.
      assert.is_nil(gw.error_log():find("rt-log debug line", 1, true))
      -- set_id also reaches the access log.
      local found
      assert(helpers.wait_until(function()
        for _, line in ipairs(gw.access_log()) do
          local e = cjson.decode(line)
          if e and e.path == "/log" then found = e return true end
        end
      end, 3))
      assert.equal("rid-12345", found.request_id)
    end)
  end)

  describe("error log", function()
    it("has no errors other than the ones the tests above caused", function()
      assert.equal("", unexpected_errors(gw, {
        'plugin "rt%-fail" failed in ',
        'plugin "rt%-req" failed in ',
        'plugin "rt%-exit" failed in access: [^\n]*tg%.response%.exit: status must be',
        "%[rt%-log%] rt%-log err line",
        'upstream "dead" [^\n]* connect failed: Connection refused',
      }))
    end)
  end)
end)

-------------------------------------------------------------------------------

describe("lua runtime: timers", function()
  local gw

  lazy_setup(function()
    gw = helpers.start_gateway({
      plugins_path = { FIXTURES },
      routes = {
        { name = "timer", paths = { "/timer" }, response = { status = 200, body = "" },
          plugins = { ["rt-timer"] = {} } },
        { name = "fast", paths = { "=/fast" }, response = { status = 200, body = "fast" } },
      },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("tg.timer.at and tg.timer.every started in init_worker run, with their arguments", function()
    local state
    assert(helpers.wait_until(function()
      local res = assert(gw.request({ path = "/timer" }))
      state = res.json
      return state and state.every == 3 and state.sleep_in_timer ~= nil
    end, 5, 0.05), "timers did not run: " .. cjson.encode(state))
    assert.same({ premature = false, a = "x", b = 7 }, state.at)
    assert.same({ premature = false, tag = "tick" }, state.every_args)
    assert.is_true(state.sleep_in_timer >= 0.04, "sleep in a timer took " .. state.sleep_in_timer)
  end)

  it("keep the worker alive and serving (no exit, no restart)", function()
    local pids = gw.group_pids()
    helpers.sleep(1.5)                       -- many timer.every ticks
    assert.equal(200, assert(gw.request({ path = "/fast" })).status)
    assert.same(pids, gw.group_pids())
    assert.equal("", unexpected_errors(gw))
  end)
end)

-------------------------------------------------------------------------------

describe("lua runtime: shared dict across 2 workers", function()
  local gw

  lazy_setup(function()
    gw = helpers.start_gateway({
      worker_processes = 2,
      plugins_path = { FIXTURES },
      shared_dicts = { rt = "1m" },
      routes = { { name = "count", paths = { "/count" }, response = { status = 200, body = "" },
                   plugins = { ["rt-count"] = {} } } },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("counts exactly: 500 increments over 50 connections", function()
    -- 50 connections, then ten rounds of one request on each. The first
    -- connection's worker is kept busy by /count/spin while the others
    -- connect, so the other worker accepts (some of) them.
    local conns = {}
    conns[1] = assert(helpers.connect(gw.port, { timeout = 5 }))
    assert(conns[1]:send(helpers.encode_request({ path = "/count/spin" })))
    socket.sleep(0.05)
    for i = 2, 50 do conns[i] = assert(helpers.connect(gw.port, { timeout = 5 })) end
    local spin = assert(conns[1]:read_response())
    assert.equal(200, spin.status)
    local ok_count = 0
    for _ = 1, 10 do
      for i = 1, 50 do
        assert(conns[i]:send(helpers.encode_request({ path = "/count" })))
      end
      for i = 1, 50 do
        local res = assert(conns[i]:read_response())
        assert.equal(200, res.status)
        ok_count = ok_count + 1
      end
    end
    for i = 1, 50 do conns[i]:close() end
    assert.equal(500, ok_count)
    local res = assert(gw.request({ path = "/count/read" }))
    assert.equal(200, res.status)
    local j = res.json
    assert.equal(500, j.hits)
    assert.equal(500, (j.w0 or 0) + (j.w1 or 0))
    -- Both workers took part (otherwise this proves nothing about sharing).
    assert.is_true((j.w0 or 0) > 0 and (j.w1 or 0) > 0, "per worker: " .. cjson.encode(j))
  end)
end)

-------------------------------------------------------------------------------

describe("lua runtime: reload", function()
  local gw, dir

  local function plugin_source(version)
    return fmt([[
local tg = require "tollgate"
return {
  name = "rt-reload", priority = 1, version = %q,
  header_filter = function() tg.response.set_header("X-Plugin-Version", %q) end,
}
]], version, version)
  end

  lazy_setup(function()
    dir = helpers.tmpdir("plugins")
    helpers.write_file(dir .. "/rt-reload.lua", plugin_source("v1"))
    gw = helpers.start_gateway({
      plugins_path = { dir },
      routes = { { name = "r", paths = { "/r" }, response = { status = 200, body = "ok" },
                   plugins = { ["rt-reload"] = {} } } },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("re-loads plugin code on SIGHUP", function()
    assert.equal("v1", assert(gw.request({ path = "/r" })).headers["x-plugin-version"])
    helpers.write_file(dir .. "/rt-reload.lua", plugin_source("v2"))
    -- Not before the reload: the worker's VM keeps the code it loaded.
    assert.equal("v1", assert(gw.request({ path = "/r" })).headers["x-plugin-version"])
    assert(gw.reload())
    assert(helpers.wait_until(function()
      local res = gw.request({ path = "/r" })
      return res and res.headers["x-plugin-version"] == "v2"
    end, 5))
  end)

  it("keeps the running code when the new plugin file does not load", function()
    helpers.write_file(dir .. "/rt-reload.lua", "return {\n  name = = 'rt-reload',\n}\n")
    gw.reload()
    local e = wait_log(gw, dir .. "/rt-reload.lua:2:", "error", 5)
    assert.truthy(e, gw.error_log())
    assert.matches("routes%[0%]%.plugins%.rt%-reload: ", e)
    assert.equal("v2", assert(gw.request({ path = "/r" })).headers["x-plugin-version"])
  end)
end)
