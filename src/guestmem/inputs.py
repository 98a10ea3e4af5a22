"""Reading untrusted input files: one place that bounds what a file can cost.

Every document guestmem reads from a user (scenario TOML, fixture JSON) comes through
:func:`load_toml` or :func:`load_json`, which refuse, with ``FILE: reason`` and before
parsing anything:

* a path that is not a regular file (a FIFO would block, a device has no end, a
  directory has no text) or that cannot be opened;
* a file larger than the caller's cap (:data:`MAX_SCENARIO_BYTES`, :data:`MAX_FIXTURE_BYTES`);
* text that is not UTF-8 (a UTF-16/32 byte-order mark is named as such; a UTF-8 one is
  dropped), or JSON that escapes half a UTF-16 surrogate pair;
* nesting deeper than :data:`MAX_DEPTH` (tables, arrays and dotted keys: the parsers
  recurse, and a long dotted key costs the TOML parser quadratic memory);
* a number written with more than :data:`MAX_NUMBER_CHARS` characters.

The limits are listed in docs/scenarios.md (*Limits*).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from guestmem.errors import GuestmemError

#: The largest scenario file read (bytes).
MAX_SCENARIO_BYTES = 1 << 20
#: The largest fixture file read (bytes): a fixture holds hex of what a step read.
MAX_FIXTURE_BYTES = 16 << 20
#: Deepest nesting of tables, arrays and dotted-key parts.
MAX_DEPTH = 32
#: Longest number literal (characters); a u64 in decimal has 20 digits.
MAX_NUMBER_CHARS = 40

_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class InputError(GuestmemError, ValueError):
    """A file guestmem will not read or parse; the message is ``FILE: reason``."""


def read_bytes(path: str | Path, limit: int) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes, never blocking on it."""
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except ValueError:
        raise InputError(f"{where!r}: a path cannot contain a NUL byte") from None
    except OSError as err:
        raise InputError(f"{where}: cannot read: {err.strerror or err}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise InputError(f"{where}: cannot read: {kind}, not a regular file")
        parts: list[bytes] = []
        total = 0
        while total <= limit:
            part = os.read(fd, min(limit + 1 - total, 1 << 20))
            if not part:
                break
            parts.append(part)
            total += len(part)
    except OSError as err:
        raise InputError(f"{where}: cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if total > limit:
        raise InputError(f"{where}: larger than the {_size(limit)} limit for this kind of file")
    return b"".join(parts)


def decode(raw: bytes, where: str) -> str:
    """UTF-8 text (a leading UTF-8 byte-order mark is dropped)."""
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise InputError(f"{where}: encoded as {name} (byte-order mark); save it as UTF-8")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        byte = raw[err.start]
        raise InputError(f"{where}: line {line}: not UTF-8 text (byte {byte:#04x})") from None


def load_toml(path: str | Path, limit: int = MAX_SCENARIO_BYTES) -> dict[str, Any]:
    """A TOML document from an untrusted file (see the module docstring)."""
    where = str(path)
    text = decode(read_bytes(path, limit), where)
    scan(text, where, toml=True)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{where}: not valid TOML: {err}") from None
    except (ValueError, RecursionError, MemoryError) as err:  # backstops for what scan() bounds
        raise InputError(f"{where}: not valid TOML: {type(err).__name__}: {_short(err)}") from None


def load_json(path: str | Path, limit: int = MAX_FIXTURE_BYTES) -> Any:
    """A JSON document from an untrusted file (see the module docstring)."""
    where = str(path)
    text = decode(read_bytes(path, limit), where)
    scan(text, where, toml=False)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON: {err}") from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise InputError(f"{where}: not valid JSON: {type(err).__name__}: {_short(err)}") from None
    _no_surrogates(doc, where)
    return doc


def _no_surrogates(value: Any, where: str) -> None:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``): no UTF-8 text can hold it."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise InputError(f"{where}: a string holds a lone UTF-16 surrogate escape: {value!r:.80}")
    elif isinstance(value, list):
        for item in value:
            _no_surrogates(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_surrogates(key, where)
            _no_surrogates(item, where)


def scan(text: str, where: str, *, toml: bool) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and over-long numbers, without parsing.

    A lexical pass: strings and comments are skipped, ``[``/``{`` open a level and
    ``]``/``}`` close it; in TOML each ``.`` outside a string also counts as a level until
    the next ``,`` or line end (a dotted key nests tables; a float's dot over-counts by
    one, which the limit leaves room for).
    """
    depth = 0
    dots = 0
    stack: list[int] = []
    interesting = _TOML_TOKENS if toml else _JSON_TOKENS
    i = 0
    while (found := interesting.search(text, i)) is not None:
        i = found.start()
        c = text[i]
        if c == "\n":
            dots = 0
            i += 1
        elif c == '"' or c == "'":
            i = _skip_string(text, i, toml)
        elif c == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif c in "[{":
            stack.append(dots)
            depth += dots + 1
            dots = 0
            if depth > MAX_DEPTH:
                raise InputError(f"{where}: line {_line(text, i)}: nested more than {MAX_DEPTH} levels deep")
            i += 1
        elif c in "]}":
            if stack:
                dots = stack.pop()
                depth -= dots + 1
            i += 1
        elif c == ".":
            dots += 1
            if depth + dots > MAX_DEPTH:
                raise InputError(f"{where}: line {_line(text, i)}: nested more than {MAX_DEPTH} levels deep")
            i += 1
        elif c == ",":
            dots = 0
            i += 1
        else:  # a digit: the start of a number (or of a bare key)
            number = _NUMBER.match(text, i)
            assert number is not None
            if len(number[0]) > MAX_NUMBER_CHARS:
                raise InputError(
                    f"{where}: line {_line(text, i)}: a number of {len(number[0])} characters "
                    f"(at most {MAX_NUMBER_CHARS}; values must fit in 64 bits)"
                )
            i = number.end()


_TOML_TOKENS = re.compile(r"[\n\"'#\[\]{}.,0-9]")
_JSON_TOKENS = re.compile(r'[\n"\[\]{},0-9]')
_NUMBER = re.compile(r"\w+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Strings: runs of ordinary characters between escapes, matched possessively, so that a
# match keeps no backtracking state per character (an alternation under ``*`` costs the
# regex engine about 120 bytes per character: 1.8 GB for a 15 MiB string).
_BASIC = re.compile(r'"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+("?)')
_LITERAL = re.compile(r"'[^'\n]*+('?)")
_MULTI_BASIC = re.compile(r'"""[^"\\]*+(?:(?:\\.|"(?!""))[^"\\]*+)*+"""(?:"{0,2})', re.S)
_MULTI_LITERAL = re.compile(r"'''[^']*+(?:'(?!'')[^']*+)*+'''(?:'{0,2})", re.S)


def _skip_string(text: str, i: int, toml: bool) -> int:
    """Index just past the string starting at ``i``; an unterminated one ends the scan
    at its line end (the parser reports it there)."""
    quote = text[i]
    if toml and text.startswith(quote * 3, i):
        pattern = _MULTI_BASIC if quote == '"' else _MULTI_LITERAL
        found = pattern.match(text, i)
        return len(text) if found is None else found.end()
    found = (_BASIC if quote == '"' else _LITERAL).match(text, i)
    assert found is not None
    return found.end()


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 and not limit % (1 << 20) else f"{limit} bytes"


def _short(err: BaseException) -> str:
    text = str(err)
    return text if len(text) <= 200 else text[:199] + "…"
