"""madvise(MADV_DONTNEED) and madvise(MADV_FREE): mm/madvise.c (v6.12 structure).

v6.12 takes mmap_lock for read for both (several threads of one mm may zap or free at once)
and runs one mmu_gather per VMA (zap_page_range_single, madvise_free_single_vma). Newer
kernels (about 6.16) use the per-VMA lock and one gather per call; that variant is not
modelled yet. Left out: userfaultfd_remove, VM_LOCKED / VM_PFNMAP rejection, hugetlb, THP
(madvise_free_huge_pmd), large folios (order 0 only), mmu notifiers, lru_add_drain, the
-ENOMEM of an unmapped gap in the range.
"""

from __future__ import annotations

from ..model import tlb_key
from ..ops import VmaRange, operation
from .base import KernelBase, Task


class Madvise(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/memory.c zap_pte_range: flush_tlb_batched_pending reads reclaim's deferred flush;
    # zap_present_folio_ptes clears the PTE (pte.map), a file PTE's pte_dirty -> folio_mark_dirty,
    # pte_young -> folio_mark_accessed (folio.lru), folio_remove_rmap_ptes (mapcount), the page
    # held by the gather until its flush (refcount); zap_nonpresent_ptes -> free_swap_and_cache;
    # mm/mmu_gather.c tlb_gather_mmu/tlb_finish_mmu: inc/dec_tlb_flush_pending, mm_tlb_flush_nested
    @operation("madvise_dontneed", VmaRange(),
               doc="madvise(MADV_DONTNEED): zap a range under mmap_lock for read",
               writes=("pte.map:anon", "pte.map:file", "folio.mapcount:anon",
                       "folio.mapcount:file", "folio.dirty:file", "folio.lru", "folio.refcount",
                       "swap", "tlb.deferred"),
               reads=("pte.dirty:file", "pte.young", "swap", "tlb.deferred"))
    def madvise_dontneed(self, t: Task, start: int, npages: int):
        """mm/madvise.c do_madvise -> madvise_lock (mmap_read_lock) -> madvise_walk_vmas ->
        madvise_dontneed_free -> madvise_dontneed_single_vma -> zap_page_range_single, per VMA
        overlapping the range; then mmap_read_unlock."""
        mm = t.mm
        end = start + npages
        yield from self.down_read(t, mm.mmap_lock, f"madvise(DONTNEED {start:#x}+{npages}): mmap_read_lock")
        for vma in list(mm.vmas):
            if vma.end <= start or vma.start >= end:
                continue
            yield from self.zap_page_range_single(t, vma, max(start, vma.start), min(end, vma.end))
        yield from self.up_read(t, mm.mmap_lock, "madvise: mmap_read_unlock, return", last=True)
        self.m.events.append(("unmap_returned", t.mm.mm_id, start, end, t.tid, dict(t.observed)))

    # ------------------------------------------------------------------ MADV_FREE -----
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/madvise.c madvise_free_single_vma: vma_is_anonymous; madvise_free_pte_range:
    # flush_tlb_batched_pending, a swap PTE -> free_swap_and_cache + clear, folio_test_swapcache /
    # folio_test_dirty -> folio_mapcount, folio_free_swap, folio_clear_dirty; a young or dirty PTE
    # -> pte_mkold(pte_mkclean()) + tlb_remove_tlb_entry; folio_mark_lazyfree (mm/swap.c);
    # tlb_finish_mmu's mm_tlb_flush_nested
    @operation("madvise_free", VmaRange(),
               doc="madvise(MADV_FREE): clean and age anon PTEs (keeping W), lazyfree the folios",
               writes=("pte.map:anon", "pte.dirty:anon", "pte.young", "folio.dirty:anon",
                       "folio.lru", "swap", "tlb.deferred"),
               reads=("vma", "pte.dirty:anon", "pte.young", "folio.dirty:anon",
                      "folio.mapcount:anon", "swap", "tlb.deferred"))
    def madvise_free(self, t: Task, start: int, npages: int):
        """mm/madvise.c do_madvise(MADV_FREE) -> madvise_lock (mmap_read_lock: MADV_FREE does
        not need the write lock) -> madvise_walk_vmas -> madvise_dontneed_free ->
        madvise_free_single_vma on each VMA overlapping the range, in address order; the walk
        stops at the first error (-EINVAL for a VMA that is not anonymous)."""
        mm = t.mm
        end = start + npages
        yield from self.down_read(t, mm.mmap_lock, f"madvise(FREE {start:#x}+{npages}): mmap_read_lock")
        for vma in list(mm.vmas):
            if vma.end <= start or vma.start >= end:
                continue
            err = yield from self.madvise_free_single_vma(t, vma, max(start, vma.start),
                                                          min(end, vma.end))
            if err:
                t.result = err
                break
        yield from self.up_read(t, mm.mmap_lock, "madvise: mmap_read_unlock, return", last=True)
        self.m.events.append(("unmap_returned", mm.mm_id, start, end, t.tid, dict(t.observed)))

    def madvise_free_single_vma(self, t: Task, vma, start: int, end: int):
        """mm/madvise.c madvise_free_single_vma: "MADV_FREE works for only anon vma at the
        moment" (-EINVAL otherwise); tlb_gather_mmu, walk_page_range with madvise_free_walk_ops
        (madvise_free_pte_range per PMD), tlb_end_vma, tlb_finish_mmu."""
        if vma.file is not None:  # !vma_is_anonymous(vma)
            yield f"madvise_free_single_vma: {vma.describe()} is not anonymous: -EINVAL"
            return "EINVAL"
        tlb = yield from self.tlb_gather_mmu(t, t.mm)
        p = self.m.ptrs_per_pte
        addr = start
        while addr < end:  # walk_page_range -> walk_pmd_range
            nxt = min((addr // p + 1) * p, end)
            yield from self.madvise_free_pte_range(t, tlb, vma, addr, nxt)
            addr = nxt
        yield from self.tlb_end_vma(t, tlb, vma)
        yield from self.tlb_finish_mmu(t, tlb)
        return None

    def madvise_free_pte_range(self, t: Task, tlb, vma, addr: int, end: int):
        """mm/madvise.c madvise_free_pte_range (one PTE table).

        pte_offset_map_lock (nothing to do without a table); flush_tlb_batched_pending; per
        PTE: a swap entry is dropped ("just clear page table to prevent swap-in which is more
        expensive rather than (page allocation + zeroing)": free_swap_and_cache,
        clear_not_present_full_ptes); vm_normal_folio (the zero page is skipped); a folio in
        the swap cache or PG_dirty must be folio_trylock'ed (else skipped) and exclusively
        mapped (mapcount 1), its swap freed (folio_free_swap, else skipped), then
        folio_clear_dirty and folio_unlock; a young or dirty PTE is cleared
        (ptep_get_and_clear_full) and set again old and clean, keeping its write bit
        (pte_mkold, pte_mkclean, set_pte_at), and tlb_remove_tlb_entry queues its flush;
        folio_mark_lazyfree. pte_unmap_unlock."""
        m = self.m
        mm = t.mm
        pmd_index = addr // m.ptrs_per_pte
        table = mm.pmd[pmd_index]
        if table is None:
            return
        yield from self.spin_lock(t, table.ptl, f"madvise_free_pte_range: pte_offset_map_lock va {addr:#x}")
        if mm.pmd[pmd_index] is not table:
            yield from self.spin_unlock(t, table.ptl, "madvise_free_pte_range: table changed, unlock")
            return
        yield from self.flush_tlb_batched_pending(t, mm)
        for vpn in range(addr, end):
            slot = vpn % m.ptrs_per_pte
            ptent = table.ptes[slot]
            if ptent is None:
                continue
            if not ptent.present:
                yield from self.free_swap_and_cache(t, ptent)
                table.ptes[slot] = None  # clear_not_present_full_ptes
                yield f"madvise_free_pte_range: clear swap PTE va {vpn:#x}"
                continue
            if ptent.special:  # vm_normal_folio: NULL for the zero page
                continue
            folio = m.frames[ptent.pfn]
            if folio.swapcache or folio.dirty:
                if folio.locked is not None:
                    yield f"madvise_free_pte_range: folio_trylock(pfn {folio.pfn}) failed, skip"
                    continue
                folio.locked = t.tid
                t.locks += 1
                yield f"madvise_free_pte_range: folio_trylock(pfn {folio.pfn})"
                if folio.mapcount != 1:  # folio_mapcount != folio_nr_pages
                    self.folio_unlock_now(t, folio)
                    yield f"madvise_free_pte_range: pfn {folio.pfn} mapcount {folio.mapcount}, folio_unlock, skip"
                    continue
                if folio.swapcache:
                    freed = yield from self.folio_free_swap(t, folio)
                    if not freed:
                        self.folio_unlock_now(t, folio)
                        yield f"madvise_free_pte_range: folio_free_swap(pfn {folio.pfn}) failed, folio_unlock, skip"
                        continue
                folio.dirty = False
                self.folio_unlock_now(t, folio)
                yield f"madvise_free_pte_range: folio_clear_dirty + folio_unlock(pfn {folio.pfn})"
            ptent = table.ptes[slot]
            if ptent.young or ptent.dirty:
                table.ptes[slot] = None  # ptep_get_and_clear_full: hardware now walks none
                m.revoke(mm.mm_id, vpn)
                yield f"madvise_free_pte_range: ptep_get_and_clear_full va {vpn:#x}"
                new = ptent._replace(young=False, dirty=False)  # pte_mkold(pte_mkclean())
                # the atomic get-and-clear caught any D the hardware set up to the clear
                table.ptes[slot] = new
                self.pte_table_flush_deferred(mm, table)   # generation variants only
                self.tlb_remove_tlb_entry(tlb, vpn)
                note = f"set_pte_at va {vpn:#x} {'W' if new.write else '-'}, old, clean + tlb_remove_tlb_entry; "
            else:
                note = ""
            self.folio_mark_lazyfree(folio)
            yield f"madvise_free_pte_range: {note}folio_mark_lazyfree(pfn {folio.pfn})"
        for vpn in range(addr, end):
            t.observed[tlb_key(mm.mm_id, vpn)] = m.clock
        yield from self.spin_unlock(t, table.ptl, "madvise_free_pte_range: pte_unmap_unlock")

    def folio_mark_lazyfree(self, folio) -> None:
        """mm/swap.c folio_mark_lazyfree: an anon, swap-backed folio that is not in the swap
        cache moves to the lazyfree LRU, lru_lazyfree_fn: folio_clear_active,
        folio_clear_referenced, folio_clear_swapbacked (the model's ``lazyfree``).
        Left out: the per-CPU folio batch that defers lru_lazyfree_fn (and its reference)."""
        if folio.anon and not folio.lazyfree and not folio.swapcache:
            folio.lazyfree = True
            folio.referenced = False
