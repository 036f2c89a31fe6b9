-- tollgate.redis: tg.redis, the PDK's non-blocking Redis client (C side:
-- core/tg_redis.c; guide: docs/redis.md).
--
--   local red = tg.redis({ timeout_ms = 100 })      -- cheap, never connects
--   local v, err = red:call("GET", "k")
--
-- A command is handed to the worker's connection in C and the running
-- request (or timer) coroutine yields until the reply, a timeout or a
-- connection failure resumes it; other requests run meanwhile. Replies are
-- read in place from C memory (a flat array of nodes) and turned into Lua
-- values here, once.
--
-- Return conventions (lua-resty-redis): bulk string -> string; integer ->
-- number; status -> its text ("OK", "PONG"); nil bulk -> _M.null (cjson.null,
-- so a missing key differs from a failure); array -> table (an error reply
-- inside it becomes { false, "ERR ..." }); an error reply -> false, "ERR ...";
-- a transport failure -> nil, "timeout" | "redis unavailable" |
-- "redis connection lost" | "redis busy" | "too many blocking commands".
-- Misuse (bad arguments, a command that cannot share a connection, a call
-- from header_filter/body_filter/init_worker) raises.
local ffi     = require "ffi"
local cjson   = require "cjson.safe"
local current = require "tollgate.context"
local runtime = require "tollgate.runtime"

local ffi_new    = ffi.new
local ffi_string = ffi.string
local C          = ffi.C
local type       = type
local select     = select
local tostring   = tostring
local tonumber   = tonumber
local error      = error
local setmetatable = setmetatable
local upper      = string.upper
local sub        = string.sub
local format     = string.format
local floor      = math.floor
local wait       = runtime.wait

local ok_new, new_tab = pcall(require, "table.new")
if not ok_new then new_tab = function() return {} end end

ffi.cdef [[
typedef struct {
    int       type;
    int       n;
    long long integer;
    size_t    len;
    size_t    off;
} tg_redis_node_t;

typedef struct {
    int              status;
    int              nreplies;
    tg_redis_node_t *nodes;
    const char      *strs;
} tg_redis_result_t;

tg_redis_result_t *tg_ffi_redis_send(int ncmds, const int *argc, const char **argv,
                                     const size_t *lens, int blocking, double timeout_ms,
                                     double block_ms, int *rc);
void tg_ffi_redis_done(tg_redis_result_t *res);
void tg_ffi_redis_sha1_hex(const char *s, size_t len, char *out);
]]

local _M = { _VERSION = "1.0.0" }

-- The nil-bulk sentinel; the same value as tg.json.null and cjson.null.
local null = cjson.null
_M.null = null

-- core/tg_redis.h: statuses, send errors, reply types.
local OK = 0
local STATUS_ERR = { [1] = "timeout", [2] = "redis unavailable", [3] = "redis connection lost" }
local E_NOYIELD, E_BUSY = -1, -3
local STRING, INTEGER, NIL, STATUS, ERROR = 1, 3, 4, 5, 6

-- Where a command may run. Coroutines may yield in these phases only.
local YIELDABLE = { rewrite = true, access = true, log = true, timer = true }

---------------------------------------------------------------- commands

-- Commands that are not ordinary, by kind. Blocking ones go to a dedicated
-- connection; the block time they state is added to the call's timeout
-- (BLPOP k 1 waits up to 1 s + max(timeout_ms, 500 ms): Redis is late by up
-- to ~100 ms on its own timeouts), 0 meaning forever.
local BLOCK_LAST  = 1   -- timeout in seconds is the last argument
local BLOCK_FIRST = 2   -- ... the first argument (BLMPOP, BZMPOP)
local BLOCK_XREAD = 3   -- blocking only with BLOCK <ms>
local BLOCK_WAIT  = 4   -- WAIT numreplicas <ms>
local BLOCK_WAITAOF = 5 -- WAITAOF numlocal numreplicas <ms>
local FORBIDDEN   = 6   -- would change or hijack the shared connection
local TX          = 7   -- MULTI/EXEC/DISCARD: only inside a pipeline

local KINDS = {}
local nkinds = 0
local function define(kind, names)
  for i = 1, #names do
    KINDS[names[i]] = kind
    KINDS[names[i]:lower()] = kind
  end
end
define(BLOCK_LAST, { "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX" })
define(BLOCK_FIRST, { "BLMPOP", "BZMPOP" })
define(BLOCK_XREAD, { "XREAD", "XREADGROUP" })
define(BLOCK_WAIT, { "WAIT" })
define(BLOCK_WAITAOF, { "WAITAOF" })
define(FORBIDDEN, { "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE",
                    "SUNSUBSCRIBE", "MONITOR", "SELECT", "AUTH", "HELLO", "QUIT", "RESET",
                    "SYNC", "PSYNC", "WATCH", "UNWATCH", "CLIENT" })
define(TX, { "MULTI", "EXEC", "DISCARD" })
-- CLIENT is refused as a whole: CLIENT REPLY OFF would desynchronise the
-- shared connection. CLIENT ID / INFO / LIST / KILL are allowed back:
local CLIENT_OK = { ID = true, INFO = true, LIST = true, KILL = true, GETNAME = true }

-- Mixed-case names are looked up upper-cased once and remembered (bounded:
-- a plugin passing arbitrary strings as command names must not grow this).
local function kind_of(cmd)
  local k = KINDS[cmd]
  if k == nil then
    k = KINDS[upper(cmd)] or false
    if nkinds < 256 then
      KINDS[cmd] = k
      nkinds = nkinds + 1
    end
  end
  return k
end

local function ms_of(v, scale)
  local n = tonumber(v)
  if n == nil or n < 0 then return 0 end   -- Redis rejects it at once
  if n == 0 then return -1 end              -- blocks forever
  return n * scale
end

-- How long a command of kind k may block in Redis (ms, -1 = forever), or
-- nil when this invocation does not block.
local function block_ms(k, ...)
  local n = select("#", ...)
  if k == BLOCK_LAST then return n > 0 and ms_of((select(n, ...)), 1000) or 0 end
  if k == BLOCK_FIRST then return ms_of((...), 1000) end
  if k == BLOCK_WAIT then return ms_of((select(2, ...)), 1) end
  if k == BLOCK_WAITAOF then return ms_of((select(3, ...)), 1) end
  -- XREAD / XREADGROUP: only with BLOCK <ms>.
  for i = 1, n - 1 do
    local a = select(i, ...)
    if type(a) == "string" and #a == 5 and upper(a) == "BLOCK" then
      return ms_of((select(i + 1, ...)), 1)
    end
  end
  return nil
end

-- Raises for commands a client cannot send; returns the block time of a
-- blocking one. in_pipeline allows MULTI/EXEC/DISCARD.
local function classify(fname, level, in_pipeline, cmd, ...)
  if type(cmd) ~= "string" then
    error(fname .. ": command name must be a string", level + 1)
  end
  local k = kind_of(cmd)
  if not k then return nil end
  if k == FORBIDDEN then
    if upper(cmd) == "CLIENT" then
      local subcmd = ...
      if type(subcmd) == "string" and CLIENT_OK[upper(subcmd)] then return nil end
    end
    error(fname .. ": " .. cmd .. " is not supported (the connection is shared)", level + 1)
  end
  if k == TX then
    if not in_pipeline then
      error(fname .. ": " .. cmd .. " only inside red:pipeline() (the connection is shared)", level + 1)
    end
    return nil
  end
  local ms = block_ms(k, ...)
  if ms and in_pipeline then
    error(fname .. ": blocking command " .. cmd .. " not allowed in a pipeline", level + 1)
  end
  return ms
end

---------------------------------------------------------------- C buffers

-- Argument vectors handed to C, reused by every call: C copies the bytes
-- before tg_ffi_redis_send returns and nothing yields in between.
local cap_args, cap_cmds = 64, 16
local argv = ffi_new("const char *[?]", cap_args)
local lens = ffi_new("size_t[?]", cap_args)
local argcs = ffi_new("int[?]", cap_cmds)
local rc_out = ffi_new("int[1]")
-- Strings made from numbers: argv holds raw pointers, so they are kept
-- alive here until the C call returns.
local anchor, nanchor = {}, 0

local function reserve(nargs, ncmds)
  if nargs > cap_args then
    while cap_args < nargs do cap_args = cap_args * 2 end
    argv = ffi_new("const char *[?]", cap_args)
    lens = ffi_new("size_t[?]", cap_args)
  end
  if ncmds > cap_cmds then
    while cap_cmds < ncmds do cap_cmds = cap_cmds * 2 end
    argcs = ffi_new("int[?]", cap_cmds)
  end
end

-- Numbers go as integers when they are integers (tostring would write
-- 2^53 as "9.007199254741e+15"), otherwise as the shortest "%.17g" that
-- reads back as the same double.
local function num_string(v)
  if v == floor(v) and v >= -9007199254740992 and v <= 9007199254740992 then
    return format("%d", v)
  end
  local s = format("%.14g", v)
  if tonumber(s) ~= v then s = format("%.17g", v) end
  return s
end

local function arg_string(fname, level, v, i)
  local tv = type(v)
  if tv == "string" then return v, false end
  if tv == "number" then return num_string(v), true end
  error(fname .. ": argument #" .. i .. " must be a string or a number, got " .. tv, level + 1)
end

-- Puts one command (cmd, ...) into argv/lens at slot 0; returns its argc.
local function fill(fname, level, cmd, ...)
  local n = select("#", ...)
  reserve(n + 1, 1)
  argv[0] = cmd
  lens[0] = #cmd
  for i = 1, n do
    local s, made = arg_string(fname, level + 1, (select(i, ...)), i)
    if made then
      nanchor = nanchor + 1
      anchor[nanchor] = s
    end
    argv[i] = s
    lens[i] = #s
  end
  return n + 1
end

-- Sends what argv/argcs hold and waits. Returns the C result (the caller
-- must tg_ffi_redis_done it) or nil, err.
local function run(self, fname, level, ncmds, ms)
  local res = C.tg_ffi_redis_send(ncmds, argcs, argv, lens, ms and 1 or 0,
                                  self.timeout_ms, ms or 0, rc_out)
  for i = 1, nanchor do anchor[i] = nil end
  nanchor = 0
  if res == nil then
    local rc = rc_out[0]
    if rc == E_NOYIELD then
      error(fname .. ": not available in phase " .. tostring(current.phase or "init_worker"), level + 1)
    end
    if rc == E_BUSY then
      return nil, ms and "too many blocking commands" or "redis busy"
    end
    return nil, "redis unavailable"
  end
  wait()
  local st = res.status
  if st ~= OK then
    C.tg_ffi_redis_done(res)
    return nil, STATUS_ERR[st] or "redis error"
  end
  return res
end

---------------------------------------------------------------- replies

-- The reply being read: nodes in pre-order, string bytes, read position.
local nodes, strs, pos

local function value()
  local node = nodes[pos]
  pos = pos + 1
  local t = node.type
  if t == STRING or t == STATUS then
    return node.len == 0 and "" or ffi_string(strs + node.off, node.len)
  elseif t == INTEGER then
    return tonumber(node.integer)
  elseif t == NIL then
    return null
  elseif t == ERROR then
    return false, node.len == 0 and "" or ffi_string(strs + node.off, node.len)
  end
  local n = node.n                         -- ARRAY
  local arr = new_tab(n, 0)
  for i = 1, n do
    local v, err = value()
    if v == false then v = { false, err } end
    arr[i] = v
  end
  return arr
end

local function check_client(self, fname, level)
  if type(self) ~= "table" or self.timeout_ms == nil then
    error(fname .. ": use red:" .. fname:match("[^.]+$") .. "(...), not red." .. fname:match("[^.]+$"), level + 1)
  end
  if not YIELDABLE[current.phase] then
    error(fname .. ": not available in phase " .. tostring(current.phase or "init_worker"), level + 1)
  end
end

local function do_call(self, fname, level, cmd, ...)
  check_client(self, fname, level + 1)
  local ms = classify(fname, level + 1, false, cmd, ...)
  argcs[0] = fill(fname, level + 1, cmd, ...)
  local res, err = run(self, fname, level + 1, 1, ms)
  if not res then return nil, err end
  nodes, strs, pos = res.nodes, res.strs, 0
  local v, verr = value()
  nodes, strs = nil, nil
  C.tg_ffi_redis_done(res)
  return v, verr
end

---------------------------------------------------------------- client API

local mt = { __index = _M }

-- red:call(cmd, ...) -> value | false, redis_err | nil, err
-- (No tail calls into do_call: error levels count the frames.)
function _M.call(self, cmd, ...)
  local v, err = do_call(self, "tg.redis.call", 2, cmd, ...)
  return v, err
end

-- red:eval(script, nkeys, ...) / red:evalsha(sha1, nkeys, ...)
function _M.eval(self, script, nkeys, ...)
  local v, err = do_call(self, "tg.redis.eval", 2, "EVAL", script, nkeys, ...)
  return v, err
end

function _M.evalsha(self, sha, nkeys, ...)
  local v, err = do_call(self, "tg.redis.evalsha", 2, "EVALSHA", sha, nkeys, ...)
  return v, err
end

-- SHA1 of each script seen, computed once (bounded: reset when full).
local shas, nshas = {}, 0
local sha_buf = ffi_new("char[41]")

local function sha_of(script)
  local sha = shas[script]
  if sha == nil then
    C.tg_ffi_redis_sha1_hex(script, #script, sha_buf)
    sha = ffi_string(sha_buf, 40)
    if nshas >= 1024 then shas, nshas = {}, 0 end
    shas[script] = sha
    nshas = nshas + 1
  end
  return sha
end

-- The hex SHA1 Redis uses as the script's id (for SCRIPT EXISTS etc.).
function _M.script_sha(script)
  if type(script) ~= "string" then error("tg.redis.script_sha: script must be a string", 2) end
  return sha_of(script)
end

-- red:run_script(script, nkeys, ...): EVALSHA (one round trip); when Redis
-- does not know the script (NOSCRIPT: first use, restart, SCRIPT FLUSH),
-- EVAL once, which also loads it for the next EVALSHA.
function _M.run_script(self, script, nkeys, ...)
  if type(script) ~= "string" then error("tg.redis.run_script: script must be a string", 2) end
  local v, err = do_call(self, "tg.redis.run_script", 2, "EVALSHA", sha_of(script), nkeys, ...)
  if v == false and sub(err, 1, 8) == "NOSCRIPT" then
    v, err = do_call(self, "tg.redis.run_script", 2, "EVAL", script, nkeys, ...)
  end
  return v, err
end

-- Pipelines: p:call() only records; the commands go out together, in
-- order, with one wait. Blocking commands are refused here; MULTI ... EXEC
-- is allowed (it is sent in one piece, so no other request's command can
-- land inside the transaction).
local pipe = {}
local pipe_mt = { __index = pipe }

function pipe.call(p, cmd, ...)
  if getmetatable(p) ~= pipe_mt then error("tg.redis.pipeline: use p:call(...), not p.call", 2) end
  classify("tg.redis.pipeline", 2, true, cmd, ...)
  local k = kind_of(cmd)
  if k == TX then
    local u = upper(cmd)
    if u == "MULTI" then
      if p.multi then error("tg.redis.pipeline: nested MULTI", 2) end
      p.multi = true
    elseif not p.multi then
      error("tg.redis.pipeline: " .. cmd .. " without MULTI", 2)
    else
      p.multi = false
    end
  end
  local args, nargs = p.args, p.nargs
  nargs = nargs + 1
  args[nargs] = cmd
  local n = select("#", ...)
  for i = 1, n do
    args[nargs + i] = (arg_string("tg.redis.pipeline", 2, (select(i, ...)), i))
  end
  p.nargs = nargs + n
  p.ncmds = p.ncmds + 1
  p.counts[p.ncmds] = n + 1
end

function pipe.eval(p, script, nkeys, ...) pipe.call(p, "EVAL", script, nkeys, ...) end
function pipe.evalsha(p, sha, nkeys, ...) pipe.call(p, "EVALSHA", sha, nkeys, ...) end

-- red:pipeline(function(p) p:call(...) ... end) -> results | nil, err
-- results[i] = { value, err } for the i-th command: value as red:call
-- returns it, false with err for an error reply. A transport failure fails
-- the whole pipeline (nil, err); commands may then have run or not.
function _M.pipeline(self, fn)
  check_client(self, "tg.redis.pipeline", 2)
  if type(fn) ~= "function" then error("tg.redis.pipeline: expected a function", 2) end
  local p = setmetatable({ args = {}, counts = {}, nargs = 0, ncmds = 0, multi = false }, pipe_mt)
  fn(p)
  if p.multi then error("tg.redis.pipeline: MULTI without EXEC", 2) end
  local ncmds = p.ncmds
  if ncmds == 0 then return {} end
  -- fn may have yielded (another red:call inside it): the shared buffers
  -- are filled only now, right before the send.
  local args = p.args
  reserve(p.nargs, ncmds)
  for i = 1, p.nargs do
    local s = args[i]
    argv[i - 1] = s
    lens[i - 1] = #s
  end
  local counts = p.counts
  for i = 1, ncmds do argcs[i - 1] = counts[i] end
  local res, err = run(self, "tg.redis.pipeline", 2, ncmds, nil)
  if not res then return nil, err end
  local out = new_tab(ncmds, 0)
  nodes, strs, pos = res.nodes, res.strs, 0
  for i = 1, ncmds do
    local v, verr = value()
    out[i] = { v, verr }
  end
  nodes, strs = nil, nil
  C.tg_ffi_redis_done(res)
  return out
end

---------------------------------------------------------------- clients

local default_client = setmetatable({ timeout_ms = 0 }, mt)
-- One client per opts table (weak: a per-config opts table shares its
-- client for as long as the config lives).
local clients = setmetatable({}, { __mode = "k" })

-- tg.redis(opts) -> client. opts.timeout_ms: per-call timeout (default: the
-- config's redis.timeout_ms). Cheap: connections are per worker and shared
-- by every client.
function _M.new(opts, level)
  level = level or 2
  if opts == nil then return default_client end
  if type(opts) ~= "table" then error("tg.redis: opts must be a table", level) end
  local c = clients[opts]
  if c then return c end
  local t = opts.timeout_ms
  if t ~= nil and (type(t) ~= "number" or t <= 0) then
    error("tg.redis: timeout_ms must be a number > 0", level)
  end
  c = setmetatable({ timeout_ms = t or 0 }, mt)
  clients[opts] = c
  return c
end

return setmetatable(_M, { __call = function(_, opts)
  local c = _M.new(opts, 3)
  return c
end })
