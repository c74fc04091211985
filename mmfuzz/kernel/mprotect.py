"""mprotect(2): mm/mprotect.c do_mprotect_pkey / mprotect_fixup / change_protection /
change_pte_range (v6.12 structure: one mmu_gather for the whole call, flushed at each VMA's
end by tlb_end_vma and finally by tlb_finish_mmu, all under mmap_write_lock).

Protections modelled: PROT_READ (1) and PROT_READ|PROT_WRITE (3). A VMA's vm_page_prot
(vma_set_page_prot) never carries the write bit here: private mappings are COW (PAGE_COPY) and
the shared file mapping is write-notify (the filesystem has ->page_mkwrite), so every upgrade
goes through MM_CP_TRY_CHANGE_WRITABLE and can_change_pte_writable.

Left out: PROT_NONE and PROT_EXEC (no protnone PTEs, so no NUMA hinting and no pte_accessible
case), pkeys, VMA merging in vma_modify_flags (a partial range is split, neighbours are never
merged back), VM_ACCOUNT commit charging, ->mprotect hooks, THP PMDs (change_huge_pmd), swap
and migration entries, uffd-wp (userfaultfd is not modelled, so userfaultfd_pte_wp() is
false), mmu notifiers, lazy MMU mode.
"""

from __future__ import annotations

from ..model import Pte, Vma, tlb_key
from ..ops import Choice, VmaRange, operation
from .base import KernelBase, Task
from .mmu_gather import MmuGather

PROT_READ, PROT_WRITE = 1, 2
MPROTECT_PROTS = (PROT_READ, PROT_READ | PROT_WRITE)


class Mprotect(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/mprotect.c mprotect_fixup: vma_modify_flags (split: vma, i_mmap), vm_flags_reset;
    # change_pte_range: flush_tlb_batched_pending, ptep_modify_prot_start/commit of the new
    # protection, can_change_pte_writable (VM_WRITE, pte_needs_soft_dirty_wp, PageAnonExclusive
    # for a private page, pte_dirty for a shared one), pte_needs_flush (the old write bit),
    # tlb_flush_pte_range; tlb_finish_mmu's mm_tlb_flush_nested
    @operation("mprotect", VmaRange(), Choice("prot", MPROTECT_PROTS, "1 PROT_READ, 3 PROT_READ|PROT_WRITE"),
               doc="mprotect: split, change_protection under mmap_write_lock, flush at VMA end",
               writes=("vma", "i_mmap", "pte.write:anon", "pte.write:file", "tlb.deferred"),
               reads=("vma", "pte.write:anon", "pte.write:file", "pte.dirty:file",
                      "pte.soft_dirty", "PG_anon_exclusive", "tlb.deferred"))
    def mprotect(self, t: Task, start: int, npages: int, prot: int):
        """mm/mprotect.c do_mprotect_pkey (SYSCALL mprotect): mmap_write_lock; the first VMA
        must start at or below ``start`` (else -ENOMEM); tlb_gather_mmu; mprotect_fixup on every
        VMA of the range while they are contiguous (a hole ends the loop with -ENOMEM);
        tlb_finish_mmu; mmap_write_unlock."""
        m = self.m
        mm = t.mm
        end = start + npages
        if prot not in MPROTECT_PROTS:
            raise ValueError(f"mprotect: prot {prot} is not modelled (PROT_READ or RW)")
        yield from self.down_write(t, mm.mmap_lock,
                                   f"mprotect({start:#x}+{npages}, {_fmt_prot(prot)}): "
                                   "mmap_write_lock")
        first = next((v for v in mm.vmas if v.end > start), None)
        if first is None or first.start >= end or first.start > start:
            t.result = "ENOMEM"
            yield from self.up_write(t, mm.mmap_lock, "mprotect: -ENOMEM, mmap_write_unlock",
                                     last=True)
            self.m.events.append(("unmap_returned", mm.mm_id, start, end, t.tid, {}))
            return
        tlb = yield from self.tlb_gather_mmu(t, mm)
        nstart = start
        error = None
        while nstart < end:
            vma = mm.find_vma(nstart)
            if vma is None:
                error = "ENOMEM"
                break
            tmp = min(vma.end, end)
            yield from self.mprotect_fixup(t, tlb, vma, nstart, tmp, prot)
            nstart = tmp
        yield from self.tlb_finish_mmu(t, tlb)
        t.result = error
        yield from self.up_write(t, mm.mmap_lock,
                                 f"mprotect: {'-' + error + ', ' if error else ''}"
                                 "mmap_write_unlock, return", last=True)
        m.events.append(("unmap_returned", mm.mm_id, start, end, t.tid, dict(t.observed)))

    def mprotect_fixup(self, t: Task, tlb: MmuGather, vma: Vma, start: int, end: int,
                       prot: int):
        """mm/mprotect.c mprotect_fixup: nothing to do if the flags do not change; else
        vma_modify_flags (split at start and end when the range covers part of the VMA),
        vma_start_write, vm_flags_reset_once, MM_CP_TRY_CHANGE_WRITABLE if
        vma_wants_manual_pte_write_upgrade, vma_set_page_prot, change_protection."""
        writable = bool(prot & PROT_WRITE)
        if vma.writable == writable:
            return
        # mm/vma.c vma_modify: "split_vma(vmi, vma, start, 1)" then "split_vma(vmi, vma, end,
        # 0)": vma itself ends up as [start, end)
        if vma.start < start:
            yield from self.split_vma(t, vma, start, new_below=True)
        if end < vma.end:
            yield from self.split_vma(t, vma, end, new_below=False)
        yield from self.vma_start_write(t, vma, f"vma_start_write({vma.describe()})")
        vma.writable = writable
        try_change_writable = self.vma_wants_manual_pte_write_upgrade(vma)
        yield (f"mprotect_fixup: vm_flags_reset_once {vma.describe()} "
               f"{'VM_WRITE' if writable else '~VM_WRITE'}, vma_set_page_prot"
               f"{', MM_CP_TRY_CHANGE_WRITABLE' if try_change_writable else ''}")
        yield from self.change_protection(t, tlb, vma, start, end, try_change_writable)

    @staticmethod
    def vma_wants_manual_pte_write_upgrade(vma: Vma) -> bool:
        """mm/internal.h vma_wants_manual_pte_write_upgrade: a shared VMA only if it wants
        write-notify (vma_wants_writenotify: the file has ->page_mkwrite, always true for the
        modelled filesystem); a private VMA iff it is VM_WRITE."""
        if vma.shared:
            return vma.writable   # vma_wants_writenotify(): VM_WRITE|VM_SHARED + page_mkwrite
        return vma.writable

    def change_protection(self, t: Task, tlb: MmuGather, vma: Vma, start: int, end: int,
                          try_change_writable: bool):
        """mm/mprotect.c change_protection -> change_protection_range: tlb_start_vma, then
        change_pte_range for every PTE table of the range (change_pmd_range skips a none PMD),
        then tlb_end_vma, which flushes the range recorded so far."""
        m = self.m
        p = m.ptrs_per_pte
        addr = start
        while addr < end:
            nxt = min((addr // p + 1) * p, end)
            if t.mm.pmd[addr // p] is not None:   # pmd_none -> next
                yield from self.change_pte_range(t, tlb, vma, addr, nxt, try_change_writable)
            addr = nxt
        yield from self.tlb_end_vma(t, tlb, vma)

    def change_pte_range(self, t: Task, tlb: MmuGather, vma: Vma, addr: int, end: int,
                         try_change_writable: bool):
        """mm/mprotect.c change_pte_range: pte_offset_map_lock; flush_tlb_batched_pending (a
        flush that reclaim deferred on this mm is done before any PTE here is changed); for
        every present PTE: ptep_modify_prot_start (x86: get-and-clear), pte_modify to the new
        vm_page_prot (keeps pfn, dirty, young, soft-dirty; the write bit comes from
        vm_page_prot, which has none here), pte_mkwrite if MM_CP_TRY_CHANGE_WRITABLE and
        can_change_pte_writable, ptep_modify_prot_commit, and tlb_flush_pte_range if
        pte_needs_flush(old, new); pte_unmap_unlock."""
        m = self.m
        mm = t.mm
        pmd_index = addr // m.ptrs_per_pte
        table = mm.pmd[pmd_index]
        yield from self.spin_lock(t, table.ptl, f"change_pte_range: pte_offset_map_lock va {addr:#x}")
        if mm.pmd[pmd_index] is not table:
            yield from self.spin_unlock(t, table.ptl, "change_pte_range: table gone, unlock")
            return
        yield from self.flush_tlb_batched_pending(t, mm)
        for vpn in range(addr, end):
            slot = vpn % m.ptrs_per_pte
            old = table.ptes[slot]
            if old is None:       # "Nobody plays with any none ptes besides userfaultfd"
                continue
            if not old.present:   # a swap entry: no writable migration/device entries here,
                continue          # so newpte == oldpte (uffd-wp markers are not modelled)
            # ptep_modify_prot_start: x86 ptep_get_and_clear, one atomic xchg (it returns any D
            # the hardware set until now); a walker sees none until the commit.
            table.ptes[slot] = None
            m.revoke(mm.mm_id, vpn)
            yield f"change_pte_range: ptep_modify_prot_start va {vpn:#x} (PTE none)"
            ptent = old._replace(write=False)            # pte_modify(oldpte, vm_page_prot)
            if try_change_writable and not ptent.write and \
                    self.can_change_pte_writable(vma, vpn, ptent):
                ptent = ptent._replace(write=True)       # pte_mkwrite
            table.ptes[slot] = ptent
            if self.pte_needs_flush(old, ptent):
                self.tlb_flush_pte_range(tlb, vpn)
                self.pte_table_flush_deferred(mm, table)
            yield (f"change_pte_range: ptep_modify_prot_commit va {vpn:#x} "
                   f"{'W' if ptent.write else 'RO'}{'D' if ptent.dirty else ''}"
                   f"{' + tlb_flush_pte_range' if self.pte_needs_flush(old, ptent) else ''}")
        for vpn in range(addr, end):
            t.observed[tlb_key(mm.mm_id, vpn)] = m.clock
        yield from self.spin_unlock(t, table.ptl, "change_pte_range: pte_unmap_unlock")

    def can_change_pte_writable(self, vma: Vma, vpn: int, pte: Pte) -> bool:
        """mm/mprotect.c can_change_pte_writable: only in a VM_WRITE VMA; not when soft-dirty
        tracking needs the write fault (pte_needs_soft_dirty_wp: the VMA's VM_SOFTDIRTY is
        clear and the PTE is not soft-dirty); uffd-wp is not modelled; a private mapping only
        for an exclusive anonymous page (vm_normal_page: never the zero page); a shared mapping
        only if the PTE is already dirty ("the FS was already notified")."""
        if not vma.writable:
            return False
        if self.pte_needs_soft_dirty_wp(vma, pte):   # "Do we need write faults for softdirty
            return False                              # tracking?"
        if not vma.shared:
            if pte.special:
                return False
            folio = self.m.frames[pte.pfn]
            return folio.anon and folio.anon_exclusive
        return pte.dirty

    @staticmethod
    def pte_needs_flush(old: Pte, new: Pte) -> bool:
        """arch/x86/include/asm/tlbflush.h pte_needs_flush: a present old PTE needs a flush if
        the pfn changed or a flag in flush_on_clear (RW, DIRTY, ...) went from set to clear;
        permission upgrades do not ("Non-present entries are not cached")."""
        if old.pfn != new.pfn:
            return True
        return (old.write and not new.write) or (old.dirty and not new.dirty)

    def tlb_flush_pte_range(self, tlb: MmuGather, vpn: int) -> None:
        """include/asm-generic/tlb.h tlb_flush_pte_range: __tlb_adjust_range + cleared_ptes."""
        tlb.adjust_range(vpn, vpn + 1)
        tlb.cleared_ptes = True


def _fmt_prot(prot: int) -> str:
    return "PROT_READ|PROT_WRITE" if prot & PROT_WRITE else "PROT_READ"
