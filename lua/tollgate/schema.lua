-- tollgate.schema: the one schema language of tollgate.
--
-- Every plugin declares its configuration as a schema, and the core checks a
-- route's plugin config against it at config load:
--
--   local conf, errs = schema.validate(plugin.schema, raw, "routes[0].plugins.rate-limiting")
--
-- validate() never mutates its input; it builds a new table with defaults
-- filled in, or returns nil and the list of EVERY error, each "path: message",
-- sorted by path so two runs over the same config print the same list. Paths
-- follow the core's YAML convention (0-based `routes[0]`, dotted keys), so
-- plugin errors read like the core's own ("expected a positive integer").
--
-- check_def() checks a schema definition itself (unknown constraints, wrong
-- types, defaults that fail their own field) so a broken plugin is refused
-- when it is loaded, not when an operator first configures it.
--
-- Cost: validation runs at config load, not per request, but configs with
-- many routes multiply it. It is one pass over the value, paths are kept as
-- a stack of segments and only turned into strings when an error is reported,
-- and the only tables allocated are the result's own.

local type, pairs, ipairs, next, tostring = type, pairs, ipairs, next, tostring
local pcall, error, setmetatable, getmetatable = pcall, error, setmetatable, getmetatable
local floor, huge = math.floor, math.huge
local concat, sort = table.concat, table.sort
local find, format, sub = string.find, string.format, string.sub

local tnew
do
    local ok, new = pcall(require, "table.new")
    tnew = ok and new or function() return {} end
end

local _M = { _VERSION = "0.1.0" }

-- YAML null. The converter may push this sentinel, or a NULL lightuserdata
-- (cjson.null, ngx.null and lua_pushlightuserdata(L, NULL) are all the same
-- value); both mean "not set". The sentinel is a table, so every type test
-- below looks for null first or it would pass as an empty map.
local NULL = setmetatable({}, {
    __tostring = function() return "null" end,
    __newindex = function() error("schema.null is read-only", 2) end,
    __metatable = false,
})
_M.null = NULL

local cjson_null
do
    local ok, cjson = pcall(require, "cjson")
    if ok and type(cjson) == "table" then cjson_null = cjson.null end
end

local function is_null(v)
    return v == NULL or (cjson_null ~= nil and v == cjson_null)
end
_M.is_null = is_null

-- The types, in the order messages list them.
local TYPE_NAMES = { "string", "number", "integer", "boolean", "array", "map", "record", "any" }
local TYPES = {}
for _, t in ipairs(TYPE_NAMES) do TYPES[t] = true end

local ANY = { type = "any" }    -- elements/values of an array/map that declares none


-- Messages -------------------------------------------------------------------

-- Integral numbers print without ".0" or exponent, like YAML wrote them.
local function num(n)
    if n == floor(n) and n > -2^53 and n < 2^53 then return format("%d", n) end
    return tostring(n)
end

local function one_of_msg(list)
    local parts = tnew(#list, 0)
    for i, v in ipairs(list) do parts[i] = type(v) == "number" and num(v) or tostring(v) end
    return "expected one of: " .. concat(parts, ", ")
end

-- Numbers name their whole range in one message, used both for a value of the
-- wrong type and for one out of range, the way the core words its integers:
-- "expected a positive integer", "expected an integer between 1 and 65535".
local function bounds_msg(def, what)
    local min, max, gt, lt = def.min, def.max, def.gt, def.lt
    local article = what == "integer" and "an integer" or "a number"
    if max == nil and lt == nil then
        if (what == "integer" and min == 1) or (gt == 0 and min == nil) then
            return "expected a positive " .. what
        end
        if min == 0 and gt == nil then return "expected a non-negative " .. what end
    end
    if min ~= nil and max ~= nil then
        return format("expected %s between %s and %s", article, num(min), num(max))
    end
    local lower = (min ~= nil and ">= " .. num(min)) or (gt ~= nil and "> " .. num(gt)) or nil
    local upper = (max ~= nil and "<= " .. num(max)) or (lt ~= nil and "< " .. num(lt)) or nil
    if lower and upper then return format("expected %s %s and %s", article, lower, upper) end
    if lower or upper then return format("expected %s %s", article, lower or upper) end
    return "expected " .. article
end

local LEN_WORDS = {
    string = { "a string", "byte", "bytes" },
    array  = { "a list", "item", "items" },
    map    = { "a map", "entry", "entries" },
}

-- Lengths count bytes for strings (#s), items for lists, keys for maps.
local function len_msg(def, kind)
    local lo, hi = def.min_len, def.max_len
    if lo == 1 and hi == nil then return "must not be empty" end
    local w = LEN_WORDS[kind]
    if lo ~= nil and hi ~= nil then
        return format("expected %s of %d to %d %s", w[1], lo, hi, w[3])
    end
    local n = lo or hi
    return format("expected %s of %s %d %s", w[1], lo and "at least" or "at most", n,
                  n == 1 and w[2] or w[3])
end

-- What to say when a value has the wrong type (null included).
local function mismatch_msg(def)
    local t = def.type
    if t == "integer" or t == "number" then
        return def.one_of and one_of_msg(def.one_of) or bounds_msg(def, t)
    elseif t == "string" then
        return def.one_of and one_of_msg(def.one_of) or "expected a string"
    elseif t == "boolean" then
        return "expected true or false"
    elseif t == "array" then
        return "expected a list"
    end
    return "expected a map"
end


-- Error collection -------------------------------------------------------------

-- st.segs is the path below st.prefix: strings for keys, 0-based numbers for
-- list indices. It is a stack shared by the whole walk; add_err copies it.
local function new_state(prefix)
    return { prefix = prefix, segs = {}, depth = 0, errs = nil, nerr = 0, key_msg = nil }
end

local function push(st, seg)
    local d = st.depth + 1
    st.depth = d
    st.segs[d] = seg
end

local function pop(st)
    st.segs[st.depth] = nil
    st.depth = st.depth - 1
end

local function add_err(st, msg)
    local segs = tnew(st.depth, 0)
    for i = 1, st.depth do segs[i] = st.segs[i] end
    local n = st.nerr + 1
    st.nerr = n
    if st.errs == nil then st.errs = {} end
    -- st.key_msg is set while a map key (not a value) is being checked
    st.errs[n] = { segs = segs, msg = st.key_msg and st.key_msg .. msg or msg, seq = n }
end

-- Path order, segment by segment: a parent before its children, list indices
-- numerically (headers[2] before headers[10]), keys as strings; the same path
-- keeps the order the errors were found in.
local function err_before(a, b)
    local sa, sb = a.segs, b.segs
    local n = #sa > #sb and #sa or #sb
    for i = 1, n do
        local x, y = sa[i], sb[i]
        if x == nil then return true end
        if y == nil then return false end
        if x ~= y then
            local tx, ty = type(x), type(y)
            if tx ~= ty then return tx == "number" end
            return x < y
        end
    end
    return a.seq < b.seq
end

local function render(st)
    local errs = st.errs
    sort(errs, err_before)
    local out = tnew(#errs, 0)
    for i, e in ipairs(errs) do
        local p = st.prefix
        for _, s in ipairs(e.segs) do
            if type(s) == "number" then p = p .. "[" .. s .. "]"
            elseif p == "" then p = s
            else p = p .. "." .. s end
        end
        out[i] = p == "" and e.msg or p .. ": " .. e.msg
    end
    return out
end

-- A check (field check or entity check) says yes with a truthy value, no with
-- nil/false plus a message. One that raises is a plugin bug; it is reported
-- at the value's path rather than taking the config load down with it.
local function run_check(fn, value, record, st)
    local ok, res, err = pcall(fn, value, record)
    if not ok then
        add_err(st, "check failed: " .. tostring(res))
        return false
    end
    if res then return true end
    add_err(st, err ~= nil and tostring(err) or "invalid value")
    return false
end


-- Validation -----------------------------------------------------------------

local function deep_copy(v, seen)
    if type(v) ~= "table" or is_null(v) then return v end
    if seen[v] then return seen[v] end
    local c = {}
    seen[v] = c
    for k, x in pairs(v) do c[deep_copy(k, seen)] = deep_copy(x, seen) end
    return c
end

local function in_list(list, v)
    for i = 1, #list do
        if list[i] == v then return true end
    end
    return false
end

local validate_present, validate_checked   -- mutually recursive with the containers

local function check_number(def, v, st)
    local t = def.type
    local good = type(v) == "number" and v == v          -- v == v: not NaN
    if good and t == "integer" then good = v == floor(v) and v ~= huge and v ~= -huge end
    if not good then
        add_err(st, mismatch_msg(def))
        return nil, false
    end
    local ok = true
    local min, max, gt, lt = def.min, def.max, def.gt, def.lt
    if (min ~= nil and v < min) or (max ~= nil and v > max)
       or (gt ~= nil and v <= gt) or (lt ~= nil and v >= lt) then
        add_err(st, bounds_msg(def, t))
        ok = false
    end
    if def.one_of and not in_list(def.one_of, v) then
        add_err(st, one_of_msg(def.one_of))
        ok = false
    end
    return v, ok
end

local function check_string(def, v, st)
    if type(v) ~= "string" then
        add_err(st, mismatch_msg(def))
        return nil, false
    end
    local ok = true
    local len = #v
    if (def.min_len ~= nil and len < def.min_len) or (def.max_len ~= nil and len > def.max_len) then
        add_err(st, len_msg(def, "string"))
        ok = false
    end
    if def.match ~= nil and not find(v, def.match) then
        add_err(st, format("expected a string matching \"%s\"", def.match))
        ok = false
    end
    if def.one_of and not in_list(def.one_of, v) then
        add_err(st, one_of_msg(def.one_of))
        ok = false
    end
    return v, ok
end

local function check_boolean(def, v, st)
    if type(v) ~= "boolean" then
        add_err(st, mismatch_msg(def))
        return nil, false
    end
    return v, true
end

-- A list is a table whose keys are exactly 1..n (an empty table qualifies).
local function check_array(def, v, st)
    local n, maxk = 0, 0
    if type(v) == "table" then
        for k in pairs(v) do
            if type(k) ~= "number" or k < 1 or k ~= floor(k) then maxk = -1; break end
            n = n + 1
            if k > maxk then maxk = k end
        end
    else
        maxk = -1
    end
    if maxk ~= n then
        add_err(st, mismatch_msg(def))
        return nil, false
    end
    local ok = true
    if (def.min_len ~= nil and n < def.min_len) or (def.max_len ~= nil and n > def.max_len) then
        add_err(st, len_msg(def, "array"))
        ok = false
    end
    local edef = def.elements or ANY
    local out = tnew(n, 0)
    for i = 1, n do
        push(st, i - 1)
        local ev, eok = validate_checked(edef, v[i], st)
        pop(st)
        out[i] = ev
        if not eok then ok = false end
    end
    return out, ok
end

-- Maps and records are tables with string keys only (an empty table too).
local function string_keyed(v)
    if type(v) ~= "table" then return false, 0 end
    local n = 0
    for k in pairs(v) do
        if type(k) ~= "string" then return false, 0 end
        n = n + 1
    end
    return true, n
end

local function check_map(def, v, st)
    local good, n = string_keyed(v)
    if not good then
        add_err(st, mismatch_msg(def))
        return nil, false
    end
    local ok = true
    if (def.min_len ~= nil and n < def.min_len) or (def.max_len ~= nil and n > def.max_len) then
        add_err(st, len_msg(def, "map"))
        ok = false
    end
    local kdef, vdef = def.keys, def.values or ANY
    local out = tnew(0, n)
    for k, x in pairs(v) do
        push(st, k)
        if kdef ~= nil then
            st.key_msg = "invalid key: "
            local _, kok = check_string(kdef, k, st)
            if kok and kdef.check then kok = run_check(kdef.check, k, nil, st) end
            st.key_msg = nil
            if not kok then ok = false end
        end
        local xv, xok = validate_checked(vdef, x, st)
        pop(st)
        out[k] = xv
        if not xok then ok = false end
    end
    return out, ok
end

-- One field of a record: absent and null both mean "not set", which takes the
-- default (validated like input, so nested defaults are filled and the result
-- is a fresh table each time) or is an error if the field is required.
local function validate_field(fdef, v, st)
    if v == nil or is_null(v) then
        local d = fdef.default
        if d ~= nil then return validate_present(fdef, d, st) end
        if fdef.required then
            add_err(st, "required field missing")
            return nil, false
        end
        return nil, true
    end
    return validate_present(fdef, v, st)
end

-- Field checks run after every field of the record is validated, so that
-- check(value, record) sees its siblings with their defaults; a field that
-- failed is absent from that record. Entity checks run only when every field
-- is valid: on a half-valid record they would report noise, not problems.
local function check_record(def, v, st)
    local good = string_keyed(v)
    if not good then
        add_err(st, mismatch_msg(def))
        return nil, false
    end
    local fields = def.fields
    local ok = true
    if def.unknown ~= "ignore" then
        for k in pairs(v) do
            if fields[k] == nil then
                push(st, k)
                add_err(st, "unknown key")
                pop(st)
                ok = false
            end
        end
    end
    local out = {}
    local fields_ok = true
    for name, fdef in pairs(fields) do
        push(st, name)
        local fv, fok = validate_field(fdef, v[name], st)
        pop(st)
        if fok then out[name] = fv else fields_ok = false end
    end
    for name, fdef in pairs(fields) do
        local fv = out[name]
        if fdef.check ~= nil and fv ~= nil then
            push(st, name)
            if not run_check(fdef.check, fv, out, st) then fields_ok = false end
            pop(st)
        end
    end
    local ec = def.entity_checks
    if fields_ok and ec ~= nil then
        for i = 1, #ec do
            if not run_check(ec[i], out, nil, st) then ok = false end
        end
    end
    return out, ok and fields_ok
end

local function check_any(_, v)
    return deep_copy(v, {}), true
end

local CHECKERS = {
    string = check_string, number = check_number, integer = check_number,
    boolean = check_boolean, array = check_array, map = check_map,
    record = check_record, any = check_any,
}

-- A present value: type, constraints, contents; not def.check (the caller
-- decides when that runs). Null here is a list item or map value: kept by
-- "any", a type error for everything else.
function validate_present(def, v, st)
    if is_null(v) then
        if def.type == "any" then return v, true end
        add_err(st, mismatch_msg(def))
        return nil, false
    end
    local checker = CHECKERS[def.type]
    if checker == nil then
        error(format("schema: invalid definition (type %s); run schema.check_def on it",
                     tostring(def.type)), 0)
    end
    return checker(def, v, st)
end

-- A value outside a record (top level, list item, map value): its check runs
-- at once, with no record.
function validate_checked(def, v, st)
    local out, ok = validate_present(def, v, st)
    if ok and def.check ~= nil then ok = run_check(def.check, out, nil, st) end
    return out, ok
end

-- The whole of validate(), with the option check_def needs: skip def.check.
local function run(def, value, prefix, own_check)
    local st = new_state(prefix)
    local out, ok
    if value == nil or is_null(value) then
        if def.default ~= nil then
            value = def.default
        else
            add_err(st, "required field missing")
        end
    end
    if st.nerr == 0 then
        if own_check then out, ok = validate_checked(def, value, st)
        else out, ok = validate_present(def, value, st) end
    end
    if st.errs ~= nil then return nil, render(st) end
    return out
end

--- Validate `value` against the schema `def`.
-- Returns a new table (or value) with defaults filled, or nil and the sorted
-- list of every error, each "<path>: <message>" (just "<message>" for an error
-- on the value itself when `path` is empty). `path` prefixes every path.
function _M.validate(def, value, path)
    if type(def) ~= "table" then error("schema.validate: def must be a table", 2) end
    if path ~= nil and type(path) ~= "string" then
        error("schema.validate: path must be a string", 2)
    end
    return run(def, value, path or "", true)
end


-- Entity check helpers -------------------------------------------------------

-- Helpers are callable tables rather than closures so check_def can read
-- which fields they name and refuse names the record does not have.
local HELPER_MT = {
    __call = function(self, record)
        local set = 0
        for _, name in ipairs(self.fields) do
            local v = record[name]
            if v ~= nil and not is_null(v) then set = set + 1 end
        end
        if self.accept(set) then return true end
        return nil, self.message
    end,
}

local function helper(kind, accept, what)
    return function(names)
        if type(names) ~= "table" or #names < 2 then
            error("schema." .. kind .. ": expected a list of at least two field names", 2)
        end
        local copy = {}
        for i, name in ipairs(names) do
            if type(name) ~= "string" then
                error("schema." .. kind .. ": field names must be strings", 2)
            end
            copy[i] = name
        end
        return setmetatable({
            kind = kind, fields = copy, accept = accept,
            message = what .. concat(copy, ", "),
        }, HELPER_MT)
    end
end

_M.only_one_of = helper("only_one_of", function(n) return n == 1 end,
                        "exactly one of these fields must be set: ")
_M.at_least_one_of = helper("at_least_one_of", function(n) return n >= 1 end,
                            "at least one of these fields must be set: ")
_M.mutually_exclusive = helper("mutually_exclusive", function(n) return n <= 1 end,
                               "at most one of these fields may be set: ")


-- Definition checks ----------------------------------------------------------

local COMMON = { type = true, required = true, default = true, check = true, description = true }

local ALLOWED = {
    string  = { one_of = true, min_len = true, max_len = true, match = true },
    number  = { one_of = true, min = true, max = true, gt = true, lt = true },
    integer = { one_of = true, min = true, max = true, gt = true, lt = true },
    boolean = {},
    array   = { elements = true, min_len = true, max_len = true },
    map     = { keys = true, values = true, min_len = true, max_len = true },
    record  = { fields = true, unknown = true, entity_checks = true },
    any     = {},
}

local KNOWN = {}
for _, set in pairs(ALLOWED) do
    for k in pairs(set) do KNOWN[k] = true end
end

local HINT = { min = " (use min_len)", max = " (use max_len)" }

local function callable(f)
    if type(f) == "function" then return true end
    local mt = type(f) == "table" and getmetatable(f)
    return type(mt) == "table" and mt.__call ~= nil
end

local function join(p, k)
    return p == "" and k or p .. "." .. k
end

-- Lua only notices a malformed pattern when a match reaches the bad part, so
-- trying it on "" proves little; walk its syntax the way lstrlib does.
local function pattern_error(p)
    local i, n = 1, #p
    local caps, level = {}, 0          -- caps[k]: true once capture k is closed
    while i <= n do
        local c = sub(p, i, i)
        if c == "%" then
            local d = sub(p, i + 1, i + 1)
            if d == "" then return "ends with '%'" end
            if d == "b" then
                if i + 3 > n then return "missing arguments to '%b'" end
                i = i + 4
            elseif d == "f" then
                if sub(p, i + 2, i + 2) ~= "[" then return "missing '[' after '%f'" end
                i = i + 2
            elseif find(d, "^%d$") then
                local k = d + 0
                if k == 0 or k > level or not caps[k] then return "invalid capture index %" .. d end
                i = i + 2
            else
                i = i + 2
            end
        elseif c == "[" then
            local j = i + 1
            if sub(p, j, j) == "^" then j = j + 1 end
            repeat
                if j > n then return "missing ']'" end
                local e = sub(p, j, j)
                j = j + 1
                if e == "%" and j <= n then j = j + 1 end
            until sub(p, j, j) == "]"
            i = j + 1
        elseif c == "(" then
            level = level + 1
            caps[level] = false
            i = i + 1
        elseif c == ")" then
            local k = level
            while k > 0 and caps[k] do k = k - 1 end
            if k == 0 then return "unmatched ')'" end
            caps[k] = true
            i = i + 1
        else
            i = i + 1
        end
    end
    for k = 1, level do
        if not caps[k] then return "unfinished capture" end
    end
    local ok, err = pcall(find, "", p)
    if not ok then return tostring(err) end
    return nil
end

local function is_int(v)
    return type(v) == "number" and v == floor(v) and v ~= huge and v ~= -huge
end

-- Keys exactly 1..n, as for list values.
local function is_list(t)
    if type(t) ~= "table" then return false end
    local n, maxk = 0, 0
    for k in pairs(t) do
        if not is_int(k) or k < 1 then return false end
        n = n + 1
        if k > maxk then maxk = k end
    end
    return n == maxk
end

local check_def_at   -- recursive

-- Runs a def's default through validate. The def's own check: "alone" runs
-- it with no record (top level, list items, map values), "none" skips it,
-- "record" runs it with `record`, the parent's defaults-only record, so the
-- check sees what it will see when an operator sets nothing.
local function check_default(def, p, errs, own_check, record)
    local d = def.default
    if is_null(d) then
        errs[#errs + 1] = join(p, "default") .. ": must not be null"
        return
    end
    local ok, out, verrs = pcall(run, def, d, join(p, "default"), own_check == "alone")
    if not ok then
        errs[#errs + 1] = join(p, "default") .. ": could not be validated: " .. tostring(out)
        return
    end
    if out == nil then
        for _, e in ipairs(verrs) do errs[#errs + 1] = e end
        return
    end
    if own_check == "record" and def.check ~= nil then
        local st = new_state(join(p, "default"))
        run_check(def.check, out, record, st)
        if st.errs then
            for _, e in ipairs(render(st)) do errs[#errs + 1] = e end
        end
    end
    return out
end

local function check_bounds(def, p, errs)
    for _, k in ipairs({ "min", "max", "gt", "lt" }) do
        local v = def[k]
        if v ~= nil and (type(v) ~= "number" or v ~= v) then
            errs[#errs + 1] = join(p, k) .. ": expected a number"
            return
        end
    end
    if def.min ~= nil and def.gt ~= nil then errs[#errs + 1] = p .. ": min and gt are mutually exclusive" end
    if def.max ~= nil and def.lt ~= nil then errs[#errs + 1] = p .. ": max and lt are mutually exclusive" end
    local lo, hi = def.min or def.gt, def.max or def.lt
    if lo ~= nil and hi ~= nil and (lo > hi or (lo == hi and (def.gt ~= nil or def.lt ~= nil))) then
        errs[#errs + 1] = p .. ": no value satisfies the bounds"
    end
end

local function check_lengths(def, p, errs)
    for _, k in ipairs({ "min_len", "max_len" }) do
        local v = def[k]
        if v ~= nil and not (is_int(v) and v >= 0) then
            errs[#errs + 1] = join(p, k) .. ": expected a non-negative integer"
            return
        end
    end
    if def.min_len ~= nil and def.max_len ~= nil and def.min_len > def.max_len then
        errs[#errs + 1] = p .. ": min_len is greater than max_len"
    end
end

local function check_one_of(def, p, errs)
    local list = def.one_of
    local q = join(p, "one_of")
    if type(list) ~= "table" or next(list) == nil or #list == 0 then
        errs[#errs + 1] = q .. ": expected a non-empty list"
        return
    end
    local t = def.type
    for i, v in ipairs(list) do
        local good = (t == "string" and type(v) == "string")
            or (t == "number" and type(v) == "number" and v == v)
            or (t == "integer" and is_int(v))
        if not good then
            errs[#errs + 1] = format("%s[%d]: expected %s", q, i,
                                     t == "integer" and "an integer" or "a " .. t)
        end
    end
end

local function check_record_def(def, p, errs, seen)
    local fields = def.fields
    local fp = join(p, "fields")
    if type(fields) ~= "table" then
        errs[#errs + 1] = fp .. ": expected a table of name = definition"
        return
    end
    for name, fdef in pairs(fields) do
        if type(name) ~= "string" then
            errs[#errs + 1] = fp .. ": field names must be strings (got " .. tostring(name) .. ")"
        else
            check_def_at(fdef, join(fp, name), errs, seen, "record")
        end
    end
    if def.unknown ~= nil and def.unknown ~= "error" and def.unknown ~= "ignore" then
        errs[#errs + 1] = join(p, "unknown") .. ': expected one of: error, ignore'
    end
    local ec = def.entity_checks
    if ec ~= nil then
        local q = join(p, "entity_checks")
        if not is_list(ec) then
            errs[#errs + 1] = q .. ": expected a list of functions"
        else
            for i, f in ipairs(ec) do
                local qi = format("%s[%d]", q, i)
                if not callable(f) then
                    errs[#errs + 1] = qi .. ": expected a function"
                elseif getmetatable(f) == HELPER_MT then
                    for _, name in ipairs(f.fields) do
                        local fdef = fields[name]
                        if type(fdef) ~= "table" then
                            errs[#errs + 1] = format("%s: %s names unknown field \"%s\"", qi, f.kind, name)
                        elseif fdef.default ~= nil then
                            errs[#errs + 1] = format("%s: %s names field \"%s\", which has a default and so is always set",
                                                     qi, f.kind, name)
                        end
                    end
                end
            end
        end
    end
end

-- mode: "record" for a field of a record (its own check on its default is run
-- by the record, with the sibling defaults), "alone" otherwise.
function check_def_at(def, p, errs, seen, mode)
    if type(def) ~= "table" then
        errs[#errs + 1] = (p == "" and "" or p .. ": ") .. "expected a definition table"
        return
    end
    if seen[def] then return end          -- shared or recursive definitions
    seen[def] = true
    local before = #errs
    local t = def.type
    if not TYPES[t] then
        errs[#errs + 1] = join(p, "type") .. ": expected one of: " .. concat(TYPE_NAMES, ", ")
        return
    end
    local allowed = ALLOWED[t]
    for k in pairs(def) do
        if type(k) ~= "string" then
            errs[#errs + 1] = (p == "" and "" or p .. ": ") .. "unexpected key " .. tostring(k)
        elseif not COMMON[k] and not allowed[k] then
            if KNOWN[k] then
                errs[#errs + 1] = format("%s: does not apply to type %s%s", join(p, k), t,
                                         LEN_WORDS[t] and HINT[k] or "")
            else
                errs[#errs + 1] = join(p, k) .. ": unknown constraint"
            end
        end
    end
    if def.required ~= nil and type(def.required) ~= "boolean" then
        errs[#errs + 1] = join(p, "required") .. ": expected true or false"
    end
    if def.description ~= nil and type(def.description) ~= "string" then
        errs[#errs + 1] = join(p, "description") .. ": expected a string"
    end
    if def.check ~= nil and not callable(def.check) then
        errs[#errs + 1] = join(p, "check") .. ": expected a function"
    end
    if t == "number" or t == "integer" then check_bounds(def, p, errs) end
    if allowed.min_len then check_lengths(def, p, errs) end
    if allowed.one_of and def.one_of ~= nil then check_one_of(def, p, errs) end
    if t == "string" and def.match ~= nil then
        if type(def.match) ~= "string" then
            errs[#errs + 1] = join(p, "match") .. ": expected a string"
        else
            local perr = pattern_error(def.match)
            if perr then errs[#errs + 1] = join(p, "match") .. ": invalid Lua pattern: " .. perr end
        end
    end
    if t == "array" and def.elements ~= nil then
        check_def_at(def.elements, join(p, "elements"), errs, seen, "alone")
    end
    if t == "map" then
        if def.keys ~= nil then
            if type(def.keys) == "table" and def.keys.type ~= "string" then
                errs[#errs + 1] = join(p, "keys.type") .. ": map keys are strings: expected \"string\""
            else
                check_def_at(def.keys, join(p, "keys"), errs, seen, "alone")
            end
        end
        if def.values ~= nil then check_def_at(def.values, join(p, "values"), errs, seen, "alone") end
    end
    if t == "record" then check_record_def(def, p, errs, seen) end

    -- Defaults last, and only on a sound definition: validating against a
    -- broken one would report noise (or raise).
    if #errs == before then
        if def.default ~= nil then
            check_default(def, p, errs, mode == "record" and "none" or "alone", nil)
        end
        if t == "record" and #errs == before then
            local record = {}
            for name, fdef in pairs(def.fields) do
                if fdef.default ~= nil and not is_null(fdef.default) then
                    record[name] = run(fdef, fdef.default, "", false)
                end
            end
            for name, fdef in pairs(def.fields) do
                if fdef.default ~= nil and fdef.check ~= nil then
                    check_default(fdef, join(join(p, "fields"), name), errs, "record", record)
                end
            end
        end
    end
end

--- Check a schema definition. Returns true, or nil, a message listing every
-- problem ("; "-separated, sorted) and the list itself. Paths name the
-- definition's Lua keys (fields.limit.min, entity_checks[1]), 1-based.
function _M.check_def(def)
    local errs = {}
    check_def_at(def, "", errs, {}, "alone")
    if #errs == 0 then return true end
    sort(errs)
    return nil, concat(errs, "; "), errs
end

return _M
