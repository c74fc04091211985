"""The state of the modelled machine: plain objects, no behaviour beyond bookkeeping.

Everything the kernel operations (mmfuzz.kernel) and the hardware (mmfuzz.hw) act on lives
here: CPUs with TLBs, processes (mm) with VMAs and a two-level page table whose PTE-table
pages are objects with their own lifetime and PTL, folios, the page cache and the disk.

Determinism: every container is a list or an int-keyed dict filled in program order, so
iteration order never depends on hashing or memory addresses.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from .oracle import Oracle


class Pte(NamedTuple):
    """A present x86 PTE (a none PTE is ``None``).

    ``dirty`` is the one logical dirty bit (hardware D plus SavedDirty,
    arch/x86/include/asm/pgtable.h); ``special`` marks the shared zero page (no rmap, no ref).
    ``soft_dirty`` is _PAGE_SOFT_DIRTY: x86 pte_mkdirty() sets it together with D, the
    hardware's own D update does not, clear_refs clears it (fs/proc/task_mmu.c).
    """

    pfn: int
    write: bool
    dirty: bool
    young: bool
    special: bool = False
    soft_dirty: bool = False
    present = True  # pte_present(); a SwapPte is not


class SwapPte(NamedTuple):
    """A non-present PTE holding a swap entry (include/linux/swapops.h): ``offset`` is
    swp_offset() into the one swap device (Machine.swap); ``exclusive`` is SWP_EXCLUSIVE
    (pte_swp_exclusive: the page was PG_anon_exclusive when it was unmapped, so do_swap_page
    may map it writable again); ``soft_dirty`` is _PAGE_SWP_SOFT_DIRTY.

    Code reading a PTE must test ``present`` before ``pfn``: a swap PTE has pfn None (an index
    with it fails loudly) and reads as neither writable, dirty, young nor special."""

    offset: int
    exclusive: bool = False
    soft_dirty: bool = False
    present = False
    pfn = None
    write = False
    dirty = False
    young = False
    special = False


class TlbEntry(NamedTuple):
    """A cached translation: it keeps W and D as they were when it was filled.

    ``uid`` names the folio (or None for the zero page) the frame held at fill time, so a
    later check can tell "the frame was freed or reused since" without trusting the pfn.
    """

    pfn: int
    uid: int
    write: bool
    dirty: bool


class SpinLock:
    __slots__ = ("name", "owner")

    def __init__(self, name: str):
        self.name = name
        self.owner: Optional[int] = None  # task id


class RwSem:
    """A reader/writer semaphore (mmap_lock, i_mmap_rwsem). Fairness is not modelled."""

    __slots__ = ("name", "readers", "writer", "mm")

    def __init__(self, name: str, mm: "Optional[Mm]" = None):
        self.name = name
        self.readers: list[int] = []  # task ids, in acquisition order
        self.writer: Optional[int] = None
        self.mm = mm  # set on an mm's mmap_lock: releasing the write side ends VMA write locks


class Folio:
    """An order-0 folio (large folios are left out). ``data`` is the version of the last
    store that landed in the frame, 0 for a zeroed or never-written page."""

    __slots__ = (
        "uid", "pfn", "refcount", "mapcount", "pincount", "dirty", "locked", "writeback",
        "wb_pending", "anon", "anon_exclusive", "lazyfree", "mapping", "index", "data",
        "freed", "uptodate", "anon_vma",
        "swapcache", "swap", "referenced", "isolated", "ksm", "ksm_rmap",
    )

    def __init__(self, uid: int, pfn: int):
        self.uid = uid
        self.pfn = pfn
        self.refcount = 1
        self.mapcount = 0          # folio_mapcount(); folio_mapped() is mapcount >= 1
        self.pincount = 0
        self.dirty = False         # PG_dirty
        self.locked: Optional[int] = None  # PG_locked, owner task id
        self.writeback = False     # PG_writeback
        self.wb_pending = False    # writeback started and the device has not read it yet
        self.anon = False
        self.anon_exclusive = False  # PG_anon_exclusive
        self.lazyfree = False
        self.mapping: Optional[int] = None  # file id for page-cache folios
        self.index = 0
        self.data = 0
        self.freed = False
        self.uptodate = True       # PG_uptodate: false while a read from disk is pending
        # Reclaim and swap (mm/vmscan.c, mm/swap_state.c). ``lazyfree`` above is an anon
        # folio's !PG_swapbacked (MADV_FREE's folio_mark_lazyfree clears PG_swapbacked).
        self.swapcache = False     # PG_swapcache: in the swap cache, folio->swap valid
        self.swap = 0              # folio->swap: swp_offset of its slot (0: none)
        self.referenced = False    # PG_referenced (folio_check_references' second chance)
        self.isolated = False      # !PG_lru: taken off the LRU by reclaim (isolate_lru_folios)
        self.anon_vma: Optional[AnonVma] = None  # folio->mapping of an anon folio
        self.ksm = False           # folio_test_ksm (mm/ksm.c): a KSM folio, stable node set
        self.ksm_rmap: list[tuple[int, int]] = []  # its stable node's rmap items: (mm, vpn)


class PteTable:
    """A PTE-table page: PTRS_PER_PTE entries and its own split PTL."""

    __slots__ = ("tid", "pfn", "ptes", "ptl", "freed", "mm_id", "pmd_index", "tlb_gen")

    def __init__(self, tid: int, pfn: int, nptes: int, mm_id: int, pmd_index: int):
        self.tid = tid
        self.pfn = pfn
        self.ptes: list[Optional[Pte]] = [None] * nptes
        self.ptl = SpinLock(f"PTL(table {tid})")
        self.freed = False
        self.mm_id = mm_id
        self.pmd_index = pmd_index
        # the table's pending TLB generation: used only by Nadav Amit's proposal (the
        # generation variant in mmfuzz/kernels.py); mainline never writes it
        self.tlb_gen = 0


class AnonVma:
    """struct anon_vma (mm/rmap.c): the VMAs whose pages its folios may be mapped by (the
    anon_vma_chain entries of its interval tree, flattened into one list: every VMA linked
    to this anon_vma, a forked child's included). ``root``: anon_vma->root, the oldest
    anon_vma of its fork tree (itself for a process's own; anon_vma_fork gives a child's the
    parent's root), where __folio_set_anon points a folio that is not exclusive."""

    __slots__ = ("avid", "vmas", "rwsem", "root")

    def __init__(self, avid: int, root: "Optional[AnonVma]" = None):
        self.avid = avid
        self.vmas: list[Vma] = []
        self.rwsem = RwSem(f"anon_vma(av{avid})->rwsem")
        self.root: AnonVma = self if root is None else root


class Vma:
    __slots__ = ("vid", "mm_id", "start", "end", "file", "pgoff", "shared", "writable",
                 "detached", "anon_vma", "anon_vma_chain", "vm_lock", "vm_lock_seq",
                 "softdirty", "mapid")

    def __init__(self, vid, mm_id, start, end, file, pgoff, shared, writable):
        self.vid = vid
        self.mm_id = mm_id
        self.start = start   # first virtual page number
        self.end = end       # one past the last
        self.file = file     # file id, or None for anonymous memory
        self.pgoff = pgoff
        self.shared = shared
        self.writable = writable
        self.detached = False
        self.anon_vma: Optional[AnonVma] = None    # set by anon_vma_prepare or anon_vma_fork
        self.anon_vma_chain: list[AnonVma] = []    # every anon_vma this VMA is linked into
        self.vm_lock = RwSem(f"vm_lock(vma{vid})")  # the per-VMA lock (CONFIG_PER_VMA_LOCK)
        self.vm_lock_seq = -1                      # == mm.mm_lock_seq: write-locked
        # VM_SOFTDIRTY: set on every new VMA (mm/vma.c __mmap_region), cleared by clear_refs 4;
        # while set, soft-dirty write-fault tracking is off for the VMA (vma_soft_dirty_enabled)
        self.softdirty = True
        # the checker's name for the mapping this VMA is part of (not kernel state): the vid
        # of the VMA that mmap (or the world) created; __split_vma's new VMA keeps its
        # original's, so notes taken on a page survive an mprotect or munmap that splits
        # the VMA around it, and only an unmap and a new mapping of the range reset them
        self.mapid = vid

    def contains(self, vpn: int) -> bool:
        return self.start <= vpn < self.end

    def file_index(self, vpn: int) -> int:
        return self.pgoff + (vpn - self.start)

    def describe(self) -> str:
        kind = f"file{self.file} {'shared' if self.shared else 'private'}" if self.file is not None else "anon"
        return f"vma{self.vid}[{self.start:#x}-{self.end:#x}) {kind}"


class Mm:
    __slots__ = ("mm_id", "vmas", "pmd", "mmap_lock", "page_table_lock", "tlb_flush_pending",
                 "tlb_gen", "cpumask", "mm_lock_seq", "write_protect_seq", "users", "origin",
                 "tlb_flush_batched", "tlb_gen_completed")

    def __init__(self, mm_id: int, npmds: int):
        self.mm_id = mm_id
        self.vmas: list[Vma] = []           # sorted by start; the mm's VMA tree
        self.pmd: list[Optional[PteTable]] = [None] * npmds
        self.mmap_lock = RwSem(f"mmap_lock(mm{mm_id})", self)
        self.page_table_lock = SpinLock(f"page_table_lock(mm{mm_id})")  # PMD-level lock
        self.tlb_flush_pending = 0
        self.tlb_gen = 0
        # the completed TLB generation of Nadav Amit's proposal (the generation variant only)
        self.tlb_gen_completed = 0
        self.cpumask: list[int] = []
        # mm->tlb_flush_batched (mm/rmap.c): one atomic int, bits 0-14 the pending generation
        # (reclaim deferred a flush: set_tlb_ubc_flush_pending), bits 16-30 the flushed one
        # (flush_tlb_batched_pending caught up). See TLB_FLUSH_BATCH_* below.
        self.tlb_flush_batched = 0
        self.mm_lock_seq = 0        # mm->mm_lock_seq: bumped by mmap_write_unlock/downgrade
        self.write_protect_seq = 0  # mm->write_protect_seq (a seqcount: odd while fork copies)
        self.users = 0              # mm_users: CPUs whose process runs this mm
        self.origin = mm_id         # the world's mm this one was forked from (for the
                                    # fuzzer's choice of addresses; not kernel state)

    def find_vma(self, vpn: int) -> Optional[Vma]:
        for vma in self.vmas:
            if vma.contains(vpn):
                return vma
        return None


#: mm/rmap.c: "Bits 0-14 of mm->tlb_flush_batched record pending generations. Bits 16-30 of
#: mm->tlb_flush_batched bit record flushed generations."
TLB_FLUSH_BATCH_FLUSHED_SHIFT = 16
TLB_FLUSH_BATCH_PENDING_MASK = (1 << (TLB_FLUSH_BATCH_FLUSHED_SHIFT - 1)) - 1
TLB_FLUSH_BATCH_PENDING_LARGE = TLB_FLUSH_BATCH_PENDING_MASK // 2

#: the ways a world's flush_tlb_multi reaches remote CPUs (Machine.tlb_flush)
TLB_FLUSH_MODES = ("ipi", "hypercall")


class TlbflushUnmapBatch:
    """include/linux/mm_types_task.h struct tlbflush_unmap_batch (current->tlb_ubc): the
    flushes reclaim deferred. ``cpumask`` is x86's arch_tlbflush_unmap_batch (the CPUs to
    flush, ascending); ``flush_required`` "True if a flush is needed"; ``writable`` "If true
    then the PTE was dirty when unmapped. The entry must be flushed before IO is initiated
    or a stale TLB entry potentially allows an update without redirtying the page"."""

    __slots__ = ("cpumask", "flush_required", "writable")

    def __init__(self):
        self.cpumask: list[int] = []
        self.flush_required = False
        self.writable = False


SWAP_HAS_CACHE = 0x40  # include/linux/swap.h: "Flag page is cached, in first swap_map"


class SwapInfo:
    """The one swap device: mm/swapfile.c struct swap_info_struct with the swap cache of
    mm/swap_state.c. The swap model every path shares:

    - ``swap_map[offset]``: the number of swap PTEs that refer to the slot (swap_duplicate
      adds one, swap_free drops one), | SWAP_HAS_CACHE while a folio for the slot is in the
      swap cache. 0 = free. Slot 0 is the header page and never allocated.
    - ``data[offset]``: the version the device holds for the slot (like FileObj.disk).
    - ``cache``: the swap cache, offset -> folio (PG_swapcache, folio->swap == offset); the
      cache holds one reference on the folio.
    """

    __slots__ = ("swap_map", "data", "cache")

    def __init__(self, nslots: int):
        self.swap_map = [0] * nslots
        self.data = [0] * nslots
        self.cache: dict[int, Folio] = {}


class FileObj:
    """An inode: its page cache (index -> folio), i_mmap (VMAs that map it) and its disk."""

    __slots__ = ("file_id", "npages", "cache", "i_mmap", "i_mmap_rwsem", "invalidate_lock",
                 "disk")

    def __init__(self, file_id: int, npages: int):
        self.file_id = file_id
        self.npages = npages
        self.cache: dict[int, Folio] = {}
        self.i_mmap: list[Vma] = []
        self.i_mmap_rwsem = RwSem(f"i_mmap_rwsem(file{file_id})")
        # mapping->invalidate_lock: page-cache insertion (the fault's miss path) takes it
        # shared, hole punching exclusive
        self.invalidate_lock = RwSem(f"invalidate_lock(file{file_id})")
        self.disk = [0] * npages


class Pin:
    """A page reference GUP handed to its user and still held: a device's or io_uring's
    array of pinned pages (FOLL_PIN), or a pipe buffer filled by vmsplice (FOLL_GET).
    ``folio`` is None for the shared zero page (mm/gup.c: "Don't take a pin on the zero
    page"); ``mm_id``/``vpn`` name the user address it was taken for, as the user's own
    iovec does; ``flags`` are the FOLL_* bits of mmfuzz.kernel.gup."""

    __slots__ = ("pin_id", "folio", "mm_id", "vpn", "flags")

    def __init__(self, pin_id, folio, mm_id, vpn, flags):
        self.pin_id = pin_id
        self.folio = folio
        self.mm_id = mm_id
        self.vpn = vpn
        self.flags = flags


class FlushRequest:
    """An x86 TLB-shootdown request queued on one target CPU (flush_tlb_func's info)."""

    __slots__ = ("mm_id", "start", "end", "full", "initiator")

    def __init__(self, mm_id, start, end, full, initiator):
        self.mm_id = mm_id
        self.start = start
        self.end = end
        self.full = full
        self.initiator = initiator  # task id that waits for the ack


class Cpu:
    __slots__ = ("cpu_id", "mm_id", "tlb", "task", "irqs_off", "irq_section", "ipi_queue",
                 "reserved")

    def __init__(self, cpu_id: int, mm_id: int):
        self.cpu_id = cpu_id
        self.mm_id = mm_id                    # the mm of the user thread running here; 0: no
                                              # process (a fork may place its child here)
        self.reserved = False                 # a fork in progress will place its child here
        self.tlb: dict[int, TlbEntry] = {}    # (mm_id << 32 | vpn) -> entry
        self.task = None                      # the kernel operation in progress, if any
        self.irqs_off = False
        # IRQs-off sections this CPU has entered (local_irq_save counts them): an RCU-sched
        # grace period that began inside section k has ended for this CPU once it is out of
        # section k (see RcuCallback)
        self.irq_section = 0
        self.ipi_queue: list[FlushRequest] = []


class RcuCallback:
    """A call_rcu() of kernel/rcu/tree.c whose grace period has not ended: the page-table
    pages of one tlb_remove_table_free (mm/mmu_gather.c tlb_remove_table_rcu frees them) and
    the RCU-sched readers it waits for, (cpu id, IRQs-off section) of each CPU that had IRQs
    disabled at the call ("We use the sched RCU variant, as that guarantees that IRQ/preempt
    disabling holds off grace periods"). The callback runs at the first moment the grace
    period allows (the adversarial choice for a lockless walker). Left out: other RCU readers
    (no modelled walker of a table holds rcu_read_lock without also disabling IRQs or holding
    the PTL), callback latency."""

    __slots__ = ("readers", "tables")

    def __init__(self, readers: list, tables: list):
        self.readers = readers
        self.tables = tables


def tlb_key(mm_id: int, vpn: int) -> int:
    return (mm_id << 32) | vpn


class Machine:
    """The whole modelled system. ``world`` is the plain-data description it was built from."""

    def __init__(self, world: dict):
        self.world = world
        self.ptrs_per_pte: int = world["ptrs_per_pte"]
        self.npmds: int = world["npmds"]
        self.cpus = [Cpu(i, mm_id) for i, mm_id in enumerate(world["cpu_mm"])]
        # how flush_tlb_multi reaches the other CPUs (TLB_FLUSH_MODES): "ipi", native x86 (a
        # target flushes in its IPI handler, so a CPU with IRQs off holds the flusher up), or
        # "hypercall", a paravirt guest's (Xen PV xen_flush_tlb_multi, Hyper-V
        # hyperv_flush_tlb_multi: the hypervisor flushes every target vCPU, "even when the
        # target CPU has interrupts disabled"; AMD INVLPGB broadcast behaves the same)
        self.tlb_flush: str = world.get("tlb_flush", "ipi")
        self.rcu_callbacks: list[RcuCallback] = []   # call_rcu()s still in their grace period
        self.mms: dict[int, Mm] = {}
        self.files: dict[int, FileObj] = {}
        # the ids of the files the world opened O_RDONLY, in world order: a constant of the
        # run, read by no-write-to-readonly-file after every step
        self.readonly_files: list[int] = [f["id"] for f in world["files"] if f.get("readonly")]
        self.frames: list[Optional[object]] = [None] * world["nframes"]  # pfn -> Folio | PteTable
        self.free_pfns: list[int] = list(range(world["nframes"] - 1, 0, -1))  # pfn 0: zero page
        self.zero_pfn = 0
        self.next_uid = 1
        self.next_tid = 1
        self.next_vid = 1
        self.next_version = 1
        self.next_avid = 1
        self.clock = 0
        # Ground truth for dirty-data-preserved: (file, index) -> version of the last store
        # that landed in that file page's page-cache folio.
        self.expected: dict[tuple[int, int], int] = {}
        # (mm, vpn) -> clock of the last change that revoked a translation (PTE cleared or
        # write-protected); used by no-stale-translation-after-return.
        self.revoked_at: dict[int, int] = {}
        # clock of the last step that cleared an anon folio's PG_anon_exclusive (fork, KSM,
        # swap-out): read by the directed search's window hold (explore.DirectedPolicy), never
        # by a kernel function or a property
        self.anon_shared_at = -1
        self.events: list[tuple] = []  # facts emitted by the current step, for properties
        self.swap = SwapInfo(world.get("swap_slots", 4))
        # GUP references still held by their users (pin id -> Pin), in creation order.
        self.pins: dict[int, Pin] = {}
        self.next_pin = 1
        # The checker's notes (who wrote which version, which pins the user detached),
        # kept apart from kernel state; see mmfuzz/oracle.py.
        self.oracle = Oracle()
        self.stats: dict[str, int] = {}
        # the cost record (mmfuzz.cost): op -> [flushes, IPIs, CPUs interrupted]; task id ->
        # CPUs it interrupted. Checker's notes: no kernel function reads them.
        self.cost: dict[str, list[int]] = {}
        self.cost_cpus: dict[int, list[int]] = {}

    # --- allocation ------------------------------------------------------------------
    def alloc_pfn(self) -> int:
        if not self.free_pfns:
            raise OutOfFrames("the world ran out of page frames; raise world['nframes']")
        return self.free_pfns.pop()

    def alloc_folio(self) -> Folio:
        pfn = self.alloc_pfn()
        folio = Folio(self.next_uid, pfn)
        self.next_uid += 1
        self.frames[pfn] = folio
        return folio

    def in_page_cache(self, folio: Folio) -> bool:
        """Is ``folio`` the page-cache folio of its file at its index (not an anon folio, not
        one removed from the cache since)?"""
        return folio.mapping is not None and self.files[folio.mapping].cache.get(folio.index) is folio

    def free_folio(self, folio: Folio) -> None:
        folio.freed = True
        self.frames[folio.pfn] = None
        self.free_pfns.append(folio.pfn)  # LIFO: a freed frame is the next one reused
        cached = self.in_page_cache(folio) or self.swap.cache.get(folio.swap) is folio
        self.events.append(("free", folio.pfn, folio.uid, folio.mapcount, cached))

    def alloc_pte_table(self, mm_id: int, pmd_index: int) -> PteTable:
        pfn = self.alloc_pfn()
        table = PteTable(self.next_tid, pfn, self.ptrs_per_pte, mm_id, pmd_index)
        self.next_tid += 1
        self.frames[pfn] = table
        return table

    def free_pte_table(self, table: PteTable) -> None:
        table.freed = True
        self.frames[table.pfn] = None
        self.free_pfns.append(table.pfn)
        self.events.append(("free_table", table.pfn, table.tid))

    # --- page-table helpers (no locking: callers model the locks) ----------------------
    def pte_lookup(self, mm: Mm, vpn: int) -> tuple[Optional[PteTable], int]:
        pmd_index, slot = divmod(vpn, self.ptrs_per_pte)
        return mm.pmd[pmd_index], slot

    def make_vma(self, mm: Mm, spec: dict) -> Vma:
        vma = Vma(self.next_vid, mm.mm_id, spec["start"], spec["end"], spec.get("file"),
                  spec.get("pgoff", 0), spec.get("shared", False), spec.get("writable", True))
        self.next_vid += 1
        return vma

    def alloc_anon_vma(self, root: Optional[AnonVma] = None) -> AnonVma:
        av = AnonVma(self.next_avid, root)
        self.next_avid += 1
        return av

    def revoke(self, mm_id: int, vpn: int) -> None:
        self.revoked_at[tlb_key(mm_id, vpn)] = self.clock

    # --- what a process would read (for the checker; reads state, changes nothing) ------
    def anon_content(self, mm: Mm, vpn: int) -> int:
        """The version a load of ``vpn`` would read now, by the page tables and the swap
        device: a none PTE or the zero page reads 0 (the fault maps zeroes), a present PTE
        its frame, a swap PTE the swap-cache folio if there is one, else the device slot."""
        pmd_index, slot = divmod(vpn, self.ptrs_per_pte)
        table = mm.pmd[pmd_index] if pmd_index < len(mm.pmd) else None
        pte = table.ptes[slot] if table is not None else None
        if pte is None or pte.special:
            return 0
        if pte.present:
            frame = self.frames[pte.pfn]
            return frame.data if isinstance(frame, Folio) else 0
        folio = self.swap.cache.get(pte.offset)
        return folio.data if folio is not None else self.swap.data[pte.offset]

class OutOfFrames(Exception):
    pass
