"""Small real components for tests and benchmarks, kept out of the library's own modules (as
`transformers.testing_utils`): nothing under `lmlm` outside this package imports it.

- `redis_cluster`: a local Redis Cluster of real redis-server processes (LocalCluster);
- `tiny`: a random LLaMA-style model, the platform's tokenizer trained on synthetic fact text;
- `annotator_heldout`: documents in phrasings and name pools the annotators' seeds never use.
"""
