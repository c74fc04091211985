"""x86 TLB shootdown by IPI: arch/x86/mm/tlb.c, arch/x86/include/asm/tlb.h.

Left out: lazy-TLB CPUs and tlb_gen catch-up at switch_mm (every CPU keeps its one user mm
loaded, so mm_cpumask is fixed), the 33-stride full-flush ceiling (a range flush and a full
flush of the mm differ only in cost here), PCID/ASIDs and INVLPGB broadcast.
"""

from __future__ import annotations

from ..cost import note_flush
from ..model import FlushRequest, Mm, tlb_key
from .base import KernelBase, Task, Wait


def flush_cpu_tlb(cpu, mm_id: int, start: int, end: int, full: bool) -> None:
    """arch/x86/mm/tlb.c flush_tlb_func's effect on one CPU: drop the mm's entries in
    [start, end) (or all of them)."""
    tlb = cpu.tlb
    if full:
        lo, hi = tlb_key(mm_id, 0), tlb_key(mm_id + 1, 0)
        for key in [k for k in tlb if lo <= k < hi]:
            del tlb[key]
    else:
        for vpn in range(start, end):
            tlb.pop(tlb_key(mm_id, vpn), None)


class TlbFlushX86(KernelBase):
    def flush_tlb_mm_range(self, t: Task, mm: Mm, start: int, end: int, full: bool,
                           freed_tables: bool):
        """arch/x86/mm/tlb.c flush_tlb_mm_range -> native_flush_tlb_multi.

        inc_mm_tlb_gen, then flush_tlb_func on every CPU in mm_cpumask: locally at once, on the
        others by IPI; the initiator spins until every target has run it ("wait=1" in
        on_each_cpu_cond_mask). A target runs it only with IRQs enabled, so an IRQs-off CPU
        (GUP-fast) holds the flusher up. freed_tables only widens the target set to lazy CPUs,
        which are not modelled.
        """
        m = self.m
        mm.tlb_gen += 1
        requests = []
        targets = []
        for cpu_id in mm.cpumask:
            cpu = m.cpus[cpu_id]
            if cpu_id == t.cpu:
                flush_cpu_tlb(cpu, mm.mm_id, start, end, full)
                continue
            req = FlushRequest(mm.mm_id, start, end, full, t.tid)
            cpu.ipi_queue.append(req)
            requests.append((cpu, req))
            targets.append(cpu_id)
        note_flush(m, t, targets)
        what = "all" if full else f"[{start:#x}-{end:#x})"
        yield f"flush_tlb_mm_range(mm{mm.mm_id}, {what}): IPI to CPU{targets}" if targets \
            else f"flush_tlb_mm_range(mm{mm.mm_id}, {what}): local only"
        if requests:
            yield Wait(lambda: all(req not in cpu.ipi_queue for cpu, req in requests),
                       "waits for flush IPIs")

    def flush_tlb_page(self, t: Task, mm: Mm, vpn: int):
        """include/asm-generic/tlb.h, x86 flush_tlb_page = flush_tlb_mm_range of one page."""
        yield from self.flush_tlb_mm_range(t, mm, vpn, vpn + 1, False, False)
