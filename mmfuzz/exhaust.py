"""Bounded exhaustive mode: every interleaving of a tiny scenario, up to a preemption bound.

The random explorer and Hypothesis find races; this mode answers the converse question for a
fixed scenario: "does the fix close *every* interleaving of it?" (within a bound).

Scenario
    A world plus, per CPU, the ordered list of the things its user thread does: the "start"
    (syscall / kernel thread) and "access" (user load/store) actions of a schedule, in schedule
    order. ``scenario_from(cx)`` derives one from a corpus counterexample. "step" and "ipi"
    actions are the scheduling and are what gets enumerated. "evict" actions are hardware noise
    that this mode does not enumerate; they are dropped from a scenario. An access is taken
    literally: if it faults, the fault handler runs as that CPU's task, but the access is not
    re-issued after the fault unless the program lists it again.

Choices at each point (the enabled set), in this deterministic order:
    1. the current CPU (the CPU of the last non-IPI action), if it can continue;
    2. every other CPU, ascending: ``["step", cpu]`` if it has a runnable kernel task, else its
       next program action if it is idle and has one;
    3. ``["ipi", cpu]`` for every CPU with a pending flush IPI (IRQs on), ascending.
    A "step" of a task whose wait is not yet known may discover that the task is blocked: that
    attempt is an action like any other (Run._step_task records it, "spins on PTL(...)"),
    since it ran the reads before the wait; it is in the returned schedule. Switching away
    from a CPU whose step just blocked costs no preemption, as switching away from any blocked
    CPU.

Preemption bounding (CHESS, Musuvathi & Qadeer 2007)
    Switching to another CPU costs one preemption when the current CPU could still continue:
    its kernel task is runnable, or it is idle with a program action left. Switching away from
    a CPU whose task is blocked, or whose program is done, is free, as is the first choice.
    Delivering an IPI is free and does not change the current CPU: an IPI is an interrupt on
    its target, not a context switch of the thread being run. A CPU whose task's last step sent
    flush IPIs counts as waiting for them (native_flush_tlb_multi spins for the acks) even if
    they have been delivered since, so switching away from it is free: without this, the
    result would depend on whether the IPIs were delivered before or after the switch, which
    is exactly the freedom the IPI reduction below removes. IPIs are thus placed anywhere,
    unbounded; there are few of them in a tiny world.

IPI reduction (``reduce_ipis``, on by default)
    An IPI whose oldest request flushes nothing on its target now (no cached entry of that mm
    in its range) and nothing later (no access left in the target's program touches the range)
    is delivered at once as a forced move, not offered as a choice. Kernel code never reads
    another CPU's TLB and no property reads an IPI queue, so delivering it early changes no
    state but the queue, and only lets the waiting flusher run sooner; with the flusher rule
    above, every schedule with a late delivery has a counterpart with the same preemptions.

Leaves
    A step property is checked after every action (Run.apply). When every program is consumed
    and every task has returned, the interleaving is complete and Run.quiesce() decides (it
    drains any IPIs still pending in the deterministic drain order, syncs and drops the clean
    cache). A violating prefix is a leaf too. If nothing is enabled while a task is still
    blocked, the model deadlocked: a ModelFailure (Run.fail) is raised with the schedule.

Search
    Depth-first, systematic, no randomness. Generators cannot be copied, so a state is
    re-created by replaying the path from a fresh Run (tens of microseconds per action) before
    each sibling after the first; the first child continues on the live run. No state caching.
    ``states_max`` bounds the number of actions applied during the search (replays are not
    counted); reaching it stops the search with ``truncated=True``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from properties import Violation

from .run import ModelError, Run

#: kinds of action that belong to a CPU's program (the rest is scheduling or hardware noise)
PROGRAM_KINDS = ("start", "access")


@dataclass
class ExhaustResult:
    violation: Violation | None       # the first violation found (None: every interleaving ok)
    schedule: list | None             # the first violating interleaving, replayable by execute()
    interleavings: int                # leaves reached: complete interleavings + violating prefixes
    states: int                       # actions applied during the search (replays excluded)
    truncated: bool                   # states_max was reached: the answer is not exhaustive
    phase: str | None = None          # "step" or "quiescence" for the violation
    violations: int = 0               # violating leaves found (1 unless stop_at_first=False)
    preemptions_max: int = 2
    forced: int = 0                   # invisible IPIs delivered as forced moves (reduce_ipis)
    pruned: int = 0                   # choices not taken because they exceeded the bound
    elapsed_s: float = 0.0
    props: dict = field(default_factory=dict)   # property -> violating leaves
    shortest: list | None = None      # the shortest violating interleaving seen (with
                                      # stop_at_first=False: the shortest within the bound)


class _Stop(Exception):
    pass


def scenario_from(cx) -> tuple[dict, dict[int, list]]:
    """(world, programs) of a counterexample: programs maps every CPU of the world to the
    ordered list of its "start" and "access" actions in the schedule."""
    return cx.world, programs_from(cx.world, cx.schedule)


def programs_from(world: dict, schedule: list) -> dict[int, list]:
    programs: dict[int, list] = {cpu: [] for cpu in range(world["ncpus"])}
    for a in schedule:
        if a[0] in PROGRAM_KINDS:
            programs.setdefault(a[1], []).append(list(a))
    return programs


def exhaust(kernel_cls, world: dict, programs: dict, preemptions_max: int = 2,
            states_max: int = 200_000, stop_at_first: bool = True,
            reduce_ipis: bool = True) -> ExhaustResult:
    """Search every interleaving of ``programs`` in ``world`` with at most ``preemptions_max``
    preemptions. Stops at the first violation unless ``stop_at_first`` is False (then it counts
    every violating leaf and returns the first one found)."""
    progs = {int(c): [list(a) for a in p] for c, p in programs.items()}
    for cpu, prog in progs.items():
        for a in prog:
            if a[0] not in PROGRAM_KINDS or a[1] != cpu:
                raise ValueError(f"program of CPU{cpu}: {a} is not a start/access on CPU{cpu}")
    cpus = sorted(progs)
    res = ExhaustResult(None, None, 0, 0, False, preemptions_max=preemptions_max)
    t0 = time.perf_counter()

    def replay(path: list) -> Run:
        run = Run(kernel_cls, world)
        for a in path:
            run.apply(a)
        return run

    def done(run: Run, pcs: dict) -> bool:
        return not run.busy() and all(pcs[c] >= len(progs[c]) for c in cpus)

    def record(run: Run, sched: list, v: Violation, phase: str) -> None:
        res.violations += 1
        res.props[v.prop] = res.props.get(v.prop, 0) + 1
        if res.violation is None:
            res.violation, res.schedule, res.phase = v, [list(a) for a in sched], phase
        if res.shortest is None or len(sched) < len(res.shortest):
            res.shortest = [list(a) for a in sched]
        if stop_at_first:
            raise _Stop

    def candidates(run: Run, pcs: dict, current) -> list:
        order = ([current] if current is not None else []) + [c for c in cpus if c != current]
        out = []
        for cpu in order:
            c = run.m.cpus[cpu]
            if c.task is not None:
                if c.task.wait is None or c.task.wait.cond():
                    out.append(["step", cpu])
            elif pcs[cpu] < len(progs[cpu]):
                out.append(progs[cpu][pcs[cpu]])
        out.extend(["ipi", cpu] for cpu in run.ipi_cpus())
        return out

    def invisible_ipi(run: Run, pcs: dict, cpu: int) -> bool:
        """The oldest IPI pending on ``cpu`` flushes nothing now (no cached entry of its mm in
        its range) and nothing later (no access left in the CPU's program could fill one).
        Kernel code never reads another CPU's TLB, no property reads IPI queues, so delivering
        it at once instead of later changes no reachable state apart from the queue, and an
        earlier delivery only enables the waiting flusher sooner: every behaviour of the late
        delivery is also one of the early one. So it is a forced move, not a choice."""
        if not reduce_ipis:
            return False
        c = run.m.cpus[cpu]
        req = c.ipi_queue[0]
        def hit(vpn: int) -> bool:
            return req.full or req.start <= vpn < req.end
        for key in c.tlb:
            if key >> 32 == req.mm_id and hit(key & 0xffffffff):
                return False
        if c.mm_id == req.mm_id:
            for a in progs[cpu][pcs[cpu]:]:
                if a[0] == "access" and hit(a[2]):
                    return False
        return True

    def leaf(run: Run, sched: list) -> None:
        res.interleavings += 1
        v = run.quiesce()  # mutates the run; the caller replays before the next sibling
        phase = ("step" if run.violation is not None and run.violation_step < run.quiesce_from
                 else "quiescence")
        if v is not None:
            record(run, sched, v, phase)

    def queued(run: Run) -> int:
        return sum(len(c.ipi_queue) for c in run.m.cpus)

    def node(run: Run, path: list, sched: list, pcs: dict, current, preempts: int,
             flushing: bool) -> None:
        path = list(path)
        sched = list(sched)
        while True:  # forced moves: IPIs whose timing nothing can observe
            quiet = [cpu for cpu in run.ipi_cpus() if invisible_ipi(run, pcs, cpu)]
            if not quiet:
                break
            a = ["ipi", quiet[0]]
            run.apply(a)
            path.append(a)
            sched.append(a)
            res.states += 1
            res.forced += 1
            if res.states >= states_max:
                res.truncated = True
                raise _Stop
            if run.violation is not None:  # cannot happen (see invisible_ipi); kept honest
                res.interleavings += 1
                record(run, sched, run.violation, "step")
                return
        if done(run, pcs):
            leaf(run, sched)
            return
        dirty = False
        can_continue = False
        took = False
        for a in candidates(run, pcs, current):
            is_ipi = a[0] == "ipi"
            cost = int(not is_ipi and current is not None and a[1] != current and can_continue)
            if preempts + cost > preemptions_max:
                res.pruned += 1
                continue
            if dirty:
                run = replay(path)
                dirty = False
            before = queued(run)
            step = run.apply(a)
            if step is None:
                raise run.fail(ModelError(f"exhaust: {a} was offered but is not enabled"), a)
            took = True
            task = run.m.cpus[a[1]].task
            blocked = a[0] == "step" and task is not None and task.wait is not None
            if not is_ipi and a[1] == current and not flushing and not blocked:
                can_continue = True
            sent = a[0] == "step" and queued(run) > before
            res.states += 1
            if res.states >= states_max:
                res.truncated = True
                raise _Stop
            npcs = pcs
            if a[0] in PROGRAM_KINDS:
                npcs = dict(pcs)
                npcs[a[1]] += 1
            nsched = sched + [a]
            if run.violation is not None:
                res.interleavings += 1
                dirty = True
                record(run, nsched, run.violation, "step")
                continue
            node(run, path + [a], nsched, npcs, current if is_ipi else a[1], preempts + cost,
                 flushing if is_ipi else sent)
            dirty = True
        if not took:
            waits = {c.cpu_id: c.task.wait.what for c in run.m.cpus if c.task and c.task.wait}
            raise run.fail(ModelError(f"exhaust: deadlock, every operation waits: {waits}"))

    try:
        node(Run(kernel_cls, world), [], [], {c: 0 for c in cpus}, None, 0, False)
    except _Stop:
        pass
    res.elapsed_s = time.perf_counter() - t0
    return res


def exhaust_cx(cx, kernel: str | None = None, **kw) -> ExhaustResult:
    """exhaust() over a counterexample's scenario, on its own kernel or on ``kernel``."""
    from .kernels import resolve_kernel
    world, programs = scenario_from(cx)
    return exhaust(resolve_kernel(kernel or cx.kernel), world, programs, **kw)
