"""The ONNX Runtime decoder engine: logits equal PyTorch's (prefill with image rows, chunked or not, and
KV-cached steps, alone or batched with other slots), the KV cache stays in its buffers, bad input fails
before any work."""

from __future__ import annotations

import numpy as np
import pytest

from decoder_oracle import prompt_with_image, torch_greedy_logits
from export.decoder import export_decoder
from models.checkpoint import load_model
from runtime.backends.ort_decoder import OrtDecoder
from runtime.errors import ContextOverflowError

MAX_LENGTH = 40


def build(checkpoint, tmp_path, **engine_options):
    model = load_model(checkpoint)
    spec = export_decoder(model.decoder, tmp_path, max_length=MAX_LENGTH)
    return model, spec, OrtDecoder(tmp_path, spec, threads=1, **engine_options)


def greedy_run(engine: OrtDecoder, slot: int, ids, table, steps: int) -> list[np.ndarray]:
    logits = [engine.prefill(slot, ids, table)]
    for _ in range(steps):
        logits.append(engine.decode([slot], np.array([logits[-1].argmax()]))[0])
    return logits


@pytest.mark.parametrize("prefill_chunk", [512, 4])
def test_logits_match_torch(tiny_ort_checkpoint, tmp_path, prefill_chunk):
    model, spec, engine = build(tiny_ort_checkpoint, tmp_path, prefill_chunk=prefill_chunk)
    ids, table = prompt_with_image(spec["vocab_size"], spec["hidden_size"])
    expected = torch_greedy_logits(model, ids, table, steps=5)
    got = greedy_run(engine, 0, ids, table, steps=5)
    errors = [float(np.abs(g - e).max()) for g, e in zip(got, expected)]
    print(f"{model.family} chunk {prefill_chunk}: prefill {errors[0]:.2e}, decode {max(errors[1:]):.2e}")
    assert max(errors) < 1e-4


def test_batched_slots_match_torch(tiny_eagle25_dir, tmp_path):
    """Three conversations in slots 0, 1 and 3 (slot 2 idle) step together; slot 1 sits out some steps."""
    model, spec, engine = build(tiny_eagle25_dir, tmp_path, max_batch=4)
    prompts = [prompt_with_image(spec["vocab_size"], spec["hidden_size"], seed=s) for s in range(3)]
    prompts[1] = (prompts[1][0][:4], None)  # a short text-only prompt
    expected = [torch_greedy_logits(model, ids, table, steps=4) for ids, table in prompts]
    slots = [0, 1, 3]
    got = {slot: [engine.prefill(slot, ids, table)] for slot, (ids, table) in zip(slots, prompts)}
    for step in range(4):
        stepping = slots if step % 2 == 0 else [3, 0]  # an unordered subset with a gap
        tokens = np.array([got[s][-1].argmax() for s in stepping])
        for slot, row in zip(stepping, engine.decode(stepping, tokens)):
            got[slot].append(row)
    for slot, want in zip(slots, expected):
        n = len(got[slot])
        assert max(float(np.abs(g - e).max()) for g, e in zip(got[slot], want[:n])) < 1e-4


def test_kv_cache_stays_in_its_buffers(tiny_eve_dir, tmp_path):
    _, spec, engine = build(tiny_eve_dir, tmp_path, max_batch=2)
    pointers = [k.ctypes.data for k in engine.keys + engine.values]
    ids = np.arange(3, 12)
    logits = engine.prefill(1, ids, None)
    for _ in range(3):
        logits = engine.decode([1], np.array([logits.argmax()]))[0]
    assert [k.ctypes.data for k in engine.keys + engine.values] == pointers
    n = ids.size + 3
    for cache in engine.keys + engine.values:
        # The present output went into the past buffer: written up to the sequence length, untouched after.
        assert np.abs(cache[1, :, :n]).max(axis=-1).all()
        assert not cache[1, :, n:].any() and not cache[0].any()
    bindings = len(engine._bindings)
    engine.decode([1], np.array([5]))
    assert len(engine._bindings) == bindings  # decode reuses its binding: nothing is rebuilt per token


def test_context_overflow_is_refused_before_any_work(tiny_eve_dir, tmp_path):
    _, spec, engine = build(tiny_eve_dir, tmp_path, max_length=10)
    assert engine.max_length == 10
    with pytest.raises(ContextOverflowError, match="context is 10"):
        engine.prefill(0, np.arange(3, 14), None)
    assert not engine.keys[0].any() and engine.lengths[0] == 0
    engine.prefill(0, np.arange(3, 13), None)  # exactly the context: fits, no room for another token
    with pytest.raises(ContextOverflowError, match="whole context"):
        engine.decode([0], np.array([4]))


def test_bad_input_is_refused(tiny_eve_dir, tmp_path):
    _, spec, engine = build(tiny_eve_dir, tmp_path, max_batch=2)
    vocab, hidden = spec["vocab_size"], spec["hidden_size"]
    with pytest.raises(ValueError, match="token ids"):
        engine.prefill(0, np.array([1, vocab]), None)  # an image id with no image table
    with pytest.raises(ValueError, match="image table"):
        engine.prefill(0, np.array([1, vocab]), np.zeros((1, hidden + 1), np.float32))
    with pytest.raises(ValueError, match="prefill them first"):
        engine.decode([1], np.array([3]))
    with pytest.raises(ValueError, match="outside"):
        engine.prefill(2, np.array([1]), None)
    engine.prefill(0, np.array([1, 2]), None)
    engine.release(0)
    with pytest.raises(ValueError, match="prefill them first"):
        engine.decode([0], np.array([3]))


def test_threads_are_configurable(tiny_eve_dir, tmp_path):
    _, _, engine = build(tiny_eve_dir, tmp_path)
    assert engine.session.get_session_options().intra_op_num_threads == 1
    assert engine.session.get_providers() == ["CPUExecutionProvider"]


def test_float16_engine_follows_float32(tiny_eve_dir, tmp_path):
    model = load_model(tiny_eve_dir)
    engines = {}
    for dtype in ("float32", "float16"):
        spec = export_decoder(model.decoder, tmp_path / dtype, dtype=dtype, max_length=MAX_LENGTH)
        engines[dtype] = OrtDecoder(tmp_path / dtype, spec, threads=1)
    assert engines["float16"].keys[0].dtype == np.float16
    ids, table = prompt_with_image(spec["vocab_size"], spec["hidden_size"])
    want = greedy_run(engines["float32"], 0, ids, table, steps=3)
    got = [engines["float16"].prefill(0, ids, table)]
    for logits in want[:-1]:  # the same tokens as the fp32 run, so the steps compare
        got.append(engines["float16"].decode([0], np.array([logits.argmax()]))[0])
    scale = max(float(np.abs(w).max()) for w in want)
    assert all(g.dtype == np.float32 for g in got)
    assert max(float(np.abs(g - w).max()) for g, w in zip(got, want)) < 1e-2 * scale


def test_prefill_chunk_shrinks_with_a_long_context(tiny_eve_dir, tmp_path, monkeypatch):
    import runtime.backends.ort_decoder as ort_decoder

    model, spec, _ = build(tiny_eve_dir, tmp_path)
    heads = spec["num_heads"]
    monkeypatch.setattr(ort_decoder, "SCRATCH_BYTES", heads * MAX_LENGTH * 4 * 20)  # room for 20 tokens a chunk
    engine = OrtDecoder(tmp_path, spec, threads=1)
    assert engine.prefill_chunk == 20
    ids, table = prompt_with_image(spec["vocab_size"], spec["hidden_size"])
    ids = np.concatenate([ids, ids[:10]])  # 25 tokens: two chunks
    expected = torch_greedy_logits(model, ids, table, steps=1)
    assert max(float(np.abs(g - e).max()) for g, e in zip(greedy_run(engine, 0, ids, table, 1), expected)) < 1e-4
