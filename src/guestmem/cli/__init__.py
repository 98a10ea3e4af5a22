"""The ``guestmem`` command line: one module per command, each with ``register(sub)``.

Exit codes everywhere: 0 all expectations held, 1 one failed, 2 bad input or an output
file it will not or cannot write (one line naming the file, step, field and value, or the
path and the reason), 3 a search could not finish (``explore`` and ``analyze``: a bound
reached or a worker lost; nothing is reported), 4 nothing ran because every run was
skipped (kselftest's ``KSFT_SKIP``), 130 stopped by Ctrl-C (one line says what was finished),
143 and 129 stopped the same way by ``SIGTERM`` and ``SIGHUP``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
import threading
from collections.abc import Sequence

from guestmem import __version__, progress
from guestmem.errors import GuestmemError
from guestmem.outfile import OutputError
from guestmem.printable import printable
from guestmem.spec import revisions

#: Exit status of a search that could not finish.
INCOMPLETE = 3
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
    "stress",
    "vm",
    "completion",
)


class UsageError(GuestmemError):
    """Bad input: printed as ``guestmem: <message>`` with exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks and indented examples; a paragraph of
    prose (unindented lines up to a blank or indented one) that does not fit the terminal's
    width is refilled to it as a whole."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        paragraph: list[str] = []

        def flush() -> None:
            if all(len(indent + line) <= width for line in paragraph):
                lines.extend(indent + line for line in paragraph)
            else:
                lines.extend(
                    textwrap.wrap(" ".join(paragraph), width, initial_indent=indent, subsequent_indent=indent)
                )
            paragraph.clear()

        for line in text.splitlines():
            if line and not line.startswith(" "):
                paragraph.append(line)
                continue
            flush()
            lines.append(indent + line if line else "")
        flush()
        return "\n".join(lines)


def chosen_revisions(value: str) -> list[str]:
    """``--abi``: one revision, or every revision for ``all``."""
    if value == "all":
        return list(revisions.REVISIONS)
    if value in revisions.REVISIONS:
        return [value]
    raise UsageError(f"--abi: unknown revision {value!r} (choose from all, {', '.join(revisions.REVISIONS)})")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` the parser of that one command: importing
    every command module takes seconds on a slow machine (an emulated test kernel), and a
    command line that names its command needs no other (``--help`` and a mistyped command
    still list them all)."""
    parser = argparse.ArgumentParser(
        prog="guestmem",
        description="Model, run and check guest_memfd private/shared conversions "
        "(KVM_SET_MEMORY_ATTRIBUTES2) per platform and ABI revision.",
        epilog="example: guestmem check --platform all --abi seed\n\n"
        "exit status: 0 every expectation held, 1 one failed, 2 bad input, 3 a search could not\n"
        "finish, 4 every run skipped, 130 stopped by Ctrl-C (143 by SIGTERM, 129 by SIGHUP)",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"guestmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if only is None else (only,):
        module = importlib.import_module(f"guestmem.cli.{name}")
        module.register(sub)
    for command in sub.choices.values():  # every command's help: line breaks kept, prose refilled
        command.formatter_class = HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(words)
    if threading.current_thread() is threading.main_thread():
        progress.stop_on_signals()
    try:
        code: int = args.func(args)
    except (UsageError, OutputError) as err:  # one line, whatever the input held
        print(f"guestmem: {printable(str(err))}", file=sys.stderr)
        return 2
    except GuestmemError as err:
        from guestmem.checker.explore import Incomplete

        if not isinstance(err, Incomplete):
            raise
        print(f"guestmem: {args.command}: {err}", file=sys.stderr)
        return INCOMPLETE
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt as stop:
        newline = "\n" if sys.stderr.isatty() and not isinstance(stop, progress.Stopped) else ""  # after ^C
        by = f"{stop} received: " if isinstance(stop, progress.Stopped) else ""
        print(f"{newline}guestmem: {by}{progress.summary()}", file=sys.stderr)
        return progress.exit_status(stop)
    return code
