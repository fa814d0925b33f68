"""The generation loop over any `DecoderEngine`: prefill, then one batched decode step at a time for every
running request, sampling in numpy, stop strings and EOS, text streamed piece by piece.

`Generator.submit` may be called between `step`s (a server adding requests to the running batch:
continuous batching). A request waits while every engine slot is busy and is prefilled at the next
step after one frees up. Each request keeps its own sampler state, so a batch gives every request the
tokens it would get alone.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from .backends.base import DecoderEngine, check_prompt
from .detokenize import TextStream
from .sampling import SamplingParams, make_rng, sample_token
from .tokenizer import Tokenizer


@dataclass
class Request:
    """Prompt ids (image positions as vocab_size + k), the image table they address, and sampling."""

    input_ids: np.ndarray
    image_table: np.ndarray | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    return_logits: bool = False  # keep the logits every token was chosen from (Result.logits)


@dataclass
class Result:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string), "length" (max_new_tokens or the context is full)
    prompt_tokens: int
    prefill_s: float  # prefill and the first token
    decode_s: float  # every later token
    queued_s: float  # waiting for a free slot
    logits: np.ndarray | None = None  # [chosen tokens, vocab] float32 when the request asked for them


class Generation:
    """One request in flight: its slot, sampler, emitted tokens and text stream."""

    def __init__(self, request: Request, tokenizer: Tokenizer, stop: Sequence[str]):
        self.request = request
        self.input_ids = np.asarray(request.input_ids, np.int64).reshape(-1)
        self.params = request.params
        self.rng = None if self.params.greedy else make_rng(self.params.seed)
        self.stream = TextStream(tokenizer, (*stop, *self.params.stop))
        # Every id the repetition penalty looks at: the prompt, then the tokens as they come.
        self.seen = np.concatenate([self.input_ids, np.zeros(self.params.max_new_tokens, np.int64)])
        self.tokens: list[int] = []
        self.logits: list[np.ndarray] | None = [] if request.return_logits else None
        self.slot: int | None = None
        self.next_token: int | None = None  # sampled, not yet fed to the engine
        self.finish_reason: str | None = None
        self.result: Result | None = None
        self.times = {"submitted": time.perf_counter()}

    @property
    def done(self) -> bool:
        return self.result is not None

    def choose(self, logits: np.ndarray) -> int:
        if self.logits is not None:
            self.logits.append(np.array(logits, np.float32))
        seen = self.seen[: self.input_ids.size + len(self.tokens)] if self.params.repetition_penalty != 1.0 else None
        return sample_token(logits, self.params, self.rng, seen)


class Generator:
    """Runs requests on `engine` in batches of up to `engine.max_batch`."""

    def __init__(self, engine: DecoderEngine, tokenizer: Tokenizer, eos_ids: Iterable[int], stop: Sequence[str] = ()):
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.stop = tuple(stop)
        self.waiting: deque[Generation] = deque()
        self.running: list[Generation] = []
        self.free_slots = list(range(engine.max_batch))

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def submit(self, request: Request) -> Generation:
        """Queue a request; it starts at the next `step`. A prompt that can't run (longer than the context,
        ids outside the vocabulary and image table) fails here, before any work."""
        e = self.engine
        check_prompt(np.asarray(request.input_ids), request.image_table, e.vocab_size, e.hidden_size, e.max_length)
        seq = Generation(request, self.tokenizer, self.stop)
        self.waiting.append(seq)
        return seq

    def step(self) -> list[tuple[Generation, str]]:
        """Prefill waiting requests into free slots, then decode one token for every running request.
        Returns the text pieces produced, in order, as (sequence, piece); a finished sequence has `.result`."""
        events: list[tuple[Generation, str]] = []
        while self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot = self.free_slots.pop(0)
            seq.times["started"] = time.perf_counter()
            token = seq.choose(self.prefill(seq))
            seq.times["first_token"] = time.perf_counter()
            self.accept(seq, token, events)
        stepping = [seq for seq in self.running if seq.next_token is not None]
        if stepping:
            logits = self.decode_one_token(stepping)
            for seq, row in zip(stepping, logits):
                self.accept(seq, seq.choose(row), events)
        return events

    def prefill(self, seq: Generation) -> np.ndarray:
        self.running.append(seq)
        try:
            return self.engine.prefill(seq.slot, seq.input_ids, seq.request.image_table)
        except Exception:
            self.running.remove(seq)
            self.free_slots.append(seq.slot)
            raise

    def decode_one_token(self, seqs: list[Generation]) -> np.ndarray:
        slots = [seq.slot for seq in seqs]
        tokens = np.array([seq.next_token for seq in seqs], np.int64)
        for seq in seqs:
            seq.next_token = None
        return self.engine.decode(slots, tokens)

    def accept(self, seq: Generation, token: int, events: list[tuple[Generation, str]]) -> None:
        """Take a sampled token: end at EOS, else emit its text and end at a stop string or a limit."""
        if token in self.eos_ids:
            self.finish(seq, "stop", events)
            return
        seq.seen[seq.input_ids.size + len(seq.tokens)] = token
        seq.tokens.append(token)
        piece = seq.stream.push(token)
        if piece:
            events.append((seq, piece))
        if seq.stream.stopped:
            self.finish(seq, "stop", events)
        elif len(seq.tokens) >= seq.params.max_new_tokens or seq.input_ids.size + len(seq.tokens) > self.engine.max_length:
            # The last check: feeding this token would need one more position than the context has.
            self.finish(seq, "length", events)
        else:
            seq.next_token = token

    def cancel(self, seq: Generation) -> None:
        """Drop a request before its end (its client went away or its time ran out), freeing its slot;
        a running one gets a result with finish_reason "cancelled"."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.finish(seq, "cancelled", [])

    def finish(self, seq: Generation, reason: str, events: list[tuple[Generation, str]]) -> None:
        rest = seq.stream.finish()
        if rest:
            events.append((seq, rest))
        self.engine.release(seq.slot)
        self.running.remove(seq)
        self.free_slots.append(seq.slot)
        now = time.perf_counter()
        t = seq.times
        first = t.get("first_token", now)
        seq.result = Result(seq.stream.text, seq.tokens, reason, seq.input_ids.size,
                            prefill_s=first - t["started"], decode_s=now - first, queued_s=t["started"] - t["submitted"],
                            logits=None if seq.logits is None else np.stack(seq.logits))

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """Every request to the end, batched; results in request order."""
        seqs = [self.submit(r) for r in requests]
        while not all(seq.done for seq in seqs):
            self.step()
        return [seq.result for seq in seqs]

    def stream(self, request: Request) -> Iterator[str]:
        """The request's text, piece by piece, as it is generated (other requests in flight go on too)."""
        seq = self.submit(request)
        while not seq.done:
            for owner, piece in self.step():
                if owner is seq:
                    yield piece
