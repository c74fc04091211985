"""Deliberately broken kernels, each one step away from mainline, that prove a property can
fail (Hypothesis keeps broken machines in its own tests for the same reason). They are
synthetic, not historic: the catalogued bugs live in mmfuzz.kernels. Also usable as
``--kernel tests.variants:Name``, the way a developer prototypes a patch."""

from mmfuzz.kernel import Mainline
from mmfuzz.kernels import GupFastPvFlushTableFree


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
        m.revoke(tlb.mm.mm_id, vpn)
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


class ForkWithoutAnonVmaClone(Mainline):
    """anon_vma_fork gives the child VMA its own anon_vma but does not clone the parent's
    chain into it: the anon folios fork shares are mapped by a VMA their anon_vma does not
    list, so rmap (reclaim, migration) cannot find the child's mapping (trips accounting at
    quiescence)."""

    def anon_vma_fork(self, t, vma, pvma):
        if pvma.anon_vma is None:
            return
        av = self.m.alloc_anon_vma()
        av.vmas.append(vma)
        vma.anon_vma_chain.append(av)
        vma.anon_vma = av
        yield f"anon_vma_fork: vma{vma.vid} gets av{av.avid} (parent's chain not cloned)"


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
        table = tlb.mm.pmd[addr // self.m.ptrs_per_pte]
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
    trips the model's own invariant assertion ("mapcount underflow"). On a folio mapped twice
    it leaves mapcount 0 with a PTE still mapping it, which `accounting` reports (exit 1):
    tests that want the model failure fix a seed that meets the first case first."""

    def folio_remove_rmap_ptes(self, t, folio, vma, prefix=""):
        yield from super().folio_remove_rmap_ptes(t, folio, vma, prefix)
        yield from super().folio_remove_rmap_ptes(t, folio, vma, prefix + "again: ")


#: the model-failure variants, with the exception each must be reported as
MODEL_FAILURES = {"ZapNoPmdCheck": "AttributeError", "ZapRelocksPtl": "ModelError",
                  "DoubleRmapRemove": "AssertionError"}


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

    def do_anonymous_page(self, t, vma, vpn, write, vma_lock=False):
        if write:
            return (yield from super().do_anonymous_page(t, vma, vpn, write, vma_lock))
        from mmfuzz.kernel.memory import fmt_pte
        from mmfuzz.model import Pte
        m = self.m
        mm = t.mm
        yield from self.pte_alloc(t, vpn)
        before = mm.tlb_flush_pending
        yield f"do_anonymous_page: zero page for va {vpn:#x} (flush pending {before})"
        table = yield from self.pte_offset_map_lock(t, mm, vpn, "do_anonymous_page")
        if table is None:
            return 0
        slot = vpn % m.ptrs_per_pte
        if mm.tlb_flush_pending <= before and table.ptes[slot] is not None:
            yield from self.spin_unlock(t, table.ptl, "do_anonymous_page: vmf_pte_changed, unlock")
            return 0
        pte = Pte(m.zero_pfn, write=False, dirty=False, young=True, special=True)
        table.ptes[slot] = pte
        yield f"do_anonymous_page: zero page + set_ptes va {vpn:#x} {fmt_pte(pte)}"
        yield from self.spin_unlock(t, table.ptl, "do_anonymous_page: pte_unmap_unlock")
        return 0
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


# NoFlushTlbBatchedPending is catalogued now: bug:reclaim-batched-flush-miss (mmfuzz/kernels.py)


class PageoutWithoutFlushDirty(Mainline):
    """shrink_folio_list writes a dirty folio out without try_to_unmap_flush_dirty ("Folio is
    dirty. Flush the TLB if a writable entry potentially exists to avoid CPU writes after
    I/O starts"): a store through the stale writable TLB entry lands after the swap device
    read the folio, and the folio is then freed (trips no-lost-write-after-madv-free, the
    anon half of dirty-data-preserved)."""

    def try_to_unmap_flush_dirty(self, t):
        return
        yield


class FreeTablesBeforeFlush(GupFastPvFlushTableFree):
    """The tables freed without a grace period (as before 9e52fc2b50de) and, worse, before
    the TLB flush, so that even an IPI flush waits for no CPU walking with IRQs off
    (GUP-fast): breaks "Architectures that use IPIs to flush TLBs will then automagically
    DTRT" (trips no-freed-page-table-walk in a world whose flushes are IPIs). On mainline's
    RCU table free the order would not matter to a software walker."""

    def tlb_flush_mmu(self, t, tlb):
        yield from self.tlb_table_flush(t, tlb)
        yield from self.tlb_flush_mmu_tlbonly(t, tlb)
        yield from self.tlb_batch_pages_flush(t, tlb)


class SwapinNewAnonNotRoot(Mainline):
    """folio_add_new_anon_rmap ignores __folio_set_anon's "If the folio isn't exclusive to this
    vma, we must use the _oldest_ possible anon_vma for the folio mapping!": a child swapping in
    an entry fork shared points the folio at its own anon_vma, and the parent, which then maps
    the same swap-cache folio, is unreachable by rmap (trips accounting at quiescence). The
    model itself did this until the root anon_vma was modelled."""

    def folio_add_new_anon_rmap_now(self, folio, vma, vpn, exclusive=True):
        super().folio_add_new_anon_rmap_now(folio, vma, vpn, True)
        folio.anon_exclusive = exclusive


class SwapinWithoutKsmCopy(Mainline):
    """do_swap_page without ksm_might_need_to_copy: a swap-cache folio that was a KSM page
    before swap-out (the flag "is lost on actual swapout") is mapped at an address whose
    linear index is not folio->index, where rmap never looks (trips accounting at
    quiescence). The model itself did this until ksm_might_need_to_copy was modelled."""

    def ksm_might_need_to_copy(self, t, folio, vma, vpn):
        return folio
        yield


class VmaLockRecheckMapped(Mainline):
    """SYNTHETIC, not historic: a race that needs a rare interleaving in a common scenario (a
    store to a page while another thread mprotects the mapping that holds it).
    lock_vma_under_rcu as the kernel has it, two lockless steps (mas_walk finds the VMA under
    RCU, then vma_start_read), and the detached re-check, but the range re-check ("address <
    vma->vm_start || address >= vma->vm_end") replaced by a weaker one: a second mas_walk that
    only asks whether some VMA still maps the address, not whether it is the VMA it locked.
    After a munmap the VMA it found is detached and the fault falls back as mainline's does.
    mprotect of part of a VMA keeps the original VMA for the range it changes (mm/vma.c
    vma_modify: "split_vma(vmi, vma, start, 1)", then "split_vma(vmi, vma, end, 0)"), so the
    address the fault wanted can now lie in a new VMA with the old flags while the VMA it locked
    has the new ones; the check passes. vma_start_read refuses a VMA that mprotect has
    write-locked (vm_lock_seq == mm_lock_seq, until mmap_write_unlock), so the fault goes wrong
    only when mprotect's whole write-locked part, from splitting the VMA to mmap_write_unlock
    (change_protection and its flush included), runs between the fault's two steps; and it
    maps a page writable where it must not only when that mprotect made the locked part
    writable (an upgrade, after an earlier mprotect(PROT_READ)): the store then goes in under
    the upgraded VMA into the new read-only one (trips pte-within-vma-protection at quiescence,
    or accounting when the new VMA was split off before the old one had an anon_vma). One
    preemption at one point, then a whole operation running while the faulting CPU, which holds
    no lock, does not step: what a systematic search at preemption bound 1 tries first and a
    random scheduler rarely does."""

    def lock_vma_under_rcu(self, t, mm, vpn):
        vma = mm.find_vma(vpn)
        if vma is None:
            yield f"lock_vma_under_rcu: mas_walk va {vpn:#x} -> none, fall back to mmap_lock"
            return None
        yield f"lock_vma_under_rcu: mas_walk va {vpn:#x} -> vma{vma.vid} (RCU)"
        if not self.vma_start_read_now(t, vma):
            yield (f"lock_vma_under_rcu: vma_start_read(vma{vma.vid}) failed (write-locked), "
                   "fall back to mmap_lock")
            return None
        if vma.detached:
            self.vma_end_read_now(t, vma)
            yield f"lock_vma_under_rcu: vma{vma.vid} detached meanwhile, vma_end_read, retry"
            return (yield from self.lock_vma_under_rcu(t, mm, vpn))
        if mm.find_vma(vpn) is None:   # the variant: "still mapped", not "still this VMA's"
            self.vma_end_read_now(t, vma)
            yield f"lock_vma_under_rcu: va {vpn:#x} no longer mapped, vma_end_read, fall back"
            return None
        yield f"lock_vma_under_rcu: vma_start_read(vma{vma.vid}), va {vpn:#x} still mapped"
        return vma


class AccessFlagsGeneric(Mainline):
    """ptep_set_access_flags as mm/pgtable-generic.c has it (set_pte_at whenever the entry
    changed, a read fault too) on x86 hardware that sets D itself: a read fault writes back
    the clean entry it read before a store through a refilled writable TLB entry set D, so
    a CPU caches D for a clean PTE (trips no-stale-translation-after-return after
    MADV_FREE). The model's own ptep_set_access_flags was this until the fuzzer flagged
    mainline with it (tests/test_access_flags.py)."""

    def ptep_set_access_flags(self, table, slot, entry, dirty):
        changed = table.ptes[slot] != entry
        if changed:
            table.ptes[slot] = entry
        return changed
