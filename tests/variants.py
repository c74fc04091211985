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


class LazyfreeDiscardIgnoresDirty(Mainline):
    """try_to_unmap_one discards a lazyfree folio on the refcount test alone, without
    "!folio_test_dirty" after the PTE was cleared: a store made after MADV_FREE returned set
    D in the PTE, try_to_unmap_one moved it to PG_dirty, and the folio is dropped anyway
    (trips no-lost-write-after-madv-free)."""

    def try_to_unmap_lazyfree(self, t, folio, mm, table, slot, vpn, pteval):
        if folio.refcount == 1 + folio.mapcount:
            yield f"try_to_unmap_one: lazyfree pfn {folio.pfn}: discard (dirty not checked)"
            return True
        return (yield from super().try_to_unmap_lazyfree(t, folio, mm, table, slot, vpn, pteval))


class NoFlushTlbBatchedPending(Mainline):
    """No path catches up with a flush reclaim deferred (flush_tlb_batched_pending does
    nothing, as before 3ea277194daa "mm, mprotect: flush TLB if potentially racing with a
    parallel reclaim leaving stale TLB entries"): MADV_DONTNEED finds the PTE reclaim already
    cleared, has nothing to flush and returns while a CPU still translates the page (trips
    no-stale-translation-after-return)."""

    def flush_tlb_batched_pending(self, t, mm):
        return
        yield


class PageoutWithoutFlushDirty(Mainline):
    """shrink_folio_list writes a dirty folio out without try_to_unmap_flush_dirty ("Folio is
    dirty. Flush the TLB if a writable entry potentially exists to avoid CPU writes after
    I/O starts"): a store through the stale writable TLB entry lands after the swap device
    read the folio, and the folio is then freed (trips no-lost-write-after-madv-free, the
    anon half of dirty-data-preserved)."""

    def try_to_unmap_flush_dirty(self, t):
        return
        yield


class FreeTablesBeforeFlush(Mainline):
    """tlb_flush_mmu frees the queued page tables before the TLB flush, so nothing waits for
    a CPU walking with IRQs off (GUP-fast): breaks "Architectures that use IPIs to flush TLBs
    will then automagically DTRT" (trips no-freed-page-table-walk)."""

    def tlb_flush_mmu(self, t, tlb):
        yield from self.tlb_table_flush(t, tlb)
        yield from self.tlb_flush_mmu_tlbonly(t, tlb)
        yield from self.tlb_batch_pages_flush(t, tlb)


class GupFastNoSeqcount(Mainline):
    """GUP-fast without the FOLL_PIN write_protect_seq check (57efa1fe5957 "mm/gup: prevent
    gup_fast from racing with COW during fork" undone): a pin taken while fork shares the
    page makes a pinned page that is not exclusive (trips gup-pin-coherent)."""

    def gup_fast(self, t, vpn, flags):
        cpu = self.m.cpus[t.cpu]
        cpu.irqs_off = True
        yield "gup_fast: local_irq_save (no write_protect_seq check)"
        got = yield from self.gup_fast_pgd_range(t, vpn, flags)
        cpu.irqs_off = False
        yield "gup_fast: local_irq_restore"
        return got
