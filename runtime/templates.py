"""Chat templates with the exact strings of the reference code (EAGLE/EVE `conversation.py`, Qwen2 chatml).

A conversation is a list of (role, text) turns, role "user" or "assistant", after an optional first "system"
turn; `<image>` in a user turn marks where an image's embeddings go. `render` returns the prompt string; the
tokenizer turns each `<image>` into the image's token ids.

A system message does what each family's upstream chat does with one. Eagle2/2.5's `qwen2-chat` (NVlabs/Eagle
`Eagle2_5/eaglevl/conversation.py`, a FastChat template with `system_message`) takes it in place of its default
system prompt, as `Eagle2_5/deployment/inference.py` sets `model.system_message`. Eagle v1's and EVE's
templates (LLaVA's `Conversation` in NVlabs/EAGLE `eagle/conversation.py`, baaivision/EVE
`EVEv1/eve/conversation.py`) have a fixed `system` that no upstream demo, evaluation or training script
replaces: the model keeps the system prompt it was trained with and the system text goes before the first
user message.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Literal, Sequence

IMAGE_PLACEHOLDER = "<image>"
# A literal "<image>" in an assistant turn (a model may write one) stands in as this private-use character until
# tokenization, so that only user turns place images.
LITERAL_PLACEHOLDER = "\ue000"

Role = Literal["system", "user", "assistant"]
Turn = tuple[Role, str]


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    style: Literal["two", "mpt", "plain", "chatml"]
    system: str
    roles: tuple[str, str]  # (user, assistant) as they appear in the prompt
    sep: str
    sep2: str = ""
    stop: tuple[str, ...] = ()
    # Eagle2.5 wraps each image's ids in <img> ... </img>; the others put bare ids at the placeholder.
    image_start: str = ""
    image_end: str = ""
    # A system message replaces `system` (FastChat-style templates); otherwise it goes before the first user message.
    replaces_system: bool = False
    # Eagle2/2.5 name each of several images: `<image 1><image>`, `<image 2><image>`, ... (see number_images).
    numbered_images: bool = False

    def render(self, turns: Sequence[Turn], add_generation_prompt: bool = True) -> str:
        """The prompt for `turns`; with add_generation_prompt it ends where the assistant's answer begins."""
        check_turns(turns)
        system, turns = self.system, list(turns)
        if turns[0][0] == "system":
            given = turns.pop(0)[1]
            if self.replaces_system:
                system = given
            else:
                turns[0] = ("user", f"{given}\n\n{turns[0][1]}")
        messages = [(self.roles[0] if role == "user" else self.roles[1], text) for role, text in turns]
        if add_generation_prompt:
            messages.append((self.roles[1], None))
        if self.style == "two":
            seps = (self.sep, self.sep2)
            out = system + self.sep
            for i, (role, text) in enumerate(messages):
                out += f"{role}: {text}{seps[i % 2]}" if text is not None else f"{role}:"
            return out
        if self.style == "mpt":
            out = system + self.sep
            for role, text in messages:
                out += f"{role}{text}{self.sep}" if text is not None else role
            return out
        if self.style == "chatml":
            # Upstream's CHATML writes the system turn whenever its template is set, empty message or not.
            out = f"<|im_start|>system\n{system}{self.sep}" if system or self.replaces_system else ""
            for role, text in messages:
                out += f"<|im_start|>{role}\n{text}{self.sep}" if text is not None else f"<|im_start|>{role}\n"
            return out
        # plain (stage-1 alignment): the image placeholder, then the caption and "\n".
        out = system
        for i, (_, text) in enumerate(messages):
            if text is not None:
                out += text + (self.sep if i % 2 else "")
        return out


def check_turns(turns: Sequence[Turn]) -> None:
    first = 1 if turns and turns[0][0] == "system" else 0
    if len(turns) == first:
        raise ValueError("the conversation is empty; give at least one user message")
    for i, (role, text) in enumerate(turns):
        if i < first:
            continue
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"turn {i} is {role!r}; turns must alternate user, assistant, user, ...")
        if not isinstance(text, str):
            raise ValueError(f"turn {i} must be text, got {type(text).__name__}")


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("vicuna_v1", "two", VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", stop=("</s>",)),
        ChatTemplate(
            "llama3",
            "mpt",
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + VICUNA_SYSTEM,
            ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
            "<|eot_id|>",
            stop=("<|eot_id|>",),
        ),
        # Eagle-X5-34B-Plus (Yi-34B): LLaVA-NeXT's chatml_direct, MPT style; the system turn carries its own tag.
        ChatTemplate(
            "yi_34b_chatml_direct",
            "mpt",
            "<|im_start|>system\nAnswer the questions.",
            ("<|im_start|>user\n", "<|im_start|>assistant\n"),
            "<|im_end|>",
            stop=("<|im_end|>",),
        ),
        # EVEv2 (Qwen2.5): vicuna_v1's strings ending turns in <|im_end|>; EVEv2 `conversation.py` conv_qwen_v2.
        ChatTemplate("eve_qwen2", "two", VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "<|im_end|>", stop=("<|im_end|>",)),
        ChatTemplate("plain", "plain", "", ("", ""), "\n", stop=("\n",)),
        ChatTemplate(
            "qwen2_chatml",
            "chatml",
            "You are a helpful assistant.",
            ("user", "assistant"),
            "<|im_end|>\n",
            stop=("<|im_end|>",),
            image_start="<img>",
            image_end="</img>",
            replaces_system=True,
            numbered_images=True,
        ),
    )
}
TEMPLATES["v1"] = TEMPLATES["vicuna_v1"]
TEMPLATES["chatml_direct"] = TEMPLATES["yi_34b_chatml_direct"]  # the key in EAGLE's conversation.py


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None


def place_images(text: str, n_images: int) -> str:
    """Put `<image>\\n` before the question for each image not already placed, as the references prompt."""
    missing = n_images - text.count(IMAGE_PLACEHOLDER)
    if missing < 0:
        raise ValueError(f"the prompt has {text.count(IMAGE_PLACEHOLDER)} <image> placeholders for {n_images} images")
    return (IMAGE_PLACEHOLDER + "\n") * missing + text


def number_images(template: ChatTemplate, turns: Sequence[Turn]) -> list[Turn]:
    """With several images, `<image k>` before the k-th placeholder of the user turns, for the templates that name
    them: NVlabs/Eagle `Eagle2_5/deployment/inference.py` prefixes each image `<image {k}><image>\\n` (a single
    image stays `<image>\\n`), as its training data does (`Eagle2_5/eaglevl/train/data_prepare.py`)."""
    turns = list(turns)
    if not template.numbered_images or sum(t.count(IMAGE_PLACEHOLDER) for r, t in turns if r == "user") < 2:
        return turns
    k = itertools.count(1)
    return [(role, re.sub(re.escape(IMAGE_PLACEHOLDER), lambda _: f"<image {next(k)}>{IMAGE_PLACEHOLDER}", text)
             if role == "user" else text) for role, text in turns]
