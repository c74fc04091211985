"""The hybrid engine: random scenarios, systematic interleavings (``--strategy hybrid``).

Random search draws good scenarios often; it is the interleaving inside them it keeps
missing. So every run ``i`` of a seed, with its own seeded generator
(``random.Random(f"mmfuzz:{seed}:{i}")``, as in fast mode, so run i is the same wherever it
runs), is first exactly the fast explorer's swarm run ``i`` (``SWARM_TOO``), and every
``SCENARIO_EVERY``-th run then may also search a *scenario*:

- its source (``SCENARIO_SOURCE``): "run", the operations that swarm run had in flight
  together (``scenario_from_run``: an anchor among its syscalls, and per CPU the starts and
  accesses issued within ``NEAR`` actions of it, at most ``PROGRAM_MAX`` each), or "draw", a
  fresh ``random_scenario`` (a world from ``random_world`` and, per CPU, one or two syscalls
  of the run's swarm_ops or user accesses);
- with ``OVERLAP_ONLY``, only two of its operations, of two CPUs, that may touch one page
  (``overlapping_pair``: footprints read from the arguments the operation registry declares,
  a VmaRange's pages, a FilePage, a FileId's file, an access's page; a file page is the same
  through any VMA), and nothing when there is no such pair (about 6 runs in 10): the
  interleavings of operations that share no page cannot matter, and a pair is a short
  scenario whose one-preemption schedules are few;
- then its interleavings with one preemption are searched (``SEARCH``): "points", the
  stateless ``point_search``, every CPU's schedule without preemption and then, in an order
  drawn from the run's generator, the schedules that preempt one of those at one point and
  let another CPU run as long as it can (the schedules a random scheduler rarely makes: a
  whole operation inside another's window), until the tries have applied ``SEARCH_SHARE``
  times the swarm run's actions; or "bfs", the stateful breadth-first exhaust
  (mmfuzz/exhaust.py) under ``STATES_MAX`` states and ``PREEMPTIONS``.

So the hybrid never needs more runs than 60-action swarm for what that finds (its swarm runs
are those, explore(..., actions_max=60)); swarm's default draws 120 or 240 actions, whose runs
differ (hybrid runs at those lengths, with the VMA footprints and before lock-free points first,
were measured worse: none of seeds 1-3 of the synthetic race within 15,000). What the
scenarios add is counted in ``stats["scenarios"]``. ``steps`` counts every model action
applied, the search's included (each try is a run of its own, quiescence included, as a swarm
run's steps are), so runs and steps together compare the engines without a clock. The point
search's steps are its whole cost; exhaust's "bfs" also pays a canonical snapshot key per
state, which ``steps`` does not count (measured under load: an exhaust step with its share of
keying about 10x a swarm step's time), the reason it was 10-40x slower than swarm in seconds
while close in steps. Deterministic per seed. Measured
(bench/RESULTS-hybrid.md, "Lock-free points first"): on tests.variants.VmaLockRecheckMapped,
whose race needs a whole mprotect upgrade inside a fault's one-step window after an earlier
downgrade, seeds 1-6 take 517 / 989 / 1,087 / 16,018 / 6,413 / 3,230 hybrid runs against
swarm's 36,200 / 15,104 / 112,992 / 63,438 / 33,512 / 134,333 (its default 120/240-action
runs), and fewer model steps on every seed; on the catalogued bugs the same or fewer runs than
swarm and, where the search does not find the bug first, more steps than swarm.
"""

from __future__ import annotations

import random

from .exhaust import exhaust
from .explore import (FIXED_RUN_LENGTH, Found, RunOutcome, _random_program_action, explore_runs,
                      random_run, random_world, swarm_ops)
from .kernels import known_open_race
from . import ops as _ops
from .kernel import Mainline
from .run import Run

#: every SCENARIO_EVERY-th run searches a scenario after its swarm run (1: every run does)
SCENARIO_EVERY = 1
#: how a scenario's interleavings are searched: "points", the stateless preemption-point
#: search (``point_search``: each try one preemption, its cost exactly the actions it
#: applies), or "bfs", the stateful breadth-first exhaust under STATES_MAX (each state also
#: pays a snapshot key that ``steps`` does not count: measured, an exhaust step with its share
#: of the keys takes about 6x a swarm step's time, a point-search step about 1x)
SEARCH = "points"
#: "points": a scenario's search stops once its tries have applied this many actions, as a
#: multiple of the actions its swarm run applied (so a searching run costs about
#: 1 + SEARCH_SHARE swarm runs of model steps: the schedules without preemption always run,
#: and the last try may overshoot), so long runs buy long searches
SEARCH_SHARE = 2.0
#: search only two operations of the scenario, of two CPUs, that may touch one page
#: (``overlapping_pair``), and no scenario without such a pair (the swarm run covers it)
OVERLAP_ONLY = True
#: "bfs": distinct states searched per scenario, and the preemption bound (None: no bound). A
#: scenario of this size costs about 5 swarm runs of counted steps, about 30 in time.
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
#: point_search tries first the preemptions of a CPU that holds no exclusive lock there
#: (Task.locks 0: between a lockless read and the lock it leads to, or between two critical
#: sections), the windows another operation can run through; a CPU preempted inside a
#: critical section mostly makes the other spin on its lock. The drawn order is kept within
#: each group.
LOCK_FREE_POINTS_FIRST = True
#: a pair drawn from a swarm run is searched from the state that run had reached just before
#: the earlier of the two was issued (its actions before it replayed, operations still in
#: flight there go on), not from the world's initial state: what the run did earlier (an
#: mprotect that made a VMA read-only, a fork, a prefault) is the scenario's precondition
FROM_RUN_STATE = True


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
                      program_max: int = PROGRAM_MAX,
                      positions: dict | None = None) -> tuple[dict, dict[int, list]] | None:
    """The operations a swarm run had in flight together, as a scenario in that run's world:
    an anchor drawn among the run's syscall starts, and per CPU the program actions (starts
    and accesses) issued within ``near`` actions of it, at most ``program_max`` per CPU,
    nearest first, in their order. A CPU with no process in the world (a fork's child)
    keeps only kernel-thread starts. None when fewer than two CPUs have a program: the swarm
    run drew the scenario, the search covers the interleavings it did not try. ``positions``,
    if given, gets per CPU the indices in the run's actions of its program's actions."""
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
        chosen = sorted(i for _, i in mine[:program_max])
        programs[cpu] = [list(acts[i]) for i in chosen]
        if positions is not None:
            positions[cpu] = chosen
    if sum(1 for p in programs.values() if p) < 2:
        return None
    return world, programs


def _pages_of(world: dict, mm_id: int, lo: int, hi: int) -> set:
    """The pages virtual pages lo..hi-1 of world mm ``mm_id`` name: a file page as
    ("file", id, index) whichever VMA maps it (so two processes sharing it, or two VMAs of one
    file, meet there), an anonymous page as ("anon", mm, va)."""
    out = set()
    for va in range(lo, hi):
        vma = next((v for v in world["vmas"] if v["mm"] == mm_id and v["start"] <= va < v["end"]),
                   None)
        if vma is not None and vma["file"] is not None:
            out.add(("file", vma["file"], vma["pgoff"] + va - vma["start"]))
        else:
            out.add(("anon", mm_id, va))
    return out


def _vma_hull(world: dict, mm_id: int, lo: int, hi: int) -> tuple[int, int]:
    """[lo, hi) widened to the world VMAs of ``mm_id`` it overlaps. An operation that changes
    VMAs (munmap, mprotect, mremap) splits the VMAs its range lies in (mm/vma.c __split_vma): a
    fault anywhere in them reads the VMA it changed, so it may touch every page of those VMAs,
    not only its range's."""
    for v in world["vmas"]:
        if v["mm"] == mm_id and v["start"] < hi and lo < v["end"]:
            lo, hi = min(lo, v["start"]), max(hi, v["end"])
    return lo, hi


def footprint(world: dict, action: list) -> set | None:
    """The pages a program action may touch, read from its arguments as the operation
    registry declares them (mmfuzz.ops): an access its page; VmaRange and VmaPage their pages,
    MremapRange its source VMAs' and destination's pages, FilePage its file page, FileRange
    its file pages, FileId every page of the file. None (any page) for an operation
    with no page argument (clear_refs, reclaim, ksmd, fork, exit, mmap, the pins) and for a
    CPU whose process is not the world's (a forked child's)."""
    cpu = action[1]
    mm_id = world["cpu_mm"][cpu]
    if action[0] == "access":
        return _pages_of(world, mm_id, action[2], action[2] + 1) if mm_id else None
    op = _ops.get(action[2])
    out: set = set()
    values = list(action[3:])
    for arg in op.args:
        vals, values = values[: len(arg.names)], values[len(arg.names):]
        if isinstance(arg, (_ops.VmaRange, _ops.VmaPage)):
            if not mm_id:
                return None
            lo, hi = vals[0], vals[0] + (vals[1] if len(vals) > 1 else 1)
            if "vma" in op.writes:
                lo, hi = _vma_hull(world, mm_id, lo, hi)
            out |= _pages_of(world, mm_id, lo, hi)
        elif isinstance(arg, _ops.MremapRange):
            if not mm_id:
                return None
            # the source range's VMAs (the move splits them) and the destination's pages
            out |= _pages_of(world, mm_id, *_vma_hull(world, mm_id, vals[0], vals[0] + vals[1]))
            out |= _pages_of(world, mm_id, vals[2], vals[2] + vals[1])
        elif isinstance(arg, _ops.FileRange):
            out |= {("file", vals[0], i) for i in range(vals[1], vals[1] + vals[2])}
        elif isinstance(arg, _ops.FilePage):
            out.add(("file", vals[0], vals[1]))
        elif isinstance(arg, _ops.FileId):
            npages = next(f["npages"] for f in world["files"] if f["id"] == vals[0])
            out |= {("file", vals[0], i) for i in range(npages)}
    return out or None


def overlapping_pair(world: dict, programs: dict[int, list], rng: random.Random,
                     chosen: list | None = None):
    """Two operations of two CPUs' programs that may touch one page (their footprints, both
    known, intersect), drawn with ``rng`` among all such pairs, as a scenario of one action per
    CPU (None: no such pair). An operation with no page argument meets no other here: a
    scenario of it is left to the swarm runs. ``chosen``, if given, gets the pair's (cpu,
    index in that CPU's program) twice."""
    cpus = [c for c in sorted(programs) if programs[c]]
    fps = {c: [footprint(world, a) for a in programs[c]] for c in cpus}
    pairs = [(c, i, d, j) for k, c in enumerate(cpus) for d in cpus[k + 1:]
             for i, x in enumerate(fps[c]) for j, y in enumerate(fps[d])
             if x is not None and y is not None and x & y]
    if not pairs:
        return None
    c, i, d, j = rng.choice(pairs)
    if chosen is not None:
        chosen += [(c, i), (d, j)]
    out: dict[int, list] = {cpu: [] for cpu in range(world["ncpus"])}
    out[c], out[d] = [list(programs[c][i])], [list(programs[d][j])]
    return out


def _next_action(run: Run, progs: dict, pcs: dict, cpu: int):
    """What ``cpu`` does next if scheduled: a step of its runnable task, else its next program
    action if it is idle and the run takes it; None if it cannot act."""
    if run.m.cpus[cpu].task is not None:
        step = ["step", cpu]
        return step if run.enabled(step) else None
    prog = progs.get(cpu, ())
    if pcs[cpu] < len(prog) and run.enabled(prog[pcs[cpu]]):
        return prog[pcs[cpu]]
    return None


def preemption_try(kernel_cls, world: dict, progs: dict, first: int, point: int | None = None,
                   target: int | None = None, alternatives: list | None = None,
                   prefix: tuple = (), held: list | None = None):
    """One schedule of a scenario with at most one preemption, run to its end (quiescence
    included, as a swarm run). CPU ``first`` starts; the current CPU keeps acting while it can
    (its task's steps, then its next program action); when it cannot (blocked, or its program
    is done) the next CPU after it in ascending order that can act takes over, as a switch
    that costs no preemption. A pending IPI is taken at once by a CPU with IRQs on (the
    interrupt arrives at the next instruction). If ``point`` is given, after ``point``
    scheduled actions the schedule switches to ``target``. ``alternatives``, if given, gets
    per scheduled action the other CPUs that could have acted there instead: the tries that
    preempt this schedule; ``held``, if given, gets per scheduled action whether the CPU
    acting there holds an exclusive lock (Task.locks). A blocked lock attempt is a recorded
    step (Run._step_task), as in exhaust. ``prefix``: actions applied first, exactly (a swarm
    run's, up to where its scenario starts); the schedule's choices and ``point`` count from
    there. Returns (run, violation or None)."""
    run = Run(kernel_cls, world)
    for a in prefix:
        run.apply(a)
    ncpus = world["ncpus"]
    pcs = {c: 0 for c in range(ncpus)}
    cur = first
    n = 0
    while run.violation is None:
        ipis = run.ipi_cpus()
        if ipis:
            run.apply(["ipi", ipis[0]])
            continue
        if n == point:
            cur = target
        a = _next_action(run, progs, pcs, cur)
        k = 1
        while a is None and k < ncpus:
            a = _next_action(run, progs, pcs, (cur + k) % ncpus)
            if a is not None:
                cur = (cur + k) % ncpus
            k += 1
        if a is None:
            break   # every program consumed (or a deadlock, which quiesce reports)
        if alternatives is not None:
            alternatives.append([c for c in range(ncpus)
                                 if c != cur and _next_action(run, progs, pcs, c) is not None])
            if held is not None:   # does the CPU a preemption here would stop hold a lock?
                t = run.m.cpus[cur].task
                held.append(t is not None and t.locks > 0)
        run.apply(a)
        if a[0] in ("start", "access"):
            pcs[cur] += 1
        n += 1
    return run, run.violation if run.violation is not None else run.quiesce()


def point_search(kernel_cls, world: dict, programs: dict[int, list], rng: random.Random,
                 steps_max: int, prefix: tuple = ()):
    """The scenario's schedules with at most one preemption (CHESS's bound 1, stateless): for
    every CPU with a program, the schedule without preemption that it starts
    (preemption_try), then, in an order drawn from ``rng`` without repetition, the schedules
    that switch to another CPU at one point of one of those, until the tries have applied
    ``steps_max`` actions (the schedules without preemption always run). Returns (run, steps,
    tries): the first violating run, carrying its violation as ``found`` (None: none), and
    the actions applied in all, quiescence included. What it leaves out: choices among CPUs
    at a switch that costs no preemption (ascending order after the current CPU decides),
    late IPIs (swarm's knobs delay them). Every try first applies ``prefix``
    (preemption_try), counted in its steps."""
    progs = {int(c): [list(a) for a in p] for c, p in programs.items()}
    steps = tries = 0
    points = []
    for first in (c for c in sorted(progs) if progs[c]):
        alts: list = []
        held: list = []
        run, v = preemption_try(kernel_cls, world, progs, first, alternatives=alts,
                                prefix=prefix, held=held)
        steps += len(run.trace)
        tries += 1
        if v is not None:
            run.found = v
            return run, steps, tries
        points += [(held[p], first, p, c) for p, cs in enumerate(alts) for c in cs]
    rng.shuffle(points)
    if LOCK_FREE_POINTS_FIRST:
        points.sort(key=lambda x: x[0])   # stable: the drawn order within each group
    for _, first, p, c in points:
        if steps >= steps_max:
            break
        run, v = preemption_try(kernel_cls, world, progs, first, p, c, prefix=prefix)
        steps += len(run.trace)
        tries += 1
        if v is not None:
            run.found = v
            return run, steps, tries
    return None, steps, tries


def hybrid_run(kernel_cls, rng: random.Random, index: int, states_max: int = STATES_MAX,
               preemptions_max: int | None = PREEMPTIONS, every: int = SCENARIO_EVERY,
               swarm_too: bool = SWARM_TOO, actions_max: int | None = FIXED_RUN_LENGTH,
               search: str | None = None,
               share: float | None = None, overlap_only: bool | None = None):
    """Run ``index`` of the hybrid engine, as a RunOutcome (kind "scenarios" when a scenario
    was searched). With ``swarm_too`` every run is first fast mode's swarm run ``index``
    (``actions_max`` actions), and a scenario slot then searches a scenario drawn from the
    same generator after it; without, a scenario slot replaces the swarm run. ``search``,
    ``share`` and ``overlap_only`` default to SEARCH, SEARCH_SHARE and OVERLAP_ONLY (read at
    the call). A scenario's violation that is a known-open race of mainline is set aside as a
    swarm run's is (mmfuzz.kernels.KNOWN_OPEN)."""
    search = SEARCH if search is None else search
    actions_max = FIXED_RUN_LENGTH if actions_max is None else actions_max
    share = SEARCH_SHARE if share is None else share
    overlap_only = OVERLAP_ONLY if overlap_only is None else overlap_only
    scenario = bool(every) and index % every == every - 1
    steps = 0
    out = None
    if swarm_too or not scenario:
        world, run, v = random_run(kernel_cls, rng, actions_max)
        out = RunOutcome(world, len(run.trace),
                         run.schedule_upto(run.violation_step) if v is not None else None,
                         v.prop if v is not None else None, getattr(run, "known_open", None))
        if not scenario or out.actions is not None:
            return out
        steps = out.steps
    positions: dict = {}
    drawn = (scenario_from_run(run, rng, positions=positions)
             if swarm_too and SCENARIO_SOURCE == "run" else None)
    world, programs = drawn if drawn is not None else random_scenario(rng)
    prefix: tuple = ()
    if overlap_only:
        chosen: list = []
        pair = overlapping_pair(world, programs, rng, chosen)
        if pair is None:
            return out if out is not None else RunOutcome(world, 0)
        if drawn is not None and FROM_RUN_STATE and search == "points":
            prefix = tuple(run.actions[:min(positions[c][i] for c, i in chosen)])
        programs = pair
    if search == "points":
        budget = share * (steps if swarm_too else actions_max * 2)
        found, cost, _ = point_search(kernel_cls, world, programs, rng, budget, prefix)
        steps += cost
        if found is None:
            return RunOutcome(world, steps, kind="scenarios")
        schedule = found.schedule_upto(found.violation_step if found.violation is not None
                                       else None)
        violation = found.found
    else:
        res = exhaust(kernel_cls, world, programs, preemptions_max=preemptions_max,
                      states_max=states_max)
        steps += res.transitions + res.replayed
        if res.violation is None:
            return RunOutcome(world, steps, kind="scenarios")
        schedule, violation = res.schedule, res.violation
    known = known_open_race(kernel_cls, world, schedule, violation)
    if known is None:
        return RunOutcome(world, steps, schedule, violation.prop, kind="scenarios")
    return RunOutcome(world, steps, known_open=known, kind="scenarios")


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
