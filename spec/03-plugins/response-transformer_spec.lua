-- response-transformer_spec.lua: the response-transformer plugin through
-- the real gateway. Header operations at their edges (present / absent /
-- repeated, on gateway errors too); JSON field removal and the envelope on
-- exact upstream bodies, byte for byte, and what is left alone (other
-- content types, invalid JSON, compressed bodies, HEAD, the gateway's own
-- errors); buffering across many chunks, and the max_buffer_bytes edge
-- (stream untouched, one warning); config errors with YAML paths.
--
-- Upstreams: a second tollgate ("origin") whose static routes answer exact
-- bodies with chosen content types, and tg-echo for chunked and large
-- bodies (its JSON answer contains the request body, so a big POST makes a
-- big JSON response).

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local rep = string.rep

local OBJ = '{"id":7,"password":"p","user":{"name":"a","ssn":"1"},"big":12345678901234567890,'
  .. '"ratio":0.1000000000000000055511151231257827,"empty":[],"url":"a/b","esc":"\\u00e9\\n",'
  .. '"items":[{"id":1,"internal":true},{"id":2,"internal":{"x":[1,{"internal":0}]}},3,[{"internal":1}]]}'
-- OBJ with password, user.ssn and items.internal removed, everything else as it was.
local OBJ_STRIPPED = '{"id":7,"user":{"name":"a"},"big":12345678901234567890,'
  .. '"ratio":0.1000000000000000055511151231257827,"empty":[],"url":"a/b","esc":"\\u00e9\\n",'
  .. '"items":[{"id":1},{"id":2},3,[{}]]}'

local conf_errors = helpers.conf_error_set

local header_values = helpers.header_values

local function static(body, ctype, headers)
  return { status = 200, body = body, content_type = ctype, headers = headers }
end

describe("response-transformer", function()
  local echo, origin, gw

  setup(function()
    echo = helpers.start_echo()
    origin = helpers.start_gateway({
      routes = {
        { name = "obj", paths = { "=/obj" }, response = static(OBJ, "application/json") },
        { name = "arr", paths = { "=/arr" },
          response = static('[{"id":1,"password":"x"},{"id":2,"password":{"deep":1}},[],"s"]', "application/json") },
        { name = "charset", paths = { "=/charset" },
          response = static('{"password":"p","ok":1}', "Application/JSON ; charset=utf-8") },
        { name = "text", paths = { "=/text" }, response = static('{"password":"p"}', "text/plain") },
        { name = "problem", paths = { "=/problem" },
          response = static('{"password":"p"}', "application/problem+json") },
        { name = "invalid", paths = { "=/invalid" }, response = static('{"password": ', "application/json") },
        { name = "hex", paths = { "=/hex" }, response = static('{"password":0x10}', "application/json") },
        { name = "scalar", paths = { "=/scalar" }, response = static('"just a string"', "application/json") },
        { name = "spaces", paths = { "=/spaces" },
          response = static(' {\n  "password" : "p" ,\n  "keep" : [ 1 , 2 ]\n}\n', "application/json") },
        { name = "escaped", paths = { "=/escaped" },
          response = static('{"pass\\u0077ord":"p","pass.word":2,"password":3,"password":4}', "application/json") },
        { name = "gzip", paths = { "=/gzip" },
          response = static('{"password":"p"}', "application/json", { ["Content-Encoding"] = "gzip" }) },
        { name = "empty", paths = { "=/empty" }, response = static("", "application/json") },
      },
    })
    local dead = helpers.free_port()
    gw = helpers.start_gateway({
      upstreams = {
        origin = { targets = { { url = "http://127.0.0.1:" .. origin.port } } },
        echo = { targets = { { url = echo.url() } } },
        dead = { targets = { { url = "http://127.0.0.1:" .. dead } }, retries = 0,
                 passive_health = { max_fails = 0 } },
      },
      plugins = { ["request-id"] = {} },
      routes = {
        { name = "rm", paths = { "/rm" }, strip_prefix = "/rm", upstream = "origin",
          plugins = { ["response-transformer"] = { remove_json_fields = { "password", "user.ssn", "items.internal" } } } },
        { name = "env", paths = { "/env" }, strip_prefix = "/env", upstream = "origin",
          plugins = { ["response-transformer"] = { json_envelope = { api_version = "1.0", beta = true, n = 2 } } } },
        { name = "both", paths = { "/both" }, strip_prefix = "/both", upstream = "origin",
          plugins = { ["response-transformer"] = { json_envelope = { api_version = "1.0" },
                                                   remove_json_fields = { "password" } } } },
        { name = "small", paths = { "/small" }, strip_prefix = "/small", upstream = "origin",
          plugins = { ["response-transformer"] = { json_envelope = {}, max_buffer_bytes = 64 } } },
        { name = "no-id", paths = { "/noid" }, strip_prefix = "/noid", upstream = "origin",
          plugins = { ["request-id"] = false, ["response-transformer"] = { json_envelope = {} } } },
        { name = "echo", paths = { "/echo" }, upstream = "echo",
          plugins = { ["response-transformer"] = { json_envelope = { v = 1 }, max_buffer_bytes = 100000,
                                                   remove_json_fields = { "header_list" } } } },
        { name = "hdr", paths = { "/hdr" }, upstream = "echo",
          plugins = { ["response-transformer"] = {
            remove = { headers = { "X-Remove", "X-Order" } },
            rename = { headers = { ["X-Old"] = "X-New" } },
            replace = { headers = { ["X-Replace"] = "replaced", ["X-Order"] = "never" } },
            add = { headers = { ["X-Add"] = "added", ["X-Order"] = "removed-then-added", ["X-Num"] = 1.5 } },
            append = { headers = { ["X-Append"] = "appended", ["Vary"] = "Accept" } },
          } } },
        { name = "dead", paths = { "/dead" }, upstream = "dead",
          plugins = { ["response-transformer"] = { json_envelope = {}, remove_json_fields = { "error" },
                                                   add = { headers = { ["X-Added"] = "yes" } } } } },
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  describe("headers", function()
    it("removes, renames, replaces, adds and appends, in that order", function()
      local res = assert(gw.request({ path = "/hdr", headers = { { "X-Echo-Response-Header", "X-Remove: 1" },
        { "X-Echo-Response-Header", "X-Remove: 2" }, { "X-Echo-Response-Header", "X-Old: o1" },
        { "X-Echo-Response-Header", "X-Old: o2" }, { "X-Echo-Response-Header", "X-Replace: upstream" },
        { "X-Echo-Response-Header", "X-Order: upstream" }, { "X-Echo-Response-Header", "X-Append: upstream" },
        { "X-Echo-Response-Header", "Vary: Accept-Encoding" } } }))
      assert.equal(200, res.status)
      assert.same({}, header_values(res, "X-Remove"))
      assert.same({}, header_values(res, "X-Old"))
      assert.same({ "o1", "o2" }, header_values(res, "X-New"))
      assert.same({ "replaced" }, header_values(res, "X-Replace"))
      assert.same({ "removed-then-added" }, header_values(res, "X-Order"))
      assert.same({ "added" }, header_values(res, "X-Add"))
      assert.same({ "1.5" }, header_values(res, "X-Num"))
      assert.same({ "upstream", "appended" }, header_values(res, "X-Append"))
      assert.same({ "Accept-Encoding", "Accept" }, header_values(res, "Vary"))
      -- No body option: the body is the echo's, untouched.
      assert.equal("/hdr", res.json.path)
    end)

    it("does not replace or rename what is absent, and add keeps the upstream's", function()
      local res = assert(gw.request({ path = "/hdr", headers = { ["X-Echo-Response-Header"] = "X-Add: upstream" } }))
      assert.same({}, header_values(res, "X-Replace"))
      assert.same({}, header_values(res, "X-New"))
      assert.same({ "upstream" }, header_values(res, "X-Add"))
      assert.same({ "appended" }, header_values(res, "X-Append"))
    end)

    it("edits the gateway's own error responses, without touching their body", function()
      local res = assert(gw.request({ path = "/dead" }))
      assert.equal(502, res.status)
      assert.equal("yes", res.headers["x-added"])
      assert.equal('{"error":"Bad Gateway"}', res.body)
    end)
  end)

  describe("remove_json_fields", function()
    it("removes top-level, nested and per-array-item fields, keeping the rest byte for byte", function()
      local res = assert(gw.request({ path = "/rm/obj" }))
      assert.equal(200, res.status)
      assert.equal(OBJ_STRIPPED, res.body)
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.equal("application/json", res.headers["content-type"])
    end)

    it("answers an HTTP/1.0 client too, delimited by the close", function()
      local res = assert(gw.request({ path = "/rm/obj", version = "1.0" }))
      assert.equal(200, res.status)
      assert.equal(OBJ_STRIPPED, res.body)
      assert.is_nil(res.headers["content-length"])
      assert.is_nil(res.headers["transfer-encoding"])
    end)

    it("applies to every element of a top-level array", function()
      local res = assert(gw.request({ path = "/rm/arr" }))
      assert.equal('[{"id":1},{"id":2},[],"s"]', res.body)
    end)

    it("matches escaped keys, removes every repeat, and never splits on a literal dot", function()
      local res = assert(gw.request({ path = "/rm/escaped" }))
      assert.equal('{"pass.word":2}', res.body)
    end)

    it("keeps the whitespace around what it removes", function()
      local res = assert(gw.request({ path = "/rm/spaces" }))
      assert.equal(' {\n  "keep" : [ 1 , 2 ]\n}\n', res.body)
    end)

    it("accepts parameters and any case in the JSON content type", function()
      local res = assert(gw.request({ path = "/rm/charset" }))
      assert.equal('{"ok":1}', res.body)
    end)

    it("leaves other content types, invalid JSON, compressed and empty bodies alone", function()
      for path, body in pairs({
        ["/rm/text"] = '{"password":"p"}',
        ["/rm/problem"] = '{"password":"p"}',
        ["/rm/invalid"] = '{"password": ',
        ["/rm/hex"] = '{"password":0x10}',
        ["/rm/gzip"] = '{"password":"p"}',
        ["/rm/empty"] = "",
        ["/rm/scalar"] = '"just a string"',
      }) do
        local res = assert(gw.request({ path = path }))
        assert.equal(200, res.status)
        assert.equal(body, res.body, path)
      end
      assert(helpers.wait_until(function()
        return gw.error_log():find("response body is not valid JSON", 1, true)
      end, 3))
    end)

    it("keeps the Content-Length of a body it leaves alone (no re-chunking)", function()
      local res = assert(gw.request({ path = "/rm/text" }))
      assert.equal(200, res.status)
      assert.equal(tostring(#res.body), res.headers["content-length"])
      assert.is_nil(res.headers["transfer-encoding"])
    end)
  end)

  describe("json_envelope", function()
    it("wraps the original bytes with the configured keys and the request id", function()
      local res = assert(gw.request({ path = "/env/obj", headers = { ["X-Request-Id"] = "env-1" } }))
      assert.equal(200, res.status)
      assert.equal('{"data":' .. OBJ .. ',"api_version":"1.0","beta":true,"n":2,"request_id":"env-1"}', res.body)
      assert.equal("env-1", res.headers["x-request-id"])
      assert.is_table(cjson.decode(res.body))
    end)

    it("wraps scalars and arrays too", function()
      local res = assert(gw.request({ path = "/env/scalar", headers = { ["X-Request-Id"] = "s" } }))
      assert.equal('{"data":"just a string","api_version":"1.0","beta":true,"n":2,"request_id":"s"}', res.body)
    end)

    it("puts null as request_id without the request-id plugin", function()
      local res = assert(gw.request({ path = "/noid/scalar" }))
      assert.equal('{"data":"just a string","request_id":null}', res.body)
    end)

    it("removes fields before wrapping", function()
      local res = assert(gw.request({ path = "/both/charset", headers = { ["X-Request-Id"] = "b" } }))
      assert.equal('{"data":{"ok":1},"api_version":"1.0","request_id":"b"}', res.body)
    end)

    it("does not wrap the gateway's own errors", function()
      local res = assert(gw.request({ path = "/dead" }))
      assert.same({ error = "Bad Gateway" }, res.json)
    end)

    it("wraps an upstream error status's JSON body", function()
      local res = assert(gw.request({ path = "/echo/x", headers = { ["X-Echo-Status"] = "404",
                                                                   ["X-Request-Id"] = "e404" } }))
      assert.equal(404, res.status)
      assert.equal("/echo/x", res.json.data.path)
      assert.equal("e404", res.json.request_id)
      assert.equal(1, res.json.v)
    end)

    it("sends no body for HEAD", function()
      local res = assert(gw.request({ method = "HEAD", path = "/env/obj" }))
      assert.equal(200, res.status)
      assert.equal("", res.body)
    end)
  end)

  describe("buffering", function()
    it("collects a body sent in many chunks up to max_buffer_bytes", function()
      local body = rep("b", 50000)
      local res = assert(gw.request({ method = "POST", path = "/echo/c", body = body,
        headers = { ["X-Echo-Chunked"] = "9", ["X-Request-Id"] = "chunks" } }))
      assert.equal(200, res.status)
      assert.equal("chunks", res.json.request_id)
      assert.equal(body, res.json.data.body)
      assert.is_nil(res.json.data.header_list)
      assert.equal(50000, res.json.data.body_length)
    end)

    it("streams a larger body untouched and warns once for the request", function()
      local body = rep("z", 150000)
      local res = assert(gw.request({ method = "POST", path = "/echo/big", body = body,
        headers = { ["X-Echo-Chunked"] = "13", ["X-Request-Id"] = "too-big" } }))
      assert.equal(200, res.status)
      assert.is_nil(res.json.data)                   -- not wrapped
      assert.equal(body, res.json.body)
      assert.is_table(res.json.header_list)          -- not stripped
      local n
      assert(helpers.wait_until(function()
        n = 0
        for _, l in ipairs(helpers.error_lines(gw.error_log(), "warn")) do
          if l:find('request_id="too-big"', 1, true) and l:find("larger than max_buffer_bytes", 1, true) then
            n = n + 1
          end
        end
        return n > 0
      end, 3))
      assert.equal(1, n)
    end)

    it("streams untouched from the first byte when the limit is tiny", function()
      local res = assert(gw.request({ path = "/small/obj" }))
      assert.equal(OBJ, res.body)
    end)

    it("keeps the connection usable after transformed and streamed bodies", function()
      local conn = assert(helpers.connect(gw.port))
      for _, path in ipairs({ "/rm/obj", "/small/obj", "/env/scalar", "/rm/obj" }) do
        local res = assert(conn:request({ path = path, headers = { ["X-Request-Id"] = "ka" } }))
        assert.equal(200, res.status)
      end
      conn:close()
    end)
  end)

  it("logs no errors besides the dead upstream's", function()
    for _, l in ipairs(helpers.error_lines(gw.error_log(), "error")) do
      assert.truthy(l:find('upstream "dead"', 1, true), l)
    end
  end)
end)

describe("response-transformer config", function()
  teardown(function()
    helpers.stop_all()
  end)

  it("reports schema errors with their YAML paths", function()
    local ok, out = helpers.test_config({
      listen = { "127.0.0.1:" .. helpers.free_port() },
      upstreams = { echo = { targets = { { url = "http://127.0.0.1:1" } } } },
      routes = {
        { name = "a", paths = { "/a" }, upstream = "echo", plugins = { ["response-transformer"] = {
          add = { headers = { ["Transfer-Encoding"] = "x", ["X-Ok"] = "a\nb" } },
          add_query = {},
          json_envelope = { data = 1, request_id = "x", nested = { 1 } },
          remove_json_fields = { "a..b", ".a", "" },
          max_buffer_bytes = 0,
        } } },
        { name = "b", paths = { "/b" }, upstream = "echo", plugins = { ["response-transformer"] = {
          remove_json_fields = {}, max_buffer_bytes = 1e9 } } },
      },
    })
    assert.is_false(ok)
    local errs = conf_errors(out)
    local P = "routes[0].plugins.response-transformer."
    for _, want in ipairs({
      P .. "add.headers.Transfer-Encoding: invalid key: Transfer-Encoding is managed by the gateway",
      P .. "add.headers.X-Ok: must not contain control characters",
      P .. "add_query: unknown key",
      P .. 'json_envelope.data: invalid key: "data" is set by the envelope',
      P .. 'json_envelope.request_id: invalid key: "request_id" is set by the envelope',
      P .. "json_envelope.nested: expected a string, a number or a boolean",
      P .. "remove_json_fields[0]: expected dot-separated non-empty keys, e.g. user.password",
      P .. "remove_json_fields[1]: expected dot-separated non-empty keys, e.g. user.password",
      P .. "remove_json_fields[2]: must not be empty",
      P .. "max_buffer_bytes: expected an integer between 1 and 67108864",
      "routes[1].plugins.response-transformer.remove_json_fields: must not be empty",
      "routes[1].plugins.response-transformer.max_buffer_bytes: expected an integer between 1 and 67108864",
    }) do
      assert.is_true(errs[want] == true, "missing: " .. want .. "\n" .. out)
    end
  end)
end)
