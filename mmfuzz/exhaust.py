"""Exhaustive mode: every interleaving of a small scenario, as a stateful breadth-first search.

The random explorer and Hypothesis find races; this mode answers the converse question for a
fixed scenario: "does the fix close *every* interleaving of it?", and on a buggy kernel it
reports the shortest violating interleaving there is.

Scenario
    A world plus, per CPU, the ordered list of the things its user thread does: the "start"
    (syscall / kernel thread) and "access" (user load/store) actions of a schedule, in schedule
    order. ``scenario_from(cx)`` derives one from a corpus counterexample. "step" and "ipi"
    actions are the scheduling and are what gets enumerated. "evict" actions are hardware noise
    that this mode does not enumerate; they are dropped from a scenario. An access is taken
    literally: if it faults, the fault handler runs as that CPU's task, but the access is not
    re-issued after the fault unless the program lists it again.

Choices at each state (the enabled set), in this deterministic order:
    1. the current CPU (the CPU of the last non-IPI action), if it can continue;
    2. every other CPU, ascending: ``["step", cpu]`` if it has a runnable kernel task, else its
       next program action if it is idle and has one;
    3. ``["ipi", cpu]`` for every CPU with a pending flush IPI (IRQs on), ascending.
    A "step" of a task whose wait is not yet known may discover that the task is blocked: that
    attempt is an action like any other (Run._step_task records it, "spins on PTL(...)"),
    since it ran the reads before the wait; it is in the returned schedule. Switching away
    from a CPU whose step just blocked costs no preemption, as switching away from any blocked
    CPU.

Stateful search
    A state is keyed by a canonical snapshot (``snapshot_key``): the whole object graph
    reachable from the kernel object (the Machine: every CPU's TLB, IPI queue and irqs_off,
    each mm's page table, locks and counters, the folios, page cache and disk, the checker's
    own notes such as ``expected``, ``revoked_at`` and every task's ``observed``, the last
    two reduced to what can still be compared, see "Checker's notes" below), each CPU's
    kernel task with the full state of its generator chain, plus how far each CPU's program
    has got. Two states with equal keys have the same futures, so each is expanded once.
    Generators cannot be copied: expanding a state takes one live run in that state per
    choice. The first is the run that reached it; the next ones are the live runs of its
    duplicates (a child whose key is already stored is a run in that state, reached by
    another path: equal keys, equal futures, so it serves as well as the state's own run;
    ``spared`` counts them, zap mainline 6,069); only then is the state restored by
    replaying its path from a fresh Run (property checks off, the oracle's notes taken as
    Run.apply takes them, so the oracle-based properties judge a replayed state exactly as
    a live one; ``replays``: zap mainline 2,889, 8,958 without spares). Breadth-first, so
    the first violation found
    is a shortest one (fewest schedule actions); a violating state and a complete one (every
    program consumed, every task returned: Run.quiesce() decides) are leaves.

Canonical snapshot
    Objects are serialised in a fixed traversal order (slots in declared order over the MRO,
    then ``__dict__`` in insertion order; lists and dicts in order), each mutable object once:
    a second reference to it is written as a back-reference to its first-visit number. So a
    new field in Folio, Mm, Cpu... is picked up without a change here, aliasing is part of the
    key, and nothing in the key depends on ``id()`` or hashing (``id()`` only finds an object
    already visited during one traversal). A generator is its code object, ``f_lasti``, the
    live locals of its frame with their slots, and its value stack (a
    ``for`` loop's iterator, the sub-generator of a ``yield from``), read with
    ``gc.get_referents``, minus the plain locals its code can no longer read: a data flow
    over the bytecode (``_flow``) finds, at each suspension point, the locals some path reads
    before writing them (live) and whether the set of bound locals is fixed there (then the
    live ones are picked by position, else f_locals says which are bound); a dead local
    cannot influence the future, so two states that differ only there are one (zap mainline:
    10,097 -> 7,635 states; tests/test_exhaust.py checks verdicts and shortest lengths on every
    corpus entry against the key of every local, ``LIVE_LOCALS_ONLY = False``); iterators
    are serialised through ``__reduce__``; functions (a Wait's condition) as code plus
    closure. An object this cannot serialise raises TypeError:
    a loud failure, never a silently unsound key. A generator that did not run since the
    run's last key (every CPU but the one that stepped) is not analysed again: its reduction
    is kept per run and reused while f_lasti and every frame referent are the same objects
    (where the plan is static the reduction is a function of those alone; tests check it
    against the slow key after every action). A frame's f_lasti and referents change only
    while it runs, and an action runs only the generators of its own CPU's task, so
    SearchRun notes the CPUs of the actions applied since its last key (``_ran``; a replay,
    a drain or quiescence: any) and the chains (``gi_yieldfrom``) of the other CPUs' tasks,
    the same task objects as at the last key, reuse their kept reductions without even
    that compare (zap mainline, before the notes below were reduced: 92,582 of 209,562
    generator reductions). Left out of the key, as constants or write-only records:
    ``Machine.world``, ``Machine.events`` (cleared before every action), ``Machine.stats``,
    ``Task.steps`` (a step counter nothing reads), ``Machine.cost`` and ``cost_cpus`` (the
    cost record: mmfuzz.cost.note_flush writes it and reads it only to fill itself in; no
    kernel function and no property reads it).
    Three kinds of value are path-dependent numbers that mean only their order: the clock
    (``m.clock``; ``revoked_at`` and ``observed`` keep its values), store versions
    (``m.next_version``; folio data, disk, ``expected``) and task ids. The search runs on
    ``SearchRun``, which makes the first two ``Stamp`` values (ints whose arithmetic stays a
    Stamp, so every copy a kernel function or property keeps is one too, wherever it is
    stored), and the key holds each Stamp's rank among the Stamps of its kind in the state:
    every comparison among them, and with later ones (all larger), comes out the same. Task
    ids are numbered per CPU (the k-th task started on CPU c gets 1 + c + ncpus * k) instead of
    globally, so the order in which CPUs started their operations does not leak into lock
    owners; a fresh id is new in either numbering and ids are only compared for equality.

Checker's notes
    ``Machine.revoked_at`` (key -> clock of the last revocation of that translation) and each
    task's ``observed`` (key -> clock when it last looked at that PTE under its PTL) are
    written by the model and read in one place only: properties._core.last_changed_by_caller
    compares ``revoked_at.get(key, -1) <= observed[key]`` for one key, on a copy of the task's
    ``observed`` that the step's own event carries (no kernel function reads either; the
    other clocks, the oracle's, are never compared with these). So the key holds, instead of
    their values and instead of ranking them among the other clocks, per task and per key it
    observed, the outcome of that comparison (``_observed_relation``). Two states with equal
    keys then decide every future comparison alike: one between two values of the state is
    in the key; one where either side was written later compares a later clock with an
    earlier one (or two later ones, written in the same order in both), the same way in
    both; a missing ``observed`` entry is in the key (its key set), a missing ``revoked_at``
    entry reads -1 in the comparison. Everything else of the state stays in the key, so the
    futures are the same and so are the verdicts (zap mainline: 7,635 -> 5,956 states,
    20,250 -> 15,452 transitions; madv 2,115 -> 1,131; tests/test_exhaust.py checks verdicts
    and shortest lengths on every corpus entry against the full notes, ``REDUCED_NOTES =
    False``, and that equal keys have equal futures on random paths).

Preemption bounding (CHESS, Musuvathi & Qadeer 2007), optional (``preemptions_max``; default
None: no bound, every interleaving)
    Switching to another CPU costs one preemption when the current CPU could still continue:
    its kernel task is runnable, or it is idle with a program action left. Switching away from
    a CPU whose task is blocked, or whose program is done, is free, as is the first choice.
    Delivering an IPI is free and does not change the current CPU. A CPU whose task's last step
    sent flush IPIs counts as waiting for them (native_flush_tlb_multi spins for the acks) even
    if they have been delivered since, so switching away from it is free. With a bound, the
    key also holds the current CPU, the preemptions spent and that flag.

IPI reduction (``reduce_ipis``, off by default)
    An IPI whose oldest request flushes nothing on its target now (no cached entry of that mm
    in its range) and nothing later (no access left in the target's program touches the range)
    is delivered at once as a forced move, not offered as a choice. Kernel code never reads
    another CPU's TLB and no property reads an IPI queue, so the state after the early delivery
    differs from the late one only in the queue and in the flusher being enabled sooner; every
    behaviour of the late delivery is one of the early one. Under the stateful search it is a
    normalisation applied before a state is keyed, so it stays sound, but it buys little (the
    visited set already merges the orders) and it makes "shortest" mean shortest among
    schedules that deliver invisible IPIs at once, so it is off unless asked for.

Results
    ``interleavings`` counts leaves: distinct complete states plus violating ones; ``states``
    the distinct states stored (``states_max`` caps it: reaching it stops the search with
    ``truncated=True``); ``transitions`` the actions applied (replays excluded). If nothing is
    enabled while a task is still blocked, the model deadlocked: a ModelFailure (Run.fail) is
    raised with the schedule. ``exhaust_dfs`` is the stateless depth-first search this module had before (kept
    as the reference the tests compare against).
"""

from __future__ import annotations

import collections
import dis
import gc
import io
import operator
import pickle
import time
import types
from dataclasses import dataclass, field

from properties import Violation

from .kernel.base import Task
from .hw import deliver_ipi, evict, user_access
from .model import Machine, tlb_key
from .run import ModelError, Run

#: kinds of action that belong to a CPU's program (the rest is scheduling or hardware noise)
PROGRAM_KINDS = ("start", "access")


@dataclass
class ExhaustResult:
    violation: Violation | None       # the first violation found (None: every interleaving ok)
    schedule: list | None             # the first violating interleaving, replayable by execute()
    interleavings: int                # leaves: distinct complete states + violating ones
    states: int                       # distinct states stored (the stateless DFS: actions)
    truncated: bool                   # states_max was reached: the answer is not exhaustive
    phase: str | None = None          # "step" or "quiescence" for the violation
    violations: int = 0               # violating leaves found (1 unless stop_at_first=False)
    preemptions_max: int | None = None  # None: no bound
    forced: int = 0                   # invisible IPIs delivered as forced moves (reduce_ipis)
    pruned: int = 0                   # choices not taken because they exceeded the bound
    elapsed_s: float = 0.0
    props: dict = field(default_factory=dict)   # property -> violating leaves
    shortest: list | None = None      # the shortest violating interleaving seen (the BFS: the
                                      # first one; with stop_at_first=False the DFS keeps the
                                      # shortest within the bound)
    transitions: int = 0              # actions applied during the search (replays excluded)
    probes: int = 0                   # steps that found their task blocked
    path: list | None = None          # the violating schedule with its probes, as searched
    depth: int = 0                    # the longest schedule the search completed a level of
    replayed: int = 0                 # actions re-applied to restore states
    replays: int = 0                  # states restored by a replay from the initial state
    spared: int = 0                   # duplicates' live runs kept to expand their state


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


def _check_programs(programs: dict) -> dict[int, list]:
    progs = {int(c): [list(a) for a in p] for c, p in programs.items()}
    for cpu, prog in progs.items():
        for a in prog:
            if a[0] not in PROGRAM_KINDS or a[1] != cpu:
                raise ValueError(f"program of CPU{cpu}: {a} is not a start/access on CPU{cpu}")
    return progs


# ------------------------------------------------------------------ snapshot --------------
class Stamp(int):
    """A number that means only its order among others of its kind (a clock value, a store
    version). Arithmetic on it stays a Stamp, so every copy the model keeps is recognisable."""

    __slots__ = ()

    def __add__(self, other):
        return type(self)(int(self) + int(other))

    __radd__ = __add__

    def __sub__(self, other):
        return type(self)(int(self) - int(other))


class Tick(Stamp):
    """A value of ``Machine.clock``."""

    __slots__ = ()


class Version(Stamp):
    """A store version (``Machine.next_version``)."""

    __slots__ = ()


class SearchRun(Run):
    """A Run whose clock and store versions are Stamps and whose task ids are numbered per CPU
    (see the module docstring); it behaves exactly like a Run otherwise."""

    def _build(self) -> None:
        super()._build()
        m = self.m
        m.clock = Tick(m.clock)
        m.next_version = Version(m.next_version)
        self._started = [0] * len(m.cpus)
        # the CPUs whose kernel task may have run since this run's last key (None: any);
        # snapshot_key trusts the generator reductions it kept for the others
        self._ran: set | None = None

    def apply(self, action: list):
        ran = self._ran
        if ran is not None:
            ran.add(action[1])   # an action runs at most the generators of its own CPU
        return super().apply(action)

    def _apply_unrecorded(self, action: list) -> None:
        self._ran = None
        super()._apply_unrecorded(action)

    def quiesce(self):
        self._ran = None
        return super().quiesce()

    def replay(self, path: list) -> None:
        """Run.apply's effects on the model for ``path``, without its bookkeeping (no
        enabledness test, no Step or trace, no property check): re-creates a state the search
        reached through Run.apply on the same actions, the oracle's notes included (the
        properties judge the next steps by them). tests/test_exhaust.py checks that it gives
        the same snapshot as apply."""
        m = self.m
        events = m.events
        observe = m.oracle.observe
        self._ran = None
        self.actions.extend(path)
        for action in path:
            kind, cpu = action[0], action[1]
            m.clock += 1
            events.clear()
            if kind == "step":
                if self._step_task(cpu) is None:
                    m.clock -= 1
            elif kind == "start":
                self._start_task(cpu, action[2], tuple(action[3:]))
            elif kind == "access":
                if user_access(m, cpu, action[2], action[3])[0] == "fault":
                    self._start_task(cpu, "fault", (action[2], bool(action[3])))
            elif kind == "ipi":
                deliver_ipi(m, cpu)
            else:
                evict(m, cpu, tlb_key(m.cpus[cpu].mm_id, action[2]))
            if events:   # as Run._apply: the oracle takes notes from the step's events
                observe(m, events)

    def _start_task(self, cpu: int, name: str, args: tuple):
        k = self._started[cpu]
        self._started[cpu] = k + 1
        self.next_tid = 1 + cpu + len(self.m.cpus) * k
        return super()._start_task(cpu, name, args)


#: fields that are constants of a run or write-only records, never read by the model
SKIP_FIELDS = {Machine: frozenset(("world", "events", "stats")),
               Task: frozenset(("wait", "steps"))}
#: the checker's notes the key leaves out or holds reduced (module docstring, "Checker's
#: notes"): the cost record (write-only), and the clocks of revoked translations and of what
#: each task observed, which the key holds as _observed_relation
NOTES_SKIP = {Machine: frozenset(("cost", "cost_cpus", "revoked_at", "anon_shared_at")),
              Task: frozenset(("observed",))}
#: False: key the notes in full (the finer key the tests compare the search against; clear
#: _FIELDS and _REDUCERS after changing it)
REDUCED_NOTES = True
_ATOMS = frozenset((type(None), bool, int, str, float, bytes, complex, range,
                    types.BuiltinFunctionType, type, types.CodeType, type(Ellipsis)))


def _observed_relation(t: Task, revoked: dict) -> tuple:
    """What a task's ``observed`` notes can still decide: for each PTE key it observed (in
    key order), whether ``revoked_at`` says no one revoked that translation since
    (``revoked.get(key, -1) <= observed[key]``, the one comparison properties make of these
    clocks, in properties._core.last_changed_by_caller)."""
    obs = t.observed
    if not obs:
        return ()
    get = revoked.get
    return tuple(sorted([(k, get(k, -1) <= v) for k, v in obs.items()]))
_ITERATORS = frozenset(type(it) for it in (iter([]), iter(()), iter(range(0)), iter(""),
                                           iter({}), iter({}.values()), iter({}.items()),
                                           reversed([]), enumerate([]), zip(), map(int, [])))
_STAMPS = frozenset((Tick, Version))
_FIELDS: dict = {}


def _fields(cls) -> tuple[tuple[str, ...], bool, frozenset]:
    """(slot names over the MRO, base first, in declared order; has a __dict__; skipped)."""
    got = _FIELDS.get(cls)
    if got is None:
        names: list[str] = []
        for c in reversed(cls.__mro__):
            slots = c.__dict__.get("__slots__", ())
            if isinstance(slots, str):
                slots = (slots,)
            names += [s for s in slots if s not in ("__dict__", "__weakref__")]
        has_dict = any("__dict__" in c.__dict__ for c in cls.__mro__ if c is not object)
        skip = frozenset()
        for c in cls.__mro__:
            skip |= SKIP_FIELDS.get(c, frozenset())
            if REDUCED_NOTES:
                skip |= NOTES_SKIP.get(c, frozenset())
        got = _FIELDS[cls] = (tuple(names), has_dict, skip)
    return got


# ------------------------------------------------------------- frame liveness -------------
#: opcodes after which execution does not fall through to the next instruction
_NO_FALLTHROUGH = frozenset(("RETURN_VALUE", "RAISE_VARARGS", "RERAISE", "JUMP_FORWARD",
                             "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP_ABSOLUTE",
                             "JUMP", "JUMP_NO_INTERRUPT"))
_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_USES = frozenset(("LOAD_FAST", "LOAD_FAST_CHECK", "DELETE_FAST"))
_LAYOUT: dict = {}


class _Layout:
    """Where a code object keeps its locals (``localsplus``: the plain locals and arguments,
    then the cells and free variables) and what the bytecode says about them at each
    instruction (``flow``: offset -> (live, bound or None); None when the bytecode has
    something the analysis does not know, then every local counts and f_locals tells which
    are bound).

    ``live`` is the set of plain locals some path from after the instruction reads before
    writing them: a local outside it can never influence the generator's future, so the
    state key leaves it out. ``bound`` is the set of plain locals bound after the
    instruction on every path, when that is also the set bound on some path (else None):
    then which frame slots are non-NULL is known without asking the frame."""

    __slots__ = ("slots", "flow", "plans")

    def __init__(self, code: types.CodeType):
        cells = set(code.co_cellvars) | set(code.co_freevars)
        n = (len(code.co_varnames) + len(set(code.co_cellvars) - set(code.co_varnames))
             + len(code.co_freevars))
        # (slot number, name, a cell or free variable: never NULL in a started frame)
        self.slots = tuple((i, code._varname_from_oparg(i), code._varname_from_oparg(i) in cells)
                           for i in range(n))
        try:
            self.flow = _flow(code, cells)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            self.flow = None
        self.plans: dict = {}

    def plan(self, lasti: int):
        """For a generator suspended at ``lasti``: (how many locals slots are non-NULL, a
        function picking the live ones out of them) when the bound set is static there, else
        None (the caller asks f_locals)."""
        got = self.plans.get(lasti, _UNSET)
        if got is _UNSET:
            got = None
            flow = self.flow.get(lasti) if self.flow is not None else None
            if flow is not None and flow[1] is not None:
                live, bound = flow
                keep = []
                k = 0
                for i, _name, cell in self.slots:
                    if cell or i in bound:
                        if cell or i in live:
                            keep.append(k)
                        k += 1
                if not keep:
                    pick = _nothing
                elif len(keep) == 1:
                    one = operator.itemgetter(keep[0])
                    pick = lambda refs: (one(refs),)   # noqa: E731
                else:
                    pick = operator.itemgetter(*keep)
                got = (k, pick)
            self.plans[lasti] = got
        return got


def _nothing(refs) -> tuple:
    return ()


class _Flow:
    """The result of _flow: per instruction, bit sets of plain local slots."""

    __slots__ = ("at", "live", "must", "may", "nv", "done")

    def __init__(self, at, live, must, may, nv):
        self.at, self.live, self.must, self.may, self.nv = at, live, must, may, nv
        self.done: dict = {}

    def get(self, offset: int):
        """(live after the instruction at ``offset``, bound after it or None), or None for
        an offset that is no instruction."""
        got = self.done.get(offset, _UNSET)
        if got is _UNSET:
            i = self.at.get(offset)
            got = None
            if i is not None:
                bits = range(self.nv)
                live = frozenset(b for b in bits if self.live[i] >> b & 1)
                must, may = self.must[i], self.may[i]
                bound = frozenset(b for b in bits if must >> b & 1) if must == may else None
                got = (live, bound)
            self.done[offset] = got
        return got


def _flow(code: types.CodeType, cells: set) -> _Flow:
    """Data flow over the bytecode, per instruction: the plain local slots live after it,
    and those bound after it on every path and on some path.

    Liveness is backward: a slot is live after an instruction if some path from there reads
    it (LOAD_FAST, or DELETE_FAST, which needs the binding) before a STORE_FAST writes it.
    Binding is forward from the arguments: STORE_FAST binds, DELETE_FAST unbinds; a slot is
    bound on every path (must) or on some path (may). Exception handlers count as successors
    of every instruction they cover, from the state before and after it. An opcode that
    touches a local in a way not listed here raises TypeError (the caller then keys every
    local)."""
    instrs = list(dis.get_instructions(code))
    count = len(instrs)
    at = {ins.offset: i for i, ins in enumerate(instrs)}
    nv = len(code.co_varnames)
    slot = {name: i for i, name in enumerate(code.co_varnames)}
    plain = 0
    for i, name in enumerate(code.co_varnames):
        if name not in cells:
            plain |= 1 << i
    handlers = dis._parse_exception_table(code)
    succ: list = [None] * count
    preds: list = [[] for _ in range(count)]    # (pred, the edge also leaves its state before)
    gen = [0] * count        # liveness: used (read before any write in the instruction)
    killb = [0] * count      # liveness: written
    setb = [0] * count       # binding: bound by the instruction
    clrb = [0] * count       # binding: unbound by the instruction
    for i, ins in enumerate(instrs):
        name = ins.opname
        s = []
        if name not in _NO_FALLTHROUGH and i + 1 < count:
            s.append(i + 1)
        if ins.opcode in _JUMPS:
            s.append(at[ins.argval])
        for h in handlers:
            if h.start <= ins.offset < h.end:
                j = at[h.target]
                s.append(j)
                preds[j].append((i, True))
        succ[i] = s
        for j in s:
            preds[j].append((i, False))
        if "FAST" in name:
            bit = 1 << slot[ins.argval]
            if name == "STORE_FAST":
                killb[i] = setb[i] = bit
            elif name == "DELETE_FAST":
                gen[i] = clrb[i] = bit
            elif name in _USES:
                gen[i] = bit
            else:
                raise TypeError(f"flow: unknown opcode {name}")
        elif "DEREF" in name or name in ("LOAD_CLOSURE", "MAKE_CELL"):
            if ins.argval not in cells:
                raise TypeError(f"flow: {name} of a plain local")
    # backward liveness, a worklist over bit sets
    live_in = [0] * count
    live_out = [0] * count
    work = list(range(count))
    queued = [True] * count
    while work:
        i = work.pop()
        queued[i] = False
        out = 0
        for j in succ[i]:
            out |= live_in[j]
        live_out[i] = out
        inn = (out & ~killb[i]) | gen[i]
        if inn != live_in[i]:
            live_in[i] = inn
            for p, _ in preds[i]:
                if not queued[p]:
                    queued[p] = True
                    work.append(p)
    # forward binding from the entry: the arguments are bound; unreached: must = every slot
    flags = code.co_flags
    nargs = (code.co_argcount + code.co_kwonlyargcount + bool(flags & 0x04)
             + bool(flags & 0x08))
    entry = ((1 << nargs) - 1) & plain
    top = (1 << nv) - 1
    must_in = [top] * count
    may_in = [0] * count
    must_out = [top] * count
    may_out = [0] * count
    reached = [False] * count
    changed = True
    while changed:                      # sweeps in program order until nothing changes
        changed = False
        for i in range(count):
            if i == 0:
                must, may, seen = entry, entry, True
            else:
                must, may, seen = top, 0, False
            for p, before in preds[i]:
                if reached[p]:
                    seen = True
                    must &= must_out[p]
                    may |= may_out[p]
                    if before:
                        must &= must_in[p]
                        may |= may_in[p]
            if not seen:
                continue
            mo = (must & ~clrb[i]) | setb[i]
            yo = (may & ~clrb[i]) | setb[i]
            if not reached[i] or (must, may, mo, yo) != (must_in[i], may_in[i], must_out[i],
                                                         may_out[i]):
                reached[i] = True
                must_in[i], may_in[i], must_out[i], may_out[i] = must, may, mo, yo
                changed = True
    return _Flow(at, live_out, [m & plain for m in must_out], [m & plain for m in may_out], nv)


#: False: key every bound local of a frame, dead or not (the finer key the tests compare the
#: search against; clear _LAYOUT after changing it)
LIVE_LOCALS_ONLY = True


def _layout(code: types.CodeType) -> _Layout:
    """The layout of ``code``, made once per code object: ``_LAYOUT`` is keyed by id()
    (hashing a code object hashes its contents, every time) and keeps the code object
    alive beside its layout, so the id cannot be reused."""
    got = _LAYOUT.get(id(code))
    if got is None or got[0] is not code:
        lay = _Layout(code)
        if not LIVE_LOCALS_ONLY:
            lay.flow = None
        got = _LAYOUT[id(code)] = (code, lay)
    return got[1]


def _frame_slots(g) -> tuple:
    """(f_lasti, the live locals, the value stack) of a suspended generator ``g``: what of
    its frame its future depends on. Read with gc.get_referents, which lists gi_code,
    gi_name, gi_qualname, [frame], [f_locals], f_func, f_code, then every non-NULL frame
    slot: the locals (cells and free variables always; a plain local when bound), then the
    value stack (a ``for`` loop's iterator, the sub-generator of a ``yield from``). Where
    the bytecode fixes which plain locals are bound (_Layout.plan), the live values are
    picked by position; elsewhere f_locals tells which are bound and each live local is
    written with its slot number."""
    fr = g.gi_frame
    return _slots(g, fr, fr.f_lasti, gc.get_referents(g))[:3]


def _slots(g, fr, lasti: int, refs: list) -> tuple:
    """_frame_slots from the frame's referents, plus whether the plan was static (then the
    result is a function of ``lasti`` and ``refs`` alone)."""
    code = g.gi_code
    got = _LAYOUT.get(id(code))
    lay = got[1] if got is not None and got[0] is code else _layout(code)
    plan = lay.plans.get(lasti, _UNSET)
    if plan is _UNSET:
        plan = lay.plan(lasti)
    k = refs.index(code, 1) + 1          # after f_code (the names before it are strings)
    if plan is not None:
        n, pick = plan
        slots = refs[k:]
        return lasti, pick(slots), tuple(slots[n:]), True
    bound = fr.f_locals
    flow = lay.flow.get(lasti) if lay.flow is not None else None
    live = flow[0] if flow is not None else None
    out = []
    for i, name, cell in lay.slots:
        if cell or name in bound:
            if cell or live is None or i in live:
                out.append((i, refs[k]))
            k += 1
    return lasti, ("dyn",) + tuple(out), tuple(refs[k:]), False


_UNSET = ("<unset>",)


class _Encoder:
    """One traversal: the canonical, hashable serialisation of an object graph."""

    __slots__ = ("memo", "keep", "stamps", "revoked")

    def __init__(self, revoked: dict):
        self.memo: dict[int, int] = {}   # id(obj) -> first-visit number (lookup only)
        self.keep: list = []             # the visited objects, alive while ids are in use
        self.stamps: list = []           # Stamps in traversal order
        self.revoked = revoked           # the machine's revoked_at (_observed_relation)

    def _first(self, x) -> tuple | None:
        i = self.memo.get(id(x))
        if i is not None:
            return ("@", i)
        self.memo[id(x)] = len(self.keep)
        self.keep.append(x)
        return None

    def enc(self, x):
        t = type(x)
        if t in _ATOMS:
            return x
        if t in _STAMPS:
            self.stamps.append(x)
            return t
        if t is tuple:
            return tuple([self.enc(e) for e in x])
        if issubclass(t, tuple) and hasattr(t, "_fields"):     # NamedTuple: immutable value
            return (t,) + tuple([self.enc(e) for e in x])
        ref = self._first(x)
        if ref is not None:
            return ref
        enc = self.enc
        if t is list:
            return ("L",) + tuple([enc(e) for e in x])
        if t is dict:
            return ("D",) + tuple([(enc(k), enc(v)) for k, v in x.items()])
        if t is types.GeneratorType:
            return self._gen(x)
        if t is types.FunctionType:
            cells = tuple(self._cell(c) for c in (x.__closure__ or ()))
            return ("F", x.__code__, cells, enc(x.__defaults__), enc(x.__kwdefaults__))
        if t is types.MethodType:
            return ("M", enc(x.__func__), enc(x.__self__))
        if t is types.CellType:
            return self._cell_contents(x)   # (memoised above: _cell would find it)
        if t in _ITERATORS:
            return ("I", t, enc(x.__reduce__()))
        if isinstance(x, BaseException):
            return ("E", t, enc(x.args))
        if isinstance(x, (int, str, float)):   # a subclass of an atom (a Last label)
            return (t, t.__mro__[-2](x))
        if t in (set, frozenset, bytearray):
            raise TypeError(f"exhaust: cannot snapshot a {t.__name__} (the model keeps lists "
                            "and int-keyed dicts, whose order is defined)")
        names, has_dict, skip = _fields(t)
        if not names and not has_dict:
            raise TypeError(f"exhaust: cannot snapshot {t.__module__}.{t.__qualname__}")
        out = [t]
        for n in names:
            if n not in skip:
                out.append(enc(getattr(x, n, _UNSET)))
        if has_dict:
            out.extend((k, enc(v)) for k, v in x.__dict__.items() if k not in skip)
        if REDUCED_NOTES and isinstance(x, Task):
            out.append(("observed", _observed_relation(x, self.revoked)))
        return tuple(out)

    def _cell(self, c):
        ref = self._first(c)
        if ref is not None:
            return ref
        return self._cell_contents(c)

    def _cell_contents(self, c):
        try:
            return ("C", self.enc(c.cell_contents))
        except ValueError:
            return ("C",)

    def _gen(self, g):
        if g.gi_frame is None:
            return ("G",)                      # finished
        lasti, local, stack = _frame_slots(g)
        return ("G", g.gi_code, lasti, self.enc(local), self.enc(stack))


def _ref(*tag):
    """The callable named in every reduction the key pickler writes (never called: a key is
    never unpickled)."""
    raise AssertionError("snapshot keys are not meant to be loaded")


_INTERNED: dict = {}   # id(code object or class) -> (it, a small int), per process


def _intern(x) -> int:
    """A small number for a code object or a class, first come first numbered. Keyed by
    id() with the object kept alive beside its number: hashing a code object hashes its
    contents every time, and two equal code objects (the same text at the same line of two
    modules) are still two functions with their own globals."""
    got = _INTERNED.get(id(x))
    if got is None or got[0] is not x:
        got = _INTERNED[id(x)] = (x, len(_INTERNED))
    return got[1]


_STAMPS_SEEN: list = []   # the Stamps of the key being written, in traversal order
_FNS: dict = {}           # id(function) -> its _Fn, for the key being written


_STAMP_KIND = {Tick: 0, Version: 1}
_STAMP_RED = {t: (_ref, ("S", k)) for t, k in _STAMP_KIND.items()}
_FT = types.FunctionType


def _reduce_stamp(s):
    t = type(s)
    _STAMPS_SEEN.append((_STAMP_KIND[t], int(s)))
    return _STAMP_RED[t]


class _Fn:
    """A function met in a frame or a cell, as the key writes it (pickle writes every
    function by its global name, before any table is asked; a lambda has none). One per
    function and key (``_FNS``), so that aliasing stays in the key."""

    __slots__ = ("f",)

    def __init__(self, f):
        self.f = f


def _fn(f) -> _Fn:
    w = _FNS.get(id(f))
    if w is None:
        w = _FNS[id(f)] = _Fn(f)
    return w


def _no_functions_dyn(local: tuple) -> tuple:
    """_no_functions for the ("dyn", (slot, value), ...) form of _slots: the functions are
    the pairs' values (left as they are, pickle would fail on a lambda, and the key would
    take the slow path)."""
    if not any(type(p[1]) is _FT for p in local[1:]):
        return local
    return (local[0],) + tuple([(i, _fn(v)) if type(v) is _FT else (i, v) for i, v in local[1:]])


def _no_functions(values: tuple) -> tuple:
    """``values`` with each function in it replaced by its _Fn."""
    if _FT not in map(type, values):
        return values
    return tuple([_fn(v) if type(v) is _FT else v for v in values])


_FINISHED = (_ref, ("G",))
_GENS: dict = {}   # the generator reductions of the run being keyed (Run._key_gens)
_TRUSTED: set = set()   # ids of its generators that did not run since its last key
_REVOKED: dict = {}     # its machine's revoked_at (_observed_relation)


def _reduce_gen(g):
    """A suspended generator as its code, f_lasti and live slots (_frame_slots). The
    reduction is a function of f_lasti and of the frame's referents alone when its plan is
    static, so it is kept per run (``_GENS``) and reused while f_lasti and every referent
    are the same objects as when it was made: a generator that did not run since (every
    CPU but the one that stepped) costs one get_referents and an identity compare, and
    none at all when snapshot_key knows it did not run (``_TRUSTED``: a frame's f_lasti and
    referents change only while it runs)."""
    fr = g.gi_frame
    if fr is None:
        return _FINISHED                        # finished
    got = _GENS.get(id(g))
    if got is not None and id(g) in _TRUSTED:
        return got[3]
    lasti = fr.f_lasti
    refs = gc.get_referents(g)
    if (got is not None and got[1] == lasti and len(got[2]) == len(refs)
            and all(map(operator.is_, got[2], refs))):
        return got[3]
    lasti, local, stack, static = _slots(g, fr, lasti, refs)
    nlocal = _no_functions(local) if static else _no_functions_dyn(local)
    nstack = _no_functions(stack)
    red = (_ref, ("G", _intern(g.gi_code)), (lasti, nlocal, nstack))
    if static and nlocal is local and nstack is stack:   # (an _Fn is one key's)
        _GENS[id(g)] = (g, lasti, refs, red)
    elif got is not None:
        del _GENS[id(g)]                        # (so that a kept one is always current)
    return red


def _reduce_fn(w):
    f = w.f
    return (_ref, ("F",), (_intern(f.__code__), f.__closure__, f.__defaults__,
                           f.__kwdefaults__))


def _reduce_cell(c):
    try:
        v = c.cell_contents
    except ValueError:
        return (_ref, ("C-",))
    return (_ref, ("C",), (_fn(v) if type(v) is _FT else v,))


def _reduce_code(c):
    return (_ref, ("K", _intern(c)))


#: pickle's own reduction, as it would make it for a type the table does not name
_NATIVE = operator.methodcaller("__reduce_ex__", 5)


def _reduce_iterator(it):
    """An iterator (a ``for`` loop's, on a frame's value stack) as its own ``__reduce__``
    with the callable in it (``builtins.iter``, a type) numbered instead of written by
    name: pickle names a global by importing its module, every time it meets it first in
    a dump."""
    red = it.__reduce__()
    return (_ref, ("I", _intern(red[0])), red[1:])

_DISPATCH = {Tick: _reduce_stamp, Version: _reduce_stamp, types.GeneratorType: _reduce_gen,
             _Fn: _reduce_fn, types.CellType: _reduce_cell, types.CodeType: _reduce_code}


def _reducer_for(t):
    """The reduction of objects of type ``t`` (built once per type): generators, closures,
    cells, code and Stamps by the functions above; slotted and ``__dict__`` objects as their
    class number plus field values in declared order (SKIP_FIELDS left out), which is
    cheaper than object.__reduce_ex__ (it looks up __getnewargs__ and more, and fails);
    pickle's own reduction for iterators, exceptions, str and int subclasses. (Lists, dicts,
    tuples, str, functions and classes never get here: pickle writes them before it asks
    the table.)"""
    fn = _DISPATCH.get(t)
    if fn is not None:
        return fn
    if issubclass(t, type):
        return lambda x: (_ref, ("T", _intern(x)))
    if issubclass(t, tuple) and hasattr(t, "_fields"):
        tag = ("N", _intern(t))
        return lambda x: (_ref, tag + tuple(x))
    if t in _ITERATORS:
        return _reduce_iterator
    if t in _ATOMS or issubclass(t, (BaseException, int, str, float, bytes, list, dict,
                                         tuple)):
        return _NATIVE
    if t in (set, frozenset, bytearray):
        raise TypeError(f"exhaust: cannot snapshot a {t.__name__} (the model keeps lists "
                        "and int-keyed dicts, whose order is defined)")
    names, has_dict, skip = _fields(t)
    if not names and not has_dict:
        raise TypeError(f"exhaust: cannot snapshot {t.__module__}.{t.__qualname__}")
    tag = ("O", _intern(t))
    keep = tuple(n for n in names if n not in skip)
    getter = operator.attrgetter(*keep) if keep else (lambda x: ())
    if len(keep) == 1:
        one = getter
        getter = lambda x: (one(x),)   # noqa: E731
    if REDUCED_NOTES and issubclass(t, Task):
        if has_dict:
            raise TypeError(f"exhaust: cannot snapshot {t.__qualname__}: a Task with a __dict__")
        return lambda x: (_ref, tag, (getter(x), _observed_relation(x, _REVOKED)))
    if not has_dict:
        return lambda x: (_ref, tag, getter(x))
    return lambda x: (_ref, tag, (getter(x), tuple([(k, v) for k, v in x.__dict__.items()
                                                   if k not in skip])))


def _learn(x):
    """The reduction of an object whose type the table has not seen: its type's reducer is
    made (``_reducer_for``), stored and applied."""
    fn = _REDUCERS[type(x)] = _reducer_for(type(x))
    return fn(x)


#: type -> its reduction, made on first use. A defaultdict is a dict to pickle's C lookup
#: (``PyObject_GetItem`` on a dict subclass with a Python ``__missing__`` goes through a
#: Python-level ``__getitem__`` lookup on every object; a defaultdict's hit is the plain
#: dict lookup, and its miss stores ``_learn``, which replaces itself by the type's reducer)
_REDUCERS: collections.defaultdict = collections.defaultdict(lambda: _learn)


class _KeyPickler(pickle.Pickler):
    """pickle's C serialiser as the canonical encoder: its memo writes a second reference to
    an object as a back-reference to the first (aliasing is in the key), objects are written
    field by field in slot then ``__dict__`` order, lists and dicts in order; the reducers
    above (its ``dispatch_table``, asked in C) add generators, closures, cells and Stamps.
    Extra distinctions (pickle also memoises equal strings that are distinct objects) only
    cost merging, never soundness."""

    dispatch_table = _REDUCERS


_BUF = io.BytesIO()     # one output buffer and one pickler, reused by every key (memo cleared)
_PICKLER: _KeyPickler | None = None


def snapshot_key(run: Run, extra=()) -> tuple:
    """The canonical key of ``run``'s state (see the module docstring): equal keys, equal
    futures. ``extra`` is appended as is (the search adds each program's position)."""
    global _PICKLER
    buf = _BUF
    buf.seek(0)
    buf.truncate()
    del _STAMPS_SEEN[:]
    _FNS.clear()
    global _GENS, _REVOKED
    _REVOKED = run.m.revoked_at
    d = run.__dict__
    gens = d.get("_key_gens")
    if gens is None:
        gens = run._key_gens = {}
    _GENS = gens
    # the kernel tasks of CPUs that did not run since the run's last key (SearchRun keeps
    # track) are the same objects in the same state: their generators are trusted
    trusted = _TRUSTED
    trusted.clear()
    tasks = [c.task for c in run.m.cpus]
    ran = d.get("_ran")
    last = d.get("_key_tasks")
    if ran is not None and last is not None:
        for i, t in enumerate(tasks):
            if t is not None and t is last[i] and i not in ran:
                g = t.gen
                while type(g) is types.GeneratorType:
                    trusted.add(id(g))
                    g = g.gi_yieldfrom
    if isinstance(run, SearchRun):
        run._key_tasks = tasks
        run._ran = set()
    try:
        if _PICKLER is None:
            _PICKLER = _KeyPickler(buf, protocol=5)
        _PICKLER.clear_memo()
        _PICKLER.dump(run.kernel)
    except (pickle.PicklingError, AttributeError):
        _PICKLER = None                         # (its state after a failed dump is unknown)
        if isinstance(run, SearchRun):
            run._key_tasks = None               # (the kept reductions were not checked)
        return snapshot_key_slow(run, extra)    # an object pickle cannot name, an unset
                                                # slot: the slow path
    finally:
        _FNS.clear()
    ranks = ()
    if _STAMPS_SEEN:
        # each Stamp's rank among the distinct (kind, value) pairs of the state: kinds sort
        # apart, so this is its rank within its kind plus the number of distinct Stamps of
        # the kinds before it, and the bytes say which kind each one is; equal ranks here
        # exactly when the ranks within each kind are equal
        order = {v: i for i, v in enumerate(sorted(set(_STAMPS_SEEN)))}
        ranks = tuple([order[v] for v in _STAMPS_SEEN])
    return (buf.getvalue(), ranks, extra)


def snapshot_key_slow(run: Run, extra=()) -> tuple:
    """The same key computed by the pure-Python encoder (used where pickle cannot name an
    object, e.g. a class local to a function; the tests check the two agree on equality)."""
    e = _Encoder(run.m.revoked_at)
    body = e.enc(run.kernel)
    ranks = ()
    if e.stamps:
        kinds: dict = {}
        for s in e.stamps:
            kinds.setdefault(type(s), set()).add(int(s))
        order = {t: {v: i for i, v in enumerate(sorted(vals))} for t, vals in kinds.items()}
        ranks = tuple([order[type(s)][int(s)] for s in e.stamps])
    return ("slow", body, ranks, extra)


# -------------------------------------------------------------------- search --------------
@dataclass(slots=True)
class _Node:
    path: list          # every action applied from the initial state, probes included
    sched: list         # the schedule: the path without its probes
    pcs: tuple          # per CPU (in sorted CPU order), program actions consumed
    current: int | None
    preempts: int
    flushing: bool
    run: Run | None = None   # the live run in this state, if no other use consumed it
    spares: list | None = None   # more live runs in this state (reached by other paths)
    need: int = 0            # runs its expansion takes beyond ``run``: spares kept at most
    key: tuple | None = None  # its key while ``visited`` names it (it may take spares)
    cands: list | None = None  # its choices, found when it was admitted


def _ipi_flushes_nothing(run: Run, cpu: int, rest) -> bool:
    """The oldest IPI pending on ``cpu`` flushes nothing now (no cached entry of its mm in its
    range) and nothing later (no access left in ``rest``, the CPU's remaining program, could
    fill one). Kernel code never reads another CPU's TLB, no property reads IPI queues, so
    delivering it at once instead of later changes no reachable state apart from the queue,
    and an earlier delivery only enables the waiting flusher sooner: every behaviour of the
    late delivery is also one of the early one. So it is a forced move, not a choice."""
    c = run.m.cpus[cpu]
    req = c.ipi_queue[0]

    def hit(vpn: int) -> bool:
        return req.full or req.start <= vpn < req.end
    for k in c.tlb:
        if k >> 32 == req.mm_id and hit(k & 0xffffffff):
            return False
    if c.mm_id == req.mm_id:
        for a in rest:
            if a[0] == "access" and hit(a[2]):
                return False
    return True


def exhaust(kernel_cls, world: dict, programs: dict, preemptions_max: int | None = None,
            states_max: int = 200_000, stop_at_first: bool = True,
            reduce_ipis: bool = True) -> ExhaustResult:
    """Search every interleaving of ``programs`` in ``world`` (with at most
    ``preemptions_max`` preemptions if given), breadth-first over distinct states. Stops at the
    first (shortest) violation unless ``stop_at_first`` is False (then it counts every
    violating leaf and returns the first one found)."""
    progs = _check_programs(programs)
    cpus = sorted(progs)
    index = {c: i for i, c in enumerate(cpus)}
    bounded = preemptions_max is not None
    res = ExhaustResult(None, None, 0, 0, False, preemptions_max=preemptions_max)
    t0 = time.perf_counter()
    # key -> the node admitted with it while it waits for its expansion (None after, or for
    # a leaf): a duplicate's live run is a spare copy of that node's state
    visited: dict = {}

    def replay(path: list) -> Run:
        run = SearchRun(kernel_cls, world)
        run.replay(path)
        res.replayed += len(path)
        res.replays += 1
        return run

    def key(run: Run, node: _Node) -> tuple:
        extra = (node.pcs, node.current, node.preempts, node.flushing) if bounded else node.pcs
        return snapshot_key(run, extra)

    def admit(k, run: Run) -> bool:
        """Store a new state's key; for a known one, keep ``run`` as a spare of the waiting
        node with that key (equal keys, equal futures: any run in the state serves its
        expansion as well as a replay of the node's own path would)."""
        if k in visited:
            other = visited[k]
            if other is not None and other.need:
                if other.spares is None:
                    other.spares = []
                other.spares.append(run)
                other.need -= 1
                res.spared += 1
            return False
        visited[k] = None
        res.states = len(visited)
        if res.states >= states_max:
            res.truncated = True
            raise _Stop
        return True

    def done(run: Run, pcs: tuple) -> bool:
        return not run.busy() and all(pcs[index[c]] >= len(progs[c]) for c in cpus)

    def record(node: _Node, v: Violation, phase: str) -> None:
        res.interleavings += 1
        res.violations += 1
        res.props[v.prop] = res.props.get(v.prop, 0) + 1
        if res.violation is None:
            res.violation, res.phase = v, phase
            res.schedule = [list(a) for a in node.sched]
            res.path = [list(a) for a in node.path]
            res.shortest = [list(a) for a in node.sched]
        if stop_at_first:
            raise _Stop

    def candidates(run: Run, node: _Node) -> list:
        current = node.current
        order = ([current] if current is not None else []) + [c for c in cpus if c != current]
        out = []
        for cpu in order:
            c = run.m.cpus[cpu]
            if c.task is not None:
                if c.task.wait is None or c.task.wait.cond():
                    out.append(["step", cpu])
            else:
                pc = node.pcs[index[cpu]]
                # a program action the run refuses now (a fork whose child CPU is taken, an
                # access on a CPU whose process exited) is not a choice here
                if pc < len(progs[cpu]) and run.enabled(progs[cpu][pc]):
                    out.append(progs[cpu][pc])
        out.extend(["ipi", cpu] for cpu in run.ipi_cpus())
        return out

    def invisible_ipi(run: Run, pcs: tuple, cpu: int) -> bool:
        """See ``_ipi_flushes_nothing`` (and the module docstring)."""
        rest = progs[cpu][pcs[index[cpu]]:] if cpu in index else ()
        return _ipi_flushes_nothing(run, cpu, rest)

    def queued(run: Run) -> int:
        return sum(len(c.ipi_queue) for c in run.m.cpus)

    buckets: dict[int, list] = {}

    def push(node: _Node) -> None:
        buckets.setdefault(len(node.sched), []).append(node)

    def expand(node: _Node, level: list) -> None:
        run = node.run if node.run is not None else replay(node.path)
        node.run = None
        spares = node.spares or []
        node.spares = None
        node.need = 0
        if node.key is not None:
            visited[node.key] = None
        cands = node.cands if node.cands is not None else candidates(run, node)
        node.cands = None
        if not cands and not run.busy():
            # every task returned and what is left of the programs can never run (their CPU
            # has no process any more): a complete interleaving
            res.interleavings += 1
            v = run.quiesce()
            if v is not None:
                record(node, v, "step" if run.violation is not None else "quiescence")
            return
        if not cands:
            waits = {c.cpu_id: c.task.wait.what for c in run.m.cpus if c.task and c.task.wait}
            raise run.fail(ModelError(f"exhaust: deadlock, every operation waits: {waits}"))
        fresh = True
        can_continue = False
        current = node.current
        for a in cands:
            is_ipi = a[0] == "ipi"
            cost = 0
            if bounded:
                cost = int(not is_ipi and current is not None and a[1] != current
                           and can_continue)
                if node.preempts + cost > preemptions_max:
                    res.pruned += 1
                    continue
            if not fresh:
                if spares:
                    run = spares.pop()
                    run.actions = list(node.path)   # (what Run.fail reports)
                else:
                    run = replay(node.path)
            fresh = False
            before = queued(run)
            step = run.apply(a)
            if step is None:   # a blocked lock attempt is a recorded step (Run._step_task)
                raise run.fail(ModelError(f"exhaust: {a} was offered but is not enabled"), a)
            res.transitions += 1
            if not is_ipi and a[1] == current and not node.flushing:
                can_continue = True
            pcs = node.pcs
            if a[0] in PROGRAM_KINDS:
                pcs = list(pcs)
                pcs[index[a[1]]] += 1
                pcs = tuple(pcs)
            child = _Node(node.path + [a], node.sched + [a], pcs,
                          current if is_ipi else a[1], node.preempts + cost,
                          node.flushing if is_ipi else (a[0] == "step" and queued(run) > before))
            if run.violation is not None:
                record(child, run.violation, "step")
                continue
            if reduce_ipis:
                while True:
                    quiet = [c for c in run.ipi_cpus() if invisible_ipi(run, child.pcs, c)]
                    if not quiet:
                        break
                    f = ["ipi", quiet[0]]
                    run.apply(f)
                    child.path.append(f)
                    child.sched.append(f)
                    res.forced += 1
                    res.transitions += 1
                if run.violation is not None:   # cannot happen (see invisible_ipi); kept honest
                    record(child, run.violation, "step")
                    continue
            k = key(run, child)
            if not admit(k, run):
                continue
            if done(run, child.pcs):
                res.interleavings += 1
                v = run.quiesce()
                if v is not None:
                    record(child, v, "step" if run.violation is not None else "quiescence")
                continue
            child.run = run
            # the runs its expansion will take: one per choice (the bound may prune some)
            child.cands = candidates(run, child)
            child.need = len(child.cands) - 1
            if child.need > 0:
                child.key = k
                visited[k] = child
            push(child)

    # the search keeps thousands of live runs (each a cyclic object graph) and keys: the
    # collector's default thresholds would re-scan them hundreds of times (a young
    # generation of 100,000 objects: each collection scans what is still alive of it, so a
    # larger one scans fewer of the short-lived objects a key or a replay makes)
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        root = _Node([], [], tuple(0 for _ in cpus), None, 0, False)
        run = replay([])
        admit(key(run, root), run)
        if done(run, root.pcs):
            res.interleavings += 1
            v = run.quiesce()
            if v is not None:
                record(root, v, "step" if run.violation is not None else "quiescence")
        else:
            push(root)
        while buckets:
            d = min(buckets)
            level = buckets.pop(d)
            i = 0
            while i < len(level):
                expand(level[i], level)
                i += 1
            res.depth = d
    except _Stop:
        pass
    finally:
        gc.set_threshold(*thresholds)
    res.elapsed_s = time.perf_counter() - t0
    return res


def exhaust_dfs(kernel_cls, world: dict, programs: dict, preemptions_max: int = 2,
            states_max: int = 200_000, stop_at_first: bool = True,
            reduce_ipis: bool = True) -> ExhaustResult:
    """The stateless search this module had before the stateful one (kept as the reference
    the tests compare against): depth-first, no visited set, a path replayed before each
    sibling. Search every interleaving of ``programs`` in ``world`` with at most ``preemptions_max``
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
            elif pcs[cpu] < len(progs[cpu]) and run.enabled(progs[cpu][pcs[cpu]]):
                out.append(progs[cpu][pcs[cpu]])
        out.extend(["ipi", cpu] for cpu in run.ipi_cpus())
        return out

    def invisible_ipi(run: Run, pcs: dict, cpu: int) -> bool:
        if not reduce_ipis:
            return False
        return _ipi_flushes_nothing(run, cpu, progs[cpu][pcs[cpu]:])

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


def exhaust_cx(cx, kernel: str | None = None, dfs: bool = False, **kw) -> ExhaustResult:
    """exhaust() over a counterexample's scenario, on its own kernel or on ``kernel``;
    ``dfs=True`` runs the stateless exhaust_dfs instead (it needs ``preemptions_max``)."""
    from .kernels import resolve_kernel
    world, programs = scenario_from(cx)
    search = exhaust_dfs if dfs else exhaust
    return search(resolve_kernel(kernel or cx.kernel), world, programs, **kw)
