"""MAP_PRIVATE file mappings (mm/memory.c do_read_fault, do_cow_fault, do_wp_page's copy)
and the hardware's dirty-bit rule for writable, clean PTEs (hw.py)."""

from __future__ import annotations

import os

from mmfuzz.kernels import resolve_kernel
from mmfuzz.model import TlbEntry, tlb_key
from mmfuzz.run import Run, default_world

MAINLINE = resolve_kernel("mainline")


def private_world(**changes) -> dict:
    """default_world with the file mapped MAP_PRIVATE at va 0-3 and no prefaults; CPU3 has
    no process."""
    w = default_world()
    w["vmas"] = [dict(w["vmas"][0], shared=False), w["vmas"][1]]
    w.update(ncpus=4, cpu_mm=[1, 1, 1, 0], prefault=[])
    w.update(changes)
    return w


def pte(r: Run, mm_id: int, vpn: int):
    table = r.m.mms[mm_id].pmd[vpn // r.m.ptrs_per_pte]
    return None if table is None else table.ptes[vpn % r.m.ptrs_per_pte]


def access(r: Run, cpu: int, vpn: int, write: bool):
    for _ in range(3):
        st = r.apply(["access", cpu, vpn, int(write)])
        if st.op != "fault":
            return st
        r.drain()
    raise AssertionError("access kept faulting")


def test_read_fault_maps_the_page_cache_folio_read_only():
    r = Run(MAINLINE, private_world())
    r.m.files[1].disk[0] = 7                                  # the file holds v7
    st = access(r, 0, 0, False)
    folio = r.m.files[1].cache[0]
    p = pte(r, 1, 0)
    assert p.pfn == folio.pfn and not p.write and not p.dirty
    assert folio.mapcount == 1 and not folio.anon and "v7" in st.text
    assert r.quiesce() is None


def test_write_fault_on_a_missing_pte_cows_into_an_anon_folio():
    """do_cow_fault: the page-cache folio is read (v7) and copied; the store lands in the
    copy; the page cache and the disk keep v7."""
    r = Run(MAINLINE, private_world())
    r.m.files[1].disk[1] = 7
    st = access(r, 0, 1, True)
    p = pte(r, 1, 1)
    folio = r.m.files[1].cache[1]
    new = r.m.frames[p.pfn]
    assert new is not folio and new.anon and new.anon_exclusive and p.write and p.dirty
    assert any("do_cow_fault: copy_mc_user_highpage" in s.text for s in r.trace)
    assert folio.data == 7 and folio.mapcount == 0 and not folio.dirty
    assert new.data != 7 and "store" in st.text
    assert r.m.mms[1].vmas[0].anon_vma is not None               # vmf_anon_prepare
    assert r.quiesce() is None
    assert r.m.files[1].disk[1] == 7                          # never written back


def test_write_to_a_read_only_page_cache_pte_copies_it():
    """A read maps the page-cache folio read-only; the following store takes do_wp_page's
    copy path (not anon: no reuse) and the PTE moves to an anon copy."""
    r = Run(MAINLINE, private_world())
    access(r, 0, 2, False)
    folio = r.m.files[1].cache[2]
    access(r, 0, 2, True)
    p = pte(r, 1, 2)
    assert p.pfn != folio.pfn and p.write and r.m.frames[p.pfn].anon
    assert folio.mapcount == 0 and folio.refcount == 1 and folio.data == 0
    assert any("do_wp_page: copy needed" in s.text for s in r.trace)
    assert r.quiesce() is None


def test_fork_copies_a_private_file_mapping_with_an_anon_vma():
    """vma_needs_copy: the private file VMA has an anon_vma after its first COW, so fork
    copies its PTEs, both the read-only page-cache one and the anon copy."""
    r = Run(MAINLINE, private_world())
    access(r, 0, 0, False)
    access(r, 0, 1, True)
    cache0 = r.m.files[1].cache[0]
    anon1 = r.m.frames[pte(r, 1, 1).pfn]
    assert r.apply(["start", 1, "fork", 3]) is not None
    r.drain()
    assert pte(r, 2, 0).pfn == cache0.pfn and cache0.mapcount == 2
    assert pte(r, 2, 1).pfn == anon1.pfn and not pte(r, 1, 1).write and not anon1.anon_exclusive
    assert r.quiesce() is None


# ------------------------------------------------------------ writable, clean PTEs -------
def _writable_clean(r: Run, vpn: int):
    """Make CPU0's PTE for ``vpn`` writable and clean (what MADV_FREE's pte_mkclean or an
    exclusive do_swap_page leave) and fill CPU0's TLB from it with a load."""
    access(r, 0, vpn, True)
    table = r.m.mms[1].pmd[vpn // r.m.ptrs_per_pte]
    slot = vpn % r.m.ptrs_per_pte
    table.ptes[slot] = table.ptes[slot]._replace(dirty=False)
    r.m.cpus[0].tlb.pop(tlb_key(1, vpn), None)
    access(r, 0, vpn, False)
    e = r.m.cpus[0].tlb[tlb_key(1, vpn)]
    assert e.write and not e.dirty
    return table, slot


def test_a_store_through_a_writable_clean_tlb_entry_sets_the_pte_dirty_bit():
    r = Run(MAINLINE, private_world())
    table, slot = _writable_clean(r, 4)
    st = r.apply(["access", 0, 4, 1])
    assert st.op != "fault" and "TLB re-walk" in st.text
    assert table.ptes[slot].dirty                             # the walk set D in the PTE
    assert r.m.cpus[0].tlb[tlb_key(1, 4)].dirty


def test_a_store_through_a_writable_clean_tlb_entry_faults_if_the_pte_went_away():
    r = Run(MAINLINE, private_world())
    table, slot = _writable_clean(r, 4)
    table.ptes[slot] = None                                   # cleared, not yet flushed
    assert isinstance(r.m.cpus[0].tlb[tlb_key(1, 4)], TlbEntry)
    st = r.apply(["access", 0, 4, 1])
    assert st.op == "fault" and "page fault" in st.text


DIRTY_COW_RW = os.path.join(os.path.dirname(__file__), "data", "dirty-cow-private-rw-file.json")


def test_dirty_cow_through_a_private_mapping_of_a_read_write_file_is_the_same_property():
    """Dirty COW writes the page cache through any private mapping, not only one of a file
    opened read-only: here file1 is opened read-write, mapped MAP_PRIVATE and mprotected
    read-only; the FOLL_FORCE write's COW is lost to MADV_DONTNEED, the retry's read fault
    maps the page-cache folio and the pre-19be0eaffa3a FOLL_WRITE games let
    copy_to_user_page store into it. no-write-to-readonly-file names it (its event half,
    properties.gup.no_write_through_private_mapping), ahead of dirty-data-preserved, which saw
    the same step as a clean folio newer than the disk (before, the bench counted seed 5 as
    "another property first"); mainline breaks COW again and stays clean."""
    import json
    from mmfuzz.kernel import Mainline
    from mmfuzz.kernels import resolve_kernel
    from mmfuzz.run import execute
    case = json.load(open(DIRTY_COW_RW))
    world, schedule = case["world"], case["schedule"]
    assert not any(f.get("readonly") for f in world["files"])
    assert world["vmas"][0]["file"] == 1 and not world["vmas"][0]["shared"]
    run, out = execute(resolve_kernel("bug:dirty-cow"), world, schedule, strict=True)
    v = out.violation
    assert v is not None and v.prop == "no-write-to-readonly-file"
    assert "private mapping" in v.why and v.facts["file"] == 1
    assert "copy_to_user_page" in run.trace[out.step].text
    assert execute(Mainline, world, schedule)[1].violation is None
