"""munmap and mmap: mm/mmap.c __vm_munmap, mm/vma.c do_vmi_munmap / vms_* (v6.12 structure).

munmap: mmap_write_lock, split the edge VMAs, write-lock (vma_start_write) and detach the
VMAs from the tree, downgrade to a read lock (which ends the VMA write locks), then zap, free_pgtables and tlb_finish_mmu under the read lock (other readers of
mmap_lock run concurrently from there), and mmap_read_unlock. mmap here is
MAP_FIXED_NOREPLACE of a range that is free (a MAP_FIXED over an existing mapping would first
unmap it; not modelled). Left out: accounting, mlock, anon_vma reuse by merging neighbours,
mmap_region merging.
"""

from __future__ import annotations

from ..model import Vma
from ..ops import VmaRange, VmaTemplate, operation
from .base import KernelBase, Task


class VmaOps(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/vma.c do_vmi_align_munmap: __split_vma + vma_iter_clear (vma; i_mmap for a file VMA);
    # vms_clear_ptes -> unmap_vmas (as madvise_dontneed's zap_pte_range) and free_pgtables
    # (pgtable; unlink_anon_vmas, unlink_file_vma), tlb_finish_mmu
    @operation("munmap", VmaRange(), doc="munmap: split, detach, downgrade, zap, free_pgtables",
               writes=("vma", "i_mmap", "pgtable", "pte.map:anon", "pte.map:file",
                       "folio.mapcount:anon", "folio.mapcount:file", "folio.dirty:file",
                       "folio.lru", "folio.refcount", "swap", "tlb.deferred"),
               reads=("vma", "pte.dirty:file", "pte.young", "swap", "tlb.deferred"))
    def munmap(self, t: Task, start: int, npages: int):
        """mm/mmap.c __vm_munmap -> do_vmi_munmap -> do_vmi_align_munmap."""
        m = self.m
        mm = t.mm
        end = start + npages
        yield from self.down_write(t, mm.mmap_lock, f"munmap({start:#x}+{npages}): mmap_write_lock")
        if not (yield from self.do_vmi_munmap(t, start, end, unlock=True)):
            yield from self.up_write(t, mm.mmap_lock, "munmap: nothing mapped, mmap_write_unlock", last=True)
            m.events.append(("unmap_returned", mm.mm_id, start, end, t.tid, {}))
            return
        yield from self.up_read(t, mm.mmap_lock, "munmap: remove_vma, mmap_read_unlock, return", last=True)
        m.events.append(("unmap_returned", mm.mm_id, start, end, t.tid, dict(t.observed)))

    def do_vmi_munmap(self, t: Task, start: int, end: int, unlock: bool):
        """mm/vma.c do_vmi_munmap -> do_vmi_align_munmap, mmap_lock held for write: split the
        edge VMAs, write-lock and detach the VMAs in the range; with ``unlock`` downgrade to a
        read lock (vms_complete_munmap_vmas: the caller ends holding it for read), else keep
        the write lock (mremap's unmaps, unlock=false); then zap, free_pgtables and
        tlb_finish_mmu. Returns False if nothing was mapped there."""
        mm = t.mm
        vmas = [v for v in mm.vmas if v.start < end and start < v.end]
        if not vmas:
            return False
        # vms_gather_munmap_vmas: split the edge VMAs (__split_vma, which write-locks the
        # VMA it splits), then vma_start_write and detach each VMA in the range
        for cut in (start, end):
            for vma in list(mm.vmas):
                if vma.start < cut < vma.end:
                    yield from self.vma_start_write(t, vma, f"__split_vma: vma_start_write(vma{vma.vid})")
                    # "__split_vma(vms->vmi, vms->vma, vms->start, 1)" at the start edge,
                    # "__split_vma(vms->vmi, next, vms->end, 0)" at the end: the part kept
                    # is the new VMA, so the VMA that is detached is the original one
                    yield from self.split_vma(t, vma, cut, new_below=cut == start)
        vmas = [v for v in mm.vmas if v.start < end and start < v.end]
        for vma in vmas:
            yield from self.vma_start_write(t, vma, f"vms_gather_munmap_vmas: vma_start_write(vma{vma.vid})")
        for vma in vmas:
            vma.detached = True  # vma_mark_detached
            mm.vmas.remove(vma)
        yield f"vms_gather_munmap_vmas + vma_iter_clear_gfp: detach {', '.join(v.describe() for v in vmas)}"
        if unlock:
            yield from self.downgrade_write(t, mm.mmap_lock, "vms_complete_munmap_vmas: mmap_write_downgrade")
        # vms_clear_ptes
        tlb = yield from self.tlb_gather_mmu(t, mm)
        yield from self.unmap_vmas(t, tlb, vmas, start, end)
        yield from self.free_pgtables(t, tlb, vmas)
        yield from self.tlb_finish_mmu(t, tlb)
        return True

    def split_vma(self, t: Task, vma: Vma, cut: int, new_below: bool):
        """mm/vma.c __split_vma: both VMAs are write-locked (vma_start_write), then the new VMA
        (vm_area_dup + anon_vma_clone, whose anon_vma root lock is left out: no rmap walker of
        anon folios runs under it in the model) is the part below ``cut`` if ``new_below``,
        else the part above; it is inserted into the tree and into i_mmap (under i_mmap_rwsem,
        write) before the old one is shrunk to the other part."""
        m = self.m
        mm = t.mm
        # "vma_start_write(vma); vma_start_write(new);": a fault holding the VMA's read lock
        # finishes first, and none starts under it until mmap_write_unlock
        yield from self.vma_start_write(t, vma, f"__split_vma: vma_start_write(vma{vma.vid})")
        lo, hi = (vma.start, cut) if new_below else (cut, vma.end)
        new = Vma(m.next_vid, mm.mm_id, lo, hi, vma.file,
                  vma.pgoff + (lo - vma.start) if vma.file is not None else 0,
                  vma.shared, vma.writable)
        new.softdirty = vma.softdirty
        new.mapid = vma.mapid   # the same mapping, split (the checker's notes carry over)
        new.vm_lock_seq = mm.mm_lock_seq   # vma_start_write(new): not yet visible, no waiting
        m.next_vid += 1
        # vm_area_dup copies vma->anon_vma and anon_vma_clone links the new VMA into every
        # anon_vma the old one is in, so rmap walks and fork still find its anon folios
        new.anon_vma = vma.anon_vma
        for av in vma.anon_vma_chain:
            av.vmas.append(new)
            new.anon_vma_chain.append(av)

        def shrink():
            # "if (new_below) { vma->vm_start = addr; vma->vm_pgoff += ...; } else vma->vm_end = addr"
            if new_below:
                if vma.file is not None:
                    vma.pgoff += cut - vma.start
                vma.start = cut
            else:
                vma.end = cut
            mm.vmas.insert(mm.vmas.index(vma) + (0 if new_below else 1), new)

        if vma.file is not None:
            f = m.files[vma.file]
            yield from self.down_write(t, f.i_mmap_rwsem, f"__split_vma: i_mmap_lock_write(file{f.file_id})")
            shrink()
            f.i_mmap.append(new)
            yield from self.up_write(t, f.i_mmap_rwsem, f"__split_vma: {vma.describe()} + {new.describe()}, unlock")
        else:
            shrink()
            yield f"__split_vma: {vma.describe()} + {new.describe()}"

    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/mmap.c mmap_region: the range must be free (vma); vma_link into the tree and, for a file,
    # vma_interval_tree_insert into i_mmap
    @operation("mmap", VmaTemplate(),
               doc="mmap(MAP_FIXED_NOREPLACE) of a world VMA again (EEXIST if the range is used)",
               writes=("vma", "i_mmap"),
               reads=("vma",))
    def mmap(self, t: Task, template: int):
        """mm/mmap.c do_mmap -> mmap_region (MAP_FIXED_NOREPLACE): under mmap_write_lock, fail
        with EEXIST if the range is in use, else vma_link: into the mm's tree and, for a file,
        into i_mmap under i_mmap_rwsem (write)."""
        m = self.m
        mm = t.mm
        spec = m.world["vmas"][template]
        start, end = spec["start"], spec["end"]
        yield from self.down_write(t, mm.mmap_lock, f"mmap({start:#x}-{end:#x}): mmap_write_lock")
        if any(v.start < end and start < v.end for v in mm.vmas):
            t.result = "EEXIST"
            yield from self.up_write(t, mm.mmap_lock, "mmap: EEXIST, mmap_write_unlock", last=True)
            return
        vma = m.make_vma(mm, spec)
        if vma.file is not None:
            f = m.files[vma.file]
            yield from self.down_write(t, f.i_mmap_rwsem, f"vma_link: i_mmap_lock_write(file{f.file_id})")
            f.i_mmap.append(vma)
            yield from self.up_write(t, f.i_mmap_rwsem, "vma_link: into i_mmap, unlock")
        mm.vmas.append(vma)
        mm.vmas.sort(key=lambda v: v.start)
        yield from self.up_write(t, mm.mmap_lock, f"mmap: {vma.describe()}, mmap_write_unlock", last=True)
