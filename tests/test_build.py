"""build.py on the tiny checkpoints of every family: the engine is written with its manifest last, the
self-check against PyTorch passes, the runtime's verify names a corrupted file, and each way a build can
fail has its exit code and a one-line error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from engines import build
from conftest import make_tiny_checkpoint
from runtime.errors import ManifestError
from runtime.manifest import SCHEMA_VERSION, verify
from runtime.pipeline import Pipeline
from runtime.sampling import SamplingParams
from tiny_engines import FAMILIES, built_engine, run_build

STEPS = ("tokenizer", "load", "export decoder", "export vision", "reference", "write", "verify", "self-check")


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request, tmp_path_factory):
    return built_engine(request.param, tmp_path_factory)


def test_build_succeeds_with_self_check(engine):
    checkpoint, out, log = engine
    lines = [line.strip() for line in log.splitlines() if line.startswith("  ")]
    assert [next(name for name in STEPS if line.startswith(name)) for line in lines] == list(STEPS), log
    assert all(line.endswith(" s") for line in lines), f"every step shown with its time:\n{log}"
    # Read as it is meant: how many prompts, how many of the tokens agree, errors absolute and relative.
    check = next(line for line in lines if line.startswith("self-check"))
    assert "3 prompts (2 with the sample image): all " in check and " greedy tokens equal PyTorch's" in check
    assert "logits " in check and "vision rows " in check and check.count("of their scale") == 2
    manifest = verify(out)
    assert manifest.schema_version == SCHEMA_VERSION
    assert manifest.build["flags"] == {"backend": "ort", "dtype": "fp32", "min_tiles": None, "max_tiles": None,
                                       "max_length": None, "self_check": True,
                                       "compute_capability": None, "quant": None, "lm_head": None}
    assert {"vision", "decoder"} == set(manifest.parts)
    assert {"tokenizer/tokenizer.json", "vision/model.onnx", "decoder/model.onnx", "embed_tokens.npy"} <= set(manifest.files)
    assert manifest.source["digest"].startswith("sha256:")
    assert not list(out.parent.glob(".*.partial")), "the work directory was left behind"


def test_corrupt_engine_file_is_named(engine, tmp_path):
    _, out, _ = engine
    copy = shutil.copytree(out, tmp_path / "engine")
    victim = copy / "decoder" / "model.onnx"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"decoder/model\.onnx: sha256 differs.*rebuild"):
        Pipeline(copy)


def test_tiling_flags_reach_the_manifest(tiny_eagle25_dir, tmp_path):
    out = tmp_path / "engine"
    code, log, err = run_build([str(tiny_eagle25_dir), "--out", str(out), "--min-tiles", "2", "--max-tiles", "3",
                                "--no-self-check"])
    assert code == 0, log + err
    manifest = verify(out)
    assert (manifest.preprocess["min_tiles"], manifest.preprocess["max_tiles"]) == (2, 3)
    assert manifest.build["flags"]["max_tiles"] == 3 and manifest.build["flags"]["self_check"] is False
    assert "self-check" not in log


def test_existing_output_needs_force(tmp_path, tiny_eve_dir):
    out = tmp_path / "engine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_build([str(tiny_eve_dir), "--out", str(out)])
    assert code == build.EXIT_EXISTS and "pass --force" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_build([str(tiny_eve_dir), "--out", str(out), "--force"])
    assert code == build.EXIT_EXISTS and "not an Aerie engine directory" in err
    assert (out / "notes.txt").read_text() == "mine", "--force must not delete a directory that is not an engine"


def test_checkpoint_errors(tmp_path, tiny_eve_dir):
    code, _, err = run_build([str(tmp_path / "absent"), "--out", str(tmp_path / "o1")])
    assert code == build.EXIT_CHECKPOINT and "no config.json" in err and len(err.strip().splitlines()) == 1

    unknown = shutil.copytree(tiny_eve_dir, tmp_path / "unknown")
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    code, _, err = run_build([str(unknown), "--out", str(tmp_path / "o2")])
    assert code == build.EXIT_CHECKPOINT and "unknown model_type 'llava'" in err

    no_weights = shutil.copytree(tiny_eve_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    code, _, err = run_build([str(no_weights), "--out", str(tmp_path / "o3")])
    assert code == build.EXIT_CHECKPOINT and "no weights found" in err
    assert not (tmp_path / "o3").exists() and not list(tmp_path.glob(".o3.partial"))


def test_bad_arguments_exit_2(tmp_path, tiny_eve_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        build.main([str(tiny_eve_dir), "--out", str(tmp_path / "o"), "--max-tiles", "0"])
    assert exc.value.code == 2 and "--max-tiles must be at least 1" in capsys.readouterr().err
    code, _, err = run_build([str(tiny_eve_dir), "--out", str(tmp_path / "o"), "--max-tiles", "4"])
    assert code == build.EXIT_FAILED and "apply to tiled models" in err


def test_evev2_refuses_what_tensorrt_llm_cannot_express(tmp_path, tiny_evev2_dir):
    """Modality-routed weights have no TensorRT-LLM form: --backend tensorrt and --quant are refused up front."""
    from quant.__main__ import main as quant_main

    for flags, says in ((["--backend", "tensorrt"], "modality-routed weights"), (["--quant", "int4_awq"], "--quant")):
        code, log, err = run_build([str(tiny_evev2_dir), "--out", str(tmp_path / "o"), *flags])
        assert code == build.EXIT_FAILED and says in err and "TensorRT-LLM" in err, err
        assert len(err.strip().splitlines()) == 1 and "load" not in log and not (tmp_path / "o").exists()
    assert quant_main([str(tiny_evev2_dir), "--mode", "fp8", "--out", str(tmp_path / "q")]) == 1
    assert not (tmp_path / "q").exists()


def test_no_disk_space(tmp_path, tiny_eve_dir, monkeypatch):
    """A disk with too little room for the engine is refused before anything is exported."""
    real = shutil.disk_usage
    monkeypatch.setattr(build.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    out = tmp_path / "engine"
    code, log, err = run_build([str(tiny_eve_dir), "--out", str(out)])
    assert code == build.EXIT_DISK and "free some space" in err and len(err.strip().splitlines()) == 1
    assert "export" not in log and not out.exists() and not list(tmp_path.glob(".engine.partial"))


def test_self_check_catches_a_wrong_engine(tmp_path, monkeypatch):
    """An exporter that gets the weights wrong: the build fails with exit 6 and no engine at --out."""
    import engines.ort

    real_export = engines.ort.export_decoder

    def faulty_export(decoder, *args, **kwargs):
        with torch.no_grad():
            head = decoder.get_output_embeddings().weight
            saved = head.clone()
            head.add_(torch.randn_like(head))
            try:
                return real_export(decoder, *args, **kwargs)
            finally:
                head.copy_(saved)

    monkeypatch.setattr(engines.ort, "export_decoder", faulty_export)
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "eve", seed=1)
    out = tmp_path / "engine"
    code, log, err = run_build([str(checkpoint), "--out", str(out), "--self-check-tokens", "8"])
    assert code == build.EXIT_SELF_CHECK, log + err
    assert "self-check failed" in err and "greedy tokens differ" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert (tmp_path / ".engine.partial" / "manifest.json").is_file(), "the failed engine is kept for inspection"


def test_a_vocabulary_larger_than_the_tokenizer(tmp_path):
    """Qwen2's config vocabulary (151936) is larger than its tokenizer (151665) and Llama checkpoints pad theirs:
    the rows past the tokenizer build and self-check; a model that picks them answers with ids the tokenizer
    doesn't have, which decode to no text."""
    from models.checkpoint import load_model, save_model
    from runtime.pipeline import Pipeline
    from runtime.sampling import SamplingParams

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", "eve", padded_vocab=24)
    model = load_model(checkpoint, dtype=torch.float32)
    tokens = model.config.vocab_size - 24
    with torch.no_grad():  # make the padding rows win: the answer is made of them
        model.lm_head.weight[tokens:] = model.lm_head.weight[tokens:] * 0 + 1.0
    save_model(model, checkpoint)
    out = tmp_path / "engine"
    code, log, err = run_build([str(checkpoint), "--out", str(out), "--self-check-tokens", "4"])
    assert code == 0, log + err
    pipe = Pipeline(out, threads=1)
    first = pipe.run("What colour is the shape?", params=SamplingParams(max_new_tokens=1))
    assert first.token_ids[0] >= tokens and first.text == ""
    longer = pipe.run("What colour is the shape?", params=SamplingParams(max_new_tokens=12))
    assert longer.text == pipe.tokenizer.decode([t for t in longer.token_ids if t < tokens])


@pytest.mark.parametrize("connector", [{}, {"mlp_connector_layers": 1, "use_pixel_shuffle": False}],
                         ids=["two_layers", "one_layer_unshuffled"])
def test_eagle2_5_as_released_builds_and_answers(tmp_path, connector):
    """config.json as upstream's training script leaves it (NVlabs/Eagle `Eagle2_5/eaglevl/train/
    eagle_2_5_vl_finetune.py` sets `_attn_implementation = 'flash_attention_2'` and `Eagle2_5_VLConfig.to_dict`
    writes it) with the decoder under `llm_config`: the build chooses its own attention and passes its self-check,
    with the two-layer connector and with one Linear on unshuffled features."""
    checkpoint = make_tiny_checkpoint(tmp_path / "checkpoint", "eagle2_5", **connector)
    config = json.loads((checkpoint / "config.json").read_text())
    config["llm_config"] = {**config.pop("text_config"), "_attn_implementation": "flash_attention_2"}
    config.update(_attn_implementation="flash_attention_2", _attn_implementation_autoset=False)
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "engine"
    code, log, err = run_build([str(checkpoint), "--out", str(out), "--self-check-tokens", "8"])
    assert code == 0, log + err
    assert "all " in log and " greedy tokens equal PyTorch's" in log
    answer = Pipeline(out).run("What colour is the shape?", [Image.new("RGB", (90, 60), (200, 30, 30))],
                               SamplingParams(max_new_tokens=4))
    assert answer.images == 1 and answer.token_ids and answer.finish_reason in ("length", "stop")


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["text_config"].update(architectures=["Qwen3ForCausalLM"]), "text_config.architectures"),
    (lambda c: c.update(model_type="eagle_chat", vision_config={**c["vision_config"], "model_type": "MOB",
                                                                "vision_path": "MOB:palisiglip;sam-1024"}),
     "vision_config.vision_path 'MOB:palisiglip;sam-1024'"),
])
def test_unsupported_eagle_variants_exit_with_one_line(tmp_path, tiny_eagle25_dir, edit, named):
    checkpoint = shutil.copytree(tiny_eagle25_dir, tmp_path / "checkpoint")
    config = json.loads((checkpoint / "config.json").read_text())
    edit(config)
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, _, err = run_build([str(checkpoint), "--out", str(tmp_path / "engine")])
    assert code == build.EXIT_CHECKPOINT and named in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("moe", [None, "convnext_512_siglip_448"])
def test_eagle2_9b_layout_builds_and_answers(tmp_path, moe):
    """Eagle2-9B's SigLIP + ConvNeXt tower (tiny widths) exports, passes its self-check and answers."""
    from models.tiny import tiny_eagle2_9b_config

    vision = tiny_eagle2_9b_config(0, moe_version_type=moe)["vision_config"]
    checkpoint = make_tiny_checkpoint(tmp_path / "checkpoint", "eagle2", vision_config=vision)
    out = tmp_path / "engine"
    code, log, err = run_build([str(checkpoint), "--out", str(out), "--self-check-tokens", "8"])
    assert code == 0, log + err
    assert " greedy tokens equal PyTorch's" in log
    answer = Pipeline(out).run("What colour is the shape?", [Image.new("RGB", (90, 60), (200, 30, 30))],
                               SamplingParams(max_new_tokens=4))
    assert answer.images == 1 and answer.finish_reason in ("length", "stop")
