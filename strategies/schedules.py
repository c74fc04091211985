"""Scheduling strategies as Hypothesis strategies.

``schedules(policy)`` draws one run as data Hypothesis owns: a world from ``worlds()`` and a
``HypothesisRandom`` (``st.randoms(use_true_random=False)``) from which the explorer's policy
(mmfuzz/explore.py) makes every choice:

- ``swarm``: which operations are switched off this run, the weight of each kind of action,
  and the BUGGIFY-style knobs (a lock holder runs less, as if it held the lock longer; IPIs
  arrive late; TLB entries are evicted), then each scheduling choice under those weights;
- ``pct``: a priority order of the CPUs and d - 1 change points drawn as integers (Burckhardt
  et al., ASPLOS 2010), plus a short program per CPU;
- ``uniform``: uniform choice among every concrete enabled action (the baseline).

Every draw of that random is a choice in Hypothesis's choice sequence, so Hypothesis shrinks
the swarm configuration, the priorities and change points and each decision, and replays a
run exactly; the policy code is the same one fast mode runs with a seeded random.Random, so
the two engines explore the same space. The failing run is reported as an ordinary schedule of
actions that replays without Hypothesis.

``run_schedules_hypothesis()`` is the search loop (one chunk of examples) used by
``mmfuzz fuzz`` and by the benchmark.
"""

from __future__ import annotations

from hypothesis import given, seed, settings
from hypothesis import strategies as st

from mmfuzz.explore import POLICIES, run_policy

from .determinism import no_source_constants
from .machine import polish_failure, settings_for, worlds
from .profiles import database_key

STRATEGIES = tuple(POLICIES)   # swarm, uniform, pct
ACTIONS_MAX = 60
# Examples per Hypothesis campaign in a long run (``mmfuzz fuzz`` and the benchmark): each chunk
# is a fresh seed, so memory stays flat however long the run (about 47 MB at 200, 148 MB at
# 2,000 on the zap kernel).
CHUNK_EXAMPLES = 200


def schedules(policy: str = "swarm", world_strategy=None):
    """A (world, random) pair for ``execute_schedule``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown scheduling strategy {policy!r}; one of {', '.join(POLICIES)}")
    return st.tuples(world_strategy if world_strategy is not None else worlds(),
                     st.randoms(use_true_random=False))


def execute_schedule(kernel_cls, world: dict, rng, policy: str = "swarm",
                     actions_max: int = ACTIONS_MAX):
    """One run: returns (run, violation or None), quiescence included."""
    return run_policy(kernel_cls, world, POLICIES[policy](rng, world), rng, actions_max)


class _Stats:
    def __init__(self):
        self.runs_total = 0
        self.steps_total = 0


def run_schedules_hypothesis(kernel_cls, seed_value: int, max_examples: int,
                             policy: str = "swarm", on_progress=None,
                             hypothesis_shrink: bool = False, polish: bool = True,
                             profile: str | None = None):
    """One Hypothesis campaign over ``schedules(policy)``. Returns (failure or None, stats with
    runs_total and steps_total). The failure is the run Hypothesis shrank to: its world and the
    schedule of actions up to the violation (or the whole schedule, for a violation found at
    quiescence), polished by the schedule shrinker unless ``polish`` is off. With
    ``hypothesis_shrink`` off (the default) Hypothesis only generates and the schedule
    shrinker does all the shrinking: the random's choices are
    consumed in order, so a change to one early choice re-rolls every later one and
    Hypothesis's shrinker spends seconds where explore.shrink, which deletes actions from
    the concrete schedule, needs a fraction of one. ``profile`` names a settings profile
    (strategies/profiles.py); without one the settings are settings_for's explicit ones."""
    stats = _Stats()
    box: dict = {}

    # settings outside seed: @seed drops the database of the settings under it (a seeded test
    # normally reproduces, it does not search), and a profiled campaign's database is real
    @settings(settings_for(max_examples, shrink=hypothesis_shrink, profile=profile,
                           database_key=database_key(kernel_cls, policy)))
    @seed(seed_value)
    @given(schedules(policy))
    def search(case):
        world, rng = case
        stats.runs_total += 1
        run, v = execute_schedule(kernel_cls, world, rng, policy)
        stats.steps_total += len(run.trace)
        if on_progress is not None and stats.runs_total % 16 == 0:
            on_progress(stats)
        if v is not None:
            step = run.violation_step
            box["failure"] = {
                "world": world, "violation": v, "step": step,
                "phase": "step" if step is not None else "quiescence",
                "schedule": [list(a) for a in run.actions[: step + 1 if step is not None
                                                          else run.schedule_len]]}
            raise AssertionError(v.why)

    try:
        with no_source_constants():
            search()
    except AssertionError:
        failure = box["failure"]
        return (polish_failure(kernel_cls, failure) if polish else failure), stats
    return None, stats
