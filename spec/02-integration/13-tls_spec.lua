-- 13-tls_spec.lua: TLS on both sides of the gateway (issue #7).
--
-- Certificates are made per run with the openssl CLI in a temp dir: a test
-- CA signs a.test, b.test (+ *.wild.test) and a client certificate; a
-- second CA signs nothing the gateway trusts. Clients are the real tools:
-- `openssl s_client` for what the handshake shows (certificate, protocol,
-- ALPN, resumption) and curl for HTTP over TLS. The https upstream is a
-- second tollgate terminating TLS in front of tg-echo, so both halves of the
-- TLS code meet each other as well as the reference tools.
--
-- Timing assertions are generous bounds only (the handshake timeout is set
-- to 500 ms and checked to close between 0.3 s and 3 s).

local helpers = require "spec.helpers"
local socket = require "socket"
local cjson = require "cjson.safe"

local fmt = string.format
local q = helpers.shell_quote
local gettime = socket.gettime

-- Runs a shell command; returns its stdout+stderr and exit code.
local function sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1; echo \"__rc=$?\"", "r"))
  local out = f:read("*a")
  f:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return (out:gsub("__rc=%d+%s*$", "")), rc
end

local function must(cmd)
  local out, rc = sh(cmd)
  assert(rc == 0, "command failed (" .. tostring(rc) .. "): " .. cmd .. "\n" .. out)
  return out
end

-- ---------------------------------------------------------------- certificates

local dir   -- the run's temp dir

-- A self-signed CA: dir/<name>.crt, dir/<name>.key.
local function make_ca(name, cn)
  must(fmt("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
           .. "-subj %s -addext 'basicConstraints=critical,CA:TRUE' "
           .. "-addext 'keyUsage=critical,keyCertSign,cRLSign' -keyout %s -out %s",
           q("/CN=" .. cn), q(dir .. "/" .. name .. ".key"), q(dir .. "/" .. name .. ".crt")))
end

-- A leaf signed by ca: dir/<name>.crt, dir/<name>.key. opts.sans (list of
-- DNS names), opts.subject, opts.serial, opts.client (clientAuth).
local function make_cert(name, ca, opts)
  local key, csr, crt = dir .. "/" .. name .. ".key", dir .. "/" .. name .. ".csr", dir .. "/" .. name .. ".crt"
  local ext = dir .. "/" .. name .. ".ext"
  local lines = { "basicConstraints=CA:FALSE",
                  "extendedKeyUsage=" .. (opts.client and "clientAuth" or "serverAuth") }
  if opts.sans then
    local s = {}
    for i, n in ipairs(opts.sans) do s[i] = "DNS:" .. n end
    lines[#lines + 1] = "subjectAltName=" .. table.concat(s, ",")
  end
  helpers.write_file(ext, table.concat(lines, "\n") .. "\n")
  must(fmt("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj %s -keyout %s -out %s",
           q(opts.subject), q(key), q(csr)))
  must(fmt("openssl x509 -req -in %s -CA %s -CAkey %s -set_serial %d -days 2 -extfile %s -out %s",
           q(csr), q(dir .. "/" .. ca .. ".crt"), q(dir .. "/" .. ca .. ".key"), opts.serial or 1, q(ext), q(crt)))
end

local function path(name) return dir .. "/" .. name end

-- ---------------------------------------------------------------- clients

-- openssl s_client against 127.0.0.1:port; `input` goes to its stdin.
-- With input it waits for the server to close (-ign_eof), so a request with
-- Connection: close gets its answer and TLS 1.3 session tickets arrive
-- before it exits. Returns its whole output.
local function s_client(port, args, input)
  local inf = path("s_client.in")
  helpers.write_file(inf, input or "")
  return (sh(fmt("timeout 5 openssl s_client -connect 127.0.0.1:%d %s %s < %s", port,
                 input and "-ign_eof" or "", args or "", q(inf))))
end

local function subject_of(out)
  return out:match("\nsubject=([^\n]+)")
end

local REQ = "GET /tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"

-- curl over https to host:port (resolved to 127.0.0.1). opts: cacert (the
-- test CA by default), cert/key, data_file, headers, urls (extra paths on
-- the same connection). Returns { status = {..}, connects = {..}, body
-- (of the first url), rc }.
local ncurl = 0
local function curl(host, port, path_, opts)
  opts = opts or {}
  ncurl = ncurl + 1
  local body = path("curl-" .. ncurl .. ".out")
  local args = { "curl -s --max-time 5", "--resolve", q(fmt("%s:%d:127.0.0.1", host, port)),
                 "--cacert", q(opts.cacert or path("ca.crt")) }
  if opts.cert then args[#args + 1] = "--cert " .. q(opts.cert) .. " --key " .. q(opts.key) end
  if opts.data_file then args[#args + 1] = "--data-binary @" .. q(opts.data_file) end
  for _, h in ipairs(opts.headers or {}) do args[#args + 1] = "-H " .. q(h) end
  args[#args + 1] = "-o " .. q(body) .. " -w " .. q("%{http_code} %{num_connects}\\n")
  args[#args + 1] = q(fmt("https://%s:%d%s", host, port, path_))
  for i, p in ipairs(opts.urls or {}) do
    args[#args + 1] = "-o " .. q(body .. "." .. i) .. " -w " .. q("%{http_code} %{num_connects}\\n")
    args[#args + 1] = q(fmt("https://%s:%d%s", host, port, p))
  end
  local out, rc = sh(table.concat(args, " "))
  local res = { status = {}, connects = {}, rc = rc, out = out }
  for code, n in out:gmatch("(%d%d%d) (%d+)") do
    if code ~= "000" then   -- 000: no response (connection or TLS failure)
      res.status[#res.status + 1] = tonumber(code)
      res.connects[#res.connects + 1] = tonumber(n)
    end
  end
  res.body = helpers.read_file(body) or ""
  res.json = cjson.decode(res.body)
  return res
end

local function worker_pid(gw)
  for _, pid in ipairs(gw.group_pids()) do
    if pid ~= gw.pid then return pid end
  end
end

local function fd_count(pid)
  local out = sh("ls /proc/" .. pid .. "/fd | wc -l")
  return tonumber(out:match("(%d+)"))
end

local function admin_status(gw)
  local res = assert(gw.admin_request({ path = "/status" }))
  return res.json
end

-- ---------------------------------------------------------------- specs

describe("TLS", function()
  local echo, gw, tls_port, redirect_port, mtls_port, plain_port

  lazy_setup(function()
    dir = helpers.tmpdir("tls")
    make_ca("ca", "Test CA")
    make_ca("other-ca", "Other CA")
    make_cert("a", "ca", { subject = "/CN=a.test", sans = { "a.test", "localhost" }, serial = 4097 })
    make_cert("b", "ca", { subject = "/CN=b.test", sans = { "b.test", "*.wild.test" }, serial = 4098 })
    make_cert("client", "ca", { subject = "/O=tollgate-tests/CN=client-1", serial = 4660, client = true })
    make_cert("stranger", "other-ca", { subject = "/CN=stranger", serial = 7, client = true })

    echo = helpers.start_echo()
    tls_port, redirect_port, mtls_port, plain_port =
      helpers.free_port(), helpers.free_port(), helpers.free_port(), helpers.free_port()
    gw = helpers.start_gateway({
      -- (the first entry is the port start_gateway waits for)
      listen = {
        "127.0.0.1:" .. plain_port,
        "127.0.0.1:" .. tls_port .. " ssl",
        { address = "127.0.0.1:" .. redirect_port, redirect_https = true },
        { address = "127.0.0.1:" .. mtls_port, tls = true, client_ca = path("ca.crt") },
      },
      tls = {
        certificates = {
          { cert = path("a.crt"), key = path("a.key") },
          { cert = path("b.crt"), key = path("b.key") },
        },
        handshake_timeout_ms = 500,
      },
      plugins_path = { helpers.fixtures_path() },
      upstreams = { echo = { targets = { { url = echo.url() } } } },
      routes = {
        { name = "info", paths = { "=/tls-info" }, response = { status = 200, json = { unused = true } },
          plugins = { ["tls-info"] = {} } },
        { name = "callout", paths = { "=/callout" }, response = { status = 200, json = { unused = true } },
          plugins = { ["tls-callout"] = {} } },
        { name = "api", paths = { "/" }, upstream = "echo" },
      },
    })
  end)

  lazy_teardown(function()
    helpers.stop_all()
  end)

  describe("termination", function()
    it("picks the certificate by SNI: exact names, a wildcard, and the first one without SNI", function()
      assert.equal("CN = a.test", subject_of(s_client(tls_port, "-servername a.test")))
      assert.equal("CN = b.test", subject_of(s_client(tls_port, "-servername b.test")))
      assert.equal("CN = b.test", subject_of(s_client(tls_port, "-servername x.wild.test")))
      -- a wildcard covers one label only
      assert.equal("CN = a.test", subject_of(s_client(tls_port, "-servername x.y.wild.test")))
      assert.equal("CN = a.test", subject_of(s_client(tls_port, "-noservername")))
      assert.equal("CN = a.test", subject_of(s_client(tls_port, "-servername unknown.test")))
    end)

    it("verifies with the CA for both names over curl", function()
      local a = curl("a.test", tls_port, "/one")
      assert.same({ 200 }, a.status)
      assert.equal("/one", a.json.path)
      local b = curl("b.test", tls_port, "/two")
      assert.same({ 200 }, b.status)
      -- a client that trusts only another CA refuses the certificate
      local bad = curl("a.test", tls_port, "/x", { cacert = path("other-ca.crt") })
      assert.same({}, bad.status)
      assert.not_equal(0, bad.rc)
    end)

    it("refuses TLS 1.1 and accepts TLS 1.2 and 1.3", function()
      -- @SECLEVEL=0 so that the client really offers TLS 1.1
      local old = s_client(tls_port, "-servername a.test -tls1_1 -cipher DEFAULT:@SECLEVEL=0")
      assert.is_nil(subject_of(old))
      assert.truthy(old:find("alert protocol version", 1, true), old)
      assert.truthy(helpers.wait_until(function()
        return gw.error_log():find("TLS handshake with 127.0.0.1 failed: unsupported protocol", 1, true)
      end, 2))
      local v12 = s_client(tls_port, "-servername a.test -tls1_2")
      assert.truthy(v12:find("New, TLSv1.2, Cipher is ECDHE%-ECDSA%-"), v12)
      local v13 = s_client(tls_port, "-servername a.test -tls1_3")
      assert.truthy(v13:find("New, TLSv1.3, Cipher is TLS_", 1, true), v13)
    end)

    it("refuses weak TLS 1.2 ciphers", function()
      local out = s_client(tls_port, "-servername a.test -tls1_2 -cipher AES128-SHA")
      assert.is_nil(subject_of(out))
      assert.truthy(out:find("handshake failure", 1, true), out)
    end)

    it("negotiates ALPN http/1.1", function()
      local out = s_client(tls_port, "-servername a.test -alpn h2,http/1.1")
      assert.truthy(out:find("ALPN protocol: http/1.1", 1, true), out)
      out = s_client(tls_port, "-servername a.test -alpn h2")
      assert.truthy(out:find("No ALPN negotiated", 1, true), out)
    end)

    it("resumes sessions (TLS 1.3 tickets and TLS 1.2)", function()
      for _, v in ipairs({ "-tls1_3", "-tls1_2" }) do
        local sess = path("sess" .. v .. ".pem")
        local first = s_client(tls_port, "-servername a.test " .. v .. " -sess_out " .. q(sess), REQ)
        assert.truthy(first:find("\nNew, TLSv1", 1, true), first)
        assert.truthy(first:find("HTTP/1.1 200 OK", 1, true), first)
        local again = s_client(tls_port, "-servername a.test " .. v .. " -sess_in " .. q(sess), REQ)
        assert.truthy(again:find("\nReused, TLSv1", 1, true), again)
        assert.truthy(again:find("HTTP/1.1 200 OK", 1, true), again)
      end
    end)

    it("tells the upstream X-Forwarded-Proto: https and the TLS port", function()
      local res = curl("a.test", tls_port, "/proto", { headers = { "X-Forwarded-Proto: ftp" } })
      assert.same({ 200 }, res.status)
      assert.equal("https", res.json.headers["x-forwarded-proto"])
      assert.equal(tostring(tls_port), res.json.headers["x-forwarded-port"])
      -- the plain listener of the same gateway still says http
      local plain = assert(helpers.request(plain_port, { path = "/proto" }))
      assert.equal("http", plain.json.headers["x-forwarded-proto"])
    end)

    it("keeps the connection alive and carries 1 MB each way", function()
      local chunk = ("0123456789abcdef"):rep(64)                -- 1 KiB of ASCII
      local big = chunk:rep(1024)
      local f = path("big.bin")
      helpers.write_file(f, big)
      local res = curl("a.test", tls_port, "/upload", { data_file = f, urls = { "/second" } })
      assert.same({ 200, 200 }, res.status)
      assert.same({ 1, 0 }, res.connects)                        -- the second reused it
      assert.equal(1048576, res.json.body_length)
      assert.equal(big, res.json.body)
      local down = curl("a.test", tls_port, "/download", { headers = { "X-Echo-Body-Size: 1048576" } })
      assert.same({ 200 }, down.status)
      assert.equal(("x"):rep(1048576), down.body)
      local chunked = curl("a.test", tls_port, "/download",
                           { headers = { "X-Echo-Body-Size: 1048576", "X-Echo-Chunked: 7" } })
      assert.same({ 200 }, chunked.status)
      assert.equal(1048576, #chunked.body)
    end)

    it("answers plain HTTP on the TLS port with a plain 400 and closes", function()
      assert(echo.reset_stats())
      local data, closed = helpers.raw(tls_port, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
      local res = helpers.parse_raw_response(data)
      assert.is_table(res, data)
      assert.equal(400, res.status)
      assert.same({ error = "Bad Request", message = "plain HTTP request sent to the HTTPS port" }, res.json)
      assert.equal("close", res.headers["connection"])
      assert.is_true(closed)
      assert.equal(0, echo.stats().requests)
    end)

    it("closes a connection that stalls in the handshake", function()
      local conn = assert(helpers.raw_conn(tls_port))
      local t0 = gettime()
      local data, closed = conn:read_all(5)       -- we never send a ClientHello
      local took = gettime() - t0
      conn:close()
      assert.equal("", data)
      assert.is_true(closed)
      assert.is_true(took > 0.3 and took < 3, "closed after " .. took .. " s")
      -- half a ClientHello: the same
      conn = assert(helpers.raw_conn(tls_port))
      conn:send("\22\3\1\0\200\1\0\0")
      data, closed = conn:read_all(5)
      conn:close()
      assert.is_true(closed)
      assert.truthy(gw.error_log():find("TLS handshake with 127.0.0.1 timed out", 1, true))
    end)

    it("leaks no descriptor through failed handshakes", function()
      local pid = assert(worker_pid(gw))
      local before = fd_count(pid)
      for i = 1, 60 do
        local conn = assert(helpers.raw_conn(tls_port))
        if i % 3 == 0 then
          conn:send("\22\3\1\0\5hello garbage")        -- a broken record
          conn:read_all(1)
        elseif i % 3 == 1 then
          conn:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")  -- plain HTTP
          conn:read_all(1)
        end
        conn:close()                                     -- or just gone
      end
      local out = s_client(tls_port, "-servername a.test -tls1_1 -cipher DEFAULT:@SECLEVEL=0")
      assert.is_nil(subject_of(out))
      local after
      assert.truthy(helpers.wait_until(function()
        after = fd_count(pid)
        return after <= before
      end, 3), "descriptors: " .. before .. " before, " .. tostring(after) .. " after")
      assert.equal(1, #gw.group_pids() - 1)            -- the worker is the same one, alive
      assert.equal(pid, worker_pid(gw))
    end)

    it("redirects a plain listener to https with 301", function()
      assert(echo.reset_stats())
      local res = assert(helpers.request(redirect_port, { path = "/p/a?x=1&y=2", headers = { Host = "Foo.Test:8080" } }))
      assert.equal(301, res.status)
      assert.equal(fmt("https://foo.test:%d/p/a?x=1&y=2", tls_port), res.headers["location"])
      assert.equal(0, echo.stats().requests)
    end)

    it("tells plugins the scheme; no client certificate without mTLS", function()
      local res = curl("a.test", tls_port, "/tls-info")
      assert.same({ 200 }, res.status)
      assert.same({ scheme = "https" }, res.json)
      local plain = assert(helpers.request(plain_port, { path = "/tls-info" }))
      assert.same({ scheme = "http" }, plain.json)
    end)

    it("requires a client certificate signed by client_ca and shows it to plugins", function()
      local none = curl("a.test", mtls_port, "/tls-info")
      assert.same({}, none.status)
      assert.not_equal(0, none.rc)
      local stranger = curl("a.test", mtls_port, "/tls-info",
                            { cert = path("stranger.crt"), key = path("stranger.key") })
      assert.same({}, stranger.status)
      local ok = curl("a.test", mtls_port, "/tls-info", { cert = path("client.crt"), key = path("client.key") })
      assert.same({ 200 }, ok.status)
      local cc = ok.json.client_cert
      assert.is_table(cc, ok.body)
      assert.equal("CN=client-1,O=tollgate-tests", cc.subject)
      assert.equal("CN=Test CA", cc.issuer)
      assert.equal("1234", cc.serial)                    -- 4660 in hex
      local fp = must("openssl x509 -in " .. q(path("client.crt")) .. " -noout -fingerprint -sha256")
      assert.equal(fp:match("=([%x:]+)"):gsub(":", ""):lower(), cc.fingerprint_sha256)
      assert.equal("https", ok.json.scheme)
      assert.truthy(gw.error_log():find("peer did not return a certificate", 1, true))
    end)
  end)

  describe("upstreams over https", function()
    local front

    lazy_setup(function()
      local function up(port, t)
        return { targets = { { url = "https://127.0.0.1:" .. port } }, tls = t, retries = 0 }
      end
      front = helpers.start_gateway({
        upstreams = {
          good = up(tls_port, { ca_file = path("ca.crt"), sni = "a.test" }),
          by_ip = up(tls_port, { ca_file = path("ca.crt") }),      -- names 127.0.0.1: not in the cert
          no_ca = up(tls_port, { sni = "a.test" }),                  -- the system bundle
          wrong_name = up(tls_port, { ca_file = path("ca.crt"), sni = "b.test.example" }),
          no_verify = up(tls_port, { verify = false }),
          mtls = up(mtls_port, { ca_file = path("ca.crt"), sni = "a.test",
                                 client_cert = path("client.crt"), client_key = path("client.key") }),
          mtls_nocert = up(mtls_port, { ca_file = path("ca.crt"), sni = "a.test" }),
        },
        routes = {
          { name = "good", paths = { "/good" }, upstream = "good" },
          { name = "by_ip", paths = { "/by_ip" }, upstream = "by_ip" },
          { name = "no_ca", paths = { "/no_ca" }, upstream = "no_ca" },
          { name = "wrong_name", paths = { "/wrong_name" }, upstream = "wrong_name" },
          { name = "no_verify", paths = { "/no_verify" }, upstream = "no_verify" },
          { name = "mtls", paths = { "/mtls" }, upstream = "mtls", strip_prefix = "/mtls" },
          { name = "mtls_nocert", paths = { "/mtls_nocert" }, upstream = "mtls_nocert" },
        },
      })
    end)

    it("verifies the upstream with ca_file and SNI", function()
      local res = assert(front.request({ path = "/good/x", method = "POST", body = "hello" }))
      assert.equal(200, res.status)
      assert.equal("/good/x", res.json.path)
      assert.equal("hello", res.json.body)
      -- through both gateways: each appended the client it saw
      assert.equal("127.0.0.1, 127.0.0.1", res.json.headers["x-forwarded-for"])
      -- the TLS gateway told the echo it came over https
      assert.equal("https", res.json.headers["x-forwarded-proto"])
    end)

    it("fails with 502 without the CA, and says why", function()
      local res = assert(front.request({ path = "/no_ca" }))
      assert.equal(502, res.status)
      assert.same({ error = "Bad Gateway" }, res.json)
      assert.truthy(helpers.wait_until(function()
        return front.error_log():find('upstream "no_ca" [^\n]* TLS handshake failed: certificate verify failed: '
                                      .. 'unable to get local issuer certificate')
      end, 2), front.error_log())
    end)

    it("fails with 502 when the certificate names another host", function()
      for _, p in ipairs({ "/wrong_name", "/by_ip" }) do
        local res = assert(front.request({ path = p }))
        assert.equal(502, res.status)
      end
      assert.truthy(helpers.wait_until(function()
        return front.error_log():find('upstream "wrong_name" [^\n]* certificate verify failed: hostname mismatch')
          and front.error_log():find('upstream "by_ip" [^\n]* certificate verify failed: IP address mismatch')
      end, 2), front.error_log())
    end)

    it("skips verification with verify: false", function()
      local res = assert(front.request({ path = "/no_verify" }))
      assert.equal(200, res.status)
    end)

    it("presents a client certificate to an mTLS upstream", function()
      local res = assert(front.request({ path = "/mtls/tls-info" }))
      assert.equal(200, res.status)
      assert.equal("CN=client-1,O=tollgate-tests", res.json.client_cert.subject)
      local nocert = assert(front.request({ path = "/mtls_nocert" }))
      assert.equal(502, nocert.status)
    end)

    it("pools upstream TLS connections", function()
      assert(front.request({ path = "/good/warm" }))
      local before = admin_status(gw).connections_total
      for i = 1, 8 do
        local res = assert(front.request({ path = "/good/" .. i }))
        assert.equal(200, res.status)
      end
      local after = admin_status(gw).connections_total
      -- each /status request is one connection of its own; the 8 requests
      -- came over the pooled one
      assert.equal(1, after - before)
    end)
  end)

  describe("upstream session resumption", function()
    it("resumes the target's TLS session on a new connection", function()
      -- openssl s_server -www answers each request with a status page that
      -- says whether the session was reused; keepalive 0 makes every
      -- request a new connection.
      local port = helpers.free_port()
      local out = must(fmt("openssl s_server -accept 127.0.0.1:%d -cert %s -key %s -www > %s 2>&1 & echo $!",
                           port, q(path("a.crt")), q(path("a.key")), q(path("s_server.log"))))
      local pid = assert(tonumber(out:match("(%d+)")))
      finally(function() sh("kill " .. pid) end)
      assert.truthy(helpers.wait_until(function() return helpers.port_open(port) end, 5))
      local gw3 = helpers.start_gateway({
        upstreams = { ss = { targets = { { url = "https://127.0.0.1:" .. port } }, keepalive = 0,
                             tls = { ca_file = path("ca.crt"), sni = "a.test" } } },
        routes = { { name = "ss", paths = { "/" }, upstream = "ss" } },
      })
      local seen = {}
      for i = 1, 3 do
        local res = assert(gw3.request({ path = "/" }))
        assert.equal(200, res.status)
        seen[i] = res.body:match("(%a+), TLSv1%.%d")
      end
      assert.same({ "New", "Reused", "Reused" }, seen)
    end)
  end)

  describe("tg.http over https", function()
    local function callout(args)
      local parts = {}
      for k, v in pairs(args) do
        parts[#parts + 1] = k .. "=" .. tostring(v):gsub("[^%w%-%._~/]", function(c)
          return fmt("%%%02X", c:byte())
        end)
      end
      local res = assert(helpers.request(plain_port, { path = "/callout?" .. table.concat(parts, "&") }))
      assert.equal(200, res.status, res.body)
      return res.json.results
    end

    it("verifies with ca_file and keeps the connection alive", function()
      local r = callout({ url = fmt("https://localhost:%d/via-lua", tls_port), ca_file = path("ca.crt"), n = 3 })
      for i = 1, 3 do
        assert.equal(200, r[i].status, r[i].err)
        assert.equal("https", cjson.decode(r[i].body).headers["x-forwarded-proto"])
      end
      assert.is_false(r[1].reused)
      assert.is_true(r[3].reused)
    end)

    it("fails verification without the CA or for the wrong name, and skips it on request", function()
      local r = callout({ url = fmt("https://localhost:%d/x", tls_port) })
      assert.equal("tls handshake failed: certificate verify failed: unable to get local issuer certificate", r[1].err)
      r = callout({ url = fmt("https://127.0.0.1:%d/x", tls_port), ca_file = path("ca.crt") })
      assert.equal("tls handshake failed: certificate verify failed: IP address mismatch", r[1].err)
      r = callout({ url = fmt("https://127.0.0.1:%d/x", tls_port), ssl_verify = 0 })
      assert.equal(200, r[1].status, r[1].err)
    end)

    it("reads a 1 MB body", function()
      local r = callout({ url = fmt("https://localhost:%d/big", tls_port), ca_file = path("ca.crt"), size = 1048576 })
      assert.equal(200, r[1].status, r[1].err)
      assert.equal(("x"):rep(1048576), r[1].body)
    end)
  end)

  describe("reload", function()
    local gw2, port2

    lazy_setup(function()
      make_cert("a2", "ca", { subject = "/O=v2/CN=a.test", sans = { "a.test" }, serial = 8193 })
      port2 = helpers.free_port()
      gw2 = helpers.start_gateway({
        listen = { { address = "127.0.0.1:" .. port2, tls = true } },
        tls = { certificates = { { cert = path("a.crt"), key = path("a.key") } } },
        routes = { { name = "ok", paths = { "/" }, response = { status = 200, json = { ok = true } } } },
      })
    end)

    it("picks up a swapped certificate; a bad one keeps the old and says which file and why", function()
      assert.equal("CN = a.test", subject_of(s_client(port2, "-servername a.test")))
      local conf = {
        listen = { { address = "127.0.0.1:" .. port2, tls = true } },
        tls = { certificates = { { cert = path("a2.crt"), key = path("a2.key") } } },
        routes = { { name = "ok", paths = { "/" }, response = { status = 200, json = { ok = true } } } },
      }
      assert(gw2.reload(conf))
      assert.truthy(helpers.wait_until(function()
        return subject_of(s_client(port2, "-servername a.test")) == "O = v2, CN = a.test"
      end, 3))

      conf.tls.certificates[1].key = path("missing.key")
      local ok = gw2.reload(conf, { timeout = 1.5 })
      assert.is_nil(ok)
      local want = fmt('reload failed, keeping the running config: tls.certificates[0].key: cannot load "%s": '
                       .. "no such file or directory", path("missing.key"))
      assert.truthy(helpers.wait_until(function() return gw2.error_log():find(want, 1, true) end, 2),
                    gw2.error_log())
      assert.equal("O = v2, CN = a.test", subject_of(s_client(port2, "-servername a.test")))
      local res = curl("a.test", port2, "/")
      assert.same({ 200 }, res.status)

      -- a key of another certificate
      conf.tls.certificates[1].key = path("b.key")
      assert.is_nil(gw2.reload(conf, { timeout = 1.5 }))
      want = fmt('tls.certificates[0].key: key "%s" does not match certificate "%s"', path("b.key"), path("a2.crt"))
      assert.truthy(helpers.wait_until(function() return gw2.error_log():find(want, 1, true) end, 2))
      assert.equal("O = v2, CN = a.test", subject_of(s_client(port2, "-servername a.test")))
    end)

    it("checks certificates in tollgate -t", function()
      local ok, out = helpers.test_config({
        listen = { { address = "127.0.0.1:" .. port2, tls = true } },
        tls = { certificates = { { cert = path("a.crt"), key = path("nope.key") },
                                 { cert = path("a.csr"), key = path("a.key") } } },
      })
      assert.is_false(ok)
      assert.truthy(out:find(fmt('tls.certificates[0].key: cannot load "%s": no such file or directory',
                                 path("nope.key")), 1, true), out)
      assert.truthy(out:find(fmt('tls.certificates[1].cert: cannot load "%s": not a PEM certificate',
                                 path("a.csr")), 1, true), out)
    end)
  end)
end)
