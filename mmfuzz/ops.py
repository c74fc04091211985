"""The operation registry: every operation the fuzzer can start is declared once, beside the
kernel function that runs it, and everything else reads that declaration (syzkaller's
sys/linux/*.txt in miniature).

Declaring an operation
    Decorate the kernel entry point (a generator method of a mixin in mmfuzz/kernel/)::

        @operation("madvise_dontneed", VmaRange(),
                   doc="madvise(MADV_DONTNEED) of a range inside one of the caller's VMAs")
        def madvise_dontneed(self, t, start, npages): ...

    ``operation(name, *args, context=..., doc=..., swarm=0.7)``: ``name`` is what schedules, corpus files
    and the CLI say (``["start", cpu, name, *values]``); ``args`` are Arg objects, each giving
    one or more values in order; ``context`` is ``"process"`` (a syscall or fault: it needs a
    process on the CPU, ``t.mm`` is that process's mm) or ``"kthread"`` (a kernel thread or
    device: any CPU, ``t.mm`` is the CPU's mm if it has one, else None); ``doc`` is one line of
    what it models (``mmfuzz ops`` prints it); ``swarm`` is the share of swarm-testing runs
    that switch the operation on (lower for an operation that ends or takes over much of a run,
    such as exit, so that it does not crowd out the others). A swarm run switches on only
    operations that can start in its world (``Operation.possible``: a fork needs a CPU with no
    process for its child). The method is found by name on the kernel
    class, so a variant that overrides it needs no decorator.
    Mistakes are caught when the class body runs (a duplicate name, an argument that is not an
    Arg, a bad context), with a message saying what to write instead.

State it touches (the interaction relation)
    ``writes=(...)`` and ``reads=(...)`` name, from ``STATE`` below, the kernel state the
    modelled kernel function changes and the state its decisions read, each taken from the
    kernel source of that function (the declaration's comment cites where). Two operations
    interact (``interacts``) when one writes what the other reads or writes: only such pairs
    can order each other's effects, so only they need to meet in a run (the partial-order
    argument). What every operation does is left out, or every pair would interact: finding
    the VMA and the PTE it acts on (present, which pfn), taking and dropping locks (the
    locks order; they carry no state), flushing the TLB as such. User loads, stores and
    faults are not operations: they are enabled in every run, so what they touch is
    accounted for by the relation between operations only. Swarm draws read the relation
    (explore.swarm_ops_focused); ``mmfuzz ops --json`` shows it.

Argument domains
    An Arg draws its values with ``pick(options, label)``, the one primitive every engine
    supplies (a seeded random.Random's choice in fast mode, a Hypothesis draw in the rule
    machine), from a ``Ctx`` (the world, the CPU, its mm). It checks values from a file with
    ``check(values, world)`` and describes itself for ``mmfuzz ops``. Add a new kind of
    argument here as a subclass of Arg when none fits.

Order
    ``OPERATIONS`` lists the operations in registration order, i.e. the import order of the
    modules in mmfuzz/kernel/__init__.py and the definition order inside each: deterministic,
    and the order in which swarm testing switches operations on or off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONTEXTS = ("process", "kthread")

#: The state an operation may declare it writes or reads, and what each name means. A ":anon"
#: or ":file" suffix says which kind of folio (or of PTE, by the folio it maps): the kernel's
#: anon and file paths differ, and an operation that only ever meets one kind (MADV_FREE: anon
#: VMAs only; writeback: page-cache folios only) says so.
STATE = {
    "vma": "an mm's VMA tree and vm_flags (split, detach, insert; VM_WRITE, VM_SOFTDIRTY)",
    "i_mmap": "a file's address_space->i_mmap tree of the VMAs mapping it (the file rmap)",
    "pgtable": "the PTE tables themselves (pmd entries; free_pgtables frees them)",
    "pte.map:anon": "what a PTE of an anon folio maps: cleared, replaced or made a swap entry",
    "pte.map:file": "what a PTE of a page-cache folio maps: cleared or replaced",
    "pte.write:anon": "the write bit of a PTE mapping an anon folio",
    "pte.write:file": "the write bit of a PTE mapping a page-cache folio",
    "pte.dirty:anon": "the dirty bit of a PTE mapping an anon folio",
    "pte.dirty:file": "the dirty bit of a PTE mapping a page-cache folio",
    "pte.young": "the accessed bit of a PTE",
    "pte.soft_dirty": "the soft-dirty bit of a PTE (present or swap)",
    "tlb.deferred": "a TLB flush owed past the PTL: an mmu_gather's range, mm->tlb_flush_pending, "
                    "reclaim's tlb_ubc / mm->tlb_flush_batched",
    "mm.write_protect_seq": "mm->write_protect_seq, which fork holds while it write-protects and "
                            "GUP-fast FOLL_PIN checks",
    "folio.mapcount:anon": "an anon folio's mapcount and anon rmap (anon_vma links)",
    "folio.mapcount:file": "a page-cache folio's mapcount",
    "folio.refcount": "references other paths count: folio_ref_freeze, an elevated-refcount test",
    "gup.pin": "a reference GUP handed out and its holder keeps (FOLL_PIN's bias that "
               "folio_maybe_dma_pinned reads; a pipe's FOLL_GET page)",
    "PG_anon_exclusive": "PageAnonExclusive of an anon page",
    "folio.dirty:anon": "PG_dirty of an anon (swap-backed) folio",
    "folio.dirty:file": "PG_dirty of a page-cache folio",
    "folio.writeback": "PG_writeback",
    "folio.lru": "LRU state: isolation (PG_lru), PG_referenced, PG_swapbacked (lazyfree)",
    "pagecache": "a file's page cache (the folios in its xarray)",
    "swap": "the swap cache and swap slots (a swap PTE's slot count)",
    "folio.data": "the page's contents",
}


@dataclass(frozen=True)
class Ctx:
    """What an argument's domain may depend on: the world (plain data), the CPU the operation
    starts on and the mm of the process running there (None: no process)."""

    world: dict
    cpu: int
    mm_id: int | None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Arg:
    """One or more values of a start action. Subclasses define ``names``, ``draw``,
    ``check`` and ``describe``."""

    names: tuple[str, ...] = ()

    def draw(self, pick, ctx: Ctx) -> list:
        raise NotImplementedError

    def check(self, values: list, world: dict) -> str | None:
        """None if ``values`` (one per name) fit ``world``, else what is wrong."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def possible(self, world: dict) -> bool:
        """Can a start action of ``world`` ever be enabled with these values? (False: every
        draw is refused by the run, so a swarm run does not switch the operation on.)"""
        return True


def _own_vmas(ctx: Ctx) -> list[tuple[int, dict]]:
    return [(i, v) for i, v in enumerate(ctx.world["vmas"]) if v["mm"] == ctx.mm_id]


def _pages(world: dict) -> int:
    return world["ptrs_per_pte"] * world["npmds"]


class VmaRange(Arg):
    """``start, npages``: a range of pages inside one of the caller's VMAs of the world (the
    VMA tree may have changed since; the kernel copes with what is there now)."""

    names = ("start", "npages")

    def draw(self, pick, ctx):
        lo, hi = pick([(v["start"], v["end"]) for _, v in _own_vmas(ctx)], "vma")
        start = pick(range(lo, hi), "start")
        return [start, pick(range(1, hi - start + 1), "npages")]

    def check(self, values, world):
        start, npages = values
        limit = _pages(world)
        if not (_is_int(start) and _is_int(npages)):
            return "start and npages must be integers"
        if not (0 <= start < limit and 1 <= npages <= limit - start):
            return f"range {start}+{npages} must lie inside the {limit} pages the page table covers"
        return None

    def describe(self):
        return "start, npages: a page range inside one of the caller's VMAs"


class VmaPage(Arg):
    """``start``: one page inside one of the caller's VMAs of the world (``private``: only
    its private VMAs, when it has one)."""

    names = ("start",)

    def __init__(self, private: bool = False):
        self.private = private

    def draw(self, pick, ctx):
        vmas = [v for _, v in _own_vmas(ctx)]
        if self.private and any(not v.get("shared", False) for v in vmas):
            vmas = [v for v in vmas if not v.get("shared", False)]
        lo, hi = pick([(v["start"], v["end"]) for v in vmas], "vma")
        return [pick(range(lo, hi), "start")]

    def check(self, values, world):
        (start,) = values
        limit = _pages(world)
        if not (_is_int(start) and 0 <= start < limit):
            return f"start must be a page inside the {limit} pages the page table covers"
        return None

    def describe(self):
        return ("start: a page inside one of the caller's "
                + ("private VMAs" if self.private else "VMAs"))


class VmaTemplate(Arg):
    """``vma``: the index of one of the caller's VMAs in world["vmas"] (mmap maps it again)."""

    names = ("vma",)

    def draw(self, pick, ctx):
        return [pick([i for i, _ in _own_vmas(ctx)], "vma")]

    def check(self, values, world):
        (i,) = values
        if not (_is_int(i) and 0 <= i < len(world["vmas"])):
            return f"vma must be an index into the world's {len(world['vmas'])} VMAs"
        return None

    def describe(self):
        return "vma: index of one of the caller's VMAs in world.vmas"


class FileId(Arg):
    """``file``: the id of one of the world's files (drawn only when there is a choice)."""

    names = ("file",)

    def draw(self, pick, ctx):
        ids = [f["id"] for f in ctx.world["files"]]
        return [ids[0] if len(ids) == 1 else pick(ids, "file")]

    def check(self, values, world):
        (fid,) = values
        if not (_is_int(fid) and any(f["id"] == fid for f in world["files"])):
            return f"file must be one of the world's file ids {[f['id'] for f in world['files']]}"
        return None

    def describe(self):
        return "file: id of one of the world's files"


class FilePage(Arg):
    """``file, index``: a page of one of the world's files."""

    names = ("file", "index")

    def draw(self, pick, ctx):
        (fid,) = FileId().draw(pick, ctx)
        npages = next(f["npages"] for f in ctx.world["files"] if f["id"] == fid)
        return [fid, pick(range(npages), "index")]

    def check(self, values, world):
        fid, index = values
        bad = FileId().check([fid], world)
        if bad:
            return bad
        npages = next(f["npages"] for f in world["files"] if f["id"] == fid)
        if not (_is_int(index) and 0 <= index < npages):
            return f"index must be a page of file {fid} (0-{npages - 1})"
        return None

    def describe(self):
        return "file, index: a page of one of the world's files"


class FileRange(Arg):
    """``file, index, npages``: a range of pages of one of the world's files."""

    names = ("file", "index", "npages")

    def draw(self, pick, ctx):
        fid, index = FilePage().draw(pick, ctx)
        npages = next(f["npages"] for f in ctx.world["files"] if f["id"] == fid)
        return [fid, index, pick(range(1, npages - index + 1), "npages")]

    def check(self, values, world):
        fid, index, npages = values
        bad = FilePage().check([fid, index], world)
        if bad:
            return bad
        size = next(f["npages"] for f in world["files"] if f["id"] == fid)
        if not (_is_int(npages) and 1 <= npages <= size - index):
            return f"npages must be 1-{size - index} (the range must end inside file {fid})"
        return None

    def describe(self):
        return "file, index, npages: a page range of one of the world's files"


class MremapRange(Arg):
    """``start, npages, new_start``: a page range inside one of the caller's MAP_SHARED file
    VMAs of the world and a destination for it in address space the world leaves free in the
    caller (when there is none, the source itself: -EINVAL) (only shared file VMAs: an anon folio's rmap index is its address here, vm_pgoff of an
    anonymous VMA is not modelled, so anon pages cannot move)."""

    names = ("start", "npages", "new_start")

    def draw(self, pick, ctx):
        vmas = [v for _, v in _own_vmas(ctx) if v["file"] is not None and v.get("shared")]
        if not vmas:
            vmas = [v for _, v in _own_vmas(ctx)]   # the kernel refuses it (-EINVAL here)
        lo, hi = pick([(v["start"], v["end"]) for v in vmas], "vma")
        start = pick(range(lo, hi), "start")
        npages = pick(range(1, hi - start + 1), "npages")
        limit = _pages(ctx.world)
        # destinations the world leaves free in this process (a moved range lands in free
        # address space, as mremap without MREMAP_FIXED would put it): the VMA tree may hold
        # more by then, and MREMAP_FIXED unmaps whatever is there
        used = [(v["start"], v["end"]) for _, v in _own_vmas(ctx)]
        dests = [d for d in range(0, limit - npages + 1)
                 if all(d + npages <= a or d >= b for a, b in used)]
        if not dests:
            return [start, npages, start]   # no room: an overlapping move, -EINVAL
        return [start, npages, pick(dests, "new_start")]

    def check(self, values, world):
        start, npages, new_start = values
        bad = VmaRange().check([start, npages], world)
        if bad:
            return bad
        if not (_is_int(new_start) and 0 <= new_start <= _pages(world) - npages):
            return f"the destination {new_start}+{npages} must lie inside the page table"
        return None

    def describe(self):
        return ("start, npages, new_start: a range of one of the caller's shared file VMAs and "
                "where MREMAP_FIXED moves it")


class ChildCpu(Arg):
    """``child_cpu``: a CPU of the world that starts without a process (cpu_mm 0), where a fork
    places its child. The run refuses the fork while a process runs there or another fork is
    bound to it (a CPU whose process exited is free again, but is not drawn)."""

    names = ("child_cpu",)

    def draw(self, pick, ctx):
        free = [i for i, mm in enumerate(ctx.world["cpu_mm"]) if mm == 0]
        if not free:
            return [ctx.cpu]  # never enabled: the CPU runs the forking process
        return [free[0] if len(free) == 1 else pick(free, "child_cpu")]

    def check(self, values, world):
        (cpu,) = values
        if not (_is_int(cpu) and 0 <= cpu < world["ncpus"]):
            return f"child_cpu must be one of the world's {world['ncpus']} CPUs"
        return None

    def describe(self):
        return "child_cpu: a CPU with no process, where the child runs"

    def possible(self, world):
        return 0 in world["cpu_mm"]


class Choice(Arg):
    """One named value out of a fixed tuple (e.g. a clear_refs type, a FOLL_* flag set)."""

    def __init__(self, name: str, values: tuple, doc: str = ""):
        if not values:
            raise ValueError(f"Choice({name!r}) needs at least one value")
        self.names = (name,)
        self.values = tuple(values)
        self.doc = doc

    def draw(self, pick, ctx):
        return [self.values[0] if len(self.values) == 1 else pick(list(self.values), self.names[0])]

    def check(self, values, world):
        (v,) = values
        if isinstance(v, bool) or v not in self.values:
            return f"{self.names[0]} must be one of {list(self.values)}"
        return None

    def describe(self):
        return f"{self.names[0]}: one of {list(self.values)}" + (f" ({self.doc})" if self.doc else "")


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    args: tuple = ()
    context: str = "process"
    doc: str = ""
    module: str = ""
    arg_names: tuple = field(default=())
    swarm: float = 0.7
    writes: tuple = ()
    reads: tuple = ()

    @property
    def arity(self) -> int:
        return len(self.arg_names)

    def draw(self, pick, ctx: Ctx) -> list:
        """The values of a start action, drawn with ``pick``."""
        out: list = []
        for a in self.args:
            out.extend(a.draw(pick, ctx))
        return out

    def possible(self, world: dict) -> bool:
        """Can this operation start at all in ``world`` (every argument has a value there that
        the run can enable)? A fork cannot in a world without a CPU for its child."""
        return all(a.possible(world) for a in self.args)

    def check(self, values: list, world: dict) -> str | None:
        """None if ``values`` fit this operation in ``world``, else what is wrong."""
        if len(values) != self.arity:
            return (f"{self.name} takes {self.arity} argument(s) ({', '.join(self.arg_names)}), "
                    f"not {len(values)}")
        i = 0
        for a in self.args:
            n = len(a.names)
            bad = a.check(list(values[i:i + n]), world)
            if bad:
                return f"{self.name}: {bad}"
            i += n
        return None

    def to_json(self) -> dict:
        return {"name": self.name, "context": self.context, "kernel_function": self.method,
                "module": self.module, "args": [a.describe() for a in self.args],
                "arg_names": list(self.arg_names), "doc": self.doc,
                "writes": list(self.writes), "reads": list(self.reads)}


_REGISTRY: dict[str, Operation] = {}


def operation(name: str, *args: Arg, context: str = "process", doc: str = "",
              swarm: float = 0.7, writes: tuple = (), reads: tuple = ()):
    """Decorator declaring the kernel entry point of operation ``name`` (see the module doc)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"operation name {name!r} must be an identifier such as 'madvise_free'")
    for a in args:
        if not isinstance(a, Arg):
            raise TypeError(f"operation {name!r}: argument {a!r} is not an mmfuzz.ops.Arg; use "
                            "VmaRange(), VmaTemplate(), FileId(), FilePage(), Choice(...) or a "
                            "new Arg subclass")
    if context not in CONTEXTS:
        raise ValueError(f"operation {name!r}: context must be one of {CONTEXTS}, not {context!r}")
    if not (isinstance(swarm, float) and 0.0 < swarm <= 1.0):
        raise ValueError(f"operation {name!r}: swarm must be a probability in (0, 1], such as 0.7")
    for kind, tags in (("writes", writes), ("reads", reads)):
        if not isinstance(tags, tuple) or len(set(tags)) != len(tags):
            raise TypeError(f"operation {name!r}: {kind} must be a tuple of distinct names of "
                            "mmfuzz.ops.STATE, such as (\"pte.dirty:file\",)")
        bad = [x for x in tags if x not in STATE]
        if bad:
            raise ValueError(f"operation {name!r}: {kind} names unknown state {bad}; "
                             f"mmfuzz.ops.STATE has {', '.join(STATE)}")

    def register(fn):
        if name in _REGISTRY and _REGISTRY[name].method != fn.__name__:
            raise ValueError(f"operation {name!r} is declared twice ({_REGISTRY[name].module}."
                             f"{_REGISTRY[name].method} and {fn.__module__}.{fn.__name__}); "
                             "give the new one another name")
        names = tuple(n for a in args for n in a.names)
        _REGISTRY[name] = Operation(name, fn.__name__, tuple(args), context, doc or
                                    (fn.__doc__ or "").strip().split("\n")[0], fn.__module__,
                                    names, swarm, tuple(writes), tuple(reads))
        return fn

    return register


_LOADED = []   # non-empty once the kernel modules are imported (get() runs at every start)


def _load() -> dict[str, Operation]:
    if not _LOADED:
        from . import kernel  # noqa: F401  (importing the kernel modules registers their operations)
        _LOADED.append(True)
    return _REGISTRY


def operations() -> dict[str, Operation]:
    """name -> Operation, in registration order."""
    return _load()


def get(name) -> Operation | None:
    return _load().get(name) if isinstance(name, str) else None


def names() -> tuple[str, ...]:
    return tuple(_load())


def conflicts(a: Operation, b: Operation) -> tuple:
    """The state through which ``a`` and ``b`` interact: what one writes and the other reads or
    writes, in STATE order (empty: they commute, as far as the declared state goes)."""
    touched_a, touched_b = set(a.writes) | set(a.reads), set(b.writes) | set(b.reads)
    return tuple(x for x in STATE if (x in a.writes and x in touched_b)
                 or (x in b.writes and x in touched_a))


def interacts(a: Operation, b: Operation) -> bool:
    return bool(conflicts(a, b))


def relation() -> dict[str, tuple[tuple[str, int], ...]]:
    """name -> (other, weight) for every operation it interacts with (itself included when it
    writes what it reads or writes), in registration order; the weight is the number of
    state names through which they interact (``conflicts``). Computed once per registry
    state (a swarm draw reads it once per run)."""
    decl = _load()
    key = tuple((op.name, op.writes, op.reads) for op in decl.values())
    if _RELATION.get("key") != key:
        ops_ = list(decl.values())
        _RELATION["key"] = key
        _RELATION["rel"] = {a.name: tuple((b.name, len(conflicts(a, b))) for b in ops_
                                          if interacts(a, b)) for a in ops_}
    return _RELATION["rel"]


_RELATION: dict = {}


class _More(Exception):
    pass


def enumerate_values(op: Operation, ctx: Ctx) -> list[list]:
    """Every value list ``op.draw`` can produce in ``ctx``, in pick order (the uniform
    baseline enumerates the concrete enabled actions with it)."""
    out: list[list] = []

    def rec(prefix: list[int]) -> None:
        pos = [0]
        width = [0]

        def pick(options, label):
            options = list(options)
            i = pos[0]
            pos[0] += 1
            if i < len(prefix):
                return options[prefix[i]]
            width[0] = len(options)
            raise _More

        try:
            out.append(op.draw(pick, ctx))
        except _More:
            for j in range(width[0]):
                rec(prefix + [j])

    rec([])
    return out


def check_start(action: list, world: dict) -> str | None:
    """None if ``["start", cpu, op, *values]`` names a known operation with values that fit
    ``world``, else one sentence of what is wrong (corpus validation)."""
    if len(action) < 3:
        return "a start action is [\"start\", cpu, operation, *arguments]"
    op = get(action[2])
    if op is None:
        return f"unknown operation {action[2]!r}; `mmfuzz ops` lists them: {', '.join(names())}"
    return op.check(list(action[3:]), world)
