"""Chat templates produce the references' exact strings (EAGLE/EVE conversation.py, models.md A4/B5), and
attach_images places images the way the references prompt; system messages and several images as each
family's upstream chat handles them."""

from __future__ import annotations

import pytest

from runtime.messages import conversation
from runtime.prompt import attach_images
from runtime.templates import TEMPLATES, check_turns, get_template, number_images, place_images

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def reference_get_prompt(style: str, system: str, roles: tuple[str, str], sep: str, sep2: str | None,
                         messages: list[tuple[str, str | None]]) -> str:
    """EAGLE `Conversation.get_prompt` (TWO and MPT styles) restated; a None message is the generation slot."""
    if style == "two":
        seps = [sep, sep2]
        ret = system + seps[0]
        for i, (role, message) in enumerate(messages):
            ret += role + ": " + message + seps[i % 2] if message else role + ":"
        return ret
    ret = system + sep
    for role, message in messages:
        ret += role + message + sep if message else role
    return ret


def as_messages(roles: tuple[str, str], turns, generation: bool) -> list[tuple[str, str | None]]:
    messages = [(roles[0] if r == "user" else roles[1], t) for r, t in turns]
    return messages + [(roles[1], None)] if generation else messages


CONVERSATIONS = [
    [("user", "<image>\nWhat is in the image?")],
    [("user", "<image>\nWhat colour?"), ("assistant", "Red."), ("user", "And the shape?")],
    [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Count to 3."), ("assistant", "1 2 3")],
]


def test_vicuna_v1_exact_strings():
    t = TEMPLATES["vicuna_v1"]
    assert t.render([("user", "<image>\nWhat is in the image?")]) == (
        SYSTEM + " USER: <image>\nWhat is in the image? ASSISTANT:"
    )
    assert t.render(CONVERSATIONS[1]) == SYSTEM + " USER: <image>\nWhat colour? ASSISTANT: Red.</s>USER: And the shape? ASSISTANT:"
    # Training layout: every assistant reply ends with sep2 "</s>".
    assert t.render(CONVERSATIONS[2], add_generation_prompt=False) == (
        SYSTEM + " USER: Hi ASSISTANT: Hello! How can I help?</s>USER: Count to 3. ASSISTANT: 1 2 3</s>"
    )
    assert t.stop == ("</s>",) and TEMPLATES["v1"] is t


def test_llama3_exact_strings():
    t = TEMPLATES["llama3"]
    header = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM + "<|eot_id|>"
    user, assistant = "<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert t.render([("user", "<image>\nWhat is in the image?")]) == (
        header + user + "<image>\nWhat is in the image?<|eot_id|>" + assistant
    )
    assert t.render(CONVERSATIONS[2], add_generation_prompt=False) == (
        header + user + "Hi<|eot_id|>" + assistant + "Hello! How can I help?<|eot_id|>"
        + user + "Count to 3.<|eot_id|>" + assistant + "1 2 3<|eot_id|>"
    )
    assert t.stop == ("<|eot_id|>",)


def test_plain_exact_strings():
    """Stage-1 alignment (LLaVA preprocess_plain): the image placeholder, the caption and "\\n"."""
    t = TEMPLATES["plain"]
    assert t.render([("user", "<image>")]) == "<image>"
    assert t.render([("user", "<image>"), ("assistant", "A red square on grey.")], add_generation_prompt=False) == (
        "<image>A red square on grey.\n"
    )
    assert t.stop == ("\n",)


def test_qwen2_chatml_exact_strings():
    t = TEMPLATES["qwen2_chatml"]
    assert t.render([("user", "<image>\nDescribe.")]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nDescribe.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.render([("user", "Hi"), ("assistant", "Hello.")], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    assert (t.image_start, t.image_end, t.stop) == ("<img>", "</img>", ("<|im_end|>",))


def test_yi_34b_chatml_direct_exact_strings():
    t = TEMPLATES["yi_34b_chatml_direct"]
    assert t.render([("user", "<image>\nWhat is in the image?")]) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|><|im_start|>assistant\n"
    )
    assert t.render([("user", "Hi"), ("assistant", "Hello.")], add_generation_prompt=False) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello.<|im_end|>"
    )
    assert t.stop == ("<|im_end|>",) and get_template("chatml_direct") is t


@pytest.mark.parametrize("name,style", [("vicuna_v1", "two"), ("llama3", "mpt"), ("yi_34b_chatml_direct", "mpt")])
@pytest.mark.parametrize("turns", CONVERSATIONS, ids=["one_turn", "two_turns", "finished"])
def test_templates_match_reference_get_prompt(name, style, turns):
    t = TEMPLATES[name]
    for generation in (True, False):
        if generation and turns[-1][0] == "assistant":
            continue
        expected = reference_get_prompt(style, t.system, t.roles, t.sep, t.sep2 or None,
                                        as_messages(t.roles, turns, generation))
        assert t.render(turns, add_generation_prompt=generation) == expected


def test_generation_prompt_endings():
    turns = [("user", "Hi")]
    assert TEMPLATES["vicuna_v1"].render(turns).endswith(" ASSISTANT:")  # no trailing space
    assert TEMPLATES["llama3"].render(turns).endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert TEMPLATES["qwen2_chatml"].render(turns).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert TEMPLATES["plain"].render(turns) == "Hi"


def test_turn_checks():
    with pytest.raises(ValueError, match="empty"):
        check_turns([])
    with pytest.raises(ValueError, match="turn 0 is 'assistant'"):
        check_turns([("assistant", "hi")])
    with pytest.raises(ValueError, match="turn 1 is 'user'"):
        check_turns([("user", "a"), ("user", "b")])
    with pytest.raises(ValueError, match="turn 0 must be text"):
        check_turns([("user", None)])
    with pytest.raises(ValueError, match="unknown chat template 'chatgpt'; known: chatml_direct, eve_qwen2, llama3, plain"):
        get_template("chatgpt")
    assert get_template("v1") is TEMPLATES["vicuna_v1"]


def test_attach_images_before_the_last_user_message():
    assert attach_images([("user", "What is this?")], 1) == [("user", "<image>\nWhat is this?")]
    assert attach_images([("user", "Compare them.")], 2) == [("user", "<image>\n<image>\nCompare them.")]
    history = [("user", "Hi"), ("assistant", "Hello."), ("user", "What is this?")]
    assert attach_images(history, 1) == [("user", "Hi"), ("assistant", "Hello."), ("user", "<image>\nWhat is this?")]
    assert attach_images(history, 0) == history


def test_attach_images_keeps_placed_placeholders():
    placed = [("user", "Left <image> right <image> which is bigger?")]
    assert attach_images(placed, 2) == placed
    early = [("user", "<image>\nWhat colour?"), ("assistant", "Red."), ("user", "And the shape?")]
    assert attach_images(early, 1) == early
    with pytest.raises(ValueError, match="1 <image> placeholders for 2 images"):
        attach_images([("user", "<image> and?")], 2)
    with pytest.raises(ValueError, match="2 <image> placeholders for 1 images"):
        attach_images([("user", "<image>"), ("assistant", "ok"), ("user", "<image>")], 1)


def test_place_images():
    assert place_images("Q?", 1) == "<image>\nQ?"
    assert place_images("<image>\nQ?", 2) == "<image>\n<image>\nQ?"
    with pytest.raises(ValueError, match="2 <image> placeholders for 1 images"):
        place_images("<image><image>", 1)


def eagle2_prompt(messages: list[dict]) -> str:
    """The Eagle2/2.5 prompt text Aerie renders for OpenAI-style messages (images named by placeholder strings)."""
    turns, images = conversation(messages, lambda source, param: source)
    template = TEMPLATES["qwen2_chatml"]
    return template.render(number_images(template, attach_images(turns, len(images))))


def image_part(name: str) -> dict:
    return {"type": "image_url", "image_url": {"url": name}}


def test_qwen2_chat_system_message_replaces_the_default():
    """NVlabs/Eagle `Eagle2_5/deployment/inference.py` sets `model.system_message` from the first message, which
    `chat()` puts into `template.system_message`; `Eagle2_5/eaglevl/conversation.py` (qwen2-chat, CHATML) then
    writes `'<|im_start|>system\\n' + system_message + '<|im_end|>' + '\\n'`, even for an empty message."""
    messages = [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": [image_part("a"), {"type": "text", "text": "What colour?"}]}]
    assert eagle2_prompt(messages) == (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat colour?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert TEMPLATES["qwen2_chatml"].render([("system", ""), ("user", "Hi")]) == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name", ["vicuna_v1", "llama3", "yi_34b_chatml_direct"])
def test_fixed_system_prompts_keep_theirs(name):
    """Eagle v1 (NVlabs/EAGLE `eagle/conversation.py`) and EVE (baaivision/EVE `EVEv1/eve/conversation.py`) have a
    fixed `system` that no upstream script replaces: the trained prompt stays, the system text leads the first
    user message."""
    t = TEMPLATES[name]
    assert t.render([("system", "Be brief."), ("user", "<image>\nQ?")]) == t.render([("user", "Be brief.\n\n<image>\nQ?")])
    assert t.system in t.render([("system", "Be brief."), ("user", "Q?")])


def test_several_images_are_numbered_as_eagle2_deployment_does():
    """NVlabs/Eagle `Eagle2_5/deployment/inference.py` (and `Eagle2/inference/inference.py` before it) prefix every
    image of every user message with `f'<image {global_image_cnt + 1}><image>\\n'`, counting across the
    conversation, and turn a lone `'<image 1><image>\\n'` back into `'<image>\\n'`."""
    two = [{"role": "user", "content": [image_part("a"), image_part("b"), {"type": "text", "text": "Compare them."}]}]
    assert eagle2_prompt(two) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image 1><image>\n<image 2><image>\nCompare them.<|im_end|>\n<|im_start|>assistant\n"
    )
    across = [{"role": "user", "content": [image_part("a"), {"type": "text", "text": "This?"}]},
              {"role": "assistant", "content": "A cat."},
              {"role": "user", "content": [image_part("b"), {"type": "text", "text": "And this?"}]}]
    assert "user\n<image 1><image>\nThis?<|im_end|>" in eagle2_prompt(across)
    assert "user\n<image 2><image>\nAnd this?<|im_end|>" in eagle2_prompt(across)
    one = [{"role": "user", "content": [image_part("a"), {"type": "text", "text": "What is it?"}]}]
    assert "user\n<image>\nWhat is it?<|im_end|>" in eagle2_prompt(one)
    # Other templates keep bare placeholders; an assistant's "<image>" is text and is not counted.
    turns = [("user", "<image>\n<image>\nCompare.")]
    assert number_images(TEMPLATES["vicuna_v1"], turns) == turns
    assert number_images(TEMPLATES["qwen2_chatml"], [("user", "<image>\nA"), ("assistant", "<image>")]) == [
        ("user", "<image>\nA"), ("assistant", "<image>")]


def test_system_turn_checks():
    check_turns([("system", "s"), ("user", "a")])
    with pytest.raises(ValueError, match="empty"):
        check_turns([("system", "s")])
    with pytest.raises(ValueError, match="turn 2 is 'system'"):
        check_turns([("user", "a"), ("assistant", "b"), ("system", "s")])
