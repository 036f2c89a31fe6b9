-- tollgate.shdict: shared dictionaries from Lua, over the C API in
-- core/tg_shdict.h through the LuaJIT FFI. The methods follow OpenResty's
-- ngx.shared.DICT: same names, arguments and return values (see
-- docs/shdict.md for the few differences). TTLs are seconds with millisecond
-- resolution.
--
--   local shdict = require "tollgate.shdict"
--   local dict = assert(shdict.dict("ratelimit"))
--   local n, err = dict:incr(key, 1, 0, 60)
--
-- Error tiers: misuse (a table as key, a negative ttl) raises with
-- error(msg, 2); expected failures return nil/false and a message ("not
-- found", "exists", "no memory", "empty key", "key too long").
--
-- Hot path: keys go to C as Lua strings (no copy), results come back
-- through out-parameters allocated once below and reused; only a string
-- value returned by get() creates a Lua string. The scratch buffers are
-- module-level and shared by all dicts: safe because a call never yields
-- and one VM is one thread.
--
-- The C functions are found in the tollgate binary (ffi.C, linked with
-- exported symbols). Tests may supply another namespace through
-- package.loaded["tollgate.shdict.clib"], or a shared object path in the
-- environment variable TG_FFI_LIB.

local ffi = require "ffi"

local ffi_new = ffi.new
local ffi_str = ffi.string
local ffi_cast = ffi.cast
local type = type
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local floor = math.floor

local ok_new_tab, new_tab = pcall(require, "table.new")
if not ok_new_tab then
    new_tab = function() return {} end
end

-- Mirrors core/tg_shdict.h. LuaJIT accepts identical redeclarations, so
-- another module may declare these too.
ffi.cdef [[
    typedef struct tg_shdict_s tg_shdict_t;
    tg_shdict_t *tg_shdict_find(const char *name, size_t len);
    int tg_shdict_get(tg_shdict_t *d, const char *key, size_t key_len,
                      int *value_type, char **str_buf, size_t *str_len,
                      double *num_value, uint32_t *user_flags,
                      int get_stale, int *is_stale, const char **err);
    int tg_shdict_store(tg_shdict_t *d, int op, const char *key, size_t key_len,
                        int value_type, const char *str, size_t str_len,
                        double num, int64_t ttl_ms, uint32_t user_flags,
                        int *forcible, const char **err);
    int tg_shdict_delete(tg_shdict_t *d, const char *key, size_t key_len,
                         const char **err);
    int tg_shdict_incr(tg_shdict_t *d, const char *key, size_t key_len,
                       double *value, int has_init, double init,
                       int64_t init_ttl_ms, int *forcible, const char **err);
    int tg_shdict_expire(tg_shdict_t *d, const char *key, size_t key_len,
                         int64_t ttl_ms, const char **err);
    int tg_shdict_ttl(tg_shdict_t *d, const char *key, size_t key_len,
                      int64_t *ttl_ms, const char **err);
    void tg_shdict_flush_all(tg_shdict_t *d);
    int tg_shdict_flush_expired(tg_shdict_t *d, int max);
    int tg_shdict_get_keys(tg_shdict_t *d, int max, char **buf, size_t *len,
                           int *count, const char **err);
    void tg_shdict_free_buf(char *buf);
    size_t tg_shdict_capacity(const tg_shdict_t *d);
    size_t tg_shdict_free_space(tg_shdict_t *d);
]]

local C
do
    local override = package.loaded["tollgate.shdict.clib"]
    local path = os.getenv("TG_FFI_LIB")
    if override then
        C = override
    elseif path and path ~= "" then
        C = ffi.load(path)
    else
        C = ffi.C
    end
end

-- Mirrors tg_core.h and tg_shdict.h.
local TG_OK, TG_DECLINED = 0, -3
local T_NIL, T_BOOLEAN, T_NUMBER, T_STRING = 0, 1, 3, 4
local OP_SET, OP_ADD, OP_REPLACE, OP_SAFE = 0, 1, 2, 4
local KEYS_DEFAULT_MAX = 1024   -- get_keys() without max, as OpenResty

-- Reused out-parameters (see the top of the file).
local STR_BUF_SIZE = 4096       -- larger values come back malloc'ed from C
local str_buf = ffi_new("char[?]", STR_BUF_SIZE)
local str_buf_p = ffi_new("char *[1]")
local str_len = ffi_new("size_t[1]")
local value_type = ffi_new("int[1]")
local num_value = ffi_new("double[1]")
local user_flags = ffi_new("uint32_t[1]")
local is_stale = ffi_new("int[1]")
local forcible = ffi_new("int[1]")
local errmsg = ffi_new("const char *[1]")
local ttl_ms = ffi_new("int64_t[1]")
local count = ffi_new("int[1]")

local _M = { version = "0.1.0" }
local mt = {}
mt.__index = mt

local function check_self(self)
    if type(self) ~= "table" or self.zone == nil then
        error("bad dict object: call methods with a colon, dict:get(key)", 3)
    end
    return self.zone
end

-- Strings as they are; numbers converted like OpenResty; anything else is
-- misuse. Length limits are checked in C (expected failures).
local function check_key(key)
    local t = type(key)
    if t == "string" then
        return key
    end
    if t == "number" then
        return tostring(key)
    end
    error("bad key: a string expected, got " .. t, 3)
end

-- Seconds -> milliseconds. A positive TTL never rounds to 0 (= no expiry).
local function ttl_to_ms(ttl, what)
    if ttl == nil then
        return 0
    end
    if type(ttl) ~= "number" or ttl < 0 or ttl ~= ttl then
        error('bad "' .. what .. '" argument: a non-negative number of seconds expected', 3)
    end
    if ttl == 0 then
        return 0
    end
    local ms = floor(ttl * 1000 + 0.5)
    return ms < 1 and 1 or ms
end

local function get(self, key, stale)
    local zone = check_self(self)
    key = check_key(key)
    str_buf_p[0] = str_buf
    str_len[0] = STR_BUF_SIZE
    local rc = C.tg_shdict_get(zone, key, #key, value_type, str_buf_p, str_len,
                               num_value, user_flags, stale, is_stale, errmsg)
    if rc ~= TG_OK then
        return nil, ffi_str(errmsg[0])
    end

    local t = value_type[0]
    local val
    if t == T_NIL then
        return nil
    elseif t == T_STRING then
        local p = str_buf_p[0]
        val = ffi_str(p, str_len[0])
        if p ~= str_buf then
            C.tg_shdict_free_buf(p)
        end
    elseif t == T_NUMBER then
        val = num_value[0]
    else
        val = num_value[0] ~= 0
    end
    return val, user_flags[0]
end

-- value, flags | nil | nil, err
function mt.get(self, key)
    local val, flags = get(self, key, 0)
    if flags == 0 then
        return val
    end
    return val, flags
end

-- value, flags or nil, stale | nil | nil, err
function mt.get_stale(self, key)
    local val, flags = get(self, key, 1)
    if val == nil then
        return nil, flags
    end
    return val, flags ~= 0 and flags or nil, is_stale[0] == 1
end

-- The store methods tail-call this (`return store(...)`), so its frame
-- replaces theirs: its own errors use level 2 and its helpers' level 3, both
-- naming the method's caller. Keep the `return`.
local function store(self, op, key, value, ttl, flags)
    local zone = check_self(self)
    key = check_key(key)
    local ms = ttl_to_ms(ttl, "ttl")
    if flags == nil then
        flags = 0
    elseif type(flags) ~= "number" or flags < 0 or flags > 0xffffffff or flags % 1 ~= 0 then
        error('bad "flags" argument: an integer 0..4294967295 expected', 2)
    end

    local vt, str, slen, num = nil, nil, 0, 0
    local tv = type(value)
    if tv == "string" then
        vt, str, slen = T_STRING, value, #value
    elseif tv == "number" then
        vt, num = T_NUMBER, value
    elseif tv == "boolean" then
        vt, num = T_BOOLEAN, value and 1 or 0
    elseif tv == "nil" then
        if op ~= OP_SET and op ~= OP_SAFE then
            error("bad value: nil can only be set (which deletes)", 2)
        end
        vt = T_NIL
    else
        error("bad value type: " .. tv, 2)
    end

    forcible[0] = 0
    local rc = C.tg_shdict_store(zone, op, key, #key, vt, str, slen, num, ms, flags,
                                 forcible, errmsg)
    if rc == TG_OK then
        return true, nil, forcible[0] == 1
    end
    return false, ffi_str(errmsg[0]), forcible[0] == 1
end

-- All: ok, err, forcible. ttl in seconds (nil or 0: never), flags uint32.
function mt.set(self, key, value, ttl, flags)
    return store(self, OP_SET, key, value, ttl, flags)
end

function mt.safe_set(self, key, value, ttl, flags)
    return store(self, OP_SET + OP_SAFE, key, value, ttl, flags)
end

function mt.add(self, key, value, ttl, flags)
    return store(self, OP_ADD, key, value, ttl, flags)
end

function mt.safe_add(self, key, value, ttl, flags)
    return store(self, OP_ADD + OP_SAFE, key, value, ttl, flags)
end

function mt.replace(self, key, value, ttl, flags)
    return store(self, OP_REPLACE, key, value, ttl, flags)
end

-- true | nil, err
function mt.delete(self, key)
    local zone = check_self(self)
    key = check_key(key)
    if C.tg_shdict_delete(zone, key, #key, errmsg) ~= TG_OK then
        return nil, ffi_str(errmsg[0])
    end
    return true
end

-- new_value | new_value, nil, forcible (with init) | nil, err
function mt.incr(self, key, value, init, init_ttl)
    local zone = check_self(self)
    key = check_key(key)
    if type(value) ~= "number" then
        error('bad "value" argument: a number expected', 2)
    end
    local has_init = 0
    if init ~= nil then
        if type(init) ~= "number" then
            error('bad "init" argument: a number expected', 2)
        end
        has_init = 1
    elseif init_ttl ~= nil then
        error('"init_ttl" needs "init"', 2)
    end
    local ms = ttl_to_ms(init_ttl, "init_ttl")

    num_value[0] = value
    forcible[0] = 0
    local rc = C.tg_shdict_incr(zone, key, #key, num_value, has_init, init or 0, ms,
                                forcible, errmsg)
    if rc ~= TG_OK then
        return nil, ffi_str(errmsg[0])
    end
    if has_init == 0 then
        return num_value[0]
    end
    return num_value[0], nil, forcible[0] == 1
end

-- true | nil, "not found"
function mt.expire(self, key, ttl)
    local zone = check_self(self)
    key = check_key(key)
    if ttl == nil then
        error('bad "ttl" argument: a number of seconds expected', 2)
    end
    local ms = ttl_to_ms(ttl, "ttl")
    if C.tg_shdict_expire(zone, key, #key, ms, errmsg) ~= TG_OK then
        return nil, ffi_str(errmsg[0])
    end
    return true
end

-- seconds left (0 = never expires) | nil, "not found"
function mt.ttl(self, key)
    local zone = check_self(self)
    key = check_key(key)
    if C.tg_shdict_ttl(zone, key, #key, ttl_ms, errmsg) ~= TG_OK then
        return nil, ffi_str(errmsg[0])
    end
    return tonumber(ttl_ms[0]) / 1000
end

function mt.flush_all(self)
    C.tg_shdict_flush_all(check_self(self))
end

-- number of expired entries freed; max nil or 0 = all
function mt.flush_expired(self, max)
    local zone = check_self(self)
    if max ~= nil and type(max) ~= "number" then
        error('bad "max" argument: a number expected', 2)
    end
    return C.tg_shdict_flush_expired(zone, max or 0)
end

-- bytes
function mt.capacity(self)
    return tonumber(C.tg_shdict_capacity(check_self(self)))
end

function mt.free_space(self)
    return tonumber(C.tg_shdict_free_space(check_self(self)))
end

-- array of up to max live keys (default 1024, 0 = all), most recent first.
-- A maintenance call: it holds the zone lock while it walks every entry.
function mt.get_keys(self, max)
    local zone = check_self(self)
    if max == nil then
        max = KEYS_DEFAULT_MAX
    elseif type(max) ~= "number" then
        error('bad "max" argument: a number expected', 2)
    end
    if C.tg_shdict_get_keys(zone, max, str_buf_p, str_len, count, errmsg) ~= TG_OK then
        return nil, ffi_str(errmsg[0])
    end
    local n = count[0]
    local keys = new_tab(n, 0)
    if n == 0 then
        return keys
    end
    local buf = str_buf_p[0]
    local p = ffi_cast("const uint8_t *", buf)
    local off = 0
    for i = 1, n do
        local len = p[off] * 256 + p[off + 1]
        keys[i] = ffi_str(p + off + 2, len)
        off = off + 2 + len
    end
    C.tg_shdict_free_buf(buf)
    return keys
end

-- Dict objects, one per name for the life of the VM (a worker's VM lives
-- for one config generation, and so does its set of dicts).
local dicts = {}

-- dict | nil, err
-- Config-time check for plugin schemas: true when the loaded config declares
-- the dict in `shared_dicts`, else nil and a message saying how to fix it.
-- (Works in the master's check VM too, where no zone is mapped.)
function _M.configured(name)
  local conf = require("tollgate.runtime").config
  local dicts = type(conf) == "table" and conf.shared_dicts
  if type(dicts) ~= "table" or dicts[name] == nil then
    return nil, "shared dict \"" .. tostring(name) .. "\" is not configured (add it to shared_dicts)"
  end
  return true
end

function _M.dict(name)
    if type(name) ~= "string" then
        error('bad "name" argument: a string expected, got ' .. type(name), 2)
    end
    local d = dicts[name]
    if d then
        return d
    end
    local zone = C.tg_shdict_find(name, #name)
    if zone == nil then
        return nil, 'no shared dict "' .. name .. '" (configure it under shared_dicts:)'
    end
    d = setmetatable({ zone = zone, name = name }, mt)
    dicts[name] = d
    return d
end

return _M
