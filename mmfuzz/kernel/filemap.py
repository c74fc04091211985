"""Page cache: mm/filemap.c (filemap_fault, filemap_page_mkwrite), mm/truncate.c
(mapping_evict_folio) and mm/vmscan.c (__remove_mapping).

The filesystem is a generic block filesystem whose ->page_mkwrite is filemap_page_mkwrite,
so shared writable mappings are write-notify: read faults install read-only PTEs and the
first store takes a write-protect fault. Left out: readahead, i_size checks,
private data (buffer heads), shadow entries (the swap cache is mmfuzz/kernel/swap.py).
"""

from __future__ import annotations

from ..model import Folio, Vma
from ..ops import FilePage, operation
from .base import KernelBase, Last, Task, Wait


class Filemap(KernelBase):
    def filemap_fault(self, t: Task, vma: Vma, index: int):
        """mm/filemap.c filemap_fault: look the folio up locklessly (folio_try_get); on a miss
        allocate one, add it to the page cache locked and read it from disk; lock the folio and
        re-check folio->mapping (truncated -> retry). Returns the folio locked with one ref."""
        m = self.m
        f = m.files[vma.file]
        while True:
            folio = f.cache.get(index)
            if folio is None:
                # "See comment in filemap_create_folio() why we need invalidate_lock":
                # filemap_invalidate_lock_shared before the folio is created, dropped once it
                # is read. Taken within the step that adds the folio: the lock's only writer
                # (hole punching) is excluded just the same, and readers do not exclude
                # each other, so no interleaving is lost by not yielding in between.
                inv = f.invalidate_lock
                if inv.writer is not None:
                    yield Wait(lambda: inv.writer is None, f"sleeps on {inv.name} (read)")
                    continue   # the punch may have changed the cache: look again
                inv.readers.append(t.tid)
                folio = m.alloc_folio()  # the allocation reference becomes the fault's ref
                folio.mapping = f.file_id
                folio.index = index
                folio.locked = t.tid
                t.locks += 1
                folio.uptodate = False
                folio.refcount += 1  # the page cache's reference
                f.cache[index] = folio
                yield f"filemap_fault: filemap_add_folio(file{f.file_id}[{index}]) pfn {folio.pfn}, locked"
                folio.data = f.disk[index]
                folio.uptodate = True
                inv.readers.remove(t.tid)   # filemap_invalidate_unlock_shared
                yield f"filemap_read_folio: pfn {folio.pfn} <- disk v{folio.data}"
                return folio
            folio.refcount += 1
            yield f"filemap_fault: filemap_get_folio(file{f.file_id}[{index}]) pfn {folio.pfn}, folio_try_get"
            yield from self.folio_lock(t, folio, f"filemap_fault: folio_lock(pfn {folio.pfn})")
            if folio.mapping == f.file_id and f.cache.get(index) is folio:
                return folio
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            yield f"filemap_fault: pfn {folio.pfn} truncated, retry"

    def filemap_page_mkwrite(self, t: Task, vma: Vma, folio: Folio):
        """mm/filemap.c filemap_page_mkwrite: folio_lock; a truncated folio -> NOPAGE;
        folio_mark_dirty "so that when freeze is in progress, we are guaranteed that writeback
        during freezing will see the dirty folio and writeprotect it again"; folio_wait_stable
        (a no-op without stable pages). Returns True with the folio locked."""
        yield from self.folio_lock(t, folio, f"filemap_page_mkwrite: folio_lock(pfn {folio.pfn})")
        if folio.mapping != vma.file:
            self.folio_unlock_now(t, folio)
            yield f"filemap_page_mkwrite: pfn {folio.pfn} truncated, unlock, NOPAGE"
            return False
        self.folio_mark_dirty_now(folio)
        yield f"filemap_page_mkwrite: folio_mark_dirty(pfn {folio.pfn})"
        return True

    def mapping_evict_folio(self, t: Task, folio: Folio):
        """mm/truncate.c mapping_evict_folio (folio locked): refuse a dirty or writeback folio,
        or one whose refcount is elevated ("elevated if any page in the folio is mapped"; a
        lockless, advisory test); then remove_mapping -> __remove_mapping."""
        if folio.mapping is None or folio.dirty or folio.writeback:
            return False
        if folio.refcount > 1 + 1:  # nr_pages + has_private (0) + the caller's reference
            return False
        return (yield from self.remove_mapping(t, folio))

    def remove_mapping(self, t: Task, folio: Folio):
        """mm/vmscan.c remove_mapping: __remove_mapping(mapping, folio, false, NULL), then
        "Unfreezing the refcount with 1 effectively drops the pagecache ref for us"
        (folio_ref_unfreeze(folio, 1)), when the caller runs on."""
        ok = yield from self.remove_mapping_frozen(t, folio)
        if ok:
            folio.refcount = 1   # folio_ref_unfreeze
        return ok

    def remove_mapping_frozen(self, t: Task, folio: Folio):
        """mm/vmscan.c __remove_mapping for a page-cache folio (the kernel name, which Python
        would mangle): under i_lock and the i_pages lock, folio_ref_freeze(folio, 1 +
        nr_pages); only after the freeze re-test PG_dirty (a GUP user may have dirtied it and
        dropped its reference); then __filemap_remove_folio. The references stay frozen at 0
        (a lockless folio_try_get, GUP-fast's, fails): reclaim frees the folio from there
        (free_it), remove_mapping unfreezes to the caller's one."""
        f = self.m.files[folio.mapping]
        if folio.refcount != 2:
            yield f"__remove_mapping(pfn {folio.pfn}): folio_ref_freeze failed (refcount {folio.refcount})"
            return False
        if folio.dirty:
            yield f"__remove_mapping(pfn {folio.pfn}): dirty after freeze, unfreeze"
            return False
        del f.cache[folio.index]
        folio.mapping = None
        folio.refcount = 0
        yield f"__remove_mapping: __filemap_remove_folio(file{f.file_id}[{folio.index}]) pfn {folio.pfn}"
        return True

    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/truncate.c mapping_try_invalidate: find_lock_entries (pagecache, a reference);
    # mapping_evict_folio: folio_test_dirty / folio_test_writeback, folio_ref_count >
    # nr + private + 1; mm/vmscan.c __remove_mapping: folio_ref_freeze, __filemap_remove_folio;
    # a folio kept goes to deactivate_file_folio (the model leaves that LRU move out)
    @operation("drop_cache", FilePage(), context="kthread",
               doc="fadvise(DONTNEED)-style eviction of one clean page-cache folio",
               writes=("folio.refcount", "folio.lru", "pagecache"),
               reads=("folio.refcount", "folio.dirty:file", "folio.writeback", "pagecache"))
    def drop_cache(self, t: Task, file_id: int, index: int):
        """An fadvise(POSIX_FADV_DONTNEED)-style eviction of one clean page-cache folio
        (mm/fadvise.c -> mapping_try_invalidate -> mapping_evict_folio): lookup with
        folio_try_get, folio_trylock, mapping_evict_folio, unlock, put."""
        m = self.m
        f = m.files[file_id]
        folio = f.cache.get(index)
        if folio is None:
            yield Last(f"drop_cache: file{file_id}[{index}] not cached")
            return
        folio.refcount += 1
        yield f"mapping_try_invalidate: find_lock_entries file{file_id}[{index}] pfn {folio.pfn}, folio_try_get"
        if folio.locked is not None:
            self.folio_put_now(folio)
            yield Last(f"mapping_try_invalidate: folio_trylock(pfn {folio.pfn}) failed, put")
            return
        folio.locked = t.tid
        t.locks += 1
        yield f"mapping_try_invalidate: folio_trylock(pfn {folio.pfn})"
        evicted = yield from self.mapping_evict_folio(t, folio)
        self.folio_unlock_now(t, folio)
        self.folio_put_now(folio)
        state = "freed" if folio.freed else f"refcount {folio.refcount}"
        yield Last(f"mapping_try_invalidate: {'evicted' if evicted else 'kept'}, folio_unlock + "
                   f"folio_put(pfn {folio.pfn}) -> {state}")
