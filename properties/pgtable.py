"""Page-table pages: no walker dereferences a freed table.

include/asm-generic/tlb.h (struct mmu_table_batch): "Architectures that use IPIs to flush TLBs
will then automagically DTRT" because GUP-fast disables IRQs while it walks; mm/mmu_gather.c
tlb_remove_table_sync_one: "It is however sufficient for software page-table walkers that rely
on IRQ disabling". A table is freed only after every walker that may hold it has left:
where the flush is an IPI, because the flush waits for the walker; where it is a hypercall (a
paravirt guest), because the table waits for an RCU-sched grace period ("on paravirt, with
MMU_GATHER_RCU_TABLE_FREE. This is done because some paravirt TLB flush implementations handle
the TLB flush in the hypervisor, and will do the flush even when the target CPU has interrupts
disabled", x86/mm: make MMU_GATHER_RCU_TABLE_FREE unconditional, 2025). Tripped by
bug:gupfast-pv-flush-table-free (9e52fc2b50de reverted).
"""

from __future__ import annotations

from ._core import Violation

NAME = "no-freed-page-table-walk"


def no_freed_page_table_walk(m, events) -> Violation | None:
    """no-freed-page-table-walk: no hardware walk and no software walker (GUP-fast) reads an
    entry of a PTE table after the table was freed."""
    for ev in events:
        if ev[0] == "walk_freed_table":
            _, cpu, tid, who = ev
            return Violation(NAME, f"CPU{cpu} ({who}) read PTE table {tid} after it was freed",
                             {"cpu": cpu, "table": tid, "walker": who})
    return None
