from __future__ import annotations

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, precondition, rule,
                                 run_state_machine_as_test)

from mmfuzz.explore import syscall_action
from mmfuzz.kernel import Mainline
from mmfuzz.model import tlb_key
from mmfuzz import ops as _ops
from mmfuzz.run import Run

from .determinism import no_source_constants
from .profiles import database_key


class PropertyViolated(AssertionError):
    pass


BURSTS = st.integers(1, 8)
SYSCALLS = _ops.names()   # every operation the model declares, in mmfuzz.ops order


@st.composite
def worlds(draw):
    """A small world drawn by Hypothesis; it shrinks toward 2 CPUs of one process, a 2-page
    file, 2 PTEs per table and the real mmu_gather constants."""
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
    tiny = draw(st.booleans())
    gather = ({"local_max": 2, "batch_max": 2, "batch_count_max": 1} if tiny
              else {"local_max": 8, "batch_max": 510, "batch_count_max": 19})
    pages = list(range(npages)) + [anon_start, anon_start + 1]
    prefault = draw(st.lists(st.tuples(st.integers(0, ncpus - 1), st.sampled_from(pages),
                                       st.sampled_from((1, 0))), min_size=0, max_size=3))
    prefault = [p for p in prefault if p[1] < npages or cpu_mm[p[0]] == 1]
    return {"ncpus": ncpus, "cpu_mm": cpu_mm, "ptrs_per_pte": ptrs,
            "npmds": (anon_start + 2 + ptrs - 1) // ptrs, "nframes": 64,
            "files": [{"id": 1, "npages": npages}], "vmas": vmas, "gather": gather,
            "prefault": [list(p) for p in prefault]}


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
        type(self).runs_total += 1

    # ------------------------------------------------------------------ plumbing ------
    def _apply(self, action):
        step = self.run.apply(action)
        if step is None:
            # only a step can turn out blocked (the task found its lock taken): a no-op
            assert action[0] == "step", f"rule drew a disabled action {action}"
            return
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
            "schedule": [list(a) for a in self.run.actions[: (step + 1) if step is not None
                                                           else self.run.schedule_len]],
            "violation": v, "step": step, "phase": phase,
        }
        raise PropertyViolated(f"{v.prop}: {v.why}")

    def _idle(self):
        return self.run is not None and bool(self.run.idle_cpus())

    def _spans(self, cpu):
        mm_id = self.run.m.cpus[cpu].mm_id
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

    @precondition(_idle)
    @rule(data=st.data())
    def user_access(self, data):
        """The user thread on an idle CPU loads or stores; a fault enters handle_mm_fault."""
        cpu = data.draw(st.sampled_from(tuple(self.run.idle_cpus())), label="cpu")
        lo, hi = data.draw(st.sampled_from(tuple(self._spans(cpu))), label="vma")
        vpn = data.draw(st.integers(lo, hi - 1), label="va")
        write = data.draw(st.sampled_from((1, 0)), label="write")
        self._apply(["access", cpu, vpn, write])

    @precondition(_idle)
    @rule(data=st.data())
    def syscall(self, data):
        """An idle CPU enters the kernel: the entry point (madvise_dontneed, munmap, mmap,
        writeback, drop_cache, clear_refs) is itself a drawn choice, so one rule serves them
        all and Hypothesis does not reject rules whose CPUs are busy."""
        cpu = data.draw(st.sampled_from(tuple(self.run.idle_cpus())), label="cpu")
        op = data.draw(st.sampled_from(SYSCALLS), label="entry")
        self._apply(syscall_action(lambda options, label: data.draw(st.sampled_from(options),
                                                                    label=label),
                                   self.run.world, self.run.m.cpus[cpu].mm_id, cpu, op))

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
        if self.run is None or self.run.violation is not None:
            return
        v = self.run.quiesce()
        if v is not None:
            step = self.run.violation_step if self.run.violation is not None else None
            self._fail(v, step, "step" if step is not None else "quiescence")


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
    cls = machine_for(kernel_cls)
    cls.on_progress = on_progress
    seeded = seed(seed_value)(cls)
    s = settings_for(max_examples, stateful_step_count, shrink=hypothesis_shrink,
                     profile=profile, database_key=database_key(kernel_cls, "rules"))
    try:
        with no_source_constants():
            run_state_machine_as_test(seeded, settings=s)
    except PropertyViolated:
        failure = dict(cls.last_failure)
        return (polish_failure(kernel_cls, failure) if polish else failure), cls
    return None, cls


def polish_failure(kernel_cls, failure: dict) -> dict:
    """The schedule shrinker run on what Hypothesis found: plain actions, shortest it can make
    them; the length Hypothesis reported is kept as hypothesis_len."""
    from mmfuzz.explore import shrink
    world, schedule = shrink(kernel_cls, failure["world"], failure["schedule"],
                             failure["violation"].prop)
    failure.update(world=world, schedule=schedule, hypothesis_len=len(failure["schedule"]))
    return failure
