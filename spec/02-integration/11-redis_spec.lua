-- 11-redis_spec.lua: tg.redis, the PDK's non-blocking Redis client
-- (core/tg_redis.c, lua/tollgate/redis.lua, docs/redis.md), through the
-- real gateway against real redis-server processes.
--
-- The fixture plugin redis-cmd (spec/fixtures/plugins/) runs the command
-- named in the request body and answers with what tg.redis returned, as
-- JSON with a `kind` field ("string", "number", "table", "null", "false",
-- "nil") so nil, the null sentinel and false stay apart. redis-phases
-- tries tg.redis where it may not yield (init_worker, header_filter,
-- body_filter) and uses it from a timer and the log phase.
--
-- Timing assertions are upper bounds with wide margins, except where the
-- issue states one (a GET answered in < 300 ms next to a 1 s BLPOP).

local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson.safe"

local gettime = socket.gettime
local FIXTURES = helpers.repo_root() .. "/spec/fixtures/plugins"

-- A slow command: a script busy for `ms` milliseconds (DEBUG SLEEP is
-- disabled by default in Redis 7; a busy script blocks Redis the same way).
local function busy_script(ms)
  return "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] "
      .. "repeat local n = redis.call('TIME') until n[1] * 1e6 + n[2] - s >= " .. (ms * 1000)
      .. " return 'slept'"
end

local function gateway_conf(redis_conf, extra)
  local conf = {
    plugins_path = { FIXTURES },
    redis = redis_conf,
    routes = {
      { name = "redis", paths = { "/redis" }, response = { status = 200, body = "unused" },
        plugins = { ["redis-cmd"] = {} } },
      { name = "plain", paths = { "/plain" }, response = { status = 200, json = { plain = true } } },
    },
  }
  for k, v in pairs(extra or {}) do conf[k] = v end
  return conf
end

-- The request running q (a table) through redis-cmd: GET /redis?q=<json>.
local function rreq(q)
  local json = assert(cjson.encode(q))
  return { path = "/redis?q=" .. json:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end) }
end

-- One redis-cmd request; returns the decoded answer and the seconds it took.
local function rcmd(gw, q, timeout)
  local t0 = gettime()
  local req = rreq(q)
  req.timeout = timeout or 5
  local res, err = gw.request(req)
  local dt = gettime() - t0
  assert(res, err)
  assert.equal(200, res.status, res.body)
  assert.is_table(res.json, res.body)
  return res.json, dt
end

local function call(gw, ...)
  return rcmd(gw, { op = "call", args = { ... } })
end

-- [error]/[crit] lines of an error log not matching any of `allowed`.
local function unexpected_errors(text, allowed)
  local bad = {}
  for line in text:gmatch("[^\n]+") do
    if line:find("%[error%]") or line:find("%[crit%]") or line:find("failed in") then
      local ok = false
      for _, pat in ipairs(allowed or {}) do
        if line:find(pat) then ok = true break end
      end
      if not ok then bad[#bad + 1] = line end
    end
  end
  return table.concat(bad, "\n")
end

-- INFO commandstats of a Redis: name -> { calls, failed_calls }.
local function commandstats(redis)
  local text = assert(redis.command("INFO", "commandstats"))
  local out = {}
  for name, calls in text:gmatch("cmdstat_([%w|_]+):calls=(%d+)") do
    out[name] = { calls = tonumber(calls),
                  failed = tonumber(text:match("cmdstat_" .. name .. ":[^\r\n]*failed_calls=(%d+)")) or 0 }
  end
  return out
end

-- redis-cli, for servers helpers.redis_command cannot talk to (AUTH, db).
local function redis_cli(port, args)
  local f = assert(io.popen("redis-cli --no-auth-warning -h 127.0.0.1 -p " .. port .. " " .. args .. " 2>&1"))
  local out = f:read("*a")
  f:close()
  return (out:gsub("%s+$", ""))
end

describe("tg.redis", function()
  local redis, gw

  setup(function()
    redis = helpers.start_redis()
    gw = helpers.start_gateway(gateway_conf({ host = "127.0.0.1", port = redis.port, pool_size = 2 }))
  end)

  teardown(function()
    helpers.stop_all()
  end)

  before_each(function()
    assert(redis.command("FLUSHALL"))
  end)

  it("returns every reply type the lua-resty way", function()
    local r = call(gw, "SET", "k", "v")
    assert.same({ "string", "OK" }, { r.kind, r.value })          -- status reply
    r = call(gw, "GET", "k")
    assert.same({ "string", "v" }, { r.kind, r.value })           -- bulk string
    r = call(gw, "GET", "missing")
    assert.equal("null", r.kind)                                  -- nil bulk: the sentinel
    assert.is_nil(r.err)
    r = call(gw, "INCRBY", "n", 2 ^ 40)
    assert.same({ "number", 2 ^ 40 }, { r.kind, r.value })        -- integer (number argument)
    call(gw, "SET", "big", "#n:4503599627370497")                 -- numbers keep every digit
    assert.equal("4503599627370497", call(gw, "GET", "big").value)
    call(gw, "SET", "frac", 0.1)
    assert.equal(0.1, tonumber(call(gw, "GET", "frac").value))
    r = call(gw, "PING")
    assert.same({ "string", "PONG" }, { r.kind, r.value })
    r = call(gw, "TYPE", "k")
    assert.same({ "string", "string" }, { r.kind, r.value })
    r = call(gw, "SET", "bin", "a\0b\255\r\n")
    r = call(gw, "GET", "bin")
    assert.equal("a\0b\255\r\n", r.value)                         -- binary-safe
    r = call(gw, "SET", "empty", "")
    assert.same({ "string", "" }, { call(gw, "GET", "empty").kind, call(gw, "GET", "empty").value })

    assert(redis.command("RPUSH", "l", "a", "b", "c"))
    r = call(gw, "LRANGE", "l", 0, -1)
    assert.same({ "table", { "a", "b", "c" } }, { r.kind, r.value })  -- array
    r = call(gw, "LRANGE", "nolist", 0, -1)
    assert.same({ "table", 0 }, { r.kind, r.len })                -- empty array
    r = call(gw, "MGET", "k", "missing")
    assert.same({ "v", cjson.null }, r.value)                     -- nil inside an array

    r = call(gw, "GET", "l")                                      -- error reply
    assert.equal("false", r.kind)
    assert.matches("^WRONGTYPE ", r.err)
    r = call(gw, "NOSUCHCOMMAND", "x")
    assert.equal("false", r.kind)
    assert.matches("^ERR unknown command", r.err)
  end)

  it("decodes nested arrays and error replies inside arrays", function()
    local r = rcmd(gw, { op = "eval", args = {
      "return {1, 'two', {3, {'four'}}, redis.error_reply('boom'), false}", 0 } })
    assert.equal("table", r.kind)
    assert.same({ 1, "two", { 3, { "four" } } }, { r.value[1], r.value[2], r.value[3] })
    assert.is_false(r.value[4][1])                                -- { false, err }
    assert.matches("boom$", r.value[4][2])
    assert.equal(cjson.null, r.value[5])                          -- Lua false -> nil bulk -> null
    assert.equal(5, r.len)
  end)

  it("runs eval and evalsha with keys and arguments", function()
    local script = "return redis.call('SET', KEYS[1], ARGV[1])"
    local r = rcmd(gw, { op = "eval", args = { script, 1, "ek", "ev" } })
    assert.same({ "string", "OK" }, { r.kind, r.value })
    assert.equal("ev", redis.command("GET", "ek"))
    local sha = assert(redis.command("SCRIPT", "LOAD", "return ARGV[1] .. KEYS[1]"))
    r = rcmd(gw, { op = "evalsha", args = { sha, 1, "K", "A" } })
    assert.same({ "string", "AK" }, { r.kind, r.value })
    r = rcmd(gw, { op = "evalsha", args = { string.rep("0", 40), 0 } })
    assert.equal("false", r.kind)
    assert.matches("^NOSCRIPT", r.err)
  end)

  it("run_script uses EVALSHA and recovers from NOSCRIPT once with EVAL", function()
    local script = "return redis.call('INCR', KEYS[1])"
    assert(redis.command("SCRIPT", "FLUSH"))
    assert(redis.command("CONFIG", "RESETSTAT"))
    for i = 1, 3 do
      local r = rcmd(gw, { op = "run_script", args = { script, 1, "rs" } })
      assert.same({ "number", i }, { r.kind, r.value })
    end
    local st = commandstats(redis)
    assert.same({ calls = 3, failed = 1 }, st.evalsha)   -- the first one: NOSCRIPT
    assert.same({ calls = 1, failed = 0 }, st.eval)      -- ... then EVAL, once

    assert(redis.command("SCRIPT", "FLUSH"))             -- Redis forgets it
    local r = rcmd(gw, { op = "run_script", args = { script, 1, "rs" } })
    assert.same({ "number", 4 }, { r.kind, r.value })
    st = commandstats(redis)
    assert.same({ calls = 4, failed = 2 }, st.evalsha)
    assert.same({ calls = 2, failed = 0 }, st.eval)

    -- A script error is the server saying no, not a retry.
    r = rcmd(gw, { op = "run_script", args = { "return redis.call('GET')", 0 } })
    assert.equal("false", r.kind)
    assert.matches("^ERR [Ww]rong number of arg", r.err)
  end)

  it("pipelines commands in one wait, with per-command results", function()
    assert(redis.command("SET", "str", "x"))
    local r = rcmd(gw, { op = "pipeline", cmds = {
      { "INCR", "pa" }, { "INCR", "pa" }, { "EXPIRE", "pa", 60 }, { "GET", "nokey" },
      { "LPUSH", "str", "y" }, { "GET", "pa" },
    } })
    assert.equal("pipeline", r.kind)
    assert.equal(6, r.n)
    local kinds, values = {}, {}
    for i, x in ipairs(r.results) do kinds[i], values[i] = x.kind, x.value end
    assert.same({ "number", "number", "number", "null", "false", "string" }, kinds)
    assert.same({ 1, 2, 1 }, { values[1], values[2], values[3] })
    assert.matches("^WRONGTYPE", r.results[5].err)
    assert.equal("2", values[6])
    local ttl = redis.command("TTL", "pa")
    assert.is_true(ttl > 0 and ttl <= 60)

    -- MULTI/EXEC inside one pipeline stays one transaction.
    r = rcmd(gw, { op = "pipeline", cmds = { { "MULTI" }, { "INCR", "tx" }, { "INCR", "tx" }, { "EXEC" } } })
    assert.same({ "OK", "QUEUED", "QUEUED" }, { r.results[1].value, r.results[2].value, r.results[3].value })
    assert.same({ 1, 2 }, r.results[4].value)

    r = rcmd(gw, { op = "pipeline", cmds = {} })
    assert.same({ "pipeline", 0 }, { r.kind, r.n })
  end)

  it("matches replies to their requests with many requests in flight", function()
    local n = 60
    for i = 1, n do assert(redis.command("SET", "c" .. i, i * 1000)) end
    local conns = {}
    for i = 1, n do
      conns[i] = assert(helpers.connect(gw.port, { timeout = 5 }))
      assert(conns[i]:send((helpers.encode_request(rreq({ op = "call", args = { "INCR", "c" .. i } })))))
    end
    for i = 1, n do
      local res = assert(conns[i]:read_response({ timeout = 5 }))
      conns[i]:close()
      assert.same({ "number", i * 1000 + 1 }, { res.json.kind, res.json.value })
    end
  end)

  it("raises on misuse: commands that cannot share a connection, bad arguments", function()
    local cases = {
      { { "SUBSCRIBE", "ch" }, "SUBSCRIBE is not supported" },
      { { "select", "2" }, "select is not supported" },
      { { "MULTI" }, "MULTI only inside red:pipeline" },
      { { "WATCH", "k" }, "WATCH is not supported" },
      { { "CLIENT", "REPLY", "OFF" }, "CLIENT is not supported" },
      { { "SET", "k", { 1 } }, "argument #2 must be a string or a number, got table" },
      { { 42 }, "command name must be a string" },
    }
    for _, c in ipairs(cases) do
      local r = rcmd(gw, { op = "misuse", args = c[1] })
      assert.is_false(r.ok)
      assert.matches(c[2], r.err, 1, true)
      assert.matches("^tg%.redis%.call: ", r.err)
    end
    -- CLIENT subcommands that do not touch the connection's state are fine.
    local r = call(gw, "CLIENT", "ID")
    assert.equal("number", r.kind)
  end)

  it("times a call out without losing the connection or the reply order", function()
    local r, dt = rcmd(gw, { op = "eval", timeout_ms = 50, args = { busy_script(300), 0 } })
    assert.same({ "nil", "timeout" }, { r.kind, r.err })
    assert.is_true(dt < 0.25, "timed out after " .. dt .. " s")
    -- The late reply ("slept") is dropped; the next replies are their own.
    r = rcmd(gw, { op = "call", timeout_ms = 1000, args = { "SET", "after", "1" } })
    assert.same({ "string", "OK" }, { r.kind, r.value })
    r = rcmd(gw, { op = "call", args = { "GET", "after" } })
    assert.same({ "string", "1" }, { r.kind, r.value })
    r = rcmd(gw, { op = "eval", args = { "return 'fresh'", 0 } })
    assert.equal("fresh", r.value)
    assert.equal("", unexpected_errors(gw.error_log()))
  end)

  it("a BLPOP of 1 s does not delay another request's GET (one worker)", function()
    assert(redis.command("SET", "g", "got"))
    local blocked = assert(helpers.connect(gw.port, { timeout = 5 }))
    local t0 = gettime()
    assert(blocked:send((helpers.encode_request(rreq({ op = "call", args = { "BLPOP", "nothing", 1 } })))))
    helpers.sleep(0.1)
    local r, dt = call(gw, "GET", "g")
    assert.equal("got", r.value)
    assert.is_true(dt < 0.3, "GET took " .. dt .. " s next to a BLPOP")
    local res = assert(blocked:read_response({ timeout = 5 }))
    local total = gettime() - t0
    blocked:close()
    assert.equal(200, res.status)
    -- Blocked the whole second (the default 50 ms timeout is added to the
    -- block time) and ended with Redis' own nil answer.
    assert.equal("null", res.json.kind)
    assert.is_true(total >= 0.95 and total < 2, "BLPOP took " .. total .. " s")

    -- A BLPOP that gets data returns it.
    blocked = assert(helpers.connect(gw.port, { timeout = 5 }))
    assert(blocked:send((helpers.encode_request(rreq({ op = "call", args = { "BLPOP", "queue", 5 } })))))
    helpers.sleep(0.2)
    assert(redis.command("RPUSH", "queue", "job"))
    res = assert(blocked:read_response({ timeout = 5 }))
    blocked:close()
    assert.same({ "queue", "job" }, res.json.value)
  end)

  it("limits blocking commands to pool_size per worker", function()
    local conns = {}
    for i = 1, 2 do
      conns[i] = assert(helpers.connect(gw.port, { timeout = 5 }))
      assert(conns[i]:send((helpers.encode_request(rreq({ op = "call", args = { "BLPOP", "pool" .. i, 1 } })))))
    end
    helpers.sleep(0.2)
    local r, dt = call(gw, "BLPOP", "pool3", 1)
    assert.same({ "nil", "too many blocking commands" }, { r.kind, r.err })
    assert.is_true(dt < 0.5)
    for i = 1, 2 do
      local res = assert(conns[i]:read_response({ timeout = 5 }))
      conns[i]:close()
      assert.equal("null", res.json.kind)
    end
    -- The pool connections are back: a third blocking call works now.
    r = call(gw, "BLPOP", "pool3", 0.1)
    assert.equal("null", r.kind)
  end)

  it("survives a client that leaves while its command is pending", function()
    -- Blocking command. The pool connection is released at the latest when
    -- the BLPOP ends; tg_redis.c re-checks every second whether the waiter
    -- went away and would close it sooner, but the core notices a client
    -- that left only when it writes the response (see docs/redis.md), so
    -- only the outer bound is asserted here.
    local c = assert(helpers.connect(gw.port, { timeout = 5 }))
    assert(c:send((helpers.encode_request(rreq({ op = "call", args = { "BLPOP", "gone", 1.5 } })))))
    assert(helpers.wait_until(function()
      return redis.command("INFO", "clients"):match("blocked_clients:(%d+)") == "1"
    end, 2))
    c:close()
    -- Meanwhile the worker serves others, shared and blocking alike.
    assert.equal("null", call(gw, "GET", "nothing").kind)
    assert.equal("null", call(gw, "BLPOP", "other", 0.1).kind)
    assert(helpers.wait_until(function()
      return redis.command("INFO", "clients"):match("blocked_clients:(%d+)") == "0"
    end, 3))
    -- Its pool connection is reusable afterwards (pool_size 2: two at once).
    helpers.sleep(0.2)
    local conns = {}
    for i = 1, 2 do
      conns[i] = assert(helpers.connect(gw.port, { timeout = 5 }))
      assert(conns[i]:send((helpers.encode_request(rreq({ op = "call", args = { "BLPOP", "again" .. i, 0.3 } })))))
    end
    for i = 1, 2 do
      local res = assert(conns[i]:read_response({ timeout = 5 }))
      conns[i]:close()
      assert.equal("null", res.json.kind)
    end

    -- Shared connection: the reply of a command whose request is gone is
    -- dropped; the next request gets its own.
    c = assert(helpers.connect(gw.port, { timeout = 5 }))
    assert(c:send((helpers.encode_request(rreq({ op = "eval", timeout_ms = 1000, args = { busy_script(300), 0 } })))))
    helpers.sleep(0.05)
    c:close()
    local r = call(gw, "SET", "still", "here")
    assert.same({ "nil", "timeout" }, { r.kind, r.err })     -- queued behind the busy script
    helpers.sleep(0.3)
    r = call(gw, "GET", "still")
    assert.same({ "string", "here" }, { r.kind, r.value })
    assert.is_true(gw.alive())
    assert.equal("", unexpected_errors(gw.error_log()))
  end)

  it("exports the null sentinel and a callable module", function()
    local r = rcmd(gw, { op = "info" })
    assert.is_true(r.null_is_json_null)
    assert.is_true(r.tg_redis_is_module)
    assert.is_true(r.default_shared)
  end)

  it("prints a rough round-trip time (info only)", function()
    local r = rcmd(gw, { op = "bench", n = 2000, timeout_ms = 1000 }, 30)
    assert.equal("bench", r.kind)
    print(string.format("\n    tg.redis round trip: %.1f us per GET, %.2f us per pipelined GET",
                        r.us_per_call, r.us_per_pipelined))
  end)
end)

describe("tg.redis outside rewrite/access", function()
  local redis, echo, gw

  setup(function()
    redis = helpers.start_redis()
    echo = helpers.start_echo()
    local conf = gateway_conf({ host = "127.0.0.1", port = redis.port }, {
      worker_processes = 2,
      upstreams = { echo = { targets = { { url = echo.url() } } } },
    })
    table.insert(conf.routes, { name = "phases", paths = { "/phases" }, upstream = "echo",
                                plugins = { ["redis-phases"] = {} } })
    gw = helpers.start_gateway(conf)
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("is used from timers in both workers", function()
    -- Each worker's init_worker scheduled a timer that SADDs its id.
    local members
    assert(helpers.wait_until(function()
      members = redis.command("SMEMBERS", "spec:workers")
      return type(members) == "table" and #members == 2
    end, 5))
    table.sort(members)
    assert.same({ "0", "1" }, members)
  end)

  it("raises in init_worker, header_filter and body_filter; works in log", function()
    local res = assert(gw.request({ path = "/phases/x", headers = { ["X-Log-Key"] = "k1" } }))
    assert.equal(200, res.status)
    assert.matches("tg.redis.call: not available in phase init_worker", res.headers["x-init-error"], 1, true)
    assert.matches("tg.redis.call: not available in phase header_filter", res.headers["x-filter-error"], 1, true)
    assert.matches("\nbody_filter: [^\n]*tg.redis.call: not available in phase body_filter$", res.body)
    assert.equal("/phases/x", cjson.decode(res.body:match("^(.-)\nbody_filter"))["path"])
    -- The log phase runs after the response and may wait on Redis.
    assert(helpers.wait_until(function()
      return redis.command("GET", "spec:log:k1") == "logged"
    end, 3))
    assert.equal("", unexpected_errors(gw.error_log()))
  end)

  it("serves both workers from their own connections", function()
    -- Many short connections: the kernel spreads them over both workers.
    local seen = {}
    for i = 1, 40 do
      local r = call(gw, "INCR", "both")
      assert.equal(i, r.value)
      seen[r.worker] = true
      if seen[0] and seen[1] then break end
    end
    assert.equal("", unexpected_errors(gw.error_log()))
  end)
end)

describe("tg.redis when Redis goes away", function()
  local redis, gw

  setup(function()
    redis = helpers.start_redis()
    gw = helpers.start_gateway(gateway_conf({ host = "127.0.0.1", port = redis.port }))
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("fails fast while Redis is down and recovers when it is back", function()
    assert.equal("OK", call(gw, "SET", "k", "v").value)
    local port = redis.port
    assert.is_true(redis.stop())

    -- Every request: nil + a transport error, quickly; the first may find
    -- the connection breaking under it ("connection lost").
    for i = 1, 10 do
      local r, dt = call(gw, "GET", "k")
      assert.equal("nil", r.kind)
      if i > 1 then assert.equal("redis unavailable", r.err) end
      assert.matches("^redis ", r.err)
      assert.is_true(dt < 0.3, "request " .. i .. " took " .. dt .. " s")
      -- The worker is not stalled: a plain route answers at once.
      local t0 = gettime()
      local res = assert(gw.request({ path = "/plain" }))
      assert.equal(200, res.status)
      assert.is_true(gettime() - t0 < 0.2)
      helpers.sleep(0.05)
    end

    -- Back on the same port: commands work again within a few seconds
    -- (the background retry backs off to at most 2 s).
    redis = helpers.start_redis({ port = port })
    local t0 = gettime()
    assert(helpers.wait_until(function()
      return call(gw, "SET", "k", "again").value == "OK"
    end, 5, 0.1))
    assert.is_true(gettime() - t0 < 4)
    assert.equal("again", redis.command("GET", "k"))

    local log = gw.error_log()
    assert.matches("redis 127.0.0.1:" .. port .. " unavailable", log, 1, true)
    assert.matches("connected again", log, 1, true)
    -- One error line per outage, not one per request or retry.
    local n = 0
    for _ in log:gmatch("unavailable: ") do n = n + 1 end
    assert.equal(1, n)
    assert.equal("", unexpected_errors(log, { "redis 127%.0%.0%.1:%d+ unavailable" }))
  end)

  it("times out, without stalling the worker, while Redis hangs", function()
    assert.equal("OK", call(gw, "SET", "h", "1").value)
    assert(os.execute("kill -STOP " .. redis.pid))
    local ok, err = pcall(function()
      for i = 1, 5 do
        local r, dt = call(gw, "GET", "h")
        assert.same({ "nil", "timeout" }, { r.kind, r.err })
        assert.is_true(dt < 0.3, "request " .. i .. " took " .. dt .. " s")
        local t0 = gettime()
        assert.equal(200, assert(gw.request({ path = "/plain" })).status)
        assert.is_true(gettime() - t0 < 0.2)
      end
      -- Hundreds of unanswered commands: the connection is given up.
      local r = rcmd(gw, { op = "pipeline", cmds = {}, args = { "GET", "h" }, times = 300 })
      assert.same({ "nil", "timeout" }, { r.kind, r.err })
      assert(helpers.wait_until(function()
        return gw.error_log():find("timed-out commands still unanswered; reconnecting", 1, true)
      end, 2))
    end)
    assert(os.execute("kill -CONT " .. redis.pid))
    assert(ok, err)
    -- The late replies are dropped; the connection carries on.
    assert(helpers.wait_until(function() return call(gw, "GET", "h").value == "1" end, 3))
    assert.equal("OK", call(gw, "SET", "h", "2").value)
    assert.equal("2", call(gw, "GET", "h").value)
  end)

  it("fails fast when Redis never was there", function()
    local port = helpers.free_port()
    local gw2 = helpers.start_gateway(gateway_conf({ host = "127.0.0.1", port = port }))
    for _ = 1, 5 do
      local r, dt = call(gw2, "GET", "k")
      assert.same({ "nil", "redis unavailable" }, { r.kind, r.err })
      assert.is_true(dt < 0.3)
    end
    assert.is_true(gw2.alive())
  end)
end)

describe("tg.redis connection settings", function()
  local redis

  setup(function()
    redis = helpers.start_redis()
    -- requirepass set at run time is the same as --requirepass; an ACL user
    -- for the url form with a user name.
    assert.equal("OK", redis.command("ACL", "SETUSER", "tguser", "on", ">pw-user", "~*", "+@all"))
    assert.equal("OK", redis.command("CONFIG", "SET", "requirepass", "s3cret"))
  end)

  teardown(function()
    helpers.stop_all()
  end)

  it("authenticates with a password and selects the database", function()
    local gw = helpers.start_gateway(gateway_conf({ host = "127.0.0.1", port = redis.port,
                                                    password = "s3cret", db = 3 }))
    assert.equal("OK", call(gw, "SET", "dbkey", "in3").value)
    assert.equal("in3", redis_cli(redis.port, "-a s3cret -n 3 GET dbkey"))
    assert.equal("", redis_cli(redis.port, "-a s3cret -n 0 GET dbkey"))
    assert.matches("db=3", call(gw, "CLIENT", "INFO").value, 1, true)
    assert.equal("", unexpected_errors(gw.error_log()))
  end)

  it("authenticates an ACL user from a redis:// url", function()
    local gw = helpers.start_gateway(gateway_conf({
      url = "redis://tguser:pw-user@127.0.0.1:" .. redis.port .. "/2" }))
    assert.equal("tguser", call(gw, "ACL", "WHOAMI").value)
    assert.matches("db=2", call(gw, "CLIENT", "INFO").value, 1, true)
    -- Blocking commands open their own connection: authenticated too.
    local r = call(gw, "BLPOP", "nothing", 0.1)
    assert.equal("null", r.kind)
  end)

  it("reports a wrong password as unavailable and logs why, without the secret", function()
    local gw = helpers.start_gateway(gateway_conf({ host = "127.0.0.1", port = redis.port,
                                                    password = "wrong-secret" }))
    local r, dt = call(gw, "GET", "k")
    assert.same({ "nil", "redis unavailable" }, { r.kind, r.err })
    assert.is_true(dt < 1.5)
    r, dt = call(gw, "GET", "k")
    assert.same({ "nil", "redis unavailable" }, { r.kind, r.err })
    assert.is_true(dt < 0.3)
    local log = gw.error_log()
    assert.matches("AUTH failed: WRONGPASS", log, 1, true)
    assert.is_nil(log:find("wrong-secret", 1, true))
  end)
end)
