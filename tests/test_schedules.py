"""The scheduling strategies: the explorer's policies and the Hypothesis PCT strategy."""

import random

import pytest

from mmfuzz.explore import POLICIES, explore, random_world
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import resolve_kernel
from mmfuzz.run import Run, execute
from strategies.schedules import execute_pct


def test_policies_are_deterministic_per_seed():
    for name in POLICIES:
        a, sa = explore(Mainline, 5, runs_max=40, policy=name)
        b, sb = explore(Mainline, 5, runs_max=40, policy=name)
        assert a is None and b is None
        assert sa["steps"] == sb["steps"] and sa["steps"] > 0


@pytest.mark.fuzz
@pytest.mark.parametrize("policy,seed,needed", [("pct", 2, 200), ("uniform", 3, 4000)])
def test_other_policies_find_the_nested_flush_miss(policy, seed, needed):
    bug = resolve_kernel("bug:madv-parallel-flush-miss")
    found, _ = explore(bug, seed, runs_max=needed, policy=policy)
    assert found is not None and found.prop == "no-stale-translation-after-return"
    clean, _ = explore(Mainline, seed, runs_max=found.runs, policy=policy)
    assert clean is None


def test_pct_schedule_runs_the_race_by_priorities():
    """A hand-written PCT schedule: CPU2 zaps first, then CPU0 (the second zapper, which holds
    the stale entry) runs to completion; with the fix reverted it returns with the entry."""
    world = {"ncpus": 3, "cpu_mm": [1, 1, 1], "ptrs_per_pte": 2, "npmds": 3, "nframes": 64,
             "files": [{"id": 1, "npages": 2}],
             "vmas": [{"mm": 1, "start": 0, "end": 2, "file": 1, "pgoff": 0, "shared": True,
                       "writable": True},
                      {"mm": 1, "start": 2, "end": 4, "file": None, "shared": False,
                       "writable": True}],
             "gather": {"local_max": 8, "batch_max": 510, "batch_count_max": 19},
             "prefault": [[0, 2, 1]]}
    params = {"world": world,
              "programs": [[["start", 0, "madvise_dontneed", 2, 1]], [],
                           [["start", 2, "madvise_dontneed", 2, 1]]],
              "order": [0, 1, 2],           # CPU2 highest, then CPU1, CPU0 lowest
              "change_points": [6],         # after CPU2 unlocked the PTL, it drops lowest
              "ipi_late": True}
    bug = resolve_kernel("bug:madv-parallel-flush-miss")
    run, v = execute_pct(bug, params)
    assert v is not None and v.prop == "no-stale-translation-after-return", [s.text for s in run.trace]
    _, out = execute(bug, world, run.actions[: run.violation_step + 1], strict=True)
    assert out.violation.prop == v.prop
    run_main, v_main = execute_pct(Mainline, params)
    assert v_main is None


def test_random_worlds_are_valid():
    from mmfuzz.run import validate_world
    for i in range(200):
        w = random_world(random.Random(i))
        validate_world(w)
        Run(Mainline, w)
