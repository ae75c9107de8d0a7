"""Ray job: every stage of the pipeline in order, skipping stages whose outputs exist.

    python jobs/pipeline.py --config jobs/configs/demo.yaml [--set key.path=value ...]
    ray job submit --working-dir . --runtime-env infra/runtime_env.yaml -- python jobs/pipeline.py --config FILE
"""
import sys

from lmlm.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
