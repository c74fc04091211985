from __future__ import annotations

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, precondition, rule,
                                 run_state_machine_as_test)

from mmfuzz.explore import GATHERS, syscall_action
from mmfuzz.hw import STORE_SAME
from mmfuzz.kernel import Mainline
from mmfuzz.model import tlb_key
from mmfuzz import ops as _ops
from mmfuzz.run import ModelFailure, Run

from .determinism import no_source_constants
from .profiles import database_key


class PropertyViolated(AssertionError):
    pass


BURSTS = st.integers(1, 8)
#: the kind of a user access: a store or a load, and in one store of ten (as
#: mmfuzz.explore.STORE_SAME_SHARE) a store of the value the page holds (hw.STORE_SAME);
#: shrinks toward a store
ACCESS_KINDS = st.sampled_from((1, 0) * 9 + (STORE_SAME,))
SYSCALLS = _ops.names()   # every operation the model declares, in mmfuzz.ops order


#: mmu_gather limits, shrinking toward the real ones (mmfuzz.explore.GATHERS: real, tiny, and
#: two in between that make a zap span several batches)
GATHER_CHOICES = (GATHERS[0], GATHERS[1], GATHERS[0], GATHERS[1], GATHERS[2], GATHERS[3])
#: an extra shape is drawn in one world of six, and shrinks away
RARE = (False, False, False, False, False, True)


@st.composite
def worlds(draw):
    """A small world drawn by Hypothesis; it shrinks toward 2 CPUs of one process, a 2-page
    file, 2 PTEs per table and the real mmu_gather constants. Rarely (each shrinks away) a
    second VMA of the file in the first process at another pgoff, and a second file."""
    ncpus = draw(st.sampled_from((2, 3)))
    two_mm = ncpus == 3 and draw(st.booleans())
    cpu_mm = [1, 1, 2] if two_mm else [1] * ncpus
    ptrs = draw(st.sampled_from((2, 4)))
    npages = draw(st.integers(2, 4))
    vmas = [{"mm": mm_id, "start": 0, "end": npages, "file": 1, "pgoff": 0, "shared": True,
             "writable": True} for mm_id in sorted(set(cpu_mm))]
    anon_start = ((npages + ptrs - 1) // ptrs) * ptrs
    vmas.append({"mm": 1, "start": anon_start, "end": anon_start + 2, "file": None,
                 "shared": False, "writable": True})
    end = anon_start + 2
    gather = dict(draw(st.sampled_from(GATHER_CHOICES)))
    files = [{"id": 1, "npages": npages}]
    if draw(st.sampled_from(RARE)):
        length = draw(st.integers(1, 2))
        pgoff = draw(st.integers(0, npages - length))
        vmas.append({"mm": 1, "start": end, "end": end + length, "file": 1, "pgoff": pgoff,
                     "shared": True, "writable": True})
        end += length
    if draw(st.sampled_from(RARE)):
        n2 = draw(st.integers(1, 2))
        files.append({"id": 2, "npages": n2})
        vmas.append({"mm": 1, "start": end, "end": end + n2, "file": 2, "pgoff": 0,
                     "shared": True, "writable": True})
        end += n2
    pages = sorted({vpn for v in vmas for vpn in range(v["start"], v["end"])})
    prefault = draw(st.lists(st.tuples(st.integers(0, ncpus - 1), st.sampled_from(pages),
                                       st.sampled_from((1, 0))), min_size=0, max_size=3))
    prefault = [p for p in prefault
                if any(v["mm"] == cpu_mm[p[0]] and v["start"] <= p[1] < v["end"] for v in vmas)]
    if draw(st.booleans()):          # a CPU with no process, where a fork places its child
        ncpus += 1
        cpu_mm = cpu_mm + [0]
    if draw(st.booleans()):          # the first process maps the file MAP_PRIVATE
        vmas[0] = dict(vmas[0], shared=False)
    world = {"ncpus": ncpus, "cpu_mm": cpu_mm, "ptrs_per_pte": ptrs,
             "npmds": (end + ptrs - 1) // ptrs, "nframes": 64,
             "files": files, "vmas": vmas, "gather": gather,
             "prefault": [list(p) for p in prefault]}
    # remote flushes stay IPIs here (the fast explorer's worlds are paravirt guests a quarter
    # of the time: explore.HYPERCALL_FLUSH_P); a test or corpus file gives "tlb_flush"
    return world


class MmStateMachine(RuleBasedStateMachine):
    """Operations, steps and hardware events on one simulated machine. ``kernel_cls`` is set
    by machine_for(); ``last_failure`` keeps the world and schedule of the last failing run,
    which after Hypothesis's final replay is the shrunk one."""

    kernel_cls = Mainline
    last_failure: dict | None = None
    steps_total = 0
    runs_total = 0
    first_failure_run: int | None = None
    on_progress = None

    def __init__(self):
        super().__init__()
        self.run: Run | None = None
        self.model_failed = False
        type(self).runs_total += 1

    # ------------------------------------------------------------------ plumbing ------
    def _apply(self, action):
        try:
            step = self.run.apply(action)
        except ModelFailure:
            self.model_failed = True   # teardown must not run the broken machine on
            raise
        if step is None:
            # rules draw only enabled actions (a step that finds its lock taken is a recorded
            # step of its own, not a None), so this is the machine's own bug
            raise AssertionError(f"rule drew a disabled action {action}")
        cls = type(self)
        cls.steps_total += 1
        if cls.on_progress is not None and cls.steps_total % 512 == 0:
            cls.on_progress(cls)
        if self.run.violation is not None:
            self._fail(self.run.violation, self.run.violation_step, "step")

    def _fail(self, v, step, phase):
        if type(self).first_failure_run is None:
            type(self).first_failure_run = type(self).runs_total
        type(self).last_failure = {
            "world": self.run.world,
            "schedule": self.run.schedule_upto(step),
            "violation": v, "step": step, "phase": phase,
        }
        raise PropertyViolated(f"{v.prop}: {v.why}")

    def _idle(self):
        return self.run is not None and bool(self.run.idle_cpus())

    def _idle_process(self):
        return self.run is not None and bool(self.run.idle_process_cpus())

    def _syscalls(self, cpu):
        """The entry points ``cpu`` can start now: a CPU without a process only kernel
        threads; fork only while some CPU has no process."""
        m = self.run.m
        has_proc = m.cpus[cpu].mm_id != 0
        free = any(c.mm_id == 0 and not c.reserved for c in m.cpus)
        return tuple(op for op in SYSCALLS if (has_proc or _ops.get(op).context == "kthread")
                     and (op != "fork" or free))

    def _spans(self, cpu):
        mm_id = self.run.process_origin(cpu)
        return [(v["start"], v["end"]) for v in self.run.world["vmas"] if v["mm"] == mm_id]

    # ------------------------------------------------------------------- rules -------
    @initialize(world=worlds())
    def boot(self, world):
        self.run = Run(type(self).kernel_cls, world)

    @precondition(lambda self: self.run is not None and bool(self.run.runnable_cpus()))
    @rule(data=st.data())
    def schedule_cpu(self, data):
        """The CPU's kernel operation runs for a drawn number of atomic steps (it stops early
        if it blocks or returns). One step is always expressible, and the count shrinks toward
        it; longer runs let one decision carry a whole writeback, and amortise Hypothesis's
        per-rule cost over several model steps."""
        cpu = data.draw(st.sampled_from(tuple(self.run.runnable_cpus())), label="cpu")
        burst = data.draw(BURSTS, label="steps")
        for _ in range(burst):
            if cpu not in self.run.runnable_cpus():
                break
            self._apply(["step", cpu])

    @precondition(lambda self: self.run is not None and bool(self.run.ipi_cpus()))
    @rule(data=st.data())
    def flush_ipi(self, data):
        """A CPU takes a pending TLB-flush IPI (flush_tlb_func)."""
        cpu = data.draw(st.sampled_from(tuple(self.run.ipi_cpus())), label="cpu")
        self._apply(["ipi", cpu])

    @precondition(_idle_process)
    @rule(data=st.data())
    def user_access(self, data):
        """The user thread on an idle CPU loads or stores; a fault enters handle_mm_fault."""
        cpu = data.draw(st.sampled_from(tuple(self.run.idle_process_cpus())), label="cpu")
        lo, hi = data.draw(st.sampled_from(tuple(self._spans(cpu))), label="vma")
        vpn = data.draw(st.integers(lo, hi - 1), label="va")
        write = data.draw(ACCESS_KINDS, label="write")
        self._apply(["access", cpu, vpn, write])

    @precondition(_idle)
    @rule(data=st.data())
    def syscall(self, data):
        """An idle CPU enters the kernel: the entry point (madvise_dontneed, munmap, mmap,
        writeback, drop_cache, clear_refs) is itself a drawn choice, so one rule serves them
        all and Hypothesis does not reject rules whose CPUs are busy."""
        cpu = data.draw(st.sampled_from(tuple(self.run.idle_cpus())), label="cpu")
        op = data.draw(st.sampled_from(self._syscalls(cpu)), label="entry")
        mm_id = self.run.process_origin(cpu) if self.run.m.cpus[cpu].mm_id else None
        action = syscall_action(lambda options, label: data.draw(st.sampled_from(options),
                                                                 label=label),
                                self.run.world, mm_id, cpu, op)
        if self.run.enabled(action):  # a fork's child CPU may be taken
            self._apply(action)

    @precondition(lambda self: self.run is not None and any(c.tlb for c in self.run.m.cpus))
    @rule(data=st.data())
    def tlb_evict(self, data):
        cpus = [c for c in self.run.m.cpus if c.tlb]
        cpu = data.draw(st.sampled_from(cpus), label="cpu")
        key = data.draw(st.sampled_from(sorted(cpu.tlb)), label="entry")
        assert key >> 32 == cpu.mm_id and tlb_key(cpu.mm_id, key & 0xffffffff) == key
        self._apply(["evict", cpu.cpu_id, key & 0xffffffff])

    def teardown(self):
        """The quiescence phase: drain, sync, drop, then the eventual properties."""
        if self.run is None or self.run.violation is not None or self.model_failed:
            return
        v = self.run.quiesce()
        if v is not None:
            step = self.run.violation_step if self.run.violation is not None else None
            self._fail(v, step, "quiescence")


def machine_for(kernel_cls) -> type:
    """A state-machine class bound to one kernel variant (its own counters and last failure)."""
    return type(f"MmStateMachine_{kernel_cls.__name__}", (MmStateMachine,),
                {"kernel_cls": kernel_cls, "last_failure": None, "steps_total": 0,
                 "runs_total": 0, "first_failure_run": None})


def settings_for(max_examples: int, stateful_step_count: int = 60,
                 shrink: bool = True, profile: str | None = None,
                 database_key: str = "") -> settings:
    """Explicit settings: never rely on Hypothesis's automatic `ci` profile, which
    derandomizes and drops the database when CI is set. No example database (counterexamples
    live in corpus/ as JSON), no deadline, no explain phase (it is slow and the trace already
    explains).

    With ``profile`` (dev, pr, nightly: strategies/profiles.py) the settings derive from that
    named profile instead: its database, under keys prefixed by ``database_key`` (the kernel
    and strategy), with the reuse phase first so saved failures are tried again."""
    phases = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if shrink else ())
    if profile is None:
        return settings(max_examples=max_examples, stateful_step_count=stateful_step_count,
                        deadline=None, derandomize=False, database=None, print_blob=False,
                        phases=phases, suppress_health_check=list(HealthCheck),
                        report_multiple_bugs=False)
    from .profiles import KeyedDatabase, campaign_database
    from .profiles import profile as named
    parent = settings.get_profile(named(profile).hypothesis)
    db = KeyedDatabase(campaign_database(profile), database_key)
    phases = (Phase.explicit, Phase.reuse) + phases[1:]
    # derandomize off: a campaign is seeded (the seed decorator), which Hypothesis allows
    # together with a database
    return settings(parent=parent, max_examples=max_examples, derandomize=False,
                    stateful_step_count=stateful_step_count, deadline=None, database=db,
                    print_blob=False, phases=phases, suppress_health_check=list(HealthCheck),
                    report_multiple_bugs=False)


def run_hypothesis(kernel_cls, seed_value: int, max_examples: int,
                   stateful_step_count: int = 60, on_progress=None, polish: bool = True,
                   hypothesis_shrink: bool = True, profile: str | None = None):
    """One Hypothesis campaign. Returns (failure or None, the machine class with its counters).
    Hypothesis's shrinker works on its choice sequence, where a CPU is an index into the CPUs
    enabled at that moment; the schedule shrinker then polishes the result as plain actions.
    With ``hypothesis_shrink`` off only the schedule shrinker runs: Hypothesis's pass has no
    time bound of ours and took 40 s to minutes on some seeds (``mmfuzz fuzz`` turns it off)."""
    s = settings_for(max_examples, stateful_step_count, shrink=hypothesis_shrink,
                     profile=profile, database_key=database_key(kernel_cls, "rules"))
    return _campaign(kernel_cls, machine_for(kernel_cls), seed_value, s, on_progress, polish)


def _campaign(kernel_cls, cls, seed_value: int, s, on_progress, polish: bool):
    """Run machine class ``cls`` as one seeded Hypothesis campaign under settings ``s``:
    (failure or None, cls); a ModelFailure raised inside a rule, an example's search or the
    teardown is not a find and propagates with the campaign's counts."""
    cls.on_progress = on_progress
    seeded = seed(seed_value)(cls)
    try:
        with no_source_constants():
            run_state_machine_as_test(seeded, settings=s)
    except PropertyViolated:
        failure = dict(cls.last_failure)
        return (polish_failure(kernel_cls, failure) if polish else failure), cls
    except ModelFailure as mf:
        mf.info.update(runs=cls.runs_total, steps=cls.steps_total)
        raise
    return None, cls


def polish_failure(kernel_cls, failure: dict) -> dict:
    """The schedule shrinker run on what Hypothesis found: plain actions, shortest it can make
    them; the length Hypothesis reported is kept as hypothesis_len."""
    from mmfuzz.explore import shrink
    world, schedule = shrink(kernel_cls, failure["world"], failure["schedule"],
                             failure["violation"].prop)
    failure.update(world=world, schedule=schedule, hypothesis_len=len(failure["schedule"]))
    return failure


# ------------------------------------------------------- operations as rules ----------
class OpsMachine(RuleBasedStateMachine):
    """The stateful machine in its natural shape: each rule is one operation of the registry
    (mmfuzz/ops.py: a rule per declared operation, built when the class is made, so an
    operation registered later becomes a rule by itself) or a user access, appended to one
    CPU's program. Hypothesis draws, prints and shrinks the mix of operations; the
    interleavings of that mix are explored inside the example, at teardown: ``PCT_TRIES``
    runs of the programs under PCT (explore.PctPolicy.planned: random priorities and change
    points from a generator seeded by the example, so a replay of the example is the same),
    then the stateful exhaust (mmfuzz/exhaust.py) under a small state budget and preemption
    bound. Deliberately no scheduling rule: the schedule is the search's job, not
    Hypothesis's. Measured (seed 11, 60 examples): with the PCT runs
    bug:madv-parallel-flush-miss is found at machine run 67, without them (the search alone)
    not within the 72 runs; pinned in tests/test_hybrid.py."""

    kernel_cls = Mainline
    last_failure: dict | None = None
    runs_total = 0
    steps_total = 0
    first_failure_run: int | None = None
    on_progress = None
    STATES_MAX = 400
    PREEMPTIONS = 1
    PROGRAM_MAX = 2
    #: PCT runs of each example's programs before the search, each at most PCT_STEPS actions
    PCT_TRIES = 8
    PCT_STEPS = 120

    def __init__(self):
        super().__init__()
        self.world = None
        self.programs: dict[int, list] = {}
        type(self).runs_total += 1

    @initialize(world=worlds())
    def boot(self, world):
        self.world = world
        self.programs = {cpu: [] for cpu in range(world["ncpus"])}

    def _free(self, process: bool) -> tuple:
        """CPUs whose program has room; with ``process``, only those running a process (a CPU
        with no process, cpu_mm 0, starts only kernel threads)."""
        return tuple(c for c, p in self.programs.items() if len(p) < self.PROGRAM_MAX
                     and (not process or self.world["cpu_mm"][c] != 0))

    def _room(self, process: bool = False):
        return self.world is not None and bool(self._free(process))

    def _cpu(self, data, process: bool = True):
        return data.draw(st.sampled_from(self._free(process)), label="cpu")

    @precondition(lambda self: self._room(process=True))
    @rule(data=st.data())
    def user_access(self, data):
        cpu = self._cpu(data)
        mm_id = self.world["cpu_mm"][cpu]
        lo, hi = data.draw(st.sampled_from(tuple((v["start"], v["end"]) for v in
                                                 self.world["vmas"] if v["mm"] == mm_id)),
                           label="vma")
        self.programs[cpu].append(["access", cpu, data.draw(st.integers(lo, hi - 1),
                                                            label="va"),
                                   data.draw(ACCESS_KINDS, label="write")])

    @precondition(lambda self: self.world is not None and not self._room())
    @rule()
    def programs_full(self):
        """Every CPU's program is full: nothing more to add (the search runs at teardown)."""

    def teardown(self):
        """The drawn mix's interleavings: first ``PCT_TRIES`` PCT runs of the programs
        (explore.PctPolicy.planned: random CPU priorities and change points, drawn from a
        generator seeded by the example itself, so the example replays), then the stateful
        exhaust under a small state budget and preemption bound."""
        if self.world is None or sum(1 for p in self.programs.values() if p) == 0:
            return
        import random
        from mmfuzz.exhaust import exhaust
        from mmfuzz.explore import PctPolicy, run_policy
        from mmfuzz.kernels import known_open_race
        cls = type(self)
        rng = random.Random(repr((self.world, self.programs)))
        ncpus = self.world["ncpus"]
        for _ in range(cls.PCT_TRIES):
            order = list(range(ncpus))
            rng.shuffle(order)
            change_points = [rng.randrange(cls.PCT_STEPS) for _ in range(rng.choice((0, 1, 1, 2, 3)))]
            pol = PctPolicy.planned(self.world, order, change_points,
                                    [self.programs[c] for c in range(ncpus)],
                                    rng.choice((1.0, 0.5, 0.1)))
            run, v = run_policy(cls.kernel_cls, self.world, pol, rng, cls.PCT_STEPS)
            cls.steps_total += len(run.trace)
            if v is not None:
                step = run.violation_step
                self._found(run.schedule_upto(step), v, "step" if step is not None
                            else "quiescence")
        res = exhaust(cls.kernel_cls, self.world, self.programs,
                      preemptions_max=cls.PREEMPTIONS, states_max=cls.STATES_MAX)
        cls.steps_total += res.transitions + res.replayed
        if cls.on_progress is not None:
            cls.on_progress(cls)
        if res.violation is not None and known_open_race(cls.kernel_cls, self.world,
                                                         res.schedule, res.violation) is None:
            self._found(res.schedule, res.violation, res.phase)

    def _found(self, schedule, violation, phase):
        cls = type(self)
        if cls.first_failure_run is None:
            cls.first_failure_run = cls.runs_total
        cls.last_failure = {"world": self.world, "schedule": schedule,
                            "violation": violation, "step": None, "phase": phase}
        raise PropertyViolated(f"{violation.prop}: {violation.why}")


def _op_rule(name):
    process = _ops.get(name).context == "process"

    def body(self, data):
        cpu = self._cpu(data, process)
        mm_id = self.world["cpu_mm"][cpu] or None
        self.programs[cpu].append(syscall_action(
            lambda options, label: data.draw(st.sampled_from(tuple(options)), label=label),
            self.world, mm_id, cpu, name))
    body.__name__ = name
    body.__doc__ = f"{name} on a CPU (mmfuzz.ops): appended to that CPU's program"
    return precondition(lambda self: self._room(process))(rule(data=st.data())(body))


for _name in _ops.names():
    setattr(OpsMachine, _name, _op_rule(_name))


def ops_machine_for(kernel_cls) -> type:
    return type(f"OpsMachine_{kernel_cls.__name__}", (OpsMachine,),
                {"kernel_cls": kernel_cls, "last_failure": None, "steps_total": 0,
                 "runs_total": 0, "first_failure_run": None})


def run_ops_hypothesis(kernel_cls, seed_value: int, max_examples: int, on_progress=None,
                       polish: bool = True, hypothesis_shrink: bool = True):
    """One Hypothesis campaign of OpsMachine; returns (failure or None, the machine class)."""
    s = settings_for(max_examples, stateful_step_count=6, shrink=hypothesis_shrink)
    return _campaign(kernel_cls, ops_machine_for(kernel_cls), seed_value, s, on_progress, polish)
