-- jwt-auth through the real gateway and tg-echo: real tokens signed by the
-- openssl CLI (spec/fixtures/auth/tokens.lua) for every algorithm, every
-- rejection the issue lists, identity headers and their spoofing, tokens
-- from a header, a cookie or the query, per-consumer keys (key_claim),
-- kid selection from a JWKS file, the verification cache, and config errors
-- through `tollgate -t`.
--
-- The spec-only plugin spec/fixtures/auth/plugins/consumer-echo.lua copies
-- ctx.consumer into X-Seen-Consumer / X-Seen-Plan, so the upstream's view
-- shows what rate-limiting would read.

local helpers = require "spec.helpers"
local tokens = require "spec.fixtures.auth.tokens"
local crypto = require "tollgate.crypto"
local cjson = require "cjson.safe"

local b64u = crypto.base64url_encode
local fmt = string.format

local FIXTURES = helpers.repo_root() .. "/spec/fixtures/auth/plugins"
local SECRET = "jwt-spec-secret-0123456789abcdef-0123456789abcdef"
local ALGS = { "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
               "ES256", "ES384", "ES512", "EdDSA" }
local KEY_FOR = { RS = "rsa", PS = "rsa", ES256 = "ec256", ES384 = "ec384", ES512 = "ec521", EdDSA = "ed" }

local function key_name(alg)
  return KEY_FOR[alg] or KEY_FOR[alg:sub(1, 2)]
end

-- The 401 contract: status, challenge, fixed JSON body.
local function assert_401(res, message)
  assert.is_table(res)
  assert.equal(401, res.status)
  assert.equal("Bearer", res.headers["www-authenticate"])
  assert.equal("application/json", res.headers["content-type"])
  assert.same({ error = message }, res.json)
end

describe("jwt-auth", function()
  local echo, gw, kit, dir, now

  local function bearer(token, path, headers)
    local h = headers or {}
    h.Authorization = "Bearer " .. token
    return gw.request({ path = path or "/hs", headers = h })
  end

  -- 200 and the upstream's view (tg-echo's JSON) of the request.
  local function pass(res)
    assert.is_table(res)
    if res.status ~= 200 then
      error("expected 200, got " .. tostring(res.status) .. ": " .. tostring(res.body)
            .. "\n" .. gw.error_log():sub(-2000), 2)
    end
    return res.json
  end

  local function hs(claims, header, secret, alg)
    return kit:sign(alg or "HS256", secret or SECRET, claims, header)
  end

  local function claims(extra)
    local c = { sub = "user-1", exp = now + 600, roles = { "admin", "dev" }, tenant_id = "t-9" }
    for k, v in pairs(extra or {}) do
      if v == false then c[k] = nil else c[k] = v end
    end
    return c
  end

  setup(function()
    now = os.time()
    dir = helpers.tmpdir("jwt")
    kit = tokens.new(dir)

    local jwks_path = dir .. "/jwks.json"
    local f = assert(io.open(jwks_path, "w"))
    f:write(cjson.encode({ keys = {
      kit:jwk("rsa", "rsa-1"), kit:jwk("ec256", "ec-1"), kit:jwk("ed", "ed-1"),
      kit:jwk("rsa2", "rsa-2", "PS256"),
    } }))
    f:close()

    -- One consumer per algorithm for the per-consumer routes.
    local consumers = {}
    for _, alg in ipairs(ALGS) do
      local c = { id = "c-" .. alg:lower(), plan = "plan-" .. alg:lower(), jwt = { key = "iss-" .. alg, algorithm = alg } }
      if key_name(alg) then
        -- Half from a file, half inline: both paths load.
        if alg:sub(1, 2) == "PS" or alg == "EdDSA" then
          c.jwt.public_key_file = kit.pub_path[key_name(alg)]
        else
          c.jwt.public_key = kit.pub[key_name(alg)]
        end
      else
        c.jwt.secret = SECRET .. alg
      end
      consumers[#consumers + 1] = c
    end
    consumers[#consumers + 1] = { id = "b64-user", jwt = { key = "b64-iss", secret_base64 = true,
                                  secret = b64u("\0\1\2binary\255\254") } }

    echo = helpers.start_echo()
    local function route(name, path, conf)
      return { name = name, paths = { path }, upstream = "echo", plugins = { ["jwt-auth"] = conf } }
    end
    gw = helpers.start_gateway({
      plugins_path = { FIXTURES },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      consumers = consumers,
      plugins = { ["consumer-echo"] = helpers.map() },
      routes = {
        route("hs", "/hs", { secret = SECRET }),
        route("rsa", "/rsa", { public_key = kit.pub.rsa }),
        route("consumers", "/consumers", helpers.map()),
        route("by-sub", "/by-sub", { key_claim = "sub" }),
        route("jwks", "/jwks", { jwks_file = jwks_path }),
        route("claims", "/claims", { secret = SECRET, issuer = "https://idp.example", audience = { "api", "web" },
                                     required_claims = { "tenant_id" }, leeway_s = 30 }),
        route("sources", "/sources", { secret = SECRET, header = "X-Token", cookie = "jwt", query_param = "jwt" }),
        route("keep", "/keep", { secret = SECRET, keep_token = true }),
        route("map", "/map", { secret = SECRET, claims_to_headers = { sub = "X-Subject", email = "X-Email" },
                               plan_claim = "tier" }),
        route("hs512", "/hs512", { secret = SECRET, algorithms = { "HS512" } }),
        route("b64", "/b64", { secret = b64u("\0\1\2binary\255\254"), secret_base64 = true }),
        route("nocache", "/nocache", { secret = SECRET, cache_size = 0 }),
      },
    })
  end)

  teardown(function()
    helpers.stop_all()
  end)

  describe("tokens", function()
    it("no token: 401 Missing token, nothing reaches the upstream", function()
      assert(echo.reset_stats())
      assert_401(gw.request({ path = "/hs" }), "Missing token")
      assert_401(gw.request({ path = "/hs", headers = { Authorization = "Basic dXNlcjpwYXNz" } }), "Missing token")
      assert_401(gw.request({ path = "/hs", headers = { Authorization = "Bearer" } }), "Missing token")
      assert.equal(0, echo.stats().requests)
    end)

    it("a valid token passes; identity headers come from the claims, the token does not go upstream", function()
      local seen = pass(bearer(hs(claims())))
      assert.equal("user-1", seen.headers["x-user-id"])
      assert.equal("admin,dev", seen.headers["x-user-roles"])
      assert.equal("t-9", seen.headers["x-tenant-id"])
      assert.is_nil(seen.headers.authorization)
      -- No consumer configured for IdP-style keys: ctx.consumer = { id = sub }.
      assert.equal("user-1", seen.headers["x-seen-consumer"])
      assert.equal("-", seen.headers["x-seen-plan"])
    end)

    it("the Bearer scheme is case-insensitive", function()
      local t = hs(claims())
      pass(gw.request({ path = "/hs", headers = { Authorization = "bearer " .. t } }))
      pass(gw.request({ path = "/hs", headers = { Authorization = "BEARER   " .. t } }))
    end)

    it("client-sent identity headers are always removed first, also the underscore spellings", function()
      local seen = pass(bearer(hs(claims({ roles = false, tenant_id = false })), "/hs", {
        ["X-User-Id"] = "admin", ["X-User-Roles"] = "superuser", ["X-Tenant-Id"] = "other-tenant",
        ["X_User_Id"] = "admin",
      }))
      assert.equal("user-1", seen.headers["x-user-id"])
      assert.is_nil(seen.headers["x-user-roles"])
      assert.is_nil(seen.headers["x-tenant-id"])
      assert.is_nil(seen.headers["x_user_id"])
      for _, h in ipairs(seen.header_list) do
        assert.is_not.equal("admin", h[2])
      end
    end)

    it("claims that cannot be a header value are left out, never injected", function()
      local seen = pass(bearer(hs(claims({ sub = "u\r\nX-Evil: 1", tenant_id = { nested = true },
                                           roles = { "a", { "b" } } }))))
      assert.is_nil(seen.headers["x-user-id"])
      assert.is_nil(seen.headers["x-evil"])
      assert.is_nil(seen.headers["x-tenant-id"])
      assert.is_nil(seen.headers["x-user-roles"])
      -- Nor does such a sub become ctx.consumer.id.
      assert.equal("-", seen.headers["x-seen-consumer"])
    end)

    it("a custom claims_to_headers mapping still strips the default headers", function()
      local seen = pass(bearer(hs(claims({ email = "a@b.c", tier = "gold" })), "/map",
                               { ["X-User-Id"] = "spoof", ["X-Subject"] = "spoof" }))
      assert.equal("user-1", seen.headers["x-subject"])
      assert.equal("a@b.c", seen.headers["x-email"])
      assert.is_nil(seen.headers["x-user-id"])
      assert.is_nil(seen.headers["x-user-roles"])
      assert.equal("gold", seen.headers["x-seen-plan"])
    end)

    it("numbers and booleans in claims become header text", function()
      local seen = pass(bearer(hs(claims({ sub = 12345, roles = { "r1", 7 }, tenant_id = true }))))
      assert.equal("12345", seen.headers["x-user-id"])
      assert.equal("r1,7", seen.headers["x-user-roles"])
      assert.equal("true", seen.headers["x-tenant-id"])
    end)

    it("keep_token forwards the verified Authorization header, once", function()
      local t = hs(claims())
      local seen = pass(gw.request({ path = "/keep", headers = {
        { "Authorization", "Bearer " .. t }, { "Authorization", "Bearer other" } } }))
      assert.equal("Bearer " .. t, seen.headers.authorization)
    end)

    it("reads a configured header (bare or Bearer), a cookie, a query parameter, and strips them", function()
      local t = hs(claims())
      local seen = pass(gw.request({ path = "/sources", headers = { ["X-Token"] = t } }))
      assert.is_nil(seen.headers["x-token"])
      pass(gw.request({ path = "/sources", headers = { ["X-Token"] = "Bearer " .. t } }))

      seen = pass(gw.request({ path = "/sources", headers = { Cookie = "a=1; jwt=" .. t .. "; b=2" } }))
      assert.equal("a=1; b=2", seen.headers.cookie)
      seen = pass(gw.request({ path = "/sources", headers = { Cookie = "jwt=" .. t } }))
      assert.is_nil(seen.headers.cookie)

      seen = pass(gw.request({ path = "/sources?x=1&jwt=" .. t .. "&y=%2F" }))
      assert.equal("x=1&y=%2F", seen.query)
      assert.equal("user-1", seen.headers["x-user-id"])
    end)

    it("the query parameter is off unless configured", function()
      assert_401(gw.request({ path = "/hs?jwt=" .. hs(claims()) }), "Missing token")
      assert_401(gw.request({ path = "/hs", headers = { Cookie = "jwt=" .. hs(claims()) } }), "Missing token")
    end)

    it("secret_base64 verifies with the decoded binary secret", function()
      pass(bearer(hs(claims(), nil, "\0\1\2binary\255\254"), "/b64"))
      assert_401(bearer(hs(claims(), nil, b64u("\0\1\2binary\255\254")), "/b64"), "Invalid or expired token")
    end)
  end)

  describe("every algorithm, per-consumer keys", function()
    for _, alg in ipairs(ALGS) do
      it(alg .. " through the consumer whose jwt.key is the token's iss", function()
        local key = key_name(alg) or (SECRET .. alg)
        local t = kit:sign(alg, key, claims({ iss = "iss-" .. alg }))
        local seen = pass(bearer(t, "/consumers"))
        assert.equal("c-" .. alg:lower(), seen.headers["x-seen-consumer"])
        assert.equal("plan-" .. alg:lower(), seen.headers["x-seen-plan"])
        assert.equal("user-1", seen.headers["x-user-id"])
        -- Another consumer's key (its iss) does not verify this signature.
        local other = alg == "HS256" and "iss-HS384" or "iss-HS256"
        local wrong = kit:sign(alg, key, claims({ iss = other }))
        assert_401(bearer(wrong, "/consumers"), "Invalid or expired token")
      end)
    end

    it("a consumer's key verifies only the consumer's algorithm", function()
      -- c-hs256's secret, but the token says HS512.
      local t = kit:sign("HS512", SECRET .. "HS256", claims({ iss = "iss-HS256" }))
      assert_401(bearer(t, "/consumers"), "Invalid or expired token")
      -- c-rs256's key, token PS256 (same RSA key, other algorithm).
      t = kit:sign("PS256", "rsa", claims({ iss = "iss-RS256" }))
      assert_401(bearer(t, "/consumers"), "Invalid or expired token")
    end)

    it("unknown or missing key claim: 401", function()
      assert_401(bearer(hs(claims({ iss = "nobody" })), "/consumers"), "Invalid or expired token")
      assert_401(bearer(hs(claims()), "/consumers"), "Invalid or expired token")
    end)

    it("key_claim selects the claim that names the consumer", function()
      local t = kit:sign("HS256", SECRET .. "HS256", claims({ sub = "iss-HS256" }))
      assert.equal("c-hs256", pass(bearer(t, "/by-sub")).headers["x-seen-consumer"])
    end)

    it("secret_base64 consumer secrets", function()
      local t = kit:sign("HS256", "\0\1\2binary\255\254", claims({ iss = "b64-iss" }))
      assert.equal("b64-user", pass(bearer(t, "/consumers")).headers["x-seen-consumer"])
    end)
  end)

  describe("JWKS", function()
    it("selects the key by kid", function()
      pass(bearer(kit:sign("RS256", "rsa", claims(), { kid = "rsa-1" }), "/jwks"))
      pass(bearer(kit:sign("ES256", "ec256", claims(), { kid = "ec-1" }), "/jwks"))
      pass(bearer(kit:sign("EdDSA", "ed", claims(), { kid = "ed-1" }), "/jwks"))
      pass(bearer(kit:sign("PS256", "rsa2", claims(), { kid = "rsa-2" }), "/jwks"))
    end)

    it("a token signed by one key but naming another kid fails", function()
      assert_401(bearer(kit:sign("RS256", "rsa2", claims(), { kid = "rsa-1" }), "/jwks"), "Invalid or expired token")
      assert_401(bearer(kit:sign("RS256", "rsa", claims(), { kid = "ec-1" }), "/jwks"), "Invalid or expired token")
    end)

    it("a JWK's alg restricts its key", function()
      -- rsa-2 is published with alg PS256.
      assert_401(bearer(kit:sign("RS256", "rsa2", claims(), { kid = "rsa-2" }), "/jwks"), "Invalid or expired token")
    end)

    it("missing or unknown kid: 401", function()
      assert_401(bearer(kit:sign("RS256", "rsa", claims()), "/jwks"), "Invalid or expired token")
      assert_401(bearer(kit:sign("RS256", "rsa", claims(), { kid = "nope" }), "/jwks"), "Invalid or expired token")
    end)
  end)

  describe("rejections", function()
    local INVALID = "Invalid or expired token"

    it("alg none", function()
      local t = b64u('{"alg":"none","typ":"JWT"}') .. "." .. b64u(cjson.encode(claims())) .. "."
      assert_401(bearer(t), INVALID)
      assert_401(bearer(t, "/rsa"), INVALID)
      assert_401(bearer(t .. b64u("sig")), INVALID)
    end)

    it("HS/RS confusion: HS256 signed with the RSA public key PEM as the secret", function()
      assert_401(bearer(kit:sign("HS256", kit.pub.rsa, claims()), "/rsa"), INVALID)
      -- The route's real RS256 tokens pass.
      pass(bearer(kit:sign("RS256", "rsa", claims()), "/rsa"))
    end)

    it("an algorithm not in the allow-list", function()
      assert_401(bearer(hs(claims()), "/hs512"), INVALID)
      pass(bearer(hs(claims(), nil, nil, "HS512"), "/hs512"))
    end)

    it("an all-zero ECDSA signature", function()
      local h = b64u('{"alg":"ES256","kid":"ec-1"}')
      local t = h .. "." .. b64u(cjson.encode(claims())) .. "." .. b64u(string.rep("\0", 64))
      assert_401(bearer(t, "/jwks"), INVALID)
    end)

    it("expired, not yet valid, and the leeway", function()
      assert_401(bearer(hs(claims({ exp = now - 5 }))), INVALID)
      assert_401(bearer(hs(claims({ nbf = now + 300 }))), INVALID)
      -- /claims has leeway_s = 30.
      local ok = claims({ iss = "https://idp.example", aud = "api" })
      ok.exp = os.time() - 10
      pass(bearer(hs(ok), "/claims"))
      ok.exp, ok.nbf = now + 600, os.time() + 10
      pass(bearer(hs(ok), "/claims"))
      ok.exp, ok.nbf = os.time() - 60, nil
      assert_401(bearer(hs(ok), "/claims"), INVALID)
    end)

    it("wrong issuer or audience, missing required claim", function()
      local base = claims({ iss = "https://idp.example", aud = { "other", "web" } })
      pass(bearer(hs(base), "/claims"))
      local bad = claims({ iss = "https://evil.example", aud = "api" })
      assert_401(bearer(hs(bad), "/claims"), INVALID)
      bad = claims({ iss = "https://idp.example", aud = "mobile" })
      assert_401(bearer(hs(bad), "/claims"), INVALID)
      bad = claims({ iss = "https://idp.example", aud = "api", tenant_id = false })
      assert_401(bearer(hs(bad), "/claims"), INVALID)
    end)

    it("non-numeric dates", function()
      assert_401(bearer(hs(claims({ exp = tostring(now + 600) }))), INVALID)
      assert_401(bearer(hs(claims({ nbf = "0" }))), INVALID)
    end)

    it("a tampered payload", function()
      local t = hs(claims())
      local h, _, s = t:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      assert_401(bearer(h .. "." .. b64u(cjson.encode(claims({ sub = "admin" }))) .. "." .. s), INVALID)
      -- One flipped character in the signature.
      local flipped = s:sub(1, -3) .. (s:sub(-2, -2) == "A" and "B" or "A") .. s:sub(-1)
      assert_401(bearer(h .. "." .. t:match("%.([^.]+)%.") .. "." .. flipped), INVALID)
    end)

    it("malformed base64url, bad JSON, wrong segment count", function()
      local t = hs(claims())
      local h, p, s = t:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      assert_401(bearer(h .. "." .. p .. "=." .. s), INVALID)
      assert_401(bearer(h .. "." .. p:gsub("_", "/"):gsub("-", "+") .. "." .. s .. "+"), INVALID)
      assert_401(bearer(b64u('{"alg":"HS256"') .. "." .. p .. "." .. s), INVALID)
      assert_401(bearer(h .. "." .. p), INVALID)
      assert_401(bearer(h .. "." .. p .. "." .. s .. ".x.y"), INVALID)
    end)

    it("a token over 8 KB", function()
      local big = hs(claims({ pad = string.rep("x", 6200) }))
      assert.is_true(#big > 8192)
      assert_401(bearer(big), INVALID)
      -- Just under the limit passes.
      local small = hs(claims({ pad = string.rep("x", 5700) }))
      assert.is_true(#small <= 8192)
      pass(bearer(small))
    end)

    it("the reason goes to the error log at info level, never the token", function()
      local t = hs(claims({ exp = now - 5, sub = "log-check" }))
      assert_401(bearer(t), INVALID)
      local found = helpers.wait_until(function()
        return gw.error_log():find("[jwt-auth] rejected: token expired", 1, true)
      end, 3)
      assert.truthy(found)
      local log = gw.error_log()
      assert.is_nil(log:find(t, 1, true))
      assert.is_nil(log:find(t:match("^[^.]+%.([^.]+)"), 1, true))
      assert.is_nil(log:find(SECRET, 1, true))
      for _, line in ipairs(gw.access_log()) do
        assert.is_nil(line:find(t:sub(-20), 1, true))
      end
      assert.same({}, helpers.error_lines(log, "error"))
    end)
  end)

  describe("verification cache", function()
    it("a cached token is still checked for exp on every request", function()
      -- exp two seconds ahead; the first request verifies and caches it.
      local t = hs(claims({ exp = os.time() + 2, sub = "short-lived" }))
      assert.equal("short-lived", pass(bearer(t)).headers["x-user-id"])
      assert.equal("short-lived", pass(bearer(t)).headers["x-user-id"])
      assert(helpers.wait_until(function()
        local res = bearer(t)
        return res and res.status == 401
      end, 5, 0.2))
      assert_401(bearer(t), "Invalid or expired token")
    end)

    it("cached and uncached routes give the same answers", function()
      local t = hs(claims({ sub = "same" }))
      for _ = 1, 3 do
        assert.equal("same", pass(bearer(t, "/hs")).headers["x-user-id"])
        assert.equal("same", pass(bearer(t, "/nocache")).headers["x-user-id"])
      end
      local tampered = t:sub(1, -2) .. (t:sub(-1) == "A" and "B" or "A")
      assert_401(bearer(tampered, "/hs"), "Invalid or expired token")
      assert_401(bearer(tampered, "/nocache"), "Invalid or expired token")
    end)
  end)

  describe("jwks_url", function()
    -- The identity provider is a second gateway answering its key set from
    -- a static route; rotating keys is reloading it, an outage stopping it.
    local idp, gw2

    local function idp_conf(jwks)
      return {
        admin = false,
        routes = { { name = "jwks", paths = { "=/jwks.json" },
                     response = { status = 200, json = jwks } } },
      }
    end

    -- Requests the IdP has answered for its key set so far.
    local function fetches()
      local n = 0
      for _, line in ipairs(idp.access_log()) do
        if line:find('"/jwks.json"', 1, true) then n = n + 1 end
      end
      return n
    end

    local function call(token)
      return gw2.request({ path = "/idp", headers = { Authorization = "Bearer " .. token } })
    end

    setup(function()
      idp = helpers.start_gateway(idp_conf({ keys = { kit:jwk("rsa", "rsa-1") } }))
      gw2 = helpers.start_gateway({
        upstreams = { echo = { targets = { { url = echo.url() } } } },
        routes = { { name = "idp", paths = { "/idp" }, upstream = "echo", plugins = { ["jwt-auth"] = {
          jwks_url = fmt("http://127.0.0.1:%d/jwks.json", idp.port),
          jwks_refresh_s = 600, jwks_min_refetch_s = 1, jwks_timeout_ms = 500 } } } },
      })
    end)

    it("fetches the key set at start and selects keys by kid", function()
      local seen = pass(call(kit:sign("RS256", "rsa", claims(), { kid = "rsa-1" })))
      assert.equal("user-1", seen.headers["x-user-id"])
      assert.equal("user-1", (seen.headers["x-user-id"]))
      assert.equal(1, fetches())
    end)

    it("an unknown kid refetches at most once per jwks_min_refetch_s", function()
      helpers.sleep(1.1)
      local before = fetches()
      assert_401(call(kit:sign("ES256", "ec256", claims(), { kid = "ec-1" })), "Invalid or expired token")
      assert.equal(before + 1, fetches())
      for i = 1, 5 do
        assert_401(call(kit:sign("ES256", "ec256", claims(), { kid = "made-up-" .. i })), "Invalid or expired token")
      end
      assert.equal(before + 1, fetches())
    end)

    it("picks up a rotated key on the first token that names it", function()
      assert(idp.reload(idp_conf({ keys = { kit:jwk("rsa", "rsa-1"), kit:jwk("ec256", "ec-1") } })))
      helpers.sleep(1.1)
      local seen = pass(call(kit:sign("ES256", "ec256", claims({ sub = "rotated" }), { kid = "ec-1" })))
      assert.equal("rotated", seen.headers["x-user-id"])
    end)

    it("keeps the last good keys while the IdP is down", function()
      idp.stop()
      helpers.sleep(1.1)
      -- A new token (not in the verification cache), a known kid.
      pass(call(kit:sign("RS256", "rsa", claims({ sub = "during-outage" }), { kid = "rsa-1" })))
      assert_401(call(kit:sign("ES256", "ec256", claims(), { kid = "ec-2" })), "Invalid or expired token")
      assert(helpers.wait_until(function()
        return gw2.error_log():find("%[warn%].-%[jwt%-auth%] jwks_url http://127%.0%.0%.1:%d+/jwks%.json: fetch failed")
      end, 3))
      pass(call(kit:sign("ES256", "ec256", claims({ sub = "during-outage-2" }), { kid = "ec-1" })))
    end)
  end)

  describe("config errors (tollgate -t)", function()
    local function check(plugin_conf, extra)
      local conf = {
        listen = { "127.0.0.1:" .. helpers.free_port() },
        upstreams = { echo = { targets = { { url = "http://127.0.0.1:1" } } } },
        routes = { { name = "r", paths = { "/" }, upstream = "echo", plugins = { ["jwt-auth"] = plugin_conf } } },
      }
      for k, v in pairs(extra or {}) do conf[k] = v end
      return helpers.test_config(conf)
    end

    it("reports plugin config mistakes with their YAML paths", function()
      local ok, out = check({ secret = SECRET, algorithms = { "RS256", "none" } })
      assert.is_false(ok)
      assert.matches("routes%[0%]%.plugins%.jwt%-auth%.algorithms%[1%]: expected one of: EdDSA", out)

      ok, out = check({ secret = SECRET, algorithms = { "RS256" } })
      assert.is_false(ok)
      assert.matches("routes%[0%]%.plugins%.jwt%-auth%.secret: cannot verify any of the allowed algorithms", out)

      ok, out = check({ secret = SECRET, jwks_file = "/nonexistent.json" })
      assert.is_false(ok)
      assert.matches("routes%[0%]%.plugins%.jwt%-auth%.jwks_file: cannot open", out)

      ok, out = check({ public_key = "not a pem" })
      assert.is_false(ok)
      assert.matches("routes%[0%]%.plugins%.jwt%-auth%.public_key: ", out)

      ok, out = check({ jwks_url = "ftp://idp/keys", audience = { 1 }, leeway_s = -1 })
      assert.is_false(ok)
      assert.matches("jwt%-auth%.jwks_url: expected a string matching", out)
      assert.matches("jwt%-auth%.audience: expected a string or a list of strings", out)
      assert.matches("jwt%-auth%.leeway_s: expected a non%-negative number", out)

      ok, out = check({ secret = SECRET, public_key = kit.pub.rsa })
      assert.is_false(ok)
      assert.matches("at most one of these fields may be set", out)

      ok, out = check({ secret = SECRET, claims_to_headers = { sub = "Bad Header" } })
      assert.is_false(ok)
      assert.matches("claims_to_headers%.sub: expected a string matching", out)
    end)

    it("reports consumer mistakes with their YAML paths", function()
      local ok, out = check(helpers.map(), { consumers = {
        { id = "a", jwt = { algorithm = "ES384", public_key = kit.pub.ec256 } },
        { id = "a", jwt = { algorithm = "HS256", public_key = kit.pub.rsa } },
      } })
      assert.is_false(ok)
      assert.matches("consumers%[0%]%.jwt%.public_key: a EC P%-256 key cannot verify ES384", out)
      assert.matches("consumers%[1%]%.jwt%.algorithm: HS256 needs a secret, not a public key", out)

      ok, out = check(helpers.map(), { consumers = {
        { id = "a", plan = "pro", jwt = { algorithm = "ES256", public_key = kit.pub.ec256 } },
      } })
      assert.is_true(ok, out)
    end)
  end)
end)
