"""llama.cpp's side of bench/decode.py; runs in the venv the benchmark makes (llama-cpp-python + gguf).

    python llamacpp_worker.py convert CHECKPOINT OUT.gguf f32|q4_0    the HF Llama checkpoint as GGUF
    python llamacpp_worker.py run OUT.gguf PROMPT_JSON NEW_TOKENS RUNS THREADS  -> one JSON line

The GGUF is written here with the `gguf` package from the safetensors weights (llama.cpp's own converter
refuses the benchmark's word-level tokenizer). llama.cpp's Llama rotates interleaved pairs where Hugging
Face rotates halves, so Q and K rows are reordered per head, as llama.cpp's converter does.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import now, timed  # noqa: E402  (the benchmark's clock, stdlib only)


def reorder_for_interleaved_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from [first half | second half] to pairs (x0, x_half), (x1, x_half+1), ..."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def convert(checkpoint: Path, out: Path, precision: str) -> None:
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    weights = load_file(str(checkpoint / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    quant = gguf.GGMLQuantizationType.Q4_0 if precision == "q4_0" else gguf.GGMLQuantizationType.F32
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if precision == "q4_0" else gguf.LlamaFileType.ALL_F32)
    vocab = config["vocab_size"]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}

    def add(name: str, array: np.ndarray, quantize: bool) -> None:
        array = np.ascontiguousarray(array, np.float32)
        if quantize and quant != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(array, quant), raw_dtype=quant)
        else:
            writer.add_tensor(name, array)

    add("token_embd.weight", weights["model.embed_tokens.weight"], quantize=False)
    for i in range(config["num_hidden_layers"]):
        for hf, gg in names.items():
            w = weights[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                w = reorder_for_interleaved_rope(w, heads)
            elif hf == "self_attn.k_proj":
                w = reorder_for_interleaved_rope(w, kv_heads)
            add(f"blk.{i}.{gg}.weight", w, quantize=w.ndim == 2)
    add("output_norm.weight", weights["model.norm.weight"], quantize=False)
    add("output.weight", weights["lm_head.weight"], quantize=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def run(gguf_path: Path, prompt: list[int], new_tokens: int, runs: int, threads: int) -> None:
    from llama_cpp import Llama

    llm = Llama(str(gguf_path), n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    vocab = llm.n_vocab()

    def once():
        llm.reset()
        start = now()
        llm.eval(prompt)
        tokens, first = [], None
        for k in range(new_tokens):
            if k:
                llm.eval([tokens[-1]])
            # llama-cpp-python 0.3 copies logits into `scores` only with logits_all: read the context's row.
            tokens.append(int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,)))))
            first = first or now()
        return tokens, start, first, now()

    print(json.dumps(timed(once, runs)))


if __name__ == "__main__":
    if sys.argv[1] == "convert":
        convert(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    else:
        run(Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
