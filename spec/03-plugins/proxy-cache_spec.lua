-- proxy-cache_spec.lua: MISS then HIT across two workers (the upstream sees
-- one request), the key (sorted query, host, vary headers, consumer), the
-- TTL (ttl_s, max-age, s-maxage, expiry), what is never stored (no-store,
-- private, Set-Cookie, Vary outside the key, statuses, oversized bodies,
-- credentials without public), the client's Cache-Control, HEAD, ETag
-- revalidation, headers set by other plugins before the response, LRU
-- eviction in a small dict, the admin purge endpoint and config errors.
--
-- tg-echo's body includes the client's port and the connection's request
-- count, so a byte-identical body on a later request proves it came from
-- the cache, and /__stats counts what reached the upstream.
local helpers = require "spec.helpers"

describe("proxy-cache plugin", function()
  local echo, gw

  setup(function()
    echo = helpers.start_echo()
    local function route(name, conf, extra)
      local r = { name = name, paths = { "/" .. name }, upstream = "echo",
                  plugins = { ["proxy-cache"] = conf } }
      for k, v in pairs(extra or {}) do r.plugins[k] = v end
      return r
    end
    gw = helpers.start_gateway({
      worker_processes = 2,
      plugins_path = { helpers.repo_root() .. "/spec/fixtures/plugins" },
      shared_dicts = { cache = "4m", tiny = "64k" },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      routes = {
        route("c", { ttl_s = 1 }, { ["test-stamp"] = {} }),
        route("long", { ttl_s = 60 }),
        route("vary", { vary_headers = { "Accept-Language" } }),
        route("consumer", { vary_consumer = true }, { ["test-consumer"] = {} }),
        route("small", { max_object_bytes = 1000 }),
        route("codes", { statuses = { 200, 203 } }),
        route("lru", { dict = "tiny" }),
        route("strict", { request_cache_control = false }),
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  local function get(path, headers, method)
    return assert(gw.request({ path = path, headers = headers, method = method }))
  end

  local function requests()
    return echo.stats().requests
  end

  it("stores a MISS and serves it as a HIT from every worker", function()
    assert(echo.reset_stats())
    local first = get("/c/a?x=1")
    assert.equal(200, first.status)
    assert.equal("MISS", first.headers["x-cache-status"])
    for _ = 1, 10 do
      local res = get("/c/a?x=1")
      assert.equal(200, res.status)
      assert.equal("HIT", res.headers["x-cache-status"])
      assert.equal(first.body, res.body)
      assert.equal("application/json", res.headers["content-type"])
      assert.truthy(tonumber(res.headers["age"]))
      -- A hit keeps its length (no body filter work to do).
      assert.equal(#first.body, tonumber(res.headers["content-length"]))
    end
    assert.equal(1, requests())
  end)

  it("keys on sorted query arguments, the host and the path", function()
    assert(echo.reset_stats())
    assert.equal("MISS", get("/long/k?a=1&b=2&c").headers["x-cache-status"])
    assert.equal("HIT", get("/long/k?c&b=2&a=1").headers["x-cache-status"])
    assert.equal("MISS", get("/long/k?a=1&b=3&c").headers["x-cache-status"])
    assert.equal("MISS", get("/long/k2?a=1&b=2&c").headers["x-cache-status"])
    assert.equal("MISS", get("/long/k?a=1&b=2&c", { Host = "other.example" }).headers["x-cache-status"])
    assert.equal("HIT", get("/long/k?a=1&b=2&c", { Host = "OTHER.example" }).headers["x-cache-status"])
    assert.equal(4, requests())
  end)

  it("expires an entry after ttl_s", function()
    assert.equal("MISS", get("/c/expiring").headers["x-cache-status"])
    assert.equal("HIT", get("/c/expiring").headers["x-cache-status"])
    helpers.sleep(1.2)
    assert.equal("MISS", get("/c/expiring").headers["x-cache-status"])
    assert.equal("HIT", get("/c/expiring").headers["x-cache-status"])
  end)

  it("takes the TTL from s-maxage, then max-age, over ttl_s", function()
    local cc = function(v) return { ["X-Echo-Response-Header"] = "Cache-Control: " .. v } end
    assert.equal("MISS", get("/c/maxage", cc("max-age=3")).headers["x-cache-status"])
    assert.equal("MISS", get("/c/smaxage", cc("max-age=0, s-maxage=3")).headers["x-cache-status"])
    helpers.sleep(1.2)                      -- past ttl_s = 1
    local res = get("/c/maxage")
    assert.equal("HIT", res.headers["x-cache-status"])
    assert.equal("max-age=3", res.headers["cache-control"])
    assert.equal("HIT", get("/c/smaxage").headers["x-cache-status"])
    -- max-age=0 alone: not stored at all.
    assert.equal("BYPASS", get("/c/zero", cc("max-age=0")).headers["x-cache-status"])
    assert.equal("MISS", get("/c/zero").headers["x-cache-status"])
  end)

  it("never stores no-store, private, no-cache, Set-Cookie or Vary outside the key", function()
    local cases = {
      { "nostore", "Cache-Control: no-store" },
      { "private", "Cache-Control: private, max-age=60" },
      { "nocache", "Cache-Control: no-cache" },
      { "cookie", "Set-Cookie: session=abc" },
      { "varystar", "Vary: *" },
      { "varyother", "Vary: Accept-Encoding" },
    }
    for _, c in ipairs(cases) do
      local path = "/long/" .. c[1]
      local res = get(path, { ["X-Echo-Response-Header"] = c[2] })
      assert.equal(200, res.status)
      assert.equal("BYPASS", res.headers["x-cache-status"], c[1])
      assert.equal("MISS", get(path).headers["x-cache-status"], c[1])
    end
  end)

  it("caches 200, 301 and 404 by default, other statuses only when configured", function()
    for _, s in ipairs({ 301, 404 }) do
      local path = "/long/status" .. s
      assert.equal("MISS", get(path, { ["X-Echo-Status"] = tostring(s) }).headers["x-cache-status"])
      local res = get(path)
      assert.equal(s, res.status)
      assert.equal("HIT", res.headers["x-cache-status"])
    end
    for _, s in ipairs({ 500, 203, 302 }) do
      local path = "/long/status" .. s
      assert.equal("BYPASS", get(path, { ["X-Echo-Status"] = tostring(s) }).headers["x-cache-status"])
      assert.equal(200, get(path).status)
    end
    assert.equal("MISS", get("/codes/x", { ["X-Echo-Status"] = "203" }).headers["x-cache-status"])
    assert.equal(203, get("/codes/x").status)
    assert.equal("BYPASS", get("/codes/y", { ["X-Echo-Status"] = "404" }).headers["x-cache-status"])
  end)

  it("bypasses other methods and honours the client's no-store and no-cache", function()
    assert(echo.reset_stats())
    local post = get("/long/m", nil, "POST")
    assert.equal("BYPASS", post.headers["x-cache-status"])
    assert.equal(#post.body, tonumber(post.headers["content-length"]))   -- framing kept
    assert.equal("BYPASS", get("/long/m", nil, "DELETE").headers["x-cache-status"])
    assert.equal("MISS", get("/long/m").headers["x-cache-status"])
    assert.equal("BYPASS", get("/long/m", { ["Cache-Control"] = "no-store" }).headers["x-cache-status"])
    local fresh = get("/long/m", { ["Cache-Control"] = "no-cache" })
    assert.equal("MISS", fresh.headers["x-cache-status"])
    local res = get("/long/m")
    assert.equal("HIT", res.headers["x-cache-status"])
    assert.equal(fresh.body, res.body)                 -- the refreshed copy
    assert.equal(5, requests())
    -- request_cache_control: false ignores the client's directives.
    assert.equal("MISS", get("/strict/m").headers["x-cache-status"])
    assert.equal("HIT", get("/strict/m", { ["Cache-Control"] = "no-cache" }).headers["x-cache-status"])
    assert.equal("HIT", get("/strict/m", { Pragma = "no-cache" }).headers["x-cache-status"])
  end)

  it("serves HEAD from a stored GET, and does not store a HEAD answer", function()
    assert.equal("MISS", get("/long/head1", nil, "HEAD").headers["x-cache-status"])
    assert.equal("MISS", get("/long/head1").headers["x-cache-status"])
    local full = get("/long/head1")
    local res = get("/long/head1", nil, "HEAD")
    assert.equal(200, res.status)
    assert.equal("HIT", res.headers["x-cache-status"])
    assert.equal(#full.body, tonumber(res.headers["content-length"]))
    assert.equal("", res.body)
  end)

  it("answers 304 on a HIT whose ETag the client already has", function()
    local etag = { ["X-Echo-Response-Header"] = 'ETag: "v1"' }
    assert.equal("MISS", get("/long/etag", etag).headers["x-cache-status"])
    local res = get("/long/etag", { ["If-None-Match"] = 'W/"v0", "v1"' })
    assert.equal(304, res.status)
    assert.equal("", res.body)
    assert.equal('"v1"', res.headers["etag"])
    assert.equal(200, get("/long/etag", { ["If-None-Match"] = '"v2"' }).status)
  end)

  it("replays the upstream's headers and body, chunked or not, but not headers other plugins set first", function()
    local hdr = { ["X-Echo-Response-Header"] = "X-Custom: 42", ["X-Echo-Chunked"] = "3" }
    local first = get("/c/hdr", hdr)
    assert.equal("MISS", first.headers["x-cache-status"])
    local res = get("/c/hdr")
    assert.equal("HIT", res.headers["x-cache-status"])
    assert.equal("42", res.headers["x-custom"])
    assert.equal(first.body, res.body)
    -- test-stamp sets X-Stamp in access on every request: on the HIT it is
    -- this request's stamp, once.
    local count = {}
    for _, h in ipairs(res.header_list) do
      local n = h[1]:lower()
      count[n] = (count[n] or 0) + 1
    end
    assert.equal(1, count["x-stamp"])
    -- The gateway writes Date and Server on a hit; the stored ones are not
    -- repeated.
    assert.equal(1, count["date"])
    assert.equal(1, count["server"])
    assert.are_not.equal(first.headers["x-stamp"], res.headers["x-stamp"])
  end)

  it("keys on vary_headers and on the consumer", function()
    assert.equal("MISS", get("/vary/x", { ["Accept-Language"] = "en" }).headers["x-cache-status"])
    assert.equal("MISS", get("/vary/x", { ["Accept-Language"] = "fr" }).headers["x-cache-status"])
    assert.equal("MISS", get("/vary/x").headers["x-cache-status"])
    local res = get("/vary/x", { ["Accept-Language"] = "fr" })
    assert.equal("HIT", res.headers["x-cache-status"])
    assert.equal("fr", res.json.headers["accept-language"])
    -- A Vary on a header that is in the key may be stored.
    local v = { ["Accept-Language"] = "de", ["X-Echo-Response-Header"] = "Vary: Accept-Language" }
    assert.equal("MISS", get("/vary/y", v).headers["x-cache-status"])
    assert.equal("HIT", get("/vary/y", { ["Accept-Language"] = "de" }).headers["x-cache-status"])

    local a = { ["X-Test-Consumer"] = "alice" }
    assert.equal("MISS", get("/consumer/me", a).headers["x-cache-status"])
    assert.equal("HIT", get("/consumer/me", a).headers["x-cache-status"])
    assert.equal("MISS", get("/consumer/me", { ["X-Test-Consumer"] = "bob" }).headers["x-cache-status"])
  end)

  it("stores a request with credentials only when the response is public or keyed by consumer", function()
    local auth = { Authorization = "Bearer t" }
    assert.equal("BYPASS", get("/long/auth1", auth).headers["x-cache-status"])
    local pub = { Authorization = "Bearer t", ["X-Echo-Response-Header"] = "Cache-Control: public, max-age=60" }
    assert.equal("MISS", get("/long/auth2", pub).headers["x-cache-status"])
    assert.equal("HIT", get("/long/auth2", auth).headers["x-cache-status"])
    local ca = { Authorization = "Bearer t", ["X-Test-Consumer"] = "carol" }
    assert.equal("MISS", get("/consumer/auth", ca).headers["x-cache-status"])
    assert.equal("HIT", get("/consumer/auth", ca).headers["x-cache-status"])
  end)

  it("streams a body over max_object_bytes untouched and does not store it", function()
    local big = { ["X-Echo-Body-Size"] = "5000", ["X-Echo-Chunked"] = "4" }
    local res = get("/small/big", big)
    assert.equal(200, res.status)
    assert.equal(("x"):rep(5000), res.body)
    res = get("/small/big", big)
    assert.equal("MISS", res.headers["x-cache-status"])
    assert.equal(5000, #res.body)
    assert.equal("MISS", get("/small/fits", { ["X-Echo-Body-Size"] = "1000" }).headers["x-cache-status"])
    res = get("/small/fits")
    assert.equal("HIT", res.headers["x-cache-status"])
    assert.equal(("x"):rep(1000), res.body)
  end)

  it("evicts the least recently used entries when the dict is full", function()
    local body = { ["X-Echo-Body-Size"] = "4000" }
    for i = 1, 40 do
      assert.equal("MISS", get("/lru/" .. i, body).headers["x-cache-status"])
    end
    -- 40 x 4 KB do not fit in 64 KB: the oldest are gone, the newest stay.
    assert.equal("HIT", get("/lru/40").headers["x-cache-status"])
    assert.equal("MISS", get("/lru/1", body).headers["x-cache-status"])
    local stats = assert(gw.admin_request({ path = "/proxy-cache" }))
    assert.equal(200, stats.status)
    local tiny = stats.json.dicts.tiny
    assert.is_true(tiny.entries > 0 and tiny.entries < 20, "entries " .. tostring(tiny.entries))
    assert.equal(65536, tiny.capacity)
  end)

  it("purges by path, by prefix, by host and everything through the admin API", function()
    for _, p in ipairs({ "/long/p/a", "/long/p/a?q=1", "/long/p/b", "/long/q" }) do
      get(p)
      assert.equal("HIT", get(p).headers["x-cache-status"], p)
    end
    local res = assert(gw.admin_request({ method = "DELETE", path = "/proxy-cache/purge?path=%2Flong%2Fp%2Fa" }))
    assert.equal(200, res.status)
    assert.same({ purged = 2 }, res.json)
    assert.equal("MISS", get("/long/p/a?q=1").headers["x-cache-status"])
    assert.equal("HIT", get("/long/p/b").headers["x-cache-status"])

    res = assert(gw.admin_request({ method = "DELETE", path = "/proxy-cache/purge?prefix=/long/p/&host=nowhere" }))
    assert.same({ purged = 0 }, res.json)
    res = assert(gw.admin_request({ method = "DELETE", path = "/proxy-cache/purge?prefix=/long/p/&host=localhost" }))
    assert.is_true(res.json.purged >= 2)
    assert.equal("MISS", get("/long/p/b").headers["x-cache-status"])
    assert.equal("HIT", get("/long/q").headers["x-cache-status"])

    res = assert(gw.admin_request({ method = "POST", path = "/proxy-cache/purge" }))
    assert.equal(200, res.status)
    assert.is_true(res.json.purged >= 1)
    assert.equal("MISS", get("/long/q").headers["x-cache-status"])
    res = assert(gw.admin_request({ path = "/proxy-cache" }))
    assert.equal(1, res.json.dicts.cache.entries)        -- /long/q, just stored again

    res = assert(gw.admin_request({ path = "/proxy-cache/purge" }))
    assert.equal(405, res.status)
    res = assert(gw.admin_request({ method = "DELETE", path = "/proxy-cache/purge?path=/a&prefix=/b" }))
    assert.equal(400, res.status)
    res = assert(gw.admin_request({ path = "/proxy-cache/nope" }))
    assert.equal(404, res.status)
  end)

  it("logged no errors", function()
    assert.is_nil(gw.error_log():find("%[error%]"))
  end)
end)

describe("proxy-cache config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports a missing shared dict and bad values with YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      shared_dicts = { other = "1m" },
      upstreams = { a = { targets = { { url = "http://127.0.0.1:9" } } } },
      routes = {
        { name = "r0", paths = { "/r0" }, upstream = "a", plugins = { ["proxy-cache"] = {} } },
        { name = "r1", paths = { "/r1" }, upstream = "a", plugins = { ["proxy-cache"] = {
          dict = "nope", ttl_s = 0, statuses = { 99 }, vary_headers = { "bad header" }, max_object_bytes = 0 } } },
        { name = "r2", paths = { "/r2" }, upstream = "a", plugins = { ["proxy-cache"] = { dict = "other" } } },
      },
    })
    assert.is_false(ok)
    assert.truthy(out:find('routes[0].plugins.proxy-cache: dict: shared dict "cache" is not configured (add it to shared_dicts)', 1, true), out)
    assert.truthy(out:find('routes[1].plugins.proxy-cache.dict: shared dict "nope" is not configured', 1, true), out)
    assert.truthy(out:find("routes[1].plugins.proxy-cache.ttl_s: expected a positive number", 1, true), out)
    assert.truthy(out:find("routes[1].plugins.proxy-cache.statuses[0]: expected an integer between 200 and 599", 1, true), out)
    assert.truthy(out:find("routes[1].plugins.proxy-cache.vary_headers[0]: expected a string matching", 1, true), out)
    assert.truthy(out:find("routes[1].plugins.proxy-cache.max_object_bytes: expected a positive integer", 1, true), out)
    assert.falsy(out:find("routes[2]", 1, true), out)
  end)
end)
