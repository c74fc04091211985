"""/proc/PID/clear_refs: fs/proc/task_mmu.c clear_refs_write (v6.12 structure), types 4 and 1.

Writing "4" (CLEAR_REFS_SOFT_DIRTY) under mmap_write_lock: clear VM_SOFTDIRTY on every VMA
(vma_set_page_prot), inc_tlb_flush_pending, walk every PTE table write-protecting each present
PTE and clearing its soft-dirty bit, then flush_tlb_mm and dec_tlb_flush_pending (912efa17e512:
"much like mprotect() does already"). After that a store to any page faults, and the fault's
pte_mkdirty() sets soft-dirty again, which is what /proc/PID/pagemap bit 55 reports.

Writing "1" (CLEAR_REFS_ALL), also under mmap_write_lock (29a951dfb3c3 "mm: fix
clear_refs_write locking" takes it for every type): for every present PTE of a normal page,
ptep_test_and_clear_young and folio_clear_referenced, and no TLB flush at all (912efa17e512
kept the flush for soft-dirty only). x86 sets A only on a page walk, so a CPU that keeps the
translation cached goes on using the page without setting young again: the bit under-reports
use until the entry leaves the TLB, which is accurate enough for aging and never a
correctness matter.

Left out: types 2, 3 (anon-only / file-only variants of 1) and 5 (hiwater RSS), pagemap reads
(the property checks the PTE-level contract that pagemap reports), mmu notifiers,
folio_test_clear_young (the page-idle flag), THP.
"""

from __future__ import annotations

from ..model import tlb_key
from ..ops import operation
from .base import KernelBase, Task

#: enum clear_refs_types (fs/proc/task_mmu.c)
CLEAR_REFS_ALL, CLEAR_REFS_SOFT_DIRTY = 1, 4


class TaskMmu(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # fs/proc/task_mmu.c clear_refs_write(CLEAR_REFS_SOFT_DIRTY): vm_flags_clear(VM_SOFTDIRTY),
    # inc_tlb_flush_pending ... flush_tlb_mm, dec_tlb_flush_pending; clear_soft_dirty:
    # pte_is_pinned (is_cow_mapping, pte_write, folio_maybe_dma_pinned), pte_wrprotect +
    # pte_clear_soft_dirty (a swap PTE: pte_swp_clear_soft_dirty)
    @operation("clear_refs", doc="write 4 (CLEAR_REFS_SOFT_DIRTY) to /proc/self/clear_refs",
               writes=("vma", "pte.write:anon", "pte.write:file", "pte.soft_dirty",
                       "tlb.deferred"),
               reads=("vma", "pte.write:anon", "gup.pin"))
    def clear_refs(self, t: Task, type: int = CLEAR_REFS_SOFT_DIRTY):
        """fs/proc/task_mmu.c clear_refs_write on the task's own mm: type 4
        (CLEAR_REFS_SOFT_DIRTY) or 1 (CLEAR_REFS_ALL)."""
        mm = t.mm
        if type == CLEAR_REFS_ALL:
            yield from self.down_write(t, mm.mmap_lock, "clear_refs(ALL): mmap_write_lock")
            yield from self.clear_refs_walk(t, type)
            yield from self.up_write(t, mm.mmap_lock, "clear_refs(ALL): mmap_write_unlock, "
                                     "return (no TLB flush)", last=True)
            return
        if type != CLEAR_REFS_SOFT_DIRTY:
            raise ValueError(f"clear_refs type {type} is not modelled (1 or 4)")
        yield from self.down_write(t, mm.mmap_lock, "clear_refs(SOFT_DIRTY): mmap_write_lock")
        for vma in list(mm.vmas):
            # vm_flags_clear write-locks the VMA (vma_start_write), as the walk would anyway
            # (clear_refs_walk_ops.walk_lock = PGWALK_WRLOCK)
            yield from self.vma_start_write(t, vma, f"clear_refs: vm_flags_clear(vma{vma.vid}, VM_SOFTDIRTY): vma_start_write + vma_set_page_prot")
            vma.softdirty = False   # vm_flags_clear(VM_SOFTDIRTY), under the VMA write lock
        mm.tlb_flush_pending += 1
        yield f"clear_refs: inc_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"
        yield from self.clear_refs_walk(t)
        yield from self.flush_tlb_mm_range(t, mm, 0, 0, True, True)  # x86 flush_tlb_mm
        mm.tlb_flush_pending -= 1
        yield f"clear_refs: flush_tlb_mm done, dec_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"
        yield from self.up_write(t, mm.mmap_lock, "clear_refs: mmap_write_unlock, return", last=True)
        self.m.events.append(("softdirty_cleared", mm.mm_id, t.tid, dict(t.observed)))

    # State (mmfuzz.ops.STATE), from the kernel source:
    # fs/proc/task_mmu.c clear_refs_pte_range(CLEAR_REFS_ALL): ptep_test_and_clear_young,
    # folio_clear_referenced; no flush, no test of anything but the PTE it walks
    @operation("clear_refs_all", doc="write 1 (CLEAR_REFS_ALL: young and referenced bits) to "
               "/proc/self/clear_refs",
               writes=("pte.young", "folio.lru"),
               reads=())
    def clear_refs_all(self, t: Task):
        """fs/proc/task_mmu.c clear_refs_write(CLEAR_REFS_ALL): clear_refs with type 1 (its own
        operation so that "clear_refs", type 4, keeps the argument list saved files use)."""
        yield from self.clear_refs(t, CLEAR_REFS_ALL)

    def clear_refs_walk(self, t: Task, type: int = CLEAR_REFS_SOFT_DIRTY):
        """mm/pagewalk.c walk_page_range(mm, 0, -1, &clear_refs_walk_ops): clear_refs_pte_range
        on every PTE table under a VMA, in address order (clear_refs_test_walk skips only
        VM_PFNMAP VMAs for types 1 and 4)."""
        m = self.m
        for vma in list(t.mm.vmas):
            addr = vma.start
            while addr < vma.end:
                pmd_index = addr // m.ptrs_per_pte
                end = min(vma.end, (pmd_index + 1) * m.ptrs_per_pte)
                yield from self.clear_refs_pte_range(t, pmd_index, addr, end, type)
                addr = end

    def clear_refs_pte_range(self, t: Task, pmd_index: int, addr: int, end: int,
                             type: int = CLEAR_REFS_SOFT_DIRTY):
        """fs/proc/task_mmu.c clear_refs_pte_range: pte_offset_map_lock (nothing to do without
        a table); type 4: clear_soft_dirty on each PTE; otherwise, for a present PTE of a
        normal page (vm_normal_folio: not the zero page), "Clear accessed and referenced
        bits": ptep_test_and_clear_young and folio_clear_referenced; pte_unmap_unlock."""
        m = self.m
        mm = t.mm
        table = mm.pmd[pmd_index]
        if table is None:
            return
        yield from self.spin_lock(t, table.ptl, f"clear_refs_pte_range: pte_offset_map_lock va {addr:#x}")
        for vpn in range(addr, end):
            if type != CLEAR_REFS_SOFT_DIRTY:
                yield from self.clear_refs_young(t, table, vpn % m.ptrs_per_pte, vpn)
                continue
            yield from self.clear_soft_dirty(t, table, vpn % m.ptrs_per_pte, vpn)
            t.observed[tlb_key(mm.mm_id, vpn)] = m.clock
        yield from self.spin_unlock(t, table.ptl, "clear_refs_pte_range: pte_unmap_unlock")

    def pte_is_pinned(self, t: Task, vpn: int, pte):
        """fs/proc/task_mmu.c pte_is_pinned: only a writable PTE of a COW mapping whose
        vm_normal_folio is folio_maybe_dma_pinned (a lockless read of the refcount, its own
        step when it is made) is skipped, so that a pinned page is not write-protected (the
        MMF_HAS_PINNED shortcut is left out: it only saves the refcount read)."""
        if not pte.write or pte.special:
            return False
        vma = t.mm.find_vma(vpn)
        if vma is None or vma.shared:
            return False
        from .gup import folio_maybe_dma_pinned  # here: gup.py registers its ops after ours
        folio = self.m.frames[pte.pfn]
        pinned = folio_maybe_dma_pinned(folio)
        yield (f"clear_soft_dirty: pte_is_pinned va {vpn:#x} = {int(pinned)} "
               f"(refcount {folio.refcount})")
        return pinned

    def clear_soft_dirty(self, t: Task, table, slot: int, vpn: int):
        """fs/proc/task_mmu.c clear_soft_dirty, present PTE: pte_is_pinned on the PTE read
        first ("ptent"), then ptep_modify_prot_start (x86: ptep_get_and_clear, so the PTE reads
        none to a concurrent hardware walk), whose return value ("old_pte": the PTE as it is
        then, with any D the hardware set since the first read) is what ptep_modify_prot_commit
        writes back as pte_clear_soft_dirty(pte_wrprotect(old_pte)); no flush here."""
        m = self.m
        ptent = table.ptes[slot]
        if ptent is None:
            return
        if not ptent.present:  # is_swap_pte: pte_swp_clear_soft_dirty, set_pte_at
            table.ptes[slot] = ptent._replace(soft_dirty=False)
            yield f"clear_soft_dirty: swap PTE va {vpn:#x}: pte_swp_clear_soft_dirty"
            return
        pinned = yield from self.pte_is_pinned(t, vpn, ptent)
        if pinned:
            # (a fact for the checker: this PTE keeps its write bit and its soft-dirty bit)
            m.events.append(("softdirty_skipped", t.mm.mm_id, vpn, ptent))
            return
        # under the PTL only the hardware changes the PTE meanwhile (A and D bits)
        old_pte = table.ptes[slot]
        table.ptes[slot] = None
        m.revoke(t.mm.mm_id, vpn)
        yield f"clear_soft_dirty: ptep_modify_prot_start va {vpn:#x} (PTE none)"
        table.ptes[slot] = old_pte._replace(write=False, soft_dirty=False)
        self.pte_table_flush_deferred(t.mm, table)
        yield f"clear_soft_dirty: ptep_modify_prot_commit va {vpn:#x} wrprotect, clear soft-dirty"

    def clear_refs_young(self, t: Task, table, slot: int, vpn: int):
        """fs/proc/task_mmu.c clear_refs_pte_range, CLEAR_REFS_ALL body: x86
        ptep_test_and_clear_young is an atomic clear of _PAGE_ACCESSED in the live PTE (a
        locked bit op, so a concurrent hardware D update is never lost) with no flush;
        folio_clear_referenced clears PG_referenced. A PTE that is none, or maps the zero page,
        is skipped."""
        old = table.ptes[slot]
        if old is None or not old.present or old.special:
            return
        folio = self.m.frames[old.pfn]
        table.ptes[slot] = old._replace(young=False)
        folio.referenced = False
        yield (f"clear_refs_pte_range: ptep_test_and_clear_young va {vpn:#x} "
               f"(was {'young' if old.young else 'old'}) + folio_clear_referenced(pfn {folio.pfn})")
