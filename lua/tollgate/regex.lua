-- tollgate.regex: PCRE2 regular expressions for plugins, through LuaJIT FFI.
--
-- The tollgate binary links libpcre2-8 for the router (core/tg_router.c),
-- so ffi.C resolves the pcre2_*_8 functions inside the gateway; under a
-- plain luajit (unit specs) the library is loaded by name instead.
--
-- A pattern is compiled and JIT-compiled once, with one match-data block
-- sized for its groups, and cached by (options, pattern) for the life of
-- the VM: patterns come from the configuration, and a reload starts new
-- workers with new VMs, so the cache holds at most one configuration's
-- patterns. Matching allocates nothing on the C side; the one match-data
-- block per pattern is safe to share because a match never yields.
--
-- Subjects are bytes: patterns are compiled without PCRE2_UTF, so invalid
-- UTF-8 in a request path never makes a match fail with an error.
--
--   local regex = require "tollgate.regex"
--   local re, err = regex.compile("^/api/v(\\d+)/(.*)", "i")
--   re:match(s)            -> true | false | nil, err
--   re:find(s, init)       -> from, to (1-based, inclusive) | nil [, err]
--   re:exec(s, init)       -> { [0] = whole, cap1, cap2, ... } | nil [, err]
--                             (an unset group is false)
--   re:sub(s, repl, global)-> new string, count | nil, err
--                             repl uses PCRE2 syntax: $1, ${1}, ${name}, $$
--   re:check_replacement(repl) -> true | nil, err (for config checks)
--   re.ncaptures
--   regex.check(pattern, opts) -> true | nil, err
-- Options: "i" caseless, "m" multiline, "s" dotall, "x" extended,
-- "a" anchored at the start, "z" anchored at the end ("az": whole subject).
local ffi = require "ffi"

local ffi_new    = ffi.new
local ffi_string = ffi.string
local ffi_gc     = ffi.gc
local bor        = require("bit").bor
local type       = type
local tonumber   = tonumber
local tostring   = tostring
local byte       = string.byte
local find       = string.find
local setmetatable = setmetatable

local _M = {}

ffi.cdef [[
typedef struct pcre2_real_code_8 pcre2_code_8;
typedef struct pcre2_real_match_data_8 pcre2_match_data_8;
typedef struct pcre2_real_match_context_8 pcre2_match_context_8;
typedef struct pcre2_real_general_context_8 pcre2_general_context_8;
typedef struct pcre2_real_compile_context_8 pcre2_compile_context_8;

pcre2_code_8 *pcre2_compile_8(const char *pattern, size_t length, uint32_t options,
                              int *errorcode, size_t *erroroffset,
                              pcre2_compile_context_8 *ccontext);
int pcre2_jit_compile_8(pcre2_code_8 *code, uint32_t options);
void pcre2_code_free_8(pcre2_code_8 *code);
int pcre2_get_error_message_8(int errorcode, char *buffer, size_t bufflen);
int pcre2_pattern_info_8(const pcre2_code_8 *code, uint32_t what, void *where);
int pcre2_substring_number_from_name_8(const pcre2_code_8 *code, const char *name);

pcre2_match_data_8 *pcre2_match_data_create_from_pattern_8(const pcre2_code_8 *code,
                                                           pcre2_general_context_8 *gcontext);
void pcre2_match_data_free_8(pcre2_match_data_8 *match_data);
size_t *pcre2_get_ovector_pointer_8(pcre2_match_data_8 *match_data);

pcre2_match_context_8 *pcre2_match_context_create_8(pcre2_general_context_8 *gcontext);
int pcre2_set_match_limit_8(pcre2_match_context_8 *mcontext, uint32_t value);

int pcre2_match_8(const pcre2_code_8 *code, const char *subject, size_t length,
                  size_t startoffset, uint32_t options, pcre2_match_data_8 *match_data,
                  pcre2_match_context_8 *mcontext);
int pcre2_substitute_8(const pcre2_code_8 *code, const char *subject, size_t length,
                       size_t startoffset, uint32_t options, pcre2_match_data_8 *match_data,
                       pcre2_match_context_8 *mcontext, const char *replacement,
                       size_t rlength, char *outputbuffer, size_t *outlength);
]]

-- Inside the gateway the symbols are already there; elsewhere load them.
local lib do
  local ok = pcall(function() return ffi.C.pcre2_compile_8 end)
  lib = ok and ffi.C or ffi.load("libpcre2-8.so.0")
end

local OPTIONS = {
  i = 0x00000008,   -- PCRE2_CASELESS
  m = 0x00000400,   -- PCRE2_MULTILINE
  s = 0x00000020,   -- PCRE2_DOTALL
  x = 0x00000080,   -- PCRE2_EXTENDED
  a = 0x80000000,   -- PCRE2_ANCHORED
  z = 0x20000000,   -- PCRE2_ENDANCHORED
}
local PCRE2_JIT_COMPLETE               = 0x00000001
local PCRE2_SUBSTITUTE_GLOBAL          = 0x00000100
local PCRE2_SUBSTITUTE_UNSET_EMPTY     = 0x00000400
local PCRE2_SUBSTITUTE_OVERFLOW_LENGTH = 0x00001000
local PCRE2_INFO_CAPTURECOUNT          = 4
local PCRE2_ERROR_NOMATCH              = -1
local PCRE2_ERROR_NOMEMORY             = -48
local PCRE2_UNSET                      = ffi.cast("size_t", -1LL)   -- ~(PCRE2_SIZE)0

-- Backtracking steps one match may take (pcre2_set_match_limit). Patterns
-- are trusted config but subjects are client bytes: a pattern with nested
-- quantifiers must not let one request burn seconds of CPU. A sane path or
-- origin pattern needs a few hundred steps; the library default is 10^7.
local MATCH_LIMIT = 200000
-- The substitution output buffer starts at this size and grows (once per
-- larger result) up to MAX_SUBST_OUTPUT, a sanity bound on results.
local SUBST_INITIAL = 4096
local MAX_SUBST_OUTPUT = 16 * 1024 * 1024

local errcode = ffi_new("int[1]")
local erroff = ffi_new("size_t[1]")
local errbuf = ffi_new("char[256]")
local count_out = ffi_new("uint32_t[1]")
local outlen = ffi_new("size_t[1]")
local subst_cap = SUBST_INITIAL
local subst_buf = ffi_new("char[?]", subst_cap)

local mctx = lib.pcre2_match_context_create_8(nil)
if mctx == nil then error("tollgate.regex: cannot create a PCRE2 match context") end
lib.pcre2_set_match_limit_8(mctx, MATCH_LIMIT)

local function error_message(code)
  local n = lib.pcre2_get_error_message_8(code, errbuf, 256)
  if n < 0 then return "PCRE2 error " .. tostring(code) end
  return ffi_string(errbuf, n)
end

-- Failed match (other than "no match"): the limit or a library error.
local function match_error(rc)
  return nil, "regex match failed: " .. error_message(rc)
end

local re_mt = {}
re_mt.__index = re_mt

local cache = {}   -- options .. "\0" .. pattern -> compiled object

--- regex.compile(pattern, opts) -> re, or nil, err ("... at offset N").
function _M.compile(pattern, opts)
  if type(pattern) ~= "string" then error("regex.compile: pattern must be a string", 2) end
  opts = opts or ""
  local key = opts .. "\0" .. pattern
  local re = cache[key]
  if re then return re end

  local flags = 0
  for i = 1, #opts do
    local f = OPTIONS[opts:sub(i, i)]
    if not f then error("regex.compile: unknown option \"" .. opts:sub(i, i) .. "\"", 2) end
    flags = bor(flags, f)
  end
  -- bit.bor yields a signed 32-bit number; uint32_t takes it modulo 2^32.
  local code = lib.pcre2_compile_8(pattern, #pattern, flags, errcode, erroff, nil)
  if code == nil then
    return nil, error_message(errcode[0]) .. " at offset " .. tonumber(erroff[0])
  end
  code = ffi_gc(code, lib.pcre2_code_free_8)
  -- Without JIT support (or for a pattern JIT refuses) the interpreter runs
  -- the same pattern: JIT is an optimisation, never a requirement.
  lib.pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE)
  local md = lib.pcre2_match_data_create_from_pattern_8(code, nil)
  if md == nil then return nil, "out of memory" end
  md = ffi_gc(md, lib.pcre2_match_data_free_8)
  lib.pcre2_pattern_info_8(code, PCRE2_INFO_CAPTURECOUNT, count_out)

  re = setmetatable({
    code = code,
    md = md,
    ov = lib.pcre2_get_ovector_pointer_8(md),
    ncaptures = tonumber(count_out[0]),
    pattern = pattern,
  }, re_mt)
  cache[key] = re
  return re
end

--- regex.check(pattern, opts) -> true, or nil, err: for schema checks.
function _M.check(pattern, opts)
  local re, err = _M.compile(pattern, opts)
  if not re then return nil, err end
  return true
end

local function exec(re, s, init)
  init = init or 1
  if init < 1 or init > #s + 1 then return PCRE2_ERROR_NOMATCH end
  return lib.pcre2_match_8(re.code, s, #s, init - 1, 0, re.md, mctx)
end

function re_mt:match(s)
  local rc = exec(self, s)
  if rc >= 0 then return true end
  if rc == PCRE2_ERROR_NOMATCH then return false end
  return match_error(rc)
end

function re_mt:find(s, init)
  local rc = exec(self, s, init)
  if rc >= 0 then return tonumber(self.ov[0]) + 1, tonumber(self.ov[1]) end
  if rc == PCRE2_ERROR_NOMATCH then return nil end
  return match_error(rc)
end

function re_mt:exec(s, init)
  local rc = exec(self, s, init)
  if rc < 0 then
    if rc == PCRE2_ERROR_NOMATCH then return nil end
    return match_error(rc)
  end
  local ov = self.ov
  local caps = {}
  for i = 0, self.ncaptures do
    local a = ov[2 * i]
    if i >= rc or a == PCRE2_UNSET then
      caps[i] = false
    else
      caps[i] = s:sub(tonumber(a) + 1, tonumber(ov[2 * i + 1]))
    end
  end
  return caps
end

--- re:sub(s, repl, global) -> result, number of replacements; or nil, err.
-- Without a match the subject itself comes back (no copy).
function re_mt:sub(s, repl, global)
  local opts = bor(PCRE2_SUBSTITUTE_OVERFLOW_LENGTH, PCRE2_SUBSTITUTE_UNSET_EMPTY)
  if global then opts = bor(opts, PCRE2_SUBSTITUTE_GLOBAL) end
  -- Two rounds at most: the first one reports the size it needs.
  for _ = 1, 2 do
    outlen[0] = subst_cap
    local rc = lib.pcre2_substitute_8(self.code, s, #s, 0, opts, self.md, mctx,
                                      repl, #repl, subst_buf, outlen)
    if rc == 0 then return s, 0 end
    if rc > 0 then return ffi_string(subst_buf, outlen[0]), rc end
    if rc ~= PCRE2_ERROR_NOMEMORY then
      if rc == PCRE2_ERROR_NOMATCH then return s, 0 end
      return nil, "regex substitution failed: " .. error_message(rc)
    end
    local need = tonumber(outlen[0])
    if need > MAX_SUBST_OUTPUT then return nil, "regex substitution result too large" end
    while subst_cap < need do subst_cap = subst_cap * 2 end
    subst_buf = ffi_new("char[?]", subst_cap)
  end
  return nil, "regex substitution failed: output buffer"
end

--- re:check_replacement(repl) -> true, or nil, err. Checks what PCRE2
-- would only report at match time: "$" not followed by "$", a group number
-- or {group}, and references to groups the pattern does not have.
function re_mt:check_replacement(repl)
  local i, n = 1, #repl
  while i <= n do
    local d = find(repl, "$", i, true)
    if not d then break end
    local c = byte(repl, d + 1)
    if c == 36 then                                   -- "$$"
      i = d + 2
    else
      local ref, next_i
      if c == 123 then                                -- "${...}"
        local close = find(repl, "}", d + 2, true)
        if not close then return nil, "unterminated ${ at offset " .. (d - 1) end
        ref, next_i = repl:sub(d + 2, close - 1), close + 1
      else
        local digits = repl:match("^%d+", d + 1)
        if not digits then
          return nil, "\"$\" at offset " .. (d - 1) .. " must be followed by a group number, {name} or $"
        end
        ref, next_i = digits, d + 1 + #digits
      end
      if ref:match("^%d+$") then
        if tonumber(ref) > self.ncaptures then
          return nil, "reference to group $" .. ref .. ", the pattern has "
                      .. self.ncaptures .. " group" .. (self.ncaptures == 1 and "" or "s")
        end
      elseif not ref:match("^[%a_][%w_]*$")
             or lib.pcre2_substring_number_from_name_8(self.code, ref) < 0 then
        return nil, "reference to unknown group ${" .. ref .. "}"
      end
      i = next_i
    end
  end
  return true
end

_M.MATCH_LIMIT = MATCH_LIMIT

return _M
