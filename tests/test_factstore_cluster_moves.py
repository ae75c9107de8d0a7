"""Resharding under an open store, on a real 3-master Redis Cluster of its own (slots move here, so
not the session's shared one): a slot moved to another master (MOVED) and a slot mid-migration
(ASK, TRYAGAIN) on the pipelined paths: a deletion with WAITAOF, batched reads, writes. Every
command a redirect answered was not executed, so it is sent again; nothing is applied twice."""
from __future__ import annotations

from collections import defaultdict

import pytest

from lmlm.factstore import FactStore, FactStoreConfig, StoreUnavailable, backend
from lmlm.factstore.layout import clean_name
from lmlm.testing.redis_cluster import LocalCluster
from lmlm.format import Triple

PEOPLE = [f"{a} {b}" for a in ("Ingrid", "Tobias", "Marisol", "Kwame", "Yusuke", "Fenella")
          for b in ("Haldorsen", "Quintero", "Abernathy", "Okonkwo")]
TRIPLES = [Triple(p, r, f"{r} of {p}") for p in PEOPLE for r in ("Birth City", "Employer")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(3, tmp_path_factory.mktemp("moves")) as c:
        yield c


def _norm(name: str) -> str:
    return clean_name(name, "entity")[1]


def _people_by_slot(store: FactStore) -> list[tuple[int, list[str]]]:
    """(slot, people) of each slot the people's partitions use, the most crowded first."""
    slots = defaultdict(list)
    for p in PEOPLE:
        slots[store.r.keyslot(store.layout.of(_norm(p)).stats)].append(p)
    return sorted(slots.items(), key=lambda kv: -len(kv[1]))


def _elsewhere(cluster: LocalCluster, slot: int) -> int:
    return (cluster.slot_owner(slot) + 1) % len(cluster.servers)


def _served_by(store: FactStore, slot_key: str) -> int:
    return store.r.get_node_from_key(slot_key).port


def test_an_open_store_follows_slots_moved_to_other_masters(cluster):
    cfg = FactStoreConfig(url=cluster.url, namespace="moved", partitions=6)
    with FactStore.open(cfg) as store:
        assert store.add_triples(TRIPLES) == len(TRIPLES)
        (s_del, del_people), (s_read, read_people), (s_write, write_people) = _people_by_slot(store)[:3]

        # a deletion: its script and WAITAOF on one connection, sent again to the new master
        to = _elsewhere(cluster, s_del)
        cluster.move_slot(s_del, to)
        victim = del_people[0]
        assert store.delete(victim) == 2
        assert _served_by(store, store.layout.of(_norm(victim)).stats) == cluster.servers[to].port
        assert store.get(victim, "Employer") is None

        # batched exact reads (per-node pipelines), keys on the moved slot among others
        cluster.move_slot(s_read, _elsewhere(cluster, s_read))
        qs = [(p, "Employer") for p in read_people] + [(p, "Birth City") for p in write_people]
        got = store.lookup_batch(qs, fallback="abstain")
        assert [a.value if a else None for a in got] == [f"{r} of {p}" for p, r in qs]
        assert [len(h) for h in store.entity_records([_norm(p) for p in read_people])] == [2] * len(read_people)

        # writes (the reads that plan them, then the scripts), each applied exactly once
        mentions = store.stats()["mentions"]
        cluster.move_slot(s_write, _elsewhere(cluster, s_write))
        new = [Triple(p, "Spouse", f"Spouse of {p}") for p in write_people]
        assert store.add_triples(new) == len(new)
        assert store.stats()["mentions"] == mentions + len(new)
        assert store.get(write_people[0], "Spouse")["values"][0]["count"] == 1
        # the tombstone moved with its slot: the deleted entity is not loaded again
        assert store.add_triples([t for t in TRIPLES if t.entity == victim]) == 0
        s = store.stats()
        assert (s["triples"], s["entities"]) == (len(TRIPLES) - 2 + len(new), len(PEOPLE) - 1)


def test_pipelined_commands_follow_moved_and_ask_and_none_runs_twice(cluster):
    client = backend.connect(cluster.url, 2.0)
    try:
        keys, slots = [], set()
        for i in range(100):  # counters in distinct slots
            k = f"{{inc{i}}}:n"
            if client.keyslot(k) not in slots:
                slots.add(client.keyslot(k))
                keys.append(k)
            if len(keys) == 12:
                break
        incr = [(k, lambda p, k=k: p.incr(k)) for k in keys]
        assert backend.pipelined(client, incr) == [1] * len(keys)
        moved, asked = client.keyslot(keys[0]), client.keyslot(keys[1])
        cluster.move_slot(moved, _elsewhere(cluster, moved))  # MOVED
        to = _elsewhere(cluster, asked)
        cluster.move_slot(asked, to, keys=[keys[1]], finish=False)  # the source answers ASK for it
        # INCR is not idempotent: a command sent twice would count 3
        assert backend.pipelined(client, incr) == [2] * len(keys)
        cluster.finish_slot_move(asked, to)
        assert backend.pipelined(client, [(k, lambda p, k=k: p.get(k)) for k in keys]) == [b"2"] * len(keys)
    finally:
        client.close()


def test_reads_mid_migration_follow_ask_and_a_blocked_deletion_fails_cleanly(cluster):
    cfg = FactStoreConfig(url=cluster.url, namespace="migrating", partitions=6)
    with FactStore.open(cfg) as store:
        assert store.add_triples(TRIPLES) == len(TRIPLES)
        slot, (first, second, *_) = _people_by_slot(store)[0]
        to = _elsewhere(cluster, slot)
        # only the first entity's hash reaches the target: the source answers ASK for it
        cluster.move_slot(slot, to, keys=[store.layout.of(_norm(first)).entity(_norm(first))], finish=False)
        try:
            qs = [(first, "Employer"), (second, "Employer"), (first, "Birth City")]
            got = store.lookup_batch(qs, fallback="abstain")
            assert [a.value if a else None for a in got] == [f"{r} of {p}" for p, r in qs]
            assert [len(h) for h in store.entity_records([_norm(first), _norm(second)])] == [2, 2]
            # the deletion's keys are split between the masters (TRYAGAIN): refused after a few tries
            with pytest.raises(StoreUnavailable, match="migrat"):
                store.delete(second)
        finally:
            cluster.finish_slot_move(slot, to)
        assert store.get(second, "Employer") is not None  # the refused deletion deleted nothing
        assert store.delete(second) == 2 and store.delete(first) == 2
        assert store.get(first, "Employer") is None and store.get(second, "Birth City") is None
