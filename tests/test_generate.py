"""The generation loop on the ONNX Runtime decoder: greedy and seeded sampling equal to the PyTorch
oracle token for token, streaming equal to non-streaming, batches (also joined mid-way) equal to
one-by-one, stop strings, EOS and the context limit end where they should."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from export.decoder import export_decoder
from models.engines import torch_pipeline
from runtime.backends.ort_decoder import OrtDecoder
from runtime.errors import ContextOverflowError
from runtime.generate import Generator, Request
from runtime.sampling import SamplingParams

MAX_LENGTH = 96
QUESTIONS = ["What colour is the shape?", "How many shapes are there?", "Which bar is the highest?"]
IMAGES = [Image.new("RGB", (90, 50), (200, 10, 10)), Image.new("RGB", (40, 64), (10, 10, 220))]


class Setup:
    """The PyTorch model's pipeline (the oracle), and a Generator over the exported decoder with its tokenizer,
    template and stop ids."""

    def __init__(self, checkpoint, directory, max_batch: int = 1, max_length: int = MAX_LENGTH):
        self.oracle = torch_pipeline(checkpoint)
        self.model = self.oracle.vision.model
        spec = export_decoder(self.model.decoder, directory, max_length=max_length)
        self.engine = OrtDecoder(directory, spec, max_batch=max_batch, threads=1)
        self.eos_ids = set(self.oracle.manifest.special_ids["stop"])
        self.generator = Generator(self.engine, self.oracle.tokenizer, self.eos_ids, self.oracle.template.stop)

    def request(self, question: str, images=(), params: SamplingParams = SamplingParams(max_new_tokens=12)) -> Request:
        return self.oracle.prepare(question, images, params).request


@pytest.fixture(scope="module")
def eve(tiny_eve_dir, tmp_path_factory):
    return Setup(tiny_eve_dir, tmp_path_factory.mktemp("eve_engine"), max_batch=3)


def test_greedy_equals_the_oracle(tiny_ort_checkpoint, tmp_path):
    setup = Setup(tiny_ort_checkpoint, tmp_path, max_length=2 * MAX_LENGTH)  # EVEv2: the long system prompt + 22 rows
    params = SamplingParams(max_new_tokens=16)
    compared = 0
    for question in QUESTIONS:
        for images in ([], IMAGES[:1]):
            want = setup.oracle.run(question, images, params)
            got = setup.generator.generate([setup.request(question, images, params)])[0]
            assert got.token_ids == want.token_ids, (question, len(images))
            assert got.text == want.text
            compared += 1
    print(f"{setup.model.family}: {compared} prompts, greedy tokens identical to the PyTorch oracle")


def test_seeded_sampling_equals_the_oracle_and_repeats(eve):
    params = SamplingParams(max_new_tokens=12, temperature=1.3, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=7)
    want = eve.oracle.run(QUESTIONS[0], IMAGES[:1], params)
    first = eve.generator.generate([eve.request(QUESTIONS[0], IMAGES[:1], params)])[0]
    again = eve.generator.generate([eve.request(QUESTIONS[0], IMAGES[:1], params)])[0]
    assert first.token_ids == want.token_ids == again.token_ids
    other = SamplingParams(max_new_tokens=12, temperature=1.3, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=8)
    assert eve.generator.generate([eve.request(QUESTIONS[0], IMAGES[:1], other)])[0].token_ids != first.token_ids


def test_streaming_yields_the_same_text(eve):
    for params in (SamplingParams(max_new_tokens=20), SamplingParams(max_new_tokens=20, temperature=1.0, seed=3)):
        whole = eve.generator.generate([eve.request(QUESTIONS[1], IMAGES[1:], params)])[0]
        pieces = list(eve.generator.stream(eve.request(QUESTIONS[1], IMAGES[1:], params)))
        assert len(pieces) > 1
        assert "".join(pieces) == whole.text


def requests_for(setup: Setup) -> list[Request]:
    sampled = [SamplingParams(max_new_tokens=n, temperature=1.1, top_k=30, seed=s) for n, s in ((9, 1), (14, 2))]
    return [
        setup.request(QUESTIONS[0], IMAGES[:1]),
        setup.request(QUESTIONS[1], [], sampled[0]),
        setup.request(QUESTIONS[2], IMAGES[1:], SamplingParams(max_new_tokens=5)),
        setup.request(QUESTIONS[0], IMAGES, sampled[1]),
        setup.request(QUESTIONS[2], []),
    ]


def test_batched_equals_one_by_one(eve):
    requests = requests_for(eve)
    alone = [eve.generator.generate([r])[0] for r in requests]
    together = eve.generator.generate(requests)  # 5 requests on 3 slots: two wait for a free slot
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    assert max(r.queued_s for r in together) > 0


def test_requests_join_a_running_batch(eve):
    requests = requests_for(eve)
    alone = [eve.generator.generate([r])[0] for r in requests]
    generator = eve.generator
    seqs = [generator.submit(requests[0])]
    for request in requests[1:]:  # the server's hook: a new request between decode steps
        generator.step()
        seqs.append(generator.submit(request))
    while generator.busy:
        generator.step()
    assert [s.result.token_ids for s in seqs] == [r.token_ids for r in alone]


def test_stop_strings_cut_the_text(eve):
    full = eve.generator.generate([eve.request(QUESTIONS[0], [], SamplingParams(max_new_tokens=24))])[0]
    assert len(full.text) > 6, full.text
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    params = SamplingParams(max_new_tokens=24, stop=(stop,))
    cut = eve.generator.generate([eve.request(QUESTIONS[0], [], params)])[0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and len(cut.token_ids) < len(full.token_ids)
    assert "".join(eve.generator.stream(eve.request(QUESTIONS[0], [], params))) == cut.text
    assert cut.text == eve.oracle.run(QUESTIONS[0], [], params).text


def test_eos_ends_generation(eve):
    full = eve.generator.generate([eve.request(QUESTIONS[2], [])])[0]
    eos = full.token_ids[3]
    generator = Generator(eve.engine, eve.oracle.tokenizer, {eos}, ())
    ended = generator.generate([eve.request(QUESTIONS[2], [])])[0]
    assert ended.token_ids == full.token_ids[: full.token_ids.index(eos)]
    assert ended.finish_reason == "stop"
    assert full.finish_reason == "length" and len(full.token_ids) == 12


def test_context_limit(tiny_eve_dir, tmp_path):
    setup = Setup(tiny_eve_dir, tmp_path, max_length=40)
    request = setup.request(QUESTIONS[0], [])
    n = request.input_ids.size
    assert n < 40
    long_request = Request(np.concatenate([request.input_ids] * 3), None, request.params)
    with pytest.raises(ContextOverflowError):
        setup.generator.submit(long_request)
    assert not setup.generator.busy and not setup.engine.keys[0].any()
    # A prompt that leaves room for 3 more positions gets 4 tokens: the last needs no position.
    short = Request(np.resize(request.input_ids, 40 - 3), None, SamplingParams(max_new_tokens=30))
    result = setup.generator.generate([short])[0]
    assert result.finish_reason == "length" and len(result.token_ids) == 4
