"""Loss masking: -100 on exactly the system prompt, human turns, role headers and padding, for each template;
the supervised tokens are each reply plus its stop token, preceded by exactly the serving prompt."""

from __future__ import annotations

import numpy as np
import pytest

from models.tokenizer_build import save_tokenizer, tokenizer_config, train_tiny_tokenizer
from runtime.prompt import prompt_ids
from runtime.templates import TEMPLATES, get_template
from runtime.tokenizer import Tokenizer
from training.llava import move_image_placeholder
from training.masking import IGNORE_INDEX, template_turns, tokenize_conversation

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CONVERSATION = [
    ("user", "<image>\nWhat colour is the shape?"),
    ("assistant", "red"),
    ("user", "How many shapes are there?"),
    ("assistant", "3 shapes"),
]


def make_tokenizer(directory, style: str, extra_specials=()) -> Tokenizer:
    corpus = [t.render(CONVERSATION, add_generation_prompt=False) for t in TEMPLATES.values()] * 20
    tok = train_tiny_tokenizer(corpus, style, vocab_size=300)
    if extra_specials:
        tok.add_special_tokens(list(extra_specials))
    save_tokenizer(tok, tokenizer_config(style), directory)
    return Tokenizer.from_dir(directory)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return {
        # Llama-3's and Yi's chat markers are special tokens of their tokenizers.
        "llama": make_tokenizer(tmp_path_factory.mktemp("llama"), "llama", (*LLAMA3_SPECIALS, "<|im_start|>", "<|im_end|>")),
        "qwen2": make_tokenizer(tmp_path_factory.mktemp("qwen2"), "qwen2"),
    }


CASES = [("vicuna_v1", "llama"), ("llama3", "llama"), ("yi_34b_chatml_direct", "llama"), ("plain", "llama"),
         ("qwen2_chatml", "qwen2")]


@pytest.mark.parametrize("template_name,style", CASES)
def test_only_replies_and_their_stop_are_supervised(tokenizers, template_name, style):
    tok, template = tokenizers[style], get_template(template_name)
    vocab, image_tokens = tok.vocab_size, 5
    result = tokenize_conversation(tok, template, CONVERSATION, [image_tokens], vocab)
    assert not result.mismatch
    ids, labels = result.input_ids, result.labels
    turns = template_turns(template, CONVERSATION)
    supervised = np.nonzero(labels != IGNORE_INDEX)[0]
    np.testing.assert_array_equal(labels[supervised], ids[supervised])
    assert not (ids[supervised] >= vocab).any(), "image rows must never be supervised"
    # Split the supervised positions into contiguous spans: one per assistant turn.
    spans = np.split(supervised, np.nonzero(np.diff(supervised) > 1)[0] + 1)
    replies = [text for role, text in turns if role == "assistant"]
    assert len(spans) == len(replies)
    for k, (span, reply) in enumerate(zip(spans, replies)):
        # What precedes the span is exactly the prompt serving would feed for this turn ...
        serving = prompt_ids(tok, template, turns[: 2 * k + 1], [image_tokens], vocab)
        assert span[0] == len(serving)
        np.testing.assert_array_equal(ids[: span[0]], serving)
        # ... and the span is the reply followed by the template's stop token.
        assert tok.hf.decode(ids[span].tolist(), skip_special_tokens=False).strip() == reply + template.stop[0].strip()
    # chatml: the newline after <|im_end|> is in the ids but not supervised.
    if template_name == "qwen2_chatml":
        assert labels[-1] == IGNORE_INDEX and tok.decode([int(ids[-1])]) == "\n"


def test_vicuna_matches_llava_preprocess_v1(tokenizers):
    """The reference's round-counting (LLaVA `preprocess_v1` with a SentencePiece-like tokenizer) gives the
    same labels."""
    tok, template = tokenizers["llama"], get_template("vicuna_v1")
    vocab = tok.vocab_size
    ours = tokenize_conversation(tok, template, CONVERSATION, [4], vocab)

    def n_tokens(text: str) -> int:
        return len(tok.encode_prompt(text, [4] * text.count("<image>"), vocab))

    conversation = template.render(CONVERSATION, add_generation_prompt=False)
    target = ours.input_ids.copy()
    sep = template.sep + template.roles[1] + ": "
    cur = 1
    target[:cur] = IGNORE_INDEX
    for rou in conversation.split(template.sep2):
        if not rou:
            break
        instruction, _ = rou.split(sep)
        round_len = n_tokens(rou)
        instruction_len = n_tokens(instruction + sep) - 2  # minus BOS and the trailing "▁"
        target[cur : cur + instruction_len] = IGNORE_INDEX
        cur += round_len
    target[cur:] = IGNORE_INDEX
    assert cur == len(ours.input_ids)
    np.testing.assert_array_equal(target, ours.labels)


def test_plain_drops_the_question_like_preprocess_plain(tokenizers):
    tok, template = tokenizers["llama"], get_template("plain")
    result = tokenize_conversation(tok, template, [("user", "<image>\nDescribe it."), ("assistant", "a red circle")], [3], tok.vocab_size)
    # BOS, 3 image rows, then the caption and "\n": nothing of the question.
    assert result.input_ids[0] == tok.bos_id and (result.input_ids[1:4] >= tok.vocab_size).all()
    assert (result.labels[:4] == IGNORE_INDEX).all() and (result.labels[4:] != IGNORE_INDEX).all()
    assert tok.hf.decode(result.input_ids[4:].tolist()).strip() == "a red circle"


def test_mismatching_prefix_masks_the_whole_sample(tmp_path):
    # Without the llama3 markers as special tokens, BPE merges "<|eot_id|>" with its neighbours, the
    # serving prompt is no prefix of the whole and the sample is not supervised (the reference's rule).
    tok = make_tokenizer(tmp_path, "llama")
    result = tokenize_conversation(tok, get_template("llama3"), CONVERSATION, [2], tok.vocab_size)
    assert result.mismatch
    assert (result.labels == IGNORE_INDEX).all()


def test_image_placeholder_moves_to_the_start_of_the_first_turn():
    turns = [("user", "What is this? <image>"), ("assistant", "a cat"), ("user", "Sure?"), ("assistant", "yes")]
    moved = move_image_placeholder(turns, has_image=True)
    assert moved[0] == ("user", "<image>\nWhat is this?")
    assert moved[1:] == turns[1:]
    assert move_image_placeholder([("user", "<image>"), ("assistant", "x")], True)[0] == ("user", "<image>")
    assert move_image_placeholder([("user", "no image <image>"), ("assistant", "x")], False)[0] == ("user", "no image")
    # An image without a placeholder gets one in front of the first question.
    assert move_image_placeholder([("user", "Q"), ("assistant", "A")], True)[0] == ("user", "<image>\nQ")


def test_text_only_conversation(tokenizers):
    tok = tokenizers["llama"]
    result = tokenize_conversation(tok, get_template("vicuna_v1"), [("user", "Hi"), ("assistant", "red")], [], tok.vocab_size)
    assert not (result.input_ids >= tok.vocab_size).any()
    assert tok.hf.decode(result.input_ids[result.labels != IGNORE_INDEX].tolist(), skip_special_tokens=False).strip() == "red</s>"
