"""One run of a kernel variant in a world: actions in, trace and verdict out.

An action is plain JSON data, the unit of the schedule:
  ["start", cpu, op, *args]   a syscall or kernel thread begins on an idle CPU (the operations
                              and their arguments are declared in mmfuzz.ops)
  ["step", cpu]               that CPU's kernel operation advances one atomic step
  ["access", cpu, vpn, write] the user thread on an idle CPU loads (0), stores (1) or stores
                              the value the page already holds (2, hw.STORE_SAME: a store's
                              faults and A/D bits, contents unchanged; corpus format_version
                              2); a fault starts handle_mm_fault on that CPU
  ["ipi", cpu]                the CPU takes its oldest pending TLB-flush IPI
  ["evict", cpu, vpn]         the CPU's TLB drops its entry for vpn
The same list drives the fast explorer, the Hypothesis state machine, the shrinker and replay.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

from properties import QUIESCENT_PROPERTIES, STATE_STEP_PROPERTIES, STEP_PROPERTIES, Violation
from properties import step_gate

from .hw import deliver_ipi, evict, user_access
from .kernel.base import Last, Task, Wait
from . import ops
from .model import TLB_FLUSH_MODES, FileObj, Machine, Mm, tlb_key

#: After a step without events, check only the state properties whose inputs changed
#: (properties/_gate.py): the same verdicts at the same steps, fewer calls. False: every
#: state property after every step (tests/test_speed.py compares the two).
STEP_GATE = True


class ModelError(Exception):
    """The model itself misbehaved (deadlock, a step that does not progress)."""


class Divergence(Exception):
    """A replayed action was not enabled: the saved schedule does not fit this kernel."""


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ModelFailure(Exception):
    """The model or the kernel variant under test failed: kernel code raised (AttributeError,
    KeyError, ...), an assertion of the model's own invariants tripped ("mapcount underflow"),
    the operations deadlocked, a step did not progress, the world ran out of frames, or a
    found schedule did not reproduce. Never a find (exit status 3, not 1).

    Raised from one place, ``Run.fail``, by ``Run.apply``, ``Run.quiesce`` and the setup of
    a run, so every engine sees the same exception. ``info`` is plain data (it crosses
    process boundaries and is saved as JSON by corpus.save_failure): kernel-independent
    fields ``type``, ``message``, ``where`` (innermost frame, "path:line in function"),
    ``traceback`` (innermost frames last), ``phase`` ("setup", "step" or "quiescence"),
    ``action`` (the action that raised, or None), ``world`` and ``schedule`` (the actions
    that replay to it: every action before the failing one plus that action; for a failure
    at quiescence, the actions before quiescence, which execute() re-runs). Engines add
    campaign facts (``runs``, ``steps``, ``run``) to it."""

    def __init__(self, info: dict):
        super().__init__(info)
        self.info = info

    def __str__(self) -> str:
        return self.summary()

    @property
    def type(self) -> str:
        return self.info["type"]

    @property
    def world(self) -> dict:
        return self.info["world"]

    @property
    def schedule(self) -> list:
        return self.info["schedule"]

    def summary(self) -> str:
        """One line: the exception, where it was raised, and when."""
        i = self.info
        when = {"setup": "while setting up the world (prefault)",
                "quiescence": "at quiescence"}.get(i["phase"], "")
        if i["phase"] == "step" and i.get("action") is not None:
            when = f"at action {len(i['schedule']) - 1} {i['action']}"
        msg = i["message"].splitlines()[0] if i["message"] else ""
        return f"{i['type']}: {msg} at {i['where']} {when}".rstrip()

    def same(self, other: "ModelFailure") -> bool:
        """The same failure, as the shrinker and replay judge it: the same exception type
        raised from the same function."""
        return (self.type == other.type
                and self.info["where"].split(" in ")[-1] == other.info["where"].split(" in ")[-1])


def _where(exc: BaseException) -> tuple[str, list[str]]:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:   # made, not raised (exhaust's deadlock): where Run.fail was called
        frames = traceback.extract_stack()[:-2]
    lines = []
    for fr in frames:
        path = fr.filename
        if path.startswith(_ROOT + os.sep):
            path = os.path.relpath(path, _ROOT)
        lines.append(f"{path}:{fr.lineno} in {fr.name}")
    return (lines[-1] if lines else "?"), lines[-12:]


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


#: Bounds on a world and a schedule, checked before anything is built (docs/corpus-format.md
#: "Limits"): a file can ask for nothing larger, so a replay's time and memory stay bounded.
LIMITS = {
    "ncpus": (1, 8),
    "mm_id": (1, 8),
    "ptrs_per_pte": (1, 512),
    "npmds": (1, 64),
    "pages": (1, 4096),          # ptrs_per_pte * npmds: the virtual pages the page table covers
    "nframes": (2, 4096),        # pfn 0 is the zero page
    "files": (0, 8),
    "file_id": (1, 64),
    "file_npages": (1, 4096),
    "vmas": (0, 16),
    "prefault": (0, 64),
    "local_max": (2, 1024),
    "batch_max": (2, 1024),
    "batch_count_max": (1, 64),
    "actions": (0, 10_000),
}

_WORLD_KEYS = ("ncpus", "cpu_mm", "ptrs_per_pte", "npmds", "nframes", "files", "vmas", "gather",
               "prefault")
#: fields a world may leave out: how remote TLB flushes are done (model.TLB_FLUSH_MODES;
#: "ipi" when absent, as every world before it)
_WORLD_OPTIONAL = ("tlb_flush",)
_VMA_KEYS = ("mm", "start", "end", "file", "pgoff", "shared", "writable")


def _int_in(value, lo: int, hi: int, what: str, *what_args) -> int:
    """``value`` as an int in [lo, hi], else ValueError naming ``what.format(*what_args)`` (built
    only then: Run checks every world, so the good path stays cheap). A bool is not an int here
    (Python says it is: True == 1), nor is a float such as 2.0."""
    if type(value) is int and lo <= value <= hi:
        return value
    what = what.format(*what_args)
    if type(value) is not int:
        raise ValueError(f"{what} must be an integer, not {_jtype(value)} {_short(value)}")
    raise ValueError(f"{what} = {_short(value)} is out of range {lo}..{hi}")


class _Where:
    """A place in a world, formatted only when an error names it."""

    __slots__ = ("fmt", "i")

    def __init__(self, fmt: str, i: int):
        self.fmt = fmt
        self.i = i

    def __format__(self, spec) -> str:
        return self.fmt.format(self.i)

    __str__ = __repr__ = lambda self: self.fmt.format(self.i)


def _jtype(value) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_world(world: dict) -> None:
    """Raise ValueError naming the first problem in a world description: a missing or unknown
    field, a wrong type (bool is not an int), a value outside LIMITS, a VMA outside the page
    table or its file, overlapping VMAs, a prefault outside every VMA of its CPU's process."""
    if type(world) is not dict:
        raise ValueError(f"world must be an object, not {_jtype(world)}")
    for key in _WORLD_KEYS:
        if key not in world:
            raise ValueError(f"world lacks {key!r}")
    for key in world:
        if key not in _WORLD_KEYS and key not in _WORLD_OPTIONAL:
            raise ValueError(f"world has an unknown field {_short(key)} (known: "
                             f"{', '.join(_WORLD_KEYS + _WORLD_OPTIONAL)})")
    if "tlb_flush" in world and world["tlb_flush"] not in TLB_FLUSH_MODES:
        raise ValueError(f"world.tlb_flush = {_short(world['tlb_flush'])} is not one of "
                         f"{', '.join(TLB_FLUSH_MODES)}")
    ncpus = _int_in(world["ncpus"], *LIMITS["ncpus"], "world.ncpus")
    cpu_mm = world["cpu_mm"]
    if type(cpu_mm) is not list or len(cpu_mm) != ncpus:
        raise ValueError(f"world.cpu_mm must be a list of one mm id per CPU ({ncpus} CPUs)")
    for i, mm_id in enumerate(cpu_mm):
        # 0: a CPU with no process, where a fork may place its child
        _int_in(mm_id, 0, LIMITS["mm_id"][1], "world.cpu_mm[{}]", i)
    if not any(cpu_mm):
        raise ValueError("world.cpu_mm: at least one CPU must run a process (0 means none)")
    ptrs = _int_in(world["ptrs_per_pte"], *LIMITS["ptrs_per_pte"], "world.ptrs_per_pte")
    npmds = _int_in(world["npmds"], *LIMITS["npmds"], "world.npmds")
    pages = ptrs * npmds
    if pages > LIMITS["pages"][1]:
        raise ValueError(f"world: ptrs_per_pte * npmds = {pages} pages is more than the "
                         f"{LIMITS['pages'][1]} a world may cover")
    _int_in(world["nframes"], *LIMITS["nframes"], "world.nframes")
    gather = world["gather"]
    if type(gather) is not dict:
        raise ValueError("world.gather must be an object {local_max, batch_max, batch_count_max}")
    for key in gather:
        if key not in ("local_max", "batch_max", "batch_count_max"):
            raise ValueError(f"world.gather has an unknown field {_short(key)}")
    for key in ("local_max", "batch_max", "batch_count_max"):
        if key not in gather:
            raise ValueError(f"world.gather lacks {key!r}")
        _int_in(gather[key], *LIMITS[key], "world.gather.{}", key)
    files = world["files"]
    if type(files) is not list or not LIMITS["files"][0] <= len(files) <= LIMITS["files"][1]:
        raise ValueError(f"world.files must be a list of at most {LIMITS['files'][1]} files")
    npages_of: dict[int, int] = {}
    for i, f in enumerate(files):
        if type(f) is not dict or not {"id", "npages"} <= set(f) <= {"id", "npages", "readonly"}:
            raise ValueError(f"world.files[{i}] must be an object {{\"id\": N, \"npages\": N}}"
                             " (optionally \"readonly\": true: opened O_RDONLY)")
        if type(f.get("readonly", False)) is not bool:
            raise ValueError(f"world.files[{i}].readonly must be true or false")
        fid = _int_in(f["id"], *LIMITS["file_id"], "world.files[{}].id", i)
        if fid in npages_of:
            raise ValueError(f"world.files: file id {fid} appears twice")
        npages_of[fid] = _int_in(f["npages"], *LIMITS["file_npages"], "world.files[{}].npages", i)
    vmas = world["vmas"]
    if type(vmas) is not list or len(vmas) > LIMITS["vmas"][1]:
        raise ValueError(f"world.vmas must be a list of at most {LIMITS['vmas'][1]} VMAs")
    for i, v in enumerate(vmas):
        what = _Where("world.vmas[{}]", i)
        if type(v) is not dict:
            raise ValueError(f"{what} must be an object")
        for key in v:
            if key not in _VMA_KEYS:
                raise ValueError(f"{what} has an unknown field {_short(key)} (known: "
                                 f"{', '.join(_VMA_KEYS)})")
        for key in ("mm", "start", "end"):
            if key not in v:
                raise ValueError(f"{what} lacks {key!r}")
        mm_id = _int_in(v["mm"], *LIMITS["mm_id"], "{}.mm", what)
        if mm_id not in cpu_mm:
            raise ValueError(f"{what} names mm{mm_id}, which no CPU runs (cpu_mm {cpu_mm})")
        start = _int_in(v["start"], 0, pages - 1, "{}.start", what)
        end = _int_in(v["end"], start + 1, pages, "{}.end", what)
        for key in ("shared", "writable"):
            if key in v and type(v[key]) is not bool:
                raise ValueError(f"{what}.{key} must be true or false, not {_short(v[key])}")
        fid = v.get("file")
        pgoff = v.get("pgoff", 0)
        if fid is None:
            if pgoff != 0:
                raise ValueError(f"{what}: an anonymous VMA (file null) has no pgoff")
        else:
            _int_in(fid, *LIMITS["file_id"], "{}.file", what)
            if fid not in npages_of:
                raise ValueError(f"{what} maps file {fid}, which world.files does not list")
            pgoff = _int_in(pgoff, 0, npages_of[fid] - 1, "{}.pgoff", what)
            if pgoff + end - start > npages_of[fid]:
                raise ValueError(f"{what} maps pages {pgoff}..{pgoff + end - start - 1} of file "
                                 f"{fid}, which has {npages_of[fid]} pages")
        if (fid is not None and v.get("shared", False) and v.get("writable", True)
                and any(f["id"] == fid and f.get("readonly") for f in files)):
            raise ValueError(f"{what} maps read-only file {fid} shared and writable; make it "
                             "private or read-only")
        for j in range(i):
            w = vmas[j]
            if w["mm"] == mm_id and w["start"] < end and start < w["end"]:
                raise ValueError(f"{what} overlaps world.vmas[{j}] in mm{mm_id}")
    prefault = world["prefault"]
    if type(prefault) is not list or len(prefault) > LIMITS["prefault"][1]:
        raise ValueError(f"world.prefault must be a list of at most {LIMITS['prefault'][1]} "
                         "[cpu, vpn, write] entries")
    for i, p in enumerate(prefault):
        what = _Where("world.prefault[{}]", i)
        if type(p) is not list or len(p) != 3:
            raise ValueError(f"{what} must be [cpu, vpn, write], not {_short(p)}")
        cpu = _int_in(p[0], 0, ncpus - 1, "{} cpu", what)
        vpn = _int_in(p[1], 0, pages - 1, "{} vpn", what)
        _int_in(p[2], 0, 1, "{} write", what)
        if not any(v["mm"] == cpu_mm[cpu] and v["start"] <= vpn < v["end"] for v in vmas):
            raise ValueError(f"{what}: va {vpn:#x} is in no VMA of CPU{cpu}'s mm{cpu_mm[cpu]}")


def check_world_shape(world: dict) -> None:
    """The cheap check every Run makes (it runs once per fuzzing run, so it must cost next to
    nothing): the fields are there and the VMAs lie inside the page table. The full check with
    the limits, validate_world, is made where a world comes from outside: the corpus loader
    checks every file's world before anything is built, and tests check that the engines' world
    generators only produce worlds validate_world accepts."""
    for key in _WORLD_KEYS:
        if key not in world:
            raise ValueError(f"world lacks {key!r}")
    if len(world["cpu_mm"]) != world["ncpus"] or not 1 <= world["ncpus"] <= LIMITS["ncpus"][1]:
        raise ValueError("world: cpu_mm must name one mm per CPU (1-8 CPUs)")
    limit = world["ptrs_per_pte"] * world["npmds"]
    for v in world["vmas"]:
        if not 0 <= v["start"] < v["end"] <= limit:
            raise ValueError(f"world: VMA {v} lies outside the {limit} pages the page table covers")


#: action kinds a schedule may hold, with their arguments after the kind ("until" is a corpus
#: file's shorthand, expanded into "step" actions by mmfuzz.corpus before a run sees it)
ACTION_ARGS = {
    "start": ("cpu", "op", "*args"),
    "step": ("cpu",),
    "access": ("cpu", "vpn", "write"),
    "ipi": ("cpu",),
    "evict": ("cpu", "vpn"),
    "until": ("cpu", "label"),
}

#: longest label pattern an "until" action may give
UNTIL_PATTERN_MAX = 200


def validate_action(world: dict, action, where: str = "action") -> None:
    """Raise ValueError naming the first problem with one schedule action in ``world``: an
    unknown kind, the wrong number of arguments, a wrong type (bool is not an int) or a value
    out of range. Enabledness (is the CPU idle? is there an IPI?) is the run's business."""
    if type(action) is not list or not action:
        raise ValueError(f"{where} must be a list [kind, cpu, ...], not {_short(action)}")
    kind = action[0]
    if kind not in ACTION_ARGS:
        raise ValueError(f"{where}: unknown action kind {_short(kind)} (known: "
                         f"{', '.join(ACTION_ARGS)})")
    form = "[" + ", ".join((repr(kind), *ACTION_ARGS[kind])) + "]"
    if kind != "start" and len(action) != 1 + len(ACTION_ARGS[kind]):
        raise ValueError(f"{where}: {_short(action)} has {len(action) - 1} arguments; write {form}")
    if len(action) < 2:
        raise ValueError(f"{where}: {_short(action)} names no CPU; write {form}")
    pages = world["ptrs_per_pte"] * world["npmds"]
    _int_in(action[1], 0, world["ncpus"] - 1, "{} cpu", where)
    if kind in ("access", "evict"):
        _int_in(action[2], 0, pages - 1, "{} vpn", where)
    if kind == "access":
        _int_in(action[3], 0, 2, "{} write (the access kind: 0 load, 1 store, 2 store-same)", where)
    if kind == "until":
        pat = action[2]
        if type(pat) is not str or not pat or len(pat) > UNTIL_PATTERN_MAX:
            raise ValueError(f"{where}: the label of {form} must be a non-empty string of at "
                             f"most {UNTIL_PATTERN_MAX} characters (a kernel function name)")
    if kind == "start":
        # the operation and its arguments: checked by the registry's own declaration
        # (mmfuzz.ops), so an operation added there is covered here without a second list
        problem = ops.check_start(action, world)
        if problem is not None:
            raise ValueError(f"{where}: {problem}")


class Run:
    """A machine built from a world, a kernel variant bound to it, and the run's trace."""

    def __init__(self, kernel_cls, world: dict, check: bool = True):
        check_world_shape(world)
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
        self.quiesce_from: int | None = None   # len(actions) when quiescence began
        self.skipped = 0
        self.phase = "setup"
        self._gate = step_gate()
        self._build()
        try:
            self._prefault()
        except ModelFailure:
            raise
        except Exception as e:
            raise self.fail(e) from e
        self.phase = "step"

    # ------------------------------------------------------------------ setup ----------
    def _build(self) -> None:
        m = self.m
        for fs in self.world["files"]:
            m.files[fs["id"]] = FileObj(fs["id"], fs["npages"])
        for mm_id in sorted(set(self.world["cpu_mm"])):
            if mm_id:  # 0: a CPU with no process (a fork may place a child there)
                m.mms[mm_id] = Mm(mm_id, self.world["npmds"])
        for cpu_id, mm_id in enumerate(self.world["cpu_mm"]):
            if mm_id:
                m.mms[mm_id].cpumask.append(cpu_id)
                m.mms[mm_id].users += 1
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
        self.m.oracle.setup_done(self.m)

    # ------------------------------------------------------------ enabledness ----------
    def idle_cpus(self) -> list[int]:
        return [c.cpu_id for c in self.m.cpus if c.task is None]

    def idle_process_cpus(self) -> list[int]:
        """Idle CPUs that run a process (user accesses and process syscalls need one)."""
        return [c.cpu_id for c in self.m.cpus if c.task is None and c.mm_id != 0]

    def process_origin(self, cpu: int) -> int:
        """The world mm whose VMA list describes the process on ``cpu`` (a forked child
        copies its parent's): where the fuzzer draws addresses and mmap templates."""
        return self.m.mms[self.m.cpus[cpu].mm_id].origin

    def runnable_cpus(self) -> list[int]:
        out = []
        for c in self.m.cpus:
            t = c.task
            if t is not None and (t.wait is None or t.wait.cond()):
                out.append(c.cpu_id)
        return out

    def ipi_cpus(self) -> list[int]:
        return [c.cpu_id for c in self.m.cpus if c.ipi_queue and not c.irqs_off]

    def cpu_lists(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """(runnable_cpus(), ipi_cpus(), idle_cpus(), idle_process_cpus()) in one pass over
        the CPUs: what a policy reads before every action."""
        runnable, ipis, idle, idle_proc = [], [], [], []
        for c in self.m.cpus:
            t = c.task
            if t is None:
                idle.append(c.cpu_id)
                if c.mm_id != 0:
                    idle_proc.append(c.cpu_id)
            elif t.wait is None or t.wait.cond():
                runnable.append(c.cpu_id)
            if c.ipi_queue and not c.irqs_off:
                ipis.append(c.cpu_id)
        return runnable, ipis, idle, idle_proc

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
            t.gen = k.do_user_addr_fault(t, args[0], args[1])
        else:
            t.gen = getattr(k, ops.get(name).method)(t, *args)
            if name == "fork":
                m.cpus[args[0]].reserved = True  # the child's CPU is taken from now on
        c.task = t
        m.oracle.task_started(m, t)
        return t

    def _step_task(self, cpu: int) -> str:
        """Advance the CPU's task by one step. A task that turns out to be blocked (a Wait
        whose condition does not hold) has still run the code before the wait, such as the
        lockless read of the PMD that names the PTL it now spins on: that attempt is a step
        of its own, labelled by the wait ("spins on PTL(table 3)"), recorded in the trace and
        in the schedule, so a replay runs those reads at the same point."""
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
                self.m.oracle.task_returned(self.m, t)
                return f"{t.name} returns"
            if type(y) is str:   # a plain label, the common case: neither a Wait nor Last
                t.steps += 1
                return y
            if isinstance(y, Wait):
                if y.cond():
                    continue
                t.wait = y
                return y.what
            t.steps += 1
            if isinstance(y, Last):
                try:
                    next(gen)
                except StopIteration:
                    c.task = None
                    self._check_released(t)
                    self.m.oracle.task_returned(self.m, t)
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
        cpus = m.cpus
        cpu = action[1]
        if not isinstance(cpu, int) or not 0 <= cpu < len(cpus):
            return False
        c = cpus[cpu]
        if kind == "step":
            t = c.task
            return t is not None and (t.wait is None or t.wait.cond())
        if kind == "start":
            op = ops.get(action[2])
            if not (c.task is None and op is not None and len(action) == 3 + op.arity
                    and (op.context == "kthread" or c.mm_id in m.mms)):
                return False
            if op.name == "fork":  # the child's CPU must have no process and no fork bound there
                child = action[3]
                return (type(child) is int and 0 <= child < len(m.cpus)
                        and m.cpus[child].mm_id == 0 and not m.cpus[child].reserved)
            return True
        if kind == "access":
            return c.task is None and c.mm_id != 0
        if kind == "ipi":
            return bool(c.ipi_queue) and not c.irqs_off
        if kind == "evict":
            return tlb_key(c.mm_id, action[2]) in c.tlb
        return False

    def apply(self, action: list) -> Step | None:
        """Execute one action if it is enabled; returns its Step, or None if it was not.
        Anything the kernel code, the hardware model or a property raises becomes a
        ModelFailure naming this action."""
        try:
            return self._apply(action)
        except ModelFailure:
            raise
        except Exception as e:
            raise self.fail(e, action) from e

    def fail(self, exc: BaseException, action: list | None = None) -> ModelFailure:
        """The one place a ModelFailure is made: the exception, where it was raised, and the
        schedule that replays to it."""
        where, tb = _where(exc)
        if self.phase == "quiescence":
            schedule = [list(a) for a in self.actions[: self.quiesce_from]]
        elif self.phase == "step" and action is not None:
            schedule = [list(a) for a in self.actions] + [list(action)]
        else:
            schedule = [list(a) for a in self.actions]
        return ModelFailure({
            "type": type(exc).__name__, "message": str(exc), "where": where, "traceback": tb,
            "phase": self.phase, "action": list(action) if action is not None else None,
            "kernel_class": f"{type(self.kernel).__module__}:{type(self.kernel).__qualname__}",
            "world": self.world, "schedule": schedule})

    def _apply(self, action: list) -> Step | None:
        if not self.enabled(action):
            return None
        m = self.m
        m.clock += 1
        events = m.events
        events.clear()
        kind, cpu = action[0], action[1]
        op = ""
        tid = 0
        if kind == "step":
            task = m.cpus[cpu].task
            op = task.name
            tid = task.tid
            text = self._step_task(cpu)
        elif kind == "start":
            name, args = action[2], tuple(action[3:])
            tid = self._start_task(cpu, name, args).tid
            op = name
            text = f"{name}({', '.join(map(_fmt_arg, args))}) begins"
        elif kind == "access":
            outcome, text = user_access(m, cpu, action[2], action[3])
            if outcome == "fault":
                tid = self._start_task(cpu, "fault", (action[2], bool(action[3]))).tid
                op = "fault"
        elif kind == "ipi":
            text = deliver_ipi(m, cpu)
        else:
            text = evict(m, cpu, tlb_key(m.cpus[cpu].mm_id, action[2]))
        action = list(action)
        trace = self.trace
        step = Step(len(trace), cpu, text, action, op, tid)
        trace.append(step)
        actions = self.actions
        actions.append(action)
        if events:  # the oracle takes notes only from events
            m.oracle.observe(m, events)
        if self.check and self.violation is None:
            # a step without events cannot violate an event-only property, nor a state
            # property whose inputs it left as they were (properties/_gate.py)
            if events:
                props = STEP_PROPERTIES
                if STEP_GATE:
                    self._gate.after_events(m, len(actions))
            elif not STEP_GATE:
                props = STATE_STEP_PROPERTIES
            elif kind == "step":
                props = self._gate.changed(m, len(actions), m.cpus[cpu].task is None)
            else:
                props = self._gate.no_kernel_code(m, len(actions), tid != 0)
            for prop in props:
                v = prop(m, events)
                if v is not None:
                    self.violation = v
                    self.violation_step = step.index
                    break
        return step

    # ------------------------------------------------------------- quiescence ----------
    def drain(self, record: bool = True, steps_max: int = 10_000) -> None:
        """Run every operation to completion: the lowest runnable CPU steps, else the lowest
        CPU with a pending IPI takes it. Deterministic."""
        cpus = self.m.cpus
        for _ in range(steps_max):
            # the lowest runnable CPU (runnable_cpus()[0]), else the lowest with an IPI it can
            # take (ipi_cpus()[0]): the first found is enough, the Wait conditions are pure
            action = None
            for c in cpus:
                t = c.task
                if t is not None and (t.wait is None or t.wait.cond()):
                    action = ["step", c.cpu_id]
                    break
            if action is None:
                for c in cpus:
                    if c.ipi_queue and not c.irqs_off:
                        action = ["ipi", c.cpu_id]
                        break
            if action is None:
                if self.busy():
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
        unmapped cache, then check. Recorded in the trace like any other steps. A deadlock or
        any exception on the way is a ModelFailure of phase "quiescence"."""
        self.schedule_len = len(self.actions)
        self.quiesce_from = len(self.actions)
        self.phase = "quiescence"
        try:
            return self._quiesce()
        except ModelFailure:
            raise
        except Exception as e:
            raise self.fail(e) from e

    def schedule_upto(self, step: int | None) -> list[list]:
        """The schedule that replays to this run's violation at trace index ``step`` (None:
        a quiescent property): the actions up to and including it, but never the quiescence
        phase's own actions, which execute() re-runs deterministically after the schedule."""
        if self.quiesce_from is not None and (step is None or step >= self.quiesce_from):
            return [list(a) for a in self.actions[: self.quiesce_from]]
        return [list(a) for a in self.actions[: step + 1]]

    def quiescence_actions(self, step: int | None) -> int:
        """How many of the actions up to the violation at ``step`` the quiescence phase ran
        (counted apart from the schedule's own actions in reports)."""
        if self.quiesce_from is None:
            return 0
        end = len(self.actions) if step is None else step + 1
        return max(0, end - self.quiesce_from)

    def _quiesce(self) -> Violation | None:
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
        phase = "step" if step is not None and step < run.quiesce_from else "quiescence"
        return run, Outcome(v, step, phase)
    return run, Outcome(None, None)


def _divergence_message(run: Run, i: int, action: list) -> str:
    return (f"action {i} {action} is not enabled: runnable CPUs {run.runnable_cpus()}, idle "
            f"CPUs {run.idle_cpus()}, CPUs with IPIs {run.ipi_cpus()}")
