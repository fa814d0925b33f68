"""The OpenAI-compatible server, driven by the official `openai` client: plain and streamed answers equal
the Pipeline's on the same inputs (greedy and seeded), conversations map onto the chat template, concurrent
requests are decoded in one batch and each still gets its own answer, errors arrive as the client's typed
exceptions, /v1/models, /health and /metrics answer."""

from __future__ import annotations

import re
import threading
import urllib.request

import openai
import pytest
from openai import OpenAI

from runtime.pipeline import Pipeline
from runtime.sampling import SamplingParams
from serving_helpers import DecoderGate, data_url, running_server, shapes_image, user_message
from tiny_engines import built_engine

QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return built_engine("eve", tmp_path_factory)[1]


@pytest.fixture(scope="module")
def server(engine_dir):
    with running_server(engine_dir, max_batch=4) as server:
        server.gate = DecoderGate(server.pipeline)
        yield server


@pytest.fixture(scope="module")
def reference(engine_dir):
    """A second Pipeline on the same engine, answering in this thread."""
    return Pipeline(engine_dir, max_batch=1, threads=1)


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_health_and_model_card(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "aerie"
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        assert response.status == 200


def test_plain_answer_with_an_image_equals_the_pipeline(client, reference):
    image = shapes_image()
    response = client.chat.completions.create(model="tiny", messages=[user_message(QUESTION, image)],
                                              temperature=0, max_tokens=12)
    want = reference.run(QUESTION, [image], SamplingParams(max_new_tokens=12))
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.text
    assert choice.finish_reason == want.finish_reason
    assert response.usage.prompt_tokens == want.prompt_tokens
    assert response.usage.completion_tokens == len(want.token_ids)
    assert response.model == "tiny" and response.object == "chat.completion"


def test_stream_yields_the_same_text_piece_by_piece(client, reference):
    image = shapes_image((64, 96), (20, 160, 20))
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[user_message(QUESTION, image)], temperature=0, max_tokens=16, stream=True,
        stream_options={"include_usage": True}))
    want = reference.run(QUESTION, [image], SamplingParams(max_new_tokens=16))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, "the answer came in one piece: nothing was streamed"
    assert "".join(pieces) == want.text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [want.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)
    assert all(c.id == chunks[0].id for c in chunks)


def test_seeded_sampling_repeats_and_equals_the_pipeline(client, reference):
    args = dict(model="tiny", messages=[{"role": "user", "content": QUESTION}], temperature=0.9, top_p=0.95,
                seed=1234, max_tokens=12, extra_body={"top_k": 40, "repetition_penalty": 1.1})
    first = client.chat.completions.create(**args).choices[0].message.content
    second = client.chat.completions.create(**args).choices[0].message.content
    want = reference.run(QUESTION, [], SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.95, top_k=40,
                                                      repetition_penalty=1.1, seed=1234))
    assert first == second == want.text


def test_stop_string_cuts_the_answer(client, reference):
    full = reference.run(QUESTION, [], SamplingParams(max_new_tokens=12)).text
    stop = full[3:6]
    assert stop, full
    response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                              temperature=0, max_tokens=12, stop=[stop])
    assert response.choices[0].message.content == full[: full.index(stop)]
    assert response.choices[0].finish_reason == "stop"


def test_conversation_maps_onto_the_template(client, reference):
    image = shapes_image()
    messages = [
        {"role": "system", "content": "Answer in one word."},
        user_message(QUESTION, image),
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "text", "text": "And the other one?"}]},
    ]
    response = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10)
    turns = [("user", f"Answer in one word.\n\n<image>\n{QUESTION}"), ("assistant", "red"),
             ("user", "And the other one?")]
    want = reference.run(turns, [image], SamplingParams(max_new_tokens=10))
    assert response.choices[0].message.content == want.text
    assert response.usage.prompt_tokens == want.prompt_tokens


def test_an_earlier_reply_may_contain_the_image_placeholder(client, reference):
    """A model may have written "<image>"; sent back as history it is text, not a place for an image."""
    image = shapes_image()
    reply = "It is <image> red."
    messages = [user_message(QUESTION, image), {"role": "assistant", "content": [{"type": "text", "text": reply}]},
                {"role": "user", "content": "Sure?"}]
    response = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10)
    want = reference.run([("user", f"<image>\n{QUESTION}"), ("assistant", reply), ("user", "Sure?")], [image],
                         SamplingParams(max_new_tokens=10))
    assert response.choices[0].message.content == want.text
    assert response.usage.prompt_tokens == want.prompt_tokens


def test_concurrent_requests_share_a_batch_and_keep_their_answers(client, server, reference):
    questions = ["What colour is the shape?", "How many shapes are there?", "Which bar is the highest?",
                 "What is the invoice number?", "Answer the question using a single word or phrase.",
                 "The image shows a small text on a large canvas."]
    images = [shapes_image((60 + 8 * i, 80 - 4 * i), (40 * i, 200 - 30 * i, 90)) for i in range(len(questions))]
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        response = client.chat.completions.create(model="tiny", messages=[user_message(questions[i], images[i])],
                                                  temperature=0, max_tokens=24)
        answers[i] = response.choices[0].message.content

    server.gate.batch_sizes.clear()
    server.gate.close()  # hold the first decode step until every request has arrived
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    try:
        deadline = 30
        while server.scheduler.running() + server.scheduler.depth() < len(questions) and deadline > 0:
            threading.Event().wait(0.05)
            deadline -= 0.05
    finally:
        server.gate.open()
    for t in threads:
        t.join(60)
    assert max(server.gate.batch_sizes) == 4, "requests were not decoded together"
    for i, question in enumerate(questions):
        assert answers[i] == reference.run(question, [images[i]], SamplingParams(max_new_tokens=24)).text, question


def test_errors_are_the_clients_typed_exceptions(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(b"not an image")}}]}])
    assert e.value.code == "invalid_image"
    # and the server still answers
    assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].message.content is not None


def test_metrics_count_requests_and_tokens(client, server):
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}], max_tokens=3,
                                   temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) aerie_\w+ .+", line), line
            continue
        match = re.fullmatch(r'(aerie_\w+)(\{(?:\w+="[^"]*",?)*\})? (-?[0-9.e+-]+|\+Inf)', line)
        assert match, f"not Prometheus text: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    assert samples['aerie_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert samples['aerie_requests_total{endpoint="/v1/chat/completions",status="404"}'] >= 1
    assert samples["aerie_generation_tokens_total"] >= 3
    assert samples["aerie_prompt_tokens_total"] > 0
    assert samples["aerie_request_duration_seconds_count"] >= 1
    count = samples["aerie_request_duration_seconds_count"]
    assert samples['aerie_request_duration_seconds_bucket{le="+Inf"}'] == count
    assert samples["aerie_queue_depth"] == 0 and samples["aerie_requests_running"] == 0
    assert "aerie_time_to_first_token_seconds_count" in samples and "aerie_image_cache_hits_total" in samples
    assert samples["aerie_image_cache_bytes"] >= 0
