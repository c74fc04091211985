"""struct mmu_gather: mm/mmu_gather.c and include/asm-generic/tlb.h.

Batches are lists of (folio, delay_rmap) entries: ``batches[0]`` is the on-stack ``local``
bundle, ``batches[1:]`` the page-sized batches, ``active`` an index into them. Capacities come
from the world (``gather``: local_max, batch_max, batch_count_max); the kernel's own constants
are MMU_GATHER_BUNDLE = 8, MAX_GATHER_BATCH = 510 and MAX_GATHER_BATCH_COUNT = 19 on 64-bit
4K, and the world may shrink them so that "gather full -> force_flush" is reachable in a small
world. Left out: large folios (one slot per page, never NR_PAGES_NEXT pairs), GFP_NOWAIT batch
allocation failure, the page_size/vma_exec/vma_huge/vma_pfn flags, mmu notifiers.
"""

from __future__ import annotations

from ..model import Folio, Mm, PteTable, RcuCallback
from .base import KernelBase, Task


class MmuGather:
    __slots__ = ("mm", "fullmm", "start", "end", "freed_tables", "cleared_ptes",
                 "cleared_pmds", "delayed_rmap", "batches", "active", "batch_count",
                 "tables", "local_max", "batch_max", "batch_count_max", "even_cows")

    def __init__(self, mm: Mm, fullmm: bool, gather_cfg: dict):
        self.mm = mm
        self.fullmm = fullmm
        self.local_max = gather_cfg["local_max"]
        self.batch_max = gather_cfg["batch_max"]
        self.batch_count_max = gather_cfg["batch_count_max"]
        self.delayed_rmap = False
        self.batches: list[list[tuple[Folio, bool]]] = [[]]
        self.active = 0
        self.batch_count = 0
        self.tables: list[PteTable] = []
        self.even_cows = True   # zap_details.even_cows (zap_page_range_single sets it)
        self.reset_range()

    def reset_range(self) -> None:
        """include/asm-generic/tlb.h __tlb_reset_range: start = TASK_SIZE, end = 0 (~0, ~0
        for fullmm), and the freed_tables / cleared_* flags cleared."""
        self.start = 1 << 40
        self.end = 0
        self.freed_tables = False
        self.cleared_ptes = False
        self.cleared_pmds = False

    def adjust_range(self, start: int, end: int) -> None:
        """include/asm-generic/tlb.h __tlb_adjust_range: widen [start, end)."""
        self.start = min(self.start, start)
        self.end = max(self.end, end)

    def batch_capacity(self, i: int) -> int:
        return self.local_max if i == 0 else self.batch_max


class MmuGatherOps(KernelBase):
    def tlb_gather_mmu(self, t: Task, mm: Mm, fullmm: bool = False):
        """mm/mmu_gather.c __tlb_gather_mmu: initialise, then inc_tlb_flush_pending(mm) last,
        before any PTE of this gather changes."""
        tlb = MmuGather(mm, fullmm, self.m.world["gather"])
        mm.tlb_flush_pending += 1
        yield f"tlb_gather_mmu: inc_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"
        return tlb

    def tlb_delay_rmap(self, tlb: MmuGather) -> bool:
        """include/asm-generic/tlb.h tlb_delay_rmap (CONFIG_SMP, not s390): sets
        tlb->delayed_rmap and says yes."""
        tlb.delayed_rmap = True
        return True

    def tlb_remove_tlb_entry(self, tlb: MmuGather, vpn: int) -> None:
        """include/asm-generic/tlb.h tlb_remove_tlb_entry: tlb_flush_pte_range (range +
        cleared_ptes); the per-entry arch hook is empty on x86."""
        tlb.adjust_range(vpn, vpn + 1)
        tlb.cleared_ptes = True

    def tlb_next_batch(self, tlb: MmuGather) -> bool:
        """mm/mmu_gather.c tlb_next_batch."""
        # "Limit batching if we have delayed rmaps pending" (c47454823bd4): delayed entries
        # may live only in the local bundle and the one batch active then.
        if tlb.delayed_rmap and tlb.active != 0:
            return False
        if tlb.active + 1 < len(tlb.batches):
            tlb.active += 1
            return True
        if tlb.batch_count == tlb.batch_count_max:
            return False
        tlb.batch_count += 1
        tlb.batches.append([])
        tlb.active = len(tlb.batches) - 1
        return True

    def tlb_remove_folio_pages_size(self, tlb: MmuGather, folio: Folio,
                                      delay_rmap: bool) -> bool:
        """mm/mmu_gather.c __tlb_remove_folio_pages_size (the kernel name; renamed to
        escape Python name mangling): queue one slot; if the active batch is
        at max - 1 and no next batch can be had, report "full" (the caller must flush). The
        entry is queued either way."""
        assert tlb.end != 0, "VM_BUG_ON(!tlb->end): range must be recorded before queueing"
        batch = tlb.batches[tlb.active]
        batch.append((folio, delay_rmap))
        if len(batch) >= tlb.batch_capacity(tlb.active) - 1:
            if not self.tlb_next_batch(tlb):
                return True
        return False

    def pte_free_tlb(self, tlb: MmuGather, table: PteTable, vpn: int) -> None:
        """include/asm-generic/tlb.h pte_free_tlb: range, freed_tables = cleared_pmds = 1, then
        queue the table page (x86 ___pte_free_tlb -> tlb_remove_ptdesc -> tlb_remove_table):
        freed after the flush and an RCU-sched grace period (tlb_table_flush)."""
        tlb.adjust_range(vpn, vpn + 1)
        tlb.freed_tables = True
        tlb.cleared_pmds = True
        tlb.tables.append(table)

    def tlb_flush_mmu_tlbonly(self, t: Task, tlb: MmuGather):
        """include/asm-generic/tlb.h tlb_flush_mmu_tlbonly: nothing unless a table was freed or
        a level was cleared; else x86 tlb_flush() and __tlb_reset_range. Frees nothing."""
        if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds):
            return
        full = tlb.fullmm
        yield from self.flush_tlb_mm_range(t, tlb.mm, tlb.start, tlb.end, full,
                                           tlb.freed_tables)
        tlb.reset_range()

    def tlb_flush_rmaps(self, t: Task, tlb: MmuGather, vma):
        """mm/mmu_gather.c tlb_flush_rmaps: folio_remove_rmap_ptes for every DELAY_RMAP entry of
        the local bundle and the active batch ("we will never start multiple new batches with
        pending delayed rmaps"), then delayed_rmap = 0."""
        if not tlb.delayed_rmap:
            return
        walk = [0] if tlb.active == 0 else [0, tlb.active]
        for bi in walk:
            batch = tlb.batches[bi]
            for i, (folio, delay) in enumerate(batch):
                if delay:
                    yield from self.folio_remove_rmap_ptes(t, folio, vma,
                                                           "tlb_flush_rmaps: ")
                    # The kernel leaves the flag set, relying on the batch being freed next;
                    # the model clears it so a reused slot cannot be removed twice.
                    batch[i] = (folio, False)
        tlb.delayed_rmap = False

    def tlb_table_flush(self, t: Task, tlb: MmuGather):
        """mm/mmu_gather.c tlb_table_flush: tlb_table_invalidate (its tlb_flush_mmu_tlbonly is
        the flush tlb_flush_mmu did just before, so it finds nothing left to flush), then
        tlb_remove_table_free of the batch. x86 selects MMU_GATHER_RCU_TABLE_FREE
        unconditionally since Rik van Riel's "x86/mm: make MMU_GATHER_RCU_TABLE_FREE
        unconditional" (v6.15; before it, only paravirt guests did: "on bare metal, by
        blocking IRQs, which block TLB flush IPIs - on paravirt, with
        MMU_GATHER_RCU_TABLE_FREE"), and ___pte_free_tlb queues every PTE table with
        tlb_remove_table. Left out: the GFP_NOWAIT batch allocation failing
        (tlb_remove_table_one), MAX_TABLE_BATCH (one batch per flush)."""
        if tlb.tables:
            tables, tlb.tables = tlb.tables, []
            yield from self.tlb_remove_table_free(t, tables)

    def tlb_remove_table_free(self, t: Task, tables: list):
        """mm/mmu_gather.c tlb_remove_table_free (CONFIG_MMU_GATHER_RCU_TABLE_FREE):
        call_rcu(&batch->rcu, tlb_remove_table_rcu). "We use the sched RCU variant, as that
        guarantees that IRQ/preempt disabling holds off grace periods": the tables are freed
        once every CPU that has IRQs disabled now has enabled them (rcu_irqs_enabled), at once
        if none has. One step per table, as __tlb_remove_table_free frees them."""
        m = self.m
        readers = [(c.cpu_id, c.irq_section) for c in m.cpus if c.irqs_off]
        if not readers:
            yield from self.free_tables_now(t, tables, "call_rcu, no CPU has IRQs off: ")
            return
        m.rcu_callbacks.append(RcuCallback(readers, tables))
        yield (f"tlb_table_flush: call_rcu(tlb_remove_table_rcu) for PTE table"
               f"{'s' if len(tables) > 1 else ''} {', '.join(str(x.tid) for x in tables)}: "
               f"the grace period waits for CPU{[c for c, _ in readers]} (IRQs off)")

    def free_tables_now(self, t: Task, tables: list, why: str, after: str = ""):
        """Free ``tables`` in order, one step each (as __tlb_remove_table_free frees a
        batch), labelled "tlb_table_flush: {why}free PTE table N (pfn P){after}"."""
        while tables:
            table = tables.pop(0)
            self.m.free_pte_table(table)
            yield f"tlb_table_flush: {why}free PTE table {table.tid} (pfn {table.pfn}){after}"

    def tlb_remove_table_rcu(self, cb) -> str:
        """mm/mmu_gather.c tlb_remove_table_rcu -> __tlb_remove_table_free: free the pages of
        a batch whose grace period has ended. Runs inside the step that ended it (RCU's
        softirq, at the earliest); returns what it freed, for that step's label."""
        for table in cb.tables:
            self.m.free_pte_table(table)
        return (f"tlb_remove_table_rcu: free PTE table"
                f"{'s' if len(cb.tables) > 1 else ''} {', '.join(str(x.tid) for x in cb.tables)}")

    def tlb_batch_pages_flush(self, t: Task, tlb: MmuGather):
        """mm/mmu_gather.c tlb_batch_pages_flush: free_pages_and_swap_cache on every batch from
        local on (free_swap_cache, then one reference per entry; may free the folio), then
        active = local."""
        for batch in tlb.batches:
            while batch:
                folio, _ = batch.pop(0)
                yield from self.free_swap_cache(t, folio)
                self.folio_put_now(folio)
                state = "freed" if folio.freed else f"refcount {folio.refcount}"
                yield f"tlb_batch_pages_flush: folio_put(pfn {folio.pfn}) -> {state}"
        tlb.active = 0

    def tlb_flush_mmu(self, t: Task, tlb: MmuGather):
        """mm/mmu_gather.c tlb_flush_mmu: tlbonly flush, then free tables, then free pages."""
        yield from self.tlb_flush_mmu_tlbonly(t, tlb)
        yield from self.tlb_table_flush(t, tlb)
        yield from self.tlb_batch_pages_flush(t, tlb)

    def tlb_end_vma(self, t: Task, tlb: MmuGather, vma):
        """include/asm-generic/tlb.h tlb_end_vma: unless fullmm, flush and reset the range at the
        VMA boundary (x86 does not select MMU_GATHER_MERGE_VMAS). Frees nothing."""
        if tlb.fullmm:
            return
        yield from self.tlb_flush_mmu_tlbonly(t, tlb)

    def tlb_finish_mmu(self, t: Task, tlb: MmuGather):
        """mm/mmu_gather.c tlb_finish_mmu.

        "If there are parallel threads are doing PTE changes on same range under non-exclusive
        lock (e.g., mmap_lock read-side) but defer TLB flush by batching, one thread may end up
        seeing inconsistent PTEs and result in having stale TLB entries." Hence, when
        mm_tlb_flush_nested(mm), flush the whole mm with freed_tables set. Then tlb_flush_mmu,
        and dec_tlb_flush_pending last."""
        mm = tlb.mm
        nested = self.mm_tlb_flush_nested(mm)
        yield f"tlb_finish_mmu: mm_tlb_flush_nested(mm{mm.mm_id}) = {int(nested)}"
        if nested:
            tlb.fullmm = True
            tlb.reset_range()
            tlb.freed_tables = True
        yield from self.tlb_flush_mmu(t, tlb)
        mm.tlb_flush_pending -= 1
        yield f"tlb_finish_mmu: dec_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"

    def mm_tlb_flush_nested(self, mm: Mm) -> bool:
        """include/linux/mm_inline.h mm_tlb_flush_nested: atomic_read(&mm->tlb_flush_pending) > 1."""
        return mm.tlb_flush_pending > 1
