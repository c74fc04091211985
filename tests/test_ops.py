"""Each kernel operation run alone (serially, to completion) on mainline, with concrete
assertions on the machine state it leaves behind.

The default world: 3 CPUs of mm1; file1 (4 pages) mapped shared at va 0x0-0x3, anon at
0x4-0x5; 2 PTEs per table; CPU0 prefaulted stores to va 0 and 1 (versions v1 and v2), so
both are mapped W+D by PTE table 1 and cached W+D in CPU0's TLB.
"""

from __future__ import annotations

import random

import pytest

from mmfuzz.kernels import resolve_kernel
from mmfuzz.model import Folio, PteTable, tlb_key
from mmfuzz.ops import Ctx, get as get_op, names as op_names
from mmfuzz.run import Run, default_world

MAINLINE = resolve_kernel("mainline")
MM = 1
FILE = 1


# ----------------------------------------------------------------------------- helpers
def new_run() -> Run:
    return Run(MAINLINE, default_world())


def run_op(r: Run, cpu: int, op: str, *args):
    """Start ``op`` on ``cpu`` and drain to completion; return the finished Task."""
    step = r.apply(["start", cpu, op, *args])
    assert step is not None, f"start {op} not enabled"
    task = r.m.cpus[cpu].task
    assert task is not None and task.name == op
    r.drain()
    assert r.m.cpus[cpu].task is None
    assert not r.busy()
    assert r.violation is None, r.violation
    return task


def access(r: Run, cpu: int, vpn: int, write: bool):
    """One user access; on a page fault run handle_mm_fault to completion and retry the access
    once (unless the fault raised SIGSEGV). Returns (fault task or None, final Step)."""
    step = r.apply(["access", cpu, vpn, int(write)])
    assert step is not None
    if step.op != "fault":
        assert r.violation is None, r.violation
        return None, step
    task = r.m.cpus[cpu].task
    assert task is not None and task.name == "fault"
    r.drain()
    assert r.violation is None, r.violation
    if task.result is not None:
        return task, step
    step2 = r.apply(["access", cpu, vpn, int(write)])
    assert step2 is not None and step2.op != "fault", step2.text
    assert r.violation is None, r.violation
    return task, step2


def pte_of(r: Run, vpn: int):
    table, slot = r.m.pte_lookup(r.m.mms[MM], vpn)
    return None if table is None else table.ptes[slot]


def cached(r: Run, index: int) -> Folio | None:
    return r.m.files[FILE].cache.get(index)


def tlb_entries(r: Run, vpn: int) -> list:
    key = tlb_key(MM, vpn)
    return [c.tlb[key] for c in r.m.cpus if key in c.tlb]


def trace_texts(r: Run, since: int = 0) -> list[str]:
    return [s.text for s in r.trace[since:]]


def any_text(r: Run, needle: str, since: int = 0) -> bool:
    return any(needle in t for t in trace_texts(r, since))


def page_cache_only(folio: Folio) -> bool:
    return folio.mapcount == 0 and folio.refcount == 1 and not folio.freed


# -------------------------------------------------------------------- initial state
def test_prefault_state():
    r = new_run()
    m = r.m
    table = m.mms[MM].pmd[0]
    assert isinstance(table, PteTable) and m.frames[table.pfn] is table
    for vpn, version in ((0, 1), (1, 2)):
        folio = cached(r, vpn)
        pte = pte_of(r, vpn)
        assert pte is not None and pte.pfn == folio.pfn
        assert pte.write and pte.dirty and not pte.special
        assert folio.mapcount == 1 and folio.refcount == 2  # PTE + page cache
        assert folio.dirty and folio.data == version
        assert m.expected[(FILE, vpn)] == version
        e = m.cpus[0].tlb[tlb_key(MM, vpn)]
        assert e.pfn == folio.pfn and e.write and e.dirty
    assert m.files[FILE].disk == [0, 0, 0, 0]
    assert r.quiesce() is None


# --------------------------------------------------------------------------- munmap
def test_munmap_dirty_shared_file_page_loses_nothing():
    r = new_run()
    m = r.m
    mm = m.mms[MM]
    _, st = access(r, 0, 0, True)          # store v3 through the cached W+D entry
    assert "v3" in st.text
    f0, f1 = cached(r, 0), cached(r, 1)
    table = mm.pmd[0]
    old_vma = mm.find_vma(0)

    task = run_op(r, 1, "munmap", 0, 2)
    assert task.result is None
    # the VMA for [0, 2) is gone; the split tail [2, 4) is still mapped and in i_mmap
    assert mm.find_vma(0) is None and mm.find_vma(1) is None
    assert old_vma.detached and old_vma not in m.files[FILE].i_mmap
    tail = mm.find_vma(2)
    assert (tail.start, tail.end, tail.pgoff) == (2, 4, 2) and tail in m.files[FILE].i_mmap
    # no VMA overlaps PMD 0 any more: its PTE table is freed
    assert mm.pmd[0] is None
    assert table.freed and m.frames[table.pfn] is None and table.pfn in m.free_pfns
    # folios: mapcount/refcount back to page-cache-only, dirtiness preserved in PG_dirty
    for folio, data in ((f0, 3), (f1, 2)):
        assert page_cache_only(folio)
        assert folio.dirty and folio.data == data
        assert m.frames[folio.pfn] is folio
    # no CPU translates the range any more
    assert tlb_entries(r, 0) == [] and tlb_entries(r, 1) == []
    assert mm.tlb_flush_pending == 0 and mm.mmap_lock.readers == [] and mm.mmap_lock.writer is None

    run_op(r, 0, "writeback", FILE)
    assert m.files[FILE].disk[:2] == [3, 2]
    assert not f0.dirty and not f1.dirty
    # the range is unmapped: touching it is a SIGSEGV
    task, _ = access(r, 2, 0, False)
    assert task is not None and task.result == "SIGSEGV"
    assert r.quiesce() is None


def test_munmap_partial_table_kept_while_vma_overlaps():
    r = new_run()
    m = r.m
    mm = m.mms[MM]
    table = mm.pmd[0]
    f0, f1 = cached(r, 0), cached(r, 1)
    run_op(r, 1, "munmap", 0, 1)
    # [1, 4) still overlaps PMD 0: the table stays, only slot 0 is cleared
    assert mm.pmd[0] is table and not table.freed and m.frames[table.pfn] is table
    assert pte_of(r, 0) is None
    assert pte_of(r, 1) is not None and pte_of(r, 1).pfn == f1.pfn
    assert page_cache_only(f0) and f0.dirty
    assert f1.mapcount == 1 and f1.refcount == 2
    assert tlb_entries(r, 0) == []
    assert mm.find_vma(0) is None and mm.find_vma(1).start == 1
    assert r.quiesce() is None
    assert m.files[FILE].disk[:2] == [1, 2]


def test_munmap_of_nothing_mapped():
    r = new_run()
    mm = r.m.mms[MM]
    before = [(v.start, v.end) for v in mm.vmas]
    run_op(r, 1, "munmap", 6, 2)
    assert [(v.start, v.end) for v in mm.vmas] == before
    assert any_text(r, "nothing mapped")


# ----------------------------------------------------------------- madvise_dontneed
def test_madvise_dontneed_dirty_shared_file_page():
    r = new_run()
    m = r.m
    mm = m.mms[MM]
    table = mm.pmd[0]
    folio = cached(r, 0)
    task = run_op(r, 1, "madvise_dontneed", 0, 1)
    assert task.result is None
    assert pte_of(r, 0) is None
    assert folio.dirty                      # the dirty PTE bit moved to PG_dirty
    assert page_cache_only(folio) and folio.data == 1
    assert tlb_entries(r, 0) == []
    # madvise keeps the VMA and (v6.12, no PT_RECLAIM) the PTE table
    assert mm.find_vma(0) is not None
    assert mm.pmd[0] is table and not table.freed
    # va 1 is untouched
    assert pte_of(r, 1).dirty and tlb_entries(r, 1)
    assert m.files[FILE].disk[0] == 0

    run_op(r, 2, "writeback", FILE)
    assert m.files[FILE].disk[:2] == [1, 2]
    assert not folio.dirty
    # a later load faults the same page-cache folio back in, read-only and clean
    task, st = access(r, 0, 0, False)
    assert task is not None
    pte = pte_of(r, 0)
    assert pte.pfn == folio.pfn and not pte.write and not pte.dirty
    assert "v1" in st.text
    assert r.quiesce() is None


def test_madvise_dontneed_anon_page_frees_folio_then_zero_page():
    r = new_run()
    m = r.m
    task, st = access(r, 0, 4, True)
    assert task is not None
    anon = m.frames[pte_of(r, 4).pfn]
    assert isinstance(anon, Folio) and anon.anon
    version = m.next_version - 1
    assert anon.data == version
    pfn = anon.pfn

    run_op(r, 1, "madvise_dontneed", 4, 1)
    assert pte_of(r, 4) is None
    assert anon.freed and m.frames[pfn] is None and pfn in m.free_pfns
    assert anon.mapcount == 0 and anon.refcount == 0
    assert tlb_entries(r, 4) == []

    task, st = access(r, 2, 4, False)
    assert task is not None
    pte = pte_of(r, 4)
    assert pte.special and pte.pfn == m.zero_pfn and not pte.write
    assert "v0" in st.text                  # the zero page reads as zeroes
    assert r.quiesce() is None


def test_madvise_dontneed_range_over_two_vmas():
    r = new_run()
    m = r.m
    access(r, 0, 4, True)
    anon = m.frames[pte_of(r, 4).pfn]
    f1 = cached(r, 1)
    run_op(r, 1, "madvise_dontneed", 1, 4)   # [1, 5): file tail + first anon page
    assert pte_of(r, 1) is None and pte_of(r, 4) is None
    assert anon.freed
    assert page_cache_only(f1) and f1.dirty
    assert pte_of(r, 0) is not None        # outside the range
    assert len(m.mms[MM].vmas) == 2
    assert r.quiesce() is None


# --------------------------------------------------------------------------- faults
def test_read_fault_shared_file_is_write_notify_then_wp_page_shared():
    r = new_run()
    m = r.m
    assert m.mms[MM].pmd[1] is None
    mark = len(r.trace)
    task, st = access(r, 0, 2, False)
    assert task is not None and task.result is None
    assert m.mms[MM].pmd[1] is not None      # pte_alloc installed a table
    folio = cached(r, 2)
    pte = pte_of(r, 2)
    assert pte.pfn == folio.pfn and not pte.write and not pte.dirty and not pte.special
    assert not folio.dirty and folio.mapcount == 1 and folio.refcount == 2
    assert folio.locked is None
    e = m.cpus[0].tlb[tlb_key(MM, 2)]
    assert not e.write
    assert any_text(r, "filemap_read_folio", mark)

    mark = len(r.trace)
    task, st = access(r, 0, 2, True)
    assert task is not None                  # store through a read-only PTE faults
    assert any_text(r, "wp_page_shared", mark) and any_text(r, "wp_page_reuse", mark)
    pte = pte_of(r, 2)
    assert pte.pfn == folio.pfn and pte.write and pte.dirty
    assert folio.dirty and folio.mapcount == 1 and folio.refcount == 2
    version = m.next_version - 1
    assert folio.data == version and m.expected[(FILE, 2)] == version
    e = m.cpus[0].tlb[tlb_key(MM, 2)]
    assert e.write and e.dirty
    assert r.quiesce() is None
    assert m.files[FILE].disk[2] == version


def test_write_fault_without_pte_is_do_shared_fault():
    r = new_run()
    m = r.m
    mark = len(r.trace)
    task, st = access(r, 1, 3, True)
    assert task is not None
    assert any_text(r, "do_shared_fault", mark) and any_text(r, "filemap_page_mkwrite", mark)
    assert not any_text(r, "wp_page_shared", mark)
    folio = cached(r, 3)
    pte = pte_of(r, 3)
    assert pte.pfn == folio.pfn and pte.write and pte.dirty
    assert folio.dirty and folio.mapcount == 1 and folio.refcount == 2 and folio.locked is None
    assert m.expected[(FILE, 3)] == folio.data == m.next_version - 1
    assert r.quiesce() is None


def test_anon_write_fault_allocates_exclusive_folio():
    r = new_run()
    m = r.m
    nfree = len(m.free_pfns)
    task, st = access(r, 0, 5, True)
    assert task is not None
    pte = pte_of(r, 5)
    folio = m.frames[pte.pfn]
    assert isinstance(folio, Folio) and folio.anon and folio.anon_exclusive
    assert folio.mapping is None
    assert pte.write and pte.dirty and not pte.special and pte.pfn != m.zero_pfn
    assert folio.mapcount == 1 and folio.refcount == 1
    assert folio.data == m.next_version - 1
    assert len(m.free_pfns) == nfree - 2     # one PTE table + one folio
    # an anon store is not file data: no expectation recorded
    assert all(k[0] == FILE and k[1] < 4 for k in m.expected)
    assert r.quiesce() is None


def test_store_to_zero_page_copies():
    r = new_run()
    m = r.m
    access(r, 0, 4, False)
    zpte = pte_of(r, 4)
    assert zpte.special and zpte.pfn == m.zero_pfn
    assert m.cpus[0].tlb[tlb_key(MM, 4)].pfn == m.zero_pfn
    mark = len(r.trace)
    task, st = access(r, 0, 4, True)
    assert task is not None
    assert any_text(r, "wp_page_copy", mark)
    pte = pte_of(r, 4)
    new = m.frames[pte.pfn]
    assert not pte.special and pte.pfn != m.zero_pfn and pte.write and pte.dirty
    assert isinstance(new, Folio) and new.anon and new.anon_exclusive
    assert new.mapcount == 1 and new.refcount == 1
    assert new.data == m.next_version - 1
    e = m.cpus[0].tlb[tlb_key(MM, 4)]
    assert e.pfn == new.pfn and e.write and e.dirty
    assert r.quiesce() is None


def test_store_to_anon_exclusive_readonly_reuses():
    """A read-only PTE of an exclusive anon folio is reused in place (wp_page_reuse)."""
    r = new_run()
    m = r.m
    access(r, 0, 5, True)
    table, slot = m.pte_lookup(m.mms[MM], 5)
    pte = table.ptes[slot]
    table.ptes[slot] = pte._replace(write=False)
    m.cpus[0].tlb.pop(tlb_key(MM, 5))
    mark = len(r.trace)
    task, _ = access(r, 0, 5, True)
    assert task is not None
    assert any_text(r, "wp_page_reuse", mark) and not any_text(r, "wp_page_copy", mark)
    assert pte_of(r, 5).pfn == pte.pfn and pte_of(r, 5).write


def test_fault_outside_vma_is_sigsegv():
    r = new_run()
    task, _ = access(r, 1, 7, True)
    assert task is not None and task.result == "SIGSEGV"
    assert r.m.mms[MM].pmd[3] is None
    assert r.m.mms[MM].mmap_lock.readers == []


# ------------------------------------------------------------------------ writeback
def test_writeback_cleans_ptes_and_a_store_redirties():
    r = new_run()
    m = r.m
    f0, f1 = cached(r, 0), cached(r, 1)
    task = run_op(r, 1, "writeback", FILE)
    assert m.files[FILE].disk == [1, 2, 0, 0]
    for vpn, folio in ((0, f0), (1, f1)):
        pte = pte_of(r, vpn)
        assert pte.pfn == folio.pfn and not pte.write and not pte.dirty
        assert not folio.dirty and not folio.writeback and not folio.wb_pending
        assert folio.locked is None
        assert folio.mapcount == 1 and folio.refcount == 2
        assert tlb_entries(r, vpn) == []     # ptep_clear_flush flushed CPU0 by IPI
    assert any_text(r, "IPI: flush_tlb_func")

    mark = len(r.trace)
    task, st = access(r, 2, 0, True)
    assert task is not None                  # read-only PTE: write-protect fault
    assert any_text(r, "wp_page_shared", mark)
    assert f0.dirty and pte_of(r, 0).write and pte_of(r, 0).dirty
    version = f0.data
    assert version == m.expected[(FILE, 0)] and version > 2
    run_op(r, 1, "writeback", FILE)
    assert m.files[FILE].disk[0] == version and not f0.dirty
    assert r.quiesce() is None


def test_writeback_of_clean_file_writes_nothing():
    r = new_run()
    m = r.m
    run_op(r, 0, "writeback", FILE)
    disk_before = list(m.files[FILE].disk)
    mark = len(r.trace)
    run_op(r, 0, "writeback", FILE)
    assert m.files[FILE].disk == disk_before
    assert not any_text(r, "device writes", mark)


# ----------------------------------------------------------------------- drop_cache
def test_drop_cache_refuses_mapped_folio():
    r = new_run()
    run_op(r, 0, "writeback", FILE)         # clean, but still mapped
    folio = cached(r, 0)
    assert not folio.dirty and folio.mapcount == 1
    run_op(r, 1, "drop_cache", FILE, 0)
    assert cached(r, 0) is folio and not folio.freed
    assert folio.refcount == 2 and folio.locked is None
    assert any_text(r, "kept")


def test_drop_cache_refuses_dirty_unmapped_folio():
    r = new_run()
    folio = cached(r, 0)
    run_op(r, 1, "madvise_dontneed", 0, 1)
    assert folio.dirty and folio.mapcount == 0
    run_op(r, 1, "drop_cache", FILE, 0)
    assert cached(r, 0) is folio and not folio.freed
    assert page_cache_only(folio) and folio.dirty
    assert r.quiesce() is None
    assert r.m.files[FILE].disk[0] == 1


def test_drop_cache_evicts_clean_unmapped_folio_and_refault_reads_disk():
    r = new_run()
    m = r.m
    f = m.files[FILE]
    access(r, 0, 0, True)                   # v3 into file page 0
    folio = cached(r, 0)
    run_op(r, 1, "madvise_dontneed", 0, 1)
    run_op(r, 1, "writeback", FILE)
    assert f.disk[0] == 3 and not folio.dirty
    pfn = folio.pfn
    run_op(r, 2, "drop_cache", FILE, 0)
    assert 0 not in f.cache
    assert folio.freed and folio.mapping is None
    assert m.frames[pfn] is None and pfn in m.free_pfns
    assert any_text(r, "evicted")

    mark = len(r.trace)
    task, st = access(r, 1, 0, False)
    assert task is not None
    assert any_text(r, "filemap_add_folio", mark) and any_text(r, "<- disk v3", mark)
    fresh = cached(r, 0)
    assert fresh is not folio and fresh.uid != folio.uid
    assert fresh.data == 3 and not fresh.dirty
    assert "v3" in st.text
    assert r.quiesce() is None


def test_drop_cache_of_uncached_index():
    r = new_run()
    run_op(r, 0, "drop_cache", FILE, 3)
    assert any_text(r, "not cached")
    assert 3 not in r.m.files[FILE].cache


# ----------------------------------------------------------------------------- mmap
def test_mmap_after_munmap_maps_again():
    r = new_run()
    m = r.m
    mm = m.mms[MM]
    run_op(r, 1, "munmap", 0, 4)
    assert mm.find_vma(0) is None and m.files[FILE].i_mmap == []
    task = run_op(r, 1, "mmap", 0)
    assert task.result is None
    vma = mm.find_vma(0)
    assert (vma.start, vma.end, vma.file, vma.shared) == (0, 4, FILE, True)
    assert vma in m.files[FILE].i_mmap
    assert [v.start for v in mm.vmas] == sorted(v.start for v in mm.vmas)
    # the dirty data survived the munmap in the page cache; a load sees it
    task, st = access(r, 2, 1, False)
    assert task is not None and task.result is None
    assert "v2" in st.text
    assert r.quiesce() is None
    assert m.files[FILE].disk[:2] == [1, 2]


def test_mmap_anon_after_munmap():
    r = new_run()
    m = r.m
    run_op(r, 0, "munmap", 4, 2)
    assert m.mms[MM].find_vma(4) is None
    run_op(r, 0, "mmap", 1)
    vma = m.mms[MM].find_vma(5)
    assert vma is not None and vma.file is None
    task, _ = access(r, 0, 5, True)
    assert task.result is None and m.frames[pte_of(r, 5).pfn].anon


@pytest.mark.parametrize("template", [0, 1])
def test_mmap_over_existing_vma_is_eexist(template):
    r = new_run()
    mm = r.m.mms[MM]
    before = [(v.vid, v.start, v.end) for v in mm.vmas]
    task = run_op(r, 1, "mmap", template)
    assert task.result == "EEXIST"
    assert [(v.vid, v.start, v.end) for v in mm.vmas] == before
    assert len(r.m.files[FILE].i_mmap) == 1
    assert mm.mmap_lock.writer is None


# ----------------------------------------------------------------------- clear_refs
def test_clear_refs_wrprotects_clears_soft_dirty_and_flushes():
    r = new_run()
    m = r.m
    assert pte_of(r, 0).soft_dirty and pte_of(r, 1).soft_dirty     # the prefault stores
    task, _ = access(r, 2, 2, False)                                # a read fault: not soft-dirty
    assert task is not None and not pte_of(r, 2).soft_dirty and not pte_of(r, 2).write
    run_op(r, 1, "clear_refs")
    for vpn in (0, 1, 2):
        pte = pte_of(r, vpn)
        assert not pte.write and not pte.soft_dirty
    assert pte_of(r, 0).dirty and pte_of(r, 1).dirty                # D (and PG_dirty) kept
    assert all(not c.tlb for c in m.cpus)                           # flush_tlb_mm: every CPU
    assert any_text(r, "ptep_modify_prot_start") and any_text(r, "flush_tlb_mm_range(mm1, all)")
    assert m.mms[MM].tlb_flush_pending == 0 and m.mms[MM].mmap_lock.writer is None
    # the next store faults (wp_page_shared) and its pte_mkdirty sets soft-dirty again
    task, st = access(r, 0, 0, True)
    assert task is not None and pte_of(r, 0).soft_dirty and pte_of(r, 0).write
    assert not pte_of(r, 1).soft_dirty
    assert r.quiesce() is None


def test_clear_refs_write_locks_each_vma_against_faults():
    """clear_refs takes mmap_write_lock, then write-locks each VMA (vm_flags_clear /
    PGWALK_WRLOCK). A fault that got the per-VMA lock first runs to completion and clear_refs'
    vma_start_write waits for it; a fault after the VMA is write-locked falls back to
    mmap_lock and waits for clear_refs."""
    r = new_run()
    assert r.apply(["start", 1, "clear_refs"]) is not None
    r.apply(["step", 1])                                   # mmap_write_lock taken
    assert r.m.mms[MM].mmap_lock.writer is not None
    step = r.apply(["access", 2, 3, 1])                    # va 3 not mapped: a fault
    assert step.op == "fault"
    st = r.apply(["step", 2])                              # mas_walk + vma_start_read
    assert "vma_start_read(vma1)" in st.text               # VMA not write-locked yet
    blocked = r.apply(["step", 1])                    # vma_start_write waits for it
    # a blocked lock attempt is a recorded step of its own (the reads before it ran)
    assert blocked is not None and blocked.text.split(" ")[0] in ("spins", "sleeps")
    assert 1 not in r.runnable_cpus()
    while r.m.cpus[2].task is not None:
        assert r.apply(["step", 2]) is not None
    st = r.apply(["step", 1])
    assert "vma_start_write" in st.text
    st = r.apply(["access", 0, 2, 1])                      # va 2: file page, not mapped yet
    assert st.op == "fault"
    st = r.apply(["step", 0])
    assert "vma_start_read(vma1) failed" in st.text        # write-locked: fall back
    blocked = r.apply(["step", 0])                    # mmap_read_lock waits
    # a blocked lock attempt is a recorded step of its own (the reads before it ran)
    assert blocked is not None and blocked.text.split(" ")[0] in ("spins", "sleeps")
    assert 0 not in r.runnable_cpus()
    r.drain()
    assert r.violation is None and not r.busy()


def test_clear_refs_anon_write_after_clear_reuses_and_marks_soft_dirty():
    r = new_run()
    access(r, 0, 4, True)
    pfn = pte_of(r, 4).pfn
    run_op(r, 1, "clear_refs")
    assert not pte_of(r, 4).write and not pte_of(r, 4).soft_dirty
    task, _ = access(r, 0, 4, True)
    assert task is not None and any_text(r, "wp_page_reuse")
    assert pte_of(r, 4).pfn == pfn and pte_of(r, 4).soft_dirty


def test_clear_refs_bug_leaves_writable_entry_and_store_skips_soft_dirty():
    bug = resolve_kernel("bug:clear-refs-softdirty-no-flush")
    r = Run(bug, default_world(), check=False)
    r.apply(["start", 1, "clear_refs"])
    r.drain()
    assert not pte_of(r, 0).write and not pte_of(r, 0).soft_dirty
    assert tlb_key(MM, 0) in r.m.cpus[0].tlb                # no flush: CPU0 keeps W+D
    st = r.apply(["access", 0, 0, 1])
    assert st.op != "fault" and "TLB hit WD" in st.text      # the store lands without a fault
    assert not pte_of(r, 0).soft_dirty                      # pagemap would say "not written"


# -------------------------------------------------------------------- IPI mechanics
def test_flush_waits_until_every_target_took_its_ipi():
    r = new_run()
    m = r.m
    r.apply(["start", 1, "madvise_dontneed", 0, 1])
    task = m.cpus[1].task
    for _ in range(50):
        if task.wait is not None:
            break
        step = r.apply(["step", 1])
        # the step that finds the flush not yet acknowledged is a step of its own, recorded
        assert step is not None and r.trace[-1] is step
    assert step.text == "waits for flush IPIs"
    assert task.wait is not None and task.wait.what == "waits for flush IPIs"
    assert 1 not in r.runnable_cpus()
    assert r.apply(["step", 1]) is None          # not enabled while waiting
    assert [c.cpu_id for c in m.cpus if c.ipi_queue] == [0, 2]
    assert r.ipi_cpus() == [0, 2]
    key = tlb_key(MM, 0)
    assert key in m.cpus[0].tlb                  # CPU0 still has the stale entry

    # an IRQs-off CPU cannot take the IPI and holds the flusher up
    m.cpus[0].irqs_off = True
    assert r.ipi_cpus() == [2] and r.apply(["ipi", 0]) is None
    m.cpus[0].irqs_off = False

    assert r.apply(["ipi", 0]) is not None
    assert key not in m.cpus[0].tlb
    assert not task.wait.cond() and 1 not in r.runnable_cpus()
    assert r.apply(["ipi", 2]) is not None
    assert task.wait.cond() and r.runnable_cpus() == [1]
    assert r.ipi_cpus() == []
    r.drain()
    assert r.violation is None and m.cpus[1].task is None


def test_flush_by_cpu_of_the_stale_entry_is_local():
    """The flushing CPU's own TLB is flushed at once; only the others get IPIs."""
    r = new_run()
    m = r.m
    r.apply(["start", 0, "madvise_dontneed", 0, 1])
    task = m.cpus[0].task
    for _ in range(50):
        if task.wait is not None or m.cpus[0].task is None:
            break
        r.apply(["step", 0])
    assert m.cpus[0].task is task and task.wait is not None
    assert tlb_key(MM, 0) not in m.cpus[0].tlb
    assert not m.cpus[0].ipi_queue and len(m.cpus[1].ipi_queue) == 1
    assert len(m.cpus[2].ipi_queue) == 1


def test_evict_drops_tlb_entry():
    r = new_run()
    key = tlb_key(MM, 1)
    assert r.apply(["evict", 1, 1]) is None      # CPU1 caches nothing
    assert r.apply(["evict", 0, 1]) is not None
    assert key not in r.m.cpus[0].tlb
    _, st = access(r, 0, 1, False)               # refill by page walk
    assert "TLB fill" in st.text and key in r.m.cpus[0].tlb


def test_start_needs_idle_cpu_and_known_op():
    r = new_run()
    assert r.apply(["start", 1, "nosuchop", 0]) is None
    assert r.apply(["start", 1, "munmap", 0]) is None        # wrong arity
    assert r.apply(["start", 1, "munmap", 0, 1]) is not None
    assert r.apply(["start", 1, "writeback", 1]) is None     # CPU1 is busy
    assert r.apply(["access", 1, 0, 0]) is None
    assert r.apply(["step", 9]) is None


# --------------------------------------------------------------------- quiescence
def _random_serial_actions(seed: int, n: int = 25) -> list[list]:
    rng = random.Random(seed)
    acts = []
    for _ in range(n):
        cpu = rng.randrange(3)
        kind = rng.choice(["access", "access", "access", "op"])
        if kind == "access":
            acts.append(["access", cpu, rng.randrange(6), rng.randrange(2)])
            continue
        # fork and exit need a CPU without a process and end one (tests/test_fork.py)
        op = rng.choice(sorted(o for o in op_names() if o not in ("fork", "exit")))
        # each operation's own declared argument domains (mmfuzz.ops)
        args = get_op(op).draw(lambda options, label: rng.choice(list(options)),
                               Ctx(default_world(), cpu, MM))
        acts.append(["start", cpu, op, *args])
    return acts


@pytest.mark.parametrize("seed", range(8))
def test_quiesce_clean_on_mainline_after_serial_sequence(seed):
    r = new_run()
    for act in _random_serial_actions(seed):
        if act[0] == "access":
            access(r, *act[1:3], bool(act[3]))
        else:
            run_op(r, act[1], act[2], *act[3:])
    assert r.violation is None
    assert r.quiesce() is None
    m = r.m
    # quiescence wrote every file back and dropped the clean unmapped cache
    for (file_id, index), want in m.expected.items():
        assert m.files[file_id].disk[index] == want
    assert not any(fo.dirty for fo in m.files[FILE].cache.values())
    # every folio left in the cache is mapped, or held by a GUP reference (a vmsplice'd pipe
    # page whose mapping was zapped cannot be dropped while the pipe holds it)
    held = [p.folio for p in m.pins.values()]
    assert all(fo.mapcount >= 1 or any(h is fo for h in held)
               for fo in m.files[FILE].cache.values())
    assert not r.busy()


def test_quiesce_writes_back_dirty_data():
    r = new_run()
    m = r.m
    access(r, 1, 0, True)
    access(r, 2, 3, True)
    assert m.files[FILE].disk == [0, 0, 0, 0]
    assert r.quiesce() is None
    assert m.files[FILE].disk == [m.expected[(FILE, i)] if (FILE, i) in m.expected else 0
                                  for i in range(4)]
    assert m.files[FILE].disk[3] != 0
