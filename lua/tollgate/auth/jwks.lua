-- tollgate.auth.jwks: JSON Web Key Sets fetched from an identity
-- provider's `jwks_url`, one fetcher per URL per worker.
--
-- The set is fetched in the background (a timer chain started when the
-- fetcher is created, normally from jwt-auth's init_worker), replaced only
-- by a set that parses and holds at least one usable key, and kept as it is
-- while the provider is unreachable or answers garbage: stale keys beat
-- rejecting every user during an IdP outage. A token whose `kid` is not in
-- the set (the provider rotated keys since our last fetch) triggers one
-- refetch, at most once per `min_refetch_s` for the whole worker, so a
-- flood of made-up kids cannot turn the gateway into a load generator
-- against the IdP. Concurrent requests that need a fetch share the one in
-- flight (they wait for it, bounded by its timeout) instead of each
-- starting their own.
--
-- Fetching uses tg.http (non-blocking; the request or timer coroutine
-- yields), parsing tollgate.auth.jwt.parse_jwks.

local jwt = require "tollgate.auth.jwt"

local type, tostring, setmetatable, pcall = type, tostring, setmetatable, pcall
local min, max = math.min, math.max

local _M = {}
local mt = { __index = _M }

local fetchers = {}   -- url -> fetcher; module state = this worker's config

-- A key set bigger than this is not one (a login page, a misrouted file).
local MAX_JWKS_BYTES = 512 * 1024
-- Step of the bounded wait for a fetch another coroutine started.
local WAIT_STEP_S = 0.005

local function tg()
  return require "tollgate"
end

-- In a request the PDK logger already names the running plugin; in the
-- refresh timer nothing does, so the name is added the same way.
local function log(level, ...)
  local t = tg()
  if require("tollgate.context").plugin then
    t.log[level](...)
  else
    t.log[level]("[jwt-auth] ", ...)
  end
end

-- jwks.get(url, opts) -> the fetcher of url, created (and its background
-- refresh started) on first use. opts = { refresh_s, min_refetch_s,
-- timeout_ms }; the first caller's options win for a URL.
function _M.get(url, opts)
  local f = fetchers[url]
  if f then
    return f
  end
  opts = opts or {}
  f = setmetatable({
    url = url,
    keys = nil,          -- kid -> key, the last good set
    body = nil,          -- its text, to skip re-parsing an unchanged set
    fetched_at = nil,    -- tg.now() of the last good fetch
    last_attempt = nil,  -- tg.now() of the last fetch started
    fetching = false,
    refresh_s = opts.refresh_s or 300,
    min_refetch_s = opts.min_refetch_s or 10,
    timeout_ms = opts.timeout_ms or 2000,
    fetches = 0,         -- attempts, for tests and debugging
  }, mt)
  fetchers[url] = f
  f:start()
  return f
end

-- Runs one fetch now (the caller yields). Shares a fetch already in
-- flight. Returns true when the fetcher has keys afterwards.
function _M:fetch()
  local t = tg()
  if self.fetching then
    local deadline = t.now() + self.timeout_ms / 1000 + 1
    for _ = 1, (self.timeout_ms / 1000 + 1) / WAIT_STEP_S + 1 do
      if not self.fetching or t.now() >= deadline then
        break
      end
      t.sleep(WAIT_STEP_S)
    end
    return self.keys ~= nil
  end
  self.fetching = true
  self.last_attempt = t.now()
  self.fetches = self.fetches + 1
  local ok, res, err = pcall(t.http.request, {
    method = "GET", url = self.url, timeout_ms = self.timeout_ms,
    headers = { Accept = "application/json" }, max_body_bytes = MAX_JWKS_BYTES,
  })
  self.fetching = false
  if not ok then
    log("warn", "jwks_url ", self.url, ": fetch failed: ", tostring(res))
    return self.keys ~= nil
  end
  if not res then
    log("warn", "jwks_url ", self.url, ": fetch failed: ", tostring(err),
        self.keys and " (keeping the previous keys)" or "")
    return self.keys ~= nil
  end
  if res.status ~= 200 or type(res.body) ~= "string" then
    log("warn", "jwks_url ", self.url, ": status ", tostring(res.status),
        self.keys and " (keeping the previous keys)" or "")
    return self.keys ~= nil
  end
  if #res.body > MAX_JWKS_BYTES then
    log("warn", "jwks_url ", self.url, ": key set larger than ", MAX_JWKS_BYTES, " bytes")
    return self.keys ~= nil
  end
  if res.body ~= self.body then
    local keys, skipped = jwt.parse_jwks(res.body)
    if not keys then
      log("warn", "jwks_url ", self.url, ": ", skipped,
          self.keys and " (keeping the previous keys)" or "")
      return self.keys ~= nil
    end
    for i = 1, #skipped do
      log("info", "jwks_url ", self.url, ": key ignored: ", skipped[i])
    end
    self.keys, self.body = keys, res.body
  end
  self.fetched_at = t.now()
  return true
end

-- Background refresh: a chain of one-shot timers, so the next delay can
-- depend on the outcome (sooner after a failure, never sooner than
-- min_refetch_s).
function _M:start()
  local t = tg()
  local fetcher = self
  local function tick(premature)
    if premature then
      return
    end
    local good = fetcher:fetch()
    local delay = good and fetcher.refresh_s
                  or min(fetcher.refresh_s, max(fetcher.min_refetch_s, 1))
    t.timer.at(delay, tick)
  end
  local ok, err = t.timer.at(0, tick)
  if not ok then
    log("err", "jwks_url ", self.url, ": cannot start the refresh timer: ", tostring(err))
  end
end

-- fetcher:key(kid) -> key | nil, err. An unknown kid refetches the set
-- (yielding) when the last attempt is older than min_refetch_s, or waits
-- for a fetch in flight.
function _M:key(kid)
  local keys = self.keys
  local k = keys and keys[kid]
  if k then
    return k
  end
  local now = tg().now()
  if self.fetching or self.last_attempt == nil or now - self.last_attempt >= self.min_refetch_s then
    self:fetch()
    k = self.keys and self.keys[kid]
    if k then
      return k
    end
  end
  if self.keys == nil then
    return nil, "key set not available"
  end
  return nil, "unknown kid"
end

return _M
