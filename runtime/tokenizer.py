"""Tokenization with the `tokenizers` library alone, and the image-token layout of DESIGN.md.

A prompt is split on `<image>` and each chunk is tokenized on its own, with one BOS at the start: what
the references' `tokenizer_image_token` does (each chunk gets SentencePiece's dummy-prefix space, the
BOS of later chunks is dropped). At each placeholder the image's rows are addressed by ids
`vocab_size + k`, k counting over all images of the prompt, optionally wrapped in <img> ... </img>.

Only the template makes control tokens: runtime/prompt.py puts CONTENT_START ... CONTENT_END around the
text of every message, and a special token's string written there (`</s>`, `<|im_end|>`) is tokenized as
text, so a user can't end a turn or start a new one.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from .errors import TokenizerError
from .templates import IMAGE_PLACEHOLDER, LITERAL_PLACEHOLDER

# Around a message's text in a rendered prompt (private-use characters; prompt.py removes them from the text).
CONTENT_START, CONTENT_END = "\ue001", "\ue002"
CONTENT_MARKS = re.compile(f"([{CONTENT_START}{CONTENT_END}])")


def token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A tokenizer.json plus the special ids the templates need."""

    def __init__(self, path: str | Path, bos_token: str | None, eos_token: str | None, add_bos: bool,
                 pad_token: str | None = None, always_prefix_space: bool = False):
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer.json not found; rebuild the engine or convert the checkpoint's tokenizer")
        try:
            self.hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses with no common base
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
        self.bos_id = self._id(bos_token) if bos_token else None
        self.eos_id = self._id(eos_token) if eos_token else None
        self.pad_id = self._id(pad_token) if pad_token else self.eos_id
        self.add_bos = add_bos and self.bos_id is not None
        # The slow non-legacy Llama tokenizer puts "▁" before every text, even one that starts with a space;
        # tokenizers' Metaspace skips it then. Set by models.tokenizer_build for such SentencePiece models.
        self.always_prefix_space = always_prefix_space
        added = self.hf.get_added_tokens_decoder()
        self.special_ids = {token.content: i for i, token in added.items() if token.special}
        longest_first = sorted(self.special_ids, key=len, reverse=True)
        self.special_pattern = re.compile("|".join(map(re.escape, longest_first))) if longest_first else None
        self._plain: HFTokenizer | None = None  # a copy that reads special tokens' strings as text

    def _id(self, token: str) -> int:
        token_id = self.hf.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"the tokenizer has no token {token!r}; it does not match this model's template")
        return token_id

    @classmethod
    def from_dir(cls, directory: str | Path) -> "Tokenizer":
        """Load tokenizer.json with the special tokens named in tokenizer_config.json (Hugging Face layout)."""
        directory = Path(directory)
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return cls(
            directory / "tokenizer.json",
            bos_token=token_text(config.get("bos_token")),
            eos_token=token_text(config.get("eos_token")),
            add_bos=bool(config.get("add_bos_token", False)),
            pad_token=token_text(config.get("pad_token")),
            always_prefix_space=bool(config.get("always_prefix_space", False)),
        )

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @cached_property
    def max_chars_per_token(self) -> int:
        """The most characters of text one token stands for: the longest vocabulary entry, times 4 when the
        normalizer composes characters (NFC, NFKC: up to 4 code points become one). A prompt of more than
        context x this can't fit, whatever it says (text a lossy tokenizer drops or fuses into one <unk> is
        counted as if it were read)."""
        longest = max((len(token) for token in self.hf.get_vocab(with_added_tokens=True)), default=1)
        normalizer = json.dumps(json.loads(self.hf.to_str()).get("normalizer"))
        return longest * (4 if re.search(r'"type": "NFK?C"', normalizer) else 1)

    def token_id(self, token: str) -> int:
        return self._id(token)

    def encode(self, text: str, specials: bool = True) -> list[int]:
        """Ids of `text` without BOS; special tokens written in the text are recognised unless `specials` is
        False. (encode_batch: unlike encode, it lets other threads run while it works.)"""
        if not text:
            return []
        if self.always_prefix_space and text.startswith((" ", "\u2581")):
            text = " " + text
        return self.encoder(specials).encode_batch([text], add_special_tokens=False)[0].ids

    def encoder(self, specials: bool) -> HFTokenizer:
        if specials:
            return self.hf
        if self._plain is None:
            plain = HFTokenizer.from_str(self.hf.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return self._plain

    def encode_marked(self, pieces: Sequence[tuple[str, bool]]) -> list[int]:
        """Ids of the text `pieces` (text, is_content) make together: special tokens only from the template's."""
        if self.special_pattern is None or not any(inside and self.special_pattern.search(text)
                                                   for text, inside in pieces):
            return self.encode("".join(text for text, _ in pieces))  # the common case: exactly as unmarked
        # Split at the template's special tokens only; everything between them (message text included) is text.
        ids: list[int] = []
        between = ""
        for text, inside in pieces:
            if inside:
                between += text
                continue
            end = 0
            for match in self.special_pattern.finditer(text):
                ids += self.encode_text(between + text[end:match.start()])
                ids.append(self.special_ids[match.group()])
                between, end = "", match.end()
            between += text[end:]
        return ids + self.encode_text(between)

    def encode_text(self, text: str) -> list[int]:
        """Ids of `text` with no special token among them. A vocabulary trained on text holding `</s>` can
        merge those characters into the special token itself: such a token is spelled out character by character."""
        ids = []
        specials = {i: content for content, i in self.special_ids.items()}
        for i in self.encode(text, specials=False):
            if i not in specials:
                ids.append(i)
                continue
            spelled = [self.hf.token_to_id(c) for c in specials[i]]
            if None in spelled:
                raise TokenizerError(f"the text holds {specials[i]!r}, which this tokenizer can only read as a "
                                     "special token; remove it from the message")
            ids += spelled
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def encode_prompt(
        self,
        prompt: str,
        image_tokens: Sequence[int] = (),
        vocab_size: int | None = None,
        image_start: str = "",
        image_end: str = "",
    ) -> np.ndarray:
        """Prompt ids with `image_tokens[i]` ids from `vocab_size` on at the i-th `<image>` (int64, 1-D)."""
        chunks = prompt.split(IMAGE_PLACEHOLDER)
        if len(chunks) - 1 != len(image_tokens):
            raise ValueError(f"the prompt has {len(chunks) - 1} <image> placeholders for {len(image_tokens)} images")
        if image_tokens and vocab_size is None:
            raise ValueError("vocab_size is needed to address image rows")
        start = [self._id(image_start)] if image_start else []
        end = [self._id(image_end)] if image_end else []
        ids: list[int] = [self.bos_id] if self.add_bos else []
        next_row = 0
        inside = False  # in a message's text (a message's images split it into chunks)
        for i, chunk in enumerate(chunks):
            pieces = []
            for part in CONTENT_MARKS.split(chunk):
                if part in (CONTENT_START, CONTENT_END):
                    inside = part == CONTENT_START
                elif part:
                    pieces.append((part.replace(LITERAL_PLACEHOLDER, IMAGE_PLACEHOLDER), inside))
            ids += self.encode_marked(pieces)
            if i < len(image_tokens):
                rows = range(vocab_size + next_row, vocab_size + next_row + image_tokens[i])
                ids += start + list(rows) + end
                next_row += image_tokens[i]
        return np.asarray(ids, dtype=np.int64)
