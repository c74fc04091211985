"""Deliberately broken kernels, each one step away from mainline, that prove a property can
fail (Hypothesis keeps broken machines in its own tests for the same reason). They are
synthetic, not historic: the catalogued bugs live in mmfuzz.kernels. Also usable as
``--kernel tests.variants:Name``, the way a developer prototypes a patch."""

from mmfuzz.kernel import Mainline


class FreeBeforeFlush(Mainline):
    """zap drops an anon page's reference at once instead of queueing it in the mmu_gather:
    breaks "1) unhook page 2) TLB invalidate page 3) free page" (trips
    no-use-after-free-via-TLB)."""

    def tlb_remove_folio_pages_size(self, tlb, folio, delay_rmap):
        if not folio.anon:
            return super().tlb_remove_folio_pages_size(tlb, folio, delay_rmap)
        self.folio_put_now(folio)
        return False


class LeakRmap(Mainline):
    """zap never removes the rmap of anon folios (trips accounting at quiescence)."""

    def folio_remove_rmap_ptes(self, t, folio, vma, prefix=""):
        if folio.anon:
            yield f"{prefix}(rmap of pfn {folio.pfn} leaked)"
            return
        yield from super().folio_remove_rmap_ptes(t, folio, vma, prefix)


class ZeroPageNoRecheckWhileZapping(Mainline):
    """SYNTHETIC, not historic: a race that needs a rare interleaving in a common scenario.
    do_anonymous_page's read path (the zero page) skips the vmf_pte_changed re-check under the
    PTL when a zap of the mm began while this fault was between its pte_alloc and its PTL (as
    if it trusted that zapper to clean up). Three common operations must meet in a narrow
    window: a read fault on an anonymous page has passed its lockless pte_none check; a write
    fault on the same page on another CPU maps a new folio before the read fault takes the
    PTL; and a madvise/munmap on a third CPU reaches tlb_gather_mmu exactly between the read
    fault's last two steps. The zero page then overwrites the new PTE and the folio is leaked
    (trips accounting). Measured: not rare enough yet for the issue's aim (swarm finds it in
    1,208 / 7,912 / 2,234 runs under seeds 1 / 2 / 3, not > 50,000); exhaust finds it on its
    three-operation scenario at preemption bound 1 (tests/test_hybrid.py)."""

    def do_anonymous_page(self, t, vma, vpn, write):
        if write:
            yield from super().do_anonymous_page(t, vma, vpn, write)
            return
        from mmfuzz.kernel.memory import fmt_pte
        from mmfuzz.model import Pte
        m = self.m
        mm = t.mm
        yield from self.pte_alloc(t, vpn)
        table, slot = m.pte_lookup(mm, vpn)
        before = mm.tlb_flush_pending
        yield f"do_anonymous_page: zero page for va {vpn:#x} (flush pending {before})"
        yield from self.spin_lock(t, table.ptl, f"do_anonymous_page: PTL va {vpn:#x}")
        if mm.tlb_flush_pending <= before and (mm.pmd[vpn // m.ptrs_per_pte] is not table
                                               or table.ptes[slot] is not None):
            yield from self.spin_unlock(t, table.ptl, "do_anonymous_page: vmf_pte_changed, unlock")
            return
        pte = Pte(m.zero_pfn, write=False, dirty=False, young=True, special=True)
        table.ptes[slot] = pte
        yield f"do_anonymous_page: zero page + set_ptes va {vpn:#x} {fmt_pte(pte)}"
        yield from self.spin_unlock(t, table.ptl, "do_anonymous_page: pte_unmap_unlock")
