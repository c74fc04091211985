"""Reverse mapping: mm/rmap.c (and the walk of mm/page_vma_mapped.c).

Lock order, from the comment at the top of mm/rmap.c: mmap_lock -> invalidate_lock ->
folio_lock -> vma_start_write -> i_mmap_rwsem -> anon_vma->rwsem -> page_table_lock or PTL ->
(i_pages lock, i_lock, wb list_lock taken inside the dirtying paths).

anon_vma: one object per anon_vma with the flat list of VMAs linked to it (the interval tree
and its anon_vma_chain entries collapsed; no anon_vma reuse across neighbours, no degree
counting). Left out: mmu notifiers, THP PMD mappings, large folios (order-0 only), mlock
(VM_LOCKED), hugetlb, migration and HWPoison entries, MGLRU look-around, the anon_vma rwsem
in reclaim's rmap walks (folio_lock_anon_vma_read).
"""

from __future__ import annotations

from ..model import (TLB_FLUSH_BATCH_FLUSHED_SHIFT, TLB_FLUSH_BATCH_PENDING_LARGE,
                     TLB_FLUSH_BATCH_PENDING_MASK, Folio, Mm, Pte, SwapPte, TlbflushUnmapBatch,
                     Vma, tlb_key)
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

    def folio_add_new_anon_rmap_now(self, folio: Folio, vma: Vma, vpn: int,
                                    exclusive: bool = True) -> None:
        """mm/rmap.c folio_add_new_anon_rmap(flags): "const bool exclusive = flags &
        RMAP_EXCLUSIVE"; __folio_set_anon, then mapcount 1 and, if exclusive,
        SetPageAnonExclusive. The folio is not yet visible (or, shared, it is locked), so the
        fields are set plainly.

        __folio_set_anon: "If the folio isn't exclusive to this vma, we must use the _oldest_
        possible anon_vma for the folio mapping! if (!exclusive) anon_vma = anon_vma->root;"
        -- a folio swapped in from a swap entry fork shared may be mapped by the parent's VMA
        as well, which is linked to the root anon_vma but not to the child's own.
        folio->index = linear_page_index(vma, address) (the model's anon index is the vpn)."""
        folio.anon = True
        folio.mapping = None
        folio.anon_vma = vma.anon_vma if exclusive else vma.anon_vma.root
        folio.index = vpn
        folio.mapcount = 1
        folio.anon_exclusive = exclusive

    def folio_try_dup_anon_rmap_pte_now(self, folio: Folio, src_vma: Vma) -> bool:
        """include/linux/rmap.h __folio_try_dup_anon_rmap (one PTE of a small folio, the
        parent's PTL held): "If this folio may have been pinned by the parent process, don't
        allow to duplicate the mappings": a PG_anon_exclusive folio of a COW mapping for
        which folio_needs_cow_for_dma fails with -EBUSY; otherwise ClearPageAnonExclusive
        and mapcount += 1. Returns True on success."""
        if folio.anon_exclusive:
            if not src_vma.shared and self.folio_needs_cow_for_dma(src_vma, folio):
                return False
            folio.anon_exclusive = False
            self.m.anon_shared_at = self.m.clock
        folio.mapcount += 1
        return True

    def folio_needs_cow_for_dma(self, vma: Vma, folio: Folio) -> bool:
        """include/linux/mm.h folio_needs_cow_for_dma: false unless MMF_HAS_PINNED (left out:
        folio_maybe_dma_pinned implies it), then folio_maybe_dma_pinned (the refcount at
        GUP_PIN_COUNTING_BIAS or more)."""
        return self.folio_maybe_dma_pinned(folio)

    def folio_dup_file_rmap_pte_now(self, folio: Folio) -> None:
        """include/linux/rmap.h folio_dup_file_rmap_pte: mapcount += 1."""
        folio.mapcount += 1

    def anon_vma_fork(self, t: Task, vma: Vma, pvma: Vma):
        """mm/rmap.c anon_vma_fork: nothing if the parent VMA has no anon_vma; else
        anon_vma_clone (link the child VMA into every anon_vma the parent's is linked to, so
        that rmap walks of the shared folios find it), then a new anon_vma of its own for the
        child's future COW folios, linked last. Under the root anon_vma's rwsem (write)."""
        if pvma.anon_vma is None:
            return
        m = self.m
        root = pvma.anon_vma_chain[0]
        yield from self.down_write(t, root.rwsem, f"anon_vma_fork: anon_vma_lock_write(av{root.avid})")
        for av in pvma.anon_vma_chain:
            av.vmas.append(vma)
            vma.anon_vma_chain.append(av)
        # "anon_vma->root = pvma->anon_vma->root": the child's own anon_vma shares the root
        av = m.alloc_anon_vma(pvma.anon_vma.root)
        av.vmas.append(vma)
        vma.anon_vma_chain.append(av)
        vma.anon_vma = av
        yield from self.up_write(t, root.rwsem, f"anon_vma_fork: vma{vma.vid} cloned into "
                                 f"{', '.join('av%d' % a.avid for a in pvma.anon_vma_chain)} + own av{av.avid}, unlock")

    def unlink_anon_vmas(self, t: Task, vma: Vma):
        """mm/rmap.c unlink_anon_vmas: take the VMA off every anon_vma it is linked into
        (under the root's rwsem), so that rmap walks no longer find it; vma->anon_vma = NULL."""
        root = vma.anon_vma_chain[0]
        yield from self.down_write(t, root.rwsem, f"unlink_anon_vmas: anon_vma_lock_write(av{root.avid})")
        for av in vma.anon_vma_chain:
            av.vmas.remove(vma)
        vma.anon_vma_chain = []
        vma.anon_vma = None
        yield from self.up_write(t, root.rwsem, f"unlink_anon_vmas: vma{vma.vid} unlinked, unlock")

    def folio_move_anon_rmap_now(self, folio: Folio, vma: Vma) -> None:
        """mm/rmap.c folio_move_anon_rmap (folio locked): "move a folio to our anon_vma", so
        that rmap walks of this exclusive folio need look at this VMA's anon_vma only."""
        folio.anon_vma = vma.anon_vma

    def anon_vma_prepare(self, t: Task, vma: Vma):
        """mm/rmap.c __anon_vma_prepare: anon_vma_alloc (find_mergeable_anon_vma, which may
        reuse a neighbour's, is left out), then under anon_vma_lock_write and
        mm->page_table_lock, "if (likely(!vma->anon_vma))" link the VMA to it
        (anon_vma_chain_link)."""
        m = self.m
        mm = m.mms[vma.mm_id]
        av = m.alloc_anon_vma()
        yield from self.spin_lock(t, mm.page_table_lock, f"__anon_vma_prepare: anon_vma_alloc av{av.avid}, page_table_lock")
        if vma.anon_vma is None:
            vma.anon_vma = av
            vma.anon_vma_chain.append(av)
            av.vmas.append(vma)
            note = f"vma{vma.vid}->anon_vma = av{av.avid}"
        else:
            note = "another fault prepared it"
        yield from self.spin_unlock(t, mm.page_table_lock, f"__anon_vma_prepare: {note}, unlock")

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
            old = yield from self.ptep_clear_flush(
                t, mm, table, slot, vpn, f"page_vma_mkclean_one: ptep_clear_flush va {vpn:#x}: "
                f"clear (was {'D' if pte.dirty else '-'}{'W' if pte.write else '-'})")
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

    # ------------------------------------------- rmap walks for reclaim (mm/rmap.c) ---------
    def rmap_vmas(self, folio: Folio) -> list:
        """mm/rmap.c rmap_walk_anon / rmap_walk_file's VMA iteration: (vma, vpn) for every VMA
        that may map the folio. File: the VMAs of mapping->i_mmap overlapping folio->index.
        Anon: the VMAs linked to folio->anon_vma that cover folio->index. (The walks take no
        anon_vma rwsem: folio_lock_anon_vma_read is left out.)"""
        m = self.m
        out = []
        if folio.ksm:   # rmap_walk_ksm: the stable node's rmap items (mm/ksm.c)
            # each item's own mm first, then "covering vmas in other mms: in case they were
            # forked from the original since ksmd passed" (the item's anon_vma links them; the
            # model finds them as the processes forked from the same world process)
            for mm_id, vpn in folio.ksm_rmap:
                if mm_id not in m.mms:
                    continue
                origin = m.mms[mm_id].origin
                for mm in [m.mms[mm_id]] + [x for x in m.mms.values()
                                            if x.mm_id != mm_id and x.origin == origin]:
                    vma = mm.find_vma(vpn)
                    if vma is not None and vma.file is None and (vma, vpn) not in out:
                        out.append((vma, vpn))
        elif folio.anon:
            av = folio.anon_vma
            for vma in (av.vmas if av is not None else []):
                if vma.contains(folio.index):
                    out.append((vma, folio.index))
        elif folio.mapping is not None:
            for vma in m.files[folio.mapping].i_mmap:
                if vma.pgoff <= folio.index < vma.pgoff + (vma.end - vma.start):
                    out.append((vma, vma.start + folio.index - vma.pgoff))
        return out

    def page_vma_mapped_walk(self, t: Task, folio: Folio, vma: Vma, vpn: int, sync: bool,
                             who: str):
        """mm/page_vma_mapped.c page_vma_mapped_walk for an order-0 folio: lockless descent to
        the PTE table; without PVMW_SYNC map_pte reads the PTE locklessly and gives up unless it
        is present, before taking the PTL; then check_pte (the pfn matches) under the PTL.
        Returns (mm, table, slot) with the PTL held, or None (nothing locked)."""
        m = self.m
        mm = m.mms[vma.mm_id]
        table, slot = m.pte_lookup(mm, vpn)
        if table is None:
            return None
        if not sync:
            pte = table.ptes[slot]
            if pte is None or not pte.present:
                return None
        yield from self.spin_lock(t, table.ptl, f"{who}: page_vma_mapped_walk: PTL of va {vpn:#x} (mm{mm.mm_id})")
        pte = table.ptes[slot]
        if mm.pmd[vpn // m.ptrs_per_pte] is not table or pte is None or not pte.present \
                or pte.special or pte.pfn != folio.pfn:
            yield from self.spin_unlock(t, table.ptl, f"{who}: check_pte: not mapped here, unlock")
            return None
        return mm, table, slot

    def folio_referenced(self, t: Task, folio: Folio):
        """mm/rmap.c folio_referenced(folio, is_locked=1) from folio_check_references: 0 if not
        mapped; rmap_walk with try_lock (file: i_mmap_trylock_read; contended -> -1) calling
        folio_referenced_one until every mapping was seen. Returns the number of mappings
        whose PTE was young."""
        if folio.mapcount == 0:
            return 0
        sem = None
        if not folio.anon:
            sem = self.m.files[folio.mapping].i_mmap_rwsem
            if sem.writer is not None:
                yield f"folio_referenced(pfn {folio.pfn}): i_mmap_trylock_read failed: contended"
                return -1
            sem.readers.append(t.tid)
            yield f"folio_referenced(pfn {folio.pfn}): i_mmap_trylock_read"
        referenced = 0
        mapcount = folio.mapcount
        for vma, vpn in self.rmap_vmas(folio):
            found = yield from self.folio_referenced_one(t, folio, vma, vpn)
            if found is None:
                continue
            referenced += found
            mapcount -= 1
            if mapcount <= 0:
                break
        if sem is not None:
            yield from self.up_read(t, sem, f"folio_referenced(pfn {folio.pfn}): i_mmap_unlock_read")
        return referenced

    def folio_referenced_one(self, t: Task, folio: Folio, vma: Vma, vpn: int):
        """mm/rmap.c folio_referenced_one: under the PTL, ptep_clear_flush_young_notify. On x86
        ptep_clear_flush_young only clears the accessed bit: "clearing the accessed bit
        without a TLB flush doesn't cause data corruption", so no flush (a CPU that caches
        the entry will not set A again). Returns 1/0 (young or not), None if not mapped."""
        found = yield from self.page_vma_mapped_walk(t, folio, vma, vpn, False, "folio_referenced_one")
        if found is None:
            return None
        mm, table, slot = found
        pte = table.ptes[slot]
        young = pte.young
        if young:
            table.ptes[slot] = pte._replace(young=False)
        yield from self.spin_unlock(t, table.ptl, f"folio_referenced_one: ptep_clear_flush_young va {vpn:#x} = {int(young)} (no flush), unlock")
        return int(young)

    def folio_maybe_dma_pinned(self, folio: Folio) -> bool:
        """include/linux/mm.h folio_maybe_dma_pinned (mmfuzz.kernel.gup: the refcount reached
        GUP_PIN_COUNTING_BIAS)."""
        from .gup import folio_maybe_dma_pinned
        return folio_maybe_dma_pinned(folio)

    def folio_try_share_anon_rmap_pte(self, folio: Folio) -> bool:
        """include/linux/rmap.h folio_try_share_anon_rmap_pte (PTE already cleared: "clear PTE;
        smp_mb; check pinned", pairing with GUP-fast's "pin; smp_mb; re-check PTE"): fails
        (True, -EBUSY) for a maybe-pinned folio, else ClearPageAnonExclusive."""
        if self.folio_maybe_dma_pinned(folio):
            return True
        folio.anon_exclusive = False
        self.m.anon_shared_at = self.m.clock
        return False

    def try_to_unmap(self, t: Task, folio: Folio, flags: int):
        """mm/rmap.c try_to_unmap (folio locked): rmap_walk (file: i_mmap_lock_read) calling
        try_to_unmap_one, stopping when it fails or when folio_not_mapped (.done)."""
        assert folio.locked == t.tid
        sem = None
        if not folio.anon:
            sem = self.m.files[folio.mapping].i_mmap_rwsem
            yield from self.down_read(t, sem, f"try_to_unmap(pfn {folio.pfn}): i_mmap_lock_read")
        for vma, vpn in self.rmap_vmas(folio):
            ok = yield from self.try_to_unmap_one(t, folio, vma, vpn, flags)
            if not ok or folio.mapcount == 0:
                break
        if sem is not None:
            yield from self.up_read(t, sem, f"try_to_unmap(pfn {folio.pfn}): i_mmap_unlock_read")

    def try_to_unmap_one(self, t: Task, folio: Folio, vma: Vma, vpn: int, flags: int):
        """mm/rmap.c try_to_unmap_one for a PTE-mapped order-0 folio. Returns False to stop the
        walk (a PTE was restored).

        Clear the PTE: with should_defer_flush, ptep_get_and_clear + set_tlb_ubc_flush_pending
        ("We clear the PTE but do not flush so potentially a remote CPU could still be writing
        to the folio. If the entry was previously clean then the architecture must guarantee
        that a clear->dirty transition on a cached TLB entry is written through and traps if
        the PTE is unmapped"), else ptep_clear_flush; a dirty PTE -> folio_mark_dirty. Then
        anon lazyfree (!swapbacked): "Synchronize with gup_pte_range(): clear PTE; barrier;
        read refcount", and discard only if "The only page refs must be one from isolation
        plus the rmap(s)" (ref_count == 1 + map_count) and the folio is not dirty; else
        restore the PTE and folio_set_swapbacked ("If the folio was redirtied, it cannot be
        discarded"). Anon swap-backed: swap_duplicate, folio_try_share_anon_rmap_pte for an
        exclusive page (restore on failure: maybe pinned), set the swap PTE (SWP_EXCLUSIVE iff
        it was exclusive, soft-dirty kept). File: nothing more. discard: folio_remove_rmap_pte,
        folio_put (the mapping's reference)."""
        m = self.m
        found = yield from self.page_vma_mapped_walk(t, folio, vma, vpn, bool(flags & TTU_SYNC),
                                                     "try_to_unmap_one")
        if found is None:
            return True
        mm, table, slot = found
        anon_exclusive = folio.anon and folio.anon_exclusive
        pteval = table.ptes[slot]
        if self.should_defer_flush(t, mm, flags):
            table.ptes[slot] = None  # ptep_get_and_clear
            m.revoke(mm.mm_id, vpn)
            self.set_tlb_ubc_flush_pending(t, mm, pteval, vpn)
            self.pte_table_flush_deferred(mm, table)   # generation variants only
            how = "ptep_get_and_clear + set_tlb_ubc_flush_pending"
        else:
            table.ptes[slot] = None
            m.revoke(mm.mm_id, vpn)
            how = "ptep_clear_flush"
        dirty = ""
        if pteval.dirty:
            self.folio_mark_dirty_now(folio)
            dirty = ", dirty -> folio_mark_dirty"
        yield f"try_to_unmap_one: {how} va {vpn:#x} (mm{mm.mm_id}) pfn {folio.pfn}{dirty}"
        if how == "ptep_clear_flush":
            yield from self.flush_tlb_page(t, mm, vpn)
        ok = yield from self.try_to_unmap_one_anon(t, folio, mm, table, slot, vpn, pteval,
                                                   anon_exclusive)
        if ok:
            t.observed[tlb_key(mm.mm_id, vpn)] = m.clock
            yield from self.folio_remove_rmap_ptes(t, folio, vma, "try_to_unmap_one: ")
            self.folio_put_now(folio)
            what = "folio_put"
        else:
            what = "PTE restored"
        yield from self.spin_unlock(t, table.ptl, f"try_to_unmap_one: {what}, page_vma_mapped_walk_done")
        return ok

    def try_to_unmap_one_anon(self, t: Task, folio: Folio, mm: Mm, table, slot: int, vpn: int,
                              pteval: Pte, anon_exclusive: bool):
        """The anon half of try_to_unmap_one after the PTE was cleared (PTL held): returns True
        to go on to discard, False after restoring the PTE (walk_abort). A file folio: True."""
        if not folio.anon:
            return True
        if folio.lazyfree:  # !folio_test_swapbacked: a MADV_FREE folio
            return (yield from self.try_to_unmap_lazyfree(t, folio, mm, table, slot, vpn, pteval))
        assert folio.swapcache, "try_to_unmap_one: swap-backed anon folio not in the swap cache"
        self.swap_duplicate(folio.swap)
        if anon_exclusive and self.folio_try_share_anon_rmap_pte(folio):
            self.swap_free(folio.swap)
            table.ptes[slot] = pteval
            yield f"try_to_unmap_one: folio_try_share_anon_rmap_pte(pfn {folio.pfn}) failed (maybe pinned): set_pte_at restores va {vpn:#x}"
            return False
        table.ptes[slot] = SwapPte(folio.swap, exclusive=anon_exclusive,
                                   soft_dirty=pteval.soft_dirty)
        yield (f"try_to_unmap_one: swap_duplicate(slot {folio.swap}) + set_pte_at va {vpn:#x} "
               f"swap entry{' SWP_EXCLUSIVE' if anon_exclusive else ''}")
        return True

    def try_to_unmap_lazyfree(self, t: Task, folio: Folio, mm: Mm, table, slot: int, vpn: int,
                              pteval: Pte):
        """mm/rmap.c try_to_unmap_one, "MADV_FREE page check" (6c8e2a256915): smp_mb, read
        ref_count and map_count; discard iff ref_count == 1 + map_count and
        !folio_test_dirty (VM_DROPPABLE is not modelled); else set_pte_at(pteval) and
        folio_set_swapbacked."""
        ref_count = folio.refcount
        map_count = folio.mapcount
        if ref_count == 1 + map_count and not folio.dirty:
            yield (f"try_to_unmap_one: lazyfree pfn {folio.pfn}: ref_count {ref_count} == 1 + "
                   f"map_count {map_count}, clean: discard")
            return True
        table.ptes[slot] = pteval
        folio.lazyfree = False  # folio_set_swapbacked
        why = "dirty" if folio.dirty else f"ref_count {ref_count} != 1 + map_count {map_count}"
        yield (f"try_to_unmap_one: lazyfree pfn {folio.pfn} {why}: set_pte_at restores va "
               f"{vpn:#x}, folio_set_swapbacked")
        return False
