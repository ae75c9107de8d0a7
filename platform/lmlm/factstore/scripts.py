"""Server-side Lua: every write touches one entity's keys (one hash tag), atomically.

Entity hash field = normalised relation; value = JSON {"e": entity, "r": relation, "v": [[value,
count, first_ms, last_ms, [annotators], [doc ids]], ...]}. Vector elements: the normalised entity in
the entity set, "entity\\x1frelation" in the key set (normalised strings never hold \\x1f).
KEYS of every script: 1 entity hash, 2 entity vector set, 3 key vector set, 4 stats hash, 5 audit stream.
"""

# ARGV: 1 E, 2 R, 3 entity, 4 relation, 5 value, 6 count, 7 annotator, 8 docs (JSON list), 9 now_ms,
# 10 max docs, 11 entity vector (FP32 or ""), 12 key vector (or ""), 13 eid, 14 replace ("1": put),
# 15 actor ("" = no audit entry), 16 audit maxlen, 17 op name
ADD = r"""
local blob = redis.call('HGET', KEYS[1], ARGV[2])
local newent, newkey, newtriple, removed, removed_n = 0, 0, 0, 0, 0
local rec
if blob then
  rec = cjson.decode(blob)
else
  newkey = 1
  if redis.call('EXISTS', KEYS[1]) == 0 then newent = 1 end
  rec = {e = ARGV[3], r = ARGV[4], v = {}}
end
local now, n, maxd = tonumber(ARGV[9]), tonumber(ARGV[6]), tonumber(ARGV[10])
local docs = cjson.decode(ARGV[8])
if ARGV[14] == '1' then
  local keep = {}
  for _, v in ipairs(rec.v) do
    if v[1] == ARGV[5] then keep[1] = v else removed = removed + 1; removed_n = removed_n + v[2] end
  end
  rec.v = keep
end
local found = nil
for _, v in ipairs(rec.v) do if v[1] == ARGV[5] then found = v; break end end
if found then
  found[2] = found[2] + n
  found[4] = now
  local has = false
  for _, a in ipairs(found[5]) do if a == ARGV[7] then has = true; break end end
  if not has and #found[5] < maxd then table.insert(found[5], ARGV[7]) end
  for _, d in ipairs(docs) do
    if #found[6] >= maxd then break end
    local dup = false
    for _, x in ipairs(found[6]) do if x == d then dup = true; break end end
    if not dup then table.insert(found[6], d) end
  end
else
  newtriple = 1
  local ds = {}
  for i, d in ipairs(docs) do if i > maxd then break end; ds[i] = d end
  table.insert(rec.v, {ARGV[5], n, now, now, {ARGV[7]}, ds})
end
redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(rec))
local need_e, need_k = 0, 0
if newent == 1 then
  if ARGV[11] ~= '' then redis.call('VADD', KEYS[2], 'FP32', ARGV[11], ARGV[1], 'Q8') else need_e = 1 end
end
if newkey == 1 and ARGV[13] ~= '' then
  if ARGV[12] ~= '' then
    redis.call('VADD', KEYS[3], 'FP32', ARGV[12], ARGV[1] .. '\31' .. ARGV[2], 'Q8', 'SETATTR', '{"eid":' .. ARGV[13] .. '}')
  else need_k = 1 end
end
redis.call('HINCRBY', KEYS[4], 'triples', newtriple - removed)
redis.call('HINCRBY', KEYS[4], 'keys', newkey)
redis.call('HINCRBY', KEYS[4], 'entities', newent)
redis.call('HINCRBY', KEYS[4], 'mentions', n - removed_n)
if ARGV[15] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[16], '*', 'op', ARGV[17], 'who', ARGV[15],
             'entity', ARGV[3], 'relation', ARGV[4], 'value', ARGV[5], 'removed', removed)
end
return {newent, newkey, newtriple, removed, need_e, need_k}
"""

# ARGV: 1 E, 2 R ("" = the whole entity), 3 value, 4 "1" when a value is given, 5 actor, 6 maxlen,
# 7 entity (display, for the audit entry)
DELETE = r"""
local existed = redis.call('EXISTS', KEYS[1])
local triples, keys, mentions = 0, 0, 0
local function drop_key(r, blob)
  local rec = cjson.decode(blob)
  for _, v in ipairs(rec.v) do triples = triples + 1; mentions = mentions + v[2] end
  redis.call('HDEL', KEYS[1], r)
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('VREM', KEYS[3], ARGV[1] .. '\31' .. r) end
  keys = keys + 1
end
if ARGV[2] == '' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do drop_key(all[i], all[i + 1]) end
else
  local blob = redis.call('HGET', KEYS[1], ARGV[2])
  if blob then
    if ARGV[4] == '1' then
      local rec = cjson.decode(blob)
      local keep, gone, gone_n = {}, 0, 0
      for _, v in ipairs(rec.v) do
        if v[1] == ARGV[3] then gone = gone + 1; gone_n = gone_n + v[2] else table.insert(keep, v) end
      end
      if #keep == 0 then
        drop_key(ARGV[2], blob)
      elseif gone > 0 then
        rec.v = keep
        redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(rec))
        triples, mentions = gone, gone_n
      end
    else
      drop_key(ARGV[2], blob)
    end
  end
end
local entities = 0
if existed == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
  entities = 1
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('VREM', KEYS[2], ARGV[1]) end
end
redis.call('HINCRBY', KEYS[4], 'triples', -triples)
redis.call('HINCRBY', KEYS[4], 'keys', -keys)
redis.call('HINCRBY', KEYS[4], 'entities', -entities)
redis.call('HINCRBY', KEYS[4], 'mentions', -mentions)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'op', 'delete', 'who', ARGV[5],
           'entity', ARGV[7], 'relation', ARGV[2], 'value', ARGV[3], 'removed', triples)
return triples
"""

# Add a missing vector only while its fact is still there. ARGV: 1 E, 2 R ("" = entity vector),
# 3 vector, 4 eid
ADD_VECTOR = r"""
if ARGV[2] == '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('VADD', KEYS[2], 'FP32', ARGV[3], ARGV[1], 'Q8') end
elseif redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then
  return redis.call('VADD', KEYS[3], 'FP32', ARGV[3], ARGV[1] .. '\31' .. ARGV[2], 'Q8', 'SETATTR', '{"eid":' .. ARGV[4] .. '}')
end
return 0
"""

# Batched exact read: one command per partition instead of one HGET each. KEYS: entity hashes (one
# hash tag); ARGV: the relation field of each. Returns the blobs, nil where absent.
HGET_MANY = r"""
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGET', KEYS[i], ARGV[i]) end
return out
"""
