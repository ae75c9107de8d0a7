"""The replica's scheduler: one thread runs a `DecodeBatch` step after step (continuous batching).

Requests wait in a bounded queue (`QueueFull` when it is full); before every step the waiting ones
are admitted while the batch has room, cancelled ones leave, and after it each row's new tokens are
handed to its request (streaming) and finished rows are answered at once. A request's failure is
its own: the loop never stops for one.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lmlm.generate.batch import DecodeBatch
from lmlm.generate.params import GenerationParams
from lmlm.generate.state import SequenceState


class QueueFull(Exception):
    pass


@dataclass
class Job:
    """One prompt's generation; `future` gets its GenerationResult (or the exception that ended it)."""

    prompt: str
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_progress: Optional[Callable[[SequenceState], None]] = None  # called in the scheduler thread
    submitted: float = field(default_factory=time.monotonic)
    first_token: Optional[float] = None
    batch_size: int = 0                   # most rows decoded together while this job ran
    cancel_reason: Optional[str] = None   # set by `Scheduler.cancel`; the row leaves before the next step

    @property
    def ttft_s(self) -> Optional[float]:
        """Seconds from submit to the first token taken (None before it)."""
        return None if self.first_token is None else round(self.first_token - self.submitted, 4)

    def resolve(self, result: Any) -> None:
        def set_():
            if self.future.done():
                return
            if isinstance(result, asyncio.CancelledError):
                self.future.cancel()
            elif isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)
        self.loop.call_soon_threadsafe(set_)


@dataclass
class SchedulerStats:
    waiting: int
    running: int
    cancelled: dict


class Scheduler:
    IDLE_TICK_S = 1.0  # an idle loop still wakes this often (metrics, cancelled waiting requests)

    def __init__(self, engine, max_batch_size: int, max_queue: int, prefill_chunk: int = 256, metrics=None):
        self.engine, self.max_batch_size, self.max_queue = engine, max_batch_size, max_queue
        self.batch = DecodeBatch(engine, prefill_chunk)
        self.metrics = metrics
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.cancelled: Counter = Counter()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="lmlm-scheduler", daemon=True)
        self.thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of `jobs` or none (QueueFull)."""
        with self.cond:
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (at most {self.max_queue})")
            self.waiting.extend(jobs)
            self.cond.notify()

    def cancel(self, job: Job, reason: str) -> None:
        with self.cond:
            if job.cancel_reason is None and not job.future.done():
                job.cancel_reason = reason
            self.cond.notify()

    def stats(self) -> SchedulerStats:
        with self.cond:
            return SchedulerStats(len(self.waiting), len(self.batch), dict(self.cancelled))

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.thread.join(timeout=10)

    # ---------------------------------------------------------------- the loop (scheduler thread)
    def _loop(self) -> None:
        while True:
            with self.cond:
                if not self.stopped and not self.waiting and not len(self.batch):
                    self.cond.wait(timeout=self.IDLE_TICK_S)
                if self.stopped:
                    return
                dropped = [j for j in self.waiting if j.cancel_reason]
                if dropped:
                    self.waiting = deque(j for j in self.waiting if not j.cancel_reason)
                admit = []
                while self.waiting and len(self.batch) + len(admit) < self.max_batch_size:
                    admit.append(self.waiting.popleft())
                gone = [r for r in self.batch.rows if r.key.cancel_reason]
                for j in [*(r.key for r in gone), *dropped]:
                    self.cancelled[j.cancel_reason] += 1
            self.batch.remove(gone)
            for j in [*(r.key for r in gone), *dropped]:
                j.resolve(asyncio.CancelledError(j.cancel_reason))
            for j in admit:
                self._admit(j)
            new_tokens = 0
            try:
                new_tokens = self._step()
            except Exception as e:  # noqa: BLE001 — a bug in bookkeeping must not stop the replica
                for r in self.batch.rows:
                    r.state.fail(f"scheduler error: {type(e).__name__}: {e}")
                    r.key.resolve(r.state.result())
                self.batch.remove(list(self.batch.rows))
            if self.metrics is not None:
                self.metrics.tick(len(self.waiting), len(self.batch), new_tokens)

    def _admit(self, job: Job) -> None:
        try:
            self.batch.add(self.engine.new_state(job.prompt, job.params), job)
        except Exception as e:  # noqa: BLE001 — this request's own error
            job.resolve(e)

    def _step(self) -> int:
        """One decoding step; returns the tokens taken."""
        if not len(self.batch):
            return 0
        n = len(self.batch)
        for r in self.batch.rows:
            r.key.batch_size = max(r.key.batch_size, n)
        step = self.batch.step()
        now = time.monotonic()
        for r in step.progressed:
            job = r.key
            if job.first_token is None:
                job.first_token = now
                if self.metrics is not None:
                    self.metrics.first_token(now - job.submitted)
            if job.on_progress is not None:
                try:
                    job.on_progress(r.state)
                except Exception as e:  # noqa: BLE001 — a broken stream ends its own request
                    r.state.fail(f"streaming failed: {type(e).__name__}: {e}")
        for r in step.finished:
            r.key.resolve(r.state.result())
        failed = [r for r in self.batch.rows if r.state.done]  # a stream that failed above
        self.batch.remove(failed)
        for r in failed:
            r.key.resolve(r.state.result())
        return sum(len(r.new_tokens) for r in step.progressed)
