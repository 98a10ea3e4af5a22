"""Machine-readable output: every JSON document guestmem prints is an object whose first
key is ``"schema": "guestmem.<kind>/1"``, and this package ships a JSON Schema
(draft 2020-12) per kind, ``<kind>.schema.json``.

The number after the slash changes only when a key is removed or changes meaning; new
keys may appear within a version. Kinds: see :data:`KINDS`.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterable
from importlib import resources
from typing import Any, TextIO

#: Document kinds and the commands that print them.
KINDS: dict[str, str] = {
    "results": "check, run and consume with --format json",
    "matrix": "matrix --format json",
    "explore": "explore --format json",
    "analyze": "analyze --format json",
    "bench": "bench --format json",
    "probe": "probe --format json",
    "fill": "fill --format json",
    "report": "report --format json",
    "fixture": "the files fill writes and consume reads",
}
VERSION = 1


def name(kind: str) -> str:
    """The ``schema`` value of a document of ``kind``, e.g. ``guestmem.results/1``."""
    if kind not in KINDS:
        raise KeyError(f"unknown document kind {kind!r} (choose from {', '.join(KINDS)})")
    return f"guestmem.{kind}/{VERSION}"


def document(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the ``schema`` key first."""
    return {"schema": name(kind), **body}


def dump(kind: str, body: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print ``body`` as a ``kind`` document."""
    write(document(kind, body), stream)


def write(doc: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print a document made by :func:`document` (indented JSON and a newline)."""
    if not str(doc.get("schema", "")).startswith("guestmem."):
        raise ValueError("not a guestmem document: the 'schema' key is missing")
    out = stream or sys.stdout
    json.dump(doc, out, indent=2)
    print(file=out)


def write_list(
    doc: dict[str, Any], key: str, items: Iterable[dict[str, Any]], stream: TextIO | None = None
) -> None:
    """Print ``doc`` with ``items`` as its last key ``key``, as :func:`write` would print the
    whole, made one item at a time (a results document of many long runs is never held
    whole)."""
    if not str(doc.get("schema", "")).startswith("guestmem."):
        raise ValueError("not a guestmem document: the 'schema' key is missing")
    out = stream or sys.stdout
    head = json.dumps({**doc, key: []}, indent=2)
    assert head.endswith("[]\n}")
    out.write(head[: -len("[]\n}")])
    first = True
    for item in items:
        out.write("[\n" if first else ",\n")
        out.write(textwrap.indent(json.dumps(item, indent=2), "    "))
        first = False
    out.write("[]\n}\n" if first else "\n  ]\n}\n")


def load(kind: str) -> dict[str, Any]:
    """The JSON Schema of ``kind``."""
    name(kind)
    text = resources.files(__name__).joinpath(f"{kind}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
