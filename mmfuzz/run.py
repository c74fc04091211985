"""One run of a kernel variant in a world: actions in, trace and verdict out.

An action is plain JSON data, the unit of the schedule:
  ["start", cpu, op, *args]   a syscall or kernel thread begins on an idle CPU (the operations
                              and their arguments are declared in mmfuzz.ops)
  ["step", cpu]               that CPU's kernel operation advances one atomic step
  ["access", cpu, vpn, write] the user thread on an idle CPU loads (0) or stores (1); a fault
                              starts handle_mm_fault on that CPU
  ["ipi", cpu]                the CPU takes its oldest pending TLB-flush IPI
  ["evict", cpu, vpn]         the CPU's TLB drops its entry for vpn
The same list drives the fast explorer, the Hypothesis state machine, the shrinker and replay.
"""

from __future__ import annotations

from dataclasses import dataclass

from properties import QUIESCENT_PROPERTIES, STEP_PROPERTIES, Violation

from .hw import deliver_ipi, evict, user_access
from .kernel.base import Last, Task, Wait
from . import ops
from .model import FileObj, Machine, Mm, tlb_key

class ModelError(Exception):
    """The model itself misbehaved (deadlock, a step that does not progress)."""


class Divergence(Exception):
    """A replayed action was not enabled: the saved schedule does not fit this kernel."""


@dataclass(slots=True)
class Step:
    index: int
    cpu: int
    text: str
    action: list
    op: str = ""
    tid: int = 0          # the kernel task this action started or advanced (0: none)


@dataclass
class Outcome:
    violation: Violation | None
    step: int | None              # index of the violating step; None for quiescence
    phase: str = "step"           # "step" or "quiescence"


def default_world() -> dict:
    """A small world: 3 CPUs of one process, one 4-page file mapped shared at va 0x0-0x3 and
    2 anonymous pages at 0x4-0x5, 2 PTEs per table, real mmu_gather constants."""
    return {
        "ncpus": 3,
        "cpu_mm": [1, 1, 1],
        "ptrs_per_pte": 2,
        "npmds": 4,
        "nframes": 48,
        "files": [{"id": 1, "npages": 4}],
        "vmas": [
            {"mm": 1, "start": 0, "end": 4, "file": 1, "pgoff": 0, "shared": True, "writable": True},
            {"mm": 1, "start": 4, "end": 6, "file": None, "shared": False, "writable": True},
        ],
        "gather": {"local_max": 8, "batch_max": 510, "batch_count_max": 19},
        "prefault": [[0, 0, 1], [0, 1, 1]],
    }


def validate_world(world: dict) -> None:
    """Raise ValueError naming the first problem in a world description."""
    need = ("ncpus", "cpu_mm", "ptrs_per_pte", "npmds", "nframes", "files", "vmas", "gather",
            "prefault")
    for key in need:
        if key not in world:
            raise ValueError(f"world lacks {key!r}")
    if len(world["cpu_mm"]) != world["ncpus"] or not 1 <= world["ncpus"] <= 8:
        raise ValueError("world: cpu_mm must name one mm per CPU (1-8 CPUs)")
    for key in ("local_max", "batch_max", "batch_count_max"):
        if not isinstance(world["gather"].get(key), int) or world["gather"][key] < 1:
            raise ValueError(f"world: gather.{key} must be a positive integer")
    if world["gather"]["local_max"] < 2 or world["gather"]["batch_max"] < 2:
        raise ValueError("world: gather batches need room for at least 2 slots")
    limit = world["ptrs_per_pte"] * world["npmds"]
    for v in world["vmas"]:
        if not 0 <= v["start"] < v["end"] <= limit:
            raise ValueError(f"world: VMA {v} lies outside the {limit} pages the page table covers")


class Run:
    """A machine built from a world, a kernel variant bound to it, and the run's trace."""

    def __init__(self, kernel_cls, world: dict, check: bool = True):
        validate_world(world)
        self.world = world
        self.m = m = Machine(world)
        self.kernel = kernel_cls(m)
        self.check = check
        self.trace: list[Step] = []
        self.actions: list[list] = []
        self.next_tid = 1
        self.violation: Violation | None = None
        self.violation_step: int | None = None
        self.schedule_len = 0
        self.skipped = 0
        self._build()
        self._prefault()

    # ------------------------------------------------------------------ setup ----------
    def _build(self) -> None:
        m = self.m
        for fs in self.world["files"]:
            m.files[fs["id"]] = FileObj(fs["id"], fs["npages"])
        for mm_id in sorted(set(self.world["cpu_mm"])):
            m.mms[mm_id] = Mm(mm_id, self.world["npmds"])
        for cpu_id, mm_id in enumerate(self.world["cpu_mm"]):
            m.mms[mm_id].cpumask.append(cpu_id)
        for spec in self.world["vmas"]:
            mm = m.mms.get(spec["mm"])
            if mm is None:
                raise ValueError(f"world: VMA names mm{spec['mm']}, which no CPU runs")
            vma = m.make_vma(mm, spec)
            mm.vmas.append(vma)
            if vma.file is not None:
                m.files[vma.file].i_mmap.append(vma)
        for mm in m.mms.values():
            mm.vmas.sort(key=lambda v: v.start)

    def _prefault(self) -> None:
        """Run the world's initial accesses one at a time, to completion, through the model's
        own fault path: the starting state is one the kernel itself produced."""
        for cpu, vpn, write in self.world["prefault"]:
            for _ in range(2):
                outcome, _ = user_access(self.m, cpu, vpn, bool(write))
                if outcome == "done":
                    break
                self._start_task(cpu, "fault", (vpn, bool(write)))
                self.drain(record=False)
        self.m.events.clear()

    # ------------------------------------------------------------ enabledness ----------
    def idle_cpus(self) -> list[int]:
        return [c.cpu_id for c in self.m.cpus if c.task is None]

    def runnable_cpus(self) -> list[int]:
        out = []
        for c in self.m.cpus:
            t = c.task
            if t is not None and (t.wait is None or t.wait.cond()):
                out.append(c.cpu_id)
        return out

    def ipi_cpus(self) -> list[int]:
        return [c.cpu_id for c in self.m.cpus if c.ipi_queue and not c.irqs_off]

    def busy(self) -> bool:
        return any(c.task is not None for c in self.m.cpus)

    # ---------------------------------------------------------------- actions ----------
    def _start_task(self, cpu: int, name: str, args: tuple) -> Task:
        m = self.m
        c = m.cpus[cpu]
        mm = m.mms.get(c.mm_id)  # None: a kernel thread on a CPU with no process
        t = Task(self.next_tid, cpu, name, args, mm)
        self.next_tid += 1
        k = self.kernel
        if name == "fault":
            t.gen = k.handle_mm_fault(t, args[0], args[1])
        else:
            t.gen = getattr(k, ops.get(name).method)(t, *args)
        c.task = t
        return t

    def _step_task(self, cpu: int) -> str | None:
        """Advance the CPU's task by one step; None if it turned out to be blocked (a probe:
        nothing changed but the task's known wait, so the action does not count)."""
        c = self.m.cpus[cpu]
        t = c.task
        t.wait = None
        gen = t.gen
        while True:
            try:
                y = next(gen)
            except StopIteration:
                c.task = None
                self._check_released(t)
                return f"{t.name} returns"
            if isinstance(y, Wait):
                if y.cond():
                    continue
                t.wait = y
                return None
            t.steps += 1
            if isinstance(y, Last):
                try:
                    next(gen)
                except StopIteration:
                    c.task = None
                    self._check_released(t)
                    return str(y)
                raise ModelError(f"{t.name} yielded after its Last step {y!r}")
            return y

    @staticmethod
    def _check_released(t: Task) -> None:
        if t.locks != 0:
            raise ModelError(f"{t.name}{t.args} returned holding {t.locks} lock(s)")

    def enabled(self, action: list) -> bool:
        kind = action[0]
        m = self.m
        cpu = action[1]
        if not isinstance(cpu, int) or not 0 <= cpu < len(m.cpus):
            return False
        c = m.cpus[cpu]
        if kind == "step":
            return c.task is not None and (c.task.wait is None or c.task.wait.cond())
        if kind == "start":
            op = ops.get(action[2])
            return (c.task is None and op is not None and len(action) == 3 + op.arity
                    and (op.context == "kthread" or c.mm_id in m.mms))
        if kind == "access":
            return c.task is None
        if kind == "ipi":
            return bool(c.ipi_queue) and not c.irqs_off
        if kind == "evict":
            return tlb_key(c.mm_id, action[2]) in c.tlb
        return False

    def apply(self, action: list) -> Step | None:
        """Execute one action if it is enabled; returns its Step, or None if it was not."""
        if not self.enabled(action):
            return None
        m = self.m
        m.clock += 1
        m.events.clear()
        kind, cpu = action[0], action[1]
        op = ""
        tid = 0
        if kind == "step":
            op = m.cpus[cpu].task.name
            tid = m.cpus[cpu].task.tid
            text = self._step_task(cpu)
            if text is None:
                m.clock -= 1
                return None
        elif kind == "start":
            name, args = action[2], tuple(action[3:])
            tid = self._start_task(cpu, name, args).tid
            op = name
            text = f"{name}({', '.join(map(_fmt_arg, args))}) begins"
        elif kind == "access":
            outcome, text = user_access(m, cpu, action[2], bool(action[3]))
            if outcome == "fault":
                tid = self._start_task(cpu, "fault", (action[2], bool(action[3]))).tid
                op = "fault"
        elif kind == "ipi":
            text = deliver_ipi(m, cpu)
        else:
            text = evict(m, cpu, tlb_key(m.cpus[cpu].mm_id, action[2]))
        action = list(action)
        step = Step(len(self.trace), cpu, text, action, op, tid)
        self.trace.append(step)
        self.actions.append(action)
        if self.check and self.violation is None:
            for prop in STEP_PROPERTIES:
                v = prop(m, m.events)
                if v is not None:
                    self.violation = v
                    self.violation_step = step.index
                    break
        return step

    # ------------------------------------------------------------- quiescence ----------
    def drain(self, record: bool = True, steps_max: int = 10_000) -> None:
        """Run every operation to completion: the lowest runnable CPU steps, else the lowest
        CPU with a pending IPI takes it. Deterministic."""
        for _ in range(steps_max):
            run = self.runnable_cpus()
            if run:
                action = ["step", run[0]]
            else:
                ipis = self.ipi_cpus()
                if ipis:
                    action = ["ipi", ipis[0]]
                elif self.busy():
                    stuck = {c.cpu_id: c.task.wait.what for c in self.m.cpus if c.task}
                    raise ModelError(f"deadlock: every operation waits: {stuck}")
                else:
                    return
            if record:
                self.apply(action)
            else:
                self._apply_unrecorded(action)
        raise ModelError(f"drain did not finish in {steps_max} steps")

    def _apply_unrecorded(self, action: list) -> None:
        kind, cpu = action
        if kind == "step":
            self._step_task(cpu)
        else:
            deliver_ipi(self.m, cpu)

    def quiesce(self) -> Violation | None:
        """The eventual half of the properties: drain, write every file back, drop the clean
        unmapped cache, then check. Recorded in the trace like any other steps."""
        self.schedule_len = len(self.actions)
        self.drain()
        if self.violation is not None:
            return self.violation
        kthread_cpu = 0
        for file_id in list(self.m.files):
            self.apply(["start", kthread_cpu, "writeback", file_id])
            self.drain()
        for file_id, f in list(self.m.files.items()):
            for index in sorted(f.cache):
                self.apply(["start", kthread_cpu, "drop_cache", file_id, index])
                self.drain()
        if self.violation is not None:
            return self.violation
        for prop in QUIESCENT_PROPERTIES:
            v = prop(self.m)
            if v is not None:
                return v
        return None


def _fmt_arg(a) -> str:
    return f"{a:#x}" if isinstance(a, int) and a > 9 else str(a)


def execute(kernel_cls, world: dict, actions: list[list], strict: bool = False,
            quiesce: bool = True) -> tuple[Run, Outcome]:
    """Replay ``actions`` in a fresh run. Stops at the first violation. With ``strict``, an
    action that is not enabled raises Divergence; otherwise it is skipped (the shrinker's
    mode). Without a step violation, the quiescence phase decides."""
    run = Run(kernel_cls, world)
    for i, action in enumerate(actions):
        step = run.apply(action)
        if step is None:
            if strict:
                raise Divergence(_divergence_message(run, i, action))
            run.skipped += 1
            continue
        if run.violation is not None:
            return run, Outcome(run.violation, run.violation_step, "step")
    if not quiesce:
        return run, Outcome(None, None)
    v = run.quiesce()
    if v is not None:
        step = run.violation_step if run.violation is not None else None
        return run, Outcome(v, step, "step" if step is not None else "quiescence")
    return run, Outcome(None, None)


def _divergence_message(run: Run, i: int, action: list) -> str:
    return (f"action {i} {action} is not enabled: runnable CPUs {run.runnable_cpus()}, idle "
            f"CPUs {run.idle_cpus()}, CPUs with IPIs {run.ipi_cpus()}")
