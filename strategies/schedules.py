"""Scheduling strategies as Hypothesis strategies.

``pct_schedules()`` draws a PCT schedule (Burckhardt et al., ASPLOS 2010) as plain data: a
world, a short program per CPU (syscalls and user accesses), a priority order of the CPUs,
and change points as integers. ``execute_pct()`` runs it deterministically: the highest-
priority CPU that can act does so; at each change point the CPU that acted last drops below
all others. A CPU takes a pending flush IPI when it runs, unless ``ipi_late`` lets its own
work go first (an IPI arriving late). Hypothesis shrinks the parameters (fewer change points,
shorter programs, a simpler world), not a raw action list, and the run it reports is an
ordinary schedule of actions that replays without Hypothesis.

``run_pct_hypothesis()`` is the search loop used by the benchmark to compare this strategy
with the rule-based machine (uniform choice among enabled rules) by examples-to-bug.
"""

from __future__ import annotations

from hypothesis import given, seed, settings
from hypothesis import strategies as st

from mmfuzz.run import Run

from .machine import SYSCALLS, settings_for, worlds

STEPS_MAX = 80


def _program_action(world: dict, cpu: int):
    mm_id = world["cpu_mm"][cpu]
    spans = tuple((v["start"], v["end"]) for v in world["vmas"] if v["mm"] == mm_id)
    mine = tuple(i for i, v in enumerate(world["vmas"]) if v["mm"] == mm_id)
    npages = world["files"][0]["npages"]

    @st.composite
    def one(draw):
        lo, hi = draw(st.sampled_from(spans))
        kind = draw(st.sampled_from(("access",) + SYSCALLS))
        if kind == "access":
            return ["access", cpu, draw(st.integers(lo, hi - 1)), draw(st.sampled_from((1, 0)))]
        if kind in ("madvise_dontneed", "munmap"):
            start = draw(st.integers(lo, hi - 1))
            return ["start", cpu, kind, start, draw(st.integers(1, hi - start))]
        if kind == "mmap":
            return ["start", cpu, kind, draw(st.sampled_from(mine))]
        if kind == "writeback":
            return ["start", cpu, kind, 1]
        return ["start", cpu, kind, 1, draw(st.integers(0, npages - 1))]

    return one()


@st.composite
def pct_schedules(draw, world_strategy=None):
    world = draw(world_strategy if world_strategy is not None else worlds())
    ncpus = world["ncpus"]
    programs = [draw(st.lists(_program_action(world, c), max_size=3)) for c in range(ncpus)]
    order = draw(st.permutations(range(ncpus)))
    change_points = sorted(draw(st.lists(st.integers(0, STEPS_MAX - 1), max_size=3)))
    ipi_late = draw(st.booleans())
    return {"world": world, "programs": programs, "order": list(order),
            "change_points": change_points, "ipi_late": ipi_late}


def execute_pct(kernel_cls, params: dict):
    """Run one PCT schedule: returns (run, violation or None), quiescence included."""
    world = params["world"]
    run = Run(kernel_cls, world)
    m = run.m
    ncpus = world["ncpus"]
    prio = {cpu: ncpus + rank for rank, cpu in enumerate(params["order"])}
    programs = [list(p) for p in params["programs"]]
    tries = [0] * ncpus
    change_points = list(params["change_points"])
    low = 0
    last = None
    for tick in range(STEPS_MAX):
        while change_points and tick >= change_points[0]:
            change_points.pop(0)
            if last is not None:
                low -= 1
                prio[last] = low
        runnable = run.runnable_cpus()
        acted = False
        for cpu in sorted(prio, key=lambda c: -prio[c]):
            c = m.cpus[cpu]
            ipi = bool(c.ipi_queue) and not c.irqs_off
            if ipi and not params["ipi_late"]:
                action = ["ipi", cpu]
            elif cpu in runnable:
                action = ["step", cpu]
            elif c.task is None and programs[cpu]:
                action = programs[cpu][0]
            elif ipi:
                action = ["ipi", cpu]
            else:
                continue
            step = run.apply(action)
            if step is None:
                continue  # a step that found its task blocked: try the next CPU
            if action[0] in ("start", "access"):
                # a faulting access is retried once its fault returns (the CPU re-executes
                # the instruction), at most twice
                if action[0] == "access" and c.task is not None and tries[cpu] < 2:
                    tries[cpu] += 1
                else:
                    programs[cpu].pop(0)
                    tries[cpu] = 0
            last = cpu
            acted = True
            break
        if run.violation is not None or not acted:
            break
    if run.violation is not None:
        return run, run.violation
    return run, run.quiesce()


def run_pct_hypothesis(kernel_cls, seed_value: int, max_examples: int):
    """Search with pct_schedules(); returns (the failing Run or None, examples run)."""
    box = {"runs": 0, "failure": None}

    @seed(seed_value)
    @settings(settings_for(max_examples))
    @given(pct_schedules())
    def search(params):
        box["runs"] += 1
        run, v = execute_pct(kernel_cls, params)
        if v is not None:
            step = run.violation_step
            box["failure"] = {"world": params["world"], "violation": v, "step": step,
                              "schedule": run.actions[: step + 1] if step is not None
                              else run.actions[: run.schedule_len]}
            raise AssertionError(v.why)

    try:
        search()
    except AssertionError:
        return box["failure"], box["runs"]
    return None, box["runs"]
