"""How a C selftest's run and the port's are each turned into verdicts per case and paired
(tests/selftest_pairs.py; the pairs themselves come from the test kernels, tests/test_vm.py)."""

from __future__ import annotations

from guestmem.scenario import suite
from selftest_pairs import (
    BINARY_CASES,
    CONVERSION_CASES,
    GUEST_MEMFD_TEST,
    Pair,
    Verdict,
    all_cases,
    combine,
    exit_verdict,
    junit_verdict,
    pairs,
    parse_tap,
)

V8_OUTPUT = """Random seed: 0x6b8b4567
TAP version 13
1..3
# Starting 3 tests from 1 test cases.
#  RUN           gmem_conversions.init_private ...
#            OK  gmem_conversions.init_private
ok 1 gmem_conversions.init_private
#  RUN           gmem_conversions.init_shared ...
# guest_memfd_conversions_test.c:120:init_shared:Expected 0x41 (65) == val (84)
# init_shared: Test terminated by assertion
#          FAIL  gmem_conversions.init_shared
not ok 2 gmem_conversions.init_shared
#  RUN           gmem_conversions.truncate ...
ok 3 gmem_conversions.truncate # SKIP THP is not configured
# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0
"""


def test_tap_verdicts_per_case() -> None:
    found = parse_tap(V8_OUTPUT)
    assert found["init_private"] == Verdict("pass")
    assert found["init_shared"].verdict == "fail"
    assert "Expected 0x41 (65) == val (84)" in found["init_shared"].why
    assert found["truncate"] == Verdict("skip", "THP is not configured")


def test_exit_status_verdicts() -> None:
    assert exit_verdict(0, "Random seed: 1\n") == Verdict("pass")
    assert exit_verdict(4, "...\nTHP is not configured in host kernel\n") == Verdict(
        "skip", "THP is not configured in host kernel"
    )
    failed = exit_verdict(254, "==== Test Assertion Failure ====\n  boom\n")
    assert failed.verdict == "fail" and "exit 254: boom" in failed.why
    # guest_memfd_test asserts THP before its THP cases: a kernel without THP skips it
    no_thp = "==== Test Assertion Failure ====\n  guest_memfd_test.c:390: thp_configured()\n"
    no_thp += "  THP is not configured in host kernel\n"
    assert exit_verdict(254, no_thp) == Verdict(
        "skip", "no transparent huge pages (THP is not configured in host kernel)"
    )


def test_a_case_is_its_parts_combined() -> None:
    assert combine([Verdict("pass"), Verdict("pass")]) == Verdict("pass")
    assert combine([Verdict("pass"), Verdict("skip", "x")]) == Verdict("skip", "x")
    assert combine([Verdict("skip", "x"), Verdict("fail", "y")]) == Verdict("fail", "y")


def test_pairs_name_a_disagreement() -> None:
    c = {case: Verdict("pass") for case in all_cases()}
    port = dict(c)
    port["guest_memfd_conversions_test.truncate"] = Verdict("fail", "step 3 (host_read): got SIGBUS")
    found = pairs(c, port)
    assert [p.case for p in found] == all_cases()
    bad = [p for p in found if not p.agree]
    assert [p.case for p in bad] == ["guest_memfd_conversions_test.truncate"]
    assert bad[0].line() == (
        "guest_memfd_conversions_test.truncate: C pass; port fail (step 3 (host_read): got SIGBUS): DIFFERENT"
    )


def test_a_missing_verdict_is_a_failure() -> None:
    found = pairs({}, {case: Verdict("pass") for case in all_cases()})
    assert all(p.c == Verdict("fail", "no verdict") and not p.agree for p in found)


def test_every_conversion_case_has_its_port() -> None:
    assert len(CONVERSION_CASES) == 9
    assert all(names for names in CONVERSION_CASES.values())
    assert all_cases()[-1] == GUEST_MEMFD_TEST
    assert Pair("x", Verdict("skip", "no THP"), Verdict("skip", "no THP")).agree
    # every run a case is made of is a run of the suite (parametrised files included)
    runs = {scenario.name for scenario in suite()}
    named = [n for names in [*CONVERSION_CASES.values(), *BINARY_CASES.values()] for n in names]
    assert [n for n in named if n not in runs] == []


def test_junit_verdict_of_the_port() -> None:
    xml = """<testsuites><testsuite>
    <testcase name="test_file_size[kernel-0]"/>
    <testcase name="test_collapse[kernel]"><skipped message="no transparent huge pages here"/></testcase>
    </testsuite></testsuites>"""
    assert junit_verdict(xml) == Verdict("skip", "test_collapse[kernel]: no transparent huge pages here")
    failed = xml.replace(
        '<testcase name="test_file_size[kernel-0]"/>',
        ('<testcase name="test_file_size[kernel-0]"><failure message="assert 1 == 2"/></testcase>'),
    )
    assert junit_verdict(failed).verdict == "fail"
    assert junit_verdict("<testsuites/>") == Verdict("fail", "no test of the port ran")


def test_a_disagreement_runs_again_until_the_sides_agree() -> None:
    """RFC v5's scramble makes a single checked byte right 1 time in 256: a conversion case
    whose sides disagree runs again (both sides), up to RERUNS times; other cases do not."""
    import selftest_pairs

    case = f"{selftest_pairs.CONVERSIONS}.forked_accesses"
    chance = Pair(case, Verdict("pass"), Verdict("fail", "step 10"))
    verdicts = iter([Verdict("fail", "again"), Verdict("fail", "again")])
    fails = Verdict("fail", "x")

    def failing(_name: str) -> Verdict:
        return fails

    [again] = selftest_pairs.rerun([chance], c=lambda _n: next(verdicts), port=failing)
    assert again.agree and again.reruns == 1 and "(after 1 rerun)" in again.line()
    stuck = selftest_pairs.rerun([chance], c=lambda _n: Verdict("pass"), port=failing)
    assert not stuck[0].agree and stuck[0].reruns == selftest_pairs.RERUNS
    binary = Pair("private_mem_kvm_exits_test", Verdict("pass"), Verdict("fail", "x"))

    def never(_name: str) -> Verdict:
        raise AssertionError("a whole binary does not run again")

    assert selftest_pairs.rerun([binary], c=never, port=never) == [binary]
