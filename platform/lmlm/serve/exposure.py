"""How much of a lookup trace a caller sees (ServeConfig.exposure; the admin token always sees it all).

    none        no trace and no raw text (the raw text holds the injected values)
    citations   per lookup: the query, the injected value, the match stage and the source doc ids
    full        the whole record: stored triple, score and provenance (annotators, times, counts)
"""
from __future__ import annotations

from lmlm.generate.state import LookupRecord


def citation(lk: LookupRecord) -> dict:
    return {"entity": lk.entity, "relation": lk.relation, "value": lk.value, "stage": lk.stage,
            "doc_ids": list(lk.provenance.get("doc_ids", []))}


def expose(body: dict, lookups: list[LookupRecord], level: str) -> dict:
    """`body` with the trace fields `level` allows: "lookups" and "raw_text"."""
    if level == "none":
        return {k: v for k, v in body.items() if k != "raw_text"}
    trace = [lk.to_dict() for lk in lookups] if level == "full" else [citation(lk) for lk in lookups]
    return {**body, "lookups": trace}
