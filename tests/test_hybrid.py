"""The hybrid engine (mmfuzz/hybrid.py): deterministic per seed, finds a bug, keeps mainline
clean on the same runs; the synthetic rare-interleaving variant is found by exhaust on its
scenario. Counts are pinned, never times."""

import random

from mmfuzz.exhaust import exhaust
from mmfuzz.hybrid import explore_hybrid, random_scenario
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import bug_by_slug
from mmfuzz.run import default_world, execute
from tests.variants import ZeroPageNoRecheckWhileZapping


def test_scenarios_are_deterministic_and_well_formed():
    for i in range(50):
        a = random_scenario(random.Random(f"mmfuzz:1:{i}"))
        b = random_scenario(random.Random(f"mmfuzz:1:{i}"))
        assert a == b
        world, programs = a
        assert sum(1 for p in programs.values() if p) >= 2
        for cpu, prog in programs.items():
            assert all(x[1] == cpu and x[0] in ("start", "access") for x in prog)


def test_hybrid_finds_a_bug_and_mainline_stays_clean():
    bug = bug_by_slug("madv-parallel-flush-miss")
    found, stats = explore_hybrid(bug.kernel, 3, runs_max=2000)
    # seed 3 today: run 961 (302 before the merged model's 20 operations; scenarios ran in
    # between: stats["scenarios"], 240)
    assert found is not None and found.prop == bug.prop and found.runs <= 961
    assert stats["scenarios"] >= 200
    _, out = execute(bug.kernel, found.world, found.actions)
    assert out.violation is not None and out.violation.prop == bug.prop
    clean, st = explore_hybrid(Mainline, 3, runs_max=found.runs)
    assert clean is None and st["runs"] == found.runs


def test_synthetic_rare_interleaving_found_by_exhaust_on_its_scenario():
    """The 3-way window of ZeroPageNoRecheckWhileZapping: a zap on CPU0, a read fault on the
    anonymous page on CPU1, a write fault on it on CPU2. Exhaust at preemption bound 1 finds
    the leak (32 actions, the shortest within the bound); mainline is clean there."""
    world = default_world()
    programs = {0: [["start", 0, "madvise_dontneed", 0, 1]], 1: [["access", 1, 4, 0]],
                2: [["access", 2, 4, 1]]}
    bad = exhaust(ZeroPageNoRecheckWhileZapping, world, programs, preemptions_max=1)
    assert bad.violation is not None and bad.violation.prop == "accounting"
    assert len(bad.schedule) == 37 and not bad.truncated   # 32 before the fault path's new steps
    good = exhaust(Mainline, world, programs, preemptions_max=1)
    assert good.violation is None and not good.truncated


def test_ops_machine_has_a_rule_per_registered_operation_and_finds_a_bug():
    from mmfuzz import ops
    from strategies.machine import OpsMachine, run_ops_hypothesis
    for name in ops.names():
        assert callable(getattr(OpsMachine, name))
    bug = bug_by_slug("clear-refs-softdirty-no-flush")
    failure, cls = run_ops_hypothesis(bug.kernel, 1, 100, polish=False,
                                      hypothesis_shrink=False)
    assert failure is not None and failure["violation"].prop == bug.prop
    assert cls.first_failure_run <= 22          # seed 1 today: example 22 (14 before the merge)
    _, out = execute(bug.kernel, failure["world"], failure["schedule"])
    assert out.violation is not None and out.violation.prop == bug.prop
    clean, mcls = run_ops_hypothesis(Mainline, 1, 60, polish=False, hypothesis_shrink=False)
    assert clean is None and mcls.runs_total >= 60


def test_a_scenario_run_that_makes_the_model_fail_is_a_model_failure_that_replays():
    """Run 111 of seed 1 is a scenario run (every 4th): exhaust's search raises the variant's
    assertion as a ModelFailure (never a find), with a schedule that replays to it strictly."""
    import pytest
    from mmfuzz.hybrid import hybrid_run
    from mmfuzz.run import ModelFailure
    from tests.variants import DoubleRmapRemove
    with pytest.raises(ModelFailure) as mf:
        hybrid_run(DoubleRmapRemove, random.Random("mmfuzz:1:111"), 111)
    with pytest.raises(ModelFailure) as again:
        execute(DoubleRmapRemove, mf.value.world, mf.value.schedule, strict=True)
    assert again.value.type == mf.value.type == "AssertionError"
