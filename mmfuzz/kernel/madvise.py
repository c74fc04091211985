"""madvise(MADV_DONTNEED): mm/madvise.c (v6.12 structure).

v6.12 takes mmap_lock for read (several threads of one mm may zap at once) and runs one
mmu_gather per VMA inside zap_page_range_single. Newer kernels (about 6.16) use the per-VMA
lock and one gather per call; that variant is not modelled yet. Left out: userfaultfd_remove,
VM_LOCKED / VM_PFNMAP rejection, hugetlb.
"""

from __future__ import annotations

from ..ops import VmaRange, operation
from .base import KernelBase, Task


class Madvise(KernelBase):
    @operation("madvise_dontneed", VmaRange(),
               doc="madvise(MADV_DONTNEED): zap a range under mmap_lock for read")
    def madvise_dontneed(self, t: Task, start: int, npages: int):
        """mm/madvise.c do_madvise -> madvise_lock (mmap_read_lock) -> madvise_walk_vmas ->
        madvise_dontneed_free -> madvise_dontneed_single_vma -> zap_page_range_single, per VMA
        overlapping the range; then mmap_read_unlock."""
        mm = t.mm
        end = start + npages
        yield from self.down_read(t, mm.mmap_lock, f"madvise(DONTNEED {start:#x}+{npages}): mmap_read_lock")
        for vma in list(mm.vmas):
            if vma.end <= start or vma.start >= end:
                continue
            yield from self.zap_page_range_single(t, vma, max(start, vma.start), min(end, vma.end))
        yield from self.up_read(t, mm.mmap_lock, "madvise: mmap_read_unlock, return", last=True)
        self.m.events.append(("unmap_returned", t.mm.mm_id, start, end, t.tid, dict(t.observed)))
