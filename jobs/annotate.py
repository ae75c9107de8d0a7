"""Ray job: the `annotate` stage of the pipeline alone (same config file as jobs/pipeline.py).

    python jobs/annotate.py --config jobs/configs/demo.yaml [--set key.path=value ...]
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- python jobs/annotate.py --config FILE
"""
import sys

from lmlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main(stages=("annotate",)))
