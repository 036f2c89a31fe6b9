-- bench/openresty/bench_jwt.lua: JWT (JWS compact) verification for the
-- OpenResty contender, written for this benchmark because lua-resty-jwt is
-- not packaged in Debian. HS256 through libcrypto's HMAC(), RS256 and ES256
-- through EVP_DigestVerify with the public key parsed once; all by FFI.
-- Like lua-resty-jwt (and Kong's jwt plugin) it verifies every token: no
-- cache of verified tokens.
local ffi = require "ffi"
local cjson = require "cjson.safe"

local C = ffi.C
local ffi_new, ffi_str, ffi_gc = ffi.new, ffi.string, ffi.gc
local decode_base64 = ngx.decode_base64
local find, sub, gsub, rep = string.find, string.sub, string.gsub, string.rep
local ngx_time = ngx.time

ffi.cdef [[
typedef struct evp_md_st bench_EVP_MD;
typedef struct evp_pkey_st bench_EVP_PKEY;
typedef struct evp_md_ctx_st bench_EVP_MD_CTX;
typedef struct bio_st bench_BIO;
typedef struct ECDSA_SIG_st bench_ECDSA_SIG;
typedef struct bignum_st bench_BIGNUM;
const bench_EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const bench_EVP_MD *md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *out, unsigned int *out_len);
bench_BIO *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(bench_BIO *a);
bench_EVP_PKEY *PEM_read_bio_PUBKEY(bench_BIO *bp, bench_EVP_PKEY **x, void *cb, void *u);
void EVP_PKEY_free(bench_EVP_PKEY *pkey);
bench_EVP_MD_CTX *EVP_MD_CTX_new(void);
int EVP_MD_CTX_reset(bench_EVP_MD_CTX *ctx);
int EVP_DigestVerifyInit(bench_EVP_MD_CTX *ctx, void **pctx, const bench_EVP_MD *type, void *e, bench_EVP_PKEY *pkey);
int EVP_DigestVerify(bench_EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen);
bench_ECDSA_SIG *ECDSA_SIG_new(void);
void ECDSA_SIG_free(bench_ECDSA_SIG *sig);
int ECDSA_SIG_set0(bench_ECDSA_SIG *sig, bench_BIGNUM *r, bench_BIGNUM *s);
bench_BIGNUM *BN_bin2bn(const unsigned char *s, int len, bench_BIGNUM *ret);
int i2d_ECDSA_SIG(const bench_ECDSA_SIG *sig, unsigned char **pp);
void ERR_clear_error(void);
]]

local _M = {}
local mt = { __index = _M }

local md_buf = ffi_new("unsigned char[64]")
local md_len = ffi_new("unsigned int[1]")
local der_buf = ffi_new("unsigned char[80]")
local der_ptr = ffi_new("unsigned char *[1]")
local md_ctx -- one per worker, reset after every verification

local function b64url(s)
  s = gsub(s, "[-_]", { ["-"] = "+", ["_"] = "/" })
  local pad = #s % 4
  if pad > 0 then s = s .. rep("=", 4 - pad) end
  return decode_base64(s)
end

-- new(alg, key): alg "HS256" with the secret, or "RS256"/"ES256" with a PEM
-- public key (parsed here, once).
function _M.new(alg, key)
  local self = { alg = alg }
  if alg == "HS256" then
    self.secret = key
  else
    local bio = C.BIO_new_mem_buf(key, #key)
    local pkey = C.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
    C.BIO_free(bio)
    if pkey == nil then
      C.ERR_clear_error()
      return nil, "bad public key"
    end
    self.pkey = ffi_gc(pkey, C.EVP_PKEY_free)
  end
  return setmetatable(self, mt)
end

local function digest_verify(pkey, sig, siglen, msg)
  if not md_ctx then md_ctx = C.EVP_MD_CTX_new() end
  local ok = C.EVP_DigestVerifyInit(md_ctx, nil, C.EVP_sha256(), nil, pkey) == 1
     and C.EVP_DigestVerify(md_ctx, sig, siglen, msg, #msg) == 1
  C.EVP_MD_CTX_reset(md_ctx)
  if not ok then C.ERR_clear_error() end
  return ok
end

-- JWS ES256 signatures are r || s (32 bytes each); OpenSSL wants DER.
local function es256_der(raw)
  local sig = C.ECDSA_SIG_new()
  local r = C.BN_bin2bn(raw, 32, nil)
  local s = C.BN_bin2bn(ffi.cast("const unsigned char *", raw) + 32, 32, nil)
  C.ECDSA_SIG_set0(sig, r, s)
  der_ptr[0] = der_buf
  local n = C.i2d_ECDSA_SIG(sig, der_ptr)
  C.ECDSA_SIG_free(sig)
  return n
end

-- verify(token) -> claims | nil, err
function _M.verify(self, token)
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if not d2 then return nil, "malformed" end
  local header = cjson.decode(b64url(sub(token, 1, d1 - 1)) or "")
  if type(header) ~= "table" or header.alg ~= self.alg then return nil, "bad header" end
  local signing_input = sub(token, 1, d2 - 1)
  local sig = b64url(sub(token, d2 + 1))
  if not sig then return nil, "bad signature encoding" end
  local ok
  if self.alg == "HS256" then
    C.HMAC(C.EVP_sha256(), self.secret, #self.secret, signing_input, #signing_input, md_buf, md_len)
    ok = ffi_str(md_buf, md_len[0]) == sig
  elseif self.alg == "RS256" then
    ok = digest_verify(self.pkey, sig, #sig, signing_input)
  elseif self.alg == "ES256" then
    if #sig ~= 64 then return nil, "bad signature length" end
    local n = es256_der(sig)
    ok = n > 0 and digest_verify(self.pkey, der_buf, n, signing_input)
  end
  if not ok then return nil, "bad signature" end
  local claims = cjson.decode(b64url(sub(token, d1 + 1, d2 - 1)) or "")
  if type(claims) ~= "table" then return nil, "bad claims" end
  if type(claims.exp) == "number" and claims.exp <= ngx_time() then return nil, "expired" end
  return claims
end

return _M
