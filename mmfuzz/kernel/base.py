"""Step protocol and locking primitives shared by every modelled kernel function.

A kernel operation is a generator. The code between two yields runs atomically; the string it
yields labels that atomic step (it is what the trace shows). A ``Wait`` yield blocks the task
until its condition holds; the scheduler never steps a blocked task, so acquiring a contended
lock costs no step. By convention a Wait is yielded only where no effect has happened since the
previous label, so "blocked" never hides a half-done step.
"""

from __future__ import annotations

from typing import Callable

from ..model import Folio, Machine, RwSem, SpinLock, Vma


class Last(str):
    """A label for an operation's final step: the scheduler completes the task in the same
    step, running whatever the operation does after this yield (it must not yield again)."""

    __slots__ = ()


class Wait:
    __slots__ = ("cond", "what")

    def __init__(self, cond: Callable[[], bool], what: str):
        self.cond = cond
        self.what = what


class Task:
    """A kernel operation in progress on one CPU (a syscall, a fault, a kernel thread)."""

    __slots__ = ("tid", "cpu", "name", "args", "gen", "wait", "mm", "result", "steps",
                 "observed", "locks", "tlb_ubc")

    def __init__(self, tid, cpu, name, args, mm):
        self.tid = tid
        self.cpu = cpu
        self.name = name
        self.args = args
        self.gen = None
        self.wait: Wait | None = None
        self.mm = mm          # the caller's mm for syscalls and faults; None for kthreads
        self.result = None
        self.steps = 0
        # (mm << 32 | vpn) -> clock when this task last released the PTL it held while it
        # looked at (or cleared) that PTE; used by no-stale-translation-after-return
        self.observed = {}
        self.locks = 0           # exclusive locks held now (spinlocks, rwsems for write,
                                 # folio locks); a downgrade to read drops it
        self.tlb_ubc = None      # current->tlb_ubc (model.TlbflushUnmapBatch), made on first use


class KernelBase:
    """Holds the machine and the configuration knobs; the subsystems are mixins of this."""

    #: name shown in traces and corpus files; set by the registry
    name = "mainline"

    def __init__(self, machine: Machine):
        self.m = machine

    # --- IRQs off: include/linux/irqflags.h ---------------------------------------------
    def local_irq_save(self, t: Task) -> None:
        """local_irq_save on the task's CPU: flush IPIs to it wait (Run.ipi_cpus), and an
        RCU-sched grace period cannot end while it lasts (the caller yields the step)."""
        cpu = self.m.cpus[t.cpu]
        cpu.irqs_off = True
        cpu.irq_section += 1

    def local_irq_restore(self, t: Task) -> str:
        """local_irq_restore on the task's CPU; every call_rcu (RcuCallback) that waited for no
        other reader than this section runs its callback now. Returns a note of what the
        callbacks freed for the caller's step label ("" if nothing)."""
        m = self.m
        cpu = m.cpus[t.cpu]
        cpu.irqs_off = False
        if not m.rcu_callbacks:
            return ""
        notes = []
        for cb in list(m.rcu_callbacks):
            if all(not m.cpus[c].irqs_off or m.cpus[c].irq_section != sec
                   for c, sec in cb.readers):
                m.rcu_callbacks.remove(cb)
                notes.append(self.tlb_remove_table_rcu(cb))
        return f" (grace period over: {'; '.join(notes)})" if notes else ""

    # --- spinlocks (PTL, page_table_lock) -------------------------------------------------
    def spin_lock(self, t: Task, lock: SpinLock, label: str):
        """include/linux/spinlock.h spin_lock (PTL, page_table_lock): spins; IRQs stay on."""
        if lock.owner is not None:
            yield Wait(lambda: lock.owner is None, f"spins on {lock.name}")
        assert lock.owner is None, lock.name
        lock.owner = t.tid
        t.locks += 1
        yield label

    def spin_lock_and(self, t: Task, lock: SpinLock, check: Callable[[], bool],
                      label: Callable[[bool], str]):
        """spin_lock, then in the same step the re-check the caller makes first under the lock
        (pte_same, pmd_same): the trace shows what the check read. Returns its result."""
        if lock.owner is not None:
            yield Wait(lambda: lock.owner is None, f"spins on {lock.name}")
        lock.owner = t.tid
        t.locks += 1
        ok = check()
        yield label(ok)
        return ok

    def spin_unlock(self, t: Task, lock: SpinLock, label: str):
        """include/linux/spinlock.h spin_unlock."""
        assert lock.owner == t.tid, f"{lock.name} released by a task that does not hold it"
        lock.owner = None
        t.locks -= 1
        yield label

    # --- rw semaphores (mmap_lock, i_mmap_rwsem) -----------------------------------------
    def down_read(self, t: Task, sem: RwSem, label: str):
        """kernel/locking/rwsem.c down_read (mmap_read_lock, i_mmap_lock_read): sleeps while
        a writer holds it (writer-preferring fairness is left out)."""
        if sem.writer is not None:
            yield Wait(lambda: sem.writer is None, f"sleeps on {sem.name} (read)")
        sem.readers.append(t.tid)
        yield label

    def up_read(self, t: Task, sem: RwSem, label: str, last: bool = False):
        """kernel/locking/rwsem.c up_read."""
        sem.readers.remove(t.tid)
        yield Last(label) if last else label

    def down_write(self, t: Task, sem: RwSem, label: str):
        """kernel/locking/rwsem.c down_write (mmap_write_lock, i_mmap_lock_write)."""
        if sem.writer is not None or sem.readers:
            yield Wait(lambda: sem.writer is None and not sem.readers,
                       f"sleeps on {sem.name} (write)")
        sem.writer = t.tid
        t.locks += 1
        yield label

    def up_write(self, t: Task, sem: RwSem, label: str, last: bool = False):
        """kernel/locking/rwsem.c up_write."""
        assert sem.writer == t.tid
        sem.writer = None
        t.locks -= 1
        if sem.mm is not None:
            sem.mm.mm_lock_seq += 1  # mmap_write_unlock -> vma_end_write_all
        yield Last(label) if last else label

    def downgrade_write(self, t: Task, sem: RwSem, label: str):
        """kernel/locking/rwsem.c downgrade_write (mmap_write_downgrade): the writer becomes a
        reader without letting another writer in between."""
        assert sem.writer == t.tid
        sem.writer = None
        sem.readers.append(t.tid)
        t.locks -= 1
        if sem.mm is not None:
            sem.mm.mm_lock_seq += 1  # mmap_write_downgrade -> vma_end_write_all
        yield label

    # --- per-VMA locks (include/linux/mmap_lock.h, CONFIG_PER_VMA_LOCK, v6.12) -----------
    def vma_start_write(self, t: Task, vma: Vma, label: str):
        """include/linux/mm.h vma_start_write (mmap_lock held for write): nothing if the VMA is
        already write-locked in this mmap_lock cycle (vm_lock_seq == mm_lock_seq); else
        down_write(vm_lock), which waits for the VMA's readers (faults under the per-VMA lock),
        vm_lock_seq = mm_lock_seq, up_write. The VMA stays write-locked until mmap_write_unlock
        or mmap_write_downgrade (vma_end_write_all)."""
        mm = self.m.mms[vma.mm_id]
        assert mm.mmap_lock.writer == t.tid, "mmap_assert_write_locked"
        if vma.vm_lock_seq == mm.mm_lock_seq:
            return
        sem = vma.vm_lock
        if sem.readers or sem.writer is not None:
            yield Wait(lambda: not sem.readers and sem.writer is None,
                       f"sleeps on {sem.name} (write)")
        vma.vm_lock_seq = mm.mm_lock_seq
        yield label

    def vma_start_read_now(self, t: Task, vma: Vma) -> bool:
        """include/linux/mm.h vma_start_read (v6.12), atomic here (the caller labels the step):
        fail if the VMA is write-locked (vm_lock_seq == mm_lock_seq, read locklessly), else
        down_read_trylock(vm_lock) (fails while a writer holds it) and re-check the sequence.
        Returns True with the VMA read-locked by ``t``."""
        mm = self.m.mms[vma.mm_id]
        if vma.vm_lock_seq == mm.mm_lock_seq or vma.vm_lock.writer is not None:
            return False
        vma.vm_lock.readers.append(t.tid)
        return True

    def vma_end_read_now(self, t: Task, vma: Vma) -> None:
        """include/linux/mm.h vma_end_read: up_read(vm_lock)."""
        vma.vm_lock.readers.remove(t.tid)

    # --- folio lock (PG_locked) ----------------------------------------------------------
    def folio_lock(self, t: Task, folio: Folio, label: str):
        """include/linux/pagemap.h folio_lock: sleeps until PG_locked is clear, then sets it."""
        if folio.locked is not None:
            yield Wait(lambda: folio.locked is None, f"sleeps on PG_locked of pfn {folio.pfn}")
        folio.locked = t.tid
        t.locks += 1
        yield label

    def folio_unlock_now(self, t: Task, folio: Folio) -> None:
        """mm/filemap.c folio_unlock: clear PG_locked (waking waiters is implicit)."""
        assert folio.locked == t.tid, f"pfn {folio.pfn} unlocked by a non-owner"
        folio.locked = None
        t.locks -= 1

    # --- references ---------------------------------------------------------------------
    def folio_put_now(self, folio: Folio) -> None:
        """include/linux/mm.h folio_put: drop a reference; the last one frees the folio."""
        assert folio.refcount > 0, f"refcount underflow on pfn {folio.pfn}"
        folio.refcount -= 1
        if folio.refcount == 0:
            self.m.free_folio(folio)

    def folio_mark_dirty_now(self, folio: Folio) -> None:
        """mm/page-writeback.c folio_mark_dirty -> filemap_dirty_folio: set PG_dirty (and the
        xarray DIRTY tag, which the model folds into PG_dirty). Anon folios: PG_dirty only."""
        folio.dirty = True
