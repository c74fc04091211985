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


# ------------------------------------------------------------------ model failures ------
# Synthetic variants that break the kernel's own code rather than a protocol: each must end
# a campaign with exit status 3 ("the model or the variant failed"), never with a find.

class ZapNoPmdCheck(Mainline):
    """Synthetic: zap_pte_range without its "pte_offset_map_lock failed" check (mm/memory.c
    returns when there is no PTE table), reached because zap_pmd_range skips none PMDs only
    after this variant has already looked: a zap of a range with no PTE table dereferences
    None (AttributeError: 'NoneType' object has no attribute 'ptl')."""

    def zap_pmd_range(self, t, tlb, vma, start, end):
        p = self.m.ptrs_per_pte
        addr = start
        while addr < end:
            nxt = min((addr // p + 1) * p, end)
            addr = yield from self.zap_pte_range(t, tlb, vma, addr, nxt)

    def zap_pte_range(self, t, tlb, vma, addr, end):
        table = t.mm.pmd[addr // self.m.ptrs_per_pte]
        if table is None:   # mainline returns here; this variant locks the PTL of nothing
            yield from self.spin_lock(t, table.ptl, f"zap_pte_range: pte_offset_map_lock va {addr:#x}")
        return (yield from super().zap_pte_range(t, tlb, vma, addr, end))


class ZapRelocksPtl(Mainline):
    """Synthetic: zap_present_ptes takes the PTL its caller zap_pte_range already holds (a
    spinlock is not recursive): the zapper spins forever and every other user of that table
    waits behind it, a deadlock the model reports as such."""

    def zap_present_ptes(self, t, tlb, vma, table, slot, vpn, force_flush):
        yield from self.spin_lock(t, table.ptl, f"zap_present_ptes: PTL again va {vpn:#x}")
        return (yield from super().zap_present_ptes(t, tlb, vma, table, slot, vpn, force_flush))


class DoubleRmapRemove(Mainline):
    """Synthetic: zap removes a folio's rmap twice; on a folio mapped once the second removal
    trips the model's own invariant assertion ("mapcount underflow")."""

    def folio_remove_rmap_ptes(self, t, folio, vma, prefix=""):
        yield from super().folio_remove_rmap_ptes(t, folio, vma, prefix)
        yield from super().folio_remove_rmap_ptes(t, folio, vma, prefix + "again: ")


#: the model-failure variants, with the exception each must be reported as
MODEL_FAILURES = {"ZapNoPmdCheck": "AttributeError", "ZapRelocksPtl": "ModelError",
                  "DoubleRmapRemove": "AssertionError"}
