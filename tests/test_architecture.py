"""docs/architecture.md's recipe for an operation, held: every operation class is
implemented by both backends, parsed by the scenario format from the fields it writes,
in the checker's alphabet or explicitly left out of it, and documented."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from guestmem.backend.base import Machine, Outcome
from guestmem.backend.kernel import KernelMachine
from guestmem.backend.model import ModelMachine
from guestmem.checker.ops import ALPHABET, NOT_EXPLORED, alphabet
from guestmem.ops import OPERATIONS, Operation, toml
from guestmem.scenario.format import OPS, from_dict
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import PAGE_SIZE

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: One instance of each operation, with its fields set where it has any.
SAMPLES: dict[str, dict[str, Any]] = {
    "host_write": {"offset": PAGE_SIZE, "data": b"\x01\x02", "mapping": 1},
    "host_read": {"offset": 8, "size": 16, "mapping": 1},
    "guest_write": {"offset": 0, "data": b"\xab" * 8, "access": "private"},
    "guest_read": {"offset": 4, "size": 4, "access": "shared"},
    "convert": {
        "offset": 0,
        "size": 2 * PAGE_SIZE,
        "to": Direction.TO_PRIVATE,
        "flags": 3,
        "attributes": 8,
        "reserved": (0, 1),
        "error_offset_in": 5,
    },
    "punch_hole": {"offset": 0, "size": PAGE_SIZE},
    "pin": {"offset": 0, "size": PAGE_SIZE},
    "unpin": {"offset": PAGE_SIZE, "size": PAGE_SIZE},
    "launch": {},
    "populate": {"offset": 0, "size": 2 * PAGE_SIZE, "data": b"\x5a" * 100},
    "delete_memslot": {},
    "restore_memslot": {},
    "guest_request": {"offset": 0, "size": PAGE_SIZE, "to": Direction.TO_PRIVATE},
}


class Recorder:
    """A machine that records which of its calls an operation makes."""

    abi = "seed"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Outcome:
            self.calls.append(name)
            return Outcome()

        return call


def test_every_operation_has_a_sample() -> None:
    assert set(SAMPLES) == set(OPERATIONS)


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_both_backends_implement_what_the_operation_calls(name: str) -> None:
    operation = OPERATIONS[name](**SAMPLES[name])
    machine = Recorder()
    operation.apply(machine)
    (called,) = machine.calls
    assert called in Machine.__dict__, f"{called} is not on the Machine protocol"
    for backend in (ModelMachine, KernelMachine):
        assert callable(getattr(backend, called, None)), f"{backend.__name__} lacks {called}"


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_the_format_reads_back_what_an_operation_writes(name: str) -> None:
    operation = OPERATIONS[name](**SAMPLES[name])
    assert OPS[name] == (type(operation).FIELDS, type(operation).REQUIRED)
    assert set(operation.fields()) - {"op"} <= set(type(operation).FIELDS)
    doc = {"name": "t", "pages": 4, "init": "shared", "step": [{**operation.fields(), "expect": "any"}]}
    (step,) = from_dict(doc, "t.toml").steps
    assert step.operation == operation
    # and through the TOML writer, as a counterexample or a disagreement is written
    assert tomllib.loads(toml.document(doc)) == {**doc, "step": [{**operation.fields(), "expect": "any"}]}


def test_every_operation_is_explored_or_left_out_with_a_reason() -> None:
    explored = set(ALPHABET)
    assert explored | set(NOT_EXPLORED) == set(OPERATIONS.values())
    assert not explored & set(NOT_EXPLORED)
    assert all(reason for reason in NOT_EXPLORED.values())
    assert {type(op) for op in alphabet(2, "seed")} == explored


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_every_operation_is_documented(name: str) -> None:
    table = (DOCS / "scenarios.md").read_text().split("## Operations", 1)[1].split("## Expectations", 1)[0]
    assert f"`{name}`" in table
    cls: type[Operation] = OPERATIONS[name]
    assert cls.__doc__, f"{cls.__name__} has no docstring"
