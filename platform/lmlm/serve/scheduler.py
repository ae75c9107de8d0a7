"""The replica's scheduler: one thread runs a `DecodeBatch` step after step (continuous batching).

Requests wait in a bounded queue (`QueueFull` when it is full); before every step the waiting ones
are admitted while the batch has room, cancelled ones leave, and after it each row's new tokens are
handed to its request (streaming) and finished rows are answered at once.

Faults stay as small as they can. A request's own failure (its prompt, its progress callback, its
result) ends that request only; an answer that cannot be delivered (its event loop is closed) is
dropped; a metrics error ends nothing; any other error in an iteration (admission, cancellation,
step, hand-out) fails the requests that had left the queue with a `SchedulerError` (a 500 for the
app) and the loop goes on with an empty batch. If the thread ends all the same (an error escaping
that guard, a BaseException, or `stop`), every waiting and running request fails at once, `submit`
raises `SchedulerError`, and `alive` is False (the replica's health).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lmlm.generate.batch import DecodeBatch, Row
from lmlm.generate.params import GenerationParams
from lmlm.generate.state import SequenceState

log = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


class SchedulerError(RuntimeError):
    """The scheduler, not the request, failed: a server error (from `submit`: the thread has ended)."""


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
        try:
            self.loop.call_soon_threadsafe(set_)
        except RuntimeError:  # its event loop is closed: nobody is waiting for the answer
            pass


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
        self.jobs: dict[int, Job] = {}      # id -> every job submitted and not answered yet
        self.cond = threading.Condition()
        self.cancelled: Counter = Counter()
        self.stopped = False
        self.error: Optional[str] = None    # why the thread ended (set before its requests fail)
        self._metrics_failed = False
        self.thread = threading.Thread(target=self._loop, name="lmlm-scheduler", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        """Whether requests are being served: the thread runs and has not begun to end."""
        return self.error is None and self.thread.is_alive()

    def submit(self, jobs: list[Job]) -> None:
        """Queue all of `jobs` or none (QueueFull; SchedulerError once the thread has ended)."""
        with self.cond:
            if self.error is not None:
                raise SchedulerError(self.error)
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (at most {self.max_queue})")
            self.waiting.extend(jobs)
            self.jobs.update((id(j), j) for j in jobs)
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
        try:
            while self._iteration():
                pass
            self._end("the scheduler was stopped")
        except BaseException as e:  # noqa: BLE001 — escaped every guard: this replica serves no more
            log.critical("the scheduler thread died", exc_info=True)
            self._end(f"the scheduler thread died: {type(e).__name__}: {e}")

    def _end(self, reason: str) -> None:
        """Refuse new requests, and fail every waiting and running one at once."""
        with self.cond:
            self.error = self.error or reason
            self.waiting.clear()
        self._fail_taken(self.error)

    def _iteration(self) -> bool:
        """Cancellations, admissions, one step and its hand-out; False once stopped."""
        with self.cond:
            if not self.stopped and not self.waiting and not len(self.batch):
                self.cond.wait(timeout=self.IDLE_TICK_S)
            if self.stopped:
                return False
            dropped = [j for j in self.waiting if j.cancel_reason]
            if dropped:
                self.waiting = deque(j for j in self.waiting if not j.cancel_reason)
            admit = []
            while self.waiting and len(self.batch) + len(admit) < self.max_batch_size:
                admit.append(self.waiting.popleft())
            gone = [r for r in self.batch.rows if r.key.cancel_reason]
            for j in [*(r.key for r in gone), *dropped]:
                self.cancelled[j.cancel_reason] += 1
        new_tokens = 0
        try:
            self.batch.remove(gone)
            for j in [*(r.key for r in gone), *dropped]:
                self._answer(j, asyncio.CancelledError(j.cancel_reason))
            for j in admit:
                self._admit(j)
            new_tokens = self._step()
        except Exception as e:  # noqa: BLE001 — the batch may be half-updated: end its requests, keep serving
            log.exception("scheduler error; the running requests fail")
            self._fail_taken(f"scheduler error: {type(e).__name__}: {e}")
        self._metric("tick", len(self.waiting), len(self.batch), new_tokens)
        return True

    def _fail_taken(self, message: str) -> None:
        """Every request taken from the queue and not answered fails; the batch starts empty."""
        with self.cond:
            waiting = {id(j) for j in self.waiting}
            taken = [j for k, j in self.jobs.items() if k not in waiting]
        for j in taken:
            self._answer(j, SchedulerError(message))
        self.batch.remove(list(self.batch.rows))

    def _answer(self, job: Job, result: Any) -> None:
        self.jobs.pop(id(job), None)
        job.resolve(result)

    def _answer_row(self, r: Row) -> None:
        try:
            res = r.state.result()
        except Exception as e:  # noqa: BLE001 — this request's own error
            res = SchedulerError(f"result failed: {type(e).__name__}: {e}")
        self._answer(r.key, res)

    def _metric(self, name: str, *args) -> None:
        if self.metrics is None:
            return
        try:
            getattr(self.metrics, name)(*args)
        except Exception:  # noqa: BLE001 — metrics never fail a request
            if not self._metrics_failed:
                log.exception("metrics %s failed (reported once)", name)
            self._metrics_failed = True

    def _admit(self, job: Job) -> None:
        try:
            self.batch.add(self.engine.new_state(job.prompt, job.params), job)
        except Exception as e:  # noqa: BLE001 — this request's own error
            self._answer(job, e)

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
                self._metric("first_token", now - job.submitted)
            if job.on_progress is not None:
                try:
                    job.on_progress(r.state)
                except Exception as e:  # noqa: BLE001 — a broken stream ends its own request
                    r.state.fail(f"streaming failed: {type(e).__name__}: {e}")
        for r in step.finished:
            self._answer_row(r)
        failed = [r for r in self.batch.rows if r.state.done]  # a stream that failed above
        self.batch.remove(failed)
        for r in failed:
            self._answer_row(r)
        return sum(len(r.new_tokens) for r in step.progressed)
