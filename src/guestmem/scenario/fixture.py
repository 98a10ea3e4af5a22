"""Fixtures: a scenario run on the model, frozen as JSON, to replay on another machine.

A fixture holds one scenario for one platform and revision as a plain document in the
scenario format (docs/scenarios.md), with every step's ``expect`` replaced by the list
of outcomes allowed on a kernel, plus the model's own outcomes for reference. Replaying
needs only the scenario runner and a backend, none of the model's internals.

Allowed outcomes per step: the model's exact outcome where the scenario only asked for
``ok`` or ``any`` and the model's bytes do not depend on its per-VM key (ciphertext,
garbage and random bytes do); otherwise the scenario's own expectation, with the
model's ``error_offset`` added to an errno that did not state one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guestmem import inputs, schemas
from guestmem.backend.base import Outcome
from guestmem.model.provenance import KEYED_LABELS
from guestmem.ops import expectation
from guestmem.scenario.expect import NOT_WRITTEN, Expect, matches
from guestmem.scenario.format import Scenario, ScenarioError, from_dict
from guestmem.scenario.runner import RunResult, StepResult, outcome_json, summarised

VERSION = 1
#: The fields of a fixture document.
FIELDS = ("schema", "fixture", "scenario", "file", "platform", "revision", "document", "model")
#: Longest scenario part of a fixture's file name (characters); the whole name stays
#: well under the 255 bytes a file name may have.
NAME_CHARS = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def allowed(step: StepResult) -> list[str]:
    """The outcomes a replay may show for this step (see the module docstring)."""
    outcome = step.outcome
    assert outcome is not None
    keyed = any(label in KEYED_LABELS for _a, _b, label in outcome.origins or ())
    if all(e.kind in ("ok", "any") for e in step.expect) and not keyed:
        return [expectation(outcome)]
    return [str(_tighten(e, outcome)) for e in step.expect]


def _tighten(expect: Expect, outcome: Outcome) -> Expect:
    if expect.kind != "errno" or expect.error_offset is not None or not matches(expect, outcome):
        return expect
    offset = NOT_WRITTEN if outcome.error_offset is None else outcome.error_offset
    return Expect("errno", expect.text, name=expect.name, error_offset=offset)


def freeze(result: RunResult) -> dict[str, Any]:
    """The fixture of one passing model run."""
    if result.status != "pass":
        raise ValueError(f"{result.scenario.name} [{result.platform}] did not pass on the model")
    scenario = result.scenario
    steps = []
    for s in result.steps:
        raw = {k: v for k, v in s.step.raw.items() if k not in ("expect", "expect_abi", "error_offset")}
        steps.append({**raw, "expect": allowed(s)})
    document = {
        "name": scenario.name,
        "about": scenario.about,
        "platforms": [result.platform],
        "abi": result.abi,
        "pages": scenario.pages,
        "init": scenario.init,
        "step": steps,
    }
    return schemas.document(
        "fixture",
        {
            "fixture": VERSION,
            "scenario": scenario.name,
            "file": Path(scenario.file).name,
            "platform": result.platform,
            "revision": result.abi,
            "document": document,
            # for reference: a read longer than a few bytes kept as its head, length and hash
            "model": [
                None if s.outcome is None else outcome_json(summarised(s.outcome)) for s in result.steps
            ],
        },
    )


def file_name(result: RunResult) -> str:
    """``<scenario>.<platform>.<abi>.json``, with the scenario's name made a safe file
    name: only letters, digits and ``_.+-`` (any other run becomes ``_``), no leading dot,
    at most :data:`NAME_CHARS` characters. A name that had to change also gets a short hash
    of the original, so different names stay different files."""
    return file_name_of(result.scenario.name, result.platform, result.abi)


def file_name_of(name: str, platform: str, abi: str) -> str:
    """:func:`file_name` of a run of the scenario ``name`` on ``platform`` under ``abi``."""
    safe = _UNSAFE.sub("_", name).lstrip(".") or "_"
    if safe != name or len(safe) > NAME_CHARS:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[: NAME_CHARS - 9]}-{digest}"
    return f"{safe}.{platform}.{abi}.json"


def load(path: str | Path) -> tuple[Scenario, str]:
    """A fixture file → its scenario and platform; :class:`ScenarioError` if malformed."""
    where = str(path)
    try:
        doc = inputs.load_json(path, inputs.MAX_FIXTURE_BYTES)
    except inputs.InputError as err:
        raise ScenarioError(str(err)) from None
    if not isinstance(doc, Mapping) or type(doc.get("fixture")) is not int or doc["fixture"] != VERSION:
        raise ScenarioError(f"{where}: field 'fixture': not a guestmem fixture (version {VERSION})")
    for key in doc:
        if key not in FIELDS:
            raise ScenarioError(f"{where}: field {key!r}: unknown field (known: {', '.join(FIELDS)})")
    if doc.get("schema", schemas.name("fixture")) != schemas.name("fixture"):
        raise ScenarioError(
            f"{where}: field 'schema': {doc['schema']!r:.60} is not {schemas.name('fixture')!r}"
        )
    for key in ("platform", "revision", "document"):
        if key not in doc:
            raise ScenarioError(f"{where}: field {key!r}: required in a fixture")
        if key != "document" and not isinstance(doc[key], str):
            raise ScenarioError(f"{where}: field {key!r}: must be a string, not {doc[key]!r:.60}")
    for key in ("scenario", "file"):
        if key in doc and not isinstance(doc[key], str):
            raise ScenarioError(f"{where}: field {key!r}: must be a string, not {doc[key]!r:.60}")
    scenario = from_dict(doc["document"], where)
    if scenario.platforms != (doc["platform"],):
        raise ScenarioError(f"{where}: field 'platform': does not match the fixture's document")
    if scenario.abi != doc["revision"]:
        raise ScenarioError(f"{where}: field 'revision': does not match the fixture's document")
    if "scenario" in doc and doc["scenario"] != scenario.name:
        raise ScenarioError(f"{where}: field 'scenario': {doc['scenario']!r:.60} is not the document's name")
    if "model" in doc:
        _check_model(doc["model"], len(scenario.steps), where)
    return scenario, doc["platform"]


#: The keys of one outcome in a fixture's ``model`` (``outcome_json``): always, and for a
#: long read.
OUTCOME_KEYS = frozenset({"errno", "error_offset", "signal", "data", "exit"})
LONG_READ_KEYS = frozenset({"data_size", "data_sha256"})


def _check_model(model: Any, steps: int, where: str) -> None:
    """``model``: one outcome (or null, for a step that did not run) per step."""
    if not isinstance(model, list) or len(model) != steps:
        shown = f"a list of {len(model)}" if isinstance(model, list) else type(model).__name__
        raise ScenarioError(
            f"{where}: field 'model': must be a list of {steps} outcomes, one per step, not {shown}"
        )
    for number, outcome in enumerate(model, start=1):
        if outcome is None:
            continue
        if (
            not isinstance(outcome, Mapping)
            or not OUTCOME_KEYS <= set(outcome) <= OUTCOME_KEYS | LONG_READ_KEYS
        ):
            keys = ", ".join(sorted(OUTCOME_KEYS))
            raise ScenarioError(f"{where}: field 'model': step {number}: not an outcome (keys {keys})")
