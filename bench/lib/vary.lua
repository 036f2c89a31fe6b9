-- bench/lib/vary.lua: wrk script that cycles through the header lines of a
-- file (one "Name: value" a line), like tg-bench --vary-file. The requests
-- are formatted once in init(), so wrk's per-request cost stays a table
-- lookup. @FILE@ is replaced by bench/run.
local reqs, n, i = {}, 0, 0

function init(args)
  for line in io.lines("@FILE@") do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then
      local h = {}
      for k, v in pairs(wrk.headers) do h[k] = v end
      h[name] = value
      n = n + 1
      reqs[n] = wrk.format(nil, nil, h)
    end
  end
end

function request()
  i = i % n + 1
  return reqs[i]
end
