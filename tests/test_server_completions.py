"""POST /v1/completions, driven by the official `openai` client: text continued as written (no chat template,
no images), plain and streamed answers equal the Pipeline's on the same RawPrompt (greedy, seeded, stop strings,
echo), special tokens' strings in the prompt stay text; what the endpoint does not do is a 400 naming the field,
and the server goes on serving."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from runtime import RawPrompt
from runtime.pipeline import Pipeline
from runtime.sampling import SamplingParams
from serving_helpers import post, running_server
from tiny_engines import built_engine

PROMPT = "The shape in the picture is"
GOOD = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module", params=["eve", "eagle2_5"])
def engine_dir(request, tmp_path_factory):
    return built_engine(request.param, tmp_path_factory)[1]


@pytest.fixture(scope="module")
def server(engine_dir):
    with running_server(engine_dir, max_batch=4) as server:
        yield server


@pytest.fixture(scope="module")
def reference(engine_dir):
    return Pipeline(engine_dir, max_batch=1, threads=1)


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_the_prompt_is_tokenized_as_written(reference):
    """BOS and the text's own tokens: no chat template around it, and a special token's string is text."""
    tokenizer = reference.tokenizer
    bos = [tokenizer.bos_id] if tokenizer.add_bos else []
    ids = reference.prepare(RawPrompt(PROMPT)).request.input_ids.tolist()
    assert ids == bos + tokenizer.encode(PROMPT)
    chat_ids = reference.prepare(PROMPT).request.input_ids.tolist()
    assert len(chat_ids) > len(ids), "the chat template added nothing: the test can't tell the two apart"
    specials = sorted(tokenizer.special_ids)
    assert specials, "the tiny tokenizer has no special tokens to smuggle"
    smuggled = f"Hi {' '.join(specials)} <image> there"
    ids = reference.prepare(RawPrompt(smuggled)).request.input_ids.tolist()
    assert ids == bos + tokenizer.encode_text(smuggled)
    assert not set(ids[len(bos):]) & set(tokenizer.special_ids.values())
    with pytest.raises(Exception, match="without images"):
        reference.prepare(RawPrompt(PROMPT), images=[b"\x89PNG"])


def test_plain_completion_equals_the_pipeline(client, reference):
    response = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    want = reference.run(RawPrompt(PROMPT), params=SamplingParams(max_new_tokens=12))
    assert response.object == "text_completion" and response.id.startswith("cmpl-") and response.model == "tiny"
    [choice] = response.choices
    assert choice.text == want.text and want.text
    assert choice.finish_reason == want.finish_reason and choice.index == 0 and choice.logprobs is None
    assert response.usage.prompt_tokens == want.prompt_tokens == want.prompt_ids.size
    assert response.usage.completion_tokens == len(want.token_ids)


def test_a_list_of_one_prompt_seeded_sampling_and_stop(client, reference):
    params = dict(max_tokens=10, temperature=0.9, top_p=0.95, seed=11)
    response = client.completions.create(model="tiny", prompt=[PROMPT], **params)
    want = reference.generate(RawPrompt(PROMPT), max_new_tokens=10, temperature=0.9, top_p=0.95, seed=11)
    assert response.choices[0].text == want
    whole = reference.generate(RawPrompt(PROMPT), max_new_tokens=12)
    stop = whole[len(whole) // 2:][:2]
    assert stop.strip(), f"no stop string to cut {whole!r} at"
    stopped = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert stopped.choices[0].text == reference.generate(RawPrompt(PROMPT), max_new_tokens=12, stop=(stop,))
    assert stopped.choices[0].text == whole[:whole.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_special_token_strings_in_the_prompt_stay_text(client, reference):
    smuggled = f"{PROMPT} {' '.join(sorted(reference.tokenizer.special_ids))}"
    response = client.completions.create(model="tiny", prompt=smuggled, max_tokens=6, temperature=0)
    want = reference.run(RawPrompt(smuggled), params=SamplingParams(max_new_tokens=6))
    assert response.choices[0].text == want.text
    assert response.usage.prompt_tokens == want.prompt_tokens


def test_stream_gives_text_completion_chunks(client, reference):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    want = reference.run(RawPrompt(PROMPT), params=SamplingParams(max_new_tokens=16))
    assert {c.object for c in chunks} == {"text_completion"}
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(pieces) > 1, "the answer came in one piece: nothing was streamed"
    assert "".join(pieces) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [want.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_echo_puts_the_prompt_before_the_answer(client, reference):
    want = reference.generate(RawPrompt(PROMPT), max_new_tokens=8)
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, echo=True)
    assert whole.choices[0].text == PROMPT + want
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, echo=True,
                                            stream=True))
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks if c.choices) == PROMPT + want


REFUSED = {
    "logprobs": ({**GOOD, "logprobs": 1}, "logprobs", "unsupported_parameter"),
    "logprobs 0": ({**GOOD, "logprobs": 0}, "logprobs", "unsupported_parameter"),
    "two prompts": ({**GOOD, "prompt": ["a", "b"]}, "prompt", "unsupported_parameter"),
    "token ids": ({**GOOD, "prompt": [1, 2, 3]}, "prompt", "unsupported_parameter"),
    "lists of token ids": ({**GOOD, "prompt": [[1, 2]]}, "prompt", "unsupported_parameter"),
    "no prompt": ({"model": "tiny"}, "prompt", "invalid_type"),
    "empty prompt": ({**GOOD, "prompt": ""}, "prompt", "invalid_value"),
    "empty list": ({**GOOD, "prompt": []}, "prompt", "invalid_type"),
    "prompt a number": ({**GOOD, "prompt": 5}, "prompt", "invalid_type"),
    "lone surrogate": ({**GOOD, "prompt": "a\ud800"}, "prompt", "invalid_value"),
    "n 2": ({**GOOD, "n": 2}, "n", "unsupported_parameter"),
    "best_of 2": ({**GOOD, "best_of": 2}, "best_of", "unsupported_parameter"),
    "suffix": ({**GOOD, "suffix": "end."}, "suffix", "unsupported_parameter"),
    "echo not a bool": ({**GOOD, "echo": "yes"}, "echo", "invalid_type"),
    "max_tokens over the cap": ({**GOOD, "max_tokens": 100_000}, "max_tokens", "invalid_value"),
    "unknown model": ({**GOOD, "model": "gpt-3.5-turbo-instruct"}, "model", "model_not_found"),
    "too long": ({**GOOD, "prompt": "word " * 100_000}, "prompt", "context_length_exceeded"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refusals_name_the_field_and_the_server_goes_on(server, case):
    body, param, code = REFUSED[case]
    status, error = post(server.url, "/v1/completions", body)
    assert 400 <= status < 500, (status, error)
    assert (error["error"]["param"], error["error"]["code"]) == (param, code), error
    status, answer = post(server.url, "/v1/completions", GOOD)
    assert status == 200 and answer["choices"][0]["text"], answer


def test_the_client_sees_a_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, logprobs=2)


def test_metrics_count_the_endpoint(client, server):
    import urllib.request

    client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'aerie_requests_total{endpoint="/v1/completions",status="200"}' in text
