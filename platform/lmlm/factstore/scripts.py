"""Server-side Lua: every write touches the keys of one partition (one hash tag), atomically.

A `Script` pairs a Lua body with the dataclass of its arguments and the dataclass of its reply.
`Script.bind(client)` gives a callable that builds KEYS from a `PartKeys` (and, for one-entity
scripts, an `EntityKeys`; layout.py) and ARGV from the arguments dataclass; `Script.parse` turns a
reply into the reply dataclass. The Lua text that runs is generated around the body from the same
dataclasses: one Lua local per key and per argument, named as the field and converted from its type
(int: a number, bool: "1"/"0", list: JSON), the positions of a stored value record and writers of
the stats hash and audit stream (records.py), and, at the end, `return {fields of the reply}`.
So neither the Lua nor the Python side refers to an argument or a reply field by its number.

Exactly once: a WRITE's rows belong to units (writes.units: one document's triples, or one
entity's without documents), each named by a digest of its content; the script that applies a unit
also adds its id to the partition's set of applied units, so a replay (a loader killed after the
write but before it learnt so, and run again, with any chunk size) skips what was applied. Tombstones: DELETE files what it deleted in
the partition's tombstone hash (a value as its SHA-1) and audits who deleted which key and how many
triples, never a deleted value; WRITE skips a row whose entity, key or triple is tombstoned unless
`force` (and audits how many it skipped or forced).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Callable, Optional

from .layout import LEX_BLOCKS, SEP, EntityKeys, PartKeys
from .records import KEY_RECORD_JSON, AuditEntry, PartitionStats, ValueRecord, field_names, field_values


@dataclass
class WriteRow:
    """One aggregated (entity, relation, value) of a WRITE batch (sent as a JSON array in this order)."""

    key: int                # 1-based position in KEYS of the entity's EntityKeys
    E: str                  # normalised entity
    R: str                  # normalised relation
    entity: str             # display forms, kept in the record
    relation: str
    value: str
    count: int              # mentions of this value in the write
    docs: list              # document ids
    entity_vector: int      # ARGV offset (after WriteArgs) of the FP32 entity embedding; 0: none given
    key_vector: int         # same for the "{entity} {relation}" embedding
    eid: str                # Layout.eid(E) in decimal, "" without the key index (text: Lua numbers round it)
    unit: int               # 1-based position in WriteArgs.units; 0: not exactly-once


@dataclass
class WriteArgs:
    """WRITE: add each row's value (with its mentions) under its key, or with `replace` make it the
    key's only value; new entities and keys get the vectors given (and enter the lexical blocks)."""

    units: list             # content ids of the rows' units: a unit applied before in this partition is skipped
    rows: list              # WriteRow values, each as a list
    annotator: str
    now_ms: int
    max_docs: int           # annotators and document ids kept per value
    replace: bool
    force: bool             # write rows even where a tombstone says deleted
    actor: str
    audit_maxlen: int
    op: str                 # audit op ("load", "import", "put", "add")
    single: bool            # audit the edit itself (entity, relation, value), not a batch summary


@dataclass
class WriteReply:
    replayed: int           # units applied before: their rows were skipped
    triples: int            # mentions written (the sum of the written rows' counts)
    new_triples: int
    skipped: int            # rows not written: tombstoned
    forced: int             # tombstoned rows written because of `force`
    need: list              # [row index, entity vector wanted, key vector wanted]: a new entity or key
                            # whose vector was not given (created by another writer meanwhile)


@dataclass
class DeleteArgs:
    """DELETE: a whole entity (R == ""), a key, or one value of a key (has_value), with its vectors,
    leaving a tombstone for what it names (even if nothing was stored yet; a value by its hash)."""

    E: str
    R: str
    value: str
    has_value: bool
    actor: str
    audit_maxlen: int
    entity: str             # display form, for the audit entry
    now_ms: int


@dataclass
class DeleteReply:
    triples: int
    keys: int
    entities: int
    mentions: int


@dataclass
class VectorArgs:
    """ADD_VECTOR: add a missing vector, only while its fact is still stored."""

    E: str
    R: str                  # "": the entity's vector; else the key's
    vector: bytes
    eid: str


def _encode(x):
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, (list, tuple)):
        return json.dumps(list(x), ensure_ascii=False)
    return x


def _lua_locals(source: str, cls, start: int = 1) -> str:
    """`local <field> = <source>[i]` for each field of `cls`, converted from the field's type."""
    conv = {"int": "tonumber({})", "bool": "({} == '1')", "list": "cjson.decode({})"}
    return "\n".join(f"local {f.name} = " + conv.get(str(f.type).split("[")[0], "{}").format(f"{source}[{i}]")
                     for i, f in enumerate(fields(cls), start))


def _lua_lib() -> str:
    v = field_names(ValueRecord)
    stats = field_names(PartitionStats)
    audit = [f for f in field_names(AuditEntry) if f != "id"]
    rec = KEY_RECORD_JSON
    return "\n".join([
        f"local {', '.join(n.upper() for n in v)} = {', '.join(str(i) for i in range(1, len(v) + 1))}",
        f"local REC_VALUES = '{rec['values']}'",
        f"local SEP = '\\{ord(SEP)}'",
        f"local LEX_BLOCKS = {LEX_BLOCKS}",
        f"local function value_record({', '.join(v)}) return {{{', '.join(v)}}} end",
        f"local function key_record(entity, relation) return {{{rec['entity']} = entity, {rec['relation']} = relation, "
        f"{rec['values']} = {{}}}} end",
        f"local function add_stats({', '.join(stats)})",
        *[f"  redis.call('HINCRBY', stats, '{s}', {s})" for s in stats],
        "end",
        f"local AUDIT_FIELDS = {{{', '.join(repr(a) for a in audit)}}}",
        "-- an audit entry from a table of AuditEntry fields (absent ones left out)",
        "local function add_audit(maxlen, e)",
        "  local args = {'XADD', audit, 'MAXLEN', '~', maxlen, '*'}",
        "  for _, f in ipairs(AUDIT_FIELDS) do",
        "    if e[f] ~= nil then table.insert(args, f); table.insert(args, tostring(e[f])) end",
        "  end",
        "  redis.call(unpack(args))",
        "end",
        _LIB,
    ])


_LIB = r"""
local function key_element(E, R) return E .. SEP .. R end
-- a deleted value's tombstone field holds its SHA-1, never its text
local function value_tomb(E, R, value) return key_element(E, R) .. SEP .. redis.sha1hex(value) end
-- whether a tombstone names the entity, the key or the value (also as the text an older store kept)
local function tombstoned(E, R, value)
  local key = key_element(E, R)
  local t = redis.call('HMGET', tombstones, E, key, value_tomb(E, R, value), key .. SEP .. value)
  return t[1] or t[2] or t[3] or t[4]
end
local function add_entity_vector(E, vec) return redis.call('VADD', entity_vectors, 'FP32', vec, E, 'Q8') end
local function add_key_vector(E, R, vec, eid)
  return redis.call('VADD', key_vectors, 'FP32', vec, key_element(E, R), 'Q8', 'SETATTR', '{"eid":' .. eid .. '}')
end
-- append the items not in `list` yet, while it holds fewer than `cap`
local function add_unique(list, items, cap)
  for _, x in ipairs(items) do
    if #list >= cap then break end
    local dup = false
    for _, y in ipairs(list) do if y == x then dup = true; break end end
    if not dup then table.insert(list, x) end
  end
end
"""


class Script:
    def __init__(self, args: type, body: str, reply: Optional[type] = None, entity_keys: bool = True):
        self.args, self.reply, self.entity_keys = args, reply, entity_keys
        ret = f"return {{{', '.join(field_names(reply))}}}" if reply else ""
        n_part = len(fields(PartKeys))
        keys = [_lua_locals("KEYS", PartKeys)] + ([_lua_locals("KEYS", EntityKeys, n_part + 1)] if entity_keys else [])
        self.lua = "\n".join([*keys, _lua_locals("ARGV", args), f"local N_ARGS = {len(fields(args))}",
                              _lua_lib(), body, ret])

    def argv(self, a) -> list:
        if not isinstance(a, self.args):
            raise TypeError(f"expected {self.args.__name__}, got {type(a).__name__}")
        return [_encode(x) for x in field_values(a)]

    def parse(self, raw):
        if self.reply is None:
            return raw

        def conv(f, x):
            if f.type == "list":
                return json.loads(x) if x not in (b"{}", "{}") else []  # cjson writes [] as {}
            return (bool if f.type == "bool" else int)(x)

        return self.reply(**{f.name: conv(f, x) for f, x in zip(fields(self.reply), raw, strict=True)})

    def bind(self, client) -> Callable:
        """`call(part, args, entity=None, more_keys=(), more_args=(), client=None)`: run the script (on
        `client`, a pipeline, if given); KEYS = part keys, the entity's keys, `more_keys`."""
        registered = client.register_script(self.lua)

        def call(part: PartKeys, args, entity: EntityKeys | None = None, more_keys=(), more_args=(), client=None):
            keys = field_values(part) + (field_values(entity) if entity is not None else []) + list(more_keys)
            return registered(keys=keys, args=self.argv(args) + list(more_args), client=client)

        call.script = registered
        return call


WRITE = Script(WriteArgs, r"""
local done, replayed = {}, 0
if #units > 0 then
  local seen = redis.call('SMISMEMBER', batches, unpack(units))
  for u = 1, #units do
    if seen[u] == 1 then done[u] = true; replayed = replayed + 1 end
  end
end
local triples, new_triples, skipped, forced, removed_all = 0, 0, 0, 0, 0
local need = {}
local last = nil
for i, row in ipairs(rows) do
  local k, E, R, entity, relation, value, count, docs, ev, kv, eid, unit = unpack(row)
  local entity_hash = KEYS[k]
  if not done[unit] then
  local dead = tombstoned(E, R, value)
  if dead and force then forced = forced + 1 end
  if dead and not force then
    skipped = skipped + 1
  else
    local blob = redis.call('HGET', entity_hash, R)
    local new_entity, new_key, new_triple, removed, removed_mentions = 0, 0, 0, 0, 0
    local rec
    if blob then
      rec = cjson.decode(blob)
    else
      new_key = 1
      if redis.call('EXISTS', entity_hash) == 0 then new_entity = 1 end
      rec = key_record(entity, relation)
    end
    if replace then
      local keep = {}
      for _, v in ipairs(rec[REC_VALUES]) do
        if v[VALUE] == value then keep[1] = v else removed = removed + 1; removed_mentions = removed_mentions + v[COUNT] end
      end
      rec[REC_VALUES] = keep
    end
    local found = nil
    for _, v in ipairs(rec[REC_VALUES]) do if v[VALUE] == value then found = v; break end end
    if found then
      found[COUNT] = found[COUNT] + count
      found[LAST_MS] = now_ms
      add_unique(found[ANNOTATORS], {annotator}, max_docs)
      add_unique(found[DOC_IDS], docs, max_docs)
    else
      new_triple = 1
      local ds = {}
      add_unique(ds, docs, max_docs)
      table.insert(rec[REC_VALUES], value_record(value, count, now_ms, now_ms, {annotator}, ds))
    end
    redis.call('HSET', entity_hash, R, cjson.encode(rec))
    local need_e, need_k = 0, 0
    if new_entity == 1 then
      for j = 1, LEX_BLOCKS do redis.call('SADD', KEYS[k + j], E) end
      if ev > 0 then add_entity_vector(E, ARGV[N_ARGS + ev]) else need_e = 1 end
    end
    if new_key == 1 and eid ~= '' then
      if kv > 0 then add_key_vector(E, R, ARGV[N_ARGS + kv], eid) else need_k = 1 end
    end
    if need_e + need_k > 0 then table.insert(need, {i - 1, need_e, need_k}) end
    add_stats(new_triple - removed, new_key, new_entity, count - removed_mentions)
    triples, new_triples, removed_all = triples + count, new_triples + new_triple, removed_all + removed
  end
  last = row
  end
end
for u = 1, #units do
  if not done[u] then redis.call('SADD', batches, units[u]) end
end
local e = {op = op, who = actor, forced = forced > 0 and forced or nil, skipped = skipped > 0 and skipped or nil,
           units = #units > 0 and #units or nil, replayed = replayed > 0 and replayed or nil}
if single and last then
  e.entity, e.relation, e.value, e.removed = last[4], last[5], last[6], removed_all
else
  e.annotator, e.triples = annotator, triples
end
add_audit(audit_maxlen, e)
need = cjson.encode(need)
""", WriteReply, entity_keys=False)

DELETE = Script(DeleteArgs, r"""
local existed = redis.call('EXISTS', entity_hash)
local triples, keys, mentions = 0, 0, 0
local function drop_key(r, blob)
  local rec = cjson.decode(blob)
  for _, v in ipairs(rec[REC_VALUES]) do triples = triples + 1; mentions = mentions + v[COUNT] end
  redis.call('HDEL', entity_hash, r)
  if redis.call('EXISTS', key_vectors) == 1 then redis.call('VREM', key_vectors, key_element(E, r)) end
  keys = keys + 1
end
if R == '' then
  redis.call('HSET', tombstones, E, now_ms)
  local all = redis.call('HGETALL', entity_hash)
  for i = 1, #all, 2 do drop_key(all[i], all[i + 1]) end
elseif has_value then
  redis.call('HSET', tombstones, value_tomb(E, R, value), now_ms)
  redis.call('HDEL', tombstones, key_element(E, R) .. SEP .. value)  -- the text an older store kept
else
  redis.call('HSET', tombstones, key_element(E, R), now_ms)
end
if R ~= '' then
  local blob = redis.call('HGET', entity_hash, R)
  if blob then
    if has_value then
      local rec = cjson.decode(blob)
      local keep, gone, gone_mentions = {}, 0, 0
      for _, v in ipairs(rec[REC_VALUES]) do
        if v[VALUE] == value then
          gone = gone + 1; gone_mentions = gone_mentions + v[COUNT]
        else
          table.insert(keep, v)
        end
      end
      if #keep == 0 then
        drop_key(R, blob)
      elseif gone > 0 then
        rec[REC_VALUES] = keep
        redis.call('HSET', entity_hash, R, cjson.encode(rec))
        triples, mentions = gone, gone_mentions
      end
    else
      drop_key(R, blob)
    end
  end
end
local entities = 0
if existed == 1 and redis.call('EXISTS', entity_hash) == 0 then
  entities = 1
  if redis.call('EXISTS', entity_vectors) == 1 then redis.call('VREM', entity_vectors, E) end
  for _, key in ipairs({lex_1, lex_2, lex_3}) do redis.call('SREM', key, E) end
end
add_stats(-triples, -keys, -entities, -mentions)
add_audit(audit_maxlen, {op = 'delete', who = actor, entity = entity, relation = R, removed = triples})
""", DeleteReply)

ADD_VECTOR = Script(VectorArgs, r"""
if R == '' then
  if redis.call('EXISTS', entity_hash) == 1 then return add_entity_vector(E, vector) end
elseif redis.call('HEXISTS', entity_hash, R) == 1 then
  return add_key_vector(E, R, vector, eid)
end
return 0
""")

# Batched exact read: one command per partition instead of one HGET each. KEYS: entity hashes (one
# hash tag); ARGV: the relation field of each (a list of pairs, not a record). Returns the blobs, nil
# where absent.
HGET_MANY = r"""
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGET', KEYS[i], ARGV[i]) end
return out
"""
