"""The PTE cleaner of mm/mapping_dirty_helpers.c: clean_record_shared_mapping_range, the dirty
tracking that DRM's vmwgfx runs on its shared buffer mappings.

It walks an address_space, not an mm: under i_mmap_rwsem (read) it visits every VM_SHARED VMA
of the range (walk_page_mapping) and, with the VMA's PTE tables locked, turns each dirty PTE
clean, keeping the write bit (clean_record_pte: pte_mkclean), and records its page offset in a
bitmap. The TLB flush is deferred to the end of each VMA (wp_clean_post_vma), bracketed by
inc_tlb_flush_pending / dec_tlb_flush_pending instead of an mmu_gather ("typically only a
small subrange of PTEs are affected, whereas tlb_gather_mmu() records the full range"). It
takes no mmap_lock: "@mapping may be mapped by multiple processes".

Between the pte_mkclean and the flush a CPU may keep a writable, dirty TLB entry for a PTE
that is writable and clean: this is the path of Yu Zhao's Example 1 (seed 002), where a
clear_refs write-protect in that window leaves a clean read-only PTE that
page_vma_mkclean_one skips without a flush.

Left out: the bitmap's consumer (the driver copies the recorded pages to the device; the
model's page cache keeps PG_dirty, which the write fault set), wp_shared_mapping_range (the
write-protecting twin), mmu notifiers, flush_cache_range (no-op on x86), huge PMD/PUD entries
(wp_clean_pmd_entry only warns on them).
"""

from __future__ import annotations

from ..model import Vma
from ..ops import Choice, FilePage, operation
from .base import KernelBase, Task


class MappingDirtyHelpers(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/mapping_dirty_helpers.c: walk_page_mapping over i_mmap; wp_clean_pre_vma
    # inc_tlb_flush_pending; clean_record_pte: pte_dirty -> pte_mkclean; wp_clean_post_vma:
    # mm_tlb_flush_nested, flush_tlb_range, dec_tlb_flush_pending
    @operation("clean_record_shared_mapping_range", FilePage(), Choice("nr", (1, 2, 4)),
               context="kthread",
               doc="a driver's PTE cleaner: pte_mkclean keeping W, flush deferred to the VMA end",
               writes=("pte.dirty:file", "tlb.deferred"),
               reads=("i_mmap", "pte.dirty:file", "tlb.deferred"))
    def clean_record_shared_mapping_range(self, t: Task, file_id: int, first_index: int,
                                          nr: int):
        """mm/mapping_dirty_helpers.c clean_record_shared_mapping_range: i_mmap_lock_read,
        walk_page_mapping(mapping, first_index, nr, &clean_walk_ops), i_mmap_unlock_read.
        The recorded bitmap is kept in ``t.result`` (a list of page offsets)."""
        f = self.m.files[file_id]
        yield from self.down_read(t, f.i_mmap_rwsem,
                                  f"clean_record_shared_mapping_range(file{file_id}[{first_index}+{nr}]): "
                                  "i_mmap_lock_read")
        bitmap: list[int] = []
        yield from self.walk_page_mapping(t, f, first_index, nr, bitmap)
        t.result = bitmap
        yield from self.up_read(t, f.i_mmap_rwsem,
                                f"clean_record_shared_mapping_range: i_mmap_unlock_read, "
                                f"recorded {bitmap}", last=True)

    def walk_page_mapping(self, t: Task, f, first_index: int, nr: int, bitmap: list[int]):
        """mm/pagewalk.c walk_page_mapping (i_mmap_rwsem held): for every VMA of i_mmap that
        maps part of [first_index, first_index + nr): test_walk, pre_vma, the PTE walk of the
        covered addresses, post_vma."""
        m = self.m
        for vma in list(f.i_mmap):
            vba, vea = vma.pgoff, vma.pgoff + (vma.end - vma.start)
            cba, cea = max(first_index, vba), min(first_index + nr, vea)
            if cba >= cea:
                continue
            if not vma.shared:           # wp_clean_test_walk: VM_SHARED | VM_MAYWRITE only
                continue
            start = vma.start + (cba - vba)
            end = vma.start + (cea - vba)
            mm = m.mms[vma.mm_id]
            walk = yield from self.wp_clean_pre_vma(t, mm, start, end)
            p = m.ptrs_per_pte
            addr = start
            while addr < end:
                nxt = min((addr // p + 1) * p, end)
                if mm.pmd[addr // p] is not None:
                    yield from self.clean_walk_pte_range(t, mm, vma, addr, nxt, walk, bitmap)
                addr = nxt
            yield from self.wp_clean_post_vma(t, mm, walk)

    def wp_clean_pre_vma(self, t: Task, mm, start: int, end: int):
        """mm/mapping_dirty_helpers.c wp_clean_pre_vma: an empty flush range (start = end,
        end = start), mmu_notifier_invalidate_range_start, flush_cache_range, then
        inc_tlb_flush_pending(mm): before any PTE of this VMA changes."""
        walk = {"range": (start, end), "flush_start": end, "flush_end": start, "total": 0}
        mm.tlb_flush_pending += 1
        yield f"wp_clean_pre_vma: inc_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"
        return walk

    def clean_walk_pte_range(self, t: Task, mm, vma: Vma, addr: int, end: int, walk: dict,
                             bitmap: list[int]):
        """mm/pagewalk.c walk_pte_range with a VMA: pte_offset_map_lock, clean_record_pte on
        every PTE of [addr, end), pte_unmap_unlock."""
        m = self.m
        pmd_index = addr // m.ptrs_per_pte
        table = mm.pmd[pmd_index]
        yield from self.spin_lock(t, table.ptl, f"walk_pte_range: pte_offset_map_lock va {addr:#x} (mm{mm.mm_id})")
        if mm.pmd[pmd_index] is not table:
            yield from self.spin_unlock(t, table.ptl, "walk_pte_range: table gone, unlock")
            return
        for vpn in range(addr, end):
            yield from self.clean_record_pte(t, mm, vma, table, vpn, walk, bitmap)
        yield from self.spin_unlock(t, table.ptl, "walk_pte_range: pte_unmap_unlock")

    def clean_record_pte(self, t: Task, mm, vma: Vma, table, vpn: int, walk: dict,
                         bitmap: list[int]):
        """mm/mapping_dirty_helpers.c clean_record_pte (PTL held): a dirty PTE is cleaned in
        place, keeping its write bit: ptep_modify_prot_start (x86 get-and-clear: the PTE reads
        none until the commit), ptep_modify_prot_commit of pte_mkclean(old); the flush range
        grows to cover it and its page offset goes into the bitmap. No flush here."""
        m = self.m
        slot = vpn % m.ptrs_per_pte
        old = table.ptes[slot]
        if old is None or not old.present or not old.dirty:
            return
        table.ptes[slot] = None
        m.revoke(mm.mm_id, vpn)
        yield f"clean_record_pte: ptep_modify_prot_start va {vpn:#x} (mm{mm.mm_id}, PTE none)"
        new = old._replace(dirty=False)
        table.ptes[slot] = new
        self.pte_table_flush_deferred(mm, table)
        walk["total"] += 1
        walk["flush_start"] = min(walk["flush_start"], vpn)
        walk["flush_end"] = max(walk["flush_end"], vpn + 1)
        pgoff = vma.file_index(vpn)
        if pgoff not in bitmap:
            bitmap.append(pgoff)
        yield (f"clean_record_pte: ptep_modify_prot_commit va {vpn:#x} pte_mkclean "
               f"({'W' if new.write else 'RO'}, clean), record pgoff {pgoff}")

    def wp_clean_post_vma(self, t: Task, mm, walk: dict):
        """mm/mapping_dirty_helpers.c wp_clean_post_vma: if mm_tlb_flush_nested(mm), flush the
        whole walked range (another thread is deferring flushes on this mm too); else flush
        the range of PTEs this walk changed, if any; mmu_notifier_invalidate_range_end;
        dec_tlb_flush_pending(mm), after the flush."""
        nested = self.mm_tlb_flush_nested(mm)
        yield f"wp_clean_post_vma: mm_tlb_flush_nested(mm{mm.mm_id}) = {int(nested)}"
        if nested:
            start, end = walk["range"]
            yield from self.flush_tlb_mm_range(t, mm, start, end, False, False)
        elif walk["flush_end"] > walk["flush_start"]:
            yield from self.flush_tlb_mm_range(t, mm, walk["flush_start"], walk["flush_end"],
                                               False, False)
        mm.tlb_flush_pending -= 1
        yield f"wp_clean_post_vma: dec_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"
