-- ip-restriction_spec.lua: the address parser and sets (pure Lua), then the
-- plugin through the real gateway: allow and deny lists over IPv4 and IPv6
-- connections, X-Forwarded-For only through trusted proxies (right-most
-- untrusted hop), the 403 contract (nothing reaches the upstream), and
-- config errors with their YAML paths at `tollgate -t`.
local helpers = require "spec.helpers"
local cidr = require "tollgate.traffic.cidr"

describe("tollgate.traffic.cidr", function()
  it("parses IPv4 strictly", function()
    assert.equal(4, (cidr.parse_ip("192.0.2.1")))
    assert.equal(4, (cidr.parse_ip("0.0.0.0")))
    assert.equal(4, (cidr.parse_ip("255.255.255.255")))
    for _, bad in ipairs({ "256.1.1.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.4 ", " 1.2.3.4",
                           "1..2.3", "a.b.c.d", "", "1.2.3.-1", "1.2.3.4/" }) do
      assert.is_nil(cidr.parse_ip(bad), bad)
    end
  end)

  it("parses IPv6 text forms, and IPv4-mapped addresses as IPv4", function()
    local forms = {
      { "::1", ("\0"):rep(15) .. "\1" },
      { "::", ("\0"):rep(16) },
      { "2001:db8::", "\32\1\13\184" .. ("\0"):rep(12) },
      { "2001:DB8:0:0:0:0:0:1", "\32\1\13\184" .. ("\0"):rep(11) .. "\1" },
      { "fe80::1:2", "\254\128" .. ("\0"):rep(10) .. "\0\1\0\2" },
      { "::0:1.2.3.4", ("\0"):rep(12) .. "\1\2\3\4" },
    }
    for _, f in ipairs(forms) do
      local fam, bin = cidr.parse_ip(f[1])
      assert.equal(6, fam, f[1])
      assert.equal(f[2], bin, f[1])
    end
    local fam, v = cidr.parse_ip("::ffff:192.0.2.1")
    assert.equal(4, fam)
    assert.equal(select(2, cidr.parse_ip("192.0.2.1")), v)
    assert.equal(4, (cidr.parse_ip("::ffff:c000:201")))
    for _, bad in ipairs({ ":::", "1:2:3:4:5:6:7:8:9", "1::2::3", "fe80::1%eth0", "12345::", "1:2:3:4:5:6:7:",
                           ":1:2:3:4:5:6:7", "::1.2.3", "1:2:3:4:5:6:7:1.2.3.4", "g::1", "[::1]" }) do
      assert.is_nil(cidr.parse_ip(bad), bad)
    end
  end)

  it("parses networks and refuses host bits and bad lengths", function()
    assert.same({ 4, 24 }, { (cidr.parse("10.1.2.0/24")), select(3, cidr.parse("10.1.2.0/24")) })
    assert.equal(128, select(3, cidr.parse("::1")))
    assert.equal(8, select(3, cidr.parse("::ffff:10.0.0.0/104")))
    local _, err = cidr.parse("10.0.0.1/8")
    assert.equal('"10.0.0.1/8" has host bits set', err)
    _, err = cidr.parse("2001:db8::1/32")
    assert.equal('"2001:db8::1/32" has host bits set', err)
    for _, bad in ipairs({ "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/08", "/8", "10.0.0.0/8/8" }) do
      assert.is_nil((cidr.parse(bad)), bad)
    end
  end)

  it("answers membership by the most specific match over mixed families", function()
    local set = assert(cidr.new_set({ "10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "0.0.0.0/0" }))
    assert.is_true(set:contains("10.255.0.1"))
    assert.is_true(set:contains("8.8.8.8"))           -- 0.0.0.0/0
    assert.is_true(set:contains("2001:db8:ffff::1"))
    assert.is_false(set:contains("2001:db9::1"))
    assert.is_true(set:contains("::1"))
    assert.is_false(set:contains("::2"))
    assert.is_true(set:contains("::ffff:10.0.0.1"))   -- mapped = IPv4
    local v6only = assert(cidr.new_set({ "fe80::/10" }))
    assert.is_true(v6only:contains("febf::1"))
    assert.is_false(v6only:contains("fec0::1"))
    assert.is_false(v6only:contains("10.0.0.1"))
    local res, err = v6only:contains("nonsense")
    assert.is_nil(res)
    assert.equal("invalid address", err)
    -- /31 boundaries and repeated lookups (the per-set cache) agree.
    local s31 = assert(cidr.new_set({ "192.0.2.2/31" }))
    for _ = 1, 2 do
      assert.is_false(s31:contains("192.0.2.1"))
      assert.is_true(s31:contains("192.0.2.2"))
      assert.is_true(s31:contains("192.0.2.3"))
      assert.is_false(s31:contains("192.0.2.4"))
    end
    local _, e, i = cidr.new_set({ "1.2.3.4", "bogus" })
    assert.equal(2, i)
    assert.equal('invalid IP address "bogus"', e)
  end)
end)

describe("ip-restriction plugin", function()
  local echo, gw, port6

  setup(function()
    echo = helpers.start_echo()
    local port = helpers.free_port()
    port6 = helpers.free_port()
    local function route(name, conf)
      return { name = name, paths = { "/" .. name }, upstream = "echo", plugins = { ["ip-restriction"] = conf } }
    end
    gw = helpers.start_gateway({
      listen = { "127.0.0.1:" .. port, "[::1]:" .. port6 },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      routes = {
        route("allow-local", { allow = { "127.0.0.1" } }),
        route("deny-local", { deny = { "127.0.0.0/8" } }),
        route("v6-only", { allow = { "::1/128" } }),
        route("allow-not-deny", { allow = { "127.0.0.0/8", "::1" }, deny = { "127.0.0.1" } }),
        route("proxied", { allow = { "203.0.113.0/24", "2001:db8::/32" },
                           trusted_proxies = { "127.0.0.1", "10.0.0.0/8" } }),
        route("proxied-deny", { deny = { "203.0.113.66" }, trusted_proxies = { "127.0.0.1" } }),
        route("untrusted", { allow = { "203.0.113.0/24" } }),
        { name = "open", paths = { "/open" }, upstream = "echo" },
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  local function get(path, headers, addr)
    return assert(helpers.request(addr == "::1" and port6 or gw.port,
                                  { path = path, headers = headers, addr = addr }))
  end

  local function assert_forbidden(res)
    assert.equal(403, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ error = "Forbidden" }, res.json)
  end

  it("lets an allowed address through and refuses a denied one before the upstream", function()
    local res = get("/allow-local")
    assert.equal(200, res.status)
    assert.equal("/allow-local", res.json.path)
    assert(echo.reset_stats())
    assert_forbidden(get("/deny-local"))
    assert.equal(0, echo.stats().requests)
    -- the open route is unaffected
    assert.equal(200, get("/open").status)
  end)

  it("matches IPv6 clients against IPv6 entries", function()
    assert.equal(200, get("/v6-only", nil, "::1").status)
    assert_forbidden(get("/v6-only"))
    assert_forbidden(get("/allow-local", nil, "::1"))
    assert.equal(200, get("/allow-not-deny", nil, "::1").status)
  end)

  it("lets deny win over allow", function()
    assert_forbidden(get("/allow-not-deny"))
  end)

  it("takes the right-most untrusted X-Forwarded-For hop behind a trusted proxy", function()
    assert.equal(200, get("/proxied", { ["X-Forwarded-For"] = "203.0.113.5" }).status)
    -- The client wrote the left entry; the proxy appended the real one.
    assert_forbidden(get("/proxied", { ["X-Forwarded-For"] = "203.0.113.5, 198.51.100.1" }))
    assert.equal(200, get("/proxied", { ["X-Forwarded-For"] = "198.51.100.1, 203.0.113.5" }).status)
    -- Trusted hops (10.0.0.0/8) are skipped, ports and brackets stripped.
    assert.equal(200, get("/proxied", { ["X-Forwarded-For"] = "1.1.1.1,203.0.113.9:4711, 10.1.1.1" }).status)
    assert.equal(200, get("/proxied", { ["X-Forwarded-For"] = "[2001:db8::7]:80" }).status)
    -- Several header lines form one list, in order.
    assert.equal(200, get("/proxied", { { "X-Forwarded-For", "198.51.100.1" },
                                         { "X-Forwarded-For", "203.0.113.5" } }).status)
    assert_forbidden(get("/proxied", { { "X-Forwarded-For", "203.0.113.5" },
                                       { "X-Forwarded-For", "198.51.100.1" } }))
    -- No header: the peer itself (trusted, but not allowed).
    assert_forbidden(get("/proxied"))
    -- Garbage where the address should be: refused, also on a deny-only list.
    assert_forbidden(get("/proxied", { ["X-Forwarded-For"] = "203.0.113.5, unknown" }))
    assert_forbidden(get("/proxied-deny", { ["X-Forwarded-For"] = "not-an-ip" }))
    assert_forbidden(get("/proxied-deny", { ["X-Forwarded-For"] = "203.0.113.66" }))
    assert.equal(200, get("/proxied-deny", { ["X-Forwarded-For"] = "203.0.113.67" }).status)
    -- The upstream still gets the chain with the peer appended.
    local res = get("/proxied", { ["X-Forwarded-For"] = "203.0.113.5" })
    assert.equal("203.0.113.5, 127.0.0.1", res.json.headers["x-forwarded-for"])
  end)

  it("ignores X-Forwarded-For from a peer that is not a trusted proxy", function()
    assert_forbidden(get("/untrusted", { ["X-Forwarded-For"] = "203.0.113.5" }))
  end)

  it("refuses an over-long forwarding chain", function()
    local hops = {}
    for i = 1, 40 do hops[i] = "203.0.113." .. i end
    assert_forbidden(get("/proxied", { ["X-Forwarded-For"] = table.concat(hops, ",") }))
  end)

  it("logged no errors", function()
    assert.is_nil(gw.error_log():find("%[error%]"))
  end)
end)

describe("ip-restriction config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports every bad entry with its YAML path", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      upstreams = { echo = { targets = { { url = "http://127.0.0.1:9" } } } },
      routes = {
        { name = "a", paths = { "/a" }, upstream = "echo",
          plugins = { ["ip-restriction"] = { allow = { "10.0.0.1/8", "300.1.1.1", "fe80::1%eth0", "::/200" } } } },
        { name = "b", paths = { "/b" }, upstream = "echo",
          plugins = { ["ip-restriction"] = { trusted_proxies = { "127.0.0.1" } } } },
        { name = "c", paths = { "/c" }, upstream = "echo",
          plugins = { ["ip-restriction"] = { deny = "10.0.0.0/8" } } },
      },
    })
    assert.is_false(ok)
    assert.truthy(out:find('routes[0].plugins.ip-restriction.allow[0]: "10.0.0.1/8" has host bits set', 1, true), out)
    assert.truthy(out:find('routes[0].plugins.ip-restriction.allow[1]: invalid IP address "300.1.1.1"', 1, true), out)
    assert.truthy(out:find('routes[0].plugins.ip-restriction.allow[2]: invalid IP address "fe80::1%eth0"', 1, true), out)
    assert.truthy(out:find('routes[0].plugins.ip-restriction.allow[3]: invalid prefix length in "::/200"', 1, true), out)
    assert.truthy(out:find("routes[1].plugins.ip-restriction: at least one of these fields must be set: allow, deny", 1, true), out)
    assert.truthy(out:find("routes[2].plugins.ip-restriction.deny: expected a list", 1, true), out)
  end)
end)
