"""mremap(MREMAP_MAYMOVE | MREMAP_FIXED): mm/mremap.c do_mremap -> mremap_to -> move_vma ->
copy_vma_and_data (mm/vma.c copy_vma, move_page_tables, move_ptes) -> unmap_source_vma.

mremap does not follow "unhook page, flush, free": it moves a PTE from one page-table slot to
another, and the page stays alive because the new PTE maps it. eb66ae030829 ("mremap:
properly flush TLB before releasing the page"): "we need to flush the TLB not just before
releasing the lock for the source location ... but also before we release the destination
page table lock (to avoid the TLB being flushed after somebody else has already done
something to that page)", so move_ptes flushes the old range under both PTLs whenever it
moved a present PTE.

Only MAP_SHARED file VMAs move here: an anon folio's rmap index is its address in the model
(vm_pgoff of anonymous VMAs is not modelled), so anonymous and COWed pages cannot follow a
move; the call refuses them with -EINVAL, labelled as not modelled. Left out as well:
resizing (old_len == new_len), MREMAP_DONTUNMAP, VMA merging in copy_vma, the PMD- and
PUD-level moves (move_normal_pmd, which needs PMD-aligned ranges, and try_realign_addr),
accounting, mlock, uffd, and KSM's break (ksm_madvise UNMERGEABLE, a no-op on file VMAs).
"""

from __future__ import annotations

from ..model import Vma
from ..ops import MremapRange, operation
from .base import KernelBase, Task


class Mremap(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mremap_to -> do_munmap of the destination (as munmap); copy_vma -> vma_link (vma,
    # i_mmap); move_page_tables -> pte_alloc (pgtable), move_ptes (pte.map:file, the
    # soft-dirty bit, flush_tlb_batched_pending); unmap_source_vma -> do_vmi_munmap (vma,
    # i_mmap, pgtable)
    # half the default swarm share, as fork and exit: it takes pages away from (or moves them
    # out from under) the races the other operations build, and a share of its own would
    # dilute those more than its own races need it
    @operation("mremap", MremapRange(), swarm=0.35,
               doc="mremap(MREMAP_MAYMOVE | MREMAP_FIXED): move a shared file range to another address",
               writes=("vma", "i_mmap", "pgtable", "pte.map:anon", "pte.map:file",
                       "pte.soft_dirty", "folio.mapcount:anon", "folio.mapcount:file",
                       "folio.dirty:file", "folio.lru", "folio.refcount", "swap",
                       "tlb.deferred"),
               reads=("vma", "pte.dirty:file", "pte.young", "swap", "tlb.deferred"))
    def mremap(self, t: Task, start: int, npages: int, new_start: int):
        """mm/mremap.c SYSCALL_DEFINE5(mremap) -> do_mremap: mmap_write_lock; vma_lookup
        (-EFAULT if nothing is mapped at the address); mremap_to: -EINVAL if the ranges
        overlap, do_munmap of the destination (mmap_lock kept for write), vma_lookup again,
        remap_is_valid (-EFAULT if the range runs past the VMA's end), vrm_set_new_addr
        (MAP_FIXED: the address given), move_vma; mmap_write_unlock. Returns the new
        address."""
        mm = t.mm
        end, new_end = start + npages, new_start + npages
        yield from self.down_write(t, mm.mmap_lock,
                                   f"mremap({start:#x}+{npages} -> {new_start:#x}): mmap_write_lock")
        err = None
        vma = mm.find_vma(start)
        if vma is None:
            err = "EFAULT"
        elif end > new_start and new_end > start:   # vrm_overlaps
            err = "EINVAL"
        if err is None:
            yield from self.do_vmi_munmap(t, new_start, new_end, unlock=False)
            vma = mm.find_vma(start)
            if vma is None or end > vma.end:        # remap_is_valid
                err = "EFAULT"
            elif vma.file is None or not vma.shared:
                err = "EINVAL (not modelled: only shared file VMAs move)"
        if err is not None:
            t.result = err.split()[0]
            yield from self.up_write(t, mm.mmap_lock, f"mremap: -{err}, mmap_write_unlock",
                                     last=True)
            return
        yield from self.move_vma(t, vma, start, npages, new_start)
        t.result = new_start
        yield from self.up_write(t, mm.mmap_lock,
                                 f"mremap: moved to {new_start:#x}, mmap_write_unlock", last=True)

    def move_vma(self, t: Task, vma: Vma, start: int, npages: int, new_start: int):
        """mm/mremap.c move_vma: vma_start_write ("We don't want racing faults"),
        copy_vma_and_data (copy_vma at the new address with the same file offset, then
        move_page_tables), then unmap_source_vma (do_vmi_munmap of the old range, lock kept)."""
        yield from self.vma_start_write(t, vma, f"move_vma: vma_start_write(vma{vma.vid})")
        new_vma = yield from self.copy_vma(t, vma, new_start, npages,
                                           vma.pgoff + start - vma.start)
        yield from self.move_page_tables(t, vma, new_vma, start, new_start, npages)
        yield from self.do_vmi_munmap(t, start, start + npages, unlock=False)

    def copy_vma(self, t: Task, vma: Vma, addr: int, npages: int, pgoff: int):
        """mm/vma.c copy_vma, the unmerged case: vm_area_dup, vma_set_range(addr, addr + len,
        pgoff), vma_link (the new VMA write-locked, into the tree and into the file's i_mmap
        under i_mmap_rwsem, after the old VMA: "new_vma is often known to be placed after vma
        in rmap traversal order", so need_rmap_locks is false and move_ptes takes no rmap
        lock)."""
        m = self.m
        mm = t.mm
        new = Vma(m.next_vid, mm.mm_id, addr, addr + npages, vma.file, pgoff, vma.shared,
                  vma.writable)
        m.next_vid += 1
        new.softdirty = vma.softdirty
        new.vm_lock_seq = mm.mm_lock_seq   # vma_start_write(new) in vma_link: not yet visible
        f = m.files[vma.file]
        yield from self.down_write(t, f.i_mmap_rwsem, f"vma_link: i_mmap_lock_write(file{f.file_id})")
        f.i_mmap.append(new)
        mm.vmas.append(new)
        mm.vmas.sort(key=lambda v: v.start)
        yield from self.up_write(t, f.i_mmap_rwsem, f"copy_vma: {new.describe()} linked, unlock")
        return new

    def move_extents(self, old_addr: int, new_addr: int, length: int):
        """mm/mremap.c move_page_tables' loop over get_extent(NORMAL_PMD): (old, new, extent)
        per piece, each ending at the next PMD boundary of either address."""
        p = self.m.ptrs_per_pte
        old_end = old_addr + length
        while old_addr < old_end:
            extent = min((old_addr // p + 1) * p, old_end) - old_addr
            extent = min(extent, (new_addr // p + 1) * p - new_addr)
            yield old_addr, new_addr, extent
            old_addr += extent
            new_addr += extent

    def move_page_tables(self, t: Task, vma: Vma, new_vma: Vma, old_addr: int, new_addr: int,
                         length: int):
        """mm/mremap.c move_page_tables: per extent, skip an old range with no PTE table
        (get_old_pmd), pte_alloc the new one, move_ptes."""
        mm = t.mm
        p = self.m.ptrs_per_pte
        for old, new, extent in self.move_extents(old_addr, new_addr, length):
            if mm.pmd[old // p] is not None:
                yield from self.pte_alloc(t, new, mm)
                yield from self.move_ptes(t, vma, new_vma, old, new, extent)

    def move_ptes(self, t: Task, vma: Vma, new_vma: Vma, old_addr: int, new_addr: int,
                  extent: int):
        """mm/mremap.c move_ptes: the old PTL, then the new one if it is another table;
        flush_tlb_batched_pending; each PTE get_and_clear_full_ptes'd from the old slot,
        made soft-dirty (move_soft_dirty_pte) and set at the new one; "If we are remapping a
        valid PTE, make sure to flush TLB before we drop the PTL for the PTE": with a present
        PTE moved, flush_tlb_range of the old range before either PTL is dropped."""
        m = self.m
        mm = t.mm
        p = m.ptrs_per_pte
        old = yield from self.pte_offset_map_lock(t, mm, old_addr, "move_ptes")
        if old is None:
            return
        new = mm.pmd[new_addr // p]
        if new is not old:
            yield from self.spin_lock(t, new.ptl, f"move_ptes: spin_lock_nested({new.ptl.name})")
        yield from self.flush_tlb_batched_pending(t, mm)
        force_flush = yield from self.move_pte_slots(t, mm, old, new, old_addr, new_addr, extent)
        if force_flush:
            yield from self.flush_tlb_mm_range(t, mm, old_addr, old_addr + extent, False, False)
        if new is not old:
            yield from self.spin_unlock(t, new.ptl, f"move_ptes: spin_unlock({new.ptl.name})")
        yield from self.spin_unlock(t, old.ptl, "move_ptes: pte_unmap_unlock")

    def move_pte_slots(self, t: Task, mm, old, new, old_addr: int, new_addr: int, extent: int,
                       dirty_only: bool = False):
        """move_ptes' loop, one step per PTE moved. Returns force_flush: a present PTE was
        moved (``dirty_only``: a present, dirty one, as before eb66ae030829)."""
        m = self.m
        p = m.ptrs_per_pte
        force_flush = False
        for i in range(extent):
            src, dst = (old_addr + i) % p, (new_addr + i) % p
            pte = old.ptes[src]
            if pte is None:
                continue
            if pte.present and (pte.dirty or not dirty_only):
                force_flush = True
            old.ptes[src] = None    # get_and_clear_full_ptes: D as the hardware left it
            m.revoke(mm.mm_id, old_addr + i)
            moved = pte._replace(soft_dirty=True) if pte.present else pte
            new.ptes[dst] = moved
            yield (f"move_ptes: va {old_addr + i:#x} -> {new_addr + i:#x} pfn "
                   f"{getattr(pte, 'pfn', None)}{' dirty' if pte.present and pte.dirty else ''}")
        return force_flush

