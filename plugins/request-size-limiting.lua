-- request-size-limiting: refuses request bodies larger than `max_bytes`
-- with 413 {"error":"Content Too Large"}, on routes that need a smaller
-- limit than the core's `limits.max_body_bytes`.
--
-- With a Content-Length the decision is made from the header, before a
-- byte of the body is read (an `Expect: 100-continue` client is refused
-- without ever sending it; otherwise the connection is closed after the
-- 413, so the unread body cannot be taken for the next request).
--
-- A chunked body has no length up front. The PDK can only read a body
-- whole (tg.request.get_body()), so the plugin buffers it in memory and
-- counts; the core still stops at `limits.max_body_bytes` with its own 413,
-- which bounds that buffer. The trade-off: on such a route a chunked body
-- is no longer streamed to the upstream but held until complete, and a
-- client can make the gateway hold up to the core's limit per request.
-- `require_content_length: true` refuses bodies without a length (411)
-- instead, for routes where neither is acceptable.
local tg = require "tollgate"

local tonumber = tonumber
local get_header = tg.request.get_header
local get_body = tg.request.get_body
local exit = tg.response.exit

local TOO_LARGE = { error = "Content Too Large" }
local LENGTH_REQUIRED = { error = "Length Required" }

local function access(conf)
  local cl = get_header("content-length")
  if cl then
    -- The core has already refused a malformed or repeated Content-Length.
    if tonumber(cl) > conf.max_bytes then return exit(413, TOO_LARGE) end
    return
  end
  if get_header("transfer-encoding") == nil then return end   -- no body
  if conf.require_content_length then return exit(411, LENGTH_REQUIRED) end
  local body = get_body()
  -- nil: the core refused the body itself (over its own limit, a client
  -- that stopped sending) and answers the request.
  if body and #body > conf.max_bytes then return exit(413, TOO_LARGE) end
end

return {
  name = "request-size-limiting",
  version = "1.0.0",
  -- After authentication (an anonymous client cannot make us buffer a
  -- body), before rate limiting's neighbours; Kong's priority.
  priority = 951,
  schema = {
    type = "record",
    fields = {
      max_bytes = { type = "integer", required = true, min = 0,
                    description = "largest accepted request body, in bytes" },
      require_content_length = { type = "boolean", default = false,
                                 description = "411 for bodies without Content-Length" },
    },
  },
  access = access,
}
