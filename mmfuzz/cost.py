"""The cost record: TLB flushes, flush IPIs and CPUs interrupted, per operation.

These are the checker's notes, not kernel state: the x86 flush (kernel/tlbflush.py) calls
``note_flush`` once per flush_tlb_mm_range, and the note lands in ``Machine.cost``, which no
kernel function reads. Per operation name (the syscall, kernel thread or "fault" that issued
the flush) a run keeps:

- ``flushes``: flush_tlb_mm_range calls (a local-only flush counts too: INVLPG is not free);
- ``ipis``: flush IPIs sent, one per remote CPU in mm_cpumask at the time of the flush;
- ``cpus``: CPUs interrupted, counted once per operation instance however many IPIs it sent
  them (a munmap that flushes twice to the same CPU interrupts it twice but disturbs one CPU).

A campaign sums the runs' records (``CostRecord``). With ``compare_to`` set, every run's
schedule is also replayed on a second kernel and summed apart, so two kernels are compared on
the very same schedules (actions the second kernel does not enable are skipped, as in
``mmfuzz.run.execute``). The quiescence phase (drain, sync, drop) is part of each run's
record for both kernels alike.
"""

from __future__ import annotations

FIELDS = ("flushes", "ipis", "cpus")


def note_flush(m, t, targets: list[int]) -> None:
    """One flush_tlb_mm_range by task ``t`` with IPIs to ``targets`` (remote CPU ids)."""
    rec = m.cost.get(t.name)
    if rec is None:
        rec = m.cost[t.name] = [0, 0, 0]
    rec[0] += 1
    rec[1] += len(targets)
    seen = m.cost_cpus.setdefault(t.tid, [])
    for cpu in targets:
        if cpu not in seen:
            seen.append(cpu)
            rec[2] += 1


class CostRecord:
    """Summed per-operation costs of many runs: op -> [flushes, ipis, cpus]."""

    def __init__(self):
        self.ops: dict[str, list[int]] = {}
        self.runs = 0
        self.replayed = 0     # a comparison's record: schedule actions replayed on it ...
        self.skipped = 0      # ... and those it did not enable (skipped, as execute does)

    def add_machine(self, m) -> None:
        self.runs += 1
        for op, rec in m.cost.items():
            mine = self.ops.setdefault(op, [0, 0, 0])
            for i in range(3):
                mine[i] += rec[i]

    def merge(self, other: "CostRecord") -> None:
        self.runs += other.runs
        self.replayed += other.replayed
        self.skipped += other.skipped
        for op, rec in other.ops.items():
            mine = self.ops.setdefault(op, [0, 0, 0])
            for i in range(3):
                mine[i] += rec[i]

    def totals(self) -> list[int]:
        return [sum(r[i] for r in self.ops.values()) for i in range(3)]

    def to_json(self) -> dict:
        return {"runs": self.runs,
                "ops": {op: dict(zip(FIELDS, rec)) for op, rec in sorted(self.ops.items())},
                "total": dict(zip(FIELDS, self.totals()))}

    def summary(self) -> str:
        f, i, c = self.totals()
        return f"{f} flushes, {i} IPIs, {c} CPUs interrupted in {self.runs} runs"


class Collector:
    """Feeds on every finished run of the fast explorer and the Hypothesis schedule engine
    (both end in mmfuzz.explore.run_policy). Off unless a campaign asks for it."""

    def __init__(self, compare_to=None):
        self.record = CostRecord()
        self.compare_to = compare_to          # a kernel class, or None
        self.compare = CostRecord() if compare_to is not None else None

    def after_run(self, run) -> None:
        self.record.add_machine(run.m)
        if self.compare_to is None:
            return
        from .run import ModelError, execute
        actions = run.actions[: run.schedule_len or len(run.actions)]
        try:
            other, _ = execute(self.compare_to, run.world, actions)
        except ModelError:
            return
        self.compare.add_machine(other.m)
        self.compare.replayed += len(actions)
        self.compare.skipped += other.skipped


#: the process's collector while a campaign records costs (cli `fuzz --cost`), else None
ACTIVE: Collector | None = None


def start(compare_to=None) -> Collector:
    global ACTIVE
    ACTIVE = Collector(compare_to)
    return ACTIVE


def stop() -> None:
    global ACTIVE
    ACTIVE = None


def render(record: CostRecord, label: str, other: CostRecord | None = None,
           other_label: str = "") -> str:
    """A table: one row per operation, flushes / IPIs / CPUs interrupted, and per run."""
    ops = sorted(set(record.ops) | set(other.ops if other else {}))
    lines = [f"cost per operation ({label}" + (f" vs {other_label}, same schedules" if other else "")
             + f", {record.runs} runs):"]
    head = f"  {'operation':34} {'flushes':>8} {'IPIs':>8} {'CPUs':>8}"
    if other:
        head += f"   | {'flushes':>8} {'IPIs':>8} {'CPUs':>8}"
    lines.append(head)
    for op in ops + ["(total)"]:
        a = record.totals() if op == "(total)" else record.ops.get(op, [0, 0, 0])
        row = f"  {op:34} {a[0]:8} {a[1]:8} {a[2]:8}"
        if other:
            b = other.totals() if op == "(total)" else other.ops.get(op, [0, 0, 0])
            row += f"   | {b[0]:8} {b[1]:8} {b[2]:8}"
        lines.append(row)
    if other and other.replayed:
        lines.append(f"  ({other_label}: {other.skipped} of the {other.replayed} replayed "
                     "schedule actions not enabled there, skipped)")
    return "\n".join(lines)
