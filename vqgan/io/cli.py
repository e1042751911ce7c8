"""What every command-line entry point shares: reading its config section, and how it reports bad input.

Rules pass their own config section as a JSON string (`--config '{...}'`, tracked by Snakemake as a param);
a user running a stage by hand can pass a path to a JSON or YAML file instead.

Every `main(argv)` is wrapped in `@command`: a bad argument or a bad file (the ValueError family: DatasetError,
CheckpointError, CocoError, FIDError, config errors, broken JSON; the OSError family: missing files, permissions,
a full disk) ends the program with one line on stderr, `error: <what, and how to fix it>`, and exit code 2, like
argparse's own usage errors. Anything else is a bug and keeps its traceback. `--debug` (or VQGAN_DEBUG=1, for
commands that Snakemake runs) shows the traceback of a bad-input error too. atari_collect has its own copy of the
few lines this needs: it may import nothing of vqgan but the dataset contract (tests/test_layout.py).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

BAD_INPUT = 2  # the exit code of every bad argument or file (argparse uses 2 for its usage errors too)
USER_ERRORS = (ValueError, OSError)
# our own packages: an error raised in them carries a message written for the user
_PACKAGE_DIRS = tuple(str(Path(__file__).resolve().parents[2] / name) + os.sep for name in ("vqgan", "atari_collect"))


class UsageError(ValueError):
    """A bad argument or input found by a command's own checks; the message says what to fix."""


class BadInput(SystemExit):
    """How `@command` exits on bad input: code 2, the message already printed. str() is the message, so a test
    can `pytest.raises(SystemExit, match=...)` on it."""

    def __init__(self, message: str):
        super().__init__(BAD_INPUT)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _raised_by_the_project(e: BaseException) -> bool:
    """True when the innermost frame of `e` is our own code: then the message was written for the user. A
    library's exception (numpy's ValueError, json's JSONDecodeError) is shown with its type and the --debug hint."""
    tb = e.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.realpath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIRS)


def describe(e: BaseException) -> str:
    """One line for the user: the project's messages as written, an OSError as `path: reason`."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        text = f"{where}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    if not isinstance(e, OSError) and not _raised_by_the_project(e):
        text = f"{type(e).__name__}: {text} (run with --debug for the traceback)"
    return text.strip()


def command(main: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
    """Decorate a command's `main(argv)`: bad input exits 2 with `error: ...` instead of a traceback.

    `--debug` is taken out of argv before `main` sees it; with it (or VQGAN_DEBUG=1) errors keep their traceback.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        if "--debug" in argv:
            argv = [a for a in argv if a != "--debug"]
            os.environ["VQGAN_DEBUG"] = "1"  # reaches the module vqgan.train.launch runs, and its processes
        debug = os.environ.get("VQGAN_DEBUG", "") not in ("", "0")
        try:
            return main(argv) or 0
        except USER_ERRORS as e:
            if debug:
                raise
            message = describe(e)
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise BadInput(message) from None
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return wrapper


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`, else argparse's one line naming the flag (`--batch-size 0`)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise argparse.ArgumentTypeError(f"{value!r}: give an integer >= {minimum}")
        return number

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some of its messages
    return parse


DEVICE_NAMES = "cpu, cuda, cuda:N (N: a GPU's index), mps"


def device_name(value: str) -> str:
    """An argparse `type` for `--device`: a device name torch knows, else one line listing the valid names
    (whether that device is there is the command's own check)."""
    import torch  # here: the commands that take no --device do not import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {value!r}; use one of {DEVICE_NAMES}") from None
    return value


def load_config_arg(value: str, flag: str = "--config") -> dict[str, Any]:
    """Parse `--config`: inline JSON (starts with '{') or a path to a .json/.yaml file."""
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{flag}: not valid JSON ({e}); pass a JSON object or a path to a YAML/JSON file")
        where = "the inline JSON"
    else:
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"{flag}: {value!r} is neither inline JSON nor an existing file")
        try:
            data = yaml.safe_load(path.read_text())  # JSON is YAML too
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UsageError(f"{flag}: {path} is not valid YAML/JSON ({' '.join(str(e).split())})")
        where = str(path)
    if not isinstance(data, dict):
        raise UsageError(f"{flag}: {where} must hold a mapping, got {type(data).__name__}")
    return data
