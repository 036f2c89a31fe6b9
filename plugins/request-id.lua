-- request-id: one id per request, from the client or made here, carried
-- upstream, back to the client and into every log line of the request;
-- plus W3C trace-context propagation (`traceparent`).
--
-- The id is the incoming header (X-Request-Id by default) when it is a sane
-- token: 1 to 128 visible ASCII characters other than `"` and `\` (the
-- error log prints the id inside double quotes without escaping, so those
-- two would let a client forge log fields). Otherwise a random UUIDv4.
--
-- It runs in rewrite with the highest priority of the shipped plugins
-- (100000), so every plugin after it, and every log line they write, sees
-- the id. It publishes `ctx.request_id` (templates, response-transformer's
-- envelope) and `ctx.traceparent`. The response header is set in
-- header_filter, which runs for every answer: proxied, exits of other
-- plugins and the gateway's own errors.
--
-- Docs: docs/plugins/request-id.md.
local ffi = require "ffi"
local bit = require "bit"
local tg  = require "tollgate"

local request  = tg.request
local response = tg.response
local band, bor, rshift = bit.band, bit.bor, bit.rshift
local byte       = string.byte
local find       = string.find
local ffi_string = ffi.string

local MAX_ID_LEN = 128          -- longest incoming id kept (issue #6)
local RANDOM_BYTES = 16 + 16 + 8 -- UUID, trace-id, parent-id: one RAND_bytes call

local HEX = ffi.new("const char[16]", "0123456789abcdef")
-- Output scratch: a UUID (36) or a traceparent (55). Filled and copied out
-- with ffi.string before anything else can run.
local out = ffi.new("char[56]")

local function put_hex(s, from, to, pos)
  for i = from, to do
    local b = byte(s, i)
    out[pos] = HEX[rshift(b, 4)]
    out[pos + 1] = HEX[band(b, 15)]
    pos = pos + 2
  end
  return pos
end

-- RFC 9562 version 4: random bits, version nibble 4, variant bits 10.
local function uuid4(rnd)
  local b7 = bor(band(byte(rnd, 7), 0x0f), 0x40)
  local b9 = bor(band(byte(rnd, 9), 0x3f), 0x80)
  local p = put_hex(rnd, 1, 4, 0)
  out[p] = 45                                   -- "-"
  p = put_hex(rnd, 5, 6, p + 1)
  out[p] = 45
  out[p + 1] = HEX[rshift(b7, 4)]
  out[p + 2] = HEX[band(b7, 15)]
  p = put_hex(rnd, 8, 8, p + 3)
  out[p] = 45
  out[p + 1] = HEX[rshift(b9, 4)]
  out[p + 2] = HEX[band(b9, 15)]
  p = put_hex(rnd, 10, 10, p + 3)
  out[p] = 45
  p = put_hex(rnd, 11, 16, p + 1)
  return ffi_string(out, p)
end

-- version 00, trace-id, parent-id, flags. All-zero ids are invalid, and 16
-- random bytes being all zero is not a case worth a branch.
local function new_traceparent(rnd, sampled)
  out[0], out[1], out[2] = 48, 48, 45           -- "00-"
  local p = put_hex(rnd, 17, 32, 3)
  out[p] = 45
  p = put_hex(rnd, 33, 40, p + 1)
  out[p], out[p + 1], out[p + 2] = 45, 48, sampled and 49 or 48   -- "-01" / "-00"
  return ffi_string(out, p + 3)
end

local function sane_id(id)
  local n = #id
  return n >= 1 and n <= MAX_ID_LEN and not find(id, '[^!-~]') and not find(id, '["\\]')
end

local LOWER_HEX_ID = "^[0-9a-f]+$"

-- W3C Trace Context level 1, section 3.2: version-traceid-parentid-flags,
-- lowercase hex, no all-zero ids, version ff invalid; a version above 00
-- may carry more fields after a "-".
local function valid_traceparent(tp)
  if tp == nil or #tp < 55 then return false end
  local ver, tid, pid, flags = tp:match("^(%x%x)%-(%x+)%-(%x+)%-(%x%x)")
  if not ver or #tid ~= 32 or #pid ~= 16 then return false end
  if not find(ver .. tid .. pid .. flags, LOWER_HEX_ID) then return false end
  if ver == "ff" then return false end
  if ver == "00" then
    if #tp ~= 55 then return false end
  elseif #tp > 55 and byte(tp, 56) ~= 45 then
    return false
  end
  if not find(tid, "[^0]") or not find(pid, "[^0]") then return false end
  return true
end

local function rewrite(conf, ctx)
  local name = conf.header_name
  local id = conf.trust_incoming and request.get_header(name) or nil
  local rnd
  if id == nil or not sane_id(id) then
    rnd = tg.crypto.random_bytes(RANDOM_BYTES)
    id = uuid4(rnd)
  end
  -- Always set: it also collapses repeated incoming headers into one.
  request.set_header(name, id)
  request.set_id(id)
  ctx.request_id = id

  if conf.traceparent then
    local tp = request.get_header("traceparent")
    if not valid_traceparent(tp) then
      rnd = rnd or tg.crypto.random_bytes(RANDOM_BYTES)
      tp = new_traceparent(rnd, conf.trace_sampled)
      -- A tracestate without a valid parent must not travel (W3C 3.3).
      request.clear_header("tracestate")
    end
    request.set_header("traceparent", tp)
    ctx.traceparent = tp
  end
end

local function header_filter(conf, ctx)
  local id = ctx.request_id
  if conf.echo_downstream and id then
    response.set_header(conf.header_name, id)
  end
end

return {
  name = "request-id",
  version = "1.0.0",
  priority = 100000,
  schema = {
    type = "record",
    fields = {
      header_name = { type = "string", default = "X-Request-Id",
                      match = "^[%w!#$%%&'*+%-.^_`|~]+$",
                      check = function(v)
                        local l = v:lower()
                        if l == "content-length" or l == "transfer-encoding" or l == "connection"
                           or l == "host" or l == "traceparent" or l == "tracestate" then
                          return nil, "cannot be " .. v
                        end
                        return true
                      end,
                      description = "request and response header carrying the id" },
      trust_incoming = { type = "boolean", default = true,
                         description = "keep a sane incoming id (false: always generate)" },
      echo_downstream = { type = "boolean", default = true,
                          description = "send the id back to the client" },
      traceparent = { type = "boolean", default = true,
                      description = "propagate a valid W3C traceparent, else create one" },
      trace_sampled = { type = "boolean", default = true,
                        description = "sampled flag of a traceparent created here" },
    },
  },
  rewrite = rewrite,
  header_filter = header_filter,
}
