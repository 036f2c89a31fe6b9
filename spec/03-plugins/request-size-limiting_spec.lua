-- request-size-limiting_spec.lua: bodies at, below and above max_bytes, by
-- Content-Length (decided before the body is read, also with Expect:
-- 100-continue) and chunked (buffered and counted, or refused with 411
-- under require_content_length); the core's own limit still applies; the
-- 413 contract (JSON, nothing reaches the upstream); config errors.
local helpers = require "spec.helpers"

-- A chunked body of `body` in pieces of at most `size` bytes.
local function chunked(body, size)
  local out = {}
  for i = 1, #body, size do
    local piece = body:sub(i, i + size - 1)
    out[#out + 1] = string.format("%x\r\n%s\r\n", #piece, piece)
  end
  out[#out + 1] = "0\r\n\r\n"
  return table.concat(out)
end

describe("request-size-limiting plugin", function()
  local echo, gw

  setup(function()
    echo = helpers.start_echo()
    local function route(name, conf)
      return { name = name, paths = { "/" .. name }, upstream = "echo",
               plugins = { ["request-size-limiting"] = conf } }
    end
    gw = helpers.start_gateway({
      limits = { max_body_bytes = 4096 },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      routes = {
        route("small", { max_bytes = 100 }),
        route("zero", { max_bytes = 0 }),
        route("strict", { max_bytes = 100, require_content_length = true }),
        route("big", { max_bytes = 100000 }),
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  local function post(path, body, headers)
    return assert(helpers.request(gw.port, { method = "POST", path = path, body = body, headers = headers }))
  end

  local function assert_too_large(res)
    assert.equal(413, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ error = "Content Too Large" }, res.json)
  end

  it("passes a body of exactly max_bytes and refuses one byte more by Content-Length", function()
    local res = post("/small", ("a"):rep(100))
    assert.equal(200, res.status)
    assert.equal(100, res.json.body_length)
    assert(echo.reset_stats())
    assert_too_large(post("/small", ("a"):rep(101)))
    assert.equal(0, echo.stats().requests)
  end)

  it("decides on Content-Length alone: an Expect: 100-continue client never sends the body", function()
    local conn = assert(helpers.raw_conn(gw.port))
    assert(conn:send("POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n"
                     .. "Expect: 100-continue\r\n\r\n"))
    local data = conn:read_all(3)
    conn:close()
    assert.truthy(data:find("^HTTP/1.1 413 "), data)
    assert.falsy(data:find("100 Continue", 1, true))
    assert.truthy(data:find("Connection: close", 1, true))
  end)

  it("keeps the connection usable after a 413 whose body was already sent", function()
    local conn = assert(helpers.connect(gw.port))
    local res = assert(conn:request({ method = "POST", path = "/small", body = ("b"):rep(200) }))
    assert_too_large(res)
    -- Either the gateway skipped the buffered body and the connection goes
    -- on, or it closed it; never is the body taken for the next request.
    local res2 = conn:request({ path = "/small" })
    if res2 then
      assert.equal(200, res2.status)
      assert.equal("/small", res2.json.path)
    end
    conn:close()
  end)

  it("counts a chunked body: at the limit it reaches the upstream, over it is refused", function()
    local res = post("/small", chunked(("c"):rep(100), 30), { ["Transfer-Encoding"] = "chunked" })
    assert.equal(200, res.status)
    assert.equal(100, res.json.body_length)
    assert.equal(("c"):rep(100), res.json.body)
    assert(echo.reset_stats())
    assert_too_large(post("/small", chunked(("c"):rep(101), 30), { ["Transfer-Encoding"] = "chunked" }))
    assert.equal(0, echo.stats().requests)
  end)

  it("leaves the core's own limit in force above max_bytes", function()
    local res = post("/big", chunked(("d"):rep(5000), 1000), { ["Transfer-Encoding"] = "chunked" })
    assert_too_large(res)
    res = post("/big", ("d"):rep(4000))
    assert.equal(200, res.status)
    assert.equal(4000, res.json.body_length)
  end)

  it("with max_bytes 0 accepts only empty bodies", function()
    assert.equal(200, post("/zero", "").status)
    assert.equal(200, assert(helpers.request(gw.port, { path = "/zero" })).status)
    assert_too_large(post("/zero", "x"))
    assert_too_large(post("/zero", chunked("x", 1), { ["Transfer-Encoding"] = "chunked" }))
  end)

  it("answers 411 to a body without Content-Length under require_content_length", function()
    assert(echo.reset_stats())
    local res = post("/strict", chunked("abc", 2), { ["Transfer-Encoding"] = "chunked" })
    assert.equal(411, res.status)
    assert.same({ error = "Length Required" }, res.json)
    assert.equal(0, echo.stats().requests)
    assert.equal(200, post("/strict", "abc").status)
  end)

  it("logged no errors", function()
    assert.is_nil(gw.error_log():find("%[error%]"))
  end)
end)

describe("request-size-limiting config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports bad values with their YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      upstreams = { echo = { targets = { { url = "http://127.0.0.1:9" } } } },
      routes = {
        { name = "a", paths = { "/a" }, upstream = "echo", plugins = { ["request-size-limiting"] = {} } },
        { name = "b", paths = { "/b" }, upstream = "echo",
          plugins = { ["request-size-limiting"] = { max_bytes = -1, require_content_length = "yes" } } },
        { name = "c", paths = { "/c" }, upstream = "echo",
          plugins = { ["request-size-limiting"] = { max_bytes = 10, max_byte = 5 } } },
      },
    })
    assert.is_false(ok)
    assert.truthy(out:find("routes[0].plugins.request-size-limiting.max_bytes: required field missing", 1, true), out)
    assert.truthy(out:find("routes[1].plugins.request-size-limiting.max_bytes: expected a non-negative integer", 1, true), out)
    assert.truthy(out:find("routes[1].plugins.request-size-limiting.require_content_length: expected true or false", 1, true), out)
    assert.truthy(out:find("routes[2].plugins.request-size-limiting.max_byte: unknown key", 1, true), out)
  end)
end)
