"""The fault paths retry where mainline retries, under schedules written out step by step.

mm/memory.c: every pte_offset_map_lock() may return NULL (the PMD went none: "retry the
fault"), pte_offset_map_lock re-checks pmd_same after taking the PTL, pmd_install re-checks
pmd_none under the PMD lock, and handle_pte_fault re-checks pte_same under the PTL. Each test
below drives one such interleaving and checks that the fault gives up cleanly (references
and locks released), that the next access succeeds, and that the trace shows the read that
decided it.

In mainline v6.12 a PMD under a VMA whose fault holds the VMA lock or mmap_lock goes none only
by khugepaged's retract_page_tables (file VMAs; not modelled), so the tests that need it
clear the PMD by hand between two steps, as that path would (pmd lock and PTL held, table
freed after the flush).
"""

from __future__ import annotations

from mmfuzz.kernels import resolve_kernel
from mmfuzz.model import Folio
from mmfuzz.run import Run, default_world

MAINLINE = resolve_kernel("mainline")
MM = 1


def new_run(**changes) -> Run:
    w = default_world()
    w.update(changes)
    return Run(MAINLINE, w)


def step_until(r: Run, cpu: int, text: str, limit: int = 40):
    """Step ``cpu`` until a step's label contains ``text``; return that step."""
    for _ in range(limit):
        st = r.apply(["step", cpu])
        assert st is not None, f"CPU{cpu} blocked before {text!r}"
        if text in st.text:
            return st
        assert r.m.cpus[cpu].task is not None, f"CPU{cpu} finished before {text!r}"
    raise AssertionError(f"no step {text!r} on CPU{cpu}")


def retract_table(r: Run, pmd_index: int) -> None:
    """What khugepaged's retract_page_tables does to a PTE table with no PTEs: pmd_clear under
    the PMD lock and the PTL, then (after the flush) free the table page."""
    m = r.m
    mm = m.mms[MM]
    table = mm.pmd[pmd_index]
    assert table is not None and all(p is None for p in table.ptes)
    assert table.ptl.owner is None and mm.page_table_lock.owner is None
    mm.pmd[pmd_index] = None
    m.free_pte_table(table)


def finish(r: Run, cpu: int) -> None:
    """Run ``cpu``'s operation to its end, delivering the flush IPIs it waits for."""
    while r.m.cpus[cpu].task is not None:
        if r.apply(["step", cpu]) is None:
            ipis = r.ipi_cpus()
            assert ipis, f"CPU{cpu} blocked on {r.m.cpus[cpu].task.wait.what}"
            r.apply(["ipi", ipis[0]])


def test_do_anonymous_page_retries_when_pte_offset_map_lock_finds_no_table():
    r = new_run()
    st = r.apply(["access", 1, 4, 1])                       # anon va 4, PMD 2 is none
    assert st.op == "fault"
    step_until(r, 1, "pmd_install: pmd_none = 1")           # the table is installed
    step_until(r, 1, "alloc_anon_folio")
    folio_pfn = int(r.trace[-1].text.split("pfn ")[1].split()[0])
    folio = r.m.frames[folio_pfn]
    retract_table(r, 2)
    st = r.apply(["step", 1])
    assert "pte_offset_map_lock va 0x4: pmd_none -> NULL" in st.text
    st = r.apply(["step", 1])
    assert "release pfn" in st.text
    finish(r, 1)
    assert isinstance(folio, Folio) and folio.freed        # the new folio was released
    assert r.m.mms[MM].pmd[2] is None
    # the access retries and now succeeds
    st = r.apply(["access", 1, 4, 1])
    assert st.op == "fault"
    finish(r, 1)
    st = r.apply(["access", 1, 4, 1])
    assert st.op != "fault" and "store" in st.text
    assert r.quiesce() is None


def test_finish_fault_returns_nopage_when_the_pmd_went_none():
    # a world whose file mapping starts at an empty PMD (2)
    r = new_run(prefault=[], vmas=[
        {"mm": 1, "start": 0, "end": 2, "file": None, "shared": False, "writable": True},
        {"mm": 1, "start": 4, "end": 6, "file": 1, "pgoff": 0, "shared": True, "writable": True},
    ])
    st = r.apply(["access", 2, 4, 0])                       # file read fault, PMD 2 none
    assert st.op == "fault"
    step_until(r, 2, "pmd_install: pmd_none = 1")
    retract_table(r, 2)
    st = r.apply(["step", 2])
    assert "finish_fault: pte_offset_map_lock va 0x4: pmd_none -> NULL" in st.text
    finish(r, 2)
    assert any("do_read_fault: folio_unlock" in s.text and "folio_put" in s.text for s in r.trace)
    folio = r.m.files[1].cache[0]
    assert folio.refcount == 1 and folio.mapcount == 0 and folio.locked is None
    assert r.quiesce() is None


def test_pte_offset_map_lock_rechecks_pmd_same_after_waiting_for_the_ptl():
    """CPU1 reads the PMD, waits for the PTL; the table is replaced meanwhile; CPU1 takes the
    old table's PTL, sees !pmd_same, unlocks and looks again."""
    r = new_run()
    m = r.m
    mm = m.mms[MM]
    st = r.apply(["access", 1, 4, 1])
    step_until(r, 1, "alloc_anon_folio")
    old = mm.pmd[2]
    old.ptl.owner = 999                                     # someone holds the PTL
    assert r.apply(["step", 1]) is None                     # blocked on it
    new = m.alloc_pte_table(MM, 2)
    mm.pmd[2] = new                                         # the PMD changed while it spun
    old.ptl.owner = None
    st = r.apply(["step", 1])
    assert "!pmd_same after spin_lock, unlock, again" in st.text
    st = r.apply(["step", 1])
    assert f"PTL(table {new.tid})" in st.text
    finish(r, 1)
    assert new.ptes[0] is not None and old.ptes[0] is None


def test_two_faults_race_to_install_a_table_and_the_loser_frees_its_own():
    """Both see pmd_none locklessly and allocate; the second pmd_install finds the PMD
    populated ("Has another populated it ?") and pte_free's its table."""
    r = new_run()
    r.apply(["access", 1, 4, 1])
    r.apply(["access", 2, 5, 0])
    a = step_until(r, 1, "pte_alloc: pmd_none(*pmd) va 0x4 = 1")
    b = step_until(r, 2, "pte_alloc: pmd_none(*pmd) va 0x5 = 1")
    assert a.index < b.index
    step_until(r, 1, "pmd_install: pmd_none = 1")
    st = step_until(r, 2, "pmd_install: pmd_none = 0")
    assert "installed meanwhile" in st.text
    st = r.apply(["step", 2])
    assert "pte_free" in st.text
    finish(r, 1)
    finish(r, 2)
    assert r.quiesce() is None


def test_handle_pte_fault_gives_up_when_pte_same_fails_under_the_ptl():
    """CPU1's write fault reads the read-only PTE of va 2 locklessly; before it takes the PTL,
    CPU2's fault makes the PTE writable; CPU1's pte_same re-check fails and it returns."""
    r = new_run()
    # map va 2 read-only first (a load)
    st = r.apply(["access", 1, 2, 0])
    finish(r, 1)
    r.apply(["access", 1, 2, 1])                            # store: W fault on the R/O PTE
    step_until(r, 1, "ptep_get_lockless = pfn")
    r.apply(["access", 2, 2, 1])                            # CPU2 stores too
    finish(r, 2)
    st = r.apply(["step", 1])
    assert "pte_same(orig) = 0" in st.text
    st = r.apply(["step", 1])
    assert "PTE changed, unlock" in st.text
    finish(r, 1)
    st = r.apply(["access", 1, 2, 1])
    assert st.op != "fault"
    assert r.quiesce() is None


def test_wp_page_copy_holds_a_reference_on_the_old_folio_while_unlocked():
    """do_wp_page takes folio_get before dropping the PTL for the copy (mm/memory.c: "Ok, we
    need to copy. Oh, well.. if (folio) folio_get(folio)"); wp_page_copy drops both the PTE's
    reference and that one at the end."""
    w = default_world()
    w["vmas"] = w["vmas"] + [{"mm": 1, "start": 6, "end": 8, "file": 1, "pgoff": 2,
                              "shared": False, "writable": True}]
    r = Run(MAINLINE, w)
    st = r.apply(["access", 1, 6, 0])                       # private file page mapped R/O
    finish(r, 1)
    folio = r.m.files[1].cache[2]
    assert folio.mapcount == 2 or folio.mapcount == 1
    before = folio.refcount
    r.apply(["access", 1, 6, 1])                            # write: COW in do_wp_page
    st = step_until(r, 1, "do_wp_page: copy needed")
    assert f"folio_get(pfn {folio.pfn})" in st.text and folio.refcount == before + 1
    finish(r, 1)
    assert folio.refcount == before - 1                     # the PTE's reference went too
    assert r.quiesce() is None
