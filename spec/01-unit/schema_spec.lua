-- spec/01-unit/schema_spec.lua: tollgate.schema, the plugin schema language.
--
-- Every type and constraint is exercised passing and failing, and failing
-- cases assert the exact message text: operators read these messages, and
-- the core's own config errors use the same words.

local schema = require "tollgate.schema"

-- validate and expect failure; returns the error list
local function errs_of(def, value, path)
    local conf, errs = schema.validate(def, value, path)
    assert.is_nil(conf)
    assert.is_table(errs)
    return errs
end

-- validate a single field `f` inside a record, path prefix "p"
local function field_errs(f, v)
    return errs_of({ type = "record", fields = { f = f } }, { f = v }, "p")
end

local function field_ok(f, v)
    local conf, errs = schema.validate({ type = "record", fields = { f = f } }, { f = v }, "p")
    assert.is_nil(errs)
    return conf.f
end

describe("schema.validate", function()

    describe("types", function()
        it("string", function()
            assert.equal("abc", field_ok({ type = "string" }, "abc"))
            assert.equal("", field_ok({ type = "string" }, ""))
            assert.same({ "p.f: expected a string" }, field_errs({ type = "string" }, 12))
            assert.same({ "p.f: expected a string" }, field_errs({ type = "string" }, {}))
        end)

        it("number", function()
            assert.equal(1.5, field_ok({ type = "number" }, 1.5))
            assert.equal(3, field_ok({ type = "number" }, 3))
            assert.same({ "p.f: expected a number" }, field_errs({ type = "number" }, "1"))
            assert.same({ "p.f: expected a number" }, field_errs({ type = "number" }, 0 / 0))
            assert.same({ "p.f: expected a number" }, field_errs({ type = "number" }, true))
        end)

        it("integer", function()
            assert.equal(3, field_ok({ type = "integer" }, 3))
            assert.equal(-7, field_ok({ type = "integer" }, -7))
            assert.equal(2^53, field_ok({ type = "integer" }, 2^53))
            assert.same({ "p.f: expected an integer" }, field_errs({ type = "integer" }, 1.5))
            assert.same({ "p.f: expected an integer" }, field_errs({ type = "integer" }, "3"))
            assert.same({ "p.f: expected an integer" }, field_errs({ type = "integer" }, math.huge))
            assert.same({ "p.f: expected an integer" }, field_errs({ type = "integer" }, 0 / 0))
        end)

        it("boolean", function()
            assert.equal(true, field_ok({ type = "boolean" }, true))
            assert.equal(false, field_ok({ type = "boolean", required = true }, false))
            assert.same({ "p.f: expected true or false" }, field_errs({ type = "boolean" }, "true"))
            assert.same({ "p.f: expected true or false" }, field_errs({ type = "boolean" }, 0))
        end)

        it("array", function()
            local def = { type = "array", elements = { type = "string" } }
            assert.same({}, field_ok(def, {}))
            assert.same({ "a", "b" }, field_ok(def, { "a", "b" }))
            assert.same({ "p.f: expected a list" }, field_errs(def, { [1] = "a", [3] = "c" }))
            assert.same({ "p.f: expected a list" }, field_errs(def, { [0] = "a" }))
            assert.same({ "p.f: expected a list" }, field_errs(def, { a = "x" }))
            assert.same({ "p.f: expected a list" }, field_errs(def, { "a", x = "b" }))
            assert.same({ "p.f: expected a list" }, field_errs(def, "a"))
        end)

        it("array without elements accepts anything in it", function()
            assert.same({ 1, "a", { b = 2 } }, field_ok({ type = "array" }, { 1, "a", { b = 2 } }))
        end)

        it("map", function()
            local def = { type = "map", values = { type = "integer" } }
            assert.same({}, field_ok(def, {}))
            assert.same({ a = 1, b = 2 }, field_ok(def, { a = 1, b = 2 }))
            assert.same({ "p.f: expected a map" }, field_errs(def, { 1, 2 }))
            assert.same({ "p.f: expected a map" }, field_errs(def, { a = 1, [5] = 2 }))
            assert.same({ "p.f: expected a map" }, field_errs(def, "a=1"))
        end)

        it("record", function()
            local def = { type = "record", fields = { a = { type = "string" } } }
            assert.same({ a = "x" }, field_ok(def, { a = "x" }))
            assert.same({}, field_ok(def, {}))
            assert.same({ "p.f: expected a map" }, field_errs(def, { "x" }))
            assert.same({ "p.f: expected a map" }, field_errs(def, false))
        end)

        it("any accepts every value and copies tables", function()
            local def = { type = "any" }
            assert.equal("s", field_ok(def, "s"))
            assert.equal(4, field_ok(def, 4))
            assert.equal(false, field_ok(def, false))
            local input = { a = { b = { 1, 2 } } }
            local out = field_ok(def, input)
            assert.same(input, out)
            assert.not_equal(input, out)
            assert.not_equal(input.a, out.a)
            assert.not_equal(input.a.b, out.a.b)
        end)
    end)

    describe("number bounds", function()
        it("integer with min = 1 is 'a positive integer', whatever went wrong", function()
            local def = { type = "integer", min = 1 }
            assert.equal(1, field_ok(def, 1))
            for _, bad in ipairs({ 0, -3, 1.5, "10", true }) do
                assert.same({ "p.f: expected a positive integer" }, field_errs(def, bad))
            end
        end)

        it("integer with gt = 0 is also 'a positive integer'", function()
            assert.same({ "p.f: expected a positive integer" }, field_errs({ type = "integer", gt = 0 }, 0))
        end)

        it("integer with min = 0 is 'a non-negative integer'", function()
            local def = { type = "integer", min = 0 }
            assert.equal(0, field_ok(def, 0))
            assert.same({ "p.f: expected a non-negative integer" }, field_errs(def, -1))
        end)

        it("integer with another min is 'an integer >= N'", function()
            local def = { type = "integer", min = 5 }
            assert.equal(5, field_ok(def, 5))
            assert.same({ "p.f: expected an integer >= 5" }, field_errs(def, 4))
            assert.same({ "p.f: expected an integer >= -2" }, field_errs({ type = "integer", min = -2 }, -3))
        end)

        it("integer with min and max is 'between'", function()
            local def = { type = "integer", min = 1, max = 65535 }
            assert.equal(65535, field_ok(def, 65535))
            assert.same({ "p.f: expected an integer between 1 and 65535" }, field_errs(def, 65536))
            assert.same({ "p.f: expected an integer between 1 and 65535" }, field_errs(def, 0))
        end)

        it("integer with only max or lt", function()
            assert.same({ "p.f: expected an integer <= 10" }, field_errs({ type = "integer", max = 10 }, 11))
            assert.same({ "p.f: expected an integer < 10" }, field_errs({ type = "integer", lt = 10 }, 10))
            assert.same({ "p.f: expected an integer >= 1 and < 10" },
                        field_errs({ type = "integer", min = 1, lt = 10 }, 10))
        end)

        it("number with gt = 0 is 'a positive number'", function()
            local def = { type = "number", gt = 0 }
            assert.equal(0.001, field_ok(def, 0.001))
            assert.same({ "p.f: expected a positive number" }, field_errs(def, 0))
            assert.same({ "p.f: expected a positive number" }, field_errs(def, "60"))
        end)

        it("number with min = 0, other bounds, fractions", function()
            assert.same({ "p.f: expected a non-negative number" }, field_errs({ type = "number", min = 0 }, -0.5))
            assert.same({ "p.f: expected a number >= 0.5" }, field_errs({ type = "number", min = 0.5 }, 0.4))
            assert.same({ "p.f: expected a number between 1 and 2.5" },
                        field_errs({ type = "number", min = 1, max = 2.5 }, 2.6))
            assert.same({ "p.f: expected a number > 0 and < 1" }, field_errs({ type = "number", gt = 0, lt = 1 }, 1))
            assert.same({ "p.f: expected a number < 100" }, field_errs({ type = "number", lt = 100 }, 100))
            assert.equal(99.5, field_ok({ type = "number", lt = 100 }, 99.5))
        end)
    end)

    describe("strings", function()
        it("min_len = 1 reads 'must not be empty'", function()
            local def = { type = "string", min_len = 1 }
            assert.equal("a", field_ok(def, "a"))
            assert.same({ "p.f: must not be empty" }, field_errs(def, ""))
        end)

        it("min_len / max_len count bytes", function()
            assert.same({ "p.f: expected a string of at least 3 bytes" },
                        field_errs({ type = "string", min_len = 3 }, "ab"))
            assert.same({ "p.f: expected a string of at most 1 byte" },
                        field_errs({ type = "string", max_len = 1 }, "ab"))
            assert.same({ "p.f: expected a string of 2 to 4 bytes" },
                        field_errs({ type = "string", min_len = 2, max_len = 4 }, "abcde"))
            assert.equal("abcd", field_ok({ type = "string", min_len = 2, max_len = 4 }, "abcd"))
        end)

        it("match is a Lua pattern", function()
            local def = { type = "string", match = "^[%w-]+$" }
            assert.equal("X-Api-Key", field_ok(def, "X-Api-Key"))
            assert.same({ 'p.f: expected a string matching "^[%w-]+$"' }, field_errs(def, "bad header"))
            -- unanchored patterns match anywhere, as in string.find
            assert.equal("xx1xx", field_ok({ type = "string", match = "%d" }, "xx1xx"))
        end)

        it("one_of lists the choices, also for a value of the wrong type", function()
            local def = { type = "string", one_of = { "fixed_window", "sliding_window", "token_bucket" } }
            assert.equal("token_bucket", field_ok(def, "token_bucket"))
            local msg = "p.f: expected one of: fixed_window, sliding_window, token_bucket"
            assert.same({ msg }, field_errs(def, "leaky"))
            assert.same({ msg }, field_errs(def, 3))
        end)

        it("one_of on numbers", function()
            local def = { type = "integer", one_of = { 1, 2, 4 } }
            assert.equal(4, field_ok(def, 4))
            assert.same({ "p.f: expected one of: 1, 2, 4" }, field_errs(def, 3))
            assert.same({ "p.f: expected one of: 1, 2, 4" }, field_errs(def, "x"))
        end)

        it("reports every broken constraint of one value, in constraint order", function()
            local def = { type = "string", max_len = 3, match = "^%a+$", one_of = { "ab", "cd" } }
            assert.same({
                "p.f: expected a string of at most 3 bytes",
                'p.f: expected a string matching "^%a+$"',
                "p.f: expected one of: ab, cd",
            }, field_errs(def, "a-b-c"))
        end)
    end)

    describe("arrays", function()
        it("min_len / max_len", function()
            local def = { type = "array", elements = { type = "integer" }, min_len = 2, max_len = 3 }
            assert.same({ 1, 2 }, field_ok(def, { 1, 2 }))
            assert.same({ "p.f: expected a list of 2 to 3 items" }, field_errs(def, { 1 }))
            assert.same({ "p.f: expected a list of 2 to 3 items" }, field_errs(def, { 1, 2, 3, 4 }))
        end)

        it("min_len messages", function()
            assert.same({ "p.f: must not be empty" }, field_errs({ type = "array", min_len = 1 }, {}))
            assert.same({ "p.f: expected a list of at least 2 items" }, field_errs({ type = "array", min_len = 2 }, { 1 }))
            assert.same({ "p.f: expected a list of at most 1 item" }, field_errs({ type = "array", max_len = 1 }, { 1, 2 }))
        end)

        it("names elements with 0-based indices", function()
            local def = { type = "array", elements = { type = "string", match = "^[%w-]+$" } }
            assert.same({
                'p.f[1]: expected a string matching "^[%w-]+$"',
                "p.f[2]: expected a string",
            }, field_errs(def, { "ok", "not ok", 3 }))
        end)

        it("orders indices numerically", function()
            local list = {}
            for i = 1, 12 do list[i] = "ok" end
            list[3], list[11] = 1, 2
            assert.same({ "p.f[2]: expected a string", "p.f[10]: expected a string" },
                        field_errs({ type = "array", elements = { type = "string" } }, list))
        end)

        it("reports the length and the elements together", function()
            local def = { type = "array", elements = { type = "string" }, max_len = 1 }
            assert.same({ "p.f: expected a list of at most 1 item", "p.f[1]: expected a string" },
                        field_errs(def, { "a", 1 }))
        end)
    end)

    describe("maps", function()
        it("names values by key", function()
            local def = { type = "map", keys = { type = "string" }, values = { type = "integer", min = 0 } }
            assert.same({ free = 0, pro = 100 }, field_ok(def, { free = 0, pro = 100 }))
            assert.same({ "p.f.pro: expected a non-negative integer" }, field_errs(def, { free = 0, pro = -1 }))
        end)

        it("checks keys against their definition", function()
            local def = { type = "map", keys = { type = "string", match = "^%l+$" }, values = { type = "integer" } }
            assert.same({
                'p.f.Pro: invalid key: expected a string matching "^%l+$"',
                "p.f.Pro: expected an integer",
            }, field_errs(def, { Pro = "x", ok = 1 }))
            local checked = { type = "map", keys = { type = "string", check = function(k)
                return k ~= "admin", "reserved name"
            end } }
            assert.same({ "p.f.admin: invalid key: reserved name" }, field_errs(checked, { admin = 1, user = 2 }))
        end)

        it("min_len / max_len count keys", function()
            assert.same({ "p.f: expected a map of at least 2 entries" },
                        field_errs({ type = "map", min_len = 2 }, { a = 1 }))
            assert.same({ "p.f: expected a map of at most 1 entry" },
                        field_errs({ type = "map", max_len = 1 }, { a = 1, b = 2 }))
        end)
    end)

    describe("records", function()
        it("reports a missing required field at the field's path", function()
            local def = { type = "record", fields = { limit = { type = "integer", required = true, min = 1 } } }
            assert.same({ "routes[0].plugins.rate-limiting.limit: required field missing" },
                        errs_of(def, {}, "routes[0].plugins.rate-limiting"))
        end)

        it("refuses unknown keys by default", function()
            local def = { type = "record", fields = { a = { type = "string" } } }
            assert.same({ "p.b: unknown key", "p.c: unknown key" }, errs_of(def, { a = "x", c = 1, b = 2 }, "p"))
        end)

        it("drops unknown keys with unknown = \"ignore\"", function()
            local def = { type = "record", unknown = "ignore", fields = { a = { type = "string" } } }
            assert.same({ a = "x" }, schema.validate(def, { a = "x", b = 2 }))
        end)

        it("nests paths through records", function()
            local def = { type = "record", fields = {
                redis = { type = "record", fields = { port = { type = "integer", min = 1, max = 65535 } } },
            } }
            assert.same({ "p.redis.port: expected an integer between 1 and 65535" },
                        errs_of(def, { redis = { port = 0 } }, "p"))
        end)

        it("nests paths through arrays of records inside maps", function()
            local def = { type = "record", fields = {
                tiers = { type = "map", values = { type = "array", elements = { type = "record", fields = {
                    limit = { type = "integer", required = true, min = 1 },
                    window_s = { type = "number", gt = 0 },
                } } } },
            } }
            assert.same({
                "routes[3].plugins.quota.tiers.gold[1].limit: expected a positive integer",
                "routes[3].plugins.quota.tiers.gold[2].limit: required field missing",
                "routes[3].plugins.quota.tiers.gold[2].window_s: expected a positive number",
                "routes[3].plugins.quota.tiers.silver[0].extra: unknown key",
            }, errs_of(def, { tiers = {
                gold = { { limit = 5 }, { limit = 0 }, { window_s = 0 } },
                silver = { { limit = 1, extra = true } },
            } }, "routes[3].plugins.quota"))
        end)
    end)

    describe("error list", function()
        local def = { type = "record", fields = {
            limit     = { type = "integer", required = true, min = 1 },
            algorithm = { type = "string", one_of = { "a", "b" } },
            headers   = { type = "array", elements = { type = "string" } },
            zone      = { type = "string" },
        } }
        local input = { limit = "x", algorithm = "c", headers = { "ok", 2, true }, zone = 5, bogus = 1 }
        local expected = {
            "algorithm: expected one of: a, b",
            "bogus: unknown key",
            "headers[1]: expected a string",
            "headers[2]: expected a string",
            "limit: expected a positive integer",
            "zone: expected a string",
        }

        it("holds every error, sorted by path; an empty prefix gives bare field paths", function()
            assert.same(expected, errs_of(def, input, ""))
            assert.same(expected, errs_of(def, input))
        end)

        it("is the same on every run", function()
            for _ = 1, 20 do assert.same(expected, errs_of(def, input)) end
        end)

        it("puts a parent before its children, whatever characters keys hold", function()
            -- as strings "p.m-x" < "p.m.a"; by path segments m < m.a < m-x
            local d = { type = "record", fields = {
                m = { type = "map", min_len = 3, values = { type = "integer" } },
                ["m-x"] = { type = "integer" },
            } }
            assert.same({
                "p.m: expected a map of at least 3 entries",
                "p.m.a: expected an integer",
                "p.m-x: expected an integer",
            }, errs_of(d, { m = { a = "x" }, ["m-x"] = "y" }, "p"))
        end)

        it("has no prefix for an error on the value itself with an empty path", function()
            assert.same({ "expected a map" }, errs_of({ type = "record", fields = {} }, 5))
            assert.same({ "expected a positive integer" }, errs_of({ type = "integer", min = 1 }, 0))
        end)
    end)

    describe("defaults", function()
        local def = { type = "record", fields = {
            window_s = { type = "number", default = 60, gt = 0 },
            enabled  = { type = "boolean", default = false },
            headers  = { type = "array", elements = { type = "string" }, default = { "x-a" } },
            redis    = { type = "record", default = {}, fields = {
                host = { type = "string", default = "127.0.0.1" },
                port = { type = "integer", default = 6379 },
                tls  = { type = "record", default = {}, fields = { verify = { type = "boolean", default = true } } },
            } },
            nodefault = { type = "record", fields = { x = { type = "string", default = "y" } } },
            extra    = { type = "any", default = { a = { 1 } } },
        } }

        it("fills absent fields, including false and nested record defaults", function()
            local conf = assert(schema.validate(def, {}))
            assert.same({
                window_s = 60, enabled = false, headers = { "x-a" },
                redis = { host = "127.0.0.1", port = 6379, tls = { verify = true } },
                extra = { a = { 1 } },
            }, conf)
        end)

        it("fills defaults inside a record that is given", function()
            local conf = assert(schema.validate(def, { redis = { port = 6380 }, nodefault = {} }))
            assert.same({ host = "127.0.0.1", port = 6380, tls = { verify = true } }, conf.redis)
            assert.same({ x = "y" }, conf.nodefault)
        end)

        it("leaves a record without a default absent", function()
            assert.is_nil(assert(schema.validate(def, {})).nodefault)
        end)

        it("never shares a default between results or with the definition", function()
            local one = assert(schema.validate(def, {}))
            one.headers[1] = "changed"
            one.redis.host = "changed"
            one.redis.tls.verify = false
            one.extra.a[1] = "changed"
            local two = assert(schema.validate(def, {}))
            assert.same({ "x-a" }, two.headers)
            assert.equal("127.0.0.1", two.redis.host)
            assert.is_true(two.redis.tls.verify)
            assert.same({ a = { 1 } }, two.extra)
            assert.same({ "x-a" }, def.fields.headers.default)
            assert.same({}, def.fields.redis.default)
        end)

        it("never mutates the input and returns new tables", function()
            local input = { headers = { "a" }, redis = { port = 1 } }
            local conf = assert(schema.validate(def, input))
            assert.same({ headers = { "a" }, redis = { port = 1 } }, input)
            assert.not_equal(input, conf)
            assert.not_equal(input.headers, conf.headers)
            assert.not_equal(input.redis, conf.redis)
        end)

        it("uses a top-level default for an absent value", function()
            assert.same({ a = 1 }, schema.validate({ type = "map", default = { a = 1 } }, nil))
            assert.same({ "required field missing" }, errs_of({ type = "map" }, nil))
        end)
    end)

    describe("null", function()
        local def = { type = "record", fields = {
            limit = { type = "integer", required = true },
            window_s = { type = "number", default = 60 },
            note = { type = "string" },
            headers = { type = "array", elements = { type = "string" } },
            blobs = { type = "array", elements = { type = "any" } },
        } }

        it("means 'use the default' for an optional field", function()
            local conf = assert(schema.validate(def, { limit = 1, window_s = schema.null, note = schema.null }))
            assert.same({ limit = 1, window_s = 60 }, conf)
        end)

        it("means 'missing' for a required field", function()
            assert.same({ "limit: required field missing" }, errs_of(def, { limit = schema.null }))
        end)

        it("is a type error as a list item, except for any", function()
            assert.same({ "headers[1]: expected a string" }, errs_of(def, { limit = 1, headers = { "a", schema.null } }))
            local conf = assert(schema.validate(def, { limit = 1, blobs = { schema.null } }))
            assert.equal(schema.null, conf.blobs[1])
        end)

        it("is not taken for an empty map", function()
            assert.same({ "p.f: expected a map" }, field_errs({ type = "map" }, { schema.null }))
            assert.same({ "p.f[0]: expected a map" },
                        field_errs({ type = "array", elements = { type = "map" } }, { schema.null }))
        end)

        it("at the top level takes the default", function()
            assert.same({ a = 1 }, schema.validate({ type = "map", default = { a = 1 } }, schema.null))
        end)

        it("accepts cjson.null (a NULL lightuserdata) the same way", function()
            local cjson = require "cjson"
            assert.is_true(schema.is_null(cjson.null))
            local conf = assert(schema.validate(def, { limit = 1, window_s = cjson.null }))
            assert.equal(60, conf.window_s)
            assert.same({ "limit: required field missing" }, errs_of(def, { limit = cjson.null }))
        end)

        it("is a read-only sentinel", function()
            assert.equal("null", tostring(schema.null))
            assert.has_error(function() schema.null.x = 1 end)
            assert.is_false(schema.is_null({}))
            assert.is_false(schema.is_null(nil))
            assert.is_false(schema.is_null(false))
        end)
    end)

    describe("check functions", function()
        local by = { type = "string", default = "ip", check = function(v)
            if v:match("^header:.+") or v == "ip" then return true end
            return nil, "expected ip or header:NAME"
        end }

        it("pass and fail with their message", function()
            assert.equal("header:x-user", field_ok(by, "header:x-user"))
            assert.same({ "p.f: expected ip or header:NAME" }, field_errs(by, "cookie"))
        end)

        it("say 'invalid value' when they give no message", function()
            assert.same({ "p.f: invalid value" }, field_errs({ type = "string", check = function() return false end }, "x"))
        end)

        it("that raise are reported, not propagated", function()
            local errs = field_errs({ type = "string", check = function() error("boom") end }, "x")
            assert.equal(1, #errs)
            assert.matches("^p%.f: check failed: .*boom$", errs[1])
        end)

        it("do not run on a value that failed its type or constraints", function()
            local called = false
            local def = { type = "string", max_len = 2, check = function() called = true; return true end }
            assert.same({ "p.f: expected a string" }, field_errs(def, 5))
            assert.same({ "p.f: expected a string of at most 2 bytes" }, field_errs(def, "abc"))
            assert.is_false(called)
        end)

        it("get the record with every sibling validated and defaulted", function()
            local seen
            local def = { type = "record", fields = {
                min = { type = "integer", default = 1 },
                max = { type = "integer", check = function(v, conf)
                    seen = conf
                    if v < conf.min then return nil, "must not be less than min" end
                    return true
                end },
                other = { type = "string", default = "z" },
            } }
            local conf = assert(schema.validate(def, { max = 5 }))
            assert.equal(conf, seen)
            assert.same({ min = 1, max = 5, other = "z" }, seen)
            assert.same({ "max: must not be less than min" }, errs_of(def, { min = 10, max = 5 }))
        end)

        it("on list items get no record", function()
            local args = {}
            local def = { type = "array", elements = { type = "integer", check = function(v, rec)
                args[#args + 1] = { v, rec }
                return v % 2 == 0, "expected an even number"
            end } }
            assert.same({ "p.f[1]: expected an even number" }, field_errs(def, { 2, 3 }))
            assert.same({ { 2 }, { 3 } }, args)
        end)

        it("on the top-level value", function()
            local def = { type = "integer", check = function(v) return v ~= 13, "unlucky" end }
            assert.equal(12, schema.validate(def, 12))
            assert.same({ "x: unlucky" }, errs_of(def, 13, "x"))
        end)

        it("also run on a default", function()
            local def = { type = "record", fields = {
                a = { type = "string", default = "no", check = function(v) return v == "yes", "must be yes" end },
            } }
            assert.same({ "a: must be yes" }, errs_of(def, {}))
        end)
    end)

    describe("entity checks", function()
        local function rec(checks, extra)
            local fields = { a = { type = "string" }, b = { type = "string" }, c = { type = "integer" } }
            for k, v in pairs(extra or {}) do fields[k] = v end
            return { type = "record", fields = fields, entity_checks = checks }
        end

        it("custom functions get the validated record and report at its path", function()
            local def = rec({ function(r)
                if r.a and r.c then return nil, "a and c do not mix" end
                return true
            end })
            assert.same({ a = "x" }, schema.validate(def, { a = "x" }, "p"))
            assert.same({ "p: a and c do not mix" }, errs_of(def, { a = "x", c = 1 }, "p"))
        end)

        it("only_one_of", function()
            local def = rec({ schema.only_one_of{ "a", "b" } })
            assert.same({ a = "x" }, schema.validate(def, { a = "x" }))
            assert.same({ b = "y" }, schema.validate(def, { b = "y", a = schema.null }))
            local msg = "p: exactly one of these fields must be set: a, b"
            assert.same({ msg }, errs_of(def, {}, "p"))
            assert.same({ msg }, errs_of(def, { a = "x", b = "y" }, "p"))
        end)

        it("at_least_one_of", function()
            local def = rec({ schema.at_least_one_of{ "a", "b", "c" } })
            assert.same({ a = "x", b = "y" }, schema.validate(def, { a = "x", b = "y" }))
            assert.same({ "p: at least one of these fields must be set: a, b, c" }, errs_of(def, {}, "p"))
        end)

        it("mutually_exclusive", function()
            local def = rec({ schema.mutually_exclusive{ "a", "b" } })
            assert.same({}, schema.validate(def, {}))
            assert.same({ b = "y" }, schema.validate(def, { b = "y" }))
            assert.same({ "p: at most one of these fields may be set: a, b" },
                        errs_of(def, { a = "x", b = "y" }, "p"))
        end)

        it("all run and report together, in order", function()
            local def = rec({ schema.only_one_of{ "a", "b" }, function() return nil, "second" end })
            assert.same({ "p: exactly one of these fields must be set: a, b", "p: second" }, errs_of(def, {}, "p"))
        end)

        it("see defaults", function()
            local def = rec({ function(r) return r.d == 7, "d should be 7" end }, { d = { type = "integer", default = 7 } })
            assert.same({ d = 7 }, schema.validate(def, {}))
        end)

        it("do not run when a field is invalid", function()
            local called = false
            local def = rec({ function() called = true; return nil, "never" end })
            assert.same({ "p.c: expected an integer" }, errs_of(def, { c = "x" }, "p"))
            assert.is_false(called)
        end)

        it("helpers refuse bad arguments", function()
            assert.has_error(function() schema.only_one_of{ "a" } end,
                             "schema.only_one_of: expected a list of at least two field names")
            assert.has_error(function() schema.mutually_exclusive{ "a", 1 } end,
                             "schema.mutually_exclusive: field names must be strings")
            assert.has_error(function() schema.at_least_one_of("a") end)
        end)
    end)

    describe("misuse", function()
        it("raises for a def that is not a table or has an unknown type", function()
            assert.has_error(function() schema.validate("x", {}) end, "schema.validate: def must be a table")
            assert.has_error(function() schema.validate({ type = "strnig" }, "a") end)
            assert.has_error(function() schema.validate({ type = "string" }, "a", 5) end,
                             "schema.validate: path must be a string")
        end)
    end)

    it("handles a large list in one pass", function()
        local list = {}
        for i = 1, 100000 do list[i] = { name = "n" .. i, weight = i } end
        local def = { type = "array", elements = { type = "record", fields = {
            name = { type = "string", min_len = 1 }, weight = { type = "integer", min = 1 },
        } } }
        local out = assert(schema.validate(def, list))
        assert.equal(100000, #out)
        assert.same({ name = "n100000", weight = 100000 }, out[100000])
    end)
end)

describe("schema.check_def", function()
    local function bad(def)
        local ok, err, list = schema.check_def(def)
        assert.is_nil(ok)
        assert.is_string(err)
        assert.equal(table.concat(list, "; "), err)
        return list
    end

    local function rec(fields, extra)
        local d = { type = "record", fields = fields }
        for k, v in pairs(extra or {}) do d[k] = v end
        return d
    end

    it("accepts the contract's example (with a default its check accepts)", function()
        local def = rec({
            limit     = { type = "integer", required = true, min = 1 },
            window_s  = { type = "number", default = 60, gt = 0 },
            algorithm = { type = "string", default = "sliding_window",
                          one_of = { "fixed_window", "sliding_window", "token_bucket" } },
            by        = { type = "string", default = "ip", check = function(v)
                if v:match("^header:.+") or v == "ip" then return true end
                return nil, "expected ip or header:NAME"
            end },
            plans     = { type = "map", keys = { type = "string" }, values = { type = "integer", min = 0 } },
            headers   = { type = "array", elements = { type = "string", match = "^[%w-]+$" }, default = {},
                          min_len = 0, max_len = 100 },
            redis     = { type = "record", fields = { host = { type = "string", default = "127.0.0.1" } }, default = {} },
            limits    = { type = "array", elements = rec({ n = { type = "integer" } }) },
            flag      = { type = "boolean", description = "turns it on" },
            blob      = { type = "any" },
        }, { unknown = "error", entity_checks = { schema.mutually_exclusive{ "plans", "limits" } } })
        assert.is_true(schema.check_def(def))
    end)

    it("catches a default its own check refuses (the contract's `by` example)", function()
        local def = rec({ by = { type = "string", default = "consumer", check = function(v)
            if v:match("^header:.+") or v == "ip" then return true end
            return nil, "expected ip or header:NAME"
        end } })
        assert.same({ "fields.by.default: expected ip or header:NAME" }, bad(def))
    end)

    it("runs a default's check with the sibling defaults", function()
        local def = rec({
            min = { type = "integer", default = 10 },
            max = { type = "integer", default = 5, check = function(v, conf)
                return v >= conf.min, "must not be less than min"
            end },
        })
        assert.same({ "fields.max.default: must not be less than min" }, bad(def))
    end)

    it("catches defaults of the wrong type, also deep inside", function()
        assert.same({ "fields.n.default: expected a positive integer" },
                    bad(rec({ n = { type = "integer", min = 1, default = 0 } })))
        assert.same({ "fields.r.default.host: expected a string" },
                    bad(rec({ r = rec({ host = { type = "string" } }, { default = { host = 1 } }) })))
        assert.same({ "fields.r.default.port: required field missing" },
                    bad(rec({ r = rec({ port = { type = "integer", required = true } }, { default = {} }) })))
        assert.same({ "fields.h.default[1]: expected a string" },
                    bad(rec({ h = { type = "array", elements = { type = "string" }, default = { "a", 2 } } })))
        assert.same({ "fields.n.default: must not be null" },
                    bad(rec({ n = { type = "integer", default = schema.null } })))
    end)

    it("catches unknown and misplaced constraints", function()
        assert.same({ "fields.limit.mni: unknown constraint" },
                    bad(rec({ limit = { type = "integer", mni = 1 } })))
        assert.same({ "fields.s.min: does not apply to type string (use min_len)" },
                    bad(rec({ s = { type = "string", min = 1 } })))
        assert.same({ "fields.l.max: does not apply to type array (use max_len)" },
                    bad(rec({ l = { type = "array", max = 1 } })))
        assert.same({ "fields.b.one_of: does not apply to type boolean" },
                    bad(rec({ b = { type = "boolean", one_of = { true } } })))
        assert.same({ "fields.n.fields: does not apply to type integer" },
                    bad(rec({ n = { type = "integer", fields = {} } })))
    end)

    it("catches unknown types", function()
        assert.same({ "fields.x.type: expected one of: string, number, integer, boolean, array, map, record, any" },
                    bad(rec({ x = { type = "str" } })))
        assert.same({ "type: expected one of: string, number, integer, boolean, array, map, record, any" },
                    bad({ fields = {} }))
        assert.same({ "fields.x: expected a definition table" }, bad(rec({ x = "string" })))
        assert.same({ "expected a definition table" }, bad(nil))
    end)

    it("catches constraints of the wrong type or out of order", function()
        assert.same({ "fields.n.min: expected a number" }, bad(rec({ n = { type = "integer", min = "1" } })))
        assert.same({ "fields.n: no value satisfies the bounds" }, bad(rec({ n = { type = "number", min = 5, max = 1 } })))
        assert.same({ "fields.n: no value satisfies the bounds" }, bad(rec({ n = { type = "number", gt = 1, lt = 1 } })))
        assert.same({ "fields.n: min and gt are mutually exclusive" }, bad(rec({ n = { type = "number", min = 0, gt = 0 } })))
        assert.same({ "fields.n: max and lt are mutually exclusive" }, bad(rec({ n = { type = "number", max = 0, lt = 1 } })))
        assert.same({ "fields.s.min_len: expected a non-negative integer" },
                    bad(rec({ s = { type = "string", min_len = -1 } })))
        assert.same({ "fields.s.max_len: expected a non-negative integer" },
                    bad(rec({ s = { type = "string", max_len = 1.5 } })))
        assert.same({ "fields.s: min_len is greater than max_len" },
                    bad(rec({ s = { type = "string", min_len = 3, max_len = 2 } })))
        assert.same({ "fields.r.required: expected true or false" }, bad(rec({ r = { type = "string", required = "yes" } })))
        assert.same({ "fields.c.check: expected a function" }, bad(rec({ c = { type = "string", check = "x" } })))
        assert.same({ "fields.d.description: expected a string" }, bad(rec({ d = { type = "string", description = 1 } })))
    end)

    it("catches bad one_of lists", function()
        assert.same({ "fields.s.one_of: expected a non-empty list" }, bad(rec({ s = { type = "string", one_of = {} } })))
        assert.same({ "fields.s.one_of[2]: expected a string" }, bad(rec({ s = { type = "string", one_of = { "a", 2 } } })))
        assert.same({ "fields.n.one_of[1]: expected an integer" }, bad(rec({ n = { type = "integer", one_of = { 1.5 } } })))
    end)

    it("catches broken Lua patterns, even ones \"\" would not reach", function()
        local function pat(p) return bad(rec({ s = { type = "string", match = p } }))[1] end
        assert.equal("fields.s.match: invalid Lua pattern: missing ']'", pat("^abc[a-z"))
        assert.equal("fields.s.match: invalid Lua pattern: ends with '%'", pat("abc%"))
        assert.equal("fields.s.match: invalid Lua pattern: unfinished capture", pat("a(b"))
        assert.equal("fields.s.match: invalid Lua pattern: unmatched ')'", pat("ab)"))
        assert.equal("fields.s.match: invalid Lua pattern: missing arguments to '%b'", pat("x%b("))
        assert.equal("fields.s.match: invalid Lua pattern: missing '[' after '%f'", pat("x%fa"))
        assert.equal("fields.s.match: invalid Lua pattern: invalid capture index %1", pat("x%1(a)"))
        assert.equal("fields.s.match: expected a string", bad(rec({ s = { type = "string", match = 1 } }))[1])
        for _, good in ipairs({ "^[%w-]+$", "[]]", "[^%]]", "(a)%1", "%bxy", "%f[%w]%w+", "()a", "[%a_][%w_]*" }) do
            assert.is_true(schema.check_def(rec({ s = { type = "string", match = good } })), good)
        end
    end)

    it("catches broken nested definitions with their path", function()
        assert.same({ "fields.l.elements.fields.n.min: expected a number" },
                    bad(rec({ l = { type = "array", elements = rec({ n = { type = "integer", min = "x" } }) } })))
        assert.same({ "fields.m.values.type: expected one of: string, number, integer, boolean, array, map, record, any" },
                    bad(rec({ m = { type = "map", values = { type = "int" } } })))
        assert.same({ 'fields.m.keys.type: map keys are strings: expected "string"' },
                    bad(rec({ m = { type = "map", keys = { type = "integer" } } })))
    end)

    it("catches broken records", function()
        assert.same({ "fields: expected a table of name = definition" }, bad({ type = "record" }))
        assert.same({ "fields: field names must be strings (got 1)" }, bad({ type = "record", fields = { { type = "string" } } }))
        assert.same({ "unknown: expected one of: error, ignore" }, bad(rec({}, { unknown = "warn" })))
        assert.same({ "entity_checks: expected a list of functions" }, bad(rec({}, { entity_checks = function() end })))
        assert.same({ "entity_checks[2]: expected a function" }, bad(rec({}, { entity_checks = { function() end, "x" } })))
    end)

    it("checks the fields named by entity check helpers", function()
        local fields = { a = { type = "string" }, b = { type = "string", default = "x" } }
        assert.same({ 'entity_checks[1]: only_one_of names unknown field "z"' },
                    bad(rec(fields, { entity_checks = { schema.only_one_of{ "a", "z" } } })))
        assert.same({ 'entity_checks[1]: mutually_exclusive names field "b", which has a default and so is always set' },
                    bad(rec(fields, { entity_checks = { schema.mutually_exclusive{ "a", "b" } } })))
    end)

    it("reports every problem, sorted", function()
        local list = bad(rec({
            z = { type = "string", min = 1 },
            a = { type = "integer", mx = 2 },
        }, { unknown = 1 }))
        assert.same({
            "fields.a.mx: unknown constraint",
            "fields.z.min: does not apply to type string (use min_len)",
            "unknown: expected one of: error, ignore",
        }, list)
    end)

    it("terminates on recursive definitions, and validate walks them", function()
        local node = { type = "record", fields = { name = { type = "string", required = true } } }
        node.fields.children = { type = "array", elements = node, default = {} }
        assert.is_true(schema.check_def(node))
        local conf = assert(schema.validate(node, { name = "a", children = { { name = "b" } } }))
        assert.same({ name = "a", children = { { name = "b", children = {} } } }, conf)
        assert.same({ "children[0].children[0].name: required field missing" },
                    errs_of(node, { name = "a", children = { { name = "b", children = { {} } } } }))
    end)
end)
