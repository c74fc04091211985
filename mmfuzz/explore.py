"""Fast mode: a plain-Python random explorer over the same model and actions, and the schedule
shrinker that turns any failing run into a short, replayable counterexample.

Each run draws a small world and a swarm configuration (which operations and hardware events
are enabled, and how often) from its own seeded generator, then picks one enabled action at a
time. Seeds are strings hashed by random.Random's sha512 seeding, so every run is the same on
any machine and in any process.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .run import OPS, Divergence, ModelError, Run, execute

ACTION_KINDS = ("step", "ipi", "access", "start", "evict")


def random_world(rng: random.Random) -> dict:
    """A small world: 2-3 CPUs of one or two processes, a file of 2-4 pages mapped shared in
    every process, an anonymous VMA in the first, 2 or 4 PTEs per table, the real or a tiny
    mmu_gather, and a few prefaulted pages."""
    ncpus = rng.choice((2, 3, 3))
    two_mm = ncpus == 3 and rng.random() < 0.25
    cpu_mm = [1, 1, 2] if two_mm else [1] * ncpus
    ptrs = rng.choice((2, 2, 4))
    npages = rng.choice((2, 3, 4))
    vmas = []
    for mm_id in sorted(set(cpu_mm)):
        vmas.append({"mm": mm_id, "start": 0, "end": npages, "file": 1, "pgoff": 0,
                     "shared": True, "writable": True})
    anon_start = ((npages + ptrs - 1) // ptrs) * ptrs if rng.random() < 0.5 else npages
    vmas.append({"mm": 1, "start": anon_start, "end": anon_start + 2, "file": None,
                 "shared": False, "writable": True})
    npmds = (anon_start + 2 + ptrs - 1) // ptrs
    gather = ({"local_max": 8, "batch_max": 510, "batch_count_max": 19} if rng.random() < 0.6
              else {"local_max": 2, "batch_max": 2, "batch_count_max": 1})
    prefault = []
    for _ in range(rng.choice((1, 2, 2, 3, 4))):
        cpu = rng.randrange(ncpus)
        vma = rng.choice([v for v in vmas if v["mm"] == cpu_mm[cpu]])
        prefault.append([cpu, rng.randrange(vma["start"], vma["end"]), int(rng.random() < 0.7)])
    return {"ncpus": ncpus, "cpu_mm": cpu_mm, "ptrs_per_pte": ptrs, "npmds": npmds,
            "nframes": 64, "files": [{"id": 1, "npages": npages}], "vmas": vmas,
            "gather": gather, "prefault": prefault}


@dataclass
class Swarm:
    """Per-run weights (swarm testing): some kinds and operations are switched off."""

    kind_weight: dict
    ops: tuple
    store_bias: float

    @classmethod
    def draw(cls, rng: random.Random) -> "Swarm":
        kw = {"step": rng.choice((4, 8, 16)), "ipi": rng.choice((0.5, 1, 3)),
              "access": rng.choice((1, 2, 4)), "start": rng.choice((0.5, 1, 2)),
              "evict": rng.choice((0, 0, 0.2))}
        ops = tuple(op for op in OPS if rng.random() < 0.7) or ("madvise_dontneed",)
        return cls(kw, ops, rng.choice((0.5, 0.8)))


def _pick(rng: random.Random, run: Run, world: dict, swarm: Swarm):
    m = run.m
    choices = []
    for cpu in run.runnable_cpus():
        choices.append((swarm.kind_weight["step"], ("step", cpu)))
    for cpu in run.ipi_cpus():
        choices.append((swarm.kind_weight["ipi"], ("ipi", cpu)))
    idle = run.idle_cpus()
    if idle:
        choices.append((swarm.kind_weight["access"] * len(idle), ("access",)))
        choices.append((swarm.kind_weight["start"] * len(idle), ("start",)))
    if swarm.kind_weight["evict"]:
        cached = [c.cpu_id for c in m.cpus if c.tlb]
        if cached:
            choices.append((swarm.kind_weight["evict"], ("evict",)))
    if not choices:
        return None
    total = sum(w for w, _ in choices)
    r = rng.random() * total
    for w, c in choices:
        r -= w
        if r <= 0:
            break
    kind = c[0]
    if kind in ("step", "ipi"):
        return [kind, c[1]]
    if kind == "evict":
        cpu = rng.choice([x.cpu_id for x in m.cpus if x.tlb])
        key = rng.choice(list(m.cpus[cpu].tlb))
        return ["evict", cpu, key & 0xffffffff]
    cpu = rng.choice(idle)
    mm_id = m.cpus[cpu].mm_id
    spans = [(v["start"], v["end"]) for v in world["vmas"] if v["mm"] == mm_id]
    if kind == "access":
        lo, hi = rng.choice(spans)
        return ["access", cpu, rng.randrange(lo, hi), int(rng.random() < swarm.store_bias)]
    op = rng.choice(swarm.ops)
    if op in ("madvise_dontneed", "munmap"):
        lo, hi = rng.choice(spans)
        start = rng.randrange(lo, hi)
        return ["start", cpu, op, start, rng.randint(1, hi - start)]
    if op == "mmap":
        mine = [i for i, v in enumerate(world["vmas"]) if v["mm"] == mm_id]
        return ["start", cpu, op, rng.choice(mine)]
    if op == "writeback":
        return ["start", cpu, op, 1]
    return ["start", cpu, op, 1, rng.randrange(world["files"][0]["npages"])]


@dataclass
class Found:
    world: dict
    actions: list
    prop: str
    run_index: int
    runs: int
    steps: int
    seconds: float


def random_run(kernel_cls, rng: random.Random, actions_max: int = 60):
    """One random run: returns (world, run, outcome). Quiescence included."""
    world = random_world(rng)
    swarm = Swarm.draw(rng)
    run = Run(kernel_cls, world)
    for _ in range(actions_max):
        action = _pick(rng, run, world, swarm)
        if action is None:
            break
        run.apply(action)
        if run.violation is not None:
            return world, run, run.violation
    v = run.quiesce()
    return world, run, v


def explore(kernel_cls, seed: int, budget_s: float | None = None, runs_max: int | None = None,
            actions_max: int = 60, progress=None) -> tuple[Found | None, dict]:
    """Random runs 0, 1, 2, ... until a violation, the time budget or the run budget.
    Deterministic for a given seed and run count (the budget only decides where to stop)."""
    return explore_strided(kernel_cls, seed, budget_s, runs_max, 0, 1, actions_max, progress)


def explore_strided(kernel_cls, seed: int, budget_s: float | None, runs_max: int | None,
                    start: int, stride: int, actions_max: int = 60,
                    progress=None) -> tuple[Found | None, dict]:
    """Runs start, start + stride, ...: worker w of n takes (w, n), so n workers together run
    exactly the runs one worker would, and run i is the same wherever it runs."""
    t0 = time.perf_counter()
    stats = {"runs": 0, "steps": 0}
    i = start
    last = t0
    while True:
        if runs_max is not None and stats["runs"] >= runs_max:
            break
        now = time.perf_counter()
        if budget_s is not None and now - t0 >= budget_s:
            break
        rng = random.Random(f"mmfuzz:{seed}:{i}")
        world, run, v = random_run(kernel_cls, rng, actions_max)
        stats["runs"] += 1
        stats["steps"] += len(run.trace)
        if progress is not None and now - last > 0.5:
            progress(stats, now - t0)
            last = now
        if v is not None:
            return Found(world, run.actions, v.prop, i, stats["runs"], stats["steps"],
                         time.perf_counter() - t0), stats
        i += stride
    stats["seconds"] = time.perf_counter() - t0
    return None, stats


def fails_with(kernel_cls, world: dict, actions: list, prop: str) -> bool:
    try:
        _, out = execute(kernel_cls, world, actions)
    except (ModelError, Divergence):
        return False
    return out.violation is not None and out.violation.prop == prop


def shrink(kernel_cls, world: dict, actions: list, prop: str,
           attempts_max: int = 5000) -> tuple[dict, list]:
    """Greedy delta debugging over the schedule (drop chunks, then single actions) and the
    world's prefault list, keeping the same property violated. Disabled actions are skipped
    in the shrinker's replay, so every candidate is a valid schedule. Ends with the actions
    the shrunk run really executed, cut at the violation."""
    attempts = 0

    def ok(w, acts):
        nonlocal attempts
        attempts += 1
        return fails_with(kernel_cls, w, acts, prop)

    actions = _executed(kernel_cls, world, actions)
    changed = True
    while changed and attempts < attempts_max:
        changed = False
        n = len(actions)
        chunk = max(1, n // 2)
        while chunk >= 1 and attempts < attempts_max:
            i = 0
            while i < len(actions) and attempts < attempts_max:
                cand = actions[:i] + actions[i + chunk:]
                if ok(world, cand):
                    actions = cand
                    changed = True
                else:
                    i += chunk
            chunk //= 2
        # per CPU: delete runs of that CPU's actions, which the interleaving keeps apart
        for cpu in range(world["ncpus"]):
            idx = [i for i, a in enumerate(actions) if a[1] == cpu]
            k = len(idx)
            while k >= 1 and attempts < attempts_max:
                j = 0
                while j + k <= len(idx) and attempts < attempts_max:
                    drop = set(idx[j:j + k])
                    cand = [a for i, a in enumerate(actions) if i not in drop]
                    if ok(world, cand):
                        actions = cand
                        changed = True
                        idx = [i for i, a in enumerate(actions) if a[1] == cpu]
                    else:
                        j += 1
                k //= 2
        for j in range(len(world["prefault"]) - 1, -1, -1):
            w2 = dict(world, prefault=world["prefault"][:j] + world["prefault"][j + 1:])
            if ok(w2, actions):
                world = w2
                changed = True
    return world, _executed(kernel_cls, world, actions)


def _executed(kernel_cls, world, actions):
    """The actions a run really executed up to its violation (quiescence steps excluded)."""
    run, out = execute(kernel_cls, world, actions)
    if out.step is not None:
        return run.actions[: out.step + 1]
    return run.actions[: run.schedule_len]
