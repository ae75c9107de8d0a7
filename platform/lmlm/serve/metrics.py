"""The replica's Prometheus metrics (Ray Serve's `ray.serve.metrics`, exported by Ray's metrics agent
with the prefix `ray_`).

    lmlm_queue_length            gauge      requests waiting for a row
    lmlm_running_batch_size      gauge      rows in the decoding batch
    lmlm_generated_tokens_total  counter    tokens taken (rate() = tokens/s)
    lmlm_tokens_per_second       gauge      the same, averaged over the last second or more
    lmlm_time_to_first_token_s   histogram  submit -> first token
    lmlm_lookups_total           counter    store lookups (rate() = lookups/s)
    lmlm_lookup_latency_s        histogram  one lookup_batch call
"""
from __future__ import annotations

import threading
import time

_LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class ServeMetrics:
    def __init__(self):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.queue = Gauge("lmlm_queue_length", description="requests waiting for a row")
        self.running = Gauge("lmlm_running_batch_size", description="rows in the decoding batch")
        self.generated = Counter("lmlm_generated_tokens", description="tokens generated (text, lookup and injected)")
        self.rate = Gauge("lmlm_tokens_per_second", description="tokens generated per second, last second or more")
        self.ttft = Histogram("lmlm_time_to_first_token_s", description="seconds from submit to first token",
                              boundaries=_LATENCY_BOUNDS)
        self.lookups_n = Counter("lmlm_lookups", description="fact-store lookups")
        self.lookup_s = Histogram("lmlm_lookup_latency_s", description="seconds per lookup_batch call",
                                  boundaries=_LATENCY_BOUNDS)
        self._lock = threading.Lock()
        self._window_start, self._window_tokens = time.monotonic(), 0

    def tick(self, waiting: int, running: int, new_tokens: int) -> None:
        """After every scheduler iteration (at least once a second, idle or not: Ray exports a
        gauge only while it is being set)."""
        self.queue.set(waiting)
        self.running.set(running)
        if new_tokens:
            self.generated.inc(new_tokens)
        with self._lock:
            self._window_tokens += new_tokens
            dt = time.monotonic() - self._window_start
            if dt >= 1.0:
                self.rate.set(self._window_tokens / dt)
                self._window_start, self._window_tokens = time.monotonic(), 0

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def lookups(self, n: int, seconds: float) -> None:
        self.lookups_n.inc(n)
        self.lookup_s.observe(seconds)
