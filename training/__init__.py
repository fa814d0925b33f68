"""Training: reproduces the models Aerie compiles (Eagle two-stage, EVE three-stage) and writes Hugging Face
checkpoints that build.py consumes.

Command-line entry points:
    python -m training.train      --recipe R --data D --out O           train by a recipe (torchrun for N processes)
    python -m training.evaluate   --model M --data out/synth/test.json  exact match per category (PyTorch oracle)
    python -m training.release    --from O/stage3-sft --to examples/X   inference-only release checkpoint
    python -m training.compose    --family eve --llm L --clip C --out I a full-scale starting checkpoint
The data: `python -m runtime.eval.synthetic --out out/synth` (the synthetic benchmark, LLaVA JSON + PNG).
Recipes live in training/recipes/ (the papers' full-scale ones and the demo presets).
"""
