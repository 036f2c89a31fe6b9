-- rate-limiting_spec.lua: the rate-limiting plugin against the real
-- gateway (2 workers), the real tg-echo upstream and real Redis.
--
-- One gateway carries one route per case and policy (route names are part
-- of the counters' keys, so cases never share counters). A second gateway
-- with the same config shares the Redis (two instances), and a third one
-- has its own Redis, which the fault tests freeze (SIGSTOP), stop and
-- restart.
--
-- Windows are long (60 s) where a case only counts, and short (1-4 s) where
-- it follows an algorithm through time; time-based cases first align to a
-- window boundary and aim at the middle of the intervals their expectation
-- holds for (±0.5 s), so scheduling jitter cannot flip a result.

local helpers = require "spec.helpers"
local socket = require "socket"

local gettime = socket.gettime
local floor, ceil = math.floor, math.ceil

local POLICIES = { "local", "redis" }
local ALGS = { fixed_window = "f", sliding_window = "s", token_bucket = "t" }
local RL_HEADERS = { "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                     "ratelimit-policy", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset" }

-- Sleeps until the current `w`-second window (aligned to the epoch, like
-- the plugin's) has at least `need` seconds left, so a counting case never
-- straddles a fixed window's end.
local function avoid_edge(w, need)
  local left = w - gettime() % w
  if left < need then helpers.sleep(left + 0.05) end
end

-- Sleeps until `off` seconds into the next `w`-second window; returns that
-- window's start time.
local function at_offset(w, off)
  local now = gettime()
  local start = (floor(now / w) + 1) * w
  helpers.sleep(start + off - now)
  return start
end

-- Live client connections per worker slot of gw, from the admin /status.
local function worker_connections(gw)
  local res = assert(gw.admin_request({ path = "/status" }))
  local out = {}
  for _, w in ipairs(res.json.workers) do out[#out + 1] = w.connections_active end
  return out
end

-- Opens n connections first, then sends one request on each, then reads
-- every answer: the requests reach the gateway together. With `spread`
-- (a gateway), the connections are opened again (up to 5 times) until each
-- of its workers holds at least 10 of them, so both workers really take
-- part. Returns { [status] = count }.
local function burst(ports, n, path, spread)
  local conns
  for _ = 1, 5 do
    conns = {}
    for i = 1, n do
      conns[i] = assert(helpers.connect(ports[(i - 1) % #ports + 1], { timeout = 10 }))
      if i % 20 == 0 then helpers.sleep(0.005) end
    end
    if not spread then break end
    helpers.sleep(0.05)
    local per = worker_connections(spread)
    local low = math.min(unpack(per))
    if #per == 2 and low >= 10 then break end
    for i = 1, n do conns[i]:close() end
    conns = nil
    helpers.sleep(0.1)
  end
  assert(conns, "the connections never spread over both workers")
  local bytes = helpers.encode_request({ path = path, host = "localhost" })
  for i = 1, n do assert(conns[i]:send(bytes)) end
  local counts = {}
  for i = 1, n do
    local res = assert(conns[i]:read_response({}))
    counts[res.status] = (counts[res.status] or 0) + 1
    conns[i]:close()
  end
  return counts
end

local function assert_429(res, retry_max)
  assert.equal(429, res.status)
  assert.equal("application/json", res.headers["content-type"])
  assert.equal("Too Many Requests", res.json.error)
  local after = tonumber(res.headers["retry-after"])
  assert.is_number(after)
  assert.equal(after, res.json.retry_after)
  assert.is_true(after >= 1 and after <= retry_max, "retry-after " .. after)
  -- Exactly the documented body, in this key order.
  assert.equal('{"error":"Too Many Requests","retry_after":' .. after .. '}', res.body)
end

local function rl_route(name, path, conf)
  return { name = name, paths = { path }, upstream = "echo", plugins = { ["rate-limiting"] = conf } }
end

-- Sends a signal to a process this spec started.
local function signal(pid, sig)
  local rc = os.execute("kill -s " .. sig .. " " .. pid .. " 2>/dev/null")
  return rc == 0 or rc == true
end

-- [error] and [crit] lines of an error log, but those matching `allowed`.
local function errors_in(text, allowed)
  local bad = {}
  for line in text:gmatch("[^\n]+") do
    if (line:find("%[error%]") or line:find("%[crit%]")) and not (allowed and line:find(allowed)) then
      bad[#bad + 1] = line
    end
  end
  return table.concat(bad, "\n")
end

describe("rate-limiting", function()
  local echo, redis, gw, gw2

  setup(function()
    echo = helpers.start_echo()
    redis = helpers.start_redis()
    local routes = {}
    local function add(r) routes[#routes + 1] = r end
    for _, pol in ipairs(POLICIES) do
      for alg, a in pairs(ALGS) do
        add(rl_route("b-" .. pol .. "-" .. a, "/b/" .. pol .. "/" .. a,
                     { limit = 5, window_s = 60, algorithm = alg, policy = pol, by = "ip" }))
        add(rl_route("c-" .. pol .. "-" .. a, "/c/" .. pol .. "/" .. a,
                     { limit = 100, window_s = 60, algorithm = alg, policy = pol, by = "ip" }))
      end
      add(rl_route("h-" .. pol, "/h/" .. pol,
                   { limit = 3, window_s = 60, algorithm = "fixed_window", policy = pol }))
      add(rl_route("plans-" .. pol, "/plans/" .. pol,
                   { limit = 2, window_s = 60, algorithm = "fixed_window", policy = pol,
                     plans = { pro = 4, banned = 0 } }))
      add(rl_route("multi-" .. pol, "/multi/" .. pol,
                   { algorithm = "fixed_window", policy = pol,
                     limits = { { limit = 3, window_s = 1 }, { limit = 5, window_s = 60 } } }))
      add(rl_route("sw-" .. pol, "/sw/" .. pol,
                   { limit = 4, window_s = 4, algorithm = "sliding_window", policy = pol }))
      add(rl_route("tb-" .. pol, "/tb/" .. pol,
                   { limit = 4, window_s = 4, algorithm = "token_bucket", policy = pol }))
      for _, g in ipairs({ "g1", "g2" }) do
        add(rl_route(g .. "-" .. pol, "/" .. g .. "/" .. pol,
                     { limit = 3, window_s = 60, algorithm = "fixed_window", policy = pol,
                       scope = "global", by = "ip" }))
      end
    end
    add(rl_route("two", "/two", { limit = 10, window_s = 60, algorithm = "fixed_window", policy = "redis" }))
    add(rl_route("two-c", "/two-c", { limit = 100, window_s = 60, algorithm = "sliding_window",
                                      policy = "redis" }))
    add(rl_route("ns", "/ns", { limit = 5, window_s = 60, algorithm = "fixed_window", policy = "redis" }))
    add(rl_route("by-header", "/byh", { limit = 2, window_s = 60, by = "header:X-Key" }))
    add(rl_route("by-path", "/byp", { limit = 2, window_s = 60, by = "path" }))
    add(rl_route("quiet", "/quiet", { limit = 1, window_s = 60, headers = false, status = 420 }))
    -- r1 and r2 get the top-level config (one conf table, two routes).
    add({ name = "r1", paths = { "/r1" }, upstream = "echo" })
    add({ name = "r2", paths = { "/r2" }, upstream = "echo" })
    add({ name = "plain", paths = { "/plain" }, upstream = "echo", plugins = { ["rate-limiting"] = false } })

    local conf = {
      worker_processes = 2,
      shared_dicts = { ratelimit = "2m" },
      redis = { host = "127.0.0.1", port = redis.port, timeout_ms = 500 },
      plugins_path = { helpers.repo_root() .. "/spec/fixtures/plugins" },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      plugins = {
        ["rl-consumer"] = {},
        ["rate-limiting"] = { limit = 3, window_s = 60, algorithm = "fixed_window", by = "ip" },
      },
      routes = routes,
    }
    gw = helpers.start_gateway(conf)
    gw2 = helpers.start_gateway(conf)
  end)

  teardown(function()
    helpers.stop_all()
  end)

  describe("config", function()
    it("reports every mistake with its YAML path", function()
      local base = { limit = 5, window_s = 1 }
      local function with(t)
        local c = {}
        for k, v in pairs(base) do c[k] = v end
        for k, v in pairs(t) do c[k] = v end
        return c
      end
      local bad = {
        with({ algorithm = "leaky", limit = -1 }),
        { limits = { { limit = 1 } }, by = "cookie" },
        { window_s = 5 },
        { limits = { { limit = 1, window_s = 1 } }, window_s = 5, plans = { pro = 2 } },
        { limits = { { limit = 1, window_s = 1 }, { limit = 9, window_s = 1, algorithm = "sliding_window" } } },
        with({ status = 200, policy = "memcached", limt = 3, plans = { pro = -1 }, window_s = 0 }),
        with({ by = "header:", scope = "world", fault_tolerant = "yes", redis_timeout_ms = 0 }),
      }
      local routes = {}
      for i, c in ipairs(bad) do
        routes[i] = { name = "r" .. i, paths = { "/r" .. i }, response = { status = 200, body = "x" },
                      plugins = { ["rate-limiting"] = c } }
      end
      local ok, out = helpers.test_config({ listen = { "127.0.0.1:" .. helpers.free_port() },
                                            shared_dicts = { ratelimit = "1m" }, routes = routes })
      assert.is_false(ok)
      local p = "routes[%d].plugins.rate-limiting"
      local expected = {
        (p .. ".algorithm: expected one of: fixed_window, sliding_window, token_bucket"):format(0),
        (p .. ".limit: expected a non-negative integer"):format(0),
        (p .. ".by: expected consumer, ip, route, path or header:NAME"):format(1),
        (p .. ".limits[0].window_s: required field missing"):format(1),
        (p .. ": exactly one of these fields must be set: limit, limits"):format(2),
        (p .. ".window_s: not allowed with limits (set window_s on each item of limits)"):format(3),
        (p .. ".plans: not allowed with limits (set plans on each item of limits)"):format(3),
        (p .. ".limits: items 0 and 1 have the same window_s and algorithm (they would share one counter)"):format(4),
        (p .. ".status: expected an integer between 400 and 599"):format(5),
        (p .. ".policy: expected one of: local, redis"):format(5),
        (p .. ".limt: unknown key"):format(5),
        (p .. ".plans.pro: expected a non-negative integer"):format(5),
        (p .. ".window_s: expected a number between 0.001 and 31622400"):format(5),
        (p .. ".by: expected consumer, ip, route, path or header:NAME"):format(6),
        (p .. ".scope: expected one of: route, global"):format(6),
        (p .. ".fault_tolerant: expected true or false"):format(6),
        (p .. ".redis_timeout_ms: expected an integer between 1 and 60000"):format(6),
      }
      for _, line in ipairs(expected) do
        assert.truthy(out:find(line, 1, true), "missing: " .. line .. "\nin:\n" .. out)
      end
    end)

    it("needs the shared dict for the local policy", function()
      local listen = { "127.0.0.1:" .. helpers.free_port() }
      local ok, out = helpers.test_config({
        listen = listen,
        routes = { { name = "a", paths = { "/a" }, response = { status = 200, body = "x" },
                     plugins = { ["rate-limiting"] = { limit = 1 } } } },
      })
      assert.is_false(ok)
      assert.truthy(out:find('routes[0].plugins.rate-limiting: no shared dict "ratelimit" '
                             .. '(policy local needs one: shared_dicts: { ratelimit: 10m })', 1, true), out)
      ok, out = helpers.test_config({
        listen = listen,
        redis = { port = 1 },
        routes = { { name = "a", paths = { "/a" }, response = { status = 200, body = "x" },
                     plugins = { ["rate-limiting"] = { limit = 1, policy = "redis" } } } },
      })
      assert.is_true(ok, out)
    end)
  end)

  for _, pol in ipairs(POLICIES) do
    describe("policy " .. pol, function()
      for alg, a in pairs(ALGS) do
        it(alg .. ": 5 pass, the 6th is 429 and never reaches the upstream", function()
          avoid_edge(60, 3)
          local path = "/b/" .. pol .. "/" .. a
          for i = 1, 5 do
            local res = assert(gw.request({ path = path }))
            assert.equal(200, res.status)
            assert.equal(path, res.json.path)
            assert.equal("5", res.headers["x-ratelimit-limit"])
            assert.equal(tostring(5 - i), res.headers["x-ratelimit-remaining"])
          end
          assert(echo.reset_stats())
          local res = assert(gw.request({ path = path }))
          -- A sliding window may make a client wait into the next window.
          assert_429(res, a == "t" and 12 or (a == "s" and 120 or 60))
          if a == "t" then assert.equal(12, res.json.retry_after) end   -- T = 60/5
          assert.equal("0", res.headers["x-ratelimit-remaining"])
          assert.equal(0, echo.stats().requests)
        end)

        it(alg .. ": 200 concurrent requests at limit 100 on 2 workers, exactly 100 pass", function()
          avoid_edge(60, 5)
          assert(echo.reset_stats())
          local counts = burst({ gw.port }, 200, "/c/" .. pol .. "/" .. a, gw)
          assert.same({ [200] = 100, [429] = 100 }, counts)
          assert.equal(100, echo.stats().requests)
        end)
      end

      it("sets every header on passing and rejected responses", function()
        avoid_edge(60, 3)
        local path = "/h/" .. pol
        for i = 1, 4 do
          local t0 = gettime()
          local res = assert(gw.request({ path = path, headers = { ["X-Echo-Status"] = i == 2 and 503 or nil } }))
          local t1 = gettime()
          local window_end = (floor(t0 / 60) + 1) * 60
          assert.equal(i == 4 and 429 or (i == 2 and 503 or 200), res.status)
          assert.equal("3", res.headers["x-ratelimit-limit"])
          assert.equal("3", res.headers["ratelimit-limit"])
          assert.equal("3;w=60", res.headers["ratelimit-policy"])
          local rem = tostring(math.max(0, 3 - i))
          assert.equal(rem, res.headers["x-ratelimit-remaining"])
          assert.equal(rem, res.headers["ratelimit-remaining"])
          assert.equal(window_end, tonumber(res.headers["x-ratelimit-reset"]))
          local delta = tonumber(res.headers["ratelimit-reset"])
          assert.is_true(delta >= floor(window_end - t1) and delta <= ceil(window_end - t0), "delta " .. delta)
          if i == 4 then
            assert_429(res, 60)
            assert.equal(delta, tonumber(res.headers["retry-after"]))
          else
            assert.is_nil(res.headers["retry-after"])
          end
        end
      end)

      it("takes the limit from the consumer's plan", function()
        avoid_edge(60, 3)
        local path = "/plans/" .. pol
        local function run(headers, n, limit)
          for i = 1, n do
            local res = assert(gw.request({ path = path, headers = headers }))
            assert.equal(200, res.status)
            assert.equal(tostring(limit), res.headers["x-ratelimit-limit"])
            assert.equal(limit .. ";w=60", res.headers["ratelimit-policy"])
            assert.equal(tostring(limit - i), res.headers["x-ratelimit-remaining"])
          end
          assert_429(assert(gw.request({ path = path, headers = headers })), 60)
        end
        run({ ["X-Consumer"] = "alice", ["X-Plan"] = "pro" }, 4, 4)
        run({ ["X-Consumer"] = "bob" }, 2, 2)
        run({ ["X-Consumer"] = "carol", ["X-Plan"] = "gold" }, 2, 2)   -- unknown plan: `limit`
        run({}, 2, 2)                                                  -- no consumer: by client IP
        -- A plan of 0 rejects without reaching storage or the upstream.
        assert(echo.reset_stats())
        local res = assert(gw.request({ path = path, headers = { ["X-Consumer"] = "dave", ["X-Plan"] = "banned" } }))
        assert_429(res, 60)
        assert.equal("0", res.headers["x-ratelimit-limit"])
        assert.equal(0, echo.stats().requests)
      end)

      it("applies several limits; a rejected request counts in none", function()
        avoid_edge(60, 6)
        local path = "/multi/" .. pol
        at_offset(1, 0.1)
        for i = 1, 3 do
          local res = assert(gw.request({ path = path }))
          assert.equal(200, res.status)
          -- Most restrictive: the 1 s limit (2, 1, 0 left) beats the 60 s one (4, 3, 2).
          assert.equal("3", res.headers["x-ratelimit-limit"])
          assert.equal(tostring(3 - i), res.headers["x-ratelimit-remaining"])
          assert.equal("3;w=1, 5;w=60", res.headers["ratelimit-policy"])
        end
        for _ = 1, 2 do
          local res = assert(gw.request({ path = path }))
          assert_429(res, 1)
          assert.equal("3", res.headers["x-ratelimit-limit"])
        end
        at_offset(1, 0.1)
        -- The two rejections did not count in the 60 s limit: 2 more pass.
        local res = assert(gw.request({ path = path }))
        assert.equal(200, res.status)
        assert.equal("5", res.headers["x-ratelimit-limit"])
        assert.equal("1", res.headers["x-ratelimit-remaining"])
        res = assert(gw.request({ path = path }))
        assert.equal(200, res.status)
        assert.equal("5", res.headers["x-ratelimit-limit"])
        assert.equal("0", res.headers["x-ratelimit-remaining"])
        res = assert(gw.request({ path = path }))
        assert_429(res, 60)
        assert.equal("5", res.headers["x-ratelimit-limit"])
        assert.is_true(res.json.retry_after > 1)
      end)

      it("shares counters between routes only with scope global", function()
        avoid_edge(60, 3)
        local g1, g2 = "/g1/" .. pol, "/g2/" .. pol
        assert.equal(200, assert(gw.request({ path = g1 })).status)
        assert.equal(200, assert(gw.request({ path = g1 })).status)
        local res = assert(gw.request({ path = g2 }))
        assert.equal(200, res.status)
        assert.equal("0", res.headers["x-ratelimit-remaining"])
        assert_429(assert(gw.request({ path = g1 })), 60)
        assert_429(assert(gw.request({ path = g2 })), 60)
      end)
    end)
  end

  it("sliding window: the previous window counts with its remaining weight", function()
    -- limit 4 per 4 s. Window A: 4 pass. In window B at 1.5 s the estimate
    -- is 4 * 0.625 = 2.5: one passes (3.5), the next (4.5) does not (exactly
    -- one fits anywhere in [1 s, 2 s)). At 3.5 s it is 4 * 0.125 + 1 = 1.5:
    -- two pass, the third does not (true in [3 s, 4 s)). Both policies run
    -- on the same timeline.
    local start = at_offset(4, 0.2)
    for _, pol in ipairs(POLICIES) do
      for _ = 1, 4 do assert.equal(200, assert(gw.request({ path = "/sw/" .. pol })).status) end
      -- Room again 1 s into window B (4 * 0.75 + 1 <= 4): about 4.8 s away.
      local res = assert(gw.request({ path = "/sw/" .. pol }))
      assert_429(res, 5)
      assert.is_true(res.json.retry_after >= 4)
    end
    helpers.sleep(start + 5.5 - gettime())
    for _, pol in ipairs(POLICIES) do
      local res = assert(gw.request({ path = "/sw/" .. pol }))
      assert.equal(200, res.status, pol)
      assert.equal("0", res.headers["x-ratelimit-remaining"])
      -- Room for a second one from 2 s on: about 0.5 s away.
      assert_429(assert(gw.request({ path = "/sw/" .. pol })), 1)
    end
    helpers.sleep(start + 7.5 - gettime())
    for _, pol in ipairs(POLICIES) do
      assert.equal(200, assert(gw.request({ path = "/sw/" .. pol })).status, pol)
      assert.equal(200, assert(gw.request({ path = "/sw/" .. pol })).status, pol)
      assert_429(assert(gw.request({ path = "/sw/" .. pol })), 1)
    end
  end)

  it("token bucket (GCRA): burst of limit, then one token per window/limit", function()
    -- limit 4 per 4 s: one token per second, burst 4.
    for _, pol in ipairs(POLICIES) do
      for i = 1, 4 do
        local res = assert(gw.request({ path = "/tb/" .. pol }))
        assert.equal(200, res.status)
        assert.equal(tostring(4 - i), res.headers["x-ratelimit-remaining"])
      end
      local res = assert(gw.request({ path = "/tb/" .. pol }))
      assert_429(res, 1)
      assert.equal("4", res.headers["ratelimit-reset"])   -- full again in 4 s
    end
    helpers.sleep(1.5)      -- 1.5 tokens
    for _, pol in ipairs(POLICIES) do
      assert.equal(200, assert(gw.request({ path = "/tb/" .. pol })).status, pol)
      assert_429(assert(gw.request({ path = "/tb/" .. pol })), 1)
    end
    helpers.sleep(2.0)      -- 0.5 + 2 tokens
    for _, pol in ipairs(POLICIES) do
      assert.equal(200, assert(gw.request({ path = "/tb/" .. pol })).status, pol)
      assert.equal(200, assert(gw.request({ path = "/tb/" .. pol })).status, pol)
      assert_429(assert(gw.request({ path = "/tb/" .. pol })), 1)
    end
  end)

  it("redis keys are prefixed, name route and identity, and expire", function()
    -- Passing or not, this leaves the current window's key in place.
    avoid_edge(60, 2)
    assert(gw.request({ path = "/b/redis/f" }))
    local keys = assert(redis.command("KEYS", "tg:rl:*"))
    assert.is_true(#keys > 0)
    local found = false
    for _, k in ipairs(keys) do
      if k:find("^tg:rl:r:b%-redis%-f:f60:ip:127%.0%.0%.1:%d+$") then found = true end
      -- -2: expired between KEYS and PTTL (short windows); -1 would be a key
      -- without TTL.
      local ttl = redis.command("PTTL", k)
      assert.is_true(ttl == -2 or (ttl > 0 and ttl <= 120000), k .. " ttl " .. tostring(ttl))
    end
    assert.is_true(found, table.concat(keys, " "))
  end)

  it("costs one EVALSHA per request and reloads the script after SCRIPT FLUSH", function()
    avoid_edge(60, 3)
    assert(redis.command("CONFIG", "RESETSTAT"))
    for i = 1, 3 do
      local res = assert(gw.request({ path = "/ns" }))
      assert.equal(200, res.status)
      assert.equal(tostring(5 - i), res.headers["x-ratelimit-remaining"])
    end
    local info = assert(redis.command("INFO", "commandstats"))
    assert.equal("3", info:match("cmdstat_evalsha:calls=(%d+)"), info)
    assert.is_nil(info:match("cmdstat_eval:"), info)
    assert.equal("OK", redis.command("SCRIPT", "FLUSH"))
    for i = 4, 5 do
      local res = assert(gw.request({ path = "/ns" }))
      assert.equal(200, res.status)
      assert.equal(tostring(5 - i), res.headers["x-ratelimit-remaining"])
    end
    assert_429(assert(gw.request({ path = "/ns" })), 60)
    info = assert(redis.command("INFO", "commandstats"))
    assert.equal("1", info:match("cmdstat_eval:calls=(%d+)"), info)
  end)

  it("one conf on two routes: separate counters with scope route", function()
    avoid_edge(60, 3)
    for _ = 1, 3 do assert.equal(200, assert(gw.request({ path = "/r1" })).status) end
    assert_429(assert(gw.request({ path = "/r1" })), 60)
    for _ = 1, 3 do assert.equal(200, assert(gw.request({ path = "/r2" })).status) end
    assert_429(assert(gw.request({ path = "/r2" })), 60)
    local res = assert(gw.request({ path = "/plain" }))
    assert.equal(200, res.status)
    assert.is_nil(res.headers["x-ratelimit-limit"])
  end)

  it("by header (falling back to the client IP) and by path", function()
    avoid_edge(60, 3)
    for _, key in ipairs({ "k1", "k2" }) do
      for _ = 1, 2 do
        assert.equal(200, assert(gw.request({ path = "/byh", headers = { ["X-Key"] = key } })).status)
      end
      assert_429(assert(gw.request({ path = "/byh", headers = { ["X-Key"] = key } })), 120)
    end
    for _ = 1, 2 do assert.equal(200, assert(gw.request({ path = "/byh" })).status) end
    assert_429(assert(gw.request({ path = "/byh" })), 120)
    for _, p in ipairs({ "/byp/a", "/byp/b" }) do
      for _ = 1, 2 do assert.equal(200, assert(gw.request({ path = p })).status) end
      assert_429(assert(gw.request({ path = p })), 120)
    end
  end)

  it("headers: false and a custom status", function()
    avoid_edge(60, 3)
    local res = assert(gw.request({ path = "/quiet" }))
    assert.equal(200, res.status)
    for _, h in ipairs(RL_HEADERS) do assert.is_nil(res.headers[h], h) end
    res = assert(gw.request({ path = "/quiet" }))
    assert.equal(420, res.status)
    assert.equal("Too Many Requests", res.json.error)
    assert.is_string(res.headers["retry-after"])
    for _, h in ipairs(RL_HEADERS) do assert.is_nil(res.headers[h], h) end
  end)

  it("two gateway instances on one Redis count together", function()
    avoid_edge(60, 5)
    local counts = {}
    for i = 1, 14 do
      local res = assert((i % 2 == 0 and gw2 or gw).request({ path = "/two" }))
      counts[res.status] = (counts[res.status] or 0) + 1
    end
    assert.same({ [200] = 10, [429] = 4 }, counts)
    assert(echo.reset_stats())
    counts = burst({ gw.port, gw2.port }, 200, "/two-c")
    assert.same({ [200] = 100, [429] = 100 }, counts)
    assert.equal(100, echo.stats().requests)
  end)

  it("logs no errors and counts no storage faults", function()
    local stats = assert(gw.admin_request({ path = "/rate-limiting/stats" }))
    assert.same({ scope = "instance", storage_errors = 0, allowed_on_error = 0, rejected_on_error = 0 },
                stats.json)
    assert.equal("", errors_in(gw.error_log()))
    assert.equal("", errors_in(gw2.error_log()))
  end)
end)

describe("rate-limiting with Redis failing", function()
  local echo, redis, gw

  setup(function()
    echo = helpers.start_echo()
    redis = helpers.start_redis()
    local function conf(extra)
      local c = { limit = 3, window_s = 60, algorithm = "fixed_window", policy = "redis" }
      for k, v in pairs(extra) do c[k] = v end
      return c
    end
    gw = helpers.start_gateway({
      worker_processes = 2,
      shared_dicts = { ratelimit = "1m" },
      redis = { host = "127.0.0.1", port = redis.port, timeout_ms = 50 },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      routes = {
        rl_route("ft", "/ft", conf({ fault_tolerant = true })),
        rl_route("fc", "/fc", conf({ fault_tolerant = false })),
        rl_route("slow", "/slow", conf({ limit = 1000, redis_timeout_ms = 1000 })),
        { name = "plain", paths = { "/plain" }, upstream = "echo" },
      },
    })
  end)

  teardown(function()
    if redis then signal(redis.pid, "CONT") end
    helpers.stop_all()
  end)

  local function timed(path)
    local t0 = gettime()
    local res = assert(gw.request({ path = path }))
    return res, gettime() - t0
  end

  it("keeps serving while Redis hangs or is down, and counts again when it is back", function()
    avoid_edge(60, 15)
    local res = timed("/ft")
    assert.equal(200, res.status)
    assert.equal("2", res.headers["x-ratelimit-remaining"])

    -- Frozen Redis: every call runs into the 50 ms timeout.
    signal(redis.pid, "STOP")
    local faults = 0
    for _ = 1, 10 do
      local r, dt = timed("/ft")
      assert.equal(200, r.status)
      assert.is_nil(r.headers["x-ratelimit-limit"])
      assert.is_true(dt < 0.5, "took " .. dt)
      r, dt = timed("/fc")
      assert.equal(503, r.status)
      assert.same({ error = "Service Unavailable" }, r.json)
      assert.is_true(dt < 0.5, "took " .. dt)
      faults = faults + 2
    end
    -- Requests waiting on Redis (1 s timeout) hold no worker: a plain
    -- request is answered meanwhile.
    local conns = {}
    local bytes = helpers.encode_request({ path = "/slow", host = "localhost" })
    local t0 = gettime()
    for i = 1, 10 do
      conns[i] = assert(helpers.connect(gw.port, { timeout = 5 }))
      assert(conns[i]:send(bytes))
    end
    helpers.sleep(0.1)
    local r, dt = timed("/plain")
    assert.equal(200, r.status)
    assert.is_true(dt < 0.3, "plain took " .. dt)
    for i = 1, 10 do
      local sr = assert(conns[i]:read_response({}))
      assert.equal(200, sr.status)
      conns[i]:close()
    end
    local waited = gettime() - t0
    assert.is_true(waited >= 0.9 and waited < 3, "slow requests took " .. waited)
    faults = faults + 10

    -- Redis gone: failures are immediate.
    signal(redis.pid, "CONT")
    local log_stop = #gw.error_log()
    redis.stop()
    for _ = 1, 5 do
      local r2, dt2 = timed("/ft")
      assert.equal(200, r2.status)
      assert.is_true(dt2 < 0.3, "took " .. dt2)
      r2 = timed("/fc")
      assert.equal(503, r2.status)
      faults = faults + 2
    end

    -- Faults are counted for the whole instance and logged sparingly.
    local stats = assert(gw.admin_request({ path = "/rate-limiting/stats" }))
    assert.equal(200, stats.status)
    assert.equal("instance", stats.json.scope)
    assert.same({ scope = "instance", storage_errors = faults, allowed_on_error = 25,
                  rejected_on_error = 15 }, stats.json)
    local lines = 0
    for line in gw.error_log():gmatch("[^\n]+") do
      if line:find("storage failed", 1, true) then lines = lines + 1 end
    end
    assert.is_true(lines >= 1 and lines <= 4, lines .. " fault lines in:\n" .. gw.error_log())

    -- Redis back (empty): counting starts again from zero. A worker whose
    -- client found Redis down retries in the background (back-off up to
    -- 2 s) and fails requests at once meanwhile; wait until every such
    -- worker has reconnected. A worker that never noticed dials at its
    -- next request.
    redis = helpers.start_redis({ port = redis.port })
    assert(helpers.wait_until(function()
      local log = gw.error_log():sub(log_stop + 1)
      for slot in log:gmatch("worker (%d+)%[%d+%]: redis 127%.0%.0%.1:%d+ unavailable") do
        if not log:find("worker " .. slot .. "%[%d+%]: redis 127%.0%.0%.1:%d+: connected again") then
          return false
        end
      end
      return true
    end, 10, 0.05))
    for i = 1, 3 do
      local r3 = timed("/ft")
      assert.equal(200, r3.status)
      assert.equal(tostring(3 - i), r3.headers["x-ratelimit-remaining"])
    end
    assert_429(timed("/ft"), 60)
    -- The Redis client logs the lost connection itself; nothing else.
    assert.equal("", errors_in(gw.error_log(), "%] worker %d+%[%d+%]: redis 127%.0%.0%.1:%d+ unavailable: "))
  end)
end)
