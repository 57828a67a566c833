"""How the ``mm1`` command reports errors, and the argument types that check values before any work.

A user error (a bad flag, path, file or config value) is one line, ``mm1 <cmd>: error: <what>; <fix>``,
exit 2 for usage and config errors and 1 for the others (:func:`user_error`); anything else is a bug,
shown with its traceback by :func:`mm1.cli.main`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import typing
from pathlib import Path

from mm1.config import ConfigError
from mm1.config.base import FILE_NAME


# -- argument types: a bad value is a usage error naming the flag (argparse adds "argument --flag: ") --
def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def fraction(text: str) -> float:
    """A utilisation: a fraction of the peak in (0, 1]."""
    value = finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction of the peak in (0, 1]; e.g. 0.4")
    return value


def non_negative(text: str) -> float:
    """An average count (images per sequence): finite, >= 0."""
    value = finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give a count >= 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def effects(text: str) -> list[float]:
    """Comma-separated target effects, each finite and > 0."""
    values = [finite(x) for x in text.split(",") if x.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of positive effects; e.g. 1,2,3")
    return values


def plain_name(text: str) -> str:
    """A name that becomes a file name: never a path."""
    if not re.fullmatch(FILE_NAME, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain name: letters, digits, _ . - (not starting with . or -), no /"
        )
    return text


class UsageError(ValueError):
    """A bad command line: one line, exit 2. ``prog`` is set when argparse found it."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error raises (main prints it in one line) instead of printing
    the usage block and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        hint = "" if ";" in message else f"; see `{self.prog} --help`"
        raise UsageError(f"{message}{hint}", self.prog)


def check_out(out: Path) -> None:
    """``--out`` is a folder, or can become one: checked before a stage spends any time."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == out else f" ({path} is a file)"
                raise UsageError(f"--out {out} cannot be a folder{where}; give a folder path (created if missing)")
            return


# Exceptions that report a user's mistake or the environment (not a bug), and their exit code.
USAGE_ERRORS = (UsageError, ConfigError)  # exit 2
PATH_PROBLEMS = {
    FileNotFoundError: "{} does not exist; check the path, or run the stage that writes it first",
    IsADirectoryError: "{} is a folder where a file is meant; give the file's path",
    NotADirectoryError: "{}: a file stands in this path where a folder is meant; give a folder (e.g. for --out)",
    FileExistsError: "{} is in the way: a file where a folder is meant; give a folder path or move the file",
    PermissionError: "{}: permission denied; check its permissions or choose another path",
}
_PACKAGE = Path(__file__).resolve().parent


def _ours(exc: BaseException) -> bool:
    """Raised by mm1's own code: an mm1 exception type, or a ValueError whose raising frame is in mm1
    (the library's way to refuse a bad input; one raised inside numpy, torch or polars is a bug)."""
    if any(cls.__module__.split(".")[0] == "mm1" for cls in type(exc).__mro__):
        return True
    if not isinstance(exc, ValueError):  # a KeyError or TypeError in mm1's code is a bug
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for a user's error; None for a bug."""
    if isinstance(exc, USAGE_ERRORS):
        code = 2
    elif isinstance(exc, OSError) and type(exc).__module__.split(".")[0] != "mm1":
        name = exc.filename2 or exc.filename  # a rename's target is the path the user gave
        if name is None:
            return str(exc), 1  # raised by mm1 with its own message, or ENOSPC and co without a path
        template = next((t for cls, t in PATH_PROBLEMS.items() if isinstance(exc, cls)), None)
        if template is None:
            return f"{name}: {exc.strerror}; check the path and the disk", 1
        return template.format(name), 1
    elif isinstance(exc, MemoryError):  # e.g. loading a batch: the loader runs in the training process
        return f"out of memory ({exc}); lower train.micro_batch_size or give the job more memory", 1
    elif isinstance(exc, UnicodeDecodeError | json.JSONDecodeError) or _ours(exc):
        code = 1  # JSON or text that is not: input, never a bug (its reader should name the file)
    else:
        return None
    return _one_line(str(exc)) or type(exc).__name__, code


def _one_line(text: str) -> str:
    """A multi-line message (a config error lists its fields under a heading) as one line."""
    out = ""
    for line in (line.strip() for line in text.splitlines()):
        if line:
            out += ("" if not out else " " if out.endswith(":") else "; ") + line
    return out
