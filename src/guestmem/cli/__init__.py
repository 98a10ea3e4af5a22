"""The ``guestmem`` command line: one module per command, each with ``register(sub)``.

Exit codes everywhere: 0 all expectations held, 1 one failed, 2 bad input (the message
names the file, step, field and value), 130 stopped by Ctrl-C (one line says what was
finished).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from guestmem import __version__, progress
from guestmem.errors import GuestmemError

#: Command modules under guestmem.cli, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = (
    "check",
    "run",
    "matrix",
    "probe",
    "explore",
    "analyze",
    "fill",
    "consume",
    "report",
    "bench",
    "vm",
)


class UsageError(GuestmemError):
    """Bad input: printed as ``guestmem: <message>`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestmem",
        description="Model, run and check guest_memfd private/shared conversions "
        "(KVM_SET_MEMORY_ATTRIBUTES2) per platform and ABI revision.",
        epilog="example: guestmem check --platform all --abi seed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"guestmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"guestmem.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as err:
        print(f"guestmem: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        newline = "\n" if sys.stderr.isatty() else ""  # after the terminal's ^C
        print(f"{newline}guestmem: {progress.summary()}", file=sys.stderr)
        return progress.INTERRUPTED
    return code
