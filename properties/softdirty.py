"""Soft-dirty tracking (Documentation/admin-guide/mm/soft-dirty.rst): after "4" is written to
/proc/PID/clear_refs, the PTEs are write-protected and not soft-dirty, and "when the task
writes into a page after this, a page fault is generated and the kernel marks the PTE soft
dirty". That holds only if no CPU can still store without faulting.
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
    faults), and a PTE changed by someone else after the call saw it is theirs to flush."""
    for ev in events:
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
