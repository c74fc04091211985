"""The Hypothesis engine: its rules reach the model, it finds a broken kernel under a fixed
seed, shrinks it to a replayable schedule, and leaves mainline clean on the same budget."""

import pytest

from mmfuzz.kernel import Mainline
from mmfuzz.run import execute
from strategies import run_hypothesis
from strategies.machine import settings_for

from mmfuzz.kernels import MadvParallelFlushMiss

from .variants import FreeBeforeFlush, LeakRmap


def _hyp(kernel, seed, n):
    failure, cls = run_hypothesis(kernel, seed, n)
    return failure, cls


# Under seed 4 with max_examples=500 the rule machine first fails at example 187 and has run
# 573 examples (its shrinking included) when the shrunk failure is back. Hypothesis's
# generation depends on max_examples, so both are pinned. The counts are the same in a script,
# the CLI and any pytest worker (strategies/determinism.py). History: seed 2 gave 169 / 536,
# then 194 / 1,260 when fork, exit and the GUP operations joined the mix (14 operations to
# draw from); when mremap and fallocate_punch_hole joined and worlds gained a free PTE table
# (npmds + 1), seed 2 first failed at 209 but its shrink took 5,571 examples (230 s) to a
# 15-action schedule, so the pin moved to seed 4 (seeds 0-11 measured without the shrink
# phase; 4 and 10 shrink to one action, 4 in the fewer examples).
HYP_SEED, HYP_EXAMPLES, HYP_FIRST, HYP_NEEDED = 4, 500, 187, 573


@pytest.mark.fuzz
@pytest.mark.cost(30)
def test_hypothesis_finds_free_before_flush():
    failure, cls = _hyp(FreeBeforeFlush, HYP_SEED, HYP_EXAMPLES)
    assert failure is not None, "Hypothesis did not find FreeBeforeFlush"
    assert failure["violation"].prop == "no-use-after-free-via-TLB"
    # the shrunk schedule is plain data and replays without Hypothesis
    _, out = execute(FreeBeforeFlush, failure["world"], failure["schedule"], strict=True)
    assert out.violation is not None and out.violation.prop == "no-use-after-free-via-TLB"
    assert len(failure["schedule"]) <= 12
    assert cls.first_failure_run <= HYP_FIRST, f"search got worse: {cls.first_failure_run}"
    assert cls.runs_total <= HYP_NEEDED, f"shrinking got worse: {cls.runs_total} examples"


@pytest.mark.fuzz
@pytest.mark.cost(12)
def test_hypothesis_leaves_mainline_clean_on_the_budget_that_found_the_bug():
    """Mainline under the same seed for as many examples as the bug needed to show (plus a
    margin); the full 500 would cost 14 s for no more coverage of the pinned search."""
    budget = HYP_FIRST + 13
    clean, cls = _hyp(Mainline, HYP_SEED, budget)
    assert clean is None
    assert cls.first_failure_run is None
    assert cls.runs_total >= budget and cls.steps_total > 0


def test_explicit_settings_ignore_ci_profile(monkeypatch):
    monkeypatch.setenv("CI", "true")
    s = settings_for(10)
    assert s.derandomize is False and s.database is None and s.deadline is None
    assert "explain" not in [p.name for p in s.phases]


@pytest.mark.fuzz
def test_catalogued_nested_flush_miss_trips_stale_translation():
    from mmfuzz.explore import explore
    found, _ = explore(MadvParallelFlushMiss, 1, runs_max=20000)
    assert found is not None and found.prop == "no-stale-translation-after-return"


@pytest.mark.fuzz
def test_leak_rmap_trips_accounting():
    from mmfuzz.explore import explore
    found, _ = explore(LeakRmap, 1, runs_max=2000)
    assert found is not None and found.prop == "accounting"


@pytest.mark.cost(2)
def test_same_seed_same_search_whatever_modules_are_loaded(tmp_path, monkeypatch):
    """Hypothesis draws some integers from constants in the source of loaded local modules;
    a seeded campaign must not change because another module was imported (Principle 3)."""
    import importlib

    from strategies.schedules import run_schedules_hypothesis

    def campaign():
        _, rules = _hyp(Mainline, 2, 30)
        _, sched = run_schedules_hypothesis(Mainline, 2, 30, "uniform")
        return rules.runs_total, rules.steps_total, sched.runs_total, sched.steps_total

    before = campaign()
    probe = tmp_path / "mmfuzz_constants_probe.py"
    probe.write_text("PROBE = (" + ", ".join([str(i) for i in range(2, 4000, 37)]
                                             + [f"0.{i}17" for i in range(1, 99)]) + ")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("mmfuzz_constants_probe")
    assert campaign() == before


@pytest.mark.fuzz
def test_rule_machine_without_hypothesis_shrink_stops_at_the_first_failure():
    """Campaign mode (``mmfuzz fuzz --strategy rules``): no Hypothesis shrink phase, so the
    campaign ends soon after the first failure Hypothesis sees (it replays it once; a failure
    in the teardown of a test case that overran is not one it sees, see below), and the
    schedule shrinker alone still brings it to a short replayable schedule."""
    failure, cls = run_hypothesis(FreeBeforeFlush, HYP_SEED, HYP_EXAMPLES, hypothesis_shrink=False)
    assert failure is not None and failure["violation"].prop == "no-use-after-free-via-TLB"
    assert cls.first_failure_run <= HYP_FIRST
    # Under seed 4 the first failure Hypothesis sees is run 187; the campaign stops there and
    # replays it (188). Before mremap and fallocate_punch_hole joined the mix (seed 2): the
    # machine first failed at run 190, but in the teardown of a test case that had already
    # overrun its choice budget (status OVERRUN), which Hypothesis discards, and the campaign
    # stopped at its next failure, run 561, and replayed it (562); before that, 319 + 25.
    assert cls.runs_total <= 188
    assert len(failure["schedule"]) <= 15
    _, out = execute(FreeBeforeFlush, failure["world"], failure["schedule"], strict=True)
    assert out.violation is not None and out.violation.prop == "no-use-after-free-via-TLB"
