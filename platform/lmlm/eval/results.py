"""Evaluation results as typed records: `EvalResults` (the synthetic world's run) and
`RealTextResults` (a run on an annotated corpus), read from and written to `results.json` by
`read_results` / `write_results` (the only code that touches that file's layout).

Headline numbers are typed fields (None: not measured in this run). Everything else an evaluation
produces (per-split precision, examples, truth ratios, the config behind it) goes in `details`,
`config`, `sources` and `timings_s`. The report (`lmlm.eval.report`), the pipeline's summary and
the README table are rendered from `ROWS`, so a metric is named in one place.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lmlm import atomicfile

RESULTS_FILE = "results.json"


@dataclass
class EvalResults:
    # --- perplexity (docs/method.md §7): held-out texts of trained people, in held-out phrasings (sentences
    # no training document uses, made of clauses that training documents use in other sentences)
    ppl_normalized_lmlm: Optional[float] = None
    ppl_normalized_standard: Optional[float] = None
    ppl_static_lmlm: Optional[float] = None
    value_loss_lmlm: Optional[float] = None  # nats per value token (the LMLM does not train on them)
    value_loss_standard: Optional[float] = None
    entity_loss_lmlm: Optional[float] = None  # nats per entity token of the LMLM's queries
    # ... texts of people absent from training (the inserted people), in held-out phrasings
    ppl_normalized_unseen_lmlm: Optional[float] = None
    ppl_normalized_unseen_standard: Optional[float] = None
    entity_loss_unseen_lmlm: Optional[float] = None
    value_loss_unseen_standard: Optional[float] = None
    # ... new texts of trained people in the training phrasings (new order and combination)
    ppl_normalized_train_phrasing_lmlm: Optional[float] = None
    ppl_normalized_train_phrasing_standard: Optional[float] = None
    # ... new texts of trained people in novel sentences (only the relation cue is familiar)
    ppl_normalized_novel_lmlm: Optional[float] = None
    ppl_normalized_novel_standard: Optional[float] = None
    # ... real text (held-out annotated Wikipedia paragraphs, when a data directory has them)
    ppl_normalized_wiki_lmlm: Optional[float] = None
    ppl_normalized_wiki_standard: Optional[float] = None
    # --- generation: factual precision of bios, completion exact match (trained people)
    precision_lmlm: Optional[float] = None
    precision_lmlm_db_off: Optional[float] = None
    precision_standard: Optional[float] = None
    completion_em_lmlm: Optional[float] = None
    completion_em_lmlm_db_off: Optional[float] = None
    completion_em_standard: Optional[float] = None
    own_entity_lookup_rate: Optional[float] = None  # share of bios whose lookups all name the prompt's person
    # ... people never in training, their facts put into the store after training
    precision_inserted_lmlm: Optional[float] = None
    precision_inserted_lmlm_db_off: Optional[float] = None
    precision_inserted_standard: Optional[float] = None
    completion_em_inserted_lmlm: Optional[float] = None
    completion_em_inserted_standard: Optional[float] = None
    own_entity_lookup_rate_inserted: Optional[float] = None
    # ... inserted people named from lmlm.world_names (no part of their names in any training
    # document); the figures above are of the in-pool inserted people (the training pools' names)
    precision_inserted_out_of_pool: Optional[float] = None  # LMLM, lookups on
    completion_em_inserted_out_of_pool: Optional[float] = None
    own_entity_lookup_rate_out_of_pool: Optional[float] = None
    # with copy_entities on: the same people, the model spelling entities on its own
    own_entity_lookup_rate_out_of_pool_uncopied: Optional[float] = None
    precision_inserted_out_of_pool_uncopied: Optional[float] = None
    # share of the LMLM's lookups (bios of trained and inserted people) answered with another
    # stored person's fact
    wrong_entity_hit_rate: Optional[float] = None
    # --- unlearning: the forget split deleted from the store
    forget_precision_before: Optional[float] = None
    forget_precision_after: Optional[float] = None
    retain_precision_before: Optional[float] = None
    retain_precision_after: Optional[float] = None
    forget_completion_em_before: Optional[float] = None
    forget_completion_em_after: Optional[float] = None
    retain_completion_em_before: Optional[float] = None
    retain_completion_em_after: Optional[float] = None
    forget_quality_p: Optional[float] = None  # KS p-value vs the reference below (TOFU)
    forget_quality_p_before: Optional[float] = None
    forget_quality_reference: Optional[str] = None  # "retain_model" or "same_weights"
    model_utility_before: Optional[float] = None
    model_utility_after: Optional[float] = None
    # --- the run
    complete: bool = False  # True once every stage of the evaluation finished
    demo_wall_s: Optional[float] = None
    pretrain_tokens_per_s_lmlm: Optional[float] = None  # median over the logged windows (metrics.jsonl)
    pretrain_tokens_per_s_standard: Optional[float] = None
    cpu_capability: Optional[str] = None  # torch.backends.cpu.get_cpu_capability() of the evaluating machine
    cpu_features: dict = field(default_factory=dict)  # lmlm.precision.cpu_features()
    stage_wall_s: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    definitions: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # per-split numbers, examples, truth ratios
    files: dict = field(default_factory=dict)

    def update(self, values: dict) -> None:
        """Set the named fields from `values`; keys that are not fields go into `details`."""
        names = {f.name for f in dataclasses.fields(self)}
        for k, v in values.items():
            if k in names:
                setattr(self, k, v)
            else:
                self.details[k] = v


@dataclass
class RealTextResults:
    """What a run on an annotated corpus measured (lmlm.pipeline.corpus: lmlm.eval.realtext's
    numbers on the held-out split, and the run's timings); keys that are not fields go to `details`."""

    docs: Optional[int] = None  # evaluation documents
    ppl_normalized_lmlm: Optional[float] = None
    ppl_normalized_standard: Optional[float] = None
    ppl_static_lmlm: Optional[float] = None
    ppl_static_standard: Optional[float] = None
    text_loss_lmlm: Optional[float] = None  # nats per token of each kind
    text_loss_standard: Optional[float] = None
    entity_loss_lmlm: Optional[float] = None
    relation_loss_lmlm: Optional[float] = None
    marker_loss_lmlm: Optional[float] = None
    value_loss_lmlm: Optional[float] = None
    value_loss_standard: Optional[float] = None
    tokens_plain: Optional[int] = None  # tokens of the documents with every lookup removed
    tokens_trained_lmlm: Optional[int] = None
    completion_n: Optional[int] = None  # completion questions asked
    completion_em_lmlm: Optional[float] = None
    completion_em_lmlm_db_off: Optional[float] = None
    completion_em_standard: Optional[float] = None
    completion_em_with_lookup_lmlm: Optional[float] = None
    start: Optional[str] = None  # the models' start (a pretrained model's name, or a preset)
    train_documents: Optional[int] = None
    wall_s: Optional[float] = None
    stage_wall_s: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # the full perplexity reports, per-stage seconds

    update = EvalResults.update


# The headline table: (title, LMLM (or first) field, standard (or second) field, LMLM-with-lookups-off
# field); None: no such column.
ROWS = (
    ("normalized perplexity, trained people, held-out phrasings", "ppl_normalized_lmlm", "ppl_normalized_standard", None),
    ("normalized perplexity, unseen people, held-out phrasings", "ppl_normalized_unseen_lmlm",
     "ppl_normalized_unseen_standard", None),
    ("normalized perplexity, trained people, training phrasings", "ppl_normalized_train_phrasing_lmlm",
     "ppl_normalized_train_phrasing_standard", None),
    ("normalized perplexity, trained people, novel sentences", "ppl_normalized_novel_lmlm",
     "ppl_normalized_novel_standard", None),
    ("entity-token loss (nats), trained / unseen people", "entity_loss_lmlm", "entity_loss_unseen_lmlm", None),
    ("value-token loss (nats)", "value_loss_lmlm", "value_loss_standard", None),
    ("factual precision, trained people", "precision_lmlm", "precision_standard", "precision_lmlm_db_off"),
    ("factual precision, inserted people", "precision_inserted_lmlm", "precision_inserted_standard",
     "precision_inserted_lmlm_db_off"),
    ("completion exact match, trained people", "completion_em_lmlm", "completion_em_standard", "completion_em_lmlm_db_off"),
    ("completion exact match, inserted people", "completion_em_inserted_lmlm", "completion_em_inserted_standard", None),
    ("own-entity lookup rate, trained / inserted people", "own_entity_lookup_rate", "own_entity_lookup_rate_inserted", None),
    ("factual precision / completion exact match, inserted people, out-of-pool names",
     "precision_inserted_out_of_pool", "completion_em_inserted_out_of_pool", None),
    ("own-entity lookup rate, inserted people, in-pool / out-of-pool names", "own_entity_lookup_rate_inserted",
     "own_entity_lookup_rate_out_of_pool", None),
    ("out-of-pool names without copy_entities: own-entity lookup rate / precision",
     "own_entity_lookup_rate_out_of_pool_uncopied", "precision_inserted_out_of_pool_uncopied", None),
    ("wrong-entity hit rate (lookups answered with another person's fact)", "wrong_entity_hit_rate", None, None),
    ("forget-set precision, before / after deletion", "forget_precision_before", "forget_precision_after", None),
    ("retain-set precision, before / after deletion", "retain_precision_before", "retain_precision_after", None),
    ("forget quality (KS p) / model utility after", "forget_quality_p", "model_utility_after", None),
    ("normalized perplexity, real text", "ppl_normalized_wiki_lmlm", "ppl_normalized_wiki_standard", None),
    ("pretraining tokens/s", "pretrain_tokens_per_s_lmlm", "pretrain_tokens_per_s_standard", None),
)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table_rows(r: EvalResults) -> list[tuple[str, str, str, str]]:
    """(title, first, second, lookups-off) strings of the rows this run measured."""
    out = []
    for title, *keys in ROWS:
        a, b, c = (getattr(r, k) if k else None for k in keys)
        if a is None and b is None:
            continue
        out.append((title, fmt(a), fmt(b), fmt(c)))
    return out


def json_safe(obj: Any) -> Any:
    """`obj` with numpy scalars, tuples, paths and non-finite floats made JSON-writable."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return json_safe(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write `obj` as JSON atomically (a temporary file renamed into place); NaN becomes null."""
    return atomicfile.write_json(path, json_safe(obj), indent=2, ensure_ascii=True)


def write_results(results: EvalResults | RealTextResults, out_dir: str | Path) -> Path:
    """Write `out_dir/results.json` atomically: the one writer of that file."""
    return write_json(dataclasses.asdict(results), Path(out_dir) / RESULTS_FILE)


def read_results(path: str | Path, kind: type = EvalResults):
    """A `kind` record (EvalResults or RealTextResults) from a results.json (or the directory holding
    one); unknown keys go to details."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not a results file ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p}: not a results file (top level is {type(data).__name__}, not an object)")
    out = kind()
    out.update(data)
    return out
