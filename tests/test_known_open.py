"""A race the model finds on mainline's own code, listed as known-open (mmfuzz.kernels.
KNOWN_OPEN), never hidden: reclaim-unlock-before-batched-flush.

The schedule (tests/data/reclaim-unlock-before-batched-flush.json, found by the fast explorer
under bug:cow-gup-wrong-direction seed 4 and shrunk on mainline to 70 actions), as columns:

    CPU1 (user)                 CPU2 (clear_refs 1)        CPU3 (reclaim, file LRU)
    store va 0x0: fault, PTE
      W+D, TLB W+D
                                clear young of va 0x0
                                                           folio_referenced: not young
                                                           try_to_unmap_one: clear PTE,
                                                             flush batched (tlb_ubc),
                                                             folio_mark_dirty, rmap gone
    writeback: lock, folio_mkclean
      (folio_mapped() = 0), clean, write v2
                                                           dirty file folio: activate,
                                                             folio_unlock  <-- before the
                                                             batched flush
    store v3 va 0x0 [TLB hit W+D]  <-- lands in a clean folio: never written back

(In the saved schedule the writeback runs on CPU1 too, between reclaim's unmap and its
unlock.) mm/vmscan.c shrink_folio_list flushes the batch (try_to_unmap_flush) only after the
loop; try_to_unmap_flush_dirty runs only before its own pageout, not on the keep/activate
path. Whether mainline really has this window is for linux-mm to confirm; the model reads it
this way, so the race is listed, with a candidate fix of ours that closes it.
"""

import json
import os

import pytest

from mmfuzz.kernel import Mainline
from mmfuzz.kernels import KNOWN_OPEN, ReclaimFlushDirtyBeforeUnlock, known_open_race
from mmfuzz.run import execute

DATA = os.path.join(os.path.dirname(__file__), "data", "reclaim-unlock-before-batched-flush.json")


def _case():
    with open(DATA, encoding="utf-8") as fh:
        d = json.load(fh)
    return d["world"], d["schedule"]


class _WithCandidateFix(ReclaimFlushDirtyBeforeUnlock, Mainline):
    pass


@pytest.mark.xfail(strict=True, reason="known-open race of mainline (model): reclaim unlocks a "
                   "dirty file folio it unmapped before its batched TLB flush; writeback cleans it "
                   "while a CPU still stores through the stale entry")
def test_mainline_loses_no_store_when_reclaim_keeps_a_dirty_folio():
    world, schedule = _case()
    _, out = execute(Mainline, world, schedule, strict=True)
    assert out.violation is None, out.violation.why


def test_the_race_is_listed_and_named_by_its_candidate_fix():
    world, schedule = _case()
    run, out = execute(Mainline, world, schedule, strict=True)
    assert out.violation is not None and out.violation.prop == "dirty-data-preserved"
    assert any("activate: keep_locked, folio_unlock" in s.text for s in run.trace)
    assert any("folio_mapped() = 0" in s.text for s in run.trace)
    _, fixed = execute(_WithCandidateFix, world, schedule)
    assert fixed.violation is None
    assert known_open_race(Mainline, world, run.actions[: out.step + 1], out.violation) == \
        "reclaim-unlock-before-batched-flush"
    assert "reclaim-unlock-before-batched-flush" in [k.slug for k in KNOWN_OPEN]
