"""What a scenario step expects, and whether an :class:`~guestmem.backend.base.Outcome` meets it.

The grammar (docs/scenarios.md): ``ok``, a hex string, ``zeros``, ``fill:XX``, ``any``,
``not:HEX``, an errno name (with the step's optional ``error_offset``, or inline as
``EAGAIN@0x1000``; ``@none`` = not written back), a signal name
such as ``SIGBUS``, ``MEMORY_FAULT`` (optionally ``:private`` / ``:shared``, the access
kind the exit reports, docs/semantics.md §9), ``HYPERCALL``, or ``MMIO`` (optionally
``:read`` / ``:write``; docs/semantics.md §3 *Memslots*). A list means "any of these".
"""

from __future__ import annotations

import errno as _errno
import signal
from dataclasses import dataclass

from guestmem.backend.base import Outcome
from guestmem.errors import errno_code
from guestmem.uapi.kvm import KVM_MEMORY_EXIT_FLAG_PRIVATE

#: ``error_offset = "none"``: the call must not write ``error_offset`` back (docs/semantics.md §4).
NOT_WRITTEN = -1
#: The signal names an outcome can carry.
_SIGNALS = frozenset(s.name for s in signal.Signals)  # canonical names, as outcomes give them


@dataclass(frozen=True)
class Expect:
    """One acceptable result. ``kind`` is one of ``ok``, ``data``, ``zeros``, ``fill``,
    ``any``, ``not``, ``errno``, ``signal``, ``exit``; ``text`` is how it was written."""

    kind: str
    text: str
    data: bytes | None = None
    name: str | None = None
    error_offset: int | None = None

    def __str__(self) -> str:
        if self.kind == "errno" and self.error_offset is not None:
            shown = "none" if self.error_offset == NOT_WRITTEN else f"{self.error_offset:#x}"
            return f"{self.text}@{shown}"
        return self.text


def parse(text: str, error_offset: int | None = None) -> Expect:
    """Parse one expectation; ``ValueError`` says what is wrong with ``text``."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a non-empty string, got {text!r}")
    if text in ("ok", "any", "zeros"):
        return Expect(text, text)
    if text in ("HYPERCALL", "MMIO", "MMIO:read", "MMIO:write"):
        return Expect("exit", text, name=text)
    if text in ("MEMORY_FAULT", "MEMORY_FAULT:private", "MEMORY_FAULT:shared"):
        return Expect("exit", text, name=text)
    if text.startswith("fill:"):
        byte = _hex(text[5:], text)
        if len(byte) != 1:
            raise ValueError(f"{text!r}: fill takes one byte, e.g. 'fill:ab'")
        return Expect("fill", text, data=byte)
    if text.startswith("not:"):
        return Expect("not", text, data=_hex(text[4:], text))
    if text.startswith("SIG"):
        if text not in _SIGNALS:  # an outcome names a real signal: another could never match
            raise ValueError(f"{text!r} is not a signal name (a host access faults with SIGBUS)")
        return Expect("signal", text, name=text)
    if text.startswith("E") and "@" in text:
        name, _, where = text.partition("@")
        try:
            if not where.isascii():
                raise ValueError(where)
            offset = NOT_WRITTEN if where == "none" else int(where, 0)
        except ValueError:
            raise ValueError(
                f"{text!r}: bad error_offset after '@' (e.g. 'EAGAIN@0x1000', 'EINVAL@none')"
            ) from None
        if (where != "none" and offset < 0) or offset >= 1 << 64:
            raise ValueError(f"{text!r}: error_offset does not fit in a u64")
        return parse(name, offset)
    if text.startswith("E") and text.isupper() and not _is_hex(text):
        try:
            errno_code(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an errno name") from None
        return Expect("errno", _canonical_errno(text), name=_canonical_errno(text), error_offset=error_offset)
    return Expect("data", text.lower(), data=_hex(text, text))


def _canonical_errno(name: str) -> str:
    return "EOPNOTSUPP" if name == "ENOTSUP" else name


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _hex(digits: str, whole: str) -> bytes:
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"{whole!r}: bad hex (write bytes as pairs of hex digits, e.g. 'beef')") from None
    if not data:
        raise ValueError(f"{whole!r}: empty hex")
    return data


def matches(expect: Expect, outcome: Outcome) -> bool:
    """Whether ``outcome`` is what ``expect`` allows. A skipped outcome matches nothing."""
    if outcome.skipped is not None:
        return False
    kind = expect.kind
    if kind == "any":
        return True
    if kind == "ok":
        # A guest request's normal result is the HYPERCALL exit it causes (docs/semantics.md §9).
        hypercall = outcome.exit is not None and outcome.exit.get("reason") == "HYPERCALL"
        return outcome.errno is None and outcome.signal is None and (outcome.exit is None or hypercall)
    if kind == "errno":
        if outcome.errno is None or _errno_value(outcome.errno) != _errno_value(expect.name or ""):
            return False
        if expect.error_offset is None:
            return True
        if expect.error_offset == NOT_WRITTEN:
            return outcome.error_offset is None
        return outcome.error_offset == expect.error_offset
    if kind == "signal":
        return outcome.signal == expect.name
    if kind == "exit":
        return _exit_matches(expect.name or "", outcome)
    if not _read_ok(outcome):
        return False
    data = outcome.data
    assert data is not None
    if kind == "data":
        return data == expect.data
    if kind == "zeros":
        return len(data) > 0 and not any(data)
    if kind == "fill":
        return len(data) > 0 and data == (expect.data or b"") * len(data)
    if kind == "not":
        return data != expect.data
    raise AssertionError(f"unknown expectation kind {kind!r}")


def _errno_value(name: str) -> int:
    try:
        return errno_code(name)
    except ValueError:
        return -1 if name != "EOPNOTSUPP" else _errno.EOPNOTSUPP


def _read_ok(outcome: Outcome) -> bool:
    return outcome.ok and outcome.data is not None


def _exit_matches(name: str, outcome: Outcome) -> bool:
    if outcome.exit is None or outcome.errno is not None or outcome.signal is not None:
        return False
    reason = outcome.exit.get("reason")
    if name == "HYPERCALL":
        return reason == "HYPERCALL"
    if name.startswith("MMIO"):
        wrote = bool(outcome.exit.get("is_write"))
        return reason == "MMIO" and (name == "MMIO" or wrote == (name == "MMIO:write"))
    if reason != "MEMORY_FAULT":
        return False
    if name == "MEMORY_FAULT":
        return True
    private = bool(int(outcome.exit.get("flags", 0)) & KVM_MEMORY_EXIT_FLAG_PRIVATE)
    return private == (name == "MEMORY_FAULT:private")


def describe(outcome: Outcome, limit: int = 16) -> str:
    """A short human reading of an outcome: ``read 4096 zero bytes``, ``EAGAIN @0x1000``."""
    if outcome.skipped is not None:
        return f"skipped: {outcome.skipped}"
    if outcome.errno is not None:
        where = "" if outcome.error_offset is None else f" (error_offset={outcome.error_offset:#x})"
        return f"{outcome.errno}{where}"
    if outcome.signal is not None:
        return outcome.signal
    if outcome.exit is not None:
        reason = outcome.exit.get("reason", "?")
        if reason == "MMIO":
            kind = "write" if outcome.exit.get("is_write") else "read"
            gpa = int(outcome.exit.get("gpa", 0))
            return f"MMIO exit ({kind} of {outcome.exit.get('len')} bytes, gpa {gpa:#x})"
        if reason == "MEMORY_FAULT":
            kind = "private" if int(outcome.exit.get("flags", 0)) & KVM_MEMORY_EXIT_FLAG_PRIVATE else "shared"
            return f"MEMORY_FAULT ({kind} access, gpa {int(outcome.exit.get('gpa', 0)):#x})"
        return f"{reason} exit"
    if outcome.data is None:
        return "ok"
    if outcome.data_size is not None:  # summarised after its run
        if outcome.data_fill is not None:
            byte = "zeros" if outcome.data_fill == 0 else f"{outcome.data_fill:02x}"
            return f"{byte} x{outcome.data_size}"
        return f"{outcome.data[:limit].hex()}... ({outcome.data_size} bytes)"
    return summarize(outcome.data, limit)


def summarize(data: bytes, limit: int = 16) -> str:
    """``zeros x4096``, ``ab x4096``, or the hex of the first ``limit`` bytes."""
    if not data:
        return "(no bytes)"
    if data == data[:1] * len(data) and len(data) > 1:
        return f"{'zeros' if data[0] == 0 else data[:1].hex()} x{len(data)}"
    if len(data) <= limit:
        return data.hex()
    return f"{data[:limit].hex()}... ({len(data)} bytes)"
