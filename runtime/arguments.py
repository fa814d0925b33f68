"""What every Aerie command line shares: a parser whose errors are one line, help that shows each option's
default, a check for counts, and the name the user typed the command by (for usage lines)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says its default, or there is none
    (a flag that is off, an option that is unset or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default is argparse.SUPPRESS or default in ([], ()):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that shows defaults and reports a usage error in one line, with where to look."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command(name: str = "") -> str:
    """`aerie NAME` when started by the installed `aerie` script, else `python -m runtime NAME`."""
    base = "aerie" if Path(sys.argv[0]).name == "aerie" else "python -m runtime"
    return f"{base} {name}" if name else base


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_device_arguments(g: argparse._ActionsContainer) -> None:
    """--device and --threads, as every command that opens an engine takes them."""
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the engines run: cpu, or cuda (ONNX Runtime's CUDA provider; TensorRT engines always use the GPU)")
    g.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads per engine (default: all cores)")
