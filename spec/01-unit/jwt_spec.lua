-- Unit specs for the JWT layer (lua/tollgate/auth/jwt.lua) and the pure-Lua
-- pieces under the auth plugins: key material (auth/keys.lua), the LRU
-- (auth/lru.lua), request-editing helpers (auth/util.lua) and the consumers
-- section (tollgate/consumers.lua). No gateway: plain LuaJIT.
--
-- Known answers: the RFC 7515 appendix A examples (A.1 HS256, A.2 RS256,
-- A.3 ES256) verify as whole tokens. Fresh tokens for every algorithm come
-- from the openssl CLI through spec/fixtures/auth/tokens.lua.

local jwt = require "tollgate.auth.jwt"
local keys = require "tollgate.auth.keys"
local lru = require "tollgate.auth.lru"
local util = require "tollgate.auth.util"
local crypto = require "tollgate.crypto"
local tokens = require "spec.fixtures.auth.tokens"
local cjson = require "cjson"

local b64u = crypto.base64url_encode

-- RFC 7515 appendix A: the examples' tokens, whole, and their keys.
local RFC = {
  payload = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxl"
         .. "LmNvbS9pc19yb290Ijp0cnVlfQ",
  exp = 1300819380,
  a1 = {
    token_head = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9",
    sig = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    jwk = { kty = "oct", k = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow" },
  },
  a2 = {
    token_head = "eyJhbGciOiJSUzI1NiJ9",
    sig = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw",
    jwk = { kty = "RSA", e = "AQAB",
            n = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ" },
  },
  a3 = {
    token_head = "eyJhbGciOiJFUzI1NiJ9",
    sig = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
    jwk = { kty = "EC", crv = "P-256",
            x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" },
  },
}

local function rfc_token(a)
  return a.token_head .. "." .. RFC.payload .. "." .. a.sig
end

-- Which fixture key signs which algorithm.
local KEY_FOR = { RS = "rsa", PS = "rsa", ES256 = "ec256", ES384 = "ec384", ES512 = "ec521", EdDSA = "ed" }
local SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

local function key_name(alg)
  return KEY_FOR[alg] or KEY_FOR[alg:sub(1, 2)]
end

-- A token with any header/payload text and signature bytes.
local function forge(header, payload, sig)
  return b64u(header) .. "." .. b64u(payload) .. "." .. b64u(sig or "")
end

describe("jwt", function()
  local kit, dir
  local now = os.time()

  setup(function()
    dir = "spec/tmp/jwt-unit-" .. crypto.to_hex(crypto.random_bytes(6))
    os.execute("mkdir -p " .. dir)
    kit = tokens.new(dir)
  end)

  teardown(function()
    if dir and not os.getenv("TG_KEEP_TMP") then
      os.execute("rm -rf " .. dir)
    end
  end)

  local function key_for(alg)
    local name = key_name(alg)
    if name then
      return assert(jwt.public_key(kit.pub[name]))
    end
    return assert(jwt.secret_key(SECRET))
  end

  local function sign(alg, claims, header)
    return kit:sign(alg, key_name(alg) or SECRET, claims or { sub = "u1", exp = now + 60 }, header)
  end

  describe("RFC 7515 appendix A known answers", function()
    local rules = jwt.compile_claim_rules({})

    it("A.1 HS256 verifies with the example's symmetric key", function()
      local tok = assert(jwt.decode(rfc_token(RFC.a1)))
      assert.equal("HS256", tok.alg)
      assert.equal("joe", tok.claims.iss)
      local key = assert(jwt.secret_key(crypto.base64url_decode(RFC.a1.jwk.k)))
      assert.is_true(jwt.verify(tok, key))
      assert.is_true((jwt.check_claims(tok.claims, rules, RFC.exp - 1)))
      assert.same({ nil, "token expired" }, { jwt.check_claims(tok.claims, rules, RFC.exp) })
    end)

    it("A.2 RS256 verifies with the example's RSA JWK", function()
      local tok = assert(jwt.decode(rfc_token(RFC.a2)))
      local key = assert(jwt.jwk_key(RFC.a2.jwk))
      assert.is_true(jwt.verify(tok, key))
      -- The same signature over another payload does not.
      local other = assert(jwt.decode(RFC.a2.token_head .. "." .. b64u('{"iss":"joe"}') .. "." .. RFC.a2.sig))
      assert.is_false((jwt.verify(other, key)))
    end)

    it("A.3 ES256 verifies with the example's EC JWK", function()
      local tok = assert(jwt.decode(rfc_token(RFC.a3)))
      local key = assert(jwt.jwk_key(RFC.a3.jwk))
      assert.is_true(jwt.verify(tok, key))
      assert.is_true((jwt.check_claims(tok.claims, rules, RFC.exp - 100)))
    end)

    it("the A.1 symmetric key is refused as a member of a key set", function()
      local k, err = jwt.jwk_key(RFC.a1.jwk)
      assert.is_nil(k)
      assert.matches("kty oct", err)
    end)
  end)

  describe("every algorithm", function()
    for _, alg in ipairs(jwt.ALG_NAMES) do
      it(alg .. " verifies, and fails for a tampered payload and a wrong key", function()
        local token = sign(alg)
        local tok = assert(jwt.decode(token))
        local key = key_for(alg)
        assert.is_true(jwt.verify(tok, key))

        -- Tampered payload, original signature.
        local h, _, s = token:match("^([^.]+)%.([^.]+)%.([^.]*)$")
        local tampered = h .. "." .. b64u(cjson.encode({ sub = "admin", exp = now + 60 })) .. "." .. s
        local ok, err = jwt.verify(assert(jwt.decode(tampered)), key)
        assert.is_false(ok)
        assert.equal("bad signature", err)

        -- Signed by another key of the same kind.
        local other
        if alg:sub(1, 2) == "HS" then
          other = assert(jwt.secret_key(SECRET .. "x"))
        elseif alg:sub(1, 2) == "RS" or alg:sub(1, 2) == "PS" then
          other = assert(jwt.public_key(kit.pub.rsa2))
        else
          other = nil
        end
        if other then
          assert.is_false((jwt.verify(tok, other)))
        end
      end)
    end

    it("ES256/ES384/ES512 and EdDSA keys from JWKs verify the same tokens", function()
      for alg, name in pairs({ ES256 = "ec256", ES384 = "ec384", ES512 = "ec521", EdDSA = "ed", RS256 = "rsa", PS512 = "rsa" }) do
        local key = assert(jwt.jwk_key(kit:jwk(name, "k")))
        assert.is_true(jwt.verify(assert(jwt.decode(sign(alg))), key), alg)
      end
    end)
  end)

  describe("key type bound to the algorithm family", function()
    it("HS/RS confusion: an RS256 public key PEM used as an HMAC secret is refused", function()
      local pem = kit.pub.rsa
      -- The attacker signs HS256 with the public PEM text as the secret.
      local forged = kit:sign("HS256", pem, { sub = "admin", exp = now + 60 })
      local tok = assert(jwt.decode(forged))
      local rsa = assert(jwt.public_key(pem))
      local ok, err = jwt.verify(tok, rsa)
      assert.is_nil(ok)
      assert.equal("key cannot verify HS256", err)
      -- Same through a JWK.
      assert.is_nil((jwt.verify(tok, assert(jwt.jwk_key(kit:jwk("rsa", "k"))))))
    end)

    it("a secret never verifies RS/PS/ES/EdDSA", function()
      local secret = assert(jwt.secret_key(SECRET))
      for _, alg in ipairs({ "RS256", "PS256", "ES256", "EdDSA" }) do
        local ok, err = jwt.verify(assert(jwt.decode(sign(alg))), secret)
        assert.is_nil(ok)
        assert.equal("key cannot verify " .. alg, err)
      end
    end)

    it("an EC key verifies only the ES alg of its curve; Ed25519 only EdDSA; RSA not ES", function()
      local p256 = assert(jwt.public_key(kit.pub.ec256))
      assert.is_true(jwt.key_fits(p256, "ES256"))
      assert.is_false(jwt.key_fits(p256, "ES384"))
      assert.is_false(jwt.key_fits(p256, "EdDSA"))
      local ed = assert(jwt.public_key(kit.pub.ed))
      assert.is_true(jwt.key_fits(ed, "EdDSA"))
      assert.is_false(jwt.key_fits(ed, "ES256"))
      local rsa = assert(jwt.public_key(kit.pub.rsa))
      assert.is_true(jwt.key_fits(rsa, "PS384"))
      assert.is_false(jwt.key_fits(rsa, "ES256"))
      assert.is_false(jwt.key_fits(rsa, "none"))
    end)

    it("a key restricted to one algorithm refuses the others of its family", function()
      local rs = assert(jwt.public_key(kit.pub.rsa, "RS256"))
      assert.is_true(jwt.verify(assert(jwt.decode(sign("RS256"))), rs))
      assert.is_nil((jwt.verify(assert(jwt.decode(sign("PS256"))), rs)))
      local jwk = kit:jwk("rsa", "k", "PS256")
      local k = assert(jwt.jwk_key(jwk))
      assert.is_nil((jwt.verify(assert(jwt.decode(sign("RS256"))), k)))
      assert.is_true(jwt.verify(assert(jwt.decode(sign("PS256"))), k))
    end)

    it("refuses restrictions the key cannot meet", function()
      local k, err = jwt.public_key(kit.pub.ec256, "ES384")
      assert.is_nil(k)
      assert.matches("EC P%-256 key cannot verify ES384", err)
      k, err = jwt.secret_key("s", "RS256")
      assert.is_nil(k)
      assert.matches("HS256", err)
      k, err = jwt.jwk_key(kit:jwk("ed", "k", "ES256"))
      assert.is_nil(k)
      assert.matches("ED25519 key cannot verify ES256", err)
    end)

    it("alg none never verifies, whatever the key", function()
      local token = forge('{"alg":"none","typ":"JWT"}', '{"sub":"admin"}', "")
      local tok = assert(jwt.decode(token))
      assert.equal("none", tok.alg)
      for _, key in ipairs({ assert(jwt.secret_key(SECRET)), assert(jwt.public_key(kit.pub.rsa)) }) do
        local ok, err = jwt.verify(tok, key)
        assert.is_nil(ok)
        assert.equal("unsupported alg none", err)
      end
      -- "None", "NONE": not algorithms either.
      assert.is_nil((jwt.verify(assert(jwt.decode(forge('{"alg":"None"}', "{}", ""))), assert(jwt.secret_key("x")))))
    end)

    it("an all-zero ECDSA signature is invalid (r = s = 0)", function()
      for alg, size in pairs({ ES256 = 64, ES384 = 96, ES512 = 132 }) do
        local h = b64u(cjson.encode({ alg = alg }))
        local p = b64u('{"sub":"admin"}')
        local tok = assert(jwt.decode(h .. "." .. p .. "." .. b64u(string.rep("\0", size))))
        assert.is_false((jwt.verify(tok, key_for(alg))), alg)
      end
    end)

    it("an ECDSA signature in DER form (not JOSE r||s) is invalid", function()
      local token = sign("ES256")
      local h, p = token:match("^([^.]+)%.([^.]+)%.")
      local der = "\48\68\2\32" .. string.rep("\1", 32) .. "\2\32" .. string.rep("\1", 32)
      assert.is_false((jwt.verify(assert(jwt.decode(h .. "." .. p .. "." .. b64u(der))), key_for("ES256"))))
    end)

    it("HMAC needs the full-length tag", function()
      local token = sign("HS256")
      local h, p, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      local short = b64u(crypto.base64url_decode(s):sub(1, 16))
      assert.is_false((jwt.verify(assert(jwt.decode(h .. "." .. p .. "." .. short)), key_for("HS256"))))
    end)
  end)

  describe("decode rejects", function()
    local good_h, good_p = b64u('{"alg":"HS256"}'), b64u('{"sub":"a"}')
    local cases = {
      { "an empty token", "", "empty token" },
      { "a token over 8 KB", good_h .. "." .. b64u('{"x":"' .. string.rep("a", 6200) .. '"}') .. ".",
        "token too large" },
      { "two segments", good_h .. "." .. good_p, "not a JWS" },
      { "four segments", good_h .. "." .. good_p .. ".x.y", "not a JWS" },
      { "five segments (JWE)", "a.b.c.d.e", "not a JWS" },
      { "padding in base64url", good_h .. "=." .. good_p .. ".", "header: malformed base64url" },
      { "standard-alphabet characters", good_h .. "." .. good_p:sub(1, -2) .. "+.", "payload: malformed base64url" },
      { "non-zero trailing bits", good_h .. "." .. "eyJzdWIiOiJhIn1" .. ".", "payload: malformed base64url" },
      { "whitespace inside", good_h .. " ." .. good_p .. ".", "header: malformed base64url" },
      { "bad signature base64url", good_h .. "." .. good_p .. ".a*b", "signature: malformed base64url" },
      { "a header that is not JSON", b64u("alg:HS256") .. "." .. good_p .. ".", "header: not a JSON object" },
      { "a header that is a JSON array", b64u('["HS256"]') .. "." .. good_p .. ".", "header: not a JSON object" },
      { "truncated header JSON", b64u('{"alg":"HS256"') .. "." .. good_p .. ".", "header: bad JSON" },
      { "a payload that is a number", good_h .. "." .. b64u("12") .. ".", "payload: not a JSON object" },
      { "a payload with NaN", good_h .. "." .. b64u('{"exp":NaN}') .. ".", "payload: bad JSON" },
      { "deeply nested JSON", good_h .. "." .. b64u('{"a":' .. string.rep("[", 40) .. string.rep("]", 40) .. "}") .. ".",
        "payload: bad JSON" },
      { "no alg", b64u('{"typ":"JWT"}') .. "." .. good_p .. ".", "alg missing" },
      { "a numeric alg", b64u('{"alg":256}') .. "." .. good_p .. ".", "alg missing" },
      { "a crit header", b64u('{"alg":"HS256","crit":["exp"]}') .. "." .. good_p .. ".", "crit not supported" },
      { "a non-string kid", b64u('{"alg":"HS256","kid":1}') .. "." .. good_p .. ".", "kid is not a string" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local tok, err = jwt.decode(c[2])
        assert.is_nil(tok)
        assert.matches(c[3], err, 1, true)
      end)
    end

    it("accepts exactly 8192 bytes and refuses 8193", function()
      -- The signature segment pads the token to the exact length (its
      -- bytes do not matter to decode; a length of 1 mod 4 is no base64url).
      local head = good_h .. "." .. b64u('{"x":"' .. string.rep("a", 6000) .. '"}') .. "."
      local exact = head .. string.rep("A", 8192 - #head)
      assert.equal(8192, #exact)
      assert.is_true((8192 - #head) % 4 ~= 1)
      assert.is_table(jwt.decode(exact))
      local over = head .. string.rep("A", 8196 - #head)
      local tok, err = jwt.decode(over)
      assert.is_nil(tok)
      assert.equal("token too large (8196 bytes)", err)
      tok, err = jwt.decode(exact .. "A")
      assert.is_nil(tok)
      assert.equal("token too large (8193 bytes)", err)
    end)
  end)

  describe("claims", function()
    local function check(claims, opts, t)
      return jwt.check_claims(claims, jwt.compile_claim_rules(opts or {}), t or now)
    end

    it("exp: valid strictly before exp, expired at exp, leeway extends it", function()
      assert.is_true((check({ exp = now + 1 })))
      assert.same({ nil, "token expired" }, { check({ exp = now }) })
      assert.same({ nil, "token expired" }, { check({ exp = now - 10 }, { leeway_s = 10 }) })
      assert.is_true((check({ exp = now - 9 }, { leeway_s = 10 })))
    end)

    it("nbf: not yet valid before nbf, leeway applies", function()
      assert.same({ nil, "token not yet valid" }, { check({ nbf = now + 5 }) })
      assert.is_true((check({ nbf = now })))
      assert.is_true((check({ nbf = now + 5 }, { leeway_s = 5 })))
      assert.same({ nil, "token not yet valid" }, { check({ nbf = now + 6 }, { leeway_s = 5 }) })
    end)

    it("returns exp and nbf for re-checking cached tokens", function()
      local ok, exp, nbf = check({ exp = now + 60, nbf = now - 1 })
      assert.is_true(ok)
      assert.equal(now + 60, exp)
      assert.equal(now - 1, nbf)
      assert.is_true(jwt.check_times(exp, nbf, now + 59, 0))
      assert.is_nil((jwt.check_times(exp, nbf, now + 60, 0)))
      assert.is_true(jwt.check_times(nil, nil, now, 0))
    end)

    it("non-numeric dates are rejected", function()
      assert.same({ nil, "exp is not a number" }, { check({ exp = tostring(now + 60) }) })
      assert.same({ nil, "nbf is not a number" }, { check({ nbf = true }) })
      assert.same({ nil, "iat is not a number" }, { check({ iat = "yesterday" }) })
      assert.same({ nil, "exp is not a number" }, { check({ exp = cjson.null }) })
      assert.same({ nil, "exp is not a number" }, { check({ exp = math.huge }) })
      assert.same({ nil, "exp is not a number" }, { check({ exp = { now + 60 } }) })
    end)

    it("issuer: string or list", function()
      assert.is_true((check({ iss = "a" }, { issuer = "a" })))
      assert.same({ nil, "issuer not accepted" }, { check({ iss = "b" }, { issuer = "a" }) })
      assert.same({ nil, "issuer not accepted" }, { check({}, { issuer = "a" }) })
      assert.same({ nil, "issuer not accepted" }, { check({ iss = { "a" } }, { issuer = "a" }) })
      assert.is_true((check({ iss = "b" }, { issuer = { "a", "b" } })))
    end)

    it("audience: string or list on both sides", function()
      assert.is_true((check({ aud = "api" }, { audience = "api" })))
      assert.is_true((check({ aud = { "x", "api" } }, { audience = "api" })))
      assert.is_true((check({ aud = "web" }, { audience = { "api", "web" } })))
      assert.same({ nil, "audience not accepted" }, { check({ aud = "web" }, { audience = "api" }) })
      assert.same({ nil, "audience not accepted" }, { check({ aud = { "x" } }, { audience = "api" }) })
      assert.same({ nil, "audience not accepted" }, { check({}, { audience = "api" }) })
      assert.same({ nil, "audience not accepted" }, { check({ aud = 5 }, { audience = "api" }) })
    end)

    it("required_claims must be present and not null", function()
      assert.is_true((check({ sub = "a", tenant_id = "t" }, { required_claims = { "sub", "tenant_id" } })))
      assert.same({ nil, "required claim tenant_id missing" },
                  { check({ sub = "a" }, { required_claims = { "sub", "tenant_id" } }) })
      assert.same({ nil, "required claim sub missing" },
                  { check({ sub = cjson.null }, { required_claims = { "sub" } }) })
    end)
  end)

  describe("JWK sets", function()
    it("indexes usable keys by kid and reports the rest", function()
      local set = cjson.encode({ keys = {
        kit:jwk("rsa", "r1"), kit:jwk("ec256", "e1"), kit:jwk("ed", "d1"),
        { kty = "oct", kid = "sym", k = "AAAA" },
        kit:jwk("ec384"),                                   -- no kid
        (function() local j = kit:jwk("rsa2", "enc1"); j.use = "enc"; return j end)(),
        kit:jwk("rsa", "dup"), kit:jwk("rsa2", "dup"),
      } })
      local keyset, skipped = assert(jwt.parse_jwks(set))
      assert.is_table(keyset.r1)
      assert.is_table(keyset.e1)
      assert.is_table(keyset.d1)
      assert.is_nil(keyset.sym)
      assert.is_nil(keyset.enc1)
      assert.is_nil(keyset.dup)
      table.sort(skipped)
      assert.same({ "dup: duplicate kid", "enc1: JWK use is not \"sig\"",
                    "keys[4]: no kid", "sym: symmetric JWK (kty oct) not accepted in a key set" }, skipped)
      assert.is_true(jwt.verify(assert(jwt.decode(sign("ES256", nil, { kid = "e1" }))), keyset.e1))
    end)

    it("refuses a document that is not a key set, or has no usable key", function()
      assert.is_nil(jwt.parse_jwks("nope"))
      assert.is_nil(jwt.parse_jwks('{"keys":{}}'))
      assert.is_nil(jwt.parse_jwks('{"keys":[{"kty":"oct","kid":"a","k":"AAAA"}]}'))
      assert.is_nil(jwt.parse_jwks('{"notkeys":[]}'))
    end)
  end)

  describe("key material (auth/keys.lua)", function()
    it("decodes base64 secrets in either alphabet, padded or not", function()
      local raw = "\0\1\2\250\251\252\253\254\255binary"
      for _, enc in ipairs({ crypto.base64url_encode(raw), crypto.base64_encode(raw) }) do
        local k = assert(keys.secret(enc, true))
        assert.equal(raw, k.secret)
      end
      assert.is_nil((keys.secret("not base64!", true)))
    end)

    it("parses a PEM once and returns the same key object after", function()
      local a = assert(keys.pem(kit.pub.rsa))
      local b = assert(keys.pem(kit.pub.rsa))
      assert.equal(a, b)
      local c = assert(keys.pem_file(kit.pub_path.rsa))
      assert.equal(a, c)
      assert.is_nil((keys.pem_file(dir .. "/missing.pem")))
      assert.is_nil((keys.pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")))
    end)
  end)
end)

describe("lru", function()
  it("evicts the least recently used entry when full", function()
    local c = lru.new(3)
    c:set("a", 1, nil, 0)
    c:set("b", 2, nil, 0)
    c:set("c", 3, nil, 0)
    assert.equal(1, c:get("a", 0))     -- a is now the most recent
    c:set("d", 4, nil, 0)              -- evicts b
    assert.is_nil(c:get("b", 0))
    assert.equal(1, c:get("a", 0))
    assert.equal(3, c:get("c", 0))
    assert.equal(4, c:get("d", 0))
    assert.equal(3, c:count())
  end)

  it("expires entries after their ttl", function()
    local c = lru.new(10)
    c:set("a", "x", 5, 100)
    assert.equal("x", c:get("a", 104.9))
    assert.is_nil(c:get("a", 105))
    assert.equal(0, c:count())
  end)

  it("overwrites, deletes and flushes", function()
    local c = lru.new(2)
    c:set("a", 1, nil, 0)
    c:set("a", 2, nil, 0)
    assert.equal(1, c:count())
    assert.equal(2, c:get("a", 0))
    c:delete("a")
    assert.is_nil(c:get("a", 0))
    c:set("b", 1, nil, 0)
    c:flush()
    assert.equal(0, c:count())
    assert.is_nil(c:get("b", 0))
  end)

  it("stays bounded under churn", function()
    local c = lru.new(100)
    for i = 1, 10000 do
      c:set("k" .. i, i, 60, 0)
    end
    assert.equal(100, c:count())
    assert.equal(10000, c:get("k10000", 0))
    assert.is_nil(c:get("k9900", 0))
    assert.equal(9901, c:get("k9901", 0))
  end)

  it("refuses a bad size", function()
    assert.has_error(function() lru.new(0) end)
    assert.has_error(function() lru.new(1.5) end)
  end)
end)

describe("auth util", function()
  it("strip_query_param removes only that parameter, keeping the rest byte for byte", function()
    assert.same({ "b=2&c=%2F", true }, { util.strip_query_param("api_key=s3&b=2&c=%2F", "api_key") })
    assert.same({ "b=2", true }, { util.strip_query_param("b=2&api_key=1&api%5Fkey=2&api_key", "api_key") })
    assert.same({ "", true }, { util.strip_query_param("api_key=x", "api_key") })
    assert.same({ "api_keyx=1&b", false }, { util.strip_query_param("api_keyx=1&b", "api_key") })
    assert.same({ "", false }, { util.strip_query_param("", "api_key") })
  end)

  it("get_cookie and strip_cookie", function()
    local h = 'a=1; token="abc.def.ghi"; b=2'
    assert.equal("abc.def.ghi", util.get_cookie(h, "token"))
    assert.equal("1", util.get_cookie(h, "a"))
    assert.is_nil(util.get_cookie(h, "tok"))
    assert.same({ "a=1; b=2", true }, { util.strip_cookie(h, "token") })
    assert.same({ nil, true }, { util.strip_cookie("token=x", "token") })
    assert.same({ "a=1", false }, { util.strip_cookie("a=1", "token") })
  end)

  it("spoofable adds underscore spellings once", function()
    assert.same({ "X-User-Id", "X_User_Id", "X-Tenant-Id", "X_Tenant_Id" },
                util.spoofable({ "X-User-Id", "x-user-id", "X-Tenant-Id" }))
  end)

  it("valid_header_value refuses control characters, allows tab and UTF-8", function()
    assert.is_true(util.valid_header_value("a\tb é"))
    assert.is_false(util.valid_header_value("a\r\nX-Evil: 1"))
    assert.is_false(util.valid_header_value("a\0"))
  end)
end)

describe("consumers", function()
  local consumers = require "tollgate.consumers"
  local saved

  before_each(function()
    saved = package.loaded["tollgate.runtime"]
  end)

  after_each(function()
    package.loaded["tollgate.runtime"] = saved
  end)

  local function errors_of(list)
    local errs = {}
    consumers.check(list, "consumers", errs)
    return errs
  end

  it("accepts an absent or null section", function()
    assert.same({}, errors_of(nil))
    assert.same({}, errors_of(cjson.null))
  end)

  it("reports every mistake with its YAML path", function()
    local errs = errors_of({
      { id = "ok", api_keys = { "k1", { sha256 = string.rep("A", 64) } }, jwt = { secret = "s" } },
      { id = "bad-keys", api_keys = { "", 5, { sha256 = "xyz" }, { md5 = "x" } } },
      { id = "rs-secret", jwt = { algorithm = "RS256", secret = "x" } },
      { id = "hs-pem", jwt = { algorithm = "HS512", public_key = "x" } },
      { id = "no-file", jwt = { algorithm = "ES256", public_key_file = "/nonexistent/k.pem" } },
      { id = "alg", jwt = { algorithm = "none", secret = "x" } },
      { id = 5, extra = true, jwt = { secret = "x", public_key = "y" } },
      { plan = "pro" },
      { id = "bad\nid" },
    })
    assert.same({
      "consumers[1].api_keys[0]: must not be empty",
      "consumers[1].api_keys[1]: expected a string or { sha256: hex }",
      "consumers[1].api_keys[2]: sha256 must be 64 hex digits",
      "consumers[1].api_keys[3]: unknown key md5 (expected a string or { sha256: hex })",
      "consumers[2].jwt.algorithm: RS256 needs public_key or public_key_file, not a secret",
      "consumers[3].jwt.algorithm: HS512 needs a secret, not a public key",
      "consumers[4].jwt.public_key_file: cannot open /nonexistent/k.pem: No such file or directory",
      "consumers[5].jwt.algorithm: expected one of: EdDSA, ES256, ES384, ES512, HS256, HS384, HS512, PS256, PS384, PS512, RS256, RS384, RS512",
      "consumers[6].extra: unknown key",
      "consumers[6].id: expected a string",
      "consumers[6].jwt: exactly one of these fields must be set: secret, public_key, public_key_file",
      "consumers[7].id: required field missing",
      "consumers[8].id: must not contain control characters",
    }, errs)
  end)

  it("reports duplicates without printing keys", function()
    local errs = errors_of({
      { id = "a", api_keys = { "same-key" }, jwt = { key = "k", secret = "s" } },
      { id = "a" },
      { id = "b", api_keys = { { sha256 = crypto.sha256_hex("same-key") } }, jwt = { key = "k", secret = "t" } },
    })
    assert.same({
      "consumers[1].id: duplicate consumer id \"a\"",
      "consumers[2].api_keys[0]: the same API key is already configured (consumer \"a\")",
      "consumers[2].jwt.key: \"k\" is already the key of consumer \"a\"",
    }, errs)
    for _, e in ipairs(errs) do
      assert.is_nil(e:find("same-key", 1, true))
    end
  end)

  it("looks consumers up by API key (plaintext or hashed) and by jwt key", function()
    local list = {
      { id = "alice", plan = "pro", api_keys = { "sk_alice", { sha256 = crypto.sha256_hex("sk_hashed"):upper() } },
        jwt = { key = "alice-iss", secret = "alice-secret" } },
      { id = "bob", jwt = { algorithm = "HS384", secret = "bob-secret" } },
    }
    assert.same({}, errors_of(list))
    package.loaded["tollgate.runtime"] = { config = { consumers = list } }
    assert.same({ id = "alice", plan = "pro" }, consumers.by_api_key("sk_alice"))
    assert.same({ id = "alice", plan = "pro" }, consumers.by_api_key("sk_hashed"))
    assert.is_nil(consumers.by_api_key("sk_alicE"))
    assert.is_nil(consumers.by_api_key(""))
    local c, key = consumers.by_jwt_key("alice-iss")
    assert.equal("alice", c.id)
    assert.is_true(jwt.key_fits(key, "HS256"))
    assert.is_false(jwt.key_fits(key, "HS512"))   -- bound to the consumer's algorithm
    c, key = consumers.by_jwt_key("bob")           -- key defaults to the id
    assert.equal("bob", c.id)
    assert.is_true(jwt.key_fits(key, "HS384"))
    assert.is_nil(consumers.by_jwt_key("carol"))
    assert.equal(consumers.get("alice"), consumers.by_api_key("sk_alice"))
  end)
end)
