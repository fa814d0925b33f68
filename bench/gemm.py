"""The prefill's matrix multiplies alone: float32 GEMM of a 128-token prompt through a decoder's linear shapes,
PyTorch (the kernel HF's prefill runs) against ONNX Runtime's MatMul (Aerie's), one thread, same data.

    python bench/gemm.py                 # the 110m and 350m shapes of bench/decode.py
    python bench/gemm.py --tokens 512    # a longer prompt
    python bench/gemm.py --nbits         # + one decode step's 4-bit MatMul: weight bytes per second in cache and not

Time to first token on the CPU is these GEMMs; their GFLOP/s says which engine's kernel is faster on this CPU
and why the TTFT ratio moves between machines (docs/performance.md). Prints the CPU's vector extensions and
PyTorch's BLAS, then one row per shape: best of --runs, the engines interleaved.

--nbits times what bounds an INT4 decode step: ONNX Runtime's MatMulNBits (4 bits, groups of 128, int8
activations: Aerie's INT4 graph) on one token, over a weight that fits in this core's L2 cache and over one
far larger than the L3: if both read their bytes at the same rate, the kernel's arithmetic, not memory,
sets the decode speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.decode import SIZES, set_threads  # noqa: E402


def linear_shapes(size: str) -> list[tuple[int, int]]:
    """(in, out) of one Llama layer's linears, q/k/v and gate/up each merged as Aerie's graph does."""
    s = SIZES[size]
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    qkv = (s["num_attention_heads"] + 2 * s["num_key_value_heads"]) * head_dim
    h, i = s["hidden_size"], s["intermediate_size"]
    return [(h, qkv), (h, h), (h, 2 * i), (i, h)]


def ort_matmul(k: int, n: int, weight: np.ndarray):
    """An ONNX Runtime session of one MatMul by a [k, n] float32 initializer, one thread."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                              [numpy_helper.from_array(weight, "w")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_matmul_nbits(k: int, n: int, block: int = 128):
    """An ONNX Runtime session of one MatMulNBits (4 bits, `block` inputs a scale, int8 activations) over random
    codes [n, k], one thread; returns it and the weight's bytes (codes and scales)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (n, k // block, block // 2), dtype=np.uint8)
    scales = (rng.random((n, k // block), dtype=np.float32) * 0.01).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=4)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, packed.nbytes + scales.nbytes


def nbits_rates(runs: int) -> None:
    """Weight GB/s of one-token MatMulNBits: in L2 (768 x 1024: 0.4 MB) and out of L3 (8192 x 16384: 72 MB)."""
    print("\n| MatMulNBits, 1 token | weight MB | weight GB/s |\n|---|---|---|")
    for k, n, where in ((768, 1024, "in L2"), (8192, 16384, "beyond L3")):
        session, size = ort_matmul_nbits(k, n)
        x = np.random.default_rng(1).standard_normal((1, k), dtype=np.float32)
        seconds = best_seconds(lambda: session.run(None, {"x": x}), runs * 5)
        print(f"| {k} x {n} ({where}) | {size / 1e6:.1f} | {size / seconds / 1e9:.1f} |", flush=True)


def best_seconds(step, runs: int) -> float:
    step()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_extensions() -> str:
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    family = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("cpu family")), "?")
    return f"cpu family {family}; " + " ".join(f for f in flags if f.startswith(("avx512f", "avx512_bf16", "avx512_vnni", "amx")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["110m", "350m"], choices=list(SIZES))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--nbits", action="store_true", help="also one decode step's 4-bit MatMul, in cache and not")
    args = parser.parse_args()
    set_threads(1)
    import onnxruntime
    import torch

    torch.set_num_threads(1)
    blas = "MKL" if torch.backends.mkl.is_available() else "no MKL"
    print(f"# {cpu_extensions()}; torch {torch.__version__} ({blas}, mkldnn {torch.backends.mkldnn.is_available()}); "
          f"onnxruntime {onnxruntime.__version__}")
    print("\n| size | tokens x in x out | torch GFLOP/s | ONNX Runtime GFLOP/s | ORT / torch |\n|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    totals = {"torch": 0.0, "ort": 0.0, "flop": 0.0}
    for size in args.sizes:
        for k, n in linear_shapes(size):
            x = rng.standard_normal((args.tokens, k), dtype=np.float32)
            w = rng.standard_normal((n, k), dtype=np.float32) * 0.02  # nn.Linear's [out, in]
            session, w_t = ort_matmul(k, n, np.ascontiguousarray(w.T)), torch.from_numpy(w)
            x_t = torch.from_numpy(x)
            with torch.no_grad():
                torch_s = best_seconds(lambda: torch.nn.functional.linear(x_t, w_t), args.runs)
            ort_s = best_seconds(lambda: session.run(None, {"x": x}), args.runs)
            flop = 2 * args.tokens * k * n
            totals["torch"] += torch_s
            totals["ort"] += ort_s
            totals["flop"] += flop
            print(f"| {size} | {args.tokens} x {k} x {n} | {flop / torch_s / 1e9:.1f} | {flop / ort_s / 1e9:.1f} | "
                  f"{torch_s / ort_s:.2f}x |", flush=True)
    print(f"| all | | {totals['flop'] / totals['torch'] / 1e9:.1f} | {totals['flop'] / totals['ort'] / 1e9:.1f} | "
          f"{totals['torch'] / totals['ort']:.2f}x |")
    if args.nbits:
        nbits_rates(args.runs)


if __name__ == "__main__":
    main()
