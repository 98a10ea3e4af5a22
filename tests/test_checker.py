"""The checker: property predicates, exhaustive exploration, counterexamples, analysis.

Expected findings follow semantics.md §5: pKVM, TDX, SNP and CCA violate nothing under
``seed``; ``sw_protected`` (which claims only isolation and policy) leaks to the host
through a VMM-initiated P→S PRESERVE; pKVM without its consent rule leaks too; under
``rfc-v5`` and ``v8`` a to-private conversion of a mixed range loses a TDX guest's private
page, which ``v13`` keeps (semantics.md §3 *Mixed ranges*).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import tomllib
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from guestmem.backend.base import Outcome
from guestmem.checker import analyze, counterexample
from guestmem.checker.explore import DEFAULT_DEPTH, DEFAULT_PAGES, Exploration, explore
from guestmem.checker.ops import alphabet
from guestmem.checker.properties import (
    Property,
    Record,
    capture,
    check_trace,
    claimed,
    open_machine,
    record_trace,
    restore,
)
from guestmem.cli import main
from guestmem.model.provenance import ZEROED_PAGE
from guestmem.ops import (
    Convert,
    GuestRead,
    GuestRequest,
    GuestWrite,
    HostRead,
    HostWrite,
    Launch,
    Operation,
    Pin,
)
from guestmem.outfile import Directory
from guestmem.spec import platforms, revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import PAGE_SIZE

DOC = Path(__file__).resolve().parents[1] / "docs" / "analyze.md"
CONFIDENTIAL = ("pkvm", "tdx", "snp", "cca")
A = b"\x11" * PAGE_SIZE
B = b"\x22" * PAGE_SIZE


@functools.cache
def _every_default_exploration() -> dict[tuple[str, str], Exploration]:
    """Every platform and revision's default exploration (2 pages, depth 6), computed once
    per test session: whole searches side by side, one per process, as analyze runs them."""
    from guestmem.checker.schedule import Search, run_searches

    searches = [
        Search(platforms.get(p), abi, DEFAULT_PAGES, DEFAULT_DEPTH)
        for abi in revisions.REVISIONS
        for p in platforms.PLATFORMS
    ]
    return {
        (s.platform.name, s.abi): r for s, r in zip(searches, run_searches(searches, workers=2), strict=True)
    }


def explored(platform: str, abi: str) -> Exploration:
    """The default exploration of ``platform`` under ``abi``."""
    return _every_default_exploration()[(platform, abi)]


def props(trace: list[Record], platform: str, abi: str = "seed") -> set[Property]:
    return {v.prop for v in check_trace(trace, platforms.get(platform), revisions.get(abi))}


# --- properties over traces -------------------------------------------------------------------
def test_confidentiality_fails_for_a_vmm_preserve_and_holds_for_a_guest_share() -> None:
    leak = [
        Launch(),
        GuestWrite(0, A),
        Convert(0, PAGE_SIZE, to=Direction.TO_SHARED, policy=Policy.PRESERVE),
        HostRead(0, 8),
    ]
    assert props(record_trace("sw_protected", "seed", leak, init="private"), "sw_protected") == {
        Property.CONFIDENTIALITY
    }
    asked = [*leak[:2], GuestRequest(0, PAGE_SIZE, Direction.TO_SHARED), *leak[2:]]
    trace = record_trace("sw_protected", "seed", asked, init="private")
    assert trace[-1].outcome.data == A[:8]  # the bytes do reach the host: disclosed
    assert props(trace, "sw_protected") == set()


def test_integrity_distinguishes_payload_accepted_and_injected_bytes() -> None:
    pkvm = platforms.get("pkvm")
    no_consent = dataclasses.replace(pkvm, consent=False)
    inject = [
        Launch(),
        HostWrite(0, B),
        Convert(0, PAGE_SIZE, to=Direction.TO_PRIVATE, policy=Policy.PRESERVE),
        GuestRead(0, 8),
    ]
    trace = record_trace(no_consent, "seed", inject)
    assert check_trace(trace, no_consent, revisions.get("seed"))[0].prop is Property.INTEGRITY
    # with pKVM's rule the same conversion is refused, and the guest reads what it wrote before
    assert record_trace("pkvm", "seed", inject)[2].outcome.errno == "EPERM"
    asked = [*inject[:2], GuestRequest(0, PAGE_SIZE, Direction.TO_PRIVATE), *inject[2:]]
    assert props(record_trace("pkvm", "seed", asked), "pkvm") == set()
    # pre-launch payload on TDX is measured and allowed
    payload = [inject[1], inject[2], Launch(), inject[3]]
    trace = record_trace("tdx", "seed", payload)
    assert trace[-1].outcome.data == B[:8] and props(trace, "tdx") == set()


def _synthetic(
    op: Operation, outcome: Outcome, before_ops: list[Operation], mutate: object = None
) -> list[Record]:
    """One record whose ``after`` state is edited by ``mutate(machine)``, to show that a
    predicate fails when the model misbehaves in that way."""
    machine = open_machine("tdx", "seed", 2, "shared")
    for prior in before_ops:
        prior.apply(machine)
    before = capture(machine)
    if callable(mutate):
        mutate(machine)
    return [Record(op, outcome, before, capture(machine))]


def test_isolation_atomicity_reporting_and_policy_predicates_can_fail() -> None:
    tdx, seed = platforms.get("tdx"), revisions.get("seed")
    to_private = Convert(0, PAGE_SIZE, to=Direction.TO_PRIVATE, policy=Policy.ZERO)
    # a host read that succeeds on a private page
    trace = _synthetic(HostRead(0, 8), Outcome(data=bytes(8), origins=[(0, 8, "zeroed")]), [to_private])
    assert [v.prop for v in check_trace(trace, tdx, seed)] == [Property.ISOLATION]
    # a failed conversion that changed the attributes
    trace = _synthetic(
        to_private,
        Outcome(errno="EAGAIN", error_offset=0),
        [Pin(0, PAGE_SIZE)],
        lambda m: m.gmem.attributes.set(1, 2, 8),
    )
    assert {v.prop for v in check_trace(trace, tdx, seed)} == {Property.ATOMICITY}
    # the right errno with the wrong error_offset (the pinned page is page 1)
    whole = Convert(0, 2 * PAGE_SIZE, to=Direction.TO_PRIVATE, policy=Policy.ZERO)
    trace = _synthetic(whole, Outcome(errno="EAGAIN", error_offset=0), [Pin(PAGE_SIZE, PAGE_SIZE)])
    [violation] = check_trace(trace, tdx, seed)
    assert (violation.prop, violation.expect, violation.error_offset) == (
        Property.REPORTING,
        "EAGAIN",
        PAGE_SIZE,
    )
    # a ZERO conversion that left the host's bytes in place
    trace = _synthetic(to_private, Outcome(), [HostWrite(0, A)], lambda m: m.gmem.attributes.set(0, 1, 8))
    [violation] = check_trace(trace, tdx, seed)
    assert violation.prop is Property.POLICY and violation.expect == "zeros"
    # the same conversion done right
    trace = _synthetic(
        to_private,
        Outcome(),
        [HostWrite(0, A)],
        lambda m: (m.gmem.attributes.set(0, 1, 8), m.gmem.pages.update({0: ZEROED_PAGE})),
    )
    assert check_trace(trace, tdx, seed) == []


def test_claims_follow_semantics_section_5() -> None:
    for name in platforms.PLATFORMS:
        for prop in Property:
            confidential_prop = prop in (Property.CONFIDENTIALITY, Property.INTEGRITY)
            assert claimed(prop, name) == (not confidential_prop or name in CONFIDENTIAL)


# --- the explorer's machinery ----------------------------------------------------------------
def test_restore_apply_snapshot_matches_a_fresh_replay() -> None:
    """Every state reached by restoring a snapshot and applying an operation equals the
    state a fresh machine reaches by replaying the whole sequence."""
    ops = alphabet(2, "seed")
    path = [ops.index(Launch()), 1, ops.index(GuestRequest(0, PAGE_SIZE, Direction.TO_SHARED))]
    machine = open_machine("pkvm", "seed", 2, "private")
    for index in path:
        ops[index].apply(machine)
    state = capture(machine)
    for op in ops:
        restore(machine, state)
        outcome = op.apply(machine)
        fresh = record_trace("pkvm", "seed", [ops[i] for i in path] + [op], init="private")
        assert capture(machine) == fresh[-1].after, op
        assert outcome == fresh[-1].outcome, op


def test_depth_one_states_are_the_distinct_results_of_one_operation() -> None:
    result = explore("snp", "seed", depth=1, workers=1, symmetry=False)
    reached = set()
    for init in ("shared", "private"):
        reached.add(record_trace("snp", "seed", [HostRead(0, 8)], init=init)[0].before)
        for op in alphabet(2, "seed"):
            reached.add(record_trace("snp", "seed", [op], init=init)[0].after)
    assert result.distinct == len(reached)
    assert result.generated == 2 * len(alphabet(2, "seed"))
    # states equal up to a permutation of the two pages count once
    assert explore("snp", "seed", depth=1, workers=1).distinct < len(reached)


@pytest.mark.parametrize(("platform", "abi"), [("sw_protected", "seed"), ("sw_protected", "rfc-v5")])
def test_workers_give_identical_results(platform: str, abi: str) -> None:
    """Also where pages made by keyed effects are named in the workers and merged."""
    one = explore(platform, abi, depth=4, workers=1)
    two = explore(platform, abi, depth=4, workers=2)
    assert (one.generated, one.distinct, one.per_level) == (two.generated, two.distinct, two.per_level)
    assert {p: c.ops for p, c in one.counterexamples.items()} == {
        p: c.ops for p, c in two.counterexamples.items()
    }


def test_counterexamples_are_shortest() -> None:
    """The confidentiality leak needs a guest write, a conversion and a host read: no
    shorter sequence can show guest bytes to the host, and depth 2 finds nothing."""
    assert Property.CONFIDENTIALITY not in explore("sw_protected", "seed", depth=2, workers=1).counterexamples
    assert (
        explore("sw_protected", "seed", depth=3, workers=1).counterexamples[Property.CONFIDENTIALITY].length
        == 3
    )


# --- expected findings (default bounds) ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("platform", CONFIDENTIAL)
def test_no_violation_on_confidential_platforms_under_seed(platform: str) -> None:
    result = explored(platform, "seed")
    assert (result.pages, result.depth) == (DEFAULT_PAGES, DEFAULT_DEPTH)
    assert result.distinct > 1000  # the search did go somewhere
    assert result.counterexamples == {}


@pytest.mark.slow
def test_sw_protected_shows_a_confidentiality_counterexample_by_vmm_preserve() -> None:
    result = explored("sw_protected", "seed")
    cx = result.counterexamples[Property.CONFIDENTIALITY]
    assert not cx.claimed
    names = [op.name for op in cx.ops]
    conversion = cx.ops[names.index("convert")]
    assert isinstance(conversion, Convert)
    assert (conversion.to, conversion.policy) == (Direction.TO_SHARED, Policy.PRESERVE)
    assert "guest_request" not in names  # the VMM converted on its own
    assert names[-1] == "host_read" and cx.expects[-1].startswith("not:")
    # isolation and policy, which sw_protected claims, hold
    assert not result.violated(claimed_only=True)


@pytest.mark.slow
def test_pkvm_consent_rule_is_load_bearing() -> None:
    ablated = dataclasses.replace(platforms.get("pkvm"), consent=False)
    result = explore(ablated, "seed", workers=2, variant="consent=False")
    cx = result.counterexamples[Property.CONFIDENTIALITY]
    assert cx.claimed
    names = [op.name for op in cx.ops]
    # the VM runs when the VMM converts: launched explicitly or by the guest's first run
    # (pKVM has no finalize step, docs/semantics.md §3 *Launch*), and the guest never asked
    assert "launch" in names or names[0] in ("guest_write", "guest_read")
    assert "guest_request" not in names
    assert Property.INTEGRITY in result.counterexamples


@pytest.mark.slow
@pytest.mark.parametrize("abi", ["iteration2", "rfc-v5", "v8", "v13"])
def test_other_revisions_keep_the_claims(abi: str) -> None:
    """Every claim holds on the confidential platforms, except TDX's integrity under the
    revisions that unmap a mixed range's private pages (the next test)."""
    for platform in CONFIDENTIAL:
        found = set(explored(platform, abi).counterexamples)
        loses = platform == "tdx" and abi in ("rfc-v5", "v8")
        assert found == ({Property.INTEGRITY} if loses else set()), platform


@pytest.mark.slow
@pytest.mark.parametrize("abi", ["rfc-v5", "v8"])
def test_mixed_range_to_private_loses_the_guests_page_on_tdx(abi: str, tmp_path: Path) -> None:
    """semantics.md §3 *Mixed ranges*: the shortest counterexample runs a guest, gives it a
    private page beside a shared one, converts both to private in one call and reads the
    private page back: gone. Replayed as a scenario it fails exactly at that read; under
    v13 the same steps pass."""
    found = explored("tdx", abi)
    cx = found.counterexamples[Property.INTEGRITY]
    assert cx.claimed and cx.length == 5
    assert "launch" in [op.name for op in cx.ops]
    [ranged] = [op for op in cx.ops if op.name == "convert" and len(op.pages) == 2]
    assert isinstance(ranged, Convert) and ranged.to is Direction.TO_PRIVATE
    assert cx.ops.index(ranged) == cx.detected - 1
    assert cx.ops[cx.detected].name == "guest_read" and "gone" in cx.message
    path = Path(counterexample.write(found, cx, Directory(tmp_path)))
    assert _replay(path) == [cx.fails_at + 1]
    trace = record_trace("tdx", "v13", cx.ops, init=cx.init)
    assert "lost" not in {label for *_, label in trace[-1].outcome.origins or ()}
    assert check_trace(trace, platforms.get("tdx"), revisions.get("v13")) == []


@pytest.mark.slow
def test_v8_leaks_on_sw_protected_without_any_policy() -> None:
    """v8 leaves contents alone (semantics.md §1): a plain flags = 0 P→S conversion shows
    the guest's private bytes to the host; under seed flags = 0 means ZERO and the leak
    needs an explicit PRESERVE."""
    v8 = explored("sw_protected", "v8").counterexamples[Property.CONFIDENTIALITY]
    [conversion] = [op for op in v8.ops if isinstance(op, Convert)]
    assert (conversion.to, conversion.policy) == (Direction.TO_SHARED, Policy.DEFAULT)
    seed = explored("sw_protected", "seed").counterexamples[Property.CONFIDENTIALITY]
    assert [op.policy for op in seed.ops if isinstance(op, Convert)] == [Policy.PRESERVE]


@pytest.mark.slow
def test_v8_refuses_every_arm64_conversion() -> None:
    """v8: only VM types with private memory accept the ioctl (semantics.md §1), so no
    pKVM or CCA state ever becomes shared from private or the reverse."""
    for platform in ("pkvm", "cca"):
        ops = alphabet(2, "v8")
        trace = record_trace(platform, "v8", [op for op in ops if op.name == "convert"])
        assert {r.outcome.errno for r in trace} == {"EINVAL"}


# --- counterexample files --------------------------------------------------------------------
def _replay(path: Path) -> list[int]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["run", str(path), "--format", "json"])
    report = json.loads(out.getvalue())
    [run] = report["runs"]
    failing = [s["index"] for s in run["steps"] if s["passed"] is False]
    assert code == (1 if failing else 0)
    return failing


def _scenario_runner_available() -> bool:
    try:
        import guestmem.cli.run  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(
    not _scenario_runner_available(), reason="the scenario runner (guestmem run) is not available"
)
def test_counterexamples_replay_and_fail_exactly_where_explore_said(tmp_path: Path) -> None:
    written = 0
    for abi in ("seed", "v8"):
        result = explore("sw_protected", abi, depth=4, workers=1)
        for cx in result.counterexamples.values():
            path = Path(counterexample.write(result, cx, Directory(tmp_path)))
            tomllib.loads(path.read_text())
            assert _replay(path) == [cx.fails_at + 1]
            written += 1
    assert written == 4


@pytest.mark.skipif(
    not _scenario_runner_available(), reason="the scenario runner (guestmem run) is not available"
)
def test_witnessed_counterexamples_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomicity and policy counterexamples end with a witness step, which is where the
    replay on a mutated model fails (and the real model passes the whole file)."""
    from guestmem.model.gmem import GuestMemfd
    from guestmem.model.provenance import ZEROED_PAGE as zeroed

    original = GuestMemfd._fail

    def dropping_fail(self: GuestMemfd, view: memoryview, code: int, error_offset: int) -> None:
        index = error_offset // 4096  # the page it reports, inside its range
        if index in self.pages:
            self.pages[index] = zeroed
        original(self, view, code, error_offset)

    monkeypatch.setattr(GuestMemfd, "_fail", dropping_fail)
    result = explore("snp", "seed", depth=3, workers=1)
    cx = result.counterexamples[Property.ATOMICITY]
    assert cx.witness and cx.fails_at == cx.detected + 1
    path = Path(counterexample.write(result, cx, Directory(tmp_path)))
    assert _replay(path) == [cx.fails_at + 1]
    monkeypatch.undo()
    assert _replay(path) == []


# --- command line -----------------------------------------------------------------------------
def test_explore_cli_json_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "explore",
            "--platform",
            "sw_protected",
            "--depth",
            "3",
            "--workers",
            "1",
            "--format",
            "json",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0  # sw_protected does not claim confidentiality
    report = json.loads(capsys.readouterr().out)
    [entry] = report["results"]
    assert (
        entry["platform"] == "sw_protected" and entry["generated"] > 0 and entry["states_per_cpu_second"] > 0
    )
    violations = {v["property"]: v for v in entry["violations"]}
    assert set(violations) == {"confidentiality", "integrity"}  # the two sw_protected does not claim
    for violation in violations.values():
        assert not violation["claimed"] and Path(violation["file"]).exists()


def test_explore_cli_fails_when_a_claimed_property_breaks(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explore", "--platform", "pkvm", "--ablate", "consent", "--depth", "4", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1
    assert "pkvm (consent=False): confidentiality (claimed)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--platform", "sgx"], "--platform: unknown platform 'sgx'"),
        (["--abi", "v9"], "--abi: unknown revision 'v9'"),
        (["--pages", "0"], "--pages: 0 is out of range"),
        (["--pages", "9"], "--pages: 9 is out of range (1 to 8)"),
        (["--depth", "-1"], "--depth: -1 is out of range (0 to 1000)"),
        (["--depth", "1000000000"], "--depth: 1000000000 is out of range (0 to 1000)"),
        (["--workers", "0"], "--workers: 0 is out of range (1 to 64)"),
        (["--workers", "100000"], "--workers: 100000 is out of range (1 to 64)"),
    ],
)
def test_explore_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explore", *argv]) == 2
    assert message in capsys.readouterr().err


def test_analyze_cli_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--abi", "v9"]) == 2
    assert "--abi: unknown revision 'v9'" in capsys.readouterr().err


def test_flags_zero_cells_follow_semantics_section_1() -> None:
    """flags = 0 means ZERO under seed: S→P on SNP and pKVM is refused (§2 S→P ZERO); v8
    accepts it only on VM types with private memory; iteration2 refuses S→P ZERO on TDX."""
    assert analyze.convert_once("snp", "seed", *analyze.CELLS[3], 0) == "EOPNOTSUPP"
    assert analyze.convert_once("pkvm", "seed", *analyze.CELLS[2], 0) == "EOPNOTSUPP"
    assert analyze.convert_once("tdx", "seed", *analyze.CELLS[2], 0) == "ok"
    assert analyze.convert_once("tdx", "iteration2", *analyze.CELLS[2], 0) == "EOPNOTSUPP"
    assert analyze.convert_once("snp", "v8", *analyze.CELLS[3], 0) == "ok"
    assert analyze.convert_once("cca", "v8", *analyze.CELLS[0], 0) == "EINVAL"


@pytest.mark.slow
def test_docs_analyze_md_is_the_current_output(monkeypatch: pytest.MonkeyPatch) -> None:
    from guestmem.checker.schedule import Search

    def searches(
        found: list[Search], workers: int, done: object = None, engine: object = None
    ) -> list[Exploration]:
        return [explored(s.platform.name, s.abi) for s in found]

    monkeypatch.setattr(analyze, "run_searches", searches)
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["analyze", "--abi", "all", "--format", "markdown"])
    assert code == 1  # rfc-v5 and v8 break TDX's integrity in a mixed range, a claimed property
    assert DOC.read_text() == out.getvalue(), (
        "regenerate: guestmem analyze --abi all --format markdown > docs/analyze.md"
    )
