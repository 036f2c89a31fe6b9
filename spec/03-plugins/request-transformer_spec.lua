-- request-transformer_spec.lua: the request-transformer plugin through the
-- real gateway, with tg-echo reporting what reached the upstream: each
-- header and query operation at its edges (present / absent / repeated),
-- the order remove, rename, replace, add, append, templates (consumer,
-- request id, header, query; missing values; CR/LF from a query argument),
-- the regex path rewrite (captures, named groups, sed semantics, no match,
-- strip_prefix, an invalid result, the match limit), and config errors
-- with their YAML paths.
--
-- Fixtures: rl-consumer sets ctx.consumer from X-Consumer (a stand-in for
-- the auth plugins); rt-req edits the upstream query before this plugin on
-- one route (plugin_order), like key-auth removing api_key.

local helpers = require "spec.helpers"

local FIXTURES = helpers.fixtures_path()

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The echo's raw query string as name -> list of values (a bare name -> {true}).
local function query_of(echo_json)
  local args = {}
  local q = echo_json.query
  if type(q) ~= "string" then return args end
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k then k, v = unescape(k), unescape(v) else k, v = unescape(pair), true end
    args[k] = args[k] or {}
    table.insert(args[k], v)
  end
  return args
end

local header_values = helpers.header_values

local conf_errors = helpers.conf_error_set

describe("request-transformer", function()
  local echo, gw

  setup(function()
    echo = helpers.start_echo()
    gw = helpers.start_gateway({
      plugins_path = { FIXTURES },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      plugins = { ["request-id"] = {}, ["rl-consumer"] = {} },
      routes = {
        { name = "headers", paths = { "/headers" }, upstream = "echo",
          plugins = { ["request-transformer"] = {
            remove = { headers = { "X-Remove", "X-Order" } },
            rename = { headers = { ["X-Old"] = "X-New", ["X-R1"] = "X-R2" } },
            replace = { headers = { ["X-Replace"] = "replaced", ["X-R2"] = "renamed-then-replaced",
                                    ["X-Order"] = "never" } },
            add = { headers = { ["X-Add"] = "added", ["X-Order"] = "removed-then-added",
                                ["X-Number"] = 42 } },
            append = { headers = { ["X-Append"] = "appended", ["X-Add"] = "and-appended" } },
          } } },
        { name = "query", paths = { "/query" }, upstream = "echo",
          plugins = { ["request-transformer"] = {
            remove = { query = { "debug", "order" } },
            rename = { query = { q = "search" } },
            replace = { query = { v = "2", order = "never" } },
            add = { query = { src = "gw", order = "removed-then-added", v = "not-added" } },
            append = { query = { tag = "b" } },
          } } },
        { name = "templates", paths = { "/templates" }, upstream = "echo",
          plugins = { ["request-transformer"] = {
            add = {
              headers = {
                ["X-Consumer-Id"] = "$(consumer.id)",
                ["X-Consumer-Plan"] = "plan=$(consumer.plan)",
                ["X-Rid"] = "$(request_id)",
                ["X-From-Header"] = "h=$(headers.X-Src)",
                ["X-From-Query"] = "$(query.token)",
                ["X-Literal"] = "$$(consumer.id) costs $5",
                ["X-Ip"] = "$(client_ip)",
              },
              query = { user = "$(consumer.id)", copy = "$(headers.X-Src)" },
            },
          } } },
        { name = "upstream-query", paths = { "/uq" }, upstream = "echo",
          plugin_order = { "rt-req", "request-transformer" },
          plugins = {
            ["rt-req"] = { query_args = { api_key = false } },
            ["request-transformer"] = { add = { query = { extra = "1" } },
                                        rename = { query = { old = "new" } } },
          } },
        { name = "path", paths = { "/api" }, upstream = "echo",
          plugins = { ["request-transformer"] = { path = { pattern = "^/api/v1/(.*)", replace = "/$1" } } } },
        { name = "named", paths = { "/svc" }, upstream = "echo",
          plugins = { ["request-transformer"] = {
            path = { pattern = "^/svc/(?<ver>v\\d+)/(.*)$", replace = "/${ver}/internal/$2" } } } },
        { name = "sed", paths = { "/sed" }, upstream = "echo",
          plugins = { ["request-transformer"] = { path = { pattern = "v1", replace = "v2" } } } },
        { name = "strip", paths = { "/strip" }, strip_prefix = "/strip", upstream = "echo",
          plugins = { ["request-transformer"] = { path = { pattern = "^/strip/old/(.*)", replace = "/new/$1" } } } },
        { name = "bad-result", paths = { "/bad" }, upstream = "echo",
          plugins = { ["request-transformer"] = { path = { pattern = "^/bad/(.*)", replace = "/x?$1" } } } },
        { name = "redos", paths = { "/redos" }, upstream = "echo",
          plugins = { ["request-transformer"] = { path = { pattern = "^/redos/(a+)+$", replace = "/ok" } } } },
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  describe("headers", function()
    it("removes, renames, replaces, adds and appends, in that order", function()
      local res = assert(gw.request({ path = "/headers", headers = {
        { "X-Remove", "1" }, { "X-Remove", "2" },
        { "X-Old", "o1" }, { "X-Old", "o2" },
        { "X-R1", "r1" },
        { "X-Replace", "original" },
        { "X-Order", "client" },
        { "X-Append", "client" },
        { "X-Keep", "kept" },
      } }))
      assert.equal(200, res.status)
      local j = res.json
      assert.same({}, header_values(j, "X-Remove"))               -- every copy removed
      assert.same({}, header_values(j, "X-Old"))
      assert.same({ "o1", "o2" }, header_values(j, "X-New"))      -- both values carried over
      assert.same({}, header_values(j, "X-R1"))
      assert.same({ "renamed-then-replaced" }, header_values(j, "X-R2"))
      assert.same({ "replaced" }, header_values(j, "X-Replace"))
      assert.same({ "removed-then-added" }, header_values(j, "X-Order"))
      assert.same({ "added", "and-appended" }, header_values(j, "X-Add"))
      assert.same({ "42" }, header_values(j, "X-Number"))
      assert.same({ "client", "appended" }, header_values(j, "X-Append"))
      assert.same({ "kept" }, header_values(j, "X-Keep"))
    end)

    it("leaves absent headers absent for replace and rename, and adds them for add and append", function()
      local res = assert(gw.request({ path = "/headers", headers = { { "X-Add", "client" } } }))
      local j = res.json
      assert.same({}, header_values(j, "X-Replace"))
      assert.same({}, header_values(j, "X-New"))
      assert.same({}, header_values(j, "X-R2"))
      -- add keeps the client's value; append still appends after it.
      assert.same({ "client", "and-appended" }, header_values(j, "X-Add"))
      assert.same({ "appended" }, header_values(j, "X-Append"))
      assert.same({ "removed-then-added" }, header_values(j, "X-Order"))
    end)

    it("renames onto an existing header, replacing it", function()
      local res = assert(gw.request({ path = "/headers", headers = {
        { "X-Old", "moved" }, { "X-New", "was-there" } } }))
      assert.same({ "moved" }, header_values(res.json, "X-New"))
    end)
  end)

  describe("query", function()
    it("removes, renames, replaces, adds and appends, in that order", function()
      local res = assert(gw.request({
        path = "/query?debug=1&debug=2&q=hello%20world&v=1&order=client&tag=a&keep=x%26y" }))
      assert.equal(200, res.status)
      local q = query_of(res.json)
      assert.is_nil(q.debug)
      assert.is_nil(q.q)
      assert.same({ "hello world" }, q.search)
      assert.same({ "2" }, q.v)                        -- replaced, and add did not touch it
      assert.same({ "gw" }, q.src)
      assert.same({ "removed-then-added" }, q.order)
      assert.same({ "a", "b" }, q.tag)
      assert.same({ "x&y" }, q.keep)                   -- untouched, still encoded right
      assert.equal("/query", res.json.path)
    end)

    it("adds to a request without a query and leaves absent args absent", function()
      local res = assert(gw.request({ path = "/query" }))
      local q = query_of(res.json)
      assert.same({ "gw" }, q.src)
      assert.same({ "removed-then-added" }, q.order)
      assert.same({ "b" }, q.tag)
      assert.same({ "not-added" }, q.v)                -- add on absent; replace skipped it
      assert.is_nil(q.search)
    end)

    it("keeps what an earlier plugin removed from the upstream query", function()
      local res = assert(gw.request({ path = "/uq?api_key=secret&old=1&a=b" }))
      local q = query_of(res.json)
      assert.is_nil(q.api_key)
      assert.same({ "1" }, q.extra)
      assert.same({ "1" }, q.new)
      assert.is_nil(q.old)
      assert.same({ "b" }, q.a)
    end)
  end)

  describe("templates", function()
    it("fills consumer, request id, header, query and client ip", function()
      local res = assert(gw.request({ path = "/templates?token=t%2F1", headers = {
        ["X-Consumer"] = "alice", ["X-Plan"] = "pro", ["X-Src"] = "source", ["X-Request-Id"] = "rid-7" } }))
      local h = res.json.headers
      assert.equal("alice", h["x-consumer-id"])
      assert.equal("plan=pro", h["x-consumer-plan"])
      assert.equal("rid-7", h["x-rid"])
      assert.equal("h=source", h["x-from-header"])
      assert.equal("t/1", h["x-from-query"])
      assert.equal("$(consumer.id) costs $5", h["x-literal"])
      assert.equal("127.0.0.1", h["x-ip"])
      local q = query_of(res.json)
      assert.same({ "alice" }, q.user)
      assert.same({ "source" }, q.copy)
      assert.same({ "t/1" }, q.token)
    end)

    it("skips an edit whose variable has no value", function()
      local res = assert(gw.request({ path = "/templates" }))
      local h = res.json.headers
      assert.is_nil(h["x-consumer-id"])
      assert.is_nil(h["x-consumer-plan"])              -- "plan=" alone is not sent
      assert.is_nil(h["x-from-header"])
      assert.is_nil(h["x-from-query"])
      assert.matches("^%x+%-", h["x-rid"])             -- request-id generated one
      local q = query_of(res.json)
      assert.is_nil(q.user)
      assert.is_nil(q.copy)
    end)

    it("does not copy CR/LF from a query argument into a header", function()
      local res = assert(gw.request({ path = "/templates?token=a%0D%0AX-Evil:%201" }))
      assert.equal(200, res.status)
      assert.is_nil(res.json.headers["x-from-query"])
      assert.is_nil(res.json.headers["x-evil"])
      assert.equal("127.0.0.1", res.json.headers["x-ip"])   -- the other edits happened
    end)
  end)

  describe("path", function()
    it("rewrites with a capture and keeps the query", function()
      local res = assert(gw.request({ path = "/api/v1/users/42?x=1&y=%20" }))
      assert.equal("/users/42", res.json.path)
      assert.equal("x=1&y=%20", res.json.query)
    end)

    it("leaves a path the pattern does not match", function()
      local res = assert(gw.request({ path = "/api/v2/users" }))
      assert.equal("/api/v2/users", res.json.path)
      res = assert(gw.request({ path = "/api/v1" }))      -- no trailing slash: no match
      assert.equal("/api/v1", res.json.path)
    end)

    it("rewrites against the normalized path", function()
      local res = assert(gw.request({ path = "/api/x/../v1/%61bc" }))
      assert.equal("/abc", res.json.path)
    end)

    it("supports named groups", function()
      local res = assert(gw.request({ path = "/svc/v3/orders/9" }))
      assert.equal("/v3/internal/orders/9", res.json.path)
    end)

    it("replaces only the first match and keeps the text around it", function()
      local res = assert(gw.request({ path = "/sed/v1/v1" }))
      assert.equal("/sed/v2/v1", res.json.path)
    end)

    it("wins over strip_prefix when it matches; strip_prefix applies otherwise", function()
      local res = assert(gw.request({ path = "/strip/old/a" }))
      assert.equal("/new/a", res.json.path)
      res = assert(gw.request({ path = "/strip/other" }))
      assert.equal("/other", res.json.path)
    end)

    it("answers 500 without calling the upstream when the result is not a path", function()
      assert(echo.reset_stats())
      local res = assert(gw.request({ path = "/bad/thing" }))
      assert.equal(500, res.status)
      assert.same({ error = "Internal Server Error" }, res.json)
      assert.equal(0, echo.stats().requests)
      assert(helpers.wait_until(function()
        return gw.error_log():find('gave an invalid path "/x?thing"', 1, true)
      end, 3))
    end)

    it("answers 500 when a path hits the match limit, and serves a normal one", function()
      assert(echo.reset_stats())
      local t0 = require("socket").gettime()
      local res = assert(gw.request({ path = "/redos/" .. string.rep("a", 40) .. "b" }))
      assert.equal(500, res.status)
      assert.is_true(require("socket").gettime() - t0 < 3)
      assert.equal(0, echo.stats().requests)
      assert(helpers.wait_until(function()
        return gw.error_log():find("path rewrite failed: regex substitution failed: match limit exceeded", 1, true)
      end, 3))
      res = assert(gw.request({ path = "/redos/aaaa" }))
      assert.equal(200, res.status)
      assert.equal("/ok", res.json.path)
    end)
  end)

  it("logs no errors besides the two path failures", function()
    for _, l in ipairs(helpers.error_lines(gw.error_log(), "error")) do
      assert.truthy(l:find("gave an invalid path", 1, true) or l:find("match limit exceeded", 1, true), l)
    end
  end)
end)

describe("request-transformer config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports schema errors with their YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      upstreams = { echo = { targets = { { url = "http://127.0.0.1:1" } } } },
      routes = {
        { name = "a", paths = { "/a" }, upstream = "echo", plugins = { ["request-transformer"] = {
          add = { headers = { ["Bad Name"] = "x", ["Content-Length"] = "5", ["X-Tpl"] = "$(nope)",
                              ["X-Table"] = { 1 } } },
          remove = { query = { "" } },
          rename = { headers = { ["X-A"] = "Not Valid" } },
          prepend = {},
        } } },
        { name = "b", paths = { "/b" }, upstream = "echo", plugins = { ["request-transformer"] = {
          path = { pattern = "^/(a" , replace = "/$1" } } } },
        { name = "c", paths = { "/c" }, upstream = "echo", plugins = { ["request-transformer"] = {
          path = { pattern = "^/(a)", replace = "/$2" } } } },
        { name = "d", paths = { "/d" }, upstream = "echo", plugins = { ["request-transformer"] = {
          path = { replace = "/x" } } } },
      },
    })
    assert.is_false(ok)
    local errs = conf_errors(out)
    local P = "routes[0].plugins.request-transformer."
    for _, want in ipairs({
      P .. 'add.headers.Bad Name: invalid key: expected a string matching "^[%w!#$%%&\'*+%-.^_`|~]+$"',
      P .. "add.headers.Content-Length: invalid key: Content-Length is managed by the gateway",
      P .. "add.headers.X-Tpl: unknown template variable $(nope)",
      P .. "add.headers.X-Table: expected a string or a number",
      P .. "remove.query[0]: must not be empty",
      P .. 'rename.headers.X-A: expected a string matching "^[%w!#$%%&\'*+%-.^_`|~]+$"',
      P .. "prepend: unknown key",
      "routes[1].plugins.request-transformer.path.pattern: missing closing parenthesis at offset 4",
      "routes[2].plugins.request-transformer.path.replace: reference to group $2, the pattern has 1 group",
      "routes[3].plugins.request-transformer.path.pattern: required field missing",
    }) do
      assert.is_true(errs[want] == true, "missing: " .. want .. "\n" .. out)
    end
  end)
end)
