-- tollgate.auth.lru: a bounded least-recently-used cache with a TTL per
-- entry, for per-worker caches of authentication results (verified JWTs,
-- API keys looked up in Redis, negative answers included).
--
-- One LuaJIT VM per worker and no yields inside these functions, so no
-- locking. The shape is lua-resty-lrucache's pure-Lua one: a hash from key
-- to node plus a doubly-linked list ordered by use; the least recently used
-- node is evicted when the cache is full. Nodes are allocated once, when
-- the cache first grows to its size, and then reused for new keys, so a
-- full cache under churn (a flood of distinct wrong keys) allocates nothing
-- per insert. Expired entries are dropped lazily when read, or evicted as
-- the oldest.
--
-- Times are whatever the caller passes as `now` (tg.now() in the gateway),
-- so tests can drive the clock.

local setmetatable = setmetatable
local error = error
local type = type

local _M = {}
local mt = { __index = _M }

-- lru.new(size) -> cache. size: the maximum number of entries (>= 1).
function _M.new(size)
  if type(size) ~= "number" or size < 1 or size % 1 ~= 0 then
    error("lru.new: size must be a positive integer", 2)
  end
  -- The list head is a sentinel node: head.next is the most recently used,
  -- head.prev the least recently used.
  local head = {}
  head.next, head.prev = head, head
  return setmetatable({ size = size, n = 0, map = {}, head = head }, mt)
end

local function unlink(node)
  node.prev.next = node.next
  node.next.prev = node.prev
end

local function push_front(head, node)
  node.next = head.next
  node.prev = head
  head.next.prev = node
  head.next = node
end

-- cache:get(key, now) -> value, or nil when absent or expired (an expired
-- entry is removed).
function _M:get(key, now)
  local node = self.map[key]
  if node == nil then
    return nil
  end
  if node.expire and node.expire <= now then
    self:delete(key)
    return nil
  end
  if self.head.next ~= node then
    unlink(node)
    push_front(self.head, node)
  end
  return node.value
end

-- cache:set(key, value, ttl, now): ttl in seconds, nil = no expiry. Evicts
-- the least recently used entry when the cache is full.
function _M:set(key, value, ttl, now)
  local map, head = self.map, self.head
  local node = map[key]
  if node then
    unlink(node)
  elseif self.n >= self.size then
    node = head.prev           -- the least recently used, reused
    unlink(node)
    map[node.key] = nil
  else
    node = {}
    self.n = self.n + 1
  end
  node.key = key
  node.value = value
  node.expire = ttl and now + ttl or nil
  map[key] = node
  push_front(head, node)
end

-- cache:delete(key): removes key if present.
function _M:delete(key)
  local node = self.map[key]
  if node == nil then
    return
  end
  unlink(node)
  self.map[key] = nil
  node.value = nil
  self.n = self.n - 1
end

-- cache:count() -> number of entries (expired ones included until read).
function _M:count()
  return self.n
end

-- cache:flush(): removes every entry.
function _M:flush()
  self.map = {}
  self.head.next, self.head.prev = self.head, self.head
  self.n = 0
end

return _M
