"""The TensorRT-LLM decoder build up to the files `trtllm-build` consumes: the multimodal sizing rule, the exact
command, `decoder/build_engine.sh` and its README, the pending step in the manifest, and the runtime
backend's one-line refusal. TensorRT-LLM can't be installed here (platform.md): building and running the
engine are the `gpu` tests, which also need `tensorrt_llm`."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from engines.trtllm import CHECKPOINT_DIR, SCRIPT, DecoderSizing, build_command, build_trtllm_decoder
from export.trtllm import write_trtllm_checkpoint
from models.checkpoint import load_model
from runtime.backends.trtllm_decoder import TrtllmDecoder, import_trtllm, table_extra_id
from runtime.errors import AerieError
from runtime.preprocess import PreprocessSpec, max_image_tokens, preprocess_image


def test_max_image_tokens_is_what_preprocessing_can_give(tiny_checkpoint):
    spec = load_model(tiny_checkpoint).preprocess_spec()
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in s) for s in rng.integers(4, 700, size=(60, 2))] + [(500, 500), (4000, 9), (9, 4000)]
    counts = [preprocess_image(Image.new("RGB", size), spec).num_tokens for size in sizes]
    assert max(counts) == max_image_tokens(spec)


def test_max_image_tokens_of_the_published_models():
    assert max_image_tokens(PreprocessSpec(kind="eve_anyres", image_size=672)) == 1 + 24 * 25  # EVE-7B
    assert max_image_tokens(PreprocessSpec(kind="eve_anyres", image_size=1344)) == 1 + 48 * 49  # EVE-7B-HD
    assert max_image_tokens(PreprocessSpec(kind="dynamic_tiles", image_size=448, tokens_per_tile=256)) == 13 * 256
    assert max_image_tokens(PreprocessSpec(kind="pad_square", image_size=1024, tokens_per_image=1024)) == 1024


def test_sizing_rule():
    sizing = DecoderSizing(max_batch_size=4, max_images_per_request=2, tokens_per_image=3328, max_text_len=512, max_new_tokens=256)
    assert sizing.max_multimodal_len == 4 * 2 * 3328  # the prompt-table rows of a full batch
    assert sizing.max_prompt_len == 512 + 2 * 3328  # image tokens count as input
    assert sizing.max_seq_len == 512 + 2 * 3328 + 256
    assert sizing.max_input_len == sizing.max_seq_len - 1  # decode steps resubmit the sequence so far
    assert sizing.max_num_tokens == 8192  # trtllm-build's default already holds a whole prompt
    assert DecoderSizing(1, 4, 3328, 100, 16).max_num_tokens == 100 + 4 * 3328
    with pytest.raises(AerieError, match="max_batch_size must be positive"):
        DecoderSizing(0, 1, 10, 10, 10)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    """An engine directory holding the unquantized TRT-LLM checkpoint of the family's decoder."""
    model = load_model(tiny_checkpoint)
    engine_dir = tmp_path_factory.mktemp(f"trtllm_{model.family}")
    write_trtllm_checkpoint(model.decoder, engine_dir / "decoder" / CHECKPOINT_DIR, "bfloat16")
    return model, engine_dir


def arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_command(checkpoint):
    model, engine_dir = checkpoint
    config = json.loads((engine_dir / "decoder" / CHECKPOINT_DIR / "config.json").read_text())
    tokens = max_image_tokens(model.preprocess_spec())
    sizing = DecoderSizing(max_batch_size=3, max_images_per_request=2, tokens_per_image=tokens, max_text_len=200, max_new_tokens=64)
    argv = build_command(config, sizing)
    assert argv[0] == "trtllm-build"
    assert (arg(argv, "--checkpoint_dir"), arg(argv, "--output_dir")) == ("trtllm_checkpoint", "trtllm_engine")
    assert arg(argv, "--max_multimodal_len") == str(3 * 2 * tokens)
    assert arg(argv, "--max_seq_len") == str(200 + 2 * tokens + 64)
    assert arg(argv, "--max_input_len") == str(200 + 2 * tokens + 64 - 1)
    assert arg(argv, "--max_batch_size") == "3"
    assert arg(argv, "--gemm_plugin") == arg(argv, "--gpt_attention_plugin") == "bfloat16"
    assert arg(argv, "--use_paged_context_fmha") == "enable"
    assert "--gather_generation_logits" in argv and "--use_fp8_context_fmha" not in argv


def test_command_for_quantized_checkpoints_and_limits(checkpoint):
    _, engine_dir = checkpoint
    config = json.loads((engine_dir / "decoder" / CHECKPOINT_DIR / "config.json").read_text())
    sizing = DecoderSizing(1, 1, 21, 100, 32)
    fp8 = {**config, "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"]}}
    argv = build_command(fp8, sizing)
    assert arg(argv, "--gemm_plugin") == "auto" and arg(argv, "--use_fp8_context_fmha") == "enable"
    awq = {**config, "quantization": {"quant_algo": "W4A16_AWQ", "group_size": 128, "kv_cache_quant_algo": None}}
    argv = build_command(awq, sizing)
    assert arg(argv, "--gemm_plugin") == "auto" and "--use_fp8_context_fmha" not in argv
    with pytest.raises(AerieError, match="exceeds the model's 2048 positions"):
        build_command(config, DecoderSizing(1, 4, 500, 100, 100))
    with pytest.raises(AerieError, match="float16 or bfloat16"):
        build_command({**config, "dtype": "float32"}, sizing)


@pytest.fixture(scope="module")
def built(checkpoint):
    if shutil.which("trtllm-build"):
        pytest.skip("trtllm-build is installed here: the engine is built, nothing is pending (test_engine_on_gpu)")
    model, engine_dir = checkpoint
    sizing = DecoderSizing(2, 1, max_image_tokens(model.preprocess_spec()), 100, 32)
    part, pending = build_trtllm_decoder(engine_dir, sizing)
    return model, engine_dir, sizing, part, pending


def test_pending_script_and_readme(built):
    _, engine_dir, sizing, part, pending = built
    decoder = engine_dir / "decoder"
    assert pending == [f"decoder: run `bash decoder/{SCRIPT}` on the target GPU machine (TensorRT-LLM is not installed "
                       "here, and its engines are specific to the GPU they are built on)"]
    assert part["files"] == ["decoder/README.md", "decoder/build_engine.sh", "decoder/trtllm_checkpoint/config.json",
                             "decoder/trtllm_checkpoint/rank0.safetensors"]
    assert (part["backend"], part["dtype"], part["quantization"]) == ("trtllm", "bfloat16", None)
    script = (decoder / SCRIPT).read_text()
    assert subprocess.run(["bash", "-n", str(decoder / SCRIPT)]).returncode == 0
    assert (decoder / SCRIPT).stat().st_mode & 0o111
    assert shlex.join(part["command"]) in script.splitlines()
    assert part["sizing"]["max_multimodal_len"] == sizing.max_multimodal_len
    assert shlex.join(part["command"]) in (decoder / "README.md").read_text()


def test_script_says_what_is_missing_here(built, tmp_path):
    """Run from anywhere on a machine without TensorRT-LLM, the script stops before doing anything, in one line."""
    _, engine_dir, _, _, _ = built
    result = subprocess.run(["bash", str(engine_dir / "decoder" / SCRIPT)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr.strip().startswith("trtllm-build not found: install TensorRT-LLM on this GPU machine")
    assert not (engine_dir / "decoder" / "trtllm_engine").exists()


def test_manifest_records_the_pending_step(built):
    from runtime.manifest import Manifest, verify, write_manifest

    model, engine_dir, _, part, pending = built
    image_tokens = {"first_id": part["vocab_size"], "hidden_size": part["hidden_size"], "image_start": "",
                    "image_end": "", "max_per_image": 0}
    manifest = Manifest(family=model.family, source={"path": "tiny", "digest": "sha256:0"}, parts={"decoder": part},
                        preprocess=model.preprocess_spec().to_dict(), image_tokens=image_tokens,
                        chat_template=model.chat_template, special_ids={"bos": None, "eos": None, "pad": None,
                                                                        "stop": []}, pending=pending)
    write_manifest(engine_dir, manifest)
    assert verify(engine_dir).pending == pending


def test_runtime_refuses_an_unbuilt_engine_in_one_line(built):
    _, engine_dir, _, part, _ = built
    with pytest.raises(AerieError, match=f"has not been built; on the target GPU machine run `bash .*decoder/{SCRIPT}`") as err:
        TrtllmDecoder(engine_dir, part)
    assert "\n" not in str(err.value)


def test_runtime_says_tensorrt_llm_is_missing():
    try:
        import tensorrt_llm  # noqa: F401
    except ImportError:
        with pytest.raises(AerieError, match="needs TensorRT-LLM on an NVIDIA GPU machine \\(tensorrt_llm is not installed\\)"):
            import_trtllm()
    else:
        pytest.skip("tensorrt_llm is installed here")


def test_image_tables_get_distinct_reuse_keys():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = a.copy()
    b[2, 3] += 1
    assert table_extra_id(a) == table_extra_id(a.copy()) != table_extra_id(b)
    assert all(0 < table_extra_id(t) < 2**63 for t in (a, b))


@pytest.mark.gpu
def test_engine_on_gpu(tiny_checkpoint, tmp_path):
    """On a GPU with TensorRT-LLM: build the engine and generate greedily; the tokens equal the PyTorch oracle's."""
    pytest.importorskip("tensorrt_llm", reason="TensorRT-LLM is not installed on this GPU machine")
    from models.engines import torch_pipeline
    from runtime.generate import Generator, Request
    from runtime.sampling import SamplingParams

    model = load_model(tiny_checkpoint)
    write_trtllm_checkpoint(model.decoder, tmp_path / "decoder" / CHECKPOINT_DIR, "float16")
    part, pending = build_trtllm_decoder(tmp_path, DecoderSizing(2, 1, max_image_tokens(model.preprocess_spec()), 100, 8))
    assert pending == []
    oracle = torch_pipeline(tiny_checkpoint)
    image = Image.new("RGB", (90, 50), (200, 10, 10))
    request = oracle.prepare("What colour is the shape?", [image], SamplingParams(max_new_tokens=8)).request
    expected = oracle.run("What colour is the shape?", [image], SamplingParams(max_new_tokens=8))
    generator = Generator(TrtllmDecoder(tmp_path, part), oracle.tokenizer, oracle.manifest.special_ids["stop"])
    [result] = generator.generate([request])
    assert result.token_ids == expected.token_ids
