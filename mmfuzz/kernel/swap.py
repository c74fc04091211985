"""Swap: the swap device and the swap cache. mm/swapfile.c (swap_map counts), mm/swap_state.c
(the swap cache, add_to_swap, swap-in), mm/page_io.c (swap_writepage, swap_read_folio).

The state is model.SwapInfo (Machine.swap, documented there): one device of
world["swap_slots"] slots (default 4, slot 0 the header), swap_map counts with
SWAP_HAS_CACHE, the device's data per slot, the swap cache as offset -> folio holding one
reference. Left out: swap clusters and the per-CPU slot cache (a slot is the lowest free
one), readahead, zswap, the swap cgroup, SWP_SYNCHRONOUS_IO's swap-cache bypass in
do_swap_page, SWP_STABLE_WRITES, shadow entries, I/O errors, large folios, swapoff.
"""

from __future__ import annotations

from ..model import SWAP_HAS_CACHE, Folio, SwapPte
from .base import KernelBase, Task


class Swap(KernelBase):
    # ------------------------------------------------------------- swap_map ----------
    def folio_alloc_swap(self, folio: Folio) -> int:
        """mm/swapfile.c folio_alloc_swap -> get_swap_pages: a free slot, its swap_map set to
        SWAP_HAS_CACHE (the cache will hold it); 0 when the device is full."""
        sm = self.m.swap.swap_map
        for offset in range(1, len(sm)):
            if sm[offset] == 0:
                sm[offset] = SWAP_HAS_CACHE
                return offset
        return 0

    def swap_duplicate(self, offset: int) -> None:
        """mm/swapfile.c swap_duplicate -> __swap_duplicate(entry, 1): one more swap PTE."""
        sm = self.m.swap.swap_map
        assert sm[offset], f"swap_duplicate of free slot {offset}"
        sm[offset] += 1

    def swap_free(self, offset: int) -> None:
        """mm/swapfile.c swap_free -> __swap_entry_free: one swap PTE fewer; the slot is free
        once no PTE and no cache refer to it."""
        sm = self.m.swap.swap_map
        assert sm[offset] & ~SWAP_HAS_CACHE, f"swap_free of unreferenced slot {offset}"
        sm[offset] -= 1

    def put_swap_folio(self, folio: Folio, offset: int) -> None:
        """mm/swapfile.c put_swap_folio: drop SWAP_HAS_CACHE from the slot."""
        self.m.swap.swap_map[offset] &= ~SWAP_HAS_CACHE

    def folio_swapped(self, folio: Folio) -> bool:
        """mm/swapfile.c folio_swapped -> swap_swapcount: some swap PTE still refers to the
        folio's slot."""
        return bool(self.m.swap.swap_map[folio.swap] & ~SWAP_HAS_CACHE)

    # ----------------------------------------------------------- swap cache ----------
    def add_to_swap_cache(self, folio: Folio, offset: int) -> None:
        """mm/swap_state.c add_to_swap_cache: folio_ref_add(nr), folio_set_swapcache,
        folio->swap = entry, store in the swap cache's xarray."""
        folio.refcount += 1
        folio.swapcache = True
        folio.swap = offset
        self.m.swap.cache[offset] = folio

    def delete_from_swap_cache_now(self, folio: Folio) -> None:
        """mm/swap_state.c delete_from_swap_cache: __delete_from_swap_cache (out of the
        xarray, folio_clear_swapcache), put_swap_folio, folio_ref_sub(nr)."""
        offset = folio.swap
        self.swap_cache_del_folio(folio)
        self.put_swap_folio(folio, offset)
        self.folio_put_now(folio)

    def swap_cache_del_folio(self, folio: Folio) -> None:
        """mm/swap_state.c __delete_from_swap_cache (i_pages lock held; the name of v6.18+, as
        Python would mangle the underscored one): remove the folio from the swap cache,
        folio->swap = 0, folio_clear_swapcache. The cache's reference is the caller's to
        drop."""
        del self.m.swap.cache[folio.swap]
        folio.swapcache = False
        folio.swap = 0

    def add_to_swap(self, t: Task, folio: Folio):
        """mm/swap_state.c add_to_swap (folio locked): folio_alloc_swap, add_to_swap_cache,
        and folio_mark_dirty: "A special case is MADV_FREE page. The page's pte could have
        dirty bit cleared but the folio's SwapBacked flag is still set because clearing the
        dirty bit and SwapBacked flag has no lock protected. For such folio, unmap will not
        set dirty bit for it, so folio reclaim will not write the folio out. This can cause
        data corruption when the folio is swapped in later. Always setting the dirty flag for
        the folio solves the problem." Returns False when no slot is free."""
        assert folio.locked == t.tid
        offset = self.folio_alloc_swap(folio)
        if not offset:
            yield f"add_to_swap(pfn {folio.pfn}): folio_alloc_swap: no free slot"
            return False
        self.add_to_swap_cache(folio, offset)
        self.folio_mark_dirty_now(folio)
        yield f"add_to_swap(pfn {folio.pfn}): slot {offset}, add_to_swap_cache, folio_mark_dirty"
        return True

    def folio_free_swap(self, t: Task, folio: Folio):
        """mm/swapfile.c folio_free_swap (folio locked): free the swap cache and slot of a
        folio nobody swaps in any more: not in the swap cache, under writeback, or still
        referred to by a swap PTE -> False. Else delete_from_swap_cache and folio_set_dirty
        (the folio is now the only copy of the data). One step with its caller's."""
        assert folio.locked == t.tid
        if not folio.swapcache or folio.writeback or self.folio_swapped(folio):
            return False
        self.delete_from_swap_cache_now(folio)
        folio.dirty = True
        return True
        yield  # pragma: no cover  (a generator so that callers can yield from it)

    def free_swap_cache(self, t: Task, folio: Folio):
        """mm/swap_state.c free_swap_cache (from free_pages_and_swap_cache, before the
        gather's folio_put): a swap-cache folio that is no longer mapped is freed from the
        swap cache if folio_trylock succeeds."""
        if folio.swapcache and folio.mapcount == 0 and folio.locked is None:
            folio.locked = t.tid
            t.locks += 1
            freed = yield from self.folio_free_swap(t, folio)
            self.folio_unlock_now(t, folio)
            if freed:
                yield f"free_swap_cache(pfn {folio.pfn}): folio_free_swap"

    def free_swap_and_cache(self, t: Task, pte: SwapPte):
        """mm/swapfile.c free_swap_and_cache_nr (a swap PTE is being zapped, PTL held): drop the
        PTE's swap_map reference; if only the cache still holds the slot, __try_to_reclaim_swap
        (TTRS_UNMAPPED | TTRS_FULL): look the folio up, folio_trylock, and if it is not mapped
        delete it from the swap cache (folio_free_swap's work). One step with the PTE clear."""
        offset = pte.offset
        self.swap_free(offset)
        sw = self.m.swap
        if sw.swap_map[offset] == SWAP_HAS_CACHE:
            folio = sw.cache.get(offset)
            if folio is not None and folio.locked is None and folio.mapcount == 0 \
                    and not folio.writeback:
                folio.refcount += 1  # filemap_get_folio
                folio.locked = t.tid
                t.locks += 1
                self.delete_from_swap_cache_now(folio)
                folio.dirty = True
                self.folio_unlock_now(t, folio)
                self.folio_put_now(folio)
        return
        yield  # pragma: no cover

    # --------------------------------------------------------------- swap I/O ---------
    def swap_writepage(self, t: Task, folio: Folio):
        """mm/page_io.c swap_writepage -> __swap_writepage (from pageout, folio locked and
        cleaned by folio_clear_dirty_for_io): folio_start_writeback, folio_unlock, the device
        writes the slot, end_swap_bio_write -> folio_end_writeback."""
        sw = self.m.swap
        offset = folio.swap
        folio.writeback = True
        self.folio_unlock_now(t, folio)
        yield f"swap_writepage(pfn {folio.pfn}): folio_start_writeback, folio_unlock, submit slot {offset}"
        sw.data[offset] = folio.data
        folio.wb_pending = False
        yield f"swap device writes slot {offset} <- pfn {folio.pfn} v{folio.data}"
        folio.writeback = False
        yield f"end_swap_bio_write: folio_end_writeback(pfn {folio.pfn})"

    def swap_cache_get_folio(self, t: Task, offset: int):
        """mm/swap_state.c swap_cache_get_folio: lockless lookup of the swap cache with
        folio_try_get. Returns the folio with a reference, or None."""
        folio = self.m.swap.cache.get(offset)
        if folio is not None:
            folio.refcount += 1
        yield (f"swap_cache_get_folio(slot {offset}) = "
               f"{'pfn %d, folio_try_get' % folio.pfn if folio is not None else 'none'}")
        return folio

    def read_swap_cache_async(self, t: Task, offset: int):
        """mm/swap_state.c swapin_readahead -> read_swap_cache_async ->
        __read_swap_cache_async (readahead left out): a folio already in the swap cache is
        returned with a reference; a slot nobody refers to any more ("Just skip read ahead
        for unused swap slot") gives None; else a new folio, swapcache_prepare (claims
        SWAP_HAS_CACHE), locked, swap-backed, add_to_swap_cache; then swap_read_folio reads
        the slot, folio_mark_uptodate, folio_unlock. Returns the folio with a reference."""
        m = self.m
        sw = m.swap
        folio = sw.cache.get(offset)
        if folio is not None:
            folio.refcount += 1
            yield f"__read_swap_cache_async(slot {offset}): in the swap cache, pfn {folio.pfn}"
            return folio
        if not sw.swap_map[offset] & ~SWAP_HAS_CACHE:
            yield f"__read_swap_cache_async(slot {offset}): slot no longer used"
            return None
        folio = m.alloc_folio()  # the allocation reference is the caller's
        sw.swap_map[offset] |= SWAP_HAS_CACHE  # swapcache_prepare
        folio.locked = t.tid
        t.locks += 1
        folio.uptodate = False
        self.add_to_swap_cache(folio, offset)
        yield (f"__read_swap_cache_async(slot {offset}): swapcache_prepare, new pfn {folio.pfn} "
               "locked, add_to_swap_cache")
        folio.data = sw.data[offset]
        folio.uptodate = True
        self.folio_unlock_now(t, folio)
        yield f"swap_read_folio: pfn {folio.pfn} <- slot {offset} v{folio.data}, folio_unlock"
        return folio
