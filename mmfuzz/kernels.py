"""The registry of kernel variants: ``mainline``, ``bug:SLUG`` (mainline with exactly one
historic fix reverted) and ``package.module:Name`` (a user's own subclass of Mainline)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .kernel import Mainline
from .model import SWAP_HAS_CACHE


class KernelNameError(ValueError):
    pass


@dataclass(frozen=True)
class Bug:
    slug: str
    fix: str
    title: str
    prop: str
    kernel: type
    diagram_steps: int  # rows of the published / catalogued race diagram (see trace.segments)
    # the run length (actions) the fast explorer gives each run when hunting this bug (None:
    # each run draws one of explore.RUN_LENGTHS, as for any kernel): a race that needs a fork
    # (27 steps alone) was measured with a length of its own
    actions_max: int | None = None


class ZapRmapBeforeFlush(Mainline):
    """Mainline with 5df397dec7c4 ("mm: delay page_remove_rmap() until after the TLB has been
    flushed") reverted: zap_present_folio_ptes as before the fix. A dirty file PTE still forces
    the flush under the PTL (1cf35d47712d), but its rmap is removed at once, before that flush,
    so folio_mkclean can see the folio unmapped while a stale writable TLB entry exists."""

    name = "bug:zap-rmap-before-flush"

    def zap_present_folio_ptes(self, t, tlb, vma, folio, table, slot, vpn, force_flush):
        """mm/memory.c zap_pte_range's per-page body before 5df397dec7c4: "if (pte_dirty(ptent))
        { force_flush = 1; set_page_dirty(page); } ... page_remove_rmap(page, vma, false);"."""
        m = self.m
        old = table.ptes[slot]
        table.ptes[slot] = None
        m.revoke(tlb.mm.mm_id, vpn)
        self.pte_table_flush_deferred(tlb.mm, table)
        dirty_note = ""
        if not folio.anon and old.dirty:
            force_flush = True
            self.folio_mark_dirty_now(folio)
            dirty_note = " dirty -> set_page_dirty"
            m.stats["bug_path_hits"] = m.stats.get("bug_path_hits", 0) + 1
        self.tlb_remove_tlb_entry(tlb, vpn)
        kind = "anon" if folio.anon else "file"
        yield (f"zap_pte_range: ptep_get_and_clear_full va {vpn:#x} pfn {folio.pfn} "
               f"({kind}){dirty_note}")
        yield from self.folio_remove_rmap_ptes(t, folio, vma, "page_remove_rmap [before flush]: ")
        force_break = False
        if self.tlb_remove_folio_pages_size(tlb, folio, False):
            force_flush = force_break = True
        return force_flush, force_break


class MadvParallelFlushMiss(Mainline):
    """Mainline with 99baac21e458 ("mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem",
    Minchan Kim, 2017) reverted: tlb_finish_mmu no longer widens the flush when another gather
    is pending on the mm. Two threads zap the same range under mmap_lock for read; the second
    sees pte_none for a PTE the first cleared and has not flushed yet, finds nothing to flush,
    and returns while a CPU still holds the stale translation ("a thread has stable TLB entry
    can fail to flush the TLB by observing pte_none|!pte_dirty", from the patch). The pending
    counter itself is kept: today it has other readers."""

    name = "bug:madv-parallel-flush-miss"

    def tlb_finish_mmu(self, t, tlb):
        """mm/mmu_gather.c tlb_finish_mmu without the mm_tlb_flush_nested() widening."""
        mm = tlb.mm
        if mm.tlb_flush_pending > 1:
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        yield from self.tlb_flush_mmu(t, tlb)
        mm.tlb_flush_pending -= 1
        yield f"tlb_finish_mmu: dec_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"


class ClearRefsSoftDirtyNoFlush(Mainline):
    """Mainline with 912efa17e512 ("mm: proc: Invalidate TLB after clearing soft-dirty page
    state", Will Deacon, 2021) reverted: clear_refs_write brackets the walk with
    tlb_gather_mmu / tlb_finish_mmu again, only for the tlb_flush_pending side effect. The
    walk records nothing in the gather, so since 0758cd830494 tlb_flush_mmu_tlbonly finds no
    range and skips the flush, "leaving entries where pte_write() is false, yet a writable
    mapping remains in the TLB"."""

    name = "bug:clear-refs-softdirty-no-flush"

    def clear_refs(self, t, type=4):
        """fs/proc/task_mmu.c clear_refs_write before 912efa17e512 (on today's structure):
        tlb_gather_mmu(&tlb, mm) ... walk ... tlb_finish_mmu(&tlb). The fix changed the
        soft-dirty path only; the other types are mainline's."""
        if type != 4:
            yield from super().clear_refs(t, type)
            return
        mm = t.mm
        yield from self.down_write(t, mm.mmap_lock, "clear_refs(SOFT_DIRTY): mmap_write_lock")
        tlb = yield from self.tlb_gather_mmu(t, mm)
        for vma in list(mm.vmas):
            yield from self.vma_start_write(t, vma, f"clear_refs: vm_flags_clear(vma{vma.vid}, VM_SOFTDIRTY): vma_start_write + vma_set_page_prot")
            vma.softdirty = False   # vm_flags_clear(VM_SOFTDIRTY), under the VMA write lock
        yield from self.clear_refs_walk(t)
        if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds):
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        yield from self.tlb_finish_mmu(t, tlb)
        yield from self.up_write(t, mm.mmap_lock, "clear_refs: mmap_write_unlock, return", last=True)
        self.m.events.append(("softdirty_cleared", mm.mm_id, t.tid, dict(t.observed)))


class WpReuseMapcount(Mainline):
    """do_wp_page's reuse rule before 09854ba94c6a ("mm: do_wp_page() simplification", Aug
    2020): an anon page is reused on a write fault when it is mapped once (reuse_swap_page:
    total mapcount <= 1), whatever other references (a pipe's, a GUP pin) it has, and there is
    no PG_anon_exclusive. The rule under which CVE-2020-29374 leaks: the child's vmsplice
    reference does not stop the parent from reusing, and writing into, the page the pipe
    still reads. Not in the catalogue itself (the GUP scenarios that show it live there)."""

    name = "mmfuzz.kernels:WpReuseMapcount"

    def wp_can_reuse_anon_folio(self, t, folio, vma):
        """mm/memory.c do_wp_page, v5.8 (PageAnon branch, no KSM), with the page locked
        (trylock_page, or do_wp_page's sleep below when it fails), mm/swapfile.c reuse_swap_page: count = page_trans_huge_map_swapcount, the mapcount
        plus, for a swap-cache page, the swap PTEs still referring to its slot; "if (count ==
        1 && PageSwapCache(page) ...) { if (!PageWriteback(page)) { delete_from_swap_cache(page);
        SetPageDirty(page); } ... } return count <= 1;", then page_move_anon_rmap. A KSM page
        is copied: v5.8 reused one only if "PageKsm(vmf->page) && (PageSwapCache(vmf->page) ||
        page_count(vmf->page) != 1)" did not send it to copy and reuse_ksm_page could
        page_ref_freeze(page, 1); that in-place reuse is left out. (Before 2026-12-02 the swap
        count was left out: a forked child's swap PTE of the page did not stop the parent's
        reuse, a false find under this rule that the history never had.)"""
        if folio.ksm:
            return False
        if folio.locked is not None and folio.locked != t.tid:
            return False   # do_wp_page below sleeps for the lock and decides with it held
        count = folio.mapcount
        if folio.swapcache:
            count += self.m.swap.swap_map[folio.swap] & ~SWAP_HAS_CACHE
        if count > 1:
            return False
        if folio.swapcache and not folio.writeback:
            self.delete_from_swap_cache_now(folio)
            folio.dirty = True
        self.folio_move_anon_rmap_now(folio, vma)
        return True


    def do_wp_page(self, t, vma, table, slot, vpn, orig, unshare=False, vma_lock=False):
        """mm/memory.c do_wp_page, v5.8, the PageAnon branch when trylock_page fails:
        "get_page(vmf->page); pte_unmap_unlock(vmf->pte, vmf->ptl); lock_page(vmf->page);
        vmf->pte = pte_offset_map_lock(...); if (!pte_same(*vmf->pte, vmf->orig_pte)) {
        unlock_page; pte_unmap_unlock; put_page; return 0; } put_page(vmf->page);", then
        reuse_swap_page with the page locked, unlock_page, and wp_page_reuse or the copy.
        (Before 2026-12-02 the model copied when the trylock failed: a COW the history never
        made, which took a pinned page away from its pin.) Every other case as mainline's
        do_wp_page with this rule."""
        m = self.m
        folio = None if orig.special else m.frames[orig.pfn]
        if vma.shared or folio is None or not folio.anon or folio.ksm or folio.locked is None:
            return (yield from super().do_wp_page(t, vma, table, slot, vpn, orig, unshare,
                                                  vma_lock))
        folio.refcount += 1
        yield from self.spin_unlock(t, table.ptl, f"do_wp_page: trylock_page(pfn {folio.pfn}) "
                                                  "failed: get_page, pte_unmap_unlock")
        yield from self.folio_lock(t, folio, f"do_wp_page: lock_page(pfn {folio.pfn})")
        table = yield from self.pte_offset_map_lock(t, t.mm, vpn, "do_wp_page")
        if table is None or table.ptes[slot] != orig:
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            if table is not None:
                yield from self.spin_unlock(t, table.ptl, "do_wp_page: !pte_same: unlock_page, "
                                                          "pte_unmap_unlock, put_page")
            else:
                yield "do_wp_page: pte gone: unlock_page, put_page"
            return 0
        self.folio_put_now(folio)
        reuse = self.wp_can_reuse_anon_folio(t, folio, vma)
        self.folio_unlock_now(t, folio)
        return (yield from self.wp_reuse_or_copy(t, vma, table, slot, vpn, orig, folio, reuse,
                                                 unshare, vma_lock))


class WpReusePageCount(Mainline):
    """do_wp_page's reuse rule from 09854ba94c6a ("mm: do_wp_page() simplification") until
    PG_anon_exclusive (v5.19): reuse only if page_count() == 1, so an extra reference (a
    pipe's, a GUP pin) forces a copy, and there is no PG_anon_exclusive. It fixed
    CVE-2020-29374 for small pages but made the COW of a pinned page go the wrong way: a
    write fault on a pinned, read-only-mapped page copies it, and the pin and the page table
    disagree. Not in the catalogue itself."""

    name = "mmfuzz.kernels:WpReusePageCount"

    def wp_can_reuse_anon_folio(self, t, folio, vma):
        """mm/memory.c do_wp_page after 09854ba94c6a (PageAnon branch): "PageKsm() doesn't
        necessarily raise the page refcount"; page_count != 1 -> copy; trylock_page, and
        re-check page_mapcount == 1 and page_count == 1 under it ("it's dark out, and we're
        wearing sunglasses"), then reuse."""
        if folio.ksm or folio.refcount != 1:   # "if (PageKsm(page) || page_count(page) != 1)"
            return False
        if folio.locked is not None:
            return False
        return folio.mapcount == 1 and folio.refcount == 1


class CowGupWrongDirection(WpReuseMapcount):
    """CVE-2020-29374 ("COW can break either way", Jann Horn): mainline with the write
    fault's reuse decision as it was before 09854ba94c6a ("mm: do_wp_page() simplification"):
    reuse an anon page that is mapped once (reuse_swap_page), whatever references GUP holds
    on it (WpReuseMapcount). The child vmsplice()s a page it shares with its parent (a R/O
    FOLL_GET reference in the pipe) and unmaps it; the parent's write fault finds the page
    mapped once and reuses it in place, so the child reads the parent's later data through
    the pipe (selftests/mm/cow.c "vmsplice() + unmap in child"). Chosen: only the reuse
    decision differs. GUP-triggered unsharing (FAULT_FLAG_UNSHARE) did not exist then either,
    but it acts only on R/O FOLL_PIN, and vmsplice takes FOLL_GET: the CVE does not go through
    it, so it stays as in mainline (where it decides through this rule); the 17839856fd58
    workaround (GUP forcing a COW) is not modelled, and fork's early copy of pinned pages
    (70e806e4e645) stays."""

    name = "bug:cow-gup-wrong-direction"


class CowGupWrongDirectionPageCount(WpReusePageCount):
    """The "wrong COW" of a pinned page (COW fixes part 2, PG_anon_exclusive, 6c287605fd56
    and 78fbe906cc90, v5.19): mainline with do_wp_page's reuse decision as it was from
    09854ba94c6a until then, reuse only if page_count() == 1 (WpReusePageCount), so a pinned
    page mapped read-only is copied by the write fault: "a loss of synchronicity" between the
    pin and the page table. Reached e.g. by a R/O long-term pin of an exclusive page that
    clear_refs mapped read-only, or a R/O pin after a fork whose child has gone
    (selftests/mm/cow.c "R/O GUP pin on R/O-mapped exclusive page", "... previously-shared
    page"). Chosen: only the reuse decision differs; GUP's unsharing stays as in mainline
    (under this rule an unshare fault copies too, which does not save the pin)."""

    name = "bug:cow-gup-wrong-direction-pagecount"


class DirtyCow(Mainline):
    """Mainline with 19be0eaffa3a ("mm: remove gup_flags FOLL_WRITE games from
    __get_user_pages()", Linus Torvalds, Oct 2016; CVE-2016-5195, "Dirty COW") reverted, on
    today's structure. Before it, a FOLL_FORCE write to a private mapping without VM_WRITE
    followed the page only through a writable PTE, so after the write fault had broken COW
    (VM_FAULT_WRITE) faultin_page dropped FOLL_WRITE: "We can thus safely do subsequent page
    lookups as if they were reads". If MADV_DONTNEED zaps the COWed anon page before the
    retried lookup, that read lookup faults the page-cache page in and returns it, and
    /proc/PID/mem's write lands in a file the writer may only read. The revert is those two
    places: can_follow_write_pte is pte_write() again (the fix added FOLL_COW there, since
    replaced by the PG_anon_exclusive test of 5535be309971) and faultin_page clears
    FOLL_WRITE; do_wp_page only reports VM_FAULT_WRITE, which today's fault path no longer
    returns."""

    name = "bug:dirty-cow"

    def __init__(self, machine):
        super().__init__(machine)
        self.vm_fault_write: dict[int, bool] = {}   # task id -> the last fault's VM_FAULT_WRITE

    def can_follow_write_pte(self, pte, folio, vma, flags):
        """mm/gup.c follow_page_pte before 19be0eaffa3a: "if ((flags & FOLL_WRITE) &&
        !pte_write(pte)) ... return NULL"."""
        return pte.write

    def do_wp_page(self, t, vma, table, slot, vpn, orig, unshare=False, vma_lock=False):
        """mm/memory.c do_wp_page of v4.8 returned VM_FAULT_WRITE when it reused the page or
        installed the copy."""
        ret = yield from super().do_wp_page(t, vma, table, slot, vpn, orig, unshare, vma_lock)
        if not unshare:
            self.vm_fault_write[t.tid] = True
        return ret

    def faultin_page(self, t, vma, vpn, flags, fault):
        """mm/gup.c faultin_page before 19be0eaffa3a: "if ((ret & VM_FAULT_WRITE) &&
        !(vma->vm_flags & VM_WRITE)) *flags &= ~FOLL_WRITE;"."""
        from .kernel.gup import FOLL_WRITE
        self.vm_fault_write.pop(t.tid, None)
        err, flags = yield from super().faultin_page(t, vma, vpn, flags, fault)
        if err is None and self.vm_fault_write.pop(t.tid, False) and not vma.writable:
            flags &= ~FOLL_WRITE
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        return err, flags


class MadvFreeReclaimVsDio(Mainline):
    """Mainline with 6c8e2a256915 ("mm: fix race between MADV_FREE reclaim and blkdev direct
    IO read", Mauricio Faria de Oliveira, 2022) reverted: try_to_unmap_one discards a clean
    lazyfree folio without "ref_count == 1 + map_count". A direct-IO read pinned the page
    with GUP-fast after MADV_FREE (no PG_dirty: the fast path does not mark the folio dirty);
    reclaim clears the PTE and drops the folio from the page table although the pin still
    holds it, so the DMA's data lands in a folio the process no longer maps, and its next
    read of the buffer faults in zeroes. The fix pairs "clear PTE; barrier; read refcount"
    with GUP-fast's "inc refcount; barrier; read PTE"."""

    name = "bug:madvfree-reclaim-vs-dio"

    def try_to_unmap_lazyfree(self, t, folio, mm, table, slot, vpn, pteval):
        """mm/rmap.c try_to_unmap_one before 6c8e2a256915: "if (!PageDirty(page)) { ... goto
        discard; }" -- else remap and SetPageSwapBacked."""
        if not folio.dirty:
            if folio.refcount != 1 + folio.mapcount:
                self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
            yield f"try_to_unmap_one: lazyfree pfn {folio.pfn} clean: discard"
            return True
        table.ptes[slot] = pteval
        folio.lazyfree = False  # SetPageSwapBacked
        yield (f"try_to_unmap_one: lazyfree pfn {folio.pfn} dirty: set_pte_at restores va "
               f"{vpn:#x}, SetPageSwapBacked")
        return False


class NoFlushTlbBatchedPending(Mainline):
    """Mainline with 3ea277194daa ("mm, mprotect: flush TLB if potentially racing with a
    parallel reclaim leaving stale TLB entries", Mel Gorman, 2017) reverted: no path catches
    up with a flush reclaim deferred (flush_tlb_batched_pending, which the fix introduced and
    called from change_pte_range, madvise_free_pte_range, zap_pte_range and move_ptes, does
    nothing). Nadav Amit's race from the commit: a CPU caches a RW PTE; reclaim's
    try_to_unmap_one clears it with set_tlb_ubc_flush_pending; mprotect(PROT_READ) (or munmap,
    madvise: "the same type of race exists ... for operations that can leave an old TLB entry
    behind") finds the PTE non-present, has nothing to flush and returns while the CPU still
    writes through the cached entry until reclaim's try_to_unmap_flush."""

    name = "bug:reclaim-batched-flush-miss"

    def flush_tlb_batched_pending(self, t, mm):
        """mm/rmap.c flush_tlb_batched_pending before 3ea277194daa: it did not exist, so no
        caller flushed what reclaim batched on this mm."""
        return
        yield


class MprotectSoftDirtyInverted(Mainline):
    """Mainline with 76aefad628aa ("mm/mprotect: fix soft-dirty check in
    can_change_pte_writable()", Peter Xu, 2022) reverted: can_change_pte_writable tests the
    VMA flag the wrong way round, "(vma->vm_flags & VM_SOFTDIRTY) && !pte_soft_dirty(pte)".
    "The intention is correct but we didn't check it right because VM_SOFTDIRTY set actually
    means soft-dirty tracking disabled": after clear_refs 4 (VM_SOFTDIRTY clear, every PTE
    write-protected and not soft-dirty), mprotect(PROT_READ) then mprotect(PROT_READ |
    PROT_WRITE) maps an exclusive anonymous page writable again, and the next store lands
    without the fault that would mark it soft-dirty (the commit's reproducer: "Wrote page
    again", soft-dirty=0). The bug dates from 64e455079e1b; 64fe24a3e05e brought it to
    anonymous memory through mprotect."""

    name = "bug:mprotect-softdirty-inverted"

    def can_change_pte_writable(self, vma, vpn, pte):
        """mm/mprotect.c can_change_pte_writable before 76aefad628aa: the soft-dirty test
        "(vma->vm_flags & VM_SOFTDIRTY) && !pte_soft_dirty(pte)"; the rest is mainline's
        (asked with the PTE's soft-dirty bit set, so that mainline's own test passes: nothing
        else there reads the bit)."""
        if not vma.writable:
            return False
        if vma.softdirty and not pte.soft_dirty:
            return False
        if not vma.softdirty and not pte.soft_dirty:
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        return super().can_change_pte_writable(vma, vpn, pte._replace(soft_dirty=True))


class ForkPinnedNoEarlyCow(Mainline):
    """Mainline with 70e806e4e645 ("mm: Do early cow for pinned pages during fork() for ptes",
    Peter Xu, 2020) reverted: fork shares a page the parent may have pinned, as it shares any
    other. The fix "allows copy_pte_range() to do early cow if the pages were pinned on the
    source mm" (page_maybe_dma_pinned); today that test is __folio_try_dup_anon_rmap's "If
    this folio may have been pinned by the parent process, don't allow to duplicate the
    mappings but instead require to e.g., copy the subpage immediately for the child so that
    we'll always guarantee the pinned folio won't be randomly replaced in the future on
    write faults". Without it the parent's next write fault finds the page shared (no
    PG_anon_exclusive) and referenced by the pin, copies it, and the pin (an RDMA or
    O_DIRECT buffer) keeps the page the child now owns."""

    name = "bug:fork-pinned-no-early-cow"

    def folio_needs_cow_for_dma(self, vma, folio):
        """include/linux/mm.h folio_needs_cow_for_dma as if it did not exist: fork's
        __folio_try_dup_anon_rmap never refuses a folio that may be pinned, and duplicates
        it as any other."""
        if super().folio_needs_cow_for_dma(vma, folio):
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        return False


class GupFastForkNoWriteProtectSeq(Mainline):
    """Mainline with 57efa1fe5957 ("mm/gup: prevent gup_fast from racing with COW during
    fork", Jason Gunthorpe, 2020) reverted: gup_fast reads no mm->write_protect_seq.
    "There is a small race where get_user_pages_fast(FOLL_PIN) can establish a FOLL_PIN at
    the same time copy_present_page() is write protecting it": fork finds the page not
    pinned (today: __folio_try_dup_anon_rmap's folio_maybe_dma_pinned, which then clears
    PG_anon_exclusive), GUP-fast reads the still-writable PTE, pins the page and finds the
    PTE unchanged, fork write-protects it, "GUP now returns with a write protected page";
    the parent's next write fault copies it away from the pin. The fix: "wrap
    copy_p4d_range() with the write side of a seqcount and check the read side around
    gup_pgd_range()". Only that test differs."""

    name = "bug:gupfast-fork-no-write-protect-seq"

    def gup_fast_checks_write_protect_seq(self, flags: int) -> bool:
        """mm/gup.c gup_fast before 57efa1fe5957: no seqcount read and no retry; the fork
        protocol's pin check (page_maybe_dma_pinned) was there already (70e806e4e645)."""
        if super().gup_fast_checks_write_protect_seq(flags):
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        return False


class GupFastPvFlushTableFree(Mainline):
    """x86 before 9e52fc2b50de ("x86/mm: Enable RCU based page table freeing
    (CONFIG_HAVE_RCU_TABLE_FREE=y)", Vitaly Kuznetsov, 2017, v4.14), run as a paravirt guest
    whose remote TLB flushes are hypercalls (Xen PV did so for years; Hyper-V's PV flush was
    coming). A PTE table was freed like any page, right after the TLB flush, and GUP-fast's
    only protection was that "accessing the page table itself safely also relies on disabled
    interrupts and TLB flush IPIs that don't happen with hypercalls, which was acknowledged
    in commit 9e52fc2b50de" (Vlastimil Babka, stable backport of the GUP-fast fixes, 2018).
    The fix (and mainline ever since, for every x86 world since v6.15: "on paravirt, with
    MMU_GATHER_RCU_TABLE_FREE. This is done because some paravirt TLB flush implementations
    handle the TLB flush in the hypervisor, and will do the flush even when the target CPU
    has interrupts disabled", Rik van Riel, 2025) frees the tables after an RCU-sched grace
    period. Only tlb_remove_table_free differs: it frees at once. In a world whose flushes
    are IPIs it is as safe as mainline (the flush waits for the walker)."""

    name = "bug:gupfast-pv-flush-table-free"

    def tlb_remove_table_free(self, t, tables: list):
        """Before 9e52fc2b50de: x86's ___pte_free_tlb put the table page in the mmu_gather's
        page batch (tlb_remove_page), freed by tlb_batch_pages_flush after the flush with no
        grace period (here freed where mainline calls call_rcu, also after the flush)."""
        m = self.m
        if any(c.irqs_off for c in m.cpus):
            m.stats["bug_path_hits"] = m.stats.get("bug_path_hits", 0) + 1
        yield from self.free_tables_now(t, tables, "", ", no grace period")


class MremapFlushTooLate(Mainline):
    """CVE-2018-18281: mainline with eb66ae030829 ("mremap: properly flush TLB before
    releasing the page", Linus Torvalds, 2018, v4.19) reverted. Jann Horn's report: "mremap()
    TLB flush too late with concurrent ftruncate()". Since 5d1904204c99 (2016) move_ptes
    flushed under the old PTL only when it moved a dirty PTE ("or we may race with
    page_mkclean()"); a clean one left *need_flush set and move_page_tables flushed the old
    range once, after its loop, with every PTL dropped. In that window the new PTE is the
    page's only mapping: a hole punch (or truncate) zaps it, flushes the new address only,
    and frees the page, while a CPU still translates the old address to it. The fix: "we now
    always end up flushing the TLB for every valid entry", under both PTLs. move_ptes and
    move_page_tables differ, as the fix changed them."""

    name = "bug:mremap-flush-too-late"

    def move_page_tables(self, t, vma, new_vma, old_addr, new_addr, length):
        """mm/mremap.c move_page_tables before eb66ae030829: the loop of today's, with
        "bool need_flush = false" passed to every move_ptes, then "if (need_flush)
        flush_tlb_range(vma, old_end-len, old_addr);"."""
        m = self.m
        mm = t.mm
        need_flush = False
        for old, new, extent in self.move_extents(old_addr, new_addr, length):
            if mm.pmd[old // m.ptrs_per_pte] is not None:
                yield from self.pte_alloc(t, new, mm)
                if (yield from self.move_ptes(t, vma, new_vma, old, new, extent)):
                    need_flush = True
        if need_flush:
            if any(c.tlb for c in m.cpus):
                m.stats["bug_path_hits"] = m.stats.get("bug_path_hits", 0) + 1
            yield from self.flush_tlb_mm_range(t, mm, old_addr, old_addr + length, False, False)

    def move_ptes(self, t, vma, new_vma, old_addr, new_addr, extent):
        """mm/mremap.c move_ptes after 5d1904204c99, before eb66ae030829: "if
        (pte_present(pte) && pte_dirty(pte)) force_flush = true;"; after the loop the new
        PTL is dropped, then "if (force_flush) flush_tlb_range(vma, old_end - len, old_end);
        else *need_flush = true;", then the old PTL. Returns need_flush."""
        m = self.m
        mm = t.mm
        old = yield from self.pte_offset_map_lock(t, mm, old_addr, "move_ptes")
        if old is None:
            return False
        new = mm.pmd[new_addr // m.ptrs_per_pte]
        if new is not old:
            yield from self.spin_lock(t, new.ptl, f"move_ptes: spin_lock_nested({new.ptl.name})")
        yield from self.flush_tlb_batched_pending(t, mm)
        force_flush = yield from self.move_pte_slots(t, mm, old, new, old_addr, new_addr, extent,
                                                     dirty_only=True)
        if new is not old:
            yield from self.spin_unlock(t, new.ptl, f"move_ptes: spin_unlock({new.ptl.name})")
        if force_flush:
            yield from self.flush_tlb_mm_range(t, mm, old_addr, old_addr + extent, False, False)
        yield from self.spin_unlock(t, old.ptl, "move_ptes: pte_unmap_unlock")
        return not force_flush


class KsmMadvfreeClearrefs(Mainline):
    """Mainline with b3a81d0841a9 ("mm: fix KSM data corruption", Minchan Kim, 2017) reverted.
    The fix changed two functions: KSM's write_protect_page learned to flush when
    mm_tlb_flush_pending(mm), and clear_refs_write replaced its bare flush_tlb_mm with a
    tlb_gather_mmu/tlb_finish_mmu pair so that its deferred flush raises tlb_flush_pending.
    Both are put back as they were just before the fix. Two later commits rewrote the same
    lines and each closes the race on its own, so their lines go back with them: the
    anon_exclusive term of write_protect_page (6c287605fd56, PG_anon_exclusive, 2022) and
    clear_refs_write's mmap_write_lock (29a951dfb3c3 "mm: fix clear_refs_write locking",
    2021: "Turning page table entries read-only requires the mmap_sem held for writing"). The
    pre-fix clear_refs walked under mmap_read_lock, so MADV_FREE (pte_mkclean, flush
    deferred), clear_refs (pte_wrprotect, flush deferred) and ksmd can overlap, and KSM sees a
    clean read-only PTE, skips the flush and merges a page a CPU can still write through its
    TLB (Nadav Amit's scenario, quoted in the fix). Without the anon_exclusive term an
    exclusive folio reaches write_protect_page's no-flush path; it is shared there all the same
    (Ksm.write_protect_page): the pre-fix kernel had no flag to clear, and a KSM folio left
    PG_anon_exclusive would be reused in place by do_wp_page, a race no kernel had."""

    name = "bug:ksm-madvfree-clearrefs"

    def ksm_write_protect_must_flush(self, mm, table, entry, anon_exclusive):
        """mm/ksm.c write_protect_page before b3a81d0841a9: "if (pte_write(*pvmw.pte) ||
        pte_dirty(*pvmw.pte) ...)" (the savedwrite/protnone term needs NUMA hinting, not
        modelled)."""
        if not (entry.write or entry.dirty) and mm.tlb_flush_pending > 0:
            self.m.stats["bug_path_hits"] = self.m.stats.get("bug_path_hits", 0) + 1
        return entry.write or entry.dirty

    def clear_refs(self, t, type=4):
        """fs/proc/task_mmu.c clear_refs_write(CLEAR_REFS_SOFT_DIRTY) before b3a81d0841a9:
        down_read(mmap_sem); only if some VMA still has VM_SOFTDIRTY: up_read, down_write, clear
        it on every VMA, downgrade_write; the walk; flush_tlb_mm; up_read. Nothing raises
        tlb_flush_pending."""
        mm = t.mm
        if type != 4:
            yield from super().clear_refs(t, type)
            return
        yield from self.down_read(t, mm.mmap_lock, "clear_refs(SOFT_DIRTY): down_read(mmap_sem)")
        if any(v.softdirty for v in mm.vmas):
            yield from self.up_read(t, mm.mmap_lock, "clear_refs: up_read (to clear VM_SOFTDIRTY)")
            yield from self.down_write(t, mm.mmap_lock, "clear_refs: down_write(mmap_sem)")
            for vma in mm.vmas:
                vma.softdirty = False
            yield "clear_refs: vma->vm_flags &= ~VM_SOFTDIRTY + vma_set_page_prot"
            yield from self.downgrade_write(t, mm.mmap_lock, "clear_refs: downgrade_write(mmap_sem)")
        yield from self.clear_refs_walk(t)
        yield from self.flush_tlb_mm_range(t, mm, 0, 0, True, True)  # flush_tlb_mm
        yield from self.up_read(t, mm.mmap_lock, "clear_refs: flush_tlb_mm, up_read, return", last=True)
        self.m.events.append(("softdirty_cleared", mm.mm_id, t.tid, dict(t.observed)))


BUGS: list[Bug] = [
    Bug("zap-rmap-before-flush", "5df397dec7c4",
        "mm: delay page_remove_rmap() until after the TLB has been flushed",
        "dirty-data-preserved", ZapRmapBeforeFlush, 8),
    Bug("madv-parallel-flush-miss", "99baac21e458",
        "mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem",
        "no-stale-translation-after-return", MadvParallelFlushMiss, 7),
    Bug("clear-refs-softdirty-no-flush", "912efa17e512",
        "mm: proc: Invalidate TLB after clearing soft-dirty page state",
        "soft-dirty-accurate", ClearRefsSoftDirtyNoFlush, 3),
    Bug("cow-gup-wrong-direction-pagecount", "6c287605fd56",
        "mm: remember exclusively mapped anonymous pages with PG_anon_exclusive "
        "(reuse by page_count: the wrong COW of a pinned page)",
        "gup-pin-coherent", CowGupWrongDirectionPageCount, 4),
    Bug("dirty-cow", "19be0eaffa3a",
        "mm: remove gup_flags FOLL_WRITE games from __get_user_pages()",
        "no-write-to-readonly-file", DirtyCow, 6, actions_max=200),
    # MADV_FREE, a R/W GUP-fast pin and reclaim, three long operations (reclaim alone takes
    # some 20 steps): with 60 actions a run seldom gets to reclaim after the other two (3 of
    # 1,000 runs with those operations on took the bug path; 94 of 1,000 with 200 actions).
    # It had 200 of its own until runs drew 120 or 240 (explore.RUN_LENGTHS), which find it in
    # fewer steps (seeds 1-6: 275,000-2.8 M steps, median about 585,000, against about 1.3 M)
    Bug("madvfree-reclaim-vs-dio", "6c8e2a256915",
        "mm: fix race between MADV_FREE reclaim and blkdev direct IO read",
        "gup-pin-coherent", MadvFreeReclaimVsDio, 6),
    # reclaim's batched flush against munmap / MADV_DONTNEED / MADV_FREE / mprotect (the
    # commit's diagram: the user's access, reclaim's unmap, mprotect and the stale store, then
    # reclaim's flush)
    Bug("reclaim-batched-flush-miss", "3ea277194daa",
        "mm, mprotect: flush TLB if potentially racing with a parallel reclaim leaving stale "
        "TLB entries", "no-stale-translation-after-return", NoFlushTlbBatchedPending, 4),
    # one process, no race: the commit's reproducer (fault, clear_refs 4, mprotect RO, RW,
    # store), a row each
    Bug("mprotect-softdirty-inverted", "76aefad628aa",
        "mm/mprotect: fix soft-dirty check in can_change_pte_writable()",
        "soft-dirty-accurate", MprotectSoftDirtyInverted, 5),
    # a R/W pin of an exclusive anon page, fork, the parent's write fault (cow.c's
    # "R/W pin + fork" family)
    Bug("fork-pinned-no-early-cow", "70e806e4e645",
        "mm: Do early cow for pinned pages during fork() for ptes",
        "gup-pin-coherent", ForkPinnedNoEarlyCow, 4),
    # CVE-2020-29374: fork, one process's vmsplice of the page both share, something that
    # leaves that page mapped once (cow.c: the vmsplicer's munmap; in the finds seen so far
    # the vmsplicer's own write fault, which copies), the other process's store, which
    # reuses the page the pipe still references (cow-isolation judges a held reference as
    # read, since the pipe may be read at any time). Seeds 1-10 within 20,000 runs of 400 actions: 719
    # 3,903 11,217 10,623 7,646 3,773 9,466 10,732 11,747 11,308 (2026-12-02). Before the
    # variant's artifacts were fixed (2026-12-02) most finds were gup-pin-coherent through
    # them (a trylock failure copied; reuse_swap_page's swap count was missing)
    Bug("cow-gup-wrong-direction", "09854ba94c6a", "mm: do_wp_page() simplification "
        "(CVE-2020-29374: reuse by mapcount, no GUP unsharing)",
        "cow-isolation", CowGupWrongDirection, 5, actions_max=400),
    # a GUP-fast reads the PMD (IRQs off) while munmap of the whole table clears it, flushes
    # by hypercall (waiting for nobody) and frees the table; GUP-fast then reads its PTE
    Bug("gupfast-pv-flush-table-free", "9e52fc2b50de",
        "x86/mm: Enable RCU based page table freeing (CONFIG_HAVE_RCU_TABLE_FREE=y)",
        "no-freed-page-table-walk", GupFastPvFlushTableFree, 4),
    # a FOLL_PIN GUP-fast in the parent between fork's PG_anon_exclusive clear and its
    # write-protect of that PTE (the commit's diagram: GUP-fast's PTE read and grab, fork's
    # pin check and write-protect), then the parent's write fault. The swarm found it on 1
    # of seeds 1-10 within 20,000 runs (it was in UNFOUND until 2026-12-04); hunt's directed
    # search (explore.DirectedPolicy: pin_user_pages or vmsplice switched on in every run,
    # fork held in its window) on 10 of 10 within 15,000, median 1,986 with runs of 400
    # actions (the CVE's length), 2,283.5 with 200 in fewer model steps (7.1 M against 8.5 M
    # over the ten seeds; the finds come early in a run), 2,780 with the default 120 or 240
    # (8.7 M) (bench/RESULTS-runs.md)
    Bug("gupfast-fork-no-write-protect-seq", "57efa1fe5957",
        "mm/gup: prevent gup_fast from racing with COW during fork",
        "gup-pin-coherent", GupFastForkNoWriteProtectSeq, 4, actions_max=200),
]

#: Catalogued bugs whose variant the model has but the search does not find from scratch:
#: not in BUGS (no hunt, no test of a find), but measured by `python -m bench.runs --bugs
#: SLUG` as the others are, so the numbers that keep each out stay reproducible. The
#: property is the one the model flags on hand-written schedules (tests/test_deferred.py).
UNFOUND: list[Bug] = [
    # a load fills the old address, mremap moves the clean PTE and drops its PTLs with the
    # flush still to come, a hole punch zaps the new PTE, flushes the new address and frees
    # the page while the old address still translates to it; the punch (about 15 steps)
    # must run whole inside mremap's one-step window (tests/test_mremap_punch.py); none of
    # seeds 1-2 within 8,000 swarm runs, 8,000 PCT runs or 4,000 hybrid runs; none of seeds
    # 1-4 within 6,000 directed runs (2026-12-04: mremap switched on in every run)
    Bug("mremap-flush-too-late", "eb66ae030829",
        "mremap: properly flush TLB before releasing the page (CVE-2018-18281)",
        "no-use-after-free-via-TLB", MremapFlushTooLate, 4),
    # ten ordered events over three or four tasks (bench/RESULTS-runs.md); none of seeds 1-4
    # within 6,000 directed runs (2026-12-04: clear_refs or ksmd switched on in every run);
    # the stale entry ksmd must meet is common, the two pages identical at that moment almost
    # never (prefault stores write fresh versions), and the find then needs a store that
    # changes the page ("a stage census", bench/RESULTS-runs.md); a probe's per-task
    # stale-TLB hold found it through no-stale-translation-after-return (MADV_FREE's
    # tlb_finish_mmu no longer sees clear_refs' flush as nested) with only madvise_free,
    # clear_refs and ksmd on (1 in 4,000 runs), in the full mix in none of 4 x 8,000
    Bug("ksm-madvfree-clearrefs", "b3a81d0841a9", "mm: fix KSM data corruption",
        "no-lost-write-after-madv-free", KsmMadvfreeClearrefs, 8),
]

class MkcleanChecksFlushPending:
    """Yu Zhao's proposal (linux-mm, 23 Nov 2020, Re: [PATCH 6/6] mm: proc: Avoid fullmm flush
    for young/dirty bit toggling; Minchan Kim agreed "we need to fix page writeback path"):
    page_vma_mkclean_one also acts on a clean read-only PTE while mm_tlb_flush_pending(mm),
    "!pte_dirty() && !pte_write() && !mm_tlb_flush_pending()". Never merged. A mixin: it
    overrides only the test, so it composes with any kernel variant."""

    def mkclean_pte_needs_flush(self, mm, table, pte) -> bool:
        """mm/rmap.c page_vma_mkclean_one with Yu Zhao's extra term."""
        return pte.dirty or pte.write or mm.tlb_flush_pending > 0


class YuZhaoMkcleanFix(MkcleanChecksFlushPending, Mainline):
    """Mainline plus Yu Zhao's page_vma_mkclean_one check (the proposal, as a kernel)."""

    name = "proposal:mkclean-flush-pending"


class ReclaimFlushDirtyBeforeUnlock:
    """A candidate fix of mmfuzz's own (not a posted patch), the "fix" that names the
    known-open race reclaim-unlock-before-batched-flush: shrink_folio_list unmaps a dirty file
    folio with TTU_BATCH_FLUSH (its TLB flush deferred to try_to_unmap_flush() after the
    loop), then keeps or activates it (a dirty file folio is not written by direct reclaim)
    and unlocks it before that flush; writeback may then lock it, find it unmapped
    (folio_mkclean: folio_mapped() = 0), clean and write it, while a CPU still stores through
    its stale writable, dirty TLB entry: the store lands in a clean folio. The candidate does
    try_to_unmap_flush_dirty() ("Flush iff there are potentially writable TLB entries that can
    race with IO") before unlocking a kept folio. A mixin, composable with any variant."""

    def keep_locked(self, t, folio, why):
        yield from self.try_to_unmap_flush_dirty(t)
        return (yield from super().keep_locked(t, folio, why))


class ZapDelaysRmapWhileFlushNested:
    """A candidate fix of mmfuzz's own (not a posted patch), the "fix" that names the
    known-open race pte-cleaner-zap-early-rmap. mm/mapping_dirty_helpers.c clean_record_pte
    turns a dirty PTE clean (keeping W) and leaves the flush to wp_clean_post_vma, so a CPU may
    still hold a writable, dirty TLB entry behind a clean PTE (the window of Yu Zhao's
    Example 1). A zap in that window (munmap, MADV_DONTNEED, a hole punch) sees a clean file
    PTE, so zap_present_folio_ptes neither delays the rmap nor forces the flush under the
    PTL; the folio is unmapped at once, writeback's folio_mkclean finds folio_mapped() = 0
    and cleans it, and a store through the stale entry lands in a clean folio. The candidate
    treats the PTE as possibly dirty in a TLB while another thread owes a flush on the mm
    (mm_tlb_flush_nested: this zap's own gather is one of the pending), the same
    condition Yu Zhao proposed for page_vma_mkclean_one. A mixin, composable with any
    variant."""

    def zap_file_pte_dirty_for_flush(self, tlb, pte) -> bool:
        return pte.dirty or self.mm_tlb_flush_nested(tlb.mm)


class TlbGenerationTracking:
    """Nadav Amit's proposal (LKML, 30 Oct 2022, Re: [PATCH 01/13] mm: Update
    ptep_get_lockless()s comment, seed 001; earlier RFC "TLB batching consolidation and
    enhancements", 2021), never merged, as a mixin over any kernel:

    - x86's mm->tlb_gen becomes the *pending* generation; a per-mm *completed* generation
      advances when a flush has really completed;
    - "Whenever you update the page-tables in a manner that might require a TLB flush, you
      would increase the pending TLB-generation and save the pending TLB-generation in the
      page-table's page-struct. All of that is done once under the page-table lock";
    - a path that relies on a PTE read from a table first checks "if the page-table's
      TLB-generation is greater than the completed TLB-generation ... In that case you would
      just flush the TLB": page_vma_mkclean_one, KSM's write_protect_page (instead of its
      coarse mm_tlb_flush_pending) and the write fault.

    What completes a generation is this model's reading of "When you finish a TLB-flush, you
    update the completed TLB-generation": a flush that took generation N completes N if it
    was a full flush or if every table with a pending generation below N lies inside its
    range; otherwise the completed generation stays where it is (conservative: one more
    flush at the next check, never a missed one). Reclaim's batched flush does not complete
    generations (it does not record the mm). Left out: fast-GUP ("may need extra thought"),
    the cost of the contended counters.

    A pending generation is stored wherever a PTE change leaves its flush for later: the zap
    (mmu_gather), MADV_FREE's mkold/mkclean, mprotect, clear_refs' write-protect, the PTE
    cleaner, fork's write-protect of the parent (flushed by dup_mmap's flush_tlb_mm) and
    reclaim's TTU_BATCH_FLUSH unmap. It is consulted only where a path has a page table in
    hand: page_vma_mkclean_one checks the table once its walker holds the PTL, before
    check_pte (the generation belongs to the table, so a PTE already zapped still finds it),
    write_protect_page and the write fault after pte_same. A folio whose mapcount is already
    0 has no table to ask: folio_mkclean returns at folio_mapped() == 0 exactly as mainline
    does, which is why the check alone does not close the seed-000 zap
    (tests/test_deferred.py)."""

    def pte_table_flush_deferred(self, mm, table) -> None:
        """Proposal: inc the pending generation, store it in the table (PTL held)."""
        mm.tlb_gen += 1
        table.tlb_gen = mm.tlb_gen

    def tlb_flush_completed(self, mm, gen, start, end, full) -> None:
        """Proposal: advance the completed generation to ``gen`` if this flush covered every
        table change made before it was sent."""
        if gen <= mm.tlb_gen_completed:
            return
        if not full:
            p = self.m.ptrs_per_pte
            for tbl in mm.pmd:
                if tbl is None or not mm.tlb_gen_completed < tbl.tlb_gen < gen:
                    continue
                if not (start <= tbl.pmd_index * p and (tbl.pmd_index + 1) * p <= end):
                    return
        mm.tlb_gen_completed = gen

    def pte_table_flush_check(self, t, mm, table):
        """Proposal: the table's pending generation is ahead of the completed one, so TLB
        entries for its PTEs may be stale: flush the mm before relying on the PTE."""
        if table.tlb_gen > mm.tlb_gen_completed:
            yield (f"tlb-gen check: table {table.tid} gen {table.tlb_gen} > completed "
                   f"{mm.tlb_gen_completed}: flush first")
            yield from self.flush_tlb_mm_range(t, mm, 0, 0, True, False)

    def ksm_needs_flush_pending(self, mm, table) -> bool:
        """KSM's write_protect_page asks the table generation instead of
        mm_tlb_flush_pending (the check above has flushed already if it was ahead)."""
        return False


class TlbGeneration(TlbGenerationTracking, Mainline):
    """Mainline plus Nadav Amit's per-table pending / per-mm completed TLB generations."""

    name = "proposal:tlb-generation"


class ZapRmapBeforeFlushWithTlbGeneration(TlbGenerationTracking, ZapRmapBeforeFlush):
    """The buggy zap of zap-rmap-before-flush (5df397dec7c4 reverted) under Nadav Amit's
    generation check: does the proposal close the seed-000 bug?"""

    name = "proposal:tlb-generation+bug:zap-rmap-before-flush"


class ZapRmapInFlushRegion(Mainline):
    """The design Linus Torvalds weighed in the thread of seed 001 (30 Oct 2022) before
    5df397dec7c4: "we *could* move page_remove_rmap() later into the TLB flush region, but then
    we would have lost the page table lock anyway, so folio_mkclean() can come in regardless".
    A dirty file PTE's rmap removal is delayed as in mainline, but nothing forces the flush
    under the PTL: the delayed rmaps are removed in tlb_flush_mmu right after its TLB flush,
    outside the PTL. Nadav Amit answered that combined with his generation check "this could
    work". Not a historic kernel: a design, to test that claim."""

    name = "design:zap-rmap-in-flush-region"

    def zap_present_folio_ptes(self, t, tlb, vma, folio, table, slot, vpn, force_flush):
        """mainline's zap_present_folio_ptes, without "force_flush = true" for a delayed rmap."""
        m = self.m
        old = table.ptes[slot]
        table.ptes[slot] = None
        m.revoke(tlb.mm.mm_id, vpn)
        self.pte_table_flush_deferred(tlb.mm, table)
        delay_rmap = False
        if not folio.anon and old.dirty:
            self.folio_mark_dirty_now(folio)
            delay_rmap = self.tlb_delay_rmap(tlb)
        self.tlb_remove_tlb_entry(tlb, vpn)
        yield (f"zap_present_folio_ptes: get_and_clear_full_ptes va {vpn:#x} pfn {folio.pfn} "
               f"({'anon' if folio.anon else 'file'}){' [delay rmap to the flush]' if delay_rmap else ''}")
        if not delay_rmap:
            yield from self.folio_remove_rmap_ptes(t, folio, vma)
        force_break = False
        if self.tlb_remove_folio_pages_size(tlb, folio, delay_rmap):
            force_flush = force_break = True
        return force_flush, force_break

    def tlb_flush_mmu(self, t, tlb):
        """tlb_flush_mmu with the delayed rmaps removed after the TLB flush, before any page
        is freed (no PTL held)."""
        yield from self.tlb_flush_mmu_tlbonly(t, tlb)
        yield from self.tlb_flush_rmaps(t, tlb, None)
        yield from self.tlb_table_flush(t, tlb)
        yield from self.tlb_batch_pages_flush(t, tlb)

    def tlb_end_vma(self, t, tlb, vma):
        """tlb_end_vma; the delayed rmaps wait for tlb_flush_mmu (a gather keeps its pages and
        their delayed rmaps across VMAs)."""
        yield from super().tlb_end_vma(t, tlb, vma)


class ZapRmapInFlushRegionWithTlbGeneration(TlbGenerationTracking, ZapRmapInFlushRegion):
    """Linus's later-rmap design under Nadav Amit's generation check (his claim in seed 001)."""

    name = "design:zap-rmap-in-flush-region+proposal:tlb-generation"


@dataclass(frozen=True)
class KnownOpen:
    """A race the model finds on mainline and that mainline has not fixed. A violation counts
    as this race when the same schedule is clean once ``fix`` (a mixin holding the proposed
    fix) is added to the kernel under test: the race is named by what closes it, never by its
    scenario. ``props``: every property through which the race shows (a stale writable TLB
    entry's store can be a lost write or a missed soft-dirty bit, by what happened to the page
    meanwhile)."""

    slug: str
    props: tuple
    title: str
    source: str
    fix: type


KNOWN_OPEN: list[KnownOpen] = [
    KnownOpen("yu-zhao-example-1", ("dirty-data-preserved",),
              "page_vma_mkclean_one skips a clean read-only PTE whose flush another thread "
              "still owes (a PTE cleaner cleaned it, a write-protect followed)",
              "Yu Zhao, linux-mm 23 Nov 2020, Message-ID 20201124011334.GA140483@google.com "
              "(seed 002); tests/test_deferred.py has the diagram",
              MkcleanChecksFlushPending),
    # soft-dirty-accurate too (2026-12-04, directed search, the CVE's seed 8): a fault maps
    # the unlocked folio again with a clean PTE (vmsplice's faultin_page) and the stale entry's
    # store leaves that PTE not soft-dirty; tests/test_known_open.py has the schedule
    KnownOpen("reclaim-unlock-before-batched-flush", ("dirty-data-preserved", "soft-dirty-accurate"),
              "shrink_folio_list keeps (activates) a dirty file folio it unmapped with its TLB "
              "flush still batched, and unlocks it before try_to_unmap_flush(): writeback "
              "cleans it (or a fault maps it again) while a CPU still stores through a stale "
              "writable entry",
              "found by mmfuzz on the merged model (issue 10 work); not yet reported to "
              "linux-mm; tests/test_known_open.py has the diagram",
              ReclaimFlushDirtyBeforeUnlock),
    KnownOpen("pte-cleaner-zap-early-rmap", ("dirty-data-preserved",),
              "a zap removes the rmap of a clean file PTE at once while a PTE cleaner's flush "
              "is still owed: writeback finds the folio unmapped and cleans it while a CPU "
              "still stores through the writable, dirty TLB entry the cleaner left",
              "found by mmfuzz on the merged model (swarm with late IPIs, seed 5); not yet "
              "reported to linux-mm; tests/test_known_open.py has the diagram",
              ZapDelaysRmapWhileFlushNested),
]

#: how often each known-open race was met (and set aside) in this process
KNOWN_SEEN: dict[str, int] = {}
_WITH_FIX: dict[tuple, type] = {}


def known_open_race(kernel_cls, world: dict, actions: list, violation) -> str | None:
    """The slug of the known-open race ``violation`` is an instance of, or None: replay
    ``actions`` on ``kernel_cls`` with each matching race's fix mixed in; clean means the
    violation is that race."""
    from .run import Divergence, ModelError, ModelFailure, execute
    if not any(violation.prop in k.props for k in KNOWN_OPEN):
        return None
    same_on_mainline = False
    if kernel_cls is not Mainline and not _off_catalogue(kernel_cls, violation.prop):
        # a variant's violation is set aside only if mainline has it too on the same schedule:
        # a race the variant itself opens is its find, whatever else would close it
        try:
            _, main_out = execute(Mainline, world, actions)
        except (ModelError, ModelFailure, Divergence):
            return None
        if main_out.violation is None or main_out.violation.prop != violation.prop:
            return None
        same_on_mainline = True
    for k in KNOWN_OPEN:
        if violation.prop not in k.props or issubclass(kernel_cls, k.fix):
            continue
        clean = _clean_with(_with_fix(kernel_cls, k), world, actions)
        if clean is False and same_on_mainline:
            # the variant's own code may not compose with the fix (it overrides the function
            # the fix widens); mainline violates the same way on this schedule, so mainline
            # with the fix decides: the schedule is no evidence of the variant's own bug
            clean = _clean_with(_with_fix(Mainline, k), world, actions)
        if clean:
            KNOWN_SEEN[k.slug] = KNOWN_SEEN.get(k.slug, 0) + 1
            return k.slug
    return None


def _clean_with(kernel_cls, world: dict, actions: list) -> bool | None:
    """Is ``actions`` clean on ``kernel_cls`` (a kernel with a known race's fix), quiescence
    included? None when the replay raised. Actions the fix leaves not enabled are skipped,
    as the shrinker skips them (a fix adds steps: a flush and its IPIs)."""
    from .run import Divergence, ModelError, ModelFailure, execute
    try:
        _, out = execute(kernel_cls, world, actions)
    except (ModelError, ModelFailure, Divergence):
        return None
    return out.violation is None


def _off_catalogue(kernel_cls, prop: str) -> bool:
    """Is ``prop`` a property other than the one the catalogue says ``kernel_cls`` (a catalogued
    bug's variant) violates? Such a violation is set aside when the known-open race's fix
    closes it even where mainline, on the same schedule, does not reach it: a variant that
    drops a step (gupfast-fork-no-write-protect-seq's seqcount read) moves every later action
    of a replay on mainline, so "mainline fails the same way" cannot be asked of it, and a
    violation the fix closes, of a property that is not the variant's, is the known race."""
    bug = next((b for b in BUGS + UNFOUND if b.kernel is kernel_cls), None)
    return bug is not None and bug.prop != prop


def _with_fix(kernel_cls, k: "KnownOpen") -> type:
    """``kernel_cls`` with known-open race ``k``'s fix mixed in (made once per pair)."""
    fixed = _WITH_FIX.get((kernel_cls, k.slug))
    if fixed is None:
        fixed = type(f"{kernel_cls.__name__}+{k.fix.__name__}", (k.fix, kernel_cls),
                     {"name": f"{kernel_cls.name}+{k.slug}-fix"})
        _WITH_FIX[(kernel_cls, k.slug)] = fixed
    return fixed


_BY_NAME = {"mainline": Mainline}
_BY_NAME.update({f"bug:{b.slug}": b.kernel for b in BUGS})
_BY_NAME[YuZhaoMkcleanFix.name] = YuZhaoMkcleanFix
_BY_NAME[TlbGeneration.name] = TlbGeneration
# Not in BUGS yet: the model shows the race on hand-written schedules (tests/test_deferred.py),
# but random search does not reach it. The race needs three CPUs of the first process (half of
# the worlds: ksmd may run on the CPU that holds the stale entry), madvise_free, clear_refs and
# ksmd switched on together (1.1% of swarm runs), both anon pages write-faulted and never stored
# (identical contents are zero here: every store writes a new version), a CPU holding a
# writable TLB entry for the scanned one while MADV_FREE has cleaned its PTE and clear_refs (a
# second call: the first takes mmap_write_lock to clear VM_SOFTDIRTY) has write-protected it,
# both flushes still to come, ksmd at write_protect_page in that window, and that CPU's store
# after pages_identical and before it takes either IPI. Measured under seed 1 with throwaway
# probes: of 20,000 swarm runs (60 actions), 237 have the three operations on, 149 have two
# identical pages while a CPU can write one through its TLB, 2 also with its PTE clean, none
# also read-only (the state ksmd must meet). With only the three operations on and 200
# actions, 3,000 runs meet that state in none (ksmd takes the no-flush path with a flush
# pending in 8) and 20,000 find nothing; even with a third of the stores keeping a zero page
# zero and ksmd scanning six times per start, ksmd meets it once in 3,000 runs.
# With the store of the same value (hw.STORE_SAME, the diagram's first row; explore draws it
# as one store in ten) it is still not found: swarm, seeds 1-10, 20,000 runs of 60 actions
# each, none (ksmd's no-flush path with a flush pending in 1 of the 200,000 runs); seeds
# 1-5, 10,000 runs of 200 actions, none (that path in 2 of 50,000); guided seeds 1-2,
# 10,000 runs, none; PCT seeds 1-3, 20,000 runs, none (the path never).
# The rare part is not the identical page (a load or a store of the same value gives the
# writable, dirty entry) but the PTE clean and read-only while both flushes are owed:
# with only the three operations on (200 actions, seed 1, 5,000 runs) ksmd takes the
# no-flush path with a flush pending in 16 runs, and in 15 of them no CPU holds a writable
# entry for the page (MADV_FREE raised tlb_flush_pending, but the clean read-only PTE came
# from calls whose flushes were done). bench/RESULTS-ksm-store-same.md has the numbers.
_BY_NAME[KsmMadvfreeClearrefs.name] = KsmMadvfreeClearrefs
_BY_NAME[ZapRmapInFlushRegion.name] = ZapRmapInFlushRegion
_BY_NAME[GupFastForkNoWriteProtectSeq.name] = GupFastForkNoWriteProtectSeq
_BY_NAME[MremapFlushTooLate.name] = MremapFlushTooLate
_BY_NAME[CowGupWrongDirection.name] = CowGupWrongDirection
_BY_NAME[ZapRmapInFlushRegionWithTlbGeneration.name] = ZapRmapInFlushRegionWithTlbGeneration
_BY_NAME[ZapRmapBeforeFlushWithTlbGeneration.name] = ZapRmapBeforeFlushWithTlbGeneration


def kernel_names() -> list[str]:
    return list(_BY_NAME)


def bug_by_slug(slug: str) -> Bug:
    for b in BUGS:
        if b.slug == slug:
            return b
    if any(b.slug == slug for b in UNFOUND):
        raise KernelNameError(
            f"bug {slug!r} is catalogued but not found from scratch (kernels.UNFOUND), so it "
            f"has no hunt of its own; fuzz its kernel with `mmfuzz hunt --kernel bug:{slug}`")
    raise KernelNameError(
        f"unknown bug {slug!r}; `mmfuzz bugs` lists them: {', '.join(b.slug for b in BUGS)}")


def resolve_kernel(name: str) -> type:
    """Map a kernel name to its class; raise KernelNameError with the fix in the message."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name.startswith("bug:"):
        bug_by_slug(name[4:])
    if ":" in name and not name.startswith("bug:"):
        mod_name, _, attr = name.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise KernelNameError(f"kernel {name!r}: cannot import module {mod_name!r} ({e}); "
                                  "use package.module:ClassName on the Python path") from None
        cls = getattr(mod, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, Mainline)):
            raise KernelNameError(f"kernel {name!r}: {attr!r} in {mod_name} is not a subclass "
                                  "of mmfuzz.kernel.Mainline")
        if cls.name == Mainline.name:
            cls.name = name
        return cls
    raise KernelNameError(f"unknown kernel {name!r}; use one of {', '.join(kernel_names())} "
                          "or package.module:ClassName")
