-- Unit specs for lua/tollgate/crypto.lua: the crypto layer under JWT and
-- key authentication.
--
-- Driven by Project Wycheproof vectors (../shared/testvectors/wycheproof,
-- see its README): every `invalid` case must be rejected, every `valid` one
-- accepted, `acceptable` ones may go either way without crashing. Keys are
-- loaded from each group's PEM and, where the group has one, its JWK too, so
-- both loaders are checked against the same signatures. Fresh keys,
-- certificates and signatures come from the `openssl` CLI into a private
-- directory under spec/tmp/. The RFC 7515 appendix A examples are
-- known-answer tests.
--
-- The benchmark section prints µs/op and never asserts a time.

local crypto = require "tollgate.crypto"
local cjson = require "cjson"
local ffi = require "ffi"

local fmt = string.format

local VECTORS = os.getenv("TG_WYCHEPROOF_DIR") or "../shared/testvectors/wycheproof"

ffi.cdef[[ unsigned long ERR_peek_error(void); ]]
local libcrypto = ffi.load("libcrypto.so.3")

------------------------------------------------------------------------------
-- helpers
------------------------------------------------------------------------------

local function fromhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

local function tohex(s)
  return (s:gsub(".", function(c) return fmt("%02x", c:byte()) end))
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

local function load_vectors(name)
  local s = read_file(VECTORS .. "/" .. name)
  return s and cjson.decode(s)
end

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok == true or ok == 0, "command failed: " .. cmd)
end

-- The openssl error queue must be empty after every call, failing or not.
local function assert_error_queue_empty()
  assert.are.equal(0, tonumber(libcrypto.ERR_peek_error()))
end

-- ECDSA DER (SEQUENCE { INTEGER r, INTEGER s }) -> JOSE r||s.
local function der_to_jose(der, size)
  local pos = 3
  if der:byte(2) == 0x81 then
    pos = 4
  end
  local out = {}
  for _ = 1, 2 do
    assert(der:byte(pos) == 0x02)
    local len = der:byte(pos + 1)
    local int = der:sub(pos + 2, pos + 1 + len):gsub("^%z+", "")
    out[#out + 1] = string.rep("\0", size - #int) .. int
    pos = pos + 2 + len
  end
  return out[1] .. out[2]
end

local function rss_kb()
  local s = read_file("/proc/self/statm")
  return tonumber(s:match("^%d+%s+(%d+)")) * 4
end

-- RFC 7515 appendix A.
local RFC7515 = {
  payload = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxl"
         .. "LmNvbS9pc19yb290Ijp0cnVlfQ",
  hs256 = {
    header = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9",
    k = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
    sig = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
  },
  rs256 = {
    header = "eyJhbGciOiJSUzI1NiJ9",
    n = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
    e = "AQAB",
    sig = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw",
  },
  es256 = {
    header = "eyJhbGciOiJFUzI1NiJ9",
    x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    sig = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
  },
}

local function b64u(s)
  return assert(crypto.base64url_decode(s))
end

------------------------------------------------------------------------------
-- fixtures made with the openssl CLI
------------------------------------------------------------------------------

local tmp      -- our private directory under spec/tmp/
local pem = {} -- name -> PEM text
local sigs = {} -- name -> raw signature bytes
local MSG = "tollgate signs this: " .. string.rep("x", 100)

local function make_fixtures()
  tmp = "spec/tmp/crypto-" .. crypto.sha256_hex(crypto.random_bytes(16)):sub(1, 12)
  sh("mkdir -p " .. tmp)
  local function p(name) return tmp .. "/" .. name end
  local f = assert(io.open(p("msg"), "wb"))
  f:write(MSG)
  f:close()

  local gen = {
    rsa = "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
    rsa1024 = "-algorithm RSA -pkeyopt rsa_keygen_bits:1024",
    rsapss = "-algorithm RSA-PSS -pkeyopt rsa_keygen_bits:2048",
    ec256 = "-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
    ec384 = "-algorithm EC -pkeyopt ec_paramgen_curve:P-384",
    ec521 = "-algorithm EC -pkeyopt ec_paramgen_curve:P-521",
    k256 = "-algorithm EC -pkeyopt ec_paramgen_curve:secp256k1",
    ed = "-algorithm ED25519",
    x25519 = "-algorithm X25519",
  }
  for name, opts in pairs(gen) do
    sh(fmt("openssl genpkey %s -out %s", opts, p(name .. ".key")))
    sh(fmt("openssl pkey -in %s -pubout -out %s", p(name .. ".key"), p(name .. ".pub")))
    pem[name] = assert(read_file(p(name .. ".pub")))
    pem[name .. "_private"] = assert(read_file(p(name .. ".key")))
  end
  sh(fmt("openssl rsa -in %s -RSAPublicKey_out -out %s", p("rsa.key"), p("rsa.pkcs1")))
  pem.rsa_pkcs1 = assert(read_file(p("rsa.pkcs1")))
  sh(fmt("openssl ec -in %s -pubout -param_enc explicit -out %s", p("ec256.key"), p("ec_explicit.pub")))
  pem.ec_explicit = assert(read_file(p("ec_explicit.pub")))
  for _, name in ipairs({ "rsa", "ec256", "ed" }) do
    sh(fmt("openssl req -x509 -new -key %s -subj /CN=tollgate-test -days 1 -out %s",
           p(name .. ".key"), p(name .. ".crt")))
    pem[name .. "_cert"] = assert(read_file(p(name .. ".crt")))
  end

  -- cmd has "%s" where the -out option goes (openssl dgst wants options
  -- before the input file).
  local function sign(name, cmd)
    sh(fmt(cmd, "-out " .. p(name .. ".sig")))
    sigs[name] = assert(read_file(p(name .. ".sig")))
  end
  for _, bits in ipairs({ "256", "384", "512" }) do
    sign("rs" .. bits, fmt("openssl dgst -sha%s -sign %s %%s %s", bits, p("rsa.key"), p("msg")))
    sign("ps" .. bits, fmt("openssl dgst -sha%s -sign %s -sigopt rsa_padding_mode:pss "
                           .. "-sigopt rsa_pss_saltlen:digest %%s %s", bits, p("rsa.key"), p("msg")))
  end
  sign("ps256_saltmax", fmt("openssl dgst -sha256 -sign %s -sigopt rsa_padding_mode:pss "
                            .. "-sigopt rsa_pss_saltlen:max %%s %s", p("rsa.key"), p("msg")))
  sign("rs256_small", fmt("openssl dgst -sha256 -sign %s %%s %s", p("rsa1024.key"), p("msg")))
  for _, c in ipairs({ { "256", "256", 32 }, { "384", "384", 48 }, { "521", "512", 66 } }) do
    sign("es" .. c[2] .. "_der", fmt("openssl dgst -sha%s -sign %s %%s %s", c[2],
                                      p("ec" .. c[1] .. ".key"), p("msg")))
    sigs["es" .. c[2]] = der_to_jose(sigs["es" .. c[2] .. "_der"], c[3])
  end
  sign("ed", fmt("openssl pkeyutl -sign -inkey %s -rawin -in %s %%s", p("ed.key"), p("msg")))
end

------------------------------------------------------------------------------

describe("tollgate.crypto", function()

  setup(make_fixtures)

  teardown(function()
    if tmp and tmp:match("^spec/tmp/crypto%-%x+$") then
      os.execute("rm -rf " .. tmp)
    end
  end)

  after_each(assert_error_queue_empty)

  describe("digests", function()
    it("match the FIPS 180 examples", function()
      assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                       tohex(crypto.sha256("abc")))
      assert.are.equal("cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
                       .. "8086072ba1e7cc2358baeca134c825a7", tohex(crypto.sha384("abc")))
      assert.are.equal("ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                       .. "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
                       tohex(crypto.sha512("abc")))
      assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                       crypto.sha256_hex(""))
      assert.are.equal(32, #crypto.sha256(string.rep("a", 1000000)))
    end)

    it("raise on non-string input", function()
      assert.has_error(function() crypto.sha256(nil) end)
      assert.has_error(function() crypto.sha512({}) end)
      assert.has_error(function() crypto.sha256_hex(1) end)
    end)
  end)

  describe("hmac", function()
    it("matches RFC 4231 test case 2 for every hash", function()
      local msg = "what do ya want for nothing?"
      assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
                       tohex(crypto.hmac_sha256("Jefe", msg)))
      assert.are.equal("af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
                       .. "8e2240ca5e69e2c78b3239ecfab21649", tohex(crypto.hmac_sha384("Jefe", msg)))
      assert.are.equal("164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
                       .. "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
                       tohex(crypto.hmac_sha512("Jefe", msg)))
      assert.are.equal(crypto.hmac_sha384("Jefe", msg), crypto.hmac("sha384", "Jefe", msg))
    end)

    it("gives the same tag whether the key context is reused or rebuilt", function()
      local k1, k2 = "key-one", "key-two"
      local ref = {}
      for i = 1, 5 do
        ref[i] = crypto.hmac_sha256(i % 2 == 0 and k1 or k2, "m" .. i)
      end
      for _ = 1, 3 do  -- same key back to back (reuse path)
        assert.are.equal(ref[2], crypto.hmac_sha256(k1, "m2"))
      end
      assert.are.equal(ref[3], crypto.hmac_sha256(k2, "m3"))
      -- An equal key built at run time is the same interned string.
      assert.are.equal(ref[4], crypto.hmac_sha256(table.concat({ "key", "-one" }), "m4"))
      -- Empty key and empty message are valid HMAC inputs.
      assert.are.equal("b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad",
                       tohex(crypto.hmac_sha256("", "")))
      assert.are.equal(ref[5], crypto.hmac_sha256(k2, "m5"))
    end)

    it("returns nil, err for an unknown hash and raises on bad types", function()
      local tag, err = crypto.hmac("md5", "k", "m")
      assert.is_nil(tag)
      assert.matches("unsupported hash", err)
      assert.is_nil((crypto.verify_hmac("sha1", "k", "m", "t")))
      assert.has_error(function() crypto.hmac_sha256(nil, "m") end)
      assert.has_error(function() crypto.hmac_sha256("k", 42) end)
      assert.has_error(function() crypto.hmac(nil, "k", "m") end)
    end)

    it("verify_hmac rejects truncated and extended tags", function()
      local tag = crypto.hmac_sha256("k", "m")
      assert.is_true(crypto.verify_hmac("sha256", "k", "m", tag))
      assert.is_false((crypto.verify_hmac("sha256", "k", "m", tag:sub(1, 16))))
      assert.is_false((crypto.verify_hmac("sha256", "k", "m", tag .. "\0")))
      assert.is_false((crypto.verify_hmac("sha256", "k", "m", "")))
      assert.is_false((crypto.verify_hmac("sha256", "k", "m2", tag)))
    end)
  end)

  describe("Wycheproof HMAC", function()
    for _, c in ipairs({ { "hmac_sha256_test.json", "sha256", 256 },
                         { "hmac_sha384_test.json", "sha384", 384 },
                         { "hmac_sha512_test.json", "sha512", 512 } }) do
      local file, hash, full = c[1], c[2], c[3]
      it(file, function()
        local doc = load_vectors(file)
        if not doc then
          pending("no " .. file .. " in " .. VECTORS)
          return
        end
        local n, fulltag, truncated, failures = 0, 0, 0, {}
        for _, g in ipairs(doc.testGroups) do
          for _, t in ipairs(g.tests) do
            n = n + 1
            local key, msg, tag = fromhex(t.key), fromhex(t.msg), fromhex(t.tag)
            local res = crypto.verify_hmac(hash, key, msg, tag)
            local bad
            if g.tagSize == full then
              fulltag = fulltag + 1
              if t.result == "valid" and res ~= true then
                bad = "valid tag rejected"
              elseif t.result == "invalid" and res ~= false then
                bad = "invalid tag accepted"
              end
            else
              -- JWT has no truncated HMAC: a shorter tag never verifies,
              -- but the computation must still agree with the vector.
              truncated = truncated + 1
              if res ~= false then
                bad = "truncated tag accepted"
              elseif t.result == "valid"
                     and crypto.hmac(hash, key, msg):sub(1, #tag) ~= tag then
                bad = "tag prefix differs"
              end
            end
            if bad then
              failures[#failures + 1] = fmt("tcId %d (%s): %s", t.tcId, t.comment, bad)
            end
          end
        end
        print(fmt("\n  wycheproof %-38s %4d tests: %d full-length tags checked, "
                  .. "%d truncated rejected", file, n, fulltag, truncated))
        assert.are.same({}, failures)
        assert.are.equal(doc.numberOfTests, n)
      end)
    end
  end)

  describe("Wycheproof signatures", function()
    -- Each entry: file, how to verify one test with a key.
    local cases = {
      { "rsa_signature_2048_sha256_test.json", function(k, _, m, s) return crypto.verify_rsa_pkcs1(k, "sha256", m, s) end },
      { "rsa_signature_2048_sha384_test.json", function(k, _, m, s) return crypto.verify_rsa_pkcs1(k, "sha384", m, s) end },
      { "rsa_signature_2048_sha512_test.json", function(k, _, m, s) return crypto.verify_rsa_pkcs1(k, "sha512", m, s) end },
      -- sLen 32 = SHA-256 length: exactly what JWA's PS256 requires, so no
      -- explicit salt length is passed (a salt_len argument exists for files
      -- like rsa_pss_2048_sha512_mgf1_32 whose salt differs from the hash).
      { "rsa_pss_2048_sha256_mgf1_32_test.json", function(k, g, m, s)
          assert(g.sLen == 32 and g.mgfSha == "SHA-256")
          return crypto.verify_rsa_pss(k, "sha256", m, s) end },
      { "ecdsa_secp256r1_sha256_p1363_test.json", function(k, _, m, s) return crypto.verify_ecdsa_jose(k, "sha256", m, s) end },
      { "ecdsa_secp384r1_sha384_p1363_test.json", function(k, _, m, s) return crypto.verify_ecdsa_jose(k, "sha384", m, s) end },
      { "ecdsa_secp521r1_sha512_p1363_test.json", function(k, _, m, s) return crypto.verify_ecdsa_jose(k, "sha512", m, s) end },
      { "ed25519_test.json", function(k, _, m, s) return crypto.verify_ed25519(k, m, s) end },
    }

    for _, c in ipairs(cases) do
      local file, verify = c[1], c[2]
      it(file, function()
        local doc = load_vectors(file)
        if not doc then
          pending("no " .. file .. " in " .. VECTORS)
          return
        end
        local count = { valid = 0, invalid = 0, acceptable = 0, accepted = 0, jwk = 0 }
        local failures = {}
        for _, g in ipairs(doc.testGroups) do
          local keys = {}
          local key, err = crypto.load_public_key(g.publicKeyPem)
          assert(key, err)
          keys[1] = key
          local jwk = g.publicKeyJwk or g.keyJwk
          if jwk then
            local jkey, jerr = crypto.load_jwk(jwk)
            assert(jkey, jerr)
            assert.are.equal(key.type, jkey.type)
            assert.are.equal(key.bits, jkey.bits)
            keys[2] = jkey
          end
          for _, t in ipairs(g.tests) do
            count[t.result] = count[t.result] + 1
            local msg, sig = fromhex(t.msg), fromhex(t.sig)
            for ki, k in ipairs(keys) do
              if ki == 2 then
                count.jwk = count.jwk + 1
              end
              local ok, res, rerr = pcall(verify, k, g, msg, sig)
              local bad
              if not ok then
                bad = "raised: " .. tostring(res)
              elseif t.result == "valid" and res ~= true then
                bad = "valid signature rejected: " .. tostring(rerr)
              elseif t.result == "invalid" and res ~= false then
                -- A bad signature is `false, err`, never `nil, err`.
                bad = "invalid signature gave " .. tostring(res)
              elseif t.result == "acceptable" and res == true and ki == 1 then
                count.accepted = count.accepted + 1
              end
              if bad then
                failures[#failures + 1] = fmt("tcId %d (%s; %s) key %d: %s", t.tcId,
                  t.comment, table.concat(t.flags or {}, ","), ki, bad)
              end
            end
          end
        end
        print(fmt("\n  wycheproof %-38s %4d tests: %3d valid accepted, %3d invalid rejected, "
                  .. "%d acceptable (%d accepted); %d also via JWK",
                  file, doc.numberOfTests, count.valid, count.invalid,
                  count.acceptable, count.accepted, count.jwk))
        assert.are.same({}, failures)
        assert.are.equal(doc.numberOfTests, count.valid + count.invalid + count.acceptable)
      end)
    end
  end)

  describe("RFC 7515 appendix A examples", function()
    local function input(alg)
      return RFC7515[alg].header .. "." .. RFC7515.payload
    end

    it("A.1 HS256 verifies", function()
      local a = RFC7515.hs256
      assert.is_true(crypto.verify_hmac("sha256", b64u(a.k), input("hs256"), b64u(a.sig)))
      assert.is_false((crypto.verify_hmac("sha256", b64u(a.k), input("hs256") .. "x", b64u(a.sig))))
    end)

    it("A.2 RS256 verifies with the JWK", function()
      local a = RFC7515.rs256
      local key = assert(crypto.load_jwk({ kty = "RSA", n = a.n, e = a.e }))
      assert.are.equal(2048, key.bits)
      assert.is_true(crypto.verify_rsa_pkcs1(key, "sha256", input("rs256"), b64u(a.sig)))
      assert.is_false((crypto.verify_rsa_pkcs1(key, "sha256", input("rs256") .. "x", b64u(a.sig))))
    end)

    it("A.3 ES256 verifies with the JWK", function()
      local a = RFC7515.es256
      local key = assert(crypto.load_jwk({ kty = "EC", crv = "P-256", x = a.x, y = a.y }))
      assert.are.equal("P-256", key.curve)
      assert.is_true(crypto.verify_ecdsa_jose(key, "sha256", input("es256"), b64u(a.sig)))
      assert.is_false((crypto.verify_ecdsa_jose(key, "sha256", input("es256") .. "x", b64u(a.sig))))
    end)
  end)

  describe("base64url and base64", function()
    local rfc4648 = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
                      fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }

    it("match the RFC 4648 examples", function()
      for plain, enc in pairs(rfc4648) do
        assert.are.equal(enc, crypto.base64_encode(plain))
        assert.are.equal(plain, crypto.base64_decode(enc))
        local url = enc:gsub("=", "")
        assert.are.equal(url, crypto.base64url_encode(plain))
        assert.are.equal(plain, crypto.base64url_decode(url))
      end
      assert.are.equal("-_-_", crypto.base64url_encode("\251\255\191"))
      assert.are.equal("+/+/", crypto.base64_encode("\251\255\191"))
    end)

    it("round-trip every length and every byte value", function()
      for len = 0, 70 do
        local s = crypto.random_bytes(len)
        local u = crypto.base64url_encode(s)
        assert.is_nil(u:find("[=+/]"))
        assert.are.equal(s, crypto.base64url_decode(u))
        assert.are.equal(s, crypto.base64_decode(crypto.base64_encode(s)))
      end
      local all = {}
      for i = 0, 255 do
        all[#all + 1] = string.char(i)
      end
      all = table.concat(all)
      assert.are.equal(all, crypto.base64url_decode(crypto.base64url_encode(all)))
    end)

    it("decode large inputs in one linear pass (beyond the scratch buffer)", function()
      local s = crypto.random_bytes(999999) .. string.rep("\0", 3000000)
      local enc = crypto.base64url_encode(s)
      assert.are.equal(#s * 4 / 3, #enc)
      assert.are.equal(s, crypto.base64url_decode(enc))
      assert.are.equal(s, crypto.base64_decode(crypto.base64_encode(s)))
    end)

    it("base64url_decode is strict", function()
      local bad = {
        "Zg==", "Zg=", "Zm9v=",            -- padding
        "Z", "Zm9vY", "Zm9vYmFyZ",         -- length 1 mod 4
        "Zm9v+", "Zm9/", "Zm 9v", "Zm9v\n", "Zm9\0", "Zm\1", "Zm\255\255", -- alphabet
        "Zh", "Zm9", "Zm9vYh",             -- non-zero trailing bits
      }
      for _, s in ipairs(bad) do
        local v, err = crypto.base64url_decode(s)
        assert.is_nil(v, s)
        assert.is_string(err)
      end
      assert.are.equal("", crypto.base64url_decode(""))
    end)

    it("base64_decode requires padding and the standard alphabet", function()
      local bad = {
        "Zg", "Zm8", "Zg=", "Zm9vYg=",     -- padding missing or short
        "Z===", "====", "=Zg=", "Zg=a", "Z=g=", "Zm9v====", -- "=" misplaced
        "Zm9-", "Zm9_", "Zm9v\n", " Zm9v", -- alphabet
        "Zh==", "Zm9=",                    -- non-zero trailing bits
      }
      for _, s in ipairs(bad) do
        local v, err = crypto.base64_decode(s)
        assert.is_nil(v, s)
        assert.is_string(err)
      end
    end)

    it("raise on non-string input", function()
      assert.has_error(function() crypto.base64url_decode(nil) end)
      assert.has_error(function() crypto.base64url_encode(12) end)
      assert.has_error(function() crypto.base64_decode(false) end)
    end)
  end)

  describe("constant_time_eq and random_bytes", function()
    it("constant_time_eq compares whole strings, NULs included", function()
      assert.is_true(crypto.constant_time_eq("", ""))
      assert.is_true(crypto.constant_time_eq("abc", "abc"))
      assert.is_true(crypto.constant_time_eq("a\0b", "a\0b"))
      assert.is_false(crypto.constant_time_eq("a\0b", "a\0c"))
      assert.is_false(crypto.constant_time_eq("abc", "abd"))
      assert.is_false(crypto.constant_time_eq("abc", "ab"))
      assert.is_false(crypto.constant_time_eq("", "a"))
      assert.has_error(function() crypto.constant_time_eq("a", nil) end)
    end)

    it("random_bytes returns n bytes", function()
      for _, n in ipairs({ 0, 1, 16, 32, 100000 }) do
        assert.are.equal(n, #crypto.random_bytes(n))
      end
      assert.are_not.equal(crypto.random_bytes(32), crypto.random_bytes(32))
      assert.has_error(function() crypto.random_bytes(-1) end)
      assert.has_error(function() crypto.random_bytes(1.5) end)
      assert.has_error(function() crypto.random_bytes("8") end)
    end)
  end)

  describe("load_public_key", function()
    it("loads SPKI keys of every supported type", function()
      local rsa = assert(crypto.load_public_key(pem.rsa))
      assert.are.same({ "RSA", 2048 }, { rsa.type, rsa.bits })
      for name, c in pairs({ ec256 = { "P-256", 256 }, ec384 = { "P-384", 384 },
                             ec521 = { "P-521", 521 } }) do
        local k = assert(crypto.load_public_key(pem[name]))
        assert.are.same({ "EC", c[1], c[2] }, { k.type, k.curve, k.bits })
      end
      local ed = assert(crypto.load_public_key(pem.ed))
      assert.are.equal("ED25519", ed.type)
      assert.matches("RSA, 2048 bits", tostring(rsa))
    end)

    it("loads PKCS#1 RSA public keys", function()
      local k = assert(crypto.load_public_key(pem.rsa_pkcs1))
      assert.are.equal("RSA", k.type)
      assert.is_true(crypto.verify_rsa_pkcs1(k, "sha256", MSG, sigs.rs256))
    end)

    it("takes the public key of a certificate", function()
      local rsa = assert(crypto.load_public_key(pem.rsa_cert))
      assert.is_true(crypto.verify_rsa_pkcs1(rsa, "sha256", MSG, sigs.rs256))
      local ec = assert(crypto.load_public_key(pem.ec256_cert))
      assert.is_true(crypto.verify_ecdsa_jose(ec, "sha256", MSG, sigs.es256))
      local ed = assert(crypto.load_public_key(pem.ed_cert))
      assert.is_true(crypto.verify_ed25519(ed, MSG, sigs.ed))
    end)

    it("returns nil, err for garbage and unsupported keys", function()
      local body = pem.rsa:match("%-%-%-%-%-\n(.-)\n%-%-%-%-%-END"):gsub("\n", "")
      local der = assert(crypto.base64_decode(body))
      local trailing = "-----BEGIN PUBLIC KEY-----\n"
        .. crypto.base64_encode(der .. "\0\0") .. "\n-----END PUBLIC KEY-----\n"
      local cases = {
        garbage = { "hello world", "no PEM" },
        empty = { "", "no PEM" },
        bad_base64 = { "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n", "" },
        truncated = { pem.rsa:sub(1, 200), "" },
        not_a_key = { "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "invalid" },
        trailing = { trailing, "trailing data" },
        private = { pem.rsa_private, "unsupported PEM type" },
        secp256k1 = { pem.k256, "unsupported EC curve" },
        explicit = { pem.ec_explicit, "named curve" },
        x25519 = { pem.x25519, "unsupported key type" },
        rsa_pss = { pem.rsapss, "unsupported key type" },
        oversize = { string.rep("A", 70000), "too large" },
      }
      for name, c in pairs(cases) do
        local k, err = crypto.load_public_key(c[1])
        assert.is_nil(k, name)
        assert.is_string(err, name)
        assert.matches(c[2], err, 1, true)
        assert_error_queue_empty()
      end
      assert.has_error(function() crypto.load_public_key(nil) end)
      assert.has_error(function() crypto.load_public_key({}) end)
    end)
  end)

  describe("load_jwk", function()
    local rfc = RFC7515

    it("loads each kty", function()
      local rsa = assert(crypto.load_jwk({ kty = "RSA", n = rfc.rs256.n, e = "AQAB", kid = "x" }))
      assert.are.same({ "RSA", 2048 }, { rsa.type, rsa.bits })
      local ec = assert(crypto.load_jwk({ kty = "EC", crv = "P-256", x = rfc.es256.x, y = rfc.es256.y }))
      assert.are.same({ "EC", "P-256" }, { ec.type, ec.curve })
      local ed = assert(crypto.load_jwk({ kty = "OKP", crv = "Ed25519",
                                          x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }))
      assert.are.equal("ED25519", ed.type)
      -- A leading zero octet on n is tolerated.
      local n0 = crypto.base64url_encode("\0" .. b64u(rfc.rs256.n))
      assert.are.equal(2048, assert(crypto.load_jwk({ kty = "RSA", n = n0, e = "AQAB" })).bits)
    end)

    it("rejects other key types, missing and malformed members", function()
      local x, y = rfc.es256.x, rfc.es256.y
      local y_off = crypto.base64url_encode(b64u(y):sub(1, 31) .. "\1")
      local big = crypto.base64url_encode(string.rep("\255", 1100))
      local cases = {
        { { kty = "oct", k = "AAAA" }, "kty" },
        { { n = rfc.rs256.n, e = "AQAB" }, "kty" },
        { { kty = 1 }, "kty" },
        { { kty = "RSA", n = rfc.rs256.n }, "'e' missing" },
        { { kty = "RSA", e = "AQAB" }, "'n' missing" },
        { { kty = "RSA", n = 12, e = "AQAB" }, "must be a string" },
        { { kty = "RSA", n = "a+b/", e = "AQAB" }, "'n'" },
        { { kty = "RSA", n = rfc.rs256.n .. "==", e = "AQAB" }, "'n'" },
        { { kty = "RSA", n = big, e = "AQAB" }, "too large" },
        { { kty = "RSA", n = rfc.rs256.n, e = crypto.base64url_encode(string.rep("\1", 9)) }, "too large" },
        { { kty = "RSA", n = rfc.rs256.n, e = "" }, "empty" },
        { { kty = "RSA", n = rfc.rs256.n, e = "AA" }, "zero" },
        { { kty = "RSA", n = rfc.rs256.n, e = "AQ" }, "exponent" },   -- e = 1: anyone can sign
        { { kty = "RSA", n = rfc.rs256.n, e = "AAE" }, "exponent" },  -- e = 1 with a leading zero
        { { kty = "RSA", n = rfc.rs256.n, e = "AQAA" }, "exponent" }, -- even e
        { { kty = "EC", crv = "P-192", x = x, y = y }, "curve" },
        { { kty = "EC", crv = "secp256k1", x = x, y = y }, "curve" },
        { { kty = "EC", x = x, y = y }, "curve" },
        { { kty = "EC", crv = "P-256", x = x }, "'y' missing" },
        { { kty = "EC", crv = "P-256", x = crypto.base64url_encode(b64u(x):sub(2)), y = y }, "32 bytes" },
        { { kty = "EC", crv = "P-384", x = x, y = y }, "48 bytes" },
        { { kty = "EC", crv = "P-256", x = x, y = y_off }, "invalid EC JWK" },
        { { kty = "OKP", crv = "X25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }, "curve" },
        { { kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUR" }, "" },
        { { kty = "OKP", crv = "Ed25519", x = crypto.base64url_encode(string.rep("a", 31)) }, "32 bytes" },
      }
      for i, c in ipairs(cases) do
        local k, err = crypto.load_jwk(c[1])
        assert.is_nil(k, "case " .. i)
        assert.is_string(err, "case " .. i)
        assert.matches(c[2], err, 1, true)
        assert_error_queue_empty()
      end
      assert.has_error(function() crypto.load_jwk("{}") end)
      assert.has_error(function() crypto.load_jwk(nil) end)
    end)
  end)

  describe("verification", function()
    local keys

    setup(function()
      keys = {
        rsa = assert(crypto.load_public_key(pem.rsa)),
        rsa1024 = assert(crypto.load_public_key(pem.rsa1024)),
        ec256 = assert(crypto.load_public_key(pem.ec256)),
        ec384 = assert(crypto.load_public_key(pem.ec384)),
        ec521 = assert(crypto.load_public_key(pem.ec521)),
        ed = assert(crypto.load_public_key(pem.ed)),
      }
    end)

    it("accepts openssl-made RS/PS/ES/EdDSA signatures and rejects tampering", function()
      for _, h in ipairs({ "256", "384", "512" }) do
        local hash = "sha" .. h
        assert.is_true(crypto.verify_rsa_pkcs1(keys.rsa, hash, MSG, sigs["rs" .. h]))
        assert.is_true(crypto.verify_rsa_pss(keys.rsa, hash, MSG, sigs["ps" .. h]))
        assert.is_false((crypto.verify_rsa_pkcs1(keys.rsa, hash, MSG .. "!", sigs["rs" .. h])))
        assert.is_false((crypto.verify_rsa_pss(keys.rsa, hash, MSG .. "!", sigs["ps" .. h])))
        -- The two RSA paddings never stand in for each other.
        assert.is_false((crypto.verify_rsa_pss(keys.rsa, hash, MSG, sigs["rs" .. h])))
        assert.is_false((crypto.verify_rsa_pkcs1(keys.rsa, hash, MSG, sigs["ps" .. h])))
      end
      for name, hash in pairs({ ec256 = "sha256", ec384 = "sha384", ec521 = "sha512" }) do
        local sig = sigs["es" .. hash:sub(4)]
        assert.is_true(crypto.verify_ecdsa_jose(keys[name], hash, MSG, sig))
        assert.is_false((crypto.verify_ecdsa_jose(keys[name], hash, MSG .. "!", sig)))
      end
      assert.is_true(crypto.verify_ed25519(keys.ed, MSG, sigs.ed))
      assert.is_false((crypto.verify_ed25519(keys.ed, MSG .. "!", sigs.ed)))
      -- Wrong hash for an RSA signature is a mismatch, not an error.
      assert.is_false((crypto.verify_rsa_pkcs1(keys.rsa, "sha384", MSG, sigs.rs256)))
    end)

    it("PSS salt length is the hash length, checked exactly", function()
      local ok, err = crypto.verify_rsa_pss(keys.rsa, "sha256", MSG, sigs.ps256_saltmax)
      assert.is_false(ok)
      assert.is_string(err)
      -- With the salt length stated, the same signature verifies (2048-bit
      -- key, SHA-256: max salt = 256 - 32 - 2 = 222).
      assert.is_true(crypto.verify_rsa_pss(keys.rsa, "sha256", MSG, sigs.ps256_saltmax, 222))
      assert.is_true(crypto.verify_rsa_pss(keys.rsa, "sha256", MSG, sigs.ps256))
      assert.has_error(function() crypto.verify_rsa_pss(keys.rsa, "sha256", MSG, sigs.ps256, -1) end)
    end)

    it("ECDSA: JOSE length exactly, r and s in [1, n-1], no DER", function()
      local k = keys.ec256
      local good = sigs.es256
      local order = fromhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
      local cases = {
        zero = string.rep("\0", 64),
        r_zero = string.rep("\0", 32) .. good:sub(33),
        s_zero = good:sub(1, 32) .. string.rep("\0", 32),
        r_is_n = order .. good:sub(33),
        s_is_n = good:sub(1, 32) .. order,
        r_max = string.rep("\255", 32) .. good:sub(33),
        short = good:sub(1, 63),
        long = good .. "\0",
        padded_left = "\0" .. good:sub(1, 63),
        der = sigs.es256_der,
        empty = "",
      }
      for name, sig in pairs(cases) do
        local ok, err = crypto.verify_ecdsa_jose(k, "sha256", MSG, sig)
        assert.is_false(ok, name)
        assert.is_string(err, name)
      end
      -- r + n (mod 2^256 wraps for P-256 r < 2^256 - n): must not be reduced.
      assert.is_true(crypto.verify_ecdsa_jose(k, "sha256", MSG, good))
    end)

    it("Ed25519: signatures are exactly 64 bytes", function()
      assert.is_false((crypto.verify_ed25519(keys.ed, MSG, sigs.ed:sub(1, 63))))
      assert.is_false((crypto.verify_ed25519(keys.ed, MSG, sigs.ed .. "\0")))
      assert.is_false((crypto.verify_ed25519(keys.ed, MSG, string.rep("\0", 64))))
    end)

    it("refuses the wrong key type, hash or size with nil, err", function()
      local cases = {
        { crypto.verify_ecdsa_jose, keys.rsa, "sha256", MSG, sigs.es256 },
        { crypto.verify_rsa_pkcs1, keys.ec256, "sha256", MSG, sigs.rs256 },
        { crypto.verify_rsa_pss, keys.ed, "sha256", MSG, sigs.ps256 },
        { crypto.verify_rsa_pkcs1, keys.rsa, "sha1", MSG, sigs.rs256 },
        { crypto.verify_rsa_pkcs1, keys.rsa, "md5", MSG, sigs.rs256 },
        { crypto.verify_rsa_pkcs1, keys.rsa1024, "sha256", MSG, sigs.rs256_small },
        { crypto.verify_ecdsa_jose, keys.ec256, "sha384", MSG, sigs.es256 },  -- ES384 with P-256
        { crypto.verify_ecdsa_jose, keys.ec521, "sha256", MSG, sigs.es512 },
        { crypto.verify_ecdsa_jose, keys.ed, "sha256", MSG, sigs.es256 },
      }
      for i, c in ipairs(cases) do
        local ok, err = c[1](c[2], c[3], c[4], c[5])
        assert.is_nil(ok, "case " .. i)
        assert.is_string(err, "case " .. i)
      end
      local ok, err = crypto.verify_ed25519(keys.rsa, MSG, sigs.ed)
      assert.is_nil(ok)
      assert.matches("RSA key", err)
      assert.is_nil((crypto.verify_ed25519(keys.ec256, MSG, sigs.ed)))
    end)

    it("raises on misuse, blaming the caller", function()
      for _, fn in ipairs({
        function() crypto.verify_rsa_pkcs1(keys.rsa, nil, MSG, sigs.rs256) end,
        function() crypto.verify_ecdsa_jose(nil, "sha256", MSG, sigs.es256) end,
        function() crypto.verify_ed25519(keys.ed, MSG, nil) end,
        function() crypto.sha256(nil) end,
        function() crypto.verify_hmac("sha256", "k", nil, "t") end,
        function() crypto.load_jwk(nil) end,
      }) do
        local ok, err = pcall(fn)
        assert.is_false(ok)
        assert.matches("crypto_spec.lua:%d+:", err)
        assert.is_nil(err:find("crypto.lua:", 1, true))
      end
      assert.has_error(function() crypto.verify_ed25519("pem", MSG, sigs.ed) end)
      assert.has_error(function() crypto.verify_ed25519({ type = "ED25519" }, MSG, sigs.ed) end)
      assert.has_error(function() crypto.verify_ed25519(keys.ed, nil, sigs.ed) end)
      assert.has_error(function() crypto.verify_rsa_pkcs1(keys.rsa, "sha256", MSG, 1) end)
      assert.has_error(function() crypto.verify_rsa_pkcs1(keys.rsa, nil, MSG, sigs.rs256) end)
    end)

    it("one key serves several algorithms in any order", function()
      for _ = 1, 3 do
        assert.is_true(crypto.verify_rsa_pss(keys.rsa, "sha512", MSG, sigs.ps512))
        assert.is_true(crypto.verify_rsa_pkcs1(keys.rsa, "sha256", MSG, sigs.rs256))
        assert.is_false((crypto.verify_rsa_pkcs1(keys.rsa, "sha256", MSG, sigs.ps256)))
        assert.is_true(crypto.verify_rsa_pss(keys.rsa, "sha256", MSG, sigs.ps256))
        assert.is_true(crypto.verify_rsa_pkcs1(keys.rsa, "sha384", MSG, sigs.rs384))
      end
    end)

    it("does not leak: 20k verifications each keep Lua heap and RSS bounded", function()
      local hkey = "hs256-secret"
      local hmsg = string.rep("p", 200)
      local htag = crypto.hmac_sha256(hkey, hmsg)
      local loops = {
        { "HS256", function() return crypto.verify_hmac("sha256", hkey, hmsg, htag) end },
        { "RS256", function() return crypto.verify_rsa_pkcs1(keys.rsa, "sha256", MSG, sigs.rs256) end },
        { "PS256", function() return crypto.verify_rsa_pss(keys.rsa, "sha256", MSG, sigs.ps256) end },
        { "ES256", function() return crypto.verify_ecdsa_jose(keys.ec256, "sha256", MSG, sigs.es256) end },
        { "EdDSA", function() return crypto.verify_ed25519(keys.ed, MSG, sigs.ed) end },
        { "RS256 bad", function() return not crypto.verify_rsa_pkcs1(keys.rsa, "sha256", MSG .. "!", sigs.rs256) end },
        { "load_jwk", function()
            return crypto.load_jwk({ kty = "EC", crv = "P-256", x = RFC7515.es256.x, y = RFC7515.es256.y }) ~= nil
          end },
        { "load_public_key", function() return crypto.load_public_key(pem.rsa_cert) ~= nil end },
      }
      for _, l in ipairs(loops) do
        local name, fn = l[1], l[2]
        local n = name:match("^load") and 5000 or 20000
        -- Warm up the allocator, the JIT and the GC pacing with a full round.
        for _ = 1, n do assert(fn()) end
        collectgarbage("collect")
        local heap0, rss0 = collectgarbage("count"), rss_kb()
        for _ = 1, n do
          if not fn() then error(name .. " failed") end
        end
        collectgarbage("collect")
        collectgarbage("collect")
        local heap1, rss1 = collectgarbage("count"), rss_kb()
        print(fmt("\n  leak check %-16s %5d runs: Lua heap %+7.1f KB, RSS %+6d KB",
                  name, n, heap1 - heap0, rss1 - rss0))
        assert.is_true(heap1 - heap0 < 256, name .. " Lua heap grew")
        assert.is_true(rss1 - rss0 < 1024, name .. " RSS grew")
      end
    end)
  end)

  it("survives hot JIT loops over constant inputs", function()
    -- Constant upvalue strings become trace constants: the shape that made
    -- LuaJIT 2.1-20230119 miscompile string-pointer arithmetic (see the
    -- ECDSA section of crypto.lua). Each loop must run and stay correct.
    local key = assert(crypto.load_public_key(pem.ec256))
    local edkey = assert(crypto.load_public_key(pem.ed))
    local sig, edsig, msg = sigs.es256, sigs.ed, MSG
    local enc = crypto.base64url_encode(sig)
    local function loop(fn)
      local n = 0
      for _ = 1, 3000 do
        if fn() then n = n + 1 end
      end
      return n
    end
    assert.are.equal(3000, loop(function() return crypto.verify_ecdsa_jose(key, "sha256", msg, sig) end))
    assert.are.equal(3000, loop(function() return crypto.verify_ed25519(edkey, msg, edsig) end))
    assert.are.equal(3000, loop(function() return crypto.base64url_decode(enc) == sig end))
    assert.are.equal(3000, loop(function() return crypto.base64url_encode(sig) == enc end))
    assert.are.equal(3000, loop(function() return #crypto.to_hex(sig) == 128 end))
  end)

  it("can be required again (config reload) and keeps working", function()
    package.loaded["tollgate.crypto"] = nil
    local again = require "tollgate.crypto"
    package.loaded["tollgate.crypto"] = crypto
    assert.are_not.equal(crypto, again)
    assert.are.equal(crypto.sha256("x"), again.sha256("x"))
    local k = assert(again.load_public_key(pem.ed))
    assert.is_true(again.verify_ed25519(k, MSG, sigs.ed))
  end)

  describe("benchmark (prints µs/op, asserts nothing about time)", function()
    it("measures the per-request primitives", function()
      local clock = os.clock
      local function bench(name, n, fn)
        for _ = 1, math.min(n, 1000) do fn() end
        local t0 = clock()
        for _ = 1, n do fn() end
        local us = (clock() - t0) * 1e6 / n
        print(fmt("\n  bench %-44s %9.2f µs/op", name, us))
      end
      local msg200 = string.rep("m", 200)
      local secret = "a-32-byte-hs256-secret-for-bench"
      local other = "another-secret-so-the-key-changes"
      local rsa = assert(crypto.load_public_key(pem.rsa))
      local ec256 = assert(crypto.load_public_key(pem.ec256))
      local ec384 = assert(crypto.load_public_key(pem.ec384))
      local ec521 = assert(crypto.load_public_key(pem.ec521))
      local ed = assert(crypto.load_public_key(pem.ed))
      local tag = crypto.hmac_sha256(secret, msg200)
      local enc = crypto.base64url_encode(crypto.random_bytes(200))
      local flip = false

      bench("sha256 (200 B)", 200000, function() return crypto.sha256(msg200) end)
      bench("hmac_sha256 (200 B, same key)", 200000, function() return crypto.hmac_sha256(secret, msg200) end)
      bench("hmac_sha256 (200 B, key alternates)", 200000, function()
        flip = not flip
        return crypto.hmac_sha256(flip and secret or other, msg200)
      end)
      bench("verify_hmac sha256 (HS256, 200 B)", 200000, function()
        return crypto.verify_hmac("sha256", secret, msg200, tag)
      end)
      bench("base64url_decode (268 chars -> 200 B)", 200000, function() return crypto.base64url_decode(enc) end)
      bench("base64url_encode (200 B)", 200000, function() return crypto.base64url_encode(msg200) end)
      bench("verify_rsa_pkcs1 RS256 (2048)", 20000, function()
        return crypto.verify_rsa_pkcs1(rsa, "sha256", MSG, sigs.rs256)
      end)
      bench("verify_rsa_pss PS256 (2048)", 20000, function()
        return crypto.verify_rsa_pss(rsa, "sha256", MSG, sigs.ps256)
      end)
      bench("verify_ecdsa_jose ES256", 10000, function()
        return crypto.verify_ecdsa_jose(ec256, "sha256", MSG, sigs.es256)
      end)
      bench("verify_ecdsa_jose ES384", 3000, function()
        return crypto.verify_ecdsa_jose(ec384, "sha384", MSG, sigs.es384)
      end)
      bench("verify_ecdsa_jose ES512", 3000, function()
        return crypto.verify_ecdsa_jose(ec521, "sha512", MSG, sigs.es512)
      end)
      bench("verify_ed25519 EdDSA", 10000, function() return crypto.verify_ed25519(ed, MSG, sigs.ed) end)
      bench("load_public_key (RSA SPKI PEM)", 5000, function() return crypto.load_public_key(pem.rsa) end)
      bench("load_jwk (EC P-256)", 5000, function()
        return crypto.load_jwk({ kty = "EC", crv = "P-256", x = RFC7515.es256.x, y = RFC7515.es256.y })
      end)
    end)
  end)
end)
