"""onnxruntime-genai's side of bench/decode.py; runs in the venv the benchmark makes (the CPU onnxruntime).

    python genai_worker.py MODEL_DIR PROMPT_JSON NEW_TOKENS RUNS THREADS   -> one JSON line
"""

import json
import sys
from pathlib import Path

import onnxruntime_genai as og

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import now, timed  # noqa: E402  (the benchmark's clock, stdlib only)


def set_threads(model_dir: Path, threads: int) -> None:
    path = model_dir / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    path.write_text(json.dumps(config, indent=2))


def main() -> None:
    model_dir, prompt, new_tokens, runs = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    set_threads(model_dir, int(sys.argv[5]))
    model = og.Model(str(model_dir))
    total = len(prompt) + new_tokens

    def once():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        start = now()
        generator.append_tokens(prompt)  # runs the prompt
        tokens, first = [], None
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            first = first or now()
        return tokens, start, first, now()

    print(json.dumps(timed(once, runs)))


if __name__ == "__main__":
    main()
