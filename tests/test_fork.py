"""fork and exit on mainline, run alone or against one other operation, with concrete
assertions on what they leave behind (kernel/fork.c, mm/mmap.c dup_mmap and exit_mmap,
mm/memory.c copy_page_range)."""

from __future__ import annotations

from mmfuzz.kernel.gup import GUP_PIN_COUNTING_BIAS
from mmfuzz.kernels import resolve_kernel
from mmfuzz.model import tlb_key
from mmfuzz.run import Run, default_world

MAINLINE = resolve_kernel("mainline")


def fork_world(**changes) -> dict:
    """default_world plus a fourth CPU with no process; CPU0 has stored to file va 0, 1 and
    anon va 4."""
    w = default_world()
    w.update(ncpus=4, cpu_mm=[1, 1, 1, 0], prefault=[[0, 0, 1], [0, 1, 1], [0, 4, 1]])
    w.update(changes)
    return w


def pte(r: Run, mm_id: int, vpn: int):
    table = r.m.mms[mm_id].pmd[vpn // r.m.ptrs_per_pte]
    return None if table is None else table.ptes[vpn % r.m.ptrs_per_pte]


def run_op(r: Run, cpu: int, op: str, *args):
    assert r.apply(["start", cpu, op, *args]) is not None, f"{op} not enabled"
    r.drain()
    assert r.violation is None, r.violation
    return r


def store(r: Run, cpu: int, vpn: int):
    """One store, its fault run to completion, the store retried."""
    for _ in range(3):
        st = r.apply(["access", cpu, vpn, 1])
        if st.op != "fault":
            return st
        r.drain()
    raise AssertionError("store kept faulting")


def test_fork_shares_anon_pages_read_only_and_cow_separates_them():
    r = Run(MAINLINE, fork_world())
    anon = pte(r, 1, 4)
    folio = r.m.frames[anon.pfn]
    assert anon.write and folio.anon_exclusive and folio.mapcount == 1
    run_op(r, 1, "fork", 3)
    m = r.m
    assert m.cpus[3].mm_id == 2 and m.mms[2].cpumask == [3] and not m.cpus[3].reserved
    # the anon page is shared read-only, no longer exclusive; the shared file mapping has no
    # anon_vma, so vma_needs_copy skipped it (the child faults it in)
    assert not pte(r, 1, 4).write and pte(r, 2, 4).pfn == folio.pfn and not pte(r, 2, 4).write
    assert folio.mapcount == 2 and folio.refcount == 2 and not folio.anon_exclusive
    assert pte(r, 2, 0) is None and pte(r, 1, 0).write
    assert m.mms[1].write_protect_seq == 2                   # begun and ended: even again
    assert any("flush_tlb_mm_range(mm1, all)" in s.text for s in r.trace)
    assert not any(k >> 32 == 1 and (k & 0xffffffff) == 4 for k in m.cpus[0].tlb)
    # the child's store copies (wp_page_copy); the parent's then reuses (refcount 1)
    st = store(r, 3, 4)
    assert "store" in st.text and pte(r, 2, 4).pfn != folio.pfn and pte(r, 2, 4).write
    assert folio.mapcount == 1 and folio.refcount == 1
    store(r, 0, 4)
    assert pte(r, 1, 4).pfn == folio.pfn and pte(r, 1, 4).write and folio.anon_exclusive
    assert any("wp_page_reuse" in s.text for s in r.trace)
    assert r.quiesce() is None


def test_fork_copies_a_possibly_pinned_exclusive_page_for_the_child():
    """copy_present_ptes: folio_try_dup_anon_rmap_pte fails for a PG_anon_exclusive folio
    that may be pinned; copy_pte_range drops the PTLs, preallocates, and copy_present_page
    gives the child its own copy. The parent's PTE stays writable and its folio exclusive."""
    r = Run(MAINLINE, fork_world())
    folio = r.m.frames[pte(r, 1, 4).pfn]
    folio.refcount += GUP_PIN_COUNTING_BIAS   # what a FOLL_PIN (say io_uring fixed buffer) leaves behind
    run_op(r, 1, "fork", 3)
    texts = [s.text for s in r.trace]
    assert any("copy_present_page -EAGAIN" in t for t in texts)
    assert any("folio_prealloc" in t for t in texts)
    child = pte(r, 2, 4)
    assert child.pfn != folio.pfn and child.write and child.dirty
    assert pte(r, 1, 4).write and folio.anon_exclusive and folio.mapcount == 1
    assert r.m.frames[child.pfn].data == folio.data
    folio.refcount -= GUP_PIN_COUNTING_BIAS   # unpin
    assert r.quiesce() is None


def test_exit_of_the_child_tears_its_mm_down():
    r = Run(MAINLINE, fork_world())
    folio = r.m.frames[pte(r, 1, 4).pfn]
    run_op(r, 1, "fork", 3)
    store(r, 3, 0)                                           # the child maps a file page
    run_op(r, 3, "exit")
    m = r.m
    mm = m.mms[2]
    assert m.cpus[3].mm_id == 0 and mm.users == 0 and mm.cpumask == []
    assert mm.vmas == [] and all(t is None for t in mm.pmd)
    assert not any(v.mm_id == 2 for v in m.files[1].i_mmap)   # unlink_file_vma
    assert folio.mapcount == 1 and folio.refcount == 1         # zap dropped the child's share
    assert all(k >> 32 != 2 for c in m.cpus for k in c.tlb)
    texts = [s.text for s in r.trace]
    assert any("tlb_gather_mmu" in t for t in texts) and any("unlink_anon_vmas" in t for t in texts)
    # the CPU can take a new child
    assert r.apply(["access", 3, 4, 0]) is None               # no process: no user access
    run_op(r, 0, "fork", 3)
    assert m.cpus[3].mm_id == 3
    assert r.quiesce() is None


def test_exit_of_one_thread_leaves_the_mm_to_the_others():
    r = Run(MAINLINE, fork_world())
    run_op(r, 2, "exit")
    m = r.m
    assert m.cpus[2].mm_id == 0 and m.mms[1].users == 2 and m.mms[1].cpumask == [0, 1]
    assert pte(r, 1, 4) is not None                           # no exit_mmap
    assert not any("exit_mmap" in s.text for s in r.trace)
    assert r.quiesce() is None


def test_a_cpu_without_a_process_runs_only_kernel_threads():
    r = Run(MAINLINE, fork_world())
    assert r.apply(["access", 3, 4, 1]) is None
    assert r.apply(["start", 3, "clear_refs"]) is None
    assert r.apply(["start", 3, "fork", 3]) is None
    assert r.apply(["start", 1, "fork", 2]) is None           # CPU2 runs a process
    assert r.apply(["start", 3, "writeback", 1]) is not None  # a kernel thread may run there
    r.drain()
    assert r.apply(["start", 1, "fork", 3]) is not None
    assert r.apply(["start", 2, "fork", 3]) is None           # reserved by the first fork
    r.drain()
    assert r.quiesce() is None


def test_a_fault_under_the_per_vma_lock_runs_while_fork_write_locks_another_vma():
    """dup_mmap write-locks the parent's VMAs one by one under mmap_write_lock. A fault on a
    VMA it has not reached yet takes that VMA's read lock (lock_vma_under_rcu) and runs while
    the first VMA is write-locked; fork's vma_start_write of the second VMA then waits for
    that fault to finish. A fault on the write-locked VMA falls back to mmap_lock and waits."""
    r = Run(MAINLINE, fork_world())
    m = r.m
    mm = m.mms[1]
    file_vma, anon_vma = mm.vmas
    r.apply(["start", 1, "fork", 3])
    while not any("vma_start_write(vma1)" in s.text for s in r.trace):
        r.apply(["step", 1])
    assert file_vma.vm_lock_seq == mm.mm_lock_seq and mm.mmap_lock.writer is not None
    st = r.apply(["access", 2, 5, 1])                        # anon va 5: not mapped yet
    assert st.op == "fault"
    st = r.apply(["step", 2])                                # mas_walk + vma_start_read
    assert "vma_start_read(vma2)" in st.text and not st.text.endswith("failed")
    assert anon_vma.vm_lock.readers == [m.cpus[2].task.tid]
    # the fault proceeds under the VMA lock while vma1 is write-locked
    for _ in range(4):
        assert r.apply(["step", 2]) is not None
    # fork reaches vma2: vma_start_write waits for the fault's read lock
    while r.apply(["step", 1]) is not None:
        pass
    assert "vm_lock(vma2)" in m.cpus[1].task.wait.what
    while m.cpus[2].task is not None:
        assert r.apply(["step", 2]) is not None
    assert pte(r, 1, 5) is not None and pte(r, 1, 5).write
    # a fault on the write-locked vma1 falls back to mmap_lock and waits for fork
    st = r.apply(["access", 0, 2, 1])
    assert st.op == "fault"
    st = r.apply(["step", 0])
    assert "vma_start_read(vma1) failed" in st.text
    blocked = r.apply(["step", 0])
    # a blocked lock attempt is a recorded step of its own (the reads before it ran)
    assert blocked is not None and blocked.text.split(" ")[0] in ("spins", "sleeps")
    assert 0 not in r.runnable_cpus()
    r.drain()
    assert m.cpus[3].mm_id == 2 and pte(r, 2, 5) is not None   # fork copied the new page
    assert r.quiesce() is None


# ------------------------------------------------------- do_wp_page's reuse rules -------
def _cve_2020_29374(kernel):
    """fork; the child takes a R/O reference to the shared anon page (what vmsplice's FOLL_GET
    leaves: one more refcount, no pin) and unmaps it; the parent writes. Returns (the page,
    the parent's PTE after the write)."""
    from mmfuzz.kernels import resolve_kernel as rk
    r = Run(rk(kernel) if isinstance(kernel, str) else kernel, fork_world())
    folio = r.m.frames[pte(r, 1, 4).pfn]
    run_op(r, 1, "fork", 3)
    folio.refcount += 1                                       # the pipe's reference
    run_op(r, 3, "munmap", 4, 2)
    assert folio.mapcount == 1 and folio.refcount == 2
    store(r, 0, 4)
    return r, folio, pte(r, 1, 4)


def test_mainline_copies_a_shared_page_the_pipe_still_references():
    r, folio, p = _cve_2020_29374("mainline")
    assert p.pfn != folio.pfn and p.write                    # wp_page_copy: refcount 2 > 1
    folio.refcount -= 1
    assert r.quiesce() is None


def test_mapcount_reuse_rule_writes_into_the_page_the_pipe_reads():
    from mmfuzz.kernels import WpReuseMapcount
    r, folio, p = _cve_2020_29374(WpReuseMapcount)
    assert p.pfn == folio.pfn and p.write                    # reused: the pipe sees the store
    assert folio.data != 0
    folio.refcount -= 1


def _pinned_then_write_protected(kernel):
    """An exclusive anon page with a R/W pin (FOLL_PIN | FOLL_WRITE: GUP_PIN_COUNTING_BIAS more
    refcount), then its PTE is write-protected (clear_refs skips pinned pages, pte_is_pinned,
    so the pin is raised after it); the process writes."""
    r = Run(kernel, fork_world())
    folio = r.m.frames[pte(r, 1, 4).pfn]
    run_op(r, 1, "clear_refs")
    folio.refcount += GUP_PIN_COUNTING_BIAS
    assert not pte(r, 1, 4).write
    store(r, 0, 4)
    return r, folio, pte(r, 1, 4)


def test_mainline_reuses_an_exclusive_pinned_page_on_a_write_fault():
    r, folio, p = _pinned_then_write_protected(MAINLINE)
    assert p.pfn == folio.pfn and p.write                    # PG_anon_exclusive: reuse
    folio.refcount -= GUP_PIN_COUNTING_BIAS
    assert r.quiesce() is None


def test_page_count_reuse_rule_copies_a_pinned_page_the_wrong_way():
    from mmfuzz.kernels import WpReusePageCount
    r, folio, p = _pinned_then_write_protected(WpReusePageCount)
    assert p.pfn != folio.pfn                                # copied: pin and PTE disagree
    assert folio.refcount >= GUP_PIN_COUNTING_BIAS and folio.mapcount == 0


def test_reuse_rule_variants_are_not_catalogued_and_resolve_by_name():
    from mmfuzz.kernels import BUGS, WpReuseMapcount, WpReusePageCount
    assert all(b.kernel not in (WpReuseMapcount, WpReusePageCount) for b in BUGS)
    for cls, own in ((WpReuseMapcount, ["name", "wp_can_reuse_anon_folio", "do_wp_page"]),
                     (WpReusePageCount, ["name", "wp_can_reuse_anon_folio"])):
        assert resolve_kernel(cls.name) is cls
        # they differ from mainline only in the reuse decision (v5.8's with do_wp_page's
        # sleep on the page lock when its trylock fails, which the decision needs held)
        assert [k for k in vars(cls) if not k.startswith("__")] == own


def test_a_split_anon_vma_keeps_its_anon_vma_and_fork_copies_both_halves():
    """munmap of a page in the middle splits the anon VMA; both parts keep the anon_vma
    (vm_area_dup + anon_vma_clone), so fork still copies the remaining part's PTEs."""
    w = fork_world(vmas=[
        {"mm": 1, "start": 0, "end": 2, "file": 1, "pgoff": 0, "shared": True, "writable": True},
        {"mm": 1, "start": 2, "end": 6, "file": None, "shared": False, "writable": True}],
        prefault=[[0, 2, 1], [0, 5, 1]])
    r = Run(MAINLINE, w)
    run_op(r, 1, "munmap", 3, 1)
    mm = r.m.mms[1]
    assert [(v.start, v.end) for v in mm.vmas] == [(0, 2), (2, 3), (4, 6)]
    assert mm.vmas[1].anon_vma is mm.vmas[2].anon_vma is not None
    run_op(r, 1, "fork", 3)
    assert pte(r, 2, 2).pfn == pte(r, 1, 2).pfn and pte(r, 2, 5).pfn == pte(r, 1, 5).pfn
    assert r.quiesce() is None


def test_accounting_requires_rmap_to_find_every_anon_mapping_after_fork():
    """Synthetic: a fork that does not clone the parent's anon_vma chain into the child's VMA
    leaves the shared anon folio mapped where rmap cannot see it; mainline is clean on the
    same schedule."""
    from tests.variants import ForkWithoutAnonVmaClone
    for kernel, bad in ((ForkWithoutAnonVmaClone, True), (MAINLINE, False)):
        r = Run(kernel, fork_world())
        run_op(r, 1, "fork", 3)
        v = r.quiesce()
        assert (v is not None and v.prop == "accounting" and "anon_vma" in v.why) == bad, v


def test_fuzzer_finds_the_fork_without_anon_vma_clone_and_leaves_mainline_clean():
    """From scratch, under a fixed seed: 158 runs on seed 1 on the merged model (11 before
    reclaim, mprotect and KSM joined; worlds with a CPU without a process and fork switched
    on in the swarm draw)."""
    from mmfuzz.explore import explore
    from mmfuzz.kernel import Mainline
    from tests.variants import ForkWithoutAnonVmaClone
    found, _ = explore(ForkWithoutAnonVmaClone, 1, runs_max=200)
    assert found is not None and found.prop == "accounting" and found.runs <= 158
    clean, stats = explore(Mainline, 1, runs_max=found.runs)
    assert clean is None and stats["runs"] == found.runs


def test_a_swarm_run_switches_fork_on_only_where_a_child_can_run():
    """ops.Operation.possible: a world whose every CPU runs a process has no CPU for a fork's
    child (the run refuses every fork there, an action wasted), so no swarm run of it switches
    fork on; a world with such a CPU does, at fork's declared share."""
    import random as _random
    from mmfuzz import ops as _ops
    from mmfuzz.explore import SwarmPolicy, random_world
    fork = _ops.get("fork")
    without = with_ = 0
    for i in range(3000):
        rng = _random.Random(f"possible:{i}")
        world = random_world(rng)
        pol = SwarmPolicy(rng, world)
        if 0 in world["cpu_mm"]:
            assert fork.possible(world)
            with_ += "fork" in pol.ops
        else:
            assert not fork.possible(world)
            assert "fork" not in pol.ops
            without += 1
    assert without > 1000 and with_ > 100
