"""The hybrid engine: random scenarios, systematic interleavings (``--strategy hybrid``).

Random search draws good scenarios often; it is the interleaving inside them it keeps
missing. So every run ``i`` of a seed, with its own seeded generator
(``random.Random(f"mmfuzz:{seed}:{i}")``, as in fast mode, so run i is the same wherever it
runs), is first exactly the fast explorer's swarm run ``i`` (``SWARM_TOO``), and every
``SCENARIO_EVERY``-th run then also searches a *scenario*:

- its source (``SCENARIO_SOURCE``): "run", the operations that swarm run had in flight
  together (``scenario_from_run``: an anchor among its syscalls, and per CPU the starts and
  accesses issued within ``NEAR`` actions of it, at most ``PROGRAM_MAX`` each), or "draw", a
  fresh ``random_scenario`` (a world from ``random_world`` and, per CPU, one or two syscalls
  of the run's swarm_ops or user accesses);
- then every interleaving of that scenario is searched by the stateful breadth-first
  exhaust (mmfuzz/exhaust.py) under a per-scenario state budget (``STATES_MAX``) and
  preemption bound (``PREEMPTIONS``): one preemption at any point, then another CPU running
  as long as it can, the schedules a random scheduler rarely makes. The first violation it
  reports is the shortest in the part it covered.

So the hybrid never needs more runs than swarm for what swarm finds (its swarm runs are
swarm's); what the scenarios add is counted in ``stats["scenarios"]``. The cost of a scenario
is many swarm runs: ``steps`` counts every model action applied, the search's replays
included, so runs and steps together compare the engines without a clock. Deterministic per
seed. Measured (runs to the race, 2026-12-01): on tests.variants.VmaLockRecheckMapped, whose
race needs a whole mprotect inside a fault's one-step window, 4,512 (seed 1) and 2,258 (seed
2) runs against swarm's 46,220 and 32,657, in about as many model steps; on the catalogued
bugs (fresh random scenarios every fourth run, seeds 1-5) the same runs as swarm on every bug
and seed measured but madv-parallel-flush-miss seed 3 (696 against 792), at about twice the
steps then and about ten times with SCENARIO_EVERY 1: not a default. The state budget is what
limits it: most scenarios with the race's operations end truncated at 300 states.
"""

from __future__ import annotations

import random

from .exhaust import exhaust
from .explore import (Found, RunOutcome, _random_program_action, explore_runs, random_run,
                      random_world, swarm_ops)
from .kernels import known_open_race
from . import ops as _ops
from .kernel import Mainline
from .run import Run

#: every SCENARIO_EVERY-th run searches a scenario after its swarm run (1: every run does)
SCENARIO_EVERY = 1
#: distinct states searched per scenario, and the preemption bound (None: no bound). A
#: scenario of this size costs about 20 to 40 swarm runs of model steps.
STATES_MAX = 300
PREEMPTIONS = 1
#: a scenario slot runs the swarm run of its index first (so the hybrid never needs more
#: runs than swarm for what swarm finds) and then searches its scenario
SWARM_TOO = True
#: where a scenario slot's scenario comes from: "run", the operations its swarm run had in
#: flight together (random_scenario when that run had fewer than two CPUs' worth), or
#: "draw", a fresh random_scenario
SCENARIO_SOURCE = "run"
#: scenario_from_run: program actions within this many actions of the anchor, at most
#: PROGRAM_MAX per CPU
NEAR = 12
PROGRAM_MAX = 2


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


def scenario_from_run(run: Run, rng: random.Random, near: int = NEAR,
                      program_max: int = PROGRAM_MAX) -> tuple[dict, dict[int, list]] | None:
    """The operations a swarm run had in flight together, as a scenario in that run's world:
    an anchor drawn among the run's syscall starts, and per CPU the program actions (starts
    and accesses) issued within ``near`` actions of it, at most ``program_max`` per CPU,
    nearest first, in their order. A CPU with no process in the world (a fork's child)
    keeps only kernel-thread starts. None when fewer than two CPUs have a program: the swarm
    run drew the scenario, the search covers the interleavings it did not try."""
    world = run.world
    acts = run.actions[: run.quiesce_from] if run.quiesce_from is not None else run.actions
    prog = [(i, a) for i, a in enumerate(acts) if a[0] in ("start", "access")
            and (world["cpu_mm"][a[1]] != 0
                 or (a[0] == "start" and _ops.get(a[2]).context == "kthread"))]
    starts = [k for k, (_, a) in enumerate(prog) if a[0] == "start"]
    if not starts:
        return None
    ai = prog[rng.choice(starts)][0]
    programs: dict[int, list] = {cpu: [] for cpu in range(world["ncpus"])}
    for cpu in range(world["ncpus"]):
        mine = sorted((abs(i - ai), i) for i, a in prog if a[1] == cpu and abs(i - ai) <= near)
        programs[cpu] = [list(acts[i]) for _, i in sorted(mine[:program_max], key=lambda x: x[1])]
    if sum(1 for p in programs.values() if p) < 2:
        return None
    return world, programs


def hybrid_run(kernel_cls, rng: random.Random, index: int, states_max: int = STATES_MAX,
               preemptions_max: int | None = PREEMPTIONS, every: int = SCENARIO_EVERY,
               swarm_too: bool = SWARM_TOO, actions_max: int = 60):
    """Run ``index`` of the hybrid engine, as a RunOutcome (kind "scenarios" when a scenario
    was searched). With ``swarm_too`` every run is first fast mode's swarm run ``index``
    (``actions_max`` actions), and a scenario slot then searches a scenario drawn from the
    same generator after it; without, a scenario slot replaces the swarm run. A scenario's
    violation that is a known-open race of mainline is set aside as a swarm run's is
    (mmfuzz.kernels.KNOWN_OPEN)."""
    scenario = bool(every) and index % every == every - 1
    steps = 0
    if swarm_too or not scenario:
        world, run, v = random_run(kernel_cls, rng, actions_max)
        out = RunOutcome(world, len(run.trace),
                         run.schedule_upto(run.violation_step) if v is not None else None,
                         v.prop if v is not None else None, getattr(run, "known_open", None))
        if not scenario or out.actions is not None:
            return out
        steps = out.steps
    drawn = scenario_from_run(run, rng) if swarm_too and SCENARIO_SOURCE == "run" else None
    world, programs = drawn if drawn is not None else random_scenario(rng)
    res = exhaust(kernel_cls, world, programs, preemptions_max=preemptions_max,
                  states_max=states_max)
    steps += res.transitions + res.replayed
    if res.violation is not None:
        known = known_open_race(kernel_cls, world, res.schedule, res.violation)
        if known is None:
            return RunOutcome(world, steps, res.schedule, res.violation.prop, kind="scenarios")
        return RunOutcome(world, steps, known_open=known, kind="scenarios")
    return RunOutcome(world, steps, kind="scenarios")


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
