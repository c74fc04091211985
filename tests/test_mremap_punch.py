"""mremap (MREMAP_FIXED of a shared file range) and hole punching (fallocate PUNCH_HOLE), alone
on mainline with the state they leave behind, and CVE-2018-18281 (eb66ae030829 reverted):
the same schedule frees a page a CPU still translates on the variant and not on mainline.

The default world: 3 CPUs of mm1; file1 (4 pages) mapped shared at va 0x0-0x3, anon at
0x4-0x5; 2 PTEs per table, 4 tables (va 0x6-0x7 unmapped).
"""

from __future__ import annotations

from mmfuzz.kernel import Mainline
from mmfuzz.kernels import UNFOUND, MremapFlushTooLate, resolve_kernel
from mmfuzz.model import tlb_key
from mmfuzz.run import Run, default_world

from .test_gup import drain_op, pte_of, step_until, store

MM = 1


def new_run(kernel=Mainline, prefault=()) -> Run:
    w = default_world()
    w["prefault"] = [list(p) for p in prefault]
    return Run(kernel, w)


def load(r: Run, cpu: int, vpn: int):
    return store(r, cpu, vpn, 0)


# ------------------------------------------------------------------ mremap alone
def test_mremap_moves_the_ptes_and_the_vma():
    r = new_run()
    store(r, 0, 2)
    folio = r.m.frames[pte_of(r, 2).pfn]
    t = drain_op(r, 1, "mremap", 2, 2, 6)
    assert t.result == 6
    assert pte_of(r, 2) is None and pte_of(r, 3) is None
    moved = pte_of(r, 6)
    assert moved.pfn == folio.pfn and moved.dirty and moved.soft_dirty   # move_soft_dirty_pte
    mm = r.m.mms[MM]
    assert [(v.start, v.end, v.pgoff) for v in mm.vmas if v.file == 1] == [(0, 2, 0), (6, 8, 2)]
    assert sorted((v.start, v.pgoff) for v in r.m.files[1].i_mmap) == [(0, 0), (6, 2)]
    assert folio.mapcount == 1
    # the old address faults now (no VMA), the new one reads the page
    assert r.apply(["access", 0, 2, 0]).op == "fault"
    r.drain()
    assert r.violation is None
    assert mm.find_vma(2) is None


def test_mremap_flushes_the_old_address_before_it_drops_the_ptl():
    """Mainline (eb66ae030829): a present PTE moved -> flush_tlb_range of the old range
    before pte_unmap_unlock, so when the PTLs are dropped no CPU translates the old address."""
    r = new_run()
    load(r, 0, 2)
    assert tlb_key(MM, 2) in r.m.cpus[0].tlb
    assert r.apply(["start", 1, "mremap", 2, 1, 6]) is not None
    step_until(r, 1, "move_ptes: va 0x2 -> 0x6")
    st = r.apply(["step", 1])
    assert "flush_tlb_mm_range(mm1, [0x2-0x3))" in st.text
    r.apply(["ipi", 0])
    r.apply(["ipi", 2])
    st = step_until(r, 1, "move_ptes: pte_unmap_unlock")
    assert all(tlb_key(MM, 2) not in c.tlb for c in r.m.cpus)


def test_mremap_errors():
    r = new_run()
    assert drain_op(r, 0, "mremap", 0, 2, 1).result == "EINVAL"      # the ranges overlap
    assert drain_op(r, 0, "mremap", 6, 1, 0).result == "EFAULT"      # nothing mapped there
    assert drain_op(r, 0, "mremap", 3, 2, 6).result == "EFAULT"      # runs past the VMA
    t = drain_op(r, 0, "mremap", 4, 1, 6)                           # anon: not modelled
    assert t.result == "EINVAL"
    assert any("not modelled" in s.text for s in r.trace)


def test_mremap_fixed_unmaps_what_the_destination_held():
    r = new_run()
    store(r, 0, 4)                                   # an anon page at the destination
    anon = r.m.frames[pte_of(r, 4).pfn]
    load(r, 0, 0)
    drain_op(r, 1, "mremap", 0, 1, 4)
    assert anon.freed
    assert pte_of(r, 4).pfn == r.m.files[1].cache[0].pfn
    mm = r.m.mms[MM]
    assert mm.find_vma(4).file == 1 and mm.find_vma(5).file is None


# ------------------------------------------------------------------ hole punching alone
def test_punch_hole_unmaps_every_mm_drops_the_cache_and_zeroes_the_disk():
    w = default_world()
    w["ncpus"], w["cpu_mm"] = 3, [1, 1, 2]
    w["vmas"].append({"mm": 2, "start": 0, "end": 4, "file": 1, "pgoff": 0, "shared": True,
                      "writable": True})
    w["prefault"] = []
    r = Run(Mainline, w)
    store(r, 0, 1)
    load(r, 2, 1)
    drain_op(r, 0, "writeback", 1)
    assert r.m.files[1].disk[1] != 0
    folio = r.m.files[1].cache[1]
    drain_op(r, 1, "fallocate_punch_hole", 1, 1, 2)
    assert folio.freed and 1 not in r.m.files[1].cache
    assert pte_of(r, 1, 1) is None and pte_of(r, 1, 2) is None
    assert r.m.files[1].disk[1] == 0
    assert all(tlb_key(mm, 1) not in c.tlb for c in r.m.cpus for mm in (1, 2))
    # the hole reads as zeros
    st = load(r, 2, 1)
    assert st.text.endswith("v0 [TLB fill --]") or " v0 " in st.text
    assert r.violation is None


def test_punch_hole_keeps_private_cows():
    """even_cows 0: "hole-punching should not remove private COWed pages from the hole"."""
    w = default_world()
    w["vmas"][0] = dict(w["vmas"][0], shared=False)
    w["prefault"] = []
    r = Run(Mainline, w)
    store(r, 0, 1)                       # a COW: an anon folio in the private file VMA
    cow = r.m.frames[pte_of(r, 1).pfn]
    assert cow.anon
    load(r, 0, 2)                        # the page cache, mapped read-only
    drain_op(r, 1, "fallocate_punch_hole", 1, 0, 4)
    assert pte_of(r, 1).pfn == cow.pfn and not cow.freed
    assert pte_of(r, 2) is None


def test_a_fault_waits_for_the_punch_to_release_the_invalidate_lock():
    r = new_run()
    assert r.apply(["start", 1, "fallocate_punch_hole", 1, 0, 1]) is not None
    step_until(r, 1, "filemap_invalidate_lock")
    assert r.apply(["access", 0, 3, 0]).op == "fault"
    step_until(r, 0, "sleeps on invalidate_lock(file1) (read)")
    assert 3 not in r.m.files[1].cache
    r.drain()
    assert r.violation is None and 3 in r.m.files[1].cache


def test_a_pin_on_a_punched_page_is_detached_not_a_violation():
    """The page a R/O pin holds leaves the file; the pin keeps the page alive, and the next
    fault maps the hole's new page: the user discarded the range, so gup-pin-coherent holds."""
    r = new_run()
    load(r, 0, 0)
    t = drain_op(r, 0, "pin_user_pages", 0, 0, 0)   # R/O, the slow path
    pinned = r.m.pins[t.result].folio
    drain_op(r, 1, "fallocate_punch_hole", 1, 0, 1)
    assert not pinned.freed and pinned.mapping is None
    load(r, 0, 0)
    assert pte_of(r, 0).pfn != pinned.pfn
    drain_op(r, 2, "unpin", t.result)
    assert pinned.freed and r.violation is None


# ------------------------------------------------------------------ CVE-2018-18281
def _mremap_then_punch(kernel):
    """CPU0 loads va 2 (a clean, read-only PTE); CPU1 mremaps it to va 6 up to the drop of
    the old PTL; CPU2 punches file1[2] to the end; then everything drains."""
    r = new_run(kernel)
    load(r, 0, 2)
    assert r.apply(["start", 1, "mremap", 2, 1, 6]) is not None
    for _ in range(40):
        st = r.apply(["step", 1])
        if st is None or "pte_unmap_unlock" in st.text or "waits for flush IPIs" in st.text:
            break
    assert r.apply(["start", 2, "fallocate_punch_hole", 1, 2, 1]) is not None
    for _ in range(120):
        if r.violation is not None or r.m.cpus[2].task is None:
            break
        if r.apply(["step", 2]) is None:
            for c in (0, 1):
                if r.m.cpus[c].ipi_queue:
                    r.apply(["ipi", c])
    if r.violation is None:
        r.drain()
    return r


def test_cve_2018_18281_variant_frees_a_page_still_in_a_tlb():
    r = _mremap_then_punch(MremapFlushTooLate)
    assert r.violation is not None and r.violation.prop == "no-use-after-free-via-TLB"
    assert r.violation.facts["cpu"] == 0 and r.violation.facts["va"] == 2


def test_cve_2018_18281_schedule_is_clean_on_mainline():
    r = _mremap_then_punch(Mainline)
    assert r.violation is None
    assert 2 not in r.m.files[1].cache and r.m.mms[MM].find_vma(6) is not None


def test_the_variant_is_catalogued_as_not_found_from_scratch():
    assert resolve_kernel("bug:mremap-flush-too-late") is MremapFlushTooLate
    bug = next(b for b in UNFOUND if b.slug == "mremap-flush-too-late")
    assert bug.fix == "eb66ae030829" and bug.prop == "no-use-after-free-via-TLB"
