"""Why the decoder graph is emitted rather than traced: a plain torch export of the same checkpoint (KV cache
in and out, grown by concatenation each step; ONNX Runtime's own graph optimizations on), run by a numpy
loop, against Aerie's emitted graph run by OrtDecoder. 1 thread, the decode benchmark's prompt, runs
interleaved, CPU time and wall time.

    python bench/plain_export.py [--size 110m] [--tokens 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.decode import ROOT, now, set_threads, prepare, prompt_ids  # noqa: E402


def export_plain(checkpoint: Path, path: Path) -> None:
    """torch.onnx.export (TorchScript) of `(inputs_embeds, attention_mask, position_ids, *past) -> (logits, *present)`."""
    import torch
    from transformers import DynamicCache, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    layers = model.config.num_hidden_layers

    class WithCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, inputs_embeds, attention_mask, position_ids, *past):
            cache = DynamicCache(config=model.config)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            return (out.logits[:, -1:], *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    heads, head_dim = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    past = [torch.zeros(1, heads, 3, head_dim) for _ in range(2 * layers)]
    args = (torch.zeros(1, 2, model.config.hidden_size), torch.ones(1, 5, dtype=torch.int64), torch.tensor([[3, 4]]), *past)
    past_names = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    axes = {"inputs_embeds": {1: "s"}, "attention_mask": {1: "t"}, "position_ids": {1: "s"},
            **{n: {2: "p"} for n in past_names}, **{n: {2: "t"} for n in present_names}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithCache(), args, str(path), dynamo=False, opset_version=17,
                          input_names=["inputs_embeds", "attention_mask", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="110m", choices=["110m", "350m"])
    parser.add_argument("--tokens", type=int, default=64, help="decode steps timed per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default=str(ROOT / ".tmp" / "bench"))
    args = parser.parse_args()
    set_threads()
    prepare(Path(args.work), args.size)
    work = Path(args.work)
    plain = work / f"plain_{args.size}" / "model.onnx"
    if not plain.is_file():
        print("  exporting with torch.onnx.export ...", flush=True)
        export_plain(work / f"llama_{args.size}", plain)

    import numpy as np

    from runtime.backends.ort_decoder import OrtDecoder
    from runtime.backends.ort_session import open_session

    engine_dir = work / f"aerie_{args.size}_aerie"
    spec = json.loads((engine_dir / "decoder.json").read_text())
    engine = OrtDecoder(engine_dir, spec, threads=1)
    session = open_session(plain, "cpu", threads=1)
    embed = np.load(engine_dir / spec["embed_tokens"], mmap_mode="r")
    names = [o.name for o in session.get_outputs()]
    ids = np.array(prompt_ids())

    def emitted():
        begin = now()
        tokens = [int(engine.prefill(0, ids, None).argmax())]
        start = now()
        for _ in range(args.tokens):
            tokens.append(int(engine.decode([0], np.array([tokens[-1]]))[0].argmax()))
        return tokens, begin, start, now()

    def traced():
        shape = (1, spec["num_kv_heads"], 0, spec["head_dim"])
        past = {n.replace("present", "past"): np.zeros(shape, np.float32) for n in names[1:]}
        step_ids, length, tokens, start, begin = ids, 0, [], None, now()
        for _ in range(args.tokens + 1):
            n = step_ids.size
            feeds = {"inputs_embeds": embed[step_ids][None], "attention_mask": np.ones((1, length + n), np.int64),
                     "position_ids": np.arange(length, length + n)[None], **past}
            outputs = session.run(None, feeds)
            past = {k.replace("present", "past"): v for k, v in zip(names[1:], outputs[1:])}
            length += n
            tokens.append(int(outputs[0][0, -1].argmax()))
            step_ids = np.array([tokens[-1]])
            start = start or now()
        return tokens, begin, start, now()

    results = {"emitted (Aerie)": [], "traced (plain export)": []}
    reference = None
    for _ in range(args.runs + 1):  # the first round warms up
        for name, run in (("emitted (Aerie)", emitted), ("traced (plain export)", traced)):
            tokens, begin, start, end = run()
            reference = reference or tokens
            assert tokens == reference, f"{name} gave other tokens"
            results[name].append([1000 * (start[k] - begin[k]) for k in (0, 1)]
                                 + [args.tokens / (end[k] - start[k]) for k in (0, 1)])
    print(f"| graph ({args.size} fp32, 1 thread) | TTFT ms (CPU ms) | decode tok/s (per CPU s) |\n|---|---|---|")
    for name, values in results.items():
        ttft, ttft_cpu, wall, cpu = (statistics.median(v[k] for v in values[1:]) for k in range(4))
        print(f"| {name} | {ttft:.0f} ({ttft_cpu:.0f}) | {wall:.1f} ({cpu:.1f}) |")


if __name__ == "__main__":
    main()
