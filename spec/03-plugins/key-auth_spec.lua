-- key-auth through the real gateway, tg-echo and a real redis-server: keys
-- from the consumers section (plaintext and SHA-256), the header and the
-- opt-in query parameter, what the upstream sees (X-Client-Id /
-- X-Client-Plan, never the key, never a client's own copy of those
-- headers), and the Redis lookup: cache hits and misses counted by Redis
-- itself (INFO commandstats), negative caching, inactive keys, and Redis
-- going down with fail closed and fail open.
--
-- The spec-only plugin spec/fixtures/auth/plugins/consumer-echo.lua copies
-- ctx.consumer into X-Seen-Consumer / X-Seen-Plan for the upstream.

local helpers = require "spec.helpers"
local crypto = require "tollgate.crypto"
local cjson = require "cjson.safe"

local FIXTURES = helpers.repo_root() .. "/spec/fixtures/auth/plugins"
local sha256_hex = crypto.sha256_hex

describe("key-auth", function()
  local echo, gw, redis

  -- Number of GET commands Redis has executed since the last reset.
  local function redis_gets()
    local info = assert(redis.command("INFO", "commandstats"))
    return tonumber(info:match("cmdstat_get:calls=(%d+)")) or 0
  end

  local function pass(res)
    assert.is_table(res)
    if res.status ~= 200 then
      error("expected 200, got " .. tostring(res.status) .. ": " .. tostring(res.body)
            .. "\n" .. gw.error_log():sub(-1500), 2)
    end
    return res.json
  end

  local function assert_error(res, status, message)
    assert.is_table(res)
    assert.equal(status, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ error = message }, res.json)
  end

  local function key(path, k, headers)
    local h = headers or {}
    h["X-API-Key"] = k
    return gw.request({ path = path, headers = h })
  end

  setup(function()
    echo = helpers.start_echo()
    redis = helpers.start_redis()
    local function route(name, path, conf)
      return { name = name, paths = { path }, upstream = "echo", plugins = { ["key-auth"] = conf } }
    end
    gw = helpers.start_gateway({
      plugins_path = { FIXTURES },
      redis = { host = "127.0.0.1", port = redis.port, timeout_ms = 200 },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      consumers = {
        { id = "alice", plan = "pro", api_keys = { "sk_live_alice", { sha256 = sha256_hex("sk_hashed_alice") } } },
        { id = "bob", api_keys = { "sk_live_bob" } },
        { id = "carol", plan = "free" },
      },
      plugins = { ["consumer-echo"] = helpers.map() },
      routes = {
        route("key", "/key", helpers.map()),
        route("custom", "/custom", { header = "Authorization-Key" }),
        route("query", "/query", { query_param = "api_key" }),
        route("keep", "/keep", { hide_credentials = false }),
        { name = "tagged", paths = { "/tagged" }, upstream = "echo",
          plugins = { ["query-tag"] = helpers.map(), ["key-auth"] = { query_param = "api_key" } } },
        route("redis", "/redis", { redis_lookup = true, negative_ttl_s = 1 }),
        route("redis-open", "/redis-open", { redis_lookup = true, fail = "open", negative_ttl_s = 1 }),
        route("redis-short", "/redis-short", { redis_lookup = true, cache_ttl_s = 0.5, negative_ttl_s = 0 }),
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  describe("config keys", function()
    it("no key: 401 API key required, nothing reaches the upstream", function()
      assert(echo.reset_stats())
      assert_error(gw.request({ path = "/key" }), 401, "API key required")
      assert_error(key("/key", ""), 401, "API key required")
      assert.equal(0, echo.stats().requests)
    end)

    it("a wrong key: 401 Invalid API key", function()
      assert(echo.reset_stats())
      assert_error(key("/key", "sk_live_alicf"), 401, "Invalid API key")
      assert_error(key("/key", "Sk_live_alice"), 401, "Invalid API key")
      assert_error(key("/key", string.rep("k", 4000)), 401, "Invalid API key")
      -- The SHA-256 of a key is not the key.
      assert_error(key("/key", sha256_hex("sk_hashed_alice")), 401, "Invalid API key")
      assert.equal(0, echo.stats().requests)
    end)

    it("a plaintext key: consumer and plan upstream, the key stripped", function()
      local seen = pass(key("/key", "sk_live_alice"))
      assert.equal("alice", seen.headers["x-client-id"])
      assert.equal("pro", seen.headers["x-client-plan"])
      assert.equal("alice", seen.headers["x-seen-consumer"])
      assert.equal("pro", seen.headers["x-seen-plan"])
      assert.is_nil(seen.headers["x-api-key"])
    end)

    it("a hashed key", function()
      local seen = pass(key("/key", "sk_hashed_alice"))
      assert.equal("alice", seen.headers["x-client-id"])
    end)

    it("a consumer without a plan gets no X-Client-Plan", function()
      local seen = pass(key("/key", "sk_live_bob"))
      assert.equal("bob", seen.headers["x-client-id"])
      assert.is_nil(seen.headers["x-client-plan"])
      assert.equal("-", seen.headers["x-seen-plan"])
    end)

    it("client-sent X-Client-Id / X-Client-Plan are removed, underscore spellings too", function()
      local seen = pass(key("/key", "sk_live_bob", {
        ["X-Client-Id"] = "alice", ["X-Client-Plan"] = "enterprise", ["X_Client_Plan"] = "enterprise" }))
      assert.equal("bob", seen.headers["x-client-id"])
      assert.is_nil(seen.headers["x-client-plan"])
      assert.is_nil(seen.headers["x_client_plan"])
    end)

    it("a configured header name", function()
      local seen = pass(gw.request({ path = "/custom", headers = { ["Authorization-Key"] = "sk_live_alice" } }))
      assert.equal("alice", seen.headers["x-client-id"])
      assert.is_nil(seen.headers["authorization-key"])
      assert_error(key("/custom", "sk_live_alice"), 401, "API key required")
    end)

    it("hide_credentials: false forwards the key header", function()
      local seen = pass(key("/keep", "sk_live_alice"))
      assert.equal("sk_live_alice", seen.headers["x-api-key"])
    end)

    it("the query parameter only when enabled, and it never goes upstream", function()
      assert_error(gw.request({ path = "/key?api_key=sk_live_alice" }), 401, "API key required")
      local seen = pass(gw.request({ path = "/query?a=1&api_key=sk_live_alice&b=%2F" }))
      assert.equal("alice", seen.headers["x-client-id"])
      assert.equal("a=1&b=%2F", seen.query)
      -- The header wins; the query parameter is still removed.
      seen = pass(gw.request({ path = "/query?api_key=wrong&z=1", headers = { ["X-API-Key"] = "sk_live_bob" } }))
      assert.equal("bob", seen.headers["x-client-id"])
      assert.equal("z=1", seen.query)
      assert_error(gw.request({ path = "/query?api_key=" }), 401, "API key required")
      assert_error(gw.request({ path = "/query?api_key=nope" }), 401, "Invalid API key")
    end)

    it("removing the query parameter keeps an earlier plugin's query edits", function()
      local seen = pass(gw.request({ path = "/tagged?a=1&api_key=sk_live_alice" }))
      assert.equal("alice", seen.headers["x-client-id"])
      assert.equal("a=1&tag=added", seen.query)
    end)

    it("keys never reach the access log or the error log", function()
      pass(gw.request({ path = "/query?api_key=sk_live_alice" }))
      key("/key", "sk_live_secret_wrong")
      assert(helpers.wait_until(function()
        return gw.error_log():find("[key-auth] rejected: unknown API key", 1, true)
      end, 3))
      local logs = table.concat(gw.access_log(), "\n") .. gw.error_log()
      assert.is_nil(logs:find("sk_live", 1, true))
      assert.same({}, helpers.error_lines(gw.error_log(), "error"))
    end)
  end)

  describe("redis_lookup", function()
    before_each(function()
      assert.equal("OK", redis.command("CONFIG", "RESETSTAT"))
    end)

    local function store(k, value)
      assert.equal("OK", redis.command("SET", "apikey:" .. sha256_hex(k), cjson.encode(value)))
    end

    it("config keys are found without asking Redis", function()
      pass(key("/redis", "sk_live_alice"))
      assert.equal(0, redis_gets())
    end)

    it("a key in Redis: consumer from its JSON, then served from the cache", function()
      store("rk_1", { id = "dave", plan = "enterprise", active = true })
      local seen = pass(key("/redis", "rk_1", { ["X-Client-Id"] = "spoof" }))
      assert.equal("dave", seen.headers["x-client-id"])
      assert.equal("enterprise", seen.headers["x-client-plan"])
      assert.equal("dave", seen.headers["x-seen-consumer"])
      assert.is_nil(seen.headers["x-api-key"])
      assert.equal(1, redis_gets())
      -- Cache hit: Redis is not asked again, even after the key is gone.
      redis.command("DEL", "apikey:" .. sha256_hex("rk_1"))
      for _ = 1, 5 do
        assert.equal("dave", pass(key("/redis", "rk_1")).headers["x-client-id"])
      end
      assert.equal(1, redis_gets())
    end)

    it("the cache expires after cache_ttl_s", function()
      store("rk_short", { id = "erin", active = true })
      pass(key("/redis-short", "rk_short"))
      pass(key("/redis-short", "rk_short"))
      assert.equal(1, redis_gets())
      redis.command("DEL", "apikey:" .. sha256_hex("rk_short"))
      assert(helpers.wait_until(function()
        local res = key("/redis-short", "rk_short")
        return res and res.status == 401
      end, 3, 0.1))
      assert.is_true(redis_gets() >= 2)
    end)

    it("unknown keys are cached negatively for negative_ttl_s", function()
      assert_error(key("/redis", "rk_unknown"), 401, "Invalid API key")
      assert.equal(1, redis_gets())
      for _ = 1, 10 do
        assert_error(key("/redis", "rk_unknown"), 401, "Invalid API key")
      end
      assert.equal(1, redis_gets())
      -- Created meanwhile: visible once the negative entry (1 s) expires.
      store("rk_unknown", { id = "late", active = true })
      assert(helpers.wait_until(function()
        local res = key("/redis", "rk_unknown")
        return res and res.status == 200 and res.json.headers["x-client-id"] == "late"
      end, 4, 0.1))
      local gets = redis_gets()
      assert.is_true(gets >= 2 and gets <= 4, "GETs: " .. gets)
    end)

    it("inactive consumers and values that are not consumers are invalid keys", function()
      store("rk_inactive", { id = "frank", active = false })
      assert_error(key("/redis", "rk_inactive"), 401, "Invalid API key")
      assert.equal("OK", redis.command("SET", "apikey:" .. sha256_hex("rk_garbage"), "not json"))
      assert_error(key("/redis", "rk_garbage"), 401, "Invalid API key")
      store("rk_noid", { plan = "pro" })
      assert_error(key("/redis", "rk_noid"), 401, "Invalid API key")
      store("rk_ctl", { id = "a\r\nX-Evil: 1" })
      assert_error(key("/redis", "rk_ctl"), 401, "Invalid API key")
    end)

    it("Redis down: fail closed answers 503, fail open passes without a consumer; cached keys still work", function()
      store("rk_cached", { id = "gina", plan = "pro", active = true })
      pass(key("/redis", "rk_cached"))
      pass(key("/redis-open", "rk_cached"))
      redis.stop()

      assert(echo.reset_stats())
      local res = key("/redis", "rk_never_seen")
      assert_error(res, 503, "Service Unavailable")
      assert.equal(0, echo.stats().requests)

      local seen = pass(key("/redis-open", "rk_never_seen", { ["X-Client-Id"] = "spoof" }))
      assert.is_nil(seen.headers["x-client-id"])
      assert.equal("-", seen.headers["x-seen-consumer"])
      assert.is_nil(seen.headers["x-api-key"])

      -- Cache hits and config keys need no Redis.
      assert.equal("gina", pass(key("/redis", "rk_cached")).headers["x-client-id"])
      assert.equal("gina", pass(key("/redis-open", "rk_cached")).headers["x-client-id"])
      assert.equal("alice", pass(key("/redis", "sk_live_alice")).headers["x-client-id"])
      -- A missing key is still "required", not a Redis question.
      assert_error(gw.request({ path = "/redis" }), 401, "API key required")

      assert.truthy(gw.error_log():find("[key-auth] redis lookup failed", 1, true))
      -- The only errors: the Redis client saying Redis is gone.
      for _, e in ipairs(helpers.error_lines(gw.error_log(), "error")) do
        assert.matches("redis 127%.0%.0%.1:%d+ unavailable", e)
      end
    end)
  end)

  describe("config errors (tollgate -t)", function()
    it("reports mistakes with their YAML paths", function()
      local ok, out = helpers.test_config({
        listen = { "127.0.0.1:" .. helpers.free_port() },
        upstreams = { echo = { targets = { { url = "http://127.0.0.1:1" } } } },
        consumers = {
          { id = "a", api_keys = { "same" } },
          { id = "b", api_keys = { { sha256 = sha256_hex("same") }, { sha256 = "zz" } } },
        },
        routes = { { name = "r", paths = { "/" }, upstream = "echo", plugins = {
          ["key-auth"] = { fail = "sometimes", cache_ttl_s = 0, header = "X API" } } } },
      })
      assert.is_false(ok)
      assert.matches("consumers%[1%]%.api_keys%[1%]: sha256 must be 64 hex digits", out)
      assert.matches("routes%[0%]%.plugins%.key%-auth%.fail: expected one of: closed, open", out)
      assert.matches("routes%[0%]%.plugins%.key%-auth%.cache_ttl_s: expected a positive number", out)
      assert.matches("routes%[0%]%.plugins%.key%-auth%.header: expected a string matching", out)
      assert.is_nil(out:find("same", 1, true))
    end)

    it("reports a key given to two consumers", function()
      local ok, out = helpers.test_config({
        listen = { "127.0.0.1:" .. helpers.free_port() },
        consumers = {
          { id = "a", api_keys = { "same" } },
          { id = "b", api_keys = { { sha256 = sha256_hex("same") } } },
        },
        routes = { { name = "r", paths = { "/" }, response = { status = 200 } } },
      })
      assert.is_false(ok)
      assert.matches("consumers%[1%]%.api_keys%[0%]: the same API key is already configured %(consumer \"a\"%)", out)
    end)
  end)
end)
