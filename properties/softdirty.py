"""Soft-dirty tracking (Documentation/admin-guide/mm/soft-dirty.rst): after "4" is written to
/proc/PID/clear_refs, the PTEs are write-protected and not soft-dirty, and "when the task
writes into a page after this, a page fault is generated and the kernel marks the PTE soft
dirty". That holds only if no CPU can still store without faulting, and if nothing but a
write fault makes such a PTE writable again.

What /proc/PID/pagemap reports (fs/proc/task_mmu.c pte_to_pagemap_entry): bit 55 is set for
a present PTE when pte_soft_dirty(pte), and for every address of a VMA with VM_SOFTDIRTY
("if (vma->vm_flags & VM_SOFTDIRTY) flags |= PM_SOFT_DIRTY": a VMA created since the last
clear_refs has no tracking yet, and all of it counts as written).
"""

from __future__ import annotations

from ._core import Violation, last_changed_by_caller, pte_at

NAME = "soft-dirty-accurate"


def soft_dirty_accurate(m, events) -> Violation | None:
    """soft-dirty-accurate: when clear_refs(SOFT_DIRTY) returns, no CPU holds a writable, dirty
    translation of the mm for a PTE that the call write-protected and left not soft-dirty: a
    store through it would land without a fault, so pagemap would report the page unwritten
    (912efa17e512: "leaving entries where pte_write() is false, yet a writable mapping remains
    in the TLB"). A writable but clean entry is harmless (setting D re-walks the PTE and
    faults), and a PTE changed by someone else after the call saw it is theirs to flush.

    And the contract itself, at every store that lands without a fault: once no
    clear_refs(SOFT_DIRTY) of the mm is in flight (a store concurrent with the call may be
    ordered before it), a store into the page its PTE still maps leaves pagemap reporting
    that page soft-dirty (76aefad628aa: mprotect "didn't check it right because VM_SOFTDIRTY
    set actually means soft-dirty tracking disabled" and made a tracked PTE writable, so "Wrote
    page again" read soft-dirty=0). Mainline's one exception is kept: clear_refs leaves a
    writable page of a COW mapping that may be pinned as it is, write bit and soft-dirty bit
    ("pte_is_pinned": write-protecting it would let a write fault copy it away from the pin),
    so stores to it are not tracked until its PTE changes; the checker notes which PTE it
    left (Oracle.softdirty_skipped)."""
    for ev in events:
        if ev[0] in ("store", "store_same"):
            v = _store_not_soft_dirty(m, ev)
            if v is not None:
                return v
            continue
        if ev[0] != "softdirty_cleared":
            continue
        _, mm_id, _tid, observed = ev
        for cpu in m.cpus:
            for key, e in cpu.tlb.items():
                if key >> 32 != mm_id or not (e.write and e.dirty):
                    continue
                vpn = key & 0xffffffff
                pte = pte_at(m, mm_id, vpn)
                if pte is None or pte.pfn != e.pfn or pte.write or pte.soft_dirty:
                    continue
                if not last_changed_by_caller(m, observed, key):
                    continue
                return Violation(NAME,
                                 f"clear_refs returned while CPU{cpu.cpu_id} still holds a "
                                 f"writable dirty translation of va {vpn:#x} (pfn {e.pfn}) whose "
                                 "PTE is write-protected and not soft-dirty: a store will not "
                                 "fault and pagemap will report the page clean",
                                 {"cpu": cpu.cpu_id, "mm": mm_id, "va": vpn, "pfn": e.pfn})
    return None


def _store_not_soft_dirty(m, ev) -> Violation | None:
    _, cpu_id, vpn, pfn, value = ev
    mm_id = m.cpus[cpu_id].mm_id
    pte = pte_at(m, mm_id, vpn)
    if pte is None or not pte.present or pte.pfn != pfn or pte.soft_dirty:
        return None   # the page is no longer mapped there (others judge that), or reported
    skipped = m.oracle.softdirty_skipped.get(mm_id << 32 | vpn)
    if skipped is not None and skipped._replace(young=pte.young, dirty=pte.dirty) == pte:
        return None   # the PTE clear_refs left writable for a pin (pte_is_pinned), A/D aside
    mm = m.mms[mm_id]
    vma = mm.find_vma(vpn)
    if vma is None or vma.softdirty:
        return None   # VM_SOFTDIRTY: pagemap reports the whole VMA soft-dirty
    for c in m.cpus:
        t = c.task
        if t is not None and t.name == "clear_refs" and t.mm is mm:
            return None   # concurrent with a clear_refs(SOFT_DIRTY) of this mm
    return Violation(NAME,
                     f"CPU{cpu_id} stored v{value} to va {vpn:#x} (pfn {pfn}) without a fault, "
                     "but its PTE is not soft-dirty and its VMA tracks soft-dirty (VM_SOFTDIRTY "
                     "clear): pagemap reports the page unwritten since clear_refs",
                     {"cpu": cpu_id, "mm": mm_id, "va": vpn, "pfn": pfn})
