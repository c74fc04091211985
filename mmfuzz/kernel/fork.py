"""fork and exit: kernel/fork.c (kernel_clone, copy_process, copy_mm, dup_mm, mmput),
kernel/exit.c (do_exit, exit_mm), and mm/mmap.c dup_mmap / exit_mmap (dup_mmap lived in
kernel/fork.c until v6.15; the protocol is the same).

A forked child is a new process with a new mm, placed on an idle CPU that has no process
(world "cpu_mm" 0): fork's argument is that CPU. The child runs there once fork returns.
exit ends the process on the CPU it runs on; the last user of an mm tears it down
(exit_mmap). Left out: threads (CLONE_VM: a world's CPUs of one mm are its threads from the
start), vfork, the child's own execution of ret_from_fork, signals, the lazy-TLB window after
exit_mm (the exiting CPU drops the mm's TLB entries when it leaves it), mmu notifiers,
uprobes, khugepaged/ksm_fork, VM_DONTCOPY / VM_WIPEONFORK, accounting and the error paths.
"""

from __future__ import annotations

from ..model import Mm, Vma, tlb_key
from ..ops import ChildCpu, operation
from .base import KernelBase, Last, Task


class ForkOps(KernelBase):
    # State (mmfuzz.ops.STATE), from the kernel source:
    # mm/mmap.c dup_mmap: vm_area_dup + anon_vma_fork + the child's tree (vma), i_mmap insert;
    # mm/memory.c copy_page_range: raw_write_seqcount_begin(write_protect_seq) for a COW mapping;
    # copy_present_ptes: folio_try_dup_anon_rmap_pte (PageAnonExclusive, folio_needs_cow_for_dma ->
    # folio_maybe_dma_pinned; clears PG_anon_exclusive), folio_dup_file_rmap_pte, folio_get,
    # wrprotect_ptes of a writable COW PTE; copy_nonpresent_pte: swap_duplicate
    @operation("fork", ChildCpu(),
               doc="fork: dup_mmap (COW write-protect, anon folio sharing) and a child process on an idle CPU",
               writes=("vma", "i_mmap", "pte.write:anon", "mm.write_protect_seq",
                       "folio.mapcount:anon", "folio.mapcount:file", "folio.refcount",
                       "PG_anon_exclusive", "swap"),
               reads=("vma", "pte.write:anon", "gup.pin", "PG_anon_exclusive"))
    def fork(self, t: Task, child_cpu: int):
        """kernel/fork.c kernel_clone -> copy_process -> copy_mm -> dup_mm: mm_alloc a new mm,
        dup_mmap(mm, oldmm), then wake_up_new_task runs the child on ``child_cpu``."""
        m = self.m
        oldmm = t.mm
        mm_id = max(m.mms) + 1
        mm = Mm(mm_id, m.npmds)
        mm.origin = oldmm.origin
        m.mms[mm_id] = mm
        yield f"fork: copy_process -> dup_mm: mm_alloc mm{mm_id}"
        yield from self.dup_mmap(t, mm, oldmm)
        c = m.cpus[child_cpu]
        c.reserved = False
        c.mm_id = mm_id
        mm.cpumask.append(child_cpu)
        mm.users = 1
        t.result = mm_id
        yield Last(f"fork: wake_up_new_task: the child (mm{mm_id}) runs on CPU{child_cpu}")

    def dup_mmap(self, t: Task, mm: Mm, oldmm: Mm):
        """mm/mmap.c dup_mmap: mmap_write_lock(oldmm), then the new mm's (mmap_write_lock_nested:
        "Not linked in yet - no deadlock potential"); per parent VMA: vma_start_write,
        vm_area_dup, anon_vma_fork, link it into the child's tree, for a file insert it into
        i_mmap just after the parent's (under i_mmap_lock_write), copy_page_range. Then
        mmap_write_unlock(mm), flush_tlb_mm(oldmm) (the parent's PTEs were write-protected
        without a flush), mmap_write_unlock(oldmm)."""
        m = self.m
        yield from self.down_write(t, oldmm.mmap_lock, f"dup_mmap: mmap_write_lock(mm{oldmm.mm_id})")
        yield from self.down_write(t, mm.mmap_lock, f"dup_mmap: mmap_write_lock_nested(mm{mm.mm_id})")
        for mpnt in list(oldmm.vmas):
            yield from self.vma_start_write(t, mpnt, f"dup_mmap: vma_start_write(vma{mpnt.vid})")
            tmp = Vma(m.next_vid, mm.mm_id, mpnt.start, mpnt.end, mpnt.file, mpnt.pgoff,
                      mpnt.shared, mpnt.writable)
            m.next_vid += 1
            yield f"dup_mmap: vm_area_dup(vma{mpnt.vid}) -> vma{tmp.vid}"
            yield from self.anon_vma_fork(t, tmp, mpnt)
            mm.vmas.append(tmp)  # vma_iter_bulk_store
            if tmp.file is not None:
                f = m.files[tmp.file]
                yield from self.down_write(t, f.i_mmap_rwsem, f"dup_mmap: i_mmap_lock_write(file{f.file_id})")
                f.i_mmap.insert(f.i_mmap.index(mpnt) + 1, tmp)
                yield from self.up_write(t, f.i_mmap_rwsem, f"dup_mmap: vma_interval_tree_insert_after vma{tmp.vid}, unlock")
            yield from self.copy_page_range(t, tmp, mpnt)
        yield from self.up_write(t, mm.mmap_lock, f"dup_mmap: mmap_write_unlock(mm{mm.mm_id})")
        yield from self.flush_tlb_mm_range(t, oldmm, 0, 0, True, False)  # flush_tlb_mm(oldmm)
        yield from self.up_write(t, oldmm.mmap_lock, f"dup_mmap: flush_tlb_mm done, mmap_write_unlock(mm{oldmm.mm_id})")

    # State (mmfuzz.ops.STATE), from the kernel source:
    # kernel/exit.c exit_mm; mm/mmap.c exit_mmap: unmap_vmas of every VMA (zap_pte_range, as
    # munmap), free_pgtables (pgtable, unlink_anon_vmas, unlink_file_vma), tlb_finish_mmu,
    # remove_vma
    @operation("exit", doc="exit of the CPU's process: exit_mm, and exit_mmap by the mm's last user",
               swarm=0.35,
               writes=("vma", "i_mmap", "pgtable", "pte.map:anon", "pte.map:file",
                       "folio.mapcount:anon", "folio.mapcount:file", "folio.dirty:file",
                       "folio.lru", "folio.refcount", "swap", "tlb.deferred"),
               reads=("pte.dirty:file", "pte.young", "swap", "tlb.deferred"))
    def exit(self, t: Task):
        """kernel/exit.c do_exit -> exit_mm: under mmap_read_lock, current->mm = NULL and
        enter_lazy_tlb (the CPU leaves the mm: its TLB entries of the mm are dropped and it
        leaves mm_cpumask, the lazy-TLB window being left out); mmap_read_unlock; mmput: the
        last user (mm_users reaches 0) runs exit_mmap. The CPU has no process afterwards."""
        m = self.m
        mm = t.mm
        cpu = m.cpus[t.cpu]
        yield from self.down_read(t, mm.mmap_lock, f"exit_mm: mmap_read_lock(mm{mm.mm_id})")
        cpu.mm_id = 0
        lo, hi = tlb_key(mm.mm_id, 0), tlb_key(mm.mm_id + 1, 0)
        for key in [k for k in cpu.tlb if lo <= k < hi]:
            del cpu.tlb[key]
        mm.cpumask.remove(t.cpu)
        mm.users -= 1
        last = mm.users == 0  # mmput's atomic_dec_and_test, folded into this step
        yield f"exit_mm: current->mm = NULL, enter_lazy_tlb: CPU{t.cpu} leaves mm{mm.mm_id} (mm_users {mm.users})"
        if not last:
            yield from self.up_read(t, mm.mmap_lock, "exit_mm: mmap_read_unlock, mmput", last=True)
            return
        yield from self.up_read(t, mm.mmap_lock, "exit_mm: mmap_read_unlock; mmput: last user -> exit_mmap")
        yield from self.exit_mmap(t, mm)

    def exit_mmap(self, t: Task, mm: Mm):
        """mm/mmap.c exit_mmap: under mmap_read_lock, tlb_gather_mmu_fullmm and unmap_vmas of
        every VMA; mmap_read_unlock; then under mmap_write_lock: free_pgtables (which
        write-locks each VMA and unlinks it from its anon_vmas and i_mmap), tlb_finish_mmu,
        tear_down_vmas (remove_vma), mmap_write_unlock. The VMA tree is emptied before
        free_pgtables here (mainline drops it after, but its floor and ceiling free every
        table anyway)."""
        yield from self.down_read(t, mm.mmap_lock, f"exit_mmap: mmap_read_lock(mm{mm.mm_id})")
        vmas = list(mm.vmas)
        tlb = yield from self.tlb_gather_mmu(t, mm, fullmm=True)
        yield from self.unmap_vmas(t, tlb, vmas, 0, self.m.ptrs_per_pte * self.m.npmds)
        yield from self.up_read(t, mm.mmap_lock, "exit_mmap: mmap_read_unlock")
        yield from self.down_write(t, mm.mmap_lock, f"exit_mmap: mmap_write_lock(mm{mm.mm_id})")
        mm.vmas = []
        yield from self.free_pgtables(t, tlb, vmas, mm_wr_locked=True)
        yield from self.tlb_finish_mmu(t, tlb)
        for vma in vmas:
            vma.detached = True  # tear_down_vmas: vma_mark_detached + remove_vma
        yield from self.up_write(t, mm.mmap_lock, "exit_mmap: tear_down_vmas, mmap_write_unlock", last=True)
