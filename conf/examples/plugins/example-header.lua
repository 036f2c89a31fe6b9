-- example-header: the example custom plugin of README "Write a plugin".
--
-- It does two things a real policy plugin does:
--   * rejects requests whose User-Agent contains one of the configured
--     strings (case-insensitive), with a JSON error (403 by default), before
--     anything reaches the upstream (access phase);
--   * adds a header with a configured value: to the request the upstream
--     sees, to the response the client gets, or both.
--
-- Enable it on a route (or globally under `plugins:`):
--
--   plugins_path: ["plugins"]            # relative to the config file
--   routes:
--     - name: api
--       paths: ["/api"]
--       upstream: api
--       plugins:
--         example-header:
--           header: X-Served-By
--           value: tollgate
--           blocked_user_agents: ["badbot", "curl/7.1"]
--
-- Everything the plugin needs comes from the PDK (`require "tollgate"`,
-- docs/pdk.md); it never touches the core's internals.
local tg = require "tollgate"

local lower = string.lower
local find = string.find
local ipairs = ipairs
local setmetatable = setmetatable

-- The lower-cased block list per validated config. The conf table lives as
-- long as the config generation, so a weak-keyed cache computes the list
-- once per config instead of once per request, and forgets it on reload.
local blocked_cache = setmetatable({}, { __mode = "k" })

local function blocked_list(conf)
  local list = blocked_cache[conf]
  if list == nil then
    list = {}
    for i, ua in ipairs(conf.blocked_user_agents) do list[i] = lower(ua) end
    blocked_cache[conf] = list
  end
  return list
end

local function is_blocked(conf, ua)
  local list = blocked_list(conf)
  if #list == 0 or ua == nil then return false end
  ua = lower(ua)
  for i = 1, #list do
    -- Plain substring search: configured strings are not Lua patterns.
    if find(ua, list[i], 1, true) then return true end
  end
  return false
end

return {
  name = "example-header",
  version = "1.0.0",
  -- Before most plugins (auth is around 1000-2000 by convention, so a
  -- blocked client is turned away even before it is authenticated).
  priority = 2500,

  schema = {
    type = "record",
    fields = {
      header = { type = "string", default = "X-Example", match = "^[%w!#$%%&'*+.^_`|~-]+$" },
      value = { type = "string", required = true },
      add_to = { type = "string", default = "response", one_of = { "request", "response", "both" } },
      blocked_user_agents = { type = "array", elements = { type = "string", min_len = 1 }, default = {} },
      status = { type = "integer", default = 403, min = 400, max = 499 },
      message = { type = "string", default = "user agent not allowed" },
    },
  },

  access = function(conf, ctx)
    if is_blocked(conf, tg.request.get_header("User-Agent")) then
      -- Ends the request: later plugins and the upstream are skipped; the
      -- table is sent as JSON with Content-Type: application/json.
      return tg.response.exit(conf.status, { error = conf.message })
    end
    if conf.add_to ~= "response" then
      tg.request.set_header(conf.header, conf.value)
    end
  end,

  -- header_filter runs for every response of the route: proxied, static,
  -- errors, and the 403 above, so the header is always there.
  header_filter = function(conf, ctx)
    if conf.add_to ~= "request" then
      tg.response.set_header(conf.header, conf.value)
    end
  end,
}
