"""The one TOML writer: scenario documents as files ``guestmem run`` reads (docs/scenarios.md).

Top-level fields first, then one ``[[step]]`` table per step, each optionally preceded by
a comment line. Values are TOML: booleans, integers, floats (``nan``, ``inf``), basic
strings (JSON's escapes are TOML's; DEL is escaped too), arrays and inline tables.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def key(name: str) -> str:
    """A key, bare when TOML allows it, else quoted."""
    return name if _BARE.match(name) else string(name)


def string(text: str) -> str:
    """A TOML basic string."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def value(item: Any) -> str:
    """One TOML value."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, (list, tuple)):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, Mapping):
        return "{" + ", ".join(f"{key(str(k))} = {value(v)}" for k, v in item.items()) + "}"
    raise TypeError(f"cannot write {item!r} as TOML")


def document(doc: Mapping[str, Any], comments: Sequence[str | None] = ()) -> str:
    """``doc`` as a scenario file; ``comments[i]`` (if given) precedes step ``i + 1``.

    A ``step`` that is not a list of tables is written as a plain field (bad input stays
    bad input, for tests that feed it back)."""
    lines = [f"{key(k)} = {value(v)}" for k, v in doc.items() if k != "step"]
    steps = doc.get("step")
    if isinstance(steps, list) and all(isinstance(s, Mapping) for s in steps):
        for number, step in enumerate(steps):
            comment = comments[number] if number < len(comments) else None
            lines += ["", f"# {comment}"] if comment else [""]
            lines.append("[[step]]")
            lines += [f"{key(k)} = {value(v)}" for k, v in step.items()]
    elif "step" in doc:
        lines.append(f"step = {value(steps)}")
    return "\n".join(lines) + "\n"
