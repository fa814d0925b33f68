"""`python -m runtime`: the streamed answer equals the Pipeline's, --json and --verbose report timings,
--chat keeps the conversation, and every error is one line without a traceback and a non-zero exit.
Every command (runtime, serve, demo, triton, the training tools) speaks one vocabulary and shows each
option's help and default; the installed `aerie` command answers as `python -m runtime` does."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runtime import cli
from runtime.pipeline import Pipeline
from tiny_engines import built_engine

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return built_engine("eve", tmp_path_factory)[1]


@pytest.fixture(scope="module")
def image(engine, tmp_path_factory):
    from engines.selfcheck import sample_image

    path = tmp_path_factory.mktemp("images") / "shapes.png"
    sample_image().save(path)
    return path


def one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_streams_the_pipeline_answer(engine, image):
    done = run_cli(str(engine), "--image", str(image), "--prompt", "What colour is the shape?", "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    expected = Pipeline(engine).generate("What colour is the shape?", images=[image], max_new_tokens=12)
    assert done.stdout == expected + "\n"
    assert done.stderr == ""


def test_json_and_verbose(engine, image):
    done = run_cli(str(engine), "--image", str(image), "--prompt", "How many shapes are there?", "--max-new-tokens", "6",
                   "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["new_tokens"] <= 6 and record["images"] == 1 and record["prompt_tokens"] > 16
    assert {"engine_load_s", "preprocess_s", "vision_s", "prefill_s", "decode_s", "decode_tokens_per_s",
            "time_to_first_token_s", "peak_rss_mb"} <= set(record["timings"])
    verbose = run_cli(str(engine), "--image", str(image), "--prompt", "How many shapes are there?",
                      "--max-new-tokens", "6", "--verbose")
    assert verbose.returncode == 0 and verbose.stdout == record["text"] + "\n"
    for part in ("preprocess", "vision", "prefill", "tok/s", "peak RSS"):
        assert part in verbose.stderr


def test_chat_keeps_the_conversation(engine, image):
    script = f"/image {image}\nWhat colour is the shape?\nAnd how many?\n/reset\nHello\n/quit\n"
    out, err = io.StringIO(), io.StringIO()
    code = cli.run([str(engine), "--chat", "--max-new-tokens", "6"], io.StringIO(script), out, err)
    assert code == 0, err.getvalue()
    chat = Pipeline(engine).chat(max_new_tokens=6)
    first = chat.ask("What colour is the shape?", images=[image]).text
    second = chat.ask("And how many?").text
    hello = Pipeline(engine).generate("Hello", max_new_tokens=6)
    text = out.getvalue()
    assert f"> {first}\n> {second}\n" in text and f"> {hello}\n" in text and "(conversation cleared)" in text


def test_errors_are_one_line(engine, image, tmp_path):
    one_line_error(run_cli(str(tmp_path / "absent"), "--prompt", "hi"), "no such engine directory")
    one_line_error(run_cli(str(engine), "--image", str(tmp_path / "none.png"), "--prompt", "hi"), "no such image file")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    one_line_error(run_cli(str(engine), "--image", str(tmp_path / "bad.png"), "--prompt", "hi"), "not an image")
    one_line_error(run_cli(str(engine), "--prompt", "hi", "--temperature", "-1"), "temperature must be >= 0")
    one_line_error(run_cli(str(engine), "--prompt", "hi " * 3000), "context is")

    broken = shutil.copytree(engine, tmp_path / "broken")
    weights = broken / "vision" / "model.onnx"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    one_line_error(run_cli(str(broken), "--prompt", "hi"), "vision/model.onnx: sha256 differs")



def test_subcommands_load_their_module(monkeypatch):
    err = io.StringIO()
    monkeypatch.setitem(cli.SUBCOMMANDS, "frobnicate", "runtime.no_such_module")
    assert cli.run(["frobnicate", "x"], err=err) == cli.EXIT_USAGE
    assert "the frobnicate command needs runtime.no_such_module, which this install lacks" in err.getvalue()
    monkeypatch.setitem(cli.SUBCOMMANDS, "version", "runtime.tests_version_stub")
    monkeypatch.setitem(sys.modules, "runtime.tests_version_stub", type(sys)("stub"))
    sys.modules["runtime.tests_version_stub"].main = lambda argv: 7 if argv == ["a", "b"] else 0
    assert cli.run(["version", "a", "b"]) == 7


def usage_error(done: subprocess.CompletedProcess, expected: str) -> None:
    """A bad command line: exit 2 and one line that says what is wrong and where to look."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and lines[0].endswith("--help)"), done.stderr


def test_bad_values_are_one_line_errors(engine, image):
    one_line_error(run_cli(str(engine), "--prompt", "hi", "--temperature", "1", "--seed", "-1"), "seed must be >= 0")
    one_line_error(run_cli(str(engine), "--prompt", "hi", "--temperature", "nan"), "temperature must be a finite number")
    one_line_error(run_cli(str(engine), "--prompt", "hi", "--top-p", "inf"), "top_p must be a finite number")
    for length in ("-5", "0"):  # 0 no longer means the whole context
        usage_error(run_cli(str(engine), "--prompt", "hi", "--max-length", length),
                    f"argument --max-length: must be at least 1, got {length}")
    usage_error(run_cli(str(engine), "--prompt", "hi", "--threads", "many"), "argument --threads: 'many' is not a whole number")
    one_line_error(run_cli(str(engine), "--image", "/dev/zero", "--prompt", "hi"), "/dev/zero: not a regular file")


def test_prompt_from_stdin(engine, image):
    question = "What colour is the shape?"
    piped = run_cli(str(engine), "--image", str(image), "--prompt", "-", "--max-new-tokens", "8", stdin=question + "\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == Pipeline(engine).generate(question, images=image, max_new_tokens=8) + "\n"
    one_line_error(run_cli(str(engine), "--prompt", "-", stdin=""), "--prompt -: stdin was empty")
    usage_error(run_cli(str(engine), "--chat", "--prompt", "-"), "--prompt - does not go with --chat")


def test_usage_lists_the_subcommands():
    usage = run_cli("--help").stdout.split("\n\n")[0]
    assert "python -m runtime ENGINE_DIR --prompt TEXT" in usage
    assert "python -m runtime {serve,demo,triton,eval} ..." in usage
    usage_error(run_cli("out/engine"), "--prompt is required (or use --chat)")


def parser_of(main, argv: list[str], monkeypatch) -> argparse.ArgumentParser:
    """The parser a command's main builds, caught as it is asked to parse."""
    caught = []

    class Caught(Exception):
        pass

    def catch(self, args=None, namespace=None):
        caught.append(self)
        raise Caught

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(Caught):
            main(argv)
    return caught[0]


def commands() -> dict:
    """Each command line this package owns: its main and the arguments that reach its parser."""
    from runtime import demo, serve
    from runtime.triton import cli as triton_cli
    from training import compose, evaluate, release, train

    return {"python -m runtime": (cli.main, ["x"]), "python -m runtime serve": (serve.main, []),
            "python -m runtime demo": (demo.main, []), "python -m runtime triton": (triton_cli.main, []),
            "python -m training.train": (train.main, []), "python -m training.release": (release.main, []),
            "python -m training.evaluate": (evaluate.main, []), "python -m training.compose": (compose.main, [])}


def test_every_option_has_help_and_shows_its_default(monkeypatch):
    for prog, (main, argv) in commands().items():
        parser = parser_of(main, argv, monkeypatch)
        assert parser.prog == prog
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            shown = formatter._expand_help(action) if action.help else ""
            flag = "/".join(action.option_strings)
            assert shown, f"{prog} {flag} has no help"
            # a flag is off unless given, a repeatable option empty, a required one has none
            says_default = "default" in shown or "required" in shown or action.required or action.nargs == 0 \
                or isinstance(action, argparse._AppendAction)
            assert says_default, f"{prog} {flag}: the help does not say the default: {shown!r}"


def test_one_vocabulary_across_commands(monkeypatch):
    """--max-new-tokens everywhere; serve's and triton's earlier --max-tokens still parses, unlisted."""
    from runtime import serve
    from runtime.triton import cli as triton_cli

    for prog, main in (("serve", serve.main), ("triton", triton_cli.main)):
        parser = parser_of(main, [], monkeypatch)
        assert parser.parse_args(["engine", "--max-new-tokens", "7"]).max_new_tokens == 7
        assert parser.parse_args(["engine", "--max-tokens", "9"]).max_new_tokens == 9
        assert parser.parse_args(["engine"]).max_new_tokens == 512
        help_text = parser.format_help()
        assert "--max-new-tokens" in help_text and "--max-tokens" not in help_text, prog
        for flag in ("--device", "--threads", "--max-batch"):
            assert flag in help_text, (prog, flag)


def test_aerie_dispatches_like_python_m_runtime(engine, image, capsys):
    question = "How many shapes are there?"
    assert cli.aerie(["run", str(engine), "--image", str(image), "--prompt", question, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == Pipeline(engine).generate(question, images=image, max_new_tokens=6) + "\n"
    assert cli.aerie(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in ("run", *cli.SUBCOMMANDS, *cli.BUILD))
    assert cli.aerie(["frobnicate"]) == cli.EXIT_USAGE
    assert "unknown command 'frobnicate'; use one of run, serve, demo, triton, eval, build" in capsys.readouterr().err
    assert set(cli.COMMANDS) == {"run", *cli.SUBCOMMANDS, *cli.BUILD}


def test_installed_commands(engine, image, tmp_path):
    """pyproject declares the console scripts; installed (offline, without dependencies) from a copy of the
    sources, `aerie` runs from its own copy of the package."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"aerie": "runtime.cli:aerie", "aerie-build": "engines.build:main"}
    pytest.importorskip("setuptools", reason="installing offline (--no-build-isolation) needs setuptools in this venv")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for package in ("runtime", "models", "training", "export", "quant", "engines"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile",
                    "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    question = "What colour is the shape?"
    done = subprocess.run([str(target / "bin" / "aerie"), "run", str(engine), "--image", str(image), "--prompt",
                           question, "--max-new-tokens", "6"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == Pipeline(engine).generate(question, images=image, max_new_tokens=6) + "\n"
    where = subprocess.run([str(target / "bin" / "aerie"), "serve", "--help"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert where.returncode == 0 and where.stdout.startswith("usage: aerie serve "), where.stdout + where.stderr
    compiler = subprocess.run([str(target / "bin" / "aerie"), "build", "--help"], capture_output=True, text=True,
                              env=env, timeout=120)
    assert compiler.returncode == 0 and compiler.stdout.startswith("usage: aerie build "), compiler.stderr
    imported = subprocess.run([sys.executable, "-c", "import runtime; print(runtime.__file__)"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=60).stdout
    assert imported.startswith(str(target)), "the installed copy, not the checkout, answered"


def test_a_missing_onnxruntime_names_the_extra_to_install(engine):
    """The base install has no ONNX Runtime (the `cpu` and `gpu` extras bring one): the CLI says which to install."""
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; "  # None in sys.modules: `import onnxruntime` fails
            f"sys.argv = ['runtime', {str(engine)!r}, '--prompt', 'hi']; runpy.run_module('runtime', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line_error(done, "ONNX Runtime is not installed: pip install 'aerie[cpu]'")
