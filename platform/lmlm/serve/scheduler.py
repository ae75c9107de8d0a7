"""The replica's scheduler: the bridge between the event loop and the engine's thread.

The engine (`lmlm.generate.Engine`) owns admission, the waiting queue and its bound (`QueueFull`)
and the decoding step. `submit` and `cancel` hand requests and cancellations to it from the event
loop; one thread calls `engine.step()` while it has unfinished requests, hands each row's progress
to its request (streaming) and answers finished rows at once (a cancelled one with CancelledError).

Faults stay as small as they can. A request's own failure (its progress callback, its result) ends
that request only; an answer that cannot be delivered (its event loop is closed) is dropped; a
metrics error ends nothing; any other error in an iteration (a step, a hand-out) fails the requests
that had left the queue with a `SchedulerError` (a 500 for the app) and the loop goes on with an
empty batch. If the thread ends all the same (an error escaping that guard, a BaseException, or
`stop`), every waiting and running request fails at once, `submit` raises `SchedulerError`, and
`alive` is False (the replica's health).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lmlm.generate.batch import Row
from lmlm.generate.engine import Engine, Request
from lmlm.generate.params import GenerationParams
from lmlm.generate.state import SequenceState

__all__ = ["Job", "Scheduler", "SchedulerError", "SchedulerStats"]
log = logging.getLogger(__name__)


class SchedulerError(RuntimeError):
    """The scheduler, not the request, failed: a server error (from `submit`: the thread has ended)."""


@dataclass(eq=False)  # compared and hashed by identity: the job is its request's key in the engine
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
    cancel_reason: Optional[str] = None   # set by `Scheduler.cancel`; the row leaves at the next step
    prompt_ids: Optional[list[int]] = None  # the prompt's ids from validation (None: the engine encodes it)

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
    IDLE_TICK_S = 1.0  # an idle loop still wakes this often (metrics)

    def __init__(self, engine: Engine, metrics=None):
        self.engine, self.metrics = engine, metrics
        self.jobs: set[Job] = set()         # every job submitted and not answered yet
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
        """Queue all of `jobs` or none (the engine's QueueFull or ParamsError; SchedulerError once
        the thread has ended)."""
        with self.cond:
            if self.error is not None:
                raise SchedulerError(self.error)
            self.engine.add_requests([Request(j.prompt, j.params, j, j.prompt_ids) for j in jobs])
            self.jobs.update(jobs)
            self.cond.notify()

    def cancel(self, job: Job, reason: str) -> None:
        with self.cond:
            if job.cancel_reason is None and not job.future.done():
                job.cancel_reason = reason
                self.engine.abort(job)
            self.cond.notify()

    def stats(self) -> SchedulerStats:
        with self.cond:
            return SchedulerStats(self.engine.num_waiting, self.engine.num_running, dict(self.cancelled))

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
            jobs = list(self.jobs)
        for j in jobs:
            self._answer(j, SchedulerError(self.error))
        self.engine.reset(waiting=True)

    def _iteration(self) -> bool:
        """One engine step and its hand-out; False once stopped."""
        with self.cond:
            if not self.stopped and not self.engine.has_unfinished():
                self.cond.wait(timeout=self.IDLE_TICK_S)
            if self.stopped:
                return False
        new_tokens = 0
        try:
            if self.engine.has_unfinished():
                new_tokens = self._step()
        except Exception as e:  # noqa: BLE001 — the batch may be half-updated: end its requests, keep serving
            log.exception("scheduler error; the running requests fail")
            self._fail_taken(f"scheduler error: {type(e).__name__}: {e}")
        self._metric("tick", self.engine.num_waiting, self.engine.num_running, new_tokens)
        return True

    def _fail_taken(self, message: str) -> None:
        """Every request taken from the queue and not answered fails; the batch starts empty."""
        with self.cond:
            waiting = self.engine.waiting_keys()
            taken = [j for j in self.jobs if j not in waiting]
        self.engine.reset()
        for j in taken:
            self._answer(j, SchedulerError(message))

    def _answer(self, job: Job, result: Any) -> None:
        self.jobs.discard(job)
        job.resolve(result)

    def _answer_row(self, r: Row) -> None:
        job = r.key
        if r.state.finish_reason == "abort":
            self.cancelled[job.cancel_reason] += 1
            self._answer(job, asyncio.CancelledError(job.cancel_reason))
            return
        try:
            res = r.state.result()
        except Exception as e:  # noqa: BLE001 — this request's own error
            res = SchedulerError(f"result failed: {type(e).__name__}: {e}")
        self._answer(job, res)

    def _metric(self, name: str, *args) -> None:
        if self.metrics is None:
            return
        try:
            getattr(self.metrics, name)(*args)
        except Exception:  # noqa: BLE001 — metrics never fail a request
            if not self._metrics_failed:
                log.exception("metrics %s failed (reported once)", name)
            self._metrics_failed = True

    def _step(self) -> int:
        """One engine step and its hand-out; returns the tokens taken. A stream that fails here
        fails its row, which the next step retires (and this loop then answers)."""
        step = self.engine.step()
        now = time.monotonic()
        for r in step.stepped:
            r.key.batch_size = max(r.key.batch_size, len(step.stepped))
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
        return sum(len(r.new_tokens) for r in step.progressed)
