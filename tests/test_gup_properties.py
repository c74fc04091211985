"""The COW/GUP properties and no-freed-page-table-walk each fail on a hand-built bad state and
pass on the matching good one (the catalogued variants that trip them are in test_bugs.py and
test_cow_table.py)."""

from __future__ import annotations

from mmfuzz.kernel import Mainline
from mmfuzz.kernel.gup import FOLL_GET, FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE
from mmfuzz.model import Pin
from mmfuzz.run import Run, default_world
from properties.gup import (cow_isolation, gup_pin_coherent, gup_pin_coherent_quiescent,
                            no_write_to_readonly_file)
from properties.pgtable import no_freed_page_table_walk

PIN_RW = FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE


def two_mm_world() -> dict:
    w = default_world()
    w["cpu_mm"] = [1, 1, 2]
    w["vmas"].append({"mm": 2, "start": 4, "end": 6, "file": None, "shared": False,
                      "writable": True})
    return w


def readonly_file_world() -> dict:
    w = default_world()
    w["files"].append({"id": 2, "npages": 2, "readonly": True})
    w["npmds"] = 5
    w["vmas"].append({"mm": 1, "start": 8, "end": 10, "file": 2, "pgoff": 0, "shared": False,
                      "writable": False})
    return w


def fault(r: Run, cpu: int, vpn: int, write: int) -> None:
    st = r.apply(["access", cpu, vpn, write])
    if st.op == "fault":
        r.drain()
        r.apply(["access", cpu, vpn, write])
    assert r.violation is None


# ----------------------------------------------------------------------- cow-isolation
def test_cow_isolation_flags_a_parents_store_after_fork_seen_by_the_child():
    r = Run(Mainline, two_mm_world())
    o = r.m.oracle
    o.forked(1, 2, 10)                     # mm2 is mm1's child; fork returned at clock 10
    o.writer[50] = (1, 12)                 # the parent stored v50 after that
    o.writer[40] = (1, 8)                  # ... and v40 before it
    o.writer[60] = (2, 15)                 # the child stored v60
    load = lambda cpu, v: [("load", cpu, 4, 7, v)]
    assert cow_isolation(r.m, load(2, 50)).prop == "cow-isolation"
    assert cow_isolation(r.m, load(2, 40)) is None        # inherited at fork
    assert cow_isolation(r.m, load(0, 60)).prop == "cow-isolation"   # child -> parent
    assert cow_isolation(r.m, load(0, 50)) is None        # its own store
    assert cow_isolation(r.m, load(2, 999)) is None       # not an anon store: public
    # through a reference the child took (a pipe filled by vmsplice)
    v = cow_isolation(r.m, [("pin_load", 2, 4, 7, 50, 1)])
    assert v.prop == "cow-isolation" and v.facts["writer"] == 1 and v.facts["reader"] == 2


def test_cow_isolation_flags_a_held_reference_to_the_other_processs_store_unread():
    # the pipe may be read at any time, so the page it references holding a version its
    # holder may not see is the violation at the step that put it there, before any read
    r = Run(Mainline, two_mm_world())
    fault(r, 0, 4, 1)
    folio = r.m.frames[r.m.mms[1].pmd[2].ptes[0].pfn]
    o = r.m.oracle
    o.forked(1, 2, 10)
    o.writer[50] = (1, 12)                 # the parent's store after the fork
    o.writer[40] = (1, 8)                  # ... and one before it
    r.m.pins[1] = Pin(1, folio, 2, 4, FOLL_GET)   # the child's vmsplice reference
    folio.data = 40
    assert cow_isolation(r.m, [("store", 0, 4, folio.pfn, 40)]) is None
    folio.data = 50
    assert cow_isolation(r.m, []) is None         # only a step with events changes data
    v = cow_isolation(r.m, [("store", 0, 4, folio.pfn, 50)])
    assert v.prop == "cow-isolation" and v.facts == {
        "reader": 2, "writer": 1, "version": 50, "pfn": folio.pfn, "va": 4, "stored_at": 12}
    r.m.pins[1] = Pin(1, folio, 1, 4, FOLL_GET)   # the parent's own reference: its store
    assert cow_isolation(r.m, [("store", 0, 4, folio.pfn, 50)]) is None


def test_oracle_records_only_stores_into_anon_folios():
    r = Run(Mainline, default_world())
    fault(r, 0, 4, 1)                      # anon
    fault(r, 0, 0, 1)                      # shared file
    anon_v = r.m.frames[r.m.mms[1].pmd[2].ptes[0].pfn].data
    file_v = r.m.files[1].cache[0].data
    assert r.m.oracle.writer_of(anon_v)[0] == 1
    assert r.m.oracle.writer_of(file_v) is None


# --------------------------------------------------------------------- gup-pin-coherent
def _pinned_run():
    r = Run(Mainline, default_world())
    fault(r, 0, 4, 1)
    fault(r, 0, 5, 1)
    table = r.m.mms[1].pmd[2]
    a = r.m.frames[table.ptes[0].pfn]
    b = r.m.frames[table.ptes[1].pfn]
    return r, table, a, b


def test_gup_pin_coherent_flags_a_pin_on_another_page_than_the_mapped_one():
    r, table, a, b = _pinned_run()
    r.m.pins[1] = Pin(1, a, 1, 4, PIN_RW)
    assert gup_pin_coherent(r.m, []) is None
    table.ptes[0] = table.ptes[0]._replace(pfn=b.pfn)    # the address now maps another page
    v = gup_pin_coherent(r.m, [])
    assert v.prop == "gup-pin-coherent"
    assert v.facts["pinned"] == a.pfn and v.facts["mapped"] == b.pfn


def test_gup_pin_coherent_ignores_cleared_ptes_detached_pins_and_plain_references():
    r, table, a, b = _pinned_run()
    r.m.pins[1] = Pin(1, a, 1, 4, PIN_RW)
    saved = table.ptes[0]
    table.ptes[0] = None                                  # transiently cleared
    assert gup_pin_coherent(r.m, []) is None
    table.ptes[0] = saved._replace(pfn=b.pfn)
    r.m.pins[1] = Pin(1, a, 1, 4, FOLL_GET)               # a FOLL_GET reference need not follow
    assert gup_pin_coherent(r.m, []) is None
    r.m.pins[1] = Pin(1, a, 1, 4, PIN_RW)
    r.m.oracle.discards[99] = [1, ((4, 5),), 3, None]     # the user is unmapping the range
    assert gup_pin_coherent(r.m, []) is None


def test_gup_pin_coherent_quiescent_flags_a_pinned_page_whose_pte_is_gone():
    """At quiescence a none PTE is not transient: the next access maps a zero or new page
    (anon) or the page-cache folio (file), so a pinned anon page that lost its PTE while the
    user kept the range (reclaim's lazyfree discard without 6c8e2a256915) is incoherent."""
    r, table, a, b = _pinned_run()
    r.m.pins[1] = Pin(1, a, 1, 4, PIN_RW)
    assert gup_pin_coherent_quiescent(r.m) is None          # mapped: the step check's case
    table.ptes[0] = None
    v = gup_pin_coherent_quiescent(r.m)
    assert v.prop == "gup-pin-coherent"
    assert v.facts["pinned"] == a.pfn and v.facts["mapped"] is None and v.facts["va"] == 4
    r.m.pins[1] = Pin(1, None, 1, 4, FOLL_PIN | FOLL_LONGTERM)   # the zero page: mapped again
    assert gup_pin_coherent_quiescent(r.m) is None
    r.m.pins[1] = Pin(1, a, 1, 4, FOLL_GET)                 # a plain reference need not follow
    assert gup_pin_coherent_quiescent(r.m) is None
    r.m.pins[1] = Pin(1, a, 1, 4, PIN_RW)
    r.m.oracle.discards[99] = [1, ((4, 5),), 3, 7]          # the user discarded the range
    assert gup_pin_coherent_quiescent(r.m) is None


def test_gup_pin_coherent_quiescent_follows_the_page_cache_for_a_file_pin():
    r = Run(Mainline, default_world())
    fault(r, 0, 0, 0)
    table = r.m.mms[1].pmd[0]
    f0 = r.m.frames[table.ptes[0].pfn]
    r.m.pins[1] = Pin(1, f0, 1, 0, PIN_RW)
    table.ptes[0] = None              # reclaim unmapped it; the cache still holds the folio
    assert gup_pin_coherent_quiescent(r.m) is None
    del r.m.files[1].cache[0]         # a fault would read the page from disk into a new folio
    v = gup_pin_coherent_quiescent(r.m)
    assert v.prop == "gup-pin-coherent" and v.facts["mapped"] is None


# ------------------------------------------------------------ no-write-to-readonly-file
def test_no_write_to_readonly_file_flags_changed_page_cache_contents():
    r = Run(Mainline, readonly_file_world())
    fault(r, 0, 8, 0)                                     # read fault: page cache folio
    folio = r.m.files[2].cache[0]
    assert no_write_to_readonly_file(r.m, []) is None
    folio.data = 77
    v = no_write_to_readonly_file(r.m, [])
    assert v.prop == "no-write-to-readonly-file" and v.facts["file"] == 2
    folio.data = 0
    r.m.files[2].disk[1] = 78
    assert no_write_to_readonly_file(r.m, []).prop == "no-write-to-readonly-file"


def test_writable_files_are_not_checked():
    r = Run(Mainline, readonly_file_world())
    fault(r, 0, 0, 1)                                     # file1 is writable: its data changes
    assert no_write_to_readonly_file(r.m, []) is None


# ------------------------------------------------------------- no-freed-page-table-walk
def test_no_freed_page_table_walk_flags_the_walk_event():
    r = Run(Mainline, default_world())
    assert no_freed_page_table_walk(r.m, [("store", 0, 0, 1, 1)]) is None
    v = no_freed_page_table_walk(r.m, [("walk_freed_table", 1, 3, "gup_fast_pte_range")])
    assert v.prop == "no-freed-page-table-walk" and v.facts["table"] == 3


def one_violation_each() -> list:
    """One violation of each of these properties (for test_properties' coverage test)."""
    r = Run(Mainline, two_mm_world())
    r.m.oracle.forked(1, 2, 1)
    r.m.oracle.writer[50] = (1, 2)
    out = [cow_isolation(r.m, [("load", 2, 4, 7, 50)])]
    r, table, a, b = _pinned_run()
    r.m.pins[1] = Pin(1, a, 1, 4, PIN_RW)
    table.ptes[0] = table.ptes[0]._replace(pfn=b.pfn)
    out.append(gup_pin_coherent(r.m, []))
    r = Run(Mainline, readonly_file_world())
    r.m.files[2].disk[0] = 5
    out.append(no_write_to_readonly_file(r.m, []))
    out.append(no_freed_page_table_walk(r.m, [("walk_freed_table", 1, 3, "gup_fast_pte_range")]))
    return out


# ------------------------------------------------------------------ Dirty COW, by hand
def _dirty_cow_with_zap_at(kernel, k: int):
    """proc_mem_write on CPU0; after its k-th step, MADV_DONTNEED of the page runs to
    completion on CPU1; then everything drains. Returns (violated property, CPU0 steps)."""
    r = Run(kernel, readonly_file_world())
    fault(r, 0, 8, 0)                                      # the page-cache page, mapped R/O
    r.apply(["start", 0, "proc_mem_write", 8])
    steps = 0
    while r.m.cpus[0].task is not None and steps < k and r.violation is None:
        if _advance(r, 0) == 0:
            steps += 1
    if r.m.cpus[0].task is not None and r.violation is None:
        r.apply(["start", 1, "madvise_dontneed", 8, 1])
        while r.m.cpus[1].task is not None and r.violation is None:
            _advance(r, 1)
    r.drain()
    return (r.violation and r.violation.prop), len([s for s in r.trace if s.cpu == 0])


def _advance(r: Run, cpu: int) -> int:
    """Step ``cpu`` if it can go on, else let whoever it waits for: a pending IPI first,
    then the lowest other runnable CPU. Returns the CPU that acted."""
    if r.apply(["step", cpu]) is not None:
        return cpu
    for c in r.ipi_cpus():
        r.apply(["ipi", c])
        return c
    other = [c for c in r.runnable_cpus() if c != cpu]
    assert other, "nobody can run"
    r.apply(["step", other[0]])
    return other[0]


def test_dirty_cow_writes_the_page_cache_for_some_zap_point_and_mainline_never():
    """Every point at which MADV_DONTNEED can cut into the FOLL_FORCE write: the buggy
    kernel writes the read-only file at some, mainline at none."""
    from mmfuzz.kernels import resolve_kernel
    for name, want in (("bug:dirty-cow", True), ("mainline", False)):
        kernel = resolve_kernel(name)
        _, n = _dirty_cow_with_zap_at(kernel, 10 ** 6)
        props = {_dirty_cow_with_zap_at(kernel, k)[0] for k in range(n)}
        assert ("no-write-to-readonly-file" in props) == want, (name, props)
        assert props <= {None, "no-write-to-readonly-file"}
