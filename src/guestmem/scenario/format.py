"""Scenario files: TOML (or the same shape as a dict) → a validated :class:`Scenario`.

The format is documented in docs/scenarios.md. Every mistake is reported as
``FILE: step N: field 'x': reason`` (or ``FILE: field 'x': reason`` for top-level
fields) through :class:`ScenarioError`, before anything runs.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guestmem import inputs
from guestmem.backend.base import MAX_PAGES
from guestmem.ops import OPERATIONS, Operation
from guestmem.scenario import cost, params
from guestmem.scenario.expect import NOT_WRITTEN, Expect, parse
from guestmem.spec import platforms, revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import PAGE_SIZE

_U64 = 1 << 64
#: Fields each op accepts (besides ``op``, ``expect`` and ``error_offset``), and which are required.
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: (cls.FIELDS, cls.REQUIRED) for name, cls in OPERATIONS.items()
}
TOP_LEVEL = ("name", "about", "platforms", "abi", "pages", "init", "params", "step")
#: Limits checked before anything runs (docs/scenarios.md, *Limits*), with ``MAX_PAGES``
#: (each backend may accept fewer pages: its ``max_pages()``).
MAX_STEPS = 10_000
#: Bytes one host or guest read or write may move.
MAX_ACCESS = 1 << 20
#: Longest scenario name (it heads every output line and names fixture files).
MAX_NAME_CHARS = 1000
_SIZE = re.compile(r"^(\d+)([KMG])$")


class ScenarioError(ValueError):
    """Bad scenario input: the message is ``FILE: step N: field 'x': reason``."""


@dataclass(frozen=True)
class Step:
    """One action. ``expect`` maps a platform name (or ``"*"``) to the acceptable results."""

    index: int
    operation: Operation
    expect: Mapping[str, tuple[Expect, ...]]
    #: ``expect_abi``: per revision, a table like ``expect`` that replaces it under that revision.
    expect_abi: Mapping[str, Mapping[str, tuple[Expect, ...]]] = field(default_factory=dict)
    #: The step as written (for fixtures and reports).
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def expect_for(self, platform: str, abi: str | None = None) -> tuple[Expect, ...]:
        """What this step must produce on ``platform`` under revision ``abi``."""
        table = self.expect_abi.get(abi or "", self.expect)
        return table.get(platform) or table["*"]

    @property
    def op(self) -> str:
        """The operation's scenario name."""
        return self.operation.name

    @property
    def side(self) -> str:
        """Who acts: ``host``, ``guest`` or ``vmm``."""
        return self.operation.side

    def label(self) -> str:
        """``convert 0x0+0x1000 to private (preserve)`` and the like."""
        return self.operation.label()


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario file."""

    name: str
    about: str
    platforms: tuple[str, ...]
    #: The revision a run uses when none is chosen: the first one ``abi`` names.
    abi: str
    pages: int
    init: str
    steps: tuple[Step, ...]
    file: str
    #: The document as written (for fixtures).
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: The revisions the expectations hold for (``abi``); without ``abi``, every revision.
    revisions: tuple[str, ...] = tuple(revisions.REVISIONS)
    #: The parameter values this run was expanded with (empty: the file has no ``params``).
    params: Mapping[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.pages * PAGE_SIZE

    def applies_to(self, abi: str) -> bool:
        """Whether the file's expectations hold under revision ``abi``."""
        return abi in self.revisions


def load(path: str | Path) -> Scenario:
    """Read and validate a TOML scenario file that gives one run (no ``params``)."""
    found = load_all(path)
    if len(found) != 1:
        raise ScenarioError(
            f"{path}: field 'params': the file gives {len(found)} scenarios; read it with load_all"
        )
    return found[0]


def load_all(path: str | Path) -> list[Scenario]:
    """Read and validate a TOML scenario file: one scenario, or one per combination of
    its ``params`` (docs/scenarios.md, *Parameters*)."""
    path = Path(path)
    try:
        doc = inputs.load_toml(path, inputs.MAX_SCENARIO_BYTES)
    except inputs.InputError as err:
        raise ScenarioError(str(err)) from None
    return expand(doc, str(path))


def expand(doc: Mapping[str, Any], where: str) -> list[Scenario]:
    """Validate a scenario document, expanding a parametrised one into its runs."""
    if not isinstance(doc, Mapping) or "params" not in doc:
        return [from_dict(doc, where)]
    try:
        combos = params.parameters(doc)
    except params.TemplateError as err:
        raise ScenarioError(f"{where}: {err}") from None
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"{where}: field 'name': required, a non-empty string")
    pages = doc.get("pages")
    out = []
    for values in combos:
        names = dict(values)
        if isinstance(pages, int) and not isinstance(pages, bool):
            names["pages"] = pages
        try:
            run_name = params.run_name(name, values)
            steps = params.expand_steps(doc.get("step"), names, MAX_STEPS)
        except params.TemplateError as err:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            raise ScenarioError(f"{where}: [{shown}] {err}") from None
        plain = {k: v for k, v in doc.items() if k != "params"} | {"name": run_name, "step": steps}
        scenario = from_dict(plain, where)
        out.append(dataclasses.replace(scenario, params=dict(values)))
    return out


def from_dict(doc: Mapping[str, Any], where: str) -> Scenario:
    """Validate a scenario given as a dict (parsed TOML, or a fixture's ``scenario``)
    that gives one run; a parametrised one goes through :func:`expand`."""
    if not isinstance(doc, Mapping):
        raise ScenarioError(f"{where}: a scenario is a table of fields")
    if "params" in doc:
        raise ScenarioError(f"{where}: field 'params': a parametrised scenario gives several runs here")
    for key in doc:
        if key not in TOP_LEVEL:
            raise ScenarioError(f"{where}: field {key!r}: unknown field (known: {', '.join(TOP_LEVEL)})")

    def top(name: str, message: str) -> ScenarioError:
        return ScenarioError(f"{where}: field {name!r}: {message}")

    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise top("name", "required, a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise top("name", f"{len(name)} characters is more than the limit of {MAX_NAME_CHARS}")
    control = next((c for c in name if unicodedata.category(c) in ("Cc", "Cs")), None)
    if control is not None:
        raise top("name", f"control character {control!r} in {_clip(name)!r}")
    about = doc.get("about", "")
    if not isinstance(about, str):
        raise top("about", f"must be a string, not {_kind(about)}")
    applies = _revisions(doc, top)
    abi = applies[0] if "abi" in doc else revisions.DEFAULT
    plats = doc.get("platforms", list(platforms.PLATFORMS))
    if not isinstance(plats, list) or not plats or not all(isinstance(p, str) for p in plats):
        raise top("platforms", "must be a non-empty list of platform names")
    for p in plats:
        if p not in platforms.PLATFORMS:
            raise top("platforms", f"unknown platform {p!r} (choose from {', '.join(platforms.PLATFORMS)})")
    if len(set(plats)) != len(plats):
        raise top("platforms", "lists a platform twice")
    pages = doc.get("pages")
    if isinstance(pages, bool) or not isinstance(pages, int) or pages < 1:
        raise top("pages", f"required, a positive integer, not {pages!r}")
    if pages > MAX_PAGES:
        raise top("pages", f"{pages} pages is more than the limit of {MAX_PAGES} (2^40 - 1)")
    init = doc.get("init")
    if init not in ("shared", "private"):
        raise top("init", f"required, 'shared' or 'private', not {init!r}")
    raw_steps = doc.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise top("step", "at least one [[step]] table is required")
    if len(raw_steps) > MAX_STEPS:
        raise top("step", f"{len(raw_steps)} steps is more than the limit of {MAX_STEPS}")
    ordered = tuple(p for p in platforms.PLATFORMS if p in plats)
    budget = cost.Budget(where)  # a run's totals, checked as each step is read
    steps = []
    for n, raw in enumerate(raw_steps, start=1):
        steps.append(_step(raw, n, where, applies, pages, ordered))
        try:
            budget.add(steps[-1])
        except cost.CostError as err:
            raise ScenarioError(str(err)) from None
    return Scenario(name, about, ordered, abi, pages, init, tuple(steps), where, raw=doc, revisions=applies)


def _revisions(doc: Mapping[str, Any], top: Any) -> tuple[str, ...]:
    """``abi``: one revision or a list of them, the first being the file's own; absent,
    the file is written for the default revision and runs under any."""
    value = doc.get("abi", list(revisions.REVISIONS))
    names = [value] if isinstance(value, str) else value
    choices = ", ".join(revisions.REVISIONS)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise top("abi", f"must be a revision name or a non-empty list of them, not {value!r}")
    for n in names:
        if n not in revisions.REVISIONS:
            raise top("abi", f"unknown revision {n!r} (choose from {choices})")
    if len(set(names)) != len(names):
        raise top("abi", "lists a revision twice")
    return tuple(names)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", list: "a list", float: "a float"}.get(
        type(value), "a table" if isinstance(value, Mapping) else type(value).__name__
    )


def _step(raw: Any, n: int, where: str, applies: Sequence[str], pages: int, plats: Sequence[str]) -> Step:
    def bad(name: str, message: str) -> ScenarioError:
        return ScenarioError(f"{where}: step {n}: field {name!r}: {message}")

    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: step {n}: a step is a table ([[step]])")
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise bad("op", f"unknown op {op!r} (choose from {', '.join(OPS)})")
    allowed, required = OPS[op]
    for key in raw:
        if key not in (*allowed, "op", "expect", "expect_abi", "error_offset"):
            raise bad(key, f"unknown field for op {op!r} (it takes {', '.join(allowed) or 'no fields'})")
    for key in required:
        if key not in raw:
            raise bad(key, f"required for op {op!r}")

    def number(name: str, default: int = 0) -> int:
        if name not in raw:
            return default
        try:
            return parse_number(raw[name])
        except ValueError as err:
            raise bad(name, str(err)) from None

    fields: dict[str, Any] = {"offset": number("offset"), "size": number("size")}
    if "data" in raw:
        data = raw["data"]
        if not isinstance(data, str):
            raise bad("data", f"must be a hex string, not {_kind(data)}")
        try:
            chunk = bytes.fromhex(data)
        except ValueError:
            raise bad("data", f"bad hex {data!r} (write bytes as pairs of hex digits, e.g. 'beef')") from None
        if not chunk:
            raise bad("data", "empty")
        repeat = number("repeat", 1)
        if not 1 <= repeat <= 1 << 24:
            raise bad("repeat", f"must be between 1 and {1 << 24}, not {repeat}")
        if len(chunk) * repeat > MAX_ACCESS:
            raise bad(
                "repeat" if "repeat" in raw else "data",
                f"{len(chunk)} bytes x {repeat} is more than the {MAX_ACCESS}-byte limit of one access",
            )
        fields["data"] = chunk * repeat
    elif "repeat" in raw:
        raise bad("repeat", "needs 'data'")
    if "mapping" in raw:
        if type(raw["mapping"]) is not int or raw["mapping"] not in (0, 1):
            raise bad(
                "mapping", f"must be 0 (the VMM's mapping) or 1 (a second process's), not {raw['mapping']!r}"
            )
        fields["mapping"] = raw["mapping"]
    if "as" in raw:
        if raw["as"] not in ("private", "shared"):
            raise bad("as", f"must be 'private' or 'shared', not {raw['as']!r}")
        fields["access"] = raw["as"]
    if "to" in raw:
        if raw["to"] not in ("private", "shared"):
            raise bad("to", f"must be 'private' or 'shared', not {raw['to']!r}")
        fields["to"] = Direction(f"to_{raw['to']}")
    if op == "populate" and "data" in fields and len(fields["data"]) > fields["size"]:
        raise bad("data", f"{len(fields['data'])} bytes of source do not fit in size {fields['size']:#x}")
    if op in ("host_read", "guest_read") and fields["size"] > MAX_ACCESS:
        raise bad("size", f"{fields['size']} is more than the {MAX_ACCESS}-byte limit of one access")
    if op.startswith("guest_") and op != "guest_request":
        length = len(fields["data"]) if "data" in fields else fields["size"]
        if fields["offset"] + length > pages * PAGE_SIZE:
            raise bad(
                "offset",
                f"guest access [{fields['offset']:#x}, +{length:#x}) is outside the "
                f"guest_memfd ({pages} pages); the memslot covers only the file",
            )
    if op == "convert":
        _convert_fields(raw, fields, bad, number)
    expect = _expect(raw, bad, plats)
    by_abi = _expect_abi(raw, bad, plats, applies)
    tables = [expect, *by_abi.values()]
    if "error_offset" in raw and not any(
        e.kind == "errno" for t in tables for alts in t.values() for e in alts
    ):
        raise bad("error_offset", "only meaningful with an errno expectation")
    operation = OPERATIONS[op].from_fields(fields)
    return Step(index=n, operation=operation, expect=expect, expect_abi=by_abi, raw=dict(raw))


def _convert_fields(raw: Mapping[str, Any], fields: dict[str, Any], bad: Any, number: Any) -> None:
    if "to" not in raw and "attributes" not in raw:
        raise bad("to", "required for op 'convert' (or give raw 'attributes')")
    if "policy" in raw and "flags" in raw:
        raise bad("flags", "give 'policy' or raw 'flags', not both")
    if "policy" in raw:
        try:
            fields["policy"] = Policy(raw["policy"])
        except ValueError:
            choices = ", ".join(p.value for p in Policy)
            raise bad("policy", f"unknown policy {raw['policy']!r} (choose from {choices})") from None
    elif "flags" not in raw:
        fields["policy"] = Policy.DEFAULT
    if "flags" in raw:
        fields["flags"] = number("flags")
    if "attributes" in raw:
        fields["attributes"] = number("attributes")
    if "error_offset_in" in raw:
        fields["error_offset_in"] = number("error_offset_in")
    if "reserved" in raw:
        words = raw["reserved"]
        if not isinstance(words, list) or len(words) > 11:
            raise bad("reserved", "must be a list of at most 11 u64 words (docs/semantics.md §9)")
        try:
            fields["reserved"] = tuple(parse_number(w) for w in words)
        except ValueError as err:
            raise bad("reserved", str(err)) from None


def _expect_abi(
    raw: Mapping[str, Any], bad: Any, plats: Sequence[str], applies: Sequence[str]
) -> dict[str, dict[str, tuple[Expect, ...]]]:
    """``expect_abi = { v8 = "EINVAL", rfc-v5 = { tdx = "EOPNOTSUPP", "*" = "ok" } }``: per
    revision, an expectation that replaces ``expect`` under that revision."""
    if "expect_abi" not in raw:
        return {}
    value = raw["expect_abi"]
    if not isinstance(value, Mapping) or not value:
        raise bad("expect_abi", "must be a table of revision = expectation, e.g. { v8 = 'EINVAL' }")
    out = {}
    for name, item in value.items():
        if name not in revisions.REVISIONS:
            choices = ", ".join(revisions.REVISIONS)
            raise bad(f"expect_abi.{name}", f"unknown revision {name!r} (choose from {choices})")
        if name not in applies:
            listed = ", ".join(applies)
            raise bad(f"expect_abi.{name}", f"the file does not apply to {name} (its 'abi' lists {listed})")
        out[name] = _expect(raw, bad, plats, item, f"expect_abi.{name}")
    return out


def _expect(
    raw: Mapping[str, Any], bad: Any, plats: Sequence[str], value: Any = None, field_name: str = "expect"
) -> dict[str, tuple[Expect, ...]]:
    error_offset: int | None = None
    if "error_offset" in raw:
        if raw["error_offset"] == "none":
            error_offset = NOT_WRITTEN
        else:
            try:
                error_offset = parse_number(raw["error_offset"])
            except ValueError as err:
                raise bad("error_offset", f"{err} (or 'none': not written back)") from None
    if value is None:
        value = raw.get("expect", "ok")

    def alternatives(item: Any, key: str) -> tuple[Expect, ...]:
        items = item if isinstance(item, list) else [item]
        if not items:
            raise bad(key, "an empty list allows nothing")
        try:
            return tuple(parse(x, error_offset) for x in items)
        except ValueError as err:
            raise bad(key, str(err)) from None

    if isinstance(value, Mapping):
        table: dict[str, tuple[Expect, ...]] = {}
        for key, item in value.items():
            if key != "*" and key not in platforms.PLATFORMS:
                known = ", ".join(platforms.PLATFORMS)
                raise bad(f"{field_name}.{key}", f"unknown platform {key!r} (choose from {known}, or '*')")
            table[key] = alternatives(item, f"{field_name}.{key}")
        if "*" not in table:
            missing = [p for p in plats if p not in table]
            if missing:
                raise bad(field_name, f"no entry for {', '.join(missing)} and no '*' fallback")
    else:
        table = {"*": alternatives(value, field_name)}
    return table


def parse_number(value: Any) -> int:
    """An offset or size: an integer, ``"0x1000"``, ``"4K"``/``"2M"``/``"1G"``, or
    ``"page:N"`` (N pages of 4096 bytes). Must fit in a u64."""
    if type(value) is int:
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not text.isascii():  # int() would also read other scripts' digits ("٣")
            raise ValueError(f"bad number {value!r} (use ASCII digits: 4096, '0x1000', '4K' or 'page:1')")
        match = _SIZE.match(text)
        try:
            if text.startswith("page:"):
                number = int(text[5:], 0) * PAGE_SIZE
            elif match:
                number = int(match[1]) << {"K": 10, "M": 20, "G": 30}[match[2]]
            else:
                number = int(text, 0)
        except ValueError:
            raise ValueError(f"bad number {value!r} (use 4096, '0x1000', '4K' or 'page:1')") from None
    else:
        shown = f" ({value!r:.40})" if isinstance(value, float) else ""
        raise ValueError(f"must be an integer or a string such as '4K', not {_kind(value)}{shown}")
    if not 0 <= number < _U64:
        raise ValueError(f"{value!r} does not fit in a u64")
    return number
