"""What only a Redis Cluster shows: one slot per entity, partitions spread over the masters, fuzzy
lookups gathered from every node, replays and deletions on the right node (a real 3-master cluster)."""
from __future__ import annotations

from dataclasses import astuple

from lmlm.factstore import FactStore, FactStoreConfig
from lmlm.format import Triple

PEOPLE = [f"{a} {b}" for a in ("Ingrid", "Tobias", "Marisol", "Kwame", "Yusuke", "Fenella")
          for b in ("Haldorsen", "Quintero", "Abernathy", "Okonkwo")]
TRIPLES = [Triple(p, r, f"{r} of {p}") for p in PEOPLE for r in ("Birth City", "Employer")]


def test_store_on_a_three_master_cluster(redis_cluster):
    cfg = FactStoreConfig(url=redis_cluster.url, namespace="clustertest", partitions=9)
    with FactStore.open(cfg) as store:
        assert store.cluster and store.url.startswith("redis+cluster://") and redis_cluster.password not in store.url
        assert store.load(TRIPLES, batch_id="shard:c").written == len(TRIPLES)
        assert store.load(TRIPLES, batch_id="shard:c").replayed >= 3  # one per partition touched
        nodes = set()
        for p in PEOPLE:
            E = p.lower()
            ks = store.layout.of(E)
            keys = astuple(ks.part_keys()) + astuple(ks.entity_keys(E))
            assert len({store.r.keyslot(k) for k in keys}) == 1  # every key of an entity in one slot
            nodes.add(store.r.get_node_from_key(keys[0]).name)
        assert len(nodes) == 3  # the partitions spread over the three masters
        s = store.stats()
        assert (s["triples"], s["entities"], s["entity_vectors"]) == (48, 24, 24)
        # fuzzy: typos (lexical blocks) and the vector sets, gathered from every node
        qs = [(p + "q", "Employer") for p in PEOPLE[::5]] + [("Kwame Okonkow", "Birth City")]
        got = store.lookup_batch(qs, fallback="abstain")
        assert [a.triple.entity if a else None for a in got] == PEOPLE[::5] + ["Kwame Okonkwo"]
        emb = store.embedder
        calls = emb.calls
        assert store.lookup("Yusuke Abernaty", "works for").value == "Employer of Yusuke Abernathy"
        assert store.lookup("Yusukee Abernaty", "Employer").value == "Employer of Yusuke Abernathy"  # vector sets
        assert emb.calls > calls
        # a deletion is on its node's AOF before the reply, and visible on the next lookup
        assert store.delete("Kwame Okonkwo") == 2
        assert store.lookup("Kwame Okonkwo", "Birth City", fallback="abstain") is None
        node = store.r.get_redis_connection(store.r.get_node_from_key(store.layout.of("kwame okonkwo").stats))
        assert node.info("commandstats")["cmdstat_waitaof"]["calls"] >= 1
        assert store.add_triples([t for t in TRIPLES if t.entity == "Kwame Okonkwo"]) == 0  # tombstoned
        store.flush()
        assert store.stats()["triples"] == 0
