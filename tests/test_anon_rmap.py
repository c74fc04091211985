"""Anon rmap after swap-in: every mapping of an anon folio must be one rmap can find.

The fuzzer flagged mainline with 400-action runs (seeds 1 and 6, `accounting`: "rmap cannot
find that mapping from its anon_vma"). A defect of the model: a child swapped in an entry fork
had shared, the model pointed the new folio at the child's own anon_vma, and the parent then
mapped the same swap-cache folio from a VMA that anon_vma does not link. Mainline
(mm/rmap.c __folio_set_anon): "If the folio isn't exclusive to this vma, we must use the
_oldest_ possible anon_vma for the folio mapping! if (!exclusive) anon_vma = anon_vma->root;"
The same class: a swap-cache folio whose index or anon_vma root is not the faulting VMA's
(a KSM page loses its flag on swap-out) is copied by mm/ksm.c ksm_might_need_to_copy, so a
mapping never lies where folio->index does not point.

tests/data/swapin-fork-shared-entry-*.json are the fuzzer's schedules, shrunk on the model
before the fix (94 and 169 actions); they replay clean on mainline and trip accounting on
SwapinNewAnonNotRoot, the old behaviour kept as a variant.
"""

import json
import os

import pytest

from mmfuzz.kernel import Mainline
from mmfuzz.model import Folio
from mmfuzz.run import Run, execute
from properties import accounting_quiescent
from tests.variants import SwapinNewAnonNotRoot, SwapinWithoutKsmCopy

DATA = os.path.join(os.path.dirname(__file__), "data")
SCHEDULES = ["swapin-fork-shared-entry-parent-after-child.json",
             "swapin-fork-shared-entry-private-file-cow.json"]
ANON = {"mm": 1, "start": 4, "end": 6, "file": None, "shared": False, "writable": True}


def _world(prefault=()):
    return {"ncpus": 3, "cpu_mm": [1, 1, 0], "ptrs_per_pte": 2, "npmds": 4, "nframes": 64,
            "files": [], "vmas": [dict(ANON)],
            "gather": {"local_max": 8, "batch_max": 510, "batch_count_max": 19},
            "prefault": [list(p) for p in prefault]}


def _do(run, *actions):
    """Each action, then every operation run to completion."""
    for a in actions:
        assert run.apply(list(a)) is not None, a
        run.drain()


def _mapped(run, folio):
    return [(mm.mm_id, t.pmd_index * run.m.ptrs_per_pte + s)
            for mm in run.m.mms.values() for t in mm.pmd if t is not None
            for s, pte in enumerate(t.ptes)
            if pte is not None and pte.present and not pte.special and pte.pfn == folio.pfn]


def _reclaim_until_unmapped(run, folio, passes=4):
    """Anon-LRU reclaim passes (the first ones only clear the young bits)."""
    for _ in range(passes):
        if not _mapped(run, folio):
            break
        _do(run, ["start", 1, "reclaim", 0, 0, 32])
    return _mapped(run, folio)


def _fork_shared_swap_entry(kernel):
    """mm1 writes va 4, reclaim swaps it out and frees the folio, fork shares the swap entry
    with a child on CPU 2; the child swaps it in first (a new folio, not exclusive), then the
    parent maps the same swap-cache folio."""
    run = Run(kernel, _world(prefault=[(0, 4, 1)]))
    for _ in range(2):
        _do(run, ["start", 1, "reclaim", 0, 0, 32])
    assert not any(isinstance(f, Folio) for f in run.m.frames), "the page was not swapped out"
    _do(run, ["start", 0, "fork", 2], ["access", 2, 4, 0], ["access", 0, 4, 0])
    folio = run.m.frames[run.m.mms[1].pmd[2].ptes[0].pfn]
    assert _mapped(run, folio) == [(1, 4), (2, 4)]
    return run, folio


@pytest.mark.parametrize("name", SCHEDULES)
def test_fuzzer_schedule_is_clean_on_mainline_and_trips_the_old_model(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        d = json.load(fh)
    _, out = execute(Mainline, d["world"], d["schedule"], strict=True)
    assert out.violation is None, out.violation.why
    _, out = execute(SwapinNewAnonNotRoot, d["world"], d["schedule"], strict=True)
    assert out.violation is not None and out.violation.prop == "accounting"
    assert "rmap cannot find that mapping" in out.violation.why


def test_child_swapin_of_a_shared_entry_points_the_folio_at_the_root_anon_vma():
    run, folio = _fork_shared_swap_entry(Mainline)
    parent_vma = run.m.mms[1].find_vma(4)
    child_vma = run.m.mms[2].find_vma(4)
    assert child_vma.anon_vma is not parent_vma.anon_vma
    assert child_vma.anon_vma.root is parent_vma.anon_vma
    assert folio.anon_vma is parent_vma.anon_vma and not folio.anon_exclusive
    assert accounting_quiescent(run.m) is None
    # rmap finds both mappings: reclaim can unmap the folio from both processes
    assert _reclaim_until_unmapped(run, folio) == []
    assert accounting_quiescent(run.m) is None


def test_without_the_root_the_parents_mapping_is_lost_to_rmap():
    run, folio = _fork_shared_swap_entry(SwapinNewAnonNotRoot)
    assert folio.anon_vma is run.m.mms[2].find_vma(4).anon_vma
    v = accounting_quiescent(run.m)
    assert v is not None and "rmap cannot find that mapping" in v.why
    assert _reclaim_until_unmapped(run, folio) == [(1, 4)]


def _ksm_page_swapped_in_twice(kernel):
    """Two zeroed anon pages of mm1 (write faults whose stores are not retried), merged by
    ksmd into one KSM page mapped at va 4 and 5, swapped out and freed (the KSM flag is lost);
    va 4 swaps in first (index 4), then va 5 finds that folio in the swap cache."""
    run = Run(kernel, _world())
    _do(run, ["access", 0, 4, 1], ["access", 0, 5, 1], ["start", 1, "ksmd", 0])
    ksm = run.m.frames[run.m.mms[1].pmd[2].ptes[0].pfn]
    assert ksm.ksm and _mapped(run, ksm) == [(1, 4), (1, 5)], "ksmd did not merge"
    for _ in range(2):
        _do(run, ["start", 1, "reclaim", 0, 0, 32])
    assert not any(isinstance(f, Folio) for f in run.m.frames), "the KSM page was not swapped out"
    _do(run, ["access", 0, 4, 0], ["access", 0, 5, 0])
    ptes = run.m.mms[1].pmd[2].ptes
    return run, run.m.frames[ptes[0].pfn], run.m.frames[ptes[1].pfn]


def test_swapin_at_another_index_copies_as_ksm_might_need_to_copy_does():
    run, at4, at5 = _ksm_page_swapped_in_twice(Mainline)
    assert at4 is not at5
    assert (at4.index, at5.index) == (4, 5)
    assert at5.data == at4.data and at5.anon_exclusive and not at5.swapcache
    assert at4.swapcache and at4.mapcount == 1
    assert accounting_quiescent(run.m) is None
    assert _reclaim_until_unmapped(run, at4) == [] and _reclaim_until_unmapped(run, at5) == []


def test_without_the_copy_a_mapping_lies_where_folio_index_does_not_point():
    run, at4, at5 = _ksm_page_swapped_in_twice(SwapinWithoutKsmCopy)
    assert at4 is at5 and at4.index == 4
    v = accounting_quiescent(run.m)
    assert v is not None and v.facts == {"pfn": at4.pfn, "mm": 1, "va": 5, "index": 4}
    assert _reclaim_until_unmapped(run, at4) == [(1, 5)]
