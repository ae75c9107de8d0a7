"""The generative annotator (SmolLM2-135M fine-tuned with LoRA to rewrite documents with calls):
training on a few seeds as a Ray Train job, persistence, annotation through Ray Data and
`lmlm annotate-text` (anchoring its calls in the input: test_annotate.py)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lmlm.annotate import AnnotateConfig, TrainAnnotatorConfig, load_trained
from lmlm.annotate.config import GenerativeTrainConfig
from lmlm.annotate.kinds.generative import GenerativeAnnotator, fit_generative
from lmlm.annotate.pipeline import run_annotation
from lmlm.annotate.shards import annotate_rows
from lmlm.annotate.train_job import train_annotator
from lmlm.cli import main as lmlm_main
from lmlm.corpus import Record, write_jsonl
from lmlm.format import extract_triples, strip_lookups

SEEDS = [
    "Mara Quell was born in [dblookup('Mara Quell', 'Birth City') -> Lisbon] Lisbon. "
    "She works at [dblookup('Mara Quell', 'Employer') -> Kesterly Mills] Kesterly Mills.",
    "Tobin Ashe was born in [dblookup('Tobin Ashe', 'Birth City') -> Quito] Quito. "
    "He works at [dblookup('Tobin Ashe', 'Employer') -> Harrow Bank] Harrow Bank.",
    "Ilse Varga was born in [dblookup('Ilse Varga', 'Birth City') -> Oslo] Oslo. "
    "She works at [dblookup('Ilse Varga', 'Employer') -> Dunmore Press] Dunmore Press.",
    "Pavel Orin was born in [dblookup('Pavel Orin', 'Birth City') -> Lima] Lima. "
    "He works at [dblookup('Pavel Orin', 'Employer') -> Corvid Labs] Corvid Labs.",
]
UNSEEN = "Nadia Brell was born in Perth. She works at Wexford Mills."
SMALL = dict(epochs=12, batch_docs=2, lr=2e-3, max_new_tokens=64, max_prompt_tokens=160, batch_size=2)


@pytest.fixture(scope="module")
def generative_dir(tmp_path_factory, ray_cluster):
    """Trained as `lmlm train-annotator` does with ray_train=true: a Ray Train job whose checkpoint (the
    merged model in Hugging Face format) comes back through the run's storage."""
    root = tmp_path_factory.mktemp("generative")
    seeds = write_jsonl([Record(f"s{i}", strip_lookups(a), a, "seed", {}) for i, a in enumerate(SEEDS)],
                        root / "seeds.jsonl")
    cfg = TrainAnnotatorConfig(kind="generative", seeds=str(seeds), out_dir=str(root / "ann"), eval_fraction=0.0,
                               threads=2, ray_train=True, ray_cpus=2, generative=GenerativeTrainConfig(**SMALL))
    out = train_annotator(cfg, log=lambda s: None)
    assert (root / "ann.ray-train").is_dir() and (out / "config.json").is_file()
    return out


def test_trained_on_four_seeds_it_annotates_an_unseen_person(generative_dir):
    ann = load_trained(generative_dir)
    assert isinstance(ann, GenerativeAnnotator)
    meta = json.loads((generative_dir / "annotator.json").read_text())
    assert meta["kind"] == "generative" and meta["seed_docs"] == 4 and meta["final_loss"] < 0.5
    assert json.loads((generative_dir / "prompt.json").read_text()) == ann.template
    out = annotate_rows(ann, ["u"], [UNSEEN])[0]["annotated_text"]  # validated and anchored, as the pipeline does
    assert strip_lookups(out) == UNSEEN
    values = {t.value for t in extract_triples(out)}
    assert values & {"Perth", "Wexford Mills"}, out
    assert annotate_rows(ann, ["u"], [UNSEEN])[0]["annotated_text"] == out  # greedy: deterministic
    assert ann.annotator_id == f"generative:{meta['fingerprint']}"
    with pytest.raises(ValueError, match="holds a 'generative' annotator, not 'minilm'"):
        load_trained(generative_dir, kind="minilm")


def test_bad_base_model_settings_and_seeds_are_named():
    with pytest.raises(ValueError, match="base_model: '/no/such/model'"):
        fit_generative(SEEDS, GenerativeTrainConfig(base_model="/no/such/model"))
    with pytest.raises(ValueError, match="generative.batch_docs: must be >= 1, got 0"):
        fit_generative(SEEDS, GenerativeTrainConfig(batch_docs=0))
    with pytest.raises(ValueError, match="generative.epochs and generative.lr: must be > 0"):
        fit_generative(SEEDS, GenerativeTrainConfig(epochs=0))
    with pytest.raises(ValueError, match="longer than generative.max_tokens=8"):
        fit_generative(SEEDS, GenerativeTrainConfig(max_tokens=8), log=lambda s: None)


@pytest.mark.slow
def test_ray_data_annotation_and_the_text_command(generative_dir, ray_cluster, tmp_path, capsys):
    src = write_jsonl([Record("a", UNSEEN, "", "t"), Record("b", strip_lookups(SEEDS[0]), "", "t"), Record("empty", " ", "", "t")],
                      tmp_path / "in.jsonl")
    s = run_annotation(AnnotateConfig(input=str(src), output_dir=str(tmp_path / "out"), annotator="trained",
                                      trained_path=str(generative_dir), num_actors=1, batch_size=2,
                                      load_store=False, progress=False))
    assert s["annotated"] == 2 and s["rejects_by_reason"] == {"empty": 1} and s["lookups"] > 0
    assert s["annotator"].startswith("generative:")
    rows = [r for p in sorted((tmp_path / "out" / "annotated").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert all(strip_lookups(r["annotated_text"]) == r["text"] for r in rows) and len(rows) == 2

    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "x", "text": UNSEEN}) + "\n" + json.dumps({"id": "y", "text": ""}) + "\n")
    assert lmlm_main(["annotate-text", "--annotator", str(generative_dir), str(plain), str(tmp_path / "o.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert strip_lookups(lines[0]["annotated_text"]) == UNSEEN and "[dblookup(" in lines[0]["annotated_text"]
    assert lines[1]["annotated_text"] is None and lines[1]["error"].startswith("empty")
