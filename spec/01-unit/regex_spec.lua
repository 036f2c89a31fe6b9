-- Unit specs for lua/tollgate/regex.lua (PCRE2 through FFI) and
-- lua/tollgate/template.lua, under a plain luajit: the regex module loads
-- libpcre2-8 itself when the process does not already have it. The
-- gateway-side behaviour (path rewrites, CORS origins, templates in
-- request edits) is in spec/03-plugins/.

local regex = require "tollgate.regex"
local template = require "tollgate.template"

local rep = string.rep

describe("tollgate.regex", function()
  it("compiles once per pattern and options", function()
    local a = assert(regex.compile("^/a/(.*)"))
    assert.equal(a, regex.compile("^/a/(.*)"))
    assert.not_equal(a, regex.compile("^/a/(.*)", "i"))
    assert.equal(1, a.ncaptures)
  end)

  it("reports compile errors with the offset", function()
    local re, err = regex.compile("^/(a")
    assert.is_nil(re)
    assert.equal("missing closing parenthesis at offset 4", err)
    assert.same({ nil, "quantifier does not follow a repeatable item at offset 0" }, { regex.check("*") })
  end)

  it("raises on misuse", function()
    assert.has_error(function() regex.compile(42) end, "regex.compile: pattern must be a string")
    assert.has_error(function() regex.compile("a", "q") end, 'regex.compile: unknown option "q"')
  end)

  it("matches, finds and captures", function()
    local re = assert(regex.compile("/(v\\d+)/(x)?(y)"))
    assert.is_true(re:match("/api/v2/y"))
    assert.is_false(re:match("/api/v/y"))
    assert.same({ 5, 9 }, { re:find("/api/v2/y") })
    assert.is_nil(re:find("/api/v2/y", 6))
    local caps = re:exec("/api/v2/y")
    assert.equal("/v2/y", caps[0])
    assert.equal("v2", caps[1])
    assert.is_false(caps[2])                   -- unset group
    assert.equal("y", caps[3])
    assert.is_nil(re:exec("nothing"))
  end)

  it("honours options, including whole-subject anchoring", function()
    local whole = assert(regex.compile("https://[a-z]+\\.example\\.com", "az"))
    assert.is_true(whole:match("https://app.example.com"))
    assert.is_false(whole:match("https://app.example.com.evil.net"))
    assert.is_false(whole:match("xhttps://app.example.com"))
    assert.is_true(assert(regex.compile("abc", "i")):match("xABCx"))
    assert.is_false(assert(regex.compile("abc")):match("xABCx"))
  end)

  it("works on bytes, not UTF-8", function()
    local re = assert(regex.compile("^/(.)$"))
    assert.equal("\255", re:exec("/\255")[1])
    assert.equal("/\195", re:sub("/\195", "/$1"))
  end)

  it("substitutes the first match, or all with global", function()
    local re = assert(regex.compile("v(\\d)"))
    assert.same({ "/v9/v2", 1 }, { re:sub("/v1/v2", "v9") })
    assert.same({ "/w1/w2", 2 }, { re:sub("/v1/v2", "w$1", true) })
    assert.same({ "/none", 0 }, { re:sub("/none", "x") })
    assert.same({ "/$1", 1 }, { assert(regex.compile("^/a")):sub("/a", "/$$1") })
    local named = assert(regex.compile("^/(?<ver>v\\d)/(.*)"))
    assert.same({ "/v3-rest", 1 }, { named:sub("/v3/rest", "/${ver}-$2") })
    local opt = assert(regex.compile("^/(x)?(y)"))
    assert.same({ "[]", 1 }, { opt:sub("/y", "[$1]") })   -- unset group: empty
  end)

  it("grows the substitution buffer for large results", function()
    local re = assert(regex.compile("(a)"))
    local out, n = re:sub(rep("a", 5000), "$1$1$1", true)
    assert.equal(5000, n)
    assert.equal(rep("a", 15000), out)
  end)

  it("stops a catastrophic backtrack at the match limit", function()
    local re = assert(regex.compile("^(a+)+$"))
    local subject = rep("a", 40) .. "b"
    assert.same({ nil, "regex match failed: match limit exceeded" }, { re:match(subject) })
    assert.same({ nil, "regex substitution failed: match limit exceeded" }, { re:sub(subject, "x") })
    assert.is_true(re:match(rep("a", 40)))
  end)

  it("checks replacements against the pattern's groups", function()
    local re = assert(regex.compile("^/(?<ver>v\\d)/(.*)"))
    assert.is_true(re:check_replacement("/$1/$2/${ver}/${2}/$$"))
    assert.same({ nil, "reference to group $3, the pattern has 2 groups" }, { re:check_replacement("/$3") })
    assert.same({ nil, "reference to unknown group ${nope}" }, { re:check_replacement("${nope}") })
    assert.same({ nil, "unterminated ${ at offset 1" }, { re:check_replacement("/${1") })
    assert.same({ nil, '"$" at offset 2 must be followed by a group number, {name} or $' },
                { re:check_replacement("/x$") })
  end)
end)

describe("tollgate.template", function()
  local env = {
    consumer = function(ctx, f) return ctx.consumer and ctx.consumer[f] end,
    request_id = function(ctx) return ctx.request_id end,
    headers = function(ctx, name) return ctx.headers[name:lower()] end,
    query = function(ctx, name) return ctx.query[name] end,
    client_ip = function() return "127.0.0.1" end,
  }
  local ctx = { consumer = { id = "alice", n = 3, flag = true }, request_id = "r-1",
                headers = { ["x-a"] = "A" }, query = { page = "2" } }

  local function render(s, c)
    return assert(template.compile(s)):render(env, c or ctx)
  end

  it("renders every variable kind", function()
    assert.equal("alice/3/r-1/A/2/127.0.0.1",
      render("$(consumer.id)/$(consumer.n)/$(request_id)/$(headers.X-A)/$(query.page)/$(client_ip)"))
  end)

  it("keeps a string without variables as is", function()
    local tpl = assert(template.compile("plain $ text (x) $5"))
    assert.equal("plain $ text (x) $5", tpl.static)
    assert.equal("plain $ text (x) $5", tpl:render(env, ctx))
  end)

  it("writes $$( as a literal $(", function()
    assert.equal("$(consumer.id)=alice", render("$$(consumer.id)=$(consumer.id)"))
    local s = "a $(x) b $$(y)"
    assert.equal(s, render(template.escape(s)))
  end)

  it("gives nil when a variable has no value, or a non-scalar one", function()
    assert.is_nil(render("id=$(consumer.missing)"))
    assert.is_nil(render("$(consumer.flag)"))
    assert.is_nil(render("$(headers.X-None)"))
    assert.is_nil(render("$(consumer.id)", { headers = {}, query = {} }))
    -- The scratch space is clean after a nil: the next render is whole.
    assert.equal("alice", render("$(consumer.id)"))
  end)

  it("refuses unknown variables and bad syntax", function()
    for s, err in pairs({
      ["$(nope)"] = "unknown template variable $(nope)",
      ["$(request_id.x)"] = "unknown template variable $(request_id.x)",
      ["$(headers.)"] = 'template variable $(headers.) needs a valid name after "headers."',
      ["$(headers.a b)"] = 'template variable $(headers.a b) needs a valid name after "headers."',
      ["$(consumer.1x)"] = 'template variable $(consumer.1x) needs a valid name after "consumer."',
      ["x $(consumer.id"] = 'unterminated "$(" at offset 2',
    }) do
      assert.same({ nil, err }, { template.compile(s) }, s)
      assert.same({ nil, err }, { template.check(s) }, s)
    end
    assert.is_true(template.check("$(query.a.b)"))
  end)
end)
