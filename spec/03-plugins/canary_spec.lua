-- canary_spec.lua: the weighted split (10,000 requests over keep-alive
-- connections on two workers land 90/10 within 2 points), stickiness by
-- header, cookie, client address and consumer (the same key, the same side;
-- distinct keys split by weight), a weight change that only moves keys onto
-- the growing side, the override header, the access log's upstream field,
-- and config errors with their YAML paths.
--
-- The two sides are two tg-echo instances; with preserve_host: false the
-- Host header an upstream sees names the target, so each answer says which
-- side served it.
local helpers = require "spec.helpers"
local cjson = require "cjson.safe"
local socket = require "socket"

local N = 10000            -- requests for the split tests
local CONNS = 8            -- keep-alive connections they are spread over
local PIPELINE = 16        -- requests in flight per connection
local TIME_LIMIT = 40      -- seconds for one batch; a stuck gateway fails, not hangs

describe("canary plugin", function()
  local v1, v2, other, gw, side, conf

  local function make_conf(w1, w2)
    local function route(name, pconf, extra)
      local r = { name = name, paths = { "/" .. name }, upstream = "v1", preserve_host = false,
                  plugins = { canary = pconf } }
      for k, v in pairs(extra or {}) do r.plugins[k] = v end
      return r
    end
    local ups = { { upstream = "v1", weight = w1 }, { upstream = "v2", weight = w2 } }
    return {
      worker_processes = 2,
      plugins_path = { helpers.repo_root() .. "/spec/fixtures/plugins" },
      upstreams = {
        v1 = { targets = { { url = v1.url() } } },
        v2 = { targets = { { url = v2.url() } } },
        other = { targets = { { url = other.url() } } },
      },
      routes = {
        route("split", { upstreams = ups, override_header = "X-Canary" }),
        route("by-header", { upstreams = ups, sticky_by = "header:X-User" }),
        route("by-cookie", { upstreams = ups, sticky_by = "cookie:uid" }),
        route("by-ip", { upstreams = ups, sticky_by = "ip" }),
        route("by-consumer", { upstreams = ups, sticky_by = "consumer" }, { ["test-consumer"] = {} }),
        route("only-v2", { upstreams = { { upstream = "v1", weight = 0 }, { upstream = "v2", weight = 1 } } }),
      },
    }
  end

  setup(function()
    v1 = helpers.start_echo()
    v2 = helpers.start_echo()
    other = helpers.start_echo()
    side = {
      ["127.0.0.1:" .. v1.port] = "v1",
      ["127.0.0.1:" .. v2.port] = "v2",
      ["127.0.0.1:" .. other.port] = "other",
    }
    conf = make_conf(90, 10)
    gw = helpers.start_gateway(conf)
  end)

  teardown(function()
    helpers.stop_all()
  end)

  local function which(res)
    assert.equal(200, res.status)
    return side[res.json.headers.host] or ("unknown host " .. tostring(res.json.headers.host))
  end

  -- Sends `n` requests built by make(i) over CONNS keep-alive connections,
  -- PIPELINE at a time on each (fewer round trips keep the file fast on a
  -- loaded machine); returns counts per side and the side of each request.
  local function batch(n, make)
    local conns = {}
    for i = 1, CONNS do conns[i] = assert(helpers.connect(gw.port)) end
    local counts, sides = { v1 = 0, v2 = 0 }, {}
    local deadline = socket.gettime() + TIME_LIMIT
    local i = 0
    while i < n do
      local sent = {}
      for c = 1, CONNS do
        local bytes = {}
        for _ = 1, PIPELINE do
          if i >= n then break end
          i = i + 1
          bytes[#bytes + 1] = helpers.encode_request(make(i))
          sent[#sent + 1] = { c, i }
        end
        if #bytes > 0 then assert(conns[c]:send(table.concat(bytes))) end
      end
      for _, s in ipairs(sent) do
        local res = assert(conns[s[1]]:read_response({}))
        local side_of = which(res)
        counts[side_of] = (counts[side_of] or 0) + 1
        sides[s[2]] = side_of
      end
      assert(socket.gettime() < deadline, "batch took longer than " .. TIME_LIMIT .. " s")
    end
    for _, c in ipairs(conns) do c:close() end
    return counts, sides
  end

  it("splits 10,000 requests 90/10 within 2 points", function()
    local counts = batch(N, function() return { path = "/split" } end)
    local share = counts.v2 / N * 100
    assert.is_true(share >= 8 and share <= 12, "v2 got " .. share .. "%")
    assert.equal(N, counts.v1 + counts.v2)
  end)

  it("splits 10,000 distinct sticky keys 90/10 within 2 points, and a key always lands on the same side", function()
    local counts, sides = batch(N, function(i) return { path = "/by-header", headers = { ["X-User"] = "user-" .. i } } end)
    local share = counts.v2 / N * 100
    assert.is_true(share >= 8 and share <= 12, "v2 got " .. share .. "%")
    -- The same keys again (every 20th), in another order: the same sides.
    for i = N, 1, -20 do
      local res = assert(gw.request({ path = "/by-header", headers = { ["X-User"] = "user-" .. i } }))
      assert.equal(sides[i], which(res), "user-" .. i)
    end
  end)

  it("is sticky by cookie, by client address and by consumer", function()
    local seen = { v1 = 0, v2 = 0 }
    for i = 1, 300 do
      local cookie = "theme=dark; uid=u" .. i .. "; lang=en"
      local first = which(assert(gw.request({ path = "/by-cookie", headers = { Cookie = cookie } })))
      seen[first] = seen[first] + 1
      if i % 30 == 0 then
        -- Another cookie order, same uid: same side. A prefix-named cookie
        -- (xuid) does not count.
        local again = which(assert(gw.request({ path = "/by-cookie",
                                                 headers = { Cookie = "xuid=zzz; uid=u" .. i } })))
        assert.equal(first, again)
      end
    end
    assert.is_true(seen.v1 > 0 and seen.v2 > 0)

    -- Every request comes from 127.0.0.1: all on one side.
    local ip_side
    for _ = 1, 50 do
      local s = which(assert(gw.request({ path = "/by-ip" })))
      ip_side = ip_side or s
      assert.equal(ip_side, s)
    end

    local per = { v1 = 0, v2 = 0 }
    for i = 1, 200 do
      local hdr = { ["X-Test-Consumer"] = "consumer-" .. i }
      local a = which(assert(gw.request({ path = "/by-consumer", headers = hdr })))
      local b = which(assert(gw.request({ path = "/by-consumer", headers = hdr })))
      assert.equal(a, b)
      per[a] = per[a] + 1
    end
    assert.is_true(per.v1 > 0 and per.v2 > 0)
    -- Without a consumer it falls back to the address: one side.
    local anon = which(assert(gw.request({ path = "/by-consumer" })))
    for _ = 1, 20 do assert.equal(anon, which(assert(gw.request({ path = "/by-consumer" })))) end
  end)

  it("honours the override header for the canary's own upstreams only", function()
    for _ = 1, 20 do
      assert.equal("v2", which(assert(gw.request({ path = "/split", headers = { ["X-Canary"] = "v2" } }))))
      assert.equal("v1", which(assert(gw.request({ path = "/split", headers = { ["X-Canary"] = "v1" } }))))
    end
    -- "other" is a configured upstream but not part of this canary.
    local counts = { v1 = 0, v2 = 0 }
    for _ = 1, 50 do
      local s = which(assert(gw.request({ path = "/split", headers = { ["X-Canary"] = "other" } })))
      counts[s] = (counts[s] or 0) + 1
    end
    assert.is_nil(counts.other)
  end)

  it("sends nothing to a side of weight 0 and names the chosen upstream in the access log", function()
    for _ = 1, 20 do
      assert.equal("v2", which(assert(gw.request({ path = "/only-v2" }))))
    end
    assert(helpers.wait_until(function()
      local n = 0
      for _, line in ipairs(gw.access_log()) do
        local e = cjson.decode(line)
        if e and e.path == "/only-v2" then
          assert.equal("v2", e.upstream)
          assert.equal("127.0.0.1:" .. v2.port, e.upstream_addr)
          n = n + 1
        end
      end
      return n == 20
    end, 5))
  end)

  it("moves only keys onto the growing side when the canary's weight goes up", function()
    local before = {}
    for i = 1, 1000 do
      before[i] = which(assert(gw.request({ path = "/by-header", headers = { ["X-User"] = "k" .. i } })))
    end
    assert(gw.reload(make_conf(80, 20)))
    local moved, v2_after = 0, 0
    for i = 1, 1000 do
      local s = which(assert(gw.request({ path = "/by-header", headers = { ["X-User"] = "k" .. i } })))
      if before[i] == "v2" then assert.equal("v2", s, "k" .. i .. " left the canary") end
      if s ~= before[i] then moved = moved + 1 end
      if s == "v2" then v2_after = v2_after + 1 end
    end
    -- About 10% move (1000 keys: 100 +- a generous margin).
    assert.is_true(moved >= 50 and moved <= 150, "moved " .. moved)
    assert.is_true(v2_after >= 140 and v2_after <= 260, "v2 has " .. v2_after)
  end)

  it("logged no errors", function()
    assert.is_nil(gw.error_log():find("%[error%]"))
  end)
end)

describe("canary config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports unknown upstreams, duplicates, zero weights and bad sticky_by with YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      upstreams = { a = { targets = { { url = "http://127.0.0.1:9" } } },
                    b = { targets = { { url = "http://127.0.0.1:9" } } } },
      routes = {
        { name = "r0", paths = { "/r0" }, upstream = "a", plugins = { canary = {
          upstreams = { { upstream = "a", weight = 1 }, { upstream = "bb", weight = 1 } } } } },
        { name = "r1", paths = { "/r1" }, upstream = "a", plugins = { canary = {
          upstreams = { { upstream = "a", weight = 1 }, { upstream = "a", weight = 2 } } } } },
        { name = "r2", paths = { "/r2" }, upstream = "a", plugins = { canary = {
          upstreams = { { upstream = "a", weight = 0 }, { upstream = "b", weight = 0 } } } } },
        { name = "r3", paths = { "/r3" }, upstream = "a", plugins = { canary = {
          upstreams = { { upstream = "a", weight = -1 } }, sticky_by = "session" } } },
        { name = "r4", paths = { "/r4" }, upstream = "a", plugins = { canary = { sticky_by = "header:" } } },
      },
    })
    assert.is_false(ok)
    assert.truthy(out:find('routes[0].plugins.canary.upstreams[1].upstream: unknown upstream "bb"', 1, true), out)
    assert.truthy(out:find('routes[1].plugins.canary.upstreams: upstream "a" listed twice ([0] and [1])', 1, true), out)
    assert.truthy(out:find("routes[2].plugins.canary.upstreams: at least one weight must be positive", 1, true), out)
    assert.truthy(out:find("routes[3].plugins.canary.upstreams[0].weight: expected an integer between 0 and 1000000", 1, true), out)
    assert.truthy(out:find("routes[3].plugins.canary.sticky_by: expected consumer, ip, header:NAME or cookie:NAME", 1, true), out)
    assert.truthy(out:find("routes[4].plugins.canary.upstreams: required field missing", 1, true), out)
    assert.truthy(out:find("routes[4].plugins.canary.sticky_by: expected consumer, ip, header:NAME or cookie:NAME", 1, true), out)
  end)
end)
