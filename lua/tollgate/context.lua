-- tollgate.context: what is running right now in this worker's VM. The
-- runtime sets it every time a request coroutine is resumed (after each
-- yield), so PDK functions know their request, phase and plugin without a
-- lookup. Only one coroutine runs at a time, so one table is enough.
return {
  r = nil,        -- tg_request_t * of the running request (nil in timers)
  ctx = nil,      -- the request's ctx table
  phase = nil,    -- phase name ("rewrite", "access", ...)
  plugin = nil,   -- name of the plugin whose code is running
}
