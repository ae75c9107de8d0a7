"""Server-side Lua: every write touches one entity's keys (one hash tag), atomically.

A `Script` pairs a Lua body with the dataclass of its arguments and the dataclass of its reply.
`Script.bind(client)` gives a callable that builds KEYS from a `ScriptKeys` (layout.py) and ARGV from
the arguments dataclass; `Script.parse` turns a reply into the reply dataclass. The Lua text that runs
is generated around the body from the same dataclasses: one Lua local per key and per argument, named
as the field and converted from its type (int: a number, bool: "1"/"0", list: JSON), the positions of
a stored value record and writers of the stats hash and audit stream (records.py), and, at the end,
`return {fields of the reply}`. So neither the Lua nor the Python side refers to an argument or a
reply field by its number.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Callable, Optional

from .layout import SEP, ScriptKeys
from .records import KEY_RECORD_JSON, AuditEntry, PartitionStats, ValueRecord, field_names, field_values


@dataclass
class AddArgs:
    """ADD: add one value (with `count` mentions) under a key, or with `replace` make it the key's only
    value; creates the entity and key vectors it is given, updates the stats, and audits single edits."""

    E: str                  # normalised entity
    R: str                  # normalised relation
    entity: str             # display forms, kept in the record
    relation: str
    value: str
    count: int              # mentions of this value in the write
    annotator: str
    docs: list              # document ids
    now_ms: int
    max_docs: int           # annotators and document ids kept per value
    entity_vector: bytes    # FP32 embedding for a new entity; b"": not computed
    key_vector: bytes       # FP32 embedding of "{entity} {relation}" for a new key; b"": not computed
    eid: str                # Layout.eid(E) in decimal, "" without the key index (text: Lua numbers round it)
    replace: bool
    actor: str              # "": no audit entry (a bulk write is audited once per partition)
    audit_maxlen: int
    op: str                 # audit op name ("put", "add")


@dataclass
class AddReply:
    new_entity: bool
    new_key: bool
    new_triple: bool
    removed: int                  # values `replace` removed
    need_entity_vector: bool      # a new entity whose vector was not given: add it with ADD_VECTOR
    need_key_vector: bool


@dataclass
class DeleteArgs:
    """DELETE: a whole entity (R == ""), a key, or one value of a key (has_value), with its vectors."""

    E: str
    R: str
    value: str
    has_value: bool
    actor: str
    audit_maxlen: int
    entity: str             # display form, for the audit entry


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
        return json.dumps(list(x))
    return x


def _lua_locals(source: str, cls) -> str:
    """`local <field> = <source>[i]` for each field of `cls`, converted from the field's type."""
    conv = {"int": "tonumber({})", "bool": "({} == '1')", "list": "cjson.decode({})"}
    return "\n".join(f"local {f.name} = " + conv.get(str(f.type).split("[")[0], "{}").format(f"{source}[{i}]")
                     for i, f in enumerate(fields(cls), 1))


def _lua_lib() -> str:
    v = field_names(ValueRecord)
    stats = field_names(PartitionStats)
    audit = list(AuditEntry.EDIT_FIELDS)
    rec = KEY_RECORD_JSON
    return "\n".join([
        f"local {', '.join(n.upper() for n in v)} = {', '.join(str(i) for i in range(1, len(v) + 1))}",
        f"local REC_VALUES = '{rec['values']}'",
        f"local SEP = '\\{ord(SEP)}'",
        f"local function value_record({', '.join(v)}) return {{{', '.join(v)}}} end",
        f"local function key_record(entity, relation) return {{{rec['entity']} = entity, {rec['relation']} = relation, "
        f"{rec['values']} = {{}}}} end",
        f"local function add_stats({', '.join(stats)})",
        *[f"  redis.call('HINCRBY', stats, '{s}', {s})" for s in stats],
        "end",
        f"local function add_audit(maxlen, {', '.join(audit)})",
        "  redis.call('XADD', audit, 'MAXLEN', '~', maxlen, '*', " + ", ".join(f"'{a}', {a}" for a in audit) + ")",
        "end",
        _LIB,
    ])


_LIB = r"""
local function key_element(E, R) return E .. SEP .. R end
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
    def __init__(self, args: type, body: str, reply: Optional[type] = None):
        self.args, self.reply = args, reply
        ret = f"return {{{', '.join(field_names(reply))}}}" if reply else ""
        self.lua = "\n".join([_lua_locals("KEYS", ScriptKeys), _lua_locals("ARGV", args), _lua_lib(), body, ret])

    def argv(self, a) -> list:
        if not isinstance(a, self.args):
            raise TypeError(f"expected {self.args.__name__}, got {type(a).__name__}")
        return [_encode(x) for x in field_values(a)]

    def parse(self, raw):
        if self.reply is None:
            return raw
        return self.reply(**{f.name: (bool if f.type == "bool" else int)(x)
                             for f, x in zip(fields(self.reply), raw, strict=True)})

    def bind(self, client) -> Callable:
        """`call(keys: ScriptKeys, args, client=None)`: run the script (on `client`, a pipeline, if given)."""
        registered = client.register_script(self.lua)

        def call(keys: ScriptKeys, args, client=None):
            return registered(keys=field_values(keys), args=self.argv(args), client=client)

        return call


ADD = Script(AddArgs, r"""
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
local need_entity_vector, need_key_vector = 0, 0
if new_entity == 1 then
  if entity_vector ~= '' then add_entity_vector(E, entity_vector) else need_entity_vector = 1 end
end
if new_key == 1 and eid ~= '' then
  if key_vector ~= '' then add_key_vector(E, R, key_vector, eid) else need_key_vector = 1 end
end
add_stats(new_triple - removed, new_key, new_entity, count - removed_mentions)
if actor ~= '' then add_audit(audit_maxlen, op, actor, entity, relation, value, removed) end
""", AddReply)

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
  local all = redis.call('HGETALL', entity_hash)
  for i = 1, #all, 2 do drop_key(all[i], all[i + 1]) end
else
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
end
add_stats(-triples, -keys, -entities, -mentions)
add_audit(audit_maxlen, 'delete', actor, entity, R, value, triples)
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
