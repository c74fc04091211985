"""Measured and not kept: a patch-directed swarm draw (bench/RESULTS-runs.md, "Directed by the
variant's overrides").

A kernel variant differs from Mainline in the methods it overrides. A probe of 300 runs
(seeds "mmfuzz-probe:i", the default draw) counts which operations' tasks call those methods;
then half of the runs focus on one of those operations (drawn by its declared share) and grow
partners through mmfuzz.ops.relation, as explore.swarm_ops_focused(grow=True, more=0.7) does;
the other half draw as today. Runs and model steps to the bug per seed, as bench.runs.

    python -m bench.directed SLUG SEED_LO SEED_HI RUNS_MAX
"""

from __future__ import annotations

import collections
import random
import sys

from mmfuzz import explore as _explore
from mmfuzz import ops as _ops
from mmfuzz import run as _run
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import resolve_kernel


def overridden(kernel_cls) -> list[str]:
    """The Mainline methods ``kernel_cls`` (or a class between it and Mainline) overrides."""
    names: list[str] = []
    for cls in kernel_cls.__mro__:
        if cls is Mainline or not issubclass(cls, Mainline):
            break
        for n, v in cls.__dict__.items():
            if callable(v) and not n.startswith("__") and n not in names and hasattr(Mainline, n):
                names.append(n)
    return names


def reaching_ops(kernel_cls, runs: int = 300) -> list[str]:
    """The operations whose tasks called an overridden method in ``runs`` probe runs, most
    calls first (faults are not operations a draw can enable, and are left out)."""
    current = [None]
    hits: collections.Counter = collections.Counter()
    ns = {}
    for n in overridden(kernel_cls):
        orig = getattr(kernel_cls, n)

        def wrapper(self, *a, _orig=orig, **k):
            hits[current[0]] += 1
            return _orig(self, *a, **k)
        ns[n] = wrapper
    probe = type("Probe" + kernel_cls.__name__, (kernel_cls,), ns)
    step, start = _run.Run._step_task, _run.Run._start_task

    def step_task(self, cpu):
        current[0] = self.m.cpus[cpu].task.name
        return step(self, cpu)

    def start_task(self, cpu, name, args):
        current[0] = name
        return start(self, cpu, name, args)
    _run.Run._step_task, _run.Run._start_task = step_task, start_task
    try:
        for i in range(runs):
            try:
                _explore.random_run(probe, random.Random(f"mmfuzz-probe:{i}"), None)
            except _run.ModelFailure as mf:   # a probe run the model failed: never a find
                print(f"  probe run {i}: MODEL FAILURE (not a find): {mf.summary()}",
                      file=sys.stderr)
    finally:
        _run.Run._step_task, _run.Run._start_task = step, start
    return [n for n, _ in hits.most_common() if n in _ops.names()]


def directed_ops(reach: list[str], q: float = 0.5, more: float = 0.7):
    """A swarm_ops: with probability ``q`` a focus among ``reach`` and partners grown through
    the relation, else the default draw."""
    decl = list(_ops.operations().values())
    focusable = [op for op in decl if op.name in reach]
    rel = _ops.relation()

    def draw(rng: random.Random) -> tuple:
        if rng.random() >= q or not focusable:
            return _explore.swarm_ops_scaled(rng)
        focus = focusable[_explore._pick_weighted(rng, [(op.name, op.swarm)
                                                        for op in focusable])].name
        chosen = [focus]
        pool = [(b, w) for b, w in rel[focus] if b != focus]
        while pool:
            chosen.append(pool.pop(_explore._pick_weighted(rng, pool))[0])
            if rng.random() >= more:
                break
            ties: dict = {}
            for c in chosen:
                for b, w in rel[c]:
                    if b not in chosen:
                        ties[b] = ties.get(b, 0.0) + w
            pool = [(b, ties[b]) for b in _ops.names() if b in ties]
        return tuple(op.name for op in decl if op.name in chosen)
    return draw


def main(argv=None) -> int:
    slug, lo, hi, cap = (argv or sys.argv[1:])[:4]
    kernel = resolve_kernel(slug)
    reach = reaching_ops(kernel)
    _explore.swarm_ops = directed_ops(reach)
    print(f"{slug}: operations reaching {overridden(kernel)}: {reach}")
    failed = False
    for seed in range(int(lo), int(hi) + 1):
        try:
            found, stats = _explore.explore(kernel, seed, runs_max=int(cap))
        except _run.ModelFailure as mf:   # never a find (bench.runs saves them; this one prints)
            print(f"  seed {seed}: MODEL FAILURE (not a find): {mf.summary()}", flush=True)
            failed = True
            continue
        if found:
            print(f"  seed {seed}: {found.prop} at run {found.runs:,} ({found.steps:,} steps)",
                  flush=True)
        else:
            print(f"  seed {seed}: none in {stats['runs']:,} ({stats['steps']:,} steps)",
                  flush=True)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
