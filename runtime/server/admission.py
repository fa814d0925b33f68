"""What a chat request must pass before it costs the server much memory or engine time.

- its prompt's size: refused from the number of characters alone when no tokenization could fit them in the
  context (`Tokenizer.max_chars_per_token`), then from its text's tokens, counted on the request's own thread
  (tokenizers' encode_batch lets the engine thread run meanwhile): the engine thread only ever tokenizes
  prompts whose text fits;
- room for its decoded images (`DecodedPixels`): decoded images wait in the queue until the engine turns them
  into embeddings, so the pixels decoded and not yet consumed are bounded server-wide; a request waits for
  room (until its deadline) before decoding, and at most a few images decode at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from PIL import Image

from ..errors import AerieError, ContextOverflowError
from ..pipeline import Pipeline
from ..prompt import Conversation, RawPrompt, prompt_ids
from .image_urls import EncodedImage, ImageLimits, decode
from .scheduler import RequestTimeout


def check_prompt_size(pipeline: Pipeline, turns: Conversation, n_images: int, limit: int) -> None:
    """ContextOverflowError if the conversation's text alone can't fit `limit` tokens (AerieError if it can't
    be a prompt at all)."""
    tokenizer = pipeline.tokenizer
    chars = len(turns.text) if isinstance(turns, RawPrompt) else sum(len(text) for _, text in turns)
    most = limit * tokenizer.max_chars_per_token
    if chars > most:
        raise ContextOverflowError(f"the prompt holds {chars:,} characters; this server takes at most {limit:,} "
                                   f"prompt tokens, which can't hold more than {most:,} characters: shorten the "
                                   "conversation")
    try:
        n = len(prompt_ids(tokenizer, pipeline.template, turns, [0] * n_images, pipeline.first_image_id))
    except ValueError as e:
        raise AerieError(str(e)) from None
    if n > limit:
        raise ContextOverflowError(f"the prompt's text alone is {n:,} tokens and this server takes at most {limit:,} "
                                   "(image tokens included): shorten the conversation")


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


MALLOC_TRIM = _malloc_trim()


def return_memory() -> None:
    """Give freed heap memory back to the system. glibc keeps what the handler threads' arenas freed (decoded
    images: hundreds of MB after a burst of large ones) unless asked."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


class DecodedPixels:
    """At most `budget` pixels of decoded images held at once, and at most `decoders` images decoding at once."""

    def __init__(self, budget: int, decoders: int = 2):
        self.budget = budget
        self.used = 0
        self.cond = threading.Condition()
        self.decoders = threading.BoundedSemaphore(decoders)

    @contextmanager
    def decoded(self, images: Sequence[EncodedImage], limits: ImageLimits, deadline: float,
                gone: Callable[[], bool]) -> Iterator[list[Image.Image]]:
        """The images decoded, their pixels held until the block ends (by then the engine has consumed them)."""
        pixels = sum(image.pixels for image in images)
        self.acquire(pixels, deadline, gone)
        decoded: list[Image.Image] = []
        try:
            for image in images:
                with self.decoders:
                    decoded.append(decode(image, limits))
            yield decoded
        finally:
            decoded.clear()
            with self.cond:
                self.used -= pixels
                self.cond.notify_all()
                idle = self.used == 0
            if idle:
                return_memory()

    def acquire(self, pixels: int, deadline: float, gone: Callable[[], bool]) -> None:
        with self.cond:
            while self.used and self.used + pixels > self.budget:  # alone, a request always gets its room
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestTimeout("the request waited past its time limit for room to decode its images; "
                                         "retry when the server is less busy")
                if gone():
                    raise ConnectionAbortedError("the client left while its request waited")
                self.cond.wait(min(left, 0.5))
            self.used += pixels
