"""x86 TLB shootdown by IPI: arch/x86/mm/tlb.c, arch/x86/include/asm/tlb.h.

A world may run as a paravirt guest whose remote flushes are hypercalls
(Machine.tlb_flush "hypercall": flush_tlb_multi_hypercall), which wait for no CPU.

Left out: lazy-TLB CPUs and tlb_gen catch-up at switch_mm (every CPU keeps its one user mm
loaded; mm_cpumask changes only when fork places a child on a CPU and when exit takes the
CPU's process away), the 33-stride full-flush ceiling (a range flush and a full
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
        gen = mm.tlb_gen
        what = "all" if full else f"[{start:#x}-{end:#x})"
        if m.tlb_flush == "hypercall":
            yield from self.flush_tlb_multi_hypercall(
                t, mm.mm_id, start, end, full, f"flush_tlb_mm_range(mm{mm.mm_id}, {what})",
                mm.cpumask)
            self.tlb_flush_completed(mm, gen, start, end, full)
            return
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
        yield f"flush_tlb_mm_range(mm{mm.mm_id}, {what}): IPI to CPU{targets}" if targets \
            else f"flush_tlb_mm_range(mm{mm.mm_id}, {what}): local only"
        if requests:
            yield Wait(lambda: all(req not in cpu.ipi_queue for cpu, req in requests),
                       "waits for flush IPIs")
        self.tlb_flush_completed(mm, gen, start, end, full)

    def flush_tlb_multi_hypercall(self, t: Task, mm_id, start: int, end: int, full: bool,
                                  label: str, cpus: list):
        """A paravirt guest's flush_tlb_multi (arch/x86/include/asm/paravirt.h: the
        pv_ops.mmu.flush_tlb_multi hook), as arch/x86/xen/mmu_pv.c xen_flush_tlb_multi and
        arch/x86/hyperv/mmu.c hyperv_flush_tlb_multi do it: one hypercall, and the hypervisor
        flushes every target vCPU without running guest code there, "even when the target
        CPU has interrupts disabled" (Rik van Riel, "x86/mm: make MMU_GATHER_RCU_TABLE_FREE
        unconditional", 2025). Here: the local and every remote TLB of ``cpus`` dropped in
        one step, no IPI and nothing to wait for (``mm_id`` None: each target's loaded mm, as
        arch_tlbbatch_flush's info->mm NULL). Left out: the hypercall's own cost and KVM's
        preempted-vCPU deferral (kvm_flush_tlb_multi)."""
        m = self.m
        remote = []
        for cpu_id in cpus:
            cpu = m.cpus[cpu_id]
            flush_cpu_tlb(cpu, cpu.mm_id if mm_id is None else mm_id, start, end, full)
            if cpu_id != t.cpu:
                remote.append(cpu_id)
        note_flush(m, t, [])
        yield (f"{label}: hypercall flush of CPU{remote}" if remote
               else f"{label}: local only")

    # --- hooks for TLB-generation schemes (mainline: nothing) -------------------------------
    def pte_table_flush_deferred(self, mm: Mm, table) -> None:
        """Called under ``table``'s PTL wherever a PTE change needs a TLB flush that comes
        later (an mmu_gather, an inc_tlb_flush_pending bracket, a forced flush after the
        loop). Mainline records nothing per table: mm->tlb_flush_pending was raised before the
        PTL was taken. Nadav Amit's proposal stores a pending generation here."""

    def tlb_flush_completed(self, mm: Mm, gen: int, start: int, end: int, full: bool) -> None:
        """Called when a flush_tlb_mm_range that took generation ``gen`` has completed on every
        target. Mainline keeps no completed generation."""

    def pte_table_flush_check(self, t: Task, mm: Mm, table):
        """Called with ``table``'s PTL held before a path relies on a PTE read from it
        (page_vma_mkclean_one, KSM's write_protect_page, the write fault). Mainline: no step."""
        return
        yield

    def flush_tlb_page(self, t: Task, mm: Mm, vpn: int):
        """include/asm-generic/tlb.h, x86 flush_tlb_page = flush_tlb_mm_range of one page."""
        yield from self.flush_tlb_mm_range(t, mm, vpn, vpn + 1, False, False)

    def ptep_clear_flush(self, t: Task, mm: Mm, table, slot: int, vpn: int, label: str):
        """mm/pgtable-generic.c ptep_clear_flush: "pte = ptep_get_and_clear(mm, address,
        ptep); if (pte_accessible(mm, pte)) flush_tlb_page(vma, address); return pte;". The
        caller holds the PTL. The atomic get-and-clear (the CPU's TLB entries for the page
        dropped from the model's bookkeeping) is one step, labelled ``label``; then the flush,
        waiting for every CPU. Returns the PTE that was there, with any D the hardware set up
        to the clear. Every PTE it is given here is present, and pte_accessible is true for a
        present PTE on x86, so the flush always comes."""
        old = table.ptes[slot]
        table.ptes[slot] = None
        self.m.revoke(mm.mm_id, vpn)
        yield label
        yield from self.flush_tlb_page(t, mm, vpn)
        return old

    # --- reclaim's batched unmap flush (CONFIG_ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH) ---------
    def flush_tlb_mm(self, t: Task, mm: Mm):
        """arch/x86/include/asm/tlbflush.h flush_tlb_mm = flush_tlb_mm_range(mm, 0,
        TLB_FLUSH_ALL, 0UL, true)."""
        yield from self.flush_tlb_mm_range(t, mm, 0, 0, True, True)

    def arch_tlbbatch_should_defer(self, t: Task, mm: Mm) -> bool:
        """arch/x86/include/asm/tlbflush.h arch_tlbbatch_should_defer: "If remote CPUs need to
        be flushed then defer batch the flush" (a CPU other than this one is in mm_cpumask)."""
        return any(c != t.cpu for c in mm.cpumask)

    def arch_tlbbatch_add_pending(self, batch, mm: Mm, vpn: int) -> None:
        """arch/x86/include/asm/tlbflush.h arch_tlbbatch_add_pending: inc_mm_tlb_gen(mm) and
        cpumask_or(&batch->cpumask, mm_cpumask(mm)) (the address is unused on x86)."""
        mm.tlb_gen += 1
        for c in mm.cpumask:
            if c not in batch.cpumask:
                batch.cpumask.append(c)
        batch.cpumask.sort()

    def arch_tlbbatch_flush(self, t: Task, batch):
        """arch/x86/mm/tlb.c arch_tlbbatch_flush: a full flush (get_flush_tlb_info(NULL, 0,
        TLB_FLUSH_ALL, ...)) on every CPU of the batch's cpumask, by flush_tlb_multi (this CPU
        at once, the others by IPI, waiting for every one) or locally only; then
        cpumask_clear. With info->mm NULL each target flushes the mm it has loaded."""
        m = self.m
        if m.tlb_flush == "hypercall":
            cpus, batch.cpumask = batch.cpumask, []
            yield from self.flush_tlb_multi_hypercall(t, None, 0, 0, True,
                                                      "arch_tlbbatch_flush", cpus)
            return
        requests = []
        for cpu_id in batch.cpumask:
            cpu = m.cpus[cpu_id]
            if cpu_id == t.cpu:
                flush_cpu_tlb(cpu, cpu.mm_id, 0, 0, True)
                continue
            req = FlushRequest(cpu.mm_id, 0, 0, True, t.tid)
            cpu.ipi_queue.append(req)
            requests.append((cpu, req))
        targets = [cpu.cpu_id for cpu, _ in requests]
        note_flush(m, t, targets)
        batch.cpumask = []
        yield (f"arch_tlbbatch_flush: flush_tlb_multi IPI to CPU{targets}" if targets
               else "arch_tlbbatch_flush: local flush only")
        if requests:
            yield Wait(lambda: all(req not in cpu.ipi_queue for cpu, req in requests),
                       "waits for flush IPIs")

    def arch_flush_tlb_batched_pending(self, t: Task, mm: Mm):
        """arch/x86/include/asm/tlbflush.h arch_flush_tlb_batched_pending = flush_tlb_mm."""
        yield from self.flush_tlb_mm(t, mm)
