-- tollgate.crypto: the primitives JWT and key authentication sit on, over
-- OpenSSL 3 (libcrypto.so.3) through the LuaJIT FFI: SHA-2 digests, HMAC,
-- base64 / base64url, constant-time comparison, random bytes, public keys
-- from PEM or JWK, and signature verification for the JWA algorithm families
-- (RSASSA-PKCS1-v1_5, RSASSA-PSS, ECDSA in JOSE r||s form, Ed25519).
--
-- The hot paths (HMAC for HS256, verify for RS/PS/ES/EdDSA) run once per
-- request, so everything that can be done once is done at load time:
-- digests and the HMAC algorithm are fetched from the provider once, one
-- EVP_MD_CTX and one EVP_MAC_CTX per hash are reused for every call (the MAC
-- context keeps its key schedule while the same secret comes back), a key
-- object owns one EVP_MD_CTX per (padding, hash) it is used with, which is
-- re-initialised, not re-created, per verification, and scratch buffers are
-- module-level. What is left per call is the Lua string holding a result.
-- Keys are parsed once by the caller and cached with the config (house
-- style 18); they are freed by the GC.
--
-- Error contract (house style): `value` or `nil, err` for expected failures;
-- verify functions return `true`, or `false, err` when the signature is bad
-- (anything derived from the signature bytes), or `nil, err` when the input is
-- unusable (wrong key type, unknown hash, key too small); wrong argument types
-- raise with error(msg, 2).
--
-- Every failing OpenSSL call clears the thread's error queue before
-- returning: the C core shares that queue with its TLS code, where a stale
-- entry would make SSL_get_error() misreport a later connection.
--
-- Limits: one LuaJIT VM per worker and no yields inside these functions, so
-- the shared contexts and buffers are never used by two callers at once.

local ffi = require "ffi"
local bit = require "bit"

local ffi_new, ffi_string, ffi_cast, ffi_gc = ffi.new, ffi.string, ffi.cast, ffi.gc
local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift
local type, error, tostring, tonumber, pairs, setmetatable, getmetatable =
      type, error, tostring, tonumber, pairs, setmetatable, getmetatable
local floor = math.floor
local sub, char, byte = string.sub, string.char, string.byte

ffi.cdef[[
typedef struct evp_md_st EVP_MD;
typedef struct evp_md_ctx_st EVP_MD_CTX;
typedef struct evp_mac_st EVP_MAC;
typedef struct evp_mac_ctx_st EVP_MAC_CTX;
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;
typedef struct ossl_param_bld_st OSSL_PARAM_BLD;
typedef struct bio_st BIO;
typedef struct bignum_st BIGNUM;
typedef struct x509_st X509;

unsigned long ERR_get_error(void);
void ERR_clear_error(void);
void ERR_error_string_n(unsigned long e, char *buf, size_t len);
void CRYPTO_free(void *ptr, const char *file, int line);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
int RAND_bytes(unsigned char *buf, int num);

EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *ctx, const char *algorithm, const char *properties);
void EVP_MD_free(EVP_MD *md);
EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
int EVP_DigestInit_ex2(EVP_MD_CTX *ctx, const EVP_MD *type, const void *params);
int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt);
int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s);

EVP_MAC *EVP_MAC_fetch(OSSL_LIB_CTX *libctx, const char *algorithm, const char *properties);
void EVP_MAC_free(EVP_MAC *mac);
EVP_MAC_CTX *EVP_MAC_CTX_new(EVP_MAC *mac);
void EVP_MAC_CTX_free(EVP_MAC_CTX *ctx);
int EVP_MAC_CTX_set_params(EVP_MAC_CTX *ctx, const void *params);
int EVP_MAC_init(EVP_MAC_CTX *ctx, const unsigned char *key, size_t keylen, const void *params);
int EVP_MAC_update(EVP_MAC_CTX *ctx, const unsigned char *data, size_t datalen);
int EVP_MAC_final(EVP_MAC_CTX *ctx, unsigned char *out, size_t *outl, size_t outsize);

BIO *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(BIO *a);
int PEM_read_bio(BIO *bp, char **name, char **header, unsigned char **data, long *len);
EVP_PKEY *d2i_PUBKEY(EVP_PKEY **a, const unsigned char **pp, long length);
EVP_PKEY *d2i_PublicKey(int type, EVP_PKEY **a, const unsigned char **pp, long length);
X509 *d2i_X509(X509 **a, const unsigned char **in, long len);
EVP_PKEY *X509_get_pubkey(X509 *x);
void X509_free(X509 *a);

void EVP_PKEY_free(EVP_PKEY *pkey);
int EVP_PKEY_is_a(const EVP_PKEY *pkey, const char *name);
int EVP_PKEY_get_bits(const EVP_PKEY *pkey);
int EVP_PKEY_get_utf8_string_param(const EVP_PKEY *pkey, const char *key_name,
                                   char *str, size_t max_buf_sz, size_t *out_sz);
EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_name(OSSL_LIB_CTX *libctx, const char *name,
                                         const char *propquery);
EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_pkey(OSSL_LIB_CTX *libctx, EVP_PKEY *pkey,
                                         const char *propquery);
void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx);
int EVP_PKEY_fromdata_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_fromdata(EVP_PKEY_CTX *ctx, EVP_PKEY **ppkey, int selection, void *params);
int EVP_PKEY_public_check(EVP_PKEY_CTX *ctx);

OSSL_PARAM_BLD *OSSL_PARAM_BLD_new(void);
void OSSL_PARAM_BLD_free(OSSL_PARAM_BLD *bld);
void *OSSL_PARAM_BLD_to_param(OSSL_PARAM_BLD *bld);
void OSSL_PARAM_free(void *p);
int OSSL_PARAM_BLD_push_BN(OSSL_PARAM_BLD *bld, const char *key, const BIGNUM *bn);
int OSSL_PARAM_BLD_push_utf8_string(OSSL_PARAM_BLD *bld, const char *key,
                                    const char *buf, size_t bsize);
int OSSL_PARAM_BLD_push_octet_string(OSSL_PARAM_BLD *bld, const char *key,
                                     const void *buf, size_t bsize);
BIGNUM *BN_bin2bn(const unsigned char *s, int len, BIGNUM *ret);
void BN_free(BIGNUM *a);
int BN_is_odd(const BIGNUM *a);
int BN_is_one(const BIGNUM *a);
int EVP_PKEY_get_bn_param(const EVP_PKEY *pkey, const char *key_name, BIGNUM **bn);

int EVP_DigestVerifyInit_ex(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const char *mdname,
                            OSSL_LIB_CTX *libctx, const char *props, EVP_PKEY *pkey,
                            const void *params);
int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen);
]]

-- OSSL_PARAM is a struct with a body, which LuaJIT refuses to declare twice:
-- guard it so that re-requiring this module (config reload clears
-- package.loaded) does not fail. The layout is OpenSSL 3's struct ossl_param_st.
if not pcall(ffi.typeof, "tg_ossl_param_t") then
  ffi.cdef[[
  typedef struct {
    const char *key; unsigned int data_type; void *data;
    size_t data_size; size_t return_size;
  } tg_ossl_param_t;
  ]]
end

-- Inside the tollgate binary libcrypto is already mapped and dlopen() returns
-- the same handle; under plain luajit this loads it.
local C
do
  local ok, lib = pcall(ffi.load, "libcrypto.so.3")
  if not ok then
    ok, lib = pcall(ffi.load, "crypto")
  end
  if not ok then
    error("tollgate.crypto: cannot load libcrypto: " .. tostring(lib))
  end
  C = lib
end

local _M = { _VERSION = "0.1.0" }

-- Named bounds (house style: every buffer and input bounded, with a reason).
local SCRATCH_SIZE = 16384       -- base64 / hex outputs up to this reuse one buffer
local MAX_PEM = 65536            -- a public key or a certificate is a few KB
local MAX_RSA_BITS = 8192        -- verify cost grows with the modulus: cap what a JWKS can make us do
local MIN_RSA_BITS = 2048        -- RFC 7518 3.3 / 3.5: smaller RSA keys MUST NOT be used
local MAX_RSA_E_BYTES = 8        -- OpenSSL refuses e > 64 bits for large moduli anyway
local MAX_RANDOM = 1048576       -- random_bytes() is for tokens and nonces, not bulk data

local OSSL_PARAM_INTEGER = 1
local OSSL_PARAM_UTF8_STRING = 4
local EVP_PKEY_RSA = 6
local EVP_PKEY_PUBLIC_KEY = 0x86  -- OSSL_KEYMGMT_SELECT_PUBLIC_KEY | ..._ALL_PARAMETERS

local u8arr = ffi.typeof("uint8_t[?]")

-- Strings referenced from C structures (OSSL_PARAM keys and values) must stay
-- alive as long as the structures: they are anchored here for the life of
-- the module.
local anchors = {}

local errbuf = ffi_new("char[256]")

-- Consume the OpenSSL error queue into one message (and leave it empty).
local function ossl_err(what)
  local code = C.ERR_get_error()
  C.ERR_clear_error()
  if code == 0 then
    return what
  end
  C.ERR_error_string_n(code, errbuf, 256)
  return what .. ": " .. ffi_string(errbuf)
end

------------------------------------------------------------------------------
-- scratch buffer
------------------------------------------------------------------------------

local scratch = ffi_new(u8arr, SCRATCH_SIZE)

-- A buffer of at least n bytes: the shared one, or for rare large inputs a
-- fresh one that the GC reclaims (so a one-off 10 MB decode does not pin
-- 10 MB for the life of the worker).
local function buffer(n)
  if n <= SCRATCH_SIZE then
    return scratch
  end
  return ffi_new(u8arr, n)
end

------------------------------------------------------------------------------
-- hashes and HMAC: fetched once, one reusable context per hash
------------------------------------------------------------------------------

local function param_utf8(p, key, value)
  anchors[#anchors + 1] = key
  anchors[#anchors + 1] = value
  p.key = key
  p.data_type = OSSL_PARAM_UTF8_STRING
  p.data = ffi_cast("void *", value)
  p.data_size = #value
end

local function param_int(p, key, value)
  local box = ffi_new("int[1]", value)
  anchors[#anchors + 1] = key
  anchors[#anchors + 1] = box
  p.key = key
  p.data_type = OSSL_PARAM_INTEGER
  p.data = box
  p.data_size = ffi.sizeof("int")
end

-- Per hash: the fetched EVP_MD, a reusable EVP_MD_CTX, a reusable EVP_MAC_CTX
-- already set to that digest, and the last HMAC key used with it.
local hashes = {}

do
  -- Everything fetched or created here lives as long as this module
  -- instance; the finalisers matter only when a config reload drops the
  -- module and requires it again.
  local hmac_alg = C.EVP_MAC_fetch(nil, "HMAC", nil)
  if hmac_alg == nil then
    error(ossl_err("tollgate.crypto: EVP_MAC_fetch(HMAC)"))
  end
  hmac_alg = ffi_gc(hmac_alg, C.EVP_MAC_free)

  for name, spec in pairs({ sha256 = { "SHA2-256", 32 },
                            sha384 = { "SHA2-384", 48 },
                            sha512 = { "SHA2-512", 64 } }) do
    local ossl_name, size = spec[1], spec[2]
    local md = C.EVP_MD_fetch(nil, ossl_name, nil)
    if md == nil then
      error(ossl_err("tollgate.crypto: EVP_MD_fetch(" .. ossl_name .. ")"))
    end
    md = ffi_gc(md, C.EVP_MD_free)
    local md_ctx = C.EVP_MD_CTX_new()
    local mac_ctx = C.EVP_MAC_CTX_new(hmac_alg)  -- holds its own reference to HMAC
    if md_ctx == nil or mac_ctx == nil then
      error("tollgate.crypto: out of memory")
    end
    md_ctx = ffi_gc(md_ctx, C.EVP_MD_CTX_free)
    mac_ctx = ffi_gc(mac_ctx, C.EVP_MAC_CTX_free)
    local params = ffi_new("tg_ossl_param_t[2]")
    param_utf8(params[0], "digest", ossl_name)
    if C.EVP_MAC_CTX_set_params(mac_ctx, params) ~= 1 then
      error(ossl_err("tollgate.crypto: EVP_MAC_CTX_set_params"))
    end

    -- Verification parameters, built once: PKCS#1 v1.5 padding, and PSS
    -- with MGF1 over the same hash (RFC 7518 3.5).
    local pkcs1 = ffi_new("tg_ossl_param_t[2]")
    param_utf8(pkcs1[0], "pad-mode", "pkcs1")

    hashes[name] = {
      name = name, ossl_name = ossl_name, size = size,
      md = md, md_ctx = md_ctx, mac_ctx = mac_ctx,
      last_key = nil,          -- the key mac_ctx is currently keyed with
      pkcs1_params = pkcs1,
      pkcs1_variant = "pkcs1-" .. name,
      pss = {},                -- salt length -> { params, variant }, built on first use
    }
  end
end

local function pss_variant(h, salt_len)
  local v = h.pss[salt_len]
  if v == nil then
    local p = ffi_new("tg_ossl_param_t[4]")
    param_utf8(p[0], "pad-mode", "pss")
    param_utf8(p[1], "mgf1-digest", h.ossl_name)
    param_int(p[2], "saltlen", salt_len)
    v = { params = p, variant = "pss-" .. h.name .. "-" .. salt_len }
    h.pss[salt_len] = v
  end
  return v
end

local digest_out = ffi_new("unsigned char[64]")
local digest_len = ffi_new("unsigned int[1]")
local mac_len = ffi_new("size_t[1]")

-- Argument checks raise at the caller of the public function: `level` is
-- how many frames up that is from here (3 when called from it directly).
local function check_string(v, what, fname, level)
  if type(v) ~= "string" then
    error(fname .. ": " .. what .. " must be a string, got " .. type(v), level or 3)
  end
end

local function lookup_hash(hash_name, fname, level)
  if type(hash_name) ~= "string" then
    error(fname .. ": hash name must be a string, got " .. type(hash_name), level or 3)
  end
  return hashes[hash_name]
end

local function digest(h, s)
  local ctx = h.md_ctx
  if C.EVP_DigestInit_ex2(ctx, h.md, nil) ~= 1
     or C.EVP_DigestUpdate(ctx, s, #s) ~= 1
     or C.EVP_DigestFinal_ex(ctx, digest_out, digest_len) ~= 1 then
    return nil, ossl_err("digest " .. h.name)
  end
  return ffi_string(digest_out, digest_len[0])
end

local function hmac(h, key, msg)
  local ctx = h.mac_ctx
  local rc
  -- EVP_MAC_init with a NULL key resets the context to the key it already
  -- holds (the precomputed inner/outer pads), which saves re-hashing the
  -- key on every request when the same secret verifies many tokens. Lua
  -- strings are interned, so this comparison is a pointer comparison.
  if h.last_key == key then
    rc = C.EVP_MAC_init(ctx, nil, 0, nil)
  else
    h.last_key = nil
    rc = C.EVP_MAC_init(ctx, key, #key, nil)
  end
  if rc ~= 1 or C.EVP_MAC_update(ctx, msg, #msg) ~= 1
     or C.EVP_MAC_final(ctx, digest_out, mac_len, 64) ~= 1 then
    h.last_key = nil
    return nil, ossl_err("hmac " .. h.name)
  end
  h.last_key = key
  return ffi_string(digest_out, mac_len[0])
end

local HEX = ffi_new("const char[17]", "0123456789abcdef")

local function to_hex(s)
  local n = #s
  local out = buffer(2 * n)
  for i = 1, n do
    local b = byte(s, i)
    out[2 * i - 2] = HEX[rshift(b, 4)]
    out[2 * i - 1] = HEX[band(b, 15)]
  end
  return ffi_string(out, 2 * n)
end

function _M.sha256(s)
  check_string(s, "input", "sha256")
  return digest(hashes.sha256, s)
end

function _M.sha384(s)
  check_string(s, "input", "sha384")
  return digest(hashes.sha384, s)
end

function _M.sha512(s)
  check_string(s, "input", "sha512")
  return digest(hashes.sha512, s)
end

function _M.sha256_hex(s)
  check_string(s, "input", "sha256_hex")
  local d, err = digest(hashes.sha256, s)
  if not d then
    return nil, err
  end
  return to_hex(d)
end

function _M.to_hex(s)
  check_string(s, "input", "to_hex")
  return to_hex(s)
end

-- hmac(hash_name, key, msg) -> raw tag, or nil, err for an unknown hash.
function _M.hmac(hash_name, key, msg)
  local h = lookup_hash(hash_name, "hmac")
  check_string(key, "key", "hmac")
  check_string(msg, "message", "hmac")
  if not h then
    return nil, "unsupported hash: " .. hash_name
  end
  return hmac(h, key, msg)
end

function _M.hmac_sha256(key, msg)
  check_string(key, "key", "hmac_sha256")
  check_string(msg, "message", "hmac_sha256")
  return hmac(hashes.sha256, key, msg)
end

function _M.hmac_sha384(key, msg)
  check_string(key, "key", "hmac_sha384")
  check_string(msg, "message", "hmac_sha384")
  return hmac(hashes.sha384, key, msg)
end

function _M.hmac_sha512(key, msg)
  check_string(key, "key", "hmac_sha512")
  check_string(msg, "message", "hmac_sha512")
  return hmac(hashes.sha512, key, msg)
end

------------------------------------------------------------------------------
-- constant-time comparison and randomness
------------------------------------------------------------------------------

-- Equal lengths: CRYPTO_memcmp reads every byte whatever the content. Unequal
-- lengths: false, after the same amount of work over `a`, so the time
-- depends only on the lengths, never on where the contents differ.
local function constant_time_eq(a, b)
  local n = #a
  if n ~= #b then
    C.CRYPTO_memcmp(a, a, n)
    return false
  end
  return C.CRYPTO_memcmp(a, b, n) == 0
end

function _M.constant_time_eq(a, b)
  check_string(a, "first argument", "constant_time_eq")
  check_string(b, "second argument", "constant_time_eq")
  return constant_time_eq(a, b)
end

-- verify_hmac(hash_name, key, msg, tag) -> true | false, err | nil, err.
-- The tag must be the full digest length: JWS (RFC 7518 3.2) has no
-- truncated HMAC, so a shorter tag is a bad signature even if it is a
-- prefix of the right one.
function _M.verify_hmac(hash_name, key, msg, tag)
  local h = lookup_hash(hash_name, "verify_hmac")
  check_string(key, "key", "verify_hmac")
  check_string(msg, "message", "verify_hmac")
  check_string(tag, "tag", "verify_hmac")
  if not h then
    return nil, "unsupported hash: " .. hash_name
  end
  local expected, err = hmac(h, key, msg)
  if not expected then
    return nil, err
  end
  if #tag ~= h.size then
    return false, "tag length mismatch"
  end
  if not constant_time_eq(expected, tag) then
    return false, "signature mismatch"
  end
  return true
end

function _M.random_bytes(n)
  if type(n) ~= "number" or n < 0 or n ~= floor(n) then
    error("random_bytes: n must be a non-negative integer", 2)
  end
  if n > MAX_RANDOM then
    error("random_bytes: n must be at most " .. MAX_RANDOM, 2)
  end
  if n == 0 then
    return ""
  end
  local buf = buffer(n)
  if C.RAND_bytes(buf, n) ~= 1 then
    return nil, ossl_err("RAND_bytes")
  end
  return ffi_string(buf, n)
end

------------------------------------------------------------------------------
-- base64 and base64url
--
-- Pure Lua over FFI byte pointers: one pass, linear, one result string.
-- Decoders are strict, because a JWT is compared and cached as a string and
-- every decoded value must have exactly one encoding:
--   * base64url: the URL alphabet only, no padding, no whitespace; a length
--     of 1 mod 4 is impossible; the unused low bits of the last character
--     must be zero (RFC 4648 3.5 lets a decoder reject them; we do, so
--     "AB" and "AC" cannot both decode to the same byte).
--   * base64: the standard alphabet, padding required (length a multiple of
--     4, "=" only as the last one or two characters), same zero-bits rule.
------------------------------------------------------------------------------

local function make_alphabet(chars)
  local enc = ffi_new("uint8_t[64]")
  local dec = ffi_new("int16_t[256]")
  for i = 0, 255 do
    dec[i] = -1
  end
  for i = 0, 63 do
    local c = chars:byte(i + 1)
    enc[i] = c
    dec[c] = i
  end
  return enc, dec
end

local STD_ENC, STD_DEC = make_alphabet(
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
local URL_ENC, URL_DEC = make_alphabet(
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
local EQ = 61  -- "="

local function b64_encode(s, enc, pad)
  local n = #s
  local full = n - n % 3
  local out = buffer(floor((n + 2) / 3) * 4)
  local j = 0
  for i = 1, full, 3 do
    local x, y, z = byte(s, i, i + 2)
    local v = bor(lshift(x, 16), lshift(y, 8), z)
    out[j] = enc[rshift(v, 18)]
    out[j + 1] = enc[band(rshift(v, 12), 63)]
    out[j + 2] = enc[band(rshift(v, 6), 63)]
    out[j + 3] = enc[band(v, 63)]
    j = j + 4
  end
  local rem = n - full
  if rem == 1 then
    local v = byte(s, n)
    out[j] = enc[rshift(v, 2)]
    out[j + 1] = enc[lshift(band(v, 3), 4)]
    j = j + 2
    if pad then
      out[j], out[j + 1] = EQ, EQ
      j = j + 2
    end
  elseif rem == 2 then
    local x, y = byte(s, n - 1, n)
    local v = bor(lshift(x, 8), y)
    out[j] = enc[rshift(v, 10)]
    out[j + 1] = enc[band(rshift(v, 4), 63)]
    out[j + 2] = enc[lshift(band(v, 15), 2)]
    j = j + 3
    if pad then
      out[j] = EQ
      j = j + 1
    end
  end
  return ffi_string(out, j)
end

-- Decode the first n characters of s (no padding among them). Returns the
-- string or nil, err.
local function b64_decode(s, n, dec, what)
  local rem = n % 4
  if rem == 1 then
    return nil, "invalid " .. what .. " length"
  end
  local full = n - rem
  local out = buffer(floor(n * 3 / 4))
  local j = 0
  for i = 1, full, 4 do
    local w, x, y, z = byte(s, i, i + 3)
    local a, b, c, d = dec[w], dec[x], dec[y], dec[z]
    if bor(a, b, c, d) < 0 then
      return nil, "invalid " .. what .. " character"
    end
    local v = bor(lshift(a, 18), lshift(b, 12), lshift(c, 6), d)
    out[j] = rshift(v, 16)
    out[j + 1] = band(rshift(v, 8), 255)
    out[j + 2] = band(v, 255)
    j = j + 3
  end
  if rem == 2 then
    local w, x = byte(s, full + 1, full + 2)
    local a, b = dec[w], dec[x]
    if bor(a, b) < 0 then
      return nil, "invalid " .. what .. " character"
    end
    if band(b, 15) ~= 0 then
      return nil, "non-canonical " .. what .. " (trailing bits set)"
    end
    out[j] = bor(lshift(a, 2), rshift(b, 4))
    j = j + 1
  elseif rem == 3 then
    local w, x, y = byte(s, full + 1, full + 3)
    local a, b, c = dec[w], dec[x], dec[y]
    if bor(a, b, c) < 0 then
      return nil, "invalid " .. what .. " character"
    end
    if band(c, 3) ~= 0 then
      return nil, "non-canonical " .. what .. " (trailing bits set)"
    end
    local v = bor(lshift(a, 12), lshift(b, 6), c)
    out[j] = rshift(v, 10)
    out[j + 1] = band(rshift(v, 2), 255)
    j = j + 2
  end
  return ffi_string(out, j)
end

function _M.base64url_encode(s)
  check_string(s, "input", "base64url_encode")
  return b64_encode(s, URL_ENC, false)
end

function _M.base64url_decode(s)
  check_string(s, "input", "base64url_decode")
  return b64_decode(s, #s, URL_DEC, "base64url")
end

function _M.base64_encode(s)
  check_string(s, "input", "base64_encode")
  return b64_encode(s, STD_ENC, true)
end

function _M.base64_decode(s)
  check_string(s, "input", "base64_decode")
  local n = #s
  if n % 4 ~= 0 then
    return nil, "invalid base64 length (padding required)"
  end
  -- Strip at most two "=" at the end; any other "=" is an invalid character
  -- for the decoder below, and "x===" leaves a length of 1 mod 4.
  if n > 0 and byte(s, n) == EQ then
    n = n - 1
    if byte(s, n) == EQ then
      n = n - 1
    end
  end
  return b64_decode(s, n, STD_DEC, "base64")
end

------------------------------------------------------------------------------
-- public keys
------------------------------------------------------------------------------

-- JWA curve names, the OpenSSL group names they map to, the hash each ES*
-- algorithm pairs with (RFC 7518 3.4), the coordinate size and the group
-- order n (big-endian, coordinate-sized) for the r, s < n range check.
local CURVES = {
  ["P-256"] = { group = "prime256v1", hash = "sha256", size = 32, order =
    "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551" },
  ["P-384"] = { group = "secp384r1", hash = "sha384", size = 48, order =
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    .. "581a0db248b0a77aecec196accc52973" },
  ["P-521"] = { group = "secp521r1", hash = "sha512", size = 66, order =
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    .. "fa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409" },
}
local CURVE_BY_GROUP = {}
for name, c in pairs(CURVES) do
  c.name = name
  c.order = c.order:gsub("%x%x", function(h) return char(tonumber(h, 16)) end)
  CURVE_BY_GROUP[c.group] = c
end

-- Key objects are plain tables with this metatable; verify_* check it.
local key_mt = {}
key_mt.__tostring = function(k)
  return "tollgate.crypto key (" .. k.type .. ", " .. k.bits .. " bits"
         .. (k.curve and (", " .. k.curve) or "") .. ")"
end

local groupbuf = ffi_new("char[64]")
local size_t1 = ffi_new("size_t[1]")

local bn_out = ffi_new("BIGNUM *[1]")

local function check_rsa_exponent(pkey)
  bn_out[0] = nil
  if C.EVP_PKEY_get_bn_param(pkey, "e", bn_out) ~= 1 then
    return nil, ossl_err("RSA key without exponent")
  end
  local e = bn_out[0]
  local ok = C.BN_is_odd(e) == 1 and C.BN_is_one(e) ~= 1
  C.BN_free(e)
  if not ok then
    return nil, "RSA public exponent must be odd and greater than 1"
  end
  return true
end

-- Wrap an EVP_PKEY (ownership passes to the key object, freed by the GC).
-- Only the key types JWA verifies with are accepted: RSA (rsaEncryption, not
-- the parameter-restricted RSA-PSS key type), EC on a named NIST curve (never
-- explicit curve parameters), and Ed25519.
local function wrap_pkey(pkey)
  pkey = ffi_gc(pkey, C.EVP_PKEY_free)
  local bits = C.EVP_PKEY_get_bits(pkey)
  local key = { bits = bits, _pkey = pkey }

  if C.EVP_PKEY_is_a(pkey, "RSA") == 1 then
    if bits > MAX_RSA_BITS then
      return nil, "RSA key too large (" .. bits .. " bits, max " .. MAX_RSA_BITS .. ")"
    end
    -- OpenSSL verifies with e = 1, where the "signature" is the padded
    -- digest itself: anyone could sign. An even e is no RSA key either.
    local ok, err = check_rsa_exponent(pkey)
    if not ok then
      return nil, err
    end
    key.type = "RSA"
    key._siglen = floor((bits + 7) / 8)
  elseif C.EVP_PKEY_is_a(pkey, "EC") == 1 then
    -- RFC 5480 2.1.1: namedCurve only. OpenSSL maps explicit parameters
    -- that equal a known curve to its name, but an explicit encoding is
    -- refused outright rather than trusted to match.
    if C.EVP_PKEY_get_utf8_string_param(pkey, "encoding", groupbuf, 64, size_t1) ~= 1
       or ffi_string(groupbuf, size_t1[0]) ~= "named_curve" then
      C.ERR_clear_error()
      return nil, "EC key without a named curve (explicit parameters)"
    end
    if C.EVP_PKEY_get_utf8_string_param(pkey, "group", groupbuf, 64, size_t1) ~= 1 then
      return nil, ossl_err("EC key without a named curve")
    end
    local curve = CURVE_BY_GROUP[ffi_string(groupbuf, size_t1[0])]
    if not curve then
      return nil, "unsupported EC curve: " .. ffi_string(groupbuf, size_t1[0])
    end
    -- Decoding already rejects points off the curve; the full public check
    -- is cheap once per key and keeps both load paths equally strict.
    local pctx = C.EVP_PKEY_CTX_new_from_pkey(nil, pkey, nil)
    if pctx == nil then
      return nil, ossl_err("EVP_PKEY_CTX_new_from_pkey")
    end
    local ok = C.EVP_PKEY_public_check(pctx)
    C.EVP_PKEY_CTX_free(pctx)
    if ok ~= 1 then
      return nil, ossl_err("invalid EC public key")
    end
    key.type = "EC"
    key.curve = curve.name
    key._ec = curve
  elseif C.EVP_PKEY_is_a(pkey, "ED25519") == 1 then
    key.type = "ED25519"
    key.curve = "Ed25519"
  else
    return nil, "unsupported key type"
  end

  -- Verification contexts, one per variant, created on first use.
  key._ctxs = {}
  return setmetatable(key, key_mt)
end

local pem_name = ffi_new("char *[1]")
local pem_header = ffi_new("char *[1]")
local pem_data = ffi_new("unsigned char *[1]")
local pem_len = ffi_new("long[1]")
local der_ptr = ffi_new("const unsigned char *[1]")

-- Parse DER of the given PEM label into an EVP_PKEY (or nil, err). The whole
-- DER must be consumed: trailing bytes are an error, not ignored.
local function pkey_from_der(label, data, len)
  der_ptr[0] = data
  local pkey
  if label == "PUBLIC KEY" then
    pkey = C.d2i_PUBKEY(nil, der_ptr, len)
  elseif label == "RSA PUBLIC KEY" then
    pkey = C.d2i_PublicKey(EVP_PKEY_RSA, nil, der_ptr, len)
  elseif label == "CERTIFICATE" then
    local x509 = C.d2i_X509(nil, der_ptr, len)
    if x509 == nil then
      return nil, ossl_err("invalid certificate")
    end
    if der_ptr[0] ~= data + len then
      C.X509_free(x509)
      return nil, "trailing data after certificate"
    end
    pkey = C.X509_get_pubkey(x509)
    C.X509_free(x509)
    if pkey == nil then
      return nil, ossl_err("certificate public key")
    end
    return pkey
  else
    return nil, "unsupported PEM type: " .. label
  end
  if pkey == nil then
    return nil, ossl_err("invalid " .. label)
  end
  if der_ptr[0] ~= data + len then
    C.EVP_PKEY_free(pkey)
    return nil, "trailing data after " .. label
  end
  return pkey
end

-- load_public_key(pem) -> key, or nil, err. Accepts the first PEM block of
-- "PUBLIC KEY" (SPKI: RSA, EC, Ed25519), "RSA PUBLIC KEY" (PKCS#1) or
-- "CERTIFICATE" (its subject public key; the certificate itself is not
-- validated: it is configuration, trusted like a bare key would be).
function _M.load_public_key(pem)
  check_string(pem, "pem", "load_public_key")
  if #pem > MAX_PEM then
    return nil, "PEM too large"
  end
  local bio = C.BIO_new_mem_buf(pem, #pem)
  if bio == nil then
    return nil, ossl_err("BIO_new_mem_buf")
  end
  local ok = C.PEM_read_bio(bio, pem_name, pem_header, pem_data, pem_len)
  C.BIO_free(bio)
  if ok ~= 1 then
    return nil, ossl_err("no PEM block found")
  end
  local label = ffi_string(pem_name[0])
  local encrypted = pem_header[0][0] ~= 0
  local pkey, err
  if encrypted then
    err = "encrypted PEM is not supported"
  else
    pkey, err = pkey_from_der(label, pem_data[0], pem_len[0])
  end
  C.CRYPTO_free(pem_name[0], "crypto.lua", 0)
  C.CRYPTO_free(pem_header[0], "crypto.lua", 0)
  C.CRYPTO_free(pem_data[0], "crypto.lua", 0)
  if not pkey then
    return nil, err
  end
  return wrap_pkey(pkey)
end

-- JWK loading builds the key with EVP_PKEY_fromdata from OSSL_PARAMs rather
-- than hand-assembling a DER SubjectPublicKeyInfo: no ASN.1 encoder of our
-- own to get wrong (lengths, OIDs, sign bytes), OpenSSL validates the
-- components itself (the EC point must be on the curve), and all three key
-- types go through one code path.

local function jwk_member(jwk, name, max_bytes)
  local v = jwk[name]
  if v == nil then
    return nil, "JWK member '" .. name .. "' missing"
  end
  if type(v) ~= "string" then
    return nil, "JWK member '" .. name .. "' must be a string"
  end
  -- Bound before decoding: 4 characters per 3 bytes.
  if #v > floor((max_bytes * 4 + 2) / 3) then
    return nil, "JWK member '" .. name .. "' too large"
  end
  local raw, err = b64_decode(v, #v, URL_DEC, "base64url")
  if not raw then
    return nil, "JWK member '" .. name .. "': " .. err
  end
  if #raw == 0 then
    return nil, "JWK member '" .. name .. "' empty"
  end
  return raw
end

local function strip_zeros(s)
  local i = 1
  while i < #s and s:byte(i) == 0 do
    i = i + 1
  end
  return sub(s, i)
end

local function pkey_from_params(keytype, push)
  local bld = C.OSSL_PARAM_BLD_new()
  if bld == nil then
    return nil, "out of memory"
  end
  local bns = {}
  local ok, err = push(bld, bns)
  local params = ok and C.OSSL_PARAM_BLD_to_param(bld) or nil
  C.OSSL_PARAM_BLD_free(bld)
  for i = 1, #bns do
    C.BN_free(bns[i])
  end
  if not ok then
    return nil, err
  end
  if params == nil then
    return nil, ossl_err("OSSL_PARAM_BLD_to_param")
  end
  local pctx = C.EVP_PKEY_CTX_new_from_name(nil, keytype, nil)
  local out = ffi_new("EVP_PKEY *[1]")
  local rc = pctx ~= nil and C.EVP_PKEY_fromdata_init(pctx) == 1
             and C.EVP_PKEY_fromdata(pctx, out, EVP_PKEY_PUBLIC_KEY, params) == 1
  if pctx ~= nil then
    C.EVP_PKEY_CTX_free(pctx)
  end
  C.OSSL_PARAM_free(params)
  if not rc then
    return nil, ossl_err("invalid " .. keytype .. " JWK")
  end
  return out[0]
end

local function push_bn(bld, bns, name, bytes)
  local bn = C.BN_bin2bn(bytes, #bytes, nil)
  if bn == nil then
    return nil, "out of memory"
  end
  bns[#bns + 1] = bn
  if C.OSSL_PARAM_BLD_push_BN(bld, name, bn) ~= 1 then
    return nil, ossl_err("OSSL_PARAM_BLD_push_BN")
  end
  return true
end

local function push_octets(bld, name, bytes)
  if C.OSSL_PARAM_BLD_push_octet_string(bld, name, bytes, #bytes) ~= 1 then
    return nil, ossl_err("OSSL_PARAM_BLD_push_octet_string")
  end
  return true
end

local jwk_loaders = {}

function jwk_loaders.RSA(jwk)
  -- n may carry one leading zero octet (some producers emit it even though
  -- RFC 7518 6.3.1.1 says minimal); more than the size cap is refused.
  local n, err = jwk_member(jwk, "n", MAX_RSA_BITS / 8 + 1)
  if not n then
    return nil, err
  end
  local e
  e, err = jwk_member(jwk, "e", MAX_RSA_E_BYTES)
  if not e then
    return nil, err
  end
  n, e = strip_zeros(n), strip_zeros(e)
  if #n > MAX_RSA_BITS / 8 then
    return nil, "JWK member 'n' too large"
  end
  if n == "\0" or e == "\0" then
    return nil, "JWK RSA modulus or exponent is zero"
  end
  return pkey_from_params("RSA", function(bld, bns)
    local ok, perr = push_bn(bld, bns, "n", n)
    if ok then
      ok, perr = push_bn(bld, bns, "e", e)
    end
    return ok, perr
  end)
end

function jwk_loaders.EC(jwk)
  local crv = jwk.crv
  local curve = type(crv) == "string" and CURVES[crv]
  if not curve then
    return nil, "unsupported JWK EC curve: " .. tostring(crv)
  end
  -- RFC 7518 6.2.1.2/3: x and y are exactly the coordinate size.
  local x, err = jwk_member(jwk, "x", curve.size)
  if not x then
    return nil, err
  end
  local y
  y, err = jwk_member(jwk, "y", curve.size)
  if not y then
    return nil, err
  end
  if #x ~= curve.size or #y ~= curve.size then
    return nil, "JWK EC coordinates must be " .. curve.size .. " bytes for " .. crv
  end
  local point = "\4" .. x .. y
  return pkey_from_params("EC", function(bld)
    if C.OSSL_PARAM_BLD_push_utf8_string(bld, "group", curve.group, #curve.group) ~= 1 then
      return nil, ossl_err("OSSL_PARAM_BLD_push_utf8_string")
    end
    return push_octets(bld, "pub", point)
  end)
end

function jwk_loaders.OKP(jwk)
  if jwk.crv ~= "Ed25519" then
    return nil, "unsupported JWK OKP curve: " .. tostring(jwk.crv)
  end
  local x, err = jwk_member(jwk, "x", 32)
  if not x then
    return nil, err
  end
  if #x ~= 32 then
    return nil, "JWK Ed25519 'x' must be 32 bytes"
  end
  return pkey_from_params("ED25519", function(bld)
    return push_octets(bld, "pub", x)
  end)
end

-- load_jwk(tbl) -> key, or nil, err. tbl is a decoded JWK (a JSON object).
-- Members other than kty/crv/n/e/x/y (kid, alg, use, ...) are left to the
-- caller.
function _M.load_jwk(jwk)
  if type(jwk) ~= "table" then
    error("load_jwk: JWK must be a table, got " .. type(jwk), 2)
  end
  local kty = jwk.kty
  local loader = type(kty) == "string" and jwk_loaders[kty]
  if not loader then
    return nil, "unsupported JWK kty: " .. tostring(kty)
  end
  local pkey, err = loader(jwk)
  if not pkey then
    return nil, err
  end
  return wrap_pkey(pkey)
end

------------------------------------------------------------------------------
-- signature verification
------------------------------------------------------------------------------

local function check_key(key, fname)
  if getmetatable(key) ~= key_mt then
    error(fname .. ": key must be a key from load_public_key/load_jwk", 4)
  end
end

-- Verify with the key's context for this variant (padding + hash). The
-- first use creates the context and initialises it with the key; later
-- uses pass a NULL key, which makes OpenSSL take its re-initialisation
-- path: no new EVP_PKEY_CTX, no signature-algorithm fetch, no new provider
-- context. One context per variant, because OpenSSL 3.0's RSA provider
-- refuses to change the digest on that path ("digest not allowed"), and so
-- every re-initialisation repeats exactly the settings of the first. If a
-- re-initialisation fails anyway, one full initialisation is tried.
local function digest_verify(key, variant, mdname, params, sig, siglen, msg)
  local ctxs = key._ctxs
  local ctx = ctxs[variant]
  local pkey = nil
  if ctx == nil then
    ctx = C.EVP_MD_CTX_new()
    if ctx == nil then
      return nil, "out of memory"
    end
    ctx = ffi_gc(ctx, C.EVP_MD_CTX_free)
    ctxs[variant] = ctx
    pkey = key._pkey
  end
  if C.EVP_DigestVerifyInit_ex(ctx, nil, mdname, nil, nil, pkey, params) ~= 1 then
    if pkey ~= nil
       or C.EVP_DigestVerifyInit_ex(ctx, nil, mdname, nil, nil, key._pkey, params) ~= 1 then
      ctxs[variant] = nil
      return nil, ossl_err("EVP_DigestVerifyInit_ex")
    end
    C.ERR_clear_error()
  end
  if C.EVP_DigestVerify(ctx, sig, siglen, msg, #msg) == 1 then
    return true
  end
  -- A signature that does not verify is the attacker's input, never an
  -- internal error: whatever OpenSSL says (bad padding, bad encoding, 0 or
  -- -1), it is "false".
  C.ERR_clear_error()
  return false, "signature mismatch"
end

local function check_verify_args(key, msg, sig, fname)
  check_key(key, fname)
  check_string(msg, "message", fname, 4)
  check_string(sig, "signature", fname, 4)
end

local function rsa_hash(key, hash_name, fname)
  local h = lookup_hash(hash_name, fname, 4)
  if not h then
    return nil, "unsupported hash: " .. hash_name
  end
  if key.type ~= "RSA" then
    return nil, fname .. ": " .. key.type .. " key cannot verify RSA signatures"
  end
  if key.bits < MIN_RSA_BITS then
    return nil, "RSA key too small (" .. key.bits .. " bits, min " .. MIN_RSA_BITS .. ")"
  end
  return h
end

-- verify_rsa_pkcs1(key, hash_name, msg, sig): RS256/RS384/RS512.
function _M.verify_rsa_pkcs1(key, hash_name, msg, sig)
  check_verify_args(key, msg, sig, "verify_rsa_pkcs1")
  local h, err = rsa_hash(key, hash_name, "verify_rsa_pkcs1")
  if not h then
    return nil, err
  end
  -- RFC 8017 8.2.2 step 1: the signature is exactly k octets.
  if #sig ~= key._siglen then
    return false, "signature length mismatch"
  end
  return digest_verify(key, h.pkcs1_variant, h.ossl_name, h.pkcs1_params, sig, #sig, msg)
end

-- verify_rsa_pss(key, hash_name, msg, sig [, salt_len]): PS256/PS384/PS512.
-- MGF1 uses the same hash; the salt length defaults to the hash length as
-- RFC 7518 3.5 requires and is checked exactly (not "auto"). salt_len exists
-- for test vectors with other salt lengths; JWT callers leave it out.
function _M.verify_rsa_pss(key, hash_name, msg, sig, salt_len)
  check_verify_args(key, msg, sig, "verify_rsa_pss")
  if salt_len ~= nil and (type(salt_len) ~= "number" or salt_len < 0
                          or salt_len ~= floor(salt_len) or salt_len > 1024) then
    error("verify_rsa_pss: salt_len must be an integer in 0..1024", 2)
  end
  local h, err = rsa_hash(key, hash_name, "verify_rsa_pss")
  if not h then
    return nil, err
  end
  if #sig ~= key._siglen then
    return false, "signature length mismatch"
  end
  local v = pss_variant(h, salt_len or h.size)
  return digest_verify(key, v.variant, h.ossl_name, v.params, sig, #sig, msg)
end

-- ECDSA: the JOSE signature is r||s, each exactly the coordinate size
-- (RFC 7518 3.4); OpenSSL verifies the DER ECDSA-Sig-Value, which we build
-- into a module buffer: each INTEGER minimal (leading zero octets dropped)
-- and positive (a 0x00 prepended when the top bit is set).
--
-- The signature is first copied into an FFI buffer and read there. This
-- module never does pointer arithmetic on a Lua string cast to a pointer
-- (strings are read with string.byte or copied with ffi.copy): LuaJIT
-- 2.1-20230119 (Debian 12's luajit2) miscompiles `(cast(p, str) + n)[i]`
-- when str is a trace constant and n a number from a table -- the load
-- uses n itself as the address and segfaults (-joff is fine). An early
-- version of this function hit it in a benchmark loop.
local sigbuf = ffi_new("uint8_t[132]")  -- 2 * 66 (P-521)
local der = ffi_new("uint8_t[160]")     -- P-521: 3 + 2 * (2 + 1 + 66) = 141 bytes max

for _, c in pairs(CURVES) do
  c.order_buf = ffi_new("uint8_t[?]", c.size)
  ffi.copy(c.order_buf, c.order, c.size)
end

-- Is the size-byte big-endian integer at sigbuf[off] zero, or >= the order?
local function out_of_range(off, order, size)
  local zero = true
  for i = off, off + size - 1 do
    if sigbuf[i] ~= 0 then
      zero = false
      break
    end
  end
  if zero then
    return true
  end
  for i = 0, size - 1 do
    local a, b = sigbuf[off + i], order[i]
    if a ~= b then
      return a > b
    end
  end
  return true  -- equal to n
end

-- Append the DER INTEGER for sigbuf[off .. off+size-1] at der[pos].
local function der_integer(pos, off, size)
  local i = off
  local last = off + size - 1
  while i < last and sigbuf[i] == 0 do
    i = i + 1
  end
  local len = last - i + 1
  local pad = sigbuf[i] >= 0x80 and 1 or 0
  der[pos] = 0x02
  der[pos + 1] = len + pad
  pos = pos + 2
  if pad == 1 then
    der[pos] = 0
    pos = pos + 1
  end
  for j = 0, len - 1 do
    der[pos + j] = sigbuf[i + j]
  end
  return pos + len
end

function _M.verify_ecdsa_jose(key, hash_name, msg, sig)
  check_verify_args(key, msg, sig, "verify_ecdsa_jose")
  local h = lookup_hash(hash_name, "verify_ecdsa_jose")
  if not h then
    return nil, "unsupported hash: " .. hash_name
  end
  local curve = key._ec
  if not curve then
    return nil, "verify_ecdsa_jose: " .. key.type .. " key cannot verify ECDSA signatures"
  end
  if curve.hash ~= hash_name then
    return nil, "verify_ecdsa_jose: " .. curve.name .. " pairs with " .. curve.hash
                .. ", not " .. hash_name .. " (RFC 7518 3.4)"
  end
  local size = curve.size
  if #sig ~= 2 * size then
    return false, "signature length mismatch"
  end
  ffi.copy(sigbuf, sig, 2 * size)
  if out_of_range(0, curve.order_buf, size) or out_of_range(size, curve.order_buf, size) then
    return false, "signature r or s out of range"
  end
  -- Body first at offset 3, then the SEQUENCE header right before it.
  local pos = der_integer(3, 0, size)
  pos = der_integer(pos, size, size)
  local body = pos - 3
  local start
  if body < 128 then
    start = 1
    der[1], der[2] = 0x30, body
  else
    start = 0
    der[0], der[1], der[2] = 0x30, 0x81, body
  end
  return digest_verify(key, hash_name, h.ossl_name, nil, der + start, pos - start, msg)
end

function _M.verify_ed25519(key, msg, sig)
  check_verify_args(key, msg, sig, "verify_ed25519")
  if key.type ~= "ED25519" then
    return nil, "verify_ed25519: " .. key.type .. " key cannot verify Ed25519 signatures"
  end
  if #sig ~= 64 then
    return false, "signature length mismatch"
  end
  return digest_verify(key, "ed25519", nil, nil, sig, 64, msg)
end

return _M
