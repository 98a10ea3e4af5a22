"""``guestmem bench``: every figure is produced, with the right keys and types.

No timing is asserted here (performance is measured by the command itself, docs/bench.md);
what is checked is that the figures exist, are internally consistent (ratio = model /
baseline, ``met`` against the target, exit status), that the kernel-side baselines ran
on the kernel objects they name when this machine has them, and that a figure is skipped
only where this machine lacks what it needs, with the reason.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guestmem.bench.figure import Figure
from guestmem.bench.timing import Side, interleaved, time_batch
from guestmem.kvm import facts as kernel_facts
from guestmem.kvm.system import DEVICE
from kvm_support import missing

SRC = Path(__file__).resolve().parents[1] / "src"
#: The figures docs/bench.md lists: name → (kind, target, at least).
EXPECTED: dict[str, tuple[str, float, bool]] = {
    "convert_1tib_vs_4k": ("ratio", 3, False),
    "zero_vs_punch_hole": ("ratio", 1.5, False),
    "fill_vs_memset": ("ratio", 1.5, False),
    "host_access_vs_mmap": ("ratio", 3, False),
    "kvm_run_vs_c": ("ratio", 1.5, False),
    "explore_states_per_cpu_s": ("value", 100_000, True),
    "analyze_all_cpu_s": ("value", 40, False),
    "explore_3_pages_cpu_s": ("value", 60, False),
    "explore_ray_efficiency": ("value", 0.7, True),
    "rss_1tib_mib": ("value", 150, False),
}


#: The quick run's exit status and its JSON figures.
QuickRun = tuple[int, dict[str, dict[str, Any]]]


def guestmem(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "guestmem", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_run() -> QuickRun:
    proc = guestmem("bench", "--quick", "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "guestmem.bench/1"
    figures = doc["figures"]
    assert isinstance(figures, dict)
    return proc.returncode, figures


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_run_produces_every_figure(quick_run: QuickRun) -> None:
    _, figures = quick_run
    assert list(figures) == list(EXPECTED)
    for name, (kind, target, at_least) in EXPECTED.items():
        figure = figures[name]
        assert figure["target"] == target, name
        assert figure["target_is"] == ("floor" if at_least else "ceiling"), name
        assert isinstance(figure["unit"], str) and figure["unit"], name
        assert isinstance(figure["met"], bool) or (figure["met"] is None and "skipped" in figure), name
        assert isinstance(figure["note"], str), name
        if "skipped" in figure:
            assert isinstance(figure["skipped"], str) and figure["skipped"], name
            assert figure["met"] is None, name  # neither met nor missed
            continue
        if kind == "ratio":
            assert set(figure) == {"model", "baseline", "ratio", "unit", "target", "target_is", "met", "note"}
            assert _number(figure["model"]) and figure["model"] > 0, name
            assert _number(figure["baseline"]) and figure["baseline"] > 0, name
            assert figure["ratio"] == pytest.approx(figure["model"] / figure["baseline"], rel=1e-3), name
            measured = figure["ratio"]
        else:
            assert set(figure) >= {"value", "unit", "target", "target_is", "met", "note"}, name
            assert _number(figure["value"]) and figure["value"] > 0, name
            measured = figure["value"]
        assert figure["met"] == (measured >= target if at_least else measured <= target), name


def test_exit_status_says_whether_every_target_was_met(
    quick_run: QuickRun,
) -> None:
    """0 unless a measured figure misses its target: a skipped one counts neither way."""
    returncode, figures = quick_run
    assert returncode == (1 if any(f["met"] is False for f in figures.values()) else 0)


def test_every_figure_is_measurable_on_this_machine(quick_run: QuickRun) -> None:
    """Only the kernel figures may be skipped, each only where this machine lacks what it
    needs: a guest_memfd for the hole punch, a usable /dev/kvm and cc for the KVM_RUN loop."""
    _, figures = quick_run
    skipped = {name: f["skipped"] for name, f in figures.items() if "skipped" in f}
    allowed = set()
    if missing("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared"):
        allowed.add("zero_vs_punch_hole")
    if missing("kvm") or not shutil.which("cc"):
        allowed.add("kvm_run_vs_c")
    assert set(skipped) == allowed, skipped


def test_checker_figures_count_states_and_compare_verdicts(quick_run: QuickRun) -> None:
    _, figures = quick_run
    rate = figures["explore_states_per_cpu_s"]
    assert rate["generated"] > rate["distinct"] > 0 and rate["distinct_per_cpu_s"] > 0
    assert rate["value"] == pytest.approx(rate["generated"] / rate["cpu_seconds"], rel=0.01)
    assert rate["cpu_seconds"] >= 3  # long enough that start-up does not dominate
    assert {"platforms", "pages", "depth", "sweeps"} <= set(rate) and rate["sweeps"] >= 1
    three = figures["explore_3_pages_cpu_s"]
    assert three["value"] == max(three["per_platform"].values())
    assert three["verdicts_differ"] == []  # 3 pages find what 2 pages find at the quick depth


def test_ray_efficiency_compares_the_same_search_on_both_engines(quick_run: QuickRun) -> None:
    _, figures = quick_run
    ray = figures["explore_ray_efficiency"]
    assert ray["same_result"] is True and ray["workers"] == 2 and ray["pages"] == 3
    assert ray["generated"] > ray["distinct"] > 0
    # both engines generate the same states: the ratio of rates is the ratio of CPU times
    assert ray["value"] == pytest.approx(ray["local_cpu_seconds"] / ray["ray_cpu_seconds"], rel=0.02)
    assert ray["ray_start_cpu_seconds"] > 0  # Ray's processes were counted


def test_punch_hole_baseline_names_the_kernel_object(quick_run: QuickRun) -> None:
    """A real guest_memfd, or skipped with the probe's reason why there is none."""
    _, figures = quick_run
    figure = figures["zero_vs_punch_hole"]
    why = missing("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared")
    if why is None:
        assert "punch of a guest_memfd" in figure["note"]
    else:
        reason = kernel_facts.cached(DEVICE).missing
        assert figure["skipped"].startswith("needs a guest_memfd: ")
        assert figure["skipped"].removeprefix("needs a guest_memfd: ") in reason.values()


def test_kvm_run_pair_runs_both_sides_on_the_same_memory(quick_run: QuickRun) -> None:
    """On guest_memfd where the kernel makes one, else on ordinary memory: the loop needs
    only KVM_RUN (C and Python are handed the same kind)."""
    if missing("kvm") or not shutil.which("cc"):
        pytest.skip(missing("kvm") or "no C compiler (cc) on PATH")
    _, figures = quick_run
    memory = (
        "anonymous"
        if missing("guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared")
        else "guest_memfd"
    )
    assert f"memslot on {memory}" in figures["kvm_run_vs_c"]["note"]


def test_text_format_lists_the_figure_and_its_target() -> None:
    proc = guestmem("bench", "--quick", "--only", "convert_1tib_vs_4k")
    assert proc.returncode in (0, 1), proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("guestmem bench on ")
    row = next(line for line in lines if line.startswith("convert_1tib_vs_4k"))
    assert "≤ 3" in row
    assert ("yes" in row.split()) == (proc.returncode == 0)
    assert not any(line.startswith("fill_vs_memset") for line in lines)


def test_unknown_figure_is_bad_input() -> None:
    proc = guestmem("bench", "--quick", "--only", "attr_2tib")
    assert proc.returncode == 2
    assert "unknown figure 'attr_2tib'" in proc.stderr
    assert proc.stdout == ""


def test_rss_child_reports_its_peak_and_the_runs_it_left() -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-m", "guestmem.bench.rss", "200", "7"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    result = json.loads(proc.stdout)
    assert result["peak_kib"] > 1024  # an interpreter is more than 1 MiB resident
    # 200 conversions of random ranges leave between 2 and 401 runs (each adds at most 2)
    assert 2 <= result["runs"] <= 401
    # and 200 pages written: some may since have been zeroed (still allocated) or rewritten
    assert 1 <= result["pages"] <= 200


def test_repetitions_alternate_which_side_goes_first() -> None:
    calls: list[str] = []
    model = Side(lambda: calls.append("m"), reset=lambda: calls.append("m-reset"))
    baseline = Side(lambda: calls.append("b"))
    model_times, baseline_times = interleaved(model, baseline, 3)
    assert calls == ["m-reset", "m", "b", "b", "m-reset", "m", "m-reset", "m", "b"]
    assert len(model_times) == len(baseline_times) == 3


def test_a_self_timed_side_reports_its_own_seconds() -> None:
    assert time_batch(Side(lambda: 0.25, ops=1000)) == 0.25


def test_interleaved_needs_a_repetition() -> None:
    with pytest.raises(ValueError, match="reps must be >= 1"):
        interleaved(Side(lambda: None), Side(lambda: None), 0)


def test_figures_meet_their_targets_in_the_right_direction() -> None:
    assert Figure("convert_1tib_vs_4k", model=2.0, baseline=1.0).met
    assert not Figure("convert_1tib_vs_4k", model=4.0, baseline=1.0).met
    assert Figure("explore_states_per_cpu_s", value=100_000).met
    assert not Figure("explore_states_per_cpu_s", value=99_999).met
    assert Figure("analyze_all_cpu_s", value=40).met and not Figure("analyze_all_cpu_s", value=41).met
    assert not Figure("rss_1tib_mib", value=151).met
    assert Figure("kvm_run_vs_c", skipped="no /dev/kvm").met is None
    assert Figure("kvm_run_vs_c").met is False  # nothing measured and no reason: missed
    assert Figure("kvm_run_vs_c", skipped="no /dev/kvm").to_json()["skipped"] == "no /dev/kvm"
