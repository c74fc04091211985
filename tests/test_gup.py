"""GUP slow and fast, held pins and their users, IRQ-off sections: each alone on mainline, with
concrete assertions on the state left behind, and the races the GUP-fast protocol closes.

The default world: 3 CPUs of mm1; file1 (4 pages) mapped shared at va 0x0-0x3, anon at
0x4-0x5; 2 PTEs per table; CPU0 prefaulted stores to va 0 and 1.
"""

from __future__ import annotations

from mmfuzz.kernel import Mainline
from mmfuzz.kernel.gup import FOLL_GET, FOLL_PIN, FOLL_WRITE, GUP_PIN_COUNTING_BIAS
from mmfuzz.model import tlb_key
from mmfuzz.run import Run, default_world

MM = 1


def new_run(world=None) -> Run:
    return Run(Mainline, world or default_world())


def drain_op(r: Run, cpu: int, op: str, *args):
    assert r.apply(["start", cpu, op, *args]) is not None
    task = r.m.cpus[cpu].task
    r.drain()
    assert r.violation is None, r.violation
    return task


def store(r: Run, cpu: int, vpn: int, write: int = 1):
    """A user access, its fault run to completion, and the access again."""
    st = r.apply(["access", cpu, vpn, write])
    if st.op == "fault":
        r.drain()
        st = r.apply(["access", cpu, vpn, write])
    assert st.op != "fault" and r.violation is None, (st.text, r.violation)
    return st


def pte_of(r: Run, vpn: int, mm: int = MM):
    table, slot = r.m.pte_lookup(r.m.mms[mm], vpn)
    return None if table is None else table.ptes[slot]


def texts(r: Run, since: int = 0) -> list[str]:
    return [s.text for s in r.trace[since:]]


def step_until(r: Run, cpu: int, needle: str, limit: int = 60):
    for _ in range(limit):
        st = r.apply(["step", cpu])
        if st is not None and needle in st.text:
            return st
    raise AssertionError(f"CPU{cpu} never reached {needle!r}: {texts(r)[-5:]}")


# ------------------------------------------------------------------ IRQ-off sections
def test_gup_fast_with_irqs_off_delays_an_x86_flush_initiator():
    """GUP-fast's local_irq_save holds off the flush IPI: the initiator (madvise on CPU1)
    waits until CPU0 re-enables IRQs, takes the IPI, and only then can it go on."""
    r = new_run()
    m = r.m
    store(r, 0, 4)
    r.apply(["start", 0, "pin_user_pages", 4, 1, 1])
    step_until(r, 0, "local_irq_save")
    assert m.cpus[0].irqs_off
    r.apply(["start", 1, "madvise_dontneed", 0, 1])
    flusher = m.cpus[1].task
    for _ in range(60):
        if flusher.wait is not None:
            break
        r.apply(["step", 1])
    assert flusher.wait is not None and flusher.wait.what == "waits for flush IPIs"
    assert m.cpus[0].ipi_queue, "CPU0 maps mm1: the flush targets it"
    assert 0 not in r.ipi_cpus() and r.apply(["ipi", 0]) is None   # IRQs off: it waits
    assert r.apply(["ipi", 2]) is not None
    assert 1 not in r.runnable_cpus()                               # still waiting for CPU0
    step_until(r, 0, "local_irq_restore")
    assert not m.cpus[0].irqs_off and 0 in r.ipi_cpus()
    assert 1 not in r.runnable_cpus()
    assert r.apply(["ipi", 0]) is not None
    assert 1 in r.runnable_cpus()
    r.drain()
    assert r.violation is None and 1 in m.pins


def test_irqs_off_cpu_blocks_ipis_in_every_engine_view():
    r = new_run()
    r.apply(["start", 1, "madvise_dontneed", 0, 1])
    r.m.cpus[0].irqs_off = True
    for _ in range(40):
        r.apply(["step", 1])
    assert r.m.cpus[0].ipi_queue and 0 not in r.ipi_cpus()
    assert not r.enabled(["ipi", 0])


# -------------------------------------------------------------------------- GUP-fast
def test_gup_fast_pins_a_writable_anon_page_with_the_bias():
    r = new_run()
    store(r, 0, 4)
    folio = r.m.frames[pte_of(r, 4).pfn]
    drain_op(r, 1, "pin_user_pages", 4, 1, 1)
    pin = r.m.pins[1]
    assert pin.folio is folio and pin.flags & FOLL_PIN and pin.flags & FOLL_WRITE
    assert folio.refcount == 1 + GUP_PIN_COUNTING_BIAS
    t = texts(r)
    assert any("raw_read_seqcount" in x for x in t) and any("PMD and PTE unchanged" in x for x in t)
    assert not any("__get_user_pages" in x for x in t)    # no slow path needed


def test_gup_fast_backs_off_when_the_pte_changes_after_the_grab():
    """pin, then re-check: a PTE cleared between the read and the re-check makes GUP-fast
    drop its reference (gup_put_folio) and fall back to the slow path."""
    r = new_run()
    store(r, 0, 4)
    folio = r.m.frames[pte_of(r, 4).pfn]
    r.apply(["start", 0, "pin_user_pages", 4, 1, 1])
    step_until(r, 0, "try_grab_folio_fast")
    assert folio.refcount == 1 + GUP_PIN_COUNTING_BIAS
    table, slot = r.m.pte_lookup(r.m.mms[MM], 4)
    saved = table.ptes[slot]
    table.ptes[slot] = saved._replace(young=False)          # any change of the PTE value
    st = r.apply(["step", 0])
    assert "PMD or PTE changed, gup_put_folio" in st.text
    assert folio.refcount == 1
    r.drain()
    assert any("__get_user_pages_locked: mmap_read_lock" in x for x in texts(r))
    assert r.m.pins[1].folio is folio and folio.refcount == 1 + GUP_PIN_COUNTING_BIAS


def test_gup_fast_falls_back_for_the_zero_page_and_a_ro_pin_unshares_it():
    """The zero page is special: GUP-fast gives up; the slow path's gup_must_unshare
    (FOLL_LONGTERM R/O in a COW mapping) unshares it into an exclusive anon page mapped R/O."""
    r = new_run()
    store(r, 0, 5, write=0)                                   # maps the zero page
    assert pte_of(r, 5).special
    drain_op(r, 1, "pin_user_pages", 5, 0, 1)
    t = texts(r)
    assert any("gup_must_unshare -> -EMLINK" in x for x in t)
    pte = pte_of(r, 5)
    folio = r.m.frames[pte.pfn]
    assert not pte.special and not pte.write and folio.anon and folio.anon_exclusive
    assert r.m.pins[1].folio is folio
    # a later store reuses the exclusive page: the pin stays coherent
    store(r, 2, 5)
    assert pte_of(r, 5).pfn == folio.pfn and r.violation is None


def test_gup_fast_fails_when_fork_holds_write_protect_seq():
    """An odd write_protect_seq (fork copying) sends a FOLL_PIN GUP-fast to the slow path
    before it looks at the page tables; a change during the walk unpins and falls back."""
    r = new_run()
    store(r, 0, 4)
    r.m.mms[MM].write_protect_seq = 1
    r.apply(["start", 1, "pin_user_pages", 4, 1, 1])
    st = r.apply(["step", 1])
    assert "write_protect_seq) = 1" in st.text
    r.m.mms[MM].write_protect_seq = 2
    r.drain()
    assert not any("local_irq_save" in x for x in texts(r))
    assert 1 in r.m.pins

    r = new_run()
    store(r, 0, 4)
    folio = r.m.frames[pte_of(r, 4).pfn]
    r.apply(["start", 1, "pin_user_pages", 4, 1, 1])
    step_until(r, 1, "PMD and PTE unchanged")
    r.m.mms[MM].write_protect_seq += 2                       # a whole fork ran meanwhile
    r.apply(["step", 1])
    st = r.apply(["step", 1])
    assert "read_seqcount_retry" in st.text and "gup_fast_unpin_user_pages" in st.text
    r.drain()
    assert r.m.pins[1].folio is folio and folio.refcount == 1 + GUP_PIN_COUNTING_BIAS


def test_longterm_rw_pin_of_a_shared_file_mapping_is_refused():
    """gup_fast_folio_allowed sends it to the slow path, where check_vma_flags refuses it
    (writable_file_mapping_allowed: the mapping needs dirty tracking)."""
    r = new_run()
    task = drain_op(r, 1, "pin_user_pages", 0, 1, 1)
    assert task.result == "EFAULT" and not r.m.pins
    assert any("!gup_fast_folio_allowed" in x for x in texts(r))
    # a R/O long-term pin of the same page is fine
    drain_op(r, 1, "pin_user_pages", 0, 0, 1)
    assert r.m.pins[1].folio is r.m.files[1].cache[0]


# ------------------------------------------------------------------------ GUP slow
def test_slow_pin_faults_a_missing_page_in_under_mmap_lock():
    r = new_run()
    drain_op(r, 1, "pin_user_pages", 4, 1, 0)
    t = texts(r)
    assert t[1].startswith("__get_user_pages_locked: mmap_read_lock")
    assert any("faultin_page: handle_mm_fault va 0x4 (write)" in x for x in t)
    pte = pte_of(r, 4)
    folio = r.m.frames[pte.pfn]
    assert pte.write and folio.anon_exclusive and r.m.pins[1].folio is folio


def test_vmsplice_takes_a_plain_reference_and_unpin_puts_it():
    r = new_run()
    store(r, 0, 4)
    folio = r.m.frames[pte_of(r, 4).pfn]
    drain_op(r, 1, "vmsplice", 4)
    assert r.m.pins[1].flags == FOLL_GET and folio.refcount == 2
    drain_op(r, 1, "pin_read", 1)
    assert any("pin_read: pin 1" in x and f"v{folio.data}" in x for x in texts(r))
    drain_op(r, 1, "unpin", 1)
    assert not r.m.pins and folio.refcount == 1
    assert r.quiesce() is None


def test_pin_write_is_seen_by_the_mapping_and_unpin_dirties():
    r = new_run()
    store(r, 0, 4)
    folio = r.m.frames[pte_of(r, 4).pfn]
    folio.dirty = False
    drain_op(r, 1, "pin_user_pages", 4, 1, 1)
    drain_op(r, 1, "pin_write", 1)
    st = store(r, 2, 4, write=0)
    assert f"v{folio.data}" in st.text
    drain_op(r, 1, "unpin", 1)
    assert folio.dirty and folio.refcount == 1
    assert r.quiesce() is None


def test_missing_pin_is_a_one_step_no_op():
    r = new_run()
    for op in ("pin_read", "pin_write", "unpin"):
        st = r.apply(["start", 0, op, 2])
        assert st is not None
        r.drain()
        assert f"no" in texts(r)[-1] and r.m.cpus[0].task is None


def test_proc_mem_write_breaks_cow_of_a_read_only_private_anon_mapping():
    """FOLL_FORCE writes a !VM_WRITE private mapping only through an exclusive anon page
    (can_follow_write_pte): the zero page mapped there is copied first."""
    w = default_world()
    w["vmas"][1]["writable"] = False
    r = new_run(w)
    store(r, 0, 4, write=0)
    assert pte_of(r, 4).special
    drain_op(r, 1, "proc_mem_write", 4)
    pte = pte_of(r, 4)
    folio = r.m.frames[pte.pfn]
    assert not pte.write and folio.anon and folio.anon_exclusive and folio.dirty
    st = store(r, 0, 4, write=0)
    assert f"v{folio.data}" in st.text and folio.data > 0
    assert r.quiesce() is None


def test_accounting_counts_held_pins_at_quiescence():
    r = new_run()
    store(r, 0, 4)
    drain_op(r, 1, "pin_user_pages", 4, 1, 1)
    drain_op(r, 1, "vmsplice", 4)
    assert r.quiesce() is None
    folio = r.m.pins[1].folio
    assert folio.refcount == 1 + GUP_PIN_COUNTING_BIAS + 1


def test_munmap_detaches_a_pin_for_the_coherence_check():
    r = new_run()
    store(r, 0, 4)
    drain_op(r, 1, "pin_user_pages", 4, 1, 1)
    assert not r.m.oracle.pin_detached(r.m, r.m.pins[1])
    drain_op(r, 1, "munmap", 4, 2)
    assert r.m.oracle.pin_detached(r.m, r.m.pins[1])
    drain_op(r, 1, "mmap", 1)
    store(r, 0, 4)                       # a new page at the same address: no violation
    assert r.violation is None and r.quiesce() is None
    assert tlb_key(MM, 4) in r.m.cpus[0].tlb


def test_clear_refs_skips_a_pinned_writable_page_but_write_protects_others():
    """fs/proc/task_mmu.c pte_is_pinned: a R/W-pinned anon page stays writable."""
    r = new_run()
    store(r, 0, 4)
    store(r, 0, 5)
    drain_op(r, 1, "pin_user_pages", 4, 1, 1)
    drain_op(r, 1, "clear_refs")
    assert pte_of(r, 4).write and not pte_of(r, 5).write
    assert any("pte_is_pinned va 0x4 = 1" in x for x in texts(r))


def test_ro_pin_of_a_clear_refs_write_protected_exclusive_page_stays_coherent():
    """selftests cow.c "R/O GUP pin on R/O-mapped exclusive page" with clear_refs as the way to
    map the page R/O: the page stays PG_anon_exclusive, so the R/O pin needs no unshare, and
    the store afterwards reuses the page (mainline)."""
    for fast in (1, 0):
        r = new_run()
        store(r, 0, 4)
        pfn = pte_of(r, 4).pfn
        drain_op(r, 1, "clear_refs")
        assert not pte_of(r, 4).write and r.m.frames[pfn].anon_exclusive
        drain_op(r, 1, "pin_user_pages", 4, 0, fast)
        assert r.m.pins[1].folio.pfn == pfn
        store(r, 0, 4)
        assert pte_of(r, 4).pfn == pfn and r.violation is None
        drain_op(r, 2, "pin_read", 1)
        assert r.violation is None


def run_alone(r: Run, cpu: int, op: str, *args):
    """Start ``op`` on ``cpu`` and step only that CPU until it returns (it must never block)."""
    assert r.apply(["start", cpu, op, *args]) is not None
    for _ in range(200):
        if r.m.cpus[cpu].task is None:
            return
        assert r.apply(["step", cpu]) is not None, texts(r)[-3:]
    raise AssertionError(f"{op} on CPU{cpu} did not return")


def _gup_fast_against_table_free(kernel, flush: str) -> Run:
    """GUP-fast (CPU0) reads the PMD of va 0x4's table with IRQs off; munmap (CPU1) of the
    whole table then runs as far as it can (flush IPIs delivered where CPU2 takes them; CPU0
    takes none while its IRQs are off); then everything drains."""
    r = Run(kernel, dict(default_world(), tlb_flush=flush))
    store(r, 0, 4)
    drain_op(r, 1, "madvise_dontneed", 4, 2)  # the table stays, empty: munmap flushes
    r.apply(["start", 0, "pin_user_pages", 4, 1, 1])   # only for the freed table
    step_until(r, 0, "pmdp_get_lockless")
    r.apply(["start", 1, "munmap", 4, 2])
    for _ in range(200):                       # munmap as far as it can go
        if r.m.cpus[1].task is None or r.apply(["step", 1]) is None:
            if r.m.cpus[1].task is None or not r.apply(["ipi", 2]):
                break
    r.drain()
    return r


def test_a_table_gup_fast_may_hold_is_freed_only_after_its_walk():
    """Who keeps a PTE table alive under GUP-fast (IRQs off, PMD read, PTE not yet): with IPI
    flushes the flush itself waits for the walker, with hypercall flushes (a paravirt guest)
    only mainline's RCU table free does. The kernel before 9e52fc2b50de freed tables right
    after the flush: safe with IPIs, a freed-table walk with hypercalls. Freeing before the
    flush (FreeTablesBeforeFlush, also without RCU) is a freed-table walk either way."""
    from mmfuzz.kernels import GupFastPvFlushTableFree
    from .variants import FreeTablesBeforeFlush
    cases = [(Mainline, "ipi", None), (Mainline, "hypercall", None),
             (GupFastPvFlushTableFree, "ipi", None),
             (GupFastPvFlushTableFree, "hypercall", "no-freed-page-table-walk"),
             (FreeTablesBeforeFlush, "ipi", "no-freed-page-table-walk")]
    for kernel, flush, want in cases:
        r = _gup_fast_against_table_free(kernel, flush)
        assert (r.violation and r.violation.prop) == want, (kernel, flush)


def test_mainline_frees_the_table_when_gup_fast_enables_irqs():
    """With hypercall flushes munmap returns before GUP-fast has finished its walk (nothing
    waits for the IRQs-off CPU); the table waits in call_rcu, and the step of GUP-fast that
    ends its IRQs-off section ends the grace period and frees it."""
    r = Run(Mainline, dict(default_world(), tlb_flush="hypercall"))
    store(r, 0, 4)
    drain_op(r, 1, "madvise_dontneed", 4, 2)
    r.apply(["start", 0, "pin_user_pages", 4, 1, 1])
    step_until(r, 0, "pmdp_get_lockless")
    table = r.m.mms[MM].pmd[2]
    run_alone(r, 1, "munmap", 4, 2)            # returns: no flush waited for CPU0
    assert r.m.cpus[1].task is None and r.m.mms[MM].pmd[2] is None
    assert not table.freed and len(r.m.rcu_callbacks) == 1
    assert any("hypercall flush of CPU" in x for x in texts(r))
    assert any("the grace period waits for CPU[0]" in x for x in texts(r))
    step_until(r, 0, "local_irq_restore")
    assert table.freed and not r.m.rcu_callbacks
    assert "grace period over: tlb_remove_table_rcu: free PTE table" in texts(r)[-1]
    r.drain()
    assert r.violation is None


def test_hypercall_flush_needs_no_ipi_and_waits_for_no_irqs_off_cpu():
    """A paravirt flush_tlb_multi drops the remote TLB entries in the flusher's own step:
    no IPI is queued, and a CPU with IRQs off (GUP-fast) does not hold the flusher up."""
    r = Run(Mainline, dict(default_world(), tlb_flush="hypercall"))
    store(r, 0, 4)
    store(r, 2, 4)
    assert tlb_key(MM, 4) in r.m.cpus[2].tlb
    r.apply(["start", 2, "pin_user_pages", 0, 1, 1])
    step_until(r, 2, "local_irq_save")
    run_alone(r, 1, "madvise_dontneed", 4, 1)  # never blocked on CPU2
    assert r.m.cpus[2].irqs_off and tlb_key(MM, 4) not in r.m.cpus[2].tlb
    assert not any(c.ipi_queue for c in r.m.cpus)
    flushes, ipis, interrupted = r.m.cost["madvise_dontneed"]   # the cost record (--cost)
    assert flushes >= 1 and ipis == 0 and interrupted == 0
    r.drain()
    assert r.violation is None


def test_a_pin_taken_while_madvise_discards_its_range_need_not_follow_the_address():
    """The reference is taken (follow_page_pte) while MADV_DONTNEED runs, and the pin is handed
    over only after madvise returned and a store mapped a new page there: the user discarded
    that mapping while the pin was being taken, so the pin is not bound to it."""
    r = new_run()
    store(r, 0, 4)
    r.apply(["start", 1, "madvise_dontneed", 4, 2])
    step_until(r, 1, "mmap_read_lock")
    r.apply(["start", 2, "pin_user_pages", 4, 0, 0])
    step_until(r, 2, "try_grab_folio")
    step_until(r, 2, "follow_page_pte: pte_unmap_unlock")
    for _ in range(100):
        if r.m.cpus[1].task is None:
            break
        if r.apply(["step", 1]) is None:
            assert r.apply(["ipi", 0]) or r.apply(["ipi", 2])
    assert r.m.cpus[1].task is None and 2 in r.runnable_cpus()
    store(r, 1, 4)                                  # a new page at va 4
    r.drain()
    assert 1 in r.m.pins and r.m.pins[1].folio.pfn != pte_of(r, 4).pfn
    assert r.violation is None and r.quiesce() is None
