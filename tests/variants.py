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


class DelayRmapNoForceFlush(Mainline):
    """A patch idea, the worked example of docs/variants.md: "with the rmap of a dirty file
    folio delayed until after the flush (5df397dec7c4), forcing that flush under the PTL looks
    redundant; drop the force_flush". zap_present_folio_ptes as in mainline without
    ``force_flush = True``."""

    def zap_present_folio_ptes(self, t, tlb, vma, folio, table, slot, vpn, force_flush):
        m = self.m
        old = table.ptes[slot]
        table.ptes[slot] = None
        m.revoke(t.mm.mm_id, vpn)
        delay_rmap = False
        dirty_note = ""
        if not folio.anon:
            if old.dirty:
                self.folio_mark_dirty_now(folio)
                dirty_note = " dirty -> folio_mark_dirty"
                if self.tlb_delay_rmap(tlb):
                    delay_rmap = True          # the patch: no force_flush = True here
        self.tlb_remove_tlb_entry(tlb, vpn)
        kind = "anon" if folio.anon else "file"
        yield (f"zap_present_folio_ptes: get_and_clear_full_ptes va {vpn:#x} pfn {folio.pfn} "
               f"({kind}){dirty_note}{' [delay rmap]' if delay_rmap else ''}")
        if not delay_rmap:
            yield from self.folio_remove_rmap_ptes(t, folio, vma)
        force_break = False
        if self.tlb_remove_folio_pages_size(tlb, folio, delay_rmap):
            force_flush = force_break = True
        return force_flush, force_break
