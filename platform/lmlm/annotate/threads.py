"""torch intra-op threads of annotators: `use_threads(n)` in a process that annotates (a Ray actor,
a command), `torch_threads(n)` around training (restored after it). None or 0 leaves torch's setting."""
from __future__ import annotations

from contextlib import contextmanager

import torch


def use_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


@contextmanager
def torch_threads(n: int | None):
    """torch intra-op threads set to n inside the block, restored after it."""
    prev = torch.get_num_threads()
    use_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
