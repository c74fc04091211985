"""Reverse mapping: mm/rmap.c (and the walk of mm/page_vma_mapped.c).

Lock order, from the comment at the top of mm/rmap.c: mmap_lock -> invalidate_lock ->
folio_lock -> vma_start_write -> i_mmap_rwsem -> anon_vma->rwsem -> page_table_lock or PTL ->
(i_pages lock, i_lock, wb list_lock taken inside the dirtying paths).

Left out: anon_vma trees (anon folios are exclusive to one VMA until fork is modelled),
mmu notifiers, THP PMD mappings, large folios (order-0 only).
"""

from __future__ import annotations

from ..model import (TLB_FLUSH_BATCH_FLUSHED_SHIFT, TLB_FLUSH_BATCH_PENDING_LARGE,
                     TLB_FLUSH_BATCH_PENDING_MASK, Folio, Mm, Pte, TlbflushUnmapBatch, Vma)
from .base import KernelBase, Task

# include/linux/rmap.h enum ttu_flags
TTU_SPLIT_HUGE_PMD = 0x4
TTU_IGNORE_MLOCK = 0x8
TTU_SYNC = 0x10
TTU_HWPOISON = 0x20
TTU_BATCH_FLUSH = 0x40
TTU_RMAP_LOCKED = 0x80


class Rmap(KernelBase):
    def folio_remove_rmap_ptes(self, t: Task, folio: Folio, vma: Vma, prefix: str = ""):
        """mm/rmap.c folio_remove_rmap_ptes (caller holds the PTL): mapcount -= 1. It does not
        touch the refcount, PG_dirty or folio->mapping."""
        assert folio.mapcount > 0, f"mapcount underflow on pfn {folio.pfn}"
        folio.mapcount -= 1
        yield f"{prefix}folio_remove_rmap_ptes(pfn {folio.pfn}) -> mapcount {folio.mapcount}"

    def folio_add_file_rmap_ptes_now(self, folio: Folio) -> None:
        """mm/rmap.c folio_add_file_rmap_ptes (caller holds the PTL): mapcount += 1."""
        folio.mapcount += 1

    def folio_add_new_anon_rmap_now(self, folio: Folio, vma: Vma, vpn: int) -> None:
        """mm/rmap.c folio_add_new_anon_rmap(RMAP_EXCLUSIVE): the folio is not yet visible, so
        mapping/index/mapcount are set plainly, and PG_anon_exclusive is set."""
        folio.anon = True
        folio.mapping = None
        folio.index = vpn
        folio.mapcount = 1
        folio.anon_exclusive = True

    def folio_mkclean(self, t: Task, folio: Folio):
        """mm/rmap.c folio_mkclean (caller holds the folio lock).

        A lockless folio_mapped() test first: an unmapped folio returns 0 with no i_mmap lock,
        no PTL and no flush. Otherwise rmap_walk -> rmap_walk_file under i_mmap_rwsem (read),
        page_mkclean_one on every VM_SHARED VMA overlapping the folio's index
        (invalid_mkclean_vma skips the others). Returns the number of PTEs cleaned."""
        assert folio.locked == t.tid, "BUG_ON(!folio_test_locked(folio))"
        mapped = folio.mapcount >= 1
        yield f"folio_mkclean(pfn {folio.pfn}): folio_mapped() = {int(mapped)}"
        if not mapped or folio.mapping is None:
            return 0
        f = self.m.files[folio.mapping]
        yield from self.down_read(t, f.i_mmap_rwsem, f"rmap_walk_file: i_mmap_lock_read(file{f.file_id})")
        cleaned = 0
        for vma in list(f.i_mmap):
            if not (vma.pgoff <= folio.index < vma.pgoff + (vma.end - vma.start)):
                continue
            if not vma.shared:  # invalid_mkclean_vma
                continue
            cleaned += yield from self.page_vma_mkclean_one(t, folio, vma)
        yield from self.up_read(t, f.i_mmap_rwsem, f"rmap_walk_file: i_mmap_unlock_read(file{f.file_id})")
        return cleaned

    def mkclean_pte_needs_flush(self, mm, table, pte) -> bool:
        """The test of mm/rmap.c page_vma_mkclean_one, "if (!pte_dirty(entry) &&
        !pte_write(entry)) continue;": a clean read-only PTE is skipped with no flush, whatever
        flush another thread may still owe for it (a hook: variants that also consult
        mm_tlb_flush_pending or a table generation override only this)."""
        return pte.dirty or pte.write

    def page_vma_mkclean_one(self, t: Task, folio: Folio, vma: Vma):
        """mm/rmap.c page_vma_mkclean_one with PVMW_SYNC (mm/page_vma_mapped.c): the walker takes
        the table's PTL before looking at the PTE. A PTE that is neither dirty nor writable is
        skipped with no PTE write and no flush; otherwise ptep_clear_flush (atomic clear, then
        flush_tlb_page, waiting for every CPU) and set_pte_at(wrprotect(mkclean(old)))."""
        m = self.m
        mm = m.mms[vma.mm_id]
        vpn = vma.start + (folio.index - vma.pgoff)
        table, slot = m.pte_lookup(mm, vpn)  # lockless descent pgd..pmd
        if table is None:
            return 0
        yield from self.spin_lock(t, table.ptl, f"page_vma_mapped_walk: PTL of va {vpn:#x} (mm{mm.mm_id})")
        if mm.pmd[vpn // m.ptrs_per_pte] is not table:
            # the table was unhooked while we waited (free_pgtables): nothing mapped here
            yield from self.spin_unlock(t, table.ptl, "page_vma_mapped_walk: table gone, unlock")
            return 0
        yield from self.pte_table_flush_check(t, mm, table)
        pte = table.ptes[slot]
        cleaned = 0
        if pte is not None and not pte.special and pte.pfn == folio.pfn and \
                self.mkclean_pte_needs_flush(mm, table, pte):
            # ptep_clear_flush: atomic get-and-clear catches a D set by hardware meanwhile.
            old = table.ptes[slot]
            table.ptes[slot] = None
            m.revoke(mm.mm_id, vpn)
            yield f"page_vma_mkclean_one: ptep_clear_flush va {vpn:#x}: clear (was {'D' if old.dirty else '-'}{'W' if old.write else '-'})"
            yield from self.flush_tlb_page(t, mm, vpn)
            table.ptes[slot] = old._replace(write=False, dirty=False)
            cleaned = 1
            yield f"page_vma_mkclean_one: set_pte_at va {vpn:#x} read-only, clean"
        yield from self.spin_unlock(t, table.ptl, f"page_vma_mapped_walk: PTL of va {vpn:#x} released")
        return cleaned

    # ------------------------------------- reclaim's batched TLB flush (mm/rmap.c) ----------
    # CONFIG_ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH (x86 selects it). Reclaim clears PTEs without
    # flushing and records the flush in current->tlb_ubc and mm->tlb_flush_batched; every
    # path that changes PTEs of that mm under the PTL first calls flush_tlb_batched_pending.

    def try_to_unmap_flush(self, t: Task):
        """mm/rmap.c try_to_unmap_flush: "Flush TLB entries for recently unmapped pages from
        remote CPUs. It is important if a PTE was dirty when it was unmapped that it's flushed
        before any IO is initiated on the page to prevent lost writes. Similarly, it must be
        flushed before freeing to prevent data leakage." Nothing unless flush_required; then
        arch_tlbbatch_flush and clear flush_required and writable. mm->tlb_flush_batched is
        left as it is: the next flush_tlb_batched_pending of the mm flushes once more."""
        ubc = t.tlb_ubc
        if ubc is None or not ubc.flush_required:
            return
        yield from self.arch_tlbbatch_flush(t, ubc)
        ubc.flush_required = False
        ubc.writable = False

    def try_to_unmap_flush_dirty(self, t: Task):
        """mm/rmap.c try_to_unmap_flush_dirty: "Flush iff there are potentially writable TLB
        entries that can race with IO"."""
        ubc = t.tlb_ubc
        if ubc is not None and ubc.writable:
            yield from self.try_to_unmap_flush(t)

    def set_tlb_ubc_flush_pending(self, t: Task, mm: Mm, pteval: Pte, vpn: int) -> None:
        """mm/rmap.c set_tlb_ubc_flush_pending (PTL held, right after the PTE was cleared; one
        step with that clear). Nothing for an inaccessible PTE (x86 pte_accessible: present);
        else arch_tlbbatch_add_pending, flush_required; then the pending generation of
        mm->tlb_flush_batched is incremented, or the word reset to 1 (pending 1, flushed 0)
        when pending grew past TLB_FLUSH_BATCH_PENDING_LARGE ("Prevent `pending' from catching
        up with `flushed' because of overflow"). A dirty PTE makes the batch writable: "The
        caller must use try_to_unmap_flush_dirty() or try_to_unmap_flush() before the page is
        queued for IO"."""
        if pteval is None:  # !pte_accessible(mm, pteval)
            return
        ubc = t.tlb_ubc
        if ubc is None:
            ubc = t.tlb_ubc = TlbflushUnmapBatch()
        self.arch_tlbbatch_add_pending(ubc, mm, vpn)
        ubc.flush_required = True
        batch = mm.tlb_flush_batched
        if (batch & TLB_FLUSH_BATCH_PENDING_MASK) > TLB_FLUSH_BATCH_PENDING_LARGE:
            mm.tlb_flush_batched = 1
        else:
            mm.tlb_flush_batched = batch + 1
        if pteval.dirty:
            ubc.writable = True

    def should_defer_flush(self, t: Task, mm: Mm, flags: int) -> bool:
        """mm/rmap.c should_defer_flush: "Returns true if the TLB flush should be deferred to
        the end of a batch of unmap operations to reduce IPIs": TTU_BATCH_FLUSH and
        arch_tlbbatch_should_defer."""
        if not flags & TTU_BATCH_FLUSH:
            return False
        return self.arch_tlbbatch_should_defer(t, mm)

    def flush_tlb_batched_pending(self, t: Task, mm: Mm):
        """mm/rmap.c flush_tlb_batched_pending, called under the PTL "so that an access to
        tlb_flush_batched that is potentially a 'reclaim vs mprotect/munmap/etc' race will
        synchronise via the PTL": if the pending generation differs from the flushed one,
        arch_flush_tlb_batched_pending (x86: flush_tlb_mm), then atomic_cmpxchg the word from
        what was read to pending | pending << 16: "If the new TLB flushing is pending during
        flushing, leave mm->tlb_flush_batched as is, to avoid losing flushing".

        The atomic_read is part of the caller's next step when nothing is pending (no step of
        its own); otherwise it is a step, as are the flush and the cmpxchg."""
        batch = mm.tlb_flush_batched
        pending = batch & TLB_FLUSH_BATCH_PENDING_MASK
        flushed = batch >> TLB_FLUSH_BATCH_FLUSHED_SHIFT
        if pending == flushed:
            return
        yield (f"flush_tlb_batched_pending(mm{mm.mm_id}): tlb_flush_batched pending {pending} "
               f"!= flushed {flushed}")
        yield from self.arch_flush_tlb_batched_pending(t, mm)
        new = pending | (pending << TLB_FLUSH_BATCH_FLUSHED_SHIFT)
        if mm.tlb_flush_batched == batch:
            mm.tlb_flush_batched = new
            note = f"-> flushed {pending}"
        else:
            note = "failed (a new batched flush is pending), left as is"
        yield f"flush_tlb_batched_pending: atomic_cmpxchg(tlb_flush_batched) {note}"
