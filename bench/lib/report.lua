-- bench/lib/report.lua: the cells bench/run measured -> results.json,
-- results.md and chart.png (gnuplot), and optionally README.md's
-- "Benchmarks" section.
--
-- Each cell line holds raw facts (ticks, requests, the load client's JSON);
-- everything derived (CPU us per request, utilisation, medians, ratios
-- against the targets of issue #8) is computed here, so a results.json can
-- be re-reported without re-running anything:
--   luajit bench/lib/report.lua --cells cells.jsonl --out DIR [...]
local cjson = require "cjson"
local null = cjson.null

local opts = {}
do
  local i = 1
  while arg[i] do
    opts[arg[i]:gsub("^%-%-", "")] = arg[i + 1]
    i = i + 2
  end
end

local floor, huge = math.floor, math.huge
local fmt, concat, sort = string.format, table.concat, table.sort

local CONTENDERS = { "direct", "tollgate", "openresty", "nginx", "haproxy", "node", "node-ko" }
local SCENARIOS = {
  { "S1", "S1 plain proxy, prefix strip" },
  { "S2", "S2 static response, no upstream" },
  { "S3", "S3 key-auth (1,000 keys) + header transform" },
  { "S4-hs256", "S4 JWT HS256, one token" },
  { "S4-rs256", "S4 JWT RS256, one token" },
  { "S4-es256", "S4 JWT ES256, one token" },
  { "S4-hs256-10k", "S4 JWT HS256, 10,000 tokens" },
  { "S5-local", "S5 rate limit, local (never triggers)" },
  { "S5-redis", "S5 rate limit, Redis (never triggers)" },
  { "S5-reject", "S5 rate limit at 2x the limit (reject path)" },
  { "S6", "S6 canary 90/10, sticky hash" },
  { "S7-active", "S7 1,000 active connections, fixed rate" },
  { "S7-close", "S7 Connection: close per request" },
  { "S7-idle", "S7 10,000 idle keep-alive connections" },
  { "S8", "S8 full chain" },
  { "S8-tls", "S8 full chain behind TLS" },
  { "S9", "S9 10,000 routes" },
}
local TITLE = {}
for _, s in ipairs(SCENARIOS) do TITLE[s[1]] = s[2] end

-- Gateway CPU below this share of its core during the max-rps run means
-- the gateway was not the bottleneck: CPU 1 (load generator + upstream) was.
local SATURATED = 0.85

local function num(v)
  if type(v) == "number" and v == v and v ~= huge and v ~= -huge then return v end
  return nil
end

local function dig(t, ...)
  for i = 1, select("#", ...) do
    if type(t) ~= "table" then return nil end
    t = t[select(i, ...)]
  end
  if t == null then return nil end
  return t
end

local function read_lines(path)
  local out = {}
  local f = io.open(path)
  if not f then return out end
  for line in f:lines() do
    if line:find("%S") then
      local ok, v = pcall(cjson.decode, line)
      if ok then out[#out + 1] = v
      else io.stderr:write("report: bad cell line: ", line:sub(1, 200), "\n") end
    end
  end
  f:close()
  return out
end

-- ------------------------------------------------------------ derive

local function errors_of(b)
  if type(b) ~= "table" then return 0 end
  return (dig(b, "errors", "total") or 0) + ((b.responses or 0) - (b.ok or 0))
end

local function derive(c)
  local d = {}
  if c.status ~= "ok" then return d end
  local tck = c.clk_tck or 100
  local gw = c.contender ~= "direct"
  if c.max then
    local m = c.max
    local secs = num(m.duration_s) or 1
    d.rps = num(m.rps)
    if gw and (m.requests or 0) > 0 then
      d.cpu_us = m.gw_ticks / tck * 1e6 / m.requests
      d.gw_util = m.gw_ticks / tck / secs
    end
    d.lg_util = num(m.lg_cpu_s) and m.lg_cpu_s / secs
    d.up_util = m.up_ticks / tck / secs
    d.lg_bound = gw and d.gw_util ~= nil and d.gw_util < SATURATED or nil
    d.errors = (m.non2xx or 0) + (m.socket_errors or 0)
  end
  if c.half then
    local b = c.half.bench
    d.p50 = dig(b, "latency_us", "p50")
    d.p99 = dig(b, "latency_us", "p99")
    d.p999 = dig(b, "latency_us", "p999")
    d.lat_max = dig(b, "latency_us", "max")
    d.half_rate = c.half.rate
    d.half_achieved = dig(b, "achieved_rps")
    if gw and (dig(b, "ok") or 0) > 0 then
      -- tg-bench's own reading over its measured window when it has one.
      d.half_cpu_us = (dig(b, "watch", "ticks") or c.half.gw_ticks) / tck * 1e6 / b.ok
    end
    d.errors = (d.errors or 0) + errors_of(b)
  end
  if c.active then
    local b = c.active.bench
    d.p50 = dig(b, "latency_us", "p50")
    d.p99 = dig(b, "latency_us", "p99")
    d.p999 = dig(b, "latency_us", "p999")
    d.lat_max = dig(b, "latency_us", "max")
    d.rps = dig(b, "achieved_rps")
    if gw and (dig(b, "ok") or 0) > 0 then
      d.cpu_us = (dig(b, "watch", "ticks") or c.active.gw_ticks) / tck * 1e6 / b.ok
    end
    d.errors = errors_of(b)
  end
  if c.reject then
    local b = c.reject.bench
    local answers = dig(b, "responses") or 0
    d.p50 = dig(b, "latency_us", "p50")
    d.p99 = dig(b, "latency_us", "p99")
    d.p999 = dig(b, "latency_us", "p999")
    d.rps = dig(b, "achieved_rps")
    if gw and answers > 0 then
      d.cpu_us = (dig(b, "watch", "ticks") or c.reject.gw_ticks) / tck * 1e6 / answers
      d.rejected_share = (dig(b, "status", "4xx") or 0) / answers
    end
    -- 429s are the point here; only transport errors and 5xx count.
    d.errors = (dig(b, "errors", "total") or 0) + (dig(b, "status", "5xx") or 0)
  end
  if c.idle then
    local open = dig(c.idle, "ready", "open")
    if open and open > 0 and c.idle.rss_idle_kb and c.idle.rss_base_kb then
      d.idle_bytes = (c.idle.rss_idle_kb - c.idle.rss_base_kb) * 1024 / open
    end
    d.idle_open = open
    d.idle_closed = dig(c.idle, "bench", "idle_closed_by_server")
    d.errors = errors_of(dig(c.idle, "bench")) + ((c.idle.connections or 0) - (open or 0))
  end
  d.hwm_mb = num(c.hwm_kb) and c.hwm_kb / 1024
  d.syscalls = dig(c, "syscalls", "per_request")
  return d
end

-- ------------------------------------------------------------ aggregate

local function stats(list)
  local v = {}
  for _, x in ipairs(list) do if num(x) then v[#v + 1] = x end end
  if #v == 0 then return nil end
  sort(v)
  local n = #v
  local med = n % 2 == 1 and v[(n + 1) / 2] or (v[n / 2] + v[n / 2 + 1]) / 2
  return { median = med, min = v[1], max = v[n], n = n }
end

local METRICS = { "cpu_us", "rps", "p50", "p99", "p999", "lat_max", "half_cpu_us", "hwm_mb",
                  "errors", "gw_util", "lg_util", "up_util", "idle_bytes", "half_rate", "rejected_share", "syscalls" }

local cells = read_lines(opts.cells)
local summary, reasons, seen_scen = {}, {}, {}
for _, c in ipairs(cells) do
  c.derived = derive(c)
  seen_scen[c.scenario] = true
  summary[c.scenario] = summary[c.scenario] or {}
  local s = summary[c.scenario]
  s[c.contender] = s[c.contender] or { rounds = {}, status = {} }
  local e = s[c.contender]
  e.status[#e.status + 1] = c.status
  if c.status == "ok" then
    e.rounds[#e.rounds + 1] = c.derived
  else
    e.reason = c.reason
  end
end
for _, byc in pairs(summary) do
  for _, e in pairs(byc) do
    for _, m in ipairs(METRICS) do
      local l = {}
      for _, r in ipairs(e.rounds) do l[#l + 1] = r[m] end
      e[m] = stats(l)
    end
    local lgb = 0
    for _, r in ipairs(e.rounds) do if r.lg_bound then lgb = lgb + 1 end end
    e.lg_bound_rounds = lgb
  end
end

local function med(scen, con, m)
  local e = summary[scen] and summary[scen][con]
  return e and e[m] and e[m].median
end

-- ------------------------------------------------------------ formatting

local function f1(v)
  if not num(v) then return "–" end
  if v >= 1000 then return fmt("%d", floor(v + 0.5)) end
  if v >= 100 then return fmt("%.0f", v) end
  if v >= 10 then return fmt("%.1f", v) end
  return fmt("%.2f", v)
end

local function range(st, f)
  f = f or f1
  if not st then return nil end
  if st.n == 1 then return f(st.median) end
  return fmt("%s (%s–%s)", f(st.median), f(st.min), f(st.max))
end

local function cell_text(scen, con, m, f, short)
  local e = summary[scen] and summary[scen][con]
  if not e then return "" end
  if e[m] then return range(e[m], f) end
  if e.reason then return short and (e.reason:match("^n/a") and "n/a" or "failed") or e.reason end
  return "–"
end

local present = {}
for _, c in ipairs(CONTENDERS) do
  for _, byc in pairs(summary) do
    if byc[c] then present[#present + 1] = c break end
  end
end
local scen_list = {}
for _, s in ipairs(SCENARIOS) do
  if seen_scen[s[1]] then scen_list[#scen_list + 1] = s[1] end
end

-- ------------------------------------------------------------ targets

local targets = {}
local function target(name, value, ok, note)
  targets[#targets + 1] = { target = name, value = value, met = ok, note = note }
end
local function ratio(a, b) if num(a) and num(b) and b > 0 then return a / b end end
local function ok_mark(v) if v == nil then return "–" elseif v then return "yes" else return "**no**" end end

-- bench/run --profile leaves <out>/profiles/<scenario>-<contender>.txt: a
-- split by object ("## by object") and a flat profile by symbol. For a
-- missed CPU target the note points at the cost: where the time went for
-- tollgate and for OpenResty, and tollgate's costliest user-space symbols.
local function read_profile(scen, con)
  local f = io.open((opts.out or ".") .. "/profiles/" .. scen .. "-" .. con .. ".txt")
  if not f then return nil end
  local p = { objects = {}, symbols = {} }
  local section
  for line in f:lines() do
    if line:match("^## by object") then section = "objects"
    elseif line:match("^## by symbol") then section = "symbols"
    elseif section == "objects" then
      local pct, obj = line:match("^%s*([%d.]+)%%%s+(%S.-)%s*$")
      if pct then p.objects[#p.objects + 1] = { pct = tonumber(pct), name = obj } end
    elseif section == "symbols" then
      local pct, obj, sym = line:match("^%s*([%d.]+)%%%s+(%S+)%s+%[[.k]%]%s+(%S+)")
      if pct then p.symbols[#p.symbols + 1] = { pct = tonumber(pct), obj = obj, name = sym } end
    end
  end
  f:close()
  return p
end

local function kernel_pct(p)
  for _, o in ipairs(p.objects) do
    if o.name:match("kernel") then return o.pct end
  end
  return 0
end

local function profile_note(scen)
  local t, o = read_profile(scen, "tollgate"), read_profile(scen, "openresty")
  if not t then return nil end
  local tops = {}
  for _, sym in ipairs(t.symbols) do
    if not sym.obj:match("kernel") and #tops < 3 then
      tops[#tops + 1] = fmt("%s %.1f%%", sym.name, sym.pct)
    end
  end
  local user = {}
  for _, obj in ipairs(t.objects) do
    if not obj.name:match("kernel") and #user < 4 then
      local name = obj.name:gsub("%.so[%d.]*$", ""):gsub("^%[JIT%] tid %d+$", "JIT traces")
      user[#user + 1] = fmt("%s %.0f%%", name, obj.pct)
    end
  end
  return fmt("[profile](profiles/%s-tollgate.txt): kernel %.0f%% of samples (OpenResty %s); user: %s; top: %s",
             scen, kernel_pct(t), o and fmt("%.0f%%", kernel_pct(o)) or "?", concat(user, ", "), concat(tops, ", "))
end

for _, scen in ipairs(scen_list) do
  local r = ratio(med(scen, "tollgate", "cpu_us"), med(scen, "openresty", "cpu_us"))
  if r then
    local strict = scen:match("^S3") or scen:match("^S4") or scen:match("^S8")
    local limit = strict and 0.8 or 1.0
    local met = r <= limit
    target(fmt("%s: CPU/req <= %.1fx OpenResty", scen, limit), fmt("%.2fx", r), met,
           not met and profile_note(scen) or nil)
  end
end
do
  local r = ratio(med("S1", "tollgate", "cpu_us"), med("S1", "nginx", "cpu_us"))
  if r then target("S1: CPU/req <= 1.1x nginx proxy_pass", fmt("%.2fx", r), r <= 1.1) end
end
for _, scen in ipairs(scen_list) do
  local r = ratio(med(scen, "tollgate", "rps"), med(scen, "openresty", "rps"))
  local fixed_rate = scen == "S7-active" or scen == "S5-reject"
  if r and not fixed_rate then
    local e = summary[scen].tollgate
    target(fmt("%s: req/s >= OpenResty", scen), fmt("%.2fx", r), r >= 1.0,
           e.lg_bound_rounds > 0 and "load-generator bound: compare CPU/req" or nil)
  end
  local n = ratio(med(scen, "tollgate", "rps"), med(scen, "node", "rps"))
  if n and not fixed_rate then
    -- When the load generator's CPU caps tollgate's req/s, the ratio of
    -- CPU per request says what tollgate would do with the CPU to spare.
    local cpu_n = ratio(med(scen, "node", "cpu_us"), med(scen, "tollgate", "cpu_us"))
    local bound = summary[scen].tollgate.lg_bound_rounds > 0
    target(fmt("%s: req/s >= 10x Node", scen), fmt("%.1fx", n), n >= 10,
           cpu_n and fmt("%sCPU per request: Node %.1fx tollgate's",
                         bound and "tollgate load-generator bound; " or "", cpu_n) or nil)
  end
end
for _, scen in ipairs({ "S4-rs256", "S4-es256", "S9" }) do
  local r = ratio(med(scen, "tollgate", "cpu_us"), med("S1", "tollgate", "cpu_us"))
  -- A repeated token takes the same cache-hit path whatever its algorithm:
  -- HS256's ratio tells the path's cost from the run's noise.
  local hs = scen:match("^S4") and ratio(med("S4-hs256", "tollgate", "cpu_us"), med("S1", "tollgate", "cpu_us"))
  if r then
    target(fmt("%s: CPU/req within 10%% of S1", scen), fmt("%.2fx", r), r <= 1.1,
           hs and fmt("same cache-hit path, HS256: %.2fx of S1", hs) or nil)
  end
end
for _, scen in ipairs(scen_list) do
  local p50, p99 = med(scen, "tollgate", "p50"), med(scen, "tollgate", "p99")
  if p50 and p99 and p50 > 0 then
    local d50, d99 = med("S1", "direct", "p50"), med("S1", "direct", "p99")
    target(fmt("%s: p99 < 3x p50 at 50%% load", scen), fmt("%.1fx", p99 / p50), p99 < 3 * p50,
           d50 and d99 and d50 > 0 and fmt("client straight to the upstream: %.1fx", d99 / d50) or nil)
  end
end
do
  local b = med("S7-idle", "tollgate", "idle_bytes")
  if b then target("S7: idle keep-alive connection <= 2 KB", fmt("%d B", floor(b + 0.5)), b <= 2048) end
end

-- ------------------------------------------------------------ markdown

local md = {}
local function w(...) md[#md + 1] = concat({ ... }) end

local function cpu_table(level)
  local h = level or "##"
  w(h, " CPU µs per request of the gateway (median of rounds, min–max; lower is better)")
  w("")
  local head, sep = { "| scenario" }, { "|---" }
  for _, c in ipairs(present) do
    if c ~= "direct" then head[#head + 1] = " | " .. c; sep[#sep + 1] = "|---:" end
  end
  w(concat(head), " |")
  w(concat(sep), "|")
  for _, scen in ipairs(scen_list) do
    if scen ~= "S7-idle" then
      local row = { "| ", TITLE[scen] or scen }
      for _, c in ipairs(present) do
        if c ~= "direct" then row[#row + 1] = " | " .. cell_text(scen, c, "cpu_us", nil, true) end
      end
      w(concat(row), " |")
    end
  end
  if seen_scen["S7-idle"] then
    local row = { "| S7 gateway memory per idle keep-alive connection (bytes)" }
    for _, c in ipairs(present) do
      if c ~= "direct" then row[#row + 1] = " | " .. cell_text("S7-idle", c, "idle_bytes", function(v) return fmt("%d", floor(v + 0.5)) end, true) end
    end
    w(concat(row), " |")
  end
  w("")
  -- Why cells are n/a, once per contender and reason.
  local seen, notes = {}, {}
  for _, scen in ipairs(scen_list) do
    for _, c in ipairs(present) do
      local e = c ~= "direct" and summary[scen] and summary[scen][c]
      if e and e.reason and not e.cpu_us and not e.idle_bytes then
        local k = c .. e.reason
        if not seen[k] then seen[k] = true; notes[#notes + 1] = c .. ": " .. e.reason:gsub("^n/a %((.*)%)$", "%1") end
      end
    end
  end
  if #notes > 0 then
    w("n/a: ", concat(notes, "; "), ".")
    w("")
  end
end

local date = opts.date or os.date("!%Y-%m-%d %H:%M UTC")
local provisional = opts.provisional == "1"
local rounds = tonumber(opts.rounds) or 0

w("# tollgate benchmarks, ", date)
w("")
if provisional then
  w("**Provisional (machine shared)**: measured while other engineers ran test suites on the same 2-vCPU")
  w("machine, with short runs. CPU µs per request is the number to read; requests/s and latencies are noisy.")
  w("")
end
if opts.smoke == "1" then
  w("**Smoke run** (CI check of the harness): 0.1 s cells, not a measurement.")
  w("")
end
w("- Machine: ", opts.machine or "?")
w("- Versions: ", opts.versions or "?")
w("- Command: `", opts.command or "bench/run", "` (", rounds, " round(s), ", opts.duration or "?", " s per run)")
w("- Gateway pinned to CPU 0 with one worker; load generator and upstream (nginx, fixed ~1 KB JSON) on CPU 1.")
w("  Max req/s: wrk, closed loop, 32 connections. CPU µs/request: the gateway's utime+stime (/proc) over that")
w("  run ÷ requests. Latency: tg-bench open loop at 50% of that max, from the intended send time.")
w("")
cpu_table()

w("## Targets (issue #8), tollgate against the others in the same run")
w("")
w("| target | measured | met | note |")
w("|---|---:|:-:|---|")
for _, t in ipairs(targets) do
  w("| ", t.target, " | ", t.value, " | ", ok_mark(t.met), " | ", t.note or "", " |")
end
if #targets == 0 then w("| (no pair of cells to compare yet) | | | |") end
w("")

w("## Per scenario")
w("")
for _, scen in ipairs(scen_list) do
  w("### ", TITLE[scen] or scen)
  w("")
  if scen == "S7-idle" then
    w("| contender | bytes per idle connection | connections open | closed by server | errors |")
    w("|---|---:|---:|---:|---:|")
    for _, c in ipairs(present) do
      local e = summary[scen][c]
      if e then
        if e.idle_bytes then
          local r = e.rounds[1] or {}
          w("| ", c, " | ", range(e.idle_bytes, function(v) return fmt("%d", floor(v + 0.5)) end), " | ",
            tostring(r.idle_open or "–"), " | ", tostring(r.idle_closed or "–"), " | ",
            range(e.errors, function(v) return fmt("%d", v) end) or "–", " |")
        else
          w("| ", c, " | ", e.reason or "failed", " | | | |")
        end
      end
    end
  else
    local lat = (scen == "S7-active" or scen == "S5-reject") and "open loop at the fixed rate" or "open loop at 50% of max"
    w("| contender | CPU µs/req | req/s | p50 µs | p99 µs | p99.9 µs | ", lat, ": CPU µs/req | syscalls/req | peak RSS MiB | errors | note |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for _, c in ipairs(present) do
      local e = summary[scen][c]
      if e then
        if #e.rounds == 0 then
          w("| ", c, " | ", e.reason or "failed", " | | | | | | | | | |")
        else
          local note = {}
          if e.lg_bound_rounds > 0 then
            note[#note + 1] = fmt("load-generator bound in %d/%d rounds (gateway CPU %s)", e.lg_bound_rounds,
                                  #e.rounds, e.gw_util and fmt("%.0f%%", e.gw_util.median * 100) or "?")
          end
          if c == "direct" then note[#note + 1] = "client straight to the upstream" end
          if e.rejected_share then note[#note + 1] = fmt("%.0f%% rejected (429)", e.rejected_share.median * 100) end
          w("| ", c, " | ", range(e.cpu_us) or "–", " | ", range(e.rps, function(v) return fmt("%d", floor(v + 0.5)) end) or "–",
            " | ", range(e.p50) or "–", " | ", range(e.p99) or "–", " | ", range(e.p999) or "–",
            " | ", range(e.half_cpu_us) or "–", " | ", range(e.syscalls) or "–", " | ", range(e.hwm_mb) or "–", " | ", range(e.errors, function(v) return fmt("%d", v) end) or "0",
            " | ", concat(note, "; "), " |")
        end
      end
    end
  end
  w("")
end

local s0
do
  local f = opts.s0 and io.open(opts.s0)
  if f then
    local ok, v = pcall(cjson.decode, f:read("*a"))
    f:close()
    if ok then s0 = v end
  end
end
if s0 then
  w("## S0 micro-benchmarks (one call, on the gateway's CPU)")
  w("")
  w("| operation | µs |")
  w("|---|---:|")
  local keys = {}
  for k in pairs(s0.crypto_us or {}) do keys[#keys + 1] = k end
  sort(keys)
  for _, k in ipairs(keys) do w("| openssl speed: ", k, " | ", f1(s0.crypto_us[k]), " |") end
  keys = {}
  for k in pairs(s0.redis_us or {}) do keys[#keys + 1] = k end
  sort(keys)
  for _, k in ipairs(keys) do
    local r = s0.redis_us[k]
    w("| Redis round trip (redis-benchmark, 1 client): ", k, " | ", f1(r.round_trip), " (p99 ", f1(r.p99), ") |")
  end
  local l = s0.lua_call_ns
  if type(l) == "table" then
    w("| LuaJIT call into C, classic C API (lua_CFunction) | ", fmt("%.3f", l.capi_ns / 1000), " |")
    w("| LuaJIT call into C, FFI | ", fmt("%.3f", l.ffi_ns / 1000), " |")
  end
  local hp = s0.http_parser
  if type(hp) == "table" then
    w("| http-parser: one ", hp.head_bytes, "-byte request head (9 headers) | ", fmt("%.3f", hp.ns_per_head / 1000), " |")
  end
  w("")
end

w("## Notes")
w("")
w("- OpenResty is Debian's nginx with lua-nginx-module loaded (`nginx-extras`). Its plugin-scenario policies")
w("  (bench/openresty/) were written for this benchmark: lua-resty-jwt and lua-resty-redis are not packaged")
w("  in Debian, so HMAC/RSA/ECDSA go through FFI to libcrypto and Redis through a small RESP client over")
w("  ngx.socket.tcp. Plain scenarios run no Lua per request.")
w("- Node: express + http-proxy-middleware + jsonwebtoken as the tutorials write them (bench/node/, versions")
w("  pinned in package-lock.json), one process, keep-alive agent to the upstream.")
w("- `direct` is the client straight to the upstream: the ceiling of the load generator + upstream CPU.")
w("- \"load-generator bound\": the gateway used less than 85% of its CPU during the max-rps run, so its req/s")
w("  is the other CPU's limit, not its own; CPU µs/request stays valid.")
w("- syscalls/req: `strace -c` on the gateway's processes over ", "3,000 closed-loop requests (round 1); a count, so it")
w("  does not move with the machine's load. The per-call breakdown is in results.json (`cells[].syscalls`).")
w("- Node gets 5 s of warm-up load per cell instead of 1 s (V8 optimises the hot path only after seconds of load).")
w("- Latency \"at 50% of max\" runs each contender at half of its *own* max, so the rates differ: a contender with")
w("  a higher max is measured at a higher rate, closer to the limit of CPU 1 (load generator + upstream), where")
w("  queueing on that CPU shows up as latency. S7-active compares everyone at the same rate (3,000/s).")
w("- S8-tls: the same chain behind TLS (ECDSA P-256 certificate, keep-alive connections, so handshakes are")
w("  rare): max req/s by wrk, open-loop latency by tg-bench --tls (handshakes happen before the measured window).")
w("")

local md_text = concat(md, "\n") .. "\n"

-- ------------------------------------------------------------ outputs

local out = opts.out or "."
local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function strip(e)
  local o = {}
  for k, v in pairs(e) do if k ~= "rounds" and k ~= "status" then o[k] = v end end
  return o
end
local json_summary = {}
for scen, byc in pairs(summary) do
  json_summary[scen] = {}
  for c, e in pairs(byc) do json_summary[scen][c] = strip(e) end
end
cjson.encode_sparse_array(true)
write(out .. "/results.json", cjson.encode({
  meta = { date = date, machine = opts.machine, versions = opts.versions, command = opts.command,
           rounds = rounds, duration_s = tonumber(opts.duration), provisional = provisional,
           smoke = opts.smoke == "1" },
  s0 = s0 or null, summary = json_summary, targets = targets, cells = cells,
}) .. "\n")
write(out .. "/results.md", md_text)

-- Chart: CPU us per request by scenario (clusters) and contender (bars).
local chart_cons = {}
for _, c in ipairs(present) do if c ~= "direct" then chart_cons[#chart_cons + 1] = c end end
local rows = {}
for _, scen in ipairs(scen_list) do
  if scen ~= "S7-idle" then
    local row, any = { scen }, false
    for _, c in ipairs(chart_cons) do
      local v = med(scen, c, "cpu_us")
      row[#row + 1] = v and fmt("%.2f", v) or "-"
      any = any or v ~= nil
    end
    if any then rows[#rows + 1] = concat(row, " ") end
  end
end
if #rows > 0 and #chart_cons > 0 and os.execute("command -v gnuplot >/dev/null 2>&1") then
  write(out .. "/chart.dat", "scenario " .. concat(chart_cons, " ") .. "\n" .. concat(rows, "\n") .. "\n")
  local plot = {}
  for i = 1, #chart_cons do
    plot[#plot + 1] = fmt("'%s/chart.dat' using %d:xtic(1) title columnheader(%d)", out, i + 1, i + 1)
  end
  write(out .. "/chart.gp", concat({
    "set terminal pngcairo size 1200,560 font 'sans,10'",
    fmt("set output '%s/chart.png'", out),
    fmt("set title 'Gateway CPU µs per request (median), %s%s'", date, provisional and ' — provisional (machine shared)' or ''),
    "set style data histograms",
    "set style histogram clustered gap 1",
    "set style fill solid 0.9 border -1",
    "set boxwidth 0.9",
    "set datafile missing '-'",
    "set logscale y",
    "set yrange [1:*]",
    "set ylabel 'CPU µs / request (log scale)'",
    "set grid ytics",
    "set key top left",
    "set xtics rotate by -30",
    "plot " .. concat(plot, ", "),
  }, "\n") .. "\n")
  os.execute(fmt("gnuplot '%s/chart.gp' 2>'%s/chart.err'; [ -s '%s/chart.err' ] || rm -f '%s/chart.err'", out, out, out, out))
end

-- README: replace everything from "## Benchmarks" to the end.
if opts.readme and opts.readme ~= "" then
  local f = io.open(opts.readme)
  local text = f and f:read("*a") or ""
  if f then f:close() end
  local s = text:find("\n## Benchmarks\n", 1, true)
  if s then text = text:sub(1, s) else text = text:gsub("\n*$", "\n\n") end
  local rel = out:gsub("^.*/bench/results/", "bench/results/")
  local sec = {}
  sec[#sec + 1] = "## Benchmarks"
  sec[#sec + 1] = ""
  sec[#sec + 1] = "`bench/run` starts tollgate, OpenResty-style nginx + Lua, plain nginx, HAProxy and an Express"
  sec[#sec + 1] = "gateway against one upstream on loopback and measures each scenario of issue #8 (see"
  sec[#sec + 1] = "[docs/bench.md](docs/bench.md)). Latest: " .. date .. ", " .. (opts.machine or "?") .. "."
  sec[#sec + 1] = "Command: `" .. (opts.command or "bench/run") .. "`. Full tables, targets and chart: [" .. rel .. "/results.md](" .. rel .. "/results.md)."
  sec[#sec + 1] = ""
  if provisional then
    sec[#sec + 1] = "**Provisional (machine shared)**: short runs while other test suites ran on the same 2 vCPUs."
    sec[#sec + 1] = ""
  end
  local save = md
  md = {}
  cpu_table("###")
  local t = concat(md, "\n")
  md = save
  sec[#sec + 1] = t
  local missed = {}
  for _, tg in ipairs(targets) do
    if tg.met == false then
      local note = (tg.note or ""):gsub("%(profiles/", "(" .. rel .. "/profiles/")
      missed[#missed + 1] = "| " .. tg.target .. " | " .. tg.value .. " | " .. note .. " |"
    end
  end
  if #missed > 0 then
    sec[#sec + 1] = "### Targets missed in this run"
    sec[#sec + 1] = ""
    sec[#sec + 1] = "| target | measured | where the cost is |"
    sec[#sec + 1] = "|---|---:|---|"
    for _, line in ipairs(missed) do sec[#sec + 1] = line end
    sec[#sec + 1] = ""
  end
  text = text .. concat(sec, "\n") .. "\n"
  write(opts.readme, text)
end

-- Console: the headline table.
io.write(md_text:match("## CPU.-\n\n(.-\n)\n") or "", "\n")
io.write("results: ", out, "/results.md\n")

-- Smoke (CI): every cell that ran must have answered 2xx without errors.
if opts.smoke == "1" then
  local passed, failed = 0, 0
  for _, c in ipairs(cells) do
    if c.status ~= "n/a" then
      local d = c.derived or {}
      if c.status == "ok" and (d.errors or 0) == 0 and (dig(c, "max", "requests") or 0) > 0
         and (dig(c, "half", "bench", "ok") or 0) > 0 then
        passed = passed + 1
      else
        failed = failed + 1
        io.write("smoke: FAILED ", c.scenario, " ", c.contender, ": ", c.reason or fmt("%d errors", d.errors or -1), "\n")
      end
    end
  end
  io.write(fmt("smoke: %d passed, %d failed\n", passed, failed))
  os.exit((failed == 0 and passed > 0) and 0 or 1)
end
