"""Fast mode: a plain-Python random explorer over the same model and actions, and the schedule
shrinker that turns any failing run into a short, replayable counterexample.

Each run draws a small world and a swarm configuration (which operations and hardware events
are enabled, and how often) from its own seeded generator, then picks one enabled action at a
time. Seeds are strings hashed by random.Random's sha512 seeding, so every run is the same on
any machine and in any process.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass

from . import cost
from . import ops as _ops
from .hw import STORE_SAME
from .model import Folio
from .kernels import known_open_race
from .run import Divergence, ModelError, ModelFailure, Run, execute

ACTION_KINDS = ("step", "ipi", "access", "start", "evict")


#: mmu_gather limits a world can have (mmfuzz.kernel.mmu_gather): the real x86-64 ones,
#: and smaller ones so that a zap of a few pages fills the local batch, spans several batches
#: or hits the batch-count limit. Weights favour the real and the tiny extremes.
GATHERS = ({"local_max": 8, "batch_max": 510, "batch_count_max": 19},
           {"local_max": 2, "batch_max": 2, "batch_count_max": 1},
           {"local_max": 3, "batch_max": 3, "batch_count_max": 2},
           {"local_max": 4, "batch_max": 4, "batch_count_max": 3})
GATHER_WEIGHTS = (0.55, 0.25, 0.12, 0.08)
#: how often a world maps the file a second time in the first process, and has a second file
ALIAS_P = 0.15
SECOND_FILE_P = 0.15


def random_world(rng: random.Random) -> dict:
    """A small world: 2-3 CPUs of one or two processes, sometimes one more CPU with no process
    (for a forked child), a file of 2-4 pages mapped in every process (shared, or private in
    the first, then sometimes read-only of a file opened read-only), an anonymous VMA in the
    first, 2 or 4 PTEs per table, an mmu_gather of GATHERS, and a few prefaulted pages.
    Biased to small, some worlds add (each a field of the world, so the corpus records it): a
    second VMA of the same file in the first process, at another pgoff (its file range
    overlaps the first VMA's), and a second file mapped shared by the first process. Above the
    mappings one PTE table's worth of address space stays free."""
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
    end = anon_start + 2
    gather = dict(rng.choices(GATHERS, GATHER_WEIGHTS)[0])
    files = [{"id": 1, "npages": npages}]
    if rng.random() < ALIAS_P:
        # the same file mapped again by the first process, at another pgoff: one folio,
        # two PTEs of one mm (rmap walks, writeback and zap meet it twice)
        length = rng.choice((1, 2))
        pgoff = rng.randrange(0, npages - length + 1)
        vmas.append({"mm": 1, "start": end, "end": end + length, "file": 1, "pgoff": pgoff,
                     "shared": True, "writable": True})
        end += length
    if rng.random() < SECOND_FILE_P:
        # a second file, mapped shared by the first process
        n2 = rng.choice((1, 2))
        files.append({"id": 2, "npages": n2})
        vmas.append({"mm": 1, "start": end, "end": end + n2, "file": 2, "pgoff": 0,
                     "shared": True, "writable": True})
        end += n2
    # one PTE table's worth of address space above the mappings, free (where mremap moves a
    # range to; nothing else is drawn there)
    npmds = (end + ptrs - 1) // ptrs + 1
    prefault = []
    for _ in range(rng.choice((1, 2, 2, 3, 4))):
        cpu = rng.randrange(ncpus)
        vma = rng.choice([v for v in vmas if v["mm"] == cpu_mm[cpu]])
        prefault.append([cpu, rng.randrange(vma["start"], vma["end"]), int(rng.random() < 0.7)])
    # drawn last, so that the shapes above stay what they were: sometimes a CPU with no
    # process (a fork places its child there), sometimes the first process maps the file
    # MAP_PRIVATE (read faults map the page cache read-only, writes COW it)
    if rng.random() < FREE_CPU_P:
        ncpus += 1
        cpu_mm = cpu_mm + [0]
    if rng.random() < 0.25:
        vmas[0] = dict(vmas[0], shared=False)
        # sometimes a file the process may only read (opened O_RDONLY), mapped private and
        # read-only: a FOLL_FORCE write (/proc/PID/mem) must COW it, never write the file
        if (not two_mm and rng.random() < 0.5
                and not any(v["file"] == 1 for v in vmas[1:])):   # no other mapping of it
            vmas[0]["writable"] = False
            files[0] = dict(files[0], readonly=True)
    world = {"ncpus": ncpus, "cpu_mm": cpu_mm, "ptrs_per_pte": ptrs, "npmds": npmds,
             "nframes": 64, "files": files, "vmas": vmas,
             "gather": gather, "prefault": prefault}
    if world_fraction(world) < HYPERCALL_FLUSH_P:
        world["tlb_flush"] = "hypercall"
    return world


#: the share of random worlds with one more CPU that starts without a process: where a fork
#: places its child (the model runs one task per CPU, so a world without one cannot fork), and
#: where kernel threads run beside the user CPUs. It was 0.3 until 2026-12-03, when fork also
#: went to the default swarm share (it was 0.35) and stopped being switched on in worlds
#: where it cannot start (SwarmPolicy, ops.Operation.possible): seeds 1-10 within 15,000
#: runs, the CVE's median 1,368.5 runs against 5,388 and fork-pinned-no-early-cow's 928.5
#: against 1,655, the other bugs within the noise of the runs that moved (bench/RESULTS-runs.md,
#: "Room for the child"). A drawn value, one draw as before: only the worlds drawn between 0.3
#: and 0.5 changed.
FREE_CPU_P = 0.5

#: the share of random worlds that run as a paravirt guest whose remote TLB flushes are
#: hypercalls (model.Machine.tlb_flush): no flush waits for a CPU with IRQs off there, so
#: what keeps a lockless walker (GUP-fast) safe is the RCU table free alone
HYPERCALL_FLUSH_P = 0.25


def world_fraction(world: dict) -> float:
    """A number in [0, 1) that is a function of the world alone (sha256 of its canonical
    JSON): a world property decided by it takes nothing from the run's random stream, so
    every run draws its operations and schedule exactly as before that property existed."""
    digest = hashlib.sha256(json.dumps(world, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def syscall_action(pick, world: dict, mm_id: int, cpu: int, op: str) -> list:
    """The start action of operation ``op`` on ``cpu`` with its arguments chosen by
    ``pick(options, label)`` from the domains the operation declares (mmfuzz.ops). Fast mode
    picks with a seeded random, the Hypothesis rule machine with draws, so both build the same
    operations."""
    return ["start", cpu, op, *_ops.get(op).draw(pick, _ops.Ctx(world, cpu, mm_id))]


#: The share of a run's user stores that store the value the page already holds
#: (hw.STORE_SAME: a store's faults and A/D bits, the contents unchanged). Small: most races
#: need a store to change the contents; the few that need a page to stay as it is while a
#: CPU dirties it (ksm-madvfree-clearrefs: "write the same value the page already has")
#: get it now and then.
STORE_SAME_SHARE = 0.1


def access_kind(r: float, store_bias: float) -> int:
    """The access kind (hw.LOAD, STORE, STORE_SAME) for one uniform draw ``r`` in [0, 1): a
    store below ``store_bias``, the lowest STORE_SAME_SHARE of those a store of the same
    value. One draw, the one a load-or-store choice took before store-same existed, so the
    random streams of every run stay what they were."""
    if r < store_bias:
        return STORE_SAME if r < store_bias * STORE_SAME_SHARE else 1
    return 0


def hot_page(rng: random.Random, world: dict) -> tuple:
    """One page of the first process's VMAs in ``world`` (a VMA, then a page of it, uniformly):
    ``(va, file_page)``, file_page the (file id, index) it maps or None for an anon VMA."""
    vma = rng.choice([v for v in world["vmas"] if v["mm"] == 1])
    return vma_page(vma, rng.randrange(vma["start"], vma["end"]))


def vma_page(vma: dict, va: int) -> tuple:
    """``(va, file_page)`` for ``va`` inside world VMA ``vma``: file_page the (file id, index)
    it maps, None for an anon VMA (the form of hot_page)."""
    if vma["file"] is None:
        return va, None
    return va, (vma["file"], va - vma["start"] + vma["pgoff"])


def only_process_ops(ops) -> bool:
    """Are all of ``ops`` process operations (no kernel thread, so a CPU without a process
    has nothing to start)?"""
    return all(_ops.get(op).context == "process" for op in ops)


def hot_pick(rng: random.Random, hot: tuple, p: float):
    """A ``pick(options, label)`` (mmfuzz.ops) that aims at the page ``hot`` (hot_page's
    pair): where the options hold it (the VMA around its VA, its VA as a start, its file and
    index), it is picked with probability ``p``, else uniformly. A draw is taken only where
    the hot page is an option."""
    va, fpage = hot

    def pick(options, label):
        if label == "vma" and options and isinstance(options[0], tuple):
            for o in options:
                if o[0] <= va < o[1]:
                    if rng.random() < p:
                        return o
                    break
        elif label == "start":
            if va in options and rng.random() < p:
                return va
        elif fpage is not None and label in ("file", "index"):
            want = fpage[0] if label == "file" else fpage[1]
            if want in options and rng.random() < p:
                return want
        return rng.choice(options)
    return pick


def _uniform_pick(rng: random.Random):
    return lambda options, label: rng.choice(options)


def _random_program_action(rng: random.Random, run: Run, world: dict, cpu: int, ops,
                           store_bias: float, hot: tuple | None = None, hot_p: float = 0.0):
    """A syscall start or a user access for ``cpu``, with arguments drawn in its own VMAs (a
    forked child's are its parent's). A CPU without a process can only start a kernel thread
    (None if none of ``ops`` is one). ``hot``: a hot_page the draws aim at with
    probability ``hot_p`` where it is an option (hot_pick)."""
    pick = _uniform_pick(rng) if hot is None else hot_pick(rng, hot, hot_p)
    if run.m.cpus[cpu].mm_id == 0:
        kthread_ops = [op for op in (ops or ()) if _ops.get(op).context == "kthread"]
        if not kthread_ops:
            return None
        return syscall_action(pick, world, None, cpu, rng.choice(kthread_ops))
    mm_id = run.process_origin(cpu)
    if ops is None:
        own = [(v["start"], v["end"]) for v in world["vmas"] if v["mm"] == mm_id]
        if hot is not None:
            va = hot[0]
            if any(lo <= va < hi for lo, hi in own) and rng.random() < hot_p:
                return ["access", cpu, va, access_kind(rng.random(), store_bias)]
        lo, hi = rng.choice(own)
        return ["access", cpu, rng.randrange(lo, hi), access_kind(rng.random(), store_bias)]
    return syscall_action(pick, world, mm_id, cpu, rng.choice(ops))


#: Swarm testing switches each operation on with its declared share (mmfuzz.ops, 0.7 by
#: default), scaled down so that a run enables about this many operations on average however
#: many the registry declares: 4.2 is what six operations at 0.7 gave. Without the scaling
#: every operation added to the model dilutes every other (a race needing two particular
#: operations in one run got rarer with each one added); with it, the mix a run draws stays as
#: focused as it was, and all operations are still drawn equally often relative to each other.
#: None: no scaling (each operation at its declared share). Measured on the merged model (20
#: operations; finds within a run cap over seeds 1-6/1-4/1-3): 19 of 28 bug/seed pairs with
#: 4.2, 17 of 28 without (madv-parallel-flush-miss 6/6 against 4/6; dirty-cow 1/3 against 2/3).
#: How many operations a run enables cancels out to first order for a race of two operations
#: (fewer enabled: the pair meets in fewer runs and repeats more often in each), so no draw
#: restores the 6-operation rates; bench/RESULTS-runs.md measures the alternatives (geometric,
#: mixtures of densities, unscaled, longer runs, more starts) with `python -m bench.runs`.
SWARM_OPS_MEAN: float | None = 4.2


def swarm_ops(rng: random.Random) -> tuple:
    """The operations one swarm run enables (at least one)."""
    return swarm_ops_scaled(rng)


def swarm_ops_scaled(rng: random.Random) -> tuple:
    """Each operation with its declared share x SWARM_OPS_MEAN / the sum of the shares (at
    least one operation)."""
    decl = _ops.operations().values()
    scale = 1.0
    if SWARM_OPS_MEAN is not None:
        total = sum(op.swarm for op in decl)
        scale = min(1.0, SWARM_OPS_MEAN / total)
    return tuple(op.name for op in decl if rng.random() < op.swarm * scale) or ("madvise_dontneed",)


def _pick_weighted(rng: random.Random, items: list) -> int:
    """The index of one of ``items`` ((value, weight) pairs), drawn with probability
    proportional to its weight (one rng.random())."""
    r = rng.random() * sum(w for _, w in items)
    for i, (_, w) in enumerate(items):
        r -= w
        if r <= 0:
            return i
    return len(items) - 1


def swarm_ops_focused(rng: random.Random, q: float = 0.5, more: float = 0.5,
                      power: float = 1.0, alone: float = 0.0, grow: bool = False) -> tuple:
    """A correlated draw (bench/RESULTS-runs.md "Correlated draws"): with probability ``q`` the
    run is focused: one operation is drawn by its declared share, then partners among the
    operations it interacts with (mmfuzz.ops.relation: one writes kernel state the other reads
    or writes), each drawn without replacement with weight (number of state names they share
    through a conflict) ** ``power``: one partner, and each further one with probability
    ``more`` (1 + Geometric: 2 partners on average); with probability ``alone`` the focus runs
    alone (a race of one operation with user accesses). With ``grow`` each further partner is
    drawn among the operations that interact with any operation chosen so far (weight: the sum
    of its weights to them), so that a chain of three or four operations, each acting on
    what the previous changed, can be drawn together. Otherwise the run draws as
    swarm_ops_scaled.
    Deterministic in ``rng``; the relation is computed once."""
    if rng.random() >= q:
        return swarm_ops_scaled(rng)
    decl = list(_ops.operations().values())
    focus = decl[_pick_weighted(rng, [(op.name, op.swarm) for op in decl])].name
    pool = [(b, w ** power) for b, w in _ops.relation()[focus] if b != focus]
    chosen = [focus]
    if alone and rng.random() < alone:
        pool = []
    rel = _ops.relation()
    while pool:
        chosen.append(pool.pop(_pick_weighted(rng, pool))[0])
        if rng.random() >= more:
            break
        if grow:   # the pool: every operation not chosen, weighted by its ties to the chosen
            ties: dict = {}
            for c in chosen:
                for b, w in rel[c]:
                    if b not in chosen:
                        ties[b] = ties.get(b, 0.0) + w ** power
            pool = [(b, ties[b]) for b in _ops.names() if b in ties]
    return tuple(op.name for op in decl if op.name in chosen)


#: the weights a swarm run gives a pending flush IPI (against 4-16 for a kernel step). The
#: lowest makes IPIs late, as on a host that deschedules the target vCPU: the flusher waits
#: and its window stays open (a zap waiting under its PTL for the ack, while writeback and a
#: store through the stale entry run). It was 0.5 until 2026-12-03; 0.1 (the same draw, so
#: only the runs that drew the lowest changed) found zap-rmap-before-flush on 9 of seeds 1-10
#: within 15,000 runs (median 2,523.5) against 7 (median 12,309) (bench/RESULTS-runs.md,
#: "Late IPIs").
IPI_WEIGHTS = (0.1, 1, 3)


class SwarmPolicy:
    """Swarm testing: per run, some operations are switched off and each kind of action
    (step, IPI, access, syscall, eviction) gets its own weight; BUGGIFY-style scheduling knobs
    make a CPU that holds a lock run less often (a lock held longer) and IPIs arrive late, and
    half of the runs aim half of their user accesses at VAs the CPU holds in its TLB (where a
    stale translation shows). Every knob only biases the choice among legal interleavings;
    none changes the kernel."""

    name = "swarm"
    #: a per-CPU step-weight factor (a CPU slowed as by vCPU preemption or an interrupt
    #: storm, so a window one of its tasks holds open lasts many steps of the others), or None:
    #: the default draws none (bench.runs --slow-cpu measures it)
    cpu_speed: list | None = None
    #: swarm over the argument domain: in this share of runs one page of the world is hot
    #: (hot_page), and each user access, and each page, VMA, file and index an operation
    #: draws, aims at it with probability hot_p where it is an option. A race is one page
    #: seen from several sides (a zap, a writeback and a store of one page; a fork, a
    #: vmsplice and two write faults of one anon page); with uniform draws over 4-10 pages
    #: the sides meet on one page rarely. Measured in bench/RESULTS-runs.md ("A hot page").
    hot_share: float = 0.8
    hot_p: float = 0.7
    #: in a paravirt world (remote flushes by hypercall, HYPERCALL_FLUSH_P of them) the host
    #: may deschedule a vCPU while its guest has IRQs off, and no flush waits for it: a CPU
    #: with IRQs off (GUP-fast's local_irq_save section) steps at this factor of its weight
    #: there. A native CPU's IRQs-off section is as short as its code; a descheduled vCPU's is
    #: not, which is the window 9e52fc2b50de closed (bench/RESULTS-runs.md, "A descheduled
    #: vCPU"). Weights only: no run's random stream moves.
    pv_irqs_off_hold: float = 0.05

    def __init__(self, rng: random.Random, world: dict):
        self.kind_weight = {"step": rng.choice((4, 8, 16)), "ipi": rng.choice(IPI_WEIGHTS),
                            "access": rng.choice((1, 2, 4)), "start": rng.choice((0.5, 1, 2)),
                            "evict": rng.choice((0, 0, 0.2))}
        # an operation that cannot start in this world (a fork without a CPU for its child)
        # is not switched on: every start of it would be refused, a wasted action
        self.ops = tuple(op for op in swarm_ops(rng) if _ops.get(op).possible(world)) \
            or ("madvise_dontneed",)
        self.store_bias = rng.choice((0.5, 0.8))
        self.lock_hold = rng.choice((1.0, 1.0, 0.2))   # step weight of a lock holder
        self.tlb_hit = rng.choice((0.0, 0.5))          # share of accesses aimed at cached VAs
        self.world = world
        # without an enabled kernel-thread operation, a CPU with no process has nothing to start
        self.process_only = only_process_ops(self.ops)
        self.pv = world.get("tlb_flush") == "hypercall" and self.pv_irqs_off_hold != 1.0
        # drawn last, so that every knob above is drawn as before it existed
        self.hot = hot_page(rng, world) if rng.random() < self.hot_share else None

    def pick(self, rng: random.Random, run: Run):
        m = run.m
        kw = self.kind_weight
        # one pass over the CPUs for what run.runnable_cpus(), ipi_cpus(), idle_cpus() and
        # idle_process_cpus() would return (this runs before every action)
        runnable, ipis, idle_all, idle_proc = run.cpu_lists()
        # the weight of each choice, in order: a step of each runnable CPU, an IPI of each CPU
        # with one pending, then each kind in ``kinds`` (an access, a start, an eviction)
        w = kw["step"]
        hold = self.lock_hold
        if hold != 1.0:
            cpus = m.cpus
            weights = [w * hold if cpus[cpu].task.locks else w for cpu in runnable]
        else:
            weights = [w] * len(runnable)
        speed = self.cpu_speed
        if speed is not None:
            weights = [x * speed[cpu] for x, cpu in zip(weights, runnable)]
        if self.pv:
            cpus = m.cpus
            hold = self.pv_irqs_off_hold
            weights = [x * hold if cpus[cpu].irqs_off else x for x, cpu in zip(weights, runnable)]
        if ipis:
            weights += [kw["ipi"]] * len(ipis)
        kinds = []
        idle = idle_proc if self.process_only else idle_all
        if idle_proc:
            weights.append(kw["access"] * len(idle_proc))
            kinds.append("access")
        if idle:
            weights.append(kw["start"] * len(idle))
            kinds.append("start")
        if kw["evict"] and any(c.tlb for c in m.cpus):
            weights.append(kw["evict"])
            kinds.append("evict")
        if not weights:
            return None
        r = rng.random() * sum(weights)
        i = 0
        for w in weights:
            r -= w
            if r <= 0:
                break
            i += 1
        else:
            i -= 1   # rounding left r above 0: the last choice
        if i < len(runnable):
            return ["step", runnable[i]]
        i -= len(runnable)
        if i < len(ipis):
            return ["ipi", ipis[i]]
        kind = kinds[i - len(ipis)]
        if kind == "evict":
            cpu = rng.choice([x.cpu_id for x in m.cpus if x.tlb])
            return ["evict", cpu, rng.choice(list(m.cpus[cpu].tlb)) & 0xffffffff]
        if kind == "access":
            idle = idle_proc
        cpu = rng.choice(idle)
        if kind == "access" and self.tlb_hit and rng.random() < self.tlb_hit:
            # an access through a translation the CPU holds: where a stale entry shows
            cached = list(m.cpus[cpu].tlb)
            if cached:
                return ["access", cpu, rng.choice(cached) & 0xffffffff,
                        access_kind(rng.random(), self.store_bias)]
        return _random_program_action(rng, run, self.world, cpu,
                                      None if kind == "access" else self.ops, self.store_bias,
                                      self.hot, self.hot_p)


def writable_shared_anon(m) -> tuple | None:
    """(mm id, vpn) of a present, writable PTE that maps an anon folio which is not
    PG_anon_exclusive (nor a KSM folio), or None. Outside a critical section mainline never
    leaves one ("every mapped anon page is either exclusive ... or shared", and a shared one
    is mapped read-only): it exists while fork is between folio_try_dup_anon_rmap_pte and its
    write-protect of the parent's PTE, the window a lockless GUP-fast can see."""
    frames = m.frames
    ppt = m.ptrs_per_pte
    for mm_id in sorted(m.mms):
        for pi, table in enumerate(m.mms[mm_id].pmd):
            if table is None:
                continue
            for slot, pte in enumerate(table.ptes):
                if pte is not None and pte.present and pte.write and not pte.special:
                    f = frames[pte.pfn]
                    if isinstance(f, Folio) and f.anon and not f.anon_exclusive and not f.ksm:
                        return mm_id, pi * ppt + slot
    return None


class DirectedPolicy(SwarmPolicy):
    """Swarm testing directed at a kernel variant's diff (mmfuzz.directed): every run switches
    on one of the operations whose code reaches a function the variant changes (``focus``,
    drawn after every swarm knob), and a task that has just left a page in a transient state a
    lockless reader can see (writable_shared_anon: a step of it cleared PG_anon_exclusive
    while the PTE is still writable) steps at ``window_hold`` of its weight until the state
    is gone, while the run's hot page moves to that page (the other CPUs' operations and
    accesses aim at it). With no focus (mainline, or a change no operation reaches) it is
    exactly SwarmPolicy: the same draws, the same runs. Measured in bench/RESULTS-runs.md
    ("Directed at the diff")."""

    name = "directed"
    window_hold: float = 0.05

    def __init__(self, rng: random.Random, world: dict, focus: tuple = ()):
        super().__init__(rng, world)
        self.focus = tuple(op for op in focus if _ops.get(op).possible(world))
        self.held: dict = {}
        self._last = None
        if self.focus:
            f = rng.choice(self.focus)
            if f not in self.ops:
                self.ops = tuple(n for n in _ops.names() if n in self.ops or n == f)
                self.process_only = only_process_ops(self.ops)

    def pick(self, rng: random.Random, run: Run):
        held = self.held
        if held:
            m = run.m
            for cpu in [c for c, t in held.items() if m.cpus[c].task is not t]:
                del held[cpu]
            if held and writable_shared_anon(m) is None:
                held.clear()
        if held:
            base = self.cpu_speed
            hold = self.window_hold
            self.cpu_speed = [(base[c] if base else 1.0) * (hold if c in held else 1.0)
                              for c in range(len(run.m.cpus))]
            try:
                action = super().pick(rng, run)
            finally:
                self.cpu_speed = base
        else:
            action = super().pick(rng, run)
        self._last = action
        return action

    def after(self, run: Run, step) -> None:
        a = self._last
        m = run.m
        if not self.focus or a is None or a[0] != "step" or m.anon_shared_at != m.clock:
            return
        t = m.cpus[a[1]].task
        page = writable_shared_anon(m) if t is not None else None
        if page is None:
            return
        self.held[a[1]] = t
        mm_id, vpn = page
        if m.mms[mm_id].origin == 1:   # hot pages are the first process's (hot_page)
            for v in self.world["vmas"]:
                if v["mm"] == 1 and v["start"] <= vpn < v["end"]:
                    self.hot = vma_page(v, vpn)
                    break


class UniformPolicy:
    """Uniform choice among every concrete enabled action (the baseline)."""

    name = "uniform"

    def __init__(self, rng: random.Random, world: dict):
        self.world = world
        self._starts: dict[int, list] = {}

    def _start_actions(self, cpu: int, mm_id: int | None) -> list:
        """Every start action of every operation on ``cpu`` for a process whose VMAs are world
        mm ``mm_id``'s (None: no process, kernel threads only)."""
        key = (cpu, mm_id)
        if key not in self._starts:
            ctx = _ops.Ctx(self.world, cpu, mm_id)
            self._starts[key] = [["start", cpu, op.name, *vals]
                                 for op in _ops.operations().values()
                                 if mm_id is not None or op.context == "kthread"
                                 for vals in _ops.enumerate_values(op, ctx)]
        return self._starts[key]

    def pick(self, rng: random.Random, run: Run):
        m = run.m
        acts = [["step", c] for c in run.runnable_cpus()] + [["ipi", c] for c in run.ipi_cpus()]
        for cpu in run.idle_cpus():
            mm_id = run.process_origin(cpu) if m.cpus[cpu].mm_id else None
            for v in self.world["vmas"]:
                if v["mm"] == mm_id:
                    for vpn in range(v["start"], v["end"]):
                        acts += [["access", cpu, vpn, 0], ["access", cpu, vpn, 1]]
            acts += [a for a in self._start_actions(cpu, mm_id)
                     if a[2] != "fork" or run.enabled(a)]
        for c in m.cpus:
            acts += [["evict", c.cpu_id, k & 0xffffffff] for k in c.tlb]
        return rng.choice(acts) if acts else None


class PctPolicy:
    """PCT (Burckhardt et al., "A randomized scheduler with probabilistic guarantees of finding
    bugs"): every CPU gets a distinct random priority and a short random program (syscalls and
    user accesses; a faulting access is retried after its fault, as the CPU re-executes the
    instruction); the highest-priority CPU that can act does so; at d - 1 random change points
    the acting CPU drops below every other. A CPU with a pending IPI takes it when it runs,
    unless the run's IPI-delay knob holds it back."""

    name = "pct"

    def __init__(self, rng: random.Random, world: dict, steps_max: int = 60):
        ncpus = world["ncpus"]
        order = list(range(ncpus))
        rng.shuffle(order)
        depth = rng.choice((1, 2, 3, 3, 4))
        change_points = [rng.randrange(steps_max) for _ in range(depth - 1)]
        ipi_take = rng.choice((1.0, 0.5, 0.1))
        ops = swarm_ops(rng)
        store_bias = rng.choice((0.5, 0.8))
        self._setup(world, order, change_points, ipi_take, {}, (ops, store_bias),
                    [rng.randint(0, 3) for _ in range(ncpus)])

    def _setup(self, world, order, change_points, ipi_take, programs, rng_args, draft):
        self.prio = {cpu: world["ncpus"] + rank for rank, cpu in enumerate(order)}
        self.change_points = sorted(change_points)
        self.low = 0
        self.ipi_take = ipi_take
        self.world = world
        self.programs = programs
        self._rng_args = rng_args
        self._draft = draft
        self.tick = 0
        self.last = None
        self.retry = {}

    @classmethod
    def planned(cls, world: dict, order: list, change_points: list, programs: list,
                ipi_take: float = 1.0) -> "PctPolicy":
        """A PCT run given in full: ``order`` lists the CPUs from lowest to highest priority,
        ``programs[cpu]`` is that CPU's list of starts and accesses (a test writes a known
        race this way)."""
        pol = cls.__new__(cls)
        pol._setup(world, order, change_points, ipi_take,
                   {cpu: [list(a) for a in prog] for cpu, prog in enumerate(programs)},
                   ((), 0.5), [0] * world["ncpus"])
        return pol

    def _program(self, rng, run, cpu):
        if cpu not in self.programs:
            ops, store_bias = self._rng_args
            prog = []
            for _ in range(self._draft[cpu]):
                kind_ops = None if rng.random() < 0.5 else ops
                action = _random_program_action(rng, run, self.world, cpu, kind_ops, store_bias)
                if action is not None:  # None: nothing a CPU without a process can start
                    prog.append(action)
            self.programs[cpu] = prog
        return self.programs[cpu]

    def pick(self, rng: random.Random, run: Run):
        m = run.m
        if self.change_points and self.tick >= self.change_points[0] and self.last is not None:
            self.change_points.pop(0)
            self.low -= 1
            self.prio[self.last] = self.low
        self.tick += 1
        runnable = set(run.runnable_cpus())
        for cpu in sorted(self.prio, key=lambda c: -self.prio[c]):
            c = m.cpus[cpu]
            if c.ipi_queue and not c.irqs_off and (rng.random() < self.ipi_take
                                                    or (cpu not in runnable and c.task is not None)):
                self.last = cpu
                return ["ipi", cpu]
            if cpu in runnable:
                self.last = cpu
                return ["step", cpu]
            if c.task is None:
                prog = self._program(rng, run, cpu)
                if prog:
                    self.last = cpu
                    action = prog[0]
                    if action[0] == "access" and self.retry.get(cpu, 0) < 2:
                        self.retry[cpu] = self.retry.get(cpu, 0) + 1
                        self._pending_access = (cpu, action)
                    else:
                        prog.pop(0)
                        self.retry[cpu] = 0
                    return action
            elif c.ipi_queue and not c.irqs_off:
                self.last = cpu
                return ["ipi", cpu]
        return None

    def after(self, run: Run, step) -> None:
        """A completed (not faulting) access leaves the program."""
        pend = getattr(self, "_pending_access", None)
        if pend is None:
            return
        cpu, action = pend
        self._pending_access = None
        if step is not None and run.m.cpus[cpu].task is None:
            prog = self.programs.get(cpu)
            if prog and prog[0] is action:
                prog.pop(0)
                self.retry[cpu] = 0


POLICIES = {"swarm": SwarmPolicy, "uniform": UniformPolicy, "pct": PctPolicy}


@dataclass
class Found:
    world: dict
    actions: list
    prop: str
    run_index: int
    runs: int
    steps: int
    seconds: float


#: the lengths (actions before quiescence) a run draws from when no length is given: a race
#: of two operations needs both in one run, and a run of m starts meets a given pair about
#: (m/n)^2 times for n operations declared, while quiescence (drain, write back, drop the
#: cache: about 56 steps) costs the same in a short run as in a long one, so longer runs
#: meet more pairs per model step. Measured (bench/RESULTS-runs.md, "Run lengths"), seeds
#: 1-6 against 60 actions: madv-parallel-flush-miss 17-75 runs against 145-792,
#: the pagecount COW 20-94 against 51-944, zap-rmap-before-flush 3 of 6 seeds within 12,000
#: runs against 1 within 55,000, clear-refs-softdirty-no-flush the same few runs.
RUN_LENGTHS = (120, 240)
#: the run length of the hybrid and guided engines when none is given (None there means this,
#: not a draw: their measurements and pins are of 60-action runs)
FIXED_RUN_LENGTH = 60


def random_run(kernel_cls, rng: random.Random, actions_max: int | None = 60,
               policy: str = "swarm"):
    """One random run under ``policy``: returns (world, run, violation or None), quiescence
    included. ``actions_max`` None: the run draws its length from RUN_LENGTHS (what the
    fast explorer, explore(), does by default; the hybrid and guided engines, and tests that
    build single runs, give 60)."""
    world = random_world(rng)
    if policy == "directed":
        from .directed import focus_ops
        pol = DirectedPolicy(rng, world, focus_ops(kernel_cls))
    else:
        pol = POLICIES[policy](rng, world)
    if actions_max is None:
        actions_max = rng.choice(RUN_LENGTHS)
    run, v = run_policy(kernel_cls, world, pol, rng, actions_max)
    return world, run, v


def run_policy(kernel_cls, world: dict, pol, rng, actions_max: int = 60, run: Run | None = None):
    """Run ``world`` with actions picked by ``pol`` drawing from ``rng`` (a seeded
    random.Random in fast mode, Hypothesis's own random in strategies/schedules.py): returns
    (run, violation or None), quiescence included. ``run``: go on from this run of ``world``
    (the guided engine's replayed prefix) up to ``actions_max`` actions in all."""
    after = getattr(pol, "after", None)
    if run is None:
        run = Run(kernel_cls, world)
    for _ in range(actions_max - len(run.actions)):
        action = pol.pick(rng, run)
        if action is None:
            break
        step = run.apply(action)
        if after is not None:
            after(run, step)
        if run.violation is not None:
            break
    v = run.violation if run.violation is not None else run.quiesce()
    if cost.ACTIVE is not None:
        cost.ACTIVE.after_run(run)
    if v is not None:
        # a known-open race of mainline (mmfuzz.kernels.KNOWN_OPEN) is listed, not reported
        step = run.violation_step
        run.known_open = known_open_race(kernel_cls, world, run.actions[: step + 1] if step
                                         is not None else run.actions[: run.schedule_len], v)
        if run.known_open is not None:
            return run, None
    return run, v


def explore(kernel_cls, seed: int, budget_s: float | None = None, runs_max: int | None = None,
            actions_max: int | None = None, progress=None,
            policy: str = "swarm") -> tuple[Found | None, dict]:
    """Random runs 0, 1, 2, ... until a violation, the time budget or the run budget.
    Deterministic for a given seed and run count (the budget only decides where to stop)."""
    return explore_strided(kernel_cls, seed, budget_s, runs_max, 0, 1, actions_max, progress,
                           policy)


def explore_strided(kernel_cls, seed: int, budget_s: float | None, runs_max: int | None,
                    start: int, stride: int, actions_max: int | None = None,
                    progress=None, policy: str = "swarm") -> tuple[Found | None, dict]:
    """Runs start, start + stride, ...: worker w of n takes (w, n), so n workers together run
    exactly the runs one worker would, and run i is the same wherever it runs."""
    def one_run(rng, i):
        world, run, v = random_run(kernel_cls, rng, actions_max, policy)
        return RunOutcome(world, len(run.trace),
                          run.schedule_upto(run.violation_step) if v is not None else None,
                          v.prop if v is not None else None, getattr(run, "known_open", None))
    return explore_runs(one_run, seed, budget_s, runs_max, start, stride, progress)


@dataclass
class RunOutcome:
    """What one run of an engine gives explore_runs: its world, the model actions it applied,
    and for a violation the schedule up to it and the property (None: clean)."""
    world: dict
    steps: int
    actions: list | None = None
    prop: str | None = None
    known_open: str | None = None   # a known-open race the run set aside (not a find)
    kind: str | None = None         # counted in stats[kind] when given (the hybrid's scenarios)


def explore_runs(one_run, seed: int, budget_s: float | None, runs_max: int | None,
                 start: int = 0, stride: int = 1, progress=None,
                 counters: tuple = ()) -> tuple[Found | None, dict]:
    """The budget and stride loop every fast engine shares: run i calls ``one_run(rng, i)``
    (a RunOutcome) with its own generator ``random.Random(f"mmfuzz:{seed}:{i}")``, until a
    violation, the time budget or the run budget. A ModelFailure is not a find: it leaves
    with the run, runs and steps so far in its info (the CLI reports it apart, exit 3).
    ``counters`` are stats keys that start at 0 (RunOutcome.kind counts into them)."""
    t0 = time.perf_counter()
    stats = {"runs": 0, "steps": 0}
    stats.update((k, 0) for k in counters)
    i = start
    last = t0
    while True:
        if runs_max is not None and stats["runs"] >= runs_max:
            break
        now = time.perf_counter()
        if budget_s is not None and now - t0 >= budget_s:
            break
        rng = random.Random(f"mmfuzz:{seed}:{i}")
        try:
            out = one_run(rng, i)
        except ModelFailure as mf:
            # not a find: the CLI reports it apart (exit 3) with the schedule that raised
            stats["runs"] += 1
            mf.info.update(run=i, runs=stats["runs"], steps=stats["steps"],
                           seconds=time.perf_counter() - t0)
            raise
        stats["runs"] += 1
        stats["steps"] += out.steps
        if out.kind is not None:
            stats[out.kind] = stats.get(out.kind, 0) + 1
        if out.known_open is not None:
            stats.setdefault("known_open", {})
            stats["known_open"][out.known_open] = stats["known_open"].get(out.known_open, 0) + 1
        if progress is not None and now - last > 0.5:
            progress(stats, now - t0)
            last = now
        if out.actions is not None:
            return Found(out.world, out.actions, out.prop, i, stats["runs"], stats["steps"],
                         time.perf_counter() - t0), stats
        i += stride
    stats["seconds"] = time.perf_counter() - t0
    return None, stats


def fails_with(kernel_cls, world: dict, actions: list, prop: str) -> bool:
    """Does the schedule violate ``prop``? A candidate that diverges or makes the model fail
    is simply not the same failure."""
    try:
        _, out = execute(kernel_cls, world, actions)
    except (ModelError, Divergence, ModelFailure):
        return False
    if out.violation is None or out.violation.prop != prop:
        return False
    # shrinking must not turn the find into a known-open race of mainline
    return known_open_race(kernel_cls, world, actions, out.violation) is None


def raises_same(kernel_cls, world: dict, actions: list, failure: ModelFailure) -> bool:
    """Does the schedule make the model fail the same way (ModelFailure.same)?"""
    try:
        execute(kernel_cls, world, actions)
    except ModelFailure as mf:
        return mf.same(failure)
    except (ModelError, Divergence):
        return False
    return False


def shrink(kernel_cls, world: dict, actions: list, prop: str,
           attempts_max: int = 5000) -> tuple[dict, list]:
    """Greedy delta debugging over the schedule (whole operations, renumbering the GUP pins
    that later actions name when a dropped one took a pin; chunks, then single actions) and
    the world's prefault list, then each store of the same value made a plain store, and
    last the schedule reordered into fewer rows (one CPU's stretches moved together, with a
    budget of its own), keeping the same property violated. Disabled actions are skipped
    in the shrinker's replay, so every candidate is a valid schedule. Ends with the actions
    the shrunk run really executed, cut at the violation (a violation at quiescence: cut
    where quiescence begins, which replays it)."""
    return _shrink(kernel_cls, world, actions,
                   lambda w, acts: fails_with(kernel_cls, w, acts, prop), attempts_max)


def shrink_failure(kernel_cls, failure: ModelFailure,
                   attempts_max: int = 2000) -> tuple[dict, list]:
    """The same shrinker for a model failure: a shorter schedule that raises the same
    exception type from the same function."""
    return _shrink(kernel_cls, failure.world, failure.schedule,
                   lambda w, acts: raises_same(kernel_cls, w, acts, failure), attempts_max)


def _shrink(kernel_cls, world, actions, fails, attempts_max):
    attempts = 0
    # candidate (a digest of its text) -> its verdict: a replay is deterministic, and the
    # passes propose the same candidate again (a later round retries every deletion that
    # failed after the last success; 43% of a cow-gup find's 5,000 attempts, 85% of a dio
    # find's). A repeated candidate still counts as an attempt, so the budget runs out where
    # it did and the shrunk schedule is the same.
    verdicts: dict = {}

    def ok(w, acts):
        nonlocal attempts
        attempts += 1
        key = hashlib.blake2b(repr((w, acts)).encode(), digest_size=16).digest()
        got = verdicts.get(key)
        if got is None:
            got = verdicts[key] = fails(w, acts)
        return got

    actions = _executed(kernel_cls, world, actions)
    # The costly fallbacks (drop an operation or a prefault together with a run of another
    # CPU's steps, up to len * 32 candidates each) run only in a round where the cheap
    # deletions found nothing: on a 400-action schedule one fallback alone would spend the
    # whole attempt budget before a single chunk is tried.
    costly = False
    changed = True
    while (changed or not costly) and attempts < attempts_max:
        costly = not changed
        changed = False
        # whole operations: a task's start (or faulting access) with every step it took
        groups, pins_made = _task_groups(kernel_cls, world, actions)
        for tid in sorted(groups, key=lambda t: -len(groups[t])):
            if attempts >= attempts_max:
                break
            drop = set(groups[tid])
            cand = [a for i, a in enumerate(actions) if i not in drop]
            if len(cand) == len(actions):
                continue
            good = ok(world, cand)
            if not good and tid in pins_made:
                # the operation took a GUP reference: pins are numbered in the order they
                # are taken, so without it every later pin's number is one lower, and the
                # pin_read / pin_write / unpin that named one must name it by its new number
                renumbered = _renumber_pins(cand, pins_made[tid])
                if renumbered != cand and ok(world, renumbered):
                    cand, good = renumbered, True
            if not good:
                # without that operation another one may do fewer steps (less to write back)
                cand = None if not costly else _drop_prefault_with_steps(
                    cand, world["ncpus"], lambda acts: ok(world, acts),
                    lambda: attempts < attempts_max)
            if cand is not None:
                actions = _executed(kernel_cls, world, cand)
                changed = True
                break
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
                continue
            # Without that page an operation does fewer steps (a writeback or zap skips it):
            # drop the prefault together with a run of one CPU's steps.
            cand = None if not costly else _drop_prefault_with_steps(
                actions, world["ncpus"], lambda acts: ok(w2, acts),
                lambda: attempts < attempts_max)
            if cand is not None:
                world, actions = w2, cand
                changed = True
        # a store of the value the page holds is the rarer action: each becomes a plain
        # store where the failure stays (deleting it was tried above)
        for i, a in enumerate(actions):
            if attempts >= attempts_max:
                break
            if a[0] == "access" and a[3] == STORE_SAME:
                cand = actions[:i] + [[*a[:3], 1]] + actions[i + 1:]
                if ok(world, cand):
                    actions = cand
                    changed = True
    # Nothing more to delete: fewer rows (what a race diagram draws), by moving one CPU's
    # stretch of actions next to its previous or next stretch, with a budget of its own
    # (the deletions above often spend theirs, most of it on candidates seen before).
    attempts_max = attempts + COALESCE_ATTEMPTS
    while attempts < attempts_max:
        moved = _coalesce(actions, lambda acts: ok(world, acts), lambda: attempts < attempts_max)
        if moved is None:
            break
        actions = _executed(kernel_cls, world, moved)
    return world, _executed(kernel_cls, world, actions)


#: the shrinker's budget (replays) for reordering a shrunk schedule into fewer rows
COALESCE_ATTEMPTS = 1500


def _coalesce(actions, ok, budget_left):
    """One schedule with fewer rows (trace.segments) for which ``ok`` holds, or None: for each
    stretch of one CPU's actions, the next stretch of the same CPU moved up to follow it, or
    it moved down to precede that one; whole stretches first, then the first action of the
    later stretch alone."""
    bounds = []   # (start, end, cpu) of each stretch
    for i, a in enumerate(actions):
        if bounds and bounds[-1][2] == a[1]:
            bounds[-1][1] = i + 1
        else:
            bounds.append([i, i + 1, a[1]])
    for whole in (True, False):
        for k, (s0, e0, cpu) in enumerate(bounds):
            nxt = next((b for b in bounds[k + 2:] if b[2] == cpu), None)
            if nxt is None:
                continue
            sj, ej = nxt[0], nxt[1] if whole else nxt[0] + 1
            cands = [actions[:e0] + actions[sj:ej] + actions[e0:sj] + actions[ej:]]
            if whole:
                cands.append(actions[:s0] + actions[e0:sj] + actions[s0:e0] + actions[sj:])
            for cand in cands:
                if not budget_left():
                    return None
                if ok(cand):
                    return cand
    return None


def _task_groups(kernel_cls, world, actions) -> tuple[dict, dict]:
    """(tid -> indices of the actions that started or advanced that task, tid -> the
    numbers of the GUP pins that task took)."""
    run = Run(kernel_cls, world)
    groups: dict = {}
    pins: dict = {}
    m = run.m
    for i, a in enumerate(actions):
        before = m.next_pin
        try:
            step = run.apply(a)
        except ModelFailure:
            break
        if step is not None and step.tid:
            groups.setdefault(step.tid, []).append(i)
            if m.next_pin != before:
                pins.setdefault(step.tid, []).extend(range(before, m.next_pin))
    return groups, pins


def _renumber_pins(actions, gone) -> list:
    """``actions`` with the pin numbers that operations name (their "pin" argument) as they
    are once the pins numbered ``gone`` are never taken: a higher number drops by how many
    of ``gone`` are below it (Machine.next_pin counts pins in the order they are taken)."""
    out = []
    for a in actions:
        if a[0] == "start":
            op = _ops.get(a[2])
            if op is not None and "pin" in op.arg_names:
                j = 3 + op.arg_names.index("pin")
                v = a[j]
                if type(v) is int and v not in gone:
                    a = [*a[:j], v - sum(1 for g in gone if g < v), *a[j + 1:]]
        out.append(a)
    return out


def _drop_prefault_with_steps(actions, ncpus, ok, budget_left, run_max: int = 32):
    for cpu in range(ncpus):
        idx = [i for i, a in enumerate(actions) if a[0] == "step" and a[1] == cpu]
        for k in range(1, min(run_max, len(idx)) + 1):
            for j in range(len(idx) - k + 1):
                if not budget_left():
                    return None
                drop = set(idx[j:j + k])
                cand = [a for i, a in enumerate(actions) if i not in drop]
                if ok(cand):
                    return cand
    return None


def _executed(kernel_cls, world, actions):
    """The actions a run really executed up to its violation or model failure (quiescence
    steps excluded)."""
    try:
        run, out = execute(kernel_cls, world, actions)
    except ModelFailure as mf:
        return mf.schedule
    return run.schedule_upto(out.step)
