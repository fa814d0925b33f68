"""One engine thread shared by every client: requests join the running batch between decode steps.

Callers (the HTTP handlers in runtime/server/http.py, the Triton model in runtime/triton/stream_model.py)
hand a `Job` to `Scheduler.submit` from any thread. A job submitted without its images (`ready=False`)
holds its place in the queue while its caller decodes them, and joins the line with `Scheduler.ready`:
so a full queue is refused before any image is decoded. The scheduler's own thread is the only one that touches
the Pipeline: when a decoder slot is about to free up it prepares the next job (images through the vision
engine, the conversation to ids) and submits it to the Generator, and while anything is in flight it runs
`Generator.step()`, handing every job its text as it comes. Between steps it drops jobs whose deadline
passed or whose client went away, so their slots go to the next in line.

A job hears about itself through `emit(kind, value)`, called on the engine thread:
    "started" Prepared   the job holds a slot's place (its prompt fitted)
    "text"    str        the next piece of the answer
    "done"    Answer     the end, with timings
    "error"   AerieError the end, without an answer (nothing else follows)
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from ..errors import AerieError, ContextOverflowError
from ..generate import Generation
from ..pipeline import Pipeline, Prepared
from ..prompt import Conversation
from ..sampling import SamplingParams

log = logging.getLogger("aerie.server")


class QueueFull(AerieError):
    """Every place in the queue is taken."""


class RequestTimeout(AerieError):
    """The request ran past its deadline."""


class EngineFailure(AerieError):
    """The engine failed while running a request (not the request's fault)."""


class ShuttingDown(AerieError):
    """The server is stopping (or its engine loop died) and takes no more requests."""


@dataclass(eq=False)
class Job:
    prompt: Conversation  # (role, text) turns, or a RawPrompt
    images: list[Image.Image]
    params: SamplingParams
    emit: Callable[[str, Any], None]
    deadline: float = float("inf")  # time.monotonic() by which it must end
    ready: bool = True  # False: submitted for its place in the queue, images still to come (Scheduler.ready)
    cancelled: bool = False  # set from any thread when the client is gone
    seq: Generation | None = None
    prepared: Prepared | None = None
    submitted: float = field(default_factory=time.monotonic)


class Scheduler:
    """Runs jobs on `pipeline` from one thread. At most `max_queue` jobs wait for a decoder slot; more are
    refused with QueueFull. Prompts over `max_prompt_tokens` (text and image tokens) are refused."""

    def __init__(self, pipeline: Pipeline, max_queue: int = 32, max_prompt_tokens: int | None = None):
        self.pipeline = pipeline
        self.generator = pipeline.generator
        self.max_queue = max_queue
        self.max_prompt_tokens = max_prompt_tokens or pipeline.decoder.max_length
        self.inbox: deque[Job] = deque()
        self.pending: set[Job] = set()  # submitted, images not ready yet: they count in the queue
        self.active: dict[Generation, Job] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.failure: str | None = None  # set if the loop itself died
        self.thread = threading.Thread(target=self.run, name="aerie-engine", daemon=True)

    # --- any thread ----------------------------------------------------------------------------------

    def start(self) -> "Scheduler":
        self.thread.start()
        return self

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping or self.failure:
                raise ShuttingDown("the server is shutting down or its engine has stopped; try again later")
            if self.depth() >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting); retry shortly")
            if job.ready:
                self.inbox.append(job)
                self.cond.notify()
            else:
                self.pending.add(job)

    def ready(self, job: Job, images: list[Image.Image]) -> None:
        """A job submitted with ready=False has its images: it joins the line."""
        with self.cond:
            self.pending.discard(job)
            if job.cancelled:
                return
            job.images, job.ready = images, True
            self.inbox.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job at the next chance."""
        job.cancelled = True
        with self.cond:
            self.pending.discard(job)
            self.cond.notify()

    def depth(self) -> int:
        """Requests waiting for a decoder slot (those still decoding their images included)."""
        return len(self.inbox) + len(self.pending) + len(self.generator.waiting)

    def running(self) -> int:
        return len(self.generator.running)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.stopping

    def stop(self, timeout: float = 10.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # --- the engine thread ---------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                with self.cond:
                    while not (self.stopping or self.inbox or self.generator.busy):
                        self.cond.wait()
                    if self.stopping:
                        break
                    admitted = self.admit()
                for job in admitted:
                    self.prepare(job)
                self.drop_expired()
                if self.generator.busy:
                    self.step()
        except BaseException:  # the loop must never die silently: every waiting client hears of it
            self.failure = traceback.format_exc()
            log.error("the engine loop stopped:\n%s", self.failure)
        finally:
            self.fail_all(ShuttingDown("the server is shutting down" if self.failure is None else
                                       "the engine loop stopped; see the server log"))

    def admit(self) -> list[Job]:
        """Jobs to prepare now: as many as will find a free slot (prepared jobs hold their image rows, so
        the rest wait in the inbox as decoded images only). Called with the lock held."""
        room = len(self.generator.free_slots) - len(self.generator.waiting)
        admitted = []
        while self.inbox and room > 0:
            job = self.inbox.popleft()
            if not job.cancelled:
                admitted.append(job)
                room -= 1
        return admitted

    def prepare(self, job: Job) -> None:
        if time.monotonic() > job.deadline:
            self.deliver(job, "error", RequestTimeout("the request waited in the queue past its time limit; "
                                                      "retry when the server is less busy"))
            return
        try:
            try:
                prepared = self.pipeline.prepare(job.prompt, job.images, job.params)
            finally:
                job.images = []  # rows now (or refused): the decoded images' memory goes back
            n = prepared.request.input_ids.size
            if n > self.max_prompt_tokens:
                raise ContextOverflowError(
                    f"the prompt needs {n} tokens (text and image tokens) and this server takes at most "
                    f"{self.max_prompt_tokens}: shorten the conversation or send fewer or smaller images")
            job.seq = self.generator.submit(prepared.request)
        except AerieError as e:
            self.deliver(job, "error", e)
            return
        except Exception as e:  # an engine fault, not the request's: log it, answer 500, keep serving
            log.error("preparing a request failed:\n%s", traceback.format_exc())
            self.deliver(job, "error", EngineFailure(f"the engine failed on this request ({type(e).__name__}: {e})"))
            return
        job.prepared = prepared
        self.active[job.seq] = job
        self.deliver(job, "started", prepared)

    def drop_expired(self) -> None:
        now = time.monotonic()
        with self.cond:
            expired = [job for job in self.inbox if job.cancelled or now > job.deadline]
            for job in expired:
                self.inbox.remove(job)
        for job in list(self.active.values()):
            if job.cancelled or now > job.deadline:
                self.generator.cancel(job.seq)
                del self.active[job.seq]
                expired.append(job)
        for job in expired:
            if not job.cancelled:
                self.deliver(job, "error", RequestTimeout(
                    "the request ran past the server's time limit; ask for fewer max_tokens or retry later"))

    def step(self) -> None:
        try:
            events = self.generator.step()
        except Exception as e:
            # A prefill or decode failed: the jobs in slots are in an unknown state; the waiting ones are fine.
            log.error("an engine step failed:\n%s", traceback.format_exc())
            error = EngineFailure(f"the engine failed while generating ({type(e).__name__}: {e})")
            for seq, job in list(self.active.items()):
                if seq not in self.generator.waiting:
                    self.generator.cancel(seq)
                    del self.active[seq]
                    self.deliver(job, "error", error)
            return
        for seq, piece in events:
            job = self.active.get(seq)
            if job is not None:
                self.deliver(job, "text", piece)
        for seq in [seq for seq in self.active if seq.done]:
            job = self.active.pop(seq)
            self.deliver(job, "done", job.prepared.answer(seq.result))

    def deliver(self, job: Job, kind: str, value: Any) -> None:
        """Hand an event to the job's client; a client that can't take it is treated as gone."""
        if job.cancelled:
            return
        try:
            job.emit(kind, value)
        except Exception:
            log.warning("a client could not take its %s event; dropping its request", kind, exc_info=True)
            job.cancelled = True

    def fail_all(self, error: AerieError) -> None:
        with self.cond:
            self.stopping = True
            jobs = [*self.inbox, *self.pending, *self.active.values()]
            self.inbox.clear()
            self.pending.clear()
        for seq in list(self.active):
            self.generator.cancel(seq)
        self.active.clear()
        for job in jobs:
            self.deliver(job, "error", error)
