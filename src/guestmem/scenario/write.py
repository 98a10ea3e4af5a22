"""Outcomes written back as scenario files: a TOML value, and the expectation an outcome
meets exactly (docs/scenarios.md), for tools that print what they saw as a runnable scenario
(the kernel differential test, ``guestmem stress``'s minimal reproducer)."""

from __future__ import annotations

import json
from typing import Any

from guestmem.backend.base import Outcome


def toml_value(value: Any) -> str:
    if isinstance(value, int):
        return hex(value) if value > 9 else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def expectation(outcome: Outcome) -> str:
    """The scenario-file expectation that the outcome satisfies exactly."""
    if outcome.errno:
        at = "none" if outcome.error_offset is None else hex(outcome.error_offset)
        return f"{outcome.errno}@{at}"
    if outcome.signal:
        return outcome.signal
    if outcome.exit:
        reason = str(outcome.exit["reason"])
        if reason == "MEMORY_FAULT":
            private = outcome.exit.get("flags", 0) & (1 << 3)
            return f"MEMORY_FAULT:{'private' if private else 'shared'}"
        return "ok" if reason == "HYPERCALL" else reason
    if outcome.skipped:
        return "any"
    if outcome.data is not None:
        return "zeros" if outcome.data and not any(outcome.data) else outcome.data.hex()
    return "ok"
