"""`Pipeline(engine_dir)`: an engine directory answering questions about images.

    pipe = Pipeline("out/eve-tiny")
    pipe.generate("What colour is the shape?", images="shapes.png")                  # -> text
    for piece in pipe.generate("Describe it.", images="shapes.png", stream=True): ...  # -> text as it comes
    pipe.generate_batch(["What colour?", "How many?"], images=["a.png", "b.png"])
    pipe.chat([{"role": "user", "content": [{"type": "image", "path": "a.png"}, {"type": "text", "text": "Colour?"}]}])
    chat = pipe.chat(); chat.ask("What is this?", images="a.png"); chat.ask("And its colour?")

A prompt is text, (role, text) turns, or OpenAI / Hugging Face chat messages (runtime/messages.py), all put
in the chat template; or `RawPrompt(text)` (runtime/prompt.py), text continued as written. `images` is one
image or a list: a path, bytes, a PIL image, a numpy HWC uint8 array, or a data: URL (http(s) URLs once
`allow_remote_images` is set).

The manifest is verified first. Images are loaded, hashed, preprocessed per the manifest and run through
the vision engine (one image's tiles in one batch), unless the image cache already holds their rows. The
prompt is templated and tokenized with image ids from `first_id` on (DESIGN.md), and the generation loop
(runtime/generate.py) runs it on the decoder engine.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import resource
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import numpy as np
from PIL import Image

from .backends.base import DecoderEngine, VisionEngine, check_prompt
from .errors import AerieError, ImageError, ManifestError
from .generate import Generation, Generator, Request, Result
from .image_cache import ImageCache, image_key
from .image_io import DEFAULT_MAX_PIXELS, ImageSource, load_image
from .manifest import Manifest, verify
from .messages import conversation as parse_conversation, is_messages
from .preprocess import preprocess_image
from .prompt import Conversation, RawPrompt, prompt_ids
from .sampling import SamplingParams
from .templates import Turn, get_template, place_images
from .tokenizer import Tokenizer

Prompt = Union[str, Sequence[Turn], list[dict], RawPrompt]  # text, (role, text) turns, chat messages, or raw text
ImageInput = Union[ImageSource, np.ndarray]  # one image as a caller gives it
Images = Union[ImageInput, Sequence[ImageInput]]  # one image or several
URL_PREFIXES = ("data:", "http://", "https://", "file://")
ANY_NETWORK = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def open_vision(engine_dir: Path, part: dict, device: str, threads: int | None) -> VisionEngine:
    """The vision engine the manifest's part names; each backend is imported only when chosen."""
    if part["backend"] == "ort":
        from .backends.ort_vision import OrtVisionEngine

        return OrtVisionEngine(engine_dir / part["model"], device, threads)
    if part["backend"] == "tensorrt":
        from .backends.tensorrt_vision import TensorRTVisionEngine

        return TensorRTVisionEngine(engine_dir / part["plan"])
    raise ManifestError(f"vision backend {part['backend']!r} is not one this runtime runs (ort, tensorrt); rebuild the engine")


def open_decoder(engine_dir: Path, part: dict, device: str, threads: int | None, max_batch: int,
                 max_length: int | None) -> DecoderEngine:
    if part["backend"] == "ort":
        from .backends.ort_decoder import OrtDecoder

        return OrtDecoder(engine_dir, part, max_batch=max_batch, max_length=max_length, threads=threads, device=device)
    if part["backend"] == "trtllm":
        from .backends.trtllm_decoder import TrtllmDecoder

        return TrtllmDecoder(engine_dir, part, max_batch=max_batch)
    raise ManifestError(f"decoder backend {part['backend']!r} is not one this runtime runs (ort, trtllm); rebuild the engine")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**2 if sys.platform == "darwin" else 1024)


def image_list(images: Images | None) -> list[ImageInput]:
    """One image or several, as a list: a path string is one image, not its characters."""
    if images is None:
        return []
    if isinstance(images, (str, bytes, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    return list(images)


def array_image(array: np.ndarray) -> Image.Image:
    """A numpy image as PIL, imageio and OpenCV (after BGR to RGB) give them: height x width (x channels), uint8."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(f"a numpy image must be uint8 of shape (height, width, 3), (height, width, 4) or "
                         f"(height, width), got {array.dtype} {array.shape}; for floats in 0..1 pass "
                         "(array * 255).round().astype(np.uint8), for channels first array.transpose(1, 2, 0)")
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


@dataclass
class Answer:
    """One request's text, tokens and where the time went."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    images: int
    cached_images: int
    preprocess_s: float
    vision_s: float
    prefill_s: float  # the prompt and the first token
    decode_s: float  # every later token
    prompt_ids: np.ndarray | None = None  # the prompt as the decoder saw it (image positions as first_id + k)
    logits: np.ndarray | None = None  # [chosen tokens, vocab], when asked for (run(..., logits=True))
    peak_rss_mb: float = field(default_factory=peak_rss_mb)

    @property
    def decode_tokens_per_s(self) -> float:
        n = len(self.token_ids) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    @property
    def time_to_first_token_s(self) -> float:
        return self.preprocess_s + self.vision_s + self.prefill_s

    def timings(self) -> dict:
        return {
            "preprocess_s": round(self.preprocess_s, 4), "vision_s": round(self.vision_s, 4),
            "prefill_s": round(self.prefill_s, 4), "decode_s": round(self.decode_s, 4),
            "time_to_first_token_s": round(self.time_to_first_token_s, 4),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2), "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


@dataclass
class Prepared:
    """A request ready for the decoder, with the time its images took."""

    request: Request
    images: int
    cached_images: int
    preprocess_s: float
    vision_s: float

    def answer(self, result: Result) -> Answer:
        return Answer(result.text, result.token_ids, result.finish_reason, result.prompt_tokens, self.images,
                      self.cached_images, self.preprocess_s, self.vision_s, result.prefill_s, result.decode_s,
                      self.request.input_ids, result.logits)


class Stream:
    """The answer's text piece by piece as it is generated; `.answer` is set once the iteration has ended.
    Other requests in flight on the same generator advance too."""

    def __init__(self, generator: Generator, seq: Generation, prepared: Prepared,
                 on_end: Callable[[Answer], None] | None = None):
        self.generator, self.seq, self.prepared, self.on_end = generator, seq, prepared, on_end
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            while not self.seq.done:
                for owner, piece in self.generator.step():
                    if owner is self.seq:
                        yield piece
        finally:
            if not self.seq.done:  # the reader stopped early (or a step failed): free the slot
                self.generator.cancel(self.seq)
        self.answer = self.prepared.answer(self.seq.result)
        if self.on_end is not None:
            self.on_end(self.answer)


class Pipeline:
    """An engine directory, verified and opened. Not thread-safe: one caller at a time."""

    allow_remote_images = False  # set to True to let http(s) image URLs be downloaded

    def __init__(self, engine_dir: str | Path, device: str = "cpu", threads: int | None = None, max_batch: int = 4,
                 max_length: int | None = None, cache_bytes: int = 256 * 1024**2, verify_checksums: bool = True,
                 vision: VisionEngine | None = None):
        engine_dir = Path(engine_dir)
        manifest = verify(engine_dir, checksums=verify_checksums)
        if manifest.pending:
            raise ManifestError(f"{engine_dir}: the engine is not finished: {'; '.join(manifest.pending)}")
        tokenizer = Tokenizer.from_dir(engine_dir / manifest.tokenizer)
        # `vision` replaces the manifest's vision engine (a Triton model serving it, runtime/triton).
        if vision is None:
            vision = open_vision(engine_dir, manifest.part("vision"), device, threads)
        decoder = open_decoder(engine_dir, manifest.part("decoder"), device, threads, max_batch, max_length)
        self.assemble(manifest, tokenizer, vision, decoder, cache_bytes, engine_dir)

    @classmethod
    def from_engines(cls, manifest: Manifest, tokenizer: Tokenizer, vision: VisionEngine, decoder: DecoderEngine,
                     cache_bytes: int = 256 * 1024**2) -> "Pipeline":
        """A pipeline on engines opened elsewhere (the PyTorch model's: models/engines.py), described by `manifest`."""
        pipeline = cls.__new__(cls)
        pipeline.assemble(manifest, tokenizer, vision, decoder, cache_bytes, None)
        return pipeline

    def assemble(self, manifest: Manifest, tokenizer: Tokenizer, vision: VisionEngine, decoder: DecoderEngine,
                 cache_bytes: int, engine_dir: Path | None) -> None:
        self.engine_dir = engine_dir
        self.manifest = manifest
        self.spec = manifest.preprocess_spec()
        self.template = get_template(manifest.chat_template)
        self.tokenizer = tokenizer
        self.first_image_id = int(manifest.image_tokens["first_id"])
        self.vision = vision
        self.decoder = decoder
        self.generator = Generator(decoder, tokenizer, manifest.special_ids["stop"], self.template.stop)
        self.cache = ImageCache(cache_bytes)

    # --- images -----------------------------------------------------------------------------------

    def image_source(self, image: ImageInput) -> ImageSource:
        """An image as load_image reads it: numpy arrays become PIL images, URLs are fetched."""
        if isinstance(image, np.ndarray):
            return array_image(image)
        if not (isinstance(image, str) and image.startswith(URL_PREFIXES)):
            return image
        if image.startswith(("http://", "https://")) and not self.allow_remote_images:
            raise ImageError(f"{image}: remote images are not downloaded unless allowed: set "
                             "pipeline.allow_remote_images = True, or download it and pass the bytes")
        # The server's fetcher, with its byte, pixel and time limits (imported here: the server imports this module).
        # Any address: the caller chose the URL in its own process, as urllib would fetch it (the server's
        # clients are the ones kept to public addresses).
        from .server.api_error import ApiError
        from .server.image_urls import ImageLimits, decode, fetch_encoded

        limits = ImageLimits(max_bytes=4 * DEFAULT_MAX_PIXELS, max_pixels=DEFAULT_MAX_PIXELS, local_dir=Path("/"),
                             allow_remote=True, remote_networks=ANY_NETWORK)
        try:
            return decode(fetch_encoded(image, limits, "image"), limits)
        except ApiError as e:
            raise ImageError(e.message) from None

    def encode_image(self, source: ImageInput) -> tuple[np.ndarray, bool, float, float]:
        """One image's embedding rows [tokens, hidden], whether they came from the cache, and the seconds
        spent preprocessing (load, hash and tile included) and in the vision engine."""
        start = time.perf_counter()
        image = load_image(self.image_source(source))
        key = image_key(image)
        rows = self.cache.get(key)
        if rows is not None:
            return rows, True, time.perf_counter() - start, 0.0
        inputs = preprocess_image(image, self.spec)
        ready = time.perf_counter()
        rows = self.vision.encode(inputs.trimmed())
        done = time.perf_counter()
        if rows.shape[0] != inputs.num_tokens:
            raise AerieError(f"the vision engine gave {rows.shape[0]} rows for an image that needs {inputs.num_tokens}; "
                             "the engine does not match its manifest, rebuild it")
        return self.cache.put(key, rows), False, ready - start, done - ready

    # --- requests ---------------------------------------------------------------------------------

    def conversation(self, prompt: Prompt, images: Images | None = ()) -> tuple[Conversation, list[ImageInput]]:
        """The prompt's turns and images: text and turns take `images`, chat messages carry their own, a
        RawPrompt has none."""
        if isinstance(prompt, RawPrompt):
            if image_list(images):
                raise AerieError("a RawPrompt is text for the model to continue, without images; ask about "
                                 "images with a question or chat messages")
            return prompt, []
        if not is_messages(prompt):
            return [("user", prompt)] if isinstance(prompt, str) else list(prompt), image_list(images)
        if image_list(images):
            raise AerieError("chat messages carry their images as image or image_url parts; leave images= empty")
        return parse_conversation(prompt, lambda source, param: source)  # each image is read by encode_image

    def prepare(self, prompt: Prompt, images: Images | None = (), params: SamplingParams | None = None,
                logits: bool = False) -> Prepared:
        """Images to rows, the conversation to ids: everything before the decoder, with its timings. `logits`:
        keep the logits each token is chosen from (Answer.logits)."""
        turns, sources = self.conversation(prompt, images)
        tables, counts = [], []
        cached, pre_s, vis_s = 0, 0.0, 0.0
        for source in sources:
            rows, hit, p, v = self.encode_image(source)
            tables.append(rows)
            counts.append(rows.shape[0])
            cached, pre_s, vis_s = cached + hit, pre_s + p, vis_s + v
        try:
            ids = prompt_ids(self.tokenizer, self.template, turns, counts, self.first_image_id)
        except ValueError as e:
            raise AerieError(str(e)) from None
        table = np.concatenate(tables) if tables else None
        # Checked here, before anything is queued: a batch with one bad request leaves nothing behind.
        d = self.decoder
        check_prompt(ids, table, d.vocab_size, d.hidden_size, d.max_length)
        return Prepared(Request(ids, table, params or SamplingParams(), logits), len(counts), cached, pre_s, vis_s)

    def run(self, prompt: Prompt, images: Images | None = (), params: SamplingParams | None = None,
            logits: bool = False) -> Answer:
        """Generate the whole answer; with timings (and the logits of every step with `logits`)."""
        return self.run_batch([prompt], [images], params, logits)[0]

    def run_batch(self, prompts: Sequence[Prompt], images: Sequence[Images | None] | None = None,
                  params: SamplingParams | Sequence[SamplingParams] | None = None, logits: bool = False) -> list[Answer]:
        """Several requests decoded together (up to the engine's batch, the rest queued); answers in order.
        Each gets the tokens it would get alone. `images` has one entry per prompt: an image, a list or None."""
        images = images if images is not None else [()] * len(prompts)
        if len(images) != len(prompts):
            raise AerieError(f"{len(prompts)} prompts but {len(images)} entries in images: give one per prompt "
                             "(an image, a list of images, or None)")
        per = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        prepared = [self.prepare(p, i, s, logits) for p, i, s in zip(prompts, images, per)]
        results = self.generator.generate([p.request for p in prepared])
        return [p.answer(r) for p, r in zip(prepared, results)]

    def stream(self, prompt: Prompt, images: Images | None = (), params: SamplingParams | None = None,
               on_end: Callable[[Answer], None] | None = None) -> Stream:
        """The answer as it is generated, piece by piece; the stream's `.answer` holds the timings at the end."""
        prepared = self.prepare(prompt, images, params)
        return Stream(self.generator, self.generator.submit(prepared.request), prepared, on_end)

    def generate(self, prompt: Prompt, images: Images | None = (), params: SamplingParams | None = None,
                 stream: bool = False, **sampling) -> str | Stream:
        """The answer's text; with stream=True an iterator of text pieces. `prompt` is text, turns or chat
        messages; keyword arguments are SamplingParams fields (max_new_tokens=64, temperature=0.7, seed=1, ...)."""
        params = params_with(params, sampling)
        return self.stream(prompt, images, params) if stream else self.run(prompt, images, params).text

    def generate_batch(self, prompts: Sequence[Prompt], images: Sequence[Images | None] | None = None,
                       params: SamplingParams | None = None, **sampling) -> list[str]:
        return [a.text for a in self.run_batch(prompts, images, params_with(params, sampling))]

    def chat(self, messages: list[dict] | None = None, params: SamplingParams | None = None, stream: bool = False,
             **sampling) -> "str | Stream | Chat":
        """With chat messages (OpenAI or Hugging Face format), the reply as `generate` gives it; without, a
        conversation to continue with `ask`."""
        if messages is None:
            return Chat(self, params_with(params, sampling))
        return self.generate(messages, (), params, stream, **sampling)


def params_with(params: SamplingParams | None, overrides: dict) -> SamplingParams:
    """`params` (or the defaults) with some fields replaced; a bad name or value is an AerieError."""
    base = params or SamplingParams()
    names = [f.name for f in fields(SamplingParams)]
    unknown = [name for name in overrides if name not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, 1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise AerieError(f"unknown sampling option {unknown[0]!r}{hint}; the options are {', '.join(names)}")
    try:
        return replace(base, **overrides) if overrides else base
    except ValueError as e:
        raise AerieError(str(e)) from None


class Chat:
    """A conversation: every question sees the earlier turns and their images (from the image cache)."""

    def __init__(self, pipeline: Pipeline, params: SamplingParams):
        self.pipeline = pipeline
        self.params = params
        self.turns: list[Turn] = []
        self.images: list[ImageInput] = []

    def _turns(self, text: str, images: list[ImageInput]) -> list[Turn]:
        return [*self.turns, ("user", place_images(text, len(images)) if images else text)]

    def ask(self, text: str, images: Images | None = ()) -> Answer:
        images = image_list(images)
        turns = self._turns(text, images)
        answer = self.pipeline.run(turns, [*self.images, *images], self.params)
        self._remember(turns, images, answer.text)
        return answer

    def ask_stream(self, text: str, images: Images | None = ()) -> Stream:
        images = image_list(images)
        turns = self._turns(text, images)
        return self.pipeline.stream(turns, [*self.images, *images], self.params,
                                    on_end=lambda answer: self._remember(turns, images, answer.text))

    def _remember(self, turns: list[Turn], images: list[ImageInput], answer: str) -> None:
        self.turns = [*turns, ("assistant", answer)]
        self.images = [*self.images, *images]

    def reset(self) -> None:
        self.turns, self.images = [], []
