"""Starting Ray: the one place the platform calls `ray.init`, with the environment its processes need.

`init_ray(address, num_cpus)` joins the cluster at `address` (else the env's RAY_ADDRESS), else starts
a local one on 127.0.0.1 with `num_cpus` logical CPUs (more than the cores is fine: actor pools and
trainers then do not wait on each other) and no dashboard. It is a no-op when this process already
has Ray. Worker output stays in Ray's log files: the driver prints its own progress.

`PROCESS_ENV` is what every process of the platform runs with: models only from local paths (no hub
downloads at run time) and no usage reporting; `set_process_env()` sets what the caller has not.
"""
from __future__ import annotations

import os

PROCESS_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "RAY_USAGE_STATS_ENABLED": "0"}


def set_process_env() -> None:
    for k, v in PROCESS_ENV.items():
        os.environ.setdefault(k, v)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    set_process_env()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # a local cluster's workers inherit this process's environment (PROCESS_ENV included)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
