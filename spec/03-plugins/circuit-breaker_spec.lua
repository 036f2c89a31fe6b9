-- circuit-breaker_spec.lua: a breaker per upstream target, shared by two
-- workers. Opening after `failures` consecutive 5xx answers, timeouts and
-- refused connections, or an error ratio; the 503 {"error":"Service
-- unavailable"} while every target is open (nothing reaches the upstream);
-- half-open after open_s with at most `probes` requests at a time; closing
-- on a successful probe, re-opening on a failed one; an open target left
-- out while the others serve; recovery of a target that comes back; config
-- errors. Upstream failures come from tg-echo (X-Echo-Status: 500,
-- X-Echo-Mode: hang) and from a port bound but not listening, later served
-- by a new tg-echo.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"
local socket = require "socket"
local ffi = require "ffi"

ffi.cdef [[ int fcntl(int fd, int cmd, ...); ]]

local OPEN_S = 1

describe("circuit-breaker plugin", function()
  local echo, gw, dead_port, dead_holder, revived

  setup(function()
    echo = helpers.start_echo()
    -- The dead target's port is bound here without listening: connects
    -- are refused, and no other process (parallel specs) can take it.
    -- Close-on-exec, or the gateway spawned below would inherit the socket
    -- and keep the port bound after we let it go.
    dead_holder = assert(socket.tcp())
    assert(dead_holder:bind("127.0.0.1", 0))
    assert(ffi.C.fcntl(dead_holder:getfd(), 2 --[[F_SETFD]], ffi.new("int", 1 --[[FD_CLOEXEC]])) == 0)
    local _, held = dead_holder:getsockname()
    dead_port = tonumber(held)
    local function up(targets, extra)
      local u = { targets = targets, retries = 0, passive_health = { max_fails = 0 } }
      for k, v in pairs(extra or {}) do u[k] = v end
      return u
    end
    local function route(name, upstream, conf)
      return { name = name, paths = { "/" .. name }, upstream = upstream,
               plugins = { ["circuit-breaker"] = conf } }
    end
    local one = { { url = echo.url() } }
    gw = helpers.start_gateway({
      worker_processes = 2,
      shared_dicts = { breakers = "1m" },
      upstreams = {
        single = up(one),
        probing = up(one),
        concurrent = up(one),
        slow = up(one, { timeouts = { read_ms = 200 } }),
        ratio = up(one),
        -- A live target and a dead one; connect failures are retried on the
        -- other target, so clients see no error while the breaker counts.
        pair = up({ { url = echo.url() }, { url = "http://127.0.0.1:" .. dead_port } }, { retries = 1 }),
      },
      routes = {
        route("single", "single", { failures = 3, open_s = OPEN_S }),
        route("probing", "probing", { failures = 2, open_s = OPEN_S }),
        route("concurrent", "concurrent", { failures = 1, open_s = OPEN_S, probes = 1 }),
        route("slow", "slow", { failures = 2, open_s = 30 }),
        route("ratio", "ratio", { failures = 1000, error_ratio = 0.5, min_requests = 10, window_s = 30, open_s = 30 }),
        route("pair", "pair", { failures = 3, open_s = OPEN_S }),
        route("only-502", "single", { failures = 1, open_s = OPEN_S, failure_statuses = { 502 } }),
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  local function get(path, headers)
    return assert(gw.request({ path = path, headers = headers }))
  end

  local FAIL = { ["X-Echo-Status"] = "500" }

  local function assert_open(res)
    assert.equal(503, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ error = "Service unavailable" }, res.json)
    local ra = tonumber(res.headers["retry-after"])
    assert.is_true(ra ~= nil and ra >= 1)
  end

  -- State changes happen in the log phase, after the response has gone
  -- out, and the next request may reach the other worker first: wait for
  -- the transition's log line (written right after the change) before
  -- asserting what follows it.
  local function logged(text)
    return helpers.wait_until(function() return gw.error_log():find(text, 1, true) end, 3, 0.02)
  end

  local function transitions(kind)
    local n = 0
    for line in gw.error_log():gmatch("[^\n]+") do
      if line:find(kind, 1, true) then n = n + 1 end
    end
    return n
  end

  it("counts consecutive failures only: a success in between resets the count", function()
    -- The reset happens in the success's log phase, which logs nothing;
    -- on a loaded machine the next request can reach the other worker
    -- before that phase ran, so give it a moment (it takes microseconds).
    local function success()
      assert.equal(200, get("/single").status)
      helpers.sleep(0.05)
    end
    assert.equal(500, get("/single", FAIL).status)
    assert.equal(500, get("/single", FAIL).status)
    success()
    assert.equal(500, get("/single", FAIL).status)
    assert.equal(500, get("/single", FAIL).status)
    success()
    helpers.sleep(0.1)
    assert.equal(0, transitions('opened for upstream "single"'))
  end)

  it("opens after `failures` consecutive 5xx and answers 503 without the upstream, in every worker", function()
    for _ = 1, 3 do assert.equal(500, get("/single", FAIL).status) end
    assert(logged('opened for upstream "single" target 127.0.0.1:' .. echo.port .. " (3 consecutive failures)"))
    assert(echo.reset_stats())
    for _ = 1, 20 do assert_open(get("/single")) end
    assert.equal(0, echo.stats().requests)
  end)

  it("half-opens after open_s and closes on a successful probe", function()
    helpers.sleep(OPEN_S + 0.2)
    local res = get("/single")
    assert.equal(200, res.status)
    assert.equal("/single", res.json.path)
    assert(logged('closed for upstream "single" target 127.0.0.1:' .. echo.port .. " after a successful probe"))
    for _ = 1, 10 do assert.equal(200, get("/single").status) end
  end)

  it("re-opens on a failed probe for another open_s", function()
    for _ = 1, 2 do assert.equal(500, get("/probing", FAIL).status) end
    assert(logged('opened for upstream "probing"'))
    assert_open(get("/probing"))
    helpers.sleep(OPEN_S + 0.2)
    assert.equal(500, get("/probing", FAIL).status)     -- the probe fails
    assert(logged('probe of upstream "probing" target 127.0.0.1:' .. echo.port .. " failed (500)"))
    assert_open(get("/probing"))
    helpers.sleep(OPEN_S + 0.2)
    assert.equal(200, get("/probing").status)
    assert(logged('closed for upstream "probing"'))
    assert.equal(200, get("/probing").status)
  end)

  it("lets only `probes` requests through at a time while half-open", function()
    assert.equal(500, get("/concurrent", FAIL).status)
    assert(logged('opened for upstream "concurrent"'))
    assert_open(get("/concurrent"))
    helpers.sleep(OPEN_S + 0.2)
    -- A slow probe holds the only slot; meanwhile others are refused.
    local probe = assert(helpers.connect(gw.port))
    assert(probe:send("GET /concurrent HTTP/1.1\r\nHost: a\r\nX-Echo-Delay-Ms: 600\r\n\r\n"))
    helpers.sleep(0.2)
    for _ = 1, 5 do assert_open(get("/concurrent")) end
    local res = assert(probe:read_response({}))
    probe:close()
    assert.equal(200, res.status)
    assert(logged('closed for upstream "concurrent"'))
    for _ = 1, 5 do assert.equal(200, get("/concurrent").status) end
  end)

  it("counts timeouts as failures", function()
    local hang = { ["X-Echo-Mode"] = "hang" }
    assert.equal(504, get("/slow", hang).status)
    assert.equal(504, get("/slow", hang).status)
    assert(logged('opened for upstream "slow"'))
    assert_open(get("/slow"))
  end)

  it("opens on the error ratio once the window holds min_requests attempts", function()
    -- Alternating: 50% errors, never two in a row; nothing opens before
    -- the tenth attempt.
    for i = 1, 9 do
      local res = get("/ratio", i % 2 == 0 and FAIL or nil)
      assert.equal(i % 2 == 0 and 500 or 200, res.status, "request " .. i)
    end
    helpers.sleep(0.1)
    assert.equal(0, transitions('opened for upstream "ratio"'))
    assert.equal(500, get("/ratio", FAIL).status)      -- 10 attempts, 5 failed
    assert(logged('opened for upstream "ratio" target 127.0.0.1:' .. echo.port
                  .. " (error ratio 50% over 10 attempts)"))
    assert_open(get("/ratio"))
  end)

  it("leaves an open target out while the others serve, and takes it back when it recovers", function()
    -- Round robin over the live and the dead target: every other request
    -- tries the dead one first and is retried on the live one. Two
    -- workers balance independently, so how many requests it takes to try
    -- the dead one 3 times varies: bounded at 40.
    local opened = false
    for _ = 1, 40 do
      assert.equal(200, get("/pair").status)
      opened = transitions('opened for upstream "pair" target 127.0.0.1:' .. dead_port) > 0
      if opened then break end
    end
    assert.is_true(opened)
    -- Open: the dead target is not even tried (no more connect errors).
    local function refused_lines()
      local n = 0
      for line in gw.error_log():gmatch("[^\n]+") do
        if line:find("127.0.0.1:" .. dead_port, 1, true) and not line:find("circuit-breaker", 1, true) then
          n = n + 1
        end
      end
      return n
    end
    local before = refused_lines()
    for _ = 1, 10 do assert.equal(200, get("/pair").status) end
    assert.equal(before, refused_lines())
    -- The target comes back (on the port held for it); after open_s a probe
    -- reaches it and closes the breaker.
    dead_holder:close()
    revived = helpers.start_echo({ port = dead_port })
    helpers.sleep(OPEN_S + 0.2)
    for _ = 1, 20 do assert.equal(200, get("/pair").status) end
    assert(logged('closed for upstream "pair" target 127.0.0.1:' .. dead_port))
    assert.is_true(revived.stats().requests >= 5)
  end)

  it("counts only failure_statuses when they are given", function()
    -- /only-502 shares the "single" upstream's breaker (state is per target).
    for _ = 1, 3 do assert.equal(500, get("/only-502", FAIL).status) end
    assert.equal(200, get("/only-502").status)
    local before = transitions('opened for upstream "single"')
    assert.equal(502, get("/only-502", { ["X-Echo-Status"] = "502" }).status)
    assert(helpers.wait_until(function() return transitions('opened for upstream "single"') > before end, 3, 0.02))
    assert_open(get("/only-502"))
    assert_open(get("/single"))
  end)

  it("logged no errors, and the access log shows the 503s without an upstream", function()
    local saw = false
    for _, line in ipairs(gw.access_log()) do
      local e = cjson.decode(line)
      if e and e.status == 503 then
        saw = true
        assert.is_nil(e.upstream_status)
      end
    end
    assert.is_true(saw)
    for line in gw.error_log():gmatch("[^\n]+") do
      if line:find("%[error%]") then
        -- The only errors allowed: the dead target's refused connects and
        -- the hanging upstream's timeouts.
        assert.truthy(line:find("127.0.0.1:" .. dead_port, 1, true)
                      or line:find('upstream "slow" .* timed out'), line)
      end
    end
  end)
end)

describe("circuit-breaker config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports a missing shared dict and bad values with YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      shared_dicts = { other = "1m" },
      upstreams = { a = { targets = { { url = "http://127.0.0.1:9" } } } },
      routes = {
        { name = "r0", paths = { "/r0" }, upstream = "a", plugins = { ["circuit-breaker"] = {} } },
        { name = "r1", paths = { "/r1" }, upstream = "a", plugins = { ["circuit-breaker"] = {
          dict = "nope", failures = 0, open_s = 0, error_ratio = 1.5, failure_statuses = { 200 } } } },
        { name = "r2", paths = { "/r2" }, upstream = "a", plugins = { ["circuit-breaker"] = { dict = "other" } } },
      },
    })
    assert.is_false(ok)
    assert.truthy(out:find('routes[0].plugins.circuit-breaker: dict: shared dict "breakers" is not configured (add it to shared_dicts)', 1, true), out)
    assert.truthy(out:find('routes[1].plugins.circuit-breaker.dict: shared dict "nope" is not configured', 1, true), out)
    assert.truthy(out:find("routes[1].plugins.circuit-breaker.failures: expected a positive integer", 1, true), out)
    assert.truthy(out:find("routes[1].plugins.circuit-breaker.open_s: expected a positive number", 1, true), out)
    assert.truthy(out:find("routes[1].plugins.circuit-breaker.error_ratio: expected a number > 0 and <= 1", 1, true), out)
    assert.truthy(out:find("routes[1].plugins.circuit-breaker.failure_statuses[0]: expected an integer between 400 and 599", 1, true), out)
    assert.falsy(out:find("routes[2]", 1, true), out)
  end)
end)
