"""/proc/PID/clear_refs: fs/proc/task_mmu.c clear_refs_write (v6.12 structure), soft-dirty only.

Writing "4" (CLEAR_REFS_SOFT_DIRTY) under mmap_write_lock: clear VM_SOFTDIRTY on every VMA
(vma_set_page_prot), inc_tlb_flush_pending, walk every PTE table write-protecting each present
PTE and clearing its soft-dirty bit, then flush_tlb_mm and dec_tlb_flush_pending (912efa17e512:
"much like mprotect() does already"). After that a store to any page faults, and the fault's
pte_mkdirty() sets soft-dirty again, which is what /proc/PID/pagemap bit 55 reports.

Left out: the other clear_refs types (1-3, 5), VM_SOFTDIRTY itself and pagemap reads (the
property checks the PTE-level contract that pagemap reports), mmu notifiers, the
pte_is_pinned() skip (GUP pins are not modelled), swap PTEs, THP.
"""

from __future__ import annotations

from ..model import tlb_key
from .base import KernelBase, Task


class TaskMmu(KernelBase):
    def clear_refs(self, t: Task):
        """fs/proc/task_mmu.c clear_refs_write(CLEAR_REFS_SOFT_DIRTY) on the task's own mm."""
        mm = t.mm
        yield from self.down_write(t, mm.mmap_lock, "clear_refs(SOFT_DIRTY): mmap_write_lock")
        for vma in mm.vmas:
            vma.softdirty = False
        yield "clear_refs: for_each_vma: vm_flags_clear(VM_SOFTDIRTY) + vma_set_page_prot"
        mm.tlb_flush_pending += 1
        yield f"clear_refs: inc_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"
        yield from self.clear_refs_walk(t)
        yield from self.flush_tlb_mm_range(t, mm, 0, 0, True, True)  # x86 flush_tlb_mm
        mm.tlb_flush_pending -= 1
        yield f"clear_refs: flush_tlb_mm done, dec_tlb_flush_pending(mm{mm.mm_id}) -> {mm.tlb_flush_pending}"
        yield from self.up_write(t, mm.mmap_lock, "clear_refs: mmap_write_unlock, return", last=True)
        self.m.events.append(("softdirty_cleared", mm.mm_id, t.tid, dict(t.observed)))

    def clear_refs_walk(self, t: Task):
        """mm/pagewalk.c walk_page_range(mm, 0, -1, &clear_refs_walk_ops): clear_refs_pte_range
        on every PTE table under a VMA, in address order."""
        m = self.m
        for vma in list(t.mm.vmas):
            addr = vma.start
            while addr < vma.end:
                pmd_index = addr // m.ptrs_per_pte
                end = min(vma.end, (pmd_index + 1) * m.ptrs_per_pte)
                yield from self.clear_refs_pte_range(t, pmd_index, addr, end)
                addr = end

    def clear_refs_pte_range(self, t: Task, pmd_index: int, addr: int, end: int):
        """fs/proc/task_mmu.c clear_refs_pte_range: pte_offset_map_lock (nothing to do without
        a table), clear_soft_dirty on each PTE, pte_unmap_unlock."""
        m = self.m
        mm = t.mm
        table = mm.pmd[pmd_index]
        if table is None:
            return
        yield from self.spin_lock(t, table.ptl, f"clear_refs_pte_range: pte_offset_map_lock va {addr:#x}")
        for vpn in range(addr, end):
            yield from self.clear_soft_dirty(t, table, vpn % m.ptrs_per_pte, vpn)
            t.observed[tlb_key(mm.mm_id, vpn)] = m.clock
        yield from self.spin_unlock(t, table.ptl, "clear_refs_pte_range: pte_unmap_unlock")

    def clear_soft_dirty(self, t: Task, table, slot: int, vpn: int):
        """fs/proc/task_mmu.c clear_soft_dirty, present PTE: ptep_modify_prot_start (x86:
        ptep_get_and_clear, so the PTE reads none to a concurrent hardware walk), then
        ptep_modify_prot_commit of pte_clear_soft_dirty(pte_wrprotect(old)); no flush here."""
        m = self.m
        old = table.ptes[slot]
        if old is None:
            return
        table.ptes[slot] = None
        m.revoke(t.mm.mm_id, vpn)
        yield f"clear_soft_dirty: ptep_modify_prot_start va {vpn:#x} (PTE none)"
        table.ptes[slot] = old._replace(write=False, soft_dirty=False)
        yield f"clear_soft_dirty: ptep_modify_prot_commit va {vpn:#x} wrprotect, clear soft-dirty"
