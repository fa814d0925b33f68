"""Short smoke trainings: the loss falls on a fixed batch, resume is exact, torchrun with 2 processes (DDP and
FSDP over gloo) gives the losses of 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import load_model
from runtime.eval import synthetic
from training.recipes import load_recipe
from training.trainer import RunOptions, train

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
family = "{family}"
[model]
config = "{config}"
tokenizer = {{ style = "{style}", vocab_size = 400 }}
seed = 0
[defaults]
precision = "fp32"
warmup_ratio = 0.0
schedule = "constant"
max_length = 512
lr = {lr}
patch_align_weight = {pal}
freeze = ["vision_clip"]
log_every = 1
[[stage]]
name = "sft"
template = "{template}"
data = "train.json"
global_batch = {global_batch}
micro_batch = {micro_batch}
max_steps = {steps}
"""

FAMILIES = {
    "eve": dict(config="tiny_eve_config", style="llama", template="vicuna_v1", pal=1.0),
    "eagle2_5": dict(config="tiny_eagle2_5_config", style="qwen2", template="qwen2_chatml", pal=0.0),
    "evev2": dict(config="tiny_evev2_config", style="qwen2", template="eve_qwen2", pal=0.0),
}


def write_recipe(path: Path, family: str, global_batch=8, micro_batch=4, steps=3, lr=1e-3) -> Path:
    path.write_text(RECIPE.format(family=family, global_batch=global_batch, micro_batch=micro_batch, steps=steps, lr=lr,
                                  **FAMILIES[family]))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("data"), train=16, val=0, test=0, seed=1, progress=False)


@pytest.fixture(scope="module")
def fixed_batch_data(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("fixed"), train=8, val=0, test=0, seed=2, progress=False)


def run(recipe: Path, data: Path, out: Path, **kwargs) -> Path:
    return train(RunOptions(recipe=load_recipe(recipe, kwargs.pop("overrides", [])), data=data, out=out, **kwargs))


def losses(stage_dir: Path) -> list[float]:
    return [h["loss"] for h in json.loads((stage_dir / "loss.json").read_text())]


@pytest.fixture(scope="module")
def eve_init(data, tmp_path_factory) -> Path:
    """A from-scratch initial checkpoint (tokenizer + model), shared by the runs below."""
    out = tmp_path_factory.mktemp("init_run")
    recipe = write_recipe(out / "recipe.toml", "eve", steps=1)
    run(recipe, data, out / "run")
    return out / "run" / "init"


@pytest.mark.parametrize("family", ["eve", "eagle2_5", "evev2"])
def test_short_run_lowers_the_loss_on_a_fixed_batch(family, fixed_batch_data, tmp_path):
    # 8 samples, global batch 8: every step sees the same batch.
    recipe = write_recipe(tmp_path / "recipe.toml", family, global_batch=8, micro_batch=8, steps=12, lr=3e-3)
    final = run(recipe, fixed_batch_data, tmp_path / "run")
    curve = losses(final)
    assert len(curve) == 12
    assert curve[-1] < 0.6 * curve[0], curve
    assert (final / "loss.png").is_file()
    summary = json.loads((final / "stage.json").read_text())
    assert summary["steps"] == 12 and summary["skipped"] == {}
    # The output is a Hugging Face checkpoint with its tokenizer, loadable for inference.
    model = load_model(final)
    assert (final / "tokenizer.json").is_file() and model.family == family


def test_resume_is_exact(data, eve_init, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.toml", "eve", global_batch=8, micro_batch=4, steps=6)
    straight = run(recipe, data, tmp_path / "straight", init=eve_init)
    interrupted = tmp_path / "interrupted"
    stopped = run(recipe, data, interrupted, init=eve_init, stop_after=3)
    assert not (stopped / "stage.json").exists() and (stopped / "checkpoints" / "latest").is_file()
    resumed = run(recipe, data, interrupted, init=eve_init, resume=True)
    assert losses(resumed) == losses(straight)
    assert (resumed / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()


def torchrun(nproc: int, recipe: Path, data: Path, out: Path, init: Path, *extra: str) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "training.train", "--recipe", str(recipe), "--data", str(data), "--out", str(out), "--init", str(init),
           "--threads", "1", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(mode, data, eve_init, tmp_path):
    # Global batch 8 in both: 1 process x micro 2 x 4 accumulation steps, 2 processes x micro 2 x 2.
    recipe = write_recipe(tmp_path / "recipe.toml", "eve", global_batch=8, micro_batch=2, steps=3)
    single = run(recipe, data, tmp_path / "one", init=eve_init)
    extra = ("--fsdp",) if mode == "fsdp" else ()
    double = torchrun(2, recipe, data, tmp_path / "two", eve_init, *extra)
    one, two = losses(single), losses(double)
    assert len(two) == 3
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    summary = json.loads((double / "stage.json").read_text())
    assert summary["world_size"] == 2 and summary["fsdp"] == (mode == "fsdp")
    import torch

    a, b = load_model(single).state_dict(), load_model(double).state_dict()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4


def test_bf16_autocast_and_gradient_checkpointing(data, eve_init, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.toml", "eve", global_batch=8, micro_batch=4, steps=2)
    plain = run(recipe, data, tmp_path / "fp32", init=eve_init)
    mixed = run(recipe, data, tmp_path / "bf16", init=eve_init, overrides=["precision=bf16", "gradient_checkpointing=true"])
    # Same data and weights: bf16 matmuls move the loss a little, not a lot.
    assert losses(mixed) == pytest.approx(losses(plain), rel=0.05)
