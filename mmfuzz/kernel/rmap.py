"""Reverse mapping: mm/rmap.c (and the walk of mm/page_vma_mapped.c).

Lock order, from the comment at the top of mm/rmap.c: mmap_lock -> invalidate_lock ->
folio_lock -> vma_start_write -> i_mmap_rwsem -> anon_vma->rwsem -> page_table_lock or PTL ->
(i_pages lock, i_lock, wb list_lock taken inside the dirtying paths).

anon_vma: one object per anon_vma with the flat list of VMAs linked to it (the interval tree
and its anon_vma_chain entries collapsed; no anon_vma reuse across neighbours, no degree
counting). Left out: mmu notifiers, THP PMD mappings, large folios (order-0 only).
"""

from __future__ import annotations

from ..model import Folio, Vma
from .base import KernelBase, Task


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
        folio.anon_vma = vma.anon_vma
        folio.index = vpn
        folio.mapcount = 1
        folio.anon_exclusive = True

    def folio_try_dup_anon_rmap_pte_now(self, folio: Folio, src_vma: Vma) -> bool:
        """include/linux/rmap.h __folio_try_dup_anon_rmap (one PTE of a small folio, the
        parent's PTL held): "If this folio may have been pinned by the parent process, don't
        allow to duplicate the mappings": a PG_anon_exclusive folio for which
        folio_needs_cow_for_dma (a COW mapping and folio_maybe_dma_pinned: the refcount at
        GUP_PIN_COUNTING_BIAS or more; MMF_HAS_PINNED is implied by it) fails with -EBUSY;
        otherwise ClearPageAnonExclusive and mapcount += 1. Returns True on success."""
        from .gup import folio_maybe_dma_pinned
        if folio.anon_exclusive:
            if not src_vma.shared and folio_maybe_dma_pinned(folio):
                return False
            folio.anon_exclusive = False
        folio.mapcount += 1
        return True

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
        av = m.alloc_anon_vma()
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
        pte = table.ptes[slot]
        cleaned = 0
        if pte is not None and not pte.special and pte.pfn == folio.pfn and (pte.dirty or pte.write):
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
