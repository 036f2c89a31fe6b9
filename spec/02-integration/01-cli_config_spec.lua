-- 01-cli_config_spec.lua: the command line and the configuration checker,
-- driven as a user would: `tollgate -v`, `tollgate -t -c FILE`, starting
-- the gateway on good and bad files, on a port that is taken, and the
-- shipped conf/tollgate.yaml run for real (its fixed ports rewritten to
-- free ones so the spec never collides with whatever runs on the machine).

local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson.safe"

local fmt = string.format

local sq = helpers.shell_quote

local read_file = helpers.read_file

local write_file = helpers.write_file

-- Runs the tollgate binary with `args` (a shell-quoted string) under
-- `timeout` so a gateway that wrongly starts cannot hang the spec. Returns
-- exit code, stdout, stderr.
local function run(args, limit)
  local dir = helpers.tmpdir("cli")
  local out, err = dir .. "/out", dir .. "/err"
  local cmd = fmt("cd %s && timeout -s KILL %d %s %s >%s 2>%s </dev/null; echo $?",
                  sq(helpers.repo_root()), limit or 10, sq(helpers.bin("tollgate")), args,
                  sq(out), sq(err))
  local p = assert(io.popen(cmd, "r"))
  local code = tonumber(p:read("*a"):match("(%d+)"))
  p:close()
  return code, read_file(out) or "", read_file(err) or ""
end

-- Writes YAML text to a fresh file and returns its path.
local function conf_file(text)
  local path = helpers.tmpdir("conf") .. "/tollgate.yaml"
  write_file(path, text)
  return path
end

local function lines_of(text)
  local t = {}
  for l in text:gmatch("[^\n]+") do
    t[#t + 1] = l
  end
  return t
end

-- A config with one mistake of each kind, each in a known place.
local BROKEN = [[
listen: ["127.0.0.1:%d"]
worker_processes: "lots"
bogus_top: 1
limits: { max_header_bytes: "big" }
upstreams:
  users:
    targets: [ { url: "http://127.0.0.1:%d" } ]
routes:
  - name: ok
    paths: ["/ok"]
    upstream: users
  - name: bad-regex
    paths: ["~^/(unclosed"]
    upstream: users
  - name: typo
    paths: ["/typo"]
    upstream: userz
    colour: blue
  - name: bad-types
    paths: ["/t"]
    methods: "GET"
    response: { status: 999 }
]]

describe("tollgate CLI", function()
  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("-v prints the version and the linked library versions, exit 0", function()
    local code, out = run("-v")
    assert.equal(0, code)
    assert.truthy(out:match("^tollgate %d+%.%d+%.%d+"), out)
    for _, lib in ipairs({ "libev %d+%.%d+", "http%-parser 2%.9", "OpenSSL 3", "libyaml %d",
                           "LuaJIT 2%.1", "PCRE2 10%." }) do
      assert.truthy(out:find(lib), "missing " .. lib .. " in: " .. out)
    end
  end)

  it("-t on a good file exits 0 and says so", function()
    local path = conf_file(helpers.yaml({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      upstreams = { users = { targets = { { url = "http://127.0.0.1:9" } } } },
      routes = {
        { name = "users", paths = { "/api/v1/users", "=/u", "~^/v[0-9]+/" }, upstream = "users",
          strip_prefix = "/api/v1", methods = { "GET", "POST" }, hosts = { "*.example.com" } },
        { name = "health", paths = { "=/health" }, response = { status = 200, json = { status = "ok" } } },
      },
    }))
    local code, out, err = run("-t -c " .. sq(path))
    assert.equal(0, code, err)
    assert.truthy(out:find("test is successful", 1, true), out .. err)
    assert.equal("", err)
  end)

  it("-t on a broken file exits 1 and prints every error with its YAML path", function()
    local path = conf_file(fmt(BROKEN, helpers.free_port(), helpers.free_port()))
    local code, out, err = run("-t -c " .. sq(path))
    assert.equal(1, code)
    assert.falsy(out:find("successful", 1, true))
    local expected = {
      'routes[2].upstream: unknown upstream "userz"',
      "routes[2].colour: unknown key",
      "bogus_top: unknown key",
      "worker_processes: expected",
      "limits.max_header_bytes: expected",
      "routes[1].paths[0]:",
      "routes[3].methods: expected a list",
      "routes[3].response.status: expected an integer between 200 and 599",
    }
    for _, e in ipairs(expected) do
      assert.truthy(err:find(e, 1, true), "stderr lacks «" .. e .. "»:\n" .. err)
    end
    -- The regex error says what is wrong with it.
    assert.truthy(err:find("routes%[1%]%.paths%[0%]:[^\n]*regex[^\n]*"), err)
    -- One line per error, plus the summary line naming the file.
    assert.truthy(#lines_of(err) >= #expected + 1, err)
    assert.truthy(err:find("test failed", 1, true), err)
    assert.truthy(err:find(path, 1, true), err)
  end)

  it("-t reports a YAML syntax error with line and column", function()
    local path = conf_file('listen: ["127.0.0.1:1"]\nroutes:\n  - name: [x\n')
    local code, _, err = run("-t -c " .. sq(path))
    assert.equal(1, code)
    assert.truthy(err:find("tollgate%.yaml:%d+:%d+: "), err)
    -- A tab used for indentation is a syntax error too, placed precisely.
    path = conf_file('listen: ["127.0.0.1:1"]\nadmin:\n\tlisten: "127.0.0.1:2"\n')
    code, _, err = run("-t -c " .. sq(path))
    assert.equal(1, code)
    assert.truthy(err:find("tollgate%.yaml:3:%d+: "), err)
  end)

  it("-t reports a missing file and an empty file", function()
    local code, _, err = run("-t -c /nonexistent/tollgate.yaml")
    assert.equal(1, code)
    assert.truthy(err:find("/nonexistent/tollgate.yaml", 1, true), err)
    local path = conf_file("")
    code, _, err = run("-t -c " .. sq(path))
    assert.equal(1, code)
    assert.truthy(#err > 0)
  end)

  it("-t reports duplicate route names and a missing upstream/response", function()
    local path = conf_file(helpers.yaml({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      routes = {
        { name = "same", paths = { "/a" }, response = { body = "a" } },
        { name = "same", paths = { "/b" }, response = { body = "b" } },
        { name = "nothing", paths = { "/c" } },
        { name = "nopath", response = { body = "x" } },
        { name = "relative", paths = { "api" }, response = { body = "x" } },
      },
    }))
    local code, _, err = run("-t -c " .. sq(path))
    assert.equal(1, code)
    assert.truthy(err:find('routes[1].name: duplicate route name "same"', 1, true), err)
    assert.truthy(err:find("routes[2]: missing", 1, true), err)
    assert.truthy(err:find('routes[3]: missing "paths"', 1, true), err)
    assert.truthy(err:find("routes[4].paths[0]: must start with", 1, true), err)
  end)

  it("-t reports address mistakes: duplicates, admin clash, bad ports, target paths", function()
    local p = helpers.free_port()
    local path = conf_file(helpers.yaml({
      listen = { "127.0.0.1:" .. p, "127.0.0.1:" .. p, "127.0.0.1:99999", "localhost" },
      admin = { listen = "127.0.0.1:" .. p },
      upstreams = {
        u1 = { targets = { { url = "http://127.0.0.1:1/base" } } },
        u2 = { targets = { { url = "ftp://127.0.0.1:1" } } },
        u3 = { targets = helpers.array() },
      },
      routes = { { name = "r", paths = { "/" }, upstream = "u1" } },
    }))
    local code, _, err = run("-t -c " .. sq(path))
    assert.equal(1, code)
    for _, e in ipairs({
      "listen[1]: \"127.0.0.1:" .. p .. "\" is listed twice",
      "listen[2]: invalid port",
      "listen[3]: invalid address",
      "admin.listen: \"127.0.0.1:" .. p .. "\" is already used by listen[0]",
      "upstreams.u1.targets[0].url: a target url is scheme://host[:port] only",
      "upstreams.u2.targets[0].url: unsupported scheme",
      "upstreams.u3.targets: expected at least one target",
    }) do
      assert.truthy(err:find(e, 1, true), "stderr lacks «" .. e .. "»:\n" .. err)
    end
  end)

  it("rejects unknown options with a usage message", function()
    local code, _, err = run("-x")
    assert.equal(2, code)
    assert.truthy(err:find("usage", 1, true), err)
  end)

  it("the shipped conf/tollgate.yaml passes -t", function()
    local code, out, err = run("-t -c conf/tollgate.yaml")
    assert.equal(0, code, err)
    assert.truthy(out:find("test is successful", 1, true))
  end)

  it("refuses to start on a bad config: exit 1, every error on stderr", function()
    local path = conf_file(fmt(BROKEN, helpers.free_port(), helpers.free_port()))
    local code, _, err = run("-c " .. sq(path), 5)
    assert.equal(1, code)
    assert.truthy(err:find('routes[2].upstream: unknown upstream "userz"', 1, true), err)
    assert.truthy(err:find("bogus_top: unknown key", 1, true), err)
  end)

  it("refuses to start when a listen port is taken, naming the address", function()
    local busy = assert(socket.bind("127.0.0.1", 0))
    local _, port = busy:getsockname()
    local path = conf_file(helpers.yaml({
      listen = { "127.0.0.1:" .. port },
      error_log = { path = "stderr", level = "info" },
      access_log = { path = "off" },
      worker_processes = 1,
      routes = { { name = "x", paths = { "/" }, response = { body = "x" } } },
    }))
    local t0 = socket.gettime()
    local code, _, err = run("-c " .. sq(path), 5)
    busy:close()
    assert.truthy(code ~= 0 and code ~= 137, "exit code " .. tostring(code) .. ": " .. err)
    assert.truthy(socket.gettime() - t0 < 4, "should fail at once")
    assert.truthy(err:find("127.0.0.1:" .. port, 1, true), err)
    assert.truthy(err:lower():find("in use", 1, true), err)
  end)

  it("refuses to start when the admin port is taken, naming the address", function()
    local busy = assert(socket.bind("127.0.0.1", 0))
    local _, port = busy:getsockname()
    local dir = helpers.tmpdir("busy")
    local path = conf_file(helpers.yaml({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      admin = { listen = "127.0.0.1:" .. port },
      error_log = { path = dir .. "/error.log", level = "info" },
      access_log = { path = "off" },
      worker_processes = 1,
      routes = { { name = "x", paths = { "/" }, response = { body = "x" } } },
    }))
    local code, _, err = run("-c " .. sq(path), 5)
    busy:close()
    assert.truthy(code ~= 0 and code ~= 137, "exit code " .. tostring(code))
    -- With a file error log the message lands there (stderr may also say).
    local both = err .. (read_file(dir .. "/error.log") or "")
    assert.truthy(both:find("127.0.0.1:" .. port, 1, true), both)
    assert.truthy(both:lower():find("in use", 1, true), both)
  end)
end)

describe("the shipped conf/tollgate.yaml", function()
  local gw, ports

  -- The shipped file with every fixed port replaced by a free one, in one
  -- pass so a new port can never be rewritten again.
  local function shipped_text()
    local text = assert(read_file(helpers.repo_root() .. "/conf/tollgate.yaml"))
    ports = {}
    for _, p in ipairs({ "8080", "3001", "3002", "3003", "3004", "9901" }) do
      ports[p] = tostring(helpers.free_port())
    end
    local new, n = text:gsub("%f[%d](%d+)%f[%D]", function(d) return ports[d] end)
    assert.truthy(n > 0)
    -- Every port must have been found, or the test would use the real one.
    for p in pairs(ports) do
      assert.falsy(new:find("%f[%d]" .. p .. "%f[%D]"), "port " .. p .. " left in the config")
    end
    return new
  end

  lazy_setup(function()
    gw = helpers.start_gateway(shipped_text(), {
      port = tonumber(ports["8080"]), admin_port = tonumber(ports["9901"]), timeout = 15,
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  it("routes /api/v1/users/42 to the users service with the prefix stripped", function()
    local res = assert(gw.request({ path = "/api/v1/users/42?verbose=1" }))
    assert.equal(200, res.status)
    assert.equal("GET", res.json.method)
    assert.equal("/users/42", res.json.path)
    assert.equal("verbose=1", res.json.query)
    assert.equal("demo-users-service", res.json.route)
    assert.equal("localhost", res.json.headers.host)
    assert.equal("127.0.0.1", res.json.headers["x-forwarded-for"])
    -- its plugins: the global request-id and a local rate limit
    assert.equal("100", res.headers["x-ratelimit-limit"])
    assert.matches("^%x+%-%x+%-4%x+%-%x+%-%x+$", res.headers["x-request-id"])
    assert.equal(res.headers["x-request-id"], res.json.headers["x-request-id"])
  end)

  it("routes /api/v1/orders to the orders service behind jwt-auth", function()
    local res = assert(gw.request({ path = "/api/v1/orders" }))
    assert.equal(401, res.status)
    assert.same({ error = "Missing token" }, res.json)
    -- The demo token conf/demo-token.sh prints, made here the same way.
    local crypto = require "tollgate.crypto"
    local enc = crypto.base64url_encode
    local now = os.time()
    local signing = enc('{"alg":"HS256","typ":"JWT"}') .. "."
      .. enc(string.format('{"iss":"demo-issuer","sub":"demo-user","exp":%d}', now + 600))
    local token = signing .. "." .. enc(crypto.hmac_sha256("demo-secret-change-me", signing))
    res = assert(gw.request({ path = "/api/v1/orders", headers = { Authorization = "Bearer " .. token } }))
    assert.equal(200, res.status)
    assert.equal("/orders", res.json.path)
    assert.equal("demo-orders-service", res.json.route)
    assert.equal("demo-user", res.json.headers["x-user-id"])
    assert.is_nil(res.json.headers.authorization)
  end)

  it("routes POST /api/v1/payments with its body behind key-auth, and refuses other methods", function()
    local res = assert(gw.request({ method = "POST", path = "/api/v1/payments", body = { amount = 5 } }))
    assert.equal(401, res.status)
    res = assert(gw.request({ method = "POST", path = "/api/v1/payments", body = { amount = 5 },
                              headers = { ["X-API-Key"] = "demo-key-change-me" } }))
    assert.equal(200, res.status)
    assert.equal("demo-client", res.json.headers["x-client-id"])
    assert.equal("1000", res.headers["x-ratelimit-limit"])   -- the pro plan
    assert.equal("POST", res.json.method)
    assert.equal("/payments", res.json.path)
    assert.equal('{"amount":5}', res.json.body)
    assert.equal("demo-payments-service", res.json.route)
    res = assert(gw.request({ method = "DELETE", path = "/api/v1/payments" }))
    assert.equal(404, res.status)
  end)

  it("routes /api/v2/users to the users-v2 service, answers wrapped in a JSON envelope", function()
    local res = assert(gw.request({ path = "/api/v2/users" }))
    assert.equal(200, res.status)
    assert.equal("2.0", res.json.api_version)
    assert.equal(res.headers["x-request-id"], res.json.request_id)
    assert.equal("/users", res.json.data.path)
    assert.equal("demo-users-v2-service", res.json.data.route)
  end)

  it("answers /health itself and 404s an unknown path", function()
    local res = assert(gw.request({ path = "/health" }))
    assert.equal(200, res.status)
    assert.same({ status = "ok" }, res.json)
    res = assert(gw.request({ path = "/nope" }))
    assert.equal(404, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ error = "Not Found" }, res.json)
  end)

  it("serves the admin /health and /status", function()
    local res = assert(gw.admin_request({ path = "/health" }))
    assert.equal(200, res.status)
    assert.same({ status = "ok" }, res.json)
    res = assert(gw.admin_request({ path = "/status" }))
    assert.equal(200, res.status)
    assert.equal("table", type(res.json))
    assert.equal("number", type(res.json.requests))
    assert.truthy(res.json.requests >= 1)
    assert.equal("table", type(res.json.workers))
    assert.truthy(#res.json.workers >= 1)
  end)

  it("logs JSON access lines to stdout and no errors to stderr", function()
    assert(gw.request({ path = "/api/v1/orders/logged" }))
    local lines
    assert(helpers.wait_until(function()
      lines = lines_of(read_file(gw.dir .. "/stdout.log") or "")
      for _, l in ipairs(lines) do
        if l:find("/api/v1/orders/logged", 1, true) then
          return true
        end
      end
    end, 3))
    for _, l in ipairs(lines) do
      assert.truthy(cjson.decode(l), "not JSON: " .. l)
    end
    local err = gw.stderr()
    assert.falsy(err:find("[error]", 1, true), err)
    assert.falsy(err:find("[crit]", 1, true), err)
  end)
end)
