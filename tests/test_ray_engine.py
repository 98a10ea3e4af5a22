"""``--engine ray``: the search shared over Ray actors gives the local engine's results.

Every test runs on one Ray instance on this machine (2 CPUs, the ``ray_address``
fixture), each with its own 2 actors. Compared are the whole JSON results apart from
timing, engine and memory fields: distinct and generated states per level, verdicts and
the least shortest counterexamples step by step.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from contextlib import redirect_stdout
from typing import Any

import pytest
import ray

import test_explore_exact
import test_mutants
from guestmem import progress
from guestmem.checker import analyze
from guestmem.checker.distributed import RayEngine, WorkerFailed
from guestmem.checker.explore import TooManyStates, explore
from guestmem.checker.properties import Property
from guestmem.checker.schedule import Search
from guestmem.cli import main
from guestmem.spec import platforms, revisions
from test_explore_exact import pin_the_next_page_too
from test_mutants import off_by_one_error_offset
from test_progress import COMMAND, _interrupt
from test_schemas import valid

#: Every platform under every revision.
PAIRS = [(p, abi) for abi in revisions.REVISIONS for p in platforms.PLATFORMS]
#: JSON fields that say how a search ran, not what it found.
HOW = {"workers", "seconds", "cpu_seconds", "states_per_cpu_second", "engine", "memory"}


def what(doc: dict[str, Any]) -> dict[str, Any]:
    """An explore document without the fields that say how its searches ran."""
    return {**doc, "results": [{k: v for k, v in r.items() if k not in HOW} for r in doc["results"]]}


def run_json(argv: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main([*argv, "--format", "json"])
    return code, json.loads(out.getvalue())


def test_engines_agree_on_every_platform_and_revision(ray_address: str) -> None:
    with RayEngine(workers=2) as engine:
        assert engine.workers == 2 and not engine.started  # the instance the tests share
        for platform, abi in PAIRS:
            local = explore(platform, abi, pages=2, depth=4, workers=1)
            distributed = engine.explore(Search(platforms.get(platform), abi, 2, 4))
            assert distributed.to_json(timing=False) == local.to_json(timing=False), (platform, abi)
            assert distributed.local_lookups == local.local_lookups
            assert distributed.engine == "ray" and local.engine == "local"
            # the visited set was shared: each actor held part of it, together all of it
            assert len(distributed.shards) == 2 and sum(distributed.shards) == local.distinct
            assert all(0 < held < local.distinct for held in distributed.shards), (platform, abi)
        # analyze's document (every exploration, relabelled ones too) is the same on both
        local_doc = [r.to_json() for r in analyze.analyze(["seed", "v8"], workers=1, depth=3)]
        ray_doc = [r.to_json() for r in analyze.analyze(["seed", "v8"], depth=3, engine=engine)]
        assert ray_doc == local_doc


def mutate() -> None:
    """Run in each actor's process: the model with two deliberate bugs."""
    mp = pytest.MonkeyPatch()
    off_by_one_error_offset(mp)
    pin_the_next_page_too(mp)


def test_engines_agree_on_a_mutant_model(ray_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With bugs planted in the model (in this process and in every actor): the same
    counterexample for the broken property (snp, whose pages are compared by how they
    were made), and the same search again without lookups where the model is not local."""
    for module in (sys.modules[__name__], test_mutants, test_explore_exact):
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        with RayEngine(workers=2, prepare=mutate) as engine:
            off_by_one_error_offset(monkeypatch)
            pin_the_next_page_too(monkeypatch)
            snp = Search(platforms.get("snp"), "seed", 2, 4)
            local = explore("snp", "seed", pages=2, depth=4, workers=1)
            distributed = engine.explore(snp)
            assert Property.REPORTING in local.counterexamples  # the bug is caught ...
            assert distributed.to_json(timing=False) == local.to_json(timing=False)  # ... alike
            assert not distributed.local_lookups and not local.local_lookups  # searched again
            pinned = engine.explore(Search(platforms.get("sw_protected"), "seed", 2, 3, symmetry=False))
            plain = explore("sw_protected", "seed", pages=2, depth=3, workers=1, symmetry=False)
            assert pinned.to_json(timing=False) == plain.to_json(timing=False)
            assert not pinned.local_lookups
    finally:
        for module in (sys.modules[__name__], test_mutants, test_explore_exact):
            ray.cloudpickle.unregister_pickle_by_value(module)
    monkeypatch.undo()  # the catch was the bug's doing
    assert Property.REPORTING not in explore("snp", "seed", pages=2, depth=4).counterexamples


def test_killing_an_actor_mid_run_fails_the_search(ray_address: str) -> None:
    levels: list[int] = []
    with RayEngine(workers=2) as engine:

        def kill_at_level_2(level: int, expanded: int, size: int, generated: int, distinct: int) -> None:
            levels.append(level)
            if level == 2 and expanded == 0:
                ray.kill(engine.actors[1], no_restart=True)

        search = Search(platforms.get("pkvm"), "seed", 2, 5)
        with pytest.raises(WorkerFailed) as failed:
            engine.explore(search, kill_at_level_2)
        message = str(failed.value)
        assert message.startswith("pkvm under seed: depth 2: Ray worker 1 of 2 failed (")
        assert message.endswith("the search did not finish and reports no result")
        assert "\n" not in message
        assert max(levels) == 2  # nothing past the level it died in
        with pytest.raises(WorkerFailed):  # the engine stays failed
            engine.explore(search)


def test_a_dead_worker_is_exit_3_with_one_line(
    ray_address: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = RayEngine._wait

    def dies_first(self: RayEngine, refs: list[Any], *args: Any) -> list[Any]:
        ray.kill(self.actors[0], no_restart=True)
        return original(self, refs, *args)

    monkeypatch.setattr(RayEngine, "_wait", dies_first)
    code = main(["explore", "--platform", "tdx", "--depth", "3", "--engine", "ray", "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 3 and out == ""
    # killing an actor takes effect when Ray gets to it: the first level's task may finish
    # before, and the death shows at the next level
    assert re.match(r"guestmem: explore: tdx under seed: depth [123]: Ray worker 0 of 2 failed \(", err), err
    assert err.count("\n") == 1


def test_max_states_counts_every_worker(ray_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TooManyStates) as local:
        explore("pkvm", "seed", depth=5, max_states=300)
    with RayEngine(workers=2) as engine, pytest.raises(TooManyStates) as distributed:
        engine.explore(Search(platforms.get("pkvm"), "seed", 2, 5, max_states=300))
    # the same depth as the local search: the bound is on every actor's states together
    # (each holds about half, so a bound per actor would stop later, or never)
    assert str(distributed.value) == str(local.value)
    assert str(local.value).startswith("pkvm under seed: more than 300 distinct states by depth ")
    full = explore("pkvm", "seed", depth=5)
    assert local.value.depth == next(d for d in range(6) if sum(full.per_level[: d + 1]) > 300)
    assert main(["explore", "--platform", "pkvm", "--depth", "5", "--max-states", str(full.distinct)]) == 0
    capsys.readouterr()
    for engine_name in ("local", "ray"):
        argv = ["explore", "--platform", "pkvm", "--depth", "5", "--max-states", str(full.distinct - 1)]
        assert main([*argv, "--engine", engine_name]) == 3
        out, err = capsys.readouterr()
        assert out == ""  # nothing of a search that did not finish
        assert err == (
            f"guestmem: explore: pkvm under seed: more than {full.distinct - 1} distinct states by depth 5 "
            f"(--max-states {full.distinct - 1}); the search stopped there and reports no result\n"
        )


def test_json_is_the_local_engines_apart_from_how_it_ran(ray_address: str) -> None:
    argv = ["explore", "--platform", "snp", "--pages", "3", "--depth", "5"]
    local_code, local = run_json([*argv, "--workers", "2"])
    ray_code, distributed = run_json([*argv, "--engine", "ray"])
    assert ray_code == local_code == 0
    valid("explore", distributed)
    assert what(distributed) == what(local)
    [result] = distributed["results"]
    assert result["engine"] == "ray" and result["workers"] == 2
    memory = result["memory"]
    assert len(memory["states_per_shard"]) == 2 and sum(memory["states_per_shard"]) == result["distinct"]
    assert memory["largest_shard"] == max(memory["states_per_shard"])
    assert memory["bytes_per_state"] is None or memory["bytes_per_state"] > 0


def test_engine_ray_without_ray_is_bad_input_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where it is missing
    for argv in (["explore", "--platform", "pkvm"], ["analyze", "--abi", "seed"]):
        assert main([*argv, "--engine", "ray"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert err.startswith("guestmem: --engine ray needs Ray") and "pip install 'guestmem[ray]'" in err


def test_engine_options_are_checked() -> None:
    assert main(["explore", "--address", "auto"]) == 2
    assert main(["explore", "--max-states", "0"]) == 2
    assert main(["analyze", "--address", "auto"]) == 2


def test_ctrl_c_on_a_cluster_ends_with_130_and_one_line(ray_address: str) -> None:
    """Through ``--address``: the command joins the running Ray instance, and Ctrl-C stops
    its search (and its actors) with one line."""
    argv = ["explore", "--platform", "snp", "--pages", "3", "--depth", "12", "--engine", "ray"]
    code, before, after = _interrupt([*COMMAND, *argv, "--address", ray_address], b"depth 7/")
    assert code == progress.INTERRUPTED
    assert "Traceback" not in before + after
    lines = [line for line in after.replace("\r", "\n").splitlines() if line.strip() and line.strip() != "^C"]
    assert len(lines) == 1, after
    assert lines[0].startswith("guestmem: explore interrupted after ")
    # its actors are gone: the instance has both CPUs free again
    assert ray.available_resources().get("CPU") == 2


def test_more_workers_than_free_cpus_is_bad_input(ray_address: str) -> None:
    done = subprocess.run(
        [*COMMAND, "analyze", "--abi", "seed", "--engine", "ray", "--workers", "3", "--address", ray_address],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "guestmem: --workers: 3 Ray workers need 3 free CPUs; the cluster has 2, 2 of them free\n"
    )
