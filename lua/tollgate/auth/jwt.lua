-- tollgate.auth.jwt: JSON Web Tokens (RFC 7519) in JWS compact form
-- (RFC 7515): decoding, signature verification bound to the key's type,
-- and claim checks. No PDK, no I/O: it runs under plain luajit in the unit
-- specs and is driven by plugins/jwt-auth.lua in the gateway. The crypto
-- itself is tollgate.crypto's.
--
-- Every key is a small table made here, never a bare string or EVP key, and
-- knows which algorithms it may verify:
--   { kind = "secret", secret = bytes, algs = {HS256=true,...} | nil }
--   { kind = "public", pkey = crypto key, algs = ... | nil }
-- A secret only verifies HS*; an RSA key only RS*/PS*; an EC key only the
-- ES* of its curve; an Ed25519 key only EdDSA. So a token whose header says
-- HS256 can never make an RSA public key (PEM text everybody knows) act as
-- an HMAC secret, and `alg: none` verifies with nothing.
--
-- Error contract: decode/verify/check return a value, or nil (false for a
-- bad signature) and a short reason meant for the error log. Reasons never
-- contain the token or a signature.

local crypto = require "tollgate.crypto"
local cjson  = require("cjson.safe").new()

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local find, sub, byte = string.find, string.sub, string.byte
local huge = math.huge
local b64u_decode = crypto.base64url_decode
local json_decode = cjson.decode
local null = cjson.null

-- Tokens are small; nesting deeper than this is an attack, not a claim set.
cjson.decode_max_depth(32)
-- NaN / Infinity are not JSON (RFC 8259 6); as a date they would compare
-- false against everything and never expire.
cjson.decode_invalid_numbers(false)

local _M = {}

-- Longest token accepted, in bytes (the issue's 8 KB): bounds the work an
-- unauthenticated client can ask for (base64, JSON, hashing).
_M.MAX_TOKEN_BYTES = 8192

-- JWA (RFC 7518 3.1, RFC 8037 3.1) algorithms supported, with their family.
local ALGS = {
  HS256 = { family = "HS", hash = "sha256" },
  HS384 = { family = "HS", hash = "sha384" },
  HS512 = { family = "HS", hash = "sha512" },
  RS256 = { family = "RS", hash = "sha256" },
  RS384 = { family = "RS", hash = "sha384" },
  RS512 = { family = "RS", hash = "sha512" },
  PS256 = { family = "PS", hash = "sha256" },
  PS384 = { family = "PS", hash = "sha384" },
  PS512 = { family = "PS", hash = "sha512" },
  ES256 = { family = "ES", hash = "sha256", curve = "P-256" },
  ES384 = { family = "ES", hash = "sha384", curve = "P-384" },
  ES512 = { family = "ES", hash = "sha512", curve = "P-521" },
  EdDSA = { family = "EdDSA" },
}
_M.ALGS = ALGS

-- Every supported algorithm name, sorted (for schemas and docs).
_M.ALG_NAMES = { "EdDSA", "ES256", "ES384", "ES512", "HS256", "HS384", "HS512",
                 "PS256", "PS384", "PS512", "RS256", "RS384", "RS512" }

------------------------------------------------------------------------------
-- keys
------------------------------------------------------------------------------

-- Whether key may verify alg: the key type bound to the algorithm family,
-- and the key's own restriction (a consumer's `algorithm`, a JWK's `alg`).
local function key_fits(key, alg)
  local info = ALGS[alg]
  if info == nil then
    return false
  end
  local algs = key.algs
  if algs and not algs[alg] then
    return false
  end
  local family = info.family
  if key.kind == "secret" then
    return family == "HS"
  end
  local t = key.pkey.type
  if t == "RSA" then
    return family == "RS" or family == "PS"
  elseif t == "EC" then
    return family == "ES" and key.pkey.curve == info.curve
  elseif t == "ED25519" then
    return family == "EdDSA"
  end
  return false
end
_M.key_fits = key_fits

local function alg_set(algs)
  if algs == nil then
    return nil
  end
  if type(algs) == "string" then
    return { [algs] = true }
  end
  local set = {}
  for _, a in ipairs(algs) do
    set[a] = true
  end
  return set
end

-- Checks that a key restricted to `algs` can verify at least one of them.
local function check_restriction(key, algs)
  if algs == nil then
    return key
  end
  for a in pairs(key.algs) do
    if not ALGS[a] then
      return nil, "unsupported algorithm " .. tostring(a)
    end
    if key_fits(key, a) then
      return key
    end
  end
  if key.kind == "secret" then
    return nil, "a secret can only verify HS256/HS384/HS512"
  end
  local what = key.pkey.type == "EC" and ("EC " .. key.pkey.curve) or key.pkey.type
  return nil, "a " .. what .. " key cannot verify " .. (type(algs) == "string" and algs or "these algorithms")
end

-- jwt.secret_key(secret, algs) -> key | nil, err. secret: raw bytes;
-- algs: an algorithm name or list restricting the key (optional; HS* only
-- either way).
function _M.secret_key(secret, algs)
  if type(secret) ~= "string" or secret == "" then
    return nil, "secret must be a non-empty string"
  end
  return check_restriction({ kind = "secret", secret = secret, algs = alg_set(algs) }, algs)
end

-- jwt.public_key(pem, algs) -> key | nil, err. PEM of a public key or a
-- certificate (crypto.load_public_key's rules).
function _M.public_key(pem, algs)
  if type(pem) ~= "string" then
    return nil, "public key must be a PEM string"
  end
  local pkey, err = crypto.load_public_key(pem)
  if not pkey then
    return nil, err
  end
  return check_restriction({ kind = "public", pkey = pkey, algs = alg_set(algs) }, algs)
end

-- jwt.jwk_key(jwk) -> key | nil, err. A JWK as a decoded table. Symmetric
-- ("oct") keys are refused: a key set is a public document, and accepting
-- one would turn public text into an HMAC secret. Encryption keys
-- (use = "enc") are refused too. A JWK `alg` restricts the key to it.
function _M.jwk_key(jwk)
  if type(jwk) ~= "table" then
    return nil, "JWK is not an object"
  end
  if jwk.kty == "oct" then
    return nil, "symmetric JWK (kty oct) not accepted in a key set"
  end
  if jwk.use ~= nil and jwk.use ~= "sig" then
    return nil, "JWK use is not \"sig\""
  end
  if jwk.alg ~= nil and (type(jwk.alg) ~= "string" or not ALGS[jwk.alg]) then
    return nil, "unsupported JWK alg " .. tostring(jwk.alg)
  end
  local pkey, err = crypto.load_jwk(jwk)
  if not pkey then
    return nil, err
  end
  return check_restriction({ kind = "public", pkey = pkey, algs = alg_set(jwk.alg) }, jwk.alg)
end

-- jwt.parse_jwks(text) -> keys, skipped | nil, err. keys: kid -> key.
-- skipped: a list of "kid: reason" for members that cannot be used (other
-- key types, no kid, duplicate kid); they are left out, not fatal, because
-- identity providers publish keys for other purposes next to theirs. A key
-- set with no usable key at all is an error.
function _M.parse_jwks(text)
  if type(text) ~= "string" then
    return nil, "key set is not a string"
  end
  local doc = json_decode(text)
  if type(doc) ~= "table" or type(doc.keys) ~= "table" then
    return nil, "not a JWK set (no \"keys\" list)"
  end
  local keys, skipped, n = {}, {}, 0
  for i, jwk in ipairs(doc.keys) do
    local kid = type(jwk) == "table" and jwk.kid or nil
    if type(kid) ~= "string" or kid == "" then
      skipped[#skipped + 1] = "keys[" .. (i - 1) .. "]: no kid"
    elseif keys[kid] then
      -- Two keys, one kid: which one a token means is ambiguous; use neither.
      keys[kid] = false
      skipped[#skipped + 1] = kid .. ": duplicate kid"
    elseif keys[kid] == nil then
      local key, err = _M.jwk_key(jwk)
      if key then
        keys[kid] = key
        n = n + 1
      else
        skipped[#skipped + 1] = kid .. ": " .. err
      end
    end
  end
  for kid, key in pairs(keys) do
    if key == false then
      keys[kid] = nil
      n = n - 1
    end
  end
  if n <= 0 then
    return nil, "no usable key in the key set" .. (#skipped > 0 and (" (" .. skipped[1] .. ")") or "")
  end
  return keys, skipped
end

------------------------------------------------------------------------------
-- decoding
------------------------------------------------------------------------------

-- A JSON object, not an array, string or number. cjson decodes `[]` and
-- `{}` to the same empty table, so the text decides.
local function decode_object(b64, what)
  local text = b64u_decode(b64)
  if text == nil then
    return nil, what .. ": malformed base64url"
  end
  local first = find(text, "[^ \t\r\n]")
  if first == nil or byte(text, first) ~= 123 then   -- "{"
    return nil, what .. ": not a JSON object"
  end
  local obj = json_decode(text)
  if type(obj) ~= "table" then
    return nil, what .. ": bad JSON"
  end
  return obj
end

-- jwt.decode(token) -> jwt | nil, err. Checks the shape only (no
-- signature, no claims):
--   jwt = { header = {...}, claims = {...}, alg = "RS256", kid = "..." | nil,
--           signing_input = "<h>.<p>", signature = raw bytes }
-- Refused: empty or over MAX_TOKEN_BYTES, not exactly three segments (JWE
-- has five), malformed base64url, non-object or invalid JSON, alg missing,
-- and any `crit` header (RFC 7515 4.1.11: we implement no extension, so a
-- token that needs one must fail).
function _M.decode(token)
  if type(token) ~= "string" or token == "" then
    return nil, "empty token"
  end
  if #token > _M.MAX_TOKEN_BYTES then
    return nil, "token too large (" .. #token .. " bytes)"
  end
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if d2 == nil or find(token, ".", d2 + 1, true) then
    return nil, "not a JWS compact serialization"
  end
  local header, err = decode_object(sub(token, 1, d1 - 1), "header")
  if not header then
    return nil, err
  end
  local alg = header.alg
  if type(alg) ~= "string" then
    return nil, "header: alg missing"
  end
  if header.crit ~= nil then
    return nil, "header: crit not supported"
  end
  local kid = header.kid
  if kid ~= nil and type(kid) ~= "string" then
    return nil, "header: kid is not a string"
  end
  local claims
  claims, err = decode_object(sub(token, d1 + 1, d2 - 1), "payload")
  if not claims then
    return nil, err
  end
  local sig = b64u_decode(sub(token, d2 + 1))
  if sig == nil then
    return nil, "signature: malformed base64url"
  end
  return {
    header = header, claims = claims, alg = alg, kid = kid,
    signing_input = sub(token, 1, d2 - 1), signature = sig,
  }
end

------------------------------------------------------------------------------
-- signature
------------------------------------------------------------------------------

-- jwt.verify(jwt, key) -> true | false, err (bad signature) | nil, err (alg
-- not supported, or the key cannot verify this alg). "none" is not in ALGS,
-- so it never verifies.
function _M.verify(tok, key)
  local alg = tok.alg
  local info = ALGS[alg]
  if info == nil then
    return nil, "unsupported alg " .. tostring(alg)
  end
  if not key_fits(key, alg) then
    return nil, "key cannot verify " .. alg
  end
  local family, msg, sig = info.family, tok.signing_input, tok.signature
  local ok, err
  if family == "HS" then
    ok, err = crypto.verify_hmac(info.hash, key.secret, msg, sig)
  elseif family == "RS" then
    ok, err = crypto.verify_rsa_pkcs1(key.pkey, info.hash, msg, sig)
  elseif family == "PS" then
    ok, err = crypto.verify_rsa_pss(key.pkey, info.hash, msg, sig)
  elseif family == "ES" then
    ok, err = crypto.verify_ecdsa_jose(key.pkey, info.hash, msg, sig)
  else
    ok, err = crypto.verify_ed25519(key.pkey, msg, sig)
  end
  if ok then
    return true
  end
  if ok == nil then
    return nil, err
  end
  return false, "bad signature"
end

------------------------------------------------------------------------------
-- claims
------------------------------------------------------------------------------

-- A NumericDate (RFC 7519 2): a finite JSON number. nil when absent.
local function numeric_date(claims, name)
  local v = claims[name]
  if v == nil then
    return nil
  end
  if type(v) ~= "number" or v ~= v or v == huge or v == -huge then
    return nil, name .. " is not a number"
  end
  return v
end

-- jwt.times(claims) -> exp, nbf (numbers or nil) | nil, nil, err when a
-- date claim (exp, nbf, iat) is present but not a number.
function _M.times(claims)
  local exp, err = numeric_date(claims, "exp")
  if err then
    return nil, nil, err
  end
  local nbf
  nbf, err = numeric_date(claims, "nbf")
  if err then
    return nil, nil, err
  end
  local _
  _, err = numeric_date(claims, "iat")
  if err then
    return nil, nil, err
  end
  return exp, nbf
end

-- jwt.check_times(exp, nbf, now, leeway) -> true | nil, err. The token is
-- valid while now < exp + leeway and now >= nbf - leeway (RFC 7519 4.1.4-5).
-- Cheap on purpose: cached tokens run it on every request.
local function check_times(exp, nbf, now, leeway)
  if exp and now >= exp + leeway then
    return nil, "token expired"
  end
  if nbf and now < nbf - leeway then
    return nil, "token not yet valid"
  end
  return true
end
_M.check_times = check_times

-- Whether claim value v (a string or a list of strings) names one of the
-- strings in set.
local function matches(v, set)
  if type(v) == "string" then
    return set[v] == true
  end
  if type(v) == "table" then
    for _, x in ipairs(v) do
      if type(x) == "string" and set[x] == true then
        return true
      end
    end
  end
  return false
end

-- jwt.compile_claim_rules(opts) -> rules: the per-config half of
-- check_claims, built once. opts = { leeway_s, issuer (string or list),
-- audience (string or list), required_claims (list) }.
function _M.compile_claim_rules(opts)
  opts = opts or {}
  local function set_of(v)
    if v == nil or v == null then
      return nil
    end
    local s = {}
    if type(v) == "string" then
      s[v] = true
    else
      for _, x in ipairs(v) do
        s[x] = true
      end
    end
    return s
  end
  return {
    leeway = opts.leeway_s or 0,
    issuers = set_of(opts.issuer),
    audiences = set_of(opts.audience),
    required = opts.required_claims or {},
  }
end

-- jwt.check_claims(claims, rules, now) -> true, exp, nbf | nil, err. rules
-- from compile_claim_rules. Also returns the token's exp and nbf (either
-- may be nil) so a caller caching the token can re-check times later.
function _M.check_claims(claims, rules, now)
  local exp, nbf, err = _M.times(claims)
  if err then
    return nil, err
  end
  local ok
  ok, err = check_times(exp, nbf, now, rules.leeway)
  if not ok then
    return nil, err
  end
  if rules.issuers and not (type(claims.iss) == "string" and rules.issuers[claims.iss]) then
    return nil, "issuer not accepted"
  end
  if rules.audiences and not matches(claims.aud, rules.audiences) then
    return nil, "audience not accepted"
  end
  local required = rules.required
  for i = 1, #required do
    local v = claims[required[i]]
    if v == nil or v == null then
      return nil, "required claim " .. required[i] .. " missing"
    end
  end
  return true, exp, nbf
end

return _M
