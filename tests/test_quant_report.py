"""The accuracy report's numbers, worked by hand: KL divergence and token agreement of next-token
distributions, the gate's verdict and message, the markdown table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quant.errors import AccuracyDropError
from quant.metrics import Agreement, forced_logits, kl_divergence
from quant.report import Gate, Report, Row, default_questions
from runtime.eval.benchmarks import Score


def test_kl_divergence_by_hand():
    reference = np.array([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    uniform = np.array([[5.0, 5.0]])  # q = (1/2, 1/2): softmax ignores the offset
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_divergence(reference, uniform)[0] == pytest.approx(expected, rel=1e-12)
    assert kl_divergence(reference, reference + 7.0)[0] == pytest.approx(0.0, abs=1e-12)
    far = np.array([[0.0, 1000.0]])  # large logits stay finite (computed in log space)
    assert np.isfinite(kl_divergence(far, -far)).all()


def test_agreement_counts_top_tokens_and_averages_kl():
    a = Agreement()
    ref = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    test = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    a.add(ref, test)
    d = a.to_dict()
    assert d["positions"] == 3 and d["token_agreement"] == pytest.approx(2 / 3)
    assert d["mean_kl"] == pytest.approx(kl_divergence(ref[1:2], test[1:2])[0] / 3)
    assert d["max_kl"] == pytest.approx(kl_divergence(ref[1:2], test[1:2])[0])


class CountingEngine:
    """A DecoderEngine whose next token is always (last token + 1) % vocab, with a sharp distribution."""

    vocab_size, hidden_size, max_batch, max_length = 8, 4, 1, 64

    def __init__(self):
        self.fed: list[int] = []

    def logits_after(self, token: int) -> np.ndarray:
        logits = np.zeros(self.vocab_size, np.float32)
        logits[(token + 1) % self.vocab_size] = 10.0
        return logits

    def prefill(self, slot, input_ids, image_table):
        self.fed = [int(input_ids[-1])]
        return self.logits_after(self.fed[-1])

    def decode(self, slots, token_ids):
        self.fed.append(int(token_ids[0]))
        return self.logits_after(self.fed[-1])[None]

    def release(self, slot):
        pass


def test_forced_logits_feed_the_reference_tokens():
    """Teacher forcing: the prompt, then each given token in turn, whatever the engine would have chosen."""
    engine = CountingEngine()
    forced = forced_logits(engine, np.array([1, 2]), None, [5, 0, 7])
    assert engine.fed == [2, 5, 0, 7]
    assert forced.shape == (4, 8) and forced.argmax(-1).tolist() == [3, 6, 1, 0]


def score(overall: float, categories: dict[str, float]) -> Score:
    return Score("synthetic", "exact_match", {"exact_match": overall, "count": 10},
                 {k: {"exact_match": v, "count": 5} for k, v in categories.items()})


def test_gate_fails_by_how_much_unless_accepted():
    gate = Gate("int4_awq ORT", reference=0.80, value=0.775, max_drop_points=2.0)
    assert gate.drop_points == pytest.approx(2.5) and not gate.passed
    with pytest.raises(AccuracyDropError, match=r"int4_awq ORT lost 2\.5 points .*77\.5% vs 80\.0%.* more than the 2 allowed"):
        gate.check()
    Gate("int4_awq ORT", 0.80, 0.775, 2.0, accepted=True).check()
    Gate("int4_awq ORT", 0.80, 0.79, 2.0).check()  # 1 point: within the limit
    Gate("int4_awq ORT", 0.80, 0.85, 2.0).check()  # better than fp32


def test_report_table_and_json():
    rows = [Row("fp32", "reference", score(0.8, {"a": 0.9, "b": 0.7}), size_bytes=4_000_000,
                speed={"decode_tokens_per_s": 100.0}),
            Row("int4_awq ORT", "engine", score(0.775, {"a": 0.85, "b": 0.7}),
                {"positions": 10, "token_agreement": 0.9, "mean_kl": 0.0123, "max_kl": 0.1},
                {"decode_tokens_per_s": 250.0}, 1_000_000)]
    report = Report("int4_awq", {"name": "synthetic", "data": "x", "questions": 10}, rows,
                    Gate("int4_awq ORT", 0.8, 0.775, 2.0))
    table = report.table().splitlines()
    assert table[2] == "| fp32 | 80.0 | – | – | – | 100 | 4.0 MB |"
    assert table[3] == "| int4_awq ORT | 77.5 | -2.5 | 90.0 | 1.23e-02 | 250 | 1.0 MB |"
    d = report.to_dict()
    assert d["rows"]["int4_awq ORT"]["drop_points"] == 2.5
    assert d["rows"]["int4_awq ORT"]["accuracy"] == {"a": 0.85, "b": 0.7, "overall": 0.775}
    assert d["gate"]["passed"] is False and d["gate"]["drop_points"] == 2.5


def test_default_report_size_shrinks_with_the_model():
    """The whole split below 100M parameters; fewer questions as PyTorch's answers get slower on a CPU."""
    assert default_questions(5_000_000) == (None, 32)
    assert default_questions(400_000_000) == (45, 8)
    assert default_questions(1_100_000_000) == (18, 4)
    assert default_questions(6_800_000_000) == (18, 4)
