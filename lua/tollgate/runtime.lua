-- tollgate.runtime: plugin loading, per-route phase chains and the request
-- coroutine. Called from C (core/tg_lua.c):
--   init(conf, conf_prefix, tg_prefix, check_only) -> phases | nil, errors
--   route_phases(i)   -> bit mask of phases with plugins on route i (1-based)
--   init_worker()     -> runs each plugin's init_worker
--   request_main(r, route_index, ctx, phase, ...)  the request coroutine
--   run_timer(id)     the body of a timer coroutine
-- Plugins run in this order per phase: the route's plugin_order first, then
-- descending priority (ties by name). A route's config of a plugin replaces
-- the global one; `name: false` on a route disables a global plugin there.
local ffi     = require "ffi"
local C       = require "tollgate.ffi"
local schema  = require "tollgate.schema"
local current = require "tollgate.context"

local co_yield   = coroutine.yield
local xpcall     = xpcall
local traceback  = debug.traceback
local type       = type
local pairs      = pairs
local ipairs     = ipairs
local tostring   = tostring
local sort       = table.sort
local concat     = table.concat
local bit        = require "bit"

local _M = {}

-- Developer switches (never set in production): TG_JIT_V=FILE logs trace
-- starts and aborts (jit.v), TG_JIT_P="MODE,FILE" runs LuaJIT's sampling
-- profiler (jit.p), written when the VM closes.
do
  local v = os.getenv("TG_JIT_V")
  if v and v ~= "" then require("jit.v").start(v) end
  local p = os.getenv("TG_JIT_P")
  if p and p ~= "" then
    local mode, file = p:match("^([^,]*),(.+)$")
    require("jit.p").start(mode or "F", file or p)
  end
end

-- Codes yielded to C (core/tg_lua.h) and phase ids (enum tg_phase_e).
local DONE, WAIT, EXIT, ERROR = 0, 1, 2, 3
local PHASES = { rewrite = 1, access = 2, header_filter = 5, body_filter = 6, log = 7 }
local PHASE_NAMES = {}
for name, id in pairs(PHASES) do PHASE_NAMES[id] = name end
local BODY_FILTER = PHASES.body_filter

_M.null = schema.null
_M.codes = { DONE = DONE, WAIT = WAIT, EXIT = EXIT, ERROR = ERROR }
_M.PHASES = PHASES

local loaded = {}        -- plugin name -> module table
local chains = {}        -- route index -> { [phase id] = { {name, fn, conf}, ... } }
local masks = {}         -- route index -> phase bit mask
local timers = {}        -- timer id -> { fn, args... }
local next_timer = 0

local function file_exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local function load_plugin(name, dirs)
  if loaded[name] then return loaded[name] end
  if type(name) ~= "string" or not name:match("^[%w][%w_-]*$") then
    return nil, "invalid plugin name"
  end
  for _, dir in ipairs(dirs) do
    local path = dir .. "/" .. name .. ".lua"
    if file_exists(path) then
      local chunk, err = loadfile(path)
      if not chunk then return nil, "cannot load " .. path .. ": " .. err end
      local ok, p = pcall(chunk)
      if not ok then return nil, "error loading " .. path .. ": " .. tostring(p) end
      if type(p) ~= "table" then return nil, path .. " does not return a table" end
      if p.name ~= name then
        return nil, path .. ": name is " .. tostring(p.name) .. ", expected \"" .. name .. "\""
      end
      if type(p.priority) ~= "number" then return nil, path .. ": priority must be a number" end
      local has_phase = false
      for phase in pairs(PHASES) do
        if p[phase] ~= nil then
          if type(p[phase]) ~= "function" then return nil, path .. ": " .. phase .. " must be a function" end
          has_phase = true
        end
      end
      if not has_phase and not p.init_worker then
        return nil, path .. ": defines no phase function"
      end
      p.schema = p.schema or { type = "record", fields = {} }
      local ok_def, def_err = schema.check_def(p.schema)
      if not ok_def then return nil, path .. ": invalid schema: " .. def_err end
      loaded[name] = p
      return p
    end
  end
  return nil, "unknown plugin \"" .. name .. "\""
end

-- Validates `plugins:` maps of the config; returns name -> validated conf
-- (false for a disabled plugin) and appends errors.
local function check_plugins(map, path, dirs, errs)
  local out = {}
  if map == nil or map == _M.null then return out end
  for name, pconf in pairs(map) do
    local ppath = path .. "." .. name
    if pconf == false then
      out[name] = false
    else
      local p, err = load_plugin(name, dirs)
      if not p then
        errs[#errs + 1] = ppath .. ": " .. err
      else
        if pconf == _M.null then pconf = {} end
        local conf, verrs = schema.validate(p.schema, pconf, ppath)
        if not conf then
          for _, e in ipairs(verrs) do errs[#errs + 1] = e end
        else
          out[name] = conf
        end
      end
    end
  end
  return out
end

local function build_chain(enabled, order, rpath, errs)
  local names, seen = {}, {}
  if order ~= nil and order ~= _M.null then
    for j, name in ipairs(order) do
      local opath = rpath .. ".plugin_order[" .. (j - 1) .. "]"
      if not enabled[name] then
        errs[#errs + 1] = opath .. ": plugin \"" .. tostring(name) .. "\" is not enabled on this route"
      elseif seen[name] then
        errs[#errs + 1] = opath .. ": plugin \"" .. name .. "\" listed twice"
      else
        names[#names + 1] = name
        seen[name] = true
      end
    end
  end
  local rest = {}
  for name in pairs(enabled) do
    if not seen[name] then rest[#rest + 1] = name end
  end
  sort(rest, function(a, b)
    local pa, pb = loaded[a].priority, loaded[b].priority
    if pa ~= pb then return pa > pb end
    return a < b
  end)
  for _, name in ipairs(rest) do names[#names + 1] = name end

  local chain, mask = {}, 0
  for _, name in ipairs(names) do
    local p = loaded[name]
    for phase, id in pairs(PHASES) do
      if p[phase] then
        chain[id] = chain[id] or {}
        local list = chain[id]
        list[#list + 1] = { name = name, fn = p[phase], conf = enabled[name] }
        mask = bit.bor(mask, bit.lshift(1, id))
      end
    end
  end
  return chain, mask
end

function _M.init(conf, conf_prefix, tg_prefix, check_only)
  local errs = {}
  _M.conf_prefix = conf_prefix   -- relative paths in plugin configs
  local dirs = {}
  local pp = conf.plugins_path
  if type(pp) == "table" then
    for _, d in ipairs(pp) do
      if type(d) == "string" then
        dirs[#dirs + 1] = d:sub(1, 1) == "/" and d or (conf_prefix .. "/" .. d)
      end
    end
  end
  dirs[#dirs + 1] = tg_prefix .. "/plugins"

  _M.config = conf
  -- Sections the core keeps raw are checked by their Lua owners, each
  -- adding "path: message" errors (e.g. consumers for the auth plugins).
  for _, section in ipairs({ "consumers" }) do
    local ok, mod = pcall(require, "tollgate." .. section)
    if ok and type(mod) == "table" and mod.check then
      mod.check(conf[section], section, errs)
    end
  end

  local global = check_plugins(conf.plugins, "plugins", dirs, errs)
  local routes = conf.routes
  if type(routes) ~= "table" then routes = {} end
  for i, route in ipairs(routes) do
    local rpath = "routes[" .. (i - 1) .. "]"
    local enabled = {}
    for name, c in pairs(global) do
      if c then enabled[name] = c end
    end
    local own = check_plugins(type(route) == "table" and route.plugins or nil, rpath .. ".plugins", dirs, errs)
    for name, c in pairs(own) do
      if c == false then enabled[name] = nil else enabled[name] = c end
    end
    chains[i], masks[i] = build_chain(enabled, type(route) == "table" and route.plugin_order or nil, rpath, errs)
  end
  if #errs > 0 then
    sort(errs)
    return nil, errs
  end
  return masks
end

function _M.route_phases(i)
  return masks[i] or 0
end

function _M.init_worker()
  local names = {}
  for name in pairs(loaded) do names[#names + 1] = name end
  sort(names)
  for _, name in ipairs(names) do
    local p = loaded[name]
    if p.init_worker then
      current.plugin = name
      local ok, err = xpcall(p.init_worker, traceback)
      if not ok then
        local msg = "plugin \"" .. name .. "\" init_worker failed: " .. tostring(err)
        C.tg_ffi_log(4, nil, msg, #msg)
      end
    end
  end
  current.plugin = nil
end

-- Admin API paths served by plugins: a plugin may export
--   admin = { ["/proxy-cache/purge"] = function(method, path, query) return status, body end }
-- (body: a table sent as JSON, or a string). The longest matching prefix
-- (on a "/" boundary) wins. Runs synchronously: no yielding in handlers.
function _M.admin(method, path, query)
  local best, best_len
  for _, p in pairs(loaded) do
    if type(p.admin) == "table" then
      for prefix, fn in pairs(p.admin) do
        local n = #prefix
        if (path == prefix or (path:sub(1, n) == prefix and path:sub(n + 1, n + 1) == "/"))
           and (best_len == nil or n > best_len) then
          best, best_len = fn, n
        end
      end
    end
  end
  if not best then return nil end
  local args = {}
  for pair in query:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k then args[k] = v else args[pair] = true end
  end
  local status, body = best(method, path, args)
  if type(body) == "table" then body = require("cjson").encode(body) end
  return status or 200, body or ""
end

local function log_failure(r, name, phase, err)
  local msg = "plugin \"" .. tostring(name) .. "\" failed in " .. tostring(phase) .. ": " .. tostring(err)
  C.tg_ffi_log(4, r, msg, #msg)
end

-- One phase's plugins, called straight from the request coroutine, with no
-- pcall frame under them: LuaJIT cannot compile a return into a C or pcall
-- frame ("NYI: return to lower frame"), so a protected call would end every
-- trace of a plugin at the end of the phase and leave the plugins
-- interpreted. An error ends the coroutine instead; C then calls
-- request_failed below.
local function run_list(list, phase, ctx, chunk, eof)
  for i = 1, #list do
    local p = list[i]
    current.plugin = p.name
    if phase == BODY_FILTER then
      local res = p.fn(p.conf, ctx, chunk, eof)
      if res ~= nil then chunk = tostring(res) end
    else
      p.fn(p.conf, ctx)
    end
  end
  current.plugin = nil
  return chunk
end

-- Called by C (on the main thread) when a request coroutine died of an
-- error: logs it with the plugin and phase that were running, and returns
-- the request's ctx for the phases still to run.
function _M.request_failed(traceback_text)
  local r, ctx, phase, plugin = current.r, current.ctx, current.phase, current.plugin
  current.r, current.ctx, current.phase, current.plugin = nil, nil, nil, nil
  if plugin then
    log_failure(r, plugin, phase, traceback_text)
  else
    local msg = "lua: request coroutine failed in " .. tostring(phase) .. ": " .. tostring(traceback_text)
    C.tg_ffi_log(4, r, msg, #msg)
  end
  return ctx
end

-- After header_filter: when every body_filter plugin of the chain said
-- (tg.response.skip_body_filter) that it leaves this response's body alone,
-- the core does not run body_filter and keeps the upstream's framing.
local function maybe_skip_body_filter(r, chain, ctx)
  local skip = ctx.__skip_body_filter
  local list = chain[BODY_FILTER]
  if not skip or not list then return end
  for i = 1, #list do
    if not skip[list[i].name] then return end
  end
  C.tg_ffi_resp_skip_body_filter(r)
end

-- The request coroutine: one phase per resume, forever. A resume that
-- starts a request (the coroutine's first, or one that C took from its idle
-- list) also passes the request (its address as a number), the route index
-- and the ctx an earlier coroutine of this request kept, if any. C drops
-- the coroutine when it waits or exits at a request's end.
local REQ_PTR = ffi.typeof("tg_request_t *")
local cast = ffi.cast
local NO_CHAIN = {}

function _M.request_main(phase, a1, a2, r_addr, route_index, ctx_in)
  local r, chain, ctx
  while true do
    if r_addr then
      r = cast(REQ_PTR, r_addr)
      chain = chains[route_index] or NO_CHAIN
      ctx = ctx_in or {}
    end
    current.r, current.ctx, current.phase = r, ctx, PHASE_NAMES[phase]
    local code, out
    local list = chain[phase]
    if list then
      code, out = DONE, run_list(list, phase, ctx, a1, a2)
      if phase == PHASES.header_filter then maybe_skip_body_filter(r, chain, ctx) end
    else
      code, out = DONE, a1
    end
    current.r, current.ctx, current.phase = nil, nil, nil
    phase, a1, a2, r_addr, route_index, ctx_in = co_yield(code, out)
  end
end

-- Waits inside a PDK call: yields to C (with the request's ctx, which C
-- keeps should this coroutine be abandoned) and restores the context after.
function _M.wait()
  local r, ctx, phase, plugin = current.r, current.ctx, current.phase, current.plugin
  co_yield(WAIT, ctx)
  current.r, current.ctx, current.phase, current.plugin = r, ctx, phase, plugin
end

function _M.add_timer(delay, fn, ...)
  next_timer = next_timer + 1
  local id = next_timer
  timers[id] = { fn = fn, n = select("#", ...), ... }
  if C.tg_ffi_timer_at(delay, id) ~= 0 then
    timers[id] = nil
    return nil, "cannot start timer"
  end
  return true
end

function _M.run_timer(id)
  local t = timers[id]
  timers[id] = nil
  if not t then return end
  current.r, current.ctx, current.phase, current.plugin = nil, nil, "timer", nil
  local ok, err = xpcall(t.fn, traceback, false, unpack(t, 1, t.n))
  if not ok then
    local msg = "timer failed: " .. tostring(err)
    C.tg_ffi_log(4, nil, msg, #msg)
  end
  current.phase = nil
end

return _M
