"""Reclaim as a kernel thread: mm/vmscan.c shrink_inactive_list -> shrink_folio_list, reduced
to a short list of folios.

Two LRUs, as folio_is_file_lru sorts them: the anon LRU (swap-backed anon folios) and the
file LRU (page-cache folios and lazyfree anon folios, whose PG_swapbacked MADV_FREE
cleared), each in allocation order (oldest first). One reclaim pass scans both (``lru`` 2)
or one (0 anon, 1 file): per LRU it isolates ``nr`` folios starting ``skip`` folios in
(isolate_lru_folios takes a reference and clears PG_lru), runs shrink_folio_list on them
and puts back what it keeps.
Left out: the active/inactive split (activation only keeps a folio), MGLRU, memcg, the
watermarks that start kswapd, lru_add_drain, mlock and unevictable folios, large folios and
THP splitting, demotion, kswapd's writeback of dirty file folios (PG_reclaim, PGDAT_DIRTY:
a dirty file folio is activated, as for direct reclaim), buffer heads
(filemap_release_folio), waiting on writeback, workingset shadow entries.
"""

from __future__ import annotations

from ..model import Folio
from ..ops import Choice, operation
from .base import KernelBase, Last, Task
from .rmap import TTU_BATCH_FLUSH

# mm/vmscan.c enum folio_references, enum pageout_t
FOLIOREF_RECLAIM, FOLIOREF_RECLAIM_CLEAN, FOLIOREF_KEEP, FOLIOREF_ACTIVATE = range(4)
PAGE_KEEP, PAGE_ACTIVATE, PAGE_SUCCESS, PAGE_CLEAN = range(4)


class Vmscan(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/vmscan.c isolate_lru_folios (folio_try_get, PG_lru); shrink_folio_list: folio_test_writeback,
    # folio_check_references -> mm/rmap.c folio_referenced (rmap walk: i_mmap / anon_vma,
    # ptep_clear_flush_young) + folio_test_clear_referenced; folio_maybe_dma_pinned; add_to_swap;
    # try_to_unmap_one (pte_dirty -> folio_mark_dirty, PageAnonExclusive ->
    # folio_try_share_anon_rmap_pte, a swap entry or none, folio_remove_rmap_pte,
    # set_tlb_ubc_flush_pending; a lazyfree folio: folio_test_dirty and the refcount decide);
    # pageout: folio_clear_dirty_for_io, swap_writepage (PG_writeback); __remove_mapping:
    # folio_ref_freeze, PG_dirty, the swap cache or the page cache
    @operation("reclaim", Choice("lru", (2, 0, 1), "2: both, as shrink_lruvec scans them; "
                                 "0: the anon LRU only, 1: the file LRU only"),
               Choice("skip", (0, 1, 2), "folios of each LRU passed over"),
               Choice("nr", (1, 2, 32), "folios isolated per LRU (32: SWAP_CLUSTER_MAX, the "
                      "whole LRU of a small world)"), context="kthread",
               doc="reclaim (kswapd): isolate folios, shrink_folio_list, put back",
               writes=("pte.map:anon", "pte.map:file", "pte.young", "tlb.deferred",
                       "folio.mapcount:anon", "folio.mapcount:file", "folio.refcount",
                       "PG_anon_exclusive", "folio.dirty:anon", "folio.dirty:file",
                       "folio.writeback", "folio.lru", "pagecache", "swap"),
               reads=("i_mmap", "pte.dirty:anon", "pte.dirty:file", "pte.young",
                      "folio.mapcount:anon", "folio.mapcount:file", "folio.refcount", "gup.pin",
                      "PG_anon_exclusive", "folio.dirty:anon", "folio.dirty:file",
                      "folio.writeback", "folio.lru", "swap"))
    def reclaim(self, t: Task, lru: int, skip: int, nr: int):
        """mm/vmscan.c shrink_lruvec -> shrink_list -> shrink_inactive_list (as kswapd or
        direct reclaim run it) on the anon LRU then the file LRU (for_each_evictable_lru
        order), or on one of them."""
        for file_lru in ((False, True) if lru == 2 else (bool(lru),)):
            yield from self.shrink_inactive_list(t, file_lru, skip, nr)

    def shrink_inactive_list(self, t: Task, file_lru: bool, skip: int, nr: int):
        """mm/vmscan.c shrink_inactive_list: isolate_lru_folios, shrink_folio_list,
        move_folios_to_lru (the kept folios lose the isolation reference)."""
        m = self.m
        lru = [f for f in m.frames if isinstance(f, Folio) and not f.isolated
               and (f.anon or f.mapping is not None or f.swapcache)
               and (not f.anon or f.lazyfree) == file_lru]
        lru.sort(key=lambda f: f.uid)
        folios = lru[skip:skip + nr]
        which = "file" if file_lru else "anon"
        for folio in folios:  # folio_try_get + folio_test_clear_lru
            folio.refcount += 1
            folio.isolated = True
        yield (f"isolate_lru_folios({which}): {', '.join('pfn %d' % f.pfn for f in folios)}"
               if folios else f"isolate_lru_folios({which}): nothing to isolate")
        kept = yield from self.shrink_folio_list(t, folios)
        for folio in kept:  # move_folios_to_lru: folio_set_lru, folio_put
            folio.isolated = False
            self.folio_put_now(folio)
        yield f"move_folios_to_lru({which}): put back {len(kept)}"

    def shrink_folio_list(self, t: Task, folios: list):
        """mm/vmscan.c shrink_folio_list: each folio is locked (trylock, else kept), checked for
        references, given swap (add_to_swap) if it is swap-backed anon, unmapped with
        TTU_BATCH_FLUSH, written out if dirty (try_to_unmap_flush_dirty first: "Flush the TLB
        if a writable entry potentially exists to avoid CPU writes after I/O starts"), then
        freed: a lazyfree folio by folio_ref_freeze(1), others by __remove_mapping. After the
        list: try_to_unmap_flush, then free_unref_folios ("flush before free"). Returns the
        folios kept (still isolated, unlocked)."""
        kept = []
        free = []
        for folio in folios:
            ok = yield from self.shrink_one_folio(t, folio)
            (free if ok else kept).append(folio)
        yield from self.try_to_unmap_flush(t)
        for folio in free:  # free_unref_folios
            assert folio.refcount == 0, f"pfn {folio.pfn} freed with refcount {folio.refcount}"
            self.m.free_folio(folio)
        yield f"shrink_folio_list: try_to_unmap_flush, free_unref_folios ({len(free)} freed)"
        return kept

    def shrink_one_folio(self, t: Task, folio: Folio):
        """One turn of shrink_folio_list's loop. Returns True if the folio is to be freed (its
        references frozen at 0, unlocked), False to keep it (unlocked)."""
        if folio.locked is not None:
            yield f"shrink_folio_list: folio_trylock(pfn {folio.pfn}) failed: keep"
            return False
        folio.locked = t.tid
        t.locks += 1
        yield f"shrink_folio_list: folio_trylock(pfn {folio.pfn})"
        if folio.writeback:
            return (yield from self.keep_locked(t, folio, "under writeback"))
        references = yield from self.folio_check_references(t, folio)
        if references == FOLIOREF_ACTIVATE:
            return (yield from self.activate_locked(t, folio, "referenced"))
        if references == FOLIOREF_KEEP:
            return (yield from self.keep_locked(t, folio, "referenced once"))
        # "Anonymous process memory has backing store? Try to allocate it some swap space
        # here. Lazyfree folio could be freed directly"
        if folio.anon and not folio.lazyfree and not folio.swapcache:
            if self.folio_maybe_dma_pinned(folio):
                return (yield from self.keep_locked(t, folio, "maybe DMA-pinned"))
            if not (yield from self.add_to_swap(t, folio)):
                return (yield from self.activate_locked(t, folio, "no swap"))
        if folio.mapcount:
            yield from self.try_to_unmap(t, folio, TTU_BATCH_FLUSH)
            if folio.mapcount:
                return (yield from self.activate_locked(t, folio, "still mapped"))
        # "Folio is unmapped now so it cannot be newly pinned anymore."
        if self.folio_maybe_dma_pinned(folio):
            return (yield from self.activate_locked(t, folio, "maybe DMA-pinned"))
        if folio.dirty:
            if not folio.anon or folio.lazyfree:  # folio_is_file_lru
                return (yield from self.activate_locked(t, folio, "dirty file folio: folio_set_reclaim"))
            if references == FOLIOREF_RECLAIM_CLEAN:
                return (yield from self.keep_locked(t, folio, "RECLAIM_CLEAN but dirty"))
            yield from self.try_to_unmap_flush_dirty(t)
            res = yield from self.pageout(t, folio)
            if res == PAGE_KEEP:
                return (yield from self.keep_locked(t, folio, "pageout: PAGE_KEEP"))
            if res == PAGE_ACTIVATE:
                return (yield from self.activate_locked(t, folio, "pageout: PAGE_ACTIVATE"))
            if res == PAGE_SUCCESS:
                if folio.writeback or folio.dirty:
                    yield f"shrink_folio_list: pfn {folio.pfn} {'writeback' if folio.writeback else 'redirtied'} after pageout: keep"
                    return False
                if folio.locked is not None:
                    yield f"shrink_folio_list: folio_trylock(pfn {folio.pfn}) after pageout failed: keep"
                    return False
                folio.locked = t.tid
                t.locks += 1
                yield f"shrink_folio_list: folio_trylock(pfn {folio.pfn}) after pageout"
                if folio.dirty or folio.writeback:
                    return (yield from self.keep_locked(t, folio, "dirty or writeback again"))
        if folio.anon and folio.lazyfree:
            # "follow __remove_mapping for reference": folio_ref_freeze(folio, 1)
            if folio.refcount != 1:
                return (yield from self.keep_locked(t, folio, f"lazyfree: folio_ref_freeze(1) failed (refcount {folio.refcount})"))
            folio.refcount = 0
            self.folio_unlock_now(t, folio)
            yield f"shrink_folio_list: lazyfree pfn {folio.pfn}: folio_ref_freeze(1), folio_unlock: PGLAZYFREED"
            return True
        ok = yield from self.remove_mapping_reclaim(t, folio)
        if not ok:
            return (yield from self.keep_locked(t, folio, "__remove_mapping failed"))
        assert folio.refcount == 0, "__remove_mapping leaves the references frozen at 0"
        self.folio_unlock_now(t, folio)
        yield f"shrink_folio_list: folio_unlock(pfn {folio.pfn}): free_it"
        return True

    def folio_check_references(self, t: Task, folio: Folio):
        """mm/vmscan.c folio_check_references: folio_referenced, folio_test_clear_referenced.
        Contended -> KEEP. Young PTEs: folio_set_referenced ("All mapped folios start out with
        page table references from the instantiating fault, so we need to look twice if a
        mapped file/anon folio is used more than once"); ACTIVATE if it was already
        referenced or more than one PTE was young, else KEEP. Otherwise RECLAIM_CLEAN for a
        referenced file-LRU folio, RECLAIM."""
        referenced_ptes = yield from self.folio_referenced(t, folio)
        referenced_folio = folio.referenced
        folio.referenced = False
        if referenced_ptes == -1:
            return FOLIOREF_KEEP
        if referenced_ptes:
            folio.referenced = True
            if referenced_folio or referenced_ptes > 1:
                return FOLIOREF_ACTIVATE
            return FOLIOREF_KEEP
        if referenced_folio and (not folio.anon or folio.lazyfree):
            return FOLIOREF_RECLAIM_CLEAN
        return FOLIOREF_RECLAIM

    def keep_locked(self, t: Task, folio: Folio, why: str):
        """shrink_folio_list's keep_locked: folio_unlock; the folio goes back to the LRU."""
        self.folio_unlock_now(t, folio)
        yield f"shrink_folio_list: pfn {folio.pfn} {why}: keep_locked, folio_unlock"
        return False

    def activate_locked(self, t: Task, folio: Folio, why: str):
        """shrink_folio_list's activate_locked: "Not a candidate for swapping, so reclaim swap
        space" when swap is more than half full (mem_cgroup_swap_full -> vm_swap_full):
        folio_free_swap; folio_set_active (not modelled); then keep_locked."""
        if folio.swapcache and self.vm_swap_full():
            yield from self.folio_free_swap(t, folio)
        return (yield from self.keep_locked(t, folio, f"{why}: activate"))

    def vm_swap_full(self) -> bool:
        """include/linux/swap.h vm_swap_full: "Swap 50% full? Release swapcache more
        aggressively": nr_swap_pages * 2 < total_swap_pages."""
        sm = self.m.swap.swap_map
        free = sum(1 for v in sm[1:] if v == 0)
        return free * 2 < len(sm) - 1

    def pageout(self, t: Task, folio: Folio):
        """mm/vmscan.c pageout for a swap-cache folio (file folios never get here): keep unless
        is_page_cache_freeable ("referenced only by the caller that isolated the folio, the
        page cache ..."; here the swap cache), then folio_clear_dirty_for_io and
        swap_writepage (which unlocks). PAGE_CLEAN if it was not dirty after all."""
        if folio.refcount != 2:
            yield f"pageout(pfn {folio.pfn}): is_page_cache_freeable = 0 (refcount {folio.refcount})"
            return PAGE_KEEP
        was = yield from self.folio_clear_dirty_for_io(t, folio)
        if not was:
            return PAGE_CLEAN
        yield from self.swap_writepage(t, folio)
        return PAGE_SUCCESS

    def remove_mapping_reclaim(self, t: Task, folio: Folio):
        """mm/vmscan.c __remove_mapping(mapping, folio, reclaimed=true) (folio locked):
        folio_ref_freeze(folio, 1 + nr_pages) (the isolation and the cache's references), then
        "Must be careful with the order of the tests" -- PG_dirty is tested only after the
        freeze; swap cache: __delete_from_swap_cache, put_swap_folio; page cache:
        __filemap_remove_folio (filemap.remove_mapping_frozen). Either way the references stay
        frozen at 0 until free_it frees the folio (reclaimed=true: nothing unfreezes them), so
        a GUP-fast that read the PTE before try_to_unmap cleared it cannot take the folio
        (folio_ref_try_add fails on 0). No mapping -> fail."""
        if folio.swapcache:
            if folio.refcount != 2:
                yield f"__remove_mapping(pfn {folio.pfn}): folio_ref_freeze failed (refcount {folio.refcount})"
                return False
            if folio.dirty:
                yield f"__remove_mapping(pfn {folio.pfn}): dirty after freeze, unfreeze"
                return False
            offset = folio.swap
            self.swap_cache_del_folio(folio)
            self.put_swap_folio(folio, offset)
            folio.refcount = 0
            yield f"__remove_mapping: __delete_from_swap_cache(slot {offset}) pfn {folio.pfn}, put_swap_folio"
            return True
        if folio.mapping is None:
            return False
        return (yield from self.remove_mapping_frozen(t, folio))
