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


class MprotectNoFlush(Mainline):
    """mprotect's change_pte_range records no flush for a write-protected PTE (as if
    pte_needs_flush said no): PROT_READ returns while a CPU still holds a writable entry
    (trips no-stale-translation-after-return)."""

    @staticmethod
    def pte_needs_flush(old, new):
        return False
