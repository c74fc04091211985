"""The hybrid engine: random scenarios, systematic interleavings (``--strategy hybrid``).

Random search draws good scenarios often; it is the interleaving inside them it keeps
missing. So run ``i`` of a seed is one of two kinds, decided by its own seeded generator
(``random.Random(f"mmfuzz:{seed}:{i}")``, as in fast mode, so run i is the same wherever it
runs):

- a *scenario* run (every ``SCENARIO_EVERY``-th run): a world from ``random_world`` and, per
  CPU, a short program of syscalls and user accesses drawn as the explorer draws them
  (``explore._random_program_action``: arguments inside the CPU's own VMAs); then every
  interleaving of that scenario is searched by the stateful breadth-first exhaust
  (mmfuzz/exhaust.py) under a small per-scenario state budget (``STATES_MAX``) and
  preemption bound (``PREEMPTIONS``), so one run covers thousands of schedules and the first
  violation it reports is the shortest in the part it covered;
- a *swarm* run otherwise: exactly the fast explorer's swarm run.

The cost of a scenario run is many swarm runs: ``steps`` counts every model action applied,
the search's replays included, so runs and steps together compare the engines without a
clock. Deterministic per seed.

Measured (seeds 1..10, runs to bug, 2026-12-01): a scenario run found the bug first only twice
(clear-refs seed 3: 4 runs against swarm's 7; madv seed 9: 608 against 642); every other hybrid
find is one of its swarm runs (the same run as fast mode's run i), and where swarm's finding run
is a scenario slot the hybrid falls behind (madv seed 1: 1,058 runs against 240; the synthetic
tests.variants.ZeroPageNoRecheckWhileZapping seed 1: 5,510 against 1,208). A scenario of 300
states rarely reaches the depth (about 30 actions) these races need. Not a default; the bench
reports it beside swarm.
"""

from __future__ import annotations

import random

from .exhaust import exhaust
from .explore import (Found, RunOutcome, _random_program_action, explore_runs, random_run,
                      random_world, swarm_ops)
from .kernels import known_open_race
from .kernel import Mainline
from .run import Run

#: one run in SCENARIO_EVERY is a systematically searched scenario, the others swarm runs
SCENARIO_EVERY = 4
#: distinct states searched per scenario, and the preemption bound (None: no bound). A
#: scenario of this size costs about 20 to 40 swarm runs of model steps.
STATES_MAX = 300
PREEMPTIONS = 1


def random_scenario(rng: random.Random) -> tuple[dict, dict[int, list]]:
    """A world and per-CPU programs: two or more CPUs get one or two actions each (a syscall
    from a random subset of the operations, or a load or store in one of the CPU's VMAs)."""
    world = random_world(rng)
    ncpus = world["ncpus"]
    probe = Run(Mainline, world, check=False)   # the drawer reads each CPU's process
    ops = swarm_ops(rng)   # the operations' declared shares, as a swarm run draws them
    store_bias = rng.choice((0.5, 0.8))
    # CPUs with a process run programs (a CPU without one, cpu_mm 0, waits for a fork)
    procs = [c for c in range(ncpus) if world["cpu_mm"][c] != 0]
    active = sorted(rng.sample(procs, rng.randint(min(2, len(procs)), len(procs))))
    programs: dict[int, list] = {cpu: [] for cpu in range(ncpus)}
    for cpu in active:
        for _ in range(rng.choice((1, 1, 2))):
            kind_ops = None if rng.random() < 0.4 else ops
            action = _random_program_action(rng, probe, world, cpu, kind_ops, store_bias)
            if action is not None:   # a CPU without a process starts only kernel threads
                programs[cpu].append(action)
    return world, programs


def hybrid_run(kernel_cls, rng: random.Random, index: int, states_max: int = STATES_MAX,
               preemptions_max: int | None = PREEMPTIONS, every: int = SCENARIO_EVERY):
    """Run ``index`` of the hybrid engine, as a RunOutcome (kind "scenarios" for a searched
    scenario; a swarm run is exactly fast mode's). A scenario's violation that is a known-open race of
    mainline is set aside as a swarm run's is (mmfuzz.kernels.KNOWN_OPEN)."""
    if every and index % every == every - 1:
        world, programs = random_scenario(rng)
        res = exhaust(kernel_cls, world, programs, preemptions_max=preemptions_max,
                      states_max=states_max)
        steps = res.transitions + res.replayed
        if res.violation is not None:
            known = known_open_race(kernel_cls, world, res.schedule, res.violation)
            if known is None:
                return RunOutcome(world, steps, res.schedule, res.violation.prop,
                                  kind="scenarios")
            return RunOutcome(world, steps, known_open=known, kind="scenarios")
        return RunOutcome(world, steps, kind="scenarios")
    world, run, v = random_run(kernel_cls, rng)
    return RunOutcome(world, len(run.trace),
                      run.schedule_upto(run.violation_step) if v is not None else None,
                      v.prop if v is not None else None, getattr(run, "known_open", None))


def explore_hybrid_strided(kernel_cls, seed: int, budget_s: float | None,
                           runs_max: int | None, start: int = 0, stride: int = 1,
                           progress=None, **kw) -> tuple[Found | None, dict]:
    """explore_strided's contract for the hybrid engine (the same loop, explore_runs, with
    hybrid_run as the run): runs start, start + stride, ... until a violation, the time
    budget or the run budget; a ModelFailure leaves as it does there."""
    return explore_runs(lambda rng, i: hybrid_run(kernel_cls, rng, i, **kw), seed, budget_s,
                        runs_max, start, stride, progress, counters=("scenarios",))


def explore_hybrid(kernel_cls, seed: int, budget_s: float | None = None,
                   runs_max: int | None = None, progress=None, **kw):
    return explore_hybrid_strided(kernel_cls, seed, budget_s, runs_max, 0, 1, progress, **kw)
