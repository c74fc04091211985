"""Writeback: mm/page-writeback.c (writeback_iter, folio_prepare_writeback,
folio_clear_dirty_for_io) and mm/filemap.c (folio_end_writeback).

The device write is one step that snapshots the folio (the device reads memory at some
point between folio_start_writeback and completion). Left out: TOWRITE tagging, cyclic
writeback_index, nr_to_write, I/O errors, stable pages, bdi/wb accounting.
"""

from __future__ import annotations

from ..ops import FileId, operation
from .base import KernelBase, Task, Wait


class PageWriteback(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/page-writeback.c writeback_iter: filemap_get_folios_tag (pagecache, folio_try_get),
    # folio_prepare_writeback (PG_dirty, folio_wait_writeback), folio_clear_dirty_for_io ->
    # mm/rmap.c folio_mkclean: folio_mapped, rmap_walk_file (i_mmap), page_vma_mkclean_one
    # (pte_dirty/pte_write -> wrprotect + mkclean); folio_start/end_writeback; the device reads
    # the folio
    @operation("writeback", FileId(), context="kthread",
               doc="fsync-style writeback of every dirty page-cache folio of a file (WB_SYNC_ALL)",
               writes=("pte.write:file", "pte.dirty:file", "folio.dirty:file",
                       "folio.writeback", "folio.refcount"),
               reads=("i_mmap", "pte.write:file", "pte.dirty:file", "folio.mapcount:file",
                      "folio.dirty:file", "folio.writeback", "pagecache", "folio.data"))
    def writeback(self, t: Task, file_id: int):
        """mm/filemap.c filemap_fdatawrite_wbc -> mm/page-writeback.c do_writepages (from
        fsync/msync/sync_file_range) ->
        ->writepages looping writeback_iter (WB_SYNC_ALL): for each folio tagged dirty, in
        index order: filemap_get_folios_tag (folio_try_get), folio_lock, folio_prepare_writeback
        (mapping and PG_dirty checks, wait for PG_writeback, folio_clear_dirty_for_io),
        folio_start_writeback, folio_unlock, the device reads the folio, folio_end_writeback,
        folio_batch_release."""
        m = self.m
        f = m.files[file_id]
        indices = sorted(i for i, fo in f.cache.items() if fo.dirty)
        yield f"writeback_iter: file{file_id} dirty indices {indices}"
        for index in indices:
            folio = f.cache.get(index)
            if folio is None:
                continue
            folio.refcount += 1
            yield f"filemap_get_folios_tag: file{file_id}[{index}] pfn {folio.pfn}, folio_try_get"
            yield from self.folio_lock(t, folio, f"writeback_get_folio: folio_lock(pfn {folio.pfn})")
            ok = yield from self.folio_prepare_writeback(t, file_id, folio)
            if not ok:
                self.folio_unlock_now(t, folio)
                self.folio_put_now(folio)
                yield f"writeback_get_folio: skip pfn {folio.pfn}, folio_unlock + put"
                continue
            folio.writeback = True
            yield f"folio_start_writeback(pfn {folio.pfn})"
            self.folio_unlock_now(t, folio)
            yield f"writepages: I/O submitted, folio_unlock(pfn {folio.pfn})"
            f.disk[index] = folio.data
            folio.wb_pending = False
            yield f"device writes file{file_id}[{index}] <- pfn {folio.pfn} v{folio.data}"
            folio.writeback = False
            yield f"folio_end_writeback(pfn {folio.pfn})"
            self.folio_put_now(folio)
            state = "freed" if folio.freed else f"refcount {folio.refcount}"
            yield f"folio_batch_release: folio_put(pfn {folio.pfn}) -> {state}"

    def folio_prepare_writeback(self, t: Task, file_id: int, folio):
        """mm/page-writeback.c folio_prepare_writeback (folio locked): skip a truncated or clean
        folio; WB_SYNC_ALL waits for PG_writeback; then folio_clear_dirty_for_io."""
        if folio.mapping != file_id or not folio.dirty:
            return False
        if folio.writeback:
            yield from self.folio_wait_writeback(t, folio)
        return (yield from self.folio_clear_dirty_for_io(t, folio))

    def folio_wait_writeback(self, t: Task, folio):
        """mm/page-writeback.c folio_wait_writeback: sleep until PG_writeback is clear."""
        if folio.writeback:
            yield Wait(lambda: not folio.writeback, f"sleeps on PG_writeback of pfn {folio.pfn}")
        yield f"folio_wait_writeback(pfn {folio.pfn}) done"

    def folio_clear_dirty_for_io(self, t: Task, folio):
        """mm/page-writeback.c folio_clear_dirty_for_io (folio locked): "if (folio_mkclean(folio))
        folio_mark_dirty(folio)" folds dirty or writable PTEs into PG_dirty, then
        folio_test_clear_dirty. Faults are excluded by the folio lock."""
        assert folio.locked == t.tid
        cleaned = yield from self.folio_mkclean(t, folio)
        if cleaned:
            self.folio_mark_dirty_now(folio)
            yield f"folio_clear_dirty_for_io: folio_mkclean cleaned {cleaned}, folio_mark_dirty(pfn {folio.pfn})"
        was = folio.dirty
        folio.dirty = False
        # From here the writeback owns the data until the device has read it (wb_pending):
        # the folio is locked, and "the incoherency ... only exists while the folio is locked".
        folio.wb_pending = was
        yield f"folio_clear_dirty_for_io: folio_test_clear_dirty(pfn {folio.pfn}) = {int(was)}"
        return was
