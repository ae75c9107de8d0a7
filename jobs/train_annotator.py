"""Ray job: the `train_annotator` stage of the pipeline alone (same config file as jobs/pipeline.py).

    python jobs/train_annotator.py --config jobs/configs/demo.yaml [--set key.path=value ...]
    python jobs/train_annotator.py --config jobs/configs/demo.yaml --set train_annotator.kind=minilm \
        --set train_annotator.ray_train=true      # the minilm annotator, trained as a Ray Train job
    python jobs/train_annotator.py --config jobs/configs/demo.yaml --set train_annotator.kind=generative \
        --set train_annotator.seed_docs=100 --set train_annotator.threads=2   # SmolLM2 + LoRA (~15 min)
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- python jobs/train_annotator.py --config FILE
"""
import sys

from lmlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main(stages=("train_annotator",)))
