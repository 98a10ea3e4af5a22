"""docs/semantics.md is an independent statement of the rules: its tables, parsed here,
must agree with what the model computes (§2 cells and how far each effect reaches, §4
answers, §7 capabilities), and docs/matrix.md must agree with its §2."""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from guestmem.errors import IoctlError
from guestmem.model import GuestMemfd, Vm
from guestmem.model.provenance import Origin
from guestmem.report import matrix
from guestmem.spec import platforms, revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, PAGE_SIZE

DOCS = Path(__file__).resolve().parent.parent / "docs"
SEMANTICS = DOCS / "semantics.md"
ABIS = ("seed", "iteration2", "rfc-v5", "v8", "v13")
PLATFORMS = ("sw_protected", "pkvm", "tdx", "snp", "cca", "default")
POLICIES = ("zero", "preserve", "none", "default")
PHASES = ("pre_launch", "running")
S, P = Direction.TO_SHARED, Direction.TO_PRIVATE
SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
PATTERN = bytes(0x21 + i % 0x5E for i in range(PAGE_SIZE))
#: How a §2 value is spelled in the matrix.
VALUE = {"0xab": "fill:ab"}
#: The ``flags`` a VMM passes per policy, as §1 and §2 state them.
FLAGS = {
    "seed": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "iteration2": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "rfc-v5": {"zero": 1, "preserve": 2, "none": 0, "default": 0},
    "v8": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "v13": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
}


def section(number: int) -> str:
    text = SEMANTICS.read_text()
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/semantics.md has no section {number}"
    return match.group(0)


def _unquote(cell: str) -> str:
    """``"`x`"`` → ``"x"``; cells with more code spans stay as written."""
    return cell[1:-1] if cell.count("`") == 2 and cell[0] == cell[-1] == "`" else cell


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every markdown table in ``text`` (header and rule dropped)."""
    rows: list[list[str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(-+\|)+$", lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([_unquote(c.strip()) for c in lines[j].strip("|").split("|")])
                j += 1
    return rows


Cell = tuple[str, str]  # (kind: guarantee | native | scramble | answer, value)


def parse_result(text: str) -> Cell:
    if text in ("EINVAL", "EOPNOTSUPP"):
        return "answer", text
    if ": " in text:
        kind, value = text.split(": ", 1)
        assert kind in ("native", "scramble"), text
        return kind, VALUE.get(value, value)
    return "guarantee", VALUE.get(text, text)


def parse_cell(text: str) -> dict[str, Cell]:
    """``{phase: (kind, value)}`` from one §2 cell."""
    split = re.fullmatch(r"pre-launch: (.+); running: (.+)", text)
    if split:
        return {"pre_launch": parse_result(split.group(1)), "running": parse_result(split.group(2))}
    return dict.fromkeys(PHASES, parse_result(text))


@cache
def section2() -> dict[tuple[str, str, Direction, str, str], Cell]:
    """Every §2 cell: (abi, platform, direction, policy, phase) -> (kind, value)."""
    out: dict[tuple[str, str, Direction, str, str], Cell] = {}
    parts = re.split(r"^### `([\w-]+)`\n", section(2), flags=re.M)
    for abi, body in zip(parts[1::2], parts[2::2], strict=True):
        rows = table_rows(body)
        assert [r[0] for r in rows] == list(PLATFORMS), abi
        for row in rows:
            assert len(row) == 9, row
            for i, text in enumerate(row[1:]):
                direction, policy = (S if i < 4 else P), POLICIES[i % 4]
                for phase, cell in parse_cell(text).items():
                    out[(abi, row[0], direction, policy, phase)] = cell
    assert {k[0] for k in out} == set(ABIS)
    return out


@cache
def computed(abi: str) -> list[dict[str, str]]:
    return matrix.compute(abi)


# --- §2: every cell against the model ----------------------------------------------------------
@pytest.mark.parametrize("abi", ABIS)
def test_section2_cells_match_the_model(abi: str) -> None:
    cells = section2()
    wrong = []
    for row in computed(abi):
        key = (abi, row["platform"], Direction(row["direction"]), row["policy"], row["phase"])
        _kind, want = cells[key]
        if "unwritten" in row["notes"].split(","):
            # no pre-launch conversion puts bytes in private memory there: the page is
            # unallocated and reads zeros, whatever the effect (§3 *Allocated*)
            assert row["result"] == "zeros", row
            continue
        if row["result"] != want:
            wrong.append((key, row["result"], want))
    assert wrong == []


@pytest.mark.parametrize("abi", ABIS)
def test_section2_kinds_match_the_revision(abi: str) -> None:
    """A guarantee is promised and applied by KVM; ``native`` neither; ``scramble`` is
    applied by KVM without a promise."""
    revision = revisions.get(abi)
    for (cell_abi, platform, direction, policy, _phase), (kind, _value) in section2().items():
        if cell_abi != abi or kind == "answer":
            continue
        decoded = revision.decode(revision.encode(Policy(policy)))
        assert decoded is not None
        plat = platforms.get(platform)
        assert revision.guaranteed(plat, direction, decoded) == (kind == "guarantee"), (platform, policy)
        assert revision.applied_by_kvm(plat, direction, decoded) == (kind != "native"), (platform, policy)


def _already_there(abi: str, platform: str, direction: Direction) -> tuple[Vm, GuestMemfd]:
    """A running VM whose page 0 is already on the side ``direction`` goes to, allocated and
    holding PATTERN (written by the side that owns it)."""
    to_private = direction is P
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(PAGE_SIZE, GUEST_MEMFD_FLAG_MMAP if to_private else SHARED)
    vm.launch()
    if to_private:
        gmem.guest_write(0, PATTERN, "private")
    else:
        gmem.mmap().write(0, PATTERN)
    if platforms.get(platform).consent:
        gmem.guest_request(0, PAGE_SIZE, direction)
    return vm, gmem


@pytest.mark.parametrize("abi", ABIS)
def test_section2_kinds_decide_whether_pages_already_there_change(abi: str) -> None:
    """§3 *Whole range*, measured: converting a page already in the target state changes it
    exactly when KVM applies the effect (and the effect is not ``preserved``)."""
    for (cell_abi, platform, direction, policy, phase), (kind, value) in section2().items():
        if cell_abi != abi or phase != "running" or kind == "answer":
            continue
        _vm, gmem = _already_there(abi, platform, direction)
        try:
            gmem.convert(0, PAGE_SIZE, direction, FLAGS[abi][policy])
        except IoctlError as err:  # v8 returns early; nothing else may fail here
            pytest.fail(f"{abi} {platform} {direction.arrow} {policy}: {err}")
        changed = gmem.peek(0, PAGE_SIZE) != PATTERN
        assert changed == (kind != "native" and value != "preserved"), (platform, direction, policy)


# --- §4: every answer and error_offset -----------------------------------------------------------
def _arg(offset: int = 0, size: int = PAGE_SIZE, attributes: int = 8, flags: int = 0, **kw: int) -> bytearray:
    words = [offset, size, attributes, flags, kw.get("error_offset", 0)] + [kw.get("reserved", 0)] + [0] * 10
    return bytearray(struct.pack("<16Q", *words))


Trigger = Callable[[], tuple[GuestMemfd, bytes | bytearray]]


def _vm(platform: str = "sw_protected", **kw: bool) -> GuestMemfd:
    vm = Vm(platform, "seed", in_place_conversion=kw.get("in_place", True))
    gmem = vm.create_guest_memfd(4 * PAGE_SIZE, SHARED)
    gmem.mmap().write(0, PATTERN)
    return gmem


def _consent() -> GuestMemfd:
    gmem = Vm("pkvm").create_guest_memfd(4 * PAGE_SIZE, SHARED)
    gmem.vm.launch()
    gmem.guest_request(0, PAGE_SIZE, P)
    return gmem


def _enomem() -> GuestMemfd:
    gmem = _vm()
    gmem.vm.failslab = 1
    return gmem


def _pinned() -> GuestMemfd:
    gmem = _vm()
    gmem.pin(2 * PAGE_SIZE, PAGE_SIZE)
    return gmem


#: A failing call per §4 step (seed), with the error_offset the doc's wording means.
TRIGGERS: dict[str, tuple[Trigger, int | None]] = {
    "0": (lambda: (_vm(in_place=False), _arg()), None),
    "1": (lambda: (_vm(), bytes(64)), None),
    "2": (lambda: (_vm(), _arg(flags=3)), None),
    "3": (lambda: (_vm(), _arg(reserved=1)), None),
    "4": (lambda: (_vm("default"), _arg()), None),
    "5": (lambda: (_vm(), _arg(attributes=1)), None),
    "6": (lambda: (_vm(), _arg(size=0)), None),
    "7": (lambda: (_vm(), _arg(offset=1)), None),
    "8": (lambda: (_vm(), _arg(offset=4 * PAGE_SIZE)), None),
    "9": (lambda: (_vm("snp"), _arg(offset=PAGE_SIZE, flags=1)), PAGE_SIZE),
    "10": (lambda: (_consent(), _arg(size=3 * PAGE_SIZE, flags=2)), PAGE_SIZE),
    "10a": (lambda: (_enomem(), _arg(offset=PAGE_SIZE, size=2 * PAGE_SIZE)), PAGE_SIZE),
    "11": (lambda: (_pinned(), _arg(size=4 * PAGE_SIZE)), 2 * PAGE_SIZE),
}


def section4() -> dict[str, tuple[str, str]]:
    return {row[0]: (row[2].strip("`"), row[3].strip("`")) for row in table_rows(section(4))}


def test_section4_lists_every_step() -> None:
    assert list(section4()) == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "8a",
        "9",
        "10",
        "10a",
        "11",
        "12",
    ]


@pytest.mark.parametrize("step", list(TRIGGERS))
def test_section4_answers_match_the_model(step: str) -> None:
    answer, written = section4()[step]
    trigger, offset = TRIGGERS[step]
    gmem, arg = trigger()
    before = gmem.digest()
    with pytest.raises(IoctlError) as info:
        gmem.set_memory_attributes2(arg)
    assert info.value.name == answer
    if written == "not written":
        assert info.value.error_offset is None
        if len(arg) >= 40:
            assert struct.unpack_from("<Q", arg, 32)[0] == 0
    else:
        assert offset is not None and info.value.error_offset == offset
        assert struct.unpack_from("<Q", arg, 32)[0] == offset
    if step != "11":  # the one failure that may come after the unmap (§3 All or nothing)
        assert gmem.digest() == before


def test_section4_write_back_failure_is_efault() -> None:
    gmem, arg = TRIGGERS["11"][0]()
    with pytest.raises(IoctlError) as info:
        gmem.set_memory_attributes2(bytes(arg))
    assert info.value.code == errno.EFAULT


# --- §7: capabilities ------------------------------------------------------------------------------
def test_section7_capabilities_match_the_model() -> None:
    rows = table_rows(section(7))
    assert rows
    for abi_cell, _name, number, *values in rows:
        abis = ABIS if abi_cell == "every" else (abi_cell,)
        for abi in abis:
            for platform, value in zip(PLATFORMS, values, strict=True):
                got = Vm(platform, abi).check_extension(int(number))
                assert got == int(value), (abi, _name, platform)


@pytest.mark.parametrize("abi", ABIS)
def test_section7_without_in_place_conversion(abi: str) -> None:
    for platform in PLATFORMS:
        vm = Vm(platform, abi, in_place_conversion=False)
        private = revisions.get(abi).has_private_memory(platforms.get(platform))
        assert (vm.check_extension(250), vm.check_extension(251)) == (0, 0)
        assert vm.check_extension(233) == (8 if private else 0)


# --- docs/matrix.md (the command's output) against §2 ---------------------------------------------
def test_docs_matrix_agrees_with_section2() -> None:
    """docs/matrix.md is the model's output (test_matrix.py); here every running cell it
    shows must also be what docs/semantics.md §2 states."""
    cells = section2()
    text = (DOCS / "matrix.md").read_text()
    blocks = re.findall(r"^#### ([\w-]+): (P→S|S→P) .*?\n\n(.*?)\n\n", text, re.M | re.S)
    assert len(blocks) == 2 * len(ABIS)
    seen = 0
    for abi, arrow, table in blocks:
        direction = S if arrow == "P→S" else P
        for row in table_rows(table):
            platform, phase, *results = row
            if phase != "running":
                continue
            for policy, shown in zip(POLICIES, results, strict=True):
                value = shown.split(" [")[0]
                assert value == cells[(abi, platform, direction, policy, phase)][1], (abi, platform, policy)
                seen += 1
    assert seen == len(ABIS) * 2 * len(PLATFORMS) * len(POLICIES)


# --- docs/analyze.md (the command's output) against §2 --------------------------------------------
def test_docs_analyze_flags_zero_agrees_with_section2() -> None:
    """docs/analyze.md is the model's output (test_checker.py); its flags = 0 tables must also
    say what docs/semantics.md §2's ``default`` column states."""
    cells = section2()
    text = (DOCS / "analyze.md").read_text()
    blocks = re.findall(r"^## ([\w-]+): .*?\n### flags = 0 .*?\n\n(.*?)\n\n", text, re.M | re.S)
    assert [abi for abi, _ in blocks] == list(ABIS)
    columns = [(S, "pre_launch"), (S, "running"), (P, "pre_launch"), (P, "running")]
    for abi, table in blocks:
        rows = table_rows(table)
        assert [r[0] for r in rows] == list(PLATFORMS)
        for platform, *answers in rows:
            for (direction, phase), shown in zip(columns, answers, strict=True):
                kind, value = cells[(abi, platform, direction, "default", phase)]
                assert shown == (value if kind == "answer" else "ok"), (abi, platform, direction, phase)


# --- §1: the revision table -------------------------------------------------------------------------
def test_section1_table_matches_the_revisions() -> None:
    rows = {row[0]: row for row in table_rows(section(1))}
    assert list(rows) == list(ABIS)
    resolved: dict[str, list[str]] = {}
    for abi in ABIS:
        row = [resolved["seed"][i] if cell == "as `seed`" else cell for i, cell in enumerate(rows[abi])]
        resolved[abi] = row
        _name, _what, _flags, _zero, private, error_offset, unchanged = row
        revision = revisions.get(abi)
        names = re.findall(r"`(\w+)`", private)
        if private.startswith("every platform but"):
            want = {p for p in PLATFORMS if p not in names}
        else:
            want = set(names)
        assert {p for p in PLATFORMS if revision.has_private_memory(platforms.get(p))} == want, abi
        assert revision.rejects_error_offset_input == error_offset.startswith("non-zero"), abi
        assert revision.early_return == unchanged.startswith("returns 0"), abi
        # flags = 0 decodes to what the "flags = 0" column says
        decoded = revision.decode(0)
        assert decoded is not None
        assert decoded.value in ("zero", "unspecified")
        assert (decoded.value == "zero") == (_zero == "ZERO"), abi


# --- §1a: from v8 to v13, each probe measured under both revisions -------------------------------
def _probe_flags(abi: str) -> str:
    gmem = Vm("sw_protected", abi).create_guest_memfd(PAGE_SIZE, SHARED)
    with pytest.raises(IoctlError) as info:
        gmem.convert(0, PAGE_SIZE, P, 1)
    return info.value.name


def _probe_already_private(abi: str) -> str:
    vm = Vm("sw_protected", abi)
    gmem = vm.create_guest_memfd(2 * PAGE_SIZE, GUEST_MEMFD_FLAG_MMAP)
    gmem.guest_write(0, PATTERN, "private")
    before = gmem.digest()
    gmem.convert(0, 2 * PAGE_SIZE, P, 0)
    return "0, nothing changes" if gmem.digest() == before else "0, something changed"


def _probe_pinned(abi: str) -> str:
    gmem = Vm("sw_protected", abi).create_guest_memfd(2 * PAGE_SIZE, SHARED)
    gmem.pin(PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(IoctlError) as info:
        gmem.convert(0, 2 * PAGE_SIZE, P, 0)
    at = "the page" if info.value.error_offset == PAGE_SIZE else hex(info.value.error_offset or 0)
    return f"{info.value.name} at {at}"


def _probe_first_fault(abi: str) -> str:
    gmem = Vm("sw_protected", abi).create_guest_memfd(PAGE_SIZE, SHARED)
    return "zeros" if gmem.mmap().read(0, PAGE_SIZE) == bytes(PAGE_SIZE) else "not zeros"


def _probe_mixed(platform: str) -> Callable[[str], str]:
    def probe(abi: str) -> str:
        vm = Vm(platform, abi)
        gmem = vm.create_guest_memfd(2 * PAGE_SIZE, SHARED)
        vm.launch()
        gmem.convert(0, PAGE_SIZE, P, 0)
        gmem.guest_write(0, PATTERN, "private")
        gmem.convert(0, 2 * PAGE_SIZE, P, 0)  # page 1 is still shared
        got = gmem.guest_read(0, PAGE_SIZE, "private")
        if got == PATTERN:
            return "kept"
        return "lost: zeros" if got == bytes(PAGE_SIZE) else "lost"

    return probe


def _probe_populate(abi: str) -> str:
    vm = Vm("tdx", abi)
    gmem = vm.create_guest_memfd(PAGE_SIZE, SHARED)
    gmem.mmap().write(0, PATTERN)
    gmem.convert(0, PAGE_SIZE, P, 0)
    gmem.populate(0, PAGE_SIZE)
    vm.launch()
    payload = gmem.guest_read(0, PAGE_SIZE) == PATTERN and {o for *_, o in gmem.origins(0, PAGE_SIZE)} == {
        Origin.PAYLOAD
    }
    return "0, the page's bytes become the payload" if payload else "0, something else"


#: §1a's second table, row by row: what each probe measures.
PROBES: dict[str, Callable[[str], str]] = {
    "`flags` = 1 on `sw_protected`": _probe_flags,
    "to-private of a range that is private already": _probe_already_private,
    "to-private of a pinned page": _probe_pinned,
    "a never-written shared page, read by the host": _probe_first_fault,
    "the guest's byte after a to-private conversion of a range that also holds a shared page, `tdx`": (
        _probe_mixed("tdx")
    ),
    "the same, `snp`": _probe_mixed("snp"),
    "the same, `sw_protected`": _probe_mixed("sw_protected"),
    "populate without a source before launch, `tdx`": _probe_populate,
    "`KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES` on `tdx`": lambda abi: str(Vm("tdx", abi).check_extension(250)),
}


def test_section1a_probes_match_the_model() -> None:
    text = SEMANTICS.read_text()
    match = re.search(r"^## 1a\. .*?(?=^## |\Z)", text, re.M | re.S)
    assert match, "docs/semantics.md has no section 1a"
    rows = [row for row in table_rows(match.group(0)) if len(row) == 3]
    assert [row[0] for row in rows] == list(PROBES)
    for what, v8, v13 in rows:
        assert (PROBES[what]("v8"), PROBES[what]("v13")) == (v8, v13), what


def test_section1a_differs_only_in_the_mixed_range_on_tdx() -> None:
    """The table's one row where the revisions part, as §3 *Mixed ranges* says."""
    text = SEMANTICS.read_text()
    match = re.search(r"^## 1a\. .*?(?=^## |\Z)", text, re.M | re.S)
    assert match
    differ = [row[0] for row in table_rows(match.group(0)) if len(row) == 3 and row[1] != row[2]]
    assert differ == [next(iter(k for k in PROBES if k.endswith("`tdx`") and "byte" in k))]
