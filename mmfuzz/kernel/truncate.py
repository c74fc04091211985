"""Hole punching: fallocate(FALLOC_FL_PUNCH_HOLE) -> mm/truncate.c truncate_pagecache_range
-> mm/memory.c unmap_mapping_range and mm/truncate.c truncate_inode_pages_range.

The filesystem (filemap.py's generic block filesystem) punches as fs/ext4/inode.c
ext4_punch_hole does since the v6.14 rework (no write-out first): filemap_invalidate_lock
("Prevent page faults from reinstantiating pages we have released from page cache"), the page
cache range unmapped and truncated, the blocks freed, filemap_invalidate_unlock. The unmap
goes through every VMA of the file's i_mmap, in every mm, with a zap_page_range_single of
that VMA's mm: its TLB flush covers the addresses that VMA maps the range at, nothing else.

Left out: inode_lock and inode_dio_wait (no direct-I/O path here takes them), partial pages
(the range is whole pages), the journal, and truncate_inode_pages_range's first pass
(find_lock_entries with folio_trylock, skipping locked and writeback folios): every folio goes
through the second pass, which sleeps on the folio lock and waits for writeback.
"""

from __future__ import annotations

from ..model import FileObj, Folio
from ..ops import FileRange, operation
from .base import KernelBase, Last, Task


class Truncate(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/memory.c unmap_mapping_range -> zap_page_range_single per VMA of i_mmap (as zap);
    # mm/truncate.c truncate_inode_folio: unmap_mapping_folio, folio_cancel_dirty,
    # filemap_remove_folio (pagecache, the cache's reference); ext4_ext_remove_space (disk)
    # half the default swarm share, as fork and exit: it takes pages away from (or moves them
    # out from under) the races the other operations build, and a share of its own would
    # dilute those more than its own races need it
    @operation("fallocate_punch_hole", FileRange(), swarm=0.35,
               doc="fallocate(PUNCH_HOLE): unmap a file range everywhere, drop its page cache, free its blocks",
               writes=("pte.map:file", "folio.mapcount:file", "folio.dirty:file",
                       "folio.refcount", "folio.lru", "pagecache", "tlb.deferred"),
               reads=("i_mmap", "pte.dirty:file", "pte.young", "pagecache", "folio.writeback",
                      "folio.refcount", "tlb.deferred"))
    def fallocate_punch_hole(self, t: Task, file_id: int, index: int, npages: int):
        """fs/open.c vfs_fallocate (-EBADF without FMODE_WRITE: a file the process may only
        read) -> fs/ext4/inode.c ext4_punch_hole: filemap_invalidate_lock,
        truncate_pagecache_range of [index, index + npages), ext4_ext_remove_space (the hole
        reads as zeros from then on), filemap_invalidate_unlock."""
        m = self.m
        f = m.files[file_id]
        end = index + npages
        if file_id in m.readonly_files:
            t.result = "EBADF"
            yield Last(f"fallocate: file{file_id} is open read-only, -EBADF")
            return
        yield from self.down_write(t, f.invalidate_lock,
                                   f"ext4_punch_hole: filemap_invalidate_lock(file{file_id})")
        yield from self.truncate_pagecache_range(t, f, index, end)
        for i in range(index, end):
            f.disk[i] = 0
            # the hole is the file's last write there: the disk must read 0 unless a later
            # store lands (the checker's m.expected, as hw.user_access keeps it for stores)
            m.expected[(file_id, i)] = 0
        m.events.append(("punched", file_id, index, end))
        yield f"ext4_ext_remove_space: blocks of file{file_id}[{index}-{end - 1}] freed"
        yield from self.up_write(t, f.invalidate_lock,
                                 f"filemap_invalidate_unlock(file{file_id}), return", last=True)

    def truncate_pagecache_range(self, t: Task, f: FileObj, start: int, end: int):
        """mm/truncate.c truncate_pagecache_range: "unmap_mapping_range is called only once
        (before truncating pagecache), and without "even_cows" flag: hole-punching should not
        remove private COWed pages from the hole", then truncate_inode_pages_range."""
        yield from self.unmap_mapping_pages(t, f, start, end - start, even_cows=False)
        yield from self.truncate_inode_pages_range(t, f, start, end)

    def unmap_mapping_pages(self, t: Task, f: FileObj, first: int, nr: int, even_cows: bool):
        """mm/memory.c unmap_mapping_pages: i_mmap_lock_read, unmap_mapping_range_tree (every
        VMA whose file range overlaps [first, first + nr): unmap_mapping_range_vma ->
        zap_page_range_single of the addresses it maps them at, with the VMA's mm), then
        i_mmap_unlock_read."""
        last = first + nr
        yield from self.down_read(t, f.i_mmap_rwsem,
                                  f"unmap_mapping_pages: i_mmap_lock_read(file{f.file_id})")
        for vma in list(f.i_mmap):
            lo = max(first, vma.pgoff)
            hi = min(last, vma.pgoff + vma.end - vma.start)
            if lo >= hi:
                continue
            addr = vma.start + lo - vma.pgoff
            yield from self.zap_page_range_single(t, vma, addr, addr + hi - lo, even_cows)
        yield from self.up_read(t, f.i_mmap_rwsem,
                                f"unmap_mapping_pages: i_mmap_unlock_read(file{f.file_id})")

    def truncate_inode_pages_range(self, t: Task, f: FileObj, start: int, end: int):
        """mm/truncate.c truncate_inode_pages_range, its second pass: per cached folio,
        find_get_entries (a reference), folio_lock, folio_wait_writeback, truncate_inode_folio,
        folio_unlock, and the reference dropped (folio_batch_release), which frees a folio no
        one else holds."""
        for index in range(start, end):
            folio = f.cache.get(index)
            if folio is None:
                continue
            folio.refcount += 1
            yield (f"truncate_inode_pages_range: find_get_entries file{f.file_id}[{index}] "
                   f"pfn {folio.pfn}")
            yield from self.folio_lock(t, folio,
                                       f"truncate_inode_pages_range: folio_lock(pfn {folio.pfn})")
            yield from self.folio_wait_writeback(t, folio)
            if folio.mapping == f.file_id:
                yield from self.truncate_inode_folio(t, f, folio)
            self.folio_unlock_now(t, folio)
            self.folio_put_now(folio)
            state = "freed" if folio.freed else f"refcount {folio.refcount}"
            yield f"truncate_inode_pages_range: folio_unlock + folio_put(pfn {folio.pfn}) -> {state}"

    def truncate_inode_folio(self, t: Task, f: FileObj, folio: Folio):
        """mm/truncate.c truncate_inode_folio (folio locked, still in this mapping):
        truncate_cleanup_folio (unmap_mapping_folio if folio_mapped: the PTEs a fault
        installed since the range was unmapped; folio_cancel_dirty), then filemap_remove_folio:
        out of the page cache (folio->mapping = NULL) and the cache's reference dropped."""
        m = self.m
        if folio.mapcount:
            yield from self.unmap_mapping_pages(t, f, folio.index, 1, even_cows=False)
        folio.dirty = False
        del f.cache[folio.index]
        folio.mapping = None
        folio.refcount -= 1
        # the punch discards what the folio held (the checker's m.expected; the disk's blocks
        # go next); a pin on it no longer follows the file (an event for the checker)
        m.expected.pop((f.file_id, folio.index), None)
        m.events.append(("truncated", folio.uid, folio.pfn, f.file_id, folio.index))
        yield (f"truncate_inode_folio: folio_cancel_dirty + filemap_remove_folio"
               f"(file{f.file_id}[{folio.index}]) pfn {folio.pfn}")
