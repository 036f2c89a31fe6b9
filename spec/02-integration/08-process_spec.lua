-- 08-process_spec.lua: the process model, driven through the real binary.
--
-- `tollgate -c FILE` runs a master that forks worker_processes workers
-- sharing the listening sockets. These specs check what an operator relies
-- on: the workers exist and all serve; SIGHUP swaps in a new config without
-- closing a listening socket or failing a request (also under load and with
-- a 10,000-route config); a broken config is refused error by error while
-- the old one keeps serving; SIGTERM drains, SIGINT/SIGQUIT stop at once; a
-- dead worker is replaced; workers do not outlive a killed master; listen
-- addresses follow the config across reloads.
--
-- Load comes from spec/support/loadgen.lua, run as separate processes so
-- that this process can keep signalling the gateway while requests flow.
-- Stops that must report an exit status run the gateway under a small `sh`
-- wrapper (start_wrapped) that records it, because helpers.start_gateway
-- leaves the master to be reaped by whoever adopts it.

local helpers = require "spec.helpers"
local socket = require "socket"

local fmt, concat = string.format, table.concat
local gettime = socket.gettime

local LOADGEN_WAIT = 15      -- seconds a loadgen may take beyond its own bound

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local read_file = helpers.read_file

local write_file = helpers.write_file

local function capture(cmd)
  local f = assert(io.popen(cmd, "r"))
  local out = f:read("*a")
  f:close()
  return out
end

-- Live children of `pid` (zombies excluded), sorted.
local function children(pid)
  local out = {}
  for p in capture("pgrep -P " .. tonumber(pid) .. " 2>/dev/null"):gmatch("%d+") do
    p = tonumber(p)
    if helpers.pid_alive(p) then
      out[#out + 1] = p
    end
  end
  table.sort(out)
  return out
end

local function contains(list, v)
  for _, x in ipairs(list) do
    if x == v then
      return true
    end
  end
  return false
end

local function any_alive(pids)
  for _, p in ipairs(pids) do
    if helpers.pid_alive(p) then
      return true
    end
  end
  return false
end

-- Inodes of the LISTEN sockets bound to `port` (IPv4 and IPv6), sorted. The
-- same inode before and after a reload means the socket was never closed.
local function listen_inodes(port)
  local inodes = {}
  for _, path in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    for line in (read_file(path) or ""):gmatch("[^\n]+") do
      local lport, st, inode = line:match(
        "^%s*%d+:%s+%x+:(%x+)%s+%x+:%x+%s+(%x%x)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)")
      if lport and tonumber(lport, 16) == port and st == "0A" then
        inodes[#inodes + 1] = inode
      end
    end
  end
  table.sort(inodes)
  return inodes
end

-- The [error]/[crit] lines of an error log that match none of `allowed`.
local function unexpected_errors(log, allowed)
  local bad = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("[error]", 1, true) or line:find("[crit]", 1, true) or line:find("[alert]", 1, true) then
      local ok = false
      for _, pat in ipairs(allowed or {}) do
        if line:find(pat) then
          ok = true
          break
        end
      end
      if not ok then
        bad[#bad + 1] = line
      end
    end
  end
  return concat(bad, "\n")
end

local function status_of(admin_port)
  local res = assert(helpers.request(admin_port, { path = "/status" }))
  assert.equal(200, res.status)
  assert.is_table(res.json)
  return res.json
end

local function worker_pids(st)
  local pids = {}
  for _, w in ipairs(st.workers) do
    pids[#pids + 1] = w.pid
  end
  table.sort(pids)
  return pids
end

------------------------------------------------------------------------------
-- load generator processes
------------------------------------------------------------------------------

local loadgens = {}   -- every loadgen PID started here, for teardown

-- Starts spec/support/loadgen.lua against `port` with `args` (a list) and
-- waits until it printed "started". Returns { pid, wait() }; wait() returns
-- the parsed summary { ok, fail, retried, conns, max_ms, avg_ms, line,
-- errors }.
local function start_loadgen(port, args)
  local dir = helpers.tmpdir("lg")
  local out, err = dir .. "/stdout", dir .. "/stderr"
  local parts = { "luajit", "spec/support/loadgen.lua", tostring(port) }
  for _, a in ipairs(args) do
    parts[#parts + 1] = a
  end
  for i = 1, #parts do
    parts[i] = shell_quote(parts[i])
  end
  local cmd = fmt("cd %s && exec %s >%s 2>%s </dev/null & echo $!", shell_quote(helpers.repo_root()),
                  concat(parts, " "), shell_quote(out), shell_quote(err))
  local pid = assert(tonumber(capture(cmd):match("%d+")), "cannot start loadgen")
  loadgens[#loadgens + 1] = pid
  assert(helpers.wait_until(function()
    return (read_file(out) or ""):find("started", 1, true)
  end, 5), "loadgen did not start: " .. (read_file(err) or ""))
  local lg = { pid = pid }
  function lg.wait()
    local line = helpers.wait_until(function()
      return (read_file(out) or ""):match("\n(ok %d+ fail %d+[^\n]*)")
    end, LOADGEN_WAIT, 0.05)
    assert(line, "loadgen did not finish: " .. (read_file(err) or ""))
    local r = { line = line, errors = read_file(err) or "" }
    for k, v in line:gmatch("(%a[%a_]*) ([%d%.]+)") do
      r[k] = tonumber(v)
    end
    return r
  end
  return lg
end

local function stop_loadgens()
  for i = #loadgens, 1, -1 do
    local pid = loadgens[i]
    if helpers.pid_alive(pid) then
      os.execute("kill -s KILL " .. pid .. " 2>/dev/null")
    end
    loadgens[i] = nil
  end
end

------------------------------------------------------------------------------
-- a gateway whose exit status is recorded
------------------------------------------------------------------------------

local wrapped = {}    -- process groups started by start_wrapped, for teardown

-- Starts tollgate under `setsid sh -c 'tollgate -c CONF; echo $? > FILE'`,
-- so the master's exit status can be read back. conf is a table; listen,
-- admin and logs are filled in. Returns { pid (the master), sh_pid, port,
-- admin_port, dir, error_log(), exit_code() (nil while running) }.
local function start_wrapped(conf)
  local dir = helpers.tmpdir("gwx")
  local c = {}
  for k, v in pairs(conf) do
    c[k] = v
  end
  local port, admin_port = helpers.free_port(), helpers.free_port()
  c.listen = { "127.0.0.1:" .. port }
  c.admin = { listen = "127.0.0.1:" .. admin_port }
  c.worker_processes = c.worker_processes or 1
  c.error_log = { path = dir .. "/error.log", level = "info" }
  c.access_log = { path = dir .. "/access.log", format = "json" }
  local conf_path, status_path = dir .. "/tollgate.yaml", dir .. "/exit_status"
  write_file(conf_path, helpers.yaml(c))
  local cmd = fmt("cd %s && setsid sh -c %s sh %s %s %s >%s 2>&1 </dev/null & echo $!",
                  shell_quote(helpers.repo_root()),
                  shell_quote('"$1" -c "$2"; echo $? >"$3"'),
                  shell_quote(helpers.bin("tollgate")), shell_quote(conf_path),
                  shell_quote(status_path), shell_quote(dir .. "/stderr.log"))
  local sh_pid = assert(tonumber(capture(cmd):match("%d+")))
  wrapped[#wrapped + 1] = sh_pid
  local gw = { sh_pid = sh_pid, port = port, admin_port = admin_port, dir = dir }
  gw.pid = assert(helpers.wait_until(function()
    return children(sh_pid)[1]
  end, 5), "tollgate did not start under the wrapper")
  function gw.error_log()
    return read_file(dir .. "/error.log") or ""
  end
  function gw.exit_code()
    return tonumber((read_file(status_path) or ""):match("%d+"))
  end
  assert(helpers.wait_until(function()
    local res = helpers.request(admin_port, { path = "/health", timeout = 1 })
    return helpers.port_open(port) and res and res.status == 200
  end, 10), "tollgate not ready: " .. gw.error_log())
  return gw
end

local function stop_wrapped()
  for i = #wrapped, 1, -1 do
    local sh_pid = wrapped[i]
    -- The group was created by our setsid: the wrapper, the master and its
    -- workers, nothing else.
    if capture("pgrep -g " .. sh_pid .. " 2>/dev/null"):find("%d") then
      os.execute("kill -s KILL -- -" .. sh_pid .. " 2>/dev/null")
    end
    wrapped[i] = nil
  end
end

------------------------------------------------------------------------------
-- specs
------------------------------------------------------------------------------

describe("process model", function()
  local echo

  -- A config with a proxied route (/api -> echo) and a static one (=/v,
  -- body `v`), plus any extra routes.
  local function conf(o)
    o = o or {}
    local routes = {
      { name = "api", paths = { "/api" }, upstream = "echo" },
      { name = "v", paths = { "=/v" }, response = { status = 200, body = o.v or "v1" } },
    }
    for _, r in ipairs(o.routes or {}) do
      routes[#routes + 1] = r
    end
    return {
      worker_processes = o.workers,
      shutdown_timeout_ms = o.shutdown_timeout_ms,
      listen = o.listen,
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      routes = routes,
    }
  end

  local function get_v(port)
    local res = assert(helpers.request(port, { path = "/v" }))
    assert.equal(200, res.status)
    return res.body
  end

  -- After gw.reload() returns (/status shows the new generation), workers
  -- of the old one may not have handled their SIGTERM yet, and /status
  -- counters are published one by one; so wait (bounded) for `want` on /v
  -- and for reloads.ok to reach `ok`.
  local function settled(gw, port, want, ok)
    assert(helpers.wait_until(function() return get_v(port) == want end, 3),
           "/v never answered " .. want .. " after the reload")
    if ok then
      assert(helpers.wait_until(function() return status_of(gw.admin_port).reloads.ok == ok end, 3),
             "reloads.ok never reached " .. ok)
    end
  end

  lazy_setup(function()
    echo = helpers.start_echo()
  end)

  lazy_teardown(function()
    stop_loadgens()
    stop_wrapped()
    helpers.stop_all()
  end)

  describe("workers", function()
    it("runs worker_processes workers as children of the master, all serving", function()
      local gw = helpers.start_gateway(conf({ workers = 2 }))
      local kids = assert(helpers.wait_until(function()
        local k = children(gw.pid)
        return #k == 2 and k
      end, 5))
      local st = status_of(gw.admin_port)
      assert.equal(1, st.generation)
      assert.same({ ok = 0, failed = 0 }, st.reloads)
      assert.equal(2, #st.workers)
      assert.same(kids, worker_pids(st))
      assert.is_false(contains(kids, gw.pid))
      for _, w in ipairs(st.workers) do
        assert.equal(1, w.generation)
      end
      -- New connections one after another: both workers wait on the shared
      -- sockets, so over many connections both get some.
      for i = 1, 300 do
        local res = assert(gw.request({ path = "/v", headers = { ["X-N"] = i } }))
        assert.equal(200, res.status)
        assert.equal("v1", res.body)
      end
      st = status_of(gw.admin_port)
      local total = 0
      for _, w in ipairs(st.workers) do
        assert.is_true(w.requests > 0, "worker " .. w.pid .. " served nothing: " .. st.requests)
        total = total + w.requests
      end
      assert.is_true(total >= 300)
      assert.equal("", unexpected_errors(gw.error_log()))
      assert.is_true(gw.stop())
      assert.is_false(any_alive(kids))
    end)

    it("ignores a SIGHUP sent to a worker", function()
      local gw = helpers.start_gateway(conf())
      local kids = children(gw.pid)
      assert.equal(1, #kids)
      os.execute("kill -s HUP " .. kids[1])
      helpers.sleep(0.3)
      assert.is_true(helpers.pid_alive(kids[1]))
      assert.same(kids, children(gw.pid))
      assert.equal("v1", get_v(gw.port))
      assert.equal(1, status_of(gw.admin_port).generation)
      gw.stop()
    end)

    it("restarts a worker killed with SIGKILL, in the same generation", function()
      local gw = helpers.start_gateway(conf({ workers = 2 }))
      local kids = assert(helpers.wait_until(function()
        local k = children(gw.pid)
        return #k == 2 and k
      end, 5))
      local victim = kids[1]
      os.execute("kill -s KILL " .. victim)
      -- The other worker keeps serving meanwhile.
      for _ = 1, 20 do
        assert.equal("v1", get_v(gw.port))
      end
      local now = assert(helpers.wait_until(function()
        local k = children(gw.pid)
        return #k == 2 and not contains(k, victim) and k
      end, 5), "the killed worker was not replaced")
      assert.is_true(contains(now, kids[2]))
      local st = assert(helpers.wait_until(function()
        local s = status_of(gw.admin_port)
        return #s.workers == 2 and s
      end, 5))
      assert.same(now, worker_pids(st))
      assert.equal(1, st.generation)
      for _, w in ipairs(st.workers) do
        assert.equal(1, w.generation)
      end
      local log = gw.error_log()
      assert.truthy(log:find("%[error%] master%[%d+%]: worker %d+ %(pid " .. victim
                             .. "%) died on signal 9; restarting"), log)
      -- The replacement serves too.
      for _ = 1, 300 do
        assert.equal("v1", get_v(gw.port))
      end
      st = status_of(gw.admin_port)
      for _, w in ipairs(st.workers) do
        assert.is_true(w.requests > 0, "worker " .. w.pid .. " served nothing")
      end
      assert.equal("", unexpected_errors(log, { "died on signal 9; restarting" }))
      gw.stop()
    end)

    it("workers exit by themselves when the master is killed with SIGKILL", function()
      local gw = start_wrapped(conf({ workers = 2 }))
      local kids = assert(helpers.wait_until(function()
        local k = children(gw.pid)
        return #k == 2 and k
      end, 5))
      -- An idle keep-alive connection must not keep a worker alive.
      local idle = assert(helpers.connect(gw.port))
      assert.equal(200, assert(idle:request({ path = "/v" })).status)
      os.execute("kill -s KILL " .. gw.pid)
      assert(helpers.wait_until(function() return not any_alive(kids) end, 5),
             "workers outlived their master")
      assert(helpers.wait_until(function() return not helpers.port_open(gw.port) end, 3))
      local _, closed = idle:read_all(2)
      assert.is_true(closed)
      idle:close()
    end)
  end)

  describe("SIGHUP", function()
    it("swaps in a valid changed config without closing the listening socket", function()
      local gw = helpers.start_gateway(conf({ workers = 2 }))
      local old = assert(helpers.wait_until(function()
        local k = children(gw.pid)
        return #k == 2 and k
      end, 5))
      local st0 = status_of(gw.admin_port)
      local inodes = listen_inodes(gw.port)
      assert.equal(1, #inodes)
      assert.equal(404, assert(gw.request({ path = "/new" })).status)

      -- An idle keep-alive connection, and one accepted but silent.
      local idle = assert(helpers.connect(gw.port))
      local res = assert(idle:request({ path = "/v" }))
      assert.equal("v1", res.body)
      local silent = assert(helpers.connect(gw.port))
      helpers.sleep(0.1)

      -- Clients connecting throughout the reload.
      local lg = start_loadgen(gw.port, { "--mode", "new", "--path", "/v", "--seconds", "1.5",
                                          "--requests", "3000", "--expect", "v" })
      helpers.sleep(0.2)
      assert(gw.reload(conf({ workers = 2, v = "v2", routes = {
        { name = "new", paths = { "=/new" }, response = { status = 201, json = { fresh = true } } },
      } })))
      settled(gw, gw.port, "v2", 1)

      -- New behaviour.
      assert.equal("v2", get_v(gw.port))
      res = assert(gw.request({ path = "/new" }))
      assert.equal(201, res.status)
      assert.same({ fresh = true }, res.json)
      local st = status_of(gw.admin_port)
      assert.equal(2, st.generation)
      assert.same({ ok = 1, failed = 0 }, st.reloads)
      assert.not_equal(st0.config_version, st.config_version)

      -- The connection the old worker accepted is still served (by the old
      -- config, closing after), and the idle one is closed.
      res = assert(silent:request({ path = "/v" }))
      assert.equal(200, res.status)
      if res.body == "v1" then
        assert.equal("close", res.headers.connection)
      else
        assert.equal("v2", res.body)
      end
      silent:close()
      local rest, closed = idle:read_all(3)
      assert.equal("", rest)
      assert.is_true(closed, "an idle keep-alive connection of the old generation stayed open")
      idle:close()

      -- The old generation goes away, the new one is what /status shows.
      assert(helpers.wait_until(function() return not any_alive(old) end, 5),
             "old workers did not exit")
      local now = children(gw.pid)
      assert.equal(2, #now)
      for _, p in ipairs(now) do
        assert.is_false(contains(old, p))
      end
      st = assert(helpers.wait_until(function()
        local s = status_of(gw.admin_port)
        return #s.workers == 2 and s
      end, 3))
      assert.same(now, worker_pids(st))
      for _, w in ipairs(st.workers) do
        assert.equal(2, w.generation)
      end

      local r = lg.wait()
      print("\n  reload, new connections: " .. r.line)
      assert.equal(0, r.fail, r.errors)
      assert.is_true(r.ok > 10, r.line)

      assert.same(inodes, listen_inodes(gw.port))
      local log = gw.error_log()
      assert.truthy(log:find("reloaded: generation 2", 1, true))
      assert.equal("", unexpected_errors(log))
      gw.stop()
    end)

    it("keeps the running config when the new one has a syntax error", function()
      local gw = helpers.start_gateway(conf({ workers = 1 }))
      local kids = children(gw.pid)
      write_file(gw.conf_path, helpers.yaml(gw.conf) .. "routes_extra: [unclosed\n")
      gw.kill("HUP")
      local log = assert(helpers.wait_until(function()
        local l = gw.error_log()
        return l:find("reload failed", 1, true) and l
      end, 5))
      assert.truthy(log:find("%[error%] master%[%d+%]: reload failed, keeping the running config: "
                             .. "[^\n]*tollgate%.yaml:%d+:%d+: [^\n]+"), log)
      local st = assert(helpers.wait_until(function()
        local s = status_of(gw.admin_port)
        return s.reloads.failed == 1 and s
      end, 3))
      assert.equal(1, st.generation)
      assert.equal(0, st.reloads.ok)
      assert.equal("v1", get_v(gw.port))
      assert.same(kids, children(gw.pid))
      -- A config file that went away is refused the same way.
      os.remove(gw.conf_path)
      gw.kill("HUP")
      st = assert(helpers.wait_until(function()
        local s = status_of(gw.admin_port)
        return s.reloads.failed == 2 and s
      end, 5))
      assert.equal(1, st.generation)
      log = gw.error_log()
      assert.truthy(log:find("reload failed, keeping the running config: [^\n]*tollgate%.yaml: "
                             .. "cannot read"), log)
      assert.equal("v1", get_v(gw.port))
      assert.same(kids, children(gw.pid))
      assert.equal("", unexpected_errors(log, { "reload failed, keeping the running config" }))
      gw.stop()
    end)

    it("keeps the running config and logs every error with its YAML path", function()
      local gw = helpers.start_gateway(conf({ workers = 2 }))
      local kids = assert(helpers.wait_until(function()
        local k = children(gw.pid)
        return #k == 2 and k
      end, 5))
      local st0 = status_of(gw.admin_port)
      local bad = conf({ v = "broken", routes = {
        { name = "bad", paths = { "/bad" }, upstream = "nope" },
        { name = "bad2", paths = { "/bad2" }, upstream = "zz", bogus_key = 1 },
      } })
      for _, k in ipairs({ "listen", "admin", "error_log", "access_log" }) do
        bad[k] = gw.conf[k]
      end
      bad.worker_processes = 0
      write_file(gw.conf_path, helpers.yaml(bad))
      gw.kill("HUP")
      local want = {
        'routes[2].upstream: unknown upstream "nope"',
        'routes[3].upstream: unknown upstream "zz"',
        "routes[3].bogus_key: unknown key",
        "worker_processes: ",
      }
      local log = assert(helpers.wait_until(function()
        local l = gw.error_log()
        for _, w in ipairs(want) do
          if not l:find("reload failed, keeping the running config: " .. w, 1, true) then
            return nil
          end
        end
        return l
      end, 5), "not every error was logged:\n" .. gw.error_log())
      local st = assert(helpers.wait_until(function()
        local s = status_of(gw.admin_port)
        return s.reloads.failed == 1 and s
      end, 3))
      assert.equal(1, st.generation)
      assert.equal(st0.config_version, st.config_version)
      assert.equal(0, st.reloads.ok)
      assert.equal("v1", get_v(gw.port))
      assert.equal(404, assert(gw.request({ path = "/bad" })).status)
      assert.same(kids, children(gw.pid))

      -- Fixed: the next SIGHUP takes it.
      assert(gw.reload(conf({ v = "v3" })))
      settled(gw, gw.port, "v3", 1)
      assert.equal("v3", get_v(gw.port))
      st = status_of(gw.admin_port)
      assert.equal(2, st.generation)
      assert.same({ ok = 1, failed = 1 }, st.reloads)
      assert.equal("", unexpected_errors(gw.error_log(),
                                         { "reload failed, keeping the running config" }))
      gw.stop()
    end)

    it("keeps the running config when a new listen address cannot be bound", function()
      local gw = helpers.start_gateway(conf())
      local port = gw.port
      local kids = children(gw.pid)
      local busy = "127.0.0.1:" .. echo.port      -- tg-echo listens there
      write_file(gw.conf_path, helpers.yaml((function()
        local c = conf({ v = "v2" })
        for _, k in ipairs({ "admin", "error_log", "access_log", "worker_processes" }) do
          c[k] = gw.conf[k]
        end
        c.listen = { "127.0.0.1:" .. port, busy }
        return c
      end)()))
      gw.kill("HUP")
      local st = assert(helpers.wait_until(function()
        local s = status_of(gw.admin_port)
        return s.reloads.failed == 1 and s
      end, 5))
      assert.equal(1, st.generation)
      local log = gw.error_log()
      assert.truthy(log:find('cannot listen on "' .. busy .. '"', 1, true), log)
      assert.equal("v1", get_v(port))
      assert.same(kids, children(gw.pid))
      -- tg-echo still owns its port.
      local res = assert(helpers.request(echo.port, { path = "/direct" }))
      assert.equal("/direct", res.json.path)
      gw.stop()
    end)

    it("lets in-flight requests finish on the old worker", function()
      local gw = helpers.start_gateway(conf())
      local old = children(gw.pid)
      assert.equal(1, #old)
      local conn = assert(helpers.connect(gw.port))
      assert(conn:send(helpers.encode_request({ path = "/api/slow",
                                                headers = { ["X-Echo-Delay-Ms"] = "1500" } })))
      helpers.sleep(0.2)
      assert(gw.reload(conf({ v = "v2" })))
      settled(gw, gw.port, "v2", 1)
      -- The request is still in flight, so its worker must still be there,
      -- and /status lists it, with its generation, next to the new one.
      assert.is_true(helpers.pid_alive(old[1]))
      local draining
      for _, w in ipairs(status_of(gw.admin_port).workers) do
        if w.pid == old[1] then
          draining = w
        end
      end
      assert.is_table(draining, "a draining worker is missing from /status")
      assert.equal(1, draining.generation)
      assert.is_true(draining.connections_active >= 1)
      local res = assert(conn:read_response({ timeout = 5 }))
      assert.equal(200, res.status)
      assert.equal("/api/slow", res.json.path)
      assert.equal("1500", res.json.headers["x-echo-delay-ms"])
      assert.equal("close", res.headers.connection)
      local _, closed = conn:read_all(3)
      assert.is_true(closed)
      conn:close()
      assert(helpers.wait_until(function() return not helpers.pid_alive(old[1]) end, 5))
      assert.equal("", unexpected_errors(gw.error_log()))
      gw.stop()
    end)

    it("lets a request body that is still arriving finish on the old worker", function()
      local gw = helpers.start_gateway(conf())
      local old = children(gw.pid)
      local conn = assert(helpers.connect(gw.port))
      assert(conn:send("POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello"))
      helpers.sleep(0.2)
      assert(gw.reload(conf({ v = "v2" })))
      settled(gw, gw.port, "v2", 1)
      assert(conn:send("world"))
      local res = assert(conn:read_response({ timeout = 5 }))
      assert.equal(200, res.status)
      assert.equal("POST", res.json.method)
      assert.equal("helloworld", res.json.body)
      assert.equal("close", res.headers.connection)
      conn:close()
      assert(helpers.wait_until(function() return not helpers.pid_alive(old[1]) end, 5))
      assert.equal("", unexpected_errors(gw.error_log()))
      gw.stop()
    end)

    it("does not restart a draining worker of an old generation that dies", function()
      local gw = helpers.start_gateway(conf())
      local old = children(gw.pid)
      local conn = assert(helpers.connect(gw.port))
      assert(conn:send(helpers.encode_request({ path = "/api/slow",
                                                headers = { ["X-Echo-Delay-Ms"] = "3000" } })))
      helpers.sleep(0.2)
      assert(gw.reload(conf({ v = "v2" })))
      settled(gw, gw.port, "v2", 1)
      local now = children(gw.pid)
      assert.equal(2, #now)                       -- the new worker and the draining one
      os.execute("kill -s KILL " .. old[1])
      local _, closed = conn:read_all(2)
      assert.is_true(closed)
      conn:close()
      -- Longer than the master's restart back-off (1 s): nothing comes back.
      helpers.sleep(1.5)
      local kids = children(gw.pid)
      assert.equal(1, #kids)
      assert.is_false(contains(kids, old[1]))
      local st = status_of(gw.admin_port)
      assert.equal(1, #st.workers)
      assert.equal(2, st.workers[1].generation)
      assert.is_nil(gw.error_log():find("restarting", 1, true))
      assert.equal("v2", get_v(gw.port))
      gw.stop()
    end)

    it("moves the admin API and the error log when the config says so", function()
      local gw = helpers.start_gateway(conf())
      local old_admin, old_log = gw.admin_port, gw.error_log_path
      local new_admin = helpers.free_port()
      local c = conf({ v = "v2" })
      c.admin = { listen = "127.0.0.1:" .. new_admin }
      c.error_log = { path = gw.dir .. "/error2.log", level = "info" }
      assert(gw.reload(c))
      assert.equal(new_admin, gw.admin_port)
      local st = assert(helpers.wait_until(function()
        local res = helpers.request(new_admin, { path = "/status", timeout = 1 })
        return res and res.status == 200 and res.json.generation == 2 and res.json
      end, 5), "the new admin address does not serve /status")
      assert.equal(1, st.reloads.ok)
      settled(gw, gw.port, "v2", 1)
      assert(helpers.wait_until(function() return not helpers.port_open(old_admin) end, 5),
             "the old admin address still accepts connections")
      local log2 = assert(helpers.wait_until(function()
        local l = read_file(gw.dir .. "/error2.log") or ""
        return l:find("started (generation 2", 1, true) and l
      end, 3), "the new error log gets no worker lines")
      assert.truthy(log2:find("reloaded: generation 2", 1, true), log2)
      assert.is_nil((read_file(old_log) or ""):find("started (generation 2", 1, true))
      assert.equal("", unexpected_errors(log2))
      gw.stop()
    end)

    it("kills a draining worker that outlives shutdown_timeout_ms", function()
      local gw = helpers.start_gateway(conf({ shutdown_timeout_ms = 500 }))
      local old = children(gw.pid)
      local conn = assert(helpers.connect(gw.port))
      assert(conn:send(helpers.encode_request({ path = "/api/hang",
                                                headers = { ["X-Echo-Mode"] = "hang" } })))
      helpers.sleep(0.2)
      assert(gw.reload(conf({ shutdown_timeout_ms = 500, v = "v2" })))
      settled(gw, gw.port, "v2", 1)
      -- shutdown_timeout_ms, plus the master's 2 s grace, plus slack.
      assert(helpers.wait_until(function() return not helpers.pid_alive(old[1]) end, 4),
             "a draining worker with a hanging request never exited")
      local _, closed = conn:read_all(2)
      assert.is_true(closed)
      conn:close()
      assert.equal("v2", get_v(gw.port))
      assert.truthy(gw.error_log():find("drain timeout", 1, true))
      gw.stop()
    end)

    it("follows worker_processes and survives back-to-back SIGHUPs", function()
      local gw = helpers.start_gateway(conf({ workers = 2 }))
      assert(gw.reload(conf({ workers = 3, v = "v2" })))
      settled(gw, gw.port, "v2", 1)
      assert(helpers.wait_until(function() return #children(gw.pid) == 3 end, 5))
      assert.equal("v2", get_v(gw.port))
      assert(gw.reload(conf({ workers = 1, v = "v3" })))
      settled(gw, gw.port, "v3", 2)
      assert(helpers.wait_until(function() return #children(gw.pid) == 1 end, 5))
      assert.equal("v3", get_v(gw.port))
      -- Two signals without waiting in between: both are applied (or
      -- coalesced), and the end state is one clean generation.
      write_file(gw.conf_path, helpers.yaml((function()
        local c = conf({ workers = 2, v = "v4" })
        for _, k in ipairs({ "listen", "admin", "error_log", "access_log" }) do
          c[k] = gw.conf[k]
        end
        return c
      end)()))
      gw.kill("HUP")
      gw.kill("HUP")
      -- Settled: one generation of two workers, the one /status names, and
      -- the same a moment later (no reload still to come).
      local function steady()
        local s = status_of(gw.admin_port)
        local kids = children(gw.pid)
        if s.generation < 4 or s.generation ~= 1 + s.reloads.ok or #kids ~= 2
           or #s.workers ~= 2 then
          return nil
        end
        for _, w in ipairs(s.workers) do
          if w.generation ~= s.generation then
            return nil
          end
        end
        assert.same(kids, worker_pids(s))
        return s
      end
      local st = assert(helpers.wait_until(steady, 5))
      helpers.sleep(0.3)
      local again = assert(steady())
      assert.equal(st.generation, again.generation)
      assert.same(worker_pids(st), worker_pids(again))
      assert.equal("v4", get_v(gw.port))
      assert.equal(0, st.reloads.failed)
      assert.equal("", unexpected_errors(gw.error_log()))
      gw.stop()
    end)
  end)

  describe("/status during reloads", function()
    it("lists only started workers, each with its pid and generation", function()
      local gw = helpers.start_gateway(conf({ workers = 2 }))
      local bad, polls = {}, 0
      for _ = 1, 15 do
        gw.kill("HUP")
        for _ = 1, 20 do
          local res = helpers.request(gw.admin_port, { path = "/status", timeout = 2 })
          if res and res.status == 200 and res.json then
            polls = polls + 1
            for _, w in ipairs(res.json.workers) do
              if not (w.pid > 0 and w.generation >= 1 and w.generation <= res.json.generation) then
                bad[#bad + 1] = res.body
                break
              end
            end
          end
        end
      end
      assert.is_true(polls > 100)
      assert.equal(0, #bad, fmt("%d of %d /status answers listed a worker without a pid, e.g.\n%s",
                                #bad, polls, tostring(bad[1])))
      gw.stop()
    end)
  end)

  describe("reload under load", function()
    it("fails no request across three SIGHUPs", function()
      local gw = helpers.start_gateway(conf({ workers = 2 }))
      local common = { "--seconds", "3.5", "--requests", "20000" }
      local function args(extra)
        local a = {}
        for _, x in ipairs(common) do a[#a + 1] = x end
        for _, x in ipairs(extra) do a[#a + 1] = x end
        return a
      end
      local lgs = {
        start_loadgen(gw.port, args({ "--mode", "keepalive", "--path", "/api/load",
                                      "--expect", '"path":"/api/load"' })),
        start_loadgen(gw.port, args({ "--mode", "keepalive", "--path", "/api/load",
                                      "--expect", '"path":"/api/load"' })),
        start_loadgen(gw.port, args({ "--mode", "new", "--path", "/api/new",
                                      "--expect", '"path":"/api/new"' })),
        start_loadgen(gw.port, args({ "--mode", "keepalive", "--path", "/v", "--expect", "v" })),
      }
      helpers.sleep(0.4)
      for k = 2, 4 do
        assert(gw.reload(conf({ workers = 2, v = "v" .. k })))
        settled(gw, gw.port, "v" .. k, k - 1)
        helpers.sleep(0.5)
      end
      local total_ok, lgs_ok_api = 0, 0
      for i, lg in ipairs(lgs) do
        local r = lg.wait()
        if i <= 3 then
          lgs_ok_api = lgs_ok_api + r.ok
        end
        print(fmt("\n  loadgen %d: %s", i, r.line))
        assert.equal(0, r.fail, r.errors)
        assert.is_true(r.ok > 50, r.line)
        total_ok = total_ok + r.ok
      end
      assert.is_true(total_ok > 500)
      -- Every answered request was logged once, also by the workers that
      -- drained and exited in between.
      local want = lgs_ok_api
      local logged = assert(helpers.wait_until(function()
        local n = 0
        for _, line in ipairs(gw.access_log()) do
          if line:find('"path":"/api/load"', 1, true) or line:find('"path":"/api/new"', 1, true) then
            n = n + 1
          end
        end
        return n >= want and n
      end, 3), "access log lines are missing for requests answered during reloads")
      assert.equal(want, logged)
      local st = status_of(gw.admin_port)
      assert.equal(4, st.generation)
      assert.same({ ok = 3, failed = 0 }, st.reloads)
      assert.equal("v4", get_v(gw.port))
      assert(helpers.wait_until(function() return #children(gw.pid) == 2 end, 5),
             "old generations did not exit")
      assert.equal("", unexpected_errors(gw.error_log()))
      gw.stop()
    end)

    it("reloads from 10 to 10,000 routes without failing a request", function()
      local function routes(n)
        local list = {}
        for i = 1, n do
          if i % 2 == 0 then
            list[#list + 1] = { name = "r" .. i, paths = { "=/r" .. i },
                                response = { status = 200, body = "r" .. i } }
          else
            list[#list + 1] = { name = "p" .. i, paths = { "/p" .. i }, upstream = "echo" }
          end
        end
        return list
      end
      local gw = helpers.start_gateway(conf({ workers = 2, routes = routes(10) }))
      assert.equal(404, assert(gw.request({ path = "/r10000" })).status)

      local base = start_loadgen(gw.port, { "--seconds", "1", "--requests", "20000",
                                            "--path", "/p9/x", "--expect", '"path":"/p9/x"' })
      local b = base.wait()
      assert.equal(0, b.fail, b.errors)

      local big = conf({ workers = 2, routes = routes(10000) })
      local lgs = {
        start_loadgen(gw.port, { "--seconds", "3", "--requests", "20000",
                                 "--path", "/p9/x", "--expect", '"path":"/p9/x"' }),
        start_loadgen(gw.port, { "--seconds", "3", "--requests", "20000", "--mode", "new",
                                 "--path", "/r10", "--expect", "r10" }),
      }
      helpers.sleep(0.3)
      local t0 = gettime()
      assert(gw.reload(big, { timeout = 15 }))
      local reload_s = gettime() - t0
      settled(gw, gw.port, "v1", 1)
      local during = {}
      for i, lg in ipairs(lgs) do
        local r = lg.wait()
        during[i] = r
        assert.equal(0, r.fail, r.errors)
        assert.is_true(r.ok > 50, r.line)
      end
      print(fmt("\n  10k-route reload took %.2f s; max latency before %.1f ms, during %.1f / %.1f ms",
                reload_s, b.max_ms, during[1].max_ms, during[2].max_ms))
      print("  before: " .. b.line .. "\n  during: " .. during[1].line .. "\n  during: " .. during[2].line)
      for _, r in ipairs(during) do
        assert.is_true(r.max_ms < 2000, r.line)
      end

      local res = assert(gw.request({ path = "/r10000" }))
      assert.equal(200, res.status)
      assert.equal("r10000", res.body)
      res = assert(gw.request({ path = "/p9999/deep" }))
      assert.equal(200, res.status)
      assert.equal("/p9999/deep", res.json.path)
      assert.equal(404, assert(gw.request({ path = "/r10001" })).status)
      assert.equal(2, status_of(gw.admin_port).generation)
      assert.equal("", unexpected_errors(gw.error_log()))
      gw.stop()
    end)
  end)

  describe("listen addresses across reloads", function()
    it("keeps, adds and removes listening sockets as the config says", function()
      local a, b = helpers.free_port(), helpers.free_port()
      local gw = helpers.start_gateway(conf({ listen = { "127.0.0.1:" .. a } }))
      local inode_a = listen_inodes(a)
      assert.equal(1, #inode_a)
      assert.is_false(helpers.port_open(b))

      assert(gw.reload(conf({ listen = { "127.0.0.1:" .. a, "127.0.0.1:" .. b }, v = "v2" })))
      settled(gw, b, "v2", 1)
      assert.equal("v2", get_v(b))
      assert.equal("v2", get_v(a))
      assert.same(inode_a, listen_inodes(a))
      local inode_b = listen_inodes(b)
      assert.equal(1, #inode_b)

      assert(gw.reload(conf({ listen = { "127.0.0.1:" .. b }, v = "v3" })))
      settled(gw, b, "v3", 2)
      assert.equal("v3", get_v(b))
      assert(helpers.wait_until(function() return not helpers.port_open(a) end, 5),
             "a removed listen address still accepts connections")
      assert.same(inode_b, listen_inodes(b))
      assert.same({}, listen_inodes(a))

      -- And back.
      assert(gw.reload(conf({ listen = { "127.0.0.1:" .. a, "127.0.0.1:" .. b }, v = "v4" })))
      settled(gw, b, "v4", 3)
      assert.equal("v4", get_v(a))
      assert.equal("v4", get_v(b))
      local st = status_of(gw.admin_port)
      assert.equal(4, st.generation)
      assert.same({ ok = 3, failed = 0 }, st.reloads)
      assert.equal("", unexpected_errors(gw.error_log()))
      gw.stop()
    end)
  end)

  describe("listen addresses while an old generation drains", function()
    it("refuses connections on a removed address at once", function()
      local a, b = helpers.free_port(), helpers.free_port()
      local gw = helpers.start_gateway(conf({ listen = { "127.0.0.1:" .. a, "127.0.0.1:" .. b } }))
      local old = children(gw.pid)
      -- Keeps the old worker draining for a while.
      local conn = assert(helpers.connect(b))
      assert(conn:send(helpers.encode_request({ path = "/api/slow",
                                                headers = { ["X-Echo-Delay-Ms"] = "2000" } })))
      helpers.sleep(0.2)
      assert(gw.reload(conf({ listen = { "127.0.0.1:" .. b }, v = "v2" })))
      settled(gw, b, "v2", 1)
      assert.is_true(helpers.pid_alive(old[1]))
      -- Nobody will ever accept on `a` again: a client must be refused,
      -- not parked in a backlog until the old worker exits.
      local late, err = helpers.connect(a, { timeout = 1 })
      local late_res
      if late then
        late_res, err = late:request({ path = "/v", timeout = 1 })
        late:close()
      end
      local res = assert(conn:read_response({ timeout = 5 }))
      assert.equal(200, res.status)
      conn:close()
      assert.is_nil(late, fmt("a connection to the removed address was accepted while the old "
                              .. "generation drained (request result: %s %s)",
                              tostring(late_res and late_res.status), tostring(err)))
      gw.stop()
    end)
  end)

  describe("stopping", function()
    it("SIGTERM lets an in-flight request finish, refuses new connections, exits 0", function()
      local gw = start_wrapped(conf({ workers = 2 }))
      local kids = assert(helpers.wait_until(function()
        local k = children(gw.pid)
        return #k == 2 and k
      end, 5))
      local conn = assert(helpers.connect(gw.port))
      assert(conn:send(helpers.encode_request({ path = "/api/slow",
                                                headers = { ["X-Echo-Delay-Ms"] = "1500" } })))
      helpers.sleep(0.3)
      os.execute("kill -s TERM " .. gw.pid)
      helpers.sleep(0.3)
      -- The workers stopped accepting: a new client must be refused, not
      -- left hanging in a backlog nobody reads.
      local late, err = helpers.connect(gw.port, { timeout = 1 })
      local late_res
      if late then
        late_res, err = late:request({ path = "/v", timeout = 1 })
        late:close()
      end
      local res = assert(conn:read_response({ timeout = 5 }))
      assert.equal(200, res.status)
      assert.equal("/api/slow", res.json.path)
      assert.equal("close", res.headers.connection)
      conn:close()
      assert(helpers.wait_until(function() return gw.exit_code() ~= nil end, 5),
             "the master did not exit after SIGTERM")
      assert.equal(0, gw.exit_code())
      assert.is_false(any_alive(kids))
      assert.is_false(helpers.port_open(gw.port))
      local log = gw.error_log()
      assert.truthy(log:find("stopping gracefully", 1, true))
      assert.equal("", unexpected_errors(log))
      assert.is_nil(late, fmt("a connection made during the graceful stop was accepted "
                              .. "(request result: %s %s)", tostring(late_res and late_res.status),
                              tostring(err)))
    end)

    it("SIGTERM gives up on a hanging request after shutdown_timeout_ms", function()
      local gw = start_wrapped(conf({ shutdown_timeout_ms = 500 }))
      local kids = children(gw.pid)
      local conn = assert(helpers.connect(gw.port))
      assert(conn:send(helpers.encode_request({ path = "/api/hang",
                                                headers = { ["X-Echo-Mode"] = "hang" } })))
      local idle = assert(helpers.connect(gw.port))
      assert.equal(200, assert(idle:request({ path = "/v" })).status)
      helpers.sleep(0.2)
      os.execute("kill -s TERM " .. gw.pid)
      local _, closed = idle:read_all(2)
      assert.is_true(closed, "an idle keep-alive connection stayed open during the graceful stop")
      idle:close()
      -- shutdown_timeout_ms, plus the master's 2 s grace, plus slack.
      assert(helpers.wait_until(function() return gw.exit_code() ~= nil end, 4),
             "the master did not exit after SIGTERM")
      assert.equal(0, gw.exit_code())
      assert.is_false(any_alive(kids))
      _, closed = conn:read_all(2)
      assert.is_true(closed)
      conn:close()
    end)

    for _, sig in ipairs({ "INT", "QUIT" }) do
      it("SIG" .. sig .. " stops master and workers at once, even with a hanging request", function()
        local gw = start_wrapped(conf({ workers = 2 }))
        local kids = assert(helpers.wait_until(function()
          local k = children(gw.pid)
          return #k == 2 and k
        end, 5))
        local conn = assert(helpers.connect(gw.port))
        assert(conn:send(helpers.encode_request({ path = "/api/hang",
                                                  headers = { ["X-Echo-Mode"] = "hang" } })))
        helpers.sleep(0.3)
        local t0 = gettime()
        os.execute("kill -s " .. sig .. " " .. gw.pid)
        assert(helpers.wait_until(function()
          return not helpers.pid_alive(gw.pid) and not any_alive(kids)
        end, 2.5), "still running after SIG" .. sig)
        print(fmt("\n  SIG%s: stopped in %.2f s, exit status %s", sig, gettime() - t0,
                  tostring(gw.exit_code())))
        local _, closed = conn:read_all(2)
        assert.is_true(closed)
        conn:close()
        assert.is_false(helpers.port_open(gw.port))
        assert.truthy(gw.error_log():find("stopping now", 1, true))
      end)
    end
  end)
end)
