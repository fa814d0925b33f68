"""`python -m runtime ENGINE_DIR --image PATH --prompt TEXT`: answer a question about images, streamed.

    --chat      an interactive conversation (/image PATH attaches an image, /reset, /quit)
    --json      one JSON object with the answer and its timings, instead of streamed text
    --verbose   the time breakdown after the answer: preprocess, vision, prefill, decode tokens/s, peak memory

Subcommands (`python -m runtime serve ENGINE_DIR ...`) live in their own modules, loaded when named. The
installed `aerie` command is the same with `run` for the default: `aerie run ENGINE_DIR ...`, `aerie serve ...`.
Errors print one line, without a traceback, and exit with a non-zero code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Sequence, TextIO

from .arguments import Parser, add_device_arguments, command, positive_int
from .errors import AerieError

# name -> module with main(argv) -> int, loaded when named.
SUBCOMMANDS = {"serve": "runtime.serve", "demo": "runtime.demo", "triton": "runtime.triton.cli",
               "eval": "runtime.eval.cli"}
# The installed `aerie` command also compiles (build.py; not a runtime command: it needs the build side).
BUILD = {"build": "engines.build"}
# What `aerie --help` lists: this module's own command first, then the subcommands.
COMMANDS = {"run": "answer questions about images with an engine directory",
            "serve": "serve an engine with an OpenAI-compatible API",
            "demo": "a page to chat about an image in the browser",
            "triton": "write a Triton Inference Server model repository (and start tritonserver on it)",
            "eval": "score an engine directory on a benchmark",
            "build": "compile a checkpoint into an engine directory (needs the build extras: README, Install)"}
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def usage(prog: str) -> str:
    """The usage lines: a question, a conversation, and the subcommands."""
    base = prog.removesuffix(" run")
    return (f"{prog} ENGINE_DIR --prompt TEXT [--image PATH ...] [options]\n"
            f"       {prog} ENGINE_DIR --chat [--image PATH ...] [options]\n"
            f"       {base} {{{','.join(SUBCOMMANDS)}}} ... (see {base} COMMAND --help)")


def parse_args(argv: Sequence[str], prog: str | None = None) -> argparse.Namespace:
    prog = prog or command()
    p = Parser(prog=prog, usage=usage(prog),
               description="Answer questions about images with an Aerie engine directory (built by build.py).")
    p.add_argument("engine_dir", help="engine directory written by build.py")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="an image (repeat for several)")
    p.add_argument("--prompt", metavar="TEXT", help="the question; - reads it from stdin (required unless --chat)")
    p.add_argument("--chat", action="store_true", help="interactive conversation on the terminal")
    p.add_argument("--json", action="store_true", help="print one JSON object with the answer and timings")
    p.add_argument("--verbose", action="store_true", help="print the time breakdown after the answer")
    add_sampling_arguments(p)
    e = p.add_argument_group("engine")
    add_device_arguments(e)
    e.add_argument("--max-length", type=positive_int, metavar="TOKENS",
                   help="cap the context below the engine's, to save memory (default: the engine's whole context)")
    e.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the engine files (sizes are still checked)")
    args = p.parse_args(argv)
    if not args.chat and args.prompt is None:
        p.error("--prompt is required (or use --chat)")
    if args.chat and args.json:
        p.error("--json does not go with --chat")
    if args.chat and args.prompt == "-":
        p.error("--prompt - does not go with --chat, which reads the conversation from stdin")
    return args


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (default: greedy)")
    g.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="most tokens to generate")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 picks the likeliest token (greedy); higher is more random")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the k likeliest tokens (0: no limit)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="sample among the likeliest tokens that make up this probability")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="divide the logits of tokens already seen by this (1: off, 1.1: mild)")
    g.add_argument("--seed", type=int, metavar="N", help="random seed for sampling, >= 0 (default: a fresh one per run)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="an extra stop string (repeatable)")


def sampling_params(args: argparse.Namespace):
    from .pipeline import params_with

    return params_with(None, dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    ))


def breakdown(answer, load_s: float) -> str:
    t = answer.timings()
    cached = f", {answer.cached_images} from cache" if answer.cached_images else ""
    n = len(answer.token_ids)
    rate = f"{t['decode_tokens_per_s']:.1f} tok/s" if n > 1 else "no decode step"
    return (f"engine load {load_s:.2f} s | images {answer.images}{cached}: preprocess {t['preprocess_s'] * 1e3:.0f} ms, "
            f"vision {t['vision_s'] * 1e3:.0f} ms | prefill {answer.prompt_tokens} tokens {t['prefill_s'] * 1e3:.0f} ms | "
            f"first token {t['time_to_first_token_s'] * 1e3:.0f} ms | {n} new token{'s' if n != 1 else ''}, {rate} | "
            f"peak RSS {t['peak_rss_mb']:.0f} MB | finish: {answer.finish_reason}")


def answer_once(pipe, args: argparse.Namespace, load_s: float, out: TextIO, err: TextIO) -> None:
    params = sampling_params(args)
    if args.json:
        answer = pipe.run(args.prompt, args.image, params)
        record = {"text": answer.text, "finish_reason": answer.finish_reason, "prompt_tokens": answer.prompt_tokens,
                  "new_tokens": len(answer.token_ids), "images": answer.images, "cached_images": answer.cached_images,
                  "timings": {"engine_load_s": round(load_s, 4), **answer.timings()}}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    stream = pipe.stream(args.prompt, args.image, params)
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()  # the answer before the breakdown, when both go to one terminal
    if args.verbose:
        err.write(breakdown(stream.answer, load_s) + "\n")


def chat_loop(pipe, args: argparse.Namespace, load_s: float, inp: TextIO, out: TextIO, err: TextIO) -> None:
    chat = pipe.chat(params=sampling_params(args))
    pending = list(args.image)
    out.write("Chat with the engine. /image PATH attaches an image to the next question, /reset starts over, /quit ends.\n")
    first = args.prompt
    while True:
        if first is not None:
            line, first = first, None
        else:
            out.write("> ")
            out.flush()
            line = inp.readline()
            if not line:
                break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            chat.reset()
            pending = []
            out.write("(conversation cleared)\n")
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            if not path:
                err.write("usage: /image PATH\n")
                continue
            pending.append(path)
            out.write(f"(image {path} attached to the next question)\n")
            continue
        try:
            stream = chat.ask_stream(line, pending)
            for piece in stream:
                out.write(piece)
                out.flush()
        except AerieError as e:
            err.write(f"error: {e}\n")  # the conversation goes on; the failed question is forgotten
            continue
        pending = []
        out.write("\n")
        out.flush()
        if args.verbose:
            err.write(breakdown(stream.answer, load_s) + "\n")


def run_subcommand(name: str, argv: Sequence[str], err: TextIO) -> int:
    try:
        module = importlib.import_module({**SUBCOMMANDS, **BUILD}[name])
    except ModuleNotFoundError as e:  # the runtime alone is installed: `build` needs torch, transformers, onnx
        err.write(f"error: the {name} command needs {e.name}, which this install lacks; install the build side "
                  "(README, Install: pip install torch==2.13.0 then pip install -e \".[build,quant]\")\n")
        return EXIT_USAGE
    return module.main(list(argv))


def read_prompt(inp: TextIO) -> str:
    """`--prompt -`: the question from stdin (a file or a pipe), without its final newline."""
    prompt = inp.read().rstrip("\n")
    if not prompt.strip():
        raise AerieError("--prompt -: stdin was empty; pipe the question in, e.g. echo 'What is this?' | ...")
    return prompt


def run(argv: Sequence[str], inp: TextIO | None = None, out: TextIO | None = None, err: TextIO | None = None,
        prog: str | None = None) -> int:
    inp, out, err = inp or sys.stdin, out or sys.stdout, err or sys.stderr
    if argv and argv[0] in SUBCOMMANDS:
        return run_subcommand(argv[0], argv[1:], err)
    args = parse_args(argv, prog)
    if args.prompt == "-":
        args.prompt = read_prompt(inp)
    from .pipeline import Pipeline

    start = time.perf_counter()
    pipe = Pipeline(args.engine_dir, device=args.device, threads=args.threads, max_length=args.max_length,
                    verify_checksums=not args.no_verify)
    load_s = time.perf_counter() - start
    if args.chat:
        chat_loop(pipe, args, load_s, inp, out, err)
    else:
        answer_once(pipe, args, load_s, out, err)
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The entry point: one-line errors, exit codes (1 error, 2 usage, 130 interrupted)."""
    try:
        return run(sys.argv[1:] if argv is None else argv, prog=prog)
    except AerieError as e:
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `python -m runtime ... | head`
        return 0


def aerie(argv: Sequence[str] | None = None) -> int:
    """The installed `aerie` command: `aerie run ...` is `python -m runtime ...`; the others are its subcommands."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        return main(argv[1:], prog="aerie run")
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return main(argv)
    if argv[:1] and argv[0] in BUILD:
        return run_subcommand(argv[0], argv[1:], sys.stderr)
    listing = "\n".join(f"  {name:<8}{summary}" for name, summary in COMMANDS.items())
    text = (f"usage: aerie {{{','.join(COMMANDS)}}} ...\n\ncommands:\n{listing}\n\n"
            "aerie COMMAND --help shows a command's options; python -m runtime ... is the same without `run`, "
            "and python build.py is aerie build.\n")
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(text)
        return 0
    problem = f"unknown command {argv[0]!r}" if argv else "no command given"
    print(f"aerie: error: {problem}; use one of {', '.join(COMMANDS)} (see aerie --help)", file=sys.stderr)
    return EXIT_USAGE
