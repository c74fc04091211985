"""Soft-dirty and mprotect: the contract "when the task writes into a page after this [clear_refs
4] ... the kernel marks the PTE soft dirty" checked at every store (soft-dirty-accurate), and
bug:mprotect-softdirty-inverted (76aefad628aa reverted), which breaks it without any race.

The world is default_world(): va 0-3 a shared file mapping, va 4-5 private anonymous memory;
all on CPU0, one process."""

from __future__ import annotations

from mmfuzz.kernels import resolve_kernel
from mmfuzz.model import tlb_key
from mmfuzz.run import Run, default_world
from properties.softdirty import soft_dirty_accurate

MAINLINE = resolve_kernel("mainline")
BUG = resolve_kernel("bug:mprotect-softdirty-inverted")
MM, ANON, SHARED_FILE = 1, 4, 2
PROT_READ, PROT_RW = 1, 3


def _op(r: Run, op: str, *args) -> None:
    assert r.apply(["start", 0, op, *args]) is not None
    r.drain()
    assert r.violation is None and not r.busy()


def _store(r: Run, vpn: int) -> str:
    """A store on CPU0, through a fault if it takes one; returns how it went."""
    step = r.apply(["access", 0, vpn, 1])
    if step.op != "fault":
        return step.text
    r.drain()
    step = r.apply(["access", 0, vpn, 1])
    assert step.op != "fault"
    return "fault, then " + step.text


def _pte(r: Run, vpn: int):
    table, slot = r.m.pte_lookup(r.m.mms[MM], vpn)
    return table.ptes[slot]


def _reproducer(kernel, vpn: int) -> Run:
    """The commit's program: "*page = 1" (soft-dirty), clear_refs 4, mprotect(PROT_READ),
    mprotect(PROT_READ|PROT_WRITE), then "*page = 2"."""
    r = Run(kernel, default_world())
    _store(r, vpn)
    assert _pte(r, vpn).soft_dirty
    _op(r, "clear_refs")
    assert not _pte(r, vpn).soft_dirty and not _pte(r, vpn).write
    _op(r, "mprotect", vpn, 1, PROT_READ)
    _op(r, "mprotect", vpn, 1, PROT_RW)
    return r


def test_the_commits_reproducer_on_mainline():
    """"Marked RW": soft-dirty 0 and the PTE still read-only, so "Wrote page again" faults and
    the fault marks it (soft-dirty 1)."""
    for vpn in (ANON, SHARED_FILE):
        r = _reproducer(MAINLINE, vpn)
        assert not _pte(r, vpn).write
        how = _store(r, vpn)
        assert how.startswith("fault")
        assert r.violation is None
        assert _pte(r, vpn).soft_dirty and _pte(r, vpn).write


def test_the_commits_reproducer_on_the_bug():
    """Before 76aefad628aa, mprotect's upgrade tests VM_SOFTDIRTY the wrong way round and maps
    the page writable: the store lands without a fault and soft-dirty stays 0 ("ERROR: Wrote
    page again, soft-dirty=0 (expect: 1)"). The anonymous page is upgraded because it is
    exclusive, the shared file page because its PTE is dirty."""
    for vpn in (ANON, SHARED_FILE):
        r = _reproducer(BUG, vpn)
        assert _pte(r, vpn).write and not _pte(r, vpn).soft_dirty
        how = _store(r, vpn)
        assert not how.startswith("fault")
        assert r.violation is not None and r.violation.prop == "soft-dirty-accurate"
        assert r.violation.facts["va"] == vpn and r.m.stats["bug_path_hits"] >= 1


def test_without_clear_refs_the_vma_reports_soft_dirty():
    """Tracking is off until clear_refs 4 clears VM_SOFTDIRTY (pagemap reports the whole VMA
    soft-dirty): a writable PTE without the bit is no violation, and there mprotect's
    upgrade needs no fault on either kernel."""
    for kernel in (MAINLINE, BUG):
        r = Run(kernel, default_world())
        _store(r, ANON)
        table, slot = r.m.pte_lookup(r.m.mms[MM], ANON)
        table.ptes[slot] = table.ptes[slot]._replace(soft_dirty=False)
        r.m.cpus[0].tlb.pop(tlb_key(MM, ANON), None)
        assert not _store(r, ANON).startswith("fault") and r.violation is None


def test_the_store_check_judges_only_the_page_still_mapped_and_no_concurrent_call():
    """The check's own edges, on a hand-made bad state (a writable, not soft-dirty PTE in a
    tracked VMA): a store event into it is a violation; one into a page no longer mapped
    there is not judged here; while a clear_refs of the mm is in flight the store may be
    ordered before the call."""
    r = Run(MAINLINE, default_world())
    _store(r, ANON)
    _op(r, "clear_refs")
    table, slot = r.m.pte_lookup(r.m.mms[MM], ANON)
    pte = table.ptes[slot]._replace(write=True)
    table.ptes[slot] = pte
    store = ("store", 0, ANON, pte.pfn, 9)
    v = soft_dirty_accurate(r.m, [store])
    assert v is not None and v.facts == {"cpu": 0, "mm": MM, "va": ANON, "pfn": pte.pfn}
    assert soft_dirty_accurate(r.m, [("store", 0, ANON, pte.pfn + 1, 9)]) is None
    assert soft_dirty_accurate(r.m, [("load", 0, ANON, pte.pfn, 9)]) is None
    assert r.apply(["start", 0, "clear_refs"]) is not None   # in flight (its first step)
    assert soft_dirty_accurate(r.m, [store]) is None


def test_do_swap_page_maps_writable_clean_only_without_soft_dirty_tracking():
    """do_swap_page maps an exclusive page writable on a read fault unless
    pte_needs_soft_dirty_wp: vma_soft_dirty_enabled (VM_SOFTDIRTY clear) and the swap PTE
    not soft-dirty."""
    r = Run(MAINLINE, default_world())
    vma = r.m.mms[MM].find_vma(ANON)
    pte = _pte_soft_clean(r)
    assert vma.softdirty and not r.kernel.pte_needs_soft_dirty_wp(vma, pte)
    vma.softdirty = False
    assert r.kernel.pte_needs_soft_dirty_wp(vma, pte)
    assert not r.kernel.pte_needs_soft_dirty_wp(vma, pte._replace(soft_dirty=True))


def _pte_soft_clean(r: Run):
    _store(r, ANON)
    return _pte(r, ANON)._replace(soft_dirty=False)


def test_clear_refs_leaves_a_pinned_page_untracked_and_the_check_follows_it():
    """clear_refs leaves a writable page of a COW mapping that may be pinned as it is
    (pte_is_pinned): if that PTE was not soft-dirty (made writable while VM_SOFTDIRTY was set:
    tracking off), stores land without a fault and pagemap reports the page clean. Mainline
    accepts that (write-protecting it would let a fault copy it away from the pin), and the
    check does not judge that PTE (Oracle.softdirty_skipped) until it changes: after
    mprotect(PROT_READ) and back, the page is tracked again (the upgrade keeps it read-only,
    the store faults and marks it)."""
    r = Run(MAINLINE, default_world())
    _store(r, ANON)
    table, slot = r.m.pte_lookup(r.m.mms[MM], ANON)
    table.ptes[slot] = table.ptes[slot]._replace(soft_dirty=False)   # tracking is off here
    _op(r, "pin_user_pages", ANON, 1, 0)
    _op(r, "clear_refs")
    key = MM << 32 | ANON
    assert r.m.oracle.softdirty_skipped[key] == table.ptes[slot]
    assert table.ptes[slot].write and not table.ptes[slot].soft_dirty
    assert not _store(r, ANON).startswith("fault") and r.violation is None
    # the same PTE with another pfn is not the one clear_refs left: judged
    other = table.ptes[slot]
    r.m.oracle.softdirty_skipped[key] = other._replace(pfn=other.pfn + 1)
    v = soft_dirty_accurate(r.m, [("store", 0, ANON, other.pfn, 9)])
    assert v is not None and v.facts["va"] == ANON
    r.m.oracle.softdirty_skipped[key] = other
    _op(r, "mprotect", ANON, 1, PROT_READ)
    _op(r, "mprotect", ANON, 1, PROT_RW)
    assert not _pte(r, ANON).write
    assert _store(r, ANON).startswith("fault") and r.violation is None
    assert _pte(r, ANON).soft_dirty
